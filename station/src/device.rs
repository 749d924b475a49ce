//! The device-link abstraction: one device's secure storage, reached over
//! some transport (a PKCS#11 token, a serial line to the MCU, …). The
//! provisioning flow reads [`DeviceStatus`] back at every step so that a
//! re-run after a failure resumes where it stopped.

pub mod pkcs11;

/// What a device holds now (read back at every step, so a re-run resumes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceStatus {
    /// SubjectPublicKeyInfo (DER) of its P-256 identity key, if one exists.
    pub public_key: Option<Vec<u8>>,
    /// Its certificate (DER), if written.
    pub certificate: Option<Vec<u8>>,
    /// Names of the secrets injected (e.g. "psk"); never their values.
    pub secrets: Vec<String>,
    /// Locked down: no more writes accepted.
    pub locked: bool,
}

/// One device's secure storage, reached over some transport.
pub trait DeviceLink {
    /// The MCU's unique ID (raw bytes, 8–32).
    fn uid(&mut self) -> Result<Vec<u8>, crate::Error>;
    /// What the device holds now.
    fn status(&mut self) -> Result<DeviceStatus, crate::Error>;
    /// Generate a P-256 key pair on the device (never extractable); its SPKI DER. Refused if one exists.
    fn generate_key(&mut self) -> Result<Vec<u8>, crate::Error>;
    /// ECDSA P-256 with SHA-256 over `message` by the device key; the signature DER-encoded.
    fn sign(&mut self, message: &[u8]) -> Result<Vec<u8>, crate::Error>;
    /// Write the certificate and its chain (`chain`: the CA certificates,
    /// issuer first). The chain goes first and the device certificate last,
    /// so a status showing the certificate means the whole set is there (a
    /// re-run checks only the certificate). Writing what is already there,
    /// byte for byte, is not an error; anything different is refused.
    fn put_certificates(
        &mut self,
        certificate: &[u8],
        chain: &[Vec<u8>],
    ) -> Result<(), crate::Error>;
    /// Store a secret under `name` (sensitive, never readable back).
    fn put_secret(&mut self, name: &str, secret: &[u8]) -> Result<(), crate::Error>;
    /// Lock down: no more writes.
    fn lock(&mut self) -> Result<(), crate::Error>;
}
