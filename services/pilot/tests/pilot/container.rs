//! Jobs with a container image, through fake `apptainer` and `podman` executables
//! (`tests/fixtures/containers/`: they parse the real command line for the subset the pilot uses,
//! refuse anything else, record each call in `record.jsonl` next to themselves and run the
//! command on the host with exactly the environment a container would get). No container engine
//! can run on the machines these tests run on.

use std::path::{Path, PathBuf};

use panda_pilot::{ContainerConfig, ContainerRuntime, error_codes};
use panda_proto::common::v1::JobStatus;
use serde_json::Value;

use super::fake::{self, Condition, Reply};
use super::{
    Dirs, assert_failed, assert_lifecycle, job, process_gone, read_pids, run_pilot, script, summary, wait_for,
};

/// A directory holding a link to the fake `name` (apptainer or podman), where it records.
struct FakeRuntime {
    dir: tempfile::TempDir,
    program: PathBuf,
}

impl FakeRuntime {
    fn new(name: &str) -> Self {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/containers").join(name);
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join(name);
        std::os::unix::fs::symlink(fixture, &program).unwrap();
        Self { dir, program }
    }

    fn config(&self) -> ContainerConfig {
        ContainerConfig { path: Some(self.program.clone()), ..ContainerConfig::default() }
    }

    /// Every call recorded, in order.
    fn records(&self) -> Vec<Value> {
        match std::fs::read_to_string(self.dir.path().join("record.jsonl")) {
            Ok(text) => text.lines().map(|line| serde_json::from_str(line).unwrap()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

const IMAGE: &str = "docker://python:3.11-slim";

/// The payload's environment as the fake gave it, by name.
fn env_of(record: &Value) -> serde_json::Map<String, Value> {
    record["env"].as_object().unwrap().clone()
}

/// Runs one job with an image through `runtime` and checks what the runtime was told and what
/// came back: output staged, exit code, tails, environment.
async fn a_job_runs_in_its_image(runtime: &str) {
    let dirs = Dirs::new();
    let fake_runtime = FakeRuntime::new(runtime);
    let command = "echo \"in $PANDA_CONTAINER_IMAGE job $PANDA_JOB_ID $MY_VAR [$LIST]\" > out.txt; pwd; \
                   echo to-stderr >&2";
    let mut dispatched = job(1, command);
    dispatched.container_image = IMAGE.to_owned();
    dispatched.environment.insert("MY_VAR".to_owned(), "my value".to_owned());
    // A value `apptainer --env` would split: it goes through APPTAINERENV_LIST instead.
    dispatched.environment.insert("LIST".to_owned(), "a,b".to_owned());
    dispatched.environment.insert("PANDA_CONTAINER_IMAGE".to_owned(), IMAGE.to_owned());
    dispatched.output_files = vec!["out.txt".to_owned()];

    let config = fake_runtime.config();
    let (fake, summary) = run_pilot(script(&dirs, vec![dispatched]), &dirs, |c| c.container = config).await;

    assert_eq!(summary, self::summary(1, 1, 0));
    assert_lifecycle(&fake, JobStatus::Finished);
    let last = fake.last_update();
    assert_eq!((last.exit_code, last.error_code), (Some(0), 0), "{last:?}");
    assert_eq!(
        std::fs::read_to_string(dirs.storage.join("out.txt")).unwrap(),
        format!("in {IMAGE} job 1 my value [a,b]\n")
    );
    let job_dir = dirs.job_dir(1);
    assert_eq!(last.stdout_tail, format!("{}\n", job_dir.display()), "the job directory is the working directory");
    assert_eq!(last.stderr_tail, "to-stderr\n");

    let records = fake_runtime.records();
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    let dir = job_dir.display().to_string();
    assert_eq!(record["binds"][0], format!("{dir}:{dir}"));
    assert_eq!(record["command"], serde_json::json!(["/bin/sh", "-c", command]));
    let env = env_of(record);
    for (key, value) in [
        ("PANDA_JOB_ID", "1"),
        ("PANDA_TASK_ID", "100"),
        ("PANDA_WORK_DIR", dir.as_str()),
        ("MY_VAR", "my value"),
        ("LIST", "a,b"),
        ("PANDA_CONTAINER_IMAGE", IMAGE),
    ] {
        assert_eq!(env.get(key).and_then(Value::as_str), Some(value), "{key} in {env:?}");
    }
    assert!(env["PANDA_SERVER_URL"].as_str().unwrap().starts_with("http://127.0.0.1:"), "{env:?}");
    // Nothing of the pilot's own environment leaks in (only PATH and HOME, which the runtime sets).
    let extra: Vec<&String> = env
        .keys()
        .filter(|k| !k.starts_with("PANDA_") && !["MY_VAR", "LIST", "PATH", "HOME", "container"].contains(&k.as_str()))
        .collect();
    assert!(extra.is_empty(), "leaked into the container: {extra:?}");
    match runtime {
        "apptainer" => {
            assert_eq!(record["image"], IMAGE);
            assert_eq!(record["pwd"], dir.as_str());
            assert_eq!(record["cleanenv"], true);
        }
        _ => {
            assert_eq!(record["image"], "python:3.11-slim", "podman takes the reference without docker://");
            assert_eq!(record["workdir"], dir.as_str());
            assert_eq!(record["network"], "host");
            assert_eq!(record["init"], true);
            assert!(record["name"].as_str().unwrap().starts_with("panda-job-1-"), "{record}");
        }
    }
}

#[tokio::test]
async fn a_job_with_an_image_runs_through_apptainer() {
    a_job_runs_in_its_image("apptainer").await;
}

#[tokio::test]
async fn a_job_with_an_image_runs_through_podman() {
    a_job_runs_in_its_image("podman").await;
}

/// The payload's exit code comes back through the runtime, as the payload's.
async fn the_payload_s_exit_code_comes_back(runtime: &str) {
    let dirs = Dirs::new();
    let fake_runtime = FakeRuntime::new(runtime);
    let mut dispatched = job(2, "echo oops >&2; exit 7");
    dispatched.container_image = "python:3.11-slim".to_owned();
    let config = fake_runtime.config();
    let (fake, summary) = run_pilot(script(&dirs, vec![dispatched]), &dirs, |c| c.container = config).await;
    assert_eq!(summary, self::summary(1, 0, 1));
    let last = fake.last_update();
    assert_failed(&last, error_codes::PAYLOAD_FAILED, Some(7));
    assert_eq!(last.error_diag, "payload exited with code 7");
    assert_eq!(last.stderr_tail, "oops\n");
    let expected_image = if runtime == "apptainer" { "docker://python:3.11-slim" } else { "python:3.11-slim" };
    assert_eq!(fake_runtime.records()[0]["image"], expected_image);
}

#[tokio::test]
async fn the_exit_code_comes_back_through_apptainer() {
    the_payload_s_exit_code_comes_back("apptainer").await;
}

#[tokio::test]
async fn the_exit_code_comes_back_through_podman() {
    the_payload_s_exit_code_comes_back("podman").await;
}

#[tokio::test]
async fn a_missing_runtime_fails_the_job_naming_runtime_and_image() {
    let dirs = Dirs::new();
    let mut dispatched = job(3, "echo never > ran.txt");
    dispatched.container_image = IMAGE.to_owned();
    let missing = dirs.scratch.join("apptainer");
    let config = ContainerConfig { path: Some(missing.clone()), ..ContainerConfig::default() };
    let (fake, summary) = run_pilot(script(&dirs, vec![dispatched]), &dirs, |c| c.container = config).await;
    assert_eq!(summary, self::summary(1, 0, 1));
    let last = fake.last_update();
    assert_failed(&last, error_codes::CONTAINER_RUNTIME_NOT_INSTALLED, None);
    assert_eq!(
        last.error_diag,
        format!(
            "the job runs in container image {IMAGE}: container runtime apptainer not found: \
             pilot.container.path {} is not an executable file",
            missing.display()
        )
    );
    assert!(!dirs.job_dir(3).join("ran.txt").exists(), "the payload never ran");

    // Looked for on PATH: the message names the runtime asked for.
    let dirs = Dirs::new();
    let mut dispatched = job(4, "true");
    dispatched.container_image = IMAGE.to_owned();
    let config = ContainerConfig { runtime: Some(ContainerRuntime::Singularity), ..ContainerConfig::default() };
    let (fake, _) = run_pilot(script(&dirs, vec![dispatched]), &dirs, |c| c.container = config).await;
    let last = fake.last_update();
    assert_failed(&last, error_codes::CONTAINER_RUNTIME_NOT_INSTALLED, None);
    assert!(
        last.error_diag.starts_with(&format!(
            "the job runs in container image {IMAGE}: container runtime singularity not found on PATH ("
        )),
        "{}",
        last.error_diag
    );
}

/// An image the runtime cannot pull fails the job at once with IMAGE_NOT_FOUND, naming both.
async fn an_unpullable_image_fails_the_job(runtime: &str, image: &str, expected: &str) {
    let dirs = Dirs::new();
    let fake_runtime = FakeRuntime::new(runtime);
    let mut dispatched = job(5, "echo never > ran.txt");
    dispatched.container_image = image.to_owned();
    let config = fake_runtime.config();
    let (fake, summary) = run_pilot(script(&dirs, vec![dispatched]), &dirs, |c| c.container = config).await;
    assert_eq!(summary, self::summary(1, 0, 1));
    let last = fake.last_update();
    let exit = if runtime == "apptainer" { 255 } else { 125 };
    assert_failed(&last, error_codes::IMAGE_NOT_FOUND, Some(exit));
    assert!(
        last.error_diag
            .starts_with(&format!("container runtime {runtime} could not run image {image} (exit {exit}): ")),
        "{}",
        last.error_diag
    );
    assert!(last.error_diag.contains(expected), "{}", last.error_diag);
    assert!(!dirs.job_dir(5).join("ran.txt").exists(), "the payload never ran");
}

#[tokio::test]
async fn an_unpullable_image_fails_through_apptainer() {
    an_unpullable_image_fails_the_job("apptainer", "docker://does-not-exist:1", "manifest unknown").await;
    an_unpullable_image_fails_the_job("apptainer", "/images/none.sif", "no such file or directory").await;
}

#[tokio::test]
async fn an_unpullable_image_fails_through_podman() {
    an_unpullable_image_fails_the_job("podman", "does-not-exist:1", "manifest unknown").await;
}

#[tokio::test]
async fn a_kill_stops_the_payload_inside_apptainer() {
    let dirs = Dirs::new();
    let fake_runtime = FakeRuntime::new("apptainer");
    let pid_file = dirs.scratch.join("pids");
    let mut dispatched = job(6, &super::background_child(&pid_file));
    dispatched.container_image = IMAGE.to_owned();
    let mut script = script(&dirs, vec![dispatched]);
    script.running_reply = Some((Condition { file: pid_file.clone(), min_running: 1 }, Reply::Kill));
    let config = ContainerConfig { binds: vec![dirs.scratch.display().to_string()], ..fake_runtime.config() };
    let (fake, summary) = run_pilot(script, &dirs, |c| c.container = config).await;
    assert_eq!(summary, self::summary(1, 0, 1));
    assert_failed(&fake.last_update(), error_codes::PANDA_KILL, Some(143));
    for pid in read_pids(&pid_file) {
        wait_for(&format!("process {pid} to end"), || process_gone(pid)).await;
    }
    assert_eq!(fake_runtime.records()[0]["binds"][1], dirs.scratch.display().to_string(), "extra binds");
}

/// A Podman container is not in the pilot's process group: a payload that ignores SIGTERM
/// survives the group kill of the client, and only `podman rm -f NAME` stops it.
#[tokio::test]
async fn a_kill_removes_the_podman_container() {
    let dirs = Dirs::new();
    let fake_runtime = FakeRuntime::new("podman");
    let pid_file = dirs.scratch.join("pids");
    let file = pid_file.display();
    let command = format!("trap '' TERM; sleep 600 & echo \"$$ $!\" > {file}.tmp && mv {file}.tmp {file}; wait");
    let mut dispatched = job(8, &command);
    dispatched.container_image = IMAGE.to_owned();
    let mut script = script(&dirs, vec![dispatched]);
    script.running_reply = Some((Condition { file: pid_file.clone(), min_running: 1 }, Reply::Kill));
    let config = ContainerConfig { binds: vec![format!("{0}:{0}", dirs.scratch.display())], ..fake_runtime.config() };
    let (fake, summary) = run_pilot(script, &dirs, |c| {
        c.container = config;
        c.kill_grace = std::time::Duration::from_millis(300);
    })
    .await;
    assert_eq!(summary, self::summary(1, 0, 1));
    let last = fake.last_update();
    assert_eq!((last.error_code, fake::status(last.status)), (error_codes::PANDA_KILL, JobStatus::Failed));
    for pid in read_pids(&pid_file) {
        wait_for(&format!("process {pid} to end"), || process_gone(pid)).await;
    }
    let records = fake_runtime.records();
    let name = records[0]["name"].as_str().unwrap().to_owned();
    assert_eq!(records.last().unwrap()["rm"], name.as_str(), "{records:?}");
}
