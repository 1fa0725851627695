//! Accounting records, PowerMTA's `acct-file` format: one CSV row per delivery outcome.
//!
//! Owns the record types (`d` delivered, `b` bounced, `t` transient per recipient, `tq`
//! transient for the queue), their fields in PowerMTA's default header order, and the CSV
//! writer. Existing PowerMTA log tooling reads the output unchanged. Timestamps are the
//! engine's `now` (simulated time in simulation).

use std::io;

use crate::time::Time;

/// PowerMTA's default accounting header, in order.
pub const HEADER: [&str; 23] = [
    "type",
    "timeLogged",
    "timeQueued",
    "orig",
    "rcpt",
    "orcpt",
    "dsnAction",
    "dsnStatus",
    "dsnDiag",
    "dsnMta",
    "bounceCat",
    "srcType",
    "srcMta",
    "dlvType",
    "dlvSourceIp",
    "dlvDestinationIp",
    "dlvEsmtpAvailable",
    "dlvSize",
    "vmta",
    "jobId",
    "envId",
    "queue",
    "vmtaPool",
];

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

/// Writes records as PowerMTA's CSV: the header once, then one row per record.
pub struct CsvWriter<W: io::Write> {
    inner: csv::Writer<W>,
}

impl<W: io::Write> CsvWriter<W> {
    pub fn new(out: W) -> io::Result<CsvWriter<W>> {
        let mut inner = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(out);
        inner.write_record(HEADER).map_err(io::Error::other)?;
        Ok(CsvWriter { inner })
    }

    /// A writer that continues a file which already has its header.
    pub fn without_header(out: W) -> CsvWriter<W> {
        CsvWriter {
            inner: csv::WriterBuilder::new()
                .terminator(csv::Terminator::CRLF)
                .from_writer(out),
        }
    }

    /// Writes out the rows buffered so far.
    pub fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }

    pub fn get_ref(&self) -> &W {
        self.inner.get_ref()
    }

    pub fn write(&mut self, record: &AcctRecord) -> io::Result<()> {
        self.inner
            .write_record(record.fields())
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

    #[test]
    fn csv_row_has_every_default_field_in_order() {
        let record = AcctRecord {
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
        };
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
}
