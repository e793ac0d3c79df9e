//! gRPC adapters: decode the request into domain types, call the service, encode the answer.
//! No business rules live here.

mod convert;
mod handlers;
mod watch;

pub use handlers::Api;
