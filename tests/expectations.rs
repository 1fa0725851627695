//! `[[expect]]`, `pmta-sim test`, `--seeds`, `--junit` and `pmta-sim diff`, as a CI job uses
//! them. (That every shipped scenario passes its own, in both modes, is `tests/agreement.rs`.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn pmta(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pmta-sim"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pmta-sim-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// two-providers with extra `[[expect]]` tables appended.
fn two_providers_with(dir: &Path, expectations: &str) -> PathBuf {
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/two-providers.toml"),
    )
    .unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/configs/two-providers.conf");
    let text = base.replace(
        "config = \"configs/two-providers.conf\"",
        &format!("config = {:?}", config.to_str().unwrap()),
    );
    assert_ne!(text, base, "two-providers names its config");
    let path = dir.join("q.toml");
    std::fs::write(&path, format!("{text}\n{expectations}")).unwrap();
    path
}

#[test]
fn a_failing_expectation_exits_1_and_is_named_in_the_table_and_junit() {
    let dir = temp("fail");
    let path = two_providers_with(
        &dir,
        "[[expect]]\nmetric = \"delivered\"\nprovider = \"gmail\"\nmax = 0\n",
    );
    let junit = dir.join("j.xml");
    let out = pmta(&[
        "run",
        path.to_str().unwrap(),
        "--out",
        dir.join("run").to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let line = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .position(|l| l == "max = 0")
        .unwrap()
        - 2;
    assert!(
        stdout.contains(&format!(
            "FAIL  line {line:<4} delivered{{provider=gmail}} <= 0"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("pass  line"),
        "the shipped ones still pass: {stdout}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("<failure message=\"measured "), "{xml}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_metrics_and_filters_are_load_errors_with_their_line() {
    let dir = temp("unknown");
    let path = two_providers_with(&dir, "[[expect]]\nmetric = \"delivred\"\nmin = 1\n");
    let out = pmta(&[
        "run",
        path.to_str().unwrap(),
        "--out",
        dir.join("r").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    let line = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .position(|l| l == "metric = \"delivred\"")
        .unwrap();
    assert!(stderr.contains(&format!("q.toml:{line}:")), "{stderr}");
    assert!(
        stderr.contains("`delivred` is not a metric; did you mean `delivered`?"),
        "{stderr}"
    );
    let path = two_providers_with(
        &dir,
        "[[expect]]\nmetric = \"delivered\"\nprovder = \"gmail\"\nmin = 1\n",
    );
    let out = pmta(&[
        "run",
        path.to_str().unwrap(),
        "--out",
        dir.join("r").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unknown field `provder`"),
        "{}",
        text(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Over many seeds, each expectation's pass rate; exit 1 unless every one held on every seed.
#[test]
fn seeds_report_each_expectations_pass_rate() {
    let dir = temp("seeds");
    // The number of unknown users bounced depends on the seed's draws.
    let path = two_providers_with(&dir, "[[expect]]\nmetric = \"bounced\"\nmax = 3\n");
    let out = pmta(&[
        "run",
        path.to_str().unwrap(),
        "--seeds",
        "1..4",
        "--out",
        dir.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("over seeds 1..4 (4 runs)"), "{stdout}");
    let rate_line = stdout
        .lines()
        .find(|l| l.contains("bounced <= 3"))
        .expect("a line for it");
    let passed: u64 = rate_line
        .split('(')
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(if passed == 4 { 0 } else { 1 }),
        "{stdout}"
    );
    assert!(
        (1..4).contains(&passed),
        "the planted expectation passes on some seeds only: {stdout}"
    );
    assert!(rate_line.contains("failing seeds: "), "{rate_line}");
    for seed in 1..=4 {
        assert!(dir.join(format!("q-{seed}/summary.json")).exists());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn diff_finds_a_planted_change() {
    let dir = temp("diff");
    for name in ["a", "b"] {
        let out = pmta(&[
            "run",
            "scenarios/two-providers.toml",
            "--quiet",
            "--out",
            dir.join(name).to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    let (a, b) = (dir.join("a"), dir.join("b"));
    let same = pmta(&["diff", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(same.status.code(), Some(0), "{}", text(&same.stdout));
    assert!(text(&same.stdout).contains("acct.csv: identical"));
    // Plant a change: one accounting line and one figure.
    let acct = std::fs::read_to_string(b.join("acct.csv")).unwrap();
    let mut lines: Vec<String> = acct.lines().map(str::to_string).collect();
    lines[9] = lines[9].replacen(",relayed,", ",failed,", 1);
    std::fs::write(b.join("acct.csv"), lines.join("\n") + "\n").unwrap();
    let summary = std::fs::read_to_string(b.join("summary.json")).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&summary).unwrap();
    let delivered = value["providers"]["gmail"]["delivered"].as_u64().unwrap();
    value["providers"]["gmail"]["delivered"] = (delivered - 1).into();
    std::fs::write(
        b.join("summary.json"),
        serde_json::to_string_pretty(&value).unwrap(),
    )
    .unwrap();
    let changed = pmta(&["diff", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(changed.status.code(), Some(1));
    let stdout = text(&changed.stdout);
    assert!(
        stdout.contains("acct.csv: first difference at line 10"),
        "{stdout}"
    );
    assert!(stdout.contains("providers.gmail.delivered"), "{stdout}");
    assert!(
        stdout.contains(&format!("{delivered} → {}", delivered - 1)),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
