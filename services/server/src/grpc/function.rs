//! FunctionService: decodes requests for the Function-as-a-Task use cases
//! (`crate::service::Service::submit_work` and friends) and serves WatchResults: a transient bus
//! subscription to `function.result.<task_id>` opened before the stored results are read, so
//! that no result falls between the read and the stream.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use panda_bus::{Bus, Envelope, HandleError, Handler, Subscription};
use panda_proto::server::v1 as wire;
use panda_proto::server::v1::function_service_server::FunctionService;
use panda_types::{JobId, TaskId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::service::{MAX_CALLS_PER_READ, NewWork, Service, result_topic};

/// Serves FunctionService.
#[derive(Clone)]
pub struct FunctionApi {
    service: Service,
    bus: Bus,
    shutdown: CancellationToken,
}

impl FunctionApi {
    /// An adapter over the use cases; `bus` carries the results to watchers.
    pub fn new(service: Service, bus: Bus, shutdown: CancellationToken) -> Self {
        Self { service, bus, shutdown }
    }
}

fn required(field: &str, value: u64) -> Result<u64, Status> {
    if value == 0 { Err(Status::invalid_argument(format!("{field} is required (got 0)"))) } else { Ok(value) }
}

/// Hands the results published for one work to one watch stream.
struct Forward(mpsc::UnboundedSender<wire::FunctionResult>);

#[async_trait]
impl Handler for Forward {
    async fn handle(&self, event: &Envelope) -> Result<(), HandleError> {
        if let Ok(result) = event.decode::<wire::FunctionResult>() {
            // The stream may have ended already: nothing to do then.
            let _ = self.0.send(result);
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl FunctionService for FunctionApi {
    type WatchResultsStream = tokio_stream::wrappers::ReceiverStream<Result<wire::FunctionResult, Status>>;

    async fn submit_work(
        &self,
        request: Request<wire::SubmitWorkRequest>,
    ) -> Result<Response<wire::SubmitWorkResponse>, Status> {
        let request = request.into_inner();
        let spec = request.spec.ok_or_else(|| Status::invalid_argument("spec is required"))?;
        let key = (!request.idempotency_key.is_empty()).then_some(request.idempotency_key);
        let work = NewWork {
            task: spec.into(),
            function: request.function,
            serializer: request.serializer,
            calls: request.calls.into_iter().map(|call| (call.key, call.args)).collect(),
            warm_command: (!request.warm_command.is_empty()).then_some(request.warm_command),
        };
        let (task_id, created) = self.service.submit_work(work, key).await?;
        Ok(Response::new(wire::SubmitWorkResponse { task_id: task_id.0, created }))
    }

    async fn get_call(
        &self,
        request: Request<wire::GetCallRequest>,
    ) -> Result<Response<wire::GetCallResponse>, Status> {
        let request = request.into_inner();
        let task_id = TaskId(required("task_id", request.task_id)?);
        let (work, call) = self.service.get_call(task_id, request.index).await?;
        Ok(Response::new(wire::GetCallResponse {
            function: work.function,
            serializer: work.serializer,
            key: call.key,
            args: call.args,
        }))
    }

    async fn put_result(
        &self,
        request: Request<wire::PutResultRequest>,
    ) -> Result<Response<wire::PutResultResponse>, Status> {
        let request = request.into_inner();
        let job_id = JobId(required("job_id", request.job_id)?);
        let result = request.result.ok_or_else(|| Status::invalid_argument("result is required"))?;
        required("result.task_id", result.task_id)?;
        let stored = self.service.put_result(job_id, result).await?;
        Ok(Response::new(wire::PutResultResponse { stored }))
    }

    async fn get_calls(
        &self,
        request: Request<wire::GetCallsRequest>,
    ) -> Result<Response<wire::GetCallsResponse>, Status> {
        let request = request.into_inner();
        let task_id = TaskId(required("task_id", request.task_id)?);
        if let Some(i) = request.indexes.iter().position(|&index| index == 0) {
            return Err(Status::invalid_argument(format!("indexes[{i}] is 0; job indexes start at 1")));
        }
        let (work, calls) = self.service.get_calls(task_id, &request.indexes).await?;
        Ok(Response::new(wire::GetCallsResponse {
            function: work.function,
            serializer: work.serializer,
            calls: calls
                .into_iter()
                .map(|call| wire::IndexedCall { index: call.index, key: call.key, args: call.args })
                .collect(),
        }))
    }

    async fn put_results(
        &self,
        request: Request<wire::PutResultsRequest>,
    ) -> Result<Response<wire::PutResultsResponse>, Status> {
        let items = request.into_inner().results;
        if items.is_empty() || items.len() > MAX_CALLS_PER_READ {
            return Err(Status::invalid_argument(format!(
                "results must hold 1 to {MAX_CALLS_PER_READ} results (got {}); split them",
                items.len()
            )));
        }
        // Malformed items are answered here; the others are stored together.
        let mut answers: Vec<Option<wire::PutResultOutcome>> = Vec::with_capacity(items.len());
        let mut valid = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let job_id = item.job_id;
            let refuse = |message: String| wire::PutResultOutcome {
                job_id,
                code: tonic::Code::InvalidArgument as i32,
                message,
                stored: false,
            };
            let answer = match item.result {
                _ if job_id == 0 => Some(refuse(format!("results[{i}].job_id is required (got 0)"))),
                None => Some(refuse(format!("results[{i}].result is required"))),
                Some(result) if result.task_id == 0 => {
                    Some(refuse(format!("results[{i}].result.task_id is required (got 0)")))
                }
                Some(result) => {
                    valid.push((JobId(job_id), result));
                    None
                }
            };
            answers.push(answer);
        }
        let ids: Vec<u64> = valid.iter().map(|(job_id, _)| job_id.0).collect();
        let mut stored =
            if valid.is_empty() { Vec::new() } else { self.service.put_results(valid).await? }.into_iter().zip(ids);
        let outcomes = answers
            .into_iter()
            .map(|answer| {
                answer.unwrap_or_else(|| match stored.next() {
                    Some((Ok(stored), job_id)) => {
                        wire::PutResultOutcome { job_id, code: 0, message: String::new(), stored }
                    }
                    Some((Err(error), job_id)) => {
                        let status = Status::from(error);
                        wire::PutResultOutcome {
                            job_id,
                            code: status.code() as i32,
                            message: status.message().to_owned(),
                            stored: false,
                        }
                    }
                    None => wire::PutResultOutcome {
                        job_id: 0,
                        code: tonic::Code::Internal as i32,
                        message: "a result got no answer".to_owned(),
                        stored: false,
                    },
                })
            })
            .collect();
        Ok(Response::new(wire::PutResultsResponse { outcomes }))
    }

    async fn list_results(
        &self,
        request: Request<wire::ListResultsRequest>,
    ) -> Result<Response<wire::ListResultsResponse>, Status> {
        let task_id = TaskId(required("task_id", request.into_inner().task_id)?);
        let (results, n_calls) = self.service.list_results(task_id).await?;
        Ok(Response::new(wire::ListResultsResponse { results, n_calls }))
    }

    async fn watch_results(
        &self,
        request: Request<wire::WatchResultsRequest>,
    ) -> Result<Response<Self::WatchResultsStream>, Status> {
        let task_id = TaskId(required("task_id", request.into_inner().task_id)?);
        // Subscribe first, then read: a result stored in between arrives both ways (deduplicated).
        let (forward, mut published) = mpsc::unbounded_channel();
        let consumer = self.shutdown.child_token();
        let queue = format!("{}.{}", self.bus.queue_name("server", "results"), uuid::Uuid::new_v4().simple());
        let subscription = Subscription::transient(queue, [result_topic(task_id)]);
        self.bus
            .consume(subscription, Arc::new(Forward(forward)), consumer.clone())
            .await
            .map_err(|error| Status::unavailable(format!("cannot follow results: {error}")))?;
        let (stored, n_calls) = match self.service.list_results(task_id).await {
            Ok(found) => found,
            Err(error) => {
                consumer.cancel();
                return Err(error.into());
            }
        };
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let _stop = consumer.clone().drop_guard();
            // A call counts as answered by a success, or by a failure (a retried job's later
            // success is still sent, until the caller hangs up).
            let mut answered: HashSet<u32> = HashSet::new();
            let mut succeeded: HashSet<u32> = HashSet::new();
            for result in stored {
                answered.insert(result.index);
                if result.ok {
                    succeeded.insert(result.index);
                }
                if tx.send(Ok(result)).await.is_err() {
                    return;
                }
            }
            while answered.len() < n_calls as usize {
                let result = tokio::select! {
                    () = consumer.cancelled() => return,
                    () = tx.closed() => return,
                    result = published.recv() => match result {
                        Some(result) => result,
                        None => return,
                    },
                };
                // A repeat of what was read (stored before the read, published after) is dropped.
                if succeeded.contains(&result.index) || (!result.ok && answered.contains(&result.index)) {
                    continue;
                }
                answered.insert(result.index);
                if result.ok {
                    succeeded.insert(result.index);
                }
                if tx.send(Ok(result)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}
