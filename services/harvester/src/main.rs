//! `panda-harvester`: the harvester as its own process. `panda-harvester check-queues FILE`
//! validates a queue file and prints the effective configuration.

use std::path::PathBuf;

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
    /// Validates a queue file and prints it with defaults filled in.
    CheckQueues {
        /// The YAML queue file.
        file: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::CheckQueues { file }) = args.command {
        let queues = panda_harvester::QueueFile::load(&file)?;
        print!("{}", serde_yaml_ng::to_string(&queues)?);
        return Ok(());
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
    Ok(())
}
