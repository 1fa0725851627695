//! The SMTP server session, sans-io: the receiving side of a conversation.
//!
//! Owns command parsing (smtp-proto's `RequestReceiver`, pipelining-safe), DATA with
//! dot-unstuffing (`DataReceiver`), the order of commands, and writing replies. What to
//! answer is a [`ServerPolicy`]'s decision: the simulated mailbox providers and the test
//! receivers implement it. A reply with code 421 closes the session after it is written,
//! as RFC 5321 §3.8 requires. Pure: no I/O, no clock.

use smtp_proto::Request;
use smtp_proto::request::receiver::{DataReceiver, RequestReceiver};

use super::Reply;

/// Largest message a server session accepts before answering 552.
pub const MESSAGE_SIZE_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Most recipients per transaction a server session tracks.
pub const RECIPIENTS_MAX: usize = 10_000;

/// One received transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    pub helo: String,
    pub mail_from: String,
    pub recipients: Vec<String>,
    pub tls: bool,
}

/// What a server answers. Every method has the answer of a plain, accepting server.
pub trait ServerPolicy {
    fn greeting(&mut self) -> Reply {
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
    fn ehlo(&mut self, _host: &str) -> Option<Reply> {
        None
    }
    fn mail_from(&mut self, _envelope: &Envelope) -> Reply {
        Reply::new(250, Some([2, 1, 0]), "OK")
    }
    fn rcpt_to(&mut self, _envelope: &Envelope, _rcpt: &str) -> Reply {
        Reply::new(250, Some([2, 1, 5]), "OK")
    }
    fn data(&mut self, _envelope: &Envelope) -> Reply {
        Reply::new(354, None, "Go ahead")
    }
    fn message(&mut self, _envelope: &Envelope, _data: &[u8]) -> Reply {
        Reply::new(250, Some([2, 0, 0]), "OK queued")
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
}

pub struct ServerSession<P: ServerPolicy> {
    policy: P,
    requests: RequestReceiver,
    data: Option<(DataReceiver, Vec<u8>)>,
    envelope: Envelope,
    in_transaction: bool,
    out: Vec<u8>,
    /// The message in progress passed the size limit and is being discarded.
    oversized: bool,
    closed: bool,
    /// STARTTLS was accepted: the driver must upgrade, then call `tls_established`.
    pub tls_pending: bool,
}

impl<P: ServerPolicy> ServerSession<P> {
    /// A session on a new connection; the greeting is already in the output.
    pub fn new(mut policy: P) -> ServerSession<P> {
        let greeting = policy.greeting();
        let mut session = ServerSession {
            policy,
            requests: RequestReceiver::default(),
            data: None,
            envelope: Envelope::default(),
            in_transaction: false,
            out: Vec::new(),
            oversized: false,
            closed: false,
            tls_pending: false,
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

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn take_output(&mut self) -> Option<Vec<u8>> {
        (!self.out.is_empty()).then(|| std::mem::take(&mut self.out))
    }

    pub fn tls_established(&mut self) {
        self.tls_pending = false;
        self.envelope = Envelope {
            tls: true,
            ..Envelope::default()
        };
        self.in_transaction = false;
    }

    fn reply(&mut self, reply: &Reply) {
        let reply = self.policy.style(reply.clone());
        self.out.extend_from_slice(&reply.to_wire());
        if reply.code == 421 {
            self.closed = true;
        }
    }

    pub fn handle_bytes(&mut self, bytes: &[u8]) {
        let mut iter = bytes.iter();
        while !self.closed && !self.tls_pending {
            if let Some((receiver, buf)) = &mut self.data {
                if !receiver.ingest(&mut iter, buf) {
                    if buf.len() > MESSAGE_SIZE_MAX_BYTES {
                        // Too big: keep reading to the end of the data, but drop it.
                        buf.clear();
                        self.oversized = true;
                    }
                    return;
                }
                let (_, message) = self.data.take().expect("in data");
                let reply = if std::mem::take(&mut self.oversized) {
                    Reply::new(552, Some([5, 3, 4]), "message too big")
                } else {
                    self.policy.message(&self.envelope, &message)
                };
                self.reply(&reply);
                self.in_transaction = false;
                self.envelope.recipients.clear();
                if self.policy.close_after_reply() {
                    self.closed = true;
                }
                continue;
            }
            let request = match self.requests.ingest(&mut iter) {
                Ok(request) => request.into_owned(),
                Err(smtp_proto::Error::NeedsMoreData { .. }) => return,
                Err(_) => {
                    self.reply(&Reply::new(500, Some([5, 5, 2]), "syntax error"));
                    continue;
                }
            };
            self.handle_request(request);
        }
    }

    fn handle_request(&mut self, request: Request<String>) {
        match request {
            Request::Ehlo { host } | Request::Lhlo { host } => {
                self.envelope.helo = host.clone();
                if let Some(reply) = self.policy.ehlo(&host) {
                    self.reply(&reply);
                    return;
                }
                let mut lines = vec![format!("mx Hello {host}")];
                lines.extend(self.policy.capabilities(self.envelope.tls));
                self.reply(&Reply::new(250, None, lines.join("\n")));
            }
            Request::Helo { host } => {
                self.envelope.helo = host.clone();
                let reply = self
                    .policy
                    .ehlo(&host)
                    .unwrap_or_else(|| Reply::new(250, None, "mx Hello"));
                self.reply(&reply);
            }
            Request::StartTls => {
                if self.envelope.tls {
                    self.reply(&Reply::new(503, Some([5, 5, 1]), "TLS already active"));
                } else {
                    self.reply(&Reply::new(220, Some([2, 0, 0]), "Ready to start TLS"));
                    self.tls_pending = true;
                }
            }
            Request::Mail { from } => {
                if self.envelope.helo.is_empty() {
                    self.reply(&Reply::new(503, Some([5, 5, 1]), "EHLO first"));
                    return;
                }
                self.envelope.mail_from = from.address;
                self.envelope.recipients.clear();
                let reply = self.policy.mail_from(&self.envelope);
                self.in_transaction = reply.class() == 2;
                self.reply(&reply);
            }
            Request::Rcpt { to } => {
                if !self.in_transaction {
                    self.reply(&Reply::new(503, Some([5, 5, 1]), "need MAIL first"));
                    return;
                }
                if self.envelope.recipients.len() >= RECIPIENTS_MAX {
                    self.reply(&Reply::new(452, Some([4, 5, 3]), "too many recipients"));
                    return;
                }
                let reply = self.policy.rcpt_to(&self.envelope, &to.address);
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
                let reply = self.policy.data(&self.envelope);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Accept;
    impl ServerPolicy for Accept {}

    #[test]
    fn a_pipelined_transaction_is_received_and_unstuffed() {
        struct Keep(Vec<Vec<u8>>);
        impl ServerPolicy for Keep {
            fn message(&mut self, _: &Envelope, data: &[u8]) -> Reply {
                self.0.push(data.to_vec());
                Reply::new(250, Some([2, 0, 0]), "OK")
            }
        }
        let mut server = ServerSession::new(Keep(Vec::new()));
        assert!(server.take_output().unwrap().starts_with(b"220 "));
        server.handle_bytes(
            b"EHLO a.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n",
        );
        let out = String::from_utf8(server.take_output().unwrap()).unwrap();
        assert!(
            out.contains("250-PIPELINING") && out.ends_with("354 Go ahead\r\n"),
            "{out}"
        );
        server.handle_bytes(b"Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n");
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
        let mut server = ServerSession::new(Accept);
        server.take_output();
        server.handle_bytes(b"MAIL FROM:<a@x.example>\r\n");
        assert!(server.take_output().unwrap().starts_with(b"503 "));
        server.handle_bytes(b"EHLO a\r\nRCPT TO:<b@y.example>\r\n");
        let out = String::from_utf8(server.take_output().unwrap()).unwrap();
        assert!(out.ends_with("503 5.5.1 need MAIL first\r\n"), "{out}");
    }
}
