//! The transactional outbox and its relay, written once and run on SQLite and PostgreSQL.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use panda_bus::outbox::{self, Outbox};
use panda_bus::{BusConfig, Publisher};
use sea_orm::{ConnectionTrait, TransactionTrait};
use tokio_util::sync::CancellationToken;

use crate::support::{Backend, Database, Flaky, Recorder, Tally, TestBus, database, event, eventually};

macro_rules! outbox_suite {
    ($(#[$attr:meta])* $module:ident, $database:expr) => {
        mod $module {
            use super::*;

            $(#[$attr])* #[tokio::test]
            async fn committed_events_are_published_rolled_back_ones_never() {
                cases::committed_events_are_published_rolled_back_ones_never($database, Backend::Memory).await
            }
            $(#[$attr])* #[tokio::test]
            async fn a_relay_started_after_a_crash_publishes_what_was_committed() {
                cases::a_relay_started_after_a_crash_publishes_what_was_committed($database).await
            }
            $(#[$attr])* #[tokio::test]
            async fn flush_once_publishes_in_order_and_deletes() { cases::flush_once_publishes_in_order_and_deletes($database).await }
            $(#[$attr])* #[tokio::test]
            async fn the_relay_retries_until_the_broker_is_back() { cases::the_relay_retries_until_the_broker_is_back($database).await }
            $(#[$attr])* #[tokio::test]
            async fn the_relay_flushes_once_more_at_shutdown() { cases::the_relay_flushes_once_more_at_shutdown($database).await }
            $(#[$attr])* #[tokio::test]
            async fn a_huge_batch_appends_in_one_transaction() { cases::a_huge_batch_appends_in_one_transaction($database).await }
            $(#[$attr])* #[tokio::test]
            async fn a_commits_events_share_rows_and_come_back_exactly() {
                cases::a_commits_events_share_rows_and_come_back_exactly($database).await
            }
        }
    };
}

outbox_suite!(sqlite, Database::Sqlite);
outbox_suite!(
    #[ignore = "needs PostgreSQL: set PANDA_TEST_DATABASE_URL"]
    postgres,
    Database::Postgres
);

#[tokio::test]
#[ignore = "needs RabbitMQ: set PANDA_TEST_AMQP_URL"]
async fn the_relay_publishes_through_rabbitmq() {
    cases::committed_events_are_published_rolled_back_ones_never(Database::Sqlite, Backend::Amqp).await;
}

#[tokio::test]
async fn one_relay_per_sqlite_database_publishes_each_event_once() {
    cases::concurrent_relays_publish_each_event_once(Database::Sqlite, false).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set PANDA_TEST_DATABASE_URL"]
async fn replicas_share_the_postgres_outbox_without_duplicates() {
    cases::concurrent_relays_publish_each_event_once(Database::Postgres, true).await;
}

mod cases {
    use super::*;

    pub async fn committed_events_are_published_rolled_back_ones_never(database_kind: Database, backend: Backend) {
        let (_test_db, db) = database(database_kind).await;
        let bus = TestBus::new(backend, BusConfig::default()).await;
        let recorder = Recorder::ok();
        let _consumer = bus.consume(&bus.queue("jobs"), &["job.#"], recorder.clone()).await;
        let outbox = Outbox::new(db.clone());
        let shutdown = CancellationToken::new();
        let relay = tokio::spawn(outbox::run_relay(outbox.clone(), Arc::new(bus.bus.clone()), shutdown.clone()));

        let rolled_back = event("job.failed", "never happened");
        let txn = db.begin().await.unwrap();
        outbox::append(&txn, std::slice::from_ref(&rolled_back)).await.unwrap();
        txn.rollback().await.unwrap();

        let committed = vec![event("job.finished", "1"), event("job.finished", "2")];
        let txn = db.begin().await.unwrap();
        outbox::append(&txn, &committed).await.unwrap();
        txn.commit().await.unwrap();
        outbox.notify();

        recorder.wait_for(&committed.iter().collect::<Vec<_>>()).await;
        assert_eq!(recorder.handled(), committed, "published in commit order, exactly as appended");
        assert!(!recorder.has(&rolled_back));
        eventually("the outbox to empty", || async { outbox.pending().await.unwrap() == 0 }).await;

        shutdown.cancel();
        relay.await.unwrap();
    }

    pub async fn a_relay_started_after_a_crash_publishes_what_was_committed(database_kind: Database) {
        let (_test_db, db) = database(database_kind).await;
        let events: Vec<_> = (0..5).map(|i| event("task.finished", &i.to_string())).collect();
        let txn = db.begin().await.unwrap();
        outbox::append(&txn, &events).await.unwrap();
        txn.commit().await.unwrap();
        // The process "crashed" here: committed, never notified, no relay ran.
        assert_eq!(Outbox::new(db.clone()).pending().await.unwrap(), 5);

        let bus = TestBus::new(Backend::Memory, BusConfig::default()).await;
        let recorder = Recorder::ok();
        let _consumer = bus.consume(&bus.queue("tasks"), &["task.*"], recorder.clone()).await;
        // After the "restart": a new outbox and relay, and nobody calls notify().
        let outbox = Outbox::new(db.clone());
        let shutdown = CancellationToken::new();
        let relay = tokio::spawn(outbox::run_relay(outbox.clone(), Arc::new(bus.bus.clone()), shutdown.clone()));

        recorder.wait_for(&events.iter().collect::<Vec<_>>()).await;
        assert_eq!(recorder.handled(), events);
        eventually("the outbox to empty", || async { outbox.pending().await.unwrap() == 0 }).await;
        shutdown.cancel();
        relay.await.unwrap();
    }

    pub async fn a_huge_batch_appends_in_one_transaction(database_kind: Database) {
        // More rows than one statement may bind (SQLite: 32766 variables, PostgreSQL: 65535).
        let (_test_db, db) = database(database_kind).await;
        let events: Vec<_> = (0..20_000).map(|i| event("job.activated", &i.to_string())).collect();
        let txn = db.begin().await.unwrap();
        outbox::append(&txn, &events).await.unwrap();
        txn.commit().await.unwrap();
        assert_eq!(Outbox::new(db.clone()).pending().await.unwrap(), 20_000);
    }

    /// Keeps every published event whole.
    #[derive(Default)]
    struct Keeper(Mutex<Vec<panda_bus::Envelope>>);

    #[async_trait::async_trait]
    impl Publisher for Keeper {
        async fn publish(&self, events: &[panda_bus::Envelope]) -> Result<(), panda_bus::Error> {
            self.0.lock().unwrap().extend_from_slice(events);
            Ok(())
        }
    }

    pub async fn a_commits_events_share_rows_and_come_back_exactly(database_kind: Database) {
        let (_test_db, db) = database(database_kind).await;
        let events: Vec<_> =
            (0..2500).map(|i| event(if i % 3 == 0 { "job.sent" } else { "job.finished" }, &i.to_string())).collect();
        let txn = db.begin().await.unwrap();
        outbox::append(&txn, &events).await.unwrap();
        txn.commit().await.unwrap();
        let lone = event("task.done", "lone");
        outbox::append(&db, std::slice::from_ref(&lone)).await.unwrap();

        // One row per thousand events of a commit, and one for the lone event.
        let rows = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                "SELECT COUNT(*) AS n FROM outbox",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get::<i64>("", "n")
            .unwrap();
        assert_eq!(rows, 4);
        let outbox = Outbox::new(db.clone());
        assert_eq!(outbox.pending().await.unwrap(), 2501, "pending counts events, not rows");

        let keeper = Keeper::default();
        let mut published = 0;
        loop {
            let n = outbox::flush_once(&outbox, &keeper).await.unwrap();
            if n == 0 {
                break;
            }
            published += n;
        }
        assert_eq!(published, 2501);
        let expected: Vec<_> = events.iter().chain(std::iter::once(&lone)).cloned().collect();
        assert_eq!(*keeper.0.lock().unwrap(), expected, "ids, keys, times and bodies as written, in order");
        assert_eq!(outbox.pending().await.unwrap(), 0);
    }

    pub async fn flush_once_publishes_in_order_and_deletes(database_kind: Database) {
        let (_test_db, db) = database(database_kind).await;
        let outbox = Outbox::new(db.clone());
        let tally = Tally::default();
        assert_eq!(outbox::flush_once(&outbox, &tally).await.unwrap(), 0);

        let first: Vec<_> = (0..3).map(|i| event("job.finished", &i.to_string())).collect();
        let second: Vec<_> = (3..5).map(|i| event("job.finished", &i.to_string())).collect();
        for batch in [&first, &second] {
            let txn = db.begin().await.unwrap();
            outbox::append(&txn, batch).await.unwrap();
            txn.commit().await.unwrap();
        }
        outbox::append(&db, &[]).await.unwrap(); // nothing to append is fine

        assert_eq!(outbox::flush_once(&outbox, &tally).await.unwrap(), 5);
        assert_eq!(outbox.pending().await.unwrap(), 0);
        assert_eq!(outbox::flush_once(&outbox, &tally).await.unwrap(), 0);
        let expected: Vec<_> = first.iter().chain(&second).map(|e| e.event_id).collect();
        assert_eq!(*tally.published.lock().unwrap(), expected);
    }

    pub async fn the_relay_retries_until_the_broker_is_back(database_kind: Database) {
        let (_test_db, db) = database(database_kind).await;
        let bus = TestBus::new(Backend::Memory, BusConfig::default()).await;
        let recorder = Recorder::ok();
        let _consumer = bus.consume(&bus.queue("jobs"), &["job.#"], recorder.clone()).await;
        let outbox = Outbox::new(db.clone());
        let publisher = Arc::new(Flaky { inner: bus.bus.clone(), failures: Mutex::new(3) });
        let shutdown = CancellationToken::new();
        let relay = tokio::spawn(outbox::run_relay(outbox.clone(), publisher.clone(), shutdown.clone()));

        let events = vec![event("job.finished", "a"), event("job.finished", "b")];
        let txn = db.begin().await.unwrap();
        outbox::append(&txn, &events).await.unwrap();
        txn.commit().await.unwrap();
        outbox.notify();

        recorder.wait_for(&events.iter().collect::<Vec<_>>()).await;
        assert_eq!(*publisher.failures.lock().unwrap(), 0, "the outage was ridden out, not skipped");
        assert_eq!(recorder.handled(), events, "nothing lost, nothing duplicated");
        shutdown.cancel();
        relay.await.unwrap();
    }

    pub async fn the_relay_flushes_once_more_at_shutdown(database_kind: Database) {
        let (_test_db, db) = database(database_kind).await;
        let outbox = Outbox::new(db.clone());
        let events: Vec<_> = (0..3).map(|i| event("job.finished", &i.to_string())).collect();
        let txn = db.begin().await.unwrap();
        outbox::append(&txn, &events).await.unwrap();
        txn.commit().await.unwrap();

        let tally = Arc::new(Tally::default());
        let shutdown = CancellationToken::new();
        shutdown.cancel(); // already shutting down: the relay still flushes before returning
        tokio::time::timeout(crate::support::TIMEOUT, outbox::run_relay(outbox.clone(), tally.clone(), shutdown))
            .await
            .expect("the relay returns at shutdown");
        assert_eq!(*tally.published.lock().unwrap(), events.iter().map(|e| e.event_id).collect::<Vec<_>>());
        assert_eq!(outbox.pending().await.unwrap(), 0);
    }

    /// Four relays drain one outbox at once. On PostgreSQL each is a replica with its own pool
    /// (`separate`); SQLite supports one relay per database, so there they share one `Outbox`.
    pub async fn concurrent_relays_publish_each_event_once(database_kind: Database, separate: bool) {
        let (test_db, db) = database(database_kind).await;
        let events: Vec<_> = (0..1000).map(|i| event("job.finished", &i.to_string())).collect();
        for chunk in events.chunks(100) {
            let txn = db.begin().await.unwrap();
            outbox::append(&txn, chunk).await.unwrap();
            txn.commit().await.unwrap();
        }

        let tally = Arc::new(Tally::default());
        let shutdown = CancellationToken::new();
        let mut relays = Vec::new();
        let shared = Outbox::new(db.clone());
        for _ in 0..4 {
            let outbox = if separate {
                Outbox::new(panda_db::connect(&test_db.url, Some(2)).await.unwrap())
            } else {
                shared.clone()
            };
            relays.push(tokio::spawn(outbox::run_relay(outbox, tally.clone() as Arc<dyn Publisher>, shutdown.clone())));
        }
        eventually("every event published", || async { tally.published.lock().unwrap().len() >= events.len() }).await;
        eventually("the outbox to empty", || async { shared.pending().await.unwrap() == 0 }).await;
        shutdown.cancel();
        for relay in relays {
            relay.await.unwrap();
        }

        let published = tally.published.lock().unwrap().clone();
        let distinct: HashSet<_> = published.iter().collect();
        assert_eq!(distinct.len(), events.len(), "every event published");
        assert_eq!(published.len(), events.len(), "no event published twice");
    }
}
