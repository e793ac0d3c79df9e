//! The bus's behaviour, written once and run on both backends.

use panda_bus::{BusConfig, HandleError};

use crate::support::{Backend, Gate, Ping, Recorder, TestBus, event};

macro_rules! bus_suite {
    ($(#[$attr:meta])* $module:ident, $backend:expr) => {
        mod $module {
            use super::*;

            $(#[$attr])* #[tokio::test]
            async fn publish_then_consume() { cases::publish_then_consume($backend).await }
            $(#[$attr])* #[tokio::test]
            async fn topic_patterns_route_like_amqp() { cases::topic_patterns_route_like_amqp($backend).await }
            $(#[$attr])* #[tokio::test]
            async fn events_published_before_the_queue_exists_are_not_delivered() {
                cases::events_published_before_the_queue_exists_are_not_delivered($backend).await
            }
            $(#[$attr])* #[tokio::test]
            async fn retry_redelivers_until_ok() { cases::retry_redelivers_until_ok($backend).await }
            $(#[$attr])* #[tokio::test]
            async fn poison_is_dead_lettered_while_others_flow() { cases::poison_is_dead_lettered_while_others_flow($backend).await }
            $(#[$attr])* #[tokio::test]
            async fn a_crash_before_the_ack_redelivers() { cases::a_crash_before_the_ack_redelivers($backend).await }
            $(#[$attr])* #[tokio::test]
            async fn shutdown_finishes_the_in_flight_event() { cases::shutdown_finishes_the_in_flight_event($backend).await }
            $(#[$attr])* #[tokio::test]
            async fn the_queue_keeps_events_while_no_consumer_runs() {
                cases::the_queue_keeps_events_while_no_consumer_runs($backend).await
            }
            $(#[$attr])* #[tokio::test]
            async fn consumers_of_one_queue_share_its_events() { cases::consumers_of_one_queue_share_its_events($backend).await }
            $(#[$attr])* #[tokio::test]
            async fn a_transient_queue_keeps_nothing_once_its_consumer_stops() {
                cases::a_transient_queue_keeps_nothing_once_its_consumer_stops($backend).await
            }
        }
    };
}

bus_suite!(memory, Backend::Memory);
bus_suite!(
    #[ignore = "needs RabbitMQ: set PANDA_TEST_AMQP_URL"]
    amqp,
    Backend::Amqp
);

mod cases {
    use super::*;

    pub async fn publish_then_consume(backend: Backend) {
        let bus = TestBus::new(backend, BusConfig::default()).await;
        let queue = bus.queue("jobs");
        let recorder = Recorder::ok();
        let _consumer = bus.consume(&queue, &["job.finished"], recorder.clone()).await;

        let events = vec![event("job.finished", "a"), event("job.finished", "b"), event("job.finished", "c")];
        bus.publish(&events).await;

        recorder.wait_for(&events.iter().collect::<Vec<_>>()).await;
        // Same IDs, keys, times (to the nanosecond) and bodies, in publication order.
        assert_eq!(recorder.handled(), events);
        assert_eq!(recorder.handled()[1].decode::<Ping>().unwrap().text, "b");
    }

    pub async fn topic_patterns_route_like_amqp(backend: Backend) {
        let bus = TestBus::new(backend, BusConfig::default()).await;
        let (tasks, jobs, finished) = (Recorder::ok(), Recorder::ok(), Recorder::ok());
        let _a = bus.consume(&bus.queue("tasks"), &["task.*"], tasks.clone()).await;
        let _b = bus.consume(&bus.queue("jobs"), &["job.#"], jobs.clone()).await;
        let _c = bus.consume(&bus.queue("finished"), &["*.finished", "work.result"], finished.clone()).await;

        let keys =
            ["task.finished", "task.running.late", "job", "job.failed.hard", "worker.finished", "work.result", "other"];
        let events: Vec<_> = keys.iter().map(|key| event(key, key)).collect();
        bus.publish(&events).await;
        // A queue delivers in order, so once its sentinel arrived, everything before it has too.
        let sentinels = [event("task.sentinel", ""), event("job.sentinel", ""), event("sentinel.finished", "")];
        bus.publish(&sentinels).await;
        tasks.wait_for(&[&sentinels[0]]).await;
        jobs.wait_for(&[&sentinels[1]]).await;
        finished.wait_for(&[&sentinels[2]]).await;

        let keys_of = |recorder: &Recorder| -> Vec<String> {
            recorder.handled().into_iter().map(|e| e.routing_key).filter(|k| !k.contains("sentinel")).collect()
        };
        assert_eq!(keys_of(&tasks), ["task.finished"]);
        assert_eq!(keys_of(&jobs), ["job", "job.failed.hard"]);
        assert_eq!(keys_of(&finished), ["task.finished", "worker.finished", "work.result"]);
    }

    pub async fn events_published_before_the_queue_exists_are_not_delivered(backend: Backend) {
        let bus = TestBus::new(backend, BusConfig::default()).await;
        let early = event("job.finished", "early");
        bus.publish(std::slice::from_ref(&early)).await; // nobody is bound yet: dropped, as by an exchange

        let recorder = Recorder::ok();
        let _consumer = bus.consume(&bus.queue("jobs"), &["job.#"], recorder.clone()).await;
        let late = event("job.finished", "late");
        bus.publish(std::slice::from_ref(&late)).await;
        recorder.wait_for(&[&late]).await;
        assert!(!recorder.has(&early));
    }

    pub async fn retry_redelivers_until_ok(backend: Backend) {
        let bus = TestBus::new(backend, BusConfig::default()).await;
        let recorder = Recorder::with(|event, attempt| {
            if event.routing_key == "job.flaky" && attempt < 3 {
                Err(HandleError::Retry(format!("database down (attempt {attempt})")))
            } else {
                Ok(())
            }
        });
        let _consumer = bus.consume(&bus.queue("jobs"), &["job.#"], recorder.clone()).await;
        let (flaky, steady) = (event("job.flaky", "f"), event("job.steady", "s"));
        bus.publish(&[flaky.clone(), steady.clone()]).await;

        recorder.wait_for(&[&flaky, &steady]).await;
        assert_eq!(recorder.attempts(&flaky), 3);
        assert_eq!(recorder.attempts(&steady), 1);
        // The redelivered event is the same event: same ID, key, time and body.
        let handled = recorder.handled();
        assert_eq!(handled.iter().find(|e| e.event_id == flaky.event_id), Some(&flaky));
        assert_eq!(handled.len(), 2);
    }

    pub async fn poison_is_dead_lettered_while_others_flow(backend: Backend) {
        let config = BusConfig { max_deliveries: 3, ..BusConfig::default() };
        let bus = TestBus::new(backend, config).await;
        let queue = bus.queue("jobs");
        let recorder = Recorder::with(|event, _| match event.routing_key.as_str() {
            "job.poison" => Err(HandleError::Retry("always fails".into())),
            "job.invalid" => Err(HandleError::Reject("cannot decode".into())),
            _ => Ok(()),
        });
        let _consumer = bus.consume(&queue, &["job.#"], recorder.clone()).await;
        let (poison, invalid) = (event("job.poison", "p"), event("job.invalid", "i"));
        let good: Vec<_> = (0..3).map(|i| event("job.finished", &i.to_string())).collect();
        bus.publish(&[poison.clone(), invalid.clone()]).await;
        bus.publish(&good).await;
        recorder.wait_for(&good.iter().collect::<Vec<_>>()).await;

        let dead = Recorder::ok();
        let _dead_consumer = bus.consume(&format!("{queue}.dead"), &[], dead.clone()).await;
        dead.wait_for(&[&poison, &invalid]).await;
        assert_eq!(recorder.attempts(&poison), 3, "max_deliveries attempts, then dead-lettered");
        assert_eq!(recorder.attempts(&invalid), 1, "a rejected event is dead-lettered at once");
        // The dead letters keep the event as it was.
        let mut dead_letters = dead.handled();
        dead_letters.sort_by_key(|e| e.routing_key.clone());
        assert_eq!(dead_letters, [invalid, poison]);
        assert!(!recorder.handled().iter().any(|e| e.routing_key == "job.poison"));
    }

    pub async fn a_crash_before_the_ack_redelivers(backend: Backend) {
        let bus = TestBus::new(backend, BusConfig::default()).await;
        let queue = bus.queue("jobs");
        let stuck = Gate::new(); // never opened: the handler never returns
        let first = bus.consume(&queue, &["job.#"], stuck.clone()).await;
        let lost = event("job.finished", "x");
        bus.publish(std::slice::from_ref(&lost)).await;
        stuck.wait_started().await;
        first.crash().await;

        let recorder = Recorder::ok();
        let _second = bus.consume(&queue, &["job.#"], recorder.clone()).await;
        recorder.wait_for(&[&lost]).await;
        assert!(stuck.finished().is_empty());
    }

    pub async fn shutdown_finishes_the_in_flight_event(backend: Backend) {
        let bus = TestBus::new(backend, BusConfig::default()).await;
        let queue = bus.queue("jobs");
        let gate = Gate::new();
        let first = bus.consume(&queue, &["job.#"], gate.clone()).await;
        let in_flight = event("job.finished", "in flight");
        bus.publish(std::slice::from_ref(&in_flight)).await;
        gate.wait_started().await;

        first.token.cancel(); // shutdown while the handler runs ...
        gate.open(); // ... which still completes and is acknowledged
        tokio::time::timeout(crate::support::TIMEOUT, first.handle).await.unwrap().unwrap();
        assert_eq!(gate.finished(), [in_flight.event_id]);

        let recorder = Recorder::ok();
        let _second = bus.consume(&queue, &["job.#"], recorder.clone()).await;
        let next = event("job.finished", "next");
        bus.publish(std::slice::from_ref(&next)).await;
        recorder.wait_for(&[&next]).await;
        assert!(!recorder.has(&in_flight), "an acknowledged event is not delivered again");
    }

    pub async fn the_queue_keeps_events_while_no_consumer_runs(backend: Backend) {
        let bus = TestBus::new(backend, BusConfig::default()).await;
        let queue = bus.queue("jobs");
        let first = Recorder::ok();
        let consumer = bus.consume(&queue, &["job.#"], first.clone()).await;
        let before = event("job.finished", "before");
        bus.publish(std::slice::from_ref(&before)).await;
        first.wait_for(&[&before]).await;
        consumer.stop().await;

        let meanwhile = vec![event("job.finished", "1"), event("job.failed", "2")];
        bus.publish(&meanwhile).await;
        let second = Recorder::ok();
        let _consumer = bus.consume(&queue, &["job.#"], second.clone()).await;
        second.wait_for(&meanwhile.iter().collect::<Vec<_>>()).await;
        assert_eq!(second.handled(), meanwhile);
    }

    pub async fn consumers_of_one_queue_share_its_events(backend: Backend) {
        let bus = TestBus::new(backend, BusConfig { prefetch: 1, ..BusConfig::default() }).await;
        let queue = bus.queue("jobs");
        let (a, b) = (Recorder::ok(), Recorder::ok());
        let _a = bus.consume(&queue, &["job.#"], a.clone()).await;
        let _b = bus.consume(&queue, &["job.#"], b.clone()).await;
        let events: Vec<_> = (0..20).map(|i| event("job.finished", &i.to_string())).collect();
        bus.publish(&events).await;

        crate::support::eventually("all events handled", || async {
            a.handled().len() + b.handled().len() >= events.len()
        })
        .await;
        let mut handled: Vec<_> = a.handled_ids().into_iter().chain(b.handled_ids()).collect();
        handled.sort();
        let mut expected: Vec<_> = events.iter().map(|e| e.event_id).collect();
        expected.sort();
        assert_eq!(handled, expected, "each event handled by exactly one of the consumers");
    }

    pub async fn a_transient_queue_keeps_nothing_once_its_consumer_stops(backend: Backend) {
        let bus = TestBus::new(backend, BusConfig::default()).await;
        let queue = bus.queue("feed");
        let first = Recorder::ok();
        let consumer = bus.consume_transient(&queue, &["job.#"], first.clone()).await;
        let live = event("job.finished", "live");
        bus.publish(std::slice::from_ref(&live)).await;
        first.wait_for(&[&live]).await;
        consumer.stop().await;

        // Nobody listens: the queue is gone, and so is what is published meanwhile.
        let missed = event("job.failed", "missed");
        bus.publish(std::slice::from_ref(&missed)).await;
        let second = Recorder::ok();
        let _consumer = bus.consume_transient(&queue, &["job.#"], second.clone()).await;
        let next = event("job.finished", "next");
        bus.publish(std::slice::from_ref(&next)).await;
        second.wait_for(&[&next]).await;
        assert!(!second.has(&missed), "a transient queue keeps nothing while no consumer runs");
        assert_eq!(second.handled(), [next]);
    }
}
