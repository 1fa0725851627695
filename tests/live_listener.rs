//! The inbound listener against real clients (swaks, Postfix's smtp-source) and a raw
//! client that misbehaves on purpose: STARTTLS, AUTH, relay control, limits, timeouts,
//! hostile clients and shutdown. Loopback only; `scripts/lab.sh install` provides swaks
//! and smtp-source.

mod common;

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::live::{Client, TempDir, require, send_message, start_listener, test_cert};
use pmta_sim::driver::live::tls::{TlsClient, TlsMode};
use pmta_sim::inbound::ListenerLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OUTSIDER: &str = "127.0.0.9";

/// 127.0.0.1 may relay; everyone else needs AUTH (alice / s3cret), offered after STARTTLS.
fn config(dir: &TempDir, extra_source: &str) -> String {
    let cert = dir.write("server.pem", &test_cert(&["mx.pmta-sim.test"]).combined_pem);
    format!(
        "host-name mx.pmta-sim.test\n\
         smtp-server-tls-certificate {}\n\
         <smtp-user alice>\n    password s3cret\n</smtp-user>\n\
         <source 127.0.0.1>\n    always-allow-relaying yes\n</source>\n\
         {extra_source}\
         <source 0/0>\n    smtp-service yes\n</source>\n\
         <virtual-mta vmta1>\n    smtp-source-host 127.0.0.1 mta1.pmta-sim.test\n</virtual-mta>\n\
         default-virtual-mta vmta1\n",
        cert.display()
    )
}

fn swaks(port: u16, args: &[&str]) -> (i32, String) {
    let output = Command::new(require("swaks"))
        .args(["--server", "127.0.0.1", "--port", &port.to_string()])
        .args(["--timeout", "20", "--from", "sender@client.test"])
        .args(args)
        .output()
        .expect("swaks runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

fn plain(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_authenticates_after_starttls_and_the_message_is_spooled() {
    let dir = TempDir::new("listener-auth");
    let mut live = start_listener(&dir, &config(&dir, ""), ListenerLimits::default()).await;
    let port = live.addr.port();
    // swaks from an unlisted address, over STARTTLS, as alice.
    let with_auth = |mechanism: &str, password: &str| {
        let args = [
            "--local-interface",
            OUTSIDER,
            "--to",
            "bob@remote.test",
            "--tls",
            "--auth",
            mechanism,
            "--auth-user",
            "alice",
            "--auth-password",
            password,
        ];
        swaks(port, &args)
    };
    for mechanism in ["PLAIN", "LOGIN"] {
        let (code, out) = with_auth(mechanism, "s3cret");
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("235 2.7.0"), "{out}");
        assert!(out.contains("250 2.0.0 ok id="), "{out}");
        let accepted = live.accepted.recv().await.unwrap();
        assert_eq!(accepted.injection.recipients, ["bob@remote.test"]);
        assert_eq!(
            accepted.injection.source_ip,
            Some(OUTSIDER.parse().unwrap())
        );
        assert!(accepted.injection.queued_at.is_some());
    }
    assert_eq!(live.spool.len(), 2);

    // A wrong password is refused, and nothing is queued.
    let (code, out) = with_auth("PLAIN", "wrong");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("535 5.7.8"), "{out}");
    assert_eq!(live.spool.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_relay_probe_gets_550_and_nothing_is_queued() {
    let dir = TempDir::new("listener-relay");
    let mut live = start_listener(&dir, &config(&dir, ""), ListenerLimits::default()).await;
    let (code, out) = swaks(
        live.addr.port(),
        &[
            "--local-interface",
            OUTSIDER,
            "--to",
            "victim@elsewhere.test",
        ],
    );
    // swaks exits 24 when RCPT is refused.
    assert_eq!(code, 24, "{out}");
    assert!(out.contains("550 5.7.1 relaying denied"), "{out}");
    assert!(live.spool.is_empty());
    assert!(live.accepted.try_recv().is_err());
    // The listed source relays without AUTH.
    let (code, out) = swaks(live.addr.port(), &["--to", "friend@elsewhere.test"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(live.spool.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_offered_only_under_tls_unless_the_source_allows_plain_text() {
    let dir = TempDir::new("listener-auth-clear");
    let special = "<source 127.0.0.5>\n    allow-unencrypted-plain-auth yes\n    require-auth yes\n</source>\n";
    let live = start_listener(&dir, &config(&dir, special), ListenerLimits::default()).await;

    let mut client = Client::connect_from(OUTSIDER.parse().unwrap(), live.addr).await;
    assert_eq!(client.reply().await.unwrap().code, 220);
    let ehlo = client.command("EHLO client.test").await;
    assert!(
        ehlo.text.contains("STARTTLS") && !ehlo.text.contains("AUTH"),
        "{ehlo}"
    );
    let refused = client
        .command(&format!("AUTH PLAIN {}", plain("alice", "s3cret")))
        .await;
    assert_eq!(
        (refused.code, refused.status()),
        (538, "5.7.11".into()),
        "{refused}"
    );

    // This source takes AUTH in clear, and requires it before MAIL.
    let mut client = Client::connect_from("127.0.0.5".parse().unwrap(), live.addr).await;
    client.reply().await.unwrap();
    let ehlo = client.command("EHLO client.test").await;
    assert!(ehlo.text.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    let mail = client.command("MAIL FROM:<a@client.test>").await;
    assert_eq!((mail.code, mail.status()), (530, "5.7.0".into()), "{mail}");
    // AUTH LOGIN, step by step.
    assert_eq!(client.command("AUTH LOGIN").await.code, 334);
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    assert_eq!(client.command(&b64("alice")).await.code, 334);
    assert_eq!(client.command(&b64("s3cret")).await.code, 235);
    let reply = send_message(
        &mut client,
        "a@client.test",
        &["b@remote.test"],
        "Subject: x\r\n\r\nhi",
    )
    .await;
    assert_eq!(reply.code, 250, "{reply}");
    assert_eq!(live.spool.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_source_load_is_all_spooled() {
    let dir = TempDir::new("listener-load");
    let mut live = start_listener(&dir, &config(&dir, ""), ListenerLimits::default()).await;
    let output = Command::new(require("smtp-source"))
        .args([
            "-s",
            "10",
            "-m",
            "300",
            "-l",
            "2048",
            "-f",
            "s@client.test",
            "-t",
            "r@remote.test",
        ])
        .arg(live.addr.to_string())
        .output()
        .expect("smtp-source runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(live.spool.len(), 300);
    assert_eq!(live.listener.stats().messages_accepted, 300);
    for _ in 0..300 {
        let accepted = live.accepted.recv().await.unwrap();
        assert!(accepted.injection.data.len() >= 2048);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_line_recipient_and_error_limits_answer_like_powermta() {
    let dir = TempDir::new("listener-limits");
    let sized =
        "<source 127.0.0.6>\n    always-allow-relaying yes\n    max-message-size 10k\n</source>\n";
    let limits = ListenerLimits {
        recipients_max: 50,
        errors_max: 5,
        ..ListenerLimits::default()
    };
    let live = start_listener(&dir, &config(&dir, sized), limits).await;
    let mut client = Client::connect_from("127.0.0.6".parse().unwrap(), live.addr).await;
    client.reply().await.unwrap();
    let ehlo = client.command("EHLO client.test").await;
    assert!(ehlo.text.contains("SIZE 10240"), "{ehlo}");
    let declared = client.command("MAIL FROM:<a@client.test> SIZE=20000").await;
    assert_eq!(
        (declared.code, declared.status()),
        (552, "5.3.4".into()),
        "{declared}"
    );
    let big = format!(
        "Subject: big\r\n\r\n{}",
        "x".repeat(80).repeat(250).replace("xx", "x\r\n")
    );
    let reply = send_message(&mut client, "a@client.test", &["b@remote.test"], &big).await;
    assert_eq!(
        (reply.code, reply.status()),
        (552, "5.3.4".into()),
        "{reply}"
    );
    let long = format!("Subject: long\r\n\r\n{}", "y".repeat(1200));
    let reply = send_message(&mut client, "a@client.test", &["b@remote.test"], &long).await;
    assert_eq!(reply.code, 552, "{reply}");
    assert!(reply.text.contains("longer than 998"), "{reply}");
    // 998 characters is allowed.
    let fits = format!("Subject: fits\r\n\r\n{}", "y".repeat(998));
    let reply = send_message(&mut client, "a@client.test", &["b@remote.test"], &fits).await;
    assert_eq!(reply.code, 250, "{reply}");

    // Recipients past the limit get 452 4.5.3; the first 50 stay accepted.
    let mut client = Client::connect(live.addr).await;
    client.reply().await.unwrap();
    client.command("EHLO client.test").await;
    client.command("MAIL FROM:<a@client.test>").await;
    for i in 0..50 {
        assert_eq!(
            client
                .command(&format!("RCPT TO:<r{i}@remote.test>"))
                .await
                .code,
            250
        );
    }
    let over = client.command("RCPT TO:<r50@remote.test>").await;
    assert_eq!((over.code, over.status()), (452, "4.5.3".into()), "{over}");
    assert_eq!(client.command("DATA").await.code, 354);
    client.send(b"Subject: many\r\n\r\nhi\r\n.\r\n").await;
    assert_eq!(client.reply().await.unwrap().code, 250);
    assert_eq!(live.spool.len(), 2);

    // Five errors in a row end the session.
    for _ in 0..4 {
        assert_eq!(client.command("BOGUS").await.code, 500);
    }
    client.send(b"BOGUS\r\n").await;
    assert_eq!(client.reply().await.unwrap().code, 500);
    let last = client.reply().await.unwrap();
    assert_eq!((last.code, last.status()), (421, "4.7.0".into()), "{last}");
    assert!(client.reply().await.is_none(), "closed after 421");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_cost_only_their_own_connection() {
    let dir = TempDir::new("listener-hostile");
    let limits = ListenerLimits {
        command_timeout_ms: 1_500,
        data_timeout_ms: 1_500,
        ..ListenerLimits::default()
    };
    let mut live = start_listener(&dir, &config(&dir, ""), limits).await;
    let addr = live.addr;
    let started = Instant::now();

    // No CRLF at all: 200 KB of one endless command line.
    let no_crlf = tokio::spawn(async move {
        let mut c = Client::connect(addr).await;
        c.reply().await.unwrap();
        c.send(&vec![b'A'; 200_000]).await;
        c.last_reply_before_close().await
    });
    // A 1 MB line inside DATA: refused at the end, the session goes on.
    let huge_line = tokio::spawn(async move {
        let mut c = Client::connect(addr).await;
        c.reply().await.unwrap();
        c.command("EHLO hostile.test").await;
        let body = format!("Subject: x\r\n\r\n{}", "z".repeat(1 << 20));
        let reply = send_message(&mut c, "a@client.test", &["b@remote.test"], &body).await;
        (reply, c.command("NOOP").await)
    });
    // 100,000 RCPTs pipelined in one write.
    let many_rcpts = tokio::spawn(async move {
        let mut c = Client::connect(addr).await;
        c.reply().await.unwrap();
        c.command("EHLO hostile.test").await;
        let mut burst = b"MAIL FROM:<a@client.test>\r\n".to_vec();
        for i in 0..100_000 {
            burst.extend_from_slice(format!("RCPT TO:<u{i}@remote.test>\r\n").as_bytes());
        }
        let (mut read, mut write) = c.stream.into_split();
        let writer = tokio::spawn(async move {
            let _ = write.write_all(&burst).await;
        });
        let mut seen = Vec::new();
        let mut buffer = vec![0u8; 1 << 16];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_secs(20), read.read(&mut buffer)).await
        {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buffer[..n]);
        }
        writer.abort();
        String::from_utf8_lossy(&seen).into_owned()
    });
    // Slowloris: one byte every 300 ms never makes a command within the deadline.
    let slowloris = tokio::spawn(async move {
        let mut c = Client::connect(addr).await;
        c.reply().await.unwrap();
        let at = Instant::now();
        for byte in b"EHLO slow.hostile.test".iter().cycle().take(40) {
            if c.stream.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        (c.last_reply_before_close().await, at.elapsed())
    });
    // Garbage after DATA's end.
    let garbage = tokio::spawn(async move {
        let mut c = Client::connect(addr).await;
        c.reply().await.unwrap();
        c.command("EHLO hostile.test").await;
        let reply = send_message(
            &mut c,
            "a@client.test",
            &["b@remote.test"],
            "Subject: g\r\n\r\nbody",
        )
        .await;
        let junk: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
        c.send(&junk).await;
        (reply, c.last_reply_before_close().await)
    });

    // Meanwhile an honest client is served at once.
    let mut honest = Client::connect(addr).await;
    honest.reply().await.unwrap();
    honest.command("EHLO honest.test").await;
    let reply = send_message(
        &mut honest,
        "a@client.test",
        &["b@remote.test"],
        "Subject: ok\r\n\r\nfine",
    )
    .await;
    assert_eq!(reply.code, 250, "{reply}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let last = no_crlf.await.unwrap().expect("a reply before the close");
    assert_eq!(last.code, 421, "{last}");
    let (reply, noop) = huge_line.await.unwrap();
    assert_eq!(reply.code, 552, "{reply}");
    assert_eq!(noop.code, 250);
    let transcript = many_rcpts.await.unwrap();
    assert!(transcript.contains("452 4.5.3 too many recipients"));
    assert!(
        transcript
            .trim_end()
            .ends_with("421 4.7.0 too many errors, closing connection")
    );
    let (last, elapsed) = slowloris.await.unwrap();
    assert_eq!(last.map(|r| r.status()), Some("4.4.2".into()));
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    let (reply, last) = garbage.await.unwrap();
    assert_eq!(reply.code, 250);
    assert_eq!(last.map(|r| r.code), Some(421));

    // Only the two honest messages were queued; every hostile connection is gone (and the
    // idle honest one too, past its command timeout).
    assert_eq!(live.spool.len(), 2);
    for _ in 0..2 {
        live.accepted.recv().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(live.listener.stats().open, 0);
    assert_eq!(live.listener.stats().connections, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_in_total_and_per_address() {
    let dir = TempDir::new("listener-conns");
    let text = format!("total-max-smtp-in 5\n{}", config(&dir, ""));
    let limits = ListenerLimits {
        connections_per_ip_max: 3,
        ..ListenerLimits::default()
    };
    let live = start_listener(&dir, &text, limits).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(live.addr).await;
        assert_eq!(c.reply().await.unwrap().code, 220);
        held.push(c);
    }
    let mut fourth = Client::connect(live.addr).await;
    let refused = fourth.reply().await.unwrap();
    assert_eq!(
        (refused.code, refused.status()),
        (421, "4.7.0".into()),
        "{refused}"
    );
    assert!(refused.text.contains("from your address"));
    for ip in ["127.0.0.2", "127.0.0.3"] {
        let mut c = Client::connect_from(ip.parse::<IpAddr>().unwrap(), live.addr).await;
        assert_eq!(c.reply().await.unwrap().code, 220);
        held.push(c);
    }
    let mut sixth = Client::connect_from("127.0.0.4".parse().unwrap(), live.addr).await;
    let refused = sixth.reply().await.unwrap();
    assert_eq!(refused.code, 421, "{refused}");
    assert!(refused.text.contains("too many connections"));
    // A closed connection frees its place.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = Client::connect_from("127.0.0.4".parse().unwrap(), live.addr).await;
    assert_eq!(again.reply().await.unwrap().code, 220);
    assert_eq!(live.listener.stats().refused, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_service_no_refuses_at_connection() {
    let dir = TempDir::new("listener-service");
    let blocked = "<source 127.0.0.7>\n    smtp-service no\n</source>\n";
    let live = start_listener(&dir, &config(&dir, blocked), ListenerLimits::default()).await;
    let mut client = Client::connect_from("127.0.0.7".parse().unwrap(), live.addr).await;
    let greeting = client.reply().await.unwrap();
    assert_eq!(
        (greeting.code, greeting.status()),
        (554, "5.7.1".into()),
        "{greeting}"
    );
    assert!(client.reply().await.is_none(), "closed after the refusal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_pipelined_behind_starttls_are_dropped() {
    let dir = TempDir::new("listener-injection");
    let live = start_listener(&dir, &config(&dir, ""), ListenerLimits::default()).await;
    let mut client = Client::connect(live.addr).await;
    client.reply().await.unwrap();
    client.command("EHLO client.test").await;
    // RFC 3207 §5: "MAIL" sent in clear behind STARTTLS must not count after the upgrade.
    client
        .send(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
        .await;
    assert_eq!(client.reply().await.unwrap().code, 220);
    let tls = TlsClient::with_roots(rustls::RootCertStore::empty());
    let mut stream = tls
        .connect(client.stream, "mx.pmta-sim.test", TlsMode::Opportunistic)
        .await
        .expect("handshake");
    stream
        .write_all(b"RCPT TO:<x@remote.test>\r\n")
        .await
        .unwrap();
    let mut buffer = vec![0u8; 4096];
    let n = stream.read(&mut buffer).await.unwrap();
    let text = String::from_utf8_lossy(&buffer[..n]);
    assert!(text.starts_with("503 5.5.1 need MAIL first"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_says_421_to_idle_sessions_and_stops_listening() {
    let dir = TempDir::new("listener-shutdown");
    let live = start_listener(&dir, &config(&dir, ""), ListenerLimits::default()).await;
    let mut idle = Client::connect(live.addr).await;
    idle.reply().await.unwrap();
    idle.command("EHLO client.test").await;
    let addr = live.addr;
    live.listener.shutdown(Duration::from_secs(2)).await;
    let last = idle.last_reply_before_close().await.unwrap();
    assert_eq!((last.code, last.status()), (421, "4.3.2".into()), "{last}");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
