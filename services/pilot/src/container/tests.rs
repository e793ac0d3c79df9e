use std::os::unix::fs::PermissionsExt;

use super::*;

fn resolved(runtime: Runtime) -> Resolved {
    Resolved { runtime, program: PathBuf::from(format!("/usr/bin/{runtime}")) }
}

fn env() -> Vec<(String, String)> {
    vec![
        ("MY_VAR".to_owned(), "a b".to_owned()),
        ("PANDA_JOB_ID".to_owned(), "7".to_owned()),
        ("PANDA_SERVER_URL".to_owned(), "http://127.0.0.1:50051".to_owned()),
    ]
}

fn launch<'a>(image: &'a str, environment: &'a [(String, String)], interactive: bool) -> Launch<'a> {
    Launch {
        image,
        dir: Path::new("/scratch/PanDA_Pilot-7"),
        environment,
        command: "echo hi > out",
        name: "panda-job-7-99",
        interactive,
        user: (1000, 100),
    }
}

fn words(text: &str) -> Vec<String> {
    text.split(' ').map(str::to_owned).collect()
}

#[test]
fn apptainer_exec_cleans_the_environment_binds_and_enters_the_job_dir() {
    let environment = env();
    let config = ContainerConfig {
        binds: vec!["/cvmfs:/cvmfs:ro".into()],
        extra_args: vec!["--nv".into()],
        ..Default::default()
    };
    let invocation =
        command(&resolved(Runtime::Apptainer), &config, &launch("python:3.11-slim", &environment, false)).unwrap();
    let mut expected = words(
        "/usr/bin/apptainer exec --cleanenv --env MY_VAR=a_b --env PANDA_JOB_ID=7 \
         --env PANDA_SERVER_URL=http://127.0.0.1:50051 --bind /scratch/PanDA_Pilot-7:/scratch/PanDA_Pilot-7 \
         --bind /cvmfs:/cvmfs:ro --pwd /scratch/PanDA_Pilot-7 --nv docker://python:3.11-slim /bin/sh -c",
    );
    expected[4] = "MY_VAR=a b".to_owned();
    expected.push("echo hi > out".to_owned());
    assert_eq!(invocation.argv, expected);
    assert!(invocation.runtime_env.is_empty());
}

#[test]
fn apptainer_values_that_env_would_split_go_through_its_environment() {
    let environment = vec![
        ("LIST".to_owned(), "a,b".to_owned()),
        ("QUOTED".to_owned(), "say \"hi\"".to_owned()),
        ("PLAIN".to_owned(), "x".to_owned()),
    ];
    let apptainer =
        command(&resolved(Runtime::Apptainer), &ContainerConfig::default(), &launch("/img.sif", &environment, false))
            .unwrap();
    assert_eq!(
        apptainer.runtime_env,
        [
            ("APPTAINERENV_LIST".to_owned(), "a,b".to_owned()),
            ("APPTAINERENV_QUOTED".to_owned(), "say \"hi\"".to_owned())
        ]
    );
    assert!(apptainer.argv.windows(2).any(|w| w == ["--env", "PLAIN=x"]));
    assert!(!apptainer.argv.iter().any(|a| a.contains("LIST")));
    assert!(apptainer.argv.contains(&"/img.sif".to_owned()), "a path stays a path");
    let singularity =
        command(&resolved(Runtime::Singularity), &ContainerConfig::default(), &launch("/img.sif", &environment, false))
            .unwrap();
    assert_eq!(singularity.argv[..3], ["/usr/bin/singularity", "exec", "--cleanenv"]);
    assert_eq!(singularity.runtime_env[0].0, "SINGULARITYENV_LIST");
}

#[test]
fn podman_run_removes_names_forwards_and_shares_the_host_network() {
    let environment = env();
    let config = ContainerConfig { binds: vec!["/data:/data".into()], ..Default::default() };
    let invocation =
        command(&resolved(Runtime::Podman), &config, &launch("docker://python:3.11-slim", &environment, false))
            .unwrap();
    let mut expected = words(
        "/usr/bin/podman run --rm --init --name panda-job-7-99 -e MY_VAR=a_b -e PANDA_JOB_ID=7 \
         -e PANDA_SERVER_URL=http://127.0.0.1:50051 -v /scratch/PanDA_Pilot-7:/scratch/PanDA_Pilot-7 -v /data:/data \
         -w /scratch/PanDA_Pilot-7 --network host python:3.11-slim /bin/sh -c",
    );
    expected[7] = "MY_VAR=a b".to_owned();
    expected.push("echo hi > out".to_owned());
    assert_eq!(invocation.argv, expected);
    assert!(invocation.runtime_env.is_empty());

    let warm = command(&resolved(Runtime::Podman), &config, &launch("python:3", &environment, true)).unwrap();
    assert_eq!(warm.argv[..7], words("/usr/bin/podman run --rm --init --name panda-job-7-99 -i"));
    let rootfs = command(&resolved(Runtime::Podman), &config, &launch("/images/unpacked", &environment, false));
    assert!(rootfs.unwrap().argv.windows(2).any(|w| w == ["--rootfs", "/images/unpacked"]));
}

#[test]
fn docker_runs_as_the_pilot_user() {
    let environment = env();
    let invocation =
        command(&resolved(Runtime::Docker), &ContainerConfig::default(), &launch("ghcr.io/o/i:1", &environment, false))
            .unwrap();
    assert_eq!(invocation.argv[..8], words("/usr/bin/docker run --rm --init --name panda-job-7-99 --user 1000:100"));
    assert!(invocation.argv.windows(2).any(|w| w == ["-w", "/scratch/PanDA_Pilot-7"]));
    assert!(invocation.argv.windows(2).any(|w| w == ["--network", "host"]));
    assert_eq!(invocation.argv[invocation.argv.len() - 4..], ["ghcr.io/o/i:1", "/bin/sh", "-c", "echo hi > out"]);
}

#[test]
fn images_a_runtime_cannot_run_are_named() {
    let cases = [
        (
            Runtime::Podman,
            "library://u/c/img:1",
            "podman cannot run image library://u/c/img:1: it takes registry references (docker://) only",
        ),
        (
            Runtime::Docker,
            "/images/a.sif",
            "docker cannot run the SIF image /images/a.sif: use apptainer or singularity",
        ),
        (
            Runtime::Docker,
            "/images/unpacked",
            "docker cannot run the unpacked image directory /images/unpacked: use podman or apptainer",
        ),
    ];
    for (runtime, image, message) in cases {
        assert_eq!(image_for(runtime, image), Err(message.to_owned()));
    }
    assert_eq!(
        image_for(Runtime::Apptainer, "oras://ghcr.io/o/i:1"),
        Ok(ImageArg::Image("oras://ghcr.io/o/i:1".into()))
    );
    assert_eq!(image_for(Runtime::Docker, "python"), Ok(ImageArg::Image("python".into())));
}

#[test]
fn removal_is_for_podman_and_docker_only() {
    assert_eq!(
        remove_command(&resolved(Runtime::Podman), "panda-job-7-99"),
        Some(words("/usr/bin/podman rm -f panda-job-7-99"))
    );
    assert_eq!(remove_command(&resolved(Runtime::Apptainer), "x"), None);
}

#[test]
fn runtime_failures_are_told_from_payload_exits() {
    let fatal =
        "INFO:    Converting OCI blobs to SIF format\nFATAL:   Unable to handle docker://nope uri: manifest unknown\n";
    assert_eq!(
        runtime_failure(Runtime::Apptainer, "docker://nope", 255, fatal).as_deref(),
        Some(
            "container runtime apptainer could not run image docker://nope (exit 255): FATAL:   Unable to handle docker://nope uri: manifest unknown"
        )
    );
    assert_eq!(runtime_failure(Runtime::Apptainer, "x", 255, "payload's own error\n"), None, "a payload exiting 255");
    assert_eq!(runtime_failure(Runtime::Apptainer, "x", 1, fatal), None);
    let podman = "Trying to pull docker.io/library/nope:latest...\nError: initializing source docker://nope:latest: reading manifest latest in docker.io/library/nope: manifest unknown\n";
    assert!(runtime_failure(Runtime::Podman, "nope", 125, podman).unwrap().ends_with("(exit 125): Error: initializing source docker://nope:latest: reading manifest latest in docker.io/library/nope: manifest unknown"));
    assert_eq!(runtime_failure(Runtime::Podman, "nope", 127, podman), None, "command not found inside: the payload's");
}

fn executable(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn the_runtime_is_configured_or_the_first_found_on_path() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let podman = executable(a.path(), "podman");
    let apptainer = executable(b.path(), "apptainer");
    std::fs::write(a.path().join("docker"), "not executable").unwrap();
    let path = std::env::join_paths([a.path(), b.path()]).unwrap();
    let default = ContainerConfig::default();
    // apptainer comes before podman in the preference order, wherever it is on PATH.
    assert_eq!(
        resolve(&default, Some(path.as_os_str())),
        Ok(Resolved { runtime: Runtime::Apptainer, program: apptainer })
    );
    let want_podman = ContainerConfig { runtime: Some(Runtime::Podman), ..Default::default() };
    assert_eq!(
        resolve(&want_podman, Some(path.as_os_str())),
        Ok(Resolved { runtime: Runtime::Podman, program: podman.clone() })
    );
    let want_docker = ContainerConfig { runtime: Some(Runtime::Docker), ..Default::default() };
    let error = resolve(&want_docker, Some(path.as_os_str())).unwrap_err();
    assert!(error.starts_with("container runtime docker not found on PATH ("), "{error}");
    let error = resolve(&default, Some(OsStr::new("/nonexistent"))).unwrap_err();
    assert!(
        error.starts_with(
            "no container runtime found: none of apptainer, singularity, podman, docker is on PATH (/nonexistent)"
        ),
        "{error}"
    );
    // The queue's runtimes, when the pilot knows them: those, in the queue's order.
    let queue = ContainerConfig { queue_runtimes: vec![Runtime::Podman, Runtime::Apptainer], ..Default::default() };
    assert_eq!(
        resolve(&queue, Some(path.as_os_str())),
        Ok(Resolved { runtime: Runtime::Podman, program: podman.clone() })
    );
    let queue_docker = ContainerConfig { queue_runtimes: vec![Runtime::Docker], ..Default::default() };
    let error = resolve(&queue_docker, Some(path.as_os_str())).unwrap_err();
    assert!(error.starts_with("none of the container runtimes the queue declares (docker) is on PATH"), "{error}");
    // An explicit path wins, its runtime from its name unless configured.
    let by_path = ContainerConfig { path: Some(podman.clone()), ..Default::default() };
    assert_eq!(resolve(&by_path, None), Ok(Resolved { runtime: Runtime::Podman, program: podman }));
    let missing = ContainerConfig { path: Some(a.path().join("apptainer")), ..Default::default() };
    let error = resolve(&missing, Some(path.as_os_str())).unwrap_err();
    assert!(error.starts_with("container runtime apptainer not found: pilot.container.path"), "{error}");
}

#[test]
fn config_problems_are_named() {
    let config = ContainerConfig {
        path: Some("/opt/bin/run-image".into()),
        binds: vec![":x".into(), "a b".into()],
        ..Default::default()
    };
    let problems = config.problems();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].starts_with("pilot.container.path = /opt/bin/run-image: set pilot.container.runtime too"));
    assert!(problems[1].starts_with("pilot.container.binds[0] = \":x\""));
    assert!(problems[2].starts_with("pilot.container.binds[1] = \"a b\""));
    assert!(
        ContainerConfig {
            runtime: Some(Runtime::Podman),
            path: Some("/opt/bin/run-image".into()),
            ..Default::default()
        }
        .problems()
        .is_empty()
    );
}
