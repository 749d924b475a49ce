//! Device secrets for vBus KMS: PSKs, AES keys, wrapped-key escrow and M-of-N
//! recovery.
//!
//! Pure crate: the key-encryption key lives in the token, so escrow only sees
//! it through [`KeyWrapper`], which the appliance implements with AES-GCM in
//! the token and unit tests implement in software.
//!
//! Minting, escrow records and recovery arrive with the escrow issue.

#![forbid(unsafe_code)]

use zeroize::Zeroizing;

/// Failure inside a [`KeyWrapper`], passed through unchanged.
pub type WrapperError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A secret sealed under a key-encryption key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedBlob {
    /// Which version of the KEK sealed it (KEK rotation re-wraps blobs).
    pub kek_version: u32,
    /// The AEAD nonce.
    pub nonce: Vec<u8>,
    /// Ciphertext followed by the authentication tag.
    pub ciphertext: Vec<u8>,
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
