//! Writes to PCI sysfs attributes, each with a time limit and a read-back.
//!
//! A write opens the attribute without creating it and hands the whole value
//! to one `write(2)`, in a thread of its own: a sysfs store runs the driver
//! synchronously (VF creation, driver probe and remove), which can block for
//! minutes, or for good when vfio-pci waits for a VMM to release a device.
//! The caller waits at most its time limit and gets [`HalError::Timeout`]
//! after it; the thread is then left to finish (or to stay blocked in the
//! kernel) on its own.
//!
//! The file is opened with `O_TRUNC`, as the shell's `echo 1 > attr` does:
//! sysfs ignores it, and it makes a plain file in a test tree hold exactly
//! the last value written.

use std::fs::OpenOptions;
use std::io::{self, Write as _};
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::Sysfs;
use super::bdf::Bdf;
use super::error::{HalError, Result, clip};
use super::parse;
use super::power::PowerControl;

/// The time limit of writes whose methods take none (`driver_override`,
/// `unbind`, `drivers_probe`, `sriov_drivers_autoprobe`), and a sensible one
/// for those that do. Unbinding vfio-pci from a device a VMM holds blocks
/// until the VMM lets go: this limit turns that into [`HalError::Timeout`].
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest driver name accepted (the kernel's module names are shorter).
const MAX_DRIVER_NAME: usize = 64;

/// Opens `path` (never creating it) and writes `value` with one `write(2)`.
/// Returns the failed step (`open` or `write`) with the error.
fn write_once(path: &Path, value: &[u8]) -> std::result::Result<(), (&'static str, io::Error)> {
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| ("open", e))?;
    let n = file.write(value).map_err(|e| ("write", e))?;
    if n != value.len() {
        return Err((
            "write",
            io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {n} of {} bytes", value.len()),
            ),
        ));
    }
    Ok(())
}

/// Attributes being written now (and the value), by [`write_attr`].
static IN_FLIGHT: std::sync::Mutex<std::collections::BTreeMap<std::path::PathBuf, String>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Writes `value` to the attribute at `path`, waiting at most `timeout`.
///
/// The errno of a failed open or write is kept ([`HalError::Io`] with `op`
/// `open` or `write`). On [`HalError::Timeout`] the write thread is left
/// running: the kernel may still complete the write, so read the attribute
/// before deciding what happened. Until it returns, another write to the
/// same attribute is refused ([`HalError::StillWriting`]).
pub(crate) fn write_attr(path: &Path, value: &str, timeout: Duration) -> Result<()> {
    // One write per attribute at a time: a write that timed out is still in
    // the kernel, and a second one would queue behind it (or race it).
    {
        let mut busy = IN_FLIGHT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(v) = busy.get(path) {
            return Err(HalError::StillWriting {
                path: path.to_path_buf(),
                value: v.clone(),
            });
        }
        busy.insert(path.to_path_buf(), clip(value));
    }
    let (tx, rx) = mpsc::channel();
    let owned_path = path.to_path_buf();
    let bytes = value.as_bytes().to_vec();
    let spawned = thread::Builder::new()
        .name("vpm-sysfs-write".into())
        .spawn(move || {
            let result = write_once(&owned_path, &bytes);
            IN_FLIGHT
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&owned_path);
            // The receiver is gone after a timeout: nobody to tell.
            let _ = tx.send(result);
        });
    if let Err(e) = spawned {
        IN_FLIGHT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(path);
        return Err(HalError::io("spawn", path, e));
    }
    match rx.recv_timeout(timeout) {
        Ok(Ok(())) => Ok(()),
        Ok(Err((op, e))) => Err(HalError::io(op, path, e)),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(HalError::Timeout {
            path: path.to_path_buf(),
            value: clip(value),
            after: timeout,
        }),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(HalError::io(
            "write",
            path,
            io::Error::other("the writer thread ended without a result"),
        )),
    }
}

/// Reads `path` back and checks its trimmed content with `ok`; on mismatch
/// [`HalError::ReadBack`] names what was written (`wrote`) and what is there.
fn read_back(path: &Path, wrote: &str, ok: impl FnOnce(&str) -> bool) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| HalError::io("read", path, e))?;
    let read = text.trim();
    if ok(read) {
        Ok(())
    } else {
        Err(HalError::ReadBack {
            path: path.to_path_buf(),
            wrote: clip(wrote.trim()),
            read: clip(read),
        })
    }
}

/// Writes `value` and checks that the attribute then reads `value`.
fn write_checked(path: &Path, value: &str, timeout: Duration) -> Result<()> {
    write_attr(path, value, timeout)?;
    read_back(path, value, |read| read == value)
}

/// Checks a driver name before it is written anywhere: non-empty, at most 64
/// characters of `A-Z a-z 0-9 _ -`.
pub fn validate_driver_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_DRIVER_NAME {
        "longer than 64 characters"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        "only letters, digits, '_' and '-' are allowed"
    } else {
        return Ok(());
    };
    Err(HalError::InvalidName {
        what: "driver",
        input: clip(name),
        reason,
    })
}

/// The `sriov_numvfs` values to write to go from `from` VFs to `to`: none
/// when equal, `[0, to]` between two non-zero counts (the kernel refuses
/// those with `EBUSY`), else `[to]`.
pub fn numvfs_steps(from: u32, to: u32) -> Vec<u32> {
    match (from, to) {
        _ if from == to => Vec::new(),
        (0, _) | (_, 0) => vec![to],
        _ => vec![0, to],
    }
}

/// What [`Sysfs::set_sriov_numvfs`] did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NumVfsChange {
    /// `sriov_numvfs` before.
    pub from: u32,
    /// `sriov_numvfs` after (read back).
    pub to: u32,
    /// The values written, in order (see [`numvfs_steps`]); empty for a no-op.
    pub steps: Vec<u32>,
    /// Time taken, reads and writes included.
    pub elapsed: Duration,
}

/// How a missing driver reads back.
const NO_DRIVER: &str = "(none)";

impl Sysfs {
    /// Sets the PF's VF count to `n`, following the kernel's rules: the
    /// current value is a no-op, a change between two non-zero counts goes
    /// through 0, and `n` above `sriov_totalvfs` is refused
    /// ([`HalError::OutOfRange`]) before anything is written. Each write may
    /// take up to `timeout`, and each is read back.
    ///
    /// When the second write of a resize fails, the PF is left with 0 VFs.
    pub fn set_sriov_numvfs(&self, pf: Bdf, n: u32, timeout: Duration) -> Result<NumVfsChange> {
        let start = Instant::now();
        let total = self.sriov_totalvfs(pf)?;
        if n > total {
            return Err(HalError::OutOfRange {
                bdf: pf,
                requested: n,
                total,
            });
        }
        let from = self.sriov_numvfs(pf)?;
        let path = self.attr_path(pf, "sriov_numvfs");
        let steps = numvfs_steps(from, n);
        for &step in &steps {
            write_checked(&path, &step.to_string(), timeout)?;
        }
        Ok(NumVfsChange {
            from,
            to: n,
            steps,
            elapsed: start.elapsed(),
        })
    }

    /// Writes `n` to the PF's `sriov_numvfs` once, with no rule applied and
    /// no read-back, so that the kernel's own refusals (`EBUSY`, `ERANGE`,
    /// `ENOENT`) come back as they are, in [`HalError::Io`]. For tests and
    /// diagnostics; use [`Sysfs::set_sriov_numvfs`] otherwise.
    pub fn write_sriov_numvfs_raw(&self, pf: Bdf, n: u32, timeout: Duration) -> Result<()> {
        let path = self.existing_device_dir(pf)?.join("sriov_numvfs");
        write_attr(&path, &n.to_string(), timeout)
    }

    /// Sets `sriov_drivers_autoprobe`: whether VFs created later get a
    /// driver bound automatically. Read back.
    pub fn set_sriov_drivers_autoprobe(&self, pf: Bdf, on: bool) -> Result<()> {
        self.sriov_totalvfs(pf)?;
        let path = self.attr_path(pf, "sriov_drivers_autoprobe");
        write_checked(&path, if on { "1" } else { "0" }, DEFAULT_WRITE_TIMEOUT)
    }

    /// Sets `driver_override` to `driver`, or clears it (`None` writes
    /// `\n`). Only the named driver will then bind the function. Read back.
    pub fn set_driver_override(&self, bdf: Bdf, driver: Option<&str>) -> Result<()> {
        self.set_driver_override_within(bdf, driver, DEFAULT_WRITE_TIMEOUT)
    }

    fn set_driver_override_within(
        &self,
        bdf: Bdf,
        driver: Option<&str>,
        timeout: Duration,
    ) -> Result<()> {
        if let Some(d) = driver {
            validate_driver_name(d)?;
        }
        let path = self.existing_device_dir(bdf)?.join("driver_override");
        write_attr(&path, driver.unwrap_or("\n"), timeout)?;
        read_back(&path, driver.unwrap_or("(null)"), |read| {
            parse::driver_override(read).as_deref() == driver
        })
    }

    /// Unbinds the function from its driver (writes its address to
    /// `driver/unbind`) and checks that no driver is left. Returns the
    /// driver it was bound to; `None` (and nothing written) when unbound.
    ///
    /// vfio-pci does not let go of a device a VMM has open: the write then
    /// blocks, and after [`DEFAULT_WRITE_TIMEOUT`] this returns
    /// [`HalError::Timeout`]. Check [`super::vfio_holders`] first.
    pub fn unbind(&self, bdf: Bdf) -> Result<Option<String>> {
        self.unbind_within(bdf, DEFAULT_WRITE_TIMEOUT)
    }

    fn unbind_within(&self, bdf: Bdf, timeout: Duration) -> Result<Option<String>> {
        let Some(driver) = self.driver(bdf)? else {
            return Ok(None);
        };
        let dir = self.device_dir(bdf);
        write_attr(&dir.join("driver/unbind"), &bdf.to_string(), timeout)?;
        if let Some(now) = self.driver(bdf)? {
            return Err(HalError::ReadBack {
                path: dir.join("driver"),
                wrote: NO_DRIVER.to_owned(),
                read: now,
            });
        }
        Ok(Some(driver))
    }

    /// Asks the kernel to bind a driver to the function (writes its address
    /// to `bus/pci/drivers_probe`) and returns the driver bound after it.
    ///
    /// The write succeeds even when the matching driver's probe failed, so
    /// the returned driver is what counts.
    pub fn drivers_probe(&self, bdf: Bdf) -> Result<Option<String>> {
        self.drivers_probe_within(bdf, DEFAULT_WRITE_TIMEOUT)
    }

    fn drivers_probe_within(&self, bdf: Bdf, timeout: Duration) -> Result<Option<String>> {
        self.existing_device_dir(bdf)?;
        write_attr(&self.drivers_probe_path(), &bdf.to_string(), timeout)?;
        self.driver(bdf)
    }

    /// Binds the function to `driver` (e.g. `vfio-pci`): sets
    /// `driver_override`, unbinds another driver if one is bound, probes,
    /// and checks the `driver` link. Each write may take up to `timeout`.
    /// `driver_override` stays set, so no other driver takes the function
    /// later.
    ///
    /// A failed probe (module not loaded, no IOMMU for vfio-pci) shows only
    /// in the read-back: [`HalError::ReadBack`] on `driver`. It is rolled
    /// back: the override is cleared and, if the function had a driver and
    /// was left with none, probed again, so its own driver takes it back
    /// instead of it staying driverless and pinned to a driver that cannot
    /// bind.
    pub fn bind_driver(&self, bdf: Bdf, driver: &str, timeout: Duration) -> Result<()> {
        validate_driver_name(driver)?;
        self.set_driver_override_within(bdf, Some(driver), timeout)?;
        let before = self.driver(bdf)?;
        match &before {
            Some(d) if d == driver => return Ok(()),
            Some(_) => {
                if let Err(e) = self.unbind_within(bdf, timeout) {
                    self.roll_back_bind(bdf, before.is_some(), timeout);
                    return Err(e);
                }
            }
            None => {}
        }
        let now = match self.drivers_probe_within(bdf, timeout) {
            Ok(now) => now,
            Err(e) => {
                self.roll_back_bind(bdf, before.is_some(), timeout);
                return Err(e);
            }
        };
        if now.as_deref() != Some(driver) {
            self.roll_back_bind(bdf, before.is_some(), timeout);
            return Err(HalError::ReadBack {
                path: self.attr_path(bdf, "driver"),
                wrote: driver.to_owned(),
                read: now.unwrap_or_else(|| NO_DRIVER.to_owned()),
            });
        }
        Ok(())
    }

    /// Undoes a failed [`bind_driver`](Self::bind_driver) as far as it can:
    /// clears `driver_override` and, when the function had a driver
    /// (`had_driver`) and has none now, probes so that driver binds again (a
    /// function kept driverless on purpose stays so). Best effort: the
    /// caller reports the first failure, and its read-back shows where the
    /// function is.
    fn roll_back_bind(&self, bdf: Bdf, had_driver: bool, timeout: Duration) {
        if let Err(e) = self.set_driver_override_within(bdf, None, timeout) {
            log::warn!("{bdf}: clearing driver_override after a failed bind: {e}");
            return;
        }
        if had_driver
            && matches!(self.driver(bdf), Ok(None))
            && let Err(e) = self.drivers_probe_within(bdf, timeout)
        {
            log::warn!("{bdf}: probing its own driver after a failed bind: {e}");
        }
    }

    /// Sets `power/control`: `on` keeps the device awake (and wakes it),
    /// `auto` lets its driver runtime-suspend it. The write may take up to
    /// `timeout` (waking a device runs its resume). Read back.
    pub fn set_power_control(
        &self,
        bdf: Bdf,
        control: PowerControl,
        timeout: Duration,
    ) -> Result<()> {
        let path = self.existing_device_dir(bdf)?.join("power/control");
        write_checked(&path, control.as_str(), timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hal::testtree::Tree;
    use crate::hal::{Errno, RuntimeStatus};
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::fs::{OpenOptionsExt as _, symlink};

    const T: Duration = Duration::from_secs(10);

    fn pf_tree(total: u32, num: u32) -> (Tree, Bdf) {
        let t = Tree::new();
        let pf = t.add("0000:01:00.0");
        t.sriov(pf, total, num);
        t.bind(pf, "nvme");
        (t, pf)
    }

    /// Replaces an attribute by a link to /dev/null: writes succeed and
    /// read back empty, as if the kernel had dropped them.
    fn devnull(t: &Tree, bdf: Bdf, attr: &'static str) {
        let p = t.sysfs.attr_path(bdf, attr);
        std::fs::remove_file(&p).unwrap();
        symlink("/dev/null", p).unwrap();
    }

    #[test]
    fn write_attr_replaces_content_and_never_creates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("attr");
        std::fs::write(&p, "vfio-pci\n").unwrap();
        write_attr(&p, "0", T).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "0");
        let missing = dir.path().join("missing");
        let e = write_attr(&missing, "1", T).unwrap_err();
        assert!(
            matches!(
                &e,
                HalError::Io {
                    op: "open",
                    errno: Errno::NoEnt,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(!missing.exists());
        let e = write_attr(dir.path(), "1", T).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::Other(libc::EISDIR)));
    }

    #[test]
    fn write_errors_keep_the_errno() {
        // /dev/full opens fine and fails every write with ENOSPC.
        let full = Path::new("/dev/full");
        if !full.exists() {
            return;
        }
        let e = write_attr(full, "1", T).unwrap_err();
        assert!(
            matches!(
                &e,
                HalError::Io {
                    op: "write",
                    errno: Errno::Other(libc::ENOSPC),
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("write /dev/full: ENOSPC"), "{e}");
    }

    #[test]
    fn a_blocked_write_times_out() {
        // Opening a FIFO for writing blocks until a reader comes: a stand-in
        // for a store that does not return.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("sriov_numvfs");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call;
        // mkfifo only reads it.
        let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        let e = write_attr(&fifo, "4", Duration::from_millis(50)).unwrap_err();
        match &e {
            HalError::Timeout { path, value, after } => {
                assert_eq!((path, value.as_str()), (&fifo, "4"));
                assert_eq!(*after, Duration::from_millis(50));
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("may still complete"));
        // While it is stuck, a second write is refused, not queued.
        let again = write_attr(&fifo, "0", Duration::from_millis(50)).unwrap_err();
        assert!(
            matches!(&again, HalError::StillWriting { value, .. } if value == "4"),
            "{again:?}"
        );
        // Let the left-behind writer finish: a reader unblocks its open.
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        // Once it has returned, the attribute may be written again.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while IN_FLIGHT.lock().unwrap().contains_key(&fifo) {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer never returned"
            );
            let _ = io::Read::read(&mut reader, &mut [0u8; 8]);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn steps_follow_the_kernel_rule() {
        assert_eq!(numvfs_steps(0, 0), Vec::<u32>::new());
        assert_eq!(numvfs_steps(3, 3), Vec::<u32>::new());
        assert_eq!(numvfs_steps(0, 4), vec![4]);
        assert_eq!(numvfs_steps(4, 0), vec![0]);
        assert_eq!(numvfs_steps(4, 2), vec![0, 2]);
        assert_eq!(numvfs_steps(1, 4), vec![0, 4]);
    }

    #[test]
    fn set_sriov_numvfs_creates_resizes_and_removes() {
        let (t, pf) = pf_tree(4, 0);
        let c = t.sysfs.set_sriov_numvfs(pf, 3, T).unwrap();
        assert_eq!((c.from, c.to, c.steps.clone()), (0, 3, vec![3]));
        assert_eq!(t.read(pf, "sriov_numvfs"), "3");
        let c = t.sysfs.set_sriov_numvfs(pf, 2, T).unwrap();
        assert_eq!((c.from, c.to, c.steps), (3, 2, vec![0, 2]));
        assert_eq!(t.read(pf, "sriov_numvfs"), "2");
        // The current value: nothing written (the file keeps its bytes).
        t.write(pf, "sriov_numvfs", "2\n");
        let c = t.sysfs.set_sriov_numvfs(pf, 2, T).unwrap();
        assert!(c.steps.is_empty());
        assert_eq!(t.read(pf, "sriov_numvfs"), "2\n");
        let c = t.sysfs.set_sriov_numvfs(pf, 0, T).unwrap();
        assert_eq!((c.from, c.steps), (2, vec![0]));
        assert_eq!(t.sysfs.sriov_numvfs(pf).unwrap(), 0);
    }

    #[test]
    fn set_sriov_numvfs_refuses_before_writing() {
        let (t, pf) = pf_tree(4, 1);
        let e = t.sysfs.set_sriov_numvfs(pf, 5, T).unwrap_err();
        assert!(
            matches!(e, HalError::OutOfRange { bdf, requested: 5, total: 4 } if bdf == pf),
            "{e:?}"
        );
        assert_eq!(t.read(pf, "sriov_numvfs"), "1\n");
        let vf = t.add("0000:01:00.1");
        assert!(matches!(
            t.sysfs.set_sriov_numvfs(vf, 1, T),
            Err(HalError::NotSriov { .. })
        ));
        let gone: Bdf = "0000:05:00.0".parse().unwrap();
        assert!(matches!(
            t.sysfs.set_sriov_numvfs(gone, 1, T),
            Err(HalError::NoDevice { .. })
        ));
    }

    #[test]
    fn numvfs_read_back_mismatch() {
        // `set_sriov_numvfs` reads the count before writing, which a file
        // that drops writes cannot pass; drive its write-and-check step.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sriov_numvfs");
        symlink("/dev/null", &p).unwrap();
        let e = write_checked(&p, "3", T).unwrap_err();
        assert!(
            matches!(&e, HalError::ReadBack { wrote, read, .. } if wrote == "3" && read.is_empty()),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("sriov_numvfs: wrote \"3\" but read back \"\""),
            "{msg}"
        );
        assert!(msg.contains("fewer VFs"), "{msg}");
    }

    #[test]
    fn raw_numvfs_writes_once_without_rules() {
        let (t, pf) = pf_tree(4, 2);
        t.sysfs.write_sriov_numvfs_raw(pf, 9, T).unwrap();
        assert_eq!(t.read(pf, "sriov_numvfs"), "9");
        let vf = t.add("0000:01:00.1");
        assert_eq!(
            t.sysfs
                .write_sriov_numvfs_raw(vf, 1, T)
                .unwrap_err()
                .errno(),
            Some(Errno::NoEnt)
        );
    }

    #[test]
    fn drivers_autoprobe() {
        let (t, pf) = pf_tree(4, 0);
        t.sysfs.set_sriov_drivers_autoprobe(pf, false).unwrap();
        assert_eq!(t.read(pf, "sriov_drivers_autoprobe"), "0");
        assert!(!t.sysfs.sriov_drivers_autoprobe(pf).unwrap());
        t.sysfs.set_sriov_drivers_autoprobe(pf, true).unwrap();
        assert_eq!(t.read(pf, "sriov_drivers_autoprobe"), "1");
        devnull(&t, pf, "sriov_drivers_autoprobe");
        let e = t.sysfs.set_sriov_drivers_autoprobe(pf, true).unwrap_err();
        assert!(
            matches!(&e, HalError::ReadBack { wrote, read, .. } if wrote == "1" && read.is_empty()),
            "{e:?}"
        );
        let vf = t.add("0000:01:00.1");
        assert!(matches!(
            t.sysfs.set_sriov_drivers_autoprobe(vf, true),
            Err(HalError::NotSriov { .. })
        ));
    }

    #[test]
    fn driver_override_set_clear_and_refuse() {
        let t = Tree::new();
        let b = t.add("0000:02:00.0");
        t.sysfs.set_driver_override(b, Some("vfio-pci")).unwrap();
        assert_eq!(t.read(b, "driver_override"), "vfio-pci");
        assert_eq!(
            t.sysfs.driver_override(b).unwrap().as_deref(),
            Some("vfio-pci")
        );
        t.sysfs.set_driver_override(b, None).unwrap();
        assert_eq!(t.read(b, "driver_override"), "\n");
        assert_eq!(t.sysfs.driver_override(b).unwrap(), None);
        for bad in [
            "",
            "vfio pci",
            "../x",
            "a/b",
            "nvme\n",
            "x\0",
            &"a".repeat(65),
        ] {
            let e = t.sysfs.set_driver_override(b, Some(bad)).unwrap_err();
            assert!(
                matches!(e, HalError::InvalidName { what: "driver", .. }),
                "{bad:?}: {e:?}"
            );
        }
        assert_eq!(t.read(b, "driver_override"), "\n");
        devnull(&t, b, "driver_override");
        let e = t
            .sysfs
            .set_driver_override(b, Some("vfio-pci"))
            .unwrap_err();
        assert!(
            matches!(&e, HalError::ReadBack { wrote, read, .. } if wrote == "vfio-pci" && read.is_empty()),
            "{e:?}"
        );
        // Clearing reads back as unset from an empty file too.
        t.sysfs.set_driver_override(b, None).unwrap();
    }

    #[test]
    fn unbind_writes_the_address_and_checks_the_link() {
        let t = Tree::new();
        let b = t.add("0000:02:00.0");
        assert_eq!(t.sysfs.unbind(b).unwrap(), None);
        t.bind(b, "nvme");
        // A temp tree does not drop the link as the kernel would: the
        // read-back catches it.
        let e = t.sysfs.unbind(b).unwrap_err();
        assert_eq!(t.unbind_file("nvme"), "0000:02:00.0");
        assert!(
            matches!(&e, HalError::ReadBack { wrote, read, path } if wrote == "(none)" && read == "nvme" && path.ends_with("driver")),
            "{e:?}"
        );
        assert!(e.to_string().contains("refused"), "{e}");
    }

    #[test]
    fn drivers_probe_writes_the_address() {
        let t = Tree::new();
        let b = t.add("0000:02:00.0");
        assert_eq!(t.sysfs.drivers_probe(b).unwrap(), None);
        let probe = std::fs::read_to_string(t.sysfs.drivers_probe_path()).unwrap();
        assert_eq!(probe, "0000:02:00.0");
        t.bind(b, "nvme");
        assert_eq!(t.sysfs.drivers_probe(b).unwrap().as_deref(), Some("nvme"));
    }

    #[test]
    fn bind_driver_paths() {
        // Already bound: override set, nothing unbound or probed.
        let t = Tree::new();
        let b = t.add("0000:03:00.0");
        t.bind(b, "vfio-pci");
        t.sysfs.bind_driver(b, "vfio-pci", T).unwrap();
        assert_eq!(t.read(b, "driver_override"), "vfio-pci");
        assert_eq!(t.unbind_file("vfio-pci"), "");
        assert_eq!(
            std::fs::read_to_string(t.sysfs.drivers_probe_path()).unwrap(),
            ""
        );

        // Unbound and the probe binds nothing (module missing, probe failed):
        // only the read-back tells.
        let c = t.add("0000:03:00.1");
        let e = t.sysfs.bind_driver(c, "vfio-pci", T).unwrap_err();
        // Probed for vfio-pci, then rolled back: no override pins it, and
        // (it had no driver) it is not probed again.
        assert_eq!(
            std::fs::read_to_string(t.sysfs.drivers_probe_path()).unwrap(),
            "0000:03:00.1"
        );
        assert_eq!(t.read(c, "driver_override").trim(), "");
        assert!(
            matches!(&e, HalError::ReadBack { wrote, read, .. } if wrote == "vfio-pci" && read == "(none)"),
            "{e:?}"
        );
        assert!(e.to_string().contains("modprobe"), "{e}");

        // Bound elsewhere: unbind is written first.
        let d = t.add("0000:03:00.2");
        t.bind(d, "nvme");
        let e = t.sysfs.bind_driver(d, "vfio-pci", T).unwrap_err();
        assert_eq!(t.read(d, "driver_override").trim(), "", "rolled back");
        assert_eq!(t.unbind_file("nvme"), "0000:03:00.2");
        assert!(matches!(e, HalError::ReadBack { .. }));

        // Bad names are refused before anything is written.
        let e = t.sysfs.bind_driver(c, "vfio/../pci", T).unwrap_err();
        assert!(matches!(e, HalError::InvalidName { .. }));
    }

    #[test]
    fn power_control() {
        let t = Tree::new();
        let b = t.add("0000:04:00.0");
        t.sysfs.set_power_control(b, PowerControl::On, T).unwrap();
        assert_eq!(t.read(b, "power/control"), "on");
        assert_eq!(t.sysfs.power_control(b).unwrap(), Some(PowerControl::On));
        t.sysfs.set_power_control(b, PowerControl::Auto, T).unwrap();
        assert_eq!(t.read(b, "power/control"), "auto");
        assert_eq!(
            t.sysfs.runtime_status(b).unwrap(),
            Some(RuntimeStatus::Active)
        );
        devnull(&t, b, "power/control");
        let e = t
            .sysfs
            .set_power_control(b, PowerControl::On, T)
            .unwrap_err();
        assert!(matches!(e, HalError::ReadBack { .. }), "{e:?}");
    }
}
