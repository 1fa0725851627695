//! The SMTP server session, sans-io: the receiving side of a conversation.
//!
//! Owns command parsing (smtp-proto's `RequestReceiver`, pipelining-safe), DATA with
//! dot-unstuffing (`DataReceiver`), AUTH PLAIN and LOGIN exchanges (RFC 4954), the order of
//! commands, the session's limits (message size, declared `SIZE`, recipients, data line
//! length, error count) and writing replies. What to answer is a [`ServerPolicy`]'s
//! decision: the simulated mailbox providers, the live listener and the test receivers
//! implement it. A reply with code 421 closes the session after it is written, as RFC 5321
//! §3.8 requires. Pure: no I/O, no clock (timeouts are the driver's: it asks
//! [`ServerSession::in_data`] which one applies).

use base64::Engine as _;
use smtp_proto::Request;
use smtp_proto::request::receiver::{DataReceiver, RequestReceiver};

use super::Reply;
use crate::time::Time;

/// Largest message a server session accepts before answering 552.
pub const MESSAGE_SIZE_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Most recipients per transaction a server session tracks.
pub const RECIPIENTS_MAX: usize = 10_000;
/// Longest AUTH continuation line (RFC 4954 §4 asks servers to take at least 12,288 octets).
pub const AUTH_LINE_MAX_BYTES: usize = 12_288;

/// AUTH mechanisms a session can run (smtp-proto's mechanism bits).
pub const AUTH_PLAIN: u64 = smtp_proto::AUTH_PLAIN;
pub const AUTH_LOGIN: u64 = smtp_proto::AUTH_LOGIN;

/// The limits one session enforces. The defaults are those of a plain receiver (the
/// simulated providers): no line-length or error limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Larger messages (or a larger declared `SIZE=`) are refused with `552 5.3.4`.
    pub message_size_max_bytes: usize,
    /// Further `RCPT`s in one transaction get `452 4.5.3`.
    pub recipients_max: usize,
    /// A message with a longer line (CRLF not counted) is refused at its end with
    /// `552 5.3.4`; `None` accepts any line length.
    pub data_line_max_bytes: Option<usize>,
    /// After this many error replies (4xx/5xx) without an accepted message the session
    /// answers `421 4.7.0` and closes; `None` never does.
    pub errors_max: Option<u32>,
}

impl Default for ServerLimits {
    fn default() -> ServerLimits {
        ServerLimits {
            message_size_max_bytes: MESSAGE_SIZE_MAX_BYTES,
            recipients_max: RECIPIENTS_MAX,
            data_line_max_bytes: None,
            errors_max: None,
        }
    }
}

/// One received transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    pub helo: String,
    pub mail_from: String,
    pub recipients: Vec<String>,
    pub tls: bool,
    /// The user name of a successful AUTH on this connection.
    pub authenticated: Option<String>,
}

/// What a server answers. Every method has the answer of a plain, accepting server.
pub trait ServerPolicy {
    /// The server's name at the start of the EHLO and HELO replies.
    fn host_name(&self) -> &str {
        "mx"
    }
    fn greeting(&mut self, _now: Time) -> Reply {
        Reply::new(220, None, "mx.example ESMTP")
    }
    /// The EHLO keywords offered (after the first line).
    fn capabilities(&mut self, tls: bool) -> Vec<String> {
        let mut caps = vec![
            "PIPELINING".to_string(),
            "8BITMIME".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
        ];
        if !tls {
            caps.push("STARTTLS".to_string());
        }
        caps
    }
    fn ehlo(&mut self, _now: Time, _host: &str) -> Option<Reply> {
        None
    }
    /// The answer to STARTTLS: a 220 makes the driver upgrade the connection.
    fn starttls(&mut self, _now: Time, _envelope: &Envelope) -> Reply {
        Reply::new(220, Some([2, 0, 0]), "Ready to start TLS")
    }
    /// Whether `AUTH mechanism` may start now: `None` starts the exchange, a reply refuses.
    fn auth(&mut self, _now: Time, _envelope: &Envelope, _mechanism: u64) -> Option<Reply> {
        Some(Reply::new(502, Some([5, 5, 1]), "command not implemented"))
    }
    /// Checks decoded credentials: a 235 authenticates the connection as `user`.
    fn authenticate(
        &mut self,
        _now: Time,
        _envelope: &Envelope,
        _user: &str,
        _password: &str,
    ) -> Reply {
        Reply::new(535, Some([5, 7, 8]), "authentication credentials invalid")
    }
    fn mail_from(&mut self, _now: Time, _envelope: &Envelope) -> Reply {
        Reply::new(250, Some([2, 1, 0]), "OK")
    }
    fn rcpt_to(&mut self, _now: Time, _envelope: &Envelope, _rcpt: &str) -> Reply {
        Reply::new(250, Some([2, 1, 5]), "OK")
    }
    fn data(&mut self, _now: Time, _envelope: &Envelope) -> Reply {
        Reply::new(354, None, "Go ahead")
    }
    fn message(&mut self, _now: Time, _envelope: &Envelope, _data: &[u8]) -> Reply {
        Reply::new(250, Some([2, 0, 0]), "OK queued")
    }
    /// Whether the answer to a complete message comes later: the session then holds the
    /// message for [`ServerSession::take_message`] and waits for
    /// [`ServerSession::complete_message`] (a spool write must finish before the 250).
    fn defers_messages(&self) -> bool {
        false
    }
    /// The server's wire style for a reply (e.g. Gmail's wrapped lines); by default as is.
    fn style(&mut self, reply: Reply) -> Reply {
        reply
    }
    /// Close the connection after the reply just written, without a word (a provider that
    /// ends sessions after N messages).
    fn close_after_reply(&mut self) -> bool {
        false
    }
    /// The connection ended at `now` (the peer left, the session closed it, or the driver
    /// lost it): the last call a policy gets.
    fn closed(&mut self, _now: Time) {}
}

/// Where an AUTH exchange stands.
enum Sasl {
    /// `AUTH PLAIN` without an initial response: the next line is it.
    Plain,
    /// `AUTH LOGIN`: the next line is the user name.
    LoginUser,
    LoginPassword {
        user: String,
    },
}

pub struct ServerSession<P: ServerPolicy> {
    policy: P,
    limits: ServerLimits,
    requests: RequestReceiver,
    data: Option<(DataReceiver, Vec<u8>)>,
    envelope: Envelope,
    in_transaction: bool,
    out: Vec<u8>,
    /// The message in progress passed the size limit and is being discarded.
    oversized: bool,
    /// Length of the current data line so far, and the longest line of the message.
    line_bytes: usize,
    longest_line: usize,
    sasl: Option<Sasl>,
    sasl_line: Vec<u8>,
    /// A complete message waiting for the driver's answer, and the input that followed it.
    held: Option<(Envelope, Vec<u8>)>,
    held_input: Vec<u8>,
    waiting_for_answer: bool,
    errors: u32,
    closed: bool,
    /// STARTTLS was accepted: the driver must upgrade, then call `tls_established`.
    pub tls_pending: bool,
    /// The time of the input being handled: every policy call gets it.
    now: Time,
    /// [`ServerPolicy::closed`] has been called.
    policy_closed: bool,
}

impl<P: ServerPolicy> ServerSession<P> {
    /// A session on a connection accepted at `now`; the greeting is already in the output.
    pub fn new(policy: P, now: Time) -> ServerSession<P> {
        ServerSession::with_limits(policy, ServerLimits::default(), now)
    }

    pub fn with_limits(mut policy: P, limits: ServerLimits, now: Time) -> ServerSession<P> {
        let greeting = policy.greeting(now);
        let mut session = ServerSession {
            policy,
            limits,
            requests: RequestReceiver::default(),
            data: None,
            envelope: Envelope::default(),
            in_transaction: false,
            out: Vec::new(),
            oversized: false,
            line_bytes: 0,
            longest_line: 0,
            sasl: None,
            sasl_line: Vec::new(),
            held: None,
            held_input: Vec::new(),
            waiting_for_answer: false,
            errors: 0,
            closed: false,
            tls_pending: false,
            now,
            policy_closed: false,
        };
        session.reply(&greeting);
        session
    }

    pub fn policy(&self) -> &P {
        &self.policy
    }

    pub fn policy_mut(&mut self) -> &mut P {
        &mut self.policy
    }

    /// The connection ended at `now`, whichever side ended it: the policy hears it once.
    /// Drivers call this when they let the connection go.
    pub fn close(&mut self, now: Time) {
        self.now = now;
        self.closed = true;
        if !std::mem::replace(&mut self.policy_closed, true) {
            self.policy.closed(now);
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether the client is sending message data (the DATA timeout applies, not the
    /// command timeout).
    pub fn in_data(&self) -> bool {
        self.data.is_some()
    }

    pub fn take_output(&mut self) -> Option<Vec<u8>> {
        (!self.out.is_empty()).then(|| std::mem::take(&mut self.out))
    }

    pub fn tls_established(&mut self, now: Time) {
        self.now = now;
        self.tls_pending = false;
        // RFC 3207 §4.2: the session starts over, knowing nothing from before.
        self.envelope = Envelope {
            tls: true,
            ..Envelope::default()
        };
        self.in_transaction = false;
    }

    /// The complete message a deferring policy must answer, with its envelope.
    pub fn take_message(&mut self) -> Option<(Envelope, Vec<u8>)> {
        self.held.take()
    }

    /// The answer to the message from [`take_message`](Self::take_message); the input that
    /// arrived after it is processed now.
    pub fn complete_message(&mut self, now: Time, reply: Reply) {
        self.now = now;
        if !std::mem::take(&mut self.waiting_for_answer) {
            return;
        }
        self.finish_message(reply);
        let input = std::mem::take(&mut self.held_input);
        if !input.is_empty() {
            self.handle_bytes(now, &input);
        }
    }

    fn finish_message(&mut self, reply: Reply) {
        if reply.class() == 2 {
            self.errors = 0;
        }
        self.reply(&reply);
        self.in_transaction = false;
        self.envelope.recipients.clear();
        if self.policy.close_after_reply() {
            self.closed = true;
        }
    }

    fn reply(&mut self, reply: &Reply) {
        let reply = self.policy.style(reply.clone());
        self.out.extend_from_slice(&reply.to_wire());
        if reply.code == 421 {
            self.closed = true;
            return;
        }
        if matches!(reply.class(), 4 | 5) {
            self.errors += 1;
            if self.limits.errors_max.is_some_and(|max| self.errors >= max) {
                let close = Reply::new(421, Some([4, 7, 0]), "too many errors, closing connection");
                self.out
                    .extend_from_slice(&self.policy.style(close).to_wire());
                self.closed = true;
            }
        }
    }

    pub fn handle_bytes(&mut self, now: Time, bytes: &[u8]) {
        self.now = now;
        if self.waiting_for_answer {
            // Pipelined input after a message waits for that message's answer. A driver
            // reads nothing more until it has answered, so this holds at most one read.
            self.held_input.extend_from_slice(bytes);
            return;
        }
        let mut iter = bytes.iter();
        while !self.closed && !self.tls_pending && !self.waiting_for_answer {
            if self.sasl.is_some() {
                if !self.sasl_input(&mut iter) {
                    return;
                }
                continue;
            }
            if let Some((receiver, buf)) = &mut self.data {
                let before = buf.len();
                let done = receiver.ingest(&mut iter, buf);
                if self.limits.data_line_max_bytes.is_some() {
                    let (open, longest) = line_lengths(&buf[before..], self.line_bytes);
                    self.line_bytes = open;
                    self.longest_line = self.longest_line.max(longest);
                }
                if !done {
                    if buf.len() > self.limits.message_size_max_bytes {
                        // Too big: keep reading to the end of the data, but drop it.
                        buf.clear();
                        self.oversized = true;
                    }
                    return;
                }
                let (_, mut message) = self.data.take().expect("in data");
                let longest = std::mem::take(&mut self.longest_line);
                self.line_bytes = 0;
                if message.len() > self.limits.message_size_max_bytes {
                    self.oversized = true;
                    message.clear();
                }
                let refusal = if std::mem::take(&mut self.oversized) {
                    Some(Reply::new(
                        552,
                        Some([5, 3, 4]),
                        format!(
                            "message size exceeds fixed maximum message size of {} bytes",
                            self.limits.message_size_max_bytes
                        ),
                    ))
                } else if let Some(max) = self.limits.data_line_max_bytes
                    && longest > max
                {
                    Some(Reply::new(
                        552,
                        Some([5, 3, 4]),
                        format!("message has a line longer than {max} characters"),
                    ))
                } else {
                    None
                };
                match refusal {
                    Some(reply) => self.finish_message(reply),
                    None if self.policy.defers_messages() => {
                        self.held = Some((self.envelope.clone(), message));
                        self.waiting_for_answer = true;
                        self.held_input = iter.as_slice().to_vec();
                        return;
                    }
                    None => {
                        let reply = self.policy.message(self.now, &self.envelope, &message);
                        self.finish_message(reply);
                    }
                }
                continue;
            }
            let request = match self.requests.ingest(&mut iter) {
                Ok(request) => request.into_owned(),
                Err(smtp_proto::Error::NeedsMoreData { .. }) => return,
                Err(smtp_proto::Error::ResponseTooLong) => {
                    self.reply(&Reply::new(500, Some([5, 5, 2]), "line too long"));
                    continue;
                }
                Err(_) => {
                    self.reply(&Reply::new(500, Some([5, 5, 2]), "syntax error"));
                    continue;
                }
            };
            self.handle_request(request);
        }
    }

    /// Reads one AUTH continuation line; false when more input is needed.
    fn sasl_input(&mut self, iter: &mut std::slice::Iter<'_, u8>) -> bool {
        let rest = iter.as_slice();
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            if self.sasl_line.len() + rest.len() > AUTH_LINE_MAX_BYTES {
                self.sasl = None;
                self.sasl_line.clear();
                self.reply(&Reply::new(
                    500,
                    Some([5, 5, 6]),
                    "authentication exchange line is too long",
                ));
                // The rest of the over-long line is read as commands and fails as such.
            } else {
                self.sasl_line.extend_from_slice(rest);
            }
            *iter = [].iter();
            return false;
        };
        self.sasl_line.extend_from_slice(&rest[..end]);
        *iter = rest[end + 1..].iter();
        let mut line = std::mem::take(&mut self.sasl_line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let state = self.sasl.take().expect("in an AUTH exchange");
        if line == b"*" {
            self.reply(&Reply::new(
                501,
                Some([5, 7, 0]),
                "authentication cancelled",
            ));
            return true;
        }
        let Some(decoded) = decode_base64(&line) else {
            self.reply(&Reply::new(
                501,
                Some([5, 5, 2]),
                "cannot decode the response",
            ));
            return true;
        };
        match state {
            Sasl::Plain => self.plain(&decoded),
            Sasl::LoginUser => {
                self.sasl = Some(Sasl::LoginPassword { user: decoded });
                self.reply(&Reply::new(334, None, "UGFzc3dvcmQ6"));
            }
            Sasl::LoginPassword { user } => self.check_credentials(&user, &decoded),
        }
        true
    }

    /// `authzid NUL authcid NUL password` (RFC 4616); an authzid other than the user is
    /// refused (no proxy authorization).
    fn plain(&mut self, decoded: &str) {
        let mut parts = decoded.split('\0');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(authz), Some(user), Some(password), None)
                if authz.is_empty() || authz == user =>
            {
                self.check_credentials(user, password)
            }
            _ => self.reply(&Reply::new(
                501,
                Some([5, 5, 2]),
                "malformed PLAIN response",
            )),
        }
    }

    fn check_credentials(&mut self, user: &str, password: &str) {
        let reply = self
            .policy
            .authenticate(self.now, &self.envelope, user, password);
        if reply.code == 235 {
            self.envelope.authenticated = Some(user.to_string());
        }
        self.reply(&reply);
    }

    fn handle_request(&mut self, request: Request<String>) {
        match request {
            Request::Ehlo { host } | Request::Lhlo { host } => {
                self.envelope.helo = host.clone();
                if let Some(reply) = self.policy.ehlo(self.now, &host) {
                    self.reply(&reply);
                    return;
                }
                let mut lines = vec![format!("{} Hello {host}", self.policy.host_name())];
                lines.extend(self.policy.capabilities(self.envelope.tls));
                self.reply(&Reply::new(250, None, lines.join("\n")));
            }
            Request::Helo { host } => {
                self.envelope.helo = host.clone();
                let reply = self.policy.ehlo(self.now, &host).unwrap_or_else(|| {
                    Reply::new(250, None, format!("{} Hello", self.policy.host_name()))
                });
                self.reply(&reply);
            }
            Request::StartTls => {
                if self.envelope.tls {
                    self.reply(&Reply::new(503, Some([5, 5, 1]), "TLS already active"));
                } else {
                    let reply = self.policy.starttls(self.now, &self.envelope);
                    self.tls_pending = reply.code == 220;
                    self.reply(&reply);
                }
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response),
            Request::Mail { from } => {
                if self.envelope.helo.is_empty() {
                    self.reply(&Reply::new(503, Some([5, 5, 1]), "EHLO first"));
                    return;
                }
                if from.size > self.limits.message_size_max_bytes {
                    self.reply(&Reply::new(
                        552,
                        Some([5, 3, 4]),
                        format!(
                            "message size exceeds fixed maximum message size of {} bytes",
                            self.limits.message_size_max_bytes
                        ),
                    ));
                    return;
                }
                self.envelope.mail_from = from.address;
                self.envelope.recipients.clear();
                let reply = self.policy.mail_from(self.now, &self.envelope);
                self.in_transaction = reply.class() == 2;
                self.reply(&reply);
            }
            Request::Rcpt { to } => {
                if !self.in_transaction {
                    self.reply(&Reply::new(503, Some([5, 5, 1]), "need MAIL first"));
                    return;
                }
                if self.envelope.recipients.len() >= self.limits.recipients_max {
                    self.reply(&Reply::new(452, Some([4, 5, 3]), "too many recipients"));
                    return;
                }
                let reply = self.policy.rcpt_to(self.now, &self.envelope, &to.address);
                if reply.class() == 2 {
                    self.envelope.recipients.push(to.address);
                }
                self.reply(&reply);
            }
            Request::Data => {
                if !self.in_transaction || self.envelope.recipients.is_empty() {
                    self.reply(&Reply::new(554, Some([5, 5, 1]), "no valid recipients"));
                    self.in_transaction = false;
                    return;
                }
                let reply = self.policy.data(self.now, &self.envelope);
                if reply.code == 354 {
                    self.data = Some((DataReceiver::new(), Vec::new()));
                } else {
                    self.in_transaction = false;
                }
                self.reply(&reply);
            }
            Request::Rset => {
                self.in_transaction = false;
                self.envelope.recipients.clear();
                self.reply(&Reply::new(250, Some([2, 0, 0]), "OK"));
            }
            Request::Quit => {
                self.reply(&Reply::new(221, Some([2, 0, 0]), "Bye"));
                self.closed = true;
            }
            Request::Noop { .. } => self.reply(&Reply::new(250, Some([2, 0, 0]), "OK")),
            _ => self.reply(&Reply::new(502, Some([5, 5, 1]), "command not implemented")),
        }
    }

    fn auth(&mut self, mechanism: u64, initial_response: String) {
        if self.envelope.authenticated.is_some() {
            self.reply(&Reply::new(503, Some([5, 5, 1]), "already authenticated"));
            return;
        }
        if self.in_transaction {
            self.reply(&Reply::new(
                503,
                Some([5, 5, 1]),
                "AUTH not allowed during a mail transaction",
            ));
            return;
        }
        if mechanism != AUTH_PLAIN && mechanism != AUTH_LOGIN {
            self.reply(&Reply::new(
                504,
                Some([5, 5, 4]),
                "unrecognized authentication type",
            ));
            return;
        }
        if let Some(refusal) = self.policy.auth(self.now, &self.envelope, mechanism) {
            self.reply(&refusal);
            return;
        }
        // RFC 4954 §4: "=" is an empty initial response.
        let initial = match initial_response.as_str() {
            "" => None,
            "=" => Some(String::new()),
            text => match decode_base64(text.as_bytes()) {
                Some(decoded) => Some(decoded),
                None => {
                    self.reply(&Reply::new(
                        501,
                        Some([5, 5, 2]),
                        "cannot decode the response",
                    ));
                    return;
                }
            },
        };
        match (mechanism == AUTH_PLAIN, initial) {
            (true, Some(response)) => self.plain(&response),
            (true, None) => {
                self.sasl = Some(Sasl::Plain);
                self.reply(&Reply::new(334, None, ""));
            }
            (false, Some(user)) => {
                self.sasl = Some(Sasl::LoginPassword { user });
                self.reply(&Reply::new(334, None, "UGFzc3dvcmQ6"));
            }
            (false, None) => {
                self.sasl = Some(Sasl::LoginUser);
                self.reply(&Reply::new(334, None, "VXNlcm5hbWU6"));
            }
        }
    }
}

/// Base64 text to UTF-8; `None` for bad base64 or text.
fn decode_base64(text: &[u8]) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// The length (CR and LF not counted) of the data line still open after `chunk`, given
/// the open line before it, and the longest line completed or open in it.
fn line_lengths(chunk: &[u8], open: usize) -> (usize, usize) {
    let mut current = open;
    let mut longest = 0;
    for &byte in chunk {
        if byte == b'\n' {
            current = 0;
        } else if byte != b'\r' {
            current += 1;
            longest = longest.max(current);
        }
    }
    (current, longest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Time;

    const T0: Time = Time::from_secs(0);

    struct Accept;
    impl ServerPolicy for Accept {}

    #[test]
    fn a_pipelined_transaction_is_received_and_unstuffed() {
        struct Keep(Vec<Vec<u8>>);
        impl ServerPolicy for Keep {
            fn message(&mut self, _now: Time, _: &Envelope, data: &[u8]) -> Reply {
                self.0.push(data.to_vec());
                Reply::new(250, Some([2, 0, 0]), "OK")
            }
        }
        let mut server = ServerSession::new(Keep(Vec::new()), T0);
        assert!(server.take_output().unwrap().starts_with(b"220 "));
        server.handle_bytes(
            T0,
            b"EHLO a.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n",
        );
        let out = String::from_utf8(server.take_output().unwrap()).unwrap();
        assert!(
            out.contains("250-PIPELINING") && out.ends_with("354 Go ahead\r\n"),
            "{out}"
        );
        server.handle_bytes(T0, b"Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n");
        let out = String::from_utf8(server.take_output().unwrap()).unwrap();
        assert_eq!(out, "250 2.0.0 OK\r\n221 2.0.0 Bye\r\n");
        assert!(server.is_closed());
        assert!(
            server.policy().0[0].ends_with(b".dot\r\n"),
            "{:?}",
            String::from_utf8_lossy(&server.policy().0[0])
        );
    }

    #[test]
    fn order_is_enforced() {
        let mut server = ServerSession::new(Accept, T0);
        server.take_output();
        server.handle_bytes(T0, b"MAIL FROM:<a@x.example>\r\n");
        assert!(server.take_output().unwrap().starts_with(b"503 "));
        server.handle_bytes(T0, b"EHLO a\r\nRCPT TO:<b@y.example>\r\n");
        let out = String::from_utf8(server.take_output().unwrap()).unwrap();
        assert!(out.ends_with("503 5.5.1 need MAIL first\r\n"), "{out}");
    }

    struct Users;
    impl ServerPolicy for Users {
        fn auth(&mut self, _now: Time, _: &Envelope, _: u64) -> Option<Reply> {
            None
        }
        fn authenticate(&mut self, _now: Time, _: &Envelope, user: &str, password: &str) -> Reply {
            if (user, password) == ("alice", "s3cret") {
                Reply::new(235, Some([2, 7, 0]), "ok")
            } else {
                Reply::new(535, Some([5, 7, 8]), "no")
            }
        }
    }

    fn say(server: &mut ServerSession<impl ServerPolicy>, input: &str) -> String {
        server.handle_bytes(T0, input.as_bytes());
        String::from_utf8(server.take_output().unwrap_or_default()).unwrap()
    }

    #[test]
    fn auth_plain_and_login_exchanges() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut server = ServerSession::new(Users, T0);
        server.take_output();
        say(&mut server, "EHLO a\r\n");
        // PLAIN with an initial response; a wrong password first.
        let wrong = say(
            &mut server,
            &format!("AUTH PLAIN {}\r\n", b64("\0alice\0nope")),
        );
        assert_eq!(wrong, "535 5.7.8 no\r\n");
        // PLAIN answered after a 334; a cancelled exchange; undecodable input.
        assert_eq!(say(&mut server, "AUTH PLAIN\r\n"), "334 \r\n");
        assert_eq!(
            say(&mut server, "*\r\n"),
            "501 5.7.0 authentication cancelled\r\n"
        );
        assert_eq!(say(&mut server, "AUTH LOGIN\r\n"), "334 VXNlcm5hbWU6\r\n");
        assert!(say(&mut server, "%%%\r\n").starts_with("501 5.5.2"));
        // LOGIN with the user name as initial response, the password split across reads.
        let prompt = say(&mut server, &format!("AUTH LOGIN {}\r\n", b64("alice")));
        assert_eq!(prompt, "334 UGFzc3dvcmQ6\r\n");
        let password = format!("{}\r\n", b64("s3cret"));
        let (first, second) = password.split_at(3);
        assert_eq!(say(&mut server, first), "");
        assert_eq!(say(&mut server, second), "235 2.7.0 ok\r\n");
        assert!(say(&mut server, "AUTH PLAIN x\r\n").starts_with("503 5.5.1 already"));
        // Another session: AUTH in a transaction, and an unknown mechanism.
        let mut server = ServerSession::new(Users, T0);
        server.take_output();
        say(&mut server, "EHLO a\r\nMAIL FROM:<a@x.example>\r\n");
        assert!(say(&mut server, "AUTH PLAIN\r\n").starts_with("503 5.5.1 AUTH not allowed"));
        assert!(
            say(&mut server, "RSET\r\nAUTH CRAM-MD5\r\n")
                .ends_with("504 5.5.4 unrecognized authentication type\r\n")
        );
        // The plain receiver does not do AUTH at all.
        let mut plain = ServerSession::new(Accept, T0);
        plain.take_output();
        assert!(
            say(&mut plain, "EHLO a\r\nAUTH PLAIN\r\n")
                .ends_with("502 5.5.1 command not implemented\r\n")
        );
    }

    #[test]
    fn a_deferred_answer_holds_the_pipelined_commands_behind_it() {
        struct Defer;
        impl ServerPolicy for Defer {
            fn defers_messages(&self) -> bool {
                true
            }
        }
        let mut server = ServerSession::new(Defer, T0);
        server.take_output();
        let out = say(
            &mut server,
            "EHLO a\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\nhi\r\n.\r\nMAIL FROM:<c@x.example>\r\n",
        );
        assert!(out.ends_with("354 Go ahead\r\n"), "{out}");
        assert_eq!(say(&mut server, "RCPT TO:<d@y.example>\r\n"), "");
        let (envelope, data) = server.take_message().unwrap();
        assert_eq!(
            (envelope.mail_from.as_str(), data.as_slice()),
            ("a@x.example", b"hi\r\n".as_slice())
        );
        server.complete_message(T0, Reply::new(250, Some([2, 0, 0]), "stored"));
        let out = String::from_utf8(server.take_output().unwrap()).unwrap();
        assert_eq!(out, "250 2.0.0 stored\r\n250 2.1.0 OK\r\n250 2.1.5 OK\r\n");
    }

    #[test]
    fn data_lines_are_measured_across_reads_and_errors_are_counted() {
        let limits = ServerLimits {
            data_line_max_bytes: Some(10),
            errors_max: Some(3),
            ..ServerLimits::default()
        };
        let mut server = ServerSession::with_limits(Accept, limits, T0);
        server.take_output();
        say(
            &mut server,
            "EHLO a\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n",
        );
        // Ten characters then CRLF split across reads is fine; eleven is not.
        say(&mut server, "0123456");
        say(&mut server, "789\r");
        assert_eq!(say(&mut server, "\n.\r\n"), "250 2.0.0 OK queued\r\n");
        say(
            &mut server,
            "MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n0123456789",
        );
        let out = say(&mut server, "A\r\n.\r\n");
        assert_eq!(
            out,
            "552 5.3.4 message has a line longer than 10 characters\r\n"
        );
        // That was one error; two more end the session.
        let out = say(&mut server, "NOPE\r\nNOPE\r\nNOOP\r\n");
        assert_eq!(
            out,
            "500 5.5.2 syntax error\r\n500 5.5.2 syntax error\r\n421 4.7.0 too many errors, closing connection\r\n"
        );
        assert!(server.is_closed());
    }
}
