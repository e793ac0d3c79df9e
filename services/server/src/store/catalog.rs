//! The data catalog (input datasets registered with their files' events and replica sites) and
//! the brokerage decisions JEDI records. Tables from migration m0007 (`files.n_events`,
//! `file_replicas`, `brokerage_decisions`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use panda_types::{DatasetStatus, FileStatus, TaskId};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};

use super::{Store, to_i64};
use crate::error::Result;

pub(crate) mod replica {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "file_replicas")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub file_id: i64,
        #[sea_orm(primary_key, auto_increment = false)]
        pub site: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) mod decision {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "brokerage_decisions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub task_id: i64,
        pub pending: bool,
        #[sea_orm(column_type = "Text")]
        pub summary: String,
        pub body: Vec<u8>,
        pub decided_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A file as registered in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CatalogEntry {
    /// Logical file name.
    pub lfn: String,
    /// Size.
    pub size_bytes: u64,
    /// Checksum.
    pub checksum: String,
    /// Events (0: unknown).
    pub n_events: u64,
    /// Sites with a replica.
    pub replicas: Vec<String>,
}

impl Store {
    /// Registers a closed input dataset (no producing task: task 0) with its files and replicas.
    pub async fn register_dataset(
        &self,
        conn: &impl ConnectionTrait,
        name: &str,
        files: &[CatalogEntry],
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.insert_dataset(conn, name, TaskId(0), DatasetStatus::Done, now).await?;
        let Some((dataset_id, _, _)) = self.find_dataset(conn, name).await? else {
            return Err(crate::error::Error::DatasetNotFound { name: name.to_owned() });
        };
        for file in files {
            let row = super::entities::file::ActiveModel {
                dataset_id: Set(dataset_id),
                lfn: Set(file.lfn.clone()),
                job_id: Set(0),
                status: Set(FileStatus::Finished.as_str().to_owned()),
                size_bytes: Set(to_i64(file.size_bytes)),
                checksum: Set(file.checksum.clone()),
                n_events: Set(to_i64(file.n_events)),
                modified_at: Set(now),
                ..Default::default()
            }
            .insert(conn)
            .await?;
            for site in &file.replicas {
                replica::ActiveModel { file_id: Set(row.id), site: Set(site.clone()) }.insert(conn).await?;
            }
        }
        Ok(())
    }

    /// Events and replica sites of a dataset's files, by LFN.
    pub async fn file_details(
        &self,
        conn: &impl ConnectionTrait,
        dataset_id: i64,
    ) -> Result<HashMap<String, (u64, Vec<String>)>> {
        let rows = super::entities::file::Entity::find()
            .filter(super::entities::file::Column::DatasetId.eq(dataset_id))
            .all(conn)
            .await?;
        let mut by_id: HashMap<i64, (String, u64, Vec<String>)> =
            rows.into_iter().map(|r| (r.id, (r.lfn, u64::try_from(r.n_events).unwrap_or(0), Vec::new()))).collect();
        let ids: Vec<i64> = by_id.keys().copied().collect();
        for chunk in ids.chunks(1000) {
            for r in
                replica::Entity::find().filter(replica::Column::FileId.is_in(chunk.iter().copied())).all(conn).await?
            {
                if let Some(entry) = by_id.get_mut(&r.file_id) {
                    entry.2.push(r.site);
                }
            }
        }
        Ok(by_id
            .into_values()
            .map(|(lfn, events, mut sites)| {
                sites.sort();
                (lfn, (events, sites))
            })
            .collect())
    }

    /// Stores a task's latest brokerage decision (replacing the previous one).
    pub async fn save_brokerage(
        &self,
        conn: &impl ConnectionTrait,
        task_id: TaskId,
        pending: bool,
        summary: &str,
        body: Vec<u8>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        decision::Entity::insert(decision::ActiveModel {
            task_id: Set(to_i64(task_id.0)),
            pending: Set(pending),
            summary: Set(summary.to_owned()),
            body: Set(body),
            decided_at: Set(now),
        })
        .on_conflict(
            OnConflict::column(decision::Column::TaskId)
                .update_columns([
                    decision::Column::Pending,
                    decision::Column::Summary,
                    decision::Column::Body,
                    decision::Column::DecidedAt,
                ])
                .to_owned(),
        )
        .exec(conn)
        .await?;
        Ok(())
    }

    /// A task's latest brokerage decision, encoded.
    pub async fn brokerage(&self, conn: &impl ConnectionTrait, task_id: TaskId) -> Result<Option<Vec<u8>>> {
        Ok(decision::Entity::find_by_id(to_i64(task_id.0)).one(conn).await?.map(|r| r.body))
    }
}
