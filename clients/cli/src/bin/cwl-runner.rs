//! `cwl-runner`: the CWL runner interface that cwltest drives, the same as `panda cwl-runner`:
//! `cwl-runner [--outdir DIR] [--quiet] [--executor pilot|local] [--server URL] document.cwl[#id]
//! [job.yml]`. `cwl-runner pilot ...` is the pilot its embedded system starts (as `panda pilot`).

#[path = "../cwl/mod.rs"]
mod cwl;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cwl-runner: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        if args.first().map(String::as_str) == Some("pilot") {
            use clap::Parser as _;
            let args = panda_pilot::cli::Args::parse_from(
                std::iter::once("cwl-runner pilot".to_owned()).chain(args.into_iter().skip(1)),
            );
            return match panda_pilot::cli::main(args).await {
                Ok(_) => 0,
                Err(error) => {
                    eprintln!("pilot: {error:#}");
                    1
                }
            };
        }
        match cwl::cwl_runner(args).await {
            Ok(code) => i32::from(code),
            Err(error) => {
                eprintln!("cwl-runner: {error:#}");
                1
            }
        }
    });
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
