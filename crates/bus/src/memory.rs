//! The in-process backend: the same at-least-once behaviour as RabbitMQ for services that share
//! one process (`panda-all`, the tests). Queues live as long as the [`MemoryBus`] (all its
//! clones), so they outlive their consumers; nothing survives the process.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::delivery::{self, Outcome};
use crate::{BusConfig, Envelope, Error, Handler, Publisher, Subscription, topic};

/// The in-process bus. Clones share the queues.
#[derive(Clone)]
pub struct MemoryBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: BusConfig,
    /// Only held for synchronous bookkeeping, never across an `.await`.
    queues: Mutex<HashMap<String, QueueEntry>>,
}

struct QueueEntry {
    bindings: Vec<String>,
    queue: Arc<Queue>,
}

/// A queue's waiting messages. Consumers of one queue compete for them.
struct Queue {
    name: String,
    messages: Mutex<VecDeque<Message>>,
    ready: Notify,
}

struct Message {
    event: Envelope,
    /// The number of the next delivery, from 1.
    delivery: u32,
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBus {
    /// A bus with the default configuration.
    pub fn new() -> Self {
        Self::with_config(BusConfig::default())
    }

    /// A bus using `config.max_deliveries` (the URL, exchange and prefetch do not apply).
    pub fn with_config(config: BusConfig) -> Self {
        Self { inner: Arc::new(Inner { config, queues: Mutex::new(HashMap::new()) }) }
    }

    /// The configured exchange name (used only to name queues).
    pub fn exchange(&self) -> &str {
        &self.inner.config.exchange
    }

    /// See [`Bus::consume`](crate::Bus::consume).
    ///
    /// # Errors
    /// [`Error::InvalidName`] for names RabbitMQ would refuse, so both backends accept the same.
    pub async fn consume(
        &self,
        sub: Subscription,
        handler: Arc<dyn Handler>,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, Error> {
        topic::validate_subscription(&sub)?;
        let queue = self.declare(&sub.queue, &sub.bindings);
        let span = tracing::info_span!("consume", queue = %sub.queue, backend = "memory");
        let bus = self.clone();
        let transient = sub.transient;
        Ok(tokio::spawn(
            async move {
                bus.clone().consume_loop(queue, handler, shutdown).await;
                if transient {
                    // As RabbitMQ deletes an auto-delete queue: nothing more is kept for it.
                    bus.lock_queues().remove(&sub.queue);
                }
            }
            .instrument(span),
        ))
    }

    /// Creates the queue if needed and adds the bindings it does not have yet.
    fn declare(&self, name: &str, bindings: &[String]) -> Arc<Queue> {
        let mut queues = self.lock_queues();
        let entry = queues.entry(name.to_owned()).or_insert_with(|| QueueEntry {
            bindings: Vec::new(),
            queue: Arc::new(Queue {
                name: name.to_owned(),
                messages: Mutex::new(VecDeque::new()),
                ready: Notify::new(),
            }),
        });
        for binding in bindings {
            if !entry.bindings.contains(binding) {
                entry.bindings.push(binding.clone());
            }
        }
        entry.queue.clone()
    }

    async fn consume_loop(self, queue: Arc<Queue>, handler: Arc<dyn Handler>, shutdown: CancellationToken) {
        loop {
            let message = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                message = queue.pop() => message,
            };
            // Not raced with shutdown: the in-flight event is always finished. The guard puts it
            // back if this task is aborted (a crash) before the outcome is applied.
            let (event, number) = (message.event.clone(), message.delivery);
            let in_flight = InFlight { queue: &queue, message: Some(message) };
            let outcome =
                delivery::run_handler(handler.as_ref(), &event, &queue.name, number, self.inner.config.max_deliveries)
                    .await;
            in_flight.settle();
            match outcome {
                Outcome::Ack => {}
                Outcome::Retry { next_delivery, delay } => {
                    let queue = queue.clone();
                    // The queue lives in the bus, not in this consumer, so the retry is kept even
                    // if the consumer stops meanwhile.
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        queue.push_back(Message { event, delivery: next_delivery });
                    });
                }
                Outcome::DeadLetter { reason } => {
                    let dead = self.declare(&delivery::dead_letter_queue(&queue.name), &[]);
                    dead.push_back(Message { event: event.clone(), delivery: 1 });
                    delivery::log_dead_letter(&event.event_id.to_string(), &event.routing_key, &queue.name, &reason);
                }
            }
        }
        // This consumer may have taken a wake-up meant for a message it will now never pop.
        queue.ready.notify_one();
    }

    fn lock_queues(&self) -> MutexGuard<'_, HashMap<String, QueueEntry>> {
        // A panic while holding this lock cannot leave the map half-updated, so a poisoned lock
        // is still consistent.
        self.inner.queues.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl Publisher for MemoryBus {
    async fn publish(&self, events: &[Envelope]) -> Result<(), Error> {
        for event in events {
            topic::validate_routing_key(&event.routing_key)?;
        }
        let queues = self.lock_queues();
        for event in events {
            for entry in queues.values() {
                // One copy per queue, however many of its bindings match (as in AMQP).
                if entry.bindings.iter().any(|pattern| topic::matches(pattern, &event.routing_key)) {
                    entry.queue.push_back(Message { event: event.clone(), delivery: 1 });
                }
            }
        }
        Ok(())
    }
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Message>> {
        self.messages.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push_back(&self, message: Message) {
        self.lock().push_back(message);
        self.ready.notify_one();
    }

    fn push_front(&self, message: Message) {
        self.lock().push_front(message);
        self.ready.notify_one();
    }

    /// Waits for the next message. Cancel-safe: a message is only taken in the poll that returns it.
    async fn pop(&self) -> Message {
        loop {
            if let Some(message) = self.lock().pop_front() {
                return message;
            }
            self.ready.notified().await;
        }
    }
}

/// An event a consumer holds but has not finished: returned to the front of its queue on drop,
/// as the broker does with unacknowledged messages when a consumer's channel closes.
struct InFlight<'a> {
    queue: &'a Queue,
    message: Option<Message>,
}

impl InFlight<'_> {
    /// The handler returned: the caller applies the outcome instead of a requeue.
    fn settle(mut self) {
        self.message = None;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(message) = self.message.take() {
            self.queue.push_front(message);
        }
    }
}
