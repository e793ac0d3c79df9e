//! The kubernetes plugin with the real `kube` client against `support/fake_kube.rs`, a small API
//! server serving `batch/v1` Jobs and `core/v1` Pods in their real JSON shapes. No API server can
//! run on the development and CI machines.

#[path = "support/fake_kube.rs"]
mod fake_kube;

use std::time::Duration;

use fake_kube::FakeKube;
use panda_harvester::plugins::kubernetes::{KubernetesConfig, KubernetesPlugin, QUEUE_LABEL, WORKER_LABEL};
use panda_harvester::plugins::{Monitor, SubmitOutcome, Submitter, Sweeper, WorkerRef, WorkerSpec};
use panda_types::{Resources, WorkerStatus};
use serde_json::json;

fn config(fake: &FakeKube) -> KubernetesConfig {
    KubernetesConfig {
        api_url: Some(fake.url.clone()),
        namespace: "panda".into(),
        image: "ghcr.io/panda/pilot:1".into(),
        token_secret: Some("panda-token".into()),
        lost_after: Duration::ZERO,
        ..Default::default()
    }
}

fn spec(worker_id: &str) -> WorkerSpec {
    WorkerSpec {
        worker_id: worker_id.into(),
        queue: "k8s".into(),
        work_dir: format!("/tmp/unused/{worker_id}").into(),
        resources: Resources { cores: 2, memory_mb: 4000, disk_mb: 0, walltime_seconds: 600 },
        max_jobs: 1,
        server_url: "http://panda:50051".into(),
        job_file: None,
        container_runtimes: Vec::new(),
    }
}

fn worker_ref(worker_id: &str, batch_id: &str) -> WorkerRef {
    WorkerRef { worker_id: worker_id.into(), batch_id: batch_id.into(), work_dir: "/tmp/unused".into() }
}

fn container(state: serde_json::Value) -> serde_json::Value {
    json!([ { "name": "pilot", "image": "ghcr.io/panda/pilot:1", "imageID": "", "ready": false, "restartCount": 0,
              "state": state } ])
}

fn batch_ids(outcomes: &[SubmitOutcome]) -> Vec<String> {
    outcomes
        .iter()
        .map(|o| match o {
            SubmitOutcome::Submitted { batch_id } => batch_id.clone(),
            other => panic!("not submitted: {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn workers_run_as_jobs_from_submit_to_the_end_with_two_calls_per_monitor_cycle() {
    let fake = FakeKube::start().await;
    let plugin = KubernetesPlugin::new("k8s", config(&fake));
    let workers: Vec<WorkerSpec> = (1..=5).map(|i| spec(&i.to_string())).collect();
    let ids = batch_ids(&plugin.submit(&workers).await);
    assert_eq!(ids, ["panda-k8s-1", "panda-k8s-2", "panda-k8s-3", "panda-k8s-4", "panda-k8s-5"]);
    {
        let state = fake.state();
        let job = &state.jobs["panda-k8s-3"];
        assert_eq!(job["metadata"]["labels"][QUEUE_LABEL], "k8s");
        assert_eq!(job["metadata"]["labels"][WORKER_LABEL], "3");
        assert_eq!(job["spec"]["template"]["spec"]["containers"][0]["image"], "ghcr.io/panda/pilot:1");
        assert_eq!(job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"], "2");
        assert_eq!(job["spec"]["activeDeadlineSeconds"], 600);
    }
    let refs: Vec<WorkerRef> = ids.iter().enumerate().map(|(i, id)| worker_ref(&(i + 1).to_string(), id)).collect();

    // 1 pending (unschedulable), 2 running, 3 succeeded, 4 OOMKilled, 5 image cannot be pulled.
    fake.set_pod_status(
        "panda-k8s-2",
        json!({ "phase": "Running", "containerStatuses":
        container(json!({ "running": { "startedAt": "2026-01-01T00:00:00Z" } })) }),
    );
    fake.set_pod_status(
        "panda-k8s-3",
        json!({ "phase": "Succeeded", "containerStatuses":
        container(json!({ "terminated": { "reason": "Completed", "exitCode": 0 } })) }),
    );
    fake.set_job_status(
        "panda-k8s-3",
        json!({ "succeeded": 1, "conditions": [
        { "type": "SuccessCriteriaMet", "status": "True" }, { "type": "Complete", "status": "True" } ] }),
    );
    fake.set_pod_status(
        "panda-k8s-4",
        json!({ "phase": "Failed", "containerStatuses":
        container(json!({ "terminated": { "reason": "OOMKilled", "exitCode": 137 } })) }),
    );
    fake.set_job_status(
        "panda-k8s-4",
        json!({ "failed": 1, "conditions": [ { "type": "Failed", "status": "True",
        "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit" } ] }),
    );
    fake.set_pod_status(
        "panda-k8s-5",
        json!({ "phase": "Pending", "containerStatuses":
        container(json!({ "waiting": { "reason": "ImagePullBackOff",
                                       "message": "Back-off pulling image \"ghcr.io/panda/pilot:1\"" } })) }),
    );

    let before = fake.state().calls.len();
    let states = plugin.check(&refs).await;
    let calls: Vec<String> = fake.state().calls[before..].to_vec();
    assert_eq!(calls.len(), 2, "one Job list and one Pod list per cycle: {calls:?}");
    assert!(calls.iter().all(|c| c.contains("labelSelector=")), "{calls:?}");

    let states: Vec<_> = states.into_iter().map(|s| s.expect("known")).collect();
    assert_eq!(states[0].status, WorkerStatus::Submitted);
    assert!(states[0].diag.contains("Insufficient cpu"), "{}", states[0].diag);
    assert_eq!(states[1].status, WorkerStatus::Running);
    assert_eq!((states[2].status, states[2].exit_code), (WorkerStatus::Finished, Some(0)));
    assert_eq!((states[3].status, states[3].exit_code), (WorkerStatus::Failed, Some(137)));
    assert!(states[3].diag.contains("OOMKilled") && states[3].diag.contains("BackoffLimitExceeded"));
    assert_eq!(states[4].status, WorkerStatus::Submitted);
    assert!(states[4].diag.contains("ImagePullBackOff"), "{}", states[4].diag);

    // The pod's log, through the API.
    let logs = plugin.logs(&refs[1], 10_000).await.expect("logs");
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].name, "panda-k8s-2-x7k2p/pilot");
    assert!(logs[0].text.contains("pilot of panda-k8s-2-x7k2p started"), "{:?}", logs[0]);
    assert!(
        fake.state().calls.iter().any(|c| c.contains("/pods/panda-k8s-2-x7k2p/log?") && c.contains("container=pilot"))
    );

    // Evicted.
    fake.set_pod_status(
        "panda-k8s-2",
        json!({ "phase": "Failed", "reason": "Evicted",
        "message": "The node was low on resource: ephemeral-storage." }),
    );
    let state = plugin.check(&refs[1..2]).await.remove(0).expect("known");
    assert_eq!(state.status, WorkerStatus::Failed);
    assert!(state.diag.contains("Evicted"), "{}", state.diag);
}

#[tokio::test]
async fn kill_deletes_with_background_propagation_and_gone_jobs_are_cancelled() {
    let fake = FakeKube::start().await;
    let plugin = KubernetesPlugin::new("k8s", config(&fake));
    let ids = batch_ids(&plugin.submit(&[spec("1"), spec("2")]).await);
    let refs = [worker_ref("1", &ids[0]), worker_ref("2", &ids[1])];

    let results = plugin.kill(&refs[..1]).await;
    assert_eq!(results, [Ok(())]);
    {
        let state = fake.state();
        assert!(!state.jobs.contains_key("panda-k8s-1"));
        assert!(state.pods.keys().all(|p| !p.starts_with("panda-k8s-1-")), "its pod went with it");
        assert_eq!(state.deletes[0]["propagationPolicy"], "Background");
        assert_eq!(state.deletes[0]["gracePeriodSeconds"], 30);
    }
    // Killing again: already gone counts as killed.
    assert_eq!(plugin.kill(&refs[..1]).await, [Ok(())]);

    // The monitor finds the Job gone (lost_after is zero here): cancelled. The other still pends.
    let states = plugin.check(&refs).await;
    let gone = states[0].as_ref().expect("known");
    assert_eq!(gone.status, WorkerStatus::Cancelled);
    assert!(gone.diag.contains("panda-k8s-1 not found"), "{}", gone.diag);
    assert_eq!(states[1].as_ref().expect("known").status, WorkerStatus::Submitted);

    // Clean removes what a finished worker left (the Job, if its TTL did not).
    plugin.clean(&refs[1]).await.expect("cleaned");
    assert!(fake.state().jobs.is_empty());
    plugin.clean(&refs[1]).await.expect("cleaning twice is fine");
}

#[tokio::test]
async fn a_retried_create_submits_nothing_twice_and_refusals_are_per_worker() {
    let fake = FakeKube::start().await;
    let plugin = KubernetesPlugin::new("k8s", config(&fake));
    let first = batch_ids(&plugin.submit(&[spec("7")]).await);
    // The same worker again (its first answer was lost): the existing Job is its own.
    let again = batch_ids(&plugin.submit(&[spec("7")]).await);
    assert_eq!(first, again);
    assert_eq!(fake.state().jobs.len(), 1);

    // Another queue's worker with a colliding name is refused, not adopted.
    let other = KubernetesPlugin::new("k8s", config(&fake));
    fake.state().jobs.get_mut("panda-k8s-7").expect("exists")["metadata"]["labels"][WORKER_LABEL] = json!("70");
    let outcome = other.submit(&[spec("7")]).await.remove(0);
    assert!(matches!(&outcome, SubmitOutcome::Permanent(d) if d.contains("another worker")), "{outcome:?}");

    // An invalid spec is permanent; a server error temporary.
    fake.state().refuse_create = Some((422, "Invalid"));
    let outcome = plugin.submit(&[spec("8")]).await.remove(0);
    assert!(matches!(&outcome, SubmitOutcome::Permanent(d) if d.contains("refused by the test")), "{outcome:?}");
    fake.state().refuse_create = Some((503, "ServiceUnavailable"));
    let outcome = plugin.submit(&[spec("9")]).await.remove(0);
    assert!(matches!(&outcome, SubmitOutcome::Temporary(d) if d.contains("503")), "{outcome:?}");
}

#[tokio::test]
async fn an_unreachable_or_failing_api_server_leaves_every_worker_unknown() {
    let fake = FakeKube::start().await;
    let plugin = KubernetesPlugin::new("k8s", config(&fake));
    let ids = batch_ids(&plugin.submit(&[spec("1"), spec("2")]).await);
    let refs = [worker_ref("1", &ids[0]), worker_ref("2", &ids[1])];
    fake.state().fail_with = Some(500);
    let states = plugin.check(&refs).await;
    for state in &states {
        let diag = state.as_ref().expect_err("unknown");
        assert!(diag.contains("etcdserver: request timed out"), "{diag}");
    }
    // Malformed JSON from the server: every worker unknown, with the reason, and no panic.
    fake.state().fail_with = None;
    fake.state().garbage = true;
    for state in plugin.check(&refs).await {
        let diag = state.expect_err("unknown");
        assert!(diag.contains("listing Kubernetes jobs and pods"), "{diag}");
    }
    // Nothing listens at the URL: submissions fail for now, monitoring cannot tell.
    let url = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        format!("http://{}", listener.local_addr().expect("addr"))
    };
    let nowhere = KubernetesPlugin::new("k8s", KubernetesConfig { api_url: Some(url), ..config(&fake) });
    let outcome = nowhere.submit(&[spec("3")]).await.remove(0);
    assert!(matches!(outcome, SubmitOutcome::Temporary(_)), "{outcome:?}");
    assert!(nowhere.check(&refs).await.iter().all(Result::is_err));
}

#[tokio::test]
async fn the_credential_manager_copies_the_token_into_its_secret_when_it_changes() {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("token");
    std::fs::write(&token, "first").expect("written");
    let plugin = KubernetesPlugin::new(
        "k8s",
        KubernetesConfig { token_file: Some(token.clone()), token_key: "jwt".into(), ..config(&fake) },
    );
    let renewed = plugin.refresh_credentials().await.expect("applied");
    assert!(renewed.is_some_and(|what| what.contains("panda-token")));
    let applied = |fake: &FakeKube| fake.state().secrets["panda-token"]["data"]["jwt"].clone();
    // "first", base64.
    assert_eq!(applied(&fake), "Zmlyc3Q=");
    assert!(fake.state().calls.iter().any(|c| c.contains("fieldManager=panda-harvester") && c.contains("force=true")));
    // Unchanged: no call.
    let calls = fake.state().calls.len();
    assert_eq!(plugin.refresh_credentials().await, Ok(None));
    assert_eq!(fake.state().calls.len(), calls);
    // Renewed on disk: copied again.
    std::fs::write(&token, "second").expect("written");
    assert!(plugin.refresh_credentials().await.expect("applied").is_some());
    assert_eq!(applied(&fake), "c2Vjb25k");
    // A missing file is an error naming it.
    std::fs::remove_file(&token).expect("removed");
    let error = plugin.refresh_credentials().await.expect_err("no file");
    assert!(error.contains("token_file") && error.contains("token"), "{error}");
}
