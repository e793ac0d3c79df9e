//! The AMQP consume loop: one connection per consumer, events handled one at a time, acked after
//! the handler succeeded, and a new connection (with the topology declared again) after the old
//! one dropped.
//!
//! A retry re-publishes the message to the tail of its own queue with the delivery number raised,
//! waits for the confirm, and only then acks the original: later events keep flowing meanwhile,
//! and a crash in between gives a duplicate, never a loss. A dead letter goes the same way to
//! `<queue>.dead`, which keeps the message for an operator (the broker's own dead-lettering could
//! not log the event ID).

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueBindOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, Consumer};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{AmqpBus, Inner, Link, confirmed, declare_queue, declare_transient_queue, message, operation, short};
use crate::delivery::{self, Outcome};
use crate::{Error, Handler, Subscription};

/// How long a graceful close may take before the connection is just dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A consumer's connection, with its queue declared, bound and being consumed.
pub(super) struct Session {
    connection: Connection,
    channel: Channel,
    consumer: Consumer,
}

impl Session {
    /// Connects and declares the exchange, the queue and its bindings, then starts consuming.
    pub(super) async fn open(bus: &Inner, sub: &Subscription) -> Result<Self, Error> {
        let Link { connection, channel } =
            Link::open(&bus.url, &format!("panda-bus consumer {}", sub.queue), &bus.config.exchange).await?;
        let queue = short("queue", &sub.queue)?;
        let exchange = short("exchange", &bus.config.exchange)?;
        if sub.transient {
            declare_transient_queue(&channel, &sub.queue).await?;
        } else {
            declare_queue(&channel, &sub.queue).await?;
        }
        for binding in &sub.bindings {
            let pattern = short("binding", binding)?;
            operation(
                "queue.bind",
                channel.queue_bind(
                    queue.clone(),
                    exchange.clone(),
                    pattern,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await?;
        }
        // Before basic.consume, or the broker would push the whole queue at once.
        operation("basic.qos", channel.basic_qos(bus.config.prefetch, BasicQosOptions::default())).await?;
        // An empty tag lets the broker pick a unique one; no_ack stays false (manual acks).
        let consumer = operation(
            "basic.consume",
            channel.basic_consume(queue, "".into(), BasicConsumeOptions::default(), FieldTable::default()),
        )
        .await?;
        Ok(Self { connection, channel, consumer })
    }
}

/// Why a session ended.
enum End {
    Shutdown,
    Lost(String),
}

/// Serves `first`, then new sessions whenever one is lost, until `shutdown`.
pub(super) async fn run(
    bus: AmqpBus,
    sub: Subscription,
    handler: Arc<dyn Handler>,
    shutdown: CancellationToken,
    first: Session,
) {
    let mut backoff = reconnect_backoff();
    let mut session = Some(first);
    loop {
        let current = match session.take() {
            Some(current) => current,
            None => {
                // Racing the connect with shutdown is fine: a half-opened connection is just dropped.
                let opened = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return,
                    opened = Session::open(&bus.inner, &sub) => opened,
                };
                match opened {
                    Ok(current) => {
                        tracing::info!("reconnected to the message broker");
                        backoff = reconnect_backoff();
                        current
                    }
                    Err(error) => {
                        let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                        tracing::warn!(error = %panda_runtime::error::chain(&error), retry_in = ?delay, "cannot reach the message broker");
                        if pause(&shutdown, delay).await {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        match serve(&bus, &sub, handler.as_ref(), &shutdown, current).await {
            End::Shutdown => return,
            End::Lost(reason) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                tracing::warn!(reason, retry_in = ?delay, "lost the message broker connection; reconnecting");
                if pause(&shutdown, delay).await {
                    return;
                }
            }
        }
    }
}

/// Handles deliveries until shutdown or until the connection breaks, then closes the session.
async fn serve(
    bus: &AmqpBus,
    sub: &Subscription,
    handler: &dyn Handler,
    shutdown: &CancellationToken,
    session: Session,
) -> End {
    let Session { connection, channel, mut consumer } = session;
    // Retries waiting for their delay; each still holds its unacknowledged original.
    let mut retries = JoinSet::new();
    let end = loop {
        while retries.try_join_next().is_some() {}
        let next = tokio::select! {
            biased;
            () = shutdown.cancelled() => break End::Shutdown,
            next = consumer.next() => next,
        };
        // Not raced with shutdown: the in-flight event is always finished and settled.
        match next {
            None => break End::Lost("the broker cancelled the consumer (was the queue deleted?)".to_owned()),
            Some(Err(error)) => break End::Lost(error.to_string()),
            Some(Ok(delivery)) => {
                if let Err(error) = process(bus, sub, handler, &channel, delivery, &mut retries).await {
                    break End::Lost(panda_runtime::error::chain(&error));
                }
            }
        }
    };
    // Aborted retries leave their originals unacknowledged, so the close hands them back to the
    // queue (with the delivery number they had), like the events prefetched but not yet handled.
    retries.abort_all();
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "consumer stopped".into())).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, "consumer stopped".into())).await;
    end
}

/// Handles one delivery and settles it. An error means the channel is unusable.
async fn process(
    bus: &AmqpBus,
    sub: &Subscription,
    handler: &dyn Handler,
    channel: &Channel,
    delivery: Delivery,
    retries: &mut JoinSet<()>,
) -> Result<(), Error> {
    let (event, number) = match message::received(delivery.routing_key.as_str(), &delivery.properties, &delivery.data) {
        Ok(received) => received,
        Err(reason) => {
            return dead_letter(channel, &sub.queue, &delivery, &format!("not a panda event: {reason}")).await;
        }
    };
    match delivery::run_handler(handler, &event, &sub.queue, number, bus.inner.config.max_deliveries).await {
        Outcome::Ack => {
            operation("basic.ack", delivery.acker.ack(BasicAckOptions::default())).await?;
        }
        Outcome::Retry { next_delivery, delay } => {
            let (channel, queue, event_id) = (channel.clone(), sub.queue.clone(), event.event_id);
            retries.spawn(async move {
                tokio::time::sleep(delay).await;
                if let Err(error) = retry(&channel, &queue, &delivery, next_delivery, event_id).await {
                    // The original stays unacknowledged; the broker hands it out again once the
                    // broken channel is closed.
                    tracing::warn!(%event_id, error = %panda_runtime::error::chain(&error), "cannot put an event back for a retry");
                }
            });
        }
        Outcome::DeadLetter { reason } => dead_letter(channel, &sub.queue, &delivery, &reason).await?,
    }
    Ok(())
}

/// Re-publishes the message to the tail of `queue` as delivery `next_delivery`, then acks it.
async fn retry(
    channel: &Channel,
    queue: &str,
    delivery: &Delivery,
    next_delivery: u32,
    event_id: uuid::Uuid,
) -> Result<(), Error> {
    let properties = message::for_retry(delivery.routing_key.as_str(), &delivery.properties, next_delivery);
    publish_to_queue(channel, queue, &delivery.data, properties, event_id).await?;
    operation("basic.ack", delivery.acker.ack(BasicAckOptions::default())).await?;
    Ok(())
}

/// Moves the message to `<queue>.dead`, then acks it and logs the event ID.
async fn dead_letter(channel: &Channel, queue: &str, delivery: &Delivery, reason: &str) -> Result<(), Error> {
    let dead = delivery::dead_letter_queue(queue);
    declare_queue(channel, &dead).await?;
    let message_id = delivery.properties.message_id().as_ref().map_or("<none>", |id| id.as_str());
    let event_id = uuid::Uuid::parse_str(message_id).unwrap_or_default();
    let properties = message::for_dead_letter(delivery.routing_key.as_str(), &delivery.properties, reason);
    publish_to_queue(channel, &dead, &delivery.data, properties, event_id).await?;
    operation("basic.ack", delivery.acker.ack(BasicAckOptions::default())).await?;
    let routing_key = message::original_routing_key(delivery.routing_key.as_str(), &delivery.properties);
    delivery::log_dead_letter(message_id, routing_key, queue, reason);
    Ok(())
}

/// Publishes through the default exchange, which routes by queue name, and waits for the confirm.
/// Mandatory, so that a missing queue is an error rather than a silent drop of an event we then ack.
async fn publish_to_queue(
    channel: &Channel,
    queue: &str,
    data: &[u8],
    properties: BasicProperties,
    event_id: uuid::Uuid,
) -> Result<(), Error> {
    let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
    let confirm =
        operation("basic.publish", channel.basic_publish("".into(), short("queue", queue)?, options, data, properties))
            .await?;
    confirmed(operation("publisher confirm", confirm).await?, event_id, true)
}

/// Waits `delay` unless shutdown comes first; true at shutdown.
async fn pause(shutdown: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

fn reconnect_backoff() -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}
