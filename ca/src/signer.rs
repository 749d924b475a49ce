//! The signing key the CA is given.

use std::fmt;
use std::sync::Mutex;

/// Failure inside a [`Signer`]. The CA does not interpret it; the caller that
/// chose the signer downcasts it (the appliance maps token errors to
/// `token_unavailable` and so on).
pub type SignerError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Signature algorithms a CA key can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SignatureAlgorithm {
    /// ECDSA on NIST P-256 over SHA-256 (`ecdsa-with-SHA256`, RFC 5758).
    EcdsaP256Sha256,
    /// Pure Ed25519 (RFC 8410).
    Ed25519,
}

impl fmt::Display for SignatureAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EcdsaP256Sha256 => "ecdsa-p256-sha256",
            Self::Ed25519 => "ed25519",
        })
    }
}

/// A private key that signs on the CA's behalf without revealing itself.
///
/// `sign` receives the exact bytes to be signed (a DER TBSCertificate or
/// TBSCertList) and returns the value that goes into the signature BIT
/// STRING: a DER `ECDSA-Sig-Value` for ECDSA, the raw 64 bytes for Ed25519.
/// Hashing, where the algorithm needs it, is the signer's job.
pub trait Signer: Send + Sync {
    /// The algorithm this key signs with.
    fn algorithm(&self) -> SignatureAlgorithm;

    /// The raw public key: the uncompressed SEC1 point for P-256, the 32
    /// bytes for Ed25519 (the content of the SubjectPublicKeyInfo BIT STRING).
    fn public_key_raw(&self) -> &[u8];

    /// Sign `message`; see the trait documentation for the encoding.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignerError>;
}

/// A check run on the exact to-be-signed bytes before the key is used.
pub type PreSignCheck<'a> = Box<dyn Fn(&[u8]) -> crate::Result<()> + Send + Sync + 'a>;

/// Adapter that lets `rcgen` build certificates and CRLs with any [`Signer`],
/// so the private key is used only through the signer.
///
/// With [`RcgenSigner::checked`] every to-be-signed structure rcgen hands
/// over is first passed to a check (the profile lint), and nothing is signed
/// if it fails. The last signed message and its signature are kept so the
/// caller can verify them before trusting the result.
pub struct RcgenSigner<'a, S: Signer + ?Sized> {
    inner: &'a S,
    check: Option<PreSignCheck<'a>>,
    last_error: Mutex<Option<crate::Error>>,
    last_signed: Mutex<Option<(Vec<u8>, Vec<u8>)>>,
}

impl<'a, S: Signer + ?Sized> RcgenSigner<'a, S> {
    /// Wrap `signer` for one or more rcgen calls.
    pub fn new(signer: &'a S) -> Self {
        Self {
            inner: signer,
            check: None,
            last_error: Mutex::new(None),
            last_signed: Mutex::new(None),
        }
    }

    /// Wrap `signer`, running `check` on each to-be-signed message first.
    pub fn checked(signer: &'a S, check: PreSignCheck<'a>) -> Self {
        Self {
            check: Some(check),
            ..Self::new(signer)
        }
    }

    /// The error behind the last `rcgen::Error::RemoteKeyError`, which rcgen
    /// itself cannot carry.
    pub fn take_error(&self) -> Option<crate::Error> {
        self.last_error.lock().ok().and_then(|mut e| e.take())
    }

    /// The last (message, signature) pair signed.
    pub fn take_signed(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        self.last_signed.lock().ok().and_then(|mut e| e.take())
    }

    fn fail(&self, e: crate::Error) -> rcgen::Error {
        if let Ok(mut slot) = self.last_error.lock() {
            *slot = Some(e);
        }
        rcgen::Error::RemoteKeyError
    }
}

impl<S: Signer + ?Sized> rcgen::PublicKeyData for RcgenSigner<'_, S> {
    fn der_bytes(&self) -> &[u8] {
        self.inner.public_key_raw()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self.inner.algorithm() {
            SignatureAlgorithm::EcdsaP256Sha256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            SignatureAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

impl<S: Signer + ?Sized> rcgen::SigningKey for RcgenSigner<'_, S> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        if let Some(check) = &self.check {
            check(msg).map_err(|e| self.fail(e))?;
        }
        let sig = self
            .inner
            .sign(msg)
            .map_err(|e| self.fail(crate::Error::Signer(e)))?;
        if let Ok(mut slot) = self.last_signed.lock() {
            *slot = Some((msg.to_vec(), sig.clone()));
        }
        Ok(sig)
    }
}

/// ECDSA P-256 with SHA-256 over `message`, `signature` DER-encoded, for a
/// SEC1 point already known to be on the curve. ring's verifier (assembly,
/// about four times the pure-Rust one on this hardware) for uncompressed
/// points; the pure-Rust one for compressed points, which ring does not take.
pub(crate) fn ecdsa_p256_sha256_verify(
    public_key_raw: &[u8],
    message: &[u8],
    signature: &[u8],
) -> bool {
    if public_key_raw.first() == Some(&0x04) {
        return ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            public_key_raw,
        )
        .verify(message, signature)
        .is_ok();
    }
    use p256::ecdsa::signature::Verifier;
    let Ok(vk) = p256::ecdsa::VerifyingKey::from_sec1_bytes(public_key_raw) else {
        return false;
    };
    p256::ecdsa::Signature::from_der(signature).is_ok_and(|sig| vk.verify(message, &sig).is_ok())
}

/// Does `signature` over `message` verify with the signer's public key?
pub fn verify_signature(
    alg: SignatureAlgorithm,
    public_key_raw: &[u8],
    message: &[u8],
    signature: &[u8],
) -> bool {
    match alg {
        SignatureAlgorithm::EcdsaP256Sha256 => {
            p256::PublicKey::from_sec1_bytes(public_key_raw).is_ok()
                && ecdsa_p256_sha256_verify(public_key_raw, message, signature)
        }
        SignatureAlgorithm::Ed25519 => {
            let Ok(raw) = <[u8; 32]>::try_from(public_key_raw) else {
                return false;
            };
            let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&raw) else {
                return false;
            };
            ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|sig| vk.verify_strict(message, &sig).is_ok())
        }
    }
}
