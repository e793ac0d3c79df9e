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

/// A link to the fake container runtime `name` in a directory of its own (see `container.rs`),
/// and the directory, where it records its calls.
fn fake_runtime(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/containers").join(name);
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join(name);
    std::os::unix::fs::symlink(fixture, &program).unwrap();
    (dir, program)
}

fn records(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("record.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Jobs of a work with an image run in one warm runtime started inside that image; a work with
/// another image gets a runtime of its own (never shared), also inside its image.
async fn warm_runtimes_start_inside_their_image(runtime: &str) {
    let dirs = Dirs::new();
    let (fake_dir, program) = fake_runtime(runtime);
    let mut jobs = warm_jobs(&dirs, 4, &[]);
    for job in &mut jobs {
        let (task_id, image) = if job.job_id <= 2 { (100, "python:3.11-slim") } else { (101, "python:3.12-slim") };
        job.task_id = task_id;
        job.container_image = image.to_owned();
    }
    let (fake, summary) = run_pilot(script(&dirs, jobs), &dirs, |config| {
        config.container.path = Some(program);
        // The runtime script and its record are in the scratch directory.
        config.container.binds = vec![dirs.scratch.display().to_string() + ":" + &dirs.scratch.display().to_string()];
    })
    .await;
    assert_eq!(summary, summary_of(4, 4, 0));
    assert!(finals(&fake).iter().all(|f| f.1 == JobStatus::Finished), "{:?}", finals(&fake));
    let calls = calls(&dirs);
    assert_eq!(calls.iter().map(|c| c.1).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(calls[0].0, calls[1].0, "one runtime for the jobs of one image: {calls:?}");
    assert_ne!(calls[1].0, calls[2].0, "another image, another runtime: {calls:?}");
    let runs: Vec<_> = records(fake_dir.path()).into_iter().filter(|r| r.get("image").is_some()).collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    let prefix = if runtime == "apptainer" { "docker://" } else { "" };
    assert_eq!(runs[0]["image"], format!("{prefix}python:3.11-slim"));
    assert_eq!(runs[1]["image"], format!("{prefix}python:3.12-slim"));
    for run in &runs {
        let env = run["env"].as_object().unwrap();
        assert!(env["PANDA_WARM_RUNTIME"].as_str().unwrap().starts_with("python3 "), "{env:?}");
        assert!(env.contains_key("PANDA_SERVER_URL") && env.contains_key("PANDA_WORK_DIR"), "{env:?}");
        let dir = env["PANDA_WORK_DIR"].as_str().unwrap();
        assert!(run["binds"][0] == format!("{dir}:{dir}"), "the runtime's directory is bound: {run}");
        if runtime == "podman" {
            assert_eq!(run["interactive"], true, "the runtime reads its jobs on stdin: {run}");
        }
    }
}

#[tokio::test]
async fn warm_runtimes_start_inside_their_image_with_apptainer() {
    warm_runtimes_start_inside_their_image("apptainer").await;
}

#[tokio::test]
async fn warm_runtimes_start_inside_their_image_with_podman() {
    warm_runtimes_start_inside_their_image("podman").await;
}

#[tokio::test]
async fn a_warm_runtime_whose_image_cannot_be_pulled_fails_its_jobs_with_image_not_found() {
    let dirs = Dirs::new();
    let (_fake_dir, program) = fake_runtime("apptainer");
    let mut jobs = warm_jobs(&dirs, 2, &[]);
    for job in &mut jobs {
        job.container_image = "docker://does-not-exist:1".to_owned();
    }
    let (fake, summary) = run_pilot(script(&dirs, jobs), &dirs, |config| config.container.path = Some(program)).await;
    assert_eq!(summary, summary_of(2, 0, 2));
    for (job_id, status, code, exit, diag, _, _) in finals(&fake) {
        assert_eq!((status, code, exit), (JobStatus::Failed, error_codes::IMAGE_NOT_FOUND, Some(255)), "job {job_id}");
        assert!(
            diag.starts_with(
                "container runtime apptainer could not run image docker://does-not-exist:1 (exit 255): FATAL"
            ),
            "{diag}"
        );
    }
}
