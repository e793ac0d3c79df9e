//! idds: the workflow engine. A workflow (native YAML/JSON, Snakemake, or the older spec) is
//! compiled to one internal graph of works (tasks, loops, sub-workflows) with task- and
//! file-level dependencies and conditions; a work's task is submitted when the planner says it
//! is ready, and task events from the bus move the graph forward. State lives in idds's own
//! database; submissions are idempotent, events are applied at least once, and a restart
//! reloads every workflow and reconciles with the server.
//!
//! Modules: `config` (`[idds]`), `graph` (pure: model, conditions, validation, planning,
//! release bookkeeping, front ends, rendering), `backend` (the server's task API behind a trait),
//! `store`, `service` (the engine), `grpc` (WorkflowService), `grpc_driven` (DrivenWorkflowService: works a driver adds); `hpo` (pure: search spaces,
//! optimizers, study rules, the plug-in protocol), `hpo_store` (studies and points),
//! `service::studies` (studies in the engine), `grpc_hpo` (HpoService).

pub mod backend;
pub mod config;
pub mod graph;
pub mod grpc;
pub mod grpc_driven;
pub mod grpc_hpo;
pub mod hpo;
pub mod hpo_store;
pub mod service;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;

use panda_bus::outbox::{self, Outbox};
use panda_bus::{Bus, Envelope, HandleError, Handler, Subscription};
use panda_proto::convert::WireEnum;
use panda_proto::events::v1::{JobStatusChanged, TaskStatusChanged};
use panda_proto::idds::v1::driven_workflow_service_server::DrivenWorkflowServiceServer;
use panda_proto::idds::v1::hpo_service_server::HpoServiceServer;
use panda_proto::idds::v1::workflow_service_server::WorkflowServiceServer;
use panda_runtime::Listeners;
use panda_types::TaskStatus;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::Config;
pub use service::{Engine, Handled};

/// What idds shares with the rest of the process.
pub struct Deps {
    /// Data directory (database).
    pub data_dir: PathBuf,
    /// Task events in, workflow events out.
    pub bus: Bus,
}

/// idds could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] panda_runtime::config::ConfigError),
    /// Database.
    #[error(transparent)]
    Db(#[from] panda_db::Error),
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
    engine: Engine,
}

#[tonic::async_trait]
impl Handler for TaskEvents {
    async fn handle(&self, event: &Envelope) -> Result<(), HandleError> {
        let body: TaskStatusChanged = event.decode().map_err(|e| HandleError::Reject(e.to_string()))?;
        let status = TaskStatus::from_wire("status", body.status).map_err(|e| HandleError::Reject(e.to_string()))?;
        match self.engine.on_task_status(body.task_id, status, Some(event.event_id)).await {
            Ok(Handled::NotYet) => Err(HandleError::Retry(format!("task {} not linked to a work yet", body.task_id))),
            Ok(_) => Ok(()),
            Err(error) => Err(HandleError::Retry(error.to_string())),
        }
    }
}

/// `job.finished` events: file-level release of the jobs waiting for what the job wrote.
struct JobEvents {
    engine: Engine,
}

#[tonic::async_trait]
impl Handler for JobEvents {
    async fn handle(&self, event: &Envelope) -> Result<(), HandleError> {
        let body: JobStatusChanged = event.decode().map_err(|e| HandleError::Reject(e.to_string()))?;
        match self.engine.on_job_finished(body.task_id, body.job_index).await {
            Ok(_) => Ok(()),
            Err(error) => Err(HandleError::Retry(error.to_string())),
        }
    }
}

/// Runs idds until `shutdown`.
///
/// # Errors
/// [`RunError`] for bad config, the database, the bus, or a failing listener.
pub async fn run(
    config: Config,
    deps: Deps,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    config.validate()?;
    let url = config.database.url_or_sqlite(&deps.data_dir, "idds.db");
    let db = panda_db::connect_and_migrate::<store::Migrator>(&url, config.database.max_connections).await?;
    let outbox = Outbox::new(db.clone());
    let relay = tokio::spawn(outbox::run_relay(outbox.clone(), Arc::new(deps.bus.clone()), shutdown.clone()));
    let backend = backend::GrpcBackend::new(panda_client::ServerClient::new(&config.server_url)?);
    let engine = Engine::new(db, outbox, Arc::new(backend))
        .with_hpo_plugins(config.hpo.plugins.clone())
        .with_driver_lease(config.driver_lease);
    // Only final task states move a DAG forward; `task.running` keeps the shown task state fresh.
    let bindings = ["task.running", "task.done", "task.finished", "task.failed", "task.broken", "task.aborted"];
    let consumer = deps
        .bus
        .consume(
            Subscription::new(deps.bus.queue_name("idds", "tasks"), bindings),
            Arc::new(TaskEvents { engine: engine.clone() }),
            shutdown.clone(),
        )
        .await?;
    let job_consumer = deps
        .bus
        .consume(
            Subscription::new(deps.bus.queue_name("idds", "jobs"), ["job.finished"]),
            Arc::new(JobEvents { engine: engine.clone() }),
            shutdown.clone(),
        )
        .await?;
    let submitter = {
        let engine = engine.clone();
        let shutdown = shutdown.clone();
        let retry = config.submit_retry_interval;
        tokio::spawn(async move {
            if let Err(error) = engine.reconcile().await {
                warn!(%error, "reconciliation after start failed");
            }
            // Woken by the engine whenever a work becomes ready; the timer runs only while a
            // submission is deferred (server unavailable), so an idle engine polls nothing.
            let mut deferred = false;
            loop {
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return,
                    () = engine.wake.notified() => {}
                    () = tokio::time::sleep(retry), if deferred => {}
                }
                deferred = match engine.submit_ready().await {
                    Ok(pass) => pass.deferred,
                    Err(error) => {
                        warn!(%error, "submitting ready works failed; retrying");
                        true
                    }
                };
            }
        })
    };
    // Driver leases: a quarter of the lease between looks, so a lapse is acted on soon after.
    let lease_sweeper = {
        let engine = engine.clone();
        let shutdown = shutdown.clone();
        let every = (config.driver_lease / 4).max(std::time::Duration::from_millis(250));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                if let Err(error) = engine.expire_driver_leases(std::time::Instant::now()).await {
                    warn!(%error, "failing driven workflows whose driver lease lapsed failed; retrying");
                }
            }
        })
    };
    let mut registry = prometheus_client::registry::Registry::default();
    engine.metrics.register(&mut registry);
    let registry = Arc::new(registry);
    let admin = listeners.admin.map(|l| tokio::spawn(panda_runtime::metrics::serve(registry, l, shutdown.clone())));
    let mut server = panda_runtime::grpc::server("idds")?;
    server.router = server
        .router
        .add_service(HpoServiceServer::new(grpc_hpo::HpoApi { engine: engine.clone() }))
        .add_service(DrivenWorkflowServiceServer::new(grpc_driven::DrivenApi { engine: engine.clone() }))
        .add_service(WorkflowServiceServer::new(grpc::Api { engine }));
    info!(addr = ?listeners.grpc.local_addr().ok(), "idds ready");
    let served = panda_runtime::grpc::serve(server, listeners.grpc, shutdown.clone()).await;
    shutdown.cancel();
    let _ = consumer.await;
    let _ = job_consumer.await;
    let _ = submitter.await;
    let _ = lease_sweeper.await;
    let _ = relay.await;
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    served?;
    Ok(())
}
