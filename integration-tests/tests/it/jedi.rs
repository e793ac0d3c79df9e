//! JEDI end to end (embedded): scouts, then the rest of the jobs; a failing file retried until
//! its attempts run out; a task whose scouts all fail is broken; brokerage explained; job events
//! alone driving retries and merge jobs.

use std::time::Duration;

use panda_client::ServerClient;
use panda_integration_tests::{await_task, fast_config, jobs_of, start};
use panda_proto::common::v1::{JobStatus, Resources, TaskStatus};
use panda_proto::server::v1 as server;

use crate::PILOT;

/// Writes `names` into the storage directory and registers them as dataset `dataset`.
async fn register(server: &ServerClient, storage: &std::path::Path, dataset: &str, names: &[String]) {
    std::fs::create_dir_all(storage).unwrap();
    let mut files = Vec::new();
    for name in names {
        let body = format!("content of {name}\n");
        std::fs::write(storage.join(name), &body).unwrap();
        files.push(server::CatalogFile {
            lfn: name.clone(),
            size_bytes: body.len() as u64,
            checksum: String::new(),
            n_events: 10,
            replicas: vec!["local".into()],
        });
    }
    server
        .catalog
        .clone()
        .register_dataset(server::RegisterDatasetRequest { name: dataset.into(), files })
        .await
        .unwrap();
}

fn spec(name: &str, input: &str, output: &str, scouts: u32, max_attempts: u32) -> server::TaskSpec {
    server::TaskSpec {
        name: name.into(),
        // Any input whose name contains "bad" fails.
        command: "case '{inputs}' in *bad*) echo boom >&2; exit 3;; esac; cat {inputs} > {output}".into(),
        input_datasets: vec![input.into()],
        files_per_job: Some(1),
        output_dataset: output.into(),
        split: Some(server::SplitRules {
            scouts: Some(scouts),
            max_attempts: Some(max_attempts),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn submit(server: &ServerClient, spec: server::TaskSpec) -> u64 {
    let request = server::SubmitTaskRequest { spec: Some(spec), idempotency_key: String::new() };
    server.tasks.clone().submit_task(request).await.unwrap().into_inner().task_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scouts_then_the_rest_and_a_failing_file_retried_until_its_attempts_run_out() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(fast_config(dir.path()), PILOT).await;
    let server = ServerClient::new(&cluster.server_url).unwrap();
    let mut names: Vec<String> = (1..=6).map(|i| format!("it.in._{i:06}")).collect();
    names[4] = "it.in._000005.bad".into();
    register(&server, &dir.path().join("storage"), "it.in", &names).await;

    let task_id = submit(&server, spec("scouted", "it.in", "it.out", 2, 2)).await;
    let task = await_task(&server, task_id, TaskStatus::Finished, Duration::from_secs(180)).await;
    assert!(task.error_diag.contains("1 of 6 jobs did not finish"), "{}", task.error_diag);

    let jobs = jobs_of(&server, task_id).await;
    // Scouts (indices 1 and 2) ran first, at scout priority; the rest came after them.
    let scouts: Vec<&server::Job> = jobs.iter().filter(|j| j.job_index <= 2).collect();
    let rest: Vec<&server::Job> = jobs.iter().filter(|j| j.job_index > 2).collect();
    assert_eq!(scouts.len(), 2);
    assert!(scouts.iter().all(|j| j.priority == 901 && j.status == JobStatus::Finished as i32));
    // The rest waited for the scouts' verdict (at least half of them finished).
    let first_scout_end =
        scouts.iter().filter_map(|j| j.ended_at.as_ref().map(|t| (t.seconds, t.nanos))).min().unwrap();
    let first_rest = rest.iter().filter_map(|j| j.created_at.as_ref().map(|t| (t.seconds, t.nanos))).min().unwrap();
    assert!(first_rest >= first_scout_end, "the rest was generated before any scout ended");
    // The bad file: two attempts, both failed with the payload's exit code; the others finished once.
    let bad: Vec<&server::Job> = jobs.iter().filter(|j| j.input_files.iter().any(|f| f.contains("bad"))).collect();
    assert_eq!(bad.iter().map(|j| j.attempt_nr).collect::<Vec<_>>(), vec![1, 2], "{bad:#?}");
    assert!(bad.iter().all(|j| j.status == JobStatus::Failed as i32 && j.exit_code == Some(3)));
    let good = jobs.iter().filter(|j| !j.input_files.iter().any(|f| f.contains("bad")));
    assert!(good.clone().all(|j| j.status == JobStatus::Finished as i32 && j.attempt_nr == 1));
    assert_eq!(good.count(), 5);

    // The output dataset is closed (finished: partly produced).
    let out = server
        .internal
        .clone()
        .get_dataset(server::GetDatasetRequest { name: "it.out".into() })
        .await
        .unwrap()
        .into_inner()
        .dataset
        .unwrap();
    assert_eq!(out.status, "finished");
    assert_eq!(out.files.iter().filter(|f| f.status == "finished").count(), 5);

    // The brokerage of the rest is explained: the one local queue, with its score.
    let explanation = server
        .brokerage
        .clone()
        .get_brokerage(server::GetBrokerageRequest { task_id })
        .await
        .unwrap()
        .into_inner()
        .explanation
        .unwrap();
    assert!(!explanation.pending);
    assert_eq!(explanation.n_jobs, 4);
    assert_eq!(explanation.chosen.len(), 1);
    assert_eq!(explanation.chosen[0].queue, "local");
    assert_eq!(explanation.chosen[0].jobs, 4);
    assert!((explanation.chosen[0].locality - 2.0).abs() < 1e-9, "{explanation:?}");
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_whose_scouts_all_fail_is_broken_with_their_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(fast_config(dir.path()), PILOT).await;
    let server = ServerClient::new(&cluster.server_url).unwrap();
    let names: Vec<String> = (1..=20).map(|i| format!("all.bad._{i:06}")).collect();
    register(&server, &dir.path().join("storage"), "all.bad", &names).await;
    let task_id = submit(&server, spec("doomed", "all.bad", "doomed.out", 3, 3)).await;
    let task = await_task(&server, task_id, TaskStatus::Broken, Duration::from_secs(180)).await;
    assert!(task.error_diag.starts_with("all 3 scout jobs failed"), "{}", task.error_diag);
    assert!(task.error_diag.contains("error 1305 payload exited with code 3"), "{}", task.error_diag);
    // Only the scouts ran: not twenty failing jobs.
    assert_eq!(jobs_of(&server, task_id).await.len(), 3);
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pending_task_shows_its_brokerage_explanation_and_bad_split_rules_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(fast_config(dir.path()), PILOT).await;
    let server = ServerClient::new(&cluster.server_url).unwrap();
    let spec = server::TaskSpec {
        name: "big".into(),
        command: "true".into(),
        n_jobs: Some(2),
        resources: Some(Resources { cores: 64, ..Default::default() }),
        ..Default::default()
    };
    let task_id = submit(&server, spec).await;
    await_task(&server, task_id, TaskStatus::Pending, Duration::from_secs(60)).await;
    let explanation = server
        .brokerage
        .clone()
        .get_brokerage(server::GetBrokerageRequest { task_id })
        .await
        .unwrap()
        .into_inner()
        .explanation
        .unwrap();
    assert!(explanation.pending);
    assert!(explanation.chosen.is_empty());
    assert_eq!(explanation.dropped.len(), 1);
    assert_eq!(explanation.dropped[0].queue, "local");
    assert_eq!(explanation.dropped[0].filter, "cores");
    assert_eq!(explanation.dropped[0].reason, "needs 64 cores, queue offers 1");
    assert!(jobs_of(&server, task_id).await.is_empty());

    // Contradicting and non-positive split rules are refused at submission, naming the fields.
    register(&server, &dir.path().join("storage"), "rules.in", &["rules.in._000001".to_owned()]).await;
    let mut bad =
        spec_with_rules(server::SplitRules { events_per_job: Some(10), gb_per_job: Some(-2.0), ..Default::default() });
    bad.files_per_job = Some(3);
    let error = server
        .tasks
        .clone()
        .submit_task(server::SubmitTaskRequest { spec: Some(bad), idempotency_key: String::new() })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    for text in
        ["task.split.events_per_job contradicts task.files_per_job", "task.split.gb_per_job must be a positive number"]
    {
        assert!(error.message().contains(text), "{}", error.message());
    }
    // A catalog registration with a repeated file names it.
    let error = server
        .catalog
        .clone()
        .register_dataset(server::RegisterDatasetRequest {
            name: "twice".into(),
            files: vec![
                server::CatalogFile { lfn: "x".into(), ..Default::default() },
                server::CatalogFile { lfn: "x".into(), ..Default::default() },
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(error.message().contains("files[1].lfn"), "{}", error.message());
    cluster.stop().await.unwrap();
}

fn spec_with_rules(split: server::SplitRules) -> server::TaskSpec {
    server::TaskSpec {
        name: "rules".into(),
        command: "true".into(),
        input_datasets: vec!["rules.in".into()],
        split: Some(split),
        ..Default::default()
    }
}

/// With the sweep effectively off, job events alone drive JEDI: a file that fails its first
/// attempt is retried (the default three attempts), and once every job has ended the merge jobs
/// (`merge_files_per_job: 2`) run over the outputs; the task ends `done` with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_events_drive_retries_and_merge_jobs_without_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fast_config(dir.path());
    config.jedi.sweep_interval = Duration::from_secs(3600);
    let cluster = start(config, PILOT).await;
    let server = ServerClient::new(&cluster.server_url).unwrap();
    let storage = dir.path().join("storage");
    let mut names: Vec<String> = (1..=4).map(|i| format!("m.in._{i:06}")).collect();
    names[2] = "m.in._000003.flaky".into();
    register(&server, &storage, "m.in", &names).await;
    let flag = dir.path().join("failed-once");
    let spec = server::TaskSpec {
        name: "merged".into(),
        // The flaky file fails its first attempt only.
        command: format!(
            "case '{{inputs}}' in *flaky*) if [ ! -e {flag} ]; then touch {flag}; exit 3; fi;; esac; cat {{inputs}} > {{output}}",
            flag = flag.display()
        ),
        input_datasets: vec!["m.in".into()],
        files_per_job: Some(1),
        output_dataset: "m.out".into(),
        split: Some(server::SplitRules { merge_files_per_job: Some(2), ..Default::default() }),
        ..Default::default()
    };
    let task_id = submit(&server, spec).await;
    let task = await_task(&server, task_id, TaskStatus::Done, Duration::from_secs(120)).await;
    assert_eq!(task.error_diag, "");

    let jobs = jobs_of(&server, task_id).await;
    let flaky: Vec<&server::Job> = jobs.iter().filter(|j| j.input_files.iter().any(|f| f.contains("flaky"))).collect();
    assert_eq!(
        flaky.iter().map(|j| (j.attempt_nr, j.status)).collect::<Vec<_>>(),
        vec![(1, JobStatus::Failed as i32), (2, JobStatus::Finished as i32)]
    );
    // ListJobs reports each output's size and state (the first attempt's row moved to the second).
    let out = &flaky[1].output_files[0];
    assert_eq!(
        (out.size_bytes, out.status.as_str()),
        ("content of m.in._000003.flaky\n".len() as u64, "finished"),
        "{out:?}"
    );
    assert_eq!((flaky[0].output_files[0].size_bytes, flaky[0].output_files[0].status.as_str()), (0, ""));
    let mut merges: Vec<&server::Job> = jobs.iter().filter(|j| j.merge).collect();
    merges.sort_by_key(|j| j.job_index);
    assert_eq!(merges.iter().map(|j| j.job_index).collect::<Vec<_>>(), vec![5, 6], "{jobs:#?}");
    assert!(merges.iter().all(|j| j.status == JobStatus::Finished as i32 && j.input_files.len() == 2));
    // Each merge job was created after every processing job had ended.
    let last_end =
        jobs.iter().filter(|j| !j.merge).filter_map(|j| j.ended_at.as_ref().map(|t| (t.seconds, t.nanos))).max();
    let first_merge = merges.iter().filter_map(|j| j.created_at.as_ref().map(|t| (t.seconds, t.nanos))).min();
    assert!(first_merge >= last_end, "merge jobs before the last processing job ended");
    // The merged files hold their inputs' outputs, in order.
    let merged = std::fs::read_to_string(storage.join("m.out.merged._000005")).unwrap();
    assert_eq!(merged, "content of m.in._000001\ncontent of m.in._000002\n");
    let out = server
        .internal
        .clone()
        .get_dataset(server::GetDatasetRequest { name: "m.out".into() })
        .await
        .unwrap()
        .into_inner()
        .dataset
        .unwrap();
    assert_eq!(out.status, "done");
    assert!(out.files.iter().any(|f| f.lfn == "m.out.merged._000006" && f.status == "finished"), "{out:#?}");
    cluster.stop().await.unwrap();
}

/// A queue announces the storage site it reads from: brokerage counts the task's replicas at that
/// site as local, so the task's jobs go to the queue whose `site` holds its data, and the queue
/// whose site has none is dropped by the data-locality filter, naming its site.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_goes_to_the_queue_whose_site_holds_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(fast_config(dir.path()), PILOT).await;
    let server = ServerClient::new(&cluster.server_url).unwrap();
    let queue = |name: &str, site: &str| server::Queue {
        name: name.into(),
        status: "online".into(),
        max_resources: Some(Resources::default()),
        max_workers: 10,
        harvester_id: "it-sites".into(),
        site: site.into(),
        containers: Vec::new(),
    };
    server
        .internal
        .clone()
        .register_queues(server::RegisterQueuesRequest {
            harvester_id: "it-sites".into(),
            queues: vec![queue("T2_A", "SITE-Y"), queue("T2_B", "SITE-X")],
        })
        .await
        .unwrap();
    let files = (1..=3)
        .map(|i| server::CatalogFile {
            lfn: format!("loc.in._{i:06}"),
            size_bytes: 1000,
            checksum: String::new(),
            n_events: 10,
            replicas: vec!["SITE-X".into()],
        })
        .collect();
    server
        .catalog
        .clone()
        .register_dataset(server::RegisterDatasetRequest { name: "loc.in".into(), files })
        .await
        .unwrap();
    let spec = server::TaskSpec {
        name: "located".into(),
        command: "cat {inputs}".into(),
        input_datasets: vec!["loc.in".into()],
        files_per_job: Some(1),
        queues: vec!["T2_A".into(), "T2_B".into()],
        ..Default::default()
    };
    let task_id = submit(&server, spec).await;
    // No pilot serves these queues: the jobs wait there, brokered.
    await_task(&server, task_id, TaskStatus::Running, Duration::from_secs(60)).await;
    let jobs = jobs_of(&server, task_id).await;
    assert_eq!(jobs.len(), 3);
    assert!(jobs.iter().all(|j| j.queue == "T2_B"), "{jobs:#?}");
    let explanation = server
        .brokerage
        .clone()
        .get_brokerage(server::GetBrokerageRequest { task_id })
        .await
        .unwrap()
        .into_inner()
        .explanation
        .unwrap();
    let dropped: Vec<(&str, &str)> = explanation
        .dropped
        .iter()
        .filter(|d| d.queue == "T2_A")
        .map(|d| (d.filter.as_str(), d.reason.as_str()))
        .collect();
    assert_eq!(dropped.len(), 1, "{explanation:?}");
    assert_eq!(dropped[0].0, "data_locality");
    assert!(dropped[0].1.contains("SITE-Y"), "{explanation:?}");
    // ListQueues shows each queue's site.
    let queues = server.internal.clone().list_queues(server::ListQueuesRequest {}).await.unwrap().into_inner().queues;
    let site_of = |name: &str| {
        queues.iter().filter_map(|q| q.queue.as_ref()).find(|q| q.name == name).map(|q| q.site.clone()).unwrap()
    };
    assert_eq!((site_of("T2_A"), site_of("T2_B"), site_of("local")), ("SITE-Y".into(), "SITE-X".into(), String::new()));
    cluster.stop().await.unwrap();
}

/// Streaming input: a task reading another task's output while it is still being written runs on
/// the files already there, gets jobs for the rest as they arrive, and ends only once the
/// producer closed the dataset and its own jobs ended: one job per produced file, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_reading_an_open_dataset_runs_as_its_files_arrive_and_ends_after_it_closes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fast_config(dir.path());
    config.server.watchdog_interval = Duration::from_millis(200);
    let cluster = start(config, PILOT).await;
    let server = ServerClient::new(&cluster.server_url).unwrap();
    // The producer's jobs end one after another (job i sleeps i seconds).
    let producer = submit(
        &server,
        server::TaskSpec {
            name: "producer".into(),
            command: "sleep {index}; echo {index} > {output}".into(),
            n_jobs: Some(4),
            output_dataset: "stream.a".into(),
            ..Default::default()
        },
    )
    .await;
    let consumer = submit(
        &server,
        server::TaskSpec {
            name: "consumer".into(),
            command: "cat {inputs}".into(),
            input_datasets: vec!["stream.a".into()],
            files_per_job: Some(1),
            ..Default::default()
        },
    )
    .await;
    let consumer_task = await_task(&server, consumer, TaskStatus::Done, Duration::from_secs(120)).await;
    let producer_task = await_task(&server, producer, TaskStatus::Done, Duration::from_secs(10)).await;
    let jobs = jobs_of(&server, consumer).await;
    let mut inputs: Vec<String> = jobs.iter().flat_map(|j| j.input_files.clone()).collect();
    inputs.sort();
    assert_eq!(inputs, (1..=4).map(|i| format!("stream.a._{i:06}")).collect::<Vec<_>>(), "{jobs:#?}");
    assert!(jobs.iter().all(|j| j.status == JobStatus::Finished as i32));
    let mut indices: Vec<u32> = jobs.iter().map(|j| j.job_index).collect();
    indices.sort_unstable();
    indices.dedup();
    assert_eq!(indices.len(), 4, "job indices are unique: {jobs:#?}");
    // The consumer's first job came before the producer ended, and it ended after the producer.
    let first = jobs.iter().filter_map(|j| j.created_at.as_ref().map(|t| (t.seconds, t.nanos))).min().unwrap();
    let producer_end = producer_task.modified_at.as_ref().map(|t| (t.seconds, t.nanos)).unwrap();
    assert!(first < producer_end, "the consumer waited for the whole dataset");
    let consumer_end = consumer_task.modified_at.as_ref().map(|t| (t.seconds, t.nanos)).unwrap();
    assert!(consumer_end >= producer_end, "the consumer ended before its input closed");
    cluster.stop().await.unwrap();
}
