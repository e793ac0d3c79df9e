//! `[<service>.bus]`: which bus to use and how it behaves.

use serde::{Deserialize, Serialize};

use crate::Error;

/// `[<service>.bus]`. The defaults are the embedded mode: the in-process bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// RabbitMQ URL such as `amqp://guest:guest@127.0.0.1:5672/%2f` (the `%2f` is the default
    /// vhost `/`); unset: the in-process bus, which only works when every service runs in one
    /// process.
    pub url: Option<String>,
    /// The durable topic exchange every event is published to.
    pub exchange: String,
    /// How many unacknowledged events the broker may push to one consumer ahead of the one being
    /// handled (AMQP `basic.qos`; 1..=65535).
    pub prefetch: u16,
    /// How many times an event is handed to a handler that answers
    /// [`HandleError::Retry`](crate::HandleError::Retry) (or panics) before it is dead-lettered to
    /// `<queue>.dead` (at least 1).
    pub max_deliveries: u32,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self { url: None, exchange: "panda.events".to_owned(), prefetch: 32, max_deliveries: 5 }
    }
}

impl BusConfig {
    /// Checks the values that parse but cannot work, reporting every problem at once.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] listing the problems.
    pub fn validate(&self) -> Result<(), Error> {
        let mut problems = Vec::new();
        if let Some(url) = &self.url
            && !(url.starts_with("amqp://") || url.starts_with("amqps://"))
        {
            problems.push(format!("bus.url = {:?}: must start with amqp:// or amqps://", panda_db::redact(url)));
        }
        if self.exchange.is_empty() || self.exchange.len() > 255 {
            problems.push(format!("bus.exchange = {:?}: must be 1 to 255 bytes long", self.exchange));
        }
        if self.prefetch == 0 {
            // AMQP reads 0 as "unlimited", which would let one consumer hoard a whole queue.
            problems.push("bus.prefetch = 0: must be 1..=65535".to_owned());
        }
        if self.max_deliveries == 0 {
            problems.push("bus.max_deliveries = 0: must be at least 1".to_owned());
        }
        if problems.is_empty() { Ok(()) } else { Err(Error::InvalidConfig { problems: problems.join("; ") }) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_embedded_mode() {
        let config = BusConfig::default();
        assert_eq!(config.url, None);
        assert_eq!(config.exchange, "panda.events");
        assert_eq!((config.prefetch, config.max_deliveries), (32, 5));
        config.validate().unwrap();
    }

    #[test]
    fn parses_partial_toml_over_defaults() {
        let config: BusConfig =
            toml::from_str("url = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\nprefetch = 4").unwrap();
        assert_eq!(config.url.as_deref(), Some("amqp://guest:guest@127.0.0.1:5672/%2f"));
        assert_eq!(config.prefetch, 4);
        assert_eq!(config.exchange, "panda.events");
    }

    #[test]
    fn rejects_unknown_keys() {
        let error = toml::from_str::<BusConfig>("prefech = 4").unwrap_err();
        assert!(error.to_string().contains("prefech"), "{error}");
    }

    #[test]
    fn reports_every_problem_at_once() {
        let config = BusConfig {
            url: Some("http://u:secret@host".to_owned()),
            exchange: String::new(),
            prefetch: 0,
            max_deliveries: 0,
        };
        let message = config.validate().unwrap_err().to_string();
        for needle in ["bus.url", "bus.exchange", "bus.prefetch", "bus.max_deliveries"] {
            assert!(message.contains(needle), "{needle} missing from {message}");
        }
        assert!(!message.contains("secret"), "{message}");
    }
}
