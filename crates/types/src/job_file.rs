//! The job file of push mode: harvester fetches jobs from the server for a worker it is about to
//! submit and writes them here, in the worker's directory; the worker's pilot runs them
//! (`panda-pilot --job-file PATH`) instead of asking the server, and reports on them with their
//! lease tokens as usual. The content is what a pilot gets from `PilotService.GetJob`, as JSON:
//!
//! ```json
//! {
//!   "format": "panda-job-file/1",
//!   "queue": "hpc", "worker_id": "12", "storage_url": "file:///data/storage",
//!   "jobs": [{
//!     "job_id": 7, "task_id": 3, "attempt_nr": 1, "lease_token": "9f2c...",
//!     "command": "echo 1 > out", "environment": {"PANDA_TASK_ID": "3"},
//!     "input_files": [{"lfn": "in.1", "url": "file:///data/storage/in.1", "size_bytes": 5, "checksum": "adler32:..."}],
//!     "output_files": ["out"],
//!     "resources": {"cores": 1, "memory_mb": 2000, "disk_mb": 0, "walltime_seconds": 0},
//!     "heartbeat_interval_seconds": 60, "code_sha256": "",
//!     "container_image": "docker://python:3.11-slim"
//!   }]
//! }
//! ```
//!
//! Readers refuse another `format` and unknown keys (a newer writer must bump the format).
//! `container_image` (optional, written only when set) came later within `panda-job-file/1`:
//! pilots that predate it refuse files naming an image instead of ignoring it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Resources;

/// The `format` value of this version.
pub const JOB_FILE_FORMAT: &str = "panda-job-file/1";

/// The file's name in a worker's directory.
pub const JOB_FILE_NAME: &str = "jobs.json";

/// A job file: the jobs one worker's pilot runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// [`JOB_FILE_FORMAT`].
    pub format: String,
    /// The queue the jobs were fetched for.
    pub queue: String,
    /// The harvester worker they were fetched for.
    pub worker_id: String,
    /// Where outputs go (GetJob's `storage_url`).
    pub storage_url: String,
    /// The jobs, in the order to run them.
    pub jobs: Vec<PushedJob>,
}

/// One job as GetJob hands it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushedJob {
    /// Job ID.
    pub job_id: u64,
    /// Its task.
    pub task_id: u64,
    /// Attempt number.
    pub attempt_nr: u32,
    /// The dispatch's fencing token; every report carries it.
    pub lease_token: String,
    /// Shell command, placeholders filled in.
    pub command: String,
    /// Environment of the payload.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Inputs to stage in.
    #[serde(default)]
    pub input_files: Vec<PushedFile>,
    /// Outputs the payload writes.
    #[serde(default)]
    pub output_files: Vec<String>,
    /// What the job needs.
    #[serde(default)]
    pub resources: Resources,
    /// Heartbeat interval the server asks for (0: the pilot's default).
    #[serde(default)]
    pub heartbeat_interval_seconds: u32,
    /// Code archive to unpack into the job directory (empty: none).
    #[serde(default)]
    pub code_sha256: String,
    /// The job's index in its task (a Function-as-a-Task job reads the call of this index).
    #[serde(default)]
    pub job_index: u32,
    /// Container image the payload runs in (empty: none). Written only when set, so that a
    /// pilot that predates images (it refuses unknown keys) refuses such a job file rather than
    /// running its jobs outside their image.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_image: String,
}

/// An input file and where to copy it from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushedFile {
    /// Logical file name.
    pub lfn: String,
    /// Where it is.
    pub url: String,
    /// Size in bytes (0: unknown).
    #[serde(default)]
    pub size_bytes: u64,
    /// `adler32:...`, `md5:...` or `sha256:...` (empty: unknown).
    #[serde(default)]
    pub checksum: String,
}

/// Why a job file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobFileError {
    /// Another format version.
    #[error("format {found:?} is not {JOB_FILE_FORMAT:?}")]
    Format {
        /// What the file says.
        found: String,
    },
    /// A job without its lease.
    #[error("jobs[{index}] (job {job_id}): lease_token is empty")]
    NoLease {
        /// Position in `jobs`.
        index: usize,
        /// The job.
        job_id: u64,
    },
}

impl JobFile {
    /// A file of the current format.
    pub fn new(queue: String, worker_id: String, storage_url: String, jobs: Vec<PushedJob>) -> Self {
        Self { format: JOB_FILE_FORMAT.to_owned(), queue, worker_id, storage_url, jobs }
    }

    /// Checks what the types cannot: the format and that every job has its lease.
    ///
    /// # Errors
    /// The first problem.
    pub fn check(&self) -> Result<(), JobFileError> {
        if self.format != JOB_FILE_FORMAT {
            return Err(JobFileError::Format { found: self.format.clone() });
        }
        for (index, job) in self.jobs.iter().enumerate() {
            if job.lease_token.is_empty() {
                return Err(JobFileError::NoLease { index, job_id: job.job_id });
            }
        }
        Ok(())
    }
}
