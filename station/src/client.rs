//! The mTLS client of the appliance's station API.

use std::sync::Arc;
use std::time::Duration;

use der::{DecodePem as _, Encode as _};
use p256::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};
use x509_cert::request::CertReq;
use x509_cert::Certificate;
use zeroize::Zeroizing;

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

/// Length in bytes of a PSK or a device AES key.
pub const SECRET_LEN: usize = 32;

/// Largest answer holding a secret that is read (the appliance's own
/// limit): the body is read into one buffer of this size, never grown, so
/// that no reallocation leaves a copy of the secret behind.
const MAX_SECRET_ANSWER: usize = 64 * 1024;

/// A key pair the appliance generated for a module without a secure
/// element (`POST /v1/devices/{serial}/keypair`), with the certificate it
/// issued for it. The private key is wiped from memory on drop, and
/// `Debug` does not show it.
#[derive(Clone)]
pub struct Keypair {
    /// The private key, PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub private_key_pem: Zeroizing<String>,
    /// Certificate serial number, lowercase hex without colons.
    pub serial_number: String,
    /// The device certificate, PEM.
    pub certificate_pem: String,
    /// The chain, PEM: intermediate then root.
    pub chain_pem: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
}

impl std::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keypair")
            .field("private_key_pem", &"<redacted>")
            .field("serial_number", &self.serial_number)
            .field("certificate_pem", &self.certificate_pem)
            .field("chain_pem", &self.chain_pem)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// A JSON string holding a secret, copied straight from the answer buffer
/// into a zeroizing string of exactly its length.
struct SecretString(Zeroizing<String>);

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SecretString;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }

            // Also what `visit_borrowed_str` (a string without escapes,
            // borrowed from the answer buffer) forwards to.
            fn visit_str<E: serde::de::Error>(
                self,
                v: &str,
            ) -> std::result::Result<SecretString, E> {
                let mut out = Zeroizing::new(String::with_capacity(v.len()));
                out.push_str(v);
                Ok(SecretString(out))
            }

            fn visit_string<E: serde::de::Error>(
                self,
                v: String,
            ) -> std::result::Result<SecretString, E> {
                Ok(SecretString(Zeroizing::new(v)))
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// `{"psk": "<64 hex>"}`.
#[derive(Deserialize)]
struct WirePsk {
    psk: SecretString,
}

/// `{"purpose": "...", "key": "<64 hex>"}`.
#[derive(Deserialize)]
struct WireDeviceKey {
    purpose: String,
    key: SecretString,
}

/// `{"private_key", "serial_number", "certificate", "chain", "not_after"}`.
#[derive(Deserialize)]
struct WireKeypair {
    private_key: SecretString,
    serial_number: String,
    certificate: String,
    chain: String,
    not_after: String,
}

/// What to send with a request.
#[derive(Clone, Copy)]
enum Payload<'a> {
    /// No body at all (GET).
    None,
    /// An empty body, `Content-Length: 0` (a POST without parameters).
    Empty,
    /// A JSON body.
    Json(&'a Value),
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
        let (status, text) = self.send(self.agent.post(&url), Payload::Json(&body))?;
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
        self.json(self.agent.get(&url), Payload::None)
    }

    /// Attaches a provisioning record: `POST /v1/devices/{serial}/record`.
    /// The record is validated locally first.
    pub fn record(&self, module_serial: &str, record: &ProvisioningRecord) -> Result<Value> {
        check_serial(module_serial)?;
        record.validate()?;
        let url = format!("{}/v1/devices/{module_serial}/record", self.base);
        let body = serde_json::to_value(record).map_err(|e| Error::InvalidRecord(e.to_string()))?;
        self.json(self.agent.post(&url), Payload::Json(&body))
    }

    /// An officer request (`kmsctl --url`): `POST /v1/admin` with the JSON
    /// body, the JSON answer.
    pub fn admin(&self, body: &Value) -> Result<Value> {
        let url = format!("{}/v1/admin", self.base);
        self.json(self.agent.post(&url), Payload::Json(body))
    }

    /// The appliance's health: `GET /healthz`.
    pub fn health(&self) -> Result<Value> {
        let url = format!("{}/healthz", self.base);
        self.json(self.agent.get(&url), Payload::None)
    }

    /// The device's pre-shared key, 32 bytes: `POST
    /// /v1/devices/{serial}/psk`.
    ///
    /// The appliance hands a PSK out once: a second request is refused
    /// (`psk_already_issued`) unless an officer allowed a rotation, so the
    /// caller must have somewhere to put it before asking. The station must
    /// have provisioned the device (else `device_not_found`).
    pub fn psk(&self, module_serial: &str) -> Result<Zeroizing<Vec<u8>>> {
        check_serial(module_serial)?;
        let url = format!("{}/v1/devices/{module_serial}/psk", self.base);
        let body = self.send_secret(self.agent.post(&url), Payload::Empty)?;
        parse_psk(&body)
    }

    /// One of the device's AES-256 keys, 32 bytes: `POST
    /// /v1/devices/{serial}/keys/{purpose}`; the purposes are those of the
    /// device's certificate profile (`aes_keys`, e.g. `data`).
    ///
    /// Handed out once, like [`Client::psk`] (`secret_already_issued`); an
    /// unknown purpose is refused with `secret_purpose_unknown`.
    pub fn device_key(&self, module_serial: &str, purpose: &str) -> Result<Zeroizing<Vec<u8>>> {
        check_serial(module_serial)?;
        check_purpose(purpose)?;
        let url = format!("{}/v1/devices/{module_serial}/keys/{purpose}", self.base);
        let body = self.send_secret(self.agent.post(&url), Payload::Empty)?;
        parse_device_key(&body, purpose)
    }

    /// A key pair the appliance generates for a module without a secure
    /// element, certified for `hw_uuid`: `POST /v1/devices/{serial}/keypair`.
    ///
    /// Handed out once (`secret_already_issued`). The answer is checked: the
    /// private key is a PKCS#8 P-256 key, the certificate certifies its
    /// public key and has the announced serial number, the chain is not
    /// empty.
    pub fn keypair(&self, module_serial: &str, hw_uuid: &str) -> Result<Keypair> {
        check_serial(module_serial)?;
        let url = format!("{}/v1/devices/{module_serial}/keypair", self.base);
        let req = json!({ "hw_uuid": hw_uuid });
        let body = self.send_secret(self.agent.post(&url), Payload::Json(&req))?;
        parse_keypair(&body)
    }

    fn json(&self, req: ureq::Request, body: Payload<'_>) -> Result<Value> {
        let (_, text) = self.send(req, body)?;
        serde_json::from_str(&text).map_err(|e| Error::InvalidResponse(format!("not JSON: {e}")))
    }

    /// Sends once (never retried here: the caller decides) and returns the
    /// 2xx status and body, or the refusal.
    fn send(&self, req: ureq::Request, body: Payload<'_>) -> Result<(u16, String)> {
        let resp = self.call(req, body)?;
        let status = resp.status();
        let text = resp
            .into_string()
            .map_err(|e| Error::Transport(format!("reading the answer: {e}")))?;
        Ok((status, text))
    }

    /// Like [`Client::send`] for an answer holding a secret: the body goes
    /// into one zeroizing buffer of [`MAX_SECRET_ANSWER`] bytes, allocated
    /// once.
    fn send_secret(&self, req: ureq::Request, body: Payload<'_>) -> Result<Zeroizing<Vec<u8>>> {
        let resp = self.call(req, body)?;
        read_secret_body(&mut resp.into_reader())
    }

    /// Sends once; the 2xx answer, or the refusal.
    fn call(&self, req: ureq::Request, body: Payload<'_>) -> Result<ureq::Response> {
        let req = req.set("Accept", "application/json");
        let sent = match body {
            Payload::Json(b) => req.send_json(b),
            Payload::Empty => req.send_bytes(&[]),
            Payload::None => req.call(),
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
        if !(200..300).contains(&status) {
            let text = resp
                .into_string()
                .map_err(|e| Error::Transport(format!("reading the answer: {e}")))?;
            return Err(parse_error(status, &text));
        }
        Ok(resp)
    }
}

/// Reads a whole answer into a zeroizing buffer allocated once; an answer
/// over [`MAX_SECRET_ANSWER`] bytes is refused.
fn read_secret_body(reader: &mut dyn std::io::Read) -> Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(vec![0u8; MAX_SECRET_ANSWER + 1]);
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Transport(format!("reading the answer: {e}"))),
        }
    }
    if n > MAX_SECRET_ANSWER {
        return Err(Error::InvalidResponse(format!(
            "the answer is larger than {MAX_SECRET_ANSWER} bytes"
        )));
    }
    // Shortens in place: the spare capacity is wiped on drop too.
    buf.truncate(n);
    Ok(buf)
}

/// Checks a device key purpose before it goes into a URL path: 1–32
/// characters of `[a-z0-9_-]`, and neither `psk` nor `keypair`, which have
/// their own requests.
pub(crate) fn check_purpose(purpose: &str) -> Result<()> {
    let ok = (1..=32).contains(&purpose.len())
        && purpose
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && !matches!(purpose, "psk" | "keypair");
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidPurpose(purpose.chars().take(40).collect()))
    }
}

/// Parses the JSON answer holding a secret. The error never quotes the
/// answer (serde_json quotes an unexpected string, which could be the
/// secret): only a missing or repeated field is named, else the position.
fn parse_secret_json<'a, T: Deserialize<'a>>(what: &str, body: &'a [u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| {
        let text = e.to_string();
        let detail = if text.starts_with("missing field") || text.starts_with("duplicate field") {
            text
        } else {
            let kind = match e.classify() {
                serde_json::error::Category::Io => "read error",
                serde_json::error::Category::Syntax => "not JSON",
                serde_json::error::Category::Data => "not the documented shape",
                serde_json::error::Category::Eof => "cut short",
            };
            format!("{kind} at line {} column {}", e.line(), e.column())
        };
        Error::InvalidResponse(format!("{what}: {detail}"))
    })
}

/// 64 lowercase hex digits into [`SECRET_LEN`] bytes. The error says what
/// is wrong, never what the value is.
fn decode_secret_hex(what: &str, hex: &str) -> Result<Zeroizing<Vec<u8>>> {
    if hex.len() != 2 * SECRET_LEN {
        return Err(Error::InvalidResponse(format!(
            "{what} is not {} hex digits ({} bytes)",
            2 * SECRET_LEN,
            hex.len()
        )));
    }
    if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(Error::InvalidResponse(format!(
            "{what} is not lowercase hex"
        )));
    }
    let mut out = Zeroizing::new(vec![0u8; SECRET_LEN]);
    hex::decode_to_slice(hex, &mut out[..])
        .map_err(|_| Error::Unreachable("hex checked before decoding"))?;
    Ok(out)
}

/// The body of a PSK answer.
fn parse_psk(body: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let wire: WirePsk = parse_secret_json("PSK answer", body)?;
    decode_secret_hex("psk", &wire.psk.0)
}

/// The body of a device key answer, which must name the purpose asked for.
fn parse_device_key(body: &[u8], purpose: &str) -> Result<Zeroizing<Vec<u8>>> {
    let wire: WireDeviceKey = parse_secret_json("key answer", body)?;
    if wire.purpose != purpose {
        return Err(Error::InvalidResponse(format!(
            "asked for the {purpose:?} key, got purpose {:?}",
            wire.purpose.chars().take(40).collect::<String>()
        )));
    }
    decode_secret_hex("key", &wire.key.0)
}

/// The body of a key pair answer, checked (see [`Client::keypair`]).
fn parse_keypair(body: &[u8]) -> Result<Keypair> {
    let wire: WireKeypair = parse_secret_json("key pair answer", body)?;
    let key = p256::SecretKey::from_pkcs8_pem(wire.private_key.0.trim()).map_err(|e| {
        Error::InvalidResponse(format!("private_key is not a PKCS#8 P-256 key PEM: {e}"))
    })?;
    let cert = check_issued(&wire.certificate, &wire.serial_number, &wire.chain)?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|_| Error::Unreachable("re-encoding a decoded public key failed"))?;
    let certified = p256::PublicKey::from_public_key_der(&spki).map_err(|e| {
        Error::InvalidResponse(format!("the certificate's key is not a P-256 key: {e}"))
    })?;
    if certified != key.public_key() {
        return Err(Error::InvalidResponse(
            "the certificate does not certify the private key's public key".into(),
        ));
    }
    Ok(Keypair {
        private_key_pem: wire.private_key.0,
        serial_number: wire.serial_number,
        certificate_pem: wire.certificate,
        chain_pem: wire.chain,
        not_after: wire.not_after,
    })
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
    let cert = check_issued(&got.certificate, &got.serial_number, &got.chain)?;
    if let Ok(csr) = CertReq::from_pem(csr_pem.trim().as_bytes()) {
        let ours = csr.info.public_key.to_der();
        let theirs = cert.tbs_certificate.subject_public_key_info.to_der();
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
    Ok(())
}

/// Checks an issued certificate: it parses, has the announced serial
/// number, and the chain holds at least one certificate. The certificate.
fn check_issued(certificate: &str, serial_number: &str, chain: &str) -> Result<Certificate> {
    let cert = Certificate::from_pem(certificate.trim().as_bytes())
        .map_err(|e| Error::InvalidResponse(format!("certificate is not PEM X.509: {e}")))?;
    let strip = |s: &str| s.trim_start_matches('0').to_ascii_lowercase();
    let in_cert = hex::encode(cert.tbs_certificate.serial_number.as_bytes());
    if strip(&in_cert) != strip(serial_number) {
        return Err(Error::InvalidResponse(format!(
            "serial_number {serial_number} does not match the certificate's {in_cert}"
        )));
    }
    let chain = CertificateDer::pem_slice_iter(chain.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::InvalidResponse(format!("chain is not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(Error::InvalidResponse("chain holds no certificate".into()));
    }
    Ok(cert)
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

    const HEX: &str = "00112233445566778899aabbccddeeff0123456789abcdef0f1e2d3c4b5a6978";

    /// The message of an `invalid_response`, after checking the code.
    fn invalid(r: Result<impl std::fmt::Debug>) -> String {
        match r {
            Err(e) => {
                assert_eq!(e.code(), "invalid_response", "{e}");
                e.to_string()
            }
            Ok(v) => panic!("accepted: {v:?}"),
        }
    }

    #[test]
    fn psk_answers() {
        let psk = parse_psk(format!(r#"{{"psk":"{HEX}"}}"#).as_bytes()).unwrap();
        assert_eq!(psk.as_slice(), hex::decode(HEX).unwrap().as_slice());
        // Extra fields are tolerated.
        let psk = parse_psk(format!(r#"{{"x":1,"psk":"{HEX}"}}"#).as_bytes()).unwrap();
        assert_eq!(psk.len(), SECRET_LEN);

        let bad = [
            ("short", format!(r#"{{"psk":"{}"}}"#, &HEX[..62])),
            ("long", format!(r#"{{"psk":"{HEX}00"}}"#)),
            ("non-hex", format!(r#"{{"psk":"{}zz"}}"#, &HEX[..62])),
            (
                "uppercase",
                format!(r#"{{"psk":"{}"}}"#, HEX.to_ascii_uppercase()),
            ),
            ("spaces", format!(r#"{{"psk":" {} "}}"#, &HEX[..62])),
            ("missing", format!(r#"{{"key":"{HEX}"}}"#)),
            ("duplicate", format!(r#"{{"psk":"{HEX}","psk":"{HEX}"}}"#)),
            ("number", r#"{"psk":1234}"#.to_owned()),
            ("a bare string", format!(r#""{HEX}""#)),
            ("not JSON", format!("psk={HEX}")),
            ("cut short", format!(r#"{{"psk":"{HEX}"#)),
            ("empty", String::new()),
        ];
        for (name, body) in bad {
            let msg = invalid(parse_psk(body.as_bytes()));
            assert!(
                !msg.contains(&HEX[..16]),
                "{name}: the secret is quoted: {msg}"
            );
            assert!(
                !msg.to_ascii_lowercase().contains(&HEX[..16]),
                "{name}: {msg}"
            );
        }
        assert!(invalid(parse_psk(br#"{"key":"00"}"#)).contains("missing field `psk`"));
        assert!(invalid(parse_psk(br#"{"psk":"0011"}"#)).contains("not 64 hex digits"));
        assert!(invalid(parse_psk(
            format!(r#"{{"psk":"{}"}}"#, "g".repeat(64)).as_bytes()
        ))
        .contains("not lowercase hex"));
    }

    #[test]
    fn device_key_answers() {
        let body = format!(r#"{{"purpose":"data","key":"{HEX}"}}"#);
        let key = parse_device_key(body.as_bytes(), "data").unwrap();
        assert_eq!(hex::encode(key.as_slice()), HEX);
        let msg = invalid(parse_device_key(body.as_bytes(), "kek"));
        assert!(msg.contains("got purpose \"data\""), "{msg}");
        for body in [
            r#"{"purpose":"data"}"#.to_owned(),
            format!(r#"{{"key":"{HEX}"}}"#),
            format!(r#"{{"purpose":"data","key":"{}"}}"#, &HEX[..63]),
            format!(r#"{{"purpose":"data","key":"{}x"}}"#, &HEX[..63]),
        ] {
            let msg = invalid(parse_device_key(body.as_bytes(), "data"));
            assert!(!msg.contains(&HEX[..16]), "{msg}");
        }
    }

    #[test]
    fn purposes_are_checked_before_the_url() {
        for ok in ["data", "kek", "a", "fw-sign_2", &"x".repeat(32)] {
            check_purpose(ok).unwrap();
        }
        for bad in [
            "",
            "psk",
            "keypair",
            "Data",
            "../x",
            "a/b",
            "a b",
            "é",
            &"x".repeat(33),
        ] {
            assert_eq!(
                check_purpose(bad).unwrap_err().code(),
                "purpose_invalid",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn secret_answers_are_read_whole_and_bounded() {
        let body = read_secret_body(&mut &b"{\"psk\":\"00\"}"[..]).unwrap();
        assert_eq!(body.as_slice(), b"{\"psk\":\"00\"}");
        let exact = vec![b' '; MAX_SECRET_ANSWER];
        assert_eq!(
            read_secret_body(&mut &exact[..]).unwrap().len(),
            MAX_SECRET_ANSWER
        );
        let big = vec![b' '; MAX_SECRET_ANSWER + 1];
        invalid(read_secret_body(&mut &big[..]));
    }

    /// A P-256 key (PKCS#8 PEM) and a self-signed certificate for it with
    /// serial number 0x0badc0de (PEM).
    fn key_and_cert() -> (String, String) {
        use p256::pkcs8::{EncodePrivateKey as _, LineEnding};
        use std::str::FromStr as _;
        use x509_cert::builder::{Builder as _, CertificateBuilder, Profile};
        let key = p256::SecretKey::random(&mut rand_core::OsRng);
        let signer = p256::ecdsa::SigningKey::from(&key);
        let spki =
            x509_cert::spki::SubjectPublicKeyInfoOwned::from_key(*signer.verifying_key()).unwrap();
        let cert = CertificateBuilder::new(
            Profile::Root,
            x509_cert::serial_number::SerialNumber::new(&[0x0b, 0xad, 0xc0, 0xde]).unwrap(),
            x509_cert::time::Validity::from_now(Duration::from_secs(3600)).unwrap(),
            x509_cert::name::Name::from_str("CN=VBUS-CPU-2412-000901").unwrap(),
            spki,
            &signer,
        )
        .unwrap()
        .build::<p256::ecdsa::DerSignature>()
        .unwrap();
        let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        (pem, der::EncodePem::to_pem(&cert, LineEnding::LF).unwrap())
    }

    fn keypair_body(key: &str, serial: &str, cert: &str, chain: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "private_key": key,
            "serial_number": serial,
            "certificate": cert,
            "chain": chain,
            "not_after": "2044-12-01T00:00:00Z",
        }))
        .unwrap()
    }

    #[test]
    fn keypair_answers() {
        let (key, cert) = key_and_cert();
        let kp = parse_keypair(&keypair_body(&key, "0badc0de", &cert, &cert)).unwrap();
        assert_eq!(kp.private_key_pem.as_str(), key);
        assert_eq!(kp.serial_number, "0badc0de");
        assert_eq!(kp.certificate_pem, cert);
        assert_eq!(kp.not_after, "2044-12-01T00:00:00Z");
        // The key never shows in Debug.
        let shown = format!("{kp:?} {kp:#?}");
        let key_line = key.lines().nth(1).unwrap();
        assert!(!shown.contains(key_line), "{shown}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(
            shown.contains("<redacted>") && shown.contains("0badc0de"),
            "{shown}"
        );

        let (other_key, other_cert) = key_and_cert();
        let msg = invalid(parse_keypair(&keypair_body(
            &other_key, "0badc0de", &cert, &cert,
        )));
        assert!(msg.contains("does not certify the private key"), "{msg}");
        invalid(parse_keypair(&keypair_body(&key, "0badc0df", &cert, &cert)));
        invalid(parse_keypair(&keypair_body(
            &key,
            "0badc0de",
            &other_cert,
            &cert,
        )));
        invalid(parse_keypair(&keypair_body(&key, "0badc0de", &cert, "")));
        invalid(parse_keypair(&keypair_body(
            &key,
            "0badc0de",
            "not a cert",
            &cert,
        )));
        let msg = invalid(parse_keypair(&keypair_body(
            &key.replace("PRIVATE KEY", "SOMETHING ELSE"),
            "0badc0de",
            &cert,
            &cert,
        )));
        assert!(!msg.contains(key_line), "{msg}");
        let mut v: Value =
            serde_json::from_slice(&keypair_body(&key, "0badc0de", &cert, &cert)).unwrap();
        v.as_object_mut().unwrap().remove("certificate");
        let msg = invalid(parse_keypair(&serde_json::to_vec(&v).unwrap()));
        assert!(msg.contains("missing field `certificate`"), "{msg}");
        let msg = invalid(parse_keypair(format!("{:?}", key).as_bytes()));
        assert!(!msg.contains(key_line), "{msg}");
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
