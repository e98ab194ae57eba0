//! What a plan holds: actions with their reasons, what was held back and
//! why, and per-VM CPU and memory recommendations.

use serde::{Deserialize, Serialize};

use crate::executor::Action;

/// The scheduler's plan for one tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// When it was made, unix seconds (the `now` it was made for).
    pub generated_at: f64,
    /// How far ahead it looked, seconds.
    pub horizon_s: f64,
    /// The actions to take, in order (highest priority first), at most
    /// `[plan] max_actions_per_tick`.
    pub actions: Vec<PlannedAction>,
    /// What the plan wanted but did not do this tick, and why (a dwell not
    /// over, a held VF, the action budget, a pool too small for the demand).
    pub deferred: Vec<Deferred>,
    /// Per-VM CPU and memory recommendations (not acted on), by VM name.
    pub recommendations: Vec<Recommendation>,
}

/// One action of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedAction {
    /// The action.
    pub action: Action,
    /// Why, for an operator.
    pub reason: String,
    /// The VM whose predicted demand it serves, if one does (parks and
    /// shrinks serve none).
    pub vm: Option<String>,
    /// The priority of that VM's class (0 for housekeeping).
    pub priority: u32,
    /// Whether it cuts a dwell short (a wake of a device parked less than
    /// `[dwell] parked_s` ago, a pool regrown within `vf_count_s` of a
    /// shrink); only for a class with `preempt_dwell`, and the reason says so.
    pub breaks_dwell: bool,
}

/// Something the plan wanted but did not do this tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deferred {
    /// The action it would have taken (`None` when no action could help,
    /// e.g. a PF with too few VFs for every VM's demand).
    pub action: Option<Action>,
    /// Why not.
    pub reason: String,
    /// The VM whose demand is affected, if one is.
    pub vm: Option<String>,
    /// The priority of that VM's class (0 for housekeeping).
    pub priority: u32,
}

/// A request and a limit for one resource (VPA-like).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sizing {
    /// What the VM is expected to use: the largest point forecast within the
    /// horizon, rounded up.
    pub request: f64,
    /// What it may need at most: the largest upper bound within the horizon,
    /// rounded up (never below `request`).
    pub limit: f64,
}

/// CPU and memory sizing for one VM, from its forecasts (vpm does not resize
/// VMs; these are for operators and other tools).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// The VM.
    pub vm: String,
    /// Its QoS class.
    pub class: String,
    /// CPU in cores (rounded up to 0.01), when forecast.
    pub cpu: Option<Sizing>,
    /// Memory in bytes (rounded up to MiB), when forecast.
    pub memory: Option<Sizing>,
    /// How the numbers were made, for an operator.
    pub reason: String,
}
