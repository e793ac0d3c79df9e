//! gRPC adapters: decode the request into domain types, call the service, encode the answer.
//! No business rules live here.

mod cache;
mod catalog;
mod convert;
mod function;
mod handlers;
mod logs;
mod release;
mod shares;
mod watch;
mod workers;

pub use cache::CacheApi;
pub use catalog::{CatalogApi, GenerationApi};
pub use function::FunctionApi;
pub use handlers::Api;
pub use logs::LogApi;
pub use release::ReleaseApi;
pub use shares::ShareApi;
pub use workers::WorkerReportApi;
