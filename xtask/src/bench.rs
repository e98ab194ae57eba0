//! `cargo xtask bench <name>`: benchmarks that write their own section of BENCHMARKS.md.

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct Options {
    /// Which benchmark.
    pub name: String,
    /// A short smoke pass (CI): fewer iterations, BENCHMARKS.md untouched.
    #[arg(long)]
    pub smoke: bool,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    anyhow::bail!("unknown benchmark `{}`", opts.name)
}
