//! Every panda service in one process: the embedded mode behind `panda up` and the integration
//! tests. Each service runs its normal `run` on its own loopback port, so the same gRPC code path
//! serves both modes; only the bus (in-process unless `bus.url` is set) and the wiring of service
//! URLs to the local server differ.

use std::path::PathBuf;

use panda_bus::{Bus, BusConfig};
use panda_runtime::Listeners;
use panda_runtime::config::{ConfigError, Loader};
use panda_runtime::telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// The whole config file: every section, unknown keys refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AllConfig {
    /// Data directory.
    pub data_dir: PathBuf,
    /// `[telemetry]`.
    pub telemetry: TelemetryConfig,
    /// `[bus]`.
    pub bus: BusConfig,
    /// `[server]`.
    pub server: panda_server::Config,
    /// `[jedi]`.
    pub jedi: panda_jedi::Config,
    /// `[harvester]`.
    pub harvester: panda_harvester::Config,
    /// `[idds]`.
    pub idds: panda_idds::Config,
    /// `[pilot]` (used by `panda pilot`).
    pub pilot: panda_pilot::Config,
}

impl Default for AllConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./panda-data"),
            telemetry: TelemetryConfig::default(),
            bus: BusConfig::default(),
            server: Default::default(),
            jedi: Default::default(),
            harvester: Default::default(),
            idds: Default::default(),
            pilot: Default::default(),
        }
    }
}

impl AllConfig {
    /// Loads every section from the loader's layers.
    ///
    /// # Errors
    /// Unknown keys or bad values, named.
    pub fn load(loader: &Loader) -> Result<Self, ConfigError> {
        loader.check_top_level()?;
        let config = Self {
            data_dir: loader.data_dir()?,
            telemetry: loader.section("telemetry")?,
            bus: loader.section("bus")?,
            server: loader.section("server")?,
            jedi: loader.section("jedi")?,
            harvester: loader.section("harvester")?,
            idds: loader.section("idds")?,
            pilot: loader.section("pilot")?,
        };
        config.server.validate()?;
        config.jedi.validate()?;
        config.harvester.validate()?;
        config.idds.validate()?;
        Ok(config)
    }

    /// Every service on `127.0.0.1:0` and data under `data_dir` (tests).
    pub fn ephemeral(data_dir: PathBuf) -> Self {
        let any: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
        let mut config = Self { data_dir, ..Self::default() };
        config.server.listen_addr = any;
        config.server.admin_addr = any;
        config.jedi.listen_addr = any;
        config.jedi.admin_addr = any;
        config.harvester.listen_addr = any;
        config.harvester.admin_addr = any;
        config.idds.listen_addr = any;
        config.idds.admin_addr = any;
        config
    }
}

/// The running services.
pub struct Cluster {
    /// Server gRPC URL.
    pub server_url: String,
    /// JEDI gRPC URL.
    pub jedi_url: String,
    /// Harvester gRPC URL.
    pub harvester_url: String,
    /// idds gRPC URL.
    pub idds_url: String,
    /// The data directory.
    pub data_dir: PathBuf,
    services: Vec<(&'static str, CancellationToken, JoinHandle<anyhow::Result<()>>)>,
    stopped: CancellationToken,
}

fn url(listeners: &Listeners) -> std::io::Result<String> {
    Ok(format!("http://{}", listeners.grpc.local_addr()?))
}

impl Cluster {
    /// Starts server, JEDI, idds and harvester (in that order; each binds before the next starts).
    /// `pilot_program` starts a pilot (program and leading arguments).
    ///
    /// # Errors
    /// A port is taken, or the bus cannot be reached.
    pub async fn start(mut config: AllConfig, pilot_program: Vec<String>) -> anyhow::Result<Self> {
        use anyhow::Context;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
        let data_dir = std::path::absolute(&config.data_dir).unwrap_or(config.data_dir.clone());
        let bus = Bus::connect(&config.bus).await.context("connecting to the event bus")?;
        let bind = |grpc, admin| async move { Listeners::bind(grpc, Some(admin)).await };
        let server_listeners = bind(config.server.listen_addr, config.server.admin_addr).await?;
        let jedi_listeners = bind(config.jedi.listen_addr, config.jedi.admin_addr).await?;
        let idds_listeners = bind(config.idds.listen_addr, config.idds.admin_addr).await?;
        let harvester_listeners = bind(config.harvester.listen_addr, config.harvester.admin_addr).await?;
        let server_url = url(&server_listeners)?;
        // A harvester with a broken queue file fails in its own task, reported like any crash.
        let expected_queues = panda_harvester::load_queues(&config.harvester).map(|f| f.queues.len()).unwrap_or(0);
        // In one process every service talks to this server.
        config.jedi.server_url = server_url.clone();
        config.idds.server_url = server_url.clone();
        config.harvester.server_url = server_url.clone();
        let mut cluster = Cluster {
            jedi_url: url(&jedi_listeners)?,
            harvester_url: url(&harvester_listeners)?,
            idds_url: url(&idds_listeners)?,
            server_url,
            data_dir: data_dir.clone(),
            services: Vec::new(),
            stopped: CancellationToken::new(),
        };
        let token = CancellationToken::new();
        let server_token = token.child_token();
        let deps = panda_server::Deps { data_dir: data_dir.clone(), bus: bus.clone() };
        cluster.spawn("server", server_token.clone(), async move {
            Ok(panda_server::run(config.server, deps, server_listeners, server_token).await?)
        });
        let jedi_token = token.child_token();
        let deps = panda_jedi::Deps { bus: bus.clone() };
        cluster.spawn("jedi", jedi_token.clone(), async move {
            Ok(panda_jedi::run(config.jedi, deps, jedi_listeners, jedi_token).await?)
        });
        let idds_token = token.child_token();
        let deps = panda_idds::Deps { data_dir: data_dir.clone(), bus: bus.clone() };
        cluster.spawn("idds", idds_token.clone(), async move {
            Ok(panda_idds::run(config.idds, deps, idds_listeners, idds_token).await?)
        });
        let harvester_token = token.child_token();
        let deps = panda_harvester::Deps { data_dir, bus, pilot_program };
        cluster.spawn("harvester", harvester_token.clone(), async move {
            Ok(panda_harvester::run(config.harvester, deps, harvester_listeners, harvester_token).await?)
        });
        cluster.wait_for_queues(expected_queues).await;
        info!(server = %cluster.server_url, idds = %cluster.idds_url, "all services started");
        Ok(cluster)
    }

    /// Waits (up to 10 s) until the harvester's queues are known to the server, so work submitted
    /// right after start is brokered at once instead of waiting for the next sweep.
    async fn wait_for_queues(&self, expected: usize) {
        let Ok(server) = panda_client::ServerClient::new(&self.server_url) else { return };
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline && !self.stopped.is_cancelled() {
            let known = server
                .internal
                .clone()
                .list_queues(panda_proto::server::v1::ListQueuesRequest {})
                .await
                .map(|r| r.into_inner().queues.len())
                .unwrap_or(0);
            if known >= expected {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    fn spawn(
        &mut self,
        name: &'static str,
        token: CancellationToken,
        future: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let stopped = self.stopped.clone();
        let handle = tokio::spawn(async move {
            let result = future.await;
            if let Err(error) = &result {
                error!(service = name, error = format!("{error:#}"), "service stopped with an error");
            }
            // One service down means the embedded system is broken: bring the rest down too.
            stopped.cancel();
            result
        });
        self.services.push((name, token, handle));
    }

    /// Resolves when any service stopped (normally: only at shutdown).
    pub async fn any_stopped(&self) {
        self.stopped.cancelled().await;
    }

    /// Stops the services, harvester first (its pilots still report to a running server), the
    /// server last.
    ///
    /// # Errors
    /// The first service that ended with an error.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        for name in ["harvester", "idds", "jedi", "server"] {
            if let Some(position) = self.services.iter().position(|(n, _, _)| *n == name) {
                let (name, token, handle) = self.services.remove(position);
                token.cancel();
                match handle.await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        first_error.get_or_insert(error.context(format!("{name} failed")));
                    }
                    Err(join) => {
                        first_error.get_or_insert(anyhow::anyhow!("{name} panicked: {join}"));
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_is_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/panda.toml");
        let loaded = AllConfig::load(&Loader::from_toml(&std::fs::read_to_string(path).unwrap())).unwrap();
        assert_eq!(loaded, AllConfig::default());
    }

    #[test]
    fn unknown_keys_are_named() {
        let error =
            AllConfig::load(&Loader::from_toml("[harvester]\ncycle_intervall = \"1s\"\n")).unwrap_err().to_string();
        assert!(error.contains("cycle_intervall"), "{error}");
        let error = AllConfig::load(&Loader::from_toml("[harvestr]\n")).unwrap_err().to_string();
        assert!(error.contains("harvestr"), "{error}");
    }

    #[test]
    fn values_are_validated() {
        let error = AllConfig::load(&Loader::from_toml("[harvester]\nlocal_workers = 0\n")).unwrap_err().to_string();
        assert!(error.contains("harvester.local_workers"), "{error}");
        let error =
            AllConfig::load(&Loader::from_toml("[jedi]\nserver_url = \"127.0.0.1:1\"\n")).unwrap_err().to_string();
        assert!(error.contains("jedi.server_url = \"127.0.0.1:1\": must be an http:// or https:// URL"), "{error}");
    }
}
