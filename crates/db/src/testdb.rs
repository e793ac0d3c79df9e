//! A fresh database per test: a SQLite file in a temporary directory, or a new PostgreSQL
//! database created from `PANDA_TEST_DATABASE_URL` and dropped afterwards.

use sea_orm::{ConnectionTrait, DatabaseConnection};

/// A database that exists for one test.
pub struct TestDb {
    /// The connection URL of the fresh database.
    pub url: String,
    _dir: Option<TempDir>,
    cleanup: Option<(String, String)>,
}

/// A temporary directory removed on drop (kept minimal so the crate needs no tempfile).
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl TestDb {
    /// A SQLite file in a new temporary directory.
    ///
    /// # Panics
    /// When the temporary directory cannot be created (a test environment problem).
    pub fn sqlite_temp() -> Self {
        let dir = std::env::temp_dir().join(format!("panda-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temporary directory for a test database");
        let url = format!("sqlite://{}?mode=rwc", dir.join("test.db").display());
        Self { url, _dir: Some(TempDir(dir)), cleanup: None }
    }

    /// A new, empty PostgreSQL database on the server named by `PANDA_TEST_DATABASE_URL`.
    ///
    /// # Panics
    /// When the variable is unset or the server does not answer: a test marked as needing
    /// PostgreSQL must fail, not pass, without it.
    pub async fn postgres_from_env() -> Self {
        let admin_url = std::env::var("PANDA_TEST_DATABASE_URL").expect(
            "PANDA_TEST_DATABASE_URL must name a PostgreSQL server, e.g. postgres://postgres@127.0.0.1:5432/postgres",
        );
        Self::postgres_on(&admin_url).await
    }

    /// A new, empty database on the PostgreSQL server of `admin_url`.
    ///
    /// # Panics
    /// When the server does not answer or refuses `CREATE DATABASE`.
    pub async fn postgres_on(admin_url: &str) -> Self {
        let name = format!("panda_test_{}", uuid::Uuid::new_v4().simple());
        let admin = crate::connect(admin_url, Some(1)).await.expect("PostgreSQL from PANDA_TEST_DATABASE_URL answers");
        admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.expect("CREATE DATABASE for a test");
        let _ = admin.close().await;
        let base = admin_url.rsplit_once('/').map_or(admin_url, |(base, _)| base);
        Self { url: format!("{base}/{name}"), _dir: None, cleanup: Some((admin_url.to_owned(), name)) }
    }

    /// Connects to the test database.
    ///
    /// # Panics
    /// When the database cannot be reached.
    pub async fn connect(&self) -> DatabaseConnection {
        crate::connect(&self.url, Some(8)).await.expect("test database answers")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop the PostgreSQL database from a separate thread: Drop cannot await, and the test's
        // runtime may be shutting down.
        if let Some((admin_url, name)) = self.cleanup.take() {
            let _ = std::thread::spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
                runtime.block_on(async {
                    if let Ok(admin) = crate::connect(&admin_url, Some(1)).await {
                        let _ = admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                    }
                });
            })
            .join();
        }
    }
}
