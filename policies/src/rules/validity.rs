//! Requirement (vBus KMS policy file, `[profiles.<TYPE>]`): *"validity_days
//! = 3650 # optional, 1..=36500"* — *"`Terms.validity_days` from
//! `profiles.<TYPE>.validity_days`"*: the policy's certificate lifetime for
//! the module type travels with the allow; without one the CA profile
//! decides. This rule never refuses.

use std::fmt;

use crate::decision::{Denial, Terms};
use crate::names::ModuleType;
use crate::policy::Policy;

/// The validity the policy sets for a module type.
pub(crate) struct Validity {
    module: ModuleType,
    days: Option<u32>,
}

impl Validity {
    /// The terms it gives.
    pub(crate) fn terms(&self) -> Terms {
        Terms {
            validity_days: self.days,
        }
    }
}

impl fmt::Display for Validity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.days {
            Some(days) => write!(
                f,
                "{} certificates are valid for {days} days (profiles.{}.validity_days)",
                self.module, self.module
            ),
            None => write!(
                f,
                "the policy sets no validity for {} certificates; the CA profile decides",
                self.module
            ),
        }
    }
}

/// The validity rule (never refuses).
pub(crate) fn check(policy: &Policy, module: ModuleType) -> Result<Validity, Denial> {
    Ok(Validity {
        module,
        days: policy.terms_for(module).validity_days,
    })
}
