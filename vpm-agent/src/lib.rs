//! vpm: per-VM peripheral telemetry for KVM hosts, counted in the kernel by eBPF.
//!
//! Modules by role (see DESIGN.md): [`telemetry`] loads, attaches and reads the
//! eBPF programs; [`identity`] says which VM a process is; [`host`] reads
//! per-VM host metrics; [`monitor`] joins them once a tick; [`report`] and
//! [`history`] turn ticks into windows; [`store`] writes vpm's CSV format;
//! [`api`] serves live inspection; [`lab`] holds the test VMM; [`hal`] reads
//! and writes PCI sysfs and config space (SR-IOV, drivers, power), rooted at
//! a path; [`policy`] is the policy file; [`scheduler`] plans device actions
//! (pure); [`executor`] carries them out under the safety rules, journaled;
//! [`control`] runs the loop (observe, plan, act) each tick; [`demo`] is the
//! built-in demo; [`replay`] replays demand traces through the loop; [`qmp`]
//! is the QEMU Machine Protocol client and [`connect`] hot-plugs VFs into
//! running VMs through it.
pub mod api;
pub mod connect;
pub mod control;
pub mod demo;
pub mod executor;
pub mod export;
pub mod forecast;
pub mod hal;
pub mod history;
pub mod host;
pub mod identity;
pub mod inventory;
pub mod lab;
pub mod monitor;
pub mod offline;
pub mod pipeline;
pub mod policy;
pub mod qmp;
pub mod replay;
pub mod report;
pub mod scheduler;
pub mod store;
pub mod telemetry;
pub mod units;
