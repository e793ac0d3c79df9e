//! Database access shared by the services that own state (server, harvester, idds): connecting
//! to PostgreSQL or SQLite from one URL, running a service's migrations at start, and `TestDb`,
//! which gives each test a fresh SQLite file or a fresh PostgreSQL database.
//!
//! SQLite (the embedded default) has no row locks, so the pool holds a single connection: writers
//! are serialised, which is what makes dispatch atomic there. Code running inside a transaction
//! must therefore never use the pool itself, or it waits for the connection it already holds.

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
    /// Pool size on PostgreSQL (SQLite always uses one connection).
    pub max_connections: Option<u32>,
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
    async fn rejects_unknown_scheme() {
        let error = connect("mysql://x", None).await.unwrap_err();
        assert!(matches!(error, Error::UnsupportedUrl { .. }), "{error}");
    }
}
