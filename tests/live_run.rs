//! `pmta-sim run --live` as a process against real receivers: Postfix's smtp-sink, a
//! private Postfix that greylists through postgrey, and the aiosmtpd receiver that fails on
//! demand (`tests/live/receiver.py`). Mail comes in over SMTP, is delivered over real TCP
//! from the virtual MTA's source IP, and every outcome is read back from the `<acct-file>`
//! and from what the receivers saw. Loopback only; `scripts/lab.sh install` provides the
//! software.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pmta_sim::engine::accounting::{AcctRecord, RecordType};
use pmta_sim::scenario::ConfigSource;
use pmta_sim::time::Time;

use common::live::{
    Client, LiveProcess, Postfix, TempDir, free_port, postgrey, received, receiver, receiver_at,
    send_message, smtp_sink, stats, test_cert, wait_for_port,
};

/// The rows of an accounting file (header first).
fn acct(path: &Path) -> Vec<csv::StringRecord> {
    match std::fs::read(path) {
        Ok(bytes) => csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(&bytes[..])
            .records()
            .map(|r| r.unwrap())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Rows of type `kind` (header column `type`).
fn rows(path: &Path, kind: &str) -> Vec<csv::StringRecord> {
    acct(path).into_iter().filter(|r| &r[0] == kind).collect()
}

/// Seconds since the epoch of an accounting time, `2026-09-21 12:00:00+0000`.
fn seconds(text: &str) -> i64 {
    let rfc3339 = format!("{}T{}Z", &text[..10], &text[11..19]);
    pmta_sim::scenario::parse_utc(&rfc3339).unwrap_or_else(|| panic!("time {text}")) as i64
}

/// Waits until `done` holds, up to `limit`.
async fn wait_until(
    live: &LiveProcess,
    limit: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < limit,
            "timed out waiting for {what}; pmta-sim said:\n{}",
            live.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A live configuration: listens on `listen`, spools in `dir/spool`, writes `dir/acct.csv`
/// (every record type), lets 127.0.0.1 relay through virtual MTA `mta1` at 127.0.0.2, and
/// appends `extra`.
fn config(dir: &TempDir, listen: u16, extra: &str) -> PathBuf {
    config_with(
        dir,
        listen,
        &format!(
            "<source 0/0>
    always-allow-relaying no
</source>
<virtual-mta mta1>
    smtp-source-host 127.0.0.2 mta1.pmta.lab.test
</virtual-mta>
{extra}"
        ),
    )
}

/// The listener, spool, accounting file and relaying source of [`config`], then `body`.
fn config_with(dir: &TempDir, listen: u16, body: &str) -> PathBuf {
    let root = dir.path().display();
    dir.write(
        "pmta.conf",
        &format!(
            "host-name pmta.lab.test
smtp-listener 127.0.0.1:{listen}
spool {root}/spool
<acct-file {root}/acct.csv>
    records d,b,t,tq
</acct-file>
<source 127.0.0.1>
    always-allow-relaying yes
    default-virtual-mta mta1
</source>
{body}"
        ),
    )
}

fn route(domain: &str, addr: SocketAddr) -> String {
    format!("--route={domain}={addr}")
}

/// Sends `count` messages to `to(i)` over one connection to the live listener; the test id
/// of each message acknowledged with a 250.
async fn inject(addr: SocketAddr, count: usize, to: impl Fn(usize) -> String) -> Vec<String> {
    let mut client = Client::connect(addr).await;
    assert_eq!(client.reply().await.unwrap().code, 220);
    assert_eq!(client.command("EHLO client.lab.test").await.code, 250);
    let mut acknowledged = Vec::new();
    for i in 0..count {
        let id = format!("m{i}");
        let body = format!(
            "From: sender@news.example.com\r\nTo: {}\r\nSubject: test {i}\r\nX-Test-Id: {id}\r\n\r\nHello {i}.",
            to(i)
        );
        let reply = send_message(&mut client, "sender@news.example.com", &[&to(i)], &body).await;
        assert_eq!(reply.code, 250, "{reply}");
        acknowledged.push(id);
    }
    client.command("QUIT").await;
    acknowledged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_to_smtp_sink_signed_from_the_source_ip_and_stops_cleanly() {
    let dir = TempDir::new("live-sink");
    let dump = dir.path().join("dump");
    let (_sink, sink) = smtp_sink(&dump).await;
    let key = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios/configs/production/keys/s2026.news.example.com.pem");
    let listen = free_port();
    let conf = config(
        &dir,
        listen,
        &format!(
            "domain-key s2026,news.example.com,{}\n<domain sink.lab.test>\n    dkim-sign yes\n    max-smtp-out 2\n</domain>\n",
            key.display()
        ),
    );
    let live = LiveProcess::start(&conf, &[route("sink.lab.test", sink)]);
    let started = pmta_sim::driver::live::wall_clock();
    let acknowledged = inject(live.addr, 20, |i| format!("user{i}@sink.lab.test")).await;
    assert_eq!(acknowledged.len(), 20);
    let acct_file = dir.path().join("acct.csv");
    wait_until(&live, Duration::from_secs(30), "20 d records", || {
        rows(&acct_file, "d").len() == 20
    })
    .await;
    let header = &acct(&acct_file)[0];
    assert_eq!(&header[0], "type");
    for row in rows(&acct_file, "d") {
        assert_eq!(&row[14], "127.0.0.2", "dlvSourceIp: {row:?}");
        assert_eq!(&row[18], "mta1", "vmta: {row:?}");
        assert_eq!(&row[21], "sink.lab.test/mta1", "queue: {row:?}");
        assert!(row[8].starts_with("smtp;250"), "dsnDiag: {row:?}");
    }
    // What smtp-sink received is signed, with t= the real time.
    let files: Vec<_> = std::fs::read_dir(&dump)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!files.is_empty(), "smtp-sink dumped nothing");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("DKIM-Signature:"), "{text}");
    assert!(text.contains("d=news.example.com"), "{text}");
    let t: u64 = text
        .split("t=")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .and_then(|v| v.trim().parse().ok())
        .expect("t= in the signature");
    assert!(
        t.abs_diff(started.unix_secs()) < 60,
        "t={t}, started {}",
        started.unix_secs()
    );
    let (status, log) = live.stop();
    assert_eq!(status, 0, "{log}");
    assert!(log.contains("stopping"), "{log}");
    assert!(
        log.contains(
            "20 accepted, 20 recipients delivered, 0 bounced; 0 messages left in the spool"
        ),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_bounces_with_a_b_record_and_the_rest_is_delivered() {
    let dir = TempDir::new("live-bounce");
    let (_receiver, addr) = receiver(&dir, &["--reject-prefix", "nouser"]);
    wait_for_port(addr).await;
    let listen = free_port();
    let conf = config(&dir, listen, "");
    let live = LiveProcess::start(&conf, &[route("rcv.lab.test", addr)]);
    inject(live.addr, 4, |i| {
        if i % 2 == 0 {
            format!("nouser{i}@rcv.lab.test")
        } else {
            format!("user{i}@rcv.lab.test")
        }
    })
    .await;
    let acct_file = dir.path().join("acct.csv");
    wait_until(
        &live,
        Duration::from_secs(30),
        "2 d and 2 b records",
        || rows(&acct_file, "d").len() == 2 && rows(&acct_file, "b").len() == 2,
    )
    .await;
    for row in rows(&acct_file, "b") {
        assert!(row[4].starts_with("nouser"), "{row:?}");
        assert_eq!(&row[6], "failed", "dsnAction: {row:?}");
        assert_eq!(&row[7], "5.1.1", "dsnStatus: {row:?}");
        assert!(row[8].contains("550 5.1.1"), "dsnDiag: {row:?}");
        assert_eq!(&row[10], "bad-mailbox", "bounceCat: {row:?}");
    }
    assert_eq!(stats(&dir)["rejected_rcpts"], 2);
    assert_eq!(stats(&dir)["accepted"], 2);
    let (status, log) = live.stop();
    assert_eq!(status, 0, "{log}");
    assert!(
        log.contains("2 recipients delivered, 2 bounced; 0 messages left"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_relay_probe_gets_550_and_nothing_is_queued() {
    let dir = TempDir::new("live-relay");
    let listen = free_port();
    let conf = config(&dir, listen, "");
    let live = LiveProcess::start(&conf, &[]);
    // 127.0.0.9 falls in `<source 0/0>`: no relaying.
    let mut probe = Client::connect_from("127.0.0.9".parse().unwrap(), live.addr).await;
    assert_eq!(probe.reply().await.unwrap().code, 220);
    assert_eq!(probe.command("EHLO probe.example").await.code, 250);
    assert_eq!(
        probe.command("MAIL FROM:<spam@probe.example>").await.code,
        250
    );
    let rcpt = probe.command("RCPT TO:<victim@elsewhere.example>").await;
    assert_eq!(rcpt.code, 550, "{rcpt}");
    assert_eq!(rcpt.enhanced, Some([5, 7, 1]), "{rcpt}");
    assert_eq!(probe.command("DATA").await.code / 100, 5);
    probe.command("QUIT").await;
    let (status, log) = live.stop();
    assert_eq!(status, 0, "{log}");
    assert!(log.contains(" 0 accepted,"), "{log}");
    assert!(log.contains("0 messages left in the spool"), "{log}");
    assert!(rows(&dir.path().join("acct.csv"), "d").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_smtp_out_and_max_msg_rate_hold_at_the_receiver() {
    let dir = TempDir::new("live-limits");
    let (_receiver, addr) = receiver(&dir, &[]);
    wait_for_port(addr).await;
    let listen = free_port();
    let conf = config(
        &dir,
        listen,
        "<domain rcv.lab.test>\n    max-smtp-out 2\n    max-msg-rate 10/s\n</domain>\n",
    );
    let live = LiveProcess::start(&conf, &[route("rcv.lab.test", addr)]);
    inject(live.addr, 50, |i| format!("user{i}@rcv.lab.test")).await;
    wait_until(
        &live,
        Duration::from_secs(60),
        "50 messages at the receiver",
        || received(&dir).len() == 50,
    )
    .await;
    let s = stats(&dir);
    assert!(
        s["max_open"].as_u64().unwrap() <= 2,
        "max-smtp-out 2, the receiver saw {} at once",
        s["max_open"]
    );
    let times: Vec<f64> = received(&dir).iter().map(|(_, at)| *at).collect();
    let span = times.last().unwrap() - times.first().unwrap();
    // 50 messages at 10 per second: at least 4 seconds from the first to the last.
    assert!(
        span >= 3.9,
        "50 messages in {span:.2} s at max-msg-rate 10/s"
    );
    // A sliding window of 10 per second: the 11th message after any message comes at
    // least a second after it, as the engine counts (at the transaction's start). The
    // receiver logs at the end of data, up to a few hundred milliseconds later under load.
    for pair in times.windows(11) {
        let gap = pair[10] - pair[0];
        assert!(gap >= 0.7, "11 messages within {gap:.3} s: {times:?}");
    }
    let (status, log) = live.stop();
    assert_eq!(status, 0, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_421_storm_puts_the_queue_into_backoff_and_out_again() {
    let dir = TempDir::new("live-storm");
    // After 5 messages, 421 at MAIL for 3 seconds, then 5 more, and so on.
    let (_receiver, addr) = receiver(&dir, &["--fail-after", "5", "--fail-for", "3"]);
    wait_for_port(addr).await;
    let listen = free_port();
    let conf = config(
        &dir,
        listen,
        "<smtp-pattern-list storms>
    reply /421 4\\.7\\.0 Too many messages/ mode=backoff
</smtp-pattern-list>
<domain rcv.lab.test>
    max-smtp-out 1
    backoff-max-smtp-out 1
    smtp-pattern-list storms
    retry-recipients-after 1s
    retry-after 1s
    backoff-retry-after 1s
    backoff-max-msg-rate 2/s
    backoff-to-normal-after 4s
</domain>
",
    );
    let live = LiveProcess::start(&conf, &[route("rcv.lab.test", addr)]);
    inject(live.addr, 12, |i| format!("user{i}@rcv.lab.test")).await;
    let acct_file = dir.path().join("acct.csv");
    wait_until(&live, Duration::from_secs(90), "12 d records", || {
        rows(&acct_file, "d").len() == 12
    })
    .await;
    let log = live.stderr();
    let backoff = log
        .find("queue rcv.lab.test/mta1: backoff mode")
        .unwrap_or_else(|| panic!("no backoff:\n{log}"));
    let normal = log[backoff..]
        .find("queue rcv.lab.test/mta1: normal mode")
        .unwrap_or_else(|| panic!("never back to normal:\n{log}"));
    assert!(normal > 0);
    assert!(stats(&dir)["fail_after_421"].as_u64().unwrap() >= 1);
    // The 421s were deferrals (t or tq records), not bounces.
    assert!(rows(&acct_file, "b").is_empty());
    assert!(!rows(&acct_file, "t").is_empty() || !rows(&acct_file, "tq").is_empty());
    let (status, log) = live.stop();
    assert_eq!(status, 0, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greylisted_by_postgrey_then_delivered_after_the_retry_interval() {
    let dir = TempDir::new("live-grey");
    // postgrey asks for 3 seconds; the queue retries deferred recipients every 4.
    let (_postgrey, policy_port) = postgrey(&dir, 3).await;
    let port = free_port();
    let _postfix = Postfix::start(
        &dir.path().join("postfix"),
        port,
        &["--discard", "--policy", &format!("127.0.0.1:{policy_port}")],
    );
    let listen = free_port();
    let conf = config(
        &dir,
        listen,
        "<domain grey.lab.test>\n    retry-recipients-after 4s\n</domain>\n",
    );
    let live = LiveProcess::start(
        &conf,
        &[route(
            "grey.lab.test",
            SocketAddr::from(([127, 0, 0, 1], port)),
        )],
    );
    inject(live.addr, 3, |i| format!("user{i}@grey.lab.test")).await;
    let acct_file = dir.path().join("acct.csv");
    wait_until(&live, Duration::from_secs(60), "3 d records", || {
        rows(&acct_file, "d").len() == 3
    })
    .await;
    let deferred = rows(&acct_file, "t");
    assert!(deferred.len() >= 3, "{deferred:?}");
    for row in &deferred {
        assert!(row[8].contains("450 4.2.0"), "{row:?}");
        assert!(row[8].contains("Greylisted"), "{row:?}");
    }
    // Each recipient: greylisted first, delivered no sooner than the retry interval after.
    for row in rows(&acct_file, "d") {
        let first_t = deferred
            .iter()
            .find(|t| t[4] == row[4])
            .unwrap_or_else(|| panic!("{} delivered without being greylisted", &row[4]));
        let (t, d) = (seconds(&first_t[1]), seconds(&row[1]));
        // Record times are whole seconds: 4 s of interval shows as at least 3.
        assert!(
            d - t >= 3,
            "{}: greylisted at {}, delivered at {}",
            &row[4],
            &first_t[1],
            &row[1]
        );
    }
    let (status, log) = live.stop();
    assert_eq!(status, 0, "{log}");
}

/// `--stop-grace`: a stop waits that long for a transaction that does not finish (a mail
/// host that never answers its greeting), then closes it and exits cleanly; a bad value is
/// refused before anything starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stop_grace_bounds_how_long_a_stop_waits() {
    let dir = TempDir::new("live-grace");
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = held.clone();
    std::thread::spawn(move || {
        for stream in silent.incoming().map_while(Result::ok) {
            holder.lock().unwrap().push(stream);
        }
    });
    let listen = free_port();
    let conf = config(&dir, listen, "");
    let bad = Command::new(env!("CARGO_BIN_EXE_pmta-sim"))
        .args(["run", "--live"])
        .arg(&conf)
        .arg("--stop-grace=soon")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("error: --stop-grace: expected a time interval"),
        "{stderr}"
    );

    let live = LiveProcess::start(
        &conf,
        &[
            route("silent.lab.test", silent_addr),
            "--stop-grace=1s".into(),
        ],
    );
    inject(live.addr, 1, |_| "user@silent.lab.test".into()).await;
    let started = Instant::now();
    while held.lock().unwrap().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{}",
            live.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = Instant::now();
    let (status, log) = live.stop();
    let took = stopping.elapsed();
    assert_eq!(status, 0, "{log}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "stopped after {took:?}:\n{log}"
    );
    assert!(log.contains("still open at the deadline, closed"), "{log}");
    assert!(log.contains("1 messages left in the spool"), "{log}");
}

/// Nearest-rank percentile `p` (0..=100) of `values` (sorted here).
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank - 1]
}

/// The deferrals among `records`: `t` and `tq`.
fn deferrals(records: &[AcctRecord]) -> usize {
    records
        .iter()
        .filter(|r| {
            matches!(
                r.record_type,
                RecordType::Transient | RecordType::TransientQueue
            )
        })
        .count()
}

/// An accounting row of the live file as the engine's record (the checkers' input).
fn record_of(row: &csv::StringRecord) -> AcctRecord {
    let kind = RecordType::ALL
        .into_iter()
        .find(|t| t.code() == &row[0])
        .unwrap_or_else(|| panic!("record type {row:?}"));
    let time = |text: &str| Time::from_secs(seconds(text) as u64);
    AcctRecord {
        record_type: kind,
        time_logged: time(&row[1]),
        time_queued: time(&row[2]),
        orig: row[3].into(),
        rcpt: row[4].into(),
        orcpt: row[5].into(),
        dsn_status: row[7].into(),
        dsn_diag: row[8].into(),
        dsn_mta: row[9].into(),
        bounce_category: row[10].into(),
        src_type: row[11].into(),
        src_mta: row[12].into(),
        dlv_type: row[13].into(),
        dlv_source_ip: row[14].into(),
        dlv_destination_ip: row[15].into(),
        dlv_esmtp_available: row[16].into(),
        dlv_size: row[17].parse().unwrap_or(0),
        vmta: row[18].into(),
        job_id: row[19].into(),
        env_id: row[20].into(),
        queue: row[21].into(),
        vmta_pool: row[22].into(),
        phase: None,
    }
}

/// The proof that live and simulated are one engine: `tests/live/twin.toml` run in the
/// simulator against its `lab-receiver` model and live against the receiver that model
/// describes (aiosmtpd asking a real postgrey, started with the model's values) agree
/// within 5 % on delivered and deferred counts and on the delivery-time percentiles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_and_simulated_agree_on_the_lab_receiver() {
    let scenario =
        pmta_sim::driver::load_scenario(&common::fixture("tests/live/twin.toml")).unwrap();
    let spec = &scenario.isps[0];
    let grey = spec.greylist.clone().expect("the model greylists");
    let pause = spec.pause.clone().expect("the model pauses");
    let domain = spec.domains[0].clone();
    let messages = scenario.workloads[0].messages as usize;

    // Simulated (turmoil runs its own runtime: on a thread of its own).
    let sim =
        std::thread::scope(|scope| scope.spawn(|| common::runs::run(&scenario)).join().unwrap());
    let sim_delivered: Vec<&AcctRecord> = sim
        .records
        .iter()
        .filter(|r| r.record_type == RecordType::Delivered)
        .collect();
    let sim_deferred = deferrals(&sim.records);
    let sim_latency_s: Vec<f64> = sim_delivered
        .iter()
        .map(|r| r.time_logged.since(r.time_queued) as f64 / 1000.0)
        .collect();

    // Live: the same receiver, the same configuration.
    let dir = TempDir::new("live-twin");
    let (_postgrey, policy_port) = postgrey(&dir, grey.delay_s as u32).await;
    let (_receiver, addr) = receiver(
        &dir,
        &[
            "--policy",
            &format!("127.0.0.1:{policy_port}"),
            "--fail-after",
            &pause.after_messages.to_string(),
            "--fail-for",
            &pause.duration_s.to_string(),
        ],
    );
    wait_for_port(addr).await;
    let ConfigSource::Inline(inline) = &scenario.config else {
        panic!("the twin's configuration is inline");
    };
    // The simulated sender's documentation address is a loopback one here.
    let inline = inline.replace("smtp-source-host 192.0.2.16", "smtp-source-host 127.0.0.2");
    let conf = config_with(&dir, free_port(), &inline);
    let live = LiveProcess::start(&conf, &[route(&domain, addr)]);
    // One message per recipient, as the workload sends them; each one's queue time is
    // when its 250 came back.
    let mut client = Client::connect(live.addr).await;
    assert_eq!(client.reply().await.unwrap().code, 220);
    assert_eq!(client.command("EHLO client.lab.test").await.code, 250);
    let mut queued = std::collections::BTreeMap::new();
    for i in 0..messages {
        let id = format!("m{i}");
        let to = format!("user{i}@{domain}");
        let body = format!(
            "From: sender@news.example.com\r\nTo: {to}\r\nSubject: twin {i}\r\nX-Test-Id: {id}\r\n\r\nHello {i}."
        );
        let reply = send_message(&mut client, "sender@news.example.com", &[&to], &body).await;
        assert_eq!(reply.code, 250, "{reply}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        queued.insert(id, now);
    }
    client.command("QUIT").await;
    let acct_file = dir.path().join("acct.csv");
    wait_until(
        &live,
        Duration::from_secs(50),
        "every message delivered",
        || rows(&acct_file, "d").len() == messages,
    )
    .await;
    let (status, log) = live.stop();
    assert_eq!(status, 0, "{log}");

    let live_records: Vec<AcctRecord> = acct(&acct_file).iter().skip(1).map(record_of).collect();
    let live_deferred = deferrals(&live_records);
    let live_latency_s: Vec<f64> = received(&dir)
        .iter()
        .map(|(id, at)| at - queued[id])
        .collect();
    // The engine's whole-run check on the live run's records: every recipient injected
    // ends in exactly one d or b record, none is left.
    let injected: Vec<(String, String)> = (0..messages)
        .map(|i| (String::new(), format!("user{i}@{domain}")))
        .collect();
    common::checkers::each_recipient_settles_once(&common::checkers::RunView {
        records: &live_records,
        events: &[],
        injected: &injected,
        pending: 0,
        queues: Vec::new(),
        conns: Vec::new(),
    });
    // Both receivers did what the model says: greylisted every recipient once, paused.
    let counts = stats(&dir);
    assert_eq!(
        counts["greylisted"].as_u64(),
        Some(messages as u64),
        "{counts}"
    );
    assert!(counts["fail_after_421"].as_u64().unwrap() >= 1, "{counts}");

    let within = |what: &str, live: f64, sim: f64| {
        assert!(
            (live - sim).abs() <= 0.05 * live.max(sim),
            "{what}: live {live:.3}, simulated {sim:.3} (more than 5 % apart)\nlive latencies {live_latency_s:?}\nsimulated {sim_latency_s:?}\n{log}"
        );
    };
    let summary = format!(
        "delivered {}/{}, deferred {live_deferred}/{sim_deferred}, p50 {:.3}/{:.3}, p90 {:.3}/{:.3}, max {:.3}/{:.3} (live/simulated)",
        live_latency_s.len(),
        sim_delivered.len(),
        percentile(&live_latency_s, 50.0),
        percentile(&sim_latency_s, 50.0),
        percentile(&live_latency_s, 90.0),
        percentile(&sim_latency_s, 90.0),
        percentile(&live_latency_s, 100.0),
        percentile(&sim_latency_s, 100.0),
    );
    eprintln!("twin: {summary}");
    within(
        "delivered",
        live_latency_s.len() as f64,
        sim_delivered.len() as f64,
    );
    assert_eq!(sim_delivered.len(), messages, "{summary}");
    within("deferred", live_deferred as f64, sim_deferred as f64);
    for p in [50.0, 90.0, 100.0] {
        within(
            &format!("p{p} delivery time"),
            percentile(&live_latency_s, p),
            percentile(&sim_latency_s, p),
        );
    }
}

/// Sends `count` messages, one connection each, `parallel` at a time, and returns the test
/// ids acknowledged with a 250 (a connection cut by the kill acknowledges nothing, and its
/// client stops there).
async fn inject_until_cut(addr: SocketAddr, count: usize, parallel: usize) -> Vec<String> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let next = next.clone();
        let acknowledged = acknowledged.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    return;
                }
                match one_message(addr, i).await {
                    Some(id) => acknowledged.lock().unwrap().push(id),
                    // The server is gone (the kill): this client stops.
                    None => return,
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(acknowledged).unwrap().into_inner().unwrap()
}

/// One message over its own connection; `None` unless it got a 250 at the end of data.
async fn one_message(addr: SocketAddr, i: usize) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let id = format!("k{i}");
    let script = format!(
        "EHLO client.lab.test\r\nMAIL FROM:<s@news.example.com>\r\nRCPT TO:<u{i}@rcv.lab.test>\r\nDATA\r\n"
    );
    stream.write_all(script.as_bytes()).await.ok()?;
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    // Greeting, EHLO, MAIL, RCPT, DATA (354).
    while !String::from_utf8_lossy(&seen).contains("\r\n354 ") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        seen.extend_from_slice(&buffer[..n]);
    }
    let body = format!(
        "Subject: crash {i}\r\nX-Test-Id: {id}\r\n\r\n{}\r\n.\r\n",
        format!("{}\r\n", "x".repeat(70)).repeat(20)
    );
    stream.write_all(body.as_bytes()).await.ok()?;
    let mut reply = Vec::new();
    while !reply.ends_with(b"\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        reply.extend_from_slice(&buffer[..n]);
    }
    reply.starts_with(b"250").then_some(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_then_restart_delivers_every_acknowledged_message() {
    let dir = TempDir::new("live-crash");
    let (_receiver, addr) = receiver(&dir, &[]);
    wait_for_port(addr).await;
    let listen = free_port();
    // A slow queue, so the kill finds messages spooled and not yet delivered, and more mail
    // than the clients can send before it (the kill comes after 100 deliveries, at least
    // five seconds in; a quiet machine acknowledged 5,000 messages sooner than that).
    let conf = config(
        &dir,
        listen,
        "<domain rcv.lab.test>\n    max-smtp-out 2\n    max-msg-rate 20/s\n</domain>\n",
    );
    let args = [route("rcv.lab.test", addr)];
    let live = LiveProcess::start(&conf, &args);
    let count = 200_000;
    let sending = tokio::spawn(inject_until_cut(live.addr, count, 8));
    wait_until(&live, Duration::from_secs(60), "100 deliveries", || {
        received(&dir).len() >= 100
    })
    .await;
    live.signal("KILL");
    let acknowledged = sending.await.unwrap();
    let before = received(&dir).len();
    assert!(
        acknowledged.len() > before && acknowledged.len() < count,
        "the kill should come while clients send and the queue is behind: {} of {count} acknowledged, {before} delivered",
        acknowledged.len()
    );
    drop(live);
    // Restart on the same spool, without the rate limit: the rest goes out.
    let conf = config(&dir, listen, "");
    let live = LiveProcess::start(&conf, &args);
    let log = live.stderr();
    assert!(!log.contains("recovered 0 messages"), "{log}");
    wait_until(
        &live,
        Duration::from_secs(120),
        "every acknowledged message",
        || {
            let got: std::collections::BTreeSet<String> =
                received(&dir).into_iter().map(|(id, _)| id).collect();
            acknowledged.iter().all(|id| got.contains(id))
        },
    )
    .await;
    let all = received(&dir);
    let distinct: std::collections::BTreeSet<&str> =
        all.iter().map(|(id, _)| id.as_str()).collect();
    let duplicates = all.len() - distinct.len();
    // At least once: duplicates are the deliveries in flight at the kill, reported.
    println!(
        "sigkill: {} acknowledged, {} delivered before the kill, {} deliveries in all, {duplicates} duplicates",
        acknowledged.len(),
        before,
        all.len()
    );
    assert!(
        duplicates <= 16,
        "{duplicates} duplicates: more than the transactions in flight"
    );
    let (status, log) = live.stop();
    assert_eq!(status, 0, "{log}");
    assert!(log.contains("0 messages left in the spool"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_lookups_through_dnsmasq_in_preference_order_and_starttls_to_the_receiver() {
    let dir = TempDir::new("live-dns");
    // The preferred MX refuses connections (nothing on 127.0.1.10:25); the second is the
    // receiver, with STARTTLS; implicit.lab.test has no MX, only an address.
    let dns_port = free_port();
    let _dnsmasq = common::live::dnsmasq(
        dns_port,
        &[
            "--mx-host=mx.lab.test,near.mx.lab.test,10",
            "--mx-host=mx.lab.test,far.mx.lab.test,20",
            "--host-record=near.mx.lab.test,127.0.1.10",
            "--host-record=far.mx.lab.test,127.0.1.11",
            "--host-record=implicit.lab.test,127.0.1.11",
        ],
        &[],
    );
    let cert = test_cert(&["far.mx.lab.test"]);
    let cert_file = dir.write("receiver.crt", &cert.cert_pem);
    let key_file = dir.write("receiver.key", &cert.key_pem);
    let (_receiver, addr) = receiver_at(
        &dir,
        "127.0.1.11:25".parse().unwrap(),
        &[
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
        ],
    );
    wait_for_port(addr).await;
    let listen = free_port();
    let conf = config(
        &dir,
        listen,
        "<domain mx.lab.test>\n    require-starttls yes\n</domain>\n<domain implicit.lab.test>\n    use-starttls yes\n</domain>\n",
    );
    let live = LiveProcess::start(&conf, &[format!("--resolver=127.0.0.1:{dns_port}")]);
    inject(live.addr, 2, |i| {
        if i == 0 {
            "a@mx.lab.test".to_string()
        } else {
            "b@implicit.lab.test".to_string()
        }
    })
    .await;
    let acct_file = dir.path().join("acct.csv");
    wait_until(&live, Duration::from_secs(60), "2 d records", || {
        rows(&acct_file, "d").len() == 2
    })
    .await;
    for row in rows(&acct_file, "d") {
        assert_eq!(&row[15], "127.0.1.11", "dlvDestinationIp: {row:?}");
        assert_eq!(&row[14], "127.0.0.2", "dlvSourceIp: {row:?}");
    }
    let mx = rows(&acct_file, "d")
        .into_iter()
        .find(|r| &r[4] == "a@mx.lab.test")
        .unwrap();
    assert_eq!(&mx[9], "far.mx.lab.test", "dsnMta: {mx:?}");
    assert_eq!(stats(&dir)["tls_sessions"], 2, "{}", stats(&dir));
    let (status, log) = live.stop();
    assert_eq!(status, 0, "{log}");
}
