//! JEDI's errors.

use panda_runtime::{ErrorCode, ServiceError};
use panda_types::TaskId;

/// What can go wrong while generating a task's jobs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the server failed.
    #[error("server call {call} failed for task {task_id}: {status}")]
    Server {
        /// Which call.
        call: &'static str,
        /// The task.
        task_id: TaskId,
        /// What the server said.
        status: tonic::Status,
    },
    /// The server sent something that does not convert.
    #[error("server answered {call} for task {task_id} with invalid data: {detail}")]
    Protocol {
        /// Which call.
        call: &'static str,
        /// The task.
        task_id: TaskId,
        /// What was wrong.
        detail: String,
    },
}

impl Error {
    /// Worth trying again later (the server or its database is down).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Server { status, .. } => panda_client::is_transient(status, true),
            Error::Protocol { .. } => false,
        }
    }
}

impl ServiceError for Error {
    fn code(&self) -> ErrorCode {
        match self {
            Error::Server { .. } if self.is_transient() => ErrorCode::Unavailable,
            Error::Server { .. } | Error::Protocol { .. } => ErrorCode::Internal,
        }
    }
}
