//! Reports built from real runs, checked against what the accounting log says.

mod common;

use common::runs::{load, run};
use pmta_sim::report::{self, Row};

fn report_of(scenario: &pmta_sim::scenario::Scenario) -> report::Report {
    let out = run(scenario);
    let data = out.run_data(scenario, String::new());
    let rows: Vec<Row> = out.records.iter().map(Row::of).collect();
    report::build(&data, &rows)
}

/// A stream at a constant 60 a minute, with no limit in the way, draws a flat line at 3,600
/// an hour while it lasts.
#[test]
fn a_constant_rate_run_draws_a_flat_line_at_that_rate() {
    let dir = std::env::temp_dir().join(format!("pmta-sim-flat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("flat.toml");
    std::fs::write(
        &path,
        r#"name = "flat"
seed = 5
duration = "12m"
start_time = "2026-09-21T12:00:00Z"
tick_ms = 10
config_inline = """
<virtual-mta v1>
    smtp-source-host 192.0.2.10 mta1.news.example.com
</virtual-mta>
"""

[isps.example]
domains = ["example.net"]

[[workload]]
vmta = "v1"
mail_from = "news@news.example.com"
messages = 600
rate = "60/m"
domains = { "example.net" = 1.0 }
"#,
    )
    .unwrap();
    let scenario = pmta_sim::driver::load_scenario(&path).unwrap();
    let report = report_of(&scenario);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(report.bucket_s, 60);
    let delivered = &report.outcomes["example"][0].points;
    for (x, per_hour) in &delivered[..10] {
        assert_eq!(*per_hour, 3600.0, "at {x}s: {delivered:?}");
    }
    assert!(delivered[11..].iter().all(|(_, v)| *v == 0.0));
    assert_eq!(report.summary.run.peak_delivered_per_minute, 60);
}

/// The backoff scenario's band starts where acct.csv shows the reply that matched the
/// pattern and lasts `backoff-to-normal-after` (10 minutes).
#[test]
fn a_backoff_run_draws_its_band_where_the_accounting_log_says() {
    let s = load("backoff");
    let out = run(&s);
    let data = out.run_data(&s, String::new());
    let rows: Vec<Row> = out.records.iter().map(Row::of).collect();
    let report = report::build(&data, &rows);
    assert!(!report.backoff_bands.is_empty());
    let start = s.start.unix_secs();
    for band in &report.backoff_bands {
        assert_eq!(band.row, "yahoo.com/v1");
        let at = start + band.from_s as u64;
        assert!(
            rows.iter()
                .any(|r| r.logged_s == at && r.diag.contains("[TS01]")),
            "no [TS01] record at the band's start {at}"
        );
        assert!(band.to_s - band.from_s >= 600.0, "{band:?}");
    }
    let q = &report.summary.queues["yahoo.com/v1"];
    assert_eq!(
        q.counts.backoff_entries as usize,
        report.backoff_bands.len()
    );
    assert!(
        q.binding.explanation.contains("after 421 4.7.0"),
        "{}",
        q.binding.explanation
    );
}
