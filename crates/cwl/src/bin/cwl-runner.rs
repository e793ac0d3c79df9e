//! `cwl-runner`: the CWL runner interface (see `panda cwl-runner`).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(panda_cwl::runner::main_with_args(&args));
}
