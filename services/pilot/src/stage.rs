//! Moving data: stage-in copies each input from its `file://` URL into the job directory and
//! verifies size and adler32; stage-out copies each expected output from the job directory into
//! the storage directory and measures it. Only `file://` is supported: the local storage element
//! is a shared directory. Copies run on the blocking pool, checksumming in the same pass.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::error_codes;

/// An input file the job needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InputFile {
    /// Logical file name: the file's name in the job directory.
    pub lfn: String,
    /// Where to copy it from.
    pub url: String,
    /// Expected size (0: not known).
    pub size_bytes: u64,
    /// Expected checksum, `adler32:xxxxxxxx` (empty: not known).
    pub checksum: String,
}

/// An output file after stage-out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StagedOutput {
    /// Logical file name.
    pub lfn: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// `adler32:xxxxxxxx`.
    pub checksum: String,
}

/// Why staging failed, as it goes into the final report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StageError {
    /// Pilot error code.
    pub code: u32,
    /// What went wrong, for a person.
    pub diag: String,
}

impl StageError {
    fn new(code: u32, diag: String) -> Self {
        Self { code, diag }
    }
}

const ADLER32_PREFIX: &str = "adler32:";

/// The local path of a `file://` URL (`file:///data/x` or `file://localhost/data/x`).
pub(crate) fn file_url_path(url: &str) -> Result<PathBuf, String> {
    let Some(rest) = url.strip_prefix("file://") else {
        return Err(format!("unsupported URL {url:?}: only file:// URLs can be staged"));
    };
    // RFC 8089 allows an explicit "localhost" authority; any other host is not local.
    let path = rest.strip_prefix("localhost").unwrap_or(rest);
    if !path.starts_with('/') {
        return Err(format!("unsupported URL {url:?}: expected file:///absolute/path"));
    }
    Ok(PathBuf::from(path))
}

/// The value of an `adler32:xxxxxxxx` checksum.
pub(crate) fn parse_checksum(text: &str) -> Result<u32, String> {
    let invalid = || format!("unsupported checksum {text:?}: expected adler32:xxxxxxxx (8 hex digits)");
    let hex = text.strip_prefix(ADLER32_PREFIX).ok_or_else(invalid)?;
    if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid());
    }
    u32::from_str_radix(hex, 16).map_err(|_| invalid())
}

/// The wire form of an adler32 value: `adler32:` and 8 lowercase hex digits.
pub(crate) fn format_adler32(value: u32) -> String {
    format!("{ADLER32_PREFIX}{value:08x}")
}

/// Checks that `lfn` names a file directly inside a directory: a name from the server must not
/// reach outside the job or storage directory.
pub(crate) fn check_lfn(lfn: &str) -> Result<(), String> {
    if lfn.is_empty() || lfn == "." || lfn == ".." || lfn.contains('/') || lfn.contains('\0') {
        return Err(format!("invalid file name {lfn:?}: must be a plain name without '/'"));
    }
    Ok(())
}

/// Copies every input into `job_dir` under its lfn and verifies size and checksum.
pub(crate) async fn stage_in(job_dir: &Path, inputs: &[InputFile]) -> Result<(), StageError> {
    for input in inputs {
        stage_in_one(job_dir, input).await?;
    }
    Ok(())
}

async fn stage_in_one(job_dir: &Path, input: &InputFile) -> Result<(), StageError> {
    let fail = |diag: String| StageError::new(error_codes::STAGE_IN_FAILED, diag);
    check_lfn(&input.lfn).map_err(|reason| fail(format!("input {reason}")))?;
    let source = file_url_path(&input.url).map_err(|reason| fail(format!("input {}: {reason}", input.lfn)))?;
    let expected_checksum = match input.checksum.as_str() {
        "" => None,
        text => Some(parse_checksum(text).map_err(|reason| fail(format!("input {}: {reason}", input.lfn)))?),
    };
    let target = job_dir.join(&input.lfn);
    let (size, checksum) = copy_measured(source.clone(), target).await.map_err(|error| {
        let code = match error.kind() {
            io::ErrorKind::StorageFull => error_codes::NO_LOCAL_SPACE,
            _ => error_codes::STAGE_IN_FAILED,
        };
        StageError::new(code, format!("cannot copy input {} from {}: {error}", input.lfn, source.display()))
    })?;
    // A declared size of 0 means "not known": the catalog may not have measured the file.
    if input.size_bytes != 0 && size != input.size_bytes {
        return Err(fail(format!("input {}: size {size} bytes, expected {}", input.lfn, input.size_bytes)));
    }
    if let Some(expected) = expected_checksum
        && checksum != expected
    {
        return Err(fail(format!(
            "input {}: checksum {}, expected {}",
            input.lfn,
            format_adler32(checksum),
            format_adler32(expected)
        )));
    }
    Ok(())
}

/// The first expected output the payload did not write into `job_dir` (invalid names are left
/// to [`stage_out`], which refuses them).
pub(crate) fn find_missing_output<'a>(job_dir: &Path, outputs: &'a [String]) -> Option<&'a str> {
    outputs.iter().find(|lfn| check_lfn(lfn).is_ok() && !job_dir.join(lfn).is_file()).map(String::as_str)
}

/// Copies every output from `job_dir` into the directory of `storage_url`, measuring each.
/// `unique` keeps temporary names of concurrent pilots apart.
pub(crate) async fn stage_out(
    job_dir: &Path,
    outputs: &[String],
    storage_url: &str,
    unique: &str,
) -> Result<Vec<StagedOutput>, StageError> {
    let fail = |diag: String| StageError::new(error_codes::STAGE_OUT_FAILED, diag);
    if outputs.is_empty() {
        return Ok(Vec::new());
    }
    let storage = file_url_path(storage_url).map_err(|reason| fail(format!("storage {reason}")))?;
    tokio::fs::create_dir_all(&storage)
        .await
        .map_err(|error| fail(format!("cannot create storage directory {}: {error}", storage.display())))?;
    let mut staged = Vec::with_capacity(outputs.len());
    for lfn in outputs {
        check_lfn(lfn).map_err(|reason| fail(format!("output {reason}")))?;
        let target = storage.join(lfn);
        // Written under a temporary name and renamed, so storage never shows a partial file.
        let partial = storage.join(format!(".{lfn}.{unique}.part"));
        let copied = copy_measured(job_dir.join(lfn), partial.clone()).await;
        let (size, checksum) = match copied {
            Ok(measured) => measured,
            Err(error) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(fail(format!("cannot copy output {lfn} to {}: {error}", storage.display())));
            }
        };
        tokio::fs::rename(&partial, &target)
            .await
            .map_err(|error| fail(format!("cannot move output {lfn} into place at {}: {error}", target.display())))?;
        staged.push(StagedOutput { lfn: lfn.clone(), size_bytes: size, checksum: format_adler32(checksum) });
    }
    Ok(staged)
}

/// Copies `source` to `target` (replacing it) on the blocking pool; returns size and adler32.
async fn copy_measured(source: PathBuf, target: PathBuf) -> io::Result<(u64, u32)> {
    tokio::task::spawn_blocking(move || copy_measured_blocking(&source, &target))
        .await
        .map_err(|join| io::Error::other(format!("copy task failed: {join}")))?
}

fn copy_measured_blocking(source: &Path, target: &Path) -> io::Result<(u64, u32)> {
    let mut reader = File::open(source)?;
    let mut writer = File::create(target)?;
    let mut adler = adler2::Adler32::new();
    let mut buffer = vec![0_u8; 1 << 20];
    let mut size = 0_u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        let chunk = &buffer[..n];
        adler.write_slice(chunk);
        writer.write_all(chunk)?;
        size += n as u64;
    }
    // Durable before it is reported: the server records the file as existing once told.
    writer.sync_all()?;
    Ok((size, adler.checksum()))
}

#[cfg(test)]
mod tests;
