//! QEMU processes for the hot-plug tests and benches: a VM with no OS, the
//! ports and monitor a test gives it, killed when dropped (and when the test
//! process dies).

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// The QEMU binary (on `PATH`: the host's, or the lab guest's copy of it).
pub const QEMU: &str = "qemu-system-x86_64";
/// The lab guest's firmware for inner VMs (built by `xtask/src/lab/firmware.rs`):
/// numbers the root ports' buses, then halts.
pub const LAB_FIRMWARE: &str = "/usr/share/vpm-lab/firmware.bin";
/// Its busy variant: spins instead of halting (one CPU busy while running).
pub const LAB_FIRMWARE_BUSY: &str = "/usr/share/vpm-lab/firmware-busy.bin";

/// How to start a [`Qemu`].
#[derive(Debug, Clone)]
pub struct Builder {
    name: String,
    args: Vec<String>,
    qmp: Option<PathBuf>,
}

impl Builder {
    /// Adds command-line arguments.
    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Boots `path` as the firmware.
    pub fn bios(self, path: &str) -> Self {
        self.args(["-bios", path])
    }

    /// A QMP monitor listening on the Unix socket `path`.
    pub fn qmp(mut self, path: &Path) -> Self {
        self.qmp = Some(path.to_path_buf());
        self.args([
            "-qmp".to_owned(),
            format!("unix:{},server=on,wait=off", path.display()),
        ])
    }

    /// Native PCIe hot-plug on q35's root ports (without it, `device_del`
    /// completes only once a guest OS releases the device).
    pub fn native_hotplug(self) -> Self {
        self.args([
            "-global",
            "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
        ])
    }

    /// Starts QEMU and waits (up to 30 s) for its QMP socket, if it has one.
    pub fn start(self) -> anyhow::Result<Qemu> {
        let mut cmd = Command::new(QEMU);
        cmd.args([
            "-accel",
            "tcg",
            "-machine",
            "q35",
            "-m",
            "64",
            "-nodefaults",
        ])
        .args(["-no-user-config", "-display", "none", "-serial", "none"])
        .args(["-name", &format!("guest={}", self.name)])
        .args(&self.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
        // SAFETY: prctl(2) is async-signal-safe, the only call between fork
        // and exec.
        unsafe {
            cmd.pre_exec(|| {
                // The VM dies with the process that started it.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| {
            format!("starting {QEMU} (apt-get install qemu-system-x86; `cargo xtask setup` does)")
        })?;
        let vm = Qemu {
            child,
            qmp: self.qmp,
        };
        if let Some(path) = &vm.qmp {
            let up = crate::wait_until(Duration::from_secs(30), || {
                std::os::unix::net::UnixStream::connect(path).is_ok()
            });
            if !up {
                bail!(
                    "VM {}: its QMP socket {} did not come up",
                    self.name,
                    path.display()
                );
            }
        }
        Ok(vm)
    }
}

/// A running QEMU, killed when dropped.
#[derive(Debug)]
pub struct Qemu {
    child: Child,
    qmp: Option<PathBuf>,
}

impl Qemu {
    /// A VM named `name` (`-name guest=NAME`): TCG, q35, 64 MiB, no default
    /// devices, no display or serial.
    pub fn builder(name: &str) -> Builder {
        Builder {
            name: name.to_owned(),
            args: Vec::new(),
            qmp: None,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its QMP socket, if it has one.
    pub fn qmp(&self) -> Option<&Path> {
        self.qmp.as_deref()
    }

    /// Sends `sig` to it.
    pub fn signal(&self, sig: i32) -> std::io::Result<()> {
        let pid = i32::try_from(self.pid()).map_err(std::io::Error::other)?;
        // SAFETY: kill(2) on our own child's pid; no memory is shared.
        if unsafe { libc::kill(pid, sig) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
