//! `panda cwl-runner`: runs a CWL document (see the panda-cwl crate) with the cwl-runner
//! interface: `[--outdir DIR] [--quiet] [--executor pilot|local] [--parallel N] [--server URL] document.cwl[#id]
//! [job.yml]`; prints the output object; exit 0 on success, 1 on permanent failure, 33 for an
//! unsupported requirement.
//!
//! By default the run is a driven idds workflow and every CommandLineTool invocation a work of
//! it, whose one-job task a pilot runs ([`PilotExecutor`]): in an embedded system started here for
//! the run (every service in this process on free loopback ports, SQLite in a temporary
//! directory, a local harvester queue whose pilots are this program), or in the deployment at
//! `--server URL` (`--idds URL`). `--executor local` runs tools as plain processes.

mod pilot;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use panda_all::AllConfig;
use panda_cwl::runner::{Args, USAGE, parse_args, run_with};

pub use pilot::{PilotExecutor, Target};

/// The exit code of a run stopped by Ctrl-C or SIGTERM (128 + SIGINT).
const INTERRUPTED: i32 = 130;

/// Runs the CWL runner; returns its exit code. Pilots of the embedded system are this program
/// (`panda pilot`, or `cwl-runner pilot`).
pub async fn cwl_runner(args: Vec<String>) -> anyhow::Result<u8> {
    let exe = std::env::current_exe().context("cannot find this program to start pilots")?;
    let code = run(args, vec![exe.display().to_string(), "pilot".to_owned()]).await;
    Ok(u8::try_from(code).unwrap_or(1))
}

/// The runner's main with a pilot program for the embedded system.
pub async fn run(raw: Vec<String>, pilot_program: Vec<String>) -> i32 {
    let args = match parse_args(&raw) {
        Ok(a) => a,
        Err(v) if v == "version" => {
            println!("panda cwl-runner {}", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return 1;
        }
    };
    if args.local() {
        if args.server.is_some() || args.idds.is_some() {
            eprintln!("cwl-runner: --server and --idds need the pilot executor (drop --executor local)");
            return 1;
        }
        return tokio::task::spawn_blocking(move || panda_cwl::runner::main_with_args(&raw)).await.unwrap_or(1);
    }
    match run_on_system(args, pilot_program).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("cwl-runner: {error:#}");
            1
        }
    }
}

async fn run_on_system(args: Args, pilot_program: Vec<String>) -> anyhow::Result<i32> {
    let scratch =
        tempfile::Builder::new().prefix("panda-cwl-").tempdir().context("cannot create a scratch directory")?;
    let _telemetry = init_logs(args.quiet);
    let target = match (&args.server, &args.idds) {
        (Some(url), idds) => Target::Server {
            server: url.clone(),
            idds: idds
                .clone()
                .or_else(|| std::env::var("PANDA_IDDS_URL").ok().filter(|u| !u.is_empty()))
                .unwrap_or_else(|| idds_url_of(url)),
        },
        (None, Some(_)) => anyhow::bail!("--idds needs --server (without it the run starts its own system)"),
        (None, None) => {
            let pilots = args.parallel.unwrap_or(pilot::DEFAULT_PARALLEL);
            Target::Embedded { config: Box::new(embedded_config(scratch.path(), pilots)?), pilot_program }
        }
    };
    let user = std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "cwl".to_owned());
    let executor = Arc::new(
        PilotExecutor::new(
            target,
            tokio::runtime::Handle::current(),
            &scratch.path().join("jobs"),
            user,
            &args.document,
        )
        .with_quiet(args.quiet),
    );
    let shutdown = panda_runtime::shutdown::on_signals();
    let work = {
        let executor = executor.clone();
        let scratch = scratch.path().to_path_buf();
        tokio::task::spawn_blocking(move || run_with(&args, executor.as_ref(), &scratch))
    };
    let outcome = tokio::select! {
        joined = work => joined,
        () = shutdown.cancelled() => {
            // Interrupted: no job may outlive the run.
            executor.shutdown(true).await;
            // The tool's thread still waits for its task's end; do not wait for it (so the
            // scratch directory is removed here, not on drop).
            if let Err(error) = std::fs::remove_dir_all(scratch.path()) {
                eprintln!("cwl-runner: cannot remove {}: {error}", scratch.path().display());
            }
            std::process::exit(INTERRUPTED);
        }
    };
    let (code, reason) = match outcome {
        Ok(Ok(output)) => {
            println!("{}", serde_json::to_string_pretty(&output).unwrap_or_default());
            (0, String::new())
        }
        Ok(Err(error)) => {
            eprintln!("cwl-runner: {error}");
            (error.exit_code(), error.to_string())
        }
        Err(join) => {
            eprintln!("cwl-runner: the run panicked: {join}");
            (1, format!("the run panicked: {join}"))
        }
    };
    executor.close(code == 0, &reason).await;
    executor.shutdown(false).await;
    Ok(code)
}

/// idds beside a server: `PANDA_IDDS_URL`'s default port (50054) on the server's host.
pub fn idds_url_of(server_url: &str) -> String {
    match server_url.parse::<tonic::transport::Uri>() {
        Ok(uri) if uri.host().is_some() => {
            let scheme = uri.scheme_str().unwrap_or("http");
            let host = uri.host().unwrap_or("127.0.0.1");
            let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_owned() };
            format!("{scheme}://{host}:50054")
        }
        _ => "http://127.0.0.1:50054".to_owned(),
    }
}

/// Logs of the embedded services go to stderr, warnings and errors only (`RUST_LOG` wins).
fn init_logs(quiet: bool) -> Option<panda_runtime::telemetry::TelemetryGuard> {
    let config = panda_runtime::telemetry::TelemetryConfig {
        filter: if quiet { "error" } else { "warn" }.to_owned(),
        format: panda_runtime::telemetry::LogFormat::Pretty,
        otlp_endpoint: None,
    };
    panda_runtime::telemetry::init("panda-cwl-runner", &config).ok()
}

/// The embedded system of one run: every service on a free loopback port, data in `scratch`,
/// one `local` queue whose pilots ask for no fixed size (tools share this host, as with any
/// local runner: a ResourceRequirement sizes the job, it does not wait for free cores), and
/// short cycles so a job starts within a fraction of a second; up to `pilots` pilots at once
/// (the run's `--parallel`), so parallel invocations do run in parallel.
pub fn embedded_config(scratch: &Path, pilots: usize) -> anyhow::Result<AllConfig> {
    let data_dir: PathBuf = scratch.join("system");
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let queues = data_dir.join("queues.yaml");
    std::fs::write(
        &queues,
        format!(
            "queues:\n  local:\n    max_workers: {}\n    resources: {{ cores: 0, memory_mb: 0, disk_mb: 0, walltime_seconds: 0 }}\n    pilot_max_jobs: 0\n    plugin:\n      type: local\n",
            pilots.max(1)
        ),
    )
    .with_context(|| format!("cannot write {}", queues.display()))?;
    let mut config = AllConfig::ephemeral(data_dir);
    config.harvester.queue_config = Some(queues);
    config.harvester.cycle_interval = Duration::from_millis(200);
    config.jedi.sweep_interval = Duration::from_secs(2);
    config.server.heartbeat_interval = Duration::from_secs(2);
    Ok(config)
}
