//! Device certificates per second through the whole issuance path (CSR
//! parse and verify, profile checks, build, lint, token sign, signature
//! check, sled commit + flush), beside the bare token signature rate on the
//! same token in the same run.
//!
//! `cargo bench -p kms --bench issuance`.

#![allow(clippy::expect_used)] // a benchmark with a broken fixture should stop
#![allow(missing_docs)] // criterion_group! generates an undocumented fn

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cryptoki::mechanism::Mechanism;
use kms::config::Config;
use kms::pin::load_pin;
use kms::policy::{Caller, PolicyState};
use kms::storage::SledStore;
use kms::token::Token;
use softhsm_tests::SoftHsm;

/// (module serial, uuid, CSR DER) for device number `i`.
fn request(i: u32) -> (String, String, Vec<u8>) {
    let serial = format!("VBUS-CPU-2412-{i:06}");
    let csr = ca::testing::device_csr(&serial);
    (serial, format!("6f9619ff-8b86-4011-b42d-{i:012x}"), csr)
}
fn issuance(c: &mut Criterion) {
    let hsm = SoftHsm::new("bench-ca");
    hsm.export_env();
    let data = hsm.dir().join("appliance");
    let toml = hsm.appliance_toml("pool_size = 4\n");
    let mut cfg = Config::parse(&toml, Path::new("/")).expect("config");
    let policy_file = hsm.dir().join("policy.toml");
    std::fs::write(&policy_file, kms::quickstart::DEV_POLICY).expect("policy");
    cfg.policy.file = Some(policy_file);
    let token =
        Arc::new(Token::open(&cfg.token, load_pin(&cfg.token).expect("pin")).expect("token"));
    kms::ceremony::init(
        &cfg,
        &token,
        "local:test",
        "officer-01",
        &data.join("officer"),
    )
    .expect("init");
    let store = Arc::new(SledStore::open(&cfg.storage.path).expect("store"));
    let ca = kms::ceremony::load_ca(&cfg, &token, store).expect("ca");
    let log = kms::auditing::open(&cfg, &token).expect("audit");
    let policy = PolicyState::load(&cfg).expect("policy");
    let station = Caller::Client("station-01".into());
    let next = AtomicU32::new(0);

    let mut g = c.benchmark_group("device_certificate");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(8));
    g.sample_size(20);

    // The raw token rate: a bare session, the intermediate key, C_Sign.
    {
        let (session, key) = common::bare_session(&token, &cfg.ca.intermediate_key);
        let digest = [7u8; 32];
        g.bench_function("bare_token_sign_1_thread", |b| {
            b.iter(|| session.sign(&Mechanism::Ecdsa, key, &digest).expect("sign"))
        });
    }

    for threads in [1u32, 2] {
        g.bench_function(format!("issue_{threads}_thread"), |b| {
            b.iter_custom(|iters| {
                // Requests are made before the clock starts: device work, not ours.
                let reqs: Vec<_> = (0..iters)
                    .map(|_| request(next.fetch_add(1, Ordering::Relaxed)))
                    .collect();
                let start = Instant::now();
                std::thread::scope(|s| {
                    for chunk in reqs.chunks(reqs.len().div_ceil(threads as usize).max(1)) {
                        let ca = &ca;
                        let (log, policy, station) = (&log, &policy, &station);
                        s.spawn(move || {
                            for (serial, uuid, csr) in chunk {
                                kms::auditing::issue(
                                    ca,
                                    log,
                                    policy,
                                    station,
                                    &ca::IssueRequest {
                                        module_serial: serial,
                                        hw_uuid: uuid,
                                        csr,
                                        validity_days: None,
                                        requested_by: "local:test",
                                        new_key_allowed: false,
                                    },
                                    false,
                                )
                                .expect("issue");
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, issuance);
criterion_main!(benches);
