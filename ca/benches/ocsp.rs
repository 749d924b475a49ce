//! OCSP responses per second with a software P-256 key: parse the request,
//! sign one SingleResponse with a nonce, verify the signature (what
//! `respond` does for every request), the parse alone and the signature
//! alone.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use ca::testing::SoftP256;
use ca::{CaRole, OcspResponder, OcspStatus, RcgenSigner, Signer};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use der::asn1::{Any, Null, ObjectIdentifier as Oid, OctetString};
use der::{Decode, Encode};
use sha1::{Digest, Sha1};
use spki::AlgorithmIdentifierOwned;
use x509_cert::ext::Extension;
use x509_cert::serial_number::SerialNumber;
use x509_cert::Certificate;
use x509_ocsp::{CertId, OcspRequest, Request, TbsRequest};

fn issuer(key: &SoftP256) -> Vec<u8> {
    let now = time::OffsetDateTime::now_utc();
    let params = ca::ca_params(
        CaRole::Root,
        "Bench Root",
        "vBus",
        &ca::Basics {
            serial: vec![0x11; 16],
            not_before: now,
            not_after: now + time::Duration::days(365),
            subject_key_id: ca::key_identifier(key.public_key_raw()),
        },
        None,
    );
    params
        .self_signed(&RcgenSigner::new(key))
        .unwrap()
        .der()
        .to_vec()
}

fn request(issuer_der: &[u8]) -> Vec<u8> {
    let cert = Certificate::from_der(issuer_der).unwrap();
    let tbs = &cert.tbs_certificate;
    let id = CertId {
        hash_algorithm: AlgorithmIdentifierOwned {
            oid: Oid::new_unwrap("1.3.14.3.2.26"),
            parameters: Some(Any::from(Null)),
        },
        issuer_name_hash: OctetString::new(Sha1::digest(tbs.subject.to_der().unwrap()).to_vec())
            .unwrap(),
        issuer_key_hash: OctetString::new(
            Sha1::digest(tbs.subject_public_key_info.subject_public_key.raw_bytes()).to_vec(),
        )
        .unwrap(),
        serial_number: SerialNumber::new(&[0x5a; 16]).unwrap(),
    };
    let nonce = OctetString::new([0xa5u8; 16]).unwrap().to_der().unwrap();
    OcspRequest {
        tbs_request: TbsRequest {
            version: Default::default(),
            requestor_name: None,
            request_list: vec![Request {
                req_cert: id,
                single_request_extensions: None,
            }],
            request_extensions: Some(vec![Extension {
                extn_id: Oid::new_unwrap("1.3.6.1.5.5.7.48.1.2"),
                critical: false,
                extn_value: OctetString::new(nonce).unwrap(),
            }]),
        },
        optional_signature: None,
    }
    .to_der()
    .unwrap()
}

fn respond(c: &mut Criterion) {
    let key = SoftP256::generate();
    let issuer_der = issuer(&key);
    let req = request(&issuer_der);
    let alone = SoftP256::from_key(key.key().clone());
    let responder = OcspResponder::new(&issuer_der, Box::new(key)).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let mut g = c.benchmark_group("ocsp");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_ocsp_request", |b| {
        b.iter(|| ca::parse_ocsp_request(&req).unwrap())
    });
    g.bench_function("parse + respond (P-256 sign + verify)", |b| {
        b.iter(|| {
            let info = ca::parse_ocsp_request(&req).unwrap();
            assert!(responder.issues(&info.ids[0]));
            responder
                .respond(
                    &[(&info.ids[0], OcspStatus::Good)],
                    now,
                    now,
                    now + time::Duration::hours(1),
                    info.nonce.as_deref(),
                )
                .unwrap()
        })
    });
    // For comparison: the signature alone, over about a ResponseData.
    let message = vec![0x5au8; 200];
    g.bench_function("SoftP256 sign alone", |b| {
        b.iter(|| alone.sign(&message).unwrap())
    });
    g.finish();
}

criterion_group!(benches, respond);
criterion_main!(benches);
