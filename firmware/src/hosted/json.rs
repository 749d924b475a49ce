//! The JSON form of a signed manifest.

use serde::{Deserialize, Serialize};

use crate::manifest::{KEY_ID_LEN, SIGNATURE_LEN};
use crate::{DigestAlgorithm, Error, Manifest, SignatureAlgorithm, SignedManifest};

/// A signed manifest as JSON, field for field. Binary values are lowercase
/// hex; algorithms are named as [`SignatureAlgorithm::as_str`] and
/// [`DigestAlgorithm::as_str`]. Only the binary form is signed: convert with
/// [`SignedManifest::try_from`] and verify its encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestJson {
    /// The product.
    pub product: String,
    /// The version.
    pub version: String,
    /// The security version (anti-rollback counter).
    pub security_version: u32,
    /// `sha256` or `sha512`.
    pub digest_algorithm: String,
    /// The image digest, lowercase hex.
    pub digest: String,
    /// The signing key's id, lowercase hex (64 characters).
    pub key_id: String,
    /// `ed25519` or `ecdsa-p256-sha256`.
    pub signature_algorithm: String,
    /// When it was signed, unix seconds UTC.
    pub signing_time: u64,
    /// The signature, lowercase hex (128 characters).
    pub signature: String,
}

impl From<&SignedManifest> for ManifestJson {
    fn from(s: &SignedManifest) -> Self {
        let m = &s.manifest;
        ManifestJson {
            product: m.product.clone(),
            version: m.version.clone(),
            security_version: m.security_version,
            digest_algorithm: m.digest_algorithm.as_str().to_owned(),
            digest: hex::encode(&m.digest),
            key_id: hex::encode(m.key_id),
            signature_algorithm: m.signature_algorithm.as_str().to_owned(),
            signing_time: m.signing_time,
            signature: hex::encode(s.signature),
        }
    }
}

/// Strict: every field is checked as [`crate::decode`] checks the binary
/// form, and hex must be lowercase, so that converting back gives the same
/// JSON and the binary form's encoding is the one the signer produced.
impl TryFrom<&ManifestJson> for SignedManifest {
    type Error = Error;

    fn try_from(j: &ManifestJson) -> Result<Self, Error> {
        let signature_algorithm = SignatureAlgorithm::from_name(&j.signature_algorithm).ok_or(
            Error::Malformed("signature_algorithm is not \"ed25519\" or \"ecdsa-p256-sha256\""),
        )?;
        let digest_algorithm = DigestAlgorithm::from_name(&j.digest_algorithm).ok_or(
            Error::Malformed("digest_algorithm is not \"sha256\" or \"sha512\""),
        )?;
        let digest = lower_hex(&j.digest, "digest is not lowercase hex")?;
        let key_id =
            <[u8; KEY_ID_LEN]>::try_from(lower_hex(&j.key_id, "key_id is not lowercase hex")?)
                .map_err(|_| Error::Malformed("key_id is not 32 bytes"))?;
        let signature = <[u8; SIGNATURE_LEN]>::try_from(lower_hex(
            &j.signature,
            "signature is not lowercase hex",
        )?)
        .map_err(|_| Error::Malformed("signature is not 64 bytes"))?;
        let manifest = Manifest {
            product: j.product.clone(),
            version: j.version.clone(),
            security_version: j.security_version,
            digest_algorithm,
            digest,
            key_id,
            signature_algorithm,
            signing_time: j.signing_time,
        };
        manifest.validate()?;
        Ok(SignedManifest {
            manifest,
            signature,
        })
    }
}

/// Decodes lowercase hex (uppercase would convert back differently).
fn lower_hex(s: &str, what: &'static str) -> Result<Vec<u8>, Error> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(Error::Malformed(what));
    }
    hex::decode(s).map_err(|_| Error::Malformed(what))
}
