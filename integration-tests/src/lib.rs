//! Helpers for the end-to-end tests: waiting for conditions, starting an embedded cluster with
//! fast cycles, reading a workflow's tasks and jobs.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use panda_all::{AllConfig, Cluster};
use panda_client::ServerClient;
use panda_proto::server::v1 as server;

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
///
/// # Panics
/// When the condition is not met in time.
pub async fn await_condition<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An embedded configuration with every port ephemeral and short cycles, so tests run quickly.
pub fn fast_config(data_dir: &Path) -> AllConfig {
    let mut config = AllConfig::ephemeral(data_dir.to_owned());
    config.harvester.cycle_interval = Duration::from_millis(200);
    config.harvester.propagate_interval = Duration::from_millis(200);
    config.jedi.sweep_interval = Duration::from_secs(1);
    config.idds.submit_retry_interval = Duration::from_millis(500);
    config.server.heartbeat_interval = Duration::from_secs(1);
    config
}

/// Starts every service in this process.
///
/// # Panics
/// When the cluster does not start.
pub async fn start(config: AllConfig, pilot: &str) -> Cluster {
    Cluster::start(config, vec![pilot.to_owned()]).await.expect("embedded cluster starts")
}

/// Every job of a task.
///
/// # Panics
/// When the server does not answer.
pub async fn jobs_of(server: &ServerClient, task_id: u64) -> Vec<server::Job> {
    server
        .jobs
        .clone()
        .list_jobs(server::ListJobsRequest { task_id, ..Default::default() })
        .await
        .expect("ListJobs answers")
        .into_inner()
        .jobs
}

/// Waits until a task is in `status` and returns it.
///
/// # Panics
/// When it does not get there within `timeout`.
pub async fn await_task(
    server: &ServerClient,
    task_id: u64,
    status: panda_proto::common::v1::TaskStatus,
    timeout: Duration,
) -> server::Task {
    await_condition(timeout, &format!("task {task_id} to be {}", status.as_str_name()), || {
        let mut tasks = server.tasks.clone();
        async move {
            let task = tasks.get_task(server::GetTaskRequest { task_id }).await.ok()?.into_inner().task?;
            (task.status == status as i32).then_some(task)
        }
    })
    .await
}

/// A workflow file from `examples/workflows`.
///
/// # Panics
/// When the file is missing.
pub fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/workflows").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}
