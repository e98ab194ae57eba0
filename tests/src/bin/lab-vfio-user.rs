//! A scripted VFIO user for the lab's closed-loop test: it behaves like a VMM
//! that uses a VF on a fixed schedule (on for `--on-ms`, off for `--off-ms`),
//! opening it through VFIO each time, and logs, at each onset, whether the VF
//! was ready (existing and already in D0) before it asked.
//!
//! Run it under a `qemu-system-*` file name with `-name guest=NAME` so vpm
//! identifies it as a VM. It binds the VF to vfio-pci itself when needed, as
//! libvirt does for a managed hostdev.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;

/// A VMM-like VFIO user on a schedule.
#[derive(Parser)]
struct Args {
    /// QEMU-style name (`guest=NAME`), for vpm's VM identity.
    #[arg(long = "name", short = 'n')]
    name: String,
    /// The PF whose first VF is used.
    #[arg(long)]
    pf: String,
    /// How long each use lasts.
    #[arg(long)]
    on_ms: u64,
    /// Pause between uses.
    #[arg(long)]
    off_ms: u64,
    /// Time before the first use (a VM boots before it uses devices).
    #[arg(long, default_value_t = 0)]
    start_delay_ms: u64,
    /// Number of uses.
    #[arg(long)]
    cycles: u32,
    /// JSON-lines log of onsets.
    #[arg(long)]
    log: PathBuf,
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut log = std::fs::File::create(&args.log).context("creating the log")?;
    let started = Instant::now() + Duration::from_millis(args.start_delay_ms);
    let pf_dir = format!("/sys/bus/pci/devices/{}", args.pf);
    for cycle in 0..args.cycles {
        let onset = started + Duration::from_millis(u64::from(cycle) * (args.on_ms + args.off_ms));
        std::thread::sleep(onset.saturating_duration_since(Instant::now()));
        let t = vpm::units::unix_now();
        let vf = std::fs::read_link(format!("{pf_dir}/virtfn0"))
            .ok()
            .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()));
        let Some(vf) = vf else {
            writeln!(
                log,
                "{}",
                serde_json::json!({"t": t, "cycle": cycle, "vf": null, "ready": false})
            )?;
            continue;
        };
        let dir = format!("/sys/bus/pci/devices/{vf}");
        let state = read(&format!("{dir}/power_state"));
        let control = read(&format!("{dir}/power/control"));
        let driver = std::fs::read_link(format!("{dir}/driver"))
            .ok()
            .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()));
        let ready = state.as_deref() == Some("D0") && driver.as_deref() == Some("vfio-pci");
        if driver.as_deref() != Some("vfio-pci") {
            let sys = vpm::hal::Sysfs::host();
            let bdf: vpm::hal::Bdf = vf.parse()?;
            if let Err(e) = sys.bind_driver(bdf, "vfio-pci", Duration::from_secs(10)) {
                eprintln!("lab-vfio-user: binding {vf}: {e}");
            }
        }
        let opened = vpm_tests::vfio::VfioDevice::open(&vf);
        let t_open = vpm::units::unix_now();
        writeln!(
            log,
            "{}",
            serde_json::json!({
                "t": t, "cycle": cycle, "vf": vf, "state": state, "control": control,
                "driver": driver, "ready": ready, "opened": opened.is_ok(), "t_open": t_open,
            })
        )?;
        std::thread::sleep(Duration::from_millis(args.on_ms));
        let t_close = vpm::units::unix_now();
        drop(opened);
        writeln!(
            log,
            "{}",
            serde_json::json!({"cycle": cycle, "t_close": t_close})
        )?;
    }
    Ok(())
}
