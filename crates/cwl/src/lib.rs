//! panda-cwl: a CWL v1.2 runner core in plain Rust. Loading ([`load`]), type checking
//! ([`types`]), expressions ([`expr`]), the process engine ([`engine`]) and the executor trait
//! ([`exec`]) that decides where each CommandLineTool invocation runs; [`runner`] is the
//! `cwl-runner` command-line interface.

pub mod engine;
pub mod error;
pub mod exec;
pub mod expr;
pub mod fs;
pub mod load;
pub mod runner;
pub mod types;

pub use error::{CwlError, Result};
