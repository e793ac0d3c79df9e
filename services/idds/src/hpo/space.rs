//! The search space: named parameters, each uniform, log-uniform, integer or categorical, written
//! in YAML or JSON (docs/hpo.md):
//!
//! ```yaml
//! x:      {type: uniform, low: -5, high: 5}
//! lr:     {type: log_uniform, low: 1.0e-4, high: 0.1}
//! layers: {type: integer, low: 1, high: 4}
//! act:    {type: categorical, choices: [relu, tanh]}
//! ```
//!
//! A point is a map from parameter name to a JSON value (a number, or one of the choices).
//! Optimizers work in the unit cube: [`Param::to_unit`] and [`Param::from_unit`] map each
//! numeric parameter to [0, 1] (log-uniform on the log scale, integers by equal-width bins).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::HpoError;

/// One point: parameter name → value.
pub type Point = BTreeMap<String, serde_json::Value>;

/// One parameter's distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Param {
    /// A real number drawn evenly from [low, high].
    Uniform {
        /// Lower bound.
        low: f64,
        /// Upper bound.
        high: f64,
    },
    /// A positive real number whose logarithm is uniform on [ln low, ln high].
    LogUniform {
        /// Lower bound (> 0).
        low: f64,
        /// Upper bound.
        high: f64,
    },
    /// A whole number in [low, high], both included.
    Integer {
        /// Lower bound.
        low: i64,
        /// Upper bound.
        high: i64,
    },
    /// One of the listed values (strings, numbers or booleans).
    Categorical {
        /// The choices.
        choices: Vec<serde_json::Value>,
    },
}

/// A search space: parameters by name (sorted, so every optimizer sees the same order).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Space {
    /// The parameters.
    pub params: BTreeMap<String, Param>,
}

/// Names become `%{name}` placeholders and `HPO_<name>` environment variables.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}

impl Space {
    /// Reads a space from YAML or JSON text, then validates it.
    ///
    /// # Errors
    /// [`HpoError::Invalid`] with the reader's message, or every validation problem.
    pub fn parse(text: &str) -> Result<Space, HpoError> {
        let space: Space = serde_yaml_ng::from_str(text)
            .map_err(|e| HpoError::Invalid(vec![(String::from("space"), e.to_string())]))?;
        space.validate()?;
        Ok(space)
    }

    /// Checks every parameter; each problem names `space.<parameter>`.
    ///
    /// # Errors
    /// [`HpoError::Invalid`] listing every problem.
    pub fn validate(&self) -> Result<(), HpoError> {
        let mut problems = Vec::new();
        if self.params.is_empty() {
            problems.push(("space".to_owned(), "must have at least one parameter".to_owned()));
        }
        for (name, param) in &self.params {
            let field = format!("space.{name}");
            let mut bad = |message: String| problems.push((field.clone(), message));
            if !valid_name(name) {
                bad("the name must be a letter or _ followed by letters, digits or _ (at most 64)".into());
            }
            match param {
                Param::Uniform { low, high } | Param::LogUniform { low, high } => {
                    if !low.is_finite() || !high.is_finite() {
                        bad(format!("low ({low}) and high ({high}) must be finite numbers"));
                    } else if low > high {
                        bad(format!("low ({low}) is greater than high ({high})"));
                    } else if low == high {
                        bad(format!("empty range: low and high are both {low}"));
                    } else if matches!(param, Param::LogUniform { .. }) && *low <= 0.0 {
                        bad(format!("log_uniform needs low > 0 (got {low})"));
                    }
                }
                Param::Integer { low, high } => {
                    if low > high {
                        bad(format!("low ({low}) is greater than high ({high})"));
                    }
                }
                Param::Categorical { choices } => {
                    if choices.is_empty() {
                        bad("categorical needs at least one choice (choices is empty)".into());
                    }
                    for (i, choice) in choices.iter().enumerate() {
                        if !(choice.is_string() || choice.is_number() || choice.is_boolean()) {
                            bad(format!("choices[{i}] must be a string, number or boolean (got {choice})"));
                        } else if choices[..i].contains(choice) {
                            bad(format!("choices[{i}] ({choice}) is listed twice"));
                        }
                    }
                }
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(HpoError::Invalid(problems)) }
    }

    /// Checks that a point has exactly this space's parameters, each inside its range or among
    /// its choices; problems name `<field>.<parameter>`.
    ///
    /// # Errors
    /// [`HpoError::Invalid`] listing every problem.
    pub fn check_point(&self, point: &Point, field: &str) -> Result<(), HpoError> {
        let mut problems = Vec::new();
        for name in point.keys().filter(|k| !self.params.contains_key(*k)) {
            problems.push((format!("{field}.{name}"), "is not a parameter of the search space".to_owned()));
        }
        for (name, param) in &self.params {
            let at = format!("{field}.{name}");
            let Some(value) = point.get(name) else {
                problems.push((at, "is missing".to_owned()));
                continue;
            };
            if let Err(message) = param.check(value) {
                problems.push((at, message));
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(HpoError::Invalid(problems)) }
    }
}

impl Param {
    /// Whether a value belongs to this parameter (the message says why not).
    ///
    /// # Errors
    /// Why the value does not fit.
    pub fn check(&self, value: &serde_json::Value) -> Result<(), String> {
        match self {
            Param::Uniform { low, high } | Param::LogUniform { low, high } => match value.as_f64() {
                Some(x) if x >= *low && x <= *high => Ok(()),
                Some(x) => Err(format!("{x} is outside [{low}, {high}]")),
                None => Err(format!("must be a number (got {value})")),
            },
            Param::Integer { low, high } => match value.as_i64() {
                Some(x) if x >= *low && x <= *high => Ok(()),
                Some(x) => Err(format!("{x} is outside [{low}, {high}]")),
                None => Err(format!("must be a whole number (got {value})")),
            },
            Param::Categorical { choices } => {
                if choices.contains(value) {
                    Ok(())
                } else {
                    Err(format!("{value} is not one of the choices"))
                }
            }
        }
    }

    /// Number of choices of a categorical parameter (None for numeric ones).
    pub fn n_choices(&self) -> Option<usize> {
        match self {
            Param::Categorical { choices } => Some(choices.len()),
            _ => None,
        }
    }

    /// A numeric value mapped into [0, 1] (None for categorical parameters and non-numbers).
    pub fn to_unit(&self, value: &serde_json::Value) -> Option<f64> {
        let x = value.as_f64()?;
        let u = match self {
            Param::Uniform { low, high } => (x - low) / (high - low),
            Param::LogUniform { low, high } => (x.ln() - low.ln()) / (high.ln() - low.ln()),
            Param::Integer { low, high } => (x - *low as f64 + 0.5) / ((high - low) as f64 + 1.0),
            Param::Categorical { .. } => return None,
        };
        Some(u.clamp(0.0, 1.0))
    }

    /// The value at `u` ∈ [0, 1] of a numeric parameter; for a categorical one, `u` picks a
    /// choice by equal-width bins.
    pub fn from_unit(&self, u: f64) -> serde_json::Value {
        let u = u.clamp(0.0, 1.0);
        match self {
            Param::Uniform { low, high } => number(low + u * (high - low)),
            Param::LogUniform { low, high } => number((low.ln() + u * (high.ln() - low.ln())).exp().clamp(*low, *high)),
            Param::Integer { low, high } => {
                let span = (high - low) as f64 + 1.0;
                let offset = ((u * span).floor() as i64).min(high - low);
                serde_json::Value::from(low + offset)
            }
            Param::Categorical { choices } => {
                let i = ((u * choices.len() as f64).floor() as usize).min(choices.len().saturating_sub(1));
                choices.get(i).cloned().unwrap_or(serde_json::Value::Null)
            }
        }
    }

    /// The index of a categorical value among the choices.
    pub fn choice_index(&self, value: &serde_json::Value) -> Option<usize> {
        match self {
            Param::Categorical { choices } => choices.iter().position(|c| c == value),
            _ => None,
        }
    }

    /// The `i`-th choice.
    pub fn choice(&self, i: usize) -> serde_json::Value {
        match self {
            Param::Categorical { choices } => choices.get(i).cloned().unwrap_or(serde_json::Value::Null),
            _ => serde_json::Value::Null,
        }
    }
}

fn number(x: f64) -> serde_json::Value {
    serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, serde_json::Value::Number)
}
