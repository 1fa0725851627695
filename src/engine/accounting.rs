//! Accounting records, PowerMTA's `acct-file` format: one CSV row per delivery outcome.
//!
//! Owns the record types (`d` delivered, `b` bounced, `t` transient per recipient, `tq`
//! transient for the queue, `f` feedback), their fields in PowerMTA's default header order,
//! the file's format as an `<acct-file>` block sets it ([`AcctFormat`]: which record types,
//! which fields) and the CSV writer. Existing PowerMTA log tooling reads the output
//! unchanged. Timestamps are the engine's `now` (simulated time in simulation).

use std::io;

use super::settings::AcctFileSettings;
use crate::config::Config;
use crate::time::Time;

/// PowerMTA's default accounting header, in order.
pub use crate::config::value::ACCT_DEFAULT_FIELDS as HEADER;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordType {
    /// `d`: delivered (accepted by the remote server).
    Delivered,
    /// `b`: bounced (permanent failure or expired).
    Bounced,
    /// `t`: a transient failure of one recipient; it stays queued.
    Transient,
    /// `tq`: a transient failure of the whole queue (connection, greeting, DNS).
    TransientQueue,
    /// `f`: a feedback-loop complaint about a delivered message (never seen over SMTP; in
    /// simulation the provider model reports it).
    Feedback,
}

impl RecordType {
    /// Every type the engine (or, for `f`, a simulated provider) writes.
    pub const ALL: [RecordType; 5] = [
        RecordType::Delivered,
        RecordType::Bounced,
        RecordType::Transient,
        RecordType::TransientQueue,
        RecordType::Feedback,
    ];

    pub fn code(self) -> &'static str {
        match self {
            RecordType::Delivered => "d",
            RecordType::Bounced => "b",
            RecordType::Transient => "t",
            RecordType::TransientQueue => "tq",
            RecordType::Feedback => "f",
        }
    }

    /// RFC 3464 action.
    pub fn dsn_action(self) -> &'static str {
        match self {
            RecordType::Delivered => "relayed",
            RecordType::Bounced => "failed",
            RecordType::Transient | RecordType::TransientQueue => "delayed",
            RecordType::Feedback => "",
        }
    }
}

/// Where in the SMTP conversation the reply behind a record came (not one of PowerMTA's
/// fields: it goes to `run.json`, so a report can say where a provider said no).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReplyPhase {
    /// No reply: the connection could not be opened, or timed out before the greeting.
    Connect,
    Greeting,
    /// EHLO, or the HELO that followed a refused EHLO.
    Ehlo,
    StartTls,
    Mail,
    Rcpt,
    Data,
    /// The reply to the end of the message data.
    DataEnd,
    Rset,
}

impl ReplyPhase {
    pub fn name(self) -> &'static str {
        match self {
            ReplyPhase::Connect => "connect",
            ReplyPhase::Greeting => "greeting",
            ReplyPhase::Ehlo => "ehlo",
            ReplyPhase::StartTls => "starttls",
            ReplyPhase::Mail => "mail",
            ReplyPhase::Rcpt => "rcpt",
            ReplyPhase::Data => "data",
            ReplyPhase::DataEnd => "data_end",
            ReplyPhase::Rset => "rset",
        }
    }
}

/// One accounting record. Empty strings are written as empty fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcctRecord {
    pub record_type: RecordType,
    pub time_logged: Time,
    pub time_queued: Time,
    pub orig: String,
    pub rcpt: String,
    pub orcpt: String,
    /// Enhanced status, `2.0.0`.
    pub dsn_status: String,
    /// `smtp;250 2.0.0 OK`, or the local reason for a failure with no reply.
    pub dsn_diag: String,
    /// The remote host that answered (or was tried).
    pub dsn_mta: String,
    pub bounce_category: String,
    /// `smtp` for SMTP injection, `api` for the simulator's workload.
    pub src_type: String,
    pub src_mta: String,
    pub dlv_type: String,
    pub dlv_source_ip: String,
    pub dlv_destination_ip: String,
    /// The ESMTP extensions the remote offered, comma-separated.
    pub dlv_esmtp_available: String,
    pub dlv_size: u64,
    pub vmta: String,
    pub job_id: String,
    pub env_id: String,
    /// `domain/vmta`.
    pub queue: String,
    pub vmta_pool: String,
    /// Where the reply came (`None` for outcomes the engine decided itself: expiry, DNS,
    /// local delivery). Not written to the file.
    pub phase: Option<ReplyPhase>,
}

impl AcctRecord {
    /// The value of the accounting field `name`: one of [`HEADER`], or
    /// `totalSecondsQueued`; every other field PowerMTA knows (`timeFirstAttempt`,
    /// `header_NAME`, the `f` record's own) is empty here.
    pub fn field(&self, name: &str) -> String {
        match HEADER.iter().position(|h| *h == name) {
            Some(index) => self.fields()[index].clone(),
            None if name == "totalSecondsQueued" => self
                .time_logged
                .unix_secs()
                .saturating_sub(self.time_queued.unix_secs())
                .to_string(),
            None => String::new(),
        }
    }

    /// The fields in [`HEADER`] order.
    pub fn fields(&self) -> [String; 23] {
        [
            self.record_type.code().to_string(),
            self.time_logged.acct_format(),
            self.time_queued.acct_format(),
            self.orig.clone(),
            self.rcpt.clone(),
            self.orcpt.clone(),
            self.record_type.dsn_action().to_string(),
            self.dsn_status.clone(),
            self.dsn_diag.clone(),
            self.dsn_mta.clone(),
            self.bounce_category.clone(),
            self.src_type.clone(),
            self.src_mta.clone(),
            self.dlv_type.clone(),
            self.dlv_source_ip.clone(),
            self.dlv_destination_ip.clone(),
            self.dlv_esmtp_available.clone(),
            self.dlv_size.to_string(),
            self.vmta.clone(),
            self.job_id.clone(),
            self.env_id.clone(),
            self.queue.clone(),
            self.vmta_pool.clone(),
        ]
    }
}

/// What the accounting file holds: which record types, and which columns each fills.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcctFormat {
    types: Vec<RecordType>,
    /// The file's columns after `type`: every field of every type written, in order of
    /// first appearance (PowerMTA: "all the possible columns from the selected records").
    columns: Vec<String>,
    /// Per type, whether it fills each column (a type that does not leaves it empty).
    fills: Vec<(RecordType, Vec<bool>)>,
    /// Every type with the default fields: rows are [`AcctRecord::fields`] as they are.
    default_fields: bool,
}

impl AcctFormat {
    /// Every record type with PowerMTA's default fields: the file of a configuration
    /// without `<acct-file>` (a simulation is for seeing the deferrals, so `t`, `tq` and `f`
    /// are written too).
    pub fn all() -> AcctFormat {
        AcctFormat {
            types: RecordType::ALL.to_vec(),
            columns: HEADER[1..].iter().map(|h| h.to_string()).collect(),
            fills: Vec::new(),
            default_fields: true,
        }
    }

    /// The format of the configuration's first `<acct-file>` block (`records`, default
    /// `d,b`; `record-fields` per type, default the 23 fields), or [`AcctFormat::all`]
    /// without one. Types pmta-sim never writes (`r`, `rb`, `rs`) add no rows.
    pub fn from_config(config: &Config) -> AcctFormat {
        let Some(block) = config.acct_files.first() else {
            return AcctFormat::all();
        };
        AcctFormat::of(&AcctFileSettings::read(&block.settings, None))
    }

    fn of(settings: &AcctFileSettings) -> AcctFormat {
        let types: Vec<RecordType> = RecordType::ALL
            .into_iter()
            .filter(|t| settings.records.contains(&t.code()))
            .collect();
        let mut columns: Vec<String> = Vec::new();
        let mut per_type: Vec<(RecordType, Vec<String>)> = Vec::new();
        // Columns in the order of `records`, each type's fields in the order written.
        for code in &settings.records {
            let Some(kind) = types.iter().find(|t| t.code() == *code) else {
                continue;
            };
            let written = settings
                .record_fields
                .iter()
                .rev()
                .find(|(c, _)| c == code)
                .map(|(_, fields)| fields.clone());
            let mut fields: Vec<String> = Vec::new();
            for field in written.unwrap_or_else(|| vec!["*".to_string()]) {
                let expanded: Vec<String> = if field == "*" {
                    HEADER[1..].iter().map(|h| h.to_string()).collect()
                } else if field == "type" {
                    // Always the first column, whatever the list says.
                    Vec::new()
                } else {
                    vec![field]
                };
                for f in expanded {
                    if !fields.contains(&f) {
                        fields.push(f);
                    }
                }
            }
            for f in &fields {
                if !columns.contains(f) {
                    columns.push(f.clone());
                }
            }
            per_type.push((*kind, fields));
        }
        let default_fields = columns
            .iter()
            .map(String::as_str)
            .eq(HEADER[1..].iter().copied())
            && per_type.iter().all(|(_, f)| f.len() == HEADER.len() - 1);
        let fills = per_type
            .into_iter()
            .map(|(kind, fields)| (kind, columns.iter().map(|c| fields.contains(c)).collect()))
            .collect();
        AcctFormat {
            types,
            columns,
            fills,
            default_fields,
        }
    }

    /// Whether records of this type are written.
    pub fn writes(&self, kind: RecordType) -> bool {
        self.types.contains(&kind)
    }

    /// The header line's fields.
    pub fn header(&self) -> Vec<&str> {
        std::iter::once("type")
            .chain(self.columns.iter().map(String::as_str))
            .collect()
    }

    /// A record's row.
    fn row(&self, record: &AcctRecord) -> Vec<String> {
        if self.default_fields {
            return record.fields().to_vec();
        }
        let fills = self
            .fills
            .iter()
            .find(|(kind, _)| *kind == record.record_type)
            .map(|(_, fills)| fills.as_slice())
            .unwrap_or(&[]);
        std::iter::once(record.record_type.code().to_string())
            .chain(self.columns.iter().enumerate().map(|(i, column)| {
                if fills.get(i).copied().unwrap_or(false) {
                    record.field(column)
                } else {
                    String::new()
                }
            }))
            .collect()
    }
}

/// Writes records as PowerMTA's CSV: the header once, then one row per record of a type
/// the format writes.
pub struct CsvWriter<W: io::Write> {
    inner: csv::Writer<W>,
    format: AcctFormat,
}

impl<W: io::Write> CsvWriter<W> {
    /// Every record type with the default fields ([`AcctFormat::all`]).
    pub fn new(out: W) -> io::Result<CsvWriter<W>> {
        CsvWriter::with_format(out, AcctFormat::all())
    }

    pub fn with_format(out: W, format: AcctFormat) -> io::Result<CsvWriter<W>> {
        let mut inner = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(out);
        inner
            .write_record(format.header())
            .map_err(io::Error::other)?;
        Ok(CsvWriter { inner, format })
    }

    /// A writer that continues a file which already has its header (written in `format`).
    pub fn without_header(out: W, format: AcctFormat) -> CsvWriter<W> {
        CsvWriter {
            inner: csv::WriterBuilder::new()
                .terminator(csv::Terminator::CRLF)
                .from_writer(out),
            format,
        }
    }

    /// Writes out the rows buffered so far.
    pub fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }

    pub fn get_ref(&self) -> &W {
        self.inner.get_ref()
    }

    /// Writes the record, if the format keeps its type.
    pub fn write(&mut self, record: &AcctRecord) -> io::Result<()> {
        if !self.format.writes(record.record_type) {
            return Ok(());
        }
        self.inner
            .write_record(self.format.row(record))
            .map_err(io::Error::other)
    }

    pub fn finish(self) -> io::Result<W> {
        self.inner
            .into_inner()
            .map_err(|e| io::Error::other(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AcctRecord {
        AcctRecord {
            record_type: RecordType::Delivered,
            time_logged: Time::from_secs(1_789_992_000),
            time_queued: Time::from_secs(1_789_991_940),
            orig: "b@example.com".into(),
            rcpt: "u0@gmail.com".into(),
            orcpt: String::new(),
            dsn_status: "2.0.0".into(),
            dsn_diag: "smtp;250 2.0.0 OK, \"queued\"".into(),
            dsn_mta: "mx.gmail.com".into(),
            bounce_category: String::new(),
            src_type: "api".into(),
            src_mta: String::new(),
            dlv_type: "smtp".into(),
            dlv_source_ip: "192.0.2.10".into(),
            dlv_destination_ip: "142.250.1.1".into(),
            dlv_esmtp_available: "PIPELINING,8BITMIME".into(),
            dlv_size: 1234,
            vmta: "vmta1".into(),
            job_id: "job0".into(),
            env_id: String::new(),
            queue: "gmail.com/vmta1".into(),
            vmta_pool: "pool1".into(),
            phase: Some(ReplyPhase::DataEnd),
        }
    }

    #[test]
    fn csv_row_has_every_default_field_in_order() {
        let record = record();
        let mut writer = CsvWriter::new(Vec::new()).unwrap();
        writer.write(&record).unwrap();
        let text = String::from_utf8(writer.finish().unwrap()).unwrap();
        let mut lines = text.split("\r\n");
        assert_eq!(lines.next().unwrap(), HEADER.join(","));
        assert_eq!(
            lines.next().unwrap(),
            "d,2026-09-21 12:00:00+0000,2026-09-21 11:59:00+0000,b@example.com,u0@gmail.com,,relayed,2.0.0,\"smtp;250 2.0.0 OK, \"\"queued\"\"\",mx.gmail.com,,api,,smtp,192.0.2.10,142.250.1.1,\"PIPELINING,8BITMIME\",1234,vmta1,job0,,gmail.com/vmta1,pool1"
        );
    }

    /// The file an `<acct-file>` block describes, with these records written to it.
    fn written(block: &str, records: &[AcctRecord]) -> Vec<String> {
        let text = format!("<acct-file /var/log/pmta/acct.csv>\n{block}</acct-file>\n");
        let fs = crate::config::MemFs::new().with("/c", text.as_bytes());
        let checked = crate::config::load(std::path::Path::new("/c"), &fs, Default::default())
            .expect("readable");
        assert_eq!(checked.error_count(), 0, "{:?}", checked.diagnostics);
        let format = AcctFormat::from_config(&checked.config);
        let mut writer = CsvWriter::with_format(Vec::new(), format).unwrap();
        for r in records {
            writer.write(r).unwrap();
        }
        let text = String::from_utf8(writer.finish().unwrap()).unwrap();
        text.split_terminator("\r\n").map(str::to_string).collect()
    }

    fn transient() -> AcctRecord {
        AcctRecord {
            record_type: RecordType::Transient,
            dsn_status: "4.7.28".into(),
            ..record()
        }
    }

    /// Reference §2.4: `records` defaults to `d,b` in an `<acct-file>` block; the other
    /// types are not written.
    #[test]
    fn an_acct_file_block_writes_only_d_and_b_by_default() {
        let lines = written(" max-size 50M\n", &[record(), transient()]);
        assert_eq!(lines[0], HEADER.join(","));
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[1].starts_with("d,"));
    }

    /// `record-fields TYPE FIELDS`: the header holds every column of the selected types,
    /// in order of first appearance; a type fills only its own columns. `delivery` is the
    /// long name of `d`; `totalSecondsQueued` is the queued time in whole seconds.
    #[test]
    fn record_fields_choose_the_columns_of_each_type() {
        let lines = written(
            " records d,t\n record-fields delivery timeLogged,rcpt,totalSecondsQueued\n record-fields t rcpt,dsnStatus\n",
            &[record(), transient()],
        );
        assert_eq!(
            lines,
            [
                "type,timeLogged,rcpt,totalSecondsQueued,dsnStatus",
                "d,2026-09-21 12:00:00+0000,u0@gmail.com,60,",
                "t,,u0@gmail.com,,4.7.28",
            ]
        );
    }

    /// `*` is the default set: the reference's example `*,envId,jobId,bounceCat` names
    /// fields the default set has, so the file is PowerMTA's default file; an extra field
    /// adds a column the other types leave empty.
    #[test]
    fn a_star_stands_for_the_default_fields() {
        let lines = written(
            " records d,b\n record-fields delivery *,envId,jobId,bounceCat\n",
            &[record()],
        );
        assert_eq!(lines[0], HEADER.join(","));
        let lines = written(
            " records d,t\n record-fields d *,timeFirstAttempt\n",
            &[record(), transient()],
        );
        assert_eq!(lines[0], format!("{},timeFirstAttempt", HEADER.join(",")));
        assert!(lines[1].ends_with(",pool1,"), "{}", lines[1]);
        assert!(lines[2].starts_with("t,") && lines[2].ends_with(",pool1,"));
    }
}
