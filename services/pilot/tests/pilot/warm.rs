//! Warm runtimes: several jobs of one task in one runtime process, speaking the line protocol.
//! The runtime here is a small Python script (no pandars needed) that records its pid per call.

use std::collections::HashSet;

use super::*;

/// A protocol-speaking runtime: `start`, then `done` for each job at once; fails the job whose
/// index is `$FAIL_AT`, dies with exit code 3 at `$CRASH_AT`; appends "<pid> <index>" to `pids`.
const RUNTIME: &str = r#"
import json, os, sys
pids = sys.argv[1]
for line in sys.stdin:
    m = json.loads(line)
    print(json.dumps({"event": "start", "job": m["job"]}), flush=True)
    with open(pids, "a") as f:
        f.write(f"{os.getpid()} {m['index']}\n")
    if m["index"] == int(os.environ.get("CRASH_AT", "0")):
        sys.stderr.write("runtime crashed\n")
        sys.stderr.flush()
        os._exit(3)
    ok = m["index"] != int(os.environ.get("FAIL_AT", "0"))
    item = {"job": m["job"], "ok": ok, "error": "" if ok else "ValueError: bad index", "stdout": f"out {m['index']}"}
    print(json.dumps({"event": "done", "results": [item]}), flush=True)
"#;

fn warm_jobs(dirs: &Dirs, n: u64, extra_env: &[(&str, &str)]) -> Vec<DispatchedJob> {
    let script = dirs.scratch.join("runtime.py");
    std::fs::write(&script, RUNTIME).unwrap();
    let command = format!("python3 {} {}", script.display(), dirs.scratch.join("pids").display());
    (1..=n)
        .map(|i| {
            let mut job = job(i, "false: a warm job's command is not run");
            job.job_index = u32::try_from(i).unwrap();
            job.environment.insert("PANDA_WARM_RUNTIME".to_owned(), command.clone());
            for (key, value) in extra_env {
                job.environment.insert((*key).to_owned(), (*value).to_owned());
            }
            job
        })
        .collect()
}

/// "<pid> <index>" lines the runtime wrote.
fn calls(dirs: &Dirs) -> Vec<(u32, u32)> {
    std::fs::read_to_string(dirs.scratch.join("pids"))
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let (pid, index) = line.split_once(' ').unwrap();
            (pid.parse().unwrap(), index.parse().unwrap())
        })
        .collect()
}

/// A final report: (job id, status, error code, exit code, diag, stdout tail, stderr tail).
type Final = (u64, JobStatus, u32, Option<i32>, String, String, String);

/// Final reports by job id.
fn finals(fake: &Fake) -> Vec<Final> {
    let mut finals: Vec<_> = fake.seen(|seen| {
        seen.updates
            .iter()
            .filter(|u| matches!(fake::status(u.status), JobStatus::Finished | JobStatus::Failed))
            .map(|u| {
                (
                    u.job_id,
                    fake::status(u.status),
                    u.error_code,
                    u.exit_code,
                    u.error_diag.clone(),
                    u.stdout_tail.clone(),
                    u.stderr_tail.clone(),
                )
            })
            .collect()
    });
    finals.sort_by_key(|f| f.0);
    finals
}

#[tokio::test]
async fn one_runtime_runs_every_job_of_the_task_and_a_failing_call_fails_only_its_job() {
    let dirs = Dirs::new();
    let jobs = warm_jobs(&dirs, 5, &[("FAIL_AT", "2")]);
    let (fake, summary) = run_pilot(script(&dirs, jobs), &dirs, |config| config.warm_batch = 2).await;
    assert_eq!(summary, summary_of(5, 4, 1));
    let calls = calls(&dirs);
    assert_eq!(calls.iter().map(|c| c.1).collect::<Vec<_>>(), [1, 2, 3, 4, 5], "each call once, in order");
    assert_eq!(calls.iter().map(|c| c.0).collect::<HashSet<_>>().len(), 1, "one process for all: {calls:?}");
    let finals = finals(&fake);
    assert_eq!(finals.len(), 5, "one final report per job: {finals:?}");
    for (job_id, status, code, exit, diag, stdout, _) in &finals {
        if *job_id == 2 {
            assert_eq!((*status, *code, *exit), (JobStatus::Failed, error_codes::PAYLOAD_FAILED, Some(1)));
            assert_eq!(diag, "ValueError: bad index");
        } else {
            assert_eq!((*status, *exit), (JobStatus::Finished, Some(0)), "job {job_id}");
        }
        assert_eq!(stdout, &format!("out {job_id}"), "the call's own output goes with its report");
    }
    // The first GetJob takes any job; the rest ask for the same task, a batch at a time.
    let asks = fake.seen(|seen| seen.get_jobs.iter().map(|r| (r.task_id, r.n_jobs)).collect::<Vec<_>>());
    assert_eq!(asks.first(), Some(&(0, 1)));
    assert!(asks.iter().skip(1).any(|&(task, n)| task == 100 && n == 2), "{asks:?}");
    // A failed job went through running first (sent cannot fail directly).
    let job2: Vec<JobStatus> =
        fake.seen(|seen| seen.updates.iter().filter(|u| u.job_id == 2).map(|u| fake::status(u.status)).collect());
    assert_eq!(job2.last(), Some(&JobStatus::Failed));
    assert!(job2.contains(&JobStatus::Running), "{job2:?}");
    assert!(
        !dirs.work.read_dir().unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with("warm-")),
        "the runtime's directory is removed when the pilot stops"
    );
}

#[tokio::test]
async fn a_runtime_that_dies_fails_the_job_it_ran_and_the_rest_run_in_a_fresh_one() {
    let dirs = Dirs::new();
    let jobs = warm_jobs(&dirs, 4, &[("CRASH_AT", "2")]);
    let (fake, summary) = run_pilot(script(&dirs, jobs), &dirs, |config| config.warm_batch = 4).await;
    assert_eq!(summary, summary_of(4, 3, 1));
    let finals = finals(&fake);
    let failed: Vec<_> = finals.iter().filter(|f| f.1 == JobStatus::Failed).collect();
    assert_eq!(failed.len(), 1, "{finals:?}");
    let (job_id, _, code, exit, diag, _, stderr) = failed[0];
    assert_eq!((*job_id, *code, *exit), (2, error_codes::PAYLOAD_FAILED, Some(3)));
    assert!(diag.contains("exited with code 3") && diag.contains("while running"), "{diag}");
    assert!(stderr.contains("runtime crashed"), "the runtime's stderr tail: {stderr:?}");
    let calls = calls(&dirs);
    let pids: Vec<u32> = calls.iter().map(|c| c.0).collect();
    assert_eq!(pids.iter().collect::<HashSet<_>>().len(), 2, "a fresh runtime after the crash: {calls:?}");
    assert!(calls.iter().filter(|c| c.1 == 3).all(|c| c.0 != pids[0]), "job 3 ran in the fresh runtime");
}

#[tokio::test]
async fn a_call_past_its_walltime_is_killed_with_its_runtime() {
    let dirs = Dirs::new();
    // Index 1 never answers: the runtime hangs in it.
    let script_path = dirs.scratch.join("hang.py");
    std::fs::write(&script_path, "import json, sys, time\nfor line in sys.stdin:\n    m = json.loads(line)\n    print(json.dumps({'event': 'start', 'job': m['job']}), flush=True)\n    time.sleep(600)\n").unwrap();
    let mut job = job(1, "unused");
    job.job_index = 1;
    job.resources = Some(panda_proto::common::v1::Resources { walltime_seconds: 1, ..Default::default() });
    job.environment.insert("PANDA_WARM_RUNTIME".to_owned(), format!("python3 {}", script_path.display()));
    let (fake, summary) = run_pilot(script(&dirs, vec![job]), &dirs, |config| {
        config.kill_grace = Duration::from_millis(200);
    })
    .await;
    assert_eq!(summary, summary_of(1, 0, 1));
    let finals = finals(&fake);
    assert_eq!((finals[0].1, finals[0].2), (JobStatus::Failed, error_codes::REACHED_MAX_TIME));
}
