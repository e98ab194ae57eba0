//! The executor's journal: every applied action is written down before it is
//! carried out and confirmed after, so a crash between the two is found and
//! resolved on the next start instead of being lost or applied twice.
//!
//! The journal is a JSON-lines file in vpm's state directory
//! (`/var/lib/vpm/state/journal.jsonl` by default), appended and `fsync`ed entry
//! by entry:
//!
//! ```text
//! {"seq":7,"time":1764025200.1,"phase":"intent","action":{"action":"set-vfs","pf":"0000:3b:00.0","count":4}}
//! {"seq":7,"time":1764025200.4,"phase":"done","action":{…},"state":{"num_vfs":4,…}}
//! ```
//!
//! `phase` is `intent` (about to act), `done` (acted; `state` is the read-back),
//! `failed` (`note` says why; `state` what the device was left in), or
//! `reconciled` (written on start for an intent without an outcome: `state` is
//! what `/sys` shows, and for an attach or detach what the VM's monitor says
//! in `in_vm`; `note` says whether the action had taken effect). An
//! interrupted action is never re-applied by the journal: the scheduler plans
//! again from the real state.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::action::{Action, VmRef};
use super::hotplug::{Hotplug, InVm};
use crate::hal::{Bdf, HalError, PciBackend, PowerControl, PowerState};

/// vpm's default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/vpm/state";

/// The journal file's name in the state directory.
pub const FILE_NAME: &str = "journal.jsonl";

/// A stage of one action's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// About to act.
    Intent,
    /// Acted and read back.
    Done,
    /// Failed; the device was left as `state` says.
    Failed,
    /// Resolved on start after a crash between intent and outcome.
    Reconciled,
}

/// What a device looked like when read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// `sriov_numvfs`, for a PF.
    pub num_vfs: Option<u32>,
    /// The bound driver.
    pub driver: Option<String>,
    /// `power/control`.
    pub power_control: Option<String>,
    /// `power_state`.
    pub power_state: Option<String>,
    /// The processes holding it through VFIO.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<u32>,
    /// What the VM's monitor says of the VF (an attach or detach reconciled
    /// on start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_vm: Option<InVm>,
}

impl DeviceState {
    /// Reads the state of `bdf` from sysfs.
    pub fn read(sys: &dyn PciBackend, bdf: Bdf) -> Result<Self, HalError> {
        let f = sys.function(bdf)?;
        Ok(Self {
            num_vfs: f.sriov.as_ref().map(|s| s.num_vfs),
            driver: f.driver.clone(),
            power_control: f.power_control.as_ref().map(|c| c.to_string()),
            power_state: f.power_state.as_ref().map(|s| s.to_string()),
            holders: sys.holders(&f)?.iter().map(|h| h.pid).collect(),
            in_vm: None,
        })
    }

    /// Who holds `vf`, said for a hot-plug action on `vm`.
    pub fn holder_text(&self, vm: &VmRef, vf: Bdf) -> String {
        if self.holders.contains(&vm.pid) {
            format!("{vf} is attached to {vm}: its process holds it")
        } else if self.holders.is_empty() {
            format!("{vf} is not attached to any VM (no VFIO holder)")
        } else {
            format!("{vf} is held by pid(s) {:?}", self.holders)
        }
    }

    /// Whether this state is what `action` sets out to reach (for a hot-plug
    /// action, by the VFIO holders and, when asked, the VM's monitor too).
    pub fn satisfies(&self, action: &Action) -> bool {
        match action {
            &Action::SetVfs { count, .. } => self.num_vfs == Some(count),
            Action::Park { .. } => {
                self.driver.as_deref() == Some(super::guard::VFIO_DRIVER)
                    && self.power_control.as_deref() == Some(PowerControl::Auto.as_str())
            }
            Action::Wake { .. } => {
                self.power_control.as_deref() == Some(PowerControl::On.as_str())
                    && self.power_state.as_deref() == Some(&PowerState::D0.to_string())
            }
            Action::Attach { vm, .. } => {
                self.holders.contains(&vm.pid)
                    && self.in_vm.as_ref().is_none_or(|v| v.device.is_some())
            }
            Action::Detach { vm, .. } => {
                !self.holders.contains(&vm.pid)
                    && self.in_vm.as_ref().is_none_or(|v| v.device.is_none())
            }
        }
    }
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Sequence number of the action (shared by its intent and outcome).
    pub seq: u64,
    /// Unix seconds.
    pub time: f64,
    /// The stage.
    pub phase: Phase,
    /// The action.
    pub action: Action,
    /// The device's state read back (outcomes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<DeviceState>,
    /// Why it failed (`failed`), or what reconciliation found (`reconciled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Journal errors.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The journal cannot be opened, read or written.
    #[error(
        "journal {path}: {source} (vpm keeps its journal in its state directory; check that it is writable, or pass --state-dir)"
    )]
    Io {
        /// The journal file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Another vpm process acts through this journal now.
    #[error(
        "another vpm process is acting through the journal {path} (`vpm run --apply`, or a \
         `vpm pci|vm --apply`): two actors on the same devices would race; wait for it, stop \
         it, or act through it"
    )]
    Busy {
        /// The journal file.
        path: PathBuf,
    },
    /// A line of the journal is not an entry.
    #[error(
        "journal {path}:{line}: not a journal entry ({message}); move the file aside to start a new journal"
    )]
    Corrupt {
        /// The journal file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
        /// The parser's message.
        message: String,
    },
}

/// The lock file beside the journal, held while a process acts through it.
pub const LOCK_NAME: &str = "journal.lock";

/// Past this many entries the journal is compacted to the newest
/// [`KEEP_ENTRIES`] (a long-running agent appends two per action).
pub const MAX_ENTRIES: usize = if cfg!(test) { 40 } else { 20_000 };

/// Entries a compaction keeps.
pub const KEEP_ENTRIES: usize = if cfg!(test) { 20 } else { 10_000 };

/// An open journal.
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Held (`flock`) while the journal is open: one actor at a time.
    _lock: File,
    next_seq: u64,
    /// Entries in the file.
    entries: usize,
    /// Compact once past this many entries.
    compact_at: usize,
}

/// An action found in the journal with an intent and no outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Interrupted {
    /// The intent.
    pub intent: Entry,
    /// What `/sys` shows now (`None`: the device is gone).
    pub state: Option<DeviceState>,
    /// Whether the action had taken effect.
    pub took_effect: bool,
    /// What reconciliation found, in words (also the journal's note).
    pub note: String,
}

impl Journal {
    /// Opens (creating) the journal in `state_dir` and reads its entries.
    /// The journal is locked (`flock` on [`LOCK_NAME`] beside it) while the
    /// [`Journal`] lives: one process acts at a time ([`JournalError::Busy`]
    /// for the second). A torn last line (a crash mid-append) is cut off, so
    /// the next entry starts on a line of its own.
    pub fn open(state_dir: &Path) -> Result<(Self, Vec<Entry>), JournalError> {
        let path = state_dir.join(FILE_NAME);
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(io)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(state_dir.join(LOCK_NAME))
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(JournalError::Busy { path: path.clone() });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        let Entries {
            entries,
            good_len,
            open_line,
        } = read_entries(&path)?;
        if file.metadata().map_err(io)?.len() > good_len {
            file.set_len(good_len).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        // A whole last entry whose newline was lost: end its line.
        if open_line {
            (&file).write_all(b"\n").map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        // The file's directory entry must survive a crash too.
        if let Ok(dir) = File::open(state_dir) {
            let _ = dir.sync_all();
        }
        let next_seq = entries.iter().map(|e| e.seq + 1).max().unwrap_or(0);
        let mut journal = Self {
            path,
            file,
            _lock: lock,
            next_seq,
            entries: entries.len(),
            compact_at: MAX_ENTRIES,
        };
        journal.compact_if_due();
        Ok((journal, entries))
    }

    /// Past [`MAX_ENTRIES`] (since the last compaction), rewrites the
    /// journal with its newest [`KEEP_ENTRIES`] and every intent still
    /// without an outcome (an outcome that could not be appended leaves
    /// one), through a temporary file and a rename, so a crash leaves the old
    /// journal or the new one. Best effort: a failure is logged, the journal
    /// goes on in the old file, and the next try waits another
    /// [`KEEP_ENTRIES`] entries.
    fn compact_if_due(&mut self) {
        if self.entries <= self.compact_at {
            return;
        }
        match self.compact() {
            Ok(kept) => {
                self.entries = kept;
                self.compact_at = MAX_ENTRIES;
            }
            Err(e) => {
                log::warn!("journal {}: compaction failed: {e}", self.path.display());
                self.compact_at = self.entries + KEEP_ENTRIES;
            }
        }
    }

    /// The compaction itself; returns the entries kept.
    fn compact(&mut self) -> Result<usize, JournalError> {
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        let entries = read_entries(&self.path)?.entries;
        let open: std::collections::HashSet<u64> =
            interrupted(&entries).iter().map(|e| e.seq).collect();
        let newest = entries.len().saturating_sub(KEEP_ENTRIES);
        let mut text = String::new();
        let mut kept = 0;
        for (i, e) in entries.iter().enumerate() {
            if i >= newest || (e.phase == Phase::Intent && open.contains(&e.seq)) {
                text.push_str(&serde_json::to_string(e).map_err(|e| io(std::io::Error::other(e)))?);
                text.push('\n');
                kept += 1;
            }
        }
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| FILE_NAME.to_owned());
        let tmp = self.path.with_file_name(format!(".{name}.tmp"));
        let written = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            // The handle the journal appends to next: opened before the
            // rename, so it is the new file's once the rename is done.
            let next = OpenOptions::new().append(true).open(&tmp)?;
            std::fs::rename(&tmp, &self.path)?;
            Ok(next)
        })();
        let next = match written {
            Ok(next) => next,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(io(e));
            }
        };
        self.file = next;
        if let Some(dir) = self.path.parent()
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(kept)
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `entry` and syncs it to disk.
    pub fn append(&mut self, entry: &Entry) -> Result<(), JournalError> {
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_string(entry).map_err(|e| io(std::io::Error::other(e)))?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.entries += 1;
        self.compact_if_due();
        Ok(())
    }

    /// Writes the intent of a new action and returns its sequence number.
    pub fn intent(&mut self, time: f64, action: Action) -> Result<u64, JournalError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.append(&Entry {
            seq,
            time,
            phase: Phase::Intent,
            action,
            state: None,
            note: None,
        })?;
        Ok(seq)
    }

    /// Finds intents without an outcome, compares them with `/sys` (and,
    /// for an attach or detach, with what the VM's monitor says through
    /// `vms`: its QOM tree and `query-pci`), and writes a `reconciled` entry
    /// for each. Nothing is re-applied.
    pub fn reconcile(
        &mut self,
        entries: &[Entry],
        sys: &dyn PciBackend,
        vms: Option<&dyn Hotplug>,
        time: f64,
    ) -> Result<Vec<Interrupted>, JournalError> {
        let mut found = Vec::new();
        for intent in interrupted(entries) {
            let vf = intent.action.target();
            let mut state = DeviceState::read(sys, vf).ok();
            let mut asked = None;
            if let (Some(vm), Some(hv), Some(s)) = (intent.action.vm(), vms, state.as_mut()) {
                match hv.in_vm(vm, vf) {
                    Ok(v) => s.in_vm = Some(v),
                    Err(e) => asked = Some(e),
                }
            }
            let took_effect = state.as_ref().is_some_and(|s| s.satisfies(&intent.action));
            let note = reconcile_note(&intent.action, state.as_ref(), took_effect, asked);
            self.append(&Entry {
                seq: intent.seq,
                time,
                phase: Phase::Reconciled,
                action: intent.action.clone(),
                state: state.clone(),
                note: Some(note.clone()),
            })?;
            found.push(Interrupted {
                intent,
                state,
                took_effect,
                note,
            });
        }
        Ok(found)
    }
}

/// What reconciling `action` found: whether it had taken effect and, for a
/// hot-plug action, what the holders and the VM's monitor say (`unasked`:
/// why the monitor could not be asked).
fn reconcile_note(
    action: &Action,
    state: Option<&DeviceState>,
    took_effect: bool,
    unasked: Option<String>,
) -> String {
    let Some(state) = state else {
        return "had not taken effect: the device is gone".to_owned();
    };
    let verdict = if took_effect {
        "had taken effect before the restart"
    } else {
        "had not taken effect; not re-applied"
    };
    // A resize is written 0 then N: stopped in between, the old VFs are gone
    // and the new ones were never made (the intent does not say whether it
    // was a resize or a creation from 0).
    if let (&Action::SetVfs { count, .. }, false, Some(0)) = (action, took_effect, state.num_vfs)
        && count != 0
    {
        return format!(
            "had not taken effect: sriov_numvfs reads 0, not {count} (if it was a resize, its \
             0 was written and the old VFs are gone); not re-applied, the next plan sizes the \
             pool again"
        );
    }
    let Some(vm) = action.vm() else {
        return verdict.to_owned();
    };
    let vf = action.target();
    let held = state.holder_text(vm, vf);
    let monitor = match (&state.in_vm, unasked) {
        (_, Some(why)) => format!("its monitor could not be asked ({why})"),
        (None, None) => "its monitor was not asked".to_owned(),
        (Some(v), None) => match &v.device {
            None => "its monitor does not list it".to_owned(),
            Some(id) => format!(
                "its monitor lists it as {id}{}, {} QEMU's PCI bus (query-pci)",
                v.port
                    .as_ref()
                    .map(|p| format!(" on port {p}"))
                    .unwrap_or_default(),
                if v.on_bus { "on" } else { "not yet on" }
            ),
        },
    };
    // Holders and monitor disagree: say so; vpm never touches a held VF and
    // plans again from what it finds.
    let listed = state.in_vm.as_ref().map(|v| v.device.is_some());
    let split = match (listed, state.holders.contains(&vm.pid), action) {
        (Some(false), true, Action::Detach { .. }) => {
            "; half done: the device is gone from the VM but QEMU still holds the VF (it lets \
             go once the unplug completes); vpm leaves a held VF alone"
        }
        (Some(false), true, _) => {
            "; half done: QEMU holds the VF without a device for it; vpm leaves a held VF alone"
        }
        (Some(true), false, _) => "; half done: QEMU has the device but does not hold the VF",
        _ => "",
    };
    format!("{verdict}: {held}, and {monitor}{split}")
}

/// The entries of the journal in `state_dir`, read without locking it (for
/// looking, not acting); none when there is no journal.
pub fn read(state_dir: &Path) -> Result<Vec<Entry>, JournalError> {
    read_entries(&state_dir.join(FILE_NAME)).map(|r| r.entries)
}

/// Intents in `entries` with no later outcome of the same sequence number.
pub fn interrupted(entries: &[Entry]) -> Vec<Entry> {
    let resolved: std::collections::HashSet<u64> = entries
        .iter()
        .filter(|e| e.phase != Phase::Intent)
        .map(|e| e.seq)
        .collect();
    entries
        .iter()
        .filter(|e| e.phase == Phase::Intent && !resolved.contains(&e.seq))
        .cloned()
        .collect()
}

/// What [`read_entries`] found.
#[derive(Default)]
struct Entries {
    entries: Vec<Entry>,
    /// Bytes of the lines the entries came from (a torn last line is not
    /// counted).
    good_len: u64,
    /// The last of those lines lacks its newline.
    open_line: bool,
}

/// The entries of the journal at `path`.
fn read_entries(path: &Path) -> Result<Entries, JournalError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Entries::default()),
        Err(source) => {
            return Err(JournalError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut bytes = Vec::new();
    BufReader::new(file)
        .read_to_end(&mut bytes)
        .map_err(|source| JournalError::Io {
            path: path.to_owned(),
            source,
        })?;
    let mut out = Vec::new();
    let mut good_len = 0u64;
    let mut at = 0usize;
    let mut line_no = 0usize;
    while at < bytes.len() {
        line_no += 1;
        let end = bytes[at..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(bytes.len(), |i| at + i + 1);
        let line = &bytes[at..end];
        let last = end == bytes.len();
        at = end;
        if line.iter().all(u8::is_ascii_whitespace) {
            good_len = end as u64;
            continue;
        }
        match serde_json::from_slice::<Entry>(line) {
            Ok(e) => {
                out.push(e);
                good_len = end as u64;
            }
            // A crash mid-append leaves a torn last line, without its
            // newline: that entry was never synced, so it is dropped (its
            // action, if any, is then found by the intent's absence or the
            // next read-back). A whole line that does not parse is corrupt.
            Err(_) if last && !line.ends_with(b"\n") => break,
            Err(e) => {
                return Err(JournalError::Corrupt {
                    path: path.to_owned(),
                    line: line_no,
                    message: e.to_string(),
                });
            }
        }
    }
    let open_line = good_len > 0 && bytes[good_len as usize - 1] != b'\n';
    Ok(Entries {
        entries: out,
        good_len,
        open_line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hal::Roots;
    use crate::hal::testtree::Tree;

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    /// The outcome `done` of action `seq`, without a read-back.
    fn done(seq: u64, time: f64, action: &Action) -> Entry {
        Entry {
            seq,
            time,
            phase: Phase::Done,
            action: action.clone(),
            state: None,
            note: None,
        }
    }

    fn wake(f: u8) -> Action {
        Action::Wake {
            bdf: Bdf::new(0, 1, 0, f).unwrap(),
        }
    }

    #[test]
    fn entries_survive_reopen_and_sequence_continues() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, entries) = Journal::open(dir.path()).unwrap();
        assert!(entries.is_empty());
        let a = Action::Wake {
            bdf: bdf("0000:01:00.1"),
        };
        let seq = j.intent(1.0, a.clone()).unwrap();
        j.append(&done(seq, 2.0, &a)).unwrap();
        drop(j);
        let (mut j, entries) = Journal::open(dir.path()).unwrap();
        assert_eq!(entries.len(), 2);
        assert!(interrupted(&entries).is_empty());
        assert_eq!(j.intent(3.0, a).unwrap(), seq + 1);
    }

    #[test]
    fn torn_last_line_is_dropped_but_corruption_inside_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.intent(
            1.0,
            Action::Wake {
                bdf: bdf("0000:01:00.1"),
            },
        )
        .unwrap();
        drop(j);
        let path = dir.path().join(FILE_NAME);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"seq\":1,\"ti");
        std::fs::write(&path, &text).unwrap();
        let (mut j, entries) = Journal::open(dir.path()).unwrap();
        assert_eq!(entries.len(), 1);
        // The torn line was cut off: the next entry starts a line of its
        // own, and the journal reads whole on the next start.
        j.intent(2.0, wake(2)).unwrap();
        drop(j);
        assert_eq!(read(dir.path()).unwrap().len(), 2);
        // A whole last entry that lost its newline gets one.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.trim_end()).unwrap();
        let (mut j, entries) = Journal::open(dir.path()).unwrap();
        assert_eq!(entries.len(), 2);
        j.intent(3.0, wake(3)).unwrap();
        drop(j);
        assert_eq!(read(dir.path()).unwrap().len(), 3);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("garbage\n{text}\n")).unwrap();
        let err = Journal::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains(":1:"), "{err}");
        // A whole last line that is no entry is corruption, not a tear: it
        // is reported, never cut off.
        std::fs::write(&path, format!("{text}{{\"seq\":99}}\n")).unwrap();
        let err = Journal::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains(":4:"), "{err}");
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .ends_with("{\"seq\":99}\n")
        );
    }

    #[test]
    fn a_long_journal_is_compacted_to_its_newest_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        let a = Action::Wake {
            bdf: bdf("0000:01:00.1"),
        };
        // An early intent whose outcome never came (an append that failed).
        let lost = j.intent(0.0, a.clone()).unwrap();
        // Then intents with outcomes, past the limit.
        for i in 0..MAX_ENTRIES / 2 {
            let seq = j.intent(i as f64, a.clone()).unwrap();
            j.append(&done(seq, i as f64, &a)).unwrap();
        }
        drop(j);
        let entries = read(dir.path()).unwrap();
        assert!(entries.len() <= KEEP_ENTRIES + 2, "{}", entries.len());
        assert_eq!(entries[0].seq, lost, "the unresolved intent is kept");
        assert_eq!(
            interrupted(&entries)
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            vec![lost]
        );
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        assert_eq!(j.intent(0.0, a).unwrap(), MAX_ENTRIES as u64 / 2 + 1);
    }

    #[test]
    fn one_process_acts_through_a_journal_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path()).unwrap();
        let err = Journal::open(dir.path()).err().unwrap();
        assert!(matches!(err, JournalError::Busy { .. }), "{err}");
        assert!(err.to_string().contains("another vpm process"), "{err}");
        // Looking needs no lock.
        assert!(read(dir.path()).unwrap().is_empty());
        drop(j);
        assert!(
            Journal::open(dir.path()).is_ok(),
            "released with the journal"
        );
    }

    #[test]
    fn reconcile_reads_sys_and_never_reapplies() {
        let tree = Tree::new();
        let pf = tree.add("0000:01:00.0");
        tree.sriov(pf, 4, 2);
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        // Crashed after the write took effect: sriov_numvfs reads 2.
        j.intent(1.0, Action::SetVfs { pf, count: 2 }).unwrap();
        // Crashed before: it still reads 2, not 4.
        j.intent(2.0, Action::SetVfs { pf, count: 4 }).unwrap();
        // Stopped between the 0 and the new count of a resize.
        let pf2 = tree.add("0000:05:00.0");
        tree.sriov(pf2, 4, 0);
        j.intent(2.5, Action::SetVfs { pf: pf2, count: 3 }).unwrap();
        // The device vanished.
        j.intent(
            3.0,
            Action::Wake {
                bdf: bdf("0000:02:00.0"),
            },
        )
        .unwrap();
        drop(j);
        let (mut j, entries) = Journal::open(dir.path()).unwrap();
        let roots = Roots {
            sys: tree.sysfs.clone(),
            proc: tree.dir.path().join("proc"),
            dev: tree.dir.path().join("dev"),
        };
        let found = j.reconcile(&entries, &roots, None, 10.0).unwrap();
        assert_eq!(found.len(), 4);
        assert!(found[0].took_effect);
        assert!(!found[1].took_effect);
        assert_eq!(found[1].state.as_ref().unwrap().num_vfs, Some(2));
        assert!(
            !found[2].took_effect && found[2].note.contains("sriov_numvfs reads 0, not 3"),
            "{}",
            found[2].note
        );
        assert!(found[3].state.is_none());
        assert_eq!(
            tree.read(pf, "sriov_numvfs").trim(),
            "2",
            "nothing re-applied"
        );
        // Reconciled once: a second start finds nothing.
        drop(j);
        let (mut j, entries) = Journal::open(dir.path()).unwrap();
        assert!(
            j.reconcile(&entries, &roots, None, 11.0)
                .unwrap()
                .is_empty()
        );
    }

    use crate::executor::{Attachment, HotplugError, VmFacts};

    /// A hypervisor whose monitor lists what `listed` says, or cannot be
    /// asked (`None`).
    struct FakeVm {
        listed: Option<Vec<(Bdf, bool)>>,
    }

    impl Hotplug for FakeVm {
        fn vm_facts(&self, _: &VmRef) -> VmFacts {
            unreachable!("reconcile asks in_vm only")
        }
        fn attach(&self, _: &VmRef, _: Bdf) -> Result<Attachment, HotplugError> {
            unreachable!("reconcile never acts")
        }
        fn detach(&self, _: &VmRef, _: Bdf) -> Result<(), HotplugError> {
            unreachable!("reconcile never acts")
        }
        fn in_vm(&self, _: &VmRef, vf: Bdf) -> Result<InVm, String> {
            let listed = self.listed.as_ref().ok_or("connection refused")?;
            Ok(match listed.iter().find(|(b, _)| *b == vf) {
                Some((_, on_bus)) => InVm {
                    device: Some(crate::connect::device_id(vf)),
                    port: Some("rp1".into()),
                    on_bus: *on_bus,
                },
                None => InVm {
                    device: None,
                    port: None,
                    on_bus: false,
                },
            })
        }
    }

    #[test]
    fn an_interrupted_attach_or_detach_is_judged_by_holders_and_the_monitor() {
        use crate::hal::HolderInfo;
        use crate::hal::sim::SimPci;
        let sim = SimPci::new();
        let pf = bdf("0000:01:00.0");
        sim.add_pf(pf, 4, Some("nvme"));
        sim.set_sriov_numvfs(pf, 4, std::time::Duration::from_secs(1))
            .unwrap();
        let vm = VmRef {
            name: "vm-a".into(),
            pid: 7,
        };
        let vf = |i: u8| Bdf::new(0, 1, 0, i).unwrap();
        for i in 1..=4 {
            sim.bind_driver(vf(i), "vfio-pci", std::time::Duration::from_secs(1))
                .unwrap();
        }
        let hold = |b: Bdf| {
            sim.open(
                b,
                HolderInfo {
                    pid: 7,
                    comm: "qemu".into(),
                    vm: Some("vm-a".into()),
                },
            )
            .unwrap()
        };
        // 1: attached for both holders and monitor; 2: held, not listed;
        // 3: listed, not held; 4: neither.
        hold(vf(1));
        hold(vf(2));
        let monitor = FakeVm {
            listed: Some(vec![(vf(1), true), (vf(3), false)]),
        };
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        for i in 1..=4 {
            let action = Action::Attach {
                vm: vm.clone(),
                vf: vf(i),
            };
            j.intent(f64::from(i), action).unwrap();
        }
        // And detaches: 4 (gone everywhere) and 1 (still there).
        for i in [4, 1] {
            let action = Action::Detach {
                vm: vm.clone(),
                vf: vf(i),
            };
            j.intent(5.0, action).unwrap();
        }
        drop(j);
        let (mut j, entries) = Journal::open(dir.path()).unwrap();
        let found = j.reconcile(&entries, &sim, Some(&monitor), 10.0).unwrap();
        let took: Vec<bool> = found.iter().map(|i| i.took_effect).collect();
        assert_eq!(took, vec![true, false, false, false, true, false]);
        assert!(
            found[0].note.contains("had taken effect")
                && found[0]
                    .note
                    .contains("0000:01:00.1 is attached to VM vm-a (pid 7): its process holds it")
                && found[0]
                    .note
                    .contains("lists it as vpm-0000-01-00-1 on port rp1, on QEMU's PCI bus"),
            "{}",
            found[0].note
        );
        assert!(
            found[1].note.contains("does not list it") && found[1].note.contains("half done"),
            "{}",
            found[1].note
        );
        assert!(
            found[2]
                .note
                .contains("not attached to any VM (no VFIO holder)")
                && found[2].note.contains("not yet on QEMU's PCI bus")
                && found[2].note.contains("half done"),
            "{}",
            found[2].note
        );
        assert!(
            found[3].note.starts_with("had not taken effect"),
            "{}",
            found[3].note
        );
        // The monitor's answer is journaled with the read-back.
        let listed = found[0].state.as_ref().unwrap().in_vm.as_ref().unwrap();
        assert_eq!(listed.device.as_deref(), Some("vpm-0000-01-00-1"));
        drop(j);
        let entries = read(dir.path()).unwrap();
        let rec = entries
            .iter()
            .rfind(|e| e.phase == Phase::Reconciled)
            .unwrap();
        assert!(rec.state.as_ref().unwrap().in_vm.is_some());

        // A monitor that cannot be asked: holders alone decide, and the note
        // says why the monitor was not heard.
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        let action = Action::Attach {
            vm: vm.clone(),
            vf: vf(1),
        };
        j.intent(20.0, action).unwrap();
        drop(j);
        let (mut j, entries) = Journal::open(dir.path()).unwrap();
        let found = j
            .reconcile(&entries, &sim, Some(&FakeVm { listed: None }), 21.0)
            .unwrap();
        assert_eq!(found.len(), 1);
        assert!(found[0].took_effect);
        assert!(
            found[0]
                .note
                .contains("its monitor could not be asked (connection refused)"),
            "{}",
            found[0].note
        );
    }
}
