//! Property tests: the invariants every plan keeps, on random hosts,
//! forecasts and policies.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;
use crate::executor::Action;
use crate::hal::{PowerControl, PowerState};
use crate::policy::Candidate;

const NOW: f64 = 1_700_000_000.0;
const VMS: [&str; 4] = ["db-1", "web-1", "web-2", "batch-1"];
const PFS: [&str; 2] = ["0000:01:00.0", "0000:05:00.0"];

fn bdf(s: &str) -> Bdf {
    s.parse().unwrap()
}

fn power_state() -> impl Strategy<Value = PowerState> {
    prop_oneof![
        4 => Just(PowerState::D0),
        4 => Just(PowerState::D3Hot),
        1 => Just(PowerState::D3Cold),
        1 => Just(PowerState::D1),
        1 => Just(PowerState::Unknown("error".into())),
    ]
}

fn user() -> impl Strategy<Value = DeviceUse> {
    prop_oneof![
        6 => Just(DeviceUse::Free),
        3 => prop::sample::select(&VMS[..]).prop_map(|v| DeviceUse::Vm(v.to_owned())),
        1 => Just(DeviceUse::Process("pid 42 (fio)".into())),
        1 => Just(DeviceUse::Host("interface eth0 is up".into())),
    ]
}

/// A time in the last 1000 s, or unknown.
fn since() -> impl Strategy<Value = Option<f64>> {
    prop::option::weighted(0.8, (0u32..1000).prop_map(|a| NOW - f64::from(a)))
}

fn device(b: Bdf) -> impl Strategy<Value = DeviceState> {
    (
        user(),
        power_state(),
        prop::option::of(prop_oneof![
            Just(PowerControl::On),
            Just(PowerControl::Auto)
        ]),
        prop_oneof![
            Just(None),
            Just(Some(state::VFIO_DRIVER.to_owned())),
            Just(Some("nvme".to_owned()))
        ],
        since(),
        since(),
        prop::option::of(0.0..5.0f64),
    )
        .prop_map(
            move |(user, power, control, driver, power_since, idle_since, lat)| DeviceState {
                bdf: b,
                vendor: 0x1b36,
                device: 0x10,
                driver,
                user,
                power,
                control,
                power_since,
                idle_since,
                wake_latency_s: lat,
            },
        )
}

fn pf_state(b: Bdf) -> impl Strategy<Value = PfState> {
    (0u32..=7).prop_flat_map(move |total| {
        (
            0..=total,
            prop::option::of(
                ((0u32..2000), (0u32..=7)).prop_map(|(ago, from)| VfCountChange {
                    at: NOW - f64::from(ago),
                    from,
                }),
            ),
        )
            .prop_flat_map(move |(num, last_change)| {
                let vfs: Vec<_> = (1..=num)
                    .map(|i| {
                        device(Bdf::new(b.domain, b.bus, 0, u8::try_from(i).unwrap()).unwrap())
                    })
                    .collect();
                vfs.prop_map(move |vfs| PfState {
                    bdf: b,
                    vendor: 0x1b36,
                    device: 0x10,
                    total_vfs: total,
                    num_vfs: num,
                    vfs,
                    last_change,
                    peak_held: 0,
                })
            })
    })
}

fn host_state() -> impl Strategy<Value = HostState> {
    (
        prop::collection::vec(prop::bool::ANY, 2),
        prop::collection::vec(prop::bool::ANY, VMS.len()),
        prop::collection::vec(prop::bool::ANY, 4),
        // Per VM: vpm can hot-plug into it; per attached VF: by vpm, since.
        prop::collection::vec(prop::bool::ANY, VMS.len()),
        prop::collection::vec((prop::bool::weighted(0.8), 0u32..1000), 16),
    )
        .prop_flat_map(|(pf_on, vm_on, dev_on, hp_on, attach_info)| {
            let pfs: Vec<_> = PFS
                .iter()
                .zip(&pf_on)
                .filter(|(_, on)| **on)
                .map(|(p, _)| pf_state(bdf(p)))
                .collect();
            let devs: Vec<_> = (0u8..4)
                .zip(&dev_on)
                .filter(|(_, on)| **on)
                .map(|(i, _)| device(Bdf::new(0, 2, 0, i).unwrap()))
                .collect();
            let vms: Vec<VmState> = VMS
                .iter()
                .zip(&vm_on)
                .filter(|(_, on)| **on)
                .map(|(v, _)| VmState::named(*v))
                .collect();
            let hp_on = hp_on.clone();
            let attach_info = attach_info.clone();
            (pfs, devs).prop_map(move |(pfs, devices)| {
                let mut info = attach_info.iter().cycle();
                let vms = vms
                    .iter()
                    .zip(&hp_on)
                    .map(|(v, on)| {
                        let mut v = v.clone();
                        // What a VM vpm can reach has attached: the VFs it holds.
                        v.pid = 100;
                        v.hotplug = on.then(|| VmHotplug {
                            attached: pfs
                                .iter()
                                .flat_map(|p| &p.vfs)
                                .filter(|d| d.user.vm() == Some(v.name.as_str()))
                                .map(|d| {
                                    let (by_vpm, ago) = info.next().copied().unwrap_or((true, 0));
                                    AttachedVf {
                                        vf: d.bdf,
                                        by_vpm,
                                        since: Some(NOW - f64::from(ago)),
                                    }
                                })
                                .collect(),
                        });
                        v
                    })
                    .collect();
                HostState {
                    pfs,
                    devices,
                    vms,
                    reaction_s: 0.0,
                }
            })
        })
}

fn outlook(scale: f64) -> impl Strategy<Value = Outlook> {
    prop::collection::vec(
        (
            prop::sample::select(vec![60.0, 300.0, 900.0]),
            0.0..scale,
            0.0..scale,
        )
            // A low point forecast's bound is, about a third of the time, a
            // likely rise (its chance from the same draws, so adding it did
            // not reshuffle the cases the rule-coverage test relies on).
            .prop_map(move |(h, p, extra)| Point {
                horizon_s: h,
                predicted: p,
                upper: p + extra,
                rise: (p < 0.3 * scale).then(|| extra / scale),
            }),
        1..3,
    )
    .prop_map(|points| Outlook { points })
}

fn vm_forecasts() -> impl Strategy<Value = VmForecasts> {
    let targets: Vec<Bdf> = PFS
        .iter()
        .flat_map(|p| {
            let pf = bdf(p);
            (1..=7u8).map(move |i| Bdf::new(pf.domain, pf.bus, 0, i).unwrap())
        })
        .chain((0u8..4).map(|i| Bdf::new(0, 2, 0, i).unwrap()))
        .collect();
    (
        prop::collection::btree_map(
            prop::sample::select(PFS.map(bdf).to_vec()),
            outlook(5.0),
            0..3,
        ),
        prop::collection::btree_map(prop::sample::select(targets), outlook(20.0), 0..4),
        prop::option::weighted(0.8, prop_oneof![outlook(4.0), outlook(0.5)]),
        prop::option::of(outlook(8e9)),
    )
        .prop_map(|(vfs, devices, cpu, memory)| VmForecasts {
            vfs,
            devices,
            cpu,
            memory,
            other: Default::default(),
        })
}

fn forecasts() -> impl Strategy<Value = Forecasts> {
    prop::collection::btree_map(
        prop::sample::select(VMS.map(str::to_owned).to_vec()),
        vm_forecasts(),
        0..=4,
    )
    .prop_map(|vms| Forecasts { vms })
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        prop::sample::subsequence(vec!["\"0000:01:00.0\"", "\"0000:05:00.0\"", "\"0000:02:00.1\"", "\"1b36:0010\""], 0..=2),
        prop_oneof![0u32..6, Just(100)],
        prop_oneof![Just("\"latency\"".to_owned()), Just("\"power\"".to_owned()), (0.0..=1.0f64).prop_map(|w| format!("{w}"))],
        prop::sample::select(vec![60.0, 300.0, 600.0]),
        (0u32..400, 0u32..400, 0u32..1200),
        0u8..3,
        (prop::bool::ANY, 0u32..600, prop::sample::select(vec![0.5, 1.0, 2.0])),
    )
        .prop_map(|(allow, max, pref, horizon, (awake, parked, vf_count), custom, (hp, attached, per_vf))| {
            let classes = if custom == 2 {
                // Everyone takes hot-plug, at three priorities.
                "[classes.hi]\npriority = 300\nhotplug = true\ndetach = false\n\
                 [classes.mid]\npriority = 200\nhotplug = true\nmax_attached = 2\npreempt_dwell = true\n\
                 [classes.lo]\npriority = 100\nhotplug = true\n\
                 [vms]\nrules = [{ vm = \"db-*\", class = \"hi\" }, { vm = \"web-*\", class = \"mid\" }]\n\
                 default = \"lo\"\n"
            } else if custom == 1 {
                "[classes.gold]\npriority = 9\nmin_vfs = 1\nmax_vfs = 3\npreempt_dwell = true\n\
                 hotplug = true\ndetach = false\n\
                 [classes.silver]\npriority = 5\nhotplug = true\nmax_attached = 2\n\
                 [classes.tin]\nmax_vfs = 1\nhotplug = true\n\
                 [vms]\nrules = [{ vm = \"db-*\", class = \"gold\" }, { vm = \"web-1\", class = \"silver\" }]\n\
                 default = \"tin\"\n"
            } else {
                "[vms]\nrules = [{ vm = \"db-?\", class = \"guaranteed\" }, \
                 { vm = \"web-*\", class = \"burstable\" }]\n"
            };
            let text = format!(
                "[devices]\nallow = [{}]\n[plan]\nmax_actions_per_tick = {max}\n\
                 preference = {pref}\nhorizon_s = {horizon}\n\
                 [dwell]\nawake_s = {awake}\nparked_s = {parked}\nvf_count_s = {vf_count}\n\
                 [hotplug]\nper_vf = {per_vf}\nattached_s = {attached}\ngive_back = \"{}\"\n{}{classes}",
                allow.join(", "),
                if attached % 4 == 3 { "contention" } else { "idle" },
                if hp { "demand = \"cpu\"\n" } else { "" }
            );
            Policy::parse(&text, std::path::Path::new("prop.toml")).unwrap()
        })
}

/// Where an action's target sits in the host.
enum Found<'a> {
    Pf(&'a PfState),
    Vf(&'a PfState, &'a DeviceState),
    Device(&'a DeviceState),
}

fn find(host: &HostState, b: Bdf) -> Option<Found<'_>> {
    for pf in &host.pfs {
        if pf.bdf == b {
            return Some(Found::Pf(pf));
        }
        if let Some(v) = pf.vfs.iter().find(|v| v.bdf == b) {
            return Some(Found::Vf(pf, v));
        }
    }
    host.devices.iter().find(|d| d.bdf == b).map(Found::Device)
}

fn candidate(found: &Found<'_>) -> Candidate {
    match found {
        Found::Pf(pf) => pf.candidate(),
        Found::Vf(pf, v) => v.candidate(Some(pf)),
        Found::Device(d) => d.candidate(None),
    }
}

fn settled(since: Option<f64>, dwell: f64) -> bool {
    since.is_none_or(|t| NOW - t >= dwell)
}

/// The VFs `vm` needs of `pf` over the horizon (the pool rule, restated):
/// its VF forecast, or on the hot-plug PF (the lowest allowed one) its
/// hot-plug want if larger.
fn need(policy: &Policy, f: &Forecasts, host: &HostState, vm: &VmState, pf: Bdf) -> Option<u32> {
    let class = policy.class_of(&vm.name).class;
    let forecast = f
        .vm(&vm.name)
        .and_then(|v| v.vfs.get(&pf))
        .and_then(|o| o.peak(policy.plan.horizon_s))
        .map(|p| vf_units(p.upper));
    let hp_pf = host
        .pfs
        .iter()
        .filter(|p| policy.devices.allows(&p.candidate()))
        .map(|p| p.bdf)
        .min();
    let hotplug = policy
        .hotplug
        .demand
        .as_deref()
        .filter(|_| class.hotplug && vm.hotplug.is_some() && hp_pf == Some(pf))
        .and_then(|r| f.vm(&vm.name)?.resource(r)?.peak(policy.plan.horizon_s))
        .map(|_| class.max_attached)
        .filter(|&n| n > 0);
    let units = match (forecast, hotplug) {
        (None, None) => return None,
        (a, b) => a.unwrap_or(0).max(b.unwrap_or(0)),
    };
    Some(class.clamp_vfs(units))
}

fn check(host: &HostState, policy: &Policy, p: &Plan) -> Result<(), TestCaseError> {
    prop_assert!(p.actions.len() <= policy.plan.max_actions_per_tick as usize);
    let mut targets = BTreeSet::new();
    let resized: BTreeSet<Bdf> = p
        .actions
        .iter()
        .filter_map(|a| match a.action {
            Action::SetVfs { pf, .. } => Some(pf),
            _ => None,
        })
        .collect();
    for a in &p.actions {
        let target = a.action.target();
        prop_assert!(targets.insert(target), "two actions on {target}");
        prop_assert!(!a.reason.is_empty());
        let found = find(host, target);
        prop_assert!(
            found.is_some(),
            "{} targets a device not in the host",
            a.action
        );
        let Some(found) = found else { continue };
        prop_assert!(
            policy.devices.allows(&candidate(&found)),
            "{} is not allowed",
            a.action
        );
        let preempts =
            a.vm.as_deref()
                .is_some_and(|vm| policy.class_of(vm).class.preempt_dwell);
        if a.breaks_dwell {
            prop_assert!(
                preempts,
                "{} breaks a dwell without preempt_dwell",
                a.action
            );
        }
        match (a.action.clone(), &found) {
            (Action::SetVfs { count, .. }, Found::Pf(pf)) => {
                prop_assert!(
                    pf.vfs.iter().all(|v| !v.user.is_held()),
                    "SetVfs on {} with a held VF",
                    pf.bdf
                );
                prop_assert_ne!(count, pf.num_vfs);
                prop_assert!(count <= pf.total_vfs);
                if let Some(c) = pf.last_change
                    && !settled(Some(c.at), policy.dwell.vf_count_s)
                {
                    prop_assert!(count > pf.num_vfs, "shrink within the dwell");
                    if c.from > pf.num_vfs {
                        prop_assert!(a.breaks_dwell, "regrow within the dwell: {}", a.reason);
                    }
                }
            }
            (Action::Park { .. }, Found::Vf(_, d) | Found::Device(d)) => {
                prop_assert!(!d.user.is_held(), "park of a held device: {}", a.reason);
                prop_assert_eq!(d.readiness(), Readiness::Awake);
                prop_assert!(settled(d.power_since, policy.dwell.awake_s), "{}", a.reason);
            }
            (Action::Wake { .. }, Found::Vf(_, d) | Found::Device(d)) => {
                prop_assert!(d.readiness() != Readiness::Awake);
                prop_assert!(d.readiness() != Readiness::Unknown);
                let settled = settled(d.power_since, policy.dwell.parked_s);
                prop_assert!(settled || (a.breaks_dwell && preempts), "{}", a.reason);
            }
            (Action::Attach { vm, .. }, Found::Vf(_, d)) => {
                prop_assert!(!d.user.is_held(), "attach of a held VF: {}", a.reason);
                prop_assert_eq!(d.driver.as_deref(), Some(state::VFIO_DRIVER));
                let state = host.vms.iter().find(|v| v.name == vm.name);
                prop_assert!(state.is_some_and(|s| s.hotplug.is_some()), "{}", a.reason);
                let class = policy.class_of(&vm.name).class;
                prop_assert!(class.hotplug);
                // The attach wakes an asleep VF: the wake's dwell holds.
                if d.readiness() != Readiness::Awake {
                    let settled = settled(d.power_since, policy.dwell.parked_s);
                    prop_assert!(
                        settled || (a.breaks_dwell && class.preempt_dwell),
                        "{}",
                        a.reason
                    );
                }
                // VFs vpm did not plug do not count against max_attached.
                let had = state
                    .and_then(|s| s.hotplug.as_ref())
                    .map_or(0, |h| h.attached.iter().filter(|x| x.by_vpm).count());
                let adds = p
                    .actions
                    .iter()
                    .filter(
                        |x| matches!(&x.action, Action::Attach { vm: v, .. } if v.name == vm.name),
                    )
                    .count();
                prop_assert!(had + adds <= class.max_attached as usize, "{}", a.reason);
                prop_assert_eq!(a.vm.as_deref(), Some(vm.name.as_str()));
            }
            (Action::Detach { vm, vf }, Found::Vf(_, d)) => {
                prop_assert_eq!(d.user.vm(), Some(vm.name.as_str()), "{}", a.reason);
                let class = policy.class_of(&vm.name).class;
                prop_assert!(class.detach, "detach from a class with detach = false");
                let attached = host
                    .vms
                    .iter()
                    .find(|v| v.name == vm.name)
                    .and_then(|v| v.hotplug.as_ref())
                    .and_then(|h| h.attached.iter().find(|x| x.vf == vf));
                prop_assert!(
                    attached.is_some_and(|x| x.by_vpm),
                    "vpm detaches only what it plugged"
                );
                let since = attached.and_then(|x| x.since);
                prop_assert!(
                    settled(since, policy.hotplug.attached_s) || (a.breaks_dwell && preempts),
                    "{}",
                    a.reason
                );
            }
            (action, _) => prop_assert!(false, "{action} on the wrong kind of device"),
        }
        if let Found::Vf(pf, _) = found {
            prop_assert!(
                !resized.contains(&pf.bdf),
                "{} on a VF of a PF being resized",
                a.action
            );
        }
    }
    for r in &p.recommendations {
        for s in [r.cpu, r.memory].into_iter().flatten() {
            prop_assert!(s.request.is_finite() && s.request >= 0.0 && s.request <= s.limit);
        }
    }
    Ok(())
}

fn reversed(host: &HostState) -> HostState {
    let mut h = host.clone();
    h.pfs.reverse();
    for pf in &mut h.pfs {
        pf.vfs.reverse();
    }
    h.devices.reverse();
    h.vms.reverse();
    h
}

proptest! {
    // No regression files: the tree is shared; a failure prints its input.
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_plan_keeps_the_invariants(
        host in host_state(),
        f in forecasts(),
        policy in policy(),
    ) {
        let p = plan(NOW, &host, &f, &policy);
        check(&host, &policy, &p)?;
        // Deterministic, whatever the order of the input lists.
        prop_assert_eq!(&plan(NOW, &host, &f, &policy), &p);
        prop_assert_eq!(&plan(NOW, &reversed(&host), &f, &policy), &p);

        // A slow agent parks nothing it could not wake before a use the
        // plan can see (binding a VF to attach it is another matter).
        let mut slow = host.clone();
        slow.reaction_s = 0.9 * policy.plan.horizon_s;
        let p = plan(NOW, &slow, &f, &policy);
        check(&slow, &policy, &p)?;
        let h = policy.plan.horizon_s;
        let sight = f.reach().map_or(h, |r| r.clamp(0.0, h));
        for a in &p.actions {
            let Action::Park { bdf } = a.action else { continue };
            if a.reason.contains("so it can be attached next") {
                continue;
            }
            let d = match find(&slow, bdf) {
                Some(Found::Vf(_, d) | Found::Device(d)) => d,
                _ => continue,
            };
            let latency = d
                .wake_latency_s
                .filter(|l| l.is_finite() && *l >= 0.0)
                .unwrap_or(policy.plan.wake_latency_s);
            prop_assert!(
                slow.reaction_s + latency <= sight,
                "parked {bdf} that takes {} s to wake, the plan seeing {sight} s: {}",
                slow.reaction_s + latency,
                a.reason
            );
        }
    }

    #[test]
    fn no_allow_list_means_no_actions(host in host_state(), f in forecasts(), mut policy in policy()) {
        policy.devices.allow.clear();
        let p = plan(NOW, &host, &f, &policy);
        prop_assert!(p.actions.is_empty());
        prop_assert!(p.deferred.is_empty());
    }

    #[test]
    fn a_free_settled_pool_covers_the_sum_of_upper_bounds(
        host in host_state(),
        f in forecasts(),
        mut policy in policy(),
    ) {
        policy.plan.max_actions_per_tick = 100;
        let p = plan(NOW, &host, &f, &policy);
        for pf in &host.pfs {
            let free = pf.vfs.iter().all(|v| !v.user.is_held());
            let settled = pf.last_change.is_none_or(|c| settled(Some(c.at), policy.dwell.vf_count_s));
            if !free || !settled || !policy.devices.allows(&pf.candidate()) {
                continue;
            }
            let needs: Vec<u32> = host
                .vms
                .iter()
                .filter_map(|vm| need(&policy, &f, &host, vm, pf.bdf))
                .collect();
            let want = needs.iter().map(|&n| u64::from(n)).sum::<u64>().min(u64::from(pf.total_vfs));
            let after = p
                .actions
                .iter()
                .find_map(|a| match a.action {
                    Action::SetVfs { pf: b, count } if b == pf.bdf => Some(count),
                    _ => None,
                })
                .unwrap_or(pf.num_vfs);
            prop_assert!(
                u64::from(after) >= want,
                "{}: {} VFs after the plan, the needs {:?} sum to {}",
                pf.bdf, after, needs, want
            );
            if after != pf.num_vfs {
                prop_assert_eq!(u64::from(after), want, "a resize goes to the sum exactly");
            }
        }
    }
}

/// The generators reach every rule: without this the properties above
/// could hold vacuously.
#[test]
fn the_generators_reach_every_rule() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let strategy = (host_state(), forecasts(), policy());
    let mut seen = BTreeSet::new();
    for _ in 0..2000 {
        let (host, f, policy) = strategy.new_tree(&mut runner).unwrap().current();
        let p = plan(NOW, &host, &f, &policy);
        for a in &p.actions {
            let kind = match a.action.clone() {
                Action::SetVfs { pf, count } => {
                    let cur = host
                        .pfs
                        .iter()
                        .find(|x| x.bdf == pf)
                        .map_or(0, |x| x.num_vfs);
                    if count > cur { "grow" } else { "shrink" }
                }
                Action::Wake { .. } if a.breaks_dwell => "wake through a dwell",
                Action::Wake { .. } => "wake",
                Action::Park { .. } => "park",
                Action::Attach { .. } => "attach",
                Action::Detach { .. } if a.vm.is_some() => "move",
                Action::Detach { .. } => "detach",
            };
            seen.insert(kind);
        }
        for d in &p.deferred {
            seen.insert(match &d.action {
                None => "shortfall",
                Some(_) if d.reason.contains("max_actions_per_tick") => "over budget",
                Some(_) => "deferred",
            });
        }
    }
    let all = [
        "grow",
        "shrink",
        "wake",
        "wake through a dwell",
        "park",
        "attach",
        "move",
        "detach",
        "shortfall",
        "over budget",
        "deferred",
    ];
    for kind in all {
        assert!(seen.contains(kind), "no case reached {kind}: {seen:?}");
    }
}
