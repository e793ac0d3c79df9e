use super::*;

fn work(name: &str, parents: &[&str], input: &str, output: &str) -> WorkDraft {
    WorkDraft {
        name: name.into(),
        parents: parents.iter().map(|p| p.to_string()).collect(),
        task: TaskSpecDraft {
            name: name.into(),
            command: "true".into(),
            input_datasets: if input.is_empty() { vec![] } else { vec![input.into()] },
            n_jobs: input.is_empty().then_some(1),
            output_dataset: output.into(),
            ..Default::default()
        },
    }
}

fn diamond() -> Vec<WorkDraft> {
    vec![
        work("gen", &[], "", "gen"),
        work("a", &["gen"], "gen", "a"),
        work("b", &["gen"], "gen", "b"),
        work("merge", &["a", "b"], "a", "merged"),
    ]
}

fn errors(works: &[WorkDraft]) -> String {
    validate(works).unwrap_err().iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

#[test]
fn diamond_is_valid_and_ordered() {
    let works = diamond();
    let order = validate(&works).unwrap();
    let position = |name: &str| order.iter().position(|&i| works[i].name == name).unwrap();
    assert!(position("gen") < position("a") && position("a") < position("merge") && position("b") < position("merge"));
}

#[test]
fn cycle_is_named() {
    let works = vec![work("x", &["z"], "", ""), work("y", &["x"], "", ""), work("z", &["y"], "", "")];
    let text = errors(&works);
    assert!(text.contains("cycle"), "{text}");
    for name in ["x", "y", "z"] {
        assert!(text.contains(name), "{text}");
    }
}

#[test]
fn dangling_and_self_dependencies_are_named() {
    let text = errors(&[work("a", &["nope"], "", ""), work("b", &["b"], "", "")]);
    assert!(text.contains("works[0].parents") && text.contains("\"nope\""), "{text}");
    assert!(text.contains("works[1].parents") && text.contains("itself"), "{text}");
}

#[test]
fn duplicate_names_and_outputs() {
    let text = errors(&[work("a", &[], "", "d"), work("a", &[], "", "d")]);
    assert!(text.contains("works[1].name"), "{text}");
}

#[test]
fn input_from_a_non_ancestor_is_refused() {
    let text = errors(&[work("gen", &[], "", "gen"), work("use", &[], "gen", "out")]);
    assert!(text.contains("works[1].task.input_datasets[0]") && text.contains("add it to parents"), "{text}");
}

#[test]
fn task_errors_are_prefixed_with_the_work() {
    let mut bad = work("a", &[], "", "");
    bad.task.command = String::new();
    let text = errors(&[bad]);
    assert!(text.contains("works[0].task.command"), "{text}");
}

fn states(list: &[(&str, WorkStatus, &[&str])]) -> BTreeMap<String, (WorkStatus, Vec<String>)> {
    list.iter().map(|(n, s, p)| (n.to_string(), (*s, p.iter().map(|x| x.to_string()).collect()))).collect()
}

#[test]
fn roots_are_ready_first() {
    let works = states(&[("gen", WorkStatus::Waiting, &[]), ("a", WorkStatus::Waiting, &["gen"])]);
    assert_eq!(advance(&works), Advance { ready: vec!["gen".into()], skipped: vec![] });
}

#[test]
fn a_child_waits_for_all_parents() {
    let works = states(&[
        ("a", WorkStatus::Finished, &[]),
        ("b", WorkStatus::Submitted, &[]),
        ("merge", WorkStatus::Waiting, &["a", "b"]),
    ]);
    assert_eq!(advance(&works), Advance::default());
    let works = states(&[
        ("a", WorkStatus::Finished, &[]),
        ("b", WorkStatus::Finished, &[]),
        ("merge", WorkStatus::Waiting, &["a", "b"]),
    ]);
    assert_eq!(advance(&works).ready, vec!["merge".to_owned()]);
}

#[test]
fn failure_skips_the_subtree() {
    let works = states(&[
        ("gen", WorkStatus::Failed, &[]),
        ("a", WorkStatus::Waiting, &["gen"]),
        ("merge", WorkStatus::Waiting, &["a"]),
        ("other", WorkStatus::Waiting, &[]),
    ]);
    let result = advance(&works);
    assert_eq!(result.ready, vec!["other".to_owned()]);
    let mut skipped = result.skipped;
    skipped.sort();
    assert_eq!(skipped, vec!["a".to_owned(), "merge".to_owned()]);
}

#[test]
fn workflow_status_rules() {
    use WorkStatus::*;
    assert_eq!(workflow_status([Finished, Finished]), WorkflowStatus::Finished);
    assert_eq!(workflow_status([Finished, Submitted]), WorkflowStatus::Running);
    assert_eq!(workflow_status([Finished, Failed, Skipped]), WorkflowStatus::SubFinished);
    assert_eq!(workflow_status([SubFinished, Skipped]), WorkflowStatus::SubFinished);
    assert_eq!(workflow_status([Failed, Skipped]), WorkflowStatus::Failed);
}

#[test]
fn task_states_map_to_work_states() {
    use panda_types::TaskStatus;
    assert_eq!(WorkStatus::from_task_status(TaskStatus::Done), Some(WorkStatus::Finished));
    assert_eq!(WorkStatus::from_task_status(TaskStatus::Finished), Some(WorkStatus::SubFinished));
    assert_eq!(WorkStatus::from_task_status(TaskStatus::Aborted), Some(WorkStatus::Failed));
    assert_eq!(WorkStatus::from_task_status(TaskStatus::Running), None);
}

#[test]
fn datasets_produced_here_are_scoped() {
    let here: BTreeSet<String> = ["gen".to_owned()].into();
    assert_eq!(scoped_dataset("gen", &here, "wf", 7), "wf.7.gen");
    assert_eq!(scoped_dataset("external", &here, "wf", 7), "external");
    assert_eq!(scoped_dataset("", &here, "wf", 7), "");
}
