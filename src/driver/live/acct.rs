//! The live accounting file: the engine's records written as they happen to the config's
//! `<acct-file PATH>`, in PowerMTA's CSV format, with its rotation.
//!
//! Owns the open file and when it is moved aside: at every `move-interval` boundary
//! (counted from the epoch, so `1d` moves at midnight UTC, as PowerMTA does) and when it reaches `max-size`. A moved
//! file is renamed `NAME-YYYY-MM-DD-HHMM.EXT` into `move-to` (default: its own directory)
//! and a new file with a header takes its place. Rows are buffered and written out by
//! [`AcctLog::flush`] (the driver calls it after every batch of engine work), so a reader
//! tailing the file sees each outcome within one batch.
//!
//! Must not: decide what a record says (the engine does), which types and columns the file
//! has (`records`, `record-fields`: the engine's [`AcctFormat`], shared with the simulated
//! run's acct.csv) or read a clock (the driver passes `now`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::config::model::{Config, Value};
use crate::engine::accounting::{AcctFormat, AcctRecord, CsvWriter};
use crate::time::Time;

#[derive(Debug, Error)]
pub enum AcctError {
    #[error("accounting file `{path}`: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error(
        "<acct-file {0}>: writing to a program is not supported in live mode\n  = help: write to a file and have the program read it"
    )]
    Pipe(String),
}

/// What the configuration's `<acct-file>` block says (live mode writes the first one, as
/// the simulated run does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcctSettings {
    pub path: PathBuf,
    /// The record types and the columns of each (`records`, `record-fields`): the same
    /// [`AcctFormat`] the simulated run's acct.csv is written in.
    pub format: AcctFormat,
    pub move_interval_s: Option<u64>,
    pub max_size_bytes: Option<u64>,
    pub move_to: Option<PathBuf>,
}

impl AcctSettings {
    /// The settings of the configuration's first `<acct-file>` block, if it has one.
    pub fn from_config(config: &Config) -> Result<Option<AcctSettings>, AcctError> {
        let Some(block) = config.acct_files.first() else {
            return Ok(None);
        };
        if block.name.starts_with('|') {
            return Err(AcctError::Pipe(block.name.clone()));
        }
        let text = |name: &str| match block.settings.get(name).map(|s| &s.value) {
            Some(Value::Text(t)) => Some(t.clone()),
            _ => None,
        };
        Ok(Some(AcctSettings {
            path: PathBuf::from(&block.name),
            format: AcctFormat::from_config(config),
            move_interval_s: match block.settings.get("move-interval").map(|s| &s.value) {
                Some(Value::Interval(i)) if i.seconds > 0 => Some(i.seconds),
                _ => None,
            },
            max_size_bytes: match block.settings.get("max-size").map(|s| &s.value) {
                Some(Value::Size(size)) if size.bytes > 0 => Some(size.bytes),
                _ => None,
            },
            move_to: text("move-to").map(PathBuf::from),
        }))
    }
}

/// An open accounting file.
pub struct AcctLog {
    settings: AcctSettings,
    writer: CsvWriter<Counting>,
    /// When the current file was opened (for `move-interval`).
    opened: Time,
    /// Rows written since the last flush.
    dirty: bool,
}

/// The file, counting the bytes written to it (for `max-size`; the CSV writer's own buffer
/// of a few KiB is counted once it is written out).
struct Counting {
    file: File,
    bytes: u64,
}

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl AcctLog {
    /// Opens (appending to) the file; a new or empty file gets the header.
    pub fn open(settings: AcctSettings, now: Time) -> Result<AcctLog, AcctError> {
        let writer = open_writer(&settings.path, &settings.format)?;
        Ok(AcctLog {
            settings,
            writer,
            opened: now,
            dirty: false,
        })
    }

    pub fn settings(&self) -> &AcctSettings {
        &self.settings
    }

    /// Writes `record` if its type is one the file takes, moving the file aside first when
    /// it is due.
    pub fn write(&mut self, now: Time, record: &AcctRecord) -> Result<(), AcctError> {
        if !self.settings.format.writes(record.record_type) {
            return Ok(());
        }
        self.rotate_if_due(now)?;
        self.writer.write(record).map_err(self.io_error())?;
        self.dirty = true;
        Ok(())
    }

    /// Writes out the buffered rows, and moves the file aside when its interval is over.
    pub fn flush(&mut self, now: Time) -> Result<(), AcctError> {
        if self.dirty {
            self.writer.flush().map_err(self.io_error())?;
            self.dirty = false;
        }
        self.rotate_if_due(now)
    }

    fn io_error(&self) -> impl FnOnce(io::Error) -> AcctError + '_ {
        move |error| AcctError::Io {
            path: self.settings.path.clone(),
            error,
        }
    }

    fn rotate_if_due(&mut self, now: Time) -> Result<(), AcctError> {
        let by_time = self.settings.move_interval_s.is_some_and(|interval_s| {
            let interval_ms = interval_s.saturating_mul(1000);
            let boundary = (self.opened.ms / interval_ms + 1).saturating_mul(interval_ms);
            now.ms >= boundary
        });
        let by_size = self
            .settings
            .max_size_bytes
            .is_some_and(|max| self.writer.get_ref().bytes >= max);
        if by_time || by_size {
            self.rotate(now)?;
        }
        Ok(())
    }

    /// Moves the current file to `NAME-YYYY-MM-DD-HHMM.EXT` (a suffix `-N` if that is
    /// taken) and starts a new one.
    fn rotate(&mut self, now: Time) -> Result<(), AcctError> {
        self.writer.flush().map_err(self.io_error())?;
        let path = &self.settings.path;
        let dir = self
            .settings
            .move_to
            .clone()
            .or_else(|| path.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "acct".into());
        let ext = path
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        // `2026-09-21 12:00:00+0000` → `2026-09-21-1200`.
        let stamp = now.acct_format();
        let stamp = format!("{}-{}{}", &stamp[..10], &stamp[11..13], &stamp[14..16]);
        let mut target = dir.join(format!("{stem}-{stamp}{ext}"));
        let mut n = 1;
        while target.exists() {
            target = dir.join(format!("{stem}-{stamp}-{n}{ext}"));
            n += 1;
        }
        fs::create_dir_all(&dir).map_err(|error| AcctError::Io {
            path: dir.clone(),
            error,
        })?;
        fs::rename(path, &target).map_err(|error| AcctError::Io {
            path: target.clone(),
            error,
        })?;
        self.writer = open_writer(path, &self.settings.format)?;
        self.opened = now;
        self.dirty = false;
        Ok(())
    }
}

fn open_writer(path: &Path, format: &AcctFormat) -> Result<CsvWriter<Counting>, AcctError> {
    let io_error = |error| AcctError::Io {
        path: path.to_path_buf(),
        error,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_error)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_error)?;
    let bytes = file.metadata().map_err(io_error)?.len();
    let out = Counting { file, bytes };
    let mut writer = if bytes == 0 {
        CsvWriter::with_format(out, format.clone()).map_err(io_error)?
    } else {
        CsvWriter::without_header(out, format.clone())
    };
    // A new file shows its header at once (a reader may open it before the first row).
    writer.flush().map_err(io_error)?;
    Ok(writer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::accounting::RecordType;

    fn record(kind: RecordType, at: Time) -> AcctRecord {
        AcctRecord {
            record_type: kind,
            time_logged: at,
            time_queued: at,
            orig: "a@example.com".into(),
            rcpt: "b@example.net".into(),
            orcpt: String::new(),
            dsn_status: "2.0.0".into(),
            dsn_diag: "smtp;250 ok".into(),
            dsn_mta: "mx.example.net".into(),
            bounce_category: String::new(),
            src_type: "smtp".into(),
            src_mta: "client".into(),
            dlv_type: "smtp".into(),
            dlv_source_ip: "192.0.2.1".into(),
            dlv_destination_ip: "198.51.100.1".into(),
            dlv_esmtp_available: String::new(),
            dlv_size: 100,
            vmta: "v".into(),
            job_id: String::new(),
            env_id: String::new(),
            queue: "example.net/v".into(),
            vmta_pool: String::new(),
            phase: None,
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pmta-sim-acct-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The settings of `<acct-file DIR/acct.csv>` with `body` inside.
    fn settings_with(dir: &Path, body: &str) -> AcctSettings {
        let text = format!(
            "<acct-file {}>\n{body}</acct-file>\n",
            dir.join("acct.csv").display()
        );
        let fs = crate::config::MemFs::new().with("/c", text.as_bytes());
        let checked = crate::config::load(Path::new("/c"), &fs, Default::default()).unwrap();
        assert_eq!(checked.error_count(), 0, "{:?}", checked.diagnostics);
        AcctSettings::from_config(&checked.config).unwrap().unwrap()
    }

    fn settings(dir: &Path) -> AcctSettings {
        settings_with(dir, "records d,b\n")
    }

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn writes_the_record_types_asked_for_and_appends_after_a_restart() {
        let dir = temp("types");
        let at = Time::from_secs(1_790_000_000);
        let mut log = AcctLog::open(settings(&dir), at).unwrap();
        log.write(at, &record(RecordType::Delivered, at)).unwrap();
        log.write(at, &record(RecordType::Transient, at)).unwrap();
        log.flush(at).unwrap();
        drop(log);
        let mut log = AcctLog::open(settings(&dir), at).unwrap();
        log.write(at, &record(RecordType::Bounced, at)).unwrap();
        log.flush(at).unwrap();
        let lines = lines(&dir.join("acct.csv"));
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].starts_with("type,timeLogged"));
        assert!(lines[1].starts_with("d,"));
        assert!(lines[2].starts_with("b,"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn record_fields_choose_the_columns_as_in_the_simulated_run() {
        let dir = temp("fields");
        let at = Time::from_secs(1_790_000_000);
        let settings = settings_with(
            &dir,
            "records d,b\nrecord-fields d timeLogged,rcpt,dsnStatus\n",
        );
        let mut log = AcctLog::open(settings, at).unwrap();
        log.write(at, &record(RecordType::Delivered, at)).unwrap();
        log.flush(at).unwrap();
        let lines = lines(&dir.join("acct.csv"));
        // d's own columns first, then b's (the default set) not yet named.
        assert!(
            lines[0].starts_with("type,timeLogged,rcpt,dsnStatus,timeQueued,orig,"),
            "{lines:?}"
        );
        let row: Vec<&str> = lines[1].split(',').collect();
        assert_eq!(
            &row[..4],
            ["d", &at.acct_format(), "b@example.net", "2.0.0"]
        );
        assert!(row[4..].iter().all(|f| f.is_empty()), "{lines:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn moves_the_file_at_the_interval_boundary_and_at_max_size() {
        let dir = temp("rotate");
        let moved = dir.join("old");
        let mut by_time = settings(&dir);
        by_time.move_interval_s = Some(3600);
        by_time.move_to = Some(moved.clone());
        // 2026-09-21 12:59:59, then 13:00:00: the hour boundary moves the file.
        let before = Time::from_secs(1_789_995_599);
        let after = before.plus_secs(1);
        let mut log = AcctLog::open(by_time, before).unwrap();
        log.write(before, &record(RecordType::Delivered, before))
            .unwrap();
        log.flush(before).unwrap();
        log.flush(after).unwrap();
        let name = |t: Time| {
            let s = t.acct_format();
            format!("acct-{}-{}{}.csv", &s[..10], &s[11..13], &s[14..16])
        };
        let rotated = moved.join(name(after));
        assert_eq!(lines(&rotated).len(), 2, "{}", rotated.display());
        assert_eq!(
            lines(&dir.join("acct.csv")).len(),
            1,
            "a new file, header only"
        );

        let mut by_size = settings(&dir);
        by_size.max_size_bytes = Some(600);
        let mut log = AcctLog::open(by_size, after).unwrap();
        for _ in 0..20 {
            log.write(after, &record(RecordType::Delivered, after))
                .unwrap();
            log.flush(after).unwrap();
        }
        let moved_by_size: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                name.starts_with("acct-").then_some(name)
            })
            .collect();
        assert!(moved_by_size.len() >= 2, "{moved_by_size:?}");
        assert!(fs::metadata(dir.join("acct.csv")).unwrap().len() <= 600 + 200);
        fs::remove_dir_all(&dir).unwrap();
    }
}
