use panda_types::spec::{SplitRulesDraft, TaskSpecDraft};

use super::*;

fn spec(input: &str, files_per_job: Option<u32>, n_jobs: Option<u32>, command: &str) -> TaskSpec {
    spec_with(input, files_per_job, n_jobs, command, SplitRulesDraft::default())
}

fn spec_with(
    input: &str,
    files_per_job: Option<u32>,
    n_jobs: Option<u32>,
    command: &str,
    split: SplitRulesDraft,
) -> TaskSpec {
    TaskSpecDraft {
        name: "t".into(),
        command: command.into(),
        input_datasets: if input.is_empty() { vec![] } else { vec![input.into()] },
        files_per_job,
        n_jobs,
        output_dataset: "out".into(),
        split,
        ..Default::default()
    }
    .validate()
    .unwrap()
}

fn files(n: usize) -> Vec<InputFile> {
    (1..=n).map(|i| InputFile::named(format!("in._{i:06}"))).collect()
}

fn sized(sizes_events: &[(u64, u64)]) -> Vec<InputFile> {
    sizes_events
        .iter()
        .enumerate()
        .map(|(i, &(size_bytes, n_events))| InputFile {
            lfn: format!("f{}", i + 1),
            size_bytes,
            n_events,
            replicas: Vec::new(),
        })
        .collect()
}

fn lfns(n: usize) -> Vec<String> {
    files(n).into_iter().map(|f| f.lfn).collect()
}

#[test]
fn files_per_job_with_remainder() {
    let plans = split(TaskId(7), &spec("in", Some(2), None, "cat {inputs} > {output}"), &files(5), None).unwrap();
    let inputs: Vec<usize> = plans.iter().map(|p| p.inputs.len()).collect();
    assert_eq!(inputs, vec![2, 2, 1]);
    assert_eq!(plans[0].command, "cat in._000001 in._000002 > out._000001");
    assert_eq!(plans[2].outputs, vec!["out._000003".to_owned()]);
    assert_eq!(plans[2].log_file, "out.log._000003.tgz");
    assert_eq!(plans.iter().map(|p| p.index).collect::<Vec<_>>(), vec![1, 2, 3]);
}

#[test]
fn generated_jobs_get_indices_and_task_id() {
    let plans =
        split(TaskId(9), &spec("", None, Some(3), "gen {index} {task_id} {job_id} > {output}"), &[], None).unwrap();
    assert_eq!(plans.len(), 3);
    assert_eq!(plans[1].command, "gen 2 9 ${PANDA_JOB_ID} > out._000002");
    assert!(plans.iter().all(|p| p.inputs.is_empty()));
}

#[test]
fn every_input_file_is_used_exactly_once() {
    for n in 1..20 {
        for per_job in 1..6 {
            let plans = split(TaskId(1), &spec("in", Some(per_job), None, "true"), &files(n), None).unwrap();
            let used: Vec<String> = plans.iter().flat_map(|p| p.inputs.clone()).collect();
            assert_eq!(used, lfns(n));
            assert!(plans.iter().all(|p| p.inputs.len() <= per_job as usize && !p.inputs.is_empty()));
        }
    }
}

#[test]
fn empty_input_is_an_error() {
    let error = split(TaskId(1), &spec("in", None, None, "true"), &[], None).unwrap_err();
    assert_eq!(error, SplitError::EmptyInput { datasets: "in".into() });
}

#[test]
fn events_per_job_cuts_large_files_and_merges_small_ones() {
    let rules = SplitRulesDraft { events_per_job: Some(100), ..Default::default() };
    let s = spec_with("in", None, None, "run {inputs}", rules);
    // A 250-event file, then three 30-event files, then a 10-event one.
    let input = sized(&[(2500, 250), (300, 30), (300, 30), (300, 30), (100, 10)]);
    let plans = split(TaskId(1), &s, &input, None).unwrap();
    let ranges: Vec<Vec<(String, u64, u64)>> =
        plans.iter().map(|p| p.event_ranges.iter().map(|r| (r.lfn.clone(), r.first, r.count)).collect()).collect();
    assert_eq!(
        ranges,
        vec![
            vec![("f1".into(), 0, 100)],
            vec![("f1".into(), 100, 100)],
            vec![("f1".into(), 200, 50), ("f2".into(), 0, 30), ("f3".into(), 0, 20)],
            vec![("f3".into(), 20, 10), ("f4".into(), 0, 30), ("f5".into(), 0, 10)],
        ]
    );
    assert_eq!(plans.iter().map(|p| p.n_events).collect::<Vec<_>>(), vec![100, 100, 100, 50]);
    assert_eq!(plans[2].inputs, vec!["f1", "f2", "f3"]);
    assert_eq!(plans[2].command, "run f1 f2 f3");
    assert_eq!(plans[2].event_ranges_env(), "f1:200:50,f2:0:30,f3:0:20");
}

#[test]
fn every_event_is_processed_exactly_once() {
    let input = sized(&[(1, 7), (1, 1), (1, 13), (1, 100), (1, 3)]);
    for per_job in 1..40 {
        let s = spec_with(
            "in",
            None,
            None,
            "true",
            SplitRulesDraft { events_per_job: Some(per_job), ..Default::default() },
        );
        let plans = split(TaskId(1), &s, &input, None).unwrap();
        for file in &input {
            let mut covered: Vec<(u64, u64)> = plans
                .iter()
                .flat_map(|p| p.event_ranges.iter())
                .filter(|r| r.lfn == file.lfn)
                .map(|r| (r.first, r.count))
                .collect();
            covered.sort();
            let mut next = 0;
            for (first, count) in covered {
                assert_eq!(first, next, "gap or overlap in {} with {per_job} per job", file.lfn);
                next += count;
            }
            assert_eq!(next, file.n_events);
        }
        assert!(plans.iter().all(|p| p.n_events <= per_job && p.n_events > 0));
    }
}

#[test]
fn events_rule_needs_event_counts() {
    let s = spec_with("in", None, None, "true", SplitRulesDraft { events_per_job: Some(10), ..Default::default() });
    let error = split(TaskId(1), &s, &sized(&[(10, 5), (10, 0)]), None).unwrap_err();
    assert_eq!(error, SplitError::NoEvents { lfn: "f2".into() });
    assert!(error.to_string().starts_with("task.split.events_per_job"));
}

#[test]
fn gigabytes_per_job_packs_files_up_to_the_size() {
    let gb = 1_000_000_000;
    let s = spec_with("in", None, None, "true", SplitRulesDraft { gb_per_job: Some(2.0), ..Default::default() });
    let input = sized(&[(gb, 1), (gb / 2, 1), (gb / 2, 1), (3 * gb, 1), (gb, 1)]);
    let plans = split(TaskId(1), &s, &input, None).unwrap();
    let sizes: Vec<Vec<String>> = plans.iter().map(|p| p.inputs.clone()).collect();
    assert_eq!(sizes, vec![vec!["f1", "f2", "f3"], vec!["f4"], vec!["f5"]]);
    assert_eq!(plans[0].input_bytes, 2 * gb);
}

#[test]
fn walltime_target_sets_events_per_job_from_time_per_event() {
    // 3600 s target at 2.5 s per event: 1440 events per job.
    let rules =
        SplitRulesDraft { walltime_target_seconds: Some(3600), seconds_per_event: Some(2.5), ..Default::default() };
    let s = spec_with("in", None, None, "true", rules);
    assert_eq!(events_per_job(&s, None), Some(1440));
    let plans = split(TaskId(1), &s, &sized(&[(1, 3000)]), None).unwrap();
    assert_eq!(plans.iter().map(|p| p.n_events).collect::<Vec<_>>(), vec![1440, 1440, 120]);
    // A measured time per event (scouts: 10 s) overrides the preset.
    assert_eq!(events_per_job(&s, Some(10_000_000)), Some(360));
    // With events_per_job too, the smaller wins.
    let rules = SplitRulesDraft {
        events_per_job: Some(500),
        walltime_target_seconds: Some(3600),
        seconds_per_event: Some(2.5),
        ..Default::default()
    };
    assert_eq!(events_per_job(&spec_with("in", None, None, "true", rules), None), Some(500));
}

#[test]
fn merge_jobs_cover_every_output_once() {
    let outputs: Vec<String> = (1..=5).map(|i| output_lfn("out", i)).collect();
    let merges = merge_plans(TaskId(3), "out", panda_types::spec::DEFAULT_MERGE_COMMAND, &outputs, 2, 6);
    assert_eq!(merges.len(), 3);
    assert_eq!(merges[0].index, 6);
    assert_eq!(merges[0].outputs, vec!["out.merged._000006"]);
    assert_eq!(merges[0].command, "cat out._000001 out._000002 > out.merged._000006");
    let merged: Vec<String> = merges.iter().flat_map(|m| m.inputs.clone()).collect();
    assert_eq!(merged, outputs);
    let hadd = merge_plans(TaskId(3), "out", "hadd {output} {inputs}", &outputs, 5, 6);
    assert_eq!(hadd[0].command, "hadd out.merged._000006 out._000001 out._000002 out._000003 out._000004 out._000005");
}

#[test]
fn log_names_without_output_dataset_use_the_task() {
    let s = TaskSpecDraft { name: "t".into(), command: "true".into(), n_jobs: Some(1), ..Default::default() }
        .validate()
        .unwrap();
    let plans = split(TaskId(42), &s, &[], None).unwrap();
    assert_eq!(plans[0].log_file, "task-42.log._000001.tgz");
}

#[test]
fn the_rest_after_scouts_continues_the_event_stream_with_the_new_size() {
    // Preset 100 events per job; 2 scouts took events 0..200 of f1 (250 events) .
    let rules = SplitRulesDraft {
        events_per_job: Some(100),
        walltime_target_seconds: Some(100),
        seconds_per_event: Some(1.0),
        scouts: Some(2),
        ..Default::default()
    };
    let s = spec_with("in", None, None, "true", rules);
    let input = sized(&[(1, 250), (1, 400)]);
    // Scouts measured 2 s per event: 50 events per job now.
    let rest = split_rest(TaskId(1), &s, &input, Some(2_000_000), 2).unwrap();
    assert_eq!(rest[0].index, 3);
    assert_eq!(rest[0].event_ranges, vec![EventRange { lfn: "f1".into(), first: 200, count: 50 }]);
    assert!(rest.iter().all(|p| p.n_events == 50));
    assert_eq!(rest.iter().map(|p| p.n_events).sum::<u64>(), 650 - 200);
}

#[test]
fn the_rest_after_scouts_with_files_per_job_skips_the_scouts() {
    let rules = SplitRulesDraft { scouts: Some(2), ..Default::default() };
    let s = spec_with("in", Some(1), None, "true", rules);
    let rest = split_rest(TaskId(1), &s, &files(5), Some(1), 2).unwrap();
    assert_eq!(rest.iter().map(|p| p.index).collect::<Vec<_>>(), vec![3, 4, 5]);
    assert_eq!(rest[0].inputs, vec!["in._000003"]);
}
