//! DKIM signing with the configuration's keys, deterministic in time.
//!
//! Owns the keys (`domain-key SELECTOR,DOMAIN,KEY-FILE`), the stand-in keys simulation uses
//! when a key file cannot be read, and the signing itself. mail-auth's `DkimSigner::sign`
//! stamps `t=` from the system clock, so this module assembles the signature from
//! mail-auth's public pieces (canonicalization, hashing, the signing key and the
//! `Signature` writer) with `t=` taken from the engine's `now`: the same message signed at
//! the same `now` gives the same bytes. Pure: no clock, no I/O.

use base64::Engine as _;
use mail_auth::common::crypto::{
    DkimKey, Ed25519Key, HashContext, HashImpl, RsaKey, Sha256, SigningKey,
};
use mail_auth::common::headers::{HeaderStream, HeaderWriter, Writable, Writer};
pub use mail_auth::dkim::Canonicalization;
use mail_auth::dkim::Signature;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use thiserror::Error;

use crate::config::Config;
use crate::config::model::KeyMaterial;

/// Headers signed when `dkim-headers` does not say (RFC 6376 §5.4.1's recommendation).
pub const DEFAULT_SIGNED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

#[derive(Debug, Error)]
pub enum DkimError {
    #[error(
        "DKIM key for {selector}._domainkey.{domain} is not a usable RSA or Ed25519 private key: {reason}"
    )]
    BadKey {
        selector: String,
        domain: String,
        reason: String,
    },
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// One signing identity.
pub struct DomainSigner {
    pub selector: String,
    pub domain: String,
    key: DkimKey,
    /// True for a generated stand-in (simulation only).
    pub stand_in: bool,
    /// `v=DKIM1; k=...; p=...` for a stand-in key, so a simulated receiver can verify it.
    pub stand_in_record: Option<String>,
}

impl std::fmt::Debug for DomainSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainSigner")
            .field("selector", &self.selector)
            .field("domain", &self.domain)
            .field("stand_in", &self.stand_in)
            .finish()
    }
}

/// Canonicalization and header choices for one signature.
#[derive(Clone, Debug)]
pub struct SignOptions {
    pub headers_canon: Canonicalization,
    pub body_canon: Canonicalization,
    pub headers: Vec<String>,
    /// The `i=` tag (`dkim-identity`), when set.
    pub identity: Option<String>,
}

impl SignOptions {
    /// From the queue's `dkim-headers-canon`, `dkim-body-canon` and `dkim-headers`.
    pub fn from_settings(
        headers_canon: &str,
        body_canon: &str,
        headers: Option<&str>,
    ) -> SignOptions {
        let canon = |text: &str| match text {
            "simple" => Canonicalization::Simple,
            _ => Canonicalization::Relaxed,
        };
        let headers = match headers {
            Some(list) => list
                .split([',', ' '])
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(str::to_string)
                .collect(),
            None => DEFAULT_SIGNED_HEADERS
                .iter()
                .map(|h| h.to_string())
                .collect(),
        };
        SignOptions {
            headers_canon: canon(headers_canon),
            body_canon: canon(body_canon),
            headers,
            identity: None,
        }
    }
}

/// Every signing key of a configuration.
#[derive(Debug, Default)]
pub struct Signer {
    signers: Vec<DomainSigner>,
}

impl Signer {
    /// Loads every `domain-key`. A key whose file could not be read becomes a stand-in
    /// Ed25519 key derived from `seed`, selector and domain (so runs are reproducible).
    pub fn from_config(config: &Config, seed: u64) -> Result<Signer, DkimError> {
        let mut signers = Vec::new();
        for key in &config.dkim_keys {
            let selector = key.key.selector.clone();
            let domain = key.key.domain.clone();
            let signer = match &key.material {
                KeyMaterial::Pem(pem) => DomainSigner {
                    key: parse_pem(pem).map_err(|reason| DkimError::BadKey {
                        selector: selector.clone(),
                        domain: domain.clone(),
                        reason,
                    })?,
                    selector,
                    domain,
                    stand_in: false,
                    stand_in_record: None,
                },
                KeyMaterial::StandIn { .. } => stand_in(seed, selector, domain)?,
            };
            signers.push(signer);
        }
        Ok(Signer { signers })
    }

    /// The signer for a domain: an exact key, else one for a parent domain.
    pub fn for_domain(&self, domain: &str) -> Option<&DomainSigner> {
        let domain = domain.to_ascii_lowercase();
        self.signers
            .iter()
            .find(|s| s.domain == domain)
            .or_else(|| {
                self.signers
                    .iter()
                    .find(|s| domain.ends_with(&format!(".{}", s.domain)))
            })
    }

    pub fn signers(&self) -> &[DomainSigner] {
        &self.signers
    }
}

fn parse_pem(pem: &str) -> Result<DkimKey, String> {
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| e.to_string())?;
    if let Ok(rsa) = RsaKey::<Sha256>::from_key_der(der.clone_key()) {
        return Ok(DkimKey::Rsa(rsa));
    }
    match der {
        PrivateKeyDer::Pkcs8(pkcs8) => {
            Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8.secret_pkcs8_der())
                .map(DkimKey::Ed25519)
                .map_err(|e| e.to_string())
        }
        _ => Err("unsupported key format".to_string()),
    }
}

fn stand_in(seed: u64, selector: String, domain: String) -> Result<DomainSigner, DkimError> {
    let material = format!("pmta-sim stand-in DKIM key\0{seed}\0{selector}\0{domain}");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, material.as_bytes());
    let pair = aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(digest.as_ref())
        .map_err(|e| DkimError::Sign(e.to_string()))?;
    let public = aws_lc_rs::signature::KeyPair::public_key(&pair)
        .as_ref()
        .to_vec();
    let key = Ed25519Key::from_seed_and_public_key(digest.as_ref(), &public)
        .map_err(|e| DkimError::Sign(e.to_string()))?;
    let record = format!(
        "v=DKIM1; k=ed25519; p={}",
        base64::engine::general_purpose::STANDARD.encode(&public)
    );
    Ok(DomainSigner {
        selector,
        domain,
        key: DkimKey::Ed25519(key),
        stand_in: true,
        stand_in_record: Some(record),
    })
}

/// Walks the header fields of a CRLF message for mail-auth's canonicalization: each field's
/// name, and its value from after the colon through the final CRLF of its last line.
struct Fields<'x> {
    message: &'x [u8],
    pos: usize,
    body_start: Option<usize>,
}

impl<'x> Fields<'x> {
    fn new(message: &'x [u8]) -> Fields<'x> {
        Fields {
            message,
            pos: 0,
            body_start: None,
        }
    }

    fn line_end(&self, from: usize) -> usize {
        self.message[from..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(self.message.len(), |i| from + i + 1)
    }
}

impl<'x> HeaderStream<'x> for Fields<'x> {
    fn next_header(&mut self) -> Option<(&'x [u8], &'x [u8])> {
        loop {
            if self.body_start.is_some() || self.pos >= self.message.len() {
                self.body_start.get_or_insert(self.message.len());
                return None;
            }
            let start = self.pos;
            let mut end = self.line_end(start);
            let line = &self.message[start..end];
            if line == b"\r\n" || line == b"\n" {
                self.body_start = Some(end);
                return None;
            }
            while end < self.message.len() && matches!(self.message[end], b' ' | b'\t') {
                end = self.line_end(end);
            }
            self.pos = end;
            if let Some(colon) = self.message[start..end].iter().position(|b| *b == b':') {
                let message: &'x [u8] = self.message;
                return Some((
                    &message[start..start + colon],
                    &message[start + colon + 1..end],
                ));
            }
        }
    }

    fn body(&mut self) -> &'x [u8] {
        while self.next_header().is_some() {}
        let message: &'x [u8] = self.message;
        &message[self.body_start.unwrap_or(message.len())..]
    }
}

/// The message with every line ending in CRLF, as it is sent and signed.
pub fn to_crlf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 40);
    let mut previous = 0u8;
    for &byte in data {
        if byte == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(byte);
        previous = byte;
    }
    out
}

struct Signable<'a> {
    headers: mail_auth::dkim::canonicalize::CanonicalHeaders<'a>,
    signature: &'a Signature,
}

impl Writable for Signable<'_> {
    fn write(self, writer: &mut impl Writer) {
        self.headers.write(writer);
        self.signature.write(writer, false);
    }
}

impl DomainSigner {
    /// The `DKIM-Signature: ...\r\n` header for `message` (CRLF line ends, see
    /// [`to_crlf`]), signed at `now_unix_s`.
    pub fn sign(
        &self,
        message: &[u8],
        now_unix_s: u64,
        options: &SignOptions,
    ) -> Result<String, DkimError> {
        self.sign_with(message, None, now_unix_s, options)
    }

    /// As [`DomainSigner::sign`] for a message whose body is hashed already: `head` is the
    /// header block (CRLF line ends, through its blank line) and `body_hash` the body's
    /// [`body_hash`] under `options.body_canon`. A body many messages share is then
    /// canonicalized and hashed once, not once per message.
    pub fn sign_head(
        &self,
        head: &[u8],
        body_hash: &[u8],
        now_unix_s: u64,
        options: &SignOptions,
    ) -> Result<String, DkimError> {
        self.sign_with(head, Some(body_hash), now_unix_s, options)
    }

    fn sign_with(
        &self,
        message: &[u8],
        body_hash: Option<&[u8]>,
        now_unix_s: u64,
        options: &SignOptions,
    ) -> Result<String, DkimError> {
        let mut signature = Signature {
            v: 1,
            a: self.key.algorithm(),
            d: self.domain.clone(),
            s: self.selector.clone(),
            h: options.headers.clone(),
            ch: options.headers_canon,
            cb: options.body_canon,
            i: options.identity.clone().unwrap_or_default(),
            ..Signature::default()
        };
        let (_, canonical_headers, signed_headers, canonical_body) =
            signature.canonicalize(Fields::new(message));
        if signed_headers.is_empty() {
            return Err(DkimError::Sign(
                "the message has none of the headers to sign".into(),
            ));
        }
        signature.bh = match body_hash {
            Some(hash) => hash.to_vec(),
            None => self.key.hash(canonical_body).as_ref().to_vec(),
        };
        signature.t = now_unix_s;
        signature.h = signed_headers;
        signature.b = self
            .key
            .sign(Signable {
                headers: canonical_headers,
                signature: &signature,
            })
            .map_err(|e| DkimError::Sign(e.to_string()))?;
        Ok(signature.to_header())
    }
}

/// The `bh=` tag of `body` (CRLF line ends) under `canon`: SHA-256, the hash of every key
/// pmta-sim signs with (`rsa-sha256`, `ed25519-sha256`).
pub fn body_hash(body: &[u8], canon: Canonicalization) -> Vec<u8> {
    let mut hasher = <Sha256 as HashImpl>::hasher();
    canon.canonical_body(body, u64::MAX).write(&mut hasher);
    hasher.complete().as_ref().to_vec()
}
