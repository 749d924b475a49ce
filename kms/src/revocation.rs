//! Revocation: one registry of revoked certificates for the three CAs, the
//! CRLs signed from it, and the OCSP responder.
//!
//! A revocation is decided (officers only), journaled in the audit log, and
//! committed to the store (`Tree::Revocations`, and for a station or officer
//! certificate its client record) in one transaction. Only then does it take
//! effect in memory: the pre-encoded CRL entry is appended to its CA's
//! list, the CA is marked for a new CRL, the OCSP cache forgets the serial,
//! and a client certificate joins the set the TLS verifier refuses.
//!
//! CRLs are re-signed by one background thread ([`Revocations::spawn`]):
//! after revocations (one signature for a burst: it waits
//! `crl_coalesce_ms` for more), and when half of the current CRL's validity
//! has passed. Each CRL's number is taken from `Tree::Counters`, recorded in
//! the audit log with the CRL's SHA-256, made durable, and only then served.
//! Entries are kept DER-encoded, so a CRL of a million entries costs one
//! copy and one token signature.
//!
//! OCSP answers come from the store (the truth as of the request) and are
//! signed by the issuing CA's token key. A single-certificate request
//! without a nonce is answered from a cache of pre-signed responses, valid
//! `ocsp_validity_minutes` and re-signed when half of that has passed, so
//! a burst of such queries costs no token signature; a revocation drops the
//! serial from the cache at once.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use ca::{CrlEntries, CrlIssuer, OcspResponder, OcspStatus, RevocationReason};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use store::{Store, Tree, Write};
use time::OffsetDateTime;

use crate::appliance::Appliance;
use crate::auditing;
use crate::ceremony::{self, CaFiles};
use crate::config::{Config, RevocationConfig};
use crate::credentials::ClientRecord;
use crate::error::{Error, Result};
use crate::policy::Caller;
use crate::token::{Token, TokenSigner};

/// Operation name of a certificate revocation (any CA).
pub const REVOKE_OP: &str = "certificate.revoke";
/// Operation name of a signed CRL.
pub const CRL_OP: &str = "crl.publish";
/// OCSP answers signed at once (nonce-bearing or cache misses); more get
/// `tryLater`.
pub const MAX_OCSP_SIGNING: usize = 32;

/// Most serials one batch revocation request may carry.
pub const MAX_BATCH: usize = 1000;

/// Our three CAs, by the names of `/crl/{ca}.crl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaName {
    /// The root: its CRL lists a revoked intermediate.
    Root,
    /// The manufacturing intermediate: device certificates.
    Intermediate,
    /// The internal CA: station and officer (mTLS) certificates.
    Internal,
}

impl CaName {
    /// All three, in slot order.
    pub const ALL: [CaName; 3] = [CaName::Root, CaName::Intermediate, CaName::Internal];

    /// `root`, `intermediate` or `internal`.
    pub fn as_str(self) -> &'static str {
        match self {
            CaName::Root => "root",
            CaName::Intermediate => "intermediate",
            CaName::Internal => "internal",
        }
    }

    /// The CA of that name.
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                Error::MalformedRequest(format!(
                    "CA {:?} is not one of root, intermediate, internal",
                    s.chars().take(32).collect::<String>()
                ))
            })
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One revoked certificate, as stored and as the API reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationRecord {
    /// Lowercase hex.
    pub serial_number: String,
    /// The CA that issued it.
    pub ca: CaName,
    /// Module serial (device), client id (station, officer) or `intermediate`.
    pub subject: String,
    /// RFC 5280 reason.
    pub reason: RevocationReason,
    /// RFC 3339 UTC.
    pub revoked_at: String,
    /// When the key is known or suspected to have been compromised, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalidity_date: Option<String>,
    /// Who revoked it.
    pub revoked_by: String,
}

impl RevocationRecord {
    fn entry_der(&self) -> Result<Vec<u8>> {
        let at = parse_time(&self.revoked_at)?;
        let invalidity = self
            .invalidity_date
            .as_deref()
            .map(parse_time)
            .transpose()?;
        Ok(ca::crl_entry(
            &self.serial_number,
            at,
            self.reason,
            invalidity,
        )?)
    }
}

/// What a revocation request asks.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// RFC 5280 reason name.
    pub reason: String,
    /// RFC 3339; not in the future.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalidity_date: Option<String>,
    /// The CA the caller believes issued the certificate; refused with
    /// `issuer_mismatch` when another did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

impl RevokeRequest {
    /// The reason, the invalidity date (RFC 3339, not in the future) and
    /// the CA named, checked.
    pub fn parse(&self) -> Result<(RevocationReason, Option<String>, Option<CaName>)> {
        let reason: RevocationReason = self.reason.parse()?;
        let invalidity = self
            .invalidity_date
            .as_deref()
            .map(|s| {
                let t = parse_time(s)?;
                if t.unix_timestamp() < 0 {
                    return Err(Error::MalformedRequest(format!(
                        "invalidity_date {s} is before 1970"
                    )));
                }
                if t.unix_timestamp() > crate::policy::now() {
                    return Err(Error::MalformedRequest(format!(
                        "invalidity_date {s} is in the future"
                    )));
                }
                Ok(to_rfc3339(t))
            })
            .transpose()?;
        let asked = self.ca.as_deref().map(CaName::parse).transpose()?;
        Ok((reason, invalidity, asked))
    }
}

/// The answer to one revocation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Revoked {
    /// The revocation in force (the first one, when it was already revoked).
    #[serde(flatten)]
    pub record: RevocationRecord,
    /// The certificate was revoked before this request; nothing changed.
    pub already_revoked: bool,
}

/// A CRL as served.
#[derive(Debug)]
pub struct PublishedCrl {
    /// The CA.
    pub ca: CaName,
    /// DER.
    pub der: Vec<u8>,
    /// cRLNumber.
    pub number: u64,
    /// Entries listed.
    pub entries: usize,
    /// thisUpdate.
    pub this_update: OffsetDateTime,
    /// nextUpdate.
    pub next_update: OffsetDateTime,
    /// SHA-256 of the DER, lowercase hex (also the ETag).
    pub sha256: String,
}

#[derive(Default)]
struct CrlState {
    entries: CrlEntries,
    /// Revocations not in the published CRL yet.
    dirty: bool,
}

/// One CA's revocation machinery.
struct Slot {
    name: CaName,
    /// `None` when the CA's key is not on this token (an offline root).
    crl: Option<CrlIssuer>,
    ocsp: Option<OcspResponder>,
    state: Mutex<CrlState>,
    published: RwLock<Option<Arc<PublishedCrl>>>,
    /// One CRL build per CA at a time; holds the last number this process
    /// recorded, so a failed counter commit never makes it sign a second
    /// CRL under a number already in the audit log.
    building: Mutex<u64>,
}

struct CachedOcsp {
    der: Arc<Vec<u8>>,
    /// Re-sign after this instant.
    fresh_until: Instant,
}

/// The revocation registry in memory, the CRL publisher and the OCSP cache.
pub struct Revocations {
    cfg: RevocationConfig,
    store: Arc<dyn Store>,
    audit: Arc<audit::Log>,
    slots: Vec<Slot>,
    /// The intermediate's serial (the one certificate the root's CRL and
    /// OCSP speak about).
    intermediate_serial: String,
    /// Revocations of the same serial run one at a time (striped).
    stripes: Vec<Mutex<()>>,
    ocsp_cache: Mutex<HashMap<OcspKey, Arc<CachedOcsp>>>,
    /// Bumped (under the cache lock) by every revocation: an answer signed
    /// from a status read before the bump is not cached.
    ocsp_generation: std::sync::atomic::AtomicU64,
    /// OCSP answers being signed now; beyond [`MAX_OCSP_SIGNING`] a
    /// request is answered `tryLater` rather than queued on the token.
    ocsp_signing: std::sync::atomic::AtomicUsize,
    /// Wakes the publisher: (revocations pending, stop).
    wake: (Mutex<(bool, bool)>, Condvar),
    metrics: Arc<crate::metrics::Metrics>,
}

const STRIPES: usize = 64;

fn parse_time(s: &str) -> Result<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| Error::MalformedRequest(format!("time {s:?}: {e}")))
}

fn now_whole() -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(crate::policy::now())
        .map_err(|_| Error::Unreachable("system time"))
}

fn to_rfc3339(t: OffsetDateTime) -> String {
    crate::policy::rfc3339(t.unix_timestamp())
}

/// A certificate serial as given (hex, any case, colons allowed) in our
/// form: lowercase hex without leading zero bytes.
pub fn normalize_serial(given: &str) -> Result<String> {
    let digits: String = given.chars().filter(|c| *c != ':').collect();
    let bad = || {
        Error::MalformedRequest(format!(
            "certificate serial {:?} is not 1 to 40 hex digits",
            given.chars().take(48).collect::<String>()
        ))
    };
    if digits.is_empty() || digits.len() > 40 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    let bytes = hex::decode(padded.to_ascii_lowercase()).map_err(|_| bad())?;
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    Ok(if first == bytes.len() {
        "00".into()
    } else {
        hex::encode(&bytes[first..])
    })
}

impl Revocations {
    /// Load every CA's revocations from `store` (and sign nothing yet).
    pub fn open(
        cfg: &Config,
        token: &Arc<Token>,
        store: Arc<dyn Store>,
        audit: Arc<audit::Log>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self> {
        let files = CaFiles::of(cfg);
        let mut slots = Vec::new();
        let mut intermediate_serial = String::new();
        for (name, file, label) in [
            (CaName::Root, &files.root, &cfg.ca.root_key),
            (
                CaName::Intermediate,
                &files.intermediate,
                &cfg.ca.intermediate_key,
            ),
            (CaName::Internal, &files.internal, &cfg.ca.internal_key),
        ] {
            let der = ceremony::read_cert(file)?;
            if name == CaName::Intermediate {
                intermediate_serial = cert_serial(&der)?;
            }
            let signer = || TokenSigner::new(token.clone(), label);
            let (crl, ocsp) = match (signer(), signer()) {
                (Ok(a), Ok(b)) => (
                    Some(CrlIssuer::new(&der, Box::new(a))?),
                    Some(OcspResponder::new(&der, Box::new(b))?),
                ),
                (Err(Error::KeyNotFound { .. }), _) | (_, Err(Error::KeyNotFound { .. })) => {
                    tracing::warn!(
                        ca = name.as_str(),
                        "CA key not on the token: no CRL or OCSP for it"
                    );
                    (None, None)
                }
                (Err(e), _) | (_, Err(e)) => return Err(e),
            };
            slots.push(Slot {
                name,
                crl,
                ocsp,
                state: Mutex::new(CrlState::default()),
                published: RwLock::new(None),
                building: Mutex::new(0),
            });
        }
        let me = Self {
            cfg: cfg.revocation.clone(),
            store,
            audit,
            slots,
            intermediate_serial,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            ocsp_cache: Mutex::new(HashMap::new()),
            ocsp_generation: std::sync::atomic::AtomicU64::new(0),
            ocsp_signing: std::sync::atomic::AtomicUsize::new(0),
            wake: (Mutex::new((false, false)), Condvar::new()),
            metrics,
        };
        me.load()?;
        Ok(me)
    }

    /// Read every stored revocation into its CA's entry list.
    /// Pages are decoded and encoded on every core: at a million entries
    /// this is most of `kmsd`'s start-up.
    fn load(&self) -> Result<()> {
        const PAGE: usize = 10_000;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        type Entries = Vec<(CaName, Vec<u8>)>;
        let decode = |part: &[(Vec<u8>, Vec<u8>)]| -> Result<Entries> {
            part.iter()
                .map(|(_, v)| {
                    let r: RevocationRecord = serde_json::from_slice(v)
                        .map_err(|e| store::Error::Corrupt(format!("revocation record: {e}")))?;
                    Ok((r.ca, r.entry_der()?))
                })
                .collect()
        };
        let mut from = Vec::new();
        loop {
            let page = self.store.scan(Tree::Revocations, &from, PAGE)?;
            let chunk = page.len().div_ceil(threads).max(1);
            let decoded: Vec<Result<Entries>> = std::thread::scope(|s| {
                let handles: Vec<_> = page
                    .chunks(chunk)
                    .map(|part| s.spawn(move || decode(part)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or(Err(Error::Unreachable("revocation loader panicked")))
                    })
                    .collect()
            });
            for part in decoded {
                for (ca, der) in part? {
                    self.slot(ca).lock_state().entries.push(&der);
                }
            }
            match page.last() {
                Some((k, _)) if page.len() == PAGE => {
                    from = k.clone();
                    from.push(0);
                }
                _ => return Ok(()),
            }
        }
    }

    fn slot(&self, ca: CaName) -> &Slot {
        &self.slots[ca.index()]
    }

    /// The stored revocation of `serial_number`, if any.
    pub fn get(&self, serial_number: &str) -> Result<Option<RevocationRecord>> {
        self.store
            .get(Tree::Revocations, serial_number.as_bytes())?
            .map(|v| {
                serde_json::from_slice(&v).map_err(|e| {
                    Error::Store(store::Error::Corrupt(format!("revocation record: {e}")))
                })
            })
            .transpose()
    }

    /// The CRL of `ca` as last published.
    pub fn crl(&self, ca: CaName) -> Option<Arc<PublishedCrl>> {
        self.slot(ca)
            .published
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sign and publish a new CRL for `ca` now, recorded as `actor`'s.
    pub fn publish(&self, ca: CaName, actor: &str) -> Result<Arc<PublishedCrl>> {
        let slot = self.slot(ca);
        let Some(issuer) = &slot.crl else {
            return Err(Error::CrlUnavailable(ca.as_str().into()));
        };
        let mut last = slot.building.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let entries = {
            let mut st = slot.lock_state();
            st.dirty = false;
            st.entries.clone()
        };
        let outcome = (|| {
            let (key, old, stored) = self.stored_number(ca)?;
            let number = stored.max(*last) + 1;
            *last = number;
            let this_update = now_whole()?;
            let next_update = this_update
                + time::Duration::hours(i64::try_from(self.cfg.crl_validity_hours).unwrap_or(24));
            let der = issuer.sign(number, this_update, next_update, &entries)?;
            let sha256 = hex::encode(Sha256::digest(&der));
            auditing::record(
                &self.audit,
                actor,
                CRL_OP,
                ca.as_str(),
                "ok",
                json!({
                    "number": number, "entries": entries.len(), "sha256": sha256,
                    "this_update": to_rfc3339(this_update), "next_update": to_rfc3339(next_update),
                }),
            )?;
            let write = Write::Replace {
                tree: Tree::Counters,
                key,
                expected: old,
                value: number.to_string().into_bytes(),
            };
            self.store.commit(&[write])?.map_err(|_| {
                Error::Store(store::Error::Corrupt(format!(
                    "the {} CRL number changed under us",
                    ca.as_str()
                )))
            })?;
            Ok(Arc::new(PublishedCrl {
                ca,
                der,
                number,
                entries: entries.len(),
                this_update,
                next_update,
                sha256,
            }))
        })();
        match outcome {
            Ok(crl) => {
                *slot.published.write().unwrap_or_else(|p| p.into_inner()) = Some(crl.clone());
                self.metrics.crl_build.observe(started.elapsed());
                Ok(crl)
            }
            Err(e) => {
                slot.lock_state().dirty = true;
                Err(e)
            }
        }
    }

    /// Raise the stored CRL numbers to at least those the audit log shows
    /// (after `kmsctl store rebuild`, or a crash between the record and the
    /// counter commit).
    pub fn raise_numbers(&self, seen: &HashMap<CaName, u64>) -> Result<()> {
        for (ca, n) in seen {
            let (key, old, stored) = self.stored_number(*ca)?;
            if *n > stored {
                let _ = self.store.commit(&[Write::Replace {
                    tree: Tree::Counters,
                    key,
                    expected: old,
                    value: n.to_string().into_bytes(),
                }])?;
            }
        }
        Ok(())
    }

    /// The CRL number last used for `ca`: (its key, the stored bytes, the
    /// number; 0 before the first CRL).
    fn stored_number(&self, ca: CaName) -> Result<(Vec<u8>, Option<Vec<u8>>, u64)> {
        let key = format!("crl_number/{}", ca.as_str()).into_bytes();
        let old = self.store.get(Tree::Counters, &key)?;
        let number = match old.as_deref().map(std::str::from_utf8) {
            None => 0,
            Some(Ok(text)) => text
                .parse()
                .map_err(|_| Error::Store(store::Error::Corrupt(format!("CRL number {text:?}"))))?,
            Some(Err(_)) => {
                return Err(Error::Store(store::Error::Corrupt(
                    "CRL number is not UTF-8".into(),
                )))
            }
        };
        Ok((key, old, number))
    }

    /// Publish every CA whose key is here (at start, before serving).
    pub fn publish_all(&self) -> Result<()> {
        for ca in CaName::ALL {
            if self.slot(ca).crl.is_some() {
                self.publish(ca, "kmsd")?;
            }
        }
        Ok(())
    }

    /// Start the publisher thread: it re-signs a CA's CRL after
    /// revocations (coalesced) and when half of its validity has passed.
    /// It stops when [`Revocations::stop`] is called.
    pub fn spawn(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("crl-publisher".into())
            .spawn(move || me.run())
    }

    /// Stop the publisher thread.
    pub fn stop(&self) {
        let (lock, cv) = &self.wake;
        lock.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        cv.notify_all();
    }

    fn run(&self) {
        let (lock, cv) = &self.wake;
        let half = Duration::from_secs(self.cfg.crl_validity_hours * 3600 / 2);
        loop {
            // Sleep until a revocation or the earliest refresh.
            let due_in = CaName::ALL
                .iter()
                .filter(|ca| self.slot(**ca).crl.is_some())
                .map(|ca| match self.crl(*ca) {
                    Some(c) => {
                        let age = now_whole()
                            .map(|n| (n - c.this_update).unsigned_abs())
                            .unwrap_or_default();
                        half.saturating_sub(age)
                    }
                    None => Duration::ZERO,
                })
                .min()
                .unwrap_or(half);
            {
                let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
                let (mut guard, _) = cv
                    .wait_timeout_while(guard, due_in, |(pending, stop)| !*pending && !*stop)
                    .unwrap_or_else(|p| p.into_inner());
                if guard.1 {
                    return;
                }
                if guard.0 {
                    guard.0 = false;
                    // Let the burst finish: one CRL for all of it.
                    let (guard, _) = cv
                        .wait_timeout_while(
                            guard,
                            Duration::from_millis(self.cfg.crl_coalesce_ms),
                            |(_, stop)| !*stop,
                        )
                        .unwrap_or_else(|p| p.into_inner());
                    if guard.1 {
                        return;
                    }
                }
            }
            for ca in CaName::ALL {
                let slot = self.slot(ca);
                if slot.crl.is_none() {
                    continue;
                }
                let due = slot.lock_state().dirty
                    || self.crl(ca).is_none_or(|c| {
                        now_whole().is_ok_and(|n| (n - c.this_update).unsigned_abs() >= half)
                    });
                if due {
                    if let Err(e) = self.publish(ca, "kmsd") {
                        tracing::error!(ca = ca.as_str(), error = %e, "CRL not published; retrying in 5 s");
                        let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
                        let _ = cv.wait_timeout_while(guard, Duration::from_secs(5), |(_, s)| !*s);
                    }
                }
            }
        }
    }

    /// A revocation took effect: list it in the next CRL, forget cached
    /// OCSP answers about it, wake the publisher.
    fn took_effect(&self, r: &RevocationRecord, entry: &[u8]) {
        {
            let mut st = self.slot(r.ca).lock_state();
            st.entries.push(entry);
            st.dirty = true;
        }
        let mut cache = self.ocsp_cache.lock().unwrap_or_else(|p| p.into_inner());
        self.ocsp_generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        cache.remove(&(r.ca, r.serial_number.clone(), false));
        cache.remove(&(r.ca, r.serial_number.clone(), true));
        drop(cache);
        let (lock, cv) = &self.wake;
        lock.lock().unwrap_or_else(|p| p.into_inner()).0 = true;
        cv.notify_all();
    }

    fn stripe(&self, serial: &str) -> std::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        serial.hash(&mut h);
        self.stripes[(h.finish() as usize) % STRIPES]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The status OCSP reports for `serial` under `ca`.
    fn status(&self, ca: CaName, serial: &str) -> Result<OcspStatus> {
        if let Some(r) = self.get(serial)?.filter(|r| r.ca == ca) {
            return Ok(OcspStatus::Revoked {
                at: parse_time(&r.revoked_at)?,
                reason: r.reason,
            });
        }
        let known = match ca {
            CaName::Root => serial == self.intermediate_serial,
            CaName::Intermediate => self
                .store
                .get(Tree::Certificates, serial.as_bytes())?
                .is_some(),
            CaName::Internal => self.store.get(Tree::Clients, serial.as_bytes())?.is_some(),
        };
        Ok(if known {
            OcspStatus::Good
        } else {
            OcspStatus::Unknown
        })
    }

    /// Answer an OCSP request (DER) without the token when that is
    /// possible: a request that cannot be answered, or one the cache holds.
    /// `None`: it needs a signature ([`Revocations::ocsp`], on a thread
    /// that may block).
    pub fn ocsp_quick(&self, request: &[u8]) -> Option<OcspAnswer> {
        match self.ocsp_prepare(request) {
            Err(answer) => Some(answer),
            Ok(p) => self.ocsp_cached(&p),
        }
    }

    /// Answer an OCSP request (DER): always a DER OCSPResponse, an error
    /// status (`malformedRequest`, `unauthorized`, `internalError`) when no
    /// answer can be given, with the outcome's name for metrics.
    pub fn ocsp(&self, request: &[u8]) -> OcspAnswer {
        let p = match self.ocsp_prepare(request) {
            Ok(p) => p,
            Err(answer) => return answer,
        };
        if let Some(hit) = self.ocsp_cached(&p) {
            return hit;
        }
        use std::sync::atomic::Ordering;
        // Nonces make every answer a signature: bound them, so nobody on
        // the network can queue unbounded work on the token.
        struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        if self.ocsp_signing.fetch_add(1, Ordering::SeqCst) >= MAX_OCSP_SIGNING {
            self.ocsp_signing.fetch_sub(1, Ordering::SeqCst);
            return (
                ca::ocsp_error_response(ca::OcspErrorStatus::TryLater),
                "try_later",
            );
        }
        let _in_flight = InFlight(&self.ocsp_signing);
        let generation = self.ocsp_generation.load(Ordering::SeqCst);
        let signed = (|| {
            let answers = p
                .req
                .ids
                .iter()
                .map(|id| Ok((id, self.status(p.slot.name, &id.serial_number)?)))
                .collect::<Result<Vec<_>>>()?;
            let now = now_whole()?;
            let validity = time::Duration::minutes(
                i64::try_from(self.cfg.ocsp_validity_minutes).unwrap_or(60),
            );
            Ok::<_, Error>(p.responder.respond(
                &answers,
                now,
                now,
                now + validity,
                p.req.nonce.as_deref(),
            )?)
        })();
        match (signed, &p.cache_key) {
            (Ok(der), Some(key)) => {
                let mut cache = self.ocsp_cache.lock().unwrap_or_else(|e| e.into_inner());
                if self.ocsp_generation.load(Ordering::SeqCst) != generation {
                    // A revocation landed while this was signed: answer it
                    // once, keep nothing that may be stale.
                    return (der, "signed");
                }
                if cache.len() >= self.cfg.ocsp_cache_entries {
                    cache.clear();
                }
                cache.insert(
                    key.clone(),
                    Arc::new(CachedOcsp {
                        der: Arc::new(der.clone()),
                        fresh_until: Instant::now()
                            + Duration::from_secs(self.cfg.ocsp_validity_minutes * 30),
                    }),
                );
                (der, "signed")
            }
            (Ok(der), None) => (der, "signed"),
            (Err(e), _) => {
                tracing::error!(error = %e, "OCSP response not signed");
                (
                    ca::ocsp_error_response(ca::OcspErrorStatus::InternalError),
                    "internal_error",
                )
            }
        }
    }

    /// Parse and route a request: the CA whose name and key hashes match
    /// every CertID (a response has one signer), and the cache key when
    /// the answer may be cached (one CertID, no nonce).
    fn ocsp_prepare(&self, request: &[u8]) -> Result<PreparedOcsp<'_>, OcspAnswer> {
        use ca::OcspErrorStatus as S;
        let Ok(req) = ca::parse_ocsp_request(request) else {
            return Err((
                ca::ocsp_error_response(S::MalformedRequest),
                "malformed_request",
            ));
        };
        let found = req.ids.first().and_then(|first| {
            self.slots.iter().find_map(|s| {
                s.ocsp
                    .as_ref()
                    .filter(|o| o.issues(first) && req.ids.iter().all(|id| o.issues(id)))
                    .map(|o| (s, o))
            })
        });
        let Some((slot, responder)) = found else {
            return Err((ca::ocsp_error_response(S::Unauthorized), "unauthorized"));
        };
        let cache_key = match (req.ids.as_slice(), &req.nonce) {
            ([id], None) => Some((
                slot.name,
                id.serial_number.clone(),
                id.hash == Some(ca::OcspHash::Sha256),
            )),
            _ => None,
        };
        Ok(PreparedOcsp {
            req,
            slot,
            responder,
            cache_key,
        })
    }

    fn ocsp_cached(&self, p: &PreparedOcsp<'_>) -> Option<OcspAnswer> {
        let key = p.cache_key.as_ref()?;
        self.ocsp_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .filter(|c| c.fresh_until > Instant::now())
            .map(|c| (c.der.as_ref().clone(), "cached"))
    }
}

/// An OCSP answer (DER OCSPResponse) and its outcome for metrics:
/// `cached`, `signed`, `malformed_request`, `unauthorized`, `internal_error`.
pub type OcspAnswer = (Vec<u8>, &'static str);

/// Cache key of a pre-signed answer: CA, serial, SHA-256 CertID (else SHA-1).
type OcspKey = (CaName, String, bool);

struct PreparedOcsp<'a> {
    req: ca::OcspRequestInfo,
    slot: &'a Slot,
    responder: &'a OcspResponder,
    cache_key: Option<OcspKey>,
}

impl Slot {
    fn lock_state(&self) -> std::sync::MutexGuard<'_, CrlState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The serial of a DER certificate, in our form.
fn cert_serial(der: &[u8]) -> Result<String> {
    let cert = <x509_cert::Certificate as der::Decode>::from_der(der)
        .map_err(|_| Error::Unreachable("CA certificate read at load"))?;
    normalize_serial(&hex::encode(cert.tbs_certificate.serial_number.as_bytes()))
}

/// What a serial belongs to.
struct Located {
    ca: CaName,
    subject: String,
    client: Option<ClientRecord>,
}

impl Appliance {
    fn locate(&self, serial: &str) -> Result<Located> {
        if let Some(c) = self.ca.certificate(serial)? {
            return Ok(Located {
                ca: CaName::Intermediate,
                subject: c.module_serial,
                client: None,
            });
        }
        if let Some(v) = self.store.get(Tree::Clients, serial.as_bytes())? {
            let client: ClientRecord = serde_json::from_slice(&v)
                .map_err(|e| Error::Store(store::Error::Corrupt(format!("client record: {e}"))))?;
            return Ok(Located {
                ca: CaName::Internal,
                subject: client.id.clone(),
                client: Some(client),
            });
        }
        if serial == self.revocations.intermediate_serial {
            return Ok(Located {
                ca: CaName::Root,
                subject: CaName::Intermediate.as_str().into(),
                client: None,
            });
        }
        Err(Error::CertificateNotFound(serial.into()))
    }

    /// Revoke one certificate of any of our CAs (officers; the API, the
    /// admin socket and `kmsctl cert revoke`). Revoking an already revoked
    /// certificate reports the revocation in force and changes nothing.
    pub fn revoke(&self, caller: &Caller, serial: &str, req: &RevokeRequest) -> Result<Revoked> {
        let subject: String = serial.chars().take(64).collect();
        let checked = self
            .policy
            .check(caller, &policies::Action::Revoke)
            .and_then(|()| {
                let (reason, invalidity, asked) = req.parse()?;
                Ok((normalize_serial(serial)?, reason, invalidity, asked))
            });
        match checked {
            Ok((serial, reason, invalidity, asked)) => {
                match self.revoke_checked(
                    caller.name(),
                    &serial,
                    reason,
                    invalidity,
                    asked,
                    json!({}),
                ) {
                    Ok(r) => Ok(r),
                    Err(e @ Error::Audit(_)) => Err(e),
                    Err(e) => self.refuse(caller, REVOKE_OP, &subject, e),
                }
            }
            Err(e) => self.refuse(caller, REVOKE_OP, &subject, e),
        }
    }

    /// The revocation itself, once the caller is allowed and the input
    /// checked: journal, commit, take effect.
    pub(crate) fn revoke_checked(
        &self,
        actor: &str,
        serial: &str,
        reason: RevocationReason,
        invalidity_date: Option<String>,
        asked: Option<CaName>,
        context: serde_json::Value,
    ) -> Result<Revoked> {
        let revs = &self.revocations;
        let _one_at_a_time = revs.stripe(serial);
        let mismatch = |issuer: CaName, asked: CaName| Error::IssuerMismatch {
            serial_number: serial.into(),
            issuer: issuer.as_str(),
            asked: asked.as_str().into(),
        };
        if let Some(first) = revs.get(serial)? {
            if let Some(a) = asked.filter(|a| *a != first.ca) {
                return Err(mismatch(first.ca, a));
            }
            auditing::record(
                &self.audit,
                actor,
                REVOKE_OP,
                serial,
                "ok",
                json!({ "already_revoked": true, "asked_reason": reason }),
            )?;
            return Ok(Revoked {
                record: first,
                already_revoked: true,
            });
        }
        let found = self.locate(serial)?;
        if let Some(a) = asked.filter(|a| *a != found.ca) {
            return Err(mismatch(found.ca, a));
        }
        let record = RevocationRecord {
            serial_number: serial.into(),
            ca: found.ca,
            subject: found.subject,
            reason,
            revoked_at: to_rfc3339(now_whole()?),
            invalidity_date,
            revoked_by: actor.into(),
        };
        let entry = record.entry_der()?;
        let client = found.client.map(|old| {
            let mut new = old.clone();
            new.revoked_at = Some(record.revoked_at.clone());
            new.revoked_by = Some(actor.into());
            (old, new)
        });
        let mut details = json!({ "revocation": record });
        if let Some((_, new)) = &client {
            details["client"] = json!(new);
        }
        if let (Some(obj), serde_json::Value::Object(extra)) = (details.as_object_mut(), context) {
            obj.extend(extra);
        }
        auditing::record(&self.audit, actor, REVOKE_OP, serial, "ok", details)?;
        // A station or officer is refused from now on, whatever happens to
        // the store write.
        if record.ca == CaName::Internal {
            self.revoked.extend([serial.to_owned()]);
        }
        if !commit_revocation(self.store.as_ref(), &record, client.as_ref())? {
            // Stored meanwhile (not possible under the stripe lock, but the
            // store's answer is the one in force).
            let first = revs
                .get(serial)?
                .ok_or(Error::Unreachable("revocation vanished"))?;
            return Ok(Revoked {
                record: first,
                already_revoked: true,
            });
        }
        revs.took_effect(&record, &entry);
        Ok(Revoked {
            record,
            already_revoked: false,
        })
    }

    /// Revoke every certificate of a device not revoked yet.
    pub fn revoke_device(
        &self,
        caller: &Caller,
        module_serial: &str,
        req: &RevokeRequest,
    ) -> Result<Vec<Revoked>> {
        let checked = self
            .policy
            .check(caller, &policies::Action::Revoke)
            .and_then(|()| {
                let (reason, invalidity, asked) = req.parse()?;
                if asked.is_some() {
                    return Err(Error::MalformedRequest(
                        "a device revocation takes no ca: device certificates are the intermediate's"
                            .into(),
                    ));
                }
                let device = self.ca.device(module_serial)?.ok_or_else(|| {
                    Error::Ca(ca::Error::DeviceNotFound(
                        module_serial.chars().take(64).collect(),
                    ))
                })?;
                Ok((reason, invalidity, device))
            });
        let (reason, invalidity, device) = match checked {
            Ok(v) => v,
            Err(e) => return self.refuse(caller, REVOKE_OP, module_serial, e),
        };
        let mut out = Vec::new();
        for serial in &device.certificates {
            out.push(self.revoke_checked(
                caller.name(),
                serial,
                reason,
                invalidity.clone(),
                Some(CaName::Intermediate),
                json!({ "device": module_serial }),
            )?);
        }
        Ok(out)
    }

    /// Revoke many certificates at once (`kmsctl batch revoke`): one row
    /// per serial, in order, each the revocation or its error (audited
    /// like a single revocation). Eight at a time, so their audit records
    /// and store commits share fsyncs.
    pub fn revoke_many(
        &self,
        caller: &Caller,
        serials: &[String],
        req: &RevokeRequest,
    ) -> Result<Vec<serde_json::Value>> {
        let checked = self
            .policy
            .check(caller, &policies::Action::Revoke)
            .and_then(|()| {
                if serials.is_empty() || serials.len() > MAX_BATCH {
                    return Err(Error::MalformedRequest(format!(
                        "a batch holds 1 to {MAX_BATCH} serials, not {}",
                        serials.len()
                    )));
                }
                req.parse()
            });
        let (reason, invalidity, asked) = match checked {
            Ok(v) => v,
            Err(e) => return self.refuse(caller, REVOKE_OP, "batch", e),
        };
        let one = |given: &String| -> serde_json::Value {
            let outcome = normalize_serial(given).and_then(|serial| {
                self.revoke_checked(
                    caller.name(),
                    &serial,
                    reason,
                    invalidity.clone(),
                    asked,
                    json!({ "batch": true }),
                )
            });
            let outcome = match outcome {
                Err(e @ Error::Audit(_)) => Err(e),
                Err(e) => self.refuse::<Revoked>(caller, REVOKE_OP, given, e),
                ok => ok,
            };
            match outcome {
                Ok(r) => json!(r),
                Err(e) => json!({
                    "serial_number": given,
                    "error": { "code": e.code(), "message": e.to_string() },
                }),
            }
        };
        const WORKERS: usize = 8;
        let chunk = serials.len().div_ceil(WORKERS);
        let rows: Vec<Vec<serde_json::Value>> = std::thread::scope(|s| {
            let handles: Vec<_> = serials
                .chunks(chunk)
                .map(|part| s.spawn(move || part.iter().map(one).collect::<Vec<_>>()))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        let rows: Vec<_> = rows.into_iter().flatten().collect();
        if rows.len() != serials.len() {
            return Err(Error::Unreachable("a batch revocation worker panicked"));
        }
        Ok(rows)
    }

    /// The CRL of `ca`, signed now (`kmsctl crl publish`).
    pub fn publish_crl(&self, caller: &Caller, ca: CaName) -> Result<Arc<PublishedCrl>> {
        match self.policy.check(caller, &policies::Action::Revoke) {
            Ok(()) => self.revocations.publish(ca, caller.name()),
            Err(e) => self.refuse(caller, CRL_OP, ca.as_str(), e),
        }
    }
}

/// Store a revocation (and the client record it changes) in one commit. A
/// revocation already stored for the serial stands.
pub(crate) fn commit_revocation(
    store: &dyn Store,
    record: &RevocationRecord,
    client: Option<&(ClientRecord, ClientRecord)>,
) -> Result<bool> {
    fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
        serde_json::to_vec(v).map_err(|_| Error::Unreachable("record to JSON"))
    }
    let mut writes = vec![Write::Insert {
        tree: Tree::Revocations,
        key: record.serial_number.as_bytes().to_vec(),
        value: json(record)?,
    }];
    if let Some((old, new)) = client {
        writes.push(Write::Replace {
            tree: Tree::Clients,
            key: old.serial_number.as_bytes().to_vec(),
            expected: Some(json(old)?),
            value: json(new)?,
        });
    }
    match store.commit(&writes)? {
        Ok(()) => Ok(true),
        Err(c) if c.tree == Tree::Revocations => Ok(false),
        Err(c) => Err(Error::Store(store::Error::Corrupt(format!(
            "{} changed during a revocation",
            c.tree.name()
        )))),
    }
}

/// Client certificates revoked before the revocation registry existed
/// (only `revoked_at` on the client record): give each its revocation, so
/// the internal CA's CRL and OCSP agree with the TLS verifier. Returns how
/// many were adopted.
pub fn adopt_client_revocations(store: &dyn Store) -> Result<u64> {
    let mut adopted = 0;
    for c in crate::credentials::list(store)? {
        let Some(at) = c.revoked_at.clone() else {
            continue;
        };
        if store
            .get(Tree::Revocations, c.serial_number.as_bytes())?
            .is_some()
        {
            continue;
        }
        let record = RevocationRecord {
            serial_number: c.serial_number.clone(),
            ca: CaName::Internal,
            subject: c.id.clone(),
            reason: RevocationReason::Unspecified,
            revoked_at: at,
            invalidity_date: None,
            revoked_by: c.revoked_by.clone().unwrap_or_else(|| "unknown".into()),
        };
        adopted += u64::from(commit_revocation(store, &record, None)?);
    }
    Ok(adopted)
}

/// Re-apply a `certificate.revoke` record from the log whose revocation the
/// store lacks. Returns whether the store changed.
pub fn restore(store: &dyn Store, details: &serde_json::Value) -> Result<bool> {
    let Ok(record) = serde_json::from_value::<RevocationRecord>(details["revocation"].clone())
    else {
        return Ok(false);
    };
    if store
        .get(Tree::Revocations, record.serial_number.as_bytes())?
        .is_some()
    {
        return Ok(false);
    }
    let client = match serde_json::from_value::<ClientRecord>(details["client"].clone()) {
        Ok(new) => store
            .get(Tree::Clients, new.serial_number.as_bytes())?
            .and_then(|v| serde_json::from_slice::<ClientRecord>(&v).ok())
            .filter(|old| old.revoked_at.is_none())
            .map(|old| (old, new)),
        Err(_) => None,
    };
    commit_revocation(store, &record, client.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_normalized_or_refused() {
        for (given, want) in [
            ("0A1B", Some("0a1b")),
            ("0a:1b", Some("0a1b")),
            ("00ff01", Some("ff01")),
            ("abc", Some("0abc")),
            ("000000", Some("00")),
            ("7f", Some("7f")),
            (&"f".repeat(40), Some(&"f".repeat(40)[..])),
            ("", None),
            (":", None),
            ("xyz", None),
            ("12 34", None),
            ("-1", None),
            (&"f".repeat(41), None),
        ] {
            match (normalize_serial(given), want) {
                (Ok(got), Some(w)) => assert_eq!(got, w, "{given}"),
                (Err(e), None) => assert_eq!(e.code(), "malformed_request", "{given}"),
                (got, w) => panic!("{given}: {got:?}, wanted {w:?}"),
            }
        }
    }

    #[test]
    fn ca_names_round_trip() {
        for ca in CaName::ALL {
            assert_eq!(CaName::parse(ca.as_str()).ok(), Some(ca));
            assert_eq!(
                serde_json::to_string(&ca).ok(),
                Some(format!("\"{}\"", ca.as_str()))
            );
        }
        for bad in ["Root", "", "device", "intermediate.crl"] {
            assert_eq!(
                CaName::parse(bad).map_err(|e| e.code()).err(),
                Some("malformed_request")
            );
        }
    }

    #[test]
    fn revoke_requests_are_checked() {
        let req = |reason: &str, invalidity: Option<&str>, ca: Option<&str>| RevokeRequest {
            reason: reason.into(),
            invalidity_date: invalidity.map(Into::into),
            ca: ca.map(Into::into),
        };
        let (reason, invalidity, ca) = req(
            "keyCompromise",
            Some("2026-01-02T04:04:05+01:00"),
            Some("internal"),
        )
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reason, RevocationReason::KeyCompromise);
        assert_eq!(invalidity.as_deref(), Some("2026-01-02T03:04:05Z"));
        assert_eq!(ca, Some(CaName::Internal));
        for (bad, code) in [
            (
                req("certificateHold", None, None),
                "revocation_reason_invalid",
            ),
            (req("", None, None), "revocation_reason_invalid"),
            (
                req("superseded", Some("2999-01-01T00:00:00Z"), None),
                "malformed_request",
            ),
            (
                req("superseded", Some("2026-13-01T00:00:00Z"), None),
                "malformed_request",
            ),
            (req("superseded", None, Some("device")), "malformed_request"),
        ] {
            assert_eq!(
                bad.parse().map_err(|e| e.code()).err(),
                Some(code),
                "{bad:?}"
            );
        }
    }
}
