//! Station enrolment, station side: a key made here and a CSR for an
//! officer to certify (`kmsctl station add`).

use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{DerSignature, SigningKey};
use p256::pkcs8::{EncodePrivateKey as _, LineEnding};
use x509_cert::builder::RequestBuilder;
use x509_cert::name::Name;

use crate::error::{Error, Result};
use crate::fsutil::{is_safe_name, write_new};

/// Name of the station key file `init_station` writes.
pub const KEY_FILE: &str = "key.pem";
/// Name of the CSR file `init_station` writes.
pub const CSR_FILE: &str = "station.csr";

/// Generates the station's P-256 key here (it never leaves the station)
/// and writes `dir/key.pem` (PKCS#8 PEM, mode 0600) and `dir/station.csr`
/// (PKCS#10 PEM, subject `CN=<id>, OU=station`, ecdsa-with-SHA256). Returns
/// the CSR path.
///
/// `id` is 1–64 characters of `[A-Za-z0-9._-]`. `dir` is created if
/// missing. An existing key or CSR is never overwritten: the call is then
/// refused and changes nothing.
pub fn init_station(id: &str, dir: &Path) -> Result<PathBuf> {
    if !is_safe_name(id) {
        return Err(Error::InvalidStationId(id.to_owned()));
    }
    let key_path = dir.join(KEY_FILE);
    let csr_path = dir.join(CSR_FILE);
    for p in [&key_path, &csr_path] {
        if p.symlink_metadata().is_ok() {
            return Err(Error::AlreadyExists(p.clone()));
        }
    }

    let key = SigningKey::random(&mut rand_core::OsRng);
    let key_pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| Error::KeyGeneration(format!("encoding the key: {e}")))?;
    let csr_pem = station_csr(id, &key)?;

    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
    write_new(&key_path, key_pem.as_bytes(), 0o600)?;
    if let Err(e) = write_new(&csr_path, csr_pem.as_bytes(), 0o644) {
        // Leave nothing half-done behind: a key without its CSR is useless.
        let _ = std::fs::remove_file(&key_path);
        return Err(e);
    }
    crate::fsutil::sync_dir(dir)?;
    Ok(csr_path)
}

/// The PEM CSR with subject `CN=<id>, OU=station` (in that order),
/// signed by `key`.
fn station_csr(id: &str, key: &SigningKey) -> Result<String> {
    // RFC 4514 strings list the last RDN first: this encodes CN, then OU.
    let subject = Name::from_str(&format!("OU=station,CN={id}"))
        .map_err(|e| Error::KeyGeneration(format!("subject: {e}")))?;
    let builder =
        RequestBuilder::new(subject, key).map_err(|e| Error::KeyGeneration(format!("CSR: {e}")))?;
    crate::csr::signed_request(builder, key.verifying_key(), |info| {
        let sig: DerSignature = key
            .try_sign(info)
            .map_err(|e| Error::KeyGeneration(format!("signing the CSR: {e}")))?;
        Ok(sig.as_bytes().to_vec())
    })
}
