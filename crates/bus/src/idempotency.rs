//! Idempotent consumers: the `processed_events` table remembers which events each consumer has
//! applied. Record the event in the same transaction as its effect; a redelivered event then finds
//! itself recorded and is skipped, and a rolled-back effect leaves no record behind.
//!
//! ```text
//! let txn = db.begin().await?;
//! if idempotency::first_delivery(&txn, "panda.jedi.tasks", event.event_id).await? {
//!     apply_the_effect(&txn, &event).await?;
//! }
//! txn.commit().await?; // then return Ok so the bus acks
//! ```

use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};
use uuid::Uuid;

/// The `processed_events` table.
pub(crate) mod entity {
    use sea_orm::entity::prelude::*;

    /// An event a consumer has applied.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "processed_events")]
    pub struct Model {
        /// The consumer, usually its queue name.
        #[sea_orm(primary_key, auto_increment = false)]
        pub consumer: String,
        /// The event ID, hyphenated.
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        /// When it was applied, for pruning.
        pub processed_at: DateTimeUtc,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Records that `consumer` processes `event_id`, in the consumer's transaction `txn`. `Ok(true)`
/// the first time: apply the effect; `Ok(false)` when it was recorded before: skip it.
///
/// Uses `INSERT .. ON CONFLICT DO NOTHING` rather than catching a unique violation, because on
/// PostgreSQL a failed statement aborts the caller's whole transaction.
///
/// # Errors
/// The insert failed; roll back and answer `HandleError::Retry`.
pub async fn first_delivery<C: ConnectionTrait>(
    txn: &C,
    consumer: &str,
    event_id: Uuid,
) -> Result<bool, sea_orm::DbErr> {
    let row = entity::ActiveModel {
        consumer: Set(consumer.to_owned()),
        event_id: Set(event_id.hyphenated().to_string()),
        processed_at: Set(Utc::now()),
    };
    let inserted = entity::Entity::insert(row)
        .on_conflict(OnConflict::columns([entity::Column::Consumer, entity::Column::EventId]).do_nothing().to_owned())
        .exec_without_returning(txn)
        .await?;
    Ok(inserted == 1)
}

/// Forgets the events processed before `before`, so the table does not grow forever. Pick a
/// horizon well beyond how long an event can be redelivered (days, not minutes). Returns how many
/// records were deleted.
///
/// # Errors
/// The delete failed.
pub async fn forget_before<C: ConnectionTrait>(db: &C, before: DateTime<Utc>) -> Result<u64, sea_orm::DbErr> {
    let result = entity::Entity::delete_many().filter(entity::Column::ProcessedAt.lt(before)).exec(db).await?;
    Ok(result.rows_affected)
}
