//! Group commit: calls that arrive while a transaction is in flight wait for it, then share the
//! next one. One durable commit costs about the same for one job as for a thousand, so under load
//! the cost per call falls with the batch size; with nobody else waiting, a call runs at once and
//! pays no added latency (there is no timer, only what queued up meanwhile).
//!
//! A batch handler gets the items in arrival order and answers each one, in the same order. An
//! answer whose caller went away (a client that hung up after sending) goes to the
//! `undelivered` hook, so that work done for nobody (a job dispatched to a vanished pilot) can be
//! undone at once rather than by a watchdog minutes later.

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::{Mutex, mpsc, oneshot};

type Handler<I, O> = Arc<dyn Fn(Vec<I>) -> BoxFuture<'static, Vec<O>> + Send + Sync>;
type Undelivered<O> = Arc<dyn Fn(Vec<O>) -> BoxFuture<'static, ()> + Send + Sync>;

struct Call<I, O> {
    item: I,
    reply: oneshot::Sender<O>,
}

/// A batching front to a handler; cheap to clone. Workers stop once every clone is dropped.
pub struct GroupCommit<I, O> {
    name: &'static str,
    calls: mpsc::Sender<Call<I, O>>,
}

impl<I, O> Clone for GroupCommit<I, O> {
    fn clone(&self) -> Self {
        Self { name: self.name, calls: self.calls.clone() }
    }
}

/// How a group commit runs.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Batches in flight at once (each one transaction). One is right for SQLite, which has a
    /// single writer; PostgreSQL overlaps one batch's commit with the next one's work.
    pub workers: usize,
    /// Most items in one batch.
    pub max_batch: usize,
}

/// The group commit stopped (the process is shutting down) or its handler broke its contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the {0} batcher is not running")]
pub struct Stopped(pub &'static str);

impl<I: Send + 'static, O: Send + 'static> GroupCommit<I, O> {
    /// Starts `shape.workers` workers running `handler` over batches.
    pub fn start(
        name: &'static str,
        shape: Shape,
        handler: impl Fn(Vec<I>) -> BoxFuture<'static, Vec<O>> + Send + Sync + 'static,
        undelivered: impl Fn(Vec<O>) -> BoxFuture<'static, ()> + Send + Sync + 'static,
    ) -> Self {
        let max_batch = shape.max_batch.max(1);
        let (calls, receiver) = mpsc::channel(max_batch * shape.workers.max(1) * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        let handler: Handler<I, O> = Arc::new(handler);
        let undelivered: Undelivered<O> = Arc::new(undelivered);
        for _ in 0..shape.workers.max(1) {
            let (receiver, handler, undelivered) = (receiver.clone(), handler.clone(), undelivered.clone());
            tokio::spawn(async move {
                while let Some(batch) = next_batch(&receiver, max_batch).await {
                    run_batch(name, batch, &handler, &undelivered).await;
                }
            });
        }
        Self { name, calls }
    }

    /// Runs `item` in the next batch and returns its answer.
    ///
    /// # Errors
    /// [`Stopped`] when the workers are gone.
    pub async fn call(&self, item: I) -> Result<O, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.calls.send(Call { item, reply }).await.map_err(|_| Stopped(self.name))?;
        answer.await.map_err(|_| Stopped(self.name))
    }
}

/// Waits for one call, then takes whatever else is already queued, up to `max`. The receiver
/// is held only while collecting, so another worker collects the next batch while this one runs.
async fn next_batch<I, O>(receiver: &Mutex<mpsc::Receiver<Call<I, O>>>, max: usize) -> Option<Vec<Call<I, O>>> {
    let mut receiver = receiver.lock().await;
    let first = receiver.recv().await?;
    let mut batch = Vec::with_capacity(max.min(64));
    batch.push(first);
    while batch.len() < max {
        match receiver.try_recv() {
            Ok(call) => batch.push(call),
            Err(_) => break,
        }
    }
    Some(batch)
}

async fn run_batch<I, O>(
    name: &'static str,
    batch: Vec<Call<I, O>>,
    handler: &Handler<I, O>,
    undelivered: &Undelivered<O>,
) {
    let (items, replies): (Vec<I>, Vec<oneshot::Sender<O>>) = batch.into_iter().map(|c| (c.item, c.reply)).unzip();
    let n = items.len();
    let answers = handler(items).await;
    if answers.len() != n {
        // Dropping the replies tells every caller the batcher failed, rather than mismatching
        // answers to callers.
        tracing::error!(
            batcher = name,
            items = n,
            answers = answers.len(),
            "batch handler answered the wrong number of items"
        );
        return;
    }
    let mut lost = Vec::new();
    for (reply, answer) in replies.into_iter().zip(answers) {
        if let Err(answer) = reply.send(answer) {
            lost.push(answer);
        }
    }
    if !lost.is_empty() {
        tracing::debug!(batcher = name, n = lost.len(), "answers whose callers went away");
        undelivered(lost).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::FutureExt;

    use super::*;

    fn doubling(batches: Arc<Mutex<Vec<usize>>>) -> impl Fn(Vec<u32>) -> BoxFuture<'static, Vec<u32>> + Send + Sync {
        move |items: Vec<u32>| {
            let batches = batches.clone();
            async move {
                batches.lock().await.push(items.len());
                // Long enough for the other callers to queue up behind this batch.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                items.into_iter().map(|i| i * 2).collect()
            }
            .boxed()
        }
    }

    #[tokio::test]
    async fn each_caller_gets_its_own_answer_and_waiting_calls_share_a_batch() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let group = GroupCommit::start(
            "test",
            Shape { workers: 1, max_batch: 100 },
            doubling(batches.clone()),
            |_lost: Vec<u32>| async {}.boxed(),
        );
        let calls: Vec<_> = (0..50u32)
            .map(|i| {
                let group = group.clone();
                tokio::spawn(async move { (i, group.call(i).await) })
            })
            .collect();
        for call in calls {
            let (i, answer) = call.await.expect("caller task");
            assert_eq!(answer, Ok(i * 2));
        }
        let batches = batches.lock().await;
        assert_eq!(batches.iter().sum::<usize>(), 50);
        assert!(batches.len() < 50, "calls that waited together must share batches: {batches:?}");
    }

    #[tokio::test]
    async fn batches_never_exceed_the_maximum() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let group = GroupCommit::start(
            "test",
            Shape { workers: 2, max_batch: 4 },
            doubling(batches.clone()),
            |_lost: Vec<u32>| async {}.boxed(),
        );
        let calls: Vec<_> = (0..40u32)
            .map(|i| {
                tokio::spawn({
                    let group = group.clone();
                    async move { group.call(i).await }
                })
            })
            .collect();
        for call in calls {
            call.await.expect("caller task").expect("answer");
        }
        assert!(batches.lock().await.iter().all(|&n| (1..=4).contains(&n)));
    }

    #[tokio::test]
    async fn answers_for_callers_that_left_go_to_the_undelivered_hook() {
        let lost = Arc::new(AtomicUsize::new(0));
        let group = GroupCommit::start(
            "test",
            Shape { workers: 1, max_batch: 10 },
            doubling(Arc::new(Mutex::new(Vec::new()))),
            {
                let lost = lost.clone();
                move |answers: Vec<u32>| {
                    let lost = lost.clone();
                    async move {
                        lost.fetch_add(answers.len(), Ordering::SeqCst);
                    }
                    .boxed()
                }
            },
        );
        // The caller gives up before the 20 ms batch answers.
        let gave_up = tokio::time::timeout(std::time::Duration::from_millis(2), group.call(7)).await;
        assert!(gave_up.is_err());
        assert_eq!(group.call(1).await, Ok(2));
        assert_eq!(lost.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_handler_that_miscounts_fails_its_callers_instead_of_mixing_answers() {
        let group = GroupCommit::start(
            "test",
            Shape { workers: 1, max_batch: 10 },
            |_items: Vec<u32>| async { Vec::<u32>::new() }.boxed(),
            |_lost: Vec<u32>| async {}.boxed(),
        );
        assert_eq!(group.call(1).await, Err(Stopped("test")));
    }
}
