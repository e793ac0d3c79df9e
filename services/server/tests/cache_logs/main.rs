//! The code cache and job logs over real gRPC: a server on an ephemeral port, on SQLite, and on
//! PostgreSQL when `PANDA_TEST_DATABASE_URL` is set (those are `#[ignore]`d otherwise). Every bad
//! request gets a status naming the problem, and leaves nothing half-written.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Write;
use std::path::{Path, PathBuf};

use panda_client::ServerClient;
use panda_client::cache::{self, CacheError};
use panda_db::TestDb;
use panda_proto::common::v1::JobStatus;
use panda_proto::server::v1 as wire;
use panda_proto::server::v1::upload_archive_request::Part;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tonic::Code;

const MAX_ARCHIVE: u64 = 3 * 1024 * 1024;
const MAX_LOG: u64 = 1000;

struct Fixture {
    client: ServerClient,
    url: String,
    data_dir: tempfile::TempDir,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    _db: TestDb,
}

impl Fixture {
    async fn stop(self) {
        self.shutdown.cancel();
        self.server.await.unwrap();
    }

    fn cache_dir(&self) -> PathBuf {
        self.data_dir.path().join("cache")
    }
}

async fn fixture(db: TestDb) -> Fixture {
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = panda_server::Config::default();
    config.database.url = Some(db.url.clone());
    config.cache.max_archive_bytes = MAX_ARCHIVE;
    config.logs.max_bytes_per_job = MAX_LOG;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let listeners = panda_runtime::Listeners { grpc: listener, admin: None };
    let deps = panda_server::Deps { data_dir: data_dir.path().to_owned(), bus: panda_bus::Bus::memory() };
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let server = tokio::spawn(async move { panda_server::run(config, deps, listeners, token).await.unwrap() });
    let client = ServerClient::new(&url).unwrap();
    Fixture { client, url, data_dir, shutdown, server, _db: db }
}

fn sha(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn archive_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(bytes).unwrap();
    file
}

/// Sends a header and the given chunks as one upload.
async fn raw_upload(
    f: &Fixture,
    sha256: &str,
    size_bytes: u64,
    chunks: Vec<Vec<u8>>,
) -> Result<wire::UploadArchiveResponse, tonic::Status> {
    let header = wire::UploadHeader { sha256: sha256.into(), size_bytes, uploader: "alice".into() };
    let messages = std::iter::once(wire::UploadArchiveRequest { part: Some(Part::Header(header)) })
        .chain(chunks.into_iter().map(|c| wire::UploadArchiveRequest { part: Some(Part::Chunk(c)) }));
    f.client.cache.clone().upload_archive(futures::stream::iter(messages)).await.map(tonic::Response::into_inner)
}

/// Every file under the cache directory except the (empty) temporary directory.
fn cached_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() { stack.push(path) } else { out.push(path) }
        }
    }
    out.sort();
    out
}

fn assert_status(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, parts: &[&str]) {
    let status = result.expect_err("the call should be refused");
    assert_eq!(status.code(), code, "{}", status.message());
    for part in parts {
        assert!(status.message().contains(part), "{:?} should mention {part:?}", status.message());
    }
}

async fn archives_are_stored_once_and_downloaded_whole(f: Fixture) {
    // Three chunks on the wire (1 MiB each at most).
    let bytes: Vec<u8> = (0..2_500_000u32).map(|i| (i % 251) as u8).collect();
    let file = archive_file(&bytes);
    let mut cache_client = f.client.cache.clone();
    let uploaded = cache::upload(&mut cache_client, file.path(), "alice").await.unwrap();
    assert!(uploaded.created);
    assert_eq!(uploaded.sha256, sha(&bytes));
    let stored = f.cache_dir().join(&uploaded.sha256[..2]).join(&uploaded.sha256);
    assert_eq!(std::fs::read(&stored).unwrap(), bytes);
    let stat = cache_client
        .stat_archive(wire::StatArchiveRequest { sha256: uploaded.sha256.clone() })
        .await
        .unwrap()
        .into_inner()
        .archive
        .unwrap();
    assert_eq!((stat.size_bytes, stat.uploader.as_str()), (bytes.len() as u64, "alice"));

    // A duplicate is free: the helper asks first, and a raw upload is answered after its header.
    let again = cache::upload(&mut cache_client, file.path(), "bob").await.unwrap();
    assert!(!again.created);
    let header_only = raw_upload(&f, &uploaded.sha256, bytes.len() as u64, vec![]).await.unwrap();
    assert!(!header_only.created);
    assert_eq!(header_only.archive.unwrap().uploader, "alice", "the first upload stands");
    // Bytes sent after the header anyway are not read: the answer comes at once.
    let chunks = bytes.chunks(1024 * 1024).map(<[u8]>::to_vec).collect();
    assert!(!raw_upload(&f, &uploaded.sha256, bytes.len() as u64, chunks).await.unwrap().created);

    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("copy.tar.gz");
    let info = cache::download(&mut cache_client, &uploaded.sha256, &dest).await.unwrap();
    assert_eq!(info.size_bytes, bytes.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    assert_eq!(cached_files(&f.cache_dir()), vec![stored]);
    f.stop().await;
}

async fn bad_uploads_are_refused_and_leave_nothing(f: Fixture) {
    let bytes = b"not really a tar.gz".to_vec();
    let right = sha(&bytes);
    let wrong = sha(b"something else");
    // Stated over the limit: refused before any byte.
    assert_status(
        raw_upload(&f, &right, MAX_ARCHIVE + 1, vec![]).await,
        Code::InvalidArgument,
        &["header.size_bytes", &format!("limit of {MAX_ARCHIVE} bytes"), "server.cache.max_archive_bytes"],
    );
    // Stated small, sent large: refused as soon as the bytes pass the limit.
    let chunk = vec![7u8; 1024 * 1024];
    assert_status(
        raw_upload(&f, &right, MAX_ARCHIVE, vec![chunk.clone(), chunk.clone(), chunk.clone(), chunk]).await,
        Code::InvalidArgument,
        &["passed the cache's limit", "server.cache.max_archive_bytes"],
    );
    // More bytes than stated.
    assert_status(
        raw_upload(&f, &right, 3, vec![bytes.clone()]).await,
        Code::InvalidArgument,
        &["more bytes than the 3 stated"],
    );
    // Fewer bytes than stated.
    assert_status(
        raw_upload(&f, &right, 100, vec![bytes.clone()]).await,
        Code::InvalidArgument,
        &["ended after 19 of the 100 bytes"],
    );
    // Wrong checksum: both digests named.
    assert_status(
        raw_upload(&f, &wrong, bytes.len() as u64, vec![bytes.clone()]).await,
        Code::InvalidArgument,
        &["checksum mismatch", &format!("expected {wrong}"), &format!("got {right}")],
    );
    // A malformed digest, and a stream without a header.
    assert_status(
        raw_upload(&f, "abc", 3, vec![]).await,
        Code::InvalidArgument,
        &["header.sha256", "64 lowercase hex"],
    );
    let chunk_only = futures::stream::iter([wire::UploadArchiveRequest { part: Some(Part::Chunk(bytes.clone())) }]);
    assert_status(f.client.cache.clone().upload_archive(chunk_only).await, Code::InvalidArgument, &["header"]);

    // Nothing was stored: no metadata, no file (not even a temporary one).
    for digest in [&right, &wrong] {
        let stat = f.client.cache.clone().stat_archive(wire::StatArchiveRequest { sha256: digest.clone() }).await;
        assert!(stat.unwrap().into_inner().archive.is_none());
    }
    assert_eq!(cached_files(&f.cache_dir()), Vec::<PathBuf>::new());

    // Unknown digest: NOT_FOUND naming it, and no file left where the download was to go.
    let out = tempfile::tempdir().unwrap();
    let error = cache::download(&mut f.client.cache.clone(), &right, &out.path().join("x")).await.unwrap_err();
    match error {
        CacheError::Status(status) => {
            assert_eq!(status.code(), Code::NotFound);
            assert!(status.message().contains(&format!("archive {right} is not in the cache")), "{}", status.message());
        }
        other => panic!("expected NOT_FOUND, got {other}"),
    }
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);

    // A task naming an unknown archive is refused and not stored.
    let spec = wire::TaskSpec {
        name: "t".into(),
        command: "true".into(),
        n_jobs: Some(1),
        code_sha256: right.clone(),
        ..Default::default()
    };
    assert_status(
        f.client
            .tasks
            .clone()
            .submit_task(wire::SubmitTaskRequest { spec: Some(spec), idempotency_key: String::new() })
            .await,
        Code::InvalidArgument,
        &["task.code_sha256", &format!("archive {right} is not in the cache")],
    );
    let tasks = f.client.tasks.clone().list_tasks(wire::ListTasksRequest::default()).await.unwrap().into_inner();
    assert!(tasks.tasks.is_empty());
    f.stop().await;
}

/// Submits a one-job task, inserts its job and takes it as a pilot: (job id, lease token).
async fn held_job(f: &Fixture, code_sha256: &str) -> (u64, String) {
    let spec = wire::TaskSpec {
        name: "t".into(),
        command: "true".into(),
        n_jobs: Some(1),
        code_sha256: code_sha256.into(),
        ..Default::default()
    };
    let request = wire::SubmitTaskRequest { spec: Some(spec), idempotency_key: String::new() };
    let task_id = f.client.tasks.clone().submit_task(request).await.unwrap().into_inner().task_id;
    let job = wire::NewJob { job_index: 1, queue: "q".into(), command: "true".into(), ..Default::default() };
    f.client
        .internal
        .clone()
        .insert_jobs(wire::InsertJobsRequest {
            task_id,
            jobs: vec![job],
            scouting: false,
            merge: false,
            more: false,
            input_open: false,
        })
        .await
        .unwrap();
    let request = wire::GetJobRequest { queue: "q".into(), node: "n".into(), n_jobs: 1, ..Default::default() };
    let dispatched = f.client.pilot.clone().get_job(request).await.unwrap().into_inner().jobs.remove(0);
    assert_eq!(dispatched.code_sha256, code_sha256);
    (dispatched.job_id, dispatched.lease_token)
}

async fn append(
    f: &Fixture,
    job_id: u64,
    token: &str,
    stream: wire::LogStream,
    offset: u64,
    data: &[u8],
) -> Result<wire::AppendJobLogResponse, tonic::Status> {
    let request = wire::AppendJobLogRequest {
        job_id,
        lease_token: token.into(),
        stream: stream as i32,
        offset,
        data: data.to_vec(),
    };
    f.client.logs.clone().append_job_log(request).await.map(tonic::Response::into_inner)
}

/// The whole stream as read without following: (bytes, last message).
async fn read_all(f: &Fixture, job_id: u64, stream: wire::LogStream) -> (Vec<u8>, wire::ReadJobLogResponse) {
    let request = wire::ReadJobLogRequest { job_id, stream: stream as i32, offset: 0, follow: false };
    let mut messages = f.client.logs.clone().read_job_log(request).await.unwrap().into_inner();
    let mut bytes = Vec::new();
    let mut last = None;
    while let Some(message) = messages.message().await.unwrap() {
        assert_eq!(message.offset, bytes.len() as u64, "messages continue each other");
        bytes.extend_from_slice(&message.data);
        last = Some(message);
    }
    (bytes, last.expect("a stream ends with a message saying how"))
}

async fn report(f: &Fixture, job_id: u64, token: &str, status: JobStatus) {
    let request =
        wire::UpdateJobRequest { job_id, lease_token: token.into(), status: status as i32, ..Default::default() };
    f.client.pilot.clone().update_job(request).await.unwrap();
}

async fn logs_are_appended_once_and_followed_until_the_job_ends(f: Fixture) {
    use wire::LogStream::{Stderr, Stdout};
    let archive = archive_file(b"code");
    let code = cache::upload(&mut f.client.cache.clone(), archive.path(), "alice").await.unwrap().sha256;
    let (job_id, token) = held_job(&f, &code).await;
    let shown = f.client.jobs.clone().show_job(wire::ShowJobRequest { job_id }).await.unwrap().into_inner();
    assert_eq!(shown.job.unwrap().environment.get("PANDA_CODE_SHA256"), Some(&code));
    report(&f, job_id, &token, JobStatus::Starting).await;
    report(&f, job_id, &token, JobStatus::Running).await;

    assert_eq!(append(&f, job_id, &token, Stdout, 0, b"hello ").await.unwrap().stored_bytes, 6);
    assert_eq!(append(&f, job_id, &token, Stdout, 6, b"world\n").await.unwrap().stored_bytes, 12);
    // A retried chunk, and one overlapping the end, store nothing twice.
    assert_eq!(append(&f, job_id, &token, Stdout, 0, b"hello ").await.unwrap().stored_bytes, 12);
    assert_eq!(append(&f, job_id, &token, Stdout, 6, b"world\nmore\n").await.unwrap().stored_bytes, 17);
    append(&f, job_id, &token, Stderr, 0, b"warning\n").await.unwrap();
    assert_eq!(read_all(&f, job_id, Stdout).await.0, b"hello world\nmore\n");
    let (stderr, end) = read_all(&f, job_id, Stderr).await;
    assert_eq!(stderr, b"warning\n");
    assert_eq!((end.job_status, end.cap_reached), (JobStatus::Running as i32, false));

    // Follow from an offset: what is there, then new chunks as they come, until the job ends.
    let request = wire::ReadJobLogRequest { job_id, stream: Stdout as i32, offset: 12, follow: true };
    let mut follow = f.client.logs.clone().read_job_log(request).await.unwrap().into_inner();
    assert_eq!(follow.message().await.unwrap().unwrap().data, b"more\n");
    append(&f, job_id, &token, Stdout, 17, b"later\n").await.unwrap();
    let next = follow.message().await.unwrap().unwrap();
    assert_eq!((next.offset, next.data.as_slice()), (17, &b"later\n"[..]));
    append(&f, job_id, &token, Stdout, 23, b"last\n").await.unwrap();
    report(&f, job_id, &token, JobStatus::Finished).await;
    let mut rest = Vec::new();
    let mut last = None;
    while let Some(message) = follow.message().await.unwrap() {
        rest.extend_from_slice(&message.data);
        last = Some(message);
    }
    assert_eq!(rest, b"last\n");
    assert_eq!(last.unwrap().job_status, JobStatus::Finished as i32, "the stream ends with the job");
    f.stop().await;
}

async fn bad_log_requests_are_refused_and_store_nothing(f: Fixture) {
    use wire::LogStream::{Stderr, Stdout};
    let (job_id, token) = held_job(&f, "").await;
    append(&f, job_id, &token, Stdout, 0, b"0123456789").await.unwrap();

    // Not the holder: a stale or made-up token, or none.
    assert_status(
        append(&f, job_id, "not-the-token", Stdout, 10, b"x").await,
        Code::FailedPrecondition,
        &[&format!("job {job_id} is not held by this pilot")],
    );
    assert_status(append(&f, job_id, "", Stdout, 10, b"x").await, Code::InvalidArgument, &["lease_token is required"]);
    assert_status(append(&f, 999, &token, Stdout, 0, b"x").await, Code::NotFound, &["job 999 not found"]);
    // A gap: bytes before the chunk are missing.
    assert_status(
        append(&f, job_id, &token, Stdout, 11, b"x").await,
        Code::InvalidArgument,
        &["offset", "11 is past the end", "next chunk starts at 10", "stdout"],
    );
    assert_status(
        append(&f, job_id, &token, Stdout, 10, b"").await,
        Code::InvalidArgument,
        &["data must not be empty"],
    );
    assert_status(
        append(&f, job_id, &token, wire::LogStream::Unspecified, 10, b"x").await,
        Code::InvalidArgument,
        &["stream is required"],
    );
    assert_eq!(read_all(&f, job_id, Stdout).await.0, b"0123456789", "nothing was added");

    // Reading an unknown job.
    let request = wire::ReadJobLogRequest { job_id: 999, stream: Stdout as i32, offset: 0, follow: true };
    assert_status(f.client.logs.clone().read_job_log(request).await, Code::NotFound, &["job 999 not found"]);

    // The cap (both streams together) keeps the head and says so.
    let big = vec![b'e'; 1500];
    let answer = append(&f, job_id, &token, Stderr, 0, &big).await.unwrap();
    assert_eq!((answer.stored_bytes, answer.cap_reached), (MAX_LOG - 10, true));
    let answer = append(&f, job_id, &token, Stdout, 10, b"more").await.unwrap();
    assert_eq!((answer.stored_bytes, answer.cap_reached), (10, true));
    let (stderr, end) = read_all(&f, job_id, Stderr).await;
    assert_eq!(stderr.len() as u64, MAX_LOG - 10);
    assert!(end.cap_reached);

    // Once the job ended its log is closed, even to its last holder.
    report(&f, job_id, &token, JobStatus::Starting).await;
    report(&f, job_id, &token, JobStatus::Failed).await;
    assert_status(
        append(&f, job_id, &token, Stdout, 10, b"late").await,
        Code::FailedPrecondition,
        &[&format!("job {job_id} is failed: its log is closed")],
    );
    f.stop().await;
}

/// The warm runtime's RPCs and the long poll refuse bad requests, naming the field; a batch
/// answers each bad item alone.
async fn warm_rpcs_refuse_bad_requests_naming_the_field(f: Fixture) {
    use wire::function_service_client::FunctionServiceClient;
    let mut functions = FunctionServiceClient::connect(f.url.clone()).await.unwrap();
    let mut pilot = f.client.pilot.clone();
    let get_job = |wait_ms| wire::GetJobRequest { queue: "q".into(), node: "n".into(), wait_ms, ..Default::default() };
    assert_status(pilot.get_job(get_job(60_001)).await, Code::InvalidArgument, &["wait_ms", "at most 60000"]);
    assert!(pilot.get_job(get_job(0)).await.unwrap().into_inner().jobs.is_empty(), "no wait: an empty answer");
    assert!(pilot.get_job(get_job(50)).await.unwrap().into_inner().jobs.is_empty(), "empty at the deadline");

    let get_calls = |task_id, indexes: Vec<u32>| wire::GetCallsRequest { task_id, indexes };
    assert_status(functions.get_calls(get_calls(0, vec![1])).await, Code::InvalidArgument, &["task_id"]);
    assert_status(functions.get_calls(get_calls(9, vec![])).await, Code::InvalidArgument, &["indexes", "1 to 1000"]);
    assert_status(functions.get_calls(get_calls(9, vec![1, 0])).await, Code::InvalidArgument, &["indexes[1]"]);
    assert_status(functions.get_calls(get_calls(9, vec![1])).await, Code::NotFound, &["9"]);

    let submit = |warm_command: &str| wire::SubmitWorkRequest {
        spec: Some(wire::TaskSpec {
            name: "w".into(),
            command: "python3 -m pandars.runtime".into(),
            ..Default::default()
        }),
        function: "m:f".into(),
        serializer: "json".into(),
        calls: vec![wire::FunctionCall { key: "k".into(), args: b"{}".to_vec() }],
        idempotency_key: String::new(),
        warm_command: warm_command.into(),
    };
    assert_status(
        functions.submit_work(submit("py --serve\nrm -rf /")).await,
        Code::InvalidArgument,
        &["warm_command"],
    );
    let task_id = functions.submit_work(submit("py --serve")).await.unwrap().into_inner().task_id;
    let calls = functions.get_calls(get_calls(task_id, vec![1])).await.unwrap().into_inner();
    assert_eq!((calls.function.as_str(), calls.calls.len(), calls.calls[0].key.as_str()), ("m:f", 1, "k"));
    assert_status(functions.get_calls(get_calls(task_id, vec![2])).await, Code::NotFound, &["2"]);

    assert_status(
        functions.put_results(wire::PutResultsRequest { results: vec![] }).await,
        Code::InvalidArgument,
        &["results", "1 to 1000"],
    );
    let result = wire::FunctionResult { task_id, index: 1, ok: true, ..Default::default() };
    let items = vec![
        wire::PutResultRequest { job_id: 0, result: Some(result.clone()) },
        wire::PutResultRequest { job_id: 5, result: None },
        wire::PutResultRequest { job_id: 5, result: Some(wire::FunctionResult { task_id: 0, ..result.clone() }) },
        wire::PutResultRequest { job_id: 987_654, result: Some(result) },
    ];
    let outcomes =
        functions.put_results(wire::PutResultsRequest { results: items }).await.unwrap().into_inner().outcomes;
    let codes: Vec<i32> = outcomes.iter().map(|o| o.code).collect();
    let invalid = Code::InvalidArgument as i32;
    assert_eq!(codes, [invalid, invalid, invalid, Code::NotFound as i32]);
    assert!(outcomes[0].message.contains("results[0].job_id"), "{}", outcomes[0].message);
    assert!(outcomes[1].message.contains("results[1].result"), "{}", outcomes[1].message);
    assert!(outcomes[2].message.contains("results[2].result.task_id"), "{}", outcomes[2].message);
    assert!(outcomes.iter().all(|o| !o.stored));
    f.stop().await;
}

/// A task's container image: a bad one is refused naming the field and nothing is stored; a good
/// one is shown with the task and goes with every dispatch of every job, retries included.
async fn container_images_are_checked_and_go_with_every_dispatch(f: Fixture) {
    let submit = |image: &str| {
        let spec = wire::TaskSpec {
            name: "t".into(),
            command: "true".into(),
            n_jobs: Some(1),
            container_image: image.into(),
            ..Default::default()
        };
        let mut tasks = f.client.tasks.clone();
        async move { tasks.submit_task(wire::SubmitTaskRequest { spec: Some(spec), idempotency_key: String::new() }).await }
    };
    for (image, problem) in [
        ("python 3", "must not contain whitespace"),
        ("ftp://host/img", "unknown scheme ftp://"),
        ("Python:3", "is not a registry reference"),
    ] {
        assert_status(submit(image).await, Code::InvalidArgument, &["task.container_image", problem]);
    }
    let tasks = f.client.tasks.clone().list_tasks(wire::ListTasksRequest::default()).await.unwrap().into_inner();
    assert!(tasks.tasks.is_empty(), "refused tasks are not stored");

    let image = "docker://python:3.11-slim";
    let task_id = submit(image).await.unwrap().into_inner().task_id;
    let task = f.client.tasks.clone().get_task(wire::GetTaskRequest { task_id }).await.unwrap().into_inner();
    assert_eq!(task.task.unwrap().spec.unwrap().container_image, image);
    let job = wire::NewJob { job_index: 1, queue: "q".into(), command: "true".into(), ..Default::default() };
    let insert = wire::InsertJobsRequest {
        task_id,
        jobs: vec![job],
        scouting: false,
        merge: false,
        more: false,
        input_open: false,
    };
    f.client.internal.clone().insert_jobs(insert).await.unwrap();
    let get = wire::GetJobRequest { queue: "q".into(), node: "n".into(), n_jobs: 1, ..Default::default() };
    let first = f.client.pilot.clone().get_job(get.clone()).await.unwrap().into_inner().jobs.remove(0);
    assert_eq!(first.container_image, image);
    report(&f, first.job_id, &first.lease_token, JobStatus::Starting).await;
    report(&f, first.job_id, &first.lease_token, JobStatus::Failed).await;
    let retry =
        wire::RetryJobsRequest { task_id, jobs: vec![wire::RetryJob { job_id: first.job_id, ..Default::default() }] };
    let retried = f.client.generation.clone().retry_jobs(retry).await.unwrap().into_inner().job_ids;
    let second = f.client.pilot.clone().get_job(get).await.unwrap().into_inner().jobs.remove(0);
    assert_eq!((second.job_id, second.attempt_nr), (retried[0], 2));
    assert_eq!(second.container_image, image, "the next attempt runs in the same image");
    f.stop().await;
}

macro_rules! suite {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::fixture(super::TestDb::sqlite_temp()).await).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs PostgreSQL: set PANDA_TEST_DATABASE_URL"]
                async fn $case() {
                    super::$case(super::fixture(super::TestDb::postgres_from_env().await).await).await;
                }
            )+
        }
    };
}

suite!(
    archives_are_stored_once_and_downloaded_whole,
    bad_uploads_are_refused_and_leave_nothing,
    logs_are_appended_once_and_followed_until_the_job_ends,
    bad_log_requests_are_refused_and_store_nothing,
    warm_rpcs_refuse_bad_requests_naming_the_field,
    container_images_are_checked_and_go_with_every_dispatch,
);
