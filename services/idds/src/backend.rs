//! Where works run: the server's task API behind a small trait, so the engine can be driven by
//! the real server (gRPC) or, in tests and benches, by an in-process fake.

use std::collections::BTreeMap;

use panda_client::ServerClient;
use panda_proto::convert::WireEnum;
use panda_proto::server::v1 as server;
use panda_types::TaskStatus;
use tonic::Status;

use crate::graph::model::Value;

/// A task's state and job counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskInfo {
    /// State.
    pub status: TaskStatus,
    /// Jobs.
    pub jobs_total: u32,
    /// Finished jobs.
    pub jobs_finished: u32,
    /// Failed jobs.
    pub jobs_failed: u32,
}

/// The server operations the engine needs.
#[tonic::async_trait]
pub trait TaskBackend: Send + Sync {
    /// Submits a task; repeating `idempotency_key` answers the task made the first time.
    async fn submit(&self, spec: server::TaskSpec, idempotency_key: String) -> Result<u64, Status>;
    /// A task's state and counts.
    async fn task_info(&self, task_id: u64) -> Result<TaskInfo, Status>;
    /// Values the task's jobs printed as `panda-output key=value` lines on stdout (value as
    /// JSON when it parses, else text; a later line wins).
    async fn produced_values(&self, task_id: u64) -> Result<BTreeMap<String, Value>, Status>;
    /// Kills a task.
    async fn kill(&self, task_id: u64) -> Result<(), Status>;
    /// Pauses a task.
    async fn pause(&self, task_id: u64) -> Result<(), Status>;
    /// Resumes a paused task.
    async fn resume(&self, task_id: u64) -> Result<(), Status>;
    /// Reruns an ended task's failed jobs.
    async fn retry(&self, task_id: u64) -> Result<(), Status>;
    /// Indices of the task's finished jobs (current attempts).
    async fn finished_jobs(&self, task_id: u64) -> Result<Vec<u32>, Status>;
    /// Releases held jobs by index and closes others (`ReleaseJobs`; idempotent). Returns how
    /// many were released and closed by this call.
    async fn release(
        &self,
        task_id: u64,
        release: Vec<u32>,
        close: Vec<u32>,
        reason: String,
    ) -> Result<(u32, u32), Status>;
}

/// Parses `panda-output key=value` lines.
pub fn parse_values(text: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("panda-output ") else { continue };
        let Some((key, value)) = rest.split_once('=') else { continue };
        let key = key.trim();
        if key.is_empty() {
            continue;
        }
        let value = value.trim();
        let value = serde_json::from_str::<serde_json::Value>(value)
            .map(|json| Value::from_json(&json))
            .unwrap_or_else(|_| Value::String(value.to_owned()));
        out.insert(key.to_owned(), value);
    }
    out
}

/// The real server.
pub struct GrpcBackend {
    server: ServerClient,
}

impl GrpcBackend {
    /// Talks to `server`.
    pub fn new(server: ServerClient) -> Self {
        Self { server }
    }

    /// Every finished job of a task, page by page.
    async fn finished_jobs_of(&self, task_id: u64) -> Result<Vec<server::Job>, Status> {
        let mut finished = Vec::new();
        let mut after = 0;
        loop {
            let page = self
                .server
                .jobs
                .clone()
                .list_jobs(server::ListJobsRequest {
                    task_id,
                    after_job_id: after,
                    limit: 10_000,
                    statuses: vec![panda_types::JobStatus::Finished.to_wire()],
                    ..Default::default()
                })
                .await?
                .into_inner();
            finished.extend(page.jobs);
            if page.next_after == 0 {
                return Ok(finished);
            }
            after = page.next_after;
        }
    }
}

#[tonic::async_trait]
impl TaskBackend for GrpcBackend {
    async fn submit(&self, spec: server::TaskSpec, idempotency_key: String) -> Result<u64, Status> {
        let request = server::SubmitTaskRequest { spec: Some(spec), idempotency_key };
        Ok(self.server.tasks.clone().submit_task(request).await?.into_inner().task_id)
    }

    async fn task_info(&self, task_id: u64) -> Result<TaskInfo, Status> {
        let task = self
            .server
            .tasks
            .clone()
            .get_task(server::GetTaskRequest { task_id })
            .await?
            .into_inner()
            .task
            .ok_or_else(|| Status::internal("the server answered without a task"))?;
        let status = TaskStatus::from_wire("status", task.status).map_err(|e| Status::internal(e.to_string()))?;
        let counts = task.job_counts.unwrap_or_default();
        Ok(TaskInfo { status, jobs_total: counts.total, jobs_finished: counts.finished, jobs_failed: counts.failed })
    }

    async fn produced_values(&self, task_id: u64) -> Result<BTreeMap<String, Value>, Status> {
        let mut values = BTreeMap::new();
        for job in self.finished_jobs_of(task_id).await? {
            let mut stream = self
                .server
                .logs
                .clone()
                .read_job_log(server::ReadJobLogRequest {
                    job_id: job.job_id,
                    stream: server::LogStream::Stdout as i32,
                    offset: 0,
                    follow: false,
                })
                .await?
                .into_inner();
            let mut text = Vec::new();
            while let Some(chunk) = stream.message().await? {
                text.extend_from_slice(&chunk.data);
            }
            values.extend(parse_values(&String::from_utf8_lossy(&text)));
        }
        Ok(values)
    }

    async fn kill(&self, task_id: u64) -> Result<(), Status> {
        self.server.tasks.clone().kill_task(server::KillTaskRequest { task_id }).await.map(|_| ())
    }

    async fn pause(&self, task_id: u64) -> Result<(), Status> {
        self.server.tasks.clone().pause_task(server::PauseTaskRequest { task_id }).await.map(|_| ())
    }

    async fn resume(&self, task_id: u64) -> Result<(), Status> {
        self.server.tasks.clone().resume_task(server::ResumeTaskRequest { task_id }).await.map(|_| ())
    }

    async fn retry(&self, task_id: u64) -> Result<(), Status> {
        self.server.tasks.clone().retry_task(server::RetryTaskRequest { task_id }).await.map(|_| ())
    }

    async fn finished_jobs(&self, task_id: u64) -> Result<Vec<u32>, Status> {
        let mut finished: Vec<u32> = self.finished_jobs_of(task_id).await?.iter().map(|j| j.job_index).collect();
        finished.sort_unstable();
        finished.dedup();
        Ok(finished)
    }

    async fn release(
        &self,
        task_id: u64,
        release: Vec<u32>,
        close: Vec<u32>,
        reason: String,
    ) -> Result<(u32, u32), Status> {
        let request = server::ReleaseJobsRequest { task_id, release, close, close_reason: reason };
        let done = self.server.release.clone().release_jobs(request).await?.into_inner();
        Ok((done.released.len() as u32, done.closed.len() as u32))
    }
}

/// An in-process server for tests and benches: tasks are numbered from 1, an idempotency key
/// answers the task made the first time, and each new task's id is sent on a channel so the
/// caller can finish it (as the bus would report it).
pub struct FakeBackend {
    state: std::sync::Mutex<FakeState>,
    submitted: tokio::sync::mpsc::UnboundedSender<u64>,
}

/// What the fake server holds.
#[derive(Debug, Default, Clone)]
pub struct FakeState {
    /// Tasks by idempotency key.
    pub by_key: std::collections::HashMap<String, u64>,
    /// Specs by task.
    pub specs: BTreeMap<u64, server::TaskSpec>,
    /// States by task (registered until set).
    pub status: BTreeMap<u64, TaskStatus>,
    /// Values each task's jobs print.
    pub values: BTreeMap<u64, BTreeMap<String, Value>>,
    /// Submit calls, including repeats.
    pub submit_calls: usize,
    /// Killed, paused, resumed and retried tasks, in order.
    pub actions: Vec<(&'static str, u64)>,
    /// Finished job indices by task.
    pub finished: BTreeMap<u64, Vec<u32>>,
    /// Held job indices by task (a task's jobs are held while it is listed; the fake holds every
    /// job of a `hold_jobs` task from its submission).
    pub held: BTreeMap<u64, std::collections::BTreeSet<u32>>,
    /// Jobs released, by task, in order.
    pub released: BTreeMap<u64, Vec<u32>>,
    /// Jobs closed, by task, with the reason.
    pub closed: BTreeMap<u64, Vec<(u32, String)>>,
}

impl FakeBackend {
    /// A fake and the channel of new task ids.
    pub fn new() -> (Self, tokio::sync::mpsc::UnboundedReceiver<u64>) {
        let (submitted, rx) = tokio::sync::mpsc::unbounded_channel();
        (Self { state: std::sync::Mutex::default(), submitted }, rx)
    }

    /// Reads or changes the fake's state.
    pub fn with<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut state)
    }

    fn act(&self, action: &'static str, task_id: u64) -> Result<(), Status> {
        self.with(|s| {
            if !s.specs.contains_key(&task_id) {
                return Err(Status::not_found(format!("task {task_id} not found")));
            }
            s.actions.push((action, task_id));
            if action == "retry" {
                s.status.insert(task_id, TaskStatus::Running);
            }
            Ok(())
        })
    }
}

#[tonic::async_trait]
impl TaskBackend for FakeBackend {
    async fn submit(&self, spec: server::TaskSpec, idempotency_key: String) -> Result<u64, Status> {
        let (task_id, new) = self.with(|s| {
            s.submit_calls += 1;
            if let Some(&id) = s.by_key.get(&idempotency_key) {
                return (id, false);
            }
            let id = s.specs.len() as u64 + 1;
            if spec.hold_jobs {
                s.held.insert(id, (1..=spec.n_jobs.unwrap_or(1)).collect());
            }
            s.by_key.insert(idempotency_key, id);
            s.specs.insert(id, spec);
            s.status.insert(id, TaskStatus::Registered);
            (id, true)
        });
        if new {
            let _ = self.submitted.send(task_id);
        }
        Ok(task_id)
    }

    async fn task_info(&self, task_id: u64) -> Result<TaskInfo, Status> {
        self.with(|s| {
            let status =
                *s.status.get(&task_id).ok_or_else(|| Status::not_found(format!("task {task_id} not found")))?;
            let done = u32::from(status == TaskStatus::Done);
            Ok(TaskInfo {
                status,
                jobs_total: 1,
                jobs_finished: done,
                jobs_failed: u32::from(status == TaskStatus::Failed),
            })
        })
    }

    async fn produced_values(&self, task_id: u64) -> Result<BTreeMap<String, Value>, Status> {
        Ok(self.with(|s| s.values.get(&task_id).cloned().unwrap_or_default()))
    }

    async fn kill(&self, task_id: u64) -> Result<(), Status> {
        self.act("kill", task_id)
    }

    async fn pause(&self, task_id: u64) -> Result<(), Status> {
        self.act("pause", task_id)
    }

    async fn resume(&self, task_id: u64) -> Result<(), Status> {
        self.act("resume", task_id)
    }

    async fn retry(&self, task_id: u64) -> Result<(), Status> {
        self.act("retry", task_id)
    }

    async fn finished_jobs(&self, task_id: u64) -> Result<Vec<u32>, Status> {
        Ok(self.with(|s| s.finished.get(&task_id).cloned().unwrap_or_default()))
    }

    async fn release(
        &self,
        task_id: u64,
        release: Vec<u32>,
        close: Vec<u32>,
        reason: String,
    ) -> Result<(u32, u32), Status> {
        self.with(|s| {
            if !s.specs.contains_key(&task_id) {
                return Err(Status::not_found(format!("task {task_id} not found")));
            }
            let held = s.held.entry(task_id).or_default();
            let released: Vec<u32> = release.into_iter().filter(|i| held.remove(i)).collect();
            let closed: Vec<u32> = close.into_iter().filter(|i| held.remove(i)).collect();
            let counts = (released.len() as u32, closed.len() as u32);
            s.released.entry(task_id).or_default().extend(released);
            s.closed.entry(task_id).or_default().extend(closed.into_iter().map(|i| (i, reason.clone())));
            Ok(counts)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_lines_parse_as_json_or_text() {
        let values = parse_values(
            "hello\npanda-output x=4\npanda-output ok=true\npanda-output name=beta\n  panda-output x=8\npanda-output =1\n",
        );
        assert_eq!(values.get("x"), Some(&Value::Int(8)), "a later line wins");
        assert_eq!(values.get("ok"), Some(&Value::Bool(true)));
        assert_eq!(values.get("name"), Some(&Value::String("beta".into())));
        assert_eq!(values.len(), 3);
    }
}
