//! External optimizers: idds runs a configured command, writes one JSON request on its stdin and
//! reads one JSON answer from its stdout, within a deadline (docs/hpo.md, "Plug-in protocol").
//!
//! Request: `{"protocol": 1, "space": {...}, "n": 4, "seed": 7, "points": [{"params": {...},
//! "status": "done", "loss": 0.25}, ...]}` — every earlier point of the study, in order, with
//! `loss` null unless done. Answer: `{"points": [{...}, ...]}` — at most `n` points, each with
//! exactly the space's parameters inside their ranges; an empty list ends the study.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::HpoError;
use super::space::{Point, Space};
use super::study::PointStatus;

/// The protocol version written in each request.
pub const PROTOCOL: u32 = 1;

/// One earlier point as a plug-in sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginPoint {
    /// Parameters.
    pub params: Point,
    /// pending, running, done or failed.
    pub status: String,
    /// Loss when done.
    pub loss: Option<f64>,
}

/// What idds writes on the plug-in's stdin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// [`PROTOCOL`].
    pub protocol: u32,
    /// The search space (docs/hpo.md).
    pub space: Space,
    /// How many new points are wanted.
    pub n: u32,
    /// The study's seed.
    pub seed: u64,
    /// Every earlier point.
    pub points: Vec<PluginPoint>,
}

impl Request {
    /// A request for `n` points given the history.
    pub fn new(space: &Space, n: u32, seed: u64, history: &[(Point, PointStatus, Option<f64>)]) -> Self {
        Request {
            protocol: PROTOCOL,
            space: space.clone(),
            n,
            seed,
            points: history
                .iter()
                .map(|(params, status, loss)| PluginPoint {
                    params: params.clone(),
                    status: status.as_str().to_owned(),
                    loss: *loss,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    points: Vec<Point>,
}

/// A configured plug-in: the command (program and arguments, run in idds's working directory)
/// and how long it may take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Program and arguments, e.g. `["python3", "examples/hpo/bayes_opt_plugin.py"]`.
    pub command: Vec<String>,
    /// Deadline per call (default 60 s); the process is killed past it.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Checks a plug-in's answer against the request: JSON of the documented shape, at most `n`
/// points, each inside the space.
///
/// # Errors
/// [`HpoError::Plugin`] saying what is wrong, naming the point and parameter.
pub fn parse_answer(plugin: &str, stdout: &[u8], space: &Space, n: u32) -> Result<Vec<Point>, HpoError> {
    let fail = |message: String| HpoError::Plugin { plugin: plugin.to_owned(), message };
    let text = String::from_utf8_lossy(stdout);
    let answer: Answer = serde_json::from_str(text.trim()).map_err(|e| {
        let head: String = text.chars().take(200).collect();
        fail(format!("its output is not the answer {{\"points\": [...]}}: {e}; output began with {head:?}"))
    })?;
    if answer.points.len() > n as usize {
        return Err(fail(format!("it answered {} points, but {n} were asked for", answer.points.len())));
    }
    for (i, point) in answer.points.iter().enumerate() {
        if let Err(HpoError::Invalid(problems)) = space.check_point(point, &format!("points[{i}]")) {
            let text = problems.iter().map(|(f, m)| format!("{f}: {m}")).collect::<Vec<_>>().join("; ");
            return Err(fail(format!("bad point in its answer: {text}")));
        }
    }
    Ok(answer.points)
}

/// Runs a plug-in once: writes the request, waits for the answer within the deadline (killing
/// the process past it), checks the answer.
///
/// # Errors
/// [`HpoError::Plugin`]: it could not start, timed out, exited non-zero (with the end of its
/// stderr), or answered badly.
pub async fn run(name: &str, config: &PluginConfig, request: &Request) -> Result<Vec<Point>, HpoError> {
    let fail = |message: String| HpoError::Plugin { plugin: name.to_owned(), message };
    let (program, args) = config.command.split_first().ok_or_else(|| fail("its command is empty".into()))?;
    let input = serde_json::to_vec(request).map_err(|e| fail(format!("cannot encode the request: {e}")))?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot start {program:?}: {e}")))?;
    let mut stdin = child.stdin.take().ok_or_else(|| fail("no stdin".into()))?;
    let exchange = async move {
        // A plug-in that exits without reading its input is judged by its exit status and answer.
        let _ = stdin.write_all(&input).await;
        drop(stdin);
        child.wait_with_output().await
    };
    let output = match tokio::time::timeout(config.timeout, exchange).await {
        Err(_) => return Err(fail(format!("it did not answer within {:?} and was killed", config.timeout))),
        Ok(Err(e)) => return Err(fail(format!("waiting for it failed: {e}"))),
        Ok(Ok(output)) => output,
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: String = stderr.chars().rev().take(500).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(fail(format!("it exited with {}: {}", output.status, tail.trim())));
    }
    parse_answer(name, &output.stdout, &request.space, request.n)
}
