//! bench-allocation: does vpm get VFs ready before the VMs need them, and at
//! what cost, compared with reacting to demand and with keeping everything on?
//!
//! Run it with `cargo xtask bench allocation` (a release build; `--smoke` is
//! CI's short pass, in the dev profile, which checks that everything runs but
//! measures nothing). It replays VF demand traces ([`vpm::replay`]) through
//! vpm (forecasts + scheduler), a reactive and a static policy, and two
//! what-ifs that keep a spare VF awake without forecasting, against a
//! simulated host:
//!
//! - **generated**: the trace generator's shapes (diurnal, bursty,
//!   idle-then-busy, on/off), five VMs of three QoS classes on one PF, 10 s
//!   steps over a week from a Monday;
//! - **datacenter**: the `net_in` series of the Alibaba days in
//!   `../shared/data/datacenter_synthetic_days.csv`, one VF while a series is
//!   at or above its own 75th percentile, two at or above its 95th (skipped
//!   with a note when the file is absent);
//! - every `--input FILE` (vpm's long CSV): its `vfs:*` gauges, or else one VF
//!   per `dev:*` device whose activity reaches the policy's `active_rate`.
//!
//! Each trace is replayed a second time with hot-plug ([`HostConfig::hotplug`]):
//! the VMs are QEMU guests that get a VF only when a policy attaches one,
//! and an onset counts as ready only if an attached VF was idle and awake
//! (connected before the demand): vpm (the same forecasts, as `[hotplug]
//! demand`), attaching when demand appears, and attaching everything up front.
//!
//! It prints one line per trace and policy (`vpm: ready 96.4% of onsets,
//! parked 71.0% of idle time, 12.3 actions/h`) and writes the Markdown section
//! (`## allocation`) to `--markdown FILE` (else stdout). Every figure comes
//! from this run; the verdicts are computed, never typed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use clap::Parser;
use vpm::hal::Bdf;
use vpm::pipeline::PipelineConfig;
use vpm::policy::{Policy, SAMPLE};
use vpm::replay::{
    Controller, DemandTrace, Derive, HostConfig, Latencies, Metrics, MissCause, Reactive,
    ReactiveAttach, ReplayConfig, ReplayOutcome, Spare, Static, StaticAttach, Vpm, replay,
};
use vpm::store::input::{self, NegativeValues, ReadOptions};
use vpm_tests::{capture, commit, cpu_model, fmt_duration, parallel_map};

/// Monday 2026-11-23 00:00:00 UTC: the generated trace starts on a Monday.
const T0: f64 = 1_795_392_000.0;
const DAY: f64 = 86_400.0;
/// The simulated PF (the sample policy allows it) and its VFs.
const PF: &str = "0000:01:00.0";
const TOTAL_VFS: u32 = 6;
/// Derived demand levels last at least this long (shorter runs are merged).
const MIN_RUN_S: f64 = 300.0;
/// The datacenter samples: resource, quantiles, minimum run.
const DC_RESOURCE: &str = "net_in";
const DC_QUANTILES: [f64; 2] = [0.75, 0.95];
const DC_MIN_RUN_S: f64 = 900.0;

/// Targets from the issues.
const TARGET_READY: f64 = 0.95;
const TARGET_CONNECTED: f64 = 0.95;
/// The demand resource the hot-plug replays forecast.
const HOTPLUG_DEMAND: &str = "vf_demand";
const TARGET_PARKED: f64 = 0.50;

/// Replays VF demand traces through vpm, a reactive and a static policy.
#[derive(Parser)]
#[command(name = "bench-allocation")]
struct Args {
    /// A short smoke pass: short traces (checks, not figures)
    #[arg(long)]
    smoke: bool,
    /// Write the Markdown section to FILE instead of stdout
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// The datacenter samples (skipped with a note when absent)
    #[arg(
        long,
        value_name = "CSV",
        default_value = "../shared/data/datacenter_synthetic_days.csv"
    )]
    data: PathBuf,
    /// More traces in vpm's long CSV format (repeatable): `vfs:*` gauges, or
    /// else `dev:*` activity (one VF per device at or above `active_rate`)
    #[arg(long, value_name = "CSV")]
    input: Vec<PathBuf>,
    /// The policy vpm plans with (default: the shipped sample, policy/sample.toml);
    /// it must allow the simulated PF 0000:01:00.0
    #[arg(long, value_name = "TOML")]
    policy: Option<PathBuf>,
    /// Seed of the generated trace
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Length of the generated trace, days
    #[arg(long, default_value_t = 7.0)]
    days: f64,
    /// Step of the generated trace (and of its forecasts), seconds
    #[arg(long, default_value_t = 10.0)]
    step: f64,
    /// Worker threads (one replay per policy and trace each)
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Also write every replay's metrics as JSON to FILE, for investigating
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// A trace to replay.
struct Scenario {
    key: String,
    title: String,
    trace: DemandTrace,
    warmup_s: f64,
    note: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Vpm,
    Reactive,
    Static,
    /// What-if: the reactive pool with this many free VFs kept awake.
    Spare(usize),
    /// Hot-plug replays: vpm (giving VFs back when idle, or only under
    /// contention), attach on demand, attach everything.
    HotVpm,
    HotVpmKeep,
    HotReactive,
    HotStatic,
}

impl Kind {
    fn hotplug(self) -> bool {
        matches!(
            self,
            Kind::HotVpm | Kind::HotVpmKeep | Kind::HotReactive | Kind::HotStatic
        )
    }
}

const KINDS: [Kind; 5] = [
    Kind::Vpm,
    Kind::Reactive,
    Kind::Static,
    Kind::Spare(1),
    Kind::Spare(2),
];

const HOT_KINDS: [Kind; 4] = [
    Kind::HotVpm,
    Kind::HotVpmKeep,
    Kind::HotReactive,
    Kind::HotStatic,
];

/// The policy of the hot-plug replays: `policy` with `[hotplug] demand` set
/// to the VF demand, one VF per unit, `attached_s` = `[dwell] awake_s`, and
/// every class taking hot-plug (up to its `max_vfs`, else 2, attached).
fn hotplug_policy(policy: &Policy) -> Policy {
    let mut p = policy.clone();
    p.hotplug.demand = Some(HOTPLUG_DEMAND.to_owned());
    p.hotplug.per_vf = 1.0;
    p.hotplug.attached_s = p.dwell.awake_s;
    for c in p.classes.values_mut() {
        c.hotplug = true;
        c.max_attached = c.max_vfs.unwrap_or(2);
    }
    p
}

/// One replay's result.
struct Run {
    outcome: ReplayOutcome,
    elapsed: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.threads >= 1, "--threads must be at least 1");
    ensure!(
        args.days > 0.0 && args.step > 0.0,
        "--days and --step must be above 0"
    );
    let started = Instant::now();
    let policy = match &args.policy {
        None => Policy::parse(SAMPLE, Path::new("policy/sample.toml"))
            .context("parsing the sample policy")?,
        Some(path) => Policy::load(path)?
            .with_context(|| format!("policy file {} not found", path.display()))?,
    };
    let pf: Bdf = PF.parse().context("the simulated PF's address")?;
    ensure!(
        policy.devices.allows(&vpm::policy::Candidate {
            bdf: pf,
            vendor: 0x1b36,
            device: 0x0010,
            physfn: None,
        }),
        "the policy does not allow the simulated PF {PF}: add it to [devices] allow"
    );

    let mut scenarios = vec![generated(&args)];
    let mut skipped = Vec::new();
    match datacenter(&args.data)? {
        Ok(s) => scenarios.push(s),
        Err(note) => {
            eprintln!("bench-allocation: {note}");
            skipped.push(note);
        }
    }
    for path in &args.input {
        scenarios.push(input_scenario(path, &policy)?);
    }

    let hot_policy = hotplug_policy(&policy);
    let mut keep_policy = hot_policy.clone();
    keep_policy.hotplug.give_back = vpm::policy::GiveBack::Contention;
    let jobs: Vec<(usize, Kind)> = (0..scenarios.len())
        .flat_map(|s| KINDS.iter().chain(&HOT_KINDS).map(move |k| (s, *k)))
        .collect();
    let runs = parallel_map(&jobs, args.threads, |&(s, kind)| {
        let sc = &scenarios[s];
        eprintln!(
            "bench-allocation: replaying {} with {} ({} steps)",
            sc.key,
            label(kind),
            sc.trace.steps()
        );
        let policy = match kind {
            Kind::HotVpmKeep => &keep_policy,
            k if k.hotplug() => &hot_policy,
            _ => &policy,
        };
        run_one(sc, kind, policy, pf)
    })?;
    let mut by_scenario: Vec<BTreeMap<&'static str, Run>> =
        (0..scenarios.len()).map(|_| BTreeMap::new()).collect();
    for ((s, kind), run) in jobs.iter().zip(runs) {
        by_scenario[*s].insert(label(*kind), run);
    }

    for (sc, runs) in scenarios.iter().zip(&by_scenario) {
        println!("{}:", sc.key);
        for kind in KINDS {
            if let Some(r) = runs.get(label(kind)) {
                println!("  {}: {}", label(kind), r.outcome.metrics.summary_line());
            }
        }
        for kind in HOT_KINDS {
            if let Some(r) = runs.get(label(kind)) {
                println!("  {}: {}", label(kind), r.outcome.metrics.hotplug_line());
            }
        }
    }

    if let Some(path) = &args.json {
        let dump: Vec<serde_json::Value> = scenarios
            .iter()
            .zip(&by_scenario)
            .map(|(sc, runs)| {
                serde_json::json!({
                    "trace": sc.key,
                    "runs": runs.values().map(|r| &r.outcome).collect::<Vec<_>>(),
                })
            })
            .collect();
        std::fs::write(path, serde_json::to_string_pretty(&dump)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }

    let md = render(
        &args,
        &policy,
        &scenarios,
        &by_scenario,
        &skipped,
        started.elapsed(),
    );
    match &args.markdown {
        Some(path) => {
            std::fs::write(path, &md).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{md}"),
    }
    Ok(())
}

fn label(kind: Kind) -> &'static str {
    match kind {
        Kind::Vpm => "vpm",
        Kind::Reactive => "reactive",
        Kind::Static => "static",
        Kind::Spare(1) => "spare-1",
        Kind::Spare(2) => "spare-2",
        Kind::Spare(_) => "spare-n",
        Kind::HotVpm => "vpm (hot-plug)",
        Kind::HotVpmKeep => "vpm (hot-plug, give_back contention)",
        Kind::HotReactive => "reactive (hot-plug)",
        Kind::HotStatic => "static (hot-plug)",
    }
}

fn run_one(sc: &Scenario, kind: Kind, policy: &Policy, pf: Bdf) -> anyhow::Result<Run> {
    let cfg = ReplayConfig {
        host: HostConfig {
            pf,
            total_vfs: TOTAL_VFS,
            latencies: Latencies::default(),
            hotplug: kind.hotplug(),
        },
        warmup_s: sc.warmup_s,
    };
    let agent = PipelineConfig::agent_default();
    let vpm = || {
        Vpm::new(
            pf,
            policy.clone(),
            sc.trace.step_s,
            agent.horizons_s.clone(),
            agent.forecaster.clone(),
            agent.selections_per_export,
        )
    };
    let mut controller: Box<dyn Controller> = match kind {
        Kind::Vpm => Box::new(vpm()),
        Kind::Reactive => Box::new(Reactive::new(pf)),
        Kind::Static => Box::new(Static::new(pf)),
        Kind::Spare(n) => Box::new(Spare::new(pf, n, policy.dwell.clone())),
        Kind::HotVpm | Kind::HotVpmKeep => Box::new(vpm().hotplug()),
        Kind::HotReactive => Box::new(ReactiveAttach::new(pf, policy.clone())),
        Kind::HotStatic => Box::new(StaticAttach::new(pf, policy.clone())),
    };
    let started = Instant::now();
    let outcome = replay(&sc.trace, &cfg, policy, controller.as_mut())
        .with_context(|| format!("replaying {} with {}", sc.key, label(kind)))?;
    let elapsed = started.elapsed();
    let m = &outcome.metrics;
    ensure!(
        m.ready + m.woken + m.shortfalls + m.at_capacity == m.onsets,
        "{} / {}: onsets do not add up: {m:?}",
        sc.key,
        label(kind)
    );
    ensure!(
        m.onsets > 0,
        "{} / {}: no onset in the scored window: nothing measured",
        sc.key,
        label(kind)
    );
    Ok(Run { outcome, elapsed })
}

// ---------------------------------------------------------------------------
// Traces
// ---------------------------------------------------------------------------

/// Warm-up: a quarter of the trace, at most a day.
fn warmup(duration_s: f64) -> f64 {
    (duration_s / 4.0).min(DAY)
}

fn generated(args: &Args) -> Scenario {
    let (days, step) = if args.smoke {
        (0.5, 30.0)
    } else {
        (args.days, args.step)
    };
    let trace = DemandTrace::generated(args.seed, T0, days * DAY, step);
    let w = warmup(trace.duration_s());
    Scenario {
        key: "generated".into(),
        title: format!(
            "generated: `DemandTrace::generated(seed {})`, {} VMs, {} at {} s steps from a \
             Monday, levels debounced to runs of at least {}",
            args.seed,
            trace.vms.len(),
            fmt_duration(trace.duration_s()),
            step,
            fmt_duration(vpm::replay::demand::GENERATED_MIN_RUN_S),
        ),
        warmup_s: w,
        trace,
        note: None,
    }
}

/// The datacenter samples; `Ok(Err(note))` when the file is absent.
fn datacenter(path: &Path) -> anyhow::Result<Result<Scenario, String>> {
    if !path.exists() {
        return Ok(Err(format!(
            "datacenter trace skipped: {} not found (it lives in the project's shared data, \
             not in the repository)",
            path.display()
        )));
    }
    let opts = ReadOptions {
        negative: NegativeValues::ClampToZero,
        ..ReadOptions::default()
    };
    let csv =
        input::read_path(path, &opts).with_context(|| format!("reading {}", path.display()))?;
    let rule = Derive::Quantiles {
        resource: DC_RESOURCE.into(),
        quantiles: DC_QUANTILES.to_vec(),
    };
    let mut trace = DemandTrace::from_long(&csv, &rule, DC_MIN_RUN_S)?;
    // Classes by position: the sample policy's rules match name prefixes.
    let n = trace.vms.len();
    for (i, v) in trace.vms.iter_mut().enumerate() {
        let prefix = if i < n / 4 {
            "db"
        } else if i < n / 2 {
            "web"
        } else {
            "batch"
        };
        v.vm = format!("{prefix}-{}", v.vm);
    }
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    Ok(Ok(Scenario {
        key: "datacenter".into(),
        title: format!(
            "datacenter: `{name}`, the `{DC_RESOURCE}` series of {n} Alibaba days as {n} VMs, \
             {} at {} s steps",
            fmt_duration(trace.duration_s()),
            trace.step_s
        ),
        warmup_s: warmup(trace.duration_s()),
        note: Some(format!(
            "Each VM uses 1 VF while its `{DC_RESOURCE}` is at or above its own day's 75th \
             percentile and 2 at or above its 95th, levels debounced to runs of at least {}. \
             The days are aggregates of a whole cluster (smoother than one VM) and all start at \
             the same instant, so they overlap as if they ran side by side. VM names get a \
             class prefix by position (the first quarter `db-`, guaranteed; the next \
             `web-`, burstable; the rest `batch-`, best-effort).",
            fmt_duration(DC_MIN_RUN_S)
        )),
        trace,
    }))
}

fn input_scenario(path: &Path, policy: &Policy) -> anyhow::Result<Scenario> {
    let opts = ReadOptions {
        negative: NegativeValues::ClampToZero,
        ..ReadOptions::default()
    };
    let csv =
        input::read_path(path, &opts).with_context(|| format!("reading {}", path.display()))?;
    let rule = Derive::Auto {
        active_rate: policy.plan.active_rate,
    };
    let trace = DemandTrace::from_long(&csv, &rule, MIN_RUN_S)?;
    ensure!(
        !trace.vms.is_empty() && trace.steps() > 1,
        "{}: no demand to replay",
        path.display()
    );
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    Ok(Scenario {
        key: format!("input {name}"),
        title: format!(
            "input: `{name}`, {} VMs, {} at {} s steps",
            trace.vms.len(),
            fmt_duration(trace.duration_s()),
            trace.step_s
        ),
        warmup_s: warmup(trace.duration_s()),
        note: Some(format!(
            "Demand from the file's `vfs:*` gauges, or else one VF per `dev:*` device whose \
             activity is at least `active_rate` = {}/s; levels debounced to runs of at least {}.",
            policy.plan.active_rate,
            fmt_duration(MIN_RUN_S)
        )),
        trace,
    })
}

// ---------------------------------------------------------------------------
// Markdown
// ---------------------------------------------------------------------------

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "n/a".to_owned(), |x| format!("{:.1} %", x * 100.0))
}

fn share(a: u64, b: u64) -> String {
    if b == 0 {
        "—".to_owned()
    } else {
        format!("{a} ({:.1} %)", a as f64 * 100.0 / b as f64)
    }
}

fn hours(s: f64) -> String {
    format!("{:.1}", s / 3600.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

fn render(
    args: &Args,
    policy: &Policy,
    scenarios: &[Scenario],
    runs: &[BTreeMap<&'static str, Run>],
    skipped: &[String],
    elapsed: Duration,
) -> String {
    let mut command = "cargo xtask bench allocation".to_owned();
    if args.smoke {
        command.push_str(" --smoke");
    }
    let date = capture("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "?".into());
    let kernel = capture("uname", &["-r"]).unwrap_or_else(|| "?".into());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let profile = if cfg!(debug_assertions) {
        "debug build"
    } else {
        "release build"
    };
    let agent = PipelineConfig::agent_default();
    let lat = Latencies::default();
    let p = &policy.plan;
    let d = &policy.dwell;
    let mut md = String::new();
    let _ = writeln!(md, "## allocation\n");
    let _ = writeln!(
        md,
        "Command `{command}` · commit `{}` · {date} · {} ({nproc} CPUs), kernel {kernel}, \
         {profile} · bench ran {:.0} s\n",
        commit(),
        cpu_model(),
        elapsed.as_secs_f64(),
    );
    if args.smoke {
        let _ = writeln!(
            md,
            "**Smoke pass**: short traces; it checks that every part runs, its figures are not \
             measurements.\n"
        );
    }
    let _ = writeln!(
        md,
        "Method (`vpm::replay`): a trace gives, per VM and step, how many VFs of one PF the VM \
         uses. One tick per step runs against a simulated host: the PF in `hal::sim::SimPci` \
         (the kernel's SR-IOV and runtime-PM rules) with {TOTAL_VFS} VFs, shared by every VM \
         of the trace (their peaks add up to more: they contend). Each tick, the VMs first \
         apply their demand: a VM that needs one more VF (an **onset**) takes a free one, \
         ready ones first. **Ready** means in D0 and done waking ({:.0} ms) or being created \
         ({:.0} ms; removing VFs, which a resize does first, {:.0} ms: the lab's medians, \
         `## hal`); a VM that opens a parked VF resumes it and waits for it (**woken**); \
         with no free VF its demand waits (**shortfall**) until one is free. Then the policy \
         sees the host as the agent would (power states and since when, idle since, who holds \
         which VF, the last VF count change) and each VM's demand, and its actions go through \
         the agent's executor (`executor::execute_on`, safety rules included). Actions take \
         effect at the tick, so an onset can only be ready through what earlier ticks did.\n",
        lat.wake_s * 1e3,
        lat.create_s * 1e3,
        lat.remove_s * 1e3,
    );
    let classes: Vec<String> = policy
        .classes
        .iter()
        .map(|(n, c)| {
            format!(
                "{n} (priority {}, level {}{}{}{})",
                c.priority,
                c.headroom.level(),
                if c.min_vfs > 0 {
                    format!(", min_vfs {}", c.min_vfs)
                } else {
                    String::new()
                },
                c.max_vfs
                    .map_or_else(String::new, |m| format!(", max_vfs {m}")),
                if c.preempt_dwell {
                    ", preempt_dwell"
                } else {
                    ""
                }
            )
        })
        .collect();
    let rules: Vec<String> = policy
        .vms
        .rules
        .iter()
        .map(|r| format!("`{}` → {}", r.vm, r.class))
        .collect();
    let _ = writeln!(
        md,
        "Policies. **vpm**: one `SeriesForecaster` per VM on its `vfs:{PF}` gauge (demand, \
         including what waits), fed each tick, with the agent's settings \
         (`PipelineConfig::agent_default`: history {} points, {} calibration residuals, \
         horizons {} s, {} selections per tick, inside the forecasts: `vpm run` runs as many \
         between its plans, to the same models one forecast later); the upper bound at the \
         VM's class level \
         (`bounds_at`), raised to the onset model's bound at that level (`forecast::onset`: \
         past runs at the VM's level and past days; see *What the misses say*); then \
         `scheduler::plan` with {} (preference {}, horizon {} s, {} \
         actions per tick, wake latency {} s, {} VF per VM in a pool, dwell awake {} s / \
         parked {} s / VF count {} s; classes {}; VM rules {}, else {}). **reactive**: the first time a VM finds no VF it \
         creates every VF the PF supports (a VF count changes only while no VF is held, so a \
         pool sized to the first demand could seldom grow again; it never shrinks), parks \
         every free VF that is awake at once, and never wakes one (the VM's open does). \
         **static**: the pool at its maximum, every VF kept in D0. Two *what-ifs*, not vpm \
         and forecasting nothing, to show what a PF-level spare would give: **spare-1** and \
         **spare-2** take the reactive pool and keep 1 (2) free VFs awake for whichever VM \
         comes next, parking every other free VF (each VF at least {} s awake before a park \
         and {} s parked before a wake, so they do not flap).\n",
        agent.forecaster.history_cap,
        agent.forecaster.calibration_window,
        agent
            .horizons_s
            .iter()
            .map(|h| format!("{h}"))
            .collect::<Vec<_>>()
            .join(" and "),
        agent.selections_per_export,
        args.policy.as_ref().map_or_else(
            || "the shipped sample policy `policy/sample.toml`".to_owned(),
            |f| format!("the policy `{}`", f.display())
        ),
        p.preference,
        p.horizon_s,
        p.max_actions_per_tick,
        p.wake_latency_s,
        p.pool_per_vm,
        d.awake_s,
        d.parked_s,
        d.vf_count_s,
        classes.join(", "),
        rules.join(", "),
        policy.vms.default,
        d.awake_s,
        d.parked_s,
    );
    let _ = writeln!(
        md,
        "Scores, after each trace's warm-up (a quarter of it, at most a day: forecasters \
         learn, pools settle): **ready share** of the onsets some policy could serve (an onset \
         that found every VF the PF supports held, *at PF capacity*, is counted apart); \
         **parked share** = idle VF-time in D3hot \
         / idle VF-time (idle: the VF exists and no VM holds it; VF slots with no VF are \
         counted apart, they draw nothing); actions per hour (VF count changes, wakes, parks); \
         **flaps**, actions that reverse the previous change of the same device (or of the \
         PF's VF count) within its dwell; refusals by the executor's safety rules.\n"
    );
    for note in skipped {
        let _ = writeln!(md, "Skipped: {note}.\n");
    }

    let mut verdicts: Vec<String> = Vec::new();
    for (sc, runs) in scenarios.iter().zip(runs) {
        render_scenario(&mut md, &mut verdicts, policy, sc, runs);
    }
    render_hotplug(&mut md, &mut verdicts, policy, scenarios, runs);
    let _ = writeln!(md, "### Targets\n");
    for v in &verdicts {
        let _ = writeln!(md, "- {v}");
    }
    let _ = writeln!(md);
    render_advice(&mut md, policy, scenarios, runs);
    md
}

/// What the misses say, over every trace, from this run's figures.
fn render_advice(
    md: &mut String,
    policy: &Policy,
    scenarios: &[Scenario],
    runs: &[BTreeMap<&'static str, Run>],
) {
    let metrics = |name: &str| -> Vec<(&Scenario, &Metrics)> {
        scenarios
            .iter()
            .zip(runs)
            .filter_map(|(sc, r)| r.get(name).map(|r| (sc, &r.outcome.metrics)))
            .collect()
    };
    let vpm = metrics("vpm");
    let sum = |f: &dyn Fn(&Metrics) -> u64| vpm.iter().map(|(_, m)| f(m)).sum::<u64>();
    let misses = sum(&|m| m.servable() - m.ready);
    let onsets = sum(&|m| m.onsets);
    let foreseen = sum(&|m| m.foreseen);
    let cause = |c: MissCause| sum(&|m| m.causes().get(&c).copied().unwrap_or(0));
    let frozen = cause(MissCause::PoolFrozen);
    let not_predicted = cause(MissCause::NotPredicted);
    let _ = writeln!(md, "### What the misses say\n");
    if misses == 0 {
        let _ = writeln!(md, "vpm found every servable onset ready on every trace.\n");
    }
    if frozen > 0 {
        let waits: Vec<String> = scenarios
            .iter()
            .zip(runs)
            .filter_map(|(sc, r)| {
                let wait = |name: &str| {
                    r.get(name).and_then(|r| {
                        let m = &r.outcome.metrics;
                        (m.shortfalls_served > 0)
                            .then(|| fmt_wait(m.shortfall_wait_s / m.shortfalls_served as f64))
                    })
                };
                Some(format!(
                    "{} {} under vpm against {} under reactive",
                    sc.key,
                    wait("vpm")?,
                    wait("reactive").unwrap_or_else(|| "none".into())
                ))
            })
            .collect();
        let _ = writeln!(
            md,
            "**The pool.** {frozen} of vpm's {misses} onsets that were not ready found no free \
             VF while the pool was below the PF's {TOTAL_VFS} VFs with a VF held. The scheduler \
             sizes a pool to the sum of its VMs' forecast peaks within the {} s plan horizon, \
             to what its users held at their peaks over the last day, and to `pool_per_vm` ({}) \
             VF per VM that may use it, and changes it only when no VF is held and `vf_count_s` \
             ({} s) has passed since its last change; on a PF that several VMs share, some VF \
             is soon held again, and a VF count changes only through 0, so the pool then cannot \
             grow until every VM has let go of its VFs. A shortfall's mean wait: {}. Reactive, \
             whose pool is created whole once, meets only the PF's own limit.\n",
            policy.plan.horizon_s,
            policy.plan.pool_per_vm,
            policy.dwell.vf_count_s,
            if waits.is_empty() {
                "—".to_owned()
            } else {
                waits.join("; ")
            },
        );
    }
    let agent = PipelineConfig::agent_default();
    let steps: Vec<String> = scenarios
        .iter()
        .map(|sc| {
            format!(
                "{} of history and {} of calibration at {}'s {} s step",
                fmt_span(agent.forecaster.history_cap as f64 * sc.trace.step_s),
                fmt_span(agent.forecaster.calibration_window as f64 * sc.trace.step_s),
                sc.key,
                sc.trace.step_s
            )
        })
        .collect();
    let _ = writeln!(
        md,
        "**Prediction.** vpm's forecasts foresaw {foreseen} of {onsets} onsets ({}); {} \
         misses that the pool does not explain were not foreseen. The regression forecaster \
         keeps {} points of history and calibrates its bound on its last {} residuals ({}): \
         once a VM has been idle for the calibration window, that bound is its idle level. \
         What foresees onsets is the onset model (`forecast::onset`): from a VM's past runs at \
         its current level (how long they lasted before a rise) and from its past days (was \
         the level higher in the same window of the day?), it raises the bound to the risen \
         level when a rise is at least 1 − q likely, q being the VM's class level. A rise \
         that neither announces (a random burst whose chance within the wake window stays \
         under 1 − q, a regime change such as an idle VM turning busy for good{}) is not \
         foreseen: only a VF kept awake in any case (a spare, below) is ready for it.\n",
        pct(ratio(foreseen, onsets)),
        not_predicted,
        agent.forecaster.history_cap,
        agent.forecaster.calibration_window,
        steps.join("; "),
        if scenarios.iter().any(|sc| sc.trace.duration_s() < 2.0 * DAY) {
            ", or a daily shape in a trace too short to have past days"
        } else {
            ""
        },
    );
    let meets = |m: &Metrics| {
        m.ready_share().is_some_and(|r| r >= TARGET_READY)
            && m.parked_share().is_some_and(|p| p >= TARGET_PARKED)
    };
    let spares: Vec<String> = scenarios
        .iter()
        .zip(runs)
        .map(|(sc, r)| {
            let names = ["spare-1", "spare-2"];
            let figs: Vec<String> = names
                .iter()
                .filter_map(|n| {
                    let m = &r.get(n)?.outcome.metrics;
                    Some(format!(
                        "{n} {} ready, {} parked",
                        pct(m.ready_share()),
                        pct(m.parked_share())
                    ))
                })
                .collect();
            let both: Vec<&str> = names
                .iter()
                .copied()
                .filter(|n| r.get(n).is_some_and(|r| meets(&r.outcome.metrics)))
                .collect();
            let verdict = if both.is_empty() {
                "neither meets both targets".to_owned()
            } else {
                format!(
                    "{} {} both targets",
                    both.join(" and "),
                    if both.len() == 1 { "meets" } else { "meet" }
                )
            };
            format!("{}: {} ({verdict})", sc.key, figs.join(", "))
        })
        .collect();
    let _ = writeln!(
        md,
        "**A spare instead of a forecast.** The what-ifs forecast nothing: they keep the \
         whole pool and 1 or 2 free VFs awake for whichever VM comes next. {}. With one \
         spare, a VM that takes two VFs at once (or a second onset before the next tick wakes \
         a new spare) finds the second one parked; two spares keep one more VF awake all the \
         time. vpm keeps spares only for the VMs whose chance of a rise passes their class's \
         threshold, and pools them (free VFs are interchangeable: it keeps the fewest awake \
         for which the chance that more VMs rise at once is below 1 − level), so its spares follow \
         the forecasts; a rise no forecast announces finds a spare only if another VM's \
         likely rise kept one awake.\n",
        spares.join("; ")
    );
}

/// The hot-plug replays: connected before demand, and at what cost.
fn render_hotplug(
    md: &mut String,
    verdicts: &mut Vec<String>,
    policy: &Policy,
    scenarios: &[Scenario],
    runs: &[BTreeMap<&'static str, Run>],
) {
    let hp = hotplug_policy(policy);
    let lat = Latencies::default();
    let _ = writeln!(
        md,
        "### Hot-plug: VFs connected to the VMs before their demand\n"
    );
    let _ = writeln!(
        md,
        "The same traces, replayed with hot-plug (`HostConfig::hotplug`): the VMs are QEMU \
         guests that cannot take a VF themselves; a VF is theirs once a policy attaches it \
         (`Action::Attach` through the executor and a simulated hypervisor: the VM's process \
         holds it, as after QMP `device_add`; {:.0} ms, the lab's `vpm vm attach`, plus the \
         wake of a parked VF) and until it detaches it. An onset is **connected** (ready) \
         only if an attached VF is idle and awake; else the demand waits until one is \
         attached. Ending a use leaves the VF attached. Policies: **vpm (hot-plug)** \
         forecasts each VM's demand as in the first replay, as `[hotplug] demand = \
         \"{HOTPLUG_DEMAND}\"` (one VF per unit, `attached_s` {} s), and plans with the \
         policy above with every class taking hot-plug (`max_attached` = its `max_vfs`, else \
         2; `detach` as the class says: {}), giving a VF back once its VM is predicted not to \
         need it (`give_back = \"idle\"`, the default) or, in **vpm (hot-plug, give_back \
         contention)**, only when another VM's claim needs it; **reactive (hot-plug)** \
         attaches free VFs when a \
         VM uses more than it has and detaches them all when it uses none; **static \
         (hot-plug)** attaches up to `max_attached` VFs to every VM, round by round (every \
         VM's first VF, by priority, before anyone's second), and never detaches. Scores: connected share of the servable onsets; attached-but-unused share \
         of attached VF-time; the parked share of the time free VFs (attached to no VM) sit \
         idle, and wake actions per hour (a VM that takes VFs only by hot-plug opens no free \
         VF itself: vpm wakes a parked VF as part of attaching it, counted as the attach, and \
         a detach parks it again); attaches per hour; moves show as detaches.\n",
        lat.attach_s * 1e3,
        hp.hotplug.attached_s,
        hp.classes
            .iter()
            .map(|(n, c)| format!("{n} {}", if c.detach { "yes" } else { "no" }))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let _ = writeln!(
        md,
        "| trace | policy | onsets | at PF capacity | connected (of the others) | waited (woken) | \
         not connected | attached but unused | free VFs parked | wakes/h | attaches/h | detaches/h | \
         flaps | refused |"
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (sc, runs) in scenarios.iter().zip(runs) {
        for kind in HOT_KINDS {
            let Some(r) = runs.get(label(kind)) else {
                continue;
            };
            let m = &r.outcome.metrics;
            let per_h = |n: u64| {
                if m.scored_s > 0.0 {
                    format!("{:.1}", n as f64 * 3600.0 / m.scored_s)
                } else {
                    "—".to_owned()
                }
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                sc.key,
                label(kind),
                m.onsets,
                m.at_capacity,
                pct(m.ready_share()),
                m.woken,
                m.shortfalls,
                pct(m.attached_idle_share()),
                pct(m.parked_share()),
                per_h(m.wakes),
                per_h(m.attaches),
                per_h(m.detaches),
                m.flaps,
                m.refused,
            );
        }
        if let Some(r) = runs.get(label(Kind::HotVpm)) {
            let share = r.outcome.metrics.ready_share();
            verdicts.push(format!(
                "{}: vpm connects a VF before {} of onsets with hot-plug (target ≥ {:.0} %): {}",
                sc.key,
                pct(share),
                TARGET_CONNECTED * 100.0,
                verdict(share.is_some_and(|s| s >= TARGET_CONNECTED))
            ));
        }
    }
    let _ = writeln!(md);
}

fn render_scenario(
    md: &mut String,
    verdicts: &mut Vec<String>,
    policy: &Policy,
    sc: &Scenario,
    runs: &BTreeMap<&'static str, Run>,
) {
    let t = &sc.trace;
    let _ = writeln!(md, "### Trace: {}\n", sc.title);
    if let Some(note) = &sc.note {
        let _ = writeln!(md, "{note}\n");
    }
    let from = (sc.warmup_s / t.step_s).ceil() as usize;
    let _ = writeln!(
        md,
        "Scored after a warm-up of {} ({} of {} steps scored).\n",
        fmt_duration(sc.warmup_s),
        t.steps().saturating_sub(from),
        t.steps()
    );
    let _ = writeln!(
        md,
        "| VM | class | demand | peak VFs | busy | onsets scored |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for v in &t.vms {
        let _ = writeln!(
            md,
            "| `{}` | {} | {} | {} | {:.0} % | {} |",
            v.vm,
            policy.class_of(&v.vm).name,
            v.shape,
            v.peak(),
            v.busy_share() * 100.0,
            v.onsets_from(from)
        );
    }
    let peaks: u32 = t.vms.iter().map(|v| v.peak()).sum();
    let _ = writeln!(
        md,
        "\nPeaks add up to {peaks} VFs for a PF of {TOTAL_VFS}.\n"
    );

    let _ = writeln!(
        md,
        "| policy | onsets | at PF capacity | ready (of the others) | woken (mean wait) | \
         shortfalls | mean wait of a shortfall | unmet VF-h | parked share of idle | idle awake \
         VF-h | no-VF slot-h | actions/h | VF count / wake / park | flaps | refused | replay time |"
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for kind in KINDS {
        let Some(r) = runs.get(label(kind)) else {
            continue;
        };
        let m = &r.outcome.metrics;
        let mean = |sum: f64, n: u64| {
            if n == 0 {
                "—".to_owned()
            } else {
                fmt_wait(sum / n as f64)
            }
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | \
             {}{} | {} | {:.1} s |",
            if matches!(kind, Kind::Spare(_)) {
                format!("*what-if* {}", label(kind))
            } else {
                label(kind).to_owned()
            },
            m.onsets,
            m.at_capacity,
            share(m.ready, m.servable()),
            m.woken,
            mean(m.woken_wait_s, m.woken),
            m.shortfalls,
            mean(m.shortfall_wait_s, m.shortfalls_served),
            hours(m.unmet_vf_s),
            pct(m.parked_share()),
            hours(m.idle_awake_vf_s),
            hours(m.absent_vf_s),
            m.actions_per_hour()
                .map_or_else(|| "n/a".into(), |x| format!("{x:.1}")),
            m.set_vfs,
            m.wakes,
            m.parks,
            m.flaps,
            if m.flaps_preempt > 0 {
                format!(" ({} preempt_dwell)", m.flaps_preempt)
            } else {
                String::new()
            },
            m.refused + m.failed,
            r.elapsed.as_secs_f64(),
        );
    }
    let _ = writeln!(md);
    for kind in KINDS {
        if let Some(r) = runs.get(label(kind))
            && !r.outcome.errors.is_empty()
        {
            let _ = writeln!(
                md,
                "{} executor errors (first {}): {}\n",
                label(kind),
                r.outcome.errors.len(),
                r.outcome.errors.join("; ")
            );
        }
    }

    let Some(vpm) = runs.get("vpm") else {
        return;
    };
    let m = &vpm.outcome.metrics;
    render_misses(md, policy, sc, m);

    let ready = m.ready_share();
    let parked = m.parked_share();
    let reactive = runs.get("reactive").map(|r| &r.outcome.metrics);
    let stat = runs.get("static").map(|r| &r.outcome.metrics);
    let others = format!(
        "reactive {}, static {}",
        pct(reactive.and_then(Metrics::ready_share)),
        pct(stat.and_then(Metrics::ready_share)),
    );
    let misses = m.servable() - m.ready;
    let top = m
        .causes()
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(c, n)| format!("; most misses: {} ({n} of {misses})", c.describe()))
        .unwrap_or_default();
    let capacity = if m.at_capacity > 0 {
        format!(
            "; {} more found every VF of the PF held and are left out",
            m.at_capacity
        )
    } else {
        String::new()
    };
    verdicts.push(format!(
        "{}: ≥ {:.0} % of onsets ready: **{}** — vpm {} ({} of {} onsets{capacity}{top}); \
         {others}",
        sc.key,
        TARGET_READY * 100.0,
        verdict(ready.is_some_and(|r| r >= TARGET_READY)),
        pct(ready),
        m.ready,
        m.servable(),
    ));
    if let Some(r) = reactive {
        verdicts.push(format!(
            "{}: reactive baseline at 0 % ready (it never acts ahead): **{}** — {} ({} of {} \
             onsets)",
            sc.key,
            verdict(r.ready == 0),
            pct(r.ready_share()),
            r.ready,
            r.onsets
        ));
    }
    verdicts.push(format!(
        "{}: ≥ {:.0} % of idle device time parked: **{}** — vpm {} ({} of {} idle VF-h; {} \
         VF-h idle and awake; besides, {} VF-slot-h had no VF and {} VF-h of demand went \
         unmet); reactive {}, static {}",
        sc.key,
        TARGET_PARKED * 100.0,
        verdict(parked.is_some_and(|p| p >= TARGET_PARKED)),
        pct(parked),
        hours(m.idle_parked_vf_s),
        hours(m.idle_parked_vf_s + m.idle_awake_vf_s),
        hours(m.idle_awake_vf_s),
        hours(m.absent_vf_s),
        hours(m.unmet_vf_s),
        pct(reactive.and_then(Metrics::parked_share)),
        pct(stat.and_then(Metrics::parked_share)),
    ));
    verdicts.push(format!(
        "{}: no flapping: **{}** — vpm {} flaps{} in {} actions ({} refused by the executor)",
        sc.key,
        verdict(m.flaps == 0),
        m.flaps,
        if m.flaps_preempt > 0 {
            format!(" ({} of them wakes a guaranteed VM's demand forced within the dwell, preempt_dwell)", m.flaps_preempt)
        } else {
            String::new()
        },
        m.actions(),
        m.refused
    ));
}

/// Per VM, vpm's onsets and why the others were not ready.
fn render_misses(md: &mut String, policy: &Policy, sc: &Scenario, m: &Metrics) {
    let _ = writeln!(
        md,
        "vpm per VM. *Foreseen*: vpm's last forecast before the onset already counted the VF \
         (the VM's upper bound within the {} s plan horizon, in whole VFs, above what it held). \
         Why an onset was not ready, from that plan: *pool frozen*, no free VF and the pool \
         below its maximum with a VF held (a VF count changes only through 0, so it could \
         not grow); else *not predicted*; else the plan's deferral for that VM (*contention*, \
         *wake deferred*), or *other*.\n",
        policy.plan.horizon_s
    );
    let _ = writeln!(
        md,
        "| VM | class | onsets | at PF capacity | foreseen | ready (of the others) | woken | \
         shortfalls | not ready because |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for v in &sc.trace.vms {
        let Some(o) = m.per_vm.get(&v.vm) else {
            continue;
        };
        let causes: Vec<String> = MissCause::ALL
            .iter()
            .filter_map(|c| o.causes.get(c).map(|n| format!("{} {n}", short_cause(*c))))
            .collect();
        let _ = writeln!(
            md,
            "| `{}` | {} | {} | {} | {} | {} | {} | {} | {} |",
            v.vm,
            policy.class_of(&v.vm).name,
            o.onsets,
            o.at_capacity,
            o.foreseen,
            share(o.ready, o.onsets - o.at_capacity),
            o.woken,
            o.shortfalls,
            if causes.is_empty() {
                "—".to_owned()
            } else {
                causes.join(", ")
            }
        );
    }
    let _ = writeln!(md);
    let total = m.servable() - m.ready;
    if total > 0 {
        let parts: Vec<String> = m
            .causes()
            .into_iter()
            .map(|(c, n)| format!("{n} {}", c.describe()))
            .collect();
        let _ = writeln!(
            md,
            "vpm's {total} onsets that were not ready: {}. Its forecasts foresaw {} of the {} \
             onsets ({}).\n",
            parts.join("; "),
            m.foreseen,
            m.onsets,
            pct(ratio(m.foreseen, m.onsets)),
        );
    }
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

fn short_cause(c: MissCause) -> &'static str {
    match c {
        MissCause::NoForecast => "no forecast",
        MissCause::NotPredicted => "not predicted",
        MissCause::PoolFrozen => "pool frozen",
        MissCause::Contention => "contention",
        MissCause::WakeDeferred => "wake deferred",
        MissCause::Other => "other",
    }
}

/// A span, rounded: `21 min`, `2 h`, `2.5 d`.
fn fmt_span(s: f64) -> String {
    if s >= 2.0 * DAY {
        format!("{:.1} d", s / DAY)
    } else if s >= 7200.0 {
        format!("{:.0} h", s / 3600.0)
    } else if s >= 120.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{s:.0} s")
    }
}

fn fmt_wait(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1e3)
    } else if s < 120.0 {
        format!("{s:.0} s")
    } else {
        format!("{:.0} min", s / 60.0)
    }
}
