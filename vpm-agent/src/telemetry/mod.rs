//! Loading, attaching and reading vpm's eBPF programs.
//!
//! [`Telemetry::load`] checks privileges and tracefs, loads the embedded eBPF
//! object and attaches each KVM tracepoint it can: as a BTF tracepoint first,
//! a raw tracepoint next. A tracepoint the kernel lacks is reported in
//! [`Telemetry::attachments`], never fatal. It then attaches the VFIO/PCI
//! attach points the kernel offers ([`probes`]), after writing the offsets
//! they need ([`offsets`], from BTF read by [`btf`]); those are reported in
//! [`Telemetry::pci_attachments`], also never fatal. [`Telemetry::snapshot`]
//! reads the maps (once a tick); [`Telemetry::forget`] removes an exited
//! process's entries so the maps stay bounded under VM churn.

pub mod attribution;
pub mod btf;
pub mod offsets;
pub mod preflight;
pub mod probes;
pub mod snapshot;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, MapError, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePoint, ProgramError, RawTracePoint},
};
use vpm_common::{
    CACHED_KIND_COUNT, CacheSlot, Counter, CounterKey, HistKey, ProbeConfig, STAT_COUNT, Stat, maps,
};

pub use preflight::{BtfSource, DEFAULT_BTF, DEFAULT_TRACEFS};
pub use probes::{Mechanism, ProbeAttachment, ProbeState};
pub use snapshot::{DeviceDelta, ProcessDelta, Snapshot, diff};

/// The eBPF object built by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vpm"));

/// A KVM tracepoint vpm attaches to, with its two entry points.
#[derive(Clone, Copy, Debug)]
pub struct Tracepoint {
    /// Name under `events/kvm/`.
    pub name: &'static str,
    btf_prog: &'static str,
    raw_prog: &'static str,
}

/// Every tracepoint vpm uses, in attach order.
pub const TRACEPOINTS: [Tracepoint; 7] = [
    tp("kvm_pio", "btf_kvm_pio", "raw_kvm_pio"),
    tp("kvm_mmio", "btf_kvm_mmio", "raw_kvm_mmio"),
    tp(
        "kvm_userspace_exit",
        "btf_kvm_userspace_exit",
        "raw_kvm_userspace_exit",
    ),
    tp(
        "kvm_msi_set_irq",
        "btf_kvm_msi_set_irq",
        "raw_kvm_msi_set_irq",
    ),
    tp("kvm_set_irq", "btf_kvm_set_irq", "raw_kvm_set_irq"),
    tp("kvm_exit", "btf_kvm_exit", "raw_kvm_exit"),
    tp("kvm_entry", "btf_kvm_entry", "raw_kvm_entry"),
];

const fn tp(name: &'static str, btf_prog: &'static str, raw_prog: &'static str) -> Tracepoint {
    Tracepoint {
        name,
        btf_prog,
        raw_prog,
    }
}

/// How a tracepoint ended up attached.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum AttachState {
    /// Attached as a BTF tracepoint (`tp_btf`).
    TpBtf,
    /// Attached as a raw tracepoint (`raw_tp`); the text says why not `tp_btf`.
    RawTp(String),
    /// Not attached: the kernel does not have this tracepoint.
    Absent,
    /// Not attached: both attach types failed (the text has both errors).
    Failed(String),
}

/// One line of the attach report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Attachment {
    /// Tracepoint name.
    pub tracepoint: &'static str,
    /// What happened.
    #[serde(flatten)]
    pub state: AttachState,
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// Missing capabilities.
    #[error(
        "not permitted to load eBPF programs (effective capabilities {cap_eff:#x}): \
         run vpm as root (sudo), or grant CAP_BPF and CAP_PERFMON \
         (setcap cap_bpf,cap_perfmon+ep /path/to/vpm)"
    )]
    NotPermitted {
        /// The effective capability set found.
        cap_eff: u64,
    },
    /// tracefs is not mounted.
    #[error(
        "tracefs not mounted at {path}: mount it with `mount -t tracefs nodev {path}` \
         (vpm mounts it itself when run as root at the default path)"
    )]
    TracefsMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// tracefs is mounted but this user may not read it.
    #[error(
        "tracefs at {path} is not readable by this user (it is usually mode 0700): run vpm \
         as root, or let it read tracefs (`mount -o remount,mode=0755 {path}`)"
    )]
    TracefsDenied {
        /// Mount point.
        path: PathBuf,
    },
    /// Mounting tracefs failed.
    #[error("cannot mount tracefs at {path}; mount it with `mount -t tracefs nodev {path}`")]
    TracefsMount {
        /// Mount point.
        path: PathBuf,
        /// The mount(2) error.
        #[source]
        source: std::io::Error,
    },
    /// KVM's tracepoints are not there.
    #[error(
        "no kvm tracepoints under {path}: the kvm module is not loaded \
         (modprobe kvm_intel or modprobe kvm_amd) or this is not a KVM host"
    )]
    KvmTracepointsMissing {
        /// The events/kvm directory looked at.
        path: PathBuf,
    },
    /// A host file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Loading the eBPF object failed.
    #[error("cannot load vpm's eBPF object")]
    Load(#[source] aya::EbpfError),
    /// A map is missing from the object (a build mismatch).
    #[error("map {0} not found in the eBPF object")]
    MapMissing(&'static str),
    /// A map operation failed.
    #[error("map {map}: {op} failed")]
    Map {
        /// Map name.
        map: &'static str,
        /// What was attempted.
        op: &'static str,
        /// The error.
        #[source]
        source: MapError,
    },
    /// Not a single counting tracepoint or VFIO/PCI attach point could be attached.
    #[error(
        "nothing could be attached (load the kvm module: modprobe kvm_intel or kvm_amd): {report}"
    )]
    NothingAttached {
        /// The per-tracepoint report.
        report: String,
    },
}

/// Where to find the kernel's interfaces (overridable for tests and odd hosts).
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// tracefs mount point.
    pub tracefs: PathBuf,
    /// Kernel BTF file.
    pub btf: PathBuf,
    /// Mount tracefs at `tracefs` when it is missing (only sensible at the default path).
    pub mount_tracefs: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            tracefs: PathBuf::from(DEFAULT_TRACEFS),
            btf: PathBuf::from(DEFAULT_BTF),
            mount_tracefs: true,
        }
    }
}

/// vpm's loaded and attached eBPF programs and their maps.
pub struct Telemetry {
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
    pci: Vec<ProbeAttachment>,
    offset_notes: Vec<offsets::OffsetNote>,
    function_source: String,
    btf: BtfSource,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// Which processes each generation bump pruned (see [`snapshot::PruneLog`]).
    prunes: snapshot::PruneLog,
}

impl Telemetry {
    /// Checks the host, loads the programs and attaches every KVM tracepoint
    /// and VFIO/PCI attach point it can. Fails only when nothing at all could
    /// be attached (or the host cannot load eBPF programs).
    pub fn load(opts: &LoadOptions) -> Result<Self, TelemetryError> {
        preflight::check_privileges()?;
        // The kvm tracepoints tracefs lists; `None`: it could not be read, so
        // each is tried (BTF and raw tracepoints attach by name, without
        // tracefs).
        let events = match preflight::kvm_events(&opts.tracefs, opts.mount_tracefs) {
            Ok(events) => Some(events),
            // VFIO/PCI telemetry can still work (a host without KVM loaded, the lab guest).
            Err(e @ TelemetryError::KvmTracepointsMissing { .. }) => {
                log::warn!("{e}; counting VFIO/PCI events only");
                Some(Vec::new())
            }
            Err(e @ TelemetryError::TracefsDenied { .. }) => {
                log::warn!("{e}; trying every kvm tracepoint without the list");
                None
            }
            Err(e) => return Err(e),
        };

        let (btf, btf_source) = match Btf::parse_file(&opts.btf, aya::Endianness::default()) {
            Ok(btf) => (Some(btf), BtfSource::Found(opts.btf.clone())),
            Err(e) => {
                log::warn!(
                    "BTF not found at {} ({e}): the kernel needs CONFIG_DEBUG_INFO_BTF for \
                     BTF tracepoints; using raw tracepoints instead",
                    opts.btf.display()
                );
                (None, BtfSource::Missing(opts.btf.clone()))
            }
        };

        let mut ebpf = EbpfLoader::new()
            .btf(btf.as_ref())
            .load(EBPF_OBJECT)
            .map_err(TelemetryError::Load)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                log::debug!("eBPF log channel unavailable: {e}");
                None
            }
        };

        let mut attachments = Vec::with_capacity(TRACEPOINTS.len());
        for tp in TRACEPOINTS {
            let state = if events
                .as_ref()
                .is_some_and(|ev| !ev.iter().any(|e| e == tp.name))
            {
                AttachState::Absent
            } else {
                attach(&mut ebpf, tp, btf.as_ref())
            };
            attachments.push(Attachment {
                tracepoint: tp.name,
                state,
            });
        }
        let PciAttach {
            attachments: pci,
            offset_notes,
            function_source,
        } = attach_pci(&mut ebpf, opts, btf.as_ref())?;
        let counting = attachments.iter().any(|a| {
            matches!(a.state, AttachState::TpBtf | AttachState::RawTp(_))
                && a.tracepoint != "kvm_entry"
        }) || pci.iter().any(ProbeAttachment::attached);
        if !counting {
            return Err(TelemetryError::NothingAttached {
                report: format!(
                    "{}; {}",
                    render_report(&attachments),
                    probes::render_report(&pci)
                ),
            });
        }
        Ok(Self {
            ebpf,
            attachments,
            pci,
            offset_notes,
            function_source,
            btf: btf_source,
            logger,
            prunes: snapshot::PruneLog::default(),
        })
    }

    /// What was attached of the VFIO/PCI attach points, and how.
    pub fn pci_attachments(&self) -> &[ProbeAttachment] {
        &self.pci
    }

    /// Where each offset of the VFIO/PCI programs came from, or why it is unknown.
    pub fn offset_notes(&self) -> &[offsets::OffsetNote] {
        &self.offset_notes
    }

    /// Where the list of traceable kernel functions came from.
    pub fn function_source(&self) -> &str {
        &self.function_source
    }

    /// What was attached, and how.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// Where BTF came from.
    pub fn btf(&self) -> &BtfSource {
        &self.btf
    }

    /// Reads the maps, summing the CPUs.
    pub fn snapshot(&mut self) -> Result<Snapshot, TelemetryError> {
        if let Some(logger) = self.logger.as_mut() {
            logger.flush();
        }
        let mut snap = Snapshot::default();
        // The cache slots first, then the hash: see `CacheSlot`.
        let generation = self.generation()?;
        let first = self.cache_slots()?;
        let mut hash = Vec::new();
        for item in self.counters_map()?.iter() {
            hash.push(item.map_err(|source| TelemetryError::Map {
                map: maps::COUNTERS,
                op: "iterate",
                source,
            })?);
        }
        let second = self.cache_slots()?;
        let slots = snapshot::trusted_slots(&first, &second, generation, &self.prunes);
        // Pruned processes older than every slot's load matter no more.
        let oldest = first
            .iter()
            .flatten()
            .filter(|s| s.cached_key().is_some())
            .map(|s| s.generation)
            .min()
            .unwrap_or(generation);
        self.prunes.forget_before(oldest);
        for (key, values) in hash {
            let kind_slots = slots.get(key.kind as usize).map_or(&[][..], Vec::as_slice);
            snap.counters
                .insert(key, snapshot::merge_cpus(&key, &values, kind_slots));
        }
        let hist = self.hist_map()?;
        for item in hist.iter() {
            let (key, values) = item.map_err(|source| TelemetryError::Map {
                map: maps::EXIT_HIST,
                op: "iterate",
                source,
            })?;
            snap.hist.insert(key, values.iter().sum());
        }
        Ok(snap)
    }

    /// Removes every map entry of the processes in `tgids`. Returns how many
    /// entries were removed.
    pub fn forget(&mut self, snap: &Snapshot, tgids: &[u32]) -> Result<usize, TelemetryError> {
        let mut removed = 0;
        let keys: Vec<CounterKey> = snap
            .counters
            .keys()
            .filter(|k| tgids.contains(&k.tgid))
            .copied()
            .collect();
        let mut counters = self.counters_map()?;
        for key in keys {
            match counters.remove(&key) {
                Ok(()) => removed += 1,
                Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(TelemetryError::Map {
                        map: maps::COUNTERS,
                        op: "remove",
                        source,
                    });
                }
            }
        }
        let keys: Vec<HistKey> = snap
            .hist
            .keys()
            .filter(|k| tgids.contains(&k.tgid))
            .copied()
            .collect();
        let mut hist = self.hist_map()?;
        for key in keys {
            match hist.remove(&key) {
                Ok(()) => removed += 1,
                Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(TelemetryError::Map {
                        map: maps::EXIT_HIST,
                        op: "remove",
                        source,
                    });
                }
            }
        }
        // Cache slots loaded before this point may hold removed keys: stop
        // trusting those (see `CacheSlot`, `PruneLog`).
        let generation = self.bump_generation()?;
        self.prunes.record(generation, tgids);
        Ok(removed)
    }

    /// The current cache-slot generation.
    fn generation(&self) -> Result<u64, TelemetryError> {
        let map = self
            .ebpf
            .map(maps::GENERATION)
            .ok_or(TelemetryError::MapMissing(maps::GENERATION))?;
        let array = Array::<_, u64>::try_from(map).map_err(|source| TelemetryError::Map {
            map: maps::GENERATION,
            op: "open",
            source,
        })?;
        array.get(&0, 0).map_err(|source| TelemetryError::Map {
            map: maps::GENERATION,
            op: "read",
            source,
        })
    }

    /// Raises the cache-slot generation by one; returns the new one.
    fn bump_generation(&mut self) -> Result<u64, TelemetryError> {
        let next = self.generation()? + 1;
        let map = self
            .ebpf
            .map_mut(maps::GENERATION)
            .ok_or(TelemetryError::MapMissing(maps::GENERATION))?;
        let mut array = Array::<_, u64>::try_from(map).map_err(|source| TelemetryError::Map {
            map: maps::GENERATION,
            op: "open",
            source,
        })?;
        array
            .set(0, next, 0)
            .map_err(|source| TelemetryError::Map {
                map: maps::GENERATION,
                op: "write",
                source,
            })?;
        Ok(next)
    }

    /// The programs' own health counters, summed over CPUs, indexed by [`Stat`].
    pub fn stats(&self) -> Result<[u64; STAT_COUNT as usize], TelemetryError> {
        let map = self
            .ebpf
            .map(maps::STATS)
            .ok_or(TelemetryError::MapMissing(maps::STATS))?;
        let array = PerCpuArray::<_, u64>::try_from(map).map_err(|source| TelemetryError::Map {
            map: maps::STATS,
            op: "open",
            source,
        })?;
        let mut out = [0u64; STAT_COUNT as usize];
        for stat in [Stat::CounterMapFull, Stat::UnpairedEntry, Stat::HistMapFull] {
            let values = array
                .get(&(stat as u32), 0)
                .map_err(|source| TelemetryError::Map {
                    map: maps::STATS,
                    op: "read",
                    source,
                })?;
            out[stat as usize] = values.iter().sum();
        }
        Ok(out)
    }

    /// Every CPU's cache slot, per cached kind: `slots[kind][cpu]`.
    fn cache_slots(&self) -> Result<Vec<Vec<CacheSlot>>, TelemetryError> {
        let map = self
            .ebpf
            .map(maps::CACHE)
            .ok_or(TelemetryError::MapMissing(maps::CACHE))?;
        let array =
            PerCpuArray::<_, CacheSlot>::try_from(map).map_err(|source| TelemetryError::Map {
                map: maps::CACHE,
                op: "open",
                source,
            })?;
        (0..CACHED_KIND_COUNT)
            .map(|kind| {
                array
                    .get(&kind, 0)
                    .map(|values| values.iter().copied().collect())
                    .map_err(|source| TelemetryError::Map {
                        map: maps::CACHE,
                        op: "read",
                        source,
                    })
            })
            .collect()
    }

    fn counters_map(
        &mut self,
    ) -> Result<PerCpuHashMap<&mut aya::maps::MapData, CounterKey, Counter>, TelemetryError> {
        let map = self
            .ebpf
            .map_mut(maps::COUNTERS)
            .ok_or(TelemetryError::MapMissing(maps::COUNTERS))?;
        PerCpuHashMap::try_from(map).map_err(|source| TelemetryError::Map {
            map: maps::COUNTERS,
            op: "open",
            source,
        })
    }

    fn hist_map(
        &mut self,
    ) -> Result<PerCpuHashMap<&mut aya::maps::MapData, HistKey, u64>, TelemetryError> {
        let map = self
            .ebpf
            .map_mut(maps::EXIT_HIST)
            .ok_or(TelemetryError::MapMissing(maps::EXIT_HIST))?;
        PerCpuHashMap::try_from(map).map_err(|source| TelemetryError::Map {
            map: maps::EXIT_HIST,
            op: "open",
            source,
        })
    }
}

/// Where vpm reads `kallsyms` when tracefs's `available_filter_functions` is unreadable.
const PROC_ROOT: &str = "/proc";

/// What [`attach_pci`] did.
struct PciAttach {
    attachments: Vec<ProbeAttachment>,
    offset_notes: Vec<offsets::OffsetNote>,
    function_source: String,
}

/// Computes and writes the VFIO/PCI programs' offsets, then attaches every
/// VFIO/PCI attach point the kernel offers. Only a failure to write the
/// configuration map is an error.
fn attach_pci(
    ebpf: &mut Ebpf,
    opts: &LoadOptions,
    aya_btf: Option<&Btf>,
) -> Result<PciAttach, TelemetryError> {
    let own_btf = match btf::Btf::read(&opts.btf, None) {
        Ok(b) => Some(Arc::new(b)),
        Err(e) => {
            log::debug!("{}", error_chain(&e));
            None
        }
    };
    let btf_dir = opts.btf.parent().unwrap_or(Path::new("/sys/kernel/btf"));
    let found = offsets::compute(own_btf.as_ref(), btf_dir, &opts.tracefs);
    write_probe_config(ebpf, &found.config)?;
    let functions = probes::read_functions(
        &opts.tracefs,
        Path::new(PROC_ROOT),
        &probes::function_names(),
    );
    let kernel = probes::Kernel {
        aya_btf,
        btf: own_btf.as_deref(),
        functions: &functions,
        tracefs: &opts.tracefs,
        config: &found.config,
    };
    Ok(PciAttach {
        attachments: probes::attach_all(ebpf, &kernel),
        offset_notes: found.notes,
        function_source: functions.source,
    })
}

fn write_probe_config(ebpf: &mut Ebpf, config: &ProbeConfig) -> Result<(), TelemetryError> {
    let map = ebpf
        .map_mut(maps::PROBE_CONFIG)
        .ok_or(TelemetryError::MapMissing(maps::PROBE_CONFIG))?;
    let mut array =
        Array::<_, ProbeConfig>::try_from(map).map_err(|source| TelemetryError::Map {
            map: maps::PROBE_CONFIG,
            op: "open",
            source,
        })?;
    array
        .set(0, *config, 0)
        .map_err(|source| TelemetryError::Map {
            map: maps::PROBE_CONFIG,
            op: "write",
            source,
        })
}

/// Attaches `tp` as a BTF tracepoint, else as a raw tracepoint.
fn attach(ebpf: &mut Ebpf, tp: Tracepoint, btf: Option<&Btf>) -> AttachState {
    let btf_err = match btf {
        Some(btf) => match attach_btf(ebpf, tp, btf) {
            Ok(()) => return AttachState::TpBtf,
            Err(e) => format!("tp_btf: {}", error_chain(&e)),
        },
        None => "tp_btf: no kernel BTF".to_owned(),
    };
    match attach_raw(ebpf, tp) {
        Ok(()) => AttachState::RawTp(btf_err),
        Err(e) => AttachState::Failed(format!("{btf_err}; raw_tp: {}", error_chain(&e))),
    }
}

fn attach_btf(ebpf: &mut Ebpf, tp: Tracepoint, btf: &Btf) -> Result<(), ProgramError> {
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(tp.btf_prog)
        .ok_or(ProgramError::UnexpectedProgramType)?
        .try_into()?;
    prog.load(tp.name, btf)?;
    prog.attach().map(drop)
}

fn attach_raw(ebpf: &mut Ebpf, tp: Tracepoint) -> Result<(), ProgramError> {
    let prog: &mut RawTracePoint = ebpf
        .program_mut(tp.raw_prog)
        .ok_or(ProgramError::UnexpectedProgramType)?
        .try_into()?;
    prog.load()?;
    prog.attach(tp.name).map(drop)
}

/// `err: source: source…` on one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

/// A one-line-per-tracepoint human report.
pub fn render_report(attachments: &[Attachment]) -> String {
    attachments
        .iter()
        .map(|a| {
            let how = match &a.state {
                AttachState::TpBtf => "tp_btf".to_owned(),
                AttachState::RawTp(why) => format!("raw_tp ({why})"),
                AttachState::Absent => "absent in this kernel".to_owned(),
                AttachState::Failed(why) => format!("failed ({why})"),
            };
            format!("{}: {how}", a.tracepoint)
        })
        .collect::<Vec<_>>()
        .join("; ")
}
