//! The bus's errors and their gRPC codes.

use panda_runtime::{ErrorCode, ServiceError};

/// `Result` with the bus's [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A bus failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration parses but cannot work.
    #[error("invalid bus configuration: {problems}")]
    InvalidConfig {
        /// Every problem found, joined with "; ".
        problems: String,
    },
    /// A queue name, routing key or pattern AMQP cannot carry.
    #[error("{what} {name:?} is not allowed: {reason}")]
    InvalidName {
        /// What the name is for ("queue", "routing key", "binding").
        what: &'static str,
        /// The name.
        name: String,
        /// What is allowed.
        reason: &'static str,
    },
    /// The broker does not accept connections.
    #[error("cannot connect to the message broker at {url}")]
    Connect {
        /// The URL, password hidden.
        url: String,
        /// The client's error.
        #[source]
        source: lapin::Error,
    },
    /// A broker operation failed, usually because the connection dropped.
    #[error("message broker operation {operation} failed")]
    Broker {
        /// The AMQP operation.
        operation: &'static str,
        /// The client's error.
        #[source]
        source: lapin::Error,
    },
    /// The broker did not answer in time.
    #[error("message broker operation {operation} timed out")]
    Timeout {
        /// The AMQP operation.
        operation: &'static str,
    },
    /// The broker refused to take responsibility for an event (publisher confirm nack).
    #[error("the message broker refused event {event_id}")]
    Nacked {
        /// The refused event.
        event_id: uuid::Uuid,
    },
    /// A publish was not confirmed although confirms are on: a bug.
    #[error("event {event_id} was published without a publisher confirm")]
    Unconfirmed {
        /// The event.
        event_id: uuid::Uuid,
    },
    /// An event's body is not the message the consumer expected.
    #[error("event {event_id} ({routing_key}) does not decode as {message_type}")]
    Decode {
        /// The event.
        event_id: uuid::Uuid,
        /// Its routing key.
        routing_key: String,
        /// The Rust type asked for.
        message_type: &'static str,
        /// The protobuf error.
        #[source]
        source: prost::DecodeError,
    },
    /// An outbox database operation failed.
    #[error("outbox database operation failed")]
    Database(#[from] sea_orm::DbErr),
}

impl ServiceError for Error {
    fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidConfig { .. } | Error::InvalidName { .. } => ErrorCode::InvalidArgument,
            Error::Connect { .. } | Error::Broker { .. } | Error::Timeout { .. } | Error::Nacked { .. } => {
                ErrorCode::Unavailable
            }
            Error::Unconfirmed { .. } | Error::Decode { .. } => ErrorCode::Internal,
            Error::Database(error) => database_code(error),
        }
    }
}

/// A lost or exhausted connection is an outage to retry; anything else is a bug.
fn database_code(error: &sea_orm::DbErr) -> ErrorCode {
    match error {
        sea_orm::DbErr::Conn(_) | sea_orm::DbErr::ConnectionAcquire(_) => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_unavailable_and_bugs_internal() {
        let id = uuid::Uuid::nil();
        assert_eq!(Error::Timeout { operation: "basic.publish" }.code(), ErrorCode::Unavailable);
        assert_eq!(Error::Nacked { event_id: id }.code(), ErrorCode::Unavailable);
        assert_eq!(Error::Unconfirmed { event_id: id }.code(), ErrorCode::Internal);
        assert_eq!(Error::Database(sea_orm::DbErr::Custom("x".into())).code(), ErrorCode::Internal);
        assert_eq!(Error::InvalidConfig { problems: "p".into() }.code(), ErrorCode::InvalidArgument);
    }
}
