//! `panda-idds`: idds as its own process.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use panda_runtime::config::Loader;

/// idds: the workflow engine.
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
    let loader = Loader::new(args.config.as_deref());
    loader.check_top_level()?;
    let telemetry = loader.section("telemetry")?;
    let _guard = panda_runtime::telemetry::init("panda-idds", &telemetry)?;
    let config: panda_idds::Config = loader.section("idds")?;
    let bus_config: panda_bus::BusConfig = loader.section("bus")?;
    anyhow::ensure!(
        bus_config.url.is_some(),
        "bus.url is not set: a standalone panda-idds follows task events on RabbitMQ (set bus.url or PANDA_BUS__URL); \
         the in-process bus works only inside `panda up`"
    );
    let bus = panda_bus::Bus::connect(&bus_config).await.context("connecting to the event bus")?;
    let listeners = panda_runtime::Listeners::bind(config.listen_addr, Some(config.admin_addr)).await?;
    let deps = panda_idds::Deps { data_dir: loader.data_dir()?, bus };
    panda_idds::run(config, deps, listeners, panda_runtime::shutdown::on_signals()).await?;
    Ok(())
}
