//! Helpers for the live tests: temporary directories, third-party daemons stopped by PID,
//! test certificates (rcgen), a listener on a loopback port with its spool, and a raw SMTP
//! client that can misbehave on purpose. `scripts/lab.sh install` provides the software.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pmta_sim::config::{self, Options, RealFs};
use pmta_sim::driver::live::listener::{Accepted, Listener, ListenerConfig};
use pmta_sim::driver::live::spool::{Recovery, Spool, SpoolLimits, SpoolSync};
use pmta_sim::inbound::{InboundSettings, ListenerLimits};
use pmta_sim::smtp::{Reply, ReplyParser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("pmta-sim-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temporary directory");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write a test file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The path of a lab program, or a panic that says how to install it.
pub fn require(program: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let path = Path::new(dir).join(program);
        if path.exists() {
            return path;
        }
    }
    panic!("`{program}` is missing: run scripts/lab.sh install (scripts/test.sh does)");
}

/// The lab's Python with aiosmtpd (`scripts/lab.sh venv`).
pub fn lab_python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(root.join("scripts/lab.sh"))
        .arg("venv")
        .output()
        .expect("scripts/lab.sh runs");
    assert!(
        output.status.success(),
        "scripts/lab.sh venv failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

/// A free loopback port (the kernel's choice; released before the daemon binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A third-party process, killed (by its PID) when dropped.
pub struct Daemon(pub Child);

impl Daemon {
    pub fn spawn(command: &mut Command) -> Daemon {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        Daemon(child)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_for_port(addr: SocketAddr) {
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nothing listens on {addr}");
}

/// A self-signed test certificate and its key.
pub struct TestCert {
    /// Certificate then key, as `smtp-server-tls-certificate` reads them.
    pub combined_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub der: rustls::pki_types::CertificateDer<'static>,
}

/// A self-signed certificate for `names` (rcgen).
pub fn test_cert(names: &[&str]) -> TestCert {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert_pem = cert.pem();
    let key_pem = signing_key.serialize_pem();
    TestCert {
        combined_pem: format!("{cert_pem}{key_pem}"),
        cert_pem,
        key_pem,
        der: cert.der().clone(),
    }
}

/// A listener on 127.0.0.1 (a kernel-chosen port) for `config_text`, with its spool in
/// `dir/spool` and a channel of accepted messages.
pub struct LiveListener {
    pub listener: Listener,
    pub addr: SocketAddr,
    pub spool: Arc<Spool>,
    pub accepted: mpsc::Receiver<Accepted>,
    pub recovery: Recovery,
}

pub async fn start_listener(
    dir: &TempDir,
    config_text: &str,
    limits: ListenerLimits,
) -> LiveListener {
    let path = dir.write("pmta.conf", config_text);
    let checked = config::load(&path, &RealFs, Options { live: true }).expect("readable config");
    assert!(
        checked.error_count() == 0,
        "{}",
        checked
            .diagnostics
            .iter()
            .map(|d| d.render(&checked.config.sources))
            .collect::<String>()
    );
    let settings =
        Arc::new(InboundSettings::from_config(&checked.config).expect("inbound settings"));
    let (spool, recovery) = Spool::open(
        &dir.path().join("spool"),
        SpoolLimits::default(),
        SpoolSync::default(),
    )
    .expect("spool opens");
    let spool = Arc::new(spool);
    let (sink, accepted) = mpsc::channel(10_000);
    let listener = Listener::start(
        ListenerConfig {
            settings,
            limits,
            listen: Some(vec!["127.0.0.1:0".parse().unwrap()]),
        },
        spool.clone(),
        sink,
    )
    .await
    .expect("listener starts");
    let addr = listener.local_addrs()[0];
    LiveListener {
        listener,
        addr,
        spool,
        accepted,
        recovery,
    }
}

/// A raw SMTP client that writes exactly what it is told.
pub struct Client {
    pub stream: TcpStream,
    parser: ReplyParser,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client::connect_from("127.0.0.1".parse().unwrap(), addr).await
    }

    /// Connects from the loopback address `local` (any of 127.0.0.0/8).
    pub async fn connect_from(local: IpAddr, addr: SocketAddr) -> Client {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(local, 0)).unwrap();
        let stream = socket.connect(addr).await.expect("connect");
        Client {
            stream,
            parser: ReplyParser::default(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next reply; `None` when the server closed the connection first.
    pub async fn reply(&mut self) -> Option<Reply> {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            if let Some(reply) = self.parser.next_reply().expect("well-formed reply") {
                return Some(reply);
            }
            let n = tokio::time::timeout(Duration::from_secs(20), self.stream.read(&mut buffer))
                .await
                .expect("the server answers within 20 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.parser.feed(&buffer[..n]).expect("reply size");
        }
    }

    /// Sends one command line and returns its reply.
    pub async fn command(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await.expect("a reply")
    }

    /// Reads replies until the server closes; the last one.
    pub async fn last_reply_before_close(&mut self) -> Option<Reply> {
        let mut last = None;
        while let Some(reply) = self.reply().await {
            last = Some(reply);
        }
        last
    }
}

/// A whole transaction over `client` (after EHLO): the final reply.
pub async fn send_message(client: &mut Client, from: &str, to: &[&str], body: &str) -> Reply {
    let mail = client.command(&format!("MAIL FROM:<{from}>")).await;
    if mail.code != 250 {
        return mail;
    }
    let mut accepted = 0;
    for rcpt in to {
        let reply = client.command(&format!("RCPT TO:<{rcpt}>")).await;
        if reply.code == 250 {
            accepted += 1;
        }
    }
    if accepted == 0 {
        client.command("RSET").await;
        return Reply::new(554, None, "no recipient accepted");
    }
    let data = client.command("DATA").await;
    assert_eq!(data.code, 354, "{data}");
    client.send(format!("{body}\r\n.\r\n").as_bytes()).await;
    client.reply().await.expect("a reply to the message")
}

/// A private Postfix instance (`scripts/lab.sh postfix-start`), stopped when dropped.
pub struct Postfix(pub std::path::PathBuf);

impl Postfix {
    pub fn start(dir: &Path, port: u16, args: &[&str]) -> Postfix {
        let lab = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lab.sh");
        let output = Command::new(&lab)
            .arg("postfix-start")
            .arg(dir)
            .arg(port.to_string())
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        Postfix(dir.to_path_buf())
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let lab = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lab.sh");
        let _ = Command::new(lab).arg("postfix-stop").arg(&self.0).status();
    }
}

/// postgrey on a loopback port, greylisting every new triplet for `delay_s` seconds (no
/// whitelists, no auto-whitelisting), its database in `dir`. Returns it and its port.
pub async fn postgrey(dir: &TempDir, delay_s: u32) -> (Daemon, u16) {
    // postgrey runs as its own user: its database directory must be its own.
    let db = dir.path().join("postgrey-db");
    std::fs::create_dir_all(&db).unwrap();
    let owned = Command::new("chown")
        .arg("postgrey")
        .arg(&db)
        .status()
        .unwrap();
    assert!(owned.success());
    let empty = dir.write("empty-whitelist", "");
    let policy_port = free_port();
    let postgrey = Daemon::spawn(
        Command::new(require("postgrey"))
            .arg(format!("--inet=127.0.0.1:{policy_port}"))
            .arg(format!("--dbdir={}", db.display()))
            .args([
                &format!("--delay={delay_s}"),
                "--auto-whitelist-clients=0",
                "--lookup-by-host",
            ])
            .arg(format!("--whitelist-clients={}", empty.display()))
            .arg(format!("--whitelist-recipients={}", empty.display())),
    );
    wait_for_port(SocketAddr::from(([127, 0, 0, 1], policy_port))).await;
    (postgrey, policy_port)
}

/// Debian's dnsmasq on 127.0.0.1:`port`, answering names under `.test` from `records`
/// (`--mx-host=…`, `--host-record=…`) and NXDOMAIN for the rest; `extra` options after.
pub fn dnsmasq(port: u16, records: &[&str], extra: &[String]) -> Daemon {
    Daemon::spawn(
        Command::new(require("dnsmasq"))
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--user=root",
                "--pid-file=",
                "--local=/test/",
            ])
            .arg(format!("--port={port}"))
            .args(extra)
            .args(records),
    )
}

/// The live process, killed (by its PID) when dropped; its standard error collected.
pub struct LiveProcess {
    child: Child,
    stderr: Arc<Mutex<String>>,
    /// The SMTP listener's address, as the process logged it.
    pub addr: SocketAddr,
}

impl LiveProcess {
    /// Starts `pmta-sim run --live CONFIG ARGS` and waits until it listens.
    pub fn start(config: &Path, args: &[String]) -> LiveProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pmta-sim"))
            .args(["run", "--live"])
            .arg(config)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pmta-sim starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let collected = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut text = collected.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        let mut process = LiveProcess {
            child,
            stderr,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        process.addr = process.logged_address("listening on ");
        process
    }

    /// The address the process logs after `marker` (waits up to 30 s for the line).
    pub fn logged_address(&mut self, marker: &str) -> SocketAddr {
        let started = Instant::now();
        loop {
            let text = self.stderr();
            if let Some(addr) = text
                .split(marker)
                .nth(1)
                .and_then(|rest| rest.lines().next()?.parse().ok())
            {
                return addr;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("pmta-sim exited with {status} before logging `{marker}`:\n{text}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "pmta-sim did not log `{marker}` within 30 s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// SIGTERM, then the exit status and everything it wrote (waits up to 60 s).
    pub fn stop(mut self) -> (i32, String) {
        self.signal("TERM");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return (status.code().unwrap_or(-1), self.stderr());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "pmta-sim did not stop within 60 s of SIGTERM:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LiveProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Postfix's smtp-sink on a free loopback port, accepting everything and writing one file
/// per transaction into `dump` (its `-d` template); ready when this returns.
pub async fn smtp_sink(dump: &Path) -> (Daemon, SocketAddr) {
    std::fs::create_dir_all(dump).unwrap();
    let port = free_port();
    let daemon = Daemon::spawn(
        Command::new(require("smtp-sink"))
            .args(["-u", "root", "-d"])
            .arg(format!("{}/%H%M%S.", dump.display()))
            .arg(format!("127.0.0.1:{port}"))
            .arg("100"),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for_port(addr).await;
    (daemon, addr)
}

/// The lab's aiosmtpd receiver (`tests/live/receiver.py`) with `args` on a free loopback
/// port; its stats file and message log in `dir`.
pub fn receiver(dir: &TempDir, args: &[&str]) -> (Daemon, SocketAddr) {
    receiver_at(dir, SocketAddr::from(([127, 0, 0, 1], free_port())), args)
}

pub fn receiver_at(dir: &TempDir, addr: SocketAddr, args: &[&str]) -> (Daemon, SocketAddr) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/live/receiver.py");
    let daemon = Daemon::spawn(
        Command::new(lab_python())
            .arg(script)
            .args(["--listen", &addr.to_string(), "--max-seconds", "300"])
            .arg("--stats")
            .arg(dir.path().join("stats.json"))
            .arg("--log")
            .arg(dir.path().join("received.log"))
            .args(args),
    );
    (daemon, addr)
}

pub fn stats(dir: &TempDir) -> serde_json::Value {
    std::fs::read(dir.path().join("stats.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// The receiver's log: (X-Test-Id, seconds) per accepted message.
pub fn received(dir: &TempDir) -> Vec<(String, f64)> {
    std::fs::read_to_string(dir.path().join("received.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (id, at) = l.split_once(' ')?;
            Some((id.to_string(), at.parse().ok()?))
        })
        .collect()
}
