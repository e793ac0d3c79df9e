//! Watch streams: a task, a job, or a user's tasks, followed as they change. Each watch
//! subscribes to the change feed (every replica's commits, through the bus) before its first
//! read, so no change falls between the two; a watcher that falls behind re-reads, and a slow
//! periodic re-read covers a feed interrupted by a broker outage.

use panda_proto::convert::WireEnum;
use panda_proto::server::v1 as wire;
use panda_types::{JobId, JobStatus, StateMachine, TaskId, TaskStatus};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::convert;
use super::handlers::{Api, outputs_of};
use crate::feed::{Change, Watcher};
use crate::store::TaskFilter;

/// The safety net: how often a watch re-reads what it follows even without a change.
const REFRESH: std::time::Duration = std::time::Duration::from_secs(30);

/// Most tasks a user watch announces at its start (the newest unfinished ones).
const USER_TASKS_AT_START: u64 = 1000;

/// What a watch stream carries.
pub(super) type Stream<T> = ReceiverStream<Result<T, Status>>;

/// What the next loop turn should re-read.
enum Next {
    /// A change of what is followed.
    Change(Change),
    /// Everything (missed changes, or the periodic re-read).
    Resync,
    /// The client went away or the server is stopping.
    Stop,
}

/// The next thing a watch loop must handle; `refresh`, when given, adds the periodic re-read.
async fn next(
    watcher: &mut Watcher,
    tx: &mpsc::Sender<impl Send>,
    refresh: Option<&mut tokio::time::Interval>,
) -> Next {
    let shutdown = watcher.shutdown();
    let tick = async {
        match refresh {
            Some(refresh) => {
                refresh.tick().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = tx.closed() => Next::Stop,
        () = shutdown.cancelled() => Next::Stop,
        change = watcher.changes.recv() => match change {
            Ok(change) => Next::Change(change),
            Err(RecvError::Lagged(_)) => Next::Resync,
            Err(RecvError::Closed) => Next::Stop,
        },
        () = tick => Next::Resync,
    }
}

fn refresh_timer() -> tokio::time::Interval {
    let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + REFRESH, REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    refresh
}

async fn subscribe(api: &Api) -> Result<Watcher, Status> {
    api.feed
        .watch()
        .await
        .map_err(|error| Status::unavailable(format!("cannot follow changes right now ({error}); retry shortly")))
}

impl Api {
    /// The task now, and the job of a change as it was at that change (its state from the event;
    /// the other fields as they are now), so every transition is reported once and in order.
    async fn task_snapshot(
        &self,
        task_id: TaskId,
        job: Option<(JobId, JobStatus)>,
    ) -> Result<wire::WatchTaskResponse, Status> {
        let (task, counts) = self.service.get_task(task_id).await?;
        let job = match job {
            Some((job_id, status)) => Some(self.job_snapshot(job_id, Some(status)).await?),
            None => None,
        };
        Ok(wire::WatchTaskResponse { task: Some(convert::task(task, counts)), job })
    }

    /// The job now, with the state of the change being reported.
    async fn job_snapshot(&self, job_id: JobId, status: Option<JobStatus>) -> Result<wire::Job, Status> {
        let mut job = self.service.show_job(job_id).await?;
        if let Some(status) = status {
            job.status = status;
        }
        let outputs = outputs_of(&job.output_files);
        Ok(convert::job(job, outputs))
    }
}

/// Whether two snapshots show the same task state (a re-read that finds nothing new sends nothing).
fn same_task(a: Option<&wire::Task>, b: Option<&wire::Task>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.status == b.status && a.job_counts == b.job_counts && a.modified_at == b.modified_at,
        _ => false,
    }
}

fn task_ended(task: Option<&wire::Task>) -> bool {
    task.is_some_and(|t| TaskStatus::from_wire("status", t.status).is_ok_and(StateMachine::is_final))
}

/// A task and each of its jobs' transitions, until the task ends.
pub(super) async fn task(api: &Api, task_id: TaskId) -> Result<Stream<wire::WatchTaskResponse>, Status> {
    let mut watcher = subscribe(api).await?;
    let first = api.task_snapshot(task_id, None).await?;
    let (tx, rx) = mpsc::channel(64);
    let api = api.clone();
    tokio::spawn(async move {
        let mut last = first.task.clone();
        if tx.send(Ok(first)).await.is_err() || task_ended(last.as_ref()) {
            return;
        }
        let mut refresh = refresh_timer();
        loop {
            let job = match next(&mut watcher, &tx, Some(&mut refresh)).await {
                Next::Change(change) if change.task_id == task_id => change.job,
                Next::Change(_) => continue,
                Next::Resync => None,
                Next::Stop => return,
            };
            let update = match api.task_snapshot(task_id, job).await {
                Ok(update) => update,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            if update.job.is_none() && same_task(update.task.as_ref(), last.as_ref()) {
                continue;
            }
            last.clone_from(&update.task);
            let done = task_ended(last.as_ref());
            if tx.send(Ok(update)).await.is_err() {
                return;
            }
            if done {
                // The task ended: report the job changes still queued, then close the stream.
                while let Ok(change) = watcher.changes.try_recv() {
                    if change.task_id != task_id || change.job.is_none() {
                        continue;
                    }
                    let Ok(update) = api.task_snapshot(task_id, change.job).await else { return };
                    if tx.send(Ok(update)).await.is_err() {
                        return;
                    }
                }
                return;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// One job's transitions, until it ends.
pub(super) async fn job(api: &Api, job_id: JobId) -> Result<Stream<wire::WatchJobResponse>, Status> {
    let mut watcher = subscribe(api).await?;
    let first = api.job_snapshot(job_id, None).await?;
    let (tx, rx) = mpsc::channel(64);
    let api = api.clone();
    let ended = |job: &wire::Job| JobStatus::from_wire("status", job.status).is_ok_and(StateMachine::is_final);
    tokio::spawn(async move {
        let mut last = (first.status, first.modified_at);
        let done = ended(&first);
        if tx.send(Ok(wire::WatchJobResponse { job: Some(first) })).await.is_err() || done {
            return;
        }
        let mut refresh = refresh_timer();
        loop {
            let status = match next(&mut watcher, &tx, Some(&mut refresh)).await {
                Next::Change(Change { job: Some((id, status)), .. }) if id == job_id => Some(status),
                Next::Change(_) => continue,
                Next::Resync => None,
                Next::Stop => return,
            };
            let job = match api.job_snapshot(job_id, status).await {
                Ok(job) => job,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            // The event of a change the first read already showed can arrive after it (the read
            // follows the subscription): a state is reported once, as a job never re-enters the
            // state it is in.
            if job.status == last.0 && (status.is_some() || job.modified_at == last.1) {
                continue;
            }
            last = (job.status, job.modified_at);
            let done = ended(&job);
            if tx.send(Ok(wire::WatchJobResponse { job: Some(job) })).await.is_err() || done {
                return;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// A user's tasks: first each unfinished one as it is, then every state change of any of them
/// (new tasks included), until the client hangs up.
pub(super) async fn user_tasks(api: &Api, user: String) -> Result<Stream<wire::WatchTaskResponse>, Status> {
    if user.trim().is_empty() {
        return Err(Status::invalid_argument("user is required: whose tasks to follow"));
    }
    let mut watcher = subscribe(api).await?;
    let filter = TaskFilter { user: Some(user.clone()), limit: USER_TASKS_AT_START, ..TaskFilter::default() };
    let current = api.service.list_tasks(filter).await?;
    let (tx, rx) = mpsc::channel(256);
    let api = api.clone();
    tokio::spawn(async move {
        // The last state sent per task: an event of a change the first read already showed may
        // still arrive, and must not be reported twice.
        let mut sent: std::collections::HashMap<TaskId, i32> = std::collections::HashMap::new();
        for (task, counts) in current.into_iter().rev() {
            if task.status.is_final() {
                continue;
            }
            sent.insert(task.id, task.status.to_wire());
            let update = wire::WatchTaskResponse { task: Some(convert::task(task, counts)), job: None };
            if tx.send(Ok(update)).await.is_err() {
                return;
            }
        }
        // Every task change is its own message, so no periodic re-read (it would have nothing to
        // compare against).
        loop {
            let (task_id, status) = match next(&mut watcher, &tx, None).await {
                Next::Change(Change { task_id, user: Some(owner), job: None, task_status, .. }) if owner == user => {
                    (task_id, task_status)
                }
                Next::Change(_) | Next::Resync => continue,
                Next::Stop => return,
            };
            match api.task_snapshot(task_id, None).await {
                Ok(mut update) => {
                    // The state of this change, not a later one: each transition is reported once.
                    if let (Some(task), Some(status)) = (update.task.as_mut(), status) {
                        task.status = status.to_wire();
                    }
                    let state = update.task.as_ref().map(|t| t.status).unwrap_or_default();
                    if sent.insert(task_id, state) == Some(state) {
                        continue;
                    }
                    if tx.send(Ok(update)).await.is_err() {
                        return;
                    }
                }
                Err(status) => tracing::debug!(%task_id, %status, "a watched task could not be read"),
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}
