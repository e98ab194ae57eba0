//! The `vpm` binary end to end: batch reports with exact counts, hostile VM
//! names, the agent with its socket and exports, and the errors an operator
//! meets (not root, tracefs missing, no BTF, bad arguments).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests fail loudly"
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use assert_cmd::prelude::*;
use vpm_tests::qemu::Qemu;
use vpm_tests::{HeldVm, bin, wait_until};

/// `vpm` run as the unprivileged user `nobody`, without capabilities.
fn as_nobody() -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ])
    .arg(bin("vpm"));
    c
}

fn vpm() -> Command {
    let mut c = Command::new(bin("vpm"));
    c.env("RUST_LOG", "info");
    c
}

fn vm_by_pid(report: &serde_json::Value, pid: u32) -> &serde_json::Value {
    report["vms"]
        .as_array()
        .and_then(|vms| vms.iter().find(|v| v["pid"] == pid))
        .unwrap_or_else(|| panic!("pid {pid} not in report {report:#}"))
}

/// Starts `vpm top --once` and returns once it has attached and is collecting.
fn start_top(extra: &[&str]) -> std::process::Child {
    let mut child = vpm()
        .args(["top", "--once", "--standalone", "--output", "json"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vpm top");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let line = lines
            .next()
            .expect("vpm top exited before collecting")
            .expect("read stderr");
        if line.contains("collecting for") {
            break;
        }
    }
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    child
}

#[test]
fn top_once_reports_exact_counts_names_and_uuids() {
    let top = start_top(&["--duration", "3s", "--interval", "500ms"]);
    let uuid = "6c1e0a5e-1f3b-4c9e-9a51-0123456789ab";
    let vm = HeldVm::start(
        &[
            "-name",
            "guest=web01,debug-threads=on",
            "-uuid",
            uuid,
            "--pio",
            "0x3f8:4321",
            "--mmio",
            "0x100000:123",
        ],
        None,
    )
    .expect("guest");
    let out = top.wait_with_output().expect("vpm top");
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(report["window_s"].as_f64().expect("window_s") >= 2.9);
    let v = vm_by_pid(&report, vm.pid);
    assert_eq!(v["vm"], "web01");
    assert_eq!(v["uuid"], uuid);
    assert_eq!(v["events"]["pio"], 4322); // + the done port
    assert_eq!(v["events"]["mmio"], 123);
    assert_eq!(v["events"]["userspace_exit"], 4321 + 123 + 1);
    let devices = v["devices"].as_array().expect("devices");
    let port = devices
        .iter()
        .find(|d| d["key"] == "0x3f8")
        .expect("port 0x3f8");
    assert_eq!(port["kind"], "pio");
    assert_eq!(port["count"], 4321);
    assert_eq!(port["bytes"], 4321);
    let page = devices
        .iter()
        .find(|d| d["key"] == "0x100000")
        .expect("mmio page");
    assert_eq!(page["kind"], "mmio");
    assert_eq!(page["count"], 123);
    // Host metrics of a live process are read.
    assert!(v["host"]["mem_bytes"].as_u64().expect("mem") > 0);
    assert!(v["host"]["cpu"].as_f64().is_some());
    vm.release().expect("release");
}

#[test]
fn without_btf_it_falls_back_to_raw_tracepoints_and_still_counts_exactly() {
    let top = start_top(&["--duration", "2s", "--btf", "/nonexistent/vmlinux"]);
    let vm = HeldVm::start(&["--pio", "0x80:777"], None).expect("guest");
    let out = top.wait_with_output().expect("vpm top");
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(vm_by_pid(&report, vm.pid)["events"]["pio"], 778);
    vm.release().expect("release");
}

#[test]
fn missing_btf_is_named_with_its_fix() {
    let out = vpm()
        .args([
            "top",
            "--once",
            "--standalone",
            "--duration",
            "500ms",
            "--btf",
            "/nonexistent/vmlinux",
        ])
        .output()
        .expect("vpm");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("BTF not found at /nonexistent/vmlinux"),
        "{stderr}"
    );
    assert!(stderr.contains("CONFIG_DEBUG_INFO_BTF"), "{stderr}");
    assert!(stderr.contains("raw_tp"), "{stderr}");
}

#[test]
fn not_root_is_refused_with_the_fix() {
    let out = as_nobody()
        .args(["top", "--once", "--standalone", "--duration", "1s"])
        .output()
        .expect("setpriv");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not permitted to load eBPF programs"),
        "{stderr}"
    );
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("sudo"),
        "{stderr}"
    );
}

#[test]
fn tracefs_not_mounted_names_the_mount_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = vpm()
        .args([
            "top",
            "--once",
            "--standalone",
            "--duration",
            "1s",
            "--tracefs",
        ])
        .arg(dir.path())
        .output()
        .expect("vpm");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!("tracefs not mounted at {}", dir.path().display());
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("mount -t tracefs nodev"), "{stderr}");

    // `vpm record` fails the same way before it touches its --out file.
    let kept = dir.path().join("kept.csv");
    std::fs::write(&kept, "recorded before\n").expect("write");
    let out = vpm()
        .args(["record", "--duration", "1s", "--tracefs"])
        .arg(dir.path())
        .arg("--out")
        .arg(&kept)
        .output()
        .expect("vpm");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        std::fs::read_to_string(&kept).expect("read"),
        "recorded before\n"
    );
}

#[test]
fn bad_arguments_teach_the_syntax() {
    vpm()
        .args(["top", "--once", "--duration", "10"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("ms, s, m or h"));
    vpm()
        .args(["top", "--once", "--output", "xml"])
        .assert()
        .failure()
        .stderr(predicates::prelude::PredicateBooleanExt::and(
            predicates::str::contains("table"),
            predicates::str::contains("json"),
        ));
    // Batch-report options without --once would be ignored by the live view.
    vpm()
        .args(["top", "--duration", "2s", "--output", "json"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("--once"));
    // A format where a command has none to offer is not offered.
    vpm()
        .args(["eval", "--input", "x.csv", "--output", "csv"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("possible values: table, json"));
}

/// Splits one CSV line into fields (RFC 4180 quoting).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().expect("field").push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(String::new()),
            (c, _) => fields.last_mut().expect("field").push(c),
        }
    }
    fields
}

#[test]
fn hostile_vm_names_never_corrupt_csv_or_the_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("rec.csv");
    // ESC sequence, quotes, a QEMU-escaped comma, a newline and a tab.
    let hostile = "guest=evil\u{1b}[2J,,\"q\"\nx\ty,debug-threads=on";
    let vm = HeldVm::start(&["-name", hostile, "--pio", "0x3f8:5"], None).expect("guest");
    vpm()
        .args([
            "record",
            "--duration",
            "1500ms",
            "--interval",
            "500ms",
            "-o",
        ])
        .arg(&csv)
        .assert()
        .success();
    let table = vpm()
        .args([
            "top",
            "--once",
            "--standalone",
            "--duration",
            "500ms",
            "--output",
            "table",
        ])
        .output()
        .expect("vpm top");
    let pid = vm.pid;
    vm.release().expect("release");

    let bytes = std::fs::read(&csv).expect("csv");
    assert!(!bytes.contains(&0x1b), "ESC reached the CSV");
    let text = String::from_utf8(bytes).expect("utf8");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("timestamp,vm,pid,resource,value"));
    let mut names = Vec::new();
    let mut resources = std::collections::BTreeSet::new();
    for line in lines {
        let f = csv_fields(line);
        assert_eq!(f.len(), 5, "row {line:?}");
        if f[2] == pid.to_string() {
            names.push(f[1].clone());
            resources.insert(f[3].clone());
        }
    }
    // Host metrics are rows too (each tick diffs against the previous one).
    for r in ["cpu", "mem_bytes", "pio_per_s", "userspace_exit_per_s"] {
        assert!(resources.contains(r), "no {r} rows: {resources:?}");
    }
    assert!(!names.is_empty(), "the VM is not in the recording:\n{text}");
    assert_eq!(names[0], "evil\\x1b[2J,\"q\"\\x0ax\\x09y");
    assert!(
        !table.stdout.contains(&0x1b),
        "ESC reached the terminal output"
    );
    assert!(String::from_utf8_lossy(&table.stdout).contains("evil\\x1b[2J"));
}

#[test]
fn the_agent_serves_top_and_exports_telemetry_csv() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("vpm.sock");
    let exports = dir.path().join("exports");
    let mut agent = vpm()
        .args([
            "run",
            "--interval",
            "500ms",
            "--export-interval",
            "1s",
            "--duration",
            "30s",
        ])
        .args(["--step", "1s", "--horizons", "2s,5s"])
        .arg("--socket")
        .arg(&socket)
        .arg("--export-dir")
        .arg(&exports)
        .stderr(Stdio::piped())
        .spawn()
        .expect("vpm run");
    assert!(
        wait_until(Duration::from_secs(20), || socket.exists()),
        "agent socket never appeared"
    );
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    let vm = HeldVm::start(&["-name", "db7", "--pio", "0x70:300"], None).expect("guest");
    let out = vpm()
        .args([
            "top",
            "--once",
            "--duration",
            "2s",
            "--output",
            "json",
            "--socket",
        ])
        .arg(&socket)
        .output()
        .expect("vpm top");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("using the agent"));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let v = vm_by_pid(&report, vm.pid);
    assert_eq!(v["vm"], "db7");
    assert_eq!(v["events"]["pio"], 301);

    // Exports: atomic files in the long format, naming the VM.
    assert!(
        wait_until(Duration::from_secs(10), || {
            std::fs::read_dir(&exports).is_ok_and(|d| {
                d.filter_map(Result::ok).any(|e| {
                    std::fs::read_to_string(e.path())
                        .is_ok_and(|t| t.contains(",db7,") && t.contains("dev:pio:0x70_per_s"))
                })
            })
        }),
        "no export names the VM"
    );
    // Forecast exports: the documented schema, a row per horizon for the VM's series.
    let forecast_for_vm = || {
        std::fs::read_dir(&exports).ok().and_then(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("forecast-"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .find(|t| t.contains(",db7,dev:pio:0x70_per_s,5,"))
        })
    };
    assert!(
        wait_until(Duration::from_secs(20), || forecast_for_vm().is_some()),
        "no forecast export names the VM: {:?}",
        std::fs::read_dir(&exports).map(|d| d
            .filter_map(Result::ok)
            .map(|e| (
                e.file_name(),
                std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .lines()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" | ")
            ))
            .collect::<Vec<_>>())
    );
    let text = forecast_for_vm().expect("forecast export");
    assert!(text.starts_with(
        "generated_at,vm,resource,horizon_s,target_time,predicted,lower,upper,model,backtest_wape\n"
    ));
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), 10, "{line}");
        let (predicted, lower, upper): (f64, f64, f64) = (
            f[5].parse().expect("predicted"),
            f[6].parse().expect("lower"),
            f[7].parse().expect("upper"),
        );
        assert!(
            lower <= predicted.max(lower) && lower <= upper && predicted >= 0.0,
            "{line}"
        );
    }
    vm.release().expect("release");
    // SIGTERM: the agent stops cleanly and removes its socket.
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let status = agent.wait().expect("agent");
    assert!(status.success(), "agent exit {status}");
    assert!(!socket.exists(), "socket left behind");
    for entry in std::fs::read_dir(&exports).expect("exports") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let header = if name.starts_with("telemetry-") {
            "timestamp,vm,pid,resource,value\n"
        } else if name.starts_with("forecast-") {
            "generated_at,vm,resource,horizon_s,target_time,predicted,lower,upper,model,backtest_wape\n"
        } else {
            panic!("stray file {name}");
        };
        assert!(name.ends_with(".csv"), "stray file {name}");
        let text = std::fs::read_to_string(&path).expect("export");
        assert!(text.starts_with(header), "{name}: {text}");
    }
}

#[test]
fn devices_lists_every_host_function() {
    let out = vpm()
        .args(["devices", "--output", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut listed: Vec<String> = rows
        .iter()
        .map(|r| r["bdf"].as_str().unwrap().to_owned())
        .collect();
    let mut sysfs: Vec<String> = std::fs::read_dir("/sys/bus/pci/devices")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    sysfs.sort();
    assert_eq!(listed, sysfs);
    for row in &rows {
        let vendor = std::fs::read_to_string(format!(
            "/sys/bus/pci/devices/{}/vendor",
            row["bdf"].as_str().unwrap()
        ))
        .unwrap();
        assert_eq!(
            row["vendor"].as_u64(),
            u64::from_str_radix(vendor.trim().trim_start_matches("0x"), 16).ok()
        );
    }
    let table = vpm().arg("devices").output().unwrap();
    assert!(table.status.success());
    assert!(String::from_utf8_lossy(&table.stdout).contains(&sysfs[0]));
}

/// The address of some PCI function of this host.
fn first_pci_function() -> String {
    std::fs::read_dir("/sys/bus/pci/devices")
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn pci_actions_are_refused_without_policy_and_acting_needs_root() {
    let bdf = first_pci_function();
    let out = vpm()
        .args(["pci", "wake", &bdf, "--policy", "/nonexistent/policy.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no policy file") && err.contains("[devices] allow"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[devices]\nallow = [\"0000:00:00.0\"]\nextra = 1\n",
    )
    .unwrap();
    let out = vpm()
        .args(["pci", "wake", &bdf, "--policy"])
        .arg(&policy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("line 3") && err.contains("extra"),
        "{err}"
    );

    std::fs::write(&policy, format!("[devices]\nallow = [\"{bdf}\"]\n")).unwrap();
    // Readable by the unprivileged user below.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = as_nobody()
        .args(["pci", "wake", &bdf, "--apply", "--policy"])
        .arg(&policy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("needs root"), "{err}");
}

#[test]
fn the_agent_plans_under_a_policy_and_serves_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vpm.sock");
    let exports = dir.path().join("exports");
    let policy = dir.path().join("policy.toml");
    // Managing (a device this host does not have), so no device action: the
    // plan still recommends CPU and memory for every VM. db8's class holds a
    // target under-provision rate: its headroom adapts to live outcomes.
    std::fs::write(
        &policy,
        "[devices]\nallow = [\"0000:7f:1f.7\"]\n\
         [classes.gold]\nunder_provision = 0.1\n\
         [classes.best-effort]\nquantile = 0.8\n\
         [vms]\nrules = [{ vm = \"db*\", class = \"gold\" }]\n",
    )
    .unwrap();
    let mut agent = vpm()
        .args([
            "run",
            "--interval",
            "500ms",
            "--export-interval",
            "2s",
            "--plan-interval",
            "1s",
        ])
        .args(["--step", "1s", "--horizons", "2s,5s", "--duration", "40s"])
        .arg("--socket")
        .arg(&socket)
        .arg("--export-dir")
        .arg(&exports)
        .arg("--policy")
        .arg(&policy)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || socket.exists()),
        "agent socket never appeared"
    );
    let _vm = HeldVm::start(&["-name", "db8", "--pio", "0x70:300"], None).unwrap();

    let plan_json = || {
        let out = vpm()
            .args(["plan", "--output", "json", "--socket"])
            .arg(&socket)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let recommends_db8 = |p: &serde_json::Value| {
        p["plan"]["recommendations"].as_array().is_some_and(|r| {
            r.iter()
                .any(|r| r["vm"] == "db8" && r["cpu"]["limit"].is_number())
        })
    };
    assert!(
        wait_until(Duration::from_secs(25), || recommends_db8(&plan_json())),
        "{:#}",
        plan_json()
    );
    // The gold class's forecasts (2 s and 5 s ahead, at 1 s steps) are
    // scored as their targets' data comes in.
    let scored = |p: &serde_json::Value| {
        p["headroom"].as_array().is_some_and(|h| {
            h.iter().any(|c| {
                c["class"] == "gold"
                    && c["target"] == 0.1
                    && c["horizon_s"] == 2.0
                    && c["stats"]["outcomes"].as_u64().is_some_and(|n| n >= 3)
            })
        })
    };
    assert!(
        wait_until(Duration::from_secs(15), || scored(&plan_json())),
        "{:#}",
        plan_json()["headroom"]
    );
    let p = plan_json();
    assert_eq!(p["managing"], true);
    assert_eq!(p["apply"], false);
    assert_eq!(p["plan"]["actions"].as_array().map(Vec::len), Some(0));
    // Only classes with a target rate adapt.
    let classes: Vec<&str> = p["headroom"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["class"].as_str())
        .collect();
    assert!(classes.iter().all(|c| *c == "gold"), "{classes:?}");
    let table = vpm()
        .args(["plan", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("dry run") && table.contains("db8") && table.contains("TARGET ABOVE"),
        "{table}"
    );

    // The recommendations CSV, in its documented schema.
    assert!(
        wait_until(Duration::from_secs(10), || {
            std::fs::read_dir(&exports).is_ok_and(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with("recommendations-")
                    })
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .any(|t| {
                        t.starts_with(vpm::control::csv::RECOMMENDATIONS_HEADER)
                            && t.contains(",db8,")
                    })
            })
        }),
        "no recommendations export names the VM"
    );
    let _ = agent.kill();
    let _ = agent.wait();

    // An invalid policy stops the agent before it starts, naming the line.
    std::fs::write(
        &policy,
        "[devices]\nallow = [\"0000:7f:1f.7\"]\n[plan]\nhorizon = 5\n",
    )
    .unwrap();
    let out = vpm()
        .args(["run", "--duration", "1s", "--policy"])
        .arg(&policy)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 4") && err.contains("horizon"), "{err}");
}

#[test]
fn a_demo_whose_guests_cannot_run_stops_and_says_why() {
    // A vpm-testvm that dies at start, as it does without /dev/kvm.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(bin("vpm"), dir.path().join("vpm")).unwrap();
    let testvm = dir.path().join("vpm-testvm");
    std::fs::write(
        &testvm,
        "#!/bin/sh\necho 'cannot open /dev/kvm: Permission denied' >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&testvm, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(dir.path().join("vpm"))
        .args(["run", "--demo", "--duration", "10s", "--socket"])
        .arg(dir.path().join("s"))
        .arg("--export-dir")
        .arg(dir.path().join("ex"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("exited at start (exit status: 1): cannot open /dev/kvm"),
        "{err}"
    );
}

#[test]
fn the_demo_wakes_ahead_of_an_onset_and_parks_after_a_release() {
    let dir = tempfile::tempdir().unwrap();
    let exports = dir.path().join("exports");
    let socket = dir.path().join("vpm.sock");
    let log = dir.path().join("demo.log");
    let mut demo = vpm()
        .args([
            "run",
            "--demo",
            "--duration",
            "60s",
            "--export-interval",
            "5s",
        ])
        .arg("--socket")
        .arg(&socket)
        .arg("--export-dir")
        .arg(&exports)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // `vpm plan` against the demo: it acts on its simulated devices, so the
    // agent does not call its plan a dry run.
    let mut answer = serde_json::Value::Null;
    wait_until(Duration::from_secs(30), || {
        let out = vpm()
            .args(["plan", "--output", "json", "--socket"])
            .arg(&socket)
            .output()
            .unwrap();
        answer = serde_json::from_slice(&out.stdout).unwrap_or_default();
        !answer["plan"].is_null()
    });
    assert!(
        answer["apply"] == true && answer["managing"] == true && !answer["plan"].is_null(),
        "{answer}"
    );
    let plan = vpm()
        .args(["plan", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(plan.status.success() && !text.contains("dry run"), "{text}");
    // `vpm top` fed by the agent shows its forecasts: each demo VM's use of
    // the simulated PF among them.
    let top = vpm()
        .args([
            "top",
            "--once",
            "--duration",
            "1s",
            "--output",
            "json",
            "--socket",
        ])
        .arg(&socket)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&top.stdout).unwrap_or_default();
    let forecasts = report["forecasts"].as_array().cloned().unwrap_or_default();
    assert!(
        forecasts.iter().any(|f| f["vm"] == "demo-web"
            && f["resource"] == "vfs:0000:5e:00.0"
            && f["upper"].as_f64().is_some_and(|u| u >= 0.0)),
        "{report}"
    );
    let top = vpm()
        .args(["top", "--once", "--duration", "1s", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&top.stdout);
    assert!(
        text.contains("FORECAST") && text.contains("vfs:0000:5e:00.0"),
        "{text}"
    );
    let status = demo.wait().unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let read_all = |prefix: &str| -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        for e in std::fs::read_dir(&exports).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) && name.ends_with(".csv") {
                let text = std::fs::read_to_string(e.path()).unwrap();
                rows.extend(text.lines().skip(1).map(csv_fields));
            }
        }
        rows
    };
    // time,vm,event,vf,ready
    let events = read_all("demo-");
    // time,action,target,count,vm,priority,outcome,elapsed_ms,reason,message
    let actions = read_all("actions-");
    let applied = |kind: &str| -> Vec<(f64, String)> {
        actions
            .iter()
            .filter(|a| a[1] == kind && a[6] == "applied")
            .map(|a| (a[0].parse().unwrap(), a[2].clone()))
            .collect()
    };
    let (wakes, parks) = (applied("wake"), applied("park"));
    let woken_ahead = events
        .iter()
        .filter(|e| e[2] == "onset" && e[4] == "true")
        .any(|e| {
            let t: f64 = e[0].parse().unwrap();
            wakes
                .iter()
                .any(|(w, vf)| *vf == e[3] && *w < t && t - *w < 3.0)
        });
    let parked_after = events.iter().filter(|e| e[2] == "release").any(|e| {
        let t: f64 = e[0].parse().unwrap();
        parks
            .iter()
            .any(|(p, vf)| *vf == e[3] && *p > t && *p - t < 10.0)
    });
    assert!(
        woken_ahead && parked_after,
        "woken ahead {woken_ahead}, parked after {parked_after}\nevents {events:?}\nactions {actions:?}"
    );
    // Only the simulated PF was acted on.
    assert!(
        actions.iter().all(|a| a[2].starts_with("0000:5e:00.")),
        "{actions:?}"
    );
}

#[test]
fn vm_commands_find_monitors_ports_and_refuse_libvirt() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("a.sock");
    // libvirt keeps its monitors under …/libvirt/qemu/.
    let lv_dir = dir.path().join("libvirt/qemu/domain-1-host-lv");
    std::fs::create_dir_all(&lv_dir).unwrap();
    let lv_sock = lv_dir.join("monitor.sock");
    // Paused (`-S`): no firmware runs; QOM and QMP answer all the same.
    let a = Qemu::builder("host-a")
        .args(["-S", "-device", "pcie-root-port,id=rp1,chassis=1,slot=1"])
        .args([
            "-device",
            "pcie-root-port,id=rp2,chassis=2,slot=2,hotplug=off",
        ])
        .qmp(&sock)
        .start()
        .unwrap();
    let lv = Qemu::builder("host-lv")
        .args([
            "-S".to_owned(),
            "-chardev".to_owned(),
            format!(
                "socket,id=mon0,path={},server=on,wait=off",
                lv_sock.display()
            ),
            "-mon".to_owned(),
            "chardev=mon0,mode=control".to_owned(),
        ])
        .start()
        .unwrap();
    let none = Qemu::builder("host-nomon")
        .args(["-S", "-monitor", "none"])
        .start()
        .unwrap();
    assert!(wait_until(Duration::from_secs(20), || sock.exists()
        && lv_sock.exists()));

    let out = vpm()
        .args(["vm", "list", "--output", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = |pid: u32| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|r| r["pid"] == pid)
            .unwrap_or_else(|| panic!("pid {pid} not listed: {list:#}"))
            .clone()
    };
    let ra = row(a.pid());
    assert_eq!(ra["vm"], "host-a");
    assert_eq!(ra["monitor"]["path"], sock.display().to_string());
    assert_eq!(ra["monitor"]["from"], "-qmp");
    assert_eq!(ra["ports"]["free"], serde_json::json!(["rp1"]));
    assert_eq!(ra["ports"]["no_hotplug"], serde_json::json!(["rp2"]));
    assert_eq!(ra["attached"], serde_json::json!([]));
    let rl = row(lv.pid());
    assert_eq!(rl["libvirt"], true);
    assert_eq!(rl["monitor"]["from"], "-chardev");
    assert!(rl["error"].as_str().unwrap().contains("libvirt"), "{rl}");
    assert!(rl["ports"].is_null(), "not asked: unknown, not empty: {rl}");
    let rn = row(none.pid());
    assert_eq!(rn["monitor"]["kind"], "none");
    assert!(
        rn["error"].as_str().unwrap().contains("no QMP monitor"),
        "{rn}"
    );

    // Refusals name the reason: libvirt's monitor, no monitor, an unknown VM.
    let bdf = first_pci_function();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[devices]\nallow = [\"{bdf}\"]\n[classes.x]\nhotplug = true\n[vms]\ndefault = \"x\"\n"
        ),
    )
    .unwrap();
    let err = |args: &[&str]| {
        let out = vpm()
            .args(args)
            .arg("--policy")
            .arg(&policy)
            .output()
            .unwrap();
        assert!(!out.status.success(), "vpm {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = err(&["vm", "attach", "host-lv", &bdf]);
    assert!(
        e.contains("managed by libvirt") && e.contains("virsh"),
        "{e}"
    );
    let e = err(&["vm", "attach", "host-nomon", &bdf]);
    assert!(
        e.contains("no QMP monitor vpm can use") && e.contains("-qmp unix:"),
        "{e}"
    );
    let e = err(&["vm", "detach", &a.pid().to_string(), &bdf]);
    assert!(e.contains("is not hot-plugged into VM host-a"), "{e}");
    let e = err(&["vm", "attach", "no-such-vm", &bdf]);
    assert!(
        e.contains("no VM named \"no-such-vm\"") && e.contains("host-a"),
        "{e}"
    );

    // Acting needs root.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = as_nobody()
        .args(["vm", "attach", "host-a", &bdf, "--apply", "--policy"])
        .arg(&policy)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("needs root"), "{e}");
}
