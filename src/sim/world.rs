//! The simulated world of a scenario: the source IPs the engine sends from, the providers
//! with their MX hosts at addresses in 198.18.0.0/15 (the benchmarking range), the DNS that
//! answers MX lookups, and the zone the receivers verify senders against.
//!
//! Owns [`World::build`] and the MX answer for any name ([`World::resolve_mx`]). Built the
//! same way for every simulated driver, so the turmoil network and the fast event queue see
//! one world. Must not: move bytes or time (the drivers do), read files or a clock.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;

use super::RunError;
use super::mailauth::{Verifier, Zone};
use crate::auth::Signer;
use crate::config::Config;
use crate::engine::{MxAnswer, MxHost};
use crate::isp::Provider;
use crate::scenario::{FaultKind, Scenario, SpfPosture};

/// One MX host of a provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MxSite {
    pub ip: IpAddr,
    pub name: String,
    /// Index of its provider in [`World::providers`] (scenario order).
    pub provider: usize,
}

/// Everything a simulated run sends to.
pub struct World {
    /// The configuration's source IPs, sorted.
    pub source_ips: Vec<IpAddr>,
    /// Every MX host, providers in scenario order, each provider's hosts in order.
    pub mx_sites: Vec<MxSite>,
    /// The providers, in scenario order; shared by every connection to their MX hosts.
    pub providers: Vec<Rc<RefCell<Provider>>>,
    dns: BTreeMap<String, MxAnswer>,
}

/// The source IPs of a configuration, sorted: each virtual MTA's `smtp-source-host`.
pub fn source_ips(config: &Config) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = config
        .virtual_mtas
        .values()
        .flat_map(|v| v.source_hosts().into_iter().map(|h| h.ip))
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

impl World {
    /// The world of `scenario` for an engine with `config` and `signer` (whose stand-in DKIM
    /// keys the zone publishes); `detailed` keeps the providers' per-connection and
    /// per-recipient logs ([`crate::isp::ProviderBuilder::detailed_log`]).
    pub fn build(
        scenario: &Scenario,
        config: &Config,
        signer: &Signer,
        detailed: bool,
    ) -> Result<World, RunError> {
        let source_ips = source_ips(config);
        if source_ips.is_empty() {
            return Err(RunError::NoSourceIps);
        }
        let mut dns: BTreeMap<String, MxAnswer> = BTreeMap::new();
        let mut mx_sites = Vec::new();
        for (isp_index, isp) in scenario.isps.iter().enumerate() {
            let mut hosts = Vec::new();
            for (mx_index, name) in isp.mx.iter().enumerate() {
                let ip = IpAddr::V4(Ipv4Addr::new(198, 18, isp_index as u8, mx_index as u8 + 1));
                if source_ips.contains(&ip) {
                    return Err(RunError::AddressClash(ip));
                }
                mx_sites.push(MxSite {
                    ip,
                    name: name.clone(),
                    provider: isp_index,
                });
                hosts.push(MxHost {
                    preference: 10 * (mx_index as u16 + 1),
                    name: name.clone(),
                    addresses: vec![ip],
                    port: 25,
                });
            }
            for domain in &isp.domains {
                dns.insert(domain.clone(), MxAnswer::Hosts(hosts.clone()));
            }
            // A records: a host named in `smtp-hosts` resolves to its own address.
            for host in &hosts {
                let mut own = host.clone();
                own.preference = 0;
                dns.entry(host.name.clone())
                    .or_insert_with(|| MxAnswer::Hosts(vec![own]));
            }
        }
        let verifier = Rc::new(Verifier::new(sender_zone(scenario, signer, &source_ips)));
        let providers = scenario
            .isps
            .iter()
            .enumerate()
            .map(|(index, spec)| {
                // Each provider draws from its own stream, so adding one shifts no other.
                let seed = scenario.seed ^ (index as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F);
                let verifier = Rc::clone(&verifier);
                let mut builder = Provider::builder(spec.clone(), seed)
                    .detailed_log(detailed)
                    .authenticator(Box::new(move |peer, helo, mail_from, message| {
                        verifier.check(peer, helo, mail_from, message)
                    }));
                for w in &scenario.workloads {
                    builder = builder.audience(&w.mail_from, w.complaint_rate, w.engagement);
                    if w.engaged_share > 0.0 {
                        builder = builder.engaged_segment(&w.mail_from, w.engaged_engagement);
                    }
                }
                for fault in &scenario.faults {
                    if let FaultKind::ReplyOverride { isp, phase, reply } = &fault.kind
                        && *isp == spec.name
                    {
                        let from = scenario.start.plus_secs(fault.at_s);
                        builder = builder.reply_override(
                            *phase,
                            reply.clone(),
                            from,
                            from.plus_secs(fault.for_s),
                        );
                    }
                }
                Rc::new(RefCell::new(builder.build()))
            })
            .collect();
        Ok(World {
            source_ips,
            mx_sites,
            providers,
            dns,
        })
    }

    /// The simulated DNS's answer for `domain`: its provider's MX hosts, an MX host's own
    /// address, or no mail host.
    pub fn resolve_mx(&self, domain: &str) -> MxAnswer {
        self.dns
            .get(domain)
            .cloned()
            .unwrap_or(MxAnswer::NoMailHost)
    }

    /// The provider whose MX host has address `ip`.
    pub fn provider_at(&self, ip: IpAddr) -> Option<&Rc<RefCell<Provider>>> {
        let site = self.mx_sites.iter().find(|s| s.ip == ip)?;
        self.providers.get(site.provider)
    }

    /// Messages the providers have accepted so far (for progress displays).
    pub fn accepted(&self) -> u64 {
        self.providers
            .iter()
            .map(|p| p.borrow().log().messages_accepted)
            .sum()
    }

    /// Each provider's log, by scenario name.
    pub fn receiver_logs(&self, scenario: &Scenario) -> Vec<(String, crate::isp::ReceiverLog)> {
        scenario
            .isps
            .iter()
            .zip(&self.providers)
            .map(|(spec, p)| (spec.name.clone(), p.borrow().log().clone()))
            .collect()
    }
}

/// The simulated DNS the receivers verify against: the scenario's own TXT records first (they
/// win: a wrong key there is a broken DKIM setup), then what the sender's posture publishes
/// for every sending domain (SPF over the source IPs, DMARC `p=none`), the engine's DKIM keys,
/// and a PTR name per source IP that resolves back to it.
pub fn sender_zone(scenario: &Scenario, signer: &Signer, source_ips: &[IpAddr]) -> Zone {
    let posture = &scenario.sender;
    let mut zone = Zone::default();
    for (name, value) in &posture.dns_txt {
        zone.add_txt(name, value);
    }
    // Envelope domains (SPF) and From: domains (DMARC) of every stream.
    let mut domains: Vec<String> = scenario
        .workloads
        .iter()
        .flat_map(|w| [Some(&w.mail_from), w.header_from.as_ref()])
        .flatten()
        .filter_map(|a| a.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()))
        .collect();
    domains.sort();
    domains.dedup();
    let spf = match posture.spf {
        SpfPosture::Pass => Some(
            source_ips
                .iter()
                .map(|ip| match ip {
                    IpAddr::V4(v4) => format!("ip4:{v4}"),
                    IpAddr::V6(v6) => format!("ip6:{v6}"),
                })
                .fold("v=spf1".to_string(), |record, term| record + " " + &term)
                + " -all",
        ),
        // TEST-NET-3: never a source IP in a simulation.
        SpfPosture::Fail => Some("v=spf1 ip4:203.0.113.0/24 -all".to_string()),
        SpfPosture::None => None,
    };
    for domain in &domains {
        if let Some(record) = &spf {
            zone.add_txt(domain, record);
        }
        if posture.dmarc {
            zone.add_txt(&format!("_dmarc.{domain}"), "v=DMARC1; p=none");
        }
    }
    if posture.publish_dkim_keys {
        for s in signer.signers() {
            if let Some(record) = &s.stand_in_record {
                zone.add_txt(&format!("{}._domainkey.{}", s.selector, s.domain), record);
            }
        }
    }
    if posture.ptr {
        let base = domains.first().map_or("pmta-sim.example", String::as_str);
        for (index, ip) in source_ips.iter().enumerate() {
            let name = format!("mta{}.{base}", index + 1);
            zone.add_ptr(*ip, &name);
            if let IpAddr::V4(v4) = ip {
                zone.add_a(&name, *v4);
            }
        }
    }
    zone
}
