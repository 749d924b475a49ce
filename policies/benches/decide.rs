//! Decisions per second: `admit` + `keep` of a device certificate by a
//! station with quotas and three serial ranges (the hot path of every
//! issuance), and `decide` for a refused request. One `Quotas` is shared by
//! both, as in the service.
#![allow(clippy::panic, missing_docs)] // a refused request is a broken benchmark; criterion_group! is undocumented

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use policies::{Action, Actor, Policy, Quotas};

const POLICY: &str = r#"
version = 1

[identities]
"officer-01" = ["officer", "firmware-signer", "auditor"]
"station-01" = ["station"]

[stations."station-01"]
modules = ["CPU", "PWR"]
serials = ["VBUS-CPU-2412-003000..003999", "VBUS-CPU-2501-000000..000499"]
work_orders = ["WO-2412-017"]
# high enough that the benchmark never runs out
per_hour = 4000000000
per_day = 4000000000

[work_orders."WO-2412-017"]
serials = ["VBUS-PWR-2412-000100..000199"]

[profiles.PWR]
key_types = ["ecdsa-p256", "ed25519"]
validity_days = 3650
"#;

/// 2024-12-01T12:00:00Z.
const NOON: i64 = 1_733_054_400;

fn bench(c: &mut Criterion) {
    let policy = match Policy::parse(POLICY) {
        Ok(p) => p,
        Err(e) => panic!("bench policy: {e}"),
    };
    let quotas = Quotas::new();
    let station = Actor::Client("station-01");
    // In the third range (the work order's), so every range is tried.
    let allowed = Action::IssueDevice {
        module_serial: "VBUS-PWR-2412-000150",
        key_type: "ecdsa-p256",
    };
    // Outside every range: refused with serial_not_allowed.
    let refused = Action::IssueDevice {
        module_serial: "VBUS-CPU-2412-004000",
        key_type: "ecdsa-p256",
    };

    let mut group = c.benchmark_group("policy");
    group.throughput(Throughput::Elements(1));
    group.bench_function("admit+keep issue_device (station, quotas, 3 ranges)", |b| {
        b.iter(
            || match policy.admit(&station, black_box(&allowed), &quotas, NOON) {
                Ok(admission) => admission.keep(),
                Err(d) => panic!("refused: {d}"),
            },
        )
    });
    group.bench_function("decide issue_device refused (serial_not_allowed)", |b| {
        b.iter(|| {
            let decision = policy.decide(&station, black_box(&refused), &quotas, NOON);
            assert!(!decision.is_allowed());
            decision
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
