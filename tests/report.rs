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

/// Where a run's accounting file goes in a test: memory shared with the test.
struct Shared(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Three days at 100 messages a day in fast mode, with an `<acct-file>` block keeping `d`
/// and `t` records with a few fields each; every record is also traced for the checks.
const DAYS: &str = r#"name = "days"
seed = 3
duration = "3d"
start_time = "2026-09-21T00:00:00Z"
mode = "fast"
config_inline = """
<acct-file /var/log/pmta/acct.csv>
    records d,t
    record-fields d timeLogged,rcpt,vmta
    record-fields transient timeLogged,rcpt,dsnStatus
</acct-file>
<virtual-mta v1>
    smtp-source-host 192.0.2.10 mta1.news.example.com
</virtual-mta>
"""

[isps.example]
domains = ["example.net"]
greylist = { delay = "5m" }

[[workload]]
vmta = "v1"
mail_from = "news@news.example.com"
messages = 300
over = "3d"
domains = { "example.net" = 1.0 }
unknown_user_rate = 0.1
"#;

/// The run of [`DAYS`]: its output and the accounting file it streamed.
fn days_run() -> (pmta_sim::sim::output::RunOutput, Vec<u8>) {
    let dir = std::env::temp_dir().join(format!("pmta-sim-days-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("days.toml");
    std::fs::write(&path, DAYS).unwrap();
    let scenario = pmta_sim::driver::load_scenario(&path).unwrap();
    let checked = pmta_sim::driver::load_config(&scenario, &path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(checked.error_count(), 0, "{:?}", checked.diagnostics);
    let acct = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let options = pmta_sim::sim::RunOptions {
        trace: true,
        records: true,
        acct: Some(Box::new(Shared(std::rc::Rc::clone(&acct)))),
    };
    let out =
        pmta_sim::driver::fast::run_with_progress(&scenario, checked.config, options, &mut |_| {})
            .unwrap();
    let bytes = acct.borrow().clone();
    (out, bytes)
}

/// Reference §2.4: the accounting file holds the record types of `records` (here `d,t`:
/// no `b` although mail bounced) with the fields `record-fields` gives each type; it is
/// written while the run goes, the same bytes every time.
#[test]
fn the_acct_file_streams_the_types_and_fields_its_block_asks_for() {
    use pmta_sim::engine::accounting::RecordType;
    let (out, acct) = days_run();
    let text = String::from_utf8(acct.clone()).unwrap();
    let mut lines = text.split_terminator("\r\n");
    assert_eq!(lines.next().unwrap(), "type,timeLogged,rcpt,vmta,dsnStatus");
    let rows: Vec<&str> = lines.collect();
    let count = |kind: RecordType| out.records.iter().filter(|r| r.record_type == kind).count();
    let written = |prefix: &str| rows.iter().filter(|r| r.starts_with(prefix)).count();
    assert!(count(RecordType::Bounced) > 0, "unknown users bounce");
    assert!(count(RecordType::Transient) > 0, "greylisting defers");
    assert_eq!(written("d,"), count(RecordType::Delivered));
    assert_eq!(written("t,"), count(RecordType::Transient));
    assert_eq!(rows.len(), written("d,") + written("t,"), "only d and t");
    let first_d = out
        .records
        .iter()
        .find(|r| r.record_type == RecordType::Delivered)
        .unwrap();
    assert!(
        rows.contains(
            &format!(
                "d,{},{},v1,",
                first_d.time_logged.acct_format(),
                first_d.rcpt
            )
            .as_str()
        )
    );
    // A `t` row leaves the `d` type's `vmta` column empty and fills its own `dsnStatus`.
    assert!(
        rows.iter()
            .filter(|r| r.starts_with("t,"))
            .all(|r| r.contains(",,4.")),
        "{rows:?}"
    );
    // The same scenario and seed: the same bytes, and the same figures.
    let (again, acct_again) = days_run();
    assert_eq!(acct, acct_again);
    assert_eq!(
        serde_json::to_string(&out.data).unwrap(),
        serde_json::to_string(&again.data).unwrap()
    );
}

/// The figures kept while the run went agree with its records: counts exactly, latency
/// percentiles within the sketch's precision (exact up to 2,047 s, 0.1% above).
#[test]
fn the_aggregates_agree_with_the_records() {
    use pmta_sim::engine::accounting::RecordType;
    let (out, _) = days_run();
    let run = &out.data.figures.run;
    let of = |kind: RecordType| out.records.iter().filter(|r| r.record_type == kind).count() as u64;
    assert_eq!(run.delivered, of(RecordType::Delivered));
    assert_eq!(run.bounced, of(RecordType::Bounced));
    assert_eq!(
        run.transient_by_class.values().sum::<u64>(),
        of(RecordType::Transient) + of(RecordType::TransientQueue)
    );
    assert_eq!(run.injected, Some(300));
    let mut latencies: Vec<u64> = out
        .records
        .iter()
        .filter(|r| r.record_type == RecordType::Delivered)
        .map(|r| r.time_logged.unix_secs() - r.time_queued.unix_secs())
        .collect();
    latencies.sort_unstable();
    let at = |q: usize| latencies[((latencies.len() - 1) * q).div_ceil(100)];
    let near = |sketch: u64, exact: u64| {
        if exact <= 2047 {
            sketch == exact
        } else {
            sketch.abs_diff(exact) as f64 <= exact as f64 * 0.001 + 1.0
        }
    };
    let p = run.delivery_latency_s;
    assert!(near(p.p50, at(50)), "p50 {} vs {}", p.p50, at(50));
    assert!(near(p.p95, at(95)), "p95 {} vs {}", p.p95, at(95));
    assert_eq!(p.max, *latencies.last().unwrap());
    assert!(p.p95 > 300, "greylisted mail waited out the delay: {p:?}");
}

/// A run over two days is charted by day: one bucket a day, bars per day on a daily axis,
/// not hundreds of spikes.
#[test]
fn a_multi_day_run_is_charted_by_day() {
    let (out, _) = days_run();
    let report = report::build(&out.data);
    assert!(report.daily);
    assert_eq!(report.bucket_s, 86_400);
    let delivered = &report.outcomes["example"][0];
    assert_eq!(delivered.name, "delivered per day");
    assert_eq!(delivered.points.len(), 3);
    assert!(
        delivered.points.iter().all(|(_, n)| *n > 50.0),
        "{delivered:?}"
    );
    let total: f64 = delivered.points.iter().map(|(_, n)| n).sum();
    assert_eq!(total as u64, report.summary.run.delivered);
    let charts = report::charts::render(&report);
    let outcomes = charts
        .iter()
        .find(|c| c.name == "outcomes-example")
        .unwrap();
    assert!(outcomes.svg.contains("day 1") && outcomes.svg.contains("day 2"));
    assert!(
        !outcomes.svg.contains("stroke-width=\"2\""),
        "per-day values are bars, not lines"
    );
    assert!(
        outcomes.svg.matches("<rect").count() >= 9,
        "three bars a day"
    );
    assert!(outcomes.svg.contains("recipients per day"));
}
