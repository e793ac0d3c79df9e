//! State machine tests for every state enum of `panda-types`, in one test binary.
//!
//! Each module writes the allowed transitions of one enum out in full and compares them with
//! `can_transition_to` over every (from, to) pair, so any change to a transition table has to be
//! made twice: once in the code and once here, next to the reference it follows. `support` holds
//! the generic checks (table, errors, names, reachability, random walks) they share.

mod support;

mod dataset;
mod file;
mod job;
mod task;
mod worker;
