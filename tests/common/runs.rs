//! Running scenario files in tests: load with their provider models, run under the network
//! driver (or the fast one), and check the engine's whole-run properties and the receivers' view of the limits.

use std::path::Path;

use pmta_sim::config::value::Rate;
use pmta_sim::config::{self, MemFs, Options, RealFs};
use pmta_sim::driver::{fast, network};
use pmta_sim::engine::accounting::RecordType;
use pmta_sim::scenario::{ConfigSource, FaultKind, Mode, Scenario};
use pmta_sim::sim::output::RunOutput;
use pmta_sim::time::Time;

use super::checkers::{RunView, check_run};

pub fn load(name: &str) -> Scenario {
    pmta_sim::driver::load_scenario(&super::fixture(&format!("scenarios/{name}.toml"))).unwrap()
}

/// A scenario from `text`, as if it were `scenarios/<name>.toml` edited: written to a
/// temporary file so provider models are found as for a shipped scenario.
pub fn load_edited(name: &str, text: &str) -> Scenario {
    let path = std::env::temp_dir().join(format!("{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let scenario = pmta_sim::driver::load_scenario(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    scenario
}

/// The text of a shipped scenario.
pub fn text(name: &str) -> String {
    std::fs::read_to_string(super::fixture(&format!("scenarios/{name}.toml"))).unwrap()
}

pub fn run(scenario: &Scenario) -> RunOutput {
    run_in(scenario, Mode::Network)
}

/// [`run`] in either simulated mode.
pub fn run_in(scenario: &Scenario, mode: Mode) -> RunOutput {
    let checked = match &scenario.config {
        ConfigSource::Path(path) => config::load(path, &RealFs, Options::default()).unwrap(),
        ConfigSource::Inline(text) => config::load(
            Path::new("/inline.conf"),
            &MemFs::new().with("/inline.conf", text.as_bytes()),
            Options::default(),
        )
        .unwrap(),
    };
    assert_eq!(checked.error_count(), 0, "{:?}", checked.diagnostics);
    let out = match mode {
        Mode::Network => network::run(scenario, checked.config),
        Mode::Fast => fast::run(scenario, checked.config),
    }
    .unwrap();
    check_run(&RunView::of_run(&out));
    receivers_agree(scenario, &out);
    out
}

/// The limits as the receivers saw them on the wire.
pub fn receivers_agree(scenario: &Scenario, out: &RunOutput) {
    for (name, log) in &out.receivers {
        let spec = scenario.isps.iter().find(|i| &i.name == name).unwrap();
        let accepted: Vec<_> = log.connections.iter().filter(|c| !c.refused).collect();
        if let Some(max) = spec.max_connections_per_ip {
            for c in &accepted {
                let open = accepted
                    .iter()
                    .filter(|o| {
                        o.peer == c.peer
                            && o.opened <= c.opened
                            && o.closed.is_none_or(|end| end > c.opened)
                    })
                    .count() as u64;
                assert!(
                    open <= max,
                    "{name}: {open} connections from {} at {:?}",
                    c.peer,
                    c.opened
                );
            }
        }
        if let Some(max) = spec.max_messages_per_connection {
            assert!(
                accepted.iter().all(|c| c.messages <= max),
                "{name}: too many messages on a connection"
            );
        }
        if let Some(limit) = &spec.rate_limit
            && let Rate::Limit { count, per_seconds } = limit.per_ip
        {
            for (peer, at) in &log.accepted_rcpts {
                let n = log
                    .accepted_rcpts
                    .iter()
                    .filter(|(p, t)| p == peer && t <= at && at.since(*t) < per_seconds * 1000)
                    .count() as u64;
                assert!(
                    n <= count,
                    "{name}: {n} recipients from {peer} in {per_seconds}s"
                );
            }
        }
        // Every transaction the receiver accepted is a delivery the engine recorded (one
        // transaction's recipients share their record time), and back. A link cut can lose
        // the `250` after the receiver took the message (the engine retries: a duplicate, as
        // with any MTA), so with such faults the receiver may have accepted more.
        let delivered: std::collections::BTreeSet<(&str, &str, Time)> = out
            .records
            .iter()
            .filter(|r| r.record_type == RecordType::Delivered)
            .filter(|r| spec.mx.contains(&r.dsn_mta))
            .map(|r| (r.env_id.as_str(), r.queue.as_str(), r.time_logged))
            .collect();
        let cuts_links = scenario
            .faults
            .iter()
            .any(|f| !matches!(f.kind, FaultKind::ReplyOverride { .. }));
        if cuts_links {
            assert!(
                log.messages_accepted >= delivered.len() as u64,
                "{name}: {} accepted messages, {} delivery transactions",
                log.messages_accepted,
                delivered.len()
            );
        } else {
            assert_eq!(
                log.messages_accepted,
                delivered.len() as u64,
                "{name}: accepted messages vs delivery transactions"
            );
        }
    }
}
