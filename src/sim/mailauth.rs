//! Sender authentication for the simulated receivers: DKIM, SPF, DMARC and reverse DNS,
//! verified by mail-auth against the scenario's in-memory DNS zone.
//!
//! The providers' policies are pure and ask one question per message (what passed?); this
//! room answers it with mail-auth's real verifiers. Every lookup is answered from the zone,
//! a name it does not hold included (NXDOMAIN or an empty answer), so no query ever leaves
//! the process and no resolver runtime is needed. (mail-auth compares DKIM `x=` with the
//! system clock; pmta-sim never signs with `x=`, so results do not depend on it.)

use std::borrow::Borrow;
use std::future::Future;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dmarc::Dmarc;
use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::spf::Spf;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, DkimResult, DmarcResult, DnsError, Error, IprevResult,
    MessageAuthenticator, Parameters, RecordSet, ResolverCache, SpfResult, Txt,
};

use crate::isp::AuthResults;

/// Most polls of a verification future; it never waits on anything, so a handful suffice.
const POLLS_MAX: usize = 1000;
/// Most records in the simulated zone.
pub const ZONE_RECORDS_MAX: usize = 10_000;

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.').to_ascii_lowercase())
}

/// The simulated DNS: TXT (SPF, DKIM keys, DMARC), A and PTR records.
#[derive(Default)]
pub struct Zone {
    txt: Txts,
    a: Addresses,
    ptr: Pointers,
}

#[derive(Default)]
struct Txts(Vec<(Box<str>, Txt)>);
#[derive(Default)]
struct Addresses(Vec<(Box<str>, Vec<Ipv4Addr>)>);
#[derive(Default)]
struct Pointers(Vec<(IpAddr, Vec<Box<str>>)>);
/// MX and AAAA: the zone holds none.
struct Empty;

impl Zone {
    /// Adds a TXT record, parsed as a receiver would: `v=spf1` as SPF, `v=DMARC1` as DMARC,
    /// anything else as a DKIM key. A record that does not parse is kept as the error, as a
    /// receiver would see it. The first record for a name wins.
    pub fn add_txt(&mut self, name: &str, value: &str) {
        let name = fqdn(name);
        if self.full() || self.txt.0.iter().any(|(k, _)| **k == *name) {
            return;
        }
        let bytes = value.as_bytes();
        let lower = value.trim_start().to_ascii_lowercase();
        let txt: Txt = if lower.starts_with("v=spf1") {
            Spf::parse(bytes).into()
        } else if lower.starts_with("v=dmarc1") {
            Dmarc::parse(bytes).into()
        } else {
            DomainKey::parse(bytes).into()
        };
        self.txt.0.push((name.into_boxed_str(), txt));
    }

    pub fn add_a(&mut self, name: &str, ip: Ipv4Addr) {
        let name = fqdn(name);
        if self.full() {
            return;
        }
        match self.a.0.iter_mut().find(|(k, _)| **k == *name) {
            Some((_, ips)) => ips.push(ip),
            None => self.a.0.push((name.into_boxed_str(), vec![ip])),
        }
    }

    pub fn add_ptr(&mut self, ip: IpAddr, name: &str) {
        let name = fqdn(name).into_boxed_str();
        if self.full() {
            return;
        }
        match self.ptr.0.iter_mut().find(|(k, _)| *k == ip) {
            Some((_, names)) => names.push(name),
            None => self.ptr.0.push((ip, vec![name])),
        }
    }

    fn full(&self) -> bool {
        self.txt.0.len() + self.a.0.len() + self.ptr.0.len() >= ZONE_RECORDS_MAX
    }
}

fn not_found() -> Error {
    Error::Dns(DnsError::RecordNotFound(ResponseCode::NXDomain))
}

/// The zone answers every name: what it holds, or "no such record".
impl ResolverCache<Box<str>, Txt> for Txts {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hit = self.0.iter().find(|(k, _)| k.borrow() == name);
        Some(hit.map_or_else(|| Txt::Error(not_found()), |(_, v)| v.clone()))
    }
    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(name)
    }
    fn insert(&self, _key: Box<str>, _value: Txt, _valid_until: std::time::Instant) {}
}

impl ResolverCache<Box<str>, RecordSet<Ipv4Addr>> for Addresses {
    fn get<Q>(&self, name: &Q) -> Option<RecordSet<Ipv4Addr>>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hit = self.0.iter().find(|(k, _)| k.borrow() == name);
        Some(record_set(hit.map_or_else(Vec::new, |(_, v)| v.clone())))
    }
    fn remove<Q>(&self, name: &Q) -> Option<RecordSet<Ipv4Addr>>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(name)
    }
    fn insert(&self, _: Box<str>, _: RecordSet<Ipv4Addr>, _: std::time::Instant) {}
}

impl ResolverCache<IpAddr, RecordSet<Box<str>>> for Pointers {
    fn get<Q>(&self, ip: &Q) -> Option<RecordSet<Box<str>>>
    where
        IpAddr: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hit = self.0.iter().find(|(k, _)| k.borrow() == ip);
        Some(record_set(hit.map_or_else(Vec::new, |(_, v)| v.clone())))
    }
    fn remove<Q>(&self, ip: &Q) -> Option<RecordSet<Box<str>>>
    where
        IpAddr: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(ip)
    }
    fn insert(&self, _: IpAddr, _: RecordSet<Box<str>>, _: std::time::Instant) {}
}

impl<T> ResolverCache<Box<str>, RecordSet<T>> for Empty {
    fn get<Q>(&self, _: &Q) -> Option<RecordSet<T>>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        Some(record_set(Vec::new()))
    }
    fn remove<Q>(&self, name: &Q) -> Option<RecordSet<T>>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(name)
    }
    fn insert(&self, _: Box<str>, _: RecordSet<T>, _: std::time::Instant) {}
}

fn record_set<T>(items: Vec<T>) -> RecordSet<T> {
    RecordSet {
        rrset: items.into(),
        dnssec_status: Default::default(),
    }
}

/// Runs a verification future that never waits (every lookup is answered from the zone).
fn block_on<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    (0..POLLS_MAX).find_map(|_| match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    })
}

/// Verifies what receivers verify, against one zone.
pub struct Verifier {
    zone: Zone,
    authenticator: Option<MessageAuthenticator>,
}

impl Verifier {
    pub fn new(zone: Zone) -> Verifier {
        // No name servers: every answer comes from the zone above.
        let authenticator = MessageAuthenticator::new(
            ResolverConfig::from_parts(None, vec![], vec![]),
            ResolverOpts::default(),
        )
        .ok();
        Verifier {
            zone,
            authenticator,
        }
    }

    /// `params` with every cache answered by the zone.
    fn params<P>(&self, params: P) -> Parameters<'_, P, Txts, Empty, Addresses, Empty, Pointers> {
        Parameters {
            params,
            cache_txt: Some(&self.zone.txt),
            cache_mx: Some(&EMPTY),
            cache_ptr: Some(&self.zone.ptr),
            cache_ipv4: Some(&self.zone.a),
            cache_ipv6: Some(&EMPTY),
        }
    }

    /// The result of each DKIM signature of `message`, in order.
    pub fn results(&self, message: &[u8]) -> Vec<DkimResult> {
        let (Some(authenticator), Some(parsed)) =
            (&self.authenticator, AuthenticatedMessage::parse(message))
        else {
            return Vec::new();
        };
        block_on(authenticator.verify_dkim(self.params(&parsed)))
            .map(|out| out.iter().map(|r| r.result().clone()).collect())
            .unwrap_or_default()
    }

    /// Everything a receiver checks about one message from `peer`.
    pub fn check(&self, peer: IpAddr, helo: &str, mail_from: &str, message: &[u8]) -> AuthResults {
        let (Some(authenticator), Some(parsed)) =
            (&self.authenticator, AuthenticatedMessage::parse(message))
        else {
            return AuthResults::default();
        };
        let dkim = block_on(authenticator.verify_dkim(self.params(&parsed))).unwrap_or_default();
        let mail_from_domain = mail_from.rsplit_once('@').map_or(helo, |(_, d)| d);
        let spf = block_on(
            authenticator.verify_spf(self.params(SpfParameters::verify_mail_from(
                peer,
                helo,
                "mx.pmta-sim.invalid",
                mail_from,
            ))),
        );
        let iprev = block_on(authenticator.verify_iprev(self.params(peer)));
        let dmarc = spf.as_ref().and_then(|spf| {
            block_on(authenticator.verify_dmarc(self.params(
                mail_auth::dmarc::verify::DmarcParameters::new(
                    &parsed,
                    &dkim,
                    mail_from_domain,
                    spf,
                ),
            )))
        });
        AuthResults {
            dkim_domains: dkim
                .iter()
                .filter(|o| *o.result() == DkimResult::Pass)
                .filter_map(|o| o.signature().map(|s| s.d.to_ascii_lowercase()))
                .collect(),
            spf: spf.is_some_and(|o| o.result() == SpfResult::Pass),
            dmarc_record: dmarc.as_ref().is_some_and(|d| {
                !matches!(d.spf_result(), DmarcResult::None)
                    || !matches!(d.dkim_result(), DmarcResult::None)
            }),
            dmarc_aligned: dmarc.as_ref().is_some_and(|d| {
                *d.spf_result() == DmarcResult::Pass || *d.dkim_result() == DmarcResult::Pass
            }),
            ptr: iprev.is_some_and(|o| o.result == IprevResult::Pass),
        }
    }
}

static EMPTY: Empty = Empty;
