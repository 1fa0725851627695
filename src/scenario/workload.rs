//! Workload streams: `[[workload]]` tables turned into timed injections.
//!
//! Each stream has its own ChaCha8 generator seeded from the scenario seed and the stream's
//! index, so adding a stream never changes another stream's draws. Message `i` of a stream
//! is injected at `start + i × spacing`; recipients are drawn from the domain mix, a share of
//! them unknown users (local part `nouser…`), full mailboxes (`full…`) and disabled accounts
//! (`disabled…`), which the simulated receivers answer as their models say. A stream with a
//! daily shape (`daily`, `growth`, `window`, `tz`, `weekdays`) spaces each sending day's
//! messages over that day's window instead (`shape`), the day's engaged segment first
//! (local part `engaged…`).

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use toml::Spanned;

use super::shape::{self, DayPlan};
use super::{RawWorkload, Reporter, ScenarioError, interval};
use crate::config::value;
use crate::engine::{Injection, MessageData, SharedBody};
use crate::time::Time;

/// Largest generated message.
pub const MESSAGE_SIZE_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Most injections one `take_due` call returns; the rest stay due.
pub const TAKE_BATCH_MAX: usize = 10_000;
/// Most recipients per generated message.
pub const RECIPIENTS_PER_MESSAGE_MAX: u32 = 1000;
/// Longest address the engine accepts (`engine::Engine::inject` refuses longer ones).
pub const ADDRESS_MAX_BYTES: usize = 256;

#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub index: usize,
    pub vmta: String,
    pub mail_from: String,
    pub messages: u64,
    pub start_s: u64,
    /// Milliseconds between messages × `messages` (so spacing stays exact): the stream's span.
    pub span_ms: u64,
    /// With a daily shape, its sending days (then `span_ms` is unused); empty otherwise.
    pub days: Vec<DayPlan>,
    /// Share of each sending day's recipients in the engaged segment, sent first.
    pub engaged_share: f64,
    /// The engagement of the engaged segment (`engagement` is the rest's).
    pub engaged_engagement: f64,
    pub recipients_per_message: u32,
    pub size_bytes: u64,
    /// Domains with their weights, in file order.
    pub domains: Vec<(String, f64)>,
    pub unknown_user_rate: f64,
    pub full_mailbox_rate: f64,
    pub disabled_rate: f64,
    /// Share of delivered messages whose recipient reports them as spam.
    pub complaint_rate: f64,
    /// Share of recipients who engage with the mail (open, read, reply): a reputation input.
    pub engagement: f64,
    /// Messages carry RFC 8058 one-click unsubscribe headers.
    pub one_click_unsubscribe: bool,
    /// The From: header when it is not the envelope sender (an ESP sending for a brand); the
    /// envelope sender then appears as Sender:.
    pub header_from: Option<String>,
}

impl Eq for Workload {}

impl Workload {
    pub(super) fn from_raw(
        index: usize,
        w: &RawWorkload,
        r: &Reporter<'_>,
        spanned: &Spanned<RawWorkload>,
        run_start_s: u64,
        duration_s: u64,
    ) -> Result<Workload, ScenarioError> {
        let err = |m: String| r.span(spanned, m);
        let start_s = match &w.start {
            Some(text) => interval(text).map_err(err)?,
            None => 0,
        };
        let daily = match (&w.daily, &w.growth) {
            (Some(_), Some(_)) => return Err(err("give `daily` or `growth`, not both".into())),
            (Some(list), None) => Some(shape::list(list).map_err(err)?),
            (None, Some(g)) => Some(shape::growth(g.start, g.factor, g.max).map_err(err)?),
            (None, None) => None,
        };
        let shaped = w.window.is_some() || w.tz.is_some() || w.weekdays.is_some();
        let days = match &daily {
            Some(_) if w.messages.is_some() || w.over.is_some() || w.rate.is_some() => {
                return Err(err(
                    "a stream with `daily` or `growth` takes its volume from them: leave out messages, over and rate".into(),
                ));
            }
            Some(daily) => {
                let window = match &w.window {
                    Some(text) => shape::parse_window(text).map_err(err)?,
                    None => (0, 86_400),
                };
                let tz = match &w.tz {
                    Some(text) => shape::parse_tz(text).map_err(err)?,
                    None => 0,
                };
                let weekdays = match &w.weekdays {
                    Some(names) => shape::parse_weekdays(names).map_err(err)?,
                    None => 0x7f,
                };
                shape::plan(
                    daily,
                    window,
                    tz,
                    weekdays,
                    run_start_s,
                    run_start_s + start_s,
                    run_start_s + duration_s,
                )
            }
            None if shaped => {
                return Err(err(
                    "window, tz and weekdays shape a daily volume: give `daily` or `growth` too"
                        .into(),
                ));
            }
            None => Vec::new(),
        };
        let messages = match (w.messages, days.last()) {
            (Some(n), _) => n,
            (None, Some(last)) => last.first + last.count,
            (None, None) if daily.is_some() => 0,
            (None, None) => {
                return Err(err(
                    "a stream needs `messages`, or a daily volume (`daily` or `growth`)".into(),
                ));
            }
        };
        let share = |name: &str, v: Option<f64>, default: f64| match v.unwrap_or(default) {
            v if (0.0..=1.0).contains(&v) => Ok(v),
            v => Err(err(format!("{name} is between 0 and 1, not {v}"))),
        };
        let engaged_share = share("engaged_share", w.engaged_share, 0.0)?;
        let engaged_engagement = share(
            "engaged_engagement",
            w.engaged_engagement,
            w.engagement.unwrap_or(0.0),
        )?;
        if w.engaged_engagement.is_some() && w.engaged_share.is_none() {
            return Err(err(
                "engaged_engagement applies to the engaged segment: give engaged_share too".into(),
            ));
        }
        let span_ms = match (&w.over, &w.rate) {
            (Some(_), Some(_)) => return Err(err("give `over` or `rate`, not both".into())),
            (Some(over), None) => interval(over).map_err(err)? * 1000,
            (None, Some(rate)) => match value::parse_rate(rate).map_err(|e| err(e.to_string()))? {
                value::Rate::Limit { count: 0, .. } => {
                    return Err(err(format!(
                        "a rate of `{rate}` sends nothing; give a count above 0 (or `over`)"
                    )));
                }
                value::Rate::Limit { count, per_seconds } => {
                    messages.saturating_mul(per_seconds.saturating_mul(1000)) / count
                }
                value::Rate::Unlimited => 0,
            },
            (None, None) => 0,
        };
        let size_bytes = match &w.size {
            Some(text) => {
                value::parse_size(text)
                    .map_err(|e| err(e.to_string()))?
                    .bytes
            }
            None => 2048,
        };
        if size_bytes > MESSAGE_SIZE_MAX_BYTES {
            return Err(err(format!(
                "size over the limit of {MESSAGE_SIZE_MAX_BYTES} bytes"
            )));
        }
        let recipients_per_message = w.recipients_per_message.unwrap_or(1);
        if !(1..=RECIPIENTS_PER_MESSAGE_MAX).contains(&recipients_per_message) {
            return Err(err(format!(
                "recipients_per_message is 1 to {RECIPIENTS_PER_MESSAGE_MAX}"
            )));
        }
        let unknown_user_rate = w.unknown_user_rate.unwrap_or(0.0);
        let full_mailbox_rate = w.full_mailbox_rate.unwrap_or(0.0);
        let disabled_rate = w.disabled_rate.unwrap_or(0.0);
        let shares = [unknown_user_rate, full_mailbox_rate, disabled_rate];
        if shares.iter().any(|r| !(0.0..=1.0).contains(r)) || shares.iter().sum::<f64>() > 1.0 {
            return Err(err(
                "unknown_user_rate, full_mailbox_rate and disabled_rate are shares between 0 and 1, at most 1 together".into(),
            ));
        }
        if w.domains.is_empty()
            || w.domains.values().any(|v| !v.is_finite() || *v < 0.0)
            || w.domains.values().sum::<f64>() <= 0.0
        {
            return Err(err(
                "domains is a table of domain = weight, with positive weights".into(),
            ));
        }
        if value::parse_address(&w.mail_from).is_err() || w.mail_from.len() > ADDRESS_MAX_BYTES {
            return Err(err(format!(
                "mail_from `{}` is not an address (of at most {ADDRESS_MAX_BYTES} bytes)",
                w.mail_from
            )));
        }
        // The longest recipient this stream generates must be one the engine accepts.
        let longest_local = format!(
            "disabled{index}.{}.{}",
            messages.saturating_sub(1),
            recipients_per_message - 1
        );
        for domain in w.domains.keys() {
            if !value::is_host_name(domain) {
                return Err(err(format!("`{domain}` in domains is not a domain name")));
            }
            if longest_local.len() + 1 + domain.len() > ADDRESS_MAX_BYTES {
                return Err(err(format!(
                    "recipients at `{domain}` would be longer than {ADDRESS_MAX_BYTES} bytes"
                )));
            }
        }
        Ok(Workload {
            index,
            vmta: w.vmta.get_ref().clone(),
            mail_from: w.mail_from.clone(),
            messages,
            start_s,
            span_ms,
            days,
            engaged_share,
            engaged_engagement,
            recipients_per_message,
            size_bytes,
            domains: w
                .domains
                .iter()
                .map(|(d, v)| (d.to_ascii_lowercase(), *v))
                .collect(),
            unknown_user_rate,
            full_mailbox_rate,
            disabled_rate,
            complaint_rate: match w.complaint_rate.unwrap_or(0.0) {
                r if (0.0..=1.0).contains(&r) => r,
                _ => return Err(err("complaint_rate is between 0 and 1".into())),
            },
            engagement: match w.engagement.unwrap_or(0.0) {
                e if (0.0..=1.0).contains(&e) => e,
                _ => return Err(err("engagement is between 0 and 1".into())),
            },
            one_click_unsubscribe: w.one_click_unsubscribe.unwrap_or(false),
            header_from: match &w.header_from {
                Some(from)
                    if value::parse_address(from).is_err() || from.len() > ADDRESS_MAX_BYTES =>
                {
                    return Err(err(format!("header_from `{from}` is not an address")));
                }
                other => other.clone(),
            },
        })
    }
}

impl Workload {
    /// The most of the stream's messages due within any `window_s` seconds of a run that
    /// ends `end_s` seconds after the start (messages are evenly spaced, so a window holds
    /// at most as many as its span's share, plus one).
    pub fn most_due_within(&self, window_s: u64, end_s: u64) -> u64 {
        let due = self.due_by(end_s);
        if !self.days.is_empty() {
            // A window may straddle two sending days.
            let window_ms = window_s.saturating_mul(1000);
            let most = self
                .days
                .iter()
                .zip(self.days.iter().skip(1).map(Some).chain([None]))
                .map(|(a, b)| {
                    a.most_within_ms(window_ms) + b.map_or(0, |b| b.most_within_ms(window_ms))
                })
                .max()
                .unwrap_or(0);
            return most.min(due);
        }
        if self.span_ms == 0 {
            return due;
        }
        let bound = (window_s as u128 * 1000 + 1) * self.messages as u128;
        bound.div_ceil(self.span_ms as u128).min(due as u128) as u64
    }

    /// How many of the stream's messages are due at or before `end_s` seconds after the start.
    pub fn due_by(&self, end_s: u64) -> u64 {
        if !self.days.is_empty() {
            let end_ms = end_s.saturating_mul(1000);
            return self.days.iter().map(|d| d.due_by_ms(end_ms)).sum();
        }
        if self.start_s > end_s {
            return 0;
        }
        let window_ms = (end_s - self.start_s) as u128 * 1000;
        if self.span_ms == 0 {
            return self.messages;
        }
        // Message i is due at start + ⌊i × span / messages⌋ ms: it is due by the end when
        // i × span < (window + 1) × messages.
        let bound = (window_ms + 1) * self.messages as u128;
        bound
            .div_ceil(self.span_ms as u128)
            .min(self.messages as u128) as u64
    }
}

struct Stream {
    workload: Workload,
    next: u64,
    rng: ChaCha8Rng,
    total_weight: f64,
    /// The body every message of the stream shares (one copy however many are queued).
    body: std::sync::Arc<SharedBody>,
}

/// The line a generated body repeats.
const BODY_LINE: &[u8] =
    b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n";

impl Stream {
    /// The sending day of message `n` of a shaped stream.
    fn day_of(&self, n: u64) -> Option<&DayPlan> {
        let days = &self.workload.days;
        days.get(days.partition_point(|d| d.first + d.count <= n))
    }

    fn due(&self, start: Time) -> Option<Time> {
        if !self.workload.days.is_empty() {
            let day = self.day_of(self.next)?;
            return Some(start.plus_ms(day.offset_ms(self.next - day.first)));
        }
        (self.next < self.workload.messages).then(|| {
            let offset_ms = (self.next as u128 * self.workload.span_ms as u128
                / self.workload.messages.max(1) as u128) as u64;
            start.plus_secs(self.workload.start_s).plus_ms(offset_ms)
        })
    }
}

/// Generates the injections of all streams in time order.
pub struct Generated {
    start: Time,
    streams: Vec<Stream>,
    /// Each stream's next injection as (due, stream): one entry per stream that has one, so
    /// the next injection of all is the first (ties by stream) without asking every stream
    /// for every message. Kept by [`Generated::refresh`] whenever a stream changes.
    due: std::collections::BTreeSet<(Time, usize)>,
    /// The entry each stream has in `due`.
    due_of: Vec<Option<Time>>,
}

impl Generated {
    pub fn new(workloads: &[Workload], seed: u64, start: Time) -> Generated {
        let streams = workloads
            .iter()
            .map(|w| {
                // Whole lines up to the stream's size, less the header block of its first
                // message (later ones differ by a few digits).
                let head = head(
                    w,
                    0,
                    &[format!("u{}.0.0@{}", w.index, w.domains[0].0)],
                    start,
                );
                let lines = (w.size_bytes as usize).saturating_sub(head.len()) / BODY_LINE.len();
                Stream {
                    rng: ChaCha8Rng::seed_from_u64(
                        seed ^ (w.index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    ),
                    total_weight: w.domains.iter().map(|(_, v)| v).sum(),
                    workload: w.clone(),
                    next: 0,
                    body: std::sync::Arc::new(SharedBody::new(BODY_LINE.repeat(lines))),
                }
            })
            .collect::<Vec<Stream>>();
        let mut generated = Generated {
            start,
            due_of: vec![None; streams.len()],
            streams,
            due: std::collections::BTreeSet::new(),
        };
        for index in 0..generated.streams.len() {
            generated.refresh(index);
        }
        generated
    }

    /// Puts stream `index`'s entry in the due index in line with the stream.
    fn refresh(&mut self, index: usize) {
        let now = self.streams[index].due(self.start);
        let before = std::mem::replace(&mut self.due_of[index], now);
        if before == now {
            return;
        }
        if let Some(at) = before {
            self.due.remove(&(at, index));
        }
        if let Some(at) = now {
            self.due.insert((at, index));
        }
    }

    /// Sets the volume of stream `stream`'s sending day that opens `at_ms` after the run's
    /// start and spans `span_ms` (a new day when it has none there; `count` 0 drops it), for
    /// a driver that decides a day's volume from the days before it (`warmup check
    /// --adaptive`). Only a day none of whose messages has been injected may change: the
    /// messages already made keep their numbers, so the stream's draws for them stay the
    /// same. `false` when the stream has no daily shape or the day has begun.
    pub fn set_day(&mut self, stream: usize, at_ms: u64, span_ms: u64, count: u64) -> bool {
        let Some(s) = self.streams.get_mut(stream) else {
            return false;
        };
        let days = &mut s.workload.days;
        if days.is_empty() && s.workload.messages > 0 {
            return false;
        }
        let at = days.partition_point(|d| d.at_ms < at_ms);
        let first = days.get(at).map_or(s.workload.messages, |d| d.first);
        if first < s.next {
            return false;
        }
        let existing = days.get(at).is_some_and(|d| d.at_ms == at_ms);
        let old = if existing { days[at].count } else { 0 };
        match (existing, count) {
            (true, 0) => {
                days.remove(at);
            }
            (true, _) => days[at].count = count,
            (false, 0) => return true,
            (false, _) => days.insert(
                at,
                DayPlan {
                    at_ms,
                    span_ms,
                    count,
                    first,
                },
            ),
        }
        let after = if count > 0 { at + 1 } else { at };
        for d in days.iter_mut().skip(after) {
            d.first = d.first - old + count;
        }
        s.workload.messages = s.workload.messages - old + count;
        self.refresh(stream);
        true
    }

    /// When the next injection is due.
    pub fn next_due(&self) -> Option<Time> {
        self.due.first().map(|(at, _)| *at)
    }

    /// Every injection due at or before `now`, in time order (ties by stream).
    pub fn take_due(&mut self, now: Time) -> Vec<(Time, Injection)> {
        let mut out = Vec::new();
        // Bounded batches: a burst of millions is handed over a batch at a time.
        while out.len() < TAKE_BATCH_MAX {
            let Some(&(at, index)) = self.due.first() else {
                break;
            };
            if at > now {
                break;
            }
            let injection = self.make(index, at);
            self.refresh(index);
            out.push((at, injection));
        }
        out
    }

    fn make(&mut self, index: usize, at: Time) -> Injection {
        let stream = &mut self.streams[index];
        let n = stream.next;
        // The engaged segment of the day comes first, as the published warmup guides send it.
        let engaged = stream.day_of(n).is_some_and(|d| {
            ((n - d.first) as f64) < stream.workload.engaged_share * d.count as f64
        });
        stream.next += 1;
        let w = &stream.workload;
        let mut recipients = Vec::with_capacity(w.recipients_per_message as usize);
        for r in 0..w.recipients_per_message {
            let mut pick = stream.rng.random::<f64>() * stream.total_weight;
            let mut domain = &w.domains[0].0;
            for (d, weight) in &w.domains {
                domain = d;
                if pick < *weight {
                    break;
                }
                pick -= weight;
            }
            // One draw decides the mailbox's state (list quality).
            let draw: f64 = stream.rng.random();
            let local = if draw < w.unknown_user_rate {
                "nouser"
            } else if draw < w.unknown_user_rate + w.full_mailbox_rate {
                "full"
            } else if draw < w.unknown_user_rate + w.full_mailbox_rate + w.disabled_rate {
                "disabled"
            } else if engaged {
                "engaged"
            } else {
                "u"
            };
            recipients.push(format!("{local}{}.{n}.{r}@{domain}", w.index));
        }
        let data = MessageData::with_shared_body(
            head(w, n, &recipients, at),
            std::sync::Arc::clone(&stream.body),
        );
        Injection {
            mail_from: w.mail_from.clone(),
            recipients,
            data,
            virtual_mta: Some(w.vmta.clone()),
            source_ip: None,
            job_id: format!("stream{}", w.index),
            env_id: format!("{}.{n}", w.index),
            queued_at: None,
        }
    }
}

/// The header block of message `n` of a stream, ending in its blank line.
fn head(w: &Workload, n: u64, recipients: &[String], at: Time) -> Vec<u8> {
    let from_domain = w
        .mail_from
        .rsplit_once('@')
        .map_or("example.com", |(_, d)| d);
    let unsubscribe = if w.one_click_unsubscribe {
        format!(
            "List-Unsubscribe: <https://{from_domain}/unsubscribe/{}.{n}>, <mailto:unsubscribe@{from_domain}>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
            w.index
        )
    } else {
        String::new()
    };
    let from = match &w.header_from {
        Some(brand) => format!("{brand}>\r\nSender: <{}", w.mail_from),
        None => w.mail_from.clone(),
    };
    format!(
        "From: <{}>\r\nTo: <{}>\r\nSubject: pmta-sim stream {} message {n}\r\nMessage-ID: <{}.{n}@{from_domain}>\r\nDate: {}\r\n{unsubscribe}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
        from,
        recipients[0],
        w.index,
        w.index,
        at.acct_format()
    )
    .into_bytes()
}
