//! The replay loop: a demand trace, a policy and a simulated host, one tick
//! per step of the trace.

use serde::Serialize;

use super::ReplayError;
use super::controller::Controller;
use super::demand::DemandTrace;
use super::host::{HostConfig, SimHost};
use super::metrics::{Applied, Metrics, MissCause, OnsetOutcome, Tally};
use crate::executor::ExecuteError;
use crate::policy::Policy;

/// How a replay runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayConfig {
    /// The simulated PF.
    pub host: HostConfig,
    /// Seconds from the trace's start that are not scored (forecasters learn,
    /// pools settle).
    pub warmup_s: f64,
}

/// What a replay of one policy gave.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayOutcome {
    /// The policy.
    pub policy: String,
    /// Its scores.
    pub metrics: Metrics,
    /// Ticks run (warm-up included).
    pub ticks: usize,
    /// The first few executor errors (refusals, failures), for reports.
    pub errors: Vec<String>,
}

/// At most this many executor errors are kept in [`ReplayOutcome::errors`].
const KEEP_ERRORS: usize = 8;

/// Replays `trace` with `controller` deciding, against a fresh [`SimHost`]
/// whose executor checks actions against `policy` (which also gives the VMs'
/// classes and the dwell times flaps are judged by).
///
/// Each tick `t` (one per step of the trace):
/// 1. the VMs apply their demand at `t` to the host: releases, then waiting
///    demand, then new onsets, each scored against the host as the earlier
///    ticks left it (ready, woken, shortfall; a miss gets the controller's
///    [`Controller::miss_cause`]);
/// 2. the controller sees the host and every VM's demand at `t` and decides;
/// 3. the host carries out each action through the executor, in order
///    (refusals and failures are counted, not fatal);
/// 4. the host's VFs as they now stand are scored for `[t, t + step)`.
pub fn replay(
    trace: &DemandTrace,
    cfg: &ReplayConfig,
    policy: &Policy,
    controller: &mut dyn Controller,
) -> Result<ReplayOutcome, ReplayError> {
    let step = trace.step_s;
    if !(step.is_finite() && step > 0.0) {
        return Err(ReplayError::Trace {
            name: trace.name.clone(),
            reason: format!("step {step} s: must be a positive number of seconds"),
        });
    }
    let names: Vec<String> = trace.vms.iter().map(|v| v.vm.clone()).collect();
    let mut host = SimHost::new(cfg.host.clone(), policy.clone(), &names);
    let mut tally = Tally::new(policy.dwell.clone(), trace.start + cfg.warmup_s);
    for n in &names {
        tally.vm(n);
    }
    let mut errors = Vec::new();
    let ticks = trace.steps();
    for i in 0..ticks {
        let now = trace.start + i as f64 * step;
        let wants: Vec<(String, u32)> = trace
            .vms
            .iter()
            .map(|v| (v.vm.clone(), v.vfs.get(i).copied().unwrap_or(0)))
            .collect();

        let step_out = host.demand(now, &wants)?;
        for at in step_out.served {
            tally.served(at, now);
        }
        for o in &step_out.onsets {
            let cause = match o.outcome {
                OnsetOutcome::Ready => MissCause::Other,
                _ => controller.miss_cause(&o.vm, o.unit, o.outcome),
            };
            let foreseen = controller.foresaw(&o.vm, o.unit) == Some(true);
            tally.onset(now, &o.vm, o.outcome, cause, foreseen);
        }

        let state = host.state(now)?;
        for d in controller.decide(now, &state, &wants)? {
            match host.apply(now, d.action.clone()) {
                Ok(out) => {
                    for b in &out.removed {
                        tally.forget(*b);
                    }
                    tally.action(Applied {
                        at: now,
                        action: d.action,
                        from: out.from,
                        breaks_dwell: d.breaks_dwell,
                    });
                }
                Err(e) => {
                    if matches!(e, ExecuteError::Refused { .. }) {
                        tally.refused(now);
                    } else {
                        tally.failed(now);
                    }
                    if errors.len() < KEEP_ERRORS {
                        errors.push(format!("at +{:.0} s: {e}", now - trace.start));
                    }
                }
            }
        }

        let (slots, absent) = host.slots();
        tally.occupancy(now, step, &slots, absent);
        tally.unmet(now, step, host.pending());
    }
    Ok(ReplayOutcome {
        policy: controller.name().to_owned(),
        metrics: tally.finish(),
        ticks,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::ForecasterConfig;
    use crate::hal::Bdf;
    use crate::replay::attach::{ReactiveAttach, StaticAttach};
    use crate::replay::controller::{Reactive, Static, Vpm};
    use crate::replay::demand::VmDemand;
    use crate::replay::host::Latencies;

    fn setup() -> (DemandTrace, ReplayConfig, Policy) {
        // One VM, on for 5 minutes every 20 minutes, 10 s steps, 4 hours.
        let vfs: Vec<u32> = (0..1440).map(|i| u32::from(i % 120 >= 90)).collect();
        let trace = DemandTrace {
            name: "test".into(),
            start: 1_700_000_000.0,
            step_s: 10.0,
            vms: vec![VmDemand {
                vm: "web-1".into(),
                shape: "on/off".into(),
                vfs,
            }],
        };
        let pf: Bdf = "0000:01:00.0".parse().unwrap();
        let cfg = ReplayConfig {
            host: HostConfig {
                pf,
                total_vfs: 4,
                latencies: Latencies::default(),
                hotplug: false,
            },
            warmup_s: 3600.0,
        };
        let policy = Policy::parse(crate::policy::SAMPLE, "sample.toml".as_ref()).unwrap();
        (trace, cfg, policy)
    }

    #[test]
    fn reactive_is_never_ready_and_static_always_is() {
        let (trace, cfg, policy) = setup();
        let pf = cfg.host.pf;
        let r = replay(&trace, &cfg, &policy, &mut Reactive::new(pf)).unwrap();
        let m = &r.metrics;
        assert_eq!(m.onsets, 9, "{m:?}");
        assert_eq!(m.ready, 0, "{m:?}");
        assert_eq!(m.woken, 9);
        assert_eq!(m.parked_share(), Some(1.0), "{m:?}");
        assert_eq!((m.flaps, m.refused, m.failed), (0, 0, 0));
        assert_eq!(m.scored_s, 3.0 * 3600.0);
        assert_eq!(r.ticks, 1440);

        let s = replay(&trace, &cfg, &policy, &mut Static::new(pf)).unwrap();
        let m = &s.metrics;
        assert_eq!((m.onsets, m.ready), (9, 9), "{m:?}");
        assert_eq!(m.parked_share(), Some(0.0));
        assert_eq!(m.actions(), 0, "set up in the warm-up");
        assert_eq!(m.absent_vf_s, 0.0);
    }

    /// vpm with the agent's horizons and a short history, for these traces.
    fn test_vpm(trace: &DemandTrace, cfg: &ReplayConfig, policy: &Policy) -> Vpm {
        Vpm::new(
            cfg.host.pf,
            policy.clone(),
            trace.step_s,
            vec![60.0, 300.0],
            ForecasterConfig {
                history_cap: 720,
                calibration_window: 128,
                ..ForecasterConfig::default()
            },
            8,
        )
    }

    #[test]
    fn vpm_runs_the_agents_loop_and_keeps_the_safety_rules() {
        let (trace, cfg, policy) = setup();
        let mut vpm = test_vpm(&trace, &cfg, &policy);
        let r = replay(&trace, &cfg, &policy, &mut vpm).unwrap();
        let m = &r.metrics;
        assert_eq!(m.onsets, 9, "{m:?}");
        assert_eq!(m.refused, 0, "{:?}", r.errors);
        assert_eq!(m.failed, 0, "{:?}", r.errors);
        assert_eq!(m.flaps, 0, "{m:?}");
        assert!(m.actions() > 0);
        assert_eq!(m.ready + m.woken + m.shortfalls + m.at_capacity, m.onsets);
    }

    /// The hot-plug replay: two VMs taking turns (one busy while the other
    /// idles), one VF between them.
    fn hotplug_setup() -> (DemandTrace, ReplayConfig, Policy) {
        let (mut trace, mut cfg, _) = setup();
        let a: Vec<u32> = (0..1440).map(|i| u32::from(i % 120 >= 90)).collect();
        let b: Vec<u32> = (0..1440)
            .map(|i| u32::from((30..60).contains(&(i % 120))))
            .collect();
        trace.vms = vec![
            VmDemand {
                vm: "web-1".into(),
                shape: "on/off".into(),
                vfs: a,
            },
            VmDemand {
                vm: "web-2".into(),
                shape: "on/off".into(),
                vfs: b,
            },
        ];
        cfg.host.hotplug = true;
        cfg.host.total_vfs = 1;
        let policy = Policy::parse(
            "[devices]\nallow = [\"0000:01:00.0\"]\n\
             [hotplug]\ndemand = \"vf_demand\"\nattached_s = 60\n\
             [classes.web]\nhotplug = true\n[vms]\ndefault = \"web\"\n",
            "hotplug.toml".as_ref(),
        )
        .unwrap();
        (trace, cfg, policy)
    }

    #[test]
    fn hot_plug_baselines_connect_late_or_hold_the_vf() {
        let (trace, cfg, policy) = hotplug_setup();
        let pf = cfg.host.pf;
        let r = replay(
            &trace,
            &cfg,
            &policy,
            &mut ReactiveAttach::new(pf, policy.clone()),
        )
        .unwrap();
        let m = &r.metrics;
        assert_eq!(m.onsets, 18, "{m:?} {:?}", r.errors);
        assert_eq!(m.ready, 0, "attached only once the demand is there: {m:?}");
        assert_eq!((m.refused, m.failed), (0, 0), "{:?}", r.errors);
        assert!(m.attaches >= 18 && m.detaches >= 17, "{m:?}");

        // Static attaches the one VF to the first VM for good: the other
        // never gets it.
        let s = replay(
            &trace,
            &cfg,
            &policy,
            &mut StaticAttach::new(pf, policy.clone()),
        )
        .unwrap();
        let m = &s.metrics;
        let per = |vm: &str| m.per_vm.get(vm).map_or(0, |v| v.ready);
        assert_eq!(per("web-1"), 9, "{m:?}");
        assert_eq!(per("web-2"), 0, "{m:?}");
        assert_eq!(m.detaches, 0);
    }

    #[test]
    fn vpm_connects_the_vf_ahead_of_each_turn() {
        let (trace, cfg, policy) = hotplug_setup();
        let mut vpm = test_vpm(&trace, &cfg, &policy).hotplug();
        let r = replay(&trace, &cfg, &policy, &mut vpm).unwrap();
        let m = &r.metrics;
        assert_eq!(m.onsets, 18, "{m:?}");
        assert_eq!((m.refused, m.failed), (0, 0), "{:?}", r.errors);
        assert!(m.attaches > 0 && m.detaches > 0, "{m:?}");
        // The VF moves between the two VMs and is there before most turns.
        assert!(
            m.ready >= 9,
            "connected before only {} of 18 onsets: {m:?}",
            m.ready
        );
    }
}
