//! Test helpers: a software `KeyWrapper` and a scratch directory.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use escrow::{KeyWrapper, WrappedBlob, WrapperError};
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

/// The token's KEK in software: AES-256-GCM, random 12-byte nonce,
/// ciphertext||tag, refusing blobs of another KEK version.
pub struct SoftWrapper {
    pub version: u32,
    cipher: Aes256Gcm,
}

impl SoftWrapper {
    /// A fresh random KEK with this version.
    pub fn new(version: u32) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(key.as_mut());
        SoftWrapper {
            version,
            cipher: Aes256Gcm::new_from_slice(key.as_ref()).unwrap(),
        }
    }
}

impl KeyWrapper for SoftWrapper {
    fn wrap(&self, aad: &[u8], secret: &[u8]) -> Result<WrappedBlob, WrapperError> {
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(&Nonce::from(nonce), Payload { msg: secret, aad })
            .map_err(|_| "encrypt failed")?;
        Ok(WrappedBlob {
            kek_version: self.version,
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    fn unwrap(&self, aad: &[u8], blob: &WrappedBlob) -> Result<Zeroizing<Vec<u8>>, WrapperError> {
        if blob.kek_version != self.version {
            return Err(format!(
                "blob sealed under KEK v{}, token holds v{}",
                blob.kek_version, self.version
            )
            .into());
        }
        let nonce: [u8; 12] = blob.nonce.as_slice().try_into().map_err(|_| "bad nonce")?;
        let plain = self
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &blob.ciphertext,
                    aad,
                },
            )
            .map_err(|_| "GCM authentication failed")?;
        Ok(Zeroizing::new(plain))
    }
}

/// Wraps correctly but its unwrap returns other bytes (a broken token).
pub struct LyingWrapper(pub SoftWrapper);

impl KeyWrapper for LyingWrapper {
    fn wrap(&self, aad: &[u8], secret: &[u8]) -> Result<WrappedBlob, WrapperError> {
        self.0.wrap(aad, secret)
    }

    fn unwrap(&self, aad: &[u8], blob: &WrappedBlob) -> Result<Zeroizing<Vec<u8>>, WrapperError> {
        let mut plain = self.0.unwrap(aad, blob)?;
        plain[0] ^= 1;
        Ok(plain)
    }
}

/// A scratch directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "escrow-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run `openssl` with `args`, panicking with its stderr on failure; stdout.
pub fn openssl(args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
