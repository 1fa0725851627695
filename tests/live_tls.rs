//! TLS both ways: the outbound connector against third-party STARTTLS servers (a private
//! Postfix instance, and the project's aiosmtpd receiver, i.e. Python's OpenSSL) and
//! against the project's own listener (rustls), in opportunistic and verifying modes;
//! certificate files that cannot serve; and the lab the live driver's tests will lean on:
//! Postfix greylisting through Debian's postgrey, and the receiver's failure modes
//! (greylisting, 421 after N, per-connection limit).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::live::{
    Client, Daemon, Postfix, TempDir, free_port, lab_python, postgrey, start_listener, test_cert,
    wait_for_port,
};
use pmta_sim::driver::live::tls::{self, TlsClient, TlsMode};
use pmta_sim::inbound::{CertificateFile, ListenerLimits};
use rustls::RootCertStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn receiver(dir: &TempDir, args: &[&str]) -> (Daemon, SocketAddr) {
    let port = free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/live/receiver.py");
    let daemon = Daemon::spawn(
        Command::new(lab_python())
            .arg(script)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--max-seconds",
                "120",
            ])
            .arg("--stats")
            .arg(dir.path().join("stats.json"))
            .args(args),
    );
    (daemon, SocketAddr::from(([127, 0, 0, 1], port)))
}

fn stats(dir: &TempDir) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.path().join("stats.json")).unwrap()).unwrap()
}

/// Up to STARTTLS's 220 on a fresh connection.
async fn starttls(addr: SocketAddr) -> tokio::net::TcpStream {
    let mut client = Client::connect(addr).await;
    assert_eq!(client.reply().await.unwrap().code, 220);
    let ehlo = client.command("EHLO sender.test").await;
    assert!(ehlo.text.contains("STARTTLS"), "{ehlo}");
    assert_eq!(client.command("STARTTLS").await.code, 220);
    client.stream
}

async fn roundtrip<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    line: &str,
) -> String {
    stream
        .write_all(format!("{line}\r\n").as_bytes())
        .await
        .unwrap();
    let mut buffer = vec![0u8; 4096];
    let mut text = String::new();
    // A whole reply ends with a line whose code is followed by a space.
    while text
        .lines()
        .last()
        .is_none_or(|l| l.as_bytes().get(3) != Some(&b' '))
    {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed after {text:?}");
        text.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    text
}

/// Sends `line`; the reply must start with `prefix`.
async fn expect<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    line: &str,
    prefix: &str,
) -> String {
    let reply = roundtrip(stream, line).await;
    assert!(reply.starts_with(prefix), "{line} -> {reply}");
    reply
}

/// A client that trusts only `cert`.
fn trusting(cert: &rustls::pki_types::CertificateDer<'static>) -> TlsClient {
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    TlsClient::with_roots(roots)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_starttls_against_a_third_party_server() {
    let dir = TempDir::new("tls-receiver");
    let cert = test_cert(&["receiver.lab.test"]);
    let cert_file = dir.write("receiver.crt", &cert.cert_pem);
    let key_file = dir.write("receiver.key", &cert.key_pem);
    let (_receiver, addr) = receiver(
        &dir,
        &[
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
        ],
    );
    wait_for_port(addr).await;
    tls::install_crypto_provider();
    let untrusting = TlsClient::with_roots(RootCertStore::empty());
    let trusting = trusting(&cert.der);

    // Opportunistic: a self-signed certificate for another name still encrypts.
    let mut stream = untrusting
        .connect(
            starttls(addr).await,
            "mx.example.test",
            TlsMode::Opportunistic,
        )
        .await
        .expect("opportunistic handshake");
    let (_, session) = stream.get_ref();
    assert!(session.protocol_version().is_some());
    expect(&mut stream, "EHLO sender.test", "250").await;
    expect(&mut stream, "MAIL FROM:<a@sender.test>", "250").await;
    expect(&mut stream, "RCPT TO:<b@receiver.test>", "250").await;
    expect(&mut stream, "DATA", "354").await;
    let reply = roundtrip(&mut stream, "Subject: over TLS\r\n\r\nhello\r\n.").await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    assert_eq!(stats(&dir)["tls_sessions"], 1);
    assert_eq!(stats(&dir)["accepted"], 1);

    // require-tls-verify: an untrusted certificate, or one for another name, fails.
    let error = untrusting
        .connect(
            starttls(addr).await,
            "receiver.lab.test",
            TlsMode::RequiredVerified,
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
    let error = trusting
        .connect(
            starttls(addr).await,
            "other.lab.test",
            TlsMode::RequiredVerified,
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("not valid for name"), "{error}");
    let mut stream = trusting
        .connect(
            starttls(addr).await,
            "receiver.lab.test",
            TlsMode::RequiredVerified,
        )
        .await
        .expect("verified handshake");
    expect(&mut stream, "EHLO sender.test", "250").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_starttls_against_the_projects_listener() {
    let dir = TempDir::new("tls-listener");
    let cert = test_cert(&["mx.pmta-sim.test"]);
    let path = dir.write("server.pem", &cert.combined_pem);
    let config = format!(
        "smtp-server-tls-certificate {}\n<smtp-user alice>\n    password s3cret\n</smtp-user>\n",
        path.display()
    );
    let live = start_listener(&dir, &config, ListenerLimits::default()).await;
    let client = trusting(&cert.der);
    let mut stream = client
        .connect(
            starttls(live.addr).await,
            "mx.pmta-sim.test",
            TlsMode::RequiredVerified,
        )
        .await
        .expect("verified handshake with the listener");
    let ehlo = roundtrip(&mut stream, "EHLO sender.test").await;
    // Under TLS: AUTH is offered, STARTTLS no longer.
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    let again = roundtrip(&mut stream, "STARTTLS").await;
    assert!(again.starts_with("503 5.5.1"), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_starttls_to_postfix_which_greylists_through_postgrey() {
    let dir = TempDir::new("tls-postfix");
    common::live::require("postgrey");
    let cert = test_cert(&["postfix.lab.test"]);
    let cert_file = dir.write("postfix.crt", &cert.cert_pem);
    let key_file = dir.write("postfix.key", &cert.key_pem);
    let (_postgrey, policy_port) = postgrey(&dir, 1).await;
    let port = free_port();
    let _postfix = Postfix::start(
        &dir.path().join("postfix"),
        port,
        &[
            "--discard",
            "--policy",
            &format!("127.0.0.1:{policy_port}"),
            "--tls",
            cert_file.to_str().unwrap(),
            key_file.to_str().unwrap(),
        ],
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    tls::install_crypto_provider();
    let client = trusting(&cert.der);
    let mut stream = client
        .connect(
            starttls(addr).await,
            "postfix.lab.test",
            TlsMode::RequiredVerified,
        )
        .await
        .expect("verified handshake with Postfix");
    expect(&mut stream, "EHLO sender.test", "250").await;
    expect(&mut stream, "MAIL FROM:<a@sender.test>", "250").await;
    let grey = roundtrip(&mut stream, "RCPT TO:<b@receiver.test>").await;
    assert!(
        grey.starts_with("450 4.2.0 <b@receiver.test>: Recipient address rejected: Greylisted"),
        "{grey}"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let passed = roundtrip(&mut stream, "RCPT TO:<b@receiver.test>").await;
    assert!(passed.starts_with("250"), "{passed}");
    expect(&mut stream, "DATA", "354").await;
    let reply = roundtrip(
        &mut stream,
        "Subject: greylisted, then through\r\n\r\nhi\r\n.",
    )
    .await;
    assert!(reply.starts_with("250 2.0.0 Ok: queued as"), "{reply}");
    // Opportunistic TLS with no trust at all also talks to Postfix.
    let untrusting = TlsClient::with_roots(RootCertStore::empty());
    let mut stream = untrusting
        .connect(starttls(addr).await, "127.0.0.1", TlsMode::Opportunistic)
        .await
        .expect("opportunistic handshake with Postfix");
    expect(&mut stream, "EHLO sender.test", "250").await;
}

#[test]
fn certificate_files_that_cannot_serve_say_why() {
    let dir = TempDir::new("tls-files");
    let cert = test_cert(&["mx.pmta-sim.test"]);
    let other = test_cert(&["other.test"]);
    let file = |name: &str, text: Option<&str>, password: Option<&str>| {
        let path = match text {
            Some(text) => dir.write(name, text),
            None => dir.path().join(name),
        };
        CertificateFile {
            path: path.display().to_string(),
            password: password.map(str::to_string),
            at: "pmta.conf:3:1".into(),
        }
    };
    assert!(tls::server_config(&file("ok.pem", Some(&cert.combined_pem), None)).is_ok());
    let key_first = format!("{}{}", cert.key_pem, cert.cert_pem);
    assert!(tls::server_config(&file("keyfirst.pem", Some(&key_first), None)).is_ok());
    let cases = [
        (
            file("missing.pem", None, None),
            "pmta.conf:3:1: cannot read the certificate file",
        ),
        (
            file("nokey.pem", Some(&cert.cert_pem), None),
            "no private key",
        ),
        (
            file("nocert.pem", Some(&cert.key_pem), None),
            "no certificate",
        ),
        (
            file(
                "mismatch.pem",
                Some(&format!("{}{}", cert.cert_pem, other.key_pem)),
                None,
            ),
            "the key does not fit the certificate",
        ),
        (
            file("password.pem", Some(&cert.combined_pem), Some("secret")),
            "encrypted",
        ),
    ];
    for (file, expected) in cases {
        let error = tls::server_config(&file).unwrap_err().to_string();
        assert!(error.contains(expected), "{}: {error}", file.path);
    }
}

#[test]
fn tls_modes_follow_powermtas_directives() {
    use TlsMode::*;
    // (use-starttls, require-starttls, require-tls-verify)
    let table = [
        ((false, false, false), Off),
        ((true, false, false), Opportunistic),
        ((true, true, false), Required),
        ((false, true, false), Required),
        ((true, false, true), RequiredVerified),
        ((false, false, true), RequiredVerified),
    ];
    for ((use_, require, verify), mode) in table {
        assert_eq!(TlsMode::from_settings(use_, require, verify), mode);
    }
    assert!(!Off.attempts() && Opportunistic.attempts() && !Opportunistic.requires());
    assert!(Required.requires() && !Required.verifies() && RequiredVerified.verifies());
}

/// DATA and a small message: the final reply's code.
async fn send(client: &mut Client) -> u16 {
    assert_eq!(client.command("DATA").await.code, 354);
    client.send(b"Subject: x\r\n\r\nhi\r\n.\r\n").await;
    client.reply().await.unwrap().code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_greylists_and_fails_on_demand() {
    let dir = TempDir::new("receiver-modes");
    let (_receiver, addr) = receiver(
        &dir,
        &[
            "--greylist",
            "1",
            "--fail-after",
            "3",
            "--fail-for",
            "1",
            "--max-msgs-per-conn",
            "2",
        ],
    );
    wait_for_port(addr).await;
    let mut client = Client::connect(addr).await;
    client.reply().await.unwrap();
    client.command("EHLO sender.test").await;
    client.command("MAIL FROM:<a@sender.test>").await;
    let grey = client.command("RCPT TO:<b@receiver.test>").await;
    assert_eq!((grey.code, grey.status()), (450, "4.2.0".into()), "{grey}");
    assert!(grey.text.contains("Greylisted"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(client.command("RCPT TO:<b@receiver.test>").await.code, 250);
    assert_eq!(send(&mut client).await, 250);
    // The second message on this connection is allowed, the third is not.
    client.command("MAIL FROM:<a@sender.test>").await;
    client.command("RCPT TO:<b@receiver.test>").await;
    assert_eq!(send(&mut client).await, 250);
    let third = client.command("MAIL FROM:<a@sender.test>").await;
    assert_eq!(third.code, 421, "{third}");
    assert!(client.reply().await.is_none(), "closed after 421");

    // One more message, then 421 after 3 accepted, for a second.
    let mut client = Client::connect(addr).await;
    client.reply().await.unwrap();
    client.command("EHLO sender.test").await;
    client.command("MAIL FROM:<a@sender.test>").await;
    client.command("RCPT TO:<b@receiver.test>").await;
    assert_eq!(send(&mut client).await, 250);
    let mut client = Client::connect(addr).await;
    client.reply().await.unwrap();
    client.command("EHLO sender.test").await;
    let storm = client.command("MAIL FROM:<a@sender.test>").await;
    assert_eq!(storm.code, 421, "{storm}");
    assert!(storm.text.contains("try again later"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut client = Client::connect(addr).await;
    client.reply().await.unwrap();
    client.command("EHLO sender.test").await;
    assert_eq!(client.command("MAIL FROM:<a@sender.test>").await.code, 250);
    let counts = stats(&dir);
    assert_eq!(counts["accepted"], 3);
    assert_eq!(counts["greylisted"], 1);
    assert_eq!(counts["per_conn_421"], 1);
    assert_eq!(counts["fail_after_421"], 1);
}
