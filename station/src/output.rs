//! Where one-time secrets go. The appliance hands a PSK, a device key or a
//! key pair out once, so the files are created (empty, refusing existing
//! ones) before the secret is requested and filled when it arrives: a file
//! problem never costs a secret.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::client::Keypair;
use crate::error::{Error, Result};
use crate::fsutil::{parent_of, sync_dir};

/// Mode of a file holding a secret.
pub const SECRET_MODE: u32 = 0o600;
/// Mode of a certificate file.
pub const PUBLIC_MODE: u32 = 0o644;
/// Private key file of `station keypair --out DIR`.
pub const KEYPAIR_KEY_FILE: &str = "key.pem";
/// Certificate file of `station keypair --out DIR`.
pub const KEYPAIR_CERT_FILE: &str = "cert.pem";
/// Chain file of `station keypair --out DIR`.
pub const KEYPAIR_CHAIN_FILE: &str = "chain.pem";

/// A file created empty with `create_new` (an existing file is refused with
/// [`Error::AlreadyExists`], code `file_exists`) and filled once with
/// [`ReservedFile::fill`]. Dropped unfilled, it is removed.
#[derive(Debug)]
pub struct ReservedFile {
    path: PathBuf,
    file: Option<File>,
}

impl ReservedFile {
    /// Creates `path` with `mode`, refusing an existing file.
    pub fn create(path: &Path, mode: u32) -> Result<ReservedFile> {
        let file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::AlreadyExists(path.to_owned()))
            }
            Err(e) => return Err(Error::io("creating", path, e)),
        };
        Ok(ReservedFile {
            path: path.to_owned(),
            file: Some(file),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `bytes`, fsyncs the file and its directory. On failure the
    /// file is removed.
    pub fn fill(mut self, bytes: &[u8]) -> Result<()> {
        let mut file = self
            .file
            .take()
            .ok_or(Error::Unreachable("a reserved file filled twice"))?;
        if let Err(e) = file.write_all(bytes).and_then(|()| file.sync_all()) {
            drop(file);
            let _ = fs::remove_file(&self.path);
            return Err(Error::io("writing", &self.path, e));
        }
        sync_dir(parent_of(&self.path))
    }
}

impl Drop for ReservedFile {
    fn drop(&mut self) {
        // Created by us and never filled: nothing to keep.
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// `DIR/key.pem` (0600), `DIR/cert.pem` and `DIR/chain.pem` (0644),
/// reserved before a key pair is requested.
#[derive(Debug)]
pub struct KeypairFiles {
    /// The private key file.
    pub key: ReservedFile,
    /// The certificate file.
    pub cert: ReservedFile,
    /// The chain file.
    pub chain: ReservedFile,
}

impl KeypairFiles {
    /// Creates `dir` if missing (mode 0700) and the three files in it,
    /// refusing any that exists (none is left behind then).
    pub fn create(dir: &Path) -> Result<KeypairFiles> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io("creating", dir, e))?;
        Ok(KeypairFiles {
            key: ReservedFile::create(&dir.join(KEYPAIR_KEY_FILE), SECRET_MODE)?,
            cert: ReservedFile::create(&dir.join(KEYPAIR_CERT_FILE), PUBLIC_MODE)?,
            chain: ReservedFile::create(&dir.join(KEYPAIR_CHAIN_FILE), PUBLIC_MODE)?,
        })
    }

    /// Writes the key pair: the key first, then the certificate and chain.
    pub fn fill(self, keypair: &Keypair) -> Result<()> {
        let KeypairFiles { key, cert, chain } = self;
        key.fill(pem_line_ended(&keypair.private_key_pem).as_bytes())?;
        cert.fill(pem_line_ended(&keypair.certificate_pem).as_bytes())?;
        chain.fill(pem_line_ended(&keypair.chain_pem).as_bytes())
    }
}

/// `pem` ending with exactly one newline, in a zeroizing string of exactly
/// its length.
fn pem_line_ended(pem: &str) -> Zeroizing<String> {
    let body = pem.trim_end();
    let mut out = Zeroizing::new(String::with_capacity(body.len() + 1));
    out.push_str(body);
    out.push('\n');
    out
}

/// A secret as a line of lowercase hex, in a zeroizing string of exactly
/// its length: what `station psk` and `station key` write.
pub fn secret_hex_line(secret: &[u8]) -> Zeroizing<String> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = Zeroizing::new(String::with_capacity(2 * secret.len() + 1));
    for b in secret {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_reserved_file_is_filled_once_or_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("psk.hex");
        let f = ReservedFile::create(&path, SECRET_MODE).unwrap();
        assert_eq!(mode(&path), 0o600);
        let again = ReservedFile::create(&path, SECRET_MODE).unwrap_err();
        assert_eq!(again.code(), "file_exists");
        f.fill(b"ab\n").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"ab\n");

        let other = tmp.path().join("unused");
        drop(ReservedFile::create(&other, SECRET_MODE).unwrap());
        assert!(!other.exists(), "an unfilled reservation is removed");
    }

    #[test]
    fn keypair_files_refuse_an_existing_file_and_leave_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("kp");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("chain.pem"), "old").unwrap();
        let e = KeypairFiles::create(&dir).unwrap_err();
        assert_eq!(e.code(), "file_exists");
        assert!(!dir.join("key.pem").exists());
        assert!(!dir.join("cert.pem").exists());
        assert_eq!(fs::read_to_string(dir.join("chain.pem")).unwrap(), "old");
    }

    #[test]
    fn hex_lines() {
        assert_eq!(secret_hex_line(&[0x00, 0xab, 0xff]).as_str(), "00abff\n");
        assert_eq!(secret_hex_line(&[7u8; 32]).len(), 65);
    }
}
