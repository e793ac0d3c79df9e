//! A study's settings and the rules that drive it: how many points to ask for next, when to stop
//! (max points, no improvement in K points, a loss threshold), how it ends, and its best point.
//! Iterations are synchronous: the next batch is asked for once every point of the last one
//! has a loss or failed.

use serde::{Deserialize, Serialize};

use super::HpoError;
use super::space::Space;

/// Most points a study may declare.
pub const MAX_POINTS: u32 = 10_000;
/// Most points per iteration.
pub const MAX_POINTS_PER_ITERATION: u32 = 1_000;

/// Which optimizer proposes points: written `random`, `tpe` or `{plugin: <name>}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "OptimizerText", into = "OptimizerText")]
pub enum OptimizerSpec {
    /// Uniform random search.
    Random,
    /// The built-in Bayesian optimizer (Tree-structured Parzen Estimator).
    #[default]
    Tpe,
    /// An external optimizer configured in `[idds.hpo.plugins]`, by name.
    Plugin(String),
}

/// How an optimizer is written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum OptimizerText {
    Name(String),
    Plugin { plugin: String },
}

impl TryFrom<OptimizerText> for OptimizerSpec {
    type Error = String;

    fn try_from(text: OptimizerText) -> Result<Self, Self::Error> {
        match text {
            OptimizerText::Name(name) => match name.as_str() {
                "random" => Ok(OptimizerSpec::Random),
                "tpe" | "bayesian" => Ok(OptimizerSpec::Tpe),
                other => Err(format!("unknown optimizer {other:?}: use random, tpe or {{plugin: <name>}}")),
            },
            OptimizerText::Plugin { plugin } => Ok(OptimizerSpec::Plugin(plugin)),
        }
    }
}

impl From<OptimizerSpec> for OptimizerText {
    fn from(spec: OptimizerSpec) -> Self {
        match spec {
            OptimizerSpec::Random => OptimizerText::Name("random".into()),
            OptimizerSpec::Tpe => OptimizerText::Name("tpe".into()),
            OptimizerSpec::Plugin(plugin) => OptimizerText::Plugin { plugin },
        }
    }
}

impl OptimizerSpec {
    /// How it is shown.
    pub fn label(&self) -> String {
        match self {
            OptimizerSpec::Random => "random".into(),
            OptimizerSpec::Tpe => "tpe".into(),
            OptimizerSpec::Plugin(name) => format!("plugin:{name}"),
        }
    }
}

/// When to stop before `max_points`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EarlyStop {
    /// Stop when the last `patience` points with a loss did not improve on the best.
    pub patience: Option<u32>,
    /// Stop as soon as a loss at or below this is seen.
    pub loss_below: Option<f64>,
}

/// A study's settings (the `hpo:` block of a workflow work, or CreateStudy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudySpec {
    /// The search space.
    pub space: Space,
    /// The optimizer (default: tpe).
    #[serde(default)]
    pub optimizer: OptimizerSpec,
    /// Points to evaluate at most.
    pub max_points: u32,
    /// Points asked for and evaluated together (default 1).
    #[serde(default = "one")]
    pub points_per_iteration: u32,
    /// Early stopping.
    #[serde(default)]
    pub early_stop: EarlyStop,
    /// Seed of the optimizer's random stream (default 0).
    #[serde(default)]
    pub seed: u64,
}

fn one() -> u32 {
    1
}

impl StudySpec {
    /// Checks the settings and the space; each problem names `<prefix>.<field>`.
    ///
    /// # Errors
    /// [`HpoError::Invalid`] listing every problem.
    pub fn validate(&self, prefix: &str) -> Result<(), HpoError> {
        let mut problems = Vec::new();
        if let Err(HpoError::Invalid(space)) = self.space.validate() {
            problems.extend(space.into_iter().map(|(f, m)| (format!("{prefix}.{f}"), m)));
        }
        if self.max_points == 0 || self.max_points > MAX_POINTS {
            problems
                .push((format!("{prefix}.max_points"), format!("must be 1..={MAX_POINTS} (got {})", self.max_points)));
        }
        if self.points_per_iteration == 0 || self.points_per_iteration > MAX_POINTS_PER_ITERATION {
            problems.push((
                format!("{prefix}.points_per_iteration"),
                format!("must be 1..={MAX_POINTS_PER_ITERATION} (got {})", self.points_per_iteration),
            ));
        }
        if self.early_stop.patience == Some(0) {
            problems.push((format!("{prefix}.early_stop.patience"), "must be at least 1".into()));
        }
        if self.early_stop.loss_below.is_some_and(|l| !l.is_finite()) {
            problems.push((format!("{prefix}.early_stop.loss_below"), "must be a finite number".into()));
        }
        if let OptimizerSpec::Plugin(name) = &self.optimizer
            && name.is_empty()
        {
            problems.push((format!("{prefix}.optimizer.plugin"), "must name a configured plugin".into()));
        }
        if problems.is_empty() { Ok(()) } else { Err(HpoError::Invalid(problems)) }
    }
}

/// A point's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PointStatus {
    /// Proposed, not yet handed to an evaluator.
    Pending,
    /// Being evaluated.
    Running,
    /// Evaluated: it has a loss.
    Done,
    /// Its evaluation failed (no loss).
    Failed,
}

impl PointStatus {
    /// Stored and shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            PointStatus::Pending => "pending",
            PointStatus::Running => "running",
            PointStatus::Done => "done",
            PointStatus::Failed => "failed",
        }
    }

    /// From the stored name.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => PointStatus::Pending,
            "running" => PointStatus::Running,
            "done" => PointStatus::Done,
            "failed" => PointStatus::Failed,
            _ => return None,
        })
    }

    /// Done or failed.
    pub fn is_final(self) -> bool {
        matches!(self, PointStatus::Done | PointStatus::Failed)
    }
}

/// What the rules need to know of a point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PointView {
    /// Its number in the study (from 1, in the order proposed).
    pub seq: u32,
    /// State.
    pub status: PointStatus,
    /// Loss when done.
    pub loss: Option<f64>,
}

/// How a study ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StudyEnd {
    /// At least one point has a loss.
    Finished,
    /// No point has a loss.
    Failed,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Ask the optimizer for this many points.
    Ask(u32),
    /// Points are being evaluated.
    Wait,
    /// The study is over.
    End {
        /// How.
        end: StudyEnd,
        /// Why it stopped.
        reason: String,
    },
}

/// The best point: the lowest loss, the earliest among equals.
pub fn best(points: &[PointView]) -> Option<PointView> {
    points
        .iter()
        .filter(|p| p.status == PointStatus::Done)
        .filter_map(|p| p.loss.filter(|l| !l.is_nan()).map(|l| (l, p)))
        .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.seq.cmp(&b.1.seq)))
        .map(|(_, p)| *p)
}

/// Why the study should stop early (before max points), if it should.
pub fn early_stop(spec: &StudySpec, points: &[PointView]) -> Option<String> {
    let best_point = best(points)?;
    let best_loss = best_point.loss?;
    if let Some(threshold) = spec.early_stop.loss_below
        && best_loss <= threshold
    {
        return Some(format!("loss {best_loss} reached the threshold {threshold} (point {})", best_point.seq));
    }
    if let Some(patience) = spec.early_stop.patience {
        let mut done: Vec<&PointView> = points.iter().filter(|p| p.status == PointStatus::Done).collect();
        done.sort_by_key(|p| p.seq);
        let since_best = done.iter().filter(|p| p.seq > best_point.seq).count();
        if since_best >= patience as usize {
            return Some(format!(
                "no improvement in {since_best} points since point {} (patience {patience})",
                best_point.seq
            ));
        }
    }
    None
}

/// The next step of a study.
pub fn decide(spec: &StudySpec, points: &[PointView]) -> Decision {
    let in_flight = points.iter().filter(|p| !p.status.is_final()).count();
    let end = || if best(points).is_some() { StudyEnd::Finished } else { StudyEnd::Failed };
    if let Some(reason) = early_stop(spec, points) {
        return if in_flight > 0 { Decision::Wait } else { Decision::End { end: end(), reason } };
    }
    if in_flight > 0 {
        return Decision::Wait;
    }
    let remaining = spec.max_points.saturating_sub(points.len() as u32);
    if remaining == 0 {
        let reason = if end() == StudyEnd::Failed {
            format!("every one of the {} points failed", points.len())
        } else {
            format!("max_points ({}) reached", spec.max_points)
        };
        return Decision::End { end: end(), reason };
    }
    Decision::Ask(remaining.min(spec.points_per_iteration))
}
