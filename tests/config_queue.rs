//! A queue's effective settings: pattern specificity, merge order, virtual-MTA overrides,
//! macros, `queue-to`, defaults and the explain JSON promise.

mod common;

use common::{assert_clean, assert_diagnostics, load_text};
use pmta_sim::config::queue::{self, QueueError};
use pmta_sim::config::{Checked, model::Value};

const VMTAS: &str = "
<virtual-mta vmta1>
    smtp-source-host 192.0.2.1 a.example.org
</virtual-mta>
<virtual-mta vmta2>
    smtp-source-host 192.0.2.2 b.example.org
</virtual-mta>
";

fn config(domains: &str) -> Checked {
    let checked = load_text(&format!("{VMTAS}{domains}"), &[]);
    assert_clean(&checked);
    checked
}

fn setting(checked: &Checked, queue: &str, name: &str) -> (Option<Value>, Option<usize>) {
    let view = queue::explain(&checked.config, queue).expect("queue explains");
    let effective = &view.settings[name];
    let line = effective
        .from
        .map(|span| checked.config.sources.position(span).line);
    (effective.value.clone(), line)
}

fn count(checked: &Checked, queue: &str, name: &str) -> u64 {
    match setting(checked, queue, name).0 {
        Some(Value::Count(n)) => n,
        other => panic!("{name} of {queue} is {other:?}"),
    }
}

const ALL_FORMS: &str = "
<domain *>
    max-smtp-out 1
</domain>
<domain [*.]example.com>
    max-smtp-out 2
</domain>
<domain *.example.com>
    max-smtp-out 3
</domain>
<domain example.com>
    max-smtp-out 4
</domain>
";

#[test]
fn most_specific_pattern_wins_regardless_of_order() {
    let forward = config(ALL_FORMS);
    // The same blocks, most specific first: file order must not matter.
    let blocks: Vec<&str> = ALL_FORMS
        .split("</domain>")
        .filter(|b| !b.trim().is_empty())
        .collect();
    let reversed: String = blocks
        .iter()
        .rev()
        .map(|b| format!("{b}</domain>\n"))
        .collect();
    let backward = config(&reversed);
    let cases = [
        ("example.com/vmta1", 4),
        ("mail.example.com/vmta1", 3),
        ("a.b.example.com/vmta1", 3),
        ("example.org/vmta1", 1),
        ("notexample.com/vmta1", 1),
    ];
    for checked in [&forward, &backward] {
        for (queue, want) in cases {
            assert_eq!(count(checked, queue, "max-smtp-out"), want, "{queue}");
        }
    }
}

#[test]
fn bracket_pattern_covers_the_domain_and_star_pattern_does_not() {
    let checked = config(
        "
<domain [*.]example.com>
    max-smtp-out 2
</domain>
<domain *.example.net>
    max-smtp-out 3
</domain>
",
    );
    assert_eq!(count(&checked, "example.com/vmta1", "max-smtp-out"), 2);
    assert_eq!(count(&checked, "x.example.com/vmta1", "max-smtp-out"), 2);
    assert_eq!(count(&checked, "x.example.net/vmta1", "max-smtp-out"), 3);
    assert_eq!(
        count(&checked, "example.net/vmta1", "max-smtp-out"),
        20,
        "default"
    );
}

#[test]
fn longer_suffix_is_more_specific_within_a_form() {
    let checked = config(
        "
<domain *.b.example.com>
    max-smtp-out 7
</domain>
<domain *.example.com>
    max-smtp-out 3
</domain>
",
    );
    assert_eq!(count(&checked, "a.b.example.com/vmta1", "max-smtp-out"), 7);
    assert_eq!(count(&checked, "a.c.example.com/vmta1", "max-smtp-out"), 3);
}

#[test]
fn settings_merge_from_general_to_specific() {
    let checked = config(
        "
<domain gmail.com>
    max-smtp-out 7
</domain>
<domain *>
    retry-after 5m
    max-smtp-out 2
</domain>
",
    );
    assert_eq!(
        setting(&checked, "gmail.com/vmta1", "max-smtp-out").1,
        Some(10)
    );
    assert_eq!(
        setting(&checked, "gmail.com/vmta1", "retry-after"),
        (
            Some(Value::IntervalList(vec![
                pmta_sim::config::value::Interval::from_secs(300)
            ])),
            Some(13)
        )
    );
}

#[test]
fn nested_domain_overrides_the_global_block_of_the_same_pattern_only() {
    let checked = load_text(
        "
<virtual-mta vmta1>
    smtp-source-host 192.0.2.1 a.example.org
    <domain *>
        max-smtp-out 9
    </domain>
    <domain gmail.com>
        max-msg-rate 10/m
    </domain>
</virtual-mta>
<virtual-mta vmta2>
    smtp-source-host 192.0.2.2 b.example.org
</virtual-mta>
<domain *>
    max-smtp-out 4
</domain>
<domain gmail.com>
    max-smtp-out 3
    max-msg-rate 100/m
</domain>
",
        &[],
    );
    assert_clean(&checked);
    assert_eq!(
        count(&checked, "gmail.com/vmta1", "max-smtp-out"),
        3,
        "global exact beats nested *"
    );
    assert_eq!(
        count(&checked, "yahoo.com/vmta1", "max-smtp-out"),
        9,
        "nested * beats global *"
    );
    assert_eq!(
        count(&checked, "yahoo.com/vmta2", "max-smtp-out"),
        4,
        "other vmtas keep global *"
    );
    let rate = setting(&checked, "gmail.com/vmta1", "max-msg-rate").0;
    assert_eq!(
        rate.map(|v| v.to_config_text()),
        Some("10/m".to_string()),
        "nested gmail.com beats global gmail.com"
    );
}

#[test]
fn a_literal_domain_beats_the_same_domain_reached_through_a_macro() {
    for order in [true, false] {
        let literal = "<domain gmail.com>\n    max-smtp-out 6\n</domain>\n";
        let by_macro = "<domain $big>\n    max-smtp-out 5\n</domain>\n";
        let text = if order {
            format!("domain-macro big gmail.com, yahoo.com\n{literal}{by_macro}")
        } else {
            format!("domain-macro big gmail.com, yahoo.com\n{by_macro}{literal}")
        };
        let checked = config(&text);
        assert_eq!(count(&checked, "gmail.com/vmta1", "max-smtp-out"), 6);
        assert_eq!(count(&checked, "yahoo.com/vmta1", "max-smtp-out"), 5);
    }
}

#[test]
fn macros_expand_inside_patterns_and_nest() {
    let checked = config(
        "
domain-macro tld com, co.uk
domain-macro all $tld, fr
<domain yahoo.$all>
    max-smtp-out 2
</domain>
",
    );
    for domain in ["yahoo.com", "yahoo.co.uk", "yahoo.fr"] {
        assert_eq!(
            count(&checked, &format!("{domain}/vmta1"), "max-smtp-out"),
            2,
            "{domain}"
        );
    }
    assert_eq!(count(&checked, "yahoo.de/vmta1", "max-smtp-out"), 20);
}

#[test]
fn queue_to_redirects_to_the_named_queue_and_its_settings() {
    let checked = config(
        "
<domain googlemail.com>
    queue-to gmail.com
    max-smtp-out 1
</domain>
<domain gmail.com>
    max-smtp-out 12
</domain>
",
    );
    let view = queue::explain(&checked.config, "googlemail.com/vmta2").unwrap();
    assert_eq!(view.queue_name(), "gmail.com/vmta2");
    assert_eq!(view.domain, "googlemail.com");
    assert_eq!(count(&checked, "googlemail.com/vmta2", "max-smtp-out"), 12);
}

#[test]
fn unset_directives_take_powermta_defaults() {
    let checked = config("");
    let text = |name: &str| {
        let (value, from) = setting(&checked, "example.com/vmta1", name);
        assert_eq!(from, None, "{name} is a default");
        value.map(|v| v.to_config_text()).unwrap_or_default()
    };
    let cases = [
        ("max-smtp-out", "20"),
        ("backoff-max-smtp-out", "20"),
        ("retry-after", "10m"),
        ("backoff-retry-after", "1h"),
        ("bounce-after", "4d12h"),
        ("max-rcpt-per-transaction", "1000"),
        ("max-msg-rate", "unlimited"),
        ("backoff-max-msg-rate", "unlimited"),
        ("retry-recipients-after", "10m"),
        ("retry-after-dns-error", "1m"),
        ("backoff-to-normal-after", "never"),
        ("connect-timeout", "2m"),
        ("smtp-greeting-timeout", "5m"),
        ("data-send-timeout", "3m"),
        ("smtp-data-termination-timeout", "10m"),
        ("queue-priority", "50"),
        ("use-starttls", "yes"),
        ("smtp-421-means-mx-unavailable", "no"),
        ("type", "smtp"),
        ("dkim-algorithm", "rsa-sha256"),
    ];
    for (name, want) in cases {
        assert_eq!(text(name), want, "{name}");
    }
}

#[test]
fn backoff_rates_default_to_the_normal_rate_and_empty_string_clears() {
    let checked = config(
        "
<domain *>
    max-msg-rate 10/h
</domain>
<domain gmail.com>
    max-msg-rate 300/m
</domain>
<domain yahoo.com>
    max-msg-rate \"\"
</domain>
",
    );
    let text =
        |queue: &str, name: &str| setting(&checked, queue, name).0.map(|v| v.to_config_text());
    assert_eq!(
        text("gmail.com/vmta1", "backoff-max-msg-rate").as_deref(),
        Some("300/m")
    );
    assert_eq!(
        text("yahoo.com/vmta1", "max-msg-rate").as_deref(),
        Some("unlimited")
    );
    assert_eq!(setting(&checked, "yahoo.com/vmta1", "max-msg-rate").1, None);
}

#[test]
fn per_source_ip_values_merge_by_network() {
    let checked = config(
        "
<domain *>
    source-ip-max-smtp-out 192.0.2.0/24 5
    source-ip-max-smtp-out 198.51.100.0/24 6
</domain>
<domain gmail.com>
    source-ip-max-smtp-out 192.0.2.0/24 2
</domain>
",
    );
    let (value, _) = setting(&checked, "gmail.com/vmta1", "source-ip-max-smtp-out");
    let json = value.unwrap().to_json();
    assert_eq!(
        json,
        serde_json::json!({"192.0.2.0/24": 2, "198.51.100.0/24": 6})
    );
}

#[test]
fn explain_rejects_bad_queues_with_reasons() {
    let checked = load_text(
        &format!("{VMTAS}<virtual-mta-pool p>\n    virtual-mta vmta1\n</virtual-mta-pool>\n"),
        &[],
    );
    assert_clean(&checked);
    let err = |q: &str| queue::explain(&checked.config, q).unwrap_err();
    assert_eq!(err("gmail.com"), QueueError::Malformed("gmail.com".into()));
    assert_eq!(
        err("gmail.com/vmta3"),
        QueueError::UnknownVirtualMta {
            name: "vmta3".into(),
            suggestion: Some("vmta1".into())
        }
    );
    assert!(matches!(err("gmail.com/p"), QueueError::IsPool { .. }));
    assert!(matches!(err("bad domain/vmta1"), QueueError::BadDomain(_)));
}

#[test]
fn explain_json_follows_the_documented_shape() {
    let checked = config(
        "
<domain gmail.com>
    max-smtp-out 7
    retry-after 1m,5m,1h
    max-msg-rate 100/15m
    backoff-to-normal-after-delivery yes
    smtp-hosts lookup-mx:google.com
</domain>
",
    );
    let view = queue::explain(&checked.config, "gmail.com/vmta1").unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&pmta_sim::cli::explain_json(&checked, &view)).unwrap();
    assert_eq!(json["domain"], "gmail.com");
    assert_eq!(json["vmta"], "vmta1");
    assert_eq!(json["queue"], "gmail.com/vmta1");
    let s = &json["settings"];
    assert_eq!(s["max-smtp-out"]["value"], 7);
    assert_eq!(s["max-smtp-out"]["from"], "/etc/pmta/config:10");
    assert_eq!(
        s["retry-after"]["value"],
        serde_json::json!([60, 300, 3600])
    );
    assert_eq!(
        s["max-msg-rate"]["value"],
        serde_json::json!({"count": 100, "per_seconds": 900})
    );
    assert_eq!(s["backoff-to-normal-after-delivery"]["value"], true);
    assert_eq!(s["smtp-hosts"]["value"], "lookup-mx:google.com");
    assert_eq!(s["bounce-after"]["value"], 388_800);
    assert_eq!(s["bounce-after"]["from"], "default");
    assert_eq!(s["max-connect-rate"]["value"], serde_json::Value::Null);
    assert_eq!(
        s["backoff-to-normal-after"]["value"],
        serde_json::Value::Null
    );
}

/// Reference §2.2 and §2.3: `backoff-max-smtp-out` defaults to 20 whatever `max-smtp-out`
/// says, and a `backoff-*` limit set above the normal one makes backoff faster than normal
/// mode. `check` warns where a queue that can enter backoff has such a limit.
#[test]
fn check_warns_when_a_backoff_limit_is_looser_than_the_normal_one() {
    let base = "<virtual-mta v1>\n smtp-source-host 192.0.2.1 a.example.com\n</virtual-mta>\n<smtp-pattern-list p>\n reply /421/ mode=backoff\n</smtp-pattern-list>\n";
    let with = |domain: &str| {
        load_text(
            &format!("{base}<domain gmail.com>\n{domain}</domain>\n"),
            &[],
        )
    };
    // Line 8 is the first line inside the `<domain>`.
    assert_diagnostics(
        &with(" max-smtp-out 5\n smtp-pattern-list p\n"),
        &[(
            8,
            "warning",
            "`backoff-max-smtp-out 20` (PowerMTA's default) is looser than `max-smtp-out 5`",
        )],
    );
    assert_clean(&with(
        " max-smtp-out 5\n backoff-max-smtp-out 2\n smtp-pattern-list p\n",
    ));
    // A queue that can never be in backoff has nothing to warn about.
    assert_clean(&with(" max-smtp-out 5\n"));
    let rates = with(
        " max-msg-rate 10/m\n backoff-max-msg-rate 20/m\n backoff-max-smtp-out 1\n smtp-pattern-list p\n",
    );
    assert_diagnostics(
        &rates,
        &[(
            9,
            "warning",
            "`backoff-max-msg-rate 20/m` is looser than `max-msg-rate 10/m`",
        )],
    );
    assert_eq!(
        rates.diagnostics[0].notes.len(),
        1,
        "points at the normal limit"
    );
    assert_clean(&with(
        " max-msg-rate 10/m\n backoff-max-msg-rate 100/h\n backoff-max-smtp-out 1\n smtp-pattern-list p\n",
    ));
}
