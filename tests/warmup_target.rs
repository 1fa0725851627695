//! The eight-IP plan (8 new IPs to 1,000,000 messages a day across the five big providers)
//! replayed from day 1 with `warmup check --adaptive`: every provider's every day stays under
//! the deferral bound the plan states, and each provider reaches its share of the million
//! on the day it is due.
//!
//! CI replays the first 22 days (3.3 million messages; Comcast and Outlook reach their share
//! by then, the others are on their way). The whole ramp to the million a day is about 19
//! million messages and an hour in a release build; run it after touching the
//! planner, the loop or a provider model:
//!
//!     PMTA_SIM_WARMUP_DAYS=43 cargo test --release --test warmup_target
//!
//! Its own test binary, so it does not share the machine's two cores with other tests.

mod common;

use common::cli::{pmta_sim, scratch};

const EIGHT_IPS: &str = "examples/warmup/eight-ips-1m.toml";

/// The day each provider reaches its share in the closed-loop replay (measured with the
/// command above, 2026-12-02), plus one so that a day's slip does not fail the test while a
/// week's would.
const DUE: [(&str, u64); 5] = [
    ("comcast", 16),
    ("outlook", 22),
    ("icloud", 32),
    ("yahoo", 38),
    ("gmail", 43),
];

/// The days replayed: `PMTA_SIM_WARMUP_DAYS`, else 22 (Outlook due).
fn days() -> u32 {
    std::env::var("PMTA_SIM_WARMUP_DAYS").map_or(22, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("PMTA_SIM_WARMUP_DAYS is a number of days, not {v:?}"))
    })
}

#[test]
fn the_plan_reaches_a_million_a_day_under_its_deferral_bound() {
    let days_replayed = days();
    let out = scratch("warmup-target");
    let plan = out.join("plan");
    let run = pmta_sim(&["warmup", "plan", EIGHT_IPS, "--out", plan.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(0));
    let stated = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(
        stated.contains("8 IPs to 1000000 a day") && stated.contains("(deferral bound 5% a day)"),
        "{stated}"
    );
    let report = out.join("check");
    let run = pmta_sim(&[
        "warmup",
        "check",
        plan.join("schedule.csv").to_str().unwrap(),
        "--input",
        EIGHT_IPS,
        "--days",
        &days_replayed.to_string(),
        "--adaptive",
        "--out",
        report.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(
        run.status.code(),
        Some(0),
        "no risk day: {stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(s["adaptive"], true);
    assert_eq!(
        s["deferral_bound"].as_f64(),
        Some(0.05),
        "the bound the plan states"
    );
    let days = s["days"].as_array().unwrap();
    assert_eq!(
        days.len(),
        days_replayed as usize * 5,
        "every day at every provider"
    );
    for d in days {
        assert!(
            d["deferral_rate"].as_f64().unwrap() <= 0.05
                && d["risks"].as_array().unwrap().is_empty(),
            "day {} at {}: {d}",
            d["day"],
            d["provider"]
        );
    }
    // Each provider due within the days replayed reached its share of the million by its
    // day; the others are still on their way (not reached before they are due).
    let warm = s["warm"].as_array().unwrap();
    assert_eq!(warm.len(), 5);
    let shares: u64 = warm
        .iter()
        .map(|w| w["share_per_day"].as_u64().unwrap())
        .sum();
    assert_eq!(shares, 1_000_000);
    for w in warm {
        let provider = w["provider"].as_str().unwrap();
        let (_, due) = DUE.iter().find(|(p, _)| *p == provider).unwrap();
        let reached = w["reached_day"].as_u64();
        if *due <= u64::from(days_replayed) {
            assert!(
                reached.is_some_and(|d| d <= *due),
                "{provider} not warm by day {due}: {w}\n{stdout}"
            );
        } else {
            assert!(
                reached.is_none_or(|d| d + 7 > *due),
                "{provider} a week early: {w}"
            );
        }
    }
    // Once every provider is due, the last day delivered the million (less the list's
    // unknown users).
    if DUE.iter().all(|(_, due)| *due <= u64::from(days_replayed)) {
        let last: u64 = days
            .iter()
            .filter(|d| d["day"] == days_replayed)
            .map(|d| d["delivered"].as_u64().unwrap())
            .sum();
        assert!(
            last >= 950_000,
            "day {days_replayed} delivered {last}:\n{stdout}"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}
