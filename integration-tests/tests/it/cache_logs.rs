//! A task with a code archive, end to end: the archive is uploaded once, the pilot unpacks it into
//! the job directory and runs it, and a user follows the job's output while it runs, until the
//! job ends.

use std::io::Write;
use std::time::Duration;

use panda_all::Cluster;
use panda_client::ServerClient;
use panda_integration_tests::{await_condition, await_task, fast_config, jobs_of};
use panda_proto::common::v1::{JobStatus, TaskStatus};
use panda_proto::server::v1 as server;

use crate::PILOT;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_runs_its_code_archive_and_its_log_can_be_followed() {
    let dir = tempfile::tempdir().unwrap();
    // Pilots send output every 200 ms, so following shows it while the payload runs.
    let pilot = vec![PILOT.to_owned(), "--log-interval".to_owned(), "200ms".to_owned()];
    let cluster = Cluster::start(fast_config(dir.path()), pilot).await.expect("embedded cluster starts");
    let client = ServerClient::new(&cluster.server_url).unwrap();

    // The user's code: a script that prints, waits for the test's signal, and writes the output.
    let code = tempfile::tempdir().unwrap();
    std::fs::create_dir(code.path().join("lib")).unwrap();
    std::fs::write(code.path().join("lib/greeting.txt"), "hello from the archive\n").unwrap();
    std::fs::write(
        code.path().join("run.sh"),
        "echo \"started job $PANDA_JOB_ID\"\n\
         while [ ! -e \"$GO\" ]; do sleep 0.1; done\n\
         cat lib/greeting.txt\n\
         echo \"a warning\" >&2\n\
         cp lib/greeting.txt \"$1\"\n",
    )
    .unwrap();
    let mut archive = tempfile::NamedTempFile::new().unwrap();
    panda_client::cache::pack_dir(code.path(), archive.as_file_mut()).unwrap();
    archive.flush().unwrap();
    let mut cache = client.cache.clone();
    let uploaded = panda_client::cache::upload(&mut cache, archive.path(), "alice").await.unwrap();
    assert!(uploaded.created);
    assert!(!panda_client::cache::upload(&mut cache, archive.path(), "alice").await.unwrap().created);

    let go = dir.path().join("go");
    let spec = server::TaskSpec {
        name: "with-code".into(),
        command: "sh run.sh {output}".into(),
        n_jobs: Some(1),
        output_dataset: "with-code.out".into(),
        environment: [("GO".to_owned(), go.display().to_string())].into(),
        code_sha256: uploaded.sha256.clone(),
        ..Default::default()
    };
    let request = server::SubmitTaskRequest { spec: Some(spec), idempotency_key: String::new() };
    let task_id = client.tasks.clone().submit_task(request).await.unwrap().into_inner().task_id;

    let job_id = await_condition(Duration::from_secs(60), "the job to run", || {
        let client = client.clone();
        async move {
            let jobs = jobs_of(&client, task_id).await;
            jobs.first().filter(|j| j.status == JobStatus::Running as i32).map(|j| j.job_id)
        }
    })
    .await;

    // Follow: the first line arrives while the payload still waits.
    let request =
        server::ReadJobLogRequest { job_id, stream: server::LogStream::Stdout as i32, offset: 0, follow: true };
    let mut follow = client.logs.clone().read_job_log(request).await.unwrap().into_inner();
    let mut stdout = Vec::new();
    while !stdout.ends_with(b"\n") {
        let message = tokio::time::timeout(Duration::from_secs(30), follow.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(message.job_status, JobStatus::Running as i32, "output arrives while the job runs");
        stdout.extend_from_slice(&message.data);
    }
    assert_eq!(String::from_utf8_lossy(&stdout), format!("started job {job_id}\n"));

    std::fs::write(&go, "").unwrap();
    let mut last = None;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(60), follow.message()).await.unwrap().unwrap() {
        stdout.extend_from_slice(&message.data);
        last = Some(message);
    }
    assert_eq!(String::from_utf8_lossy(&stdout), format!("started job {job_id}\nhello from the archive\n"));
    assert_eq!(last.unwrap().job_status, JobStatus::Finished as i32, "the stream ends when the job does");

    let request =
        server::ReadJobLogRequest { job_id, stream: server::LogStream::Stderr as i32, offset: 0, follow: false };
    let mut stderr = client.logs.clone().read_job_log(request).await.unwrap().into_inner();
    let mut text = Vec::new();
    while let Some(message) = stderr.message().await.unwrap() {
        text.extend_from_slice(&message.data);
    }
    assert_eq!(text, b"a warning\n");

    await_task(&client, task_id, TaskStatus::Done, Duration::from_secs(30)).await;
    let output = std::fs::read_to_string(dir.path().join("storage/with-code.out._000001")).unwrap();
    assert_eq!(output, "hello from the archive\n");
    cluster.stop().await.unwrap();
}
