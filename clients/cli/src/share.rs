//! `panda share list`: the server's global shares, each leaf's target and its jobs now.

use clap::Subcommand;
use panda_client::ServerClient;
use panda_proto::server::v1 as server;
use serde_json::json;

use crate::render::{Format, table};

/// `panda share` subcommands.
#[derive(Subcommand)]
pub enum ShareCommand {
    /// Every leaf share: parent, target %, running jobs (and their % of all running), queued jobs.
    List,
}

/// Runs a `panda share` command.
///
/// # Errors
/// The server's answer.
pub async fn run(client: &ServerClient, command: ShareCommand, format: Format) -> anyhow::Result<()> {
    match command {
        ShareCommand::List => {
            let response = client.shares.clone().list_shares(server::ListSharesRequest {}).await?.into_inner();
            print(&response, format);
        }
    }
    Ok(())
}

fn print(response: &server::ListSharesResponse, format: Format) {
    match format {
        Format::Json => {
            let shares: Vec<_> = response
                .shares
                .iter()
                .map(|s| {
                    json!({"name": s.name, "parent": s.parent, "target_percent": s.target_percent,
                           "running": s.running, "running_percent": s.running_percent, "queued": s.queued})
                })
                .collect();
            crate::render::emit(json!({"default_share": response.default_share, "shares": shares}).to_string());
        }
        Format::Table => {
            let mut t = table(&["SHARE", "PARENT", "TARGET %", "RUNNING", "RUNNING %", "QUEUED"]);
            for s in &response.shares {
                let name =
                    if s.name == response.default_share { format!("{} (default)", s.name) } else { s.name.clone() };
                t.add_row(vec![
                    name,
                    s.parent.clone(),
                    format!("{:.1}", s.target_percent),
                    s.running.to_string(),
                    format!("{:.1}", s.running_percent),
                    s.queued.to_string(),
                ]);
            }
            crate::render::emit(t.to_string());
        }
    }
}
