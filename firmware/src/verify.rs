//! The bootloader's check of a manifest and an image. Uses only `core` and
//! `alloc`.

use crate::manifest::{decode, SignatureAlgorithm, SignedManifest, SIGNATURE_LEN};
use crate::{Error, PublicKey};

/// Signature and key id check only: decodes `manifest_bytes` strictly, then
/// checks that the manifest's signature algorithm is `key`'s
/// ([`Error::AlgorithmMismatch`]), that its key id is `key`'s
/// ([`Error::KeyIdMismatch`]), and that its signature verifies over the
/// signed bytes ([`Error::SignatureInvalid`]).
///
/// * Ed25519: `ed25519-dalek`'s `verify_strict` (refuses non-canonical `S`,
///   small-order `R` and weak keys).
/// * ECDSA P-256: SHA-256 of the signed bytes, signature `r‖s` with
///   `0 < r, s < n`. Both low-`S` and high-`S` signatures are accepted
///   (PKCS#11 tokens do not normalise `S`), so for one P-256 manifest there
///   are two valid encodings (`s` and `n − s`). They carry the same signed
///   fields; do not use the manifest bytes as a unique identifier, use
///   the signed bytes or the fields.
///
/// It does not look at the image or the security version: see
/// [`verify_image`].
pub fn verify(manifest_bytes: &[u8], key: &PublicKey) -> Result<SignedManifest, Error> {
    let signed = decode(manifest_bytes)?;
    let manifest = &signed.manifest;
    if manifest.signature_algorithm != key.algorithm() {
        return Err(Error::AlgorithmMismatch);
    }
    if manifest.key_id != key.key_id() {
        return Err(Error::KeyIdMismatch);
    }
    // `decode` accepted exactly one encoding, so the signed bytes are the
    // input without its last 64 bytes (= manifest.to_be_signed()).
    let signed_len = manifest_bytes
        .len()
        .checked_sub(SIGNATURE_LEN)
        .ok_or(Error::Malformed("truncated in the signature"))?;
    let tbs = manifest_bytes
        .get(..signed_len)
        .ok_or(Error::Malformed("truncated in the signature"))?;
    check_signature(key, tbs, &signed.signature)?;
    Ok(signed)
}

/// The bootloader's whole check. [`verify`] (strict decoding, algorithm,
/// key id, signature), then:
///
/// * `image_digest`, the digest of the image computed with the manifest's
///   digest algorithm, must have that algorithm's length
///   ([`Error::DigestLength`]) and equal the manifest's digest
///   ([`Error::DigestMismatch`]; the comparison does not stop at the first
///   difference);
/// * the manifest's security version must be at least
///   `min_security_version` ([`Error::SecurityVersionTooLow`]); equal is
///   accepted.
///
/// On success, the device may run the image and raise its stored minimum
/// to the returned manifest's security version.
pub fn verify_image(
    manifest_bytes: &[u8],
    image_digest: &[u8],
    key: &PublicKey,
    min_security_version: u32,
) -> Result<SignedManifest, Error> {
    let signed = verify(manifest_bytes, key)?;
    let manifest = &signed.manifest;
    manifest.digest_algorithm.check_len(image_digest.len())?;
    if !equal(image_digest, &manifest.digest) {
        return Err(Error::DigestMismatch);
    }
    if manifest.security_version < min_security_version {
        return Err(Error::SecurityVersionTooLow {
            manifest: manifest.security_version,
            minimum: min_security_version,
        });
    }
    Ok(signed)
}

/// Verifies `signature` over `message` with `key`: pure Ed25519
/// (`verify_strict`), or ECDSA P-256 over SHA-256 of `message` with the
/// signature as r‖s. For signatures made outside a manifest, such as the
/// MCUboot image digest the appliance signs for imgtool's `--fix-sig`.
pub fn verify_message(
    key: &PublicKey,
    message: &[u8],
    signature: &[u8; SIGNATURE_LEN],
) -> Result<(), Error> {
    check_signature(key, message, signature)
}

/// Verifies `signature` over `message` with `key`.
fn check_signature(
    key: &PublicKey,
    message: &[u8],
    signature: &[u8; SIGNATURE_LEN],
) -> Result<(), Error> {
    match key.algorithm() {
        SignatureAlgorithm::Ed25519 => {
            let vk = key.ed25519()?;
            let sig = ed25519_dalek::Signature::from_bytes(signature);
            vk.verify_strict(message, &sig)
                .map_err(|_| Error::SignatureInvalid)
        }
        SignatureAlgorithm::EcdsaP256Sha256 => {
            use p256::ecdsa::signature::Verifier as _;
            let vk = key.p256()?;
            let sig = p256::ecdsa::Signature::from_slice(signature)
                .map_err(|_| Error::SignatureInvalid)?;
            vk.verify(message, &sig)
                .map_err(|_| Error::SignatureInvalid)
        }
    }
}

/// Byte-string equality that looks at every byte (lengths are public).
fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
