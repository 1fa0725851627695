//! The SMTP wire codec shared by the engine's client sessions and the simulated receivers.
//!
//! Owns the bytes: parsing replies incrementally (multi-line, enhanced status codes, with a
//! size limit), reading EHLO capabilities, formatting commands, and dot-stuffing message
//! data. Reply parsing is built on smtp-proto's `ResponseReceiver`. Pure: no I/O, no clock;
//! it must not know about queues, configs or providers.

pub mod server;

use std::fmt;

use thiserror::Error;

/// Most bytes of unparsed reply data held before the peer is declared broken. smtp-proto
/// already caps one reply's text at 4 KiB; this bounds what a misbehaving peer can make us
/// buffer between replies.
pub const REPLY_BUFFER_MAX_BYTES: usize = 64 * 1024;
/// Longest command line we write (RFC 5321 §4.5.3.1.4 allows 512 with CRLF).
pub const COMMAND_LINE_MAX_BYTES: usize = 512;

/// One SMTP reply: `550-5.1.1 first line\r\n550 5.1.1 last line\r\n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The enhanced status code (RFC 3463) when the server sent one, e.g. `[5, 1, 1]`.
    pub enhanced: Option<[u16; 3]>,
    /// The text lines, joined with `\n`, without codes.
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, enhanced: Option<[u16; 3]>, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced,
            text: text.into(),
        }
    }

    /// 2 positive, 3 intermediate, 4 transient, 5 permanent.
    pub fn class(&self) -> u16 {
        self.code / 100
    }

    pub fn is_positive(&self) -> bool {
        matches!(self.class(), 2 | 3)
    }

    /// `5.1.1` from the reply, or the basic class (`5.0.0`) when the server sent none.
    pub fn status(&self) -> String {
        match self.enhanced {
            Some([a, b, c]) => format!("{a}.{b}.{c}"),
            None => format!("{}.0.0", self.class()),
        }
    }

    /// The reply on one line, as logged and matched by patterns: `550 5.1.1 user unknown`.
    pub fn one_line(&self) -> String {
        let text = self.text.replace('\n', " ");
        match self.enhanced {
            Some(_) => format!("{} {} {}", self.code, self.status(), text),
            None => format!("{} {}", self.code, text),
        }
    }

    /// The reply in wire form, every line ending in CRLF.
    pub fn to_wire(&self) -> Vec<u8> {
        use std::io::Write as _;
        // Written in place: a simulated server answers every command with one of these.
        let mut out = Vec::with_capacity(self.text.len() + 16);
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let separator = if lines.peek().is_none() { ' ' } else { '-' };
            let written = match self.enhanced {
                Some([a, b, c]) => write!(out, "{}{separator}{a}.{b}.{c} {line}\r\n", self.code),
                None => write!(out, "{}{separator}{line}\r\n", self.code),
            };
            written.expect("writing to a Vec cannot fail");
        }
        out
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ReplyError {
    #[error("malformed reply: {0}")]
    Malformed(String),
    #[error("reply longer than the limit")]
    TooLong,
}

/// Incremental reply parser: feed bytes as they arrive, take replies as they complete.
#[derive(Default)]
pub struct ReplyParser {
    receiver: smtp_proto::response::parser::ResponseReceiver,
    pending: Vec<u8>,
    /// How far `pending` is known to hold no complete last line of a reply.
    scanned: usize,
}

impl ReplyParser {
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), ReplyError> {
        if self.pending.len() + bytes.len() > REPLY_BUFFER_MAX_BYTES {
            return Err(ReplyError::TooLong);
        }
        self.pending.extend_from_slice(bytes);
        Ok(())
    }

    /// The next complete reply, if the bytes fed so far hold one.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        if !self.has_last_line() {
            return Ok(None);
        }
        // Each attempt parses the buffered bytes from the start of a reply, so the complete
        // wire lines are at hand when it completes (the buffer is bounded, see `feed`).
        self.receiver.reset();
        let mut iter = self.pending.iter();
        let result = self.receiver.parse(&mut iter);
        let consumed = self.pending.len() - iter.len();
        match result {
            Ok(_) => {
                self.receiver.reset();
                let raw: Vec<u8> = self.pending.drain(..consumed).collect();
                self.scanned = 0;
                // smtp-proto frames the reply; its enhanced code is a u8 per part, and
                // RFC 3463 allows three digits (4.7.650), so the lines are read again here
                // (which also checks what smtp-proto does not: one code on every line).
                reply_from_lines(&raw).map(Some)
            }
            Err(smtp_proto::Error::NeedsMoreData { .. }) => Ok(None),
            Err(smtp_proto::Error::ResponseTooLong) => Err(ReplyError::TooLong),
            Err(other) => Err(ReplyError::Malformed(format!("{other:?}"))),
        }
    }
}

impl ReplyParser {
    /// Whether the buffer holds a complete line that ends a reply (`DDD text\r\n` or
    /// garbage: both are worth handing to the parser). Scans each byte once, so a reply
    /// trickling in a byte at a time costs linear, not quadratic, time.
    fn has_last_line(&mut self) -> bool {
        let mut line_start = self.pending[..self.scanned]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        while let Some(offset) = self.pending[self.scanned..]
            .iter()
            .position(|b| *b == b'\n')
        {
            let end = self.scanned + offset;
            let line = &self.pending[line_start..end];
            let continuation =
                line.len() >= 4 && line[..3].iter().all(u8::is_ascii_digit) && line[3] == b'-';
            self.scanned = end + 1;
            if !continuation {
                return true;
            }
            line_start = end + 1;
        }
        self.scanned = self.pending.len();
        false
    }
}

/// Builds a reply from its complete wire lines (`550-5.1.1 a\r\n550 5.1.1 b\r\n`). Every line
/// must carry the same code (RFC 5321 §4.2.1), every line but the last a `-` after it. A CR
/// is never part of the text (RFC 5321 §2.3.8 allows it only before LF): stray ones are dropped.
fn reply_from_lines(raw: &[u8]) -> Result<Reply, ReplyError> {
    let text = String::from_utf8_lossy(raw).replace('\r', "");
    let lines: Vec<&str> = text.split('\n').filter(|l| !l.is_empty()).collect();
    let Some(first) = lines.first() else {
        return Err(ReplyError::Malformed("an empty reply".into()));
    };
    let code_of = |line: &str| -> Option<u16> {
        let digits = line.get(..3)?;
        digits
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| digits.parse().ok())
            .flatten()
    };
    let code = code_of(first).ok_or_else(|| {
        ReplyError::Malformed(format!("`{first}` does not start with a reply code"))
    })?;
    if !(200..600).contains(&code) {
        return Err(ReplyError::Malformed(format!(
            "{code} is not a reply code (2xx, 3xx, 4xx or 5xx)"
        )));
    }
    let mut bodies = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        let last = index + 1 == lines.len();
        if code_of(line) != Some(code) {
            return Err(ReplyError::Malformed(format!(
                "line {} of a {code} reply starts `{}`: every line of a reply carries the same code",
                index + 1,
                line.get(..3).unwrap_or(line)
            )));
        }
        match line.as_bytes().get(3) {
            None | Some(b' ') if last => {}
            Some(b'-') if !last || lines.len() == 1 => {}
            _ => {
                return Err(ReplyError::Malformed(format!(
                    "line {} of a {code} reply: `{code}-` continues a reply, `{code} ` ends it",
                    index + 1
                )));
            }
        }
        bodies.push(line.get(4..).unwrap_or(""));
    }
    let enhanced = bodies
        .first()
        .and_then(|first| first.split(' ').next())
        .and_then(parse_status);
    let prefix = enhanced.map(|[a, b, c]| format!("{a}.{b}.{c}"));
    let body: Vec<&str> = bodies
        .iter()
        .map(|l| match &prefix {
            Some(p) if *l == p.as_str() => "",
            Some(p) => l
                .strip_prefix(p.as_str())
                .map_or(*l, |rest| rest.strip_prefix(' ').unwrap_or(rest)),
            None => l,
        })
        .collect();
    Ok(Reply::new(code, enhanced, body.join("\n")))
}

/// `4.7.650` → `[4, 7, 650]` (class 2, 4 or 5; subject and detail up to three digits).
fn parse_status(word: &str) -> Option<[u16; 3]> {
    let parts: Vec<&str> = word.split('.').collect();
    let [a, b, c] = parts.as_slice() else {
        return None;
    };
    let ok = |p: &str| !p.is_empty() && p.len() <= 3 && p.bytes().all(|d| d.is_ascii_digit());
    if !(ok(a) && ok(b) && ok(c) && matches!(*a, "2" | "4" | "5")) {
        return None;
    }
    Some([a.parse().ok()?, b.parse().ok()?, c.parse().ok()?])
}

impl fmt::Debug for ReplyParser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyParser")
            .field("pending_bytes", &self.pending.len())
            .finish()
    }
}

/// What a server offered in its EHLO reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub pipelining: bool,
    pub starttls: bool,
    pub eight_bit_mime: bool,
    pub enhanced_status_codes: bool,
    /// `SIZE n`: the largest message accepted, 0 when unlimited or unstated.
    pub size: Option<u64>,
    /// The keywords as offered, upper-cased, in order (for the accounting record).
    pub keywords: Vec<String>,
}

impl Capabilities {
    /// Reads the lines after the first of a 250 EHLO reply.
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in reply.text.split('\n').skip(1) {
            let mut words = line.split_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            let keyword = keyword.to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => caps.pipelining = true,
                "STARTTLS" => caps.starttls = true,
                "8BITMIME" => caps.eight_bit_mime = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                _ => {}
            }
            caps.keywords.push(keyword);
        }
        caps
    }
}

/// Commands the client writes. Each renders to one CRLF-terminated line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Ehlo(&'a str),
    Helo(&'a str),
    StartTls,
    MailFrom {
        address: &'a str,
        size: Option<u64>,
        eight_bit: bool,
    },
    RcptTo(&'a str),
    Data,
    Rset,
    Quit,
}

impl Command<'_> {
    pub fn write(&self, out: &mut Vec<u8>) {
        let start = out.len();
        match self {
            Command::Ehlo(host) => out.extend_from_slice(format!("EHLO {host}\r\n").as_bytes()),
            Command::Helo(host) => out.extend_from_slice(format!("HELO {host}\r\n").as_bytes()),
            Command::StartTls => out.extend_from_slice(b"STARTTLS\r\n"),
            Command::MailFrom {
                address,
                size,
                eight_bit,
            } => {
                out.extend_from_slice(format!("MAIL FROM:<{address}>").as_bytes());
                if let Some(size) = size {
                    out.extend_from_slice(format!(" SIZE={size}").as_bytes());
                }
                if *eight_bit {
                    out.extend_from_slice(b" BODY=8BITMIME");
                }
                out.extend_from_slice(b"\r\n");
            }
            Command::RcptTo(address) => {
                out.extend_from_slice(format!("RCPT TO:<{address}>\r\n").as_bytes())
            }
            Command::Data => out.extend_from_slice(b"DATA\r\n"),
            Command::Rset => out.extend_from_slice(b"RSET\r\n"),
            Command::Quit => out.extend_from_slice(b"QUIT\r\n"),
        }
        debug_assert!(
            out.len() - start <= COMMAND_LINE_MAX_BYTES,
            "addresses are validated at injection"
        );
    }
}

/// Message data as sent after DATA: line ends normalized to CRLF, lines starting with `.`
/// doubled (RFC 5321 §4.5.2), terminated by `.\r\n`.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    dot_stuff_parts(&[data])
}

/// [`dot_stuff`] of the parts one after the other, as if they were one buffer (a message's
/// own header block and the body it shares), without joining them first.
pub fn dot_stuff_parts(parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(len + len / 64 + 5);
    let mut stuffer = Stuffer::default();
    for part in parts {
        stuffer.push(&mut out, part);
    }
    stuffer.finish(&mut out);
    out
}

/// Dot-stuffing as a stream: parts pushed one after the other come out as [`dot_stuff`] of
/// their concatenation would. A part pushed when [`Stuffer::at_line_start`] is true stuffs
/// the same whatever came before it, which lets a body shared by many messages be stuffed
/// once and appended after each message's own header block.
#[derive(Clone, Copy, Debug)]
pub struct Stuffer {
    at_line_start: bool,
    previous: u8,
}

impl Default for Stuffer {
    fn default() -> Stuffer {
        Stuffer {
            at_line_start: true,
            previous: 0,
        }
    }
}

impl Stuffer {
    /// Appends `part`, CRLF-normalized and with leading dots doubled, to `out`.
    pub fn push(&mut self, out: &mut Vec<u8>, part: &[u8]) {
        out.reserve(part.len() + part.len() / 64);
        for &byte in part {
            if self.at_line_start && byte == b'.' {
                out.push(b'.');
            }
            if byte == b'\n' && self.previous != b'\r' {
                out.push(b'\r');
            }
            out.push(byte);
            self.at_line_start = byte == b'\n';
            self.previous = byte;
        }
    }

    /// Whether the next byte starts a line (nothing pushed yet, or the last byte was LF).
    pub fn at_line_start(&self) -> bool {
        self.at_line_start
    }

    /// Ends the data: a CRLF if the last line lacks one, then `.\r\n`.
    pub fn finish(self, out: &mut Vec<u8>) {
        if !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// Most bytes of a reply given as text (a reply read from a file or typed by a user).
pub const REPLY_TEXT_MAX_BYTES: usize = REPLY_BUFFER_MAX_BYTES;

/// Parses a reply written as text: one line (`550 5.1.1 text`, `550-5.1.1 text`, `550 text`)
/// or its wire lines (`550-5.7.26 a\r\n550 5.7.26 b`), with the checks of the wire parser.
pub fn parse_reply_text(text: &str) -> Result<Reply, ReplyError> {
    if text.len() > REPLY_TEXT_MAX_BYTES {
        return Err(ReplyError::TooLong);
    }
    reply_from_lines(text.trim().as_bytes())
}

/// Whether a message body needs 8BITMIME.
pub fn is_eight_bit(data: &[u8]) -> bool {
    data.iter().any(|b| *b >= 0x80)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<Reply> {
        let mut parser = ReplyParser::default();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk).unwrap();
            while let Some(reply) = parser.next_reply().unwrap() {
                out.push(reply);
            }
        }
        out
    }

    #[test]
    fn replies_parse_incrementally_across_chunk_boundaries() {
        let wire = b"220 mx.example.com ESMTP\r\n250-mx.example.com\r\n250-PIPELINING\r\n250-SIZE 35882577\r\n250 ENHANCEDSTATUSCODES\r\n550 5.1.1 user unknown\r\n";
        let whole = parse_all(&[wire]);
        for split in 1..wire.len() {
            let (a, b) = wire.split_at(split);
            assert_eq!(parse_all(&[a, b]), whole, "split at {split}");
        }
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0].code, 220);
        let caps = Capabilities::from_ehlo(&whole[1]);
        assert!(caps.pipelining && caps.enhanced_status_codes);
        assert_eq!(caps.size, Some(35_882_577));
        assert_eq!(whole[2].enhanced, Some([5, 1, 1]));
        assert_eq!(whole[2].one_line(), "550 5.1.1 user unknown");
    }

    #[test]
    fn three_digit_enhanced_codes_survive() {
        let replies = parse_all(&[
            b"451 4.7.650 The mail server [192.0.2.5] has been temporarily rate limited\r\n",
        ]);
        assert_eq!(replies[0].enhanced, Some([4, 7, 650]));
        assert_eq!(
            replies[0].one_line(),
            "451 4.7.650 The mail server [192.0.2.5] has been temporarily rate limited"
        );
        let plain = parse_all(&[b"421 Too many sessions opened\r\n"]);
        assert_eq!(
            (plain[0].enhanced, plain[0].text.as_str()),
            (None, "Too many sessions opened")
        );
    }

    #[test]
    fn reply_wire_form_round_trips() {
        let reply = Reply::new(421, Some([4, 7, 28]), "first line\nsecond line");
        assert_eq!(
            reply.to_wire(),
            b"421-4.7.28 first line\r\n421 4.7.28 second line\r\n".to_vec()
        );
        let parsed = parse_all(&[&reply.to_wire()]);
        assert_eq!(parsed[0].code, 421);
        assert_eq!(parsed[0].enhanced, Some([4, 7, 28]));
    }

    #[test]
    fn oversized_and_malformed_replies_are_errors() {
        let mut parser = ReplyParser::default();
        let long = vec![b'a'; REPLY_BUFFER_MAX_BYTES + 1];
        assert_eq!(parser.feed(&long), Err(ReplyError::TooLong));
        let mut parser = ReplyParser::default();
        parser.feed(b"hello there\r\n").unwrap();
        assert!(matches!(parser.next_reply(), Err(ReplyError::Malformed(_))));
    }

    #[test]
    fn a_reply_with_mismatched_codes_is_malformed() {
        let mut parser = ReplyParser::default();
        parser
            .feed(b"550-5.1.1 first\r\n451 5.1.1 second\r\n")
            .unwrap();
        let err = parser.next_reply().unwrap_err();
        assert!(
            matches!(&err, ReplyError::Malformed(m) if m.contains("line 2 of a 550 reply starts `451`")),
            "{err}"
        );
        assert!(parse_reply_text("550-5.1.1 a\n451 5.1.1 b").is_err());
        assert!(
            parse_reply_text("550-a\n550-b").is_err(),
            "the last line ends the reply"
        );
        assert!(parse_reply_text("999 nope").is_err());
    }

    #[test]
    fn carriage_returns_are_not_part_of_the_text() {
        let replies = parse_all(&[b"550 5.7.1 blocked\rby policy\r\n"]);
        assert_eq!(replies[0].text, "blockedby policy");
        let typed = parse_reply_text("550-5.7.26 first\r\n550 5.7.26 second\r\n").unwrap();
        assert_eq!(
            (typed.code, typed.enhanced, typed.text.as_str()),
            (550, Some([5, 7, 26]), "first\nsecond")
        );
        assert_eq!(
            parse_reply_text("421-4.7.0 one line").unwrap().text,
            "one line"
        );
    }

    #[test]
    fn dot_stuffing() {
        assert_eq!(
            dot_stuff(b"a\n.b\r\n..c"),
            b"a\r\n..b\r\n...c\r\n.\r\n".to_vec()
        );
        assert_eq!(dot_stuff(b".\r\n"), b"..\r\n.\r\n".to_vec());
        assert_eq!(dot_stuff(b""), b"\r\n.\r\n".to_vec());
        // Parts stuff as one buffer, whatever the boundary splits.
        let whole = b"a\n.b\r\n..c\n";
        for split in 0..whole.len() {
            let (x, y) = whole.split_at(split);
            assert_eq!(
                dot_stuff_parts(&[x, y]),
                dot_stuff(whole),
                "split at {split}"
            );
        }
    }

    #[test]
    fn commands() {
        let mut out = Vec::new();
        Command::MailFrom {
            address: "a@example.com",
            size: Some(1234),
            eight_bit: true,
        }
        .write(&mut out);
        Command::RcptTo("b@example.net").write(&mut out);
        assert_eq!(
            out,
            b"MAIL FROM:<a@example.com> SIZE=1234 BODY=8BITMIME\r\nRCPT TO:<b@example.net>\r\n"
                .to_vec()
        );
    }
}
