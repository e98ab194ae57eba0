//! Scenario tests: one rule each, in the words an operator would use.

use super::*;
use crate::executor::Action;
use crate::hal::{PowerControl, PowerState};

const NOW: f64 = 1_700_000_000.0;
const PF: &str = "0000:01:00.0";
const NIC: &str = "0000:02:00.0";

fn bdf(s: &str) -> Bdf {
    s.parse().unwrap()
}

/// The `i`-th VF of [`PF`] (1-based): `0000:01:00.i`.
fn vf_bdf(i: u8) -> Bdf {
    Bdf::new(0, 1, 0, i).unwrap()
}

/// A policy allowing the PF and the NIC, with `extra` TOML after `[devices]`.
fn policy(extra: &str) -> Policy {
    let text = format!("[devices]\nallow = [\"{PF}\", \"{NIC}\"]\n{extra}");
    Policy::parse(&text, std::path::Path::new("test.toml")).unwrap()
}

/// Sample classes: db-* guaranteed, web-* burstable, the rest best-effort.
const CLASSES: &str = "[vms]\nrules = [{ vm = \"db-*\", class = \"guaranteed\" }, \
                       { vm = \"web-*\", class = \"burstable\" }]\n";

/// A free device parked in D3hot for an hour, never used.
fn dev(b: Bdf) -> DeviceState {
    DeviceState {
        bdf: b,
        vendor: 0x1b36,
        device: 0x10,
        driver: Some(state::VFIO_DRIVER.into()),
        user: DeviceUse::Free,
        power: PowerState::D3Hot,
        control: Some(PowerControl::Auto),
        power_since: Some(NOW - 3600.0),
        idle_since: None,
        wake_latency_s: None,
    }
}

trait Tweak {
    fn awake(self) -> Self;
    fn held_by(self, vm: &str) -> Self;
    fn changed_ago(self, s: f64) -> Self;
    fn idle_for(self, s: f64) -> Self;
}

impl Tweak for DeviceState {
    fn awake(mut self) -> Self {
        self.power = PowerState::D0;
        self.control = Some(PowerControl::On);
        self
    }
    fn held_by(mut self, vm: &str) -> Self {
        self.user = DeviceUse::Vm(vm.into());
        self
    }
    fn changed_ago(mut self, s: f64) -> Self {
        self.power_since = Some(NOW - s);
        self
    }
    fn idle_for(mut self, s: f64) -> Self {
        self.idle_since = Some(NOW - s);
        self
    }
}

fn pf(total: u32, vfs: Vec<DeviceState>) -> PfState {
    PfState {
        bdf: bdf(PF),
        vendor: 0x1b36,
        device: 0x10,
        total_vfs: total,
        num_vfs: u32::try_from(vfs.len()).unwrap(),
        vfs,
        last_change: None,
        peak_held: 0,
    }
}

fn host(pfs: Vec<PfState>, devices: Vec<DeviceState>, vms: &[&str]) -> HostState {
    HostState {
        pfs,
        devices,
        vms: vms.iter().map(|n| VmState::named(*n)).collect(),
        reaction_s: 0.0,
    }
}

/// `vm` will hold VFs of [`PF`]: `(horizon_s, predicted, upper)` points.
fn want_vfs(f: &mut Forecasts, vm: &str, points: &[(f64, f64, f64)]) {
    f.vms
        .entry(vm.into())
        .or_default()
        .vfs
        .insert(bdf(PF), Outlook::from_points(points));
}

/// `vm` will be this active on `b` (events/s).
fn want_device(f: &mut Forecasts, vm: &str, b: Bdf, points: &[(f64, f64, f64)]) {
    f.vms
        .entry(vm.into())
        .or_default()
        .devices
        .insert(b, Outlook::from_points(points));
}

fn actions(p: &Plan) -> Vec<Action> {
    p.actions.iter().map(|a| a.action.clone()).collect()
}

/// The plan's VF count changes.
fn set_vfs(p: &Plan) -> Vec<Action> {
    actions(p)
        .into_iter()
        .filter(|a| matches!(a, Action::SetVfs { .. }))
        .collect()
}

/// One VF count change of [`PF`] to `count`.
fn resize_to(count: u32) -> Vec<Action> {
    vec![Action::SetVfs { pf: bdf(PF), count }]
}

fn reasons(p: &Plan) -> String {
    let mut s: Vec<String> = p
        .actions
        .iter()
        .map(|a| format!("do: {}", a.reason))
        .collect();
    s.extend(p.deferred.iter().map(|d| format!("defer: {}", d.reason)));
    s.join("\n")
}

#[test]
fn without_a_policy_a_plan_only_recommends() {
    let h = host(vec![pf(4, vec![])], vec![dev(bdf(NIC))], &["web-1"]);
    let mut f = Forecasts::default();
    want_vfs(&mut f, "web-1", &[(60.0, 1.0, 2.0)]);
    want_device(&mut f, "web-1", bdf(NIC), &[(60.0, 50.0, 80.0)]);
    f.add_points(
        "web-1",
        Resource::Cpu,
        &[Point {
            horizon_s: 60.0,
            predicted: 0.5,
            upper: 0.9,
            rise: None,
        }],
    );
    let p = plan(NOW, &h, &f, &Policy::default());
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert!(p.deferred.is_empty(), "{:?}", p.deferred);
    assert_eq!(p.recommendations.len(), 1);
    assert_eq!(p.generated_at, NOW);
}

#[test]
fn a_pool_is_created_ahead_of_predicted_demand() {
    let h = host(vec![pf(8, vec![])], vec![], &["web-1"]);
    let mut f = Forecasts::default();
    want_vfs(&mut f, "web-1", &[(60.0, 0.0, 0.4), (300.0, 1.2, 1.8)]);
    let p = plan(NOW, &h, &f, &policy(CLASSES));
    assert_eq!(
        actions(&p),
        vec![Action::SetVfs {
            pf: bdf(PF),
            count: 2
        }]
    );
    let a = &p.actions[0];
    assert_eq!((a.vm.as_deref(), a.priority), (Some("web-1"), 200));
    assert!(
        a.reason.starts_with(
            "VM web-1 (burstable) is predicted to use 2 VFs of 0000:01:00.0 within 300 s \
             (upper bound 1.8) and holds 0; the pool has 0 VFs (0 free) for a predicted \
             peak of 2 VFs: set it to 2 ahead of demand"
        ),
        "{}",
        a.reason
    );
}

#[test]
fn a_pool_is_the_sum_of_its_vms_needs_capped_by_the_pf() {
    let h = host(vec![pf(4, vec![])], vec![], &["db-1", "web-1", "batch-1"]);
    let mut f = Forecasts::default();
    want_vfs(&mut f, "db-1", &[(300.0, 1.0, 1.1)]);
    want_vfs(&mut f, "web-1", &[(300.0, 1.0, 2.0)]);
    want_vfs(&mut f, "batch-1", &[(300.0, 2.0, 3.0)]);
    let p = plan(NOW, &h, &f, &policy(CLASSES));
    assert_eq!(
        actions(&p),
        vec![Action::SetVfs {
            pf: bdf(PF),
            count: 4
        }]
    );
    // The guaranteed VM asks least but goes first; best-effort gets what is left.
    assert_eq!(p.actions[0].vm.as_deref(), Some("db-1"));
    let short: Vec<&Deferred> = p.deferred.iter().filter(|d| d.action.is_none()).collect();
    assert_eq!(short.len(), 1, "{}", reasons(&p));
    assert_eq!(short[0].vm.as_deref(), Some("batch-1"));
    assert!(
        short[0].reason.contains("supports 4 VFs"),
        "{}",
        short[0].reason
    );
    assert!(
        short[0].reason.ends_with("2 VFs short"),
        "{}",
        short[0].reason
    );
}

#[test]
fn a_held_vf_freezes_the_vf_count() {
    let vfs = vec![dev(vf_bdf(1)).awake().held_by("db-1"), dev(vf_bdf(2))];
    let h = host(vec![pf(8, vfs)], vec![], &["db-1", "web-1"]);
    let mut f = Forecasts::default();
    want_vfs(&mut f, "web-1", &[(60.0, 2.0, 2.5)]);
    let p = plan(NOW, &h, &f, &policy(CLASSES));
    assert!(
        !actions(&p)
            .iter()
            .any(|a| matches!(a, Action::SetVfs { .. })),
        "{:?}",
        p.actions
    );
    let d = p
        .deferred
        .iter()
        .find(|d| matches!(d.action, Some(Action::SetVfs { count: 4, .. })))
        .expect("the growth is deferred");
    assert!(
        d.reason.contains("a VF is held (0000:01:00.1 by VM db-1)")
            && d.reason.contains("changes only through 0"),
        "{}",
        d.reason
    );
    // The free VF it has is still woken for web-1.
    assert_eq!(actions(&p), vec![Action::Wake { bdf: vf_bdf(2) }]);
}

#[test]
fn a_pool_never_shrinks_under_a_held_vf() {
    let mut vfs = vec![dev(vf_bdf(1)).awake().held_by("web-1")];
    vfs.extend((2..=4).map(|i| dev(vf_bdf(i))));
    let mut the_pf = pf(8, vfs);
    the_pf.last_change = Some(VfCountChange {
        at: NOW - 86_400.0,
        from: 0,
    });
    let h = host(vec![the_pf], vec![], &["web-1"]);
    let mut f = Forecasts::default();
    want_vfs(&mut f, "web-1", &[(300.0, 1.0, 1.0)]);
    let p = plan(NOW, &h, &f, &policy(CLASSES));
    assert!(p.actions.is_empty(), "{}", reasons(&p));
    assert!(
        p.deferred.is_empty(),
        "spares are kept quietly: {}",
        reasons(&p)
    );
}

#[test]
fn a_pool_shrinks_only_with_evidence_and_after_its_dwell() {
    let make = |changed_ago: f64| {
        let mut the_pf = pf(8, (1..=4).map(|i| dev(vf_bdf(i))).collect());
        the_pf.last_change = Some(VfCountChange {
            at: NOW - changed_ago,
            from: 0,
        });
        host(vec![the_pf], vec![], &["web-1"])
    };
    let mut f = Forecasts::default();
    want_vfs(&mut f, "web-1", &[(300.0, 0.5, 1.0)]);
    let pol = policy(CLASSES);

    let p = plan(NOW, &make(1000.0), &f, &pol);
    assert_eq!(
        actions(&p),
        vec![Action::SetVfs {
            pf: bdf(PF),
            count: 1
        }]
    );
    assert!(
        p.actions[0].reason.contains("shrink the pool from 4 to 1"),
        "{}",
        p.actions[0].reason
    );
    assert_eq!((p.actions[0].vm.clone(), p.actions[0].priority), (None, 0));

    // Resized 100 s ago: the shrink waits; web-1's VF is woken meanwhile.
    let p = plan(NOW, &make(100.0), &f, &pol);
    assert_eq!(
        actions(&p),
        vec![Action::Wake { bdf: vf_bdf(1) }],
        "{}",
        reasons(&p)
    );
    assert!(
        p.deferred[0]
            .reason
            .contains("it changed from 0 to 4 100 s ago")
            && p.deferred[0].reason.contains("vf_count_s = 300 s"),
        "{}",
        reasons(&p)
    );

    // No forecast for the PF at all (e.g. just after start): keep the VFs.
    let p = plan(NOW, &make(1000.0), &Forecasts::default(), &pol);
    assert!(
        p.actions.is_empty() && p.deferred.is_empty(),
        "{}",
        reasons(&p)
    );
}

#[test]
fn regrowing_a_pool_just_shrunk_waits_unless_the_class_may_preempt() {
    let mut the_pf = pf(8, vec![dev(vf_bdf(1))]);
    the_pf.last_change = Some(VfCountChange {
        at: NOW - 30.0,
        from: 3,
    });
    let h = host(vec![the_pf], vec![], &["web-1", "db-1"]);
    let pol = policy(CLASSES);

    let mut f = Forecasts::default();
    want_vfs(&mut f, "web-1", &[(60.0, 2.0, 3.0)]);
    let p = plan(NOW, &h, &f, &pol);
    assert!(
        !actions(&p)
            .iter()
            .any(|a| matches!(a, Action::SetVfs { .. }))
    );
    assert!(
        reasons(&p).contains("regrowing now would flap"),
        "{}",
        reasons(&p)
    );

    want_vfs(&mut f, "db-1", &[(60.0, 1.0, 1.0)]);
    let p = plan(NOW, &h, &f, &pol);
    assert_eq!(
        actions(&p),
        vec![Action::SetVfs {
            pf: bdf(PF),
            count: 4
        }]
    );
    let a = &p.actions[0];
    assert!(a.breaks_dwell);
    assert_eq!(a.vm.as_deref(), Some("db-1"));
    assert!(
        a.reason
            .contains("VM db-1 (guaranteed) may cut a dwell short"),
        "{}",
        a.reason
    );
}

#[test]
fn class_min_and_max_vfs_bound_what_a_vm_is_given() {
    let pol = policy(
        "[classes.gold]\nmin_vfs = 1\n[classes.tin]\nmax_vfs = 2\n\
         [vms]\nrules = [{ vm = \"g-*\", class = \"gold\" }]\ndefault = \"tin\"\n",
    );
    let h = host(vec![pf(8, vec![])], vec![], &["g-1", "t-1"]);
    let mut f = Forecasts::default();
    want_vfs(&mut f, "g-1", &[(300.0, 0.0, 0.0)]);
    want_vfs(&mut f, "t-1", &[(300.0, 4.0, 5.0)]);
    let p = plan(NOW, &h, &f, &pol);
    assert_eq!(
        actions(&p),
        vec![Action::SetVfs {
            pf: bdf(PF),
            count: 3
        }]
    );
    let all = reasons(&p);
    assert!(
        all.contains("its class allows at most 2 VFs (max_vfs)"),
        "{all}"
    );
}

#[test]
fn free_vfs_are_woken_for_the_vfs_vms_will_open() {
    let vfs = vec![
        dev(vf_bdf(1)).awake().held_by("web-1"),
        dev(vf_bdf(2)),
        dev(vf_bdf(3)),
    ];
    let h = host(vec![pf(3, vfs)], vec![], &["web-1"]);
    let mut f = Forecasts::default();
    want_vfs(&mut f, "web-1", &[(60.0, 1.4, 1.9)]);
    let p = plan(NOW, &h, &f, &policy(CLASSES));
    assert_eq!(actions(&p), vec![Action::Wake { bdf: vf_bdf(2) }]);
    let r = &p.actions[0].reason;
    assert!(
        r.contains("VM web-1 (burstable) is predicted to use 2 VFs of 0000:01:00.0")
            && r.contains("holds 1")
            && r.contains("0000:01:00.0 has 0 free VFs awake")
            && r.contains("0000:01:00.2 is in D3hot: wake it ahead of use (wake latency 1 s)"),
        "{r}"
    );
}

#[test]
fn the_preference_sets_how_early_devices_are_woken() {
    // Use is predicted 300 s out, not at 60 s.
    let h = host(vec![], vec![dev(bdf(NIC))], &["web-1"]);
    let mut f = Forecasts::default();
    want_device(
        &mut f,
        "web-1",
        bdf(NIC),
        &[(60.0, 0.0, 0.1), (300.0, 20.0, 40.0)],
    );
    let latency = plan(NOW, &h, &f, &policy("[plan]\npreference = \"latency\"\n"));
    assert_eq!(actions(&latency), vec![Action::Wake { bdf: bdf(NIC) }]);
    assert!(
        latency.actions[0].reason.contains("within 301 s"),
        "{}",
        reasons(&latency)
    );
    let power = plan(NOW, &h, &f, &policy("[plan]\npreference = \"power\"\n"));
    assert!(power.actions.is_empty(), "{}", reasons(&power));
}

#[test]
fn devices_are_woken_earlier_by_the_agents_reaction_time() {
    // Use is predicted 4 s out; the wake window is 0.5 s of latency and half
    // the 2 s horizon.
    let mut h = host(vec![], vec![dev(bdf(NIC))], &["web-1"]);
    let mut f = Forecasts::default();
    want_device(
        &mut f,
        "web-1",
        bdf(NIC),
        &[(1.0, 0.0, 0.1), (4.0, 20.0, 40.0)],
    );
    let pol = policy(
        "[plan]
horizon_s = 2
wake_latency_s = 0.5
",
    );
    let prompt = plan(NOW, &h, &f, &pol);
    assert!(prompt.actions.is_empty(), "{}", reasons(&prompt));
    // An agent that takes 3 s from its data to acting wakes it now.
    h.reaction_s = 3.0;
    let slow = plan(NOW, &h, &f, &pol);
    assert_eq!(actions(&slow), vec![Action::Wake { bdf: bdf(NIC) }]);
    assert!(
        slow.actions[0]
            .reason
            .contains("wake it ahead of use (wake latency 0.5 s, plus 3 s the agent takes to act)"),
        "{}",
        reasons(&slow)
    );
}

#[test]
fn idle_awake_devices_are_parked_after_their_dwell_and_grace() {
    let pol = policy(CLASSES);
    let with = |d: DeviceState| host(vec![], vec![d], &[]);
    let nic = || dev(bdf(NIC)).awake();

    let p = plan(
        NOW,
        &with(nic().changed_ago(600.0).idle_for(600.0)),
        &Forecasts::default(),
        &pol,
    );
    assert_eq!(actions(&p), vec![Action::Park { bdf: bdf(NIC) }]);
    assert!(
        p.actions[0]
            .reason
            .starts_with("0000:02:00.0 is free and idle for 600 s; no use of it"),
        "{}",
        p.actions[0].reason
    );
    // Woken 10 s ago: [dwell] awake_s (60 s) is not over.
    let p = plan(
        NOW,
        &with(nic().changed_ago(10.0).idle_for(600.0)),
        &Forecasts::default(),
        &pol,
    );
    assert!(p.actions.is_empty(), "{}", reasons(&p));
    // Idle for 100 s: balanced waits (1 - 0.5) * 300 = 150 s; power does not wait.
    let h = with(nic().changed_ago(600.0).idle_for(100.0));
    assert!(
        plan(NOW, &h, &Forecasts::default(), &pol)
            .actions
            .is_empty()
    );
    let power = policy("[plan]\npreference = \"power\"\n");
    assert_eq!(
        actions(&plan(NOW, &h, &Forecasts::default(), &power)).len(),
        1
    );
}

#[test]
fn a_device_is_not_parked_when_it_could_not_be_woken_in_time() {
    // The plan looks 2 s ahead: a device that takes longer than that to
    // wake (its latency plus the agent's reaction time) stays awake.
    let pol = policy("[plan]\nhorizon_s = 2\nwake_latency_s = 0.5\n");
    let mut h = host(
        vec![],
        vec![dev(bdf(NIC)).awake().changed_ago(600.0).idle_for(600.0)],
        &["web-1"],
    );
    let none = Forecasts::default();
    let park = vec![Action::Park { bdf: bdf(NIC) }];
    assert_eq!(actions(&plan(NOW, &h, &none, &pol)), park);
    // Waking takes exactly the horizon: still in time.
    h.reaction_s = 1.5;
    assert_eq!(actions(&plan(NOW, &h, &none, &pol)), park);
    h.reaction_s = 1.75;
    let deferred_park = |p: &Plan| -> Vec<String> {
        p.deferred
            .iter()
            .filter(|d| d.action == Some(Action::Park { bdf: bdf(NIC) }))
            .map(|d| d.reason.clone())
            .collect()
    };
    let slow = plan(NOW, &h, &none, &pol);
    assert!(slow.actions.is_empty(), "{}", reasons(&slow));
    let why = deferred_park(&slow);
    assert_eq!(why.len(), 1, "{}", reasons(&slow));
    assert!(
        why[0].contains(
            "but waking it takes 2.25 s (wake latency 0.5 s, plus 1.75 s the agent takes to \
             act), more than the plan sees ahead ([plan] horizon_s = 2 s): it stays awake"
        ),
        "{}",
        why[0]
    );
    // Forecasts whose data ended half a second before the plan see 1.5 s
    // ahead of it: a 1.25 s lead parks, a 1.75 s one does not.
    let mut idle = Forecasts::default();
    want_device(
        &mut idle,
        "web-1",
        bdf(NIC),
        &[(0.5, 0.0, 0.0), (1.5, 0.0, 0.0)],
    );
    h.reaction_s = 0.75;
    assert_eq!(actions(&plan(NOW, &h, &idle, &pol)), park);
    h.reaction_s = 1.25;
    let short = plan(NOW, &h, &idle, &pol);
    assert!(short.actions.is_empty(), "{}", reasons(&short));
    let why = deferred_park(&short);
    assert!(
        why.len() == 1
            && why[0].contains(
                "([plan] horizon_s = 2 s; its forecasts reach 1.5 s past the plan's time)"
            ),
        "{}",
        reasons(&short)
    );
}

#[test]
fn a_device_is_not_parked_when_it_would_have_to_wake_within_its_dwell() {
    // Use predicted 300 s out. With [dwell] parked_s = 400, a park now could
    // not be undone in time: keep it awake. With 60 s it can be parked.
    let h = host(
        vec![],
        vec![dev(bdf(NIC)).awake().changed_ago(600.0)],
        &["web-1"],
    );
    let mut f = Forecasts::default();
    want_device(
        &mut f,
        "web-1",
        bdf(NIC),
        &[(60.0, 0.0, 0.0), (300.0, 20.0, 40.0)],
    );
    let long = policy("[plan]\npreference = \"power\"\n[dwell]\nparked_s = 400\n");
    assert!(plan(NOW, &h, &f, &long).actions.is_empty());
    let short = policy("[plan]\npreference = \"power\"\n[dwell]\nparked_s = 60\n");
    assert_eq!(
        actions(&plan(NOW, &h, &f, &short)),
        vec![Action::Park { bdf: bdf(NIC) }]
    );
}

#[test]
fn a_device_parked_within_its_dwell_is_woken_only_for_a_preempting_class() {
    let h = host(
        vec![],
        vec![dev(bdf(NIC)).changed_ago(10.0)],
        &["web-1", "db-1"],
    );
    let pol = policy(CLASSES);

    let mut f = Forecasts::default();
    want_device(&mut f, "web-1", bdf(NIC), &[(60.0, 30.0, 50.0)]);
    let p = plan(NOW, &h, &f, &pol);
    assert!(p.actions.is_empty());
    assert_eq!(p.deferred.len(), 1);
    assert!(
        p.deferred[0]
            .reason
            .contains("it was parked 10 s ago, under [dwell] parked_s = 60 s")
            && p.deferred[0]
                .reason
                .contains("burstable may not cut a dwell short"),
        "{}",
        p.deferred[0].reason
    );

    want_device(&mut f, "db-1", bdf(NIC), &[(60.0, 5.0, 8.0)]);
    let p = plan(NOW, &h, &f, &pol);
    assert_eq!(actions(&p), vec![Action::Wake { bdf: bdf(NIC) }]);
    let a = &p.actions[0];
    assert!(a.breaks_dwell);
    assert_eq!((a.vm.as_deref(), a.priority), (Some("db-1"), 300));
    assert!(
        a.reason
            .contains("but guaranteed may cut a dwell short (preempt_dwell)"),
        "{}",
        a.reason
    );
}

#[test]
fn a_resting_device_is_kept_up_when_needed() {
    // Parked by vpm (control=auto under vfio-pci) but not suspended yet.
    let mut nic = dev(bdf(NIC));
    nic.power = PowerState::D0;
    let h = host(vec![], vec![nic], &["web-1"]);
    let mut f = Forecasts::default();
    want_device(&mut f, "web-1", bdf(NIC), &[(60.0, 3.0, 4.0)]);
    let p = plan(NOW, &h, &f, &policy(CLASSES));
    assert_eq!(actions(&p), vec![Action::Wake { bdf: bdf(NIC) }]);
    assert!(
        p.actions[0]
            .reason
            .contains("0000:02:00.0 is parked (D0 under vfio-pci"),
        "{}",
        reasons(&p)
    );
    // And it is not parked again when nobody needs it: that is done.
    let p = plan(NOW, &h, &Forecasts::default(), &policy(CLASSES));
    assert!(p.actions.is_empty(), "{}", reasons(&p));
}

#[test]
fn held_devices_are_woken_for_their_vm_but_never_parked() {
    let asleep = dev(bdf(NIC)).held_by("web-1");
    let mut f = Forecasts::default();
    want_device(&mut f, "web-1", bdf(NIC), &[(60.0, 10.0, 20.0)]);
    let p = plan(
        NOW,
        &host(vec![], vec![asleep], &["web-1"]),
        &f,
        &policy(CLASSES),
    );
    assert_eq!(actions(&p), vec![Action::Wake { bdf: bdf(NIC) }]);

    let idle = dev(bdf(NIC)).awake().held_by("web-1").changed_ago(9999.0);
    let power = policy("[plan]\npreference = \"power\"\n");
    let p = plan(
        NOW,
        &host(vec![], vec![idle], &["web-1"]),
        &Forecasts::default(),
        &power,
    );
    assert!(p.actions.is_empty(), "{}", reasons(&p));
}

#[test]
fn devices_used_by_the_host_or_other_processes_are_left_alone() {
    let power = policy("[plan]\npreference = \"power\"\n");
    for user in [
        DeviceUse::Host("interface eth0 is up".into()),
        DeviceUse::Process("pid 42 (fio)".into()),
    ] {
        let mut d = dev(bdf(NIC)).awake();
        d.user = user.clone();
        let p = plan(
            NOW,
            &host(vec![], vec![d], &[]),
            &Forecasts::default(),
            &power,
        );
        assert!(p.actions.is_empty(), "{user:?}: {}", reasons(&p));
    }
}

#[test]
fn devices_outside_the_allow_list_are_never_touched() {
    let other = bdf("0000:03:00.0");
    let h = host(vec![], vec![dev(other), dev(bdf(NIC)).awake()], &["web-1"]);
    let mut f = Forecasts::default();
    want_device(&mut f, "web-1", other, &[(60.0, 10.0, 20.0)]);
    let p = plan(NOW, &h, &f, &policy("[plan]\npreference = \"power\"\n"));
    assert_eq!(actions(&p), vec![Action::Park { bdf: bdf(NIC) }]);
}

#[test]
fn the_budget_takes_the_highest_priority_first() {
    let devs: Vec<DeviceState> = ["0000:02:00.0", "0000:02:00.1", "0000:02:00.2"]
        .iter()
        .map(|s| dev(bdf(s)))
        .collect();
    let idle = dev(bdf("0000:02:00.3")).awake();
    let mut all = devs.clone();
    all.push(idle);
    let h = host(vec![], all, &["db-1", "web-1", "batch-1"]);
    let mut f = Forecasts::default();
    want_device(&mut f, "batch-1", devs[0].bdf, &[(60.0, 90.0, 99.0)]);
    want_device(&mut f, "web-1", devs[1].bdf, &[(60.0, 5.0, 9.0)]);
    want_device(&mut f, "db-1", devs[2].bdf, &[(60.0, 1.0, 2.0)]);
    let text = format!(
        "[devices]\nallow = [\"1b36:0010\"]\n[plan]\nmax_actions_per_tick = 2\n\
         preference = \"power\"\n{CLASSES}"
    );
    let pol = Policy::parse(&text, std::path::Path::new("t.toml")).unwrap();
    let p = plan(NOW, &h, &f, &pol);
    // Guaranteed, then burstable; best-effort and the park wait.
    assert_eq!(
        actions(&p),
        vec![
            Action::Wake { bdf: devs[2].bdf },
            Action::Wake { bdf: devs[1].bdf }
        ]
    );
    let over: Vec<Option<Action>> = p.deferred.iter().map(|d| d.action.clone()).collect();
    assert_eq!(
        over,
        vec![
            Some(Action::Wake { bdf: devs[0].bdf }),
            Some(Action::Park {
                bdf: bdf("0000:02:00.3")
            })
        ]
    );
    assert!(
        p.deferred[0].reason.contains("max_actions_per_tick = 2"),
        "{}",
        reasons(&p)
    );
}

#[test]
fn a_pf_being_resized_gets_no_power_actions_on_its_vfs() {
    let vfs = vec![dev(vf_bdf(1)).awake()];
    let h = host(vec![pf(8, vfs)], vec![], &["web-1"]);
    let mut f = Forecasts::default();
    want_vfs(&mut f, "web-1", &[(300.0, 3.0, 3.0)]);
    let p = plan(NOW, &h, &f, &policy("[plan]\npreference = \"power\"\n"));
    assert_eq!(
        actions(&p),
        vec![Action::SetVfs {
            pf: bdf(PF),
            count: 3
        }]
    );
}

#[test]
fn spare_awake_vfs_are_parked_beyond_predicted_opens() {
    let vfs = vec![
        dev(vf_bdf(1)).awake(),
        dev(vf_bdf(2)).awake(),
        dev(vf_bdf(3)).awake().changed_ago(5.0),
    ];
    let mut the_pf = pf(3, vfs);
    // Resized 10 s ago: the pool keeps its size for now.
    the_pf.last_change = Some(VfCountChange {
        at: NOW - 10.0,
        from: 0,
    });
    let h = host(vec![the_pf], vec![], &["web-1"]);
    let pol = policy("[plan]\npreference = \"power\"\n");

    // web-1 will open 2: the VF woken 5 s ago (it could not be parked yet)
    // and the lowest settled one stay awake, the third is parked.
    let mut f = Forecasts::default();
    want_vfs(&mut f, "web-1", &[(60.0, 2.0, 2.0)]);
    let p = plan(NOW, &h, &f, &pol);
    assert_eq!(
        actions(&p),
        vec![Action::Park { bdf: vf_bdf(2) }],
        "{}",
        reasons(&p)
    );
    assert!(
        p.actions[0]
            .reason
            .contains("0000:01:00.0 keeps 2 free VFs awake for the demand predicted within 61 s"),
        "{}",
        p.actions[0].reason
    );

    // Nothing predicted: both settled ones are parked.
    want_vfs(&mut f, "web-1", &[(60.0, 0.0, 0.0)]);
    let p = plan(NOW, &h, &f, &pol);
    assert_eq!(
        actions(&p),
        vec![
            Action::Park { bdf: vf_bdf(1) },
            Action::Park { bdf: vf_bdf(2) }
        ],
        "{}",
        reasons(&p)
    );
}

#[test]
fn devices_in_an_unknown_power_state_are_left_alone() {
    let mut d = dev(bdf(NIC));
    d.power = PowerState::Unknown("error".into());
    let mut f = Forecasts::default();
    want_device(&mut f, "web-1", bdf(NIC), &[(60.0, 10.0, 20.0)]);
    let p = plan(
        NOW,
        &host(vec![], vec![d], &["web-1"]),
        &f,
        &policy(CLASSES),
    );
    assert!(
        p.actions.is_empty() && p.deferred.is_empty(),
        "{}",
        reasons(&p)
    );
}

#[test]
fn cpu_and_memory_are_recommended_like_a_vpa() {
    let h = host(vec![], vec![], &["db-1", "idle-1"]);
    let mut f = Forecasts::default();
    f.add_points(
        "db-1",
        Resource::Cpu,
        &[
            Point {
                horizon_s: 60.0,
                predicted: 1.234,
                upper: 1.9,
                rise: None,
            },
            Point {
                horizon_s: 300.0,
                predicted: 0.8,
                upper: 2.5,
                rise: None,
            },
        ],
    );
    f.add_points(
        "db-1",
        Resource::Memory,
        &[Point {
            horizon_s: 60.0,
            predicted: 1.5 * MEMORY_STEP,
            upper: 3.2 * MEMORY_STEP,
            rise: None,
        }],
    );
    // A VM that is not running gets nothing.
    f.add_points(
        "gone-1",
        Resource::Cpu,
        &[Point {
            horizon_s: 60.0,
            predicted: 1.0,
            upper: 1.0,
            rise: None,
        }],
    );
    let p = plan(NOW, &h, &f, &policy(CLASSES));
    assert_eq!(p.recommendations.len(), 1);
    let r = &p.recommendations[0];
    assert_eq!((r.vm.as_str(), r.class.as_str()), ("db-1", "guaranteed"));
    let cpu = r.cpu.unwrap();
    assert!(
        (cpu.request - 1.24).abs() < 1e-9 && (cpu.limit - 2.5).abs() < 1e-9,
        "{cpu:?}"
    );
    let mem = r.memory.unwrap();
    assert_eq!(
        (mem.request, mem.limit),
        (2.0 * MEMORY_STEP, 4.0 * MEMORY_STEP)
    );
    assert!(r.reason.contains("quantile 0.99"), "{}", r.reason);
}

#[test]
fn a_plan_serializes_for_the_api() {
    let h = host(vec![pf(8, vec![])], vec![], &["web-1"]);
    let mut f = Forecasts::default();
    want_vfs(&mut f, "web-1", &[(300.0, 1.0, 1.0)]);
    let p = plan(NOW, &h, &f, &policy(CLASSES));
    let v = serde_json::to_value(&p).unwrap();
    assert_eq!(v["actions"][0]["action"]["action"], "set-vfs");
    assert_eq!(v["actions"][0]["action"]["pf"], PF);
    assert_eq!(v["actions"][0]["vm"], "web-1");
}

#[test]
fn a_pool_is_sized_for_the_recent_peak_not_a_quiet_moment() {
    // 4 VFs, none held right now, web-1 predicted at 1; but its users held 3 at
    // their peaks within the last day: a shrink to the quiet moment's forecast
    // would leave a pool that cannot grow back while any VF is held.
    let mut the_pf = pf(8, (1..=4).map(|i| dev(vf_bdf(i))).collect());
    the_pf.peak_held = 3;
    let h = host(vec![the_pf], vec![], &["web-1"]);
    let mut f = Forecasts::default();
    want_vfs(&mut f, "web-1", &[(300.0, 0.5, 1.0)]);
    let p = plan(NOW, &h, &f, &policy(CLASSES));
    assert_eq!(set_vfs(&p), resize_to(3), "{}", reasons(&p));
    assert!(
        reasons(&p).contains("keeps the 3 VFs its users held at their peaks"),
        "{}",
        reasons(&p)
    );

    // And with a recent peak of 4, nothing shrinks.
    let mut the_pf = pf(8, (1..=4).map(|i| dev(vf_bdf(i))).collect());
    the_pf.peak_held = 4;
    let p = plan(
        NOW,
        &host(vec![the_pf], vec![], &["web-1"]),
        &f,
        &policy(CLASSES),
    );
    assert!(set_vfs(&p).is_empty(), "{}", reasons(&p));
}

#[test]
fn a_shared_pool_keeps_pool_per_vm_for_each_vm_that_may_use_it() {
    // Three VMs with a VF forecast for the PF, one predicted to use a VF:
    // the empty pool grows to one VF each (pool_per_vm = 1, the default),
    // since once any of them holds one it cannot grow; with pool_per_vm = 0,
    // to the forecast alone.
    let vms = ["web-1", "web-2", "batch-1"];
    let h = host(vec![pf(8, vec![])], vec![], &vms);
    let mut f = Forecasts::default();
    want_vfs(&mut f, "web-1", &[(300.0, 1.0, 1.0)]);
    want_vfs(&mut f, "web-2", &[(300.0, 0.0, 0.0)]);
    want_vfs(&mut f, "batch-1", &[(300.0, 0.0, 0.1)]);
    let p = plan(NOW, &h, &f, &policy(CLASSES));
    assert_eq!(set_vfs(&p), resize_to(3), "{}", reasons(&p));
    assert!(
        reasons(&p).contains("1 VF for each of the 3 VMs that may use it"),
        "{}",
        reasons(&p)
    );
    let p = plan(
        NOW,
        &h,
        &f,
        &policy(&format!("[plan]\npool_per_vm = 0\n{CLASSES}")),
    );
    assert_eq!(set_vfs(&p), resize_to(1), "{}", reasons(&p));
    // Capped by the PF.
    let h = host(vec![pf(2, vec![])], vec![], &vms);
    let p = plan(NOW, &h, &f, &policy(CLASSES));
    assert_eq!(set_vfs(&p), resize_to(2), "{}", reasons(&p));
}

#[test]
fn likely_rises_share_pooled_spares_and_certain_ones_do_not() {
    // Three best-effort VMs (level 0.8) on a pool of 3 parked VFs, each
    // predicted to take one within the wake window.
    let vms = ["batch-1", "batch-2", "batch-3"];
    let mut the_pf = pf(8, (1..=3).map(|i| dev(vf_bdf(i))).collect());
    the_pf.peak_held = 3;
    let h = host(vec![the_pf], vec![], &vms);
    let wakes = |rise: Option<f64>| {
        let mut f = Forecasts::default();
        for vm in vms {
            f.add_points(
                vm,
                Resource::Vfs(bdf(PF)),
                &[Point {
                    horizon_s: 60.0,
                    predicted: 0.0,
                    upper: 1.0,
                    rise,
                }],
            );
        }
        let p = plan(NOW, &h, &f, &policy(CLASSES));
        let n = actions(&p)
            .iter()
            .filter(|a| matches!(a, Action::Wake { .. }))
            .count();
        (n, reasons(&p))
    };
    // Each only 20 % likely: more than one at once is 10.4 % likely, within
    // the 20 % best-effort allows: one spare.
    let (n, why) = wakes(Some(0.2));
    assert_eq!(n, 1, "{why}");
    assert!(why.contains("a rise 20 % likely"), "{why}");
    // Each 60 % likely: more than two at once is 21.6 % likely: three.
    assert_eq!(wakes(Some(0.6)).0, 3);
    // Forecast by the regression bound (no rise): one each.
    assert_eq!(wakes(None).0, 3);
}

mod hotplug;
