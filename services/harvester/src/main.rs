//! `panda-harvester`: the harvester as its own process.
//!
//! - `panda-harvester config check FILE` validates a queue file and prints the effective
//!   configuration (every queue merged over its template and the defaults), or every problem,
//!   one per line, naming the file, queue and key.
//! - `panda-harvester config schema` prints the queue file's JSON Schema.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Harvester: provisions pilots on resources.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Config file (TOML); PANDA_* variables override it.
    #[arg(long, env = "PANDA_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Queue file tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Same as `config check`.
    #[command(hide = true)]
    CheckQueues {
        /// The YAML queue file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validates a queue file and prints the effective configuration.
    Check {
        /// The YAML queue file.
        file: PathBuf,
    },
    /// Prints the queue file's JSON Schema.
    Schema,
}

fn check(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    match panda_harvester::QueueFile::load(file) {
        Ok(queues) => {
            print!("{}", serde_yaml_ng::to_string(&queues)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            for line in error.lines() {
                eprintln!("{line}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    match args.command {
        Some(Command::Config(ConfigCommand::Check { file }) | Command::CheckQueues { file }) => return check(&file),
        Some(Command::Config(ConfigCommand::Schema)) => {
            println!("{}", serde_json::to_string_pretty(&panda_harvester::QueueFile::json_schema())?);
            return Ok(ExitCode::SUCCESS);
        }
        None => {}
    }
    let (loader, _telemetry) =
        panda_runtime::config::boot("panda-harvester", args.config.as_deref()).map_err(anyhow::Error::from_boxed)?;
    let config: panda_harvester::Config = loader.section("harvester")?;
    let bus = panda_bus::Bus::connect_broker(&loader.section("bus")?, "panda-harvester").await?;
    let listeners = panda_runtime::Listeners::bind(config.listen_addr, Some(config.admin_addr)).await?;
    // The pilot binary is installed next to this one.
    let pilot = std::env::current_exe()?.with_file_name("panda-pilot");
    let deps =
        panda_harvester::Deps { data_dir: loader.data_dir()?, bus, pilot_program: vec![pilot.display().to_string()] };
    panda_harvester::run(config, deps, listeners, panda_runtime::shutdown::on_signals()).await?;
    Ok(ExitCode::SUCCESS)
}
