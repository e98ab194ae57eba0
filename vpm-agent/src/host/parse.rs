//! Pure parsers for the procfs, cgroup and sysfs files [`super::sample`] reads.

use std::num::ParseIntError;

/// What is wrong with a file's contents.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// A field the kernel always writes is missing.
    #[error("field {field} is missing")]
    Missing {
        /// Field or key name.
        field: &'static str,
    },
    /// A field is not a number.
    #[error("field {field} is not a number: {value:?}")]
    Number {
        /// Field or key name.
        field: &'static str,
        /// The text found (cut to 32 bytes).
        value: String,
        /// The parse error.
        #[source]
        source: ParseIntError,
    },
}

fn number(field: &'static str, value: &str) -> Result<u64, ParseError> {
    value.trim().parse().map_err(|source| ParseError::Number {
        field,
        value: value.chars().take(32).collect(),
        source,
    })
}

/// The fields vpm uses from `/proc/<pid>/stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    /// Field 14: user time, in clock ticks (includes guest time).
    pub utime_ticks: u64,
    /// Field 15: system time, in clock ticks.
    pub stime_ticks: u64,
    /// Field 9: the kernel's task flags.
    pub flags: u64,
}

impl ProcStat {
    /// The process has exited and only waits to be reaped (or is being).
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }

    /// A kernel thread (`PF_KTHREAD`), such as a vhost worker before Linux
    /// 6.4: it may sit in a VM's cgroup, but the cgroup's counters are the
    /// VM's, not its own.
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & 0x0020_0000 != 0
    }
}

/// Parses `/proc/<pid>/stat`.
///
/// Field 2, `(comm)`, may hold spaces and parentheses (`(a) (b)`), so the
/// fields after it are counted from the *last* `)`.
pub fn parse_stat(text: &str) -> Result<ProcStat, ParseError> {
    let (_, rest) = text
        .rsplit_once(')')
        .ok_or(ParseError::Missing { field: "comm" })?;
    // rest: " S ppid pgrp ..."; index 0 is field 3.
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let field = |i: usize, name: &'static str| {
        fields
            .get(i)
            .copied()
            .ok_or(ParseError::Missing { field: name })
    };
    let state = field(0, "state")?
        .chars()
        .next()
        .ok_or(ParseError::Missing { field: "state" })?;
    Ok(ProcStat {
        state,
        utime_ticks: number("utime", field(11, "utime")?)?,
        stime_ticks: number("stime", field(12, "stime")?)?,
        flags: number("flags", field(6, "flags")?)?,
    })
}

/// Converts clock ticks to nanoseconds (`clk_tck` is `sysconf(_SC_CLK_TCK)`,
/// 100 on Linux); saturates instead of overflowing. `clk_tck` 0 is taken as 100.
pub fn ticks_to_ns(ticks: u64, clk_tck: u64) -> u64 {
    let hz = if clk_tck == 0 { 100 } else { clk_tck };
    let ns = u128::from(ticks) * 1_000_000_000 / u128::from(hz);
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// `VmRSS` from `/proc/<pid>/status`, in bytes; `None` when the line is
/// absent (kernel threads, zombies).
pub fn parse_status_rss(text: &str) -> Result<Option<u64>, ParseError> {
    let Some(value) = text.lines().find_map(|l| l.strip_prefix("VmRSS:")) else {
        return Ok(None);
    };
    let kb = value.trim().strip_suffix("kB").unwrap_or(value);
    Ok(Some(number("VmRSS", kb)?.saturating_mul(1024)))
}

/// Bytes read and written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoBytes {
    /// Bytes read from storage.
    pub read: u64,
    /// Bytes written to storage.
    pub write: u64,
}

/// `read_bytes` / `write_bytes` from `/proc/<pid>/io` (storage I/O, not the
/// `rchar`/`wchar` of every read(2)/write(2)).
pub fn parse_proc_io(text: &str) -> Result<IoBytes, ParseError> {
    Ok(IoBytes {
        read: number(
            "read_bytes",
            key_value(text, "read_bytes").ok_or(ParseError::Missing {
                field: "read_bytes",
            })?,
        )?,
        write: number(
            "write_bytes",
            key_value(text, "write_bytes").ok_or(ParseError::Missing {
                field: "write_bytes",
            })?,
        )?,
    })
}

/// The value of `key: value` or `key value` lines.
fn key_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?;
        let rest = rest.strip_prefix(':').unwrap_or(rest);
        rest.starts_with([' ', '\t']).then_some(rest)
    })
}

/// `usage_usec` of a cgroup v2 `cpu.stat`, in nanoseconds.
pub fn parse_cpu_stat_usage_ns(text: &str) -> Result<u64, ParseError> {
    let usec = key_value(text, "usage_usec").ok_or(ParseError::Missing {
        field: "usage_usec",
    })?;
    Ok(number("usage_usec", usec)?.saturating_mul(1000))
}

/// A file holding one number (`memory.current`, `statistics/rx_bytes`, ...).
pub fn parse_u64(field: &'static str, text: &str) -> Result<u64, ParseError> {
    number(field, text)
}

/// Sums `rbytes` and `wbytes` over the devices of a cgroup v2 `io.stat`
/// (`MAJ:MIN rbytes=N wbytes=N rios=N ...` per line) for which `counted`
/// says yes (the caller leaves out devices stacked under another one: LVM,
/// dm-crypt and md charge the same bytes again to the device below). An
/// empty file (no I/O yet) is zero.
pub fn parse_io_stat(text: &str, counted: impl Fn(&str) -> bool) -> Result<IoBytes, ParseError> {
    let mut sum = IoBytes::default();
    for line in text.lines() {
        if !line.split_ascii_whitespace().next().is_some_and(&counted) {
            continue;
        }
        for kv in line.split_ascii_whitespace().skip(1) {
            match kv.split_once('=') {
                Some(("rbytes", v)) => sum.read = sum.read.saturating_add(number("rbytes", v)?),
                Some(("wbytes", v)) => sum.write = sum.write.saturating_add(number("wbytes", v)?),
                _ => {}
            }
        }
    }
    Ok(sum)
}

/// The interface name of a tun/tap file descriptor: the `iff:` line of its
/// `/proc/<pid>/fdinfo/<fd>`. `None` for any other kind of fd.
pub fn parse_fdinfo_iff(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("iff:"))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Whether `name` is a network interface name the kernel could have created
/// (its `dev_valid_name`): 1–15 bytes, not `.` or `..`, no `/`, `:`, NUL or
/// whitespace. Checked before a name read from a file goes into a path.
pub fn is_valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_hostile_comm() {
        let line = "4242 (qemu) (x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 5 0 1000 \
                    123456 789 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 17 3 0 0 0 0 0\n";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            s,
            ProcStat {
                state: 'S',
                utime_ticks: 250,
                stime_ticks: 75,
                flags: 4194560
            }
        );
        assert!(!s.is_kernel_thread());
        // A vhost worker before Linux 6.4: PF_KTHREAD set.
        let vhost = "900 (vhost-4242) S 2 0 0 0 -1 2129984 0 0 0 0 5 7 0 0 20 0 1 0 10 0 0";
        assert!(parse_stat(vhost).unwrap().is_kernel_thread());
        let spaces = "7 (a b ) c) Z 1 7 7 0 -1 0 0 0 0 0 9 1 0 0";
        let s = parse_stat(spaces).unwrap();
        assert_eq!((s.state, s.utime_ticks, s.stime_ticks), ('Z', 9, 1));
        assert!(s.is_dead());
    }

    #[test]
    fn stat_malformed() {
        assert!(matches!(
            parse_stat(""),
            Err(ParseError::Missing { field: "comm" })
        ));
        assert!(matches!(
            parse_stat("1 (x) S 1 2"),
            Err(ParseError::Missing { field: "utime" })
        ));
        assert!(matches!(
            parse_stat("1 (x) S 1 1 1 0 -1 0 0 0 0 0 nope 1"),
            Err(ParseError::Number { field: "utime", .. })
        ));
    }

    #[test]
    fn ticks() {
        assert_eq!(ticks_to_ns(250, 100), 2_500_000_000);
        assert_eq!(ticks_to_ns(3, 300), 10_000_000);
        assert_eq!(ticks_to_ns(1, 0), 10_000_000);
        assert_eq!(ticks_to_ns(u64::MAX, 1), u64::MAX);
    }

    #[test]
    fn status_rss() {
        let status = "Name:\tqemu\nVmPeak:\t 9999 kB\nVmRSS:\t  524288 kB\nThreads:\t5\n";
        assert_eq!(parse_status_rss(status).unwrap(), Some(536_870_912));
        assert_eq!(parse_status_rss("Name:\tkthreadd\n").unwrap(), None);
        assert!(parse_status_rss("VmRSS:\tlots kB\n").is_err());
    }

    #[test]
    fn proc_io() {
        let io = "rchar: 100\nwchar: 200\nsyscr: 1\nsyscw: 2\nread_bytes: 4096\n\
                  write_bytes: 8192\ncancelled_write_bytes: 0\n";
        assert_eq!(
            parse_proc_io(io).unwrap(),
            IoBytes {
                read: 4096,
                write: 8192
            }
        );
        assert!(matches!(
            parse_proc_io("rchar: 1\n"),
            Err(ParseError::Missing {
                field: "read_bytes"
            })
        ));
    }

    #[test]
    fn cgroup_files() {
        let cpu = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 0\n";
        assert_eq!(parse_cpu_stat_usage_ns(cpu).unwrap(), 1_500_000);
        assert!(parse_cpu_stat_usage_ns("user_usec 1\n").is_err());
        let io = "8:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n\
                  253:1 rbytes=1 wbytes=2 rios=1 wios=1 dbytes=0 dios=0\n";
        assert_eq!(
            parse_io_stat(io, |_| true).unwrap(),
            IoBytes {
                read: 101,
                write: 202
            }
        );
        // 8:0 under 253:1 (LVM): its bytes are 253:1's again.
        assert_eq!(
            parse_io_stat(io, |d| d != "8:0").unwrap(),
            IoBytes { read: 1, write: 2 }
        );
        assert_eq!(parse_io_stat("", |_| true).unwrap(), IoBytes::default());
        assert_eq!(parse_u64("memory.current", "1048576\n").unwrap(), 1_048_576);
        assert!(parse_u64("memory.current", "max\n").is_err());
    }

    #[test]
    fn fdinfo() {
        let tun = "pos:\t0\nflags:\t0104002\nmnt_id:\t26\nino:\t1057\niff:\tvnet3\n";
        assert_eq!(parse_fdinfo_iff(tun), Some("vnet3"));
        assert_eq!(parse_fdinfo_iff("pos:\t0\nflags:\t02\nmnt_id:\t1\n"), None);
        assert_eq!(parse_fdinfo_iff("iff:\t\n"), None);
    }

    #[test]
    fn ifnames() {
        for ok in ["tap0", "vnet12", "fc-tap-1", "a".repeat(15).as_str()] {
            assert!(is_valid_ifname(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            "eth0:1",
            "a b",
            "x\n",
            &"a".repeat(16),
        ] {
            assert!(!is_valid_ifname(bad), "{bad:?}");
        }
    }
}
