//! The server's persistent state: tasks, datasets, files, jobs and queues. Methods are named for
//! use cases, take any connection (the pool or the caller's transaction: the service layer owns
//! transactions) and speak domain types; row types never leave this module.
//!
//! Concurrency: `lock_task` and `lock_job` take row locks on PostgreSQL (`FOR UPDATE`), and
//! `claim_jobs` skips rows another dispatcher holds (`FOR UPDATE SKIP LOCKED`), so replicas never
//! hand out a job twice. SQLite runs one writer at a time, which gives the same guarantees.

mod bulk;
mod cache;
mod catalog;
mod entities;
pub mod function;
#[cfg(test)]
mod live_index_tests;
mod logs;
pub mod migration;
mod workers;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use panda_types::{
    DataActor, DatasetStatus, FileStatus, JobId, JobStatus, Resources, StateMachine, TaskId, TaskSpec, TaskStatus,
};
use sea_orm::sea_query::{Expr, LockBehavior, LockType};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QuerySelect, Set,
};

use self::entities::{dataset, file, job, queue, task};
use crate::error::{Error, Result};
use crate::model::{
    Dataset, ErrorSource, FileRecord, Job, JobCounts, NewJob, OutputFile, Queue, QueueLoad, StateTimes, Task,
};

pub use self::cache::ArchiveRecord;
pub use self::catalog::CatalogEntry;
pub use self::logs::LogSizes;

/// Filters of `list_tasks`.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    /// Only these states (empty: all).
    pub statuses: Vec<TaskStatus>,
    /// Only this owner.
    pub user: Option<String>,
    /// Page size.
    pub limit: u64,
    /// Only tasks with a smaller id.
    pub before: Option<TaskId>,
    /// Only tasks whose name contains this text.
    pub name_contains: Option<String>,
    /// Only tasks created at or after this time.
    pub created_after: Option<DateTime<Utc>>,
    /// Only tasks created before this time.
    pub created_before: Option<DateTime<Utc>>,
    /// Oldest first (paged with `after`) instead of newest first.
    pub oldest_first: bool,
    /// With `oldest_first`: only tasks with a larger id.
    pub after: Option<TaskId>,
}

/// Filters of `list_jobs`.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this task.
    pub task_id: Option<TaskId>,
    /// Only these states (empty: all).
    pub statuses: Vec<JobStatus>,
    /// Page size.
    pub limit: u64,
    /// Only jobs with a larger id.
    pub after: Option<JobId>,
    /// Only jobs of this queue.
    pub queue: Option<String>,
}

/// What narrows a claim beyond its queue and offer (the default: nothing).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClaimFilter<'a> {
    /// Only this global share (index `jobs_activated_share`).
    pub share: Option<&'a str>,
    /// Only this task: a pilot keeping a warm runtime asks for more jobs of its task.
    pub task: Option<TaskId>,
    /// Not these: jobs this transaction claimed already (still activated until marked sent).
    pub except: &'a [JobId],
}

/// Access to the server tables.
#[derive(Debug, Clone, Copy)]
pub struct Store {
    backend: DbBackend,
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn corrupt(what: impl Into<String>, detail: impl ToString) -> Error {
    Error::Corrupt { what: what.into(), detail: detail.to_string() }
}

fn parse_status<S: std::str::FromStr>(what: &str, id: i64, text: &str) -> Result<S>
where
    S::Err: ToString,
{
    text.parse().map_err(|e: S::Err| corrupt(format!("{what} {id}"), e))
}

fn task_from_row(row: task::Model) -> Result<Task> {
    let spec: TaskSpec = serde_json::from_str(&row.spec_json).map_err(|e| corrupt(format!("task {}", row.id), e))?;
    Ok(Task {
        id: TaskId(row.id as u64),
        status: parse_status("task", row.id, &row.status)?,
        spec,
        error_diag: row.error_diag,
        idempotency_key: row.idempotency_key,
        created_at: row.created_at,
        modified_at: row.modified_at,
        awaits_input: row.awaits_input,
    })
}

fn job_from_row(row: job::Model) -> Result<Job> {
    let json = |text: &str| -> Result<Vec<String>> {
        serde_json::from_str(text).map_err(|e| corrupt(format!("job {}", row.id), e))
    };
    let environment: BTreeMap<String, String> =
        serde_json::from_str(&row.environment_json).map_err(|e| corrupt(format!("job {}", row.id), e))?;
    Ok(Job {
        id: JobId(row.id as u64),
        task_id: TaskId(row.task_id as u64),
        job_index: row.job_index as u32,
        status: parse_status("job", row.id, &row.status)?,
        queue: row.queue.clone(),
        attempt_nr: row.attempt_nr as u32,
        command: row.command.clone(),
        environment,
        input_files: json(&row.input_files_json)?,
        output_files: json(&row.output_files_json)?,
        resources: Resources {
            cores: row.cores as u32,
            memory_mb: row.memory_mb as u64,
            disk_mb: row.disk_mb as u64,
            walltime_seconds: row.walltime_seconds as u64,
        },
        priority: row.priority,
        lease_token: row.lease_token,
        command_to_pilot: row.command_to_pilot,
        exit_code: row.exit_code,
        error_code: row.error_code as u32,
        error_diag: row.error_diag,
        stdout_tail: row.stdout_tail,
        stderr_tail: row.stderr_tail,
        cpu_time_seconds: row.cpu_time_seconds,
        wall_time_seconds: row.wall_time_seconds,
        max_rss_kb: row.max_rss_kb as u64,
        node: row.node,
        worker_id: row.worker_id,
        created_at: row.created_at,
        started_at: row.started_at,
        ended_at: row.ended_at,
        modified_at: row.modified_at,
        heartbeat_at: row.heartbeat_at,
        state_times: StateTimes::from_json(row.state_times_json),
        error_source: ErrorSource::parse(&row.error_source),
        merge: row.merge,
        share: row.share,
        row_version: row.row_version as u64,
    })
}

#[derive(Debug, FromQueryResult)]
struct StatusCount {
    status: String,
    n: i64,
}

#[derive(Debug, FromQueryResult)]
struct TaskStatusCount {
    task_id: i64,
    status: String,
    n: i64,
}

#[derive(Debug, FromQueryResult)]
struct ShareStatusCount {
    queue: String,
    share: String,
    status: String,
    n: i64,
}

/// Live jobs of one queue and share: queued (activated) or held by pilots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareCount {
    /// Queue.
    pub queue: String,
    /// Share name as stored (empty: jobs from before shares).
    pub share: String,
    /// Activated (true) or sent/starting/running (false).
    pub queued: bool,
    /// Jobs.
    pub n: u64,
}

/// The predicate of the partial index `jobs_live` (migration m0013), word for word. Queries over
/// live jobs add it to their WHERE clause: the database uses a partial index only for a query
/// whose WHERE clause contains the index's, and a bound `status IN (?, ...)` never does.
pub(crate) const LIVE_JOBS: &str = "status NOT IN ('finished', 'failed', 'cancelled', 'closed')";

/// The states a queue's load and a share's usage count: queued at the queue or held by a pilot.
const LOAD_STATUSES: [JobStatus; 4] = [JobStatus::Activated, JobStatus::Sent, JobStatus::Starting, JobStatus::Running];

/// [`LIVE_JOBS`] as a filter.
fn live_jobs() -> sea_orm::sea_query::SimpleExpr {
    Expr::cust(LIVE_JOBS)
}

#[derive(Debug, FromQueryResult)]
struct QueueStatusCount {
    queue: String,
    status: String,
    n: i64,
}

impl Store {
    /// A store for the given backend (row locks exist only on PostgreSQL).
    pub fn new(backend: DbBackend) -> Self {
        Self { backend }
    }

    fn locking<S: QuerySelect>(&self, query: S) -> S {
        if self.backend == DbBackend::Postgres { query.lock(LockType::Update) } else { query }
    }

    /// Inserts a task in `registered`.
    pub async fn insert_task(
        &self,
        conn: &impl ConnectionTrait,
        spec: &TaskSpec,
        idempotency_key: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Task> {
        let spec_json = serde_json::to_string(spec).map_err(|e| corrupt("new task", e))?;
        let row = task::ActiveModel {
            name: Set(spec.name.clone()),
            user_name: Set(spec.user.clone()),
            status: Set(TaskStatus::Registered.as_str().to_owned()),
            spec_json: Set(spec_json),
            error_diag: Set(String::new()),
            idempotency_key: Set(idempotency_key.map(str::to_owned)),
            awaits_input: Set(false),
            created_at: Set(now),
            modified_at: Set(now),
            ..Default::default()
        }
        .insert(conn)
        .await?;
        task_from_row(row)
    }

    /// The task submitted with this idempotency key, if any.
    pub async fn find_task_by_key(&self, conn: &impl ConnectionTrait, key: &str) -> Result<Option<Task>> {
        task::Entity::find()
            .filter(task::Column::IdempotencyKey.eq(key))
            .one(conn)
            .await?
            .map(task_from_row)
            .transpose()
    }

    /// A task.
    pub async fn get_task(&self, conn: &impl ConnectionTrait, id: TaskId) -> Result<Option<Task>> {
        task::Entity::find_by_id(to_i64(id.0)).one(conn).await?.map(task_from_row).transpose()
    }

    /// A task, locked until the end of the caller's transaction.
    pub async fn lock_task(&self, conn: &impl ConnectionTrait, id: TaskId) -> Result<Option<Task>> {
        self.locking(task::Entity::find_by_id(to_i64(id.0))).one(conn).await?.map(task_from_row).transpose()
    }

    /// Sets a task's state (the caller checked the transition) and optionally its diagnostic.
    pub async fn set_task_status(
        &self,
        conn: &impl ConnectionTrait,
        id: TaskId,
        status: TaskStatus,
        error_diag: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut update = task::Entity::update_many()
            .col_expr(task::Column::Status, Expr::value(status.as_str()))
            .col_expr(task::Column::ModifiedAt, Expr::value(now));
        if let Some(diag) = error_diag {
            update = update.col_expr(task::Column::ErrorDiag, Expr::value(diag));
        }
        update.filter(task::Column::Id.eq(to_i64(id.0))).exec(conn).await?;
        Ok(())
    }

    /// Remembers (or forgets) where a paused task returns to.
    pub async fn set_task_old_status(
        &self,
        conn: &impl ConnectionTrait,
        id: TaskId,
        old: Option<TaskStatus>,
    ) -> Result<()> {
        task::Entity::update_many()
            .col_expr(task::Column::OldStatus, Expr::value(old.map(|s| s.as_str())))
            .filter(task::Column::Id.eq(to_i64(id.0)))
            .exec(conn)
            .await?;
        Ok(())
    }

    /// Marks whether a task waits for more input files (an input dataset was open when JEDI read
    /// it), so that it does not end when its jobs have.
    pub async fn set_task_awaits_input(&self, conn: &impl ConnectionTrait, id: TaskId, awaits: bool) -> Result<()> {
        task::Entity::update_many()
            .col_expr(task::Column::AwaitsInput, Expr::value(awaits))
            .filter(task::Column::Id.eq(to_i64(id.0)))
            .exec(conn)
            .await?;
        Ok(())
    }

    /// Where a paused task returns to.
    pub async fn task_old_status(&self, conn: &impl ConnectionTrait, id: TaskId) -> Result<Option<TaskStatus>> {
        let row = task::Entity::find_by_id(to_i64(id.0)).one(conn).await?;
        match row.and_then(|r| r.old_status) {
            Some(text) => Ok(Some(parse_status("task", to_i64(id.0), &text)?)),
            None => Ok(None),
        }
    }

    /// Changes a task's priority (in its spec) and that of its jobs not yet dispatched.
    pub async fn set_task_priority(
        &self,
        conn: &impl ConnectionTrait,
        task: &Task,
        priority: i32,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut spec = task.spec.clone();
        spec.priority = priority;
        task::Entity::update_many()
            .col_expr(task::Column::SpecJson, Expr::value(to_json(&spec)))
            .col_expr(task::Column::ModifiedAt, Expr::value(now))
            .filter(task::Column::Id.eq(to_i64(task.id.0)))
            .exec(conn)
            .await?;
        let queued: Vec<&str> = JobStatus::ALL.iter().filter(|s| s.is_queued()).map(|s| s.as_str()).collect();
        job::Entity::update_many()
            .col_expr(job::Column::Priority, Expr::value(priority))
            .col_expr(job::Column::ModifiedAt, Expr::value(now))
            .col_expr(job::Column::RowVersion, bumped_row_version())
            .filter(job::Column::TaskId.eq(to_i64(task.id.0)))
            .filter(job::Column::Status.is_in(queued))
            .exec(conn)
            .await?;
        Ok(())
    }

    /// Tasks, newest first.
    pub async fn list_tasks(&self, conn: &impl ConnectionTrait, filter: &TaskFilter) -> Result<Vec<Task>> {
        let mut query = task::Entity::find().limit(filter.limit);
        query = if filter.oldest_first {
            if let Some(after) = filter.after {
                query = query.filter(task::Column::Id.gt(to_i64(after.0)));
            }
            query.order_by_asc(task::Column::Id)
        } else {
            query.order_by_desc(task::Column::Id)
        };
        if !filter.statuses.is_empty() {
            query = query.filter(task::Column::Status.is_in(filter.statuses.iter().map(|s| s.as_str())));
        }
        if let Some(user) = &filter.user {
            query = query.filter(task::Column::UserName.eq(user.as_str()));
        }
        if let Some(before) = filter.before.filter(|_| !filter.oldest_first) {
            query = query.filter(task::Column::Id.lt(to_i64(before.0)));
        }
        if let Some(text) = &filter.name_contains {
            query = query.filter(task::Column::Name.contains(text.as_str()));
        }
        if let Some(after) = filter.created_after {
            query = query.filter(task::Column::CreatedAt.gte(after));
        }
        if let Some(before) = filter.created_before {
            query = query.filter(task::Column::CreatedAt.lt(before));
        }
        query.all(conn).await?.into_iter().map(task_from_row).collect()
    }

    /// Jobs of a task by state.
    pub async fn job_counts(&self, conn: &impl ConnectionTrait, task_id: TaskId) -> Result<JobCounts> {
        let rows = job::Entity::find()
            .select_only()
            .column(job::Column::Status)
            .column_as(job::Column::Id.count(), "n")
            .filter(job::Column::TaskId.eq(to_i64(task_id.0)))
            .filter(job::Column::Superseded.eq(false))
            .group_by(job::Column::Status)
            .into_model::<StatusCount>()
            .all(conn)
            .await?;
        let mut counts = JobCounts::default();
        for row in rows {
            let status: JobStatus = parse_status("job count of task", to_i64(task_id.0), &row.status)?;
            counts.add(status, row.n as u32);
        }
        Ok(counts)
    }

    /// Whether a task still has a job that has not ended (current attempts). An indexed probe, so
    /// the check after every job's end does not scan the task's jobs.
    pub async fn has_unfinished_jobs(&self, conn: &impl ConnectionTrait, task_id: TaskId) -> Result<bool> {
        let live: Vec<&str> = JobStatus::ALL.iter().filter(|s| !s.is_final()).map(|s| s.as_str()).collect();
        let found = job::Entity::find()
            .select_only()
            .column(job::Column::Id)
            .filter(job::Column::TaskId.eq(to_i64(task_id.0)))
            .filter(job::Column::Status.is_in(live))
            .filter(job::Column::Superseded.eq(false))
            .limit(1)
            .into_tuple::<i64>()
            .one(conn)
            .await?;
        Ok(found.is_some())
    }

    /// Whether a task has merge jobs (current attempts or not).
    pub async fn has_merge_jobs(&self, conn: &impl ConnectionTrait, task_id: TaskId) -> Result<bool> {
        let found = job::Entity::find()
            .select_only()
            .column(job::Column::Id)
            .filter(job::Column::TaskId.eq(to_i64(task_id.0)))
            .filter(job::Column::Merge.eq(true))
            .limit(1)
            .into_tuple::<i64>()
            .one(conn)
            .await?;
        Ok(found.is_some())
    }

    /// Running or aborting tasks with no live job left (normally ended right after their last job;
    /// this finds those whose check was lost).
    pub async fn drained_active_tasks(&self, conn: &impl ConnectionTrait, limit: u64) -> Result<Vec<TaskId>> {
        let quote = |s: &str| format!("'{s}'");
        // Only our own state names go into the text: nothing from a request.
        let live: Vec<String> = JobStatus::ALL.iter().filter(|s| !s.is_final()).map(|s| quote(s.as_str())).collect();
        let sql = format!(
            "SELECT id FROM tasks WHERE status IN ({}, {}) AND NOT EXISTS \
             (SELECT 1 FROM jobs WHERE jobs.task_id = tasks.id AND jobs.superseded = false AND jobs.status IN ({})) \
             ORDER BY id LIMIT {limit}",
            quote(TaskStatus::Running.as_str()),
            quote(TaskStatus::Aborting.as_str()),
            live.join(", ")
        );
        let rows = conn.query_all_raw(sea_orm::Statement::from_string(self.backend, sql)).await?;
        rows.into_iter()
            .map(|row| row.try_get::<i64>("", "id").map(|id| TaskId(id as u64)).map_err(Error::from))
            .collect()
    }

    /// Job counts of several tasks in one query (a page of `list_tasks`).
    pub async fn job_counts_of(
        &self,
        conn: &impl ConnectionTrait,
        task_ids: &[TaskId],
    ) -> Result<std::collections::HashMap<TaskId, JobCounts>> {
        let mut counts = std::collections::HashMap::new();
        for chunk in task_ids.chunks(1000) {
            let rows = job::Entity::find()
                .select_only()
                .column(job::Column::TaskId)
                .column(job::Column::Status)
                .column_as(job::Column::Id.count(), "n")
                .filter(job::Column::TaskId.is_in(chunk.iter().map(|id| to_i64(id.0))))
                .filter(job::Column::Superseded.eq(false))
                .group_by(job::Column::TaskId)
                .group_by(job::Column::Status)
                .into_model::<TaskStatusCount>()
                .all(conn)
                .await?;
            for row in rows {
                let status: JobStatus = parse_status("job count of task", row.task_id, &row.status)?;
                counts.entry(TaskId(row.task_id as u64)).or_insert_with(JobCounts::default).add(status, row.n as u32);
            }
        }
        Ok(counts)
    }

    /// Creates a dataset in its entry state: `defined` for a task's output, `done` for a complete
    /// dataset registered in the catalog from outside.
    pub async fn insert_dataset(
        &self,
        conn: &impl ConnectionTrait,
        name: &str,
        task_id: TaskId,
        status: DatasetStatus,
        now: DateTime<Utc>,
    ) -> Result<()> {
        dataset::ActiveModel {
            name: Set(name.to_owned()),
            task_id: Set(to_i64(task_id.0)),
            status: Set(status.as_str().to_owned()),
            created_at: Set(now),
            modified_at: Set(now),
            ..Default::default()
        }
        .insert(conn)
        .await?;
        Ok(())
    }

    /// Name, producing task and state of a dataset.
    pub async fn find_dataset(
        &self,
        conn: &impl ConnectionTrait,
        name: &str,
    ) -> Result<Option<(i64, TaskId, DatasetStatus)>> {
        let Some(row) = dataset::Entity::find().filter(dataset::Column::Name.eq(name)).one(conn).await? else {
            return Ok(None);
        };
        Ok(Some((row.id, TaskId(row.task_id as u64), parse_status("dataset", row.id, &row.status)?)))
    }

    /// Moves the datasets a task produces to `status`, on `actor`'s behalf: only datasets in a
    /// state from which that actor may make this move change (a broken dataset stays broken, a
    /// closed one is reopened only by a retry).
    pub async fn set_task_datasets_status(
        &self,
        conn: &impl ConnectionTrait,
        task_id: TaskId,
        actor: DataActor,
        status: DatasetStatus,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let sources = actor.dataset_sources(status);
        dataset::Entity::update_many()
            .col_expr(dataset::Column::Status, Expr::value(status.as_str()))
            .col_expr(dataset::Column::ModifiedAt, Expr::value(now))
            .filter(dataset::Column::TaskId.eq(to_i64(task_id.0)))
            .filter(dataset::Column::Status.is_in(sources.iter().map(|s| s.as_str())))
            .exec(conn)
            .await?;
        Ok(())
    }

    /// A dataset with its files.
    pub async fn get_dataset(&self, conn: &impl ConnectionTrait, name: &str) -> Result<Option<Dataset>> {
        let Some((id, task_id, status)) = self.find_dataset(conn, name).await? else {
            return Ok(None);
        };
        let files = file::Entity::find()
            .filter(file::Column::DatasetId.eq(id))
            .order_by_asc(file::Column::Id)
            .all(conn)
            .await?
            .into_iter()
            .map(|f| FileRecord {
                lfn: f.lfn,
                dataset: name.to_owned(),
                size_bytes: f.size_bytes as u64,
                checksum: f.checksum,
                status: f.status,
            })
            .collect();
        Ok(Some(Dataset { name: name.to_owned(), task_id, status, files }))
    }

    /// The output file rows each of `jobs` holds now (a retried job's rows move to its next
    /// attempt), by job.
    pub async fn outputs_of_jobs(
        &self,
        conn: &impl ConnectionTrait,
        jobs: &[JobId],
    ) -> Result<HashMap<JobId, Vec<FileRecord>>> {
        let mut by_job: HashMap<JobId, Vec<FileRecord>> = HashMap::new();
        for chunk in jobs.chunks(1000) {
            let rows = file::Entity::find()
                .filter(file::Column::JobId.is_in(chunk.iter().map(|j| to_i64(j.0))))
                .all(conn)
                .await?;
            for f in rows {
                by_job.entry(JobId(f.job_id as u64)).or_default().push(FileRecord {
                    lfn: f.lfn,
                    dataset: String::new(),
                    size_bytes: f.size_bytes as u64,
                    checksum: f.checksum,
                    status: f.status,
                });
            }
        }
        Ok(by_job)
    }

    /// Catalog entries of the given files (any dataset).
    pub async fn files_by_lfn(
        &self,
        conn: &impl ConnectionTrait,
        lfns: &[String],
    ) -> Result<HashMap<String, FileRecord>> {
        if lfns.is_empty() {
            return Ok(HashMap::new());
        }
        // In chunks: a long IN list would pass the databases' limits on bound variables.
        let mut rows = Vec::with_capacity(lfns.len());
        for chunk in lfns.chunks(1000) {
            rows.extend(
                file::Entity::find()
                    .filter(file::Column::Lfn.is_in(chunk.iter().map(String::as_str)))
                    .all(conn)
                    .await?,
            );
        }
        Ok(rows
            .into_iter()
            .map(|f| {
                (
                    f.lfn.clone(),
                    FileRecord {
                        lfn: f.lfn,
                        dataset: String::new(),
                        size_bytes: f.size_bytes as u64,
                        checksum: f.checksum,
                        status: f.status,
                    },
                )
            })
            .collect())
    }

    /// Inserts jobs (`status`: activated, or defined when held, in global share `share`) and
    /// their expected output files (defined) in `output_dataset`.
    #[allow(clippy::too_many_arguments)]
    pub async fn insert_jobs(
        &self,
        conn: &impl ConnectionTrait,
        task_id: TaskId,
        jobs: &[NewJob],
        output_dataset: Option<i64>,
        status: JobStatus,
        share: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Job>> {
        let mut inserted = Vec::with_capacity(jobs.len());
        for new in jobs {
            let mut row = new_job_row(task_id, new, 1, now);
            row.share = Set(share.to_owned());
            row.status = Set(status.as_str().to_owned());
            row.state_times_json = Set(StateTimes::starting(status, now).as_json().to_owned());
            let row = row.insert(conn).await?;
            if let Some(dataset_id) = output_dataset {
                for lfn in &new.output_files {
                    file::ActiveModel {
                        dataset_id: Set(dataset_id),
                        lfn: Set(lfn.clone()),
                        job_id: Set(row.id),
                        status: Set(FileStatus::Defined.as_str().to_owned()),
                        size_bytes: Set(0),
                        checksum: Set(String::new()),
                        modified_at: Set(now),
                        ..Default::default()
                    }
                    .insert(conn)
                    .await?;
                }
            }
            inserted.push(job_from_row(row)?);
        }
        Ok(inserted)
    }

    /// Inserts the next attempt of an ended job (activated, same index, command and outputs), marks
    /// the old one superseded (kept for history, no longer counted) and hands its output file rows
    /// to the new one.
    pub async fn insert_retry(&self, conn: &impl ConnectionTrait, old: &Job, now: DateTime<Utc>) -> Result<Job> {
        let new = NewJob {
            job_index: old.job_index,
            queue: old.queue.clone(),
            command: old.command.clone(),
            environment: old.environment.clone(),
            input_files: old.input_files.clone(),
            output_files: old.output_files.clone(),
            resources: old.resources,
            priority: old.priority,
            merge: old.merge,
        };
        let mut row = new_job_row(old.task_id, &new, old.attempt_nr + 1, now);
        row.share = Set(old.share.clone());
        let row = row.insert(conn).await?;
        // The old attempt's outputs that were not produced are expected from the new one.
        let retry_sources = DataActor::User.file_sources(FileStatus::Defined);
        job::Entity::update_many()
            .col_expr(job::Column::Superseded, Expr::value(true))
            .col_expr(job::Column::RowVersion, bumped_row_version())
            .filter(job::Column::Id.eq(to_i64(old.id.0)))
            .exec(conn)
            .await?;
        file::Entity::update_many()
            .col_expr(file::Column::JobId, Expr::value(row.id))
            .col_expr(file::Column::Status, Expr::value(FileStatus::Defined.as_str()))
            .col_expr(file::Column::SizeBytes, Expr::value(0i64))
            .col_expr(file::Column::Checksum, Expr::value(""))
            .col_expr(file::Column::ModifiedAt, Expr::value(now))
            .filter(file::Column::JobId.eq(to_i64(old.id.0)))
            .filter(file::Column::Status.is_in(retry_sources.iter().map(|s| s.as_str())))
            .exec(conn)
            .await?;
        job_from_row(row)
    }

    /// Picks up to `limit` activated jobs of `queue` that fit `offer`, highest priority first,
    /// skipping rows other transactions hold; the caller marks them sent in the same transaction.
    /// `narrow` restricts the claim further (see [`ClaimFilter`]).
    pub async fn claim_jobs(
        &self,
        conn: &impl ConnectionTrait,
        queue: &str,
        offer: &Resources,
        limit: u64,
        narrow: ClaimFilter<'_>,
    ) -> Result<Vec<Job>> {
        let query = self.claim_query(queue, offer, limit, narrow);
        query.all(conn).await?.into_iter().map(job_from_row).collect()
    }

    /// [`Store::claim_jobs`]'s statement: it reads the partial index `jobs_activated` (m0004) in
    /// order, or with several shares `jobs_activated_share`.
    fn claim_query(
        &self,
        queue: &str,
        offer: &Resources,
        limit: u64,
        narrow: ClaimFilter<'_>,
    ) -> sea_orm::Select<job::Entity> {
        let mut query = job::Entity::find()
            .filter(job::Column::Queue.eq(queue))
            .filter(job::Column::Status.eq(JobStatus::Activated.as_str()));
        if let Some(share) = narrow.share {
            query = query.filter(job::Column::Share.eq(share));
        }
        if let Some(task) = narrow.task {
            query = query.filter(job::Column::TaskId.eq(to_i64(task.0)));
        }
        if !narrow.except.is_empty() {
            query = query.filter(job::Column::Id.is_not_in(narrow.except.iter().map(|id| to_i64(id.0))));
        }
        if offer.cores > 0 {
            query = query.filter(job::Column::Cores.lte(offer.cores as i32));
        }
        if offer.memory_mb > 0 {
            query = query.filter(job::Column::MemoryMb.lte(to_i64(offer.memory_mb)));
        }
        if offer.disk_mb > 0 {
            query = query.filter(job::Column::DiskMb.lte(to_i64(offer.disk_mb)));
        }
        if offer.walltime_seconds > 0 {
            query = query.filter(job::Column::WalltimeSeconds.lte(to_i64(offer.walltime_seconds)));
        }
        query = query.order_by_desc(job::Column::Priority).order_by_asc(job::Column::Id).limit(limit);
        if self.backend == DbBackend::Postgres {
            query = query.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        query
    }

    /// A job, locked until the end of the caller's transaction.
    pub async fn lock_job(&self, conn: &impl ConnectionTrait, id: JobId) -> Result<Option<Job>> {
        self.locking(job::Entity::find_by_id(to_i64(id.0))).one(conn).await?.map(job_from_row).transpose()
    }

    /// A job.
    pub async fn get_job(&self, conn: &impl ConnectionTrait, id: JobId) -> Result<Option<Job>> {
        job::Entity::find_by_id(to_i64(id.0)).one(conn).await?.map(job_from_row).transpose()
    }

    /// Writes every mutable field of a job (see [`Store::save_jobs`]).
    pub async fn save_job(&self, conn: &impl ConnectionTrait, job: &Job) -> Result<()> {
        self.save_jobs(conn, &[job]).await
    }

    /// Jobs of a task in the given states (current attempts only), locked until the end of the
    /// caller's transaction: callers change them, and a pilot's concurrent update must not be
    /// overwritten by a stale copy (PostgreSQL re-checks the states once it gets each lock).
    pub async fn jobs_of_task(
        &self,
        conn: &impl ConnectionTrait,
        task_id: TaskId,
        statuses: &[JobStatus],
    ) -> Result<Vec<Job>> {
        let query = job::Entity::find()
            .filter(job::Column::TaskId.eq(to_i64(task_id.0)))
            .filter(job::Column::Status.is_in(statuses.iter().map(|s| s.as_str())))
            .filter(job::Column::Superseded.eq(false))
            .order_by_asc(job::Column::Id);
        self.locking(query).all(conn).await?.into_iter().map(job_from_row).collect()
    }

    /// Jobs held by pilots (sent, starting, running) whose last change is older than `before`
    /// (read without locks: the watchdog locks and re-checks each one).
    pub async fn stale_held_jobs(
        &self,
        conn: &impl ConnectionTrait,
        before: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<Job>> {
        Self::stale_held_jobs_query(before, limit).all(conn).await?.into_iter().map(job_from_row).collect()
    }

    fn stale_held_jobs_query(before: DateTime<Utc>, limit: u64) -> sea_orm::Select<job::Entity> {
        let held = [JobStatus::Sent, JobStatus::Starting, JobStatus::Running];
        job::Entity::find()
            .filter(live_jobs())
            .filter(job::Column::Status.is_in(held.iter().map(|s| s.as_str())))
            .filter(job::Column::ModifiedAt.lt(before))
            .order_by_asc(job::Column::Id)
            .limit(limit)
    }

    /// Jobs, oldest first.
    pub async fn list_jobs(&self, conn: &impl ConnectionTrait, filter: &JobFilter) -> Result<Vec<Job>> {
        let mut query = job::Entity::find().order_by_asc(job::Column::Id).limit(filter.limit);
        if let Some(task_id) = filter.task_id {
            query = query.filter(job::Column::TaskId.eq(to_i64(task_id.0)));
        }
        if !filter.statuses.is_empty() {
            query = query.filter(job::Column::Status.is_in(filter.statuses.iter().map(|s| s.as_str())));
        }
        if let Some(after) = filter.after {
            query = query.filter(job::Column::Id.gt(to_i64(after.0)));
        }
        if let Some(queue) = &filter.queue {
            query = query.filter(job::Column::Queue.eq(queue.as_str()));
        }
        query.all(conn).await?.into_iter().map(job_from_row).collect()
    }

    /// Records produced outputs (finished) or marks a job's expected outputs with `status`.
    pub async fn record_outputs(
        &self,
        conn: &impl ConnectionTrait,
        job_id: JobId,
        produced: &[OutputFile],
        others: FileStatus,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let producible = DataActor::Server.file_sources(FileStatus::Finished);
        for output in produced {
            file::Entity::update_many()
                .col_expr(file::Column::Status, Expr::value(FileStatus::Finished.as_str()))
                .col_expr(file::Column::SizeBytes, Expr::value(to_i64(output.size_bytes)))
                .col_expr(file::Column::Checksum, Expr::value(output.checksum.as_str()))
                .col_expr(file::Column::ModifiedAt, Expr::value(now))
                .filter(file::Column::JobId.eq(to_i64(job_id.0)))
                .filter(file::Column::Lfn.eq(output.lfn.as_str()))
                .filter(file::Column::Status.is_in(producible.iter().map(|s| s.as_str())))
                .exec(conn)
                .await?;
        }
        file::Entity::update_many()
            .col_expr(file::Column::Status, Expr::value(others.as_str()))
            .col_expr(file::Column::ModifiedAt, Expr::value(now))
            .filter(file::Column::JobId.eq(to_i64(job_id.0)))
            .filter(file::Column::Status.eq(FileStatus::Defined.as_str()))
            .exec(conn)
            .await?;
        Ok(())
    }

    /// Cancels the outputs of jobs that were cancelled before producing them.
    pub async fn cancel_outputs(&self, conn: &impl ConnectionTrait, jobs: &[JobId], now: DateTime<Utc>) -> Result<()> {
        let sources = DataActor::Server.file_sources(FileStatus::Cancelled);
        for chunk in jobs.chunks(bulk::ROWS_PER_STATEMENT) {
            file::Entity::update_many()
                .col_expr(file::Column::Status, Expr::value(FileStatus::Cancelled.as_str()))
                .col_expr(file::Column::ModifiedAt, Expr::value(now))
                .filter(file::Column::JobId.is_in(chunk.iter().map(|id| to_i64(id.0))))
                .filter(file::Column::Status.is_in(sources.iter().map(|s| s.as_str())))
                .exec(conn)
                .await?;
        }
        Ok(())
    }

    /// Activated, sent and running jobs per queue.
    pub async fn queue_load(&self, conn: &impl ConnectionTrait, queues: &[String]) -> Result<Vec<QueueLoad>> {
        let rows = Self::queue_load_query(queues).into_model::<QueueStatusCount>().all(conn).await?;
        let mut loads: BTreeMap<String, QueueLoad> = BTreeMap::new();
        for row in rows {
            let load = loads
                .entry(row.queue.clone())
                .or_insert_with(|| QueueLoad { queue: row.queue.clone(), ..Default::default() });
            let n = row.n as u32;
            match row.status.as_str() {
                "activated" => load.activated += n,
                "sent" => load.sent += n,
                _ => load.running += n,
            }
        }
        Ok(loads.into_values().collect())
    }

    fn queue_load_query(queues: &[String]) -> sea_orm::Select<job::Entity> {
        let mut query = job::Entity::find()
            .select_only()
            .column(job::Column::Queue)
            .column(job::Column::Status)
            .column_as(job::Column::Id.count(), "n")
            .filter(live_jobs())
            .filter(job::Column::Status.is_in(LOAD_STATUSES.iter().map(|s| s.as_str())))
            .group_by(job::Column::Queue)
            .group_by(job::Column::Status);
        if !queues.is_empty() {
            query = query.filter(job::Column::Queue.is_in(queues.iter().map(String::as_str)));
        }
        query
    }

    /// Live jobs (activated, sent, starting, running) per queue, share and state group: the
    /// global shares' usage, counted every few seconds rather than per dispatch.
    pub async fn share_counts(&self, conn: &impl ConnectionTrait) -> Result<Vec<ShareCount>> {
        let rows = Self::share_counts_query().into_model::<ShareStatusCount>().all(conn).await?;
        Ok(rows
            .into_iter()
            .map(|row| ShareCount {
                queued: row.status == JobStatus::Activated.as_str(),
                queue: row.queue,
                share: row.share,
                n: row.n.max(0) as u64,
            })
            .collect())
    }

    fn share_counts_query() -> sea_orm::Select<job::Entity> {
        job::Entity::find()
            .select_only()
            .column(job::Column::Queue)
            .column(job::Column::Share)
            .column(job::Column::Status)
            .column_as(job::Column::Id.count(), "n")
            .filter(live_jobs())
            .filter(job::Column::Status.is_in(LOAD_STATUSES.iter().map(|s| s.as_str())))
            .group_by(job::Column::Queue)
            .group_by(job::Column::Share)
            .group_by(job::Column::Status)
    }

    /// Creates or refreshes queues.
    pub async fn upsert_queues(&self, conn: &impl ConnectionTrait, queues: &[Queue]) -> Result<()> {
        for q in queues {
            let row = queue::ActiveModel {
                name: Set(q.name.clone()),
                status: Set(q.status.clone()),
                max_cores: Set(q.max_resources.cores as i32),
                max_memory_mb: Set(to_i64(q.max_resources.memory_mb)),
                max_disk_mb: Set(to_i64(q.max_resources.disk_mb)),
                max_walltime_seconds: Set(to_i64(q.max_resources.walltime_seconds)),
                max_workers: Set(q.max_workers as i32),
                harvester_id: Set(q.harvester_id.clone()),
                heartbeat_at: Set(q.heartbeat_at),
                site: Set(q.site.clone()),
                containers_json: Set(serde_json::to_string(&q.containers).unwrap_or_else(|_| "[]".to_owned())),
            };
            if queue::Entity::find_by_id(q.name.clone()).one(conn).await?.is_some() {
                row.update(conn).await?;
            } else {
                row.insert(conn).await?;
            }
        }
        Ok(())
    }

    /// Every known queue.
    pub async fn list_queues(&self, conn: &impl ConnectionTrait) -> Result<Vec<Queue>> {
        Ok(queue::Entity::find()
            .order_by_asc(queue::Column::Name)
            .all(conn)
            .await?
            .into_iter()
            .map(|q| Queue {
                name: q.name,
                status: q.status,
                max_resources: Resources {
                    cores: q.max_cores as u32,
                    memory_mb: q.max_memory_mb as u64,
                    disk_mb: q.max_disk_mb as u64,
                    walltime_seconds: q.max_walltime_seconds as u64,
                },
                max_workers: q.max_workers as u32,
                harvester_id: q.harvester_id,
                site: q.site,
                // Written by upsert_queues from a list of strings; an unreadable value (none
                // can be written) reads as no runtime.
                containers: serde_json::from_str(&q.containers_json).unwrap_or_default(),
                heartbeat_at: q.heartbeat_at,
            })
            .collect())
    }
}

/// The row of a new activated job.
fn new_job_row(task_id: TaskId, new: &NewJob, attempt_nr: u32, now: DateTime<Utc>) -> job::ActiveModel {
    job::ActiveModel {
        task_id: Set(to_i64(task_id.0)),
        job_index: Set(new.job_index as i32),
        status: Set(JobStatus::Activated.as_str().to_owned()),
        queue: Set(new.queue.clone()),
        attempt_nr: Set(attempt_nr as i32),
        command: Set(new.command.clone()),
        environment_json: Set(to_json(&new.environment)),
        input_files_json: Set(to_json(&new.input_files)),
        output_files_json: Set(to_json(&new.output_files)),
        cores: Set(new.resources.cores as i32),
        memory_mb: Set(to_i64(new.resources.memory_mb)),
        disk_mb: Set(to_i64(new.resources.disk_mb)),
        walltime_seconds: Set(to_i64(new.resources.walltime_seconds)),
        priority: Set(new.priority),
        lease_token: Set(None),
        command_to_pilot: Set(None),
        exit_code: Set(None),
        error_code: Set(0),
        error_diag: Set(String::new()),
        stdout_tail: Set(String::new()),
        stderr_tail: Set(String::new()),
        cpu_time_seconds: Set(0.0),
        wall_time_seconds: Set(0.0),
        max_rss_kb: Set(0),
        node: Set(String::new()),
        worker_id: Set(String::new()),
        created_at: Set(now),
        started_at: Set(None),
        ended_at: Set(None),
        modified_at: Set(now),
        heartbeat_at: Set(None),
        superseded: Set(false),
        merge: Set(new.merge),
        share: Set(String::new()),
        state_times_json: Set(StateTimes::starting(JobStatus::Activated, now).as_json().to_owned()),
        error_source: Set(String::new()),
        ..Default::default()
    }
}

/// `row_version + 1`: every statement that changes a job row sets it (see migration m0015).
fn bumped_row_version() -> sea_orm::sea_query::SimpleExpr {
    sea_orm::sea_query::ExprTrait::add(Expr::col(job::Column::RowVersion), 1)
}

/// Serialises a JSON column; maps and string lists cannot fail to serialise.
fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}
