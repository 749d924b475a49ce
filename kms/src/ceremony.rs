//! The key ceremony (`kmsctl init`), client credentials for officers and
//! stations, and loading the device CA for issuance.
//!
//! Every CA key is generated in the token (ECDSA P-256, sensitive, never
//! extractable) and used only through [`TokenSigner`]. The certificates are
//! built in memory first and written only when all of them exist, with
//! `create_new`, so the ceremony cannot overwrite an initialised appliance.
//! Officer and station keys are software keys in 0600 files: they are mTLS
//! client credentials that leave the appliance by design.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ca::{CaRole, RcgenSigner, Signer as _, SubjectKey};
use der::pem::LineEnding;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::config::Config;
use crate::credentials::{self, basics, ClientRole, NewClient};
use crate::error::{io, Error, Result};
use crate::storage::SledStore;
use crate::token::{KeyClass, KeyPairKind, Token, TokenRandom, TokenSigner};

/// Root CA lifetime.
pub const ROOT_DAYS: i64 = 7305;
/// Manufacturing intermediate and internal CA lifetime.
pub const CA_DAYS: i64 = 3652;

/// The CA certificate files under `ca.dir`.
#[derive(Clone, Debug)]
pub struct CaFiles {
    /// Self-signed root.
    pub root: PathBuf,
    /// Manufacturing intermediate.
    pub intermediate: PathBuf,
    /// Internal (mTLS) CA.
    pub internal: PathBuf,
    /// Intermediate then root, PEM.
    pub chain: PathBuf,
}

impl CaFiles {
    /// The files of `cfg`.
    pub fn of(cfg: &Config) -> Self {
        let d = &cfg.ca.dir;
        Self {
            root: d.join("root.pem"),
            intermediate: d.join("intermediate.pem"),
            internal: d.join("internal.pem"),
            chain: d.join("chain.pem"),
        }
    }
}

/// One CA certificate as `kmsctl init` and `kmsctl ca show` report it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CaSummary {
    /// `root`, `intermediate` or `internal`.
    pub name: &'static str,
    /// Subject, RFC 4514.
    pub subject: String,
    /// Issuer, RFC 4514.
    pub issuer: String,
    /// Serial, lowercase hex.
    pub serial_number: String,
    /// RFC 3339.
    pub not_after: String,
    /// SHA-256 of the DER, lowercase hex.
    pub sha256_fingerprint: String,
    /// Token URI of its key.
    pub key_uri: String,
    /// The PEM file.
    pub file: PathBuf,
}

/// PEM of a DER certificate.
pub fn pem(der: &[u8]) -> Result<String> {
    der::pem::encode_string("CERTIFICATE", LineEnding::LF, der)
        .map_err(|_| Error::Unreachable("PEM encoding"))
}

/// Read one PEM certificate.
pub fn read_cert(path: &Path) -> Result<Vec<u8>> {
    let text = fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::NotInitialized(format!("{} does not exist", path.display()))
        }
        _ => Error::Io {
            path: path.to_owned(),
            source: e,
        },
    })?;
    let (label, der) = der::pem::decode_vec(&text).map_err(|e| Error::Config {
        path: path.to_owned(),
        reason: format!("not a PEM certificate: {e}"),
    })?;
    if label != "CERTIFICATE" {
        return Err(Error::Config {
            path: path.to_owned(),
            reason: format!("PEM label {label} is not CERTIFICATE"),
        });
    }
    Ok(der)
}

/// Write a new file (never overwriting) with `mode`, and sync it.
pub(crate) fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io(path))
}

pub(crate) fn rcgen_err(signer: &RcgenSigner<'_, TokenSigner>, e: rcgen::Error) -> Error {
    match signer.take_error() {
        Some(inner) => Error::Ca(inner),
        None => Error::Ca(ca::Error::Encoding(e.to_string())),
    }
}

/// What the ceremony produced.
#[derive(Debug, serde::Serialize)]
pub struct InitReport {
    /// The three CA certificates.
    pub cas: Vec<CaSummary>,
    /// The first officer's credential directory.
    pub officer_dir: PathBuf,
}

/// The key ceremony: root, intermediate (pathLen 0) and internal CA keys in
/// the token, their certificates, the chain, and the first officer's
/// credential. Refuses to run over an initialised appliance.
pub fn init(
    cfg: &Config,
    token: &Arc<Token>,
    actor: &str,
    officer_id: &str,
    officer_dir: &Path,
) -> Result<InitReport> {
    let files = CaFiles::of(cfg);
    for f in [
        &files.root,
        &files.intermediate,
        &files.internal,
        &files.chain,
    ] {
        if f.exists() {
            return Err(Error::AlreadyInitialized(format!("{} exists", f.display())));
        }
    }
    let labels = [
        &cfg.ca.root_key,
        &cfg.ca.intermediate_key,
        &cfg.ca.internal_key,
    ];
    for label in labels {
        if token.key_info(label, KeyClass::Private).is_ok() {
            return Err(Error::AlreadyInitialized(format!(
                "key {label:?} exists on the token"
            )));
        }
    }
    credentials::check_id(officer_id)?;
    if officer_dir.exists() {
        return Err(Error::AlreadyInitialized(format!(
            "{} exists",
            officer_dir.display()
        )));
    }
    for label in &labels[..3] {
        token.generate_key_pair(KeyPairKind::EcP256, label)?;
    }
    token.generate_key_pair(KeyPairKind::Ed25519, &cfg.audit.key)?;
    let log = crate::auditing::open(cfg, token)?;
    let org = &cfg.ca.organization;
    let publication = cfg.publication_url();

    let root_key = TokenSigner::new(token.clone(), &cfg.ca.root_key)?;
    let root_signer = RcgenSigner::new(&root_key);
    let root_params = ca::ca_params(
        CaRole::Root,
        &format!("{org} Root CA"),
        org,
        &basics(token, root_key.public_key_raw(), ROOT_DAYS)?,
        None,
    );
    let root = root_params
        .self_signed(&root_signer)
        .map_err(|e| rcgen_err(&root_signer, e))?;

    let inter_key = TokenSigner::new(token.clone(), &cfg.ca.intermediate_key)?;
    let inter_params = ca::ca_params(
        CaRole::Intermediate,
        &format!("{org} Manufacturing Intermediate CA"),
        org,
        &basics(token, inter_key.public_key_raw(), CA_DAYS)?,
        Some(&format!("{publication}/crl/root.crl")),
    );
    let issuer = rcgen::Issuer::from_params(&root_params, &root_signer);
    let inter_subject =
        SubjectKey::for_signer(inter_key.algorithm(), inter_key.public_key_raw().to_vec());
    let intermediate = inter_params
        .signed_by(&inter_subject, &issuer)
        .map_err(|e| rcgen_err(&root_signer, e))?;

    let internal_key = TokenSigner::new(token.clone(), &cfg.ca.internal_key)?;
    let internal_signer = RcgenSigner::new(&internal_key);
    let internal = ca::ca_params(
        CaRole::Internal,
        &format!("{org} Internal CA"),
        org,
        &basics(token, internal_key.public_key_raw(), CA_DAYS)?,
        None,
    )
    .self_signed(&internal_signer)
    .map_err(|e| rcgen_err(&internal_signer, e))?;

    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&cfg.ca.dir)
        .map_err(io(&cfg.ca.dir))?;
    let (root_pem, inter_pem) = (pem(root.der())?, pem(intermediate.der())?);
    write_new(&files.root, root_pem.as_bytes(), 0o644)?;
    write_new(&files.intermediate, inter_pem.as_bytes(), 0o644)?;
    write_new(&files.internal, pem(internal.der())?.as_bytes(), 0o644)?;
    write_new(
        &files.chain,
        format!("{inter_pem}{root_pem}").as_bytes(),
        0o644,
    )?;

    let cas = show(cfg, token)?;
    crate::auditing::record(
        &log,
        actor,
        "appliance.init",
        &cfg.ca.organization,
        "ok",
        serde_json::json!({
            "certificates": cas.iter().map(|c| serde_json::json!({
                "name": c.name, "serial_number": c.serial_number, "sha256": c.sha256_fingerprint, "key": c.key_uri,
            })).collect::<Vec<_>>(),
            "audit_key": audit::note::verifier_key(&cfg.audit.origin, &token_audit_public(cfg, token)?),
        }),
    )?;
    let store = SledStore::open(&cfg.storage.path)?;
    let officer = credentials::issue_client(
        cfg,
        token,
        &log,
        &store,
        actor,
        &NewClient {
            id: officer_id,
            role: ClientRole::Officer,
            csr: None,
        },
    )?;
    credentials::write_dir(&officer, officer_dir)?;
    // The API's TLS server credential: its key in the token, its
    // certificate from the internal CA (kmsd renews it when needed).
    credentials::ensure_server(cfg, token, &log, actor)?;
    crate::secrets::ensure_kek(token, &store, &log, actor)?;
    log.checkpoint()?;
    Ok(InitReport {
        cas,
        officer_dir: officer_dir.to_owned(),
    })
}

fn token_audit_public(cfg: &Config, token: &Arc<Token>) -> Result<[u8; 32]> {
    use audit::CheckpointSigner as _;
    Ok(crate::token::TokenCheckpointSigner::new(token.clone(), &cfg.audit.key)?.public_key())
}

/// The C2SP verifier key of the audit log.
pub fn audit_verifier_key(cfg: &Config, token: &Arc<Token>) -> Result<String> {
    Ok(audit::note::verifier_key(
        &cfg.audit.origin,
        &token_audit_public(cfg, token)?,
    ))
}

/// The CA hierarchy as it stands: one summary per certificate.
pub fn show(cfg: &Config, token: &Token) -> Result<Vec<CaSummary>> {
    let files = CaFiles::of(cfg);
    [
        ("root", &files.root, &cfg.ca.root_key),
        (
            "intermediate",
            &files.intermediate,
            &cfg.ca.intermediate_key,
        ),
        ("internal", &files.internal, &cfg.ca.internal_key),
    ]
    .into_iter()
    .map(|(name, file, label)| {
        let der = read_cert(file)?;
        let cert =
            <x509_cert::Certificate as der::Decode>::from_der(&der).map_err(|e| Error::Config {
                path: file.clone(),
                reason: e.to_string(),
            })?;
        let tbs = &cert.tbs_certificate;
        let not_after = OffsetDateTime::from_unix_timestamp(
            tbs.validity.not_after.to_unix_duration().as_secs() as i64,
        )
        .map_err(|_| Error::Unreachable("certificate time"))?;
        Ok(CaSummary {
            name,
            subject: tbs.subject.to_string(),
            issuer: tbs.issuer.to_string(),
            serial_number: hex::encode(tbs.serial_number.as_bytes())
                .trim_start_matches("00")
                .to_owned(),
            not_after: not_after
                .format(&time::format_description::well_known::Rfc3339)
                .map_err(|_| Error::Unreachable("time format"))?,
            sha256_fingerprint: hex::encode(Sha256::digest(&der)),
            key_uri: token.key_info(label, KeyClass::Private)?.uri,
            file: file.clone(),
        })
    })
    .collect()
}

/// The device CA, ready to issue: the intermediate's token key, the token
/// RNG, the system clock and `store`.
pub fn load_ca(cfg: &Config, token: &Arc<Token>, store: Arc<dyn store::Store>) -> Result<ca::Ca> {
    let issuer_der = read_cert(&CaFiles::of(cfg).intermediate)?;
    let profiles = profiles(cfg)?;
    let publication = cfg.publication_url();
    let settings = ca::CaSettings {
        issuer_der,
        urls: ca::Urls {
            crl: format!("{publication}/crl/intermediate.crl"),
            ocsp: format!("{publication}/ocsp"),
        },
        hw_type: cfg
            .ca
            .hw_type_oid
            .parse()
            .map_err(|_| Error::Unreachable("hw_type_oid validated at load"))?,
        profiles,
    };
    Ok(ca::Ca::new(
        Box::new(TokenSigner::new(token.clone(), &cfg.ca.intermediate_key)?),
        Box::new(TokenRandom(token.clone())),
        Box::new(ca::SystemClock),
        store,
        settings,
    )?)
}

/// The device certificate profiles of `cfg` (`ca.profiles`, or the shipped
/// ones).
pub fn profiles(cfg: &Config) -> Result<ca::Profiles> {
    match &cfg.ca.profiles {
        Some(path) => {
            ca::Profiles::parse(&fs::read_to_string(path).map_err(io(path))?).map_err(|e| {
                Error::Config {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })
        }
        None => Ok(ca::Profiles::parse(ca::DEFAULT_PROFILES)?),
    }
}

/// The CA chain PEM (intermediate then root).
pub fn chain_pem(cfg: &Config) -> Result<String> {
    let path = CaFiles::of(cfg).chain;
    fs::read_to_string(&path).map_err(io(&path))
}
