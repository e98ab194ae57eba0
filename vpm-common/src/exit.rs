//! Pairing `kvm_exit` with the next `kvm_entry` on the same thread, and the
//! log2 histogram of the time in between (the exit-handling time).
//!
//! The eBPF programs call [`on_exit`] and [`on_entry`] with map-backed storage;
//! the unit tests call the same functions with an in-memory table on synthetic
//! event sequences. This is the only place the logic lives.

/// Number of histogram buckets. Bucket `b > 0` holds durations in
/// `[2^b, 2^(b+1))` ns, bucket 0 holds `[0, 2)` ns, and the last bucket is
/// open-ended (≥ 2^31 ns ≈ 2.1 s).
pub const HIST_BUCKETS: u32 = 32;

/// Bucket of a duration of `ns` nanoseconds: `floor(log2(ns))`, capped.
///
/// Written as a branchy binary search instead of `leading_zeros`, so the eBPF
/// program stays a short, loop-free sequence the verifier accepts on any kernel.
#[inline(always)]
pub const fn bucket_of(ns: u64) -> u32 {
    let mut v = ns;
    let mut b = 0u32;
    if v >= 1 << 32 {
        v >>= 32;
        b += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        b += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        b += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        b += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        b += 2;
    }
    if v >= 1 << 1 {
        b += 1;
    }
    if b >= HIST_BUCKETS {
        HIST_BUCKETS - 1
    } else {
        b
    }
}

/// Lower bound in nanoseconds of bucket `b` (inclusive).
pub const fn bucket_floor_ns(b: u32) -> u64 {
    if b == 0 { 0 } else { 1u64 << b }
}

/// Storage for the pending `kvm_exit` timestamps, keyed by thread id.
pub trait ExitStarts {
    /// Remember that thread `tid` exited at `ts` ns (replacing an older entry).
    fn record(&mut self, tid: u32, ts: u64);
    /// Remove and return the exit timestamp of thread `tid`, if one is pending.
    fn take(&mut self, tid: u32) -> Option<u64>;
}

/// Result of a `kvm_entry`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// The entry closed an exit that took `ns` nanoseconds, in `bucket`.
    Paired {
        /// Exit-handling time.
        ns: u64,
        /// Its histogram bucket.
        bucket: u32,
    },
    /// No exit was pending on this thread (tracing started mid-exit, the start
    /// slot was evicted, or the clock went backwards).
    Unpaired,
}

/// A `kvm_exit` on thread `tid` at `now` ns.
#[inline(always)]
pub fn on_exit<S: ExitStarts>(starts: &mut S, tid: u32, now: u64) {
    starts.record(tid, now);
}

/// A `kvm_entry` on thread `tid` at `now` ns.
#[inline(always)]
pub fn on_entry<S: ExitStarts>(starts: &mut S, tid: u32, now: u64) -> Entry {
    match starts.take(tid) {
        Some(start) if now >= start => {
            let ns = now - start;
            Entry::Paired {
                ns,
                bucket: bucket_of(ns),
            }
        }
        _ => Entry::Unpaired,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::collections::HashMap;
    use std::vec::Vec;

    use super::*;

    #[derive(Default)]
    struct Table(HashMap<u32, u64>);

    impl ExitStarts for Table {
        fn record(&mut self, tid: u32, ts: u64) {
            self.0.insert(tid, ts);
        }
        fn take(&mut self, tid: u32) -> Option<u64> {
            self.0.remove(&tid)
        }
    }

    #[test]
    fn buckets_are_floor_log2() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 0);
        assert_eq!(bucket_of(2), 1);
        assert_eq!(bucket_of(3), 1);
        assert_eq!(bucket_of(4), 2);
        assert_eq!(bucket_of(1023), 9);
        assert_eq!(bucket_of(1024), 10);
        assert_eq!(bucket_of((1 << 31) - 1), 30);
        assert_eq!(bucket_of(1 << 31), 31);
        assert_eq!(bucket_of(u64::MAX), HIST_BUCKETS - 1);
        for b in 1..HIST_BUCKETS {
            assert_eq!(bucket_of(bucket_floor_ns(b)), b);
            assert_eq!(bucket_of(bucket_floor_ns(b) - 1), b - 1);
        }
        for ns in [5u64, 77, 4096, 123_456, 9_999_999, 1 << 40] {
            let expected = (63 - ns.leading_zeros()).min(HIST_BUCKETS - 1);
            assert_eq!(bucket_of(ns), expected, "ns={ns}");
        }
    }

    #[test]
    fn interleaved_vcpu_threads_pair_per_thread() {
        // Two vCPU threads of one VM interleave exits and entries.
        let mut t = Table::default();
        on_exit(&mut t, 10, 1_000);
        on_exit(&mut t, 11, 1_100);
        assert_eq!(
            on_entry(&mut t, 11, 1_400),
            Entry::Paired { ns: 300, bucket: 8 }
        );
        assert_eq!(
            on_entry(&mut t, 10, 3_000),
            Entry::Paired {
                ns: 2_000,
                bucket: 10
            }
        );
        // Each exit pairs with one entry only.
        assert_eq!(on_entry(&mut t, 10, 3_500), Entry::Unpaired);
    }

    #[test]
    fn entry_without_exit_and_clock_going_back_are_unpaired() {
        let mut t = Table::default();
        assert_eq!(on_entry(&mut t, 7, 50), Entry::Unpaired);
        on_exit(&mut t, 7, 100);
        assert_eq!(on_entry(&mut t, 7, 99), Entry::Unpaired);
        // The stale start was consumed, not left behind.
        assert!(t.0.is_empty());
    }

    #[test]
    fn a_second_exit_replaces_a_lost_entry() {
        // An entry event was lost (e.g. tracing attached between the two):
        // the next exit restarts the clock instead of measuring across both.
        let mut t = Table::default();
        on_exit(&mut t, 3, 100);
        on_exit(&mut t, 3, 10_000);
        assert_eq!(
            on_entry(&mut t, 3, 10_016),
            Entry::Paired { ns: 16, bucket: 4 }
        );
    }

    #[test]
    fn synthetic_stream_fills_the_expected_histogram() {
        let mut t = Table::default();
        let mut hist = [0u64; HIST_BUCKETS as usize];
        let durations: Vec<u64> = (0..1000u64).map(|i| 500 + (i % 7) * 1_000).collect();
        let mut now = 0u64;
        for d in &durations {
            on_exit(&mut t, 1, now);
            now += d;
            if let Entry::Paired { bucket, .. } = on_entry(&mut t, 1, now) {
                hist[bucket as usize] += 1;
            }
            now += 10;
        }
        let mut expected = [0u64; HIST_BUCKETS as usize];
        for d in &durations {
            expected[(63 - d.leading_zeros()) as usize] += 1;
        }
        assert_eq!(hist, expected);
        assert_eq!(hist.iter().sum::<u64>(), 1000);
    }
}
