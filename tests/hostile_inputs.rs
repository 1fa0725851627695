//! Hostile input, command by command: every class of bad input a user (or a broken file)
//! can hand `run`, `check`, `classify`, `report`, `diff` and `test`, each asserting the exit
//! status the README documents and the message that names the problem. Nothing here may
//! panic, hang, or be accepted in silence.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::cli::{SMALL_SCENARIO, pmta_sim, scratch};

fn fifo(path: &Path) {
    let status = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success());
}

/// One row of a table: the arguments, the exit status and text stderr must hold.
struct Case {
    what: &'static str,
    args: Vec<String>,
    code: i32,
    stderr: Vec<String>,
}

fn case(what: &'static str, args: &[&str], code: i32, stderr: &[&str]) -> Case {
    Case {
        what,
        args: args.iter().map(|a| a.to_string()).collect(),
        code,
        stderr: stderr.iter().map(|s| s.to_string()).collect(),
    }
}

fn check_table(cases: &[Case]) {
    let mut failures = Vec::new();
    for c in cases {
        let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
        let out = pmta_sim(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let missing: Vec<&String> = c
            .stderr
            .iter()
            .filter(|s| !stderr.contains(s.as_str()))
            .collect();
        if out.status.code() != Some(c.code) || !missing.is_empty() {
            failures.push(format!(
                "{}: pmta-sim {}\n  exit {:?} (expected {}), missing {missing:?} in stderr:\n{stderr}",
                c.what,
                c.args.join(" "),
                out.status.code(),
                c.code
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A small valid scenario with one expectation; each hostile case changes one thing in it.
static BASE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    SMALL_SCENARIO.to_string() + "\n[[expect]]\nmetric = \"delivered\"\nmin = 1\n"
});

/// Writes `BASE` with `from` replaced by `to` as `DIR/scenarios/NAME.toml`.
fn scenario(dir: &Path, name: &str, from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "`{from}` is in the base scenario");
    let path = dir.join("scenarios").join(format!("{name}.toml"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, BASE.replacen(from, to, 1)).unwrap();
    path.to_string_lossy().to_string()
}

#[test]
fn run_refuses_inconsistent_scenarios_before_simulating() {
    let dir = scratch("run");
    let d = dir.as_path();
    let out = d.join("out").to_string_lossy().to_string();
    let run = |path: String| vec!["run".to_string(), path, "--out".into(), out.clone()];
    let mut cases = Vec::new();
    let mut add = |what, name: &str, from: &str, to: &str, code, stderr: &[&str]| {
        let path = scenario(d, name, from, to);
        let mut expected: Vec<String> = stderr.iter().map(|s| s.to_string()).collect();
        expected.push(format!("{name}.toml:"));
        cases.push(Case {
            what,
            args: run(path),
            code,
            stderr: expected,
        });
    };
    add(
        "a misspelt pool",
        "vmta",
        "vmta = \"p\"",
        "vmta = \"pp\"",
        2,
        &[
            "toml:19:8: error: `pp` is neither a virtual MTA nor a pool",
            "did you mean `p`?",
        ],
    );
    add(
        "a domain claimed twice",
        "claimed",
        "[[workload]]",
        "[isps.b]\ndomains = [\"a.example\"]\n\n[[workload]]",
        2,
        &["ISP `b` and ISP `a` both answer `a.example`"],
    );
    add(
        "a fault on an MX nobody has",
        "mx",
        "[[expect]]",
        "[[fault]]\nkind = \"mx_down\"\nmx = \"mx.b.example\"\nat = \"1m\"\nfor = \"1m\"\n\n[[expect]]",
        2,
        &[
            "fault names MX `mx.b.example`",
            "did you mean `mx.a.example`?",
        ],
    );
    add(
        "a fault on a source IP nobody has",
        "partition",
        "[[expect]]",
        "[[fault]]\nkind = \"partition\"\nisp = \"a\"\nsource_ip = \"192.0.2.99\"\nat = \"1m\"\nfor = \"1m\"\n\n[[expect]]",
        2,
        &["source IP 192.0.2.99 is not an smtp-source-host"],
    );
    add(
        "a fault on a provider nobody has",
        "faultisp",
        "[[expect]]",
        "[[fault]]\nkind = \"outage\"\nisp = \"zz\"\nat = \"1m\"\nfor = \"1m\"\n\n[[expect]]",
        2,
        &["fault names ISP `zz`, which is not defined"],
    );
    add(
        "a zero-length fault",
        "zerofault",
        "[[expect]]",
        "[[fault]]\nkind = \"outage\"\nisp = \"a\"\nat = \"1m\"\nfor = \"0s\"\n\n[[expect]]",
        2,
        &["a fault lasts longer than 0s"],
    );
    add(
        "a fault after the end",
        "latefault",
        "[[expect]]",
        "[[fault]]\nkind = \"outage\"\nisp = \"a\"\nat = \"3m\"\nfor = \"1m\"\n\n[[expect]]",
        2,
        &["when the run (120s) is over"],
    );
    add(
        "February 30",
        "feb30",
        "2026-09-21T12:00:00Z",
        "2026-02-30T12:00:00Z",
        2,
        &["toml:4:14: error: start_time `2026-02-30T12:00:00Z` is not a UTC time"],
    );
    add(
        "a leap second",
        "leap",
        "2026-09-21T12:00:00Z",
        "2026-09-21T12:00:60Z",
        2,
        &["is not a UTC time"],
    );
    add(
        "a run past the year 9999",
        "y9999",
        "2026-09-21T12:00:00Z",
        "9999-12-31T23:00:00Z",
        2,
        &["the run would end after the year 9999"],
    );
    add(
        "a name that climbs out of the output directory",
        "dotdot",
        "name = \"h\"",
        "name = \"../../etc/h\"",
        2,
        &["toml:1:8: error: name `../../etc/h` names the run's directory"],
    );
    add(
        "a provider name with a separator",
        "ispname",
        "[isps.a]",
        "[isps.\"a/b\"]",
        2,
        &["ISP name `a/b` names chart files"],
    );
    add(
        "tick_ms out of range",
        "tick",
        "tick_ms = 10",
        "tick_ms = 0",
        2,
        &["toml:5:11: error: tick_ms is 1 to 1000"],
    );
    add(
        "tick_ms too large",
        "tick2",
        "tick_ms = 10",
        "tick_ms = 5000",
        2,
        &["tick_ms is 1 to 1000 (the simulator's step), not 5000"],
    );
    add(
        "a rate of nothing",
        "rate0",
        "over = \"30s\"",
        "rate = \"0/h\"",
        2,
        &["a rate of `0/h` sends nothing"],
    );
    add(
        "a NaN share",
        "nan",
        "domains = { \"a.example\" = 1.0 }",
        "domains = { \"a.example\" = 1.0 }\nunknown_user_rate = nan",
        2,
        &["unknown_user_rate, full_mailbox_rate and disabled_rate are shares"],
    );
    add(
        "an infinite weight",
        "inf",
        "\"a.example\" = 1.0 }",
        "\"a.example\" = inf }",
        2,
        &["domains is a table of domain = weight"],
    );
    add(
        "a domain that is not one",
        "baddomain",
        "\"a.example\" = 1.0 }",
        "\"a example\" = 1.0 }",
        2,
        &["`a example` in domains is not a domain name"],
    );
    add(
        "a zero provider capacity",
        "cap0",
        "domains = [\"a.example\"]",
        "domains = [\"a.example\"]\nrate_limit = { per_ip = \"0/h\", reply = \"421 4.7.0 no\" }",
        2,
        &["a rate_limit of 0 accepts nothing"],
    );
    add(
        "min above max",
        "minmax",
        "min = 1",
        "min = 5\nmax = 1",
        2,
        &["min 5 is above max 1: no value can hold"],
    );
    add(
        "a NaN bound",
        "nanbound",
        "min = 1",
        "min = nan",
        2,
        &["`min` is NaN: give a finite number"],
    );
    add(
        "a window outside the run",
        "window",
        "min = 1",
        "min = 1\nwindow = [\"1m\", \"10m\"]",
        2,
        &["window [60s, 600s) ends after the run (120s)"],
    );
    add(
        "a filter on a domain the scenario has not",
        "fdomain",
        "min = 1",
        "min = 1\ndomain = \"b.example\"",
        2,
        &[
            "domain `b.example` is not in this scenario",
            "did you mean `a.example`?",
        ],
    );
    add(
        "a filter on a virtual MTA the config has not",
        "fvmta",
        "min = 1",
        "min = 1\nvmta = \"v2\"",
        2,
        &[
            "toml:28:8: error: `v2` is not a virtual MTA of the configuration",
            "did you mean `v1`?",
        ],
    );
    add(
        "a filter on a pool instead of a virtual MTA",
        "fpool",
        "min = 1",
        "min = 1\nvmta = \"p\"",
        2,
        &[
            "`p` is not a virtual MTA of the configuration (queues are named by virtual MTA, not pool)",
        ],
    );
    add(
        "a filter on a source IP the config has not",
        "fip",
        "min = 1",
        "min = 1\nsource_ip = \"192.0.2.11\"",
        2,
        &["source IP 192.0.2.11 is not an smtp-source-host"],
    );
    add(
        "a filter on a queue no stream fills",
        "fqueue",
        "min = 1",
        "min = 1\nqueue = \"a.example/v2\"",
        2,
        &[
            "no stream of this scenario fills queue `a.example/v2`",
            "did you mean `a.example/v1`?",
        ],
    );
    add(
        "a filter on a category that does not exist",
        "fcat",
        "min = 1",
        "min = 1\ncategory = \"bad-mailboxes\"",
        2,
        &["`bad-mailboxes` is not a bounce category; did you mean `bad-mailbox`?"],
    );
    add(
        "a virtual MTA with no source IP",
        "nosource",
        "    smtp-source-host 192.0.2.10 mta1.example.com\n",
        "",
        2,
        &["virtual MTA `v1` has no smtp-source-host"],
    );
    let bad_config = scenario(
        d,
        "badconfig",
        "<virtual-mta-pool p>",
        "max-smtp-out many\n<virtual-mta-pool p>",
    );
    cases.push(case(
        "an invalid configuration",
        &["run", &bad_config, "--out", &out],
        2,
        &[
            "badconfig.inline.conf:4:1: error: `max-smtp-out` is not allowed at the top level",
            "error: the scenario's configuration is invalid",
        ],
    ));
    // A ratio above 1 can never hold.
    let ratio = scenario(
        d,
        "ratio",
        "metric = \"delivered\"\nmin = 1",
        "metric = \"delivered_ratio\"\nmin = 1.5",
    );
    cases.push(case(
        "a ratio above 1",
        &["run", &ratio, "--out", &out],
        2,
        &["`delivered_ratio` is between 0 and 1: this expectation can never hold"],
    ));
    // Files that are not regular files, or not there, or too large.
    let pipe = d.join("scenario.fifo");
    fifo(&pipe);
    let pipe = pipe.to_string_lossy().to_string();
    cases.push(case(
        "a FIFO as the scenario",
        &["run", &pipe, "--out", &out],
        2,
        &["is not a regular file"],
    ));
    cases.push(case(
        "a device as the scenario",
        &["run", "/dev/zero", "--out", &out],
        2,
        &["is not a regular file"],
    ));
    let device = d.join("scenarios/devzero.toml");
    let text = BASE
        .replace("config_inline = \"\"\"\n", "config = \"/dev/zero\"\n")
        .replace("\"\"\"\n\n[isps.a]", "\n[isps.a]");
    let text = text.replace("<virtual-mta v1>\n    smtp-source-host 192.0.2.10 mta1.example.com\n</virtual-mta>\n<virtual-mta-pool p>\n    virtual-mta v1\n</virtual-mta-pool>\n", "");
    std::fs::write(&device, text).unwrap();
    cases.push(case(
        "a device as the configuration",
        &["run", &device.to_string_lossy(), "--out", &out],
        2,
        &["cannot read `/dev/zero`", "is not a regular file"],
    ));
    cases.push(case(
        "a scenario that is not there",
        &["run", "no/such.toml"],
        2,
        &["no/such.toml:1:1: error: cannot read"],
    ));
    let binary = d.join("binary.toml");
    std::fs::write(&binary, b"name = \"\xff\"\n").unwrap();
    cases.push(case(
        "a scenario that is not text",
        &["run", &binary.to_string_lossy()],
        2,
        &["is not UTF-8 text"],
    ));
    // The output directory is checked before anything runs.
    let good = scenario(d, "good", "seed = 1", "seed = 1");
    let file = d.join("a-file");
    std::fs::write(&file, "x").unwrap();
    cases.push(case(
        "--out is a file",
        &["run", &good, "--out", &file.to_string_lossy()],
        2,
        &["exists and is not a directory"],
    ));
    let users = d.join("users");
    std::fs::create_dir_all(&users).unwrap();
    std::fs::write(users.join("thesis.tex"), "mine").unwrap();
    cases.push(case(
        "--out is a directory of the user's",
        &["run", &good, "--out", &users.to_string_lossy()],
        2,
        &["holds files a run does not write"],
    ));
    // What cannot fit in memory is refused up front, with the estimate.
    cases.push(case(
        "a run over the memory limit",
        &["run", &good, "--out", &out, "--memory-limit", "1M"],
        2,
        &[
            "needs about",
            "more than the 1 MiB this run may use",
            "--memory-limit",
        ],
    ));
    // A wrong command line.
    cases.push(case(
        "an unknown flag",
        &["run", &good, "--bogus"],
        2,
        &["unexpected argument '--bogus'"],
    ));
    cases.push(case(
        "a seed that is not one",
        &["run", &good, "--seed", "x"],
        2,
        &["invalid value 'x'"],
    ));
    cases.push(case(
        "a backwards seed range",
        &["run", &good, "--seeds", "5..1"],
        2,
        &["the range must go up"],
    ));
    check_table(&cases);
    assert!(
        !users.join("acct.csv").exists(),
        "the user's directory was left alone"
    );
    assert_eq!(
        std::fs::read_to_string(users.join("thesis.tex")).unwrap(),
        "mine"
    );
    assert!(!d.join("out").exists(), "no refused run wrote anything");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_warns_about_what_sends_nothing() {
    let dir = scratch("warn");
    let d = dir.as_path();
    let late = scenario(
        d,
        "late",
        "over = \"30s\"",
        "start = \"5m\"\nover = \"30s\"",
    );
    let out = pmta_sim(&["run", &late, "--out", &d.join("late").to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "its expectation fails:\n{stderr}"
    );
    assert!(stderr.contains("late.toml:18:1: warning: this stream starts at 300s, when the run (120s) is over: it sends nothing"), "{stderr}");
    assert!(
        stderr.contains("warning: ")
            && stderr.contains("nothing was sent: no message was injected"),
        "{stderr}"
    );
    let partial = scenario(d, "partial", "over = \"30s\"", "over = \"10m\"");
    let out = pmta_sim(&[
        "run",
        &partial,
        "--out",
        &d.join("partial").to_string_lossy(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "warning: only 2 of this stream's 5 messages are due before the run ends at 120s"
        ),
        "{stderr}"
    );
    let nobody = scenario(
        d,
        "nobody",
        "\"a.example\" = 1.0 }",
        "\"a.example\" = 1.0, \"b.example\" = 1.0 }",
    );
    let out = pmta_sim(&["run", &nobody, "--out", &d.join("nobody").to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: no ISP of this scenario answers `b.example`"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn model_values_out_of_range_are_load_errors() {
    let dir = scratch("models");
    let d = dir.as_path();
    std::fs::create_dir_all(d.join("isp-models")).unwrap();
    let model = |name: &str, extra: &str| {
        std::fs::write(
            d.join("isp-models").join(format!("{name}.toml")),
            format!("[provider]\nname = \"{name}\"\ndomains = [\"a.example\"]\nmx = [\"mx.a.example\"]\n{extra}"),
        )
        .unwrap();
        scenario(
            d,
            name,
            "domains = [\"a.example\"]",
            &format!("model = \"{name}\""),
        )
    };
    let reputation = "[reputation]\nstart = 0.5\ndaily_step = 0.1\ncomplaint_good = 0.001\ncomplaint_bad = 0.003\nmitigation_days = 7\nunknown_bad = 0.02\nweight_complaints = WC\nweight_unknown = 0.5\nweight_engagement = 0.3\nblock_below = 0.1\nblock_phase = \"mail\"\nblock_reply = \"550 5.7.1 blocked\"\n";
    let throttle = "[throttle]\nphase = \"mail\"\nmessages_per_ip_per_hour = CAP\nreply_ip = \"421 4.7.0 slow down\"\npenalty_min = \"10m\"\npenalty_max = \"20m\"\nearly_retry_extension = \"10m\"\n";
    let nan = model("nanweight", &reputation.replace("WC", "nan"));
    let negative = model("negweight", &reputation.replace("WC", "-1.0"));
    let infinite = model("infweight", &reputation.replace("WC", "inf"));
    let zero = model("zerocap", &throttle.replace("CAP", "0"));
    let grey = model(
        "greyzero",
        "[greylist]\ndelay = \"0s\"\nretry_window = \"2d\"\nwhitelist_after = 5\nwhitelist_spacing = \"1h\"\n",
    );
    let fifo_model = d.join("isp-models/pipe.toml");
    fifo(&fifo_model);
    let piped = scenario(d, "pipe", "domains = [\"a.example\"]", "model = \"pipe\"");
    check_table(&[
        case(
            "a NaN weight",
            &["run", &nan],
            2,
            &["nanweight.toml:", "are finite and not negative"],
        ),
        case(
            "a negative weight",
            &["run", &negative],
            2,
            &["are finite and not negative"],
        ),
        case(
            "an infinite weight",
            &["run", &infinite],
            2,
            &["are finite and not negative"],
        ),
        case(
            "a zero capacity",
            &["run", &zero],
            2,
            &["zerocap.toml:", "hourly capacities are at least 1"],
        ),
        case(
            "a zero greylist delay",
            &["run", &grey],
            2,
            &["the greylist delay must be above 0s"],
        ),
        case(
            "a FIFO as a model",
            &["run", &piped],
            2,
            &["pipe.toml:1:1: error: cannot read: is not a regular file"],
        ),
    ]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_refuses_what_it_cannot_read_and_caps_its_diagnostics() {
    let dir = scratch("check");
    let d = dir.as_path();
    let pipe = d.join("pmta.fifo");
    fifo(&pipe);
    let include = d.join("includes.conf");
    std::fs::write(&include, "include /dev/zero\n").unwrap();
    let escape = d.join("escape.conf");
    std::fs::write(&escape, "bogus\x1b[2J value\n").unwrap();
    let many = d.join("many.conf");
    std::fs::write(&many, "nonsense-directive 1\n".repeat(250)).unwrap();
    let backtrack = d.join("backtrack.conf");
    std::fs::write(
        &backtrack,
        "<smtp-pattern-list p>\n    reply /(a+)+\\1$/ mode=backoff\n</smtp-pattern-list>\n",
    )
    .unwrap();
    let s = |p: &Path| p.to_string_lossy().to_string();
    check_table(&[
        case(
            "a FIFO",
            &["check", &s(&pipe)],
            2,
            &["is not a regular file"],
        ),
        case(
            "/dev/zero",
            &["check", "/dev/zero"],
            2,
            &["cannot read `/dev/zero`: is not a regular file"],
        ),
        case(
            "a directory",
            &["check", "tests"],
            2,
            &["cannot read `tests`: is a directory"],
        ),
        case(
            "no such file",
            &["check", "no/such.conf"],
            2,
            &["cannot read `no/such.conf`"],
        ),
        case(
            "an include of a device",
            &["check", &s(&include)],
            1,
            &["includes.conf:1:", "is not a regular file"],
        ),
        case(
            "control characters are escaped",
            &["check", &s(&escape)],
            1,
            &["bogus\\u{1b}[2J value"],
        ),
        case(
            "diagnostics are capped",
            &["check", &s(&many)],
            1,
            &["… and 150 more", "many.conf: 250 errors, 0 warnings"],
        ),
        case(
            "a pattern that exhausts backtracking is warned about",
            &["check", &s(&backtrack)],
            0,
            &[
                "backtrack.conf:2:11: warning: this pattern stops at the regex engine's backtracking limit",
            ],
        ),
        case(
            "--json without --explain",
            &["check", &s(&escape), "--json"],
            2,
            &["--explain"],
        ),
        case("no config at all", &["check"], 2, &["required"]),
    ]);
    let out = pmta_sim(&["check", &s(&escape)]);
    assert!(
        !out.stderr.contains(&0x1b),
        "no raw escape reaches the terminal"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn classify_rejects_what_is_not_a_reply_and_reports_what_it_cannot_decide() {
    let dir = scratch("classify");
    let backtrack = dir.join("backtrack.conf");
    std::fs::write(
        &backtrack,
        "<smtp-pattern-list p>\n    reply /(a+)+\\1$/ mode=backoff\n</smtp-pattern-list>\n",
    )
    .unwrap();
    let long = format!("550 5.7.1 {}!", "a".repeat(3000));
    let config = backtrack.to_string_lossy().to_string();
    check_table(&[
        case(
            "not a reply",
            &["classify", "hello"],
            2,
            &["`hello` is not an SMTP reply", "help: write the code first"],
        ),
        case(
            "a code out of range",
            &["classify", "999 no"],
            2,
            &["999 is not a reply code"],
        ),
        case(
            "an empty reply",
            &["classify", ""],
            2,
            &["is not an SMTP reply"],
        ),
        case(
            "lines with mismatched codes",
            &["classify", "550-5.1.1 a\n451 5.1.1 b"],
            2,
            &["line 2 of a 550 reply starts `451`"],
        ),
        case(
            "a reply that never ends",
            &["classify", "550-5.1.1 a\n550-5.1.1 b"],
            2,
            &["`550-` continues a reply"],
        ),
        case(
            "control characters are escaped",
            &["classify", "hello\x1b[2J"],
            2,
            &["hello\\u{1b}[2J"],
        ),
        case(
            "a pattern the engine cannot decide",
            &["classify", "--config", &config, &long],
            1,
            &["backtrack.conf:2: pattern /(a+)+\\1$/ could not be evaluated on this reply"],
        ),
        case(
            "a configuration that is not there",
            &["classify", "--config", "no/such.conf", "550 5.1.1 x"],
            2,
            &["cannot read `no/such.conf`"],
        ),
        case(
            "an invalid configuration",
            &[
                "classify",
                "--config",
                "tests/fixtures/broken/pmta.conf",
                "550 5.1.1 x",
            ],
            1,
            &["error:"],
        ),
        case("no reply at all", &["classify"], 2, &["required"]),
    ]);
    let out = pmta_sim(&["classify", "550-5.7.26 first\r\n550 5.7.26 second\r\n"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a multi-line reply as its wire lines"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("reply:       550 5.7.26 first second\n"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A real run directory to damage, one file at a time.
fn run_directory(dir: &Path) -> PathBuf {
    let path = scenario(dir, "source", "seed = 1", "seed = 1");
    let run = dir.join("run");
    let out = pmta_sim(&["run", &path, "--quiet", "--out", &run.to_string_lossy()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run
}

fn damaged(run: &Path, name: &str, file: &str, edit: impl Fn(&mut serde_json::Value)) -> String {
    let copy = run.with_file_name(name);
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["acct.csv", "run.json", "summary.json"] {
        std::fs::copy(run.join(f), copy.join(f)).unwrap();
    }
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(copy.join(file)).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(copy.join(file), value.to_string()).unwrap();
    copy.to_string_lossy().to_string()
}

#[test]
fn report_and_diff_reject_wrong_shaped_run_directories() {
    let dir = scratch("report");
    let run = run_directory(&dir);
    let good = run.to_string_lossy().to_string();
    let not_object = damaged(&run, "array", "run.json", |v| {
        *v = serde_json::json!("not a run")
    });
    let absurd = damaged(&run, "absurd", "run.json", |v| {
        v["duration_s"] = serde_json::json!(1u64 << 62)
    });
    let far = damaged(&run, "far", "run.json", |v| {
        v["start_s"] = serde_json::json!(u64::MAX - 5)
    });
    let climbing = damaged(&run, "climbing", "run.json", |v| {
        v["providers"][0]["name"] = serde_json::json!("../../x")
    });
    let rate = damaged(&run, "rate", "run.json", |v| {
        v["queues"][0]["max_msg_rate"] = serde_json::json!({"count": 0, "per_s": 60})
    });
    let schema = damaged(&run, "schema", "run.json", |v| {
        v["schema_version"] = serde_json::json!(7)
    });
    let summary_array = damaged(&run, "sarray", "summary.json", |v| {
        *v = serde_json::json!([])
    });
    let summary_schema = damaged(&run, "sschema", "summary.json", |v| {
        v["schema_version"] = serde_json::json!(1)
    });
    let summary_shape = damaged(&run, "sshape", "summary.json", |v| {
        v["queues"] = serde_json::json!(3)
    });
    let piped = dir.join("piped");
    std::fs::create_dir_all(&piped).unwrap();
    fifo(&piped.join("summary.json"));
    fifo(&piped.join("run.json"));
    std::fs::copy(run.join("acct.csv"), piped.join("acct.csv")).unwrap();
    let piped = piped.to_string_lossy().to_string();
    check_table(&[
        case(
            "run.json that is not an object",
            &["report", &not_object],
            2,
            &["run.json`:1:11: invalid type: string \"not a run\", expected struct RunData"],
        ),
        case(
            "an absurd duration",
            &["report", &absurd],
            2,
            &["is not a pmta-sim run: duration_s 4611686018427387904 is not a run's length"],
        ),
        case(
            "a start past 9999",
            &["report", &far],
            2,
            &["puts the run after the year 9999"],
        ),
        case(
            "a provider name that climbs out",
            &["report", &climbing],
            2,
            &["provider name `../../x` cannot name a chart file"],
        ),
        case(
            "a rate of nothing",
            &["report", &rate],
            2,
            &["rate 0/60s is not a rate limit"],
        ),
        case(
            "another schema",
            &["report", &schema],
            2,
            &["schema version 7"],
        ),
        case(
            "a FIFO as run.json",
            &["report", &piped],
            2,
            &["is not a regular file"],
        ),
        case(
            "no such directory",
            &["report", "no/such/run"],
            2,
            &["cannot read `no/such/run/run.json`"],
        ),
        case(
            "summary.json that is not an object",
            &["diff", &good, &summary_array],
            2,
            &["is not a summary (not a JSON object)"],
        ),
        case(
            "summary.json of another schema",
            &["diff", &summary_schema, &good],
            2,
            &["has schema version 1"],
        ),
        case(
            "summary.json with the wrong shape",
            &["diff", &good, &summary_shape],
            2,
            &["has no `queues` object"],
        ),
        case(
            "a FIFO as summary.json",
            &["diff", &good, &piped],
            2,
            &["is not a regular file"],
        ),
        case("one directory only", &["diff", &good], 2, &["required"]),
        case(
            "a report without a directory",
            &["report"],
            2,
            &["required"],
        ),
    ]);
    assert!(
        !dir.join("x").exists() && !Path::new("/x").exists(),
        "nothing was written outside the run directory"
    );
    let same = pmta_sim(&["diff", &good, &good]);
    assert_eq!(same.status.code(), Some(0), "a run is the same as itself");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn test_with_nothing_to_run_is_a_usage_error() {
    let dir = scratch("test");
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = empty.to_string_lossy().to_string();
    check_table(&[
        case(
            "an empty folder",
            &["test", &e],
            2,
            &["no scenario to run: no *.toml file in"],
        ),
        case(
            "a folder that is not there",
            &["test", "no/such/folder"],
            2,
            &["cannot read `no/such/folder`"],
        ),
        case(
            "an unknown flag",
            &["test", &e, "--bogus"],
            2,
            &["unexpected argument"],
        ),
        case(
            "a memory limit that is not a size",
            &["test", &e, "--memory-limit", "lots"],
            2,
            &["is not a size"],
        ),
    ]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_command_exits_2_on_a_wrong_command_line() {
    for args in [
        &[][..],
        &["bogus"],
        &["run"],
        &["check"],
        &["classify"],
        &["report"],
        &["diff", "a"],
        &["test", "--bogus"],
        &["run", "x", "--seed", "abc"],
        &["check", "x", "--explain"],
    ] {
        let out = pmta_sim(args);
        assert_eq!(out.status.code(), Some(2), "pmta-sim {}", args.join(" "));
    }
    for args in [&["--help"][..], &["run", "--help"], &["--version"]] {
        assert_eq!(
            pmta_sim(args).status.code(),
            Some(0),
            "pmta-sim {}",
            args.join(" ")
        );
    }
}
