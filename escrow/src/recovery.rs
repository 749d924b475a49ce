//! Recovery: a secret sealed to an officer's P-256 public key (ECIES).
//!
//! Construction, all standard primitives (an OpenSSL test reproduces it):
//!
//! 1. a fresh ephemeral P-256 key; ECDH with the recipient key gives the
//!    shared secret `Z` (the x-coordinate, 32 bytes, as in SEC 1 and
//!    `openssl pkeyutl -derive`);
//! 2. `key = HKDF-SHA256(ikm = Z, salt = E ++ R, info =
//!    "vbus-kms/escrow/recovery/v1\0" ++ context)`, 32 bytes, where `E` and
//!    `R` are the ephemeral and recipient public keys as 65-byte uncompressed
//!    SEC 1 points;
//! 3. AES-256-GCM under `key` with a random 12-byte nonce and associated data
//!    `context`.
//!
//! Sealed layout (offsets in bytes):
//!
//! | offset | length | content                                        |
//! |-------:|-------:|------------------------------------------------|
//! | 0      | 4      | magic `b"VBER"`                                |
//! | 4      | 1      | version, `1`                                   |
//! | 5      | 65     | ephemeral public key `E`, uncompressed (`04…`) |
//! | 70     | 12     | AES-GCM nonce                                  |
//! | 82     | n + 16 | ciphertext of the n-byte plaintext, then tag   |
//!
//! The header is not associated data, but `E` is bound through the HKDF salt,
//! and a different magic or version is refused before any decryption.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use p256::ecdh::EphemeralSecret;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::der::pem;
use p256::pkcs8::spki::AlgorithmIdentifierRef;
use p256::pkcs8::{
    AssociatedOid, DecodePrivateKey, DecodePublicKey, EncodePublicKey, ObjectIdentifier,
    PrivateKeyInfo, SubjectPublicKeyInfoRef,
};
use p256::{NistP256, PublicKey, SecretKey};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::Error;

/// Magic at the start of a sealed recovery blob.
pub const MAGIC: &[u8; 4] = b"VBER";
/// The layout version written and accepted.
pub const VERSION: u8 = 1;
/// Length of an uncompressed P-256 point.
pub const POINT_LEN: usize = 65;
/// Length of the AES-GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Length of the AES-GCM tag.
pub const TAG_LEN: usize = 16;
/// Offset of the ephemeral public key.
pub const POINT_OFFSET: usize = MAGIC.len() + 1;
/// Offset of the nonce.
pub const NONCE_OFFSET: usize = POINT_OFFSET + POINT_LEN;
/// Offset of the ciphertext (followed by the tag).
pub const CIPHERTEXT_OFFSET: usize = NONCE_OFFSET + NONCE_LEN;
/// HKDF info prefix; the context follows it.
pub const INFO_PREFIX: &[u8] = b"vbus-kms/escrow/recovery/v1\0";

/// `id-ecPublicKey`, the SPKI / PKCS#8 algorithm of EC keys.
const EC_PUBLIC_KEY: ObjectIdentifier = p256::elliptic_curve::ALGORITHM_OID;

/// Seal `plaintext` to the recipient's P-256 public key (SPKI, PEM
/// `PUBLIC KEY` or DER), bound to `context`. Layout in the [module
/// docs](self).
pub fn seal_to_recipient(
    recipient_public_pem_or_der: &[u8],
    context: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    let recipient = parse_public(recipient_public_pem_or_der)?;
    let ephemeral = EphemeralSecret::random(&mut OsRng);
    let ephemeral_point = ephemeral.public_key().to_encoded_point(false);
    let shared = ephemeral.diffie_hellman(&recipient);
    let cipher = cipher(
        shared.raw_secret_bytes(),
        ephemeral_point.as_bytes(),
        &recipient,
        context,
    )?;

    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);

    // The plaintext is copied into the output buffer and encrypted in place;
    // the buffer zeroizes if anything fails before it becomes ciphertext.
    let mut out = Zeroizing::new(Vec::with_capacity(
        CIPHERTEXT_OFFSET + plaintext.len() + TAG_LEN,
    ));
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(ephemeral_point.as_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    if out.len() != CIPHERTEXT_OFFSET + plaintext.len() {
        return Err(Error::Unreachable("recovery header length"));
    }
    let tag = cipher
        .encrypt_in_place_detached(&Nonce::from(nonce), context, &mut out[CIPHERTEXT_OFFSET..])
        .map_err(|_| Error::Unreachable("AES-GCM encryption"))?;
    out.extend_from_slice(&tag);
    Ok(std::mem::take(&mut *out))
}

/// Open a blob from [`seal_to_recipient`] with the recipient's private key:
/// PKCS#8 PEM (`PRIVATE KEY`), SEC 1 PEM (`EC PRIVATE KEY`), PKCS#8 DER or
/// SEC 1 DER, on P-256. `context` must be the one it was sealed with.
pub fn open_as_recipient(
    recipient_secret_pem_or_der: &[u8],
    context: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Error> {
    if sealed.len() < MAGIC.len() || &sealed[..MAGIC.len()] != MAGIC {
        return Err(Error::SealedMalformed("bad magic"));
    }
    match sealed.get(MAGIC.len()) {
        None => return Err(Error::SealedMalformed("truncated before the version")),
        Some(&VERSION) => {}
        Some(_) => return Err(Error::SealedMalformed("unsupported version")),
    }
    if sealed.len() < CIPHERTEXT_OFFSET + TAG_LEN {
        return Err(Error::SealedMalformed("truncated"));
    }
    let ephemeral_bytes = &sealed[POINT_OFFSET..NONCE_OFFSET];
    if ephemeral_bytes[0] != 0x04 {
        return Err(Error::SealedMalformed(
            "ephemeral key is not an uncompressed point",
        ));
    }
    let ephemeral = PublicKey::from_sec1_bytes(ephemeral_bytes)
        .map_err(|_| Error::SealedMalformed("ephemeral key is not on P-256"))?;
    let nonce: [u8; NONCE_LEN] = sealed[NONCE_OFFSET..CIPHERTEXT_OFFSET]
        .try_into()
        .map_err(|_| Error::Unreachable("nonce slice length"))?;
    let (ciphertext, tag) =
        sealed[CIPHERTEXT_OFFSET..].split_at(sealed.len() - CIPHERTEXT_OFFSET - TAG_LEN);
    let tag: [u8; TAG_LEN] = tag
        .try_into()
        .map_err(|_| Error::Unreachable("tag slice length"))?;

    let secret = parse_secret(recipient_secret_pem_or_der)?;
    let recipient = secret.public_key();
    let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), ephemeral.as_affine());
    let cipher = cipher(
        shared.raw_secret_bytes(),
        ephemeral_bytes,
        &recipient,
        context,
    )?;

    let mut plaintext = Zeroizing::new(ciphertext.to_vec());
    cipher
        .decrypt_in_place_detached(
            &Nonce::from(nonce),
            context,
            &mut plaintext,
            &aes_gcm::Tag::from(tag),
        )
        .map_err(|_| Error::Decrypt)?;
    Ok(plaintext)
}

/// SHA-256 of the recipient public key's SPKI DER, lowercase hex (shown to
/// approvers so they know whom the key goes to).
///
/// The SPKI is re-encoded from the parsed key with the point uncompressed,
/// so the same key always has the same fingerprint; it equals
/// `openssl pkey -pubin -outform DER | sha256sum` of the officer's key.
pub fn recipient_fingerprint(recipient_public_pem_or_der: &[u8]) -> Result<String, Error> {
    let key = parse_public(recipient_public_pem_or_der)?;
    let der = key
        .to_public_key_der()
        .map_err(|_| Error::Unreachable("SPKI encoding"))?;
    Ok(hex::encode(Sha256::digest(der.as_bytes())))
}

/// HKDF-SHA256 from the ECDH secret to the AES-256-GCM cipher.
fn cipher(
    shared_x: &[u8],
    ephemeral_point: &[u8],
    recipient: &PublicKey,
    context: &[u8],
) -> Result<Aes256Gcm, Error> {
    let recipient_point = recipient.to_encoded_point(false);
    let mut salt = Vec::with_capacity(2 * POINT_LEN);
    salt.extend_from_slice(ephemeral_point);
    salt.extend_from_slice(recipient_point.as_bytes());
    if salt.len() != 2 * POINT_LEN {
        return Err(Error::Unreachable("HKDF salt length"));
    }
    let mut info = Vec::with_capacity(INFO_PREFIX.len() + context.len());
    info.extend_from_slice(INFO_PREFIX);
    info.extend_from_slice(context);

    let mut key = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(&salt), shared_x)
        .expand(&info, key.as_mut())
        .map_err(|_| Error::Unreachable("HKDF expand"))?;
    Aes256Gcm::new_from_slice(key.as_ref()).map_err(|_| Error::Unreachable("AES key length"))
}

/// Whether `input` looks like PEM rather than DER.
fn is_pem(input: &[u8]) -> bool {
    input.trim_ascii_start().starts_with(b"-----BEGIN ")
}

/// Check that an SPKI / PKCS#8 algorithm identifier names an EC key on P-256.
fn check_p256(algorithm: &AlgorithmIdentifierRef<'_>) -> Result<(), Error> {
    if algorithm.oid != EC_PUBLIC_KEY {
        return Err(Error::RecipientKey(format!(
            "not an EC key (algorithm {}), need P-256",
            algorithm.oid
        )));
    }
    match algorithm.parameters_oid() {
        Ok(curve) if curve == NistP256::OID => Ok(()),
        Ok(curve) => Err(Error::RecipientKey(format!(
            "EC key on curve {curve}, need P-256"
        ))),
        Err(_) => Err(Error::RecipientKey("EC key without a named curve".into())),
    }
}

/// Parse an SPKI public key (PEM `PUBLIC KEY` or DER) on P-256.
fn parse_public(input: &[u8]) -> Result<PublicKey, Error> {
    let der_owned;
    let der: &[u8] = if is_pem(input) {
        let (label, der) = pem::decode_vec(input.trim_ascii())
            .map_err(|_| Error::RecipientKey("unreadable PEM".into()))?;
        if label != "PUBLIC KEY" {
            return Err(Error::RecipientKey(format!(
                "PEM label {label:?}, expected \"PUBLIC KEY\""
            )));
        }
        der_owned = der;
        &der_owned
    } else {
        input
    };
    let spki = SubjectPublicKeyInfoRef::try_from(der)
        .map_err(|_| Error::RecipientKey("not a SubjectPublicKeyInfo".into()))?;
    check_p256(&spki.algorithm)?;
    PublicKey::from_public_key_der(der)
        .map_err(|_| Error::RecipientKey("not a valid P-256 public key".into()))
}

/// Parse a P-256 private key: PKCS#8 PEM, SEC 1 PEM, PKCS#8 DER or SEC 1
/// DER (what `openssl pkey -outform DER` writes for EC keys). Error messages
/// never quote the key.
fn parse_secret(input: &[u8]) -> Result<SecretKey, Error> {
    if !is_pem(input) {
        if PrivateKeyInfo::try_from(input).is_ok() {
            return parse_pkcs8(input);
        }
        return SecretKey::from_sec1_der(input)
            .map_err(|_| Error::RecipientKey("not a PKCS#8 or SEC 1 P-256 private key".into()));
    }
    let (label, der) = pem::decode_vec(input.trim_ascii())
        .map_err(|_| Error::RecipientKey("unreadable PEM".into()))?;
    let der = Zeroizing::new(der);
    match label {
        "PRIVATE KEY" => parse_pkcs8(&der),
        "EC PRIVATE KEY" => SecretKey::from_sec1_der(&der)
            .map_err(|_| Error::RecipientKey("not a valid SEC 1 P-256 private key".into())),
        other => Err(Error::RecipientKey(format!(
            "PEM label {other:?}, expected \"PRIVATE KEY\" or \"EC PRIVATE KEY\""
        ))),
    }
}

/// Parse a PKCS#8 DER private key on P-256.
fn parse_pkcs8(der: &[u8]) -> Result<SecretKey, Error> {
    let info = PrivateKeyInfo::try_from(der)
        .map_err(|_| Error::RecipientKey("not a PKCS#8 private key".into()))?;
    check_p256(&info.algorithm)?;
    SecretKey::from_pkcs8_der(der)
        .map_err(|_| Error::RecipientKey("not a valid P-256 private key".into()))
}
