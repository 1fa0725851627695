//! The inbound SMTP listener of live mode: tokio sockets around `smtp::server`'s session
//! with `inbound::InboundPolicy`'s answers.
//!
//! Owns the sockets of the config's `smtp-listener` lines, one task per connection, the
//! connection limits (in total, `total-max-smtp-in`, and per client address), the command
//! and DATA deadlines (a deadline per command, so trickling bytes does not extend it), the
//! STARTTLS upgrade (input pipelined behind STARTTLS is dropped, RFC 3207 §5), and the hand
//! over of every accepted message: first to the spool (on disk before the `250`), then to
//! the consumer's channel as an `Accepted` (the live driver feeds it to the engine).
//! Shutdown stops accepting, answers idle sessions `421 4.3.2`, lets transfers in progress
//! finish within a grace period, then closes the rest. A misbehaving client costs its own
//! connection and nothing else: every buffer and wait is bounded.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ServerConfig;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{Instant, timeout_at};

use super::spool::{NewMessage, Spool, SpoolError, SpoolId};
use super::tls::{self, TlsError};
use super::wall_clock;
use crate::engine::Injection;
use crate::inbound::{InboundPolicy, InboundSettings, ListenerLimits};
use crate::smtp::Reply;
use crate::smtp::server::ServerSession;

/// Bytes read from a client at a time. Small: one buffer per connection, and a benchmark
/// client opens a connection per message (64 KiB buffers made the profile's page faults).
const READ_BUFFER_BYTES: usize = 8 * 1024;
/// How long a refused connection's `421` may take to write.
const REFUSAL_WRITE_MS: u64 = 1_000;

#[derive(Debug, Error)]
pub enum ListenerError {
    #[error("cannot listen on {addr}: {error}")]
    Bind { addr: SocketAddr, error: io::Error },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A message the listener accepted: on disk as `id`, ready for `Engine::inject`.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub id: SpoolId,
    pub injection: Injection,
}

/// What the listener reads: the config's settings, the limits, and where to listen.
#[derive(Clone)]
pub struct ListenerConfig {
    pub settings: Arc<InboundSettings>,
    pub limits: ListenerLimits,
    /// Addresses to listen on instead of the config's `smtp-listener` lines (tests listen
    /// on port 0).
    pub listen: Option<Vec<SocketAddr>>,
}

/// Counters since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerStats {
    pub connections: u64,
    /// Connections refused at once for a connection limit.
    pub refused: u64,
    pub open: usize,
    pub messages_accepted: u64,
    /// Messages whose spool write failed (answered 4xx).
    pub spool_failures: u64,
}

#[derive(Default)]
struct Shared {
    connections: AtomicU64,
    refused: AtomicU64,
    open: AtomicUsize,
    accepted: AtomicU64,
    spool_failures: AtomicU64,
    per_ip: Mutex<BTreeMap<IpAddr, usize>>,
    /// Signalled when the last session ends.
    idle: Notify,
}

/// A running listener.
pub struct Listener {
    addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    /// `true`: stop accepting and close idle sessions.
    stop: watch::Sender<bool>,
    /// `true`: close every session now.
    force: watch::Sender<bool>,
    accept_loops: Vec<tokio::task::JoinHandle<()>>,
}

struct ListenerState {
    config: ListenerConfig,
    tls: BTreeMap<String, Arc<ServerConfig>>,
    spool: Arc<Spool>,
    sink: mpsc::Sender<Accepted>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    force: watch::Receiver<bool>,
}

impl Listener {
    /// Loads the certificates, binds every address and starts accepting. Accepted
    /// messages are stored in `spool`, then sent to `sink` (a full channel slows the
    /// listener down; a closed one is fine: the spool still has them).
    pub async fn start(
        config: ListenerConfig,
        spool: Arc<Spool>,
        sink: mpsc::Sender<Accepted>,
    ) -> Result<Listener, ListenerError> {
        tls::install_crypto_provider();
        let mut tls_configs = BTreeMap::new();
        for file in config.settings.certificates() {
            if !tls_configs.contains_key(&file.path) {
                tls_configs.insert(file.path.clone(), tls::server_config(file)?);
            }
        }
        let addresses = config
            .listen
            .clone()
            .unwrap_or_else(|| config.settings.listeners.clone());
        let mut sockets = Vec::new();
        for addr in addresses {
            let socket = TcpListener::bind(addr)
                .await
                .map_err(|error| ListenerError::Bind { addr, error })?;
            sockets.push(socket);
        }
        let addrs = sockets
            .iter()
            .map(|s| s.local_addr().expect("a bound socket has an address"))
            .collect();
        let shared = Arc::new(Shared::default());
        let (stop, stop_rx) = watch::channel(false);
        let (force, force_rx) = watch::channel(false);
        let context = Arc::new(ListenerState {
            config,
            tls: tls_configs,
            spool,
            sink,
            shared: shared.clone(),
            stop: stop_rx,
            force: force_rx,
        });
        let accept_loops = sockets
            .into_iter()
            .map(|socket| tokio::spawn(accept_loop(socket, context.clone())))
            .collect();
        Ok(Listener {
            addrs,
            shared,
            stop,
            force,
            accept_loops,
        })
    }

    /// The addresses listened on (with the ports the system chose for port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn stats(&self) -> ListenerStats {
        ListenerStats {
            connections: self.shared.connections.load(Ordering::Relaxed),
            refused: self.shared.refused.load(Ordering::Relaxed),
            open: self.shared.open.load(Ordering::Relaxed),
            messages_accepted: self.shared.accepted.load(Ordering::Relaxed),
            spool_failures: self.shared.spool_failures.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting; idle sessions get `421 4.3.2` at once, sessions in a transfer get
    /// `grace` to finish (their message is then spooled and acknowledged), then every
    /// remaining session is closed with `421 4.3.2`. Returns when all are gone.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let deadline = Instant::now() + grace;
        // Each loop drops its socket as it ends: nothing is accepted from here on.
        for accept_loop in self.accept_loops {
            let _ = accept_loop.await;
        }
        let wait_idle = async {
            loop {
                let notified = self.shared.idle.notified();
                if self.shared.open.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        if timeout_at(deadline, wait_idle).await.is_err() {
            let _ = self.force.send(true);
            loop {
                let notified = self.shared.idle.notified();
                if self.shared.open.load(Ordering::Acquire) == 0 {
                    break;
                }
                notified.await;
            }
        }
    }
}

async fn accept_loop(socket: TcpListener, context: Arc<ListenerState>) {
    let mut stop = context.stop.clone();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => return,
            accepted = socket.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            // Out of descriptors and the like: the listener stays up.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = &context.shared;
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let limits = &context.config.limits;
        let refusal = {
            let mut per_ip = shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let from_ip = per_ip.get(&peer.ip()).copied().unwrap_or(0);
            if shared.open.load(Ordering::Acquire)
                >= context.config.settings.connections_max(limits)
            {
                Some("too many connections")
            } else if from_ip >= limits.connections_per_ip_max {
                Some("too many connections from your address")
            } else {
                *per_ip.entry(peer.ip()).or_insert(0) += 1;
                shared.open.fetch_add(1, Ordering::AcqRel);
                None
            }
        };
        match refusal {
            Some(text) => {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(refuse(stream, text));
            }
            None => {
                let context = context.clone();
                tokio::spawn(async move {
                    let guard = Slot {
                        shared: context.shared.clone(),
                        ip: peer.ip(),
                    };
                    session(stream, peer.ip(), &context).await;
                    drop(guard);
                });
            }
        }
    }
}

/// A connection over a limit gets `421 4.7.0` and is closed.
async fn refuse(mut stream: TcpStream, text: &str) {
    let reply = Reply::new(421, Some([4, 7, 0]), text).to_wire();
    let _ = tokio::time::timeout(Duration::from_millis(REFUSAL_WRITE_MS), async {
        let _ = stream.write_all(&reply).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// A connection's place in the counts, given back when the session ends (even by panic).
struct Slot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_ip = self.shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
        drop(per_ip);
        if self.shared.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.idle.notify_waiters();
        }
    }
}

/// A client connection, in clear or upgraded by STARTTLS.
type Conn = tls::MaybeTls<tokio_rustls::server::TlsStream<TcpStream>>;

/// Why a session ended early.
enum Ending {
    /// The client closed, or the connection broke: nothing more to say.
    Gone,
    /// Tell the client why, then close.
    Say(Reply),
}

async fn session(stream: TcpStream, peer: IpAddr, context: &ListenerState) {
    let settings = &context.config.settings;
    let limits = &context.config.limits;
    let source = settings.source_for(peer);
    let tls_config = settings
        .certificate_for(source)
        .and_then(|file| context.tls.get(&file.path))
        .cloned();
    let session_limits = settings.session_limits(source, limits);
    let policy = InboundPolicy::new(
        settings.clone(),
        peer,
        tls_config.is_some(),
        &session_limits,
    );
    let refused = !source.smtp_service;
    let mut session = ServerSession::with_limits(policy, session_limits, wall_clock());
    let mut conn = Some(Conn::Plain(stream));
    let command_timeout = Duration::from_millis(limits.command_timeout_ms);
    let data_timeout = Duration::from_millis(limits.data_timeout_ms);
    let mut stop = context.stop.clone();
    let mut force = context.force.clone();
    // Read into spare capacity (`read_buf`): never zeroed.
    let mut buffer = Vec::with_capacity(READ_BUFFER_BYTES);
    let mut deadline = Instant::now() + command_timeout;
    let mut in_data = false;
    let ending = loop {
        let Some(stream) = conn.as_mut() else {
            break Ending::Gone;
        };
        if let Some(out) = session.take_output() {
            if write(stream, &out, command_timeout).await.is_err() {
                break Ending::Gone;
            }
            deadline = Instant::now() + command_timeout;
        }
        if refused || session.is_closed() {
            break Ending::Gone;
        }
        if session.tls_pending {
            let Some(tls_config) = tls_config.clone() else {
                break Ending::Gone;
            };
            let Some(Conn::Plain(plain)) = conn.take() else {
                break Ending::Gone;
            };
            // Anything the client pipelined after STARTTLS was read in clear and is dropped
            // with the old buffer (RFC 3207 §5).
            match tokio::time::timeout(command_timeout, tls::accept(tls_config, plain)).await {
                Ok(Ok(tls)) => {
                    conn = Some(Conn::Tls(Box::new(tls)));
                    session.tls_established(wall_clock());
                    deadline = Instant::now() + command_timeout;
                    continue;
                }
                _ => break Ending::Gone,
            }
        }
        if let Some((envelope, data)) = session.take_message() {
            let reply = store(context, peer, envelope, data).await;
            session.complete_message(wall_clock(), reply);
            continue;
        }
        if session.in_data() != in_data {
            in_data = session.in_data();
            if in_data {
                deadline = Instant::now() + data_timeout;
            }
        }
        let accepting = context.spool.has_room(0);
        session.policy_mut().set_accepting(accepting);
        let read = tokio::select! {
            biased;
            _ = force.wait_for(|f| *f) => {
                break Ending::Say(shutting_down());
            }
            _ = stop.wait_for(|s| *s), if !in_data => {
                break Ending::Say(shutting_down());
            }
            read = timeout_at(deadline, stream.read_buf(&mut buffer)) => read,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => break Ending::Gone,
            Ok(Ok(_)) => {
                session.handle_bytes(wall_clock(), &buffer);
                buffer.clear();
            }
            Err(_) => {
                break Ending::Say(Reply::new(
                    421,
                    Some([4, 4, 2]),
                    format!("{} timeout, closing connection", settings.host_name),
                ));
            }
        }
    };
    if let Some(mut stream) = conn {
        if let Ending::Say(reply) = ending {
            let _ = write(&mut stream, &reply.to_wire(), command_timeout).await;
        }
        let _ = tokio::time::timeout(command_timeout, stream.shutdown()).await;
        linger(&mut stream, &mut buffer).await;
    }
    session.close(wall_clock());
}

/// Most bytes and time spent discarding a closing client's input.
const LINGER_BYTES_MAX: usize = 1 << 20;
const LINGER: Duration = Duration::from_millis(500);

/// Reads and discards what the client still sends, for a short while, before the socket is
/// dropped: closing with unread input makes the kernel send a reset, which can destroy the
/// last reply (a `421`) before the client reads it.
async fn linger(stream: &mut Conn, buffer: &mut Vec<u8>) {
    let deadline = Instant::now() + LINGER;
    let mut discarded = 0;
    while discarded < LINGER_BYTES_MAX {
        buffer.clear();
        match timeout_at(deadline, stream.read_buf(buffer)).await {
            Ok(Ok(n)) if n > 0 => discarded += n,
            _ => return,
        }
    }
}

fn shutting_down() -> Reply {
    Reply::new(
        421,
        Some([4, 3, 2]),
        "service shutting down, closing connection",
    )
}

async fn write(stream: &mut Conn, bytes: &[u8], limit: Duration) -> io::Result<()> {
    match tokio::time::timeout(limit, async {
        stream.write_all(bytes).await?;
        stream.flush().await
    })
    .await
    {
        Ok(result) => result,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Puts a complete message in the spool and hands it on; the reply for the client.
async fn store(
    context: &ListenerState,
    peer: IpAddr,
    envelope: crate::smtp::server::Envelope,
    data: Vec<u8>,
) -> Reply {
    let queued_at = wall_clock();
    let stored = context
        .spool
        .store_async(&NewMessage {
            mail_from: &envelope.mail_from,
            recipients: &envelope.recipients,
            data: &data,
            source_ip: Some(peer),
            virtual_mta: None,
            job_id: "",
            env_id: "",
            queued_at,
        })
        .await;
    let shared = &context.shared;
    match stored {
        Ok(id) => {
            shared.accepted.fetch_add(1, Ordering::Relaxed);
            let accepted = Accepted {
                id,
                injection: Injection {
                    mail_from: envelope.mail_from,
                    recipients: envelope.recipients,
                    data: data.into(),
                    virtual_mta: None,
                    source_ip: Some(peer),
                    job_id: String::new(),
                    env_id: String::new(),
                    queued_at: Some(queued_at),
                },
            };
            // A closed channel means the consumer is gone; the spool keeps the message for
            // the next start.
            let _ = context.sink.send(accepted).await;
            Reply::new(250, Some([2, 0, 0]), format!("ok id={id}"))
        }
        Err(SpoolError::Full(_)) => {
            shared.spool_failures.fetch_add(1, Ordering::Relaxed);
            Reply::new(452, Some([4, 3, 1]), "insufficient system storage")
        }
        Err(error) => {
            shared.spool_failures.fetch_add(1, Ordering::Relaxed);
            super::log(&format!(
                "listener: message from {peer} not stored: {error}"
            ));
            Reply::new(
                451,
                Some([4, 3, 0]),
                "local error in processing, try again later",
            )
        }
    }
}
