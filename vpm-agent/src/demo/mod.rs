//! vpm's built-in demo (`vpm run --demo`): the whole loop — telemetry,
//! forecasts, plans, actions — on any KVM host, with no SR-IOV hardware.
//!
//! It starts a few real KVM guests from the test VMM (`vpm-testvm`, real port
//! exits counted by eBPF) and a simulated SR-IOV PF ([`SimPci`], the kernel's
//! SR-IOV and runtime-PM rules in memory), and scripts each guest's use of the
//! PF's VFs ([`Script`]): `demo-web` on a short period, `demo-batch` on a longer
//! one, `demo-idle` idle for a while and then busy. The agent acts on the
//! simulated devices only. Each onset and release is written to
//! `demo-<ms>.csv` (`time,vm,event,vf,ready`) next to the agent's exports, so
//! the actions CSV can be read against it: a wake before an onset, a park
//! after a release.
//!
//! So that something happens within a minute, ticks and steps are short, and
//! the forecasters get a few minutes of the scripted past before the start.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::hal::sim::SimPci;
use crate::hal::{Bdf, HolderInfo, PciBackend, PowerState};
use crate::store::long::Row;

/// The simulated PF.
pub const PF: &str = "0000:5e:00.0";
/// Its VFs.
pub const TOTAL_VFS: u32 = 4;
/// The demo's policy.
pub const POLICY: &str = include_str!("policy.toml");
/// Seconds of scripted past given to the forecasters at the start.
pub const PRELOAD_S: f64 = 240.0;

/// When a demo VM uses a VF: on for `on_s`, off for `off_s`, after `start_s`.
#[derive(Debug, Clone, Copy)]
pub struct Script {
    /// Seconds in use per period.
    pub on_s: f64,
    /// Seconds idle per period.
    pub off_s: f64,
    /// Seconds after the demo starts before the first use (idle before).
    pub start_s: f64,
}

impl Script {
    /// Whether the VM uses its VF at `t` seconds after the demo started
    /// (negative: the scripted past).
    pub fn in_use(&self, t: f64) -> bool {
        if t < self.start_s {
            return false;
        }
        let period = self.on_s + self.off_s;
        (t - self.start_s).rem_euclid(period) < self.on_s
    }
}

/// The demo VMs and their scripts.
pub fn vms() -> Vec<(&'static str, Script)> {
    vec![
        (
            "demo-web",
            Script {
                on_s: 2.0,
                off_s: 6.0,
                start_s: -PRELOAD_S,
            },
        ),
        (
            "demo-batch",
            Script {
                on_s: 4.0,
                off_s: 12.0,
                start_s: -PRELOAD_S,
            },
        ),
        (
            "demo-idle",
            Script {
                on_s: 1e9,
                off_s: 1.0,
                start_s: 40.0,
            },
        ),
    ]
}

/// The simulated PF, shared by the agent (as its backend) and the demo driver.
pub fn backend() -> Arc<SimPci> {
    let sim = SimPci::new();
    if let Ok(pf) = PF.parse::<Bdf>() {
        sim.add_pf(pf, TOTAL_VFS, Some("nvme"));
    }
    Arc::new(sim)
}

/// `vfs:<pf>` rows of the scripted past, one per `step_s`, for the forecasters.
pub fn preload(start: f64, step_s: f64, pids: &[(String, u32)]) -> Vec<Row> {
    let mut rows = Vec::new();
    let n = (PRELOAD_S / step_s) as usize;
    for (name, script) in vms() {
        let pid = pids.iter().find(|(n, _)| n == name).map_or(0, |(_, p)| *p);
        for i in 0..n {
            let t = -PRELOAD_S + i as f64 * step_s;
            rows.push(Row {
                timestamp: start + t,
                vm: name.to_owned(),
                pid,
                resource: format!("vfs:{PF}"),
                value: if script.in_use(t) { 1.0 } else { 0.0 },
            });
        }
    }
    rows
}

/// The running demo: its guests and its driver thread; stopped on drop.
pub struct Demo {
    guests: Vec<Child>,
    stop: Arc<AtomicBool>,
    driver: Option<std::thread::JoinHandle<()>>,
    /// The guests' names and pids.
    pub pids: Vec<(String, u32)>,
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The test VMM could not be started.
    #[error(
        "cannot start the demo guest {name} ({path}): {source}; the demo needs /dev/kvm and vpm-testvm next to vpm"
    )]
    Guest {
        /// The guest.
        name: String,
        /// The binary.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A guest exited right after its start.
    #[error(
        "the demo guest {name} exited at start ({status}){}; the demo needs /dev/kvm \
         (read-write for this user) and vpm-testvm next to vpm",
        if stderr.is_empty() { String::new() } else { format!(": {stderr}") }
    )]
    GuestExited {
        /// The guest.
        name: String,
        /// How it ended.
        status: std::process::ExitStatus,
        /// The end of what it wrote to stderr.
        stderr: String,
    },
    /// The event log could not be created.
    #[error("cannot create the demo's event log {path}: {source}")]
    Log {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl Demo {
    /// Starts the guests (`testvm` is the test VMM's path) and the driver that
    /// scripts their VF use on `sim`, logging to `export_dir/demo-<ms>.csv`.
    pub fn start(
        testvm: &Path,
        sim: Arc<SimPci>,
        export_dir: &Path,
        start: f64,
    ) -> Result<Self, DemoError> {
        // Built first, so a guest that fails to start takes the started ones
        // down with it (Drop kills them).
        let mut demo = Self {
            guests: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            driver: None,
            pids: Vec::new(),
        };
        // Each guest's stderr goes to an unnamed file, read if it dies at
        // start (a pipe nobody drains could stall a guest that lives).
        let mut stderrs = Vec::new();
        for (name, _) in vms() {
            let err = unnamed_file(name);
            let stderr = match err.as_ref().and_then(|f| f.try_clone().ok()) {
                Some(f) => Stdio::from(f),
                None => Stdio::null(),
            };
            stderrs.push(err);
            let child = Command::new(testvm)
                .args(["-name", &format!("guest={name}")])
                .args([
                    "--pio",
                    "0x3f8:200",
                    "--repeat",
                    "100000000",
                    "--pause-ms",
                    "100",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .map_err(|source| DemoError::Guest {
                    name: name.to_owned(),
                    path: testvm.to_owned(),
                    source,
                })?;
            demo.pids.push((name.to_owned(), child.id()));
            demo.guests.push(child);
        }
        // A guest that cannot run (no /dev/kvm, a broken binary) exits at
        // once: say so, rather than run a demo without its VMs.
        std::thread::sleep(std::time::Duration::from_millis(300));
        for ((guest, (name, _)), err) in demo.guests.iter_mut().zip(&demo.pids).zip(stderrs) {
            if let Ok(Some(status)) = guest.try_wait() {
                return Err(DemoError::GuestExited {
                    name: name.clone(),
                    status,
                    stderr: err.map(|f| tail_of(f, 400)).unwrap_or_default(),
                });
            }
        }
        let path = export_dir.join(format!("demo-{:014}.csv", (start * 1000.0) as u64));
        let mut log = std::fs::File::create(&path).map_err(|source| DemoError::Log {
            path: path.clone(),
            source,
        })?;
        let _ = writeln!(log, "time,vm,event,vf,ready");
        demo.driver = {
            let stop = Arc::clone(&demo.stop);
            let pids = demo.pids.clone();
            std::thread::Builder::new()
                .name("vpm-demo".into())
                .spawn(move || drive(&sim, &pids, start, &stop, &mut log))
                .ok()
        };
        log::info!(
            "demo: guests {} on a simulated SR-IOV PF {PF} ({TOTAL_VFS} VFs); events in {}",
            demo.pids
                .iter()
                .map(|(n, p)| format!("{n} (pid {p})"))
                .collect::<Vec<_>>()
                .join(", "),
            path.display()
        );
        Ok(demo)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(d) = self.driver.take() {
            let _ = d.join();
        }
        for g in &mut self.guests {
            let _ = g.kill();
            let _ = g.wait();
        }
    }
}

/// A file for a guest's stderr that no one else sees: created in the
/// temporary directory and unlinked at once (the guest and vpm keep it open).
fn unnamed_file(name: &str) -> Option<std::fs::File> {
    // (`name` is one of the demo's own fixed names.)
    let path = std::env::temp_dir().join(format!("vpm-demo-{}-{name}.stderr", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .ok()?;
    let _ = std::fs::remove_file(&path);
    Some(f)
}

/// The last `max` bytes of `f` (read from its start), one line.
fn tail_of(mut f: std::fs::File, max: usize) -> String {
    use std::io::{Read, Seek};
    let mut text = String::new();
    let _ = f.rewind();
    let _ = f.read_to_string(&mut text);
    let text = text.trim().replace('\n', " / ");
    let cut = text.len().saturating_sub(max);
    let start = (cut..=text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    text[start..].to_owned()
}

/// Every 100 ms: each VM takes a VF when its script says so (binding it to
/// vfio-pci first, as libvirt does for a managed device) and gives it back
/// when its use ends.
fn drive(
    sim: &SimPci,
    pids: &[(String, u32)],
    start: f64,
    stop: &AtomicBool,
    log: &mut std::fs::File,
) {
    let scripts = vms();
    let mut holding: Vec<Option<Bdf>> = vec![None; scripts.len()];
    let pf: Option<Bdf> = PF.parse().ok();
    while !stop.load(Ordering::Relaxed) {
        let now = crate::units::unix_now();
        let t = now - start;
        for (i, (name, script)) in scripts.iter().enumerate() {
            let pid = pids.iter().find(|(n, _)| n == name).map_or(0, |(_, p)| *p);
            match (script.in_use(t), holding[i]) {
                (true, None) => {
                    let Some(vf) = pf.and_then(|pf| free_vf(sim, pf)) else {
                        continue;
                    };
                    let ready = sim.power_state(vf).ok().flatten() == Some(PowerState::D0)
                        && sim
                            .function(vf)
                            .is_ok_and(|f| f.driver.as_deref() == Some("vfio-pci"));
                    let _ = sim.bind_driver(vf, "vfio-pci", Duration::from_secs(1));
                    let holder = HolderInfo {
                        pid,
                        comm: "vpm-testvm".into(),
                        vm: Some((*name).to_owned()),
                    };
                    if sim.open(vf, holder).is_ok() {
                        holding[i] = Some(vf);
                        let _ = writeln!(log, "{now:.3},{name},onset,{vf},{ready}");
                    }
                }
                (false, Some(vf)) => {
                    sim.close(vf, pid);
                    holding[i] = None;
                    let _ = writeln!(log, "{now:.3},{name},release,{vf},");
                }
                _ => {}
            }
        }
        let _ = log.flush();
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A VF of `pf` that nobody holds.
fn free_vf(sim: &SimPci, pf: Bdf) -> Option<Bdf> {
    let f = sim.function(pf).ok()?;
    f.virtfns.iter().map(|(_, b)| *b).find(|vf| {
        sim.function(*vf)
            .ok()
            .and_then(|f| sim.holders(&f).ok())
            .is_some_and(|h| h.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_repeat_and_start_late() {
        let s = Script {
            on_s: 2.0,
            off_s: 6.0,
            start_s: -240.0,
        };
        assert!(s.in_use(0.0) && s.in_use(1.9) && !s.in_use(2.1) && s.in_use(8.5));
        assert!(s.in_use(-240.0) && !s.in_use(-236.0));
        let idle = vms()[2].1;
        assert!(!idle.in_use(39.0) && idle.in_use(41.0) && idle.in_use(400.0));
        let rows = preload(1000.0, 0.5, &[("demo-web".into(), 7)]);
        assert_eq!(rows.len(), 3 * 480);
        assert!(rows.iter().all(|r| r.timestamp < 1000.0));
        assert!(POLICY.contains(PF));
    }
}
