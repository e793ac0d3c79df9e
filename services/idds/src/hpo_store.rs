//! Studies and their points in idds's database (migration `idds_m0003_hpo`). A point is written
//! when it is proposed (pending), when its task is known (running) and when it ends (done with
//! its loss, or failed); each write commits alone or with the change it belongs to.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::hpo::{Point, PointStatus, PointView, StudySpec};

/// A study's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StudyStatus {
    /// Proposing and evaluating points.
    Running,
    /// Ended with at least one loss.
    Finished,
    /// Ended without any loss, or the optimizer failed.
    Failed,
    /// Its workflow was aborted.
    Cancelled,
}

impl StudyStatus {
    /// Stored and shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            StudyStatus::Running => "running",
            StudyStatus::Finished => "finished",
            StudyStatus::Failed => "failed",
            StudyStatus::Cancelled => "cancelled",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "running" => StudyStatus::Running,
            "finished" => StudyStatus::Finished,
            "failed" => StudyStatus::Failed,
            "cancelled" => StudyStatus::Cancelled,
            _ => return None,
        })
    }
}

/// A stored study.
#[derive(Debug, Clone, PartialEq)]
pub struct Study {
    /// ID.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Owner (its tasks run as this user).
    pub user: String,
    /// The workflow whose work runs it (None: created through HpoService).
    pub workflow_id: Option<u64>,
    /// The work's instance key.
    pub work_key: String,
    /// Settings.
    pub spec: StudySpec,
    /// The evaluation task template (JSON of `graph::model::TaskTemplate`); empty when points
    /// are evaluated outside (AskPoints/TellLoss).
    pub task_json: String,
    /// State.
    pub status: StudyStatus,
    /// Why it ended.
    pub reason: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Ended.
    pub ended_at: Option<DateTime<Utc>>,
}

/// A stored point.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPoint {
    /// Row ID.
    pub id: u64,
    /// Its study.
    pub study_id: u64,
    /// Its number in the study, from 1.
    pub seq: u32,
    /// The iteration that proposed it, from 1.
    pub iteration: u32,
    /// Parameters.
    pub params: Point,
    /// State.
    pub status: PointStatus,
    /// Loss when done.
    pub loss: Option<f64>,
    /// Its evaluation task.
    pub task_id: Option<u64>,
    /// Why it failed.
    pub reason: String,
}

impl StoredPoint {
    /// What the study rules see.
    pub fn view(&self) -> PointView {
        PointView { seq: self.seq, status: self.status, loss: self.loss }
    }
}

mod study {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "hpo_studies")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub name: String,
        pub user_name: String,
        pub workflow_id: Option<i64>,
        pub work_key: String,
        #[sea_orm(column_type = "Text")]
        pub spec_json: String,
        #[sea_orm(column_type = "Text")]
        pub task_json: String,
        pub status: String,
        #[sea_orm(column_type = "Text")]
        pub reason: String,
        pub created_at: DateTimeUtc,
        pub ended_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

mod point {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "hpo_points")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub study_id: i64,
        pub seq: i32,
        pub iteration: i32,
        #[sea_orm(column_type = "Text")]
        pub params_json: String,
        pub status: String,
        pub loss: Option<f64>,
        pub task_id: Option<i64>,
        #[sea_orm(column_type = "Text")]
        pub reason: String,
        pub created_at: DateTimeUtc,
        pub ended_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

fn bad(what: &str, value: &str) -> DbErr {
    DbErr::Custom(format!("stored {what} {value:?} is not valid"))
}

fn study_from(row: study::Model) -> Result<Study, DbErr> {
    Ok(Study {
        id: row.id as u64,
        status: StudyStatus::parse(&row.status).ok_or_else(|| bad("study status", &row.status))?,
        spec: serde_json::from_str(&row.spec_json).map_err(|_| bad("study spec", &row.spec_json))?,
        name: row.name,
        user: row.user_name,
        workflow_id: row.workflow_id.map(|w| w as u64),
        work_key: row.work_key,
        task_json: row.task_json,
        reason: row.reason,
        created_at: row.created_at,
        ended_at: row.ended_at,
    })
}

fn point_from(row: point::Model) -> Result<StoredPoint, DbErr> {
    Ok(StoredPoint {
        id: row.id as u64,
        study_id: row.study_id as u64,
        seq: row.seq as u32,
        iteration: row.iteration as u32,
        params: serde_json::from_str(&row.params_json).map_err(|_| bad("point", &row.params_json))?,
        status: PointStatus::parse(&row.status).ok_or_else(|| bad("point status", &row.status))?,
        loss: row.loss,
        task_id: row.task_id.map(|t| t as u64),
        reason: row.reason,
    })
}

/// A study to insert.
#[derive(Debug, Clone)]
pub struct NewStudy {
    /// Name.
    pub name: String,
    /// Owner.
    pub user: String,
    /// Its workflow, if a work runs it.
    pub workflow_id: Option<u64>,
    /// The work's key.
    pub work_key: String,
    /// Settings.
    pub spec: StudySpec,
    /// Evaluation task template JSON (empty: external evaluation).
    pub task_json: String,
}

/// Inserts a running study.
pub async fn insert_study(conn: &impl ConnectionTrait, new: NewStudy) -> Result<Study, DbErr> {
    let spec_json = serde_json::to_string(&new.spec).map_err(|e| DbErr::Custom(e.to_string()))?;
    let row = study::ActiveModel {
        name: Set(new.name),
        user_name: Set(new.user),
        workflow_id: Set(new.workflow_id.map(|w| w as i64)),
        work_key: Set(new.work_key),
        spec_json: Set(spec_json),
        task_json: Set(new.task_json),
        status: Set(StudyStatus::Running.as_str().to_owned()),
        reason: Set(String::new()),
        created_at: Set(Utc::now()),
        ended_at: Set(None),
        ..Default::default()
    }
    .insert(conn)
    .await?;
    study_from(row)
}

/// A study.
pub async fn get_study(conn: &impl ConnectionTrait, id: u64) -> Result<Option<Study>, DbErr> {
    study::Entity::find_by_id(id as i64).one(conn).await?.map(study_from).transpose()
}

/// Newest studies first.
pub async fn list_studies(conn: &impl ConnectionTrait, limit: u64) -> Result<Vec<Study>, DbErr> {
    study::Entity::find()
        .order_by_desc(study::Column::Id)
        .limit(limit)
        .all(conn)
        .await?
        .into_iter()
        .map(study_from)
        .collect()
}

/// Running studies, oldest first.
pub async fn running_studies(conn: &impl ConnectionTrait) -> Result<Vec<Study>, DbErr> {
    study::Entity::find()
        .filter(study::Column::Status.eq(StudyStatus::Running.as_str()))
        .order_by_asc(study::Column::Id)
        .all(conn)
        .await?
        .into_iter()
        .map(study_from)
        .collect()
}

/// The newest study a work runs.
pub async fn study_of_work(conn: &impl ConnectionTrait, workflow_id: u64, key: &str) -> Result<Option<Study>, DbErr> {
    study::Entity::find()
        .filter(study::Column::WorkflowId.eq(workflow_id as i64))
        .filter(study::Column::WorkKey.eq(key))
        .order_by_desc(study::Column::Id)
        .one(conn)
        .await?
        .map(study_from)
        .transpose()
}

/// Ends a study.
pub async fn end_study(conn: &impl ConnectionTrait, id: u64, status: StudyStatus, reason: &str) -> Result<(), DbErr> {
    study::Entity::update_many()
        .col_expr(study::Column::Status, Expr::value(status.as_str()))
        .col_expr(study::Column::Reason, Expr::value(reason))
        .col_expr(study::Column::EndedAt, Expr::value(Some(Utc::now())))
        .filter(study::Column::Id.eq(id as i64))
        .filter(study::Column::Status.eq(StudyStatus::Running.as_str()))
        .exec(conn)
        .await?;
    Ok(())
}

/// A study's points in order.
pub async fn points_of(conn: &impl ConnectionTrait, study_id: u64) -> Result<Vec<StoredPoint>, DbErr> {
    point::Entity::find()
        .filter(point::Column::StudyId.eq(study_id as i64))
        .order_by_asc(point::Column::Seq)
        .all(conn)
        .await?
        .into_iter()
        .map(point_from)
        .collect()
}

/// Inserts proposed points numbered from `first_seq`, all in `status`. The unique index on
/// (study, seq) makes a second insertion of the same numbers fail the transaction.
pub async fn insert_points(
    conn: &impl ConnectionTrait,
    study_id: u64,
    iteration: u32,
    first_seq: u32,
    points: &[Point],
    status: PointStatus,
) -> Result<(), DbErr> {
    if points.is_empty() {
        return Ok(());
    }
    let now = Utc::now();
    let rows = points.iter().enumerate().map(|(i, params)| point::ActiveModel {
        study_id: Set(study_id as i64),
        seq: Set((first_seq as usize + i) as i32),
        iteration: Set(iteration as i32),
        params_json: Set(serde_json::to_string(params).unwrap_or_else(|_| "{}".into())),
        status: Set(status.as_str().to_owned()),
        loss: Set(None),
        task_id: Set(None),
        reason: Set(String::new()),
        created_at: Set(now),
        ended_at: Set(None),
        ..Default::default()
    });
    point::Entity::insert_many(rows).exec(conn).await?;
    Ok(())
}

/// The point a task evaluates.
pub async fn point_by_task(conn: &impl ConnectionTrait, task_id: u64) -> Result<Option<StoredPoint>, DbErr> {
    point::Entity::find().filter(point::Column::TaskId.eq(task_id as i64)).one(conn).await?.map(point_from).transpose()
}

/// Whether any point waits for its task to be recorded.
pub async fn any_pending(conn: &impl ConnectionTrait) -> Result<bool, DbErr> {
    Ok(point::Entity::find().filter(point::Column::Status.eq(PointStatus::Pending.as_str())).one(conn).await?.is_some())
}

/// Running points with a task, across studies (reconciliation).
pub async fn running_points(conn: &impl ConnectionTrait) -> Result<Vec<StoredPoint>, DbErr> {
    point::Entity::find()
        .filter(point::Column::Status.eq(PointStatus::Running.as_str()))
        .filter(point::Column::TaskId.is_not_null())
        .order_by_asc(point::Column::Id)
        .all(conn)
        .await?
        .into_iter()
        .map(point_from)
        .collect()
}

/// Records a pending point's task: it is running.
pub async fn set_point_task(conn: &impl ConnectionTrait, point_id: u64, task_id: u64) -> Result<(), DbErr> {
    point::Entity::update_many()
        .col_expr(point::Column::TaskId, Expr::value(task_id as i64))
        .col_expr(point::Column::Status, Expr::value(PointStatus::Running.as_str()))
        .filter(point::Column::Id.eq(point_id as i64))
        .filter(point::Column::Status.eq(PointStatus::Pending.as_str()))
        .exec(conn)
        .await?;
    Ok(())
}

/// Ends a running (or pending) point: done with its loss, or failed with a reason. Returns
/// whether it changed (an ended point never changes again).
pub async fn end_point(
    conn: &impl ConnectionTrait,
    point_id: u64,
    status: PointStatus,
    loss: Option<f64>,
    reason: &str,
) -> Result<bool, DbErr> {
    let result = point::Entity::update_many()
        .col_expr(point::Column::Status, Expr::value(status.as_str()))
        .col_expr(point::Column::Loss, Expr::value(loss))
        .col_expr(point::Column::Reason, Expr::value(reason))
        .col_expr(point::Column::EndedAt, Expr::value(Some(Utc::now())))
        .filter(point::Column::Id.eq(point_id as i64))
        .filter(point::Column::Status.is_in([PointStatus::Pending.as_str(), PointStatus::Running.as_str()]))
        .exec(conn)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Studies and points.
pub(crate) struct M0003Hpo;

impl MigrationName for M0003Hpo {
    fn name(&self) -> &str {
        "idds_m0003_hpo"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for M0003Hpo {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("hpo_studies")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(string("name"))
                    .col(string("user_name"))
                    .col(big_integer_null("workflow_id"))
                    .col(string("work_key"))
                    .col(text("spec_json"))
                    .col(text("task_json"))
                    .col(string("status"))
                    .col(text("reason"))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone_null("ended_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("hpo_points")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(big_integer("study_id"))
                    .col(integer("seq"))
                    .col(integer("iteration"))
                    .col(text("params_json"))
                    .col(string("status"))
                    .col(double_null("loss"))
                    .col(big_integer_null("task_id"))
                    .col(text("reason"))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone_null("ended_at"))
                    .to_owned(),
            )
            .await?;
        for (name, table, cols, unique) in [
            ("hpo_studies_status", "hpo_studies", &["status"][..], false),
            ("hpo_studies_work", "hpo_studies", &["workflow_id", "work_key"][..], false),
            ("hpo_points_study_seq", "hpo_points", &["study_id", "seq"][..], true),
            ("hpo_points_task", "hpo_points", &["task_id"][..], false),
            ("hpo_points_status", "hpo_points", &["status"][..], false),
        ] {
            let mut index = Index::create();
            index.if_not_exists().name(name).table(table);
            for col in cols {
                index.col(*col);
            }
            if unique {
                index.unique();
            }
            manager.create_index(index.to_owned()).await?;
        }
        Ok(())
    }
}
