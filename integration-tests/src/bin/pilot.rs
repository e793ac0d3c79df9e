//! The pilot, for the embedded integration tests (same library and arguments as `panda-pilot`).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    panda_pilot::cli::main(panda_pilot::cli::Args::parse()).await?;
    Ok(())
}
