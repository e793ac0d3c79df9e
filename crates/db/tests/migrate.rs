//! Migrations on a real PostgreSQL database.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use panda_db::TestDb;
use sea_orm_migration::prelude::*;

struct CreateThings;

impl MigrationName for CreateThings {
    fn name(&self) -> &str {
        "test_m0001_things"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateThings {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Deliberately not IF NOT EXISTS: a second run of this migration would fail.
        manager.get_connection().execute_unprepared("CREATE TABLE things (id BIGINT PRIMARY KEY)").await?;
        Ok(())
    }
}

struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateThings)]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL: set PANDA_TEST_DATABASE_URL"]
async fn replicas_starting_together_migrate_once() {
    let db = TestDb::postgres_from_env().await;
    let starts: Vec<_> = (0..6)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { panda_db::connect_and_migrate::<Migrator>(&url, Some(1)).await })
        })
        .collect();
    for start in starts {
        start.await.unwrap().expect("every replica starts");
    }
}
