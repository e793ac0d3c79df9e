//! The pilot's command line, shared by `panda-pilot` and `panda pilot`: flags (or their
//! `PANDA_PILOT_*` variables) over the `[pilot]` config section, then [`crate::run`] until the
//! queue is empty or a signal arrives.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use humantime_serde::re::humantime;
use panda_runtime::config::{ConfigError, Loader};
use panda_runtime::telemetry::TelemetryConfig;

/// The pilot could not run.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Logging could not start.
    #[error(transparent)]
    Telemetry(#[from] panda_runtime::telemetry::TelemetryError),
    /// The pilot stopped on an error.
    #[error("pilot stopped on an error")]
    Pilot(#[from] crate::Error),
}

/// Runs PanDA jobs of one queue on this node.
#[derive(Debug, Parser)]
#[command(name = "panda-pilot", version, about)]
pub struct Args {
    /// Config file with a `[pilot]` section.
    #[arg(long, env = "PANDA_CONFIG")]
    pub config: Option<PathBuf>,
    /// PilotService URL [default: http://127.0.0.1:50051].
    #[arg(long, env = "PANDA_PILOT_SERVER")]
    pub server: Option<String>,
    /// Queue to take jobs from [default: local].
    #[arg(long, env = "PANDA_PILOT_QUEUE")]
    pub queue: Option<String>,
    /// Node name reported to the server [default: host name].
    #[arg(long, env = "PANDA_PILOT_NODE")]
    pub node: Option<String>,
    /// Harvester worker ID.
    #[arg(long, env = "PANDA_PILOT_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Root of the job directories [default: ./panda-data/pilot].
    #[arg(long, env = "PANDA_PILOT_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Cores offered (0: no limit).
    #[arg(long, env = "PANDA_PILOT_CORES")]
    pub cores: Option<u32>,
    /// Memory offered in MB (0: no limit).
    #[arg(long, env = "PANDA_PILOT_MEMORY_MB")]
    pub memory_mb: Option<u64>,
    /// Stop after this many jobs (0: until the queue is empty).
    #[arg(long, env = "PANDA_PILOT_MAX_JOBS")]
    pub max_jobs: Option<u32>,
    /// Push mode: run the jobs of this job file (written by harvester) before asking the server.
    #[arg(long, env = "PANDA_PILOT_JOB_FILE")]
    pub job_file: Option<PathBuf>,
    /// Container runtimes the queue declares, comma-separated (harvester passes them): looked for
    /// first when `pilot.container` names no runtime.
    #[arg(long, env = "PANDA_PILOT_CONTAINER_RUNTIMES", value_delimiter = ',')]
    pub container_runtimes: Option<Vec<String>>,
    /// Take no new job after this long, e.g. "12h" [default: 24h].
    #[arg(long, env = "PANDA_PILOT_LIFETIME", value_parser = humantime::parse_duration)]
    pub lifetime: Option<Duration>,
    /// SIGTERM to SIGKILL gap when killing the payload [default: 10s].
    #[arg(long, env = "PANDA_PILOT_KILL_GRACE", value_parser = humantime::parse_duration)]
    pub kill_grace: Option<Duration>,
    /// Give up after this long without a successful server update [default: 3h].
    #[arg(long, env = "PANDA_PILOT_SERVER_DEADLINE", value_parser = humantime::parse_duration)]
    pub server_deadline: Option<Duration>,
    /// Heartbeat interval, overriding the server's.
    #[arg(long, env = "PANDA_PILOT_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// How often the payload's output is sent to the server [default: 5s].
    #[arg(long, env = "PANDA_PILOT_LOG_INTERVAL", value_parser = humantime::parse_duration)]
    pub log_interval: Option<Duration>,
}

impl Args {
    /// Layers the flags that were given over the file and environment.
    fn apply(&self, mut loader: Loader) -> Loader {
        fn set<T: serde::Serialize>(loader: Loader, key: &str, value: Option<T>) -> Loader {
            match value {
                Some(value) => loader.with_override(&format!("pilot.{key}"), value),
                None => loader,
            }
        }
        // Durations go in as text, the form the config section parses.
        let text = |value: Option<Duration>| value.map(|value| humantime::format_duration(value).to_string());
        loader = set(loader, "server_url", self.server.clone());
        loader = set(loader, "queue", self.queue.clone());
        loader = set(loader, "node", self.node.clone());
        loader = set(loader, "worker_id", self.worker_id.clone());
        loader = set(loader, "work_dir", self.work_dir.clone());
        loader = set(loader, "cores", self.cores);
        loader = set(loader, "memory_mb", self.memory_mb);
        loader = set(loader, "max_jobs", self.max_jobs);
        loader = set(loader, "job_file", self.job_file.clone());
        loader = set(loader, "container.queue_runtimes", self.container_runtimes.clone());
        loader = set(loader, "lifetime", text(self.lifetime));
        loader = set(loader, "kill_grace", text(self.kill_grace));
        loader = set(loader, "server_deadline", text(self.server_deadline));
        loader = set(loader, "heartbeat_interval", text(self.heartbeat_interval));
        set(loader, "log_interval", text(self.log_interval))
    }
}

/// Parses the configuration, starts telemetry and runs the pilot until it runs out of work or a
/// signal (SIGTERM, Ctrl-C) stops it.
///
/// # Errors
/// [`CliError`] for bad configuration or a pilot that stopped on an error.
pub async fn main(args: Args) -> Result<crate::Summary, CliError> {
    let base = Loader::new(args.config.as_deref());
    base.check_top_level()?;
    let telemetry: TelemetryConfig = base.section("telemetry")?;
    let _telemetry = panda_runtime::telemetry::init("pilot", &telemetry)?;
    let config: crate::Config = args.apply(base).section("pilot")?;
    let shutdown = panda_runtime::shutdown::on_signals();
    let summary = crate::run(config, shutdown).await?;
    tracing::info!(
        jobs_run = summary.jobs_run,
        finished = summary.jobs_finished,
        failed = summary.jobs_failed,
        "pilot exiting"
    );
    Ok(summary)
}
