//! Every service in this process, on the embedded default (SQLite, in-process bus, local pilots).

use std::time::Duration;

use panda_client::ServerClient;
use panda_integration_tests::{await_condition, await_task, fast_config, jobs_of, start};
use panda_proto::common::v1::{JobStatus, Resources, TaskStatus};
use panda_proto::server::v1 as server;

use crate::PILOT;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn example_workflow_finishes_in_dag_order() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(fast_config(dir.path()), PILOT).await;
    let workflow =
        crate::checks::run_example_workflow(&cluster.server_url, &cluster.idds_url, Duration::from_secs(180)).await;

    // The merged files hold both branches' results: 4 "squares" and 2 "primes" lines.
    let merged: String = std::fs::read_dir(dir.path().join("storage"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(&format!(".{}.merged._", workflow.workflow_id)))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(merged.lines().filter(|l| l.starts_with("squares ")).count(), 4, "{merged}");
    assert_eq!(merged.lines().filter(|l| l.starts_with("primes ")).count(), 2, "{merged}");
    // Sum of squares of 1..=10000 split over four files adds up.
    let total: u128 =
        merged.lines().filter_map(|l| l.strip_prefix("squares ")).map(|n| n.trim().parse::<u128>().unwrap()).sum();
    assert_eq!(total, (1..=10_000u128).map(|n| n * n).sum());
    cluster.stop().await.unwrap();
}

/// Submits a task that must be accepted; returns its id.
async fn submit(server: &ServerClient, spec: server::TaskSpec) -> u64 {
    let request = server::SubmitTaskRequest { spec: Some(spec), idempotency_key: String::new() };
    server.tasks.clone().submit_task(request).await.unwrap().into_inner().task_id
}

fn task(name: &str, command: &str, n_jobs: u32) -> server::TaskSpec {
    server::TaskSpec { name: name.into(), command: command.into(), n_jobs: Some(n_jobs), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(fast_config(dir.path()), PILOT).await;
    let server = ServerClient::new(&cluster.server_url).unwrap();
    let mut tasks = server.tasks.clone();

    // Missing fields are named.
    let error = tasks
        .submit_task(server::SubmitTaskRequest { spec: Some(task("", "", 0)), idempotency_key: String::new() })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    for field in ["task.name", "task.command", "task.n_jobs"] {
        assert!(error.message().contains(field), "{}", error.message());
    }
    let error =
        tasks.submit_task(server::SubmitTaskRequest { spec: None, idempotency_key: String::new() }).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(error.message().contains("spec"), "{}", error.message());

    // An unknown input dataset.
    let mut spec = task("t", "cat {inputs}", 0);
    spec.n_jobs = None;
    spec.input_datasets = vec!["nope".into()];
    let error = tasks
        .submit_task(server::SubmitTaskRequest { spec: Some(spec), idempotency_key: String::new() })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(
        error.message().contains("task.input_datasets[0]") && error.message().contains("\"nope\""),
        "{}",
        error.message()
    );

    // A schema version this server does not know is refused, not guessed at.
    let mut spec = task("future", "true", 1);
    spec.schema_version = 99;
    let error = tasks
        .submit_task(server::SubmitTaskRequest { spec: Some(spec), idempotency_key: String::new() })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(error.message().contains("task.schema_version version 99 is not supported"), "{}", error.message());

    // Unknown ids.
    let error = tasks.get_task(server::GetTaskRequest { task_id: 424242 }).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound);
    assert_eq!(error.message(), "task 424242 not found");
    let listed = tasks.list_tasks(server::ListTasksRequest::default()).await.unwrap().into_inner().tasks;
    assert!(listed.is_empty(), "bad submissions left tasks behind: {listed:?}");

    // An idempotency key returns the first task.
    let request =
        server::SubmitTaskRequest { spec: Some(task("once", "sleep 30", 1)), idempotency_key: "key-1".into() };
    let first = tasks.submit_task(request.clone()).await.unwrap().into_inner();
    let second = tasks.submit_task(request).await.unwrap().into_inner();
    assert!(first.created && !second.created);
    assert_eq!(first.task_id, second.task_id);

    // A pilot updating a job it does not hold is refused and nothing changes.
    let job = await_condition(Duration::from_secs(60), "the job to be dispatched", || {
        let server = server.clone();
        async move {
            let jobs = jobs_of(&server, first.task_id).await;
            jobs.into_iter().find(|j| j.status == JobStatus::Running as i32)
        }
    })
    .await;
    let error = server
        .pilot
        .clone()
        .update_job(server::UpdateJobRequest {
            job_id: job.job_id,
            lease_token: "not-the-lease".into(),
            status: JobStatus::Failed as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::FailedPrecondition);
    assert!(error.message().contains("not held by this pilot"), "{}", error.message());
    let after = server
        .jobs
        .clone()
        .show_job(server::ShowJobRequest { job_id: job.job_id })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(after.status, JobStatus::Running as i32);

    // An illegal pilot state is refused by name.
    let error = server
        .pilot
        .clone()
        .update_job(server::UpdateJobRequest {
            job_id: job.job_id,
            lease_token: "x".into(),
            status: JobStatus::Activated as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(error.message().contains("activated"), "{}", error.message());

    // A bulk report answers each report alone: the stale one is refused, the malformed one named,
    // and an oversized call is refused as a whole.
    let stale = server::UpdateJobRequest {
        job_id: job.job_id,
        lease_token: "not-the-lease".into(),
        status: JobStatus::Running as i32,
        ..Default::default()
    };
    let malformed = server::UpdateJobRequest { job_id: job.job_id, ..Default::default() };
    let results = server
        .pilot
        .clone()
        .update_jobs(server::UpdateJobsRequest { updates: vec![stale.clone(), malformed] })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].code, tonic::Code::FailedPrecondition as i32, "{results:?}");
    assert_eq!(results[1].code, tonic::Code::InvalidArgument as i32, "{results:?}");
    assert!(results[1].message.contains("lease_token is required"), "{results:?}");
    let error =
        server.pilot.clone().update_jobs(server::UpdateJobsRequest { updates: vec![stale; 1001] }).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(error.message().contains("at most 1000 reports per call (got 1001)"), "{}", error.message());

    tasks.kill_task(server::KillTaskRequest { task_id: first.task_id }).await.unwrap();
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_task_stops_its_running_and_queued_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = fast_config(dir.path());
    config.harvester.local_workers = 2;
    let cluster = start(config, PILOT).await;
    let server = ServerClient::new(&cluster.server_url).unwrap();
    let task_id = submit(&server, task("sleepers", "sleep 600", 4)).await;
    await_condition(Duration::from_secs(60), "two jobs running", || {
        let server = server.clone();
        async move {
            (jobs_of(&server, task_id).await.iter().filter(|j| j.status == JobStatus::Running as i32).count() == 2)
                .then_some(())
        }
    })
    .await;
    // The harvester's propagator reports its two running workers: brokerage sees them as pilots.
    await_condition(Duration::from_secs(30), "two pilots on the local queue", || {
        let mut internal = server.internal.clone();
        async move {
            let queues = internal.list_queues(server::ListQueuesRequest {}).await.ok()?.into_inner().queues;
            let local = queues.into_iter().find(|q| q.queue.as_ref().is_some_and(|q| q.name == "local"))?;
            (local.pilots == 2 && local.workers_by_status.get("running") == Some(&2)).then_some(())
        }
    })
    .await;
    let killed =
        server.tasks.clone().kill_task(server::KillTaskRequest { task_id }).await.unwrap().into_inner().task.unwrap();
    assert_eq!(killed.status, TaskStatus::Aborting as i32);
    // The queued jobs are cancelled at once; the running ones when their pilots hear of it.
    let task = await_task(&server, task_id, TaskStatus::Aborted, Duration::from_secs(60)).await;
    assert_eq!(task.job_counts.unwrap().cancelled, 4);
    // Killing again is refused: the task has ended.
    let error = server.tasks.clone().kill_task(server::KillTaskRequest { task_id }).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::FailedPrecondition);
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_no_queue_fits_waits_in_pending_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(fast_config(dir.path()), PILOT).await;
    let server = ServerClient::new(&cluster.server_url).unwrap();
    let mut spec = task("big", "true", 1);
    spec.resources = Some(Resources { cores: 64, ..Default::default() });
    let task_id = submit(&server, spec).await;
    let task = await_task(&server, task_id, TaskStatus::Pending, Duration::from_secs(60)).await;
    assert!(task.error_diag.contains("local: needs 64 cores, queue offers 1"), "{}", task.error_diag);
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_default_configuration_runs_a_task() {
    // Defaults, no file, no environment: only the ports are moved so tests do not collide.
    let defaults = panda_all::AllConfig::load(&panda_runtime::config::Loader::from_toml("")).unwrap();
    assert_eq!(defaults, panda_all::AllConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let mut config = panda_all::AllConfig::ephemeral(dir.path().to_owned());
    config.harvester.cycle_interval = defaults.harvester.cycle_interval;
    let cluster = start(config, PILOT).await;
    let server = ServerClient::new(&cluster.server_url).unwrap();
    let mut spec = task("hello", "echo hello {index} > {output}", 2);
    spec.output_dataset = "hello.out".into();
    let task_id = submit(&server, spec).await;
    await_task(&server, task_id, TaskStatus::Done, Duration::from_secs(120)).await;
    let text = std::fs::read_to_string(dir.path().join("storage/hello.out._000002")).unwrap();
    assert_eq!(text, "hello 2\n");
    cluster.stop().await.unwrap();
}

#[tokio::test]
async fn a_queue_file_with_an_unknown_plugin_stops_startup_with_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("queues.yaml");
    std::fs::write(&file, "queues:\n  q:\n    max_workers: 1\n    plugin:\n      type: slurmm\n").unwrap();
    let mut config = fast_config(dir.path());
    config.harvester.queue_config = Some(file.clone());
    let cluster = start(config, PILOT).await;
    tokio::time::timeout(Duration::from_secs(30), cluster.any_stopped()).await.expect("harvester refuses to start");
    let error = format!("{:#}", cluster.stop().await.unwrap_err());
    assert!(
        error.contains(&file.display().to_string()) && error.contains("slurmm") && error.contains("local"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watching_a_task_streams_its_changes_until_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(fast_config(dir.path()), PILOT).await;
    let server = ServerClient::new(&cluster.server_url).unwrap();
    let mut tasks = server.tasks.clone();
    let error = tasks.watch_task(server::WatchTaskRequest { task_id: 777 }).await.unwrap_err();
    assert_eq!((error.code(), error.message()), (tonic::Code::NotFound, "task 777 not found"));

    let task_id = submit(&server, task("watched", "sleep 1", 3)).await;
    let mut stream = tasks.watch_task(server::WatchTaskRequest { task_id }).await.unwrap().into_inner();
    let mut updates = Vec::new();
    let collect = async {
        while let Some(update) = stream.message().await.unwrap() {
            updates.push(update);
        }
    };
    tokio::time::timeout(Duration::from_secs(120), collect).await.expect("the watch ends when the task ends");
    let last = updates.last().unwrap().task.as_ref().unwrap();
    assert_eq!(last.status, TaskStatus::Done as i32);
    // Every job's start and end came through, as they happened.
    let finished: std::collections::BTreeSet<u64> = updates
        .iter()
        .filter_map(|u| u.job.as_ref())
        .filter(|j| j.status == JobStatus::Finished as i32)
        .map(|j| j.job_id)
        .collect();
    assert_eq!(finished.len(), 3, "{updates:?}");
    assert!(updates.iter().filter_map(|u| u.job.as_ref()).any(|j| j.status == JobStatus::Running as i32));
    // The task's finished count never goes down along the stream.
    let counts: Vec<u32> =
        updates.iter().map(|u| u.task.as_ref().unwrap().job_counts.unwrap_or_default().finished).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watching_a_job_and_a_users_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(fast_config(dir.path()), PILOT).await;
    let server = ServerClient::new(&cluster.server_url).unwrap();
    let (mut tasks, mut jobs) = (server.tasks.clone(), server.jobs.clone());
    let error = jobs.watch_job(server::WatchJobRequest { job_id: 777 }).await.unwrap_err();
    assert_eq!((error.code(), error.message()), (tonic::Code::NotFound, "job 777 not found"));
    let error = tasks.watch_user_tasks(server::WatchUserTasksRequest { user: " ".into() }).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument, "{error}");

    // Following a user before the task exists: its whole life comes through.
    let mut user_stream =
        tasks.watch_user_tasks(server::WatchUserTasksRequest { user: "carol".into() }).await.unwrap().into_inner();
    let mut spec = task("followed", "sleep 1", 1);
    spec.user = "carol".into();
    let task_id = submit(&server, spec).await;
    // Someone else's task is not part of carol's stream.
    submit(&server, task("other", "true", 1)).await;
    let job_id = await_condition(Duration::from_secs(60), "the job exists", || {
        let server = server.clone();
        async move { jobs_of(&server, task_id).await.first().map(|j| j.job_id) }
    })
    .await;
    let mut job_stream = jobs.watch_job(server::WatchJobRequest { job_id }).await.unwrap().into_inner();
    let mut job_states = Vec::new();
    let follow_job = async {
        while let Some(update) = job_stream.message().await.unwrap() {
            job_states.push(JobStatus::try_from(update.job.unwrap().status).unwrap());
        }
    };
    tokio::time::timeout(Duration::from_secs(120), follow_job).await.expect("the job watch ends when the job ends");
    assert_eq!(job_states.last(), Some(&JobStatus::Finished), "{job_states:?}");
    assert!(job_states.windows(2).all(|w| w[0] != w[1]), "each state reported once: {job_states:?}");

    let mut task_states = Vec::new();
    let follow_user = async {
        while let Some(update) = user_stream.message().await.unwrap() {
            let task = update.task.unwrap();
            assert_eq!(task.task_id, task_id, "only carol's task");
            task_states.push(TaskStatus::try_from(task.status).unwrap());
            if task_states.last() == Some(&TaskStatus::Done) {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), follow_user).await.expect("carol's task reaches done");
    for state in [TaskStatus::Registered, TaskStatus::Ready, TaskStatus::Running, TaskStatus::Done] {
        assert!(task_states.contains(&state), "{state:?} missing from {task_states:?}");
    }
    cluster.stop().await.unwrap();
}

/// File-level release through the real server: the downstream work's jobs are inserted held and
/// each is released (and runs) as soon as the upstream job writing its file finished, while the
/// upstream task is still running its slow job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_job_runs_as_soon_as_its_file_exists() {
    use panda_client::WorkflowServiceClient;
    use panda_proto::idds::v1 as idds;

    let dir = tempfile::tempdir().unwrap();
    let cluster = start(fast_config(dir.path()), PILOT).await;
    let work = dir.path().join("shared");
    std::fs::create_dir_all(&work).unwrap();
    let w = work.display();
    let text = format!(
        "name: per-file
works:
  - name: up
    task:
      command: 'case {{index}} in 1) echo a > {w}/a ;; 2) sleep 20; echo b > {w}/b ;; esac'
      n_jobs: 2
      jobs: [{{outputs: [a]}}, {{outputs: [b]}}]
  - name: down
    after_files: [up]
    task:
      command: 'case {{index}} in 1) cat {w}/a ;; 2) cat {w}/b ;; esac'
      n_jobs: 2
      jobs: [{{inputs: [a], outputs: [a2]}}, {{inputs: [b], outputs: [b2]}}]
"
    );
    let workflows = WorkflowServiceClient::new(panda_client::channel(&cluster.idds_url).unwrap());
    let server = ServerClient::new(&cluster.server_url).unwrap();
    let document = idds::WorkflowDocument {
        language: idds::WorkflowLanguage::Native as i32,
        text,
        name: String::new(),
        user: String::new(),
    };
    let workflow_id =
        panda_client::retry(50, false, || {
            let mut workflows = workflows.clone();
            let document = document.clone();
            async move {
                workflows.submit_workflow(idds::SubmitWorkflowRequest { spec: None, document: Some(document) }).await
            }
        })
        .await
        .unwrap()
        .into_inner()
        .workflow_id;
    let task_of = |name: &'static str| {
        let workflows = workflows.clone();
        async move {
            await_condition(Duration::from_secs(60), "the work's task", || {
                let mut workflows = workflows.clone();
                async move {
                    let response =
                        workflows.get_workflow(idds::GetWorkflowRequest { workflow_id }).await.ok()?.into_inner();
                    response.workflow?.works.into_iter().find(|w| w.name == name && w.task_id != 0).map(|w| w.task_id)
                }
            })
            .await
        }
    };
    let (up, down) = (task_of("up").await, task_of("down").await);
    // down's first job finishes while up's second job still sleeps: released per file.
    await_condition(Duration::from_secs(60), "down's first job to finish", || {
        let server = server.clone();
        async move {
            jobs_of(&server, down)
                .await
                .iter()
                .any(|j| j.job_index == 1 && j.status == JobStatus::Finished as i32)
                .then_some(())
        }
    })
    .await;
    let up_jobs = jobs_of(&server, up).await;
    let slow = up_jobs.iter().find(|j| j.job_index == 2).unwrap();
    assert_ne!(slow.status, JobStatus::Finished as i32, "up's slow job is still running: {slow:?}");
    let second = jobs_of(&server, down).await.into_iter().find(|j| j.job_index == 2).unwrap();
    assert_eq!(second.status, JobStatus::Defined as i32, "down's second job waits held for b: {second:?}");
    // Then b is written and the rest follows; the workflow finishes.
    let workflow = await_condition(Duration::from_secs(120), "the workflow to end", || {
        let mut workflows = workflows.clone();
        async move {
            let workflow =
                workflows.get_workflow(idds::GetWorkflowRequest { workflow_id }).await.ok()?.into_inner().workflow?;
            (workflow.status != idds::WorkflowStatus::Running as i32).then_some(workflow)
        }
    })
    .await;
    assert_eq!(workflow.status, idds::WorkflowStatus::Finished as i32, "{workflow:?}");
    cluster.stop().await.unwrap();
}
