//! ShareService: decode, call `Service::list_shares`, encode.

use panda_proto::server::v1 as wire;
use panda_proto::server::v1::share_service_server::ShareService;
use tonic::{Request, Response, Status};

use crate::service::Service;

/// Serves ShareService.
#[derive(Clone)]
pub struct ShareApi {
    service: Service,
}

impl ShareApi {
    /// An adapter over the service.
    pub fn new(service: Service) -> Self {
        Self { service }
    }
}

#[tonic::async_trait]
impl ShareService for ShareApi {
    async fn list_shares(
        &self,
        _request: Request<wire::ListSharesRequest>,
    ) -> Result<Response<wire::ListSharesResponse>, Status> {
        let usage = self.service.list_shares().await?;
        let all_running: u64 = usage.iter().map(|u| u.running).sum();
        let shares = usage
            .into_iter()
            .map(|u| wire::Share {
                running_percent: if all_running == 0 { 0.0 } else { u.running as f64 * 100.0 / all_running as f64 },
                name: u.name,
                parent: u.parent.unwrap_or_default(),
                target_percent: u.target * 100.0,
                running: u.running,
                queued: u.queued,
            })
            .collect();
        Ok(Response::new(wire::ListSharesResponse {
            shares,
            default_share: self.service.shares().default_name().to_owned(),
        }))
    }
}
