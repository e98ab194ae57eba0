//! Several real KVM guests at once with known counts: vpm's per-VM counts, read
//! from vpm's own BPF maps, must equal them exactly, and must equal what
//! `perf stat` counts on the same tracepoints for the same processes.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests fail loudly"
)]

use std::collections::BTreeMap;

use vpm::lab::vmm::DONE_PORT;
use vpm::monitor::{Monitor, MonitorOptions};
use vpm::telemetry::Snapshot;
use vpm_common::EventKind;
use vpm_tests::{HeldVm, parse_perf_csv};

/// Per-kind and per-(kind, device) totals of one process in a snapshot.
fn counts_of(
    snap: &Snapshot,
    tgid: u32,
) -> (BTreeMap<EventKind, u64>, BTreeMap<(EventKind, u64), u64>) {
    let mut kinds = BTreeMap::new();
    let mut devices = BTreeMap::new();
    for (key, c) in snap.counters.iter().filter(|(k, _)| k.tgid == tgid) {
        let kind = EventKind::from_u32(key.kind).expect("known kind");
        *kinds.entry(kind).or_default() += c.count;
        *devices.entry((kind, key.device)).or_default() += c.count;
    }
    (kinds, devices)
}

struct Case {
    name: &'static str,
    port: u16,
    pio: u64,
    gpa: u64,
    mmio: u64,
    msi: u64,
    irq: u64,
    repeat: u64,
}

const PERF_EVENTS: &str =
    "kvm:kvm_pio,kvm:kvm_mmio,kvm:kvm_userspace_exit,kvm:kvm_msi_set_irq,kvm:kvm_set_irq";

#[test]
fn concurrent_guests_are_counted_exactly_and_agree_with_perf() {
    let mut monitor = Monitor::start(&MonitorOptions::default()).expect("vpm attaches");
    let cases = [
        Case {
            name: "alpha",
            port: 0x3f8,
            pio: 12_345,
            gpa: 0x10_0000,
            mmio: 678,
            msi: 0,
            irq: 0,
            repeat: 1,
        },
        Case {
            name: "bravo",
            port: 0x70,
            pio: 2_000,
            gpa: 0x10_f000,
            mmio: 10,
            msi: 5,
            irq: 4,
            repeat: 3,
        },
        Case {
            name: "charlie",
            port: 0x2f8,
            pio: 1,
            gpa: 0x1_0000,
            mmio: 0,
            msi: 0,
            irq: 0,
            repeat: 2,
        },
    ];
    let mut vms = Vec::new();
    for c in &cases {
        let name = format!("guest={},debug-threads=on", c.name);
        let pio = format!("{:#x}:{}", c.port, c.pio);
        let mmio = format!("{:#x}:{}", c.gpa, c.mmio);
        let (msi, irq, repeat) = (c.msi.to_string(), c.irq.to_string(), c.repeat.to_string());
        let args = [
            "-name",
            &name,
            "--pio",
            &pio,
            "--mmio",
            &mmio,
            "--msi",
            &msi,
            "--irq",
            &irq,
            "--repeat",
            &repeat,
            "--pause-ms",
            "20",
        ];
        let perf = ["perf", "stat", "-x,", "-e", PERF_EVENTS, "--"];
        vms.push(HeldVm::start(&args, Some(&perf)).expect("guest runs"));
    }

    // All guests are done and held alive: read vpm's maps.
    let tick = monitor.tick(0.0).expect("tick");
    let snap = monitor.last_snapshot().clone();
    for (c, vm) in cases.iter().zip(&vms) {
        let (kinds, devices) = counts_of(&snap, vm.pid);
        let r = c.repeat;
        let done = r; // one exit on the done port per repeat
        assert_eq!(
            devices.get(&(EventKind::Pio, u64::from(c.port))),
            Some(&(c.pio * r)),
            "{}: pio on {:#x}",
            c.name,
            c.port
        );
        assert_eq!(
            devices.get(&(EventKind::Pio, u64::from(DONE_PORT))),
            Some(&done),
            "{}: done port",
            c.name
        );
        assert_eq!(
            kinds.get(&EventKind::Pio).copied().unwrap_or(0),
            c.pio * r + done,
            "{}: pio total",
            c.name
        );
        assert_eq!(
            kinds.get(&EventKind::Mmio).copied().unwrap_or(0),
            c.mmio * r,
            "{}: mmio",
            c.name
        );
        if c.mmio > 0 {
            assert_eq!(
                devices.get(&(EventKind::Mmio, c.gpa & !0xfff)),
                Some(&(c.mmio * r)),
                "{}: mmio page",
                c.name
            );
        }
        assert_eq!(
            kinds.get(&EventKind::Msi).copied().unwrap_or(0),
            c.msi * r,
            "{}: msi",
            c.name
        );
        assert_eq!(
            kinds.get(&EventKind::Irq).copied().unwrap_or(0),
            c.irq * r,
            "{}: irq",
            c.name
        );
        assert_eq!(
            kinds.get(&EventKind::UserspaceExit).copied().unwrap_or(0),
            (c.pio + c.mmio) * r + done,
            "{}: userspace exits",
            c.name
        );
        // The tick names the VM from its command line.
        let seen = tick
            .vms
            .iter()
            .find(|v| v.info.pid == vm.pid)
            .expect("vm in tick");
        assert_eq!(seen.info.name, c.name);
        assert_eq!(seen.info.vmm, "vpm-test-vm");
    }

    // Let the guests exit; perf prints its counts for the same processes.
    let mut perf_counts = Vec::new();
    let pids: Vec<u32> = vms.iter().map(|v| v.pid).collect();
    let pids_after = pids.clone();
    for vm in vms {
        perf_counts.push(parse_perf_csv(&vm.release().expect("guest exits cleanly")));
    }
    for ((c, pid), perf) in cases.iter().zip(pids).zip(perf_counts) {
        let (kinds, _) = counts_of(&snap, pid);
        let perf: BTreeMap<String, u64> = perf.into_iter().collect();
        for (event, kind) in [
            ("kvm:kvm_pio", EventKind::Pio),
            ("kvm:kvm_mmio", EventKind::Mmio),
            ("kvm:kvm_userspace_exit", EventKind::UserspaceExit),
            ("kvm:kvm_msi_set_irq", EventKind::Msi),
            ("kvm:kvm_set_irq", EventKind::Irq),
        ] {
            let from_perf = perf
                .get(event)
                .copied()
                .unwrap_or_else(|| panic!("{}: perf did not count {event}: {perf:?}", c.name));
            assert_eq!(
                kinds.get(&kind).copied().unwrap_or(0),
                from_perf,
                "{}: vpm vs perf on {event}",
                c.name
            );
        }
    }

    // Once they exited, the tick after the one that finds them gone prunes them.
    monitor.tick(1.0).expect("tick");
    monitor.tick(2.0).expect("tick");
    let snap = monitor.telemetry().snapshot().expect("snapshot");
    for pid in pids_after {
        assert!(
            !snap.tgids().contains(&pid),
            "entries of exited pid {pid} left in the map"
        );
    }
}

#[test]
fn another_vms_exit_does_not_take_counts_from_a_live_one() {
    // A runs its MMIO on CPU 0, so its count sits in CPU 0's cache slot,
    // then moves to CPU 1 and does the rest there: CPU 0's slot is never
    // rewritten. B runs on CPU 1 and exits; pruning it moves the slots'
    // generation on. Every one of A's events must be in the ticks' deltas: the
    // old slot still holds CPU 0's exact count (distrusting it made A's
    // total fall back to the hash's stale value, and its next events were
    // absorbed as if already counted).
    use std::io::BufRead as _;
    use std::process::{Command, Stdio};
    let mut monitor = Monitor::start(&MonitorOptions::default()).expect("vpm attaches");
    let mut a = Command::new("taskset")
        .args(["-c", "0"])
        .arg(vpm_tests::bin("vpm-testvm"))
        .args(["-name", "guest=pinned", "--mmio", "0x100000:100"])
        .args(["--repeat", "20", "--pause-ms", "100", "--hold"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("guest runs");
    let a_pid = a.id();
    let mut counted = 0u64;
    let mut tick = |m: &mut Monitor, t: f64| {
        let tick = m.tick(t).expect("tick");
        counted += tick
            .vms
            .iter()
            .filter(|v| v.info.pid == a_pid)
            .filter_map(|v| v.delta.as_ref())
            .map(|d| d.total(EventKind::Mmio).count)
            .sum::<u64>();
    };
    std::thread::sleep(std::time::Duration::from_millis(400));
    tick(&mut monitor, 0.0);
    let moved = Command::new("taskset")
        .args(["-a", "-p", "-c", "1", &a_pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("taskset");
    assert!(moved.success());
    let b = HeldVm::start(
        &["-name", "guest=brief", "--pio", "0x70:10"],
        Some(&["taskset", "-c", "1"]),
    )
    .expect("guest runs");
    b.release().expect("B exits");
    let before = monitor.pruned_entries();
    tick(&mut monitor, 1.0);
    tick(&mut monitor, 2.0);
    assert!(monitor.pruned_entries() > before, "B was pruned");
    // A's report: its workload is done.
    let mut line = String::new();
    std::io::BufReader::new(a.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("report");
    let report: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(report["mmio_exits"], 2000, "{report}");
    tick(&mut monitor, 3.0);
    tick(&mut monitor, 4.0);
    assert_eq!(counted, 2000, "A's MMIO events over the ticks");
    drop(a.stdin.take());
    let _ = a.wait();
}

#[test]
fn two_vms_with_one_name_are_told_apart() {
    // Two guests started with the same -name: the second is shown as
    // NAME#PID, so their CSV series stay apart (vpm's own reader refuses one
    // series with two values at one time).
    let mut monitor = Monitor::start(&MonitorOptions::default()).expect("vpm attaches");
    let first = HeldVm::start(&["-name", "guest=twin", "--pio", "0x70:5"], None).expect("runs");
    monitor.tick(0.0).expect("tick");
    let second = HeldVm::start(&["-name", "guest=twin", "--pio", "0x70:7"], None).expect("runs");
    let tick = monitor.tick(1.0).expect("tick");
    let name_of = |pid: u32| {
        tick.vms
            .iter()
            .find(|v| v.info.pid == pid)
            .map(|v| v.info.name.clone())
            .expect("listed")
    };
    assert_eq!(name_of(first.pid), "twin");
    assert_eq!(name_of(second.pid), format!("twin#{}", second.pid));
    // The first exits (a restart looks the same): in the tick that writes
    // its last rows the second is still twin#PID (no tick has two "twin"
    // rows), and from the next tick on it is the only "twin".
    first.release().expect("exits");
    let mut named = Vec::new();
    for t in 2..4 {
        let tick = monitor.tick(f64::from(t)).expect("tick");
        let mut names: Vec<&str> = tick.vms.iter().map(|v| v.info.name.as_str()).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "one name twice in a tick: {names:?}");
        named.push(
            tick.vms
                .iter()
                .find(|v| v.info.pid == second.pid)
                .map(|v| v.info.name.clone()),
        );
    }
    assert_eq!(named.last().cloned().flatten().as_deref(), Some("twin"));
}
