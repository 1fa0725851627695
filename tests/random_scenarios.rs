//! Seeded random scenarios: many faults at once, whole-run checkers, in the manner of
//! TigerBeetle's VOPR and FoundationDB's simulation tests.
//!
//! Each seed draws a whole scenario — two to four providers (the shipped models and the
//! generic receiver with random caps, rate limits, greylisting), a pool of source IPs, a
//! PowerMTA configuration with random limits, retry lists, `bounce-after` and a backoff
//! pattern, several streams with unknown users, and overlapping outages, partitions, MX
//! failures and reply overrides — runs it, and checks what must hold for any run: every
//! recipient settles at most once and every injected one is accounted for, the
//! configuration's limits hold on the wire, every backoff entry is explained by a matching
//! reply, the receivers' own limits held, and the same seed gives the same records.
//!
//! CI runs a few seeds in each mode. Many more, after touching the engine or a driver:
//!
//!     PMTA_SIM_RANDOM_SEEDS=1..500 cargo test --release --test random_scenarios
//!
//! A failing seed is printed with its scenario; keep it as a shipped scenario or a test.

mod common;

use pmta_sim::scenario::{Mode, Scenario};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use common::runs::{load_edited, run_in};

/// Providers a scenario may draw: (name, model, domain).
const PROVIDERS: &[(&str, Option<&str>, &str)] = &[
    ("gmail", Some("gmail"), "gmail.com"),
    ("yahoo", Some("yahoo"), "yahoo.com"),
    ("outlook", Some("outlook"), "outlook.com"),
    ("comcast", Some("comcast"), "comcast.net"),
    ("gmx", Some("gmx"), "gmx.de"),
    ("icloud", Some("icloud"), "icloud.com"),
    ("plain1", None, "plain1.example"),
    ("plain2", None, "plain2.example"),
];

fn seeds(default: (u64, u64)) -> std::ops::RangeInclusive<u64> {
    let (a, b) = std::env::var("PMTA_SIM_RANDOM_SEEDS")
        .ok()
        .and_then(|v| {
            let (a, b) = v.split_once("..")?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .unwrap_or(default);
    a..=b
}

fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// The scenario of `seed`, as text.
fn scenario_text(seed: u64) -> String {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let duration_min = rng.random_range(20..=90u64);
    let tick_ms = *pick(&mut rng, &[50u64, 100]);
    let ips = rng.random_range(1..=4usize);
    let mut config = String::new();
    for i in 0..ips {
        config.push_str(&format!(
            "<virtual-mta v{i}>\n    smtp-source-host 192.0.2.{} mta{i}.news.example.com\n</virtual-mta>\n",
            10 + i
        ));
    }
    config.push_str("<virtual-mta-pool pool>\n");
    for i in 0..ips {
        config.push_str(&format!("    virtual-mta v{i}\n"));
    }
    config.push_str("</virtual-mta-pool>\n");
    config.push_str("<smtp-pattern-list errs>\n    reply /4\\\\.7\\\\.[0-9]/ mode=backoff\n</smtp-pattern-list>\n");
    config.push_str("<domain *>\n");
    config.push_str(&format!(
        "    max-smtp-out {}\n",
        rng.random_range(1..=10u32)
    ));
    if rng.random_bool(0.6) {
        config.push_str(&format!(
            "    max-msg-rate {}/m\n",
            rng.random_range(5..=300u32)
        ));
    }
    if rng.random_bool(0.5) {
        config.push_str(&format!(
            "    max-msg-per-connection {}\n",
            rng.random_range(1..=50u32)
        ));
    }
    config.push_str(&format!(
        "    retry-after {}\n",
        pick(&mut rng, &["1m", "2m,5m,10m", "5m", "1m,2m,4m,8m"])
    ));
    config.push_str(&format!(
        "    retry-recipients-after {}m\n",
        rng.random_range(1..=10u32)
    ));
    config.push_str(&format!(
        "    bounce-after {}m\n",
        rng.random_range(20..=240u32)
    ));
    if rng.random_bool(0.5) {
        config.push_str(
            "    smtp-pattern-list errs\n    backoff-max-msg-rate 10/m\n    backoff-max-smtp-out 1\n    backoff-to-normal-after 10m\n    backoff-retry-after 3m\n",
        );
    }
    if rng.random_bool(0.3) {
        config.push_str("    smtp-421-means-mx-unavailable yes\n");
    }
    config.push_str("</domain>\n");

    let mut text = format!(
        "name = \"random-{seed}\"\nseed = {seed}\nduration = \"{duration_min}m\"\nstart_time = \"2026-09-21T12:00:00Z\"\ntick_ms = {tick_ms}\nconfig_inline = \"\"\"\n{config}\"\"\"\n\n"
    );
    let count = rng.random_range(2..=4usize);
    let mut chosen: Vec<&(&str, Option<&str>, &str)> = Vec::new();
    while chosen.len() < count {
        let p = pick(&mut rng, PROVIDERS);
        if !chosen.iter().any(|c| c.0 == p.0) {
            chosen.push(p);
        }
    }
    for (name, model, domain) in &chosen {
        text.push_str(&format!(
            "[isps.{name}]\ndomains = [\"{domain}\"]\nmx = [\"mx1.{name}.test\", \"mx2.{name}.test\"]\n"
        ));
        match model {
            Some(model) => {
                text.push_str(&format!("model = \"{model}\"\n"));
                text.push_str(&format!(
                    "history = \"{}\"\n",
                    pick(&mut rng, &["cold", "warm", "damaged"])
                ));
            }
            None => {
                if rng.random_bool(0.5) {
                    text.push_str(&format!(
                        "max_connections_per_ip = {}\n",
                        rng.random_range(1..=4u32)
                    ));
                }
                if rng.random_bool(0.5) {
                    text.push_str(&format!(
                        "max_messages_per_connection = {}\n",
                        rng.random_range(1..=20u32)
                    ));
                }
                if rng.random_bool(0.4) {
                    text.push_str(&format!(
                        "rate_limit = {{ per_ip = \"{}/h\", reply = \"421 4.7.0 rate limited\" }}\n",
                        rng.random_range(20..=2000u32)
                    ));
                }
                if rng.random_bool(0.3) {
                    text.push_str(&format!(
                        "greylist = {{ delay = \"{}m\" }}\n",
                        rng.random_range(1..=10u32)
                    ));
                }
            }
        }
        text.push('\n');
    }
    let streams = rng.random_range(1..=3usize);
    for s in 0..streams {
        let vmta = if rng.random_bool(0.5) {
            "pool".to_string()
        } else {
            format!("v{}", rng.random_range(0..ips))
        };
        let weights: Vec<String> = chosen
            .iter()
            .map(|(_, _, d)| format!("\"{d}\" = {}.0", rng.random_range(1..=5u32)))
            .collect();
        text.push_str(&format!(
            "[[workload]]\nvmta = \"{vmta}\"\nmail_from = \"s{s}@news.example.com\"\nmessages = {}\nstart = \"{}m\"\nover = \"{}m\"\nrecipients_per_message = {}\nunknown_user_rate = {}\ndomains = {{ {} }}\n\n",
            rng.random_range(20..=400u32),
            rng.random_range(0..duration_min / 3),
            rng.random_range(1..=duration_min / 2),
            rng.random_range(1..=3u32),
            rng.random_range(0..=5u32) as f64 / 100.0,
            weights.join(", ")
        ));
    }
    let faults = rng.random_range(1..=6usize);
    for _ in 0..faults {
        let (name, _, _) = pick(&mut rng, &chosen);
        let at = rng.random_range(0..duration_min);
        let length = rng.random_range(1..=30u64);
        let kind = rng.random_range(0..4u32);
        text.push_str("[[fault]]\n");
        match kind {
            0 => text.push_str(&format!("kind = \"outage\"\nisp = \"{name}\"\n")),
            1 => text.push_str(&format!(
                "kind = \"partition\"\nisp = \"{name}\"\nsource_ip = \"192.0.2.{}\"\n",
                10 + rng.random_range(0..ips)
            )),
            2 => text.push_str(&format!(
                "kind = \"mx_down\"\nmx = \"mx{}.{name}.test\"\n",
                rng.random_range(1..=2u32)
            )),
            _ => {
                let (phase, reply) = pick(
                    &mut rng,
                    &[
                        ("rcpt", "421 4.7.0 [TS01] temporarily deferred"),
                        ("mail", "451 4.7.1 try again later"),
                        ("rcpt", "550 5.7.1 blocked"),
                        ("data_end", "421 4.7.28 unusual rate"),
                        ("greeting", "421 4.3.2 busy"),
                    ],
                );
                text.push_str(&format!(
                    "kind = \"reply_override\"\nisp = \"{name}\"\nphase = \"{phase}\"\nreply = \"{reply}\"\n"
                ));
            }
        }
        text.push_str(&format!("at = \"{at}m\"\nfor = \"{length}m\"\n\n"));
    }
    text
}

fn scenario(seed: u64) -> (String, Scenario) {
    let text = scenario_text(seed);
    let scenario = load_edited(&format!("random-{seed}"), &text);
    (text, scenario)
}

/// Runs a seed: the whole-run checkers (in `run_in`), and in fast mode the same records
/// from a second run.
fn check_seed(seed: u64, mode: Mode) {
    let (text, scenario) = scenario(seed);
    let outcome = std::panic::catch_unwind(|| {
        let out = run_in(&scenario, mode);
        assert!(!out.injected.is_empty(), "the workload sent something");
        if mode == Mode::Fast {
            // (Under turmoil, tests/cli.rs holds determinism across processes.)
            let again = run_in(&scenario, mode);
            assert_eq!(out.records, again.records, "same seed, same records");
        }
    });
    if let Err(panic) = outcome {
        eprintln!("seed {seed} ({mode:?}) failed; its scenario:\n{text}");
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn random_scenarios_in_fast_mode_hold_the_whole_run_checks() {
    for seed in seeds((1, 5)) {
        check_seed(seed, Mode::Fast);
    }
}

#[test]
fn random_scenarios_under_turmoil_hold_the_whole_run_checks() {
    for seed in seeds((101, 101)) {
        check_seed(seed, Mode::Network);
    }
}

#[test]
fn the_generator_draws_every_kind_of_fault_and_provider() {
    let texts: Vec<String> = (1..=40).map(scenario_text).collect();
    let all = texts.join("\n");
    for needle in [
        "kind = \"outage\"",
        "kind = \"partition\"",
        "kind = \"mx_down\"",
        "kind = \"reply_override\"",
        "model = \"gmail\"",
        "model = \"yahoo\"",
        "greylist",
        "rate_limit",
        "smtp-pattern-list errs",
        "vmta = \"pool\"",
    ] {
        assert!(all.contains(needle), "40 seeds never draw {needle}");
    }
    assert_eq!(scenario_text(7), scenario_text(7), "a seed is its scenario");
    assert_ne!(scenario_text(7), scenario_text(8));
}
