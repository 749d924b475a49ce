//! PKCS#10 requests signed by whoever holds the key: the station's own
//! software key (`station init`) or a device's secure storage (`station
//! provision`). The builder makes the CertificationRequestInfo here; the
//! signer signs its DER.

use der::asn1::BitString;
use der::EncodePem as _;
use p256::ecdsa::signature::Keypair;
use p256::ecdsa::{DerSignature, VerifyingKey};
use p256::pkcs8::LineEnding;
use spki::{AlgorithmIdentifierOwned, DynSignatureAlgorithmIdentifier};
use x509_cert::builder::{Builder as _, RequestBuilder};

use crate::error::{Error, Result};

/// Finishes `builder`: `sign` gets the DER CertificationRequestInfo and
/// returns the DER ECDSA signature over it. The signature is checked
/// against the request's key before the PEM CSR is returned.
pub(crate) fn signed_request<S>(
    mut builder: RequestBuilder<'_, S>,
    public: &VerifyingKey,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>>,
) -> Result<String>
where
    S: Keypair + DynSignatureAlgorithmIdentifier,
    S::VerifyingKey: p256::pkcs8::EncodePublicKey,
{
    let info = builder
        .finalize()
        .map_err(|e| Error::KeyGeneration(format!("encoding the CSR: {e}")))?;
    let signature = sign(&info)?;
    let parsed = DerSignature::try_from(signature.as_slice())
        .map_err(|e| Error::KeyGeneration(format!("the signature is not DER ECDSA: {e}")))?;
    p256::ecdsa::signature::Verifier::verify(public, &info, &parsed).map_err(|_| {
        Error::KeyGeneration("the CSR signature does not verify with the request's key".into())
    })?;
    let bits = BitString::from_bytes(&signature)
        .map_err(|e| Error::KeyGeneration(format!("signature: {e}")))?;
    let csr = builder
        .assemble(bits)
        .map_err(|e| Error::KeyGeneration(format!("assembling the CSR: {e}")))?;
    csr.to_pem(LineEnding::LF)
        .map_err(|e| Error::KeyGeneration(format!("encoding the CSR: {e}")))
}

/// A public key standing for a signer elsewhere (a device): what the
/// request builder needs to fill in the key and the algorithm
/// (ecdsa-with-SHA256).
#[derive(Clone, Debug)]
pub(crate) struct RemoteP256(pub(crate) VerifyingKey);

impl Keypair for RemoteP256 {
    type VerifyingKey = VerifyingKey;
    fn verifying_key(&self) -> VerifyingKey {
        self.0
    }
}

impl DynSignatureAlgorithmIdentifier for RemoteP256 {
    fn signature_algorithm_identifier(&self) -> spki::Result<AlgorithmIdentifierOwned> {
        self.0.signature_algorithm_identifier()
    }
}
