//! A run can be believed: what the engine refused or could not decide is in the summary, an
//! interrupted run never leaves a half-written directory, scenarios that share a file name
//! never share a run directory, and a run too large for memory is refused before it starts.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use pmta_sim::driver::network;
use pmta_sim::scenario::Scenario;

use common::cli::{SMALL_SCENARIO as SMALL, pmta_sim, scratch};

/// The scenario's inline configuration, as `run` reads it (`NAME.inline.conf`).
fn inline_config(scenario: &Scenario, file: &str) -> pmta_sim::config::Config {
    let checked = pmta_sim::driver::load_config(scenario, Path::new(file)).unwrap();
    assert_eq!(checked.error_count(), 0, "{:?}", checked.diagnostics);
    checked.config
}

/// Mail the engine refuses during a run (here a stream naming a virtual MTA the config does
/// not have, which `run` would have refused at load) is counted by reason, listed with its
/// reason, and reaches the summary: never dropped in silence.
#[test]
fn refused_mail_is_counted_listed_and_summarized() {
    let text = SMALL.replace("vmta = \"p\"", "vmta = \"v9\"");
    let scenario = Scenario::parse(Path::new("refused.toml"), &text).unwrap();
    let out = network::run(&scenario, inline_config(&scenario, "refused.toml")).unwrap();
    assert_eq!(out.refused.messages, 5);
    assert_eq!(out.refused.recipients, 5);
    assert_eq!(out.refused.by_reason.get("unknown-virtual-mta"), Some(&5));
    assert_eq!(out.refused.first.len(), 5);
    assert_eq!(
        out.refused.first[0].reason,
        "virtual MTA or pool `v9` is not defined"
    );
    assert_eq!(out.refused.first[0].env_id, "0.0");
    let data = out.data.clone();
    let summary = pmta_sim::report::build(&data).summary;
    assert_eq!(summary.refused.messages, 5);
    let json = pmta_sim::report::summary_json(&summary);
    assert!(json.contains("\"unknown-virtual-mta\": 5"), "{json}");
}

/// A pattern the regex engine gives up on is reported with its line, once, and the run goes
/// on: the reply is still classified by the rules that could be evaluated.
#[test]
fn a_pattern_the_engine_cannot_decide_is_reported() {
    let reply = format!("550 5.7.1 {}!", "a".repeat(3000));
    let text = SMALL
        .replace(
            "</virtual-mta>\n",
            "</virtual-mta>\n<smtp-pattern-list throttles>\n    reply /(a+)+\\\\1$/ mode=backoff\n</smtp-pattern-list>\n<domain a.example>\n    smtp-pattern-list throttles\n</domain>\n",
        )
        .replace(
            "domains = [\"a.example\"]",
            &format!("domains = [\"a.example\"]\nfixed_reply = {{ phase = \"rcpt\", reply = \"{reply}\" }}"),
        );
    let scenario = Scenario::parse(Path::new("pattern.toml"), &text).unwrap();
    let out = network::run(&scenario, inline_config(&scenario, "pattern.toml")).unwrap();
    let data = out.data.clone();
    assert_eq!(
        data.pattern_failures.len(),
        1,
        "{:?}",
        data.pattern_failures
    );
    let failure = &data.pattern_failures[0];
    assert_eq!(failure.position, "pattern.inline.conf:5");
    assert_eq!(failure.pattern, "(a+)+\\1$");
    assert_eq!(failure.context, "queue a.example/v1");
    assert!(failure.error.contains("backtracking"), "{}", failure.error);
    assert_eq!(
        out.records.len(),
        5,
        "every recipient still gets its record (bounced)"
    );
}

fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for name in ["acct.csv", "run.json", "summary.json", "report.html"] {
        if let Ok(bytes) = std::fs::read(dir.join(name)) {
            out.push((name.to_string(), bytes));
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// SIGINT at moments spread over a run (most of them in its last part, where it writes its
/// files) leaves the target directory as the previous complete run, or as the new complete
/// run, or absent — never a mixture, never a part.
#[test]
fn an_interrupted_run_leaves_the_previous_run_or_none() {
    let dir = scratch("sigint");
    let scenario = dir.join("h.toml");
    std::fs::write(&scenario, SMALL).unwrap();
    let s = scenario.to_string_lossy().to_string();
    let target = dir.join("runs").join("h");
    let t = target.to_string_lossy().to_string();
    let reference = dir.join("reference");
    let previous = dir.join("previous");
    // The previous run (seed 1) and the complete new one (seed 2), timed.
    let mut full = std::time::Duration::ZERO;
    for (seed, out) in [("1", &previous), ("2", &reference)] {
        let started = Instant::now();
        let run = pmta_sim(&[
            "run",
            &s,
            "--quiet",
            "--seed",
            seed,
            "--out",
            &out.to_string_lossy(),
        ]);
        assert_eq!(run.status.code(), Some(0));
        full = started.elapsed();
    }
    let old = files_of(&previous);
    let new = files_of(&reference);
    assert_eq!(old.len(), 4);
    assert_ne!(old, new, "the two seeds give different runs");
    let mut interrupted = 0;
    let fractions = [
        0.0, 0.05, 0.1, 0.2, 0.4, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.96, 1.0, 1.05,
        1.2,
    ];
    for fraction in fractions {
        let _ = std::fs::remove_dir_all(&target);
        copy_dir(&previous, &target);
        let mut child = Command::new(env!("CARGO_BIN_EXE_pmta-sim"))
            .args(["run", &s, "--quiet", "--seed", "2", "--out", &t])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(full.mul_f64(fraction));
        let kill = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        let status = child.wait().unwrap();
        if kill.success() && status.code().is_none() {
            interrupted += 1;
        }
        let now = files_of(&target);
        assert!(
            now.is_empty() || now == old || now == new,
            "SIGINT at {fraction} of the run left a mixture: {:?}",
            now.iter().map(|(n, b)| (n, b.len())).collect::<Vec<_>>()
        );
        if !now.is_empty() {
            assert!(target.join("charts").is_dir());
        }
    }
    assert!(interrupted >= 2, "only {interrupted} runs were interrupted");
    // The next run clears what interrupted ones left beside the target.
    assert_eq!(
        pmta_sim(&["run", &s, "--quiet", "--seed", "2", "--out", &t])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(files_of(&target), new);
    let leftovers: Vec<_> = std::fs::read_dir(target.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n != "h")
        .collect();
    assert!(
        leftovers.is_empty(),
        "left beside the target: {leftovers:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two scenario files named alike in different folders, one whose expectation holds and one
/// whose expectation fails, run together by `test` twenty times: the verdicts are right
/// every time (each has its own run directory; neither reads the other's files).
#[test]
fn same_stem_scenarios_get_the_right_verdicts_every_time() {
    let dir = scratch("stems");
    let passing = SMALL.to_string() + "\n[[expect]]\nmetric = \"delivered\"\nmin = 5\n";
    let failing = SMALL.replace("messages = 5", "messages = 3")
        + "\n[[expect]]\nmetric = \"delivered\"\nmin = 5\n";
    for (folder, text) in [("a", &passing), ("b", &failing)] {
        std::fs::create_dir_all(dir.join(folder)).unwrap();
        std::fs::write(dir.join(folder).join("pair.toml"), text).unwrap();
    }
    let a = dir.join("a").to_string_lossy().to_string();
    let b = dir.join("b").to_string_lossy().to_string();
    let out = dir.join("reports").to_string_lossy().to_string();
    for round in 0..20 {
        let result = pmta_sim(&["test", &a, &b, "--out", &out]);
        let stdout = String::from_utf8_lossy(&result.stdout);
        assert_eq!(result.status.code(), Some(1), "round {round}:\n{stdout}");
        let verdict = |folder: &str| {
            stdout
                .lines()
                .find(|l| l.contains(&format!("{folder}/pair.toml")))
                .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        };
        assert_eq!(
            verdict(&a).as_deref(),
            Some("pass"),
            "round {round}:\n{stdout}"
        );
        assert_eq!(
            verdict(&b).as_deref(),
            Some("FAIL"),
            "round {round}:\n{stdout}"
        );
    }
    let dirs: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    assert!(dirs.iter().all(|d| d.starts_with("pair-")), "{dirs:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two million queued messages: with the memory there is they run (docs/performance.md has
/// the measurement); with less, they are refused before the simulation starts, with the
/// estimate and what to change — never an allocation abort.
#[test]
fn two_million_messages_are_refused_up_front_when_they_cannot_fit() {
    let dir = scratch("2m");
    let text = SMALL
        .replace("messages = 5", "messages = 2000000")
        .replace("over = \"30s\"", "over = \"1m\"");
    let path = dir.join("big.toml");
    std::fs::write(&path, text).unwrap();
    let out_dir = dir.join("out");
    let out = pmta_sim(&[
        "run",
        &path.to_string_lossy(),
        "--out",
        &out_dir.to_string_lossy(),
        "--memory-limit",
        "1G",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("needs about 1.9 GiB of memory (2000000 messages, 2000000 recipients), more than the 1.0 GiB this run may use"),
        "{stderr}"
    );
    assert!(stderr.contains("help: send fewer messages"), "{stderr}");
    assert!(!out_dir.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
