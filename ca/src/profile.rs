//! Certificate profiles per module type, as data (TOML).
//!
//! ```toml
//! [CPU]
//! validity_days = 7300
//! key_types = ["ecdsa-p256"]            # ecdsa-p256, ed25519, rsa-2048, rsa-3072
//! key_usage = ["digital_signature"]     # digital_signature, non_repudiation, key_encipherment, key_agreement
//! extended_key_usage = ["client_auth"]  # client_auth, server_auth
//! hardware_module_name = true           # SAN otherName hardwareModuleName (RFC 4108)
//! aes_keys = ["data"]                   # AES-256 device keys minted and escrowed (optional)
//! ```
//!
//! The profile decides every field of a device certificate; the CSR only
//! contributes its key.

use std::collections::BTreeMap;

use der::asn1::ObjectIdentifier as Oid;
use serde::Deserialize;
use x509_cert::ext::pkix::KeyUsages;

use crate::error::{Error, Result};
use crate::ident::ModuleType;
use crate::oids;

/// Device key types a profile may allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
pub enum KeyType {
    /// ECDSA on P-256 (the default).
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    /// Ed25519.
    #[serde(rename = "ed25519")]
    Ed25519,
    /// RSA, 2048-bit modulus.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    /// RSA, 3072-bit modulus.
    #[serde(rename = "rsa-3072")]
    Rsa3072,
}

impl KeyType {
    /// The name used in profiles and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::Ed25519 => "ed25519",
            KeyType::Rsa2048 => "rsa-2048",
            KeyType::Rsa3072 => "rsa-3072",
        }
    }
}

/// Key usages a device certificate may carry (never keyCertSign or cRLSign).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyUsageName {
    /// digitalSignature.
    DigitalSignature,
    /// nonRepudiation / contentCommitment.
    NonRepudiation,
    /// keyEncipherment.
    KeyEncipherment,
    /// keyAgreement.
    KeyAgreement,
}

impl KeyUsageName {
    fn flag(self) -> KeyUsages {
        match self {
            KeyUsageName::DigitalSignature => KeyUsages::DigitalSignature,
            KeyUsageName::NonRepudiation => KeyUsages::NonRepudiation,
            KeyUsageName::KeyEncipherment => KeyUsages::KeyEncipherment,
            KeyUsageName::KeyAgreement => KeyUsages::KeyAgreement,
        }
    }
}

/// Extended key usages a device certificate may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EkuName {
    /// id-kp-clientAuth.
    ClientAuth,
    /// id-kp-serverAuth.
    ServerAuth,
}

impl EkuName {
    /// Its OID.
    pub fn oid(self) -> Oid {
        match self {
            EkuName::ClientAuth => oids::KP_CLIENT_AUTH,
            EkuName::ServerAuth => oids::KP_SERVER_AUTH,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    validity_days: u32,
    key_types: Vec<KeyType>,
    key_usage: Vec<KeyUsageName>,
    extended_key_usage: Vec<EkuName>,
    #[serde(default = "yes")]
    hardware_module_name: bool,
    #[serde(default)]
    aes_keys: Vec<String>,
}

fn yes() -> bool {
    true
}

/// One module type's profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    /// The module type name (`CPU`, …).
    pub name: String,
    /// Certificate lifetime (capped at the issuer's notAfter).
    pub validity_days: u32,
    /// Key types accepted.
    pub key_types: Vec<KeyType>,
    /// Key usages, in the order given.
    pub key_usage: Vec<KeyUsageName>,
    /// Extended key usages, in the order given.
    pub extended_key_usage: Vec<EkuName>,
    /// Whether the SAN carries the RFC 4108 hardwareModuleName.
    pub hardware_module_name: bool,
    /// Names of the AES-256 device keys the appliance mints and escrows for
    /// this module type (`POST /v1/devices/{serial}/keys/{name}`), e.g.
    /// `data`, `kek`; `[a-z0-9_-]{1,32}`, not `psk` or `keypair`.
    pub aes_keys: Vec<String>,
}

impl Profile {
    /// The key usage bits.
    pub fn key_usage_flags(&self) -> flagset::FlagSet<KeyUsages> {
        self.key_usage
            .iter()
            .fold(flagset::FlagSet::default(), |acc, k| acc | k.flag())
    }

    /// The EKU OIDs.
    pub fn eku_oids(&self) -> Vec<Oid> {
        self.extended_key_usage.iter().map(|e| e.oid()).collect()
    }
}

/// The profiles of every module type that may be certified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profiles(BTreeMap<ModuleType, Profile>);

/// The profiles shipped with the appliance (`deploy/profiles.toml`).
pub const DEFAULT_PROFILES: &str = include_str!("../../deploy/profiles.toml");

impl Profiles {
    /// Parse and validate a profile file; errors name the line and the reason.
    pub fn parse(text: &str) -> Result<Self> {
        let raw: BTreeMap<String, ProfileFile> =
            toml::from_str(text).map_err(|e| Error::ProfileConfig(e.to_string()))?;
        let mut out = BTreeMap::new();
        for (name, p) in raw {
            let module_type = ModuleType::ALL
                .into_iter()
                .find(|t| t.as_str() == name)
                .ok_or_else(|| {
                    Error::ProfileConfig(format!(
                        "[{name}]: not a module type (CPU, PWR, PERIPH, COMM)"
                    ))
                })?;
            let fail = |why: &str| Err(Error::ProfileConfig(format!("[{name}]: {why}")));
            if !(1..=36_500).contains(&p.validity_days) {
                return fail("validity_days must be 1 to 36500");
            }
            if p.key_types.is_empty() {
                return fail("key_types must not be empty");
            }
            if !p.key_usage.contains(&KeyUsageName::DigitalSignature) {
                return fail("key_usage must include digital_signature");
            }
            if p.extended_key_usage.is_empty() {
                return fail("extended_key_usage must not be empty");
            }
            let dup = |v: Vec<String>| {
                v.len() != v.iter().collect::<std::collections::HashSet<_>>().len()
            };
            if dup(p.key_types.iter().map(|k| format!("{k:?}")).collect())
                || dup(p.key_usage.iter().map(|k| format!("{k:?}")).collect())
                || dup(p
                    .extended_key_usage
                    .iter()
                    .map(|k| format!("{k:?}"))
                    .collect())
                || dup(p.aes_keys.clone())
            {
                return fail("a list names the same value twice");
            }
            if let Some(bad) = p.aes_keys.iter().find(|k| {
                k.is_empty()
                    || k.len() > 32
                    || matches!(k.as_str(), "psk" | "keypair")
                    || !k.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    })
            }) {
                return fail(&format!(
                    "aes_keys name {bad:?} must be [a-z0-9_-]{{1,32}} and not psk or keypair"
                ));
            }
            out.insert(
                module_type,
                Profile {
                    name,
                    validity_days: p.validity_days,
                    key_types: p.key_types,
                    key_usage: p.key_usage,
                    extended_key_usage: p.extended_key_usage,
                    hardware_module_name: p.hardware_module_name,
                    aes_keys: p.aes_keys,
                },
            );
        }
        if out.is_empty() {
            return Err(Error::ProfileConfig("no profiles defined".into()));
        }
        Ok(Self(out))
    }

    /// The profile for `t`.
    pub fn get(&self, t: ModuleType) -> Result<&Profile> {
        self.0
            .get(&t)
            .ok_or_else(|| Error::ProfileNotFound(t.as_str().into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_profiles_parse() {
        let p = Profiles::parse(DEFAULT_PROFILES).unwrap();
        for t in ModuleType::ALL {
            assert!(p.get(t).is_ok(), "{t}");
        }
    }

    #[test]
    fn bad_profiles_are_refused_with_the_reason() {
        let base = "validity_days = 10\nkey_types = [\"ecdsa-p256\"]\nkey_usage = [\"digital_signature\"]\nextended_key_usage = [\"client_auth\"]\n";
        let rows = [
            ("[GPU]\n".to_owned() + base, "not a module type"),
            (
                "[CPU]\n".to_owned() + &base.replace("10", "0"),
                "validity_days",
            ),
            (
                "[CPU]\n".to_owned() + &base.replace("[\"ecdsa-p256\"]", "[]"),
                "key_types must not be empty",
            ),
            (
                "[CPU]\n".to_owned() + &base.replace("ecdsa-p256", "p-192"),
                "unknown variant `p-192`",
            ),
            (
                "[CPU]\n".to_owned() + &base.replace("digital_signature", "key_cert_sign"),
                "unknown variant",
            ),
            (
                "[CPU]\n".to_owned()
                    + &base.replace("[\"digital_signature\"]", "[\"key_agreement\"]"),
                "must include digital_signature",
            ),
            (
                "[CPU]\n".to_owned() + base + "is_ca = true\n",
                "unknown field `is_ca`",
            ),
            (
                "[CPU]\n".to_owned()
                    + &base.replace("[\"client_auth\"]", "[\"client_auth\", \"client_auth\"]"),
                "twice",
            ),
            (String::new(), "no profiles"),
        ];
        for (text, want) in rows {
            let err = Profiles::parse(&text).unwrap_err();
            assert_eq!(err.code(), "config_invalid");
            assert!(err.to_string().contains(want), "{text}: {err}");
        }
    }
}
