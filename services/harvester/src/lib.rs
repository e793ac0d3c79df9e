//! Harvester: keeps pilots running where jobs wait. Each cycle it reports its queues to the
//! server, asks how many jobs are activated per queue, decides how many workers to add
//! (`adjuster`), submits them through the queue's plugin (`plugins`), monitors and reaps them,
//! and cleans up. Workers live in the harvester's own database (`store`), so a restart picks
//! them up again; each worker state change is a `worker.<state>` event (outbox). The queue file
//! is reloaded when it changes or on SIGHUP (`watch_queue_file`), without a restart.
//!
//! Modules: `config` (`[harvester]`), `queues` (the site admin's queue file), `adjuster` (pure
//! sizing), `plugins` (role traits, config enum, factory; `local`, `slurm`, `htcondor`), `store`, `provisioner` (the
//! cycle, the propagator's report and server kills), `propagator` (its pure parts), `grpc` (HarvesterService), `metrics`.

pub mod adjuster;
pub mod config;
pub mod grpc;
pub mod metrics;
pub mod plugins;
pub mod propagator;
pub mod provisioner;
pub mod queues;
pub mod store;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use panda_bus::Bus;
use panda_bus::outbox::{self, Outbox};
use panda_proto::harvester::v1::harvester_service_server::HarvesterServiceServer;
use panda_runtime::Listeners;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::Config;
pub use queues::{QueueConfigError, QueueFile};

/// What the harvester shares with the rest of the process.
pub struct Deps {
    /// Data directory (database, worker directories).
    pub data_dir: PathBuf,
    /// Where worker events go.
    pub bus: Bus,
    /// How to start a pilot (program and leading arguments), unless a queue says otherwise.
    pub pilot_program: Vec<String>,
}

/// The harvester could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] panda_runtime::config::ConfigError),
    /// Bad queue file.
    #[error(transparent)]
    Queues(#[from] QueueConfigError),
    /// Database.
    #[error(transparent)]
    Db(#[from] panda_db::Error),
    /// The server URL is malformed.
    #[error(transparent)]
    Client(#[from] panda_client::Error),
    /// gRPC serving.
    #[error(transparent)]
    Grpc(#[from] panda_runtime::grpc::GrpcError),
}

/// The queues this harvester serves: the file, or the built-in local queue.
///
/// # Errors
/// [`QueueConfigError`] naming the file and key.
pub fn load_queues(config: &Config) -> Result<QueueFile, QueueConfigError> {
    match &config.queue_config {
        Some(path) => QueueFile::load(path),
        None => Ok(QueueFile::embedded_default(config.local_workers)),
    }
}

/// Runs the harvester until `shutdown`.
///
/// # Errors
/// [`RunError`] for bad config or queue file, the database, or a failing listener.
pub async fn run(
    config: Config,
    deps: Deps,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    config.validate()?;
    let queue_file = load_queues(&config)?;
    let url = config.database.url_or_sqlite(&deps.data_dir, "harvester.db");
    let db = panda_db::connect_and_migrate::<store::Migrator>(&url, config.database.max_connections).await?;
    let outbox = Outbox::new(db.clone());
    let relay = tokio::spawn(outbox::run_relay(outbox.clone(), Arc::new(deps.bus.clone()), shutdown.clone()));
    let plugin_deps = plugins::PluginDeps { pilot_program: deps.pilot_program.clone() };
    let queues: BTreeMap<String, provisioner::Queue> = queue_file
        .queues
        .into_iter()
        .map(|(name, config)| {
            let plugins = plugins::build(&name, &config.plugin, &plugin_deps);
            (name.clone(), provisioner::Queue { name, config, plugins })
        })
        .collect();
    let queue_path = config.queue_config.clone();
    let harvester_id = config.harvester_id.clone().unwrap_or_else(|| {
        let host =
            nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into());
        format!("harvester-{host}")
    });
    let worker_dir = config.worker_dir.clone().unwrap_or_else(|| deps.data_dir.join("workers"));
    let worker_dir = std::path::absolute(&worker_dir).unwrap_or(worker_dir);
    let provisioner = provisioner::Provisioner::new(
        harvester_id.clone(),
        queues,
        db,
        outbox,
        panda_client::ServerClient::new(&config.server_url)?,
        config.server_url.clone(),
        worker_dir,
        config.keep_finished,
    )
    .with_server_kill_grace(config.server_kill_grace);
    let cycles = {
        let provisioner = provisioner.clone();
        panda_runtime::task::every("provisioning", config.cycle_interval, shutdown.clone(), move || {
            let provisioner = provisioner.clone();
            async move { provisioner.cycle().await }
        })
    };
    let propagation = {
        let provisioner = provisioner.clone();
        panda_runtime::task::every("propagator", config.propagate_interval, shutdown.clone(), move || {
            let provisioner = provisioner.clone();
            async move {
                if let Err(error) = provisioner.propagate().await {
                    tracing::warn!(%error, "could not report workers to the server; retrying next cycle");
                }
            }
        })
    };
    let reloads = queue_path.map(|path| {
        tokio::spawn(watch_queue_file(
            path,
            config.reload_interval,
            provisioner.clone(),
            plugin_deps.clone(),
            shutdown.clone(),
        ))
    });
    let mut registry = prometheus_client::registry::Registry::default();
    provisioner.metrics.register(&mut registry);
    let registry = Arc::new(registry);
    let admin = listeners.admin.map(|l| tokio::spawn(panda_runtime::metrics::serve(registry, l, shutdown.clone())));
    let mut server = panda_runtime::grpc::server("harvester")?;
    server.router =
        server.router.add_service(HarvesterServiceServer::new(grpc::Api { provisioner: provisioner.clone() }));
    info!(addr = ?listeners.grpc.local_addr().ok(), %harvester_id, queues = provisioner.queues().len(), "harvester ready");
    let served = panda_runtime::grpc::serve(server, listeners.grpc, shutdown.clone()).await;
    shutdown.cancel();
    let _ = cycles.await;
    let _ = propagation.await;
    if let Some(reloads) = reloads {
        let _ = reloads.await;
    }
    if config.kill_local_workers_on_exit {
        provisioner.kill_local_workers(Duration::from_secs(15)).await;
    }
    let _ = relay.await;
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    served?;
    Ok(())
}

/// Reloads the queue file when it changes (checked every `interval`) or on SIGHUP, without a
/// restart. A file that does not load leaves the running configuration as it is; the problems
/// are logged, one per line, as `config check` prints them.
pub async fn watch_queue_file(
    path: PathBuf,
    interval: Duration,
    provisioner: provisioner::Provisioner,
    plugin_deps: plugins::PluginDeps,
    shutdown: CancellationToken,
) {
    let modified = |path: &std::path::Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut seen = modified(&path);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let signalled = async {
            match hangup.as_mut() {
                Some(signal) => signal.recv().await.is_some(),
                None => std::future::pending().await,
            }
        };
        let forced = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => false,
            got = signalled => got,
        };
        let now = modified(&path);
        if !forced && now == seen {
            continue;
        }
        seen = now;
        match QueueFile::load(&path) {
            Ok(file) => {
                let build = |name: &str, config: &plugins::PluginConfig| plugins::build(name, config, &plugin_deps);
                match provisioner.reload(file, build).await {
                    Ok(summary) => info!(
                        file = %path.display(),
                        added = ?summary.added,
                        changed = ?summary.changed,
                        removed = ?summary.removed,
                        draining = ?summary.draining,
                        "queue config reloaded"
                    ),
                    Err(error) => tracing::warn!(%error, "queue config reload failed; the running config stays"),
                }
            }
            Err(error) => {
                for line in error.lines() {
                    tracing::warn!(problem = %line, "queue config not reloaded; the running config stays");
                }
            }
        }
    }
}
