//! Harvester worker states (reference: `harvester-pilot.md` section 2.1).

use panda_types::{StateMachine, WorkerStatus};
use proptest::prelude::*;

use crate::support;

/// Every allowed worker transition.
#[rustfmt::skip]
const TABLE: &[(WorkerStatus, &[WorkerStatus])] = {
    use WorkerStatus::*;
    &[
        // `missed` when the submission fails; `running` when the plugin reports it started at once.
        (Pending, &[Submitted, Running, Missed]),
        // A monitor may see a worker that started, stopped or ended between two checks.
        (Submitted, &[Ready, Running, Idle, Finished, Failed, Cancelled]),
        (Ready, &[Running, Finished, Failed, Cancelled]),
        // running and idle never return to submitted.
        (Running, &[Idle, Finished, Failed, Cancelled]),
        (Idle, &[Running, Finished, Failed, Cancelled]),
        (Finished, &[]),
        (Failed, &[]),
        (Cancelled, &[]),
        (Missed, &[]),
    ]
};

#[test]
fn transition_table() {
    support::check_table(TABLE);
}

#[test]
fn transition_to_agrees_and_names_both_states() {
    support::check_transition_to::<WorkerStatus>();
    let error = WorkerStatus::Running.transition_to(WorkerStatus::Submitted).unwrap_err();
    assert_eq!(error.to_string(), "worker cannot move from running to submitted");
}

#[test]
fn self_transitions_refused() {
    support::check_self_transitions_refused::<WorkerStatus>();
}

#[test]
fn names_round_trip() {
    assert_eq!(WorkerStatus::ENTITY, "worker");
    support::check_names::<WorkerStatus>(&[
        "pending",
        "submitted",
        "ready",
        "running",
        "idle",
        "finished",
        "failed",
        "cancelled",
        "missed",
    ]);
}

#[test]
fn unknown_names_refused() {
    support::check_unknown_names::<WorkerStatus>();
}

#[test]
fn final_states() {
    use WorkerStatus::*;
    support::check_final(&[Finished, Failed, Cancelled, Missed]);
}

#[test]
fn every_state_reachable_from_pending() {
    support::check_all_reachable_from(&[WorkerStatus::Pending]);
}

#[test]
fn no_stuck_states() {
    support::check_no_stuck_states::<WorkerStatus>();
}

#[test]
fn started_workers_never_return_to_submitted_or_pending() {
    use WorkerStatus::*;
    for from in [Ready, Running, Idle] {
        let back = support::reachable(&[from]);
        assert!(!back.contains(&Submitted) && !back.contains(&Pending), "{from} can go back: {back:?}");
    }
}

proptest! {
    #[test]
    fn final_states_absorb(start in prop::sample::select(WorkerStatus::ALL), steps in support::steps()) {
        let path = support::walk(start, &steps)?;
        support::check_path(&path, |_, _| false)?;
    }

    #[test]
    fn walks_from_pending_stay_legal(steps in support::steps()) {
        let path = support::walk(WorkerStatus::Pending, &steps)?;
        support::check_path(&path, |_, _| false)?;
    }
}
