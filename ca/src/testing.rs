//! Software implementations of the CA's traits, for tests and benchmarks
//! only (feature `testing`). The appliance never enables it.

use rand_core::{OsRng, RngCore};

use crate::issue::Random;
use crate::signer::{SignatureAlgorithm, Signer, SignerError};

/// A P-256 key in memory.
pub struct SoftP256 {
    key: p256::ecdsa::SigningKey,
    public: Vec<u8>,
}

impl SoftP256 {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self::from_key(p256::ecdsa::SigningKey::random(&mut OsRng))
    }

    /// Wrap an existing key.
    pub fn from_key(key: p256::ecdsa::SigningKey) -> Self {
        let public = key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        Self { key, public }
    }

    /// The key itself.
    pub fn key(&self) -> &p256::ecdsa::SigningKey {
        &self.key
    }
}

impl Signer for SoftP256 {
    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::EcdsaP256Sha256
    }
    fn public_key_raw(&self) -> &[u8] {
        &self.public
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignerError> {
        use p256::ecdsa::signature::Signer as _;
        let sig: p256::ecdsa::Signature = self.key.sign(message);
        Ok(sig.to_der().as_bytes().to_vec())
    }
}

/// An Ed25519 key in memory.
pub struct SoftEd25519 {
    key: ed25519_dalek::SigningKey,
    public: Vec<u8>,
}

impl SoftEd25519 {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let public = key.verifying_key().to_bytes().to_vec();
        Self { key, public }
    }
}

impl Signer for SoftEd25519 {
    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::Ed25519
    }
    fn public_key_raw(&self) -> &[u8] {
        &self.public
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignerError> {
        use ed25519_dalek::Signer as _;
        Ok(self.key.sign(message).to_bytes().to_vec())
    }
}

/// The OS random source.
pub struct OsRandom;

impl Random for OsRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), SignerError> {
        OsRng.fill_bytes(buf);
        Ok(())
    }
}

/// A device CSR (DER) for `serial`, CN = serial, from a fresh P-256 key.
pub fn device_csr(serial: &str) -> Vec<u8> {
    let key = SoftP256::generate();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, serial);
    let signer = crate::RcgenSigner::new(&key);
    let csr = p.serialize_request(&signer).map(|c| c.der().to_vec());
    csr.unwrap_or_default()
}

/// A journal that keeps what it is told, in memory.
#[derive(Default)]
pub struct MemoryJournal(pub std::sync::Mutex<Vec<crate::CertificateRecord>>);

impl crate::Journal for MemoryJournal {
    fn issued(&self, record: &crate::CertificateRecord) -> Result<(), SignerError> {
        self.0
            .lock()
            .map_err(|_| "journal lock poisoned")?
            .push(record.clone());
        Ok(())
    }
}
