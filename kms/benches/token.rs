//! ECDSA P-256 signatures per second through the session pool, beside a bare
//! single-session `C_Sign` loop on the same SoftHSM2 token in the same run,
//! with the token key and with a session-object copy of it (what the pool
//! signs with: SoftHSM2 checks and reloads a token object on each use).
//!
//! `cargo bench -p kms --bench token`. The pool's target: at most 10% below
//! the bare loop with a session copy on one thread.

#![allow(clippy::expect_used)] // a benchmark with a broken fixture should stop
#![allow(missing_docs)] // criterion_group! generates an undocumented fn

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;
use kms::config::Config;
use kms::pin::load_pin;
use kms::token::{KeyPairKind, Token};
use sha2::{Digest, Sha256};
use softhsm_tests::SoftHsm;

fn sign_benchmarks(c: &mut Criterion) {
    let hsm = SoftHsm::new("bench");
    hsm.export_env();
    let toml = hsm
        .token_toml()
        .replacen("[token]\n", "[token]\npool_size = 4\n", 1);
    let cfg = Config::parse(&toml, Path::new("/")).expect("config");
    let token =
        Arc::new(Token::open(&cfg.token, load_pin(&cfg.token).expect("pin")).expect("token"));
    token
        .generate_key_pair(KeyPairKind::EcP256, "bench-key")
        .expect("key");
    let message = [0x5au8; 256]; // about a device TBSCertificate
    let digest = Sha256::digest(message);

    let mut g = c.benchmark_group("ecdsa_p256_sign");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(5));

    // Bare: one session of our own, the key handle found once, C_Sign in a
    // loop; on one thread, then on two (a session each: what the token itself
    // allows in parallel); with the token object, then with a session-object
    // copy of the key (C_CopyObject, CKA_TOKEN=false) as the pool signs.
    for (copy, name) in [(false, "bare"), (true, "bare_copy")] {
        let bare_key = |session: &Session, key: ObjectHandle| {
            if copy {
                session_copy(session, key)
            } else {
                key
            }
        };
        {
            let (session, key) = common::bare_session(&token, "bench-key");
            let key = bare_key(&session, key);
            g.bench_function(format!("{name}_c_sign_1_thread"), |b| {
                b.iter(|| session.sign(&Mechanism::Ecdsa, key, &digest).expect("sign"))
            });
        }
        g.bench_function(format!("{name}_c_sign_2_threads"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|s| {
                    for t in 0..2 {
                        let (token, digest, bare_key) = (&token, &digest, &bare_key);
                        let n = iters / 2 + (t as u64) * (iters % 2);
                        s.spawn(move || {
                            let (session, key) = common::bare_session(token, "bench-key");
                            let key = bare_key(&session, key);
                            for _ in 0..n {
                                session.sign(&Mechanism::Ecdsa, key, digest).expect("sign");
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }

    g.bench_function("pool_1_thread", |b| {
        b.iter(|| token.sign("bench-key", &message).expect("sign"))
    });

    g.bench_function("pool_2_threads", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for t in 0..2 {
                    let token = &token;
                    let n = iters / 2 + (t as u64) * (iters % 2);
                    s.spawn(move || {
                        for _ in 0..n {
                            token.sign("bench-key", &message).expect("sign");
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    g.finish();

    interleaved_ratio(&token, &message, false);
    interleaved_ratio(&token, &message, true);
    interleaved_copy_ratio(&token, &message, 1);
    interleaved_copy_ratio(&token, &message, 2);
}

/// A session-object copy of `key` in `session` (gone with the session),
/// made as the pool makes its copies: unlabelled, so that no lookup by label
/// finds it.
fn session_copy(session: &Session, key: ObjectHandle) -> ObjectHandle {
    session
        .copy_object(
            key,
            &[Attribute::Token(false), Attribute::Label(Vec::new())],
        )
        .expect("C_CopyObject")
}

/// Like [`interleaved_ratio`]: bare `C_Sign` with the token key against the
/// same loop with a session copy of it, alternating rounds, on `threads`
/// threads with a session each (the threads start each phase together).
fn interleaved_copy_ratio(token: &Token, message: &[u8], threads: usize) {
    const ROUNDS: usize = 21;
    const PER_ROUND: u32 = 1_000;
    let digest = Sha256::digest(message);
    let barrier = std::sync::Barrier::new(threads + 1);
    let mut ratios = Vec::with_capacity(ROUNDS);
    let (mut token_total, mut copy_total) = (Duration::ZERO, Duration::ZERO);
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (barrier, digest) = (&barrier, &digest);
            s.spawn(move || {
                let (session, key) = common::bare_session(token, "bench-key");
                let copy = session_copy(&session, key);
                for _ in 0..ROUNDS {
                    for handle in [key, copy] {
                        barrier.wait();
                        for _ in 0..PER_ROUND {
                            session
                                .sign(&Mechanism::Ecdsa, handle, digest)
                                .expect("sign");
                        }
                        barrier.wait();
                    }
                }
            });
        }
        for _ in 0..ROUNDS {
            let phase = || {
                barrier.wait();
                let t = Instant::now();
                barrier.wait();
                t.elapsed()
            };
            let with_token_key = phase();
            let with_copy = phase();
            ratios.push(with_token_key.as_secs_f64() / with_copy.as_secs_f64());
            token_total += with_token_key;
            copy_total += with_copy;
        }
    });
    ratios.sort_by(f64::total_cmp);
    let n = f64::from(PER_ROUND) * (ROUNDS * threads) as f64;
    println!(
        "interleaved, {threads} thread(s), {ROUNDS} rounds of {PER_ROUND} each: bare token key {:.0}/s, \
         bare session copy {:.0}/s, copy rate / token-key rate median {:.3} (min {:.3}, max {:.3})",
        n / token_total.as_secs_f64(),
        n / copy_total.as_secs_f64(),
        ratios[ROUNDS / 2],
        ratios[0],
        ratios[ROUNDS - 1]
    );
}

/// The machine is shared and noisy, so criterion's separate runs can drift
/// by more than the 10% we want to see. This alternates short rounds of the
/// bare loop and the pool, one thread each, and reports the median of the
/// per-round ratios: drift hits both sides of every pair alike. The bare
/// loop signs with the token key, or with a session copy of it as the pool
/// does (`copy`).
fn interleaved_ratio(token: &Token, message: &[u8], copy: bool) {
    const ROUNDS: usize = 21;
    const PER_ROUND: u32 = 1_000;
    let digest = Sha256::digest(message);
    let (session, key) = common::bare_session(token, "bench-key");
    let key = if copy {
        session_copy(&session, key)
    } else {
        key
    };
    let mut ratios = Vec::with_capacity(ROUNDS);
    let (mut bare_total, mut pool_total) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..PER_ROUND {
            session.sign(&Mechanism::Ecdsa, key, &digest).expect("sign");
        }
        let bare = t.elapsed();
        let t = Instant::now();
        for _ in 0..PER_ROUND {
            token.sign("bench-key", message).expect("sign");
        }
        let pool = t.elapsed();
        ratios.push(pool.as_secs_f64() / bare.as_secs_f64());
        bare_total += bare;
        pool_total += pool;
    }
    ratios.sort_by(f64::total_cmp);
    let n = f64::from(PER_ROUND) * ROUNDS as f64;
    println!(
        "interleaved, 1 thread, {ROUNDS} rounds of {PER_ROUND}: bare ({}) {:.0}/s, pool {:.0}/s, \
         pool time / bare time median {:.3} (min {:.3}, max {:.3})",
        if copy { "session copy" } else { "token key" },
        n / bare_total.as_secs_f64(),
        n / pool_total.as_secs_f64(),
        ratios[ROUNDS / 2],
        ratios[0],
        ratios[ROUNDS - 1]
    );
}

criterion_group!(benches, sign_benchmarks);
criterion_main!(benches);
