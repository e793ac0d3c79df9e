//! `panda job logs ID [--stderr] [--follow]`: a job's output as the pilot sent it, byte for byte.

use std::io::Write;

use panda_client::ServerClient;
use panda_proto::server::v1 as server;

/// Prints the stored log of a job; with `follow`, keeps printing until the job ended.
pub async fn print(server: &ServerClient, job_id: u64, stderr: bool, follow: bool) -> anyhow::Result<()> {
    let stream = if stderr { server::LogStream::Stderr } else { server::LogStream::Stdout };
    let request = server::ReadJobLogRequest { job_id, stream: stream as i32, offset: 0, follow };
    let mut messages = server.logs.clone().read_job_log(request).await?.into_inner();
    let mut cap_reached = false;
    let mut printed = 0;
    let mut last_status = 0;
    while let Some(message) = messages.message().await? {
        write_raw(&message.data);
        printed += message.data.len();
        cap_reached |= message.cap_reached;
        last_status = message.job_status;
    }
    if printed == 0 {
        let status = <panda_types::JobStatus as panda_proto::convert::WireEnum>::from_wire("job_status", last_status)
            .map_or_else(|_| "unknown".to_owned(), |s| s.to_string());
        eprintln!("(no {} stored for job {job_id}; it is {status})", if stderr { "stderr" } else { "stdout" });
    }
    if cap_reached {
        eprintln!(
            "(the job's logs reached the server's cap, server.logs.max_bytes_per_job: later output was not kept; \
             the last lines are in `panda job show {job_id}`)"
        );
    }
    Ok(())
}

/// Writes bytes as they are (logs need not be UTF-8); a closed pipe ends the program quietly.
fn write_raw(bytes: &[u8]) {
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {error}");
        std::process::exit(1);
    }
}
