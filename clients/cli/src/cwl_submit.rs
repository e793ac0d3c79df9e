//! `panda workflow submit wf.cwl --inputs job.yml`: a CWL run submitted to a running system,
//! returning at once. The document and input object are checked here first (a bad one is refused
//! before anything is stored); then idds gets a workflow with one work, `cwl-runner`, whose
//! one-job task is the runner itself: on a pilot it runs `panda cwl-runner --server URL --idds
//! URL` on the document, which makes its own driven idds workflow (named after the document)
//! with one work per CommandLineTool invocation. The runner's job is followed with `panda
//! workflow watch ID`, the steps with `panda workflow watch` on the run's workflow (the job's
//! stderr names it), and the output object is the driver job's stdout (`panda job logs`).
//!
//! The pilot must see the document, the input files and `--outdir` at the same paths, and run
//! the same `panda` program (the embedded system's pilots on this host do).

use std::path::{Path, PathBuf};

use anyhow::Context;
use panda_proto::idds::v1 as idds;
use panda_proto::server::v1 as server;

/// The workflow that runs `document` with `inputs` through the server at `server_url`.
///
/// # Errors
/// The document or the input object does not load (the message names file, line and field).
pub fn workflow_spec(
    document: &Path,
    inputs: Option<&Path>,
    outdir: Option<&Path>,
    server_url: &str,
    idds_url: &str,
) -> anyhow::Result<idds::WorkflowSpec> {
    let doc = absolute(document)?;
    panda_cwl::load::Loader::new().load(&doc.display().to_string()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let inputs = inputs.map(absolute).transpose()?;
    if let Some(job) = &inputs {
        panda_cwl::runner::load_job(job).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let outdir = match outdir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            absolute(d)?
        }
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    let exe = std::env::current_exe().context("cannot find this program for the runner job")?;
    let mut words = vec![
        exe.display().to_string(),
        "cwl-runner".to_owned(),
        format!("--server={server_url}"),
        format!("--idds={idds_url}"),
        format!("--outdir={}", outdir.display()),
        doc.display().to_string(),
    ];
    words.extend(inputs.map(|p| p.display().to_string()));
    let line: Vec<String> = words.iter().map(|w| format!("'{}'", w.replace('\'', "'\\''"))).collect();
    let stem = doc.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = format!("cwl.{}", clean(&stem));
    let user = std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "cwl".to_owned());
    Ok(idds::WorkflowSpec {
        name: name.clone(),
        user: user.clone(),
        works: vec![idds::WorkSpec {
            name: "cwl-runner".to_owned(),
            parents: Vec::new(),
            task: Some(server::TaskSpec {
                name,
                user,
                // The task command is a template: braces are escaped.
                command: line.join(" ").replace('{', "{{").replace('}', "}}"),
                n_jobs: Some(1),
                // The driver is not rerun on failure: its tools already ran (or failed) once.
                split: Some(server::SplitRules { max_attempts: Some(1), ..Default::default() }),
                ..Default::default()
            }),
        }],
    })
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(p).with_context(|| format!("cannot read {}", p.display()))
}

/// `[A-Za-z0-9._-]`, at most 100 characters.
fn clean(s: &str) -> String {
    let c: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .take(100)
        .collect();
    if c.is_empty() { "workflow".to_owned() } else { c }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../crates/cwl/tests/fixtures").join(name)
    }

    #[test]
    fn the_run_is_one_work_whose_job_runs_the_runner_against_the_server() {
        let out = tempfile::tempdir().expect("tempdir");
        let spec = workflow_spec(
            &fixture("wf-scatter-tools.cwl"),
            None,
            Some(out.path()),
            "http://127.0.0.1:1",
            "http://127.0.0.1:2",
        )
        .expect("spec");
        assert_eq!(spec.name, "cwl.wf-scatter-tools");
        assert_eq!(spec.works.len(), 1);
        let task = spec.works[0].task.as_ref().expect("task");
        assert_eq!(task.n_jobs, Some(1));
        assert!(
            task.command.contains("'cwl-runner' '--server=http://127.0.0.1:1' '--idds=http://127.0.0.1:2'"),
            "{}",
            task.command
        );
        assert!(task.command.ends_with("wf-scatter-tools.cwl'"), "{}", task.command);
    }

    #[test]
    fn bad_documents_and_inputs_are_refused_before_submission() {
        let e = workflow_spec(&fixture("bad-class.cwl"), None, None, "http://x", "http://y").unwrap_err().to_string();
        assert!(e.contains("bad-class.cwl:2: field `class`"), "{e}");
        let dir = tempfile::tempdir().expect("tempdir");
        let job = dir.path().join("job.yml");
        std::fs::write(&job, "a: [1\n").expect("write");
        let e = workflow_spec(&fixture("shout.cwl"), Some(&job), None, "http://x", "http://y").unwrap_err().to_string();
        assert!(e.contains("job.yml"), "{e}");
        let e = workflow_spec(&fixture("missing.cwl"), None, None, "http://x", "http://y").unwrap_err().to_string();
        assert!(e.contains("missing.cwl"), "{e}");
    }
}
