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

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use crate::config::value::Rate;
use crate::rate::Window;
use crate::scenario::{IspSpec, SmtpPhase};
use crate::smtp::Reply;
use crate::smtp::server::{Envelope, ServerPolicy};
use crate::time::Time;

/// Answers whether a message carries a DKIM signature that verifies.
pub type DkimVerifier = Box<dyn Fn(&[u8]) -> bool>;

/// Most greylist triplets remembered per provider.
pub const GREYLIST_TRIPLETS_MAX: usize = 1_000_000;
/// Most mailboxes whose receive rate is tracked at once per provider.
pub const MAILBOXES_MAX: usize = 100_000;

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

/// A throttle reply the provider gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThrottleEvent {
    pub at: Time,
    pub peer: IpAddr,
    pub phase: SmtpPhase,
    /// `ip:…` or `net:…/24`.
    pub key: String,
    /// When the penalty on `key` ends.
    pub until: Time,
    /// The attempt came during a penalty (and extended it).
    pub early_retry: bool,
    pub reply: String,
}

/// What a provider saw, for receiver-side checks and reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReceiverLog {
    pub connections: Vec<ConnectionLog>,
    pub throttles: Vec<ThrottleEvent>,
    /// Feedback-loop complaints: when, from which source IP, sender and recipient.
    pub complaints: Vec<(Time, IpAddr, String, String)>,
    /// Accepted recipients, with the peer and time.
    pub accepted_rcpts: Vec<(IpAddr, Time)>,
    pub messages_accepted: u64,
}

/// A provider's shared state: every connection to any of its MX hosts sees it.
pub struct Provider {
    pub spec: IspSpec,
    /// Set by the driver before every call.
    pub now: Time,
    open: BTreeMap<IpAddr, u64>,
    rates: BTreeMap<IpAddr, Window>,
    /// Greylist triplets: first seen, and whether a retry has passed.
    greylist: BTreeMap<(String, String, String), (Time, bool)>,
    /// Greylist passes per client network (/24), and when the last one was counted.
    passes: BTreeMap<String, (u32, Time)>,
    buckets: BTreeMap<String, Window>,
    penalties: BTreeMap<String, Time>,
    /// Per-mailbox receive windows, for `per_mailbox_per_minute`.
    mailboxes: BTreeMap<String, Window>,
    /// Accepted attempts per source IP per hour (hour number since the epoch), for the
    /// spike rule; the last day is kept.
    hourly: BTreeMap<IpAddr, BTreeMap<u64, u64>>,
    /// Clean sending days per source IP, and the day (since the epoch) last credited.
    clean_days: BTreeMap<IpAddr, (u32, u64)>,
    /// How the audience of each sender (envelope sender) reacts: the share of delivered
    /// messages reported as spam. Set by the driver from the scenario's streams.
    pub complaint_rates: BTreeMap<String, f64>,
    /// The sender's posture (SPF, DMARC) as this provider's DNS lookups would find it.
    pub spf_pass: bool,
    pub dmarc: bool,
    /// Verifies a message's DKIM signatures against the simulated DNS (the driver supplies
    /// it, built on mail-auth); `None` treats every message as unsigned.
    pub dkim_verifier: Option<DkimVerifier>,
    /// Messages per sending domain per day, for the bulk-sender threshold.
    domain_days: BTreeMap<(String, u64), u64>,
    rng: ChaCha8Rng,
    /// Replies forced by faults: phase, reply, from, until.
    overrides: Vec<(SmtpPhase, Reply, Time, Time)>,
    pub log: ReceiverLog,
}

impl Provider {
    /// A provider whose random draws (penalty lengths) come from `seed`.
    pub fn new(spec: IspSpec, seed: u64) -> Provider {
        Provider {
            spec,
            now: Time::default(),
            open: BTreeMap::new(),
            rates: BTreeMap::new(),
            greylist: BTreeMap::new(),
            passes: BTreeMap::new(),
            buckets: BTreeMap::new(),
            penalties: BTreeMap::new(),
            mailboxes: BTreeMap::new(),
            hourly: BTreeMap::new(),
            clean_days: BTreeMap::new(),
            complaint_rates: BTreeMap::new(),
            spf_pass: true,
            dmarc: true,
            dkim_verifier: None,
            domain_days: BTreeMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            overrides: Vec::new(),
            log: ReceiverLog::default(),
        }
    }

    /// From `from` until `until`, answer `reply` at `phase`.
    pub fn override_reply(&mut self, phase: SmtpPhase, reply: Reply, from: Time, until: Time) {
        self.overrides.push((phase, reply, from, until));
    }

    /// The throttle's answer for an attempt from `peer` at `phase`, if it throttles it.
    fn throttle(&mut self, peer: IpAddr, phase: SmtpPhase) -> Option<Reply> {
        let throttle = self.spec.throttle.clone()?;
        if throttle.phase != phase {
            return None;
        }
        let now = self.now;
        let net = slash_24(peer);
        let capacity = self.ip_capacity(peer, &throttle);
        let keys = [
            (format!("ip:{peer}"), Some(capacity), &throttle.reply_ip),
            (
                format!("net:{net}"),
                throttle.per_netblock_per_hour,
                &throttle.reply_netblock,
            ),
        ];
        let fill = |reply: &Reply| {
            Reply::new(
                reply.code,
                reply.enhanced,
                reply
                    .text
                    .replace("{ip}", &peer.to_string())
                    .replace("{netblock}", &net),
            )
        };
        // A retry inside the penalty window extends it (Gmail: wait at least 10 minutes).
        for (key, _, reply) in &keys {
            if let Some(until) = self.penalties.get(key).copied().filter(|u| *u > now) {
                let until = until.max(now.plus_secs(throttle.early_retry_extension_s));
                self.penalties.insert(key.clone(), until);
                let reply = fill(reply);
                self.log_throttle(now, peer, phase, key, until, true, &reply);
                return Some(reply);
            }
        }
        let hour = now.unix_secs() / 3600;
        if let Some(percent) = throttle.spike_percent {
            let hours = self.hourly.entry(peer).or_default();
            let earlier: Vec<u64> = hours
                .range(hour.saturating_sub(24)..hour)
                .map(|(_, n)| *n)
                .collect();
            let current = hours.get(&hour).copied().unwrap_or(0);
            if earlier.len() >= 3 {
                let average = earlier.iter().sum::<u64>() as f64 / earlier.len() as f64;
                if current as f64 * 100.0 >= percent as f64 * average {
                    let (key, _, reply) = &keys[0];
                    let reply = fill(reply);
                    return Some(self.start_penalty(&throttle, peer, phase, key, reply));
                }
            }
        }
        for (key, capacity, reply) in &keys {
            let Some(capacity) = capacity else {
                continue;
            };
            let rate = Rate::Limit {
                count: *capacity,
                per_seconds: 3600,
            };
            let window = self
                .buckets
                .entry(key.clone())
                .or_insert_with(|| Window::new(3_600_000));
            if window.allowance(rate, now) == 0 {
                let reply = fill(reply);
                return Some(self.start_penalty(&throttle, peer, phase, key, reply));
            }
        }
        for (key, capacity, _) in &keys {
            if capacity.is_some()
                && let Some(window) = self.buckets.get_mut(key)
            {
                window.record(now, 1);
            }
        }
        let hours = self.hourly.entry(peer).or_default();
        *hours.entry(hour).or_insert(0) += 1;
        hours.retain(|h, _| *h + 48 >= hour);
        None
    }

    /// The IP's hourly capacity: the cold value grown by its clean sending days. A day is
    /// clean when the IP sent at least a quarter of what its capacity allowed that day and
    /// was never throttled (reference §4.5: `C_cold · G^d_eff`, capped).
    fn ip_capacity(&mut self, peer: IpAddr, throttle: &crate::scenario::Throttle) -> u64 {
        let Some(growth) = throttle.growth_percent_per_clean_day else {
            return throttle.per_ip_per_hour;
        };
        let today = self.now.unix_secs() / 86_400;
        let (days, credited) = self.clean_days.get(&peer).copied().unwrap_or((0, today));
        let capacity_for = |days: u32| -> u64 {
            let mut c = throttle.per_ip_per_hour as f64;
            for _ in 0..days {
                c = (c * growth as f64 / 100.0).min(throttle.capacity_max_per_hour as f64);
            }
            c as u64
        };
        let mut days_now = days;
        // Credit each finished day since the last one looked at.
        for day in credited..today {
            let hours = self.hourly.get(&peer);
            let sent: u64 = hours.map_or(0, |h| {
                h.range(day * 24..(day + 1) * 24).map(|(_, n)| *n).sum()
            });
            let throttled = self
                .log
                .throttles
                .iter()
                .any(|t| t.peer == peer && t.at.unix_secs() / 86_400 == day);
            let complaints = self
                .log
                .complaints
                .iter()
                .filter(|(at, ip, _, _)| *ip == peer && at.unix_secs() / 86_400 == day)
                .count() as u64;
            let allowed = capacity_for(days_now) * 24;
            // Complaints over 0.3% of the day's mail undo the IP's standing (Gmail's
            // threshold); under 0.1% a day can count as clean.
            if complaints * 1000 >= sent.max(1) * 3 {
                days_now = 0;
            } else if !throttled && sent * 4 >= allowed && complaints * 1000 < sent.max(1) {
                days_now += 1;
            }
        }
        self.clean_days.insert(peer, (days_now, today));
        capacity_for(days_now)
    }

    /// Throttles `key` for a penalty drawn between the model's bounds, logs it, and returns
    /// the reply.
    fn start_penalty(
        &mut self,
        throttle: &crate::scenario::Throttle,
        peer: IpAddr,
        phase: SmtpPhase,
        key: &str,
        reply: Reply,
    ) -> Reply {
        let span = throttle
            .penalty_max_s
            .saturating_sub(throttle.penalty_min_s);
        let draw = if span == 0 {
            0
        } else {
            self.rng.random_range(0..=span)
        };
        let now = self.now;
        let until = now.plus_secs(throttle.penalty_min_s + draw);
        self.penalties.insert(key.to_string(), until);
        self.log_throttle(now, peer, phase, key, until, false, &reply);
        reply
    }

    #[allow(clippy::too_many_arguments)]
    fn log_throttle(
        &mut self,
        at: Time,
        peer: IpAddr,
        phase: SmtpPhase,
        key: &str,
        until: Time,
        early_retry: bool,
        reply: &Reply,
    ) {
        self.log.throttles.push(ThrottleEvent {
            at,
            peer,
            phase,
            key: key.to_string(),
            until,
            early_retry,
            reply: reply.one_line(),
        });
    }

    /// The provider's authentication rules, with real DKIM verification.
    fn authenticate(&mut self, envelope: &Envelope, data: &[u8]) -> Option<Reply> {
        let rules = self.spec.auth.clone()?;
        let domain = envelope
            .mail_from
            .rsplit_once('@')
            .map_or("", |(_, d)| d)
            .to_ascii_lowercase();
        let day = self.now.unix_secs() / 86_400;
        let sent = self.domain_days.entry((domain, day)).or_insert(0);
        *sent += 1;
        let bulk = *sent > rules.bulk_threshold_per_day;
        let dkim = self
            .dkim_verifier
            .as_ref()
            .is_some_and(|verify| verify(data));
        let spf = self.spf_pass;
        if rules.require_spf_or_dkim && !(spf || dkim) {
            return Some(rules.reply_unauthenticated);
        }
        if bulk && rules.bulk_requires_both && !(spf && dkim) {
            return Some(rules.reply_unauthenticated);
        }
        if bulk && rules.bulk_requires_dmarc && !self.dmarc {
            return Some(rules.reply_no_dmarc);
        }
        None
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
        let peer = self.peer;
        let refusal = forced
            .or_else(|| over_cap.then(|| p.spec.replies.over_cap.clone()))
            .or_else(|| p.throttle(peer, SmtpPhase::Greeting));
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
        let mut p = self.provider.borrow_mut();
        p.forced(SmtpPhase::Ehlo)
            .or_else(|| p.throttle(self.peer, SmtpPhase::Ehlo))
    }

    fn mail_from(&mut self, _envelope: &Envelope) -> Reply {
        let mut p = self.provider.borrow_mut();
        if let Some(reply) = p.forced(SmtpPhase::Mail) {
            return reply;
        }
        if p.spec
            .max_messages_per_connection
            .is_some_and(|max| self.messages >= max)
        {
            return p.spec.replies.max_messages.clone();
        }
        if let Some(reply) = p.throttle(self.peer, SmtpPhase::Mail) {
            return reply;
        }
        Reply::new(250, Some([2, 1, 0]), "OK")
    }

    fn close_after_reply(&mut self) -> bool {
        let p = self.provider.borrow();
        p.spec.close_silently_after_max_messages
            && p.spec
                .max_messages_per_connection
                .is_some_and(|max| self.messages >= max)
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
            return p.spec.replies.too_many_recipients.clone();
        }
        let local = rcpt.split('@').next().unwrap_or("");
        if p.spec.reject_unknown_users && local.starts_with("nouser") {
            return p.spec.replies.unknown_user.clone();
        }
        if local.starts_with("disabled") {
            return p.spec.replies.disabled.clone();
        }
        if local.starts_with("full") {
            return p.spec.replies.full_mailbox.clone();
        }
        let now = p.now;
        if let Some(grey) = p.spec.greylist.clone() {
            let client = slash_24(self.peer);
            let whitelisted = grey.whitelist_after > 0
                && p.passes
                    .get(&client)
                    .is_some_and(|(n, _)| *n >= grey.whitelist_after);
            if !whitelisted {
                let key = (
                    slash_24(self.peer),
                    envelope.mail_from.to_ascii_lowercase(),
                    rcpt.to_ascii_lowercase(),
                );
                let count_pass = |p: &mut Provider| {
                    // postgrey counts at most one pass an hour toward auto-whitelisting.
                    let spacing_ms = grey.whitelist_spacing_s * 1000;
                    let entry = p
                        .passes
                        .entry(client.clone())
                        .or_insert((0, Time::default()));
                    if entry.0 == 0 || now.since(entry.1) >= spacing_ms {
                        *entry = (entry.0 + 1, now);
                    }
                };
                match p.greylist.get(&key).copied() {
                    Some((_, true)) => count_pass(&mut p),
                    Some((first, false)) if now.since(first) < grey.delay_s * 1000 => {
                        return greylisted(rcpt);
                    }
                    Some((first, false)) if now.since(first) > grey.retry_window_s * 1000 => {
                        p.greylist.insert(key, (now, false));
                        return greylisted(rcpt);
                    }
                    Some((first, false)) => {
                        p.greylist.insert(key, (first, true));
                        count_pass(&mut p);
                    }
                    None => {
                        if p.greylist.len() >= GREYLIST_TRIPLETS_MAX {
                            // Full: forget triplets whose retry window has passed; if that
                            // frees nothing, let the mail through rather than defer forever.
                            let window_ms = grey.retry_window_s * 1000;
                            p.greylist
                                .retain(|_, (first, _)| now.since(*first) <= window_ms);
                        }
                        if p.greylist.len() >= GREYLIST_TRIPLETS_MAX {
                            count_pass(&mut p);
                        } else {
                            p.greylist.insert(key, (now, false));
                            return greylisted(rcpt);
                        }
                    }
                }
            }
        }
        if let Some(limit) = p.spec.rate_limit.clone() {
            let horizon_ms = match limit.per_ip {
                Rate::Limit { per_seconds, .. } => per_seconds * 1000,
                Rate::Unlimited => 0,
            };
            let window = p
                .rates
                .entry(self.peer)
                .or_insert_with(|| Window::new(horizon_ms));
            if window.allowance(limit.per_ip, now) == 0 {
                return limit.reply;
            }
            window.record(now, 1);
        }
        if let Some(per_minute) = p.spec.per_mailbox_per_minute {
            let rate = Rate::Limit {
                count: per_minute,
                per_seconds: 60,
            };
            if p.mailboxes.len() >= MAILBOXES_MAX {
                // Bounded memory: mailboxes idle for a minute have nothing to remember.
                p.mailboxes
                    .retain(|_, w| w.allowance(rate, now) < per_minute);
            }
            let window = p
                .mailboxes
                .entry(rcpt.to_ascii_lowercase())
                .or_insert_with(|| Window::new(60_000));
            if window.allowance(rate, now) == 0 {
                return p.spec.replies.mailbox_rate.clone();
            }
            window.record(now, 1);
        }
        // The throttle comes last, so only recipients otherwise accepted use its capacity.
        if let Some(reply) = p.throttle(self.peer, SmtpPhase::Rcpt) {
            return reply;
        }
        let peer = self.peer;
        p.log.accepted_rcpts.push((peer, now));
        Reply::new(250, Some([2, 1, 5]), "OK")
    }

    fn data(&mut self, _envelope: &Envelope) -> Reply {
        let mut p = self.provider.borrow_mut();
        p.forced(SmtpPhase::Data)
            .or_else(|| p.throttle(self.peer, SmtpPhase::Data))
            .unwrap_or_else(|| Reply::new(354, None, "Go ahead"))
    }

    fn message(&mut self, envelope: &Envelope, data: &[u8]) -> Reply {
        let mut p = self.provider.borrow_mut();
        if let Some(reply) = p.forced(SmtpPhase::DataEnd) {
            return reply;
        }
        if let Some(reply) = p.authenticate(envelope, data) {
            return reply;
        }
        if let Some(reply) = p.throttle(self.peer, SmtpPhase::DataEnd) {
            return reply;
        }
        let rate = p
            .complaint_rates
            .get(&envelope.mail_from.to_ascii_lowercase())
            .copied()
            .unwrap_or(0.0);
        if rate > 0.0 {
            let now = p.now;
            for rcpt in &envelope.recipients {
                if p.rng.random_bool(rate) {
                    let entry = (now, self.peer, envelope.mail_from.clone(), rcpt.clone());
                    p.log.complaints.push(entry);
                }
            }
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
            domains: vec!["t.example".into()],
            mx: vec!["mx.t.example".into()],
            max_connections_per_ip: Some(1),
            greylist: Some(crate::scenario::Greylist {
                delay_s: 300,
                retry_window_s: 172_800,
                whitelist_after: 5,
                whitelist_spacing_s: 3600,
            }),
            starttls: false,
            ..IspSpec::generic("t")
        }
    }

    fn talk(server: &mut ServerSession<Receiver>, bytes: &[u8]) -> String {
        server.handle_bytes(bytes);
        String::from_utf8(server.take_output().unwrap_or_default()).unwrap()
    }

    #[test]
    fn connection_cap_and_greylisting() {
        let provider = Rc::new(RefCell::new(Provider::new(spec(), 1)));
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

    #[test]
    fn one_mailbox_receiving_too_fast_is_deferred() {
        let mut spec = spec();
        spec.greylist = None;
        spec.per_mailbox_per_minute = Some(2);
        let provider = Rc::new(RefCell::new(Provider::new(spec, 1)));
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        let mut s = ServerSession::new(Receiver::connect(Rc::clone(&provider), peer));
        s.take_output();
        let out = talk(&mut s, b"EHLO a\r\nMAIL FROM:<s@x.example>\r\nRCPT TO:<u@t.example>\r\nRCPT TO:<u@t.example>\r\nRCPT TO:<u@t.example>\r\nRCPT TO:<v@t.example>\r\n");
        assert!(out.ends_with("250 2.1.5 OK\r\n250 2.1.5 OK\r\n450 4.2.1 The user you are trying to contact is receiving mail too quickly.\r\n250 2.1.5 OK\r\n"), "{out}");
    }

    #[test]
    fn an_hour_far_above_the_trailing_average_is_throttled() {
        let mut spec = spec();
        spec.greylist = None;
        spec.max_connections_per_ip = None;
        spec.throttle = Some(crate::scenario::Throttle {
            per_ip_per_hour: 1_000_000,
            per_netblock_per_hour: None,
            phase: SmtpPhase::Rcpt,
            reply_ip: Reply::new(421, Some([4, 7, 28]), "spike from {ip}"),
            reply_netblock: Reply::new(421, Some([4, 7, 28]), "spike"),
            penalty_min_s: 600,
            penalty_max_s: 600,
            early_retry_extension_s: 600,
            spike_percent: Some(200),
            growth_percent_per_clean_day: None,
            capacity_max_per_hour: 1_000_000,
        });
        let provider = Rc::new(RefCell::new(Provider::new(spec, 1)));
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        let mut s = ServerSession::new(Receiver::connect(Rc::clone(&provider), peer));
        s.take_output();
        talk(&mut s, b"EHLO a\r\nMAIL FROM:<s@x.example>\r\n");
        let rcpts = |n: usize, tag: &str| -> Vec<u8> {
            (0..n)
                .map(|i| format!("RCPT TO:<{tag}{i}@t.example>\r\n"))
                .collect::<String>()
                .into_bytes()
        };
        // Three hours of 10, then the fourth hour: the 20th is twice the average.
        for hour in 0..3u64 {
            provider.borrow_mut().now = Time::from_secs(hour * 3600);
            assert!(!talk(&mut s, &rcpts(10, &format!("h{hour}-"))).contains("421"));
        }
        provider.borrow_mut().now = Time::from_secs(3 * 3600);
        let out = talk(&mut s, &rcpts(21, "h3-"));
        assert_eq!(out.matches("250 2.1.5 OK").count(), 20, "{out}");
        assert!(
            out.ends_with("421 4.7.28 spike from 192.0.2.7\r\n"),
            "{out}"
        );
    }

    #[test]
    fn clean_sending_days_raise_the_hourly_capacity() {
        let run = |warm_up: bool, complaints: usize| -> usize {
            let mut spec = spec();
            spec.greylist = None;
            spec.max_connections_per_ip = None;
            spec.throttle = Some(crate::scenario::Throttle {
                per_ip_per_hour: 10,
                per_netblock_per_hour: None,
                phase: SmtpPhase::Rcpt,
                reply_ip: Reply::new(421, Some([4, 7, 28]), "rate limited"),
                reply_netblock: Reply::new(421, Some([4, 7, 28]), "rate limited"),
                penalty_min_s: 600,
                penalty_max_s: 600,
                early_retry_extension_s: 600,
                spike_percent: None,
                growth_percent_per_clean_day: Some(200),
                capacity_max_per_hour: 1_000,
            });
            let provider = Rc::new(RefCell::new(Provider::new(spec, 1)));
            let peer: IpAddr = "192.0.2.7".parse().unwrap();
            let mut s = ServerSession::new(Receiver::connect(Rc::clone(&provider), peer));
            s.take_output();
            talk(&mut s, b"EHLO a\r\nMAIL FROM:<s@x.example>\r\n");
            let rcpts = |n: usize, tag: &str| -> Vec<u8> {
                (0..n)
                    .map(|i| format!("RCPT TO:<{tag}{i}@t.example>\r\n"))
                    .collect::<String>()
                    .into_bytes()
            };
            if warm_up {
                // Day 0: 10 an hour for 6 hours, a quarter of the day's capacity, never throttled.
                for hour in 0..6u64 {
                    provider.borrow_mut().now = Time::from_secs(hour * 3600);
                    assert!(!talk(&mut s, &rcpts(10, &format!("d0h{hour}-"))).contains("421"));
                }
                for i in 0..complaints {
                    let entry = (
                        Time::from_secs(7 * 3600),
                        peer,
                        "s@x.example".to_string(),
                        format!("d0h0-{i}@t.example"),
                    );
                    provider.borrow_mut().log.complaints.push(entry);
                }
            }
            provider.borrow_mut().now = Time::from_secs(86_400 + 3600);
            let out = talk(&mut s, &rcpts(30, "d1-"));
            out.matches("250 2.1.5 OK").count()
        };
        assert_eq!(run(false, 0), 10, "a cold IP: 10 an hour");
        assert_eq!(run(true, 0), 20, "one clean day doubles it (growth 2.0)");
        // One complaint in 60 messages (1.7%) is a complaint spike: no credit, standing reset.
        assert_eq!(run(true, 1), 10, "a complaint spike keeps the IP cold");
    }
}
