//! An [`Envelope`] as AMQP message properties, and back.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use uuid::Uuid;

use crate::Envelope;

/// The exact `occurred_at` (RFC 3339, nanoseconds): the AMQP `timestamp` has whole seconds only.
const OCCURRED_AT: &str = "panda-occurred-at";
/// The original routing key, once the message was re-published straight to a queue (a retry or a
/// dead letter), where the delivery's own routing key is the queue name.
const ROUTING_KEY: &str = "panda-routing-key";
/// The number of the next delivery (absent: the first). Only retries raise it.
const DELIVERY: &str = "panda-delivery";
/// Why a dead-lettered message was given up on.
const DEAD_LETTER_REASON: &str = "panda-dead-letter-reason";

/// AMQP `delivery_mode` 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

/// The properties of a freshly published event.
pub(super) fn properties(event: &Envelope) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        OCCURRED_AT.into(),
        AMQPValue::LongString(event.occurred_at.to_rfc3339_opts(SecondsFormat::Nanos, true).into()),
    );
    BasicProperties::default()
        .with_message_id(event.event_id.hyphenated().to_string().into())
        .with_timestamp(u64::try_from(event.occurred_at.timestamp()).unwrap_or(0))
        .with_delivery_mode(PERSISTENT)
        .with_content_type("application/x-protobuf".into())
        .with_headers(headers)
}

/// The event a delivery carries and the number of this delivery (from 1), or why it is not one of
/// ours (it cannot be handled, so it is dead-lettered).
pub(super) fn received(
    routing_key: &str,
    properties: &BasicProperties,
    data: &[u8],
) -> Result<(Envelope, u32), String> {
    let message_id = properties.message_id().as_ref().ok_or("the message has no message_id (event id)")?;
    let event_id = Uuid::parse_str(message_id.as_str())
        .map_err(|_| format!("message_id {:?} is not an event id (a UUID)", message_id.as_str()))?;
    let headers = properties.headers().as_ref();
    let routing_key = headers.and_then(|h| text(h, ROUTING_KEY)).unwrap_or(routing_key).to_owned();
    let occurred_at = headers
        .and_then(|h| text(h, OCCURRED_AT))
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| {
            properties.timestamp().and_then(|s| i64::try_from(s).ok()).and_then(|s| DateTime::from_timestamp(s, 0))
        })
        .unwrap_or_else(Utc::now);
    let delivery = headers.and_then(|h| number(h, DELIVERY)).unwrap_or(1).max(1);
    Ok((Envelope { event_id, routing_key, occurred_at, body: Bytes::copy_from_slice(data) }, delivery))
}

/// The properties for putting a delivered message back on `queue` for delivery number `delivery`.
pub(super) fn for_retry(routing_key: &str, properties: &BasicProperties, delivery: u32) -> BasicProperties {
    let mut headers = redirected_headers(routing_key, properties);
    headers.insert(DELIVERY.into(), AMQPValue::LongLongInt(i64::from(delivery)));
    properties.clone().with_headers(headers.into())
}

/// The properties for moving a delivered message to the dead-letter queue.
pub(super) fn for_dead_letter(routing_key: &str, properties: &BasicProperties, reason: &str) -> BasicProperties {
    let mut headers = redirected_headers(routing_key, properties);
    headers.insert(DEAD_LETTER_REASON.into(), AMQPValue::LongString(reason.into()));
    // Whoever replays events from the dead-letter queue gives them a fresh set of attempts.
    headers.remove(DELIVERY);
    properties.clone().with_headers(headers.into()).with_delivery_mode(PERSISTENT)
}

/// The original routing key of a delivery: the header if it was redirected before, else its own.
pub(super) fn original_routing_key<'a>(routing_key: &'a str, properties: &'a BasicProperties) -> &'a str {
    properties.headers().as_ref().and_then(|h| text(h, ROUTING_KEY)).unwrap_or(routing_key)
}

/// The headers with the original routing key recorded, since publishing straight to a queue
/// replaces the routing key by the queue name.
fn redirected_headers(routing_key: &str, properties: &BasicProperties) -> BTreeMap<ShortString, AMQPValue> {
    let mut headers = properties.headers().as_ref().map(|h| h.inner().clone()).unwrap_or_default();
    headers.entry(ROUTING_KEY.into()).or_insert_with(|| AMQPValue::LongString(routing_key.into()));
    headers
}

fn text<'a>(headers: &'a FieldTable, key: &str) -> Option<&'a str> {
    match headers.inner().get(key)? {
        AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok(),
        AMQPValue::ShortString(value) => Some(value.as_str()),
        _ => None,
    }
}

fn number(headers: &FieldTable, key: &str) -> Option<u32> {
    let value = match headers.inner().get(key)? {
        AMQPValue::LongLongInt(value) => *value,
        AMQPValue::LongInt(value) => i64::from(*value),
        AMQPValue::LongUInt(value) => i64::from(*value),
        AMQPValue::ShortInt(value) => i64::from(*value),
        AMQPValue::ShortUInt(value) => i64::from(*value),
        _ => return None,
    };
    u32::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Envelope {
        let mut event = Envelope::new("job.finished", &());
        event.body = Bytes::from_static(b"\x08\x01");
        event
    }

    #[test]
    fn an_event_round_trips_through_its_properties() {
        let event = event();
        let properties = properties(&event);
        assert_eq!(properties.delivery_mode(), &Some(PERSISTENT));
        assert_eq!(properties.timestamp(), &Some(u64::try_from(event.occurred_at.timestamp()).unwrap()));
        let (back, delivery) = received("job.finished", &properties, &event.body).unwrap();
        assert_eq!(back, event); // including the sub-second time
        assert_eq!(delivery, 1);
    }

    #[test]
    fn a_retry_keeps_the_routing_key_and_counts() {
        let event = event();
        let first = properties(&event);
        let second = for_retry("job.finished", &first, 2);
        // Re-published to the queue itself, the delivery's routing key is the queue name.
        let (back, delivery) = received("panda.server.jobs", &second, &event.body).unwrap();
        assert_eq!((back.routing_key.as_str(), delivery), ("job.finished", 2));
        let third = for_retry("panda.server.jobs", &second, 3);
        let (back, delivery) = received("panda.server.jobs", &third, &event.body).unwrap();
        assert_eq!((back.routing_key.as_str(), delivery), ("job.finished", 3));
        assert_eq!(original_routing_key("panda.server.jobs", &third), "job.finished");
    }

    #[test]
    fn a_dead_letter_says_why_and_starts_afresh() {
        let event = event();
        let retried = for_retry("job.finished", &properties(&event), 3);
        let dead = for_dead_letter("panda.server.jobs", &retried, "gave up");
        let headers = dead.headers().clone().unwrap();
        assert_eq!(text(&headers, DEAD_LETTER_REASON), Some("gave up"));
        let (back, delivery) = received("panda.server.jobs.dead", &dead, &event.body).unwrap();
        assert_eq!((back.routing_key.as_str(), delivery, back.event_id), ("job.finished", 1, event.event_id));
    }

    #[test]
    fn foreign_messages_are_refused_with_a_reason() {
        let reason = received("x", &BasicProperties::default(), b"").unwrap_err();
        assert!(reason.contains("message_id"), "{reason}");
        let reason = received("x", &BasicProperties::default().with_message_id("42".into()), b"").unwrap_err();
        assert!(reason.contains("\"42\""), "{reason}");
    }
}
