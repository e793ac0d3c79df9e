//! Behaviour tests of panda-bus against real backends, one suite per concern, each written once
//! as generic async functions and run per backend:
//!
//! - `bus_suite`: publish/consume, topic patterns, retries, dead letters, crashes and restarts on the
//!   memory bus, and on RabbitMQ with `PANDA_TEST_AMQP_URL` (ignored otherwise);
//! - `reconnect`: a consumer and a publisher survive a severed broker connection (RabbitMQ only);
//! - `outbox_suite`: the transactional outbox and its relay on SQLite, and on PostgreSQL with
//!   `PANDA_TEST_DATABASE_URL` (ignored otherwise);
//! - `idempotency_suite`: `processed_events` and the migrations on both databases.
//!
//! Every RabbitMQ test uses its own exchange and queues (named after a fresh UUID) and deletes them
//! at the end, so runs never collide. Tests poll for conditions with a generous timeout and never
//! assert on timing.

// The cases are plain async functions called by the #[tokio::test]s, which clippy's
// allow-unwrap-in-tests does not see as tests; in a test binary a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod bus_suite;
mod idempotency_suite;
mod outbox_suite;
mod reconnect;
mod support;
