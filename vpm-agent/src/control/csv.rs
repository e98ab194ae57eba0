//! The closed loop's CSV exports (schemas in the README, times in unix seconds):
//!
//! - `plan-<ms>.csv`: `generated_at,kind,action,target,count,vm,priority,reason`
//!   — `kind` is `action` (planned) or `deferred` (wanted but not done this
//!   tick; `action` empty for a shortfall);
//! - `recommendations-<ms>.csv`: `generated_at,vm,class,cpu_request,cpu_limit,mem_request_bytes,mem_limit_bytes,reason`;
//! - `actions-<ms>.csv`: `time,action,target,count,vm,priority,outcome,elapsed_ms,reason,message`
//!   — `outcome` is `applied`, `dry-run`, `refused` or `failed`.

use std::fmt::Write as _;

use super::ActionRecord;
use crate::executor::Action;
use crate::scheduler::Plan;
use crate::store::long::{format_value, quote};

/// Header of `plan-*.csv`.
pub const PLAN_HEADER: &str = "generated_at,kind,action,target,count,vm,priority,reason";
/// Header of `recommendations-*.csv`.
pub const RECOMMENDATIONS_HEADER: &str =
    "generated_at,vm,class,cpu_request,cpu_limit,mem_request_bytes,mem_limit_bytes,reason";
/// Header of `actions-*.csv`.
pub const ACTIONS_HEADER: &str =
    "time,action,target,count,vm,priority,outcome,elapsed_ms,reason,message";

/// `(name, target, count)` of an action for the CSV columns.
pub fn columns(action: &Action) -> (&'static str, String, String) {
    match action {
        Action::SetVfs { pf, count } => ("set-vfs", pf.to_string(), count.to_string()),
        Action::Park { bdf } => ("park", bdf.to_string(), String::new()),
        Action::Wake { bdf } => ("wake", bdf.to_string(), String::new()),
        Action::Attach { vf, .. } => ("attach", vf.to_string(), String::new()),
        Action::Detach { vf, .. } => ("detach", vf.to_string(), String::new()),
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(format_value).unwrap_or_default()
}

/// Plans as CSV (header included).
pub fn plans(plans: &[Plan]) -> String {
    let mut out = format!("{PLAN_HEADER}\n");
    for p in plans {
        let t = format_value(p.generated_at);
        for a in &p.actions {
            let (name, target, count) = columns(&a.action);
            let _ = writeln!(
                out,
                "{t},action,{name},{target},{count},{},{},{}",
                quote(a.vm.as_deref().unwrap_or("")),
                a.priority,
                quote(&a.reason)
            );
        }
        for d in &p.deferred {
            let (name, target, count) =
                d.action
                    .as_ref()
                    .map(columns)
                    .unwrap_or(("", String::new(), String::new()));
            let _ = writeln!(
                out,
                "{t},deferred,{name},{target},{count},{},{},{}",
                quote(d.vm.as_deref().unwrap_or("")),
                d.priority,
                quote(&d.reason)
            );
        }
    }
    out
}

/// Recommendations of the latest plan as CSV (header included).
pub fn recommendations(plan: &Plan) -> String {
    let mut out = format!("{RECOMMENDATIONS_HEADER}\n");
    let t = format_value(plan.generated_at);
    for r in &plan.recommendations {
        let _ = writeln!(
            out,
            "{t},{},{},{},{},{},{},{}",
            quote(&r.vm),
            quote(&r.class),
            opt(r.cpu.as_ref().map(|s| s.request)),
            opt(r.cpu.as_ref().map(|s| s.limit)),
            opt(r.memory.as_ref().map(|s| s.request)),
            opt(r.memory.as_ref().map(|s| s.limit)),
            quote(&r.reason)
        );
    }
    out
}

/// Action records as CSV (header included).
pub fn actions(records: &[ActionRecord]) -> String {
    let mut out = format!("{ACTIONS_HEADER}\n");
    for r in records {
        let (name, target, count) = columns(&r.action);
        let _ = writeln!(
            out,
            "{},{name},{target},{count},{},{},{},{},{},{}",
            format_value(r.time),
            quote(r.vm.as_deref().unwrap_or("")),
            r.priority,
            r.outcome.as_str(),
            opt(r.elapsed_ms),
            quote(&r.reason),
            quote(r.message.as_deref().unwrap_or(""))
        );
    }
    out
}
