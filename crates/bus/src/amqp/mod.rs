//! The RabbitMQ backend (lapin).
//!
//! Topology: one durable topic exchange (`BusConfig::exchange`); per subscription a durable quorum
//! queue bound to its patterns, and `<queue>.dead` for the events given up on. Every message is
//! persistent and carries the event ID as `message_id`, the time as `timestamp` (plus the exact
//! time in a header) and the routing key.
//!
//! Publishing uses one connection with a confirm-mode channel, kept open between publishes and
//! replaced on the next publish after it broke, so a caller such as the outbox relay just retries
//! with backoff. Each consumer has its own connection (RabbitMQ throttles publishing connections,
//! which must not stall consumers) and reconnects with backoff by itself; see `consume`.

mod consume;
mod message;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{BusConfig, Envelope, Error, Handler, Publisher, Subscription, topic};

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one broker round trip (a declaration, a publisher confirm, an ack) may take.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The RabbitMQ bus. Clones share the publishing connection.
#[derive(Clone)]
pub struct AmqpBus {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    config: BusConfig,
    /// The publishing link; `None` after it broke, until the next publish opens a new one.
    publisher: tokio::sync::Mutex<Option<Arc<Link>>>,
}

/// A connection with one channel in publisher-confirm mode.
struct Link {
    connection: Connection,
    channel: Channel,
}

impl AmqpBus {
    /// Connects to the broker at `url` and declares the exchange.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`], or [`Error::Connect`], [`Error::Timeout`] or [`Error::Broker`]
    /// when the broker does not answer or refuses the declaration.
    pub async fn connect(url: &str, config: BusConfig) -> Result<Self, Error> {
        config.validate()?;
        let link = Link::open(url, "panda-bus publisher", &config.exchange).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                url: url.to_owned(),
                config,
                publisher: tokio::sync::Mutex::new(Some(Arc::new(link))),
            }),
        })
    }

    /// The exchange events are published to.
    pub fn exchange(&self) -> &str {
        &self.inner.config.exchange
    }

    /// Deletes the given queues (and their `.dead` queues) and the exchange: retires a deployment
    /// or a test run. Events still in those queues are lost, so only call it when none matter.
    ///
    /// # Errors
    /// The broker does not answer or refuses.
    pub async fn remove(&self, queues: &[String]) -> Result<(), Error> {
        let link = Link::open(&self.inner.url, "panda-bus admin", &self.inner.config.exchange).await?;
        for queue in queues {
            for name in [queue.clone(), format!("{queue}.dead")] {
                operation(
                    "queue.delete",
                    link.channel.queue_delete(short("queue", &name)?, QueueDeleteOptions::default()),
                )
                .await?;
            }
        }
        operation(
            "exchange.delete",
            link.channel.exchange_delete(short("exchange", self.exchange())?, ExchangeDeleteOptions::default()),
        )
        .await?;
        let _ = link.connection.close(200, "done".into()).await;
        Ok(())
    }

    /// See [`Bus::consume`](crate::Bus::consume).
    ///
    /// # Errors
    /// As [`Bus::consume`](crate::Bus::consume).
    pub async fn consume(
        &self,
        sub: Subscription,
        handler: Arc<dyn Handler>,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, Error> {
        topic::validate_subscription(&sub)?;
        // Declared here, before returning, so that no event published afterwards is missed.
        let session = consume::Session::open(&self.inner, &sub).await?;
        let span = tracing::info_span!("consume", queue = %sub.queue, backend = "amqp");
        let bus = self.clone();
        Ok(tokio::spawn(consume::run(bus, sub, handler, shutdown, session).instrument(span)))
    }

    /// The open publishing link, or a new one if it broke.
    async fn publisher(&self) -> Result<Arc<Link>, Error> {
        let mut current = self.inner.publisher.lock().await;
        if let Some(link) = current.as_ref()
            && link.is_open()
        {
            return Ok(link.clone());
        }
        *current = None;
        let link = Arc::new(Link::open(&self.inner.url, "panda-bus publisher", &self.inner.config.exchange).await?);
        *current = Some(link.clone());
        Ok(link)
    }

    /// Drops a link that failed, unless another caller already replaced it.
    async fn discard(&self, link: &Arc<Link>) {
        let mut current = self.inner.publisher.lock().await;
        if current.as_ref().is_some_and(|open| Arc::ptr_eq(open, link)) {
            *current = None;
        }
    }
}

#[async_trait]
impl Publisher for AmqpBus {
    async fn publish(&self, events: &[Envelope]) -> Result<(), Error> {
        if events.is_empty() {
            return Ok(());
        }
        let link = self.publisher().await?;
        let result = publish_events(&link.channel, &self.inner.config.exchange, events).await;
        if matches!(result, Err(Error::Broker { .. } | Error::Timeout { .. })) {
            self.discard(&link).await;
        }
        result
    }
}

/// Publishes every event, then waits for all their confirms: pipelining keeps a batch at about one
/// round trip instead of one per event.
async fn publish_events(channel: &Channel, exchange: &str, events: &[Envelope]) -> Result<(), Error> {
    let exchange = short("exchange", exchange)?;
    let mut pending = Vec::with_capacity(events.len());
    for event in events {
        let routing_key = short("routing key", &event.routing_key)?;
        let properties = message::properties(event);
        let confirm = operation(
            "basic.publish",
            channel.basic_publish(
                exchange.clone(),
                routing_key,
                BasicPublishOptions::default(),
                &event.body,
                properties,
            ),
        )
        .await?;
        pending.push((event.event_id, confirm));
    }
    for (event_id, confirm) in pending {
        confirmed(operation("publisher confirm", confirm).await?, event_id, false)?;
    }
    Ok(())
}

/// Checks a publisher confirm. With `mandatory`, a returned (unroutable) message is an error too.
fn confirmed(confirmation: Confirmation, event_id: uuid::Uuid, mandatory: bool) -> Result<(), Error> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) if !mandatory => Ok(()),
        Confirmation::Ack(Some(_)) | Confirmation::Nack(_) => Err(Error::Nacked { event_id }),
        Confirmation::NotRequested => Err(Error::Unconfirmed { event_id }),
    }
}

impl Link {
    /// Connects, opens a confirm-mode channel and declares the exchange.
    async fn open(url: &str, name: &str, exchange: &str) -> Result<Self, Error> {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let connection = match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties)).await {
            Err(_) => return Err(Error::Timeout { operation: "connection.open" }),
            Ok(Err(source)) => return Err(Error::Connect { url: panda_db::redact(url), source }),
            Ok(Ok(connection)) => connection,
        };
        let channel = operation("channel.open", connection.create_channel()).await?;
        operation("confirm.select", channel.confirm_select(ConfirmSelectOptions::default())).await?;
        let options = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
        operation(
            "exchange.declare",
            channel.exchange_declare(short("exchange", exchange)?, ExchangeKind::Topic, options, FieldTable::default()),
        )
        .await?;
        Ok(Self { connection, channel })
    }

    fn is_open(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }
}

/// Declares a queue that lives only as long as this connection: exclusive, auto-delete, classic.
async fn declare_transient_queue(channel: &Channel, queue: &str) -> Result<(), Error> {
    let options =
        QueueDeclareOptions { durable: false, exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() };
    operation("queue.declare", channel.queue_declare(short("queue", queue)?, options, FieldTable::default())).await?;
    Ok(())
}

/// Declares a durable quorum queue: replicated on a cluster, and it keeps its messages while no
/// consumer runs.
async fn declare_queue(channel: &Channel, queue: &str) -> Result<(), Error> {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    operation("queue.declare", channel.queue_declare(short("queue", queue)?, options, arguments)).await?;
    Ok(())
}

/// Runs one broker operation with a deadline.
async fn operation<T>(operation: &'static str, future: impl Future<Output = lapin::Result<T>>) -> Result<T, Error> {
    match tokio::time::timeout(OPERATION_TIMEOUT, future).await {
        Err(_) => Err(Error::Timeout { operation }),
        Ok(Err(source)) => Err(Error::Broker { operation, source }),
        Ok(Ok(value)) => Ok(value),
    }
}

/// An AMQP short string; the checked constructor, because the `From` impls panic past 255 bytes.
fn short(what: &'static str, value: &str) -> Result<ShortString, Error> {
    ShortString::try_new(value).map_err(|_| Error::InvalidName {
        what,
        name: value.to_owned(),
        reason: "at most 255 bytes",
    })
}
