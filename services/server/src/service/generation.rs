//! What JEDI asks of the server after a task's first jobs: the next attempt of failed jobs (with
//! a changed resource request), and breaking a task that cannot run. Each is one transaction.

use chrono::Utc;
use panda_types::{DataActor, DatasetStatus, JobId, JobStatus, Resources, StateMachine, TaskActor, TaskId, TaskStatus};
use sea_orm::{DatabaseTransaction, TransactionTrait};
use tracing::{info, instrument};

use super::Service;
use crate::error::{Error, Result};
use crate::events;
use crate::model::Task;

/// One failed job to run again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRetry {
    /// The failed job (its current attempt).
    pub job_id: JobId,
    /// The next attempt's request.
    pub resources: Resources,
    /// Why the request changed.
    pub change: String,
    /// A new queue (empty: the failed job's).
    pub queue: String,
}

impl Service {
    /// Whether a failed job of `task` still has attempts left (`split.max_attempts`): then the
    /// task does not end yet, JEDI inserts the next attempt.
    pub(super) async fn has_retryable_failures(&self, txn: &DatabaseTransaction, task: &Task) -> Result<bool> {
        let max = task.spec.split.max_attempts();
        if max <= 1 {
            return Ok(false);
        }
        let failed = self.store.jobs_of_task(txn, task.id, &[JobStatus::Failed]).await?;
        Ok(failed.iter().any(|j| j.attempt_nr < max))
    }

    /// Inserts the next attempt of failed jobs, each with its new request; all or none.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming a job that is not a failed current attempt of the task with
    /// attempts left; NOT_FOUND; FAILED_PRECONDITION when the task is not running or scouting.
    #[instrument(skip_all, fields(task_id = %task_id, jobs = retries.len()))]
    pub async fn retry_jobs(&self, task_id: TaskId, retries: Vec<JobRetry>) -> Result<Vec<JobId>> {
        if retries.is_empty() {
            return Err(Error::invalid("jobs", "must not be empty"));
        }
        let txn = self.db.begin().await?;
        let task = self.store.lock_task(&txn, task_id).await?.ok_or(Error::TaskNotFound { task_id })?;
        if !matches!(task.status, TaskStatus::Running | TaskStatus::Scouting) {
            return Err(Error::TaskState {
                task_id,
                status: task.status,
                action: "retrying jobs",
                allowed: "a running or scouting task",
            });
        }
        let max = task.spec.split.max_attempts();
        let failed = self.store.jobs_of_task(&txn, task_id, &[JobStatus::Failed]).await?;
        let mut events = Vec::with_capacity(retries.len());
        let mut ids = Vec::with_capacity(retries.len());
        let now = Utc::now();
        for (i, retry) in retries.iter().enumerate() {
            let Some(old) = failed.iter().find(|j| j.id == retry.job_id) else {
                return Err(Error::invalid(
                    format!("jobs[{i}].job_id"),
                    format!("job {} is not a failed current attempt of task {task_id}", retry.job_id),
                ));
            };
            if old.attempt_nr >= max {
                return Err(Error::invalid(
                    format!("jobs[{i}].job_id"),
                    format!("job {} used all {max} attempts (split.max_attempts)", retry.job_id),
                ));
            }
            let mut next = old.clone();
            next.resources = retry.resources;
            if !retry.queue.is_empty() {
                panda_types::QueueName::new(retry.queue.clone())
                    .map_err(|e| Error::invalid(format!("jobs[{i}].queue"), e))?;
                next.queue = retry.queue.clone();
            }
            let new = self.store.insert_retry(&txn, &next, now).await?;
            info!(entity = "job", old = %old.id, new = %new.id, attempt = new.attempt_nr, change = %retry.change, "job retried");
            events.push(events::job_changed(&new, JobStatus::Defined));
            ids.push(new.id);
        }
        self.commit(txn, events).await?;
        Ok(ids)
    }

    /// Breaks a task: `tobroken → broken` with the reason, and its datasets fail (bad input found
    /// at refinement, or every scout failed). A pending task passes through `registered`.
    ///
    /// # Errors
    /// NOT_FOUND; FAILED_PRECONDITION when the task cannot break (it ended, or is running).
    #[instrument(skip_all, fields(task_id = %task_id))]
    pub async fn break_task(&self, task_id: TaskId, reason: String) -> Result<Task> {
        let txn = self.db.begin().await?;
        let mut task = self.store.lock_task(&txn, task_id).await?.ok_or(Error::TaskNotFound { task_id })?;
        let mut events = Vec::new();
        if task.status == TaskStatus::Pending {
            self.move_task(&txn, &mut task, TaskStatus::Registered, TaskActor::Jedi, None, &mut events).await?;
        }
        if !task.status.can_transition_to(TaskStatus::ToBroken) {
            return Err(Error::TaskState {
                task_id,
                status: task.status,
                action: "breaking",
                allowed: "a registered, defined, pending or scouting task",
            });
        }
        self.move_task(&txn, &mut task, TaskStatus::ToBroken, TaskActor::Jedi, Some(reason.clone()), &mut events)
            .await?;
        self.move_task(&txn, &mut task, TaskStatus::Broken, TaskActor::Jedi, Some(reason), &mut events).await?;
        self.store
            .set_task_datasets_status(&txn, task_id, DataActor::Server, DatasetStatus::Failed, Utc::now())
            .await?;
        self.commit(txn, events).await?;
        Ok(task)
    }
}
