//! The crate's one error type.

use crate::expr::ExprError;

/// Everything that can go wrong loading or running a CWL document.
#[derive(Debug, thiserror::Error)]
pub enum CwlError {
    /// The document is not valid CWL: names the document, the line and the field.
    #[error("{doc}:{line}: field `{field}`: {message}")]
    Invalid {
        /// The document's path.
        doc: String,
        /// 1-based line (0 when unknown).
        line: usize,
        /// The field at fault.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The input object does not match the process's inputs.
    #[error("input `{field}`: {message}")]
    Input {
        /// The input parameter at fault.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// An expression failed.
    #[error("{context}: {source}")]
    Expr {
        /// Where the expression was (process and field).
        context: String,
        /// The failure.
        source: ExprError,
    },
    /// A requirement this runner does not support (exit code 33).
    #[error("unsupported requirement: {0}")]
    Unsupported(String),
    /// The process ran and failed permanently.
    #[error("{0}")]
    Failed(String),
    /// The invocation was stopped (or never started) because another invocation of the run
    /// failed; that failure is the run's error.
    #[error("stopped: another invocation of the run failed")]
    Cancelled,
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl CwlError {
    /// The runner's exit code for this error: 33 for an unsupported requirement, else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            CwlError::Unsupported(_) => 33,
            _ => 1,
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        CwlError::Io { path: path.as_ref().display().to_string(), source }
    }

    /// Wraps an expression error with where it happened.
    pub fn expr(context: impl Into<String>, source: ExprError) -> Self {
        CwlError::Expr { context: context.into(), source }
    }
}

/// Result with [`CwlError`].
pub type Result<T> = std::result::Result<T, CwlError>;
