//! The pilot against a scripted PilotService over real gRPC, with real payloads in temporary
//! directories. Conditions are polled, never timed.

// Helpers outside `#[test]` functions are test code too: a panic is how they report a failure.
#![allow(clippy::unwrap_used)]

mod code_and_logs;
mod container;
mod fake;
mod push;
mod warm;

use std::path::{Path, PathBuf};
use std::time::Duration;

use panda_pilot::{Config, Error, Summary, error_codes};
use panda_proto::common::v1::JobStatus;
use panda_proto::server::v1::{DispatchedJob, OutputFile, StagedFile, UpdateJobRequest};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use fake::{Condition, Fake, Reply, Script};

/// Safety net for polls: far beyond anything a passing run needs.
const POLL_LIMIT: Duration = Duration::from_secs(120);

/// Temporary directories of one test: pilot work dir, storage, inputs, scratch.
struct Dirs {
    _root: TempDir,
    work: PathBuf,
    storage: PathBuf,
    inputs: PathBuf,
    scratch: PathBuf,
}

impl Dirs {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        // Canonical, so that paths the payload prints (pwd) compare equal.
        let base = root.path().canonicalize().unwrap();
        let make = |name: &str| {
            let path = base.join(name);
            std::fs::create_dir_all(&path).unwrap();
            path
        };
        let (work, storage, inputs, scratch) = (make("work"), make("storage"), make("inputs"), make("scratch"));
        Self { _root: root, work, storage, inputs, scratch }
    }

    fn storage_url(&self) -> String {
        format!("file://{}", self.storage.display())
    }

    fn job_dir(&self, job_id: u64) -> PathBuf {
        self.work.join(format!("PanDA_Pilot-{job_id}"))
    }
}

fn job(job_id: u64, command: &str) -> DispatchedJob {
    DispatchedJob {
        job_id,
        task_id: 100,
        attempt_nr: 1,
        lease_token: format!("lease-{job_id}"),
        command: command.to_owned(),
        heartbeat_interval_seconds: 1800,
        ..DispatchedJob::default()
    }
}

fn config(addr: std::net::SocketAddr, dirs: &Dirs) -> Config {
    Config {
        server_url: format!("http://{addr}"),
        queue: "test-queue".to_owned(),
        node: Some("test-node".to_owned()),
        worker_id: "worker-9".to_owned(),
        work_dir: dirs.work.clone(),
        cores: 2,
        memory_mb: 4000,
        kill_grace: Duration::from_secs(5),
        heartbeat_interval: Some(Duration::from_millis(50)),
        ..Config::default()
    }
}

/// Starts the fake with `script` and runs a pilot against it to the end.
async fn run_pilot(script: Script, dirs: &Dirs, tweak: impl FnOnce(&mut Config)) -> (Fake, Summary) {
    let fake = Fake::new(script);
    let addr = fake.serve().await;
    let mut config = config(addr, dirs);
    tweak(&mut config);
    let summary = panda_pilot::run(config, CancellationToken::new()).await.unwrap();
    (fake, summary)
}

fn script(dirs: &Dirs, jobs: Vec<DispatchedJob>) -> Script {
    Script { jobs: jobs.into(), storage_url: dirs.storage_url(), ..Script::default() }
}

fn adler32(bytes: &[u8]) -> String {
    let mut adler = adler2::Adler32::new();
    adler.write_slice(bytes);
    format!("adler32:{:08x}", adler.checksum())
}

fn summary(jobs_run: u32, jobs_finished: u32, jobs_failed: u32) -> Summary {
    Summary { jobs_run, jobs_finished, jobs_failed }
}

fn summary_of(jobs_run: u32, jobs_finished: u32, jobs_failed: u32) -> Summary {
    summary(jobs_run, jobs_finished, jobs_failed)
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + POLL_LIMIT;
    while !condition() {
        assert!(tokio::time::Instant::now() < give_up, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a process is gone (a zombie counts: it no longer runs).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// Reads "<shell pid> <background pid>" written by [`BACKGROUND_CHILD`].
fn read_pids(path: &Path) -> Vec<u32> {
    std::fs::read_to_string(path).unwrap().split_whitespace().map(|pid| pid.parse().unwrap()).collect()
}

/// A payload that starts a background child, records both PIDs, and waits forever.
fn background_child(pid_file: &Path) -> String {
    let file = pid_file.display();
    // Written under a temporary name and renamed, so the test never reads half a file.
    format!("sleep 600 & echo \"$$ $!\" > {file}.tmp && mv {file}.tmp {file}; wait")
}

/// The lifecycle: starting first, running at least once, then exactly one final state.
fn assert_lifecycle(fake: &Fake, last: JobStatus) {
    let statuses = fake.statuses();
    assert_eq!(statuses.first(), Some(&JobStatus::Starting), "{statuses:?}");
    assert_eq!(statuses.get(1), Some(&JobStatus::Running), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&last), "{statuses:?}");
    let middle = &statuses[1..statuses.len() - 1];
    assert!(middle.iter().all(|status| *status == JobStatus::Running), "{statuses:?}");
}

fn assert_failed(update: &UpdateJobRequest, error_code: u32, exit_code: Option<i32>) {
    assert_eq!(fake::status(update.status), JobStatus::Failed, "{update:?}");
    assert_eq!(update.error_code, error_code, "{update:?}");
    assert_eq!(update.exit_code, exit_code, "{update:?}");
    assert!(!update.error_diag.is_empty(), "{update:?}");
}

#[tokio::test]
async fn a_job_that_writes_its_output_finishes() {
    let dirs = Dirs::new();
    let input = b"input bytes\n".repeat(1000);
    std::fs::write(dirs.inputs.join("data.txt"), &input).unwrap();
    let command = "cat data.txt data.txt > out.txt; \
                   echo \"env $PANDA_JOB_ID $PANDA_TASK_ID $PANDA_ATTEMPT_NR [$PANDA_INPUT_FILES] [$PANDA_OUTPUT_FILES] $MY_VAR\"; \
                   echo \"dir $PANDA_WORK_DIR\"; pwd; echo to-stderr >&2";
    let mut dispatched = job(1, command);
    dispatched.environment.insert("MY_VAR".to_owned(), "my-value".to_owned());
    dispatched.input_files = vec![StagedFile {
        lfn: "data.txt".to_owned(),
        url: format!("file://{}", dirs.inputs.join("data.txt").display()),
        size_bytes: input.len() as u64,
        checksum: adler32(&input),
    }];
    dispatched.output_files = vec!["out.txt".to_owned()];

    let (fake, summary) = run_pilot(script(&dirs, vec![dispatched]), &dirs, |_| {}).await;

    assert_eq!(summary, self::summary(1, 1, 0));
    assert_lifecycle(&fake, JobStatus::Finished);
    let last = fake.last_update();
    assert_eq!((last.job_id, last.lease_token.as_str(), last.node.as_str()), (1, "lease-1", "test-node"));
    assert_eq!((last.exit_code, last.error_code), (Some(0), 0));
    let expected_output = [input.as_slice(), input.as_slice()].concat();
    assert_eq!(
        last.output_files,
        vec![OutputFile {
            lfn: "out.txt".to_owned(),
            size_bytes: expected_output.len() as u64,
            checksum: adler32(&expected_output)
        }]
    );
    assert_eq!(std::fs::read(dirs.storage.join("out.txt")).unwrap(), expected_output);
    let job_dir = dirs.job_dir(1);
    assert!(last.stdout_tail.contains("env 1 100 1 [data.txt] [out.txt] my-value"), "{}", last.stdout_tail);
    assert!(last.stdout_tail.contains(&format!("dir {}", job_dir.display())), "{}", last.stdout_tail);
    assert!(last.stdout_tail.contains(&format!("\n{}\n", job_dir.display())), "pwd: {}", last.stdout_tail);
    assert_eq!(last.stderr_tail, "to-stderr\n");
    assert!(last.wall_time_seconds > 0.0);
    assert!(last.max_rss_kb > 0, "the shell's resident set is measured");
    assert!(!job_dir.exists(), "a finished job's directory is removed");
    // The pilot offered its slot, and stopped when the second GetJob came back empty.
    let requests = fake.seen(|seen| seen.get_jobs.clone());
    assert_eq!(requests.len(), 2);
    let first = &requests[0];
    assert_eq!(
        (first.queue.as_str(), first.node.as_str(), first.worker_id.as_str(), first.n_jobs),
        ("test-queue", "test-node", "worker-9", 1)
    );
    let resources = first.resources.unwrap();
    assert_eq!((resources.cores, resources.memory_mb), (2, 4000));
}

#[tokio::test]
async fn a_payload_exiting_non_zero_fails() {
    let dirs = Dirs::new();
    let mut dispatched = job(2, "echo about to fail; echo oops >&2; exit 3");
    dispatched.output_files = vec!["never.txt".to_owned()];

    let (fake, summary) = run_pilot(script(&dirs, vec![dispatched]), &dirs, |_| {}).await;

    assert_eq!(summary, self::summary(1, 0, 1));
    assert_lifecycle(&fake, JobStatus::Failed);
    let last = fake.last_update();
    assert_failed(&last, error_codes::PAYLOAD_FAILED, Some(3));
    assert!(last.error_diag.contains('3'), "{}", last.error_diag);
    assert_eq!((last.stdout_tail.as_str(), last.stderr_tail.as_str()), ("about to fail\n", "oops\n"));
    assert!(last.output_files.is_empty());
    assert!(dirs.job_dir(2).join("payload.stdout").exists(), "a failed job's directory is kept");
}

#[tokio::test]
async fn a_payload_killed_by_a_signal_reports_128_plus_the_signal() {
    let dirs = Dirs::new();
    let (fake, summary) = run_pilot(script(&dirs, vec![job(3, "kill -9 $$")]), &dirs, |_| {}).await;

    assert_eq!(summary, self::summary(1, 0, 1));
    let last = fake.last_update();
    assert_failed(&last, error_codes::PAYLOAD_FAILED, Some(137));
    assert!(last.error_diag.contains("SIGKILL"), "{}", last.error_diag);
}

#[tokio::test]
async fn a_missing_output_fails_the_job() {
    let dirs = Dirs::new();
    let mut dispatched = job(4, "echo partial > a.txt");
    dispatched.output_files = vec!["a.txt".to_owned(), "b.txt".to_owned()];

    let (fake, summary) = run_pilot(script(&dirs, vec![dispatched]), &dirs, |_| {}).await;

    assert_eq!(summary, self::summary(1, 0, 1));
    assert_lifecycle(&fake, JobStatus::Failed);
    let last = fake.last_update();
    assert_failed(&last, error_codes::MISSING_OUTPUT, Some(0));
    assert!(last.error_diag.contains("b.txt"), "{}", last.error_diag);
    assert!(!dirs.storage.join("a.txt").exists(), "nothing is staged out for a failed job");
}

#[tokio::test]
async fn a_wrong_input_checksum_fails_stage_in_and_the_payload_never_runs() {
    let dirs = Dirs::new();
    std::fs::write(dirs.inputs.join("in.dat"), b"real content").unwrap();
    let marker = dirs.scratch.join("payload-ran");
    let mut dispatched = job(5, &format!("touch {}", marker.display()));
    dispatched.input_files = vec![StagedFile {
        lfn: "in.dat".to_owned(),
        url: format!("file://{}", dirs.inputs.join("in.dat").display()),
        size_bytes: 12,
        checksum: adler32(b"other content"),
    }];

    let (fake, summary) = run_pilot(script(&dirs, vec![dispatched]), &dirs, |_| {}).await;

    assert_eq!(summary, self::summary(1, 0, 1));
    assert_eq!(fake.statuses(), [JobStatus::Starting, JobStatus::Failed]);
    let last = fake.last_update();
    assert_failed(&last, error_codes::GET_ADLER32_MISMATCH, None);
    assert!(last.error_diag.contains("in.dat") && last.error_diag.contains("checksum"), "{}", last.error_diag);
    assert!(!marker.exists(), "the payload must not run after a failed stage-in");
}

#[tokio::test]
async fn a_missing_input_fails_stage_in() {
    let dirs = Dirs::new();
    let mut dispatched = job(6, "true");
    dispatched.input_files = vec![StagedFile {
        lfn: "gone.dat".to_owned(),
        url: format!("file://{}", dirs.inputs.join("gone.dat").display()),
        ..StagedFile::default()
    }];

    let (fake, _) = run_pilot(script(&dirs, vec![dispatched]), &dirs, |_| {}).await;

    assert_eq!(fake.statuses(), [JobStatus::Starting, JobStatus::Failed]);
    assert_failed(&fake.last_update(), error_codes::NO_SUCH_FILE, None);
}

#[tokio::test]
async fn a_kill_reply_kills_the_whole_process_group() {
    let dirs = Dirs::new();
    let pid_file = dirs.scratch.join("pids");
    let mut script = script(&dirs, vec![job(7, &background_child(&pid_file))]);
    // Several heartbeats first: they keep coming while the payload runs.
    script.running_reply = Some((Condition { file: pid_file.clone(), min_running: 3 }, Reply::Kill));

    let (fake, summary) = run_pilot(script, &dirs, |_| {}).await;

    assert_eq!(summary, self::summary(1, 0, 1));
    assert_lifecycle(&fake, JobStatus::Failed);
    assert!(fake.seen(|seen| seen.running) >= 3);
    assert_failed(&fake.last_update(), error_codes::PANDA_KILL, Some(143));
    let pids = read_pids(&pid_file);
    assert_eq!(pids.len(), 2);
    for pid in pids {
        wait_for(&format!("process {pid} to end"), || process_gone(pid)).await;
    }
}

#[tokio::test]
async fn a_lost_lease_kills_the_payload_without_a_final_update() {
    let dirs = Dirs::new();
    let pid_file = dirs.scratch.join("pids");
    let mut script = script(&dirs, vec![job(8, &background_child(&pid_file))]);
    script.running_reply = Some((Condition { file: pid_file.clone(), min_running: 1 }, Reply::LeaseGone));

    let (fake, summary) = run_pilot(script, &dirs, |_| {}).await;

    assert_eq!(summary, self::summary(1, 0, 0));
    let statuses = fake.statuses();
    assert!(statuses.iter().all(|status| matches!(status, JobStatus::Starting | JobStatus::Running)), "{statuses:?}");
    // Exactly one refusal: the pilot sent nothing after it learnt the lease was gone.
    let refused = fake.seen(|seen| seen.refused.clone());
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].2, tonic::Code::FailedPrecondition);
    for pid in read_pids(&pid_file) {
        wait_for(&format!("process {pid} to end"), || process_gone(pid)).await;
    }
}

#[tokio::test]
async fn a_payload_over_its_walltime_is_killed_with_reached_max_time() {
    let dirs = Dirs::new();
    let pid_file = dirs.scratch.join("pids");
    let mut dispatched = job(21, &background_child(&pid_file));
    dispatched.resources = Some(panda_proto::common::v1::Resources { walltime_seconds: 1, ..Default::default() });

    let (fake, summary) = run_pilot(script(&dirs, vec![dispatched]), &dirs, |_| {}).await;

    assert_eq!(summary, self::summary(1, 0, 1));
    assert_lifecycle(&fake, JobStatus::Failed);
    let last = fake.last_update();
    assert_failed(&last, error_codes::REACHED_MAX_TIME, Some(143));
    assert!(last.error_diag.contains("wall-time limit of 1s"), "{}", last.error_diag);
    for pid in read_pids(&pid_file) {
        wait_for(&format!("process {pid} to end"), || process_gone(pid)).await;
    }
}

#[tokio::test]
async fn a_payload_over_its_memory_is_killed_with_exceeded_max_mem() {
    let dirs = Dirs::new();
    let pid_file = dirs.scratch.join("pids");
    // `tail -c` keeps the last 200 MB it read in memory: a child of the payload, in its group,
    // started once the PIDs are written.
    let file = pid_file.display();
    let command = format!(
        "sleep 600 & echo \"$$ $!\" > {file}.tmp && mv {file}.tmp {file}; head -c 200000000 /dev/zero | tail -c 200000000 > /dev/null; wait"
    );
    let mut dispatched = job(22, &command);
    dispatched.resources = Some(panda_proto::common::v1::Resources { memory_mb: 20, ..Default::default() });

    let (fake, summary) =
        run_pilot(script(&dirs, vec![dispatched]), &dirs, |c| c.memory_check_interval = Duration::from_millis(50))
            .await;

    assert_eq!(summary, self::summary(1, 0, 1));
    let last = fake.last_update();
    assert_failed(&last, error_codes::PAYLOAD_EXCEEDED_MAX_MEM, Some(143));
    assert!(last.error_diag.contains("over the job's limit of 20 MB"), "{}", last.error_diag);
    for pid in read_pids(&pid_file) {
        wait_for(&format!("process {pid} to end"), || process_gone(pid)).await;
    }
}

#[tokio::test]
async fn shutdown_kills_the_payload_and_reports_sigterm() {
    let dirs = Dirs::new();
    let pid_file = dirs.scratch.join("pids");
    // A second job waits behind the first: shutdown must not start it.
    let fake = Fake::new(script(&dirs, vec![job(9, &background_child(&pid_file)), job(10, "true")]));
    let addr = fake.serve().await;
    let shutdown = CancellationToken::new();
    let pilot = tokio::spawn(panda_pilot::run(config(addr, &dirs), shutdown.clone()));

    wait_for("the payload to start", || pid_file.exists()).await;
    shutdown.cancel();
    let summary = pilot.await.unwrap().unwrap();

    assert_eq!(summary, self::summary(1, 0, 1));
    assert_lifecycle(&fake, JobStatus::Failed);
    assert_failed(&fake.last_update(), error_codes::SIGTERM, Some(143));
    assert_eq!(fake.jobs_left(), 1);
    for pid in read_pids(&pid_file) {
        wait_for(&format!("process {pid} to end"), || process_gone(pid)).await;
    }
}

#[tokio::test]
async fn transient_heartbeat_failures_keep_the_payload_running() {
    let dirs = Dirs::new();
    let mut dispatched = job(11, "while [ ! -f go ]; do sleep 0.05; done; echo done > out.txt");
    dispatched.output_files = vec!["out.txt".to_owned()];
    let mut script = script(&dirs, vec![dispatched]);
    // The `running` update and three heartbeats fail; so does the first try of the final report.
    script.unavailable_running = 0..4;
    script.unavailable_finals = 1;
    let fake = Fake::new(script);
    let addr = fake.serve().await;
    let pilot = tokio::spawn(panda_pilot::run(config(addr, &dirs), CancellationToken::new()));

    wait_for("heartbeats to get through again", || fake.seen(|seen| seen.updates.len()) >= 3).await;
    std::fs::write(dirs.job_dir(11).join("go"), b"").unwrap();
    let summary = pilot.await.unwrap().unwrap();

    assert_eq!(summary, self::summary(1, 1, 0));
    assert_lifecycle(&fake, JobStatus::Finished);
    let refused = fake
        .seen(|seen| seen.refused.iter().map(|(_, status, code)| (fake::status(*status), *code)).collect::<Vec<_>>());
    let unavailable = tonic::Code::Unavailable;
    assert_eq!(
        refused,
        [
            (JobStatus::Running, unavailable),
            (JobStatus::Running, unavailable),
            (JobStatus::Running, unavailable),
            (JobStatus::Running, unavailable),
            (JobStatus::Finished, unavailable),
        ]
    );
    assert_eq!(std::fs::read(dirs.storage.join("out.txt")).unwrap(), b"done\n");
}

#[tokio::test]
async fn max_jobs_stops_the_loop() {
    let dirs = Dirs::new();
    let jobs = (20..23).map(|id| job(id, "true")).collect();

    let (fake, summary) = run_pilot(script(&dirs, jobs), &dirs, |config| config.max_jobs = 2).await;

    assert_eq!(summary, self::summary(2, 2, 0));
    assert_eq!(fake.jobs_left(), 1);
    assert_eq!(fake.seen(|seen| seen.get_jobs.len()), 2);
}

#[tokio::test]
async fn the_pilot_takes_jobs_until_there_are_none() {
    let dirs = Dirs::new();
    let jobs = vec![job(30, "true"), job(31, "exit 1"), job(32, "true")];

    let (fake, summary) = run_pilot(script(&dirs, jobs), &dirs, |_| {}).await;

    assert_eq!(summary, self::summary(3, 2, 1));
    assert_eq!(fake.jobs_left(), 0);
    assert_eq!(fake.seen(|seen| seen.get_jobs.len()), 4);
}

#[tokio::test]
async fn no_jobs_means_a_normal_stop() {
    let dirs = Dirs::new();
    let (fake, summary) = run_pilot(script(&dirs, Vec::new()), &dirs, |_| {}).await;
    assert_eq!(summary, Summary::default());
    assert_eq!(fake.seen(|seen| seen.get_jobs.len()), 1);
}

#[tokio::test]
async fn an_expired_lifetime_takes_no_job() {
    let dirs = Dirs::new();
    let (fake, summary) =
        run_pilot(script(&dirs, vec![job(40, "true")]), &dirs, |config| config.lifetime = Duration::ZERO).await;
    assert_eq!(summary, Summary::default());
    assert_eq!(fake.seen(|seen| seen.get_jobs.len()), 0);
}

#[tokio::test]
async fn an_unreachable_server_stops_the_pilot_after_the_deadline() {
    let dirs = Dirs::new();
    // A port that was free a moment ago: connections are refused.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let config = Config { server_deadline: Duration::from_secs(1), ..config(addr, &dirs) };

    let error = panda_pilot::run(config, CancellationToken::new()).await.unwrap_err();

    assert!(matches!(error, Error::ServerUnreachable { .. }), "{error:?}");
}

#[tokio::test]
async fn an_invalid_config_is_refused_before_any_call() {
    let dirs = Dirs::new();
    let addr = "127.0.0.1:9".parse().unwrap();
    let config = Config { queue: String::new(), ..config(addr, &dirs) };
    let error = panda_pilot::run(config, CancellationToken::new()).await.unwrap_err();
    assert!(matches!(error, Error::InvalidConfig(_)), "{error:?}");
}

/// An input served over http: downloaded, verified (sha256), read by the payload; one whose
/// server keeps answering 404 fails the job with NOSUCHFILE before the payload runs.
#[tokio::test]
async fn http_inputs_are_downloaded_verified_and_read_by_the_payload() {
    use sha2::Digest;
    let content = b"served over http\n".repeat(100);
    let served = content.clone();
    let app = axum::Router::new().route("/data/in.txt", axum::routing::get(move || async move { served.clone() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let dirs = Dirs::new();
    let sha256: String = sha2::Sha256::digest(&content).iter().map(|b| format!("{b:02x}")).collect();
    let mut good = job(1, "wc -c < in.txt > out.txt");
    good.input_files = vec![StagedFile {
        lfn: "in.txt".to_owned(),
        url: format!("{base}/data/in.txt"),
        size_bytes: content.len() as u64,
        checksum: format!("sha256:{sha256}"),
    }];
    good.output_files = vec!["out.txt".to_owned()];
    let marker = dirs.scratch.join("payload-ran");
    let mut missing = job(2, &format!("touch {}", marker.display()));
    missing.input_files = vec![StagedFile {
        lfn: "gone.txt".to_owned(),
        url: format!("{base}/data/gone.txt"),
        size_bytes: 0,
        checksum: String::new(),
    }];

    let (fake, summary) = run_pilot(script(&dirs, vec![good, missing]), &dirs, |_| {}).await;

    assert_eq!(summary, self::summary(2, 1, 1));
    assert_eq!(std::fs::read_to_string(dirs.storage.join("out.txt")).unwrap().trim(), content.len().to_string());
    let updates = fake.seen(|seen| seen.updates.clone());
    let last = updates.iter().rev().find(|u| u.job_id == 2).unwrap();
    assert_failed(last, error_codes::NO_SUCH_FILE, None);
    assert!(last.error_diag.contains("404") && last.error_diag.contains("gone.txt"), "{}", last.error_diag);
    assert!(!marker.exists(), "the payload must not run after a failed stage-in");
}
