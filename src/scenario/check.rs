//! A scenario checked against the configuration it runs, before any simulation: every
//! virtual MTA, pool, source IP and queue that a stream, a fault or an expectation names must
//! exist there, and every virtual MTA a stream sends through must have a source IP.
//!
//! Owns these cross-references and their `FILE:LINE:COL` errors (all of them, in file order).
//! Pure: it reads the scenario's text again for positions and must not read files.

use std::net::IpAddr;
use std::path::Path;

use super::{Raw, Reporter, Scenario, ScenarioError};
use crate::config::diag::did_you_mean;
use crate::config::model::Config;
use crate::config::queue;

fn hint<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> String {
    did_you_mean(name, known).map_or_else(String::new, |m| format!("; did you mean `{m}`?"))
}

/// Every problem between `scenario` (parsed from `text`, read from `file`) and `config`.
pub fn check_against(
    file: &Path,
    text: &str,
    scenario: &Scenario,
    config: &Config,
) -> Vec<ScenarioError> {
    let Ok(raw) = toml::from_str::<Raw>(text) else {
        // The scenario parsed once already; its text cannot fail now.
        return Vec::new();
    };
    let r = Reporter { file, text };
    let mut errors = Vec::new();
    let vmtas = || config.virtual_mtas.keys().map(String::as_str);
    let names = || vmtas().chain(config.pools.keys().map(String::as_str));
    let source_ips: Vec<IpAddr> = config
        .virtual_mtas
        .values()
        .flat_map(|v| v.source_hosts().into_iter().map(|h| h.ip))
        .collect();
    // The queues the streams can fill (DOMAIN/VMTA after queue-to), for `queue` filters.
    let mut queues: Vec<String> = Vec::new();
    for (raw_w, w) in raw.workload.iter().zip(&scenario.workloads) {
        let name = raw_w.get_ref().vmta.get_ref();
        let members: Vec<&str> = if let Some(pool) = config.pools.get(name) {
            pool.members.iter().map(|m| m.value.as_str()).collect()
        } else if config.virtual_mtas.contains_key(name) {
            vec![name.as_str()]
        } else {
            errors.push(r.span(
                &raw_w.get_ref().vmta,
                format!(
                    "`{name}` is neither a virtual MTA nor a pool of the configuration{}",
                    hint(name, names())
                ),
            ));
            continue;
        };
        for member in members {
            if config
                .virtual_mtas
                .get(member)
                .is_some_and(|v| v.source_hosts().is_empty())
            {
                errors.push(r.span(
                    &raw_w.get_ref().vmta,
                    format!(
                        "virtual MTA `{member}` has no smtp-source-host: its mail could never leave"
                    ),
                ));
            }
            for (domain, _) in &w.domains {
                match queue::explain(config, &format!("{domain}/{member}")) {
                    Ok(view) => queues.push(view.queue_name()),
                    Err(err) => errors.push(r.span(
                        &raw_w.get_ref().vmta,
                        format!("mail to `{domain}` through `{member}` has no queue: {err}"),
                    )),
                }
            }
        }
    }
    queues.sort();
    queues.dedup();
    for f in &raw.fault {
        if let Some(ip) = &f.get_ref().source_ip
            && let Ok(parsed) = ip.get_ref().parse::<IpAddr>()
            && !source_ips.contains(&parsed)
        {
            errors.push(r.span(
                ip,
                format!("source IP {parsed} is not an smtp-source-host of any virtual MTA"),
            ));
        }
    }
    for e in &raw.expect {
        let e = e.get_ref();
        if let Some(vmta) = &e.vmta
            && !config.virtual_mtas.contains_key(vmta.get_ref())
        {
            errors.push(r.span(
                vmta,
                format!(
                    "`{}` is not a virtual MTA of the configuration (queues are named by virtual MTA, not pool){}",
                    vmta.get_ref(),
                    hint(vmta.get_ref(), vmtas())
                ),
            ));
        }
        if let Some(ip) = &e.source_ip
            && let Ok(parsed) = ip.get_ref().parse::<IpAddr>()
            && !source_ips.contains(&parsed)
        {
            errors.push(r.span(
                ip,
                format!("source IP {parsed} is not an smtp-source-host of any virtual MTA"),
            ));
        }
        if let Some(q) = &e.queue
            && !queues.contains(q.get_ref())
        {
            errors.push(r.span(
                q,
                format!(
                    "no stream of this scenario fills queue `{}`{}",
                    q.get_ref(),
                    hint(q.get_ref(), queues.iter().map(String::as_str))
                ),
            ));
        }
    }
    errors
}
