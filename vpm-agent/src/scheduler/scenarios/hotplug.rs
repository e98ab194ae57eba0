//! Hot-plug scenarios: attach ahead of demand, give back after it, move
//! under contention.

use super::*;
use crate::executor::VmRef;

/// `web-*` in a high class, the rest in a low one; both take hot-plug.
fn hp_policy(extra: &str) -> Policy {
    policy(&format!(
        "[hotplug]\ndemand = \"cpu\"\nper_vf = 1.0\nattached_s = 60\n{extra}\n\
         [classes.hi]\npriority = 300\nhotplug = true\n\
         [classes.lo]\npriority = 100\nhotplug = true\nmax_attached = 2\n\
         [classes.keep]\npriority = 100\nhotplug = true\ndetach = false\n\
         [classes.off]\npriority = 100\n\
         [vms]\nrules = [{{ vm = \"web-*\", class = \"hi\" }}, {{ vm = \"keep-*\", class = \"keep\" }}, \
         {{ vm = \"off-*\", class = \"off\" }}]\ndefault = \"lo\"\n"
    ))
}

/// A VM vpm can hot-plug into, with these VFs attached `(vf, by_vpm, seconds ago)`.
fn vm(name: &str, pid: u32, attached: &[(Bdf, bool, f64)]) -> VmState {
    VmState {
        name: name.into(),
        pid,
        hotplug: Some(VmHotplug {
            attached: attached
                .iter()
                .map(|&(vf, by_vpm, ago)| AttachedVf {
                    vf,
                    by_vpm,
                    since: Some(NOW - ago),
                })
                .collect(),
        }),
    }
}

fn cpu(f: &mut Forecasts, vm: &str, points: &[(f64, f64, f64)]) {
    f.vms.entry(vm.into()).or_default().cpu = Some(Outlook::from_points(points));
}

fn hp_host(vfs: Vec<DeviceState>, vms: Vec<VmState>) -> HostState {
    HostState {
        pfs: vec![pf(4, vfs)],
        devices: Vec::new(),
        vms,
        reaction_s: 0.0,
    }
}

fn r(name: &str, pid: u32) -> VmRef {
    VmRef {
        name: name.into(),
        pid,
    }
}

const BUSY: &[(f64, f64, f64)] = &[(60.0, 0.8, 1.1), (300.0, 0.9, 1.1)];
const IDLE: &[(f64, f64, f64)] = &[(60.0, 0.0, 0.1), (300.0, 0.0, 0.1)];

#[test]
fn a_vm_predicted_busy_gets_a_parked_vf_attached() {
    let mut f = Forecasts::default();
    cpu(&mut f, "web-1", BUSY);
    let host = hp_host(
        vec![dev(vf_bdf(1)), dev(vf_bdf(2))],
        vec![vm("web-1", 42, &[])],
    );
    let p = plan(NOW, &host, &f, &hp_policy(""));
    assert_eq!(
        actions(&p),
        vec![Action::Attach {
            vm: r("web-1", 42),
            vf: vf_bdf(1)
        }],
        "{}",
        reasons(&p)
    );
    let why = &p.actions[0].reason;
    assert!(
        why.contains("VM web-1 (hi) is predicted to want 1 VF hot-plugged"),
        "{why}"
    );
    assert!(why.contains("cpu upper bound 1.1"), "{why}");
    assert_eq!(p.actions[0].vm.as_deref(), Some("web-1"));
    assert_eq!(p.actions[0].priority, 300);
}

#[test]
fn free_vfs_are_not_kept_awake_for_vms_that_take_vfs_only_by_hot_plug() {
    // A hot-plug VM opens only what vpm attaches (an attach wakes its VF):
    // free VFs stay parked for it, and awake ones are parked.
    let mut f = Forecasts::default();
    cpu(&mut f, "lo-1", IDLE);
    let parked = hp_host(
        vec![dev(vf_bdf(1)), dev(vf_bdf(2))],
        vec![vm("lo-1", 42, &[])],
    );
    let p = plan(NOW, &parked, &f, &hp_policy(""));
    assert!(actions(&p).is_empty(), "{}", reasons(&p));
    let awake = hp_host(
        vec![
            dev(vf_bdf(1)).awake().changed_ago(600.0).idle_for(600.0),
            dev(vf_bdf(2)).awake().changed_ago(600.0).idle_for(600.0),
        ],
        vec![vm("lo-1", 42, &[])],
    );
    let p = plan(NOW, &awake, &f, &hp_policy(""));
    assert_eq!(
        actions(&p),
        vec![
            Action::Park { bdf: vf_bdf(1) },
            Action::Park { bdf: vf_bdf(2) }
        ],
        "{}",
        reasons(&p)
    );
    // The agent also records what a hot-plug VM holds (`vfs:<pf>`, what vpm
    // attached): a forecast of it wakes nothing either.
    want_vfs(&mut f, "lo-1", &[(60.0, 1.0, 2.0), (300.0, 1.0, 2.0)]);
    let p = plan(NOW, &parked, &f, &hp_policy(""));
    assert!(actions(&p).is_empty(), "{}", reasons(&p));
    // Predicted to be given a VF within the keep window (here 601 s, past
    // the 151 s wake window): one awake VF stays awake for that attach.
    let mut f = Forecasts::default();
    cpu(&mut f, "lo-1", &[(60.0, 0.0, 0.1), (300.0, 0.9, 1.1)]);
    let p = plan(NOW, &awake, &f, &hp_policy("[dwell]\nparked_s = 600"));
    assert_eq!(
        actions(&p),
        vec![Action::Park { bdf: vf_bdf(2) }],
        "{}",
        reasons(&p)
    );
}

#[test]
fn no_demand_resource_no_opt_in_or_no_monitor_means_no_hot_plug() {
    let mut f = Forecasts::default();
    cpu(&mut f, "web-1", BUSY);
    cpu(&mut f, "off-1", BUSY);
    let mut no_monitor = vm("web-2", 44, &[]);
    no_monitor.hotplug = None;
    cpu(&mut f, "web-2", BUSY);
    let host = hp_host(
        vec![dev(vf_bdf(1)), dev(vf_bdf(2))],
        vec![vm("off-1", 43, &[]), no_monitor],
    );
    let p = plan(NOW, &host, &f, &hp_policy(""));
    assert!(actions(&p).is_empty(), "{}", reasons(&p));
    // Without [hotplug] demand, even an opted-in VM gets nothing.
    let host = hp_host(vec![dev(vf_bdf(1))], vec![vm("web-1", 42, &[])]);
    let p = plan(
        NOW,
        &host,
        &f,
        &policy("[classes.x]\nhotplug = true\n[vms]\ndefault = \"x\"\n"),
    );
    assert!(actions(&p).is_empty(), "{}", reasons(&p));
}

#[test]
fn an_unbound_vf_is_bound_first_and_max_attached_caps_the_want() {
    let mut f = Forecasts::default();
    cpu(&mut f, "web-1", &[(60.0, 3.0, 5.0)]);
    let mut unbound = dev(vf_bdf(1));
    unbound.driver = None;
    unbound.power = PowerState::D0;
    unbound.control = Some(PowerControl::On);
    let host = hp_host(vec![unbound], vec![vm("web-1", 42, &[])]);
    let p = plan(NOW, &host, &f, &hp_policy(""));
    assert_eq!(
        actions(&p),
        vec![Action::Park { bdf: vf_bdf(1) }],
        "{}",
        reasons(&p)
    );
    assert!(p.actions[0].reason.contains("so it can be attached next"));
}

#[test]
fn an_attach_does_not_wake_a_vf_inside_its_parked_dwell() {
    // The free VFs were parked 10 s ago (parked_s 60): lo-1 waits, and
    // takes no VF from anyone; a class with preempt_dwell may cut it short.
    let mut f = Forecasts::default();
    cpu(&mut f, "lo-1", BUSY);
    let host = hp_host(
        vec![
            dev(vf_bdf(1)).changed_ago(10.0),
            dev(vf_bdf(2)).changed_ago(10.0),
        ],
        vec![vm("lo-1", 42, &[])],
    );
    let p = plan(NOW, &host, &f, &hp_policy("[dwell]\nparked_s = 60\n"));
    assert!(actions(&p).is_empty(), "{}", reasons(&p));
    assert!(
        p.deferred
            .iter()
            .any(|d| d.reason.contains("was parked less than 60 s ago")),
        "{:?}",
        p.deferred
    );
    let mut preempting = hp_policy("[dwell]\nparked_s = 60\n");
    if let Some(c) = preempting.classes.get_mut("lo") {
        c.preempt_dwell = true;
    }
    let p = plan(NOW, &host, &f, &preempting);
    assert_eq!(
        actions(&p),
        vec![Action::Attach {
            vm: r("lo-1", 42),
            vf: vf_bdf(1)
        }]
    );
    assert!(p.actions[0].breaks_dwell);
    assert!(
        p.actions[0].reason.contains("preempt_dwell"),
        "{}",
        reasons(&p)
    );
}

#[test]
fn vfs_on_the_command_line_do_not_count_against_max_attached() {
    // web-1 (max_attached 1) has a VF from its command line and wants 2:
    // vpm may still plug one; a second would pass the cap.
    let mut f = Forecasts::default();
    cpu(&mut f, "web-1", &[(60.0, 1.5, 2.0)]);
    let mut own = dev(vf_bdf(3));
    own.user = DeviceUse::Vm("web-1".into());
    let host = hp_host(
        vec![dev(vf_bdf(1)), dev(vf_bdf(2)), own],
        vec![vm("web-1", 42, &[(vf_bdf(3), false, 600.0)])],
    );
    let p = plan(NOW, &host, &f, &hp_policy(""));
    assert_eq!(
        actions(&p),
        vec![Action::Attach {
            vm: r("web-1", 42),
            vf: vf_bdf(1)
        }],
        "{}",
        reasons(&p)
    );
    // Wanting 3: still one, the cap.
    cpu(&mut f, "web-1", &[(60.0, 2.5, 3.0)]);
    let p = plan(NOW, &host, &f, &hp_policy(""));
    assert_eq!(actions(&p).len(), 1, "{}", reasons(&p));
}

#[test]
fn a_vf_is_given_back_only_after_attached_s_and_only_if_vpm_plugged_it() {
    let mut f = Forecasts::default();
    cpu(&mut f, "lo-1", IDLE);
    let vf = vf_bdf(1);
    let held = || vec![dev(vf).awake().held_by("lo-1")];
    let p = plan(
        NOW,
        &hp_host(held(), vec![vm("lo-1", 7, &[(vf, true, 120.0)])]),
        &f,
        &hp_policy(""),
    );
    assert_eq!(
        actions(&p),
        vec![Action::Detach {
            vm: r("lo-1", 7),
            vf
        }],
        "{}",
        reasons(&p)
    );
    assert!(p.actions[0].reason.contains("attached_s"));
    // Attached 10 s ago: not yet.
    let p = plan(
        NOW,
        &hp_host(held(), vec![vm("lo-1", 7, &[(vf, true, 10.0)])]),
        &f,
        &hp_policy(""),
    );
    assert!(actions(&p).is_empty(), "{}", reasons(&p));
    // Not plugged by vpm: never.
    let p = plan(
        NOW,
        &hp_host(held(), vec![vm("lo-1", 7, &[(vf, false, 900.0)])]),
        &f,
        &hp_policy(""),
    );
    assert!(actions(&p).is_empty(), "{}", reasons(&p));
    // A VF the allow-list no longer allows (it allows another VF of the
    // PF): never (vpm acts only on allowed devices).
    let mut not_allowed = hp_policy("");
    not_allowed.devices = Policy::parse(
        &format!("[devices]\nallow = [\"{}\"]\n", vf_bdf(2)),
        std::path::Path::new("test.toml"),
    )
    .expect("policy")
    .devices;
    let two = vec![dev(vf).awake().held_by("lo-1"), dev(vf_bdf(2))];
    let p = plan(
        NOW,
        &hp_host(two, vec![vm("lo-1", 7, &[(vf, true, 900.0)])]),
        &f,
        &not_allowed,
    );
    assert!(actions(&p).is_empty(), "{}", reasons(&p));
    // A class with detach = false: never.
    cpu(&mut f, "keep-1", IDLE);
    let held = vec![dev(vf).awake().held_by("keep-1")];
    let p = plan(
        NOW,
        &hp_host(held, vec![vm("keep-1", 8, &[(vf, true, 900.0)])]),
        &f,
        &hp_policy(""),
    );
    assert!(actions(&p).is_empty(), "{}", reasons(&p));
}

#[test]
fn under_contention_a_vf_moves_to_the_stronger_claim_through_a_detach() {
    let vf = vf_bdf(1);
    let mut f = Forecasts::default();
    cpu(&mut f, "web-1", BUSY);
    cpu(&mut f, "lo-1", BUSY);
    let host = hp_host(
        vec![dev(vf).awake().held_by("lo-1")],
        vec![vm("lo-1", 7, &[(vf, true, 600.0)]), vm("web-1", 42, &[])],
    );
    let p = plan(NOW, &host, &f, &hp_policy(""));
    assert_eq!(
        actions(&p),
        vec![Action::Detach {
            vm: r("lo-1", 7),
            vf
        }],
        "{}",
        reasons(&p)
    );
    assert_eq!(
        p.actions[0].vm.as_deref(),
        Some("web-1"),
        "the move serves web-1"
    );
    assert!(
        p.actions[0]
            .reason
            .contains("move 0000:01:00.1 from VM lo-1 (lo)")
    );
    assert!(p.deferred.iter().any(|d| d.action
        == Some(Action::Attach {
            vm: r("web-1", 42),
            vf
        })));

    // The other way round: the weaker claim takes nothing.
    let host = hp_host(
        vec![dev(vf).awake().held_by("web-1")],
        vec![vm("web-1", 42, &[(vf, true, 600.0)]), vm("lo-1", 7, &[])],
    );
    let p = plan(NOW, &host, &f, &hp_policy(""));
    assert!(actions(&p).is_empty(), "{}", reasons(&p));
    assert!(p.deferred.iter().any(|d| d.vm.as_deref() == Some("lo-1")
        && d.action.is_none()
        && d.reason.contains("no free VF")));

    // Equal priority: higher predicted demand wins, within attached_s nobody moves.
    let mut f2 = Forecasts::default();
    cpu(&mut f2, "lo-1", &[(60.0, 0.9, 1.0)]);
    cpu(&mut f2, "lo-2", &[(60.0, 2.0, 3.0)]);
    let host = |ago: f64| {
        hp_host(
            vec![dev(vf).awake().held_by("lo-1")],
            vec![vm("lo-1", 7, &[(vf, true, ago)]), vm("lo-2", 9, &[])],
        )
    };
    let p = plan(NOW, &host(600.0), &f2, &hp_policy(""));
    assert_eq!(
        actions(&p),
        vec![Action::Detach {
            vm: r("lo-1", 7),
            vf
        }],
        "{}",
        reasons(&p)
    );
    let p = plan(NOW, &host(5.0), &f2, &hp_policy(""));
    assert!(actions(&p).is_empty(), "{}", reasons(&p));
}

#[test]
fn the_pool_is_created_for_all_a_hot_plug_vm_may_be_given() {
    // The pool cannot grow once a VF is attached (held), so it is made for
    // every VF the hot-plug VMs may be given: web-1 (hi) 1, lo-1 (lo) 2,
    // idle as lo-1 is; a VM with no demand forecast counts nothing.
    let mut f = Forecasts::default();
    cpu(&mut f, "web-1", BUSY);
    cpu(&mut f, "lo-1", IDLE);
    let host = hp_host(
        Vec::new(),
        vec![vm("web-1", 42, &[]), vm("lo-1", 7, &[]), vm("lo-2", 9, &[])],
    );
    let p = plan(NOW, &host, &f, &hp_policy(""));
    assert_eq!(
        actions(&p),
        vec![Action::SetVfs {
            pf: bdf(PF),
            count: 3
        }],
        "{}",
        reasons(&p)
    );
}

#[test]
fn with_give_back_contention_a_vf_stays_until_another_vm_needs_it() {
    let vf = vf_bdf(1);
    let mut f = Forecasts::default();
    cpu(&mut f, "lo-1", IDLE);
    let held = || vec![dev(vf).awake().held_by("lo-1")];
    let keep = hp_policy("give_back = \"contention\"");
    // Idle, nobody else wants it: it stays.
    let p = plan(
        NOW,
        &hp_host(held(), vec![vm("lo-1", 7, &[(vf, true, 900.0)])]),
        &f,
        &keep,
    );
    assert!(actions(&p).is_empty(), "{}", reasons(&p));
    // Another VM wants one, even of the same priority and little demand:
    // the idle VM's VF moves.
    cpu(&mut f, "lo-2", &[(60.0, 0.5, 0.5)]);
    let host = hp_host(
        held(),
        vec![vm("lo-1", 7, &[(vf, true, 900.0)]), vm("lo-2", 9, &[])],
    );
    let p = plan(NOW, &host, &f, &keep);
    assert_eq!(
        actions(&p),
        vec![Action::Detach {
            vm: r("lo-1", 7),
            vf
        }],
        "{}",
        reasons(&p)
    );
    assert_eq!(p.actions[0].vm.as_deref(), Some("lo-2"));
    // A higher-priority VM predicted idle gives way to a lower-priority one.
    let mut f = Forecasts::default();
    cpu(&mut f, "web-1", IDLE);
    cpu(&mut f, "lo-2", BUSY);
    let host = hp_host(
        vec![dev(vf).awake().held_by("web-1")],
        vec![vm("web-1", 42, &[(vf, true, 900.0)]), vm("lo-2", 9, &[])],
    );
    let p = plan(NOW, &host, &f, &keep);
    assert_eq!(
        actions(&p),
        vec![Action::Detach {
            vm: r("web-1", 42),
            vf
        }],
        "{}",
        reasons(&p)
    );
}

#[test]
fn vms_that_share_a_name_get_no_hot_plug_and_the_plan_says_why() {
    let mut f = Forecasts::default();
    // One forecast for the name "web-1", though two VMs carry it: busy, so
    // it would want a VF; idle, so a VF vpm plugged into one would go back.
    cpu(&mut f, "web-1", IDLE);
    cpu(&mut f, "lo-1", BUSY);
    let host = hp_host(
        vec![
            dev(vf_bdf(1)),
            dev(vf_bdf(2)),
            dev(vf_bdf(3)).held_by("web-1"),
        ],
        vec![
            vm("web-1", 43, &[(vf_bdf(3), true, 600.0)]),
            vm("web-1", 42, &[]),
            vm("lo-1", 7, &[]),
        ],
    );
    let p = plan(NOW, &host, &f, &hp_policy(""));
    // The other VM is planned as usual; nothing touches either web-1.
    let hot: Vec<Action> = actions(&p)
        .into_iter()
        .filter(|a| a.vm().is_some())
        .collect();
    assert_eq!(
        hot,
        vec![Action::Attach {
            vm: r("lo-1", 7),
            vf: vf_bdf(1)
        }],
        "{}",
        reasons(&p)
    );
    let why: Vec<&str> = p
        .deferred
        .iter()
        .filter(|d| d.vm.as_deref() == Some("web-1"))
        .map(|d| d.reason.as_str())
        .collect();
    assert_eq!(why.len(), 1, "{why:?}");
    assert!(
        why[0].contains("VM web-1 (hi) is the name of 2 VMs (pids [42, 43])")
            && why[0].contains("give each VM its own name"),
        "{}",
        why[0]
    );

    // Busy: still no attach for either, and no VF is sized or kept awake
    // for them.
    cpu(&mut f, "web-1", BUSY);
    let p = plan(NOW, &host, &f, &hp_policy(""));
    assert!(
        p.actions.iter().all(|a| !a.reason.contains("VM web-1")),
        "{}",
        reasons(&p)
    );
    // Nor is a pool made for them.
    let bare = hp_host(vec![], vec![vm("web-1", 43, &[]), vm("web-1", 42, &[])]);
    let p = plan(NOW, &bare, &f, &hp_policy(""));
    assert!(actions(&p).is_empty(), "{}", reasons(&p));
    assert!(
        !actions(&p)
            .iter()
            .any(|a| matches!(a, Action::Attach { vm, .. } | Action::Detach { vm, .. } if vm.name == "web-1")),
        "{}",
        reasons(&p)
    );
}
