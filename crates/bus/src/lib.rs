//! The event bus the panda services coordinate over: state changes are announced as protobuf
//! events on a topic exchange, and consumers react to them at least once.
//!
//! One API, two backends with the same behaviour: [`Bus::Amqp`] talks to RabbitMQ through lapin
//! (a durable topic exchange, a durable quorum queue per subscription, publisher confirms,
//! persistent messages, bounded prefetch, manual acks), and [`Bus::Memory`] runs in-process for
//! the embedded single-process mode and for tests. Both deliver at least once, acknowledge only
//! after the handler succeeded, match topic patterns the AMQP way, keep a queue's messages while
//! no consumer runs, redeliver on [`HandleError::Retry`] after a short delay, and dead-letter a
//! message after [`BusConfig::max_deliveries`] attempts or on [`HandleError::Reject`].
//!
//! Publishing straight from a request handler would lose events when the process dies between
//! the commit and the publish, so services write events into the `outbox` table in the same
//! transaction as the state change ([`outbox::append`]) and a relay ([`outbox::run_relay`])
//! publishes them afterwards. Consumers make their effects idempotent with
//! [`idempotency::first_delivery`] in their own transaction.
//!
//! Modules:
//! - `config`: [`BusConfig`], the `[<service>.bus]` section.
//! - `envelope`: [`Envelope`], an event with its ID, routing key and time.
//! - `error`: [`Error`] and its gRPC code.
//! - `topic`: AMQP topic-pattern matching (used by the memory backend).
//! - `delivery`: the policy both backends share for a handler's outcome (ack, retry later,
//!   dead-letter) and the retry delays.
//! - `memory`: [`MemoryBus`], the in-process backend.
//! - `amqp`: [`AmqpBus`], the RabbitMQ backend, with reconnection.
//! - [`outbox`]: the transactional outbox and its relay.
//! - [`idempotency`]: the `processed_events` table for idempotent consumers.
//! - [`migration`]: the migrations creating both tables, for a service's own migrator.

mod amqp;
mod config;
mod delivery;
mod envelope;
mod error;
pub mod idempotency;
mod memory;
pub mod migration;
pub mod outbox;
mod topic;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use amqp::AmqpBus;
pub use config::BusConfig;
pub use envelope::Envelope;
pub use error::{Error, Result};
pub use memory::MemoryBus;

/// Something that publishes events.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Publishes the events in order and returns only after the broker confirmed every one of
    /// them (for the memory bus: after they were enqueued).
    ///
    /// # Errors
    /// The broker is unreachable, timed out or refused (nacked) an event. Some of the events may
    /// have been published anyway, so the caller must publish them all again: consumers see
    /// duplicates, never a loss. Dropping the future has the same effect as an error.
    async fn publish(&self, events: &[Envelope]) -> Result<(), Error>;
}

/// What a handler says about an event it could not process.
#[derive(Debug)]
pub enum HandleError {
    /// A transient failure (database down, dependency unavailable): deliver the event again
    /// later. Counts towards [`BusConfig::max_deliveries`].
    Retry(String),
    /// The event can never be processed (undecodable, violates an invariant): dead-letter it now.
    Reject(String),
}

impl std::fmt::Display for HandleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandleError::Retry(reason) => write!(f, "retry: {reason}"),
            HandleError::Reject(reason) => write!(f, "reject: {reason}"),
        }
    }
}

/// Reacts to events. Called at least once per event (a crash between the effect and the ack
/// repeats it), one event at a time per consumer; use [`idempotency::first_delivery`] to make
/// the effect happen once.
#[async_trait]
pub trait Handler: Send + Sync {
    /// Processes one event. `Ok` acknowledges it; a panic counts as [`HandleError::Retry`].
    async fn handle(&self, event: &Envelope) -> Result<(), HandleError>;
}

/// A durable queue and the topic patterns it receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The queue name, `panda.<svc>.<purpose>`. Consumers of the same queue share its events;
    /// a queue keeps its events while no consumer runs. Dead-lettered events go to
    /// `<queue>.dead`.
    pub queue: String,
    /// Topic patterns such as `task.*` or `job.#`: `*` matches one dot-separated word, `#` zero
    /// or more. Bindings are added to those the queue already has, never removed.
    pub bindings: Vec<String>,
    /// A queue that lives only while its consumer runs (RabbitMQ: exclusive, auto-delete, not
    /// durable): for one process's live view of events (watch streams), never for work that must
    /// survive a restart. Events published while it has no consumer are not kept.
    pub transient: bool,
}

impl Subscription {
    /// A subscription of the durable `queue` to `bindings`.
    pub fn new(queue: impl Into<String>, bindings: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self { queue: queue.into(), bindings: bindings.into_iter().map(Into::into).collect(), transient: false }
    }

    /// A subscription of a transient `queue` (see [`Subscription::transient`]) to `bindings`.
    pub fn transient(queue: impl Into<String>, bindings: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self { transient: true, ..Self::new(queue, bindings) }
    }
}

/// The event bus: RabbitMQ or in-process.
#[derive(Clone)]
pub enum Bus {
    /// In-process: one process only, events live in memory.
    Memory(MemoryBus),
    /// RabbitMQ through lapin.
    Amqp(AmqpBus),
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bus::Memory(_) => f.write_str("Bus::Memory"),
            Bus::Amqp(bus) => f.debug_tuple("Bus::Amqp").field(&bus.exchange()).finish(),
        }
    }
}

impl Bus {
    /// Connects to the broker named by `config.url`, declaring the exchange, or creates an
    /// in-process bus when it is `None`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`], or the broker does not answer ([`Error::Connect`],
    /// [`Error::Timeout`], [`Error::Broker`]); the caller decides whether to retry.
    pub async fn connect(config: &BusConfig) -> Result<Bus, Error> {
        config.validate()?;
        match &config.url {
            None => Ok(Bus::Memory(MemoryBus::with_config(config.clone()))),
            Some(url) => Ok(Bus::Amqp(AmqpBus::connect(url, config.clone()).await?)),
        }
    }

    /// The queue name for a consumer: `<exchange>.<service>.<purpose>`. Deriving it from the
    /// exchange keeps two deployments (or two test runs) on one broker from sharing queues.
    pub fn queue_name(&self, service: &str, purpose: &str) -> String {
        let exchange = match self {
            Bus::Memory(bus) => bus.exchange(),
            Bus::Amqp(bus) => bus.exchange(),
        };
        format!("{exchange}.{service}.{purpose}")
    }

    /// Deletes the named queues and the exchange on RabbitMQ (nothing to do in memory).
    ///
    /// # Errors
    /// The broker does not answer or refuses.
    pub async fn remove(&self, queues: &[String]) -> Result<(), Error> {
        match self {
            Bus::Memory(_) => Ok(()),
            Bus::Amqp(bus) => bus.remove(queues).await,
        }
    }

    /// Connects a standalone service: its events must cross processes, so the in-process bus is
    /// refused with a message saying how to configure RabbitMQ.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] without `bus.url`, else as [`Bus::connect`].
    pub async fn connect_broker(config: &BusConfig, service: &str) -> Result<Bus, Error> {
        if config.url.is_none() {
            return Err(Error::InvalidConfig {
                problems: format!(
                    "bus.url is not set: a standalone {service} exchanges events through RabbitMQ (set bus.url or \
                     PANDA_BUS__URL, e.g. amqp://guest:guest@127.0.0.1:5672/%2f); the in-process bus works only \
                     inside `panda up`"
                ),
            });
        }
        Bus::connect(config).await
    }

    /// A new in-process bus with the default configuration.
    pub fn memory() -> Bus {
        Bus::Memory(MemoryBus::new())
    }

    /// Declares the durable queue and its bindings, then spawns the consume loop, which calls
    /// `handler` for each event one at a time and acknowledges after it returned `Ok`. Events
    /// published after this returns are never missed. The loop reconnects with backoff when the
    /// broker connection drops, and returns at `shutdown` after finishing the in-flight event
    /// (events fetched but not yet handled go back to the queue). Aborting the returned task
    /// behaves like a crash: unacknowledged events are delivered again.
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a queue name or pattern AMQP cannot carry, or the broker
    /// errors of [`Bus::connect`]. Cancel-safe: dropped before it returns, it leaves at most a
    /// declared queue behind, and no consumer.
    pub async fn consume(
        &self,
        sub: Subscription,
        handler: Arc<dyn Handler>,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, Error> {
        match self {
            Bus::Memory(bus) => bus.consume(sub, handler, shutdown).await,
            Bus::Amqp(bus) => bus.consume(sub, handler, shutdown).await,
        }
    }
}

#[async_trait]
impl Publisher for Bus {
    async fn publish(&self, events: &[Envelope]) -> Result<(), Error> {
        match self {
            Bus::Memory(bus) => bus.publish(events).await,
            Bus::Amqp(bus) => bus.publish(events).await,
        }
    }
}
