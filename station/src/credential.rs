//! The station's mTLS credential: its certificate, its private key and the
//! appliance's internal CA.

use std::fmt;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// A station credential, as `kmsctl quickstart` writes it in
/// `DIR/stations/station-01/`: `cert.pem`, `key.pem` (mode 0600) and
/// `ca.pem` (the internal CA the appliance's server certificate chains to).
///
/// The private key is zeroized when the credential is dropped and never
/// appears in `Debug` output.
#[derive(Clone)]
pub struct Credential {
    cert_pem: String,
    key_pem: Zeroizing<String>,
    ca_pem: String,
}

impl Credential {
    /// Reads `cert.pem`, `key.pem` and `ca.pem` from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Credential> {
        Credential::from_files(
            &dir.join("cert.pem"),
            &dir.join("key.pem"),
            &dir.join("ca.pem"),
        )
    }

    /// Reads the three files from wherever they are. The key file is
    /// refused when group or others may read it.
    pub fn from_files(cert: &Path, key: &Path, ca: &Path) -> Result<Credential> {
        // The mode is checked on the open file, so it is the file we read.
        let mut file = std::fs::File::open(key).map_err(|e| Error::io("opening", key, e))?;
        let meta = file.metadata().map_err(|e| Error::io("reading", key, e))?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(Error::KeyPermissions {
                path: key.to_owned(),
                mode,
            });
        }
        // Sized up front so reading never reallocates and leaves a copy behind.
        let size = usize::try_from(meta.len()).unwrap_or(0).saturating_add(64);
        let mut key_pem = Zeroizing::new(String::with_capacity(size));
        file.read_to_string(&mut key_pem)
            .map_err(|e| Error::io("reading", key, e))?;
        let cert_pem = std::fs::read_to_string(cert).map_err(|e| Error::io("reading", cert, e))?;
        let ca_pem = std::fs::read_to_string(ca).map_err(|e| Error::io("reading", ca, e))?;
        let cred = Credential {
            cert_pem,
            key_pem,
            ca_pem,
        };
        cred.check(cert, key, ca)?;
        Ok(cred)
    }

    /// A credential from PEM text held in memory (no permission check:
    /// there is no file).
    pub fn from_pem(cert_pem: String, key_pem: Zeroizing<String>, ca_pem: String) -> Result<Self> {
        let cred = Credential {
            cert_pem,
            key_pem,
            ca_pem,
        };
        cred.check(
            Path::new("cert.pem"),
            Path::new("key.pem"),
            Path::new("ca.pem"),
        )?;
        Ok(cred)
    }

    /// The station certificate (PEM; may be followed by its chain).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The station private key (PEM, PKCS#8 or SEC1).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The appliance's internal CA certificate(s) (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// SHA-256 of the station certificate (DER), lowercase hex.
    pub fn fingerprint(&self) -> Option<String> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .next()
            .and_then(|c| c.ok())
            .map(|c| hex::encode(Sha256::digest(c.as_ref())))
    }

    /// The certificate chain for rustls.
    pub(crate) fn certs(&self) -> Result<Vec<CertificateDer<'static>>> {
        pem_certs(&self.cert_pem, Path::new("cert.pem"))
    }

    /// The trust anchors for rustls.
    pub(crate) fn ca_certs(&self) -> Result<Vec<CertificateDer<'static>>> {
        pem_certs(&self.ca_pem, Path::new("ca.pem"))
    }

    /// The private key for rustls.
    pub(crate) fn key(&self) -> Result<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| Error::Credential {
            path: PathBuf::from("key.pem"),
            reason: format!("no usable private key: {e}"),
        })
    }

    fn check(&self, cert: &Path, key: &Path, ca: &Path) -> Result<()> {
        let with_path = |path: &Path, e: Error| match e {
            Error::Credential { reason, .. } => Error::Credential {
                path: path.to_owned(),
                reason,
            },
            other => other,
        };
        self.certs().map_err(|e| with_path(cert, e))?;
        self.key().map_err(|e| with_path(key, e))?;
        self.ca_certs().map_err(|e| with_path(ca, e))?;
        Ok(())
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field(
                "cert_sha256",
                &self.fingerprint().unwrap_or_else(|| "?".into()),
            )
            .field("key_pem", &"[redacted]")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .finish()
    }
}

/// Every certificate in a PEM text; at least one.
fn pem_certs(pem: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Credential {
            path: path.to_owned(),
            reason: format!("bad PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(Error::Credential {
            path: path.to_owned(),
            reason: "no CERTIFICATE in the file".into(),
        });
    }
    Ok(certs)
}
