//! Value types of the configuration language, parsed from their written form.
//!
//! Owns the grammar of each value kind PowerMTA uses — time intervals (`4d12h`), interval
//! lists (`10m,20m,1h`), rates (`100/15m`), data-volume rates (`50m/h`), sizes (`20M`),
//! booleans, CIDRs (`10.0.0.0/8`, `0/0`) and addresses — and their canonical written form.
//! Every parser returns a [`ValueError`] naming the offending text and, where one exists, the
//! spelling PowerMTA would accept. Parsing is total: no input panics.

use std::fmt;
use std::net::IpAddr;

use thiserror::Error;

/// A value that could not be parsed: what was expected, what was found, what to write.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("expected {expected}, found `{found}`")]
pub struct ValueError {
    pub expected: &'static str,
    pub found: String,
    /// A corrected spelling, when the intent is clear.
    pub suggestion: Option<String>,
}

impl ValueError {
    fn new(expected: &'static str, found: &str) -> ValueError {
        ValueError {
            expected,
            found: found.to_string(),
            suggestion: None,
        }
    }

    fn suggest(mut self, suggestion: impl Into<String>) -> ValueError {
        self.suggestion = Some(suggestion.into());
        self
    }
}

/// Largest number we accept anywhere (counts, rate numerators, sizes before the unit).
/// Bigger numbers in a mail config are typos; keeping them small keeps arithmetic exact.
pub const NUMBER_MAX: u64 = 1 << 40;

fn parse_number(text: &str, expected: &'static str) -> Result<u64, ValueError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ValueError::new(expected, text));
    }
    match text.parse::<u64>() {
        Ok(n) if n <= NUMBER_MAX => Ok(n),
        _ => Err(ValueError::new(expected, text)),
    }
}

/// `yes`/`no`/`true`/`false`, any case.
pub fn parse_bool(text: &str) -> Result<bool, ValueError> {
    match text.to_ascii_lowercase().as_str() {
        "yes" | "true" => Ok(true),
        "no" | "false" => Ok(false),
        "on" | "1" | "enabled" => Err(ValueError::new("yes or no", text).suggest("yes")),
        "off" | "0" | "disabled" => Err(ValueError::new("yes or no", text).suggest("no")),
        _ => Err(ValueError::new("yes or no", text)),
    }
}

/// A non-negative integer count.
pub fn parse_count(text: &str) -> Result<u64, ValueError> {
    parse_number(text, "a whole number").map_err(|e| match text.parse::<f64>() {
        Ok(f) if f >= 0.0 && f.is_finite() => e.suggest(format!("{}", f.round() as u64)),
        _ => e,
    })
}

/// A time interval in whole seconds, written as `<number><unit>...` with units `s`, `m`, `h`,
/// `d`, `w` (e.g. `90s`, `4d12h`). A bare number counts seconds, as PowerMTA reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Interval {
    pub seconds: u64,
}

impl Interval {
    pub const fn from_secs(seconds: u64) -> Interval {
        Interval { seconds }
    }
}

const INTERVAL_EXPECTED: &str = "a time interval such as 90s, 10m, 1h or 4d12h";

pub fn parse_interval(text: &str) -> Result<Interval, ValueError> {
    let lower = text.to_ascii_lowercase();
    if lower.is_empty() {
        return Err(ValueError::new(INTERVAL_EXPECTED, text));
    }
    if lower.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Interval::from_secs(parse_number(
            &lower,
            INTERVAL_EXPECTED,
        )?));
    }
    let mut seconds: u64 = 0;
    let mut rest = lower.as_str();
    let mut last_unit_rank = usize::MAX;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(interval_error(text));
        }
        let number = parse_number(&rest[..digits], INTERVAL_EXPECTED)?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let (rank, factor) = match unit {
            "w" => (0, 7 * 86_400),
            "d" => (1, 86_400),
            "h" => (2, 3_600),
            "m" => (3, 60),
            "s" => (4, 1),
            _ => return Err(interval_error(text)),
        };
        // Units must run from large to small, each at most once, as in `4d12h`.
        if last_unit_rank != usize::MAX && rank <= last_unit_rank {
            return Err(interval_error(text));
        }
        last_unit_rank = rank;
        seconds = number
            .checked_mul(factor)
            .and_then(|s| seconds.checked_add(s))
            .filter(|s| *s <= NUMBER_MAX)
            .ok_or_else(|| ValueError::new(INTERVAL_EXPECTED, text))?;
    }
    Ok(Interval::from_secs(seconds))
}

fn interval_error(text: &str) -> ValueError {
    let err = ValueError::new(INTERVAL_EXPECTED, text);
    let lower = text.to_ascii_lowercase();
    let digits: String = lower.chars().take_while(char::is_ascii_digit).collect();
    let unit = &lower[digits.len()..];
    let fixed = match unit.trim() {
        "sec" | "secs" | "second" | "seconds" => "s",
        "min" | "mins" | "minute" | "minutes" => "m",
        "hr" | "hrs" | "hour" | "hours" => "h",
        "day" | "days" => "d",
        "week" | "weeks" => "w",
        _ => return err,
    };
    if digits.is_empty() {
        err
    } else {
        err.suggest(format!("{digits}{fixed}"))
    }
}

impl fmt::Display for Interval {
    /// The canonical form: largest units first, zero parts omitted (`4d12h`, `90s` → `1m30s`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.seconds == 0 {
            return f.write_str("0s");
        }
        let mut rest = self.seconds;
        for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
            if rest >= size {
                write!(f, "{}{unit}", rest / size)?;
                rest %= size;
            }
        }
        Ok(())
    }
}

/// A comma-separated interval list (`10m,10m,1h,4h`); spaces after commas are allowed.
pub fn parse_interval_list(text: &str) -> Result<Vec<Interval>, ValueError> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(ValueError::new(
            "a comma-separated list of time intervals such as 10m,20m,1h",
            text,
        ));
    }
    parts.into_iter().map(parse_interval).collect()
}

/// An event rate: `unlimited`, or at most `count` events in any `per_seconds` window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rate {
    Unlimited,
    Limit { count: u64, per_seconds: u64 },
}

const RATE_EXPECTED: &str = "a rate such as unlimited, 100/h, 100/15m or 5/s";

/// `unlimited` | `0` | `N/[M]{s|sec|m|min|h|hr|d|day}`.
///
/// `0` is PowerMTA's other spelling of "no limit" for rate directives, so it reads as
/// [`Rate::Unlimited`].
pub fn parse_rate(text: &str) -> Result<Rate, ValueError> {
    let lower = text.to_ascii_lowercase();
    if lower == "unlimited" || lower == "0" {
        return Ok(Rate::Unlimited);
    }
    let Some((count, period)) = lower.split_once('/') else {
        let err = ValueError::new(RATE_EXPECTED, text);
        return Err(match parse_number(&lower, RATE_EXPECTED) {
            Ok(n) => err.suggest(format!("{n}/h")),
            Err(_) => err,
        });
    };
    let count = parse_number(count, RATE_EXPECTED)?;
    let per_seconds = parse_period(period).map_err(|unit_fix| {
        let err = ValueError::new(RATE_EXPECTED, text);
        match unit_fix {
            Some(fixed) => err.suggest(format!("{count}/{fixed}")),
            None => err,
        }
    })?;
    Ok(Rate::Limit { count, per_seconds })
}

/// `[M]{s|sec|m|min|h|hr|d|day}` → seconds. On error, a corrected spelling if obvious.
fn parse_period(period: &str) -> Result<u64, Option<String>> {
    let digits = period.bytes().take_while(u8::is_ascii_digit).count();
    let multiplier = if digits == 0 {
        1
    } else {
        parse_number(&period[..digits], RATE_EXPECTED).map_err(|_| None)?
    };
    let unit = &period[digits..];
    let seconds = match unit {
        "s" | "sec" => 1,
        "m" | "min" => 60,
        "h" | "hr" => 3_600,
        "d" | "day" => 86_400,
        _ => {
            let fixed = match unit {
                "second" | "seconds" | "secs" => Some("s"),
                "minute" | "minutes" | "mins" => Some("m"),
                "hour" | "hours" | "hrs" => Some("h"),
                "days" => Some("d"),
                _ => None,
            };
            let prefix = &period[..digits];
            return Err(fixed.map(|f| format!("{prefix}{f}")));
        }
    };
    if multiplier == 0 {
        return Err(None);
    }
    multiplier
        .checked_mul(seconds)
        .filter(|s| *s <= NUMBER_MAX)
        .ok_or(None)
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Rate::Unlimited => f.write_str("unlimited"),
            Rate::Limit { count, per_seconds } => {
                write!(f, "{count}/")?;
                write_period(f, per_seconds)
            }
        }
    }
}

fn write_period(f: &mut fmt::Formatter<'_>, per_seconds: u64) -> fmt::Result {
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if per_seconds.is_multiple_of(size) {
            let n = per_seconds / size;
            return if n == 1 {
                f.write_str(unit)
            } else {
                write!(f, "{n}{unit}")
            };
        }
    }
    if per_seconds == 1 {
        f.write_str("s")
    } else {
        write!(f, "{per_seconds}s")
    }
}

/// A size in bytes, written `N` or `N{b|k|m|g|t}` (binary multiples, any case): `20M`, `512k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size {
    pub bytes: u64,
}

const SIZE_EXPECTED: &str = "a size such as 512k, 20M or 1G";

pub fn parse_size(text: &str) -> Result<Size, ValueError> {
    parse_size_as(text, SIZE_EXPECTED)
}

fn parse_size_as(text: &str, expected: &'static str) -> Result<Size, ValueError> {
    let lower = text.to_ascii_lowercase();
    let digits = lower.bytes().take_while(u8::is_ascii_digit).count();
    let number = parse_number(&lower[..digits], expected)?;
    let factor: u64 = match &lower[digits..] {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        "t" | "tb" => 1 << 40,
        _ => return Err(ValueError::new(expected, text)),
    };
    number
        .checked_mul(factor)
        .map(|bytes| Size { bytes })
        .ok_or_else(|| ValueError::new(expected, text))
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, size) in [
            ("T", 1u64 << 40),
            ("G", 1 << 30),
            ("M", 1 << 20),
            ("K", 1 << 10),
        ] {
            if self.bytes >= size && self.bytes.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.bytes / size);
            }
        }
        write!(f, "{}", self.bytes)
    }
}

/// A data-volume rate: `unlimited`, or at most `bytes` in any `per_seconds` window
/// (`50M/h`, `1G/15m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataRate {
    Unlimited,
    Limit { bytes: u64, per_seconds: u64 },
}

const DATA_RATE_EXPECTED: &str = "a data-volume rate such as unlimited, 50M/h or 1G/d";

pub fn parse_data_rate(text: &str) -> Result<DataRate, ValueError> {
    let lower = text.to_ascii_lowercase();
    if lower == "unlimited" || lower == "0" {
        return Ok(DataRate::Unlimited);
    }
    let Some((volume, period)) = lower.split_once('/') else {
        return Err(ValueError::new(DATA_RATE_EXPECTED, text));
    };
    let bytes = parse_size_as(volume, DATA_RATE_EXPECTED)
        .map_err(|_| ValueError::new(DATA_RATE_EXPECTED, text))?
        .bytes;
    let per_seconds = parse_period(period).map_err(|fix| {
        let err = ValueError::new(DATA_RATE_EXPECTED, text);
        match fix {
            Some(fixed) => err.suggest(format!("{volume}/{fixed}")),
            None => err,
        }
    })?;
    Ok(DataRate::Limit { bytes, per_seconds })
}

impl fmt::Display for DataRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DataRate::Unlimited => f.write_str("unlimited"),
            DataRate::Limit { bytes, per_seconds } => {
                write!(f, "{}/", Size { bytes })?;
                write_period(f, per_seconds)
            }
        }
    }
}

/// An IPv4 or IPv6 network: `192.0.2.0/24`, `2001:db8::/32`, a single address, or `0/0`
/// (PowerMTA's "any address").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cidr {
    /// `0/0`: every IPv4 and IPv6 address.
    Any,
    Net {
        addr: IpAddr,
        prefix_len: u8,
    },
}

/// What an `http-access` line allows a network (PowerMTA's levels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum HttpAccess {
    None,
    /// Read: status, queues, metrics.
    Monitor,
    /// Read and act: pause, delete, reload, ...
    Admin,
}

impl HttpAccess {
    pub fn name(self) -> &'static str {
        match self {
            HttpAccess::None => "none",
            HttpAccess::Monitor => "monitor",
            HttpAccess::Admin => "admin",
        }
    }
}

/// `http-access CIDR monitor|admin|none`.
pub fn parse_http_access(text: &str) -> Result<(Cidr, HttpAccess), ValueError> {
    const EXPECTED: &str =
        "a network and an access level, such as `127.0.0.1 admin` or `10.0.0.0/8 monitor`";
    let mut words = text.split_whitespace();
    let (Some(cidr), Some(level), None) = (words.next(), words.next(), words.next()) else {
        return Err(ValueError::new(EXPECTED, text));
    };
    let cidr = parse_cidr(cidr)?;
    let level = match level.to_ascii_lowercase().as_str() {
        "none" => HttpAccess::None,
        "monitor" => HttpAccess::Monitor,
        "admin" => HttpAccess::Admin,
        _ => {
            return Err(ValueError::new("monitor, admin or none", level));
        }
    };
    Ok((cidr, level))
}

const CIDR_EXPECTED: &str = "an IP address or network such as 192.0.2.10, 10.0.0.0/8 or 0/0";

pub fn parse_cidr(text: &str) -> Result<Cidr, ValueError> {
    if text == "0/0" {
        return Ok(Cidr::Any);
    }
    let (addr_text, prefix_text) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let addr: IpAddr = addr_text
        .parse()
        .map_err(|_| ValueError::new(CIDR_EXPECTED, text))?;
    let max_len = if addr.is_ipv4() { 32 } else { 128 };
    let prefix_len = match prefix_text {
        None => max_len,
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= max_len && !p.starts_with('+') => n,
            _ => return Err(ValueError::new(CIDR_EXPECTED, text)),
        },
    };
    let masked = mask(addr, prefix_len);
    if masked != addr {
        return Err(ValueError::new(CIDR_EXPECTED, text).suggest(format!("{masked}/{prefix_len}")));
    }
    Ok(Cidr::Net { addr, prefix_len })
}

fn mask(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix_len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix_len))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix_len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix_len))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match *self {
            Cidr::Any => true,
            Cidr::Net { addr, prefix_len } => {
                addr.is_ipv4() == ip.is_ipv4() && mask(ip, prefix_len) == addr
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cidr::Any => f.write_str("0/0"),
            Cidr::Net { addr, prefix_len } => {
                let full = if addr.is_ipv4() { 32 } else { 128 };
                if *prefix_len == full {
                    write!(f, "{addr}")
                } else {
                    write!(f, "{addr}/{prefix_len}")
                }
            }
        }
    }
}

/// `IP HOSTNAME`, as in `smtp-source-host 192.0.2.10 mta1.example.com`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpHost {
    pub ip: IpAddr,
    pub host: String,
}

pub fn parse_ip_host(text: &str) -> Result<IpHost, ValueError> {
    const EXPECTED: &str = "an IP address and a host name, such as 192.0.2.10 mta1.example.com";
    let mut words = text.split_whitespace();
    let (Some(ip), Some(host), None) = (words.next(), words.next(), words.next()) else {
        return Err(ValueError::new(EXPECTED, text));
    };
    let ip: IpAddr = ip.parse().map_err(|_| ValueError::new(EXPECTED, text))?;
    if !is_host_name(host) {
        return Err(ValueError::new(EXPECTED, text));
    }
    Ok(IpHost {
        ip,
        host: host.to_ascii_lowercase(),
    })
}

/// A DNS host name: dot-separated labels of letters, digits and hyphens.
pub fn is_host_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// An email address `local@domain` (angle brackets allowed), or the null sender `<>`.
/// `smtp-listener IP:PORT`: an IPv4 address, `[IPv6]`, or `0/0` (every IPv4 address), then
/// a port. Written back canonically (`0.0.0.0:25`, `[::1]:2525`).
pub fn parse_listener(text: &str) -> Result<std::net::SocketAddr, ValueError> {
    const EXPECTED: &str = "an address and port such as 127.0.0.1:25, [::1]:25 or 0/0:25";
    let error = || ValueError::new(EXPECTED, text);
    let (host, port) = text.rsplit_once(':').ok_or_else(error)?;
    let port: u16 = port.parse().map_err(|_| error())?;
    let ip: IpAddr = match host {
        "0/0" => IpAddr::from([0, 0, 0, 0]),
        _ => host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .parse()
            .map_err(|_| error())?,
    };
    if port == 0 {
        return Err(error());
    }
    Ok(std::net::SocketAddr::new(ip, port))
}

/// `shared-throttles redis://HOST[:PORT][/DB]` (a pmta-sim extension): the Redis server
/// that keeps throttles shared by several nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub db: u32,
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "redis://[{}]:{}/{}", self.host, self.port, self.db)
        } else {
            write!(f, "redis://{}:{}/{}", self.host, self.port, self.db)
        }
    }
}

/// Redis's own default port.
const REDIS_PORT: u16 = 6379;

pub fn parse_redis_url(text: &str) -> Result<RedisUrl, ValueError> {
    const EXPECTED: &str =
        "a Redis URL such as redis://127.0.0.1:6379/0 (redis://HOST[:PORT][/DB])";
    let error = || ValueError::new(EXPECTED, text);
    let Some(rest) = text.strip_prefix("redis://") else {
        return Err(match text.split_once("://") {
            Some((_, rest)) => error().suggest(format!("redis://{rest}")),
            None => error().suggest(format!("redis://{text}")),
        });
    };
    let (authority, db) = match rest.split_once('/') {
        Some((authority, "")) => (authority, 0),
        Some((authority, db)) => (authority, db.parse::<u32>().map_err(|_| error())?),
        None => (rest, 0),
    };
    if authority.contains('@') {
        // A password in the configuration file would be printed by `check --explain`.
        return Err(ValueError::new(
            "a Redis URL without credentials (redis://HOST[:PORT][/DB])",
            text,
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(error)?;
        match after.strip_prefix(':') {
            Some(port) => (host, port.parse::<u16>().map_err(|_| error())?),
            None if after.is_empty() => (host, REDIS_PORT),
            None => return Err(error()),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, port.parse::<u16>().map_err(|_| error())?),
            None => (authority, REDIS_PORT),
        }
    };
    let host_ok = !host.is_empty()
        && (host.parse::<IpAddr>().is_ok()
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    if !host_ok || port == 0 {
        return Err(error());
    }
    Ok(RedisUrl {
        host: host.to_string(),
        port,
        db,
    })
}

pub fn parse_address(text: &str) -> Result<String, ValueError> {
    const EXPECTED: &str = "an email address such as postmaster@example.com";
    let inner = text
        .strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or(text);
    if inner.is_empty() && text == "<>" {
        return Ok(String::new());
    }
    match inner.rsplit_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && !local.contains(char::is_whitespace)
                && is_host_name(domain) =>
        {
            Ok(inner.to_string())
        }
        _ => Err(ValueError::new(EXPECTED, text)),
    }
}

/// PowerMTA's accounting record types: each code with its long name (`record-fields
/// delivery …` is `record-fields d …`).
pub const ACCT_RECORD_TYPES: [(&str, &str); 8] = [
    ("d", "delivery"),
    ("b", "bounce"),
    ("t", "transient"),
    ("tq", "transient-queue"),
    ("r", "receipt"),
    ("f", "feedback-loop"),
    ("rb", "remote-bounce"),
    ("rs", "remote-status"),
];

/// PowerMTA's default accounting header, in order: the fields a record carries when the
/// `<acct-file>` block names none (v5 User's Guide §12.2).
pub const ACCT_DEFAULT_FIELDS: [&str; 23] = [
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

/// The fields PowerMTA's accounting records can carry beside the default ones (v5 User's
/// Guide §12.2, transcribed at hackmd.io/@z3d3m0n/Pmta_records; the `f` record's from
/// reference §2.4). Besides these, `header_NAME` (a header's value) and `*` (the defaults).
pub const ACCT_EXTRA_FIELDS: [&str; 9] = [
    "timeImprinted",
    "timeFirstAttempt",
    "totalSecondsQueued",
    "feedbackType",
    "format",
    "userAgent",
    "reportingMta",
    "reportedDomain",
    "reportedUri",
];

/// Whether `name` is a field PowerMTA's accounting records can carry.
pub fn is_acct_field(name: &str) -> bool {
    ACCT_DEFAULT_FIELDS.contains(&name) || ACCT_EXTRA_FIELDS.contains(&name)
}

/// One accounting record type, by code or long name → its code.
fn acct_record_type(word: &str) -> Result<&'static str, ValueError> {
    let lower = word.to_ascii_lowercase();
    ACCT_RECORD_TYPES
        .iter()
        .find(|(code, long)| lower == *code || lower == *long)
        .map(|(code, _)| *code)
        .ok_or_else(|| {
            let err = ValueError::new("a record type (d, b, t, tq, r, f, rb, rs)", word);
            let known = ACCT_RECORD_TYPES.iter().flat_map(|(c, l)| [*c, *l]);
            match crate::config::diag::did_you_mean(word, known) {
                Some(m) => err.suggest(m),
                None => err,
            }
        })
}

/// `records d,b,t` (commas, spaces or both): the record type codes, each once, in order.
pub fn parse_acct_records(text: &str) -> Result<Vec<&'static str>, ValueError> {
    let mut codes: Vec<&'static str> = Vec::new();
    let words: Vec<&str> = text
        .split([',', ' ', '\t'])
        .filter(|w| !w.is_empty())
        .collect();
    for (index, word) in words.iter().enumerate() {
        // The suggestion is the whole list with the closest type in place of this word.
        let code = acct_record_type(word).map_err(|mut err| {
            err.suggestion = err.suggestion.map(|close| {
                let mut fixed = words.clone();
                fixed[index] = close.as_str();
                fixed.join(",")
            });
            err
        })?;
        if !codes.contains(&code) {
            codes.push(code);
        }
    }
    if codes.is_empty() {
        return Err(ValueError::new("record types, such as d,b", text));
    }
    Ok(codes)
}

/// `record-fields TYPE FIELD,FIELD,...` (commas, spaces or both): the record type's code and
/// its fields as written (`*` for the default set).
pub fn parse_acct_fields(text: &str) -> Result<(&'static str, Vec<String>), ValueError> {
    let mut words = text.split([',', ' ', '\t']).filter(|w| !w.is_empty());
    let Some(kind) = words.next() else {
        return Err(ValueError::new("a record type and its fields", text));
    };
    let fields: Vec<String> = words.map(str::to_string).collect();
    let code = acct_record_type(kind).map_err(|mut err| {
        err.suggestion = err
            .suggestion
            .map(|close| format!("{close} {}", fields.join(",")));
        err
    })?;
    if fields.is_empty() {
        return Err(ValueError::new(
            "fields after the record type, such as `d timeLogged,rcpt`",
            text,
        ));
    }
    Ok((code, fields))
}

/// A comma-separated address list.
pub fn parse_address_list(text: &str) -> Result<Vec<String>, ValueError> {
    text.split(',').map(|a| parse_address(a.trim())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners() {
        let ok = [
            ("127.0.0.1:25", "127.0.0.1:25"),
            ("0/0:2525", "0.0.0.0:2525"),
            ("[::1]:25", "[::1]:25"),
        ];
        for (text, canonical) in ok {
            assert_eq!(parse_listener(text).unwrap().to_string(), canonical);
        }
        for bad in ["127.0.0.1", "127.0.0.1:0", "localhost:25", "1.2.3.4:99999"] {
            assert!(parse_listener(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn intervals() {
        let ok = [
            ("90s", 90),
            ("10m", 600),
            ("1h", 3_600),
            ("4d12h", 388_800),
            ("1h30m", 5_400),
            ("2w", 1_209_600),
            ("0", 0),
            ("45", 45),
            ("10M", 600),
        ];
        for (text, secs) in ok {
            assert_eq!(
                parse_interval(text),
                Ok(Interval::from_secs(secs)),
                "{text}"
            );
        }
        for bad in ["", "m", "10x", "1h2d", "1m1m", "-5m", "1.5h", "10 m"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_interval("30min").unwrap_err().suggestion.as_deref(),
            Some("30m")
        );
        assert_eq!(
            parse_interval("2hours").unwrap_err().suggestion.as_deref(),
            Some("2h")
        );
    }

    #[test]
    fn interval_display_is_canonical() {
        for (secs, text) in [(0, "0s"), (90, "1m30s"), (388_800, "4d12h"), (3_600, "1h")] {
            assert_eq!(Interval::from_secs(secs).to_string(), text);
        }
    }

    #[test]
    fn interval_lists() {
        let list = parse_interval_list("10m, 10m,1h,4h").unwrap();
        let secs: Vec<u64> = list.iter().map(|i| i.seconds).collect();
        assert_eq!(secs, [600, 600, 3_600, 14_400]);
        assert!(parse_interval_list("10m,,1h").is_err());
        assert!(parse_interval_list("10m,1x").is_err());
    }

    #[test]
    fn rates() {
        let ok = [
            ("unlimited", Rate::Unlimited),
            ("0", Rate::Unlimited),
            (
                "100/h",
                Rate::Limit {
                    count: 100,
                    per_seconds: 3_600,
                },
            ),
            (
                "100/hr",
                Rate::Limit {
                    count: 100,
                    per_seconds: 3_600,
                },
            ),
            (
                "100/15m",
                Rate::Limit {
                    count: 100,
                    per_seconds: 900,
                },
            ),
            (
                "83/5s",
                Rate::Limit {
                    count: 83,
                    per_seconds: 5,
                },
            ),
            (
                "1/sec",
                Rate::Limit {
                    count: 1,
                    per_seconds: 1,
                },
            ),
            (
                "10/min",
                Rate::Limit {
                    count: 10,
                    per_seconds: 60,
                },
            ),
            (
                "5000/day",
                Rate::Limit {
                    count: 5_000,
                    per_seconds: 86_400,
                },
            ),
            (
                "5000/2d",
                Rate::Limit {
                    count: 5_000,
                    per_seconds: 172_800,
                },
            ),
        ];
        for (text, rate) in ok {
            assert_eq!(parse_rate(text), Ok(rate), "{text}");
        }
        for bad in ["", "100", "/h", "100/", "100/0m", "100/x", "-1/h", "1/h/2"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_rate("3000/hour").unwrap_err().suggestion.as_deref(),
            Some("3000/h")
        );
        assert_eq!(
            parse_rate("100").unwrap_err().suggestion.as_deref(),
            Some("100/h")
        );
    }

    #[test]
    fn rate_display_round_trips() {
        for text in [
            "unlimited",
            "100/h",
            "100/15m",
            "83/5s",
            "1/s",
            "5000/d",
            "7/2d",
        ] {
            assert_eq!(parse_rate(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn sizes_and_data_rates() {
        assert_eq!(parse_size("20M").unwrap().bytes, 20 << 20);
        assert_eq!(parse_size("512k").unwrap().bytes, 512 << 10);
        assert_eq!(parse_size("1000").unwrap().bytes, 1000);
        assert!(parse_size("20X").is_err());
        assert!(parse_size("M").is_err());
        assert_eq!(
            parse_data_rate("50M/h"),
            Ok(DataRate::Limit {
                bytes: 50 << 20,
                per_seconds: 3_600
            })
        );
        assert_eq!(parse_data_rate("unlimited"), Ok(DataRate::Unlimited));
        assert_eq!(parse_data_rate("1G/15m").unwrap().to_string(), "1G/15m");
        assert!(parse_data_rate("50M").is_err());
    }

    #[test]
    fn booleans() {
        for (text, value) in [
            ("yes", true),
            ("TRUE", true),
            ("no", false),
            ("false", false),
        ] {
            assert_eq!(parse_bool(text), Ok(value));
        }
        assert_eq!(
            parse_bool("on").unwrap_err().suggestion.as_deref(),
            Some("yes")
        );
        assert!(parse_bool("maybe").is_err());
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("0/0"), Ok(Cidr::Any));
        let net = parse_cidr("10.0.0.0/8").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        assert_eq!(parse_cidr("192.0.2.10").unwrap().to_string(), "192.0.2.10");
        assert_eq!(
            parse_cidr("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        let err = parse_cidr("10.1.2.3/8").unwrap_err();
        assert_eq!(err.suggestion.as_deref(), Some("10.0.0.0/8"));
        for bad in ["10.0.0.0/33", "300.1.1.1", "abc", "10.0.0.0/+8", ""] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ip_hosts_and_addresses() {
        let pair = parse_ip_host("192.0.2.10 MTA1.example.com").unwrap();
        assert_eq!(pair.ip.to_string(), "192.0.2.10");
        assert_eq!(pair.host, "mta1.example.com");
        assert!(parse_ip_host("192.0.2.10").is_err());
        assert!(parse_ip_host("mta1.example.com 192.0.2.10").is_err());
        assert_eq!(parse_address("<a@b.example>").unwrap(), "a@b.example");
        assert!(parse_address("not-an-address").is_err());
        assert_eq!(parse_address_list("a@x.com, b@y.com").unwrap().len(), 2);
    }
}
