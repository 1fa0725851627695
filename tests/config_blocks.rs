//! Every block form and syntax feature of the language, table-driven: each case is a
//! snippet that must check clean, and a property of the resulting `Config`.

mod common;

use common::{assert_clean, assert_diagnostics, load_text};
use pmta_sim::config::Checked;
use pmta_sim::config::model::{EnvelopeField, PatternAction, QueueMode, Value};

type Probe = fn(&Checked);

const VMTA: &str =
    "<virtual-mta v1>\n    smtp-source-host 192.0.2.1 mta1.example.com\n</virtual-mta>\n";

#[test]
fn every_block_form_is_read() {
    let cases: &[(&str, &str, Probe)] = &[
        ("virtual-mta", VMTA, |c| {
            let hosts = c.config.virtual_mtas["v1"].source_hosts();
            assert_eq!(hosts[0].host, "mta1.example.com");
            assert_eq!(hosts[0].ip.to_string(), "192.0.2.1");
        }),
        (
            "virtual-mta with nested domain",
            "<virtual-mta v1>\n smtp-source-host 192.0.2.1 a.example.com\n <domain gmail.com>\n  max-smtp-out 3\n </domain>\n</virtual-mta>\n",
            |c| assert_eq!(c.config.virtual_mtas["v1"].domains.len(), 1),
        ),
        (
            "virtual-mta-pool",
            "<virtual-mta-pool p>\n virtual-mta v1\n</virtual-mta-pool>\n",
            |c| assert_eq!(c.config.pools["p"].members[0].value, "v1"),
        ),
        (
            "domain",
            "<domain example.com>\n max-smtp-out 2\n</domain>\n",
            |c| assert_eq!(c.config.domains[0].pattern.to_string(), "example.com"),
        ),
        ("domain *.x", "<domain *.example.com>\n</domain>\n", |c| {
            assert_eq!(c.config.domains[0].pattern.to_string(), "*.example.com")
        }),
        (
            "domain [*.]x",
            "<domain [*.]Example.COM>\n</domain>\n",
            |c| assert_eq!(c.config.domains[0].pattern.to_string(), "[*.]example.com"),
        ),
        ("domain *", "<domain *>\n</domain>\n", |c| {
            assert_eq!(c.config.domains[0].pattern.to_string(), "*")
        }),
        (
            "source by address, network, any and name",
            "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<source 10.0.0.0/8>\n process-x-virtual-mta yes\n</source>\n<source 0/0>\n smtp-service no\n</source>\n<source {app}>\n default-virtual-mta v1\n</source>\n",
            |c| {
                let selectors: Vec<&str> = c
                    .config
                    .source_blocks
                    .iter()
                    .map(|s| s.selector.as_str())
                    .collect();
                assert_eq!(selectors, ["127.0.0.1", "10.0.0.0/8", "0/0", "{app}"]);
            },
        ),
        (
            "smtp-pattern-list with every action",
            "<smtp-pattern-list errs>\n reply /421 .* try again later/ mode=backoff backoff-to-normal-after=30m\n reply /550 RBL/ disable-source-ip reenable-after=4h\n reply /mailbox disabled/ bounce-queue\n reply /welcome back/ mode=normal\n</smtp-pattern-list>\n",
            |c| {
                let rules = &c.config.smtp_pattern_lists["errs"].rules;
                assert_eq!(
                    rules[0].actions,
                    [
                        PatternAction::Mode(QueueMode::Backoff),
                        PatternAction::BackoffToNormalAfter(Some(
                            pmta_sim::config::value::Interval::from_secs(1800)
                        ))
                    ]
                );
                assert_eq!(rules[1].actions[0], PatternAction::DisableSourceIp);
                assert_eq!(rules[2].actions, [PatternAction::BounceQueue]);
                // Replies match case-insensitively, as in PowerMTA.
                assert!(
                    rules[0]
                        .pattern
                        .regex
                        .is_match("421 4.7.0 TRY AGAIN LATER")
                        .unwrap()
                );
            },
        ),
        (
            "case-sensitive pattern with (?-i)",
            "<smtp-pattern-list errs>\n reply /(?-i)TS01/ mode=backoff\n</smtp-pattern-list>\n",
            |c| {
                let regex = &c.config.smtp_pattern_lists["errs"].rules[0].pattern.regex;
                assert!(regex.is_match("[TS01]").unwrap());
                assert!(!regex.is_match("[ts01]").unwrap());
            },
        ),
        (
            "bounce-category-patterns",
            "<bounce-category-patterns>\n /mailbox +(is +)?full/ quota-issues\n /^[45]\\.1\\.1/ bad-mailbox\n // other\n</bounce-category-patterns>\n",
            |c| {
                let cats: Vec<&str> = c
                    .config
                    .bounce_rules
                    .iter()
                    .map(|r| r.category.as_str())
                    .collect();
                assert_eq!(cats, ["quota-issues", "bad-mailbox", "other"]);
                assert!(
                    c.config.bounce_rules[0]
                        .pattern
                        .regex
                        .is_match("Mailbox is full")
                        .unwrap()
                );
            },
        ),
        (
            "pattern-list",
            "<pattern-list route>\n mail-from /@news\\.example\\.com$/ virtual-mta=v1\n rcpt-to /@gmail\\.com$/ virtual-mta=v1\n</pattern-list>\n",
            |c| {
                let rules = &c.config.pattern_lists["route"].rules;
                assert_eq!(rules[0].field, EnvelopeField::MailFrom);
                assert_eq!(rules[1].field, EnvelopeField::RcptTo);
                assert_eq!(rules[1].virtual_mta.value, "v1");
            },
        ),
        (
            "mx-rollup-list",
            "<mx-rollup-list>\n mx *.mail.protection.outlook.com hotmail.rollup\n mx *.pphosted.com proofpoint.rollup rollup-by-ip\n</mx-rollup-list>\n",
            |c| {
                assert_eq!(c.config.mx_rollups[0].queue_name, "hotmail.rollup");
                assert!(c.config.mx_rollups[1].by_ip);
            },
        ),
        (
            "smtp-user",
            "<smtp-user app>\n password \"pa ss\"\n source {app}\n</smtp-user>\n",
            |c| {
                let user = &c.config.smtp_users[0];
                assert_eq!(
                    user.settings.get("password").unwrap().value,
                    Value::Text("pa ss".into())
                );
            },
        ),
        (
            "acct-file to a path",
            "<acct-file /var/log/pmta/acct.csv>\n records d,b,t,tq\n record-fields delivery *,jobId\n max-size 50M\n</acct-file>\n",
            |c| {
                let acct = &c.config.acct_files[0];
                assert_eq!(acct.name, "/var/log/pmta/acct.csv");
                assert_eq!(
                    acct.settings.get("records").unwrap().value,
                    Value::Text("d,b,t,tq".into())
                );
            },
        ),
        (
            "acct-file to a program",
            "<acct-file |/usr/bin/bounce-handler --db x>\n records b\n retry-interval 5m\n</acct-file>\n",
            |c| {
                assert_eq!(
                    c.config.acct_files[0].name,
                    "|/usr/bin/bounce-handler --db x"
                )
            },
        ),
        (
            "spool",
            "<spool /var/spool/pmta>\n delete-file-holders yes\n</spool>\n",
            |c| assert_eq!(c.config.spools[0].name, "/var/spool/pmta"),
        ),
        (
            "blocks accepted with no effect",
            "<smtp-listener 0/0:2525>\n anything here\n</smtp-listener>\n<feedback-loop-processor>\n</feedback-loop-processor>\n",
            |c| {
                let what: Vec<&str> = c.config.no_effect.iter().map(|n| n.what.as_str()).collect();
                assert_eq!(what, ["<smtp-listener>", "<feedback-loop-processor>"]);
            },
        ),
    ];
    for (name, snippet, probe) in cases {
        let text = if snippet.contains("v1\n") && !snippet.starts_with("<virtual-mta v1>") {
            format!("{VMTA}{snippet}")
        } else {
            snippet.to_string()
        };
        let checked = load_text(&text, &[]);
        let rendered: String = checked
            .diagnostics
            .iter()
            .map(|d| d.render(&checked.config.sources))
            .collect();
        assert!(checked.diagnostics.is_empty(), "{name}:\n{rendered}");
        probe(&checked);
    }
}

#[test]
fn every_value_type_is_typed_in_context() {
    let text = "
<domain example.com>
    max-smtp-out 7
    max-errors-per-connection unlimited
    bounce-after 4d12h
    backoff-to-normal-after never
    retry-after 10m, 20m,1h
    bounce-upon-no-mx 1h
    max-msg-rate 100/15m
    max-cold-virtual-mta-msg 1/day,2/day,4/day
    max-data-volume-rate 50M/h
    backoff-notify ops@example.com, oncall@example.com
    use-starttls no
    type discard
    source-ip-max-msg-rate 0/0 10/s
</domain>
<source 10.1.0.0/16>
    max-message-size 20M
</source>
postmaster <postmaster@example.com>
";
    let checked = load_text(text, &[]);
    assert_clean(&checked);
    let settings = &checked.config.domains[0].settings;
    let text_of = |name: &str| settings.get(name).unwrap().value.to_config_text();
    let cases = [
        ("max-smtp-out", "7"),
        ("max-errors-per-connection", "unlimited"),
        ("bounce-after", "4d12h"),
        ("backoff-to-normal-after", "never"),
        ("retry-after", "10m,20m,1h"),
        ("bounce-upon-no-mx", "1h"),
        ("max-msg-rate", "100/15m"),
        ("max-cold-virtual-mta-msg", "1/d,2/d,4/d"),
        ("max-data-volume-rate", "50M/h"),
        ("backoff-notify", "ops@example.com, oncall@example.com"),
        ("use-starttls", "no"),
        ("type", "discard"),
        ("source-ip-max-msg-rate", "0/0 10/s"),
    ];
    for (name, want) in cases {
        assert_eq!(text_of(name), want, "{name}");
    }
    let size = &checked.config.source_blocks[0]
        .settings
        .get("max-message-size")
        .unwrap()
        .value;
    assert_eq!(size.to_json(), serde_json::json!(20 * 1024 * 1024));
}

#[test]
fn syntax_features() {
    // CRLF line ends, comments after values and tags, `#` inside quotes and regexes,
    // case-insensitive tags and names, indentation.
    let text = "# header\r\n<Domain gmail.com>   # trailing comment\r\n\tMAX-SMTP-OUT 4#comment\r\n    dkim-identity \"news # 1@example.com\"\r\n</DOMAIN>\r\n<smtp-pattern-list x>\r\n    reply /421 #[0-9]+ later/ mode=backoff # why\r\n</smtp-pattern-list>\r\n";
    let checked = load_text(text, &[]);
    assert_clean(&checked);
    let settings = &checked.config.domains[0].settings;
    assert_eq!(settings.get("max-smtp-out").unwrap().value, Value::Count(4));
    assert_eq!(
        settings.get("dkim-identity").unwrap().value,
        Value::Text("news # 1@example.com".into())
    );
    let rule = &checked.config.smtp_pattern_lists["x"].rules[0];
    assert_eq!(rule.pattern.source, "421 #[0-9]+ later");
    assert_eq!(rule.actions.len(), 1);
}

#[test]
fn includes_are_relative_to_the_including_file_and_globs_are_sorted() {
    let checked = load_text(
        "include conf.d/*.conf\ninclude conf.d/sub/one.conf\n",
        &[
            ("/etc/pmta/conf.d/b.conf", "<domain b.example>\n</domain>\n"),
            ("/etc/pmta/conf.d/a.conf", "<domain a.example>\n</domain>\n"),
            (
                "/etc/pmta/conf.d/sub/one.conf",
                "include ../../shared.conf\n",
            ),
            (
                "/etc/pmta/shared.conf",
                "<domain shared.example>\n</domain>\n",
            ),
        ],
    );
    assert_clean(&checked);
    let patterns: Vec<String> = checked
        .config
        .domains
        .iter()
        .map(|d| d.pattern.to_string())
        .collect();
    assert_eq!(patterns, ["a.example", "b.example", "shared.example"]);
}

#[test]
fn include_inside_a_block_continues_that_block() {
    let checked = load_text(
        "<domain gmail.com>\n    include gmail-limits.conf\n</domain>\n",
        &[("/etc/pmta/gmail-limits.conf", "max-smtp-out 3\n")],
    );
    assert_clean(&checked);
    assert_eq!(
        checked.config.domains[0]
            .settings
            .get("max-smtp-out")
            .unwrap()
            .value,
        Value::Count(4 - 1)
    );
}

#[test]
fn misplaced_and_malformed_blocks_are_reported() {
    let checked = load_text(
        "<source 10.0.0.1>\n<domain x.example>\n</domain>\n</source>\n<virtual-mta>\n</virtual-mta>\n<domain>\n</domain>\n<domain bad..name>\n</domain>\n<domain a.example> extra\n</domain>\n",
        &[],
    );
    assert_diagnostics(
        &checked,
        &[
            (2, "error", "`<domain>` is not allowed inside `<source>`"),
            (5, "error", "`<virtual-mta>` needs a name"),
            (7, "error", "`<domain>` needs a pattern"),
            (9, "error", "`bad..name` is not a domain pattern"),
            (11, "error", "unexpected text after the `domain` tag"),
        ],
    );
}

#[test]
fn deprecated_and_synonym_directives() {
    let checked = load_text(
        "<domain a.example>\n    max-rcpt-per-message 50\n    max-msg-per-hour 100\n</domain>\n",
        &[],
    );
    assert_diagnostics(
        &checked,
        &[(3, "warning", "`max-msg-per-hour` is deprecated")],
    );
    let settings = &checked.config.domains[0].settings;
    assert_eq!(
        settings.get("max-rcpt-per-transaction").unwrap().value,
        Value::Count(50)
    );
}

#[test]
fn non_utf8_and_overlong_input_is_reported_not_fatal() {
    let mut bytes =
        b"postmaster a@example.com\n<domain x.example>\n    max-smtp-out 2\xff\n</domain>\n"
            .to_vec();
    bytes.extend(std::iter::repeat_n(b'a', 70 * 1024));
    let fs = pmta_sim::config::MemFs::new().with("/c", bytes);
    let checked =
        pmta_sim::config::load(std::path::Path::new("/c"), &fs, Default::default()).unwrap();
    assert_diagnostics(
        &checked,
        &[
            (3, "error", "`max-smtp-out`: expected a whole number"),
            (3, "error", "file is not valid UTF-8"),
            (5, "error", "over the 65536 byte limit"),
        ],
    );
}

/// A value of `kind` that checks clean (names refer to objects the test config defines).
fn sample(spec: &pmta_sim::config::directives::DirectiveSpec) -> String {
    use pmta_sim::config::directives::ValueKind as K;
    match spec.kind {
        K::Bool => "yes".into(),
        K::Count | K::CountOrUnlimited | K::BoundedCount(_) => "5".into(),
        K::Interval | K::IntervalOrNever | K::IntervalList => "10m".into(),
        K::BoolOrInterval => "yes".into(),
        K::Rate => "10/m".into(),
        K::RateList => "1/d".into(),
        K::DataRate => "10M/h".into(),
        K::Size => "10M".into(),
        K::Address | K::AddressList => "ops@example.com".into(),
        K::Name => match spec.name {
            "smtp-pattern-list" => "p".into(),
            "queue-to" => "other.example".into(),
            _ => "v1".into(),
        },
        K::Choice(words) => words[0].into(),
        K::IpHost => "192.0.2.9 mta9.example.com".into(),
        K::SourceIpCount => "192.0.2.0/24 5".into(),
        K::SourceIpRate => "192.0.2.0/24 10/m".into(),
        K::SourceIpDataRate => "192.0.2.0/24 10M/h".into(),
        K::DomainKey => "s1,example.com,/etc/pmta/s1.pem".into(),
        K::Listener => "127.0.0.1:2525".into(),
        K::HttpAccess => "127.0.0.1 admin".into(),
        K::RedisUrl => "redis://127.0.0.1:6379/0".into(),
        K::AcctRecords => "d,b,t".into(),
        K::AcctFields => "d timeLogged,rcpt".into(),
        K::Text => match spec.name {
            "disable-acct-records" => "t".into(),
            "smtp-hosts" => "[192.0.2.200]:2525".into(),
            _ => "x".into(),
        },
    }
}

/// Issue 13, item 1: `check` says "no effect in simulation" for exactly the directives the
/// engine does not read. The list comes from the engine's settings reader itself
/// (`engine::settings::simulated`), so what the engine acts on — `retry-after`,
/// `backoff-retry-after`, `retry-recipients-after` and `dkim-identity` among them
/// (reference §2.2) — is never reported as having no effect, and what it ignores is.
#[test]
fn check_marks_exactly_the_directives_the_engine_reads_as_simulated() {
    use pmta_sim::config::directives::{BlockKind, DIRECTIVES, lookup};
    use pmta_sim::engine::settings::{QueueSettings, simulated};
    let reads = simulated();
    // Every read names a directive that may be written where it is read.
    for (block, name) in &reads {
        let spec = lookup(name).unwrap_or_else(|| panic!("`{name}` is not a directive"));
        match block {
            None => assert!(spec.allowed_at_top(), "{name} at the top level"),
            Some(kind) => assert!(spec.allowed_in(*kind), "{name} in <{}>", kind.tag()),
        }
    }
    // A `<domain>` writing every domain directive there is.
    let mut text = String::from(VMTA);
    text.push_str("<smtp-pattern-list p>\n reply /421/ mode=backoff\n</smtp-pattern-list>\n");
    text.push_str("<domain example.com>\n");
    let domain_directives: Vec<&str> = DIRECTIVES
        .iter()
        .filter(|d| d.allowed_in(BlockKind::Domain))
        .map(|d| d.name)
        .collect();
    for spec in DIRECTIVES
        .iter()
        .filter(|d| d.allowed_in(BlockKind::Domain))
    {
        text.push_str(&format!(" {} {}\n", spec.name, sample(spec)));
    }
    text.push_str("</domain>\n");
    let checked = load_text(&text, &[]);
    assert_eq!(checked.error_count(), 0, "{:?}", checked.diagnostics);
    // What the engine reads of that queue is what `simulated` declares for `<domain>`.
    let view = pmta_sim::config::queue::explain(&checked.config, "example.com/v1").unwrap();
    let mut traced = Vec::new();
    QueueSettings::read(&view, Some(&mut traced));
    traced.sort();
    traced.dedup();
    let declared: Vec<_> = reads
        .iter()
        .copied()
        .filter(|(b, n)| *b == Some(BlockKind::Domain) && *n != "domain-key" && *n != "queue-to")
        .collect();
    assert_eq!(traced, declared);
    // `check`'s list: every domain directive the engine does not read, and no other.
    let no_effect: Vec<String> = checked
        .config
        .no_effect_in_simulation(&reads)
        .into_iter()
        .map(|n| n.what)
        .collect();
    let expected: Vec<String> = domain_directives
        .iter()
        .filter(|n| !reads.contains(&(Some(BlockKind::Domain), **n)))
        .map(|n| n.to_string())
        .collect();
    assert_eq!(no_effect, expected);
    for read in [
        "retry-after",
        "backoff-retry-after",
        "retry-recipients-after",
        "dkim-identity",
        "smtp-421-means-mx-unavailable",
        "max-cold-virtual-mta-msg",
        "backoff-reroute-to-virtual-mta",
    ] {
        assert!(!no_effect.iter().any(|n| n == read), "{read}");
    }
    for ignored in ["max-data-volume-rate", "backoff-notify"] {
        assert!(no_effect.iter().any(|n| n == ignored), "{ignored}");
    }
    // The same directive is simulated in one place and not in another: `default-virtual-mta`
    // routes mail at the top level and in `<source>`, not in `<smtp-user>`.
    let checked = load_text(
        &format!(
            "{VMTA}default-virtual-mta v1\n<smtp-user u>\n password x\n default-virtual-mta v1\n</smtp-user>\n"
        ),
        &[],
    );
    let listed: Vec<(usize, String)> = checked
        .config
        .no_effect_in_simulation(&reads)
        .into_iter()
        .map(|n| (checked.config.sources.position(n.span).line, n.what))
        .collect();
    assert_eq!(
        listed,
        [
            (6, "password".to_string()),
            (7, "default-virtual-mta".to_string())
        ]
    );
}

/// `records` and `record-fields` are checked when read (reference §2.4: types
/// d,b,t,tq,r,f,rb,rs or their long names; `record-fields TYPE FIELD,...`): a type that does
/// not exist is an error with the closest type, a field PowerMTA does not document a warning
/// (its column stays empty) with the closest field.
#[test]
fn acct_file_records_and_fields_are_checked() {
    let text = "<acct-file /var/log/pmta/acct.csv>\n records d,bounce,tx\n record-fields delivery timeLoged,rcpt,header_X-Campaign\n record-fields q rcpt\n record-fields t\n</acct-file>\n";
    let fs = pmta_sim::config::MemFs::new().with("/c", text.as_bytes());
    let checked =
        pmta_sim::config::load(std::path::Path::new("/c"), &fs, Default::default()).unwrap();
    assert_diagnostics(
        &checked,
        &[
            (2, "error", "`tx`"),
            (3, "warning", "`timeLoged` is not an accounting field"),
            (4, "error", "`q`"),
            (5, "error", "fields after the record type"),
        ],
    );
    let rendered: String = checked
        .diagnostics
        .iter()
        .map(|d| d.render(&checked.config.sources))
        .collect();
    assert!(
        rendered.contains("write `records d,bounce,t`"),
        "{rendered}"
    );
    assert!(
        rendered.contains("write `record-fields d rcpt`"),
        "{rendered}"
    );
    assert!(rendered.contains("did you mean `timeLogged`"), "{rendered}");
}

/// `http-access CIDR LEVEL` lines add up; a wrong level or network is an error at its line.
#[test]
fn http_access_lines_accumulate_and_bad_ones_are_errors() {
    let text = "http-mgmt-port 8080\nhttp-access 127.0.0.1 admin\nhttp-access 10.0.0.0/8 monitor\nhttp-access 10.0.0.1/8 monitor\nhttp-access 192.0.2.1 root\n";
    let fs = pmta_sim::config::MemFs::new().with("/c", text.as_bytes());
    let checked =
        pmta_sim::config::load(std::path::Path::new("/c"), &fs, Default::default()).unwrap();
    assert_diagnostics(
        &checked,
        &[
            (4, "error", "10.0.0.1/8"),
            (5, "error", "monitor, admin or none"),
        ],
    );
    let settings =
        pmta_sim::driver::live::mgmt::MgmtSettings::from_config(&checked.config).unwrap();
    use pmta_sim::config::value::HttpAccess;
    assert_eq!(settings.port, 8080);
    assert_eq!(
        settings.access("127.0.0.1".parse().unwrap()),
        HttpAccess::Admin
    );
    assert_eq!(
        settings.access("10.1.2.3".parse().unwrap()),
        HttpAccess::Monitor
    );
    assert_eq!(
        settings.access("::ffff:10.1.2.3".parse().unwrap()),
        HttpAccess::Monitor
    );
    assert_eq!(
        settings.access("192.0.2.1".parse().unwrap()),
        HttpAccess::None
    );
}
