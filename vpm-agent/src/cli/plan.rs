//! `vpm plan`: the running agent's current plan.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use comfy_table::Table;

use super::output::{Format, emit, new_table};
use vpm::api::{self, Response};
use vpm::forecast::adaptive::ClassHeadroom;
use vpm::scheduler::Plan;

/// Arguments of `vpm plan`.
#[derive(Args)]
pub struct PlanArgs {
    /// The agent's socket.
    #[arg(long, default_value = api::DEFAULT_SOCKET, value_name = "PATH")]
    socket: PathBuf,
    /// Output format: tables, or the agent's answer as JSON (`plan`, `host`,
    /// `managing`, `apply`, `headroom`).
    #[arg(long, value_enum, default_value = "table")]
    output: Format,
}

pub fn run(args: &PlanArgs) -> anyhow::Result<()> {
    let mut stream = api::connect(&args.socket)?;
    let response = api::plan(&mut stream)?;
    let Response::Plan {
        plan,
        host,
        managing,
        apply,
        headroom,
    } = response
    else {
        anyhow::bail!("the agent answered something else than a plan");
    };
    if args.output == Format::Json {
        let all = serde_json::json!({
            "plan": plan,
            "host": host,
            "managing": managing,
            "apply": apply,
            "headroom": headroom,
        });
        return emit(None, &format!("{}\n", serde_json::to_string_pretty(&all)?));
    }
    let mut text = String::new();
    if !managing {
        text.push_str("no policy file: the agent manages no device (recommendations only)\n");
    } else if !apply {
        text.push_str("dry run: the agent plans but does not act (start it with --apply to act)\n");
    }
    if plan.is_null() {
        text.push_str("no plan yet (the agent plans every --plan-interval, 10 s by default)\n");
        return emit(None, &text);
    }
    let plan: Plan = serde_json::from_value(plan).context("decoding the plan")?;
    text.push_str(&render(&plan));
    if let Some(t) = attachments(&host) {
        text.push_str(&format!("{t}\n"));
    }
    if let Some(t) = headroom_table(&headroom) {
        text.push_str(&format!("{t}\n"));
    }
    emit(None, &text)
}

/// The adaptive headroom of the classes with a target under-provision rate,
/// or `None` when no class sets one.
pub fn headroom_table(headroom: &[ClassHeadroom]) -> Option<Table> {
    if headroom.is_empty() {
        return None;
    }
    let mut t = new_table([
        "CLASS",
        "HORIZON",
        "TARGET ABOVE",
        "LEVEL NOW",
        "ABOVE SO FAR",
        "OUTCOMES",
    ]);
    for c in headroom {
        let held = if c.stats.outcomes == 0 {
            "-".to_owned()
        } else {
            format!("{:.1} %", 100.0 * c.stats.under_rate())
        };
        t.add_row(vec![
            c.class.clone(),
            format!("{} s", c.horizon_s),
            format!("{:.1} %", 100.0 * c.target),
            format!("{}", c.level),
            held,
            c.stats.outcomes.to_string(),
        ]);
    }
    Some(t)
}

/// The VFs hot-plugged into each VM vpm connects (from the agent's host
/// state), or `None` when no VM takes part in hot-plug.
pub fn attachments(host: &serde_json::Value) -> Option<Table> {
    let vms = host.get("vms")?.as_array()?;
    let mut t = new_table(["VM", "PID", "HOT-PLUGGED VFs"]);
    let mut any = false;
    for vm in vms {
        let Some(attached) = vm.pointer("/hotplug/attached").and_then(|a| a.as_array()) else {
            continue;
        };
        any = true;
        let list: Vec<String> = attached
            .iter()
            .map(|a| {
                let vf = a.get("vf").and_then(|v| v.as_str()).unwrap_or("?");
                let by_vpm = a.get("by_vpm").and_then(|v| v.as_bool()).unwrap_or(false);
                let age = a
                    .get("since")
                    .and_then(|v| v.as_f64())
                    .map(|s| format!(", {:.0} s", (vpm::units::unix_now() - s).max(0.0)))
                    .unwrap_or_default();
                format!(
                    "{vf} ({}{age})",
                    if by_vpm { "by vpm" } else { "not vpm's" }
                )
            })
            .collect();
        t.add_row(vec![
            vm.get("name")
                .and_then(|v| v.as_str())
                .unwrap_or("?")
                .to_owned(),
            vm.get("pid").map(|v| v.to_string()).unwrap_or_default(),
            if list.is_empty() {
                "-".to_owned()
            } else {
                list.join("\n")
            },
        ]);
    }
    any.then_some(t)
}

/// The plan's actions in one short table (for `vpm top`), at most `max`.
pub fn actions_table(plan: &Plan, max: usize) -> Option<Table> {
    if plan.actions.is_empty() {
        return None;
    }
    let mut t = new_table(["PLANNED", "VM", "REASON"]);
    for a in plan.actions.iter().take(max) {
        t.add_row(vec![
            a.action.to_string(),
            a.vm.clone().unwrap_or_default(),
            a.reason.clone(),
        ]);
    }
    Some(t)
}

/// The plan as tables.
pub fn render(plan: &Plan) -> String {
    let mut out = format!(
        "plan at {:.0} (horizon {:.0} s)\n",
        plan.generated_at, plan.horizon_s
    );
    if plan.actions.is_empty() {
        out.push_str("no actions\n");
    } else {
        let mut t = new_table(["ACTION", "VM", "PRIORITY", "REASON"]);
        for a in &plan.actions {
            t.add_row(vec![
                a.action.to_string(),
                a.vm.clone().unwrap_or_default(),
                a.priority.to_string(),
                a.reason.clone(),
            ]);
        }
        out.push_str(&format!("{t}\n"));
    }
    if !plan.deferred.is_empty() {
        let mut t = new_table(["DEFERRED", "VM", "REASON"]);
        for d in &plan.deferred {
            t.add_row(vec![
                d.action
                    .as_ref()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "shortfall".into()),
                d.vm.clone().unwrap_or_default(),
                d.reason.clone(),
            ]);
        }
        out.push_str(&format!("{t}\n"));
    }
    if !plan.recommendations.is_empty() {
        let mut t = new_table(["VM", "CLASS", "CPU REQUEST/LIMIT", "MEMORY REQUEST/LIMIT"]);
        for r in &plan.recommendations {
            let cpu = r
                .cpu
                .as_ref()
                .map(|s| format!("{:.2} / {:.2}", s.request, s.limit))
                .unwrap_or_default();
            let mem = r
                .memory
                .as_ref()
                .map(|s| {
                    format!(
                        "{:.0} / {:.0} MiB",
                        s.request / 1048576.0,
                        s.limit / 1048576.0
                    )
                })
                .unwrap_or_default();
            t.add_row(vec![r.vm.clone(), r.class.clone(), cpu, mem]);
        }
        out.push_str(&format!("{t}\n"));
    }
    out
}
