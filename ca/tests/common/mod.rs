//! Software implementations of the CA's traits, for unit tests only.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use ca::{Ca, CaRole, CaSettings, Clock, Profiles, RcgenSigner, Signer, Urls};
use rand_core::{OsRng, RngCore};
use time::macros::datetime;
use time::OffsetDateTime;

pub const NOW: OffsetDateTime = datetime!(2026-11-25 12:00 UTC);

pub use ca::testing::{OsRandom, SoftEd25519, SoftP256};

pub struct FixedClock(pub OffsetDateTime);

impl Clock for FixedClock {
    fn now(&self) -> OffsetDateTime {
        self.0
    }
}

pub fn random_serial() -> [u8; 16] {
    let mut s = [0u8; 16];
    OsRng.fill_bytes(&mut s);
    s
}

/// A root and an intermediate made with software keys.
pub struct Hierarchy {
    pub root_der: Vec<u8>,
    pub intermediate_der: Vec<u8>,
    pub intermediate_key: SoftP256,
}

pub fn hierarchy() -> Hierarchy {
    let root_key = SoftP256::generate();
    let root_params = ca::ca_params(
        CaRole::Root,
        "Test Root",
        "vBus",
        &ca::Basics {
            serial: random_serial().to_vec(),
            not_before: NOW - time::Duration::days(1),
            not_after: NOW + time::Duration::days(3650),
            subject_key_id: ca::key_identifier(root_key.public_key_raw()),
        },
        None,
    );
    let root_signer = RcgenSigner::new(&root_key);
    let root = root_params.self_signed(&root_signer).unwrap();
    let inter_key = SoftP256::generate();
    let inter_params = ca::ca_params(
        CaRole::Intermediate,
        "Test Manufacturing Intermediate",
        "vBus",
        &ca::Basics {
            serial: random_serial().to_vec(),
            not_before: NOW - time::Duration::days(1),
            not_after: NOW + time::Duration::days(1825),
            subject_key_id: ca::key_identifier(inter_key.public_key_raw()),
        },
        Some("http://pub.example/crl/root.crl"),
    );
    let issuer = rcgen::Issuer::from_params(&root_params, &root_signer);
    let subject =
        ca::SubjectKey::for_signer(inter_key.algorithm(), inter_key.public_key_raw().to_vec());
    let inter = inter_params.signed_by(&subject, &issuer).unwrap();
    Hierarchy {
        root_der: root.der().to_vec(),
        intermediate_der: inter.der().to_vec(),
        intermediate_key: inter_key,
    }
}

pub fn urls() -> Urls {
    Urls {
        crl: "http://pub.example/crl/intermediate.crl".into(),
        ocsp: "http://pub.example/ocsp".into(),
    }
}

pub fn new_ca(h: &Hierarchy, store: Arc<store::MemoryStore>, profiles: &str) -> Ca {
    let signer = SoftP256::from_key(h.intermediate_key.key().clone());
    Ca::new(
        Box::new(signer),
        Box::new(OsRandom),
        Box::new(FixedClock(NOW)),
        store,
        CaSettings {
            issuer_der: h.intermediate_der.clone(),
            urls: urls(),
            hw_type: ca::DEFAULT_HW_TYPE.parse().unwrap(),
            profiles: Profiles::parse(profiles).unwrap(),
        },
    )
    .unwrap()
}

/// A CSR from `key` for `serial`/`uuid`, with `edit` applied to the params.
pub fn csr_with(
    key: &dyn Signer,
    serial: &str,
    uuid: &str,
    edit: impl FnOnce(&mut rcgen::CertificateParams),
) -> Vec<u8> {
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, serial);
    p.subject_alt_names = vec![rcgen::SanType::URI(
        format!("urn:uuid:{uuid}").try_into().unwrap(),
    )];
    edit(&mut p);
    let signer = RcgenSigner::new(key);
    p.serialize_request(&signer)
        .unwrap()
        .pem()
        .unwrap()
        .into_bytes()
}

pub fn csr(key: &dyn Signer, serial: &str, uuid: &str) -> Vec<u8> {
    csr_with(key, serial, uuid, |_| {})
}

/// A fresh RFC 9562 version-4 UUID.
pub fn uuid() -> String {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}
