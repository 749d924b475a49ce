//! Requirement (vBus KMS policy file, `[reissue]`): *"stations_may_reenroll
//! = false # may a station renew a certified device with a new key (EST
//! simplereenroll) without an officer's permission"* — a client's
//! re-enrolment is refused (`reenroll_not_permitted`) unless the policy sets
//! it to true; the local operator may always re-enrol.

use std::fmt;

use crate::decision::{Code, Denial};
use crate::policy::{Actor, Policy};

/// Why the re-enrolment rule passed.
pub(crate) enum Permitted {
    /// `reissue.stations_may_reenroll = true`.
    ByPolicy,
    /// The local operator.
    Local,
}

impl fmt::Display for Permitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Permitted::ByPolicy => f.write_str("reissue.stations_may_reenroll = true"),
            Permitted::Local => f.write_str("the local operator may re-enroll any device"),
        }
    }
}

/// The re-enrolment rule.
pub(crate) fn check(policy: &Policy, actor: &Actor<'_>) -> Result<Permitted, Denial> {
    match actor {
        Actor::Local => Ok(Permitted::Local),
        Actor::Client(_) if policy.reissue.stations_may_reenroll => Ok(Permitted::ByPolicy),
        Actor::Client(_) => Err(Denial::new(
            Code::ReenrollNotPermitted,
            "stations may not re-enroll a device with a new key (reissue.stations_may_reenroll = \
             false); an officer must allow a re-issue",
        )),
    }
}
