use super::*;

use panda_types::TaskId;

fn job(environment: &[(&str, &str)]) -> Job {
    Job {
        lease: Lease { job_id: JobId(7), token: "t".to_owned() },
        task_id: TaskId(3),
        attempt_nr: 1,
        command: "python3 -m pandars.runtime --index 2".to_owned(),
        environment: environment.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        inputs: vec![],
        outputs: vec![],
        heartbeat_interval_seconds: 0,
        code_sha256: Some("ab".repeat(32)),
        walltime_seconds: 0,
        memory_mb: 0,
        job_index: 2,
        container_image: None,
    }
}

#[test]
fn only_jobs_naming_a_warm_runtime_without_files_run_warm() {
    assert!(key_of(&job(&[])).is_none(), "no warm command: an ordinary job");
    assert!(key_of(&job(&[(WARM_ENV, "  ")])).is_none());
    let warm = job(&[(WARM_ENV, "python3 -m pandars.runtime --serve")]);
    assert!(key_of(&warm).is_some());
    let with_output = Job { outputs: vec!["out".to_owned()], ..warm.clone() };
    assert!(key_of(&with_output).is_none(), "outputs need a job directory");
    let old_server = Job { job_index: 0, ..warm };
    assert!(key_of(&old_server).is_none(), "without the index the call is unknown");
}

#[test]
fn jobs_share_a_runtime_when_command_code_and_user_environment_agree() {
    let a = job(&[(WARM_ENV, "py --serve"), ("PANDA_CODE_SHA256", "x"), ("USER_VAR", "1")]);
    let mut b = a.clone();
    b.lease.job_id = JobId(8);
    b.task_id = TaskId(4);
    b.environment.insert("PANDA_CODE_SHA256".to_owned(), "y".to_owned());
    assert_eq!(key_of(&a), key_of(&b), "PANDA_* variables are per job, not part of the key");
    let mut other_env = a.clone();
    other_env.environment.insert("USER_VAR".to_owned(), "2".to_owned());
    assert_ne!(key_of(&a), key_of(&other_env));
    let other_code = Job { code_sha256: Some("cd".repeat(32)), ..a.clone() };
    assert_ne!(key_of(&a), key_of(&other_code));
}

#[test]
fn jobs_with_different_images_never_share_a_runtime() {
    let plain = job(&[(WARM_ENV, "py --serve")]);
    let slim = Job { container_image: Some("docker://python:3.11-slim".to_owned()), ..plain.clone() };
    let other = Job { container_image: Some("docker://python:3.12-slim".to_owned()), ..plain.clone() };
    assert_ne!(key_of(&plain), key_of(&slim), "an image and none");
    assert_ne!(key_of(&slim), key_of(&other), "two images");
    let mut same = slim.clone();
    same.lease.job_id = JobId(9);
    assert_eq!(key_of(&slim), key_of(&same), "one image: one runtime");
}

#[test]
fn the_runtime_s_lines_parse() {
    let start: Event = serde_json::from_str(r#"{"event": "start", "job": 42}"#).unwrap();
    assert!(matches!(start, Event::Start { job: 42 }));
    let done: Event = serde_json::from_str(
        r#"{"event": "done", "results": [{"job": 42, "ok": false, "error": "ZeroDivisionError: x", "seconds": 0.5}]}"#,
    )
    .unwrap();
    let Event::Done { results } = done else { panic!("not done") };
    assert_eq!(results.len(), 1);
    assert!(!results[0].ok && results[0].error == "ZeroDivisionError: x" && results[0].stdout.is_empty());
    assert!(serde_json::from_str::<Event>(r#"{"event": "bogus"}"#).is_err());
    let line = serde_json::to_string(&CallLine { task: 3, job: 7, index: 2 }).unwrap();
    assert_eq!(line, r#"{"task":3,"job":7,"index":2}"#);
}
