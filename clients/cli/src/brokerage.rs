//! `panda task brokerage ID`: why JEDI sent a task's jobs where it did, or why it is pending:
//! every queue a filter dropped (with the filter and the reason) and how each chosen queue scored.

use chrono::{TimeZone, Utc};
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use panda_client::ServerClient;
use panda_proto::server::v1 as server;
use serde_json::json;

use crate::render::Format;

/// Prints a task's latest brokerage explanation.
pub async fn show(client: &ServerClient, task_id: u64, format: Format) -> anyhow::Result<()> {
    let explanation = client
        .brokerage
        .clone()
        .get_brokerage(server::GetBrokerageRequest { task_id })
        .await?
        .into_inner()
        .explanation
        .ok_or_else(|| anyhow::anyhow!("server answered without an explanation"))?;
    print(&explanation, format);
    Ok(())
}

fn decided_at(e: &server::BrokerageExplanation) -> String {
    e.decided_at
        .as_ref()
        .and_then(|t| Utc.timestamp_opt(t.seconds, t.nanos.max(0) as u32).single())
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

fn print(e: &server::BrokerageExplanation, format: Format) {
    match format {
        Format::Json => {
            let value = json!({
                "task_id": e.task_id,
                "decided_at": decided_at(e),
                "pending": e.pending,
                "summary": e.summary,
                "n_jobs": e.n_jobs,
                "chosen": e.chosen.iter().map(|c| json!({
                    "queue": c.queue, "jobs": c.jobs, "weight": c.weight, "slots": c.slots, "queued": c.queued,
                    "assigned": c.assigned, "taken": c.taken, "many_assigned": c.many_assigned, "locality": c.locality,
                })).collect::<Vec<_>>(),
                "dropped": e.dropped.iter().map(|d| json!({"queue": d.queue, "filter": d.filter, "reason": d.reason}))
                    .collect::<Vec<_>>(),
            });
            crate::render::emit(value.to_string());
        }
        Format::Table => {
            let state = if e.pending { "PENDING (no queue can take it)" } else { "brokered" };
            crate::render::emit(format!("task {}: {state} at {}", e.task_id, decided_at(e)));
            crate::render::emit(e.summary.clone());
            if !e.chosen.is_empty() {
                let mut t = table(&["QUEUE", "JOBS", "WEIGHT", "R", "QUEUED", "ASSIGNED", "TAKEN", "LOCALITY"]);
                for c in &e.chosen {
                    t.add_row(vec![
                        c.queue.clone(),
                        c.jobs.to_string(),
                        format!("{:.4}", c.weight),
                        c.slots.to_string(),
                        c.queued.to_string(),
                        c.assigned.to_string(),
                        c.taken.to_string(),
                        format!("{:.2}", c.locality),
                    ]);
                }
                crate::render::emit(format!(
                    "chosen (weight = (R + 1) / ((queued + assigned + taken + 10) × many_assigned) × locality):\n{t}"
                ));
            }
            if !e.dropped.is_empty() {
                let mut t = table(&["QUEUE", "FILTER", "REASON"]);
                for d in &e.dropped {
                    t.add_row(vec![d.queue.clone(), d.filter.clone(), d.reason.clone()]);
                }
                crate::render::emit(format!("dropped:\n{t}"));
            }
        }
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic).set_header(header.to_vec());
    t
}
