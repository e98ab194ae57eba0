//! VM churn: 1,000 short-lived guests in a row. Afterwards vpm's maps hold no
//! entries of exited guests (they are pruned every tick), and the agent's
//! memory did not grow by more than 5 MiB.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests fail loudly"
)]

use std::process::{Command, Stdio};

use vpm::monitor::{Monitor, MonitorOptions};
use vpm_tests::{bin, self_rss_bytes};

/// Guests between two ticks.
const PER_TICK: usize = 50;
const GUESTS: usize = 1_000;
/// Entries one test guest leaves: its port, the done port, one userspace-exit reason.
const ENTRIES_PER_GUEST: u64 = 3;
/// Entries other processes on the host may hold (documented slack in the README).
const SLACK: usize = 64;

fn short_guest() -> u32 {
    let out = Command::new(bin("vpm-testvm"))
        .args(["--pio", "0x80:10"])
        .stdin(Stdio::null())
        .output()
        .expect("spawn vpm-testvm");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report");
    assert_eq!(report["pio_exits"], 10);
    report["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .expect("pid")
}

#[test]
fn a_thousand_short_lived_guests_leave_the_maps_bounded() {
    let mut monitor = Monitor::start(&MonitorOptions::default()).expect("vpm attaches");
    let mut pids = Vec::with_capacity(GUESTS);
    let mut rss_after_warmup = 0;
    let mut max_entries_seen = 0;
    for i in 0..GUESTS {
        pids.push(short_guest());
        if (i + 1) % PER_TICK == 0 {
            // The maps just before a tick prunes them.
            let before = monitor
                .telemetry()
                .snapshot()
                .expect("snapshot")
                .counters
                .len();
            max_entries_seen = max_entries_seen.max(before);
            monitor.tick(i as f64).expect("tick");
            if i + 1 == 2 * PER_TICK {
                rss_after_warmup = self_rss_bytes();
            }
        }
    }
    // Exited processes are forgotten one tick after they are found gone.
    monitor.tick(GUESTS as f64).expect("final tick");
    monitor.tick(GUESTS as f64 + 1.0).expect("pruning tick");

    let snap = monitor.telemetry().snapshot().expect("snapshot");
    let leftover: Vec<u32> = snap
        .tgids()
        .into_iter()
        .filter(|t| pids.contains(t))
        .collect();
    assert!(
        leftover.is_empty(),
        "entries of exited guests left: {leftover:?}"
    );
    assert!(
        snap.counters.len() <= SLACK,
        "{} entries remain with no test guest alive",
        snap.counters.len()
    );
    assert!(
        monitor.pruned_entries() >= GUESTS as u64 * ENTRIES_PER_GUEST,
        "pruned only {} entries",
        monitor.pruned_entries()
    );
    // Between ticks the maps hold at most two ticks' worth of exited guests.
    assert!(
        max_entries_seen >= PER_TICK * ENTRIES_PER_GUEST as usize,
        "guests were not counted"
    );
    assert!(
        max_entries_seen <= 2 * PER_TICK * ENTRIES_PER_GUEST as usize + SLACK,
        "maps grew to {max_entries_seen} entries"
    );
    let growth = self_rss_bytes().saturating_sub(rss_after_warmup);
    assert!(
        growth < 5 << 20,
        "RSS grew by {growth} bytes over {GUESTS} guests"
    );
    eprintln!(
        "churn: {GUESTS} guests, pruned {} entries, peak {max_entries_seen} entries, RSS growth {growth} B",
        monitor.pruned_entries()
    );
}
