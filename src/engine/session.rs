//! The SMTP client session: one connection's conversation, as a sans-io state machine.
//!
//! Owns the protocol: greeting, EHLO with HELO fallback, STARTTLS negotiation (the
//! encryption itself is the driver's), PIPELINING of MAIL/RCPT/DATA when offered, SIZE and
//! 8BITMIME parameters, one reply per recipient with the phase that gave it, RSET after a
//! failed transaction, a 421 inside a transaction as PowerMTA's
//! `smtp-421-means-mx-unavailable` says (defer and reset, or fail the session), QUIT.
//! It is fed reply bytes and emits bytes to write and [`SessionEvent`]s; it knows nothing of
//! queues, limits or time (the engine arms timeouts from [`ClientSession::awaiting`]).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::smtp::{Capabilities, Command, Reply, ReplyError, ReplyParser};

/// What the engine wants from a session.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub ehlo_name: String,
    pub use_starttls: bool,
    pub require_starttls: bool,
    /// `smtp-421-means-mx-unavailable no` (PowerMTA's default): a 421 inside a transaction
    /// is that transaction's answer; its recipients take it, and the session sends RSET to
    /// reuse the connection (the server usually closes it, as its 421 announced). `false`
    /// (`yes`): the 421 fails the session, so the engine can try the next MX.
    pub reuse_after_421: bool,
}

/// One mail transaction: a message and the recipients it goes to on this connection.
#[derive(Clone, Debug)]
pub struct Transaction {
    pub mail_from: String,
    pub recipients: Vec<String>,
    /// Message data, already dot-stuffed and ending in `.\r\n`.
    pub data: Arc<Vec<u8>>,
    pub size: u64,
    pub eight_bit: bool,
}

/// Where in the conversation a reply or failure belongs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Mail,
    Rcpt,
    Data,
    DataEnd,
    Rset,
    Quit,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// The server answered with a negative reply outside a transaction, or with 421.
    Reply(Reply),
    /// STARTTLS is required and the server did not offer or accept it.
    TlsRequired,
    /// The server sent bytes that are not SMTP replies, or too many of them.
    Protocol(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    /// The connection is ready for a transaction.
    Ready,
    /// The server accepted STARTTLS: upgrade the connection, then call
    /// [`ClientSession::tls_established`].
    StartTls,
    /// A transaction ended; one reply per recipient, in order, with the phase that gave it:
    /// the MAIL reply if MAIL was refused, the RCPT reply if it was negative, otherwise the
    /// reply that settled the message (DATA or end of data), or a 421 wherever it came.
    TransactionDone(Vec<(Phase, Reply)>),
    /// The session cannot go on. Recipients of an unfinished transaction are the
    /// engine's to requeue.
    Failed { phase: Phase, reason: FailureReason },
    /// QUIT was answered.
    Finished,
}

/// What the session is waiting for, so the engine can arm the right timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Awaiting {
    Nothing,
    Greeting,
    /// A command reply; `DataEnd` when it is the reply to the end of message data.
    Reply(Phase),
    Tls,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Mail,
    Rcpt(usize),
    Data,
    DataEnd,
    Rset,
    Quit,
    /// A reply to a command sent ahead (pipelined) of a 421 that ended the transaction: read
    /// and dropped.
    Ignore(Phase),
}

impl Expect {
    fn phase(self) -> Phase {
        match self {
            Expect::Greeting => Phase::Greeting,
            Expect::Ehlo => Phase::Ehlo,
            Expect::Helo => Phase::Helo,
            Expect::StartTls => Phase::StartTls,
            Expect::Mail => Phase::Mail,
            Expect::Rcpt(_) => Phase::Rcpt,
            Expect::Data => Phase::Data,
            Expect::DataEnd => Phase::DataEnd,
            Expect::Rset => Phase::Rset,
            Expect::Quit => Phase::Quit,
            Expect::Ignore(phase) => phase,
        }
    }
}

/// The reply state of the transaction in flight.
#[derive(Debug)]
struct InFlight {
    transaction: Transaction,
    mail: Option<Reply>,
    /// Each recipient's outcome so far: its RCPT reply, replaced by the DATA or end-of-data
    /// reply once that settles it.
    rcpt: Vec<Option<(Phase, Reply)>>,
    /// Set once the DATA reply came back positive and the body was written.
    body_sent: bool,
    /// Without pipelining: the next recipient to send.
    next_rcpt: usize,
}

#[derive(Debug)]
pub struct ClientSession {
    options: SessionOptions,
    parser: ReplyParser,
    expect: VecDeque<Expect>,
    outbox: Vec<u8>,
    events: VecDeque<SessionEvent>,
    capabilities: Capabilities,
    tls_active: bool,
    waiting_for_tls: bool,
    in_flight: Option<InFlight>,
    needs_rset: bool,
    /// A transaction waiting for the RSET reply (no PIPELINING).
    after_rset: Option<Transaction>,
    /// After a 421 inside a transaction: the RSET is out and the session is ready again only
    /// once it is answered.
    resetting: bool,
    /// The server answered 421, announcing it closes the channel (RFC 5321 §3.8).
    closing_announced: bool,
    done: bool,
}

impl ClientSession {
    /// A session on a freshly opened connection; the first thing it waits for is the greeting.
    pub fn new(options: SessionOptions) -> ClientSession {
        ClientSession {
            options,
            parser: ReplyParser::default(),
            expect: VecDeque::from([Expect::Greeting]),
            outbox: Vec::new(),
            events: VecDeque::new(),
            capabilities: Capabilities::default(),
            tls_active: false,
            waiting_for_tls: false,
            in_flight: None,
            needs_rset: false,
            after_rset: None,
            resetting: false,
            closing_announced: false,
            done: false,
        }
    }

    /// Waiting for the answer to the RSET sent after a 421: no transaction may start.
    pub fn is_resetting(&self) -> bool {
        self.resetting
    }

    /// The server said 421: a close that follows is the one it announced, not a failure.
    pub fn closing_announced(&self) -> bool {
        self.closing_announced
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// Bytes to write to the connection, if any.
    pub fn take_output(&mut self) -> Option<Vec<u8>> {
        (!self.outbox.is_empty()).then(|| std::mem::take(&mut self.outbox))
    }

    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    pub fn awaiting(&self) -> Awaiting {
        if self.waiting_for_tls {
            return Awaiting::Tls;
        }
        match self.expect.front() {
            None => Awaiting::Nothing,
            Some(Expect::Greeting) => Awaiting::Greeting,
            Some(expect) => Awaiting::Reply(expect.phase()),
        }
    }

    /// Feeds bytes read from the connection.
    pub fn handle_bytes(&mut self, bytes: &[u8]) {
        if self.done {
            return;
        }
        if let Err(err) = self.parser.feed(bytes) {
            self.fail_protocol(err);
            return;
        }
        self.process_buffered();
    }

    /// Handles buffered replies while the session expects one. Replies that arrive ahead
    /// of a command (a 421 right after the end-of-data reply, say) wait in the parser for
    /// the command they will answer, so the engine sees one event at a time.
    fn process_buffered(&mut self) {
        while !self.done && !self.expect.is_empty() && !self.waiting_for_tls {
            match self.parser.next_reply() {
                Ok(Some(reply)) => self.handle_reply(reply),
                Ok(None) => break,
                Err(err) => {
                    self.fail_protocol(err);
                    break;
                }
            }
        }
    }

    /// The session failed or finished: it takes no more commands.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn fail_protocol(&mut self, err: ReplyError) {
        let phase = self.expect.front().map_or(Phase::Quit, |e| e.phase());
        self.fail(phase, FailureReason::Protocol(err.to_string()));
    }

    fn fail(&mut self, phase: Phase, reason: FailureReason) {
        self.done = true;
        self.expect.clear();
        self.events
            .push_back(SessionEvent::Failed { phase, reason });
    }

    fn write(&mut self, command: Command<'_>) {
        command.write(&mut self.outbox);
    }

    fn handle_reply(&mut self, reply: Reply) {
        let Some(expect) = self.expect.pop_front() else {
            self.fail(
                Phase::Quit,
                FailureReason::Protocol(format!("unexpected reply `{reply}`")),
            );
            return;
        };
        if let Expect::Ignore(phase) = expect {
            if phase == Phase::Data && reply.code == 354 {
                // A server that went on after its 421: end the data it now waits for.
                self.outbox.extend_from_slice(b".\r\n");
                self.expect.push_front(Expect::Ignore(Phase::DataEnd));
            }
            return;
        }
        // 421: the server is closing the channel, whatever we asked (RFC 5321 §3.8).
        if reply.code == 421 && expect != Expect::Quit {
            self.closing_announced = true;
            let in_transaction = matches!(
                expect,
                Expect::Mail | Expect::Rcpt(_) | Expect::Data | Expect::DataEnd
            );
            if self.options.reuse_after_421 && in_transaction && self.in_flight.is_some() {
                self.abort_transaction(expect.phase(), reply);
            } else {
                self.fail(expect.phase(), FailureReason::Reply(reply));
            }
            return;
        }
        match expect {
            Expect::Greeting => {
                if reply.code == 220 {
                    let name = self.options.ehlo_name.clone();
                    self.write(Command::Ehlo(&name));
                    self.expect.push_back(Expect::Ehlo);
                } else {
                    self.fail(Phase::Greeting, FailureReason::Reply(reply));
                }
            }
            Expect::Ehlo => {
                if reply.code == 250 {
                    self.capabilities = Capabilities::from_ehlo(&reply);
                    self.after_hello();
                } else if reply.class() == 5 && !self.tls_active {
                    let name = self.options.ehlo_name.clone();
                    self.write(Command::Helo(&name));
                    self.expect.push_back(Expect::Helo);
                } else {
                    self.fail(Phase::Ehlo, FailureReason::Reply(reply));
                }
            }
            Expect::Helo => {
                if reply.code == 250 {
                    self.capabilities = Capabilities::default();
                    self.after_hello();
                } else {
                    self.fail(Phase::Helo, FailureReason::Reply(reply));
                }
            }
            Expect::StartTls => {
                if reply.code == 220 {
                    self.waiting_for_tls = true;
                    self.events.push_back(SessionEvent::StartTls);
                } else if self.options.require_starttls {
                    self.fail(Phase::StartTls, FailureReason::TlsRequired);
                } else {
                    self.events.push_back(SessionEvent::Ready);
                }
            }
            Expect::Rset => {
                if reply.class() != 2 {
                    self.fail(Phase::Rset, FailureReason::Reply(reply));
                } else if std::mem::take(&mut self.resetting) {
                    self.events.push_back(SessionEvent::Ready);
                } else if let Some(transaction) = self.after_rset.take() {
                    self.send_mail(transaction);
                }
            }
            Expect::Quit => {
                self.done = true;
                self.events.push_back(SessionEvent::Finished);
            }
            Expect::Mail => self.on_mail_reply(reply),
            Expect::Rcpt(index) => self.on_rcpt_reply(index, reply),
            Expect::Data => self.on_data_reply(reply),
            Expect::DataEnd => self.on_data_end_reply(reply),
            Expect::Ignore(_) => {}
        }
    }

    /// A 421 inside a transaction, with `reuse_after_421`: every recipient not already
    /// refused takes the 421; replies still due for pipelined commands are dropped; RSET
    /// asks whether the connection can be reused.
    fn abort_transaction(&mut self, phase: Phase, reply: Reply) {
        let in_flight = self.in_flight.as_mut().expect("checked by the caller");
        for slot in in_flight.rcpt.iter_mut() {
            let refused = slot.as_ref().is_some_and(|(_, r)| r.class() != 2);
            if !refused {
                *slot = Some((phase, reply.clone()));
            }
        }
        in_flight.body_sent = false;
        for expect in self.expect.iter_mut() {
            *expect = Expect::Ignore(expect.phase());
        }
        self.after_rset = None;
        self.finish_transaction();
        self.needs_rset = false;
        self.write(Command::Rset);
        self.expect.push_back(Expect::Rset);
        self.resetting = true;
    }

    fn after_hello(&mut self) {
        if !self.tls_active && self.options.use_starttls && self.capabilities.starttls {
            self.write(Command::StartTls);
            self.expect.push_back(Expect::StartTls);
        } else if !self.tls_active && self.options.require_starttls {
            self.fail(Phase::Ehlo, FailureReason::TlsRequired);
        } else {
            self.events.push_back(SessionEvent::Ready);
        }
    }

    /// The driver finished the TLS handshake: greet again over the encrypted channel.
    pub fn tls_established(&mut self) {
        if !self.waiting_for_tls {
            return;
        }
        self.waiting_for_tls = false;
        self.tls_active = true;
        let name = self.options.ehlo_name.clone();
        self.write(Command::Ehlo(&name));
        self.expect.push_back(Expect::Ehlo);
        self.process_buffered();
    }

    /// Starts a transaction. Call only after [`SessionEvent::Ready`] or
    /// [`SessionEvent::TransactionDone`].
    pub fn start_transaction(&mut self, transaction: Transaction) {
        assert!(
            self.in_flight.is_none() && !self.done,
            "one transaction at a time on a live session"
        );
        if self.needs_rset {
            self.write(Command::Rset);
            self.expect.push_back(Expect::Rset);
            self.needs_rset = false;
            if !self.capabilities.pipelining {
                // Without PIPELINING, MAIL waits for the RSET reply.
                self.after_rset = Some(transaction);
                self.process_buffered();
                return;
            }
        }
        self.send_mail(transaction);
        self.process_buffered();
    }

    fn send_mail(&mut self, transaction: Transaction) {
        let size = (self.capabilities.size.is_some()).then_some(transaction.size);
        let eight_bit = transaction.eight_bit && self.capabilities.eight_bit_mime;
        self.write(Command::MailFrom {
            address: &transaction.mail_from,
            size,
            eight_bit,
        });
        self.expect.push_back(Expect::Mail);
        let count = transaction.recipients.len();
        let mut in_flight = InFlight {
            transaction,
            mail: None,
            rcpt: vec![None; count],
            body_sent: false,
            next_rcpt: 0,
        };
        if self.capabilities.pipelining {
            for (index, rcpt) in in_flight.transaction.recipients.iter().enumerate() {
                Command::RcptTo(rcpt).write(&mut self.outbox);
                self.expect.push_back(Expect::Rcpt(index));
            }
            self.write(Command::Data);
            self.expect.push_back(Expect::Data);
            in_flight.next_rcpt = count;
        }
        self.in_flight = Some(in_flight);
    }

    /// Ends the session politely.
    pub fn quit(&mut self) {
        if self.done {
            return;
        }
        self.write(Command::Quit);
        self.expect.push_back(Expect::Quit);
        self.process_buffered();
    }

    fn in_flight(&mut self) -> &mut InFlight {
        self.in_flight
            .as_mut()
            .expect("transaction replies come only with a transaction in flight")
    }

    fn pipelining(&self) -> bool {
        self.capabilities.pipelining
    }

    fn on_mail_reply(&mut self, reply: Reply) {
        let positive = reply.class() == 2;
        self.in_flight().mail = Some(reply);
        if !self.pipelining() {
            if positive {
                self.send_next_rcpt();
            } else {
                self.finish_transaction();
            }
        }
    }

    fn send_next_rcpt(&mut self) {
        let in_flight = self.in_flight.as_mut().expect("in flight");
        let index = in_flight.next_rcpt;
        if index < in_flight.transaction.recipients.len() {
            in_flight.next_rcpt += 1;
            let rcpt = in_flight.transaction.recipients[index].clone();
            self.write(Command::RcptTo(&rcpt));
            self.expect.push_back(Expect::Rcpt(index));
        } else if in_flight.rcpt.iter().flatten().any(|(_, r)| r.class() == 2) {
            self.write(Command::Data);
            self.expect.push_back(Expect::Data);
        } else {
            self.finish_transaction();
        }
    }

    fn on_rcpt_reply(&mut self, index: usize, reply: Reply) {
        if let Some(slot) = self.in_flight().rcpt.get_mut(index) {
            *slot = Some((Phase::Rcpt, reply));
        }
        if !self.pipelining() {
            self.send_next_rcpt();
        }
    }

    fn on_data_reply(&mut self, reply: Reply) {
        let in_flight = self.in_flight.as_mut().expect("in flight");
        let mail_ok = in_flight.mail.as_ref().is_some_and(|m| m.class() == 2);
        let any_accepted = in_flight.rcpt.iter().flatten().any(|(_, r)| r.class() == 2);
        if reply.code == 354 {
            if mail_ok && any_accepted {
                let data = Arc::clone(&in_flight.transaction.data);
                in_flight.body_sent = true;
                self.outbox.extend_from_slice(&data);
            } else {
                // Pipelined DATA was accepted although no recipient was: send an empty
                // message so the server ends the transaction (RFC 2920 §3.1).
                self.outbox.extend_from_slice(b".\r\n");
            }
            self.expect.push_back(Expect::DataEnd);
            return;
        }
        // DATA refused: its reply settles every accepted recipient.
        self.settle_accepted(Phase::Data, &reply);
        self.finish_transaction();
    }

    fn on_data_end_reply(&mut self, reply: Reply) {
        if self.in_flight().body_sent {
            self.settle_accepted(Phase::DataEnd, &reply);
        }
        self.finish_transaction();
    }

    /// Recipients accepted at RCPT take `reply` (given at `phase`) as their outcome.
    fn settle_accepted(&mut self, phase: Phase, reply: &Reply) {
        let in_flight = self.in_flight();
        for slot in in_flight.rcpt.iter_mut() {
            if slot.as_ref().is_some_and(|(_, r)| r.class() == 2) {
                *slot = Some((phase, reply.clone()));
            }
        }
        in_flight.body_sent = false;
    }

    fn finish_transaction(&mut self) {
        let in_flight = self.in_flight.take().expect("in flight");
        let mail = in_flight.mail.clone();
        let mut outcomes = Vec::with_capacity(in_flight.rcpt.len());
        let mut all_delivered = true;
        for slot in in_flight.rcpt {
            // A recipient with no reply of its own (MAIL failed, or not reached) takes the
            // MAIL reply.
            let outcome = match (slot, &mail) {
                // MAIL refused: the pipelined RCPT replies (503 "need MAIL") mean nothing.
                (_, Some(m)) if m.class() != 2 => (Phase::Mail, m.clone()),
                (Some(r), _) => r,
                (None, Some(m)) => (Phase::Mail, m.clone()),
                (None, None) => (Phase::Mail, Reply::new(451, Some([4, 3, 0]), "no reply")),
            };
            all_delivered &= outcome.1.class() == 2;
            outcomes.push(outcome);
        }
        self.needs_rset = !all_delivered;
        self.events
            .push_back(SessionEvent::TransactionDone(outcomes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> ClientSession {
        ClientSession::new(SessionOptions {
            ehlo_name: "mta1.example.com".into(),
            use_starttls: false,
            require_starttls: false,
            reuse_after_421: false,
        })
    }

    fn transaction(rcpts: &[&str]) -> Transaction {
        Transaction {
            mail_from: "a@example.com".into(),
            recipients: rcpts.iter().map(|r| r.to_string()).collect(),
            data: Arc::new(crate::smtp::dot_stuff(b"Subject: x\r\n\r\nhi\r\n")),
            size: 20,
            eight_bit: false,
        }
    }

    fn events(s: &mut ClientSession) -> Vec<SessionEvent> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn output(s: &mut ClientSession) -> String {
        String::from_utf8(s.take_output().unwrap_or_default()).unwrap()
    }

    #[test]
    fn pipelined_transaction_with_mixed_recipient_replies() {
        let mut s = session();
        s.handle_bytes(b"220 mx ESMTP\r\n");
        assert_eq!(output(&mut s), "EHLO mta1.example.com\r\n");
        s.handle_bytes(b"250-mx\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n");
        assert_eq!(events(&mut s), [SessionEvent::Ready]);
        s.start_transaction(transaction(&["x@y.com", "z@y.com"]));
        assert_eq!(
            output(&mut s),
            "MAIL FROM:<a@example.com> SIZE=20\r\nRCPT TO:<x@y.com>\r\nRCPT TO:<z@y.com>\r\nDATA\r\n"
        );
        s.handle_bytes(b"250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n354 go\r\n");
        assert_eq!(output(&mut s), "Subject: x\r\n\r\nhi\r\n.\r\n");
        s.handle_bytes(b"250 2.0.0 queued\r\n");
        let done = events(&mut s);
        let SessionEvent::TransactionDone(replies) = &done[0] else {
            panic!("{done:?}")
        };
        assert_eq!(
            replies[0],
            (Phase::DataEnd, Reply::new(250, Some([2, 0, 0]), "queued"))
        );
        assert_eq!(replies[1].1.one_line(), "550 5.1.1 no such user");
        assert_eq!(replies[1].0, Phase::Rcpt);
        // The next transaction starts with RSET because one recipient failed.
        s.start_transaction(transaction(&["x@y.com"]));
        assert!(output(&mut s).starts_with("RSET\r\nMAIL FROM:"));
    }

    #[test]
    fn without_pipelining_commands_go_one_at_a_time_and_helo_is_the_fallback() {
        let mut s = session();
        s.handle_bytes(b"220 mx\r\n");
        output(&mut s);
        s.handle_bytes(b"502 5.5.1 EHLO not supported\r\n");
        assert_eq!(output(&mut s), "HELO mta1.example.com\r\n");
        s.handle_bytes(b"250 hello\r\n");
        assert_eq!(events(&mut s), [SessionEvent::Ready]);
        s.start_transaction(transaction(&["x@y.com", "z@y.com"]));
        assert_eq!(output(&mut s), "MAIL FROM:<a@example.com>\r\n");
        s.handle_bytes(b"250 ok\r\n");
        assert_eq!(output(&mut s), "RCPT TO:<x@y.com>\r\n");
        s.handle_bytes(b"451 4.7.1 greylisted\r\n");
        assert_eq!(output(&mut s), "RCPT TO:<z@y.com>\r\n");
        s.handle_bytes(b"250 ok\r\n");
        assert_eq!(output(&mut s), "DATA\r\n");
        s.handle_bytes(b"354 go\r\n");
        output(&mut s);
        s.handle_bytes(b"250 ok\r\n");
        let SessionEvent::TransactionDone(replies) = &events(&mut s)[0] else {
            panic!()
        };
        assert_eq!(replies[0].1.code, 451);
        assert_eq!(replies[1].1.code, 250);
    }

    #[test]
    fn starttls_is_negotiated_and_required_when_configured() {
        let mut s = ClientSession::new(SessionOptions {
            ehlo_name: "m".into(),
            use_starttls: true,
            require_starttls: true,
            reuse_after_421: false,
        });
        s.handle_bytes(b"220 mx\r\n250-mx\r\n250 STARTTLS\r\n");
        assert_eq!(output(&mut s), "EHLO m\r\nSTARTTLS\r\n");
        s.handle_bytes(b"220 go ahead\r\n");
        assert_eq!(events(&mut s), [SessionEvent::StartTls]);
        assert_eq!(s.awaiting(), Awaiting::Tls);
        s.tls_established();
        assert_eq!(output(&mut s), "EHLO m\r\n");
        s.handle_bytes(b"250-mx\r\n250 PIPELINING\r\n");
        assert_eq!(events(&mut s), [SessionEvent::Ready]);
        assert!(s.tls_active());

        let mut plain = ClientSession::new(SessionOptions {
            ehlo_name: "m".into(),
            use_starttls: true,
            require_starttls: true,
            reuse_after_421: false,
        });
        plain.handle_bytes(b"220 mx\r\n250 mx\r\n");
        assert_eq!(
            events(&mut plain),
            [SessionEvent::Failed {
                phase: Phase::Ehlo,
                reason: FailureReason::TlsRequired
            }]
        );
    }

    #[test]
    fn a_421_ends_the_session_and_garbage_is_a_protocol_failure() {
        let mut s = session();
        s.handle_bytes(b"421 4.7.0 Try again later, closing connection.\r\n");
        assert!(matches!(
            &events(&mut s)[0],
            SessionEvent::Failed { phase: Phase::Greeting, reason: FailureReason::Reply(r) } if r.code == 421
        ));
        let mut s = session();
        s.handle_bytes(b"HTTP/1.1 400 Bad Request\r\n");
        assert!(matches!(
            &events(&mut s)[0],
            SessionEvent::Failed {
                reason: FailureReason::Protocol(_),
                ..
            }
        ));
    }

    #[test]
    fn replies_ahead_of_their_command_wait_for_it() {
        let mut s = session();
        s.handle_bytes(b"220 mx\r\n250-mx\r\n250 PIPELINING\r\n");
        assert_eq!(events(&mut s), [SessionEvent::Ready]);
        output(&mut s);
        s.start_transaction(transaction(&["x@y.com"]));
        output(&mut s);
        // The end-of-data reply and an unsolicited 421 arrive in one segment.
        s.handle_bytes(b"250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 queued\r\n421 4.7.0 closing\r\n");
        output(&mut s);
        let done = events(&mut s);
        assert!(
            matches!(done.as_slice(), [SessionEvent::TransactionDone(r)] if r[0].1.code == 250),
            "{done:?}"
        );
        assert!(!s.is_done());
        // The 421 answers the next command.
        s.start_transaction(transaction(&["z@y.com"]));
        assert!(matches!(
            events(&mut s).as_slice(),
            [SessionEvent::Failed { phase: Phase::Mail, reason: FailureReason::Reply(r) }] if r.code == 421
        ));
    }

    #[test]
    fn a_refused_mail_settles_every_pipelined_recipient() {
        let mut s = session();
        s.handle_bytes(b"220 mx\r\n250-mx\r\n250 PIPELINING\r\n");
        events(&mut s);
        s.start_transaction(transaction(&["x@y.com", "z@y.com"]));
        s.handle_bytes(b"451 4.7.1 try later\r\n503 5.5.1 need MAIL first\r\n503 5.5.1 need MAIL first\r\n554 5.5.1 no valid recipients\r\n");
        let SessionEvent::TransactionDone(replies) = &events(&mut s)[0] else {
            panic!()
        };
        assert!(
            replies
                .iter()
                .all(|(phase, r)| *phase == Phase::Mail && r.one_line() == "451 4.7.1 try later"),
            "{replies:?}"
        );
    }

    #[test]
    fn without_pipelining_mail_waits_for_the_rset_reply() {
        let mut s = session();
        s.handle_bytes(b"220 mx\r\n250 mx\r\n");
        events(&mut s);
        output(&mut s);
        s.start_transaction(transaction(&["x@y.com"]));
        output(&mut s);
        s.handle_bytes(b"250 ok\r\n550 5.1.1 unknown\r\n");
        events(&mut s);
        assert_eq!(output(&mut s), "RCPT TO:<x@y.com>\r\n");
        s.start_transaction(transaction(&["z@y.com"]));
        assert_eq!(output(&mut s), "RSET\r\n");
        s.handle_bytes(b"250 2.0.0 reset\r\n");
        assert_eq!(output(&mut s), "MAIL FROM:<a@example.com>\r\n");
    }

    fn reusing_session() -> ClientSession {
        ClientSession::new(SessionOptions {
            ehlo_name: "mta1.example.com".into(),
            use_starttls: false,
            require_starttls: false,
            reuse_after_421: true,
        })
    }

    /// PowerMTA v5 guide, `smtp-421-means-mx-unavailable` (reference §2.2): with the default
    /// `no`, a 421 inside a transaction is that transaction's answer and the connection is
    /// reset with RSET for reuse; replies still due for pipelined commands are dropped.
    #[test]
    fn a_421_at_mail_defers_the_transaction_and_resets_for_reuse() {
        let mut s = reusing_session();
        s.handle_bytes(b"220 mx\r\n250-mx\r\n250 PIPELINING\r\n");
        assert_eq!(events(&mut s), [SessionEvent::Ready]);
        output(&mut s);
        s.start_transaction(transaction(&["x@y.com", "z@y.com"]));
        output(&mut s);
        s.handle_bytes(b"421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred\r\n");
        let done = events(&mut s);
        let [SessionEvent::TransactionDone(replies)] = done.as_slice() else {
            panic!("{done:?}")
        };
        assert!(
            replies
                .iter()
                .all(|(phase, r)| *phase == Phase::Mail && r.code == 421),
            "{replies:?}"
        );
        assert_eq!(output(&mut s), "RSET\r\n");
        assert!(s.is_resetting() && s.closing_announced() && !s.is_done());
        // A server that did not close after all: its answers to the pipelined RCPTs and
        // DATA are dropped, and the RSET reply makes the session ready again.
        s.handle_bytes(b"503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n554 5.5.1 no valid recipients\r\n250 2.0.0 OK\r\n");
        assert_eq!(events(&mut s), [SessionEvent::Ready]);
        assert!(!s.is_resetting());
        s.start_transaction(transaction(&["w@y.com"]));
        assert!(output(&mut s).starts_with("MAIL FROM:<a@example.com>\r\n"));
    }

    /// A 421 at end of data settles the recipients accepted at RCPT; one refused at RCPT
    /// keeps its own reply and phase.
    #[test]
    fn a_421_at_end_of_data_settles_the_accepted_recipients() {
        let mut s = reusing_session();
        s.handle_bytes(b"220 mx\r\n250-mx\r\n250 PIPELINING\r\n");
        events(&mut s);
        output(&mut s);
        s.start_transaction(transaction(&["x@y.com", "nouser@y.com"]));
        output(&mut s);
        s.handle_bytes(b"250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n354 go\r\n");
        output(&mut s);
        s.handle_bytes(b"421 4.7.28 rate limited\r\n");
        let done = events(&mut s);
        let [SessionEvent::TransactionDone(replies)] = done.as_slice() else {
            panic!("{done:?}")
        };
        assert_eq!(replies[0].0, Phase::DataEnd);
        assert_eq!(replies[0].1.code, 421);
        assert_eq!((replies[1].0, replies[1].1.code), (Phase::Rcpt, 550));
        assert_eq!(output(&mut s), "RSET\r\n");
    }

    /// With `smtp-421-means-mx-unavailable yes` the 421 fails the session (the engine then
    /// tries the next MX).
    #[test]
    fn with_421_meaning_mx_unavailable_the_session_fails() {
        let mut s = session();
        s.handle_bytes(b"220 mx\r\n250-mx\r\n250 PIPELINING\r\n");
        events(&mut s);
        s.start_transaction(transaction(&["x@y.com"]));
        s.handle_bytes(b"421 4.7.0 closing\r\n");
        assert!(matches!(
            events(&mut s).as_slice(),
            [SessionEvent::Failed { phase: Phase::Mail, reason: FailureReason::Reply(r) }] if r.code == 421
        ));
        assert!(s.is_done());
    }
}
