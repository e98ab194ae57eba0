//! Cumulative map contents and the differences between two reads (pure).
//!
//! The eBPF maps hold cumulative per-CPU counters. Each tick the agent sums the
//! CPUs into a [`Snapshot`] and subtracts the previous one. Entries disappear
//! when the agent prunes an exited process, and reappear from zero if a pid is
//! reused, so a counter that went down is treated as restarted.

use std::collections::BTreeMap;

use vpm_common::{CacheSlot, Counter, CounterKey, EventKind, HistKey, exit::HIST_BUCKETS};

/// Summed contents of the counter and histogram maps at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Per (tgid, kind, device) totals.
    pub counters: BTreeMap<CounterKey, Counter>,
    /// Per (tgid, bucket) exit-handling-time counts.
    pub hist: BTreeMap<HistKey, u64>,
}

/// Events of one kind on one device during a tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceDelta {
    /// What was counted.
    pub kind: EventKind,
    /// The device key (port, page, MSI address, GSI, exit reason).
    pub device: u64,
    /// Events and bytes in the tick.
    pub delta: Counter,
}

/// What one process did during a tick.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessDelta {
    /// Per-device deltas, only non-zero ones, in key order.
    pub devices: Vec<DeviceDelta>,
    /// Exit-handling-time histogram delta (bucket → count).
    pub exit_hist: [u64; HIST_BUCKETS as usize],
}

impl ProcessDelta {
    /// Total events of `kind` in the tick.
    pub fn total(&self, kind: EventKind) -> Counter {
        self.devices
            .iter()
            .filter(|d| d.kind == kind)
            .fold(Counter::default(), |acc, d| Counter {
                count: acc.count + d.delta.count,
                bytes: acc.bytes + d.delta.bytes,
            })
    }
}

/// Pruned processes a [`PruneLog`] remembers at most; past it, the oldest
/// are forgotten and slots loaded before them are no longer trusted.
const PRUNED_KEPT: usize = 65_536;

/// When the agent last pruned each process (the generation its bump made).
/// A cache slot loaded in an older generation still holds its CPU's exact
/// totals unless its key's process was pruned since (its entry is gone, or
/// belongs to a new process that reused the pid): [`valid`](Self::valid)
/// says which. Distrusting every older slot instead lost counts: a CPU that
/// sees no more events of that kind keeps its slot unwritten, and the stale
/// hash value stood in for it after any VM's exit. Entries no slot can be
/// older than are dropped ([`forget_before`](Self::forget_before)).
#[derive(Clone, Debug, Default)]
pub struct PruneLog {
    /// tgid → the generation its pruning made.
    pruned: BTreeMap<u32, u64>,
    /// Slots loaded before this generation are not trusted (entries older
    /// than it were dropped to bound the log).
    floor: u64,
}

impl PruneLog {
    /// Records that `tgids` were pruned and the generation became `generation`.
    pub fn record(&mut self, generation: u64, tgids: &[u32]) {
        for &t in tgids {
            self.pruned.insert(t, generation);
        }
        if self.pruned.len() > PRUNED_KEPT {
            // Forget the older half; slots loaded before it lose trust.
            let mut gens: Vec<u64> = self.pruned.values().copied().collect();
            gens.sort_unstable();
            let cut = gens[gens.len() / 2];
            self.pruned.retain(|_, g| *g > cut);
            self.floor = self.floor.max(cut);
        }
    }

    /// Drops what no slot needs: entries at or below `oldest`, the oldest
    /// generation of any slot that holds a key.
    pub fn forget_before(&mut self, oldest: u64) {
        self.pruned.retain(|_, g| *g > oldest);
    }

    /// Whether a slot loaded in `loaded` with a key of `tgid` is valid in
    /// generation `current`: the same generation, or `tgid` was not pruned
    /// after it was loaded.
    pub fn valid(&self, loaded: u64, tgid: u32, current: u64) -> bool {
        loaded == current
            || (loaded < current
                && loaded >= self.floor
                && self.pruned.get(&tgid).is_none_or(|&g| g <= loaded))
    }

    /// Processes remembered.
    pub fn len(&self) -> usize {
        self.pruned.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.pruned.is_empty()
    }
}

/// The slots (`[kind][cpu]`) that may be merged: read before and after the
/// hash with the same even `seq` (not rewritten meanwhile) and loaded in the
/// current `generation`, or in an older one whose key's process was not
/// pruned since (`prunes`); any other slot is replaced by an empty one.
pub fn trusted_slots(
    first: &[Vec<CacheSlot>],
    second: &[Vec<CacheSlot>],
    generation: u64,
    prunes: &PruneLog,
) -> Vec<Vec<CacheSlot>> {
    first
        .iter()
        .zip(second)
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(x, y)| {
                    if x.seq % 2 == 0
                        && x.seq == y.seq
                        && prunes.valid(x.generation, x.key.tgid, generation)
                    {
                        *x
                    } else {
                        CacheSlot::default()
                    }
                })
                .collect()
        })
        .collect()
}

/// This key's total over CPUs: per CPU, the hash's value, or the CPU's cache
/// slot when it holds the same key (it is then at least the hash's value).
///
/// `slots[cpu]` is that CPU's slot for `key`'s kind, read *before* the hash
/// (see [`CacheSlot`] for why that order keeps totals monotonic).
pub fn merge_cpus(key: &CounterKey, hash_per_cpu: &[Counter], slots: &[CacheSlot]) -> Counter {
    let mut total = Counter::default();
    for (cpu, from_hash) in hash_per_cpu.iter().enumerate() {
        let v = match slots.get(cpu) {
            Some(slot)
                if slot.cached_key().as_ref() == Some(key)
                    && slot.value.count >= from_hash.count =>
            {
                slot.value
            }
            _ => *from_hash,
        };
        total.count += v.count;
        total.bytes += v.bytes;
    }
    total
}

fn sub(cur: u64, prev: u64) -> u64 {
    // Keys are only removed by the agent, which removes them from `prev` too, so
    // a key in both never restarts; a lower reading is a transiently stale view
    // (an untrusted cache slot) and counts nothing until it passes `prev` again.
    cur.saturating_sub(prev)
}

/// Differences from `prev` to `cur`, grouped by tgid. Keys only in `prev` (pruned)
/// contribute nothing; keys only in `cur` count from zero.
pub fn diff(prev: &Snapshot, cur: &Snapshot) -> BTreeMap<u32, ProcessDelta> {
    let mut out: BTreeMap<u32, ProcessDelta> = BTreeMap::new();
    for (key, now) in &cur.counters {
        let before = prev.counters.get(key).copied().unwrap_or_default();
        let delta = Counter {
            count: sub(now.count, before.count),
            bytes: sub(now.bytes, before.bytes),
        };
        let Some(kind) = EventKind::from_u32(key.kind) else {
            continue;
        };
        if delta.count == 0 && delta.bytes == 0 {
            continue;
        }
        out.entry(key.tgid).or_default().devices.push(DeviceDelta {
            kind,
            device: key.device,
            delta,
        });
    }
    for (key, now) in &cur.hist {
        let before = prev.hist.get(key).copied().unwrap_or(0);
        let d = sub(*now, before);
        if d == 0 || key.bucket >= HIST_BUCKETS {
            continue;
        }
        out.entry(key.tgid).or_default().exit_hist[key.bucket as usize] += d;
    }
    out
}

impl Snapshot {
    /// Distinct tgids present in the maps.
    pub fn tgids(&self) -> Vec<u32> {
        let mut t: Vec<u32> = self
            .counters
            .keys()
            .map(|k| k.tgid)
            .chain(self.hist.keys().map(|k| k.tgid))
            .collect();
        t.sort_unstable();
        t.dedup();
        t
    }

    /// Raises every counter to at least `newer`'s value (the high-water marks the
    /// next [`diff`] subtracts), and adds keys only `newer` has.
    pub fn advance_to(&mut self, newer: &Snapshot) {
        for (k, v) in &newer.counters {
            let e = self.counters.entry(*k).or_default();
            e.count = e.count.max(v.count);
            e.bytes = e.bytes.max(v.bytes);
        }
        for (k, v) in &newer.hist {
            let e = self.hist.entry(*k).or_default();
            *e = (*e).max(*v);
        }
    }

    /// Drops every entry of `tgid` (after the agent removed them from the maps).
    pub fn forget(&mut self, tgid: u32) {
        self.counters.retain(|k, _| k.tgid != tgid);
        self.hist.retain(|k, _| k.tgid != tgid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tgid: u32, kind: EventKind, device: u64) -> CounterKey {
        CounterKey {
            tgid,
            kind: kind as u32,
            device,
        }
    }

    fn snap(entries: &[(CounterKey, u64, u64)]) -> Snapshot {
        Snapshot {
            counters: entries
                .iter()
                .map(|(k, c, b)| {
                    (
                        *k,
                        Counter {
                            count: *c,
                            bytes: *b,
                        },
                    )
                })
                .collect(),
            hist: BTreeMap::new(),
        }
    }

    #[test]
    fn deltas_are_grouped_per_process_and_zero_ones_dropped() {
        let a = key(100, EventKind::Pio, 0x3f8);
        let b = key(100, EventKind::Mmio, 0xfe00_0000);
        let c = key(200, EventKind::Pio, 0x70);
        let prev = snap(&[(a, 10, 10), (b, 5, 20), (c, 1, 1)]);
        let cur = snap(&[(a, 15, 15), (b, 5, 20), (c, 4, 4)]);
        let d = diff(&prev, &cur);
        assert_eq!(d.len(), 2);
        assert_eq!(d[&100].devices.len(), 1);
        assert_eq!(
            d[&100].total(EventKind::Pio),
            Counter { count: 5, bytes: 5 }
        );
        assert_eq!(d[&100].total(EventKind::Mmio), Counter::default());
        assert_eq!(d[&200].total(EventKind::Pio).count, 3);
    }

    #[test]
    fn new_keys_count_from_zero_and_pruned_keys_count_nothing() {
        let a = key(1, EventKind::Pio, 1);
        let b = key(2, EventKind::Pio, 1);
        let prev = snap(&[(a, 7, 7)]);
        let cur = snap(&[(b, 3, 6)]);
        let d = diff(&prev, &cur);
        assert!(!d.contains_key(&1));
        assert_eq!(d[&2].total(EventKind::Pio), Counter { count: 3, bytes: 6 });
    }

    #[test]
    fn a_stale_lower_reading_counts_nothing_and_is_never_counted_twice() {
        let a = key(9, EventKind::Msi, 0xfee0_0000);
        let mut prev = snap(&[(a, 100, 0)]);
        // A transiently lower reading (an untrusted slot): nothing.
        let low = snap(&[(a, 60, 0)]);
        assert!(diff(&prev, &low).is_empty());
        prev.advance_to(&low);
        // The written-back total comes back: only what is above 100 counts.
        let back = snap(&[(a, 130, 0)]);
        assert_eq!(diff(&prev, &back)[&9].total(EventKind::Msi).count, 30);
    }

    #[test]
    fn only_consistent_current_slots_are_trusted() {
        let k = key(1, EventKind::Pio, 0x80);
        let good = CacheSlot {
            seq: 4,
            generation: 2,
            ..slot(k, 10)
        };
        let rewriting = CacheSlot {
            seq: 5,
            generation: 2,
            ..slot(k, 10)
        };
        let old_gen = CacheSlot {
            seq: 4,
            generation: 1,
            ..slot(k, 10)
        };
        let first = vec![vec![good, rewriting, old_gen, good]];
        let second = vec![vec![good, rewriting, old_gen, CacheSlot { seq: 6, ..good }]];
        // Generation 2 came from pruning the slot's own process.
        let mut prunes = PruneLog::default();
        prunes.record(2, &[k.tgid]);
        let t = trusted_slots(&first, &second, 2, &prunes);
        assert_eq!(t[0][0], good);
        for (cpu, slot) in t[0].iter().enumerate().skip(1) {
            assert_eq!(*slot, CacheSlot::default(), "cpu {cpu}");
        }
        // Another process's exit made generation 2: the older slot still
        // holds its CPU's exact totals (distrusting it lost counts).
        let mut other = PruneLog::default();
        other.record(2, &[k.tgid + 1]);
        let t = trusted_slots(&first, &second, 2, &other);
        assert_eq!(t[0][2], old_gen);
        // Below the log's floor (it forgot that far back): not trusted.
        let forgot = PruneLog {
            floor: 2,
            ..PruneLog::default()
        };
        let t = trusted_slots(&first, &second, 2, &forgot);
        assert_eq!(t[0][2], CacheSlot::default());
    }

    #[test]
    fn the_prune_log_distrusts_only_slots_of_processes_pruned_since() {
        let mut log = PruneLog::default();
        log.record(1, &[10]);
        log.record(2, &[]);
        log.record(3, &[20, 30]);
        assert!(log.valid(3, 20, 3), "same generation");
        assert!(log.valid(0, 40, 3));
        assert!(!log.valid(0, 10, 3), "pruned at 1");
        assert!(
            log.valid(1, 10, 3),
            "loaded after its pruning (a new process)"
        );
        assert!(!log.valid(2, 30, 3));
        assert!(!log.valid(4, 40, 3), "from the future");
        // However many other processes come and go, an old slot of a live
        // one stays trusted.
        for g in 4..10_000u64 {
            log.record(g, &[u32::try_from(g).unwrap() + 1000]);
        }
        assert!(log.valid(0, 40, 9_999));
        // What no slot is older than is forgotten; the rest stays.
        log.forget_before(5_000);
        assert!(log.len() < 5_000);
        assert!(!log.valid(4_000, 9_000, 9_999), "pruned at 8000");
        // Past the bound, the older half goes and older slots lose trust.
        for g in 10_000..10_000 + PRUNED_KEPT as u64 {
            log.record(g, &[u32::try_from(g).unwrap() + 100_000]);
        }
        assert!(log.len() <= PRUNED_KEPT);
        assert!(!log.valid(0, 40, 10_000 + PRUNED_KEPT as u64));
    }

    #[test]
    fn histogram_deltas_land_in_their_bucket() {
        let mut prev = Snapshot::default();
        let mut cur = Snapshot::default();
        prev.hist.insert(
            HistKey {
                tgid: 5,
                bucket: 10,
            },
            3,
        );
        cur.hist.insert(
            HistKey {
                tgid: 5,
                bucket: 10,
            },
            8,
        );
        cur.hist.insert(
            HistKey {
                tgid: 5,
                bucket: 12,
            },
            2,
        );
        let d = diff(&prev, &cur);
        assert_eq!(d[&5].exit_hist[10], 5);
        assert_eq!(d[&5].exit_hist[12], 2);
        assert_eq!(d[&5].exit_hist.iter().sum::<u64>(), 7);
    }

    fn slot(key: CounterKey, count: u64) -> CacheSlot {
        CacheSlot {
            key: CounterKey {
                kind: key.kind + 1,
                ..key
            },
            value: Counter {
                count,
                bytes: count * 2,
            },
            seq: 0,
            generation: 0,
        }
    }

    #[test]
    fn cached_slots_override_their_cpu_only() {
        let k = key(7, EventKind::Pio, 0x3f8);
        let other = key(8, EventKind::Pio, 0x3f8);
        let hash = [
            Counter {
                count: 10,
                bytes: 20,
            },
            Counter {
                count: 5,
                bytes: 10,
            },
        ];
        // CPU 0 caches this key with more events; CPU 1 caches another process.
        let slots = [slot(k, 25), slot(other, 1000)];
        assert_eq!(
            merge_cpus(&k, &hash, &slots),
            Counter {
                count: 30,
                bytes: 60
            }
        );
        // No slots at all: the hash alone.
        assert_eq!(
            merge_cpus(&k, &hash, &[]),
            Counter {
                count: 15,
                bytes: 30
            }
        );
        // An empty slot (kind 0) never matches.
        assert_eq!(
            merge_cpus(&k, &hash, &[CacheSlot::default(), CacheSlot::default()]).count,
            15
        );
    }

    #[test]
    fn a_slot_behind_the_hash_is_ignored() {
        // A stale slot (written back, then the key was counted elsewhere) never lowers a total.
        let k = key(7, EventKind::Mmio, 0x1000);
        let hash = [Counter {
            count: 50,
            bytes: 50,
        }];
        assert_eq!(merge_cpus(&k, &hash, &[slot(k, 40)]).count, 50);
    }

    #[test]
    fn forget_removes_one_process() {
        let mut s = snap(&[
            (key(1, EventKind::Pio, 1), 1, 1),
            (key(2, EventKind::Pio, 1), 1, 1),
        ]);
        s.forget(1);
        assert_eq!(s.tgids(), vec![2]);
    }
}
