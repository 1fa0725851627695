//! Every scenario in `scenarios/` runs under the network simulator: the engine's whole-run
//! checkers and the receivers' own view of the limits hold, and each mechanism scenario
//! shows its mechanism.

mod common;

use std::path::{Path, PathBuf};

use common::runs::{load, run};
use pmta_sim::config::model::QueueMode;
use pmta_sim::engine::EngineEvent;
use pmta_sim::engine::accounting::RecordType;
use pmta_sim::scenario::Scenario;
use pmta_sim::time::Time;

fn secs(scenario: &Scenario, t: Time) -> f64 {
    t.since(scenario.start) as f64 / 1000.0
}

#[test]
fn every_scenario_file_parses() {
    let mut names: Vec<PathBuf> = std::fs::read_dir(common::fixture("scenarios"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 10);
    for path in names {
        pmta_sim::driver::load_scenario(&path).unwrap();
    }
}

/// The long-run benchmark's scenario is documented as a command, not run by the suite: it
/// must still load, with the 30 days and the million a day it promises.
#[test]
fn the_month_benchmark_scenario_loads_as_documented() {
    let path = common::fixture("benches/scenarios/month.toml");
    let scenario = pmta_sim::driver::load_scenario(&path).unwrap();
    assert_eq!(scenario.duration_s, 30 * 86_400);
    assert_eq!(scenario.isps.len(), 5);
}

#[test]
fn two_providers_delivers_everything_it_can() {
    let s = load("two-providers");
    let out = run(&s);
    let delivered = out
        .records
        .iter()
        .filter(|r| r.record_type == RecordType::Delivered)
        .count();
    let bounced = out
        .records
        .iter()
        .filter(|r| r.record_type == RecordType::Bounced)
        .count();
    assert_eq!(delivered + bounced, 200);
    assert!(
        out.records
            .iter()
            .filter(|r| r.record_type == RecordType::Bounced)
            .all(|r| r.rcpt.starts_with("nouser") && r.bounce_category == "bad-mailbox")
    );
    assert_eq!(out.pending, 0);
}

#[test]
fn rate_limit_spreads_recipients_over_minutes() {
    let s = load("rate-limit");
    let out = run(&s);
    let last = out
        .records
        .iter()
        .filter(|r| r.record_type == RecordType::Delivered)
        .map(|r| secs(&s, r.time_logged))
        .fold(0.0, f64::max);
    // 100 recipients at 20 a minute: the last goes out in the fifth minute.
    assert!((240.0..300.0).contains(&last), "{last}");
    assert_eq!(out.receivers[0].1.messages_accepted, 100);
}

#[test]
fn connection_cap_turns_away_extra_connections_and_mail_still_flows() {
    let s = load("connection-cap");
    let out = run(&s);
    let log = &out.receivers[0].1;
    assert!(
        log.connections.iter().any(|c| c.refused),
        "the cap must have been hit"
    );
    assert!(
        out.records
            .iter()
            .any(|r| r.record_type == RecordType::TransientQueue
                && r.dsn_diag.contains("Too many concurrent"))
    );
    assert_eq!(out.pending, 0);
}

#[test]
fn backoff_is_entered_on_the_pattern_and_left_after_backoff_to_normal_after() {
    let s = load("backoff");
    let out = run(&s);
    let modes: Vec<(f64, QueueMode)> = out
        .events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::ModeChanged { at, mode, .. } => Some((secs(&s, *at), *mode)),
            _ => None,
        })
        .collect();
    assert_eq!(modes.len(), 2, "{modes:?}");
    let (entered, left) = (modes[0], modes[1]);
    assert_eq!(entered.1, QueueMode::Backoff);
    assert!((120.0..130.0).contains(&entered.0), "{entered:?}");
    assert_eq!(left.1, QueueMode::Normal);
    assert!(left.0 >= entered.0 + 600.0, "{left:?}");
    assert_eq!(out.pending, 0);
}

#[test]
fn retry_list_is_followed_through_an_outage() {
    let s = load("retry-list");
    let out = run(&s);
    let tq: Vec<f64> = out
        .records
        .iter()
        .filter(|r| r.record_type == RecordType::TransientQueue)
        .map(|r| secs(&s, r.time_logged))
        .collect();
    // Attempts at about 0, 2, 6, 14 minutes (2m, 4m, then 8m repeating); 22 minutes succeeds.
    let minutes: Vec<u64> = tq.iter().map(|t| (*t / 60.0).round() as u64).collect();
    assert_eq!(minutes, [0, 2, 6, 14]);
    let first_delivery = out
        .records
        .iter()
        .find(|r| r.record_type == RecordType::Delivered)
        .map(|r| secs(&s, r.time_logged))
        .unwrap();
    assert!(
        (22.0 * 60.0..23.0 * 60.0).contains(&first_delivery),
        "{first_delivery}"
    );
}

#[test]
fn greylisted_recipients_are_delivered_on_retry() {
    let s = load("greylisting");
    let out = run(&s);
    for rcpt in out
        .records
        .iter()
        .filter(|r| r.record_type == RecordType::Transient)
    {
        assert!(rcpt.dsn_diag.contains("Greylisted"));
        let delivered = out
            .records
            .iter()
            .find(|r| r.record_type == RecordType::Delivered && r.rcpt == rcpt.rcpt)
            .unwrap();
        let waited = delivered.time_logged.since(rcpt.time_logged) as f64 / 1000.0;
        assert!((360.0..370.0).contains(&waited), "{waited}");
    }
    assert_eq!(
        out.records
            .iter()
            .filter(|r| r.record_type == RecordType::Transient)
            .count(),
        50
    );
}

#[test]
fn bounce_after_expires_undeliverable_mail() {
    let s = load("bounce-after");
    let out = run(&s);
    let bounces: Vec<_> = out
        .records
        .iter()
        .filter(|r| r.record_type == RecordType::Bounced)
        .collect();
    assert_eq!(bounces.len(), 10);
    for b in bounces {
        assert_eq!(b.bounce_category, "message-expired");
        let age = b.time_logged.since(b.time_queued) as f64 / 1000.0;
        assert!((1200.0..1500.0).contains(&age), "{age}");
    }
}

#[test]
fn an_outage_pauses_delivery_and_the_queue_catches_up() {
    let s = load("outage");
    let out = run(&s);
    let during = out
        .records
        .iter()
        .filter(|r| r.record_type == RecordType::Delivered)
        .filter(|r| (185.0..480.0).contains(&secs(&s, r.time_logged)))
        .count();
    assert_eq!(
        during, 0,
        "nothing is delivered while the MX refuses connections"
    );
    assert!(
        out.records
            .iter()
            .any(|r| r.record_type == RecordType::TransientQueue)
    );
    assert_eq!(out.pending, 0);
}

#[test]
fn a_partition_stops_one_source_ip_only() {
    let s = load("partition");
    let out = run(&s);
    let delivered_during = |queue: &str| {
        out.records
            .iter()
            .filter(|r| r.record_type == RecordType::Delivered && r.queue == queue)
            .filter(|r| (180.0..470.0).contains(&secs(&s, r.time_logged)))
            .count()
    };
    assert_eq!(delivered_during("gmail.com/news-1"), 0);
    assert!(delivered_during("gmail.com/news-2") > 50);
    assert_eq!(out.pending, 0);
}

#[test]
fn a_pool_rotates_its_members() {
    let s = load("pool-rotation");
    let out = run(&s);
    for vmta in ["a", "b", "c"] {
        let n = out
            .records
            .iter()
            .filter(|r| r.record_type == RecordType::Delivered && r.vmta == vmta)
            .count();
        assert_eq!(n, 100, "{vmta}");
    }
    let log = &out.receivers[0].1;
    let peers: std::collections::BTreeSet<String> =
        log.connections.iter().map(|c| c.peer.to_string()).collect();
    assert_eq!(
        peers.into_iter().collect::<Vec<_>>(),
        ["192.0.2.10", "192.0.2.11", "192.0.2.12"],
        "each source IP is its own address"
    );
}

#[test]
fn smtp_hosts_naming_an_mx_host_resolves_through_its_a_record() {
    let text = r#"
name = "smtp-hosts"
seed = 3
duration = "2m"
start_time = "2026-09-21T12:00:00Z"
tick_ms = 10
config_inline = """
<virtual-mta v1>
    smtp-source-host 192.0.2.10 mta1.news.example.com
</virtual-mta>
<domain example.org>
    smtp-hosts relay.example.net
</domain>
"""
[isps.relay]
domains = ["example.net"]
mx = ["relay.example.net"]
[isps.other]
domains = ["example.org"]
mx = ["mx.example.org"]
[[workload]]
vmta = "v1"
mail_from = "a@news.example.com"
messages = 5
domains = { "example.org" = 1.0 }
"#;
    let s = Scenario::parse(Path::new("inline.toml"), text).unwrap();
    let out = run(&s);
    let accepted = |name: &str| {
        out.receivers
            .iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
            .messages_accepted
    };
    assert_eq!(accepted("relay"), 5, "the relay took the mail");
    assert_eq!(accepted("other"), 0);
    assert_eq!(
        out.receivers[0].0, "relay",
        "providers keep their order in the file"
    );
}
