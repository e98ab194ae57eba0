//! `cargo xtask build-ebpf`: build the eBPF object on its own (a quick check
//! of the programs; the agent's build.rs does the same as part of its build).

use crate::util;

pub fn run() -> anyhow::Result<()> {
    crate::setup::run(&crate::setup::Options { check: true })?;
    util::run(util::cargo().args(["build", "--package", "vpm-agent", "--lib"]))
}
