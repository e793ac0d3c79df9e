//! Losing the broker connection: the consumer reconnects with backoff, the publisher on its next
//! publish. The connection runs through a local TCP proxy that the test severs, which is what a
//! broker restart or a network cut looks like to the client.

use std::sync::{Arc, Mutex};

use panda_bus::{BusConfig, Publisher};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::support::{Backend, Recorder, TestBus, amqp_url, event, eventually};

/// Forwards TCP connections to the broker until told to cut them.
struct Proxy {
    cut: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl Proxy {
    /// Starts a proxy for the broker of `url`; returns it and the URL that goes through it.
    async fn start(url: &str) -> (Self, String) {
        let authority_start = url.find('@').map_or_else(|| url.find("://").unwrap() + 3, |at| at + 1);
        let authority_end = url[authority_start..].find('/').map_or(url.len(), |slash| authority_start + slash);
        let upstream = url[authority_start..authority_end].to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxied = format!("{}{}{}", &url[..authority_start], listener.local_addr().unwrap(), &url[authority_end..]);
        let (cut, stop) = (Arc::new(Mutex::new(CancellationToken::new())), CancellationToken::new());
        let (cuts, stopped) = (cut.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let mut downstream = tokio::select! {
                    () = stopped.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap().0,
                };
                let (cut, upstream) = (cuts.lock().unwrap().clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream) => {}
                        () = cut.cancelled() => {} // dropping both sockets closes them
                    }
                });
            }
        });
        (Self { cut, stop }, proxied)
    }

    /// Cuts every open connection; new ones still go through.
    fn cut_connections(&self) {
        let mut cut = self.cut.lock().unwrap();
        cut.cancel();
        *cut = CancellationToken::new();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut_connections();
    }
}

#[tokio::test]
#[ignore = "needs RabbitMQ: set PANDA_TEST_AMQP_URL"]
async fn consumer_and_publisher_reconnect_after_the_connection_drops() {
    let (proxy, proxied_url) = Proxy::start(&amqp_url()).await;
    let bus = TestBus::with_url(Backend::Amqp, BusConfig::default(), Some(proxied_url)).await;
    let recorder = Recorder::ok();
    let _consumer = bus.consume(&bus.queue("jobs"), &["job.#"], recorder.clone()).await;
    let before = event("job.finished", "before");
    bus.publish(std::slice::from_ref(&before)).await;
    recorder.wait_for(&[&before]).await;

    proxy.cut_connections();

    // The first publish may still fail on the dead connection; a later one opens a new one.
    let after = event("job.finished", "after");
    eventually("a publish to succeed again", || async { bus.bus.publish(std::slice::from_ref(&after)).await.is_ok() })
        .await;
    // The consumer reconnects by itself and receives what was queued meanwhile.
    recorder.wait_for(&[&after]).await;
}
