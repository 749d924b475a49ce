//! Cryptographic operations on a session: signing, wrapping, AES-GCM,
//! randomness and public-key export.

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use der::Decode;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::keys::{AesUsage, KeyAlgorithm};
use super::pool::ck;
use crate::error::{Error, Result};

/// GCM nonce length: 96 bits, the length GCM is defined for.
pub const GCM_IV_LEN: usize = 12;
/// GCM tag length in bits.
const GCM_TAG_BITS: u64 = 128;

/// An AES-GCM ciphertext with its nonce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// Random 96-bit nonce from the token RNG.
    pub iv: [u8; GCM_IV_LEN],
    /// Ciphertext followed by the 16-byte tag.
    pub ciphertext: Vec<u8>,
}

/// A public key read from the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    /// Its algorithm.
    pub algorithm: KeyAlgorithm,
    /// Raw public key: uncompressed SEC1 point (65 bytes) for P-256, 32 bytes for Ed25519.
    pub raw: Vec<u8>,
}

/// SubjectPublicKeyInfo prefixes: everything before the key bits, fixed per
/// algorithm (id-ecPublicKey + prime256v1, and id-Ed25519).
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const ED25519_SPKI_PREFIX: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

impl PublicKey {
    /// DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> Result<Vec<u8>> {
        let prefix = match (self.algorithm, self.raw.len()) {
            (KeyAlgorithm::EcP256, 65) => P256_SPKI_PREFIX,
            (KeyAlgorithm::Ed25519, 32) => ED25519_SPKI_PREFIX,
            _ => {
                return Err(Error::Unreachable(
                    "public key of unexpected algorithm or length",
                ))
            }
        };
        Ok([prefix, &self.raw].concat())
    }
}

pub(crate) fn sign(
    session: &Session,
    key: ObjectHandle,
    algorithm: KeyAlgorithm,
    label: &str,
    msg: &[u8],
) -> Result<Vec<u8>> {
    match algorithm {
        KeyAlgorithm::EcP256 => {
            let digest = Sha256::digest(msg);
            let raw = session.sign(&Mechanism::Ecdsa, key, &digest).map_err(ck)?;
            ecdsa_raw_to_der(&raw)
        }
        KeyAlgorithm::Ed25519 => session
            .sign(
                &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                key,
                msg,
            )
            .map_err(ck),
        _ => Err(Error::WrongKeyType {
            label: label.to_owned(),
            reason: "not a P-256 or Ed25519 signing key".into(),
        }),
    }
}

/// PKCS#11 returns ECDSA signatures as r||s; X.509 wants the DER
/// `ECDSA-Sig-Value`. `p256` checks r and s are in range on the way.
pub(crate) fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>> {
    let sig = p256::ecdsa::Signature::from_slice(raw).map_err(|_| {
        Error::TokenProtocol(format!(
            "ECDSA signature of {} bytes is not a valid P-256 r||s",
            raw.len()
        ))
    })?;
    Ok(sig.to_der().as_bytes().to_vec())
}

pub(crate) fn public_key(
    session: &Session,
    key: ObjectHandle,
    algorithm: KeyAlgorithm,
    label: &str,
) -> Result<PublicKey> {
    let expected = match algorithm {
        KeyAlgorithm::EcP256 => 65,
        KeyAlgorithm::Ed25519 => 32,
        _ => {
            return Err(Error::WrongKeyType {
                label: label.to_owned(),
                reason: "not a P-256 or Ed25519 key".into(),
            })
        }
    };
    let attrs = session
        .get_attributes(key, &[AttributeType::EcPoint])
        .map_err(ck)?;
    let point = attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(p) => Some(p),
            _ => None,
        })
        .ok_or_else(|| Error::TokenProtocol(format!("public key {label:?} has no CKA_EC_POINT")))?;
    // PKCS#11 says CKA_EC_POINT is a DER OCTET STRING; some tokens return the
    // bare point. Accept both, by length.
    let raw = if point.len() == expected {
        point
    } else {
        der::asn1::OctetString::from_der(&point)
            .map_err(|e| Error::TokenProtocol(format!("CKA_EC_POINT of {label:?}: {e}")))?
            .into_bytes()
    };
    if raw.len() != expected {
        return Err(Error::TokenProtocol(format!(
            "public key {label:?} has {} bytes, expected {expected}",
            raw.len()
        )));
    }
    Ok(PublicKey { algorithm, raw })
}

fn check_aes(label: &str, algorithm: KeyAlgorithm, usage: AesUsage) -> Result<()> {
    if algorithm == KeyAlgorithm::Aes {
        return Ok(());
    }
    Err(Error::WrongKeyType {
        label: label.to_owned(),
        reason: format!("{usage:?} needs an AES key"),
    })
}

/// Map the PKCS#11 codes that mean "this ciphertext does not open" to one
/// error. SoftHSM2 reports a failed GCM tag or RFC 5649 integrity check as
/// CKR_GENERAL_ERROR, so from C_Decrypt and C_UnwrapKey that code counts too.
fn integrity(e: CkError) -> Error {
    match e {
        CkError::Pkcs11(
            RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange
            | RvError::WrappedKeyInvalid
            | RvError::WrappedKeyLenRange,
            function,
        ) => Error::IntegrityCheckFailed { function },
        CkError::Pkcs11(
            RvError::GeneralError,
            function @ (Function::Decrypt | Function::UnwrapKey),
        ) => Error::IntegrityCheckFailed { function },
        other => ck(other),
    }
}

/// Usage errors the token reports when a key lacks the needed permission.
fn usage(label: &str, what: &str, e: CkError) -> Error {
    match e {
        CkError::Pkcs11(
            RvError::KeyFunctionNotPermitted
            | RvError::KeyTypeInconsistent
            | RvError::WrappingKeyTypeInconsistent
            | RvError::UnwrappingKeyTypeInconsistent,
            _,
        ) => Error::WrongKeyType {
            label: label.to_owned(),
            reason: format!("the token does not allow it to {what}"),
        },
        other => integrity(other),
    }
}

pub(crate) fn wrap(
    session: &Session,
    wrapping: (ObjectHandle, KeyAlgorithm, &str),
    key: ObjectHandle,
) -> Result<Vec<u8>> {
    check_aes(wrapping.2, wrapping.1, AesUsage::Wrap)?;
    session
        .wrap_key(&Mechanism::AesKeyWrapPad, wrapping.0, key)
        .map_err(|e| usage(wrapping.2, "wrap this key", e))
}

/// Unwrap an AES key under `wrapping` as a new token object.
pub(crate) fn unwrap_aes(
    session: &Session,
    wrapping: (ObjectHandle, KeyAlgorithm, &str),
    blob: &[u8],
    template: &[Attribute],
) -> Result<ObjectHandle> {
    check_aes(wrapping.2, wrapping.1, AesUsage::Wrap)?;
    let mut t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
    ];
    t.extend_from_slice(template);
    session
        .unwrap_key(&Mechanism::AesKeyWrapPad, wrapping.0, blob, &t)
        .map_err(|e| usage(wrapping.2, "unwrap", e))
}

pub(crate) fn gcm_encrypt(
    session: &Session,
    key: (ObjectHandle, KeyAlgorithm, &str),
    mut iv: [u8; GCM_IV_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Sealed> {
    check_aes(key.2, key.1, AesUsage::Encrypt)?;
    let params = GcmParams::new(&mut iv, aad, GCM_TAG_BITS.into()).map_err(ck)?;
    let ciphertext = session
        .encrypt(&Mechanism::AesGcm(params), key.0, plaintext)
        .map_err(|e| usage(key.2, "encrypt", e))?;
    Ok(Sealed { iv, ciphertext })
}

pub(crate) fn gcm_decrypt(
    session: &Session,
    key: (ObjectHandle, KeyAlgorithm, &str),
    sealed: &Sealed,
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    check_aes(key.2, key.1, AesUsage::Encrypt)?;
    let mut iv = sealed.iv;
    let params = GcmParams::new(&mut iv, aad, GCM_TAG_BITS.into()).map_err(ck)?;
    session
        .decrypt(&Mechanism::AesGcm(params), key.0, &sealed.ciphertext)
        .map(Zeroizing::new)
        .map_err(|e| usage(key.2, "decrypt", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_to_der_round_trips_and_rejects_garbage() {
        let mut raw = [0u8; 64];
        raw[31] = 1; // r = 1
        raw[63] = 2; // s = 2
        assert_eq!(
            ecdsa_raw_to_der(&raw).unwrap(),
            [0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02]
        );
        // A high bit in r needs a leading zero byte in DER.
        raw[0] = 0x80;
        raw[31] = 0;
        let der = ecdsa_raw_to_der(&raw).unwrap();
        assert_eq!(&der[..5], &[0x30, 0x26, 0x02, 0x21, 0x00]);
        for bad in [&[0u8; 63][..], &[0u8; 64][..], &[0xffu8; 64][..]] {
            assert!(matches!(
                ecdsa_raw_to_der(bad),
                Err(Error::TokenProtocol(_))
            ));
        }
    }
}
