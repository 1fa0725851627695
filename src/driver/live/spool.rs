//! The durable spool: every accepted message on disk before its `250`, and what is left of
//! it after a crash.
//!
//! Owns the spool directory (the config's `spool DIR`) as an append-only log of records in
//! segment files (`log/NNNN….seg`): a message record (envelope, queue time, data) for each
//! message stored, a settle record for each recipient delivered or bounced. One committer
//! thread writes every record waiting, with one `fdatasync` for the lot, and only then
//! answers the stores in it (group commit: many messages per sync, each acknowledged only
//! once its data is durable — PowerMTA's `sync-msg-create`; settle records are synced with
//! `sync-msg-update`). Space comes back by whole segments, oldest first: a segment goes when
//! none of its messages is open any more; when the log holds more than twice the open
//! messages' bytes, the oldest segment's open messages are carried forward (written again
//! with their unsettled recipients) so it can go. Recovery at start ([`Spool::open`]) reads
//! the log in order: each message comes back with exactly its unsettled recipients and its
//! original queue time; a write cut short by a crash at the log's end (never acknowledged)
//! is cut off; a damaged record elsewhere is copied to `quarantine/` with the reason, the
//! log is rewritten without it, and nothing panics. Bounded: record size, messages, bytes.
//!
//! `store` and `flush` wait for the committer; `settle` and `read_data` do not. It must not
//! decide anything about delivery; the engine does.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use aws_lc_rs::digest::SHA256;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::oneshot;

use crate::engine::{Injection, MESSAGE_SIZE_MAX_BYTES, MessageData, RECIPIENTS_PER_MESSAGE_MAX};
use crate::time::Time;

/// Every record starts with these bytes (the format's version is in them).
const MAGIC: &[u8; 4] = b"PSR2";
const KIND_MESSAGE: u8 = b'M';
const KIND_SETTLE: u8 = b'S';
/// Magic, kind, payload length.
const FRAME_BYTES: usize = 4 + 1 + 4;
/// The record's check: the first bytes of the SHA-256 of its kind, length and payload.
const SUM_BYTES: usize = 16;
/// A settle record's payload: message id, recipient index, outcome.
const SETTLE_PAYLOAD_BYTES: usize = 8 + 4 + 1;
/// "Every recipient is still open" in a message record.
const ALL_PENDING: u32 = u32::MAX;
/// Largest envelope header: 10,000 recipients of at most 256 bytes, with room to spare.
const HEADER_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Largest record: the engine's message limit, the header and the pending list.
pub const RECORD_MAX_BYTES: usize =
    MESSAGE_SIZE_MAX_BYTES + HEADER_MAX_BYTES + 4 * RECIPIENTS_PER_MESSAGE_MAX + 64;
/// Messages carried forward at most per commit round, so stores waiting behind a
/// collection wait little.
const CARRY_BATCH_MAX: usize = 1024;
/// The marker file that says a directory is a pmta-sim spool, and its text.
const MARKER: &str = "pmta-sim-spool";
const MARKER_TEXT: &str = "pmta-sim spool, format 2\n";

/// How much the spool may hold. Past a limit, [`Spool::store`] refuses (the listener
/// answers `452 4.3.1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpoolLimits {
    pub messages_max: usize,
    pub bytes_max: u64,
    /// A segment takes no more records once it has this many bytes (64 MiB).
    pub segment_bytes: u64,
}

impl Default for SpoolLimits {
    fn default() -> SpoolLimits {
        SpoolLimits {
            messages_max: crate::engine::MESSAGES_MAX,
            bytes_max: 64 << 30,
            segment_bytes: 64 << 20,
        }
    }
}

/// What is synced, as PowerMTA's `sync-msg-create` and `sync-msg-update` say (both yes by
/// default). Without syncing, a killed process still loses nothing (the kernel has the
/// data); a power cut may.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpoolSync {
    pub create: bool,
    pub update: bool,
}

impl Default for SpoolSync {
    fn default() -> SpoolSync {
        SpoolSync {
            create: true,
            update: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpoolId(pub u64);

impl fmt::Display for SpoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// How a recipient was settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Bounced,
}

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("spool `{path}`: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error(
        "spool `{0}` is not a pmta-sim spool directory (no `{MARKER}` file, and it is not empty)"
    )]
    NotASpool(PathBuf),
    #[error(
        "spool `{0}` was written by another version of pmta-sim (its `{MARKER}` file says `{1}`)"
    )]
    OtherFormat(PathBuf, String),
    #[error("the spool is full ({0})")]
    Full(String),
    #[error("message of {0} bytes is over the spool's record limit")]
    TooLarge(u64),
    #[error("no message {0} in the spool")]
    Unknown(SpoolId),
    #[error("message {id} has no recipient {index}")]
    NoSuchRecipient { id: SpoolId, index: u32 },
    #[error("message {0} is damaged in the spool: {1}")]
    Damaged(SpoolId, String),
    #[error("the spool cannot write any more: {0}")]
    Broken(String),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |error| SpoolError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// A message to store.
#[derive(Clone, Debug)]
pub struct NewMessage<'a> {
    pub mail_from: &'a str,
    pub recipients: &'a [String],
    pub data: &'a [u8],
    pub source_ip: Option<IpAddr>,
    pub virtual_mta: Option<&'a str>,
    pub job_id: &'a str,
    pub env_id: &'a str,
    /// When it was accepted (the driver's clock): its `timeQueued` for ever after.
    pub queued_at: Time,
}

/// The envelope of a message record, as JSON.
#[derive(Serialize, Deserialize)]
struct Header {
    mail_from: String,
    recipients: Vec<String>,
    source_ip: Option<IpAddr>,
    virtual_mta: Option<String>,
    job_id: String,
    env_id: String,
}

/// A message found at start with recipients still to deliver.
#[derive(Clone, Debug)]
pub struct Recovered {
    pub id: SpoolId,
    /// Ready for `Engine::inject` once its data is read ([`Spool::read_data`]): only the
    /// unsettled recipients, `queued_at` set, `data` empty (a million recovered messages
    /// must not hold their bodies in memory at once).
    pub injection: Injection,
    /// The spool's index of each of `injection.recipients`, for [`Spool::settle`].
    pub recipient_indices: Vec<u32>,
}

/// Something moved aside at start.
#[derive(Clone, Debug)]
pub struct Quarantined {
    pub file: PathBuf,
    /// Where in `file` the damaged bytes began (`None`: the whole file).
    pub offset: Option<u64>,
    pub moved_to: PathBuf,
    pub reason: String,
}

impl fmt::Display for Quarantined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.offset {
            Some(offset) => write!(
                f,
                "spool: quarantined a damaged record of {} at byte {offset} ({}); its bytes are in {}",
                self.file.display(),
                self.reason,
                self.moved_to.display()
            ),
            None => write!(
                f,
                "spool: quarantined damaged file {} ({}); moved to {}",
                self.file.display(),
                self.reason,
                self.moved_to.display()
            ),
        }
    }
}

/// What [`Spool::open`] found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// In the order they were accepted.
    pub messages: Vec<Recovered>,
    pub quarantined: Vec<Quarantined>,
    /// Bytes of a write cut short at the log's end (never acknowledged), cut off.
    pub unfinished_bytes: u64,
    /// Messages found with every recipient settled.
    pub settled: usize,
}

/// An open message: where its record is and which recipients are not settled. One per
/// queued message, so kept small (48 bytes, and nothing on the heap until a recipient of a
/// message with several is settled): a million queued messages must fit in memory.
struct Open {
    /// Spool indices of the recipients not yet settled; `None`: all of `0..recipients`.
    pending: Option<Box<[u32]>>,
    recipients: u32,
    segment: u64,
    /// The record's first byte in its segment, and its length.
    at: u64,
    len: u32,
    /// The message data within the record.
    data_at: u32,
    data_len: u32,
}

impl Open {
    /// The spool indices of the recipients not yet settled.
    fn pending_list(&self) -> Vec<u32> {
        match &self.pending {
            Some(pending) => pending.to_vec(),
            None => (0..self.recipients).collect(),
        }
    }
}

struct Segment {
    file: Arc<File>,
    bytes: u64,
    /// Open messages whose record is here, and their bytes.
    live: u64,
    live_bytes: u64,
}

struct State {
    next_id: u64,
    /// Bytes of the open messages' records.
    bytes: u64,
    /// Stores waiting for the committer.
    reserved: usize,
    open: BTreeMap<u64, Open>,
    segments: BTreeMap<u64, Segment>,
    /// Why writing stopped for good, if it did.
    broken: Option<String>,
}

enum Request {
    Store {
        id: u64,
        record: Vec<u8>,
        data_at: u32,
        data_len: u32,
        recipients: u32,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
    Settle([u8; FRAME_BYTES + SETTLE_PAYLOAD_BYTES + SUM_BYTES]),
    Flush(oneshot::Sender<()>),
}

#[derive(Default)]
struct Queue {
    requests: Vec<Request>,
    stop: bool,
}

struct Shared {
    dir: PathBuf,
    limits: SpoolLimits,
    sync: SpoolSync,
    state: Mutex<State>,
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock left plain maps and counters behind; still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn submit(&self, request: Request) {
        self.queue().requests.push(request);
        self.wake.notify_one();
    }
}

pub struct Spool {
    shared: Arc<Shared>,
    committer: Option<std::thread::JoinHandle<()>>,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir` and recovers what it holds.
    pub fn open(
        dir: &Path,
        limits: SpoolLimits,
        sync: SpoolSync,
    ) -> Result<(Spool, Recovery), SpoolError> {
        prepare(dir)?;
        let (state, recovery, active) = recover(dir, limits.segment_bytes)?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            limits,
            sync,
            state: Mutex::new(state),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        });
        let committer = Committer {
            shared: shared.clone(),
            active,
        };
        let thread = std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || committer.run())
            .map_err(io_error(dir))?;
        Ok((
            Spool {
                shared,
                committer: Some(thread),
            },
            recovery,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Messages held (with recipients not yet settled).
    pub fn len(&self) -> usize {
        self.shared.state().open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the open messages' records.
    pub fn bytes(&self) -> u64 {
        self.shared.state().bytes
    }

    /// Bytes of the log on disk (open messages, and settled ones not yet collected).
    pub fn disk_bytes(&self) -> u64 {
        self.shared.state().segments.values().map(|s| s.bytes).sum()
    }

    /// Whether one more message of `bytes` fits in the limits now.
    pub fn has_room(&self, bytes: u64) -> bool {
        let state = self.shared.state();
        self.room(&state, bytes).is_ok()
    }

    fn room(&self, state: &State, bytes: u64) -> Result<(), SpoolError> {
        if let Some(reason) = &state.broken {
            return Err(SpoolError::Broken(reason.clone()));
        }
        let limits = &self.shared.limits;
        if state.open.len() + state.reserved >= limits.messages_max {
            return Err(SpoolError::Full(format!(
                "{} messages, the limit",
                limits.messages_max
            )));
        }
        if state.bytes + bytes > limits.bytes_max {
            return Err(SpoolError::Full(format!(
                "{} bytes held, limit {}",
                state.bytes, limits.bytes_max
            )));
        }
        Ok(())
    }

    /// Encodes `message` and hands it to the committer; the receiver answers once it is on
    /// disk (or could not be written).
    fn submit(
        &self,
        message: &NewMessage<'_>,
    ) -> Result<(SpoolId, oneshot::Receiver<Result<(), SpoolError>>), SpoolError> {
        if message.recipients.is_empty() || message.recipients.len() > RECIPIENTS_PER_MESSAGE_MAX {
            return Err(SpoolError::TooLarge(message.recipients.len() as u64));
        }
        let id = {
            let mut state = self.shared.state();
            let id = state.next_id;
            state.next_id += 1;
            id
        };
        let (record, data_at) = encode_message(id, message)?;
        let len = record.len() as u64;
        {
            let mut state = self.shared.state();
            self.room(&state, len)?;
            state.reserved += 1;
            state.bytes += len;
        }
        let (reply, answer) = oneshot::channel();
        self.shared.submit(Request::Store {
            id,
            record,
            data_at,
            data_len: message.data.len() as u32,
            recipients: message.recipients.len() as u32,
            reply,
        });
        Ok((SpoolId(id), answer))
    }

    /// Writes a message; when this returns `Ok`, it is on disk (synced, with
    /// `sync-msg-create`) and survives a crash, and the `250` may be sent. Blocks: not for
    /// an async task (use [`Spool::store_async`]).
    pub fn store(&self, message: &NewMessage<'_>) -> Result<SpoolId, SpoolError> {
        let (id, answer) = self.submit(message)?;
        match answer.blocking_recv() {
            Ok(result) => result.map(|()| id),
            Err(_) => Err(SpoolError::Broken("the committer is gone".into())),
        }
    }

    /// [`Spool::store`] for an async task: waits for the commit without blocking a thread.
    pub async fn store_async(&self, message: &NewMessage<'_>) -> Result<SpoolId, SpoolError> {
        let (id, answer) = self.submit(message)?;
        match answer.await {
            Ok(result) => result.map(|()| id),
            Err(_) => Err(SpoolError::Broken("the committer is gone".into())),
        }
    }

    /// Records that recipient `index` of message `id` is settled. Returns true when that
    /// was its last open recipient: the message is then closed (its space comes back with
    /// its segment, and the id is unknown from then on). Settling twice is harmless. Does
    /// not wait, nor wake the committer: the settle record goes out with the next commit,
    /// started by a store, [`Spool::commit_settled`] or the spool's drop (a crash before it
    /// costs a duplicate delivery, never a loss).
    pub fn settle(&self, id: SpoolId, index: u32, outcome: Outcome) -> Result<bool, SpoolError> {
        let last = {
            let mut state = self.shared.state();
            let open = state.open.get_mut(&id.0).ok_or(SpoolError::Unknown(id))?;
            if index >= open.recipients {
                return Err(SpoolError::NoSuchRecipient { id, index });
            }
            let pending = open.pending_list();
            if !pending.contains(&index) {
                return Ok(false);
            }
            let left: Box<[u32]> = pending.into_iter().filter(|&i| i != index).collect();
            let last = left.is_empty();
            open.pending = Some(left);
            if last {
                let open = state.open.remove(&id.0).expect("present");
                state.bytes -= u64::from(open.len);
                if let Some(segment) = state.segments.get_mut(&open.segment) {
                    segment.live -= 1;
                    segment.live_bytes -= u64::from(open.len);
                }
            }
            last
        };
        self.shared
            .queue()
            .requests
            .push(Request::Settle(encode_settle(id.0, index, outcome)));
        Ok(last)
    }

    /// Starts a commit of the settle records waiting: the driver calls it once per batch of
    /// engine work, so the recipients settled in one batch share one wake of the committer
    /// (and one sync) instead of one each.
    pub fn commit_settled(&self) {
        self.shared.wake.notify_one();
    }

    /// The data of open message `id`, read back from its record (checked again).
    pub fn read_data(&self, id: SpoolId) -> Result<Vec<u8>, SpoolError> {
        let (file, at, len, data_at, data_len) = {
            let state = self.shared.state();
            let open = state.open.get(&id.0).ok_or(SpoolError::Unknown(id))?;
            let segment = state
                .segments
                .get(&open.segment)
                .ok_or(SpoolError::Unknown(id))?;
            (
                segment.file.clone(),
                open.at,
                open.len as usize,
                open.data_at as usize,
                open.data_len as usize,
            )
        };
        let mut record = vec![0u8; len];
        file.read_exact_at(&mut record, at)
            .map_err(|e| SpoolError::Damaged(id, format!("unreadable: {e}")))?;
        parse_record(&record)
            .map_err(|e| SpoolError::Damaged(id, e.reason()))
            .and_then(|_| {
                record
                    .get(data_at..data_at + data_len)
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| SpoolError::Damaged(id, "data out of its record".into()))
            })
    }

    /// Waits until everything handed to the committer so far is written (and synced as
    /// the settings say).
    pub fn flush(&self) {
        let (reply, answer) = oneshot::channel();
        self.shared.submit(Request::Flush(reply));
        let _ = answer.blocking_recv();
    }
}

impl Drop for Spool {
    /// Writes what is waiting, then stops the committer.
    fn drop(&mut self) {
        self.shared.queue().stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.committer.take() {
            let _ = thread.join();
        }
    }
}

/// The one writer of the log.
struct Committer {
    shared: Arc<Shared>,
    /// The segment records are appended to.
    active: u64,
}

impl Committer {
    fn run(mut self) {
        loop {
            let (batch, stop) = {
                let mut queue = self.shared.queue();
                while queue.requests.is_empty() && !queue.stop {
                    queue = self
                        .shared
                        .wake
                        .wait(queue)
                        .unwrap_or_else(|e| e.into_inner());
                }
                (std::mem::take(&mut queue.requests), queue.stop)
            };
            if !batch.is_empty() {
                self.commit(batch);
                self.collect();
            }
            if stop && self.shared.queue().requests.is_empty() {
                return;
            }
        }
    }

    fn segment_path(&self, number: u64) -> PathBuf {
        segment_path(&self.shared.dir, number)
    }

    /// Writes every record of `batch` with one write and (when the settings ask) one sync,
    /// then answers the stores in it.
    fn commit(&mut self, batch: Vec<Request>) {
        let sync = self.shared.sync;
        let (file, base) = {
            let state = self.shared.state();
            let segment = &state.segments[&self.active];
            (segment.file.clone(), segment.bytes)
        };
        let mut buffer = Vec::new();
        let mut needs_sync = false;
        let mut stores = Vec::new();
        let mut flushes = Vec::new();
        for request in batch {
            match request {
                Request::Store {
                    id,
                    record,
                    data_at,
                    data_len,
                    recipients,
                    reply,
                } => {
                    let at = base + buffer.len() as u64;
                    buffer.extend_from_slice(&record);
                    needs_sync |= sync.create;
                    stores.push((
                        id,
                        at,
                        record.len() as u32,
                        data_at,
                        data_len,
                        recipients,
                        reply,
                    ));
                }
                Request::Settle(record) => {
                    buffer.extend_from_slice(&record);
                    needs_sync |= sync.update;
                }
                Request::Flush(reply) => flushes.push(reply),
            }
        }
        let broken = self.shared.state().broken.clone();
        let written = match broken {
            Some(reason) => Err(reason),
            None => (|| {
                (&*file).write_all(&buffer)?;
                if needs_sync {
                    file.sync_data()?;
                }
                Ok(())
            })()
            .map_err(|e: io::Error| e.to_string()),
        };
        let mut state = self.shared.state();
        match written {
            Ok(()) => {
                let segment = state.segments.get_mut(&self.active).expect("active");
                segment.bytes += buffer.len() as u64;
                segment.live += stores.len() as u64;
                segment.live_bytes += stores.iter().map(|s| u64::from(s.2)).sum::<u64>();
                for (id, at, len, data_at, data_len, recipients, reply) in stores {
                    state.reserved -= 1;
                    state.open.insert(
                        id,
                        Open {
                            pending: None,
                            recipients,
                            segment: self.active,
                            at,
                            len,
                            data_at,
                            data_len,
                        },
                    );
                    let _ = reply.send(Ok(()));
                }
            }
            Err(reason) => {
                // Whatever part of the batch reached the file is cut off again, so the log
                // stays whole; if even that fails, the spool stops taking mail.
                if state.broken.is_none() && file.set_len(base).is_err() {
                    state.broken = Some(reason.clone());
                }
                super::log(&format!(
                    "spool: cannot write {}: {reason}",
                    self.segment_path(self.active).display()
                ));
                for (_, _, len, _, _, _, reply) in stores {
                    state.reserved -= 1;
                    state.bytes -= u64::from(len);
                    let _ = reply.send(Err(SpoolError::Broken(reason.clone())));
                }
            }
        }
        let full = state.segments[&self.active].bytes >= self.shared.limits.segment_bytes;
        drop(state);
        if full {
            self.roll();
        }
        for reply in flushes {
            let _ = reply.send(());
        }
    }

    /// Starts a new segment.
    fn roll(&mut self) {
        let number = self.active + 1;
        match create_segment(&self.shared.dir, number) {
            Ok(file) => {
                self.shared.state().segments.insert(
                    number,
                    Segment {
                        file: Arc::new(file),
                        bytes: 0,
                        live: 0,
                        live_bytes: 0,
                    },
                );
                self.active = number;
            }
            // The full segment takes more records; the next commit tries again.
            Err(error) => super::log(&format!("spool: cannot start a segment: {error}")),
        }
    }

    /// Gives space back: removes the oldest segments that hold no open message; when the
    /// log is more than twice the open messages, carries up to [`CARRY_BATCH_MAX`] of the
    /// oldest segment's open messages forward so it can go.
    fn collect(&mut self) {
        let mut removed = false;
        loop {
            let mut state = self.shared.state();
            let Some((&oldest, segment)) = state.segments.first_key_value() else {
                break;
            };
            if oldest == self.active {
                break;
            }
            if segment.live == 0 {
                state.segments.remove(&oldest);
                drop(state);
                let path = self.segment_path(oldest);
                if let Err(error) = fs::remove_file(&path) {
                    super::log(&format!("spool: cannot remove {}: {error}", path.display()));
                }
                removed = true;
                continue;
            }
            let on_disk: u64 = state.segments.values().map(|s| s.bytes).sum();
            if on_disk <= 2 * state.bytes + 2 * self.shared.limits.segment_bytes {
                break;
            }
            let movers: Vec<(u64, u64, u32, Vec<u32>)> = state
                .open
                .iter()
                .filter(|(_, o)| o.segment == oldest)
                .take(CARRY_BATCH_MAX)
                .map(|(id, o)| (*id, o.at, o.len, o.pending_list()))
                .collect();
            let file = segment.file.clone();
            drop(state);
            self.carry(oldest, &file, movers);
            // One batch per round: stores waiting behind it are answered first.
            break;
        }
        if removed {
            let _ = sync_dir(&self.shared.dir.join("log"));
        }
    }

    /// Writes `movers` (id, place, length, pending) of segment `from` again at the end of
    /// the log, synced, then points their messages there.
    fn carry(&mut self, from: u64, file: &File, movers: Vec<(u64, u64, u32, Vec<u32>)>) {
        let (active_file, base) = {
            let state = self.shared.state();
            let segment = &state.segments[&self.active];
            (segment.file.clone(), segment.bytes)
        };
        let mut buffer = Vec::new();
        let mut placed = Vec::new();
        for (id, at, len, pending) in movers {
            let mut record = vec![0u8; len as usize];
            let carried = file
                .read_exact_at(&mut record, at)
                .map_err(|e| e.to_string())
                .and_then(|()| parse_record(&record).map_err(|e| e.reason()))
                .and_then(|(_, payload)| {
                    rewrite_pending(payload, &pending).ok_or("bad message record".into())
                });
            match carried {
                Ok((record, data_at, data_len)) => {
                    let new_at = base + buffer.len() as u64;
                    placed.push((id, new_at, record.len() as u32, data_at, data_len, len));
                    buffer.extend_from_slice(&record);
                }
                // Left where it is: the segment stays until the message is settled.
                Err(reason) => super::log(&format!(
                    "spool: cannot carry message {} forward: {reason}",
                    SpoolId(id)
                )),
            }
        }
        if placed.is_empty() {
            return;
        }
        let written = (&*active_file)
            .write_all(&buffer)
            .and_then(|()| active_file.sync_data());
        let mut state = self.shared.state();
        if let Err(error) = written {
            if file_len(&active_file) != Some(base + buffer.len() as u64) {
                let _ = active_file.set_len(base);
            }
            super::log(&format!("spool: cannot carry messages forward: {error}"));
            return;
        }
        state.segments.get_mut(&self.active).expect("active").bytes += buffer.len() as u64;
        for (id, at, len, data_at, data_len, old_len) in placed {
            // Settled meanwhile: the copy is dead from the start.
            let Some(open) = state.open.get_mut(&id) else {
                continue;
            };
            open.segment = self.active;
            open.at = at;
            open.len = len;
            open.data_at = data_at;
            open.data_len = data_len;
            state.bytes = state.bytes - u64::from(old_len) + u64::from(len);
            let old = state.segments.get_mut(&from).expect("the oldest");
            old.live -= 1;
            old.live_bytes -= u64::from(old_len);
            let new = state.segments.get_mut(&self.active).expect("active");
            new.live += 1;
            new.live_bytes += u64::from(len);
        }
    }
}

fn file_len(file: &File) -> Option<u64> {
    file.metadata().ok().map(|m| m.len())
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join("log").join(format!("{number:016x}.seg"))
}

fn create_segment(dir: &Path, number: u64) -> Result<File, SpoolError> {
    let path = segment_path(dir, number);
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(io_error(&path))?;
    sync_dir(&dir.join("log"))?;
    Ok(file)
}

/// Creates the layout (marker, `log/`, `quarantine/`), refusing a non-empty directory that
/// is not a spool and a spool of another format.
fn prepare(dir: &Path) -> Result<(), SpoolError> {
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let marker = dir.join(MARKER);
    if marker.exists() {
        let text = crate::config::source::read_regular(&marker, 4096)
            .map_err(|e| io_error(&marker)(io::Error::other(e.to_string())))?;
        if text != MARKER_TEXT.as_bytes() {
            return Err(SpoolError::OtherFormat(
                dir.to_path_buf(),
                String::from_utf8_lossy(&text).trim().to_string(),
            ));
        }
        return Ok(());
    }
    let mut entries = fs::read_dir(dir).map_err(io_error(dir))?;
    if entries.next().is_some() {
        return Err(SpoolError::NotASpool(dir.to_path_buf()));
    }
    for sub in ["log", "quarantine"] {
        let path = dir.join(sub);
        fs::create_dir_all(&path).map_err(io_error(&path))?;
    }
    let mut file = File::create(&marker).map_err(io_error(&marker))?;
    file.write_all(MARKER_TEXT.as_bytes())
        .map_err(io_error(&marker))?;
    file.sync_all().map_err(io_error(&marker))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// A message as recovery rebuilds it.
struct Found {
    header: Header,
    queued_at_ms: u64,
    settled: Vec<bool>,
    segment: u64,
    at: u64,
    len: u32,
    data_at: u32,
    data_len: u32,
}

/// Reads the log: the state to go on from, what to hand the engine, and the segment to
/// write to (a new one: a recovered segment is never appended to).
fn recover(dir: &Path, segment_bytes: u64) -> Result<(State, Recovery, u64), SpoolError> {
    let mut recovery = Recovery::default();
    let log_dir = dir.join("log");
    let mut numbers = Vec::new();
    for entry in fs::read_dir(&log_dir).map_err(io_error(&log_dir))? {
        let path = entry.map_err(io_error(&log_dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let number = name
            .strip_suffix(".seg")
            .filter(|stem| stem.len() == 16)
            .and_then(|stem| u64::from_str_radix(stem, 16).ok());
        match number {
            Some(number) => numbers.push(number),
            None => {
                recovery
                    .quarantined
                    .push(quarantine_file(dir, &path, "not a spool file name")?)
            }
        }
    }
    numbers.sort_unstable();
    let mut found: BTreeMap<u64, Found> = BTreeMap::new();
    // The last segment where a damaged record was found: everything up to it is rewritten.
    let mut damaged_upto = None;
    let mut next_id = super::wall_clock()
        .since(Time::from_ms(0))
        .saturating_mul(4096);
    for (position, &number) in numbers.iter().enumerate() {
        let path = segment_path(dir, number);
        let last = position + 1 == numbers.len();
        let bytes = match crate::config::source::read_regular(
            &path,
            segment_bytes.max(64 << 20) + RECORD_MAX_BYTES as u64,
        ) {
            Ok(bytes) => bytes,
            Err(error) => {
                recovery.quarantined.push(quarantine_file(
                    dir,
                    &path,
                    &format!("unreadable: {error}"),
                )?);
                damaged_upto = Some(number);
                continue;
            }
        };
        let mut at = 0usize;
        while at < bytes.len() {
            match parse_record(&bytes[at..]) {
                Ok((kind, payload)) => {
                    let len = FRAME_BYTES + payload.len() + SUM_BYTES;
                    apply(
                        &mut found,
                        &mut next_id,
                        kind,
                        payload,
                        number,
                        at as u64,
                        len,
                    );
                    at += len;
                }
                Err(error) => {
                    let resume = next_record(&bytes, at + 1);
                    if resume.is_none() && last {
                        // A write the crash cut short: it was never acknowledged.
                        let file = OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .map_err(io_error(&path))?;
                        file.set_len(at as u64).map_err(io_error(&path))?;
                        file.sync_all().map_err(io_error(&path))?;
                        recovery.unfinished_bytes += (bytes.len() - at) as u64;
                        break;
                    }
                    let end = resume.unwrap_or(bytes.len());
                    recovery.quarantined.push(quarantine_bytes(
                        dir,
                        &path,
                        at as u64,
                        &bytes[at..end],
                        &error.reason(),
                    )?);
                    damaged_upto = Some(number);
                    at = end;
                }
            }
        }
    }
    let active = numbers.last().map_or(1, |n| n + 1);
    let active_file = create_segment(dir, active)?;
    let mut state = State {
        next_id,
        bytes: 0,
        reserved: 0,
        open: BTreeMap::new(),
        segments: BTreeMap::new(),
        broken: None,
    };
    for &number in &numbers {
        let path = segment_path(dir, number);
        if !path.exists() {
            continue;
        }
        let file = OpenOptions::new()
            .read(true)
            .open(&path)
            .map_err(io_error(&path))?;
        let bytes = file.metadata().map_err(io_error(&path))?.len();
        state.segments.insert(
            number,
            Segment {
                file: Arc::new(file),
                bytes,
                live: 0,
                live_bytes: 0,
            },
        );
    }
    state.segments.insert(
        active,
        Segment {
            file: Arc::new(active_file),
            bytes: 0,
            live: 0,
            live_bytes: 0,
        },
    );
    // Messages with a damaged record behind them are written again, so the damaged
    // segments can go (a settle record lost with them costs a duplicate, not a loss).
    let mut carried = Vec::new();
    for (id, f) in &found {
        if f.settled.iter().all(|s| *s) {
            recovery.settled += 1;
            continue;
        }
        let pending: Vec<u32> = (0..f.settled.len() as u32)
            .filter(|&i| !f.settled[i as usize])
            .collect();
        let moved = damaged_upto.is_some_and(|upto| f.segment <= upto);
        let (segment, at, len, data_at, data_len) = if moved {
            let source = &state.segments[&f.segment].file;
            let mut record = vec![0u8; f.len as usize];
            source
                .read_exact_at(&mut record, f.at)
                .map_err(io_error(&segment_path(dir, f.segment)))?;
            let damaged =
                || SpoolError::Damaged(SpoolId(*id), "changed while the spool opened".into());
            let (_, payload) = parse_record(&record).map_err(|_| damaged())?;
            let (record, data_at, data_len) =
                rewrite_pending(payload, &pending).ok_or_else(damaged)?;
            let at = carried.len() as u64;
            let len = record.len() as u32;
            carried.extend_from_slice(&record);
            (active, at, len, data_at, data_len)
        } else {
            (f.segment, f.at, f.len, f.data_at, f.data_len)
        };
        let segment_state = state.segments.get_mut(&segment).expect("listed");
        segment_state.live += 1;
        segment_state.live_bytes += u64::from(len);
        state.bytes += u64::from(len);
        state.open.insert(
            *id,
            Open {
                pending: (pending.len() < f.settled.len()).then(|| pending.clone().into()),
                recipients: f.settled.len() as u32,
                segment,
                at,
                len,
                data_at,
                data_len,
            },
        );
        let header = &f.header;
        recovery.messages.push(Recovered {
            id: SpoolId(*id),
            injection: Injection {
                mail_from: header.mail_from.clone(),
                recipients: pending
                    .iter()
                    .map(|&i| header.recipients[i as usize].clone())
                    .collect(),
                data: MessageData::default(),
                virtual_mta: header.virtual_mta.clone(),
                source_ip: header.source_ip,
                job_id: header.job_id.clone(),
                env_id: header.env_id.clone(),
                queued_at: Some(Time::from_ms(f.queued_at_ms)),
            },
            recipient_indices: pending,
        });
    }
    if !carried.is_empty() {
        let active_segment = state.segments.get_mut(&active).expect("active");
        let path = segment_path(dir, active);
        (&*active_segment.file)
            .write_all(&carried)
            .and_then(|()| active_segment.file.sync_data())
            .map_err(io_error(&path))?;
        active_segment.bytes = carried.len() as u64;
    }
    // Segments up to the damage are rewritten; then every leading segment without an open
    // message goes (only leading ones: a later segment may hold settle records an earlier
    // one's messages still need).
    let mut removed = false;
    while let Some((&oldest, segment)) = state.segments.first_key_value() {
        let damaged = damaged_upto.is_some_and(|upto| oldest <= upto);
        if oldest == active || (segment.live > 0 && !damaged) {
            break;
        }
        state.segments.remove(&oldest);
        let path = segment_path(dir, oldest);
        fs::remove_file(&path).map_err(io_error(&path))?;
        removed = true;
    }
    if removed {
        sync_dir(&log_dir)?;
    }
    Ok((state, recovery, active))
}

/// Applies one record read at recovery.
fn apply(
    found: &mut BTreeMap<u64, Found>,
    next_id: &mut u64,
    kind: u8,
    payload: &[u8],
    segment: u64,
    at: u64,
    len: usize,
) {
    match kind {
        KIND_MESSAGE => {
            let Some(message) = decode_message(payload) else {
                return;
            };
            *next_id = (*next_id).max(message.id + 1);
            let recipients = message.header.recipients.len();
            let settled = match &message.pending {
                None => vec![false; recipients],
                Some(pending) => {
                    let mut settled = vec![true; recipients];
                    for &i in pending {
                        if let Some(s) = settled.get_mut(i as usize) {
                            *s = false;
                        }
                    }
                    settled
                }
            };
            // A later copy (carried forward) replaces an earlier one.
            found.insert(
                message.id,
                Found {
                    header: message.header,
                    queued_at_ms: message.queued_at_ms,
                    settled,
                    segment,
                    at,
                    len: len as u32,
                    data_at: (FRAME_BYTES + message.data_offset) as u32,
                    data_len: message.data_len as u32,
                },
            );
        }
        _ => {
            let id = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
            let index = u32::from_le_bytes(payload[8..12].try_into().expect("4 bytes")) as usize;
            // A settle record of a message already collected is simply old.
            if let Some(f) = found.get_mut(&id)
                && let Some(settled) = f.settled.get_mut(index)
            {
                *settled = true;
            }
        }
    }
}

/// Where the next record that reads whole starts, at or after `from`.
fn next_record(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at + MAGIC.len() <= bytes.len() {
        let found = bytes[at..].windows(MAGIC.len()).position(|w| w == MAGIC)?;
        at += found;
        if parse_record(&bytes[at..]).is_ok() {
            return Some(at);
        }
        at += 1;
    }
    None
}

fn quarantine_file(dir: &Path, path: &Path, reason: &str) -> Result<Quarantined, SpoolError> {
    let name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let moved_to = dir.join("quarantine").join(name);
    fs::rename(path, &moved_to).map_err(io_error(path))?;
    Ok(Quarantined {
        file: path.to_path_buf(),
        offset: None,
        moved_to,
        reason: reason.to_string(),
    })
}

fn quarantine_bytes(
    dir: &Path,
    path: &Path,
    offset: u64,
    bytes: &[u8],
    reason: &str,
) -> Result<Quarantined, SpoolError> {
    let stem = path
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let moved_to = dir.join("quarantine").join(format!("{stem}-{offset}.bad"));
    fs::write(&moved_to, bytes).map_err(io_error(&moved_to))?;
    Ok(Quarantined {
        file: path.to_path_buf(),
        offset: Some(offset),
        moved_to,
        reason: reason.to_string(),
    })
}

/// Why bytes are not a record.
#[derive(Debug)]
enum BadRecord {
    Truncated,
    Magic,
    Length(usize),
    Checksum,
    Kind(u8),
}

impl BadRecord {
    fn reason(&self) -> String {
        match self {
            BadRecord::Truncated => "truncated record".into(),
            BadRecord::Magic => "not a record (bad magic)".into(),
            BadRecord::Length(len) => format!("record length {len} over the limit"),
            BadRecord::Checksum => "checksum mismatch (altered)".into(),
            BadRecord::Kind(kind) => format!("unknown record kind {kind}"),
        }
    }
}

fn checksum(kind: u8, payload: &[u8]) -> [u8; SUM_BYTES] {
    let mut context = aws_lc_rs::digest::Context::new(&SHA256);
    context.update(&[kind]);
    context.update(&(payload.len() as u32).to_le_bytes());
    context.update(payload);
    let mut sum = [0u8; SUM_BYTES];
    sum.copy_from_slice(&context.finish().as_ref()[..SUM_BYTES]);
    sum
}

/// The record at the start of `bytes`: its kind and payload.
fn parse_record(bytes: &[u8]) -> Result<(u8, &[u8]), BadRecord> {
    if bytes.len() < FRAME_BYTES {
        return Err(BadRecord::Truncated);
    }
    if &bytes[..4] != MAGIC {
        return Err(BadRecord::Magic);
    }
    let kind = bytes[4];
    let len = u32::from_le_bytes(bytes[5..9].try_into().expect("4 bytes")) as usize;
    if len > RECORD_MAX_BYTES {
        return Err(BadRecord::Length(len));
    }
    let Some(rest) = bytes.get(FRAME_BYTES..FRAME_BYTES + len + SUM_BYTES) else {
        return Err(BadRecord::Truncated);
    };
    let (payload, sum) = rest.split_at(len);
    if checksum(kind, payload) != sum {
        return Err(BadRecord::Checksum);
    }
    let well_formed = match kind {
        KIND_MESSAGE => decode_message(payload).is_some(),
        KIND_SETTLE => len == SETTLE_PAYLOAD_BYTES && matches!(payload[12], b'd' | b'b'),
        other => return Err(BadRecord::Kind(other)),
    };
    if !well_formed {
        return Err(BadRecord::Kind(kind));
    }
    Ok((kind, payload))
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(FRAME_BYTES + payload.len() + SUM_BYTES);
    record.extend_from_slice(MAGIC);
    record.push(kind);
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(payload);
    record.extend_from_slice(&checksum(kind, payload));
    record
}

/// A message record's payload:
/// `id u64, queued_at_ms u64, header_len u32, header (JSON), pending_count u32 (u32::MAX:
/// all), pending u32 × count, data_len u32, data`; the record, and where its data starts.
fn encode_message(id: u64, message: &NewMessage<'_>) -> Result<(Vec<u8>, u32), SpoolError> {
    let header = Header {
        mail_from: message.mail_from.to_string(),
        recipients: message.recipients.to_vec(),
        source_ip: message.source_ip,
        virtual_mta: message.virtual_mta.map(str::to_string),
        job_id: message.job_id.to_string(),
        env_id: message.env_id.to_string(),
    };
    let header = serde_json::to_vec(&header).expect("a header always serializes");
    if header.len() > HEADER_MAX_BYTES || message.data.len() > MESSAGE_SIZE_MAX_BYTES {
        return Err(SpoolError::TooLarge(
            (header.len() + message.data.len()) as u64,
        ));
    }
    let queued_at_ms = message.queued_at.since(Time::from_ms(0));
    Ok(message_record(
        id,
        queued_at_ms,
        &header,
        None,
        message.data,
    ))
}

fn message_record(
    id: u64,
    queued_at_ms: u64,
    header: &[u8],
    pending: Option<&[u32]>,
    data: &[u8],
) -> (Vec<u8>, u32) {
    let pending_len = pending.map_or(0, <[u32]>::len);
    let mut payload = Vec::with_capacity(32 + header.len() + 4 * pending_len + data.len());
    payload.extend_from_slice(&id.to_le_bytes());
    payload.extend_from_slice(&queued_at_ms.to_le_bytes());
    payload.extend_from_slice(&(header.len() as u32).to_le_bytes());
    payload.extend_from_slice(header);
    match pending {
        None => payload.extend_from_slice(&ALL_PENDING.to_le_bytes()),
        Some(pending) => {
            payload.extend_from_slice(&(pending.len() as u32).to_le_bytes());
            for index in pending {
                payload.extend_from_slice(&index.to_le_bytes());
            }
        }
    }
    payload.extend_from_slice(&(data.len() as u32).to_le_bytes());
    let data_at = (FRAME_BYTES + payload.len()) as u32;
    payload.extend_from_slice(data);
    (frame(KIND_MESSAGE, &payload), data_at)
}

/// A message record read back.
struct DecodedMessage<'a> {
    id: u64,
    queued_at_ms: u64,
    header: Header,
    header_bytes: &'a [u8],
    /// `None`: every recipient is pending.
    pending: Option<Vec<u32>>,
    /// Where the data starts in the payload.
    data_offset: usize,
    data_len: usize,
}

fn decode_message(payload: &[u8]) -> Option<DecodedMessage<'_>> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let part = payload.get(at..at + n)?;
        at += n;
        Some(part)
    };
    let id = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let queued_at_ms = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let header_len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    let header_bytes = take(header_len)?;
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?);
    let pending: Option<Vec<u32>> = if count == ALL_PENDING {
        None
    } else {
        let count = count as usize;
        if count > RECIPIENTS_PER_MESSAGE_MAX {
            return None;
        }
        let bytes = take(4 * count)?;
        Some(
            bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
        )
    };
    let data_len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    let data_offset = at;
    if payload.len() != data_offset + data_len {
        return None;
    }
    let header: Header = serde_json::from_slice(header_bytes).ok()?;
    let recipients = header.recipients.len();
    if recipients == 0 || recipients > RECIPIENTS_PER_MESSAGE_MAX {
        return None;
    }
    if pending
        .as_ref()
        .is_some_and(|p| p.iter().any(|&i| i as usize >= recipients))
    {
        return None;
    }
    Some(DecodedMessage {
        id,
        queued_at_ms,
        header,
        header_bytes,
        pending,
        data_offset,
        data_len,
    })
}

/// The message record of `payload` again with only `pending` open: the record, where its
/// data starts, and the data's length.
fn rewrite_pending(payload: &[u8], pending: &[u32]) -> Option<(Vec<u8>, u32, u32)> {
    let message = decode_message(payload)?;
    let data = &payload[message.data_offset..message.data_offset + message.data_len];
    let (record, data_at) = message_record(
        message.id,
        message.queued_at_ms,
        message.header_bytes,
        Some(pending),
        data,
    );
    Some((record, data_at, message.data_len as u32))
}

fn encode_settle(
    id: u64,
    index: u32,
    outcome: Outcome,
) -> [u8; FRAME_BYTES + SETTLE_PAYLOAD_BYTES + SUM_BYTES] {
    let mut payload = [0u8; SETTLE_PAYLOAD_BYTES];
    payload[..8].copy_from_slice(&id.to_le_bytes());
    payload[8..12].copy_from_slice(&index.to_le_bytes());
    payload[12] = match outcome {
        Outcome::Delivered => b'd',
        Outcome::Bounced => b'b',
    };
    frame(KIND_SETTLE, &payload)
        .try_into()
        .expect("a settle record has a fixed size")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_and_damage_is_caught() {
        let rcpts = vec!["a@x.test".to_string(), "b@x.test".to_string()];
        let message = NewMessage {
            mail_from: "s@y.test",
            recipients: &rcpts,
            data: b"Subject: hi\r\n\r\nbody\r\n",
            source_ip: None,
            virtual_mta: None,
            job_id: "",
            env_id: "",
            queued_at: Time::from_secs(5),
        };
        let (record, data_at) = encode_message(7, &message).unwrap();
        let (kind, payload) = parse_record(&record).unwrap();
        assert_eq!(kind, KIND_MESSAGE);
        assert_eq!(
            &record[data_at as usize..data_at as usize + message.data.len()],
            message.data
        );
        let (carried, carried_at, len) = rewrite_pending(payload, &[1]).unwrap();
        let (_, payload) = parse_record(&carried).unwrap();
        let decoded = decode_message(payload).unwrap();
        assert_eq!(decoded.pending, Some(vec![1]));
        assert_eq!(decoded.id, 7);
        assert_eq!(
            &carried[carried_at as usize..carried_at as usize + len as usize],
            message.data
        );
        let settle = encode_settle(7, 1, Outcome::Bounced);
        assert!(parse_record(&settle).is_ok());
        let mut altered = record.clone();
        altered[30] ^= 1;
        assert!(matches!(parse_record(&altered), Err(BadRecord::Checksum)));
        assert!(matches!(
            parse_record(&record[..record.len() - 1]),
            Err(BadRecord::Truncated)
        ));
        let mut twice = altered;
        twice.extend_from_slice(&settle);
        assert_eq!(next_record(&twice, 1), Some(record.len()));
    }
}
