//! `vpm run`: the agent.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use vpm::api::{self, server};
use vpm::export::{ForecastRow, write_forecast_csv};
use vpm::history::{History, Tick};
use vpm::monitor::Monitor;
use vpm::pipeline::{Pipeline, PipelineConfig};
use vpm::store::StoreConfig;
use vpm::store::long;

use super::{CollectArgs, duration, unix_now};

/// Arguments of `vpm run`.
#[derive(Args, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    collect: CollectArgs,
    /// Unix socket for `vpm top` and other clients (mode 0600).
    #[arg(long, default_value = api::DEFAULT_SOCKET, value_name = "PATH")]
    socket: PathBuf,
    /// Directory for the CSV exports: `telemetry-`, `forecast-`, `plan-`,
    /// `actions-` and `recommendations-<unix time in ms>.csv` (and the demo's
    /// `demo-*.csv`); a file with no rows is not written.
    #[arg(long, default_value = "/var/lib/vpm/exports", value_name = "DIR")]
    export_dir: PathBuf,
    /// How often each kind of export file is written.
    #[arg(long, default_value = "60s", value_parser = duration)]
    export_interval: Duration,
    /// How many export files of each kind to keep (oldest removed first; at
    /// least 1).
    #[arg(long, default_value_t = 1440, value_parser = at_least_one)]
    keep: usize,
    /// How much history the agent keeps for live queries.
    #[arg(long, default_value = "15m", value_parser = duration)]
    history: Duration,
    /// Model step of the forecasts (telemetry is resampled onto it).
    #[arg(long, default_value = "10s", value_parser = duration)]
    step: Duration,
    /// Forecast horizons, comma-separated.
    #[arg(long, default_value = "60s,300s", value_parser = super::durations, value_name = "DURATIONS")]
    horizons: super::Durations,
    /// History each series' forecaster keeps at the model step (memory grows with it:
    /// 8 bytes per point per series).
    #[arg(long, default_value = "2h", value_parser = duration)]
    forecast_history: Duration,
    /// The policy file: which devices vpm manages and how (QoS classes, dwell
    /// times, …). Without one at the default path vpm observes and forecasts
    /// but manages nothing; a FILE given here must exist.
    #[arg(long, default_value = vpm::policy::DEFAULT_PATH, value_name = "FILE")]
    policy: PathBuf,
    /// Act on the plan (create VFs, park, wake). Without it every planned
    /// action is a dry run, recorded in the actions CSV as `dry-run`.
    #[arg(long)]
    apply: bool,
    /// vpm's state directory (the journal of applied actions).
    #[arg(long, default_value = vpm::executor::journal::DEFAULT_STATE_DIR, value_name = "DIR")]
    state_dir: PathBuf,
    /// How often the closed loop plans (and, with --apply, acts).
    #[arg(long, default_value = "10s", value_parser = duration)]
    plan_interval: Duration,
    /// The built-in demo: real KVM guests from the test VMM with scripted
    /// device use, and a simulated SR-IOV PF that the loop acts on (nothing on
    /// the host's real devices is touched; --policy, --apply and --state-dir
    /// are ignored: its journal is in EXPORT_DIR/demo-state). Ticks are short
    /// (250 ms, 500 ms steps, plans every 500 ms, horizons 2 s and 4 s,
    /// exports at least every 5 s) so something happens within a minute.
    #[arg(long)]
    demo: bool,
    /// Stop after this long (default: run until SIGINT/SIGTERM).
    #[arg(long, value_parser = duration)]
    duration: Option<Duration>,
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    if std::env::var_os("POLARS_MAX_THREADS").is_none() {
        // One polars worker: the agent resamples small batches, and each extra
        // thread costs memory (measured in BENCHMARKS.md, forecast section).
        // SAFETY: no other thread exists yet (the runtime starts below).
        unsafe { std::env::set_var("POLARS_MAX_THREADS", "1") };
    }
    // An invalid policy stops the agent before anything else starts (the
    // demo has its own).
    let policy = if args.demo {
        None
    } else {
        vpm::policy::Policy::load(&args.policy)?
    };
    std::fs::create_dir_all(&args.export_dir).with_context(|| {
        format!(
            "cannot create the export directory {}",
            args.export_dir.display()
        )
    })?;
    if args.demo {
        return run_demo(args);
    }
    match &policy {
        None => log::warn!(
            "no policy file at {}: vpm observes and forecasts but manages no device",
            args.policy.display()
        ),
        Some(p) => log::info!(
            "policy {}: {} device entries allowed; {}",
            args.policy.display(),
            p.devices.allow.len(),
            if args.apply {
                "acting (--apply)"
            } else {
                "dry run (add --apply to act)"
            }
        ),
    }
    if args.apply && !vpm::executor::effective_root() {
        anyhow::bail!(
            "vpm run --apply needs root: it writes sysfs and must see every process's open \
             files to know who holds a device (run it with sudo, or without --apply)"
        );
    }
    let backend = vpm::hal::Roots {
        sys: vpm::hal::Sysfs::new(&args.collect.sys_root),
        proc: args.collect.proc_root.clone(),
        dev: PathBuf::from("/dev"),
    };
    let hotplug = policy.as_ref().map(|p| p.hotplug.clone());
    if let Some(h) = &hotplug
        && let Some(demand) = &h.demand
    {
        log::info!(
            "hot-plug: VMs of classes with hotplug = true get VFs over QMP as their forecast \
             {demand} asks ({} per VF)",
            h.per_vf
        );
    }
    let (controller, interrupted) = vpm::control::Controller::new(
        Box::new(backend),
        policy,
        hotplug.map(|settings| {
            Box::new(vpm::connect::QmpHotplug::new(
                &args.collect.proc_root,
                settings,
            )) as Box<dyn vpm::executor::Hotplug + Send>
        }),
        args.apply,
        &args.state_dir,
        vpm::executor::ApplyOptions::default(),
    )?;
    for i in interrupted {
        log::warn!(
            "journal: `{}` was interrupted by a restart; it {}",
            i.intent.action,
            i.note
        );
    }
    let monitor = Monitor::start(&args.collect.monitor_options())?;
    log::info!("{}", monitor.attach_summary());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(agent(args, monitor, controller, Vec::new()))
}

/// `vpm run --demo` (see [`vpm::demo`]).
fn run_demo(args: &RunArgs) -> anyhow::Result<()> {
    let mut args = args.clone();
    args.collect.interval = Duration::from_millis(250);
    args.step = Duration::from_millis(500);
    args.plan_interval = Duration::from_millis(500);
    args.export_interval = args.export_interval.min(Duration::from_secs(5));
    args.horizons = super::Durations(vec![Duration::from_secs(2), Duration::from_secs(4)]);
    log::warn!(
        "demo: vpm acts on a simulated SR-IOV PF ({}) only; the host's devices are left alone",
        vpm::demo::PF
    );
    let policy = vpm::policy::Policy::parse(vpm::demo::POLICY, Path::new("<demo policy>"))?;
    let sim = vpm::demo::backend();
    let (controller, _) = vpm::control::Controller::new(
        Box::new(Arc::clone(&sim)),
        Some(policy),
        None,
        true,
        &args.export_dir.join("demo-state"),
        vpm::executor::ApplyOptions::default(),
    )?;
    let monitor = Monitor::start(&args.collect.monitor_options())?;
    log::info!("{}", monitor.attach_summary());
    let testvm = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("vpm-testvm")))
        .unwrap_or_else(|| PathBuf::from("vpm-testvm"));
    let start = unix_now();
    let demo = vpm::demo::Demo::start(&testvm, sim, &args.export_dir, start)?;
    let preload = vpm::demo::preload(start, args.step.as_secs_f64(), &demo.pids);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(agent(&args, monitor, controller, preload));
    drop(demo);
    result
}

async fn agent(
    args: &RunArgs,
    mut monitor: Monitor,
    controller: vpm::control::Controller,
    preload: Vec<long::Row>,
) -> anyhow::Result<()> {
    // A baseline tick before anyone can connect: the first exported tick has a
    // previous one to measure its rates against (the baseline's own events are
    // the few since `Monitor::start`).
    let base = monitor
        .tick(unix_now())
        .context("reading telemetry failed")?;
    let listener = server::bind(&args.socket)?;
    // Removed on every way out, an early error included.
    let _socket = RemoveOnDrop(args.socket.clone());
    log::info!("serving on {}", args.socket.display());
    let shared = Arc::new(Mutex::new(server::Shared {
        history: History::new(args.history.as_secs_f64()),
        status: api::Status {
            version: env!("CARGO_PKG_VERSION").into(),
            tick_s: args.collect.interval.as_secs_f64(),
            ticks: 0,
            attachments: api::attachments_json(monitor.attachments()),
        },
        plan: server::PlanView {
            managing: controller.managing(),
            // The demo acts on its simulated devices without --apply.
            apply: controller.applies(),
            ..server::PlanView::default()
        },
    }));
    let server = tokio::spawn(server::serve(listener, Arc::clone(&shared)));

    let mut ticker = tokio::time::interval(args.collect.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut exporter = Exporter::new(
        &args.export_dir,
        args.keep,
        args.collect.interval.as_secs_f64(),
    );
    exporter.recent.push(base.clone());
    if let Ok(mut s) = shared.lock() {
        s.history.push(base);
    }
    let mut pipeline_cfg = pipeline_config(args);
    pipeline_cfg.levels = controller.level_series();
    let forecaster = ForecastThread::start(
        Pipeline::new(pipeline_cfg).context("starting the forecaster")?,
        controller,
        Arc::clone(&shared),
        args.export_dir.clone(),
        args.keep,
    )?;
    if let Some(at) = preload.last().map(|r| r.timestamp) {
        // The demo's scripted past, so its forecasts start with history.
        forecaster.send(Msg::Preload(preload, at));
    }
    let mut next_export = tokio::time::Instant::now() + args.export_interval;
    let mut next_plan = tokio::time::Instant::now() + args.plan_interval;
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    use tokio::signal::unix::{SignalKind, signal};
    // Both listeners live across iterations, so a signal that arrives during a
    // tick is not missed.
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let result = loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
        }
        let tick = match monitor.tick(unix_now()) {
            Ok(t) => t,
            Err(e) => break Err(anyhow::Error::new(e).context("reading telemetry failed")),
        };
        let at = tick.at;
        forecaster.send(Msg::Rows(exporter.add(&tick), at));
        if let Ok(mut s) = shared.lock() {
            s.history.push(tick);
            s.status.ticks += 1;
        }
        let now = tokio::time::Instant::now();
        if now >= next_plan {
            next_plan = now + args.plan_interval;
            forecaster.send(Msg::Plan(unix_now(), std::time::Instant::now()));
        }
        if now >= next_export {
            next_export = now + args.export_interval;
            let t = unix_now();
            if let Err(e) = exporter.flush(t) {
                log::error!("{e:#}");
            }
            forecaster.send(Msg::Export(t));
        }
        if deadline.is_some_and(|d| now >= d) {
            break Ok(());
        }
    };
    server.abort();
    // Nothing collected is lost on the way out: a last tick, then the partial
    // interval is exported too.
    if result.is_ok() {
        match monitor.tick(unix_now()) {
            Ok(tick) => {
                let at = tick.at;
                forecaster.send(Msg::Rows(exporter.add(&tick), at));
            }
            Err(e) => log::error!("last tick: {:#}", anyhow::Error::new(e)),
        }
    }
    let t = unix_now();
    if let Err(e) = exporter.flush(t) {
        log::error!("{e:#}");
    }
    forecaster.stop(t);
    log::info!("stopped");
    result
}

/// Removes the agent's socket when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn pipeline_config(args: &RunArgs) -> PipelineConfig {
    let mut cfg = PipelineConfig::agent_default();
    let step = args.step.as_secs_f64();
    cfg.store = StoreConfig {
        // The forecasters keep their own history; the store's full-resolution
        // tier only has to bridge export intervals (the 5-minute tier keeps 8 days).
        // (At least a few steps: a long --step must not find the tier too short.)
        fine_retention_s: (3.0 * args.export_interval.as_secs_f64())
            .max(900.0)
            .max(4.0 * step),
        ..StoreConfig::with_step(step)
    };
    cfg.forecaster.history_cap = ((args.forecast_history.as_secs_f64() / step) as usize).max(16);
    cfg.horizons_s = args.horizons.seconds();
    cfg
}

/// Work for the forecasting thread.
enum Msg {
    /// A tick's rows, and its time.
    Rows(Vec<long::Row>, f64),
    /// Plan (and act, with --apply) at this time, asked at this instant.
    Plan(f64, std::time::Instant),
    /// History to learn from before the first tick (the demo's scripted past).
    Preload(Vec<long::Row>, f64),
    /// Export forecasts stamped with this time.
    Export(f64),
}

/// The store, the forecasters and the closed loop's controller run on their own
/// thread: polars must not block the agent's async runtime, a slow model
/// selection must not delay ticks, and sysfs writes (VF creation can take
/// minutes) must not stall the socket.
struct ForecastThread {
    tx: Option<std::sync::mpsc::SyncSender<Msg>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl ForecastThread {
    fn start(
        pipeline: Pipeline,
        controller: vpm::control::Controller,
        shared: Arc<Mutex<server::Shared>>,
        dir: PathBuf,
        keep: usize,
    ) -> anyhow::Result<Self> {
        // Bounded: a forecaster that falls behind makes the agent drop work
        // (said in the log), not grow without limit.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(256);
        let worker = Worker {
            selections_per_plan: pipeline.config().selections_per_export,
            pipeline,
            controller,
            shared,
            dir,
            keep,
        };
        let handle = std::thread::Builder::new()
            .name("vpm-forecast".into())
            .spawn(move || worker.run(&rx))
            .context("cannot start the forecasting thread")?;
        Ok(Self {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    fn send(&self, msg: Msg) {
        use std::sync::mpsc::TrySendError;
        if let Some(tx) = &self.tx {
            match tx.try_send(msg) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    log::warn!("the forecaster is behind; this tick's work was dropped")
                }
                Err(TrySendError::Disconnected(_)) => {
                    log::error!("the forecasting thread stopped; forecasts are no longer exported")
                }
            }
        }
    }

    /// Exports a last time, then waits for the thread to finish.
    fn stop(mut self, t: f64) {
        if let Some(tx) = &self.tx
            && tx.send(Msg::Export(t)).is_err()
        {
            log::error!("the forecasting thread stopped before the last export");
        }
        drop(self.tx.take());
        if let Some(h) = self.handle.take()
            && h.join().is_err()
        {
            log::error!("the forecasting thread panicked");
        }
    }
}

/// The forecasting thread's state and work.
struct Worker {
    pipeline: Pipeline,
    controller: vpm::control::Controller,
    shared: Arc<Mutex<server::Shared>>,
    dir: PathBuf,
    keep: usize,
    /// Model selections (one series each) allowed after a plan or export.
    selections_per_plan: usize,
}

impl Worker {
    /// Serves messages until the channel closes. Model selections run
    /// between messages, one at a time, while no message waits (and at
    /// least one after each plan, export or preload, so a busy agent still
    /// selects): a plan waits for one selection at most, never for a round
    /// of them.
    fn run(mut self, rx: &std::sync::mpsc::Receiver<Msg>) {
        use std::sync::mpsc::TryRecvError;
        // A message taken off the channel while selecting, not yet served.
        let mut next: Option<Msg> = None;
        // Selections left until the next plan or export (kept across the
        // ticks served in between), and whether one is owed even if work
        // waits.
        let (mut selections, mut owed) = (0, false);
        loop {
            let msg = match next.take() {
                Some(m) => m,
                None => match rx.recv() {
                    Ok(m) => m,
                    Err(_) => return,
                },
            };
            if self.serve(msg) {
                (selections, owed) = (self.selections_per_plan, true);
            }
            while selections > 0 {
                match rx.try_recv() {
                    Ok(m) => next = Some(m),
                    Err(TryRecvError::Empty) => {}
                    // Stopping: no selection is worth waiting for.
                    Err(TryRecvError::Disconnected) => return,
                }
                if next.is_some() && !owed {
                    break;
                }
                owed = false;
                if !self.pipeline.select_one() {
                    selections = 0;
                    break;
                }
                selections -= 1;
                if next.is_some() {
                    break;
                }
            }
        }
    }

    /// Serves one message; `true` after a plan, an export or a preload
    /// (selections may follow).
    fn serve(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Rows(rows, at) => {
                self.ingest_tick(rows, at);
                false
            }
            Msg::Preload(rows, at) => {
                if let Err(e) = self.pipeline.ingest(&rows, at) {
                    log::error!("{:#}", anyhow::Error::new(e));
                }
                // Forecasters for the preloaded series, so their
                // selections can run before the first plan needs them.
                self.pipeline.forecast_now();
                true
            }
            Msg::Plan(t, asked) => {
                self.plan(t, asked);
                true
            }
            Msg::Export(t) => {
                if let Err(e) = export_forecasts(&self.dir, self.keep, t, &mut self.pipeline) {
                    log::error!("{e:#}");
                }
                if let Err(e) = export_plans(&self.dir, self.keep, t, &mut self.controller) {
                    log::error!("{e:#}");
                }
                true
            }
        }
    }

    fn ingest_tick(&mut self, mut rows: Vec<long::Row>, at: f64) {
        // vpm's own activity (its sysfs writes wake devices, which the PCI
        // probes count) is not demand: a forecast of it would make vpm act
        // for itself.
        let me = std::process::id();
        rows.retain(|r| r.pid != me);
        // The VMs of this tick, and how many managed VFs each holds. (pid 0
        // is the kernel's own work, not a VM.)
        let mut vms: Vec<(String, u32)> = rows
            .iter()
            .filter(|r| r.pid != 0)
            .map(|r| (r.vm.clone(), r.pid))
            .collect();
        vms.sort();
        vms.dedup();
        match self.controller.observe(at, &vms) {
            Ok(usage) => rows.extend(usage),
            Err(e) => log::error!("reading the managed devices: {e}"),
        }
        if let Err(e) = self.pipeline.ingest(&rows, at) {
            log::error!("{:#}", anyhow::Error::new(e));
        }
    }

    /// Plans (and acts) at `t`, asked at `asked`.
    fn plan(&mut self, t: f64, asked: std::time::Instant) {
        let started = std::time::Instant::now();
        let mut outlook = self.pipeline.forecast_now();
        // Plans use each VM's class headroom, not the exports' fixed level.
        let controller = &mut self.controller;
        self.pipeline
            .rebound(&mut outlook, |vm| controller.headroom(vm));
        let forecast_done = std::time::Instant::now();
        // How long the data waited for this plan (queued work, forecasting;
        // a monotonic clock, so a clock step is not a delay): devices are
        // woken that much earlier.
        controller.note_reaction(forecast_done.duration_since(asked).as_secs_f64());
        let plan = controller.step(t, &outlook);
        let plan = serde_json::to_value(plan).unwrap_or_default();
        log::debug!(
            "plan at {t:.2}: {:.3} s queued, {:.3} s forecasting, {:.3} s planning and acting",
            started.duration_since(asked).as_secs_f64(),
            forecast_done.duration_since(started).as_secs_f64(),
            forecast_done.elapsed().as_secs_f64()
        );
        let host = serde_json::to_value(controller.host()).unwrap_or_default();
        let headroom = self.pipeline.headroom();
        let forecasts: Vec<api::ForecastEntry> = outlook
            .iter()
            .flat_map(|o| {
                o.forecasts.iter().map(|f| api::ForecastEntry {
                    vm: o.key.vm.clone(),
                    resource: o.key.resource.clone(),
                    horizon_s: f.horizon_s,
                    target_time: f.target_time,
                    predicted: f.predicted,
                    upper: f.upper,
                    model: f.model.name().to_owned(),
                })
            })
            .collect();
        if let Ok(mut s) = self.shared.lock() {
            s.plan.plan = plan;
            s.plan.host = host;
            s.plan.forecast_at = Some(t);
            s.plan.forecasts = forecasts;
            s.plan.headroom = headroom;
        }
    }
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => {
            Err("must be at least 1 (0 would remove every export as soon as it is written)".into())
        }
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e}: a whole number of files")),
    }
}

/// Writes `forecast-<t>.csv` (atomically) and rotates old ones.
fn export_forecasts(
    dir: &Path,
    keep: usize,
    t: f64,
    pipeline: &mut Pipeline,
) -> anyhow::Result<()> {
    let mut outlook = pipeline.forecast_now();
    // A series whose VM stopped reporting (it exited) stays in the store for
    // a while; once even its longest forecast is for a time already past (3
    // steps of lateness aside), it is not exported.
    let late = 3.0 * pipeline.config().store.step_s;
    outlook.retain(|o| o.forecasts.iter().any(|f| f.target_time >= t - late));
    if outlook.is_empty() {
        return Ok(());
    }
    let rows = outlook.iter().flat_map(|o| {
        o.forecasts.iter().map(move |f| ForecastRow {
            generated_at: t,
            vm: &o.key.vm,
            resource: &o.key.resource,
            forecast: f,
        })
    });
    let bytes = write_forecast_csv(Vec::new(), rows).context("encoding forecasts")?;
    let path = dir.join(export_name("forecast-", t));
    vpm::export::write_atomic(&path, &bytes)?;
    log::debug!(
        "exported {} series' forecasts to {}",
        outlook.len(),
        path.display()
    );
    vpm::export::rotate(dir, "forecast-", keep, &path)?;
    Ok(())
}

/// Writes the closed loop's `plan-`, `actions-` and `recommendations-<t>.csv`
/// (atomically, rotated); files with no rows are not written. Plans and
/// action records a failed write could not export are kept for the next
/// export; every file is tried, and the first failure returned.
fn export_plans(
    dir: &Path,
    keep: usize,
    t: f64,
    controller: &mut vpm::control::Controller,
) -> anyhow::Result<()> {
    use vpm::control::csv;
    // Written, the rows are exported: a failed rotation after it is logged,
    // not retried (that would export them twice).
    let write = |prefix: &str, text: &str| -> Result<(), vpm::export::ExportError> {
        let path = dir.join(export_name(prefix, t));
        vpm::export::write_atomic(&path, text.as_bytes())?;
        if let Err(e) = vpm::export::rotate(dir, prefix, keep, &path) {
            log::error!("rotating {prefix}*.csv: {e}");
        }
        Ok(())
    };
    let (plans, records) = controller.take();
    let mut first_err = None;
    let (mut unsent_plans, mut unsent_records) = (Vec::new(), Vec::new());
    if !plans.is_empty()
        && let Err(e) = write("plan-", &csv::plans(&plans))
    {
        first_err.get_or_insert(e);
        unsent_plans = plans;
    }
    if !records.is_empty()
        && let Err(e) = write("actions-", &csv::actions(&records))
    {
        first_err.get_or_insert(e);
        unsent_records = records;
    }
    if !unsent_plans.is_empty() || !unsent_records.is_empty() {
        controller.put_back(unsent_plans, unsent_records);
    }
    if let Some(plan) = controller.plan().filter(|p| !p.recommendations.is_empty())
        && let Err(e) = write("recommendations-", &csv::recommendations(plan))
    {
        first_err.get_or_insert(e);
    }
    match first_err {
        None => Ok(()),
        Some(e) => Err(e.into()),
    }
}

/// Most telemetry rows held for the next export (≈ 100 MB at worst).
const MAX_PENDING_ROWS: usize = 1_000_000;

/// The file name of an export made at `t`: milliseconds, zero-padded, so two
/// exports in one second do not collide and name order is time order.
fn export_name(prefix: &str, t: f64) -> String {
    format!("{prefix}{:014}.csv", (t * 1000.0) as u64)
}

/// Periodic telemetry CSV files in the export directory.
struct Exporter {
    dir: PathBuf,
    keep: usize,
    rows: Vec<long::Row>,
    /// The previous tick and the newest (host counters' baseline).
    recent: History,
}

impl Exporter {
    fn new(dir: &Path, keep: usize, tick_s: f64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            keep,
            rows: Vec::new(),
            recent: History::new(tick_s * 10.0),
        }
    }

    /// Adds a tick; returns its rows (none for the very first tick, which has
    /// no previous tick to measure rates against).
    fn add(&mut self, tick: &Tick) -> Vec<long::Row> {
        let at = tick.at;
        self.recent.push(tick.clone());
        let report = self.recent.last_tick().report();
        if report.window_s <= 0.0 {
            return Vec::new();
        }
        let rows = report.long_rows(at);
        if self.rows.len() + rows.len() > MAX_PENDING_ROWS {
            // Exports keep failing (disk full?): drop the oldest, say so.
            let drop = (self.rows.len() + rows.len() - MAX_PENDING_ROWS).min(self.rows.len());
            self.rows.drain(..drop);
            log::warn!("telemetry export is behind: dropped the {drop} oldest unexported rows");
        }
        self.rows.extend(rows.iter().cloned());
        rows
    }

    /// Writes the rows gathered since the last flush to a new file, atomically,
    /// then removes the oldest files beyond `keep`.
    fn flush(&mut self, now: f64) -> anyhow::Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let mut w = long::Writer::new(Vec::new()).context("encoding CSV")?;
        for row in &self.rows {
            w.write(row).context("encoding CSV")?;
        }
        let path = self.dir.join(export_name("telemetry-", now));
        super::output::write_atomic(&path, &w.into_inner())
            .with_context(|| format!("exporting telemetry to {}", path.display()))?;
        log::debug!("exported {} rows to {}", self.rows.len(), path.display());
        self.rows.clear();
        vpm::export::rotate(&self.dir, "telemetry-", self.keep, &path)?;
        Ok(())
    }
}
