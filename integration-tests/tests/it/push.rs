//! Harvester's push mode against the real server (embedded): jobs fetched by harvester reach the
//! pilot through the worker's job file; jobs of a worker that could not be submitted, or that a
//! harvester stopped between fetch and submit left behind, go back to the queue at once, and
//! their old leases are refused.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use panda_all::Cluster;
use panda_bus::outbox::Outbox;
use panda_client::ServerClient;
use panda_harvester::QueueFile;
use panda_harvester::plugins::{
    CheckResult, Monitor, Plugins, SubmitOutcome, Submitter, Sweeper, WorkerRef, WorkerSpec,
};
use panda_harvester::provisioner::{Provisioner, Queue};
use panda_harvester::store;
use panda_integration_tests::{await_condition, await_task, fast_config, jobs_of, start};
use panda_proto::common::v1::{JobStatus, TaskStatus};
use panda_proto::server::v1 as server;
use panda_types::WorkerStatus;
use panda_types::job_file::{JOB_FILE_NAME, JobFile};

use crate::PILOT;

/// Two jobs per worker, and pilots that run only those.
const PUSH_QUEUE: &str = "queues:\n  pushq:\n    max_workers: 2\n    mode: push\n    jobs_per_worker: 2\n    pilot_max_jobs: 2\n    resources: { cores: 1 }\n    plugin: { type: local }\n";

async fn cluster(dir: &Path, cycle: Duration) -> Cluster {
    let file = dir.join("queues.yaml");
    std::fs::write(&file, PUSH_QUEUE).unwrap();
    let mut config = fast_config(dir);
    config.harvester.queue_config = Some(file);
    config.harvester.cycle_interval = cycle;
    start(config, PILOT).await
}

async fn submit(server: &ServerClient, n_jobs: u32) -> u64 {
    let spec = server::TaskSpec {
        name: "pushed".into(),
        command: "echo pushed {index} > {output}".into(),
        n_jobs: Some(n_jobs),
        output_dataset: "pushed.out".into(),
        ..Default::default()
    };
    let request = server::SubmitTaskRequest { spec: Some(spec), idempotency_key: String::new() };
    server.tasks.clone().submit_task(request).await.unwrap().into_inner().task_id
}

async fn await_jobs(server: &ServerClient, task_id: u64, n: usize, status: JobStatus) -> Vec<server::Job> {
    await_condition(
        Duration::from_secs(60),
        &format!("{n} jobs of task {task_id} {}", status.as_str_name()),
        || async move {
            let jobs = jobs_of(server, task_id).await;
            (jobs.len() == n && jobs.iter().all(|j| j.status == status as i32)).then_some(jobs)
        },
    )
    .await
}

fn read_job_file(work_dir: &str) -> JobFile {
    let text = std::fs::read_to_string(Path::new(work_dir).join(JOB_FILE_NAME)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A starting report with the given lease, as a pilot would send it.
async fn report_starting(server: &ServerClient, job_id: u64, lease_token: &str) -> Result<(), tonic::Status> {
    let request = server::UpdateJobRequest {
        job_id,
        lease_token: lease_token.to_owned(),
        status: JobStatus::Starting as i32,
        node: "elsewhere".into(),
        ..Default::default()
    };
    server.pilot.clone().update_job(request).await.map(|_| ())
}

/// A batch system that refuses every submission (as sbatch does when the controller is down).
struct Refusing;

#[async_trait]
impl Submitter for Refusing {
    async fn submit(&self, workers: &[WorkerSpec]) -> Vec<SubmitOutcome> {
        workers
            .iter()
            .map(|_| {
                SubmitOutcome::Temporary(
                    "sbatch: error: Batch job submission failed: Unable to contact slurm controller".into(),
                )
            })
            .collect()
    }
}

#[async_trait]
impl Monitor for Refusing {
    async fn check(&self, workers: &[WorkerRef]) -> Vec<CheckResult> {
        workers.iter().map(|_| Err("never submitted".to_owned())).collect()
    }
}

#[async_trait]
impl Sweeper for Refusing {
    async fn kill(&self, workers: &[WorkerRef]) -> Vec<Result<(), String>> {
        workers.iter().map(|_| Ok(())).collect()
    }
    async fn clean(&self, _: &WorkerRef) -> Result<(), String> {
        Ok(())
    }
}

/// A harvester of the test's own (its database, its queue `pushq`, `plugins`) against the
/// cluster's server; the cluster's harvester cycles once an hour, so it stays out of the way.
async fn harvester(db_url: &str, cluster: &Cluster, worker_dir: &Path, plugins: Plugins) -> (Provisioner, Queue) {
    let db = panda_db::connect_and_migrate::<store::Migrator>(db_url, None).await.unwrap();
    let config = QueueFile::parse(PUSH_QUEUE, Path::new("queues.yaml")).unwrap().queues.remove("pushq").unwrap();
    let queue = Queue { name: "pushq".into(), config, plugins };
    let provisioner = Provisioner::new(
        "h-test".into(),
        BTreeMap::from([("pushq".to_owned(), queue.clone())]),
        db.clone(),
        Outbox::new(db),
        ServerClient::new(&cluster.server_url).unwrap(),
        cluster.server_url.clone(),
        worker_dir.to_owned(),
        Duration::from_secs(3600),
    );
    (provisioner, queue)
}

fn refusing() -> Plugins {
    let plugin = Arc::new(Refusing);
    Plugins { submitter: plugin.clone(), monitor: plugin.clone(), sweeper: plugin }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_mode_runs_jobs_through_the_workers_job_files() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), Duration::from_millis(200)).await;
    let server = ServerClient::new(&cluster.server_url).unwrap();
    let task_id = submit(&server, 4).await;
    await_task(&server, task_id, TaskStatus::Done, Duration::from_secs(120)).await;

    let jobs = jobs_of(&server, task_id).await;
    assert_eq!(jobs.len(), 4);
    assert!(jobs.iter().all(|j| j.status == JobStatus::Finished as i32 && j.attempt_nr == 1), "{jobs:?}");
    // Every job was fetched by harvester into exactly one worker's job file, and ran there.
    let mut pushed: BTreeMap<u64, String> = BTreeMap::new();
    for entry in std::fs::read_dir(dir.path().join("workers/pushq")).unwrap() {
        let worker_dir = entry.unwrap().path();
        if !worker_dir.join(JOB_FILE_NAME).exists() {
            continue;
        }
        let file = read_job_file(&worker_dir.display().to_string());
        assert_eq!((file.queue.as_str(), file.format.as_str()), ("pushq", "panda-job-file/1"));
        assert!(!file.jobs.is_empty() && file.jobs.len() <= 2, "{file:?}");
        let log = std::fs::read_to_string(worker_dir.join("pilot.log")).unwrap();
        assert!(log.contains("running the jobs of the job file"), "{log}");
        for job in file.jobs {
            assert!(pushed.insert(job.job_id, file.worker_id.clone()).is_none(), "job {} pushed twice", job.job_id);
        }
    }
    assert_eq!(pushed.keys().copied().collect::<Vec<_>>(), jobs.iter().map(|j| j.job_id).collect::<Vec<_>>());
    for job in &jobs {
        assert_eq!(job.worker_id, pushed[&job.job_id], "job {} ran in the worker it was pushed to", job.job_id);
    }
    let outputs = std::fs::read_dir(dir.path().join("storage")).unwrap().count();
    assert!(outputs >= 4, "{outputs} files in storage");
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_of_a_worker_that_could_not_be_submitted_go_back_to_the_queue_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), Duration::from_secs(3600)).await;
    let server = ServerClient::new(&cluster.server_url).unwrap();
    let task_id = submit(&server, 1).await;
    let job_id = await_jobs(&server, task_id, 1, JobStatus::Activated).await[0].job_id;

    let db = panda_db::TestDb::sqlite_temp();
    let workers = dir.path().join("test-workers");
    let (provisioner, _) = harvester(&db.url, &cluster, &workers, refusing()).await;
    provisioner.cycle().await;

    // The worker was written, given the job, refused by the batch system: missed, with why.
    let db_conn = provisioner.db();
    let worker = store::get(db_conn, 1).await.unwrap().unwrap();
    assert_eq!(worker.status, WorkerStatus::Missed);
    assert!(worker.diag.contains("Unable to contact slurm controller"), "{}", worker.diag);
    let file = read_job_file(&worker.work_dir);
    assert_eq!(file.jobs.iter().map(|j| j.job_id).collect::<Vec<_>>(), [job_id]);
    let old_lease = file.jobs[0].lease_token.clone();
    assert_eq!(store::pushed_of(db_conn, 1).await.unwrap().unwrap().1, store::PushState::Released);

    // The job is activated again at once (no lease time-out), and the old lease is dead.
    let job = &jobs_of(&server, task_id).await[0];
    assert_eq!(job.status, JobStatus::Activated as i32, "{job:?}");
    assert_eq!((job.worker_id.as_str(), job.attempt_nr), ("", 1));
    let refused = report_starting(&server, job_id, &old_lease).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");

    // Handing back again changes nothing (idempotent, lease-checked).
    assert!(provisioner.release_stranded().await.unwrap().is_empty());
    let lease = server::JobLease { job_id, lease_token: old_lease.clone() };
    let again = server
        .pilot
        .clone()
        .release_leases(server::ReleaseLeasesRequest { leases: vec![lease], reason: "test".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(again.released_job_ids.is_empty());
    // A request without a lease is refused, naming the field.
    let bad = server
        .pilot
        .clone()
        .release_leases(server::ReleaseLeasesRequest {
            leases: vec![server::JobLease { job_id, lease_token: String::new() }],
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("leases[0]") && bad.message().contains("lease_token"), "{}", bad.message());
    assert_eq!(jobs_of(&server, task_id).await[0].status, JobStatus::Activated as i32);
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_harvester_restarted_between_fetch_and_submit_hands_the_jobs_back_and_runs_them_once() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path(), Duration::from_secs(3600)).await;
    let server = ServerClient::new(&cluster.server_url).unwrap();
    let task_id = submit(&server, 2).await;
    await_jobs(&server, task_id, 2, JobStatus::Activated).await;
    let db = panda_db::TestDb::sqlite_temp();
    let workers = dir.path().join("test-workers");

    // The first harvester fetches both jobs for a new worker and stores them, then stops before
    // the plugin is called.
    let (before, queue) = harvester(&db.url, &cluster, &workers, refusing()).await;
    let fetched = before.fetch_for_new_workers(&queue, 1).await.unwrap();
    assert_eq!(fetched.len(), 1);
    let (interrupted, _) = &fetched[0];
    let file = read_job_file(&interrupted.work_dir);
    assert_eq!(file.jobs.len(), 2);
    let sent = await_jobs(&server, task_id, 2, JobStatus::Sent).await;
    assert!(sent.iter().all(|j| j.worker_id == interrupted.id.to_string()), "{sent:?}");
    drop(before);

    // Restarted (same database, real local pilots): the interrupted worker is missed and its
    // jobs go back to the queue; their old leases are refused.
    let plugin_config = queue.config.plugin.clone();
    let plugins = panda_harvester::plugins::build(
        "pushq",
        &plugin_config,
        &panda_harvester::plugins::PluginDeps { pilot_program: vec![PILOT.to_owned()] },
    );
    let (after, _) = harvester(&db.url, &cluster, &workers, plugins).await;
    after.recover_interrupted().await.unwrap();
    let missed = store::get(after.db(), interrupted.id).await.unwrap().unwrap();
    assert_eq!(missed.status, WorkerStatus::Missed);
    assert!(missed.diag.contains("never submitted"), "{}", missed.diag);
    await_jobs(&server, task_id, 2, JobStatus::Activated).await;
    for job in &file.jobs {
        let refused = report_starting(&server, job.job_id, &job.lease_token).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    }

    // Its cycles then push the jobs to a new worker whose pilot runs them: each once.
    await_condition(Duration::from_secs(120), "the task to be done", || {
        let (after, server) = (&after, &server);
        async move {
            after.cycle().await;
            let task =
                server.tasks.clone().get_task(server::GetTaskRequest { task_id }).await.ok()?.into_inner().task?;
            (task.status == TaskStatus::Done as i32).then_some(())
        }
    })
    .await;
    let jobs = jobs_of(&server, task_id).await;
    assert!(jobs.iter().all(|j| j.status == JobStatus::Finished as i32 && j.attempt_nr == 1), "{jobs:?}");
    let runner = jobs[0].worker_id.parse::<i64>().unwrap();
    assert_ne!(runner, interrupted.id);
    assert!(jobs.iter().all(|j| j.worker_id == runner.to_string()), "{jobs:?}");
    let runner = store::get(after.db(), runner).await.unwrap().unwrap();
    let pushed = read_job_file(&runner.work_dir);
    assert_eq!(
        pushed.jobs.iter().map(|j| j.job_id).collect::<Vec<_>>(),
        file.jobs.iter().map(|j| j.job_id).collect::<Vec<_>>()
    );
    // Stop the pilots before the cluster.
    await_condition(Duration::from_secs(60), "the runner to end", || {
        let after = &after;
        async move {
            after.cycle().await;
            let worker = store::get(after.db(), runner.id).await.ok()??;
            panda_types::StateMachine::is_final(worker.status).then_some(())
        }
    })
    .await;
    cluster.stop().await.unwrap();
}
