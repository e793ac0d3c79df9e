use super::*;

fn job() -> Job {
    Job {
        lease: Lease { job_id: JobId(7), token: "t".to_owned() },
        task_id: TaskId(3),
        attempt_nr: 2,
        command: "true".to_owned(),
        environment: BTreeMap::from([
            ("USER_VAR".to_owned(), "x".to_owned()),
            ("PANDA_JOB_ID".to_owned(), "spoofed".to_owned()),
        ]),
        inputs: vec![
            InputFile {
                lfn: "a.root".to_owned(),
                url: "file:///d/a.root".to_owned(),
                size_bytes: 0,
                checksum: String::new(),
            },
            InputFile {
                lfn: "b.root".to_owned(),
                url: "file:///d/b.root".to_owned(),
                size_bytes: 0,
                checksum: String::new(),
            },
        ],
        outputs: vec!["out.1".to_owned(), "out.2".to_owned()],
        heartbeat_interval_seconds: 0,
        code_sha256: None,
        walltime_seconds: 0,
        memory_mb: 0,
        job_index: 1,
        container_image: None,
    }
}

#[test]
fn job_dirs_follow_the_reference_name() {
    assert_eq!(job_dir(Path::new("/w"), JobId(4711)), PathBuf::from("/w/PanDA_Pilot-4711"));
}

#[test]
fn the_payload_sees_the_job_and_panda_variables() {
    let environment: BTreeMap<_, _> =
        payload_environment(&job(), Path::new("/w/PanDA_Pilot-7"), "http://127.0.0.1:9").into_iter().collect();
    let get = |key: &str| environment.get(key).map(String::as_str);
    assert_eq!(get("USER_VAR"), Some("x"));
    assert_eq!(get("PANDA_JOB_ID"), Some("7"));
    assert_eq!(get("PANDA_TASK_ID"), Some("3"));
    assert_eq!(get("PANDA_ATTEMPT_NR"), Some("2"));
    assert_eq!(get("PANDA_WORK_DIR"), Some("/w/PanDA_Pilot-7"));
    assert_eq!(get("PANDA_INPUT_FILES"), Some("a.root b.root"));
    assert_eq!(get("PANDA_OUTPUT_FILES"), Some("out.1 out.2"));
    assert_eq!(get("PANDA_SERVER_URL"), Some("http://127.0.0.1:9"));
}

#[test]
fn a_panda_variable_appears_once() {
    let environment = payload_environment(&job(), Path::new("/w"), "http://127.0.0.1:9");
    assert_eq!(environment.iter().filter(|(key, _)| key == "PANDA_JOB_ID").count(), 1);
}
