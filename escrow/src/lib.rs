//! Device secrets for vBus KMS: PSKs, AES keys, wrapped-key escrow and M-of-N
//! recovery.
//!
//! Pure crate: the key-encryption key lives in the token, so escrow only sees
//! it through [`KeyWrapper`], which the appliance implements with AES-GCM in
//! the token and unit tests implement in software.
//!
//! - [`EscrowRecord`]: a device secret sealed under the KEK, bound to its
//!   module serial and purpose by [`aad`], re-sealed on KEK rotation
//!   ([`EscrowRecord::rewrap`]).
//! - [`seal_to_recipient`] / [`open_as_recipient`]: recovery, the opened
//!   secret sealed to an officer's P-256 key (ECIES, layout in
//!   [`recovery`]).

#![forbid(unsafe_code)]

mod error;
mod record;
pub mod recovery;

pub use error::Error;
pub use record::{aad, check_purpose, fingerprint, EscrowRecord, SecretKind};
pub use recovery::{open_as_recipient, recipient_fingerprint, seal_to_recipient};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Failure inside a [`KeyWrapper`], passed through unchanged.
pub type WrapperError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A secret sealed under a key-encryption key.
///
/// In JSON the nonce and ciphertext are lowercase hex.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedBlob {
    /// Which version of the KEK sealed it (KEK rotation re-wraps blobs).
    pub kek_version: u32,
    /// The AEAD nonce.
    #[serde(with = "hex_bytes")]
    pub nonce: Vec<u8>,
    /// Ciphertext followed by the authentication tag.
    #[serde(with = "hex_bytes")]
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for WrappedBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrappedBlob")
            .field("kek_version", &self.kek_version)
            .field("nonce", &hex::encode(&self.nonce))
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

/// Seals and opens secrets under the current key-encryption key.
///
/// `aad` binds the blob to its context (device serial, key purpose): opening
/// it with different associated data must fail.
pub trait KeyWrapper: Send + Sync {
    /// Seal `secret` under the current KEK.
    fn wrap(&self, aad: &[u8], secret: &[u8]) -> Result<WrappedBlob, WrapperError>;

    /// Open `blob`, which must have been sealed with the same `aad`.
    fn unwrap(&self, aad: &[u8], blob: &WrappedBlob) -> Result<Zeroizing<Vec<u8>>, WrapperError>;
}

/// Serde helpers: bytes as lowercase hex strings.
mod hex_bytes {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        hex::decode(s.as_ref()).map_err(D::Error::custom)
    }
}
