//! Guest-side tests of vpm's HAL, safety checks and device commands, on a real
//! kernel: Debian's, in QEMU with an emulated SR-IOV NVMe controller (PF
//! 0000:01:00.0, 1b36:0010, 4 VFs) behind an IOMMU, and a virtio-net +
//! virtio-blk pair sharing one IOMMU group (slot 00:03). Run by `cargo xtask vm-test`.
//!
//! They act on the machine's real `/sys` and refuse to run outside the lab guest
//! (`VPM_LAB=1`, set by the guest's run script). Each test starts from the state
//! it needs and leaves the PF with 0 VFs.

// Test helpers: a failed step is the test's failure, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vpm::executor::{self, Action, ApplyOptions, ExecuteError, Refusal, Roots};
use vpm::hal::{Bdf, Errno, HalError, PowerControl, PowerState, RuntimeStatus, Sysfs};
use vpm::policy::Policy;
use vpm_tests::bin;

const PF: &str = "0000:01:00.0";
const WRITE: Duration = Duration::from_secs(60);

fn in_lab() {
    assert_eq!(
        std::env::var("VPM_LAB").as_deref(),
        Ok("1"),
        "these tests change PCI devices: run them with `cargo xtask vm-test`"
    );
}

fn pf() -> Bdf {
    PF.parse().unwrap()
}

fn sys() -> Sysfs {
    Sysfs::host()
}

/// The PF with autoprobe off and `n` VFs; returns the VFs.
fn vfs(n: u32) -> Vec<Bdf> {
    let s = sys();
    s.set_sriov_drivers_autoprobe(pf(), false).unwrap();
    s.set_sriov_numvfs(pf(), n, WRITE).unwrap();
    s.function(pf())
        .unwrap()
        .virtfns
        .into_iter()
        .map(|(_, b)| b)
        .collect()
}

fn policy_allowing(allow: &[&str]) -> (tempfile::TempDir, PathBuf, Policy) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    let list: Vec<String> = allow.iter().map(|a| format!("\"{a}\"")).collect();
    let text = format!("[devices]\nallow = [{}]\n", list.join(", "));
    std::fs::write(&path, &text).unwrap();
    let policy = Policy::parse(&text, &path).unwrap();
    (dir, path, policy)
}

fn refusals(result: Result<executor::Report, ExecuteError>) -> Vec<Refusal> {
    match result {
        Err(ExecuteError::Refused { refusals, .. }) => refusals,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn power(bdf: Bdf) -> (Option<PowerState>, Option<PowerState>) {
    let s = sys();
    let kernel = s.power_state(bdf).unwrap();
    let pmcsr = s.config(bdf).unwrap().pm().map(|pm| pm.state);
    (kernel, pmcsr)
}

#[test]
fn sriov_resize_goes_through_zero_and_kernel_errors_are_typed() {
    in_lab();
    let s = sys();
    let f = s.function(pf()).unwrap();
    assert_eq!((f.vendor, f.device), (0x1b36, 0x0010));
    assert_eq!(f.driver.as_deref(), Some("nvme"));
    let sriov = f.sriov.unwrap();
    assert_eq!(sriov.total_vfs, 4);
    let cap = s
        .config(pf())
        .unwrap()
        .sriov()
        .expect("SR-IOV extended capability");
    assert_eq!(cap.total_vfs, 4);

    s.set_sriov_numvfs(pf(), 0, WRITE).unwrap();
    s.set_sriov_drivers_autoprobe(pf(), false).unwrap();
    assert!(!s.function(pf()).unwrap().sriov.unwrap().drivers_autoprobe);

    let two = s.set_sriov_numvfs(pf(), 2, WRITE).unwrap();
    assert_eq!(two.steps, vec![2]);
    let f = s.function(pf()).unwrap();
    assert_eq!(f.sriov.unwrap().num_vfs, 2);
    assert_eq!(f.virtfns.len(), 2);
    for (i, (n, vf)) in f.virtfns.iter().enumerate() {
        assert_eq!(*n as usize, i);
        let v = s.function(*vf).unwrap();
        assert_eq!(v.physfn, Some(pf()));
        assert_eq!(v.driver, None, "autoprobe is off: VFs stay unbound");
    }
    assert_eq!(s.config(pf()).unwrap().sriov().unwrap().num_vfs, 2);

    let four = s.set_sriov_numvfs(pf(), 4, WRITE).unwrap();
    assert_eq!(four.steps, vec![0, 4], "a resize passes through 0");
    assert_eq!(s.function(pf()).unwrap().virtfns.len(), 4);
    // Same value: no write at all.
    assert!(s.set_sriov_numvfs(pf(), 4, WRITE).unwrap().steps.is_empty());

    // The kernel's own answers, typed: non-zero → other non-zero is EBUSY,
    // more than sriov_totalvfs is ERANGE.
    let busy = s.write_sriov_numvfs_raw(pf(), 3, WRITE).unwrap_err();
    assert_eq!(busy.errno(), Some(Errno::Busy), "{busy}");
    let range = s.write_sriov_numvfs_raw(pf(), 5, WRITE).unwrap_err();
    assert_eq!(range.errno(), Some(Errno::Range), "{range}");
    // The HAL refuses 5 itself, before writing.
    assert!(s.set_sriov_numvfs(pf(), 5, WRITE).is_err());
    assert_eq!(s.function(pf()).unwrap().sriov.unwrap().num_vfs, 4);

    // No driver on the PF: ENOENT.
    s.set_sriov_numvfs(pf(), 0, WRITE).unwrap();
    assert_eq!(s.unbind(pf()).unwrap().as_deref(), Some("nvme"));
    let noent = s.write_sriov_numvfs_raw(pf(), 2, WRITE).unwrap_err();
    assert_eq!(noent.errno(), Some(Errno::NoEnt), "{noent}");
    assert!(noent.to_string().contains("sriov_numvfs"), "{noent}");
    s.drivers_probe(pf()).unwrap();
    assert_eq!(s.driver(pf()).unwrap().as_deref(), Some("nvme"));
    s.set_sriov_numvfs(pf(), 0, WRITE).unwrap();
}

#[test]
fn invalid_addresses_are_refused_before_any_path() {
    in_lab();
    for bad in [
        "../../../etc",
        "0000:01:00.0/../x",
        "0000:01:00.0\0",
        " 0000:01:00.0",
        "01:00.0",
    ] {
        assert!(
            matches!(bad.parse::<Bdf>(), Err(HalError::InvalidBdf { .. })),
            "{bad:?}"
        );
    }
    let out = Command::new(bin("vpm"))
        .args(["pci", "wake", "../0000:01:00.0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("../0000:01:00.0"));
}

#[test]
fn vf_wake_park_wake_on_vfio_pci() {
    in_lab();
    let s = sys();
    let vf = vfs(2)[0];
    let (_dir, _path, policy) = policy_allowing(&[PF]);
    let roots = Roots::host();
    let opts = ApplyOptions::default();
    let state_dir = tempfile::tempdir().unwrap();
    let (mut journal, _) = executor::Journal::open(state_dir.path()).unwrap();

    s.bind_driver(vf, "vfio-pci", WRITE).unwrap();
    assert_eq!(s.driver(vf).unwrap().as_deref(), Some("vfio-pci"));

    // Wake: D0, and it holds (runtime PM would otherwise idle it within ~1 s).
    let wake = executor::execute(
        &roots,
        Some(&policy),
        Action::Wake { bdf: vf },
        true,
        &opts,
        Some(&mut journal),
    )
    .unwrap();
    assert!(wake.applied);
    assert_eq!(s.power_control(vf).unwrap(), Some(PowerControl::On));
    let held_since = Instant::now();
    while held_since.elapsed() < Duration::from_secs(3) {
        assert_eq!(power(vf), (Some(PowerState::D0), Some(PowerState::D0)));
        assert_eq!(s.runtime_status(vf).unwrap(), Some(RuntimeStatus::Active));
        std::thread::sleep(Duration::from_millis(100));
    }

    // Park: D3hot, seen by the kernel and in PMCSR.
    let park = executor::execute(
        &roots,
        Some(&policy),
        Action::Park { bdf: vf },
        true,
        &opts,
        Some(&mut journal),
    )
    .unwrap();
    assert!(park.applied);
    assert_eq!(s.power_control(vf).unwrap(), Some(PowerControl::Auto));
    assert_eq!(
        power(vf),
        (Some(PowerState::D3Hot), Some(PowerState::D3Hot))
    );
    assert_eq!(
        s.runtime_status(vf).unwrap(),
        Some(RuntimeStatus::Suspended)
    );

    // Wake again: D0.
    executor::execute(
        &roots,
        Some(&policy),
        Action::Wake { bdf: vf },
        true,
        &opts,
        Some(&mut journal),
    )
    .unwrap();
    assert_eq!(power(vf), (Some(PowerState::D0), Some(PowerState::D0)));

    // Every action journaled: intent, then the read-back.
    drop(journal);
    let entries = executor::journal::read(state_dir.path()).unwrap();
    let phases: Vec<_> = entries.iter().map(|e| (e.seq, e.phase)).collect();
    use executor::journal::Phase::{Done, Intent};
    assert_eq!(
        phases,
        vec![
            (0, Intent),
            (0, Done),
            (1, Intent),
            (1, Done),
            (2, Intent),
            (2, Done)
        ]
    );
    let last = entries[5].state.as_ref().unwrap();
    assert_eq!(last.power_state.as_deref(), Some("D0"));
    assert_eq!(
        entries[3].state.as_ref().unwrap().power_state.as_deref(),
        Some("D3hot")
    );

    s.set_power_control(vf, PowerControl::Auto, WRITE).unwrap();
    s.set_sriov_numvfs(pf(), 0, WRITE).unwrap();
}

#[test]
fn a_vf_open_through_vfio_blocks_numvfs_changes_and_parking() {
    in_lab();
    let s = sys();
    let vf = vfs(2)[0];
    let (_dir, policy_path, policy) = policy_allowing(&[PF]);
    let roots = Roots::host();
    let opts = ApplyOptions::default();
    s.bind_driver(vf, "vfio-pci", WRITE).unwrap();

    let device = vpm_tests::vfio::VfioDevice::open(&vf.to_string()).unwrap();
    let me = std::process::id();

    let facts = executor::facts::gather(&roots, Some(&policy), vf).unwrap();
    assert!(
        facts.holders.iter().any(|h| h.pid == me),
        "{:?}",
        facts.holders
    );

    for count in [0, 4] {
        let r = refusals(executor::execute(
            &roots,
            Some(&policy),
            Action::SetVfs { pf: pf(), count },
            true,
            &opts,
            None,
        ));
        assert!(
            r.iter().any(|r| matches!(r, Refusal::VfsHeld { held, .. } if held.iter().any(|(b, h)| *b == vf && h.iter().any(|h| h.pid == me)))),
            "{r:?}"
        );
    }
    let r = refusals(executor::execute(
        &roots,
        Some(&policy),
        Action::Park { bdf: vf },
        true,
        &opts,
        None,
    ));
    assert!(r.iter().any(|r| matches!(r, Refusal::Held { .. })), "{r:?}");
    assert_eq!(
        s.function(pf()).unwrap().sriov.unwrap().num_vfs,
        2,
        "nothing changed"
    );

    // The CLI says the same, exits non-zero, and changes nothing.
    let out = Command::new(bin("vpm"))
        .args(["pci", "set-vfs", PF, "0", "--apply", "--policy"])
        .arg(&policy_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&vf.to_string()) && err.contains(&format!("pid {me}")),
        "{err}"
    );
    assert_eq!(s.function(pf()).unwrap().sriov.unwrap().num_vfs, 2);

    // `vpm devices` names the holder.
    let json = devices_json();
    let row = json
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["bdf"] == vf.to_string())
        .unwrap();
    assert_eq!(row["holders"][0]["pid"], me);
    assert_eq!(row["physfn"], PF);

    drop(device);
    let facts = executor::facts::gather(&roots, Some(&policy), vf).unwrap();
    assert!(facts.holders.is_empty());
    executor::execute(
        &roots,
        Some(&policy),
        Action::SetVfs { pf: pf(), count: 0 },
        true,
        &opts,
        None,
    )
    .unwrap();
    assert_eq!(s.function(pf()).unwrap().sriov.unwrap().num_vfs, 0);
}

fn devices_json() -> serde_json::Value {
    let out = Command::new(bin("vpm"))
        .args(["devices", "--output", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn vpm_devices_lists_the_pf_with_its_name_and_vfs() {
    in_lab();
    vfs(3);
    let json = devices_json();
    let pf_row = json
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["bdf"] == PF)
        .expect("PF listed");
    assert_eq!(pf_row["vendor"], 0x1b36);
    assert_eq!(pf_row["device"], 0x0010);
    assert_eq!(pf_row["device_name"], "QEMU NVM Express Controller");
    assert_eq!(pf_row["sriov"]["total_vfs"], 4);
    assert_eq!(pf_row["sriov"]["num_vfs"], 3);
    assert_eq!(pf_row["driver"], "nvme");
    let table = Command::new(bin("vpm")).arg("devices").output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("QEMU NVM Express Controller [1b36:0010]") && table.contains("3/4 VFs"),
        "{table}"
    );
    sys().set_sriov_numvfs(pf(), 0, WRITE).unwrap();
}

/// The virtio-net (00:03.0) and virtio-blk (00:03.1) functions of the lab.
fn virtio_pair() -> (Bdf, Bdf) {
    (
        "0000:00:03.0".parse().unwrap(),
        "0000:00:03.1".parse().unwrap(),
    )
}

fn sh(script: &str) {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn host_use_iommu_group_and_allow_list_checks_refuse() {
    in_lab();
    let s = sys();
    let (net, blk) = virtio_pair();
    let (_dir, _path, policy) = policy_allowing(&["0000:00:03.0", "0000:00:03.1"]);
    let roots = Roots::host();
    let opts = ApplyOptions::default();
    let group = s.function(net).unwrap().iommu_group.unwrap();
    assert_eq!(
        s.function(blk).unwrap().iommu_group,
        Some(group),
        "the multi-function slot is one IOMMU group"
    );
    assert_eq!(s.driver(blk).unwrap().as_deref(), Some("virtio-pci"));

    let block = first_child(&s.device_dir(blk), "block");
    let ifname = first_child(&s.device_dir(net), "net");
    sh(&format!(
        "mke2fs -q /dev/{block} && mkdir -p /mnt/lab && mount -t ext2 /dev/{block} /mnt/lab"
    ));
    sh(&format!("ip link set {ifname} up"));

    let r = refusals(executor::execute(
        &roots,
        Some(&policy),
        Action::Park { bdf: blk },
        true,
        &opts,
        None,
    ));
    assert!(r.iter().any(|r| matches!(r, Refusal::HostInUse { uses, .. } if format!("{uses:?}").contains("/mnt/lab"))), "{r:?}");
    assert!(r.iter().any(|r| matches!(r, Refusal::GroupUnsafe { members, .. } if members.iter().any(|m| m.bdf == net))), "{r:?}");
    let r = refusals(executor::execute(
        &roots,
        Some(&policy),
        Action::Park { bdf: net },
        true,
        &opts,
        None,
    ));
    assert!(r.iter().any(|r| matches!(r, Refusal::HostInUse { uses, .. } if format!("{uses:?}").contains(&ifname))), "{r:?}");

    // Unmounted and down, the group rule still refuses on its own.
    sh(&format!("umount /mnt/lab && ip link set {ifname} down"));
    let r = refusals(executor::execute(
        &roots,
        Some(&policy),
        Action::Park { bdf: blk },
        true,
        &opts,
        None,
    ));
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(matches!(r[0], Refusal::GroupUnsafe { .. }), "{r:?}");
    assert_eq!(
        s.driver(blk).unwrap().as_deref(),
        Some("virtio-pci"),
        "nothing changed"
    );

    // Outside the allow-list, and without a policy at all: refused.
    let (_d2, _p2, other) = policy_allowing(&["0000:00:03.0"]);
    let r = refusals(executor::execute(
        &roots,
        Some(&other),
        Action::Wake { bdf: blk },
        true,
        &opts,
        None,
    ));
    assert_eq!(r, vec![Refusal::NotAllowed { bdf: blk }]);
    let r = refusals(executor::execute(
        &roots,
        None,
        Action::Wake { bdf: blk },
        true,
        &opts,
        None,
    ));
    assert_eq!(r, vec![Refusal::NoPolicy]);
}

#[test]
fn pci_commands_dry_run_by_default() {
    in_lab();
    let s = sys();
    vfs(0);
    let (_dir, path, _) = policy_allowing(&[PF]);
    let out = Command::new(bin("vpm"))
        .args(["pci", "set-vfs", PF, "2", "--policy"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("dry run") && text.contains("write 2 to sriov_numvfs"),
        "{text}"
    );
    assert_eq!(
        s.function(pf()).unwrap().sriov.unwrap().num_vfs,
        0,
        "a dry run changes nothing"
    );

    let out = Command::new(bin("vpm"))
        .args([
            "pci", "set-vfs", PF, "2", "--apply", "--output", "json", "--policy",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["applied"], true);
    assert_eq!(s.function(pf()).unwrap().sriov.unwrap().num_vfs, 2);

    // Without a policy file: says so and refuses.
    let out = Command::new(bin("vpm"))
        .args([
            "pci",
            "set-vfs",
            PF,
            "0",
            "--apply",
            "--policy",
            "/nonexistent/policy.toml",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no policy file"), "{err}");
    assert_eq!(s.function(pf()).unwrap().sriov.unwrap().num_vfs, 2);
    s.set_sriov_numvfs(pf(), 0, WRITE).unwrap();
}

fn first_child(dir: &Path, class: &str) -> String {
    // `…/virtioN/<class>/<name>`
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path().join(class);
        if let Ok(mut names) = std::fs::read_dir(&p)
            && let Some(Ok(n)) = names.next()
        {
            return n.file_name().to_string_lossy().into_owned();
        }
    }
    panic!("no {class} device under {}", dir.display());
}

#[test]
fn a_crash_between_journal_and_read_back_is_reconciled_on_restart() {
    in_lab();
    let s = sys();
    vfs(0);
    let (_dir, path, _) = policy_allowing(&[PF]);
    let state = tempfile::tempdir().unwrap();
    let vpm = |failpoint: Option<&str>, count: &str| {
        let mut c = Command::new(bin("vpm"));
        c.args(["pci", "set-vfs", PF, count, "--apply", "--policy"])
            .arg(&path)
            .arg("--state-dir")
            .arg(state.path());
        if let Some(f) = failpoint {
            c.env("VPM_FAILPOINT", f);
        }
        c.output().unwrap()
    };
    // Killed after the intent, before the write: nothing happened.
    let out = vpm(Some("after-intent"), "2");
    assert!(!out.status.success());
    assert_eq!(s.function(pf()).unwrap().sriov.unwrap().num_vfs, 0);
    // Restart (any --apply run): reconciled as not done, and not re-applied.
    let out = vpm(None, "0");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("set 0000:01:00.0 to 2 VFs") && err.contains("had not taken effect"),
        "{err}"
    );
    assert_eq!(
        s.function(pf()).unwrap().sriov.unwrap().num_vfs,
        0,
        "not applied by the restart"
    );

    // Killed after the write, before the read-back was journaled: it took effect.
    let out = vpm(Some("after-apply"), "3");
    assert!(!out.status.success());
    assert_eq!(s.function(pf()).unwrap().sriov.unwrap().num_vfs, 3);
    let out = vpm(None, "3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("to 3 VFs") && err.contains("had taken effect"),
        "{err}"
    );
    assert_eq!(
        s.function(pf()).unwrap().sriov.unwrap().num_vfs,
        3,
        "applied once"
    );

    // The journal tells the whole story; a third start finds nothing to reconcile.
    let entries = executor::journal::read(state.path()).unwrap();
    use executor::journal::Phase::*;
    let phases: Vec<_> = entries.iter().map(|e| e.phase).collect();
    assert_eq!(
        phases,
        vec![
            Intent, Reconciled, Intent, Done, Intent, Reconciled, Intent, Done
        ]
    );
    assert!(executor::journal::interrupted(&entries).is_empty());
    s.set_sriov_numvfs(pf(), 0, WRITE).unwrap();
}
