//! DKIM verification for the simulated receivers: mail-auth against an in-memory DNS zone.
//!
//! The providers' policies are pure and only ask "does this message carry a valid
//! signature?"; this room answers with mail-auth's real verification, its resolver caches
//! filled from the scenario's zone so no query leaves the process. (mail-auth compares `x=`
//! with the system clock; pmta-sim never signs with `x=`, so results do not depend on it.)

use std::borrow::Borrow;
use std::future::Future;
use std::hash::Hash;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};

/// Most polls of a verification future; it never waits on anything, so a handful suffice.
const POLLS_MAX: usize = 1000;

/// TXT records by name (`selector._domainkey.domain.`), parsed.
struct Zone(Vec<(Box<str>, Txt)>);

impl ResolverCache<Box<str>, Txt> for Zone {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0
            .iter()
            .find(|(k, _)| k.borrow() == name)
            .map(|(_, v)| v.clone())
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

/// Verifies DKIM signatures against a fixed set of key records.
pub struct Verifier {
    zone: Zone,
    authenticator: Option<MessageAuthenticator>,
}

impl Verifier {
    /// `records`: (`selector._domainkey.domain`, `v=DKIM1; ...`). Records that do not parse
    /// are left out, as a receiver would ignore them.
    pub fn new(records: &[(String, String)]) -> Verifier {
        let zone = Zone(
            records
                .iter()
                .filter_map(|(name, value)| {
                    let key = DomainKey::parse(value.as_bytes()).ok()?;
                    let fqdn = format!("{}.", name.trim_end_matches('.').to_ascii_lowercase());
                    Some((fqdn.into_boxed_str(), Txt::DomainKey(Arc::new(key))))
                })
                .collect(),
        );
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

    /// Whether `message` carries at least one signature that verifies.
    pub fn verify(&self, message: &[u8]) -> bool {
        self.results(message).contains(&DkimResult::Pass)
    }

    /// The result of each DKIM signature of `message`, in order.
    pub fn results(&self, message: &[u8]) -> Vec<DkimResult> {
        let (Some(authenticator), Some(parsed)) =
            (&self.authenticator, AuthenticatedMessage::parse(message))
        else {
            return Vec::new();
        };
        let future = authenticator.verify_dkim(Parameters::new(&parsed).with_txt_cache(&self.zone));
        let mut future = pin!(future);
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..POLLS_MAX {
            if let Poll::Ready(results) = future.as_mut().poll(&mut cx) {
                return results.iter().map(|r| r.result().clone()).collect();
            }
        }
        Vec::new()
    }
}
