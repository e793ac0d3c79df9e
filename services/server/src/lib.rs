//! The PanDA server: system of record for tasks, datasets, files and jobs, the front door for
//! users (TaskService, JobService), pilots (PilotService) and the other services
//! (InternalService). Every state change commits with its bus event (outbox).
//!
//! Modules: `config` (`[server]`), `error` (errors and their gRPC codes), `model` (domain
//! records), `store` (tables, migrations, use-case queries), `service` (use cases, transactions),
//! `cache` (code archives), `logs` (jobs' stdout and stderr), `shares` (global shares in dispatch), `events` (bus bodies), `grpc` (thin
//! adapters), `metrics`.

pub mod activations;
pub mod cache;
pub mod catalog;
pub mod config;
pub mod error;
pub mod events;
pub mod feed;
pub mod group_commit;
pub mod grpc;
pub mod logs;
pub mod metrics;
pub mod model;
pub mod service;
pub mod shares;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;

use panda_bus::Bus;
use panda_bus::outbox::{self, Outbox};
use panda_proto::server::v1::cache_service_server::CacheServiceServer;
use panda_proto::server::v1::internal_service_server::InternalServiceServer;
use panda_proto::server::v1::job_service_server::JobServiceServer;
use panda_proto::server::v1::log_service_server::LogServiceServer;
use panda_proto::server::v1::pilot_service_server::PilotServiceServer;
use panda_proto::server::v1::task_service_server::TaskServiceServer;
use panda_runtime::Listeners;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::Config;

/// What the server shares with the rest of the process.
pub struct Deps {
    /// Data directory (SQLite file and local storage by default).
    pub data_dir: PathBuf,
    /// Where events go.
    pub bus: Bus,
}

/// The server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Database connection or migration.
    #[error(transparent)]
    Db(#[from] panda_db::Error),
    /// The bus refused a subscription.
    #[error(transparent)]
    Bus(#[from] panda_bus::Error),
    /// gRPC serving.
    #[error(transparent)]
    Grpc(#[from] panda_runtime::grpc::GrpcError),
    /// Filesystem or sockets.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the server until `shutdown`.
///
/// # Errors
/// [`RunError`] when the database, storage directory or listeners fail.
pub async fn run(
    config: Config,
    deps: Deps,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    config.validate().map_err(|e| RunError::Io { context: e.to_string(), source: std::io::Error::other("config") })?;
    let url = config.database.url_or_sqlite(&deps.data_dir, "server.db");
    let db = panda_db::connect_and_migrate::<store::migration::Migrator>(&url, config.database.max_connections).await?;
    let reads = panda_db::read_pool(&db, &url, config.database.read_connections).await?;
    let storage_dir = config.storage_dir.clone().unwrap_or_else(|| deps.data_dir.join("storage"));
    std::fs::create_dir_all(&storage_dir).map_err(|source| RunError::Io {
        context: format!("cannot create the storage directory {}", storage_dir.display()),
        source,
    })?;
    let storage_dir = std::fs::canonicalize(&storage_dir).map_err(|source| RunError::Io {
        context: format!("cannot resolve the storage directory {}", storage_dir.display()),
        source,
    })?;
    let postgres = db.get_database_backend() == sea_orm::DbBackend::Postgres;
    let cache_dir = config.cache.dir.clone().unwrap_or_else(|| deps.data_dir.join("cache"));
    let cache = cache::Cache::open(db.clone(), cache_dir.clone(), config.cache.max_archive_bytes).map_err(|e| {
        RunError::Io {
            context: e.to_string(),
            source: std::io::Error::other(format!("cache directory {}", cache_dir.display())),
        }
    })?;
    let logs = logs::Logs::new(db.clone(), &config.logs);
    let (registry, metrics) = metrics::registry();
    let outbox = Outbox::new(db.clone());
    let relay = tokio::spawn(outbox::run_relay(outbox.clone(), Arc::new(deps.bus.clone()), shutdown.clone()));
    let catalog_api = grpc::CatalogApi::new(catalog::Catalog::new(db.clone()));
    let (share_tree, default_share) =
        config.shares.build().map_err(|e| RunError::Io { context: e, source: std::io::Error::other("config") })?;
    let shares = shares::Shares::new(share_tree, default_share);
    store::migration::keep_share_index(&db, !shares.is_single()).await.map_err(panda_db::Error::Migrate)?;
    let service = service::Service::new(db, outbox, storage_dir, metrics)
        .with_reads(reads)
        .with_worker_report_stale_after(config.worker_report_stale_after)
        .with_shares(shares);
    // Shares' usage is counted again every few seconds (only when there is more than one share).
    let share_counter = (!service.shares().is_single()).then(|| {
        let service = service.clone();
        panda_runtime::task::every("shares", config.shares.refresh_interval, shutdown.clone(), move || {
            let service = service.clone();
            async move {
                if let Err(error) = service.refresh_shares().await {
                    tracing::warn!(error = %panda_runtime::error::chain(&error), "counting shares' usage failed; retrying next cycle");
                }
            }
        })
    });
    let watchdog = {
        let service = service.clone();
        let lost_after = config.lost_heartbeat_after;
        panda_runtime::task::every("watchdog", config.watchdog_interval, shutdown.clone(), move || {
            let service = service.clone();
            async move {
                if let Err(error) = service.sweep_lost_jobs(lost_after).await {
                    tracing::warn!(error = %panda_runtime::error::chain(&error), "watchdog cycle failed; retrying next cycle");
                }
                if let Err(error) = service.end_drained_tasks().await {
                    tracing::warn!(error = %panda_runtime::error::chain(&error), "ending drained tasks failed; retrying next cycle");
                }
            }
        })
    };
    let shape = group_commit::Shape {
        workers: config.group_commit.workers_for(postgres),
        max_batch: config.group_commit.max_batch,
    };
    let pilots = service::PilotBatches::start(&service, shape);
    let feed = feed::ChangeFeed::new(deps.bus.clone(), shutdown.clone());
    let log_api = grpc::LogApi::new(logs, feed.clone());
    let heartbeat_seconds = config.heartbeat_interval.as_secs().clamp(1, u64::from(u32::MAX)) as u32;
    let generation_api = grpc::GenerationApi::new(service.clone());
    // Jobs of works that end without a result get a failure result (one queue shared by replicas).
    let failures = panda_bus::Subscription::new(
        deps.bus.queue_name("server", "function-failures"),
        service::FAILURE_BINDINGS.iter().copied(),
    );
    deps.bus.consume(failures, Arc::new(service::FailureResults::new(service.clone())), shutdown.clone()).await?;
    // Jobs activated on other replicas wake this replica's long-polling GetJob calls.
    let activated = panda_bus::Subscription::transient(
        format!("{}.{}", deps.bus.queue_name("server", "activations"), uuid::Uuid::new_v4().simple()),
        [activations::ACTIVATED],
    );
    deps.bus
        .consume(activated, Arc::new(activations::ActivationEvents(service.activations())), shutdown.clone())
        .await?;
    let function_api = grpc::FunctionApi::new(service.clone(), deps.bus.clone(), shutdown.clone());
    let worker_report_api = grpc::WorkerReportApi::new(service.clone());
    let release_api = grpc::ReleaseApi::new(service.clone());
    let share_api = grpc::ShareApi::new(service.clone());
    let api = grpc::Api::new(service, pilots, feed, heartbeat_seconds);

    let mut server = panda_runtime::grpc::server("server")?;
    server.router = server
        .router
        .add_service(TaskServiceServer::new(api.clone()).max_decoding_message_size(panda_client::MAX_MESSAGE_BYTES))
        .add_service(JobServiceServer::new(api.clone()).max_decoding_message_size(panda_client::MAX_MESSAGE_BYTES))
        .add_service(PilotServiceServer::new(api.clone()).max_decoding_message_size(panda_client::MAX_MESSAGE_BYTES))
        // Default 4 MiB message limit: archives come in chunks, logs in chunks of at most 1 MiB.
        .add_service(CacheServiceServer::new(grpc::CacheApi::new(cache)))
        .add_service(LogServiceServer::new(log_api))
        .add_service(
            panda_proto::server::v1::catalog_service_server::CatalogServiceServer::new(catalog_api.clone())
                .max_decoding_message_size(panda_client::MAX_MESSAGE_BYTES),
        )
        .add_service(panda_proto::server::v1::brokerage_service_server::BrokerageServiceServer::new(catalog_api))
        .add_service(panda_proto::server::v1::generation_service_server::GenerationServiceServer::new(generation_api))
        // A work's calls arrive in one SubmitWork call (all or nothing).
        .add_service(
            panda_proto::server::v1::function_service_server::FunctionServiceServer::new(function_api)
                .max_decoding_message_size(panda_client::MAX_MESSAGE_BYTES),
        )
        .add_service(
            panda_proto::server::v1::worker_report_service_server::WorkerReportServiceServer::new(worker_report_api)
                .max_decoding_message_size(panda_client::MAX_MESSAGE_BYTES),
        )
        .add_service(
            panda_proto::server::v1::release_service_server::ReleaseServiceServer::new(release_api)
                .max_decoding_message_size(panda_client::MAX_MESSAGE_BYTES),
        )
        .add_service(panda_proto::server::v1::share_service_server::ShareServiceServer::new(share_api))
        // A task's jobs arrive in one InsertJobs call (all or nothing): up to 100000 jobs.
        .add_service(InternalServiceServer::new(api).max_decoding_message_size(panda_client::MAX_MESSAGE_BYTES));
    let admin = listeners.admin.map(|l| tokio::spawn(panda_runtime::metrics::serve(registry, l, shutdown.clone())));
    let addr = listeners.grpc.local_addr().ok();
    info!(addr = ?addr, database = %panda_db::redact(&url), "server ready");
    let served = panda_runtime::grpc::serve(server, listeners.grpc, shutdown.clone()).await;
    shutdown.cancel();
    let _ = relay.await;
    let _ = watchdog.await;
    if let Some(counter) = share_counter {
        let _ = counter.await;
    }
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    served?;
    Ok(())
}
