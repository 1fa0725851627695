//! The `pmta-sim` binary as a user runs it: output, exit statuses, determinism.

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pmta-sim"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("output is UTF-8")
}

const PRODUCTION: &str = "scenarios/configs/production/pmta.conf";
const BROKEN: &str = "tests/fixtures/broken/pmta.conf";

#[test]
fn valid_config_prints_a_summary_and_exits_0() {
    let out = run(&["check", PRODUCTION]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for expected in [
        "scenarios/configs/production/pmta.conf: valid (4 files,",
        "  news-1: 192.0.2.10 mta1.news.example.com (1 nested domain blocks)",
        "  news-pool: news-1, news-2",
        "  blocking-errors: 14 reply patterns",
        "bounce category rules: 17",
        "  s2026._domainkey.news.example.com: key file read",
        "accepted, no effect in simulation (",
        "scenarios/configs/production/pmta.conf:5  postmaster",
    ] {
        assert!(
            stdout.contains(expected),
            "missing `{expected}` in:\n{stdout}"
        );
    }
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn invalid_config_prints_every_error_and_exits_1() {
    let out = run(&["check", BROKEN]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "tests/fixtures/broken/pmta.conf:25:18: error: `max-smtp-out`"
                .replace("max-smtp-out", "max-msg-rate")
                .as_str()
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(" 25 |     max-msg-rate 3000/hour\n    |                  ^^^^^^^^^\n"),
        "{stderr}"
    );
    assert!(stderr.contains("  = help: write `max-msg-rate 3000/h`"));
    assert!(
        stderr.ends_with("tests/fixtures/broken/pmta.conf: 26 errors, 3 warnings\n"),
        "{stderr}"
    );
    assert_eq!(
        text(&out.stdout),
        "",
        "nothing on stdout for an invalid config"
    );
}

#[test]
fn unreadable_input_exits_2() {
    let out = run(&["check", "no/such/file.conf"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read `no/such/file.conf`"));
    let dir = run(&["check", "tests"]);
    assert_eq!(dir.status.code(), Some(2));
    let usage = run(&["check", PRODUCTION, "--json"]);
    assert_eq!(usage.status.code(), Some(2), "--json needs --explain");
}

#[test]
fn live_check_refuses_an_unreadable_dkim_key() {
    let sim = run(&["check", "tests/fixtures/dkim-missing/pmta.conf"]);
    assert_eq!(sim.status.code(), Some(0), "{}", text(&sim.stderr));
    assert!(text(&sim.stderr).contains("warning: cannot use DKIM key file"));
    assert!(text(&sim.stdout).contains("stand-in key (simulation only)"));
    let live = run(&["check", "--live", "tests/fixtures/dkim-missing/pmta.conf"]);
    assert_eq!(live.status.code(), Some(1));
    assert!(text(&live.stderr).contains("error: cannot use DKIM key file"));
}

#[test]
fn explain_prints_values_and_provenance() {
    let out = run(&["check", PRODUCTION, "--explain", "googlemail.com/news-1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout
            .starts_with("queue gmail.com/news-1\n  (googlemail.com joins it through queue-to)\n")
    );
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert_eq!(
        line("max-smtp-out"),
        "max-smtp-out 8 scenarios/configs/production/conf.d/10-virtual-mtas.conf:8"
    );
    assert_eq!(
        line("max-msg-rate"),
        "max-msg-rate 100/15m scenarios/configs/production/conf.d/20-domains.conf:19"
    );
    assert_eq!(
        line("bounce-after"),
        "bounce-after 3d scenarios/configs/production/conf.d/20-domains.conf:8"
    );
    assert_eq!(
        line("retry-after-dns-error"),
        "retry-after-dns-error 1m default"
    );
}

#[test]
fn explain_json_is_one_object() {
    let out = run(&[
        "check",
        PRODUCTION,
        "--explain",
        "ymail.com/txn-1",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(json["queue"], "ymail.com/txn-1");
    assert_eq!(json["settings"]["queue-priority"]["value"], 90);
    assert_eq!(json["settings"]["max-smtp-out"]["value"], 5);
    assert_eq!(
        json["settings"]["retry-after"]["value"],
        serde_json::json!([120, 300, 600, 1800])
    );
    let bad = run(&["check", PRODUCTION, "--explain", "ymail.com/news-pool"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stderr).contains("`news-pool` is a pool"));
}

#[test]
fn output_is_byte_identical_across_runs() {
    for args in [
        &["check", PRODUCTION][..],
        &["check", BROKEN][..],
        &[
            "check",
            PRODUCTION,
            "--explain",
            "gmail.com/news-2",
            "--json",
        ][..],
    ] {
        let first = run(args);
        let second = run(args);
        assert_eq!(first.stdout, second.stdout);
        assert_eq!(first.stderr, second.stderr);
    }
}

#[test]
fn run_is_byte_identical_across_processes_and_seed_sensitive_in_both_modes() {
    let dir = std::env::temp_dir().join(format!("pmta-sim-determinism-{}", std::process::id()));
    for mode in ["network", "fast"] {
        let out = |name: &str, seed: &str| {
            let target = dir.join(format!("{mode}-{name}"));
            let result = run(&[
                "run",
                "scenarios/pool-rotation.toml",
                "--mode",
                mode,
                "--seed",
                seed,
                "--out",
                target.to_str().unwrap(),
            ]);
            assert_eq!(result.status.code(), Some(0), "{}", text(&result.stderr));
            assert!(text(&result.stdout).contains("pool-rotation: seed"));
            [
                "acct.csv",
                "summary.json",
                "run.json",
                "report.html",
                "charts/queue-depth.png",
            ]
            .map(|f| std::fs::read(target.join(f)).unwrap())
        };
        let first = out("a", "7");
        let second = out("b", "7");
        let other = out("c", "8");
        assert!(first[0].len() > 1000);
        assert_eq!(
            first, second,
            "{mode}: same scenario and seed, two processes: every file"
        );
        assert_ne!(
            first[0], other[0],
            "{mode}: another seed changes latencies and recipients"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `pmta-sim report DIR` rebuilds exactly what `run` wrote, from run.json (the figures kept
/// while the run went; acct.csv is PowerMTA's file and may hold only some record types).
#[test]
fn report_rebuilds_the_run_directory_byte_for_byte() {
    let dir = std::env::temp_dir().join(format!("pmta-sim-report-{}", std::process::id()));
    let result = run(&[
        "run",
        "scenarios/backoff.toml",
        "--quiet",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(result.status.code(), Some(0), "{}", text(&result.stderr));
    assert!(result.stdout.is_empty(), "--quiet prints nothing");
    let files = [
        "summary.json",
        "report.html",
        "charts/backoff.svg",
        "charts/outcomes-yahoo.png",
    ];
    let before = files.map(|f| std::fs::read(dir.join(f)).unwrap());
    for f in files {
        std::fs::remove_file(dir.join(f)).unwrap();
    }
    let rebuilt = run(&["report", dir.to_str().unwrap()]);
    assert_eq!(rebuilt.status.code(), Some(0), "{}", text(&rebuilt.stderr));
    assert_eq!(before, files.map(|f| std::fs::read(dir.join(f)).unwrap()));
    // A damaged run.json is named with its line and column.
    let json = std::fs::read_to_string(dir.join("run.json")).unwrap();
    let broken = json.replacen("\"duration_s\":", "\"duration_s\":x", 1);
    std::fs::write(dir.join("run.json"), broken).unwrap();
    let failed = run(&["report", dir.to_str().unwrap()]);
    assert_eq!(failed.status.code(), Some(2));
    assert!(
        text(&failed.stderr).contains("run.json`:1:"),
        "{}",
        text(&failed.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--json` prints summary.json, with its schema version, to stdout.
#[test]
fn run_json_prints_the_summary() {
    let dir = std::env::temp_dir().join(format!("pmta-sim-json-{}", std::process::id()));
    let result = run(&[
        "run",
        "scenarios/quickstart.toml",
        "--json",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(result.status.code(), Some(0), "{}", text(&result.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    assert_eq!(summary["schema_version"], 2);
    assert_eq!(summary["scenario"], "quickstart");
    assert_eq!(
        result.stdout,
        std::fs::read(dir.join("summary.json")).unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_rejects_a_bad_scenario_with_its_line() {
    let dir = std::env::temp_dir().join(format!("pmta-sim-bad-scenario-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "name = \"x\"\nseed = 1\nduration = \"1m\"\nstart_time = \"2026-09-21T12:00:00Z\"\nconfig_inline = \"\"\nworkloads = 3\n").unwrap();
    let result = run(&["run", path.to_str().unwrap()]);
    assert_eq!(result.status.code(), Some(2));
    assert!(
        text(&result.stderr).contains("bad.toml:6:1: error: unknown field `workloads`"),
        "{}",
        text(&result.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The first run a new user makes shows what the product is for: a cold IP meets Gmail's
/// `421 4.7.28`; the queue that retries every two minutes is stuck at Gmail's cold-IP hourly
/// capacity, the one that backs off delivers most of its mail; and the terminal says where
/// each queue was held back.
#[test]
fn the_quickstart_shows_the_headline() {
    let dir = std::env::temp_dir().join(format!("pmta-sim-quickstart-{}", std::process::id()));
    let result = run(&[
        "run",
        "scenarios/quickstart.toml",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(result.status.code(), Some(0), "{}", text(&result.stderr));
    let stdout = text(&result.stdout);
    let queue = |name: &str| -> Vec<u64> {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(name) && !l.contains("held back"))
            .unwrap_or_else(|| panic!("a row for {name} in:\n{stdout}"))
            .split_whitespace()
            .skip(1)
            .filter_map(|n| n.parse().ok())
            .collect()
    };
    // injected, delivered, deferred, bounced, queued, ...
    let hammer = queue("gmail.com/hammer");
    let patient = queue("gmail.com/patient");
    assert!(hammer[1] <= 25 && hammer[2] >= 100, "{stdout}");
    assert!(patient[1] >= 2 * hammer[1] && patient[2] <= 10, "{stdout}");
    assert!(
        stdout.contains("gmail.com/patient: held back by backoff-max-msg-rate 10/h")
            && stdout.contains("after 421 4.7.28"),
        "{stdout}"
    );
    let acct = std::fs::read_to_string(dir.join("acct.csv")).unwrap();
    assert!(acct.contains("smtp;421 4.7.28 Gmail has detected an unusual rate"));
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("gmail.com/patient"));
    let _ = std::fs::remove_dir_all(&dir);
}
