//! Boots the lab guest in QEMU and watches its serial console for the result.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::util;

/// How QEMU executes the guest.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Accel {
    /// Software emulation: works on any host (the default, and what CI uses).
    Tcg,
    /// Hardware virtualization: needs /dev/kvm on a VMX/SVM host.
    Kvm,
}

/// One guest boot.
pub struct Boot<'a> {
    /// The uncompressed kernel.
    pub vmlinux: &'a Path,
    /// The initramfs.
    pub initrd: &'a Path,
    /// The host folder shared over 9p (mounted at the same path in the guest).
    pub share: &'a Path,
    /// A scratch disk image for the guest's virtio-blk device.
    pub disk: &'a Path,
    /// Accelerator.
    pub accel: Accel,
    /// Wall-clock limit for the whole boot.
    pub timeout: Duration,
    /// Where the serial console is logged.
    pub log: PathBuf,
}

/// The QEMU command line of the lab: q35 with an IOMMU, an SR-IOV NVMe controller
/// (PF 0000:01:00.0, 4 VFs) behind a root port, and a multi-function slot with a
/// virtio-net and a virtio-blk device (one IOMMU group; the host-driver checks
/// are tested on them).
fn command(boot: &Boot<'_>) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    match boot.accel {
        Accel::Tcg => cmd.args(["-accel", "tcg,thread=multi", "-cpu", "max"]),
        Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
    };
    cmd.args(["-machine", "q35", "-m", "1G", "-smp", "2"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-monitor",
            "none",
        ])
        .args(["-serial", "stdio", "-no-reboot"])
        .args(["-device", "intel-iommu,intremap=on"])
        .args(["-device", "pcie-root-port,id=rp0,chassis=1,slot=1"])
        .args(["-device", "nvme-subsys,id=subsys0"])
        .args([
            "-device",
            "nvme,serial=deadbeef,bus=rp0,subsys=subsys0,sriov_max_vfs=4,\
             sriov_vq_flexible=8,sriov_vi_flexible=4,max_ioqpairs=10,msix_qsize=6",
        ])
        .args(["-netdev", "user,id=net0"])
        .args([
            "-device",
            "virtio-net-pci,netdev=net0,addr=03.0,multifunction=on",
        ])
        .arg("-drive")
        .arg(format!(
            "if=none,id=disk0,format=raw,file={}",
            boot.disk.display()
        ))
        .args(["-device", "virtio-blk-pci,drive=disk0,addr=03.1"])
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=host,security_model=none",
            boot.share.display()
        ))
        .arg("-kernel")
        .arg(boot.vmlinux)
        .arg("-initrd")
        .arg(boot.initrd)
        .args(["-append", "console=ttyS0 panic=-1 intel_iommu=on quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}

/// How a boot ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest ran the tests and printed their exit status.
    Exited(i32),
}

/// Boots the guest and returns the status its tests exited with.
pub fn run(boot: &Boot<'_>) -> anyhow::Result<Outcome> {
    let mut cmd = command(boot);
    eprintln!("xtask: $ {}", util::display(&cmd));
    let mut child = cmd
        .spawn()
        .context("cannot start qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
    let stdout = child.stdout.take().context("qemu has no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_owned();
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = std::fs::File::create(&boot.log)
        .with_context(|| format!("creating {}", boot.log.display()))?;
    let started = Instant::now();
    let deadline = started + boot.timeout;
    let mut exit = None;
    let mut panic = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                eprintln!("guest| {line}");
                writeln!(log, "{line}")?;
                if let Some(status) = line.strip_prefix("VPM-LAB-EXIT ") {
                    exit = status.trim().parse::<i32>().ok();
                }
                if line.contains("Kernel panic") && panic.is_none() {
                    panic = Some(line);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the lab guest did not finish within {:?} (serial log: {}); \
                     raise it with `--timeout`",
                    boot.timeout,
                    boot.log.display()
                );
            }
        }
    }
    let status = child.wait()?;
    eprintln!("xtask: lab guest ran {:.1?} ({status})", started.elapsed());
    if let Some(line) = panic {
        bail!(
            "the lab guest's kernel panicked: `{line}` (serial log: {})",
            boot.log.display()
        );
    }
    match exit {
        Some(code) => Ok(Outcome::Exited(code)),
        None => bail!(
            "the lab guest powered off without a result line; QEMU {status} (serial log: {})",
            boot.log.display()
        ),
    }
}
