//! Moving data: stage-in copies each input from its `file://` URL, or downloads it from its
//! `http(s)://` URL, into the job directory and verifies size and checksum (`adler32:`, `md5:` or
//! `sha256:`, as the catalog records it); stage-out copies each expected output from the job
//! directory into the storage directory and measures it (the local storage element is a shared
//! directory, `file://` only). Copies run on the blocking pool, checksumming in the same pass;
//! downloads checksum while they stream. A download that fails for a reason that may pass (no
//! connection, a time-out, 5xx, 408, 429) is retried with exponential backoff
//! ([`StageInPolicy`]); a missing file (404, 410) or a checksum mismatch is not.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::io::AsyncWriteExt;

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
    /// Expected checksum, `adler32:xxxxxxxx`, `md5:<32 hex>` or `sha256:<64 hex>` (empty: not
    /// known).
    pub checksum: String,
}

/// How downloads are tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StageInPolicy {
    /// Tries per file (at least 1).
    pub attempts: u32,
    /// Wait before the first retry; doubles with each retry.
    pub backoff: Duration,
    /// One try's limit (connect, headers and body).
    pub timeout: Duration,
}

impl Default for StageInPolicy {
    fn default() -> Self {
        Self { attempts: 3, backoff: Duration::from_secs(2), timeout: Duration::from_secs(1800) }
    }
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

/// An expected checksum as the catalog records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Checksum {
    /// `adler32:` and 8 hex digits.
    Adler32(u32),
    /// `md5:` and 32 hex digits (lowercase kept).
    Md5(String),
    /// `sha256:` and 64 hex digits (lowercase kept).
    Sha256(String),
}

impl Checksum {
    /// Parses `adler32:xxxxxxxx`, `md5:<32 hex>` or `sha256:<64 hex>`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let hex_of = |prefix: &str, len: usize| {
            text.strip_prefix(prefix)
                .filter(|hex| hex.len() == len && hex.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(str::to_ascii_lowercase)
        };
        if text.starts_with(ADLER32_PREFIX) {
            return parse_checksum(text).map(Checksum::Adler32);
        }
        if let Some(hex) = hex_of("md5:", 32) {
            return Ok(Checksum::Md5(hex));
        }
        if let Some(hex) = hex_of("sha256:", 64) {
            return Ok(Checksum::Sha256(hex));
        }
        Err(format!(
            "unsupported checksum {text:?}: expected adler32:<8 hex digits>, md5:<32 hex digits> or sha256:<64 hex digits>"
        ))
    }

    /// The pilot error code of a mismatch (the reference's GETADMISMATCH for adler32,
    /// GETMD5MISMATCH for the others).
    pub(crate) fn mismatch_code(&self) -> u32 {
        match self {
            Checksum::Adler32(_) => error_codes::GET_ADLER32_MISMATCH,
            Checksum::Md5(_) | Checksum::Sha256(_) => error_codes::GET_MD5_MISMATCH,
        }
    }
}

impl std::fmt::Display for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Checksum::Adler32(value) => f.write_str(&format_adler32(*value)),
            Checksum::Md5(hex) => write!(f, "md5:{hex}"),
            Checksum::Sha256(hex) => write!(f, "sha256:{hex}"),
        }
    }
}

/// Size and checksums measured in one pass; md5 and sha256 only when expected.
struct Measure {
    size: u64,
    adler: adler2::Adler32,
    md5: Option<md5::Md5>,
    sha256: Option<sha2::Sha256>,
}

impl Measure {
    fn new(expected: Option<&Checksum>) -> Self {
        Self {
            size: 0,
            adler: adler2::Adler32::new(),
            md5: matches!(expected, Some(Checksum::Md5(_))).then(<md5::Md5 as md5::Digest>::new),
            sha256: matches!(expected, Some(Checksum::Sha256(_))).then(<sha2::Sha256 as sha2::Digest>::new),
        }
    }

    fn update(&mut self, chunk: &[u8]) {
        self.size += chunk.len() as u64;
        self.adler.write_slice(chunk);
        if let Some(md5) = &mut self.md5 {
            md5::Digest::update(md5, chunk);
        }
        if let Some(sha256) = &mut self.sha256 {
            sha2::Digest::update(sha256, chunk);
        }
    }

    /// The measured value of the kind `expected` is.
    fn finish(self, expected: &Checksum) -> Checksum {
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        match expected {
            Checksum::Adler32(_) => Checksum::Adler32(self.adler.checksum()),
            Checksum::Md5(_) => Checksum::Md5(self.md5.map(|m| hex(&md5::Digest::finalize(m))).unwrap_or_default()),
            Checksum::Sha256(_) => {
                Checksum::Sha256(self.sha256.map(|s| hex(&sha2::Digest::finalize(s))).unwrap_or_default())
            }
        }
    }
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

/// Copies or downloads every input into `job_dir` under its lfn and verifies size and checksum.
pub(crate) async fn stage_in(job_dir: &Path, inputs: &[InputFile], policy: &StageInPolicy) -> Result<(), StageError> {
    let mut client = None;
    for input in inputs {
        stage_in_one(job_dir, input, policy, &mut client).await?;
    }
    Ok(())
}

async fn stage_in_one(
    job_dir: &Path,
    input: &InputFile,
    policy: &StageInPolicy,
    client: &mut Option<reqwest::Client>,
) -> Result<(), StageError> {
    let fail = |diag: String| StageError::new(error_codes::STAGE_IN_FAILED, diag);
    check_lfn(&input.lfn).map_err(|reason| fail(format!("input {reason}")))?;
    let expected_checksum = match input.checksum.as_str() {
        "" => None,
        text => Some(Checksum::parse(text).map_err(|reason| fail(format!("input {}: {reason}", input.lfn)))?),
    };
    let target = job_dir.join(&input.lfn);
    let (size, measure) = if input.url.starts_with("http://") || input.url.starts_with("https://") {
        let client = match client {
            Some(client) => client.clone(),
            None => {
                let built = reqwest::Client::builder()
                    .connect_timeout(policy.timeout.min(Duration::from_secs(30)))
                    .timeout(policy.timeout)
                    .build()
                    .map_err(|error| fail(format!("cannot set up the HTTP client: {error}")))?;
                client.insert(built).clone()
            }
        };
        download(&client, input, &target, expected_checksum.as_ref(), policy).await?
    } else {
        let source = file_url_path(&input.url).map_err(|reason| {
            fail(format!(
                "input {}: {}",
                input.lfn,
                reason.replace("only file:// URLs", "only file:// and http(s):// URLs")
            ))
        })?;
        let wanted = expected_checksum.clone();
        let copied = tokio::task::spawn_blocking({
            let (source, target) = (source.clone(), target.clone());
            move || copy_with_measure(&source, &target, Measure::new(wanted.as_ref()))
        })
        .await
        .map_err(|join| io::Error::other(format!("copy task failed: {join}")))
        .and_then(|copied| copied);
        let measure = copied.map_err(|error| {
            let code = match error.kind() {
                io::ErrorKind::StorageFull => error_codes::NO_LOCAL_SPACE,
                io::ErrorKind::NotFound => error_codes::NO_SUCH_FILE,
                _ => error_codes::STAGE_IN_FAILED,
            };
            StageError::new(code, format!("cannot copy input {} from {}: {error}", input.lfn, source.display()))
        })?;
        (measure.size, measure)
    };
    // A declared size of 0 means "not known": the catalog may not have measured the file.
    if input.size_bytes != 0 && size != input.size_bytes {
        return Err(fail(format!("input {}: size {size} bytes, expected {}", input.lfn, input.size_bytes)));
    }
    if let Some(expected) = expected_checksum {
        let actual = measure.finish(&expected);
        if actual != expected {
            return Err(StageError::new(
                expected.mismatch_code(),
                format!("input {}: checksum {actual}, expected {expected} (from {})", input.lfn, input.url),
            ));
        }
    }
    Ok(())
}

/// Why one download try failed.
enum TryError {
    /// Worth another try (connection, time-out, 5xx, 408, 429, a broken body).
    Transient { diag: String, timed_out: bool },
    /// Not worth another try (404, another 4xx, the local disk).
    Permanent(StageError),
}

/// Downloads `input` into `target`, measuring as it streams; retried per `policy`.
async fn download(
    client: &reqwest::Client,
    input: &InputFile,
    target: &Path,
    expected: Option<&Checksum>,
    policy: &StageInPolicy,
) -> Result<(u64, Measure), StageError> {
    let attempt = || async {
        let response = client.get(&input.url).send().await.map_err(|error| TryError::Transient {
            diag: format!("GET {}: {}", input.url, error_text(&error)),
            timed_out: error.is_timeout(),
        })?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
            return Err(TryError::Permanent(StageError::new(
                error_codes::NO_SUCH_FILE,
                format!("input {}: {} answered {status}: no such file", input.lfn, input.url),
            )));
        }
        if status.is_server_error()
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        {
            return Err(TryError::Transient { diag: format!("GET {} answered {status}", input.url), timed_out: false });
        }
        if !status.is_success() {
            return Err(TryError::Permanent(StageError::new(
                error_codes::STAGE_IN_FAILED,
                format!("input {}: {} answered {status}", input.lfn, input.url),
            )));
        }
        let local = |error: io::Error| {
            let code = match error.kind() {
                io::ErrorKind::StorageFull => error_codes::NO_LOCAL_SPACE,
                _ => error_codes::STAGE_IN_FAILED,
            };
            TryError::Permanent(StageError::new(
                code,
                format!("input {}: cannot write {}: {error}", input.lfn, target.display()),
            ))
        };
        let mut file = tokio::fs::File::create(target).await.map_err(local)?;
        let mut measure = Measure::new(expected);
        let mut response = response;
        while let Some(chunk) = response.chunk().await.map_err(|error| TryError::Transient {
            diag: format!("GET {}: reading the body: {}", input.url, error_text(&error)),
            timed_out: error.is_timeout(),
        })? {
            measure.update(&chunk);
            file.write_all(&chunk).await.map_err(local)?;
        }
        file.sync_all().await.map_err(local)?;
        Ok((measure.size, measure))
    };
    let retries = policy.attempts.max(1) - 1;
    let backoff = ExponentialBuilder::default()
        .with_min_delay(policy.backoff)
        .with_max_delay(policy.backoff.saturating_mul(64))
        .with_max_times(retries as usize);
    let result = attempt
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|error| matches!(error, TryError::Transient { .. }))
        .notify(|error, wait| {
            if let TryError::Transient { diag, .. } = error {
                tracing::warn!(lfn = %input.lfn, %diag, ?wait, "stage-in failed; retrying");
            }
        })
        .await;
    result.map_err(|error| match error {
        TryError::Permanent(error) => error,
        TryError::Transient { diag, timed_out } => StageError::new(
            if timed_out { error_codes::STAGE_IN_TIMEOUT } else { error_codes::STAGE_IN_FAILED },
            format!("input {}: {diag} (gave up after {} tries)", input.lfn, retries + 1),
        ),
    })
}

/// A reqwest error with its causes (the top level alone often says only "error sending request").
fn error_text(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
    let measure = copy_with_measure(source, target, Measure::new(None))?;
    Ok((measure.size, measure.adler.checksum()))
}

fn copy_with_measure(source: &Path, target: &Path, mut measure: Measure) -> io::Result<Measure> {
    let mut reader = File::open(source)?;
    let mut writer = File::create(target)?;
    let mut buffer = vec![0_u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        let chunk = &buffer[..n];
        measure.update(chunk);
        writer.write_all(chunk)?;
    }
    // Durable before it is reported: the server records the file as existing once told.
    writer.sync_all()?;
    Ok(measure)
}

#[cfg(test)]
mod tests;
