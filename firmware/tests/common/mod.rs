//! Test signers (software keys from fixed seeds), the fixed manifest of the
//! known-answer tests, and an independent encoder of the layout that skips
//! every check (to build bad inputs for the decoder).

#![allow(dead_code)]

use firmware::{DigestAlgorithm, Manifest, PublicKey, SignatureAlgorithm};
use sha2::Digest as _;

/// The Ed25519 seed of the known-answer tests: 00 01 02 … 1f.
pub const ED25519_SEED: [u8; 32] = {
    let mut s = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        s[i] = i as u8;
        i += 1;
    }
    s
};

/// The P-256 private scalar of the tests: 0x11 repeated (less than n).
pub const P256_SCALAR: [u8; 32] = [0x11; 32];

/// The signing time of the known-answer tests.
pub const SIGNING_TIME: u64 = 1_795_716_321;

/// A software stand-in for the token's manufacturer key.
pub enum Signer {
    Ed25519(ed25519_dalek::SigningKey),
    P256(p256::ecdsa::SigningKey),
}

impl Signer {
    pub fn ed25519(seed: [u8; 32]) -> Self {
        Signer::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    pub fn p256(scalar: [u8; 32]) -> Self {
        Signer::P256(p256::ecdsa::SigningKey::from_bytes(&scalar.into()).unwrap())
    }

    /// The KAT Ed25519 key and the fixed P-256 key.
    pub fn both() -> [Signer; 2] {
        [Signer::ed25519(ED25519_SEED), Signer::p256(P256_SCALAR)]
    }

    pub fn algorithm(&self) -> SignatureAlgorithm {
        match self {
            Signer::Ed25519(_) => SignatureAlgorithm::Ed25519,
            Signer::P256(_) => SignatureAlgorithm::EcdsaP256Sha256,
        }
    }

    pub fn public(&self) -> PublicKey {
        match self {
            Signer::Ed25519(k) => {
                PublicKey::from_raw(self.algorithm(), k.verifying_key().as_bytes()).unwrap()
            }
            Signer::P256(k) => PublicKey::from_raw(
                self.algorithm(),
                k.verifying_key().to_encoded_point(false).as_bytes(),
            )
            .unwrap(),
        }
    }

    /// Ed25519 R‖S, or P-256 r‖s over SHA-256 (RFC 6979, deterministic).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer as _;
        match self {
            Signer::Ed25519(k) => k.sign(message).to_bytes(),
            Signer::P256(k) => {
                let sig: p256::ecdsa::Signature = k.sign(message);
                sig.to_bytes().into()
            }
        }
    }

    /// The fixed manifest ("vbus-cpu" 1.4.2, security version 7) for this
    /// key, over an image digested with `alg`.
    pub fn manifest(&self, alg: DigestAlgorithm) -> Manifest {
        Manifest {
            product: "vbus-cpu".into(),
            version: "1.4.2".into(),
            security_version: 7,
            digest_algorithm: alg,
            digest: alg.digest(IMAGE),
            key_id: self.public().key_id(),
            signature_algorithm: self.algorithm(),
            signing_time: SIGNING_TIME,
        }
    }

    /// `m` signed by this key, binary form.
    pub fn signed(&self, m: &Manifest) -> Vec<u8> {
        let tbs = m.to_be_signed().unwrap();
        m.encode(&self.sign(&tbs)).unwrap()
    }
}

/// The image of the known-answer tests.
pub const IMAGE: &[u8] = b"vbus firmware";

pub fn sha256(data: &[u8]) -> Vec<u8> {
    sha2::Sha256::digest(data).to_vec()
}

/// The layout written out again, field by field, with no checks at all:
/// for bad inputs the real encoder refuses to make.
pub struct Raw {
    pub magic: Vec<u8>,
    pub layout: u8,
    pub sig_alg: u8,
    pub digest_alg: u8,
    pub reserved: u8,
    pub security_version: u32,
    pub signing_time: u64,
    pub key_id: [u8; 32],
    pub digest_len: u8,
    pub digest: Vec<u8>,
    pub product_len: u8,
    pub product: Vec<u8>,
    pub version_len: u8,
    pub version: Vec<u8>,
}

impl Raw {
    /// The fields of `m`.
    pub fn of(m: &Manifest) -> Self {
        Raw {
            magic: b"VBFW".to_vec(),
            layout: 1,
            sig_alg: match m.signature_algorithm {
                SignatureAlgorithm::Ed25519 => 1,
                SignatureAlgorithm::EcdsaP256Sha256 => 2,
            },
            digest_alg: match m.digest_algorithm {
                DigestAlgorithm::Sha256 => 1,
                DigestAlgorithm::Sha512 => 2,
            },
            reserved: 0,
            security_version: m.security_version,
            signing_time: m.signing_time,
            key_id: m.key_id,
            digest_len: m.digest.len() as u8,
            digest: m.digest.clone(),
            product_len: m.product.len() as u8,
            product: m.product.as_bytes().to_vec(),
            version_len: m.version.len() as u8,
            version: m.version.as_bytes().to_vec(),
        }
    }

    pub fn tbs(&self) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&self.magic);
        v.extend_from_slice(&[self.layout, self.sig_alg, self.digest_alg, self.reserved]);
        v.extend_from_slice(&self.security_version.to_be_bytes());
        v.extend_from_slice(&self.signing_time.to_be_bytes());
        v.extend_from_slice(&self.key_id);
        v.push(self.digest_len);
        v.extend_from_slice(&self.digest);
        v.push(self.product_len);
        v.extend_from_slice(&self.product);
        v.push(self.version_len);
        v.extend_from_slice(&self.version);
        v
    }

    /// The signed bytes followed by `signer`'s signature over them.
    pub fn signed_by(&self, signer: &Signer) -> Vec<u8> {
        let mut v = self.tbs();
        let sig = signer.sign(&v);
        v.extend_from_slice(&sig);
        v
    }
}
