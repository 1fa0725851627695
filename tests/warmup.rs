//! Warmup: identities with their own history and daily shapes in workloads, replayed in fast
//! mode through the engine and the provider models.

mod common;

use pmta_sim::engine::accounting::RecordType;
use pmta_sim::scenario::Mode;

use common::runs::{load_edited, run_in};

const POOL: &str = r#"config_inline = """
domain-key s1,sender.example,/etc/pmta/dkim/s.pem
<virtual-mta old>
    smtp-source-host 192.0.2.1 mta1.sender.example
</virtual-mta>
<virtual-mta new>
    smtp-source-host 192.0.2.2 mta2.sender.example
</virtual-mta>
<domain *>
    dkim-sign yes
    max-smtp-out 2
    retry-after 10m
    retry-recipients-after 10m
</domain>
"""
"#;

/// A cold IP joins a warm pool: the provider knows the pool's IP, its /24 and the DKIM
/// domain (three weeks of clean days), and has never seen the new IP. The same hour of mail
/// passes from the old IP and is throttled on the new one, by its IP bucket.
#[test]
fn a_cold_ip_in_a_warm_pool_is_throttled_alone() {
    let scenario = format!(
        "name = \"cold-joins-warm\"\nseed = 7\nduration = \"1h\"\nmode = \"fast\"\nstart_time = \"2026-09-21T08:00:00Z\"\ntick_ms = 100\n{POOL}\n[isps.gmail]\nmodel = \"gmail\"\nhistory = \"warm\"\n\n[[identity]]\nsource_ip = \"192.0.2.2\"\nhistory = \"cold\"\n\n[[workload]]\nvmta = \"old\"\nmail_from = \"news@sender.example\"\nmessages = 200\nover = \"50m\"\ndomains = {{ \"gmail.com\" = 1.0 }}\nengagement = 0.3\n\n[[workload]]\nvmta = \"new\"\nmail_from = \"news@sender.example\"\nmessages = 200\nover = \"50m\"\ndomains = {{ \"gmail.com\" = 1.0 }}\nengagement = 0.3\n"
    );
    let out = run_in(&load_edited("cold-joins-warm", &scenario), Mode::Fast);
    let by_ip = |ip: &str, kind: RecordType| {
        out.records
            .iter()
            .filter(|r| r.dlv_source_ip == ip && r.record_type == kind)
            .count()
    };
    assert_eq!(by_ip("192.0.2.1", RecordType::Delivered), 200);
    assert_eq!(by_ip("192.0.2.1", RecordType::Transient), 0);
    let throttled = out
        .records
        .iter()
        .filter(|r| r.dlv_source_ip == "192.0.2.2" && r.record_type == RecordType::Transient)
        .collect::<Vec<_>>();
    assert!(!throttled.is_empty(), "the cold IP is throttled");
    assert!(
        throttled
            .iter()
            .all(|r| r.dsn_diag.contains("your IP address 192.0.2.2")),
        "by its own IP bucket, not the warm /24 or domain: {}",
        throttled[0].dsn_diag
    );
    let delivered_new = by_ip("192.0.2.2", RecordType::Delivered);
    assert!(
        (20..100).contains(&delivered_new),
        "a cold IP's hour at Gmail: {delivered_new}"
    );
}

/// The same new IP with a history at one provider only: warm at Gmail, cold at Yahoo.
#[test]
fn an_identity_history_can_differ_per_provider() {
    let scenario = format!(
        "name = \"per-provider\"\nseed = 7\nduration = \"1h\"\nmode = \"fast\"\nstart_time = \"2026-09-21T08:00:00Z\"\ntick_ms = 100\n{POOL}\n[isps.gmail]\nmodel = \"gmail\"\n\n[[identity]]\nsource_ip = \"192.0.2.2\"\nisp = \"gmail\"\nhistory = \"warm\"\n\n[[identity]]\nnetblock = \"192.0.2.0/24\"\nisp = \"gmail\"\nhistory = \"warm\"\n\n[[identity]]\ndomain = \"sender.example\"\nisp = \"gmail\"\nreputation = 0.8\nclean_days = 21\n\n[[workload]]\nvmta = \"new\"\nmail_from = \"news@sender.example\"\nmessages = 200\nover = \"50m\"\ndomains = {{ \"gmail.com\" = 1.0 }}\nengagement = 0.3\n"
    );
    let out = run_in(&load_edited("per-provider", &scenario), Mode::Fast);
    let delivered = out
        .records
        .iter()
        .filter(|r| r.record_type == RecordType::Delivered)
        .count();
    assert_eq!(delivered, 200, "warm at Gmail: nothing throttled");
    let unknown = "name = \"x\"\nseed = 1\nduration = \"1h\"\nstart_time = \"2026-09-21T08:00:00Z\"\nconfig_inline = \"\"\n[isps.gmail]\nmodel = \"gmail\"\n\n[[identity]]\nsource_ip = \"192.0.2.2\"\nisp = \"gmial\"\n";
    let path = std::env::temp_dir().join(format!("bad-identity-{}.toml", std::process::id()));
    std::fs::write(&path, unknown).unwrap();
    let err = pmta_sim::driver::load_scenario(&path)
        .unwrap_err()
        .to_string();
    let _ = std::fs::remove_file(&path);
    assert!(
        err.contains(":11:7:") && err.contains("no ISP `gmial`") && err.contains("`gmail`"),
        "{err}"
    );
}

/// A daily shape: day volumes from a list (the last repeating), inside a local window on
/// weekdays only, the engaged segment first.
#[test]
fn daily_volumes_follow_the_list_inside_the_window() {
    // 2026-09-25 is a Friday: Friday, then Monday and Tuesday (the weekend skipped).
    let scenario = format!(
        "name = \"daily\"\nseed = 3\nduration = \"5d\"\nmode = \"fast\"\nstart_time = \"2026-09-25T00:00:00Z\"\ntick_ms = 100\n{POOL}\n[isps.gmail]\nmodel = \"gmail\"\nhistory = \"warm\"\n\n[[workload]]\nvmta = \"old\"\nmail_from = \"news@sender.example\"\ndaily = [50, 80]\nwindow = \"09:00-17:00\"\ntz = \"+02:00\"\nweekdays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]\nengaged_share = 0.25\nengaged_engagement = 0.6\ndomains = {{ \"gmail.com\" = 1.0 }}\nengagement = 0.05\n"
    );
    let loaded = load_edited("daily", &scenario);
    assert_eq!(loaded.workloads[0].messages, 50 + 80 + 80);
    let out = run_in(&loaded, Mode::Fast);
    let mut per_day = std::collections::BTreeMap::<u64, (u64, u64, u64)>::new();
    let start = loaded.start.unix_secs();
    for r in out
        .records
        .iter()
        .filter(|r| r.record_type == RecordType::Delivered)
    {
        let queued = r.time_queued.unix_secs() - start;
        let (day, second) = (queued / 86_400, queued % 86_400);
        // 09:00–17:00 at UTC+2 is 07:00–15:00 UTC.
        assert!(
            (7 * 3600..15 * 3600).contains(&second),
            "queued at {second}s of day {day}"
        );
        let e = per_day.entry(day).or_default();
        e.0 += 1;
        if r.rcpt.starts_with("engaged") {
            e.1 += 1;
            // The engaged segment comes first: in the first quarter of the window.
            e.2 = e.2.max(second);
        }
    }
    let counts: Vec<(u64, u64)> = per_day.iter().map(|(d, (n, _, _))| (*d, *n)).collect();
    assert_eq!(counts, vec![(0, 50), (3, 80), (4, 80)]);
    for (day, (n, engaged, last)) in &per_day {
        assert_eq!(*engaged, n.div_ceil(4), "day {day}: the first quarter");
        assert!(*last < 9 * 3600, "day {day}: engaged until {last}s");
    }
}

fn pmta_scenario(name: &str, duration: &str, config: &str, workloads: &str) -> String {
    format!(
        "name = \"{name}\"\nseed = 5\nduration = \"{duration}\"\nmode = \"fast\"\nstart_time = \"2026-09-21T00:00:00Z\"\ntick_ms = 100\nconfig_inline = \"\"\"\ndomain-key s1,sender.example,/etc/pmta/dkim/s.pem\n<virtual-mta old>\n    smtp-source-host 192.0.2.1 mta1.sender.example\n</virtual-mta>\n{config}\"\"\"\n\n[isps.gmail]\nmodel = \"gmail\"\nhistory = \"warm\"\n\n{workloads}"
    )
}

/// PowerMTA's `cold-virtual-mta`: the cold twin takes the day's first
/// `max-cold-virtual-mta-msg` messages per domain, the list advancing a day at a time.
#[test]
fn cold_virtual_mta_takes_the_days_first_messages() {
    let config = "<virtual-mta new>\n    smtp-source-host 192.0.2.2 mta2.sender.example\n</virtual-mta>\n<virtual-mta main>\n    smtp-source-host 192.0.2.1 mta1.sender.example\n    cold-virtual-mta new\n</virtual-mta>\n<domain *>\n    dkim-sign yes\n    max-smtp-out 2\n    max-cold-virtual-mta-msg 10/day,25/day\n</domain>\n";
    let workloads = "[[workload]]\nvmta = \"main\"\nmail_from = \"news@sender.example\"\ndaily = [100]\nwindow = \"08:00-12:00\"\ndomains = { \"gmail.com\" = 1.0 }\nengagement = 0.3\n";
    let scenario = load_edited(
        "cold-vmta",
        &pmta_scenario("cold-vmta", "3d", config, workloads),
    );
    let out = run_in(&scenario, Mode::Fast);
    let start = scenario.start.unix_secs();
    let mut per_day = std::collections::BTreeMap::<(u64, String), u64>::new();
    for r in out
        .records
        .iter()
        .filter(|r| r.record_type == RecordType::Delivered)
    {
        let day = (r.time_queued.unix_secs() - start) / 86_400;
        *per_day.entry((day, r.vmta.clone())).or_default() += 1;
    }
    let got: Vec<_> = per_day.into_iter().collect();
    let want: Vec<((u64, String), u64)> = [
        (0, "main", 90),
        (0, "new", 10),
        (1, "main", 75),
        (1, "new", 25),
        (2, "main", 75),
        (2, "new", 25),
    ]
    .into_iter()
    .map(|(d, v, n)| ((d, v.to_string()), n))
    .collect();
    assert_eq!(got, want);
    assert!(
        out.records
            .iter()
            .filter(|r| r.vmta == "new")
            .all(|r| r.dlv_source_ip == "192.0.2.2")
    );
}

/// `reroute-to-virtual-mta` moves every message; `backoff-reroute-to-virtual-mta` moves the
/// queue's mail once a backoff pattern matches (a cold IP throttled at Gmail hands its
/// mail to the warm one).
#[test]
fn reroutes_move_mail_to_another_virtual_mta() {
    let config = "<virtual-mta new>\n    smtp-source-host 198.51.100.2 mta2.sender.example\n    <domain gmail.com>\n        reroute-to-virtual-mta old\n    </domain>\n</virtual-mta>\n<domain *>\n    dkim-sign yes\n    max-smtp-out 2\n</domain>\n";
    let workloads = "[[workload]]\nvmta = \"new\"\nmail_from = \"news@sender.example\"\nmessages = 50\nover = \"30m\"\ndomains = { \"gmail.com\" = 1.0 }\n";
    let out = run_in(
        &load_edited(
            "reroute",
            &pmta_scenario("reroute", "1h", config, workloads),
        ),
        Mode::Fast,
    );
    assert_eq!(out.records.len(), 50);
    assert!(out.records.iter().all(|r| r.vmta == "old"
        && r.dlv_source_ip == "192.0.2.1"
        && r.record_type == RecordType::Delivered));

    let config = "<smtp-pattern-list gm>\n    reply /4\\\\.7\\\\.28/ mode=backoff\n</smtp-pattern-list>\n<virtual-mta new>\n    smtp-source-host 198.51.100.2 mta2.sender.example\n</virtual-mta>\n<domain *>\n    dkim-sign yes\n    max-smtp-out 2\n    retry-recipients-after 10m\n    smtp-pattern-list gm\n    backoff-reroute-to-virtual-mta old\n</domain>\n";
    let workloads = "[[identity]]\nsource_ip = \"198.51.100.2\"\nhistory = \"cold\"\n\n[[identity]]\nnetblock = \"198.51.100.0/24\"\nhistory = \"cold\"\n\n[[workload]]\nvmta = \"new\"\nmail_from = \"news@sender.example\"\nmessages = 300\nover = \"50m\"\ndomains = { \"gmail.com\" = 1.0 }\nengagement = 0.3\n";
    let out = run_in(
        &load_edited(
            "backoff-reroute",
            &pmta_scenario("backoff-reroute", "2h", config, workloads),
        ),
        Mode::Fast,
    );
    let delivered = |vmta: &str| {
        out.records
            .iter()
            .filter(|r| r.vmta == vmta && r.record_type == RecordType::Delivered)
            .count()
    };
    let throttled = out
        .records
        .iter()
        .filter(|r| r.vmta == "new" && r.dsn_diag.contains("4.7.28"))
        .count();
    assert!(throttled > 0, "the cold IP meets Gmail's rate limit");
    assert!(
        delivered("new") < 100 && delivered("old") > 200,
        "the rest rerouted to the warm IP: new {}, old {}",
        delivered("new"),
        delivered("old")
    );
    assert_eq!(delivered("new") + delivered("old"), 300);
}

/// The fast driver stepped a day at a time (`run_stepped`, the closed loop's seam): a step
/// that changes nothing leaves the run record for record as `run` makes it; a step that sets
/// the coming days changes exactly those days (day 2 to 250, day 3 to nothing), and a day
/// that has begun cannot change.
#[test]
fn a_stepped_run_sets_the_coming_days_and_nothing_else() {
    use pmta_sim::config::{self, MemFs, Options};
    let scenario = format!(
        "name = \"stepped\"\nseed = 3\nduration = \"3d\"\nmode = \"fast\"\nstart_time = \"2026-09-21T00:00:00Z\"\ntick_ms = 100\n{POOL}\n[isps.gmail]\nmodel = \"gmail\"\nhistory = \"warm\"\n\n[[workload]]\nvmta = \"old\"\nmail_from = \"news@sender.example\"\ndaily = [100]\nwindow = \"08:00-20:00\"\ndomains = {{ \"gmail.com\" = 1.0 }}\nengagement = 0.3\n"
    );
    let loaded = load_edited("stepped", &scenario);
    let config = || {
        let pmta_sim::scenario::ConfigSource::Inline(text) = &loaded.config else {
            panic!("inline")
        };
        config::load(
            std::path::Path::new("/inline.conf"),
            &MemFs::new().with("/inline.conf", text.as_bytes()),
            Options::default(),
        )
        .unwrap()
        .config
    };
    let plain = run_in(&loaded, Mode::Fast);
    let mut steps = Vec::new();
    let untouched = pmta_sim::driver::fast::run_stepped(
        &loaded,
        config(),
        pmta_sim::sim::RunOptions::traced(),
        86_400_000,
        &mut |now, _, _| {
            steps.push(now.unix_secs() - loaded.start.unix_secs());
        },
    )
    .unwrap();
    assert_eq!(steps, vec![0, 86_400, 172_800], "a step at each midnight");
    assert!(
        untouched.records == plain.records,
        "a step that changes nothing changes nothing"
    );
    let window = (8 * 3600 * 1000, 12 * 3600 * 1000);
    let mut refused = Vec::new();
    let changed = pmta_sim::driver::fast::run_stepped(
        &loaded,
        config(),
        pmta_sim::sim::RunOptions::traced(),
        86_400_000,
        &mut |now, run, _| {
            let day = (now.unix_secs() - loaded.start.unix_secs()) / 86_400;
            let at = |d: u64| d * 86_400_000 + window.0;
            match day {
                1 => {
                    assert!(run.set_day_volume(0, at(1), window.1, 250));
                    // Day 1 (from 0) has been sent: it cannot change any more.
                    refused.push(run.set_day_volume(0, at(0), window.1, 5));
                }
                2 => assert!(run.set_day_volume(0, at(2), window.1, 0)),
                _ => {}
            }
        },
    )
    .unwrap();
    assert_eq!(refused, vec![false]);
    let mut per_day = std::collections::BTreeMap::<u64, u64>::new();
    for r in changed
        .records
        .iter()
        .filter(|r| r.record_type == RecordType::Delivered)
    {
        *per_day
            .entry((r.time_queued.unix_secs() - loaded.start.unix_secs()) / 86_400)
            .or_default() += 1;
    }
    assert_eq!(
        per_day.into_iter().collect::<Vec<_>>(),
        vec![(0, 100), (1, 250)]
    );
    // Day 1's messages are the same as without the steps (same draws, same records).
    let day0 = |out: &pmta_sim::sim::output::RunOutput| {
        out.records
            .iter()
            .filter(|r| r.time_queued.unix_secs() - loaded.start.unix_secs() < 86_400)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(day0(&changed) == day0(&plain));
}
