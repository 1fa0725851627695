//! Whole configuration files: the production example, the seed documents rebuilt as
//! configs, a file with one of every mistake, and include cycles.

mod common;

use common::{assert_clean, assert_diagnostics, load_file};
use pmta_sim::config::Options;
use pmta_sim::config::model::KeyMaterial;

#[test]
fn production_config_is_clean() {
    let checked = load_file("scenarios/configs/production/pmta.conf", Options::default());
    assert_clean(&checked);
    let config = &checked.config;
    assert_eq!(config.sources.len(), 4, "root plus three conf.d files");
    let names: Vec<&str> = config.virtual_mtas.keys().map(String::as_str).collect();
    assert_eq!(names, ["news-1", "news-2", "news-2-cold", "txn-1"]);
    assert_eq!(config.pools["news-pool"].members.len(), 2);
    assert_eq!(config.smtp_pattern_lists["blocking-errors"].rules.len(), 14);
    assert_eq!(config.bounce_rules.len(), 17);
    assert_eq!(config.mx_rollups.len(), 2);
    assert_eq!(config.dkim_keys.len(), 1);
    assert!(matches!(config.dkim_keys[0].material, KeyMaterial::Pem(_)));
    // $yahoo expands through the nested $yahoo-intl macro.
    assert_eq!(config.domain_macros["yahoo"].len(), 6);
    // The production config is valid for live sending too: its key file is readable.
    let live = load_file(
        "scenarios/configs/production/pmta.conf",
        Options { live: true },
    );
    assert_clean(&live);
}

#[test]
fn broken_config_reports_every_error_with_its_line() {
    let checked = load_file("tests/fixtures/broken/pmta.conf", Options::default());
    assert_diagnostics(
        &checked,
        &[
            (4, "error", "`max-smtp-out` is not allowed at the top level"),
            (5, "error", "unknown directive `host-nme`"),
            (
                6,
                "error",
                "domain macro loop: $loop-a -> $loop-b -> $loop-a",
            ),
            (
                7,
                "error",
                "domain macro loop: $loop-b -> $loop-a -> $loop-b",
            ),
            (13, "error", "virtual MTA name `vmta1` is already used"),
            (19, "error", "pool `pool1` names virtual MTA `vmta9`"),
            (23, "error", "expected a whole number, found `twenty`"),
            (24, "error", "found `10m,,1h`"),
            (25, "error", "found `3000/hour`"),
            (26, "error", "`bounce-after` takes one value, found 2"),
            (
                27,
                "error",
                "`queue-priority` must be between 0 and 100, found 150",
            ),
            (28, "error", "expected yes or no, found `maybe`"),
            (
                29,
                "error",
                "smtp pattern list `blocking-error`, which is not defined",
            ),
            (
                30,
                "error",
                "virtual MTA or pool `nowhere`, which is not defined",
            ),
            (33, "error", "domain macro `$yahoo` is not defined"),
            (
                38,
                "error",
                "queue-to loop: a.example -> b.example -> a.example",
            ),
            (46, "error", "invalid regular expression"),
            (47, "error", "unknown pattern action `mode=slow`"),
            (48, "error", "expected a /regex/, found `not a regex`"),
            (52, "error", "unknown bounce category `quota-issue`"),
            (
                56,
                "error",
                "virtual MTA or pool `pool2`, which is not defined",
            ),
            (
                61,
                "error",
                "mismatched closing tag `</virtual-mta>` for `<domain hotmail.com>`",
            ),
            (63, "warning", "cannot use DKIM key file"),
            (64, "warning", "`max-msg-per-hour` is deprecated"),
            (65, "error", "cannot read included file"),
            (66, "warning", "`include nothing-*.conf` matches no file"),
            (68, "error", "`<domain outlook.com>` is never closed"),
            (69, "error", "`password` is not allowed inside `<domain>`"),
            (69, "error", "unterminated quoted string"),
        ],
    );
    let help = |line: usize| {
        checked
            .diagnostics
            .iter()
            .find(|d| {
                d.span
                    .is_some_and(|s| checked.config.sources.position(s).line == line)
            })
            .and_then(|d| d.help.clone())
            .unwrap_or_default()
    };
    assert_eq!(help(5), "did you mean `host-name`?");
    assert_eq!(help(19), "did you mean `vmta1`?");
    assert_eq!(help(25), "write `max-msg-rate 3000/h`");
    assert_eq!(help(29), "did you mean `blocking-errors`?");
    assert_eq!(help(52), "did you mean `quota-issues`?");
    assert_eq!(help(56), "did you mean `pool1`?");
    assert_eq!(help(61), "write `</domain>`");
    // The mismatched tag names both lines: the close (61) and, in a note, the open (59).
    let mismatch = checked
        .diagnostics
        .iter()
        .find(|d| d.message.starts_with("mismatched"))
        .expect("mismatch reported");
    let note_line = checked.config.sources.position(mismatch.notes[0].0).line;
    assert_eq!(note_line, 59);
}

#[test]
fn unreadable_dkim_key_is_an_error_only_when_live() {
    let sim = load_file("tests/fixtures/broken/pmta.conf", Options::default());
    let live = load_file("tests/fixtures/broken/pmta.conf", Options { live: true });
    assert_eq!(live.error_count(), sim.error_count() + 1);
    let key = &sim.config.dkim_keys[0];
    assert!(matches!(key.material, KeyMaterial::StandIn { .. }));
    let live_key_diag = live
        .diagnostics
        .iter()
        .find(|d| d.message.contains("DKIM key file"))
        .expect("reported");
    assert!(live_key_diag.is_error());
}

#[test]
fn include_cycle_is_reported_at_the_include_that_closes_it() {
    let checked = load_file("tests/fixtures/include-cycle/a.conf", Options::default());
    assert_diagnostics(&checked, &[(1, "error", "include cycle")]);
    let message = &checked.diagnostics[0].message;
    // The chain names the file that closes the loop and ends where it began.
    assert!(message.contains("include-cycle/a.conf -> "), "{message}");
    assert!(message.contains("include-cycle/b.conf -> "), "{message}");
    assert!(message.ends_with("include-cycle/a.conf"), "{message}");
}

#[test]
fn seed_000_monitoring_and_backoff() {
    let checked = load_file(
        "tests/fixtures/seeds/000-monitoring-and-backoff.conf",
        Options::default(),
    );
    assert_diagnostics(
        &checked,
        &[
            (3, "error", "unknown directive `statistics-interval`"),
            (4, "error", "unknown block `<statistics>`"),
            (5, "error", "unknown directive `host`"),
            (6, "error", "unknown directive `port`"),
            (9, "error", "unknown directive `backoff-retry-interval`"),
            (
                10,
                "error",
                "`backoff-max-msg-rate` is not allowed at the top level",
            ),
            (
                11,
                "error",
                "`backoff-max-smtp-out` is not allowed at the top level",
            ),
            (13, "error", "unknown directive `backoff-trigger-pattern`"),
            (14, "error", "unknown directive `backoff-trigger-pattern`"),
            (16, "error", "`*` is not a source address or name"),
            (18, "error", "unknown directive `allow-relay`"),
        ],
    );
    let helps: Vec<String> = checked
        .diagnostics
        .iter()
        .filter_map(|d| d.help.clone())
        .collect();
    assert!(helps.contains(&"did you mean `backoff-retry-after`?".to_string()));
    assert!(helps.contains(&"did you mean `always-allow-relaying`?".to_string()));
    assert!(helps.contains(&"write `<source 0/0>` for every address".to_string()));
    assert!(helps.iter().any(|h| h.contains("reply /421/ mode=backoff")));
}

#[test]
fn seed_001_basic_structure() {
    let checked = load_file(
        "tests/fixtures/seeds/001-basic-structure.conf",
        Options::default(),
    );
    assert_diagnostics(
        &checked,
        &[
            (
                4,
                "error",
                "`max-msg-rate` is not allowed inside `<virtual-mta>`",
            ),
            (
                7,
                "error",
                "`always-allow-relaying` is not allowed at the top level",
            ),
            (8, "error", "unknown directive `smtp-users-authentication`"),
            (
                9,
                "error",
                "`allow-starttls` is not allowed at the top level",
            ),
            (13, "error", "unknown directive `http-mgmt-password`"),
            (15, "error", "unknown directive `acct-file`"),
            (19, "error", "unknown directive `smtp-source-ip`"),
            (
                21,
                "error",
                "`max-smtp-out` is not allowed at the top level",
            ),
            (22, "error", "`retry-after` is not allowed at the top level"),
            (23, "error", "unknown directive `dkim-key-selector`"),
            (24, "error", "unknown directive `dkim-key-file`"),
            (31, "error", "expected yes or no, found `if-available`"),
        ],
    );
}

#[test]
fn seed_002_inbound_and_tuning() {
    let checked = load_file(
        "tests/fixtures/seeds/002-inbound-and-tuning.conf",
        Options::default(),
    );
    assert_diagnostics(
        &checked,
        &[
            (4, "error", "unknown directive `spf-identity`"),
            (7, "error", "unknown block `<accepted-connect>`"),
            (11, "error", "unknown directive `permanent-bounce-after`"),
            (12, "error", "unknown directive `http-mgmt-interface`"),
            (16, "error", "unknown directive `dns-timeout`"),
            (27, "error", "unknown block `<source-pool>`"),
            (31, "error", "unknown directive `max-delivery-attempts`"),
            (
                34,
                "error",
                "`virtual-mta` is not allowed inside `<source>`",
            ),
            (
                35,
                "error",
                "`use-starttls` is not allowed inside `<source>`",
            ),
        ],
    );
    let help = checked.diagnostics[7].help.as_deref().unwrap_or_default();
    assert!(help.contains("default-virtual-mta"), "{help}");
}

#[test]
fn seed_003_hot_config() {
    let checked = load_file(
        "tests/fixtures/seeds/003-hot-config.conf",
        Options::default(),
    );
    assert_diagnostics(
        &checked,
        &[
            (9, "error", "unknown directive `dkim-selector`"),
            (12, "error", "unknown block `<sender>`"),
            (13, "error", "found `3000/hour`"),
            (14, "error", "unknown directive `max-conn`"),
        ],
    );
    assert_eq!(
        checked.diagnostics[2].help.as_deref(),
        Some("write `max-msg-rate 3000/h`")
    );
}
