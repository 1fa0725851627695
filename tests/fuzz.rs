//! Fuzzing of every reader of outside input — the scenario and model parsers, the SMTP reply
//! parser, and the `run.json` reader with the report built from it (a report is built from
//! `run.json` alone; `acct.csv` is PowerMTA's file for other tools): no
//! input makes them panic, hang, or allocate without bound. (The configuration reader is
//! fuzzed in `tests/properties.rs`.)
//!
//! Each property runs 256 cases in CI. A longer run, for a release or after touching a
//! parser:
//!
//!     PMTA_SIM_FUZZ_CASES=100000 cargo test --release --test fuzz

use std::path::Path;

use pmta_sim::config::{self, MemFs, Options};
use pmta_sim::report::{self, RunData};
use pmta_sim::scenario::{IspSpec, Scenario, ScenarioError, parse_model};
use pmta_sim::smtp::{ReplyParser, parse_reply_text};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("PMTA_SIM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// A line of a scenario file: its real keys and tables with values of every shape.
fn scenario_line() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("name"),
        Just("seed"),
        Just("duration"),
        Just("start_time"),
        Just("tick_ms"),
        Just("config"),
        Just("config_inline"),
        Just("latency_ms"),
        Just("mode"),
        Just("vmta"),
        Just("mail_from"),
        Just("messages"),
        Just("over"),
        Just("rate"),
        Just("start"),
        Just("domains"),
        Just("size"),
        Just("recipients_per_message"),
        Just("unknown_user_rate"),
        Just("model"),
        Just("mx"),
        Just("history"),
        Just("reputation"),
        Just("kind"),
        Just("at"),
        Just("for"),
        Just("isp"),
        Just("phase"),
        Just("reply"),
        Just("metric"),
        Just("min"),
        Just("max"),
        Just("equals"),
        Just("window"),
        Just("provider"),
        Just("queue"),
        Just("source_ip"),
        Just("category"),
        Just("pattern"),
        Just("per"),
        Just("greylist"),
        Just("rate_limit"),
        Just("capacity_per_ip_per_hour"),
        Just("clean_days"),
    ];
    let value = prop_oneof![
        Just("\"1m\"".to_string()),
        Just("\"0s\"".to_string()),
        Just("\"99999d\"".to_string()),
        Just("\"2026-02-30T12:00:00Z\"".to_string()),
        Just("\"9999-12-31T23:59:59Z\"".to_string()),
        Just("\"2026-09-21T12:00:00Z\"".to_string()),
        Just("0".to_string()),
        Just("18446744073709551615".to_string()),
        Just("-1".to_string()),
        Just("nan".to_string()),
        Just("inf".to_string()),
        Just("1.5".to_string()),
        Just("\"0/h\"".to_string()),
        Just("\"10/m\"".to_string()),
        Just("\"../x\"".to_string()),
        Just("\"v\"".to_string()),
        Just("\"a@b.example\"".to_string()),
        Just("{ \"a.example\" = 1.0 }".to_string()),
        Just("[1, 2]".to_string()),
        Just("[\"1m\", \"2m\"]".to_string()),
        Just("\"550 5.1.1 x\"".to_string()),
        Just("\"\"\"\n<virtual-mta v>\n\"\"\"".to_string()),
        "\"[ -~]{0,12}\"",
        any::<i64>().prop_map(|n| n.to_string()),
    ];
    prop_oneof![
        (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        Just("[isps.a]".to_string()),
        Just("[isps.b]".to_string()),
        Just("[[workload]]".to_string()),
        Just("[[fault]]".to_string()),
        Just("[[expect]]".to_string()),
        Just("[sender]".to_string()),
        "[ -~]{0,30}",
    ]
}

/// A scenario whose values are mostly sound and sometimes anything: deep enough to reach
/// the checks after parsing.
fn scenario_like() -> impl Strategy<Value = String> {
    fn value(good: &'static str) -> impl Strategy<Value = String> {
        let any_value = prop_oneof![
            Just("\"0s\"".to_string()),
            Just("\"99999d\"".to_string()),
            Just("\"2026-02-30T12:00:00Z\"".to_string()),
            Just("\"9999-12-31T23:00:00Z\"".to_string()),
            Just("0".to_string()),
            Just("18446744073709551615".to_string()),
            Just("-1".to_string()),
            Just("nan".to_string()),
            Just("inf".to_string()),
            Just("\"0/h\"".to_string()),
            Just("\"../x\"".to_string()),
            Just("\"\"".to_string()),
            Just("[]".to_string()),
            Just("{ \"a.example\" = nan }".to_string()),
            "\"[ -~]{0,10}\"",
            any::<i64>().prop_map(|n| n.to_string()),
        ];
        prop_oneof![9 => Just(good.to_string()), 1 => any_value]
    }
    (
        (value("\"s\""), value("\"1h\""), value("\"2026-09-21T12:00:00Z\""), value("10")),
        (value("[\"mx.a.example\"]"), value("\"p\""), value("100"), value("\"10m\"")),
        (value("{ \"a.example\" = 1.0 }"), value("\"5m\""), value("\"1m\"")),
        (value("1"), value("[\"1m\", \"30m\"]"), value("\"a.example\"")),
    )
        .prop_map(|((name, duration, start, tick), (mx, vmta, messages, over), (domains, at, for_), (min, window, domain))| {
            format!(
                "name = {name}\nseed = 1\nduration = {duration}\nstart_time = {start}\ntick_ms = {tick}\nconfig = \"c.conf\"\n[isps.a]\ndomains = [\"a.example\"]\nmx = {mx}\n[[workload]]\nvmta = {vmta}\nmail_from = \"n@s.example\"\nmessages = {messages}\nover = {over}\ndomains = {domains}\n[[fault]]\nkind = \"outage\"\nisp = \"a\"\nat = {at}\nfor = {for_}\n[[expect]]\nmetric = \"delivered\"\nmin = {min}\nwindow = {window}\ndomain = {domain}\n"
            )
        })
}

/// A model that the loader hands out for any name (its values are fine).
fn model(_: &str) -> Result<IspSpec, ScenarioError> {
    let mut spec = IspSpec::generic("m");
    spec.domains = vec!["m.example".into()];
    spec.mx = vec!["mx.m.example".into()];
    Ok(spec)
}

const CONFIG: &str = "<virtual-mta v>\n smtp-source-host 192.0.2.1 a.example\n</virtual-mta>\n<virtual-mta-pool p>\n virtual-mta v\n</virtual-mta-pool>\n";

fn check_scenario(text: &str) {
    let path = Path::new("fuzz/scenarios/s.toml");
    let Ok(scenario) = Scenario::parse_with(path, text, &model) else {
        return;
    };
    // What a loaded scenario goes through before it runs.
    let checked = config::load(
        Path::new("/c.conf"),
        &MemFs::new().with("/c.conf", CONFIG),
        Options::default(),
    )
    .unwrap();
    let _ = pmta_sim::scenario::check_against(path, text, &scenario, &checked.config);
    let bounce_after_s = pmta_sim::engine::settings::longest_bounce_after_s(&checked.config);
    let estimate = pmta_sim::driver::estimate::Estimate::of(&scenario, 1, bounce_after_s);
    assert!(estimate.memory_bytes >= pmta_sim::driver::estimate::BASE_BYTES);
    assert!(pmta_sim::scenario::is_safe_name(&scenario.name));
    for isp in &scenario.isps {
        assert!(pmta_sim::scenario::is_safe_name(&isp.name));
    }
}

/// Bytes in chunks, as they arrive from a peer.
fn feed_replies(bytes: &[u8], chunk: usize) {
    let mut parser = ReplyParser::default();
    for piece in bytes.chunks(chunk.max(1)) {
        if parser.feed(piece).is_err() {
            return;
        }
        loop {
            match parser.next_reply() {
                Ok(Some(reply)) => {
                    assert!((200..600).contains(&reply.code), "{reply:?}");
                    assert!(!reply.text.contains('\r'), "{reply:?}");
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// A `run.json` with values of every size, including ones no run writes.
fn run_data() -> impl Strategy<Value = String> {
    fn sized(good: u64) -> impl Strategy<Value = u64> {
        prop_oneof![
            3 => Just(good),
            1 => prop_oneof![
                Just(0u64),
                Just(1),
                Just(60),
                Just(1_789_992_000),
                Just(253_402_300_799),
                Just(u64::MAX),
                any::<u64>(),
            ],
        ]
    }
    (
        sized(1_789_992_000),
        sized(7200),
        sized(1_789_992_600),
        sized(1_789_993_800),
        sized(20),
        sized(3600),
        prop_oneof![3 => Just("a".to_string()), 1 => "[a-z./]{0,8}"],
    )
        .prop_map(|(start, duration, at, until, count, per, name)| {
            run_json(start, duration, at, until, count, per, &name)
        })
}

/// A `run.json` of one provider and one queue with these times and numbers.
fn run_json(
    start: u64,
    duration: u64,
    at: u64,
    until: u64,
    count: u64,
    per: u64,
    name: &str,
) -> String {
    let bucket = report::bucket_s(duration.clamp(1, 1 << 40));
    let buckets = (duration / bucket.max(1)).min(300);
    let series = vec![count; buckets as usize];
    let series = serde_json::to_string(&series).unwrap();
    let rate_buckets = (duration / report::rate_bucket_s(duration)).min(300);
    let rates = serde_json::to_string(&vec![count; rate_buckets as usize]).unwrap();
    let c = counts_json(count);
    format!(
        r#"{{"schema_version":2,"scenario":"f","seed":1,"version":"0","config_sha256":"","start_s":{start},"duration_s":{duration},
"providers":[{{"name":"{name}","domains":["a.example"],"throttles":[{{"at_s":{at},"until_s":{until},"source_ip":"192.0.2.1","key":"ip:192.0.2.1","reply":"421","replies":{count}}}],"throttle_windows":{count},"standings":[{{"at_s":{at},"identity":"ip:192.0.2.1","score":0.5,"capacity_per_hour":{count}}}],"feedback":"none","daily":[]}}],
"queues":[{{"name":"a.example/v","domain":"a.example","vmta":"v","max_msg_rate":{{"count":{count},"per_s":{per}}},"backoff_max_msg_rate":null,"max_smtp_out":{count},"backoff_max_smtp_out":1,"backoff_at_end":false,"queued_at_end":{count},"retry_recipients_after_s":{per}}}],
"mode_changes":[{{"at_s":{at},"queue":"a.example/v","backoff":true,"trigger":{{"kind":"pattern","pattern":"x","reply":"421 4.7.0 x"}}}},{{"at_s":{until},"queue":"a.example/v","backoff":false,"trigger":{{"kind":"backoff_to_normal_after"}}}}],
"refused":{{"messages":0,"recipients":0,"by_reason":{{}},"first":[]}},"pattern_failures":[],
"replies":[{{"queue":"a.example/v","source_ip":"192.0.2.1","phase":"rcpt","reply":"421 4.7.0","count":{count},"first_at_s":{at},"last_at_s":{until},"example":"smtp;421"}}],
"figures":{{"bucket_s":{bucket},"run":{c},"providers":{{"{name}":{c}}},"queues":{{"a.example/v":{{"waiting_minutes":{count},"held_minutes":{{"sending":{count},"max-msg-rate":{per}}},"messages_per_connection":{{"{count}":{per}}},"connections":{series},{inner}}}}},"source_ips":{{"192.0.2.1":{c}}},
"series":{{"{name}":{{"delivered":{series},"deferred":{series},"bounced":{series},"queued":{series},"oldest_s":{series},"source_ip_delivered":{{"192.0.2.1":{rates}}}}}}}}}}}"#,
        inner = &c[1..c.len() - 1],
    )
}

/// The counts of `run.json`'s figures, every number `n`.
fn counts_json(n: u64) -> String {
    let p = format!(r#"{{"p50":{n},"p95":{n},"max":{n}}}"#);
    format!(
        r#"{{"injected":{n},"delivered":{n},"transient_by_class":{{"4.7":{n}}},"bounced_by_category":{{"bad-mailbox":{n}}},"bounced":{n},"expired":{n},"queued_at_end":null,"complaints":{n},"delivery_latency_s":{p},"queue_age_s":{p},"backoff_time_s":{n},"backoff_entries":{n},"max_connections":{n},"peak_delivered_per_minute":{n},"peak_delivered_per_hour":{n}}}"#
    )
}

/// What `pmta-sim report` does with `run.json`, short of drawing the charts.
fn check_report(run_json: &str) {
    let Ok(data) = serde_json::from_str::<RunData>(run_json) else {
        return;
    };
    if data.validate().is_err() {
        return;
    }
    let built = report::build(&data);
    let _ = report::summary_json(&built.summary);
    let _ = report::terminal::table(&built.summary, false);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn scenario_parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        check_scenario(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn scenario_parser_never_panics_on_scenario_like_text(
        lines in prop::collection::vec(scenario_line(), 0..40),
    ) {
        check_scenario(&lines.join("\n"));
    }

    #[test]
    fn scenario_checks_never_panic_on_near_valid_scenarios(text in scenario_like()) {
        check_scenario(&text);
    }

    #[test]
    fn model_parser_never_panics(lines in prop::collection::vec(scenario_line(), 0..30)) {
        let text = format!("[provider]\nname = \"m\"\ndomains = [\"m.example\"]\nmx = [\"mx.m.example\"]\n{}", lines.join("\n"));
        let _ = parse_model(Path::new("m.toml"), &text);
        let _ = parse_model(Path::new("m.toml"), &lines.join("\n"));
    }

    #[test]
    fn reply_parser_never_panics_on_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        chunk in 1usize..64,
    ) {
        feed_replies(&bytes, chunk);
        let _ = parse_reply_text(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn reply_parser_never_panics_on_reply_like_bytes(
        lines in prop::collection::vec(
            (prop_oneof![
                Just("250".to_string()),
                Just("421".to_string()),
                Just("550".to_string()),
                Just("999".to_string()),
                Just("55".to_string()),
                "[0-9]{3}",
             ],
             prop_oneof![Just(" "), Just("-"), Just(""), Just("x")],
             "[ -~\r]{0,40}",
             prop_oneof![Just("\r\n"), Just("\n"), Just("\r"), Just("")]),
            0..12,
        ),
        chunk in 1usize..32,
    ) {
        let wire: String = lines.iter().map(|(c, s, t, e)| format!("{c}{s}{t}{e}")).collect();
        feed_replies(wire.as_bytes(), chunk);
        let _ = parse_reply_text(&wire);
    }

    #[test]
    fn run_json_reader_never_panics(run in run_data()) {
        check_report(&run);
    }

    #[test]
    fn run_json_reader_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let _ = serde_json::from_slice::<RunData>(&bytes);
        let _ = serde_json::from_slice::<serde_json::Value>(&bytes)
            .map(|v| report::diff::metric_deltas(&v, &v));
    }
}

/// A `run.json` a real run could have written.
static VALID_RUN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    run_json(
        1_789_992_000,
        3600,
        1_789_992_600,
        1_789_993_800,
        3,
        60,
        "a",
    )
});

/// The generators are not vacuous: a good share of what they make gets past the parsers to
/// the checks and the report.
#[test]
fn the_generators_reach_the_deep_code() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut scenarios, mut runs) = (0, 0);
    for _ in 0..200 {
        let text = scenario_like().new_tree(&mut runner).unwrap().current();
        if Scenario::parse_with(Path::new("s.toml"), &text, &model).is_ok() {
            scenarios += 1;
        }
        let run = run_data().new_tree(&mut runner).unwrap().current();
        if serde_json::from_str::<RunData>(&run).is_ok_and(|d| d.validate().is_ok()) {
            runs += 1;
        }
    }
    assert!(scenarios >= 10, "only {scenarios} of 200 scenarios parsed");
    assert!(runs >= 20, "only {runs} of 200 run.json files were valid");
}

#[test]
fn the_valid_run_json_is_valid() {
    let data: RunData = serde_json::from_str(&VALID_RUN).unwrap();
    data.validate().unwrap();
    assert_eq!(report::build(&data).summary.run.injected, Some(3));
}
