//! What every state enum shares: the transition check and its errors.

use std::fmt::{Debug, Display};

/// A state machine over a closed set of states.
pub trait StateMachine: Copy + Eq + Debug + Display + 'static {
    /// What kind of entity this is, for messages ("task", "job", ...).
    const ENTITY: &'static str;

    /// Whether the reference system allows moving from `self` to `next`.
    fn can_transition_to(self, next: Self) -> bool;

    /// Final states: the entity is done and (except for explicit retries) never changes again.
    fn is_final(self) -> bool;

    /// `next` if the move is allowed, otherwise a typed error naming both states.
    ///
    /// # Errors
    /// [`IllegalTransition`] when the reference does not allow `self -> next`.
    fn transition_to(self, next: Self) -> Result<Self, IllegalTransition<Self>> {
        if self.can_transition_to(next) { Ok(next) } else { Err(IllegalTransition { from: self, to: next }) }
    }
}

/// A refused state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{} cannot move from {from} to {to}", S::ENTITY)]
pub struct IllegalTransition<S: StateMachine> {
    /// State the entity is in.
    pub from: S,
    /// State that was asked for.
    pub to: S,
}

/// A state name that is not one of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}; allowed: {}", allowed.join(", "))]
pub struct UnknownState {
    /// The enum that was parsed.
    pub kind: &'static str,
    /// The text that did not match.
    pub value: String,
    /// Every valid name.
    pub allowed: Vec<&'static str>,
}
