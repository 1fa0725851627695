//! Mail host lookups for live mode, with hickory-resolver: the answer to the engine's
//! `Action::ResolveMx` as an [`MxAnswer`].
//!
//! Owns the resolver (the system's `/etc/resolv.conf` by default, or one server
//! `IP:PORT`), static routes (`DOMAIN=HOST:PORT`, for tests and smart hosts), and the rules
//! of RFC 5321 §5.1: MX records in preference order, each exchange's A and AAAA addresses,
//! the implicit MX (the domain's own addresses when it has no MX), RFC 7505's null MX.
//! NXDOMAIN, a null MX and a domain with neither MX nor address are `NoMailHost` (the
//! engine's `bounce-upon-no-mx` decides what that means); timeouts, SERVFAIL and REFUSED
//! are `TempFail`, retried after `retry-after-dns-error`. It must not cache beyond what
//! hickory does, nor decide anything about queues.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use thiserror::Error;

use crate::engine::{MX_TARGETS_MAX, MxAnswer, MxHost};

/// The SMTP port of a mail host found in DNS.
pub const SMTP_PORT: u16 = 25;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ResolverError {
    #[error("cannot read the system's resolver configuration: {0}")]
    System(String),
    #[error("`{0}`: expected DOMAIN=HOST:PORT, such as example.com=127.0.0.1:2525")]
    BadRoute(String),
    #[error("`{0}`: expected a resolver address IP:PORT, such as 127.0.0.1:53")]
    BadServer(String),
}

/// `DOMAIN=HOST:PORT`: mail for DOMAIN goes to HOST (an address, or a name looked up for
/// its addresses) on PORT, whatever DNS says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub domain: String,
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for Route {
    type Err = ResolverError;

    fn from_str(text: &str) -> Result<Route, ResolverError> {
        let bad = || ResolverError::BadRoute(text.to_string());
        let (domain, target) = text.split_once('=').ok_or_else(bad)?;
        let (host, port) = target.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad())?;
        if domain.is_empty() || host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(Route {
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            host: host.to_string(),
            port,
        })
    }
}

/// Parses a resolver address `IP:PORT` (`[IPV6]:PORT`).
pub fn parse_server(text: &str) -> Result<SocketAddr, ResolverError> {
    text.parse()
        .map_err(|_| ResolverError::BadServer(text.to_string()))
}

pub struct Resolver {
    inner: TokioResolver,
    routes: BTreeMap<String, Route>,
}

/// What one address lookup found.
enum Addresses {
    Found(Vec<IpAddr>),
    None,
    TempFail(String),
}

impl Resolver {
    /// The system's resolver (`/etc/resolv.conf`).
    pub fn system() -> Result<Resolver, ResolverError> {
        let mut builder =
            TokioResolver::builder_tokio().map_err(|e| ResolverError::System(e.to_string()))?;
        builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        let inner = builder
            .build()
            .map_err(|e| ResolverError::System(e.to_string()))?;
        Ok(Resolver {
            inner,
            routes: BTreeMap::new(),
        })
    }

    /// One DNS server at `server` (UDP, then TCP for truncated answers); each query waits
    /// `timeout` and is tried `attempts` times before it is a temporary failure.
    pub fn with_server(server: SocketAddr, timeout: Duration, attempts: usize) -> Resolver {
        let mut name_server = NameServerConfig::udp_and_tcp(server.ip());
        for connection in &mut name_server.connections {
            connection.port = server.port();
        }
        let config = ResolverConfig::from_parts(None, Vec::new(), vec![name_server]);
        let mut builder =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        let options = builder.options_mut();
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.timeout = timeout;
        options.attempts = attempts;
        // Names are always absolute here: no search list, no local hosts file.
        options.ndots = 0;
        options.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        let inner = builder
            .build()
            .expect("a resolver with one name server and no TLS always builds");
        Resolver {
            inner,
            routes: BTreeMap::new(),
        }
    }

    /// Adds static routes; a later route for the same domain replaces an earlier one.
    pub fn with_routes(mut self, routes: impl IntoIterator<Item = Route>) -> Resolver {
        for route in routes {
            self.routes.insert(route.domain.clone(), route);
        }
        self
    }

    /// The mail hosts of `domain`, for `Engine::handle_mx`.
    pub async fn resolve_mx(&self, domain: &str) -> MxAnswer {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if let Some(route) = self.routes.get(&domain) {
            let addresses = match route.host.parse::<IpAddr>() {
                Ok(ip) => Addresses::Found(vec![ip]),
                Err(_) => self.addresses(&route.host).await,
            };
            return match addresses {
                Addresses::Found(addresses) => MxAnswer::Hosts(vec![MxHost {
                    preference: 0,
                    name: route.host.clone(),
                    addresses,
                    port: route.port,
                }]),
                Addresses::None => {
                    MxAnswer::TempFail(format!("route host {} has no address", route.host))
                }
                Addresses::TempFail(reason) => MxAnswer::TempFail(reason),
            };
        }
        let fqdn = format!("{domain}.");
        match self.inner.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => {
                let mut exchanges: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                        _ => None,
                    })
                    .collect();
                // RFC 7505: a single MX of "." says the domain takes no mail.
                if exchanges.len() == 1 && exchanges[0].1 == "." {
                    return MxAnswer::NoMailHost;
                }
                exchanges.sort_by_key(|(preference, _)| *preference);
                exchanges.truncate(MX_TARGETS_MAX);
                let mut hosts = Vec::new();
                let mut temp_failure = None;
                for (preference, exchange) in exchanges {
                    match self.addresses(&exchange).await {
                        Addresses::Found(addresses) => hosts.push(MxHost {
                            preference,
                            name: exchange.trim_end_matches('.').to_string(),
                            addresses,
                            port: SMTP_PORT,
                        }),
                        Addresses::None => {}
                        Addresses::TempFail(reason) => temp_failure = Some(reason),
                    }
                }
                match (hosts.is_empty(), temp_failure) {
                    (false, _) => MxAnswer::Hosts(hosts),
                    (true, Some(reason)) => MxAnswer::TempFail(reason),
                    (true, None) => MxAnswer::NoMailHost,
                }
            }
            Err(NetError::Dns(DnsError::NoRecordsFound(no_records)))
                if no_records.response_code == ResponseCode::NXDomain =>
            {
                MxAnswer::NoMailHost
            }
            // The domain exists without MX records: its own addresses are its mail host.
            Err(NetError::Dns(DnsError::NoRecordsFound(_))) => match self.addresses(&fqdn).await {
                Addresses::Found(addresses) => MxAnswer::Hosts(vec![MxHost {
                    preference: 0,
                    name: domain,
                    addresses,
                    port: SMTP_PORT,
                }]),
                Addresses::None => MxAnswer::NoMailHost,
                Addresses::TempFail(reason) => MxAnswer::TempFail(reason),
            },
            Err(error) => MxAnswer::TempFail(describe(&error)),
        }
    }

    async fn addresses(&self, host: &str) -> Addresses {
        let name = if host.ends_with('.') {
            host.to_string()
        } else {
            format!("{host}.")
        };
        match self.inner.lookup_ip(name.as_str()).await {
            Ok(lookup) => {
                let found: Vec<IpAddr> = lookup.iter().collect();
                if found.is_empty() {
                    Addresses::None
                } else {
                    Addresses::Found(found)
                }
            }
            Err(NetError::Dns(DnsError::NoRecordsFound(_))) => Addresses::None,
            Err(error) => Addresses::TempFail(describe(&error)),
        }
    }
}

fn describe(error: &NetError) -> String {
    format!("DNS lookup failed: {error}")
}
