//! Simulated messages per wall second in both simulated modes, on the same scenario.
//!
//! Run: `cargo bench --bench network`. One simulated hour, five providers (one MX each), a
//! pool of five virtual MTAs, 200,000 messages paced evenly over the hour, every one a full
//! SMTP exchange with 1–20 ms seeded latency, at a 10 ms tick (and, for comparison, the
//! same at a 1 ms tick with a tenth of the mail): under turmoil (`network`) and in virtual
//! time (`fast`). Prints the figures and the fast/network ratio.

mod common;

use std::path::Path;
use std::time::Instant;

use pmta_sim::driver::{fast, network};
use pmta_sim::scenario::Scenario;

fn scenario(messages: u64, tick_ms: u64) -> String {
    let mut text = format!(
        "name = \"bench\"\nseed = 1\nduration = \"1h\"\nstart_time = \"2026-09-21T12:00:00Z\"\ntick_ms = {tick_ms}\nconfig = \"unused.conf\"\n"
    );
    for (i, d) in common::DOMAINS.iter().enumerate() {
        text.push_str(&format!(
            "[isps.isp{i}]\ndomains = [\"{d}\"]\nstarttls = false\n"
        ));
    }
    let weights: Vec<String> = common::DOMAINS
        .iter()
        .map(|d| format!("\"{d}\" = 1.0"))
        .collect();
    text.push_str(&format!(
        "[[workload]]\nvmta = \"pool\"\nmail_from = \"a@example.com\"\nmessages = {messages}\nover = \"55m\"\nsize = \"2k\"\ndomains = {{ {} }}\n",
        weights.join(", ")
    ));
    text
}

/// Wall seconds to run the scenario in `mode`.
fn measure(mode: &str, messages: u64, tick_ms: u64) -> f64 {
    let scenario = Scenario::parse(Path::new("bench.toml"), &scenario(messages, tick_ms)).unwrap();
    let config = common::pool_config(5, 1000);
    let started = Instant::now();
    let out = match mode {
        "fast" => fast::run(&scenario, config),
        _ => network::run(&scenario, config),
    }
    .unwrap();
    let wall = started.elapsed().as_secs_f64();
    let delivered = out
        .records
        .iter()
        .filter(|r| r.record_type == pmta_sim::engine::accounting::RecordType::Delivered)
        .count();
    assert_eq!(delivered as u64, messages, "every message delivered");
    println!(
        "{mode:>7}: 1 simulated hour, 5 receivers, tick {tick_ms} ms: {messages} messages in {wall:.2} s wall = {:.0} messages per wall second",
        messages as f64 / wall
    );
    wall
}

fn main() {
    for (messages, tick_ms) in [(200_000, 10), (20_000, 1)] {
        let network = measure("network", messages, tick_ms);
        let fast = measure("fast", messages, tick_ms);
        println!(
            "   fast/network speed ratio at tick {tick_ms} ms: {:.1}×",
            network / fast
        );
    }
}
