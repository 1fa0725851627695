//! The durable spool: every accepted message on disk before its `250`, and what is left of
//! it after a crash.
//!
//! Owns the spool directory (the config's `spool DIR`): one file per message, written in
//! `tmp/`, synced, renamed into `q/XX/` and the directory synced before [`Spool::store`]
//! returns (PowerMTA's `sync-msg-create`); one append-only journal per message recording
//! each recipient settled (delivered or bounced; synced when `sync-msg-update` is on);
//! removal once every recipient is settled; and recovery at start ([`Spool::open`]):
//! unfinished writes (never acknowledged) are deleted, every message is checked against its
//! SHA-256 and comes back with exactly its unsettled recipients and its original queue
//! time, and a damaged file is moved to `quarantine/` with the reason, never a panic.
//! Bounded: a message file's size, the number of messages and their total bytes.
//!
//! All calls block on the file system: the listener runs them on tokio's blocking pool. It
//! must not decide anything about delivery; the engine does.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ring::digest::{SHA256, SHA256_OUTPUT_LEN, digest};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::engine::{Injection, MESSAGE_SIZE_MAX_BYTES, RECIPIENTS_PER_MESSAGE_MAX};
use crate::time::Time;

/// The first bytes of every message file (the format's version is in the name).
const MAGIC: &[u8; 8] = b"PMTASIM1";
/// A journal record: recipient index (u32 LE), outcome, then this marker.
const RECORD_MARK: &[u8; 3] = b"ST\n";
const RECORD_BYTES: usize = 8;
/// Largest envelope header: 10,000 recipients of at most 256 bytes, with room to spare.
const HEADER_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Largest message file: the engine's message limit plus the header and framing.
pub const FILE_MAX_BYTES: u64 = (MESSAGE_SIZE_MAX_BYTES + HEADER_MAX_BYTES + 64) as u64;
/// The marker file that says a directory is a pmta-sim spool.
const MARKER: &str = "pmta-sim-spool";

/// How much the spool may hold. Past a limit, [`Spool::store`] refuses (the listener
/// answers `452 4.3.1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpoolLimits {
    pub messages_max: usize,
    pub bytes_max: u64,
}

impl Default for SpoolLimits {
    fn default() -> SpoolLimits {
        SpoolLimits {
            messages_max: crate::engine::MESSAGES_MAX,
            bytes_max: 64 << 30,
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
    #[error("the spool is full ({0})")]
    Full(String),
    #[error("message of {0} bytes is over the spool's file limit")]
    TooLarge(u64),
    #[error("no message {0} in the spool")]
    Unknown(SpoolId),
    #[error("message {id} has no recipient {index}")]
    NoSuchRecipient { id: SpoolId, index: u32 },
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

#[derive(Serialize, Deserialize)]
struct Header {
    id: u64,
    queued_at_ms: u64,
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
    /// Ready for `Engine::inject`: only the unsettled recipients, `queued_at` set.
    pub injection: Injection,
    /// The spool's index of each of `injection.recipients`, for [`Spool::settle`].
    pub recipient_indices: Vec<u32>,
}

/// A file moved aside at start.
#[derive(Clone, Debug)]
pub struct Quarantined {
    pub file: PathBuf,
    pub moved_to: PathBuf,
    pub reason: String,
}

impl fmt::Display for Quarantined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spool: quarantined damaged file {} ({}); moved to {}",
            self.file.display(),
            self.reason,
            self.moved_to.display()
        )
    }
}

/// What [`Spool::open`] found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// In the order they were accepted.
    pub messages: Vec<Recovered>,
    pub quarantined: Vec<Quarantined>,
    /// Writes that never finished (their messages were never acknowledged), deleted.
    pub unfinished_removed: usize,
    /// Messages whose every recipient was settled, removed now.
    pub settled_removed: usize,
}

struct Open {
    /// Spool indices of the recipients not yet settled.
    pending: Vec<u32>,
    recipients: u32,
    bytes: u64,
}

struct State {
    next_id: u64,
    bytes: u64,
    reserved: usize,
    open: BTreeMap<u64, Open>,
}

pub struct Spool {
    dir: PathBuf,
    limits: SpoolLimits,
    sync: SpoolSync,
    state: Mutex<State>,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir` and recovers what it holds.
    pub fn open(
        dir: &Path,
        limits: SpoolLimits,
        sync: SpoolSync,
    ) -> Result<(Spool, Recovery), SpoolError> {
        prepare(dir)?;
        let mut recovery = Recovery::default();
        let tmp = dir.join("tmp");
        for entry in sorted_entries(&tmp)? {
            fs::remove_file(&entry).map_err(io_error(&entry))?;
            recovery.unfinished_removed += 1;
        }
        // Ids grow across restarts even when the spool was emptied: they start above the
        // wall clock's milliseconds × 4096 (room for 4,096 messages a millisecond).
        let mut state = State {
            next_id: super::wall_clock()
                .since(Time::from_ms(0))
                .saturating_mul(4096),
            bytes: 0,
            reserved: 0,
            open: BTreeMap::new(),
        };
        let mut found = Vec::new();
        for shard in 0..=255u8 {
            let shard_dir = dir.join("q").join(format!("{shard:02x}"));
            for path in sorted_entries(&shard_dir)? {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
                let id = u64::from_str_radix(stem, 16)
                    .ok()
                    .filter(|_| stem.len() == 16);
                match (id, ext) {
                    (Some(id), "msg") => found.push((id, path)),
                    // A journal without its message: the message was removed.
                    (Some(id), "jnl") if !path.with_extension("msg").exists() => {
                        fs::remove_file(&path).map_err(io_error(&path))?;
                        state.next_id = state.next_id.max(id + 1);
                    }
                    (Some(_), "jnl") => {}
                    _ => {
                        recovery
                            .quarantined
                            .push(quarantine(dir, &path, "not a spool file name")?)
                    }
                }
            }
        }
        found.sort();
        for (id, path) in found {
            state.next_id = state.next_id.max(id + 1);
            let header_and_data = match read_message(&path, id) {
                Ok(message) => message,
                Err(reason) => {
                    recovery.quarantined.push(quarantine(dir, &path, &reason)?);
                    let journal = path.with_extension("jnl");
                    if journal.exists() {
                        recovery.quarantined.push(quarantine(
                            dir,
                            &journal,
                            "journal of a damaged message",
                        )?);
                    }
                    continue;
                }
            };
            let (header, data, bytes) = header_and_data;
            let journal = path.with_extension("jnl");
            let settled = match read_journal(&journal, header.recipients.len()) {
                Ok(settled) => settled,
                Err(reason) => {
                    // The message is whole; without its journal every recipient is sent
                    // again (duplicates rather than losses).
                    recovery
                        .quarantined
                        .push(quarantine(dir, &journal, &reason)?);
                    vec![false; header.recipients.len()]
                }
            };
            let pending: Vec<u32> = (0..header.recipients.len() as u32)
                .filter(|&i| !settled[i as usize])
                .collect();
            if pending.is_empty() {
                remove_message(&path)?;
                recovery.settled_removed += 1;
                continue;
            }
            state.bytes += bytes;
            let injection = Injection {
                mail_from: header.mail_from,
                recipients: pending
                    .iter()
                    .map(|&i| header.recipients[i as usize].clone())
                    .collect(),
                data: data.into(),
                virtual_mta: header.virtual_mta,
                source_ip: header.source_ip,
                job_id: header.job_id,
                env_id: header.env_id,
                queued_at: Some(Time::from_ms(header.queued_at_ms)),
            };
            state.open.insert(
                id,
                Open {
                    pending: pending.clone(),
                    recipients: header.recipients.len() as u32,
                    bytes,
                },
            );
            recovery.messages.push(Recovered {
                id: SpoolId(id),
                injection,
                recipient_indices: pending,
            });
        }
        let spool = Spool {
            dir: dir.to_path_buf(),
            limits,
            sync,
            state: Mutex::new(state),
        };
        Ok((spool, recovery))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Messages held (with recipients not yet settled).
    pub fn len(&self) -> usize {
        self.lock().open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the message files held.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Whether one more message of `bytes` fits in the limits now.
    pub fn has_room(&self, bytes: u64) -> bool {
        let state = self.lock();
        self.room(&state, bytes).is_ok()
    }

    fn room(&self, state: &State, bytes: u64) -> Result<(), SpoolError> {
        if state.open.len() + state.reserved >= self.limits.messages_max {
            return Err(SpoolError::Full(format!(
                "{} messages, the limit",
                self.limits.messages_max
            )));
        }
        if state.bytes + bytes > self.limits.bytes_max {
            return Err(SpoolError::Full(format!(
                "{} bytes held, limit {}",
                state.bytes, self.limits.bytes_max
            )));
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock left plain counters behind; they are still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes a message; when this returns `Ok`, it is on disk (synced, with
    /// `sync-msg-create`) and survives a crash, and the `250` may be sent.
    pub fn store(&self, message: &NewMessage<'_>) -> Result<SpoolId, SpoolError> {
        let id;
        let file = encode(message, {
            let mut state = self.lock();
            id = state.next_id;
            state.next_id += 1;
            id
        })?;
        let bytes = file.len() as u64;
        if bytes > FILE_MAX_BYTES {
            return Err(SpoolError::TooLarge(bytes));
        }
        {
            let mut state = self.lock();
            self.room(&state, bytes)?;
            state.reserved += 1;
            state.bytes += bytes;
        }
        let result = self.write(id, &file);
        let mut state = self.lock();
        state.reserved -= 1;
        match result {
            Ok(()) => {
                state.open.insert(
                    id,
                    Open {
                        pending: (0..message.recipients.len() as u32).collect(),
                        recipients: message.recipients.len() as u32,
                        bytes,
                    },
                );
                Ok(SpoolId(id))
            }
            Err(error) => {
                state.bytes -= bytes;
                Err(error)
            }
        }
    }

    fn write(&self, id: u64, bytes: &[u8]) -> Result<(), SpoolError> {
        let name = format!("{id:016x}.msg");
        let tmp = self.dir.join("tmp").join(&name);
        let shard = self.shard_dir(id);
        let result = (|| {
            let mut file = File::create(&tmp).map_err(io_error(&tmp))?;
            file.write_all(bytes).map_err(io_error(&tmp))?;
            if self.sync.create {
                file.sync_data().map_err(io_error(&tmp))?;
            }
            let target = shard.join(&name);
            fs::rename(&tmp, &target).map_err(io_error(&target))?;
            if self.sync.create {
                sync_dir(&shard)?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn shard_dir(&self, id: u64) -> PathBuf {
        self.dir.join("q").join(format!("{:02x}", id & 0xff))
    }

    /// Records that recipient `index` of message `id` is settled. Returns true when that
    /// was its last open recipient: the message is then removed from the spool (and the id
    /// is unknown from then on). Settling a recipient twice is harmless.
    pub fn settle(&self, id: SpoolId, index: u32, outcome: Outcome) -> Result<bool, SpoolError> {
        let mut state = self.lock();
        let open = state.open.get_mut(&id.0).ok_or(SpoolError::Unknown(id))?;
        if index >= open.recipients {
            return Err(SpoolError::NoSuchRecipient { id, index });
        }
        let Some(position) = open.pending.iter().position(|&i| i == index) else {
            return Ok(false);
        };
        let last = open.pending.len() == 1;
        let message = self.shard_dir(id.0).join(format!("{id}.msg"));
        if last {
            let bytes = open.bytes;
            state.open.remove(&id.0);
            state.bytes -= bytes;
            drop(state);
            remove_message(&message)?;
            return Ok(true);
        }
        open.pending.remove(position);
        drop(state);
        let journal = message.with_extension("jnl");
        let mut record = [0u8; RECORD_BYTES];
        record[..4].copy_from_slice(&index.to_le_bytes());
        record[4] = match outcome {
            Outcome::Delivered => b'd',
            Outcome::Bounced => b'b',
        };
        record[5..].copy_from_slice(RECORD_MARK);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal)
            .map_err(io_error(&journal))?;
        file.write_all(&record).map_err(io_error(&journal))?;
        if self.sync.update {
            file.sync_data().map_err(io_error(&journal))?;
        }
        Ok(false)
    }
}

/// Creates the layout (marker, `tmp/`, `q/00..ff/`, `quarantine/`), refusing a non-empty
/// directory that is not a spool.
fn prepare(dir: &Path) -> Result<(), SpoolError> {
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let marker = dir.join(MARKER);
    if !marker.exists() {
        let mut entries = fs::read_dir(dir).map_err(io_error(dir))?;
        if entries.next().is_some() {
            return Err(SpoolError::NotASpool(dir.to_path_buf()));
        }
        for shard in 0..=255u8 {
            let path = dir.join("q").join(format!("{shard:02x}"));
            fs::create_dir_all(&path).map_err(io_error(&path))?;
        }
        for sub in ["tmp", "quarantine"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(io_error(&path))?;
        }
        sync_dir(&dir.join("q"))?;
        let mut file = File::create(&marker).map_err(io_error(&marker))?;
        file.write_all(b"pmta-sim spool, format 1\n")
            .map_err(io_error(&marker))?;
        file.sync_all().map_err(io_error(&marker))?;
        sync_dir(dir)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, SpoolError> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        entries.push(entry.map_err(io_error(dir))?.path());
    }
    entries.sort();
    Ok(entries)
}

fn remove_message(message: &Path) -> Result<(), SpoolError> {
    // The message first: a journal left alone is an orphan, removed at the next start.
    fs::remove_file(message).map_err(io_error(message))?;
    let journal = message.with_extension("jnl");
    match fs::remove_file(&journal) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(&journal)(e)),
        _ => Ok(()),
    }
}

fn quarantine(dir: &Path, path: &Path, reason: &str) -> Result<Quarantined, SpoolError> {
    let name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let moved_to = dir.join("quarantine").join(name);
    fs::rename(path, &moved_to).map_err(io_error(path))?;
    Ok(Quarantined {
        file: path.to_path_buf(),
        moved_to,
        reason: reason.to_string(),
    })
}

/// `MAGIC, header length (u32), header (JSON), data length (u64), data, SHA-256`.
fn encode(message: &NewMessage<'_>, id: u64) -> Result<Vec<u8>, SpoolError> {
    let header = Header {
        id,
        queued_at_ms: message.queued_at.since(Time::from_ms(0)),
        mail_from: message.mail_from.to_string(),
        recipients: message.recipients.to_vec(),
        source_ip: message.source_ip,
        virtual_mta: message.virtual_mta.map(str::to_string),
        job_id: message.job_id.to_string(),
        env_id: message.env_id.to_string(),
    };
    let header = serde_json::to_vec(&header).expect("a header always serializes");
    if header.len() > HEADER_MAX_BYTES || message.recipients.len() > RECIPIENTS_PER_MESSAGE_MAX {
        return Err(SpoolError::TooLarge(header.len() as u64));
    }
    let mut file = Vec::with_capacity(8 + 4 + header.len() + 8 + message.data.len() + 32);
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&(header.len() as u32).to_le_bytes());
    file.extend_from_slice(&header);
    file.extend_from_slice(&(message.data.len() as u64).to_le_bytes());
    file.extend_from_slice(message.data);
    let sum = digest(&SHA256, &file);
    file.extend_from_slice(sum.as_ref());
    Ok(file)
}

/// Reads and checks one message file; the error is the reason to quarantine it.
fn read_message(path: &Path, id: u64) -> Result<(Header, Vec<u8>, u64), String> {
    let mut file = File::open(path).map_err(|e| format!("unreadable: {e}"))?;
    let len = file
        .metadata()
        .map_err(|e| format!("unreadable: {e}"))?
        .len();
    if len > FILE_MAX_BYTES {
        return Err(format!("{len} bytes, over the limit of {FILE_MAX_BYTES}"));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.read_to_end(&mut bytes)
        .map_err(|e| format!("unreadable: {e}"))?;
    let body_len = bytes
        .len()
        .checked_sub(SHA256_OUTPUT_LEN)
        .ok_or("shorter than its checksum")?;
    let (body, sum) = bytes.split_at(body_len);
    if digest(&SHA256, body).as_ref() != sum {
        return Err("checksum mismatch (truncated or altered)".into());
    }
    let rest = body
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not a spool message (bad magic)")?;
    let (len_bytes, rest) = rest.split_at_checked(4).ok_or("truncated header")?;
    let header_len = u32::from_le_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
    let (header, rest) = rest
        .split_at_checked(header_len)
        .ok_or("truncated header")?;
    let header: Header = serde_json::from_slice(header).map_err(|e| format!("bad header: {e}"))?;
    let (len_bytes, data) = rest.split_at_checked(8).ok_or("truncated data length")?;
    let data_len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
    if data_len != data.len() as u64 {
        return Err("data length does not match".into());
    }
    if header.id != id {
        return Err(format!("holds message {:016x}, not {id:016x}", header.id));
    }
    if header.recipients.is_empty() || header.recipients.len() > RECIPIENTS_PER_MESSAGE_MAX {
        return Err(format!("{} recipients", header.recipients.len()));
    }
    Ok((header, data.to_vec(), len))
}

/// Which recipients the journal settles. A record cut short by a crash is ignored (it was
/// never complete); anything else unexpected is damage.
fn read_journal(path: &Path, recipients: usize) -> Result<Vec<bool>, String> {
    let mut settled = vec![false; recipients];
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(settled),
        Err(e) => return Err(format!("unreadable journal: {e}")),
    };
    if bytes.len() > recipients * RECORD_BYTES * 2 + RECORD_BYTES {
        return Err(format!(
            "journal of {} bytes for {recipients} recipients",
            bytes.len()
        ));
    }
    for record in bytes.chunks_exact(RECORD_BYTES) {
        let index = u32::from_le_bytes(record[..4].try_into().expect("4 bytes")) as usize;
        if &record[5..] != RECORD_MARK || !matches!(record[4], b'd' | b'b') || index >= recipients {
            return Err("malformed journal record".into());
        }
        settled[index] = true;
    }
    Ok(settled)
}
