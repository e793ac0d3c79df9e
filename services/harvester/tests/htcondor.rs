//! The htcondor plugin end to end against `fake-condor` (tests/support/fake_condor.rs), a stand-in
//! for HTCondor's command-line tools that keeps a job queue and history in a directory and prints
//! their documented output formats. HTCondor itself cannot run on the development and CI machines.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use panda_harvester::plugins::command::{CommandLine, ProcessRunner};
use panda_harvester::plugins::htcondor::{HtcondorConfig, HtcondorPlugin};
use panda_harvester::plugins::{Monitor, SubmitOutcome, Submitter, Sweeper, WorkerRef, WorkerSpec};
use panda_types::{Resources, WorkerStatus};

const FAKE: &str = env!("CARGO_BIN_EXE_fake-condor");

struct Fake {
    state: PathBuf,
}

impl Fake {
    fn command(&self, name: &str) -> CommandLine {
        CommandLine(vec![FAKE.to_owned(), self.state.display().to_string(), name.to_owned()])
    }

    fn config(&self) -> HtcondorConfig {
        HtcondorConfig {
            condor_submit: self.command("condor_submit"),
            condor_q: self.command("condor_q"),
            condor_history: self.command("condor_history"),
            condor_rm: self.command("condor_rm"),
            schedd: Some("schedd.example.org".into()),
            ..HtcondorConfig::default()
        }
    }

    /// Runs an admin command of the fake (moves jobs along).
    async fn admin(&self, args: &[&str]) {
        let status =
            tokio::process::Command::new(FAKE).arg(&self.state).args(args).status().await.expect("fake-condor runs");
        assert!(status.success(), "fake-condor {args:?} failed");
    }

    /// The condor commands called so far (first word of each line of calls.log).
    fn calls(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.state.join("calls.log")).unwrap_or_default();
        log.lines().map(|l| l.split_whitespace().next().unwrap_or("").to_owned()).collect()
    }

    fn state(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.state.join("state.json")).expect("the fake's state file exists");
        serde_json::from_str(&text).expect("the fake's state file is JSON")
    }
}

fn now() -> i64 {
    let since_epoch =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("the clock is past 1970");
    i64::try_from(since_epoch.as_secs()).expect("seconds fit")
}

fn spec(dir: &Path, id: u32) -> WorkerSpec {
    WorkerSpec {
        worker_id: id.to_string(),
        queue: "condor_site".into(),
        work_dir: dir.join("workers").join(id.to_string()),
        resources: Resources { cores: 1, memory_mb: 2000, disk_mb: 0, walltime_seconds: 0 },
        max_jobs: 1,
        server_url: "http://127.0.0.1:50051".into(),
        job_file: None,
        container_runtimes: Vec::new(),
    }
}

fn reference(spec: &WorkerSpec, outcome: &SubmitOutcome) -> WorkerRef {
    let SubmitOutcome::Submitted { batch_id } = outcome else { panic!("not submitted: {outcome:?}") };
    WorkerRef { worker_id: spec.worker_id.clone(), batch_id: batch_id.clone(), work_dir: spec.work_dir.clone() }
}

fn plugin(config: HtcondorConfig) -> HtcondorPlugin {
    HtcondorPlugin::new("condor_site", config, vec!["/opt/panda/panda-pilot".into()], Arc::new(ProcessRunner))
}

#[tokio::test]
async fn workers_live_and_end_through_the_condor_commands() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake { state: dir.path().join("condor") };
    let plugin = plugin(fake.config());

    // One condor_submit for all four workers; batch IDs in order.
    let specs: Vec<WorkerSpec> = (1..=4).map(|id| spec(dir.path(), id)).collect();
    let outcomes = plugin.submit(&specs).await;
    let workers: Vec<WorkerRef> = specs.iter().zip(&outcomes).map(|(s, o)| reference(s, o)).collect();
    let ids: Vec<&str> = workers.iter().map(|w| w.batch_id.as_str()).collect();
    assert_eq!(ids, ["1.0", "1.1", "1.2", "1.3"]);
    assert_eq!(fake.calls(), ["condor_submit"]);
    // Each job carries its worker's own description.
    let queue = fake.state()["queue"].as_array().unwrap().clone();
    let tagged: Vec<&str> = queue.iter().map(|ad| ad["harvesterWorkerID"].as_str().unwrap()).collect();
    assert_eq!(tagged, ["1", "2", "3", "4"]);
    assert_eq!(queue[0]["RequestMemory"], 2000);
    assert!(queue[0]["Arguments"].as_str().unwrap().contains("--worker-id 1 "), "{}", queue[0]["Arguments"]);

    // One condor_q per check; nothing left the queue, so no condor_history.
    let states = plugin.check(&workers).await;
    assert!(states.iter().all(|s| s.as_ref().unwrap().status == WorkerStatus::Submitted), "{states:?}");
    assert_eq!(fake.calls(), ["condor_submit", "condor_q"]);

    fake.admin(&["set", "1.0", "JobStatus=2"]).await;
    let states = plugin.check(&workers).await;
    assert_eq!(states[0].as_ref().unwrap().status, WorkerStatus::Running);

    // 1.0 completes and leaves the queue; 1.1 completes with exit code 3; 1.2 has been held for 2 h.
    fake.admin(&["set", "1.0", "JobStatus=4", "ExitCode=0"]).await;
    fake.admin(&["retire", "1.0"]).await;
    fake.admin(&["set", "1.1", "JobStatus=4", "ExitCode=3"]).await;
    let held_since = format!("EnteredCurrentStatus={}", now() - 7200);
    fake.admin(&["set", "1.2", "JobStatus=5", "HoldReason=\"Job not found\"", &held_since]).await;
    let before = fake.calls().len();
    let states = plugin.check(&workers).await;
    assert_eq!(fake.calls()[before..], ["condor_q", "condor_history", "condor_rm"]);
    let finished = states[0].as_ref().unwrap();
    assert_eq!((finished.status, finished.exit_code), (WorkerStatus::Finished, Some(0)));
    let failed = states[1].as_ref().unwrap();
    assert_eq!((failed.status, failed.exit_code), (WorkerStatus::Failed, Some(3)));
    let removed = states[2].as_ref().unwrap();
    assert_eq!(removed.status, WorkerStatus::Cancelled);
    assert!(
        removed.diag.starts_with("held for 7") && removed.diag.ends_with("s, removed: Job not found"),
        "{removed:?}"
    );
    assert_eq!(states[3].as_ref().unwrap().status, WorkerStatus::Submitted);
    // The held job was really removed: it is in the history as JobStatus 3.
    let history = fake.state()["history"].as_array().unwrap().clone();
    assert!(history.iter().any(|ad| ad["ProcId"] == 2 && ad["JobStatus"] == 3), "{history:?}");

    // A kill is one condor_rm; the job then shows as removed in the history.
    assert_eq!(plugin.kill(&workers[3..]).await, [Ok(())]);
    let state = plugin.check(&workers[3..]).await.remove(0).unwrap();
    assert_eq!(state.status, WorkerStatus::Cancelled);
    assert!(state.diag.contains("via condor_rm"), "{state:?}");
    // Killing again is fine (the job is gone).
    assert_eq!(plugin.kill(&workers[3..]).await, [Ok(())]);

    for worker in &workers {
        assert!(worker.work_dir.join("submit.sub").is_file());
        plugin.clean(worker).await.unwrap();
        assert!(!worker.work_dir.exists());
    }
}

#[tokio::test]
async fn failing_commands_and_malformed_output_are_reported_per_worker() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake { state: dir.path().join("condor") };
    let plugin = plugin(HtcondorConfig { lost_after: Duration::ZERO, ..fake.config() });
    let specs: Vec<WorkerSpec> = (1..=2).map(|id| spec(dir.path(), id)).collect();

    fake.admin(&["next", "condor_submit", "1", "", "ERROR: Failed to connect to local queue manager\n"]).await;
    let outcomes = plugin.submit(&specs).await;
    assert!(
        outcomes.iter().all(|o| matches!(o, SubmitOutcome::Temporary(d) if d.contains("Failed to connect"))),
        "{outcomes:?}"
    );

    let outcomes = plugin.submit(&specs).await;
    let workers: Vec<WorkerRef> = specs.iter().zip(&outcomes).map(|(s, o)| reference(s, o)).collect();

    fake.admin(&["next", "condor_q", "0", "-- Schedd: schedd.example.org : <10.0.0.1:9618?...\n", ""]).await;
    let states = plugin.check(&workers).await;
    assert!(
        states.iter().all(|s| s.as_ref().unwrap_err().starts_with("malformed condor_q -json output")),
        "{states:?}"
    );

    fake.admin(&["set", "1.0", "JobStatus=8"]).await;
    let states = plugin.check(&workers).await;
    assert_eq!(states[0].as_ref().unwrap_err(), "HTCondor job 1.0 has an unknown JobStatus 8");
    assert_eq!(states[1].as_ref().unwrap().status, WorkerStatus::Submitted);

    // A job in neither the queue nor the history is lost (here at once: lost_after 0).
    fake.admin(&["next", "condor_q", "0", "", ""]).await;
    let states = plugin.check(&workers[1..]).await;
    let lost = states[0].as_ref().unwrap();
    assert_eq!(lost.status, WorkerStatus::Cancelled);
    assert!(lost.diag.contains("known to neither condor_q nor condor_history"), "{lost:?}");

    // A missing condor_q is a reason, not a crash.
    let broken =
        self::plugin(HtcondorConfig { condor_q: CommandLine(vec!["/nonexistent/condor_q".into()]), ..fake.config() });
    let states = broken.check(&workers).await;
    assert!(states.iter().all(|s| s.as_ref().unwrap_err().contains("cannot run /nonexistent/condor_q")), "{states:?}");
}
