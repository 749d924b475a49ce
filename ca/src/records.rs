//! What the CA keeps in the store, as JSON values.

use serde::{Deserialize, Serialize};

use crate::ident::ModuleType;

/// A certificate the CA issued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRecord {
    /// Lowercase hex, no colons: the key in `Tree::Certificates`.
    pub serial_number: String,
    /// The device.
    pub module_serial: String,
    /// Its module type (the profile used).
    pub module_type: ModuleType,
    /// Its hardware UUID.
    pub hw_uuid: String,
    /// SHA-256 of the certified SubjectPublicKeyInfo, hex.
    pub public_key_sha256: String,
    /// RFC 3339 UTC.
    pub not_before: String,
    /// RFC 3339 UTC.
    pub not_after: String,
    /// The certificate, DER in standard base64.
    pub der: String,
    /// Who asked for it (station or officer identity, `local:<user>`).
    #[serde(default)]
    pub requested_by: String,
}

/// A device and its certificates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The module serial: the key in `Tree::Devices`.
    pub module_serial: String,
    /// Module type.
    pub module_type: ModuleType,
    /// Hardware UUID (lowercase).
    pub hw_uuid: String,
    /// SHA-256 of the current certificate's SubjectPublicKeyInfo, hex.
    pub public_key_sha256: String,
    /// Serial of the current certificate.
    pub certificate: String,
    /// Every certificate issued to it, oldest first.
    pub certificates: Vec<String>,
    /// An officer allowed one re-issue for a new key.
    pub reissue_allowed: bool,
    /// Who asked for the current certificate (the station that provisions it).
    #[serde(default)]
    pub station: String,
}
