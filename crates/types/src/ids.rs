//! Identifiers. Never a bare integer or string across a module boundary.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! int_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

int_id!(
    /// A task (the reference's jediTaskID).
    TaskId
);
int_id!(
    /// A job (the reference's PandaID).
    JobId
);

/// A queue name (the reference's PanDA queue / computingSite): `[A-Za-z0-9._-]`, 1..=100 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QueueName(String);

impl QueueName {
    /// Checks the name.
    ///
    /// # Errors
    /// A message saying what is wrong with the name.
    pub fn new(name: impl Into<String>) -> Result<Self, String> {
        let name = name.into();
        check_name(&name, 100)?;
        Ok(Self(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for QueueName {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<QueueName> for String {
    fn from(value: QueueName) -> Self {
        value.0
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a name made of `[A-Za-z0-9._-]` with a length limit.
///
/// # Errors
/// A message naming the problem and what is allowed.
pub fn check_name(name: &str, max_len: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > max_len {
        return Err(format!("must be at most {max_len} characters (got {})", name.len()));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!("{name:?} contains {bad:?}; allowed are letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `check_name(name, max_len)` gives `expected` (`Ok(())` or the exact message).
    fn check(name: &str, max_len: usize, expected: Result<(), &str>) {
        assert_eq!(check_name(name, max_len), expected.map_err(str::to_owned), "{name:?}");
    }

    #[test]
    fn names() {
        check("a", 1, Ok(()));
        check("CERN-PROD_UCORE.v2", 100, Ok(()));
        check("0123456789", 10, Ok(()));
        check("", 10, Err("must not be empty"));
        check("abc", 2, Err("must be at most 2 characters (got 3)"));
        check("a b", 10, Err("\"a b\" contains ' '; allowed are letters, digits, '.', '_' and '-'"));
        check("a/b:c", 10, Err("\"a/b:c\" contains '/'; allowed are letters, digits, '.', '_' and '-'"));
        check("é", 10, Err("\"é\" contains 'é'; allowed are letters, digits, '.', '_' and '-'"));
        // The limit counts bytes.
        check("éé", 3, Err("must be at most 3 characters (got 4)"));
    }

    #[test]
    fn queue_names() {
        let queue = QueueName::new("BNL_PROD").unwrap();
        assert_eq!(queue.as_str(), "BNL_PROD");
        assert_eq!(queue.to_string(), "BNL_PROD");
        assert_eq!(String::from(queue.clone()), "BNL_PROD");
        assert_eq!(QueueName::try_from("BNL_PROD".to_owned()), Ok(queue));
        assert!(QueueName::new("q".repeat(100)).is_ok());
        assert_eq!(QueueName::new("q".repeat(101)), Err("must be at most 100 characters (got 101)".to_owned()));
        assert_eq!(QueueName::try_from(String::new()), Err("must not be empty".to_owned()));
    }

    #[test]
    fn integer_ids_display_as_numbers() {
        assert_eq!(TaskId(4711).to_string(), "4711");
        assert_eq!(JobId(u64::MAX).to_string(), u64::MAX.to_string());
        assert!(TaskId(1) < TaskId(2));
    }
}
