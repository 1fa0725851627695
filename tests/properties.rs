//! Property tests: value grammars round-trip through their canonical form, and no input
//! bytes make the configuration reader panic.

use std::path::Path;

use pmta_sim::config::value::{self, DataRate, Interval, Rate};
use pmta_sim::config::{self, MemFs, Options};
use proptest::prelude::*;

fn check_bytes(bytes: Vec<u8>, include: Vec<u8>) {
    let fs = MemFs::new()
        .with("/etc/pmta/config", bytes)
        .with("/etc/pmta/inc.conf", include);
    let checked =
        config::load(Path::new("/etc/pmta/config"), &fs, Options::default()).expect("root exists");
    for diagnostic in &checked.diagnostics {
        let rendered = diagnostic.render(&checked.config.sources);
        assert!(!rendered.is_empty());
    }
    for queue in ["gmail.com/v", "a.b/c", "x/y"] {
        let _ = config::queue::explain(&checked.config, queue);
    }
}

/// Text shaped like a config: tags, directives, regexes, quotes, macros, includes.
fn config_like() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        Just("<domain *>".to_string()),
        Just("</domain>".to_string()),
        Just("<virtual-mta v>".to_string()),
        Just("</virtual-mta>".to_string()),
        Just("<smtp-pattern-list p>".to_string()),
        Just("</smtp-pattern-list>".to_string()),
        Just("include inc.conf".to_string()),
        Just("domain-macro m $m, a.b".to_string()),
        Just("<domain $m>".to_string()),
        Just("queue-to gmail.com".to_string()),
        "[a-z-]{1,20} [0-9a-z/,.$\"#*\\[\\]=-]{0,20}",
        "reply /[^/\n]{0,15}/? [a-z=-]{0,20}",
        "[<>/ a-z*\\[\\].#\"$=,0-9\t-]{0,60}",
    ];
    prop::collection::vec(line, 0..40).prop_map(|lines| lines.join("\r\n"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn interval_round_trips(seconds in 0u64..=value::NUMBER_MAX) {
        let interval = Interval::from_secs(seconds);
        prop_assert_eq!(value::parse_interval(&interval.to_string()), Ok(interval));
    }

    #[test]
    fn interval_parts_add_up(d in 0u64..400, h in 0u64..24, m in 0u64..60, s in 0u64..60) {
        let text = format!("{d}d{h}h{m}m{s}s");
        prop_assert_eq!(
            value::parse_interval(&text).map(|i| i.seconds),
            Ok(d * 86_400 + h * 3_600 + m * 60 + s)
        );
    }

    #[test]
    fn interval_list_round_trips(list in prop::collection::vec(0u64..1_000_000, 1..12)) {
        let intervals: Vec<Interval> = list.iter().map(|s| Interval::from_secs(*s)).collect();
        let text: Vec<String> = intervals.iter().map(ToString::to_string).collect();
        prop_assert_eq!(value::parse_interval_list(&text.join(",")), Ok(intervals));
    }

    #[test]
    fn rate_round_trips(count in 1u64..1_000_000, per_seconds in 1u64..10_000_000) {
        let rate = Rate::Limit { count, per_seconds };
        prop_assert_eq!(value::parse_rate(&rate.to_string()), Ok(rate));
    }

    #[test]
    fn data_rate_round_trips(bytes in 1u64..(1 << 36), per_seconds in 1u64..1_000_000) {
        let rate = DataRate::Limit { bytes, per_seconds };
        prop_assert_eq!(value::parse_data_rate(&rate.to_string()), Ok(rate));
    }

    #[test]
    fn value_parsers_never_panic(text in "\\PC{0,30}") {
        let _ = value::parse_interval(&text);
        let _ = value::parse_interval_list(&text);
        let _ = value::parse_rate(&text);
        let _ = value::parse_data_rate(&text);
        let _ = value::parse_size(&text);
        let _ = value::parse_cidr(&text);
        let _ = value::parse_ip_host(&text);
        let _ = value::parse_address_list(&text);
        let _ = config::parse_domain_pattern(&text);
    }

    #[test]
    fn reader_never_panics_on_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        include in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        check_bytes(bytes, include);
    }

    #[test]
    fn reader_never_panics_on_config_like_text(text in config_like(), include in config_like()) {
        check_bytes(text.into_bytes(), include.into_bytes());
    }

    /// The engine stuffs a shared body once and appends it after each message's own part
    /// when that part ends a line: the result must be the stuffing of the whole message.
    #[test]
    fn a_body_stuffed_alone_continues_any_part_that_ends_a_line(
        head in prop::collection::vec(prop::sample::select(vec![b'.', b'a', b'\r', b'\n']), 0..40),
        body in prop::collection::vec(prop::sample::select(vec![b'.', b'b', b'\r', b'\n']), 1..40),
    ) {
        let mut whole = head.clone();
        whole.extend_from_slice(&body);
        let mut out = Vec::new();
        let mut stuffer = pmta_sim::smtp::Stuffer::default();
        stuffer.push(&mut out, &head);
        if stuffer.at_line_start() {
            out.extend_from_slice(&pmta_sim::smtp::dot_stuff(&body));
        } else {
            stuffer.push(&mut out, &body);
            stuffer.finish(&mut out);
        }
        prop_assert_eq!(out, pmta_sim::smtp::dot_stuff(&whole));
    }
}
