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
        // A task retry expects the output again, or makes the input usable again.
        (Failed, &[Defined, Ready]),
        (Broken, &[]),
        (NoOutput, &[Defined]),
        (Cancelled, &[Defined]),
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
    assert!(FileStatus::Finished.transition_to(FileStatus::Defined).is_err(), "a produced file stays produced");
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
    support::check_final(&[Finished, Broken]);
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

/// Who may cause each file transition: the table lists every actor's moves exactly; every move
/// the state machine allows has an actor, and only retries have two (the user's retry command
/// and JEDI's automatic retry).
#[test]
fn every_allowed_file_transition_has_an_actor_and_only_the_listed_ones() {
    use FileStatus::*;
    use panda_types::DataActor::{self, *};
    let mut expected: Vec<(DataActor, FileStatus, FileStatus)> = vec![
        // Generation: picked for a job, released when generation is undone, exhausted.
        (Jedi, Ready, Picked),
        (Jedi, Ready, Failed),
        (Jedi, Picked, Ready),
        (Jedi, Picked, Failed),
        // Availability of inputs.
        (Jedi, Ready, Missing),
        (Jedi, Ready, Lost),
        (Jedi, Ready, Broken),
        (Jedi, Missing, Ready),
        (Jedi, Missing, Broken),
        (Jedi, Lost, Ready),
        (Jedi, Lost, Broken),
        // Files follow their job.
        (Server, Picked, Running),
        (Server, Prepared, Merging),
        (Server, Prepared, Finished),
        (Server, Prepared, Failed),
        (Server, Merging, Finished),
        (Server, Merging, Failed),
    ];
    for to in [Running, Prepared, Finished, Failed, NoOutput, Cancelled] {
        expected.push((Server, Defined, to));
    }
    for to in [Prepared, Finished, Failed, Ready, NoOutput, Cancelled] {
        expected.push((Server, Running, to));
    }
    for (from, to) in [(Failed, Defined), (Failed, Ready), (NoOutput, Defined), (Cancelled, Defined)] {
        expected.push((User, from, to));
        expected.push((Jedi, from, to));
    }
    for actor in DataActor::ALL {
        for &from in FileStatus::ALL {
            for &to in FileStatus::ALL {
                let listed = expected.contains(&(actor, from, to));
                assert_eq!(actor.may_move_file(from, to), listed, "{actor:?}: {from} -> {to}");
            }
        }
    }
    for &from in FileStatus::ALL {
        for &to in FileStatus::ALL {
            if from.can_transition_to(to) {
                assert!(DataActor::ALL.iter().any(|a| a.may_move_file(from, to)), "nobody may cause {from} -> {to}");
            }
        }
    }
}

#[test]
fn a_pilot_report_never_moves_a_file_directly() {
    // There is no pilot actor: outputs move only through the server's post-processing.
    use panda_types::DataActor::*;
    assert_eq!(
        Server.file_sources(FileStatus::Finished),
        vec![FileStatus::Defined, FileStatus::Running, FileStatus::Prepared, FileStatus::Merging]
    );
    assert!(Server.file_sources(FileStatus::Defined).is_empty(), "only a retry expects a file again");
}
