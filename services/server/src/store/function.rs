//! Function-as-a-Task tables (migrations m0008, m0011): `function_works` (one row per work: its task,
//! function and serializer), `function_calls` (each job's arguments, keyed by task and job
//! index) and `function_results` (each call's latest result, the encoded `FunctionResult`).

use chrono::{DateTime, Utc};
use panda_types::{JobId, TaskId};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};

use super::{Store, to_i64};
use crate::error::Result;

pub(crate) mod work {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "function_works")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub task_id: i64,
        #[sea_orm(column_type = "Text")]
        pub function: String,
        pub serializer: String,
        pub n_calls: i32,
        #[sea_orm(column_type = "Text", nullable)]
        pub warm_command: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) mod call {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "function_calls")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub task_id: i64,
        #[sea_orm(primary_key, auto_increment = false)]
        pub idx: i32,
        #[sea_orm(column_type = "Text")]
        pub call_key: String,
        pub args: Vec<u8>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) mod result {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "function_results")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub task_id: i64,
        #[sea_orm(primary_key, auto_increment = false)]
        pub idx: i32,
        pub job_id: i64,
        pub ok: bool,
        pub body: Vec<u8>,
        pub stored_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A work: the task whose jobs run the calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkRecord {
    /// Its task.
    pub task_id: TaskId,
    /// `<module>:<qualified name>`.
    pub function: String,
    /// `json` or `pickle`.
    pub serializer: String,
    /// Number of calls (= jobs).
    pub n_calls: u32,
    /// The command of a warm runtime for its jobs (migration m0011), if the work has one.
    pub warm_command: Option<String>,
}

/// One call's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// Job index (1-based).
    pub index: u32,
    /// The caller's key for the result.
    pub key: String,
    /// Serialized arguments.
    pub args: Vec<u8>,
}

/// A stored result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultRecord {
    /// Job index (1-based).
    pub index: u32,
    /// The job that produced it (or ended without one).
    pub job_id: JobId,
    /// Whether the call succeeded.
    pub ok: bool,
    /// The encoded `FunctionResult`.
    pub body: Vec<u8>,
}

fn index_i32(index: u32) -> i32 {
    i32::try_from(index).unwrap_or(i32::MAX)
}

impl Store {
    /// Stores a work and its calls (numbered from 1 in order), in the caller's transaction.
    pub async fn insert_work(
        &self,
        conn: &impl ConnectionTrait,
        work: &WorkRecord,
        calls: &[CallRecord],
    ) -> Result<()> {
        work::Entity::insert(work::ActiveModel {
            task_id: Set(to_i64(work.task_id.0)),
            function: Set(work.function.clone()),
            serializer: Set(work.serializer.clone()),
            n_calls: Set(index_i32(work.n_calls)),
            warm_command: Set(work.warm_command.clone()),
        })
        .exec_without_returning(conn)
        .await?;
        // 4 bind parameters per row: a thousand rows stay far below SQLite's and PostgreSQL's limits.
        for chunk in calls.chunks(1000) {
            let rows = chunk.iter().map(|c| call::ActiveModel {
                task_id: Set(to_i64(work.task_id.0)),
                idx: Set(index_i32(c.index)),
                call_key: Set(c.key.clone()),
                args: Set(c.args.clone()),
            });
            call::Entity::insert_many(rows).exec_without_returning(conn).await?;
        }
        Ok(())
    }

    /// The work of a task, if the task is one.
    pub async fn find_work(&self, conn: &impl ConnectionTrait, task_id: TaskId) -> Result<Option<WorkRecord>> {
        Ok(work::Entity::find_by_id(to_i64(task_id.0)).one(conn).await?.map(|row| WorkRecord {
            task_id,
            function: row.function,
            serializer: row.serializer,
            n_calls: u32::try_from(row.n_calls).unwrap_or(0),
            warm_command: row.warm_command,
        }))
    }

    /// One call's arguments.
    pub async fn find_call(
        &self,
        conn: &impl ConnectionTrait,
        task_id: TaskId,
        index: u32,
    ) -> Result<Option<CallRecord>> {
        Ok(call::Entity::find_by_id((to_i64(task_id.0), index_i32(index))).one(conn).await?.map(|row| CallRecord {
            index,
            key: row.call_key,
            args: row.args,
        }))
    }

    /// The calls at `indexes` of a work, by index (missing ones are absent).
    pub async fn find_calls(
        &self,
        conn: &impl ConnectionTrait,
        task_id: TaskId,
        indexes: &[u32],
    ) -> Result<std::collections::HashMap<u32, CallRecord>> {
        let mut found = std::collections::HashMap::with_capacity(indexes.len());
        for chunk in indexes.chunks(500) {
            let rows = call::Entity::find()
                .filter(call::Column::TaskId.eq(to_i64(task_id.0)))
                .filter(call::Column::Idx.is_in(chunk.iter().map(|&i| index_i32(i))))
                .all(conn)
                .await?;
            for row in rows {
                if let Ok(index) = u32::try_from(row.idx) {
                    found.insert(index, CallRecord { index, key: row.call_key, args: row.args });
                }
            }
        }
        Ok(found)
    }

    /// The stored result of one call.
    pub async fn find_result(
        &self,
        conn: &impl ConnectionTrait,
        task_id: TaskId,
        index: u32,
    ) -> Result<Option<ResultRecord>> {
        Ok(result::Entity::find_by_id((to_i64(task_id.0), index_i32(index))).one(conn).await?.map(result_from_row))
    }

    /// Stores (or replaces) the result of one call.
    pub async fn upsert_result(
        &self,
        conn: &impl ConnectionTrait,
        task_id: TaskId,
        record: &ResultRecord,
        now: DateTime<Utc>,
    ) -> Result<()> {
        result::Entity::insert(result::ActiveModel {
            task_id: Set(to_i64(task_id.0)),
            idx: Set(index_i32(record.index)),
            job_id: Set(to_i64(record.job_id.0)),
            ok: Set(record.ok),
            body: Set(record.body.clone()),
            stored_at: Set(now),
        })
        .on_conflict(
            OnConflict::columns([result::Column::TaskId, result::Column::Idx])
                .update_columns([
                    result::Column::JobId,
                    result::Column::Ok,
                    result::Column::Body,
                    result::Column::StoredAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(conn)
        .await?;
        Ok(())
    }

    /// The index and key of every call of a work that has no stored result.
    pub async fn calls_without_result(
        &self,
        conn: &impl ConnectionTrait,
        task_id: TaskId,
    ) -> Result<Vec<(u32, String)>> {
        let answered: std::collections::HashSet<u32> =
            self.results_of(conn, task_id).await?.into_iter().map(|r| r.index).collect();
        let rows = call::Entity::find()
            .select_only()
            .column(call::Column::Idx)
            .column(call::Column::CallKey)
            .filter(call::Column::TaskId.eq(to_i64(task_id.0)))
            .order_by_asc(call::Column::Idx)
            .into_tuple::<(i32, String)>()
            .all(conn)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(idx, key)| u32::try_from(idx).ok().map(|idx| (idx, key)))
            .filter(|(idx, _)| !answered.contains(idx))
            .collect())
    }

    /// Every stored result of a work, in index order.
    pub async fn results_of(&self, conn: &impl ConnectionTrait, task_id: TaskId) -> Result<Vec<ResultRecord>> {
        let rows = result::Entity::find()
            .filter(result::Column::TaskId.eq(to_i64(task_id.0)))
            .order_by_asc(result::Column::Idx)
            .all(conn)
            .await?;
        Ok(rows.into_iter().map(result_from_row).collect())
    }
}

fn result_from_row(row: result::Model) -> ResultRecord {
    ResultRecord {
        index: u32::try_from(row.idx).unwrap_or(0),
        job_id: JobId(u64::try_from(row.job_id).unwrap_or(0)),
        ok: row.ok,
        body: row.body,
    }
}
