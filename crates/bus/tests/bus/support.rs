//! Shared test plumbing: per-test buses and databases, recording handlers and polling.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use panda_bus::{Bus, BusConfig, Envelope, HandleError, Handler, Publisher, Subscription};
use panda_db::TestDb;
use sea_orm::DatabaseConnection;
use sea_orm_migration::{MigrationTrait, MigratorTrait};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a test waits for something that should happen; only reached when it never does.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The protobuf body of the test events.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ping {
    /// Anything.
    #[prost(string, tag = "1")]
    pub text: String,
}

/// A new event.
pub fn event(routing_key: &str, text: &str) -> Envelope {
    Envelope::new(routing_key, &Ping { text: text.to_owned() })
}

/// Polls `condition` until it holds; panics naming `what` after [`TIMEOUT`].
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The bus backends.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Memory,
    Amqp,
}

/// The broker the AMQP tests use; they fail without it.
pub fn amqp_url() -> String {
    std::env::var("PANDA_TEST_AMQP_URL")
        .expect("PANDA_TEST_AMQP_URL must name a RabbitMQ broker, e.g. amqp://guest:guest@127.0.0.1:5672/%2f")
}

/// A bus for one test, with names of its own; on drop it stops its consumers and deletes what it
/// declared on the broker.
pub struct TestBus {
    pub bus: Bus,
    prefix: String,
    shutdown: CancellationToken,
    cleanup: Option<BrokerCleanup>,
}

impl TestBus {
    pub async fn new(backend: Backend, config: BusConfig) -> Self {
        Self::with_url(backend, config, None).await
    }

    /// As `new`, but an AMQP bus connects to `url` instead of `PANDA_TEST_AMQP_URL` (cleanup still
    /// goes straight to the broker).
    pub async fn with_url(backend: Backend, mut config: BusConfig, url: Option<String>) -> Self {
        let prefix = format!("test.{}", Uuid::new_v4().simple());
        let cleanup = match backend {
            Backend::Memory => {
                config.url = None;
                None
            }
            Backend::Amqp => {
                config.url = Some(url.unwrap_or_else(amqp_url));
                config.exchange = format!("{prefix}.events");
                Some(BrokerCleanup { url: amqp_url(), exchange: config.exchange.clone(), queues: Mutex::default() })
            }
        };
        let bus = Bus::connect(&config).await.expect("the bus from PANDA_TEST_AMQP_URL answers");
        Self { bus, prefix, shutdown: CancellationToken::new(), cleanup }
    }

    /// A queue name unique to this test.
    pub fn queue(&self, name: &str) -> String {
        let queue = format!("{}.{name}", self.prefix);
        if let Some(cleanup) = &self.cleanup {
            let mut queues = cleanup.queues.lock().unwrap();
            queues.push(queue.clone());
            queues.push(format!("{queue}.dead"));
        }
        queue
    }

    pub async fn consume(&self, queue: &str, bindings: &[&str], handler: Arc<dyn Handler>) -> Consumer {
        let token = self.shutdown.child_token();
        let handle = self
            .bus
            .consume(Subscription::new(queue, bindings.iter().copied()), handler, token.clone())
            .await
            .expect("consume");
        Consumer { handle, token }
    }

    /// As `consume`, on a transient queue (lives only while its consumer runs).
    pub async fn consume_transient(&self, queue: &str, bindings: &[&str], handler: Arc<dyn Handler>) -> Consumer {
        let token = self.shutdown.child_token();
        let handle = self
            .bus
            .consume(Subscription::transient(queue, bindings.iter().copied()), handler, token.clone())
            .await
            .expect("consume");
        Consumer { handle, token }
    }

    pub async fn publish(&self, events: &[Envelope]) {
        self.bus.publish(events).await.expect("publish");
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(cleanup) = self.cleanup.take() {
            cleanup.run();
        }
    }
}

/// What an AMQP test declared.
struct BrokerCleanup {
    url: String,
    exchange: String,
    queues: Mutex<Vec<String>>,
}

impl BrokerCleanup {
    /// Deletes the queues and the exchange from a thread of its own: Drop cannot await.
    fn run(self) {
        let queues = std::mem::take(&mut *self.queues.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            runtime.block_on(async {
                let Ok(connection) = Connection::connect(&self.url, ConnectionProperties::default()).await else {
                    return;
                };
                for queue in &queues {
                    // A channel per deletion: an error closes the channel it happened on.
                    if let Ok(channel) = connection.create_channel().await {
                        let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
                    }
                }
                if let Ok(channel) = connection.create_channel().await {
                    let _ =
                        channel.exchange_delete(self.exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
                }
                let _ = connection.close(200, "test done".into()).await;
            });
        })
        .join();
    }
}

/// A running consumer.
pub struct Consumer {
    pub handle: JoinHandle<()>,
    pub token: CancellationToken,
}

impl Consumer {
    /// Graceful stop; waits for the loop to return.
    pub async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(TIMEOUT, self.handle)
            .await
            .expect("the consumer stops")
            .expect("the consumer task ends cleanly");
    }

    /// A crash: the task is dropped wherever it is.
    pub async fn crash(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }
}

type Policy = Box<dyn Fn(&Envelope, u32) -> Result<(), HandleError> + Send + Sync>;

/// A handler that records what it handled and answers by a policy of (event, attempt number).
pub struct Recorder {
    policy: Policy,
    handled: Mutex<Vec<Envelope>>,
    attempts: Mutex<HashMap<Uuid, u32>>,
}

impl Recorder {
    pub fn ok() -> Arc<Self> {
        Self::with(|_, _| Ok(()))
    }

    pub fn with(policy: impl Fn(&Envelope, u32) -> Result<(), HandleError> + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self { policy: Box::new(policy), handled: Mutex::default(), attempts: Mutex::default() })
    }

    /// The events handled successfully, in order.
    pub fn handled(&self) -> Vec<Envelope> {
        self.handled.lock().unwrap().clone()
    }

    pub fn handled_ids(&self) -> Vec<Uuid> {
        self.handled().iter().map(|e| e.event_id).collect()
    }

    pub fn has(&self, event: &Envelope) -> bool {
        self.handled_ids().contains(&event.event_id)
    }

    /// How often the handler was called for `event`.
    pub fn attempts(&self, event: &Envelope) -> u32 {
        self.attempts.lock().unwrap().get(&event.event_id).copied().unwrap_or(0)
    }

    /// Waits until every one of `events` was handled.
    pub async fn wait_for(&self, events: &[&Envelope]) {
        let what = format!("{} events handled", events.len());
        eventually(&what, || async { events.iter().all(|e| self.has(e)) }).await;
    }
}

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, event: &Envelope) -> Result<(), HandleError> {
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap();
            let attempt = attempts.entry(event.event_id).or_insert(0);
            *attempt += 1;
            *attempt
        };
        (self.policy)(event, attempt)?;
        self.handled.lock().unwrap().push(event.clone());
        Ok(())
    }
}

/// A handler that takes an event and then waits until the gate opens (forever if it never does).
#[derive(Default)]
pub struct Gate {
    started: AtomicBool,
    open: Notify,
    finished: Mutex<Vec<Uuid>>,
}

impl Gate {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    pub async fn wait_started(&self) {
        eventually("the handler to start", || async { self.started.load(Ordering::SeqCst) }).await;
    }

    pub fn open(&self) {
        self.open.notify_one();
    }

    pub fn finished(&self) -> Vec<Uuid> {
        self.finished.lock().unwrap().clone()
    }
}

#[async_trait]
impl Handler for Gate {
    async fn handle(&self, event: &Envelope) -> Result<(), HandleError> {
        self.started.store(true, Ordering::SeqCst);
        self.open.notified().await;
        self.finished.lock().unwrap().push(event.event_id);
        Ok(())
    }
}

/// A publisher that fails its first `failures` calls, then passes on to `inner`.
pub struct Flaky<P> {
    pub inner: P,
    pub failures: Mutex<u32>,
}

#[async_trait]
impl<P: Publisher> Publisher for Flaky<P> {
    async fn publish(&self, events: &[Envelope]) -> Result<(), panda_bus::Error> {
        {
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return Err(panda_bus::Error::Timeout { operation: "test outage" });
            }
        }
        self.inner.publish(events).await
    }
}

/// A publisher that only records what it was given, for counting duplicates.
#[derive(Default)]
pub struct Tally {
    pub published: Mutex<Vec<Uuid>>,
}

#[async_trait]
impl Publisher for Tally {
    async fn publish(&self, events: &[Envelope]) -> Result<(), panda_bus::Error> {
        self.published.lock().unwrap().extend(events.iter().map(|e| e.event_id));
        Ok(())
    }
}

/// The databases.
#[derive(Debug, Clone, Copy)]
pub enum Database {
    Sqlite,
    Postgres,
}

/// A migrator with only the bus's migrations, as a service would list them.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        panda_bus::migration::migrations()
    }
}

/// A fresh, migrated database; keep the `TestDb` alive as long as the connection.
pub async fn database(kind: Database) -> (TestDb, DatabaseConnection) {
    let test_db = match kind {
        Database::Sqlite => TestDb::sqlite_temp(),
        Database::Postgres => TestDb::postgres_from_env().await,
    };
    let db = panda_db::connect_and_migrate::<Migrator>(&test_db.url, Some(8)).await.expect("migrated test database");
    (test_db, db)
}
