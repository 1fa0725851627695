//! What the benchmarks share: the five provider domains and a pool configuration.

use std::path::Path;

use pmta_sim::config::model::Config;
use pmta_sim::config::{self, MemFs, Options};

/// The domains the load goes to, one per provider.
pub const DOMAINS: [&str; 5] = [
    "gmail.com",
    "yahoo.com",
    "outlook.com",
    "icloud.com",
    "gmx.net",
];

/// `vmtas` virtual MTAs (192.0.2.1…) in the pool `pool`, 10 connections per queue.
pub fn pool_config(vmtas: usize, max_msg_per_connection: u32) -> Config {
    let mut text = String::new();
    for i in 1..=vmtas {
        text.push_str(&format!(
            "<virtual-mta v{i}>\n    smtp-source-host 192.0.2.{i} m{i}.example.com\n</virtual-mta>\n"
        ));
    }
    text.push_str("<virtual-mta-pool pool>\n");
    for i in 1..=vmtas {
        text.push_str(&format!("    virtual-mta v{i}\n"));
    }
    text.push_str(&format!(
        "</virtual-mta-pool>\n<domain *>\n    max-smtp-out 10\n    max-msg-per-connection {max_msg_per_connection}\n    connection-idle-timeout 1m\n</domain>\n"
    ));
    let fs = MemFs::new().with("/c", text);
    let checked = config::load(Path::new("/c"), &fs, Options::default()).unwrap();
    assert_eq!(checked.error_count(), 0);
    checked.config
}
