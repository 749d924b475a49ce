//! CRL building and signing with a software P-256 key: 10,000, 100,000 and
//! 1,000,000 pre-encoded entries (built once, outside the timed loop), and
//! separately the cost of encoding 1,000,000 entries with `crl_entry`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use ca::testing::SoftP256;
use ca::{crl_entry, CaRole, CrlEntries, CrlIssuer, RevocationReason, Signer};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use time::macros::datetime;
use time::OffsetDateTime;

const THIS_UPDATE: OffsetDateTime = datetime!(2026-11-25 11:00 UTC);
const NEXT_UPDATE: OffsetDateTime = datetime!(2026-12-02 11:00 UTC);

/// A 16-byte serial as the CA draws them (about half with the high bit set).
fn serial(i: u64) -> String {
    let a = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let b = (i ^ 0x5555_5555_5555_5555).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    format!("{a:016x}{b:016x}")
}

/// Revocation `i`: reasons in turn, one in eight with an invalidity date.
type Revocation = (
    String,
    OffsetDateTime,
    RevocationReason,
    Option<OffsetDateTime>,
);

fn revocation(i: u64) -> Revocation {
    let reason = RevocationReason::ALL[(i % 8) as usize];
    let at = THIS_UPDATE - time::Duration::seconds(i as i64);
    let invalidity = (i % 8 == 1).then_some(at - time::Duration::days(1));
    (serial(i), at, reason, invalidity)
}

/// Encode `revocations` with `crl_entry` into one list.
fn encode_all(revocations: &[Revocation]) -> CrlEntries {
    let mut e = CrlEntries::with_capacity(revocations.len(), 48);
    for (serial, at, reason, invalidity) in revocations {
        e.push(&crl_entry(serial, *at, *reason, *invalidity).unwrap());
    }
    e
}

fn entries(n: u64) -> CrlEntries {
    encode_all(&(0..n).map(revocation).collect::<Vec<_>>())
}

fn issuer() -> CrlIssuer {
    let key = SoftP256::generate();
    let params = ca::ca_params(
        CaRole::Intermediate,
        "Bench Manufacturing Intermediate",
        "vBus",
        &ca::Basics {
            serial: vec![0x42; 16],
            not_before: THIS_UPDATE,
            not_after: NEXT_UPDATE,
            subject_key_id: ca::key_identifier(key.public_key_raw()),
        },
        None,
    );
    let cert = params.self_signed(&ca::RcgenSigner::new(&key)).unwrap();
    CrlIssuer::new(cert.der(), Box::new(key)).unwrap()
}

fn sign(c: &mut Criterion) {
    let issuer = issuer();
    let mut g = c.benchmark_group("crl_build_and_sign_p256");
    g.sample_size(10);
    for n in [10_000u64, 100_000, 1_000_000] {
        let list = entries(n);
        let size = issuer
            .sign(1, THIS_UPDATE, NEXT_UPDATE, &list)
            .unwrap()
            .len();
        eprintln!("{n} entries: CRL of {size} bytes");
        g.throughput(Throughput::Elements(n));
        if n == 1_000_000 {
            g.measurement_time(Duration::from_secs(10));
        }
        g.bench_with_input(BenchmarkId::from_parameter(n), &list, |b, list| {
            b.iter(|| issuer.sign(1, THIS_UPDATE, NEXT_UPDATE, list).unwrap())
        });
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("crl_entry_encode");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(25));
    let n = 1_000_000u64;
    let revocations: Vec<Revocation> = (0..n).map(revocation).collect();
    g.throughput(Throughput::Elements(n));
    g.bench_function(BenchmarkId::from_parameter(n), |b| {
        b.iter(|| encode_all(&revocations))
    });
    g.finish();
}

criterion_group!(benches, sign, encode);
criterion_main!(benches);
