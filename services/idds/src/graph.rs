//! The workflow graph, pure (no I/O, no transport, no storage): the internal model every
//! language compiles to (`model`), condition trees (`cond`), work and workflow states (`state`),
//! validation (`validate`), the rules that move a workflow forward (`plan`), file-level release
//! bookkeeping (`release`), the front ends (`native`, `snakemake`) and text/DOT/Mermaid
//! rendering (`render`).

pub mod cond;
pub mod model;
pub mod native;
pub mod plan;
pub mod release;
pub mod render;
pub mod snakemake;
pub mod state;
pub mod validate;

pub use model::Graph;
pub use state::{WorkStatus, WorkflowStatus};
pub use validate::GraphError;

/// A workflow document's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// The native YAML/JSON format.
    Native,
    /// A Snakefile (the documented subset).
    Snakemake,
}

/// Parses and validates a document: the graph, and its owner when the document names one.
///
/// # Errors
/// Every problem, each naming the node, rule or line.
pub fn compile(language: Language, text: &str, name: &str) -> Result<(Graph, String), Vec<GraphError>> {
    let (graph, user) = match language {
        Language::Native => {
            let parsed = native::parse(text)?;
            (parsed.graph, parsed.user)
        }
        Language::Snakemake => (snakemake::parse(text, name)?, String::new()),
    };
    validate::validate(&graph)?;
    Ok((graph, user))
}

#[cfg(test)]
mod tests;
