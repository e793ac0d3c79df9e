//! The code archive (downloaded once, unpacked before the payload, unsafe ones refused) and the
//! payload's output reaching the server while it runs.

use std::io::Write;
use std::time::Duration;

use panda_pilot::error_codes;
use panda_proto::common::v1::JobStatus;
use panda_proto::server::v1::LogStream;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::fake::{Fake, Script};
use crate::{Dirs, assert_failed, config, job, run_pilot, script, wait_for};

fn sha(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// A tar.gz of a directory holding `run.sh`.
fn code_archive(script: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("run.sh"), script).unwrap();
    let mut bytes = Vec::new();
    panda_client::cache::pack_dir(dir.path(), &mut bytes).unwrap();
    bytes
}

/// A tar.gz whose only entry is named `../<name>` (written into the header directly: the tar
/// builder refuses such names).
fn escaping_archive(name: &str) -> Vec<u8> {
    let path = format!("../{name}");
    let mut header = tar::Header::new_gnu();
    header.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(5);
    header.set_cksum();
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    builder.append(&header, &b"evil\n"[..]).unwrap();
    let mut encoder = builder.into_inner().unwrap();
    encoder.flush().unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn the_code_archive_is_unpacked_before_the_payload_and_downloaded_once() {
    let dirs = Dirs::new();
    let archive = code_archive("echo \"from the archive, job $PANDA_JOB_ID\"\n");
    let digest = sha(&archive);
    let jobs = (1..=2)
        .map(|id| {
            let mut job = job(id, "sh run.sh; echo \"code $PANDA_CODE_SHA256\"");
            job.code_sha256 = digest.clone();
            job.environment.insert("PANDA_CODE_SHA256".into(), digest.clone());
            job
        })
        .collect();
    let mut script = script(&dirs, jobs);
    script.archives.insert(digest.clone(), archive);

    let (fake, summary) = run_pilot(script, &dirs, |_| {}).await;

    assert_eq!(summary.jobs_finished, 2, "{summary:?}");
    let updates = fake.seen(|seen| seen.updates.clone());
    for id in 1..=2 {
        let last = updates.iter().rev().find(|u| u.job_id == id).unwrap();
        assert!(last.stdout_tail.contains(&format!("from the archive, job {id}")), "{}", last.stdout_tail);
        assert!(last.stdout_tail.contains(&format!("code {digest}")), "{}", last.stdout_tail);
    }
    assert_eq!(fake.seen(|seen| seen.downloads), 1, "the second job reuses the pilot's copy");
}

#[tokio::test]
async fn a_missing_or_unsafe_archive_fails_the_job_before_the_payload() {
    let dirs = Dirs::new();
    let unsafe_archive = escaping_archive("evil");
    let unknown = sha(b"never uploaded");
    let mut missing = job(1, "touch ran");
    missing.code_sha256 = unknown.clone();
    let mut escaping = job(2, "touch ran");
    escaping.code_sha256 = sha(&unsafe_archive);
    let mut script = script(&dirs, vec![missing, escaping]);
    script.archives.insert(sha(&unsafe_archive), unsafe_archive);

    let (fake, summary) = run_pilot(script, &dirs, |_| {}).await;

    assert_eq!(summary.jobs_failed, 2, "{summary:?}");
    let updates = fake.seen(|seen| seen.updates.clone());
    let last = |id| updates.iter().rev().find(|u| u.job_id == id).unwrap().clone();
    assert_failed(&last(1), error_codes::STAGE_IN_FAILED, None);
    assert!(last(1).error_diag.contains(&format!("archive {unknown} is not in the cache")), "{}", last(1).error_diag);
    assert_failed(&last(2), error_codes::STAGE_IN_FAILED, None);
    assert!(last(2).error_diag.contains("\"../evil\" refused"), "{}", last(2).error_diag);
    for id in 1..=2 {
        assert!(!dirs.job_dir(id).join("ran").exists(), "the payload of job {id} must not run");
    }
    assert!(!dirs.work.join("evil").exists(), "nothing is written outside the job directory");
}

#[tokio::test]
async fn output_reaches_the_server_while_the_payload_runs_and_all_of_it_before_the_end() {
    let dirs = Dirs::new();
    let go = dirs.scratch.join("go");
    let command =
        format!("echo line 1; echo oops >&2; while [ ! -e {} ]; do sleep 0.05; done; echo line 2", go.display());
    let fake = Fake::new(Script { ..script(&dirs, vec![job(1, &command)]) });
    let addr = fake.serve().await;
    let mut config = config(addr, &dirs);
    config.log_interval = Duration::from_millis(50);
    let pilot = tokio::spawn(panda_pilot::run(config, CancellationToken::new()));

    let stdout = LogStream::Stdout as i32;
    wait_for("the first line at the server", || fake.log(1, stdout) == b"line 1\n").await;
    assert!(!fake.statuses().contains(&JobStatus::Finished), "the payload still runs");
    std::fs::write(&go, "").unwrap();
    let summary = pilot.await.unwrap().unwrap();

    assert_eq!(summary.jobs_finished, 1);
    assert_eq!(fake.log(1, stdout), b"line 1\nline 2\n");
    assert_eq!(fake.log(1, LogStream::Stderr as i32), b"oops\n");
    let updates = fake.seen(|seen| seen.updates.len());
    let appends = fake.seen(|seen| seen.appends.clone());
    assert!(appends.iter().all(|a| a.updates_before < updates), "every chunk precedes the final report: {appends:?}");
    assert!(appends.windows(2).all(|w| w[0].stream != w[1].stream || w[0].offset < w[1].offset));
}
