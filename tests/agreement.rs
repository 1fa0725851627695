//! The two simulated modes agree: every shipped scenario runs under turmoil (`network`) and
//! in virtual time (`fast`), its `[[expect]]` suite passes in both, and the figures a user
//! reads from the two runs agree within stated tolerances.
//!
//! Why they are not identical: both modes draw each segment's latency from the same seeded
//! model, but turmoil draws from one stream shared by every host in the order its step
//! visits them, while the fast driver draws per event in time order. The same segment can
//! therefore arrive a few milliseconds earlier or later, which moves a message across a
//! provider's hourly bucket, a penalty window or a retry boundary now and then. Tolerances:
//!
//! - **Counts** (delivered, deferred by enhanced-status class, bounced, expired, left queued,
//!   backoff entries): `|a − b| ≤ max(2 % of the larger, 0.2 % of the messages injected, 2)`.
//!   2 % is the bar; a deferral class that is a small share of a large run (Gmail's
//!   4.7.28 in the six-hour run: about 5,000 of 200,000) moves by the absolute number of
//!   messages that crossed a boundary, which is a share of the volume, not of the class;
//!   2 covers the smallest runs (14 vs 16 delivered at iCloud's hammer).
//! - **Delivery latency p50/p95**: `|a − b| ≤ max(5 % of the larger, one retry step)`. A
//!   message that misses a window waits one retry step more; the shortest retry step in any
//!   shipped configuration is 60 s (checked below), and latencies are whole seconds.

mod common;

use std::path::Path;

use serde_json::Value;

use common::cli::{pmta_sim, scratch};

/// The shortest retry step (`retry-after`, `retry-recipients-after`, `backoff-retry-after`)
/// of any shipped configuration; `shipped_retry_steps_are_at_least_a_minute` holds it true.
const RETRY_STEP_MIN_S: u64 = 60;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `pmta-sim test scenarios` in one mode; every expectation must hold.
fn run_suite(mode: &str, out: &Path) {
    let junit = out.join("junit.xml");
    let output = pmta_sim(&[
        "test",
        "scenarios",
        "--mode",
        mode,
        "--out",
        out.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
    ]);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{mode}: {stdout}{}",
        text(&output.stderr)
    );
    assert!(
        !stdout.contains("FAIL") && !stdout.contains("ERROR"),
        "{mode}: {stdout}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("failures=\"0\""), "{mode}: {xml}");
    assert!(xml.matches("<testcase").count() >= 20, "{mode}: {xml}");
}

fn run_figures(dir: &Path) -> Value {
    let path = dir.join("summary.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let summary: Value = serde_json::from_str(&text).unwrap();
    summary["run"].clone()
}

fn count(run: &Value, key: &str) -> u64 {
    run[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` is a count in {run}"))
}

fn count_within(a: u64, b: u64, injected: u64) -> bool {
    let slack = (a.max(b) as f64 * 0.02)
        .max(injected as f64 * 0.002)
        .max(2.0);
    a.abs_diff(b) as f64 <= slack
}

fn latency_within(a: f64, b: f64) -> bool {
    (a - b).abs() <= (a.max(b) * 0.05).max(RETRY_STEP_MIN_S as f64)
}

/// The differences between two runs' figures that exceed the tolerances.
fn disagreements(network: &Value, fast: &Value) -> Vec<String> {
    let injected = count(network, "injected");
    let mut out = Vec::new();
    assert_eq!(injected, count(fast, "injected"), "the same workload");
    for key in [
        "delivered",
        "bounced",
        "expired",
        "queued_at_end",
        "backoff_entries",
    ] {
        let (a, b) = (count(network, key), count(fast, key));
        if !count_within(a, b, injected) {
            out.push(format!("{key}: network {a}, fast {b}"));
        }
    }
    let empty = serde_json::Map::new();
    let classes = |run: &Value| {
        run["transient_by_class"]
            .as_object()
            .unwrap_or(&empty)
            .clone()
    };
    let (na, fa) = (classes(network), classes(fast));
    for class in na.keys().chain(fa.keys()) {
        let a = na.get(class).and_then(Value::as_u64).unwrap_or(0);
        let b = fa.get(class).and_then(Value::as_u64).unwrap_or(0);
        if !count_within(a, b, injected) {
            out.push(format!("deferred {class}: network {a}, fast {b}"));
        }
    }
    let (la, lb) = (&network["delivery_latency_s"], &fast["delivery_latency_s"]);
    assert_eq!(
        la.is_null(),
        lb.is_null(),
        "both modes delivered something or neither did"
    );
    if !la.is_null() {
        for p in ["p50", "p95"] {
            let (a, b) = (la[p].as_f64().unwrap(), lb[p].as_f64().unwrap());
            if !latency_within(a, b) {
                out.push(format!("latency {p}: network {a} s, fast {b} s"));
            }
        }
    }
    out
}

#[test]
fn every_shipped_scenario_passes_and_agrees_in_both_modes() {
    let dir = scratch("agreement");
    let (network_dir, fast_dir) = (dir.join("network"), dir.join("fast"));
    run_suite("network", &network_dir);
    run_suite("fast", &fast_dir);
    let mut names: Vec<_> = std::fs::read_dir(&network_dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().join("summary.json").is_file())
        .map(|e| e.file_name())
        .collect();
    names.sort();
    assert!(names.len() >= 30, "every shipped scenario ran: {names:?}");
    let mut failures = Vec::new();
    for name in &names {
        let network = run_figures(&network_dir.join(name));
        let fast = run_figures(&fast_dir.join(name));
        for problem in disagreements(&network, &fast) {
            failures.push(format!("{}: {problem}", name.to_string_lossy()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_tolerances_catch_real_disagreement() {
    let run = |delivered: u64, p95: f64| {
        serde_json::json!({
            "injected": 10_000, "delivered": delivered, "bounced": 0, "expired": 0,
            "queued_at_end": 10_000 - delivered, "backoff_entries": 0,
            "transient_by_class": {"4.7": 10},
            "delivery_latency_s": {"p50": 1.0, "p95": p95},
        })
    };
    assert!(disagreements(&run(900, 100.0), &run(890, 150.0)).is_empty());
    assert_eq!(
        disagreements(&run(900, 100.0), &run(850, 100.0)),
        vec!["delivered: network 900, fast 850".to_string()]
    );
    assert_eq!(
        disagreements(&run(900, 100.0), &run(900, 200.0)),
        vec!["latency p95: network 100 s, fast 200 s".to_string()]
    );
}

/// Every retry step a shipped configuration sets is at least `RETRY_STEP_MIN_S`, so the
/// latency tolerance is truly "one retry step" for every scenario above.
#[test]
fn shipped_retry_steps_are_at_least_a_minute() {
    let mut files = Vec::new();
    let mut dirs = vec![root().join("scenarios")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    let mut seen = 0;
    for path in files {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue; // not text: no directives in it
        };
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(name), Some(value)) = (words.next(), words.next()) else {
                continue;
            };
            if !matches!(
                name,
                "retry-after" | "retry-recipients-after" | "backoff-retry-after"
            ) {
                continue;
            }
            for step in pmta_sim::config::value::parse_interval_list(value).unwrap() {
                seen += 1;
                assert!(
                    step.seconds >= RETRY_STEP_MIN_S,
                    "{path:?}: `{line}` retries sooner than the agreement test allows for"
                );
            }
        }
    }
    assert!(seen > 20, "the shipped configurations set retry steps");
}
