//! Requirement (vBus KMS policy file, `[stations."<id>"]`): *"rules of one
//! station"* — a station acts only within its own station rule, so a
//! station holding the `station` role but without a `[stations."<id>"]`
//! entry is refused (*"a station with no rule = denied"*,
//! `no_station_rule`). The local operator *"has no station rules"* and
//! skips this rule.

use std::fmt;

use crate::decision::{Code, Denial};
use crate::policy::{Policy, Station};

/// Why the station rule passed.
pub(crate) struct Found<'a> {
    id: &'a str,
    /// The station's rule.
    pub(crate) station: &'a Station,
}

impl fmt::Display for Found<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} has a station rule (modules {}; {} serial range(s))",
            self.id,
            crate::names::join(&self.station.modules),
            self.station.ranges.len()
        )
    }
}

/// The station rule.
pub(crate) fn check<'a>(policy: &'a Policy, id: &'a str) -> Result<Found<'a>, Denial> {
    match policy.stations.get(id) {
        Some(station) => Ok(Found { id, station }),
        None => Err(Denial::new(
            Code::NoStationRule,
            format!(
                "the policy has no [stations.{}] rule",
                crate::names::shown(id)
            ),
        )),
    }
}
