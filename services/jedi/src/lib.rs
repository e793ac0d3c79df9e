//! JEDI: turns tasks into jobs. It follows `task.registered` events, splits each task into jobs
//! (`split`), brokers them to queues (`brokerage`) and inserts them through the server's internal
//! API in one call; it follows `job.finished|failed|cancelled` events to judge scouts, retry
//! failed jobs and generate merge jobs (`attention` coalesces them per task); a periodic sweep
//! is the safety net for lost events and pending tasks. JEDI keeps no state of its own: the
//! server's task states are its work queue.
//!
//! Modules: `config`, `error`; pure domain logic: `split` (splitting rules), `brokerage`
//! (filters, weight, explanations, global shares), `scouting` (scout verdict and re-tuning),
//! `retry` (next attempt of a failed job); `service` (the generator); JediService in this file.

pub mod attention;
pub mod brokerage;
pub mod config;
pub mod error;
pub mod retry;
pub mod scouting;
pub mod service;
pub mod split;

use std::sync::Arc;

use panda_bus::{Bus, Envelope, HandleError, Handler, Subscription};
use panda_proto::events::v1::{JobStatusChanged, TaskStatusChanged};
use panda_proto::jedi::v1 as wire;
use panda_proto::jedi::v1::jedi_service_server::{JediService, JediServiceServer};
use panda_runtime::Listeners;
use panda_types::TaskId;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::Config;
pub use service::{Jedi, Outcome};

/// What JEDI shares with the rest of the process.
pub struct Deps {
    /// Where task events come from.
    pub bus: Bus,
}

/// JEDI could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] panda_runtime::config::ConfigError),
    /// The server URL is malformed.
    #[error(transparent)]
    Client(#[from] panda_client::Error),
    /// The bus refused the subscription.
    #[error("cannot subscribe to task events")]
    Bus(#[from] panda_bus::Error),
    /// gRPC serving.
    #[error(transparent)]
    Grpc(#[from] panda_runtime::grpc::GrpcError),
}

struct TaskEvents {
    jedi: Jedi,
}

#[tonic::async_trait]
impl Handler for TaskEvents {
    async fn handle(&self, event: &Envelope) -> Result<(), HandleError> {
        let body: TaskStatusChanged = event.decode().map_err(|e| HandleError::Reject(e.to_string()))?;
        match self.jedi.process_task(TaskId(body.task_id)).await {
            Ok(outcome) => {
                tracing::debug!(task_id = body.task_id, ?outcome, "task event processed");
                Ok(())
            }
            Err(error) if error.is_transient() => Err(HandleError::Retry(error.to_string())),
            Err(error) => Err(HandleError::Reject(error.to_string())),
        }
    }
}

/// A job ended: its task may need a scout verdict, a retry or merge jobs.
struct JobEvents {
    attention: Arc<attention::Attention>,
}

#[tonic::async_trait]
impl Handler for JobEvents {
    async fn handle(&self, event: &Envelope) -> Result<(), HandleError> {
        let body: JobStatusChanged = event.decode().map_err(|e| HandleError::Reject(e.to_string()))?;
        self.attention.mark(TaskId(body.task_id));
        Ok(())
    }
}

/// Processes the marked tasks, round after round, until `shutdown`.
async fn attend(jedi: Jedi, attention: Arc<attention::Attention>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = attention.marked() => {}
        }
        for task_id in attention.take() {
            match jedi.process_task(task_id).await {
                Ok(outcome) => tracing::debug!(task_id = %task_id, ?outcome, "job events processed"),
                // The sweep finds the task again.
                Err(error) => warn!(task_id = %task_id, %error, "could not process a task after its jobs' events"),
            }
        }
    }
}

struct Api {
    jedi: Jedi,
}

#[tonic::async_trait]
impl JediService for Api {
    async fn get_stats(
        &self,
        _request: tonic::Request<wire::GetStatsRequest>,
    ) -> Result<tonic::Response<wire::GetStatsResponse>, tonic::Status> {
        let stats = &self.jedi.stats;
        Ok(tonic::Response::new(wire::GetStatsResponse {
            tasks_processed: stats.tasks_processed.get(),
            jobs_generated: stats.jobs_generated.get(),
            tasks_pending: stats.tasks_pending.get(),
        }))
    }
}

/// Runs JEDI until `shutdown`.
///
/// # Errors
/// [`RunError`] for bad config, a bus that refuses the subscription, or a failing listener.
pub async fn run(
    config: Config,
    deps: Deps,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    config.validate()?;
    let server = panda_client::ServerClient::new(&config.server_url)?;
    let jedi = Jedi::new(server, config.brokerage_settings());
    let consumer = deps
        .bus
        .consume(
            Subscription::new(deps.bus.queue_name("jedi", "tasks"), ["task.registered"]),
            Arc::new(TaskEvents { jedi: jedi.clone() }),
            shutdown.clone(),
        )
        .await?;
    let attention = Arc::new(attention::Attention::default());
    let job_consumer = deps
        .bus
        .consume(
            Subscription::new(deps.bus.queue_name("jedi", "jobs"), ["job.finished", "job.failed", "job.cancelled"]),
            Arc::new(JobEvents { attention: attention.clone() }),
            shutdown.clone(),
        )
        .await?;
    let attendant = tokio::spawn(attend(jedi.clone(), attention, shutdown.clone()));
    let sweeper = {
        let jedi = jedi.clone();
        panda_runtime::task::every("task-sweep", config.sweep_interval, shutdown.clone(), move || {
            let jedi = jedi.clone();
            async move {
                if let Err(error) = jedi.sweep_once().await {
                    warn!(%error, "task sweep failed; retrying next cycle");
                }
            }
        })
    };
    let mut registry = prometheus_client::registry::Registry::default();
    jedi.stats.register(&mut registry);
    let registry = Arc::new(registry);
    let admin = listeners.admin.map(|l| tokio::spawn(panda_runtime::metrics::serve(registry, l, shutdown.clone())));
    let mut server = panda_runtime::grpc::server("jedi")?;
    server.router = server.router.add_service(JediServiceServer::new(Api { jedi }));
    info!(addr = ?listeners.grpc.local_addr().ok(), "jedi ready");
    let served = panda_runtime::grpc::serve(server, listeners.grpc, shutdown.clone()).await;
    shutdown.cancel();
    let _ = consumer.await;
    let _ = job_consumer.await;
    let _ = attendant.await;
    let _ = sweeper.await;
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    served?;
    Ok(())
}
