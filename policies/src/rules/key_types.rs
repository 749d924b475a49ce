//! Requirement (vBus KMS policy file, `[profiles.<TYPE>]`): *"key_types =
//! ["ecdsa-p256"] # optional, non-empty, from ecdsa-p256 ed25519 rsa-2048
//! rsa-3072"* — a device key must be of a type the module type's profile
//! allows, when it restricts them, and of a known type in any case
//! (*"unknown string => denied key_type_not_allowed"*). Applies to the local
//! operator too.

use std::fmt;

use crate::decision::{Code, Denial};
use crate::names::{KeyType, ModuleType, KEY_TYPES};
use crate::policy::Policy;

/// Why the key type rule passed.
pub(crate) struct Allowed {
    key_type: KeyType,
    module: ModuleType,
    restricted: bool,
}

impl fmt::Display for Allowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.restricted {
            write!(
                f,
                "{} is allowed by the {} profile",
                self.key_type, self.module
            )
        } else {
            write!(
                f,
                "{} is a known key type and the {} profile does not restrict key types",
                self.key_type, self.module
            )
        }
    }
}

/// The key type rule.
pub(crate) fn check(
    policy: &Policy,
    module: ModuleType,
    key_type: &str,
) -> Result<Allowed, Denial> {
    let Some(kt) = KeyType::from_name(key_type) else {
        return Err(Denial::new(
            Code::KeyTypeNotAllowed,
            format!(
                "key type {} is not one of {}",
                crate::names::shown(key_type),
                KEY_TYPES.join(", ")
            ),
        ));
    };
    match policy.profile(module).and_then(|p| p.key_types.as_deref()) {
        None => Ok(Allowed {
            key_type: kt,
            module,
            restricted: false,
        }),
        Some(allowed) if allowed.contains(&kt) => Ok(Allowed {
            key_type: kt,
            module,
            restricted: true,
        }),
        Some(allowed) => Err(Denial::new(
            Code::KeyTypeNotAllowed,
            format!(
                "key type {kt} is not allowed for {module} modules (profiles.{module}.key_types: {})",
                crate::names::join(allowed)
            ),
        )),
    }
}
