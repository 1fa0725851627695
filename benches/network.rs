//! Simulated messages per wall second under the network simulator.
//!
//! Run: `cargo bench --bench network`. One simulated hour, five providers (one MX each), a
//! pool of five virtual MTAs, 200,000 messages paced evenly over the hour, every one a full
//! SMTP exchange over turmoil TCP with 1–20 ms seeded latency, at a 10 ms tick (and, for
//! comparison, the same at a 1 ms tick with a tenth of the mail). Prints the figures.

use std::path::Path;
use std::time::Instant;

use pmta_sim::config::{self, MemFs, Options};
use pmta_sim::driver::network;
use pmta_sim::scenario::Scenario;

const CONFIG: &str = "
<virtual-mta v1>
    smtp-source-host 192.0.2.1 m1.example.com
</virtual-mta>
<virtual-mta v2>
    smtp-source-host 192.0.2.2 m2.example.com
</virtual-mta>
<virtual-mta v3>
    smtp-source-host 192.0.2.3 m3.example.com
</virtual-mta>
<virtual-mta v4>
    smtp-source-host 192.0.2.4 m4.example.com
</virtual-mta>
<virtual-mta v5>
    smtp-source-host 192.0.2.5 m5.example.com
</virtual-mta>
<virtual-mta-pool pool>
    virtual-mta v1
    virtual-mta v2
    virtual-mta v3
    virtual-mta v4
    virtual-mta v5
</virtual-mta-pool>
<domain *>
    max-smtp-out 10
    max-msg-per-connection 1000
    connection-idle-timeout 1m
</domain>
";

fn scenario(messages: u64, tick_ms: u64) -> String {
    let mut text = format!(
        "name = \"bench\"\nseed = 1\nduration = \"1h\"\nstart_time = \"2026-09-21T12:00:00Z\"\ntick_ms = {tick_ms}\nconfig = \"unused.conf\"\n"
    );
    let domains = [
        "gmail.com",
        "yahoo.com",
        "outlook.com",
        "icloud.com",
        "gmx.net",
    ];
    for (i, d) in domains.iter().enumerate() {
        text.push_str(&format!(
            "[isps.isp{i}]\ndomains = [\"{d}\"]\nstarttls = false\n"
        ));
    }
    text.push_str(&format!(
        "[[workload]]\nvmta = \"pool\"\nmail_from = \"a@example.com\"\nmessages = {messages}\nover = \"55m\"\nsize = \"2k\"\ndomains = {{ \"gmail.com\" = 1.0, \"yahoo.com\" = 1.0, \"outlook.com\" = 1.0, \"icloud.com\" = 1.0, \"gmx.net\" = 1.0 }}\n"
    ));
    text
}

fn measure(messages: u64, tick_ms: u64) {
    let scenario = Scenario::parse(Path::new("bench.toml"), &scenario(messages, tick_ms)).unwrap();
    let fs = MemFs::new().with("/c", CONFIG);
    let checked = config::load(Path::new("/c"), &fs, Options::default()).unwrap();
    let started = Instant::now();
    let out = network::run(&scenario, checked.config).unwrap();
    let wall = started.elapsed().as_secs_f64();
    let delivered = out
        .records
        .iter()
        .filter(|r| r.record_type == pmta_sim::engine::accounting::RecordType::Delivered)
        .count();
    assert_eq!(delivered as u64, messages, "every message delivered");
    println!(
        "1 simulated hour, 5 receivers, tick {tick_ms} ms: {messages} messages in {wall:.2} s wall = {:.0} messages per wall second",
        messages as f64 / wall
    );
}

fn main() {
    measure(200_000, 10);
    measure(20_000, 1);
}
