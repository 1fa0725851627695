//! The durable spool: recovery of exactly the unsettled recipients with their queue time,
//! space given back by segments (open messages carried forward), quarantine of damaged
//! records, limits, and crash safety proved by killing a listener process with SIGKILL
//! under load (`examples/live_listener.rs`).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::live::{Client, Daemon, TempDir};
use pmta_sim::driver::live::spool::{
    NewMessage, Outcome, Spool, SpoolError, SpoolLimits, SpoolSync,
};
use pmta_sim::time::Time;

fn message<'a>(recipients: &'a [String], data: &'a [u8], at: u64) -> NewMessage<'a> {
    NewMessage {
        mail_from: "sender@client.test",
        recipients,
        data,
        source_ip: Some("127.0.0.1".parse().unwrap()),
        virtual_mta: Some("vmta1"),
        job_id: "job7",
        env_id: "env7",
        queued_at: Time::from_secs(at),
    }
}

fn open(dir: &Path) -> (Spool, pmta_sim::driver::live::spool::Recovery) {
    Spool::open(dir, SpoolLimits::default(), SpoolSync::default()).expect("spool opens")
}

/// The log's segment files, in order.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    found.sort();
    found
}

#[test]
fn a_restart_requeues_exactly_the_unsettled_recipients_with_their_queue_time() {
    let dir = TempDir::new("spool-recover");
    let path = dir.path().join("spool");
    let three: Vec<String> = ["a@x.test", "b@y.test", "c@z.test"]
        .map(String::from)
        .to_vec();
    let one = vec!["d@x.test".to_string()];
    let (spool, recovery) = open(&path);
    assert!(recovery.messages.is_empty());
    let first = spool
        .store(&message(&three, b"Subject: one\r\n\r\nbody\r\n", 1_000))
        .unwrap();
    let second = spool
        .store(&message(&one, b"Subject: two\r\n\r\nbody\r\n", 2_000))
        .unwrap();
    let third = spool
        .store(&message(&three, b"Subject: three\r\n\r\n", 3_000))
        .unwrap();
    assert_eq!(spool.len(), 3);
    assert_eq!(
        spool.read_data(second).unwrap(),
        b"Subject: two\r\n\r\nbody\r\n"
    );
    assert!(!spool.settle(first, 1, Outcome::Delivered).unwrap());
    assert!(
        !spool.settle(first, 1, Outcome::Delivered).unwrap(),
        "twice is harmless"
    );
    assert!(
        spool.settle(second, 0, Outcome::Bounced).unwrap(),
        "its last recipient"
    );
    for index in 0..3 {
        spool.settle(third, index, Outcome::Delivered).unwrap();
    }
    assert!(matches!(
        spool.settle(first, 3, Outcome::Delivered),
        Err(SpoolError::NoSuchRecipient { .. })
    ));
    assert!(matches!(
        spool.settle(second, 0, Outcome::Delivered),
        Err(SpoolError::Unknown(_))
    ));
    assert!(matches!(
        spool.read_data(second),
        Err(SpoolError::Unknown(_))
    ));
    assert_eq!(spool.len(), 1);
    drop(spool);

    let (spool, recovery) = open(&path);
    assert_eq!(recovery.messages.len(), 1);
    assert_eq!(recovery.settled, 2);
    assert!(recovery.quarantined.is_empty());
    let recovered = &recovery.messages[0];
    assert_eq!(recovered.id, first);
    assert_eq!(recovered.injection.recipients, ["a@x.test", "c@z.test"]);
    assert_eq!(recovered.recipient_indices, [0, 2]);
    assert_eq!(recovered.injection.queued_at, Some(Time::from_secs(1_000)));
    assert_eq!(
        spool.read_data(first).unwrap(),
        b"Subject: one\r\n\r\nbody\r\n"
    );
    assert_eq!(recovered.injection.virtual_mta.as_deref(), Some("vmta1"));
    assert_eq!(recovered.injection.job_id, "job7");
    assert_eq!(
        recovered.injection.source_ip,
        Some("127.0.0.1".parse().unwrap())
    );
    // New ids never reuse old ones, and settling goes on from where it was.
    let fourth = spool.store(&message(&one, b"x", 4_000)).unwrap();
    assert!(fourth > third);
    spool.settle(first, 0, Outcome::Delivered).unwrap();
    assert!(spool.settle(first, 2, Outcome::Bounced).unwrap());
    drop(spool);
    let (_, recovery) = open(&path);
    assert_eq!(recovery.messages.len(), 1);
    assert_eq!(recovery.messages[0].id, fourth);
}

#[test]
fn space_comes_back_by_segments_and_old_open_messages_are_carried_forward() {
    let dir = TempDir::new("spool-collect");
    let path = dir.path().join("spool");
    let limits = SpoolLimits {
        segment_bytes: 64 * 1024,
        ..SpoolLimits::default()
    };
    let (spool, _) = Spool::open(&path, limits, SpoolSync::default()).unwrap();
    let rcpts: Vec<String> = ["a@x.test", "b@x.test"].map(String::from).to_vec();
    let body = vec![b'x'; 4096];
    // One message stays open with one recipient settled; thousands pass through.
    let old = spool.store(&message(&rcpts, &body, 1)).unwrap();
    spool.settle(old, 0, Outcome::Delivered).unwrap();
    for i in 0..400 {
        let id = spool.store(&message(&rcpts, &body, 2 + i)).unwrap();
        spool.settle(id, 0, Outcome::Delivered).unwrap();
        spool.settle(id, 1, Outcome::Bounced).unwrap();
    }
    spool.flush();
    assert_eq!(spool.len(), 1);
    // 1.6 MB went through 64 KiB segments; the log keeps about twice what is open, plus
    // two segments.
    assert!(
        spool.disk_bytes() < 4 * 64 * 1024,
        "{} bytes on disk",
        spool.disk_bytes()
    );
    assert!(segments(&path).len() <= 4, "{:?}", segments(&path));
    assert_eq!(spool.read_data(old).unwrap(), body);
    drop(spool);
    let (spool, recovery) = Spool::open(&path, limits, SpoolSync::default()).unwrap();
    assert!(recovery.quarantined.is_empty());
    assert_eq!(recovery.messages.len(), 1);
    let recovered = &recovery.messages[0];
    assert_eq!(
        (recovered.id, recovered.recipient_indices.clone()),
        (old, vec![1])
    );
    assert_eq!(recovered.injection.queued_at, Some(Time::from_secs(1)));
    assert_eq!(spool.read_data(old).unwrap(), body);
}

#[test]
fn damaged_records_are_quarantined_and_the_rest_recovers() {
    let dir = TempDir::new("spool-damage");
    let path = dir.path().join("spool");
    let rcpts: Vec<String> = ["a@x.test", "b@x.test"].map(String::from).to_vec();
    let (spool, _) = open(&path);
    let ids: Vec<_> = (0..4)
        .map(|i| {
            spool
                .store(&message(
                    &rcpts,
                    format!("Subject: {i}\r\n\r\n{}", "y".repeat(200)).as_bytes(),
                    i,
                ))
                .unwrap()
        })
        .collect();
    spool.settle(ids[3], 0, Outcome::Delivered).unwrap();
    drop(spool);
    let log = segments(&path);
    assert_eq!(log.len(), 1);
    let mut bytes = std::fs::read(&log[0]).unwrap();
    // A flipped byte in the first message's data, and a write cut short at the end.
    let first_data = bytes.windows(10).position(|w| w == b"Subject: 0").unwrap();
    bytes[first_data + 20] ^= 0x55;
    bytes.extend_from_slice(b"PSR2M\x40\x00\x00\x00partial");
    std::fs::write(&log[0], &bytes).unwrap();
    std::fs::write(path.join("log/notes.txt"), b"hello").unwrap();

    let (spool, recovery) = open(&path);
    let reasons: Vec<String> = recovery.quarantined.iter().map(|q| q.to_string()).collect();
    assert_eq!(reasons.len(), 2, "{reasons:#?}");
    assert!(
        reasons.iter().any(|r| r.contains("checksum mismatch")
            && r.starts_with("spool: quarantined a damaged record of ")),
        "{reasons:#?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("not a spool file name")),
        "{reasons:#?}"
    );
    assert_eq!(recovery.unfinished_bytes, 16);
    let recovered: Vec<_> = recovery
        .messages
        .iter()
        .map(|m| (m.id, m.recipient_indices.clone()))
        .collect();
    assert_eq!(
        recovered,
        [
            (ids[1], vec![0, 1]),
            (ids[2], vec![0, 1]),
            (ids[3], vec![1])
        ]
    );
    assert_eq!(spool.len(), 3);
    let quarantine: Vec<_> = std::fs::read_dir(path.join("quarantine"))
        .unwrap()
        .collect();
    assert_eq!(quarantine.len(), 2);
    drop(spool);
    // The damaged segment was rewritten without the damage: the next start finds none.
    let (spool, recovery) = open(&path);
    assert!(
        recovery.quarantined.is_empty(),
        "{:?}",
        recovery.quarantined
    );
    assert_eq!(recovery.messages.len(), 3);
    assert_eq!(
        spool.read_data(ids[3]).unwrap(),
        format!("Subject: 3\r\n\r\n{}", "y".repeat(200)).as_bytes()
    );
}

#[test]
fn the_spool_is_bounded() {
    let dir = TempDir::new("spool-limits");
    let limits = SpoolLimits {
        messages_max: 2,
        bytes_max: 1 << 20,
        ..SpoolLimits::default()
    };
    let (spool, _) = Spool::open(&dir.path().join("spool"), limits, SpoolSync::default()).unwrap();
    let rcpt = vec!["a@x.test".to_string()];
    let first = spool.store(&message(&rcpt, b"one", 1)).unwrap();
    spool.store(&message(&rcpt, b"two", 2)).unwrap();
    assert!(!spool.has_room(0));
    assert!(matches!(
        spool.store(&message(&rcpt, b"three", 3)),
        Err(SpoolError::Full(_))
    ));
    spool.settle(first, 0, Outcome::Delivered).unwrap();
    assert!(spool.has_room(0));
    let big = vec![b'x'; 2 << 20];
    assert!(matches!(
        spool.store(&message(&rcpt, &big, 4)),
        Err(SpoolError::Full(_))
    ));
    // A directory that is not a spool is refused rather than filled.
    let other = TempDir::new("spool-not");
    other.write("precious.txt", "keep me");
    assert!(matches!(
        Spool::open(other.path(), SpoolLimits::default(), SpoolSync::default()),
        Err(SpoolError::NotASpool(_))
    ));
    // So is a spool of another format.
    let old = TempDir::new("spool-format1");
    old.write("pmta-sim-spool", "pmta-sim spool, format 1\n");
    assert!(matches!(
        Spool::open(old.path(), SpoolLimits::default(), SpoolSync::default()),
        Err(SpoolError::OtherFormat(..))
    ));
}

fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/live_listener");
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds it (or `cargo build --examples`)",
        path.display()
    );
    path
}

/// Starts the listener process on `spool`; its address and the recovered count it printed.
fn start_child(config: &Path, spool: &Path) -> (Daemon, std::net::SocketAddr, usize) {
    let mut child = Daemon::spawn(
        Command::new(example_binary())
            .arg(config)
            .args([
                "--spool",
                spool.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::piped()),
    );
    let stdout = child.0.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let recovered: usize = lines
        .next()
        .unwrap()
        .unwrap()
        .strip_prefix("recovered ")
        .and_then(|l| l.strip_suffix(" messages"))
        .unwrap()
        .parse()
        .unwrap();
    let addr = lines
        .next()
        .unwrap()
        .unwrap()
        .strip_prefix("listening on ")
        .unwrap()
        .parse()
        .unwrap();
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr, recovered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_message() {
    let dir = TempDir::new("spool-crash");
    let config = dir.write(
        "pmta.conf",
        "<source 127.0.0.1>\n    always-allow-relaying yes\n</source>\n\
         <virtual-mta vmta1>\n    smtp-source-host 127.0.0.1 mta1.test\n</virtual-mta>\n\
         default-virtual-mta vmta1\n",
    );
    let spool_dir = dir.path().join("spool");
    let (mut child, addr, recovered) = start_child(&config, &spool_dir);
    assert_eq!(recovered, 0);

    // Eight clients send as fast as the listener acknowledges; each acknowledged token is
    // recorded the moment its 250 arrives.
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut clients = Vec::new();
    for client_index in 0..8 {
        let acked = acked.clone();
        clients.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            client.reply().await;
            client.command("EHLO load.test").await;
            for n in 0..100_000 {
                let token = format!("crash-{client_index}-{n}");
                let body = format!(
                    "Subject: {token}\r\nX-Token: {token}\r\n\r\n{}",
                    format!("{}\r\n", "x".repeat(76)).repeat(26)
                );
                let mail = client.command("MAIL FROM:<load@client.test>").await;
                if mail.code != 250 {
                    return;
                }
                client.send(b"RCPT TO:<r@remote.test>\r\nDATA\r\n").await;
                let (Some(_), Some(_)) = (client.reply().await, client.reply().await) else {
                    return;
                };
                client.send(format!("{body}\r\n.\r\n").as_bytes()).await;
                match client.reply().await {
                    Some(reply) if reply.code == 250 => {
                        acked.lock().unwrap().insert(token);
                    }
                    _ => return,
                }
            }
        }));
    }
    let started = Instant::now();
    while acked.lock().unwrap().len() < 300 && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SIGKILL: no chance to flush or clean up.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    for client in clients {
        let _ = tokio::time::timeout(Duration::from_secs(30), client).await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300, "only {} acknowledged", acked.len());

    let (spool, recovery) = open(&spool_dir);
    assert!(
        recovery.quarantined.is_empty(),
        "{:?}",
        recovery.quarantined
    );
    let tokens: BTreeSet<String> = recovery
        .messages
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(&spool.read_data(m.id).unwrap()).into_owned();
            let line = text
                .lines()
                .find(|l| l.starts_with("X-Token: "))
                .expect("token");
            line["X-Token: ".len()..].to_string()
        })
        .collect();
    let lost: Vec<_> = acked.difference(&tokens).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    // Stored but not acknowledged (the 250 was in flight): at most one per client.
    let extra = tokens.len() - acked.len();
    assert!(extra <= 8, "{extra} unacknowledged messages recovered");
    assert_eq!(
        tokens.len(),
        recovery.messages.len(),
        "no message recovered twice"
    );
    println!(
        "acknowledged {}, recovered {}, unacknowledged but kept {extra}",
        acked.len(),
        tokens.len()
    );
    drop(spool);

    // The killed process's spool serves a new one.
    let (_child, _, recovered) = start_child(&config, &spool_dir);
    assert_eq!(recovered, tokens.len());
}
