//! `panda harvester ...`: a site admin's view of one harvester (`--harvester-url`): its queues
//! with worker counts per state, a queue's workers, one worker with its batch ID and logs, and
//! killing a worker at its resource.

use anyhow::Context;
use clap::Subcommand;
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use panda_client::HarvesterServiceClient;
use panda_proto::common::v1::WorkerStatus;
use panda_proto::harvester::v1 as wire;
use serde_json::json;

use crate::render::{self, Format};

/// The states shown as columns, in lifecycle order.
const STATES: &[&str] =
    &["pending", "submitted", "ready", "running", "idle", "finished", "failed", "cancelled", "missed"];

/// `panda harvester`.
#[derive(Debug, Subcommand)]
pub enum HarvesterCommand {
    /// Queues with worker counts per state.
    Queues,
    /// Workers of a queue (or all), newest first.
    Workers {
        /// Only this queue's.
        queue: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One worker: state, batch ID, diagnostic and the tail of its logs.
    Worker {
        /// Worker ID.
        worker_id: String,
        /// Bytes from the end of each log.
        #[arg(long, default_value_t = 16_384)]
        tail: u32,
    },
    /// Kills a worker at its resource (scancel, condor_rm, Job deletion, signal); it ends cancelled.
    Kill {
        /// Worker ID.
        worker_id: String,
        /// Recorded as the worker's diagnostic.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

fn status_name(value: i32) -> String {
    WorkerStatus::try_from(value)
        .map(|s| s.as_str_name().trim_start_matches("WORKER_STATUS_").to_lowercase())
        .unwrap_or_else(|_| value.to_string())
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic).set_header(header);
    table
}

/// Runs one command against the harvester at `url`.
///
/// # Errors
/// The connection or the call's status.
pub async fn run(url: &str, command: HarvesterCommand, format: Format) -> anyhow::Result<()> {
    let mut client = HarvesterServiceClient::new(panda_client::channel(url)?);
    match command {
        HarvesterCommand::Queues => {
            let queues = client.list_queues(wire::ListQueuesRequest {}).await?.into_inner().queues;
            match format {
                Format::Json => out!(
                    "{}",
                    serde_json::Value::Array(
                        queues
                            .iter()
                            .map(|q| json!({"name": q.name, "plugin": q.plugin, "max_workers": q.max_workers,
                                            "workers_by_status": q.workers_by_status}))
                            .collect()
                    )
                ),
                Format::Table => {
                    let mut header = vec!["QUEUE", "PLUGIN", "MAX"];
                    header.extend(STATES.iter().copied());
                    let mut t = table(&header);
                    for q in &queues {
                        let mut row = vec![q.name.clone(), q.plugin.clone(), q.max_workers.to_string()];
                        row.extend(
                            STATES.iter().map(|s| q.workers_by_status.get(*s).copied().unwrap_or(0).to_string()),
                        );
                        t.add_row(row);
                    }
                    out!("{t}");
                }
            }
        }
        HarvesterCommand::Workers { queue, limit } => {
            let request = wire::ListWorkersRequest { queue: queue.unwrap_or_default(), limit };
            render::workers(format, &client.list_workers(request).await?.into_inner().workers);
        }
        HarvesterCommand::Worker { worker_id, tail } => {
            let response =
                client.get_worker(wire::GetWorkerRequest { worker_id, log_tail_bytes: tail }).await?.into_inner();
            let worker = response.worker.context("the harvester answered without a worker")?;
            match format {
                Format::Json => out!(
                    "{}",
                    json!({
                        "worker_id": worker.worker_id, "queue": worker.queue, "plugin": response.plugin,
                        "status": status_name(worker.status), "batch_id": worker.batch_id,
                        "exit_code": worker.exit_code, "diag": worker.diag, "work_dir": worker.work_dir,
                        "logs": response.logs.iter().map(|l| json!({"name": l.name, "text": l.text,
                                                                      "truncated": l.truncated})).collect::<Vec<_>>(),
                        "logs_diag": response.logs_diag,
                    })
                ),
                Format::Table => {
                    out!("worker    {}", worker.worker_id);
                    out!("queue     {} ({})", worker.queue, response.plugin);
                    out!("status    {}", status_name(worker.status));
                    out!("batch id  {}", worker.batch_id);
                    if let Some(code) = worker.exit_code {
                        out!("exit code {code}");
                    }
                    if !worker.diag.is_empty() {
                        out!("diag      {}", worker.diag);
                    }
                    out!("work dir  {}", worker.work_dir);
                    if !response.logs_diag.is_empty() {
                        out!("logs      {}", response.logs_diag);
                    }
                    for log in &response.logs {
                        out!();
                        let cut = if log.truncated { " (last bytes)" } else { "" };
                        out!("==> {}{cut} <==", log.name);
                        out!("{}", log.text.trim_end());
                    }
                }
            }
        }
        HarvesterCommand::Kill { worker_id, reason } => {
            let response = client
                .kill_worker(wire::KillWorkerRequest { worker_id: worker_id.clone(), reason })
                .await?
                .into_inner();
            let status = status_name(response.status);
            match format {
                Format::Json => out!("{}", json!({"worker_id": worker_id, "status": status})),
                Format::Table => out!("worker {worker_id} is {status}"),
            }
        }
    }
    Ok(())
}
