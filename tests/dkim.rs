//! DKIM signing: signatures verify with mail-auth, and carry the engine's `now`, so the
//! same message signed at the same time gives the same bytes.

mod common;

use common::harness::{Harness, T0};
use mail_auth::DkimResult;
use pmta_sim::engine::accounting::RecordType;
use pmta_sim::sim::mailauth::{Verifier, Zone};

fn verify(message: &[u8], name: &str, record: &str) -> Vec<DkimResult> {
    let mut zone = Zone::default();
    zone.add_txt(name, record);
    Verifier::new(zone).results(message)
}

fn signed_message(config: &str) -> (Vec<u8>, Harness) {
    let key = std::fs::read(common::fixture(
        "scenarios/configs/production/keys/s2026.news.example.com.pem",
    ))
    .unwrap();
    let config = common::harness::config_with_files(config, &[("/etc/pmta/keys/s2026.pem", key)]);
    let mut h = Harness::with_config(config);
    h.accept_all("example.net", "198.51.100.3");
    h.inject_data(
        Some("vmta1"),
        &["u@example.net"],
        b"From: News <news@news.example.com>\nTo: u@example.net\nSubject: Hello\nMessage-ID: <1@news.example.com>\n\nBody line\n.leading dot\n".to_vec(),
    );
    h.run_for(10);
    assert_eq!(h.records_of(RecordType::Delivered).len(), 1);
    let message = h
        .received()
        .first()
        .cloned()
        .expect("the receiver got the message");
    (message, h)
}

fn config(key_line: &str) -> String {
    format!(
        "{key_line}
<virtual-mta vmta1>
    smtp-source-host 192.0.2.1 mta1.news.example.com
</virtual-mta>
<domain *>
    dkim-sign yes
</domain>
"
    )
}

#[test]
fn rsa_signature_verifies_and_uses_the_engine_clock() {
    let record = std::fs::read_to_string(common::fixture(
        "scenarios/configs/production/keys/s2026.news.example.com.dns.txt",
    ))
    .unwrap();
    let text = config("domain-key s2026,news.example.com,keys/s2026.pem");
    let (message, _) = signed_message(&text);
    let header =
        String::from_utf8_lossy(&message[..message.iter().position(|b| *b == b'\n').unwrap()])
            .to_string();
    assert!(
        header.starts_with("DKIM-Signature: v=1; a=rsa-sha256; s=s2026; d=news.example.com;"),
        "{header}"
    );
    let text_message = String::from_utf8_lossy(&message).to_string();
    assert!(
        text_message.contains(&format!("t={};", T0.unix_secs())),
        "{text_message}"
    );
    assert_eq!(
        verify(
            &message,
            "s2026._domainkey.news.example.com.",
            record.trim()
        ),
        [DkimResult::Pass]
    );
    // The same inputs give the same bytes.
    let (again, _) = signed_message(&text);
    assert_eq!(message, again);
}

#[test]
fn a_missing_key_signs_with_a_stand_in_that_verifies_against_its_record() {
    let text = config("domain-key s1,news.example.com,/nonexistent/s1.pem");
    let (message, h) = signed_message(&text);
    let signer = h.engine().signer().for_domain("news.example.com").unwrap();
    assert!(signer.stand_in);
    let record = signer.stand_in_record.clone().unwrap();
    assert!(record.starts_with("v=DKIM1; k=ed25519; p="));
    assert!(
        String::from_utf8_lossy(&message).starts_with("DKIM-Signature: v=1; a=ed25519-sha256;")
    );
    assert_eq!(
        verify(&message, "s1._domainkey.news.example.com.", &record),
        [DkimResult::Pass]
    );
}

#[test]
fn unsigned_queues_send_the_message_as_injected() {
    let text = config("domain-key s2026,news.example.com,keys/s2026.pem")
        .replace("dkim-sign yes", "dkim-sign no");
    let (message, _) = signed_message(&text);
    assert!(message.starts_with(b"From: News"));
    // Line ends arrive as CRLF and the leading dot survives dot-stuffing.
    assert!(
        message.ends_with(b"Body line\r\n.leading dot\r\n"),
        "{:?}",
        String::from_utf8_lossy(&message)
    );
}

#[test]
fn dkim_identity_sets_the_i_tag() {
    let text = config("domain-key s2026,news.example.com,keys/s2026.pem").replace(
        "dkim-sign yes",
        "dkim-sign yes\n    dkim-identity news@news.example.com",
    );
    let (message, _) = signed_message(&text);
    let text = String::from_utf8_lossy(&message).to_string();
    assert!(text.contains("i=news@news.example.com;"), "{text}");
    let record = std::fs::read_to_string(common::fixture(
        "scenarios/configs/production/keys/s2026.news.example.com.dns.txt",
    ))
    .unwrap();
    assert_eq!(
        verify(
            &message,
            "s2026._domainkey.news.example.com.",
            record.trim()
        ),
        [DkimResult::Pass]
    );
}

/// A body many messages share is hashed once and kept: signing its header block with the
/// kept body hash gives the same DKIM-Signature, byte for byte, as signing the whole message,
/// under both body canonicalizations and with a body that ends in blank lines and trailing
/// spaces (where simple and relaxed differ).
#[test]
fn a_kept_body_hash_signs_as_the_whole_message_does() {
    use pmta_sim::auth::{SignOptions, Signer, body_hash, to_crlf};
    let key = std::fs::read(common::fixture(
        "scenarios/configs/production/keys/s2026.news.example.com.pem",
    ))
    .unwrap();
    let config = common::harness::config_with_files(
        &config("domain-key s2026,news.example.com,keys/s2026.pem"),
        &[("/etc/pmta/keys/s2026.pem", key)],
    );
    let signer = Signer::from_config(&config, 1).unwrap();
    let signer = signer.for_domain("news.example.com").unwrap();
    let head = to_crlf(b"From: News <news@news.example.com>\nTo: u@example.net\nSubject: Hi\n\n");
    let body = to_crlf(b"Body line  \n\twith tabs\t\n\n\n");
    let whole = [head.clone(), body.clone()].concat();
    for canon in ["simple", "relaxed"] {
        let options = SignOptions::from_settings(canon, canon, None);
        let hash = body_hash(&body, options.body_canon);
        assert_eq!(
            signer
                .sign_head(&head, &hash, 1_790_000_000, &options)
                .unwrap(),
            signer.sign(&whole, 1_790_000_000, &options).unwrap(),
            "{canon}"
        );
    }
    let simple = body_hash(
        &body,
        SignOptions::from_settings("simple", "simple", None).body_canon,
    );
    let relaxed = body_hash(
        &body,
        SignOptions::from_settings("relaxed", "relaxed", None).body_canon,
    );
    assert_ne!(
        simple, relaxed,
        "the two canonicalizations hash this body differently"
    );
}
