//! The token behind the small traits that the pure crates declare: the CA's
//! [`ca::Signer`], the audit log's [`audit::CheckpointSigner`] and escrow's
//! [`escrow::KeyWrapper`].

use std::sync::Arc;

use zeroize::Zeroizing;

use super::{KeyAlgorithm, Sealed, Token, GCM_IV_LEN};
use crate::error::Error;

/// A token private key as the CA's signer.
#[derive(Debug)]
pub struct TokenSigner {
    token: Arc<Token>,
    label: String,
    algorithm: ca::SignatureAlgorithm,
    public_raw: Vec<u8>,
}

impl TokenSigner {
    /// Use the key pair labelled `label`; reads its public key once.
    pub fn new(token: Arc<Token>, label: &str) -> Result<Self, Error> {
        let public = token.public_key(label)?;
        let algorithm = match public.algorithm {
            KeyAlgorithm::EcP256 => ca::SignatureAlgorithm::EcdsaP256Sha256,
            KeyAlgorithm::Ed25519 => ca::SignatureAlgorithm::Ed25519,
            _ => {
                return Err(Error::WrongKeyType {
                    label: label.to_owned(),
                    reason: "a CA key must be P-256 or Ed25519".into(),
                })
            }
        };
        Ok(Self {
            token,
            label: label.to_owned(),
            algorithm,
            public_raw: public.raw,
        })
    }
}

impl ca::Signer for TokenSigner {
    fn algorithm(&self) -> ca::SignatureAlgorithm {
        self.algorithm
    }

    fn public_key_raw(&self) -> &[u8] {
        &self.public_raw
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, ca::SignerError> {
        Ok(self.token.sign(&self.label, message)?)
    }
}

/// A token Ed25519 key as the audit log's checkpoint signer.
#[derive(Debug)]
pub struct TokenCheckpointSigner {
    token: Arc<Token>,
    label: String,
    public: [u8; 32],
}

impl TokenCheckpointSigner {
    /// Use the Ed25519 key pair labelled `label`.
    pub fn new(token: Arc<Token>, label: &str) -> Result<Self, Error> {
        let public = token.public_key(label)?;
        let public: [u8; 32] = match (public.algorithm, public.raw.as_slice().try_into()) {
            (KeyAlgorithm::Ed25519, Ok(raw)) => raw,
            _ => {
                return Err(Error::WrongKeyType {
                    label: label.to_owned(),
                    reason: "checkpoints are signed with Ed25519".into(),
                })
            }
        };
        Ok(Self {
            token,
            label: label.to_owned(),
            public,
        })
    }
}

impl audit::CheckpointSigner for TokenCheckpointSigner {
    fn public_key(&self) -> [u8; 32] {
        self.public
    }

    fn sign(&self, message: &[u8]) -> Result<[u8; 64], audit::SignerError> {
        let sig = self.token.sign(&self.label, message)?;
        sig.as_slice().try_into().map_err(|_| {
            Error::TokenProtocol(format!("Ed25519 signature of {} bytes", sig.len())).into()
        })
    }
}

/// A token AES-256 key (usage `Encrypt`) as escrow's key wrapper: AES-GCM
/// with the caller's associated data, a token-random nonce and the KEK
/// version stored with each blob.
#[derive(Debug)]
pub struct TokenKeyWrapper {
    token: Arc<Token>,
    label: String,
    kek_version: u32,
}

impl TokenKeyWrapper {
    /// Use the AES key labelled `label`, which is KEK version `kek_version`.
    pub fn new(token: Arc<Token>, label: &str, kek_version: u32) -> Self {
        Self {
            token,
            label: label.to_owned(),
            kek_version,
        }
    }
}

impl escrow::KeyWrapper for TokenKeyWrapper {
    fn wrap(&self, aad: &[u8], secret: &[u8]) -> Result<escrow::WrappedBlob, escrow::WrapperError> {
        let sealed = self.token.gcm_encrypt(&self.label, aad, secret)?;
        Ok(escrow::WrappedBlob {
            kek_version: self.kek_version,
            nonce: sealed.iv.to_vec(),
            ciphertext: sealed.ciphertext,
        })
    }

    fn unwrap(
        &self,
        aad: &[u8],
        blob: &escrow::WrappedBlob,
    ) -> Result<Zeroizing<Vec<u8>>, escrow::WrapperError> {
        if blob.kek_version != self.kek_version {
            return Err(Error::InvalidInput(format!(
                "blob sealed under KEK version {}, this wrapper holds version {}",
                blob.kek_version, self.kek_version
            ))
            .into());
        }
        let iv: [u8; GCM_IV_LEN] = blob.nonce.as_slice().try_into().map_err(|_| {
            Error::InvalidInput(format!(
                "nonce of {} bytes, expected {GCM_IV_LEN}",
                blob.nonce.len()
            ))
        })?;
        let sealed = Sealed {
            iv,
            ciphertext: blob.ciphertext.clone(),
        };
        Ok(self.token.gcm_decrypt(&self.label, &sealed, aad)?)
    }
}

/// The token's random number generator as the CA's random source.
#[derive(Debug)]
pub struct TokenRandom(pub Arc<Token>);

impl ca::Random for TokenRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), ca::SignerError> {
        Ok(self.0.fill_random(buf)?)
    }
}
