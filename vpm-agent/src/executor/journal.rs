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
//! `failed` (`error` says why; `state` what the device was left in), or
//! `reconciled` (written on start for an intent without an outcome: `state` is
//! what `/sys` shows and `outcome` whether the action had taken effect). An
//! interrupted action is never re-applied by the journal: the scheduler plans
//! again from the real state.

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::action::Action;
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
        })
    }

    /// Whether this state is what `action` sets out to reach.
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
            Action::Attach { vm, .. } => self.holders.contains(&vm.pid),
            Action::Detach { vm, .. } => !self.holders.contains(&vm.pid),
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

/// An open journal.
pub struct Journal {
    path: PathBuf,
    file: File,
    next_seq: u64,
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
}

impl Journal {
    /// Opens (creating) the journal in `state_dir` and reads its entries.
    pub fn open(state_dir: &Path) -> Result<(Self, Vec<Entry>), JournalError> {
        let path = state_dir.join(FILE_NAME);
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(io)?;
        let entries = read_entries(&path)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        // The file's directory entry must survive a crash too.
        if let Ok(dir) = File::open(state_dir) {
            let _ = dir.sync_all();
        }
        let next_seq = entries.iter().map(|e| e.seq + 1).max().unwrap_or(0);
        Ok((
            Self {
                path,
                file,
                next_seq,
            },
            entries,
        ))
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
        self.file.sync_data().map_err(io)
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

    /// Finds intents without an outcome, compares them with `/sys`, and writes
    /// a `reconciled` entry for each. Nothing is re-applied.
    pub fn reconcile(
        &mut self,
        entries: &[Entry],
        sys: &dyn PciBackend,
        time: f64,
    ) -> Result<Vec<Interrupted>, JournalError> {
        let mut found = Vec::new();
        for intent in interrupted(entries) {
            let state = DeviceState::read(sys, intent.action.target()).ok();
            let took_effect = state.as_ref().is_some_and(|s| s.satisfies(&intent.action));
            let note = match (&state, took_effect) {
                (None, _) => "device gone".to_owned(),
                (Some(_), true) => "had taken effect before the restart".to_owned(),
                (Some(_), false) => "had not taken effect; not re-applied".to_owned(),
            };
            self.append(&Entry {
                seq: intent.seq,
                time,
                phase: Phase::Reconciled,
                action: intent.action.clone(),
                state: state.clone(),
                note: Some(note),
            })?;
            found.push(Interrupted {
                intent,
                state,
                took_effect,
            });
        }
        Ok(found)
    }
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

fn read_entries(path: &Path) -> Result<Vec<Entry>, JournalError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(JournalError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(|source| JournalError::Io {
            path: path.to_owned(),
            source,
        })?;
    let last = lines.len();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Entry>(line) {
            Ok(e) => out.push(e),
            // A crash mid-append leaves a torn last line: that entry was never
            // synced, so it is dropped (its action, if any, is then found by
            // the intent's absence or the next read-back).
            Err(_) if i + 1 == last => break,
            Err(e) => {
                return Err(JournalError::Corrupt {
                    path: path.to_owned(),
                    line: i + 1,
                    message: e.to_string(),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hal::Roots;
    use crate::hal::testtree::Tree;

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
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
        j.append(&Entry {
            seq,
            time: 2.0,
            phase: Phase::Done,
            action: a.clone(),
            state: None,
            note: None,
        })
        .unwrap();
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
        let (_, entries) = Journal::open(dir.path()).unwrap();
        assert_eq!(entries.len(), 1);
        std::fs::write(&path, format!("garbage\n{text}\n")).unwrap();
        let err = Journal::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains(":1:"), "{err}");
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
        let found = j.reconcile(&entries, &roots, 10.0).unwrap();
        assert_eq!(found.len(), 3);
        assert!(found[0].took_effect);
        assert!(!found[1].took_effect);
        assert_eq!(found[1].state.as_ref().unwrap().num_vfs, Some(2));
        assert!(found[2].state.is_none());
        assert_eq!(
            tree.read(pf, "sriov_numvfs").trim(),
            "2",
            "nothing re-applied"
        );
        // Reconciled once: a second start finds nothing.
        drop(j);
        let (mut j, entries) = Journal::open(dir.path()).unwrap();
        assert!(j.reconcile(&entries, &roots, 11.0).unwrap().is_empty());
    }
}
