//! The PKCS#11 token: the only place the appliance touches key material.
//!
//! [`Token`] is a thin facade. Sessions, logins and recovery live in `pool`,
//! key generation and lookup in `keys`, the operations in `ops`, URIs in
//! `uri`. Every public method is safe to call from many threads at once; each
//! call leases one pooled session for its duration and blocks the calling
//! thread, so async code calls it from `spawn_blocking`.
//!
//! Signing uses a session-object copy of the token private key, made once per
//! pooled session and key lookup (see [`Token::sign`]): some tokens (SoftHSM2)
//! check and reload a token object on every use, which costs about as much
//! as the signature itself.

mod data;
mod keys;
mod ops;
mod pool;
mod signers;
#[cfg(test)]
mod tests;
mod uri;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use cryptoki::context::Pkcs11;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use secrecy::SecretString;
use zeroize::Zeroizing;

pub use keys::{AesUsage, Extractable, KeyAlgorithm, KeyClass, KeyInfo, KeyPairKind};
pub use ops::{PublicKey, Sealed, GCM_IV_LEN};
pub use signers::{TokenCheckpointSigner, TokenKeyWrapper, TokenRandom, TokenSigner};
pub use uri::object_uri;

use crate::config::TokenConfig;
use crate::error::{Error, Result};
use keys::FoundKey;
pub(crate) use pool::{ck, initialize};
use pool::{Pool, PoolSettings, PooledSession, SessionCopy};

/// How long a session copy of a key may sign without the token object itself
/// being used: past this, the next signature is made with the token object,
/// which checks that it still exists. A key destroyed or a token wiped by
/// another process or tool stops signing within this time (through this
/// `Token` it stops at once). At 1,000 signatures/s one in five uses the
/// token object; at 10,000/s one in fifty.
const COPY_TRUST: Duration = Duration::from_millis(5);

/// A key in the handle cache.
#[derive(Debug)]
struct Cached {
    found: FoundKey,
    /// Unique to this lookup: session copies made from it carry it, so a copy
    /// is never used once its entry is gone or replaced.
    lookup: u64,
    /// When the token object was last found or checked by a signature made
    /// with it (nanoseconds since the token was opened); see [`COPY_TRUST`].
    seen: AtomicU64,
    /// Session copies of this key are not made: it is not copyable, or the
    /// token refused a copy.
    no_copies: AtomicBool,
}

/// How to sign with a cached key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// With the token object: no copies of this key.
    NoCopies,
    /// With the token object if the session has a copy (this signature
    /// checks the token object still exists), else make one.
    Check,
    /// With the session's copy, made now if needed.
    Copy,
}

/// A logged-in PKCS#11 token with a pool of sessions.
pub struct Token {
    pool: Pool,
    /// Object handles by class and label; handles are valid in every session
    /// of the application, so looking a key up once per process is enough.
    /// Cleared when the pool finds a handle stale or the token came back;
    /// an entry goes when its key is destroyed.
    keys: RwLock<[HashMap<String, Cached>; 3]>,
    /// The next `Cached::lookup`.
    lookups: AtomicU64,
    /// The origin of `Cached::seen`.
    opened: Instant,
    /// Latency of each operation through the pool, retries included.
    op_latency: crate::metrics::Histogram,
    /// Operations that failed after the retries.
    op_errors: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("label", &self.pool.label())
            .finish_non_exhaustive()
    }
}

impl Token {
    /// Load the module, initialise it, find the token by label and log in.
    ///
    /// Fails with a precise error if the module is not a PKCS#11 library, the
    /// token is absent or the PIN is refused. `pin` is dropped (zeroized)
    /// with the token.
    pub fn open(cfg: &TokenConfig, pin: SecretString) -> Result<Self> {
        let pkcs11 = Pkcs11::new(&cfg.module).map_err(|e| Error::ModuleLoad {
            path: cfg.module.clone(),
            reason: e.to_string(),
        })?;
        let settings = PoolSettings {
            label: cfg.label.clone(),
            module: cfg.module.clone(),
            size: cfg.pool_size,
            retries: cfg.retries,
            backoff: Duration::from_millis(cfg.retry_backoff_ms),
            acquire_timeout: Duration::from_millis(cfg.acquire_timeout_ms),
        };
        Ok(Token {
            pool: Pool::open(pkcs11, pin, settings)?,
            keys: RwLock::new(Default::default()),
            lookups: AtomicU64::new(0),
            opened: Instant::now(),
            op_latency: Default::default(),
            op_errors: Default::default(),
        })
    }

    /// The token's label.
    pub fn label(&self) -> &str {
        self.pool.label()
    }

    /// The loaded PKCS#11 library. An escape hatch for benchmarks and fault
    /// tests that must reach the module beside the pool; the service never
    /// uses it.
    pub fn pkcs11(&self) -> &Pkcs11 {
        self.pool.pkcs11()
    }

    /// The slot the token is in now.
    pub fn slot(&self) -> Result<Slot> {
        self.pool.slot()
    }

    fn forget_handles(&self) {
        if let Ok(mut k) = self.keys.write() {
            k.iter_mut().for_each(HashMap::clear);
        }
    }

    /// Run `op` on a pooled session with recovery (see `pool`).
    fn run<T>(&self, op: impl FnMut(&mut PooledSession) -> Result<T>) -> Result<T> {
        let started = std::time::Instant::now();
        let out = self.pool.run(op, || self.forget_handles());
        self.op_latency.observe(started.elapsed());
        if out.is_err() {
            self.op_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        out
    }

    /// (sessions leased now, sessions open) in the pool.
    pub fn sessions(&self) -> (usize, usize) {
        self.pool.sessions()
    }

    /// Latency of token operations through the pool.
    pub fn op_latency(&self) -> &crate::metrics::Histogram {
        &self.op_latency
    }

    /// Token operations that failed after the retries.
    pub fn op_errors(&self) -> u64 {
        self.op_errors.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Nanoseconds since the token was opened, for `Cached::seen`.
    fn now(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Look up a token key through the handle cache and pass its entry to
    /// `f`.
    fn with_cached<R>(
        &self,
        session: &Session,
        label: &str,
        class: KeyClass,
        f: impl FnOnce(&Cached) -> R,
    ) -> Result<R> {
        let slot = class as usize;
        if let Ok(k) = self.keys.read() {
            if let Some(c) = k[slot].get(label) {
                return Ok(f(c));
            }
        }
        let found = keys::find(session, label, class)?;
        let fresh = Cached {
            found,
            lookup: self.lookups.fetch_add(1, Ordering::Relaxed),
            seen: AtomicU64::new(self.now()),
            no_copies: AtomicBool::new(!found.copyable),
        };
        match self.keys.write() {
            // Another thread may have looked it up meanwhile: keep the first.
            Ok(mut k) => Ok(f(k[slot].entry(label.to_owned()).or_insert(fresh))),
            // Not cached, so a copy made from it would never be used again.
            Err(_) => {
                fresh.no_copies.store(true, Ordering::Relaxed);
                Ok(f(&fresh))
            }
        }
    }

    /// Look up a token key, through the handle cache.
    fn find(&self, session: &Session, label: &str, class: KeyClass) -> Result<FoundKey> {
        self.with_cached(session, label, class, |c| c.found)
    }

    /// Drop the cache entry of one key (it was destroyed): its session
    /// copies are never used again.
    fn forget_key(&self, label: &str, class: KeyClass) {
        if let Ok(mut k) = self.keys.write() {
            k[class as usize].remove(label);
        }
    }

    /// The private key labelled `label` as `session` should sign with it:
    /// the session's copy of the token object, made on first use in this
    /// session for this lookup; or the token object itself when copies are
    /// not allowed or refused, or when the token object was not used for
    /// [`COPY_TRUST`] (this signature then checks it still exists; making a
    /// copy checks it too).
    ///
    /// A refused copy (any error the pool would not recover from) is logged
    /// once at debug level and the key is used from the token from then on;
    /// nothing is ever created outside the token.
    fn signing_key(&self, session: &mut PooledSession, label: &str) -> Result<FoundKey> {
        let (found, lookup, plan) = self.with_cached(session, label, KeyClass::Private, |c| {
            let plan = if c.no_copies.load(Ordering::Relaxed) {
                Plan::NoCopies
            } else {
                let (now, seen) = (self.now(), c.seen.load(Ordering::Relaxed));
                let stale = now.saturating_sub(seen) >= COPY_TRUST.as_nanos() as u64;
                // One signature per period checks; the others go on with
                // their copies.
                if stale
                    && c.seen
                        .compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    Plan::Check
                } else {
                    Plan::Copy
                }
            };
            (c.found, c.lookup, plan)
        })?;
        if plan == Plan::NoCopies {
            return Ok(found);
        }
        let (s, copies) = session.split();
        match copies.get(label).filter(|c| c.lookup == lookup) {
            Some(_) if plan == Plan::Check => return Ok(found),
            Some(copy) => {
                return Ok(FoundKey {
                    handle: copy.handle,
                    ..found
                })
            }
            None => {}
        }
        self.sweep_copies(s, copies);
        match keys::session_copy(s, found.handle) {
            Ok(handle) => {
                copies.insert(label.to_owned(), SessionCopy { lookup, handle });
                Ok(FoundKey { handle, ..found })
            }
            Err(Error::Pkcs11 { function, rv }) if pool::recoverable(rv) => {
                Err(Error::Pkcs11 { function, rv })
            }
            Err(e) => {
                let first = self.with_cached(s, label, KeyClass::Private, |c| {
                    c.lookup == lookup && !c.no_copies.swap(true, Ordering::Relaxed)
                });
                if first.unwrap_or(false) {
                    if let Error::TokenProtocol(_) = e {
                        // The token broke a PKCS#11 rule: worth a look.
                        tracing::warn!(token = %self.label(), key = label, error = %e, "session copy refused; signing with the token object");
                    } else {
                        tracing::debug!(token = %self.label(), key = label, error = %e, "the token refuses session copies of this key; signing with the token object");
                    }
                }
                Ok(found)
            }
        }
    }

    /// Forget the session copies in `copies` whose lookup is no longer
    /// cached (key destroyed, handles forgotten): they would never be used.
    /// Each is destroyed if its handle still names an unlabelled session
    /// private key: it may be gone already (destroyed with its key, or by a
    /// logout) and its handle number reused, and a token object is never
    /// destroyed here.
    fn sweep_copies(&self, session: &Session, copies: &mut HashMap<String, SessionCopy>) {
        let live: Vec<u64> = match self.keys.read() {
            Ok(k) => k[KeyClass::Private as usize]
                .values()
                .map(|c| c.lookup)
                .collect(),
            Err(_) => return,
        };
        copies.retain(|_, c| {
            if live.contains(&c.lookup) {
                return true;
            }
            let still_a_copy = session
                .get_attributes(
                    c.handle,
                    &[
                        AttributeType::Class,
                        AttributeType::Token,
                        AttributeType::Label,
                    ],
                )
                .is_ok_and(|a| {
                    a.contains(&Attribute::Class(ObjectClass::PRIVATE_KEY))
                        && a.contains(&Attribute::Token(false))
                        && a.contains(&Attribute::Label(Vec::new()))
                });
            if still_a_copy {
                if let Err(e) = session.destroy_object(c.handle) {
                    tracing::debug!(error = %e, "cannot destroy a stale session copy");
                }
            }
            false
        });
    }

    fn ensure_absent(&self, session: &Session, label: &str, class: KeyClass) -> Result<()> {
        match keys::find(session, label, class) {
            Err(Error::KeyNotFound { .. }) => Ok(()),
            Ok(_) | Err(Error::WrongKeyType { .. }) => Err(Error::KeyExists {
                label: label.to_owned(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Generate a key pair in the token (see `keys` for its attributes) and
    /// return what the token says about the private key.
    pub fn generate_key_pair(&self, kind: KeyPairKind, label: &str) -> Result<KeyInfo> {
        check_label(label)?;
        let id = self.random(keys::ID_LEN)?;
        self.run(|s| {
            self.ensure_absent(s, label, KeyClass::Private)?;
            let (_, private) = keys::generate_key_pair(s, kind, label, &id)?;
            keys::info(s, self.label(), private)
        })
    }

    /// A P-256 key pair generated by the token for a device without a
    /// secure element (`POST /v1/devices/{serial}/keypair`): the private
    /// scalar (32 bytes, zeroized on drop) and the uncompressed public
    /// point. Both token objects are session objects, destroyed before this
    /// returns.
    pub fn generate_device_p256(&self) -> Result<(zeroize::Zeroizing<Vec<u8>>, Vec<u8>)> {
        self.run(|s| {
            let (public, private) = keys::generate_exportable_p256(s)?;
            let read = (|| {
                let value = s
                    .get_attributes(private, &[cryptoki::object::AttributeType::Value])
                    .map_err(pool::ck)?
                    .into_iter()
                    .find_map(|a| match a {
                        cryptoki::object::Attribute::Value(v) => Some(zeroize::Zeroizing::new(v)),
                        _ => None,
                    })
                    .ok_or_else(|| Error::TokenProtocol("private key value not returned".into()))?;
                let point = ops::public_key(s, public, keys::KeyAlgorithm::EcP256, "device key")?;
                Ok::<_, Error>((value, point.raw))
            })();
            let gone = s.destroy_object(private).and(s.destroy_object(public));
            let (mut value, raw) = read?;
            gone.map_err(pool::ck)?;
            // Some tokens return the scalar without leading zero bytes.
            if value.len() < 32 {
                let mut padded = zeroize::Zeroizing::new(vec![0u8; 32 - value.len()]);
                padded.extend_from_slice(&value);
                value = padded;
            }
            if value.len() != 32 {
                return Err(Error::TokenProtocol(format!(
                    "P-256 private value of {} bytes",
                    value.len()
                )));
            }
            Ok((value, raw))
        })
    }

    /// Generate an AES-256 key for one usage and return its attributes.
    pub fn generate_aes_key(
        &self,
        usage: AesUsage,
        extractable: Extractable,
        label: &str,
    ) -> Result<KeyInfo> {
        check_label(label)?;
        let id = self.random(keys::ID_LEN)?;
        self.run(|s| {
            self.ensure_absent(s, label, KeyClass::Secret)?;
            let key = keys::generate_aes(s, usage, extractable, label, &id)?;
            keys::info(s, self.label(), key)
        })
    }

    /// Attributes of the key of `class` labelled `label`.
    pub fn key_info(&self, label: &str, class: KeyClass) -> Result<KeyInfo> {
        self.run(|s| {
            let k = self.find(s, label, class)?;
            keys::info(s, self.label(), k.handle)
        })
    }

    /// Every private and secret key on the token.
    pub fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        self.run(|s| {
            keys::all_keys(s)?
                .into_iter()
                .map(|h| keys::info(s, self.label(), h))
                .collect()
        })
    }

    /// Number of private and secret keys on the token (for health checks).
    pub fn key_count(&self) -> Result<usize> {
        self.run(|s| Ok(keys::all_keys(s)?.len()))
    }

    /// The public half of the key pair labelled `label`.
    pub fn public_key(&self, label: &str) -> Result<PublicKey> {
        self.run(|s| {
            let k = self.find(s, label, KeyClass::Public)?;
            ops::public_key(s, k.handle, k.algorithm, label)
        })
    }

    /// Sign `message` with the private key labelled `label`: ECDSA P-256 over
    /// SHA-256 (DER `ECDSA-Sig-Value`) or pure Ed25519 (64 bytes).
    ///
    /// Signs with a session copy of the key where the token allows one (see
    /// `signing_key`).
    pub fn sign(&self, label: &str, message: &[u8]) -> Result<Vec<u8>> {
        self.run(|s| {
            let k = self.signing_key(s, label)?;
            ops::sign(s, k.handle, k.algorithm, label, message)
        })
    }

    /// Wrap the secret key `key_label` under `wrapping_label` with AES key
    /// wrap with padding (RFC 5649).
    pub fn wrap_key(&self, wrapping_label: &str, key_label: &str) -> Result<Vec<u8>> {
        self.run(|s| {
            let w = self.find(s, wrapping_label, KeyClass::Secret)?;
            let k = self.find(s, key_label, KeyClass::Secret)?;
            ops::wrap(s, (w.handle, w.algorithm, wrapping_label), k.handle)
        })
    }

    /// Unwrap an AES key wrapped by [`Token::wrap_key`] into a new token key
    /// labelled `label`, sensitive and never extractable, for `usage`.
    pub fn unwrap_aes_key(
        &self,
        wrapping_label: &str,
        blob: &[u8],
        usage: AesUsage,
        label: &str,
    ) -> Result<KeyInfo> {
        check_label(label)?;
        let id = self.random(keys::ID_LEN)?;
        let wrap = usage == AesUsage::Wrap;
        self.run(|s| {
            self.ensure_absent(s, label, KeyClass::Secret)?;
            let w = self.find(s, wrapping_label, KeyClass::Secret)?;
            let template = [
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(id.clone()),
                Attribute::Wrap(wrap),
                Attribute::Unwrap(wrap),
                Attribute::Encrypt(!wrap),
                Attribute::Decrypt(!wrap),
            ];
            let h = ops::unwrap_aes(s, (w.handle, w.algorithm, wrapping_label), blob, &template)?;
            keys::info(s, self.label(), h)
        })
    }

    /// AES-256-GCM encrypt with a fresh random nonce from the token RNG.
    pub fn gcm_encrypt(&self, key_label: &str, aad: &[u8], plaintext: &[u8]) -> Result<Sealed> {
        // Nonce and encryption on one leased session, not two.
        self.run(|s| {
            let mut iv = [0u8; GCM_IV_LEN];
            s.generate_random_slice(&mut iv).map_err(ck)?;
            let k = self.find(s, key_label, KeyClass::Secret)?;
            ops::gcm_encrypt(s, (k.handle, k.algorithm, key_label), iv, aad, plaintext)
        })
    }

    /// AES-256-GCM decrypt; fails with `IntegrityCheckFailed` if the
    /// ciphertext, nonce or associated data differ from what was sealed.
    pub fn gcm_decrypt(
        &self,
        key_label: &str,
        sealed: &Sealed,
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        self.run(|s| {
            let k = self.find(s, key_label, KeyClass::Secret)?;
            ops::gcm_decrypt(s, (k.handle, k.algorithm, key_label), sealed, aad)
        })
    }

    /// The values of the appliance data objects labelled `label` (one,
    /// or two after a crash mid-replace; none if never written).
    pub fn read_data(&self, label: &str) -> Result<Vec<Vec<u8>>> {
        self.run(|s| data::read(s, label))
    }

    /// Store `value` as the appliance data object labelled `label`.
    pub fn replace_data(&self, label: &str, value: &[u8]) -> Result<()> {
        check_label(label)?;
        self.run(|s| data::replace(s, label, value))
    }

    /// Destroy the key of `class` labelled `label` (an escrow KEK after its
    /// rotation).
    ///
    /// Its session copies stop signing at once (their cache entry goes) and
    /// are destroyed where this session can see them (on SoftHSM2, in every
    /// session of the process); any left die with their session.
    pub fn destroy_key(&self, label: &str, class: KeyClass) -> Result<()> {
        self.run(|s| {
            let k = self.find(s, label, class)?;
            let id = match class {
                KeyClass::Private => keys::info(s, self.label(), k.handle)?.id,
                _ => Vec::new(),
            };
            s.destroy_object(k.handle).map_err(ck)?;
            self.forget_key(label, class);
            if !id.is_empty() {
                let copies = keys::session_copies(s, &id).unwrap_or_default();
                for copy in copies {
                    if let Err(e) = s.destroy_object(copy) {
                        tracing::debug!(key = label, error = %e, "cannot destroy a session copy of a destroyed key");
                    }
                }
            }
            Ok(())
        })
    }

    /// Fill `buf` from the token's random number generator.
    pub fn fill_random(&self, buf: &mut [u8]) -> Result<()> {
        self.run(|s| s.generate_random_slice(buf).map_err(ck))
    }

    /// `len` bytes from the token's random number generator.
    pub fn random(&self, len: usize) -> Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.fill_random(&mut v)?;
        Ok(v)
    }
}

/// Labels are free text for PKCS#11, but ours end up in URIs, logs and
/// config files: keep them printable and short.
fn check_label(label: &str) -> Result<()> {
    let ok = !label.is_empty()
        && label.len() <= 64
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "key label {label:?} must be 1 to 64 characters of A-Z a-z 0-9 - . _"
        )))
    }
}
