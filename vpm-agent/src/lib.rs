//! vpm: per-VM peripheral telemetry for KVM hosts, counted in the kernel by eBPF.
pub mod telemetry;
