//! The device-link abstraction: one device's secure storage, reached over
//! some transport (a PKCS#11 token, a serial line to the MCU, …). The
//! provisioning flow reads [`DeviceStatus`] back at every step so that a
//! re-run after a failure resumes where it stopped.

pub mod pkcs11;

use std::path::PathBuf;

use crate::serial::{SerialDevice, SerialOptions};

/// Where a device is, as given to `--device`: an RFC 7512 `pkcs11:` URI,
/// or a serial line (`serial:TTY`, or a `/dev/…` path).
#[derive(Clone, PartialEq, Eq)]
pub enum DeviceAddress {
    /// A PKCS#11 token (the whole URI).
    Pkcs11(String),
    /// A tty.
    Serial(PathBuf),
}

/// A `pkcs11:` URI may carry `pin-value=`: it is shown [`redacted`].
impl std::fmt::Debug for DeviceAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceAddress::Pkcs11(uri) => write!(f, "Pkcs11({:?}…)", redacted(uri)),
            DeviceAddress::Serial(tty) => write!(f, "Serial({tty:?})"),
        }
    }
}

/// A device address as it may be shown: without the query of a `pkcs11:`
/// URI and without any `pin-…` attribute, even one misplaced in its path.
pub fn redacted(text: &str) -> String {
    let path = text.split('?').next().unwrap_or_default();
    match path.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("pkcs11:") => {
            let kept: Vec<&str> = path[7..]
                .split(';')
                .filter(|a| !a.trim_start().to_ascii_lowercase().starts_with("pin-"))
                .collect();
            format!("{scheme}{}", kept.join(";"))
        }
        _ => path.to_owned(),
    }
}

impl DeviceAddress {
    /// The address `s` names, or `None` when it is neither form.
    pub fn parse(s: &str) -> Option<DeviceAddress> {
        if s.get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("pkcs11:"))
        {
            return Some(DeviceAddress::Pkcs11(s.to_owned()));
        }
        let tty = s
            .strip_prefix("serial:")
            .or_else(|| s.starts_with("/dev/").then_some(s))?;
        (!tty.is_empty()).then(|| DeviceAddress::Serial(PathBuf::from(tty)))
    }

    /// Opens the device; `serial` sets a serial line's timeouts.
    pub fn open(&self, serial: &SerialOptions) -> Result<Box<dyn DeviceLink>, crate::Error> {
        Ok(match self {
            DeviceAddress::Pkcs11(uri) => {
                // Loading and initialising a PKCS#11 module from several
                // threads at once is not something every module survives.
                static OPENING: std::sync::Mutex<()> = std::sync::Mutex::new(());
                let _one = OPENING.lock().unwrap_or_else(|p| p.into_inner());
                Box::new(pkcs11::Pkcs11Device::open(uri)?)
            }
            DeviceAddress::Serial(tty) => Box::new(SerialDevice::open_with(tty, serial.clone())?),
        })
    }
}

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

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn no_pin_is_shown_wherever_it_was_put() {
        let cases = [
            (
                "pkcs11:token=dev-1?module-path=/m.so&pin-value=1234",
                "pkcs11:token=dev-1",
            ),
            (
                "pkcs11:token=dev-1;pin-value=1234?module-path=/m.so",
                "pkcs11:token=dev-1",
            ),
            ("PKCS11:PIN-SOURCE=/p;token=x", "PKCS11:token=x"),
            ("serial:/dev/pts/3", "serial:/dev/pts/3"),
        ];
        for (given, shown) in cases {
            assert_eq!(redacted(given), shown, "{given}");
            assert!(!format!("{:?}", super::DeviceAddress::parse(given)).contains("1234"));
        }
    }
}
