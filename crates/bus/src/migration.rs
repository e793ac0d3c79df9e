//! The bus's tables, as sea-orm-migration migrations that a service lists in its own migrator:
//!
//! ```text
//! impl MigratorTrait for Migrator {
//!     fn migrations() -> Vec<Box<dyn MigrationTrait>> {
//!         let mut migrations = panda_bus::migration::migrations();
//!         migrations.extend(store::migration::migrations());
//!         migrations
//!     }
//! }
//! ```
//!
//! Every statement says `IF NOT EXISTS`, so a migration also succeeds where its table already
//! exists; the names carry a `panda_bus` prefix so they never collide with a service's own.
//! Released migrations are never edited: changes come as new migrations appended here.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_pk_auto, blob, blob_null, integer, string, timestamp_with_time_zone};

/// The bus's migrations, in order.
pub fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![Box::new(CreateOutbox), Box::new(CreateProcessedEvents), Box::new(OutboxBatches)]
}

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Id,
    EventId,
    RoutingKey,
    OccurredAt,
    Body,
    NEvents,
    More,
}

#[derive(DeriveIden)]
enum ProcessedEvents {
    Table,
    Consumer,
    EventId,
    ProcessedAt,
}

/// Creates `outbox`; rows are published in `id` order.
struct CreateOutbox;

impl MigrationName for CreateOutbox {
    fn name(&self) -> &str {
        "m20260101_000001_panda_bus_create_outbox"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateOutbox {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Outbox::Table)
                    .if_not_exists()
                    .col(big_pk_auto(Outbox::Id))
                    .col(string(Outbox::EventId))
                    .col(string(Outbox::RoutingKey))
                    .col(timestamp_with_time_zone(Outbox::OccurredAt))
                    .col(blob(Outbox::Body))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Outbox::Table).if_exists().to_owned()).await
    }
}

/// Creates `processed_events`, keyed by (consumer, event), with an index for pruning by age.
struct CreateProcessedEvents;

impl MigrationName for CreateProcessedEvents {
    fn name(&self) -> &str {
        "m20260101_000002_panda_bus_create_processed_events"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateProcessedEvents {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ProcessedEvents::Table)
                    .if_not_exists()
                    .col(string(ProcessedEvents::Consumer))
                    .col(string(ProcessedEvents::EventId))
                    .col(timestamp_with_time_zone(ProcessedEvents::ProcessedAt))
                    .primary_key(Index::create().col(ProcessedEvents::Consumer).col(ProcessedEvents::EventId))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_processed_events_processed_at")
                    .table(ProcessedEvents::Table)
                    .col(ProcessedEvents::ProcessedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(ProcessedEvents::Table).if_exists().to_owned()).await
    }
}

/// Lets one outbox row carry all the events of one commit (`n_events`, and `more`: the events
/// after the first, encoded), so a commit of a thousand job changes writes, reads and deletes one
/// row instead of a thousand. Rows written before stay valid: one event, nothing `more`.
struct OutboxBatches;

impl MigrationName for OutboxBatches {
    fn name(&self) -> &str {
        "m20261126_000003_panda_bus_outbox_batches"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for OutboxBatches {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite has no `ADD COLUMN IF NOT EXISTS`; asking first keeps the migration re-runnable
        // where another service's migrator already added the columns to a shared database.
        if !manager.has_column("outbox", "n_events").await? {
            manager
                .alter_table(
                    Table::alter().table(Outbox::Table).add_column(integer(Outbox::NEvents).default(1)).to_owned(),
                )
                .await?;
        }
        if !manager.has_column("outbox", "more").await? {
            manager
                .alter_table(Table::alter().table(Outbox::Table).add_column(blob_null(Outbox::More)).to_owned())
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Outbox::Table).drop_column(Outbox::More).to_owned()).await?;
        manager.alter_table(Table::alter().table(Outbox::Table).drop_column(Outbox::NEvents).to_owned()).await
    }
}
