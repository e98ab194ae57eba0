//! A minimal writer of the `newc` cpio format the kernel unpacks as an initramfs.
//!
//! Only what an initramfs needs: directories and regular files, all
//! owned by root. The kernel accepts the archive uncompressed, so none is applied.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context as _, bail};

/// An initramfs being assembled in memory.
#[derive(Default)]
pub struct Archive {
    out: Vec<u8>,
    dirs: BTreeSet<String>,
    names: BTreeSet<String>,
    ino: u32,
}

impl Archive {
    /// Adds `name` (an absolute guest path) as a file with `data` and permission `mode`.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> anyhow::Result<()> {
        self.parents(name)?;
        self.entry(name, 0o100_000 | (mode & 0o7777), data)
    }

    /// Adds the host file `src` as the guest file `name`, following symlinks.
    pub fn copy(&mut self, name: &str, src: &Path) -> anyhow::Result<()> {
        let data = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
        let mode = {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::metadata(src)
                .with_context(|| format!("stat {}", src.display()))?
                .permissions()
                .mode()
        };
        self.file(name, mode, &data)
    }

    /// Adds the directory `name` and its parents.
    pub fn dir(&mut self, name: &str) -> anyhow::Result<()> {
        self.parents(name)?;
        if self.dirs.insert(name.to_owned()) {
            self.entry(name, 0o040_755, &[])?;
        }
        Ok(())
    }

    /// Whether `name` was added already (as a file, link or directory).
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name) || self.dirs.contains(name)
    }

    /// Ends the archive and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0, 0);
        self.out
    }

    fn parents(&mut self, name: &str) -> anyhow::Result<()> {
        let Some(rel) = name.strip_prefix('/') else {
            bail!("initramfs path `{name}` is not absolute");
        };
        let parts: Vec<&str> = rel.split('/').collect();
        let mut path = String::new();
        for part in &parts[..parts.len().saturating_sub(1)] {
            path.push('/');
            path.push_str(part);
            if self.dirs.insert(path.clone()) {
                let p = path.clone();
                self.entry(&p, 0o040_755, &[])?;
            }
        }
        Ok(())
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> anyhow::Result<()> {
        if mode & 0o170_000 != 0o040_000 && !self.names.insert(name.to_owned()) {
            bail!("initramfs path `{name}` added twice");
        }
        let size = u32::try_from(data.len()).context("file larger than 4 GiB in initramfs")?;
        self.ino += 1;
        let ino = self.ino;
        // The archive stores names without the leading slash.
        self.header(name.trim_start_matches('/'), ino, mode, size);
        self.out.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn header(&mut self, name: &str, ino: u32, mode: u32, size: u32) {
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        let namesize = name.len() + 1;
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
        // rdevmajor, rdevminor, namesize, check
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            0,
            0,
            namesize as u32,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_terminated() {
        let mut a = Archive::default();
        a.file("/etc/x", 0o644, b"hello").unwrap();
        a.dir("/bin").unwrap();
        a.file("/bin/sh", 0o755, b"x").unwrap();
        assert!(a.contains("/etc"));
        assert!(a.file("/etc/x", 0o644, b"again").is_err());
        let out = a.finish();
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("070701"));
        assert!(text.contains("etc/x\0"));
        assert!(text.contains("TRAILER!!!\0"));
        // `/etc`, `/etc/x`, `/bin`, `/bin/sh`, trailer.
        assert_eq!(text.matches("070701").count(), 5);
    }
}
