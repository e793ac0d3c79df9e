//! Job generation: a task's specification and input files become job plans. Pure: no I/O.

use std::collections::BTreeMap;

use panda_types::spec::{TaskInput, render_command};
use panda_types::{TaskId, TaskSpec};

/// One job to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPlan {
    /// 1-based position in the task (also in output file names).
    pub index: u32,
    /// Input LFNs.
    pub inputs: Vec<String>,
    /// Output LFNs.
    pub outputs: Vec<String>,
    /// Command with placeholders filled.
    pub command: String,
}

/// Splitting could not produce jobs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// The input datasets have no usable files.
    #[error("input datasets {datasets} have no finished files")]
    EmptyInput {
        /// The datasets, comma separated.
        datasets: String,
    },
}

/// The output file of job `index` in `dataset` (the reference's `<dataset>._<NNNNNN>` style).
pub fn output_lfn(dataset: &str, index: u32) -> String {
    format!("{dataset}._{index:06}")
}

/// Splits a task: with an input dataset, `files_per_job` consecutive files per job (the last job
/// takes the remainder); without one, `n_jobs` jobs. Each job writes one file into the output
/// dataset when there is one.
///
/// # Errors
/// [`SplitError::EmptyInput`] when a dataset input has no files.
pub fn split(task_id: TaskId, spec: &TaskSpec, input_files: &[String]) -> Result<Vec<JobPlan>, SplitError> {
    let chunks: Vec<Vec<String>> = match &spec.input {
        TaskInput::Datasets { names, files_per_job } => {
            if input_files.is_empty() {
                return Err(SplitError::EmptyInput { datasets: names.join(", ") });
            }
            input_files.chunks(*files_per_job as usize).map(<[String]>::to_vec).collect()
        }
        TaskInput::Generated { n_jobs } => vec![Vec::new(); *n_jobs as usize],
    };
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(i, inputs)| {
            let index = i as u32 + 1;
            let outputs: Vec<String> = spec.output_dataset.iter().map(|dataset| output_lfn(dataset, index)).collect();
            let mut values = BTreeMap::new();
            values.insert("inputs", inputs.join(" "));
            values.insert("output", outputs.first().cloned().unwrap_or_default());
            values.insert("index", index.to_string());
            values.insert("task_id", task_id.to_string());
            // The job id is known only once the server stores the job: the pilot exports it.
            values.insert("job_id", "${PANDA_JOB_ID}".to_owned());
            JobPlan { index, command: render_command(&spec.command, &values), inputs, outputs }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use panda_types::spec::TaskSpecDraft;

    use super::*;

    fn spec(input: &str, files_per_job: Option<u32>, n_jobs: Option<u32>, command: &str) -> TaskSpec {
        TaskSpecDraft {
            name: "t".into(),
            command: command.into(),
            input_datasets: if input.is_empty() { vec![] } else { vec![input.into()] },
            files_per_job,
            n_jobs,
            output_dataset: "out".into(),
            ..Default::default()
        }
        .validate()
        .unwrap()
    }

    fn files(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("in._{i:06}")).collect()
    }

    #[test]
    fn files_per_job_with_remainder() {
        let plans = split(TaskId(7), &spec("in", Some(2), None, "cat {inputs} > {output}"), &files(5)).unwrap();
        let inputs: Vec<usize> = plans.iter().map(|p| p.inputs.len()).collect();
        assert_eq!(inputs, vec![2, 2, 1]);
        assert_eq!(plans[0].command, "cat in._000001 in._000002 > out._000001");
        assert_eq!(plans[2].outputs, vec!["out._000003".to_owned()]);
        assert_eq!(plans.iter().map(|p| p.index).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn generated_jobs_get_indices_and_task_id() {
        let plans =
            split(TaskId(9), &spec("", None, Some(3), "gen {index} {task_id} {job_id} > {output}"), &[]).unwrap();
        assert_eq!(plans.len(), 3);
        assert_eq!(plans[1].command, "gen 2 9 ${PANDA_JOB_ID} > out._000002");
        assert!(plans.iter().all(|p| p.inputs.is_empty()));
    }

    #[test]
    fn every_input_file_is_used_exactly_once() {
        for n in 1..20 {
            for per_job in 1..6 {
                let plans = split(TaskId(1), &spec("in", Some(per_job), None, "true"), &files(n)).unwrap();
                let used: Vec<String> = plans.iter().flat_map(|p| p.inputs.clone()).collect();
                assert_eq!(used, files(n));
                assert!(plans.iter().all(|p| p.inputs.len() <= per_job as usize && !p.inputs.is_empty()));
            }
        }
    }

    #[test]
    fn empty_input_is_an_error() {
        let error = split(TaskId(1), &spec("in", None, None, "true"), &[]).unwrap_err();
        assert_eq!(error, SplitError::EmptyInput { datasets: "in".into() });
    }
}
