//! mTLS credentials the internal CA issues: station and officer client
//! certificates, the appliance's own TLS server certificate, and the
//! registry that says which client certificates are revoked.
//!
//! Client keys are P-256. A station that can make its own key sends a CSR
//! (`station init`); otherwise the appliance generates a software key and
//! hands it out once (`key.pem`, 0600): a client credential leaves the
//! appliance by design. The server key lives in the token (label
//! `server.tls_key`, sensitive, never extractable) and signs handshakes
//! through it. Every issuance and revocation is an audit record carrying the
//! certificate (not a secret), so the registry can be rebuilt from the log.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use ca::{Basics, RcgenSigner, SubjectKey};
use der::Decode as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use store::{Store, Tree, Write};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::ceremony::{self, pem, read_cert, CaFiles};
use crate::config::Config;
use crate::error::{io, Error, Result};
use crate::token::{KeyClass, KeyPairKind, Token, TokenSigner};

/// Officer and station credential lifetime.
pub const CLIENT_DAYS: i64 = 730;
/// The server certificate's lifetime; it is renewed at start when less than
/// [`SERVER_RENEW_DAYS`] remain.
pub const SERVER_DAYS: i64 = 365;
/// Renew the server certificate this close to its end.
pub const SERVER_RENEW_DAYS: i64 = 30;
/// Audit operation of a credential issuance.
pub const ISSUE_OP: &str = "credential.issue";
/// Audit operation of a credential revocation.
/// (Revocations are `certificate.revoke` records now; old logs may hold
/// this one.)
pub const REVOKE_OP: &str = "credential.revoke";

/// A client role a credential is issued for (the certificate's OU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientRole {
    /// A provisioning station.
    Station,
    /// A security officer.
    Officer,
}

impl ClientRole {
    /// The OU and the name in records.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientRole::Station => "station",
            ClientRole::Officer => "officer",
        }
    }
}

/// One client certificate in the registry (`Tree::Clients`, by serial).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// Identity (CN).
    pub id: String,
    /// Role (OU).
    pub role: ClientRole,
    /// Certificate serial, lowercase hex.
    pub serial_number: String,
    /// SHA-256 of the certificate DER, hex.
    pub sha256: String,
    /// RFC 3339.
    pub not_after: String,
    /// RFC 3339.
    pub issued_at: String,
    /// Who issued it.
    pub issued_by: String,
    /// When it was revoked (RFC 3339), if it was.
    pub revoked_at: Option<String>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
}

/// A freshly issued client credential. The key, when the appliance made
/// it, is handed out once and zeroized on drop.
pub struct ClientCredential {
    /// The registry entry.
    pub record: ClientRecord,
    /// Certificate PEM.
    pub cert_pem: String,
    /// PKCS#8 PEM of the key the appliance generated (None for a CSR).
    pub key_pem: Option<Zeroizing<String>>,
    /// The internal CA PEM the client trusts the server by.
    pub ca_pem: String,
}

impl std::fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredential")
            .field("record", &self.record)
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// Serials of revoked client certificates, shared with the TLS verifier:
/// a revocation is refused at the next handshake.
#[derive(Debug, Default)]
pub struct Revoked(RwLock<HashSet<String>>);

impl Revoked {
    /// Whether the certificate with serial `serial_number` is revoked.
    pub fn contains(&self, serial_number: &str) -> bool {
        match self.0.read() {
            Ok(set) => set.contains(serial_number),
            // A poisoned lock fails closed.
            Err(_) => true,
        }
    }

    pub(crate) fn extend(&self, serials: impl IntoIterator<Item = String>) {
        match self.0.write() {
            Ok(mut set) => set.extend(serials),
            Err(poisoned) => poisoned.into_inner().extend(serials),
        }
    }

    /// The revoked serials in `store`.
    pub fn load(store: &dyn Store) -> Result<Arc<Self>> {
        let revoked = Arc::new(Self::default());
        revoked.extend(
            list(store)?
                .into_iter()
                .filter(|r| r.revoked_at.is_some())
                .map(|r| r.serial_number),
        );
        Ok(revoked)
    }
}

/// Identity rules: 1 to 64 characters of `A-Z a-z 0-9 - . _`.
pub fn check_id(id: &str) -> Result<()> {
    if !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "identity {id:?} must be 1 to 64 characters of A-Z a-z 0-9 - . _, not starting with ."
        )))
    }
}

fn now_s() -> Result<OffsetDateTime> {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .map_err(|_| Error::Unreachable("time"))
}

fn rfc3339(t: OffsetDateTime) -> String {
    crate::policy::rfc3339(t.unix_timestamp())
}

/// Validity and identifiers of a new certificate for `public_raw`.
pub(crate) fn basics(token: &Token, public_raw: &[u8], days: i64) -> Result<Basics> {
    let now = now_s()?;
    Ok(Basics {
        serial: token.random(ca::SERIAL_BYTES)?,
        not_before: now - ca::BACKDATE,
        not_after: now + Duration::days(days),
        subject_key_id: ca::key_identifier(public_raw),
    })
}

/// Sign `params` for the P-256 key `public_raw` with the internal CA.
fn sign_internal(
    cfg: &Config,
    token: &Arc<Token>,
    params: &rcgen::CertificateParams,
    public_raw: Vec<u8>,
) -> Result<Vec<u8>> {
    let internal_der = read_cert(&CaFiles::of(cfg).internal)?;
    let internal_key = TokenSigner::new(token.clone(), &cfg.ca.internal_key)?;
    let signer = RcgenSigner::new(&internal_key);
    let issuer_params = ca::issuer_params(&internal_der)?;
    let issuer = rcgen::Issuer::from_params(&issuer_params, &signer);
    let cert = params
        .signed_by(
            &SubjectKey::for_signer(ca::SignatureAlgorithm::EcdsaP256Sha256, public_raw),
            &issuer,
        )
        .map_err(|e| ceremony::rcgen_err(&signer, e))?;
    Ok(cert.der().to_vec())
}

/// Serial (lowercase hex, no leading zero byte) and notAfter of a DER certificate.
fn serial_and_expiry(der: &[u8]) -> Result<(String, OffsetDateTime)> {
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|e| Error::Ca(ca::Error::Encoding(e.to_string())))?;
    let tbs = &cert.tbs_certificate;
    let na = tbs.validity.not_after.to_unix_duration().as_secs();
    let not_after = OffsetDateTime::from_unix_timestamp(na as i64)
        .map_err(|_| Error::Unreachable("certificate time"))?;
    Ok((
        crate::server::serial_hex(tbs.serial_number.as_bytes()),
        not_after,
    ))
}

/// Who a new client credential is for.
#[derive(Clone, Copy, Debug)]
pub struct NewClient<'a> {
    /// Identity (CN).
    pub id: &'a str,
    /// Role (OU).
    pub role: ClientRole,
    /// Its CSR (PEM or DER), or `None` for a key made here.
    pub csr: Option<&'a [u8]>,
}

/// Issue a client credential for `id` in `role`: for the key in `csr`
/// (PEM or DER, P-256, proof of possession checked) or, without one, for a
/// software key generated here. Registered in `store` and audited.
pub fn issue_client(
    cfg: &Config,
    token: &Arc<Token>,
    log: &audit::Log,
    store: &dyn Store,
    actor: &str,
    client: &NewClient<'_>,
) -> Result<ClientCredential> {
    let NewClient { id, role, csr } = *client;
    check_id(id)?;
    if let Some(other) = list(store)?
        .into_iter()
        .find(|r| r.id == id && r.role != role)
    {
        return Err(Error::InvalidInput(format!(
            "{id} is already registered as {}; identities are unique across roles",
            other.role.as_str()
        )));
    }
    let (public_raw, key_pem) = match csr {
        Some(csr) => (ca::check_client_csr(csr)?.public_key_raw, None),
        None => {
            use p256::pkcs8::EncodePrivateKey;
            let secret = p256::SecretKey::random(&mut rand_core::OsRng);
            let key_pem = secret
                .to_pkcs8_pem(der::pem::LineEnding::LF)
                .map_err(|_| Error::Unreachable("PKCS#8 encoding"))?;
            (
                secret.public_key().to_sec1_bytes().to_vec(),
                Some(Zeroizing::new(key_pem.to_string())),
            )
        }
    };
    let params = ca::client_params(
        id,
        role.as_str(),
        &cfg.ca.organization,
        &basics(token, &public_raw, CLIENT_DAYS)?,
    );
    let der = sign_internal(cfg, token, &params, public_raw)?;
    let (serial_number, not_after) = serial_and_expiry(&der)?;
    let record = ClientRecord {
        id: id.to_owned(),
        role,
        serial_number,
        sha256: hex::encode(Sha256::digest(&der)),
        not_after: rfc3339(not_after),
        issued_at: rfc3339(now_s()?),
        issued_by: actor.to_owned(),
        revoked_at: None,
        revoked_by: None,
    };
    // The record first (it carries the certificate), then the registry.
    crate::auditing::record(
        log,
        actor,
        ISSUE_OP,
        id,
        "ok",
        serde_json::json!({
            "role": role.as_str(), "serial_number": record.serial_number, "sha256": record.sha256,
            "client": record, "certificate": base64::engine::general_purpose::STANDARD.encode(&der),
        }),
    )?;
    store_record(store, &record, None)?;
    Ok(ClientCredential {
        record,
        cert_pem: pem(&der)?,
        key_pem,
        ca_pem: pem(&read_cert(&CaFiles::of(cfg).internal)?)?,
    })
}

fn store_record(
    store: &dyn Store,
    record: &ClientRecord,
    old: Option<&ClientRecord>,
) -> Result<()> {
    let json = |r: &ClientRecord| {
        serde_json::to_vec(r).map_err(|_| Error::Unreachable("client record to JSON"))
    };
    let write = match old {
        None => Write::Insert {
            tree: Tree::Clients,
            key: record.serial_number.as_bytes().to_vec(),
            value: json(record)?,
        },
        Some(o) => Write::Replace {
            tree: Tree::Clients,
            key: record.serial_number.as_bytes().to_vec(),
            expected: Some(json(o)?),
            value: json(record)?,
        },
    };
    store.commit(&[write])?.map_err(|c| {
        Error::Store(store::Error::Corrupt(format!(
            "client certificate {} changed concurrently ({:?})",
            record.serial_number, c.tree
        )))
    })
}

/// Re-apply a `credential.issue` or `credential.revoke` record from the
/// log (store rebuild). Returns whether the store changed.
pub fn restore(store: &dyn Store, op: &str, details: &serde_json::Value) -> Result<bool> {
    let Ok(record) = serde_json::from_value::<ClientRecord>(details["client"].clone()) else {
        return Ok(false);
    };
    let key = record.serial_number.as_bytes();
    let current = store
        .get(Tree::Clients, key)?
        .and_then(|v| serde_json::from_slice::<ClientRecord>(&v).ok());
    match (op, current) {
        (ISSUE_OP, None) => store_record(store, &record, None).map(|_| true),
        (REVOKE_OP, Some(old)) if old.revoked_at.is_none() => {
            store_record(store, &record, Some(&old)).map(|_| true)
        }
        (REVOKE_OP, None) => store_record(store, &record, None).map(|_| true),
        _ => Ok(false),
    }
}

/// Write a credential as `dir/cert.pem`, `dir/key.pem` (0600, when the
/// appliance made the key) and `dir/ca.pem`. `dir` may exist (a station's
/// own directory holding the key `station init` made), but none of the
/// files may: nothing is overwritten.
pub fn write_dir(cred: &ClientCredential, dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    for f in ["cert.pem", "ca.pem"]
        .into_iter()
        .chain(cred.key_pem.as_ref().map(|_| "key.pem"))
    {
        if dir.join(f).exists() {
            return Err(Error::InvalidInput(format!(
                "{} exists; choose another directory",
                dir.join(f).display()
            )));
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    if let Some(key) = &cred.key_pem {
        ceremony::write_new(&dir.join("key.pem"), key.as_bytes(), 0o600)?;
    }
    ceremony::write_new(&dir.join("cert.pem"), cred.cert_pem.as_bytes(), 0o644)?;
    ceremony::write_new(&dir.join("ca.pem"), cred.ca_pem.as_bytes(), 0o644)
}

/// Every client certificate in the registry.
pub fn list(store: &dyn Store) -> Result<Vec<ClientRecord>> {
    crate::storage::scan_prefix(store, Tree::Clients, b"")?
        .iter()
        .map(|(_, v)| {
            serde_json::from_slice(v)
                .map_err(|e| Error::Store(store::Error::Corrupt(format!("client record: {e}"))))
        })
        .collect()
}

/// The names the server certificate must carry: `server.names` as DNS
/// names, loopback and the API address as IPs.
fn server_names(cfg: &Config) -> (Vec<String>, Vec<IpAddr>) {
    let mut ips: Vec<IpAddr> = vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()];
    let api = cfg.server.api_listen.ip();
    if !api.is_unspecified() && !ips.contains(&api) {
        ips.push(api);
    }
    (cfg.server.names.clone(), ips)
}

/// The TLS server credential, made or renewed when needed: the P-256 key in
/// the token (`server.tls_key`) and `ca.dir/server.pem` issued by the
/// internal CA for `server.names`. Returns the certificate DER.
pub fn ensure_server(
    cfg: &Config,
    token: &Arc<Token>,
    log: &audit::Log,
    actor: &str,
) -> Result<Vec<u8>> {
    let label = &cfg.server.tls_key;
    let signer = match TokenSigner::new(token.clone(), label) {
        Ok(s) => s,
        Err(Error::KeyNotFound { .. }) => {
            token.generate_key_pair(KeyPairKind::EcP256, label)?;
            TokenSigner::new(token.clone(), label)?
        }
        Err(e) => return Err(e),
    };
    let public_raw = ca::Signer::public_key_raw(&signer).to_vec();
    let path = cfg.ca.dir.join("server.pem");
    let (dns, ips) = server_names(cfg);
    if let Ok(der) = read_cert(&path) {
        if server_cert_fits(&der, &public_raw, &dns, &ips)? {
            return Ok(der);
        }
    }
    let params = ca::server_params(
        &format!("{} kmsd", cfg.ca.organization),
        &dns,
        &ips,
        &cfg.ca.organization,
        &basics(token, &public_raw, SERVER_DAYS)?,
    )?;
    let der = sign_internal(cfg, token, &params, public_raw)?;
    let (serial_number, not_after) = serial_and_expiry(&der)?;
    crate::auditing::record(
        log,
        actor,
        ISSUE_OP,
        "tls-server",
        "ok",
        serde_json::json!({
            "role": "server", "serial_number": serial_number, "not_after": rfc3339(not_after),
            "sha256": hex::encode(Sha256::digest(&der)), "key": token.key_info(label, KeyClass::Private)?.uri,
            "dns": dns, "ips": ips,
        }),
    )?;
    replace_file(&path, pem(&der)?.as_bytes())?;
    Ok(der)
}

/// Whether `der` is for `public_raw`, names exactly `dns` and `ips`, and has
/// more than [`SERVER_RENEW_DAYS`] left.
fn server_cert_fits(der: &[u8], public_raw: &[u8], dns: &[String], ips: &[IpAddr]) -> Result<bool> {
    use x509_cert::ext::pkix::name::GeneralName;
    let Ok(cert) = x509_cert::Certificate::from_der(der) else {
        return Ok(false);
    };
    let tbs = &cert.tbs_certificate;
    if tbs.subject_public_key_info.subject_public_key.raw_bytes() != public_raw {
        return Ok(false);
    }
    let (_, not_after) = serial_and_expiry(der)?;
    if not_after - OffsetDateTime::now_utc() < Duration::days(SERVER_RENEW_DAYS) {
        return Ok(false);
    }
    let Ok(Some((_, san))) = tbs.get::<x509_cert::ext::pkix::SubjectAltName>() else {
        return Ok(false);
    };
    let mut have_dns = Vec::new();
    let mut have_ips = Vec::new();
    for name in san.0 {
        match name {
            GeneralName::DnsName(d) => have_dns.push(d.to_string()),
            GeneralName::IpAddress(o) => match o.as_bytes().len() {
                4 => have_ips.push(IpAddr::from(
                    <[u8; 4]>::try_from(o.as_bytes()).unwrap_or_default(),
                )),
                16 => have_ips.push(IpAddr::from(
                    <[u8; 16]>::try_from(o.as_bytes()).unwrap_or_default(),
                )),
                _ => return Ok(false),
            },
            _ => {}
        }
    }
    Ok(have_dns == dns && have_ips == ips)
}

/// Replace `path` atomically (write a temporary file, sync, rename).
pub(crate) fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    ceremony::write_new(&tmp, bytes, 0o644)?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    // The rename itself durable: sync the directory.
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}
