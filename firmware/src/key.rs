//! Public keys that verify manifests, and key ids. Uses only `core` and
//! `alloc`; the PEM/SPKI forms are in the `std` part.

use alloc::vec::Vec;

use sha2::Digest as _;

use crate::manifest::{SignatureAlgorithm, KEY_ID_LEN};
use crate::Error;

/// The length of a raw Ed25519 public key.
const ED25519_LEN: usize = 32;
/// The length of an uncompressed SEC1 P-256 point, `04‖X‖Y`.
const P256_LEN: usize = 65;

/// The key id of a raw public key: SHA-256 of the 32-byte Ed25519 key or of
/// the 65-byte uncompressed SEC1 P-256 point. (PKCS#11 `CKA_EC_POINT`
/// holds these bytes wrapped in a DER OCTET STRING: unwrap them first.)
pub fn key_id(public_key_raw: &[u8]) -> [u8; KEY_ID_LEN] {
    sha2::Sha256::digest(public_key_raw).into()
}

/// A manufacturer public key that manifests are checked with.
///
/// Build it with [`PublicKey::from_raw`] (or `from_pem`), which checks the
/// key. A value built directly from a variant is checked again when it is
/// used, and refused there with [`Error::KeyInvalid`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    /// A raw 32-byte Ed25519 public key.
    Ed25519([u8; ED25519_LEN]),
    /// A 65-byte uncompressed SEC1 P-256 point, `04‖X‖Y`.
    P256(Vec<u8>),
}

impl PublicKey {
    /// A key of algorithm `alg` from its raw form: 32 bytes for Ed25519 (it
    /// must decompress to a point that is not of small order), 65 bytes
    /// `04‖X‖Y` for P-256 (a point on the curve).
    pub fn from_raw(alg: SignatureAlgorithm, raw: &[u8]) -> Result<Self, Error> {
        let key = match alg {
            SignatureAlgorithm::Ed25519 => PublicKey::Ed25519(
                <[u8; ED25519_LEN]>::try_from(raw).map_err(|_| Error::KeyInvalid)?,
            ),
            SignatureAlgorithm::EcdsaP256Sha256 => PublicKey::P256(raw.to_vec()),
        };
        key.check()?;
        Ok(key)
    }

    /// The signature algorithm this key verifies.
    pub fn algorithm(&self) -> SignatureAlgorithm {
        match self {
            PublicKey::Ed25519(_) => SignatureAlgorithm::Ed25519,
            PublicKey::P256(_) => SignatureAlgorithm::EcdsaP256Sha256,
        }
    }

    /// The raw public key: 32 bytes (Ed25519) or 65 bytes (P-256).
    pub fn raw(&self) -> &[u8] {
        match self {
            PublicKey::Ed25519(k) => k,
            PublicKey::P256(k) => k,
        }
    }

    /// SHA-256 of [`PublicKey::raw`], as in a manifest's key id.
    pub fn key_id(&self) -> [u8; KEY_ID_LEN] {
        key_id(self.raw())
    }

    /// Checks that the key is usable (see [`PublicKey::from_raw`]).
    fn check(&self) -> Result<(), Error> {
        match self {
            PublicKey::Ed25519(_) => self.ed25519().map(|_| ()),
            PublicKey::P256(_) => self.p256().map(|_| ()),
        }
    }

    /// The Ed25519 verifying key; weak (small-order) keys are refused.
    pub(crate) fn ed25519(&self) -> Result<ed25519_dalek::VerifyingKey, Error> {
        let PublicKey::Ed25519(raw) = self else {
            return Err(Error::AlgorithmMismatch);
        };
        let key = ed25519_dalek::VerifyingKey::from_bytes(raw).map_err(|_| Error::KeyInvalid)?;
        if key.is_weak() {
            return Err(Error::KeyInvalid);
        }
        Ok(key)
    }

    /// The P-256 verifying key; only the uncompressed encoding is accepted.
    pub(crate) fn p256(&self) -> Result<p256::ecdsa::VerifyingKey, Error> {
        let PublicKey::P256(raw) = self else {
            return Err(Error::AlgorithmMismatch);
        };
        if raw.len() != P256_LEN || raw.first() != Some(&0x04) {
            return Err(Error::KeyInvalid);
        }
        p256::ecdsa::VerifyingKey::from_sec1_bytes(raw).map_err(|_| Error::KeyInvalid)
    }
}
