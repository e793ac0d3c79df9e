//! Scaffolding every panda service shares: layered config loading (`config`), telemetry
//! (`telemetry`), the gRPC server with health, reflection and request spans (`grpc`), the
//! Prometheus admin endpoint (`metrics`), the one mapping from errors to gRPC statuses
//! (`error`), shutdown on signals (`shutdown`), periodic background loops (`task`) and programs
//! found on `PATH` (`executable`).

pub mod config;
pub mod error;
pub mod executable;
pub mod grpc;
pub mod metrics;
pub mod shutdown;
pub mod task;
pub mod telemetry;

pub use error::{ErrorCode, ServiceError, to_status};

/// Every panda binary allocates through mimalloc: the services allocate many small objects from
/// many threads (gRPC messages, rows, events), where glibc's malloc spent about a third of the
/// dispatch bench's CPU time in its own locking and consolidation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The sockets a service serves on, bound by the caller (main, `panda up` or a test with port 0).
#[derive(Debug)]
pub struct Listeners {
    /// gRPC API.
    pub grpc: tokio::net::TcpListener,
    /// `/metrics` and `/healthz`; none in tests that do not need them.
    pub admin: Option<tokio::net::TcpListener>,
}

impl Listeners {
    /// Binds both addresses.
    ///
    /// # Errors
    /// When an address is taken or not local; the message names it.
    pub async fn bind(grpc: std::net::SocketAddr, admin: Option<std::net::SocketAddr>) -> std::io::Result<Self> {
        let bind = |addr: std::net::SocketAddr| async move {
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
        };
        let grpc = bind(grpc).await?;
        let admin = match admin {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Self { grpc, admin })
    }

    /// Both on `127.0.0.1:0` (tests).
    ///
    /// # Errors
    /// When the OS refuses a socket.
    pub async fn ephemeral() -> std::io::Result<Self> {
        Self::bind(([127, 0, 0, 1], 0).into(), None).await
    }
}
