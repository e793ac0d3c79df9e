//! Schema migrations of the server database. Run at every start; each is applied once (recorded in
//! `seaql_migrations`). Never edit a released migration: add a new one.

use sea_orm::ConnectionTrait;
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

/// The server's migrator: the bus outbox tables, then the server's own.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        let mut all = panda_bus::migration::migrations();
        all.push(Box::new(M0001Initial));
        all.push(Box::new(M0002TaskOldStatus));
        all.push(Box::new(M0003JobSuperseded));
        all.push(Box::new(M0004DispatchIndex));
        all.push(Box::new(M0005CacheAndLogs));
        all.push(Box::new(M0006JobStateTimes));
        all.push(Box::new(M0007CatalogAndBrokerage));
        all.push(Box::new(M0008Functions));
        all.push(Box::new(M0009JobMerge));
        all.push(Box::new(M0010QueueWorkers));
        all.push(Box::new(M0011SharesAndSites));
        all.push(Box::new(M0012FunctionWarmCommand));
        all.push(Box::new(M0013LiveJobsIndex));
        all.push(Box::new(M0014QueueContainers));
        all.push(Box::new(M0015JobRowVersion));
        all
    }
}

struct M0001Initial;

impl MigrationName for M0001Initial {
    fn name(&self) -> &str {
        "server_m0001_initial"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0001Initial {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("tasks")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(string("name"))
                    .col(string("user_name"))
                    .col(string("status"))
                    .col(text("spec_json"))
                    .col(text("error_diag"))
                    .col(string_null("idempotency_key").unique_key())
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone("modified_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(Index::create().if_not_exists().name("tasks_status").table("tasks").col("status").to_owned())
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("datasets")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(string_uniq("name"))
                    .col(big_integer("task_id"))
                    .col(string("status"))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone("modified_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("files")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(big_integer("dataset_id"))
                    .col(string_uniq("lfn"))
                    .col(big_integer("job_id"))
                    .col(string("status"))
                    .col(big_integer("size_bytes"))
                    .col(string("checksum"))
                    .col(timestamp_with_time_zone("modified_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create().if_not_exists().name("files_dataset").table("files").col("dataset_id").to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("jobs")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(big_integer("task_id"))
                    .col(integer("job_index"))
                    .col(string("status"))
                    .col(string("queue"))
                    .col(integer("attempt_nr"))
                    .col(text("command"))
                    .col(text("environment_json"))
                    .col(text("input_files_json"))
                    .col(text("output_files_json"))
                    .col(integer("cores"))
                    .col(big_integer("memory_mb"))
                    .col(big_integer("disk_mb"))
                    .col(big_integer("walltime_seconds"))
                    .col(integer("priority"))
                    .col(string_null("lease_token"))
                    .col(string_null("command_to_pilot"))
                    .col(integer_null("exit_code"))
                    .col(integer("error_code"))
                    .col(text("error_diag"))
                    .col(text("stdout_tail"))
                    .col(text("stderr_tail"))
                    .col(double("cpu_time_seconds"))
                    .col(double("wall_time_seconds"))
                    .col(big_integer("max_rss_kb"))
                    .col(string("node"))
                    .col(string("worker_id"))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone_null("started_at"))
                    .col(timestamp_with_time_zone_null("ended_at"))
                    .col(timestamp_with_time_zone("modified_at"))
                    .col(timestamp_with_time_zone_null("heartbeat_at"))
                    .to_owned(),
            )
            .await?;
        // Dispatch reads activated jobs of one queue by priority, then age.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("jobs_dispatch")
                    .table("jobs")
                    .col("queue")
                    .col("status")
                    .col("priority")
                    .col("id")
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create().if_not_exists().name("jobs_task").table("jobs").col("task_id").col("status").to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("queues")
                    .if_not_exists()
                    .col(string("name").primary_key())
                    .col(string("status"))
                    .col(integer("max_cores"))
                    .col(big_integer("max_memory_mb"))
                    .col(big_integer("max_disk_mb"))
                    .col(big_integer("max_walltime_seconds"))
                    .col(integer("max_workers"))
                    .col(string("harvester_id"))
                    .col(timestamp_with_time_zone("heartbeat_at"))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}

/// Where a paused task returns to (the reference's `oldStatus`).
struct M0002TaskOldStatus;

impl MigrationName for M0002TaskOldStatus {
    fn name(&self) -> &str {
        "server_m0002_task_old_status"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0002TaskOldStatus {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table("tasks").add_column(string_null("old_status")).to_owned()).await
    }
}

/// Marks jobs replaced by a retry, so a task's outcome counts only each job's latest attempt.
struct M0003JobSuperseded;

impl MigrationName for M0003JobSuperseded {
    fn name(&self) -> &str {
        "server_m0003_job_superseded"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0003JobSuperseded {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table("jobs").add_column(boolean("superseded").default(false)).to_owned())
            .await
    }
}

/// Dispatch reads only activated jobs: a partial index over them keeps its cost independent of
/// how many ended jobs the table holds (the reference moves ended jobs to other tables instead).
/// Same SQL on PostgreSQL and SQLite; sea-query has no builder for partial indexes.
struct M0004DispatchIndex;

impl MigrationName for M0004DispatchIndex {
    fn name(&self) -> &str {
        "server_m0004_dispatch_index"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0004DispatchIndex {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX IF NOT EXISTS jobs_activated ON jobs (queue, priority DESC, id) WHERE status = 'activated'",
            )
            .await?;
        Ok(())
    }
}

/// Code archives' metadata (the bytes are files under the cache directory) and jobs' log chunks,
/// keyed by (job, stream, byte offset) so that a retried chunk is stored once.
struct M0005CacheAndLogs;

impl MigrationName for M0005CacheAndLogs {
    fn name(&self) -> &str {
        "server_m0005_cache_and_logs"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0005CacheAndLogs {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("cache_archives")
                    .if_not_exists()
                    .col(string("sha256").primary_key())
                    .col(big_integer("size_bytes"))
                    .col(string("uploader"))
                    .col(timestamp_with_time_zone("created_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("job_logs")
                    .if_not_exists()
                    .col(big_integer("job_id"))
                    .col(string("stream"))
                    .col(big_integer("byte_offset"))
                    .col(big_integer("size_bytes"))
                    .col(blob("data"))
                    .col(timestamp_with_time_zone("created_at"))
                    .primary_key(Index::create().col("job_id").col("stream").col("byte_offset"))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}

/// When a job entered each state, and which part of the system its error comes from.
struct M0006JobStateTimes;

impl MigrationName for M0006JobStateTimes {
    fn name(&self) -> &str {
        "server_m0006_job_state_times"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0006JobStateTimes {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one column at a time.
        if !manager.has_column("jobs", "state_times_json").await? {
            manager
                .alter_table(Table::alter().table("jobs").add_column(text("state_times_json").default("{}")).to_owned())
                .await?;
        }
        if !manager.has_column("jobs", "error_source").await? {
            manager
                .alter_table(Table::alter().table("jobs").add_column(string("error_source").default("")).to_owned())
                .await?;
        }
        Ok(())
    }
}

/// The data catalog's events per file and replica sites, and JEDI's brokerage explanations
/// (the latest per task, as the encoded `BrokerageExplanation` message).
struct M0007CatalogAndBrokerage;

impl MigrationName for M0007CatalogAndBrokerage {
    fn name(&self) -> &str {
        "server_m0007_catalog_and_brokerage"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0007CatalogAndBrokerage {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if !manager.has_column("files", "n_events").await? {
            manager
                .alter_table(Table::alter().table("files").add_column(big_integer("n_events").default(0)).to_owned())
                .await?;
        }
        manager
            .create_table(
                Table::create()
                    .table("file_replicas")
                    .if_not_exists()
                    .col(big_integer("file_id"))
                    .col(string("site"))
                    .primary_key(Index::create().col("file_id").col("site"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("brokerage_decisions")
                    .if_not_exists()
                    .col(big_integer("task_id").primary_key())
                    .col(boolean("pending"))
                    .col(text("summary"))
                    .col(blob("body"))
                    .col(timestamp_with_time_zone("decided_at"))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}

/// Function-as-a-Task: the works (tasks whose jobs run one call of a Python function each), the
/// calls' arguments and their results (the encoded `FunctionResult`).
struct M0008Functions;

impl MigrationName for M0008Functions {
    fn name(&self) -> &str {
        "server_m0008_functions"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0008Functions {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("function_works")
                    .if_not_exists()
                    .col(big_integer("task_id").primary_key())
                    .col(text("function"))
                    .col(string("serializer"))
                    .col(integer("n_calls"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("function_calls")
                    .if_not_exists()
                    .col(big_integer("task_id"))
                    .col(integer("idx"))
                    .col(text("call_key"))
                    .col(blob("args"))
                    .primary_key(Index::create().col("task_id").col("idx"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("function_results")
                    .if_not_exists()
                    .col(big_integer("task_id"))
                    .col(integer("idx"))
                    .col(big_integer("job_id"))
                    .col(boolean("ok"))
                    .col(blob("body"))
                    .col(timestamp_with_time_zone("stored_at"))
                    .primary_key(Index::create().col("task_id").col("idx"))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}

/// Marks merge jobs (generated over a task's outputs once its other jobs ended), so a task is
/// merged once and JEDI can tell them from processing jobs.
struct M0009JobMerge;

impl MigrationName for M0009JobMerge {
    fn name(&self) -> &str {
        "server_m0009_job_merge"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0009JobMerge {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table("jobs").add_column(boolean("merge").default(false)).to_owned()).await
    }
}

/// The latest worker report per queue and harvester instance (`ReportWorkers`).
struct M0010QueueWorkers;

impl MigrationName for M0010QueueWorkers {
    fn name(&self) -> &str {
        "server_m0010_queue_workers"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0010QueueWorkers {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("queue_workers")
                    .if_not_exists()
                    .col(string("queue"))
                    .col(string("harvester_id"))
                    .col(text("counts_json"))
                    .col(timestamp_with_time_zone("reported_at"))
                    .primary_key(Index::create().col("queue").col("harvester_id"))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}

/// Global shares and queue sites: each job carries its task's share (existing jobs get the empty
/// name, which counts as the default share), with a partial index over activated jobs by queue
/// and share so that share-aware dispatch claims one share's jobs in index order; each queue
/// carries the storage site it reads from (existing queues: empty, which means their name); a task
/// reading a still-open dataset is marked as awaiting input (it does not end while marked).
struct M0011SharesAndSites;

impl MigrationName for M0011SharesAndSites {
    fn name(&self) -> &str {
        "server_m0011_shares_and_sites"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0011SharesAndSites {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table("jobs").add_column(string("share").default("")).to_owned()).await?;
        manager.alter_table(Table::alter().table("queues").add_column(string("site").default("")).to_owned()).await?;
        manager
            .alter_table(Table::alter().table("tasks").add_column(boolean("awaits_input").default(false)).to_owned())
            .await?;
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX IF NOT EXISTS jobs_activated_share ON jobs (queue, share, priority DESC, id) \
                 WHERE status = 'activated'",
            )
            .await?;
        Ok(())
    }
}

/// Creates the share-aware dispatch index (m0011's `jobs_activated_share`) where there is more
/// than one share, and drops it where there is one: with one share dispatch never uses it, and
/// every activated job would pay its upkeep twice (insert, then delete when sent), about a tenth
/// of the embedded dispatch's database time. Called at every start, after the migrations; replicas
/// of one database share one share tree.
///
/// # Errors
/// The statement failed.
pub async fn keep_share_index(db: &impl ConnectionTrait, several_shares: bool) -> Result<(), DbErr> {
    let statement = if several_shares {
        "CREATE INDEX IF NOT EXISTS jobs_activated_share ON jobs (queue, share, priority DESC, id) \
         WHERE status = 'activated'"
    } else {
        "DROP INDEX IF EXISTS jobs_activated_share"
    };
    db.execute_unprepared(statement).await.map(|_| ())
}

/// A work's warm runtime command (Function-as-a-Task: several jobs in one runtime), passed to its
/// jobs as `PANDA_WARM_RUNTIME` when they are inserted.
struct M0012FunctionWarmCommand;

impl MigrationName for M0012FunctionWarmCommand {
    fn name(&self) -> &str {
        "server_m0012_function_warm_command"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0012FunctionWarmCommand {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table("function_works").add_column(text_null("warm_command")).to_owned())
            .await
    }
}

/// Queries over live jobs (the watchdog's held jobs, queue load, share usage, kills to pass on)
/// read a partial index over jobs that are not final, so their cost follows the live jobs and not
/// the history: before it they scanned the whole table (a bound `status IN (?, ...)` cannot
/// select a partial index, and `jobs_dispatch` leads with the queue). `jobs_dispatch`, a full
/// index over every job by queue and state that dispatch no longer reads (m0004's `jobs_activated`
/// serves it), goes: every job paid its upkeep at each state change, ended jobs included.
///
/// The predicate must stay word for word [`super::LIVE_JOBS`]: a query selects a partial index
/// only when its WHERE clause contains the index's.
struct M0013LiveJobsIndex;

impl MigrationName for M0013LiveJobsIndex {
    fn name(&self) -> &str {
        "server_m0013_live_jobs_index"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0013LiveJobsIndex {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE INDEX IF NOT EXISTS jobs_live ON jobs (status, queue, share) \
             WHERE status NOT IN ('finished', 'failed', 'cancelled', 'closed')",
        )
        .await?;
        db.execute_unprepared("DROP INDEX IF EXISTS jobs_dispatch").await?;
        Ok(())
    }
}

/// The container runtimes a queue's workers offer (a JSON list of names, from the harvester's
/// `containers`), which brokerage matches against tasks' container images; existing queues
/// offer none until their harvester registers them again.
struct M0014QueueContainers;

impl MigrationName for M0014QueueContainers {
    fn name(&self) -> &str {
        "server_m0014_queue_containers"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0014QueueContainers {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table("queues").add_column(text("containers_json").default("[]")).to_owned())
            .await
    }
}

/// A version per job row, bumped by every statement that changes the row. A pilot report batch
/// on SQLite reads its jobs on a read connection, outside the one writer's transaction, and writes
/// each job back only where its version is still the one read (see `Store::save_jobs_if_unchanged`).
struct M0015JobRowVersion;

impl MigrationName for M0015JobRowVersion {
    fn name(&self) -> &str {
        "server_m0015_job_row_version"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0015JobRowVersion {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table("jobs").add_column(big_integer("row_version").default(0)).to_owned())
            .await
    }
}
