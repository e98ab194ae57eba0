//! `vpm plan`: the running agent's current plan.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use vpm::api::{self, Response};
use vpm::scheduler::Plan;

/// Output formats of `vpm plan`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PlanOutput {
    /// Tables: actions, deferred, recommendations.
    Table,
    /// The agent's answer as JSON (`plan`, `host`, `managing`, `apply`).
    Json,
}

/// Arguments of `vpm plan`.
#[derive(Args)]
pub struct PlanArgs {
    /// The agent's socket.
    #[arg(long, default_value = api::DEFAULT_SOCKET, value_name = "PATH")]
    socket: PathBuf,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    output: PlanOutput,
}

pub fn run(args: &PlanArgs) -> anyhow::Result<()> {
    let mut stream = api::connect(&args.socket)?;
    let response = api::plan(&mut stream)?;
    let Response::Plan {
        plan,
        host,
        managing,
        apply,
    } = response
    else {
        anyhow::bail!("the agent answered something else than a plan");
    };
    if args.output == PlanOutput::Json {
        let all =
            serde_json::json!({ "plan": plan, "host": host, "managing": managing, "apply": apply });
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if !managing {
        println!("no policy file: the agent manages no device (recommendations only)");
    } else if !apply {
        println!("dry run: the agent plans but does not act (start it with --apply to act)");
    }
    if plan.is_null() {
        println!("no plan yet (the agent plans every --plan-interval, 10 s by default)");
        return Ok(());
    }
    let plan: Plan = serde_json::from_value(plan).context("decoding the plan")?;
    print!("{}", render(&plan));
    Ok(())
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    t
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
        let mut t = table(&["ACTION", "VM", "PRIORITY", "REASON"]);
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
        let mut t = table(&["DEFERRED", "VM", "REASON"]);
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
        let mut t = table(&["VM", "CLASS", "CPU REQUEST/LIMIT", "MEMORY REQUEST/LIMIT"]);
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
