//! Issuance counts per station in fixed UTC windows (hour = ⌊t/3600⌋,
//! day = ⌊t/86400⌋), shared by every request, and the reservation an
//! [`Admission`] holds until the certificate is issued.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::decision::{Denial, Terms};

/// Seconds in an hour window.
pub(crate) const HOUR: i64 = 3600;
/// Seconds in a day window.
pub(crate) const DAY: i64 = 86_400;

/// The hour window of `t`.
pub(crate) fn hour_of(t: i64) -> i64 {
    t.div_euclid(HOUR)
}

/// The day window of `t`.
pub(crate) fn day_of(t: i64) -> i64 {
    t.div_euclid(DAY)
}

/// A station's issuances in the windows around `now`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Issued in the current UTC hour.
    pub hour: u64,
    /// Issued in the current UTC day.
    pub day: u64,
}

/// One station's counts per window.
#[derive(Debug, Default)]
struct Counts {
    hours: BTreeMap<i64, u64>,
    days: BTreeMap<i64, u64>,
}

impl Counts {
    fn usage(&self, now: i64) -> Usage {
        Usage {
            hour: self.hours.get(&hour_of(now)).copied().unwrap_or(0),
            day: self.days.get(&day_of(now)).copied().unwrap_or(0),
        }
    }

    fn add(&mut self, hour: i64, day: i64) {
        let h = self.hours.entry(hour).or_insert(0);
        *h = h.saturating_add(1);
        let d = self.days.entry(day).or_insert(0);
        *d = d.saturating_add(1);
    }

    fn sub(&mut self, hour: i64, day: i64) {
        if let Some(h) = self.hours.get_mut(&hour) {
            *h = h.saturating_sub(1);
        }
        if let Some(d) = self.days.get_mut(&day) {
            *d = d.saturating_sub(1);
        }
    }

    /// Drops the hour windows before `hour` and the day windows before
    /// `day`.
    fn prune(&mut self, hour: i64, day: i64) {
        if self.hours.first_key_value().is_some_and(|(k, _)| *k < hour) {
            self.hours = self.hours.split_off(&hour);
        }
        if self.days.first_key_value().is_some_and(|(k, _)| *k < day) {
            self.days = self.days.split_off(&day);
        }
    }
}

type Table = HashMap<String, Counts>;

/// Issuance counts per station, shared by every request (clone it freely:
/// clones share the counts). Seed it at start from the audit log with
/// [`Quotas::record`]; [`Policy::admit`](crate::Policy::admit) reserves
/// slots in it.
#[derive(Clone, Debug, Default)]
pub struct Quotas {
    table: Arc<Mutex<Table>>,
}

impl Quotas {
    /// No issuances counted yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The table. A panic while holding the lock cannot leave the counts
    /// half-updated (every update is one statement), so a poisoned lock is
    /// used as is.
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one issuance by `station` at unix time `at` (to seed the counts
    /// from the audit log at start).
    pub fn record(&self, station: &str, at: i64) {
        let mut table = self.lock();
        let counts = table.entry(station.to_owned()).or_default();
        // Seeding may come slightly out of order: keep a day of history
        // behind the newest record, enough for any `now` after it.
        counts.prune(hour_of(at).saturating_sub(24), day_of(at).saturating_sub(1));
        counts.add(hour_of(at), day_of(at));
    }

    /// `station`'s issuances in the hour and the day of `now`.
    pub fn usage(&self, station: &str, now: i64) -> Usage {
        self.lock()
            .get(station)
            .map(|c| c.usage(now))
            .unwrap_or_default()
    }

    /// Under one lock: runs `check` on the usage at `now` and, if it passes,
    /// counts one issuance, returned as a reservation that gives the slot
    /// back when dropped unkept.
    pub(crate) fn reserve<T>(
        &self,
        station: &str,
        now: i64,
        check: impl FnOnce(Usage) -> Result<T, Denial>,
    ) -> Result<(T, Reservation), Denial> {
        let mut table = self.lock();
        let usage = match table.get_mut(station) {
            Some(counts) => {
                counts.prune(hour_of(now), day_of(now));
                counts.usage(now)
            }
            None => Usage::default(),
        };
        let passed = check(usage)?;
        let (hour, day) = (hour_of(now), day_of(now));
        match table.get_mut(station) {
            Some(counts) => counts.add(hour, day),
            None => {
                let mut counts = Counts::default();
                counts.add(hour, day);
                table.insert(station.to_owned(), counts);
            }
        }
        drop(table);
        Ok((
            passed,
            Reservation {
                table: Arc::clone(&self.table),
                station: station.to_owned(),
                hour,
                day,
                armed: true,
            },
        ))
    }
}

/// One counted issuance, given back on drop unless kept.
#[derive(Debug)]
pub(crate) struct Reservation {
    table: Arc<Mutex<Table>>,
    station: String,
    hour: i64,
    day: i64,
    armed: bool,
}

impl Reservation {
    /// The issuance happened: the slot stays used.
    fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(counts) = table.get_mut(&self.station) {
            counts.sub(self.hour, self.day);
        }
    }
}

/// An allowed action, holding the quota slot it reserved (if the station has
/// a quota). Call [`Admission::keep`] once the certificate is issued; an
/// admission dropped without `keep` gives its slot back (a request that
/// failed, or returned an already-issued certificate, does not count).
/// `Admission::default()` holds no slot and no terms: for an action that
/// issues nothing.
#[derive(Debug, Default)]
#[must_use = "dropping an Admission gives its quota slot back; call keep() once issued"]
pub struct Admission {
    /// The terms of the allowed action.
    pub terms: Terms,
    reservation: Option<Reservation>,
}

impl Admission {
    pub(crate) fn new(terms: Terms, reservation: Option<Reservation>) -> Self {
        Admission { terms, reservation }
    }

    /// Whether this admission holds a quota slot.
    pub fn reserved(&self) -> bool {
        self.reservation.is_some()
    }

    /// The action was carried out: the reserved quota slot is consumed.
    pub fn keep(mut self) {
        if let Some(r) = self.reservation.take() {
            r.keep();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_fixed_utc_hours_and_days() {
        // 2024-12-01T00:00:00Z
        let midnight = 1_733_011_200;
        let rows = [
            (midnight - 1, hour_of(midnight) - 1, day_of(midnight) - 1),
            (midnight, hour_of(midnight), day_of(midnight)),
            (midnight + 3599, hour_of(midnight), day_of(midnight)),
            (midnight + 3600, hour_of(midnight) + 1, day_of(midnight)),
            (-1, -1, -1),
        ];
        for (t, hour, day) in rows {
            assert_eq!((hour_of(t), day_of(t)), (hour, day), "{t}");
        }
    }

    #[test]
    fn seeding_keeps_a_bounded_history() {
        let q = Quotas::new();
        let t = 1_733_011_200;
        for i in 0..(10 * DAY / 600) {
            q.record("s", t + i * 600);
        }
        let table = q.lock();
        let counts = &table["s"];
        assert!(counts.hours.len() <= 25, "{}", counts.hours.len());
        assert!(counts.days.len() <= 2, "{}", counts.days.len());
    }

    #[test]
    fn pruning_keeps_the_current_windows() {
        let q = Quotas::new();
        let t = 1_733_011_200;
        q.record("s", t - DAY);
        q.record("s", t - 1);
        q.record("s", t);
        let (_, r) = q.reserve("s", t + 10, Ok).unwrap();
        assert_eq!(q.usage("s", t), Usage { hour: 2, day: 2 });
        assert_eq!(q.usage("s", t - DAY), Usage::default());
        drop(r);
        assert_eq!(q.usage("s", t), Usage { hour: 1, day: 1 });
    }
}
