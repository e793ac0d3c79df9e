//! idds's own database: workflows and their works. Every change commits with its events.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::dag::{WorkStatus, WorkflowStatus};

/// A stored workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct Workflow {
    /// ID.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Owner.
    pub user: String,
    /// State.
    pub status: WorkflowStatus,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Ended.
    pub ended_at: Option<DateTime<Utc>>,
}

/// A stored work.
#[derive(Debug, Clone, PartialEq)]
pub struct Work {
    /// Row ID.
    pub id: i64,
    /// Its workflow.
    pub workflow_id: u64,
    /// Name in the workflow.
    pub name: String,
    /// State.
    pub status: WorkStatus,
    /// Parents' names.
    pub parents: Vec<String>,
    /// The task to submit (JSON of the validated `TaskSpec`, datasets already scoped).
    pub task_json: String,
    /// Its task once submitted.
    pub task_id: Option<u64>,
    /// Last task state seen.
    pub task_status: String,
    /// When its task was submitted.
    pub submitted_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub ended_at: Option<DateTime<Utc>>,
}

mod workflow {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "workflows")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub name: String,
        pub user_name: String,
        pub status: String,
        pub created_at: DateTimeUtc,
        pub ended_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

mod work {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "works")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub workflow_id: i64,
        pub name: String,
        pub status: String,
        #[sea_orm(column_type = "Text")]
        pub parents_json: String,
        #[sea_orm(column_type = "Text")]
        pub task_json: String,
        pub task_id: Option<i64>,
        pub task_status: String,
        pub submitted_at: Option<DateTimeUtc>,
        pub ended_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

fn bad(what: &str, value: &str) -> DbErr {
    DbErr::Custom(format!("stored {what} {value:?} is not valid"))
}

fn workflow_from(row: workflow::Model) -> Result<Workflow, DbErr> {
    Ok(Workflow {
        id: row.id as u64,
        status: WorkflowStatus::parse(&row.status).ok_or_else(|| bad("workflow status", &row.status))?,
        name: row.name,
        user: row.user_name,
        created_at: row.created_at,
        ended_at: row.ended_at,
    })
}

fn work_from(row: work::Model) -> Result<Work, DbErr> {
    Ok(Work {
        id: row.id,
        workflow_id: row.workflow_id as u64,
        status: WorkStatus::parse(&row.status).ok_or_else(|| bad("work status", &row.status))?,
        parents: serde_json::from_str(&row.parents_json).map_err(|_| bad("work parents", &row.parents_json))?,
        name: row.name,
        task_json: row.task_json,
        task_id: row.task_id.map(|id| id as u64),
        task_status: row.task_status,
        submitted_at: row.submitted_at,
        ended_at: row.ended_at,
    })
}

/// Inserts a workflow in `running`.
pub async fn insert_workflow(conn: &impl ConnectionTrait, name: &str, user: &str) -> Result<Workflow, DbErr> {
    let row = workflow::ActiveModel {
        name: Set(name.to_owned()),
        user_name: Set(user.to_owned()),
        status: Set(WorkflowStatus::Running.as_str().to_owned()),
        created_at: Set(Utc::now()),
        ended_at: Set(None),
        ..Default::default()
    }
    .insert(conn)
    .await?;
    workflow_from(row)
}

/// Inserts a work in `waiting`.
pub async fn insert_work(
    conn: &impl ConnectionTrait,
    workflow_id: u64,
    name: &str,
    parents: &[String],
    task_json: String,
) -> Result<(), DbErr> {
    work::ActiveModel {
        workflow_id: Set(workflow_id as i64),
        name: Set(name.to_owned()),
        status: Set(WorkStatus::Waiting.as_str().to_owned()),
        parents_json: Set(serde_json::to_string(parents).unwrap_or_else(|_| "[]".into())),
        task_json: Set(task_json),
        task_id: Set(None),
        task_status: Set(String::new()),
        submitted_at: Set(None),
        ended_at: Set(None),
        ..Default::default()
    }
    .insert(conn)
    .await?;
    Ok(())
}

/// A workflow.
pub async fn get_workflow(conn: &impl ConnectionTrait, id: u64) -> Result<Option<Workflow>, DbErr> {
    workflow::Entity::find_by_id(id as i64).one(conn).await?.map(workflow_from).transpose()
}

/// Newest workflows.
pub async fn list_workflows(conn: &impl ConnectionTrait, limit: u64) -> Result<Vec<Workflow>, DbErr> {
    workflow::Entity::find()
        .order_by_desc(workflow::Column::Id)
        .limit(limit)
        .all(conn)
        .await?
        .into_iter()
        .map(workflow_from)
        .collect()
}

/// Sets a workflow's state.
pub async fn set_workflow_status(conn: &impl ConnectionTrait, id: u64, status: WorkflowStatus) -> Result<(), DbErr> {
    let ended = (status != WorkflowStatus::Running).then(Utc::now);
    workflow::Entity::update_many()
        .col_expr(workflow::Column::Status, Expr::value(status.as_str()))
        .col_expr(workflow::Column::EndedAt, Expr::value(ended))
        .filter(workflow::Column::Id.eq(id as i64))
        .exec(conn)
        .await?;
    Ok(())
}

/// Works of a workflow in insertion order.
pub async fn works_of(conn: &impl ConnectionTrait, workflow_id: u64) -> Result<Vec<Work>, DbErr> {
    work::Entity::find()
        .filter(work::Column::WorkflowId.eq(workflow_id as i64))
        .order_by_asc(work::Column::Id)
        .all(conn)
        .await?
        .into_iter()
        .map(work_from)
        .collect()
}

/// Works in a state, across workflows.
pub async fn works_in(conn: &impl ConnectionTrait, status: WorkStatus) -> Result<Vec<Work>, DbErr> {
    work::Entity::find()
        .filter(work::Column::Status.eq(status.as_str()))
        .order_by_asc(work::Column::Id)
        .all(conn)
        .await?
        .into_iter()
        .map(work_from)
        .collect()
}

/// The work whose task is `task_id`.
pub async fn work_by_task(conn: &impl ConnectionTrait, task_id: u64) -> Result<Option<Work>, DbErr> {
    work::Entity::find().filter(work::Column::TaskId.eq(task_id as i64)).one(conn).await?.map(work_from).transpose()
}

/// Sets a work's state (and task information when given).
pub async fn set_work(
    conn: &impl ConnectionTrait,
    id: i64,
    status: WorkStatus,
    task_id: Option<u64>,
    task_status: Option<&str>,
) -> Result<(), DbErr> {
    let mut update = work::Entity::update_many().col_expr(work::Column::Status, Expr::value(status.as_str()));
    if let Some(task_id) = task_id {
        update = update
            .col_expr(work::Column::TaskId, Expr::value(task_id as i64))
            .col_expr(work::Column::SubmittedAt, Expr::value(Utc::now()));
    }
    if let Some(task_status) = task_status {
        update = update.col_expr(work::Column::TaskStatus, Expr::value(task_status));
    }
    if status.is_final() {
        update = update.col_expr(work::Column::EndedAt, Expr::value(Utc::now()));
    }
    update.filter(work::Column::Id.eq(id)).exec(conn).await?;
    Ok(())
}

/// idds's migrator.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        let mut all = panda_bus::migration::migrations();
        all.push(Box::new(M0001Workflows));
        all
    }
}

struct M0001Workflows;

impl MigrationName for M0001Workflows {
    fn name(&self) -> &str {
        "idds_m0001_workflows"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0001Workflows {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("workflows")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(string("name"))
                    .col(string("user_name"))
                    .col(string("status"))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone_null("ended_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("works")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(big_integer("workflow_id"))
                    .col(string("name"))
                    .col(string("status"))
                    .col(text("parents_json"))
                    .col(text("task_json"))
                    .col(big_integer_null("task_id"))
                    .col(string("task_status"))
                    .col(timestamp_with_time_zone_null("submitted_at"))
                    .col(timestamp_with_time_zone_null("ended_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create().if_not_exists().name("works_workflow").table("works").col("workflow_id").to_owned(),
            )
            .await?;
        manager
            .create_index(Index::create().if_not_exists().name("works_task").table("works").col("task_id").to_owned())
            .await?;
        manager
            .create_index(Index::create().if_not_exists().name("works_status").table("works").col("status").to_owned())
            .await
    }
}
