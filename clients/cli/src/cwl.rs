//! `panda cwl-runner`: runs a CWL document (see the panda-cwl crate) with the cwl-runner
//! interface: `[--outdir DIR] [--quiet] document.cwl[#id] [job.yml]`; prints the output object;
//! exit 0 on success, 1 on permanent failure, 33 for an unsupported requirement.

/// Runs the CWL runner on a blocking thread; returns its exit code.
pub async fn cwl_runner(args: Vec<String>) -> anyhow::Result<u8> {
    let code = tokio::task::spawn_blocking(move || panda_cwl::runner::main_with_args(&args)).await?;
    Ok(u8::try_from(code).unwrap_or(1))
}
