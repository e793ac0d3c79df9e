use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use panda_types::{Resources, WorkerStatus};

use super::parse::{self, JobAd, Verdict};
use super::*;
use crate::plugins::command::testing::{Reply, Scripted, fail, ok};

/// A fixture without its `#` header lines.
fn fixture(text: &str) -> String {
    text.lines().filter(|l| !l.starts_with('#')).map(|l| format!("{l}\n")).collect()
}

const CONDOR_Q: &str = include_str!("../../../tests/fixtures/htcondor/condor_q.json");
const CONDOR_HISTORY: &str = include_str!("../../../tests/fixtures/htcondor/condor_history.json");

const HOUR: Duration = Duration::from_secs(3600);

fn status_of(verdict: &Verdict) -> (WorkerStatus, Option<i32>) {
    match verdict {
        Verdict::State(state) => (state.status, state.exit_code),
        other => panic!("not a state: {other:?}"),
    }
}

#[test]
fn documented_condor_q_and_history_output_maps_to_worker_states() {
    let queue = parse::parse_ads("condor_q", &fixture(CONDOR_Q)).unwrap();
    let now = 1_764_100_300;
    let verdicts: Vec<Verdict> = queue.iter().map(|ad| parse::map_ad(ad, now, HOUR)).collect();
    assert_eq!(status_of(&verdicts[0]), (WorkerStatus::Submitted, None));
    assert_eq!(status_of(&verdicts[1]), (WorkerStatus::Running, None));
    // Held for 100 s: still waiting, the hold reason as diagnostic.
    let Verdict::State(held) = &verdicts[2] else { panic!("{:?}", verdicts[2]) };
    assert_eq!(held.status, WorkerStatus::Submitted);
    assert!(held.diag.starts_with("HTCondor job 42.2 held: Error from slot1@wn01"), "{}", held.diag);
    // Idle again after it had started (evicted): idle.
    assert_eq!(status_of(&verdicts[3]), (WorkerStatus::Idle, None));

    let history = parse::parse_ads("condor_history", &fixture(CONDOR_HISTORY)).unwrap();
    let verdicts: Vec<Verdict> = history.iter().map(|ad| parse::map_ad(ad, now, HOUR)).collect();
    assert_eq!(status_of(&verdicts[0]), (WorkerStatus::Finished, Some(0)));
    assert_eq!(status_of(&verdicts[1]), (WorkerStatus::Failed, Some(65)));
    let Verdict::State(removed) = &verdicts[2] else { panic!() };
    assert_eq!(removed.status, WorkerStatus::Cancelled);
    assert_eq!(
        removed.diag,
        "HTCondor job 40.0 removed: via condor_rm (by user harvester) (last held: Spooling input data files)"
    );
}

#[test]
fn every_job_status_is_mapped() {
    let ad = |status: i64| JobAd { cluster_id: 5, proc_id: 0, job_status: status, ..JobAd::default() };
    let started = |status: i64| JobAd { job_start_date: Some(1), ..ad(status) };
    use WorkerStatus::*;
    assert_eq!(status_of(&parse::map_ad(&ad(1), 0, HOUR)).0, Submitted);
    assert_eq!(status_of(&parse::map_ad(&started(1), 0, HOUR)).0, Idle);
    assert_eq!(status_of(&parse::map_ad(&ad(2), 0, HOUR)).0, Running);
    assert_eq!(status_of(&parse::map_ad(&ad(3), 0, HOUR)).0, Cancelled);
    assert_eq!(status_of(&parse::map_ad(&JobAd { exit_code: Some(0), ..ad(4) }, 0, HOUR)), (Finished, Some(0)));
    assert_eq!(status_of(&parse::map_ad(&JobAd { exit_code: Some(3), ..ad(4) }, 0, HOUR)), (Failed, Some(3)));
    assert_eq!(status_of(&parse::map_ad(&ad(4), 0, HOUR)), (Failed, None));
    let signalled = JobAd { exit_by_signal: Some(true), exit_signal: Some(9), ..ad(4) };
    assert_eq!(status_of(&parse::map_ad(&signalled, 0, HOUR)), (Failed, Some(137)));
    assert_eq!(status_of(&parse::map_ad(&ad(5), 0, HOUR)).0, Submitted);
    assert_eq!(status_of(&parse::map_ad(&started(5), 0, HOUR)).0, Idle);
    assert_eq!(status_of(&parse::map_ad(&ad(6), 0, HOUR)).0, Running);
    assert_eq!(status_of(&parse::map_ad(&ad(7), 0, HOUR)).0, Submitted);
    assert_eq!(status_of(&parse::map_ad(&started(7), 0, HOUR)).0, Idle);
    assert_eq!(parse::map_ad(&ad(9), 0, HOUR), Verdict::Unknown("HTCondor job 5.0 has an unknown JobStatus 9".into()));
}

#[test]
fn a_job_held_too_long_is_to_be_removed_with_its_reason() {
    let held = JobAd {
        cluster_id: 7,
        proc_id: 1,
        job_status: 5,
        entered_current_status: Some(1000),
        hold_reason: Some("Job not found".into()),
        ..JobAd::default()
    };
    assert!(matches!(parse::map_ad(&held, 1000 + 3599, HOUR), Verdict::State(_)));
    let Verdict::RemoveHeld { reason, meanwhile } = parse::map_ad(&held, 1000 + 3600, HOUR) else { panic!() };
    assert_eq!(reason, "held for 3600s, removed: Job not found");
    assert_eq!(meanwhile.status, WorkerStatus::Submitted);
    assert!(matches!(parse::map_ad(&held, 1000, Duration::ZERO), Verdict::RemoveHeld { .. }));
}

#[test]
fn outputs_parse_or_are_named_malformed() {
    assert_eq!(parse::parse_ads("condor_q", "").unwrap(), vec![]);
    assert_eq!(parse::parse_ads("condor_q", "[]\n").unwrap(), vec![]);
    let error = parse::parse_ads("condor_q", "[{\"ProcId\": 0}]").unwrap_err();
    assert!(error.starts_with("malformed condor_q -json output: missing field `ClusterId`"), "{error}");
    let error = parse::parse_ads("condor_history", "-- Schedd: x\n").unwrap_err();
    assert!(error.starts_with("malformed condor_history -json output"), "{error}");

    let submitted = parse::parse_submit(
        "Submitting job(s)...\n2 job(s) submitted to cluster 42.\n1 job(s) submitted to cluster 43.\n",
    );
    assert_eq!(submitted, Ok(vec![(42, 2), (43, 1)]));
    assert_eq!(parse::batch_ids(&submitted.unwrap()), ["42.0", "42.1", "43.0"]);
    assert!(parse::parse_submit("Submitting job(s)\n").is_err());
    assert!(parse::parse_submit("x job(s) submitted to cluster 42.\n").is_err());

    let rm = parse::parse_rm("Job 42.0 marked for removal\nJob 42.1 not found\nJob 42.2 could not be removed\n");
    assert_eq!(rm["42.0"], Ok(()));
    assert_eq!(rm["42.1"], Ok(()));
    assert_eq!(rm["42.2"], Err("Job 42.2 could not be removed".into()));
}

#[test]
fn templates_queue_exactly_one_job_last() {
    assert_eq!(parse::check_queue_statement(DEFAULT_TEMPLATE), Ok(()));
    assert_eq!(parse::check_queue_statement("executable = x\nQueue\n# done\n"), Ok(()));
    assert!(parse::check_queue_statement("executable = x\n").unwrap_err().contains("needs a `queue` statement"));
    assert!(parse::check_queue_statement("queue 5\n").unwrap_err().contains("exactly one job"));
    assert!(parse::check_queue_statement("queue\nqueue\n").unwrap_err().contains("2 `queue` statements"));
    assert!(parse::check_queue_statement("queue\narguments = x\n").unwrap_err().contains("last"));
}

#[test]
fn arguments_use_the_new_syntax() {
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(parse::condor_arguments(&args(&["--cores", "4"])), "\"--cores 4\"");
    assert_eq!(parse::condor_arguments(&args(&["-c", "echo 'hi' \"x\"", ""])), "\"-c 'echo ''hi'' \"\"x\"\"' ''\"");
}

fn worker(dir: &Path, id: &str) -> WorkerSpec {
    WorkerSpec {
        worker_id: id.into(),
        queue: "grid".into(),
        work_dir: dir.join("grid").join(id),
        resources: Resources { cores: 8, memory_mb: 16000, disk_mb: 0, walltime_seconds: 0 },
        max_jobs: 0,
        server_url: "http://10.0.0.1:50051".into(),
        job_file: None,
        container_runtimes: Vec::new(),
    }
}

fn plugin(config: HtcondorConfig, runner: &Arc<Scripted>) -> HtcondorPlugin {
    HtcondorPlugin::new("grid", config, vec!["/opt/panda/panda-pilot".into()], runner.clone())
}

#[tokio::test]
async fn one_condor_submit_for_all_workers_on_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let workers = [worker(dir.path(), "1"), worker(dir.path(), "2")];
    let runner = Arc::new(Scripted::default());
    runner.expect(
        &["condor_submit", "-name", "schedd1", "-pool", "cm1", "-"],
        ok("Submitting job(s)..\n2 job(s) submitted to cluster 42.\n"),
    );
    let config = HtcondorConfig { schedd: Some("schedd1".into()), pool: Some("cm1".into()), ..Default::default() };
    let outcomes = plugin(config, &runner).submit(&workers).await;
    runner.done();
    assert_eq!(
        outcomes,
        [SubmitOutcome::Submitted { batch_id: "42.0".into() }, SubmitOutcome::Submitted { batch_id: "42.1".into() }]
    );
    let stdin = runner.calls.lock().unwrap()[0].1.clone().unwrap();
    let first = std::fs::read_to_string(workers[0].work_dir.join("submit.sub")).unwrap();
    assert!(stdin.starts_with(&first) && stdin.ends_with("+pandaQueue = \"grid\"\nqueue 1\n"), "{stdin}");
    assert_eq!(stdin.matches("queue 1").count(), 2);
    let work_dir = workers[0].work_dir.display();
    assert!(first.contains("executable = /opt/panda/panda-pilot\n"), "{first}");
    assert!(
        first.contains(&format!(
            "arguments = \"--server http://10.0.0.1:50051 --queue grid --worker-id 1 --work-dir {work_dir}/pilot \
             --cores 8 --memory-mb 16000 --max-jobs 0\"\n"
        )),
        "{first}"
    );
    assert!(first.contains("request_memory = 16000\n+harvesterWorkerID = \"1\"\n"), "{first}");
}

#[tokio::test]
async fn a_failed_condor_submit_fails_every_worker_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let workers = [worker(dir.path(), "1"), worker(dir.path(), "2")];
    let runner = Arc::new(Scripted::default());
    let plugin = plugin(HtcondorConfig::default(), &runner);
    runner.expect(&["condor_submit", "-"], fail(1, "ERROR: Failed to connect to local queue manager\n"));
    let outcomes = plugin.submit(&workers).await;
    assert!(outcomes.iter().all(|o| matches!(o, SubmitOutcome::Temporary(d) if d.contains("Failed to connect"))));

    runner.expect(&["condor_submit", "-"], fail(1, "ERROR: on Line 3 of submit file: bad\n"));
    let outcomes = plugin.submit(&workers).await;
    assert!(outcomes.iter().all(|o| matches!(o, SubmitOutcome::Permanent(_))), "{outcomes:?}");

    // Fewer jobs than workers: which is which is unknown, so they are removed again.
    runner
        .expect(&["condor_submit", "-"], ok("1 job(s) submitted to cluster 50.\n"))
        .expect(&["condor_rm", "50.0"], ok("Job 50.0 marked for removal\n"));
    let outcomes = plugin.submit(&workers).await;
    assert!(outcomes.iter().all(|o| matches!(o, SubmitOutcome::Temporary(d) if d.contains("1 jobs for 2 workers"))));

    runner.expect(&["condor_submit", "-"], Reply::Missing);
    let outcomes = plugin.submit(&workers).await;
    assert!(
        outcomes.iter().all(|o| matches!(o, SubmitOutcome::Permanent(d) if d.contains("cannot run condor_submit")))
    );
    runner.done();
}

fn reference(id: &str, batch_id: &str) -> WorkerRef {
    WorkerRef { worker_id: id.into(), batch_id: batch_id.into(), work_dir: format!("/w/{id}").into() }
}

#[tokio::test]
async fn one_condor_q_then_one_condor_history_then_held_jobs_removed() {
    let runner = Arc::new(Scripted::default());
    let workers = [reference("1", "42.0"), reference("2", "42.2"), reference("3", "41.0"), reference("4", "9")];
    let queue = r#"[{"ClusterId": 42, "ProcId": 0, "JobStatus": 2},
        {"ClusterId": 42, "ProcId": 2, "JobStatus": 5, "EnteredCurrentStatus": 0, "HoldReason": "Failed to start GAHP"}]"#;
    runner
        .expect(&["condor_q", "-json", "-attributes", parse::ATTRIBUTES, "41", "42"], ok(queue))
        .expect(
            &[
                "condor_history",
                "-json",
                "-attributes",
                parse::ATTRIBUTES,
                "-constraint",
                "member(ClusterId, {41})",
                "-limit",
                "1",
            ],
            ok(r#"[{"ClusterId": 41, "ProcId": 0, "JobStatus": 4, "ExitCode": 0}]"#),
        )
        .expect(&["condor_rm", "42.2"], ok("Job 42.2 marked for removal\n"));
    let results = plugin(HtcondorConfig::default(), &runner).check(&workers).await;
    runner.done();
    assert_eq!(results[0].as_ref().unwrap().status, WorkerStatus::Running);
    let removed = results[1].as_ref().unwrap();
    assert_eq!(removed.status, WorkerStatus::Cancelled);
    assert!(removed.diag.ends_with("s, removed: Failed to start GAHP"), "{}", removed.diag);
    assert_eq!(results[2].as_ref().unwrap().status, WorkerStatus::Finished);
    assert_eq!(results[3].as_ref().unwrap_err(), "batch id \"9\" is not an HTCondor job id (cluster.proc)");
}

#[tokio::test]
async fn failures_leave_workers_unknown_with_a_reason() {
    let runner = Arc::new(Scripted::default());
    let workers = [reference("1", "42.0")];
    let plugin = plugin(HtcondorConfig { held_timeout: Duration::ZERO, ..Default::default() }, &runner);
    let q = ["condor_q", "-json", "-attributes", parse::ATTRIBUTES, "42"];
    runner.expect(&q, fail(1, "-- Failed to fetch ads from: <127.0.0.1:9618>\n"));
    assert!(plugin.check(&workers).await[0].as_ref().unwrap_err().contains("Failed to fetch ads"));
    runner.expect(&q, ok("{not json"));
    assert!(plugin.check(&workers).await[0].as_ref().unwrap_err().starts_with("malformed condor_q -json output"));

    // A held job whose removal fails stays as it is, with both reasons.
    runner
        .expect(&q, ok(r#"[{"ClusterId": 42, "ProcId": 0, "JobStatus": 5, "HoldReason": "disk full"}]"#))
        .expect(&["condor_rm", "42.0"], fail(1, "Couldn't find/remove all jobs matching constraint\n"));
    let state = plugin.check(&workers).await.remove(0).unwrap();
    assert_eq!(state.status, WorkerStatus::Submitted);
    assert!(state.diag.contains("held: disk full; removal failed"), "{}", state.diag);
    runner.done();
}

#[tokio::test]
async fn kill_is_one_condor_rm_and_gone_jobs_count_as_removed() {
    let runner = Arc::new(Scripted::default());
    let workers = [reference("1", "42.0"), reference("2", "42.1")];
    let plugin = plugin(HtcondorConfig::default(), &runner);
    runner.expect(
        &["condor_rm", "42.0", "42.1"],
        Reply::Output(crate::plugins::command::CommandOutput {
            code: Some(1),
            stdout: "Job 42.0 marked for removal\n".into(),
            stderr: "Job 42.1 not found\n".into(),
        }),
    );
    assert_eq!(plugin.kill(&workers).await, [Ok(()), Ok(())]);
    runner.expect(&["condor_rm", "42.0", "42.1"], Reply::Timeout);
    assert!(plugin.kill(&workers).await.iter().all(|r| r.as_ref().unwrap_err().contains("did not answer")));
    runner.done();
}

#[test]
fn config_problems_name_their_keys() {
    assert!(HtcondorConfig::default().problems().is_empty());
    let problems =
        HtcondorConfig { template: Some("executable = {pilot_executable}\n".into()), ..Default::default() }.problems();
    assert_eq!(problems, ["template: needs a `queue` statement at the end (one job per worker)"]);
    let problems = HtcondorConfig {
        template: Some("executable = {nope}\nqueue\n".into()),
        condor_rm: crate::plugins::command::CommandLine(vec![]),
        ..Default::default()
    }
    .problems();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].starts_with("template: line 1: unknown placeholder {nope}"), "{problems:?}");
    assert_eq!(problems[1], "condor_rm: must name a program");
}
