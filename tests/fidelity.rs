//! Fidelity suite: the provider models behave as the research notes say the real providers
//! do. Each test names the behaviour and cites the line of `reference/isp-behavior.md` (as
//! copied into `isp-models/*.toml`) that it reproduces.

mod common;

use pmta_sim::engine::accounting::RecordType;
use pmta_sim::scenario::SmtpPhase;

use common::runs::{load, load_edited, run, text};

fn minutes(from: pmta_sim::time::Time, to: pmta_sim::time::Time) -> f64 {
    to.since(from) as f64 / 60_000.0
}

/// isp-behavior.md §2.1 (4.7.28 "in reply to end of DATA", rate_ip reply [A]) and §2.10
/// (cold IP capacity 20/h [D]).
#[test]
fn gmail_throttles_a_cold_ip_blast_with_4_7_28_at_end_of_data() {
    let s = load("gmail-cold-blast");
    let out = run(&s);
    let log = &out.receivers[0].1;
    let first = &log.throttles[0];
    assert_eq!(first.phase, SmtpPhase::DataEnd);
    assert_eq!(
        first.reply,
        "421 4.7.28 Gmail has detected an unusual rate of email originating from your IP address 192.0.2.50. To protect our users from spam, email sent from your IP address has been temporarily rate limited."
    );
    assert_eq!(log.messages_accepted, 20, "the cold IP's hourly capacity");
    assert!(
        out.records
            .iter()
            .any(|r| r.record_type == RecordType::Transient && r.dsn_status == "4.7.28")
    );
}

/// isp-behavior.md §2.1 ("Do not send email for at least 10 minutes" [A]) and §2.10 ("+10
/// per early retry").
#[test]
fn gmail_extends_the_penalty_when_the_sender_retries_inside_ten_minutes() {
    let s = load("gmail-cold-blast");
    let out = run(&s);
    let log = &out.receivers[0].1;
    let early: Vec<_> = log.throttles.iter().filter(|t| t.early_retry).collect();
    assert!(
        !early.is_empty(),
        "retries every 2 minutes come inside the penalty"
    );
    for t in &early {
        assert!(minutes(t.at, t.until) >= 10.0 - 1e-9, "{t:?}");
    }
    // Hammering never lets the penalty lapse: nothing more is accepted after the first 20.
    let last_until = log.throttles.iter().map(|t| t.until).max().unwrap();
    assert!(minutes(s.start, last_until) > 55.0);
    assert_eq!(out.pending, 40);
}

/// isp-behavior.md §2.1, Google's back-off recipe [A]: a sender that backs off recovers.
#[test]
fn gmail_lets_a_sender_that_backs_off_recover() {
    let s = load("gmail-patient");
    let out = run(&s);
    assert!(
        !out.receivers[0].1.throttles.is_empty(),
        "it was throttled once"
    );
    assert_eq!(out.pending, 0);
    assert_eq!(
        out.records
            .iter()
            .filter(|r| r.record_type == RecordType::Delivered)
            .count(),
        60
    );
}

/// isp-behavior.md §1 and §2.10: Yahoo answers [TSS04] at MAIL FROM [B] and defers the IP
/// for about 2 hours (1–4 h) [B].
#[test]
fn yahoo_defers_a_cold_ip_with_tss04_at_mail_from_for_hours() {
    let s = load("yahoo-tss04");
    let out = run(&s);
    let log = &out.receivers[0].1;
    let first = log.throttles.iter().find(|t| !t.early_retry).unwrap();
    assert_eq!(first.phase, SmtpPhase::Mail);
    assert!(
        first
            .reply
            .starts_with("421 4.7.0 [TSS04] Messages from 192.0.2.60 temporarily deferred"),
        "{}",
        first.reply
    );
    let penalty = minutes(first.at, first.until);
    assert!((60.0..=240.0).contains(&penalty), "{penalty} minutes");
    // Nothing is accepted from that IP while the penalty lasts.
    assert!(
        log.accepted_rcpts
            .iter()
            .all(|(_, at)| *at <= first.at || *at >= first.until)
    );
}

/// isp-behavior.md §2.2: "Yahoo accepts a limited number of messages per SMTP connection ...
/// terminates the connection, without giving an error message" [A]; 20 per connection [B].
#[test]
fn yahoo_closes_after_twenty_messages_per_connection() {
    let s = load("yahoo-per-connection");
    let out = run(&s);
    let log = &out.receivers[0].1;
    assert!(log.connections.iter().all(|c| c.messages <= 20));
    assert!(log.connections.iter().filter(|c| c.messages == 20).count() >= 4);
    assert_eq!(out.pending, 0);
    assert!(
        out.records
            .iter()
            .all(|r| r.record_type == RecordType::Delivered),
        "a silent close is not a failure"
    );
}

/// isp-behavior.md §2.9 (postgrey: 300 s delay, exact 450 4.2.0 reply, early retries do not
/// reset first-seen) [B].
#[test]
fn greylisting_defers_with_postgreys_reply_and_accepts_after_300_seconds() {
    let s = load("greylist-model");
    let out = run(&s);
    for d in out
        .records
        .iter()
        .filter(|r| r.record_type == RecordType::Delivered)
    {
        let deferrals: Vec<_> = out
            .records
            .iter()
            .filter(|r| r.record_type == RecordType::Transient && r.rcpt == d.rcpt)
            .collect();
        assert_eq!(
            deferrals.len(),
            2,
            "first attempt and the early retry at 4 minutes"
        );
        let domain = d.rcpt.rsplit('@').next().unwrap();
        assert_eq!(
            deferrals[0].dsn_diag,
            format!(
                "smtp;450 4.2.0 <{}>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/{domain}.html",
                d.rcpt
            )
        );
        assert!(d.time_logged.since(deferrals[0].time_logged) >= 300_000);
    }
    assert_eq!(out.pending, 0);
}

#[test]
fn every_model_file_parses_and_cites_its_sources() {
    let dir = common::fixture("isp-models");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        pmta_sim::scenario::parse_model(&path, &text).unwrap();
        // Every value line of a provider model carries a source comment with a tag.
        if !["generic.toml"].contains(&path.file_name().unwrap().to_str().unwrap()) {
            for line in text
                .lines()
                .filter(|l| l.contains(" = ") && !l.starts_with('#'))
            {
                if ["name = ", "reject_unknown = "]
                    .iter()
                    .any(|k| line.starts_with(k))
                {
                    continue;
                }
                let cited = ["[A", "[B", "[C", "[D"].iter().any(|t| line.contains(t))
                    || line.contains("placeholder");
                assert!(cited, "{}: `{line}` has no source tag", path.display());
            }
        }
        count += 1;
    }
    assert!(count >= 4);
}

/// isp-behavior.md §2.1–§2.6: each provider answers a cold pool in its own words, at its own
/// SMTP step.
#[test]
fn every_provider_answers_a_cold_pool_in_its_own_words() {
    let s = load("all-providers");
    let out = run(&s);
    let expect = [
        (
            "gmail",
            SmtpPhase::DataEnd,
            "421 4.7.28 Gmail has detected an unusual rate of email",
        ),
        ("yahoo", SmtpPhase::Mail, "421 4.7.0 [TSS04] Messages from"),
        ("outlook", SmtpPhase::Mail, "451 4.7.650 The mail server ["),
        ("icloud", SmtpPhase::Greeting, "421 [HCM1] Your mail from"),
        (
            "gmx",
            SmtpPhase::Rcpt,
            "421 web.de (mxweb113) Nemesis ESMTP Service not available",
        ),
    ];
    for (isp, phase, start) in expect {
        let log = &out.receivers.iter().find(|(n, _)| n == isp).unwrap().1;
        let first = log
            .throttles
            .first()
            .unwrap_or_else(|| panic!("{isp} never throttled"));
        assert_eq!(first.phase, phase, "{isp}");
        assert!(first.reply.starts_with(start), "{isp}: {}", first.reply);
        assert!(
            out.records
                .iter()
                .any(|r| r.dsn_diag.contains(&first.reply)),
            "{isp}: the reply reaches acct.csv verbatim"
        );
    }
}

/// isp-behavior.md §2.1 replies (no_such_user, disabled_user, over_quota_temp [A]): mailbox
/// states drawn from the workload's list quality.
#[test]
fn gmail_answers_each_mailbox_state_in_its_own_words() {
    let s = load("gmail-list-quality");
    let out = run(&s);
    let bounced = |prefix: &str| {
        out.records
            .iter()
            .filter(|r| r.record_type == RecordType::Bounced && r.rcpt.starts_with(prefix))
            .count()
    };
    let deferred = |prefix: &str| {
        out.records
            .iter()
            .filter(|r| r.record_type == RecordType::Transient && r.rcpt.starts_with(prefix))
            .count()
    };
    assert!(bounced("nouser") > 0 && bounced("disabled") > 0 && deferred("full") > 0);
    for r in &out.records {
        if r.rcpt.starts_with("disabled") {
            // Gmail's wire form: wrapped lines with the code repeated, ending "- gsmtp".
            assert_eq!(
                r.dsn_diag,
                "smtp;550 5.2.1 The email account that you tried to reach is inactive. - gsmtp"
            );
        }
        if r.rcpt.starts_with("full") && r.record_type == RecordType::Transient {
            assert!(
                r.dsn_diag
                    .starts_with("smtp;452 4.2.2 The recipient's inbox is out of storage space.")
            );
            assert_eq!(r.bounce_category, "quota-issues");
        }
    }
    // Complaints never show over SMTP, and Gmail has no per-recipient feedback loop
    // (reference §4.7): the complaints happen and count, but no `f` record reaches the
    // sender — only Gmail's daily tally.
    let log = &out.receivers[0].1;
    assert!(!log.complaints.is_empty());
    assert!(log.complaints.iter().all(|c| c.report_at.is_none()));
    assert!(
        out.records
            .iter()
            .all(|r| r.record_type != RecordType::Feedback)
    );
    let today = log.daily.values().next().unwrap();
    assert_eq!(today.complaints, log.complaints.len() as u64);
    // Full mailboxes end as bounces only after bounce-after (45 minutes).
    for r in out
        .records
        .iter()
        .filter(|r| r.record_type == RecordType::Bounced && r.rcpt.starts_with("full"))
    {
        assert!(r.time_logged.since(r.time_queued) >= 45 * 60_000);
        assert_eq!(r.bounce_category, "message-expired");
    }
}

/// isp-behavior.md §2.1 (unauth_temp 421 4.7.26, unauth_perm 550 5.7.26 [A]; November 2025
/// "temporary and permanent rejections" [A]): every sender needs SPF or DKIM, verified for
/// real (SPF with mail-auth against the simulated zone, whose record leaves the IP out).
#[test]
fn gmail_defers_then_blocks_an_unauthenticated_sender_with_4_7_26_then_5_7_26() {
    let s = load("gmail-unauthenticated");
    let out = run(&s);
    let deferrals: Vec<_> = out
        .records
        .iter()
        .filter(|r| r.record_type == RecordType::Transient)
        .collect();
    assert!(deferrals.len() >= 20, "{}", deferrals.len());
    assert!(deferrals.iter().all(|d| d.dsn_diag.starts_with(
        "smtp;421 4.7.26 This email has been rate limited because it is unauthenticated."
    ) && d.time_logged.since(s.start) < 3_600_000 + 60_000));
    let bounces: Vec<_> = out
        .records
        .iter()
        .filter(|r| r.record_type == RecordType::Bounced)
        .collect();
    assert_eq!(bounces.len(), 20);
    assert!(bounces.iter().all(|b| b.dsn_diag.starts_with(
        "smtp;550 5.7.26 This email has been blocked because the sender is unauthenticated."
    ) && b.time_logged.since(s.start) >= 3_600_000));
}

/// isp-behavior.md §2.3 (550 5.7.515 for high-volume senders without SPF, DKIM and DMARC [A]).
#[test]
fn outlook_rejects_an_unauthenticated_bulk_sender_with_5_7_515() {
    let out = run(&load("outlook-bulk-unauthenticated"));
    let delivered = out
        .records
        .iter()
        .filter(|r| r.record_type == RecordType::Delivered)
        .count();
    let rejected: Vec<_> = out
        .records
        .iter()
        .filter(|r| r.record_type == RecordType::Bounced)
        .collect();
    assert_eq!(
        delivered, 50,
        "below the bulk threshold the SPF pass is enough"
    );
    assert_eq!(rejected.len(), 30);
    assert!(rejected.iter().all(|b| b.dsn_diag == "smtp;550 5.7.515 Access denied, sending domain [sender.example] does not meet the required authentication level."));
}

/// The receiver's DKIM verification is real (mail-auth against the simulated DNS): a wrong
/// published key fails it, the right one passes.
#[test]
fn a_broken_dkim_key_is_caught_by_the_receivers_verification() {
    let broken = run(&load("gmail-broken-dkim"));
    assert_eq!(
        broken
            .records
            .iter()
            .filter(|r| r.record_type == RecordType::Bounced && r.dsn_status == "5.7.26")
            .count(),
        10,
        "after an hour of 4.7.26 deferrals"
    );
    // The same scenario with the engine's (stand-in) key published instead.
    let text =
        std::fs::read_to_string(common::fixture("scenarios/gmail-broken-dkim.toml")).unwrap();
    let start = text.find("\n[[dns_txt]]").unwrap();
    let end = text[start..].find("\n[isps.gmail]").unwrap() + start;
    let fixed = format!("{}{}", &text[..start], &text[end..]);
    let path = std::env::temp_dir().join(format!("gmail-dkim-ok-{}.toml", std::process::id()));
    std::fs::write(&path, fixed).unwrap();
    let scenario = pmta_sim::driver::load_scenario(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let ok = run(&scenario);
    assert_eq!(
        ok.records
            .iter()
            .filter(|r| r.record_type == RecordType::Delivered)
            .count(),
        10
    );
}

/// Issue 5's "done means": six hours, every provider model, 200,000 messages. Each provider
/// throttles in its own words; each penalty is a window (until > at); the throttled source IP
/// delivers to that provider again once the window has passed (recovery); the config's backoff
/// patterns put queues into backoff and take them out again; greylisting defers with postgrey's
/// reply. All of it is in the accounting records.
#[test]
fn six_hours_of_every_model_show_throttles_penalties_and_recoveries_in_acct_csv() {
    let s = load("all-models-6h");
    let out = run(&s);
    assert_eq!(out.injected.len(), 200_000);
    let delivered = |provider: &str| {
        let spec = s.isps.iter().find(|i| i.name == provider).unwrap();
        move |r: &&pmta_sim::engine::accounting::AcctRecord| {
            r.record_type == RecordType::Delivered
                && spec
                    .domains
                    .iter()
                    .any(|d| r.rcpt.ends_with(&format!("@{d}")))
        }
    };
    let total = out
        .records
        .iter()
        .filter(|r| r.record_type == RecordType::Delivered)
        .count();
    assert!(total > 100_000, "{total} delivered");
    for (isp, log) in &out.receivers {
        if isp == "greylist" {
            continue;
        }
        let first = log
            .throttles
            .first()
            .unwrap_or_else(|| panic!("{isp} never throttled"));
        assert!(first.until > first.at, "{isp}: a penalty is a window");
        for t in log.throttles.iter().take(50) {
            assert!(
                out.records.iter().any(|r| r.dsn_diag.contains(&t.reply)),
                "{isp}: `{}` is not in acct.csv",
                t.reply
            );
        }
        // Recovery: some throttled source IP delivers to this provider again once its
        // penalty has passed (a long penalty may outlast the run for another IP).
        let recovered = log.throttles.iter().any(|t| {
            let peer = t.peer.to_string();
            out.records
                .iter()
                .filter(delivered(isp))
                .any(|r| r.dlv_source_ip == peer && r.time_logged >= t.until)
        });
        assert!(
            recovered,
            "{isp}: no throttled IP delivered again after its penalty"
        );
    }
    let greylisted = out
        .records
        .iter()
        .filter(|r| {
            r.dsn_diag
                .contains("Recipient address rejected: Greylisted")
        })
        .count();
    assert!(greylisted > 1000, "{greylisted}");
    let backoff = |entering: bool| {
        out.events
            .iter()
            .filter(|e| {
                matches!(e, pmta_sim::engine::EngineEvent::ModeChanged { mode, .. }
                if (*mode == pmta_sim::config::model::QueueMode::Backoff) == entering)
            })
            .count()
    };
    assert!(
        backoff(true) >= 8 && backoff(false) >= 8,
        "{} in, {} out",
        backoff(true),
        backoff(false)
    );
}

/// isp-behavior.md §2.1 (ptr_temp2 451 4.7.23, ptr_perm 550 5.7.25 [A]): every sender needs a
/// PTR record whose name resolves back to the sending IP, checked with mail-auth's iprev
/// against the simulated zone.
#[test]
fn gmail_defers_then_blocks_a_source_ip_without_ptr() {
    let s = load("gmail-no-ptr");
    let out = run(&s);
    let with = |prefix: &str| {
        out.records
            .iter()
            .filter(|r| r.dsn_diag.starts_with(prefix))
            .collect::<Vec<_>>()
    };
    let temporary =
        with("smtp;451 4.7.23 The sending IP address for this message doesn't have a PTR record");
    let permanent = with(
        "smtp;550 5.7.25 This message was blocked because the sending IP address doesn't have a PTR record",
    );
    assert!(!temporary.is_empty() && !permanent.is_empty());
    assert!(
        temporary
            .iter()
            .all(|r| r.record_type == RecordType::Transient)
    );
    assert!(
        permanent
            .iter()
            .all(|r| r.record_type == RecordType::Bounced
                && r.time_logged.since(s.start) >= 3_600_000)
    );
}

/// isp-behavior.md §2.1 and §3 (bulk senders: TLS 4.7.29, DMARC record 4.7.40, alignment
/// 4.7.32 [A]): once a domain crosses the bulk threshold, Gmail checks each bulk rule.
#[test]
fn gmail_applies_its_bulk_rules_tls_dmarc_and_alignment() {
    let s = load("gmail-bulk-rules");
    let out = run(&s);
    let by_sender = |sender: &str| {
        out.records
            .iter()
            .filter(|r| r.orig == sender && r.record_type == RecordType::Transient)
            .map(|r| r.dsn_status.clone())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(
        by_sender("news@plain.example")
            .into_iter()
            .collect::<Vec<_>>(),
        ["4.7.29"],
        "no STARTTLS"
    );
    assert_eq!(
        by_sender("news@nodmarc.example")
            .into_iter()
            .collect::<Vec<_>>(),
        ["4.7.40"],
        "no DMARC record"
    );
    assert_eq!(
        by_sender("news@esp.example")
            .into_iter()
            .collect::<Vec<_>>(),
        ["4.7.32"],
        "an ESP's envelope and DKIM domain, the brand's From: SPF and DKIM pass, unaligned"
    );
    // Below the bulk threshold the same mail was accepted: the rules are for bulk senders.
    for sender in [
        "news@plain.example",
        "news@nodmarc.example",
        "news@esp.example",
    ] {
        let delivered = out
            .records
            .iter()
            .filter(|r| r.orig == sender && r.record_type == RecordType::Delivered)
            .count();
        assert_eq!(
            delivered, 5,
            "{sender}: the first five (the threshold) pass"
        );
    }
}

/// isp-behavior.md §2.2 (553 5.7.2 [TSS09] "permanently deferred" [B]) and §2.3 (S3140 block,
/// "persists until mitigation" [C]) with §4.5's floor (f(r) = 0 under 0.1 [D]): a sender whose
/// reputation is under the floor is blocked at MAIL FROM; after days without mail the score
/// drifts back over the floor and the same IP delivers again.
#[test]
fn a_damaged_ip_is_blocked_and_recovers_after_quiet_days() {
    let s = load("blocked-recovers");
    let out = run(&s);
    let day = 86_400_000;
    for (sender, block) in [
        (
            "news@shop.example",
            "smtp;553 5.7.2 [TSS09] All messages from 192.0.2.70 will be permanently deferred; Retrying will NOT succeed.",
        ),
        (
            "mail@shop.example",
            "smtp;550 5.7.1 Unfortunately, messages from [192.0.2.70] weren't sent.",
        ),
    ] {
        let first_day: Vec<_> = out
            .records
            .iter()
            .filter(|r| r.orig == sender && r.time_queued.since(s.start) < day)
            .collect();
        assert!(!first_day.is_empty());
        assert!(
            first_day
                .iter()
                .all(|r| r.record_type == RecordType::Bounced && r.dsn_diag.starts_with(block)),
            "{sender}: {:?}",
            first_day.iter().map(|r| &r.dsn_diag).collect::<Vec<_>>()
        );
        let later = out
            .records
            .iter()
            .filter(|r| r.orig == sender && r.time_queued.since(s.start) >= 2 * day)
            .collect::<Vec<_>>();
        assert!(!later.is_empty() && later.iter().all(|r| r.record_type == RecordType::Delivered));
    }
}

/// isp-behavior.md §4.5 [D] and §4.2 [A] ("volume consistency", complaints): days of clean
/// sending raise an IP's hourly capacity; a stream with 2% complaints lowers its IP's. Both IPs
/// start cold and send the same steady volume; on the third day they blast, and Gmail accepts
/// more from the clean IP in the first hour than a cold IP's 20 and fewer from the other.
#[test]
fn reputation_from_clean_days_raises_the_threshold_and_complaints_lower_it() {
    let s = load("gmail-reputation-days");
    let out = run(&s);
    let blast_start = s.start.plus_secs(2 * 86_400);
    let accepted_in_blast_hour = |ip: &str| {
        out.records
            .iter()
            .filter(|r| {
                r.record_type == RecordType::Delivered
                    && r.dlv_source_ip == ip
                    && r.time_logged >= blast_start
                    && r.time_logged.since(blast_start) < 3_600_000
            })
            .count()
    };
    let clean = accepted_in_blast_hour("192.0.2.71");
    let complained = accepted_in_blast_hour("198.51.100.72");
    assert!(clean > 20, "clean IP: {clean} in the hour");
    assert!(
        complained < 20,
        "complained-about IP: {complained} in the hour"
    );
    // The complaints cost reputation although Gmail never reports them one by one
    // (reference §4.7): they are in its daily tally, not in acct.csv.
    let log = &out.receivers[0].1;
    assert!(log.daily.values().map(|d| d.complaints).sum::<u64>() > 0);
    assert!(log.complaints.iter().all(|c| c.report_at.is_none()));
    assert!(
        out.records
            .iter()
            .all(|r| r.record_type != RecordType::Feedback)
    );
}

/// isp-behavior.md §2.3–§2.6 (each provider's throttle, penalty and early-retry window):
/// against every provider, the reasonable config (the model's cold capacity, backing off for
/// longer than the early-retry window) delivers at least as much as hammering, and meets a
/// small fraction of the throttling.
#[test]
fn a_patient_config_beats_hammering_at_every_provider() {
    for provider in ["outlook", "office365", "icloud", "comcast", "gmx"] {
        let count = |kind: &str| {
            let out = run(&load(&format!("{provider}-{kind}")));
            let of = |t: RecordType| out.records.iter().filter(|r| r.record_type == t).count();
            let throttles = out.receivers[0].1.throttles.len();
            let deferred = of(RecordType::Transient) + of(RecordType::TransientQueue);
            (of(RecordType::Delivered), deferred, throttles)
        };
        let (hammer_delivered, hammer_deferred, hammer_throttles) = count("hammer");
        let (patient_delivered, patient_deferred, patient_throttles) = count("patient");
        assert!(
            patient_delivered >= hammer_delivered,
            "{provider}: patient {patient_delivered}, hammer {hammer_delivered}"
        );
        assert!(
            patient_deferred * 10 < hammer_deferred && patient_throttles * 10 < hammer_throttles,
            "{provider}: deferrals {patient_deferred} vs {hammer_deferred}, throttles {patient_throttles} vs {hammer_throttles}"
        );
    }
}

/// Reference §2.2, `smtp-421-means-mx-unavailable` (default `no`: "reset the connection
/// and then reuse the same connection"): with PowerMTA's defaults and no backoff pattern,
/// Gmail's 421 at the end of DATA defers one message at a time; the queue never enters retry
/// mode and keeps connecting for the rest, every deferred recipient returns after
/// `retry-recipients-after` inside Gmail's penalty (§2.1: each early retry extends it), and
/// nothing more than the cold IP's first hour gets through. With `yes`, the 421 marks the MX
/// unavailable: the queue fails over to Gmail's second MX, then waits in retry mode; it
/// hammers far less, so Gmail's penalty lapses and more gets through.
#[test]
fn without_a_backoff_pattern_a_421_storm_goes_on_and_421_as_mx_unavailable_stops_it() {
    let storm = load("gmail-421-storm");
    let out = run(&storm);
    let count = |out: &pmta_sim::sim::output::RunOutput, t: RecordType| {
        out.records.iter().filter(|r| r.record_type == t).count()
    };
    assert_eq!(count(&out, RecordType::Delivered), 20);
    assert!(count(&out, RecordType::Transient) > 5000);
    assert_eq!(count(&out, RecordType::TransientQueue), 0);
    assert!(
        !out.events
            .iter()
            .any(|e| matches!(e, pmta_sim::engine::EngineEvent::RetryScheduled { .. })),
        "no retry mode"
    );
    // Connections go on all run long: some open in every 10 minutes of it.
    for slot in 0..12u64 {
        let from = storm.start.plus_secs(slot * 600);
        let to = from.plus_secs(600);
        assert!(
            out.connections
                .iter()
                .any(|c| c.opened >= from && c.opened < to),
            "no connection in slot {slot}"
        );
    }
    let log = &out.receivers[0].1;
    assert!(log.throttles.iter().filter(|t| t.early_retry).count() > 1000);
    // The same mail with `smtp-421-means-mx-unavailable yes`.
    let edited = text("gmail-421-storm").replace(
        "</virtual-mta>\n\"\"\"",
        "</virtual-mta>\n<domain gmail.com>\n    smtp-421-means-mx-unavailable yes\n</domain>\n\"\"\"",
    );
    let unavailable = run(&load_edited("gmail-421-storm-yes", &edited));
    // Hammering less, it lets Gmail's penalty lapse: the second hour's capacity gets used.
    assert!(count(&unavailable, RecordType::Delivered) > 20);
    assert!(count(&unavailable, RecordType::TransientQueue) > 0);
    assert!(
        unavailable
            .events
            .iter()
            .any(|e| matches!(e, pmta_sim::engine::EngineEvent::RetryScheduled { .. })),
        "retry mode once both MX hosts said 421"
    );
    let hosts: std::collections::BTreeSet<&str> = unavailable
        .records
        .iter()
        .map(|r| r.dlv_destination_ip.as_str())
        .filter(|ip| !ip.is_empty())
        .collect();
    assert_eq!(hosts.len(), 2, "both Gmail MX hosts were tried: {hosts:?}");
    assert!(
        unavailable.connections.len() * 5 < out.connections.len(),
        "{} connections against {}",
        unavailable.connections.len(),
        out.connections.len()
    );
}

/// Reference §4.7: only providers with a per-complaint feedback loop tell the sender about
/// each complaint — Yahoo (for mail DKIM-signed by an enrolled domain), Microsoft's JMRP,
/// Comcast's — and the report trails the delivery; Gmail shows only a daily aggregate spam
/// rate; iCloud has no loop. Complaints count toward reputation everywhere.
#[test]
fn complaint_reports_come_only_from_feedback_loops_and_after_the_delivery() {
    let s = load("feedback-loops");
    let out = run(&s);
    let provider_of = |rcpt: &str| {
        let domain = rcpt.rsplit('@').next().unwrap();
        s.isp_for(domain).unwrap().name.clone()
    };
    let mut by_provider: std::collections::BTreeMap<String, usize> = Default::default();
    let mut delays_s = Vec::new();
    for f in out
        .records
        .iter()
        .filter(|r| r.record_type == RecordType::Feedback)
    {
        *by_provider.entry(provider_of(&f.rcpt)).or_default() += 1;
        let delivered = out
            .records
            .iter()
            .find(|d| d.record_type == RecordType::Delivered && d.rcpt == f.rcpt)
            .unwrap();
        delays_s.push(f.time_logged.since(delivered.time_logged) / 1000);
    }
    assert_eq!(
        by_provider.keys().map(String::as_str).collect::<Vec<_>>(),
        ["comcast", "outlook", "yahoo"]
    );
    assert!(
        delays_s.iter().all(|d| *d >= 300),
        "no report within 5 minutes"
    );
    assert!(delays_s.iter().any(|d| *d >= 3600), "some come hours later");
    for (isp, log) in &out.receivers {
        assert!(
            !log.complaints.is_empty(),
            "{isp}: complaints happen everywhere"
        );
        let day = log.daily.values().next().unwrap();
        let rate = day.complaints as f64 / day.delivered as f64;
        assert!(
            (0.01..0.06).contains(&rate),
            "{isp}: daily spam rate {rate}"
        );
    }
    // Yahoo's loop needs DKIM: the same mail unsigned is never reported.
    let unsigned = text("feedback-loops").replace("    dkim-sign yes\n", "");
    let out = run(&load_edited("feedback-loops-unsigned", &unsigned));
    let yahoo_reports = out
        .records
        .iter()
        .filter(|r| r.record_type == RecordType::Feedback && r.rcpt.ends_with("@yahoo.com"))
        .count();
    assert_eq!(yahoo_reports, 0);
    assert!(
        out.records
            .iter()
            .any(|r| r.record_type == RecordType::Feedback)
    );
}

/// Reference §2.3–§2.6 and §2.10, limits with their units: iCloud's cold-IP capacity is 20
/// messages an hour (its 421 [HCM1] comes at the greeting, but it counts messages, not
/// connections); Office 365 does not apply Outlook.com's consumer bulk-sender rule
/// (5.7.515); Comcast and GMX require TLS, as their model files say; Outlook.com's
/// connection cap grows with reputation (5 for a cold IP, far more for a warm one).
#[test]
fn provider_limits_count_what_the_reference_says() {
    // iCloud: no hour of the hammering run holds more than 20 deliveries.
    let s = load("icloud-hammer");
    let out = run(&s);
    let delivered: Vec<_> = out
        .records
        .iter()
        .filter(|r| r.record_type == RecordType::Delivered)
        .map(|r| r.time_logged)
        .collect();
    for d in &delivered {
        let in_hour = delivered
            .iter()
            .filter(|e| **e >= *d && e.since(*d) < 3_600_000)
            .count();
        assert!(in_hour <= 20, "{in_hour} messages in the hour from {d:?}");
    }
    // Office 365: the same bulk sender without DKIM that Outlook.com rejects with 5.7.515.
    let office = text("outlook-bulk-unauthenticated").replace(
        "[isps.outlook]\nmodel = \"outlook\"",
        "[isps.outlook]\nmodel = \"office365\"\ndomains = [\"outlook.com\"]",
    );
    let out = run(&load_edited("office365-bulk-unauthenticated", &office));
    assert!(out.records.iter().all(|r| !r.dsn_diag.contains("5.7.515")));
    assert_eq!(
        out.records
            .iter()
            .filter(|r| r.record_type == RecordType::Delivered)
            .count(),
        80
    );
    // Comcast and GMX: mail without STARTTLS is refused at MAIL FROM and bounces.
    for (isp, domain) in [("comcast", "comcast.net"), ("gmx", "gmx.net")] {
        let scenario = format!(
            "name = \"no-tls\"\nseed = 3\nduration = \"5m\"\nstart_time = \"2026-09-21T12:00:00Z\"\ntick_ms = 10\nconfig_inline = \"\"\"\n<virtual-mta v1>\n    smtp-source-host 192.0.2.120 mta.sender.example\n</virtual-mta>\n<domain {domain}>\n    use-starttls no\n</domain>\n\"\"\"\n\n[isps.{isp}]\nmodel = \"{isp}\"\nhistory = \"warm\"\n\n[[workload]]\nvmta = \"v1\"\nmail_from = \"news@sender.example\"\nmessages = 3\ndomains = {{ \"{domain}\" = 1.0 }}\n"
        );
        let out = run(&load_edited("no-tls", &scenario));
        assert!(
            out.records
                .iter()
                .all(|r| r.record_type == RecordType::Bounced
                    && r.dsn_diag.contains("Must issue a STARTTLS command first")),
            "{isp}: {:?}",
            out.records.iter().map(|r| &r.dsn_diag).collect::<Vec<_>>()
        );
        let with_tls = scenario.replace("    use-starttls no\n", "");
        let out = run(&load_edited("with-tls", &with_tls));
        assert!(
            out.records
                .iter()
                .all(|r| r.record_type == RecordType::Delivered)
        );
    }
    // Outlook.com: 20 connections at once from a cold IP meet RP-003 past 5; from a warm IP
    // (three weeks of clean days) they are all let in.
    let connections = |history: &str| {
        let scenario = format!(
            "name = \"outlook-cap\"\nseed = 4\nduration = \"2m\"\nstart_time = \"2026-09-21T12:00:00Z\"\ntick_ms = 10\nlatency_ms = [200, 200]\nconfig_inline = \"\"\"\n<virtual-mta v1>\n    smtp-source-host 192.0.2.121 mta.sender.example\n</virtual-mta>\n<domain outlook.com>\n    max-smtp-out 20\n    retry-after 1h\n</domain>\n\"\"\"\n\n[isps.outlook]\nmodel = \"outlook\"\nhistory = \"{history}\"\n\n[[workload]]\nvmta = \"v1\"\nmail_from = \"news@sender.example\"\nmessages = 20\ndomains = {{ \"outlook.com\" = 1.0 }}\n"
        );
        let out = run(&load_edited("outlook-cap", &scenario));
        let log = &out.receivers[0].1;
        (
            log.connections.iter().filter(|c| !c.refused).count(),
            out.records.iter().any(|r| r.dsn_diag.contains("RP-003")),
        )
    };
    let (cold_in, cold_refused) = connections("cold");
    assert!(cold_refused && cold_in >= 5, "cold: {cold_in} let in");
    let (warm_in, warm_refused) = connections("warm");
    assert!(!warm_refused && warm_in == 20, "warm: {warm_in} let in");
}
