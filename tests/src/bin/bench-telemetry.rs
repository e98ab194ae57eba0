//! bench-telemetry: what vpm's eBPF counting costs per KVM exit, measured
//! against no tracing and against `perf stat` counting the same tracepoints.
//!
//! Run it with `cargo xtask bench telemetry` (root, /dev/kvm, BPF, perf). The
//! workload is the test VMM (`vpm-testvm --pio 0x3f8:N`, found next to this
//! binary): N one-byte port writes, each one `KVM_EXIT_IO` that goes to
//! userspace and fires two tracepoint events (`kvm_pio`, `kvm_userspace_exit`),
//! plus the one done exit. Each round runs the three cases one after the
//! other, starting with a different case each round, and times the guest run by
//! the `elapsed_ns` the test VMM reports (process start and BPF load excluded).
//!
//! The vpm case is checked: the child's process must have exactly N `kvm_pio`
//! events on the port in vpm's maps, and perf must count N + 1 `kvm_pio` (the
//! done exit included). A bench that measures nothing fails.
//!
//! Progress goes to stderr; the Markdown section goes to stdout or `--markdown FILE`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use vpm_tests::{capture, commit};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use vpm::telemetry::{AttachState, LoadOptions, Telemetry, render_report};
use vpm_common::{CounterKey, EventKind};

/// The port the workload writes to.
const PORT: u16 = 0x3f8;
/// Tracepoint events per port exit to userspace: `kvm_pio` + `kvm_userspace_exit`.
const EVENTS_PER_EXIT: f64 = 2.0;
/// What perf counts: every tracepoint vpm counts that fires on this host.
const PERF_EVENTS: &str =
    "kvm:kvm_pio,kvm:kvm_mmio,kvm:kvm_userspace_exit,kvm:kvm_msi_set_irq,kvm:kvm_set_irq";
const PERF: &str = "/usr/bin/perf";
/// Targets from the issue.
const TARGET_NS_PER_EVENT: f64 = 100.0;
const TARGET_SLOWDOWN_PCT: f64 = 2.0;

const DEFAULT_ROUNDS: u32 = 5;
const DEFAULT_EXITS: u32 = 500_000;
const SMOKE_ROUNDS: u32 = 1;
const SMOKE_EXITS: u32 = 20_000;

/// Measures vpm's per-event cost on an exit-heavy test-VMM guest.
#[derive(Parser)]
#[command(name = "bench-telemetry")]
struct Args {
    /// Interleaved rounds (each runs all three cases once) [default: 5; smoke: 1]
    #[arg(long)]
    rounds: Option<u32>,
    /// Port exits per run [default: 500000; smoke: 20000]
    #[arg(long)]
    exits: Option<u32>,
    /// A short smoke pass: 1 round of 20,000 exits (checks, not figures)
    #[arg(long)]
    smoke: bool,
    /// Write the Markdown section to FILE instead of stdout
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// The test VMM [default: vpm-testvm next to this binary]
    #[arg(long, value_name = "PATH")]
    testvm: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Case {
    Baseline,
    Vpm,
    Perf,
}

impl Case {
    const ALL: [Case; 3] = [Case::Baseline, Case::Vpm, Case::Perf];

    fn label(self) -> &'static str {
        match self {
            Case::Baseline => "no tracing",
            Case::Vpm => "vpm attached",
            Case::Perf => "`perf stat` (same tracepoints)",
        }
    }
}

/// The test VMM's JSON report, the fields used here.
struct VmReport {
    pio_exits: u64,
    done_exits: u64,
    elapsed_ns: u64,
}

impl VmReport {
    fn parse(stdout: &str) -> anyhow::Result<Self> {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with('{'))
            .with_context(|| format!("no JSON report in the test VMM's output: {stdout:?}"))?;
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("bad report {line:?}"))?;
        let field = |name: &str| {
            v.get(name)
                .and_then(serde_json::Value::as_u64)
                .with_context(|| format!("report has no `{name}`: {line}"))
        };
        Ok(Self {
            pio_exits: field("pio_exits")?,
            done_exits: field("done_exits")?,
            elapsed_ns: field("elapsed_ns")?,
        })
    }

    /// Guest-run nanoseconds per port exit (the done exit counts: it is one too).
    fn ns_per_exit(&self) -> f64 {
        self.elapsed_ns as f64 / (self.pio_exits + self.done_exits) as f64
    }
}

struct Bench {
    testvm: PathBuf,
    exits: u32,
    /// How vpm attached, from the first vpm run.
    attach_report: Option<String>,
}

impl Bench {
    fn testvm_cmd(&self) -> Command {
        let mut cmd = Command::new(&self.testvm);
        cmd.args([
            "-name",
            "guest=bench",
            "--pio",
            &format!("{PORT:#x}:{}", self.exits),
        ]);
        cmd.stdin(Stdio::null());
        cmd
    }

    fn check_report(&self, report: &VmReport) -> anyhow::Result<()> {
        ensure!(
            report.pio_exits == u64::from(self.exits) && report.done_exits == 1,
            "the test VMM made {} port exits and {} done exits, expected {} and 1",
            report.pio_exits,
            report.done_exits,
            self.exits
        );
        Ok(())
    }

    fn run(&mut self, case: Case) -> anyhow::Result<f64> {
        match case {
            Case::Baseline => {
                let out = checked_output(&mut self.testvm_cmd())?;
                let report = VmReport::parse(&out.stdout)?;
                self.check_report(&report)?;
                Ok(report.ns_per_exit())
            }
            Case::Vpm => self.run_vpm(),
            Case::Perf => self.run_perf(),
        }
    }

    /// Loads and attaches vpm, runs the guest, checks vpm's counts, detaches.
    fn run_vpm(&mut self) -> anyhow::Result<f64> {
        let mut telemetry =
            Telemetry::load(&LoadOptions::default()).context("loading vpm's eBPF programs")?;
        let ns = self.run_attached(&mut telemetry)?;
        drop(telemetry); // detaches
        Ok(ns)
    }

    /// One extra vpm run with the kernel's BPF run-time statistics on (they add
    /// two clock reads per event, so this run is not one of the timed ones):
    /// the time spent inside vpm's programs per event, free of the host's drift.
    fn run_vpm_program_time(&mut self) -> anyhow::Result<Vec<ProgramTime>> {
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("enabling BPF run-time statistics")?;
        let before: Vec<u32> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|p| p.id())
            .collect();
        let mut telemetry =
            Telemetry::load(&LoadOptions::default()).context("loading vpm's eBPF programs")?;
        self.run_attached(&mut telemetry)?;
        let mut out = Vec::new();
        for info in aya::programs::loaded_programs().filter_map(Result::ok) {
            if before.contains(&info.id()) || info.run_count() == 0 {
                continue;
            }
            // The kernel keeps 15 bytes of a program's name.
            let name = info.name_as_str().unwrap_or("?").to_owned();
            let Some(tp) = ["kvm_pio", "kvm_userspace_exit"].into_iter().find(|tp| {
                [format!("btf_{tp}"), format!("raw_{tp}")]
                    .iter()
                    .any(|full| !name.is_empty() && full.starts_with(name.as_str()))
            }) else {
                continue;
            };
            out.push(ProgramTime {
                tracepoint: tp,
                runs: info.run_count(),
                ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
            });
        }
        drop(telemetry);
        ensure!(
            out.len() == 2,
            "expected run-time statistics of vpm's kvm_pio and kvm_userspace_exit programs, \
             found {}",
            out.len()
        );
        out.sort_by_key(|p| p.tracepoint);
        Ok(out)
    }

    /// Runs the guest with `telemetry` attached and checks vpm's counts for it.
    fn run_attached(&mut self, telemetry: &mut Telemetry) -> anyhow::Result<f64> {
        if self.attach_report.is_none() {
            self.attach_report = Some(attach_summary(telemetry));
            eprintln!(
                "bench-telemetry: vpm attach: {}",
                render_report(telemetry.attachments())
            );
        }
        let child = self
            .testvm_cmd()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.testvm.display()))?;
        let tgid = child.id();
        let out = child
            .wait_with_output()
            .context("waiting for the test VMM")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "the test VMM failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let report = VmReport::parse(&stdout)?;
        self.check_report(&report)?;

        let snap = telemetry.snapshot().context("reading vpm's maps")?;
        let key = CounterKey {
            tgid,
            kind: EventKind::Pio as u32,
            device: u64::from(PORT),
        };
        let pio = snap.counters.get(&key).map_or(0, |c| c.count);
        let userspace: u64 = snap
            .counters
            .iter()
            .filter(|(k, _)| k.tgid == tgid && k.kind == EventKind::UserspaceExit as u32)
            .map(|(_, c)| c.count)
            .sum();
        ensure!(
            pio == u64::from(self.exits),
            "vpm counted {pio} kvm_pio events on port {PORT:#x} for pid {tgid}, expected {} \
             (attach: {})",
            self.exits,
            render_report(telemetry.attachments())
        );
        ensure!(
            userspace > u64::from(self.exits),
            "vpm counted {userspace} kvm_userspace_exit events for pid {tgid}, expected at least {}",
            u64::from(self.exits) + 1
        );
        Ok(report.ns_per_exit())
    }

    /// Runs the guest under `perf stat`, checks perf's counts.
    fn run_perf(&mut self) -> anyhow::Result<f64> {
        let testvm = self.testvm_cmd();
        let mut cmd = Command::new(PERF);
        cmd.args(["stat", "-e", PERF_EVENTS, "-x,", "--"])
            .arg(testvm.get_program())
            .args(testvm.get_args())
            .stdin(Stdio::null());
        let out = checked_output(&mut cmd)?;
        let report = VmReport::parse(&out.stdout)?;
        self.check_report(&report)?;
        let counts = parse_perf_csv(&out.stderr);
        let expected = report.pio_exits + report.done_exits;
        for event in ["kvm:kvm_pio", "kvm:kvm_userspace_exit"] {
            let got = counts.get(event).copied();
            ensure!(
                got == Some(expected),
                "perf counted {got:?} {event}, expected {expected}; perf said: {}",
                out.stderr
            );
        }
        Ok(report.ns_per_exit())
    }
}

/// Time spent inside one of vpm's programs during a run.
struct ProgramTime {
    tracepoint: &'static str,
    runs: u64,
    ns: u64,
}

fn attach_summary(telemetry: &Telemetry) -> String {
    telemetry
        .attachments()
        .iter()
        .filter(|a| ["kvm_pio", "kvm_userspace_exit"].contains(&a.tracepoint))
        .map(|a| {
            let how = match &a.state {
                AttachState::TpBtf => "tp_btf",
                AttachState::RawTp(_) => "raw_tp",
                AttachState::Absent => "absent",
                AttachState::Failed(_) => "failed",
            };
            format!("`{}` as {how}", a.tracepoint)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `perf stat -x,` lines: `count,unit,event,...`.
fn parse_perf_csv(stderr: &str) -> BTreeMap<String, u64> {
    stderr
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(',');
            let count = fields.next()?.trim().parse().ok()?;
            let _unit = fields.next()?;
            let event = fields.next()?.trim().to_owned();
            Some((event, count))
        })
        .collect()
}

struct Output {
    stdout: String,
    stderr: String,
}

fn checked_output(cmd: &mut Command) -> anyhow::Result<Output> {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("`{shown}` failed ({}): {stderr}", out.status);
    }
    Ok(Output { stdout, stderr })
}

/// Median, min, max.
fn stats(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

/// Rounds to a multiple of `step` for display (no false precision).
fn round_to(x: f64, step: f64) -> f64 {
    (x / step).round() * step
}

fn fmt_ns(x: f64, step: f64) -> String {
    format!("{:.0}", round_to(x, step))
}

fn fmt_signed(x: f64, step: f64) -> String {
    let r = round_to(x, step);
    if r > 0.0 {
        format!("+{r:.0}")
    } else if r == 0.0 {
        "0".to_owned()
    } else {
        format!("{r:.0}")
    }
}

fn find_testvm(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(p) => p,
        None => std::env::current_exe()
            .context("finding this binary")?
            .parent()
            .map(|d| d.join("vpm-testvm"))
            .context("this binary has no parent directory")?,
    };
    ensure!(
        path.is_file(),
        "test VMM not found at {}: build it with `cargo build -p vpm-agent --bin vpm-testvm` \
         (or run `cargo xtask bench telemetry`, which does)",
        path.display()
    );
    Ok(path)
}

fn preflight() -> anyhow::Result<()> {
    ensure!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm not found: this bench runs a real KVM guest"
    );
    ensure!(
        Path::new(PERF).is_file(),
        "{PERF} not found: install linux-perf (`cargo xtask setup` does)"
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rounds = args.rounds.unwrap_or(if args.smoke {
        SMOKE_ROUNDS
    } else {
        DEFAULT_ROUNDS
    });
    let exits = args.exits.unwrap_or(if args.smoke {
        SMOKE_EXITS
    } else {
        DEFAULT_EXITS
    });
    ensure!(
        rounds >= 1 && exits >= 1,
        "--rounds and --exits must be at least 1"
    );
    preflight()?;
    let mut bench = Bench {
        testvm: find_testvm(args.testvm.clone())?,
        exits,
        attach_report: None,
    };

    // Warm-up (discarded): page cache, KVM module paths, BPF object parse.
    eprintln!("bench-telemetry: warm-up");
    bench.exits = exits.min(20_000);
    for case in Case::ALL {
        bench
            .run(case)
            .with_context(|| format!("warm-up, {}", case.label()))?;
    }
    bench.exits = exits;

    // samples[case][round], ns per exit.
    let mut samples: BTreeMap<Case, Vec<f64>> = BTreeMap::new();
    let mut orders = Vec::new();
    for round in 0..rounds {
        // Interleaved, and a different case first each round, so drift and
        // position effects do not fall on one case.
        let order: Vec<Case> = (0..3)
            .map(|i| Case::ALL[(i + round as usize) % 3])
            .collect();
        for &case in &order {
            let ns = bench
                .run(case)
                .with_context(|| format!("round {}, {}", round + 1, case.label()))?;
            eprintln!(
                "bench-telemetry: round {}/{rounds} {:<32} {ns:>8.0} ns/exit",
                round + 1,
                case.label()
            );
            samples.entry(case).or_default().push(ns);
        }
        orders.push(order);
    }

    eprintln!("bench-telemetry: one more vpm run with BPF run-time statistics on");
    let program_time = bench
        .run_vpm_program_time()
        .context("vpm run with BPF run-time statistics")?;
    for p in &program_time {
        eprintln!(
            "bench-telemetry: inside {}: {} runs, {:.0} ns/run",
            p.tracepoint,
            p.runs,
            p.ns as f64 / p.runs as f64
        );
    }

    let md = render(
        &args,
        &bench,
        rounds,
        exits,
        &samples,
        &orders,
        &program_time,
    );
    match &args.markdown {
        Some(path) => {
            std::fs::write(path, &md).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{md}"),
    }
    Ok(())
}

fn render(
    args: &Args,
    bench: &Bench,
    rounds: u32,
    exits: u32,
    samples: &BTreeMap<Case, Vec<f64>>,
    orders: &[Vec<Case>],
    program_time: &[ProgramTime],
) -> String {
    let get = |c: Case| samples.get(&c).map(Vec::as_slice).unwrap_or(&[]);
    let (base_med, base_min, base_max) = stats(get(Case::Baseline));

    let mut command = "cargo xtask bench telemetry".to_owned();
    if args.smoke {
        command.push_str(" --smoke");
    }
    if args.rounds.is_some() || args.exits.is_some() {
        let _ = write!(
            command,
            " (bench-telemetry --rounds {rounds} --exits {exits})"
        );
    }
    let date = capture("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "?".into());
    let kernel = capture("uname", &["-r"]).unwrap_or_else(|| "?".into());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into());

    let mut md = String::new();
    let _ = writeln!(md, "## telemetry\n");
    let _ = writeln!(
        md,
        "Command `{command}` · commit `{}` · {date} · kernel {kernel}, {nproc} CPUs \
         (load average {load} at the end)\n",
        commit()
    );
    if args.smoke {
        let _ = writeln!(
            md,
            "**Smoke pass**: {rounds} round of {exits} exits checks that the bench and vpm's \
             counts work; its figures are too noisy to be measurements.\n"
        );
    }
    let _ = writeln!(
        md,
        "Workload: `vpm-testvm --pio 0x3f8:{exits}`, a real KVM guest whose every port \
         write is one exit to userspace firing two tracepoint events (`kvm_pio`, \
         `kvm_userspace_exit`). {rounds} interleaved round{}, each running the three \
         cases once (first case rotating); time is the guest run only (the test VMM's \
         `elapsed_ns`, process start and BPF load excluded), divided by the {} port exits. \
         vpm: loaded, attached ({}) and checked (exactly {exits} `kvm_pio` events on \
         port 0x3f8 for the guest's process) in every round, detached after it. perf: \
         `perf stat -e {PERF_EVENTS} -- vpm-testvm …`, its `kvm_pio` and \
         `kvm_userspace_exit` counts checked too.\n",
        if rounds == 1 { "" } else { "s" },
        u64::from(exits) + 1,
        bench.attach_report.as_deref().unwrap_or("?"),
    );
    let _ = writeln!(
        md,
        "| case | ns/exit median (min–max) | overhead ns/exit | ns/event | slowdown % |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    let mut figures: BTreeMap<Case, (f64, f64, f64)> = BTreeMap::new();
    for case in Case::ALL {
        let (med, min, max) = stats(get(case));
        let overhead = med - base_med;
        let per_event = overhead / EVENTS_PER_EXIT;
        let pct = overhead / base_med * 100.0;
        figures.insert(case, (overhead, per_event, pct));
        let (o, e, p) = if case == Case::Baseline {
            ("—".to_owned(), "—".to_owned(), "—".to_owned())
        } else {
            (
                fmt_signed(overhead, 10.0),
                fmt_signed(per_event, 5.0),
                format!("{pct:+.1}"),
            )
        };
        let _ = writeln!(
            md,
            "| {} | {} ({}–{}) | {o} | {e} | {p} |",
            case.label(),
            fmt_ns(med, 10.0),
            fmt_ns(min, 10.0),
            fmt_ns(max, 10.0)
        );
    }

    // Per-round figures and the paired differences: the noise made visible.
    let _ = writeln!(
        md,
        "\nPer round, ns/exit (order run in brackets); Δ = case − baseline of the same round:\n"
    );
    let _ = writeln!(
        md,
        "| round | order | no tracing | vpm | perf | Δ vpm | Δ perf |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    let mut paired: BTreeMap<Case, Vec<f64>> = BTreeMap::new();
    for (r, order) in orders.iter().enumerate() {
        let b = get(Case::Baseline)[r];
        let v = get(Case::Vpm)[r];
        let p = get(Case::Perf)[r];
        paired.entry(Case::Vpm).or_default().push(v - b);
        paired.entry(Case::Perf).or_default().push(p - b);
        let order = order
            .iter()
            .map(|c| match c {
                Case::Baseline => "base",
                Case::Vpm => "vpm",
                Case::Perf => "perf",
            })
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            md,
            "| {} | {order} | {} | {} | {} | {} | {} |",
            r + 1,
            fmt_ns(b, 10.0),
            fmt_ns(v, 10.0),
            fmt_ns(p, 10.0),
            fmt_signed(v - b, 10.0),
            fmt_signed(p - b, 10.0)
        );
    }
    let noise = base_max - base_min;
    let (_, vpm_event, vpm_pct) = figures[&Case::Vpm];
    let (_, perf_event, _) = figures[&Case::Perf];
    let (_, vpm_dmin, vpm_dmax) = stats(&paired[&Case::Vpm]);
    let (_, perf_dmin, perf_dmax) = stats(&paired[&Case::Perf]);
    let _ = writeln!(
        md,
        "\nNoise: the baseline alone spans {} ns/exit ({:.1} %) over the rounds; the \
         per-round Δ spans {}…{} ns/exit for vpm and {}…{} for perf. This is a \
         nested-virtualization host whose exit cost drifts by several percent within \
         seconds; differences inside these spans are not resolved by this run.\n",
        fmt_ns(noise, 10.0),
        noise / base_med * 100.0,
        fmt_signed(vpm_dmin, 10.0),
        fmt_signed(vpm_dmax, 10.0),
        fmt_signed(perf_dmin, 10.0),
        fmt_signed(perf_dmax, 10.0),
    );

    // Each verdict comes from the medians; it is "resolved" only when every
    // round's own paired figure falls on the same side of the target.
    let base = get(Case::Baseline);
    let vpm = get(Case::Vpm);
    let perf = get(Case::Perf);
    let per_round = |f: &dyn Fn(usize) -> f64| (0..base.len()).map(f).collect::<Vec<f64>>();
    let event_rounds = per_round(&|r| (vpm[r] - base[r]) / EVENTS_PER_EXIT);
    let vs_perf_rounds = per_round(&|r| (vpm[r] - perf[r]) / EVENTS_PER_EXIT);
    let pct_rounds = per_round(&|r| (vpm[r] - base[r]) / base[r] * 100.0);
    let verdict = |ok: bool| match (base.len() < 2, ok) {
        (true, _) => "n/a (one round)",
        (false, true) => "PASS",
        (false, false) => "MISS",
    };
    let agreement = |rounds: &[f64], ok: &dyn Fn(f64) -> bool, shown: String| {
        let agree = rounds.iter().filter(|&&x| ok(x)).count();
        let n = rounds.len();
        if n < 2 {
            format!("; one round is not a measurement (it gave {shown})")
        } else if agree == n || agree == 0 {
            format!("; all {n} rounds agree (per round {shown})")
        } else {
            format!("; **not resolved**: {agree} of {n} rounds pass (per round {shown})")
        }
    };
    let range = |v: &[f64], step: f64, unit: &str| {
        let (_, lo, hi) = stats(v);
        format!("{}…{}{unit}", fmt_signed(lo, step), fmt_signed(hi, step))
    };
    let inside = program_time
        .iter()
        .map(|p| {
            format!(
                "`{}` {} ns ({} runs)",
                p.tracepoint,
                fmt_ns(p.ns as f64 / p.runs as f64, 5.0),
                p.runs
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        md,
        "Time inside vpm's programs per event, from the kernel's BPF run-time statistics \
         (`BPF_ENABLE_STATS`, one extra untimed run; drift-free, but without the \
         tracepoint hook's own cost around the program): {inside}.\n"
    );
    let _ = writeln!(md, "Targets (verdict from the medians):\n");
    let _ = writeln!(
        md,
        "- ≤ {TARGET_NS_PER_EVENT:.0} ns per event: **{}** — vpm {} ns/event{}",
        verdict(vpm_event <= TARGET_NS_PER_EVENT),
        fmt_signed(vpm_event, 5.0),
        agreement(
            &event_rounds,
            &|x| x <= TARGET_NS_PER_EVENT,
            range(&event_rounds, 5.0, " ns")
        ),
    );
    let _ = writeln!(
        md,
        "- below perf stat's per-event cost in the same run: **{}** — vpm {} vs. perf {} \
         ns/event{}",
        verdict(vpm_event < perf_event),
        fmt_signed(vpm_event, 5.0),
        fmt_signed(perf_event, 5.0),
        agreement(
            &vs_perf_rounds,
            &|x| x < 0.0,
            format!("vpm − perf {}", range(&vs_perf_rounds, 5.0, " ns/event"))
        ),
    );
    let _ = writeln!(
        md,
        "- ≤ {TARGET_SLOWDOWN_PCT:.0} % slowdown of exits to userspace (≈ {:.1} µs each here): \
         **{}** — vpm {vpm_pct:+.1} %{}",
        base_med / 1000.0,
        verdict(vpm_pct <= TARGET_SLOWDOWN_PCT),
        agreement(&pct_rounds, &|x| x <= TARGET_SLOWDOWN_PCT, {
            let (_, lo, hi) = stats(&pct_rounds);
            format!("{lo:+.1}…{hi:+.1} %")
        }),
    );

    let _ = writeln!(md, "\n### What it would take to go lower\n");
    let _ = writeln!(
        md,
        "Per event, vpm runs one BPF program through the tracepoint's BPF hook \
         (tp_btf here, no field-copy helpers): one `bpf_get_current_pid_tgid` helper call, \
         one per-CPU array access to this CPU's cache slot for the event kind, a \
         compare of the cached (tgid, device) and two adds; only when the key changes \
         does it write the slot back to the per-CPU hash and load the new key (a \
         busy vCPU hits the same key again and again). Nothing leaves the kernel per \
         event. Before that cache the program body cost 170 ns per `kvm_pio` event \
         (one hash lookup per event); with it, the figure above. `kvm_pio` (the first \
         event after the exit) still costs more than `kvm_userspace_exit` running the \
         same code: consistent with cold caches after the nested world switch, so \
         fewer memory touches per event matter more than fewer instructions. What \
         remains to cut:\n\n\
         - **Fewer events per exit**: a port exit to userspace fires two events; \
         `kvm_userspace_exit` could be left unattached when per-device counts suffice \
         (the exit count per device is already in `kvm_pio`/`kvm_mmio`), halving the \
         cost per exit.\n\
         - **No pid lookup**: the `bpf_get_current_pid_tgid` call and the tgid compare \
         could go if the slot were per vCPU thread (task-local storage), at the price \
         of a storage lookup per event.\n\
         - **The floor** is the BPF hook itself (enabling the tracepoint, the \
         program-run bookkeeping around each call), paid even by an empty program. \
         Below that only not tracing per event helps: KVM's own per-vCPU statistics \
         (`KVM_GET_STATS_FD`: `io_exits`, `mmio_exits`, `exits`) cost nothing extra but \
         give no per-device breakdown.\n"
    );
    md
}
