//! `vpm eval`: rolling-origin evaluation of every model on a telemetry file.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use comfy_table::{Cell, Table, presets::UTF8_FULL_CONDENSED};
use vpm::forecast::EvalOptions;
use vpm::offline::{self, EvalReport};

use super::output::{self, Format};
use super::{InputArgs, durations};

/// Arguments of `vpm eval`.
#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    input: InputArgs,
    /// Horizons to evaluate, comma-separated (rounded up to whole steps).
    #[arg(long, default_value = "10s,60s", value_parser = durations, value_name = "DURATIONS")]
    horizons: super::Durations,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Write to FILE instead of stdout.
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    out: Option<PathBuf>,
}

pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    // A typo in -o must not cost the whole run.
    if let Some(out) = &args.out {
        vpm::export::check_writable(out)?;
    }
    let loaded = args.input.load()?;
    let horizons = args.horizons.seconds();
    log::info!(
        "{}: evaluating {} series at a {} s step over the last quarter of each",
        loaded.file,
        loaded.series.len(),
        loaded.step_s
    );
    let report = offline::evaluate_all(loaded, &horizons, &EvalOptions::default());
    let text = match args.output {
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&report).context("encoding JSON")?;
            s.push('\n');
            s
        }
        Format::Table => table(&report),
    };
    output::emit(args.out.as_deref(), &text)
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{:.1}%", x * 100.0))
}

fn table(report: &EvalReport) -> String {
    let mut out = String::new();
    for entry in &report.series {
        let Some(eval) = &entry.eval else {
            out.push_str(&format!(
                "{} / {}: skipped: {}\n\n",
                entry.vm,
                entry.resource,
                entry.skipped.as_deref().unwrap_or("?")
            ));
            continue;
        };
        for h in &eval.horizons {
            out.push_str(&format!(
                "{} / {} — horizon {} s, {} origins (best baseline: {})\n",
                entry.vm,
                entry.resource,
                h.horizon_s,
                h.origins,
                h.best_baseline.as_deref().unwrap_or("-")
            ));
            let mut t = super::output::new_table([
                "model",
                "WAPE",
                "MAE",
                "pinball@upper",
                "under-prov",
                "slack",
                "chosen",
            ]);
            for m in &h.models {
                let chosen = if m.model == "vpm" {
                    "(selection)".to_owned()
                } else if m.chosen {
                    format!("* {:.0}%", m.chosen_share * 100.0)
                } else if m.chosen_share > 0.0 {
                    format!("{:.0}%", m.chosen_share * 100.0)
                } else {
                    String::new()
                };
                t.add_row([
                    Cell::new(&m.model),
                    Cell::new(num(m.wape, 3)),
                    Cell::new(num(m.mae, 3)),
                    Cell::new(num(m.pinball_upper, 3)),
                    Cell::new(pct(m.underprov_rate)),
                    Cell::new(num(m.mean_slack, 3)),
                    Cell::new(chosen),
                ]);
            }
            out.push_str(&format!("{t}\n\n"));
        }
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header([
        "horizon s",
        "series",
        "vpm ≤ best baseline",
        "vpm under-prov",
        "VPA under-prov",
        "vpm rel. slack",
        "VPA rel. slack",
    ]);
    for s in &report.summary {
        t.add_row([
            Cell::new(s.horizon_s),
            Cell::new(s.series),
            Cell::new(pct(s.vpm_at_or_below_best_baseline)),
            Cell::new(pct(s.vpm_underprov_rate)),
            Cell::new(pct(s.vpa_underprov_rate)),
            Cell::new(num(s.vpm_relative_slack, 3)),
            Cell::new(num(s.vpa_relative_slack, 3)),
        ]);
    }
    out.push_str(&format!(
        "Summary over all series (upper bound at p{:.0}):\n{t}\n",
        report.upper_level * 100.0
    ));
    out
}
