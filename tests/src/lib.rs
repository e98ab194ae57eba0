//! Shared helpers for vpm's integration tests (root, /dev/kvm, BPF).
//!
//! Run them with `cargo xtask test`, which builds the binaries they drive.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

pub mod qemu;
pub mod vfio;

/// Path of a workspace binary (`vpm`, `vpm-testvm`) next to the test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not built: run the tests with `cargo xtask test`",
        path.display()
    );
    path
}

/// A test-VMM guest that finished its workload and is held alive.
pub struct HeldVm {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The VMM's pid (the tgid vpm keys its counters by).
    pub pid: u32,
    /// The report the VMM printed.
    pub report: serde_json::Value,
}

impl HeldVm {
    /// Starts `vpm-testvm ARGS --hold` (optionally under `wrapper`, e.g. perf) and waits
    /// until it has done its workload.
    pub fn start(args: &[&str], wrapper: Option<&[&str]>) -> anyhow::Result<Self> {
        let testvm = bin("vpm-testvm");
        let mut cmd = match wrapper {
            Some(w) => {
                let mut c = Command::new(w[0]);
                c.args(&w[1..]).arg(&testvm);
                c
            }
            None => Command::new(&testvm),
        };
        cmd.args(args)
            .arg("--hold")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("spawning vpm-testvm")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the report")?;
        if line.is_empty() {
            let out = child.wait_with_output().context("waiting for vpm-testvm")?;
            bail!(
                "vpm-testvm printed no report: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let report: serde_json::Value =
            serde_json::from_str(&line).context("decoding the report")?;
        let pid = report["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .context("report without pid")?;
        let stdin = child.stdin.take();
        Ok(Self {
            child,
            stdin,
            pid,
            report,
        })
    }

    /// Lets the VMM exit and returns its (or its wrapper's) stderr.
    pub fn release(mut self) -> anyhow::Result<String> {
        drop(self.stdin.take());
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            std::io::Read::read_to_string(&mut err, &mut stderr).context("reading stderr")?;
        }
        let status = self.child.wait().context("waiting for vpm-testvm")?;
        if !status.success() {
            bail!("vpm-testvm (or its wrapper) failed: {status}: {stderr}");
        }
        Ok(stderr)
    }
}

impl Drop for HeldVm {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses `perf stat -x,` output into (event, count) pairs.
pub fn parse_perf_csv(stderr: &str) -> Vec<(String, u64)> {
    stderr
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            let count = fields.first()?.trim().parse::<u64>().ok()?;
            let event = fields.get(2)?.trim().to_owned();
            Some((event, count))
        })
        .collect()
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Runs `program args` and returns its trimmed stdout if it succeeds.
pub fn capture(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The short commit hash of the checkout, `-dirty` when it has changes (for
/// the benchmarks' BENCHMARKS.md sections).
pub fn commit() -> String {
    let Some(head) = capture("git", &["rev-parse", "--short", "HEAD"]) else {
        return "unknown".to_owned();
    };
    match capture("git", &["status", "--porcelain"]) {
        Some(s) if !s.is_empty() => format!("{head}-dirty"),
        _ => head,
    }
}

/// This process's resident set size in bytes.
pub fn self_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// `f` over `items` on `threads` threads, results in order; the first error wins.
pub fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> anyhow::Result<R> + Sync,
) -> anyhow::Result<Vec<R>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out: std::sync::Mutex<Vec<Option<anyhow::Result<R>>>> =
        std::sync::Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads.min(items.len()).max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    let failed = r.is_err();
                    if let Ok(mut o) = out.lock() {
                        o[i] = Some(r);
                    }
                    if failed {
                        // Stop handing out work; the error is reported below.
                        next.store(items.len(), std::sync::atomic::Ordering::Relaxed);
                        break;
                    }
                }
            });
        }
    });
    let out = out
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a worker thread panicked"))?;
    let mut results = Vec::with_capacity(items.len());
    for (i, r) in out.into_iter().enumerate() {
        match r {
            Some(r) => results.push(r?),
            None => bail!("item {i} was not evaluated (an earlier item failed)"),
        }
    }
    Ok(results)
}

/// The host CPU's model name (`?` when /proc/cpuinfo does not say), for
/// the benches' reports.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

/// Seconds as the benches' reports write them: whole days, hours or minutes
/// when they are whole (`7 d`, `2 h`, `5 min`), else seconds (`90 s`).
pub fn fmt_duration(s: f64) -> String {
    const DAY: f64 = 86_400.0;
    if s >= DAY && (s / DAY).fract() == 0.0 {
        format!("{} d", s / DAY)
    } else if s >= 3600.0 && (s / 3600.0).fract() == 0.0 {
        format!("{} h", s / 3600.0)
    } else if s >= 60.0 && (s / 60.0).fract() == 0.0 {
        format!("{} min", s / 60.0)
    } else {
        format!("{s} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_csv_lines_are_parsed() {
        let text = "1001,,kvm:kvm_pio,2001,100.00,,\n500,,kvm:kvm_mmio,2001,100.00,,\n<not counted>,,kvm:kvm_exit,0,0.00,,\n";
        assert_eq!(
            parse_perf_csv(text),
            vec![
                ("kvm:kvm_pio".to_owned(), 1001),
                ("kvm:kvm_mmio".to_owned(), 500)
            ]
        );
    }
}
