//! Escrow records: a device secret sealed under the KEK and bound to its
//! module serial and purpose.

use p256::elliptic_curve::subtle::ConstantTimeEq;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{Error, KeyWrapper, WrappedBlob};

/// Domain prefix of the associated data binding a blob to device and purpose.
const AAD_PREFIX: &[u8] = b"vbus-kms/escrow/v1\0";
/// Domain prefix of the public fingerprint of a secret.
const FINGERPRINT_PREFIX: &[u8] = b"vbus-kms/escrow/fingerprint/v1\0";
/// Longest purpose.
const PURPOSE_MAX: usize = 32;

/// Purpose of a device secret: `psk`, `keypair`, or a profile's AES key name.
/// `[a-z0-9_-]{1,32}`.
pub fn check_purpose(purpose: &str) -> Result<(), Error> {
    let ok = (1..=PURPOSE_MAX).contains(&purpose.len())
        && purpose
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        let shown: String = purpose.chars().take(PURPOSE_MAX + 8).collect();
        Err(Error::Purpose(format!("{shown:?}")))
    }
}

/// The associated data binding a blob to its device and purpose:
/// `b"vbus-kms/escrow/v1\0" ++ module_serial ++ b"\0" ++ purpose`.
///
/// Unambiguous as long as the purpose passed [`check_purpose`] (it holds no
/// NUL, so the last NUL separates serial from purpose).
pub fn aad(module_serial: &str, purpose: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(AAD_PREFIX.len() + module_serial.len() + 1 + purpose.len());
    out.extend_from_slice(AAD_PREFIX);
    out.extend_from_slice(module_serial.as_bytes());
    out.push(0);
    out.extend_from_slice(purpose.as_bytes());
    out
}

/// A short public fingerprint of a secret for logs and the audit record:
/// `"sha256:"` + the first 16 hex digits of
/// `SHA-256("vbus-kms/escrow/fingerprint/v1\0" ++ secret)`. Never the secret.
pub fn fingerprint(secret: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(FINGERPRINT_PREFIX)
        .chain_update(secret)
        .finalize();
    format!("sha256:{}", hex::encode(&digest[..8]))
}

/// What kind of secret a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretKind {
    /// A pre-shared key.
    Psk,
    /// A symmetric AES key named by a profile.
    AesKey,
    /// A device private key (PKCS#8 DER).
    PrivateKey,
}

/// What the appliance stores per device secret (JSON in its store).
///
/// Holds no plaintext: `Debug` and the JSON show the wrapped blob and the
/// public fingerprint only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscrowRecord {
    /// The device the secret belongs to.
    pub module_serial: String,
    /// What the secret is for (see [`check_purpose`]).
    pub purpose: String,
    /// What kind of secret it is.
    pub kind: SecretKind,
    /// The secret sealed under the KEK with [`aad`]`(module_serial, purpose)`.
    pub blob: WrappedBlob,
    /// [`fingerprint`] of the secret.
    pub fingerprint: String,
    /// Who the secret was issued to (the caller's identity).
    pub issued_to: String,
    /// When it was issued (Unix seconds).
    pub issued_at: i64,
    /// Whether the device may rotate this secret.
    pub rotation_allowed: bool,
}

impl EscrowRecord {
    /// Seal `secret` for `module_serial`/`purpose` under `wrapper` and
    /// describe it. Verifies by unwrapping once (the token's result is not
    /// trusted until it opens to the same bytes).
    ///
    /// `rotation_allowed` starts `false`; the caller sets it from policy.
    pub fn seal(
        wrapper: &dyn KeyWrapper,
        module_serial: &str,
        purpose: &str,
        kind: SecretKind,
        secret: &[u8],
        issued_to: &str,
        issued_at: i64,
    ) -> Result<Self, Error> {
        check_purpose(purpose)?;
        let aad = aad(module_serial, purpose);
        let blob = wrap_verified(wrapper, &aad, secret).map_err(|e| match e {
            Verify::Wrapper(e) => Error::Wrapper(e),
            Verify::Mismatch => Error::SealVerify,
        })?;
        Ok(EscrowRecord {
            module_serial: module_serial.to_owned(),
            purpose: purpose.to_owned(),
            kind,
            blob,
            fingerprint: fingerprint(secret),
            issued_to: issued_to.to_owned(),
            issued_at,
            rotation_allowed: false,
        })
    }

    /// Open it (`wrapper` must hold `blob.kek_version`); the AAD is
    /// recomputed from the record; the fingerprint must match the opened
    /// secret ([`Error::FingerprintMismatch`]).
    pub fn open(&self, wrapper: &dyn KeyWrapper) -> Result<Zeroizing<Vec<u8>>, Error> {
        check_purpose(&self.purpose)?;
        let aad = aad(&self.module_serial, &self.purpose);
        let secret = wrapper.unwrap(&aad, &self.blob).map_err(Error::Wrapper)?;
        if fingerprint(&secret) != self.fingerprint {
            return Err(Error::FingerprintMismatch);
        }
        Ok(secret)
    }

    /// Re-seal under `to` (KEK rotation): open with `from`, seal with `to`,
    /// verify by opening the new blob with `to` and comparing. The plaintext
    /// lives only in zeroizing buffers. Returns the record with the new blob
    /// (everything else unchanged); on any error `self` stays the valid
    /// record.
    pub fn rewrap(&self, from: &dyn KeyWrapper, to: &dyn KeyWrapper) -> Result<Self, Error> {
        let secret = self.open(from)?;
        let aad = aad(&self.module_serial, &self.purpose);
        let blob = wrap_verified(to, &aad, &secret).map_err(|e| match e {
            Verify::Wrapper(e) => Error::Wrapper(e),
            Verify::Mismatch => Error::RewrapVerify,
        })?;
        Ok(EscrowRecord {
            blob,
            ..self.clone()
        })
    }
}

/// Why [`wrap_verified`] failed.
enum Verify {
    /// The wrapper itself failed.
    Wrapper(crate::WrapperError),
    /// The new blob opened, but not to the sealed bytes.
    Mismatch,
}

/// Wrap `secret` and check that the blob opens to the same bytes.
fn wrap_verified(
    wrapper: &dyn KeyWrapper,
    aad: &[u8],
    secret: &[u8],
) -> Result<WrappedBlob, Verify> {
    let blob = wrapper.wrap(aad, secret).map_err(Verify::Wrapper)?;
    let back = wrapper.unwrap(aad, &blob).map_err(Verify::Wrapper)?;
    if bool::from(back.as_slice().ct_eq(secret)) {
        Ok(blob)
    } else {
        Err(Verify::Mismatch)
    }
}
