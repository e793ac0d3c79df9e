//! The server's use cases. Each one owns its transaction: state changes and their events commit
//! together (outbox), then the relay is woken. Handlers in `grpc/` only convert and call these.

use std::collections::BTreeSet;
use std::path::PathBuf;

use chrono::Utc;
use panda_bus::Envelope;
use panda_bus::outbox::{self, Outbox};
use panda_types::spec::TaskSpecDraft;
use panda_types::{
    DataActor, DatasetStatus, FileStatus, JobActor, JobId, JobStatus, StateMachine, TaskActor, TaskId, TaskStatus,
};
use sea_orm::{DatabaseConnection, DatabaseTransaction, TransactionTrait};
use tracing::{info, instrument};

use crate::error::{Error, Result};
use crate::events;
use crate::metrics::Metrics;
use crate::model::{
    Dataset, FileRecord, Job, JobBatch, JobCounts, JobReport, NewJob, Queue, QueueLoad, QueueWorkers, Task,
};
use crate::store::{JobFilter, Store, TaskFilter};

mod function;
mod generation;
mod pilot;
mod release;
mod workers;

pub use function::{
    FAILURE_BINDINGS, FailureResults, MAX_CALLS_PER_READ, NewWork, WARM_RUNTIME_ENV, log_location, result_topic,
};

pub use generation::JobRetry;
pub use pilot::{DispatchRequest, PilotBatches, UpdateOutcome, UpdateRequest};
pub use release::Released;

/// Pilot instruction from the server's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PilotCommand {
    /// Carry on.
    None,
    /// Kill the payload.
    Kill,
}

/// Server error code of a job whose pilot went silent (the reference dispatcher's 100).
pub const LOST_HEARTBEAT: u32 = 100;

/// What `command_to_pilot` holds for a job being killed.
const TO_BE_KILLED: &str = "tobekilled";

/// A job handed to a pilot, with its input files' catalog entries.
#[derive(Debug, Clone)]
pub struct Dispatched {
    /// The job, now `sent`, with its lease token.
    pub job: Job,
    /// Its inputs in order.
    pub inputs: Vec<FileRecord>,
}

/// What [`Service::register_task`] did.
enum Registered {
    /// The idempotency key named this stored task; nothing was written.
    Existing(Task),
    /// Stored in the caller's transaction.
    New(Task),
}

/// The server's use cases.
#[derive(Clone)]
pub struct Service {
    db: DatabaseConnection,
    /// Reads that need no transaction: on SQLite, read-only connections beside the one writer
    /// (`panda_db::read_pool`), so status queries never queue on the writer's thread; otherwise
    /// `db` itself.
    reads: DatabaseConnection,
    store: Store,
    outbox: Outbox,
    storage_dir: PathBuf,
    metrics: Metrics,
    /// How long a harvester's worker report counts.
    worker_report_stale_after: std::time::Duration,
    /// Global shares and their usage.
    shares: std::sync::Arc<crate::shares::Shares>,
    /// Wakes long-polling GetJob calls when jobs become activated.
    activations: crate::activations::Activations,
}

/// A job's state change decided in memory: the event to publish and the transition to count once
/// the change is written.
struct JobChange {
    job_id: JobId,
    from: JobStatus,
    to: JobStatus,
    event: Envelope,
}

impl Service {
    /// Builds the service over a migrated database.
    pub fn new(db: DatabaseConnection, outbox: Outbox, storage_dir: PathBuf, metrics: Metrics) -> Self {
        let store = Store::new(db.get_database_backend());
        Self {
            reads: db.clone(),
            db,
            store,
            outbox,
            storage_dir,
            metrics,
            worker_report_stale_after: std::time::Duration::from_secs(300),
            shares: std::sync::Arc::new(crate::shares::Shares::single()),
            activations: crate::activations::Activations::default(),
        }
    }

    /// The global shares dispatch follows (default: one share).
    pub fn with_shares(mut self, shares: crate::shares::Shares) -> Self {
        self.shares = std::sync::Arc::new(shares);
        self
    }

    /// The global shares.
    pub fn shares(&self) -> &crate::shares::Shares {
        &self.shares
    }

    /// Counts the shares' usage again from the database.
    ///
    /// # Errors
    /// Database failures.
    pub async fn refresh_shares(&self) -> Result<()> {
        let counts = self.store.share_counts(&self.reads).await?;
        self.shares.replace(&counts);
        Ok(())
    }

    /// Every leaf share with its target and usage, freshly counted.
    ///
    /// # Errors
    /// Database failures.
    pub async fn list_shares(&self) -> Result<Vec<crate::shares::ShareUsage>> {
        self.refresh_shares().await?;
        Ok(self.shares.usage())
    }

    /// The wake-ups of long-polling GetJob calls (see [`crate::activations`]).
    pub fn activations(&self) -> crate::activations::Activations {
        self.activations.clone()
    }

    /// Serves transaction-free reads from `reads` (see [`panda_db::read_pool`]).
    #[must_use]
    pub fn with_reads(mut self, reads: DatabaseConnection) -> Self {
        self.reads = reads;
        self
    }

    /// `file://` URL of the storage directory.
    pub fn storage_url(&self) -> String {
        format!("file://{}", self.storage_dir.display())
    }

    async fn commit(&self, txn: DatabaseTransaction, events: Vec<Envelope>) -> Result<()> {
        outbox::append(&txn, &events).await?;
        txn.commit().await?;
        if !events.is_empty() {
            // Watchers learn of the change from the bus, once the relay published it.
            self.outbox.notify();
            // Pilots waiting for jobs of a queue learn of them at once.
            self.activations.notify_events(&events);
        }
        Ok(())
    }

    /// Moves a task, recording the event; refuses what the state machine refuses.
    async fn move_task(
        &self,
        txn: &DatabaseTransaction,
        task: &mut Task,
        to: TaskStatus,
        actor: TaskActor,
        diag: Option<String>,
        events: &mut Vec<Envelope>,
    ) -> Result<()> {
        let from = task.status;
        from.transition_to(to).map_err(|_| Error::TaskState {
            task_id: task.id,
            status: from,
            action: "this change",
            allowed: "a state that allows it",
        })?;
        if !actor.may_move(from, to) {
            return Err(Error::TaskActor { task_id: task.id, from, to, actor });
        }
        let now = Utc::now();
        self.store.set_task_status(txn, task.id, to, diag.as_deref(), now).await?;
        task.status = to;
        task.modified_at = now;
        if let Some(diag) = diag {
            task.error_diag = diag;
        }
        info!(entity = "task", id = %task.id, %from, %to, "state change");
        self.metrics.task_transition(from, to);
        events.push(events::task_changed(task, from));
        Ok(())
    }

    /// Moves a job in memory (the caller saves it), recording the event.
    fn move_job(&self, job: &mut Job, to: JobStatus, actor: JobActor, events: &mut Vec<Envelope>) -> Result<()> {
        let change = self.decide_move(job, to, actor)?;
        self.metrics.job_transition(change.from, change.to);
        events.push(change.event);
        Ok(())
    }

    /// Moves a job in memory like [`Service::move_job`], but answers the change instead of
    /// counting it: a batch that may yet drop it (the job changed before it was written) commits
    /// what it keeps with [`Service::commit_changes`], which counts them.
    fn decide_move(&self, job: &mut Job, to: JobStatus, actor: JobActor) -> Result<JobChange> {
        let from = job.status;
        from.transition_to(to).map_err(|_| Error::JobTransition { job_id: job.id, from, to })?;
        if !actor.may_move(from, to) {
            return Err(Error::JobActor { job_id: job.id, from, to, actor });
        }
        let now = Utc::now();
        job.status = to;
        job.modified_at = now;
        job.state_times.record(to, now);
        if matches!(to, JobStatus::Starting | JobStatus::Running) && job.started_at.is_none() {
            job.started_at = Some(now);
        }
        if to.is_final() {
            job.ended_at = Some(now);
        }
        tracing::debug!(entity = "job", id = %job.id, %from, %to, "state change");
        Ok(JobChange { job_id: job.id, from, to, event: events::job_changed(job, from) })
    }

    /// Commits `txn` with the events of `changes`, then counts their transitions in the metrics.
    async fn commit_changes(&self, txn: DatabaseTransaction, changes: Vec<JobChange>) -> Result<()> {
        let mut transitions = Vec::with_capacity(changes.len());
        let events = changes
            .into_iter()
            .map(|change| {
                transitions.push((change.from, change.to));
                change.event
            })
            .collect();
        self.commit(txn, events).await?;
        for (from, to) in transitions {
            self.metrics.job_transition(from, to);
        }
        Ok(())
    }

    /// Validates and stores a task; a repeated idempotency key returns the first task.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming each bad field, ALREADY_EXISTS for a taken output dataset.
    #[instrument(skip_all, fields(name = %draft.name))]
    pub async fn submit_task(&self, draft: TaskSpecDraft, idempotency_key: Option<String>) -> Result<(Task, bool)> {
        if let Some(key) = &idempotency_key
            && key.len() > 200
        {
            return Err(Error::invalid(
                "idempotency_key",
                format!("must be at most 200 characters (got {})", key.len()),
            ));
        }
        let mut spec = draft.validate().map_err(Error::InvalidArgument)?;
        spec.share = self.shares.resolve(&spec.share).map_err(|e| Error::invalid("task.share", e))?;
        let txn = self.db.begin().await?;
        match self.register_task(&txn, &spec, idempotency_key.as_deref()).await? {
            Registered::Existing(task) => Ok((task, false)),
            Registered::New(task) => {
                self.commit(txn, vec![events::task_changed(&task, TaskStatus::Registered)]).await?;
                Ok((task, true))
            }
        }
    }

    /// Checks a validated task against the stored state (input datasets exist, the code archive
    /// is cached, the output dataset is free) and stores it with its output dataset in `txn`; the
    /// caller commits with the `task.registered` event. A known idempotency key gives the stored
    /// task and stores nothing.
    async fn register_task(
        &self,
        txn: &DatabaseTransaction,
        spec: &panda_types::spec::TaskSpec,
        idempotency_key: Option<&str>,
    ) -> Result<Registered> {
        if let Some(key) = idempotency_key
            && let Some(existing) = self.store.find_task_by_key(txn, key).await?
        {
            return Ok(Registered::Existing(existing));
        }
        if let panda_types::spec::TaskInput::Datasets { names, .. } = &spec.input {
            for (i, name) in names.iter().enumerate() {
                if self.store.find_dataset(txn, name).await?.is_none() {
                    return Err(Error::invalid(
                        format!("task.input_datasets[{i}]"),
                        format!("dataset {name:?} does not exist"),
                    ));
                }
            }
        }
        if let Some(sha256) = &spec.code_sha256
            && self.store.find_archive(txn, sha256).await?.is_none()
        {
            return Err(Error::invalid(
                "task.code_sha256",
                format!("archive {sha256} is not in the cache; upload it first (panda cache upload)"),
            ));
        }
        if let Some(output) = &spec.output_dataset
            && let Some((_, owner, _)) = self.store.find_dataset(txn, output).await?
        {
            return Err(Error::DatasetTaken { name: output.clone(), task_id: owner });
        }
        let now = Utc::now();
        let task = self.store.insert_task(txn, spec, idempotency_key, now).await?;
        if let Some(output) = &spec.output_dataset {
            self.store.insert_dataset(txn, output, task.id, DatasetStatus::Defined, now).await?;
        }
        info!(entity = "task", id = %task.id, to = %task.status, "task registered");
        self.metrics.tasks_submitted.inc();
        Ok(Registered::New(task))
    }

    /// A task and its job counts.
    ///
    /// # Errors
    /// NOT_FOUND.
    pub async fn get_task(&self, task_id: TaskId) -> Result<(Task, JobCounts)> {
        let task = self.store.get_task(&self.reads, task_id).await?.ok_or(Error::TaskNotFound { task_id })?;
        let counts = self.store.job_counts(&self.reads, task_id).await?;
        Ok((task, counts))
    }

    /// Tasks with their job counts.
    ///
    /// # Errors
    /// Database failures.
    pub async fn list_tasks(&self, filter: TaskFilter) -> Result<Vec<(Task, JobCounts)>> {
        let tasks = self.store.list_tasks(&self.reads, &filter).await?;
        let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
        let mut counts = self.store.job_counts_of(&self.reads, &ids).await?;
        Ok(tasks
            .into_iter()
            .map(|task| {
                let c = counts.remove(&task.id).unwrap_or_default();
                (task, c)
            })
            .collect())
    }

    /// Kills a task: queued jobs are cancelled now, jobs held by pilots are told to stop at their
    /// next heartbeat; the task is `aborted` once no job is left running.
    ///
    /// # Errors
    /// NOT_FOUND; FAILED_PRECONDITION when the task is already ending or ended.
    #[instrument(skip_all, fields(task_id = %task_id))]
    pub async fn kill_task(&self, task_id: TaskId) -> Result<(Task, JobCounts)> {
        let txn = self.db.begin().await?;
        let mut task = self.store.lock_task(&txn, task_id).await?.ok_or(Error::TaskNotFound { task_id })?;
        if !task.status.can_transition_to(TaskStatus::Aborting) {
            return Err(Error::TaskState {
                task_id,
                status: task.status,
                action: "kill",
                allowed: "an active task (not finishing, aborting, or ended)",
            });
        }
        let mut events = Vec::new();
        self.move_task(
            &txn,
            &mut task,
            TaskStatus::Aborting,
            TaskActor::User,
            Some("killed by request".to_owned()),
            &mut events,
        )
        .await?;
        let live: Vec<JobStatus> = JobStatus::ALL.iter().copied().filter(|s| !s.is_final()).collect();
        let mut jobs = self.store.jobs_of_task(&txn, task_id, &live).await?;
        for job in &mut jobs {
            if job.status.is_queued() {
                self.move_job(job, JobStatus::Cancelled, JobActor::User, &mut events)?;
                job.error_diag = "task killed".to_owned();
            } else {
                job.command_to_pilot = Some(TO_BE_KILLED.to_owned());
                job.modified_at = Utc::now();
            }
        }
        self.store.save_jobs(&txn, &jobs.iter().collect::<Vec<_>>()).await?;
        let cancelled: Vec<JobId> = jobs.iter().filter(|j| j.status == JobStatus::Cancelled).map(|j| j.id).collect();
        self.store.cancel_outputs(&txn, &cancelled, Utc::now()).await?;
        self.finish_task_if_drained(&txn, &mut task, &mut events).await?;
        self.commit(txn, events).await?;
        let counts = self.store.job_counts(&self.reads, task_id).await?;
        Ok((task, counts))
    }

    /// Freezes a task: its activated jobs are held back (`throttled`) so no pilot takes them;
    /// jobs already running go on. The state it left is remembered for [`Service::resume_task`].
    ///
    /// # Errors
    /// NOT_FOUND; FAILED_PRECONDITION when the task is not active (or already paused).
    #[instrument(skip_all, fields(task_id = %task_id))]
    pub async fn pause_task(&self, task_id: TaskId) -> Result<(Task, JobCounts)> {
        let txn = self.db.begin().await?;
        let mut task = self.store.lock_task(&txn, task_id).await?.ok_or(Error::TaskNotFound { task_id })?;
        if !task.status.can_transition_to(TaskStatus::Paused) {
            return Err(Error::TaskState {
                task_id,
                status: task.status,
                action: "pause",
                allowed: "an active or pending task",
            });
        }
        let mut events = Vec::new();
        self.store.set_task_old_status(&txn, task_id, Some(task.status)).await?;
        self.move_task(&txn, &mut task, TaskStatus::Paused, TaskActor::User, None, &mut events).await?;
        let mut jobs = self.store.jobs_of_task(&txn, task_id, &[JobStatus::Activated]).await?;
        for job in &mut jobs {
            self.move_job(job, JobStatus::Throttled, JobActor::User, &mut events)?;
        }
        self.store.save_jobs(&txn, &jobs.iter().collect::<Vec<_>>()).await?;
        self.commit(txn, events).await?;
        let counts = self.store.job_counts(&self.reads, task_id).await?;
        Ok((task, counts))
    }

    /// Returns a paused task to where it was and releases its held jobs.
    ///
    /// # Errors
    /// NOT_FOUND; FAILED_PRECONDITION when the task is not paused.
    #[instrument(skip_all, fields(task_id = %task_id))]
    pub async fn resume_task(&self, task_id: TaskId) -> Result<(Task, JobCounts)> {
        let txn = self.db.begin().await?;
        let mut task = self.store.lock_task(&txn, task_id).await?.ok_or(Error::TaskNotFound { task_id })?;
        if task.status != TaskStatus::Paused {
            return Err(Error::TaskState { task_id, status: task.status, action: "resume", allowed: "a paused task" });
        }
        let mut back = self.store.task_old_status(&txn, task_id).await?.unwrap_or(TaskStatus::Registered);
        // A task paused while pending goes back to registered, so JEDI looks at it again at once.
        if !TaskStatus::Paused.can_transition_to(back) {
            back = TaskStatus::Registered;
        }
        let mut events = Vec::new();
        self.move_task(&txn, &mut task, back, TaskActor::User, None, &mut events).await?;
        self.store.set_task_old_status(&txn, task_id, None).await?;
        let mut jobs = self.store.jobs_of_task(&txn, task_id, &[JobStatus::Throttled]).await?;
        for job in &mut jobs {
            self.move_job(job, JobStatus::Activated, JobActor::User, &mut events)?;
        }
        self.store.save_jobs(&txn, &jobs.iter().collect::<Vec<_>>()).await?;
        // Jobs that ran out while it was paused may have drained it.
        self.finish_task_if_drained(&txn, &mut task, &mut events).await?;
        self.commit(txn, events).await?;
        let counts = self.store.job_counts(&self.reads, task_id).await?;
        Ok((task, counts))
    }

    /// Retries an ended task's failed, cancelled and closed jobs: each gets a new job (the next
    /// attempt, same inputs and outputs) and the task runs again (`toretry → ready → running`, as
    /// the reference's retry command). Finished jobs are kept.
    ///
    /// # Errors
    /// NOT_FOUND; FAILED_PRECONDITION when the task is not finished, failed or aborted, or has no
    /// job to retry.
    #[instrument(skip_all, fields(task_id = %task_id))]
    pub async fn retry_task(&self, task_id: TaskId) -> Result<(Task, JobCounts)> {
        let txn = self.db.begin().await?;
        let mut task = self.store.lock_task(&txn, task_id).await?.ok_or(Error::TaskNotFound { task_id })?;
        if !task.status.can_transition_to(TaskStatus::ToRetry) {
            return Err(Error::TaskState {
                task_id,
                status: task.status,
                action: "retry",
                allowed: "a finished, failed or aborted task",
            });
        }
        let ended = self
            .store
            .jobs_of_task(&txn, task_id, &[JobStatus::Failed, JobStatus::Cancelled, JobStatus::Closed])
            .await?;
        if ended.is_empty() {
            return Err(Error::TaskState {
                task_id,
                status: task.status,
                action: "retry",
                allowed: "failed, cancelled or closed jobs",
            });
        }
        let mut events = Vec::new();
        // The user's retry command, then what JEDI does with a task to retry (here the server
        // regenerates the failed jobs itself, as new attempts).
        for (step, actor) in [
            (TaskStatus::ToRetry, TaskActor::User),
            (TaskStatus::Ready, TaskActor::Jedi),
            (TaskStatus::Running, TaskActor::Jedi),
        ] {
            let diag = (step == TaskStatus::Running).then(String::new);
            self.move_task(&txn, &mut task, step, actor, diag, &mut events).await?;
        }
        let now = Utc::now();
        for old in &ended {
            let new = self.store.insert_retry(&txn, old, now).await?;
            events.push(events::job_changed(&new, JobStatus::Defined));
        }
        self.store.set_task_datasets_status(&txn, task_id, DataActor::User, DatasetStatus::Running, now).await?;
        info!(entity = "task", id = %task_id, jobs = ended.len(), "task retried");
        self.commit(txn, events).await?;
        let counts = self.store.job_counts(&self.reads, task_id).await?;
        Ok((task, counts))
    }

    /// Changes a task's priority and that of its jobs not yet dispatched.
    ///
    /// # Errors
    /// NOT_FOUND; FAILED_PRECONDITION when the task has ended.
    pub async fn set_task_priority(&self, task_id: TaskId, priority: i32) -> Result<(Task, JobCounts)> {
        let txn = self.db.begin().await?;
        let mut task = self.store.lock_task(&txn, task_id).await?.ok_or(Error::TaskNotFound { task_id })?;
        if task.status.is_final() {
            return Err(Error::TaskState {
                task_id,
                status: task.status,
                action: "a priority change",
                allowed: "a task that has not ended",
            });
        }
        self.store.set_task_priority(&txn, &task, priority, Utc::now()).await?;
        txn.commit().await?;
        task.spec.priority = priority;
        info!(entity = "task", id = %task_id, priority, "priority changed");
        let counts = self.store.job_counts(&self.reads, task_id).await?;
        Ok((task, counts))
    }

    /// Kills one job: cancelled at once when queued; when a pilot holds it, the pilot is told at
    /// its next heartbeat and the job ends as cancelled when it reports.
    ///
    /// # Errors
    /// NOT_FOUND; FAILED_PRECONDITION when the job has ended.
    #[instrument(skip_all, fields(job_id = %job_id))]
    pub async fn kill_job(&self, job_id: JobId) -> Result<Job> {
        let txn = self.db.begin().await?;
        let mut job = self.store.lock_job(&txn, job_id).await?.ok_or(Error::JobNotFound { job_id })?;
        if job.status.is_final() {
            return Err(Error::JobTransition { job_id, from: job.status, to: JobStatus::Cancelled });
        }
        let mut events = Vec::new();
        if job.status.is_queued() {
            self.move_job(&mut job, JobStatus::Cancelled, JobActor::User, &mut events)?;
            job.error_diag = "killed by request".to_owned();
            self.store.save_job(&txn, &job).await?;
            self.store.cancel_outputs(&txn, &[job_id], Utc::now()).await?;
        } else {
            job.command_to_pilot = Some(TO_BE_KILLED.to_owned());
            self.store.save_job(&txn, &job).await?;
        }
        self.commit(txn, events).await?;
        if job.status.is_final() {
            self.end_task_if_drained(job.task_id).await;
        }
        Ok(job)
    }

    /// Inserts a task's brokered jobs and moves the task to running, all or nothing. Repeating
    /// the call for a task that already has its jobs is refused (JEDI treats that as done).
    ///
    /// # Errors
    /// INVALID_ARGUMENT for bad jobs, NOT_FOUND, FAILED_PRECONDITION when jobs exist already.
    #[instrument(skip_all, fields(task_id = %task_id, jobs = jobs.len()))]
    pub async fn insert_jobs(&self, task_id: TaskId, jobs: Vec<NewJob>) -> Result<Vec<JobId>> {
        self.insert_jobs_with(task_id, jobs, JobBatch::Jobs).await
    }

    /// [`Service::insert_jobs`] for one phase of the task: with [`JobBatch::Scouts`] the task goes
    /// to `scouting`, and a later call with the rest of its jobs moves it on to `running`; with
    /// [`JobBatch::Merge`] a running task whose jobs have all ended gets its merge jobs, once.
    ///
    /// # Errors
    /// As [`Service::insert_jobs`]; for merge jobs, FAILED_PRECONDITION when the task does not
    /// merge, still has live jobs, or has its merge jobs already.
    #[instrument(skip_all, fields(task_id = %task_id, jobs = jobs.len(), batch = ?batch))]
    pub async fn insert_jobs_with(&self, task_id: TaskId, jobs: Vec<NewJob>, batch: JobBatch) -> Result<Vec<JobId>> {
        self.insert_jobs_reading(task_id, jobs, batch, false).await
    }

    /// [`Service::insert_jobs_with`], saying whether an input dataset was still open when JEDI
    /// read the task's input (`input_open`): such a task does not end when its jobs have, until
    /// an insertion (of [`JobBatch::More`], with or without jobs) says the input is complete.
    ///
    /// # Errors
    /// As [`Service::insert_jobs_with`].
    #[instrument(skip_all, fields(task_id = %task_id, jobs = jobs.len(), batch = ?batch, input_open))]
    pub async fn insert_jobs_reading(
        &self,
        task_id: TaskId,
        mut jobs: Vec<NewJob>,
        batch: JobBatch,
        input_open: bool,
    ) -> Result<Vec<JobId>> {
        if !(batch == JobBatch::More && jobs.is_empty()) {
            validate_new_jobs(&jobs)?;
        }
        let txn = self.db.begin().await?;
        let mut task = self.store.lock_task(&txn, task_id).await?.ok_or(Error::TaskNotFound { task_id })?;
        for job in &mut jobs {
            job.merge = batch == JobBatch::Merge;
        }
        if batch == JobBatch::Merge {
            self.check_merge_insertion(&txn, &task).await?;
        }
        let scouting = batch == JobBatch::Scouts;
        // The job carries its task's code archive (the pilot gets it with the dispatch; users
        // cannot set PANDA_* variables themselves).
        if let Some(sha256) = &task.spec.code_sha256 {
            for job in &mut jobs {
                job.environment.insert(panda_types::spec::CODE_SHA256_ENV.to_owned(), sha256.clone());
            }
        }
        // Every job runs in the task's container image (retries copy the environment).
        if let Some(image) = &task.spec.container_image {
            for job in &mut jobs {
                job.environment.insert(panda_types::spec::CONTAINER_IMAGE_ENV.to_owned(), image.clone());
            }
        }
        // A work's jobs may share a warm runtime (Function-as-a-Task): its command goes with them.
        if let Some(command) = self.store.find_work(&txn, task_id).await?.and_then(|work| work.warm_command) {
            for job in &mut jobs {
                job.environment.insert(function::WARM_RUNTIME_ENV.to_owned(), command.clone());
            }
        }
        let path: &[TaskStatus] = match (task.status, scouting) {
            // Merge jobs join a running task (checked above); so do jobs for new input files.
            (TaskStatus::Running, false) if matches!(batch, JobBatch::Merge | JobBatch::More) => &[],
            (TaskStatus::Registered | TaskStatus::Pending, false) => {
                &[TaskStatus::Defined, TaskStatus::Ready, TaskStatus::Running]
            }
            (TaskStatus::Defined, false) => &[TaskStatus::Ready, TaskStatus::Running],
            (TaskStatus::Ready, false) => &[TaskStatus::Running],
            (TaskStatus::Registered | TaskStatus::Pending, true) => {
                &[TaskStatus::Defined, TaskStatus::Ready, TaskStatus::Scouting]
            }
            (TaskStatus::Defined, true) => &[TaskStatus::Ready, TaskStatus::Scouting],
            (TaskStatus::Ready, true) => &[TaskStatus::Scouting],
            // The scouts' measurements are in: the rest of the jobs (the reference's avalanche).
            (TaskStatus::Scouting, false) => &[TaskStatus::Scouted, TaskStatus::Running],
            (status, _) => {
                return Err(Error::TaskState {
                    task_id,
                    status,
                    action: "inserting jobs",
                    allowed: "registered, pending, defined or ready (jobs not generated yet), or scouting for the rest of the jobs",
                });
            }
        };
        let output_dataset = match &task.spec.output_dataset {
            Some(name) => self.store.find_dataset(&txn, name).await?.map(|(id, _, _)| id),
            None => None,
        };
        let mut events = Vec::with_capacity(jobs.len() + 3);
        if batch != JobBatch::Merge {
            self.store.set_task_awaits_input(&txn, task_id, input_open).await?;
        }
        if jobs.is_empty() {
            // The input is complete and every file has its job: the task may end now.
            let ended = task.status == TaskStatus::Running;
            self.commit(txn, events).await?;
            if ended {
                self.end_task_if_drained(task_id).await;
            }
            return Ok(Vec::new());
        }
        for &step in path {
            let diag = matches!(step, TaskStatus::Running | TaskStatus::Scouting).then(String::new);
            self.move_task(&txn, &mut task, step, TaskActor::Jedi, diag, &mut events).await?;
        }
        if output_dataset.is_some() && batch != JobBatch::Merge {
            self.store
                .set_task_datasets_status(&txn, task_id, DataActor::Jedi, DatasetStatus::Running, Utc::now())
                .await?;
        }
        // A task with `hold_jobs` gets its jobs held (`defined`) until ReleaseJobs releases them;
        // its merge jobs come after every job ended, so nothing holds them.
        let (status, from) = if task.spec.hold_jobs && batch != JobBatch::Merge {
            (JobStatus::Defined, JobStatus::Pending)
        } else {
            (JobStatus::Activated, JobStatus::Defined)
        };
        let share = self.shares.resolve(&task.spec.share).unwrap_or_default();
        let inserted = self.store.insert_jobs(&txn, task_id, &jobs, output_dataset, status, &share, Utc::now()).await?;
        for job in &inserted {
            events.push(events::job_changed(job, from));
        }
        self.commit(txn, events).await?;
        info!(entity = "task", id = %task_id, jobs = inserted.len(), "jobs inserted");
        Ok(inserted.into_iter().map(|j| j.id).collect())
    }

    /// Merge jobs are inserted once, into a running task that merges and whose jobs have all
    /// ended, with something finished to merge.
    async fn check_merge_insertion(&self, txn: &DatabaseTransaction, task: &Task) -> Result<()> {
        let refuse = |why: &'static str| Error::TaskState {
            task_id: task.id,
            status: task.status,
            action: "inserting merge jobs",
            allowed: if why.is_empty() { "a running task" } else { why },
        };
        if task.status != TaskStatus::Running {
            return Err(refuse(""));
        }
        if task.spec.split.merge_files_per_job.is_none() {
            return Err(refuse("a task with split.merge_files_per_job"));
        }
        if self.store.has_unfinished_jobs(txn, task.id).await? {
            return Err(refuse("a task whose jobs have all ended"));
        }
        if self.store.has_merge_jobs(txn, task.id).await? {
            return Err(refuse("a task without merge jobs (they were inserted already)"));
        }
        Ok(())
    }

    /// Whether a drained running task still waits for JEDI's merge jobs: it merges, something
    /// finished, and its merge jobs are not in yet.
    async fn awaits_merge(&self, txn: &DatabaseTransaction, task: &Task, finished: u32) -> Result<bool> {
        Ok(task.spec.split.merge_files_per_job.is_some()
            && finished > 0
            && !self.store.has_merge_jobs(txn, task.id).await?)
    }

    /// Parks a task in pending with a reason (JEDI found no queue, or its input is not ready).
    ///
    /// # Errors
    /// NOT_FOUND; FAILED_PRECONDITION when the task is not active.
    pub async fn set_task_pending(&self, task_id: TaskId, reason: String) -> Result<()> {
        let txn = self.db.begin().await?;
        let mut task = self.store.lock_task(&txn, task_id).await?.ok_or(Error::TaskNotFound { task_id })?;
        let mut events = Vec::new();
        if task.status == TaskStatus::Pending {
            if task.error_diag != reason {
                self.store.set_task_status(&txn, task_id, TaskStatus::Pending, Some(&reason), Utc::now()).await?;
            }
        } else if task.status.can_transition_to(TaskStatus::Pending) {
            self.move_task(&txn, &mut task, TaskStatus::Pending, TaskActor::Jedi, Some(reason), &mut events).await?;
        } else {
            return Err(Error::TaskState {
                task_id,
                status: task.status,
                action: "pending",
                allowed: "an active task",
            });
        }
        self.commit(txn, events).await
    }

    /// After a job ended (and committed): ends its task if that was its last live job. Runs in its
    /// own transaction, so the hot path of a job's end never waits for the task's row lock; the
    /// last job to commit always sees every other job ended, so some check finds the task drained.
    /// If this check is lost (a crash right after the job's commit), the watchdog's
    /// `end_drained_tasks` finds the task.
    async fn end_task_if_drained(&self, task_id: TaskId) {
        if let Err(error) = self.try_end_task(task_id).await {
            tracing::warn!(task_id = %task_id, error = %panda_runtime::error::chain(&error), "could not end a drained task; the watchdog will");
        }
    }

    async fn try_end_task(&self, task_id: TaskId) -> Result<()> {
        if self.store.has_unfinished_jobs(&self.reads, task_id).await? {
            return Ok(());
        }
        let txn = self.db.begin().await?;
        let Some(mut task) = self.store.lock_task(&txn, task_id).await? else { return Ok(()) };
        let mut events = Vec::new();
        self.finish_task_if_drained(&txn, &mut task, &mut events).await?;
        self.commit(txn, events).await
    }

    /// The watchdog's safety net: ends running or aborting tasks whose jobs have all ended.
    ///
    /// # Errors
    /// Database failures.
    pub async fn end_drained_tasks(&self) -> Result<usize> {
        let drained = self.store.drained_active_tasks(&self.reads, 500).await?;
        for task_id in &drained {
            self.try_end_task(*task_id).await?;
        }
        Ok(drained.len())
    }

    /// Ends a task whose jobs are all final: done / finished / failed by the reference's rules
    /// (all, some, no job finished), or aborted after a kill. The caller holds the task lock.
    async fn finish_task_if_drained(
        &self,
        txn: &DatabaseTransaction,
        task: &mut Task,
        events: &mut Vec<Envelope>,
    ) -> Result<()> {
        if self.store.has_unfinished_jobs(txn, task.id).await? {
            return Ok(());
        }
        let counts = self.store.job_counts(txn, task.id).await?;
        if counts.unfinished() > 0 {
            return Ok(());
        }
        // A task reading a dataset still being written waits for its files (JEDI adds their
        // jobs); it ends once the dataset is closed and those jobs ended too.
        if task.status == TaskStatus::Running && task.awaits_input {
            return Ok(());
        }
        let now = Utc::now();
        match task.status {
            TaskStatus::Aborting => {
                self.move_task(txn, task, TaskStatus::ToAbort, TaskActor::Server, None, events).await?;
                self.move_task(txn, task, TaskStatus::Aborted, TaskActor::Server, None, events).await?;
                let dataset = if counts.finished > 0 { DatasetStatus::Finished } else { DatasetStatus::Failed };
                self.store.set_task_datasets_status(txn, task.id, DataActor::Server, dataset, now).await?;
            }
            TaskStatus::Running if counts.total > 0 => {
                // A failed job with attempts left gets its next attempt from JEDI first.
                if self.has_retryable_failures(txn, task).await? {
                    return Ok(());
                }
                // The outputs are complete: JEDI inserts the merge jobs next, and the task ends
                // with them.
                if self.awaits_merge(txn, task, counts.finished).await? {
                    return Ok(());
                }
                self.move_task(txn, task, TaskStatus::Prepared, TaskActor::Server, None, events).await?;
                let (status, dataset, diag) = if counts.finished == counts.total {
                    (TaskStatus::Done, DatasetStatus::Done, String::new())
                } else if counts.finished > 0 {
                    let diag = format!("{} of {} jobs did not finish", counts.total - counts.finished, counts.total);
                    (TaskStatus::Finished, DatasetStatus::Finished, diag)
                } else {
                    let first = self.store.jobs_of_task(txn, task.id, &[JobStatus::Failed]).await?;
                    let detail = first
                        .first()
                        .map(|j| format!("; first failure: job {} error {} {}", j.id, j.error_code, j.error_diag))
                        .unwrap_or_default();
                    let summary = if counts.failed == counts.total {
                        format!("all {} jobs failed", counts.total)
                    } else {
                        format!("no job finished ({} failed, {} cancelled)", counts.failed, counts.cancelled)
                    };
                    (TaskStatus::Failed, DatasetStatus::Failed, format!("{summary}{detail}"))
                };
                self.move_task(txn, task, status, TaskActor::Server, Some(diag), events).await?;
                self.store.set_task_datasets_status(txn, task.id, DataActor::Server, dataset, now).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The watchdog: a job whose pilot went silent for `lost_after` is taken back. A `sent` job
    /// (the pilot never started it) returns to `activated` for another pilot; a `starting` or
    /// `running` one fails with "lost heartbeat" (code 100, as the reference's dispatcher error),
    /// so its task can end. Either way its lease is revoked, so a late update from the lost pilot
    /// is refused.
    ///
    /// # Errors
    /// Database failures.
    #[instrument(skip_all)]
    pub async fn sweep_lost_jobs(&self, lost_after: std::time::Duration) -> Result<usize> {
        let before = Utc::now() - chrono::Duration::from_std(lost_after).unwrap_or(chrono::Duration::MAX);
        let txn = self.db.begin().await?;
        // Candidates are read without locks; each is then locked task first, job second (the
        // order every transaction uses) and checked again, since its pilot may just have reported.
        let candidates = self.store.stale_held_jobs(&txn, before, 500).await?;
        let mut by_task: std::collections::BTreeMap<TaskId, Vec<JobId>> = std::collections::BTreeMap::new();
        for job in &candidates {
            by_task.entry(job.task_id).or_default().push(job.id);
        }
        let mut events = Vec::new();
        let mut n = 0;
        for (task_id, job_ids) in by_task {
            let Some(mut task) = self.store.lock_task(&txn, task_id).await? else { continue };
            let mut failed_any = false;
            for job_id in job_ids {
                let Some(mut job) = self.store.lock_job(&txn, job_id).await? else { continue };
                if !job.status.is_held_by_pilot() || job.modified_at >= before {
                    continue;
                }
                let silent = (Utc::now() - job.modified_at).num_seconds();
                if job.status == JobStatus::Sent {
                    self.move_job(&mut job, JobStatus::Activated, JobActor::Watchdog, &mut events)?;
                    job.error_diag =
                        format!("dispatched to {} but never started ({silent}s); back in the queue", job.node);
                    job.node.clear();
                    job.worker_id.clear();
                } else {
                    self.move_job(&mut job, JobStatus::Failed, JobActor::Watchdog, &mut events)?;
                    job.error_code = LOST_HEARTBEAT;
                    job.error_source = crate::model::ErrorSource::Server;
                    job.error_diag = format!("lost heartbeat: no update from the pilot on {} for {silent}s", job.node);
                    self.store.record_outputs(&txn, job.id, &[], FileStatus::Failed, Utc::now()).await?;
                    failed_any = true;
                }
                job.lease_token = None;
                tracing::warn!(job_id = %job.id, status = %job.status, "{}", job.error_diag);
                self.store.save_job(&txn, &job).await?;
                n += 1;
            }
            if failed_any {
                self.finish_task_if_drained(&txn, &mut task, &mut events).await?;
            }
        }
        self.commit(txn, events).await?;
        Ok(n)
    }

    /// Jobs waiting and running per queue.
    ///
    /// # Errors
    /// Database failures.
    pub async fn queue_demand(&self, queues: &[String]) -> Result<Vec<QueueLoad>> {
        self.store.queue_load(&self.reads, queues).await
    }

    /// Records the queues a harvester serves.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for bad names or states.
    pub async fn register_queues(&self, queues: Vec<Queue>) -> Result<()> {
        for (i, q) in queues.iter().enumerate() {
            panda_types::QueueName::new(q.name.clone()).map_err(|e| Error::invalid(format!("queues[{i}].name"), e))?;
            if !q.site.is_empty() {
                panda_types::ids::check_name(&q.site, 255)
                    .map_err(|e| Error::invalid(format!("queues[{i}].site"), e))?;
            }
            for (j, runtime) in q.containers.iter().enumerate() {
                if !panda_types::spec::CONTAINER_RUNTIMES.contains(&runtime.as_str()) {
                    return Err(Error::invalid(
                        format!("queues[{i}].containers[{j}]"),
                        format!(
                            "{runtime:?} is not a container runtime; allowed: {}",
                            panda_types::spec::CONTAINER_RUNTIMES.join(", ")
                        ),
                    ));
                }
            }
            if !matches!(q.status.as_str(), "online" | "offline" | "test" | "brokeroff") {
                return Err(Error::invalid(
                    format!("queues[{i}].status"),
                    format!("{:?} is not a queue state; allowed: online, offline, test, brokeroff", q.status),
                ));
            }
        }
        let txn = self.db.begin().await?;
        self.store.upsert_queues(&txn, &queues).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Every known queue with its load and its workers (fresh harvester reports).
    ///
    /// # Errors
    /// Database failures.
    pub async fn list_queues(&self) -> Result<Vec<(Queue, QueueLoad, QueueWorkers)>> {
        let queues = self.store.list_queues(&self.reads).await?;
        let loads = self.store.queue_load(&self.reads, &[]).await?;
        let mut workers = self.queue_workers().await?;
        Ok(queues
            .into_iter()
            .map(|q| {
                let load = loads
                    .iter()
                    .find(|l| l.queue == q.name)
                    .cloned()
                    .unwrap_or_else(|| QueueLoad { queue: q.name.clone(), ..Default::default() });
                let workers = workers.remove(&q.name).unwrap_or_default();
                (q, load, workers)
            })
            .collect())
    }

    /// A dataset and its files.
    ///
    /// # Errors
    /// NOT_FOUND.
    pub async fn get_dataset(&self, name: &str) -> Result<Dataset> {
        self.store.get_dataset(&self.reads, name).await?.ok_or_else(|| Error::DatasetNotFound { name: name.to_owned() })
    }

    /// Jobs by filter.
    ///
    /// # Errors
    /// Database failures.
    pub async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<Job>> {
        self.store.list_jobs(&self.reads, &filter).await
    }

    /// One job.
    ///
    /// # Errors
    /// NOT_FOUND.
    pub async fn show_job(&self, job_id: JobId) -> Result<Job> {
        self.store.get_job(&self.reads, job_id).await?.ok_or(Error::JobNotFound { job_id })
    }

    /// The output files (size, checksum, state) that `jobs` hold now, by job: what ListJobs and
    /// ShowJob report beside each job's declared names (scouts' output sizes come from here).
    ///
    /// # Errors
    /// Database failures.
    pub async fn outputs_of_jobs(&self, jobs: &[JobId]) -> Result<std::collections::HashMap<JobId, Vec<FileRecord>>> {
        self.store.outputs_of_jobs(&self.reads, jobs).await
    }
}

/// The task (and job) an event is about.
fn apply_metrics(job: &mut Job, report: &JobReport) {
    if report.exit_code.is_some() {
        job.exit_code = report.exit_code;
    }
    if report.error_code != 0 {
        job.error_code = report.error_code;
    }
    if !report.error_diag.is_empty() {
        job.error_diag = truncate(&report.error_diag, 2000);
    }
    if !report.stdout_tail.is_empty() {
        job.stdout_tail = truncate(&report.stdout_tail, 4096);
    }
    if !report.stderr_tail.is_empty() {
        job.stderr_tail = truncate(&report.stderr_tail, 4096);
    }
    job.cpu_time_seconds = job.cpu_time_seconds.max(report.cpu_time_seconds);
    job.wall_time_seconds = job.wall_time_seconds.max(report.wall_time_seconds);
    job.max_rss_kb = job.max_rss_kb.max(report.max_rss_kb);
}

/// Keeps the last `max` bytes (on a character boundary): tails matter more than heads.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

fn validate_new_jobs(jobs: &[NewJob]) -> Result<()> {
    let mut errors = Vec::new();
    if jobs.is_empty() {
        errors.push(panda_types::FieldError::new("jobs", "must not be empty"));
    }
    let mut indices = BTreeSet::new();
    let mut outputs = BTreeSet::new();
    for (i, job) in jobs.iter().enumerate() {
        if let Err(e) = panda_types::QueueName::new(job.queue.clone()) {
            errors.push(panda_types::FieldError::new(format!("jobs[{i}].queue"), e));
        }
        if job.command.trim().is_empty() {
            errors.push(panda_types::FieldError::new(format!("jobs[{i}].command"), "must not be empty"));
        }
        if !indices.insert(job.job_index) {
            errors.push(panda_types::FieldError::new(
                format!("jobs[{i}].job_index"),
                format!("{} is repeated", job.job_index),
            ));
        }
        for lfn in &job.output_files {
            if !outputs.insert(lfn.clone()) {
                errors.push(panda_types::FieldError::new(
                    format!("jobs[{i}].output_files"),
                    format!("{lfn:?} is repeated"),
                ));
            }
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(Error::InvalidArgument(errors)) }
}
