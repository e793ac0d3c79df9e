//! Each CWL feature the runner implements, exercised with the small documents in
//! tests/fixtures through the local executor (the conformance suite itself is not in CI).

use std::path::{Path, PathBuf};

use panda_cwl::CwlError;
use panda_cwl::exec::LocalExecutor;
use panda_cwl::runner::{Args, run_with};
use serde_json::{Value, json};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

struct Run {
    out: tempfile::TempDir,
    result: Result<Value, CwlError>,
}

/// Runs `doc` (a fixture, optionally `#id`) with an input object given as YAML text.
fn run(doc: &str, job: Option<&str>) -> Run {
    let out = tempfile::tempdir().expect("tempdir");
    let scratch = tempfile::tempdir().expect("tempdir");
    let job_path = job.map(|text| {
        let p = scratch.path().join("job.yml");
        std::fs::write(&p, text.replace("FIXTURES", &fixture("").display().to_string())).expect("write job");
        p
    });
    let args = Args {
        outdir: Some(out.path().to_path_buf()),
        quiet: true,
        document: fixture(doc).display().to_string(),
        job: job_path,
        ..Args::default()
    };
    let exec = LocalExecutor::new(scratch.path().join("jobs"));
    let result = run_with(&args, &exec, scratch.path());
    Run { out, result }
}

fn ok(r: &Run) -> &Value {
    match &r.result {
        Ok(v) => v,
        Err(e) => panic!("run failed: {e}"),
    }
}

#[test]
fn command_line_binding_rules() {
    let r = run("cmdline.cwl", Some(&std::fs::read_to_string(fixture("cmdline-job.yml")).expect("job")));
    assert_eq!(ok(&r)["out"], json!("first 7 --flag -l x,y,z -e p -e q -g=v -b two -a 1"));
}

#[test]
fn stdin_stdout_stderr_shortcuts() {
    let r = run("streams.cwl", Some("src: {class: File, location: FIXTURES/hello.txt}"));
    let v = ok(&r);
    let copy = v["copy"]["location"].as_str().expect("location").trim_start_matches("file://").to_string();
    assert_eq!(std::fs::read_to_string(&copy).expect("copy"), "hello world\n");
    assert!(copy.starts_with(&r.out.path().canonicalize().expect("canon").display().to_string()));
    assert_eq!(v["copy"]["checksum"], json!("sha1$22596363b3de40b06f981fb85d82312e8c0ed511"));
    assert_eq!(v["copy"]["size"], json!(12));
    assert_eq!(v["err"]["size"], json!(5));
}

#[test]
fn javascript_expression_lib_and_file_fields() {
    let r = run("js.cwl", Some("n: 21\nf: {class: File, location: FIXTURES/hello.txt}"));
    assert_eq!(ok(&r), &json!({"doubled": 42, "name": "hello.txt", "size": 12, "ext": ".txt"}));
}

#[test]
fn env_shell_and_resources() {
    let r = run("env-shell.cwl", Some("who: you"));
    assert_eq!(ok(&r)["out"], json!("HI YOU 3"));
}

#[test]
fn initial_work_dir_staging() {
    let r = run("iwd.cwl", Some("src: {class: File, location: FIXTURES/hello.txt}"));
    let loc = ok(&r)["result"]["location"].as_str().expect("location").trim_start_matches("file://").to_string();
    assert_eq!(std::fs::read_to_string(loc).expect("result"), "hello world\n{\"n\": 5}");
}

#[test]
fn directories_globs_and_secondary_files() {
    let r = run("dir.cwl", None);
    let v = ok(&r);
    let names: Vec<&str> =
        v["d"]["listing"].as_array().expect("listing").iter().filter_map(|x| x["basename"].as_str()).collect();
    assert_eq!(names, vec!["a.txt", "a.txt.idx", "b.txt"]);
    assert_eq!(v["files"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["withidx"]["secondaryFiles"][0]["basename"], json!("a.txt.idx"));
}

#[test]
fn workflow_scatter_merge_when_pick_subworkflow() {
    let r = run("wf-scatter.cwl", None);
    let v = ok(&r);
    assert_eq!(v["dot"], json!([101, 202]));
    assert_eq!(v["nested"], json!([[11, 21, 31], [12, 22, 32]]));
    assert_eq!(v["flat"], json!([11, 21, 31, 12, 22, 32]));
    assert_eq!(v["merged"], json!([101, 202, 5]));
    assert_eq!(v["picked"], json!(5));
    assert_eq!(v["sub"], json!(8));
}

#[test]
fn packed_graph_schema_defs_import_unions() {
    let r = run("packed.cwl", Some("color: green"));
    assert_eq!(ok(&r)["out"], json!("green L 2 word"));
    let r = run("packed.cwl#main", Some("color: blue"));
    assert!(matches!(r.result, Err(CwlError::Input { .. })), "an enum rejects an unknown symbol");
}

#[test]
fn missing_input_names_the_field() {
    let r = run("js.cwl", Some("n: 1"));
    match r.result {
        Err(CwlError::Input { field, .. }) => assert_eq!(field, "f"),
        other => panic!("expected an input error, got {other:?}"),
    }
}

#[test]
fn bad_documents_name_document_line_and_field() {
    match run("bad-class.cwl", None).result {
        Err(e @ CwlError::Invalid { .. }) => {
            let text = e.to_string();
            assert!(text.contains("bad-class.cwl:2: field `class`"), "{text}");
            assert_eq!(e.exit_code(), 1);
        }
        other => panic!("expected invalid, got {other:?}"),
    }
    match run("bad-yaml.cwl", None).result {
        Err(CwlError::Invalid { line, doc, .. }) => {
            assert!(line >= 4, "line {line}");
            assert!(doc.ends_with("bad-yaml.cwl"));
        }
        other => panic!("expected invalid YAML, got {other:?}"),
    }
}

#[test]
fn throwing_and_looping_expressions_fail() {
    match run("throws.cwl", None).result {
        Err(e @ CwlError::Expr { .. }) => {
            assert!(e.to_string().contains("no way"), "{e}");
            assert_eq!(e.exit_code(), 1);
        }
        other => panic!("expected an expression error, got {other:?}"),
    }
    panda_cwl::expr::set_time_limit(std::time::Duration::from_millis(300));
    let r = run("throws.cwl", Some("loop: true"));
    assert!(
        matches!(r.result, Err(CwlError::Expr { source: panda_cwl::expr::ExprError::Limit { .. }, .. })),
        "{:?}",
        r.result
    );
}

#[test]
fn docker_requirement_is_unsupported_without_a_runtime() {
    let r = run("docker.cwl", None);
    match r.result {
        Err(e) => assert_eq!(e.exit_code(), 33),
        Ok(v) => panic!("expected exit 33, got {v}"),
    }
}

/// Records what the engine tells the executor about each invocation (key and parents), and runs
/// it locally.
struct Recording {
    local: LocalExecutor,
    seen: std::sync::Mutex<Vec<(String, Vec<String>)>>,
}

impl panda_cwl::exec::Executor for Recording {
    fn allocate(&self) -> panda_cwl::Result<panda_cwl::exec::JobDirs> {
        self.local.allocate()
    }

    fn run(
        &self,
        dirs: &panda_cwl::exec::JobDirs,
        job: &panda_cwl::exec::JobSpec,
    ) -> panda_cwl::Result<panda_cwl::exec::JobOutcome> {
        self.seen.lock().expect("lock").push((job.key.clone(), job.parents.clone()));
        self.local.run(dirs, job)
    }
}

#[test]
fn each_invocation_is_keyed_by_step_and_scatter_index_with_the_invocations_feeding_it() {
    let out = tempfile::tempdir().expect("tempdir");
    let scratch = tempfile::tempdir().expect("tempdir");
    let args = Args {
        outdir: Some(out.path().to_path_buf()),
        quiet: true,
        document: fixture("wf-provenance.cwl").display().to_string(),
        ..Args::default()
    };
    let exec = Recording { local: LocalExecutor::new(scratch.path().join("jobs")), seen: Default::default() };
    let v = run_with(&args, &exec, scratch.path()).expect("the run succeeds");
    let all = v["all"]["location"].as_str().expect("location").trim_start_matches("file://").to_owned();
    assert_eq!(std::fs::read_to_string(all).expect("all"), "X\nY\n");
    // Ready steps run in the document's order of steps; compare in key order.
    let mut seen = exec.seen.lock().expect("lock").clone();
    seen.sort();
    let shouts = vec!["shout.0".to_owned(), "shout.1".to_owned()];
    assert_eq!(
        seen,
        [
            // Through the ExpressionTool (no invocation of its own) and the sub-workflow's input.
            ("inner.gather".to_owned(), shouts),
            // Fed by a default only.
            ("lone".to_owned(), vec![]),
            ("shout.0".to_owned(), vec![]),
            ("shout.1".to_owned(), vec![]),
        ]
    );
}
