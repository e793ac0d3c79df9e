//! The `cache_archives` table: metadata of the code archives in the cache directory (the bytes
//! are files, see `crate::cache`). A row exists only for an archive whose file was completely
//! written and renamed into place.

use chrono::{DateTime, Utc};
use sea_orm::{ActiveModelTrait, ConnectionTrait, EntityTrait, Set};

use super::Store;
use crate::error::Result;

pub(crate) mod archive {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "cache_archives")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub sha256: String,
        pub size_bytes: i64,
        pub uploader: String,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// An archive the cache holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveRecord {
    /// Content address: 64 lowercase hex digits.
    pub sha256: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Who uploaded it first.
    pub uploader: String,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
}

fn from_row(row: archive::Model) -> ArchiveRecord {
    ArchiveRecord {
        sha256: row.sha256,
        size_bytes: u64::try_from(row.size_bytes).unwrap_or(0),
        uploader: row.uploader,
        created_at: row.created_at,
    }
}

impl Store {
    /// The archive with this digest, if the cache holds it.
    pub async fn find_archive(&self, conn: &impl ConnectionTrait, sha256: &str) -> Result<Option<ArchiveRecord>> {
        Ok(archive::Entity::find_by_id(sha256.to_owned()).one(conn).await?.map(from_row))
    }

    /// Records a stored archive; `false` when a row for it exists already (a concurrent upload of
    /// the same content won: both wrote the same bytes).
    pub async fn insert_archive(&self, conn: &impl ConnectionTrait, record: &ArchiveRecord) -> Result<bool> {
        if self.find_archive(conn, &record.sha256).await?.is_some() {
            return Ok(false);
        }
        let inserted = archive::ActiveModel {
            sha256: Set(record.sha256.clone()),
            size_bytes: Set(i64::try_from(record.size_bytes).unwrap_or(i64::MAX)),
            uploader: Set(record.uploader.clone()),
            created_at: Set(record.created_at),
        }
        .insert(conn)
        .await;
        match inserted {
            Ok(_) => Ok(true),
            // Lost a race between the lookup and the insert: the other upload's row stands.
            Err(error) if matches!(error.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_))) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }
}
