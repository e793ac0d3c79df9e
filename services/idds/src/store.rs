//! idds's own database: workflows (with their graph) and work instances (with state, outputs,
//! loop parameters and their task). Every change commits with its events; the engine writes only
//! the instances that changed.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::graph::model::Value;
use crate::graph::{WorkStatus, WorkflowStatus};

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
    /// The graph (JSON of [`crate::graph::Graph`]); empty for workflows stored before graphs were.
    pub graph_json: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Ended.
    pub ended_at: Option<DateTime<Utc>>,
}

/// A stored work instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Work {
    /// Row ID.
    pub id: i64,
    /// Its workflow.
    pub workflow_id: u64,
    /// Instance key (unique in the workflow).
    pub key: String,
    /// Node name.
    pub name: String,
    /// State.
    pub status: WorkStatus,
    /// Loops: current iteration.
    pub iteration: u32,
    /// Why it is in its state.
    pub reason: String,
    /// Values and counters it produced.
    pub outputs: BTreeMap<String, Value>,
    /// Loops: current parameters.
    pub params: BTreeMap<String, Value>,
    /// The task as submitted (JSON of the wire spec), empty before.
    pub task_json: String,
    /// Its task once submitted.
    pub task_id: Option<u64>,
    /// Last task state seen.
    pub task_status: String,
    /// Submissions so far (part of the idempotency key, so a resubmission is a new task).
    pub attempt: u32,
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
        #[sea_orm(column_type = "Text", nullable)]
        pub graph_json: Option<String>,
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
        pub work_key: Option<String>,
        pub iteration: i32,
        pub reason: String,
        #[sea_orm(column_type = "Text")]
        pub outputs_json: String,
        #[sea_orm(column_type = "Text")]
        pub params_json: String,
        pub attempt: i32,
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
        graph_json: row.graph_json.unwrap_or_default(),
        created_at: row.created_at,
        ended_at: row.ended_at,
    })
}

fn values(json: &str) -> Result<BTreeMap<String, Value>, DbErr> {
    if json.is_empty() {
        return Ok(BTreeMap::new());
    }
    serde_json::from_str(json).map_err(|_| bad("values", json))
}

fn json_of(values: &BTreeMap<String, Value>) -> String {
    serde_json::to_string(values).unwrap_or_else(|_| "{}".into())
}

fn work_from(row: work::Model) -> Result<Work, DbErr> {
    Ok(Work {
        id: row.id,
        workflow_id: row.workflow_id as u64,
        status: WorkStatus::parse(&row.status).ok_or_else(|| bad("work status", &row.status))?,
        key: row.work_key.unwrap_or_else(|| row.name.clone()),
        name: row.name,
        iteration: <u32 as TryFrom<i32>>::try_from(row.iteration).unwrap_or(0),
        reason: row.reason,
        outputs: values(&row.outputs_json)?,
        params: values(&row.params_json)?,
        task_json: row.task_json,
        task_id: row.task_id.map(|id| id as u64),
        task_status: row.task_status,
        attempt: <u32 as TryFrom<i32>>::try_from(row.attempt).unwrap_or(0),
        submitted_at: row.submitted_at,
        ended_at: row.ended_at,
    })
}

/// Inserts a workflow in `running` with its graph.
pub async fn insert_workflow(
    conn: &impl ConnectionTrait,
    name: &str,
    user: &str,
    graph_json: String,
) -> Result<Workflow, DbErr> {
    let row = workflow::ActiveModel {
        name: Set(name.to_owned()),
        user_name: Set(user.to_owned()),
        status: Set(WorkflowStatus::Running.as_str().to_owned()),
        graph_json: Set(Some(graph_json)),
        created_at: Set(Utc::now()),
        ended_at: Set(None),
        ..Default::default()
    }
    .insert(conn)
    .await?;
    workflow_from(row)
}

/// A work instance to insert.
#[derive(Debug, Clone)]
pub struct NewWork {
    /// Instance key.
    pub key: String,
    /// Node name.
    pub name: String,
    /// State.
    pub status: WorkStatus,
    /// Iteration.
    pub iteration: u32,
    /// Reason.
    pub reason: String,
    /// Outputs.
    pub outputs: BTreeMap<String, Value>,
    /// Parameters.
    pub params: BTreeMap<String, Value>,
}

/// Inserts work instances (in chunks, so a 10,000-node workflow is a few statements). The unique
/// index on (workflow, key) makes a second insertion of the same instance fail the transaction.
pub async fn insert_works(conn: &impl ConnectionTrait, workflow_id: u64, works: &[NewWork]) -> Result<(), DbErr> {
    for chunk in works.chunks(500) {
        let rows = chunk.iter().map(|w| work::ActiveModel {
            workflow_id: Set(workflow_id as i64),
            name: Set(w.name.clone()),
            status: Set(w.status.as_str().to_owned()),
            parents_json: Set("[]".into()),
            task_json: Set(String::new()),
            task_id: Set(None),
            task_status: Set(String::new()),
            submitted_at: Set(None),
            ended_at: Set(w.status.is_final().then(Utc::now)),
            work_key: Set(Some(w.key.clone())),
            iteration: Set(w.iteration as i32),
            reason: Set(w.reason.clone()),
            outputs_json: Set(json_of(&w.outputs)),
            params_json: Set(json_of(&w.params)),
            attempt: Set(0),
            ..Default::default()
        });
        work::Entity::insert_many(rows).exec(conn).await?;
    }
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

/// IDs of workflows in a state.
pub async fn workflows_in(conn: &impl ConnectionTrait, status: WorkflowStatus) -> Result<Vec<u64>, DbErr> {
    Ok(workflow::Entity::find()
        .filter(workflow::Column::Status.eq(status.as_str()))
        .order_by_asc(workflow::Column::Id)
        .all(conn)
        .await?
        .into_iter()
        .map(|w| w.id as u64)
        .collect())
}

/// Sets a workflow's state.
pub async fn set_workflow_status(conn: &impl ConnectionTrait, id: u64, status: WorkflowStatus) -> Result<(), DbErr> {
    let ended = status.is_final().then(Utc::now);
    workflow::Entity::update_many()
        .col_expr(workflow::Column::Status, Expr::value(status.as_str()))
        .col_expr(workflow::Column::EndedAt, Expr::value(ended))
        .filter(workflow::Column::Id.eq(id as i64))
        .exec(conn)
        .await?;
    Ok(())
}

/// Replaces a workflow's graph (a driven workflow's driver added a node, or closed it).
pub async fn set_graph(conn: &impl ConnectionTrait, id: u64, graph_json: String) -> Result<(), DbErr> {
    workflow::Entity::update_many()
        .col_expr(workflow::Column::GraphJson, Expr::value(Some(graph_json)))
        .filter(workflow::Column::Id.eq(id as i64))
        .exec(conn)
        .await?;
    Ok(())
}

/// One work instance by key.
pub async fn work_by_key(conn: &impl ConnectionTrait, workflow_id: u64, key: &str) -> Result<Option<Work>, DbErr> {
    work::Entity::find()
        .filter(work::Column::WorkflowId.eq(workflow_id as i64))
        .filter(work::Column::WorkKey.eq(key))
        .one(conn)
        .await?
        .map(work_from)
        .transpose()
}

/// Work instances of a workflow in insertion order.
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

/// Work instances in a state, across workflows.
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

/// Writes an instance's state, reason, iteration, outputs and parameters.
pub async fn update_work(
    conn: &impl ConnectionTrait,
    workflow_id: u64,
    key: &str,
    instance: &crate::graph::plan::Instance,
) -> Result<(), DbErr> {
    let mut update = work::Entity::update_many()
        .col_expr(work::Column::Status, Expr::value(instance.status.as_str()))
        .col_expr(work::Column::Reason, Expr::value(instance.reason.clone()))
        .col_expr(work::Column::Iteration, Expr::value(instance.iteration as i32))
        .col_expr(work::Column::OutputsJson, Expr::value(json_of(&instance.outputs)))
        .col_expr(work::Column::ParamsJson, Expr::value(json_of(&instance.params)));
    update = update.col_expr(work::Column::EndedAt, Expr::value(instance.status.is_final().then(Utc::now)));
    update
        .filter(work::Column::WorkflowId.eq(workflow_id as i64))
        .filter(work::Column::WorkKey.eq(key))
        .exec(conn)
        .await?;
    Ok(())
}

/// Records a submission: the task, its spec, the attempt.
pub async fn record_task(
    conn: &impl ConnectionTrait,
    workflow_id: u64,
    key: &str,
    task_id: u64,
    task_json: String,
    attempt: u32,
) -> Result<(), DbErr> {
    work::Entity::update_many()
        .col_expr(work::Column::TaskId, Expr::value(task_id as i64))
        .col_expr(work::Column::TaskJson, Expr::value(task_json))
        .col_expr(work::Column::TaskStatus, Expr::value("registered"))
        .col_expr(work::Column::Attempt, Expr::value(attempt as i32))
        .col_expr(work::Column::SubmittedAt, Expr::value(Utc::now()))
        .filter(work::Column::WorkflowId.eq(workflow_id as i64))
        .filter(work::Column::WorkKey.eq(key))
        .exec(conn)
        .await?;
    Ok(())
}

/// Forgets a work's task (before a resubmission) and counts the attempt.
pub async fn clear_task(conn: &impl ConnectionTrait, workflow_id: u64, key: &str, attempt: u32) -> Result<(), DbErr> {
    work::Entity::update_many()
        .col_expr(work::Column::TaskId, Expr::value(Option::<i64>::None))
        .col_expr(work::Column::Attempt, Expr::value(attempt as i32))
        .filter(work::Column::WorkflowId.eq(workflow_id as i64))
        .filter(work::Column::WorkKey.eq(key))
        .exec(conn)
        .await?;
    Ok(())
}

/// Records the last task state seen.
pub async fn set_task_status(
    conn: &impl ConnectionTrait,
    workflow_id: u64,
    key: &str,
    task_status: &str,
) -> Result<(), DbErr> {
    work::Entity::update_many()
        .col_expr(work::Column::TaskStatus, Expr::value(task_status))
        .filter(work::Column::WorkflowId.eq(workflow_id as i64))
        .filter(work::Column::WorkKey.eq(key))
        .exec(conn)
        .await?;
    Ok(())
}

/// idds's migrator.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        let mut all = panda_bus::migration::migrations();
        all.push(Box::new(M0001Workflows));
        all.push(Box::new(M0002Graphs));
        all.push(Box::new(crate::hpo_store::M0003Hpo));
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

/// Graphs on workflows; work instances with keys (loops), reasons, outputs, parameters and
/// submission attempts.
struct M0002Graphs;

impl MigrationName for M0002Graphs {
    fn name(&self) -> &str {
        "idds_m0002_graphs"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0002Graphs {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite adds a single column per ALTER TABLE.
        if !manager.has_column("workflows", "graph_json").await? {
            manager
                .alter_table(Table::alter().table("workflows").add_column(text_null("graph_json")).to_owned())
                .await?;
        }
        let columns: [(&str, ColumnDef); 6] = [
            ("work_key", string_null("work_key")),
            ("iteration", integer("iteration").default(0).to_owned()),
            ("reason", string("reason").default("").to_owned()),
            ("outputs_json", text("outputs_json").default("{}").to_owned()),
            ("params_json", text("params_json").default("{}").to_owned()),
            ("attempt", integer("attempt").default(0).to_owned()),
        ];
        for (name, mut column) in columns {
            if !manager.has_column("works", name).await? {
                manager.alter_table(Table::alter().table("works").add_column(&mut column).to_owned()).await?;
            }
        }
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("works_workflow_key")
                    .table("works")
                    .col("workflow_id")
                    .col("work_key")
                    .unique()
                    .to_owned(),
            )
            .await
    }
}
