//! The closed vocabularies of the policy file: roles, module types and key
//! types.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The module types a station may be allowed to certify, as written in the
/// policy file and in module serials.
pub const MODULE_TYPES: [&str; 4] = ["CPU", "PWR", "PERIPH", "COMM"];

/// The device key types a profile may allow, as written in the policy file.
pub const KEY_TYPES: [&str; 4] = ["ecdsa-p256", "ed25519", "rsa-2048", "rsa-3072"];

/// What an identity may be trusted with. An identity holds any number of
/// roles; an action is allowed only to a holder of a role that permits it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A production station: enrols devices within its station rules.
    Station,
    /// A security officer: revokes, allows re-issues, approves escrow
    /// recovery, administers the appliance.
    Officer,
    /// May sign firmware (under the firmware-signing quorum).
    FirmwareSigner,
    /// May read the audit log and the device records.
    Auditor,
}

impl Role {
    /// Every role, in policy-file order.
    pub const ALL: [Role; 4] = [
        Role::Station,
        Role::Officer,
        Role::FirmwareSigner,
        Role::Auditor,
    ];

    /// The name used in the policy file and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Station => "station",
            Role::Officer => "officer",
            Role::FirmwareSigner => "firmware-signer",
            Role::Auditor => "auditor",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A module type (the second field of a module serial).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
pub(crate) enum ModuleType {
    /// Central processing module.
    #[serde(rename = "CPU")]
    Cpu,
    /// Power module.
    #[serde(rename = "PWR")]
    Pwr,
    /// Peripheral module.
    #[serde(rename = "PERIPH")]
    Periph,
    /// Communication module.
    #[serde(rename = "COMM")]
    Comm,
}

impl ModuleType {
    /// Every module type, in [`MODULE_TYPES`] order.
    pub(crate) const ALL: [ModuleType; 4] = [
        ModuleType::Cpu,
        ModuleType::Pwr,
        ModuleType::Periph,
        ModuleType::Comm,
    ];

    /// The name used in serials, the policy file and messages.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ModuleType::Cpu => "CPU",
            ModuleType::Pwr => "PWR",
            ModuleType::Periph => "PERIPH",
            ModuleType::Comm => "COMM",
        }
    }

    /// The module type named `name`, if any.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for ModuleType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device key type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
pub(crate) enum KeyType {
    /// ECDSA on P-256.
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
    /// Every key type, in [`KEY_TYPES`] order.
    pub(crate) const ALL: [KeyType; 4] = [
        KeyType::EcdsaP256,
        KeyType::Ed25519,
        KeyType::Rsa2048,
        KeyType::Rsa3072,
    ];

    /// The name used in the policy file and messages.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::Ed25519 => "ed25519",
            KeyType::Rsa2048 => "rsa-2048",
            KeyType::Rsa3072 => "rsa-3072",
        }
    }

    /// The key type named `name`, if any.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Joins names with ", " for messages.
pub(crate) fn join<T: fmt::Display>(items: &[T]) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&item.to_string());
    }
    out
}

/// Whether `id` is a valid identity id (or work order name): 1 to 64
/// characters of `A-Z a-z 0-9 . _ -`.
pub(crate) fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `s` quoted for a message, cut at 64 characters so that a hostile input
/// cannot flood the logs.
pub(crate) fn shown(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}…", s.get(..cut).unwrap_or(s)),
    }
}
