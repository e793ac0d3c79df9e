//! The slurm plugin against a real Slurm (single node: `scripts/slurm-up.sh`). Ignored unless asked
//! for (`PANDA_TEST_SLURM=1 cargo test -p panda-harvester --test slurm -- --ignored`); asked for
//! without a Slurm, it fails rather than passing silently.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use panda_harvester::plugins::command::{CommandLine, ProcessRunner};
use panda_harvester::plugins::slurm::{SlurmConfig, SlurmPlugin};
use panda_harvester::plugins::{BatchState, Monitor, SubmitOutcome, Submitter, Sweeper, WorkerRef, WorkerSpec};
use panda_types::{Resources, WorkerStatus};

fn require_slurm() {
    assert_eq!(
        std::env::var("PANDA_TEST_SLURM").as_deref(),
        Ok("1"),
        "this test needs a running Slurm: run scripts/slurm-up.sh and set PANDA_TEST_SLURM=1"
    );
}

/// The "pilot": a shell script that behaves by worker ID (`$6` is the ID after `--worker-id`) and
/// leaves a mark in its directory to show it ran there.
const PILOT: &str =
    r#"echo "ran on $(hostname)" > ran-$6; case "$6" in 1) exit 0 ;; 2) exit 3 ;; *) sleep 300 ;; esac"#;

fn config() -> SlurmConfig {
    SlurmConfig {
        pilot_command: Some(vec!["/bin/sh".into(), "-c".into(), PILOT.into(), "pilot".into()]),
        command_timeout: Duration::from_secs(30),
        ..SlurmConfig::default()
    }
}

fn plugin(config: SlurmConfig) -> SlurmPlugin {
    SlurmPlugin::new("slurm_test", config, vec![], Arc::new(ProcessRunner))
}

fn spec(dir: &Path, id: u32) -> WorkerSpec {
    WorkerSpec {
        worker_id: id.to_string(),
        queue: "slurm_test".into(),
        work_dir: dir.join("slurm_test").join(id.to_string()),
        resources: Resources { cores: 1, memory_mb: 100, disk_mb: 0, walltime_seconds: 600 },
        max_jobs: 1,
        server_url: "http://127.0.0.1:1".into(),
        job_file: None,
        container_runtimes: Vec::new(),
    }
}

/// Polls until every worker's state satisfies `done`; returns the last states.
async fn await_states(
    plugin: &SlurmPlugin,
    workers: &[WorkerRef],
    what: &str,
    done: impl Fn(&[Option<BatchState>]) -> bool,
) -> Vec<Option<BatchState>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let states: Vec<Option<BatchState>> = plugin.check(workers).await.into_iter().map(Result::ok).collect();
        if done(&states) {
            return states;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}; last states {states:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn status(state: &Option<BatchState>) -> Option<WorkerStatus> {
    state.as_ref().map(|s| s.status)
}

#[tokio::test]
#[ignore = "needs Slurm: run scripts/slurm-up.sh and set PANDA_TEST_SLURM=1"]
async fn workers_run_end_and_are_cancelled_on_a_real_slurm() {
    require_slurm();
    let dir = tempfile::tempdir().unwrap();
    let slurm = plugin(config());

    let specs: Vec<WorkerSpec> = (1..=3).map(|id| spec(dir.path(), id)).collect();
    let outcomes = slurm.submit(&specs).await;
    let workers: Vec<WorkerRef> = specs
        .iter()
        .zip(&outcomes)
        .map(|(spec, outcome)| {
            let SubmitOutcome::Submitted { batch_id } = outcome else { panic!("sbatch failed: {outcome:?}") };
            WorkerRef { worker_id: spec.worker_id.clone(), batch_id: batch_id.clone(), work_dir: spec.work_dir.clone() }
        })
        .collect();

    // Worker 1 exits 0, worker 2 exits 3, worker 3 keeps running.
    use WorkerStatus::*;
    let states = await_states(&slurm, &workers, "finished, failed, running", |s| {
        status(&s[0]) == Some(Finished) && status(&s[1]) == Some(Failed) && status(&s[2]) == Some(Running)
    })
    .await;
    assert_eq!(states[0].as_ref().unwrap().exit_code, Some(0));
    assert_eq!(states[1].as_ref().unwrap().exit_code, Some(3));
    for worker in &workers[..2] {
        let mark = worker.work_dir.join(format!("ran-{}", worker.worker_id));
        assert!(mark.is_file(), "the job ran in its worker directory ({})", mark.display());
        assert!(worker.work_dir.join("slurm.out").is_file(), "Slurm wrote the job's output where the template said");
    }

    // scancel; the worker is then cancelled.
    assert_eq!(slurm.kill(&workers[2..]).await, [Ok(())]);
    let states = await_states(&slurm, &workers[2..], "cancelled", |s| status(&s[0]) == Some(Cancelled)).await;
    assert!(states[0].as_ref().unwrap().diag.contains("CANCELLED"), "{states:?}");
    assert_eq!(slurm.kill(&workers[2..]).await, [Ok(())], "killing an ended job again is fine");

    // Once jobs leave squeue (after MinJobAge) their states come from sacct: here squeue is made to
    // know nothing, so everything is read from `sacct` (`--completion` without slurmdbd).
    let accounting_only = plugin(SlurmConfig { squeue: CommandLine(vec!["/bin/true".into()]), ..config() });
    let states = await_states(&accounting_only, &workers, "the same states from sacct", |s| {
        status(&s[0]) == Some(Finished) && status(&s[1]) == Some(Failed) && status(&s[2]) == Some(Cancelled)
    })
    .await;
    assert_eq!(states[1].as_ref().unwrap().exit_code, Some(3));

    for worker in &workers {
        slurm.clean(worker).await.unwrap();
        assert!(!worker.work_dir.exists());
    }
}

#[tokio::test]
#[ignore = "needs Slurm: run scripts/slurm-up.sh and set PANDA_TEST_SLURM=1"]
async fn a_bad_partition_is_a_permanent_failure_with_slurms_reason() {
    require_slurm();
    let dir = tempfile::tempdir().unwrap();
    let slurm = plugin(SlurmConfig { partition: Some("no_such_partition".into()), ..config() });
    let outcome = slurm.submit(&[spec(dir.path(), 1)]).await.remove(0);
    assert!(
        matches!(&outcome, SubmitOutcome::Permanent(diag) if diag.contains("Invalid partition name")),
        "{outcome:?}"
    );
}
