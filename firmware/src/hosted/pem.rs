//! Public keys as SPKI (`PUBLIC KEY` PEM, or DER), as OpenSSL writes them.

use spki::der::asn1::BitStringRef;
use spki::der::pem::LineEnding;
use spki::der::{AnyRef, Decode as _, Encode as _};
use spki::{AlgorithmIdentifierRef, ObjectIdentifier, SubjectPublicKeyInfoRef};

use crate::{Error, PublicKey, SignatureAlgorithm};

/// id-Ed25519 (RFC 8410).
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
/// id-ecPublicKey (RFC 5480).
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// prime256v1 / secp256r1 (RFC 5480).
const PRIME256V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// The PEM label of an SPKI.
const LABEL: &str = "PUBLIC KEY";

impl PublicKey {
    /// A key from one `-----BEGIN PUBLIC KEY-----` PEM block (SPKI) holding
    /// an Ed25519 key (OID 1.3.101.112) or an EC key (id-ecPublicKey) on
    /// prime256v1, as `openssl pkey -pubout` writes them.
    pub fn from_pem(text: &str) -> Result<Self, Error> {
        let (label, der) =
            spki::der::pem::decode_vec(text.trim().as_bytes()).map_err(|_| Error::KeyInvalid)?;
        if label != LABEL {
            return Err(Error::KeyInvalid);
        }
        Self::from_spki_der(&der)
    }

    /// A key from a DER SubjectPublicKeyInfo (see [`PublicKey::from_pem`]).
    /// A compressed P-256 point is accepted and stored uncompressed.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, Error> {
        let spki = SubjectPublicKeyInfoRef::from_der(der).map_err(|_| Error::KeyInvalid)?;
        let raw = spki
            .subject_public_key
            .as_bytes()
            .ok_or(Error::KeyInvalid)?;
        match spki.algorithm.oid {
            ED25519 => {
                // RFC 8410: the parameters are absent.
                if spki.algorithm.parameters.is_some() {
                    return Err(Error::KeyInvalid);
                }
                PublicKey::from_raw(SignatureAlgorithm::Ed25519, raw)
            }
            EC_PUBLIC_KEY => {
                if spki
                    .algorithm
                    .parameters_oid()
                    .map_err(|_| Error::KeyInvalid)?
                    != PRIME256V1
                {
                    return Err(Error::KeyInvalid);
                }
                let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(raw)
                    .map_err(|_| Error::KeyInvalid)?;
                PublicKey::from_raw(
                    SignatureAlgorithm::EcdsaP256Sha256,
                    key.to_encoded_point(false).as_bytes(),
                )
            }
            _ => Err(Error::KeyInvalid),
        }
    }

    /// The DER SubjectPublicKeyInfo of this key.
    pub fn to_spki_der(&self) -> Result<Vec<u8>, Error> {
        let curve = AnyRef::from(&PRIME256V1);
        let algorithm = match self {
            PublicKey::Ed25519(_) => AlgorithmIdentifierRef {
                oid: ED25519,
                parameters: None,
            },
            PublicKey::P256(_) => AlgorithmIdentifierRef {
                oid: EC_PUBLIC_KEY,
                parameters: Some(curve),
            },
        };
        let spki = SubjectPublicKeyInfoRef {
            algorithm,
            subject_public_key: BitStringRef::from_bytes(self.raw())
                .map_err(|_| Error::KeyInvalid)?,
        };
        spki.to_der().map_err(|_| Error::KeyInvalid)
    }

    /// The `PUBLIC KEY` PEM (SPKI) of this key, LF line endings.
    pub fn to_pem(&self) -> Result<String, Error> {
        let der = self.to_spki_der()?;
        spki::der::pem::encode_string(LABEL, LineEnding::LF, &der).map_err(|_| Error::KeyInvalid)
    }
}
