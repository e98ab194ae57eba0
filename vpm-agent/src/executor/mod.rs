//! The executor: carries out device actions through the [`hal`](crate::hal),
//! after the safety rules of [`guard`] (enforced here, whatever the caller asks).
//!
//! [`execute`] gathers the [`facts`] about the target, checks them, and then
//! either describes what it would do (dry run, the default everywhere) or does
//! it and reports each step's timing.

pub mod action;
pub mod apply;
pub mod facts;
pub mod guard;
pub mod journal;

use serde::Serialize;

pub use action::Action;
pub use apply::{ApplyError, ApplyOptions, Step};
pub use facts::{Facts, Roots};
pub use guard::Refusal;
pub use journal::{Journal, JournalError};

use crate::hal::HalError;
use crate::policy::Policy;

/// What [`execute`] did or would do.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The action.
    pub action: Action,
    /// Whether it was carried out (`false`: dry run).
    pub applied: bool,
    /// The steps, planned (dry run) or done with their timings.
    pub steps: Vec<Step>,
}

/// Why [`execute`] did not carry out an action.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    /// Acting needs root.
    #[error(
        "{action} needs root: vpm writes sysfs and must see every process's open files to          know who holds a device (run it with sudo, or without --apply for a dry run)"
    )]
    NotRoot {
        /// The action.
        action: Action,
    },
    /// The facts could not be read.
    #[error("reading the state of {bdf}: {source}")]
    Facts {
        /// The target.
        bdf: crate::hal::Bdf,
        /// The HAL error.
        #[source]
        source: HalError,
    },
    /// The safety rules refuse the action.
    #[error("refusing to {action}: {}", .refusals.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Refused {
        /// The action.
        action: Action,
        /// Every rule it breaks.
        refusals: Vec<Refusal>,
    },
    /// The journal could not record the action (nothing was done if the
    /// intent could not be written).
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Carrying it out failed.
    #[error("{action} failed: {source}")]
    Failed {
        /// The action.
        action: Action,
        /// What failed.
        #[source]
        source: ApplyError,
    },
}

/// Checks `action` against the safety rules and carries it out when `apply`
/// (else only says what it would do). With a journal, an applied action is
/// journaled before (intent) and after (read-back or failure).
pub fn execute(
    roots: &Roots,
    policy: Option<&Policy>,
    action: Action,
    apply: bool,
    opts: &ApplyOptions,
    journal: Option<&mut Journal>,
) -> Result<Report, ExecuteError> {
    check_privileges(action, apply)?;
    let bdf = action.target();
    let facts =
        facts::gather(roots, policy, bdf).map_err(|source| ExecuteError::Facts { bdf, source })?;
    let refusals = guard::check(&action, &facts);
    if !refusals.is_empty() {
        return Err(ExecuteError::Refused { action, refusals });
    }
    if !apply {
        return Ok(Report {
            action,
            applied: false,
            steps: apply::steps(&action, &facts),
        });
    }
    let Some(journal) = journal else {
        let steps = apply::apply(&roots.sys, &action, &facts, opts)
            .map_err(|source| ExecuteError::Failed { action, source })?;
        return Ok(Report {
            action,
            applied: true,
            steps,
        });
    };
    let seq = journal.intent(crate::units::unix_now(), action)?;
    let result = apply::apply(&roots.sys, &action, &facts, opts);
    let state = journal::DeviceState::read(&roots.sys, bdf).ok();
    let (phase, note) = match &result {
        Ok(_) => (journal::Phase::Done, None),
        Err(e) => (journal::Phase::Failed, Some(e.to_string())),
    };
    journal.append(&journal::Entry {
        seq,
        time: crate::units::unix_now(),
        phase,
        action,
        state,
        note,
    })?;
    let steps = result.map_err(|source| ExecuteError::Failed { action, source })?;
    Ok(Report {
        action,
        applied: true,
        steps,
    })
}

/// Acting (`apply`) needs root: holders in other users' processes are invisible
/// otherwise, so the safety rules could not be trusted.
pub fn check_privileges(action: Action, apply: bool) -> Result<(), ExecuteError> {
    if apply && !effective_root() {
        return Err(ExecuteError::NotRoot { action });
    }
    Ok(())
}

/// Whether the process runs as root (holders of other users' processes are
/// invisible otherwise, so the safety checks could not be trusted).
fn effective_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
