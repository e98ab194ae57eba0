//! `vpm forecast`: forecast every series of a telemetry file.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use vpm::export::{ForecastRow, write_forecast_csv};
use vpm::forecast::ForecasterConfig;
use vpm::offline;

use super::output;
use super::{InputArgs, durations};

/// Arguments of `vpm forecast`.
#[derive(Args)]
pub struct ForecastArgs {
    #[command(flatten)]
    input: InputArgs,
    /// Horizons to forecast, comma-separated (rounded up to whole steps).
    #[arg(long, alias = "horizons", default_value = "60s", value_parser = durations, value_name = "DURATIONS")]
    horizon: super::Durations,
    /// Forecast CSV to write (stdout if absent).
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    out: Option<PathBuf>,
}

pub fn run(args: &ForecastArgs) -> anyhow::Result<()> {
    // A typo in -o must not cost the whole run.
    if let Some(out) = &args.out {
        vpm::export::check_writable(out)?;
    }
    let loaded = args.input.load()?;
    let horizons = args.horizon.seconds();
    let all = offline::forecast_all(&loaded.series, &horizons, &ForecasterConfig::default())
        .context("forecasting failed")?;
    let rows = all.iter().flat_map(|s| {
        s.forecasts.iter().map(move |f| ForecastRow {
            generated_at: s.origin,
            vm: &s.vm,
            resource: &s.resource,
            forecast: f,
        })
    });
    let bytes = write_forecast_csv(Vec::new(), rows).context("encoding the forecast CSV")?;
    log::info!(
        "{}: {} series at a {} s step, {} horizon(s)",
        loaded.file,
        all.len(),
        loaded.step_s,
        horizons.len()
    );
    output::emit(args.out.as_deref(), &String::from_utf8_lossy(&bytes))
}
