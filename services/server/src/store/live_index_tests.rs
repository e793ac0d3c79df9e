//! The queries over live jobs read the partial index `jobs_live` (migration m0013) on both
//! databases, so their cost follows the live jobs rather than the job history.

use chrono::Utc;
use panda_db::TestDb;
use sea_orm::{ConnectionTrait, DbBackend, QueryTrait, Statement};
use sea_orm_migration::SchemaManager;

use super::Store;
use super::migration::Migrator;

/// The database's plan for `query`, as text.
async fn plan(conn: &sea_orm::DatabaseConnection, query: impl QueryTrait) -> String {
    let backend = conn.get_database_backend();
    let statement = query.build(backend);
    let explain = match backend {
        DbBackend::Postgres => "EXPLAIN",
        _ => "EXPLAIN QUERY PLAN",
    };
    let sql = format!("{explain} {}", statement.sql);
    let explained = Statement::from_sql_and_values(backend, sql, statement.values.map(|v| v.0).unwrap_or_default());
    let rows = conn.query_all_raw(explained).await.expect("EXPLAIN runs");
    let mut lines = Vec::new();
    for row in rows {
        // SQLite: (id, parent, notused, detail); PostgreSQL: one "QUERY PLAN" column.
        let line: String = match backend {
            DbBackend::Postgres => row.try_get_by_index(0),
            _ => row.try_get_by_index(3),
        }
        .expect("a plan line");
        lines.push(line);
    }
    lines.join("\n")
}

async fn live_queries_read_the_live_index(db: TestDb) {
    let conn = panda_db::connect_and_migrate::<Migrator>(&db.url, Some(1)).await.unwrap();
    let manager = SchemaManager::new(&conn);
    assert!(manager.has_index("jobs", "jobs_live").await.unwrap());
    assert!(!manager.has_index("jobs", "jobs_dispatch").await.unwrap(), "m0013 drops the full dispatch index");
    if conn.get_database_backend() == DbBackend::Postgres {
        // An empty table is cheapest to scan; the question is whether the index can serve.
        conn.execute_unprepared("SET enable_seqscan = off").await.unwrap();
    }
    let queries = [
        ("stale held jobs", plan(&conn, Store::stale_held_jobs_query(Utc::now(), 500)).await),
        ("queue load", plan(&conn, Store::queue_load_query(&[])).await),
        ("queue load of some queues", plan(&conn, Store::queue_load_query(&["a".into(), "b".into()])).await),
        ("share counts", plan(&conn, Store::share_counts_query()).await),
        ("kills to pass on", plan(&conn, Store::marked_for_kill_query("a")).await),
    ];
    for (name, plan) in queries {
        assert!(plan.contains("jobs_live"), "{name} must read jobs_live; plan:\n{plan}");
    }
    // Dispatch keeps its own index, which gives the jobs in claim order.
    let store = Store::new(conn.get_database_backend());
    let offer = panda_types::Resources { cores: 8, memory_mb: 16000, ..Default::default() };
    let claim = plan(&conn, store.claim_query("a", &offer, 10, super::ClaimFilter::default())).await;
    assert!(claim.contains("jobs_activated"), "dispatch must read jobs_activated; plan:\n{claim}");
    // The migration's predicate and the queries' filter are the same text.
    let predicate: Vec<String> = if conn.get_database_backend() == DbBackend::Sqlite {
        let rows = conn
            .query_all_raw(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT sql FROM sqlite_master WHERE name = 'jobs_live'",
            ))
            .await
            .unwrap();
        rows.iter().map(|r| r.try_get_by_index::<String>(0).unwrap()).collect()
    } else {
        Vec::new()
    };
    for sql in predicate {
        assert!(sql.ends_with(&format!("WHERE {}", super::LIVE_JOBS)), "{sql}");
    }
}

#[tokio::test]
async fn live_queries_read_the_live_index_sqlite() {
    live_queries_read_the_live_index(TestDb::sqlite_temp()).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set PANDA_TEST_DATABASE_URL"]
async fn live_queries_read_the_live_index_postgres() {
    live_queries_read_the_live_index(TestDb::postgres_from_env().await).await;
}
