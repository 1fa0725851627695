//! Reports built from real runs, checked against what the accounting log says.

mod common;

use common::runs::{load, run};
use pmta_sim::report;

fn report_of(scenario: &pmta_sim::scenario::Scenario) -> report::Report {
    let out = run(scenario);
    let data = out.data.clone();
    report::build(&data)
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
    let data = out.data.clone();
    let report = report::build(&data);
    assert!(!report.backoff_bands.is_empty());
    let start = s.start.unix_secs();
    for band in &report.backoff_bands {
        assert_eq!(band.row, "yahoo.com/v1");
        let at = start + band.from_s as u64;
        assert!(
            out.records
                .iter()
                .any(|r| r.time_logged.unix_secs() == at && r.dsn_diag.contains("[TS01]")),
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

/// Issue 13, item 7 (reference isp-behavior §1, "Response phases seen in real logs": Yahoo's
/// TSS04 "in reply to MAIL FROM command"): `run.json` keeps each reply's SMTP step and each
/// connection's message count, and the summary and terminal show where each provider said
/// no.
#[test]
fn run_json_keeps_each_replys_step_and_each_connections_messages() {
    let s = load("yahoo-tss04");
    let out = run(&s);
    let data = out.data.clone();
    let json = serde_json::to_string(&data).unwrap();
    assert!(
        json.contains("\"phase\":\"mail\""),
        "the TSS04 replies came at MAIL FROM"
    );
    let tss04 = data
        .replies
        .iter()
        .find(|r| r.example.contains("[TSS04]"))
        .unwrap();
    assert_eq!(
        (tss04.phase.as_str(), tss04.reply.as_str()),
        ("mail", "421 4.7.0")
    );
    let deliveries = data
        .replies
        .iter()
        .find(|r| r.reply.starts_with("250"))
        .unwrap();
    assert_eq!(deliveries.phase, "data_end");
    let report = report::build(&data);
    let yahoo = &report.summary.providers["yahoo"];
    assert_eq!(yahoo.refusals()[0].0, "mail");
    let table = report::terminal::table(&report.summary, false);
    assert!(table.contains("  yahoo said no at: mail "), "{table}");
    // A round trip through run.json loses nothing.
    let back: report::RunData = serde_json::from_str(&json).unwrap();
    assert_eq!(back, data);

    // Yahoo ends a connection after 20 messages: run.json counts them per connection.
    let s = load("yahoo-per-connection");
    let out = run(&s);
    let data = out.data.clone();
    let with_21: u64 = data
        .figures
        .queues
        .values()
        .filter_map(|q| q.messages_per_connection.get(&21))
        .sum();
    assert!(with_21 >= 4, "{:?}", data.figures.queues);
    let log = &out.receivers[0].1;
    assert_eq!(
        log.connections.iter().map(|c| c.messages).max(),
        Some(20),
        "the provider took 20 on each; the 21st MAIL met the silent close"
    );
}
