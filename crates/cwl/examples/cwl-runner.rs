//! The runner without the rest of the CLI, for quick conformance runs:
//! `cargo run -p panda-cwl --example cwl-runner -- [--outdir DIR] doc.cwl [job.yml]`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(panda_cwl::runner::main_with_args(&args));
}
