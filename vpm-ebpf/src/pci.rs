//! VFIO/PCI programs: vfio-pci region reads/writes, device ioctls and interrupt
//! handlers, PCI power-state changes, VF creation and runtime PM.
//!
//! Attach points, by what the kernel allows (the agent picks, see its
//! `telemetry::probes`): the `rpm:*` tracepoints as BTF tracepoints or classic
//! tracepoints; functions built into the kernel (`pci_set_power_state`,
//! `pci_iov_add_virtfn`, `sriov_numvfs_store`) as fentry, else kprobe; functions
//! of the vfio-pci modules as kprobes only, because fentry on a module function
//! needs that module's BTF object at load time, which aya 0.14's `FEntry` does
//! not pass to the kernel.
//!
//! The device is found without guessing any layout: the agent computes the
//! offsets from BTF (or the tracepoint's `format` file) and writes them to
//! `VPM_PROBE_CONFIG`; the programs follow the pointers with
//! `bpf_probe_read_kernel` to the device's name (`struct device` →
//! `kobj.name`) and parse its PCI address. An unknown offset or an unreadable
//! name counts the event under the unknown device.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_get_current_task, bpf_probe_read_kernel_str},
    },
    macros::{btf_tracepoint, fentry, kprobe, map, tracepoint},
    maps::Array,
    programs::{BtfTracePointContext, FEntryContext, ProbeContext, TracePointContext},
};
use vpm_common::{
    EventKind, KERNEL_TGID, OFFSET_UNKNOWN, PF_KTHREAD, ProbeConfig,
    pci::{UNKNOWN_BDF, device_key, parse_bdf_name},
};

use crate::{Args, count_direct, current_tgid};

#[map(name = "VPM_PROBE_CONFIG")]
static PROBE_CONFIG: Array<ProbeConfig> = Array::with_max_entries(1, 0);

impl Args for FEntryContext {
    #[inline(always)]
    fn arg(&self, n: usize) -> u64 {
        FEntryContext::arg(self, n)
    }
}

impl Args for ProbeContext {
    #[inline(always)]
    fn arg(&self, n: usize) -> u64 {
        ProbeContext::arg(self, n).unwrap_or(0)
    }
}

#[inline(always)]
fn config() -> ProbeConfig {
    PROBE_CONFIG.get(0).copied().unwrap_or(ProbeConfig::UNKNOWN)
}

/// The process to count a possibly-kernel-context event under: the current
/// process, or [`KERNEL_TGID`] for a kernel thread (runtime-PM workers).
#[inline(always)]
fn event_tgid(cfg: &ProbeConfig) -> u32 {
    if cfg.task_flags != OFFSET_UNKNOWN {
        // SAFETY: bpf_get_current_task has no preconditions.
        let task = unsafe { bpf_get_current_task() };
        let at = task.wrapping_add(u64::from(cfg.task_flags));
        // SAFETY: bpf_probe_read_kernel checks the address; a fault is an Err.
        if let Ok(flags) = unsafe { bpf_probe_read_kernel(at as *const u32) }
            && flags & PF_KTHREAD != 0
        {
            return KERNEL_TGID;
        }
    }
    current_tgid()
}

/// The PCI address in the NUL-terminated name at `name`, if it is one.
#[inline(always)]
fn bdf_of_name(name: u64) -> Option<u32> {
    if name == 0 {
        return None;
    }
    let mut buf = [0u8; 16];
    // SAFETY: the helper writes at most 16 bytes into `buf` (NUL included) and
    // checks the source address; a fault is a negative return.
    let n = unsafe {
        bpf_probe_read_kernel_str(buf.as_mut_ptr().cast(), buf.len() as u32, name as *const _)
    };
    if n <= 0 {
        return None;
    }
    parse_bdf_name(&buf)
}

/// The PCI address of `struct device *dev` (its `kobj.name`), if `dev` is a
/// PCI function and the offset is known.
#[inline(always)]
fn bdf_of_device(dev: u64, cfg: &ProbeConfig) -> Option<u32> {
    if dev == 0 || cfg.device_name == OFFSET_UNKNOWN {
        return None;
    }
    let at = dev.wrapping_add(u64::from(cfg.device_name));
    // SAFETY: bpf_probe_read_kernel checks the address; a fault is an Err.
    let name = unsafe { bpf_probe_read_kernel(at as *const u64) }.ok()?;
    bdf_of_name(name)
}

/// The PCI address of `struct vfio_device *vdev` (its `dev`'s name).
#[inline(always)]
fn bdf_of_vfio_device(vdev: u64, cfg: &ProbeConfig) -> u32 {
    if vdev == 0 || cfg.vfio_device_dev == OFFSET_UNKNOWN {
        return UNKNOWN_BDF;
    }
    let at = vdev.wrapping_add(u64::from(cfg.vfio_device_dev));
    // SAFETY: bpf_probe_read_kernel checks the address; a fault is an Err.
    match unsafe { bpf_probe_read_kernel(at as *const u64) } {
        Ok(dev) => bdf_of_device(dev, cfg).unwrap_or(UNKNOWN_BDF),
        Err(_) => UNKNOWN_BDF,
    }
}

/// The PCI address of `struct pci_dev *pdev` (its embedded `dev`'s name).
#[inline(always)]
fn bdf_of_pci_dev(pdev: u64, cfg: &ProbeConfig) -> u32 {
    if pdev == 0 || cfg.pci_dev_dev == OFFSET_UNKNOWN {
        return UNKNOWN_BDF;
    }
    bdf_of_device(pdev.wrapping_add(u64::from(cfg.pci_dev_dev)), cfg).unwrap_or(UNKNOWN_BDF)
}

// vfio_pci_core_read/write(struct vfio_device *core_vdev, char __user *buf,
//                          size_t count, loff_t *ppos)
#[inline(always)]
fn on_region_rw<C: Args>(ctx: &C, kind: EventKind) -> u32 {
    let cfg = config();
    let bdf = bdf_of_vfio_device(ctx.arg(0), &cfg);
    count_direct(current_tgid(), kind, device_key(bdf, 0), ctx.arg(2));
    0
}

// vfio_pci_core_ioctl(struct vfio_device *core_vdev, unsigned int cmd, unsigned long arg)
#[inline(always)]
fn on_ioctl<C: Args>(ctx: &C) -> u32 {
    let cfg = config();
    let bdf = bdf_of_vfio_device(ctx.arg(0), &cfg);
    count_direct(current_tgid(), EventKind::VfioIoctl, device_key(bdf, 0), 0);
    0
}

// vfio_intx_handler(int irq, void *dev_id), vfio_msihandler(int irq, void *arg):
// `dev_id`'s type changed across kernels and `arg` is an eventfd, so the IRQ
// number is the key; the agent maps it to the device (/sys/kernel/irq/N/actions).
#[inline(always)]
fn on_irq<C: Args>(ctx: &C, kind: EventKind) -> u32 {
    let irq = ctx.arg(0) as u32;
    count_direct(KERNEL_TGID, kind, device_key(UNKNOWN_BDF, irq), 0);
    0
}

// pci_set_power_state(struct pci_dev *dev, pci_power_t state)
#[inline(always)]
fn on_power_set<C: Args>(ctx: &C) -> u32 {
    let cfg = config();
    let bdf = bdf_of_pci_dev(ctx.arg(0), &cfg);
    let state = ctx.arg(1) as u32;
    count_direct(
        event_tgid(&cfg),
        EventKind::PciPowerSet,
        device_key(bdf, state),
        0,
    );
    0
}

// pci_iov_add_virtfn(struct pci_dev *dev, int id)
#[inline(always)]
fn on_vf_add<C: Args>(ctx: &C) -> u32 {
    let cfg = config();
    let bdf = bdf_of_pci_dev(ctx.arg(0), &cfg);
    let id = ctx.arg(1) as u32;
    count_direct(event_tgid(&cfg), EventKind::VfAdd, device_key(bdf, id), 0);
    0
}

// sriov_numvfs_store(struct device *dev, struct device_attribute *attr,
//                    const char *buf, size_t count)
#[inline(always)]
fn on_numvfs_store<C: Args>(ctx: &C) -> u32 {
    let cfg = config();
    let bdf = bdf_of_device(ctx.arg(0), &cfg).unwrap_or(UNKNOWN_BDF);
    count_direct(
        event_tgid(&cfg),
        EventKind::SriovNumvfsStore,
        device_key(bdf, 0),
        0,
    );
    0
}

// rpm_suspend/rpm_resume(struct device *dev, int flags), as BTF tracepoints.
// Every device with runtime PM traces these; only PCI functions are counted.
#[inline(always)]
fn on_rpm_btf(ctx: &BtfTracePointContext, kind: EventKind) -> u32 {
    let cfg = config();
    if let Some(bdf) = bdf_of_device(Args::arg(ctx, 0), &cfg) {
        count_direct(event_tgid(&cfg), kind, device_key(bdf, 0), 0);
    }
    0
}

// rpm_suspend/rpm_resume as classic tracepoints: the record's
// `__data_loc char[] name` field (offset from the format file) holds the
// name's offset (low 16 bits) and length (high 16 bits) inside the record.
#[inline(always)]
fn on_rpm_classic(ctx: &TracePointContext, kind: EventKind, loc_offset: u32) -> u32 {
    let cfg = config();
    if loc_offset == OFFSET_UNKNOWN {
        return 0;
    }
    // SAFETY: the offset comes from this tracepoint's format file; the helper
    // behind `read_at` checks the address.
    let Ok(loc) = (unsafe { ctx.read_at::<u32>(loc_offset as usize) }) else {
        return 0;
    };
    let name = (ctx.as_ptr() as u64).wrapping_add(u64::from(loc & 0xffff));
    if let Some(bdf) = bdf_of_name(name) {
        count_direct(event_tgid(&cfg), kind, device_key(bdf, 0), 0);
    }
    0
}

#[kprobe]
pub fn kp_vfio_pci_core_read(ctx: ProbeContext) -> u32 {
    on_region_rw(&ctx, EventKind::VfioRegionRead)
}

#[kprobe]
pub fn kp_vfio_pci_core_write(ctx: ProbeContext) -> u32 {
    on_region_rw(&ctx, EventKind::VfioRegionWrite)
}

#[kprobe]
pub fn kp_vfio_pci_core_ioctl(ctx: ProbeContext) -> u32 {
    on_ioctl(&ctx)
}

#[kprobe]
pub fn kp_vfio_intx_handler(ctx: ProbeContext) -> u32 {
    on_irq(&ctx, EventKind::VfioIntx)
}

#[kprobe]
pub fn kp_vfio_msihandler(ctx: ProbeContext) -> u32 {
    on_irq(&ctx, EventKind::VfioMsi)
}

/// fentry and kprobe entry points with one body, for functions built into
/// the kernel.
macro_rules! function_entry_points {
    ($function:literal, $fentry:ident, $kprobe:ident, $handler:ident) => {
        #[fentry(function = $function)]
        pub fn $fentry(ctx: FEntryContext) -> i32 {
            $handler(&ctx) as i32
        }

        #[kprobe]
        pub fn $kprobe(ctx: ProbeContext) -> u32 {
            $handler(&ctx)
        }
    };
}

function_entry_points!(
    "pci_set_power_state",
    fe_pci_set_power_state,
    kp_pci_set_power_state,
    on_power_set
);
function_entry_points!(
    "pci_iov_add_virtfn",
    fe_pci_iov_add_virtfn,
    kp_pci_iov_add_virtfn,
    on_vf_add
);
function_entry_points!(
    "sriov_numvfs_store",
    fe_sriov_numvfs_store,
    kp_sriov_numvfs_store,
    on_numvfs_store
);

#[btf_tracepoint(function = "rpm_suspend")]
pub fn btf_rpm_suspend(ctx: BtfTracePointContext) -> i32 {
    on_rpm_btf(&ctx, EventKind::RpmSuspend) as i32
}

#[btf_tracepoint(function = "rpm_resume")]
pub fn btf_rpm_resume(ctx: BtfTracePointContext) -> i32 {
    on_rpm_btf(&ctx, EventKind::RpmResume) as i32
}

#[tracepoint]
pub fn tp_rpm_suspend(ctx: TracePointContext) -> u32 {
    let offset = config().rpm_suspend_name;
    on_rpm_classic(&ctx, EventKind::RpmSuspend, offset)
}

#[tracepoint]
pub fn tp_rpm_resume(ctx: TracePointContext) -> u32 {
    let offset = config().rpm_resume_name;
    on_rpm_classic(&ctx, EventKind::RpmResume, offset)
}
