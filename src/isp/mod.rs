//! Simulated mailbox providers: the receiving policy behind `smtp::server::ServerSession`.
//!
//! Owns the generic receiver model: per-source-IP connection caps, messages per connection,
//! recipients per transaction, per-source-IP rate limits with a chosen reply, greylisting
//! (triplet of /24, sender and recipient, with a delay), unknown users, a fixed reply at a
//! chosen phase, and replies overridden by scheduled faults. It also keeps the receiver's own
//! log, so tests can check limits "from the wire". Pure: the driver sets `now` before each
//! call; it must never import the engine (a provider knows the sender only from the wire).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::rc::Rc;

use crate::rate::Window;
use crate::scenario::{IspSpec, SmtpPhase};
use crate::smtp::Reply;
use crate::smtp::server::{Envelope, ServerPolicy};
use crate::time::Time;

/// Most greylist triplets remembered per provider.
pub const GREYLIST_TRIPLETS_MAX: usize = 1_000_000;

/// One connection as the receiver saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLog {
    pub peer: IpAddr,
    pub opened: Time,
    pub closed: Option<Time>,
    /// Messages accepted (250 after DATA) on this connection.
    pub messages: u64,
    /// Whether the greeting turned the connection away.
    pub refused: bool,
}

/// What a provider saw, for receiver-side checks and reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReceiverLog {
    pub connections: Vec<ConnectionLog>,
    /// Accepted recipients, with the peer and time.
    pub accepted_rcpts: Vec<(IpAddr, Time)>,
    pub messages_accepted: u64,
}

/// A provider's shared state: every connection to any of its MX hosts sees it.
#[derive(Debug)]
pub struct Provider {
    pub spec: IspSpec,
    /// Set by the driver before every call.
    pub now: Time,
    open: BTreeMap<IpAddr, u64>,
    rates: BTreeMap<IpAddr, Window>,
    greylist: BTreeMap<(String, String, String), Time>,
    /// Replies forced by faults: phase, reply, from, until.
    overrides: Vec<(SmtpPhase, Reply, Time, Time)>,
    pub log: ReceiverLog,
}

impl Provider {
    pub fn new(spec: IspSpec) -> Provider {
        Provider {
            spec,
            now: Time::default(),
            open: BTreeMap::new(),
            rates: BTreeMap::new(),
            greylist: BTreeMap::new(),
            overrides: Vec::new(),
            log: ReceiverLog::default(),
        }
    }

    /// From `from` until `until`, answer `reply` at `phase`.
    pub fn override_reply(&mut self, phase: SmtpPhase, reply: Reply, from: Time, until: Time) {
        self.overrides.push((phase, reply, from, until));
    }

    fn forced(&self, phase: SmtpPhase) -> Option<Reply> {
        let now = self.now;
        self.overrides
            .iter()
            .find(|(p, _, from, until)| *p == phase && *from <= now && now < *until)
            .map(|(_, r, _, _)| r.clone())
            .or_else(|| {
                self.spec
                    .fixed_reply
                    .as_ref()
                    .filter(|(p, _)| *p == phase)
                    .map(|(_, r)| r.clone())
            })
    }
}

/// The policy of one connection to a provider.
pub struct Receiver {
    provider: Rc<RefCell<Provider>>,
    peer: IpAddr,
    log_index: usize,
    messages: u64,
}

impl Receiver {
    /// A new connection from `peer`.
    pub fn connect(provider: Rc<RefCell<Provider>>, peer: IpAddr) -> Receiver {
        let log_index = {
            let mut p = provider.borrow_mut();
            let now = p.now;
            p.log.connections.push(ConnectionLog {
                peer,
                opened: now,
                closed: None,
                messages: 0,
                refused: false,
            });
            p.log.connections.len() - 1
        };
        Receiver {
            provider,
            peer,
            log_index,
            messages: 0,
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut p = self.provider.borrow_mut();
        let now = p.now;
        let log = &mut p.log.connections[self.log_index];
        log.closed = Some(now);
        if !log.refused
            && let Some(count) = p.open.get_mut(&self.peer)
        {
            *count = count.saturating_sub(1);
        }
    }
}

fn slash_24(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

impl ServerPolicy for Receiver {
    fn greeting(&mut self) -> Reply {
        let mut p = self.provider.borrow_mut();
        let forced = p.forced(SmtpPhase::Greeting);
        let over_cap = p
            .spec
            .max_connections_per_ip
            .is_some_and(|max| p.open.get(&self.peer).copied().unwrap_or(0) >= max);
        let refusal = forced.or_else(|| {
            over_cap.then(|| {
                Reply::new(
                    421,
                    Some([4, 7, 0]),
                    "Too many concurrent SMTP connections from this IP address; please try again later.",
                )
            })
        });
        match refusal {
            Some(reply) if reply.class() != 2 => {
                p.log.connections[self.log_index].refused = true;
                reply
            }
            _ => {
                *p.open.entry(self.peer).or_insert(0) += 1;
                let host = p.spec.mx.first().cloned().unwrap_or_default();
                Reply::new(220, None, format!("{host} ESMTP ready"))
            }
        }
    }

    fn capabilities(&mut self, tls: bool) -> Vec<String> {
        let p = self.provider.borrow();
        let mut caps = vec![
            "SIZE 35882577".to_string(),
            "8BITMIME".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "PIPELINING".to_string(),
        ];
        if p.spec.starttls && !tls {
            caps.push("STARTTLS".to_string());
        }
        caps
    }

    fn ehlo(&mut self, _host: &str) -> Option<Reply> {
        self.provider.borrow().forced(SmtpPhase::Ehlo)
    }

    fn mail_from(&mut self, _envelope: &Envelope) -> Reply {
        let p = self.provider.borrow();
        if let Some(reply) = p.forced(SmtpPhase::Mail) {
            return reply;
        }
        if p.spec
            .max_messages_per_connection
            .is_some_and(|max| self.messages >= max)
        {
            return Reply::new(
                421,
                Some([4, 7, 0]),
                "Maximum number of messages per connection reached, closing connection.",
            );
        }
        Reply::new(250, Some([2, 1, 0]), "OK")
    }

    fn rcpt_to(&mut self, envelope: &Envelope, rcpt: &str) -> Reply {
        let mut p = self.provider.borrow_mut();
        if let Some(reply) = p.forced(SmtpPhase::Rcpt) {
            return reply;
        }
        if p.spec
            .max_recipients_per_transaction
            .is_some_and(|max| envelope.recipients.len() as u64 >= max)
        {
            return Reply::new(
                452,
                Some([4, 5, 3]),
                "Your message has too many recipients.",
            );
        }
        let local = rcpt.split('@').next().unwrap_or("");
        if p.spec.reject_unknown_users && local.starts_with("nouser") {
            return Reply::new(
                550,
                Some([5, 1, 1]),
                "The email account that you tried to reach does not exist.",
            );
        }
        let now = p.now;
        if let Some(delay_s) = p.spec.greylist_delay_s {
            let key = (
                slash_24(self.peer),
                envelope.mail_from.clone(),
                rcpt.to_ascii_lowercase(),
            );
            match p.greylist.get(&key).copied() {
                Some(first) if now.since(first) >= delay_s * 1000 => {}
                Some(_) => return greylisted(rcpt),
                None => {
                    if p.greylist.len() < GREYLIST_TRIPLETS_MAX {
                        p.greylist.insert(key, now);
                    }
                    return greylisted(rcpt);
                }
            }
        }
        if let Some(limit) = p.spec.rate_limit.clone() {
            let window = p
                .rates
                .entry(self.peer)
                .or_insert_with(|| Window::new(86_400_000));
            if window.allowance(limit.per_ip, now) == 0 {
                return limit.reply;
            }
            window.record(now, 1);
        }
        let peer = self.peer;
        p.log.accepted_rcpts.push((peer, now));
        Reply::new(250, Some([2, 1, 5]), "OK")
    }

    fn data(&mut self, _envelope: &Envelope) -> Reply {
        self.provider
            .borrow()
            .forced(SmtpPhase::Data)
            .unwrap_or_else(|| Reply::new(354, None, "Go ahead"))
    }

    fn message(&mut self, _envelope: &Envelope, _data: &[u8]) -> Reply {
        let mut p = self.provider.borrow_mut();
        if let Some(reply) = p.forced(SmtpPhase::DataEnd) {
            return reply;
        }
        self.messages += 1;
        p.log.messages_accepted += 1;
        p.log.connections[self.log_index].messages += 1;
        Reply::new(250, Some([2, 0, 0]), "OK queued")
    }
}

fn greylisted(rcpt: &str) -> Reply {
    let domain = rcpt.rsplit('@').next().unwrap_or("");
    Reply::new(
        450,
        Some([4, 2, 0]),
        format!(
            "<{rcpt}>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/{domain}.html"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::server::ServerSession;

    fn spec() -> IspSpec {
        IspSpec {
            name: "t".into(),
            domains: vec!["t.example".into()],
            mx: vec!["mx.t.example".into()],
            max_connections_per_ip: Some(1),
            max_messages_per_connection: None,
            max_recipients_per_transaction: None,
            rate_limit: None,
            greylist_delay_s: Some(300),
            reject_unknown_users: true,
            starttls: false,
            fixed_reply: None,
        }
    }

    fn talk(server: &mut ServerSession<Receiver>, bytes: &[u8]) -> String {
        server.handle_bytes(bytes);
        String::from_utf8(server.take_output().unwrap_or_default()).unwrap()
    }

    #[test]
    fn connection_cap_and_greylisting() {
        let provider = Rc::new(RefCell::new(Provider::new(spec())));
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        let mut first = ServerSession::new(Receiver::connect(Rc::clone(&provider), peer));
        assert!(talk(&mut first, b"").starts_with("220 mx.t.example ESMTP"));
        let mut second = ServerSession::new(Receiver::connect(Rc::clone(&provider), peer));
        let refused = String::from_utf8(second.take_output().unwrap()).unwrap();
        assert!(
            refused.starts_with("421 4.7.0 Too many concurrent"),
            "{refused}"
        );
        let out = talk(
            &mut first,
            b"EHLO a\r\nMAIL FROM:<s@x.example>\r\nRCPT TO:<u@t.example>\r\n",
        );
        assert!(out.ends_with("450 4.2.0 <u@t.example>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/t.example.html\r\n"), "{out}");
        provider.borrow_mut().now = Time::from_secs(300);
        let out = talk(
            &mut first,
            b"RCPT TO:<u@t.example>\r\nRCPT TO:<nouser1@t.example>\r\n",
        );
        assert_eq!(
            out,
            "250 2.1.5 OK\r\n550 5.1.1 The email account that you tried to reach does not exist.\r\n"
        );
        drop(second);
        drop(first);
        let log = &provider.borrow().log;
        assert_eq!(log.connections.len(), 2);
        assert!(log.connections[1].refused);
        assert_eq!(log.accepted_rcpts.len(), 1);
    }
}
