//! `vpm top`: the live per-VM view, or one batch report with `--once`.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use vpm::api;
use vpm::monitor::Monitor;
use vpm::report::{Window, WindowReport};

use super::output::{self, Output};
use super::{CollectArgs, duration, sleep_until, stop_flag, unix_now};

/// Arguments of `vpm top`.
#[derive(Args)]
pub struct TopArgs {
    #[command(flatten)]
    collect: CollectArgs,
    /// Print one report over `--duration` and exit, instead of the live view.
    #[arg(long)]
    once: bool,
    /// Window of a `--once` report.
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// Format of a `--once` report.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Write a `--once` report to FILE instead of stdout.
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    out: Option<PathBuf>,
    /// Socket of a running agent.
    #[arg(long, default_value = api::DEFAULT_SOCKET, value_name = "PATH")]
    socket: PathBuf,
    /// Attach vpm's own eBPF programs even if an agent is running.
    #[arg(long)]
    standalone: bool,
}

/// Where the numbers come from.
enum Source {
    Agent(std::os::unix::net::UnixStream),
    Own(Box<Monitor>),
}

fn open_source(args: &TopArgs) -> anyhow::Result<Source> {
    if !args.standalone
        && let Ok(stream) = api::connect(&args.socket)
    {
        log::info!("using the agent at {}", args.socket.display());
        return Ok(Source::Agent(stream));
    }
    let monitor = Monitor::start(&args.collect.monitor_options())?;
    log::info!("{}", monitor.attach_summary());
    Ok(Source::Own(Box::new(monitor)))
}

pub fn run(args: &TopArgs) -> anyhow::Result<()> {
    let stop = stop_flag();
    let mut source = open_source(args)?;
    if args.once {
        let report = collect_window(&mut source, args, stop)?;
        let text = output::render(&report, args.output, unix_now())?;
        return output::emit(args.out.as_deref(), &text);
    }
    live(&mut source, args, stop)
}

fn collect_window(
    source: &mut Source,
    args: &TopArgs,
    stop: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<WindowReport> {
    match source {
        Source::Agent(stream) => {
            log::info!("collecting for {:?}", args.duration);
            sleep_until(Instant::now() + args.duration, stop);
            Ok(api::report(stream, args.duration.as_secs_f64())?)
        }
        Source::Own(monitor) => {
            // A baseline tick first, so host counters have a start value.
            let base = monitor.tick(unix_now())?;
            let mut window = Window::starting_at(base.at);
            for vm in &base.vms {
                window.observe(base.at, &vm.info, None, vm.host.as_ref());
            }
            log::info!("collecting for {:?}", args.duration);
            let start = Instant::now();
            let deadline = start + args.duration;
            let mut n = 1u32;
            loop {
                let next = (start + args.collect.interval * n).min(deadline);
                sleep_until(next, stop);
                monitor.tick(unix_now())?.add_to(&mut window);
                if Instant::now() >= deadline || stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                n += 1;
            }
            Ok(window.report())
        }
    }
}

fn live(
    source: &mut Source,
    args: &TopArgs,
    stop: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<()> {
    let interval = args.collect.interval;
    let start = Instant::now();
    let mut n = 1u32;
    let mut stdout = std::io::stdout();
    let mut history = vpm::history::History::new(interval.as_secs_f64() * 10.0);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        sleep_until(start + interval * n, stop);
        n += 1;
        let report = match source {
            Source::Agent(stream) => api::report(stream, interval.as_secs_f64())?,
            Source::Own(monitor) => {
                history.push(monitor.tick(unix_now())?);
                history.last_tick().report()
            }
        };
        // Clear and redraw, like top(1).
        write!(
            stdout,
            "\x1b[H\x1b[2J\x1b[3Jvpm top - {} VMs - rates over {:.1}s - Ctrl-C to quit\n{}\n",
            report.vms.len(),
            report.window_s,
            output::table(&report)
        )
        .and_then(|()| stdout.flush())
        .context("writing to the terminal")?;
    }
    Ok(())
}
