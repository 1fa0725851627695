//! Throttles shared by several nodes (`shared-throttles`): the directives as the
//! configuration reads them, and simulated runs of several engine nodes against one store,
//! judged on the wire: the combined rate per source IP over every sliding window and the
//! connections open at once never exceed the configured limits, store outage included.

mod common;

use std::net::IpAddr;

use common::checkers::{RunView, peak_connections_per_source_ip, peak_per_source_ip};
use common::runs::{load, load_edited, run_in, text};
use common::{assert_diagnostics, load_text};
use pmta_sim::engine::EngineEvent;
use pmta_sim::engine::accounting::RecordType;
use pmta_sim::engine::settings::GlobalSettings;
use pmta_sim::engine::shared::SharedState;
use pmta_sim::scenario::Mode;
use pmta_sim::sim::output::RunOutput;

const SOURCE_IP: &str = "192.0.2.10";

fn ip() -> IpAddr {
    SOURCE_IP.parse().unwrap()
}

fn shared_changes(out: &RunOutput) -> Vec<(u64, SharedState)> {
    out.events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::SharedThrottles { at, state, .. } => Some((at.unix_secs(), *state)),
            _ => None,
        })
        .collect()
}

#[test]
fn the_directives_are_read_and_bad_urls_are_told_where_and_how() {
    let checked = load_text(
        "shared-throttles redis://10.0.0.5/2\nshared-throttles-nodes 3\nshared-throttles-node mta-a\n",
        &[],
    );
    assert_diagnostics(&checked, &[]);
    let globals = GlobalSettings::read(&checked.config.globals, None);
    assert_eq!(
        globals.shared_throttles.as_deref(),
        Some("redis://10.0.0.5:6379/2")
    );
    assert_eq!(globals.shared_throttles_nodes, 3);
    assert_eq!(globals.shared_throttles_node.as_deref(), Some("mta-a"));

    let checked = load_text(
        "shared-throttles http://10.0.0.5:6379\nshared-throttles redis://user:secret@h:1\nshared-throttles redis://h:99999\nshared-throttles-nodes 5000\n",
        &[],
    );
    assert_diagnostics(
        &checked,
        &[
            (1, "error", "`shared-throttles`"),
            (2, "error", "without credentials"),
            (3, "error", "a Redis URL"),
            (4, "error", "between 0 and 1024"),
        ],
    );
    let first = checked.diagnostics[0].render(&checked.config.sources);
    assert!(first.contains("/etc/pmta/config:1:"), "{first}");
    assert!(
        first.contains("write `shared-throttles redis://10.0.0.5:6379`"),
        "{first}"
    );
    // Unset: every limit is local, as in PowerMTA.
    let globals = GlobalSettings::read(&load_text("", &[]).config.globals, None);
    assert_eq!(globals.shared_throttles, None);
    assert_eq!(globals.shared_throttles_nodes, 1);
}

/// The shipped scenario, in one mode: every limit holds for the three nodes together, on
/// the wire, over every sliding window, and the outage is seen by every node both ways.
fn three_nodes_hold_one_set_of_limits(mode: Mode) {
    let scenario = load("three-nodes");
    let out = run_in(&scenario, mode);
    let view = RunView::of_run(&out);
    let peak = peak_per_source_ip(&view, ip(), 60);
    assert_eq!(peak, 60, "{mode:?}: the limit is reached and never passed");
    assert_eq!(peak_connections_per_source_ip(&view, ip()), 3, "{mode:?}");
    let delivered = out
        .records
        .iter()
        .filter(|r| r.record_type == RecordType::Delivered)
        .count();
    assert_eq!(delivered, 600, "{mode:?}: no mail lost");
    assert_eq!(out.pending, 0);
    // Each of the three nodes lost the store in its fourth minute and found it again in its
    // seventh.
    let start = scenario.start.unix_secs();
    let changes = shared_changes(&out);
    let lost: Vec<u64> = changes
        .iter()
        .filter(|(_, s)| *s == SharedState::Fallback)
        .map(|(at, _)| at - start)
        .collect();
    let found: Vec<u64> = changes
        .iter()
        .filter(|(_, s)| *s == SharedState::Shared)
        .map(|(at, _)| at - start)
        .collect();
    assert_eq!(lost.len(), 3, "{changes:?}");
    assert!(lost.iter().all(|s| (240..245).contains(s)), "{lost:?}");
    assert_eq!(found.len(), 3, "{changes:?}");
    assert!(found.iter().all(|s| (420..425).contains(s)), "{found:?}");
    // On their shares (20 a minute each) between the quiet minutes, the three sent the
    // whole limit together: the fallback is the share, not a stop.
    let in_fallback = out
        .connections
        .iter()
        .flat_map(|c| c.rcpt_times.iter())
        .filter(|t| (300..420).contains(&(t.unix_secs() - start)))
        .count();
    assert_eq!(in_fallback, 120);
}

#[test]
fn three_nodes_hold_one_set_of_limits_in_network_mode() {
    three_nodes_hold_one_set_of_limits(Mode::Network);
}

#[test]
fn three_nodes_hold_one_set_of_limits_in_fast_mode() {
    three_nodes_hold_one_set_of_limits(Mode::Fast);
}

#[test]
fn without_shared_throttles_three_nodes_send_three_times_the_limit() {
    // The control: the same nodes with local limits only. The checker that holds the shared
    // run to 60 a minute sees 180 here.
    let edited = text("three-nodes")
        .replace("shared-throttles redis://127.0.0.1:6379/0\n", "")
        .replace("shared-throttles-nodes 3\n", "")
        .replace("max = 60", "max = 180");
    let scenario = load_edited("three-nodes-local", &edited);
    let out = pmta_sim::driver::fast::run(&scenario, config_of(&scenario)).unwrap();
    let view = RunView::of_run(&out);
    // The workload injects 120 a minute: with local limits nothing holds the nodes to 60.
    let peak = peak_per_source_ip(&view, ip(), 60);
    assert!(peak >= 100, "{peak}");
    assert!(shared_changes(&out).is_empty());
}

#[test]
fn a_store_that_never_answers_leaves_each_node_its_share() {
    // The store is down for the whole run: every node sends on its share from the start
    // (after its quiet minute), together never over the limit, and nothing is lost.
    let edited =
        text("three-nodes").replace("at = \"4m\"\nfor = \"3m\"", "at = \"0s\"\nfor = \"20m\"");
    let scenario = load_edited("three-nodes-no-store", &edited);
    let out = run_in(&scenario, Mode::Fast);
    let view = RunView::of_run(&out);
    assert!(peak_per_source_ip(&view, ip(), 60) <= 60);
    assert_eq!(peak_connections_per_source_ip(&view, ip()), 3);
    let changes = shared_changes(&out);
    assert_eq!(changes.len(), 3, "{changes:?}");
    assert!(changes.iter().all(|(_, s)| *s == SharedState::Fallback));
    let delivered = out
        .records
        .iter()
        .filter(|r| r.record_type == RecordType::Delivered)
        .count();
    assert_eq!(delivered as u64 + out.pending as u64, 600);
    assert!(
        delivered >= 540,
        "{delivered}: 60 a minute after the quiet minute"
    );
}

fn config_of(scenario: &pmta_sim::scenario::Scenario) -> pmta_sim::config::model::Config {
    let pmta_sim::scenario::ConfigSource::Inline(text) = &scenario.config else {
        panic!("three-nodes has its configuration inline");
    };
    let checked = load_text(text, &[]);
    assert_eq!(checked.error_count(), 0);
    checked.config
}
