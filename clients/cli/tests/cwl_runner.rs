//! `panda cwl-runner` and the `cwl-runner` binary: the interface cwltest drives (output object as
//! JSON on stdout, exit 0 / 1 / 33).

use std::path::PathBuf;
use std::process::Command;

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../crates/cwl/tests/fixtures").join(name).display().to_string()
}

#[test]
fn panda_cwl_runner_prints_the_output_object() {
    let out = tempfile::tempdir().expect("tempdir");
    let res = Command::new(env!("CARGO_BIN_EXE_panda"))
        .args(["cwl-runner", "--quiet", &format!("--outdir={}", out.path().display()), &fixture("wf-scatter.cwl")])
        .output()
        .expect("run panda");
    assert!(res.status.success(), "stderr: {}", String::from_utf8_lossy(&res.stderr));
    let v: serde_json::Value = serde_json::from_slice(&res.stdout).expect("JSON on stdout");
    assert_eq!(v["dot"], serde_json::json!([101, 202]));
    assert_eq!(v["sub"], serde_json::json!(8));
}

#[test]
fn cwl_runner_binary_exit_codes() {
    let out = tempfile::tempdir().expect("tempdir");
    let run = |doc: &str| {
        Command::new(env!("CARGO_BIN_EXE_cwl-runner"))
            .args(["--outdir", &out.path().display().to_string(), &fixture(doc)])
            .output()
            .expect("run cwl-runner")
    };
    assert_eq!(run("docker.cwl").status.code(), Some(33), "DockerRequirement without a container runtime");
    let bad = run("bad-class.cwl");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bad-class.cwl:2: field `class`"));
    assert_eq!(run("dir.cwl").status.code(), Some(0));
}
