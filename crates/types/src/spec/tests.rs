use proptest::prelude::*;

use super::*;

/// A valid spec without input: `n_jobs` generated jobs.
fn generated() -> TaskSpecDraft {
    TaskSpecDraft {
        name: "mc23.evgen.001".to_owned(),
        command: "generate --seed {index} --out {output}".to_owned(),
        n_jobs: Some(10),
        output_dataset: "mc23.evgen.001.out".to_owned(),
        ..TaskSpecDraft::default()
    }
}

/// A valid spec reading an input dataset.
fn with_input() -> TaskSpecDraft {
    TaskSpecDraft {
        name: "reco.042".to_owned(),
        command: "reco {inputs} -o {output}".to_owned(),
        input_datasets: vec!["raw.042".to_owned()],
        output_dataset: "reco.042.out".to_owned(),
        ..TaskSpecDraft::default()
    }
}

/// Validates `draft`, expecting it to fail with exactly these (field, message) pairs, in order.
/// A message ending in `...` only has to start with the text before it.
fn check_errors(draft: TaskSpecDraft, expected: &[(&str, &str)]) {
    let errors = draft.clone().validate().expect_err("the draft should be invalid");
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    let expected_fields: Vec<&str> = expected.iter().map(|(field, _)| *field).collect();
    assert_eq!(fields, expected_fields, "fields of {errors:#?}\nfor {draft:#?}");
    for (error, (field, message)) in errors.iter().zip(expected) {
        match message.strip_suffix("...") {
            Some(prefix) => {
                assert!(error.message.starts_with(prefix), "{field}: {:?} should start with {prefix:?}", error.message)
            }
            None => assert_eq!(error.message, *message, "{field}"),
        }
        assert_eq!(error.to_string(), format!("{} {}", error.field, error.message));
    }
}

/// Validates `draft`, expecting exactly one error, on `field`, with `message` (see `check_errors`).
fn check_error(draft: TaskSpecDraft, field: &str, message: &str) {
    check_errors(draft, &[(field, message)]);
}

#[test]
fn valid_generated_spec() {
    let spec = generated().validate().expect("valid");
    assert_eq!(
        spec,
        TaskSpec {
            name: "mc23.evgen.001".to_owned(),
            user: "anonymous".to_owned(),
            command: "generate --seed {index} --out {output}".to_owned(),
            input: TaskInput::Generated { n_jobs: 10 },
            output_dataset: Some("mc23.evgen.001.out".to_owned()),
            resources: Resources { cores: 1, ..Resources::default() },
            priority: 0,
            environment: BTreeMap::new(),
            queues: Vec::new(),
            code_sha256: None,
            split: Default::default(),
            requirements: Default::default(),
            merge_command: None,
            hold_jobs: false,
            share: String::new(),
            container_image: None,
        }
    );
}

#[test]
fn valid_dataset_spec_defaults_to_one_file_per_job() {
    let spec = with_input().validate().expect("valid");
    assert_eq!(spec.input, TaskInput::Datasets { names: vec!["raw.042".to_owned()], files_per_job: 1 });
    assert_eq!(spec.output_dataset.as_deref(), Some("reco.042.out"));

    let spec = TaskSpecDraft { files_per_job: Some(5), ..with_input() }.validate().expect("valid");
    assert_eq!(spec.input, TaskInput::Datasets { names: vec!["raw.042".to_owned()], files_per_job: 5 });
}

#[test]
fn valid_spec_keeps_every_field() {
    let draft = TaskSpecDraft {
        user: "alice".to_owned(),
        priority: -7,
        resources: Resources { cores: 8, memory_mb: 16_000, disk_mb: 1_000, walltime_seconds: 3_600 },
        environment: BTreeMap::from([("ATHENA_PROC".to_owned(), "8".to_owned()), ("_x1".to_owned(), String::new())]),
        queues: vec!["CERN-PROD_UCORE".to_owned(), "BNL.long-1".to_owned()],
        command: "run {inputs} {output} {index} {task_id} {job_id} {{literal}}".to_owned(),
        ..with_input()
    };
    let spec = draft.clone().validate().expect("valid");
    assert_eq!(spec.user, "alice");
    assert_eq!(spec.priority, -7);
    assert_eq!(spec.resources, draft.resources);
    assert_eq!(spec.environment, draft.environment);
    assert_eq!(spec.command, draft.command);
    let queues: Vec<&str> = spec.queues.iter().map(QueueName::as_str).collect();
    assert_eq!(queues, ["CERN-PROD_UCORE", "BNL.long-1"]);
}

#[test]
fn limits_are_inclusive() {
    let spec = TaskSpecDraft {
        name: "n".repeat(200),
        user: "u".repeat(200),
        n_jobs: Some(MAX_JOBS_PER_TASK),
        resources: Resources { cores: 1024, memory_mb: 16 * 1024 * 1024, ..Resources::default() },
        command: format!("run {}", "x".repeat(64 * 1024 - 4)),
        output_dataset: String::new(),
        ..generated()
    }
    .validate()
    .expect("valid at the limits");
    assert_eq!(spec.input, TaskInput::Generated { n_jobs: MAX_JOBS_PER_TASK });
    assert_eq!(spec.command.len(), 64 * 1024);
}

#[test]
fn name_errors() {
    check_error(TaskSpecDraft { name: String::new(), ..generated() }, "task.name", "must not be empty");
    check_error(
        TaskSpecDraft { name: "n".repeat(201), ..generated() },
        "task.name",
        "must be at most 200 characters (got 201)",
    );
    check_error(
        TaskSpecDraft { name: "my task".to_owned(), ..generated() },
        "task.name",
        "\"my task\" contains ' '; allowed are letters, digits, '.', '_' and '-'",
    );
    check_error(TaskSpecDraft { name: "tâche".to_owned(), ..generated() }, "task.name", "\"tâche\" contains 'â'...");
}

#[test]
fn user_errors() {
    check_error(
        TaskSpecDraft { user: "u".repeat(201), ..generated() },
        "task.user",
        "must be at most 200 characters (got 201)",
    );
}

#[test]
fn command_errors() {
    for empty in ["", "  \n\t"] {
        check_error(TaskSpecDraft { command: empty.to_owned(), ..generated() }, "task.command", "must not be empty");
    }
    check_error(
        TaskSpecDraft { command: "x".repeat(64 * 1024 + 1), ..generated() },
        "task.command",
        "must be at most 65536 bytes (got 65537)",
    );
    check_error(
        TaskSpecDraft { command: "run {foo}".to_owned(), ..generated() },
        "task.command",
        "has unknown placeholder {foo}; allowed: {inputs} {output} {index} {task_id} {job_id}",
    );
    // Placeholder names are case-sensitive and exact.
    for unknown in ["{Index}", "{ index}", "{}", "{job-id}"] {
        check_error(
            TaskSpecDraft { command: format!("run {unknown}"), ..generated() },
            "task.command",
            &format!("has unknown placeholder {unknown}..."),
        );
    }
    check_error(
        TaskSpecDraft { output_dataset: String::new(), ..generated() },
        "task.command",
        "uses {output} but task.output_dataset is not set",
    );
    check_error(
        TaskSpecDraft { command: "run {inputs} {output}".to_owned(), ..generated() },
        "task.command",
        "uses {inputs} but task.input_datasets is not set",
    );
}

#[test]
fn escaped_braces_are_not_placeholders() {
    for command in ["echo {{foo}}", "echo {{output}} {{inputs}}", "awk '{{print $1}}'", "echo {{", "echo }}"] {
        let spec =
            TaskSpecDraft { command: command.to_owned(), output_dataset: String::new(), ..generated() }.validate();
        assert!(spec.is_ok(), "{command:?}: {spec:?}");
    }
    // An escaped brace next to a real placeholder still leaves the placeholder checked.
    check_error(
        TaskSpecDraft { command: "echo {{{foo}}}".to_owned(), ..generated() },
        "task.command",
        "has unknown placeholder {foo}...",
    );
}

#[test]
fn input_errors() {
    check_error(
        TaskSpecDraft { n_jobs: None, ..generated() },
        "task.n_jobs",
        "is required when there are no input_datasets (1..=100000)",
    );
    check_error(TaskSpecDraft { n_jobs: Some(0), ..generated() }, "task.n_jobs", "must be 1..=100000 (got 0)");
    check_error(
        TaskSpecDraft { n_jobs: Some(MAX_JOBS_PER_TASK + 1), ..generated() },
        "task.n_jobs",
        "must be 1..=100000 (got 100001)",
    );
    check_error(
        TaskSpecDraft { files_per_job: Some(2), ..generated() },
        "task.files_per_job",
        "needs task.input_datasets",
    );
    check_error(
        TaskSpecDraft { files_per_job: Some(0), ..with_input() },
        "task.files_per_job",
        "must be at least 1 (got 0)",
    );
    check_error(
        TaskSpecDraft { n_jobs: Some(3), ..with_input() },
        "task.n_jobs",
        "must not be set with input_datasets (got 3); use files_per_job",
    );
    check_error(
        TaskSpecDraft { input_datasets: vec!["raw 042".to_owned()], ..with_input() },
        "task.input_datasets[0]",
        "\"raw 042\" contains ' '...",
    );
    check_error(
        TaskSpecDraft { input_datasets: vec!["d".repeat(256)], ..with_input() },
        "task.input_datasets[0]",
        "must be at most 255 characters (got 256)",
    );
}

#[test]
fn output_dataset_errors() {
    check_error(
        TaskSpecDraft { output_dataset: "out/put".to_owned(), ..generated() },
        "task.output_dataset",
        "\"out/put\" contains '/'...",
    );
    check_error(
        TaskSpecDraft { output_dataset: "o".repeat(256), ..generated() },
        "task.output_dataset",
        "must be at most 255 characters (got 256)",
    );
    check_error(
        TaskSpecDraft { output_dataset: "raw.042".to_owned(), ..with_input() },
        "task.output_dataset",
        "must differ from the input datasets (both \"raw.042\")",
    );
}

#[test]
fn resource_errors() {
    let resources = Resources { cores: 1025, memory_mb: 16 * 1024 * 1024 + 1, ..Resources::default() };
    check_errors(
        TaskSpecDraft { resources, ..generated() },
        &[
            ("task.resources.cores", "must be at most 1024 (got 1025)"),
            ("task.resources.memory_mb", "must be at most 16777216 (got 16777217)"),
        ],
    );
}

#[test]
fn environment_errors() {
    for key in ["", "1X", "A-B", "A B", "É"] {
        check_error(
            TaskSpecDraft { environment: BTreeMap::from([(key.to_owned(), "v".to_owned())]), ..generated() },
            "task.environment",
            &format!("key {key:?} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)"),
        );
    }
    check_error(
        TaskSpecDraft { environment: BTreeMap::from([("PANDA_JOB_ID".to_owned(), "1".to_owned())]), ..generated() },
        "task.environment",
        "key \"PANDA_JOB_ID\" is reserved (PANDA_* is set by the pilot)",
    );
    // Only the exact prefix is reserved.
    let environment = BTreeMap::from([("panda_x".to_owned(), "1".to_owned()), ("PANDAX".to_owned(), "1".to_owned())]);
    assert!(TaskSpecDraft { environment, ..generated() }.validate().is_ok());
}

#[test]
fn queue_errors_name_the_index() {
    check_errors(
        TaskSpecDraft {
            queues: vec!["ok".to_owned(), String::new(), "ok2".to_owned(), "bad queue".to_owned()],
            ..generated()
        },
        &[("task.queues[1]", "must not be empty"), ("task.queues[3]", "\"bad queue\" contains ' '...")],
    );
    check_error(
        TaskSpecDraft { queues: vec!["q".repeat(101)], ..generated() },
        "task.queues[0]",
        "must be at most 100 characters (got 101)",
    );
}

#[test]
fn merge_command_needs_merge_jobs_and_must_write_the_output() {
    let merging = |command: &str| TaskSpecDraft {
        merge_command: command.to_owned(),
        split: crate::rules::SplitRulesDraft { merge_files_per_job: Some(10), ..Default::default() },
        ..generated()
    };
    let spec = merging("hadd {output} {inputs}").validate().expect("valid");
    assert_eq!(spec.merge_command(), "hadd {output} {inputs}");
    assert_eq!(merging("  ").validate().expect("valid").merge_command(), crate::spec::DEFAULT_MERGE_COMMAND);
    check_error(
        TaskSpecDraft { merge_command: "hadd {output} {inputs}".to_owned(), ..generated() },
        "task.merge_command",
        "needs task.split.merge_files_per_job (merge jobs run it)",
    );
    check_error(merging("hadd merged.root {inputs}"), "task.merge_command", "must write {output}...");
    check_error(merging("hadd {output} {files}"), "task.merge_command", "has unknown placeholder {files}...");
}

#[test]
fn code_archive_must_be_a_sha256() {
    let sha = "0123456789abcdef".repeat(4);
    let spec = TaskSpecDraft { code_sha256: sha.clone(), ..generated() }.validate().expect("valid");
    assert_eq!(spec.code_sha256, Some(sha));
    assert_eq!(generated().validate().expect("valid").code_sha256, None);
    for bad in ["abc", &"0123456789ABCDEF".repeat(4), &"g".repeat(64), &"0".repeat(65)] {
        check_error(
            TaskSpecDraft { code_sha256: bad.to_owned(), ..generated() },
            "task.code_sha256",
            "must be a sha256 digest: 64 lowercase hex digits...",
        );
    }
}

#[test]
fn container_images_in_every_accepted_form_are_kept() {
    assert_eq!(generated().validate().expect("valid").container_image, None, "empty is no image");
    let digest = format!("ghcr.io/org/img@sha256:{}", "0123456789abcdef".repeat(4));
    for image in [
        "docker://python:3.11-slim",
        "docker://ghcr.io/org/analysis/img:v1.2",
        "oras://ghcr.io/org/img:latest",
        "library://sylabsed/examples/lolcow:latest",
        "shub://vsoch/hello-world",
        "/cvmfs/unpacked.cern.ch/registry.hub.docker.com/atlas/athena:24.0",
        "/images/analysis.sif",
        "python:3.11-slim",
        "python",
        "localhost:5000/my_team/img__x-y:1",
        "registry.example.org:443/a.b/c--d",
        &digest,
        &"a".repeat(MAX_CONTAINER_IMAGE_LEN),
    ] {
        let spec = TaskSpecDraft { container_image: image.to_owned(), ..generated() }.validate();
        assert_eq!(spec.expect(image).container_image.as_deref(), Some(image));
    }
}

#[test]
fn bad_container_images_are_refused_naming_the_problem() {
    let field = "task.container_image";
    let cases: &[(String, &str)] = &[
        ("a".repeat(MAX_CONTAINER_IMAGE_LEN + 1), "must be at most 512 characters (got 513)"),
        ("python 3".into(), "must not contain whitespace or control characters (found ' ' in \"python 3\")"),
        ("python:3\n".into(), "must not contain whitespace or control characters..."),
        ("img\u{7}".into(), "must not contain whitespace or control characters..."),
        ("http://example.org/img".into(), "\"http://example.org/img\" has unknown scheme http://; use docker://REF..."),
        ("docker://".into(), "\"docker://\" names no image after docker://"),
        ("docker://Python:3".into(), "\"docker://Python:3\": name component \"Python\" must be lowercase..."),
        ("library:///abs".into(), "\"library:///abs\": the path after library:// must be relative and without .."),
        ("/images/../etc/passwd".into(), "\"/images/../etc/passwd\": an image path must not contain .. components"),
        ("/".into(), "\"/\" is not an image..."),
        ("./img.sif".into(), "\"./img.sif\" is not a registry reference (registry \".\"..."),
        ("python:".into(), "\"python:\" is not a registry reference (tag \"\" must be 1 to 128..."),
        ("img@sha256:abc".into(), "\"img@sha256:abc\" is not a registry reference (digest..."),
        ("img@abc".into(), "\"img@abc\" is not a registry reference (digest \"abc\" must be ALGORITHM:HEX..."),
        ("bad_host:x/img".into(), "\"bad_host:x/img\" is not a registry reference (registry \"bad_host:x\"..."),
        ("a..b".into(), "\"a..b\" is not a registry reference (name component \"a..b\"..."),
        ("-img".into(), "\"-img\" is not a registry reference (name component..."),
        ("img-".into(), "\"img-\" is not a registry reference (name component..."),
        ("org//img".into(), "\"org//img\" is not a registry reference (name component \"\"..."),
    ];
    for (image, message) in cases {
        check_error(TaskSpecDraft { container_image: image.clone(), ..generated() }, field, message);
    }
}

#[test]
fn every_error_is_reported_at_once() {
    let draft = TaskSpecDraft {
        name: String::new(),
        user: "u".repeat(300),
        command: "run {foo} {output} {inputs}".to_owned(),
        input_datasets: vec![],
        files_per_job: Some(0),
        n_jobs: Some(0),
        output_dataset: String::new(),
        resources: Resources { cores: 2000, ..Resources::default() },
        priority: 0,
        environment: BTreeMap::from([("PANDA_X".to_owned(), "1".to_owned())]),
        queues: vec!["a b".to_owned()],
        code_sha256: "nope".to_owned(),
        schema_version: 7,
        split: Default::default(),
        requirements: Default::default(),
        merge_command: "cat {inputs}".to_owned(),
        hold_jobs: false,
        share: "a/b".to_owned(),
        container_image: "my image".to_owned(),
    };
    check_errors(
        draft,
        &[
            ("task.schema_version", "version 7 is not supported; this server accepts versions 1..=2..."),
            ("task.name", "must not be empty"),
            ("task.user", "must be at most 200 characters (got 300)"),
            ("task.command", "has unknown placeholder {foo}..."),
            ("task.files_per_job", "needs task.input_datasets"),
            ("task.n_jobs", "must be 1..=100000 (got 0)"),
            ("task.command", "uses {output} but task.output_dataset is not set"),
            ("task.command", "uses {inputs} but task.input_datasets is not set"),
            ("task.resources.cores", "must be at most 1024 (got 2000)"),
            ("task.environment", "key \"PANDA_X\" is reserved..."),
            ("task.queues[0]", "\"a b\" contains ' '..."),
            ("task.code_sha256", "must be a sha256 digest..."),
            ("task.merge_command", "needs task.split.merge_files_per_job (merge jobs run it)"),
            ("task.share", "\"a/b\" contains '/'..."),
            ("task.container_image", "must not contain whitespace or control characters..."),
        ],
    );
}

#[test]
fn a_share_is_kept_and_checked_as_a_name() {
    let spec = TaskSpecDraft { share: "production.mc".to_owned(), ..generated() }.validate().expect("valid");
    assert_eq!(spec.share, "production.mc");
    assert_eq!(generated().validate().expect("valid").share, "", "unset: the server's default");
    check_error(
        TaskSpecDraft { share: "x".repeat(101), ..generated() },
        "task.share",
        "must be at most 100 characters...",
    );
}

#[test]
fn an_error_elsewhere_still_refuses_a_valid_input() {
    // The input is fine, so validation has a `TaskInput`; one bad field must still fail it.
    check_error(
        TaskSpecDraft { priority: 1, queues: vec!["a/b".to_owned()], ..with_input() },
        "task.queues[0]",
        "\"a/b\" contains '/'...",
    );
}

/// Renders `template` with `values`, expecting `expected`.
fn check_render(template: &str, values: &[(&'static str, &str)], expected: &str) {
    let values: BTreeMap<&str, String> = values.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    assert_eq!(render_command(template, &values), expected, "template {template:?}");
}

#[test]
fn render_fills_placeholders() {
    let values =
        [("inputs", "a.root b.root"), ("output", "out.root"), ("index", "7"), ("task_id", "42"), ("job_id", "1001")];
    check_render("reco {inputs} -o {output}", &values, "reco a.root b.root -o out.root");
    check_render("{index}{index}-{task_id}/{job_id}", &values, "77-42/1001");
    check_render("", &values, "");
    check_render("no placeholders at all", &values, "no placeholders at all");
    // Values are inserted verbatim, never rendered again.
    check_render("{output}", &[("output", "{index}}}")], "{index}}}");
}

#[test]
fn render_keeps_unknown_placeholders() {
    check_render("run {foo} {index}", &[("index", "3")], "run {foo} 3");
    check_render("run {index}", &[], "run {index}");
    check_render("{}", &[], "{}");
    check_render("{ü} done", &[], "{ü} done");
    check_render("€{日本}€ {index}", &[("index", "1")], "€{日本}€ 1");
}

#[test]
fn render_handles_escapes_and_stray_braces() {
    check_render("{{index}}", &[("index", "3")], "{index}");
    check_render("awk '{{print $1}}' {index}", &[("index", "3")], "awk '{print $1}' 3");
    check_render("{{{index}}}", &[("index", "3")], "{3}");
    check_render("{{{{", &[], "{{");
    check_render("a { b", &[], "a { b");
    check_render("a } b", &[], "a } b");
    check_render("tail {", &[], "tail {");
    check_render("{index", &[("index", "3")], "{index");
}

/// Whether a job asking for `need` fits into `offer`.
fn check_fits(need: Resources, offer: Resources, expected: bool) {
    assert_eq!(need.fits_into(&offer), expected, "{need:?} into {offer:?}");
}

fn res(cores: u32, memory_mb: u64, disk_mb: u64, walltime_seconds: u64) -> Resources {
    Resources { cores, memory_mb, disk_mb, walltime_seconds }
}

#[test]
fn fits_into_compares_every_dimension() {
    check_fits(res(4, 8000, 100, 3600), res(4, 8000, 100, 3600), true);
    check_fits(res(2, 4000, 50, 60), res(8, 16000, 200, 7200), true);
    check_fits(res(5, 1, 1, 1), res(4, 8000, 100, 3600), false);
    check_fits(res(1, 8001, 1, 1), res(4, 8000, 100, 3600), false);
    check_fits(res(1, 1, 101, 1), res(4, 8000, 100, 3600), false);
    check_fits(res(1, 1, 1, 3601), res(4, 8000, 100, 3600), false);
}

#[test]
fn fits_into_treats_zero_as_unlimited_or_unspecified() {
    // A zero offer is unlimited in that dimension.
    check_fits(res(1024, u64::MAX, u64::MAX, u64::MAX), Resources::default(), true);
    check_fits(res(64, 1, 1, 1), res(0, 8000, 100, 3600), true);
    check_fits(res(1, 10_000_000, 1, 1), res(4, 0, 100, 3600), true);
    check_fits(res(1, 1, 1, 86_400 * 30), res(4, 8000, 100, 0), true);
    // A zero request asks for nothing, except cores: every job needs at least one.
    check_fits(Resources::default(), res(1, 1, 1, 1), true);
    check_fits(Resources::default(), res(0, 1, 1, 1), true);
    check_fits(res(0, 0, 0, 0), res(1, 0, 0, 0), true);
}

proptest! {
    #[test]
    fn render_without_escapes_or_values_is_identity(template in "[a-zé€ {}]{0,24}") {
        // With no values every placeholder is kept, so only `{{`/`}}` could change the text.
        prop_assume!(!template.contains("{{") && !template.contains("}}"));
        prop_assert_eq!(render_command(&template, &BTreeMap::new()), template);
    }

    #[test]
    fn render_never_leaves_a_known_placeholder(template in "[a-z {}]{0,24}(\\{index\\}[a-z {}]{0,8})?") {
        // Whatever surrounds it, every `{index}` that validation sees as a placeholder is filled.
        let values = BTreeMap::from([("index", "7".to_owned())]);
        let rendered = render_command(&template, &values);
        let seen = placeholders(&template).filter(|name| *name == "index").count();
        prop_assert_eq!(rendered.matches('7').count(), seen, "{:?} -> {:?}", template, rendered);
    }

    #[test]
    fn fits_into_is_monotonic(need in (0u32..64, 0u64..1000, 0u64..1000, 0u64..1000), extra in (0u32..64, 0u64..1000, 0u64..1000, 0u64..1000)) {
        let need = res(need.0, need.1, need.2, need.3);
        let offer = res(need.cores.max(1) + extra.0, need.memory_mb + extra.1, need.disk_mb + extra.2, need.walltime_seconds + extra.3);
        prop_assert!(need.fits_into(&offer));
        prop_assert!(need.fits_into(&Resources::default()));
    }
}

#[test]
fn the_current_schema_version_is_accepted_explicitly_or_as_zero() {
    for version in [0, TASK_SCHEMA_VERSION] {
        assert!(TaskSpecDraft { schema_version: version, ..generated() }.validate().is_ok(), "version {version}");
    }
    check_error(
        TaskSpecDraft { schema_version: TASK_SCHEMA_VERSION + 1, ..generated() },
        "task.schema_version",
        "version 3 is not supported...",
    );
}

#[test]
fn version_1_keeps_its_meaning_no_automatic_retry() {
    let v1 = TaskSpecDraft { schema_version: 1, ..generated() }.validate().expect("version 1 is still accepted");
    assert_eq!(v1.split.max_attempts(), 1);
    let current = generated().validate().expect("valid");
    assert_eq!(current.split.max_attempts(), crate::rules::DEFAULT_MAX_ATTEMPTS);
    assert_eq!(crate::rules::DEFAULT_MAX_ATTEMPTS, 3);
    let v1_retrying = TaskSpecDraft {
        schema_version: 1,
        split: crate::rules::SplitRulesDraft { max_attempts: Some(5), ..Default::default() },
        ..generated()
    };
    assert_eq!(v1_retrying.validate().expect("valid").split.max_attempts(), 5);
}

#[test]
fn oversized_environments_and_queue_lists_are_refused() {
    let many: BTreeMap<String, String> =
        (0..=MAX_ENVIRONMENT_ENTRIES).map(|i| (format!("V{i}"), "x".to_owned())).collect();
    check_error(
        TaskSpecDraft { environment: many, ..generated() },
        "task.environment",
        "must have at most 256 variables (got 257)",
    );
    let huge = BTreeMap::from([("BIG".to_owned(), "x".repeat(MAX_ENVIRONMENT_VALUE_BYTES + 1))]);
    check_error(
        TaskSpecDraft { environment: huge, ..generated() },
        "task.environment",
        "value of \"BIG\" must be at most 32768 bytes (got 32769)...",
    );
    let queues: Vec<String> = (0..=MAX_QUEUES_PER_TASK).map(|i| format!("q{i}")).collect();
    check_error(TaskSpecDraft { queues, ..generated() }, "task.queues", "must list at most 1000 queues (got 1001)");
}
