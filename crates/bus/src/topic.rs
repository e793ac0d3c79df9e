//! AMQP topic matching, so the memory backend routes exactly like a RabbitMQ topic exchange:
//! keys and patterns are dot-separated words, `*` matches exactly one word and `#` zero or more.

use crate::{Error, Subscription, delivery};

/// AMQP short strings (names, routing keys) hold at most 255 bytes.
const MAX_NAME_BYTES: usize = 255;

/// Checks the names RabbitMQ would refuse, for both backends alike.
pub(crate) fn validate_subscription(sub: &Subscription) -> Result<(), Error> {
    let invalid = |reason| Error::InvalidName { what: "queue", name: sub.queue.clone(), reason };
    if sub.queue.is_empty() {
        return Err(invalid("a queue needs a name"));
    }
    if sub.queue.starts_with("amq.") {
        return Err(invalid("names starting with \"amq.\" are reserved by the broker"));
    }
    if delivery::dead_letter_queue(&sub.queue).len() > MAX_NAME_BYTES {
        return Err(invalid("at most 250 bytes (the dead-letter queue appends \".dead\")"));
    }
    for binding in &sub.bindings {
        if binding.len() > MAX_NAME_BYTES {
            return Err(Error::InvalidName { what: "binding", name: binding.clone(), reason: "at most 255 bytes" });
        }
    }
    Ok(())
}

/// Checks that an event's routing key fits AMQP.
pub(crate) fn validate_routing_key(routing_key: &str) -> Result<(), Error> {
    if routing_key.len() > MAX_NAME_BYTES {
        return Err(Error::InvalidName {
            what: "routing key",
            name: routing_key.to_owned(),
            reason: "at most 255 bytes",
        });
    }
    Ok(())
}

/// Whether `routing_key` matches `pattern`.
pub(crate) fn matches(pattern: &str, routing_key: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = routing_key.split('.').collect();
    matches_words(&pattern, &key)
}

fn matches_words(pattern: &[&str], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        // `#` either swallows nothing, or one more word and stays in place to swallow more.
        Some((&"#", rest)) => matches_words(rest, key) || (!key.is_empty() && matches_words(pattern, &key[1..])),
        Some((&word, rest)) => match key.split_first() {
            Some((&first, key_rest)) => (word == "*" || word == first) && matches_words(rest, key_rest),
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, key: &str, expected: bool) {
        assert_eq!(matches(pattern, key), expected, "pattern {pattern:?} against key {key:?}");
    }

    #[test]
    fn literal_words_must_be_equal() {
        check("task.finished", "task.finished", true);
        check("task.finished", "task.failed", false);
        check("task", "task.finished", false);
        check("task.finished", "task", false);
    }

    #[test]
    fn star_is_exactly_one_word() {
        check("task.*", "task.finished", true);
        check("task.*", "task", false);
        check("task.*", "task.finished.late", false);
        check("*.finished", "job.finished", true);
        check("*", "job", true);
        check("*", "", true); // an empty key is one empty word, as in RabbitMQ
    }

    #[test]
    fn hash_is_zero_or_more_words() {
        check("job.#", "job", true);
        check("job.#", "job.finished", true);
        check("job.#", "job.finished.late", true);
        check("job.#", "task.finished", false);
        check("#", "anything.at.all", true);
        check("#.finished", "job.finished", true);
        check("#.finished", "finished", true);
        check("a.#.z", "a.z", true);
        check("a.#.z", "a.b.c.z", true);
        check("a.#.z", "a.b.c", false);
        check("#.*", "", true);
        check("a.#.#", "a", true);
    }

    #[test]
    fn names_amqp_refuses_are_refused() {
        let ok = Subscription::new("panda.server.jobs", ["job.#"]);
        validate_subscription(&ok).unwrap();
        for queue in ["".to_owned(), "amq.gen-1".to_owned(), "q".repeat(251)] {
            let error = validate_subscription(&Subscription::new(queue.clone(), ["a"])).unwrap_err();
            assert!(matches!(error, Error::InvalidName { what: "queue", .. }), "{queue}: {error}");
        }
        let error = validate_subscription(&Subscription::new("q", ["a".repeat(256)])).unwrap_err();
        assert!(matches!(error, Error::InvalidName { what: "binding", .. }), "{error}");
        validate_routing_key(&"k".repeat(255)).unwrap();
        validate_routing_key(&"k".repeat(256)).unwrap_err();
    }
}
