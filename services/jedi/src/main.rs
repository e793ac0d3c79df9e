//! `panda-jedi`: jedi as its own process.

use std::path::PathBuf;

use clap::Parser;

/// JEDI: turns tasks into brokered jobs.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Config file (TOML); PANDA_* variables override it.
    #[arg(long, env = "PANDA_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (loader, _telemetry) =
        panda_runtime::config::boot("panda-jedi", args.config.as_deref()).map_err(anyhow::Error::from_boxed)?;
    let config: panda_jedi::Config = loader.section("jedi")?;
    let bus = panda_bus::Bus::connect_broker(&loader.section("bus")?, "panda-jedi").await?;
    let listeners = panda_runtime::Listeners::bind(config.listen_addr, Some(config.admin_addr)).await?;
    let deps = panda_jedi::Deps { bus };
    panda_jedi::run(config, deps, listeners, panda_runtime::shutdown::on_signals()).await?;
    Ok(())
}
