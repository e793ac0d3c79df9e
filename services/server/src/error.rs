//! The server's errors, each mapped to one gRPC code.

use panda_runtime::{ErrorCode, ServiceError};
use panda_types::{FieldError, JobId, JobStatus, TaskId, TaskStatus};

/// Result of server operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more request fields are invalid.
    #[error("invalid request: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidArgument(Vec<FieldError>),
    /// No such task.
    #[error("task {task_id} not found")]
    TaskNotFound {
        /// The ID asked for.
        task_id: TaskId,
    },
    /// No such job.
    #[error("job {job_id} not found")]
    JobNotFound {
        /// The ID asked for.
        job_id: JobId,
    },
    /// No such dataset.
    #[error("dataset {name:?} not found")]
    DatasetNotFound {
        /// The name asked for.
        name: String,
    },
    /// An output dataset name is already used.
    #[error("task.output_dataset {name:?} is already produced by task {task_id}; choose another name")]
    DatasetTaken {
        /// The name.
        name: String,
        /// The task that owns it.
        task_id: TaskId,
    },
    /// The task's state does not allow the request.
    #[error("task {task_id} is {status}; {action} needs {allowed}")]
    TaskState {
        /// The task.
        task_id: TaskId,
        /// Its state.
        status: TaskStatus,
        /// What was asked.
        action: &'static str,
        /// The states that allow it.
        allowed: &'static str,
    },
    /// The caller does not hold the job's current lease.
    #[error(
        "job {job_id} is not held by this pilot (lease token does not match the current dispatch); stop working on it"
    )]
    NotHolder {
        /// The job.
        job_id: JobId,
    },
    /// A log append for a job that has ended (pilots send all output before the final report,
    /// so followers see a job's whole log when it ends).
    #[error("job {job_id} is {status}: its log is closed")]
    LogClosed {
        /// The job.
        job_id: JobId,
        /// Its final state.
        status: JobStatus,
    },
    /// A job transition the state machine refuses.
    #[error("job {job_id} is {from}; it cannot move to {to}")]
    JobTransition {
        /// The job.
        job_id: JobId,
        /// Current state.
        from: JobStatus,
        /// Asked state.
        to: JobStatus,
    },
    /// The task is not a Function-as-a-Task work.
    #[error("task {task_id} is not a work (submit functions with FunctionService.SubmitWork)")]
    WorkNotFound {
        /// The task asked for.
        task_id: TaskId,
    },
    /// A work has no call with this index.
    #[error("work {task_id} has no call {index} (calls are numbered 1..={n_calls})")]
    CallNotFound {
        /// The work's task.
        task_id: TaskId,
        /// The index asked for.
        index: u32,
        /// How many calls it has.
        n_calls: u32,
    },
    /// A result the job may not store.
    #[error("result of job {job_id} refused: {reason}")]
    ResultRefused {
        /// The job.
        job_id: JobId,
        /// Why.
        reason: String,
    },
    /// The server is shutting down.
    #[error("the server is shutting down ({0}); retry against another replica or later")]
    ShuttingDown(#[from] crate::group_commit::Stopped),
    /// No such archive in the cache.
    #[error("archive {sha256} is not in the cache")]
    ArchiveNotFound {
        /// The digest asked for.
        sha256: String,
    },
    /// The cache's files could not be read or written.
    #[error("cache storage failed: {context}")]
    Storage {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A task transition this actor may not cause.
    #[error("task {task_id} is {from}; {actor:?} may not move it to {to}")]
    TaskActor {
        /// The task.
        task_id: TaskId,
        /// Current state.
        from: TaskStatus,
        /// Asked state.
        to: TaskStatus,
        /// Who asked.
        actor: panda_types::TaskActor,
    },
    /// A job transition this actor may not cause.
    #[error("job {job_id} is {from}; {actor:?} may not move it to {to}")]
    JobActor {
        /// The job.
        job_id: JobId,
        /// Current state.
        from: JobStatus,
        /// Asked state.
        to: JobStatus,
        /// Who asked.
        actor: panda_types::JobActor,
    },
    /// A dataset of that name is already in the catalog.
    #[error("dataset {name:?} already exists")]
    DatasetExists {
        /// The name.
        name: String,
    },
    /// No brokerage decision was recorded for the task (yet).
    #[error("task {task_id} has no brokerage decision yet (JEDI has not brokered it)")]
    BrokerageNotFound {
        /// The task.
        task_id: TaskId,
    },
    /// The database failed.
    #[error("database operation failed")]
    Db(#[from] sea_orm::DbErr),
    /// Stored data does not parse (a bug or manual edits).
    #[error("stored {what} is corrupt: {detail}")]
    Corrupt {
        /// Which record.
        what: String,
        /// Why.
        detail: String,
    },
}

impl Error {
    /// A single invalid field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument(vec![FieldError::new(field, message)])
    }
}

impl ServiceError for Error {
    fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Error::TaskNotFound { .. }
            | Error::JobNotFound { .. }
            | Error::DatasetNotFound { .. }
            | Error::ArchiveNotFound { .. }
            | Error::BrokerageNotFound { .. }
            | Error::WorkNotFound { .. }
            | Error::CallNotFound { .. } => ErrorCode::NotFound,
            Error::DatasetTaken { .. } | Error::DatasetExists { .. } => ErrorCode::AlreadyExists,
            Error::TaskState { .. }
            | Error::NotHolder { .. }
            | Error::JobTransition { .. }
            | Error::JobActor { .. }
            | Error::TaskActor { .. }
            | Error::LogClosed { .. }
            | Error::ResultRefused { .. } => ErrorCode::FailedPrecondition,
            Error::ShuttingDown(_) => ErrorCode::Unavailable,
            Error::Db(error) => db_code(error),
            Error::Corrupt { .. } | Error::Storage { .. } => ErrorCode::Internal,
        }
    }
}

/// Connection problems are worth retrying; anything else is a bug.
pub(crate) fn db_code(error: &sea_orm::DbErr) -> ErrorCode {
    match error {
        sea_orm::DbErr::Conn(_) | sea_orm::DbErr::ConnectionAcquire(_) => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        panda_runtime::to_status(&error)
    }
}
