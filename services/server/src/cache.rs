//! The code cache: users' archives, content-addressed by sha256. Bytes live in files at
//! `<dir>/<sha256[0..2]>/<sha256>`, metadata in the `cache_archives` table. An upload streams into
//! a temporary file in `<dir>/tmp` while hashing; only a complete upload whose size and digest
//! match what the client stated is renamed into place (atomic on one filesystem) and then
//! recorded, so a reader never sees a partial archive and a refused upload leaves nothing behind
//! (the temporary file is removed when the upload is dropped). An archive the cache holds is
//! never written again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::info;

use crate::error::{Error, Result};
use crate::store::{ArchiveRecord, Store};

/// Default largest archive: 256 MiB.
pub const DEFAULT_MAX_ARCHIVE_BYTES: u64 = 256 * 1024 * 1024;
/// Temporary files older than this in `<dir>/tmp` are leftovers of a crash, removed at start.
const STALE_UPLOAD: Duration = Duration::from_secs(24 * 3600);

/// `[server.cache]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where archives are stored (default: `<data_dir>/cache`). Server replicas must share it.
    pub dir: Option<PathBuf>,
    /// Largest archive accepted, in bytes; an upload is refused as soon as it passes this.
    pub max_archive_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self { dir: None, max_archive_bytes: DEFAULT_MAX_ARCHIVE_BYTES }
    }
}

/// What a client states before it sends an archive's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadHeader {
    /// Digest of the whole archive.
    pub sha256: String,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Who uploads it (free text).
    pub uploader: String,
}

/// How an upload starts.
#[derive(Debug)]
pub enum UploadStart {
    /// The cache holds this archive already: nothing to send.
    Exists(ArchiveRecord),
    /// Send the bytes to this upload, then finish it.
    Receiving(Box<Upload>),
}

/// The code cache's use cases.
#[derive(Debug, Clone)]
pub struct Cache {
    db: DatabaseConnection,
    store: Store,
    dir: PathBuf,
    max_archive_bytes: u64,
}

fn storage(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Storage { context, source }
}

fn check_digest(field: &str, sha256: &str) -> Result<()> {
    panda_types::spec::check_sha256(sha256).map_err(|e| Error::invalid(field, e))
}

impl Cache {
    /// A cache in `dir` (created if needed); temporary files left by a crash are removed.
    ///
    /// # Errors
    /// [`Error::Storage`] when the directory cannot be made.
    pub fn open(db: DatabaseConnection, dir: PathBuf, max_archive_bytes: u64) -> Result<Self> {
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(storage(format!("cannot create {}", tmp.display())))?;
        remove_stale_uploads(&tmp);
        let store = Store::new(db.get_database_backend());
        Ok(Self { db, store, dir, max_archive_bytes })
    }

    /// Largest archive accepted.
    pub fn max_archive_bytes(&self) -> u64 {
        self.max_archive_bytes
    }

    fn path_of(&self, sha256: &str) -> PathBuf {
        self.dir.join(&sha256[..2]).join(sha256)
    }

    /// The archive with this digest, if the cache holds it.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a malformed digest.
    pub async fn stat(&self, sha256: &str) -> Result<Option<ArchiveRecord>> {
        check_digest("sha256", sha256)?;
        self.store.find_archive(&self.db, sha256).await
    }

    /// Checks an upload's header and starts receiving, unless the cache holds the archive.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a malformed digest, an empty archive, or one over the size limit.
    #[tracing::instrument(skip_all, fields(sha256 = %header.sha256, size = header.size_bytes))]
    pub async fn begin_upload(&self, header: UploadHeader) -> Result<UploadStart> {
        check_digest("header.sha256", &header.sha256)?;
        if header.uploader.len() > 200 {
            return Err(Error::invalid(
                "header.uploader",
                format!("must be at most 200 characters (got {})", header.uploader.len()),
            ));
        }
        if let Some(existing) = self.store.find_archive(&self.db, &header.sha256).await? {
            return Ok(UploadStart::Exists(existing));
        }
        if header.size_bytes == 0 {
            return Err(Error::invalid("header.size_bytes", "must be at least 1 (an archive cannot be empty)"));
        }
        if header.size_bytes > self.max_archive_bytes {
            return Err(Error::invalid(
                "header.size_bytes",
                format!(
                    "is {}: over the cache's limit of {} bytes (server.cache.max_archive_bytes)",
                    header.size_bytes, self.max_archive_bytes
                ),
            ));
        }
        let tmp = self.dir.join("tmp");
        let temp = tempfile::Builder::new()
            .prefix("upload-")
            .tempfile_in(&tmp)
            .map_err(storage(format!("cannot create a temporary file in {}", tmp.display())))?;
        let (file, path) = temp.into_parts();
        Ok(UploadStart::Receiving(Box::new(Upload {
            cache: self.clone(),
            header,
            file: tokio::fs::File::from_std(file),
            path,
            hasher: Sha256::new(),
            received: 0,
        })))
    }

    /// An archive's metadata and its file, opened for reading.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a malformed digest, NOT_FOUND when the cache does not hold it.
    pub async fn open_archive(&self, sha256: &str) -> Result<(ArchiveRecord, tokio::fs::File)> {
        let record = self.stat(sha256).await?.ok_or_else(|| Error::ArchiveNotFound { sha256: sha256.to_owned() })?;
        let path = self.path_of(sha256);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(storage(format!("archive {sha256} is recorded but {} cannot be opened", path.display())))?;
        Ok((record, file))
    }
}

/// An upload in progress: a temporary file and the digest so far. Dropping it removes the file.
#[derive(Debug)]
pub struct Upload {
    cache: Cache,
    header: UploadHeader,
    file: tokio::fs::File,
    path: tempfile::TempPath,
    hasher: Sha256,
    received: u64,
}

impl Upload {
    /// Appends a chunk.
    ///
    /// # Errors
    /// INVALID_ARGUMENT as soon as the bytes pass the size limit or the size the header stated.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        let received = self.received + chunk.len() as u64;
        if received > self.cache.max_archive_bytes {
            return Err(Error::invalid(
                "upload",
                format!(
                    "passed the cache's limit of {} bytes (server.cache.max_archive_bytes); refused, nothing was stored",
                    self.cache.max_archive_bytes
                ),
            ));
        }
        if received > self.header.size_bytes {
            return Err(Error::invalid(
                "upload",
                format!(
                    "sent more bytes than the {} stated in header.size_bytes; refused, nothing was stored",
                    self.header.size_bytes
                ),
            ));
        }
        self.hasher.update(chunk);
        self.file.write_all(chunk).await.map_err(storage("cannot write an upload's temporary file"))?;
        self.received = received;
        Ok(())
    }

    /// Checks size and digest, moves the file into place and records the archive. `false` when
    /// a concurrent upload of the same archive was recorded first.
    ///
    /// # Errors
    /// INVALID_ARGUMENT when bytes are missing or the digest differs (nothing is stored).
    pub async fn finish(mut self) -> Result<(ArchiveRecord, bool)> {
        let expected = &self.header.sha256;
        if self.received != self.header.size_bytes {
            return Err(Error::invalid(
                "upload",
                format!(
                    "ended after {} of the {} bytes stated in header.size_bytes; nothing was stored",
                    self.received, self.header.size_bytes
                ),
            ));
        }
        let actual = format!("{:x}", self.hasher.finalize_reset());
        if &actual != expected {
            return Err(Error::invalid(
                "header.sha256",
                format!(
                    "does not match the {} bytes received (checksum mismatch): expected {expected}, got {actual}; nothing was stored",
                    self.received
                ),
            ));
        }
        self.file.flush().await.map_err(storage("cannot write an upload's temporary file"))?;
        self.file.sync_all().await.map_err(storage("cannot sync an upload's temporary file"))?;
        let target = self.cache.path_of(expected);
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(storage(format!("cannot create {}", parent.display())))?;
        }
        // Same content under the same name: a concurrent upload of this archive renames over it
        // harmlessly.
        let path = self.path;
        tokio::fs::rename(&path, &target)
            .await
            .map_err(storage(format!("cannot move the upload to {}", target.display())))?;
        // Renamed away: nothing left to remove.
        let _ = path.keep();
        let record = ArchiveRecord {
            sha256: expected.clone(),
            size_bytes: self.received,
            uploader: self.header.uploader.clone(),
            created_at: Utc::now(),
        };
        let created = self.cache.store.insert_archive(&self.cache.db, &record).await?;
        let record = if created {
            info!(sha256 = %record.sha256, size = record.size_bytes, uploader = %record.uploader, "archive cached");
            record
        } else {
            self.cache.store.find_archive(&self.cache.db, expected).await?.unwrap_or(record)
        };
        Ok((record, created))
    }
}

fn remove_stale_uploads(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    for entry in entries.flatten() {
        let stale =
            entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().unwrap_or_default() > STALE_UPLOAD);
        if stale && let Err(error) = std::fs::remove_file(entry.path()) {
            tracing::warn!(path = %entry.path().display(), %error, "cannot remove a stale upload");
        }
    }
}
