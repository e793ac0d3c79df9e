//! Running a payload inside its task's container image (`DispatchedJob.container_image`), through
//! a container runtime on the worker node: Apptainer or Singularity (`exec`), Podman or Docker
//! (`run`).
//!
//! The `[pilot.container]` config section picks the runtime ([`ContainerConfig`]); [`resolve`]
//! finds its executable (the configured `path`, else the configured runtime on `PATH`, else the
//! first runtime the queue declares found on `PATH` (harvester passes them), else the first of
//! apptainer, singularity, podman, docker on `PATH`); [`command`] builds the runtime's
//! argument vector for one launch, a pure function per runtime:
//!
//! - the job directory is bind-mounted at the same path and is the working directory;
//! - the payload's environment (the job's variables and the `PANDA_*` ones: server URL, job and
//!   task IDs, work dir, code archive, image) is passed explicitly and nothing else of the
//!   pilot's: Apptainer `--cleanenv` with `--env K=V` (values holding a comma, a quote or a
//!   newline, which `--env` would split or mangle, go as `APPTAINERENV_K` in the runtime's own
//!   environment), Podman/Docker `-e K=V`;
//! - Podman/Docker also get `--rm`, `--init` (a PID 1 that forwards signals and reaps),
//!   `--name` (so that a kill can `rm -f` the container, which is not in the pilot's process
//!   group), `--network host` (the payload reaches the server at the pilot's URL), and `-i` for
//!   a warm runtime (its stdin is the pilot's pipe); Docker runs as the pilot's user so the job
//!   directory stays the pilot's;
//! - the payload is `/bin/sh -c COMMAND` inside the image; its exit code is the runtime's.
//!
//! A failure of the runtime itself (Podman/Docker exit 125; Apptainer/Singularity exit 255 with a
//! `FATAL:` line: the image cannot be pulled, opened or started) is told apart from the payload's
//! own exit by [`runtime_failure`].

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use panda_runtime::executable::{find_on_path, is_executable};
use serde::{Deserialize, Serialize};

/// A container runtime the pilot can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// `apptainer exec`.
    Apptainer,
    /// `singularity exec` (same command line as Apptainer).
    Singularity,
    /// `podman run`.
    Podman,
    /// `docker run`.
    Docker,
}

impl Runtime {
    /// Every runtime, in the order the pilot looks for them on `PATH`.
    pub const ALL: [Runtime; 4] = [Runtime::Apptainer, Runtime::Singularity, Runtime::Podman, Runtime::Docker];

    /// The runtime's name (and the name of its executable).
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Apptainer => "apptainer",
            Runtime::Singularity => "singularity",
            Runtime::Podman => "podman",
            Runtime::Docker => "docker",
        }
    }

    /// The runtime an executable's file name names (`/opt/bin/apptainer` → Apptainer).
    pub fn from_file_name(path: &Path) -> Option<Runtime> {
        let name = path.file_name()?.to_str()?;
        Runtime::ALL.into_iter().find(|r| r.as_str() == name)
    }

    fn is_apptainer_like(self) -> bool {
        matches!(self, Runtime::Apptainer | Runtime::Singularity)
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `[pilot.container]` section: how jobs with a container image run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerConfig {
    /// `apptainer`, `singularity`, `podman` or `docker`. Unset: the runtime `path` names, else
    /// the first of those found on `PATH`.
    pub runtime: Option<Runtime>,
    /// The runtime's executable (default: found on `PATH` by the runtime's name).
    pub path: Option<PathBuf>,
    /// Extra arguments after `exec`/`run` and the pilot's own, before the image (e.g.
    /// `["--nv"]` for GPUs, `["--memory", "4g"]`).
    pub extra_args: Vec<String>,
    /// Extra bind mounts, `SRC[:DST[:OPTIONS]]` as the runtime takes them (e.g.
    /// `/cvmfs:/cvmfs:ro`).
    pub binds: Vec<String>,
    /// The runtimes the pilot's queue declares, in its order (harvester passes them with
    /// `--container-runtimes`): without `runtime` and `path`, the pilot looks for these on `PATH`
    /// instead of every runtime.
    pub queue_runtimes: Vec<Runtime>,
}

impl ContainerConfig {
    /// Problems with the section, named `pilot.container.<key>`.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(path) = &self.path {
            if path.as_os_str().is_empty() {
                problems.push("pilot.container.path must not be empty when set".to_owned());
            } else if self.runtime.is_none() && Runtime::from_file_name(path).is_none() {
                problems.push(format!(
                    "pilot.container.path = {}: set pilot.container.runtime too (the file name is none of \
                     apptainer, singularity, podman, docker)",
                    path.display()
                ));
            }
        }
        for (i, bind) in self.binds.iter().enumerate() {
            if bind.is_empty() || bind.starts_with(':') || bind.contains(char::is_whitespace) {
                problems.push(format!(
                    "pilot.container.binds[{i}] = {bind:?}: must be SRC[:DST[:OPTIONS]] without whitespace"
                ));
            }
        }
        problems
    }
}

/// A runtime the pilot found: which one and its executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The runtime.
    pub runtime: Runtime,
    /// Its executable.
    pub program: PathBuf,
}

/// Finds the runtime to use, searching `path_var` (the `PATH` value) for executables.
///
/// # Errors
/// Why no runtime can be used, naming what was looked for (the job's diagnostic).
pub fn resolve(config: &ContainerConfig, path_var: Option<&OsStr>) -> Result<Resolved, String> {
    if let Some(program) = &config.path {
        let runtime = config.runtime.or_else(|| Runtime::from_file_name(program)).ok_or_else(|| {
            format!("pilot.container.path {} names no known runtime; set pilot.container.runtime", program.display())
        })?;
        return if is_executable(program) {
            Ok(Resolved { runtime, program: program.clone() })
        } else {
            Err(format!(
                "container runtime {runtime} not found: pilot.container.path {} is not an executable file",
                program.display()
            ))
        };
    }
    let wanted: Vec<Runtime> = match config.runtime {
        Some(runtime) => vec![runtime],
        None if !config.queue_runtimes.is_empty() => config.queue_runtimes.clone(),
        None => Runtime::ALL.to_vec(),
    };
    for runtime in &wanted {
        if let Some(program) = find_on_path(runtime.as_str(), path_var) {
            return Ok(Resolved { runtime: *runtime, program });
        }
    }
    let names = wanted.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ");
    let path = path_var.map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    Err(match config.runtime {
        Some(runtime) => format!("container runtime {runtime} not found on PATH ({path}); set pilot.container.path"),
        None if !config.queue_runtimes.is_empty() => format!(
            "none of the container runtimes the queue declares ({names}) is on PATH ({path}); install one or \
             set pilot.container.path"
        ),
        None => format!(
            "no container runtime found: none of {names} is on PATH ({path}); install one or set \
             pilot.container.runtime and pilot.container.path"
        ),
    })
}

/// One launch: what runs in which image, where, with which environment.
#[derive(Debug, Clone, Copy)]
pub struct Launch<'a> {
    /// The task's image as submitted (`docker://...`, a path, a registry reference, ...).
    pub image: &'a str,
    /// The job (or warm runtime) directory: bound at the same path, the working directory.
    pub dir: &'a Path,
    /// The payload's whole environment.
    pub environment: &'a [(String, String)],
    /// Shell line run by `/bin/sh -c` inside the image.
    pub command: &'a str,
    /// Container name (Podman/Docker), unique on the node.
    pub name: &'a str,
    /// Keep stdin open (a warm runtime reads its jobs there).
    pub interactive: bool,
    /// The pilot's user and group IDs (Docker's `--user`).
    pub user: (u32, u32),
}

/// The runtime's command line and the variables to add to its own environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Program then arguments.
    pub argv: Vec<String>,
    /// Added to the runtime process's environment (Apptainer's `APPTAINERENV_*`).
    pub runtime_env: Vec<(String, String)>,
}

/// The image as the runtime names it, or why the runtime cannot use it.
///
/// # Errors
/// The image form the runtime does not support (the job's diagnostic).
pub fn image_for(runtime: Runtime, image: &str) -> Result<ImageArg, String> {
    let has_scheme = image.contains("://");
    if runtime.is_apptainer_like() {
        // Apptainer takes URIs and paths as they are; a bare registry reference is a docker:// one.
        return Ok(ImageArg::Image(if has_scheme || image.starts_with('/') {
            image.to_owned()
        } else {
            format!("docker://{image}")
        }));
    }
    if let Some(reference) = image.strip_prefix("docker://") {
        return Ok(ImageArg::Image(reference.to_owned()));
    }
    if has_scheme {
        return Err(format!("{runtime} cannot run image {image}: it takes registry references (docker://) only"));
    }
    if image.starts_with('/') {
        if image.ends_with(".sif") {
            return Err(format!("{runtime} cannot run the SIF image {image}: use apptainer or singularity"));
        }
        return match runtime {
            Runtime::Podman => Ok(ImageArg::Rootfs(image.to_owned())),
            _ => Err(format!("{runtime} cannot run the unpacked image directory {image}: use podman or apptainer")),
        };
    }
    Ok(ImageArg::Image(image.to_owned()))
}

/// How the image goes on a runtime's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageArg {
    /// As the image argument.
    Image(String),
    /// An unpacked root file system (Podman `--rootfs DIR`).
    Rootfs(String),
}

/// The user and group owning `dir` (a directory the pilot made: the pilot's own IDs), for
/// Docker's `--user`; root's when it cannot be read.
pub fn owner_of(dir: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).map(|m| (m.uid(), m.gid())).unwrap_or((0, 0))
}

/// The runtime's invocation for `launch`.
///
/// # Errors
/// The image form the runtime does not support.
pub fn command(resolved: &Resolved, config: &ContainerConfig, launch: &Launch<'_>) -> Result<Invocation, String> {
    let image = image_for(resolved.runtime, launch.image)?;
    let dir = launch.dir.display().to_string();
    let mut argv = vec![resolved.program.display().to_string()];
    let mut runtime_env = Vec::new();
    if resolved.runtime.is_apptainer_like() {
        let prefix = if resolved.runtime == Runtime::Apptainer { "APPTAINERENV_" } else { "SINGULARITYENV_" };
        argv.extend(["exec".to_owned(), "--cleanenv".to_owned()]);
        for (key, value) in launch.environment {
            // `--env` is a comma-separated list of K=V with CSV quoting: such values would break.
            if value.contains([',', '"', '\n', '\r']) {
                runtime_env.push((format!("{prefix}{key}"), value.clone()));
            } else {
                argv.extend(["--env".to_owned(), format!("{key}={value}")]);
            }
        }
        argv.extend(["--bind".to_owned(), format!("{dir}:{dir}")]);
        for bind in &config.binds {
            argv.extend(["--bind".to_owned(), bind.clone()]);
        }
        argv.extend(["--pwd".to_owned(), dir]);
    } else {
        argv.extend(["run".to_owned(), "--rm".to_owned(), "--init".to_owned()]);
        argv.extend(["--name".to_owned(), launch.name.to_owned()]);
        if launch.interactive {
            argv.push("-i".to_owned());
        }
        if resolved.runtime == Runtime::Docker {
            argv.extend(["--user".to_owned(), format!("{}:{}", launch.user.0, launch.user.1)]);
        }
        for (key, value) in launch.environment {
            argv.extend(["-e".to_owned(), format!("{key}={value}")]);
        }
        argv.extend(["-v".to_owned(), format!("{dir}:{dir}")]);
        for bind in &config.binds {
            argv.extend(["-v".to_owned(), bind.clone()]);
        }
        argv.extend(["-w".to_owned(), dir, "--network".to_owned(), "host".to_owned()]);
    }
    argv.extend(config.extra_args.iter().cloned());
    match image {
        ImageArg::Image(image) => argv.push(image),
        ImageArg::Rootfs(dir) => argv.extend(["--rootfs".to_owned(), dir]),
    }
    argv.extend(["/bin/sh".to_owned(), "-c".to_owned(), launch.command.to_owned()]);
    Ok(Invocation { argv, runtime_env })
}

/// The command that removes a Podman/Docker container by name (after a kill: the container is
/// not in the pilot's process group); `None` for Apptainer, whose processes are.
pub fn remove_command(resolved: &Resolved, name: &str) -> Option<Vec<String>> {
    (!resolved.runtime.is_apptainer_like())
        .then(|| vec![resolved.program.display().to_string(), "rm".to_owned(), "-f".to_owned(), name.to_owned()])
}

/// Whether the runtime itself failed (rather than the payload inside it), judged from its exit
/// code and the output on stderr: the diagnostic to report, naming runtime and image.
pub fn runtime_failure(runtime: Runtime, image: &str, exit_code: i32, stderr: &str) -> Option<String> {
    let line = if runtime.is_apptainer_like() {
        if exit_code != 255 {
            return None;
        }
        stderr.lines().find(|l| l.trim_start().starts_with("FATAL"))?
    } else {
        if exit_code != 125 {
            return None;
        }
        stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
    };
    Some(format!("container runtime {runtime} could not run image {image} (exit {exit_code}): {}", line.trim()))
}

/// Runs the removal command with a deadline; logs what went wrong.
pub async fn remove(resolved: &Resolved, name: &str) {
    let Some(argv) = remove_command(resolved, name) else { return };
    let mut command = tokio::process::Command::new(&argv[0]);
    command.args(&argv[1..]).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    command.stderr(std::process::Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(std::time::Duration::from_secs(60), command.status()).await {
        Ok(Ok(status)) if status.success() => tracing::info!(container = name, "container removed"),
        Ok(Ok(status)) => tracing::info!(container = name, %status, "container removal: already gone or failed"),
        Ok(Err(error)) => tracing::warn!(container = name, %error, "cannot run the container removal"),
        Err(_) => tracing::warn!(container = name, "container removal timed out"),
    }
}

#[cfg(test)]
mod tests;
