//! The payload process: `/bin/sh -c <command>` in the job directory, leading its own process group
//! so that a kill reaches everything it started; output to `payload.stdout`/`payload.stderr`;
//! resource use from `getrusage(RUSAGE_CHILDREN)` around it.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// File in the job directory that receives the payload's standard output.
pub(crate) const STDOUT_FILE: &str = "payload.stdout";
/// File in the job directory that receives the payload's standard error.
pub(crate) const STDERR_FILE: &str = "payload.stderr";
/// How much of each output file goes into the final report.
pub(crate) const TAIL_BYTES: u64 = 2048;

/// How often the group is checked for survivors during the kill grace period.
const GROUP_POLL: Duration = Duration::from_millis(50);

/// The resident memory of every process in `group`, in KiB, from `/proc` (0 where `/proc` cannot
/// be read; a process that exits while it is read is skipped).
pub(crate) fn group_rss_kb(group: Pid) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    let mut total = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // "pid (comm) state ppid pgrp ...": the fields after the last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let pgrp = rest.split_whitespace().nth(2).and_then(|f| f.parse::<i32>().ok());
        if pgrp != Some(group.as_raw()) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { continue };
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok());
        total += rss.unwrap_or(0);
    }
    total
}

/// What the payload used, for the final report.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Usage {
    /// User plus system CPU time of the payload and the descendants it waited for.
    pub cpu_seconds: f64,
    /// From start to exit.
    pub wall_seconds: f64,
    /// Largest resident set of any waited-for child of the pilot so far, in KiB (Linux units).
    pub max_rss_kb: u64,
}

/// A started payload. Dropping it before [`Payload::finish`] SIGKILLs its process group, so that
/// a pilot that dies on an error path leaves nothing running.
#[derive(Debug)]
pub(crate) struct Payload {
    child: Child,
    group: Pid,
    started: Instant,
    cpu_before: f64,
    exited: bool,
}

impl Payload {
    /// Starts `command` in `job_dir` with the pilot's environment plus `environment`.
    pub(crate) fn spawn<'a>(
        command: &str,
        job_dir: &Path,
        environment: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> io::Result<Self> {
        let argv = ["/bin/sh".to_owned(), "-c".to_owned(), command.to_owned()];
        Self::spawn_argv(&argv, job_dir, environment)
    }

    /// Starts the program `argv[0]` with the rest as arguments, as [`Payload::spawn`] does (a
    /// container runtime running the payload inside an image).
    pub(crate) fn spawn_argv<'a>(
        argv: &[String],
        job_dir: &Path,
        environment: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> io::Result<Self> {
        let (program, args) = argv.split_first().ok_or_else(|| io::Error::other("empty command line"))?;
        let stdout = File::create(job_dir.join(STDOUT_FILE))?;
        let stderr = File::create(job_dir.join(STDERR_FILE))?;
        let cpu_before = children_usage().0;
        let started = Instant::now();
        let child = Command::new(program)
            .args(args)
            .current_dir(job_dir)
            .envs(environment)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Group ID = the shell's PID: one killpg reaches the shell and everything it started.
            .process_group(0)
            .spawn()?;
        let pid = child.id().ok_or_else(|| io::Error::other("payload exited before its PID was read"))?;
        let group =
            i32::try_from(pid).map(Pid::from_raw).map_err(|_| io::Error::other(format!("PID {pid} out of range")))?;
        Ok(Self { child, group, started, cpu_before, exited: false })
    }

    /// The process group (the shell's PID).
    pub(crate) fn group(&self) -> Pid {
        self.group
    }

    /// Waits for the shell to exit. Cancel-safe.
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        let status = self.child.wait().await?;
        self.exited = true;
        Ok(status)
    }

    /// Kills the payload: SIGTERM to the group, up to `grace` for every member to exit, then
    /// SIGKILL to whatever is left (the reference pilot's sequence).
    pub(crate) async fn terminate(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        signal_group(self.group, Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        let status = tokio::select! {
            status = self.child.wait() => Some(status?),
            () = tokio::time::sleep_until(deadline) => None,
        };
        // The shell may exit at once while children that trap SIGTERM keep running: give them the
        // rest of the grace period too.
        while status.is_some() && group_alive(self.group) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(GROUP_POLL).await;
        }
        signal_group(self.group, Signal::SIGKILL);
        // Should the group signal fail (EPERM after a setuid exec), still end the shell itself,
        // or the wait below never returns.
        if status.is_none() {
            let _ = self.child.start_kill();
        }
        let status = match status {
            Some(status) => status,
            None => self.child.wait().await?,
        };
        self.exited = true;
        Ok(status)
    }

    /// Ends the payload after its shell exited: SIGKILLs processes it left behind in its group
    /// (the reference pilot kills orphans too) and measures what it used.
    pub(crate) fn finish(mut self) -> Usage {
        signal_group(self.group, Signal::SIGKILL);
        self.exited = true;
        let (cpu_after, max_rss_kb) = children_usage();
        Usage {
            cpu_seconds: (cpu_after - self.cpu_before).max(0.0),
            wall_seconds: self.started.elapsed().as_secs_f64(),
            max_rss_kb,
        }
    }
}

impl Drop for Payload {
    fn drop(&mut self) {
        if !self.exited {
            signal_group(self.group, Signal::SIGKILL);
        }
    }
}

pub(crate) fn signal_group(group: Pid, signal: Signal) {
    match killpg(group, signal) {
        // ESRCH: the group is already gone, which is what we want.
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(error) => {
            tracing::warn!(group = group.as_raw(), %signal, %error, "cannot signal the payload's process group")
        }
    }
}

fn group_alive(group: Pid) -> bool {
    killpg(group, None).is_ok()
}

/// CPU seconds and max RSS (KiB) of the pilot's waited-for children; zeros if unavailable.
fn children_usage() -> (f64, u64) {
    match getrusage(UsageWho::RUSAGE_CHILDREN) {
        Ok(usage) => {
            let seconds = |time: nix::sys::time::TimeVal| time.tv_sec() as f64 + time.tv_usec() as f64 / 1e6;
            let cpu = seconds(usage.user_time()) + seconds(usage.system_time());
            (cpu, u64::try_from(usage.max_rss()).unwrap_or(0))
        }
        Err(error) => {
            tracing::warn!(%error, "getrusage failed; reporting zero resource use");
            (0.0, 0)
        }
    }
}

/// The exit code to report: the shell's code, or 128 + N for death by signal N (shell
/// convention).
pub(crate) fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => -1,
    }
}

/// A person-readable account of a non-zero exit.
pub(crate) fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("payload exited with code {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(name) => format!("payload was killed by signal {signal} ({name})"),
            Err(_) => format!("payload was killed by signal {signal}"),
        },
        (None, None) => format!("payload ended with unknown status {status}"),
    }
}

/// The last [`TAIL_BYTES`] of a file in `job_dir` as text (empty when the file cannot be read).
pub(crate) async fn tail(job_dir: &Path, name: &str) -> String {
    let path = job_dir.join(name);
    let read = tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))?;
        let mut bytes = Vec::new();
        file.take(TAIL_BYTES).read_to_end(&mut bytes)?;
        Ok(bytes)
    })
    .await;
    match read {
        Ok(Ok(bytes)) => decode_tail(&bytes),
        _ => String::new(),
    }
}

/// Text from the end of a byte stream: drops a character cut in half at the start and replaces
/// invalid UTF-8 (protobuf strings must be valid).
pub(crate) fn decode_tail(bytes: &[u8]) -> String {
    // At most three continuation bytes can belong to a character that started before the cut.
    let skip = bytes.iter().take(3).take_while(|b| (0x80..0xc0).contains(*b)).count();
    String::from_utf8_lossy(&bytes[skip..]).into_owned()
}

#[cfg(test)]
mod tests;
