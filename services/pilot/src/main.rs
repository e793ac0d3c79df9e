//! `panda-pilot`: the pilot as its own program (see `panda_pilot::cli`). Exit code 0 when it ran
//! out of work or was stopped cleanly (SIGTERM, Ctrl-C), 1 on an error.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    panda_pilot::cli::main(panda_pilot::cli::Args::parse()).await?;
    Ok(())
}
