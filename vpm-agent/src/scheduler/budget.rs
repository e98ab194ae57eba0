//! The action budget: order the proposals (class priority, then kind, then
//! predicted demand, then address), keep one action per device, and take at
//! most `[plan] max_actions_per_tick`; the rest are deferred with a reason.

use std::collections::BTreeSet;

use super::context::Proposal;
use super::output::{Deferred, PlannedAction};

/// Splits `proposals` into the actions to take and those over the budget.
pub(crate) fn select(
    mut proposals: Vec<Proposal>,
    max: u32,
) -> (Vec<PlannedAction>, Vec<Deferred>) {
    proposals.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.rank.cmp(&b.rank))
            .then(b.demand.total_cmp(&a.demand))
            .then(a.action.target().cmp(&b.action.target()))
            .then_with(|| a.action.to_string().cmp(&b.action.to_string()))
    });
    let mut seen = BTreeSet::new();
    let mut actions = Vec::new();
    let mut deferred = Vec::new();
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    for p in proposals {
        // One action per device and tick: the first (highest-ranked) wins.
        if !seen.insert(p.action.target()) {
            continue;
        }
        if actions.len() < limit {
            actions.push(PlannedAction {
                action: p.action,
                reason: p.reason,
                vm: p.vm,
                priority: p.priority,
                breaks_dwell: p.breaks_dwell,
            });
        } else {
            deferred.push(Deferred {
                action: Some(p.action),
                reason: format!(
                    "over this tick's budget ([plan] max_actions_per_tick = {max}; \
                     higher-priority actions went first): {}",
                    p.reason
                ),
                vm: p.vm,
                priority: p.priority,
            });
        }
    }
    (actions, deferred)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::Action;
    use crate::scheduler::context::Rank;

    fn prop(action: Action, priority: u32, rank: Rank, demand: f64) -> Proposal {
        Proposal {
            action,
            reason: format!("because {priority}"),
            vm: None,
            priority,
            rank,
            demand,
            breaks_dwell: false,
        }
    }

    #[test]
    fn higher_priority_then_kind_then_demand_first() {
        let b = |s: &str| s.parse().unwrap();
        let park = Action::Park {
            bdf: b("0000:01:00.5"),
        };
        let wake_lo = Action::Wake {
            bdf: b("0000:01:00.2"),
        };
        let wake_hi = Action::Wake {
            bdf: b("0000:01:00.3"),
        };
        let grow = Action::SetVfs {
            pf: b("0000:02:00.0"),
            count: 2,
        };
        let wake_big = Action::Wake {
            bdf: b("0000:01:00.4"),
        };
        let (actions, deferred) = select(
            vec![
                prop(park.clone(), 0, Rank::Park, 0.0),
                prop(wake_lo.clone(), 100, Rank::Wake, 1.0),
                prop(wake_hi.clone(), 300, Rank::Wake, 1.0),
                prop(grow.clone(), 100, Rank::Grow, 1.0),
                prop(wake_big.clone(), 100, Rank::Wake, 5.0),
                prop(
                    Action::Park {
                        bdf: b("0000:01:00.3"),
                    },
                    0,
                    Rank::Park,
                    0.0,
                ),
            ],
            3,
        );
        let got: Vec<Action> = actions.iter().map(|a| a.action.clone()).collect();
        assert_eq!(got, vec![wake_hi, grow, wake_big]);
        let held: Vec<Option<Action>> = deferred.iter().map(|d| d.action.clone()).collect();
        assert_eq!(
            held,
            vec![Some(wake_lo), Some(park.clone())],
            "one action per device"
        );
        assert!(deferred[0].reason.contains("max_actions_per_tick = 3"));
        assert!(deferred[0].reason.ends_with("because 100"));
        let (none, all) = select(vec![prop(park.clone(), 0, Rank::Park, 0.0)], 0);
        assert!(none.is_empty() && all.len() == 1);
    }
}
