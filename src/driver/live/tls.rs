//! TLS for live mode, with rustls on aws-lc-rs (the crypto library mail-auth signs and verifies DKIM with): the
//! listener's server configuration from PowerMTA's `smtp-server-tls-certificate` (one PEM
//! file holding the certificate chain and its private key), and the outbound connector
//! that carries out the engine's `Action::StartTls` as a `<domain>`'s `use-starttls`,
//! `require-starttls` and `require-tls-verify` say.
//!
//! Opportunistic TLS (the default) encrypts without checking the server's certificate, as
//! PowerMTA and Postfix do: a receiver's self-signed or mismatched certificate must not
//! stop mail that would otherwise go in clear. Only `require-tls-verify` checks the chain
//! (system roots plus any extra roots given) and the MX host name.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use crate::inbound::CertificateFile;

/// Largest certificate file read (a chain and a key are a few KiB).
pub const CERTIFICATE_FILE_MAX_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{at}: cannot read the certificate file `{path}`: {error}")]
    Unreadable {
        path: String,
        at: String,
        error: io::Error,
    },
    #[error("{at}: `{path}`: {problem}")]
    Invalid {
        path: String,
        at: String,
        problem: String,
    },
    #[error("cannot load the system's trusted roots: {0}")]
    Roots(String),
}

/// The process-wide crypto provider: aws-lc-rs (the same library that signs and verifies DKIM). Installing it is idempotent; doing it before any
/// configuration is built keeps rustls from having to guess.
pub fn install_crypto_provider() {
    // An error only means a provider is installed already.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The listener's TLS from a `smtp-server-tls-certificate` file.
pub fn server_config(file: &CertificateFile) -> Result<Arc<ServerConfig>, TlsError> {
    let unreadable = |error| TlsError::Unreadable {
        path: file.path.clone(),
        at: file.at.clone(),
        error,
    };
    let len = std::fs::metadata(&file.path).map_err(unreadable)?.len();
    if len > CERTIFICATE_FILE_MAX_BYTES {
        return Err(TlsError::Invalid {
            path: file.path.clone(),
            at: file.at.clone(),
            problem: format!("{len} bytes, over the limit of {CERTIFICATE_FILE_MAX_BYTES}"),
        });
    }
    let pem = std::fs::read(&file.path).map_err(unreadable)?;
    server_config_from_pem(&pem, file.password.is_some()).map_err(|problem| TlsError::Invalid {
        path: file.path.clone(),
        at: file.at.clone(),
        problem,
    })
}

/// A server configuration from PEM text with the certificate chain and the private key (in
/// either order). `has_password`: the directive named a key password.
pub fn server_config_from_pem(pem: &[u8], has_password: bool) -> Result<Arc<ServerConfig>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the file (it must hold the certificate chain and the private key, in PEM)".into());
    }
    let encrypted = pem
        .windows(b"ENCRYPTED PRIVATE KEY".len())
        .any(|w| w == b"ENCRYPTED PRIVATE KEY");
    if encrypted || has_password {
        return Err("the private key is encrypted; live mode needs it unencrypted (`openssl pkey -in FILE -out KEY` decrypts it)".into());
    }
    let key = PrivateKeyDer::from_pem_slice(pem)
        .map_err(|_| "no private key in the file (it must hold the certificate chain and the private key, in PEM)".to_string())?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the key does not fit the certificate: {e}"))?;
    Ok(Arc::new(config))
}

/// The listener's side of STARTTLS.
pub async fn accept<S>(config: Arc<ServerConfig>, stream: S) -> io::Result<server::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    TlsAcceptor::from(config).accept(stream).await
}

/// A socket in clear or after STARTTLS: `T` is rustls's server stream (the listener) or its
/// client stream (the live driver's connections).
pub enum MaybeTls<T> {
    Plain(TcpStream),
    Tls(Box<T>),
}

impl<T: AsyncRead + Unpin> AsyncRead for MaybeTls<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MaybeTls<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How a queue uses TLS, from its `<domain>` settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// `use-starttls no` (and nothing required): never STARTTLS.
    Off,
    /// `use-starttls yes`: STARTTLS when offered, no certificate check.
    Opportunistic,
    /// `require-starttls yes`: TLS or no delivery; the certificate is not checked.
    Required,
    /// `require-tls-verify yes`: TLS or no delivery, with a valid chain for the MX name.
    RequiredVerified,
}

impl TlsMode {
    pub fn from_settings(
        use_starttls: bool,
        require_starttls: bool,
        require_verify: bool,
    ) -> TlsMode {
        match (use_starttls, require_starttls, require_verify) {
            (_, _, true) => TlsMode::RequiredVerified,
            (_, true, false) => TlsMode::Required,
            (true, false, false) => TlsMode::Opportunistic,
            (false, false, false) => TlsMode::Off,
        }
    }

    /// Whether STARTTLS is attempted when the server offers it.
    pub fn attempts(self) -> bool {
        self != TlsMode::Off
    }

    /// Whether a server without STARTTLS (or a failed handshake) stops delivery.
    pub fn requires(self) -> bool {
        matches!(self, TlsMode::Required | TlsMode::RequiredVerified)
    }

    pub fn verifies(self) -> bool {
        self == TlsMode::RequiredVerified
    }
}

/// The outbound side of STARTTLS: one verifying and one opportunistic client configuration.
#[derive(Clone)]
pub struct TlsClient {
    verifying: TlsConnector,
    opportunistic: TlsConnector,
}

impl TlsClient {
    /// Verifies against `roots` only (tests give their own certificate authority).
    pub fn with_roots(roots: RootCertStore) -> TlsClient {
        let verifying = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("aws-lc-rs supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let opportunistic = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("aws-lc-rs supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            .with_no_client_auth();
        TlsClient {
            verifying: TlsConnector::from(Arc::new(verifying)),
            opportunistic: TlsConnector::from(Arc::new(opportunistic)),
        }
    }

    /// Verifies against the system's trusted roots (`/etc/ssl/certs`) and `extra`.
    pub fn with_system_roots(extra: Vec<CertificateDer<'static>>) -> Result<TlsClient, TlsError> {
        let found = rustls_native_certs::load_native_certs();
        if found.certs.is_empty()
            && let Some(error) = found.errors.first()
        {
            return Err(TlsError::Roots(error.to_string()));
        }
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(found.certs);
        for cert in extra {
            roots
                .add(cert)
                .map_err(|e| TlsError::Roots(e.to_string()))?;
        }
        Ok(TlsClient::with_roots(roots))
    }

    /// Upgrades `stream` for the MX `server_name` (a host name or an address), checking
    /// the certificate when `mode` says so. An error is the engine's failed handshake.
    pub async fn connect<S>(
        &self,
        stream: S,
        server_name: &str,
        mode: TlsMode,
    ) -> io::Result<client::TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = ServerName::try_from(server_name.trim_end_matches('.').to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let connector = if mode.verifies() {
            &self.verifying
        } else {
            &self.opportunistic
        };
        connector.connect(name, stream).await
    }
}

/// Opportunistic TLS: any certificate is accepted, but the handshake's signatures are still
/// checked, so the session is encrypted with the key the server really holds.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
