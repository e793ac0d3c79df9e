//! `panda workflow ...`: submit (native YAML/JSON or a Snakefile), check, list, show (per-work
//! states and counts, or the graph as text, DOT or Mermaid), watch, abort, retry, suspend, resume.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use panda_client::{ServerClient, WorkflowServiceClient};
use panda_proto::idds::v1 as idds;
use panda_proto::server::v1 as server;
use serde_json::json;

use crate::render::{self, Format};

/// A workflow file's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LanguageArg {
    /// The native YAML/JSON format (docs/workflow-format.md).
    Native,
    /// A Snakefile (the documented subset).
    Snakemake,
}

/// Graph output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphArg {
    /// Indented text.
    Text,
    /// Graphviz DOT (`| dot -Tsvg`).
    Dot,
    /// Mermaid flowchart.
    Mermaid,
}

impl GraphArg {
    fn wire(self) -> i32 {
        match self {
            GraphArg::Text => idds::GraphFormat::Text as i32,
            GraphArg::Dot => idds::GraphFormat::Dot as i32,
            GraphArg::Mermaid => idds::GraphFormat::Mermaid as i32,
        }
    }
}

/// `panda workflow` subcommands.
#[derive(Subcommand)]
pub enum WorkflowCommand {
    /// Submits a workflow file: native YAML/JSON, a Snakefile (named Snakefile or *.smk), or a
    /// CWL document (*.cwl, with --inputs; its run is one work whose job runs the CWL runner
    /// against this server, each tool a task of its own).
    Submit {
        /// The file.
        file: PathBuf,
        /// CWL: the input object (YAML or JSON).
        #[arg(long)]
        inputs: Option<PathBuf>,
        /// CWL: where output files go (default: the current directory); the pilot must see it.
        #[arg(long)]
        outdir: Option<PathBuf>,
        /// Its language (default: from the file name).
        #[arg(long, value_enum)]
        language: Option<LanguageArg>,
        /// The workflow's name where the file has none (Snakemake; default: the directory's name).
        #[arg(long)]
        name: Option<String>,
        /// Follow it until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// Parses and validates a file on idds without submitting it; prints the graph.
    Check {
        /// The file.
        file: PathBuf,
        /// Its language (default: from the file name).
        #[arg(long, value_enum)]
        language: Option<LanguageArg>,
        /// Graph output.
        #[arg(long, value_enum, default_value_t = GraphArg::Text)]
        graph: GraphArg,
    },
    /// Lists workflows, newest first.
    List {
        /// How many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One workflow with the state and counts of every work, or its graph.
    Show {
        /// Workflow ID.
        id: u64,
        /// Print the graph instead (text, or --graph-format dot|mermaid).
        #[arg(long)]
        graph: bool,
        /// Graph output.
        #[arg(long, value_enum, default_value_t = GraphArg::Text)]
        graph_format: GraphArg,
    },
    /// Follows a workflow: a line per work change until it ends.
    Watch {
        /// Workflow ID.
        id: u64,
    },
    /// Aborts a workflow (kills its running tasks).
    Abort {
        /// Workflow ID.
        id: u64,
    },
    /// Runs a workflow's failed works again.
    Retry {
        /// Workflow ID.
        id: u64,
    },
    /// Suspends a workflow (pauses its tasks; submits nothing new).
    Suspend {
        /// Workflow ID.
        id: u64,
    },
    /// Resumes a suspended workflow.
    Resume {
        /// Workflow ID.
        id: u64,
    },
}

/// Reads a workflow file as a document for idds.
///
/// # Errors
/// The file cannot be read.
pub fn document(
    file: &Path,
    language: Option<LanguageArg>,
    name: Option<String>,
) -> anyhow::Result<idds::WorkflowDocument> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let file_name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let language = language.unwrap_or(if file_name.starts_with("Snakefile") || file_name.ends_with(".smk") {
        LanguageArg::Snakemake
    } else {
        LanguageArg::Native
    });
    let default_name = file
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().and_then(|d| d.file_name()).map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "snakemake".into());
    Ok(idds::WorkflowDocument {
        language: match language {
            LanguageArg::Native => idds::WorkflowLanguage::Native as i32,
            LanguageArg::Snakemake => idds::WorkflowLanguage::Snakemake as i32,
        },
        text,
        name: name.unwrap_or(default_name),
        user: String::new(),
    })
}

/// Runs a `panda workflow` command.
///
/// # Errors
/// The call failed (the status message says why).
pub async fn run(command: WorkflowCommand, idds_url: &str, server_url: &str, format: Format) -> anyhow::Result<u8> {
    let mut client = WorkflowServiceClient::new(panda_client::channel(idds_url)?);
    match command {
        WorkflowCommand::Submit { file, inputs, outdir, language, name, watch } => {
            let request = if file.extension().is_some_and(|e| e == "cwl") && language.is_none() {
                let spec = crate::cwl_submit::workflow_spec(
                    &file,
                    inputs.as_deref(),
                    outdir.as_deref(),
                    server_url,
                    idds_url,
                )?;
                idds::SubmitWorkflowRequest { spec: Some(spec), document: None }
            } else {
                anyhow::ensure!(
                    inputs.is_none() && outdir.is_none(),
                    "--inputs and --outdir are for CWL documents (*.cwl)"
                );
                idds::SubmitWorkflowRequest { spec: None, document: Some(document(&file, language, name)?) }
            };
            let id = client
                .submit_workflow(request)
                .await
                .map_err(|s| anyhow::anyhow!("{} refused: {}", file.display(), s.message()))?
                .into_inner()
                .workflow_id;
            match format {
                Format::Json => out!("{}", json!({"workflow_id": id})),
                Format::Table => out!("workflow {id} submitted; follow it with: panda workflow watch {id}"),
            }
            if watch {
                return watch_workflow(&mut client, id, format).await;
            }
        }
        WorkflowCommand::Check { file, language, graph } => {
            let document = document(&file, language, None)?;
            let answer = client
                .check_workflow(idds::CheckWorkflowRequest { document: Some(document), format: graph.wire() })
                .await
                .map_err(|s| anyhow::anyhow!("{} is not valid: {}", file.display(), s.message()))?
                .into_inner();
            match format {
                Format::Json => out!("{}", json!({"nodes": answer.nodes, "graph": answer.graph})),
                Format::Table => out!("{}", answer.graph.trim_end()),
            }
        }
        WorkflowCommand::List { limit } => {
            let response = client.list_workflows(idds::ListWorkflowsRequest { limit }).await?;
            render::workflows(format, &response.into_inner().workflows);
        }
        WorkflowCommand::Show { id, graph, graph_format } => {
            if graph {
                let answer = client
                    .get_workflow_graph(idds::GetWorkflowGraphRequest { workflow_id: id, format: graph_format.wire() })
                    .await?
                    .into_inner();
                out!("{}", answer.graph.trim_end());
            } else {
                let mut workflow = client
                    .get_workflow(idds::GetWorkflowRequest { workflow_id: id })
                    .await?
                    .into_inner()
                    .workflow
                    .context("idds answered without a workflow")?;
                live_counts(server_url, &mut workflow).await;
                show(format, &workflow);
            }
        }
        WorkflowCommand::Watch { id } => return watch_workflow(&mut client, id, format).await,
        WorkflowCommand::Abort { id } => {
            let w = client.abort_workflow(idds::AbortWorkflowRequest { workflow_id: id }).await?.into_inner().workflow;
            report(format, "aborted", w);
        }
        WorkflowCommand::Retry { id } => {
            let answer = client.retry_workflow(idds::RetryWorkflowRequest { workflow_id: id }).await?.into_inner();
            if format == Format::Table {
                out!("{} works run again", answer.retried);
            }
            report(format, "retried", answer.workflow);
        }
        WorkflowCommand::Suspend { id } => {
            let w =
                client.suspend_workflow(idds::SuspendWorkflowRequest { workflow_id: id }).await?.into_inner().workflow;
            report(format, "suspended", w);
        }
        WorkflowCommand::Resume { id } => {
            let w =
                client.resume_workflow(idds::ResumeWorkflowRequest { workflow_id: id }).await?.into_inner().workflow;
            report(format, "resumed", w);
        }
    }
    Ok(0)
}

fn report(format: Format, verb: &str, workflow: Option<idds::Workflow>) {
    let Some(w) = workflow else { return };
    match format {
        Format::Json => out!("{}", json!({"workflow_id": w.workflow_id, "status": render::workflow_status(w.status)})),
        Format::Table => out!("workflow {} {verb}: now {}", w.workflow_id, render::workflow_status(w.status)),
    }
}

/// Counts of works still running come from the server (idds records them when a work ends).
async fn live_counts(server_url: &str, workflow: &mut idds::Workflow) {
    let Ok(server) = ServerClient::new(server_url) else { return };
    for work in workflow.works.iter_mut().filter(|w| w.task_id != 0 && w.status == idds::WorkStatus::Submitted as i32) {
        if let Ok(answer) = server.tasks.clone().get_task(server::GetTaskRequest { task_id: work.task_id }).await
            && let Some(task) = answer.into_inner().task
        {
            let counts = task.job_counts.unwrap_or_default();
            let c = work.counts.get_or_insert_default();
            c.jobs_total = counts.total;
            c.jobs_finished = counts.finished;
            c.jobs_failed = counts.failed;
        }
    }
}

fn show(format: Format, w: &idds::Workflow) {
    match format {
        Format::Json => {
            let works: Vec<serde_json::Value> = w
                .works
                .iter()
                .map(|k| {
                    let c = k.counts.unwrap_or_default();
                    json!({"key": k.key, "name": k.name, "kind": k.kind, "status": render::work_status(k.status),
                           "iteration": k.iteration, "reason": k.reason, "parents": k.parents, "task_id": k.task_id,
                           "jobs": {"total": c.jobs_total, "finished": c.jobs_finished, "failed": c.jobs_failed},
                           "files": {"released": c.files_released, "held": c.files_held}, "outputs": k.outputs})
                })
                .collect();
            out!(
                "{}",
                json!({"workflow_id": w.workflow_id, "name": w.name, "user": w.user,
                       "status": render::workflow_status(w.status), "works": works})
            );
        }
        Format::Table => {
            out!("workflow {} {:?}: {}", w.workflow_id, w.name, render::workflow_status(w.status));
            let mut table = comfy_table::Table::new();
            table
                .load_preset(comfy_table::presets::UTF8_FULL_CONDENSED)
                .set_content_arrangement(comfy_table::ContentArrangement::Dynamic)
                .set_header([
                    "WORK",
                    "KIND",
                    "STATUS",
                    "TASK",
                    "JOBS DONE/ALL",
                    "FAILED",
                    "FILES RELEASED/HELD",
                    "NOTE",
                ]);
            for k in &w.works {
                let c = k.counts.unwrap_or_default();
                let mut note = k.reason.clone();
                if !k.outputs.is_empty() {
                    let values: Vec<String> = k.outputs.iter().map(|(key, v)| format!("{key}={v}")).collect();
                    if !note.is_empty() {
                        note.push_str("; ");
                    }
                    note.push_str(&values.join(" "));
                }
                table.add_row(vec![
                    k.key.clone(),
                    k.kind.clone(),
                    render::work_status(k.status),
                    if k.task_id == 0 { String::new() } else { k.task_id.to_string() },
                    format!("{}/{}", c.jobs_finished, c.jobs_total),
                    c.jobs_failed.to_string(),
                    format!("{}/{}", c.files_released, c.files_held),
                    note,
                ]);
            }
            out!("{table}");
        }
    }
}

async fn watch_workflow(
    client: &mut WorkflowServiceClient<tonic::transport::Channel>,
    id: u64,
    format: Format,
) -> anyhow::Result<u8> {
    let mut stream = client.watch_workflow(idds::WatchWorkflowRequest { workflow_id: id }).await?.into_inner();
    let mut seen: std::collections::BTreeMap<String, i32> = std::collections::BTreeMap::new();
    let mut last = None;
    while let Some(update) = stream.message().await? {
        let Some(w) = update.workflow else { continue };
        for k in &w.works {
            if seen.insert(k.key.clone(), k.status) != Some(k.status) {
                match format {
                    Format::Json => out!(
                        "{}",
                        json!({"workflow_id": w.workflow_id, "work": k.key, "status": render::work_status(k.status),
                               "task_id": k.task_id, "reason": k.reason})
                    ),
                    Format::Table => {
                        let task = if k.task_id == 0 { String::new() } else { format!(" task {}", k.task_id) };
                        let reason = if k.reason.is_empty() { String::new() } else { format!(" ({})", k.reason) };
                        out!("{:<30} {}{task}{reason}", k.key, render::work_status(k.status));
                    }
                }
            }
        }
        last = Some(w.status);
    }
    let status = last.unwrap_or_default();
    if format == Format::Table {
        out!("workflow {id}: {}", render::workflow_status(status));
    }
    Ok(if status == idds::WorkflowStatus::Finished as i32 { 0 } else { 1 })
}
