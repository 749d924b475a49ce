//! The mTLS client of the appliance's station API.

use std::sync::Arc;
use std::time::Duration;

use der::{DecodePem as _, Encode as _};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use x509_cert::request::CertReq;
use x509_cert::Certificate;

use crate::credential::Credential;
use crate::error::{Error, Result};
use crate::fsutil::check_serial;
use crate::record::ProvisioningRecord;

/// Default TCP (and TLS handshake) connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default timeout for reading an answer (issuance waits for the token).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Idle keep-alive connections kept per client (and its clones): enough
/// for every batch worker to reuse its own.
const MAX_IDLE_CONNECTIONS: usize = 64;

/// Client timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting (TCP).
    pub connect: Duration,
    /// Reading the answer; also used for writing the request.
    pub read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: DEFAULT_CONNECT_TIMEOUT,
            read: DEFAULT_READ_TIMEOUT,
        }
    }
}

/// A certificate the appliance issued (or, for a repeated request, the one
/// it had issued before).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolled {
    /// Certificate serial number, lowercase hex without colons.
    pub serial_number: String,
    /// The device certificate, PEM.
    pub certificate: String,
    /// The chain, PEM: intermediate then root.
    pub chain: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// `true` when issued by this request, `false` when the appliance
    /// returned the certificate it had stored for the same device and key.
    pub newly_issued: bool,
}

/// What the wire may carry; `newly_issued` falls back to the status (201).
#[derive(Deserialize)]
struct WireEnrolled {
    serial_number: String,
    certificate: String,
    chain: String,
    not_after: String,
    #[serde(default)]
    newly_issued: Option<bool>,
}

/// A client of the appliance's mTLS API, authenticated by a station
/// certificate and trusting only the appliance's internal CA.
///
/// Cheap to clone: clones share one keep-alive connection pool, and the
/// client is `Send + Sync`, so batch workers share one.
#[derive(Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

impl Client {
    /// A client of the appliance at `base_url` (`https://host:port`), with
    /// the default timeouts.
    pub fn new(base_url: &str, cred: &Credential) -> Result<Client> {
        Client::with_timeouts(base_url, cred, Timeouts::default())
    }

    /// A client with the given timeouts.
    pub fn with_timeouts(base_url: &str, cred: &Credential, timeouts: Timeouts) -> Result<Client> {
        let base = base_url.trim_end_matches('/');
        if !base
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
            || base.len() <= 8
        {
            return Err(Error::InvalidUrl(base_url.to_owned()));
        }
        let agent = ureq::AgentBuilder::new()
            .tls_config(tls_config(cred)?)
            .timeout_connect(timeouts.connect)
            .timeout_read(timeouts.read)
            .timeout_write(timeouts.read)
            // An API answer is never a redirect; do not follow one with our
            // client certificate and request body.
            .redirects(0)
            // Batch workers each keep their connection alive.
            .max_idle_connections(MAX_IDLE_CONNECTIONS)
            .max_idle_connections_per_host(MAX_IDLE_CONNECTIONS)
            .user_agent(concat!("vbus-station/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client {
            base: base.to_owned(),
            agent,
        })
    }

    /// The base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Asks for a certificate for the device's key:
    /// `POST /v1/devices/{serial}/certificate`.
    ///
    /// Repeating the same request (same device, same key) is safe: the
    /// appliance returns the certificate it already issued
    /// (`newly_issued: false`) and never issues twice. The returned
    /// certificate is checked to certify the CSR's key.
    pub fn enroll(&self, module_serial: &str, hw_uuid: &str, csr_pem: &str) -> Result<Enrolled> {
        check_serial(module_serial)?;
        let url = format!("{}/v1/devices/{module_serial}/certificate", self.base);
        let body = json!({ "csr": csr_pem, "hw_uuid": hw_uuid });
        let (status, text) = self.send(self.agent.post(&url), Some(&body))?;
        let wire: WireEnrolled = serde_json::from_str(&text)
            .map_err(|e| Error::InvalidResponse(format!("enrolment answer: {e}")))?;
        let enrolled = Enrolled {
            serial_number: wire.serial_number,
            certificate: wire.certificate,
            chain: wire.chain,
            not_after: wire.not_after,
            newly_issued: wire.newly_issued.unwrap_or(status == 201),
        };
        check_enrolled(csr_pem, &enrolled)?;
        Ok(enrolled)
    }

    /// The device record: `GET /v1/devices/{serial}`.
    pub fn device(&self, module_serial: &str) -> Result<Value> {
        check_serial(module_serial)?;
        let url = format!("{}/v1/devices/{module_serial}", self.base);
        self.json(self.agent.get(&url), None)
    }

    /// Attaches a provisioning record: `POST /v1/devices/{serial}/record`.
    /// The record is validated locally first.
    pub fn record(&self, module_serial: &str, record: &ProvisioningRecord) -> Result<Value> {
        check_serial(module_serial)?;
        record.validate()?;
        let url = format!("{}/v1/devices/{module_serial}/record", self.base);
        let body = serde_json::to_value(record).map_err(|e| Error::InvalidRecord(e.to_string()))?;
        self.json(self.agent.post(&url), Some(&body))
    }

    /// An officer request (`kmsctl --url`): `POST /v1/admin` with the JSON
    /// body, the JSON answer.
    pub fn admin(&self, body: &Value) -> Result<Value> {
        let url = format!("{}/v1/admin", self.base);
        self.json(self.agent.post(&url), Some(body))
    }

    /// The appliance's health: `GET /healthz`.
    pub fn health(&self) -> Result<Value> {
        let url = format!("{}/healthz", self.base);
        self.json(self.agent.get(&url), None)
    }

    fn json(&self, req: ureq::Request, body: Option<&Value>) -> Result<Value> {
        let (_, text) = self.send(req, body)?;
        serde_json::from_str(&text).map_err(|e| Error::InvalidResponse(format!("not JSON: {e}")))
    }

    /// Sends once (never retried here: the caller decides) and returns the
    /// 2xx status and body, or the refusal.
    fn send(&self, req: ureq::Request, body: Option<&Value>) -> Result<(u16, String)> {
        let req = req.set("Accept", "application/json");
        let sent = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        let resp = match sent {
            Ok(resp) => resp,
            Err(ureq::Error::Status(status, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                return Err(parse_error(status, &text));
            }
            Err(ureq::Error::Transport(t)) => return Err(transport(&t)),
        };
        let status = resp.status();
        let text = resp
            .into_string()
            .map_err(|e| Error::Transport(format!("reading the answer: {e}")))?;
        if !(200..300).contains(&status) {
            return Err(parse_error(status, &text));
        }
        Ok((status, text))
    }
}

/// A transport error, with a hint where the cause is a known set-up mistake.
fn transport(t: &ureq::Transport) -> Error {
    let text = t.to_string();
    let hint = if text.contains("UnknownIssuer") {
        " (the server's certificate does not chain to the credential's ca.pem)"
    } else if text.contains("NotValidForName") {
        " (the server's certificate does not name the host in --url)"
    } else if text.contains("received fatal alert")
        && [
            "UnknownCA",
            "BadCertificate",
            "CertificateRequired",
            "CertificateUnknown",
            "CertificateExpired",
            "CertificateRevoked",
            "AccessDenied",
        ]
        .iter()
        .any(|a| text.contains(a))
    {
        " (the appliance did not accept the station certificate)"
    } else {
        ""
    };
    Error::Transport(format!("{text}{hint}"))
}

/// The rustls client configuration: ring provider, TLS 1.3 and 1.2, only
/// `ca.pem` trusted, the station certificate presented.
fn tls_config(cred: &Credential) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cred.ca_certs()? {
        roots.add(ca).map_err(|e| Error::Credential {
            path: "ca.pem".into(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(cred.certs()?, cred.key()?)
        .map_err(|e| Error::Tls(format!("station certificate and key: {e}")))?;
    Ok(Arc::new(config))
}

/// Error body of the outside contract.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorInner,
}

#[derive(Deserialize)]
struct ErrorInner {
    code: String,
    message: String,
    #[serde(default)]
    retry_after: Option<String>,
}

/// Longest part of a non-conforming body quoted in the message.
const SNIPPET: usize = 200;

/// Maps an HTTP error answer to [`Error::Refused`]: the documented
/// `{"error": {"code", "message", "retry_after"?}}` body keeps its code;
/// anything else gets code `http_<status>` and the start of the body as
/// its message.
pub fn parse_error(status: u16, body: &str) -> Error {
    if let Ok(ErrorBody { error }) = serde_json::from_str::<ErrorBody>(body) {
        if is_snake_code(&error.code) {
            return Error::Refused {
                status,
                code: error.code,
                message: error.message,
                retry_after: error.retry_after,
            };
        }
    }
    let snippet: String = body
        .trim()
        .chars()
        .take(SNIPPET)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let message = if snippet.is_empty() {
        "empty body, no error code".to_owned()
    } else {
        snippet
    };
    Error::Refused {
        status,
        code: format!("http_{status}"),
        message,
        retry_after: None,
    }
}

/// `[a-z][a-z0-9_]*`, at most 64 characters.
fn is_snake_code(code: &str) -> bool {
    code.len() <= 64
        && code.starts_with(|c: char| c.is_ascii_lowercase())
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Checks that what came back certifies what we asked for: the certificate
/// parses, holds the CSR's public key and the announced serial number, and
/// the chain holds at least one certificate. A CSR we cannot parse was
/// judged by the appliance; the key check is then skipped.
fn check_enrolled(csr_pem: &str, got: &Enrolled) -> Result<()> {
    let cert = Certificate::from_pem(got.certificate.trim().as_bytes())
        .map_err(|e| Error::InvalidResponse(format!("certificate is not PEM X.509: {e}")))?;
    let tbs = &cert.tbs_certificate;
    if let Ok(csr) = CertReq::from_pem(csr_pem.trim().as_bytes()) {
        let ours = csr.info.public_key.to_der();
        let theirs = tbs.subject_public_key_info.to_der();
        match (ours, theirs) {
            (Ok(a), Ok(b)) if a == b => {}
            (Ok(_), Ok(_)) => {
                return Err(Error::InvalidResponse(
                    "the certificate does not certify the CSR's public key".into(),
                ))
            }
            _ => {
                return Err(Error::Unreachable(
                    "re-encoding a decoded public key failed",
                ))
            }
        }
    }
    let strip = |s: &str| s.trim_start_matches('0').to_ascii_lowercase();
    let in_cert = hex::encode(tbs.serial_number.as_bytes());
    if strip(&in_cert) != strip(&got.serial_number) {
        return Err(Error::InvalidResponse(format!(
            "serial_number {} does not match the certificate's {in_cert}",
            got.serial_number
        )));
    }
    let chain = CertificateDer::pem_slice_iter(got.chain.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::InvalidResponse(format!("chain is not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(Error::InvalidResponse("chain holds no certificate".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_map_to_codes() {
        struct Case {
            name: &'static str,
            status: u16,
            body: &'static str,
            code: &'static str,
            message: &'static str,
            retry_after: Option<&'static str>,
        }
        let cases = [
            Case {
                name: "documented shape",
                status: 409,
                body: r#"{"error":{"code":"device_already_certified","message":"module X already has a certificate"}}"#,
                code: "device_already_certified",
                message: "module X already has a certificate",
                retry_after: None,
            },
            Case {
                name: "quota with retry_after",
                status: 429,
                body: r#"{"error":{"code":"quota_exceeded","message":"slow down","retry_after":"2026-01-02T03:04:05Z"}}"#,
                code: "quota_exceeded",
                message: "slow down",
                retry_after: Some("2026-01-02T03:04:05Z"),
            },
            Case {
                name: "extra fields are tolerated",
                status: 403,
                body: r#"{"error":{"code":"forbidden","message":"no","detail":1},"x":2}"#,
                code: "forbidden",
                message: "no",
                retry_after: None,
            },
            Case {
                name: "HTML from a proxy",
                status: 502,
                body: "<html><body>Bad Gateway</body></html>",
                code: "http_502",
                message: "<html><body>Bad Gateway</body></html>",
                retry_after: None,
            },
            Case {
                name: "empty body",
                status: 500,
                body: "",
                code: "http_500",
                message: "empty body, no error code",
                retry_after: None,
            },
            Case {
                name: "JSON without error object",
                status: 400,
                body: r#"{"code":"bad"}"#,
                code: "http_400",
                message: r#"{"code":"bad"}"#,
                retry_after: None,
            },
            Case {
                name: "error without message",
                status: 400,
                body: r#"{"error":{"code":"bad"}}"#,
                code: "http_400",
                message: r#"{"error":{"code":"bad"}}"#,
                retry_after: None,
            },
            Case {
                name: "code not snake_case",
                status: 400,
                body: r#"{"error":{"code":"Bad Code","message":"m"}}"#,
                code: "http_400",
                message: r#"{"error":{"code":"Bad Code","message":"m"}}"#,
                retry_after: None,
            },
            Case {
                name: "control characters are blanked",
                status: 503,
                body: "down\nfor\tmaintenance\n",
                code: "http_503",
                message: "down for maintenance",
                retry_after: None,
            },
        ];
        for c in cases {
            match parse_error(c.status, c.body) {
                Error::Refused {
                    status,
                    code,
                    message,
                    retry_after,
                } => {
                    assert_eq!(status, c.status, "{}", c.name);
                    assert_eq!(code, c.code, "{}", c.name);
                    assert_eq!(message, c.message, "{}", c.name);
                    assert_eq!(retry_after.as_deref(), c.retry_after, "{}", c.name);
                }
                other => panic!("{}: {other:?}", c.name),
            }
        }
    }

    #[test]
    fn long_bodies_are_cut() {
        let body = "x".repeat(10_000);
        let e = parse_error(500, &body);
        assert_eq!(e.code(), "http_500");
        assert!(e.to_string().len() < 400, "{e}");
    }

    #[test]
    fn refused_error_keeps_the_server_code() {
        let e = parse_error(
            404,
            r#"{"error":{"code":"device_not_found","message":"no device"}}"#,
        );
        assert_eq!(e.code(), "device_not_found");
        assert!(e.to_string().contains("no device"));
    }
}
