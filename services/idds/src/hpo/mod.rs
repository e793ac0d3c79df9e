//! Hyperparameter optimisation, pure domain (no transport, no storage): the search space format
//! and its validation (`space`), the optimizers (`optimizer`: random and TPE behind the
//! [`optimizer::Optimizer`] trait), a study's settings and stopping rules (`study`) and the
//! plug-in protocol for external optimizers (`plugin`, which runs the configured command with a
//! deadline). The engine (`crate::hpo_engine`) stores studies and points and turns points into
//! tasks.

pub mod optimizer;
pub mod plugin;
pub mod space;
pub mod study;

#[cfg(test)]
mod tests;

pub use optimizer::{Observation, Optimizer, Random, Tpe};
pub use space::{Param, Point, Space};
pub use study::{Decision, EarlyStop, OptimizerSpec, PointStatus, PointView, StudyEnd, StudySpec};

/// What can be wrong with a study.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HpoError {
    /// Bad settings, space or point: (field, message) pairs.
    #[error("{}", .0.iter().map(|(f, m)| format!("{f}: {m}")).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<(String, String)>),
    /// An external optimizer failed.
    #[error("optimizer plug-in {plugin:?}: {message}")]
    Plugin {
        /// Its configured name.
        plugin: String,
        /// What went wrong.
        message: String,
    },
}

/// The built-in optimizer for a spec (None for plug-ins).
pub fn builtin(spec: &OptimizerSpec) -> Option<Box<dyn Optimizer>> {
    match spec {
        OptimizerSpec::Random => Some(Box::new(Random)),
        OptimizerSpec::Tpe => Some(Box::new(Tpe::default())),
        OptimizerSpec::Plugin(_) => None,
    }
}
