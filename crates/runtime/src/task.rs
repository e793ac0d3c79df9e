//! Long-lived background loops.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Spawns a loop that runs `cycle` every `interval` (the first time at once) until `shutdown`.
/// A cycle is never interrupted: shutdown is only checked between cycles, so multi-step work
/// (a transaction, then a publish) always runs to its end. Late cycles are delayed, not bunched.
pub fn every<F, Fut>(
    name: &'static str,
    interval: Duration,
    shutdown: CancellationToken,
    mut cycle: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(
        async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => cycle().await,
                }
            }
        }
        .instrument(tracing::info_span!("loop", name)),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn runs_until_shutdown() {
        let count = Arc::new(AtomicU32::new(0));
        let shutdown = CancellationToken::new();
        let counter = count.clone();
        let handle = every("test", Duration::from_secs(1), shutdown.clone(), move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        tokio::time::sleep(Duration::from_millis(3500)).await;
        shutdown.cancel();
        handle.await.unwrap();
        // At 0, 1, 2 and 3 seconds.
        assert_eq!(count.load(Ordering::SeqCst), 4);
    }
}
