//! Hash-chained, append-only audit log for vBus KMS, with signed checkpoints
//! and an offline verifier.
//!
//! Pure crate: the checkpoint key lives in the token, so the log only sees it
//! through [`CheckpointSigner`], which the appliance implements on an Ed25519
//! token key and unit tests implement in software.
//!
//! The log itself (records, segments, group commit, verifier) arrives with the
//! audit issue.

#![forbid(unsafe_code)]

/// Failure inside a [`CheckpointSigner`], passed through unchanged.
pub type SignerError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The key that signs checkpoints (C2SP signed notes, Ed25519).
pub trait CheckpointSigner: Send + Sync {
    /// The 32-byte Ed25519 public key, for the C2SP verifier key line.
    fn public_key(&self) -> [u8; 32];

    /// Sign `message` (the note text) and return the 64-byte signature.
    fn sign(&self, message: &[u8]) -> Result<[u8; 64], SignerError>;
}
