//! Condition trees over upstream results, evaluated in three values: a predicate on a work that
//! has not ended yet is `Pending`, and a branch fires only on a definite answer (the reference
//! evaluates plain booleans and can fire a false branch early).
//!
//! The serialized form is the native format's: `{all: [...]}`, `{any: [...]}`, `{not: ...}`,
//! `{status: {work, is}}`, `{count: {work, counter, op, value}}`, `{output: {work, key, op,
//! value}}`, `{param: {name, op, value}}`.

use serde::{Deserialize, Serialize};

use super::model::Value;
use super::state::WorkStatus;

/// A condition tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Cond {
    /// Every item holds.
    All(Vec<Cond>),
    /// At least one item holds.
    Any(Vec<Cond>),
    /// The item does not hold.
    Not(Box<Cond>),
    /// A work's state.
    Status(StatusCond),
    /// A work's counter (jobs or files).
    Count(CountCond),
    /// A value the work produced.
    Output(OutputCond),
    /// A loop parameter or workflow input.
    Param(ParamCond),
}

/// `{status: {work: a, is: finished}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusCond {
    /// The work.
    pub work: String,
    /// The predicate.
    pub is: StatusPredicate,
}

/// The reference's work predicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusPredicate {
    /// Its task exists (known as soon as it is submitted).
    Started,
    /// Every job finished.
    Finished,
    /// Some jobs finished.
    Subfinished,
    /// Finished or subfinished (`is_processed`).
    Processed,
    /// Failed.
    Failed,
    /// Ended in any way.
    Terminated,
    /// Did not run (its condition was false or a parent did not finish).
    Skipped,
}

/// `{count: {work: a, counter: jobs_failed, op: lt, value: 1}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountCond {
    /// The work.
    pub work: String,
    /// Which counter.
    pub counter: Counter,
    /// Comparison.
    pub op: CmpOp,
    /// Right-hand side.
    pub value: f64,
}

/// Counters of a work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Counter {
    /// Jobs of its task.
    JobsTotal,
    /// Jobs that finished.
    JobsFinished,
    /// Jobs that failed.
    JobsFailed,
    /// Files it produced.
    FilesProduced,
    /// Held jobs released (file-level dependencies).
    FilesReleased,
}

impl Counter {
    /// Output key under which the counter is also visible.
    pub fn key(self) -> &'static str {
        match self {
            Counter::JobsTotal => "jobs_total",
            Counter::JobsFinished => "jobs_finished",
            Counter::JobsFailed => "jobs_failed",
            Counter::FilesProduced => "files_produced",
            Counter::FilesReleased => "files_released",
        }
    }
}

/// `{output: {work: a, key: converged, op: eq, value: true}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputCond {
    /// The work.
    pub work: String,
    /// Output key.
    pub key: String,
    /// Comparison.
    pub op: CmpOp,
    /// Right-hand side.
    pub value: serde_json::Value,
}

/// `{param: {name: x, op: ge, value: 10}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamCond {
    /// Parameter name.
    pub name: String,
    /// Comparison.
    pub op: CmpOp,
    /// Right-hand side.
    pub value: serde_json::Value,
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CmpOp {
    /// Equal (numbers compare as numbers, `1 == 1.0`).
    Eq,
    /// Not equal.
    Ne,
    /// Less than.
    Lt,
    /// At most.
    Le,
    /// More than.
    Gt,
    /// At least.
    Ge,
}

impl CmpOp {
    fn compare(self, left: &Value, right: &Value) -> bool {
        if let (Some(a), Some(b)) = (left.as_f64(), right.as_f64()) {
            return match self {
                CmpOp::Eq => a == b,
                CmpOp::Ne => a != b,
                CmpOp::Lt => a < b,
                CmpOp::Le => a <= b,
                CmpOp::Gt => a > b,
                CmpOp::Ge => a >= b,
            };
        }
        match self {
            CmpOp::Eq => left == right,
            CmpOp::Ne => left != right,
            // Order is defined on numbers and on text only.
            _ => match (left, right) {
                (Value::String(a), Value::String(b)) => match self {
                    CmpOp::Lt => a < b,
                    CmpOp::Le => a <= b,
                    CmpOp::Gt => a > b,
                    _ => a >= b,
                },
                _ => false,
            },
        }
    }
}

/// A three-valued truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    /// Holds.
    True,
    /// Does not hold.
    False,
    /// Not known yet: a work it reads has not ended.
    Pending,
}

impl From<bool> for Truth {
    fn from(value: bool) -> Self {
        if value { Truth::True } else { Truth::False }
    }
}

/// What a condition can read.
pub trait Facts {
    /// A work's state; `None` for an unknown work (validation rules that out).
    fn status(&self, work: &str) -> Option<WorkStatus>;
    /// A work's output value or counter (counters are outputs under [`Counter::key`]).
    fn output(&self, work: &str, key: &str) -> Option<Value>;
    /// A loop parameter or workflow input.
    fn param(&self, name: &str) -> Option<Value>;
}

impl Cond {
    /// Works the condition reads.
    pub fn works(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.collect_works(&mut out);
        out
    }

    fn collect_works<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Cond::All(items) | Cond::Any(items) => items.iter().for_each(|c| c.collect_works(out)),
            Cond::Not(item) => item.collect_works(out),
            Cond::Status(c) => out.push(&c.work),
            Cond::Count(c) => out.push(&c.work),
            Cond::Output(c) => out.push(&c.work),
            Cond::Param(_) => {}
        }
    }

    /// Parameters the condition reads.
    pub fn params(&self) -> Vec<&str> {
        match self {
            Cond::All(items) | Cond::Any(items) => items.iter().flat_map(Cond::params).collect(),
            Cond::Not(item) => item.params(),
            Cond::Param(c) => vec![c.name.as_str()],
            _ => Vec::new(),
        }
    }

    /// Evaluates in three values.
    pub fn eval(&self, facts: &dyn Facts) -> Truth {
        match self {
            Cond::All(items) => {
                let mut pending = false;
                for item in items {
                    match item.eval(facts) {
                        Truth::False => return Truth::False,
                        Truth::Pending => pending = true,
                        Truth::True => {}
                    }
                }
                if pending { Truth::Pending } else { Truth::True }
            }
            Cond::Any(items) => {
                let mut pending = false;
                for item in items {
                    match item.eval(facts) {
                        Truth::True => return Truth::True,
                        Truth::Pending => pending = true,
                        Truth::False => {}
                    }
                }
                if pending { Truth::Pending } else { Truth::False }
            }
            Cond::Not(item) => match item.eval(facts) {
                Truth::True => Truth::False,
                Truth::False => Truth::True,
                Truth::Pending => Truth::Pending,
            },
            Cond::Status(c) => match facts.status(&c.work) {
                None => Truth::Pending,
                Some(status) => status_truth(status, c.is),
            },
            Cond::Count(c) => ended_then(facts, &c.work, || {
                let value = facts.output(&c.work, c.counter.key()).unwrap_or(Value::Int(0));
                c.op.compare(&value, &Value::Float(c.value)).into()
            }),
            Cond::Output(c) => ended_then(facts, &c.work, || {
                // A missing key does not hold (the reference: a missing results.json ends a loop).
                match facts.output(&c.work, &c.key) {
                    Some(value) => c.op.compare(&value, &Value::from_json(&c.value)).into(),
                    None => Truth::False,
                }
            }),
            Cond::Param(c) => match facts.param(&c.name) {
                Some(value) => c.op.compare(&value, &Value::from_json(&c.value)).into(),
                None => Truth::False,
            },
        }
    }
}

fn ended_then(facts: &dyn Facts, work: &str, then: impl FnOnce() -> Truth) -> Truth {
    match facts.status(work) {
        Some(status) if status.is_final() => then(),
        _ => Truth::Pending,
    }
}

fn status_truth(status: WorkStatus, predicate: StatusPredicate) -> Truth {
    use WorkStatus as S;
    if predicate == StatusPredicate::Started {
        return match status {
            S::Waiting | S::Ready => Truth::Pending,
            S::Skipped | S::Bypassed | S::Cancelled => Truth::False,
            _ => Truth::True,
        };
    }
    if !status.is_final() {
        return Truth::Pending;
    }
    match predicate {
        StatusPredicate::Finished => status == S::Finished,
        StatusPredicate::Subfinished => status == S::SubFinished,
        StatusPredicate::Processed => matches!(status, S::Finished | S::SubFinished),
        StatusPredicate::Failed => status == S::Failed,
        StatusPredicate::Terminated => true,
        StatusPredicate::Skipped => matches!(status, S::Skipped | S::Bypassed | S::Cancelled),
        StatusPredicate::Started => unreachable!("handled above"),
    }
    .into()
}
