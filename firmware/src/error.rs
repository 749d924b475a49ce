//! The one error type of the `firmware` crate.

use core::fmt;

/// Why a manifest, a key or an image was refused. Each variant has a stable
/// snake_case code ([`Error::code`]) that the appliance and the station print.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The bytes (or the JSON form) do not have the documented layout; the
    /// text says which part is wrong.
    Malformed(&'static str),
    /// A signature or digest algorithm number the layout does not define.
    UnsupportedAlgorithm(u8),
    /// The product is not 1–64 bytes of `[A-Za-z0-9._-]`.
    InvalidProduct,
    /// The version is not 1–64 bytes of printable ASCII without space
    /// (0x21–0x7e).
    InvalidVersion,
    /// A digest whose length does not match its algorithm (32 bytes for
    /// SHA-256, 64 for SHA-512).
    DigestLength {
        /// The length the algorithm produces.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// A public key that cannot be used: wrong length or encoding, not a
    /// point on the curve, a weak (small-order) Ed25519 key, or an SPKI of
    /// another algorithm or curve.
    KeyInvalid,
    /// The manifest's key id is not the id of the key it is checked with.
    KeyIdMismatch,
    /// The manifest's signature algorithm is not the algorithm of the key it
    /// is checked with.
    AlgorithmMismatch,
    /// The signature does not verify over the manifest with the key.
    SignatureInvalid,
    /// The image's digest is not the digest the manifest names.
    DigestMismatch,
    /// The manifest's security version is below the stored minimum
    /// (anti-rollback).
    SecurityVersionTooLow {
        /// The manifest's security version.
        manifest: u32,
        /// The minimum the device accepts.
        minimum: u32,
    },
}

impl Error {
    /// The stable snake_case code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Malformed(_) => "manifest_malformed",
            Error::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            Error::InvalidProduct => "invalid_product",
            Error::InvalidVersion => "invalid_version",
            Error::DigestLength { .. } => "digest_length_invalid",
            Error::KeyInvalid => "public_key_invalid",
            Error::KeyIdMismatch => "key_id_mismatch",
            Error::AlgorithmMismatch => "algorithm_mismatch",
            Error::SignatureInvalid => "manifest_signature_invalid",
            Error::DigestMismatch => "image_digest_mismatch",
            Error::SecurityVersionTooLow { .. } => "security_version_too_low",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Malformed(what) => write!(f, "malformed firmware manifest: {what}"),
            Error::UnsupportedAlgorithm(n) => {
                write!(
                    f,
                    "unsupported algorithm number {n} in the firmware manifest"
                )
            }
            Error::InvalidProduct => {
                f.write_str("firmware product must be 1-64 characters of [A-Za-z0-9._-]")
            }
            Error::InvalidVersion => f.write_str(
                "firmware version must be 1-64 printable ASCII characters without space",
            ),
            Error::DigestLength { expected, got } => write!(
                f,
                "image digest is {got} bytes; the digest algorithm gives {expected}"
            ),
            Error::KeyInvalid => {
                f.write_str("public key is not a valid Ed25519 or P-256 (uncompressed point) key")
            }
            Error::KeyIdMismatch => {
                f.write_str("manifest was not signed by this key (key id differs)")
            }
            Error::AlgorithmMismatch => {
                f.write_str("manifest's signature algorithm is not the key's algorithm")
            }
            Error::SignatureInvalid => {
                f.write_str("manifest signature does not verify (manifest altered or wrong key)")
            }
            Error::DigestMismatch => f.write_str(
                "image digest does not match the manifest (image altered or wrong image)",
            ),
            Error::SecurityVersionTooLow { manifest, minimum } => write!(
                f,
                "security version {manifest} is below the minimum {minimum} (rollback refused)"
            ),
        }
    }
}
