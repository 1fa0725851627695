//! The inbound side of live mode, as decisions: what the configuration's `smtp-listener`
//! lines, `<source>` blocks, `<smtp-user>` entries and `relay-domain`s mean for one SMTP
//! client, and the [`InboundPolicy`] that answers it through `smtp::server`.
//!
//! Owns: which `<source>` a client address falls in (the first match in file order, as the
//! engine's routing reads it), whether the service is offered, STARTTLS and AUTH offers
//! (AUTH only under TLS unless `allow-unencrypted-plain-auth`), `<smtp-user>` password
//! checks (a user's `source {name}` applies once authenticated), relay control (relaying
//! only for `always-allow-relaying`, an authenticated client or a `relay-domain`; everyone
//! else gets `550 5.7.1`), `require-auth`, per-source `max-message-size`, and the listener's
//! limits. Pure: no sockets, no clock, no files (the driver reads the certificate and runs
//! the timers); it must not decide routing, which the engine does from the same blocks.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use indexmap::IndexMap;
use thiserror::Error;

use crate::config::model::{Config, Setting, Value};
use crate::config::source::Span;
use crate::config::value::{self, Cidr};
use crate::smtp::Reply;
use crate::smtp::server::{Envelope, ServerLimits, ServerPolicy};
use crate::time::Time;

/// The port PowerMTA listens on when the config has no `smtp-listener` (`smtp-port`).
pub const SMTP_PORT_DEFAULT: u16 = 25;

/// Limits of the listener beyond what the configuration sets. Each has a PowerMTA-style
/// reply; see `docs/live.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Open connections in all; `total-max-smtp-in` may lower it. Past it: `421 4.7.0`.
    pub connections_max: usize,
    /// Open connections from one client address. Past it: `421 4.7.0`.
    pub connections_per_ip_max: usize,
    /// Message size when the client's `<source>` sets no `max-message-size`.
    pub message_size_max_bytes: usize,
    /// Recipients in one transaction; more get `452 4.5.3`.
    pub recipients_max: usize,
    /// A message line longer than this (CRLF not counted) is refused with `552 5.3.4`.
    pub data_line_max_bytes: usize,
    /// Error replies without a message accepted, then `421 4.7.0` and the connection ends.
    pub errors_max: u32,
    /// Time for one command line to arrive, counted from the previous reply (a slow sender
    /// cannot stretch it by trickling bytes). Then `421 4.4.2`.
    pub command_timeout_ms: u64,
    /// Time for the whole message data after `354`. Then `421 4.4.2`.
    pub data_timeout_ms: u64,
}

impl Default for ListenerLimits {
    fn default() -> ListenerLimits {
        ListenerLimits {
            connections_max: 2_000,
            connections_per_ip_max: 200,
            message_size_max_bytes: crate::engine::MESSAGE_SIZE_MAX_BYTES,
            recipients_max: crate::engine::RECIPIENTS_PER_MESSAGE_MAX,
            // RFC 5321 §4.5.3.1.6: 1,000 octets with the CRLF.
            data_line_max_bytes: 998,
            // Postfix's smtpd_hard_error_limit.
            errors_max: 20,
            // RFC 5321 §4.5.3.2.7 asks a server to wait at least 5 minutes for a command.
            command_timeout_ms: 300_000,
            data_timeout_ms: 600_000,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum InboundError {
    #[error("{at}: `<smtp-user {user}>` has no `password`")]
    UserWithoutPassword { user: String, at: String },
    #[error(
        "{at}: `<smtp-user {user}>` uses `authentication-method {method}`; live mode checks only `password`"
    )]
    UnsupportedAuthMethod {
        user: String,
        method: String,
        at: String,
    },
    #[error("{at}: `<smtp-user {user}>` names source `{source_name}`, which no `<source>` defines")]
    UnknownUserSource {
        user: String,
        source_name: String,
        at: String,
    },
}

/// `smtp-server-tls-certificate FILE [PASSWORD]`: one PEM file with the certificate chain
/// and its private key, as PowerMTA reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFile {
    pub path: String,
    /// An encrypted key's password; live mode refuses encrypted keys with a clear error.
    pub password: Option<String>,
    /// `FILE:LINE` of the directive, for errors about the file.
    pub at: String,
}

/// What one `<source>` block (or the built-in default) allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourcePolicy {
    /// The block's selector (`127.0.0.1`, `10.0.0.0/8`, `0/0`, `{name}`), or `default`.
    pub selector: String,
    pub smtp_service: bool,
    pub always_allow_relaying: bool,
    pub require_auth: bool,
    pub allow_unencrypted_plain_auth: bool,
    pub allow_starttls: bool,
    pub max_message_size: Option<u64>,
    pub certificate: Option<CertificateFile>,
}

impl SourcePolicy {
    /// PowerMTA's behaviour for a client no `<source>` matches: service on, relaying off.
    fn builtin() -> SourcePolicy {
        SourcePolicy {
            selector: "default".into(),
            smtp_service: true,
            always_allow_relaying: false,
            require_auth: false,
            allow_unencrypted_plain_auth: false,
            allow_starttls: true,
            max_message_size: None,
            certificate: None,
        }
    }
}

struct SmtpUser {
    password: String,
    /// The `{name}` source that applies once the user has authenticated.
    source: Option<usize>,
}

/// Everything the listener reads from a configuration.
pub struct InboundSettings {
    /// `smtp-listener` lines, or `0.0.0.0:smtp-port` when there are none (PowerMTA's
    /// default).
    pub listeners: Vec<SocketAddr>,
    /// The name in the greeting and EHLO reply (`host-name`).
    pub host_name: String,
    /// The global `smtp-server-tls-certificate`, if any.
    pub certificate: Option<CertificateFile>,
    /// `total-max-smtp-in`.
    pub total_max_smtp_in: Option<usize>,
    /// The `spool` directory, if the config names one (global `spool DIR`, else the first
    /// `<spool DIR>`).
    pub spool_dir: Option<String>,
    /// Address-selected sources in file order, then `{name}` ones.
    sources: Vec<(Option<Cidr>, SourcePolicy)>,
    users: IndexMap<String, SmtpUser>,
    relay_domains: Vec<String>,
    default_source: SourcePolicy,
}

fn at(config: &Config, span: Span) -> String {
    config.sources.position(span).to_string()
}

fn flag(settings: &crate::config::model::Settings, name: &str, default: bool) -> bool {
    match settings.get(name).map(|s| &s.value) {
        Some(Value::Bool(b)) => *b,
        _ => default,
    }
}

fn text(setting: Option<&Setting>) -> Option<String> {
    match setting.map(|s| &s.value) {
        Some(Value::Text(t)) => Some(t.clone()),
        _ => None,
    }
}

fn certificate(config: &Config, setting: Option<&Setting>) -> Option<CertificateFile> {
    let setting = setting?;
    let Value::Text(words) = &setting.value else {
        return None;
    };
    let mut words = words.split_whitespace();
    Some(CertificateFile {
        path: words.next()?.to_string(),
        password: words.next().map(str::to_string),
        at: at(config, setting.span),
    })
}

impl InboundSettings {
    pub fn from_config(config: &Config) -> Result<InboundSettings, InboundError> {
        let globals = &config.globals;
        let mut listeners: Vec<SocketAddr> = globals
            .get_all("smtp-listener")
            .iter()
            .filter_map(|s| match &s.value {
                Value::Text(t) => t.parse().ok(),
                _ => None,
            })
            .collect();
        if listeners.is_empty() {
            let port = match globals.get("smtp-port").map(|s| &s.value) {
                Some(Value::Count(p)) => u16::try_from(*p).unwrap_or(SMTP_PORT_DEFAULT),
                _ => SMTP_PORT_DEFAULT,
            };
            listeners.push(SocketAddr::from(([0, 0, 0, 0], port)));
        }
        let mut sources = Vec::new();
        for block in &config.source_blocks {
            let s = &block.settings;
            let policy = SourcePolicy {
                selector: block.selector.clone(),
                smtp_service: flag(s, "smtp-service", true),
                always_allow_relaying: flag(s, "always-allow-relaying", false),
                require_auth: flag(s, "require-auth", false),
                allow_unencrypted_plain_auth: flag(s, "allow-unencrypted-plain-auth", false),
                allow_starttls: flag(s, "allow-starttls", true),
                max_message_size: match s.get("max-message-size").map(|v| &v.value) {
                    Some(Value::Size(size)) => Some(size.bytes),
                    _ => None,
                },
                certificate: certificate(config, s.get("smtp-server-tls-certificate")),
            };
            sources.push((value::parse_cidr(&block.selector).ok(), policy));
        }
        let mut users = IndexMap::new();
        for block in &config.smtp_users {
            let where_ = at(config, block.span);
            if let Some(method) = text(block.settings.get("authentication-method"))
                && !method.eq_ignore_ascii_case("password")
            {
                return Err(InboundError::UnsupportedAuthMethod {
                    user: block.name.clone(),
                    method,
                    at: where_,
                });
            }
            let Some(password) = text(block.settings.get("password")) else {
                return Err(InboundError::UserWithoutPassword {
                    user: block.name.clone(),
                    at: where_,
                });
            };
            let source = match text(block.settings.get("source")) {
                None => None,
                Some(name) => Some(
                    sources
                        .iter()
                        .position(|(cidr, p)| cidr.is_none() && p.selector == name)
                        .ok_or(InboundError::UnknownUserSource {
                            user: block.name.clone(),
                            source_name: name,
                            at: where_,
                        })?,
                ),
            };
            users.insert(block.name.clone(), SmtpUser { password, source });
        }
        let relay_domains = globals
            .get_all("relay-domain")
            .iter()
            .filter_map(|s| text(Some(s)))
            .flat_map(|t| {
                t.split([',', ' '])
                    .filter(|d| !d.is_empty())
                    .map(|d| d.trim().to_ascii_lowercase())
                    .collect::<Vec<_>>()
            })
            .collect();
        let spool_dir =
            text(globals.get("spool")).or_else(|| config.spools.first().map(|b| b.name.clone()));
        Ok(InboundSettings {
            listeners,
            host_name: text(globals.get("host-name")).unwrap_or_else(|| "localhost".into()),
            certificate: certificate(config, globals.get("smtp-server-tls-certificate")),
            total_max_smtp_in: match globals.get("total-max-smtp-in").map(|s| &s.value) {
                Some(Value::Count(n)) => Some(usize::try_from(*n).unwrap_or(usize::MAX)),
                _ => None,
            },
            spool_dir,
            sources,
            users,
            relay_domains,
            default_source: SourcePolicy::builtin(),
        })
    }

    /// The `<source>` a client address falls in: the first address-selected block that
    /// contains it, in file order, else the built-in default.
    pub fn source_for(&self, ip: IpAddr) -> &SourcePolicy {
        self.sources
            .iter()
            .find(|(cidr, _)| cidr.is_some_and(|c| c.contains(ip)))
            .map_or(&self.default_source, |(_, p)| p)
    }

    /// Every certificate the listener may need (global and per-source), for loading once.
    pub fn certificates(&self) -> Vec<&CertificateFile> {
        self.certificate
            .iter()
            .chain(
                self.sources
                    .iter()
                    .filter_map(|(_, p)| p.certificate.as_ref()),
            )
            .collect()
    }

    /// The certificate a client of `source` is offered: its source's, else the global one.
    pub fn certificate_for<'a>(&'a self, source: &'a SourcePolicy) -> Option<&'a CertificateFile> {
        source.certificate.as_ref().or(self.certificate.as_ref())
    }

    /// The session limits for a client of `source`.
    pub fn session_limits(&self, source: &SourcePolicy, limits: &ListenerLimits) -> ServerLimits {
        let message_size = source
            .max_message_size
            .map_or(limits.message_size_max_bytes, |size| {
                usize::try_from(size)
                    .unwrap_or(usize::MAX)
                    .min(limits.message_size_max_bytes)
            });
        ServerLimits {
            message_size_max_bytes: message_size,
            recipients_max: limits.recipients_max,
            data_line_max_bytes: Some(limits.data_line_max_bytes),
            errors_max: Some(limits.errors_max),
        }
    }

    /// Open connections allowed in all: the smaller of `total-max-smtp-in` and the limit.
    pub fn connections_max(&self, limits: &ListenerLimits) -> usize {
        self.total_max_smtp_in
            .map_or(limits.connections_max, |n| n.min(limits.connections_max))
    }

    fn relay_domain(&self, recipient: &str) -> bool {
        let Some((_, domain)) = recipient.rsplit_once('@') else {
            return false;
        };
        let domain = domain.to_ascii_lowercase();
        self.relay_domains.contains(&domain)
    }

    fn check_password(&self, user: &str, password: &str) -> Option<&SmtpUser> {
        let entry = self.users.get(user)?;
        // Compare digests with every byte visited, so timing reveals nothing of the password.
        let digest =
            |text: &str| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
        let (want, got) = (digest(&entry.password), digest(password));
        let difference = want
            .as_ref()
            .iter()
            .zip(got.as_ref())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (difference == 0).then_some(entry)
    }
}

/// The answers to one inbound connection.
pub struct InboundPolicy {
    settings: Arc<InboundSettings>,
    /// The client's `<source>`; after AUTH, the user's `source {name}` if it has one.
    source: SourcePolicy,
    peer: IpAddr,
    /// A certificate is loaded for this client's source.
    tls_available: bool,
    /// The spool can take more mail (the driver clears it when the spool is full).
    accepting: bool,
    /// What `SIZE` advertises: this client's message size limit.
    message_size_max_bytes: usize,
}

impl InboundPolicy {
    /// The policy for a client at `peer`; `tls_available` when a certificate for its
    /// source is loaded; `limits` as the driver's session uses them.
    pub fn new(
        settings: Arc<InboundSettings>,
        peer: IpAddr,
        tls_available: bool,
        limits: &ServerLimits,
    ) -> InboundPolicy {
        let source = settings.source_for(peer).clone();
        InboundPolicy {
            settings,
            source,
            peer,
            tls_available,
            accepting: true,
            message_size_max_bytes: limits.message_size_max_bytes,
        }
    }

    pub fn source(&self) -> &SourcePolicy {
        &self.source
    }

    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    /// Whether new transactions may start; when not, `MAIL` gets `452 4.3.1`.
    pub fn set_accepting(&mut self, accepting: bool) {
        self.accepting = accepting;
    }

    fn auth_offered(&self, tls: bool) -> bool {
        !self.settings.users.is_empty() && (tls || self.source.allow_unencrypted_plain_auth)
    }

    fn starttls_offered(&self, tls: bool) -> bool {
        !tls && self.tls_available && self.source.allow_starttls
    }
}

impl ServerPolicy for InboundPolicy {
    fn host_name(&self) -> &str {
        &self.settings.host_name
    }

    fn greeting(&mut self, _now: Time) -> Reply {
        if self.source.smtp_service {
            Reply::new(
                220,
                None,
                format!("{} ESMTP pmta-sim", self.settings.host_name),
            )
        } else {
            // `smtp-service no`: RFC 5321 §3.1's refusal at connection time.
            Reply::new(
                554,
                Some([5, 7, 1]),
                "service not available to your address",
            )
        }
    }

    fn capabilities(&mut self, tls: bool) -> Vec<String> {
        let mut caps = vec![
            "PIPELINING".to_string(),
            format!("SIZE {}", self.message_size_max_bytes),
            "8BITMIME".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
        ];
        if self.starttls_offered(tls) {
            caps.push("STARTTLS".to_string());
        }
        if self.auth_offered(tls) {
            caps.push("AUTH PLAIN LOGIN".to_string());
        }
        caps
    }

    fn starttls(&mut self, _now: Time, envelope: &Envelope) -> Reply {
        if self.starttls_offered(envelope.tls) {
            Reply::new(220, Some([2, 0, 0]), "ready to start TLS")
        } else {
            Reply::new(454, Some([4, 7, 0]), "TLS not available")
        }
    }

    fn auth(&mut self, _now: Time, envelope: &Envelope, _mechanism: u64) -> Option<Reply> {
        if self.settings.users.is_empty() {
            return Some(Reply::new(502, Some([5, 5, 1]), "AUTH not available"));
        }
        if !self.auth_offered(envelope.tls) {
            // RFC 4954 §6: plain-text mechanisms need TLS first.
            return Some(Reply::new(
                538,
                Some([5, 7, 11]),
                "encryption required for requested authentication mechanism",
            ));
        }
        None
    }

    fn authenticate(
        &mut self,
        _now: Time,
        _envelope: &Envelope,
        user: &str,
        password: &str,
    ) -> Reply {
        match self.settings.check_password(user, password) {
            Some(entry) => {
                if let Some(index) = entry.source {
                    self.source = self.settings.sources[index].1.clone();
                }
                Reply::new(235, Some([2, 7, 0]), "authentication successful")
            }
            None => Reply::new(535, Some([5, 7, 8]), "authentication credentials invalid"),
        }
    }

    fn mail_from(&mut self, _now: Time, envelope: &Envelope) -> Reply {
        if self.source.require_auth && envelope.authenticated.is_none() {
            return Reply::new(530, Some([5, 7, 0]), "authentication required");
        }
        if !self.accepting {
            return Reply::new(452, Some([4, 3, 1]), "insufficient system storage");
        }
        if !envelope.mail_from.is_empty() && value::parse_address(&envelope.mail_from).is_err() {
            return Reply::new(501, Some([5, 1, 7]), "bad sender address syntax");
        }
        Reply::new(250, Some([2, 1, 0]), "sender ok")
    }

    fn rcpt_to(&mut self, _now: Time, envelope: &Envelope, rcpt: &str) -> Reply {
        if rcpt.is_empty() || value::parse_address(rcpt).is_err() {
            return Reply::new(501, Some([5, 1, 3]), "bad recipient address syntax");
        }
        let allowed = self.source.always_allow_relaying
            || envelope.authenticated.is_some()
            || self.settings.relay_domain(rcpt);
        if allowed {
            Reply::new(250, Some([2, 1, 5]), "recipient ok")
        } else {
            Reply::new(550, Some([5, 7, 1]), "relaying denied")
        }
    }

    fn data(&mut self, _now: Time, _envelope: &Envelope) -> Reply {
        Reply::new(354, None, "start mail input; end with <CRLF>.<CRLF>")
    }

    fn defers_messages(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Time;

    const T0: Time = Time::from_secs(0);
    use crate::config::{self, MemFs, Options};
    use crate::smtp::server::ServerSession;

    fn settings(text: &str) -> Result<InboundSettings, InboundError> {
        let fs = MemFs::new().with("/etc/pmta/config", text);
        let checked = config::load(
            std::path::Path::new("/etc/pmta/config"),
            &fs,
            Options::default(),
        )
        .unwrap();
        assert_eq!(checked.error_count(), 0, "{:?}", checked.diagnostics);
        InboundSettings::from_config(&checked.config)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn listeners_sources_and_defaults() {
        let s = settings(
            "smtp-listener 127.0.0.1:2525\nsmtp-listener 0/0:587\nspool /var/spool/pmta\n\
             relay-domain inbound.example\n\
             <source 10.0.0.0/8>\n    always-allow-relaying yes\n    max-message-size 1m\n</source>\n\
             <source 0/0>\n    smtp-service no\n</source>\n",
        )
        .unwrap();
        let listeners: Vec<String> = s.listeners.iter().map(|a| a.to_string()).collect();
        assert_eq!(listeners, ["127.0.0.1:2525", "0.0.0.0:587"]);
        assert_eq!(s.spool_dir.as_deref(), Some("/var/spool/pmta"));
        assert_eq!(s.source_for(ip("10.1.2.3")).selector, "10.0.0.0/8");
        assert!(!s.source_for(ip("192.0.2.1")).smtp_service);
        let limits = s.session_limits(s.source_for(ip("10.1.2.3")), &ListenerLimits::default());
        assert_eq!(limits.message_size_max_bytes, 1 << 20);
        assert!(s.relay_domain("postmaster@Inbound.Example"));
        // No smtp-listener: PowerMTA listens on every address at smtp-port; no source
        // matches: service on, relaying off.
        let s = settings("smtp-port 2526\n").unwrap();
        assert_eq!(s.listeners, [SocketAddr::from(([0, 0, 0, 0], 2526))]);
        let source = s.source_for(ip("192.0.2.1"));
        assert!(source.smtp_service && !source.always_allow_relaying);
        assert_eq!(s.spool_dir, None);
    }

    #[test]
    fn the_greeting_and_ehlo_name_the_host_name() {
        let s = Arc::new(settings("host-name mta.example.com\n").unwrap());
        let limits = ServerLimits::default();
        let mut session =
            ServerSession::new(InboundPolicy::new(s, ip("192.0.2.7"), false, &limits), T0);
        session.handle_bytes(T0, b"EHLO c\r\nHELO c\r\n");
        let out = String::from_utf8(session.take_output().unwrap()).unwrap();
        assert!(out.starts_with("220 mta.example.com ESMTP"), "{out}");
        assert!(out.contains("250-mta.example.com Hello c\r\n"), "{out}");
        assert!(out.ends_with("250 mta.example.com Hello\r\n"), "{out}");
    }

    #[test]
    fn smtp_users_are_checked_when_read() {
        let error =
            settings("<smtp-user bob>\n    source {nowhere}\n    password x\n</smtp-user>\n")
                .err()
                .unwrap();
        assert_eq!(
            error.to_string(),
            "/etc/pmta/config:1:1: `<smtp-user bob>` names source `{nowhere}`, which no `<source>` defines"
        );
        let error = settings("<smtp-user bob>\n</smtp-user>\n").err().unwrap();
        assert!(error.to_string().contains("has no `password`"));
        let error = settings(
            "<smtp-user bob>\n    password x\n    authentication-method system\n</smtp-user>\n",
        )
        .err()
        .unwrap();
        assert!(error.to_string().contains("checks only `password`"));
    }

    #[test]
    fn an_authenticated_user_takes_its_named_source() {
        let s = Arc::new(
            settings(
                "<smtp-user bob>\n    password pw\n    source {submit}\n</smtp-user>\n\
                 <source {submit}>\n    max-message-size 5k\n</source>\n\
                 <source 0/0>\n    allow-unencrypted-plain-auth yes\n    require-auth yes\n</source>\n",
            )
            .unwrap(),
        );
        let limits = ServerLimits::default();
        let mut session =
            ServerSession::new(InboundPolicy::new(s, ip("192.0.2.7"), false, &limits), T0);
        session.take_output();
        session.handle_bytes(
            T0,
            b"EHLO c\r\nMAIL FROM:<a@c.example>\r\nAUTH PLAIN AGJvYgBwdw==\r\n",
        );
        let out = String::from_utf8(session.take_output().unwrap()).unwrap();
        assert!(
            out.contains("250 AUTH PLAIN LOGIN") && !out.contains("STARTTLS"),
            "{out}"
        );
        assert!(out.contains("530 5.7.0 authentication required"), "{out}");
        assert!(
            out.ends_with("235 2.7.0 authentication successful\r\n"),
            "{out}"
        );
        assert_eq!(session.policy().source().selector, "{submit}");
        session.handle_bytes(
            T0,
            b"MAIL FROM:<>\r\nRCPT TO:<x@anywhere.example>\r\nRCPT TO:<>\r\n",
        );
        let out = String::from_utf8(session.take_output().unwrap()).unwrap();
        assert_eq!(
            out,
            "250 2.1.0 sender ok\r\n250 2.1.5 recipient ok\r\n501 5.1.3 bad recipient address syntax\r\n"
        );
        // A full spool refuses new transactions.
        session.policy_mut().set_accepting(false);
        session.handle_bytes(T0, b"RSET\r\nMAIL FROM:<a@c.example>\r\n");
        let out = String::from_utf8(session.take_output().unwrap()).unwrap();
        assert!(
            out.ends_with("452 4.3.1 insufficient system storage\r\n"),
            "{out}"
        );
    }
}
