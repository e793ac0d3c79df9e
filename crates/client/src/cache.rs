//! The client side of the code cache: packing a directory into a reproducible tar.gz, hashing,
//! uploading in chunks (asking first whether the server has the archive), downloading with a
//! digest check, and unpacking safely (entries must stay inside the target directory). Used by
//! the CLI and the pilot.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use futures::StreamExt;
use panda_proto::server::v1 as wire;
use panda_proto::server::v1::cache_service_client::CacheServiceClient;
use panda_proto::server::v1::upload_archive_request::Part;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// Bytes per upload message.
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// What can go wrong with an archive.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A local file could not be read or written.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The server refused the call.
    #[error(transparent)]
    Status(#[from] tonic::Status),
    /// Downloaded bytes do not match the digest asked for.
    #[error("archive checksum mismatch: expected {expected}, got {actual}")]
    Checksum {
        /// The digest asked for.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
    /// An entry would land outside the target directory, or is of a kind not allowed.
    #[error("archive entry {path:?} refused: {reason}")]
    UnsafeEntry {
        /// The entry's path as written in the archive.
        path: String,
        /// Why.
        reason: String,
    },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> CacheError {
    let context = context.into();
    move |source| CacheError::Io { context, source }
}

/// The sha256 (lowercase hex) and size of a file. Blocking.
///
/// # Errors
/// [`CacheError::Io`].
pub fn sha256_file(path: &Path) -> Result<(String, u64), CacheError> {
    let context = || format!("cannot read {}", path.display());
    let mut file = BufReader::new(File::open(path).map_err(io_error(context()))?);
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(io_error(context()))?;
        if n == 0 {
            return Ok((format!("{:x}", hasher.finalize()), size));
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
}

/// Packs `dir` into a tar.gz written to `out`: entries sorted by path, with zero times and owners
/// and normalized modes, so the same tree always gives the same bytes (and the same digest, which
/// makes a repeated upload free). Symlinks are kept when they point inside the tree. Blocking.
///
/// # Errors
/// [`CacheError::Io`], or [`CacheError::UnsafeEntry`] for a symlink that leaves the tree.
pub fn pack_dir(dir: &Path, out: impl Write) -> Result<(), CacheError> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(out, flate2::Compression::default()));
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    let mut paths = Vec::new();
    collect(dir, Path::new(""), &mut paths)?;
    for relative in paths {
        let full = dir.join(&relative);
        let metadata = std::fs::symlink_metadata(&full).map_err(io_error(format!("cannot read {}", full.display())))?;
        if metadata.file_type().is_symlink() {
            let target = std::fs::read_link(&full).map_err(io_error(format!("cannot read {}", full.display())))?;
            check_link(&relative.display().to_string(), &target)?;
        }
        builder
            .append_path_with_name(&full, &relative)
            .map_err(io_error(format!("cannot add {} to the archive", full.display())))?;
    }
    let encoder = builder.into_inner().map_err(io_error("cannot finish the archive"))?;
    encoder.finish().map_err(io_error("cannot finish the archive"))?;
    Ok(())
}

/// Every path below `dir` (relative, sorted, directories before their contents).
fn collect(root: &Path, relative: &Path, out: &mut Vec<PathBuf>) -> Result<(), CacheError> {
    let dir = root.join(relative);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(io_error(format!("cannot list {}", dir.display())))?
        .collect::<Result<_, _>>()
        .map_err(io_error(format!("cannot list {}", dir.display())))?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let path = relative.join(entry.file_name());
        let is_dir = entry.file_type().map_err(io_error(format!("cannot read {}", path.display())))?.is_dir();
        out.push(path.clone());
        if is_dir {
            collect(root, &path, out)?;
        }
    }
    Ok(())
}

/// Refuses paths that could leave the directory they are unpacked in.
fn check_path(path: &Path) -> Result<(), String> {
    for component in path.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err("path contains `..`".to_owned()),
            Component::RootDir | Component::Prefix(_) => return Err("path is absolute".to_owned()),
        }
    }
    Ok(())
}

fn check_link(entry: &str, target: &Path) -> Result<(), CacheError> {
    check_path(target).map_err(|reason| CacheError::UnsafeEntry {
        path: entry.to_owned(),
        reason: format!("symlink to {} leaves the directory ({reason})", target.display()),
    })
}

type TarGz = tar::Archive<flate2::read::GzDecoder<BufReader<File>>>;

fn open_tar_gz(archive: &Path) -> Result<TarGz, CacheError> {
    let file = File::open(archive).map_err(io_error(format!("cannot open {}", archive.display())))?;
    Ok(tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file))))
}

fn unreadable(archive: &Path) -> impl Fn(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io { context: format!("{} is not a readable tar.gz", archive.display()), source }
}

/// Checks that `archive` is a tar.gz that [`unpack`] accepts; returns its number of entries.
/// Blocking.
///
/// # Errors
/// [`CacheError::UnsafeEntry`] naming the first refused entry, [`CacheError::Io`] for a file
/// that is not a readable tar.gz.
pub fn check_archive(archive: &Path) -> Result<usize, CacheError> {
    let mut checked = 0;
    let mut reader = open_tar_gz(archive)?;
    for entry in reader.entries().map_err(unreadable(archive))? {
        check_entry(&entry.map_err(unreadable(archive))?)?;
        checked += 1;
    }
    Ok(checked)
}

/// Checks every entry of a tar.gz (a first pass, [`check_archive`]) and then unpacks it into
/// `into`: regular files, directories, and symlinks that stay inside; absolute paths, `..`, hard
/// links and special files are refused before anything is written. Returns the number of
/// entries. Blocking.
///
/// # Errors
/// [`CacheError::UnsafeEntry`] naming the entry, [`CacheError::Io`] for unreadable archives.
pub fn unpack(archive: &Path, into: &Path) -> Result<usize, CacheError> {
    let checked = check_archive(archive)?;
    let mut reader = open_tar_gz(archive)?;
    reader.set_overwrite(true);
    for entry in reader.entries().map_err(unreadable(archive))? {
        let mut entry = entry.map_err(unreadable(archive))?;
        let name = entry.path().map(|p| p.display().to_string()).unwrap_or_default();
        // unpack_in also refuses to write through a symlink that leaves `into`.
        let unpacked = entry.unpack_in(into).map_err(io_error(format!("cannot unpack {name}")))?;
        if !unpacked {
            return Err(CacheError::UnsafeEntry { path: name, reason: "it would leave the directory".to_owned() });
        }
    }
    Ok(checked)
}

fn check_entry<R: Read>(entry: &tar::Entry<'_, R>) -> Result<(), CacheError> {
    let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    let refuse = |reason: String| CacheError::UnsafeEntry { path: raw.clone(), reason };
    let path = entry.path().map_err(|e| refuse(format!("unreadable path: {e}")))?;
    check_path(&path).map_err(&refuse)?;
    match entry.header().entry_type() {
        // A pax global header (as `git archive` writes) carries metadata only.
        tar::EntryType::Regular
        | tar::EntryType::Continuous
        | tar::EntryType::Directory
        | tar::EntryType::XGlobalHeader => Ok(()),
        tar::EntryType::Symlink => match entry.link_name().map_err(|e| refuse(format!("unreadable link: {e}")))? {
            Some(target) => check_link(&raw, &target),
            None => Err(refuse("symlink without a target".to_owned())),
        },
        tar::EntryType::Link => Err(refuse("hard links are not allowed".to_owned())),
        other => Err(refuse(format!("entries of type {other:?} are not allowed (only files, directories, symlinks)"))),
    }
}

/// The result of [`upload`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// The archive's digest.
    pub sha256: String,
    /// Its size.
    pub size_bytes: u64,
    /// False when the server held it already (nothing was sent).
    pub created: bool,
}

/// Uploads a tar.gz file: asks the server first whether it holds the digest, and sends the bytes
/// in [`CHUNK_BYTES`] chunks only if not.
///
/// # Errors
/// [`CacheError::Io`] for the local file, [`CacheError::Status`] when the server refuses it.
pub async fn upload(
    client: &mut CacheServiceClient<Channel>,
    archive: &Path,
    uploader: &str,
) -> Result<Uploaded, CacheError> {
    let path = archive.to_owned();
    let (sha256, size_bytes) = tokio::task::spawn_blocking(move || sha256_file(&path))
        .await
        .map_err(|e| CacheError::Io { context: "hashing was interrupted".to_owned(), source: io::Error::other(e) })??;
    let stat = client.stat_archive(wire::StatArchiveRequest { sha256: sha256.clone() }).await?.into_inner();
    if stat.archive.is_some() {
        return Ok(Uploaded { sha256, size_bytes, created: false });
    }
    let file = tokio::fs::File::open(archive).await.map_err(io_error(format!("cannot open {}", archive.display())))?;
    let header = wire::UploadArchiveRequest {
        part: Some(Part::Header(wire::UploadHeader {
            sha256: sha256.clone(),
            size_bytes,
            uploader: uploader.to_owned(),
        })),
    };
    // A read error ends the stream early; the server then refuses the upload as incomplete.
    let chunks = futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut chunk = Vec::with_capacity(CHUNK_BYTES);
        match (&mut file).take(CHUNK_BYTES as u64).read_to_end(&mut chunk).await {
            Ok(0) => None,
            Ok(_) => Some((wire::UploadArchiveRequest { part: Some(Part::Chunk(chunk)) }, Some(file))),
            Err(error) => {
                tracing::warn!(%error, "cannot read the archive while uploading it");
                None
            }
        }
    });
    let requests = futures::stream::iter([header]).chain(chunks);
    let response = client.upload_archive(requests).await?.into_inner();
    Ok(Uploaded { sha256, size_bytes, created: response.created })
}

/// Downloads an archive to `dest` (through a temporary file beside it, renamed when the digest
/// matched, so `dest` is either complete and verified or untouched).
///
/// # Errors
/// [`CacheError::Status`] (NOT_FOUND for an unknown digest), [`CacheError::Checksum`],
/// [`CacheError::Io`].
pub async fn download(
    client: &mut CacheServiceClient<Channel>,
    sha256: &str,
    dest: &Path,
) -> Result<wire::ArchiveInfo, CacheError> {
    let mut stream =
        client.download_archive(wire::DownloadArchiveRequest { sha256: sha256.to_owned() }).await?.into_inner();
    let parent = match dest.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let temp = tempfile::Builder::new()
        .prefix(".download-")
        .tempfile_in(&parent)
        .map_err(io_error(format!("cannot create a temporary file in {}", parent.display())))?;
    let (file, temp_path) = temp.into_parts();
    let mut file = tokio::fs::File::from_std(file);
    let mut hasher = Sha256::new();
    let mut info = None;
    while let Some(message) = stream.message().await? {
        if info.is_none() {
            info = message.archive;
        }
        hasher.update(&message.chunk);
        file.write_all(&message.chunk).await.map_err(io_error(format!("cannot write {}", temp_path.display())))?;
    }
    let actual = format!("{:x}", hasher.finalize());
    if actual != sha256 {
        return Err(CacheError::Checksum { expected: sha256.to_owned(), actual });
    }
    file.sync_all().await.map_err(io_error(format!("cannot write {}", temp_path.display())))?;
    tokio::fs::rename(&temp_path, dest).await.map_err(io_error(format!("cannot write {}", dest.display())))?;
    let _ = temp_path.keep();
    Ok(info.unwrap_or_else(|| wire::ArchiveInfo { sha256: sha256.to_owned(), ..Default::default() }))
}

#[cfg(test)]
mod tests;
