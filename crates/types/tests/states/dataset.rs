//! Dataset states (reference: `server-jedi.md` section 3).

use panda_types::{DatasetStatus, StateMachine};
use proptest::prelude::*;

use crate::support;

/// Every allowed dataset transition (input and output datasets share the names).
#[rustfmt::skip]
const TABLE: &[(DatasetStatus, &[DatasetStatus])] = {
    use DatasetStatus::*;
    &[
        // Failed: its task ended before any job wrote into it.
        (Defined, &[Ready, Running, Pending, Failed, Broken]),
        // Input: closed as done/finished/failed at task end; toupdate when contents must be re-read.
        (Ready, &[Running, Pending, ToUpdate, Done, Finished, Failed, Broken]),
        (Pending, &[Ready, Broken]),
        (ToUpdate, &[Ready, Broken]),
        // Output: written by jobs, then closed.
        (Running, &[Prepared, Done, Finished, Failed, Broken]),
        (Prepared, &[Done, Finished, Failed]),
        // Closed; a task retry (or incremental execution, for done) reopens its outputs.
        (Done, &[Running]),
        (Finished, &[Running]),
        (Failed, &[Running]),
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
    let error = DatasetStatus::Broken.transition_to(DatasetStatus::Running).unwrap_err();
    assert_eq!(error.to_string(), "dataset cannot move from broken to running");
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
    support::check_final(&[Broken]);
    for status in DatasetStatus::ALL.iter().copied() {
        assert_eq!(status.is_closed(), matches!(status, Done | Finished | Failed), "{status}");
    }
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

/// Who may cause each dataset transition: the table lists every actor's moves exactly, and every
/// move the state machine allows has exactly one kind of actor.
#[test]
fn every_allowed_dataset_transition_has_exactly_one_actor() {
    use DatasetStatus::*;
    use panda_types::DataActor::{self, *};
    let mut expected: Vec<(DataActor, DatasetStatus, DatasetStatus)> = vec![
        (Jedi, Defined, Ready),
        (Jedi, Defined, Running),
        (Jedi, Defined, Pending),
        (Jedi, Defined, Broken),
        (Jedi, Ready, Running),
        (Jedi, Ready, Pending),
        (Jedi, Ready, ToUpdate),
        (Jedi, Ready, Broken),
        (Jedi, Pending, Ready),
        (Jedi, Pending, Broken),
        (Jedi, ToUpdate, Ready),
        (Jedi, ToUpdate, Broken),
        (Jedi, Running, Broken),
        (Server, Running, Prepared),
        (Server, Defined, Failed),
    ];
    for closed in [Done, Finished, Failed] {
        for from in [Ready, Running, Prepared] {
            expected.push((Server, from, closed));
        }
        expected.push((User, closed, Running));
    }
    for actor in DataActor::ALL {
        for &from in DatasetStatus::ALL {
            for &to in DatasetStatus::ALL {
                let listed = expected.contains(&(actor, from, to));
                assert_eq!(actor.may_move_dataset(from, to), listed, "{actor:?}: {from} -> {to}");
            }
        }
    }
    for &from in DatasetStatus::ALL {
        for &to in DatasetStatus::ALL {
            let actors = DataActor::ALL.iter().filter(|a| a.may_move_dataset(from, to)).count();
            assert_eq!(actors, usize::from(from.can_transition_to(to)), "{from} -> {to}: {actors} actors");
        }
    }
}

#[test]
fn sources_are_the_states_an_actor_may_move_from() {
    use DatasetStatus::*;
    use panda_types::DataActor::*;
    assert_eq!(Server.dataset_sources(Done), vec![Ready, Running, Prepared]);
    assert_eq!(Server.dataset_sources(Failed), vec![Defined, Ready, Running, Prepared]);
    assert_eq!(User.dataset_sources(Running), vec![Done, Finished, Failed]);
    assert_eq!(Jedi.dataset_sources(Running), vec![Defined, Ready]);
    assert!(Server.dataset_sources(Running).is_empty(), "the server never reopens a dataset");
}
