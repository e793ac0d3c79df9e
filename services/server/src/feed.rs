//! The change feed behind watch streams. Every committed change is a `task.*` or `job.*` event
//! on the bus (through the outbox), whichever replica made it; while at least one watch is open,
//! this replica follows those events on a transient queue of its own and hands them to its
//! watchers. With no watcher, it follows nothing and costs nothing.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use panda_bus::{Bus, Envelope, HandleError, Handler, Subscription};
use panda_proto::convert::WireEnum;
use panda_proto::events::v1::{JobStatusChanged, TaskStatusChanged};
use panda_types::{JobId, JobStatus, TaskId, TaskStatus};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// A committed change, as watchers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The task that changed, or whose job changed.
    pub task_id: TaskId,
    /// The task's owner, for a task change.
    pub user: Option<String>,
    /// The task's new state, for a task change.
    pub task_status: Option<TaskStatus>,
    /// The job that changed, and the state it moved to.
    pub job: Option<(JobId, JobStatus)>,
}

impl Change {
    /// The change an event announces, if it is one of the server's.
    pub fn of(event: &Envelope) -> Option<Change> {
        if event.routing_key.starts_with("task.") {
            let body: TaskStatusChanged = event.decode().ok()?;
            let status = TaskStatus::from_wire("status", body.status).ok();
            Some(Change { task_id: TaskId(body.task_id), user: Some(body.user), task_status: status, job: None })
        } else if event.routing_key.starts_with("job.") {
            let body: JobStatusChanged = event.decode().ok()?;
            let status = JobStatus::from_wire("status", body.status).ok()?;
            Some(Change {
                task_id: TaskId(body.task_id),
                user: None,
                task_status: None,
                job: Some((JobId(body.job_id), status)),
            })
        } else {
            None
        }
    }
}

/// This replica's view of every replica's changes; cheap to clone.
#[derive(Clone)]
pub struct ChangeFeed {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Bus,
    queue: String,
    changes: broadcast::Sender<Change>,
    shutdown: CancellationToken,
    /// Serializes starting the consumer (an await) without holding `state` across it.
    starting: tokio::sync::Mutex<()>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    watchers: usize,
    consumer: Option<CancellationToken>,
}

/// One watch's subscription; the feed stops following the bus when the last one is dropped.
pub struct Watcher {
    /// Changes in commit order per replica. `RecvError::Lagged` means some were missed: re-read.
    pub changes: broadcast::Receiver<Change>,
    feed: ChangeFeed,
}

impl Watcher {
    /// Cancelled when the server starts shutting down: watch streams must end then, or the
    /// graceful shutdown would wait for them forever.
    pub fn shutdown(&self) -> CancellationToken {
        self.feed.inner.shutdown.clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let mut state = self.feed.inner.lock();
        state.watchers = state.watchers.saturating_sub(1);
        if state.watchers == 0
            && let Some(consumer) = state.consumer.take()
        {
            consumer.cancel();
        }
    }
}

impl ChangeFeed {
    /// A feed on `bus`, following nothing until the first watch.
    pub fn new(bus: Bus, shutdown: CancellationToken) -> Self {
        // Each replica needs every event, so replicas must not share a queue.
        let queue = bus.queue_name("server", "changes");
        // Watchers that fall this far behind re-read what they follow.
        let (changes, _) = broadcast::channel(4096);
        let inner = Inner {
            bus,
            queue,
            changes,
            shutdown,
            starting: tokio::sync::Mutex::new(()),
            state: Mutex::new(State::default()),
        };
        Self { inner: Arc::new(inner) }
    }

    /// Subscribes a watch. Every change committed after this returns reaches it (read what is
    /// followed after subscribing, so that nothing falls between).
    ///
    /// # Errors
    /// The broker cannot be reached.
    pub async fn watch(&self) -> Result<Watcher, panda_bus::Error> {
        let _starting = self.inner.starting.lock().await;
        let changes = self.inner.changes.subscribe();
        let start = {
            let mut state = self.inner.lock();
            state.watchers += 1;
            state.consumer.is_none()
        };
        let watcher = Watcher { changes, feed: self.clone() };
        if start {
            let token = self.inner.shutdown.child_token();
            // A fresh name each time: the queue of a consumer that just stopped may not be gone yet.
            let queue = format!("{}.{}", self.inner.queue, uuid::Uuid::new_v4().simple());
            let subscription = Subscription::transient(queue, ["task.#", "job.#"]);
            let handler = Arc::new(Forward(self.inner.changes.clone()));
            // On error the watcher is dropped, which undoes the count.
            self.inner.bus.consume(subscription, handler, token.clone()).await?;
            self.inner.lock().consumer = Some(token);
            tracing::debug!(queue = %self.inner.queue, "following changes for watchers");
        }
        Ok(watcher)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Hands the bus's events to the watchers; never fails (a live view has nothing to retry).
struct Forward(broadcast::Sender<Change>);

#[async_trait]
impl Handler for Forward {
    async fn handle(&self, event: &Envelope) -> Result<(), HandleError> {
        if let Some(change) = Change::of(event) {
            // No receiver left is fine: the last watcher just went away.
            let _ = self.0.send(change);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use panda_bus::Publisher;

    use super::*;

    fn task_event(task_id: u64, status: TaskStatus) -> Envelope {
        Envelope::new(
            format!("task.{status}"),
            &TaskStatusChanged { task_id, status: status.to_wire(), user: "alice".into(), ..Default::default() },
        )
    }

    async fn next(watcher: &mut Watcher) -> Change {
        tokio::time::timeout(std::time::Duration::from_secs(10), watcher.changes.recv()).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn watchers_get_every_change_published_after_they_subscribed() {
        let bus = Bus::memory();
        let feed = ChangeFeed::new(bus.clone(), CancellationToken::new());
        let mut a = feed.watch().await.unwrap();
        let mut b = feed.watch().await.unwrap();
        bus.publish(&[task_event(7, TaskStatus::Running)]).await.unwrap();
        for watcher in [&mut a, &mut b] {
            let change = next(watcher).await;
            assert_eq!(change.task_id, TaskId(7));
            assert_eq!(change.user.as_deref(), Some("alice"));
            assert_eq!(change.task_status, Some(TaskStatus::Running));
        }
    }

    #[tokio::test]
    async fn the_feed_stops_following_when_the_last_watcher_leaves_and_resumes_for_the_next() {
        let bus = Bus::memory();
        let feed = ChangeFeed::new(bus.clone(), CancellationToken::new());
        let watcher = feed.watch().await.unwrap();
        assert!(feed.inner.lock().consumer.is_some());
        drop(watcher);
        assert!(feed.inner.lock().consumer.is_none(), "no watcher: nothing followed");
        let mut again = feed.watch().await.unwrap();
        bus.publish(&[task_event(8, TaskStatus::Done)]).await.unwrap();
        assert_eq!(next(&mut again).await.task_id, TaskId(8));
    }

    #[test]
    fn job_events_carry_the_job_and_its_state() {
        let event = Envelope::new(
            "job.running",
            &JobStatusChanged { job_id: 3, task_id: 2, status: JobStatus::Running.to_wire(), ..Default::default() },
        );
        let change = Change::of(&event).unwrap();
        assert_eq!((change.task_id, change.job), (TaskId(2), Some((JobId(3), JobStatus::Running))));
        assert_eq!(Change::of(&Envelope::new("work.result", &TaskStatusChanged::default())), None);
    }
}
