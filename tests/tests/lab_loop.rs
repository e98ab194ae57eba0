//! The closed loop on a real kernel (run by `cargo xtask vm-test`): `vpm run
//! --apply` in the lab guest with a VMM-like process that uses a VF on a fixed
//! schedule through VFIO. vpm must learn the schedule and act ahead of it:
//! the VF pool exists before the first use, the VF is parked between uses and
//! woken ahead of onsets (every late use but at most one finds it ready,
//! and so does every late use after a park but at most one), and the VF
//! count never changes under an open VF.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use vpm::executor::Action;
use vpm::executor::journal::{self, Phase};
use vpm::hal::Sysfs;
use vpm_tests::{bin, wait_until};

const PF: &str = "0000:01:00.0";

const POLICY: &str = r#"
[devices]
allow = ["0000:01:00.0"]

[plan]
horizon_s = 2
max_actions_per_tick = 4
preference = "balanced"
wake_latency_s = 0.5

[dwell]
awake_s = 1
parked_s = 1
vf_count_s = 30

[classes.lab]
priority = 10
min_vfs = 1
max_vfs = 1

[classes.best-effort]
priority = 1

[vms]
rules = [{ vm = "lab-*", class = "lab" }]
default = "best-effort"
"#;

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn vpm_run_apply_acts_ahead_of_a_scheduled_vfio_user() {
    assert_eq!(
        std::env::var("VPM_LAB").as_deref(),
        Ok("1"),
        "run with `cargo xtask vm-test`"
    );
    let sys = Sysfs::host();
    let pf = PF.parse().unwrap();
    sys.set_sriov_numvfs(pf, 0, Duration::from_secs(60))
        .unwrap();
    // The kernel's default: new VFs get the host driver. vpm turns it off
    // before it creates VFs (checked after the run).
    sys.set_sriov_drivers_autoprobe(pf, true).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let state = dir.path().join("state");
    let exports = dir.path().join("exports");
    let mut agent = Command::new(bin("vpm"))
        .args(["run", "--apply", "--interval", "250ms", "--step", "500ms"])
        .args([
            "--horizons",
            "1s,2s",
            "--plan-interval",
            "500ms",
            "--export-interval",
            "5s",
        ])
        .arg("--policy")
        .arg(&policy)
        .arg("--state-dir")
        .arg(&state)
        .arg("--export-dir")
        .arg(&exports)
        .arg("--socket")
        .arg(dir.path().join("vpm.sock"))
        .env("RUST_LOG", "info")
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("agent.log")).unwrap(),
        ))
        .spawn()
        .unwrap();

    // The user is a VMM to vpm (a `qemu-system-*` binary with `-name guest=…`)
    // that "boots" for 8 s before its first use; its class keeps one VF ready
    // (min_vfs), so the pool exists before the first use.
    let user_bin = dir.path().join("qemu-system-x86_64");
    std::fs::copy(bin("lab-vfio-user"), &user_bin).unwrap();
    let log = dir.path().join("user.jsonl");
    // Gaps long enough that parking pays even when the agent under TCG
    // takes seconds to react (it then wakes that much earlier).
    let cycles = 24;
    let mut user = Command::new(&user_bin)
        .args([
            "--name",
            "guest=lab-vm",
            "--pf",
            PF,
            "--on-ms",
            "3000",
            "--off-ms",
            "9000",
        ])
        .args(["--cycles", &cycles.to_string(), "--start-delay-ms", "8000"])
        .arg("--log")
        .arg(&log)
        .spawn()
        .unwrap();
    let status = user.wait().unwrap();
    let plan = Command::new(bin("vpm"))
        .args(["plan", "--output", "json", "--socket"])
        .arg(dir.path().join("vpm.sock"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let _ = Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status();
    assert!(wait_until(Duration::from_secs(30), || agent
        .try_wait()
        .ok()
        .flatten()
        .is_some()));
    let agent_log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
        + "\nlast plan: "
        + &plan;
    assert!(
        status.success(),
        "the VFIO user failed; agent log:\n{agent_log}"
    );
    assert!(
        !sys.sriov_drivers_autoprobe(pf).unwrap(),
        "vpm left the PF's VF autoprobe on"
    );

    // Keep the agent's exports, the user's log and the journal for a post-mortem
    // on the host (the guest sees the workspace at the same path).
    let keep = Path::new("target/lab/loop");
    let _ = std::fs::remove_dir_all(keep);
    if std::fs::create_dir_all(keep).is_ok() {
        for f in std::fs::read_dir(&exports).into_iter().flatten().flatten() {
            let _ = std::fs::copy(f.path(), keep.join(f.file_name()));
        }
        let _ = std::fs::copy(&log, keep.join("user.jsonl"));
        let _ = std::fs::copy(state.join(journal::FILE_NAME), keep.join("journal.jsonl"));
        let _ = std::fs::write(keep.join("agent.log"), &agent_log);
    }
    let entries = json_lines(&log);
    let onsets: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e.get("ready").is_some())
        .collect();
    let closes: Vec<f64> = entries
        .iter()
        .filter_map(|e| e["t_close"].as_f64())
        .collect();
    eprintln!("onsets: {onsets:#?}");
    assert_eq!(onsets.len(), cycles);
    assert!(
        onsets.iter().all(|o| o["vf"].is_string()),
        "a use found no VF: {onsets:#?}\n{agent_log}"
    );

    // The journal: what vpm did, with read-backs.
    let journal = journal::read(&state).unwrap();
    let done: Vec<&journal::Entry> = journal.iter().filter(|e| e.phase == Phase::Done).collect();
    let parks: Vec<f64> = done
        .iter()
        .filter(|e| matches!(e.action, Action::Park { .. }))
        .map(|e| e.time)
        .collect();
    let wakes: Vec<f64> = done
        .iter()
        .filter(|e| matches!(e.action, Action::Wake { .. }))
        .map(|e| e.time)
        .collect();
    eprintln!(
        "journal: {} done, {} parks, {} wakes",
        done.len(),
        parks.len(),
        wakes.len()
    );

    // Never a VF-count change while the VF was open.
    for e in done
        .iter()
        .filter(|e| matches!(e.action, Action::SetVfs { .. }))
    {
        for (o, c) in onsets
            .iter()
            .filter_map(|o| o["t_open"].as_f64())
            .zip(&closes)
        {
            assert!(
                !(o..=*c).contains(&e.time),
                "VF count changed at {} while open {o}..{c}",
                e.time
            );
        }
    }
    // Acting ahead: between two uses the VF was parked, and before some
    // onsets vpm woke it again, so the VM found it in D0. vpm may also keep
    // the VF awake through a short gap; the thresholds below are what it
    // must do at least.
    // Parked between two uses: vpm parked it (journal), or the next use found
    // it in D3hot (vpm left it bound to vfio-pci with power/control=auto, so
    // runtime PM idled it). Woken ahead: vpm woke it between the previous
    // release and an onset that found it in D0.
    let mut parked_between = 0;
    let mut woken_ahead = 0;
    // Late uses (the second half, the schedule learnt) that followed a park,
    // and how many of those found the VF awake: woken ahead.
    let (mut late_parked, mut late_woken) = (0, 0);
    for (i, (prev, next)) in onsets.iter().zip(onsets.iter().skip(1)).enumerate() {
        let (a, b) = (prev["t"].as_f64().unwrap(), next["t"].as_f64().unwrap());
        let close = closes
            .iter()
            .copied()
            .find(|c| *c > a && *c < b)
            .unwrap_or(a);
        let parked = parks.iter().any(|p| *p > close && *p < b) || next["state"] == "D3hot";
        let woken = next["ready"] == true && wakes.iter().any(|w| *w > close && *w < b);
        if parked {
            parked_between += 1;
        }
        if woken {
            woken_ahead += 1;
        }
        if i + 1 >= cycles / 2 && parked {
            late_parked += 1;
            late_woken += usize::from(woken);
        }
    }
    let late = &onsets[cycles / 2..];
    let ready = late.iter().filter(|o| o["ready"] == true).count();
    eprintln!(
        "onsets: {parked_between} parked between uses, {woken_ahead} woken ahead; \
         late onsets ready: {ready}/{}, parked before {late_parked}, of them woken ahead \
         {late_woken}",
        late.len()
    );
    assert!(
        parked_between >= 3,
        "parked between {parked_between};\n{agent_log}"
    );
    assert!(woken_ahead >= 2, "woken ahead {woken_ahead};\n{agent_log}");
    // Once the schedule is learnt, the late uses find the VF awake, and
    // those that follow a park were woken ahead: vpm wakes it earlier by its
    // own reaction time, which under TCG reaches seconds. One miss is
    // allowed for a reaction slower than the recent ones (it still wakes,
    // late): measured (late uses ready; woken after a park) 12/12 and 9/9,
    // 12/12 and 12/12 with a CPU hog on the host, 11/12 and 9/10, and 12/12
    // and 12/12 in a whole lab boot. How often it still
    // parks late in the run depends on the load: when its reaction time
    // nears the horizon it can no longer wake in time, and keeps the VF
    // awake instead (measured: 11 late parks in a run of this test alone, 2
    // with the other lab tests in the same boot).
    assert!(
        late_woken + 1 >= late_parked,
        "late uses woken ahead after a park: {late_woken}/{late_parked};\n{agent_log}"
    );
    assert!(
        ready + 1 >= late.len(),
        "late onsets ready: {ready}/{};\n{agent_log}",
        late.len()
    );

    let _ = sys.set_sriov_numvfs(pf, 0, Duration::from_secs(60));
}
