//! What happens to a delivered event after its handler ran: one policy for both backends, so they
//! cannot drift apart.
//!
//! Deliveries are counted by the bus itself (the memory backend in the queued message, AMQP in a
//! header set when the event is put back), and only a handler's `Retry` or panic counts: a consumer
//! that stops or crashes before acking hands the event back without using up an attempt, so graceful
//! restarts never push healthy events towards the dead-letter queue.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;

use crate::{Envelope, HandleError, Handler};

/// The first retry waits this long; each further one twice as long as the previous.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);
/// The longest wait before a retry.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// What to do with a delivered event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Handled: acknowledge.
    Ack,
    /// Put back after `delay`; the next delivery is number `next_delivery`.
    Retry { next_delivery: u32, delay: Duration },
    /// Give up: move it to `<queue>.dead`.
    DeadLetter { reason: String },
}

/// Calls the handler for delivery number `delivery` (1 for the first) and decides.
pub(crate) async fn run_handler(
    handler: &dyn Handler,
    event: &Envelope,
    queue: &str,
    delivery: u32,
    max_deliveries: u32,
) -> Outcome {
    // A panicking handler must not kill the consume loop (the queue would silently stop); it is
    // treated as a transient failure, so a poison event that always panics ends up dead-lettered.
    let result = AssertUnwindSafe(handler.handle(event)).catch_unwind().await;
    let reason = match result {
        Ok(Ok(())) => return Outcome::Ack,
        Ok(Err(HandleError::Reject(reason))) => return Outcome::DeadLetter { reason: format!("rejected: {reason}") },
        Ok(Err(HandleError::Retry(reason))) => reason,
        Err(panic) => format!("handler panicked: {}", panic_message(panic.as_ref())),
    };
    let outcome = decide_retry(delivery, max_deliveries, &reason);
    if let Outcome::Retry { delay, .. } = &outcome {
        tracing::warn!(
            event_id = %event.event_id,
            routing_key = %event.routing_key,
            queue,
            delivery,
            max_deliveries,
            retry_in = ?delay,
            reason,
            "event handling failed; retrying later"
        );
    }
    outcome
}

/// Retry unless this was the last allowed delivery.
fn decide_retry(delivery: u32, max_deliveries: u32, reason: &str) -> Outcome {
    if delivery >= max_deliveries {
        Outcome::DeadLetter { reason: format!("gave up after {delivery} deliveries: {reason}") }
    } else {
        Outcome::Retry { next_delivery: delivery + 1, delay: retry_delay(delivery) }
    }
}

/// The wait after failed delivery number `delivery`: 200 ms, 400 ms, 800 ms, ... up to 10 s.
pub(crate) fn retry_delay(delivery: u32) -> Duration {
    let doublings = delivery.saturating_sub(1).min(16);
    FIRST_RETRY_DELAY.saturating_mul(1 << doublings).min(MAX_RETRY_DELAY)
}

/// Logs a dead-lettered event: an operator has to look at it, hence `error`.
pub(crate) fn log_dead_letter(event_id: &str, routing_key: &str, queue: &str, reason: &str) {
    tracing::error!(event_id, routing_key, queue, dead_letter_queue = %dead_letter_queue(queue), reason, "event dead-lettered");
}

/// Where a queue's dead-lettered events go.
pub(crate) fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text
    } else {
        "non-string panic payload"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_up_to_the_cap() {
        assert_eq!(retry_delay(1), Duration::from_millis(200));
        assert_eq!(retry_delay(2), Duration::from_millis(400));
        assert_eq!(retry_delay(3), Duration::from_millis(800));
        assert_eq!(retry_delay(10), MAX_RETRY_DELAY);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY_DELAY);
        assert_eq!(retry_delay(0), FIRST_RETRY_DELAY);
    }

    #[test]
    fn the_last_allowed_delivery_dead_letters() {
        assert!(matches!(decide_retry(1, 3, "x"), Outcome::Retry { next_delivery: 2, .. }));
        assert!(matches!(decide_retry(2, 3, "x"), Outcome::Retry { next_delivery: 3, .. }));
        assert!(matches!(decide_retry(3, 3, "x"), Outcome::DeadLetter { .. }));
        assert!(matches!(decide_retry(1, 1, "x"), Outcome::DeadLetter { .. }));
    }

    struct Panics;

    #[async_trait::async_trait]
    impl Handler for Panics {
        async fn handle(&self, _event: &Envelope) -> Result<(), HandleError> {
            panic!("boom");
        }
    }

    #[tokio::test]
    async fn a_panic_counts_as_retry() {
        let event = Envelope::new("a", &());
        let outcome = run_handler(&Panics, &event, "q", 1, 2).await;
        assert!(matches!(outcome, Outcome::Retry { next_delivery: 2, .. }), "{outcome:?}");
        match run_handler(&Panics, &event, "q", 2, 2).await {
            Outcome::DeadLetter { reason } => assert!(reason.contains("boom"), "{reason}"),
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }
}
