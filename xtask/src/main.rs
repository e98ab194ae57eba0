//! `cargo xtask`: vpm's developer and operator commands.
//!
//! `cargo xtask run` and `cargo xtask test` are the two commands a newcomer
//! needs: both first run `setup`, which checks and installs the prerequisites.

mod bench;
mod build_ebpf;
mod lab;
mod run;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

/// vpm's developer commands.
#[derive(Parser)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check and install prerequisites: apt packages (LLVM 22, perf), rust-src,
    /// bpf-linker built for LLVM 22. Idempotent; says what it does.
    Setup(setup::Options),
    /// Build the eBPF programs only (they are also built by the agent's build.rs).
    BuildEbpf,
    /// Build everything and start `vpm run` as root (extra arguments go to `vpm run`).
    Run(run::Options),
    /// Run the whole test suite: unit tests, then the privileged tests (root, /dev/kvm, BPF).
    Test(test::Options),
    /// Run a benchmark and write its section of BENCHMARKS.md.
    Bench(bench::Options),
    /// Boot a Debian kernel in QEMU with an SR-IOV NVMe controller and run the
    /// hardware tests (SR-IOV, VFIO, power states) inside it.
    VmTest(lab::Options),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup(opts) => setup::run(&opts),
        Command::BuildEbpf => build_ebpf::run(),
        Command::Run(opts) => run::run(&opts),
        Command::Test(opts) => test::run(&opts),
        Command::Bench(opts) => bench::run(&opts),
        Command::VmTest(opts) => lab::run(&opts),
    }
}
