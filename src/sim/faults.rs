//! A scenario's network faults as link changes: at each time, which links between a source
//! IP and an MX host are cut and which heal.
//!
//! Owns the meaning of `outage` (every source IP to every MX host of a provider),
//! `partition` (one source IP to a provider) and `mx_down` (every source IP to one host), and
//! the rule that overlapping faults cutting the same link heal it only when the last ends.
//! Reply overrides are not network faults: the world gives them to the providers. Must not:
//! cut anything itself (the turmoil driver partitions hosts, the fast driver drops segments).

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::world::World;
use crate::scenario::{FaultKind, Scenario};
use crate::time::Time;

/// One link changing state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LinkChange {
    pub source: IpAddr,
    pub target: IpAddr,
    /// `true`: the link goes down; `false`: it comes back.
    pub cut: bool,
}

/// Every link change of a run, in time order.
#[derive(Clone, Debug, Default)]
pub struct LinkSchedule {
    changes: Vec<(Time, LinkChange)>,
    next: usize,
}

impl LinkSchedule {
    pub fn new(scenario: &Scenario, world: &World) -> LinkSchedule {
        // Within one instant, ends come before begins (`false` sorts first), then fault order.
        let mut edges: Vec<(u64, bool, usize)> = Vec::new();
        for (index, fault) in scenario.faults.iter().enumerate() {
            if !matches!(
                fault.kind,
                FaultKind::ReplyOverride { .. } | FaultKind::StoreDown
            ) {
                edges.push((fault.at_s * 1000, true, index));
                edges.push(((fault.at_s + fault.for_s) * 1000, false, index));
            }
        }
        edges.sort();
        let mut cut: BTreeMap<(IpAddr, IpAddr), u32> = BTreeMap::new();
        let mut changes = Vec::new();
        for (at_ms, begin, index) in edges {
            let at = scenario.start.plus_ms(at_ms);
            for (source, target) in links(&scenario.faults[index].kind, scenario, world) {
                let count = cut.entry((source, target)).or_insert(0);
                if begin {
                    *count += 1;
                    if *count == 1 {
                        changes.push((
                            at,
                            LinkChange {
                                source,
                                target,
                                cut: true,
                            },
                        ));
                    }
                } else {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        changes.push((
                            at,
                            LinkChange {
                                source,
                                target,
                                cut: false,
                            },
                        ));
                    }
                }
            }
        }
        LinkSchedule { changes, next: 0 }
    }

    /// When the next change is due.
    pub fn next_due(&self) -> Option<Time> {
        self.changes.get(self.next).map(|(at, _)| *at)
    }

    /// The changes due at or before `now`, each once, in order.
    pub fn take_due(&mut self, now: Time) -> &[(Time, LinkChange)] {
        let start = self.next;
        while self.next < self.changes.len() && self.changes[self.next].0 <= now {
            self.next += 1;
        }
        &self.changes[start..self.next]
    }
}

/// The links a fault cuts.
fn links(kind: &FaultKind, scenario: &Scenario, world: &World) -> Vec<(IpAddr, IpAddr)> {
    let isp_mx = |isp: &str| -> Vec<IpAddr> {
        let index = scenario.isps.iter().position(|i| i.name == isp);
        world
            .mx_sites
            .iter()
            .filter(|s| Some(s.provider) == index)
            .map(|s| s.ip)
            .collect()
    };
    let (sources, targets): (Vec<IpAddr>, Vec<IpAddr>) = match kind {
        FaultKind::Outage { isp } => (world.source_ips.clone(), isp_mx(isp)),
        FaultKind::Partition { isp, source_ip } => (vec![*source_ip], isp_mx(isp)),
        FaultKind::MxDown { mx } => (
            world.source_ips.clone(),
            world
                .mx_sites
                .iter()
                .filter(|s| s.name == *mx)
                .map(|s| s.ip)
                .collect(),
        ),
        FaultKind::ReplyOverride { .. } | FaultKind::StoreDown => return Vec::new(),
    };
    sources
        .iter()
        .flat_map(|s| targets.iter().map(move |t| (*s, *t)))
        .collect()
}
