//! Driven workflows: an empty workflow whose driver (the CWL runner) adds works while it runs
//! and closes it at the end. A work added here is a top-level task node like any other: it is
//! stored (node in the graph, instance row) in the transaction that adds it, waits for its
//! parents, is submitted by the submitter with the usual idempotency key, follows its task by
//! events, and is reloaded and reconciled after a restart. Only the workflow's end differs: the
//! planner never ends a driven workflow (the driver may add more); `close` does, or an abort.

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
        self.start(Graph { name, driven: true, ..Graph::default() }, user).await
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
                        let keys = plan::abort(&loaded.graph, &mut loaded.state);
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
        let Some(running) = running else { return Ok(()) };
        for task_id in running {
            if let Err(status) = self.backend.kill(task_id).await {
                warn!(task_id, %status, "could not kill a closed workflow's task");
            }
        }
        self.metrics.workflows_ended.get_or_create(&Ended { status: status.as_str() }).inc();
        info!(workflow_id, status = status.as_str(), reason, "driven workflow closed");
        Ok(())
    }
}
