//! Independent invocations run concurrently (`--parallel N`), results do not depend on the
//! order they end in, and one failure stops the others. The tool records its own start and end
//! times; assertions are on those records (overlap, order), never on wall-clock bounds.

use std::path::{Path, PathBuf};

use panda_cwl::CwlError;
use panda_cwl::exec::LocalExecutor;
use panda_cwl::runner::{Args, run_with};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Runs wf-parallel.cwl with `parallel` slots; `marks` receives started.N / ended.N files.
fn run(parallel: usize, job: &str, marks: &Path) -> Result<Value, CwlError> {
    let out = tempfile::tempdir().expect("tempdir");
    let scratch = tempfile::tempdir().expect("tempdir");
    let job_path = scratch.path().join("job.yml");
    std::fs::write(&job_path, format!("{job}\nmarks: {}\n", marks.display())).expect("write job");
    let args = Args {
        outdir: Some(out.path().to_path_buf()),
        quiet: true,
        document: fixture("wf-parallel.cwl").display().to_string(),
        job: Some(job_path),
        parallel: Some(parallel),
        ..Args::default()
    };
    let exec = LocalExecutor::new(scratch.path().join("jobs"));
    run_with(&args, &exec, scratch.path())
}

/// `item start end` as the tool wrote it.
fn span(v: &Value) -> (i64, f64, f64) {
    let text = v.as_str().expect("a span");
    let parts: Vec<&str> = text.split(' ').collect();
    assert_eq!(parts.len(), 3, "{text}");
    (parts[0].parse().expect("item"), parts[1].parse().expect("start"), parts[2].parse().expect("end"))
}

/// The most invocations that were running at one moment.
fn most_at_once(spans: &[(i64, f64, f64)]) -> usize {
    spans.iter().map(|(_, s, _)| spans.iter().filter(|(_, s2, e2)| s2 <= s && s < e2).count()).max().unwrap_or(0)
}

#[test]
fn scatter_elements_and_independent_steps_overlap_up_to_the_bound_in_document_order() {
    let marks = tempfile::tempdir().expect("tempdir");
    let v = run(4, "items: [0, 1, 2, 3, 4, 5, 6, 7]", marks.path()).expect("the run succeeds");
    let spans: Vec<(i64, f64, f64)> = v["spans"].as_array().expect("spans").iter().map(span).collect();
    // Scatter order, whatever order the elements ended in.
    assert_eq!(spans.iter().map(|s| s.0).collect::<Vec<_>>(), (0..8).collect::<Vec<_>>());
    let solo = span(&v["solo"]);
    let mut all = spans.clone();
    all.push(solo);
    let most = most_at_once(&all);
    assert!(most >= 2, "nothing overlapped: {all:?}");
    assert!(most <= 4, "more than --parallel 4 ran at once: {all:?}");
    // The step fed by both ran after every one of them ended.
    let last = span(&v["last"]);
    assert_eq!(last.0, 200);
    assert!(all.iter().all(|(_, _, e)| *e <= last.1), "last started early: {last:?} vs {all:?}");
}

#[test]
fn parallel_one_runs_one_invocation_at_a_time() {
    let marks = tempfile::tempdir().expect("tempdir");
    let v = run(1, "items: [0, 1, 2]\nnap: 0", marks.path()).expect("the run succeeds");
    let mut all: Vec<(i64, f64, f64)> = v["spans"].as_array().expect("spans").iter().map(span).collect();
    all.push(span(&v["solo"]));
    assert_eq!(most_at_once(&all), 1, "{all:?}");
}

#[test]
fn one_failing_element_fails_the_run_and_stops_the_others() {
    let marks = tempfile::tempdir().expect("tempdir");
    // The first invocation to start fails at once; the others would nap 60 s unless killed.
    // Which one gets a slot first is up to the scheduler (three threads want two slots), so the
    // failing one is whichever started first, never a fixed element that might wait behind naps.
    let err =
        run(2, "items: [0, 1, 2, 3, 4, 5, 6, 7]\nfail_first: true\nnap: 60", marks.path()).expect_err("the run fails");
    assert!(matches!(err, CwlError::Failed(_)), "{err:?}");
    assert!(err.to_string().contains("exited with code 3"), "{err}");
    assert_eq!(err.exit_code(), 1);
    let names: Vec<String> = std::fs::read_dir(marks.path())
        .expect("marks")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    // Killed, not finished; and with 2 slots most elements never started.
    assert!(!names.iter().any(|n| n.starts_with("ended.")), "{names:?}");
    let started = names.iter().filter(|n| n.starts_with("started.")).count();
    assert!((1..=3).contains(&started), "{names:?}");
}
