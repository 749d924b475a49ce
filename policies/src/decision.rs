//! A decision is a value: allow (with the terms the policy sets), or deny
//! with a stable code and a reason for humans.

use std::fmt;

use serde::Serialize;

/// The outcome of [`Policy::decide`](crate::Policy::decide).
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Decision {
    /// The action is allowed, on these terms.
    Allow(Terms),
    /// The action is refused.
    Deny(Denial),
}

impl Decision {
    /// Whether the action is allowed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    /// The refusal's code, if refused.
    pub fn code(&self) -> Option<Code> {
        match self {
            Decision::Allow(_) => None,
            Decision::Deny(d) => Some(d.code),
        }
    }

    /// As a `Result`, for `?`.
    pub fn into_result(self) -> Result<Terms, Denial> {
        match self {
            Decision::Allow(t) => Ok(t),
            Decision::Deny(d) => Err(d),
        }
    }
}

/// What the policy adds to an allowed action.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Terms {
    /// The certificate lifetime the policy sets for the module type
    /// (`profiles.<TYPE>.validity_days`), if it sets one; otherwise the CA
    /// profile decides.
    pub validity_days: Option<u32>,
}

/// A refusal: a stable code for machines, a reason for humans.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{code}: {reason}")]
pub struct Denial {
    /// The stable code.
    pub code: Code,
    /// Why, naming the rule and the values involved.
    pub reason: String,
    /// For [`Code::QuotaExceeded`] only: the unix time (seconds) from which
    /// a slot is free again.
    pub retry_after: Option<i64>,
}

impl Denial {
    /// A denial without a retry time.
    pub(crate) fn new(code: Code, reason: impl Into<String>) -> Self {
        Denial {
            code,
            reason: reason.into(),
            retry_after: None,
        }
    }
}

/// The stable refusal codes (`snake_case`, see [`Code::as_str`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// The client identity is not in the policy.
    UnknownIdentity,
    /// The identity holds none of the roles the action needs.
    RoleNotPermitted,
    /// The station has no `[stations."<id>"]` rule.
    NoStationRule,
    /// The station may not handle this module type.
    ModuleNotAllowed,
    /// The serial is outside the station's ranges and work orders.
    SerialNotAllowed,
    /// The module serial is not `VBUS-{TYPE}-YYMM-NNNNNN`.
    MalformedSerial,
    /// The station's hourly or daily quota is used up.
    QuotaExceeded,
    /// The key type is unknown or not allowed for the module type.
    KeyTypeNotAllowed,
    /// Stations may not re-enroll without an officer's permission.
    ReenrollNotPermitted,
    /// The requester may not approve their own request.
    SelfApproval,
    /// The approver has already approved this request.
    DuplicateApproval,
    /// The approver does not hold the role the approval needs.
    ApproverNotEligible,
}

impl Code {
    /// The stable `snake_case` code for API errors and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::UnknownIdentity => "unknown_identity",
            Code::RoleNotPermitted => "role_not_permitted",
            Code::NoStationRule => "no_station_rule",
            Code::ModuleNotAllowed => "module_not_allowed",
            Code::SerialNotAllowed => "serial_not_allowed",
            Code::MalformedSerial => "malformed_serial",
            Code::QuotaExceeded => "quota_exceeded",
            Code::KeyTypeNotAllowed => "key_type_not_allowed",
            Code::ReenrollNotPermitted => "reenroll_not_permitted",
            Code::SelfApproval => "self_approval",
            Code::DuplicateApproval => "duplicate_approval",
            Code::ApproverNotEligible => "approver_not_eligible",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rule's verdict in an [`explain`](crate::Policy::explain).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The rule: `role`, `station`, `module`, `serial`, `key_type`,
    /// `validity`, `reenroll` or `quota`.
    pub rule: &'static str,
    /// What the rule found: why it passes, or the refusal.
    pub verdict: Result<String, Denial>,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.verdict {
            Ok(why) => write!(f, "{:<9} ok    {why}", self.rule),
            Err(d) => write!(f, "{:<9} DENY  {}: {}", self.rule, d.code, d.reason),
        }
    }
}
