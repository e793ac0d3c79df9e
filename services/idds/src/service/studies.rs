//! HPO studies in the engine: a study created by a workflow work (`hpo:` + `task:`) or through
//! HpoService. Points of a study with a task are evaluated as one-job tasks (parameters as
//! `%{name}` in the command and `HPO_<name>` in the environment; the loss is the job's
//! `panda-output loss=<number>` line); the submitter drives such studies iteration by iteration.
//! Studies without a task are driven from outside with AskPoints/TellLoss. The rules (what to
//! ask, when to stop) are the pure `crate::hpo::study`; here is storage and submission.

use crate::hpo::plugin::{self, Request};
use crate::hpo::study::{self, MAX_POINTS_PER_ITERATION};
use crate::hpo::{HpoError, Observation, Point, PointStatus, StudyEnd, StudySpec};
use crate::hpo_store::{self, NewStudy, StoredPoint, Study, StudyStatus};

use super::*;

/// A study with its points.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyView {
    /// The study.
    pub study: Study,
    /// Its points in order.
    pub points: Vec<StoredPoint>,
}

impl StudyView {
    /// The point with the lowest loss (the earliest among equals).
    pub fn best(&self) -> Option<&StoredPoint> {
        best_of(&self.points)
    }
}

fn best_of(points: &[StoredPoint]) -> Option<&StoredPoint> {
    let views: Vec<_> = points.iter().map(StoredPoint::view).collect();
    let best = study::best(&views)?;
    points.iter().find(|p| p.seq == best.seq)
}

fn field_errors(error: HpoError) -> Vec<FieldError> {
    match error {
        HpoError::Invalid(problems) => problems.into_iter().map(|(f, m)| FieldError::new(f, m)).collect(),
        other => vec![FieldError::new("study", other.to_string())],
    }
}

fn study_end_status(end: StudyEnd) -> (StudyStatus, WorkStatus) {
    match end {
        StudyEnd::Finished => (StudyStatus::Finished, WorkStatus::Finished),
        StudyEnd::Failed => (StudyStatus::Failed, WorkStatus::Failed),
    }
}

/// A work's outputs when its study ends: the best loss, point and parameters, the count.
fn study_outputs(study_id: u64, points: &[StoredPoint]) -> BTreeMap<String, Value> {
    let mut outputs = BTreeMap::from([
        ("study_id".to_owned(), Value::Int(study_id as i64)),
        ("points".to_owned(), Value::Int(points.len() as i64)),
        (
            "points_failed".to_owned(),
            Value::Int(points.iter().filter(|p| p.status == PointStatus::Failed).count() as i64),
        ),
    ]);
    if let Some(best) = best_of(points) {
        outputs.insert("best_loss".into(), Value::Float(best.loss.unwrap_or(f64::NAN)));
        outputs.insert("best_seq".into(), Value::Int(i64::from(best.seq)));
        let json = serde_json::Value::Object(best.params.clone().into_iter().collect());
        outputs.insert("best_point".into(), Value::from_json(&json));
        for (name, value) in &best.params {
            outputs.insert(format!("best.{name}"), Value::from_json(value));
        }
    }
    outputs
}

impl Engine {
    /// Checks a study's settings and that its plug-in is configured; problems name
    /// `<prefix>.<field>`.
    pub(super) fn check_study(&self, spec: &StudySpec, prefix: &str) -> Result<(), Vec<FieldError>> {
        spec.validate(prefix).map_err(field_errors)?;
        if let crate::hpo::OptimizerSpec::Plugin(name) = &spec.optimizer
            && !self.plugins.contains_key(name)
        {
            let configured = self.plugins.keys().cloned().collect::<Vec<_>>().join(", ");
            return Err(vec![FieldError::new(
                format!("{prefix}.optimizer.plugin"),
                format!("no plug-in named {name:?} is configured in [idds.hpo.plugins] (configured: {configured})"),
            )]);
        }
        Ok(())
    }

    /// Creates a study. With a task, idds evaluates each point as a one-job task of it; without,
    /// points are asked for and told from outside.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming each bad field (settings, space, task).
    pub async fn create_study(
        &self,
        name: &str,
        user: &str,
        spec: StudySpec,
        task: Option<TaskTemplate>,
    ) -> Result<u64, Error> {
        self.check_study(&spec, "study").map_err(Error::InvalidStudy)?;
        if name.is_empty() || name.len() > 200 {
            return Err(Error::InvalidStudy(vec![FieldError::new("name", "must be 1 to 200 characters")]));
        }
        let user = if user.is_empty() { "anonymous" } else { user };
        let task_json = match task {
            Some(mut task) => {
                if task.input_datasets.is_empty() && task.n_jobs.is_none() {
                    task.n_jobs = Some(1);
                }
                let graph =
                    Graph { name: name.to_owned(), nodes: vec![Node::task(name, task.clone())], ..Graph::default() };
                check_tasks(&graph, user).map_err(|e| match e {
                    Error::InvalidArgument(problems) => Error::InvalidStudy(
                        problems
                            .into_iter()
                            .map(|p| {
                                FieldError::new(p.field.replacen(&format!("nodes.{name}."), "task.", 1), p.message)
                            })
                            .collect(),
                    ),
                    other => other,
                })?;
                serde_json::to_string(&task).map_err(|e| DbErr::Custom(e.to_string()))?
            }
            None => String::new(),
        };
        let driven = !task_json.is_empty();
        let new = NewStudy {
            name: name.to_owned(),
            user: user.to_owned(),
            workflow_id: None,
            work_key: String::new(),
            spec,
            task_json,
        };
        let study = hpo_store::insert_study(&self.db, new).await?;
        info!(study_id = study.id, driven, "study created");
        if driven {
            self.wake.notify_one();
        }
        Ok(study.id)
    }

    /// A study with its points.
    ///
    /// # Errors
    /// NOT_FOUND.
    pub async fn get_study(&self, study_id: u64) -> Result<StudyView, Error> {
        let study = hpo_store::get_study(&self.db, study_id).await?.ok_or(Error::StudyNotFound { study_id })?;
        let points = hpo_store::points_of(&self.db, study_id).await?;
        Ok(StudyView { study, points })
    }

    /// Newest studies with their points.
    ///
    /// # Errors
    /// Database failures.
    pub async fn list_studies(&self, limit: u64) -> Result<Vec<StudyView>, Error> {
        let mut out = Vec::new();
        for study in hpo_store::list_studies(&self.db, limit).await? {
            let points = hpo_store::points_of(&self.db, study.id).await?;
            out.push(StudyView { study, points });
        }
        Ok(out)
    }

    /// Proposes up to `n` new points (0: the study's points per iteration) for a study
    /// evaluated from outside; they are `running` until told. An empty answer means the study is
    /// over (it ends once no point is outstanding) or waits for outstanding points to stop early.
    ///
    /// # Errors
    /// NOT_FOUND; FAILED_PRECONDITION for a study idds evaluates itself or one that ended;
    /// UNAVAILABLE when its plug-in fails.
    pub async fn ask_points(&self, study_id: u64, n: u32) -> Result<Vec<StoredPoint>, Error> {
        if n > MAX_POINTS_PER_ITERATION {
            return Err(Error::InvalidStudy(vec![FieldError::new(
                "n",
                format!("must be at most {MAX_POINTS_PER_ITERATION} (got {n})"),
            )]));
        }
        let _lock = self.hpo_lock.lock().await;
        let study = self.external_study(study_id).await?;
        let points = hpo_store::points_of(&self.db, study_id).await?;
        let views: Vec<_> = points.iter().map(StoredPoint::view).collect();
        let outstanding = views.iter().any(|p| !p.status.is_final());
        let n = if n == 0 { study.spec.points_per_iteration } else { n };
        let remaining = study.spec.max_points.saturating_sub(points.len() as u32);
        if study::early_stop(&study.spec, &views).is_some() || remaining == 0 {
            if !outstanding && let study::Decision::End { end, reason } = study::decide(&study.spec, &views) {
                hpo_store::end_study(&self.db, study_id, study_end_status(end).0, &reason).await?;
                info!(study_id, reason, "study ended");
            }
            return Ok(Vec::new());
        }
        let new = self.propose(&study, &points, n.min(remaining)).await.map_err(Error::Optimizer)?;
        if new.is_empty() {
            if !outstanding {
                let end = if study::best(&views).is_some() { StudyEnd::Finished } else { StudyEnd::Failed };
                let reason = "the optimizer proposed no more points";
                hpo_store::end_study(&self.db, study_id, study_end_status(end).0, reason).await?;
            }
            return Ok(Vec::new());
        }
        let iteration = points.iter().map(|p| p.iteration).max().unwrap_or(0) + 1;
        let first = points.len() as u32 + 1;
        hpo_store::insert_points(&self.db, study_id, iteration, first, &new, PointStatus::Running).await?;
        let all = hpo_store::points_of(&self.db, study_id).await?;
        Ok(all.into_iter().filter(|p| p.seq >= first).collect())
    }

    /// Records the loss of a point of a study evaluated from outside (`None`: its evaluation
    /// failed, with `reason`); the study ends in the same transaction when its rules say so.
    /// Returns the study's state after.
    ///
    /// # Errors
    /// NOT_FOUND; INVALID_ARGUMENT for an unknown point or a non-finite loss;
    /// FAILED_PRECONDITION when the point already ended.
    pub async fn tell_loss(
        &self,
        study_id: u64,
        seq: u32,
        loss: Option<f64>,
        reason: &str,
    ) -> Result<StudyStatus, Error> {
        if loss.is_some_and(|l| !l.is_finite()) {
            return Err(Error::InvalidStudy(vec![FieldError::new("loss", "must be a finite number")]));
        }
        let _lock = self.hpo_lock.lock().await;
        let study = self.external_study(study_id).await?;
        let mut points = hpo_store::points_of(&self.db, study_id).await?;
        let Some(point) = points.iter_mut().find(|p| p.seq == seq) else {
            return Err(Error::InvalidStudy(vec![FieldError::new(
                "point",
                format!("study {study_id} has no point {seq} (it has {})", points.len()),
            )]));
        };
        if point.status.is_final() {
            return Err(Error::StudyPrecondition {
                study_id,
                message: format!("point {seq} already ended {}", point.status.as_str()),
            });
        }
        let (status, reason) = match loss {
            Some(_) => (PointStatus::Done, String::new()),
            None if reason.is_empty() => (PointStatus::Failed, "its evaluation failed".to_owned()),
            None => (PointStatus::Failed, reason.to_owned()),
        };
        point.status = status;
        point.loss = loss;
        let point_id = point.id;
        let views: Vec<_> = points.iter().map(StoredPoint::view).collect();
        let txn = self.db.begin().await?;
        hpo_store::end_point(&txn, point_id, status, loss, &reason).await?;
        let mut now = StudyStatus::Running;
        if let study::Decision::End { end, reason } = study::decide(&study.spec, &views) {
            // Outside evaluation asks at its own pace: only an early stop or max_points ends it here.
            let all_asked = points.len() as u32 >= study.spec.max_points;
            if all_asked || study::early_stop(&study.spec, &views).is_some() {
                now = study_end_status(end).0;
                hpo_store::end_study(&txn, study_id, now, &reason).await?;
                info!(study_id, reason, "study ended");
            }
        }
        txn.commit().await?;
        Ok(now)
    }

    async fn external_study(&self, study_id: u64) -> Result<Study, Error> {
        let study = hpo_store::get_study(&self.db, study_id).await?.ok_or(Error::StudyNotFound { study_id })?;
        if !study.task_json.is_empty() {
            return Err(Error::StudyPrecondition {
                study_id,
                message: "its points are evaluated by idds as tasks; AskPoints and TellLoss are for studies \
                          created without a task"
                    .into(),
            });
        }
        if study.status != StudyStatus::Running {
            return Err(Error::StudyPrecondition { study_id, message: format!("it is {}", study.status.as_str()) });
        }
        Ok(study)
    }

    /// New points from the study's optimizer, given every point so far.
    async fn propose(&self, study: &Study, points: &[StoredPoint], n: u32) -> Result<Vec<Point>, HpoError> {
        let spec = &study.spec;
        if let Some(optimizer) = crate::hpo::builtin(&spec.optimizer) {
            let history: Vec<Observation> = points
                .iter()
                .map(|p| Observation {
                    params: p.params.clone(),
                    loss: if p.status == PointStatus::Done { p.loss } else { None },
                })
                .collect();
            return Ok(optimizer.ask(&spec.space, &history, n as usize, spec.seed));
        }
        let crate::hpo::OptimizerSpec::Plugin(name) = &spec.optimizer else { return Ok(Vec::new()) };
        let config = self.plugins.get(name).ok_or_else(|| HpoError::Plugin {
            plugin: name.clone(),
            message: "is not configured in [idds.hpo.plugins] (any more)".into(),
        })?;
        let history: Vec<(Point, PointStatus, Option<f64>)> =
            points.iter().map(|p| (p.params.clone(), p.status, p.loss)).collect();
        plugin::run(name, config, &Request::new(&spec.space, n, spec.seed, &history)).await
    }

    /// Drives every running study that idds evaluates: submits proposed points, asks for the
    /// next iteration, ends studies. Returns whether a submission was deferred (server
    /// unavailable).
    ///
    /// # Errors
    /// Database failures.
    pub async fn drive_studies(&self) -> Result<bool, Error> {
        let _lock = self.hpo_lock.lock().await;
        let mut deferred = false;
        for study in hpo_store::running_studies(&self.db).await? {
            if study.task_json.is_empty() {
                continue;
            }
            deferred |= self.drive(study).await?;
        }
        Ok(deferred)
    }

    async fn drive(&self, study: Study) -> Result<bool, Error> {
        let study_id = study.id;
        if let Some(workflow_id) = study.workflow_id {
            let workflow = store::get_workflow(&self.db, workflow_id).await?.ok_or(Error::NotFound { workflow_id })?;
            match workflow.status {
                WorkflowStatus::Running => {}
                // Running points go on; nothing new is proposed until it resumes.
                WorkflowStatus::Suspended => return Ok(false),
                other => {
                    self.cancel_study(&study, &format!("workflow {workflow_id} is {}", other.as_str())).await?;
                    return Ok(false);
                }
            }
        }
        let template: TaskTemplate = serde_json::from_str(&study.task_json)
            .map_err(|e| Error::Corrupt { workflow_id: study.workflow_id.unwrap_or(0), reason: e.to_string() })?;
        loop {
            let points = hpo_store::points_of(&self.db, study_id).await?;
            for point in points.iter().filter(|p| p.status == PointStatus::Pending) {
                let spec = point_task(&study, &template, point);
                let key = format!("idds-hpo-{study_id}-{}", point.seq);
                match self.backend.submit(spec, key).await {
                    Ok(task_id) => {
                        hpo_store::set_point_task(&self.db, point.id, task_id).await?;
                        info!(study_id, point = point.seq, task_id, "point submitted");
                        self.metrics.works_submitted.inc();
                    }
                    Err(status) if panda_client::is_transient(&status, true) => {
                        warn!(study_id, point = point.seq, %status, "server unavailable; will submit later");
                        return Ok(true);
                    }
                    Err(status) => {
                        let reason = format!("the server refused the task: {}", status.message());
                        hpo_store::end_point(&self.db, point.id, PointStatus::Failed, None, &reason).await?;
                    }
                }
            }
            let points = hpo_store::points_of(&self.db, study_id).await?;
            let views: Vec<_> = points.iter().map(StoredPoint::view).collect();
            match study::decide(&study.spec, &views) {
                study::Decision::Wait => return Ok(false),
                study::Decision::End { end, reason } => {
                    self.finish_study(&study, &points, end, &reason).await?;
                    return Ok(false);
                }
                study::Decision::Ask(n) => {
                    let iteration = points.iter().map(|p| p.iteration).max().unwrap_or(0) + 1;
                    match self.propose(&study, &points, n).await {
                        Ok(new) if new.is_empty() => {
                            let end = if study::best(&views).is_some() { StudyEnd::Finished } else { StudyEnd::Failed };
                            self.finish_study(&study, &points, end, "the optimizer proposed no more points").await?;
                            return Ok(false);
                        }
                        Ok(new) => {
                            let first = points.len() as u32 + 1;
                            hpo_store::insert_points(&self.db, study_id, iteration, first, &new, PointStatus::Pending)
                                .await?;
                            info!(study_id, iteration, points = new.len(), "iteration proposed");
                        }
                        Err(error) => {
                            warn!(study_id, %error, "optimizer failed; the study fails");
                            let reason = format!("the optimizer failed: {error}");
                            self.finish_study(&study, &points, StudyEnd::Failed, &reason).await?;
                            return Ok(false);
                        }
                    }
                }
            }
        }
    }

    /// Ends a study and, for a work's study, the work with the study's outputs, in one
    /// transaction.
    async fn finish_study(
        &self,
        study: &Study,
        points: &[StoredPoint],
        end: StudyEnd,
        reason: &str,
    ) -> Result<(), Error> {
        let (study_status, work_status) = study_end_status(end);
        info!(study_id = study.id, status = study_status.as_str(), reason, "study ended");
        let Some(workflow_id) = study.workflow_id else {
            hpo_store::end_study(&self.db, study.id, study_status, reason).await?;
            return Ok(());
        };
        let outputs = study_outputs(study.id, points);
        let key = study.work_key.clone();
        let reason = format!("study {}: {reason}", study.id);
        let study_id = study.id;
        let stored_reason = reason.clone();
        self.mutate(
            workflow_id,
            None,
            |loaded| {
                if loaded.state.works.get(&key).map(|i| i.status) == Some(WorkStatus::Submitted) {
                    loaded.state.set_outputs(&key, outputs);
                    loaded.state.set_status(&key, work_status, reason);
                }
                Ok(())
            },
            async move |txn, _| Ok(hpo_store::end_study(txn, study_id, study_status, &stored_reason).await?),
        )
        .await?;
        Ok(())
    }

    /// Ends a study whose workflow ended or was aborted: kills its running tasks, fails its
    /// unfinished points.
    async fn cancel_study(&self, study: &Study, reason: &str) -> Result<(), Error> {
        let points = hpo_store::points_of(&self.db, study.id).await?;
        for point in points.iter().filter(|p| !p.status.is_final()) {
            if let Some(task_id) = point.task_id
                && let Err(status) = self.backend.kill(task_id).await
            {
                warn!(task_id, %status, "could not kill a cancelled study's task");
            }
        }
        let txn = self.db.begin().await?;
        for point in points.iter().filter(|p| !p.status.is_final()) {
            hpo_store::end_point(&txn, point.id, PointStatus::Failed, None, "study cancelled").await?;
        }
        hpo_store::end_study(&txn, study.id, StudyStatus::Cancelled, reason).await?;
        txn.commit().await?;
        info!(study_id = study.id, reason, "study cancelled");
        Ok(())
    }

    /// Starts the study of a ready `hpo` work (true), or says the work is not one (false).
    pub(super) async fn start_work_study(&self, work: &Work) -> Result<bool, Error> {
        let found = {
            let slot = self.slot(work.workflow_id);
            let mut guard = slot.lock().await;
            if guard.is_none() {
                *guard = Some(self.load(work.workflow_id).await?);
            }
            let loaded = guard.as_ref().expect("loaded above");
            let Some((node, params)) = plan::resolve(&loaded.graph, &loaded.state, &work.key) else { return Ok(false) };
            let (NodeKind::Task(template), Some(spec)) = (&node.kind, &node.hpo) else { return Ok(false) };
            if loaded.workflow.status != WorkflowStatus::Running
                || loaded.state.works.get(&work.key).map(|i| i.status) != Some(WorkStatus::Ready)
            {
                return Ok(true);
            }
            let mut task = plan::render_task(template, &params, &work.key);
            scope_datasets(&mut task, &loaded.graph, &loaded.workflow, &work.key);
            (StudySpec::clone(spec), task, loaded.workflow.user.clone())
        };
        let (spec, task, user) = found;
        let new = NewStudy {
            name: work.key.clone(),
            user,
            workflow_id: Some(work.workflow_id),
            work_key: work.key.clone(),
            spec,
            task_json: serde_json::to_string(&task).map_err(|e| DbErr::Custom(e.to_string()))?,
        };
        let key = work.key.clone();
        self.mutate(
            work.workflow_id,
            None,
            |loaded| {
                if loaded.state.works.get(&key).map(|i| i.status) == Some(WorkStatus::Ready) {
                    loaded.state.set_status(&key, WorkStatus::Submitted, "study running");
                }
                Ok(())
            },
            async move |txn, _| {
                let study = hpo_store::insert_study(txn, new).await?;
                info!(study_id = study.id, workflow_id = study.workflow_id, work = %study.work_key, "study started");
                Ok(())
            },
        )
        .await?;
        Ok(true)
    }

    /// Applies a point task's new state: a final one ends the point (done with the loss its job
    /// printed, or failed), once per event.
    pub(super) async fn on_point_task(
        &self,
        task_id: u64,
        task_status: TaskStatus,
        event_id: Option<uuid::Uuid>,
    ) -> Result<Handled, Error> {
        let Some(end) = WorkStatus::from_task_status(task_status) else { return Ok(Handled::Ignored) };
        let _lock = self.hpo_lock.lock().await;
        let Some(point) = hpo_store::point_by_task(&self.db, task_id).await? else { return Ok(Handled::Ignored) };
        if point.status.is_final() {
            return Ok(Handled::Ignored);
        }
        let (status, loss, reason) = if end == WorkStatus::Finished {
            let values = self
                .backend
                .produced_values(task_id)
                .await
                .map_err(|status| Error::Server { call: "ReadJobLog", status })?;
            match values.get("loss").and_then(Value::as_f64) {
                Some(loss) if loss.is_finite() => (PointStatus::Done, Some(loss), String::new()),
                Some(loss) => {
                    (PointStatus::Failed, None, format!("its job printed a loss that is not finite ({loss})"))
                }
                None => (PointStatus::Failed, None, "its job printed no `panda-output loss=<number>` line".to_owned()),
            }
        } else {
            (PointStatus::Failed, None, format!("task {task_id} {}", task_status.as_str()))
        };
        let txn = self.db.begin().await?;
        if let Some(event_id) = event_id
            && !panda_bus::idempotency::first_delivery(&txn, CONSUMER, event_id).await?
        {
            return Ok(Handled::Ignored);
        }
        let changed = hpo_store::end_point(&txn, point.id, status, loss, &reason).await?;
        txn.commit().await?;
        info!(study_id = point.study_id, point = point.seq, task_id, status = status.as_str(), ?loss, "point ended");
        self.wake.notify_one();
        Ok(if changed { Handled::Applied } else { Handled::Ignored })
    }

    /// After a restart: the state of every running point's task (events may have been missed).
    pub(super) async fn reconcile_points(&self) -> Result<(), Error> {
        for point in hpo_store::running_points(&self.db).await? {
            let Some(task_id) = point.task_id else { continue };
            match self.backend.task_info(task_id).await {
                Ok(info) => {
                    self.on_point_task(task_id, info.status, None).await?;
                }
                Err(status) => warn!(task_id, %status, "could not reconcile a point's task"),
            }
        }
        Ok(())
    }
}

/// The one-job task evaluating a point: `%{name}` placeholders take the point's values, and the
/// environment carries `HPO_<name>`, `HPO_POINT` (JSON), `HPO_STUDY_ID` and `HPO_POINT_SEQ`.
fn point_task(study: &Study, template: &TaskTemplate, point: &StoredPoint) -> server::TaskSpec {
    let params: BTreeMap<String, Value> = point.params.iter().map(|(k, v)| (k.clone(), Value::from_json(v))).collect();
    let mut task = plan::render_task(template, &params, "");
    for (name, value) in &params {
        task.environment.insert(format!("HPO_{name}"), value.to_text());
    }
    let json = serde_json::Value::Object(point.params.clone().into_iter().collect());
    task.environment.insert("HPO_POINT".into(), json.to_string());
    task.environment.insert("HPO_STUDY_ID".into(), study.id.to_string());
    task.environment.insert("HPO_POINT_SEQ".into(), point.seq.to_string());
    task.name = format!("{}.p{}", task.name, point.seq);
    if task.input_datasets.is_empty() {
        task.n_jobs = Some(1);
    }
    if !task.output_dataset.is_empty() {
        task.output_dataset = format!("{}.hpo{}.p{}", task.output_dataset, study.id, point.seq);
    }
    wire_spec(task, &study.user, false)
}
