//! Job states (reference: `server-jedi.md` section 2).

use panda_types::{JobStatus, StateMachine};
use proptest::prelude::*;

use crate::support;

/// Every allowed job transition. Every non-final state may also be killed (cancelled), closed by
/// the system (reassign, expiry) or failed by a watchdog timeout.
#[rustfmt::skip]
const TABLE: &[(JobStatus, &[JobStatus])] = {
    use JobStatus::*;
    &[
        (Pending, &[Defined, Cancelled, Closed, Failed]),
        // `activated` directly when no input has to be moved.
        (Defined, &[Assigned, Activated, Cancelled, Closed, Failed]),
        (Waiting, &[Defined, Activated, Cancelled, Closed, Failed]),
        (Assigned, &[Activated, Cancelled, Closed, Failed]),
        (Activated, &[Sent, Throttled, Cancelled, Closed, Failed]),
        (Throttled, &[Activated, Cancelled, Closed, Failed]),
        // Our addition: a job whose pilot never started it returns to the queue.
        (Sent, &[Starting, Running, Activated, Cancelled, Closed, Failed]),
        (Starting, &[Running, Holding, Cancelled, Closed, Failed]),
        (Running, &[Holding, Cancelled, Closed, Failed]),
        (Holding, &[Transferring, Merging, Finished, Cancelled, Closed, Failed]),
        (Transferring, &[Finished, Cancelled, Closed, Failed]),
        (Merging, &[Finished, Cancelled, Closed, Failed]),
        (Finished, &[]),
        (Failed, &[]),
        (Cancelled, &[]),
        (Closed, &[]),
    ]
};

#[test]
fn transition_table() {
    support::check_table(TABLE);
}

#[test]
fn transition_to_agrees_and_names_both_states() {
    support::check_transition_to::<JobStatus>();
    let error = JobStatus::Finished.transition_to(JobStatus::Running).unwrap_err();
    assert_eq!(error.to_string(), "job cannot move from finished to running");
}

#[test]
fn self_transitions_refused() {
    support::check_self_transitions_refused::<JobStatus>();
}

#[test]
fn names_round_trip() {
    assert_eq!(JobStatus::ENTITY, "job");
    support::check_names::<JobStatus>(&[
        "pending",
        "defined",
        "waiting",
        "assigned",
        "activated",
        "throttled",
        "sent",
        "starting",
        "running",
        "holding",
        "transferring",
        "merging",
        "finished",
        "failed",
        "cancelled",
        "closed",
    ]);
}

#[test]
fn unknown_names_refused() {
    support::check_unknown_names::<JobStatus>();
    // Legacy states that still appear in the reference's SQL are not ours.
    for legacy in ["stagein", "stageout"] {
        assert_eq!(legacy.parse::<JobStatus>().unwrap_err().value, legacy);
    }
}

#[test]
fn final_states() {
    use JobStatus::*;
    support::check_final(&[Finished, Failed, Cancelled, Closed]);
}

#[test]
fn state_groups() {
    use JobStatus::*;
    for &state in JobStatus::ALL {
        let reportable = matches!(state, Starting | Running | Finished | Failed);
        assert_eq!(state.is_pilot_reportable(), reportable, "is_pilot_reportable({state})");
        let held = matches!(state, Sent | Starting | Running);
        assert_eq!(state.is_held_by_pilot(), held, "is_held_by_pilot({state})");
        let queued = matches!(state, Pending | Defined | Waiting | Assigned | Activated | Throttled);
        assert_eq!(state.is_queued(), queued, "is_queued({state})");
        // Queued, held by a pilot, and final never overlap.
        assert!(u8::from(queued) + u8::from(held) + u8::from(state.is_final()) <= 1, "{state} is in two groups");
    }
}

#[test]
fn normal_path_is_allowed() {
    use JobStatus::*;
    let path = [Pending, Defined, Assigned, Activated, Sent, Starting, Running, Holding, Transferring, Finished];
    for pair in path.windows(2) {
        assert!(pair[0].can_transition_to(pair[1]), "{} -> {}", pair[0], pair[1]);
    }
}

#[test]
fn every_state_reachable_from_an_entry_state() {
    use JobStatus::*;
    // `waiting` is an entry state of its own (event-service placeholders are inserted in it);
    // nothing moves a job into it, so everything else is reachable from `pending` alone.
    let from_pending = support::reachable(&[Pending]);
    let unreachable: Vec<JobStatus> = JobStatus::ALL.iter().copied().filter(|s| !from_pending.contains(s)).collect();
    assert_eq!(unreachable, [Waiting]);
    support::check_all_reachable_from(&[Pending, Waiting]);
}

#[test]
fn no_stuck_states() {
    support::check_no_stuck_states::<JobStatus>();
}

proptest! {
    #[test]
    fn final_states_absorb(start in prop::sample::select(JobStatus::ALL), steps in support::steps()) {
        let path = support::walk(start, &steps)?;
        support::check_path(&path, |_, _| false)?;
    }

    #[test]
    fn walks_from_pending_stay_legal(steps in support::steps()) {
        let path = support::walk(JobStatus::Pending, &steps)?;
        support::check_path(&path, |_, _| false)?;
        prop_assert!(!path.contains(&JobStatus::Waiting));
    }
}

/// Who may cause each transition: every (from, to) pair the state machine allows has at least
/// one actor, no actor can cause a move the state machine refuses, and the table below lists
/// every actor's moves exactly.
#[test]
fn every_allowed_job_transition_has_an_actor_and_only_the_listed_ones() {
    use JobStatus::*;
    use panda_types::JobActor::{self, *};
    let held = [Sent, Starting, Running];
    let mut expected: Vec<(JobActor, JobStatus, JobStatus)> = Vec::new();
    for from in JobStatus::ALL.iter().copied().filter(|s| !s.is_final()) {
        expected.push((User, from, Cancelled));
        expected.push((Jedi, from, Closed));
    }
    expected.extend([(User, Activated, Throttled), (User, Throttled, Activated)]);
    for from in [Pending, Defined, Waiting, Assigned, Activated, Throttled] {
        expected.push((Jedi, from, Failed));
    }
    for from in held {
        expected.push((Pilot, from, Failed));
        expected.push((Watchdog, from, Failed));
    }
    expected.extend([
        (Pilot, Sent, Starting),
        (Pilot, Sent, Running),
        (Pilot, Starting, Running),
        (Pilot, Starting, Holding),
        (Pilot, Running, Holding),
        (Jedi, Pending, Defined),
        (Jedi, Defined, Assigned),
        (Jedi, Defined, Activated),
        (Jedi, Waiting, Defined),
        (Jedi, Waiting, Activated),
        (Jedi, Assigned, Activated),
        (Server, Activated, Sent),
        (Server, Sent, Activated),
        (Server, Holding, Transferring),
        (Server, Holding, Merging),
        (Server, Holding, Finished),
        (Server, Holding, Failed),
        (Server, Transferring, Finished),
        (Server, Transferring, Failed),
        (Server, Merging, Finished),
        (Server, Merging, Failed),
        (Watchdog, Sent, Activated),
    ]);
    for actor in JobActor::ALL {
        for &from in JobStatus::ALL {
            for &to in JobStatus::ALL {
                let listed = expected.contains(&(actor, from, to));
                assert_eq!(actor.may_move(from, to), listed, "{actor:?}: {from} -> {to}");
                if listed {
                    assert!(from.can_transition_to(to), "{actor:?}: {from} -> {to} is not a transition");
                }
            }
        }
    }
    for &from in JobStatus::ALL {
        for &to in JobStatus::ALL {
            if from.can_transition_to(to) {
                assert!(JobActor::ALL.iter().any(|a| a.may_move(from, to)), "nobody may cause {from} -> {to}");
            }
        }
    }
}

#[test]
fn a_pilot_cannot_finish_cancel_or_requeue_a_job_by_itself() {
    use panda_types::JobActor::Pilot;
    assert!(!Pilot.may_move(JobStatus::Holding, JobStatus::Finished), "post-processing is the server's");
    assert!(!Pilot.may_move(JobStatus::Running, JobStatus::Cancelled), "a kill is a user's");
    assert!(!Pilot.may_move(JobStatus::Sent, JobStatus::Activated), "requeueing is the server's or watchdog's");
    assert!(!Pilot.may_move(JobStatus::Activated, JobStatus::Failed), "a pilot fails only what it holds");
}
