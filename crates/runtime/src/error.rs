//! One mapping from domain errors to gRPC statuses. Each crate's `Error` implements
//! [`ServiceError`] with an exhaustive `match`; [`to_status`] is the only place a `tonic::Status` is built
//! from an error, and the only place INTERNAL and UNAVAILABLE errors are logged.

use std::error::Error as StdError;

/// The restricted set of codes panda services answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request is malformed.
    InvalidArgument,
    /// The ID does not exist.
    NotFound,
    /// A create repeats a unique name.
    AlreadyExists,
    /// Right request, wrong state.
    FailedPrecondition,
    /// A dependency (DB, broker, another service) is down; retry with backoff.
    Unavailable,
    /// The caller may not do this.
    PermissionDenied,
    /// Bugs and broken invariants.
    Internal,
}

/// An error that knows its gRPC code.
pub trait ServiceError: StdError {
    /// The code a client sees.
    fn code(&self) -> ErrorCode;
}

/// Builds the gRPC status for an error: the message is the error's own text for client errors;
/// INTERNAL hides details behind a reference that is logged with the whole source chain.
pub fn to_status(error: &dyn ServiceError) -> tonic::Status {
    let message = error.to_string();
    match error.code() {
        ErrorCode::InvalidArgument => tonic::Status::invalid_argument(message),
        ErrorCode::NotFound => tonic::Status::not_found(message),
        ErrorCode::AlreadyExists => tonic::Status::already_exists(message),
        ErrorCode::FailedPrecondition => tonic::Status::failed_precondition(message),
        ErrorCode::PermissionDenied => tonic::Status::permission_denied(message),
        ErrorCode::Unavailable => {
            tracing::warn!(error = %chain(error), "request failed: dependency unavailable");
            tonic::Status::unavailable(format!("{message}; retry later"))
        }
        ErrorCode::Internal => {
            let reference = format!("{:08x}", rand_reference());
            tracing::error!(error = %chain(error), reference, "internal error");
            tonic::Status::internal(format!("internal error (reference {reference})"))
        }
    }
}

/// The error and its sources, joined with ": ".
pub fn chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn rand_reference() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos() ^ (d.as_secs() as u32)).unwrap_or(0)
}
