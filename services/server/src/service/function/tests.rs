#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

fn work(calls: usize) -> NewWork {
    NewWork {
        task: TaskSpecDraft { name: "w".into(), command: "python3 -m pandars.runtime".into(), ..Default::default() },
        function: "mod.sub:f".into(),
        serializer: "json".into(),
        calls: (0..calls).map(|i| (format!("k{i}"), b"{}".to_vec())).collect(),
        warm_command: None,
    }
}

fn fields(work: &mut NewWork) -> Vec<String> {
    validate_work(work).err().unwrap_or_default().into_iter().map(|e| e.field).collect()
}

#[test]
fn a_good_work_gets_one_job_per_call() {
    let mut good = work(3);
    assert!(validate_work(&mut good).is_ok());
    assert_eq!(good.task.n_jobs, Some(3));
}

#[test]
fn every_bad_field_is_named_at_once() {
    let mut bad = work(0);
    bad.function = "no_colon".into();
    bad.serializer = "yaml".into();
    bad.task.input_datasets = vec!["ds".into()];
    assert_eq!(fields(&mut bad), ["function", "serializer", "calls", "spec.input_datasets"]);
}

#[test]
fn keys_must_be_unique_and_arguments_bounded() {
    let mut bad = work(3);
    bad.calls[2].0 = "k0".into();
    bad.calls[1].1 = vec![b' '; MAX_ARGS_BYTES + 1];
    bad.task.n_jobs = Some(7);
    assert_eq!(fields(&mut bad), ["spec.n_jobs", "calls[1].args", "calls[2].key"]);
}

#[test]
fn a_failure_result_names_the_job_its_reason_and_its_logs() {
    let job = Ended {
        job_id: JobId(42),
        task_id: TaskId(7),
        index: 3,
        status: JobStatus::Failed,
        error_code: 1213,
        error_diag: "walltime exceeded",
        exit_code: None,
        stderr_tail: "Killed",
    };
    let result = failure_of(job, "k".into());
    assert!(!result.ok);
    assert_eq!((result.task_id, result.index, result.job_id, result.key.as_str()), (7, 3, 42, "k"));
    let error = result.error.unwrap();
    assert_eq!(error.r#type, "JobFailed");
    assert!(error.message.contains("walltime exceeded") && error.message.contains("1213"), "{}", error.message);
    assert_eq!(error.log_location, "panda job logs 42");
    assert_eq!(error.traceback, "Killed");
    let cancelled = failure_of(Ended { status: JobStatus::Cancelled, ..job }, "k".into());
    assert_eq!(cancelled.error.unwrap().r#type, "JobCancelled");
}

#[test]
fn a_warm_command_must_be_one_nonempty_line() {
    let mut good = work(1);
    good.warm_command = Some("python3 -m pandars.runtime --serve".into());
    assert!(validate_work(&mut good).is_ok());
    for bad in ["", "  ", "python3 -m x\nrm -rf /", "a\0b"] {
        let mut work = work(1);
        work.warm_command = Some(bad.into());
        assert_eq!(fields(&mut work), vec!["warm_command"], "{bad:?} must be refused");
    }
    let mut long = work(1);
    long.warm_command = Some("x".repeat(MAX_WARM_COMMAND_BYTES + 1));
    assert_eq!(fields(&mut long), vec!["warm_command"]);
}
