//! `cargo xtask bench <name>`: benchmarks that write their own section of BENCHMARKS.md.
//!
//! `cargo xtask bench telemetry` checks the prerequisites, builds the test VMM
//! and the bench binary, runs it (root, /dev/kvm, BPF, perf) and replaces the
//! `## telemetry` section of BENCHMARKS.md, leaving other sections alone.
//! `cargo xtask bench forecast` builds `bench-forecast` in release (the figures
//! are timings of optimized code), runs it (no privileges needed) and replaces
//! the `## forecast` section.
//! `cargo xtask bench allocation` builds `bench-allocation` in release, runs it
//! (no privileges needed: the host is simulated) and replaces the
//! `## allocation` section: replays of VF demand traces through vpm, a reactive
//! and a static policy.
//! `cargo xtask bench hal` boots the lab guest (see `cargo xtask vm-test`) and runs
//! `bench-hal` inside it: the latency of each device action on a real kernel; it
//! replaces the `## hal` section.
//! `--smoke` is CI's short pass: the same checks on a small workload, printed
//! only, BENCHMARKS.md untouched.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::util::{self, is_root};

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct Options {
    /// Which benchmark.
    pub name: String,
    /// A short smoke pass (CI): fewer iterations, BENCHMARKS.md untouched.
    #[arg(long)]
    pub smoke: bool,
}

/// The benchmarks there are.
pub const BENCHMARKS: &[&str] = &["telemetry", "forecast", "hal", "allocation"];

const BENCHMARKS_FILE: &str = "BENCHMARKS.md";

const HEADER: &str = "# vpm benchmarks\n\n\
Each section below is written by `cargo xtask bench <name>` (figures, command, commit, \
date and machine); do not edit it by hand, run the bench again.\n";

pub fn run(opts: &Options) -> anyhow::Result<()> {
    match opts.name.as_str() {
        "telemetry" => telemetry(opts.smoke),
        "forecast" => forecast(opts.smoke),
        "hal" => hal(opts.smoke),
        "allocation" => allocation(opts.smoke),
        other => bail!(
            "unknown benchmark `{other}`; known: {}",
            BENCHMARKS.join(", ")
        ),
    }
}

fn telemetry(smoke: bool) -> anyhow::Result<()> {
    crate::setup::run(&crate::setup::Options { check: true })?;
    if !is_root() {
        bail!(
            "the telemetry bench loads eBPF programs and runs KVM guests: run `{}`",
            util::as_root("bench telemetry")
        );
    }
    if !Path::new("/dev/kvm").exists() {
        bail!("/dev/kvm not found: the telemetry bench runs a real KVM guest");
    }

    // The dev profile on purpose: the workspace builds dependencies at
    // opt-level 2 even there, the eBPF object is always built in release, and
    // the cost under test is in the kernel (the BPF programs and KVM's exit
    // path), not in the VMM's or the bench's own code. It also reuses the
    // test build instead of compiling everything a second time.
    let mut build = util::cargo();
    build.args([
        "build",
        "-p",
        "vpm-agent",
        "--bin",
        "vpm-testvm",
        "-p",
        "vpm-tests",
        "--bin",
        "bench-telemetry",
    ]);
    util::run(&mut build)?;

    let bin = target_dir().join("debug").join("bench-telemetry");
    let mut bench = Command::new(&bin);
    if smoke {
        bench.arg("--smoke");
    }
    run_and_write("telemetry", bench, smoke)
}

fn hal(smoke: bool) -> anyhow::Result<()> {
    crate::setup::run(&crate::setup::Options { check: true })?;
    if !is_root() {
        bail!(
            "the hal bench boots the lab guest: run `{}`",
            util::as_root("bench hal")
        );
    }
    util::run(util::cargo().args(["build", "--workspace", "--exclude", "vpm-ebpf", "--bins"]))?;
    let bin = target_dir().join("debug").join("bench-hal");
    let commit = util::output(Command::new("git").args(["rev-parse", "--short", "HEAD"]))
        .map(|c| c.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let dirty = util::output(Command::new("git").args(["status", "--porcelain"]))
        .is_some_and(|s| !s.trim().is_empty());
    let commit = if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| {
                    l.strip_prefix("model name")
                        .and_then(|r| r.split(':').nth(1))
                })
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let date = util::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .map(|d| d.trim().to_owned())
        .unwrap_or_default();
    let command = if smoke {
        "cargo xtask bench hal --smoke"
    } else {
        "cargo xtask bench hal"
    };
    write_section("hal", smoke, |section_file| {
        let mut script = format!(
            "export VPM_LAB=1\n{} --markdown {} --commit {} --command '{command}' --date '{date}' --host 'QEMU TCG on {}'",
            bin.display(),
            section_file.display(),
            commit,
            cpu.replace('\'', ""),
        );
        if smoke {
            script.push_str(" --smoke");
        }
        script.push('\n');
        let status = crate::lab::run_in_guest(
            &[bin.as_path()],
            &script,
            crate::lab::Accel::Tcg,
            std::time::Duration::from_secs(900),
        )?;
        if status != 0 {
            bail!(
                "bench-hal failed in the lab guest (exit status {status}; serial log: target/lab/serial.log)"
            );
        }
        Ok(())
    })
}

fn forecast(smoke: bool) -> anyhow::Result<()> {
    // Release for the figures: they are timings (throughput, the agent's CPU)
    // of the forecasting code, which the dev profile leaves unoptimized (only
    // dependencies get opt-level 2 there). The smoke pass checks that every
    // part runs, not timings, so it reuses the test build (the dev profile)
    // instead of compiling polars a second time.
    run_replay_bench("forecast", "bench-forecast", smoke)
}

fn allocation(smoke: bool) -> anyhow::Result<()> {
    // Release for the figures: a full run replays days of 10 s ticks through
    // the forecasters and the scheduler, code the dev profile leaves
    // unoptimized (the replay times in the section are then meaningful). The
    // smoke pass replays short traces to check that every part runs, and
    // reuses the test build (the dev profile).
    run_replay_bench("allocation", "bench-allocation", smoke)
}

/// Builds `bin` (release for figures, the test build's dev profile for a
/// smoke pass), runs it on the datacenter samples and writes section `name`.
fn run_replay_bench(name: &str, bin: &str, smoke: bool) -> anyhow::Result<()> {
    let profile = if smoke { "debug" } else { "release" };
    let mut build = util::cargo();
    build.args(["build", "-p", "vpm-tests", "--bin", bin]);
    if !smoke {
        build.arg("--release");
    }
    util::run(&mut build)?;

    let root = util::workspace_root();
    let mut bench = Command::new(target_dir().join(profile).join(bin));
    // The datacenter samples live next to the workspace; the bench skips them
    // with a note when they are absent (a user's clone).
    bench
        .arg("--data")
        .arg(root.join("../shared/data/datacenter_synthetic_days.csv"));
    if smoke {
        bench.arg("--smoke");
    }
    run_and_write(name, bench, smoke)
}

/// Cargo's target directory (`CARGO_TARGET_DIR` or `target/`).
fn target_dir() -> PathBuf {
    let root = util::workspace_root();
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root.join(t) })
        .unwrap_or_else(|| root.join("target"))
}

/// Runs a bench binary that writes its Markdown section to `--markdown FILE`,
/// prints the section, and (unless `smoke`) replaces the `## {name}` section of
/// BENCHMARKS.md with it.
fn run_and_write(name: &str, mut bench: Command, smoke: bool) -> anyhow::Result<()> {
    let root = util::workspace_root();
    write_section(name, smoke, |section_file| {
        bench.current_dir(&root).arg("--markdown").arg(section_file);
        util::run(&mut bench)
    })
}

/// Runs `produce`, which writes the `## {name}` Markdown section to the file it
/// is given, prints the section, and (unless `smoke`) replaces that section of
/// BENCHMARKS.md with it.
fn write_section(
    name: &str,
    smoke: bool,
    produce: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let root = util::workspace_root();
    let out_dir = target_dir().join("bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let section_file = out_dir.join(format!("{name}.md"));
    // A section left by an earlier run must not pass for this one's.
    match std::fs::remove_file(&section_file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", section_file.display())),
    }
    produce(&section_file)?;
    let section = std::fs::read_to_string(&section_file)
        .with_context(|| format!("reading {}", section_file.display()))?;
    print!("{section}");
    if !section.starts_with(&format!("## {name}\n")) {
        bail!("{} does not start with `## {name}`", section_file.display());
    }

    if smoke {
        eprintln!("xtask: smoke pass: {BENCHMARKS_FILE} left untouched");
        return Ok(());
    }
    let path = root.join(BENCHMARKS_FILE);
    let current = match std::fs::read_to_string(&path) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let updated = replace_section(current.as_deref(), name, &section);
    std::fs::write(&path, updated).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("xtask: wrote the `## {name}` section of {}", path.display());
    Ok(())
}

/// `doc` (or a new file with [`HEADER`]) with its `## {name}` section — from that
/// heading to the next `## ` heading or the end — replaced by `section`, or
/// `section` appended when there is none.
fn replace_section(doc: Option<&str>, name: &str, section: &str) -> String {
    let doc = doc.unwrap_or(HEADER);
    let heading = format!("## {name}");
    let section = format!("{}\n", section.trim_end());
    let lines: Vec<&str> = doc.split_inclusive('\n').collect();
    let start = lines.iter().position(|l| l.trim_end() == heading);
    match start {
        Some(start) => {
            let end = lines[start + 1..]
                .iter()
                .position(|l| l.starts_with("## "))
                .map_or(lines.len(), |i| start + 1 + i);
            let mut out: String = lines[..start].concat();
            out.push_str(&section);
            if end < lines.len() {
                out.push('\n');
                out.push_str(&lines[end..].concat());
            }
            out
        }
        None => {
            let mut out = doc.trim_end().to_owned();
            out.push_str("\n\n");
            out.push_str(&section);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_file_gets_header_and_section() {
        let out = replace_section(None, "telemetry", "## telemetry\n\nfigures\n");
        assert!(out.starts_with("# vpm benchmarks\n"));
        assert!(out.ends_with("\n\n## telemetry\n\nfigures\n"));
    }

    #[test]
    fn replaces_only_its_own_section() {
        let doc = "# vpm benchmarks\n\nintro\n\n## other\n\nkeep me\n\n## telemetry\n\nold\n\n\
                   ### What it would take\n\nold too\n\n## later\n\nkeep me too\n";
        let out = replace_section(Some(doc), "telemetry", "## telemetry\n\nnew\n\n\n");
        assert_eq!(
            out,
            "# vpm benchmarks\n\nintro\n\n## other\n\nkeep me\n\n## telemetry\n\nnew\n\n\
             ## later\n\nkeep me too\n"
        );
    }

    #[test]
    fn appends_when_absent_and_is_idempotent() {
        let doc = "# vpm benchmarks\n\n## other\n\nkeep\n";
        let once = replace_section(Some(doc), "telemetry", "## telemetry\n\nx\n");
        assert_eq!(
            once,
            "# vpm benchmarks\n\n## other\n\nkeep\n\n## telemetry\n\nx\n"
        );
        let twice = replace_section(Some(&once), "telemetry", "## telemetry\n\nx\n");
        assert_eq!(once, twice);
    }

    #[test]
    fn unknown_benchmark_lists_known_ones() {
        let err = run(&Options {
            name: "nope".into(),
            smoke: false,
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("unknown benchmark `nope`"), "{err}");
        assert!(
            err.contains("telemetry") && err.contains("forecast") && err.contains("allocation"),
            "{err}"
        );
    }
}
