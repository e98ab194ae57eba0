//! Empty host-side library: it lets `vpm-agent` name this crate as a build
//! dependency, so cargo rebuilds the agent when the eBPF programs change.
#![no_std]
