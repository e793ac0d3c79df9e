//! Why the pilot stopped early. Job failures are not errors here: they are reported to the server
//! as a failed job with a pilot error code (see `error_codes`), and the pilot moves on.

use std::path::PathBuf;
use std::time::Duration;

/// A reason the pilot cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Config values that parse but cannot work.
    #[error("invalid pilot configuration: {}", .0.join("; "))]
    InvalidConfig(Vec<String>),
    /// The server URL does not parse.
    #[error("cannot use the server URL")]
    ServerUrl(#[source] panda_client::Error),
    /// The server refused GetJob with an error a retry will not fix (unknown queue, bad
    /// credentials, a bug).
    #[error("GetJob for queue {queue:?} was refused")]
    GetJob {
        /// The queue asked for.
        queue: String,
        /// The server's answer.
        #[source]
        source: tonic::Status,
    },
    /// No update (or job request) reached the server for `server_deadline`; the payload, if any,
    /// was killed.
    #[error("no successful server call for {elapsed:?} (pilot.server_deadline = {limit:?}); giving up")]
    ServerUnreachable {
        /// Time since the last successful call.
        elapsed: Duration,
        /// The configured limit.
        limit: Duration,
        /// The last failure.
        #[source]
        last: tonic::Status,
    },
    /// A directory the pilot must work in cannot be created.
    #[error("cannot create work directory {}", path.display())]
    WorkDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The job file (`--job-file`, push mode) cannot be read or is not a job file.
    #[error("cannot use the job file {}: {reason}", path.display())]
    JobFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Result with the pilot's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
