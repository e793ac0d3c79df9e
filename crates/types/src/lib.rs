//! Domain types shared by every panda service: identifiers, the state machines of tasks, jobs,
//! datasets, files and workers (with the transitions the reference PanDA allows), and the task
//! specification with its validation. Nothing here does I/O or knows about gRPC or SQL.
//!
//! Modules: `ids` (newtype IDs), `state` (the `StateMachine` trait and the error for a refused
//! transition), `task`, `job`, `dataset`, `worker` (one state enum each), `spec` (task specs), `rules` (splitting rules and brokerage requirements), `shares` (the global-share tree).

mod macros;

pub mod dataset;
pub mod ids;
pub mod job;
pub mod rules;
pub mod shares;
pub mod spec;
pub mod state;
pub mod task;
pub mod worker;

pub use dataset::{DataActor, DatasetStatus, FileStatus};
pub use ids::{JobId, QueueName, TaskId};
pub use job::{JobActor, JobStatus};
pub use spec::{FieldError, Resources, TaskSpec};
pub use state::{IllegalTransition, StateMachine, UnknownState};
pub use task::{TaskActor, TaskStatus};
pub use worker::WorkerStatus;
