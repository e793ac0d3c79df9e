//! Dataset states (reference: `server-jedi.md` section 3).

use panda_types::{DatasetStatus, StateMachine};
use proptest::prelude::*;

use crate::support;

/// Every allowed dataset transition (input and output datasets share the names).
#[rustfmt::skip]
const TABLE: &[(DatasetStatus, &[DatasetStatus])] = {
    use DatasetStatus::*;
    &[
        (Defined, &[Ready, Running, Pending, Broken]),
        // Input: closed as done/finished/failed at task end; toupdate when contents must be re-read.
        (Ready, &[Running, Pending, ToUpdate, Done, Finished, Failed, Broken]),
        (Pending, &[Ready, Broken]),
        (ToUpdate, &[Ready, Broken]),
        // Output: written by jobs, then closed.
        (Running, &[Prepared, Done, Finished, Failed, Broken]),
        (Prepared, &[Done, Finished, Failed]),
        (Done, &[]),
        (Finished, &[]),
        (Failed, &[]),
        (Broken, &[]),
    ]
};

#[test]
fn transition_table() {
    support::check_table(TABLE);
}

#[test]
fn transition_to_agrees_and_names_both_states() {
    support::check_transition_to::<DatasetStatus>();
    let error = DatasetStatus::Done.transition_to(DatasetStatus::Ready).unwrap_err();
    assert_eq!(error.to_string(), "dataset cannot move from done to ready");
}

#[test]
fn self_transitions_refused() {
    support::check_self_transitions_refused::<DatasetStatus>();
}

#[test]
fn names_round_trip() {
    assert_eq!(DatasetStatus::ENTITY, "dataset");
    support::check_names::<DatasetStatus>(&[
        "defined", "ready", "pending", "toupdate", "running", "prepared", "done", "finished", "failed", "broken",
    ]);
}

#[test]
fn unknown_names_refused() {
    support::check_unknown_names::<DatasetStatus>();
}

#[test]
fn final_states() {
    use DatasetStatus::*;
    support::check_final(&[Done, Finished, Failed, Broken]);
}

#[test]
fn reference_paths_are_allowed() {
    use DatasetStatus::*;
    let input = [Defined, Ready, Done];
    let output = [Defined, Ready, Running, Prepared, Done];
    for path in [&input[..], &output[..]] {
        for pair in path.windows(2) {
            assert!(pair[0].can_transition_to(pair[1]), "{} -> {}", pair[0], pair[1]);
        }
    }
}

#[test]
fn every_state_reachable_from_defined() {
    support::check_all_reachable_from(&[DatasetStatus::Defined]);
}

#[test]
fn no_stuck_states() {
    support::check_no_stuck_states::<DatasetStatus>();
}

proptest! {
    #[test]
    fn final_states_absorb(start in prop::sample::select(DatasetStatus::ALL), steps in support::steps()) {
        let path = support::walk(start, &steps)?;
        support::check_path(&path, |_, _| false)?;
    }
}
