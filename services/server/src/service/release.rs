//! File-level (job-level) release: a task submitted with `hold_jobs` has its jobs inserted held
//! (`defined`: brokered, not dispatched, not counted as demand); the releaser (idds) releases
//! each job when the files it reads exist, or closes it when one never will. Idempotent: only
//! jobs still held change, so a repeated or late call does nothing.

use std::collections::BTreeSet;

use panda_types::{JobActor, JobId, JobStatus, TaskId, TaskStatus};
use sea_orm::TransactionTrait;
use tracing::{info, instrument};

use super::{Service, truncate};
use crate::error::{Error, Result};

/// What [`Service::release_jobs`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Released {
    /// Jobs released by this call.
    pub released: Vec<JobId>,
    /// Jobs closed by this call.
    pub closed: Vec<JobId>,
    /// Indices named that were not held (released, closed or ended before).
    pub unchanged: u32,
    /// Jobs of the task still held.
    pub held: u32,
}

impl Service {
    /// Releases the held jobs at `release` (job indices) and closes those at `close` with
    /// `close_reason`, in one transaction. A released job becomes `activated` (or `throttled`
    /// while its task is paused, as pausing did to its other queued jobs); a closed one's outputs
    /// are cancelled, and the task ends if that was its last live job.
    ///
    /// # Errors
    /// INVALID_ARGUMENT (an index in both lists, no reason for closing), NOT_FOUND.
    #[instrument(skip_all, fields(task_id = %task_id, release = release.len(), close = close.len()))]
    pub async fn release_jobs(
        &self,
        task_id: TaskId,
        release: &[u32],
        close: &[u32],
        close_reason: &str,
    ) -> Result<Released> {
        let release: BTreeSet<u32> = release.iter().copied().collect();
        let close: BTreeSet<u32> = close.iter().copied().collect();
        if let Some(index) = release.intersection(&close).next() {
            return Err(Error::invalid("close", format!("job index {index} is also in release")));
        }
        if !close.is_empty() && close_reason.trim().is_empty() {
            return Err(Error::invalid("close_reason", "is required when jobs are closed"));
        }
        let txn = self.db.begin().await?;
        let mut task = self.store.lock_task(&txn, task_id).await?.ok_or(Error::TaskNotFound { task_id })?;
        let mut held = self.store.jobs_of_task(&txn, task_id, &[JobStatus::Defined]).await?;
        let paused = task.status == TaskStatus::Paused;
        let mut events = Vec::new();
        let mut out = Released::default();
        let mut changed = Vec::new();
        for (i, job) in held.iter_mut().enumerate() {
            if release.contains(&job.job_index) {
                self.move_job(job, JobStatus::Activated, JobActor::Jedi, &mut events)?;
                if paused {
                    // The user's pause holds every queued job back; it applies to this one too.
                    self.move_job(job, JobStatus::Throttled, JobActor::User, &mut events)?;
                }
                out.released.push(job.id);
            } else if close.contains(&job.job_index) {
                self.move_job(job, JobStatus::Closed, JobActor::Jedi, &mut events)?;
                job.error_diag = truncate(close_reason, 2000);
                out.closed.push(job.id);
            } else {
                continue;
            }
            changed.push(i);
        }
        let named = (release.len() + close.len()) as u32;
        out.unchanged = named - changed.len() as u32;
        out.held = (held.len() - changed.len()) as u32;
        let to_save: Vec<_> = changed.iter().map(|&i| &held[i]).collect();
        self.store.save_jobs(&txn, &to_save).await?;
        if !out.closed.is_empty() {
            self.store.cancel_outputs(&txn, &out.closed, chrono::Utc::now()).await?;
            self.finish_task_if_drained(&txn, &mut task, &mut events).await?;
        }
        self.commit(txn, events).await?;
        info!(
            entity = "task",
            id = %task_id,
            released = out.released.len(),
            closed = out.closed.len(),
            unchanged = out.unchanged,
            held = out.held,
            "held jobs released"
        );
        Ok(out)
    }
}
