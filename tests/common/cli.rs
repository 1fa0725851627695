//! Running the `pmta-sim` binary in tests: the command, a fresh scratch directory, and a
//! small valid scenario that each test changes one thing in.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs the binary from the repository root.
pub fn pmta_sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pmta-sim"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the binary runs")
}

/// A fresh, empty directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pmta-sim-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Five messages through a pool of one virtual MTA to a generic provider, in two simulated
/// minutes: valid, and fast.
pub const SMALL_SCENARIO: &str = r#"name = "h"
seed = 1
duration = "2m"
start_time = "2026-09-21T12:00:00Z"
tick_ms = 10
config_inline = """
<virtual-mta v1>
    smtp-source-host 192.0.2.10 mta1.example.com
</virtual-mta>
<virtual-mta-pool p>
    virtual-mta v1
</virtual-mta-pool>
"""

[isps.a]
domains = ["a.example"]

[[workload]]
vmta = "p"
mail_from = "n@s.example"
messages = 5
over = "30s"
domains = { "a.example" = 1.0 }
"#;
