//! Where a QEMU VM's QMP monitor is, from its command line (pure).

use std::path::PathBuf;

use serde::Serialize;

use crate::identity::cmdline::{option_values, parse_qemu_opts};

/// A VM's QMP monitor, as its command line (or the policy) shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Monitor {
    /// A QMP server on a Unix socket vpm can connect to.
    Unix {
        /// The socket.
        path: PathBuf,
        /// Where vpm found it: `-qmp`, `-chardev`+`-mon`, or `policy`.
        from: &'static str,
    },
    /// A QMP monitor vpm cannot use: TCP, a passed file descriptor, ...
    Unusable {
        /// What it is.
        what: String,
    },
    /// No QMP monitor.
    None,
}

/// Whether socket options make QEMU listen (`server`, `server=on`; QEMU's
/// default is to connect out as a client).
fn listens(opts: &[(Vec<u8>, Vec<u8>)]) -> bool {
    opts.iter()
        .any(|(k, v)| k == b"server" && !matches!(v.as_slice(), b"off" | b"false" | b"no"))
}

/// Whether socket options name an abstract socket (`abstract=on`).
fn is_abstract(opts: &[(Vec<u8>, Vec<u8>)]) -> bool {
    opts.iter()
        .any(|(k, v)| k == b"abstract" && !matches!(v.as_slice(), b"off" | b"false" | b"no"))
}

/// The QMP monitors on a QEMU command line: first every `-qmp unix:PATH,...`
/// (and `-qmp-pretty`), then every `-chardev socket,id=X,path=PATH` used by
/// `-mon chardev=X,mode=control`. A `-mon` without `mode=control` is the
/// human monitor (HMP) and not listed. A socket QEMU does not listen on
/// (no `server=on`: QEMU is the client) or an abstract one is listed as
/// unusable. A relative path is as written (relative to QEMU's working
/// directory; the caller resolves it).
pub fn qmp_monitors(args: &[&[u8]]) -> Vec<Monitor> {
    let mut out = Vec::new();
    for value in option_values(args, &[b"-qmp", b"--qmp", b"-qmp-pretty", b"--qmp-pretty"]) {
        // `unix:PATH,server=on,wait=off`: the first item is the address.
        let opts = parse_qemu_opts(value, b"addr");
        let addr = opts
            .iter()
            .find(|(k, _)| k == b"addr")
            .map(|(_, v)| v.as_slice())
            .unwrap_or_default();
        out.push(match addr.strip_prefix(b"unix:") {
            Some(_) if is_abstract(&opts) => Monitor::Unusable {
                what: format!(
                    "-qmp {} is an abstract socket (vpm connects to socket files)",
                    String::from_utf8_lossy(value)
                ),
            },
            Some(path) if !path.is_empty() && !listens(&opts) => Monitor::Unusable {
                what: format!(
                    "-qmp {} has no server=on: QEMU connects out to that socket as a client \
                     instead of listening on it",
                    String::from_utf8_lossy(value)
                ),
            },
            Some(path) if !path.is_empty() => Monitor::Unix {
                path: PathBuf::from(String::from_utf8_lossy(path).into_owned()),
                from: "-qmp",
            },
            _ => Monitor::Unusable {
                what: format!(
                    "-qmp {} (vpm speaks QMP over Unix sockets only)",
                    String::from_utf8_lossy(value)
                ),
            },
        });
    }
    let chardevs: Vec<Vec<(Vec<u8>, Vec<u8>)>> = option_values(args, &[b"-chardev", b"--chardev"])
        .into_iter()
        .map(|v| parse_qemu_opts(v, b"backend"))
        .collect();
    for value in option_values(args, &[b"-mon", b"--mon"]) {
        let mon = parse_qemu_opts(value, b"chardev");
        let get = |opts: &[(Vec<u8>, Vec<u8>)], key: &[u8]| {
            opts.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
        };
        if get(&mon, b"mode").as_deref() != Some(b"control") {
            continue;
        }
        let Some(id) = get(&mon, b"chardev") else {
            continue;
        };
        let chardev = chardevs
            .iter()
            .find(|c| get(c, b"id").as_deref() == Some(id.as_slice()));
        let id = String::from_utf8_lossy(&id).into_owned();
        out.push(match chardev {
            Some(c) if get(c, b"backend").as_deref() == Some(b"socket") => match get(c, b"path") {
                Some(_) if is_abstract(c) => Monitor::Unusable {
                    what: format!(
                        "chardev {id} is an abstract socket (vpm connects to socket files)"
                    ),
                },
                Some(path) if !path.is_empty() && !listens(c) => Monitor::Unusable {
                    what: format!(
                        "chardev {id} has no server=on: QEMU connects out to {} as a client \
                         instead of listening on it",
                        String::from_utf8_lossy(&path)
                    ),
                },
                Some(path) if !path.is_empty() => Monitor::Unix {
                    path: PathBuf::from(String::from_utf8_lossy(&path).into_owned()),
                    from: "-chardev",
                },
                _ if get(c, b"fd").is_some() => Monitor::Unusable {
                    what: format!(
                        "chardev {id} is a socket passed as a file descriptor \
                             (the process that started QEMU owns it)"
                    ),
                },
                _ => Monitor::Unusable {
                    what: format!(
                        "chardev {id} is a TCP socket (vpm speaks QMP over Unix sockets only)"
                    ),
                },
            },
            Some(_) => Monitor::Unusable {
                what: format!("chardev {id} is not a socket"),
            },
            None => Monitor::Unusable {
                what: format!("-mon names chardev {id}, which the command line does not define"),
            },
        });
    }
    out
}

/// The monitor vpm uses for a VM: the first Unix QMP socket on its command
/// line, else the one the policy names, else the first unusable one (to
/// report it), else none.
pub fn choose(found: Vec<Monitor>, from_policy: Option<PathBuf>) -> Monitor {
    if let Some(m) = found.iter().find(|m| matches!(m, Monitor::Unix { .. })) {
        return m.clone();
    }
    if let Some(path) = from_policy {
        return Monitor::Unix {
            path,
            from: "policy",
        };
    }
    found.into_iter().next().unwrap_or(Monitor::None)
}

/// Whether a monitor socket lives in one of libvirt's directories
/// (`/var/lib/libvirt/qemu/domain-3-web/monitor.sock`, `/run/libvirt/…`, a
/// session daemon's `~/.config/libvirt/…`): its monitor is libvirt's, even
/// when the VM's cgroup does not say so.
pub fn in_libvirt_dir(path: &std::path::Path) -> bool {
    path.components()
        .any(|c| c.as_os_str() == std::ffi::OsStr::new("libvirt"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<Vec<u8>> {
        s.split(' ').map(|a| a.as_bytes().to_vec()).collect()
    }

    fn mons(s: &str) -> Vec<Monitor> {
        let owned = args(s);
        let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        qmp_monitors(&refs)
    }

    fn unix(path: &str, from: &'static str) -> Monitor {
        Monitor::Unix {
            path: path.into(),
            from,
        }
    }

    #[test]
    fn qmp_option_forms() {
        assert_eq!(
            mons("qemu-system-x86_64 -qmp unix:/run/a.sock,server=on,wait=off"),
            [unix("/run/a.sock", "-qmp")]
        );
        assert_eq!(
            mons("qemu -qmp unix:/run/a,,b.sock,server,nowait"),
            [unix("/run/a,b.sock", "-qmp")]
        );
        assert_eq!(mons("qemu --qmp=unix:/x,server=on"), [unix("/x", "-qmp")]);
        // QEMU as the client, or an abstract socket: not something to connect to.
        for bad in [
            "qemu -qmp unix:/x",
            "qemu -qmp unix:/x,server=off",
            "qemu -qmp unix:x,server=on,abstract=on",
        ] {
            assert!(matches!(mons(bad)[0], Monitor::Unusable { .. }), "{bad}");
        }
        assert!(matches!(
            mons("qemu -qmp tcp:localhost:4444,server")[0],
            Monitor::Unusable { .. }
        ));
        assert!(mons("qemu -monitor stdio -name x").is_empty());
    }

    #[test]
    fn chardev_with_control_mon() {
        assert_eq!(
            mons(
                "qemu -chardev socket,id=mon0,path=/var/run/q.sock,server=on,wait=off \
                 -mon chardev=mon0,mode=control"
            ),
            [unix("/var/run/q.sock", "-chardev")]
        );
        // The human monitor is not QMP.
        assert!(mons("qemu -chardev socket,id=h,path=/h.sock,server=on -mon chardev=h").is_empty());
        // A chardev QEMU does not listen on.
        let m = mons("qemu -chardev socket,id=c,path=/c.sock -mon chardev=c,mode=control");
        assert!(matches!(&m[0], Monitor::Unusable { what } if what.contains("server=on")));
        // libvirt passes the socket as an fd.
        let m = mons(
            "qemu -chardev socket,id=charmonitor,fd=23,server=on,wait=off -mon chardev=charmonitor,id=monitor,mode=control",
        );
        assert!(matches!(&m[0], Monitor::Unusable { what } if what.contains("file descriptor")));
        let m = mons("qemu -mon chardev=nope,mode=control");
        assert!(matches!(&m[0], Monitor::Unusable { what } if what.contains("does not define")));
    }

    #[test]
    fn libvirt_directories_are_recognised() {
        use std::path::Path;
        for p in [
            "/var/lib/libvirt/qemu/domain-3-web01/monitor.sock",
            "/run/libvirt/qemu/web01.monitor",
            "/root/.config/libvirt/qemu/lib/domain-1-x/monitor.sock",
        ] {
            assert!(in_libvirt_dir(Path::new(p)), "{p}");
        }
        for p in [
            "/run/vpm/web01.qmp",
            "/var/lib/libvirt-backup/q.sock",
            "/tmp/libvirtish",
        ] {
            assert!(!in_libvirt_dir(Path::new(p)), "{p}");
        }
    }

    #[test]
    fn choice_prefers_the_command_line_then_policy() {
        assert_eq!(
            choose(mons("qemu -qmp unix:/a,server=on"), Some("/p".into())),
            unix("/a", "-qmp")
        );
        assert_eq!(choose(Vec::new(), Some("/p".into())), unix("/p", "policy"));
        assert_eq!(choose(Vec::new(), None), Monitor::None);
        assert!(matches!(
            choose(mons("qemu -qmp tcp:h:1"), None),
            Monitor::Unusable { .. }
        ));
    }
}
