//! The server's use cases against real databases: every case runs on SQLite, and on PostgreSQL
//! when `PANDA_TEST_DATABASE_URL` is set (those are `#[ignore]`d otherwise, never skipped).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use panda_bus::outbox::Outbox;
use panda_db::TestDb;
use panda_proto::server::v1::FunctionResult;
use panda_server::error::Error;
use panda_server::group_commit::Shape;
use panda_server::model::{ErrorSource, JobReport, NewJob, OutputFile};
use panda_server::service::{DispatchRequest, NewWork, PilotBatches, PilotCommand, Service, UpdateRequest};
use panda_server::store::migration::Migrator;
use panda_types::spec::TaskSpecDraft;
use panda_types::{JobStatus, Resources, StateMachine, TaskId, TaskStatus};
use sea_orm_migration::MigratorTrait;

struct Fixture {
    service: Service,
    outbox: Outbox,
    _db: TestDb,
    _storage: tempfile::TempDir,
}

async fn fixture(db: TestDb) -> Fixture {
    let conn = panda_db::connect_and_migrate::<Migrator>(&db.url, Some(16)).await.unwrap();
    // Migrations are idempotent: a second run changes nothing.
    Migrator::up(&conn, None).await.unwrap();
    let storage = tempfile::tempdir().unwrap();
    let outbox = Outbox::new(conn.clone());
    let service = Service::new(conn, outbox.clone(), storage.path().to_owned(), Default::default());
    Fixture { service, outbox, _db: db, _storage: storage }
}

/// A task whose failed jobs are not retried: these cases test the server's own rules, and JEDI,
/// which inserts retries (three attempts by default), is not running here.
fn draft(name: &str, n_jobs: u32, output: &str) -> TaskSpecDraft {
    TaskSpecDraft {
        name: name.into(),
        command: if output.is_empty() { "true".into() } else { "echo x > {output}".into() },
        n_jobs: Some(n_jobs),
        output_dataset: output.into(),
        split: panda_types::rules::SplitRulesDraft { max_attempts: Some(1), ..Default::default() },
        ..Default::default()
    }
}

fn jobs(n: u32, queue: &str, output: &str) -> Vec<NewJob> {
    (1..=n)
        .map(|i| NewJob {
            job_index: i,
            queue: queue.into(),
            command: "true".into(),
            environment: BTreeMap::new(),
            input_files: vec![],
            output_files: if output.is_empty() { vec![] } else { vec![format!("{output}._{i:06}")] },
            resources: Resources { cores: 1, ..Default::default() },
            priority: 0,
            merge: false,
        })
        .collect()
}

fn report(status: JobStatus) -> JobReport {
    JobReport {
        status,
        exit_code: None,
        error_code: 0,
        error_diag: String::new(),
        stdout_tail: String::new(),
        stderr_tail: String::new(),
        cpu_time_seconds: 0.0,
        wall_time_seconds: 0.0,
        max_rss_kb: 0,
        output_files: vec![],
        node: "n".into(),
    }
}

async fn submit_with_jobs(f: &Fixture, name: &str, n: u32, output: &str) -> TaskId {
    let (task, _) = f.service.submit_task(draft(name, n, output), None).await.unwrap();
    f.service.insert_jobs(task.id, jobs(n, "q", output)).await.unwrap();
    task.id
}

async fn submit_and_read_back(f: Fixture) {
    let (task, created) = f.service.submit_task(draft("t", 2, "out"), Some("k".into())).await.unwrap();
    assert!(created);
    assert_eq!(task.status, TaskStatus::Registered);
    let (again, created) = f.service.submit_task(draft("t", 2, "out"), Some("k".into())).await.unwrap();
    assert!(!created);
    assert_eq!(again.id, task.id);
    let (read, counts) = f.service.get_task(task.id).await.unwrap();
    assert_eq!(read.spec.name, "t");
    assert_eq!(counts.total, 0);
    // A second task may not take the same output dataset.
    let error = f.service.submit_task(draft("u", 1, "out"), None).await.unwrap_err();
    assert!(matches!(error, Error::DatasetTaken { .. }), "{error}");
    assert!(matches!(f.service.get_task(TaskId(999)).await, Err(Error::TaskNotFound { .. })));
    // The registration event is in the outbox.
    assert_eq!(f.outbox.pending().await.unwrap(), 1);
}

async fn inserting_jobs_runs_the_task_once(f: Fixture) {
    let (task, _) = f.service.submit_task(draft("t", 3, "out"), None).await.unwrap();
    let ids = f.service.insert_jobs(task.id, jobs(3, "q", "out")).await.unwrap();
    assert_eq!(ids.len(), 3);
    let (task, counts) = f.service.get_task(task.id).await.unwrap();
    assert_eq!(task.status, TaskStatus::Running);
    assert_eq!(counts.queued, 3);
    let error = f.service.insert_jobs(task.id, jobs(3, "q", "out")).await.unwrap_err();
    assert!(matches!(error, Error::TaskState { status: TaskStatus::Running, .. }), "{error}");
    assert_eq!(f.service.get_task(task.id).await.unwrap().1.total, 3, "a refused insertion must add nothing");
    // Bad jobs are refused whole.
    let (other, _) = f.service.submit_task(draft("u", 1, ""), None).await.unwrap();
    let mut bad = jobs(2, "q", "");
    bad[1].queue = "bad queue".into();
    assert!(matches!(f.service.insert_jobs(other.id, bad).await, Err(Error::InvalidArgument(_))));
    assert_eq!(f.service.get_task(other.id).await.unwrap().0.status, TaskStatus::Registered);
}

/// `pilots` concurrent pilots take `n` jobs at a time from queue `q` until it is empty; answers
/// every job handed out.
async fn drain_queue(service: &Service, pilots: usize, n: u32) -> Vec<panda_server::service::Dispatched> {
    let mut handles = Vec::new();
    for pilot in 0..pilots {
        let service = service.clone();
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = service.dispatch("q", &format!("node{pilot}"), "", Resources::default(), n).await.unwrap();
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch);
            }
        }));
    }
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.unwrap());
    }
    all
}

async fn concurrent_dispatch_hands_out_each_job_once(f: Fixture) {
    let n = 120;
    let task = submit_with_jobs(&f, "t", n, "").await;
    let all: Vec<_> = drain_queue(&f.service, 8, 3).await.into_iter().map(|d| d.job.id).collect();
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), n as usize, "every job dispatched");
    assert_eq!(unique.len(), all.len(), "no job dispatched twice");
    assert_eq!(f.service.get_task(task).await.unwrap().1.running, n);
}

async fn dispatch_respects_queue_and_resources(f: Fixture) {
    let (task, _) = f.service.submit_task(draft("t", 2, ""), None).await.unwrap();
    let mut two = jobs(2, "q", "");
    two[0].resources.cores = 8;
    two[0].priority = 10;
    f.service.insert_jobs(task.id, two).await.unwrap();
    assert!(f.service.dispatch("other", "n", "", Resources::default(), 5).await.unwrap().is_empty());
    let small = f.service.dispatch("q", "n", "", Resources { cores: 4, ..Default::default() }, 5).await.unwrap();
    assert_eq!(small.len(), 1);
    assert_eq!(small[0].job.resources.cores, 1);
    let big = f.service.dispatch("q", "n", "", Resources { cores: 8, ..Default::default() }, 5).await.unwrap();
    assert_eq!(big.len(), 1);
    assert_eq!(big[0].job.priority, 10);
}

async fn pilot_lifecycle_finishes_the_task(f: Fixture) {
    let task = submit_with_jobs(&f, "t", 2, "out").await;
    let dispatched = f.service.dispatch("q", "n", "w1", Resources::default(), 2).await.unwrap();
    for d in &dispatched {
        let lease = d.job.lease_token.clone().unwrap();
        let id = d.job.id;
        assert_eq!(f.service.update_job(id, &lease, report(JobStatus::Starting)).await.unwrap().0, JobStatus::Starting);
        assert_eq!(f.service.update_job(id, &lease, report(JobStatus::Running)).await.unwrap().0, JobStatus::Running);
        // A heartbeat repeats the state.
        assert_eq!(f.service.update_job(id, &lease, report(JobStatus::Running)).await.unwrap().0, JobStatus::Running);
        // A stale lease changes nothing.
        assert!(matches!(
            f.service.update_job(id, "stale", report(JobStatus::Failed)).await,
            Err(Error::NotHolder { .. })
        ));
        // An output the job does not declare is refused.
        let mut wrong = report(JobStatus::Finished);
        wrong.output_files = vec![OutputFile { lfn: "elsewhere".into(), size_bytes: 1, checksum: String::new() }];
        assert!(matches!(f.service.update_job(id, &lease, wrong).await, Err(Error::InvalidArgument(_))));
        let mut done = report(JobStatus::Finished);
        done.exit_code = Some(0);
        done.output_files =
            vec![OutputFile { lfn: d.job.output_files[0].clone(), size_bytes: 5, checksum: "adler32:00000001".into() }];
        assert_eq!(f.service.update_job(id, &lease, done.clone()).await.unwrap().0, JobStatus::Finished);
        // The retried final report is answered the same and changes nothing.
        assert_eq!(f.service.update_job(id, &lease, done).await.unwrap(), (JobStatus::Finished, PilotCommand::None));
        // A late heartbeat on a finished job is refused.
        assert!(matches!(
            f.service.update_job(id, &lease, report(JobStatus::Running)).await,
            Err(Error::JobTransition { .. })
        ));
    }
    let (task, counts) = f.service.get_task(task).await.unwrap();
    assert_eq!(task.status, TaskStatus::Done);
    assert_eq!(counts.finished, 2);
    // Each job kept when it entered every state it went through, in order.
    for d in &dispatched {
        let job = f.service.show_job(d.job.id).await.unwrap();
        let times = job.state_times.parse();
        let at = |state: &str| *times.get(state).unwrap_or_else(|| panic!("no time for {state}: {times:?}"));
        let path = ["activated", "sent", "starting", "running", "holding", "finished"].map(at);
        assert!(path.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        assert_eq!(times.len(), 6);
        assert_eq!(job.error_source, ErrorSource::None);
    }
    let dataset = f.service.get_dataset("out").await.unwrap();
    assert_eq!(dataset.status, panda_types::DatasetStatus::Done);
    assert!(dataset.files.iter().all(|file| file.status == "finished" && file.size_bytes == 5));
}

async fn partial_and_total_failure(f: Fixture) {
    for (name, failures, expected) in [("some", 1, TaskStatus::Finished), ("all", 2, TaskStatus::Failed)] {
        let task = submit_with_jobs(&f, name, 2, "").await;
        let dispatched = f.service.dispatch("q", "n", "", Resources::default(), 2).await.unwrap();
        for (i, d) in dispatched.iter().enumerate() {
            let lease = d.job.lease_token.clone().unwrap();
            f.service.update_job(d.job.id, &lease, report(JobStatus::Running)).await.unwrap();
            let mut last = report(if i < failures { JobStatus::Failed } else { JobStatus::Finished });
            last.error_code = if i < failures { 1305 } else { 0 };
            last.error_diag = "payload exited with 3".into();
            f.service.update_job(d.job.id, &lease, last).await.unwrap();
        }
        // A pilot error code makes the pilot the source; a bare non-zero exit, the payload.
        let first = f.service.show_job(dispatched[0].job.id).await.unwrap();
        assert_eq!(first.error_source, ErrorSource::Pilot);
        let (task, _) = f.service.get_task(task).await.unwrap();
        assert_eq!(task.status, expected, "{name}");
        if expected == TaskStatus::Failed {
            assert!(
                task.error_diag.contains("all 2 jobs failed") && task.error_diag.contains("1305"),
                "{}",
                task.error_diag
            );
        }
    }
}

async fn kill_cancels_queued_and_tells_running_pilots(f: Fixture) {
    let task = submit_with_jobs(&f, "t", 3, "").await;
    let running = f.service.dispatch("q", "n", "", Resources::default(), 1).await.unwrap().remove(0);
    let lease = running.job.lease_token.clone().unwrap();
    f.service.update_job(running.job.id, &lease, report(JobStatus::Running)).await.unwrap();
    let (killed, counts) = f.service.kill_task(task).await.unwrap();
    assert_eq!(killed.status, TaskStatus::Aborting);
    assert_eq!(counts.cancelled, 2);
    // Nothing left to dispatch.
    assert!(f.service.dispatch("q", "n", "", Resources::default(), 5).await.unwrap().is_empty());
    let (_, command) = f.service.update_job(running.job.id, &lease, report(JobStatus::Running)).await.unwrap();
    assert_eq!(command, PilotCommand::Kill);
    let (status, _) = f.service.update_job(running.job.id, &lease, report(JobStatus::Failed)).await.unwrap();
    assert_eq!(status, JobStatus::Cancelled);
    assert_eq!(f.service.get_task(task).await.unwrap().0.status, TaskStatus::Aborted);
    assert!(matches!(f.service.kill_task(task).await, Err(Error::TaskState { .. })));
}

async fn killing_a_task_closes_its_output_dataset(f: Fixture) {
    // Killed before JEDI generated anything: the output nobody wrote into closes as failed, so
    // a consumer waiting for it is not left waiting.
    let (task, _) = f.service.submit_task(draft("early", 1, "early-out"), None).await.unwrap();
    assert_eq!(f.service.get_dataset("early-out").await.unwrap().status, panda_types::DatasetStatus::Defined);
    f.service.kill_task(task.id).await.unwrap();
    assert!(f.service.get_task(task.id).await.unwrap().0.status.is_final());
    assert_eq!(f.service.get_dataset("early-out").await.unwrap().status, panda_types::DatasetStatus::Failed);
    // Killed with one job finished and one queued: finished; the queued job's output cancelled.
    let task = submit_with_jobs(&f, "late", 2, "late-out").await;
    let done = f.service.dispatch("q", "n", "", Resources::default(), 1).await.unwrap().remove(0);
    let lease = done.job.lease_token.clone().unwrap();
    let mut last = report(JobStatus::Finished);
    last.output_files =
        vec![OutputFile { lfn: done.job.output_files[0].clone(), size_bytes: 3, checksum: String::new() }];
    f.service.update_job(done.job.id, &lease, last).await.unwrap();
    f.service.kill_task(task).await.unwrap();
    let dataset = f.service.get_dataset("late-out").await.unwrap();
    assert_eq!(dataset.status, panda_types::DatasetStatus::Finished);
    let mut states: Vec<_> = dataset.files.iter().map(|file| file.status.as_str()).collect();
    states.sort();
    assert_eq!(states, ["cancelled", "finished"], "{dataset:?}");
}

async fn pending_keeps_the_reason(f: Fixture) {
    let (task, _) = f.service.submit_task(draft("t", 1, ""), None).await.unwrap();
    f.service.set_task_pending(task.id, "no queue".into()).await.unwrap();
    f.service.set_task_pending(task.id, "no queue".into()).await.unwrap();
    let (task, _) = f.service.get_task(task.id).await.unwrap();
    assert_eq!((task.status, task.error_diag.as_str()), (TaskStatus::Pending, "no queue"));
    // A pending task still gets its jobs later.
    f.service.insert_jobs(task.id, jobs(1, "q", "")).await.unwrap();
    assert_eq!(f.service.get_task(task.id).await.unwrap().0.status, TaskStatus::Running);
}

async fn watchdog_requeues_unstarted_and_fails_silent_jobs(f: Fixture) {
    let task = submit_with_jobs(&f, "t", 2, "").await;
    let never_started = f.service.dispatch("q", "n1", "", Resources::default(), 1).await.unwrap().remove(0);
    let silent = f.service.dispatch("q", "n2", "", Resources::default(), 1).await.unwrap().remove(0);
    let silent_lease = silent.job.lease_token.clone().unwrap();
    f.service.update_job(silent.job.id, &silent_lease, report(JobStatus::Running)).await.unwrap();
    // Nothing is stale yet with a generous limit.
    assert_eq!(f.service.sweep_lost_jobs(std::time::Duration::from_secs(3600)).await.unwrap(), 0);
    assert_eq!(f.service.sweep_lost_jobs(std::time::Duration::ZERO).await.unwrap(), 2);
    let requeued = f.service.show_job(never_started.job.id).await.unwrap();
    assert_eq!(requeued.status, JobStatus::Activated);
    assert_eq!(requeued.lease_token, None);
    let failed = f.service.show_job(silent.job.id).await.unwrap();
    assert_eq!((failed.status, failed.error_code), (JobStatus::Failed, panda_server::service::LOST_HEARTBEAT));
    assert_eq!(failed.error_source, ErrorSource::Server, "a lost heartbeat is the server's decision");
    assert!(failed.error_diag.contains("lost heartbeat"), "{}", failed.error_diag);
    // The lost pilots are fenced off.
    let old_lease = never_started.job.lease_token.clone().unwrap();
    assert!(matches!(
        f.service.update_job(never_started.job.id, &old_lease, report(JobStatus::Running)).await,
        Err(Error::NotHolder { .. })
    ));
    assert!(matches!(
        f.service.update_job(silent.job.id, &silent_lease, report(JobStatus::Running)).await,
        Err(Error::NotHolder { .. })
    ));
    // The requeued job runs again under a new lease; the task ends partly successful.
    let again = f.service.dispatch("q", "n3", "", Resources::default(), 1).await.unwrap().remove(0);
    assert_eq!(again.job.id, never_started.job.id);
    let lease = again.job.lease_token.clone().unwrap();
    assert_ne!(lease, old_lease);
    f.service.update_job(again.job.id, &lease, report(JobStatus::Running)).await.unwrap();
    f.service.update_job(again.job.id, &lease, report(JobStatus::Finished)).await.unwrap();
    assert_eq!(f.service.get_task(task).await.unwrap().0.status, TaskStatus::Finished);
}

async fn pause_holds_queued_jobs_and_resume_releases_them(f: Fixture) {
    let task = submit_with_jobs(&f, "t", 3, "").await;
    let running = f.service.dispatch("q", "n", "", Resources::default(), 1).await.unwrap().remove(0);
    let (paused, counts) = f.service.pause_task(task).await.unwrap();
    assert_eq!(paused.status, TaskStatus::Paused);
    assert_eq!(counts.queued, 2);
    // Held jobs are not dispatched; the running one goes on.
    assert!(f.service.dispatch("q", "n", "", Resources::default(), 5).await.unwrap().is_empty());
    let lease = running.job.lease_token.clone().unwrap();
    f.service.update_job(running.job.id, &lease, report(JobStatus::Running)).await.unwrap();
    assert!(matches!(f.service.pause_task(task).await, Err(Error::TaskState { status: TaskStatus::Paused, .. })));
    let (resumed, _) = f.service.resume_task(task).await.unwrap();
    assert_eq!(resumed.status, TaskStatus::Running);
    assert_eq!(f.service.dispatch("q", "n", "", Resources::default(), 5).await.unwrap().len(), 2);
    assert!(matches!(f.service.resume_task(task).await, Err(Error::TaskState { status: TaskStatus::Running, .. })));
    // A task paused before JEDI got to it goes back to registered (and gets its jobs then).
    let (fresh, _) = f.service.submit_task(draft("fresh", 1, ""), None).await.unwrap();
    f.service.pause_task(fresh.id).await.unwrap();
    assert!(matches!(f.service.insert_jobs(fresh.id, jobs(1, "q", "")).await, Err(Error::TaskState { .. })));
    assert_eq!(f.service.resume_task(fresh.id).await.unwrap().0.status, TaskStatus::Registered);
}

async fn priority_changes_reach_queued_jobs(f: Fixture) {
    let low = submit_with_jobs(&f, "low", 2, "").await;
    let high = submit_with_jobs(&f, "high", 2, "").await;
    let (task, _) = f.service.set_task_priority(low, 500).await.unwrap();
    assert_eq!(task.spec.priority, 500);
    assert_eq!(f.service.get_task(low).await.unwrap().0.spec.priority, 500);
    // The raised task's jobs now go first.
    let first = f.service.dispatch("q", "n", "", Resources::default(), 2).await.unwrap();
    assert!(first.iter().all(|d| d.job.task_id == low && d.job.priority == 500), "{first:?}");
    assert!(
        f.service.dispatch("q", "n", "", Resources::default(), 2).await.unwrap().iter().all(|d| d.job.task_id == high)
    );
}

async fn killing_a_job_cancels_it_alone(f: Fixture) {
    let task = submit_with_jobs(&f, "t", 2, "out").await;
    let (_, counts) = f.service.get_task(task).await.unwrap();
    assert_eq!(counts.queued, 2);
    let jobs = f
        .service
        .list_jobs(panda_server::store::JobFilter { task_id: Some(task), limit: 10, ..Default::default() })
        .await
        .unwrap();
    let killed = f.service.kill_job(jobs[0].id).await.unwrap();
    assert_eq!(killed.status, JobStatus::Cancelled);
    assert!(matches!(f.service.kill_job(jobs[0].id).await, Err(Error::JobTransition { .. })));
    // The other job still runs, and the task ends partly done.
    let other = f.service.dispatch("q", "n", "", Resources::default(), 5).await.unwrap().remove(0);
    let lease = other.job.lease_token.clone().unwrap();
    f.service.update_job(other.job.id, &lease, report(JobStatus::Running)).await.unwrap();
    let mut done = report(JobStatus::Finished);
    done.output_files =
        vec![OutputFile { lfn: other.job.output_files[0].clone(), size_bytes: 1, checksum: String::new() }];
    f.service.update_job(other.job.id, &lease, done).await.unwrap();
    assert_eq!(f.service.get_task(task).await.unwrap().0.status, TaskStatus::Finished);
    // Killing a running job reaches its pilot at the next heartbeat.
    let second = submit_with_jobs(&f, "u", 1, "").await;
    let held = f.service.dispatch("q", "n", "", Resources::default(), 1).await.unwrap().remove(0);
    let lease = held.job.lease_token.clone().unwrap();
    f.service.kill_job(held.job.id).await.unwrap();
    assert_eq!(
        f.service.update_job(held.job.id, &lease, report(JobStatus::Running)).await.unwrap().1,
        PilotCommand::Kill
    );
    f.service.update_job(held.job.id, &lease, report(JobStatus::Failed)).await.unwrap();
    let (task, _) = f.service.get_task(second).await.unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert!(task.error_diag.contains("1 cancelled"), "{}", task.error_diag);
}

async fn list_filters(f: Fixture) {
    submit_with_jobs(&f, "mc23.evgen", 1, "").await;
    submit_with_jobs(&f, "data24.reco", 1, "").await;
    let names =
        |tasks: Vec<(panda_server::model::Task, _)>| tasks.into_iter().map(|(t, _)| t.spec.name).collect::<Vec<_>>();
    let filter = |name: &str| panda_server::store::TaskFilter {
        limit: 10,
        name_contains: Some(name.into()),
        ..Default::default()
    };
    assert_eq!(names(f.service.list_tasks(filter("evgen")).await.unwrap()), vec!["mc23.evgen"]);
    let future = panda_server::store::TaskFilter {
        limit: 10,
        created_after: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
        ..Default::default()
    };
    assert!(f.service.list_tasks(future).await.unwrap().is_empty());
    let past = panda_server::store::TaskFilter {
        limit: 10,
        created_after: Some(chrono::Utc::now() - chrono::Duration::hours(1)),
        ..Default::default()
    };
    let listed = f.service.list_tasks(past).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|(_, counts)| counts.total == 1 && counts.queued == 1), "{listed:?}");
    let other_queue =
        panda_server::store::JobFilter { limit: 10, queue: Some("elsewhere".into()), ..Default::default() };
    assert!(f.service.list_jobs(other_queue).await.unwrap().is_empty());
    let this_queue = panda_server::store::JobFilter { limit: 10, queue: Some("q".into()), ..Default::default() };
    assert_eq!(f.service.list_jobs(this_queue).await.unwrap().len(), 2);
}

async fn retry_reruns_failed_jobs_as_new_attempts(f: Fixture) {
    let task = submit_with_jobs(&f, "t", 2, "out").await;
    let first = f.service.dispatch("q", "n", "", Resources::default(), 2).await.unwrap();
    let mut failed_job = None;
    for (i, d) in first.iter().enumerate() {
        let lease = d.job.lease_token.clone().unwrap();
        f.service.update_job(d.job.id, &lease, report(JobStatus::Running)).await.unwrap();
        if i == 0 {
            f.service.update_job(d.job.id, &lease, report(JobStatus::Failed)).await.unwrap();
            failed_job = Some(d.job.clone());
        } else {
            let mut done = report(JobStatus::Finished);
            done.output_files =
                vec![OutputFile { lfn: d.job.output_files[0].clone(), size_bytes: 1, checksum: String::new() }];
            f.service.update_job(d.job.id, &lease, done).await.unwrap();
        }
    }
    assert_eq!(f.service.get_task(task).await.unwrap().0.status, TaskStatus::Finished);
    let closed = f.service.get_dataset("out").await.unwrap();
    assert_eq!(closed.status, panda_types::DatasetStatus::Finished);
    let (retried, counts) = f.service.retry_task(task).await.unwrap();
    assert_eq!(retried.status, TaskStatus::Running);
    // The retry reopens the closed output and expects the failed job's output again.
    let reopened = f.service.get_dataset("out").await.unwrap();
    assert_eq!(reopened.status, panda_types::DatasetStatus::Running);
    let mut states: Vec<_> = reopened.files.iter().map(|file| file.status.as_str()).collect();
    states.sort();
    assert_eq!(states, ["defined", "finished"], "{reopened:?}");
    // Counts are of current attempts: the failed one is superseded by its retry.
    assert_eq!((counts.total, counts.queued, counts.finished, counts.failed), (2, 1, 1, 0));
    // The new attempt runs the same index and writes the same output.
    let again = f.service.dispatch("q", "n", "", Resources::default(), 5).await.unwrap();
    assert_eq!(again.len(), 1);
    let failed_job = failed_job.unwrap();
    let new = &again[0].job;
    assert_eq!((new.job_index, new.attempt_nr, &new.output_files), (failed_job.job_index, 2, &failed_job.output_files));
    let lease = new.lease_token.clone().unwrap();
    f.service.update_job(new.id, &lease, report(JobStatus::Running)).await.unwrap();
    let mut done = report(JobStatus::Finished);
    done.output_files = vec![OutputFile { lfn: new.output_files[0].clone(), size_bytes: 7, checksum: String::new() }];
    f.service.update_job(new.id, &lease, done).await.unwrap();
    // Every job's latest attempt finished: the task is done, and the old attempt stays in the
    // history as failed.
    assert_eq!(f.service.get_task(task).await.unwrap().0.status, TaskStatus::Done);
    let dataset = f.service.get_dataset("out").await.unwrap();
    assert!(dataset.files.iter().all(|file| file.status == "finished"), "{dataset:?}");
    assert_eq!(f.service.show_job(failed_job.id).await.unwrap().status, JobStatus::Failed);
    // A task with every job finished has nothing to retry.
    assert!(matches!(f.service.retry_task(task).await, Err(Error::TaskState { .. })));
}

async fn final_reports_racing_a_kill_never_deadlock(f: Fixture) {
    // Pilots' final reports lock job then need the task; a kill locks the task then its jobs.
    // With one lock order (task, then job) none of them fails; PostgreSQL would abort one with
    // "deadlock detected" otherwise.
    let task = submit_with_jobs(&f, "t", 40, "").await;
    let held = f.service.dispatch("q", "n", "", Resources::default(), 40).await.unwrap();
    for d in &held {
        f.service
            .update_job(d.job.id, d.job.lease_token.as_deref().unwrap(), report(JobStatus::Running))
            .await
            .unwrap();
    }
    let service = Arc::new(f.service.clone());
    let mut handles = Vec::new();
    for d in held {
        let service = service.clone();
        handles.push(tokio::spawn(async move {
            let lease = d.job.lease_token.clone().unwrap();
            service.update_job(d.job.id, &lease, report(JobStatus::Failed)).await.map(|_| ())
        }));
    }
    let killer = {
        let service = service.clone();
        tokio::spawn(async move { service.kill_task(task).await.map(|_| ()) })
    };
    for handle in handles {
        handle.await.unwrap().unwrap();
    }
    match killer.await.unwrap() {
        // The kill may come after the task already failed: refused, not an internal error.
        Ok(()) | Err(Error::TaskState { .. }) => {}
        Err(other) => panic!("kill failed: {other}"),
    }
    let (task, counts) = f.service.get_task(task).await.unwrap();
    assert_eq!(counts.unfinished(), 0);
    assert!(task.status.is_final(), "{:?}", task.status);
}

async fn the_watchdog_ends_tasks_whose_last_check_was_lost(f: Fixture) {
    let task = submit_with_jobs(&f, "t", 2, "").await;
    // As if the server died right after the jobs' commits, before the end-of-task check.
    let conn = f._db.connect().await;
    sea_orm::ConnectionTrait::execute_unprepared(&conn, "UPDATE jobs SET status = 'finished'").await.unwrap();
    assert_eq!(f.service.get_task(task).await.unwrap().0.status, TaskStatus::Running);
    assert_eq!(f.service.end_drained_tasks().await.unwrap(), 1);
    assert_eq!(f.service.get_task(task).await.unwrap().0.status, TaskStatus::Done);
    assert_eq!(f.service.end_drained_tasks().await.unwrap(), 0);
}

/// Many pilots' requests in one transaction: different queues and offers, overlapping ones on
/// the same queue; each job goes to one request, each request gets at most what it asked for.
async fn a_dispatch_batch_serves_each_request_and_no_job_twice(f: Fixture) {
    let (task, _) = f.service.submit_task(draft("t", 30, ""), None).await.unwrap();
    let mut new = jobs(20, "q", "");
    new.extend(jobs(10, "r", "").into_iter().map(|mut j| {
        j.job_index += 100;
        j
    }));
    new[0].resources.cores = 8;
    f.service.insert_jobs(task.id, new).await.unwrap();
    let request = |queue: &str, cores: u32, n: u32| DispatchRequest {
        queue: queue.into(),
        node: format!("{queue}-{cores}-{n}"),
        worker_id: String::new(),
        offer: Resources { cores, ..Default::default() },
        n,
        task: None,
    };
    let requests = vec![
        request("q", 8, 5),
        request("q", 1, 4),
        request("bad queue!", 1, 1),
        request("r", 0, 6),
        request("q", 0, 20),
        request("r", 0, 6),
    ];
    let answers = f.service.dispatch_batch(&requests).await.unwrap();
    assert_eq!(answers.len(), requests.len());
    assert!(matches!(answers[2], Err(Error::InvalidArgument(_))), "a bad request is refused alone");
    let mut all = Vec::new();
    for (request, answer) in requests.iter().zip(&answers) {
        let Ok(jobs) = answer else { continue };
        assert!(jobs.len() <= request.n as usize);
        for d in jobs {
            assert_eq!(d.job.queue, request.queue);
            assert_eq!(d.job.status, JobStatus::Sent);
            assert_eq!(d.job.node, request.node);
            assert!(request.offer.cores == 0 || d.job.resources.cores <= request.offer.cores);
            all.push(d.job.id);
        }
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "no job dispatched twice within a batch");
    assert_eq!(all.len(), 30, "all 30 jobs fit the requests");
    assert_eq!(answers[3].as_ref().unwrap().len() + answers[5].as_ref().unwrap().len(), 10);
    // What was handed out is what the database says.
    for d in answers.iter().flatten().flatten() {
        let stored = f.service.show_job(d.job.id).await.unwrap();
        assert_eq!(
            (stored.status, stored.lease_token.clone(), stored.node.clone()),
            (JobStatus::Sent, d.job.lease_token.clone(), d.job.node.clone())
        );
    }
}

/// Reports in one batch: each gets its own answer; refused ones leave no trace; several reports
/// on one job apply in order.
async fn a_report_batch_answers_each_report_alone(f: Fixture) {
    let task = submit_with_jobs(&f, "t", 3, "out").await;
    let sent = f.service.dispatch("q", "n", "", Resources::default(), 3).await.unwrap();
    let lease = |i: usize| sent[i].job.lease_token.clone().unwrap();
    let id = |i: usize| sent[i].job.id;
    let mut finished = report(JobStatus::Finished);
    finished.exit_code = Some(0);
    finished.output_files = vec![OutputFile {
        lfn: sent[0].job.output_files[0].clone(),
        size_bytes: 7,
        checksum: "adler32:00000001".into(),
    }];
    let mut wrong_output = report(JobStatus::Finished);
    wrong_output.output_files = vec![OutputFile { lfn: "elsewhere".into(), size_bytes: 1, checksum: String::new() }];
    let update = |job_id, lease_token: String, report| UpdateRequest { job_id, lease_token, report };
    let updates = vec![
        update(id(0), lease(0), report(JobStatus::Running)),
        update(id(0), lease(0), finished.clone()),
        update(id(1), "stale".into(), report(JobStatus::Failed)),
        update(id(2), lease(2), wrong_output),
        update(panda_types::JobId(999_999), "x".into(), report(JobStatus::Running)),
        update(id(2), lease(2), report(JobStatus::Running)),
        update(id(0), lease(0), finished),
    ];
    let outcomes = f.service.update_batch(&updates).await.unwrap();
    assert_eq!(outcomes.len(), updates.len());
    assert_eq!(outcomes[0].as_ref().unwrap().0, JobStatus::Running);
    assert_eq!(outcomes[1].as_ref().unwrap().0, JobStatus::Finished);
    assert!(matches!(outcomes[2], Err(Error::NotHolder { .. })));
    assert!(matches!(outcomes[3], Err(Error::InvalidArgument(_))));
    assert!(matches!(outcomes[4], Err(Error::JobNotFound { .. })));
    assert_eq!(outcomes[5].as_ref().unwrap().0, JobStatus::Running, "a refused report does not block the next one");
    assert_eq!(*outcomes[6].as_ref().unwrap(), (JobStatus::Finished, PilotCommand::None), "a repeated final report");
    let job0 = f.service.show_job(id(0)).await.unwrap();
    assert_eq!((job0.status, job0.exit_code), (JobStatus::Finished, Some(0)));
    let job1 = f.service.show_job(id(1)).await.unwrap();
    assert_eq!(job1.status, JobStatus::Sent, "the stale report changed nothing");
    let job2 = f.service.show_job(id(2)).await.unwrap();
    assert_eq!(job2.status, JobStatus::Running);
    let dataset = f.service.get_dataset("out").await.unwrap();
    let file0 = dataset.files.iter().find(|file| file.lfn == sent[0].job.output_files[0]).unwrap();
    assert_eq!((file0.status.as_str(), file0.size_bytes), ("finished", 7));
    assert_eq!(f.service.get_task(task).await.unwrap().0.status, TaskStatus::Running);
}

/// A dispatch whose answer could not be delivered goes back to the queue, unless the pilot
/// already holds it (a later lease or a started job is never taken away).
async fn undelivered_dispatches_go_back_to_the_queue(f: Fixture) {
    submit_with_jobs(&f, "t", 2, "").await;
    let sent = f.service.dispatch("q", "n", "", Resources::default(), 2).await.unwrap();
    let lease1 = sent[1].job.lease_token.clone().unwrap();
    f.service.update_job(sent[1].job.id, &lease1, report(JobStatus::Running)).await.unwrap();
    assert_eq!(f.service.release_undelivered(sent.clone()).await.unwrap(), 1);
    let back = f.service.show_job(sent[0].job.id).await.unwrap();
    assert_eq!((back.status, back.lease_token), (JobStatus::Activated, None));
    assert_eq!(f.service.show_job(sent[1].job.id).await.unwrap().status, JobStatus::Running);
    // The released job is dispatched again, under a new lease; the old one is dead.
    let again = f.service.dispatch("q", "m", "", Resources::default(), 5).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].job.lease_token, sent[0].job.lease_token);
    let old = sent[0].job.lease_token.clone().unwrap();
    assert!(matches!(
        f.service.update_job(sent[0].job.id, &old, report(JobStatus::Running)).await,
        Err(Error::NotHolder { .. })
    ));
}

/// The group commit front as the gRPC adapter uses it: many concurrent pilots, batched
/// transactions, every job dispatched and finished exactly once.
async fn group_committed_pilots_take_each_job_once(f: Fixture) {
    let n = 400;
    let task = submit_with_jobs(&f, "t", n, "").await;
    let pilots = PilotBatches::start(&f.service, Shape { workers: 3, max_batch: 64 });
    let mut handles = Vec::new();
    for pilot in 0..40 {
        let pilots = pilots.clone();
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let request = DispatchRequest {
                    queue: "q".into(),
                    node: format!("node{pilot}"),
                    worker_id: String::new(),
                    offer: Resources::default(),
                    n: 1 + pilot % 3,
                    task: None,
                };
                let batch = pilots.dispatch(request).await.unwrap();
                if batch.is_empty() {
                    return got;
                }
                for d in batch {
                    let lease_token = d.job.lease_token.clone().unwrap();
                    let mut done = report(JobStatus::Finished);
                    done.exit_code = Some(0);
                    let update = UpdateRequest { job_id: d.job.id, lease_token, report: done };
                    assert_eq!(pilots.update(update).await.unwrap().0, JobStatus::Finished);
                    got.push(d.job.id);
                }
            }
        }));
    }
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), n as usize, "every job dispatched");
    assert_eq!(unique.len(), all.len(), "no job dispatched twice");
    let (task, counts) = f.service.get_task(task).await.unwrap();
    assert_eq!(counts.finished, n);
    assert_eq!(task.status, TaskStatus::Done);
}

/// A failure without a pilot error code but with a non-zero exit is the payload's.
async fn a_payload_failure_is_told_apart_from_a_pilot_failure(f: Fixture) {
    submit_with_jobs(&f, "t", 1, "").await;
    let sent = f.service.dispatch("q", "n", "", Resources::default(), 1).await.unwrap();
    let lease = sent[0].job.lease_token.clone().unwrap();
    let mut failed = report(JobStatus::Failed);
    failed.exit_code = Some(3);
    f.service.update_job(sent[0].job.id, &lease, failed).await.unwrap();
    let job = f.service.show_job(sent[0].job.id).await.unwrap();
    assert_eq!((job.error_source, job.exit_code), (ErrorSource::Payload, Some(3)));
    let times = job.state_times.parse();
    assert!(times.contains_key("failed") && !times.contains_key("running"), "{times:?}");
}

/// Runs a dispatched job to `finished` with its declared outputs.
async fn finish(f: &Fixture, d: &panda_server::service::Dispatched) {
    let lease = d.job.lease_token.clone().unwrap();
    let mut done = report(JobStatus::Finished);
    done.exit_code = Some(0);
    done.output_files = d
        .job
        .output_files
        .iter()
        .map(|lfn| OutputFile { lfn: lfn.clone(), size_bytes: 1, checksum: String::new() })
        .collect();
    f.service.update_job(d.job.id, &lease, done).await.unwrap();
}

/// A task with `split.merge_files_per_job` does not end when its processing jobs end: it waits
/// for its merge jobs (inserted once, only then), and ends with them.
async fn a_merging_task_waits_for_its_merge_jobs(f: Fixture) {
    let mut spec = draft("t", 2, "out");
    spec.split.merge_files_per_job = Some(2);
    let (task, _) = f.service.submit_task(spec, None).await.unwrap();
    f.service.insert_jobs(task.id, jobs(2, "q", "out")).await.unwrap();
    let merge = |index: u32| NewJob {
        job_index: index,
        queue: "q".into(),
        command: "cat {inputs} > {output}".into(),
        environment: BTreeMap::new(),
        input_files: vec!["out._000001".into(), "out._000002".into()],
        output_files: vec![format!("out.merged._{index:06}")],
        resources: Resources { cores: 1, ..Default::default() },
        priority: 0,
        merge: true,
    };
    use panda_server::model::JobBatch;
    // Not while processing jobs are live.
    let early = f.service.insert_jobs_with(task.id, vec![merge(3)], JobBatch::Merge).await.unwrap_err();
    assert!(matches!(early, Error::TaskState { .. }), "{early}");
    for d in f.service.dispatch("q", "n", "", Resources::default(), 2).await.unwrap() {
        finish(&f, &d).await;
    }
    let (waiting, counts) = f.service.get_task(task.id).await.unwrap();
    assert_eq!((waiting.status, counts.finished), (TaskStatus::Running, 2), "the task waits for its merge jobs");
    // The watchdog's safety net leaves it waiting too.
    f.service.end_drained_tasks().await.unwrap();
    assert_eq!(f.service.get_task(task.id).await.unwrap().0.status, TaskStatus::Running);
    let ids = f.service.insert_jobs_with(task.id, vec![merge(3)], JobBatch::Merge).await.unwrap();
    // Once only.
    let again = f.service.insert_jobs_with(task.id, vec![merge(4)], JobBatch::Merge).await.unwrap_err();
    assert!(matches!(again, Error::TaskState { .. }), "{again}");
    assert!(f.service.show_job(ids[0]).await.unwrap().merge);
    let sent = f.service.dispatch("q", "n", "", Resources::default(), 5).await.unwrap();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].job.merge);
    finish(&f, &sent[0]).await;
    let (ended, counts) = f.service.get_task(task.id).await.unwrap();
    assert_eq!((ended.status, counts.finished), (TaskStatus::Done, 3));
    let dataset = f.service.get_dataset("out").await.unwrap();
    assert!(dataset.files.iter().any(|file| file.lfn == "out.merged._000003" && file.status == "finished"));
    // A task without the rule never takes merge jobs.
    let plain = submit_with_jobs(&f, "p", 1, "").await;
    let refused = f.service.insert_jobs_with(plain, vec![merge(2)], JobBatch::Merge).await.unwrap_err();
    assert!(matches!(refused, Error::TaskState { .. }), "{refused}");
}

/// Without `max_attempts` a task retries (three attempts): a failed job keeps its task running
/// for JEDI's next attempt instead of ending it.
async fn a_failed_job_with_default_attempts_keeps_the_task_running(f: Fixture) {
    let mut spec = draft("t", 1, "");
    spec.split.max_attempts = None;
    let (task, _) = f.service.submit_task(spec, None).await.unwrap();
    f.service.insert_jobs(task.id, jobs(1, "q", "")).await.unwrap();
    let sent = f.service.dispatch("q", "n", "", Resources::default(), 1).await.unwrap();
    let lease = sent[0].job.lease_token.clone().unwrap();
    f.service.update_job(sent[0].job.id, &lease, report(JobStatus::Failed)).await.unwrap();
    let (task, counts) = f.service.get_task(task.id).await.unwrap();
    assert_eq!((task.status, counts.failed), (TaskStatus::Running, 1));
}

fn new_work(name: &str, calls: usize) -> NewWork {
    NewWork {
        task: TaskSpecDraft { name: name.into(), command: "python3 -m pandars.runtime".into(), ..Default::default() },
        function: "m:f".into(),
        serializer: "json".into(),
        calls: (0..calls).map(|i| (format!("k{i}"), format!("[{i}]").into_bytes())).collect(),
        warm_command: None,
    }
}

fn ok_result(task_id: TaskId, index: u32, value: &str) -> FunctionResult {
    FunctionResult { task_id: task_id.0, index, ok: true, value: value.as_bytes().to_vec(), ..Default::default() }
}

/// A work is one task with its calls, stored together; the runtime reads its call and stores its
/// result; a job that ends without one gets a failure result.
async fn a_work_stores_calls_and_results(f: Fixture) {
    let (task_id, created) = f.service.submit_work(new_work("w", 3), Some("wk".into())).await.unwrap();
    assert!(created);
    let (again, created) = f.service.submit_work(new_work("w", 3), Some("wk".into())).await.unwrap();
    assert_eq!((again, created), (task_id, false));
    let (task, _) = f.service.get_task(task_id).await.unwrap();
    assert_eq!(task.spec.input, panda_types::spec::TaskInput::Generated { n_jobs: 3 });
    let (work, call) = f.service.get_call(task_id, 2).await.unwrap();
    assert_eq!((work.function.as_str(), call.key.as_str(), call.args.as_slice()), ("m:f", "k1", b"[1]".as_slice()));
    assert!(matches!(f.service.get_call(task_id, 4).await, Err(Error::CallNotFound { n_calls: 3, .. })));
    f.service.insert_jobs(task_id, jobs(3, "q", "")).await.unwrap();
    let sent = f.service.dispatch("q", "n", "", Resources::default(), 3).await.unwrap();
    let job = |index: u32| sent.iter().find(|d| d.job.job_index == index).unwrap().job.clone();
    // A job may store only its own call's result.
    let error = f.service.put_result(job(1).id, ok_result(task_id, 2, "1")).await.unwrap_err();
    assert!(matches!(error, Error::ResultRefused { .. }), "{error}");
    assert!(f.service.put_result(job(1).id, ok_result(task_id, 1, "10")).await.unwrap());
    // The first success stays.
    assert!(!f.service.put_result(job(1).id, ok_result(task_id, 1, "11")).await.unwrap());
    // Job 2 is killed before storing anything: its call gets a failure result.
    f.service.kill_job(job(2).id).await.unwrap();
    let lease = job(2).lease_token.unwrap();
    f.service.update_job(job(2).id, &lease, report(JobStatus::Failed)).await.unwrap();
    assert!(f.service.record_job_end(task_id, job(2).id).await.unwrap());
    assert!(!f.service.record_job_end(task_id, job(2).id).await.unwrap(), "a second delivery changes nothing");
    // A job that stored its result and ended gets no failure result.
    let lease1 = job(1).lease_token.unwrap();
    f.service.update_job(job(1).id, &lease1, report(JobStatus::Finished)).await.unwrap();
    assert!(!f.service.record_job_end(task_id, job(1).id).await.unwrap());
    // A job still running is left alone; an ended job may not store a result any more.
    assert!(!f.service.record_job_end(task_id, job(3).id).await.unwrap());
    let error = f.service.put_result(job(2).id, ok_result(task_id, 2, "20")).await.unwrap_err();
    assert!(matches!(error, Error::ResultRefused { .. }), "{error}");
    let (results, n_calls) = f.service.list_results(task_id).await.unwrap();
    assert_eq!(n_calls, 3);
    assert_eq!(results.len(), 2);
    assert!(results[0].ok && results[0].value == b"10" && results[0].key == "k0" && results[0].serializer == "json");
    let failure = results[1].error.clone().unwrap();
    assert!(!results[1].ok);
    assert_eq!(failure.r#type, "JobCancelled");
    assert_eq!(failure.log_location, format!("panda job logs {}", job(2).id));
}

/// A work killed before its jobs exist still answers every call (with a failure).
async fn a_work_killed_before_its_jobs_answers_every_call(f: Fixture) {
    let (task_id, _) = f.service.submit_work(new_work("w", 2), None).await.unwrap();
    assert_eq!(f.service.record_task_end(task_id).await.unwrap(), 0, "a running work is left alone");
    f.service.kill_task(task_id).await.unwrap();
    assert_eq!(f.service.record_task_end(task_id).await.unwrap(), 2);
    assert_eq!(f.service.record_task_end(task_id).await.unwrap(), 0, "a second delivery changes nothing");
    let (results, _) = f.service.list_results(task_id).await.unwrap();
    let kinds: Vec<String> = results.iter().map(|r| r.error.clone().unwrap().r#type).collect();
    assert_eq!(kinds, ["TaskAborted", "TaskAborted"]);
    assert_eq!((results[0].key.as_str(), results[1].key.as_str()), ("k0", "k1"));
}

/// Bad works are refused whole, every problem named; nothing is stored.
async fn a_bad_work_stores_nothing(f: Fixture) {
    let mut bad = new_work("", 2);
    bad.calls[1].0 = "k0".into();
    bad.serializer = "xml".into();
    let Err(Error::InvalidArgument(problems)) = f.service.submit_work(bad, None).await else { panic!("accepted") };
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert!(
        fields.contains(&"serializer") && fields.contains(&"calls[1].key") && fields.contains(&"task.name"),
        "{fields:?}"
    );
    assert!(f.service.list_tasks(Default::default()).await.unwrap().is_empty());
    assert!(matches!(f.service.list_results(TaskId(1)).await, Err(Error::WorkNotFound { .. })));
    // An ordinary task is no work.
    let (task, _) = f.service.submit_task(draft("t", 1, ""), None).await.unwrap();
    assert!(matches!(f.service.get_call(task.id, 1).await, Err(Error::WorkNotFound { .. })));
}

/// A harvester's worker reports: the latest per queue and instance counts, running workers are
/// the queue's pilots, stale reports stop counting, and the answer names the reported live
/// workers holding a job the server wants killed.
async fn worker_reports_count_as_pilots_and_name_workers_of_killed_jobs(f: Fixture) {
    use panda_server::model::{Queue, WorkerReport};
    let queue = |name: &str| Queue {
        name: name.into(),
        status: "online".into(),
        max_resources: Resources { cores: 1, ..Default::default() },
        max_workers: 10,
        harvester_id: "h1".into(),
        site: String::new(),
        containers: Vec::new(),
        heartbeat_at: chrono::Utc::now(),
    };
    f.service.register_queues(vec![queue("q"), queue("other")]).await.unwrap();
    let counts = |pairs: &[(&str, u32)]| pairs.iter().map(|(s, n)| ((*s).to_owned(), *n)).collect();
    let workers = |queue: &str, by_status, ids: &[&str]| WorkerReport {
        queue: queue.into(),
        by_status,
        live_worker_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
    };
    let task = submit_with_jobs(&f, "t", 3, "").await;
    // Worker 7 runs job A; worker 8 holds job B (sent); the third job stays queued.
    let a = f.service.dispatch("q", "n", "7", Resources::default(), 1).await.unwrap().remove(0);
    let lease = a.job.lease_token.clone().unwrap();
    f.service.update_job(a.job.id, &lease, report(JobStatus::Running)).await.unwrap();
    let b = f.service.dispatch("q", "n", "8", Resources::default(), 1).await.unwrap().remove(0);

    let kills = f
        .service
        .report_workers("h1", vec![workers("q", counts(&[("running", 2), ("submitted", 1)]), &["7", "8", "9"])])
        .await
        .unwrap();
    assert!(kills.is_empty(), "{kills:?}");
    // A second instance on the same queue adds its own; a new report replaces the old one.
    f.service.report_workers("h2", vec![workers("q", counts(&[("running", 1)]), &["1"])]).await.unwrap();
    f.service.report_workers("h1", vec![workers("q", counts(&[("running", 3)]), &["7", "8", "9"])]).await.unwrap();
    let listed = f.service.list_queues().await.unwrap();
    let (_, _, seen) = listed.iter().find(|(q, _, _)| q.name == "q").unwrap();
    assert_eq!(seen.pilots, 4);
    assert_eq!(seen.by_status, counts(&[("running", 4)]));
    let (_, _, none) = listed.iter().find(|(q, _, _)| q.name == "other").unwrap();
    assert_eq!(none.pilots, 0);

    // The task is killed: the queued job ends at once, the held ones are marked; the report names
    // the workers that hold them (worker 1 at h2 holds nothing of this queue).
    f.service.kill_task(task).await.unwrap();
    let mut kills = f
        .service
        .report_workers("h1", vec![workers("q", counts(&[("running", 3)]), &["7", "8", "9", "1"])])
        .await
        .unwrap();
    kills.sort_by(|x, y| x.worker_id.cmp(&y.worker_id));
    assert_eq!(
        kills.iter().map(|k| (k.worker_id.as_str(), k.job_id)).collect::<Vec<_>>(),
        [("7", a.job.id), ("8", b.job.id)]
    );
    assert!(kills[0].reason.contains("killed"), "{}", kills[0].reason);
    // Once the pilot reported, the worker is not named any more.
    f.service.update_job(a.job.id, &lease, report(JobStatus::Failed)).await.unwrap();
    let kills = f.service.report_workers("h1", vec![workers("q", counts(&[]), &["7", "8"])]).await.unwrap();
    assert_eq!(kills.iter().map(|k| k.worker_id.as_str()).collect::<Vec<_>>(), ["8"]);

    // Stale reports stop counting.
    let stale = f.service.clone().with_worker_report_stale_after(std::time::Duration::ZERO);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let listed = stale.list_queues().await.unwrap();
    assert!(listed.iter().all(|(_, _, w)| w.pilots == 0 && w.by_status.is_empty()), "{listed:?}");

    // Bad reports are refused naming the field, and change nothing.
    let error = f
        .service
        .report_workers(
            "",
            vec![workers("q", counts(&[("finished", 1)]), &[]), workers("q", counts(&[("walking", 1)]), &[])],
        )
        .await
        .unwrap_err()
        .to_string();
    for needle in
        ["harvester_id", "queues[0].workers_by_status", "ended state", "queues[1].queue", "not a worker state"]
    {
        assert!(error.contains(needle), "{needle} missing from {error}");
    }
}

async fn held_jobs_wait_until_released_by_index(f: Fixture) {
    let (task, _) =
        f.service.submit_task(TaskSpecDraft { hold_jobs: true, ..draft("held", 4, "out") }, None).await.unwrap();
    let ids = f.service.insert_jobs(task.id, jobs(4, "q", "out")).await.unwrap();
    let (running, counts) = f.service.get_task(task.id).await.unwrap();
    assert_eq!((running.status, counts.queued), (TaskStatus::Running, 4));
    for id in &ids {
        assert_eq!(f.service.show_job(*id).await.unwrap().status, JobStatus::Defined, "inserted held");
    }
    // Held jobs are neither dispatched nor counted as demand.
    assert!(f.service.dispatch("q", "n", "", Resources::default(), 10).await.unwrap().is_empty());
    assert!(f.service.queue_demand(&[]).await.unwrap().iter().all(|l| l.activated == 0));
    // Release by index; a repeat (a redelivered event, a restarted releaser) changes nothing.
    let done = f.service.release_jobs(task.id, &[1], &[], "").await.unwrap();
    assert_eq!((done.released.len(), done.unchanged, done.held), (1, 0, 3));
    let again = f.service.release_jobs(task.id, &[1], &[], "").await.unwrap();
    assert_eq!((again.released.len(), again.unchanged, again.held), (0, 1, 3));
    let first = f.service.dispatch("q", "n", "", Resources::default(), 10).await.unwrap();
    assert_eq!(first.iter().map(|d| d.job.job_index).collect::<Vec<_>>(), [1], "only the released job runs");
    finish(&f, &first[0]).await;
    assert_eq!(f.service.get_task(task.id).await.unwrap().0.status, TaskStatus::Running, "three jobs still held");
    // Bad requests change nothing.
    assert!(matches!(f.service.release_jobs(task.id, &[2], &[2], "x").await, Err(Error::InvalidArgument(_))));
    assert!(matches!(f.service.release_jobs(task.id, &[], &[3], " ").await, Err(Error::InvalidArgument(_))));
    assert!(matches!(f.service.release_jobs(TaskId(999), &[1], &[], "").await, Err(Error::TaskNotFound { .. })));
    assert_eq!(f.service.release_jobs(task.id, &[], &[], "").await.unwrap().held, 3);
    // A paused task's released job waits throttled, and runs after the resume.
    f.service.pause_task(task.id).await.unwrap();
    f.service.release_jobs(task.id, &[2], &[], "").await.unwrap();
    assert_eq!(f.service.show_job(ids[1]).await.unwrap().status, JobStatus::Throttled);
    f.service.resume_task(task.id).await.unwrap();
    // Job 3's input will never exist: closed with the reason, its output cancelled.
    let closed = f.service.release_jobs(task.id, &[4], &[3], "input counts/x.n was not produced").await.unwrap();
    assert_eq!((closed.released.len(), closed.closed.len(), closed.held), (1, 1, 0));
    let job3 = f.service.show_job(ids[2]).await.unwrap();
    assert_eq!((job3.status, job3.error_diag.as_str()), (JobStatus::Closed, "input counts/x.n was not produced"));
    for d in f.service.dispatch("q", "n", "", Resources::default(), 10).await.unwrap() {
        finish(&f, &d).await;
    }
    let (ended, counts) = f.service.get_task(task.id).await.unwrap();
    assert_eq!((ended.status, counts.finished), (TaskStatus::Finished, 3), "3 of 4 finished, one closed");
    let dataset = f.service.get_dataset("out").await.unwrap();
    assert_eq!(dataset.files.iter().filter(|file| file.status == "cancelled").count(), 1);
    // Without hold_jobs, jobs are inserted activated as before.
    let plain = submit_with_jobs(&f, "plain", 1, "").await;
    assert_eq!(f.service.release_jobs(plain, &[1], &[], "").await.unwrap().unchanged, 1);
}

fn shares(tree: &[(&str, Option<&str>, f64)], default: &str) -> panda_server::shares::Shares {
    let config = panda_server::shares::Config {
        tree: tree.iter().map(|(n, p, v)| panda_types::shares::ShareDef::new(n, *p, *v)).collect(),
        default: default.into(),
        ..Default::default()
    };
    let (tree, default) = config.build().unwrap();
    panda_server::shares::Shares::new(tree, default)
}

/// A task names a leaf of the share tree or gets the default one; an unknown share or an inner
/// node is refused naming `task.share`; jobs (and their retries) carry the task's share; the
/// queue's registered site is kept and a bad one refused.
async fn tasks_and_jobs_carry_a_share_of_the_tree(f: Fixture) {
    let service = f.service.clone().with_shares(shares(
        &[("production", None, 70.0), ("mc", Some("production"), 100.0), ("analysis", None, 30.0)],
        "analysis",
    ));
    for bad in ["express", "production"] {
        let draft = TaskSpecDraft { share: bad.into(), ..draft("bad", 1, "") };
        match service.submit_task(draft, None).await {
            Err(Error::InvalidArgument(problems)) => {
                assert_eq!(problems[0].field, "task.share");
                assert!(problems[0].message.starts_with(&format!("{bad:?} is not a share")), "{problems:?}");
                assert!(problems[0].message.contains("mc, analysis"), "{problems:?}");
            }
            other => panic!("{bad}: expected INVALID_ARGUMENT, got {other:?}"),
        }
    }
    assert!(service.list_tasks(Default::default()).await.unwrap().is_empty(), "nothing stored");
    let (plain, _) = service.submit_task(draft("plain", 1, ""), None).await.unwrap();
    assert_eq!(plain.spec.share, "analysis", "unset: the default leaf");
    let (mc, _) = service.submit_task(TaskSpecDraft { share: "mc".into(), ..draft("mc", 2, "") }, None).await.unwrap();
    assert_eq!(service.get_task(mc.id).await.unwrap().0.spec.share, "mc");
    service.insert_jobs(mc.id, jobs(2, "q", "")).await.unwrap();
    service.insert_jobs(plain.id, jobs(1, "q", "")).await.unwrap();
    let all = service.list_jobs(panda_server::store::JobFilter { limit: 100, ..Default::default() }).await.unwrap();
    let by_share: Vec<(u64, &str)> = all.iter().map(|j| (j.task_id.0, j.share.as_str())).collect();
    assert_eq!(by_share, vec![(mc.id.0, "mc"), (mc.id.0, "mc"), (plain.id.0, "analysis")]);
    let usage = service.list_shares().await.unwrap();
    let queued: Vec<(&str, u64, u64)> = usage.iter().map(|u| (u.name.as_str(), u.queued, u.running)).collect();
    assert_eq!(queued, vec![("mc", 2, 0), ("analysis", 1, 0)]);
    assert_eq!(usage[0].parent.as_deref(), Some("production"));
    // A retry keeps the share.
    let sent = service.dispatch("q", "n", "", Resources::default(), 3).await.unwrap();
    let first = sent.iter().find(|d| d.job.task_id == mc.id).unwrap();
    let failed = JobReport { error_code: 1, ..report(JobStatus::Failed) };
    service.update_job(first.job.id, first.job.lease_token.as_deref().unwrap(), failed).await.unwrap();
    for d in sent.iter().filter(|d| d.job.id != first.job.id) {
        service.update_job(d.job.id, d.job.lease_token.as_deref().unwrap(), report(JobStatus::Finished)).await.unwrap();
    }
    service.retry_task(mc.id).await.unwrap();
    let retried = service.list_jobs(panda_server::store::JobFilter { limit: 100, ..Default::default() }).await.unwrap();
    let retry = retried.iter().find(|j| j.attempt_nr == 2).expect("a second attempt");
    assert_eq!(retry.share, "mc");

    use panda_server::model::Queue;
    let queue = |site: &str| Queue {
        name: "CERN-PROD".into(),
        status: "online".into(),
        max_resources: Resources::default(),
        max_workers: 1,
        harvester_id: "h".into(),
        site: site.into(),
        containers: vec!["apptainer".into()],
        heartbeat_at: chrono::Utc::now(),
    };
    service.register_queues(vec![queue("CERN-PROD_DATADISK")]).await.unwrap();
    assert_eq!(service.list_queues().await.unwrap()[0].0.site, "CERN-PROD_DATADISK");
    assert_eq!(service.list_queues().await.unwrap()[0].0.containers, ["apptainer"], "runtimes are stored");
    match service.register_queues(vec![Queue { containers: vec!["lxc".into()], ..queue("CERN-PROD_DATADISK") }]).await {
        Err(Error::InvalidArgument(problems)) => {
            assert_eq!(problems[0].field, "queues[0].containers[0]");
            assert!(problems[0].message.contains("apptainer, singularity, podman, docker"), "{problems:?}");
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    match service.register_queues(vec![queue("a site")]).await {
        Err(Error::InvalidArgument(problems)) => assert_eq!(problems[0].field, "queues[0].site"),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

/// Global shares under contention: three shares (60/30/10 %) each with far more jobs than the
/// queue's 20 slots, jobs of different lengths per share, and analysis holding every slot at the
/// start. Pilots keep taking jobs as slots free up; the held jobs per share converge to the
/// targets, and each share's dispatches follow its target once the start is undone.
async fn shares_converge_to_their_targets_under_contention(f: Fixture) {
    let service = f
        .service
        .clone()
        .with_shares(shares(&[("prod", None, 60.0), ("ana", None, 30.0), ("test", None, 10.0)], "ana"));
    let submit = |name: &'static str, share: &'static str| {
        let service = service.clone();
        async move {
            let draft = TaskSpecDraft { share: share.into(), ..draft(name, 400, "") };
            let (task, _) = service.submit_task(draft, None).await.unwrap();
            service.insert_jobs(task.id, jobs(400, "q", "")).await.unwrap();
            task.id
        }
    };
    let slots = 20usize;
    let ana = submit("ana", "ana").await;
    service.refresh_shares().await.unwrap();
    // Analysis alone at first: it takes every slot.
    let mut held: Vec<(panda_server::service::Dispatched, u32)> = service
        .dispatch("q", "n", "", Resources::default(), slots as u32)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d, 0))
        .collect();
    assert!(held.iter().all(|(d, _)| d.job.task_id == ana));
    let prod = submit("prod", "prod").await;
    let test = submit("test", "test").await;
    let share_of = |task: TaskId| ["prod", "ana", "test"][[prod, ana, test].iter().position(|&t| t == task).unwrap()];
    // Rounds a job runs, per share: analysis short, production long.
    let length = |share: &str| match share {
        "prod" => 6,
        "ana" => 2,
        _ => 3,
    };
    let mut dispatched: BTreeMap<&str, u32> = BTreeMap::new();
    for round in 0..60 {
        // The background count, every few rounds (as every few seconds in the server).
        if round % 5 == 0 {
            service.refresh_shares().await.unwrap();
        }
        // Jobs whose time is up end, freeing their slots.
        let (done, running): (Vec<_>, Vec<_>) =
            held.into_iter().map(|(d, age)| (d, age + 1)).partition(|(d, age)| *age >= length(share_of(d.job.task_id)));
        held = running;
        for (d, _) in done {
            service
                .update_job(d.job.id, d.job.lease_token.as_deref().unwrap(), report(JobStatus::Finished))
                .await
                .unwrap();
        }
        // Pilots fill the free slots, one job each.
        while held.len() < slots {
            let mut got = service.dispatch("q", "n", "", Resources::default(), 1).await.unwrap();
            let d = got.pop().expect("every share has jobs left");
            if round >= 30 {
                *dispatched.entry(share_of(d.job.task_id)).or_default() += 1;
            }
            held.push((d, 0));
        }
    }
    let mut per_share: BTreeMap<&str, usize> = BTreeMap::new();
    for (d, _) in &held {
        *per_share.entry(share_of(d.job.task_id)).or_default() += 1;
    }
    for (share, target) in [("prod", 0.6), ("ana", 0.3), ("test", 0.1)] {
        let got = per_share.get(share).copied().unwrap_or(0) as f64 / slots as f64;
        assert!((got - target).abs() <= 0.1, "{share}: holds {got:.2} of the slots, target {target}; {per_share:?}");
    }
    // Dispatches in the second half: each share gets slots in proportion to target / job length.
    let weights: Vec<f64> =
        [("prod", 0.6), ("ana", 0.3), ("test", 0.1)].iter().map(|(s, t)| t / f64::from(length(s))).collect();
    let total_weight: f64 = weights.iter().sum();
    let total: u32 = dispatched.values().sum();
    for ((share, _), weight) in [("prod", 0.6), ("ana", 0.3), ("test", 0.1)].iter().zip(&weights) {
        let got = f64::from(dispatched.get(share).copied().unwrap_or(0)) / f64::from(total);
        let expected = weight / total_weight;
        assert!(
            (got - expected).abs() <= 0.1,
            "{share}: {got:.2} of dispatches, expected {expected:.2}; {dispatched:?}"
        );
    }
    // ListShares shows the same picture.
    let usage = service.list_shares().await.unwrap();
    let running: Vec<(&str, u64)> = usage.iter().map(|u| (u.name.as_str(), u.running)).collect();
    let expected: Vec<(&str, u64)> =
        ["prod", "ana", "test"].iter().map(|s| (*s, per_share.get(s).copied().unwrap_or(0) as u64)).collect();
    assert_eq!(running, expected);
}

/// A task whose input was open when JEDI read it (`input_open`) stays running when its jobs have
/// ended, takes more jobs while running (`More`), and ends once an insertion says its input is
/// complete (a `More` without jobs), with the last of its jobs or at once when drained.
async fn a_task_awaiting_input_ends_only_once_its_input_is_complete(f: Fixture) {
    use panda_server::model::JobBatch;
    let service = &f.service;
    let (producer, _) = service.submit_task(draft("producer", 1, "p.out"), None).await.unwrap();
    let consumer = TaskSpecDraft {
        name: "consumer".into(),
        command: "cat {inputs}".into(),
        input_datasets: vec!["p.out".into()],
        split: panda_types::rules::SplitRulesDraft { max_attempts: Some(1), ..Default::default() },
        ..Default::default()
    };
    let (consumer, _) = service.submit_task(consumer, None).await.unwrap();
    assert!(!consumer.awaits_input);
    service.insert_jobs_reading(consumer.id, jobs(1, "q", ""), JobBatch::Jobs, true).await.unwrap();
    assert!(service.get_task(consumer.id).await.unwrap().0.awaits_input);
    let finish_all = || async {
        for d in service.dispatch("q", "n", "", Resources::default(), 10).await.unwrap() {
            service
                .update_job(d.job.id, d.job.lease_token.as_deref().unwrap(), report(JobStatus::Finished))
                .await
                .unwrap();
        }
    };
    finish_all().await;
    service.end_drained_tasks().await.unwrap();
    assert_eq!(service.get_task(consumer.id).await.unwrap().0.status, TaskStatus::Running, "its input may grow");
    // A new file: one more job, numbered after the first, into the running task.
    let more: Vec<NewJob> = jobs(2, "q", "").into_iter().skip(1).collect();
    service.insert_jobs_reading(consumer.id, more, JobBatch::More, true).await.unwrap();
    finish_all().await;
    service.end_drained_tasks().await.unwrap();
    let (task, counts) = service.get_task(consumer.id).await.unwrap();
    assert_eq!((task.status, counts.finished), (TaskStatus::Running, 2));
    // JEDI read the input closed, every file with its job: the task ends.
    service.insert_jobs_reading(consumer.id, Vec::new(), JobBatch::More, false).await.unwrap();
    let (task, _) = service.get_task(consumer.id).await.unwrap();
    assert_eq!((task.status, task.awaits_input), (TaskStatus::Done, false));
    // An empty insertion is only for `More`.
    assert!(matches!(
        service.insert_jobs_reading(producer.id, Vec::new(), JobBatch::Jobs, false).await,
        Err(Error::InvalidArgument(_))
    ));
}

/// A warm runtime's batches: GetCalls reads several calls in the asked order, PutResults stores
/// several results in one transaction, each checked alone; the warm command reaches the jobs.
async fn a_work_stores_results_in_batches(f: Fixture) {
    let mut work = new_work("w", 4);
    work.warm_command = Some("python3 -m pandars.runtime --serve".into());
    let (task_id, _) = f.service.submit_work(work, None).await.unwrap();
    let (_, calls) = f.service.get_calls(task_id, &[3, 1]).await.unwrap();
    let keys: Vec<&str> = calls.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["k2", "k0"]);
    assert!(matches!(f.service.get_calls(task_id, &[1, 9]).await, Err(Error::CallNotFound { index: 9, .. })));
    assert!(matches!(f.service.get_calls(task_id, &[]).await, Err(Error::InvalidArgument(_))));
    f.service.insert_jobs(task_id, jobs(4, "q", "")).await.unwrap();
    let sent = f.service.dispatch("q", "n", "", Resources::default(), 4).await.unwrap();
    let job = |index: u32| sent.iter().find(|d| d.job.job_index == index).unwrap().job.clone();
    // The warm command goes with every job (the task itself cannot carry PANDA_* variables).
    assert!(sent.iter().all(|d| d.job.environment.get(panda_server::service::WARM_RUNTIME_ENV).map(String::as_str)
        == Some("python3 -m pandars.runtime --serve")));
    let (task, _) = f.service.get_task(task_id).await.unwrap();
    assert!(task.spec.environment.is_empty(), "the task's own environment is untouched");
    let lease = job(4).lease_token.unwrap();
    f.service.update_job(job(4).id, &lease, report(JobStatus::Running)).await.unwrap();
    f.service.update_job(job(4).id, &lease, report(JobStatus::Failed)).await.unwrap();
    let error = panda_proto::server::v1::FunctionError { r#type: "ValueError".into(), ..Default::default() };
    let failed = FunctionResult { task_id: task_id.0, index: 2, ok: false, error: Some(error), ..Default::default() };
    let outcomes = f
        .service
        .put_results(vec![
            (job(1).id, ok_result(task_id, 1, "10")),
            (job(1).id, ok_result(task_id, 2, "wrong call")),
            (job(2).id, failed),
            (job(1).id, ok_result(task_id, 1, "second success")),
            (job(4).id, ok_result(task_id, 4, "too late")),
            (panda_types::JobId(999_999), ok_result(task_id, 3, "no such job")),
        ])
        .await
        .unwrap();
    assert!(matches!(outcomes[0], Ok(true)));
    assert!(matches!(outcomes[1], Err(Error::ResultRefused { .. })), "{:?}", outcomes[1]);
    assert!(matches!(outcomes[2], Ok(true)));
    assert!(matches!(outcomes[3], Ok(false)), "the first success stays");
    assert!(matches!(outcomes[4], Err(Error::ResultRefused { .. })), "an ended job stores nothing");
    assert!(matches!(outcomes[5], Err(Error::JobNotFound { .. })));
    let (results, _) = f.service.list_results(task_id).await.unwrap();
    let stored: Vec<(u32, bool, Vec<u8>)> = results.iter().map(|r| (r.index, r.ok, r.value.clone())).collect();
    assert_eq!(stored, vec![(1, true, b"10".to_vec()), (2, false, vec![])]);
    assert_eq!(results[1].error.clone().unwrap_or_default().log_location, format!("panda job logs {}", job(2).id));
}

/// A pilot with a warm runtime for a task asks for more jobs of that task only.
async fn dispatch_for_one_task_takes_only_its_jobs(f: Fixture) {
    let first = submit_with_jobs(&f, "first", 3, "").await;
    let second = submit_with_jobs(&f, "second", 3, "").await;
    let pilots = PilotBatches::start(&f.service, Shape { workers: 1, max_batch: 8 });
    let request = |task| DispatchRequest {
        queue: "q".into(),
        node: "n".into(),
        worker_id: String::new(),
        offer: Resources::default(),
        n: 10,
        task,
    };
    let got = pilots.dispatch(request(Some(second))).await.unwrap();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|d| d.job.task_id == second), "only the asked task's jobs");
    assert!(pilots.dispatch(request(Some(second))).await.unwrap().is_empty());
    let rest = pilots.dispatch(request(None)).await.unwrap();
    assert!(rest.len() == 3 && rest.iter().all(|d| d.job.task_id == first));
}

/// A long-polling GetJob answers when a job of its queue is activated, not at its deadline; a
/// GetJob without wait answers empty at once.
async fn a_waiting_dispatch_returns_when_a_job_is_activated(f: Fixture) {
    let pilots = PilotBatches::start(&f.service, Shape { workers: 1, max_batch: 8 });
    let activations = f.service.activations();
    let request = |queue: &str| DispatchRequest {
        queue: queue.into(),
        node: "n".into(),
        worker_id: String::new(),
        offer: Resources::default(),
        n: 1,
        task: None,
    };
    let zero = pilots.dispatch_waiting(&activations, request("q"), std::time::Duration::ZERO).await.unwrap();
    assert!(zero.is_empty());
    let waiter = {
        let (pilots, activations) = (pilots.clone(), activations.clone());
        // The deadline is far beyond the test's life: an answer with a job can only come from
        // the wake-up.
        tokio::spawn(async move {
            pilots.dispatch_waiting(&activations, request("q"), std::time::Duration::from_secs(3600)).await
        })
    };
    let other = {
        let (pilots, activations) = (pilots.clone(), activations.clone());
        tokio::spawn(async move {
            pilots.dispatch_waiting(&activations, request("elsewhere"), std::time::Duration::from_secs(3600)).await
        })
    };
    tokio::task::yield_now().await;
    let task = submit_with_jobs(&f, "t", 1, "").await;
    let got = waiter.await.unwrap().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].job.task_id, task);
    assert!(!other.is_finished(), "a waiter of another queue keeps waiting");
    other.abort();
}

/// Reports decided on a read that is no longer current (what a SQLite batch does between its
/// read, outside the writer's transaction, and its write) are decided again on the job as it is:
/// a job is never overwritten with a stale copy, and a revoked lease stays revoked.
async fn reports_decided_on_a_stale_read_are_decided_again(f: Fixture) {
    submit_with_jobs(&f, "t", 2, "").await;
    let held = f.service.dispatch("q", "n", "", Resources::default(), 2).await.unwrap();
    let (a, b) = (&held[0].job, &held[1].job);
    let (a_lease, b_lease) = (a.lease_token.clone().unwrap(), b.lease_token.clone().unwrap());
    let stale: std::collections::HashMap<_, _> =
        [(a.id, f.service.show_job(a.id).await.unwrap()), (b.id, f.service.show_job(b.id).await.unwrap())].into();
    // After the read: a's pilot reports it running; b's lease is revoked (it goes back to the queue).
    f.service.update_job(a.id, &a_lease, report(JobStatus::Running)).await.unwrap();
    assert_eq!(f.service.release_leases(&[(b.id, b_lease.clone())], "test").await.unwrap(), [b.id]);
    let updates = [
        UpdateRequest { job_id: a.id, lease_token: a_lease, report: report(JobStatus::Finished) },
        UpdateRequest { job_id: b.id, lease_token: b_lease, report: report(JobStatus::Running) },
    ];
    let outcomes = f.service.apply_reports(None, &updates, stale).await.unwrap();
    assert!(matches!(outcomes[0], Ok((JobStatus::Finished, _))), "{:?}", outcomes[0]);
    assert!(matches!(outcomes[1], Err(Error::NotHolder { .. })), "{:?}", outcomes[1]);
    let a_now = f.service.show_job(a.id).await.unwrap();
    assert_eq!(a_now.status, JobStatus::Finished);
    let times = a_now.state_times.parse();
    assert!(times.contains_key("running") && times.contains_key("finished"), "both reports recorded: {times:?}");
    let b_now = f.service.show_job(b.id).await.unwrap();
    assert_eq!(b_now.status, JobStatus::Activated, "the revoked lease's report must not bring b back");
    assert_eq!(b_now.lease_token, None);
}

/// Every statement that changes a job row bumps its version, which is what lets a batch write
/// a job read outside its transaction only if nothing changed it since.
async fn every_write_of_a_job_bumps_its_row_version(f: Fixture) {
    let (task, _) = f.service.submit_task(draft("t", 2, ""), None).await.unwrap();
    let ids = f.service.insert_jobs(task.id, jobs(2, "q", "")).await.unwrap();
    let version = |id| {
        let service = f.service.clone();
        async move { service.show_job(id).await.unwrap().row_version }
    };
    let mut last = version(ids[0]).await;
    let mut bumped = |now: u64, what: &str| {
        assert!(now > last, "{what} must bump the row version ({last} -> {now})");
        last = now;
    };
    f.service.set_task_priority(task.id, 7).await.unwrap();
    bumped(version(ids[0]).await, "a priority change");
    let held = f.service.dispatch("q", "n", "", Resources::default(), 2).await.unwrap();
    bumped(version(ids[0]).await, "a dispatch");
    for d in &held {
        let lease = d.job.lease_token.clone().unwrap();
        f.service.update_job(d.job.id, &lease, report(JobStatus::Failed)).await.unwrap();
    }
    bumped(version(ids[0]).await, "a report");
    f.service.retry_task(task.id).await.unwrap();
    bumped(version(ids[0]).await, "being superseded by a retry");
}

/// Job transitions are counted once each, as written: on SQLite concurrent dispatches pick the
/// same jobs and all but one lose them before writing, and those lost picks are not counted.
async fn transition_metrics_count_what_was_written(f: Fixture) {
    let metrics = panda_server::metrics::Metrics::default();
    let conn = f._db.connect().await;
    let service = Service::new(conn, f.outbox.clone(), f._storage.path().to_owned(), metrics.clone());
    let n = 60;
    submit_with_jobs(&f, "t", n, "").await;
    let held = drain_queue(&service, 8, 2).await;
    assert_eq!(held.len(), n as usize);
    assert_eq!(metrics.job_transitions(JobStatus::Activated, JobStatus::Sent), u64::from(n));
    for d in &held[..10] {
        let lease = d.job.lease_token.clone().unwrap();
        service.update_job(d.job.id, &lease, report(JobStatus::Finished)).await.unwrap();
    }
    assert_eq!(metrics.job_transitions(JobStatus::Sent, JobStatus::Starting), 10);
    assert_eq!(metrics.job_transitions(JobStatus::Holding, JobStatus::Finished), 10);
}

macro_rules! store_suite {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(super::fixture(super::TestDb::sqlite_temp()).await).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                #[ignore = "needs PostgreSQL: set PANDA_TEST_DATABASE_URL"]
                async fn $case() {
                    super::$case(super::fixture(super::TestDb::postgres_from_env().await).await).await;
                }
            )+
        }
    };
}

store_suite!(
    a_work_stores_calls_and_results,
    a_work_stores_results_in_batches,
    dispatch_for_one_task_takes_only_its_jobs,
    a_waiting_dispatch_returns_when_a_job_is_activated,
    a_bad_work_stores_nothing,
    a_work_killed_before_its_jobs_answers_every_call,
    held_jobs_wait_until_released_by_index,
    submit_and_read_back,
    inserting_jobs_runs_the_task_once,
    concurrent_dispatch_hands_out_each_job_once,
    dispatch_respects_queue_and_resources,
    pilot_lifecycle_finishes_the_task,
    partial_and_total_failure,
    kill_cancels_queued_and_tells_running_pilots,
    killing_a_task_closes_its_output_dataset,
    pending_keeps_the_reason,
    watchdog_requeues_unstarted_and_fails_silent_jobs,
    pause_holds_queued_jobs_and_resume_releases_them,
    priority_changes_reach_queued_jobs,
    killing_a_job_cancels_it_alone,
    list_filters,
    retry_reruns_failed_jobs_as_new_attempts,
    final_reports_racing_a_kill_never_deadlock,
    the_watchdog_ends_tasks_whose_last_check_was_lost,
    a_dispatch_batch_serves_each_request_and_no_job_twice,
    a_report_batch_answers_each_report_alone,
    undelivered_dispatches_go_back_to_the_queue,
    group_committed_pilots_take_each_job_once,
    a_payload_failure_is_told_apart_from_a_pilot_failure,
    a_merging_task_waits_for_its_merge_jobs,
    a_failed_job_with_default_attempts_keeps_the_task_running,
    worker_reports_count_as_pilots_and_name_workers_of_killed_jobs,
    tasks_and_jobs_carry_a_share_of_the_tree,
    shares_converge_to_their_targets_under_contention,
    a_task_awaiting_input_ends_only_once_its_input_is_complete,
    reports_decided_on_a_stale_read_are_decided_again,
    every_write_of_a_job_bumps_its_row_version,
    transition_metrics_count_what_was_written,
);

/// The share-aware dispatch index is kept only while there is more than one share (its upkeep on
/// every activated job is wasted otherwise), and switching either way is idempotent.
async fn the_share_index_exists_only_with_several_shares(db: TestDb) {
    let conn = panda_db::connect_and_migrate::<Migrator>(&db.url, Some(4)).await.unwrap();
    let manager = sea_orm_migration::SchemaManager::new(&conn);
    for several in [false, false, true, true, false] {
        panda_server::store::migration::keep_share_index(&conn, several).await.unwrap();
        assert_eq!(manager.has_index("jobs", "jobs_activated_share").await.unwrap(), several);
    }
}

#[tokio::test]
async fn the_share_index_exists_only_with_several_shares_sqlite() {
    the_share_index_exists_only_with_several_shares(TestDb::sqlite_temp()).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set PANDA_TEST_DATABASE_URL"]
async fn the_share_index_exists_only_with_several_shares_postgres() {
    the_share_index_exists_only_with_several_shares(TestDb::postgres_from_env().await).await;
}
