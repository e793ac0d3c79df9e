//! Typed gRPC clients for the panda services. Channels connect lazily (services may start in any
//! order) with connect and per-call deadlines; [`retry`] repeats a call while the peer answers
//! UNAVAILABLE (or DEADLINE_EXCEEDED for idempotent calls), with exponential backoff.

pub mod cache;
pub mod files;

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tonic::transport::{Channel, Endpoint};

pub use panda_proto::harvester::v1::harvester_service_client::HarvesterServiceClient;
pub use panda_proto::idds::v1::hpo_service_client::HpoServiceClient;
pub use panda_proto::idds::v1::workflow_service_client::WorkflowServiceClient;
pub use panda_proto::jedi::v1::jedi_service_client::JediServiceClient;
pub use panda_proto::server::v1::brokerage_service_client::BrokerageServiceClient;
pub use panda_proto::server::v1::cache_service_client::CacheServiceClient;
pub use panda_proto::server::v1::catalog_service_client::CatalogServiceClient;
pub use panda_proto::server::v1::generation_service_client::GenerationServiceClient;
pub use panda_proto::server::v1::internal_service_client::InternalServiceClient;
pub use panda_proto::server::v1::job_service_client::JobServiceClient;
pub use panda_proto::server::v1::log_service_client::LogServiceClient;
pub use panda_proto::server::v1::pilot_service_client::PilotServiceClient;
pub use panda_proto::server::v1::release_service_client::ReleaseServiceClient;
pub use panda_proto::server::v1::share_service_client::ShareServiceClient;
pub use panda_proto::server::v1::task_service_client::TaskServiceClient;
pub use panda_proto::server::v1::worker_report_service_client::WorkerReportServiceClient;

/// A client could not be created.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL is not a valid endpoint.
    #[error("{url:?} is not a valid service URL (expected e.g. http://127.0.0.1:50051)")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// Parser error.
        #[source]
        source: tonic::transport::Error,
    },
}

/// A lazily connecting channel to `url` with deadlines.
///
/// # Errors
/// [`Error::InvalidUrl`].
pub fn channel(url: &str) -> Result<Channel, Error> {
    channel_with_timeout(url, Duration::from_secs(30))
}

/// Like [`channel`], with a per-call deadline.
///
/// # Errors
/// [`Error::InvalidUrl`].
pub fn channel_with_timeout(url: &str, timeout: Duration) -> Result<Channel, Error> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|source| Error::InvalidUrl { url: url.to_owned(), source })?
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .http2_keep_alive_interval(Duration::from_secs(30));
    Ok(endpoint.connect_lazy())
}

/// Largest message a panda service or client accepts (tonic's default is 4 MiB, less than one
/// InsertJobs call of a large task or one page of 10000 jobs).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Deadline of a whole archive upload (the 30 s call deadline would cut a large one short).
pub const ARCHIVE_TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);

/// The server's APIs.
#[derive(Debug, Clone)]
pub struct ServerClient {
    /// Tasks.
    pub tasks: TaskServiceClient<Channel>,
    /// Jobs.
    pub jobs: JobServiceClient<Channel>,
    /// Pilot protocol.
    pub pilot: PilotServiceClient<Channel>,
    /// Calls from jedi, harvester and idds.
    pub internal: InternalServiceClient<Channel>,
    /// Code archives, on a channel with [`ARCHIVE_TRANSFER_TIMEOUT`].
    pub cache: CacheServiceClient<Channel>,
    /// Jobs' stdout and stderr.
    pub logs: LogServiceClient<Channel>,
    /// The data catalog (input datasets with events and replicas).
    pub catalog: CatalogServiceClient<Channel>,
    /// Brokerage explanations.
    pub brokerage: BrokerageServiceClient<Channel>,
    /// Retries and broken tasks (JEDI).
    pub generation: GenerationServiceClient<Channel>,
    /// Harvesters' worker reports.
    pub workers: WorkerReportServiceClient<Channel>,
    /// Release of held jobs (idds, file-level dependencies).
    pub release: ReleaseServiceClient<Channel>,
    /// Global shares.
    pub shares: ShareServiceClient<Channel>,
}

impl ServerClient {
    /// Clients for the server at `url`.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`].
    pub fn new(url: &str) -> Result<Self, Error> {
        let channel = channel(url)?;
        Ok(Self {
            tasks: TaskServiceClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
            jobs: JobServiceClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
            pilot: PilotServiceClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
            logs: LogServiceClient::new(channel.clone()),
            catalog: CatalogServiceClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
            brokerage: BrokerageServiceClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
            generation: GenerationServiceClient::new(channel.clone()),
            workers: WorkerReportServiceClient::new(channel.clone()),
            release: ReleaseServiceClient::new(channel.clone()),
            shares: ShareServiceClient::new(channel.clone()),
            internal: InternalServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES),
            cache: CacheServiceClient::new(channel_with_timeout(url, ARCHIVE_TRANSFER_TIMEOUT)?),
        })
    }
}

/// Whether a failed call may be repeated: the peer is down or overloaded. DEADLINE_EXCEEDED
/// counts only for idempotent calls, where a repeat cannot do the work twice.
pub fn is_transient(status: &tonic::Status, idempotent: bool) -> bool {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::ResourceExhausted => true,
        tonic::Code::DeadlineExceeded | tonic::Code::Unknown => idempotent,
        _ => false,
    }
}

/// Repeats `call` with exponential backoff (100 ms to 5 s, `attempts` tries) while it fails
/// transiently.
///
/// # Errors
/// The last status, or the first non-transient one.
pub async fn retry<T, F, Fut>(attempts: usize, idempotent: bool, call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    call.retry(
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_max_times(attempts.saturating_sub(1))
            .with_jitter(),
    )
    .when(|status| is_transient(status, idempotent))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_url_is_reported() {
        assert!(matches!(channel("not a url"), Err(Error::InvalidUrl { .. })));
    }

    #[tokio::test]
    async fn retry_stops_on_permanent_errors() {
        let mut calls = 0;
        let result: Result<(), _> = retry(5, true, || {
            calls += 1;
            async { Err(tonic::Status::invalid_argument("bad")) }
        })
        .await;
        assert_eq!(result.unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn retry_repeats_transient_errors() {
        let mut calls = 0;
        let result = retry(5, true, || {
            calls += 1;
            let n = calls;
            async move { if n < 3 { Err(tonic::Status::unavailable("down")) } else { Ok(n) } }
        })
        .await;
        assert_eq!(result.unwrap(), 3);
    }
}
