//! Per-VM host metrics: cumulative CPU, memory, disk and network counters of a
//! VMM process, sampled once a tick; the caller diffs them into rates.
//!
//! Sources, in order of preference (every path is rooted at a parameter):
//! - **VM cgroup**: when the process's cgroup v2 path contains a libvirt
//!   machine cgroup (`machine-qemu\x2dN\x2dNAME.scope`, see
//!   [`crate::identity::cgroup`]), that directory — not the process's own leaf
//!   (`libvirt/emulator`), which misses the vCPU threads — supplies
//!   `cpu.stat` `usage_usec`, `memory.current` and `io.stat`. It counts every
//!   thread of the VM and libvirt's helpers for it. [`HostSample::vm_cgroup`]
//!   says when it was used; CPU falls back to procfs when its `cpu.stat`
//!   cannot be read, memory and disk each fall back when their controller's
//!   file is missing.
//! - **procfs**: `stat` utime+stime (all threads, guest time included),
//!   `status` VmRSS, `io` read_bytes/write_bytes.
//! - **Network**: the tun/tap devices the process holds open (found through
//!   `fdinfo`'s `iff:` line, so vhost-net VMs are covered too; macvtap is
//!   not), and their counters in `<sys_root>/class/net/<if>/statistics`.
//!   Directions are the **VM's**: the tap's `tx_bytes` (host → guest) is
//!   [`HostSample::net_rx_bytes`], its `rx_bytes` is
//!   [`HostSample::net_tx_bytes`].
//!
//! A field is `None` when its source cannot be read (another user's process
//! without root, a controller not enabled, no tap); a process that exited
//! mid-sample is [`HostError::Gone`].

pub mod parse;

use std::collections::BTreeSet;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::identity::cgroup;
use parse::ParseError;

/// Usual procfs mount point.
pub const DEFAULT_PROC_ROOT: &str = "/proc";
/// Usual sysfs mount point.
pub const DEFAULT_SYS_ROOT: &str = "/sys";
/// Usual cgroup v2 mount point.
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Cumulative counters of one VM process at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HostSample {
    /// CPU time used, in nanoseconds.
    pub cpu_ns: Option<u64>,
    /// Memory in use, in bytes: the VM cgroup's `memory.current` (page cache
    /// included), else the process's resident set.
    pub mem_bytes: Option<u64>,
    /// Bytes read from storage.
    pub disk_read_bytes: Option<u64>,
    /// Bytes written to storage.
    pub disk_write_bytes: Option<u64>,
    /// Bytes the VM received: the sum of its taps' `tx_bytes`.
    pub net_rx_bytes: Option<u64>,
    /// Bytes the VM sent: the sum of its taps' `rx_bytes`.
    pub net_tx_bytes: Option<u64>,
    /// The tap interfaces the process holds, sorted, each once.
    pub taps: Vec<String>,
    /// The VM cgroup the CPU time came from (relative to the cgroup root), or
    /// `None` when it came from procfs. A change between two samples means the
    /// counters changed source: do not diff across it.
    pub vm_cgroup: Option<PathBuf>,
}

/// Errors from [`sample`] and [`read_taps`].
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The process exited (or is a zombie): the VM is gone.
    #[error("process {pid} is gone")]
    Gone {
        /// The process.
        pid: u32,
    },
    /// A file could not be read for a reason other than permissions or absence.
    #[error("reading {} for process {pid}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The process.
        pid: u32,
        /// The I/O error, errno kept.
        #[source]
        source: io::Error,
    },
    /// A file's contents are not what the kernel writes.
    #[error("parsing {} for process {pid}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The process.
        pid: u32,
        /// What is wrong.
        #[source]
        source: ParseError,
    },
}

/// The kernel's clock tick for `/proc/<pid>/stat` times (`USER_HZ`,
/// `sysconf(_SC_CLK_TCK)`); 100 if sysconf fails.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf takes an integer name, touches no caller memory and has
    // no preconditions; an unknown name returns -1, handled below.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&hz| hz > 0).unwrap_or(100)
}

/// Reads a process's files, mapping errors the same way everywhere.
struct Proc {
    dir: PathBuf,
    pid: u32,
}

impl Proc {
    fn new(proc_root: &Path, pid: u32) -> Self {
        Self {
            dir: proc_root.join(pid.to_string()),
            pid,
        }
    }

    fn gone(&self) -> HostError {
        HostError::Gone { pid: self.pid }
    }

    /// The process is gone if its directory is.
    fn error(&self, path: &Path, source: io::Error) -> HostError {
        if source.raw_os_error() == Some(libc::ESRCH)
            || (source.kind() == io::ErrorKind::NotFound && !self.dir.exists())
        {
            self.gone()
        } else {
            HostError::Read {
                path: path.to_path_buf(),
                pid: self.pid,
                source,
            }
        }
    }

    /// A file that must be there while the process lives.
    fn required(&self, name: &str) -> Result<(PathBuf, String), HostError> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(b) => Ok((path, String::from_utf8_lossy(&b).into_owned())),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) =>
            {
                Err(self.gone())
            }
            Err(e) => Err(self.error(&path, e)),
        }
    }

    /// A file that may be absent or unreadable (`None`); the process being
    /// gone is still an error.
    fn optional(&self, path: &Path) -> Result<Option<String>, HostError> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
            Err(e) => match self.error(path, e) {
                HostError::Read { source, .. } if unavailable(&source) => Ok(None),
                err => Err(err),
            },
        }
    }

    fn parse<T>(&self, path: &Path, r: Result<T, ParseError>) -> Result<T, HostError> {
        r.map_err(|source| HostError::Parse {
            path: path.to_path_buf(),
            pid: self.pid,
            source,
        })
    }
}

/// Absent, or not ours to read: the field is unknown, not the sample failed.
fn unavailable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
    ) || e.raw_os_error() == Some(libc::EPERM)
}

/// A cgroup path from `/proc/<pid>/cgroup` as a path below `cgroup_root`:
/// only normal components, so it cannot climb out of the root.
fn cgroup_dir(cgroup_root: &Path, path: &str) -> Option<PathBuf> {
    let rel = Path::new(path.trim_start_matches('/'));
    rel.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| cgroup_root.join(rel))
}

/// Samples the cumulative counters of process `pid` (a process id — a tgid,
/// as [`crate::identity::VmIdentity::pid`] — not a thread id, whose `stat`
/// would count that thread alone).
///
/// `proc_root` is usually [`DEFAULT_PROC_ROOT`], `sys_root`
/// [`DEFAULT_SYS_ROOT`], `cgroup_root` [`DEFAULT_CGROUP_ROOT`] (the cgroup v2
/// mount). See the [module docs](self) for where each counter comes from.
pub fn sample(
    proc_root: &Path,
    sys_root: &Path,
    cgroup_root: &Path,
    pid: u32,
) -> Result<HostSample, HostError> {
    sample_with_clock(
        proc_root,
        sys_root,
        cgroup_root,
        pid,
        clock_ticks_per_second(),
    )
}

/// Whether the block device at `dir` (`SYS/dev/block/MAJ:MIN`) or one of its
/// partitions has holders (a device stacked on it).
fn stacked(dir: &Path) -> bool {
    let has_holders =
        |d: &Path| std::fs::read_dir(d.join("holders")).is_ok_and(|mut e| e.next().is_some());
    has_holders(dir)
        || std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .any(|p| p.join("partition").is_file() && has_holders(&p))
        })
}

/// [`sample`] with the clock tick passed in.
pub fn sample_with_clock(
    proc_root: &Path,
    sys_root: &Path,
    cgroup_root: &Path,
    pid: u32,
    clk_tck: u64,
) -> Result<HostSample, HostError> {
    let p = Proc::new(proc_root, pid);
    let (stat_path, stat_text) = p.required("stat")?;
    let stat = p.parse(&stat_path, parse::parse_stat(&stat_text))?;
    if stat.is_dead() {
        return Err(p.gone());
    }
    let mut out = HostSample::default();

    // The VM cgroup, if any, and CPU from it (not for a kernel thread in it:
    // the cgroup's counters are the VM's, which its VMM's row shows).
    let cgroup_file = p.dir.join("cgroup");
    let cgroup_text = if stat.is_kernel_thread() {
        None
    } else {
        p.optional(&cgroup_file)?
    };
    let vm_cgroup = cgroup_text
        .and_then(|text| {
            let lines = cgroup::parse_cgroup(&text);
            let m = cgroup::machine_cgroup(cgroup::unified_path(&lines)?)?;
            Some(m.dir.to_owned())
        })
        .and_then(|rel| Some((cgroup_dir(cgroup_root, &rel)?, PathBuf::from(rel))));
    if let Some((dir, rel)) = &vm_cgroup {
        let path = dir.join("cpu.stat");
        if let Some(text) = p.optional(&path)? {
            out.cpu_ns = Some(p.parse(&path, parse::parse_cpu_stat_usage_ns(&text))?);
            out.vm_cgroup = Some(rel.clone());
        }
    }
    let cg_dir = out
        .vm_cgroup
        .as_ref()
        .and(vm_cgroup.as_ref())
        .map(|(dir, _)| dir);
    if out.cpu_ns.is_none() {
        let ticks = stat.utime_ticks.saturating_add(stat.stime_ticks);
        out.cpu_ns = Some(parse::ticks_to_ns(ticks, clk_tck));
    }

    // Memory.
    let cg_mem = match cg_dir {
        Some(dir) => {
            let path = dir.join("memory.current");
            match p.optional(&path)? {
                Some(text) => Some(p.parse(&path, parse::parse_u64("memory.current", &text))?),
                None => None,
            }
        }
        None => None,
    };
    out.mem_bytes = match cg_mem {
        Some(bytes) => Some(bytes),
        None => {
            let path = p.dir.join("status");
            match p.optional(&path)? {
                Some(text) => p.parse(&path, parse::parse_status_rss(&text))?,
                None => None,
            }
        }
    };

    // Disk.
    let cg_io = match cg_dir {
        Some(dir) => {
            let path = dir.join("io.stat");
            match p.optional(&path)? {
                Some(text) => {
                    // A disk with holders, on itself or on one of its
                    // partitions (io.stat lists whole disks), lies under
                    // another device (LVM, dm-crypt, md): its bytes are the
                    // upper device's again.
                    let top = |devno: &str| !stacked(&sys_root.join("dev/block").join(devno));
                    Some(p.parse(&path, parse::parse_io_stat(&text, top))?)
                }
                None => None,
            }
        }
        None => None,
    };
    let io = match cg_io {
        Some(io) => Some(io),
        None => {
            let path = p.dir.join("io");
            match p.optional(&path)? {
                Some(text) => Some(p.parse(&path, parse::parse_proc_io(&text))?),
                None => None,
            }
        }
    };
    out.disk_read_bytes = io.map(|io| io.read);
    out.disk_write_bytes = io.map(|io| io.write);

    // Network.
    out.taps = read_taps(proc_root, pid)?;
    let mut net: Option<(u64, u64)> = None;
    for tap in &out.taps {
        if let Some((rx, tx)) = read_tap_bytes(sys_root, tap) {
            let (vm_rx, vm_tx) = net.unwrap_or_default();
            // The VM receives what the tap transmits, and the other way round.
            net = Some((vm_rx.saturating_add(tx), vm_tx.saturating_add(rx)));
        }
    }
    out.net_rx_bytes = net.map(|(rx, _)| rx);
    out.net_tx_bytes = net.map(|(_, tx)| tx);

    // Counters read after the process exited would be a mix: check it is
    // still there.
    if !p.dir.exists() {
        return Err(p.gone());
    }
    Ok(out)
}

/// The tun/tap interfaces process `pid` holds open, sorted, each once
/// (multiqueue taps are opened once per queue).
///
/// Only fds whose `fd/<n>` link is `/dev/net/tun` (or cannot be read) have
/// their `fdinfo/<n>` read. Names that are not valid interface names are
/// dropped. Without permission to list the fds, the list is empty.
pub fn read_taps(proc_root: &Path, pid: u32) -> Result<Vec<String>, HostError> {
    let p = Proc::new(proc_root, pid);
    let fdinfo = p.dir.join("fdinfo");
    let entries = match std::fs::read_dir(&fdinfo) {
        Ok(entries) => entries,
        Err(e) => {
            return match p.error(&fdinfo, e) {
                HostError::Read { source, .. } if unavailable(&source) => Ok(Vec::new()),
                err => Err(err),
            };
        }
    };
    let mut taps = BTreeSet::new();
    for entry in entries.flatten() {
        let fd = entry.file_name();
        if let Ok(target) = std::fs::read_link(p.dir.join("fd").join(&fd))
            && target != Path::new("/dev/net/tun")
        {
            continue;
        }
        // The fd may have been closed since the listing: skip it.
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        match parse::parse_fdinfo_iff(&text) {
            Some(name) if parse::is_valid_ifname(name) => {
                taps.insert(name.to_owned());
            }
            Some(name) => log::debug!("process {pid}: ignoring invalid tap name {name:?}"),
            None => {}
        }
    }
    Ok(taps.into_iter().collect())
}

/// `(rx_bytes, tx_bytes)` of interface `ifname` as the host sees it; `None`
/// if the name is invalid or either counter cannot be read (the tap went away).
pub fn read_tap_bytes(sys_root: &Path, ifname: &str) -> Option<(u64, u64)> {
    if !parse::is_valid_ifname(ifname) {
        return None;
    }
    let stats = sys_root.join("class/net").join(ifname).join("statistics");
    let read = |name: &'static str| {
        let text = std::fs::read_to_string(stats.join(name)).ok()?;
        parse::parse_u64(name, &text).ok()
    };
    Some((read("rx_bytes")?, read("tx_bytes")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_is_stacked_when_it_or_a_partition_has_holders() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("8:0");
        std::fs::create_dir_all(disk.join("holders")).unwrap();
        std::fs::create_dir_all(disk.join("sda1/holders")).unwrap();
        std::fs::write(disk.join("sda1/partition"), "1\n").unwrap();
        assert!(!stacked(&disk));
        // An LVM PV on the second partition, the usual layout.
        std::fs::create_dir_all(disk.join("sda2/holders/dm-0")).unwrap();
        std::fs::write(disk.join("sda2/partition"), "2\n").unwrap();
        assert!(stacked(&disk));
        // A whole-disk PV.
        let whole = dir.path().join("8:16");
        std::fs::create_dir_all(whole.join("holders/dm-1")).unwrap();
        assert!(stacked(&whole));
        assert!(!stacked(&dir.path().join("missing")));
    }
    use std::fs;

    const STAT: &str = "4242 (qemu-system-x86) (vm) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 \
                        20 0 5 0 1000 123456 789 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 17 3 0 0 0\n";
    const LIBVIRT_CGROUP: &str =
        "0::/machine.slice/machine-qemu\\x2d3\\x2dweb01.scope/libvirt/emulator\n";
    const SCOPE: &str = "machine.slice/machine-qemu\\x2d3\\x2dweb01.scope";

    struct Tree {
        _tmp: tempfile::TempDir,
        proc_root: PathBuf,
        sys_root: PathBuf,
        cgroup_root: PathBuf,
    }

    impl Tree {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let t = Tree {
                proc_root: tmp.path().join("proc"),
                sys_root: tmp.path().join("sys"),
                cgroup_root: tmp.path().join("cgroup"),
                _tmp: tmp,
            };
            for d in [&t.proc_root, &t.sys_root, &t.cgroup_root] {
                fs::create_dir_all(d).unwrap();
            }
            t
        }

        fn file(&self, rel: impl AsRef<Path>, text: &str) {
            let path = self._tmp.path().join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }

        fn process(&self, pid: u32) {
            self.file(format!("proc/{pid}/stat"), STAT);
            self.file(
                format!("proc/{pid}/status"),
                "Name:\tqemu\nVmRSS:\t 2048 kB\n",
            );
            self.file(
                format!("proc/{pid}/io"),
                "rchar: 9\nwchar: 9\nread_bytes: 4096\nwrite_bytes: 512\n",
            );
            self.file(
                format!("proc/{pid}/cgroup"),
                "0::/user.slice/user-1000.slice/session-1.scope\n",
            );
            fs::create_dir_all(self.proc_root.join(format!("{pid}/fdinfo"))).unwrap();
        }

        fn tap(&self, pid: u32, fd: u32, ifname: &str, rx: u64, tx: u64) {
            self.file(
                format!("proc/{pid}/fdinfo/{fd}"),
                &format!("pos:\t0\nflags:\t0104002\nmnt_id:\t26\nino:\t1057\niff:\t{ifname}\n"),
            );
            self.file(
                format!("sys/class/net/{ifname}/statistics/rx_bytes"),
                &format!("{rx}\n"),
            );
            self.file(
                format!("sys/class/net/{ifname}/statistics/tx_bytes"),
                &format!("{tx}\n"),
            );
        }

        fn sample(&self, pid: u32) -> Result<HostSample, HostError> {
            sample_with_clock(&self.proc_root, &self.sys_root, &self.cgroup_root, pid, 100)
        }
    }

    #[test]
    fn procfs_sources() {
        let t = Tree::new();
        t.process(7);
        let s = t.sample(7).unwrap();
        assert_eq!(
            s,
            HostSample {
                cpu_ns: Some(3_250_000_000),
                mem_bytes: Some(2048 * 1024),
                disk_read_bytes: Some(4096),
                disk_write_bytes: Some(512),
                net_rx_bytes: None,
                net_tx_bytes: None,
                taps: vec![],
                vm_cgroup: None,
            }
        );
    }

    #[test]
    fn libvirt_cgroup_sources() {
        let t = Tree::new();
        t.process(8);
        t.file("proc/8/cgroup", LIBVIRT_CGROUP);
        t.file(
            format!("cgroup/{SCOPE}/cpu.stat"),
            "usage_usec 5000000\nuser_usec 4000000\n",
        );
        t.file(format!("cgroup/{SCOPE}/memory.current"), "1073741824\n");
        t.file(
            format!("cgroup/{SCOPE}/io.stat"),
            "8:0 rbytes=10 wbytes=20 rios=1 wios=1\n8:16 rbytes=1 wbytes=2\n",
        );
        let s = t.sample(8).unwrap();
        assert_eq!(s.cpu_ns, Some(5_000_000_000));
        assert_eq!(s.mem_bytes, Some(1 << 30));
        assert_eq!(
            (s.disk_read_bytes, s.disk_write_bytes),
            (Some(11), Some(22))
        );
        assert_eq!(s.vm_cgroup, Some(PathBuf::from(format!("/{SCOPE}"))));

        // Controllers not enabled: memory and disk fall back to procfs.
        fs::remove_file(t.cgroup_root.join(SCOPE).join("memory.current")).unwrap();
        fs::remove_file(t.cgroup_root.join(SCOPE).join("io.stat")).unwrap();
        let s = t.sample(8).unwrap();
        assert_eq!(s.cpu_ns, Some(5_000_000_000));
        assert_eq!(
            (s.mem_bytes, s.disk_read_bytes),
            (Some(2048 * 1024), Some(4096))
        );

        // No cgroup directory: everything from procfs.
        fs::remove_dir_all(t.cgroup_root.join("machine.slice")).unwrap();
        let s = t.sample(8).unwrap();
        assert_eq!((s.cpu_ns, s.vm_cgroup), (Some(3_250_000_000), None));
    }

    #[test]
    fn cgroup_path_cannot_escape_the_root() {
        let t = Tree::new();
        t.process(9);
        t.file("proc/9/cgroup", "0::/../machine-qemu\\x2d1\\x2dx.scope\n");
        t.file("machine-qemu\\x2d1\\x2dx.scope/cpu.stat", "usage_usec 1\n");
        let s = t.sample(9).unwrap();
        assert_eq!((s.cpu_ns, s.vm_cgroup), (Some(3_250_000_000), None));
    }

    #[test]
    fn missing_optional_files_are_none() {
        let t = Tree::new();
        t.process(10);
        for f in ["io", "status", "cgroup"] {
            fs::remove_file(t.proc_root.join("10").join(f)).unwrap();
        }
        fs::remove_dir(t.proc_root.join("10/fdinfo")).unwrap();
        let s = t.sample(10).unwrap();
        assert_eq!(s.cpu_ns, Some(3_250_000_000));
        assert_eq!(
            (s.mem_bytes, s.disk_read_bytes, s.disk_write_bytes),
            (None, None, None)
        );
        assert!(s.taps.is_empty());
        // A kernel thread's status has no VmRSS.
        t.file("proc/10/status", "Name:\tkthreadd\n");
        assert_eq!(t.sample(10).unwrap().mem_bytes, None);
    }

    #[test]
    fn taps_and_direction() {
        let t = Tree::new();
        t.process(11);
        t.tap(11, 20, "vnet0", 1000, 5000);
        t.tap(11, 21, "vnet0", 1000, 5000); // second queue of the same tap
        t.tap(11, 22, "tap-b", 1, 2);
        t.file("proc/11/fdinfo/3", "pos:\t0\nflags:\t02\nmnt_id:\t1\n");
        // A tun fd whose interface was hot-unplugged: no statistics.
        t.file("proc/11/fdinfo/23", "iff:\tgone0\n");
        // Hostile name: never becomes a path.
        t.file("proc/11/fdinfo/24", "iff:\t../../etc\n");
        let s = t.sample(11).unwrap();
        assert_eq!(s.taps, vec!["gone0", "tap-b", "vnet0"]);
        // VM rx = tap tx.
        assert_eq!(s.net_rx_bytes, Some(5002));
        assert_eq!(s.net_tx_bytes, Some(1001));
    }

    #[test]
    fn fd_links_filter_fdinfo_reads() {
        let t = Tree::new();
        t.process(12);
        t.tap(12, 5, "tap0", 1, 2);
        t.tap(12, 6, "tap1", 1, 2);
        let fd = t.proc_root.join("12/fd");
        fs::create_dir_all(&fd).unwrap();
        std::os::unix::fs::symlink("/dev/net/tun", fd.join("5")).unwrap();
        std::os::unix::fs::symlink("/var/lib/disk.img", fd.join("6")).unwrap();
        assert_eq!(read_taps(&t.proc_root, 12).unwrap(), vec!["tap0"]);
    }

    #[test]
    fn gone_and_zombie() {
        let t = Tree::new();
        assert!(matches!(t.sample(13), Err(HostError::Gone { pid: 13 })));
        t.process(14);
        t.file(
            "proc/14/stat",
            "14 (qemu) Z 1 14 14 0 -1 0 0 0 0 0 5 5 0 0\n",
        );
        assert!(matches!(t.sample(14), Err(HostError::Gone { pid: 14 })));
        assert!(matches!(
            read_taps(&t.proc_root, 13),
            Err(HostError::Gone { pid: 13 })
        ));
    }

    #[test]
    fn malformed_files_name_the_path() {
        let t = Tree::new();
        t.process(15);
        t.file("proc/15/stat", "garbage");
        let err = t.sample(15).unwrap_err();
        assert!(
            matches!(&err, HostError::Parse { path, pid: 15, .. } if path.ends_with("15/stat"))
        );
        assert!(err.to_string().contains("15/stat"));
    }

    #[test]
    fn tap_bytes_rejects_bad_names() {
        let t = Tree::new();
        assert_eq!(read_tap_bytes(&t.sys_root, ".."), None);
        assert_eq!(read_tap_bytes(&t.sys_root, "nope0"), None);
    }

    #[test]
    fn samples_this_process_from_the_real_proc() {
        let s = sample(
            Path::new(DEFAULT_PROC_ROOT),
            Path::new(DEFAULT_SYS_ROOT),
            Path::new(DEFAULT_CGROUP_ROOT),
            std::process::id(),
        )
        .unwrap();
        assert!(s.cpu_ns.is_some());
        assert!(s.mem_bytes.is_some_and(|m| m > 0));
    }

    #[test]
    fn clock_tick_is_positive() {
        assert!(clock_ticks_per_second() > 0);
    }
}
