//! `panda hpo ...`: HPO studies on idds — list them, show one with its points, their losses and
//! the best (docs/hpo.md).

use anyhow::Context;
use clap::Subcommand;
use panda_client::HpoServiceClient;
use panda_proto::idds::v1 as idds;
use serde_json::{Value, json};

use crate::render::{self, Format};

/// `panda hpo` subcommands.
#[derive(Subcommand)]
pub enum HpoCommand {
    /// Lists studies, newest first.
    List {
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One study: settings, every point with its parameters and loss, the best point.
    Show {
        /// Study ID (`panda hpo list`, or the `study_id` output of an hpo work).
        id: u64,
    },
}

/// Runs a `panda hpo` command.
///
/// # Errors
/// Connection and RPC failures (the status message names the problem).
pub async fn run(command: HpoCommand, idds_url: &str, format: Format) -> anyhow::Result<u8> {
    let mut client = HpoServiceClient::new(panda_client::channel(idds_url)?);
    match command {
        HpoCommand::List { limit } => {
            let studies = client.list_studies(idds::ListStudiesRequest { limit }).await?.into_inner().studies;
            list(format, &studies);
        }
        HpoCommand::Show { id } => {
            let study = client
                .get_study(idds::GetStudyRequest { study_id: id })
                .await?
                .into_inner()
                .study
                .context("idds answered without a study")?;
            show(format, &study);
        }
    }
    Ok(0)
}

/// Prints the studies a workflow's hpo works ran (`panda up --workflow`).
///
/// # Errors
/// Connection and RPC failures.
pub async fn show_studies_of(idds_url: &str, workflow_id: u64) -> anyhow::Result<()> {
    let mut client = HpoServiceClient::new(panda_client::channel(idds_url)?);
    let studies = client.list_studies(idds::ListStudiesRequest { limit: 1000 }).await?.into_inner().studies;
    for study in studies.iter().rev().filter(|s| s.workflow_id == workflow_id) {
        let full = client
            .get_study(idds::GetStudyRequest { study_id: study.study_id })
            .await?
            .into_inner()
            .study
            .context("idds answered without a study")?;
        out!("hpo:");
        show(Format::Table, &full);
    }
    Ok(())
}

fn params(json_text: &str) -> Value {
    serde_json::from_str(json_text).unwrap_or(Value::Null)
}

/// `x=1.5 n=2`: a point's parameters for a table cell.
fn params_text(json_text: &str) -> String {
    match params(json_text) {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| match v {
                Value::Number(n) => match n.as_f64() {
                    Some(f) if !n.is_i64() => format!("{k}={}", short(f)),
                    _ => format!("{k}={n}"),
                },
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => json_text.to_owned(),
    }
}

/// Six significant digits.
fn short(x: f64) -> String {
    let text = format!("{x:.6}");
    let trimmed = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { &text };
    if x != 0.0 && (x.abs() < 1e-3 || x.abs() >= 1e6) { format!("{x:.5e}") } else { trimmed.to_owned() }
}

fn loss_text(loss: Option<f64>) -> String {
    loss.map(short).unwrap_or_default()
}

fn point_json(p: &idds::HpoPoint) -> Value {
    json!({
        "seq": p.seq,
        "iteration": p.iteration,
        "params": params(&p.params_json),
        "status": p.status,
        "loss": p.loss,
        "task_id": if p.task_id == 0 { Value::Null } else { json!(p.task_id) },
        "reason": p.reason,
    })
}

fn study_json(s: &idds::Study) -> Value {
    let mut value = json!({
        "study_id": s.study_id,
        "name": s.name,
        "user": s.user,
        "status": s.status,
        "reason": s.reason,
        "optimizer": s.optimizer,
        "max_points": s.max_points,
        "points_per_iteration": s.points_per_iteration,
        "spec": params(&s.spec_json),
        "workflow_id": if s.workflow_id == 0 { Value::Null } else { json!(s.workflow_id) },
        "work_key": s.work_key,
        "evaluated_by": if s.has_task { "tasks" } else { "caller" },
        "points_total": s.points_total,
        "points_done": s.points_done,
        "points_failed": s.points_failed,
        "best": if s.best_seq == 0 { Value::Null } else {
            json!({"seq": s.best_seq, "loss": s.best_loss, "params": params(&s.best_params_json)})
        },
        "created_at": render::time_json(&s.created_at),
        "ended_at": render::time_json(&s.ended_at),
    });
    if !s.points.is_empty()
        && let Value::Object(map) = &mut value
    {
        map.insert("points".into(), Value::Array(s.points.iter().map(point_json).collect()));
    }
    value
}

fn list(format: Format, studies: &[idds::Study]) {
    match format {
        Format::Json => out!("{}", Value::Array(studies.iter().map(study_json).collect())),
        Format::Table => {
            let mut t = render::table(&[
                "ID",
                "NAME",
                "STATUS",
                "OPTIMIZER",
                "POINTS",
                "DONE",
                "FAILED",
                "BEST LOSS",
                "CREATED",
            ]);
            for s in studies {
                t.add_row(vec![
                    s.study_id.to_string(),
                    s.name.clone(),
                    s.status.clone(),
                    s.optimizer.clone(),
                    format!("{}/{}", s.points_total, s.max_points),
                    s.points_done.to_string(),
                    s.points_failed.to_string(),
                    loss_text(s.best_loss),
                    render::time_text(&s.created_at),
                ]);
            }
            out!("{t}");
        }
    }
}

fn show(format: Format, s: &idds::Study) {
    match format {
        Format::Json => out!("{}", study_json(s)),
        Format::Table => {
            out!(
                "study {} {:?}: {}{}",
                s.study_id,
                s.name,
                s.status,
                if s.reason.is_empty() { String::new() } else { format!(" ({})", s.reason) }
            );
            let source = if s.workflow_id == 0 {
                String::new()
            } else {
                format!(", workflow {} work {}", s.workflow_id, s.work_key)
            };
            out!(
                "optimizer {}, {} of at most {} points, {} per iteration{source}",
                s.optimizer,
                s.points_total,
                s.max_points,
                s.points_per_iteration
            );
            let mut t = render::table(&["#", "ITER", "STATUS", "LOSS", "PARAMETERS", "TASK", "REASON"]);
            for p in &s.points {
                let marker = if p.seq == s.best_seq { format!("{} *", p.seq) } else { p.seq.to_string() };
                t.add_row(vec![
                    marker,
                    p.iteration.to_string(),
                    p.status.clone(),
                    loss_text(p.loss),
                    params_text(&p.params_json),
                    if p.task_id == 0 { String::new() } else { p.task_id.to_string() },
                    p.reason.clone(),
                ]);
            }
            out!("{t}");
            if s.best_seq == 0 {
                out!("best: none yet");
            } else {
                out!(
                    "best: point {} loss {} ({})",
                    s.best_seq,
                    loss_text(s.best_loss),
                    params_text(&s.best_params_json)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_and_losses_are_shown_short() {
        assert_eq!(params_text(r#"{"act":"relu","n":3,"x":1.2345678901}"#), "act=relu n=3 x=1.234568");
        assert_eq!(short(0.5), "0.5");
        assert_eq!(short(2.0), "2");
        assert_eq!(short(0.000012345), "1.23450e-5");
        assert_eq!(loss_text(None), "");
    }

    #[test]
    fn json_has_points_and_the_best() {
        let study = idds::Study {
            study_id: 7,
            status: "finished".into(),
            has_task: true,
            best_seq: 2,
            best_loss: Some(0.25),
            best_params_json: r#"{"x":1.0}"#.into(),
            points: vec![idds::HpoPoint {
                seq: 2,
                iteration: 1,
                params_json: r#"{"x":1.0}"#.into(),
                status: "done".into(),
                loss: Some(0.25),
                task_id: 12,
                reason: String::new(),
            }],
            ..Default::default()
        };
        let value = study_json(&study);
        assert_eq!(value["best"], json!({"seq": 2, "loss": 0.25, "params": {"x": 1.0}}));
        assert_eq!(value["points"][0]["task_id"], 12);
        assert_eq!(value["evaluated_by"], "tasks");
        assert_eq!(value["workflow_id"], Value::Null);
    }
}
