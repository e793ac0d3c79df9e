//! Driven workflows: an empty workflow whose driver (the CWL runner) adds works while it runs
//! and closes it at the end. A work added here is a top-level task node like any other: it is
//! stored (node in the graph, instance row) in the transaction that adds it, waits for its
//! parents, is submitted by the submitter with the usual idempotency key, follows its task by
//! events, and is reloaded and reconciled after a restart. Only the workflow's end differs: the
//! planner never ends a driven workflow (the driver may add more); `close` does, or an abort.

use std::time::Instant;

use super::*;

/// What AddWork did.
#[derive(Debug, Clone, PartialEq)]
pub struct Added {
    /// The work as stored now.
    pub work: Work,
    /// False when the same key was added before with the same spec.
    pub created: bool,
}

impl Engine {
    /// Creates an empty driven workflow (running until its driver closes it).
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a bad name.
    #[instrument(skip_all, fields(%name))]
    pub async fn create_driven(&self, name: String, user: String) -> Result<u64, Error> {
        // Empty is fine here (the driver adds the works), so only the name is checked.
        if let Err(e) = panda_types::ids::check_name(&name, 100) {
            return Err(Error::InvalidArgument(vec![FieldError::new("name", e)]));
        }
        let workflow_id = self.start(Graph { name, driven: true, ..Graph::default() }, user).await?;
        self.lease_from(workflow_id, Instant::now(), true);
        Ok(workflow_id)
    }

    /// Starts the driver's lease at `now` (`replace`: a renewal; else only where none runs).
    pub(super) fn lease_from(&self, workflow_id: u64, now: Instant, replace: bool) {
        let mut leases = self.leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let until = now + self.driver_lease;
        if replace {
            leases.insert(workflow_id, until);
        } else {
            leases.entry(workflow_id).or_insert(until);
        }
    }

    fn lease_end(&self, workflow_id: u64) -> Option<Instant> {
        self.leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&workflow_id).copied()
    }

    fn drop_lease(&self, workflow_id: u64) {
        self.leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&workflow_id);
    }

    /// Renews the driver's lease of a running driven workflow; answers the lease length.
    ///
    /// # Errors
    /// NOT_FOUND; FAILED_PRECONDITION when it has ended (its lease lapsed, it was closed or
    /// aborted) or is not driven.
    #[instrument(skip_all, fields(workflow_id))]
    pub async fn renew_driver(&self, workflow_id: u64) -> Result<std::time::Duration, Error> {
        // Under the workflow's lock, so a lapse being handled is either before or after this.
        let slot = self.slot(workflow_id);
        let mut guard = slot.lock().await;
        if guard.is_none() {
            *guard = Some(self.load(workflow_id).await?);
        }
        let Some(loaded) = guard.as_ref() else { return Err(Error::NotFound { workflow_id }) };
        let status = loaded.workflow.status;
        if status.is_final() {
            return Err(precondition(workflow_id, status, "it has ended; there is no lease to renew"));
        }
        if !loaded.graph.driven {
            return Err(precondition(workflow_id, status, "it is not a driven workflow, so it has no driver lease"));
        }
        self.lease_from(workflow_id, Instant::now(), true);
        Ok(self.driver_lease)
    }

    /// Fails every driven workflow whose driver lease lapsed before `now` (the driver stopped
    /// renewing): as CloseWorkflow(FAILED), its running tasks are killed and its other works
    /// cancelled, with a reason naming the lapse. A workflow renewed meanwhile is left alone.
    /// Returns the workflows failed.
    ///
    /// # Errors
    /// Database failures (the lease stays, so the next sweep tries again).
    pub async fn expire_driver_leases(&self, now: Instant) -> Result<Vec<u64>, Error> {
        let lapsed: Vec<u64> = {
            let leases = self.leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            leases.iter().filter(|(_, until)| **until <= now).map(|(id, _)| *id).collect()
        };
        let mut failed = Vec::new();
        for workflow_id in lapsed {
            let reason = format!(
                "the driver's lease lapsed: no RenewDriver or AddWork for {}s (idds.driver_lease); the driver \
                 (e.g. cwl-runner) stopped or lost idds",
                self.driver_lease.as_secs()
            );
            match self.close_inner(workflow_id, WorkflowStatus::Failed, &reason, Some(now)).await {
                Ok(true) => {
                    warn!(workflow_id, %reason, "driven workflow failed");
                    failed.push(workflow_id);
                }
                Ok(false) => {}
                // Ended otherwise (aborted) or gone: nothing to fail.
                Err(Error::FailedPrecondition { .. } | Error::NotFound { .. }) => self.drop_lease(workflow_id),
                Err(error) => return Err(error),
            }
        }
        Ok(failed)
    }

    /// Adds a work to a driven workflow (idempotent on `key`).
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming each bad field (key, parents, task); NOT_FOUND; FAILED_PRECONDITION
    /// when the workflow is not driven or has ended; ALREADY_EXISTS when the key names another work.
    #[instrument(skip_all, fields(workflow_id, %key))]
    pub async fn add_work(
        &self,
        workflow_id: u64,
        key: String,
        parents: Vec<String>,
        task: Option<server::TaskSpec>,
    ) -> Result<Added, Error> {
        let mut errors = Vec::new();
        if let Err(e) = panda_types::ids::check_name(&key, 100) {
            errors.push(FieldError::new("key", e));
        }
        let mut seen = BTreeSet::new();
        for (i, parent) in parents.iter().enumerate() {
            if parent == &key {
                errors.push(FieldError::new(format!("parents[{i}]"), "a work cannot wait for itself"));
            } else if !seen.insert(parent.as_str()) {
                errors.push(FieldError::new(format!("parents[{i}]"), format!("{parent:?} is named twice")));
            }
        }
        let Some(task) = task else {
            errors.push(FieldError::new("task", "is required"));
            return Err(Error::InvalidArgument(errors));
        };
        let template = template_from_wire(task, &key);
        if !errors.is_empty() {
            return Err(Error::InvalidArgument(errors));
        }
        let mut node = Node::task(&key, template);
        node.after = parents.iter().map(|p| Dependency { node: p.clone(), level: DependencyLevel::Task }).collect();
        let grew = std::sync::atomic::AtomicBool::new(false);
        let created = self
            .mutate(
                workflow_id,
                None,
                |loaded| {
                    if let Some(existing) = loaded.graph.node(&key) {
                        // The same request again (a driver that retried) answers the same work.
                        if existing.kind == node.kind && existing.after == node.after {
                            return Ok(false);
                        }
                        return Err(Error::WorkExists { workflow_id, key: key.clone() });
                    }
                    let status = loaded.workflow.status;
                    if status.is_final() {
                        return Err(precondition(workflow_id, status, "works can no longer be added"));
                    }
                    if !loaded.graph.driven {
                        return Err(precondition(
                            workflow_id,
                            status,
                            "it is not a driven workflow (made by CreateDrivenWorkflow); works are added only to those",
                        ));
                    }
                    if loaded.graph.nodes.len() >= graph::validate::MAX_NODES {
                        return Err(Error::InvalidArgument(vec![FieldError::new(
                            "key",
                            format!(
                                "workflow {workflow_id} has {} works, the most a workflow may have",
                                loaded.graph.nodes.len()
                            ),
                        )]));
                    }
                    let mut errors = Vec::new();
                    for (i, parent) in parents.iter().enumerate() {
                        if loaded.graph.node(parent).is_none() {
                            errors.push(FieldError::new(
                                format!("parents[{i}]"),
                                format!(
                                    "workflow {workflow_id} has no work {parent:?} (add parents before their children)"
                                ),
                            ));
                        }
                    }
                    if let NodeKind::Task(template) = &node.kind {
                        let draft = panda_types::spec::TaskSpecDraft::from(wire_spec(
                            TaskTemplate::clone(template),
                            &loaded.workflow.user,
                            false,
                        ));
                        if let Err(problems) = draft.validate() {
                            errors.extend(problems);
                        }
                    }
                    if !errors.is_empty() {
                        return Err(Error::InvalidArgument(errors));
                    }
                    let graph = Arc::make_mut(&mut loaded.graph);
                    graph.nodes.push(node);
                    loaded.index = Arc::new(plan::Index::new(&loaded.graph));
                    loaded.state.add_waiting(&key);
                    grew.store(true, std::sync::atomic::Ordering::Relaxed);
                    Ok(true)
                },
                async |txn, loaded| {
                    // Only when the graph changed (a repeated AddWork writes nothing).
                    if grew.load(std::sync::atomic::Ordering::Relaxed) {
                        let json = serde_json::to_string(&*loaded.graph).map_err(|e| DbErr::Custom(e.to_string()))?;
                        store::set_graph(txn, workflow_id, json).await?;
                    }
                    Ok(())
                },
            )
            .await?
            .unwrap_or(false);
        let work = store::work_by_key(&self.db, workflow_id, &key)
            .await?
            .ok_or_else(|| Error::Corrupt { workflow_id, reason: format!("work {key} was not stored") })?;
        if created {
            info!(workflow_id, work = %key, "work added by the driver");
        }
        // The driver is alive.
        if self.lease_end(workflow_id).is_some() {
            self.lease_from(workflow_id, Instant::now(), true);
        }
        Ok(Added { work, created })
    }

    /// Ends a driven workflow: `Finished` when every work has ended; `Failed` kills the running
    /// tasks and cancels what has not ended. Closing again with the same state does nothing.
    /// After this the workflow is a plain one (a retry ends it by the planner's rules).
    ///
    /// # Errors
    /// INVALID_ARGUMENT for another state; NOT_FOUND; FAILED_PRECONDITION when it is not driven,
    /// has ended otherwise, or (finished) still has works that have not ended.
    #[instrument(skip_all, fields(workflow_id))]
    pub async fn close(&self, workflow_id: u64, status: WorkflowStatus, reason: &str) -> Result<(), Error> {
        self.close_inner(workflow_id, status, reason, None).await.map(|_| ())
    }

    /// [`Engine::close`]; with `lapsed_at`, only if the driver lease still ends by then (not
    /// renewed meanwhile). Answers whether this call ended the workflow.
    async fn close_inner(
        &self,
        workflow_id: u64,
        status: WorkflowStatus,
        reason: &str,
        lapsed_at: Option<Instant>,
    ) -> Result<bool, Error> {
        if !matches!(status, WorkflowStatus::Finished | WorkflowStatus::Failed) {
            return Err(Error::InvalidArgument(vec![FieldError::new(
                "status",
                format!("must be finished or failed (got {})", status.as_str()),
            )]));
        }
        let running = self
            .mutate(
                workflow_id,
                None,
                |loaded| {
                    let current = loaded.workflow.status;
                    if current == status && !loaded.graph.driven {
                        return Ok(None);
                    }
                    if let Some(now) = lapsed_at
                        && self.lease_end(workflow_id).is_none_or(|until| until > now)
                    {
                        // Renewed (or closed) since the sweep looked.
                        return Ok(None);
                    }
                    if current.is_final() {
                        return Err(precondition(workflow_id, current, "it has ended already"));
                    }
                    if !loaded.graph.driven {
                        return Err(precondition(
                            workflow_id,
                            current,
                            "only driven workflows are closed by their driver",
                        ));
                    }
                    let mut running = Vec::new();
                    if status == WorkflowStatus::Finished {
                        if loaded.state.works.values().any(|i| !i.status.is_final()) {
                            return Err(precondition(
                                workflow_id,
                                current,
                                "some of its works have not ended; close it as failed to stop them",
                            ));
                        }
                    } else {
                        let why = if reason.is_empty() { "closed as failed by its driver" } else { reason };
                        let keys = plan::abort_because(&loaded.graph, &mut loaded.state, why);
                        running = keys.iter().filter_map(|k| loaded.tasks.get(k).and_then(|(t, _)| *t)).collect();
                    }
                    Arc::make_mut(&mut loaded.graph).driven = false;
                    loaded.workflow.status = status;
                    Ok(Some(running))
                },
                async |txn, loaded| {
                    if loaded.workflow.status == status {
                        store::set_workflow_status(txn, workflow_id, status).await?;
                        let json = serde_json::to_string(&*loaded.graph).map_err(|e| DbErr::Custom(e.to_string()))?;
                        store::set_graph(txn, workflow_id, json).await?;
                    }
                    Ok(())
                },
            )
            .await?
            .flatten();
        let Some(running) = running else { return Ok(false) };
        self.drop_lease(workflow_id);
        for task_id in running {
            if let Err(status) = self.backend.kill(task_id).await {
                warn!(task_id, %status, "could not kill a closed workflow's task");
            }
        }
        self.metrics.workflows_ended.get_or_create(&Ended { status: status.as_str() }).inc();
        info!(workflow_id, status = status.as_str(), reason, "driven workflow closed");
        Ok(true)
    }
}
