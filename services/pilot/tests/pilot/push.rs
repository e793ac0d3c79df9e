//! Push mode: the pilot runs the jobs of the job file harvester wrote, with their leases, before
//! (or instead of) asking the server.

use panda_pilot::Error;
use panda_proto::common::v1::JobStatus;
use panda_types::job_file::JobFile;

use crate::fake::{Fake, Script};
use crate::{Dirs, config, job, script, summary};

fn write_job_file(dirs: &Dirs, jobs: &[panda_proto::server::v1::DispatchedJob]) -> std::path::PathBuf {
    let file = JobFile::new(
        "test-queue".into(),
        "worker-9".into(),
        dirs.storage_url(),
        jobs.iter().cloned().map(panda_proto::convert::job_file::to_pushed).collect(),
    );
    let path = dirs.scratch.join("jobs.json");
    std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap()).unwrap();
    path
}

#[tokio::test]
async fn the_job_files_jobs_run_without_get_job_and_count_towards_max_jobs() {
    let dirs = Dirs::new();
    let pushed = vec![job(1, "echo one > out1"), job(2, "echo two > out2")];
    let mut first = pushed[0].clone();
    first.output_files = vec!["out1".into()];
    let path = write_job_file(&dirs, &[first, pushed[1].clone()]);
    // The server would also have a job to pull; with max_jobs = the file's two, it is left alone.
    let mut script = script(&dirs, vec![job(3, "true")]);
    script.pushed = pushed;
    let fake = Fake::new(script);
    let addr = fake.serve().await;
    let mut config = config(addr, &dirs);
    config.job_file = Some(path.clone());
    config.max_jobs = 2;
    let result = panda_pilot::run(config, tokio_util::sync::CancellationToken::new()).await.unwrap();

    assert_eq!(result, summary(2, 2, 0));
    assert_eq!(fake.seen(|seen| seen.get_jobs.len()), 0, "no GetJob in push mode");
    assert_eq!(fake.jobs_left(), 1);
    let reports: Vec<(u64, String, JobStatus)> = fake.seen(|seen| {
        seen.updates.iter().map(|u| (u.job_id, u.lease_token.clone(), crate::fake::status(u.status))).collect()
    });
    for job_id in [1, 2] {
        let mine: Vec<_> = reports.iter().filter(|(id, _, _)| *id == job_id).collect();
        assert!(mine.iter().all(|(_, token, _)| *token == format!("lease-{job_id}")), "{reports:?}");
        assert_eq!(mine.first().map(|r| r.2), Some(JobStatus::Starting), "{reports:?}");
        assert_eq!(mine.last().map(|r| r.2), Some(JobStatus::Finished), "{reports:?}");
    }
    // Job 1's declared output was staged out with the file's storage URL.
    assert!(
        std::fs::read_dir(&dirs.storage).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with("out1"))
    );
}

#[tokio::test]
async fn after_the_job_file_the_pilot_goes_on_pulling_when_max_jobs_allows() {
    let dirs = Dirs::new();
    let pushed = vec![job(1, "true")];
    let path = write_job_file(&dirs, &pushed);
    let mut script = script(&dirs, vec![job(3, "true")]);
    script.pushed = pushed;
    let fake = Fake::new(script);
    let addr = fake.serve().await;
    let mut config = config(addr, &dirs);
    config.job_file = Some(path);
    let result = panda_pilot::run(config, tokio_util::sync::CancellationToken::new()).await.unwrap();
    assert_eq!(result, summary(2, 2, 0));
    // One GetJob for job 3, one answered empty.
    assert_eq!(fake.seen(|seen| seen.get_jobs.len()), 2);
    assert_eq!(fake.jobs_left(), 0);
}

#[tokio::test]
async fn a_job_file_of_another_format_or_without_leases_stops_the_pilot_naming_the_file() {
    let dirs = Dirs::new();
    let fake = Fake::new(Script::default());
    let addr = fake.serve().await;
    let path = dirs.scratch.join("jobs.json");
    for (text, expected) in [
        (r#"{"format":"panda-job-file/9","queue":"q","worker_id":"1","storage_url":"","jobs":[]}"#, "panda-job-file/9"),
        ("not json", "expected"),
        (
            r#"{"format":"panda-job-file/1","queue":"q","worker_id":"1","storage_url":"","jobs":[{"job_id":5,"task_id":1,"attempt_nr":1,"lease_token":"","command":"true"}]}"#,
            "lease_token is empty",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let mut config = config(addr, &dirs);
        config.job_file = Some(path.clone());
        let error = panda_pilot::run(config, tokio_util::sync::CancellationToken::new()).await.unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, Error::JobFile { .. }), "{message}");
        assert!(message.contains("jobs.json") && message.contains(expected), "{message}");
    }
    assert_eq!(fake.seen(|seen| seen.get_jobs.len() + seen.updates.len()), 0);
}
