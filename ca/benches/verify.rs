//! ECDSA P-256 verification on the issuance path (every CSR's proof of
//! possession and every token signature are verified): the pure-Rust
//! `p256` verifier beside ring's, same keys and messages, same run.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use p256::ecdsa::signature::{Signer as _, Verifier as _};

fn verify(c: &mut Criterion) {
    let key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let public = key
        .verifying_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec();
    let message = vec![0x5au8; 300]; // about a TBSCertificate
    let sig: p256::ecdsa::Signature = key.sign(&message);
    let der = sig.to_der().as_bytes().to_vec();
    let mut g = c.benchmark_group("ecdsa_p256_verify");
    g.throughput(Throughput::Elements(1));
    g.bench_function("p256_pure_rust", |b| {
        b.iter(|| {
            let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&public).unwrap();
            let s = p256::ecdsa::Signature::from_der(&der).unwrap();
            assert!(vk.verify(&message, &s).is_ok());
        })
    });
    g.bench_function("ring", |b| {
        b.iter(|| {
            assert!(ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_ASN1,
                &public
            )
            .verify(&message, &der)
            .is_ok());
        })
    });
    g.bench_function("issuance_path_check (point check + ring)", |b| {
        b.iter(|| {
            assert!(ca::verify_signature(
                ca::SignatureAlgorithm::EcdsaP256Sha256,
                &public,
                &message,
                &der
            ));
        })
    });
    g.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
