//! The API port: TLS with client certificates, connection limits and
//! timeouts, and graceful shutdown.
//!
//! rustls with the ring provider, TLS 1.3 and TLS 1.2 with ECDHE-ECDSA
//! suites only. The server key never leaves the token: rustls asks
//! [`TokenKey`] for each handshake signature and the token makes it (ECDSA
//! P-256 over SHA-256). Client certificates are required and must chain to
//! the internal CA; a revoked one ([`Revoked`]) is refused at the handshake.
//! The client's identity (CN) and role (OU) ride on every request as an
//! [`Identity`] extension.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use der::Decode as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::net::TcpListener;
use tower::ServiceExt as _;

use crate::config::ServerConfig as Limits;
use crate::credentials::Revoked;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::token::Token;

const CN: der::asn1::ObjectIdentifier = der::asn1::ObjectIdentifier::new_unwrap("2.5.4.3");

/// Who is on the other end of an API connection, from its certificate.
/// Only the CN counts: the policy gives the roles (the certificate's OU is
/// not consulted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// CN: the station or officer id.
    pub id: String,
    /// Certificate serial, lowercase hex.
    pub serial_number: String,
}

impl Identity {
    /// Read CN and serial from a client certificate.
    pub fn from_cert(der: &[u8]) -> Option<Self> {
        let cert = x509_cert::Certificate::from_der(der).ok()?;
        let tbs = &cert.tbs_certificate;
        let cn = tbs
            .subject
            .0
            .iter()
            .flat_map(|rdn| rdn.0.iter())
            .find(|a| a.oid == CN)
            .and_then(|a| ca::directory_string(&a.value));
        Some(Self {
            id: cn?,
            serial_number: serial_hex(tbs.serial_number.as_bytes()),
        })
    }
}

/// Lowercase hex of a DER INTEGER's content without a sign byte.
pub fn serial_hex(bytes: &[u8]) -> String {
    match bytes {
        [0, rest @ ..] if !rest.is_empty() => hex::encode(rest),
        b => hex::encode(b),
    }
}

/// The rustls provider: ring, ECDHE-ECDSA suites only.
fn provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::ring::{cipher_suite as cs, default_provider};
    rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..default_provider()
    }
}

/// The server key, in the token.
#[derive(Debug)]
pub struct TokenKey {
    token: Arc<Token>,
    label: String,
}

impl rustls::sign::SigningKey for TokenKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| {
                Box::new(TokenTlsSigner {
                    token: self.token.clone(),
                    label: self.label.clone(),
                }) as Box<dyn rustls::sign::Signer>
            })
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        rustls::SignatureAlgorithm::ECDSA
    }
}

#[derive(Debug)]
struct TokenTlsSigner {
    token: Arc<Token>,
    label: String,
}

impl rustls::sign::Signer for TokenTlsSigner {
    fn sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, rustls::Error> {
        // C_Sign may wait for a pooled session: not on an async worker's time.
        let sign = || self.token.sign(&self.label, message);
        let signed = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(sign)
            }
            _ => sign(),
        };
        signed.map_err(|e| {
            tracing::warn!(error = %e, "TLS handshake signature failed in the token");
            rustls::Error::General(format!("token: {}", e.code()))
        })
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

/// WebPKI client verification against the internal CA, then the revocation
/// registry.
#[derive(Debug)]
struct ClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Arc<Revoked>,
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let serial = x509_cert::Certificate::from_der(end_entity)
            .map(|c| serial_hex(c.tbs_certificate.serial_number.as_bytes()))
            .map_err(|_| {
                rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
            })?;
        if self.revoked.contains(&serial) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The TLS configuration of the API port.
pub fn tls_config(
    token: &Arc<Token>,
    key_label: &str,
    server_der: Vec<u8>,
    internal_der: Vec<u8>,
    revoked: Arc<Revoked>,
) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(provider());
    let tls = |e: String| Error::Config {
        path: "server".into(),
        reason: format!("TLS set-up: {e}"),
    };
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(internal_der.clone()))
        .map_err(|e| tls(e.to_string()))?;
    let webpki = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| tls(e.to_string()))?;
    let verifier = Arc::new(ClientVerifier {
        inner: webpki,
        revoked,
    });
    let key = Arc::new(TokenKey {
        token: token.clone(),
        label: key_label.to_owned(),
    });
    let certified = rustls::sign::CertifiedKey::new(
        vec![
            CertificateDer::from(server_der),
            CertificateDer::from(internal_der),
        ],
        key,
    );
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(FixedCert(Arc::new(certified))));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The one server certificate, whatever the client asks for.
#[derive(Debug)]
struct FixedCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedCert {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Why a handshake failed, for the refused-handshake counter and the log.
fn refusal_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as R};
    match e.get_ref().and_then(|i| i.downcast_ref::<R>()) {
        Some(R::NoCertificatesPresented) => "no_certificate",
        Some(R::InvalidCertificate(C::Revoked)) => "revoked",
        Some(R::InvalidCertificate(C::Expired | C::NotValidYet)) => "expired",
        // Another CA, a self-signed or CA certificate, a bad signature.
        Some(R::InvalidCertificate(_)) => "untrusted",
        Some(R::PeerIncompatible(_) | R::NoApplicationProtocol) => "incompatible",
        Some(_) => "protocol",
        None => "io",
    }
}

/// Serve `router` on `listener` with TLS until `shutdown` resolves, then
/// let in-flight requests finish (up to `shutdown_grace_ms`).
pub async fn serve_api(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    limits: &Limits,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let handshake_timeout = Duration::from_millis(limits.handshake_timeout_ms);
    let header_timeout = Duration::from_millis(limits.header_timeout_ms);
    tokio::pin!(shutdown);
    loop {
        // Wait for a free slot first: over the limit, connections queue in
        // the kernel backlog instead of costing us memory.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let metrics = metrics.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    let reason = refusal_reason(&e);
                    metrics.handshake_refused(reason);
                    // Certificate refusals matter to an operator; dropped
                    // connections and scanners only fill the log.
                    if matches!(reason, "io" | "protocol" | "incompatible") {
                        tracing::debug!(%peer, reason, error = %e, "TLS handshake failed");
                    } else {
                        tracing::info!(%peer, reason, error = %e, "TLS handshake refused");
                    }
                    return;
                }
                Err(_) => {
                    metrics.handshake_refused("timeout");
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| Identity::from_cert(c));
            let Some(identity) = identity else {
                metrics.handshake_refused("bad_certificate");
                return;
            };
            metrics.connections.fetch_add(1, Ordering::Relaxed);
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(identity.clone());
                    router.clone().oneshot(req.map(axum::body::Body::new))
                },
            );
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let conn = http.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            metrics.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    let grace = Duration::from_millis(limits.shutdown_grace_ms);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight API requests still running after the grace period; closing");
    }
}
