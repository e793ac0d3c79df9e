//! Where a CommandLineTool invocation runs. The engine builds a [`JobSpec`] (command line,
//! environment, files to stage into the work dir, stdin/stdout/stderr) and hands it to an
//! [`Executor`]; the executor returns the exit code and the work dir holding the outputs. The
//! local executor runs a process in a temporary directory; a pilot executor maps one JobSpec to
//! one job of a one-job task.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::{CwlError, Result};
use crate::fs::copy_tree;

/// One thing to put into the work dir before the command runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// Copy (or link) a file or directory tree to `target` (relative to the work dir, or absolute).
    Copy {
        /// Source path on the submitting side.
        source: PathBuf,
        /// Where it goes.
        target: PathBuf,
        /// Whether the tool may modify it (else a symlink may be used).
        writable: bool,
    },
    /// Symlink `target` to `source` (InplaceUpdateRequirement: the tool changes the original).
    Link {
        /// The original.
        source: PathBuf,
        /// Where the link goes.
        target: PathBuf,
    },
    /// Write `contents` to the file `target`.
    Write {
        /// File contents.
        contents: String,
        /// Where it goes.
        target: PathBuf,
    },
    /// Create an empty directory `target`.
    Mkdir {
        /// Where it goes.
        target: PathBuf,
    },
}

/// The directories a job sees: `runtime.outdir` and `runtime.tmpdir`.
#[derive(Debug, Clone)]
pub struct JobDirs {
    /// Output (and working) directory.
    pub outdir: PathBuf,
    /// Scratch directory.
    pub tmpdir: PathBuf,
}

/// One CommandLineTool invocation.
#[derive(Debug, Clone, Default)]
pub struct JobSpec {
    /// A name for logs.
    pub name: String,
    /// argv (already shell-wrapped when ShellCommandRequirement is in force).
    pub command: Vec<String>,
    /// The complete environment.
    pub env: BTreeMap<String, String>,
    /// Staging, in order.
    pub stage: Vec<Stage>,
    /// File fed to standard input.
    pub stdin: Option<PathBuf>,
    /// File (relative to the work dir) receiving standard output.
    pub stdout: Option<String>,
    /// File (relative to the work dir) receiving standard error.
    pub stderr: Option<String>,
    /// Wall time limit (ToolTimeLimit).
    pub timeout: Option<Duration>,
    /// Cores (`runtime.cores`, from ResourceRequirement; 1 without one).
    pub cores: u32,
    /// Memory in MiB when ResourceRequirement asks for it (`ramMin`, else `ramMax`); `None`
    /// without an explicit request, so no limit is enforced.
    pub ram_mb: Option<u64>,
    /// Non-zero exit codes the tool declares successful (`successCodes`), so an executor that
    /// judges a run by its exit code (a job of the system) can count them as success too.
    pub success_codes: Vec<i32>,
    /// Where the invocation stands in the run: the step path and scatter index
    /// (`[A-Za-z0-9._-]`, unique in the run, at most 100 characters), e.g. `align.3`.
    pub key: String,
    /// Keys of the earlier invocations whose outputs feed this one (directly, or through
    /// expressions and sub-workflow inputs).
    pub parents: Vec<String>,
}

/// The job as one `/bin/sh` line: change to the work dir, replace the environment with exactly
/// `job.env` (`env -i`), run argv with its redirections. Every word is single-quoted, so the
/// line means the same argv whatever it contains; the caller stages the work dir first.
pub fn shell_line(dirs: &JobDirs, job: &JobSpec) -> String {
    let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut line = format!("cd {} && exec env -i", q(&dirs.outdir.display().to_string()));
    for (k, v) in &job.env {
        line.push(' ');
        line.push_str(&q(&format!("{k}={v}")));
    }
    for a in &job.command {
        line.push(' ');
        line.push_str(&q(a));
    }
    match &job.stdin {
        Some(p) => line.push_str(&format!(" < {}", q(&p.display().to_string()))),
        None => line.push_str(" < /dev/null"),
    }
    if let Some(o) = &job.stdout {
        line.push_str(&format!(" > {}", q(o)));
    }
    if let Some(e) = &job.stderr {
        line.push_str(&format!(" 2> {}", q(e)));
    }
    line
}

/// Creates the parent directories of the redirection targets (relative to the work dir), as
/// the local executor does before opening them.
pub fn prepare_redirections(dirs: &JobDirs, job: &JobSpec) -> Result<()> {
    for name in [&job.stdout, &job.stderr].into_iter().flatten() {
        if let Some(parent) = dirs.outdir.join(name).parent() {
            std::fs::create_dir_all(parent).map_err(|e| CwlError::io(parent, e))?;
        }
    }
    Ok(())
}

/// How a job ended.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    /// The process's exit code (-1 when killed by a signal).
    pub exit_code: i32,
    /// Whether the time limit killed it.
    pub timed_out: bool,
}

/// Runs CommandLineTool invocations somewhere.
pub trait Executor: Send + Sync {
    /// Allocates the directories for one job (their paths go into `runtime`).
    fn allocate(&self) -> Result<JobDirs>;
    /// Stages, runs and waits for one job; outputs stay in `dirs.outdir`. Called from several
    /// threads at once when the engine runs invocations in parallel.
    fn run(&self, dirs: &JobDirs, job: &JobSpec) -> Result<JobOutcome>;
    /// The run failed: stop every job running now (their `run` calls then return) and start
    /// no new one. The default does nothing.
    fn cancel(&self) {}
    /// How many invocations run at once when the user does not say (`--parallel`).
    fn default_parallel(&self) -> usize {
        1
    }
}

/// The processes a [`LocalExecutor`] runs now, and whether it was cancelled.
#[derive(Debug, Default)]
struct Live {
    pids: std::collections::BTreeSet<u32>,
    cancelled: bool,
}

/// Runs each job as a local process in a fresh directory under `root`.
#[derive(Debug)]
pub struct LocalExecutor {
    root: PathBuf,
    counter: AtomicU64,
    live: std::sync::Mutex<Live>,
}

impl LocalExecutor {
    /// An executor whose work dirs go under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), counter: AtomicU64::new(0), live: std::sync::Mutex::new(Live::default()) }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// SIGKILL by the system call, not by running `kill`: a failed spawn of `kill` would go unseen.
fn kill(pid: u32) {
    if let Ok(raw) = i32::try_from(pid) {
        // ESRCH (already ended) is the only expected error, and nothing is left to do for it.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Puts one staging entry in place, relative to `outdir`.
pub fn stage_one(outdir: &Path, s: &Stage) -> Result<()> {
    let abs = |t: &Path| if t.is_absolute() { t.to_path_buf() } else { outdir.join(t) };
    match s {
        Stage::Copy { source, target, writable } => {
            let t = abs(target);
            if let Some(p) = t.parent() {
                std::fs::create_dir_all(p).map_err(|e| CwlError::io(p, e))?;
            }
            if t.exists() {
                return Ok(());
            }
            if *writable || source.is_dir() {
                copy_tree(source, &t)?;
            } else {
                std::os::unix::fs::symlink(source, &t).map_err(|e| CwlError::io(&t, e))?;
            }
        }
        Stage::Link { source, target } => {
            let t = abs(target);
            if let Some(p) = t.parent() {
                std::fs::create_dir_all(p).map_err(|e| CwlError::io(p, e))?;
            }
            if t.symlink_metadata().is_err() {
                std::os::unix::fs::symlink(source, &t).map_err(|e| CwlError::io(&t, e))?;
            }
        }
        Stage::Write { contents, target } => {
            let t = abs(target);
            if let Some(p) = t.parent() {
                std::fs::create_dir_all(p).map_err(|e| CwlError::io(p, e))?;
            }
            std::fs::write(&t, contents).map_err(|e| CwlError::io(&t, e))?;
        }
        Stage::Mkdir { target } => {
            let t = abs(target);
            std::fs::create_dir_all(&t).map_err(|e| CwlError::io(&t, e))?;
        }
    }
    Ok(())
}

impl Executor for LocalExecutor {
    fn allocate(&self) -> Result<JobDirs> {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let base = self.root.join(format!("job{n}"));
        let outdir = base.join("out");
        let tmpdir = base.join("tmp");
        for d in [&outdir, &tmpdir] {
            std::fs::create_dir_all(d).map_err(|e| CwlError::io(d, e))?;
        }
        Ok(JobDirs { outdir, tmpdir })
    }

    fn run(&self, dirs: &JobDirs, job: &JobSpec) -> Result<JobOutcome> {
        for s in &job.stage {
            stage_one(&dirs.outdir, s)?;
        }
        let Some((prog, args)) = job.command.split_first() else {
            return Err(CwlError::Failed(format!("{}: empty command line", job.name)));
        };
        let mut cmd = Command::new(prog);
        cmd.args(args).current_dir(&dirs.outdir).env_clear().envs(&job.env);
        let open_out = |name: &str| -> Result<std::fs::File> {
            let p = dirs.outdir.join(name);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(|e| CwlError::io(parent, e))?;
            }
            std::fs::File::create(&p).map_err(|e| CwlError::io(&p, e))
        };
        cmd.stdin(match &job.stdin {
            Some(p) => Stdio::from(std::fs::File::open(p).map_err(|e| CwlError::io(p, e))?),
            None => Stdio::null(),
        });
        cmd.stdout(match &job.stdout {
            Some(n) => Stdio::from(open_out(n)?),
            None => Stdio::from(std::io::stderr()),
        });
        cmd.stderr(match &job.stderr {
            Some(n) => Stdio::from(open_out(n)?),
            None => Stdio::inherit(),
        });
        tracing::debug!(job = %job.name, command = ?job.command, "running");
        // Started under the lock, so a cancel either sees the process or stops it starting.
        let child = {
            let mut live = self.live();
            if live.cancelled {
                return Err(CwlError::Cancelled);
            }
            let child = cmd.spawn().map_err(|e| CwlError::Failed(format!("{}: cannot run `{prog}`: {e}", job.name)))?;
            live.pids.insert(child.id());
            child
        };
        let pid = child.id();
        let status = Self::wait(child, pid, job);
        self.live().pids.remove(&pid);
        status
    }

    fn cancel(&self) {
        let mut live = self.live();
        live.cancelled = true;
        for pid in &live.pids {
            kill(*pid);
        }
    }

    fn default_parallel(&self) -> usize {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    }
}

impl LocalExecutor {
    fn wait(mut child: std::process::Child, pid: u32, job: &JobSpec) -> Result<JobOutcome> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = match job.timeout {
            Some(t) => match rx.recv_timeout(t) {
                Ok(s) => s,
                Err(_) => {
                    kill(pid);
                    let _ = rx.recv();
                    return Ok(JobOutcome { exit_code: -1, timed_out: true });
                }
            },
            None => rx.recv().map_err(|e| CwlError::Failed(e.to_string()))?,
        };
        let status = status.map_err(|e| CwlError::Failed(format!("{}: {e}", job.name)))?;
        Ok(JobOutcome { exit_code: status.code().unwrap_or(-1), timed_out: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_line_runs_exactly_the_argv_in_the_work_dir_with_only_the_given_environment() {
        let dirs = JobDirs { outdir: PathBuf::from("/w/out dir"), tmpdir: PathBuf::from("/w/tmp") };
        let job = JobSpec {
            command: vec!["printf".into(), "%s {x} it's".into(), "$HOME".into()],
            env: BTreeMap::from([("HOME".into(), "/w/out dir".into()), ("A".into(), "b c".into())]),
            stdin: Some(PathBuf::from("/in/f.txt")),
            stdout: Some("o/out.txt".into()),
            ..Default::default()
        };
        let line = shell_line(&dirs, &job);
        assert_eq!(
            line,
            "cd '/w/out dir' && exec env -i 'A=b c' 'HOME=/w/out dir' 'printf' '%s {x} it'\\''s' '$HOME' \
             < '/in/f.txt' > 'o/out.txt'"
        );
        // What /bin/sh makes of it: the argv and environment as given, nothing expanded, nothing
        // inherited (cargo sets CARGO_PKG_NAME for this test process).
        let dir = tempfile::tempdir().expect("tempdir");
        let dirs = JobDirs { outdir: dir.path().to_path_buf(), tmpdir: dir.path().to_path_buf() };
        let job = JobSpec {
            command: vec![
                "/bin/sh".into(),
                "-c".into(),
                "printf '%s|' \"$1\" \"$A\" \"${CARGO_PKG_NAME:-unset}\"".into(),
                "x".into(),
                "q'{u}$v".into(),
            ],
            env: BTreeMap::from([("A".into(), "b c".into())]),
            stdout: Some("sub/out.txt".into()),
            ..Default::default()
        };
        prepare_redirections(&dirs, &job).expect("parents");
        let status = Command::new("/bin/sh").arg("-c").arg(shell_line(&dirs, &job)).status().expect("sh");
        assert!(status.success());
        let out = std::fs::read_to_string(dir.path().join("sub/out.txt")).expect("stdout file");
        assert_eq!(out, "q'{u}$v|b c|unset|");
    }
}
