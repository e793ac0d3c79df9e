//! File states (reference: `server-jedi.md` section 3).

use panda_types::{FileStatus, StateMachine};
use proptest::prelude::*;

use crate::support;

/// Every allowed file transition (input and output files share the names).
#[rustfmt::skip]
const TABLE: &[(FileStatus, &[FileStatus])] = {
    use FileStatus::*;
    &[
        // Output files start here.
        (Defined, &[Running, Prepared, Finished, Failed, NoOutput, Cancelled]),
        // Input files start here; `failed` once their attempts are exhausted.
        (Ready, &[Picked, Missing, Lost, Broken, Failed]),
        (Picked, &[Running, Ready, Failed]),
        // `ready` again when the job ends without success and attempts remain.
        (Running, &[Prepared, Finished, Failed, Ready, NoOutput, Cancelled]),
        (Prepared, &[Merging, Finished, Failed]),
        (Merging, &[Finished, Failed]),
        (Missing, &[Ready, Broken]),
        (Lost, &[Ready, Broken]),
        (Finished, &[]),
        (Failed, &[]),
        (Broken, &[]),
        (NoOutput, &[]),
        (Cancelled, &[]),
    ]
};

#[test]
fn transition_table() {
    support::check_table(TABLE);
}

#[test]
fn transition_to_agrees_and_names_both_states() {
    support::check_transition_to::<FileStatus>();
    let error = FileStatus::NoOutput.transition_to(FileStatus::Ready).unwrap_err();
    assert_eq!(error.to_string(), "file cannot move from nooutput to ready");
}

#[test]
fn self_transitions_refused() {
    support::check_self_transitions_refused::<FileStatus>();
}

#[test]
fn names_round_trip() {
    assert_eq!(FileStatus::ENTITY, "file");
    support::check_names::<FileStatus>(&[
        "defined",
        "ready",
        "picked",
        "running",
        "prepared",
        "merging",
        "finished",
        "failed",
        "missing",
        "lost",
        "broken",
        "nooutput",
        "cancelled",
    ]);
}

#[test]
fn unknown_names_refused() {
    support::check_unknown_names::<FileStatus>();
    // Reference states we do not model.
    for name in ["partial", "staging", "notmerged"] {
        assert!(name.parse::<FileStatus>().is_err(), "{name} parsed");
    }
}

#[test]
fn final_states() {
    use FileStatus::*;
    support::check_final(&[Finished, Failed, Broken, NoOutput, Cancelled]);
}

#[test]
fn reference_paths_are_allowed() {
    use FileStatus::*;
    let input = [Ready, Picked, Running, Finished];
    let output = [Defined, Running, Prepared, Merging, Finished];
    for path in [&input[..], &output[..]] {
        for pair in path.windows(2) {
            assert!(pair[0].can_transition_to(pair[1]), "{} -> {}", pair[0], pair[1]);
        }
    }
}

#[test]
fn every_state_reachable_from_an_entry_state() {
    use FileStatus::*;
    // Output files enter as defined, input files as ready.
    support::check_all_reachable_from(&[Defined, Ready]);
}

#[test]
fn no_stuck_states() {
    support::check_no_stuck_states::<FileStatus>();
}

proptest! {
    #[test]
    fn final_states_absorb(start in prop::sample::select(FileStatus::ALL), steps in support::steps()) {
        let path = support::walk(start, &steps)?;
        support::check_path(&path, |_, _| false)?;
    }
}
