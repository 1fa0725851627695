//! Reply classification against real provider replies (the research corpus of replies
//! Gmail, Yahoo, Microsoft, Apple and others send), with PowerMTA's stock bounce categories,
//! and the `pmta-sim classify` command.

use std::process::Command;

use pmta_sim::config::Config;
use pmta_sim::engine::classify::{Classifier, Disposition};
use pmta_sim::smtp::parse_reply_text;

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

/// The providers' documented replies of the research notes (§5.3, numbered as there), each
/// with the meaning the notes give it in PowerMTA's category names: authentication failures
/// are `policy-related`, IP and domain blocks and complaint deferrals `spam-related`,
/// throttles and greylisting `other`, a recipient's receiving rate `quota-issues` — and a 553
/// is `bad-mailbox`, as PowerMTA's `smtp-553-means-invalid-mailbox` (default yes) says.
#[test]
fn the_providers_documented_replies_get_their_meaning() {
    let classifier = Classifier::new(&Config::default());
    let cases: &[(u32, &str, &str)] = &[
        (
            2,
            "421-4.7.28 Gmail has detected an unusual rate of unsolicited mail. To protect 421-4.7.28 our users from spam, mail has been temporarily rate limited.",
            "spam-related",
        ),
        (
            4,
            "421 4.7.28 Gmail has detected this sender exceeded the quota for sending messages that have the same Message-ID:. To best protect our users, the message has been temporarily rejected.",
            "policy-related",
        ),
        (
            5,
            "421-4.7.0 Our system has detected that this message is 421-4.7.0 suspicious due to the very low reputation of the sending IP address. 421-4.7.0 To protect our users from spam, mail sent from your IP address has 421-4.7.0 been temporarily rate limited.",
            "spam-related",
        ),
        (
            7,
            "450-4.2.1 The user you are trying to contact is receiving mail at a rate that 450-4.2.1 prevents additional messages from being delivered. Please resend your 450-4.2.1 message at a later time.",
            "quota-issues",
        ),
        (
            13,
            "550-5.7.26 This mail has been blocked because the sender is unauthenticated. 550-5.7.26 Gmail requires all senders to authenticate with either SPF or DKIM.",
            "policy-related",
        ),
        (
            14,
            "550-5.7.26 The MAIL FROM domain [mail4.example.com] has an SPF record with a 550-5.7.26 hard fail policy (-all) but it fails to pass SPF checks with the ip: 550-5.7.26 [192.0.2.24]. To best protect our users from spam and phishing, 550-5.7.26 the message has been blocked.",
            "policy-related",
        ),
        (
            16,
            "421 4.7.27 Your email has been rate limited because SPF authentication didn't pass for this message.",
            "policy-related",
        ),
        (
            18,
            "421 4.7.32 Your email has been rate limited because the From: header (RFC5322) in this message isn't aligned with either the authenticated SPF or DKIM organizational domain.",
            "policy-related",
        ),
        (
            19,
            "550 5.7.40 Your message was blocked because the sending domain doesn't have a DMARC record or the DMARC record doesn't specify a DMARC policy.",
            "policy-related",
        ),
        (
            21,
            "421 4.7.29 Your email has been rate limited because you're not using a TLS connection.",
            "policy-related",
        ),
        (
            22,
            "550-5.7.1 [192.0.2.1] Our system has detected that this message is likely unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been blocked.",
            "spam-related",
        ),
        (
            23,
            "550-5.7.1 [192.0.2.1] Our system has detected that this message is likely suspicious due to the very low reputation of the sending domain. To best protect our users from spam, the message has been blocked.",
            "spam-related",
        ),
        (
            25,
            "550-5.7.1 This message is not RFC 5322 compliant. There are multiple Subject 550-5.7.1 headers. To reduce the amount of spam sent to Gmail, this message has 550-5.7.1 been blocked.",
            "content-related",
        ),
        (
            26,
            "550-5.7.1 [192.0.2.1 14] Messages missing a valid address in From: header, or having no From: header, are not accepted.",
            "content-related",
        ),
        (
            27,
            "452 4.5.3 Your message has too many recipients.",
            "other",
        ),
        (
            28,
            "421 4.7.0 TLS required for RCPT domain, closing connection.",
            "policy-related",
        ),
        (
            30,
            "421 4.7.0 [TSS04] Messages from 192.0.2.192 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.verizonmedia.com/error-codes",
            "spam-related",
        ),
        (
            35,
            "554 5.7.9 Message not accepted for policy reasons. See https://postmaster.yahooinc.com/error-codes",
            "policy-related",
        ),
        (
            36,
            "554 Message not allowed - [PH01] Email not accepted for policy reasons. Please visit https://postmaster.yahooinc.com/error-codes",
            "spam-related",
        ),
        (
            37,
            "550 5.7.9 This mail has been blocked because the sender is unauthenticated. Yahoo requires all senders to authenticate with either SPF or DKIM.",
            "policy-related",
        ),
        (
            38,
            "553 5.7.1 [BL21] Connections will not be accepted from 192.0.2.1, because the ip is in Spamhaus's list",
            "bad-mailbox",
        ),
        (
            39,
            "421 Max message per connection reached, closing transmission channel",
            "other",
        ),
        (45, "450 User is receiving mail too quickly", "quota-issues"),
        (
            46,
            "451 4.7.650 The mail server [192.0.2.25] has been temporarily rate limited due to IP reputation. For e-mail delivery information, see https://postmaster.live.com (S3113)",
            "spam-related",
        ),
        (
            49,
            "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3140).",
            "spam-related",
        ),
        (
            52,
            "550 5.7.509 Access denied, sending domain [EXAMPLE.JP] does not pass DMARC verification and has a DMARC policy of reject.",
            "policy-related",
        ),
        (
            53,
            "550 5.7.515 Access denied, sending domain [example.com] does not meet the required authentication level.",
            "policy-related",
        ),
        (
            55,
            "550 5.4.1 [user@example.org]: Recipient address rejected: Access denied [NAM.prod.protection.outlook.com]",
            "bad-mailbox",
        ),
        (
            58,
            "550 SC-004 Mail rejected by Outlook.com for policy reasons. A block has been placed against your IP address because we have received complaints concerning mail coming from that IP address.",
            "spam-related",
        ),
        (
            59,
            "421 4.7.1 Messages to user@icloud.com deferred due to excessive volume. Try again later - https://support.apple.com/en-us/HT204137",
            "other",
        ),
        (
            60,
            "421 [HCM1] Your mail from 192.0.2.1 was deferred.",
            "spam-related",
        ),
        (
            61,
            "554 5.7.1 [HME1] This message was blocked for failing both SPF and DKIM authentication checks.",
            "policy-related",
        ),
        (
            63,
            "550 5.7.1 [CS01] Message rejected due to local policy. Please visit https://support.apple.com/en-us/HT204137",
            "policy-related",
        ),
        (
            67,
            "550 5.1.0 <bounce@mailer.example.com> sender rejected. Refer to Error Codes section at https://www.cox.com/residential/support/email-error-codes.html for more information. AUP#CDRBL",
            "spam-related",
        ),
        (
            68,
            "421 4.1.0 192.0.2.1 Throttled - try again later",
            "other",
        ),
        (
            69,
            "554-gmx.net (mxgmx104) Nemesis ESMTP Service not available 554-No SMTP service 554-IP address is block listed.",
            "spam-related",
        ),
        (
            71,
            "550 <example@example.com>: Reject due to SPF policy. The originating IP of the message is not permitted by the domain owner",
            "policy-related",
        ),
        (
            72,
            "550 Ip frequency limited [Blocked IP 192.0.2.22]",
            "other",
        ),
        (73, "550 DMARC check failed.", "policy-related"),
        (
            75,
            "450 4.2.0 <user@example.com>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/example.com.html",
            "other",
        ),
        (
            76,
            "451 4.7.1 Service unavailable - try again later",
            "other",
        ),
        (
            82,
            "554 The mail could not be delivered to the recipient because the domain is not reachable. Please check the domain and try again",
            "bad-domain",
        ),
    ];
    let mut wrong = Vec::new();
    for (number, text, category) in cases {
        let reply = parse_reply_text(text).expect("a reply");
        let got = classifier.classify(&reply).category;
        if got != *category {
            wrong.push(format!("#{number} `{text}`: {got}, expected {category}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
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
    assert!(parse_reply_text("hello").is_err());
    assert!(parse_reply_text("999 nope").is_err());
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
        stdout.contains("category:    bad-mailbox (<default bounce-category-patterns>:"),
        "{stdout}"
    );
    assert!(stdout.contains("action:      none\n"));

    let (code, _, stderr) = run(&["classify", "not a reply"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("is not an SMTP reply"));
}
