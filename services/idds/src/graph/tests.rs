use std::collections::BTreeMap;

use super::cond::{Cond, Facts, Truth};
use super::model::{NodeKind, Value};
use super::plan::{self, State};
use super::release::{HeldJobs, JobHold, ReleaseCounts};
use super::render::{self, Format};
use super::state::{WorkStatus, WorkflowStatus};
use super::*;

fn native(text: &str) -> Graph {
    let parsed = native::parse(text).unwrap_or_else(|e| panic!("{e:?}"));
    validate::validate(&parsed.graph).unwrap_or_else(|e| panic!("{e:?}"));
    parsed.graph
}

fn errors(language: Language, text: &str) -> String {
    compile(language, text, "wf").unwrap_err().iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

const DIAMOND: &str = "
name: diamond
works:
  - name: gen
    task: {command: 'seq 10 > {output}', n_jobs: 2, output_dataset: numbers}
  - name: a
    after: [gen]
    task: {command: 'cat {inputs}', input_datasets: [numbers]}
  - name: b
    after: [gen]
    task: {command: 'cat {inputs}', input_datasets: [numbers]}
  - name: merge
    after: [a, b]
    task: {command: 'true', n_jobs: 1}
";

fn status(state: &State, key: &str) -> WorkStatus {
    state.works.get(key).unwrap_or_else(|| panic!("no instance {key}: {:?}", state.works.keys())).status
}

/// Runs a ready task to `end` as the engine would (submitted, then ended with `outputs`).
fn run(state: &mut State, key: &str, end: WorkStatus, outputs: &[(&str, Value)]) {
    assert_eq!(status(state, key), WorkStatus::Ready, "{key} should be ready");
    state.set_status(key, WorkStatus::Submitted, "");
    state.set_outputs(key, outputs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect());
    state.set_status(key, end, "");
}

#[test]
fn dag_runs_parents_first_and_waits_for_every_parent() {
    let graph = native(DIAMOND);
    let mut state = State::initial(&graph);
    assert_eq!(plan::advance(&graph, &mut state), None);
    assert_eq!(status(&state, "gen"), WorkStatus::Ready);
    assert_eq!(status(&state, "a"), WorkStatus::Waiting);
    run(&mut state, "gen", WorkStatus::Finished, &[]);
    plan::advance(&graph, &mut state);
    assert_eq!((status(&state, "a"), status(&state, "b")), (WorkStatus::Ready, WorkStatus::Ready));
    run(&mut state, "a", WorkStatus::Finished, &[]);
    plan::advance(&graph, &mut state);
    assert_eq!(status(&state, "merge"), WorkStatus::Waiting, "merge waits for b too (N×M)");
    run(&mut state, "b", WorkStatus::Finished, &[]);
    plan::advance(&graph, &mut state);
    run(&mut state, "merge", WorkStatus::Finished, &[]);
    assert_eq!(plan::advance(&graph, &mut state), Some(WorkflowStatus::Finished));
}

#[test]
fn a_failed_parent_skips_its_subtree() {
    let graph = native(DIAMOND);
    let mut state = State::initial(&graph);
    plan::advance(&graph, &mut state);
    run(&mut state, "gen", WorkStatus::Finished, &[]);
    plan::advance(&graph, &mut state);
    run(&mut state, "a", WorkStatus::Failed, &[]);
    run(&mut state, "b", WorkStatus::Finished, &[]);
    assert_eq!(plan::advance(&graph, &mut state), Some(WorkflowStatus::SubFinished));
    assert_eq!(status(&state, "merge"), WorkStatus::Skipped);
    assert!(state.works["merge"].reason.contains("a"), "{}", state.works["merge"].reason);
}

#[test]
fn cycles_dangling_and_self_dependencies_are_named_with_lines() {
    let text = errors(
        Language::Native,
        "name: w\nworks:\n  - name: x\n    after: [z]\n    task: {command: a, n_jobs: 1}\n  - name: y\n    after: [x]\n    task: {command: a, n_jobs: 1}\n  - name: z\n    after: [y]\n    task: {command: a, n_jobs: 1}\n",
    );
    assert!(
        ["x -> y -> z -> x", "y -> z -> x -> y", "z -> x -> y -> z"].iter().any(|c| text.contains(c)),
        "the cycle is spelled parent to child: {text}"
    );
    for name in ["x", "y", "z"] {
        assert!(text.contains(name), "{text}");
    }
    let text = errors(
        Language::Native,
        "name: w\nworks:\n  - name: a\n    after: [nope]\n    task: {command: a, n_jobs: 1}\n  - name: b\n    after: [b]\n    task: {command: a, n_jobs: 1}\n",
    );
    assert!(text.contains("node \"a\" (line 3)") && text.contains("\"nope\""), "{text}");
    assert!(text.contains("node \"b\" (line 6)") && text.contains("itself"), "{text}");
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    let text = errors(Language::Native, "name: w\nworks:\n  - name: a\n    task: {command: x, n_job: 1}\n");
    assert!(text.contains("n_job") && text.contains("line 4"), "{text}");
}

#[test]
fn a_loop_without_an_exit_bound_is_refused() {
    let text = errors(
        Language::Native,
        "name: w\nworks:\n  - name: refine\n    loop:\n      until: {param: {name: x, op: ge, value: 3}}\n      parameters: {x: 0}\n      works:\n        - name: step\n          task: {command: a, n_jobs: 1}\n",
    );
    assert!(text.contains("node \"refine\" (line 3)") && text.contains("no exit bound"), "{text}");
}

#[test]
fn dangling_references_in_conditions_and_links_are_named() {
    let text = errors(
        Language::Native,
        "name: w\nworks:\n  - name: a\n    task: {command: a, n_jobs: 1}\n  - name: b\n    task: {command: a, n_jobs: 1}\nconditions:\n  - name: check\n    if: {status: {work: ghost, is: finished}}\n    then: [b]\n    else: [missing]\n",
    );
    assert!(text.contains("node \"check\" (line 8)") && text.contains("\"missing\""), "{text}");
    let text = errors(
        Language::Native,
        "name: w\nworks:\n  - name: a\n    task: {command: a, n_jobs: 1}\n  - name: b\n    task: {command: a, n_jobs: 1}\nconditions:\n  - name: check\n    if: {status: {work: ghost, is: finished}}\n    then: [b]\n",
    );
    assert!(text.contains("node \"b\" (line 5)") && text.contains("\"ghost\""), "{text}");
    let text = errors(
        Language::Native,
        "name: w\nworks:\n  - name: l\n    loop:\n      max_iterations: 3\n      parameters: {x: 0}\n      links: {y: step/x, x: nowhere/x}\n      works:\n        - name: step\n          task: {command: a, n_jobs: 1}\n",
    );
    assert!(text.contains("parameter \"y\"") || text.contains("\"y\""), "{text}");
    assert!(text.contains("\"nowhere\""), "{text}");
}

const BRANCH: &str = "
name: branch
works:
  - name: probe
    task: {command: 'true', n_jobs: 1}
  - name: big
    after: [probe]
    task: {command: 'true', n_jobs: 1}
  - name: small
    after: [probe]
    task: {command: 'true', n_jobs: 1}
  - name: report
    after: [big, small]
    task: {command: 'true', n_jobs: 1}
conditions:
  - name: is-big
    if: {all: [{status: {work: probe, is: finished}}, {output: {work: probe, key: size, op: gt, value: 100}}]}
    then: [big]
    else: [small]
";

#[test]
fn a_condition_chooses_one_branch_and_the_join_runs() {
    for (size, taken, not_taken) in [(500, "big", "small"), (7, "small", "big")] {
        let graph = native(BRANCH);
        let mut state = State::initial(&graph);
        plan::advance(&graph, &mut state);
        state.set_status("probe", WorkStatus::Submitted, "");
        plan::advance(&graph, &mut state);
        // Pending while the probe runs: neither branch fires early.
        assert_eq!((status(&state, "big"), status(&state, "small")), (WorkStatus::Waiting, WorkStatus::Waiting));
        state.set_outputs("probe", BTreeMap::from([("size".to_owned(), Value::Int(size))]));
        state.set_status("probe", WorkStatus::Finished, "");
        plan::advance(&graph, &mut state);
        assert_eq!(status(&state, taken), WorkStatus::Ready, "size {size}");
        assert_eq!(status(&state, not_taken), WorkStatus::Bypassed, "size {size}");
        run(&mut state, taken, WorkStatus::Finished, &[]);
        plan::advance(&graph, &mut state);
        run(&mut state, "report", WorkStatus::Finished, &[]);
        assert_eq!(plan::advance(&graph, &mut state), Some(WorkflowStatus::Finished));
    }
}

#[test]
fn an_else_branch_on_failure_runs_after_the_failure() {
    let graph = native(
        "name: w\nworks:\n  - name: try\n    task: {command: a, n_jobs: 1}\n  - name: fallback\n    task: {command: a, n_jobs: 1}\nconditions:\n  - name: ok\n    if: {status: {work: try, is: finished}}\n    else: [fallback]\n",
    );
    let mut state = State::initial(&graph);
    plan::advance(&graph, &mut state);
    assert_eq!(status(&state, "fallback"), WorkStatus::Waiting);
    run(&mut state, "try", WorkStatus::Failed, &[]);
    plan::advance(&graph, &mut state);
    assert_eq!(status(&state, "fallback"), WorkStatus::Ready);
}

struct Fixed {
    status: BTreeMap<&'static str, WorkStatus>,
    outputs: BTreeMap<(&'static str, &'static str), Value>,
    params: BTreeMap<&'static str, Value>,
}

impl Facts for Fixed {
    fn status(&self, work: &str) -> Option<WorkStatus> {
        self.status.get(work).copied()
    }
    fn output(&self, work: &str, key: &str) -> Option<Value> {
        self.outputs.iter().find(|((w, k), _)| *w == work && *k == key).map(|(_, v)| v.clone())
    }
    fn param(&self, name: &str) -> Option<Value> {
        self.params.get(name).cloned()
    }
}

fn cond(yaml: &str) -> Cond {
    let value: serde_json::Value = serde_yaml_ng::from_str(yaml).unwrap();
    serde_json::from_value(value).unwrap()
}

#[test]
fn every_condition_kind_evaluates_in_three_values() {
    let facts = Fixed {
        status: BTreeMap::from([
            ("done", WorkStatus::Finished),
            ("part", WorkStatus::SubFinished),
            ("bad", WorkStatus::Failed),
            ("run", WorkStatus::Submitted),
            ("wait", WorkStatus::Waiting),
            ("skip", WorkStatus::Bypassed),
        ]),
        outputs: BTreeMap::from([
            (("done", "jobs_failed"), Value::Int(0)),
            (("done", "jobs_finished"), Value::Int(10)),
            (("done", "loss"), Value::Float(0.25)),
            (("done", "converged"), Value::Bool(true)),
            (("done", "label"), Value::String("beta".into())),
        ]),
        params: BTreeMap::from([("x", Value::Int(3))]),
    };
    let check = |yaml: &str, expected: Truth| assert_eq!(cond(yaml).eval(&facts), expected, "{yaml}");
    check("status: {work: done, is: finished}", Truth::True);
    check("status: {work: part, is: finished}", Truth::False);
    check("status: {work: part, is: processed}", Truth::True);
    check("status: {work: part, is: subfinished}", Truth::True);
    check("status: {work: bad, is: failed}", Truth::True);
    check("status: {work: bad, is: terminated}", Truth::True);
    check("status: {work: run, is: finished}", Truth::Pending);
    check("status: {work: run, is: started}", Truth::True);
    check("status: {work: wait, is: started}", Truth::Pending);
    check("status: {work: skip, is: skipped}", Truth::True);
    check("count: {work: done, counter: jobs_failed, op: eq, value: 0}", Truth::True);
    check("count: {work: done, counter: jobs_finished, op: ge, value: 11}", Truth::False);
    check("count: {work: run, counter: jobs_finished, op: ge, value: 1}", Truth::Pending);
    check("output: {work: done, key: loss, op: lt, value: 0.5}", Truth::True);
    check("output: {work: done, key: converged, op: eq, value: true}", Truth::True);
    check("output: {work: done, key: converged, op: eq, value: 'true'}", Truth::False);
    check("output: {work: done, key: label, op: ne, value: alpha}", Truth::True);
    check("output: {work: done, key: missing, op: eq, value: 1}", Truth::False);
    check("output: {work: run, key: loss, op: lt, value: 1}", Truth::Pending);
    check("param: {name: x, op: eq, value: 3.0}", Truth::True);
    check("param: {name: y, op: eq, value: 3}", Truth::False);
    check("all: [{status: {work: done, is: finished}}, {status: {work: run, is: finished}}]", Truth::Pending);
    check("all: [{status: {work: bad, is: finished}}, {status: {work: run, is: finished}}]", Truth::False);
    check("any: [{status: {work: done, is: finished}}, {status: {work: run, is: finished}}]", Truth::True);
    check("any: [{status: {work: bad, is: finished}}, {status: {work: run, is: finished}}]", Truth::Pending);
    check("any: [{status: {work: bad, is: finished}}, {status: {work: part, is: finished}}]", Truth::False);
    check("not: {status: {work: bad, is: finished}}", Truth::True);
    check("not: {status: {work: run, is: finished}}", Truth::Pending);
}

const LOOP: &str = "
name: converge
works:
  - name: prepare
    task: {command: 'true', n_jobs: 1}
  - name: refine
    after: [prepare]
    loop:
      max_iterations: 5
      parameters: {x: 1}
      until: {output: {work: step, key: x, op: ge, value: 8}}
      links: {x: step/x}
      works:
        - name: step
          task: {command: 'echo iteration %{i} doubles %{x}', n_jobs: 1}
        - name: check
          after: [step]
          task: {command: 'test %{x} -gt 0', n_jobs: 1}
  - name: publish
    after: [refine]
    task: {command: 'true', n_jobs: 1}
";

fn rendered(graph: &Graph, state: &State, key: &str) -> String {
    let (node, params) = plan::resolve(graph, state, key).unwrap_or_else(|| panic!("cannot resolve {key}"));
    let NodeKind::Task(task) = &node.kind else { panic!("{key} is not a task") };
    plan::render_task(task, &params, key).command
}

#[test]
fn a_loop_repeats_with_parameter_links_until_its_condition_holds() {
    let graph = native(LOOP);
    let mut state = State::initial(&graph);
    plan::advance(&graph, &mut state);
    run(&mut state, "prepare", WorkStatus::Finished, &[]);
    plan::advance(&graph, &mut state);
    let mut x = 1;
    for iteration in 1..=3 {
        let step = format!("refine#{iteration}/step");
        assert_eq!(rendered(&graph, &state, &step), format!("echo iteration {iteration} doubles {x}"));
        x *= 2;
        run(&mut state, &step, WorkStatus::Finished, &[("x", Value::Int(x))]);
        plan::advance(&graph, &mut state);
        run(&mut state, &format!("refine#{iteration}/check"), WorkStatus::Finished, &[]);
        plan::advance(&graph, &mut state);
        assert_eq!(state.works["refine"].iteration, if x >= 8 { iteration } else { iteration + 1 });
    }
    // x reached 8 after iteration 3: the loop ends and its child runs.
    assert_eq!(status(&state, "refine"), WorkStatus::Finished);
    assert!(state.works["refine"].reason.contains("until held after iteration 3"), "{}", state.works["refine"].reason);
    assert!(!state.works.contains_key("refine#4/step"));
    assert_eq!(status(&state, "publish"), WorkStatus::Ready);
}

#[test]
fn a_loop_stops_at_its_bound() {
    let graph = native(&LOOP.replace("max_iterations: 5", "max_iterations: 2"));
    let mut state = State::initial(&graph);
    plan::advance(&graph, &mut state);
    run(&mut state, "prepare", WorkStatus::Finished, &[]);
    plan::advance(&graph, &mut state);
    for iteration in 1..=2 {
        run(&mut state, &format!("refine#{iteration}/step"), WorkStatus::Finished, &[("x", Value::Int(1))]);
        plan::advance(&graph, &mut state);
        run(&mut state, &format!("refine#{iteration}/check"), WorkStatus::Finished, &[]);
        plan::advance(&graph, &mut state);
    }
    assert_eq!(status(&state, "refine"), WorkStatus::Finished);
    assert!(state.works["refine"].reason.contains("max_iterations (2)"), "{}", state.works["refine"].reason);
    assert!(!state.works.contains_key("refine#3/step"));
}

#[test]
fn a_failed_iteration_fails_the_loop_and_retry_resumes_it() {
    let graph = native(LOOP);
    let mut state = State::initial(&graph);
    plan::advance(&graph, &mut state);
    run(&mut state, "prepare", WorkStatus::Finished, &[]);
    plan::advance(&graph, &mut state);
    run(&mut state, "refine#1/step", WorkStatus::Failed, &[]);
    assert_eq!(
        plan::advance(&graph, &mut state),
        Some(WorkflowStatus::Failed).filter(|_| false).or(Some(WorkflowStatus::SubFinished))
    );
    assert_eq!(status(&state, "refine#1/check"), WorkStatus::Skipped);
    assert_eq!(status(&state, "refine"), WorkStatus::Failed);
    assert_eq!(status(&state, "publish"), WorkStatus::Skipped);
    let retried = plan::retry(&graph, &mut state, |_| true);
    assert_eq!(retried, vec!["refine#1/step".to_owned()]);
    assert_eq!(plan::advance(&graph, &mut state), None);
    assert_eq!(status(&state, "refine"), WorkStatus::Submitted);
    assert_eq!(status(&state, "publish"), WorkStatus::Waiting);
    state.set_outputs("refine#1/step", BTreeMap::from([("x".to_owned(), Value::Int(9))]));
    state.set_status("refine#1/step", WorkStatus::Finished, "");
    plan::advance(&graph, &mut state);
    run(&mut state, "refine#1/check", WorkStatus::Finished, &[]);
    plan::advance(&graph, &mut state);
    assert_eq!(status(&state, "publish"), WorkStatus::Ready);
}

#[test]
fn abort_cancels_what_has_not_ended_and_names_running_tasks() {
    let graph = native(DIAMOND);
    let mut state = State::initial(&graph);
    plan::advance(&graph, &mut state);
    run(&mut state, "gen", WorkStatus::Finished, &[]);
    plan::advance(&graph, &mut state);
    state.set_status("a", WorkStatus::Submitted, "");
    let running = plan::abort(&graph, &mut state);
    assert_eq!(running, vec!["a".to_owned()]);
    for key in ["a", "b", "merge"] {
        assert_eq!(status(&state, key), WorkStatus::Cancelled);
    }
    assert_eq!(status(&state, "gen"), WorkStatus::Finished);
}

#[test]
fn a_subworkflow_runs_once_and_its_end_is_the_nodes() {
    let graph = native(
        "name: w\nworks:\n  - name: sub\n    workflow:\n      works:\n        - name: one\n          task: {command: a, n_jobs: 1}\n        - name: two\n          after: [one]\n          task: {command: a, n_jobs: 1}\n  - name: after\n    after: [sub]\n    task: {command: a, n_jobs: 1}\n",
    );
    let mut state = State::initial(&graph);
    plan::advance(&graph, &mut state);
    assert_eq!(status(&state, "sub"), WorkStatus::Submitted);
    run(&mut state, "sub#1/one", WorkStatus::Finished, &[]);
    plan::advance(&graph, &mut state);
    run(&mut state, "sub#1/two", WorkStatus::Finished, &[("n", Value::Int(4))]);
    plan::advance(&graph, &mut state);
    assert_eq!(status(&state, "sub"), WorkStatus::Finished);
    assert_eq!(state.works["sub"].outputs.get("two.n"), Some(&Value::Int(4)));
    assert_eq!(status(&state, "after"), WorkStatus::Ready);
}

#[test]
fn work_transitions_match_the_table() {
    use WorkStatus::*;
    let allowed = [
        (Waiting, Ready),
        (Waiting, Submitted),
        (Waiting, Skipped),
        (Waiting, Bypassed),
        (Waiting, Cancelled),
        (Ready, Submitted),
        (Ready, Failed),
        (Ready, Cancelled),
        (Submitted, Finished),
        (Submitted, SubFinished),
        (Submitted, Failed),
        (Submitted, Cancelled),
        (Failed, Submitted),
        (Failed, Ready),
        (SubFinished, Submitted),
        (SubFinished, Ready),
        (Skipped, Waiting),
    ];
    for from in WorkStatus::ALL {
        for to in WorkStatus::ALL {
            assert_eq!(from.can_transition_to(to), allowed.contains(&(from, to)), "{from:?} -> {to:?}");
        }
        assert_eq!(WorkStatus::parse(from.as_str()), Some(from));
    }
}

#[test]
fn workflow_transitions_match_the_table() {
    use WorkflowStatus::*;
    let allowed = [
        (Running, Suspended),
        (Running, Finished),
        (Running, SubFinished),
        (Running, Failed),
        (Running, Cancelled),
        (Suspended, Running),
        (Suspended, Cancelled),
        (SubFinished, Running),
        (Failed, Running),
    ];
    for from in WorkflowStatus::ALL {
        for to in WorkflowStatus::ALL {
            assert_eq!(from.can_transition_to(to), allowed.contains(&(from, to)), "{from:?} -> {to:?}");
        }
        assert_eq!(WorkflowStatus::parse(from.as_str()), Some(from));
    }
}

#[test]
fn held_jobs_are_released_per_file_once() {
    let inputs = vec![vec!["a".to_owned()], vec!["a".to_owned(), "b".to_owned()], vec![], vec!["c".to_owned()]];
    let mut held = HeldJobs::new(&inputs);
    assert_eq!(held.released_at_start(), vec![2]);
    assert_eq!(held.produced("a"), vec![0]);
    assert_eq!(held.job(1), Some(JobHold::Held(1)));
    assert_eq!(held.produced("a"), Vec::<u32>::new(), "a repeated report releases nothing");
    assert_eq!(held.produced("b"), vec![1]);
    assert_eq!(held.lost("c"), vec![3]);
    assert_eq!(held.produced("c"), Vec::<u32>::new());
    assert_eq!(held.counts(), ReleaseCounts { held: 0, released: 3, missing: 1 });
}

const SNAKEFILE: &str = r#"
SAMPLES = ["a", "b", "c"]
workdir: "/tmp/panda-snake"

rule all:
    input: "results/summary.txt"

rule count:
    input: "data/{sample}.txt"
    output: "counts/{sample}.n"
    params: flag="-l"
    shell: "wc {params.flag} < {input} > {output}"

rule make:
    output: "data/{sample}.txt"
    shell: "seq 1 {wildcards.sample} > {output[0]}"

rule summary:
    input: expand("counts/{s}.n", s=SAMPLES)
    output: "results/summary.txt"
    shell:
        """
        cat {input} | awk '{{ s += $1 }} END {{ print s }}' > {output}
        """
"#;

#[test]
fn a_snakefile_becomes_one_task_per_rule_with_file_level_edges() {
    let (graph, _) = compile(Language::Snakemake, SNAKEFILE, "snake").unwrap();
    let names: Vec<&str> = graph.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    let count = graph.node("count").unwrap();
    let NodeKind::Task(task) = &count.kind else { panic!() };
    assert_eq!(task.n_jobs, Some(3));
    assert_eq!(task.jobs[0].inputs, vec!["data/a.txt".to_owned()]);
    assert_eq!(task.jobs[2].outputs, vec!["counts/c.n".to_owned()]);
    assert!(task.command.contains("1) mkdir -p counts && wc -l < data/a.txt > counts/a.n ;;"), "{}", task.command);
    assert!(task.command.starts_with("mkdir -p /tmp/panda-snake && cd /tmp/panda-snake && case {index} in"));
    assert_eq!(count.after.len(), 1);
    assert_eq!(count.after[0].node, "make");
    assert_eq!(count.after[0].level, model::DependencyLevel::File);
    let summary = graph.node("summary").unwrap();
    let NodeKind::Task(task) = &summary.kind else { panic!() };
    assert_eq!(task.n_jobs, Some(1));
    // Literal braces are doubled for the server's placeholder syntax.
    assert!(task.command.contains("awk '{{ s += $1 }} END {{ print s }}'"), "{}", task.command);
    let make = graph.node("make").unwrap();
    let NodeKind::Task(task) = &make.kind else { panic!() };
    assert!(task.command.contains("seq 1 b > data/b.txt"), "{}", task.command);
}

#[test]
fn bad_snakefiles_are_refused_naming_rule_and_line() {
    let ambiguous = "rule all:\n    input: \"out/x.txt\"\n\nrule one:\n    output: \"out/{name}.txt\"\n    shell: \"touch {output}\"\n\nrule two:\n    output: \"out/{n}.txt\"\n    shell: \"touch {output}\"\n";
    let text = errors(Language::Snakemake, ambiguous);
    assert!(text.contains("ambiguous") && text.contains("one (line 4)") && text.contains("two (line 8)"), "{text}");
    let wildcard =
        "rule a:\n    input: \"in/{x}.txt\"\n    output: \"out/{y}.txt\"\n    shell: \"cp {input} {output}\"\n";
    let text = errors(Language::Snakemake, wildcard);
    assert!(text.contains("node \"a\" (line 1)") && text.contains("{x}") && text.contains("ambiguous"), "{text}");
    let run = "rule a:\n    output: \"x\"\n    run:\n        print(1)\n";
    let text = errors(Language::Snakemake, run);
    assert!(text.contains("node \"a\" (line 3)") && text.contains("run:"), "{text}");
    let target = "rule all:\n    input: \"out/{x}.txt\"\n";
    assert!(errors(Language::Snakemake, target).contains("unresolved wildcards"));
}

#[test]
fn the_graph_renders_as_text_dot_and_mermaid() {
    let graph = native(LOOP);
    let labels = render::Labels::from([("refine".to_owned(), "submitted (iteration 2)".to_owned())]);
    let text = render::render(&graph, Format::Text, &labels);
    assert!(text.contains("refine [loop, at most 5 iterations] submitted (iteration 2) <- prepare"), "{text}");
    assert!(text.contains("    step [task]"), "{text}");
    let dot = render::render(&graph, Format::Dot, &labels);
    assert!(dot.starts_with("digraph \"converge\""), "{dot}");
    assert!(dot.contains("prepare -> refine;") && dot.contains("subgraph cluster_refine"), "{dot}");
    assert!(dot.contains("refine_step -> refine_check;"), "{dot}");
    let mermaid = render::render(&graph, Format::Mermaid, &labels);
    assert!(mermaid.starts_with("flowchart TD"), "{mermaid}");
    assert!(mermaid.contains("prepare --> refine") && mermaid.contains("subgraph refine_body"), "{mermaid}");
}

#[test]
fn the_example_workflows_compile() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/workflows");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let language = if path.file_name().is_some_and(|n| n.to_string_lossy().contains("Snakefile")) {
            Language::Snakemake
        } else {
            Language::Native
        };
        compile(language, &text, "example").unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
        seen += 1;
    }
    assert!(seen >= 3, "{seen}");
}

/// A layered DAG like the bench's, written in the native format.
fn layered(layers: usize, width: usize, seed: u64) -> String {
    use rand::seq::index::sample;
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut text = String::from("name: layered\nworks:\n");
    for layer in 0..layers {
        for i in 0..width {
            let after = if layer == 0 {
                String::new()
            } else {
                let k = rng.random_range(1..=3.min(width));
                let names: Vec<String> =
                    sample(&mut rng, width, k).into_iter().map(|p| format!("w{}-{p}", layer - 1)).collect();
                format!(", after: [{}]", names.join(", "))
            };
            text.push_str(&format!("  - {{name: w{layer}-{i}{after}, task: {{command: 'true', n_jobs: 1}}}}\n"));
        }
    }
    text
}

/// The incremental planner decides exactly what the full one does: both run the same graph
/// side by side, ending tasks in the same (seeded, random) order with random outcomes.
#[test]
fn the_incremental_planner_matches_the_full_one() {
    use rand::{Rng, SeedableRng};
    for (name, text) in [
        ("diamond", DIAMOND.to_owned()),
        ("branch", BRANCH.to_owned()),
        ("loop", LOOP.to_owned()),
        ("layered", layered(6, 8, 3)),
    ] {
        for seed in 0..8 {
            let graph = native(&text);
            let index = plan::Index::new(&graph);
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut full = State::initial(&graph);
            plan::advance(&graph, &mut full);
            full.take_changed();
            let mut incremental = full.clone();
            let mut ends = (None, None);
            for _ in 0..10_000 {
                // Submit every ready task, then end one running task.
                let ready: Vec<String> =
                    full.works.iter().filter(|(_, i)| i.status == WorkStatus::Ready).map(|(k, _)| k.clone()).collect();
                let running: Vec<String> = full
                    .works
                    .iter()
                    .filter(|(k, i)| {
                        i.status == WorkStatus::Submitted
                            && plan::resolve(&graph, &full, k).is_some_and(|(n, _)| matches!(n.kind, NodeKind::Task(_)))
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                if ready.is_empty() && running.is_empty() {
                    break;
                }
                let ended = (!running.is_empty()).then(|| {
                    let key = running[rng.random_range(0..running.len())].clone();
                    let end = if rng.random_bool(0.15) { WorkStatus::Failed } else { WorkStatus::Finished };
                    let outputs: BTreeMap<String, Value> = [
                        ("size".to_owned(), Value::Int(rng.random_range(0..200))),
                        ("x".to_owned(), Value::Int(rng.random_range(0..10))),
                    ]
                    .into();
                    (key, end, outputs)
                });
                for state in [&mut full, &mut incremental] {
                    for key in &ready {
                        state.set_status(key, WorkStatus::Submitted, "");
                    }
                    if let Some((key, end, outputs)) = &ended {
                        state.set_outputs(key, outputs.clone());
                        state.set_status(key, *end, "");
                    }
                }
                ends = (plan::advance(&graph, &mut full), plan::advance_changed(&graph, &index, &mut incremental));
                full.take_changed();
                incremental.take_changed();
                assert_eq!(full.works, incremental.works, "{name} (seed {seed}) diverged");
                assert_eq!(ends.0, ends.1, "{name} (seed {seed})");
            }
            assert!(ends.0.is_some(), "{name} (seed {seed}) did not end: {:?}", full.works);
        }
    }
}
