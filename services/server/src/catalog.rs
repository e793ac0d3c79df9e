//! The data catalog and the brokerage record: registering input datasets (files with size,
//! events, checksum and replica sites) and keeping JEDI's latest brokerage explanation per task.
//! Use cases own their transactions, like `service.rs`.

use std::collections::{BTreeSet, HashMap};

use chrono::Utc;
use panda_types::{FieldError, TaskId};
use sea_orm::{DatabaseConnection, TransactionTrait};

use crate::error::{Error, Result};
use crate::model::Dataset;
use crate::store::{CatalogEntry, Store};

/// Most files one registration may carry.
pub const MAX_FILES_PER_DATASET: usize = 1_000_000;

/// The catalog use cases.
#[derive(Clone)]
pub struct Catalog {
    db: DatabaseConnection,
    store: Store,
}

impl Catalog {
    /// Over a migrated database.
    pub fn new(db: DatabaseConnection) -> Self {
        let store = Store::new(db.get_database_backend());
        Self { db, store }
    }

    /// Registers a closed input dataset with its files, all or nothing.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming each bad field; ALREADY_EXISTS for a taken dataset name or LFN.
    pub async fn register_dataset(&self, name: &str, files: Vec<CatalogEntry>) -> Result<()> {
        let mut errors = Vec::new();
        if let Err(e) = panda_types::ids::check_name(name, 255) {
            errors.push(FieldError::new("name", e));
        }
        if files.is_empty() {
            errors.push(FieldError::new("files", "must list at least one file"));
        } else if files.len() > MAX_FILES_PER_DATASET {
            errors.push(FieldError::new("files", format!("must list at most {MAX_FILES_PER_DATASET} files")));
        }
        let mut seen = BTreeSet::new();
        for (i, f) in files.iter().enumerate() {
            if let Err(e) = panda_types::ids::check_name(&f.lfn, 255) {
                errors.push(FieldError::new(format!("files[{i}].lfn"), e));
            } else if !seen.insert(f.lfn.as_str()) {
                errors.push(FieldError::new(format!("files[{i}].lfn"), format!("{:?} is listed twice", f.lfn)));
            }
            for (j, site) in f.replicas.iter().enumerate() {
                if let Err(e) = panda_types::ids::check_name(site, 200) {
                    errors.push(FieldError::new(format!("files[{i}].replicas[{j}]"), e));
                }
            }
        }
        if !errors.is_empty() {
            return Err(Error::InvalidArgument(errors));
        }
        let txn = self.db.begin().await?;
        if self.store.find_dataset(&txn, name).await?.is_some() {
            return Err(Error::DatasetExists { name: name.to_owned() });
        }
        let lfns: Vec<String> = files.iter().map(|f| f.lfn.clone()).collect();
        let known = self.store.files_by_lfn(&txn, &lfns).await?;
        if let Some(i) = lfns.iter().position(|l| known.contains_key(l)) {
            return Err(Error::invalid(format!("files[{i}].lfn"), format!("{:?} is already in the catalog", lfns[i])));
        }
        self.store.register_dataset(&txn, name, &files, Utc::now()).await?;
        txn.commit().await?;
        tracing::info!(dataset = name, files = files.len(), "dataset registered");
        Ok(())
    }

    /// A dataset with its files, and each file's events and replica sites by LFN.
    ///
    /// # Errors
    /// NOT_FOUND.
    pub async fn dataset_contents(&self, name: &str) -> Result<(Dataset, HashMap<String, (u64, Vec<String>)>)> {
        let dataset = self
            .store
            .get_dataset(&self.db, name)
            .await?
            .ok_or_else(|| Error::DatasetNotFound { name: name.to_owned() })?;
        let (id, _, _) = self
            .store
            .find_dataset(&self.db, name)
            .await?
            .ok_or_else(|| Error::DatasetNotFound { name: name.to_owned() })?;
        let details = self.store.file_details(&self.db, id).await?;
        Ok((dataset, details))
    }

    /// Records a task's latest brokerage explanation (encoded by the caller).
    ///
    /// # Errors
    /// NOT_FOUND for an unknown task.
    pub async fn record_brokerage(&self, task_id: TaskId, pending: bool, summary: &str, body: Vec<u8>) -> Result<()> {
        if self.store.get_task(&self.db, task_id).await?.is_none() {
            return Err(Error::TaskNotFound { task_id });
        }
        self.store.save_brokerage(&self.db, task_id, pending, summary, body, Utc::now()).await
    }

    /// A task's latest brokerage explanation, encoded.
    ///
    /// # Errors
    /// NOT_FOUND for an unknown task or one not brokered yet.
    pub async fn brokerage(&self, task_id: TaskId) -> Result<Vec<u8>> {
        if let Some(body) = self.store.brokerage(&self.db, task_id).await? {
            return Ok(body);
        }
        if self.store.get_task(&self.db, task_id).await?.is_none() {
            return Err(Error::TaskNotFound { task_id });
        }
        Err(Error::BrokerageNotFound { task_id })
    }
}
