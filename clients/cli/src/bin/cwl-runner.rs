//! `cwl-runner`: the CWL runner interface that cwltest drives, the same as `panda cwl-runner`:
//! `cwl-runner [--outdir DIR] [--quiet] document.cwl[#id] [job.yml]`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(panda_cwl::runner::main_with_args(&args));
}
