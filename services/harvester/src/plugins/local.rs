//! The `local` plugin: each worker is a pilot process on this machine (the embedded default).
//!
//! The pilot runs under `/bin/sh`, which writes the pilot's exit code into `exit_code` in the
//! worker directory, so a harvester restarted mid-run still learns how its workers ended. The
//! batch ID is the process ID; each worker gets its own process group, so a kill reaches the
//! pilot and its payload.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;

use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use panda_types::WorkerStatus;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use super::{BatchState, CheckResult, Monitor, SubmitOutcome, Submitter, Sweeper, WorkerRef, WorkerSpec};

/// `plugin: { type: local }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    /// Pilot program and leading arguments (default: the pilot of this installation).
    pub pilot_command: Option<Vec<String>>,
}

impl LocalConfig {
    pub(super) fn problems(&self) -> Vec<String> {
        match &self.pilot_command {
            Some(command) if command.is_empty() || command[0].is_empty() => {
                vec!["pilot_command: must name a program".to_owned()]
            }
            _ => Vec::new(),
        }
    }
}

/// Pilots as local processes.
pub struct LocalPlugin {
    program: Vec<String>,
    /// Children started by this process, kept so they are reaped (no zombies).
    children: Mutex<HashMap<String, Child>>,
}

const EXIT_CODE_FILE: &str = "exit_code";
const LOG_FILE: &str = "pilot.log";

impl LocalPlugin {
    /// A plugin running `config.pilot_command`, else `default_program`.
    pub fn new(config: LocalConfig, default_program: Vec<String>) -> Self {
        Self { program: config.pilot_command.unwrap_or(default_program), children: Mutex::default() }
    }

    fn spawn(&self, worker: &WorkerSpec) -> Result<Child, String> {
        std::fs::create_dir_all(&worker.work_dir)
            .map_err(|e| format!("cannot create worker directory {}: {e}", worker.work_dir.display()))?;
        let log = std::fs::File::create(worker.work_dir.join(LOG_FILE))
            .map_err(|e| format!("cannot create {}: {e}", worker.work_dir.join(LOG_FILE).display()))?;
        let log_err = log.try_clone().map_err(|e| format!("cannot open the pilot log: {e}"))?;
        let args = super::batch::pilot_args(&self.program, worker);
        // sh records the pilot's exit code next to its log; `$@` keeps arguments intact.
        let script = format!("\"$@\"; echo $? > {EXIT_CODE_FILE}");
        Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .arg("panda-worker")
            .args(&args)
            .current_dir(&worker.work_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start the pilot {:?}: {e}", args.first()))
    }
}

fn read_exit_code(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join(EXIT_CODE_FILE)).ok()?.trim().parse().ok()
}

/// Whether a process exists and has not exited (a zombie counts as exited).
fn process_alive(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => {
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|s| s != "Z")
        }
        Err(_) => false,
    }
}

fn ended(code: i32) -> BatchState {
    let status = if code == 0 { WorkerStatus::Finished } else { WorkerStatus::Failed };
    let diag = if code == 0 { String::new() } else { format!("pilot exited with code {code}") };
    BatchState { status, exit_code: Some(code), diag }
}

#[async_trait]
impl Submitter for LocalPlugin {
    async fn submit(&self, workers: &[WorkerSpec]) -> Vec<SubmitOutcome> {
        let mut outcomes = Vec::with_capacity(workers.len());
        for worker in workers {
            match self.spawn(worker) {
                Ok(child) => match child.id() {
                    Some(pid) => {
                        self.children.lock().await.insert(pid.to_string(), child);
                        outcomes.push(SubmitOutcome::Submitted { batch_id: pid.to_string() });
                    }
                    None => outcomes.push(SubmitOutcome::Temporary("the pilot exited before it was registered".into())),
                },
                Err(diag) => outcomes.push(SubmitOutcome::Temporary(diag)),
            }
        }
        outcomes
    }
}

#[async_trait]
impl Monitor for LocalPlugin {
    async fn check(&self, workers: &[WorkerRef]) -> Vec<CheckResult> {
        let mut children = self.children.lock().await;
        let mut states = Vec::with_capacity(workers.len());
        for worker in workers {
            // Reap our own child first so it does not linger as a zombie.
            if let Some(child) = children.get_mut(&worker.batch_id)
                && let Ok(Some(_)) = child.try_wait()
            {
                children.remove(&worker.batch_id);
            }
            let state = if let Some(code) = read_exit_code(&worker.work_dir) {
                ended(code)
            } else if process_alive(&worker.batch_id) {
                BatchState { status: WorkerStatus::Running, exit_code: None, diag: String::new() }
            } else if let Some(code) = read_exit_code(&worker.work_dir) {
                // It ended between the two looks.
                ended(code)
            } else {
                BatchState {
                    status: WorkerStatus::Cancelled,
                    exit_code: None,
                    diag: "pilot process is gone and left no exit code (killed?)".to_owned(),
                }
            };
            states.push(Ok(state));
        }
        states
    }
}

#[async_trait]
impl Sweeper for LocalPlugin {
    async fn kill(&self, workers: &[WorkerRef]) -> Vec<Result<(), String>> {
        let mut results = Vec::with_capacity(workers.len());
        for worker in workers {
            let result = match worker.batch_id.parse::<i32>() {
                Ok(pid) if process_alive(&worker.batch_id) => {
                    killpg(Pid::from_raw(pid), Signal::SIGTERM).map_err(|e| format!("kill of process group {pid}: {e}"))
                }
                Ok(_) => Ok(()),
                Err(_) => Err(format!("batch id {:?} is not a process id", worker.batch_id)),
            };
            results.push(result);
        }
        results
    }

    async fn clean(&self, worker: &WorkerRef) -> Result<(), String> {
        match std::fs::remove_dir_all(&worker.work_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot remove {}: {e}", worker.work_dir.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn spec(dir: &Path) -> WorkerSpec {
        WorkerSpec {
            worker_id: "1".into(),
            queue: "q".into(),
            work_dir: dir.join("w1"),
            resources: Default::default(),
            max_jobs: 0,
            server_url: "http://127.0.0.1:1".into(),
            job_file: None,
            container_runtimes: Vec::new(),
        }
    }

    async fn wait_for(plugin: &LocalPlugin, worker: &WorkerRef, status: WorkerStatus) -> BatchState {
        for _ in 0..200 {
            let state = plugin.check(std::slice::from_ref(worker)).await.remove(0).unwrap();
            if state.status == status {
                return state;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("worker never reached {status}");
    }

    async fn submit(plugin: &LocalPlugin, dir: &Path) -> WorkerRef {
        let spec = spec(dir);
        let SubmitOutcome::Submitted { batch_id } = plugin.submit(std::slice::from_ref(&spec)).await.remove(0) else {
            panic!("submit failed")
        };
        WorkerRef { worker_id: spec.worker_id, batch_id, work_dir: spec.work_dir }
    }

    #[tokio::test]
    async fn exit_codes_map_to_finished_and_failed() {
        let dir = tempfile::tempdir().unwrap();
        let ok = LocalPlugin::new(LocalConfig { pilot_command: Some(vec!["/bin/true".into()]) }, vec![]);
        let worker = submit(&ok, dir.path()).await;
        let state = wait_for(&ok, &worker, WorkerStatus::Finished).await;
        assert_eq!(state.exit_code, Some(0));

        let dir = tempfile::tempdir().unwrap();
        let bad = LocalPlugin::new(LocalConfig { pilot_command: Some(vec!["/bin/false".into()]) }, vec![]);
        let worker = submit(&bad, dir.path()).await;
        let state = wait_for(&bad, &worker, WorkerStatus::Failed).await;
        assert_eq!(state.exit_code, Some(1));
    }

    #[tokio::test]
    async fn a_new_plugin_instance_still_reads_the_outcome() {
        // As after a harvester restart: the monitor has no child handle, only the directory.
        let dir = tempfile::tempdir().unwrap();
        let first = LocalPlugin::new(LocalConfig { pilot_command: Some(vec!["/bin/false".into()]) }, vec![]);
        let worker = submit(&first, dir.path()).await;
        wait_for(&first, &worker, WorkerStatus::Failed).await;
        let second = LocalPlugin::new(LocalConfig::default(), vec![]);
        let state = second.check(std::slice::from_ref(&worker)).await.remove(0).unwrap();
        assert_eq!(state.status, WorkerStatus::Failed);
    }

    #[tokio::test]
    async fn kill_ends_the_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = LocalPlugin::new(
            LocalConfig {
                pilot_command: Some(vec!["/bin/sh".into(), "-c".into(), "sleep 600".into(), "pilot".into()]),
            },
            vec![],
        );
        let worker = submit(&plugin, dir.path()).await;
        wait_for(&plugin, &worker, WorkerStatus::Running).await;
        plugin.kill(std::slice::from_ref(&worker)).await.remove(0).unwrap();
        // sh reports the killed child (143) or dies itself without writing a code.
        let state = loop {
            let state = plugin.check(std::slice::from_ref(&worker)).await.remove(0).unwrap();
            if state.status != WorkerStatus::Running {
                break state;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(matches!(state.status, WorkerStatus::Failed | WorkerStatus::Cancelled), "{state:?}");
        plugin.clean(&worker).await.unwrap();
        assert!(!worker.work_dir.exists());
    }

    #[test]
    fn empty_pilot_command_is_a_problem() {
        assert!(!LocalConfig { pilot_command: Some(vec![]) }.problems().is_empty());
        assert!(LocalConfig::default().problems().is_empty());
    }
}
