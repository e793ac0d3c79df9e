//! Task states (reference: `server-jedi.md` section 1).

use panda_types::{StateMachine, TaskStatus};
use proptest::prelude::*;

use crate::support;

/// Every allowed task transition. The commands contribute to many rows: `kill` (aborting) and
/// `finish` (finishing) from every state outside the reject list, `pause` and `reassign`
/// (toreassign) from active states and pending, `pending` from active states and paused.
#[rustfmt::skip]
const TABLE: &[(TaskStatus, &[TaskStatus])] = {
    use TaskStatus::*;
    &[
        (Registered, &[Defined, ToBroken, TopReprocess, Staging, Pending, Paused, ToReassign, Aborting, Finishing]),
        (Defined, &[Assigning, Ready, ToBroken, Pending, Paused, ToReassign, Aborting, Finishing]),
        (Staging, &[Staged, Pending, Paused, ToReassign, Aborting, Finishing]),
        (Staged, &[Defined, Pending, Paused, ToReassign, Aborting, Finishing]),
        (TopReprocess, &[Preprocessing, Pending, Paused, ToReassign, Aborting, Finishing]),
        (Preprocessing, &[Registered, Pending, Paused, ToReassign, Aborting, Finishing]),
        (Assigning, &[Ready, Pending, Paused, ToReassign, Aborting, Finishing]),
        (Ready, &[Scouting, Running, Pending, Paused, ToReassign, Aborting, Finishing]),
        // `running` by the avalanche command.
        (Scouting, &[Scouted, ToBroken, Exhausted, Running, Pending, Paused, ToReassign, Aborting, Finishing]),
        (Scouted, &[Running, Pending, Paused, ToReassign, Aborting, Finishing]),
        // `defined` when an input dataset is still mutable.
        (Running, &[Prepared, Defined, Throttled, Pending, Paused, ToReassign, Aborting, Finishing]),
        (Throttled, &[Running, Pending, Paused, ToReassign, Aborting, Finishing]),
        // pending, paused and reassigning return to the active state they came from.
        (Pending, &[
            Registered, Defined, Staging, Staged, TopReprocess, Preprocessing, Assigning, Ready, Scouting, Scouted,
            Running, Throttled, Exhausted, Paused, ToReassign, Aborting, Finishing,
        ]),
        (Paused, &[
            Registered, Defined, Staging, Staged, TopReprocess, Preprocessing, Assigning, Ready, Scouting, Scouted,
            Running, Throttled, Exhausted, Pending, Aborting, Finishing,
        ]),
        (Reassigning, &[
            Registered, Defined, Staging, Staged, TopReprocess, Preprocessing, Assigning, Ready, Scouting, Scouted,
            Running, Throttled, Exhausted, Aborting, Finishing,
        ]),
        (ToReassign, &[Reassigning, Aborting, Finishing]),
        // In the reject list: only the post-processing outcomes.
        (Prepared, &[Done, Finished, Failed, Exhausted]),
        (Passed, &[Done, Finished, Failed]),
        (Aborting, &[ToAbort]),
        (ToAbort, &[Aborted]),
        (ToBroken, &[Broken]),
        // finishing is not in the reject list, so `kill` may still escalate a finish.
        (Finishing, &[Passed, Aborting]),
        // exhausted is parked, not final: retry, incexec, or the auto-finish after 48 h.
        (Exhausted, &[ToRetry, ToIncexec, Aborting, Finishing]),
        (ToRetry, &[Ready, Aborting, Finishing]),
        (ToIncexec, &[Rerefine, Aborting, Finishing]),
        (Rerefine, &[Defined, Aborting, Finishing]),
        // Final states: retry (`statusToRetry`) and incexec (`statusToIncexec` = done + retry list) only.
        (Done, &[ToIncexec]),
        (Finished, &[ToRetry, ToIncexec]),
        (Failed, &[ToRetry, ToIncexec]),
        (Aborted, &[ToRetry, ToIncexec]),
        (Broken, &[]),
    ]
};

/// The only ways out of a final task state.
fn leaves_final(from: TaskStatus, to: TaskStatus) -> bool {
    use TaskStatus::*;
    matches!((from, to), (Finished | Failed | Aborted, ToRetry) | (Done | Finished | Failed | Aborted, ToIncexec))
}

#[test]
fn transition_table() {
    support::check_table(TABLE);
}

#[test]
fn transition_to_agrees_and_names_both_states() {
    support::check_transition_to::<TaskStatus>();
    let error = TaskStatus::Broken.transition_to(TaskStatus::Running).unwrap_err();
    assert_eq!(error.to_string(), "task cannot move from broken to running");
}

#[test]
fn self_transitions_refused() {
    support::check_self_transitions_refused::<TaskStatus>();
}

#[test]
fn names_round_trip() {
    assert_eq!(TaskStatus::ENTITY, "task");
    support::check_names::<TaskStatus>(&[
        "registered",
        "defined",
        "staging",
        "staged",
        "topreprocess",
        "preprocessing",
        "assigning",
        "ready",
        "pending",
        "scouting",
        "scouted",
        "running",
        "throttled",
        "prepared",
        "finishing",
        "passed",
        "aborting",
        "toabort",
        "tobroken",
        "toretry",
        "toincexec",
        "rerefine",
        "toreassign",
        "reassigning",
        "paused",
        "exhausted",
        "done",
        "finished",
        "failed",
        "broken",
        "aborted",
    ]);
}

#[test]
fn unknown_names_refused() {
    support::check_unknown_names::<TaskStatus>();
    // The reference lists `merging` for tasks but nothing sets it; we do not have it.
    let error = "merging".parse::<TaskStatus>().unwrap_err();
    assert_eq!(error.kind, "TaskStatus");
    assert!(error.to_string().starts_with("unknown TaskStatus \"merging\"; allowed: registered, defined, "));
}

#[test]
fn final_states() {
    use TaskStatus::*;
    support::check_final(&[Done, Finished, Failed, Broken, Aborted]);
}

#[test]
fn active_states() {
    use TaskStatus::*;
    let active = [
        Registered,
        Defined,
        Staging,
        Staged,
        TopReprocess,
        Preprocessing,
        Assigning,
        Ready,
        Scouting,
        Scouted,
        Running,
        Throttled,
    ];
    for &state in TaskStatus::ALL {
        assert_eq!(state.is_active(), active.contains(&state), "is_active({state})");
    }
}

#[test]
fn command_reject_list() {
    use TaskStatus::*;
    // `statusToRejectExtChange`.
    let rejecting = [Finished, Done, Prepared, Broken, ToBroken, Aborted, ToAbort, Aborting, Failed, Passed];
    for &state in TaskStatus::ALL {
        assert_eq!(state.rejects_commands(), rejecting.contains(&state), "rejects_commands({state})");
        // kill and finish are accepted exactly outside the reject list.
        if state != Aborting {
            assert_eq!(state.can_transition_to(Aborting), !rejecting.contains(&state), "{state} -> aborting");
        }
        if state != Finishing {
            assert_eq!(state.can_transition_to(Finishing), !rejecting.contains(&state), "{state} -> finishing");
        }
    }
}

#[test]
fn normal_path_is_allowed() {
    use TaskStatus::*;
    let path = [Registered, Defined, Assigning, Ready, Scouting, Scouted, Running, Prepared, Done];
    for pair in path.windows(2) {
        assert!(pair[0].can_transition_to(pair[1]), "{} -> {}", pair[0], pair[1]);
    }
}

#[test]
fn every_state_reachable_from_registered() {
    support::check_all_reachable_from(&[TaskStatus::Registered]);
}

#[test]
fn no_stuck_states() {
    support::check_no_stuck_states::<TaskStatus>();
}

#[test]
fn broken_absorbs() {
    assert!(support::successors(TaskStatus::Broken).is_empty());
}

proptest! {
    #[test]
    fn final_states_reopen_only_by_retry_or_incexec(
        start in prop::sample::select(TaskStatus::ALL),
        steps in support::steps(),
    ) {
        let path = support::walk(start, &steps)?;
        support::check_path(&path, leaves_final)?;
    }

    #[test]
    fn walks_from_registered_stay_legal(steps in support::steps()) {
        let path = support::walk(TaskStatus::Registered, &steps)?;
        support::check_path(&path, leaves_final)?;
    }
}

/// Who may cause each task transition: every allowed move has exactly one kind of actor, and
/// the commands are the user's alone.
#[test]
fn every_allowed_task_transition_has_exactly_one_actor() {
    use panda_types::TaskActor;
    for &from in TaskStatus::ALL {
        for &to in TaskStatus::ALL {
            let actors: Vec<TaskActor> = TaskActor::ALL.into_iter().filter(|a| a.may_move(from, to)).collect();
            if from.can_transition_to(to) {
                assert_eq!(actors.len(), 1, "{from} -> {to}: {actors:?}");
            } else {
                assert!(actors.is_empty(), "{from} -> {to} is no transition, yet {actors:?} may cause it");
            }
        }
    }
}

#[test]
fn commands_are_the_users_and_post_processing_the_servers() {
    use TaskStatus::*;
    use panda_types::TaskActor::{Jedi, Server, User};
    for (from, to, actor) in [
        (Running, Aborting, User),
        (Running, Paused, User),
        (Paused, Running, User),
        (Failed, ToRetry, User),
        (Registered, Defined, Jedi),
        (Defined, Ready, Jedi),
        (Ready, Running, Jedi),
        (Running, Pending, Jedi),
        (Pending, Running, Jedi),
        (ToRetry, Ready, Jedi),
        (Running, Prepared, Server),
        (Prepared, Done, Server),
        (Aborting, ToAbort, Server),
        (ToAbort, Aborted, Server),
    ] {
        assert!(actor.may_move(from, to), "{actor:?}: {from} -> {to}");
    }
    assert!(!Jedi.may_move(Running, Aborting), "a kill is a person's");
    assert!(!User.may_move(Running, Prepared), "ending a task is post-processing");
    assert!(!Server.may_move(Registered, Defined), "refinement is JEDI's");
}
