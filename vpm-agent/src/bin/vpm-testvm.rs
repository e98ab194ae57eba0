//! vpm-testvm: a tiny deterministic VM on /dev/kvm with a QEMU-like command
//! line, for vpm's tests, benchmarks and demo. All logic is in `vpm::lab::vmm`.
use std::ffi::OsString;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use vpm::lab::vmm::{self, MmioSpec, PioSpec, TestVm, Workload};

const LONG_ABOUT: &str = "\
Runs a tiny deterministic VM on /dev/kvm: one vCPU executes a real-mode program
that, per repeat, does exactly COUNT one-byte `out`s to the --pio port (one
KVM_EXIT_IO each), then exactly COUNT one-byte writes to the --mmio address
(unbacked guest memory: one KVM_EXIT_MMIO each), then one `out` to the done
port 0x501 (one more KVM_EXIT_IO). Before each repeat the VMM makes --msi
KVM_SIGNAL_MSI ioctls (address 0xfee00000, data 0x30) and --irq KVM_IRQ_LINE
ioctls on GSI 5 (levels 1, 0, 1, ...); either creates the in-kernel irqchip.
All counts are per repeat.

When the workload is done it prints one JSON line (the report, totals over all
repeats, and its pid) on stdout. With --hold it then waits until stdin reaches EOF or
SIGTERM/SIGINT arrives, and exits 0: keep stdin open (a pipe) to keep it alive;
with stdin at /dev/null it exits at once.

The command line looks like QEMU's, so vpm sees the process as a VM: -name and
-uuid are accepted (and ignored), and every long option may be written with one
dash or two (-name, --name, -pio, --pio). Errors go to stderr, exit status 1.

Example:
  vpm-testvm -name guest=demo,debug-threads=on -uuid 6c1e... \\
      --pio 0x3f8:1000 --mmio 0x100000:500 --repeat 2 --pause-ms 100 --hold";

#[derive(Debug, Parser)]
#[command(
    name = "vpm-testvm",
    about = "A tiny deterministic KVM guest that makes an exact number of exits",
    long_about = LONG_ABOUT
)]
struct Args {
    /// VM name, QEMU style: `guest=NAME,debug-threads=on` or `NAME` (not used)
    #[arg(long, value_name = "guest=NAME,...")]
    name: Option<String>,
    /// VM UUID, QEMU style (not used)
    #[arg(long, value_name = "UUID")]
    uuid: Option<String>,
    /// One-byte port writes per repeat; PORT and COUNT decimal or 0x hex
    #[arg(long, value_name = "PORT:COUNT")]
    pio: Option<PioSpec>,
    /// One-byte MMIO writes per repeat; GPA in 0x10000..=0x10ffef (above the
    /// guest's 64 KiB of RAM, within real-mode reach)
    #[arg(long, value_name = "GPA:COUNT")]
    mmio: Option<MmioSpec>,
    /// KVM_SIGNAL_MSI ioctls per repeat
    #[arg(long, value_name = "N", default_value_t = 0)]
    msi: u32,
    /// KVM_IRQ_LINE ioctls per repeat
    #[arg(long, value_name = "N", default_value_t = 0)]
    irq: u32,
    /// Number of guest runs
    #[arg(long, value_name = "N", default_value_t = 1)]
    repeat: u32,
    /// Pause between repeats, in milliseconds
    #[arg(long = "pause-ms", value_name = "MS", default_value_t = 0)]
    pause_ms: u64,
    /// After printing the report, wait for stdin EOF or SIGTERM/SIGINT
    #[arg(long)]
    hold: bool,
    /// KVM device
    #[arg(long = "kvm-device", value_name = "PATH", default_value = vmm::DEFAULT_KVM_PATH)]
    kvm_device: PathBuf,
}

/// QEMU accepts its long options with one dash (`-name`); clap wants two.
fn qemu_style(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    args.into_iter()
        .map(|arg| match arg.to_str() {
            Some(s)
                if s.len() > 2
                    && s.starts_with('-')
                    && s[1..].starts_with(|c: char| c.is_ascii_alphabetic()) =>
            {
                OsString::from(format!("-{s}"))
            }
            _ => arg,
        })
        .collect()
}

fn main() -> ExitCode {
    let args = match Args::try_parse_from(qemu_style(std::env::args_os())) {
        Ok(args) => args,
        Err(e) => {
            // --help and --version go to stdout with status 0; usage errors
            // exit 1 like every other error (clap's own default is 2).
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vpm-testvm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let workload = Workload {
        pio: args.pio,
        mmio: args.mmio,
        msi: args.msi,
        irq: args.irq,
        repeat: args.repeat,
        pause: Duration::from_millis(args.pause_ms),
    };
    workload.validate().context("invalid workload")?;
    let report = TestVm::new(&args.kvm_device, workload.needs_irqchip())
        .context("creating the vm")?
        .run(&workload)
        .context("running the workload")?;

    // Listen for signals before the report goes out: whoever reads it may
    // send SIGTERM at once.
    let held = if args.hold {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the signal runtime")?;
        let signals = {
            let _guard = runtime.enter();
            (
                signal(SignalKind::terminate()).context("listening for SIGTERM")?,
                signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            )
        };
        Some((runtime, signals))
    } else {
        None
    };

    // The report, plus this process's pid (tests match it with vpm's per-process counts).
    let mut json = serde_json::to_value(&report).context("encoding the report")?;
    if let Some(obj) = json.as_object_mut() {
        obj.insert("pid".into(), std::process::id().into());
    }
    let line = json.to_string();
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .context("writing the report")?;
    drop(stdout);

    if let Some((runtime, (mut term, mut int))) = held {
        let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            // Read errors count as EOF: either way nobody can keep us alive.
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = eof_tx.send(());
        });
        runtime.block_on(async {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = eof_rx => {}
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(qemu_style(
            std::iter::once("vpm-testvm")
                .chain(args.iter().copied())
                .map(OsString::from),
        ))
    }

    #[test]
    fn accepts_qemu_and_own_options() {
        let args = parse(&[
            "-name",
            "guest=web,,1,debug-threads=on",
            "-uuid",
            "6c1e4b4e-5d9a-4a57-9d0e-1f2a3b4c5d6e",
            "--pio",
            "0x3f8:1000",
            "-mmio",
            "0x100000:500",
            "--msi",
            "3",
            "--irq",
            "4",
            "--repeat",
            "2",
            "--pause-ms",
            "10",
            "--hold",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(args.name.as_deref(), Some("guest=web,,1,debug-threads=on"));
        assert_eq!(
            args.pio,
            Some(PioSpec {
                port: 0x3f8,
                count: 1000
            })
        );
        assert_eq!(
            args.mmio,
            Some(MmioSpec {
                gpa: 0x10_0000,
                count: 500
            })
        );
        assert_eq!(
            (args.msi, args.irq, args.repeat, args.pause_ms),
            (3, 4, 2, 10)
        );
        assert!(args.hold);
    }

    #[test]
    fn defaults_and_errors() {
        let args = parse(&["-name", "plain"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (args.pio, args.mmio, args.repeat, args.hold),
            (None, None, 1, false)
        );
        assert!(parse(&["--pio", "0x3f8"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
    }
}
