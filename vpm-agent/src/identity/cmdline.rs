//! Pure parsing of a process's argv: which VMM it is, and the name and UUID
//! it was given on the command line.

use super::Vmm;

/// Splits the raw contents of `/proc/<pid>/cmdline` into arguments.
///
/// Arguments are NUL-terminated; the last NUL is optional (a process that
/// rewrote its argv may drop it). Empty input (kernel threads, zombies)
/// yields no arguments. Empty arguments in the middle are kept.
pub fn split_cmdline(raw: &[u8]) -> Vec<&[u8]> {
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|&b| b == 0).collect()
}

/// The last path component of `path`, without a trailing ` (deleted)` that the
/// kernel appends to the `exe` link of a binary replaced on disk (a QEMU still
/// running after a package upgrade).
pub fn basename(path: &[u8]) -> &[u8] {
    let path = path.strip_suffix(b" (deleted)").unwrap_or(path);
    path.rsplit(|&b| b == b'/').next().unwrap_or(path)
}

/// Which VMM a binary is, from its basename.
///
/// - QEMU: `qemu-system-*`, `qemu-kvm` (RHEL's `/usr/libexec/qemu-kvm`), `kvm`.
/// - vpm's own test VMM: `vpm-testvm`.
/// - Cloud Hypervisor: `cloud-hypervisor`, `cloud-hypervisor-static` (the
///   name of the static release binary).
/// - Firecracker: `firecracker`, and release names `firecracker-v*`.
pub fn vmm_of_binary(basename: &[u8]) -> Vmm {
    match basename {
        b"qemu-kvm" | b"kvm" => Vmm::Qemu,
        b"vpm-testvm" => Vmm::VpmTestVm,
        b"cloud-hypervisor" | b"cloud-hypervisor-static" => Vmm::CloudHypervisor,
        b"firecracker" => Vmm::Firecracker,
        b if b.len() > b"qemu-system-".len() && b.starts_with(b"qemu-system-") => Vmm::Qemu,
        b if b.starts_with(b"firecracker-v") => Vmm::Firecracker,
        _ => Vmm::Unknown,
    }
}

/// Every value given to the option `names` (e.g. `["-name", "--name"]`), in
/// order: `NAME VALUE` as two arguments, or `NAME=VALUE` as one.
///
/// An option that is the last argument has no value and is skipped. `argv[0]` is
/// never an option. This does not know which other options take a value, so a
/// value that happens to equal `NAME` (`-append -name`) is misread; the last
/// value wins in the callers, as in QEMU, which keeps that rare.
pub fn option_values<'a>(args: &[&'a [u8]], names: &[&[u8]]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut i = 1;
    while i < args.len() {
        let arg = args[i];
        if names.contains(&arg) {
            if let Some(value) = args.get(i + 1) {
                out.push(*value);
            }
            i += 2;
            continue;
        }
        for name in names {
            if let Some(rest) = arg.strip_prefix(*name)
                && let Some(value) = rest.strip_prefix(b"=")
            {
                out.push(value);
            }
        }
        i += 1;
    }
    out
}

/// Parses a QEMU option string (`guest=a,,b,debug-threads=on`) into
/// `(key, value)` pairs, the way QEMU's `qemu_opts_parse` does:
/// - `,,` is a literal comma inside a value;
/// - the first item may omit `key=`: it is then the value of `implied`
///   (`-name NAME` is `-name guest=NAME`), even if that value contains `=`
///   after an escaped comma;
/// - a later item without `=` is a flag (value `on`).
pub fn parse_qemu_opts(s: &[u8], implied: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut first = true;
    while pos < s.len() {
        let rest = &s[pos..];
        let key_len = rest
            .iter()
            .position(|&b| b == b'=' || b == b',')
            .unwrap_or(rest.len());
        let (key, value, used) = if rest.get(key_len) == Some(&b'=') {
            let (value, used) = opt_value(&rest[key_len + 1..]);
            (rest[..key_len].to_vec(), value, key_len + 1 + used)
        } else if first {
            let (value, used) = opt_value(rest);
            (implied.to_vec(), value, used)
        } else {
            // A flag: `key` alone; skip its terminating comma.
            let used = (key_len + 1).min(rest.len());
            (rest[..key_len].to_vec(), b"on".to_vec(), used)
        };
        if !key.is_empty() {
            out.push((key, value));
        }
        pos += used;
        first = false;
    }
    out
}

/// Reads one value up to a single comma, turning `,,` into `,`. Returns the
/// value and how many bytes were consumed, including the terminating comma.
fn opt_value(s: &[u8]) -> (Vec<u8>, usize) {
    let mut value = Vec::new();
    let mut i = 0;
    while i < s.len() {
        match (s[i], s.get(i + 1)) {
            (b',', Some(b',')) => {
                value.push(b',');
                i += 2;
            }
            (b',', _) => return (value, i + 1),
            (b, _) => {
                value.push(b);
                i += 1;
            }
        }
    }
    (value, i)
}

/// The guest name from QEMU-style `-name`/`--name` options (QEMU and
/// vpm-testvm). QEMU merges repeated `-name` options, so the last `guest`
/// value wins; an empty value is returned as empty (the caller treats it as
/// absent).
pub fn qemu_name(args: &[&[u8]]) -> Option<Vec<u8>> {
    option_values(args, &[b"-name", b"--name"])
        .into_iter()
        .flat_map(|v| parse_qemu_opts(v, b"guest"))
        .filter(|(k, _)| k == b"guest")
        .map(|(_, v)| v)
        .next_back()
}

/// The last valid UUID given by `-uuid`/`--uuid` (QEMU, vpm-testvm), in
/// lowercase. Invalid values are ignored.
pub fn qemu_uuid(args: &[&[u8]]) -> Option<String> {
    option_values(args, &[b"-uuid", b"--uuid"])
        .into_iter()
        .filter_map(parse_uuid)
        .next_back()
}

/// Firecracker's `--id` (the jailer passes it through). Firecracker's own
/// default is `anonymous-instance`, which is returned as is.
pub fn firecracker_id(args: &[&[u8]]) -> Option<Vec<u8>> {
    option_values(args, &[b"--id"])
        .into_iter()
        .next_back()
        .map(<[u8]>::to_vec)
}

/// The DMI UUID of a Cloud Hypervisor VM, from `--platform uuid=...` (older
/// releases) or `--platform system_uuid=...` (newer). Cloud Hypervisor has no
/// VM name option, so its name comes from the cgroup or the `pid-<tgid>`
/// fallback.
pub fn cloud_hypervisor_uuid(args: &[&[u8]]) -> Option<String> {
    option_values(args, &[b"--platform"])
        .into_iter()
        .flat_map(split_top_level_commas)
        .filter_map(|item| {
            item.strip_prefix(b"uuid=")
                .or_else(|| item.strip_prefix(b"system_uuid="))
        })
        .filter_map(parse_uuid)
        .next_back()
}

/// Splits a Cloud Hypervisor option string on commas outside `[...]` lists.
fn split_top_level_commas(s: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        match b {
            b'[' => depth += 1,
            b']' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Validates the shape `8-4-4-4-12` hex digits (what QEMU's `-uuid` accepts)
/// and returns it in lowercase.
pub fn parse_uuid(s: &[u8]) -> Option<String> {
    const DASHES: [usize; 4] = [8, 13, 18, 23];
    if s.len() != 36 {
        return None;
    }
    let ok = s.iter().enumerate().all(|(i, &b)| {
        if DASHES.contains(&i) {
            b == b'-'
        } else {
            b.is_ascii_hexdigit()
        }
    });
    // Every byte is ASCII here, so the lossy conversion loses nothing.
    ok.then(|| String::from_utf8_lossy(s).to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(raw: &[u8]) -> Vec<&[u8]> {
        split_cmdline(raw)
    }

    #[test]
    fn splits_nul_separated_argv() {
        assert_eq!(args(b"a\0b\0\0c\0"), vec![&b"a"[..], b"b", b"", b"c"]);
        assert_eq!(args(b"no-trailing-nul"), vec![&b"no-trailing-nul"[..]]);
        assert!(args(b"").is_empty());
        assert!(args(b"\0").is_empty());
    }

    #[test]
    fn binaries() {
        assert_eq!(
            vmm_of_binary(basename(b"/usr/bin/qemu-system-x86_64")),
            Vmm::Qemu
        );
        assert_eq!(vmm_of_binary(basename(b"/usr/libexec/qemu-kvm")), Vmm::Qemu);
        assert_eq!(vmm_of_binary(basename(b"/usr/bin/kvm")), Vmm::Qemu);
        assert_eq!(
            vmm_of_binary(basename(b"/usr/bin/qemu-system-aarch64 (deleted)")),
            Vmm::Qemu
        );
        assert_eq!(vmm_of_binary(basename(b"qemu-system-")), Vmm::Unknown);
        assert_eq!(vmm_of_binary(basename(b"/usr/bin/qemu-img")), Vmm::Unknown);
        assert_eq!(
            vmm_of_binary(basename(b"./target/debug/vpm-testvm")),
            Vmm::VpmTestVm
        );
        assert_eq!(
            vmm_of_binary(basename(b"/usr/local/bin/cloud-hypervisor")),
            Vmm::CloudHypervisor
        );
        assert_eq!(vmm_of_binary(b"firecracker"), Vmm::Firecracker);
        assert_eq!(
            vmm_of_binary(b"firecracker-v1.7.0-x86_64"),
            Vmm::Firecracker
        );
        assert_eq!(vmm_of_binary(b"bash"), Vmm::Unknown);
        assert_eq!(vmm_of_binary(b""), Vmm::Unknown);
    }

    #[test]
    fn qemu_name_forms() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (
                b"qemu\0-name\0guest=web01,debug-threads=on\0",
                Some(b"web01"),
            ),
            (b"qemu\0-name\0web01\0", Some(b"web01")),
            (b"qemu\0-name\0web01,process=qemu:web01\0", Some(b"web01")),
            (b"qemu\0--name\0web01\0", Some(b"web01")),
            (b"qemu\0-name=web01\0", Some(b"web01")),
            (b"qemu\0-name\0guest=a,,b,debug-threads=on\0", Some(b"a,b")),
            (b"qemu\0-name\0a,,b=c,process=x\0", Some(b"a,b=c")),
            (b"qemu\0-name\0debug-threads=on,guest=late\0", Some(b"late")),
            (b"qemu\0-name\0first\0-name\0second\0", Some(b"second")),
            (
                b"qemu\0-name\0keep\0-name\0debug-threads=on\0",
                Some(b"keep"),
            ),
            (b"qemu\0-name\0guest=\0", Some(b"")),
            (b"qemu\0-m\x00512\0-name\0", None),
            (b"qemu\0-m\x00512\0", None),
            (b"", None),
            (b"-name\0argv0-is-not-an-option\0", None),
        ];
        for (raw, want) in cases {
            assert_eq!(
                qemu_name(&args(raw)).as_deref(),
                *want,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn qemu_opts_flags_and_empty_items() {
        assert_eq!(
            parse_qemu_opts(b"vm,debug-threads,,x=1", b"guest"),
            vec![
                (b"guest".to_vec(), b"vm".to_vec()),
                (b"debug-threads".to_vec(), b"on".to_vec()),
                (b"x".to_vec(), b"1".to_vec()),
            ]
        );
        assert!(parse_qemu_opts(b"", b"guest").is_empty());
        assert_eq!(
            parse_qemu_opts(b"a,,", b"guest"),
            vec![(b"guest".to_vec(), b"a,".to_vec())]
        );
    }

    #[test]
    fn uuids() {
        let good = b"qemu\0-uuid\0C7A5FDBD-CDAF-9455-926A-D65C16DB1809\0";
        assert_eq!(
            qemu_uuid(&args(good)).as_deref(),
            Some("c7a5fdbd-cdaf-9455-926a-d65c16db1809")
        );
        assert_eq!(
            qemu_uuid(&args(
                b"qemu\0--uuid\0c7a5fdbd-cdaf-9455-926a-d65c16db1809\0"
            ))
            .as_deref(),
            Some("c7a5fdbd-cdaf-9455-926a-d65c16db1809")
        );
        for bad in [
            &b"qemu\0-uuid\0garbage\0"[..],
            b"qemu\0-uuid\0",
            b"qemu\0-uuid\0c7a5fdbdXcdaf-9455-926a-d65c16db1809\0",
            b"qemu\0-uuid\0c7a5fdbd-cdaf-9455-926a-d65c16db180g\0",
            b"qemu\0-uuid\0c7a5fdbdcdaf9455926ad65c16db1809\0",
            b"qemu\0-uuid\0c7a5fdbd-cdaf-9455-926a-d65c16db1809\n\0",
        ] {
            assert_eq!(
                qemu_uuid(&args(bad)),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // An invalid later value does not hide a valid earlier one.
        let mixed = b"q\0-uuid\0c7a5fdbd-cdaf-9455-926a-d65c16db1809\0-uuid\0nope\0";
        assert!(qemu_uuid(&args(mixed)).is_some());
    }

    #[test]
    fn firecracker_and_cloud_hypervisor() {
        let fc = b"firecracker\0--api-sock\0/run/fc.sock\0--id\0vm-7\0";
        assert_eq!(firecracker_id(&args(fc)).as_deref(), Some(&b"vm-7"[..]));
        assert_eq!(firecracker_id(&args(b"firecracker\0--id\0")), None);

        let ch = b"cloud-hypervisor\0--api-socket\0/run/ch.sock\0--platform\0\
                   num_pci_segments=2,oem_strings=[a,uuid=x],uuid=1b4e28ba-2fa1-11d2-883f-0016d3cca427\0";
        assert_eq!(
            cloud_hypervisor_uuid(&args(ch)).as_deref(),
            Some("1b4e28ba-2fa1-11d2-883f-0016d3cca427")
        );
        let ch_new =
            b"cloud-hypervisor\0--platform\0system_uuid=1b4e28ba-2fa1-11d2-883f-0016d3cca427\0";
        assert!(cloud_hypervisor_uuid(&args(ch_new)).is_some());
        assert_eq!(
            cloud_hypervisor_uuid(&args(b"cloud-hypervisor\0--kernel\0k\0")),
            None
        );
    }
}
