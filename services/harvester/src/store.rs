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
