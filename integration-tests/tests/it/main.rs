//! End-to-end tests, one binary: `embedded` runs every service in this process (SQLite, the
//! in-process bus, local pilots); `processes` runs the real service binaries against PostgreSQL
//! and RabbitMQ (ignored unless PANDA_TEST_DATABASE_URL and PANDA_TEST_AMQP_URL are set); `slurm`
//! runs pilots as real Slurm jobs (ignored unless PANDA_TEST_SLURM=1).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod cache_logs;
mod checks;
mod embedded;
mod hpo;
mod jedi;
mod processes;
mod push;
mod slurm;

/// The pilot program the embedded harvester starts.
const PILOT: &str = env!("CARGO_BIN_EXE_panda-it-pilot");
