//! The documented task-parameter schema covers every field of the wire `TaskSpec`, and the YAML
//! task file accepts each of them: a field added to one but not the others fails here.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// Field names of `message TaskSpec` in task.proto.
fn task_spec_fields() -> Vec<String> {
    let proto = std::fs::read_to_string(root().join("proto/panda/server/v1/task.proto")).unwrap();
    let body = proto.split("message TaskSpec {").nth(1).unwrap().split("\n}").next().unwrap();
    body.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with("//") && line.ends_with(';') && line.contains('='))
        .map(|line| line.split('=').next().unwrap().split_whitespace().last().unwrap().to_owned())
        .collect()
}

#[test]
fn every_task_spec_field_is_documented() {
    let doc = std::fs::read_to_string(root().join("docs/task-parameters.md")).unwrap();
    let fields = task_spec_fields();
    assert!(fields.len() >= 13, "parsed {fields:?}");
    for field in fields {
        assert!(doc.contains(&format!("| `{field}` |")), "docs/task-parameters.md has no row for `{field}`");
    }
}

#[test]
fn the_documented_version_is_the_one_the_code_accepts() {
    let doc = std::fs::read_to_string(root().join("docs/task-parameters.md")).unwrap();
    let version = panda_types::spec::TASK_SCHEMA_VERSION;
    assert!(
        doc.starts_with(&format!("# Task parameters, schema version {version}\n")),
        "doc heading names version {version}"
    );
}
