//! Generic checks shared by the per-enum modules.

use std::collections::{BTreeSet, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::str::FromStr;

use panda_types::{
    DatasetStatus, FileStatus, IllegalTransition, JobStatus, StateMachine, TaskStatus, UnknownState, WorkerStatus,
};
use proptest::prelude::*;
use proptest::sample::Index;
use serde::de::IntoDeserializer;

/// What the macro-generated state enums share besides [`StateMachine`], so the checks can be generic.
pub trait StateEnum:
    StateMachine + Ord + Hash + Debug + FromStr<Err = UnknownState> + for<'de> serde::Deserialize<'de>
{
    /// The Rust type name, as [`UnknownState::kind`] reports it.
    const TYPE_NAME: &'static str;

    /// `ALL` of the enum.
    fn all() -> &'static [Self];

    /// `as_str` of the enum.
    fn name(self) -> &'static str;
}

macro_rules! impl_state_enum {
    ($($ty:ident),+) => {$(
        impl StateEnum for $ty {
            const TYPE_NAME: &'static str = stringify!($ty);

            fn all() -> &'static [Self] {
                $ty::ALL
            }

            fn name(self) -> &'static str {
                self.as_str()
            }
        }
    )+};
}

impl_state_enum!(TaskStatus, JobStatus, WorkerStatus, DatasetStatus, FileStatus);

/// Every state `from` may move to, in `ALL` order.
pub fn successors<S: StateEnum>(from: S) -> Vec<S> {
    S::all().iter().copied().filter(|&to| from.can_transition_to(to)).collect()
}

/// Compares `can_transition_to` over every (from, to) pair with `expected`, which must list every
/// state exactly once with all the states it may move to. Reports every difference at once.
pub fn check_table<S: StateEnum>(expected: &[(S, &[S])]) {
    let keys: Vec<S> = expected.iter().map(|(from, _)| *from).collect();
    let key_set: BTreeSet<S> = keys.iter().copied().collect();
    assert_eq!(keys.len(), key_set.len(), "the expected table lists a state twice: {keys:?}");
    let all: BTreeSet<S> = S::all().iter().copied().collect();
    assert_eq!(key_set, all, "the expected table must have one row per state");

    let mut differences = Vec::new();
    for &(from, targets) in expected {
        let targets: BTreeSet<S> = targets.iter().copied().collect();
        assert!(!targets.contains(&from), "the expected table allows {from} -> {from}");
        for &to in S::all() {
            let want = targets.contains(&to);
            let got = from.can_transition_to(to);
            if want != got {
                differences.push(format!("{from} -> {to}: code says {got}, table says {want}"));
            }
        }
    }
    assert!(differences.is_empty(), "{} transition table differs:\n{}", S::ENTITY, differences.join("\n"));
}

/// `transition_to` agrees with `can_transition_to` everywhere, and a refusal names the entity and
/// both states.
pub fn check_transition_to<S: StateEnum>() {
    for &from in S::all() {
        for &to in S::all() {
            match from.transition_to(to) {
                Ok(next) => {
                    assert!(from.can_transition_to(to), "{from} -> {to} accepted but not allowed");
                    assert_eq!(next, to);
                }
                Err(error) => {
                    assert!(!from.can_transition_to(to), "{from} -> {to} refused but allowed");
                    assert_eq!(error, IllegalTransition { from, to });
                    let message = error.to_string();
                    assert!(message.starts_with(S::ENTITY), "{message:?} does not start with {:?}", S::ENTITY);
                    assert!(message.contains(&format!("from {}", from.name())), "{message:?} does not name {from}");
                    assert!(message.contains(&format!("to {}", to.name())), "{message:?} does not name {to}");
                }
            }
        }
    }
}

/// No state may move to itself.
pub fn check_self_transitions_refused<S: StateEnum>() {
    for &state in S::all() {
        assert!(!state.can_transition_to(state), "{state} -> {state} is allowed");
        assert_eq!(state.transition_to(state), Err(IllegalTransition { from: state, to: state }));
    }
}

/// `as_str`, `Display`, `FromStr` and serde agree for every state, and the names are distinct
/// lowercase words.
pub fn check_names<S: StateEnum>(expected: &[&str]) {
    let names: Vec<&str> = S::all().iter().map(|s| s.name()).collect();
    assert_eq!(names, expected, "{} names (in declaration order)", S::TYPE_NAME);
    for &state in S::all() {
        let name = state.name();
        assert!(!name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase()), "{name:?} is not a lowercase word");
        assert_eq!(state.to_string(), name);
        assert_eq!(name.parse::<S>(), Ok(state));
        let deserializer: serde::de::value::StrDeserializer<'_, serde::de::value::Error> = name.into_deserializer();
        assert_eq!(S::deserialize(deserializer).ok(), Some(state), "serde name of {state:?}");
    }
}

/// Unknown names, including near misses of real ones, are refused with an error listing every
/// valid name.
pub fn check_unknown_names<S: StateEnum>() {
    let first = S::all()[0].name();
    let near_misses = [
        String::new(),
        "no-such-state".to_owned(),
        first.to_uppercase(),
        format!(" {first}"),
        format!("{first} "),
        format!("{first}s"),
    ];
    let allowed: Vec<&str> = S::all().iter().map(|s| s.name()).collect();
    for value in near_misses {
        let error = value.parse::<S>().expect_err(&format!("{value:?} parsed as a {}", S::TYPE_NAME));
        assert_eq!(error, UnknownState { kind: S::TYPE_NAME, value: value.clone(), allowed: allowed.clone() });
        let message = error.to_string();
        assert!(message.contains(&format!("{value:?}")), "{message:?} does not quote {value:?}");
        assert!(message.contains(&allowed.join(", ")), "{message:?} does not list the allowed names");
    }
}

/// `is_final` holds exactly for `expected`.
pub fn check_final<S: StateEnum>(expected: &[S]) {
    for &state in S::all() {
        assert_eq!(state.is_final(), expected.contains(&state), "is_final({state})");
    }
}

/// Every state reachable from `starts` through allowed transitions (the starts included).
pub fn reachable<S: StateEnum>(starts: &[S]) -> BTreeSet<S> {
    let mut seen: BTreeSet<S> = starts.iter().copied().collect();
    let mut queue: VecDeque<S> = starts.iter().copied().collect();
    while let Some(state) = queue.pop_front() {
        for next in successors(state) {
            if seen.insert(next) {
                queue.push_back(next);
            }
        }
    }
    seen
}

/// Every state can be reached from `starts`.
pub fn check_all_reachable_from<S: StateEnum>(starts: &[S]) {
    let reached = reachable(starts);
    let missing: Vec<S> = S::all().iter().copied().filter(|s| !reached.contains(s)).collect();
    assert!(missing.is_empty(), "{} states unreachable from {starts:?}: {missing:?}", S::ENTITY);
}

/// From every non-final state some final state can be reached: nothing gets stuck.
pub fn check_no_stuck_states<S: StateEnum>() {
    for &state in S::all().iter().filter(|s| !s.is_final()) {
        assert!(
            reachable(&[state]).iter().any(|s| s.is_final()),
            "no final {} state is reachable from {state}",
            S::ENTITY
        );
    }
}

/// One step of a random walk.
#[derive(Debug, Clone)]
pub enum Step {
    /// Move to one of the allowed successors (or try any state when there is none).
    Legal(Index),
    /// Try any state, allowed or not.
    Any(Index),
}

/// Random walks of up to 64 steps, about half of them legal moves so the walk gets somewhere.
pub fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(prop_oneof![any::<Index>().prop_map(Step::Legal), any::<Index>().prop_map(Step::Any)], 0..64)
}

/// Applies `steps` from `start` through `transition_to` and returns the states visited. A refused
/// target leaves the state unchanged; every attempt must agree with `can_transition_to`.
pub fn walk<S: StateEnum>(start: S, steps: &[Step]) -> Result<Vec<S>, TestCaseError> {
    let mut path = vec![start];
    let mut state = start;
    for step in steps {
        let target = match step {
            Step::Legal(index) => {
                let next = successors(state);
                if next.is_empty() { *index.get(S::all()) } else { *index.get(&next) }
            }
            Step::Any(index) => *index.get(S::all()),
        };
        match state.transition_to(target) {
            Ok(next) => {
                prop_assert!(state.can_transition_to(target));
                prop_assert_eq!(next, target);
                path.push(next);
                state = next;
            }
            Err(error) => {
                prop_assert!(!state.can_transition_to(target));
                prop_assert_eq!(error, IllegalTransition { from: state, to: target });
            }
        }
    }
    Ok(path)
}

/// Checks a walk: every step was an allowed transition, every state on it is reachable from its
/// start, and a step out of a final state is one that `leaves_final` permits.
pub fn check_path<S: StateEnum>(path: &[S], leaves_final: impl Fn(S, S) -> bool) -> Result<(), TestCaseError> {
    let reached = reachable(&path[..1]);
    for pair in path.windows(2) {
        let (from, to) = (pair[0], pair[1]);
        prop_assert!(from.can_transition_to(to), "{} -> {} taken but not allowed", from, to);
        prop_assert!(reached.contains(&to), "{} is not reachable from {}", to, path[0]);
        if from.is_final() {
            prop_assert!(leaves_final(from, to), "left final state {} for {}", from, to);
        }
    }
    Ok(())
}
