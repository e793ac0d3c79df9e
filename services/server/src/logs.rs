//! Jobs' stdout and stderr. The pilot holding a job appends chunks while the payload runs (and
//! the rest before its final report); users read them by job id, or follow them until the job
//! ends. Chunks are rows of `job_logs` keyed by (job, stream, byte offset), written in the
//! transaction that checks the lease, so only the current holder writes and a retried chunk is
//! stored once. A job's logs are capped (`server.logs.max_bytes_per_job`, both streams together):
//! the head is kept, later output is dropped and the pilot is told to stop sending; the last
//! bytes of each stream still reach the job record with the final report (`stdout_tail`).

use chrono::Utc;
use panda_types::{JobId, JobStatus, StateMachine};
use sea_orm::{DatabaseConnection, TransactionTrait};
use serde::{Deserialize, Serialize};
use tracing::instrument;

use crate::error::{Error, Result};
use crate::store::Store;

/// Default cap of a job's stored logs: 16 MiB.
pub const DEFAULT_MAX_BYTES_PER_JOB: u64 = 16 * 1024 * 1024;
/// Largest chunk one append may carry.
pub const MAX_CHUNK_BYTES: usize = 1024 * 1024;
/// Chunks read per database round trip when streaming a log.
const READ_BATCH: u64 = 16;

/// `[server.logs]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Cap of the bytes stored per job (stdout and stderr together). Output past it is dropped.
    pub max_bytes_per_job: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self { max_bytes_per_job: DEFAULT_MAX_BYTES_PER_JOB }
    }
}

/// Which output of the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl LogStream {
    /// Name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// The answer to an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Bytes of the stream stored now (where the next chunk starts).
    pub stored_bytes: u64,
    /// The job's logs reached the cap; later output is dropped.
    pub cap_reached: bool,
}

/// What of a chunk to store, given what is stored already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Leading bytes already stored (a retried or overlapping chunk).
    pub skip: usize,
    /// Bytes to store after those, at the stream's end.
    pub keep: usize,
}

/// Decides what of a chunk at `offset` of `len` bytes to store, when the stream holds `stored`
/// bytes and the job `total` of at most `cap`. Pure, so every case is a unit test.
///
/// # Errors
/// The reason, when the chunk starts past the stream's end (bytes before it are missing).
pub(crate) fn plan(stored: u64, total: u64, cap: u64, offset: u64, len: usize) -> Result<Plan, String> {
    if offset > stored {
        return Err(format!(
            "{offset} is past the end of the stream ({stored} bytes stored): the next chunk starts at {stored}"
        ));
    }
    let skip = usize::try_from(stored - offset).unwrap_or(usize::MAX).min(len);
    let room = usize::try_from(cap.saturating_sub(total)).unwrap_or(usize::MAX);
    Ok(Plan { skip, keep: (len - skip).min(room) })
}

/// A stored piece of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSlice {
    /// Where it starts in the stream.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// The logs' use cases.
#[derive(Debug, Clone)]
pub struct Logs {
    db: DatabaseConnection,
    store: Store,
    max_bytes_per_job: u64,
    appended: tokio::sync::broadcast::Sender<JobId>,
}

impl Logs {
    /// Logs over a migrated database.
    pub fn new(db: DatabaseConnection, config: &Config) -> Self {
        let store = Store::new(db.get_database_backend());
        let (appended, _) = tokio::sync::broadcast::channel(1024);
        Self { db, store, max_bytes_per_job: config.max_bytes_per_job, appended }
    }

    /// Jobs whose logs grew, as appended in this process (followers also re-read periodically
    /// for appends through other replicas, and after lagging).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<JobId> {
        self.appended.subscribe()
    }

    /// Appends a chunk of a job's output for the pilot holding the job.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for empty or oversized data and an offset past the stream's end;
    /// NOT_FOUND; FAILED_PRECONDITION when `lease_token` is not the job's current one, or the job
    /// has ended.
    #[instrument(skip_all, fields(job_id = %job_id, stream = stream.as_str(), offset))]
    pub async fn append(
        &self,
        job_id: JobId,
        lease_token: &str,
        stream: LogStream,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Appended> {
        if data.is_empty() {
            return Err(Error::invalid("data", "must not be empty"));
        }
        if data.len() > MAX_CHUNK_BYTES {
            return Err(Error::invalid(
                "data",
                format!("must be at most {MAX_CHUNK_BYTES} bytes (got {})", data.len()),
            ));
        }
        let txn = self.db.begin().await?;
        // The job's row lock orders this append with the job's updates and with other appends.
        let job = self.store.lock_job(&txn, job_id).await?.ok_or(Error::JobNotFound { job_id })?;
        if lease_token.is_empty() || job.lease_token.as_deref() != Some(lease_token) {
            return Err(Error::NotHolder { job_id });
        }
        if job.status.is_final() {
            return Err(Error::LogClosed { job_id, status: job.status });
        }
        let sizes = self.store.log_sizes(&txn, job_id).await?;
        let stored = match stream {
            LogStream::Stdout => sizes.stdout,
            LogStream::Stderr => sizes.stderr,
        };
        let plan = plan(stored, sizes.total(), self.max_bytes_per_job, offset, data.len())
            .map_err(|reason| Error::invalid("offset", format!("{reason} (job {job_id}, {})", stream.as_str())))?;
        let mut data = data;
        if plan.keep > 0 {
            let chunk = data.drain(plan.skip..plan.skip + plan.keep).collect();
            self.store.insert_log_chunk(&txn, job_id, stream.as_str(), stored, chunk, Utc::now()).await?;
        }
        txn.commit().await?;
        if plan.keep > 0 && self.appended.receiver_count() > 0 {
            // Nobody following is fine.
            let _ = self.appended.send(job_id);
        }
        let total = sizes.total() + plan.keep as u64;
        Ok(Appended { stored_bytes: stored + plan.keep as u64, cap_reached: total >= self.max_bytes_per_job })
    }

    /// Up to a few chunks of a stream from byte `from` on, in order (empty at the end).
    ///
    /// # Errors
    /// Database failures.
    pub async fn read(&self, job_id: JobId, stream: LogStream, from: u64) -> Result<Vec<LogSlice>> {
        let chunks = self.store.log_chunks(&self.db, job_id, stream.as_str(), from, READ_BATCH).await?;
        Ok(chunks
            .into_iter()
            .map(|(offset, mut data)| {
                // The first chunk may start before `from`.
                let cut = usize::try_from(from.saturating_sub(offset)).unwrap_or(usize::MAX).min(data.len());
                data.drain(..cut);
                LogSlice { offset: offset + cut as u64, data }
            })
            .filter(|slice| !slice.data.is_empty())
            .collect())
    }

    /// A job's state, and whether its logs reached the cap.
    ///
    /// # Errors
    /// NOT_FOUND.
    pub async fn job_state(&self, job_id: JobId) -> Result<(JobStatus, bool)> {
        let job = self.store.get_job(&self.db, job_id).await?.ok_or(Error::JobNotFound { job_id })?;
        let sizes = self.store.log_sizes(&self.db, job_id).await?;
        Ok((job.status, sizes.total() >= self.max_bytes_per_job))
    }
}

#[cfg(test)]
mod tests;
