use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use panda_types::{Resources, WorkerStatus};

use super::parse::{self, ExitStatus, JobRecord};
use super::*;
use crate::plugins::command::testing::{Reply, Scripted, fail, ok};

/// A recorded output without its `#` header lines.
fn fixture(text: &str) -> String {
    text.lines().filter(|l| !l.starts_with('#')).map(|l| format!("{l}\n")).collect()
}

const SQUEUE: &str = include_str!("../../../tests/fixtures/slurm/squeue.txt");
const SACCT_COMPLETION: &str = include_str!("../../../tests/fixtures/slurm/sacct-completion.txt");
const SACCT_SLURMDBD: &str = include_str!("../../../tests/fixtures/slurm/sacct-slurmdbd.txt");
const ERRORS: &str = include_str!("../../../tests/fixtures/slurm/errors.txt");

/// The stderr recorded for the case whose title starts with `title`.
fn recorded_error(title: &str) -> String {
    let mut blocks = ERRORS.split("\n== ").skip(1);
    let block = blocks.find(|b| b.starts_with(title)).unwrap_or_else(|| panic!("no recorded case {title}"));
    block.lines().skip(1).map(|l| format!("{l}\n")).collect()
}

fn states(records: &[JobRecord]) -> Vec<(String, WorkerStatus, Option<i32>)> {
    records
        .iter()
        .map(|r| {
            let state = parse::map_record(r).unwrap();
            (r.job_id.clone(), state.status, state.exit_code)
        })
        .collect()
}

fn row(id: &str, status: WorkerStatus, exit: Option<i32>) -> (String, WorkerStatus, Option<i32>) {
    (id.to_owned(), status, exit)
}

#[test]
fn recorded_squeue_output_maps_to_worker_states() {
    let records = parse::parse_squeue(&fixture(SQUEUE)).unwrap();
    assert_eq!(
        states(&records),
        vec![
            row("4", WorkerStatus::Submitted, None),
            row("7", WorkerStatus::Cancelled, Some(0)),
            row("8", WorkerStatus::Finished, Some(0)),
            row("9", WorkerStatus::Failed, Some(2)),
            row("10", WorkerStatus::Failed, Some(137)),
            row("6", WorkerStatus::Running, None),
        ]
    );
    assert_eq!(records[0].reason, "BeginTime");
    assert_eq!(parse::map_record(&records[3]).unwrap().diag, "Slurm job 9 FAILED (NonZeroExitCode), exit code 2");
    assert_eq!(parse::map_record(&records[4]).unwrap().diag, "Slurm job 10 FAILED (JobLaunchFailure), signal 9");
    assert_eq!(parse::map_record(&records[5]).unwrap().diag, "");
}

#[test]
fn recorded_sacct_output_maps_to_worker_states() {
    let completion = parse::parse_sacct(&fixture(SACCT_COMPLETION)).unwrap();
    assert_eq!(
        states(&completion),
        vec![
            row("8", WorkerStatus::Finished, Some(0)),
            row("9", WorkerStatus::Failed, Some(2)),
            row("10", WorkerStatus::Failed, Some(137)),
            row("7", WorkerStatus::Cancelled, Some(0)),
            row("6", WorkerStatus::Cancelled, Some(0)),
        ]
    );
    // With slurmdbd: running jobs are listed, "CANCELLED by <uid>", step rows skipped.
    let dbd = parse::parse_sacct(&fixture(SACCT_SLURMDBD)).unwrap();
    assert_eq!(
        states(&dbd),
        vec![
            row("11", WorkerStatus::Running, None),
            row("12", WorkerStatus::Cancelled, Some(143)),
            row("13", WorkerStatus::Failed, Some(2)),
            row("14", WorkerStatus::Failed, Some(253)),
        ]
    );
    assert_eq!(dbd[1].reason, "by 0");
    assert_eq!(dbd[3].exit, Some(ExitStatus { code: 0, signal: 125 }));
    assert_eq!(parse::map_record(&dbd[1]).unwrap().diag, "Slurm job 12 CANCELLED (by 0), signal 15");
}

#[test]
fn every_slurm_state_has_a_worker_state() {
    use WorkerStatus::*;
    let table = [
        ("PENDING", Submitted),
        ("CONFIGURING", Submitted),
        ("REQUEUED", Submitted),
        ("REQUEUE_HOLD", Submitted),
        ("REQUEUE_FED", Submitted),
        ("RESV_DEL_HOLD", Submitted),
        ("SPECIAL_EXIT", Submitted),
        ("RUNNING", Running),
        ("COMPLETING", Running),
        ("SIGNALING", Running),
        ("STAGE_OUT", Running),
        ("RESIZING", Running),
        ("SUSPENDED", Idle),
        ("STOPPED", Idle),
        ("COMPLETED", Finished),
        ("FAILED", Failed),
        ("TIMEOUT", Failed),
        ("NODE_FAIL", Failed),
        ("OUT_OF_MEMORY", Failed),
        ("BOOT_FAIL", Failed),
        ("DEADLINE", Failed),
        ("LAUNCH_FAILED", Failed),
        ("CANCELLED", Cancelled),
        ("PREEMPTED", Cancelled),
        ("REVOKED", Cancelled),
    ];
    for (state, status) in table {
        assert_eq!(parse::worker_status(state), Some(status), "{state}");
    }
    let timeout = JobRecord { job_id: "5".into(), state: "TIMEOUT".into(), exit: None, reason: "TimeLimit".into() };
    assert_eq!(parse::map_record(&timeout).unwrap().diag, "Slurm job 5 TIMEOUT (TimeLimit): wall time limit reached");
    let odd = JobRecord { job_id: "5".into(), state: "CANCELLED+".into(), exit: None, reason: String::new() };
    assert_eq!(parse::map_record(&odd).unwrap_err(), "job 5 is in an unknown Slurm state \"CANCELLED+\"");
}

#[test]
fn malformed_lines_are_named() {
    let error = parse::parse_squeue("1|RUNNING|0|None|\n2|RUNNING\n").unwrap_err();
    assert_eq!(error.to_string(), "malformed squeue output, line 2: no closing |: \"2|RUNNING\"");
    let error = parse::parse_squeue("x|RUNNING|0|None|\n").unwrap_err();
    assert!(error.to_string().contains("JobID is not a number"), "{error}");
    let error = parse::parse_squeue("1|RUNNING|zero|None|\n").unwrap_err();
    assert!(error.to_string().contains("exit_code is not a number"), "{error}");
    let error = parse::parse_sacct("1|COMPLETED\n").unwrap_err();
    assert_eq!(error.to_string(), "malformed sacct output, line 1: expected JobID|State|ExitCode: \"1|COMPLETED\"");
    let error = parse::parse_sacct("1|COMPLETED|0\n").unwrap_err();
    assert!(error.to_string().contains("code:signal"), "{error}");
}

#[test]
fn sbatch_output_and_errors() {
    assert_eq!(parse::parse_sbatch("42\n"), Ok("42".into()));
    assert_eq!(parse::parse_sbatch("42;cluster-a\n"), Ok("42".into()));
    assert_eq!(parse::parse_sbatch("sbatch: warning: something\n42\n"), Ok("42".into()));
    assert!(parse::parse_sbatch("Submitted batch job\n").is_err());
    assert!(parse::parse_sbatch("").is_err());

    assert!(parse::sbatch_failure_is_transient(&recorded_error("sbatch --parsable --wrap true (slurmctld stopped")));
    for permanent in
        ["sbatch --parsable --partition=nope", "sbatch --parsable --mem=", "sbatch --parsable /nonexistent"]
    {
        assert!(!parse::sbatch_failure_is_transient(&recorded_error(permanent)), "{permanent}");
    }
    assert!(parse::squeue_knows_none(&recorded_error("squeue --noheader --states=all --jobs=99")));
    assert!(!parse::squeue_knows_none(&recorded_error("squeue --noheader --states=all (slurmctld stopped")));
    assert!(parse::sacct_has_no_accounting(&recorded_error("sacct --noheader --parsable2 --jobs=1 (no slurmdbd)")));

    let errors = parse::parse_scancel_errors(&recorded_error("scancel 5"));
    assert_eq!(errors["5"], "Unable to contact slurm controller (connect failure)");
    assert!(!parse::scancel_error_means_gone(&errors["5"]));
    assert!(parse::scancel_error_means_gone("Invalid job id specified"));
    assert!(parse::scancel_error_means_gone("Job/step already completing or completed"));
}

fn worker(dir: &Path, id: &str) -> WorkerSpec {
    WorkerSpec {
        worker_id: id.into(),
        queue: "hpc".into(),
        work_dir: dir.join("hpc").join(id),
        resources: Resources { cores: 4, memory_mb: 8000, disk_mb: 0, walltime_seconds: 3600 },
        max_jobs: 2,
        server_url: "http://10.0.0.1:50051".into(),
        job_file: None,
        container_runtimes: Vec::new(),
    }
}

fn reference(id: &str, batch_id: &str) -> WorkerRef {
    WorkerRef { worker_id: id.into(), batch_id: batch_id.into(), work_dir: format!("/w/{id}").into() }
}

fn plugin(config: SlurmConfig, runner: &Arc<Scripted>) -> SlurmPlugin {
    SlurmPlugin::new("hpc", config, vec!["/opt/panda/panda-pilot".into()], runner.clone())
}

const SQUEUE_ARGS: &[&str] = &["--noheader", "--states=all"];

fn squeue_argv(ids: &str) -> Vec<String> {
    let mut argv = vec!["squeue".to_owned()];
    argv.extend(SQUEUE_ARGS.iter().map(|s| (*s).to_owned()));
    argv.push(format!("--jobs={ids}"));
    argv.push("--Format=JobID:|,State:|,exit_code:|,Reason:|".to_owned());
    argv
}

fn sacct_argv(completion: bool, ids: &str) -> Vec<String> {
    let mut argv = vec!["sacct".to_owned()];
    if completion {
        argv.push("--completion".to_owned());
    }
    argv.extend(["--noheader", "--parsable2", "--allocations"].map(str::to_owned));
    argv.push(format!("--jobs={ids}"));
    argv.push("--format=JobID,State,ExitCode".to_owned());
    argv
}

fn strs(argv: &[String]) -> Vec<&str> {
    argv.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn submit_renders_the_script_and_classifies_failures() {
    let dir = tempfile::tempdir().unwrap();
    let workers: Vec<WorkerSpec> = ["1", "2", "3", "4"].iter().map(|id| worker(dir.path(), id)).collect();
    let runner = Arc::new(Scripted::default());
    for (w, reply) in workers.iter().zip([
        ok("101\n"),
        fail(1, &recorded_error("sbatch --parsable --wrap true (slurmctld stopped")),
        fail(1, &recorded_error("sbatch --parsable --partition=nope")),
        Reply::Missing,
    ]) {
        let script = w.work_dir.join("submit.sh").display().to_string();
        let chdir = format!("--chdir={}", w.work_dir.display());
        runner.expect(&["sbatch", "--parsable", &chdir, "--partition=debug", &script], reply);
    }
    // One at a time, so the scripted answers meet their workers in order.
    let config = SlurmConfig { partition: Some("debug".into()), submit_parallelism: 1, ..Default::default() };
    let outcomes = plugin(config, &runner).submit(&workers).await;
    runner.done();
    assert_eq!(outcomes[0], SubmitOutcome::Submitted { batch_id: "101".into() });
    assert!(
        matches!(&outcomes[1], SubmitOutcome::Temporary(d) if d.contains("Unable to contact slurm controller")),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[2], SubmitOutcome::Permanent(d) if d.contains("Invalid partition name")),
        "{outcomes:?}"
    );
    assert!(matches!(&outcomes[3], SubmitOutcome::Permanent(d) if d.contains("cannot run sbatch")), "{outcomes:?}");

    let script = std::fs::read_to_string(workers[0].work_dir.join("submit.sh")).unwrap();
    let work_dir = workers[0].work_dir.display();
    assert_eq!(
        script,
        format!(
            "#!/bin/sh
#SBATCH --job-name=panda-hpc-1
#SBATCH --output={work_dir}/slurm.out
#SBATCH --error={work_dir}/slurm.err
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=4
#SBATCH --mem=8000M
#SBATCH --time=60
exec /opt/panda/panda-pilot --server http://10.0.0.1:50051 --queue hpc --worker-id 1 --work-dir {work_dir}/pilot \
--cores 4 --memory-mb 8000 --max-jobs 2
"
        )
    );
}

#[tokio::test]
async fn a_custom_template_gets_partition_account_and_its_own_log_dir() {
    let dir = tempfile::tempdir().unwrap();
    let w = worker(dir.path(), "9");
    let logs = dir.path().join("logs");
    let runner = Arc::new(Scripted::default());
    let script = w.work_dir.join("submit.sh").display().to_string();
    let chdir = format!("--chdir={}", w.work_dir.display());
    runner.expect(&["sbatch", "--parsable", &chdir, "--partition=gpu", "--account=atlas", &script], ok("7;c1"));
    let config = SlurmConfig {
        template: Some(
            "#SBATCH -p {partition} -A {account} -o {log_dir}/out\nsrun {pilot_command} # ${{HOME}}\n".into(),
        ),
        partition: Some("gpu".into()),
        account: Some("atlas".into()),
        log_dir: Some(logs.clone()),
        pilot_command: Some(vec!["/bin/sh".into(), "-c".into(), "echo 'hi there'".into()]),
        ..Default::default()
    };
    let outcome = plugin(config, &runner).submit(std::slice::from_ref(&w)).await.remove(0);
    assert_eq!(outcome, SubmitOutcome::Submitted { batch_id: "7".into() });
    let text = std::fs::read_to_string(&script).unwrap();
    let log_dir = logs.join("hpc").join("9");
    assert!(
        text.starts_with(&format!(
            "#SBATCH -p gpu -A atlas -o {}/out\nsrun /bin/sh -c 'echo '\\''hi there'\\''' --server",
            log_dir.display()
        )),
        "{text}"
    );
    assert!(text.ends_with("# ${HOME}\n"), "{text}");
    assert!(log_dir.is_dir(), "the log directory exists before the job starts");

    // Cleaning removes the worker's directory and its log directory.
    let plugin = plugin(SlurmConfig { log_dir: Some(logs), ..Default::default() }, &runner);
    plugin
        .clean(&WorkerRef { worker_id: "9".into(), batch_id: "7".into(), work_dir: w.work_dir.clone() })
        .await
        .unwrap();
    assert!(!w.work_dir.exists() && !log_dir.exists());
}

#[tokio::test]
async fn one_squeue_call_then_one_sacct_call_for_the_jobs_that_left() {
    let runner = Arc::new(Scripted::default());
    let workers = [reference("1", "11"), reference("2", "12"), reference("3", "13"), reference("4", "12")];
    // Job 13 left squeue; there is no slurmdbd, so `auto` switches to `sacct --completion` once.
    runner
        .expect(&strs(&squeue_argv("11,12,13")), ok("11|RUNNING|0|None|\n12|PENDING|0|Priority|\n"))
        .expect(&strs(&sacct_argv(false, "13")), fail(1, "Slurm accounting storage is disabled\n"))
        .expect(&strs(&sacct_argv(true, "13")), ok("13|COMPLETED|0:0\n"));
    let plugin = plugin(SlurmConfig::default(), &runner);
    let states = plugin.check(&workers).await;
    let statuses: Vec<WorkerStatus> = states.iter().map(|s| s.as_ref().unwrap().status).collect();
    use WorkerStatus::*;
    assert_eq!(statuses, [Running, Submitted, Finished, Submitted]);
    assert_eq!(states[1].as_ref().unwrap().diag, "Slurm job 12 PENDING (Priority)");

    // Next cycle: straight to `sacct --completion`; a job nobody knows is "could not tell" first.
    runner
        .expect(&strs(&squeue_argv("11,12,13")), fail(1, "slurm_load_jobs error: Invalid job id specified\n"))
        .expect(&strs(&sacct_argv(true, "11,12,13")), ok("11|FAILED|1:0\n13|COMPLETED|0:0\n"));
    let states = plugin.check(&workers[..3]).await;
    runner.done();
    assert_eq!(states[0].as_ref().unwrap().status, Failed);
    assert_eq!(states[1].as_ref().unwrap_err(), "Slurm job 12 is in neither squeue nor sacct (yet)");
    assert_eq!(states[2].as_ref().unwrap().status, Finished);
}

#[tokio::test]
async fn failures_leave_workers_unknown_with_a_reason() {
    let runner = Arc::new(Scripted::default());
    let workers = [reference("1", "11"), reference("2", "not-a-job")];
    let plugin = plugin(SlurmConfig { accounting: Accounting::Slurmdbd, ..Default::default() }, &runner);

    runner.expect(
        &strs(&squeue_argv("11")),
        fail(1, &recorded_error("squeue --noheader --states=all (slurmctld stopped")),
    );
    let states = plugin.check(&workers).await;
    assert!(states[0].as_ref().unwrap_err().contains("Unable to contact slurm controller"), "{states:?}");

    runner.expect(&strs(&squeue_argv("11")), ok("11|RUNNING|0\n"));
    let states = plugin.check(&workers).await;
    assert!(states[0].as_ref().unwrap_err().starts_with("malformed squeue output, line 1"), "{states:?}");

    runner.expect(&strs(&squeue_argv("11")), Reply::Timeout);
    let states = plugin.check(&workers).await;
    assert!(states[0].as_ref().unwrap_err().contains("did not answer"), "{states:?}");

    runner
        .expect(&strs(&squeue_argv("11")), ok(""))
        .expect(&strs(&sacct_argv(false, "11")), fail(1, "sacct: error: x\n"));
    let states = plugin.check(&workers).await;
    assert_eq!(states[0].as_ref().unwrap_err(), "job 11 left squeue and sacct ended with exit code 1: sacct: error: x");
    assert_eq!(states[1].as_ref().unwrap_err(), "batch id \"not-a-job\" is not a Slurm job id");
    runner.done();
}

#[tokio::test]
async fn a_job_known_nowhere_is_cancelled_after_lost_after() {
    let runner = Arc::new(Scripted::default());
    let config = SlurmConfig { accounting: Accounting::None, lost_after: Duration::ZERO, ..Default::default() };
    runner.expect(&strs(&squeue_argv("11")), ok(""));
    let state = plugin(config, &runner).check(&[reference("1", "11")]).await.remove(0).unwrap();
    runner.done();
    assert_eq!(state.status, WorkerStatus::Cancelled);
    assert_eq!(state.diag, "Slurm job 11 is known to neither squeue nor sacct (lost)");
}

#[tokio::test]
async fn kill_is_one_scancel_and_gone_jobs_count_as_killed() {
    let runner = Arc::new(Scripted::default());
    let workers = [reference("1", "11"), reference("2", "12"), reference("3", "13")];
    let plugin = plugin(SlurmConfig::default(), &runner);
    runner.expect(&["scancel", "11", "12", "13"], ok(""));
    assert!(plugin.kill(&workers).await.iter().all(Result::is_ok));

    runner.expect(
        &["scancel", "11", "12", "13"],
        fail(
            1,
            "scancel: error: Kill job error on job id 12: Invalid job id specified\n\
             scancel: error: Kill job error on job id 13: Access/permission denied\n",
        ),
    );
    let results = plugin.kill(&workers).await;
    assert_eq!(results[..2], [Ok(()), Ok(())]);
    assert_eq!(results[2], Err("scancel of job 13: Access/permission denied".to_owned()));

    runner.expect(&["scancel", "5"], fail(8, &recorded_error("scancel 5")));
    let results = plugin.kill(&[reference("5", "5")]).await;
    assert_eq!(results, [Err("scancel of job 5: Unable to contact slurm controller (connect failure)".to_owned())]);
    runner.done();
}

#[tokio::test]
async fn a_bad_template_fails_submissions_permanently() {
    let runner = Arc::new(Scripted::default());
    let config = SlurmConfig { template: Some("echo {nope}\n".into()), ..Default::default() };
    let dir = tempfile::tempdir().unwrap();
    let outcome = plugin(config, &runner).submit(&[worker(dir.path(), "1")]).await.remove(0);
    assert!(matches!(&outcome, SubmitOutcome::Permanent(d) if d.contains("unknown placeholder {nope}")), "{outcome:?}");
    runner.done();
}

#[test]
fn config_problems_name_their_keys() {
    let check = |config: SlurmConfig| config.problems();
    assert!(check(SlurmConfig::default()).is_empty());
    let problems = check(SlurmConfig {
        template: Some("#SBATCH -p {partition}\n{pilot_command} ${HOME}\n".into()),
        ..Default::default()
    });
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("template: line 2: unknown placeholder {HOME}"), "{problems:?}");
    let problems =
        check(SlurmConfig { template: Some("#SBATCH -p {partition} -A {account}\n".into()), ..Default::default() });
    assert_eq!(
        problems,
        ["template: uses {partition} but partition is not set", "template: uses {account} but account is not set"]
    );
    let problems = check(SlurmConfig {
        template: Some("x".into()),
        template_file: Some("a.sh".into()),
        submit_parallelism: 0,
        squeue: CommandLine(vec![]),
        partition: Some("two words".into()),
        ..Default::default()
    });
    assert_eq!(
        problems,
        [
            "template: set either template or template_file, not both",
            "squeue: must name a program",
            "partition: must be a Slurm name without spaces",
            "submit_parallelism: must be at least 1 (got 0)",
        ]
    );
}
