//! `panda cache upload|download` and the code archive of `panda task submit --code`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use panda_client::ServerClient;
use panda_client::cache;

use crate::render::Format;

/// What `upload` did.
pub struct Uploaded {
    /// The archive's digest (what a task names in `code_sha256`).
    pub sha256: String,
    /// Its size.
    pub size_bytes: u64,
    /// False when the server held it already.
    pub created: bool,
}

/// Uploads a tar.gz file, or a directory packed into one first (reproducibly: the same tree gives
/// the same digest, so uploading it again costs nothing). The archive is checked first, so an
/// entry the pilot would refuse is reported here.
pub async fn upload(server: &ServerClient, path: &Path, uploader: &str) -> anyhow::Result<Uploaded> {
    let metadata = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    // Kept until the upload ended: a packed directory lives in a temporary file.
    let mut packed = None;
    let archive: PathBuf = if metadata.is_dir() {
        let dir = path.to_owned();
        let temp = tokio::task::spawn_blocking(move || -> anyhow::Result<tempfile::NamedTempFile> {
            let mut temp = tempfile::Builder::new().prefix("panda-code-").suffix(".tar.gz").tempfile()?;
            cache::pack_dir(&dir, temp.as_file_mut())?;
            Ok(temp)
        })
        .await??;
        let archive = temp.path().to_owned();
        packed = Some(temp);
        archive
    } else {
        path.to_owned()
    };
    let check = archive.clone();
    let entries = tokio::task::spawn_blocking(move || cache::check_archive(&check))
        .await?
        .with_context(|| format!("{} cannot be used as a code archive (a tar.gz, or a directory)", path.display()))?;
    let uploaded = cache::upload(&mut server.cache.clone(), &archive, uploader).await.map_err(status_first)?;
    drop(packed);
    eprintln!(
        "{} ({} entries, {} bytes): {}",
        path.display(),
        entries,
        uploaded.size_bytes,
        if uploaded.created { "uploaded" } else { "already in the cache" }
    );
    Ok(Uploaded { sha256: uploaded.sha256, size_bytes: uploaded.size_bytes, created: uploaded.created })
}

/// A gRPC refusal stays a `tonic::Status`, so `main` renders it like every other one.
fn status_first(error: cache::CacheError) -> anyhow::Error {
    match error {
        cache::CacheError::Status(status) => status.into(),
        other => other.into(),
    }
}

/// `panda cache upload`: prints the digest (alone on stdout, for `$(...)`).
pub async fn upload_command(server: &ServerClient, path: &Path, uploader: &str, format: Format) -> anyhow::Result<()> {
    let uploaded = upload(server, path, uploader).await?;
    match format {
        Format::Json => out!(
            "{}",
            serde_json::json!({"sha256": uploaded.sha256, "size_bytes": uploaded.size_bytes, "created": uploaded.created})
        ),
        Format::Table => out!("{}", uploaded.sha256),
    }
    Ok(())
}

/// `panda cache download`: the archive, verified, at `output`.
pub async fn download_command(
    server: &ServerClient,
    sha256: &str,
    output: &Path,
    format: Format,
) -> anyhow::Result<()> {
    let info = cache::download(&mut server.cache.clone(), sha256, output).await.map_err(status_first)?;
    match format {
        Format::Json => out!(
            "{}",
            serde_json::json!({"sha256": info.sha256, "size_bytes": info.size_bytes, "uploader": info.uploader, "path": output})
        ),
        Format::Table => out!("{} ({} bytes) written to {}", info.sha256, info.size_bytes, output.display()),
    }
    Ok(())
}
