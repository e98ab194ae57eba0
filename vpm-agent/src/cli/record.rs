//! `vpm record`: per-tick samples in vpm's long CSV format.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use vpm::history::History;
use vpm::monitor::Monitor;
use vpm::store::long;

use super::{CollectArgs, duration, sleep_until, stop_flag, unix_now};

/// Arguments of `vpm record`.
#[derive(Args)]
pub struct RecordArgs {
    #[command(flatten)]
    collect: CollectArgs,
    /// How long to record; Ctrl-C stops early and keeps what was recorded.
    #[arg(long, default_value = "60s", value_parser = duration)]
    duration: Duration,
    /// CSV file to write (stdout if absent). Rows are flushed every tick.
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    out: Option<PathBuf>,
}

pub fn run(args: &RecordArgs) -> anyhow::Result<()> {
    let stop = stop_flag();
    // Load and attach first: a failure leaves an existing --out file alone.
    let mut monitor = Monitor::start(&args.collect.monitor_options())?;
    let sink: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let mut writer = long::Writer::new(sink).context("writing the CSV header")?;
    log::info!("{}", monitor.attach_summary());
    log::info!("recording for {:?}", args.duration);
    let interval = args.collect.interval;
    let start = Instant::now();
    let deadline = start + args.duration;
    // Two ticks: the newest, and the one before as the host counters' baseline.
    let mut history = History::new(interval.as_secs_f64() * 10.0);
    history.push(monitor.tick(unix_now())?);
    let mut rows = 0usize;
    for n in 1u32.. {
        let next = (start + interval * n).min(deadline);
        sleep_until(next, stop);
        let tick = monitor.tick(unix_now())?;
        let at = tick.at;
        history.push(tick);
        for row in history.last_tick().report().long_rows(at) {
            writer.write(&row).context("writing a CSV row")?;
            rows += 1;
        }
        writer.flush().context("flushing the CSV file")?;
        if Instant::now() >= deadline || stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
    }
    if let Some(path) = &args.out {
        log::info!("wrote {rows} rows to {}", path.display());
    }
    Ok(())
}
