//! `panda up`: every service in this process on the embedded default; optionally runs a workflow
//! with a progress display and a summary, then keeps serving until Ctrl-C.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use panda_all::{AllConfig, Cluster};
use panda_client::{ServerClient, WorkflowServiceClient};
use panda_proto::idds::v1 as idds;
use panda_proto::server::v1 as server;
use tokio_util::sync::CancellationToken;

use crate::render;

/// Options of `panda up`.
pub struct UpOptions {
    /// Workflow to run.
    pub workflow: Option<PathBuf>,
    /// Stop once the workflow ended.
    pub exit_when_done: bool,
}

/// Runs `panda up`; returns the process exit code.
pub async fn up(config: AllConfig, options: UpOptions, shutdown: CancellationToken) -> anyhow::Result<i32> {
    // Pilots are this same program: `panda pilot ...`.
    let exe = std::env::current_exe().context("cannot find this program to start pilots")?;
    let spec = options.workflow.as_deref().map(|f| crate::workflow::document(f, None, None)).transpose()?;
    let started = Instant::now();
    let cluster = Cluster::start(config, vec![exe.display().to_string(), "pilot".to_owned()]).await?;
    eprintln!(
        "panda is up ({:.1}s): server {}  idds {}  harvester {}  jedi {}  data {}",
        started.elapsed().as_secs_f64(),
        cluster.server_url,
        cluster.idds_url,
        cluster.harvester_url,
        cluster.jedi_url,
        cluster.data_dir.display()
    );
    let mut code = 0;
    if let Some(spec) = spec {
        let outcome = tokio::select! {
            result = run_workflow(&cluster, spec) => Some(result),
            () = shutdown.cancelled() => None,
            () = cluster.any_stopped() => {
                eprintln!("a service stopped unexpectedly; see the log above");
                code = 2;
                None
            }
        };
        match outcome {
            Some(Ok(finished)) => code = if finished { 0 } else { 1 },
            Some(Err(error)) => {
                eprintln!("error: {error:#}");
                code = 1;
            }
            None => {}
        }
        if options.exit_when_done || shutdown.is_cancelled() || code == 2 {
            cluster.stop().await?;
            return Ok(code);
        }
    }
    eprintln!(
        "\nservices keep running; in another terminal try:\n  panda task list\n  panda task show <ID>\n  panda job list --task <ID>\n  panda workflow list\nCtrl-C stops them."
    );
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = cluster.any_stopped() => code = 2,
    }
    eprintln!("stopping...");
    cluster.stop().await?;
    Ok(code)
}

async fn run_workflow(cluster: &Cluster, spec: idds::WorkflowDocument) -> anyhow::Result<bool> {
    let mut workflows = WorkflowServiceClient::new(panda_client::channel(&cluster.idds_url)?);
    let server = ServerClient::new(&cluster.server_url)?;
    let started = Instant::now();
    let name = spec.name.clone();
    let workflow_id = workflows
        .submit_workflow(idds::SubmitWorkflowRequest { spec: None, document: Some(spec) })
        .await
        .map_err(|s| anyhow::anyhow!("workflow {name:?} refused: {}", s.message()))?
        .into_inner()
        .workflow_id;
    eprintln!("submitted workflow {workflow_id} ({name})");
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} jobs  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let (workflow, tasks) = loop {
        let workflow = workflows
            .get_workflow(idds::GetWorkflowRequest { workflow_id })
            .await?
            .into_inner()
            .workflow
            .context("idds answered without a workflow")?;
        let tasks = tasks_of(&server, &workflow).await?;
        let (total, done) = tasks.iter().fold((0, 0), |(t, d), task| {
            let c = task.job_counts.unwrap_or_default();
            (t + c.total, d + c.finished + c.failed + c.cancelled)
        });
        bar.set_length(u64::from(total));
        bar.set_position(u64::from(done));
        bar.set_message(
            workflow
                .works
                .iter()
                .map(|w| format!("{}:{}", w.name, render::work_status(w.status)))
                .collect::<Vec<_>>()
                .join(" "),
        );
        if workflow.status != idds::WorkflowStatus::Running as i32 {
            bar.finish_and_clear();
            break (workflow, tasks);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    summary(&workflow, &tasks, &server, &cluster.data_dir, started.elapsed()).await?;
    crate::hpo::show_studies_of(&cluster.idds_url, workflow_id).await?;
    Ok(workflow.status == idds::WorkflowStatus::Finished as i32)
}

async fn tasks_of(server: &ServerClient, workflow: &idds::Workflow) -> anyhow::Result<Vec<server::Task>> {
    let mut tasks = Vec::new();
    for work in workflow.works.iter().filter(|w| w.task_id != 0) {
        let task =
            server.tasks.clone().get_task(server::GetTaskRequest { task_id: work.task_id }).await?.into_inner().task;
        tasks.extend(task);
    }
    Ok(tasks)
}

async fn summary(
    workflow: &idds::Workflow,
    tasks: &[server::Task],
    server: &ServerClient,
    data_dir: &Path,
    elapsed: Duration,
) -> anyhow::Result<()> {
    out!(
        "\nworkflow {} {:?} {} in {:.1}s",
        workflow.workflow_id,
        workflow.name,
        render::workflow_status(workflow.status),
        elapsed.as_secs_f64()
    );
    render::workflow(render::Format::Table, workflow);
    out!("tasks:");
    render::tasks(render::Format::Table, tasks);
    let mut jobs = Vec::new();
    for task in tasks {
        let response = server
            .jobs
            .clone()
            .list_jobs(server::ListJobsRequest { task_id: task.task_id, ..Default::default() })
            .await?
            .into_inner();
        jobs.extend(response.jobs);
    }
    out!("jobs:");
    render::jobs(render::Format::Table, &jobs);
    out!("outputs:");
    // The leaves' outputs are the workflow's results: show them.
    let parents: std::collections::BTreeSet<&str> =
        workflow.works.iter().flat_map(|w| w.parents.iter().map(String::as_str)).collect();
    for task in tasks {
        let spec = task.spec.clone().unwrap_or_default();
        if spec.output_dataset.is_empty() {
            continue;
        }
        let dataset = server
            .internal
            .clone()
            .get_dataset(server::GetDatasetRequest { name: spec.output_dataset.clone() })
            .await?
            .into_inner()
            .dataset
            .unwrap_or_default();
        let bytes: u64 = dataset.files.iter().map(|f| f.size_bytes).sum();
        out!("  {} ({}): {} files, {} bytes", dataset.name, dataset.status, dataset.files.len(), bytes);
        let is_leaf = workflow.works.iter().any(|w| w.task_id == task.task_id && !parents.contains(w.name.as_str()));
        if is_leaf {
            for file in &dataset.files {
                let path = data_dir.join("storage").join(&file.lfn);
                if let Ok(text) = std::fs::read_to_string(&path) {
                    for line in text.lines().take(10) {
                        out!("    {}: {line}", file.lfn);
                    }
                }
            }
        }
    }
    Ok(())
}
