//! Shipping the payload's stdout and stderr to the server's LogService while it runs: every
//! `log_interval`, or as soon as [`FLUSH_BYTES`] are waiting, the new bytes of each file go out in
//! chunks with their offsets (the server stores a retried chunk once); when the payload ended,
//! the rest goes out before the final report, so a user following the log sees all of it before
//! the job ends. Failures never touch the job: a transient error is retried at the next round,
//! a lost lease (the heartbeat notices it too), the server's log cap or a server without logs
//! stops the shipping.

use std::path::{Path, PathBuf};
use std::time::Duration;

use panda_client::LogServiceClient;
use panda_proto::server::v1::{AppendJobLogRequest, LogStream};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::payload::{STDERR_FILE, STDOUT_FILE};
use crate::server::Lease;

/// Waiting output that is sent without waiting for the interval.
pub(crate) const FLUSH_BYTES: u64 = 64 * 1024;
/// Largest chunk per call.
const CHUNK_BYTES: u64 = 256 * 1024;
/// How often the files are looked at (at most; less often with a shorter interval).
const POLL: Duration = Duration::from_millis(250);
/// Longest time spent sending what is left once the payload ended.
const FINAL_FLUSH_BUDGET: Duration = Duration::from_secs(30);

/// One of the payload's output files.
#[derive(Debug)]
struct Output {
    stream: LogStream,
    path: PathBuf,
    /// Bytes the server holds.
    shipped: u64,
    /// Nothing more is sent (cap reached, or refused).
    done: bool,
}

/// Ships `job_dir`'s payload output for `lease` until `stop` is cancelled, then the rest.
/// Never fails: problems are logged and end the shipping.
pub(crate) async fn ship(
    client: LogServiceClient<Channel>,
    lease: Lease,
    job_dir: &Path,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut shipper =
        Shipper {
            client,
            lease,
            outputs: [(LogStream::Stdout, STDOUT_FILE), (LogStream::Stderr, STDERR_FILE)]
                .map(|(stream, file)| Output { stream, path: job_dir.join(file), shipped: 0, done: false }),
        };
    let mut last = Instant::now();
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = tokio::time::sleep(POLL.min(interval)) => {}
        }
        let waiting = shipper.waiting().await;
        if waiting >= FLUSH_BYTES || (waiting > 0 && last.elapsed() >= interval) {
            shipper.send_all().await;
            last = Instant::now();
        }
    }
    if tokio::time::timeout(FINAL_FLUSH_BUDGET, shipper.send_all()).await.is_err() {
        tracing::warn!(job_id = %shipper.lease.job_id, "the end of the payload's output could not be sent in time");
    }
}

struct Shipper {
    client: LogServiceClient<Channel>,
    lease: Lease,
    outputs: [Output; 2],
}

impl Shipper {
    /// Bytes written but not shipped yet.
    async fn waiting(&self) -> u64 {
        let mut waiting = 0;
        for output in self.outputs.iter().filter(|o| !o.done) {
            if let Ok(metadata) = tokio::fs::metadata(&output.path).await {
                waiting += metadata.len().saturating_sub(output.shipped);
            }
        }
        waiting
    }

    /// Sends everything written so far, stream by stream; stops at the first transient failure
    /// (the next round retries from the same offset).
    async fn send_all(&mut self) {
        for index in 0..self.outputs.len() {
            while !self.outputs[index].done {
                let chunk = match read_from(&self.outputs[index].path, self.outputs[index].shipped).await {
                    Ok(chunk) if chunk.is_empty() => break,
                    Ok(chunk) => chunk,
                    Err(error) => {
                        tracing::warn!(path = %self.outputs[index].path.display(), %error, "cannot read the payload's output");
                        break;
                    }
                };
                if !self.send(index, chunk).await {
                    return;
                }
            }
        }
    }

    /// One append; `false` when shipping should pause until the next round.
    async fn send(&mut self, index: usize, data: Vec<u8>) -> bool {
        let request = AppendJobLogRequest {
            job_id: self.lease.job_id.0,
            lease_token: self.lease.token.clone(),
            stream: self.outputs[index].stream as i32,
            offset: self.outputs[index].shipped,
            data,
        };
        match self.client.append_job_log(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                if reply.cap_reached {
                    tracing::info!(job_id = %self.lease.job_id, "the server's log cap is reached; no more output is sent");
                    for output in &mut self.outputs {
                        output.done = true;
                    }
                } else {
                    let output = &mut self.outputs[index];
                    output.shipped = output.shipped.max(reply.stored_bytes);
                }
                true
            }
            Err(status) if panda_client::is_transient(&status, true) => {
                tracing::debug!(code = ?status.code(), message = status.message(), "sending output failed; retrying later");
                false
            }
            Err(status) => {
                // A lost lease, a server without LogService, or a refused chunk: the job's fate
                // is decided elsewhere; only its live log stops.
                tracing::warn!(job_id = %self.lease.job_id, code = ?status.code(), message = status.message(), "server refused the payload's output; not sending more");
                for output in &mut self.outputs {
                    output.done = true;
                }
                false
            }
        }
    }
}

/// Up to [`CHUNK_BYTES`] of a file from `offset` (empty at its end, or when it does not exist).
async fn read_from(path: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut chunk = Vec::new();
    file.take(CHUNK_BYTES).read_to_end(&mut chunk).await?;
    Ok(chunk)
}
