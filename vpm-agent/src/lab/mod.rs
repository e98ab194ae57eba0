//! Test fixtures on real kernel interfaces.
//!
//! [`vmm`] is a tiny, deterministic VMM on `/dev/kvm`: a real vCPU runs a
//! hand-assembled real-mode program that makes an exact number of port and
//! MMIO exits, and the VM fd receives an exact number of `KVM_SIGNAL_MSI` and
//! `KVM_IRQ_LINE` ioctls. vpm's tests and benchmarks compare what the eBPF
//! counters saw with its [`vmm::Report`]; the `vpm-testvm` binary wraps it
//! with a QEMU-like command line so VM identity code treats it as a VM.
pub mod tracegen;
pub mod vmm;
