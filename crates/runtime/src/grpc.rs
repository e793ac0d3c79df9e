//! The gRPC server every service runs: request spans, `grpc.health.v1` health, server
//! reflection over every panda descriptor, and graceful shutdown that first reports NOT_SERVING.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::{Router, TcpIncoming};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Serving failed.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// The transport failed.
    #[error("gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not load the descriptors (a build problem).
    #[error("gRPC reflection could not load the panda descriptors")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A router with health and reflection installed, plus the reporter that flips health.
pub struct GrpcServer {
    /// Add the service's own APIs with `router.add_service(..)`.
    pub router: Router,
    /// Flip to serving once migrations ran and the bus is up.
    pub health: HealthReporter,
}

/// Starts a router for `service` (the name used in log spans).
///
/// # Errors
/// [`GrpcError::Reflection`] if the embedded descriptors are broken.
pub fn server(service: &'static str) -> Result<GrpcServer, GrpcError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(panda_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let router = Server::builder()
        .timeout(Duration::from_secs(120))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .trace_fn(move |request| tracing::info_span!("rpc", service, method = %request.uri().path()))
        .add_service(health_service)
        .add_service(reflection);
    Ok(GrpcServer { router, health })
}

/// Serves until `shutdown` is cancelled: marks every service serving, then NOT_SERVING on
/// shutdown so load balancers drain, then stops accepting and finishes in-flight calls.
///
/// # Errors
/// [`GrpcError::Transport`] when the listener fails.
pub async fn serve(server: GrpcServer, listener: TcpListener, shutdown: CancellationToken) -> Result<(), GrpcError> {
    let GrpcServer { router, health } = server;
    health.set_service_status("", ServingStatus::Serving).await;
    let drain = {
        let health = health.clone();
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            health.set_service_status("", ServingStatus::NotServing).await;
        }
    };
    router.serve_with_incoming_shutdown(incoming(listener), drain).await?;
    Ok(())
}

/// The connections `listener` accepts, each with TCP_NODELAY: with Nagle's algorithm a reply
/// written in two pieces (headers, then data) waits for the peer's delayed ACK, about 40 ms per
/// call. Tonic sets it only for listeners it binds itself, not for one handed over like this.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    #[tokio::test]
    async fn accepted_connections_do_not_wait_for_the_peers_ack() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut accepted = incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let server_side = accepted.next().await.expect("a connection").expect("accepted");
        assert!(server_side.nodelay().expect("TCP_NODELAY readable"), "Nagle's algorithm is on");
    }
}
