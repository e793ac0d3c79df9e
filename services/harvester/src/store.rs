//! The harvester's own database: its workers, so a restarted harvester picks them up again.
//! Every worker state change commits with its `worker.<state>` event (outbox).

use chrono::{DateTime, Utc};
use panda_types::{StateMachine, WorkerStatus};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, FromQueryResult, QueryFilter, QueryOrder, QuerySelect,
    Set,
};
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

/// A worker as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Worker {
    /// ID.
    pub id: i64,
    /// Queue.
    pub queue: String,
    /// State.
    pub status: WorkerStatus,
    /// The resource's ID.
    pub batch_id: String,
    /// Exit code once ended.
    pub exit_code: Option<i32>,
    /// Diagnostic.
    pub diag: String,
    /// Directory.
    pub work_dir: String,
    /// Row written.
    pub created_at: DateTime<Utc>,
    /// Accepted by the resource.
    pub submitted_at: Option<DateTime<Utc>>,
    /// Reached a final state.
    pub ended_at: Option<DateTime<Utc>>,
    /// Its directory was removed.
    pub cleaned: bool,
}

mod worker {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "workers")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub queue: String,
        pub status: String,
        pub batch_id: String,
        pub exit_code: Option<i32>,
        #[sea_orm(column_type = "Text")]
        pub diag: String,
        pub work_dir: String,
        pub created_at: DateTimeUtc,
        pub submitted_at: Option<DateTimeUtc>,
        pub ended_at: Option<DateTimeUtc>,
        pub modified_at: DateTimeUtc,
        pub cleaned: bool,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

fn from_row(row: worker::Model) -> Result<Worker, DbErr> {
    let status = row.status.parse().map_err(|e: panda_types::UnknownState| DbErr::Custom(e.to_string()))?;
    Ok(Worker {
        id: row.id,
        queue: row.queue,
        status,
        batch_id: row.batch_id,
        exit_code: row.exit_code,
        diag: row.diag,
        work_dir: row.work_dir,
        created_at: row.created_at,
        submitted_at: row.submitted_at,
        ended_at: row.ended_at,
        cleaned: row.cleaned,
    })
}

/// Inserts a worker in `pending` (written before the plugin is called, so a crash leaves a trace).
pub async fn insert_pending(
    conn: &impl ConnectionTrait,
    queue: &str,
    base_dir: &std::path::Path,
) -> Result<Worker, DbErr> {
    let now = Utc::now();
    let row = worker::ActiveModel {
        queue: Set(queue.to_owned()),
        status: Set(WorkerStatus::Pending.as_str().to_owned()),
        batch_id: Set(String::new()),
        exit_code: Set(None),
        diag: Set(String::new()),
        work_dir: Set(String::new()),
        created_at: Set(now),
        submitted_at: Set(None),
        ended_at: Set(None),
        modified_at: Set(now),
        cleaned: Set(false),
        ..Default::default()
    }
    .insert(conn)
    .await?;
    let dir = base_dir.join(queue).join(row.id.to_string()).display().to_string();
    let mut update: worker::ActiveModel = row.into();
    update.work_dir = Set(dir);
    from_row(update.update(conn).await?)
}

/// Records a state change (the caller checked the transition).
pub async fn set_status(
    conn: &impl ConnectionTrait,
    id: i64,
    status: WorkerStatus,
    batch_id: Option<&str>,
    exit_code: Option<i32>,
    diag: &str,
) -> Result<(), DbErr> {
    set_status_from(conn, id, None, status, batch_id, exit_code, diag).await.map(|_| ())
}

/// Records a state change only if the worker is still in `from` (when given): a kill and a
/// monitor cycle racing on one worker cannot overwrite each other. Whether the row changed.
pub async fn set_status_from(
    conn: &impl ConnectionTrait,
    id: i64,
    from: Option<WorkerStatus>,
    status: WorkerStatus,
    batch_id: Option<&str>,
    exit_code: Option<i32>,
    diag: &str,
) -> Result<bool, DbErr> {
    let now = Utc::now();
    let mut update = worker::Entity::update_many()
        .col_expr(worker::Column::Status, Expr::value(status.as_str()))
        .col_expr(worker::Column::ModifiedAt, Expr::value(now));
    if let Some(batch_id) = batch_id {
        update = update
            .col_expr(worker::Column::BatchId, Expr::value(batch_id))
            .col_expr(worker::Column::SubmittedAt, Expr::value(now));
    }
    if exit_code.is_some() {
        update = update.col_expr(worker::Column::ExitCode, Expr::value(exit_code));
    }
    if !diag.is_empty() {
        update = update.col_expr(worker::Column::Diag, Expr::value(diag));
    }
    if status.is_final() {
        update = update.col_expr(worker::Column::EndedAt, Expr::value(now));
    }
    let mut update = update.filter(worker::Column::Id.eq(id));
    if let Some(from) = from {
        update = update.filter(worker::Column::Status.eq(from.as_str()));
    }
    Ok(update.exec(conn).await?.rows_affected == 1)
}

/// Records a diagnostic without a state change (the resource could not tell the worker's state).
pub async fn set_diag(conn: &impl ConnectionTrait, id: i64, diag: &str) -> Result<(), DbErr> {
    worker::Entity::update_many()
        .col_expr(worker::Column::Diag, Expr::value(diag))
        .col_expr(worker::Column::ModifiedAt, Expr::value(Utc::now()))
        .filter(worker::Column::Id.eq(id))
        .exec(conn)
        .await?;
    Ok(())
}

/// Workers of a queue in the given states.
pub async fn workers_in(
    conn: &impl ConnectionTrait,
    queue: Option<&str>,
    statuses: &[WorkerStatus],
) -> Result<Vec<Worker>, DbErr> {
    let mut query = worker::Entity::find()
        .filter(worker::Column::Status.is_in(statuses.iter().map(|s| s.as_str())))
        .order_by_asc(worker::Column::Id);
    if let Some(queue) = queue {
        query = query.filter(worker::Column::Queue.eq(queue));
    }
    query.all(conn).await?.into_iter().map(from_row).collect()
}

/// One worker.
pub async fn get(conn: &impl ConnectionTrait, id: i64) -> Result<Option<Worker>, DbErr> {
    worker::Entity::find_by_id(id).one(conn).await?.map(from_row).transpose()
}

/// Newest workers first.
pub async fn list(conn: &impl ConnectionTrait, queue: Option<&str>, limit: u64) -> Result<Vec<Worker>, DbErr> {
    let mut query = worker::Entity::find().order_by_desc(worker::Column::Id).limit(limit);
    if let Some(queue) = queue {
        query = query.filter(worker::Column::Queue.eq(queue));
    }
    query.all(conn).await?.into_iter().map(from_row).collect()
}

/// Final workers ended before `before` whose directories are still there.
pub async fn to_clean(conn: &impl ConnectionTrait, before: DateTime<Utc>, limit: u64) -> Result<Vec<Worker>, DbErr> {
    worker::Entity::find()
        .filter(worker::Column::Cleaned.eq(false))
        .filter(worker::Column::EndedAt.lt(before))
        .order_by_asc(worker::Column::Id)
        .limit(limit)
        .all(conn)
        .await?
        .into_iter()
        .map(from_row)
        .collect()
}

/// Marks a worker's directory removed.
pub async fn mark_cleaned(conn: &impl ConnectionTrait, id: i64) -> Result<(), DbErr> {
    worker::Entity::update_many()
        .col_expr(worker::Column::Cleaned, Expr::value(true))
        .filter(worker::Column::Id.eq(id))
        .exec(conn)
        .await?;
    Ok(())
}

/// Where the jobs harvester fetched for a push-mode worker are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushState {
    /// Fetched from the server (the jobs are `sent` under our leases), not yet at the resource.
    Fetched,
    /// The worker was submitted with them.
    Delivered,
    /// Handed back to the server (what was still `sent` went back to `activated`).
    Released,
}

impl PushState {
    fn as_str(self) -> &'static str {
        match self {
            PushState::Fetched => "fetched",
            PushState::Delivered => "delivered",
            PushState::Released => "released",
        }
    }
}

mod pushed {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "pushed_jobs")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub worker_id: i64,
        pub queue: String,
        /// The job file (JSON), as written to the worker's directory.
        #[sea_orm(column_type = "Text")]
        pub job_file: String,
        pub state: String,
        pub created_at: DateTimeUtc,
        pub modified_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Records the job file fetched for a push-mode worker (state `fetched`), before the worker is
/// submitted: a harvester that stops now still knows which leases it holds.
pub async fn insert_pushed(
    conn: &impl ConnectionTrait,
    worker_id: i64,
    queue: &str,
    job_file: &str,
) -> Result<(), DbErr> {
    let now = Utc::now();
    pushed::ActiveModel {
        worker_id: Set(worker_id),
        queue: Set(queue.to_owned()),
        job_file: Set(job_file.to_owned()),
        state: Set(PushState::Fetched.as_str().to_owned()),
        created_at: Set(now),
        modified_at: Set(now),
    }
    .insert(conn)
    .await?;
    Ok(())
}

/// Moves a push-mode worker's jobs to `state`.
pub async fn set_pushed_state(conn: &impl ConnectionTrait, worker_id: i64, state: PushState) -> Result<(), DbErr> {
    pushed::Entity::update_many()
        .col_expr(pushed::Column::State, Expr::value(state.as_str()))
        .col_expr(pushed::Column::ModifiedAt, Expr::value(Utc::now()))
        .filter(pushed::Column::WorkerId.eq(worker_id))
        .exec(conn)
        .await?;
    Ok(())
}

/// Job files of push-mode workers that ended (or never reached the resource) while their jobs
/// were not yet handed back: (worker ID, job file JSON), oldest first.
pub async fn pushed_to_release(conn: &impl ConnectionTrait, limit: u64) -> Result<Vec<(i64, String)>, DbErr> {
    let ended: Vec<&str> =
        [WorkerStatus::Finished, WorkerStatus::Failed, WorkerStatus::Cancelled, WorkerStatus::Missed]
            .iter()
            .map(|s| s.as_str())
            .collect();
    let ended_workers = Query::select()
        .column(worker::Column::Id)
        .from(worker::Entity)
        .and_where(worker::Column::Status.is_in(ended))
        .to_owned();
    let rows = pushed::Entity::find()
        .filter(pushed::Column::State.is_in([PushState::Fetched.as_str(), PushState::Delivered.as_str()]))
        .filter(pushed::Column::WorkerId.in_subquery(ended_workers))
        .order_by_asc(pushed::Column::WorkerId)
        .limit(limit)
        .all(conn)
        .await?;
    Ok(rows.into_iter().map(|r| (r.worker_id, r.job_file)).collect())
}

/// A push-mode worker's job file and its state.
pub async fn pushed_of(conn: &impl ConnectionTrait, worker_id: i64) -> Result<Option<(String, PushState)>, DbErr> {
    let Some(row) = pushed::Entity::find_by_id(worker_id).one(conn).await? else { return Ok(None) };
    let state = match row.state.as_str() {
        "fetched" => PushState::Fetched,
        "delivered" => PushState::Delivered,
        "released" => PushState::Released,
        other => return Err(DbErr::Custom(format!("pushed_jobs.state {other:?} of worker {worker_id} is unknown"))),
    };
    Ok(Some((row.job_file, state)))
}

/// Removes a worker that never reached the resource and holds nothing (push mode, when the
/// server had no job for it).
pub async fn delete_pending(conn: &impl ConnectionTrait, id: i64) -> Result<(), DbErr> {
    worker::Entity::delete_many()
        .filter(worker::Column::Id.eq(id))
        .filter(worker::Column::Status.eq(WorkerStatus::Pending.as_str()))
        .exec(conn)
        .await?;
    Ok(())
}

mod kill {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "server_kills")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub worker_id: i64,
        #[sea_orm(column_type = "Text")]
        pub reason: String,
        pub named_since: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Workers the server names as holding a killed job: since when, and why.
pub type NamedKills = std::collections::BTreeMap<i64, (DateTime<Utc>, String)>;

/// The workers waiting out `server_kill_grace`.
pub async fn named_kills(conn: &impl ConnectionTrait) -> Result<NamedKills, DbErr> {
    Ok(kill::Entity::find().all(conn).await?.into_iter().map(|r| (r.worker_id, (r.named_since, r.reason))).collect())
}

/// Replaces the workers waiting out their grace with `now` (rows of workers no longer named go,
/// new ones come, kept ones keep their start). The caller runs it in one transaction.
pub async fn replace_named_kills(conn: &impl ConnectionTrait, old: &NamedKills, now: &NamedKills) -> Result<(), DbErr> {
    let gone: Vec<i64> = old.keys().filter(|id| !now.contains_key(id)).copied().collect();
    if !gone.is_empty() {
        kill::Entity::delete_many().filter(kill::Column::WorkerId.is_in(gone)).exec(conn).await?;
    }
    for (id, (since, reason)) in now {
        match old.get(id) {
            Some((old_since, old_reason)) if old_since == since && old_reason == reason => {}
            Some(_) => {
                kill::Entity::update_many()
                    .col_expr(kill::Column::NamedSince, Expr::value(*since))
                    .col_expr(kill::Column::Reason, Expr::value(reason.clone()))
                    .filter(kill::Column::WorkerId.eq(*id))
                    .exec(conn)
                    .await?;
            }
            None => {
                kill::ActiveModel { worker_id: Set(*id), reason: Set(reason.clone()), named_since: Set(*since) }
                    .insert(conn)
                    .await?;
            }
        }
    }
    Ok(())
}

#[derive(Debug, FromQueryResult)]
struct Count {
    queue: String,
    status: String,
    n: i64,
}

/// Worker counts per (queue, state).
pub async fn counts(conn: &impl ConnectionTrait) -> Result<Vec<(String, WorkerStatus, u32)>, DbErr> {
    let rows = worker::Entity::find()
        .select_only()
        .column(worker::Column::Queue)
        .column(worker::Column::Status)
        .column_as(worker::Column::Id.count(), "n")
        .group_by(worker::Column::Queue)
        .group_by(worker::Column::Status)
        .into_model::<Count>()
        .all(conn)
        .await?;
    rows.into_iter()
        .map(|r| {
            let status = r.status.parse().map_err(|e: panda_types::UnknownState| DbErr::Custom(e.to_string()))?;
            Ok((r.queue, status, r.n as u32))
        })
        .collect()
}

/// The harvester's migrator.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        let mut all = panda_bus::migration::migrations();
        all.push(Box::new(M0001Workers));
        all.push(Box::new(M0002PushAndKills));
        all
    }
}

struct M0001Workers;

impl MigrationName for M0001Workers {
    fn name(&self) -> &str {
        "harvester_m0001_workers"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0001Workers {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("workers")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(string("queue"))
                    .col(string("status"))
                    .col(string("batch_id"))
                    .col(integer_null("exit_code"))
                    .col(text("diag"))
                    .col(string("work_dir"))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone_null("submitted_at"))
                    .col(timestamp_with_time_zone_null("ended_at"))
                    .col(timestamp_with_time_zone("modified_at"))
                    .col(boolean("cleaned"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("workers_queue_status")
                    .table("workers")
                    .col("queue")
                    .col("status")
                    .to_owned(),
            )
            .await
    }
}

/// Push mode's fetched jobs per worker, and the start of each server kill's grace (both survive
/// a restart).
struct M0002PushAndKills;

impl MigrationName for M0002PushAndKills {
    fn name(&self) -> &str {
        "harvester_m0002_pushed_jobs_and_server_kills"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0002PushAndKills {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("pushed_jobs")
                    .if_not_exists()
                    .col(big_integer("worker_id").primary_key())
                    .col(string("queue"))
                    .col(text("job_file"))
                    .col(string("state"))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone("modified_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create().if_not_exists().name("pushed_jobs_state").table("pushed_jobs").col("state").to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("server_kills")
                    .if_not_exists()
                    .col(big_integer("worker_id").primary_key())
                    .col(text("reason"))
                    .col(timestamp_with_time_zone("named_since"))
                    .to_owned(),
            )
            .await
    }
}
