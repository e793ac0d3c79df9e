//! The `job_logs` table: chunks of jobs' stdout and stderr as pilots append them. A chunk's key is
//! (job, stream, byte offset); a stream's chunks are contiguous from offset 0, so its length is
//! the sum of its chunks' sizes.

use chrono::{DateTime, Utc};
use panda_types::JobId;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, FromQueryResult, QueryFilter, QueryOrder, QuerySelect,
    Set,
};

use super::Store;
use crate::error::Result;

pub(crate) mod chunk {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "job_logs")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub job_id: i64,
        #[sea_orm(primary_key, auto_increment = false)]
        pub stream: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub byte_offset: i64,
        pub size_bytes: i64,
        pub data: Vec<u8>,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Bytes stored per stream of one job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogSizes {
    /// stdout.
    pub stdout: u64,
    /// stderr.
    pub stderr: u64,
}

impl LogSizes {
    /// Both streams.
    pub fn total(&self) -> u64 {
        self.stdout + self.stderr
    }
}

#[derive(Debug, FromQueryResult)]
struct StreamSize {
    stream: String,
    n: Option<i64>,
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Store {
    /// How many bytes of each stream of a job are stored.
    pub async fn log_sizes(&self, conn: &impl ConnectionTrait, job_id: JobId) -> Result<LogSizes> {
        let rows = chunk::Entity::find()
            .select_only()
            .column(chunk::Column::Stream)
            // SUM of a BIGINT is NUMERIC on PostgreSQL.
            .column_as(Expr::cust("CAST(SUM(size_bytes) AS BIGINT)"), "n")
            .filter(chunk::Column::JobId.eq(to_i64(job_id.0)))
            .group_by(chunk::Column::Stream)
            .into_model::<StreamSize>()
            .all(conn)
            .await?;
        let mut sizes = LogSizes::default();
        for row in rows {
            let n = u64::try_from(row.n.unwrap_or(0)).unwrap_or(0);
            match row.stream.as_str() {
                "stdout" => sizes.stdout = n,
                "stderr" => sizes.stderr = n,
                _ => {}
            }
        }
        Ok(sizes)
    }

    /// Stores one chunk at `offset` of `stream` (the caller checked that it continues the stream).
    pub async fn insert_log_chunk(
        &self,
        conn: &impl ConnectionTrait,
        job_id: JobId,
        stream: &str,
        offset: u64,
        data: Vec<u8>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        chunk::ActiveModel {
            job_id: Set(to_i64(job_id.0)),
            stream: Set(stream.to_owned()),
            byte_offset: Set(to_i64(offset)),
            size_bytes: Set(to_i64(data.len() as u64)),
            data: Set(data),
            created_at: Set(now),
        }
        .insert(conn)
        .await?;
        Ok(())
    }

    /// Up to `limit` chunks of a stream that hold bytes at or after `from`, in order, as (offset,
    /// bytes); the first may start before `from` (the caller cuts it).
    pub async fn log_chunks(
        &self,
        conn: &impl ConnectionTrait,
        job_id: JobId,
        stream: &str,
        from: u64,
        limit: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        let rows = chunk::Entity::find()
            .filter(chunk::Column::JobId.eq(to_i64(job_id.0)))
            .filter(chunk::Column::Stream.eq(stream))
            .filter(Expr::col(chunk::Column::ByteOffset).add(Expr::col(chunk::Column::SizeBytes)).gt(to_i64(from)))
            .order_by_asc(chunk::Column::ByteOffset)
            .limit(limit)
            .all(conn)
            .await?;
        Ok(rows.into_iter().map(|row| (u64::try_from(row.byte_offset).unwrap_or(0), row.data)).collect())
    }
}
