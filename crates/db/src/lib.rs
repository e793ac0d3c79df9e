//! Database access shared by the services that own state (server, harvester, idds): connecting
//! to PostgreSQL or SQLite from one URL, running a service's migrations at start, and `TestDb`,
//! which gives each test a fresh SQLite file or a fresh PostgreSQL database.
//!
//! SQLite (the embedded default) has no row locks, so the pool holds a single connection: writers
//! are serialised, which is what makes dispatch atomic there. Code running inside a transaction
//! must therefore never use the pool itself, or it waits for the connection it already holds.
//! Reads that need no transaction can go to [`read_pool`]: on SQLite, read-only connections
//! beside the writer (WAL lets them read while it writes), so a busy writer thread is not also
//! the thread that answers every status query.

mod testdb;

use std::path::Path;
use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, TransactionTrait};
use sea_orm_migration::MigratorTrait;
use serde::{Deserialize, Serialize};

pub use sea_orm;
pub use testdb::TestDb;

/// `[<service>.database]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://user@host/db` or `sqlite://path?mode=rwc`; unset: SQLite under the data directory.
    pub url: Option<String>,
    /// Pool size on PostgreSQL (SQLite always uses one connection for writes).
    pub max_connections: Option<u32>,
    /// SQLite only: read-only connections beside the writer for reads that need no transaction
    /// (services that use [`read_pool`]); default 4.
    pub read_connections: Option<u32>,
}

impl DatabaseConfig {
    /// The URL to use: the configured one, or `sqlite://<data_dir>/<file>?mode=rwc`.
    pub fn url_or_sqlite(&self, data_dir: &Path, file: &str) -> String {
        match &self.url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}?mode=rwc", data_dir.join(file).display()),
        }
    }
}

/// A database failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL's scheme is not supported.
    #[error("database url {url:?} is not supported; use postgres://... or sqlite://...")]
    UnsupportedUrl {
        /// The URL (without password).
        url: String,
    },
    /// Could not connect.
    #[error("cannot connect to the database at {url}")]
    Connect {
        /// The URL (without password).
        url: String,
        /// Driver error.
        #[source]
        source: sea_orm::DbErr,
    },
    /// Migrations failed.
    #[error("database migrations failed: {0}")]
    Migrate(#[source] sea_orm::DbErr),
    /// The directory for a SQLite file cannot be created.
    #[error("cannot create the database directory {path}")]
    Directory {
        /// The directory.
        path: String,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl panda_runtime::ServiceError for Error {
    fn code(&self) -> panda_runtime::ErrorCode {
        match self {
            Error::UnsupportedUrl { .. } | Error::Directory { .. } | Error::Migrate(_) => {
                panda_runtime::ErrorCode::Internal
            }
            Error::Connect { .. } => panda_runtime::ErrorCode::Unavailable,
        }
    }
}

/// Hides a password in a URL for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme + 3], &credentials[..colon], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// How much of a SQLite database file each connection maps into memory (256 MiB).
const SQLITE_MMAP_SIZE: &str = "268435456";

/// A SQLite connection is a file in this process: there is no server to have gone away, so the
/// pool hands connections out without first pinging them (a round trip to the connection's
/// thread on every acquire).
fn sqlite_pool_without_ping(options: &mut ConnectOptions) {
    options.map_sqlx_sqlite_pool_opts(|pool| pool.test_before_acquire(false));
}

/// Connects and tunes the connection for the backend.
///
/// # Errors
/// [`Error::UnsupportedUrl`], [`Error::Directory`] or [`Error::Connect`].
pub async fn connect(url: &str, max_connections: Option<u32>) -> Result<DatabaseConnection, Error> {
    let is_sqlite = url.starts_with("sqlite:");
    if !is_sqlite && !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
        return Err(Error::UnsupportedUrl { url: redact(url) });
    }
    if is_sqlite {
        let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
        let path = path.split('?').next().unwrap_or_default();
        if let Some(parent) = Path::new(path).parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|source| Error::Directory { path: parent.display().to_string(), source })?;
        }
    }
    let mut options = ConnectOptions::new(url.to_owned());
    options.connect_timeout(Duration::from_secs(10)).acquire_timeout(Duration::from_secs(60)).sqlx_logging(false);
    if is_sqlite {
        options.max_connections(1).min_connections(1);
        options.map_sqlx_sqlite_opts(|o| o.pragma("mmap_size", SQLITE_MMAP_SIZE));
        sqlite_pool_without_ping(&mut options);
    } else {
        options.max_connections(max_connections.unwrap_or(16));
    }
    let db = Database::connect(options).await.map_err(|source| Error::Connect { url: redact(url), source })?;
    if db.get_database_backend() == DbBackend::Sqlite {
        for pragma in [
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=NORMAL",
            "PRAGMA busy_timeout=10000",
            "PRAGMA foreign_keys=ON",
        ] {
            db.execute_unprepared(pragma).await.map_err(|source| Error::Connect { url: redact(url), source })?;
        }
    }
    Ok(db)
}

/// Read-only connections on SQLite beside the writer `db` (at most `readers`; 4 when unset);
/// with PostgreSQL, or a SQLite database other connections cannot open (in memory), `db` itself.
///
/// A read on the pool sees every transaction committed before it started (WAL), so an answer
/// read right after a commit includes it; it never sees a transaction still open on the writer.
///
/// # Errors
/// [`Error::Connect`].
pub async fn read_pool(db: &DatabaseConnection, url: &str, readers: Option<u32>) -> Result<DatabaseConnection, Error> {
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    if db.get_database_backend() != DbBackend::Sqlite || in_memory {
        return Ok(db.clone());
    }
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty() && !p.starts_with("mode=")).collect();
    params.push("mode=ro");
    let read_url = format!("{path}?{}", params.join("&"));
    let mut options = ConnectOptions::new(read_url);
    let readers = readers.unwrap_or(4).max(1);
    options
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(60))
        .max_connections(readers)
        .min_connections(1)
        .sqlx_logging(false);
    // Every commit of the writer empties a reader's page cache; with the file mapped, pages not
    // in the WAL are read in place rather than copied back in.
    options.map_sqlx_sqlite_opts(|o| o.pragma("mmap_size", SQLITE_MMAP_SIZE));
    sqlite_pool_without_ping(&mut options);
    let reads = Database::connect(options).await.map_err(|source| Error::Connect { url: redact(url), source })?;
    // No pragmas: WAL is a property of the file (the writer set it), and sqlx's own 5 s busy
    // timeout on each connection covers the brief locks a reader can meet during a checkpoint.
    Ok(reads)
}

/// Connects and runs the migrator's pending migrations (idempotent; safe on every start).
///
/// # Errors
/// As [`connect`], or [`Error::Migrate`].
pub async fn connect_and_migrate<M: MigratorTrait>(
    url: &str,
    max_connections: Option<u32>,
) -> Result<DatabaseConnection, Error> {
    let db = connect(url, max_connections).await?;
    if db.get_database_backend() == sea_orm::DbBackend::Postgres {
        // Replicas starting together on a new database would race to create the same tables:
        // one migrates, the others wait on a lock held by a connection of its own (the pool may
        // have a single connection) and then find nothing left to do.
        let lock = connect(url, Some(1)).await?;
        let held = lock.begin().await.map_err(Error::Migrate)?;
        held.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
            .await
            .map_err(Error::Migrate)?;
        M::up(&db, None).await.map_err(Error::Migrate)?;
        held.commit().await.map_err(Error::Migrate)?;
        lock.close().await.map_err(Error::Migrate)?;
    } else {
        M::up(&db, None).await.map_err(Error::Migrate)?;
    }
    Ok(db)
}

/// PostgreSQL advisory lock key serializing migrations (any fixed number; "panda" in ASCII).
const MIGRATION_LOCK: i64 = 0x70_61_6e_64_61;

/// Whether an error is a unique-constraint violation (a duplicate insert).
pub fn is_unique_violation(error: &sea_orm::DbErr) -> bool {
    matches!(error.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }

    #[tokio::test]
    async fn sqlite_read_pool_sees_commits_and_refuses_writes() {
        let test_db = TestDb::sqlite_temp();
        let db = connect(&test_db.url, None).await.unwrap();
        db.execute_unprepared("CREATE TABLE t (x INTEGER)").await.unwrap();
        let reads = read_pool(&db, &test_db.url, Some(2)).await.unwrap();
        // A transaction still open on the writer is invisible; once committed, it is seen.
        let txn = db.begin().await.unwrap();
        txn.execute_unprepared("INSERT INTO t VALUES (1)").await.unwrap();
        let count = |conn: DatabaseConnection| async move {
            let row = conn
                .query_one_raw(sea_orm::Statement::from_string(DbBackend::Sqlite, "SELECT COUNT(*) AS n FROM t"))
                .await
                .unwrap()
                .unwrap();
            row.try_get::<i64>("", "n").unwrap()
        };
        assert_eq!(count(reads.clone()).await, 0);
        txn.commit().await.unwrap();
        assert_eq!(count(reads.clone()).await, 1);
        let refused = reads.execute_unprepared("INSERT INTO t VALUES (2)").await.unwrap_err();
        assert!(refused.to_string().contains("readonly"), "{refused}");
    }

    #[tokio::test]
    async fn rejects_unknown_scheme() {
        let error = connect("mysql://x", None).await.unwrap_err();
        assert!(matches!(error, Error::UnsupportedUrl { .. }), "{error}");
    }
}
