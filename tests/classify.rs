//! Reply classification against real provider replies (the research corpus of replies
//! Gmail, Yahoo, Microsoft, Apple and others send), with PowerMTA's stock bounce categories,
//! and the `pmta-sim classify` command.

use std::process::Command;

use pmta_sim::config::Config;
use pmta_sim::engine::classify::{Classifier, Disposition};
use pmta_sim::smtp::parse_reply_line as parse_reply_text;

#[test]
fn real_replies_get_the_stock_categories() {
    let classifier = Classifier::new(&Config::default());
    let cases: &[(&str, Disposition, &str)] = &[
        (
            "421-4.7.28 [192.0.2.1] Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited.",
            Disposition::Transient,
            "spam-related",
        ),
        (
            "452 4.2.2 The email account that you tried to reach is over quota. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaTemp - gsmtp",
            Disposition::Transient,
            "quota-issues",
        ),
        (
            "550-5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces.",
            Disposition::Permanent,
            "bad-mailbox",
        ),
        (
            "550 5.7.1 Unauthenticated email from example.com is not accepted due to domain's DMARC policy.",
            Disposition::Permanent,
            "policy-related",
        ),
        (
            "421 4.4.5 Server busy, try again later.",
            Disposition::Transient,
            "other",
        ),
        (
            "554 delivery error: dd This user doesn't have a yahoo.com account (this-local-part-does-not-exist@yahoo.com) [0] - mta1061.mail.ne1.yahoo.com",
            Disposition::Permanent,
            "bad-mailbox",
        ),
        (
            "554 delivery error: dd Sorry, your message to example@example.com cannot be delivered. This mailbox is disabled (554.30). - example.yahoo.com",
            Disposition::Permanent,
            "inactive-mailbox",
        ),
        (
            "552 Requested mail action aborted, mailbox not found",
            Disposition::Permanent,
            "bad-mailbox",
        ),
        (
            "552 5.2.2 <user@icloud.com>: user is over quota",
            Disposition::Permanent,
            "quota-issues",
        ),
        (
            "550 5.7.1 Your email was rejected due to having a domain present in the Spamhaus DBL -- see https://www.spamhaus.org/dbl/",
            Disposition::Permanent,
            "spam-related",
        ),
        (
            "550 spam message rejected",
            Disposition::Permanent,
            "spam-related",
        ),
        // smtp-553-means-invalid-mailbox defaults to yes: a 553 is a bad mailbox.
        (
            "553 5.7.2 [TSS09] All messages from 192.0.2.25 will be permanently deferred; Retrying will NOT succeed.",
            Disposition::Permanent,
            "bad-mailbox",
        ),
        (
            "250 2.0.0 OK 1700000000 a1si123 - gsmtp",
            Disposition::Delivered,
            "success",
        ),
    ];
    for (text, disposition, category) in cases {
        let reply = parse_reply_text(text).expect("a reply");
        let classified = classifier.classify(&reply);
        assert_eq!(
            (classified.disposition, classified.category.as_str()),
            (*disposition, *category),
            "{text}"
        );
    }
}

#[test]
fn reply_text_parses_with_and_without_enhanced_codes() {
    let reply =
        parse_reply_text("421 4.7.0 [TS01] Messages from 192.0.2.1 temporarily deferred").unwrap();
    assert_eq!((reply.code, reply.enhanced), (421, Some([4, 7, 0])));
    assert_eq!(
        reply.text,
        "[TS01] Messages from 192.0.2.1 temporarily deferred"
    );
    let plain = parse_reply_text("550 Requested action not taken: mailbox unavailable").unwrap();
    assert_eq!(plain.enhanced, None);
    assert!(parse_reply_text("hello").is_none());
    assert!(parse_reply_text("999 nope").is_none());
}

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pmta-sim"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn classify_command_reports_the_pattern_action_and_its_line() {
    let (code, stdout, _) = run(&[
        "classify",
        "--config",
        "scenarios/configs/production/pmta.conf",
        "--json",
        "421 4.7.0 [TS01] Messages from 192.0.2.1 temporarily deferred due to user complaints - 4.16.55.1; see http://postmaster.yahoo.com/421-ts01.html",
    ]);
    assert_eq!(code, Some(0));
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["disposition"], "transient");
    assert_eq!(json["action"], "mode=backoff backoff-to-normal-after=2h");
    assert_eq!(
        json["matched"],
        "scenarios/configs/production/conf.d/30-patterns.conf:8"
    );
    assert_eq!(json["smtp_pattern_list"], "blocking-errors");
    assert_eq!(json["category"], "other");

    let (code, stdout, _) = run(&["classify", "550 5.1.1 user unknown"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("disposition: permanent\n"), "{stdout}");
    assert!(
        stdout.contains("category:    bad-mailbox (<stock bounce-category-patterns>:"),
        "{stdout}"
    );
    assert!(stdout.contains("action:      none\n"));

    let (code, _, stderr) = run(&["classify", "not a reply"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("is not an SMTP reply"));
}
