//! Quotas: fixed UTC windows, the last device of a quota allowed and the
//! next refused with the exact retry time, admission accounting (keep
//! consumes the slot, drop gives it back) and atomic reservation under
//! concurrency.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use policies::{Action, Actor, Admission, Code, Decision, Policy, Quotas, Usage};

const POLICY: &str = r#"
version = 1

[identities]
"station-01" = ["station"]
"station-02" = ["station"]
"station-03" = ["station"]
"station-04" = ["station"]

[stations."station-01"]        # both quotas
modules = ["CPU"]
serials = ["VBUS-CPU-2412-003000..003999"]
per_hour = 3
per_day = 5

[stations."station-02"]        # a daily quota only
modules = ["CPU"]
per_day = 2

[stations."station-03"]        # no quota
modules = ["CPU"]

[stations."station-04"]        # for the concurrency test
modules = ["CPU"]
serials = ["VBUS-CPU-2412-000000..999999"]
per_hour = 100
"#;

/// 2024-12-01T00:00:00Z.
const MIDNIGHT: i64 = 1_733_011_200;
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;
/// 2024-12-01T12:00:00Z.
const NOON: i64 = MIDNIGHT + 12 * HOUR;

const ISSUE: Action<'static> = Action::IssueDevice {
    module_serial: "VBUS-CPU-2412-003000",
    key_type: "ecdsa-p256",
};

fn policy() -> Policy {
    Policy::parse(POLICY).unwrap()
}

/// What one step of a quota scenario does.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// Admitted (and kept).
    Allowed,
    /// Refused with quota_exceeded, retry at this time, the reason naming
    /// it in RFC 3339.
    Refused(i64, &'static str),
}

fn run(station: &'static str, rows: &[(&str, i64, Want)]) {
    let policy = policy();
    let quotas = Quotas::new();
    let actor = Actor::Client(station);
    for (name, at, want) in rows {
        // decide agrees with admit, and does not count
        let before = quotas.usage(station, *at);
        let decided = policy.decide(&actor, &ISSUE, &quotas, *at);
        assert_eq!(quotas.usage(station, *at), before, "{name}");
        match (policy.admit(&actor, &ISSUE, &quotas, *at), want) {
            (Ok(admission), Want::Allowed) => {
                assert!(decided.is_allowed(), "{name}: {decided:?}");
                admission.keep();
            }
            (Err(d), Want::Refused(retry, rfc3339)) => {
                assert_eq!(d.code, Code::QuotaExceeded, "{name}: {d}");
                assert_eq!(d.retry_after, Some(*retry), "{name}: {d}");
                assert!(d.reason.contains(rfc3339), "{name}: {d}");
                assert_eq!(decided, Decision::Deny(d), "{name}");
            }
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn per_hour_boundaries() {
    let next_hour = NOON + HOUR;
    #[rustfmt::skip]
    let rows = [
        ("1st of the hour", NOON, Want::Allowed),
        ("2nd", NOON + 1, Want::Allowed),
        ("3rd: the last of the hourly quota", NOON + 2, Want::Allowed),
        ("4th: refused until the next hour", NOON + 3, Want::Refused(next_hour, "2024-12-01T13:00:00Z")),
        ("still refused at the hour's last second", next_hour - 1, Want::Refused(next_hour, "2024-12-01T13:00:00Z")),
        ("the first of the next hour", next_hour, Want::Allowed),
        ("5th of the day: the last of the daily quota", next_hour + 1, Want::Allowed),
        ("6th of the day: refused until midnight", next_hour + 2, Want::Refused(MIDNIGHT + DAY, "2024-12-02T00:00:00Z")),
        ("a fresh hour does not help a full day", NOON + 5 * HOUR, Want::Refused(MIDNIGHT + DAY, "2024-12-02T00:00:00Z")),
        ("the first of the next day", MIDNIGHT + DAY, Want::Allowed),
    ];
    run("station-01", &rows);
}

#[test]
fn per_day_boundary_at_utc_midnight() {
    let last_second = MIDNIGHT + DAY - 1;
    #[rustfmt::skip]
    let rows = [
        ("1st of the day", MIDNIGHT + 10 * HOUR, Want::Allowed),
        ("2nd: the last of the daily quota", last_second - 1, Want::Allowed),
        ("refused at 23:59:59", last_second, Want::Refused(MIDNIGHT + DAY, "2024-12-02T00:00:00Z")),
        ("allowed at 00:00:00", MIDNIGHT + DAY, Want::Allowed),
        ("2nd of the new day", MIDNIGHT + DAY + 1, Want::Allowed),
        ("3rd of the new day", MIDNIGHT + DAY + 2, Want::Refused(MIDNIGHT + 2 * DAY, "2024-12-03T00:00:00Z")),
    ];
    run("station-02", &rows);
}

#[test]
fn both_windows_full_retry_at_the_later() {
    let policy = policy();
    let quotas = Quotas::new();
    // 5 in the last hour of the day: hour (3) and day (5) both full.
    let late = MIDNIGHT + 23 * HOUR;
    for i in 0..2 {
        quotas.record("station-01", late - HOUR + i);
    }
    for i in 0..3 {
        quotas.record("station-01", late + i);
    }
    assert_eq!(quotas.usage("station-01", late), Usage { hour: 3, day: 5 });
    let d = policy
        .admit(&Actor::Client("station-01"), &ISSUE, &quotas, late + 10)
        .unwrap_err();
    assert_eq!(d.code, Code::QuotaExceeded);
    assert_eq!(d.retry_after, Some(MIDNIGHT + DAY));
    assert!(
        d.reason.contains("per_hour") && d.reason.contains("per_day"),
        "{d}"
    );
}

#[test]
fn keep_consumes_the_slot_and_drop_gives_it_back() {
    let policy = policy();
    let quotas = Quotas::new();
    let s1 = Actor::Client("station-01");
    let usage = || quotas.usage("station-01", NOON);

    let a = policy.admit(&s1, &ISSUE, &quotas, NOON).unwrap();
    assert!(a.reserved());
    assert_eq!(a.terms.validity_days, None);
    assert_eq!(
        usage(),
        Usage { hour: 1, day: 1 },
        "a held admission counts"
    );
    drop(a);
    assert_eq!(usage(), Usage::default(), "dropped: the slot is back");

    policy.admit(&s1, &ISSUE, &quotas, NOON).unwrap().keep();
    assert_eq!(usage(), Usage { hour: 1, day: 1 }, "kept: the slot is used");

    // Held admissions fill the quota; dropping one frees a slot.
    let held: Vec<Admission> = (0..2)
        .map(|_| policy.admit(&s1, &ISSUE, &quotas, NOON).unwrap())
        .collect();
    let refused = policy.admit(&s1, &ISSUE, &quotas, NOON).unwrap_err();
    assert_eq!(refused.code, Code::QuotaExceeded);
    drop(held);
    assert_eq!(usage(), Usage { hour: 1, day: 1 });
    let again = policy.admit(&s1, &ISSUE, &quotas, NOON).unwrap();
    again.keep();
    assert_eq!(usage(), Usage { hour: 2, day: 2 });

    // A refused request counts nothing.
    let other = Action::IssueDevice {
        module_serial: "VBUS-CPU-2412-004000",
        key_type: "ecdsa-p256",
    };
    assert_eq!(
        policy.admit(&s1, &other, &quotas, NOON).unwrap_err().code,
        Code::SerialNotAllowed
    );
    assert_eq!(usage(), Usage { hour: 2, day: 2 });
}

#[test]
fn a_dropped_admission_returns_exactly_the_window_it_took() {
    let policy = policy();
    let quotas = Quotas::new();
    let s1 = Actor::Client("station-01");
    let first = policy.admit(&s1, &ISSUE, &quotas, NOON + 1800).unwrap();
    policy
        .admit(&s1, &ISSUE, &quotas, NOON + HOUR + 600)
        .unwrap()
        .keep();
    assert_eq!(
        quotas.usage("station-01", NOON + HOUR + 600),
        Usage { hour: 1, day: 2 }
    );
    drop(first);
    assert_eq!(
        quotas.usage("station-01", NOON + HOUR + 600),
        Usage { hour: 1, day: 1 },
        "the next hour keeps its count; the day gives one back"
    );
}

#[test]
fn no_reservation_without_a_quota() {
    let policy = policy();
    let quotas = Quotas::new();
    let rows = [
        ("station without quota", Actor::Client("station-03"), ISSUE),
        ("local operator", Actor::Local, ISSUE),
        (
            "device record",
            Actor::Client("station-01"),
            Action::DeviceRecord {
                module_serial: "VBUS-CPU-2412-003000",
            },
        ),
    ];
    for (name, actor, action) in rows {
        for _ in 0..10 {
            let a = policy.admit(&actor, &action, &quotas, NOON).unwrap();
            assert!(!a.reserved(), "{name}");
            a.keep();
        }
    }
    for id in ["station-01", "station-03"] {
        assert_eq!(quotas.usage(id, NOON), Usage::default());
    }
}

#[test]
fn seeded_counts_are_honoured() {
    let policy = policy();
    let quotas = Quotas::new();
    for i in 0..3 {
        quotas.record("station-01", NOON + i);
    }
    quotas.record("station-01", NOON - DAY); // yesterday: ignored
    assert_eq!(quotas.usage("station-01", NOON), Usage { hour: 3, day: 3 });
    let d = policy
        .admit(&Actor::Client("station-01"), &ISSUE, &quotas, NOON + 60)
        .unwrap_err();
    assert_eq!(d.code, Code::QuotaExceeded);
    assert_eq!(d.retry_after, Some(NOON + HOUR));
}

#[test]
fn eight_threads_against_per_hour_100_keep_exactly_100() {
    let policy = Arc::new(policy());
    let quotas = Quotas::new();
    let kept = Arc::new(AtomicU32::new(0));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (policy, quotas, kept) = (Arc::clone(&policy), quotas.clone(), Arc::clone(&kept));
            std::thread::spawn(move || {
                // Until the quota is used up (capped, so that a bug fails
                // rather than hangs); every third admission is dropped, as
                // for a request that failed after admission.
                for i in 0..10_000u32 {
                    if kept.load(Ordering::SeqCst) >= 100 {
                        return;
                    }
                    let serial = format!("VBUS-CPU-2412-{:06}", t * 10_000 + i);
                    let action = Action::IssueDevice {
                        module_serial: &serial,
                        key_type: "ecdsa-p256",
                    };
                    match policy.admit(&Actor::Client("station-04"), &action, &quotas, NOON) {
                        Ok(admission) if i % 3 == 0 => drop(admission),
                        Ok(admission) => {
                            admission.keep();
                            kept.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(d) => assert_eq!(d.code, Code::QuotaExceeded),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(kept.load(Ordering::SeqCst), 100);
    assert_eq!(
        quotas.usage("station-04", NOON),
        Usage {
            hour: 100,
            day: 100
        }
    );
}
