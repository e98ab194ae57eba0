//! Guest-side tests of hot-plug (`vpm vm`): a real QEMU runs inside the lab
//! guest (TCG, the project's own firmware that numbers the root ports' buses,
//! no OS) and vpm hands it a VF of the guest's SR-IOV NVMe controller over
//! QMP, and takes it back. Run by `cargo xtask vm-test`.
//!
//! Each test starts the inner VMs it needs and leaves the PF with 0 VFs.

// Test helpers: a failed step is the test's failure, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vpm::executor::Roots;
use vpm::hal::{Bdf, PciBackend as _, PowerState, Sysfs};
use vpm::qmp::{GuestPciDevice, Qmp};
use vpm_tests::qemu::{LAB_FIRMWARE, LAB_FIRMWARE_BUSY, Qemu};
use vpm_tests::{bin, wait_until};

const PF: &str = "0000:01:00.0";
const WRITE: Duration = Duration::from_secs(60);

const POLICY: &str = r#"
[devices]
allow = ["0000:01:00.0"]

[hotplug]
command_timeout_s = 5
unplug_timeout_s = 4

[classes.hp]
hotplug = true
max_attached = 1

[classes.keep]
priority = 300
hotplug = true
detach = false

[vms]
rules = [{ vm = "keep-*", class = "keep" }]
default = "hp"
"#;

fn in_lab() {
    assert_eq!(
        std::env::var("VPM_LAB").as_deref(),
        Ok("1"),
        "these tests change PCI devices and start VMs: run them with `cargo xtask vm-test`"
    );
}

/// A test's policy file and state directory.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
        Self { dir }
    }

    fn policy(&self) -> PathBuf {
        self.dir.path().join("policy.toml")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Runs `vpm ARGS --policy P --state-dir S`.
    fn vpm(&self, args: &[&str]) -> Output {
        self.vpm_env(args, &[])
    }

    /// Runs `vpm ARGS --policy P --state-dir S` with `envs` set (no state
    /// directory for `vm list`, which only reads).
    fn vpm_env(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(bin("vpm"));
        cmd.args(args)
            .envs(envs.iter().copied())
            .arg("--policy")
            .arg(self.policy());
        if args.get(1) != Some(&"list") {
            cmd.arg("--state-dir").arg(self.state());
        }
        let out = cmd.output().unwrap();
        eprintln!(
            "$ vpm {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn vpm_ok(&self, args: &[&str]) -> String {
        let out = self.vpm(args);
        assert!(out.status.success(), "vpm {args:?} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn vpm_err(&self, args: &[&str]) -> String {
        let out = self.vpm(args);
        assert!(!out.status.success(), "vpm {args:?} should have failed");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The journal's entries.
    fn journal(&self) -> Vec<Value> {
        std::fs::read_to_string(self.state().join("journal.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// A QEMU inside the lab guest with one hot-plug port `rp1` and a QMP socket.
struct InnerVm {
    qemu: Qemu,
    qmp: PathBuf,
    _dir: tempfile::TempDir,
}

#[derive(Clone, Copy)]
struct VmOpts {
    /// The port accepts hot-plug (`hotplug=off` otherwise).
    port_hotplug: bool,
    /// Native PCIe hot-plug on the root ports, so `device_del` completes
    /// without a guest OS (`DEVICE_DELETED` never comes otherwise).
    native_hotplug: bool,
    /// The firmware spins instead of halting: one CPU busy while running.
    busy: bool,
}

const STANDARD: VmOpts = VmOpts {
    port_hotplug: true,
    native_hotplug: true,
    busy: false,
};

impl InnerVm {
    fn start(name: &str, o: VmOpts) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let qmp = dir.path().join("qmp.sock");
        let mut b = Qemu::builder(name)
            .args(["-monitor", "none"])
            .bios(if o.busy {
                LAB_FIRMWARE_BUSY
            } else {
                LAB_FIRMWARE
            })
            .args([
                "-device".to_owned(),
                format!(
                    "pcie-root-port,id=rp1,chassis=1,slot=1,addr=0x2{}",
                    if o.port_hotplug { "" } else { ",hotplug=off" }
                ),
            ])
            .qmp(&qmp);
        if o.native_hotplug {
            b = b.native_hotplug();
        }
        let vm = Self {
            qemu: b.start().unwrap(),
            qmp,
            _dir: dir,
        };
        assert!(
            wait_until(Duration::from_secs(30), || vm.try_query_pci().is_some()),
            "inner VM {name} did not answer query-pci"
        );
        vm
    }

    fn pid(&self) -> u32 {
        self.qemu.pid()
    }

    /// `query-pci` on a fresh QMP session (`None`: the monitor does not answer).
    fn try_query_pci(&self) -> Option<Vec<GuestPciDevice>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut q = Qmp::connect(&self.qmp, Duration::from_secs(5)).await.ok()?;
            q.query_pci().await.ok()
        })
    }

    /// Runs a QMP command that answers `{}` (`stop`, `cont`).
    fn command(&self, cmd: &str) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut q = Qmp::connect(&self.qmp, Duration::from_secs(5)).await?;
            q.execute(cmd, None).await
        })
        .unwrap();
    }

    fn query_pci(&self) -> Vec<GuestPciDevice> {
        self.try_query_pci()
            .expect("the inner VM's monitor answers")
    }
}

fn sys() -> Sysfs {
    Sysfs::host()
}

fn pf() -> Bdf {
    PF.parse().unwrap()
}

/// The PF with autoprobe off and `n` unbound VFs; returns them.
fn vfs(n: u32) -> Vec<Bdf> {
    let s = sys();
    s.set_sriov_numvfs(pf(), 0, WRITE).unwrap();
    s.set_sriov_drivers_autoprobe(pf(), false).unwrap();
    s.set_sriov_numvfs(pf(), n, WRITE).unwrap();
    s.function(pf())
        .unwrap()
        .virtfns
        .into_iter()
        .map(|(_, b)| b)
        .collect()
}

/// Leaves the PF without VFs once the VMs are gone.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = sys().set_sriov_numvfs(pf(), 0, WRITE);
    }
}

fn holders(vf: Bdf) -> Vec<u32> {
    let roots = Roots::host();
    let f = roots.function(vf).unwrap();
    roots.holders(&f).unwrap().iter().map(|h| h.pid).collect()
}

fn power(vf: Bdf) -> Option<PowerState> {
    sys().power_state(vf).unwrap()
}

fn park(env: &Env, vf: Bdf) {
    env.vpm_ok(&["pci", "park", &vf.to_string(), "--apply"]);
    assert!(
        wait_until(Duration::from_secs(10), || power(vf)
            == Some(PowerState::D3Hot)),
        "{vf} did not park"
    );
}

fn listed(vm: &InnerVm, vf: Bdf) -> Option<GuestPciDevice> {
    let id = vpm::connect::device_id(vf);
    vm.query_pci().into_iter().find(|d| d.qdev_id == id)
}

fn last_outcome(env: &Env) -> Value {
    env.journal()
        .into_iter()
        .rev()
        .find(|e| e["phase"] != "intent")
        .expect("a journal outcome")
}

/// The note of the journal's last outcome, which must be a failure.
fn failed_note(env: &Env) -> String {
    let failed = last_outcome(env);
    assert_eq!(failed["phase"], "failed", "{failed}");
    failed["note"].as_str().unwrap().to_owned()
}

#[test]
fn a_vf_is_attached_over_qmp_and_taken_back_on_device_deleted() {
    in_lab();
    let _clean = Cleanup;
    let env = Env::new();
    let vf = vfs(2)[0];
    let vfs = vf.to_string();
    park(&env, vf);
    let vm = InnerVm::start("inner-a", STANDARD);
    // The firmware numbered the port's bus: it is in the topology, empty.
    let topo = vm.query_pci();
    assert!(topo.iter().any(|d| d.qdev_id == "rp1"), "{topo:?}");

    // vpm vm list: the VM, its monitor from -qmp, the free port.
    let list: Value =
        serde_json::from_str(&env.vpm_ok(&["vm", "list", "--output", "json"])).unwrap();
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["vm"] == "inner-a")
        .expect("inner-a listed");
    assert_eq!(row["pid"], vm.pid());
    assert_eq!(row["monitor"]["path"], vm.qmp.display().to_string());
    assert_eq!(row["ports"]["free"][0], "rp1");
    assert_eq!(row["attached"].as_array().unwrap().len(), 0);

    // Dry run: says what it would do, does nothing.
    let dry = env.vpm_ok(&["vm", "attach", "inner-a", &vfs]);
    assert!(
        dry.contains("dry run") && dry.contains("device_add") && dry.contains("onto port rp1"),
        "{dry}"
    );
    assert!(holders(vf).is_empty());
    assert_eq!(power(vf), Some(PowerState::D3Hot));

    // Attach: the QEMU process holds the VF through VFIO, the VF is in D0,
    // and the VM's PCI topology has it behind rp1 with the VF's ids.
    let t = Instant::now();
    env.vpm_ok(&["vm", "attach", "inner-a", &vfs, "--apply"]);
    eprintln!("attach took {:?}", t.elapsed());
    assert_eq!(holders(vf), vec![vm.pid()]);
    assert_eq!(power(vf), Some(PowerState::D0));
    let dev = listed(&vm, vf).expect("query-pci lists the VF");
    assert_eq!((dev.vendor, dev.device), (0x1b36, 0x0010));
    assert_eq!(dev.behind.as_deref(), Some("rp1"));
    let list: Value =
        serde_json::from_str(&env.vpm_ok(&["vm", "list", "--output", "json"])).unwrap();
    let row = &list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["vm"] == "inner-a")
        .unwrap()
        .clone();
    assert_eq!(row["attached"][0]["vf"], vfs);
    assert_eq!(row["attached"][0]["port"], "rp1");
    let done = last_outcome(&env);
    assert_eq!(done["phase"], "done");
    assert_eq!(done["action"]["action"], "attach");
    assert_eq!(done["state"]["holders"][0], vm.pid());

    // Detach: DEVICE_DELETED, the fds closed, the VF back in D3hot, gone
    // from the topology.
    let t = Instant::now();
    env.vpm_ok(&["vm", "detach", "inner-a", &vfs, "--apply"]);
    eprintln!("detach took {:?}", t.elapsed());
    assert!(holders(vf).is_empty());
    assert!(
        wait_until(Duration::from_secs(10), || power(vf)
            == Some(PowerState::D3Hot)),
        "{vf} not parked after detach: {:?}",
        power(vf)
    );
    assert!(listed(&vm, vf).is_none());
    let done = last_outcome(&env);
    assert_eq!(
        (done["phase"].as_str(), done["action"]["action"].as_str()),
        (Some("done"), Some("detach"))
    );
    assert!(done["state"].get("holders").is_none(), "{done}");

    // Re-attaching works.
    env.vpm_ok(&["vm", "attach", "inner-a", &vfs, "--apply"]);
    assert_eq!(holders(vf), vec![vm.pid()]);
    env.vpm_ok(&["vm", "detach", "inner-a", &vfs, "--apply"]);
    assert!(holders(vf).is_empty());

    // A crash after `device_add`, before the read-back was journaled: the
    // next acting start reconciles the attach with the VFIO holders and the
    // VM's monitor (its QOM tree and `query-pci`), and does not re-apply it.
    let out = env.vpm_env(
        &["vm", "attach", "inner-a", &vfs, "--apply"],
        &[("VPM_FAILPOINT", "after-apply")],
    );
    assert!(!out.status.success());
    assert_eq!(holders(vf), vec![vm.pid()]);
    let out = env.vpm(&["vm", "detach", "inner-a", &vfs, "--apply"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let id = vpm::connect::device_id(vf);
    assert!(
        err.contains("was interrupted by a restart; it had taken effect")
            && err.contains(&format!(
                "its monitor lists it as {id} on port rp1, on QEMU's PCI bus (query-pci)"
            )),
        "{err}"
    );
    assert!(holders(vf).is_empty(), "the detach ran after reconciling");
    let rec = env
        .journal()
        .into_iter()
        .rfind(|e| e["phase"] == "reconciled")
        .expect("a reconciled entry");
    assert_eq!(rec["action"]["action"], "attach");
    assert_eq!(rec["state"]["in_vm"]["device"], id.as_str());
    assert_eq!(rec["state"]["in_vm"]["on_bus"], true);
    assert_eq!(rec["state"]["holders"][0], vm.pid());
}

#[test]
fn refusals_and_failures_say_where_the_vf_is() {
    in_lab();
    let _clean = Cleanup;
    let env = Env::new();
    let all = vfs(3);
    let (vf, vf2, unbound) = (all[0], all[1], all[2]);
    let (vfs_, vf2s) = (vf.to_string(), vf2.to_string());
    park(&env, vf);
    park(&env, vf2);
    let a = InnerVm::start("inner-a", STANDARD);
    let b = InnerVm::start("inner-b", STANDARD);

    // Not bound to vfio-pci: refused before anything is journaled.
    let err = env.vpm_err(&["vm", "attach", "inner-a", &unbound.to_string(), "--apply"]);
    assert!(
        err.contains("not vfio-pci") && err.contains("vpm pci park"),
        "{err}"
    );

    // Already attached elsewhere; and the class's max_attached.
    env.vpm_ok(&["vm", "attach", "inner-a", &vfs_, "--apply"]);
    let err = env.vpm_err(&["vm", "attach", "inner-b", &vfs_, "--apply"]);
    assert!(
        err.contains("already open through VFIO by VM inner-a"),
        "{err}"
    );
    let err = env.vpm_err(&["vm", "attach", "inner-a", &vf2s, "--apply"]);
    assert!(err.contains("max_attached"), "{err}");
    let err = env.vpm_err(&["vm", "attach", "inner-a", &vfs_, "--apply"]);
    assert!(err.contains("already attached to VM inner-a"), "{err}");
    assert_eq!(holders(vf), vec![a.pid()], "refusals touched nothing");
    // Not attached to b: nothing to detach.
    let err = env.vpm_err(&["vm", "detach", "inner-b", &vfs_, "--apply"]);
    assert!(err.contains("is not hot-plugged into VM inner-b"), "{err}");
    env.vpm_ok(&["vm", "detach", "inner-a", &vfs_, "--apply"]);
    drop(b);

    // A class that never gives a VF back.
    let keep = InnerVm::start("keep-1", STANDARD);
    env.vpm_ok(&["vm", "attach", "keep-1", &vfs_, "--apply"]);
    let err = env.vpm_err(&["vm", "detach", "keep-1", &vfs_, "--apply"]);
    assert!(err.contains("detach = false"), "{err}");
    assert_eq!(holders(vf), vec![keep.pid()]);
    drop(keep);
    assert!(wait_until(Duration::from_secs(10), || holders(vf).is_empty()));
    park(&env, vf);

    // A port without hot-plug: vpm asks the VM's ports first, so the dry
    // run already says so and --apply is refused before anything is done:
    // the VF stays parked and the journal has no entry for it.
    let nohp = InnerVm::start(
        "inner-nohp",
        VmOpts {
            port_hotplug: false,
            ..STANDARD
        },
    );
    let before = env.journal().len();
    let dry = env.vpm_err(&["vm", "attach", "inner-nohp", &vfs_]);
    assert!(
        dry.contains("no free hot-plug port") && dry.contains("hotplug=off"),
        "{dry}"
    );
    let err = env.vpm_err(&["vm", "attach", "inner-nohp", &vfs_, "--apply"]);
    assert!(
        err.contains("no free hot-plug port") && err.contains("hotplug=off"),
        "{err}"
    );
    assert_eq!(env.journal().len(), before, "a refusal is not journaled");
    assert!(holders(vf).is_empty());
    assert!(wait_until(Duration::from_secs(10), || power(vf)
        == Some(PowerState::D3Hot)));
    drop(nohp);

    // DEVICE_DELETED never arrives (ACPI hot-plug waits for a guest OS):
    // a timeout, and the journal says the VF is still attached.
    let acpi = InnerVm::start(
        "inner-acpi",
        VmOpts {
            native_hotplug: false,
            ..STANDARD
        },
    );
    env.vpm_ok(&["vm", "attach", "inner-acpi", &vfs_, "--apply"]);
    let err = env.vpm_err(&["vm", "detach", "inner-acpi", &vfs_, "--apply"]);
    assert!(
        err.contains("DEVICE_DELETED") && err.contains("stays attached"),
        "{err}"
    );
    let note = failed_note(&env);
    assert!(note.contains("is attached to VM inner-acpi"), "{note}");
    assert_eq!(
        holders(vf),
        vec![acpi.pid()],
        "vpm never pulls a VF from under a VM"
    );
    drop(acpi);
    assert!(wait_until(Duration::from_secs(10), || holders(vf).is_empty()));
    park(&env, vf);

    // The monitor goes away mid-command: kill QEMU while it is realizing the
    // device (it has opened the VFIO group, it has not answered yet).
    let c = InnerVm::start("inner-c", STANDARD);
    let mut attach = Command::new(bin("vpm"))
        .args(["vm", "attach", "inner-c", &vfs_, "--apply", "--policy"])
        .arg(env.policy())
        .arg("--state-dir")
        .arg(env.state())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let caught = wait_until(Duration::from_secs(20), || holders(vf).contains(&c.pid()));
    c.qemu.signal(libc::SIGKILL).unwrap();
    let out = wait_output(&mut attach);
    assert!(caught, "QEMU never opened the VF");
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{err}");
    assert!(!out.status.success(), "the attach cannot have succeeded");
    assert!(err.contains("closed the connection"), "{err}");
    let note = failed_note(&env);
    assert!(note.contains("not attached to any VM"), "{note}");
    drop(c);
    drop(a);
    assert!(holders(vf2).is_empty() && holders(vf).is_empty());
}

fn wait_output(child: &mut Child) -> Output {
    let mut stderr = Vec::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read as _;
        let _ = e.read_to_end(&mut stderr);
    }
    let status = child.wait().unwrap();
    Output {
        status,
        stdout: Vec::new(),
        stderr,
    }
}

const LOOP_POLICY: &str = r#"
[devices]
allow = ["0000:01:00.1"]

[plan]
horizon_s = 2
max_actions_per_tick = 4
wake_latency_s = 0.5

[dwell]
awake_s = 1
parked_s = 1

[hotplug]
demand = "cpu"
per_vf = 0.5
attached_s = 3
unplug_timeout_s = 5

[classes.lo]
priority = 100
hotplug = true

[classes.hi]
priority = 200
hotplug = true

[vms]
rules = [{ vm = "hi-*", class = "hi" }]
default = "lo"
"#;

/// The closed loop with hot-plug: `vpm run --apply` gives the one VF it may
/// manage to whichever inner VM is busy (its forecast CPU, `[hotplug] demand
/// = "cpu"`); the demand moves from the first VM to the second and the VF
/// follows, through a detach and an attach, never attached to both, never
/// lost.
#[test]
fn vpm_run_moves_the_vf_with_the_demand() {
    in_lab();
    let _clean = Cleanup;
    let env = Env::new();
    std::fs::write(env.policy(), LOOP_POLICY).unwrap();
    let vf = vfs(1)[0];
    assert_eq!(vf.to_string(), "0000:01:00.1");
    park(&env, vf);
    let busy = VmOpts {
        busy: true,
        ..STANDARD
    };
    let a = InnerVm::start("lo-a", busy);
    let b = InnerVm::start("hi-b", busy);
    b.command("stop");

    let dir = env.dir.path();
    let mut agent = Command::new(bin("vpm"))
        .args(["run", "--apply", "--interval", "250ms", "--step", "500ms"])
        .args(["--horizons", "1s,2s", "--plan-interval", "500ms"])
        .args(["--export-interval", "5s"])
        .arg("--policy")
        .arg(env.policy())
        .arg("--state-dir")
        .arg(env.state())
        .arg("--export-dir")
        .arg(dir.join("exports"))
        .arg("--socket")
        .arg(dir.join("vpm.sock"))
        .env("RUST_LOG", "info")
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("agent.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let sock = dir.join("vpm.sock");
    let log = || {
        let plan = Command::new(bin("vpm"))
            .args(["plan", "--output", "json", "--socket"])
            .arg(&sock)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default() + "\nlast plan: " + &plan
    };

    // Who holds the VF, every 100 ms, until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut seen: Vec<(Instant, Vec<u32>, bool)> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let exists = Sysfs::host().device_dir(vf).exists();
                let roots = Roots::host();
                let h = roots
                    .function(vf)
                    .and_then(|f| roots.holders(&f))
                    .map(|h| h.iter().map(|h| h.pid).collect())
                    .unwrap_or_default();
                seen.push((Instant::now(), h, exists));
                std::thread::sleep(Duration::from_millis(100));
            }
            seen
        })
    };

    // Phase 1: a is busy, b is stopped: a gets the VF.
    let t = Instant::now();
    let got_a = wait_until(Duration::from_secs(90), || holders(vf) == vec![a.pid()]);
    eprintln!("phase 1: VF attached to lo-a after {:?}", t.elapsed());
    assert!(
        got_a,
        "the VF never reached the busy VM lo-a; agent log:\n{}",
        log()
    );
    // Phase 2: the demand moves: a stops, b runs.
    a.command("stop");
    b.command("cont");
    let t = Instant::now();
    let got_b = wait_until(Duration::from_secs(90), || holders(vf) == vec![b.pid()]);
    eprintln!("phase 2: VF moved to hi-b after {:?}", t.elapsed());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = watcher.join().unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status();
    assert!(wait_until(Duration::from_secs(30), || agent
        .try_wait()
        .ok()
        .flatten()
        .is_some()));
    assert!(
        got_b,
        "the VF did not follow the demand to hi-b; agent log:\n{}",
        log()
    );

    // Never attached to both, never lost (the VF existed at every sample).
    assert!(seen.len() > 50, "{} samples", seen.len());
    for (_, h, exists) in &seen {
        assert!(*exists, "the VF vanished");
        assert!(h.len() <= 1, "attached to two VMs at once: {h:?}");
    }
    // The journal: attach to a, detach from a, attach to b, in that order.
    let done: Vec<(String, String)> = env
        .journal()
        .iter()
        .filter(|e| e["phase"] == "done")
        .filter_map(|e| {
            let a = &e["action"];
            Some((
                a["action"].as_str()?.to_owned(),
                a["vm"]["name"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let want = [
        ("attach".to_owned(), "lo-a".to_owned()),
        ("detach".to_owned(), "lo-a".to_owned()),
        ("attach".to_owned(), "hi-b".to_owned()),
    ];
    let mut it = done.iter();
    for w in &want {
        assert!(it.any(|d| d == w), "journal lacks {w:?} in order: {done:?}");
    }
    // The plan said why: the actions CSV has the reasons.
    let csv: String = std::fs::read_dir(dir.join("exports"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("actions-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(
        csv.contains("attach") && csv.contains("hot-plugged"),
        "{csv}"
    );
}
