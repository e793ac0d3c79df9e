//! The transactional outbox: events are written to the `outbox` table in the same transaction as
//! the state change they announce ([`append`]), and a relay ([`run_relay`]) publishes them after
//! the commit and deletes them once the broker confirmed. A crash between publish and delete
//! publishes the batch again on restart: consumers see duplicates (they deduplicate on the event
//! ID), never a loss, and never an event whose transaction rolled back.
//!
//! One row holds the events of one [`append`] call (up to [`EVENTS_PER_ROW`]): the first in its
//! columns, the others encoded in `more`. A commit that changes a thousand jobs thus writes, reads
//! and deletes one row, not a thousand; this is what keeps the outbox off the embedded (SQLite)
//! dispatch path's one writer thread. Events keep their own IDs, order and routing keys.
//!
//! On PostgreSQL the relay claims rows with `FOR UPDATE SKIP LOCKED` inside a transaction that
//! lasts until the delete, so replicas share the work without publishing a row twice. SQLite has
//! one writer per database (one process), so the relay reads, publishes and deletes without
//! holding a transaction, which would otherwise block the single connection for as long as the
//! broker takes to confirm.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use prost::Message as _;
use sea_orm::sea_query::{Expr, LockBehavior, LockType};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Set, TransactionTrait,
};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{Envelope, Error, Publisher};

/// How many rows one [`flush_once`] publishes at most (each holds up to [`EVENTS_PER_ROW`] events).
const BATCH_SIZE: u64 = 256;
/// The safety-net poll: catches commits whose `notify()` was missed (another process, a bug).
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The `outbox` table: one row per event not yet confirmed by the broker.
pub(crate) mod entity {
    use sea_orm::entity::prelude::*;

    /// An unsent event.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "outbox")]
    pub struct Model {
        /// Publication order.
        #[sea_orm(primary_key)]
        pub id: i64,
        /// The event ID, hyphenated (text, so both databases store it alike).
        pub event_id: String,
        /// The routing key.
        pub routing_key: String,
        /// When the state change happened.
        pub occurred_at: DateTimeUtc,
        /// The encoded protobuf message.
        pub body: Vec<u8>,
        /// How many events the row holds (this one and those in `more`).
        pub n_events: i32,
        /// The events after the first, encoded as [`super::StoredEvents`]; none for one event.
        pub more: Option<Vec<u8>>,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// The events after a row's first, as stored in its `more` column.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredEvents {
    #[prost(message, repeated, tag = "1")]
    events: Vec<StoredEvent>,
}

/// One event of [`StoredEvents`].
#[derive(Clone, PartialEq, prost::Message)]
struct StoredEvent {
    /// The 16 bytes of the event ID.
    #[prost(bytes = "vec", tag = "1")]
    event_id: Vec<u8>,
    #[prost(string, tag = "2")]
    routing_key: String,
    /// Microseconds since the Unix epoch ([`Envelope::new`] keeps microseconds).
    #[prost(int64, tag = "3")]
    occurred_at_micros: i64,
    #[prost(bytes = "bytes", tag = "4")]
    body: bytes::Bytes,
}

/// Events per outbox row: a 100000-job task's insertion still makes rows of a bounded size.
pub const EVENTS_PER_ROW: usize = 1000;
/// Rows per INSERT statement of [`append`] (6 bound values each; SQLite allows 32766, PostgreSQL
/// 65535).
const ROWS_PER_INSERT: usize = 1000;

/// Writes `events` in the caller's transaction, so they commit (and later get published) together
/// with the state change, or not at all. After the commit, call [`Outbox::notify`].
///
/// # Errors
/// The insert failed; the caller's transaction should roll back.
pub async fn append<C: ConnectionTrait>(txn: &C, events: &[Envelope]) -> Result<(), sea_orm::DbErr> {
    let rows: Vec<&[Envelope]> = events.chunks(EVENTS_PER_ROW).collect();
    for statement in rows.chunks(ROWS_PER_INSERT) {
        let models = statement.iter().map(|chunk| row_of(chunk));
        // Without RETURNING: we need no IDs back, and an empty list is a no-op.
        entity::Entity::insert_many(models).exec_without_returning(txn).await?;
    }
    Ok(())
}

/// The row holding `chunk` (never empty: it comes from `chunks`).
fn row_of(chunk: &[Envelope]) -> entity::ActiveModel {
    let (first, rest) = chunk.split_first().expect("chunks are never empty");
    let more = (!rest.is_empty()).then(|| {
        StoredEvents {
            events: rest
                .iter()
                .map(|event| StoredEvent {
                    event_id: event.event_id.as_bytes().to_vec(),
                    routing_key: event.routing_key.clone(),
                    occurred_at_micros: event.occurred_at.timestamp_micros(),
                    body: event.body.clone(),
                })
                .collect(),
        }
        .encode_to_vec()
    });
    entity::ActiveModel {
        event_id: Set(first.event_id.hyphenated().to_string()),
        routing_key: Set(first.routing_key.clone()),
        occurred_at: Set(first.occurred_at),
        body: Set(first.body.to_vec()),
        n_events: Set(i32::try_from(chunk.len()).unwrap_or(i32::MAX)),
        more: Set(more),
        ..Default::default()
    }
}

/// A service's outbox: its database and the signal that wakes the relay.
#[derive(Clone)]
pub struct Outbox {
    db: DatabaseConnection,
    wake: Arc<Notify>,
    /// One flush at a time per process: on SQLite, where rows are not locked, two concurrent
    /// flushes would publish the same rows twice.
    flushing: Arc<Mutex<()>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("backend", &self.db.get_database_backend()).finish_non_exhaustive()
    }
}

impl Outbox {
    /// The outbox in `db`, which must have run [`crate::migration::migrations`].
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db, wake: Arc::new(Notify::new()), flushing: Arc::new(Mutex::new(())) }
    }

    /// Wakes the relay; call it after committing a transaction that appended events. A wake-up
    /// while the relay is busy is remembered, so none is lost.
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// How many events wait to be published (for the `panda_<svc>_outbox_pending` gauge).
    ///
    /// # Errors
    /// [`Error::Database`].
    pub async fn pending(&self) -> Result<u64, Error> {
        // PostgreSQL sums an integer column as bigint, SQLite as integer: both decode as i64.
        let sum: Option<Option<i64>> = entity::Entity::find()
            .select_only()
            .column_as(Expr::cust("CAST(COALESCE(SUM(n_events), 0) AS BIGINT)"), "pending")
            .into_tuple()
            .one(&self.db)
            .await?;
        Ok(sum.flatten().map_or(0, |n| u64::try_from(n).unwrap_or(0)))
    }
}

/// Publishes the oldest unsent events (at most one batch) and deletes them. Returns how many it
/// published; 0 when there was nothing to do.
///
/// Cancel-safe in the at-least-once sense: dropped midway, it may leave published rows behind,
/// which the next flush publishes again.
///
/// # Errors
/// [`Error::Database`], or the publisher's error; the rows stay for the next attempt.
pub async fn flush_once(outbox: &Outbox, publisher: &dyn Publisher) -> Result<usize, Error> {
    let _flushing = outbox.flushing.lock().await;
    match outbox.db.get_database_backend() {
        DbBackend::Postgres => {
            let txn = outbox.db.begin().await?;
            let rows = entity::Entity::find()
                .order_by_asc(entity::Column::Id)
                .limit(BATCH_SIZE)
                .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
                .all(&txn)
                .await?;
            let published = publish_and_delete(&txn, publisher, rows).await?;
            txn.commit().await?;
            Ok(published)
        }
        _ => {
            let rows =
                entity::Entity::find().order_by_asc(entity::Column::Id).limit(BATCH_SIZE).all(&outbox.db).await?;
            publish_and_delete(&outbox.db, publisher, rows).await
        }
    }
}

async fn publish_and_delete<C: ConnectionTrait>(
    db: &C,
    publisher: &dyn Publisher,
    rows: Vec<entity::Model>,
) -> Result<usize, Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
    let events: Vec<Envelope> = rows.into_iter().flat_map(envelopes).collect();
    publisher.publish(&events).await?;
    entity::Entity::delete_many().filter(entity::Column::Id.is_in(ids)).exec(db).await?;
    Ok(events.len())
}

/// The events a row holds, in order. An event that does not decode was not written by
/// [`append`]; it cannot be published, and keeping it would stall the outbox, so it is logged and
/// dropped (the row's other events are published).
fn envelopes(row: entity::Model) -> Vec<Envelope> {
    let mut events = Vec::with_capacity(usize::try_from(row.n_events).unwrap_or(1));
    match Uuid::parse_str(&row.event_id) {
        Ok(event_id) => events.push(Envelope {
            event_id,
            routing_key: row.routing_key,
            occurred_at: row.occurred_at,
            body: row.body.into(),
        }),
        Err(_) => {
            tracing::error!(outbox_id = row.id, event_id = %row.event_id, "outbox row has an invalid event id; dropping it");
        }
    }
    let Some(more) = row.more else { return events };
    match StoredEvents::decode(more.as_slice()) {
        Ok(stored) => events.extend(stored.events.into_iter().filter_map(|event| {
            let event_id = Uuid::from_slice(&event.event_id).ok();
            let occurred_at = chrono::DateTime::from_timestamp_micros(event.occurred_at_micros);
            match (event_id, occurred_at) {
                (Some(event_id), Some(occurred_at)) => {
                    Some(Envelope { event_id, routing_key: event.routing_key, occurred_at, body: event.body })
                }
                _ => {
                    tracing::error!(outbox_id = row.id, routing_key = %event.routing_key, "outbox row holds an event with an invalid id or time; dropping it");
                    None
                }
            }
        })),
        Err(error) => {
            tracing::error!(outbox_id = row.id, %error, "outbox row's further events do not decode; dropping them");
        }
    }
    events
}

/// The relay: publishes committed events until `shutdown`, then makes a last flush attempt and
/// returns. Woken by [`Outbox::notify`], with a slow poll as a safety net; on failure it retries
/// with exponential backoff (100 ms up to 30 s). Run one per process and database; on PostgreSQL
/// replicas may each run one. Dropping it midway is a crash: some events are published again.
pub async fn run_relay(outbox: Outbox, publisher: Arc<dyn Publisher>, shutdown: CancellationToken) {
    let backoff = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times();
    let mut delays = backoff.build();
    loop {
        // Not raced with shutdown: a flush runs to its end (publish, then delete).
        match drain(&outbox, publisher.as_ref()).await {
            Ok(()) => {
                delays = backoff.build();
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    () = outbox.wake.notified() => {}
                    () = tokio::time::sleep(POLL_INTERVAL) => {}
                }
            }
            Err(error) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(30));
                tracing::warn!(error = %panda_runtime::error::chain(&error), retry_in = ?delay, "outbox relay cannot publish; retrying");
                // Commits do not cut the backoff short: under load they would hammer a broker
                // that is down. Their wake-up is kept for later.
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    if let Err(error) = drain(&outbox, publisher.as_ref()).await {
        tracing::warn!(error = %panda_runtime::error::chain(&error), "last outbox flush at shutdown failed; the events are published after the restart");
    }
}

/// Flushes batches until the outbox is empty.
async fn drain(outbox: &Outbox, publisher: &dyn Publisher) -> Result<(), Error> {
    while flush_once(outbox, publisher).await? > 0 {}
    Ok(())
}
