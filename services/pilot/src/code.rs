//! The job's code archive: downloaded from the server's CacheService once per pilot (kept under
//! `<work_dir>/code-cache/<sha256>.tar.gz`, verified against its digest on the way in) and
//! unpacked into each job directory before the payload starts. Entries that would leave the job
//! directory (absolute paths, `..`, links out) fail the job before anything is written.

use std::path::{Path, PathBuf};

use panda_client::CacheServiceClient;
use panda_client::cache::{self, CacheError};
use tonic::transport::Channel;

use crate::error_codes;
use crate::server::backoff;
use crate::stage::StageError;

/// Download attempts while the server is unavailable.
const ATTEMPTS: u32 = 5;

/// Where this pilot keeps downloaded archives.
pub(crate) fn cache_dir(work_dir: &Path) -> PathBuf {
    work_dir.join("code-cache")
}

/// Makes the archive `sha256` available locally (downloading it unless an earlier job of this
/// pilot did) and unpacks it into `job_dir`. Returns the number of entries.
///
/// # Errors
/// A [`StageError`] with [`error_codes::STAGE_IN_FAILED`] naming the archive and the reason.
pub(crate) async fn install(
    client: &CacheServiceClient<Channel>,
    work_dir: &Path,
    sha256: &str,
    job_dir: &Path,
) -> Result<usize, StageError> {
    let fail = |what: &str, error: &dyn std::fmt::Display| StageError {
        code: error_codes::STAGE_IN_FAILED,
        diag: format!("code archive {sha256}: {what}: {error}"),
    };
    panda_types::spec::check_sha256(sha256).map_err(|e| fail("bad digest from the server", &e))?;
    let dir = cache_dir(work_dir);
    tokio::fs::create_dir_all(&dir).await.map_err(|e| fail(&format!("cannot create {}", dir.display()), &e))?;
    let archive = dir.join(format!("{sha256}.tar.gz"));
    // Only a verified download is ever renamed to this name.
    if !tokio::fs::try_exists(&archive).await.unwrap_or(false) {
        download(client, sha256, &archive).await.map_err(|e| fail("download failed", &describe(&e)))?;
    }
    let (from, into) = (archive.clone(), job_dir.to_owned());
    let entries = tokio::task::spawn_blocking(move || cache::unpack(&from, &into))
        .await
        .map_err(|e| fail("unpacking was interrupted", &e))?
        .map_err(|e| fail("cannot unpack it", &describe(&e)))?;
    tracing::info!(sha256, entries, "code archive unpacked");
    Ok(entries)
}

async fn download(client: &CacheServiceClient<Channel>, sha256: &str, dest: &Path) -> Result<(), CacheError> {
    let mut retries = 0;
    loop {
        match cache::download(&mut client.clone(), sha256, dest).await {
            Ok(_) => return Ok(()),
            Err(CacheError::Status(status)) if retries + 1 < ATTEMPTS && panda_client::is_transient(&status, true) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "code archive download failed; retrying");
                tokio::time::sleep(backoff(retries)).await;
                retries += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

fn describe(error: &CacheError) -> String {
    match error {
        CacheError::Status(status) => format!("{:?}: {}", status.code(), status.message()),
        other => panda_runtime::error::chain(other),
    }
}
