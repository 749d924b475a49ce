//! Requirement (vBus KMS policy file, `[stations."<id>"]`): *"per_hour = 500
//! # optional quota"*, *"per_day = 6000 # optional quota"* — in fixed UTC
//! windows (*"hour = floor(t/3600), day = floor(t/86400)"*): *"The last
//! device of a quota is allowed; the next is denied; the first of the next
//! hour is allowed again (if the day quota allows)."* A refusal
//! (`quota_exceeded`) carries *"retry_after = start of the next window that
//! frees a slot: next UTC hour for per_hour, next UTC day for per_day, the
//! later if both are full"*.

use std::fmt;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::decision::{Code, Denial};
use crate::policy::Station;
use crate::quota_state::{day_of, hour_of, Usage, DAY, HOUR};

/// Why the quota rule passed.
pub(crate) struct Note<'a> {
    id: &'a str,
    usage: Usage,
    per_hour: Option<u32>,
    per_day: Option<u32>,
}

impl fmt::Display for Note<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.per_hour.is_none() && self.per_day.is_none() {
            return write!(f, "{} has no quota", self.id);
        }
        write!(f, "{} has used", self.id)?;
        let mut sep = "";
        if let Some(n) = self.per_hour {
            write!(f, " {} of {n} this UTC hour", self.usage.hour)?;
            sep = ",";
        }
        if let Some(n) = self.per_day {
            write!(f, "{sep} {} of {n} this UTC day", self.usage.day)?;
        }
        Ok(())
    }
}

/// `t` as RFC 3339 UTC.
pub(crate) fn rfc3339(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("unix time {t}"))
}

/// The quota rule, given the station's usage at `now`.
pub(crate) fn check<'a>(
    id: &'a str,
    station: &Station,
    usage: Usage,
    now: i64,
) -> Result<Note<'a>, Denial> {
    let hour_full = station.per_hour.filter(|n| usage.hour >= u64::from(*n));
    let day_full = station.per_day.filter(|n| usage.day >= u64::from(*n));
    let (retry_after, limit) = match (hour_full, day_full) {
        (None, None) => {
            return Ok(Note {
                id,
                usage,
                per_hour: station.per_hour,
                per_day: station.per_day,
            })
        }
        (Some(h), None) => (
            hour_of(now).saturating_add(1).saturating_mul(HOUR),
            format!("its per_hour quota ({} of {h} this UTC hour)", usage.hour),
        ),
        (None, Some(d)) => (
            day_of(now).saturating_add(1).saturating_mul(DAY),
            format!("its per_day quota ({} of {d} this UTC day)", usage.day),
        ),
        (Some(h), Some(d)) => (
            day_of(now).saturating_add(1).saturating_mul(DAY),
            format!(
                "its per_hour quota ({} of {h} this UTC hour) and its per_day quota ({} of {d} \
                 this UTC day)",
                usage.hour, usage.day
            ),
        ),
    };
    Err(Denial {
        code: Code::QuotaExceeded,
        reason: format!(
            "station {id} has used {limit}; retry after {}",
            rfc3339(retry_after)
        ),
        retry_after: Some(retry_after),
    })
}
