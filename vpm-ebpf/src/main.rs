//! vpm's eBPF programs.
//!
//! This file holds the KVM programs and the counting machinery; [`pci`] holds
//! the VFIO/PCI programs.
//!
//! Every KVM tracepoint vpm uses has two entry points with one body: a BTF
//! tracepoint (`tp_btf`, the cheapest: ≈ 100 ns per event on the dev hosts) and a
//! raw tracepoint (`raw_tp`) for kernels where `tp_btf` cannot attach. Both see
//! the tracepoint's arguments (its `TP_PROTO`) as an array of `u64`, so one
//! handler serves both. Events are counted in per-CPU hash maps keyed by
//! (VM process, kind, device); nothing is sent per event.
#![no_std]
#![no_main]

mod pci;

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    helpers::{bpf_get_current_pid_tgid, generated::bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use aya_log_ebpf::warn;
use vpm_common::{
    CACHED_KIND_COUNT, CacheSlot, Counter, CounterKey, EventKind, HistKey,
    KVM_TRACE_MMIO_READ_UNSATISFIED, MAX_COUNTER_ENTRIES, MAX_EXIT_START_ENTRIES, MAX_HIST_ENTRIES,
    MMIO_PAGE_MASK, STAT_COUNT, Stat,
    exit::{self, Entry, ExitStarts},
};

#[map(name = "VPM_COUNTERS")]
static COUNTERS: PerCpuHashMap<CounterKey, Counter> =
    PerCpuHashMap::with_max_entries(MAX_COUNTER_ENTRIES, 0);

#[map(name = "VPM_CACHE")]
static CACHE: PerCpuArray<CacheSlot> = PerCpuArray::with_max_entries(CACHED_KIND_COUNT, 0);

#[map(name = "VPM_GENERATION")]
static GENERATION: Array<u64> = Array::with_max_entries(1, 0);

#[map(name = "VPM_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[map(name = "VPM_EXIT_START")]
static EXIT_START: LruHashMap<u32, u64> = LruHashMap::with_max_entries(MAX_EXIT_START_ENTRIES, 0);

#[map(name = "VPM_EXIT_HIST")]
static EXIT_HIST: PerCpuHashMap<HistKey, u64> =
    PerCpuHashMap::with_max_entries(MAX_HIST_ENTRIES, 0);

/// `EEXIST` from `bpf_map_update_elem` with `BPF_NOEXIST` (errno 17).
const EEXIST: i32 = 17;

/// The traced function's or tracepoint's arguments, whichever way the program
/// was attached.
pub(crate) trait Args {
    fn arg(&self, n: usize) -> u64;
}

impl Args for BtfTracePointContext {
    #[inline(always)]
    fn arg(&self, n: usize) -> u64 {
        BtfTracePointContext::arg(self, n)
    }
}

impl Args for RawTracePointContext {
    #[inline(always)]
    fn arg(&self, n: usize) -> u64 {
        RawTracePointContext::arg(self, n)
    }
}

#[inline(always)]
pub(crate) fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

#[inline(always)]
fn current_tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// Increments `STATS[stat]` and returns the new value (0 if the slot is missing).
#[inline(always)]
pub(crate) fn bump_stat(stat: Stat) -> u64 {
    match STATS.get_ptr_mut(stat as u32) {
        Some(slot) => {
            // SAFETY: a per-CPU array slot; tracing programs run with migration
            // disabled, so nothing else writes this CPU's slot meanwhile.
            unsafe {
                *slot += 1;
                *slot
            }
        }
        None => 0,
    }
}

/// Adds one event of `kind` on `device`, moving `bytes`, to the current process.
///
/// The hot path is one per-CPU array access: the slot of `kind` on this CPU
/// already holds this key (see [`CacheSlot`] for the protocol with the agent).
#[inline(always)]
fn count<C: aya_ebpf::EbpfContext>(ctx: &C, kind: EventKind, device: u64, bytes: u64) {
    let tgid = current_tgid();
    let Some(slot) = CACHE.get_ptr_mut(kind as u32) else {
        return;
    };
    // SAFETY: this CPU's slot of a per-CPU array, valid for the program's run;
    // tracing programs run with migration disabled and one program handles one
    // kind, so nothing else writes this slot meanwhile.
    let slot = unsafe { &mut *slot };
    let tag = kind as u32 + 1;
    let generation = GENERATION.get(0).copied().unwrap_or(0);
    if slot.key.kind == tag
        && slot.key.tgid == tgid
        && slot.key.device == device
        && slot.generation == generation
    {
        slot.value.count += 1;
        slot.value.bytes += bytes;
        return;
    }
    // Miss: rewrite the slot between two increments of `seq` (see `CacheSlot`).
    // Volatile stores keep the compiler from moving the field writes across them.
    let seq = slot.seq;
    // SAFETY: `slot` is a valid, exclusive reference (see above).
    unsafe { core::ptr::write_volatile(&mut slot.seq, seq | 1) };
    // Write the old key's totals back, if the agent has not removed it.
    if let Some(old) = slot.cached_key() {
        let _ = COUNTERS.insert(&old, &slot.value, BPF_EXIST.into());
    }
    let key = CounterKey {
        tgid,
        kind: kind as u32,
        device,
    };
    let loaded = load_or_create(&key);
    let (new_key, new_value) = match loaded {
        Some(base) => (
            CounterKey { kind: tag, ..key },
            Counter {
                count: base.count + 1,
                bytes: base.bytes + bytes,
            },
        ),
        None => (CounterKey::default(), Counter::default()),
    };
    // SAFETY: as above; volatile so these stores stay between the two `seq` stores.
    unsafe {
        core::ptr::write_volatile(&mut slot.key, new_key);
        core::ptr::write_volatile(&mut slot.value, new_value);
        core::ptr::write_volatile(&mut slot.generation, generation);
        core::ptr::write_volatile(&mut slot.seq, (seq | 1) + 1);
    }
    if loaded.is_none() {
        let full = bump_stat(Stat::CounterMapFull);
        // Log rarely: the 1st, 2nd, 4th, 8th, … drop on this CPU.
        if full & (full.wrapping_sub(1)) == 0 {
            warn!(
                ctx,
                "VPM_COUNTERS is full: {} events dropped on this CPU", full
            );
        }
    }
}

/// Adds one event of `kind` on `device`, moving `bytes`, to process `tgid`,
/// straight into `VPM_COUNTERS` (no cache slot: for the VFIO/PCI kinds, which
/// are rare and may nest, see [`vpm_common::CACHED_KIND_COUNT`]).
#[inline(always)]
pub(crate) fn count_direct(tgid: u32, kind: EventKind, device: u64, bytes: u64) {
    let key = CounterKey {
        tgid,
        kind: kind as u32,
        device,
    };
    for _ in 0..2 {
        if let Some(value) = COUNTERS.get_ptr_mut(&key) {
            // SAFETY: this CPU's value of a per-CPU map entry, valid for the
            // run; tracing programs run with migration disabled.
            unsafe {
                (*value).count += 1;
                (*value).bytes += bytes;
            }
            return;
        }
        let first = Counter { count: 1, bytes };
        match COUNTERS.insert(&key, &first, BPF_NOEXIST.into()) {
            Ok(()) => return,
            // Another CPU created it first; add to it.
            Err(e) if e == -EEXIST => continue,
            Err(_) => break,
        }
    }
    bump_stat(Stat::CounterMapFull);
}

/// This CPU's totals of `key` in `VPM_COUNTERS`, creating the entry (zero) if
/// it is new. `None` if the map is full.
#[inline(always)]
fn load_or_create(key: &CounterKey) -> Option<Counter> {
    for _ in 0..2 {
        if let Some(value) = COUNTERS.get_ptr(key) {
            // SAFETY: this CPU's value of a per-CPU map entry, valid for the run.
            return Some(unsafe { *value });
        }
        match COUNTERS.insert(key, &Counter::default(), BPF_NOEXIST.into()) {
            Ok(()) => return Some(Counter::default()),
            // Another CPU created it first; read it again.
            Err(e) if e == -EEXIST => continue,
            Err(_) => return None,
        }
    }
    None
}

// kvm_pio(int rw, unsigned int port, unsigned int size, unsigned int count, const void *data)
#[inline(always)]
fn on_pio<C: Args + aya_ebpf::EbpfContext>(ctx: &C) -> u32 {
    let port = ctx.arg(1) & 0xffff;
    let size = ctx.arg(2) & 0xffff_ffff;
    let reps = ctx.arg(3) & 0xffff_ffff;
    count(ctx, EventKind::Pio, port, size.wrapping_mul(reps));
    0
}

// kvm_mmio(int type, int len, u64 gpa, void *val)
#[inline(always)]
fn on_mmio<C: Args + aya_ebpf::EbpfContext>(ctx: &C) -> u32 {
    let ty = ctx.arg(0) as u32;
    if ty == KVM_TRACE_MMIO_READ_UNSATISFIED {
        return 0;
    }
    let len = ctx.arg(1) & 0xffff_ffff;
    let gpa = ctx.arg(2);
    count(ctx, EventKind::Mmio, gpa & MMIO_PAGE_MASK, len);
    0
}

// kvm_userspace_exit(__u32 reason, int errno)
#[inline(always)]
fn on_userspace_exit<C: Args + aya_ebpf::EbpfContext>(ctx: &C) -> u32 {
    let reason = ctx.arg(0) & 0xffff_ffff;
    count(ctx, EventKind::UserspaceExit, reason, 0);
    0
}

// kvm_msi_set_irq(__u64 address, __u64 data)
#[inline(always)]
fn on_msi<C: Args + aya_ebpf::EbpfContext>(ctx: &C) -> u32 {
    let address = ctx.arg(0);
    count(ctx, EventKind::Msi, address, 0);
    0
}

// kvm_set_irq(unsigned int gsi, int level, int irq_source_id)
#[inline(always)]
fn on_set_irq<C: Args + aya_ebpf::EbpfContext>(ctx: &C) -> u32 {
    let gsi = ctx.arg(0) & 0xffff_ffff;
    count(ctx, EventKind::Irq, gsi, 0);
    0
}

/// [`ExitStarts`] backed by the `VPM_EXIT_START` LRU map.
struct MapStarts;

impl ExitStarts for MapStarts {
    #[inline(always)]
    fn record(&mut self, tid: u32, ts: u64) {
        let _ = EXIT_START.insert(&tid, &ts, 0);
    }

    #[inline(always)]
    fn take(&mut self, tid: u32) -> Option<u64> {
        // SAFETY: the value is copied out before the entry is removed.
        let ts = unsafe { EXIT_START.get(&tid) }.copied();
        if ts.is_some() {
            let _ = EXIT_START.remove(&tid);
        }
        ts
    }
}

// kvm_exit(struct kvm_vcpu *vcpu, u32 isa)
#[inline(always)]
fn on_kvm_exit<C: aya_ebpf::EbpfContext>(ctx: &C) -> u32 {
    count(ctx, EventKind::Exit, 0, 0);
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    exit::on_exit(&mut MapStarts, current_tid(), now);
    0
}

// kvm_entry(struct kvm_vcpu *vcpu, bool force_immediate_exit)
#[inline(always)]
fn on_kvm_entry<C>(_ctx: &C) -> u32 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    match exit::on_entry(&mut MapStarts, current_tid(), now) {
        Entry::Paired { bucket, .. } => {
            let key = HistKey {
                tgid: current_tgid(),
                bucket,
            };
            // Twice: another CPU may create the entry between our lookup
            // and our insert (EEXIST); then add to it.
            let mut counted = false;
            for _ in 0..2 {
                if let Some(slot) = EXIT_HIST.get_ptr_mut(&key) {
                    // SAFETY: this CPU's slot of a per-CPU map; migration is disabled.
                    unsafe { *slot += 1 };
                    counted = true;
                    break;
                }
                match EXIT_HIST.insert(&key, &1, BPF_NOEXIST.into()) {
                    Ok(()) => {
                        counted = true;
                        break;
                    }
                    Err(e) if e == -EEXIST => continue,
                    Err(_) => break,
                }
            }
            if !counted {
                bump_stat(Stat::HistMapFull);
            }
        }
        Entry::Unpaired => {
            bump_stat(Stat::UnpairedEntry);
        }
    }
    0
}

macro_rules! entry_points {
    ($tracepoint:literal, $btf:ident, $raw:ident, $handler:ident) => {
        #[btf_tracepoint(function = $tracepoint)]
        pub fn $btf(ctx: BtfTracePointContext) -> i32 {
            $handler(&ctx) as i32
        }

        #[raw_tracepoint(tracepoint = $tracepoint)]
        pub fn $raw(ctx: RawTracePointContext) -> i32 {
            $handler(&ctx) as i32
        }
    };
}

entry_points!("kvm_pio", btf_kvm_pio, raw_kvm_pio, on_pio);
entry_points!("kvm_mmio", btf_kvm_mmio, raw_kvm_mmio, on_mmio);
entry_points!(
    "kvm_userspace_exit",
    btf_kvm_userspace_exit,
    raw_kvm_userspace_exit,
    on_userspace_exit
);
entry_points!(
    "kvm_msi_set_irq",
    btf_kvm_msi_set_irq,
    raw_kvm_msi_set_irq,
    on_msi
);
entry_points!("kvm_set_irq", btf_kvm_set_irq, raw_kvm_set_irq, on_set_irq);
entry_points!("kvm_exit", btf_kvm_exit, raw_kvm_exit, on_kvm_exit);
entry_points!("kvm_entry", btf_kvm_entry, raw_kvm_entry, on_kvm_entry);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
