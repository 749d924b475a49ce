//! The escrow error type.

use crate::WrapperError;

/// Everything that can go wrong in escrow and recovery.
///
/// No variant carries secret material: messages name what failed, never the
/// bytes involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The purpose is not 1–32 characters of `[a-z0-9_-]` (the value, escaped
    /// and shortened).
    #[error("invalid purpose {0}: expected 1-32 characters of [a-z0-9_-]")]
    Purpose(String),
    /// The key wrapper (the token) failed to wrap or unwrap; a wrong KEK
    /// version or a blob that does not authenticate under its AAD lands here.
    #[error("key wrapper failed: {0}")]
    Wrapper(#[source] WrapperError),
    /// The wrapper sealed a secret that did not open to the same bytes.
    #[error("key wrapper failed: the new blob does not open to the sealed secret")]
    SealVerify,
    /// The opened secret does not match the fingerprint in the record.
    #[error("escrowed secret does not match its recorded fingerprint")]
    FingerprintMismatch,
    /// KEK rotation: the blob sealed under the new KEK did not open to the
    /// same secret; the record was not changed.
    #[error("re-wrapped blob does not open to the original secret")]
    RewrapVerify,
    /// The recipient (officer) key is unreadable, of the wrong kind, or not
    /// on P-256.
    #[error("recipient key: {0}")]
    RecipientKey(String),
    /// A recovery blob that does not follow the layout (which part).
    #[error("recovery blob malformed: {0}")]
    SealedMalformed(&'static str),
    /// A recovery blob that does not open: wrong key, wrong context or
    /// tampered.
    #[error("recovery blob does not open (wrong key, wrong context or tampered)")]
    Decrypt,
    /// A broken internal invariant (a bug), naming the step.
    #[error("internal error: {0}")]
    Unreachable(&'static str),
}

impl Error {
    /// The stable snake_case code for API errors and audit records.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Purpose(_) => "purpose_invalid",
            Error::Wrapper(_) | Error::SealVerify => "escrow_wrapper_failed",
            Error::FingerprintMismatch => "escrow_fingerprint_mismatch",
            Error::RewrapVerify => "escrow_rewrap_failed",
            Error::RecipientKey(_) => "recipient_key_invalid",
            Error::SealedMalformed(_) => "recovery_blob_malformed",
            Error::Decrypt => "recovery_decrypt_failed",
            Error::Unreachable(_) => "internal_error",
        }
    }
}
