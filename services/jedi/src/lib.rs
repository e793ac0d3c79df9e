//! JEDI: turns tasks into jobs. It follows `task.registered` events (and sweeps registered and
//! pending tasks periodically as a safety net), splits each task into jobs (`split`), brokers
//! them to queues (`brokerage`) and inserts them through the server's internal API in one call.
//! JEDI keeps no state of its own: the server's task states are its work queue.
//!
//! Modules: `config`, `error`; pure domain logic: `split` (splitting rules), `brokerage`
//! (filters, weight, explanations, global shares), `scouting` (scout verdict and re-tuning),
//! `retry` (next attempt of a failed job); `service` (the generator); JediService in this file.

pub mod brokerage;
pub mod config;
pub mod error;
pub mod retry;
pub mod scouting;
pub mod service;
pub mod split;

use std::sync::Arc;

use panda_bus::{Bus, Envelope, HandleError, Handler, Subscription};
use panda_proto::events::v1::TaskStatusChanged;
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
    let _ = sweeper.await;
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    served?;
    Ok(())
}
