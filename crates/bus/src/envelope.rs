//! [`Envelope`]: one event as it travels through the outbox and the bus.

use bytes::Bytes;
use chrono::{DateTime, SubsecRound, Utc};
use uuid::Uuid;

use crate::Error;

/// An event: a protobuf message (a `panda.events.v1` type) with its identity and topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Unique per event, kept through the outbox, retries and redeliveries: consumers
    /// deduplicate on it (AMQP `message_id`).
    pub event_id: Uuid,
    /// The topic, `<entity>.<state>` such as `job.finished`.
    pub routing_key: String,
    /// When the state change happened (the publisher's clock). [`Envelope::new`] keeps
    /// microseconds, the precision PostgreSQL stores, so an event reads back from the outbox
    /// exactly as it was written.
    pub occurred_at: DateTime<Utc>,
    /// The encoded protobuf message.
    pub body: Bytes,
}

impl Envelope {
    /// A new event with a fresh ID, stamped now (to the microsecond).
    pub fn new(routing_key: impl Into<String>, body: &impl prost::Message) -> Self {
        Self {
            event_id: Uuid::new_v4(),
            routing_key: routing_key.into(),
            occurred_at: Utc::now().trunc_subsecs(6),
            body: Bytes::from(body.encode_to_vec()),
        }
    }

    /// Decodes the body as `M`.
    ///
    /// # Errors
    /// [`Error::Decode`] when the body is not an `M`; the event is poison, so a handler usually
    /// answers [`HandleError::Reject`](crate::HandleError::Reject).
    pub fn decode<M: prost::Message + Default>(&self) -> Result<M, Error> {
        M::decode(self.body.clone()).map_err(|source| Error::Decode {
            event_id: self.event_id,
            routing_key: self.routing_key.clone(),
            message_type: std::any::type_name::<M>(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Ping {
        #[prost(string, tag = "1")]
        text: String,
        #[prost(int64, tag = "2")]
        number: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Other {
        #[prost(bool, tag = "1")]
        flag: bool,
    }

    #[test]
    fn round_trips_the_body() {
        let ping = Ping { text: "hello".into(), number: 42 };
        let envelope = Envelope::new("job.finished", &ping);
        assert_eq!(envelope.routing_key, "job.finished");
        assert_eq!(envelope.decode::<Ping>().unwrap(), ping);
    }

    #[test]
    fn the_time_is_kept_to_the_microsecond() {
        let envelope = Envelope::new("a", &Other::default());
        assert_eq!(envelope.occurred_at.timestamp_subsec_nanos() % 1000, 0);
    }

    #[test]
    fn every_envelope_gets_its_own_id() {
        let ping = Ping::default();
        assert_ne!(Envelope::new("a", &ping).event_id, Envelope::new("a", &ping).event_id);
    }

    #[test]
    fn decode_error_names_the_event_and_type() {
        let mut envelope = Envelope::new("task.done", &Other { flag: true });
        envelope.body = Bytes::from_static(&[0xff, 0xff, 0xff]);
        let error = envelope.decode::<Ping>().unwrap_err();
        let message = error.to_string();
        assert!(message.contains(&envelope.event_id.to_string()) && message.contains("Ping"), "{message}");
    }
}
