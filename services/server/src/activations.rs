//! Wakes long-polling `GetJob` calls when jobs of their queue become `activated`.
//!
//! Each queue with waiters has a counter in a `watch` channel; a commit that activates jobs of
//! the queue (in this process: `Service::commit`; on other replicas: their `job.activated`
//! events, followed by [`ActivationEvents`]) bumps it, and every waiter of the queue tries to
//! dispatch again. A wake-up is only a hint: dispatch stays the one place that hands out jobs
//! (exactly once), so a spurious or doubled wake-up costs one empty claim.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use panda_bus::{Envelope, HandleError, Handler};
use panda_proto::events::v1::JobStatusChanged;
use tokio::sync::watch;

/// Routing key of the event that activates a job.
pub const ACTIVATED: &str = "job.activated";

/// The per-queue wake-up counters.
#[derive(Clone, Default)]
pub struct Activations {
    queues: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
}

impl std::fmt::Debug for Activations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activations").finish_non_exhaustive()
    }
}

impl Activations {
    /// A receiver that sees every later [`Activations::notify`] of `queue`.
    pub fn subscribe(&self, queue: &str) -> watch::Receiver<u64> {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        queues.entry(queue.to_owned()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Wakes the waiters of `queue` (nothing when nobody ever waited there).
    pub fn notify(&self, queue: &str) {
        let queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = queues.get(queue) {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Wakes the waiters of every queue named by a `job.activated` event among `events`.
    pub fn notify_events(&self, events: &[Envelope]) {
        // Until a pilot first waits on this server, no event needs decoding.
        if self.queues.lock().unwrap_or_else(PoisonError::into_inner).is_empty() {
            return;
        }
        let mut seen: Vec<String> = Vec::new();
        for event in events.iter().filter(|e| e.routing_key == ACTIVATED) {
            if let Ok(body) = event.decode::<JobStatusChanged>()
                && !seen.contains(&body.queue)
            {
                self.notify(&body.queue);
                seen.push(body.queue);
            }
        }
    }
}

/// Bus consumer (a transient queue per replica) of `job.activated`: jobs activated by another
/// replica wake this replica's waiters too.
pub struct ActivationEvents(pub Activations);

#[async_trait]
impl Handler for ActivationEvents {
    async fn handle(&self, event: &Envelope) -> Result<(), HandleError> {
        self.0.notify_events(std::slice::from_ref(event));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_is_woken_by_its_queue_only() {
        let activations = Activations::default();
        let mut mine = activations.subscribe("q");
        let mut other = activations.subscribe("r");
        mine.borrow_and_update();
        other.borrow_and_update();
        let job = JobStatusChanged { queue: "q".into(), job_id: 1, task_id: 1, ..Default::default() };
        activations.notify_events(&[Envelope::new(ACTIVATED, &job), Envelope::new("job.sent", &job)]);
        assert!(mine.has_changed().unwrap_or(false), "q's waiter must be woken");
        assert!(!other.has_changed().unwrap_or(true), "r's waiter must not be woken");
        let sent = JobStatusChanged { queue: "r".into(), ..job };
        activations.notify_events(&[Envelope::new("job.sent", &sent)]);
        assert!(!other.has_changed().unwrap_or(true), "only activations wake waiters");
    }

    #[test]
    fn notifying_a_queue_nobody_waits_on_is_harmless() {
        Activations::default().notify("nobody");
    }
}
