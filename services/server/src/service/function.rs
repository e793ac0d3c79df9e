//! Function-as-a-Task use cases (the Python SDK's `@work`): a work is one task with one job per
//! call. Submitting stores the task, the work and every call's arguments in one transaction; a
//! job's runtime reads its call and stores its result; a job that ends without a result gets a
//! failure result ([`FailureResults`], a consumer of `job.failed|cancelled|closed`), so that no
//! caller waits for a result that cannot come. Every stored result is published as
//! `function.result.<task_id>` in the transaction that stores it (outbox).

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::Utc;
use panda_bus::{Envelope, HandleError, Handler};
use panda_proto::events::v1::{JobStatusChanged, TaskStatusChanged};
use panda_proto::server::v1::{FunctionError, FunctionResult};
use panda_types::spec::{MAX_JOBS_PER_TASK, TaskSpecDraft};
use panda_types::{FieldError, JobId, JobStatus, StateMachine, TaskId, TaskStatus};
use prost::Message;
use sea_orm::TransactionTrait;
use tracing::{info, instrument};

use super::{Registered, Service};
use crate::error::{Error, Result};
use crate::events;
use crate::store::function::{CallRecord, ResultRecord, WorkRecord};

/// Largest serialized argument set of one call.
pub const MAX_ARGS_BYTES: usize = 1 << 20;
/// Largest serialized result (value, or error with traceback).
pub const MAX_RESULT_BYTES: usize = 4 << 20;
/// Most calls one GetCalls reads, and most results one PutResults stores.
pub const MAX_CALLS_PER_READ: usize = 1000;
/// The serializers the SDK's runtime knows.
pub const SERIALIZERS: &[&str] = &["json", "pickle"];

/// Routing key of a work's results on the bus.
pub fn result_topic(task_id: TaskId) -> String {
    format!("function.result.{}", task_id.0)
}

/// A work to submit.
#[derive(Debug, Clone)]
pub struct NewWork {
    /// The task (its command runs the runtime); `n_jobs` is set from the calls.
    pub task: TaskSpecDraft,
    /// `<module>:<qualified name>`.
    pub function: String,
    /// `json` or `pickle`.
    pub serializer: String,
    /// `(key, serialized arguments)` per job, in job index order.
    pub calls: Vec<(String, Vec<u8>)>,
    /// The command of a warm runtime for the work's jobs (see [`WARM_RUNTIME_ENV`]).
    pub warm_command: Option<String>,
}

/// The job environment variable naming a work's warm runtime command: a pilot may start it once
/// and feed it several jobs (a line protocol on its stdin and stdout, see the pilot's `warm`
/// module). Reserved (`PANDA_*`): the server sets it on the jobs of a work submitted with one
/// (at InsertJobs, from the work's row; tasks cannot carry `PANDA_*` variables).
pub const WARM_RUNTIME_ENV: &str = "PANDA_WARM_RUNTIME";
/// Longest warm runtime command.
pub const MAX_WARM_COMMAND_BYTES: usize = 4096;

/// Checks what the task validation does not: the function, serializer and calls. Every problem
/// is reported, each naming its field.
fn validate_work(work: &mut NewWork) -> std::result::Result<(), Vec<FieldError>> {
    let mut problems = Vec::new();
    let mut bad = |field: String, message: String| problems.push(FieldError { field, message });
    match work.function.split_once(':') {
        Some((module, name)) if !module.is_empty() && !name.is_empty() && !name.contains(':') => {}
        _ => bad("function".into(), format!("must be <module>:<qualified name> (got {:?})", work.function)),
    }
    if !SERIALIZERS.contains(&work.serializer.as_str()) {
        bad("serializer".into(), format!("must be one of {SERIALIZERS:?} (got {:?})", work.serializer));
    }
    if work.calls.is_empty() {
        bad("calls".into(), "must hold at least one call (one job per call)".into());
    }
    if work.calls.len() > MAX_JOBS_PER_TASK as usize {
        bad("calls".into(), format!("at most {MAX_JOBS_PER_TASK} calls per work (got {})", work.calls.len()));
    }
    if !work.task.input_datasets.is_empty() {
        bad("spec.input_datasets".into(), "must be empty: a work's jobs are its calls".into());
    }
    let n_calls = u32::try_from(work.calls.len()).unwrap_or(u32::MAX);
    if let Some(n) = work.task.n_jobs
        && n != n_calls
    {
        bad("spec.n_jobs".into(), format!("must be unset or the number of calls ({n_calls}); got {n}"));
    }
    let mut keys = HashSet::new();
    for (i, (key, args)) in work.calls.iter().enumerate() {
        if key.is_empty() || key.len() > 1000 {
            bad(format!("calls[{i}].key"), format!("must be 1..=1000 bytes (got {})", key.len()));
        } else if !keys.insert(key.as_str()) {
            bad(format!("calls[{i}].key"), format!("{key:?} is used by an earlier call; keys must be unique"));
        }
        if args.len() > MAX_ARGS_BYTES {
            bad(format!("calls[{i}].args"), format!("{} bytes; at most {MAX_ARGS_BYTES} per call", args.len()));
        }
    }
    if let Some(command) = &work.warm_command {
        if command.trim().is_empty() || command.len() > MAX_WARM_COMMAND_BYTES {
            bad("warm_command".into(), format!("must be 1..={MAX_WARM_COMMAND_BYTES} bytes (got {})", command.len()));
        } else if command.contains(['\n', '\r', '\0']) {
            bad("warm_command".into(), "must be one line (no newline, carriage return or NUL)".into());
        }
    }
    work.task.n_jobs = Some(n_calls);
    if problems.is_empty() { Ok(()) } else { Err(problems) }
}

/// What a failure result says about a job that ended without storing a result.
#[derive(Debug, Clone, Copy)]
struct Ended<'a> {
    job_id: JobId,
    task_id: TaskId,
    index: u32,
    status: JobStatus,
    error_code: u32,
    error_diag: &'a str,
    exit_code: Option<i32>,
    stderr_tail: &'a str,
}

impl<'a> From<&'a crate::model::Job> for Ended<'a> {
    fn from(job: &'a crate::model::Job) -> Self {
        Ended {
            job_id: job.id,
            task_id: job.task_id,
            index: job.job_index,
            status: job.status,
            error_code: job.error_code,
            error_diag: &job.error_diag,
            exit_code: job.exit_code,
            stderr_tail: &job.stderr_tail,
        }
    }
}

/// The failure result of a job that ended without storing one; the traceback field holds the
/// tail of its stderr.
fn failure_of(job: Ended<'_>, key: String) -> FunctionResult {
    let kind = match job.status {
        JobStatus::Cancelled => "JobCancelled",
        JobStatus::Closed => "JobClosed",
        JobStatus::Finished => "NoResult",
        _ => "JobFailed",
    };
    let mut message = format!("job {} {} without storing a result", job.job_id, job.status);
    if job.status == JobStatus::Finished {
        message.push_str(" (was its command the SDK runtime?)");
    }
    if !job.error_diag.is_empty() {
        message.push_str(&format!(": {}", job.error_diag));
    }
    if job.error_code != 0 {
        message.push_str(&format!(" (error code {})", job.error_code));
    }
    if let Some(code) = job.exit_code {
        message.push_str(&format!(" (exit code {code})"));
    }
    FunctionResult {
        task_id: job.task_id.0,
        index: job.index,
        key,
        job_id: job.job_id.0,
        ok: false,
        value: Vec::new(),
        serializer: String::new(),
        error: Some(FunctionError {
            r#type: kind.to_owned(),
            message,
            traceback: job.stderr_tail.to_owned(),
            log_location: log_location(job.job_id),
        }),
        duration_seconds: 0.0,
    }
}

/// Where a job's stdout and stderr can be read.
pub fn log_location(job_id: JobId) -> String {
    format!("panda job logs {job_id}")
}

impl Service {
    /// Stores a work: its task (`registered`, with the `task.registered` event), the work and its
    /// calls, in one transaction. A repeated idempotency key returns the first task.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming each bad field (task fields as `task.<field>`).
    #[instrument(skip_all, fields(function = %work.function, calls = work.calls.len()))]
    pub async fn submit_work(&self, mut work: NewWork, idempotency_key: Option<String>) -> Result<(TaskId, bool)> {
        let mut problems = validate_work(&mut work).err().unwrap_or_default();
        // A call's failure result is published when its job fails, so a call is not retried
        // unless the work asks (a raising function fails again; the caller sees the first error).
        if work.task.split.max_attempts.is_none() {
            work.task.split.max_attempts = Some(1);
        }
        let spec = match work.task.clone().validate() {
            Ok(spec) => Some(spec),
            Err(task_problems) => {
                problems.extend(task_problems);
                None
            }
        };
        let Some(mut spec) = spec.filter(|_| problems.is_empty()) else {
            return Err(Error::InvalidArgument(problems));
        };
        spec.share = self.shares().resolve(&spec.share).map_err(|e| Error::invalid("task.share", e))?;
        if let Some(key) = &idempotency_key
            && key.len() > 200
        {
            return Err(Error::invalid(
                "idempotency_key",
                format!("must be at most 200 characters (got {})", key.len()),
            ));
        }
        let txn = self.db.begin().await?;
        let task = match self.register_task(&txn, &spec, idempotency_key.as_deref()).await? {
            Registered::Existing(task) => return Ok((task.id, false)),
            Registered::New(task) => task,
        };
        let n_calls = u32::try_from(work.calls.len()).unwrap_or(u32::MAX);
        let record = WorkRecord {
            task_id: task.id,
            function: work.function,
            serializer: work.serializer,
            n_calls,
            warm_command: work.warm_command,
        };
        let calls: Vec<CallRecord> =
            work.calls.into_iter().zip(1u32..).map(|((key, args), index)| CallRecord { index, key, args }).collect();
        self.store.insert_work(&txn, &record, &calls).await?;
        self.commit(txn, vec![events::task_changed(&task, TaskStatus::Registered)]).await?;
        info!(entity = "work", id = %task.id, calls = n_calls, "work registered");
        Ok((task.id, true))
    }

    /// A work's function and one call's arguments.
    ///
    /// # Errors
    /// NOT_FOUND for a task that is not a work or an index it does not have.
    pub async fn get_call(&self, task_id: TaskId, index: u32) -> Result<(WorkRecord, CallRecord)> {
        let work = self.store.find_work(&self.reads, task_id).await?.ok_or(Error::WorkNotFound { task_id })?;
        let call = self.store.find_call(&self.reads, task_id, index).await?.ok_or(Error::CallNotFound {
            task_id,
            index,
            n_calls: work.n_calls,
        })?;
        Ok((work, call))
    }

    /// Stores the result a job's runtime computed, and publishes it. The job must be the one of
    /// the call's task and index and must not have ended. A stored success is kept (`false`).
    ///
    /// # Errors
    /// NOT_FOUND (job, work, call), FAILED_PRECONDITION (another task's or index's job, an ended
    /// job), INVALID_ARGUMENT (an oversized result).
    #[instrument(skip_all, fields(job_id = %job_id, index = result.index))]
    pub async fn put_result(&self, job_id: JobId, result: FunctionResult) -> Result<bool> {
        self.put_results(vec![(job_id, result)]).await?.pop().unwrap_or(Err(Error::JobNotFound { job_id }))
    }

    /// Stores several results (a warm runtime's batch) in one transaction, each checked as
    /// [`Service::put_result`] checks it: a refused one changes nothing and does not affect the
    /// others. Every stored result is published (outbox, same transaction).
    ///
    /// # Errors
    /// The outer error is a database failure (nothing was stored); the inner ones are each
    /// result's own, as for [`Service::put_result`].
    #[instrument(skip_all, fields(results = results.len()))]
    pub async fn put_results(&self, results: Vec<(JobId, FunctionResult)>) -> Result<Vec<Result<bool>>> {
        let ids: Vec<JobId> = results.iter().map(|(job_id, _)| *job_id).collect();
        let txn = self.db.begin().await?;
        let jobs = self.store.lock_jobs(&txn, &ids).await?;
        let mut works: HashMap<TaskId, Option<WorkRecord>> = HashMap::new();
        let mut events = Vec::new();
        let mut outcomes = Vec::with_capacity(results.len());
        for (job_id, result) in results {
            let outcome = self.put_one(&txn, jobs.get(&job_id), job_id, result, &mut works).await?;
            outcomes.push(outcome.map(|stored| match stored {
                Some(event) => {
                    events.push(event);
                    true
                }
                None => false,
            }));
        }
        self.commit(txn, events).await?;
        Ok(outcomes)
    }

    /// Checks one result against its job, work and call and stores it; the event to publish, or
    /// `None` when a success was stored already. The outer error is a database failure.
    async fn put_one(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        job: Option<&crate::model::Job>,
        job_id: JobId,
        mut result: FunctionResult,
        works: &mut HashMap<TaskId, Option<WorkRecord>>,
    ) -> Result<Result<Option<Envelope>>> {
        if result.encoded_len() > MAX_RESULT_BYTES {
            return Ok(Err(Error::invalid(
                "result",
                format!("{} bytes; a result may hold at most {MAX_RESULT_BYTES}", result.encoded_len()),
            )));
        }
        let task_id = TaskId(result.task_id);
        let Some(job) = job else { return Ok(Err(Error::JobNotFound { job_id })) };
        if job.task_id != task_id || job.job_index != result.index {
            return Ok(Err(Error::ResultRefused {
                job_id,
                reason: format!(
                    "the job runs call {} of task {}, not call {} of task {}",
                    job.job_index, job.task_id, result.index, task_id
                ),
            }));
        }
        if job.status.is_final() {
            return Ok(Err(Error::ResultRefused { job_id, reason: format!("the job is {}", job.status) }));
        }
        let work = match works.get(&task_id) {
            Some(work) => work.clone(),
            None => {
                let work = self.store.find_work(txn, task_id).await?;
                works.insert(task_id, work.clone());
                work
            }
        };
        let Some(work) = work else { return Ok(Err(Error::WorkNotFound { task_id })) };
        let Some(call) = self.store.find_call(txn, task_id, result.index).await? else {
            return Ok(Err(Error::CallNotFound { task_id, index: result.index, n_calls: work.n_calls }));
        };
        if self.store.find_result(txn, task_id, result.index).await?.is_some_and(|stored| stored.ok) {
            return Ok(Ok(None));
        }
        result.job_id = job_id.0;
        result.key = call.key;
        if result.ok {
            result.error = None;
            result.serializer.clone_from(&work.serializer);
        } else if let Some(error) = result.error.as_mut() {
            error.log_location = log_location(job_id);
        }
        Ok(Ok(Some(self.store_result(txn, task_id, &result).await?)))
    }

    /// A work's function and the calls at `indexes` (in that order), read at once.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for no index or more than [`MAX_CALLS_PER_READ`]; NOT_FOUND for a task
    /// that is not a work or an index it does not have (the first one missing is named).
    pub async fn get_calls(&self, task_id: TaskId, indexes: &[u32]) -> Result<(WorkRecord, Vec<CallRecord>)> {
        if indexes.is_empty() || indexes.len() > MAX_CALLS_PER_READ {
            return Err(Error::invalid(
                "indexes",
                format!("must name 1 to {MAX_CALLS_PER_READ} job indexes (got {})", indexes.len()),
            ));
        }
        let work = self.store.find_work(&self.reads, task_id).await?.ok_or(Error::WorkNotFound { task_id })?;
        let found = self.store.find_calls(&self.reads, task_id, indexes).await?;
        let mut calls = Vec::with_capacity(indexes.len());
        for &index in indexes {
            let call =
                found.get(&index).cloned().ok_or(Error::CallNotFound { task_id, index, n_calls: work.n_calls })?;
            calls.push(call);
        }
        Ok((work, calls))
    }

    async fn store_result(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        task_id: TaskId,
        result: &FunctionResult,
    ) -> Result<Envelope> {
        let record = ResultRecord {
            index: result.index,
            job_id: JobId(result.job_id),
            ok: result.ok,
            body: result.encode_to_vec(),
        };
        self.store.upsert_result(txn, task_id, &record, Utc::now()).await?;
        Ok(Envelope::new(result_topic(task_id), result))
    }

    /// Every stored result of a work (index order) and its number of calls.
    ///
    /// # Errors
    /// NOT_FOUND for a task that is not a work.
    pub async fn list_results(&self, task_id: TaskId) -> Result<(Vec<FunctionResult>, u32)> {
        let work = self.store.find_work(&self.reads, task_id).await?.ok_or(Error::WorkNotFound { task_id })?;
        let rows = self.store.results_of(&self.reads, task_id).await?;
        let mut results = Vec::with_capacity(rows.len());
        for row in rows {
            let result = FunctionResult::decode(row.body.as_slice()).map_err(|error| Error::Corrupt {
                what: format!("function result {task_id}/{}", row.index),
                detail: error.to_string(),
            })?;
            results.push(result);
        }
        Ok((results, work.n_calls))
    }

    /// Gives a job of a work that ended without a result a failure result (idempotent: a job
    /// with a stored result, a job still running or a task that is no work changes nothing).
    ///
    /// # Errors
    /// Database failures.
    pub async fn record_job_end(&self, task_id: TaskId, job_id: JobId) -> Result<bool> {
        // Most ended jobs are no work's: one read, no transaction, for them.
        if self.store.find_work(&self.reads, task_id).await?.is_none() {
            return Ok(false);
        }
        self.record_work_job_end(job_id).await
    }

    /// [`Service::record_job_end`] for a job known to be of a work.
    async fn record_work_job_end(&self, job_id: JobId) -> Result<bool> {
        // Most jobs of a work stored their result before ending (results are never removed):
        // one read, no transaction, for them.
        if let Some(job) = self.store.get_job(&self.reads, job_id).await?
            && job.status.is_final()
            && self.store.find_result(&self.reads, job.task_id, job.job_index).await?.is_some()
        {
            return Ok(false);
        }
        let txn = self.db.begin().await?;
        let Some(job) = self.store.lock_job(&txn, job_id).await? else { return Ok(false) };
        if !job.status.is_final() {
            return Ok(false);
        }
        let Some(call) = self.store.find_call(&txn, job.task_id, job.job_index).await? else { return Ok(false) };
        if self.store.find_result(&txn, job.task_id, job.job_index).await?.is_some() {
            return Ok(false);
        }
        let failure = failure_of(Ended::from(&job), call.key);
        let event = self.store_result(&txn, job.task_id, &failure).await?;
        self.commit(txn, vec![event]).await?;
        info!(entity = "work", id = %job.task_id, job_id = %job_id, "failure result for a job that ended without one");
        Ok(true)
    }
}

impl Service {
    /// Gives every call of an ended work's task that has no result a failure result (a task
    /// killed or broken before its jobs existed, or whose jobs never reported). Idempotent.
    ///
    /// # Errors
    /// Database failures.
    pub async fn record_task_end(&self, task_id: TaskId) -> Result<usize> {
        if self.store.find_work(&self.reads, task_id).await?.is_none() {
            return Ok(0);
        }
        let txn = self.db.begin().await?;
        let Some(task) = self.store.lock_task(&txn, task_id).await? else { return Ok(0) };
        if !task.status.is_final() {
            return Ok(0);
        }
        let missing = self.store.calls_without_result(&txn, task_id).await?;
        let mut events = Vec::with_capacity(missing.len());
        for (index, key) in missing {
            let mut message = format!("task {task_id} ended {} before call {index} stored a result", task.status);
            if !task.error_diag.is_empty() {
                message.push_str(&format!(": {}", task.error_diag));
            }
            let failure = FunctionResult {
                task_id: task_id.0,
                index,
                key,
                ok: false,
                error: Some(FunctionError {
                    r#type: format!("Task{}", capitalized(&task.status.to_string())),
                    message,
                    traceback: String::new(),
                    log_location: format!("panda task show {task_id}"),
                }),
                ..Default::default()
            };
            events.push(self.store_result(&txn, task_id, &failure).await?);
        }
        let n = events.len();
        self.commit(txn, events).await?;
        if n > 0 {
            info!(entity = "work", id = %task_id, calls = n, "failure results for calls of an ended task");
        }
        Ok(n)
    }
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// Bus consumer: a job of a work that ended (`job.finished`, `job.failed`, `job.cancelled`,
/// `job.closed`) without a result gets a failure result; so does every unanswered call of a work
/// whose task ended (`task.<final state>`).
///
/// Every ended job of the system passes here, and most are no work's. A task's work row is written
/// in the task's own transaction, so a task seen without one never gets one: those task ids are
/// remembered, and the rest of their jobs cost no database read (one read per task, not per job,
/// on the dispatch hot path).
pub struct FailureResults {
    service: Service,
    not_works: std::sync::Mutex<std::collections::HashSet<TaskId>>,
    /// Tasks seen to be works (a work row is never removed): their jobs skip that read too.
    works: std::sync::Mutex<std::collections::HashSet<TaskId>>,
}

/// Tasks remembered as not being works before the set starts over (a forgotten task costs one
/// more read).
const NOT_WORKS_REMEMBERED: usize = 100_000;

impl FailureResults {
    /// The consumer for `service`.
    pub fn new(service: Service) -> Self {
        Self { service, not_works: std::sync::Mutex::default(), works: std::sync::Mutex::default() }
    }

    /// Whether `task_id` is a work (remembering those that are not).
    async fn is_work(&self, task_id: TaskId) -> Result<bool> {
        let not_works = || self.not_works.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let works = || self.works.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if not_works().contains(&task_id) {
            return Ok(false);
        }
        if works().contains(&task_id) {
            return Ok(true);
        }
        if self.service.store.find_work(&self.service.db, task_id).await?.is_some() {
            let mut known = works();
            if known.len() >= NOT_WORKS_REMEMBERED {
                known.clear();
            }
            known.insert(task_id);
            return Ok(true);
        }
        let mut remembered = not_works();
        if remembered.len() >= NOT_WORKS_REMEMBERED {
            remembered.clear();
        }
        remembered.insert(task_id);
        Ok(false)
    }
}

/// The job and task events [`FailureResults`] follows (final states).
pub const FAILURE_BINDINGS: &[&str] = &[
    "job.finished",
    "job.failed",
    "job.cancelled",
    "job.closed",
    "task.done",
    "task.finished",
    "task.failed",
    "task.aborted",
    "task.broken",
];

#[async_trait]
impl Handler for FailureResults {
    async fn handle(&self, event: &Envelope) -> std::result::Result<(), HandleError> {
        let retry = |error: Error| HandleError::Retry(panda_runtime::error::chain(&error));
        let reject = |error: panda_bus::Error| HandleError::Reject(error.to_string());
        if event.routing_key.starts_with("task.") {
            let body: TaskStatusChanged = event.decode().map_err(reject)?;
            if !self.is_work(TaskId(body.task_id)).await.map_err(retry)? {
                return Ok(());
            }
            self.service.record_task_end(TaskId(body.task_id)).await.map(|_| ()).map_err(retry)
        } else {
            let body: JobStatusChanged = event.decode().map_err(reject)?;
            if !self.is_work(TaskId(body.task_id)).await.map_err(retry)? {
                return Ok(());
            }
            self.service.record_work_job_end(JobId(body.job_id)).await.map(|_| ()).map_err(retry)
        }
    }
}

#[cfg(test)]
mod tests;
