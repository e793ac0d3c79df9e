//! `processed_events` and the migrations, on SQLite and PostgreSQL.

use chrono::{Duration, Utc};
use panda_bus::idempotency;
use sea_orm::{ConnectionTrait, TransactionTrait};
use sea_orm_migration::{MigratorTrait, SchemaManager};
use uuid::Uuid;

use crate::support::{Database, Migrator, database};

macro_rules! idempotency_suite {
    ($(#[$attr:meta])* $module:ident, $database:expr) => {
        mod $module {
            use super::*;

            $(#[$attr])* #[tokio::test]
            async fn first_delivery_then_duplicates() { cases::first_delivery_then_duplicates($database).await }
            $(#[$attr])* #[tokio::test]
            async fn a_rolled_back_effect_leaves_no_record() { cases::a_rolled_back_effect_leaves_no_record($database).await }
            $(#[$attr])* #[tokio::test]
            async fn a_duplicate_keeps_the_transaction_usable() { cases::a_duplicate_keeps_the_transaction_usable($database).await }
            $(#[$attr])* #[tokio::test]
            async fn old_records_can_be_forgotten() { cases::old_records_can_be_forgotten($database).await }
            $(#[$attr])* #[tokio::test]
            async fn migrations_are_idempotent() { cases::migrations_are_idempotent($database).await }
        }
    };
}

idempotency_suite!(sqlite, Database::Sqlite);
idempotency_suite!(
    #[ignore = "needs PostgreSQL: set PANDA_TEST_DATABASE_URL"]
    postgres,
    Database::Postgres
);

mod cases {
    use super::*;

    pub async fn first_delivery_then_duplicates(kind: Database) {
        let (_test_db, db) = database(kind).await;
        let event_id = Uuid::new_v4();
        let txn = db.begin().await.unwrap();
        assert!(idempotency::first_delivery(&txn, "panda.jedi.tasks", event_id).await.unwrap());
        txn.commit().await.unwrap();

        let txn = db.begin().await.unwrap();
        assert!(!idempotency::first_delivery(&txn, "panda.jedi.tasks", event_id).await.unwrap());
        txn.commit().await.unwrap();
        // Another consumer of the same event has its own record.
        assert!(idempotency::first_delivery(&db, "panda.idds.tasks", event_id).await.unwrap());
        assert!(idempotency::first_delivery(&db, "panda.jedi.tasks", Uuid::new_v4()).await.unwrap());
    }

    pub async fn a_rolled_back_effect_leaves_no_record(kind: Database) {
        let (_test_db, db) = database(kind).await;
        let event_id = Uuid::new_v4();
        let txn = db.begin().await.unwrap();
        assert!(idempotency::first_delivery(&txn, "c", event_id).await.unwrap());
        txn.rollback().await.unwrap(); // the effect failed: the redelivery must apply it
        assert!(idempotency::first_delivery(&db, "c", event_id).await.unwrap());
    }

    pub async fn a_duplicate_keeps_the_transaction_usable(kind: Database) {
        let (_test_db, db) = database(kind).await;
        let event_id = Uuid::new_v4();
        idempotency::first_delivery(&db, "c", event_id).await.unwrap();
        let txn = db.begin().await.unwrap();
        assert!(!idempotency::first_delivery(&txn, "c", event_id).await.unwrap());
        // On PostgreSQL a unique violation would have aborted the transaction; this must still work.
        assert!(idempotency::first_delivery(&txn, "c", Uuid::new_v4()).await.unwrap());
        txn.commit().await.unwrap();
    }

    pub async fn old_records_can_be_forgotten(kind: Database) {
        let (_test_db, db) = database(kind).await;
        let event_id = Uuid::new_v4();
        idempotency::first_delivery(&db, "c", event_id).await.unwrap();
        assert_eq!(idempotency::forget_before(&db, Utc::now() - Duration::hours(1)).await.unwrap(), 0);
        assert!(!idempotency::first_delivery(&db, "c", event_id).await.unwrap());
        assert_eq!(idempotency::forget_before(&db, Utc::now() + Duration::hours(1)).await.unwrap(), 1);
        assert!(idempotency::first_delivery(&db, "c", event_id).await.unwrap());
    }

    pub async fn migrations_are_idempotent(kind: Database) {
        let (_test_db, db) = database(kind).await; // migrated once already
        Migrator::up(&db, None).await.unwrap(); // nothing pending: a no-op
        // Each migration also succeeds where its tables already exist (e.g. created by hand).
        let manager = SchemaManager::new(&db);
        for migration in panda_bus::migration::migrations() {
            migration.up(&manager).await.unwrap();
        }
        assert!(manager.has_table("outbox").await.unwrap());
        assert!(manager.has_table("processed_events").await.unwrap());
        assert_eq!(Migrator::get_pending_migrations(&db).await.unwrap().len(), 0);
        db.execute_unprepared("SELECT 1").await.unwrap();
    }
}
