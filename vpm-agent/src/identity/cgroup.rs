//! Pure parsing of `/proc/<pid>/cgroup` and of the cgroup names libvirt
//! gives its VMs.
//!
//! libvirt with systemd puts each VM in a machined scope:
//! `/machine.slice/machine-qemu\x2d3\x2dweb01.scope/libvirt/emulator` (the
//! QEMU main thread sits in `libvirt/emulator`, vCPU threads in
//! `libvirt/vcpuN`). The scope name escapes `-` and other bytes systemd-style
//! as `\xNN`; decoded it reads `machine-qemu-3-web01.scope`, i.e. driver
//! `qemu`, domain id `3`, name `web01`. libvirt without systemd uses
//! `/machine/qemu-3-web01.libvirt-qemu/emulator`. Older libvirt left out the
//! id (`machine-qemu\x2dweb01.scope`). libvirt shortens and filters the name
//! it puts in the machine name, so a cgroup name is a hint: the QEMU `-name`
//! wins when both exist.

/// One line of `/proc/<pid>/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupLine<'a> {
    /// Hierarchy id; `0` is the cgroup v2 (unified) hierarchy.
    pub hierarchy: &'a str,
    /// Comma-separated v1 controllers; empty for v2.
    pub controllers: &'a str,
    /// Path below the hierarchy's root, starting with `/`; a trailing
    /// ` (deleted)` (the cgroup was removed) is dropped.
    pub path: &'a str,
}

/// Parses `/proc/<pid>/cgroup`. Lines that do not have three `:`-separated
/// fields are skipped.
pub fn parse_cgroup(text: &str) -> Vec<CgroupLine<'_>> {
    text.lines()
        .filter_map(|line| {
            let mut it = line.splitn(3, ':');
            let hierarchy = it.next()?;
            let controllers = it.next()?;
            let path = it.next()?;
            let path = path.strip_suffix(" (deleted)").unwrap_or(path);
            Some(CgroupLine {
                hierarchy,
                controllers,
                path,
            })
        })
        .collect()
}

/// The cgroup v2 path (`0::/...`), if the process is on the unified hierarchy.
pub fn unified_path<'a>(lines: &[CgroupLine<'a>]) -> Option<&'a str> {
    lines
        .iter()
        .find(|l| l.hierarchy == "0" && l.controllers.is_empty())
        .map(|l| l.path)
}

/// A libvirt VM's cgroup found in a cgroup path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineCgroup<'a> {
    /// The path up to and including the VM's own directory, as it appears on
    /// the cgroup filesystem (still escaped), e.g.
    /// `/machine.slice/machine-qemu\x2d3\x2dweb01.scope`. It holds every
    /// thread of the VM (emulator, vCPUs, I/O threads) and libvirt's helpers
    /// for it (swtpm, virtiofsd).
    pub dir: &'a str,
    /// libvirt driver: `qemu` or `ch` (Cloud Hypervisor).
    pub driver: &'static str,
    /// Domain name as libvirt wrote it in the cgroup (decoded, not sanitized).
    pub name: Vec<u8>,
}

/// libvirt drivers whose machines are VMs (not containers).
const VM_DRIVERS: [&str; 2] = ["qemu", "ch"];

/// Finds a libvirt VM cgroup in `path`: the first component named
/// `machine-DRIVER\x2d[ID\x2d]NAME.scope` (systemd) or
/// `DRIVER-[ID-]NAME.libvirt-DRIVER` (cgroupfs), with DRIVER `qemu` or `ch`.
pub fn machine_cgroup(path: &str) -> Option<MachineCgroup<'_>> {
    let mut end = 0;
    for component in path.split('/') {
        end += component.len();
        if let Some((driver, name)) = machine_component(component) {
            return Some(MachineCgroup {
                dir: &path[..end],
                driver,
                name,
            });
        }
        end += 1; // the '/'
    }
    None
}

fn machine_component(component: &str) -> Option<(&'static str, Vec<u8>)> {
    let (driver_and_name, suffix_driver) = if let Some(scope) = component
        .strip_prefix("machine-")
        .and_then(|c| c.strip_suffix(".scope"))
    {
        (unescape_systemd(scope), None)
    } else {
        let (stem, driver) = component.rsplit_once(".libvirt-")?;
        (stem.as_bytes().to_vec(), Some(driver))
    };
    let driver = VM_DRIVERS.into_iter().find(|d| {
        driver_and_name.starts_with(d.as_bytes())
            && driver_and_name.get(d.len()) == Some(&b'-')
            && suffix_driver.is_none_or(|s| s == *d)
    })?;
    let rest = &driver_and_name[driver.len() + 1..];
    Some((driver, strip_domain_id(rest).to_vec()))
}

/// Drops a leading `ID-` (decimal domain id) if present.
fn strip_domain_id(rest: &[u8]) -> &[u8] {
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    match rest.get(digits) {
        Some(b'-') if digits > 0 && rest.len() > digits + 1 => &rest[digits + 1..],
        _ => rest,
    }
}

/// Decodes systemd's unit-name escaping: `\xNN` (two hex digits) is the byte
/// 0xNN; anything else is kept as is.
pub fn unescape_systemd(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.get(i + 1) == Some(&b'x')
            && let (Some(hi), Some(lo)) = (hex(b.get(i + 2)), hex(b.get(i + 3)))
        {
            out.push((hi << 4) | lo);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn hex(b: Option<&u8>) -> Option<u8> {
    // `to_digit(16)` is at most 15, so the conversion cannot fail.
    b.and_then(|&b| char::from(b).to_digit(16))
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2: &str = "0::/machine.slice/machine-qemu\\x2d3\\x2dweb01.scope/libvirt/emulator\n";

    #[test]
    fn parses_v2_and_v1() {
        let lines = parse_cgroup(V2);
        assert_eq!(lines.len(), 1);
        assert_eq!(
            unified_path(&lines),
            Some("/machine.slice/machine-qemu\\x2d3\\x2dweb01.scope/libvirt/emulator")
        );
        let v1 = "12:pids:/machine.slice/machine-qemu\\x2d1\\x2ddb.scope\n\
                  11:cpu,cpuacct:/machine.slice/machine-qemu\\x2d1\\x2ddb.scope/emulator\n\
                  1:name=systemd:/machine.slice/machine-qemu\\x2d1\\x2ddb.scope\n\
                  garbage line\n";
        let lines = parse_cgroup(v1);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1].controllers, "cpu,cpuacct");
        assert_eq!(unified_path(&lines), None);
        assert!(parse_cgroup("").is_empty());
        assert_eq!(parse_cgroup("0::/a/b (deleted)\n")[0].path, "/a/b");
    }

    #[test]
    fn finds_libvirt_scopes() {
        let path = "/machine.slice/machine-qemu\\x2d3\\x2dweb01.scope/libvirt/emulator";
        let m = machine_cgroup(path).unwrap();
        assert_eq!(m.dir, "/machine.slice/machine-qemu\\x2d3\\x2dweb01.scope");
        assert_eq!(m.driver, "qemu");
        assert_eq!(m.name, b"web01");

        // A name that itself contains '-' (escaped as \x2d) and digits.
        let m = machine_cgroup("/machine.slice/machine-qemu\\x2d12\\x2dweb\\x2d01\\x2d2.scope")
            .unwrap();
        assert_eq!(m.name, b"web-01-2");
        // Old libvirt: no domain id.
        let m = machine_cgroup("/machine.slice/machine-qemu\\x2dolder.scope").unwrap();
        assert_eq!(m.name, b"older");
        // Cloud Hypervisor driver.
        let m = machine_cgroup("/machine.slice/machine-ch\\x2d2\\x2dfast.scope").unwrap();
        assert_eq!((m.driver, &m.name[..]), ("ch", &b"fast"[..]));
        // libvirt on cgroupfs, no systemd.
        let m = machine_cgroup("/machine/qemu-4-db.libvirt-qemu/emulator").unwrap();
        assert_eq!(
            (m.dir, &m.name[..]),
            ("/machine/qemu-4-db.libvirt-qemu", &b"db"[..])
        );
        // A name made only of digits is kept.
        assert_eq!(
            machine_cgroup("/machine.slice/machine-qemu\\x2d5\\x2d42.scope")
                .unwrap()
                .name,
            b"42"
        );
    }

    #[test]
    fn ignores_non_vm_cgroups() {
        for path in [
            "/",
            "/user.slice/user-1000.slice/session-2.scope",
            "/machine.slice/machine-lxc\\x2d1\\x2dct.scope",
            "/machine.slice/machine-nspawn.scope",
            "/system.slice/libvirtd.service",
            "/machine/qemu-4-db.libvirt-lxc",
        ] {
            assert_eq!(machine_cgroup(path), None, "{path}");
        }
    }

    #[test]
    fn unescapes_systemd() {
        assert_eq!(unescape_systemd("a\\x2db\\x2Fc"), b"a-b/c");
        assert_eq!(unescape_systemd("bad\\x2"), b"bad\\x2");
        assert_eq!(unescape_systemd("bad\\xzz"), b"bad\\xzz");
        assert_eq!(unescape_systemd("esc\\x1b[2J"), b"esc\x1b[2J");
    }
}
