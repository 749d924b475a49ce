//! Issuance with software keys: what a certificate holds, idempotency,
//! re-issue, and a table of refused requests that change nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use ca::{IssueRequest, Signer};
use common::*;
use der::{Decode, Encode};
use store::{MemoryStore, Store, Tree};
use x509_cert::Certificate;

const CPU: &str = "VBUS-CPU-2412-003847";

#[test]
fn issued_certificate_is_exactly_the_profile() {
    let h = hierarchy();
    let store = Arc::new(MemoryStore::new());
    let ca = new_ca(&h, store.clone(), ca::DEFAULT_PROFILES);
    let journal = ca::testing::MemoryJournal::default();
    let device = SoftP256::generate();
    let id = uuid();
    let issued = ca
        .issue(
            &IssueRequest {
                module_serial: CPU,
                hw_uuid: &id,
                csr: &csr(&device, CPU, &id),
                validity_days: None,
                requested_by: "local:test",
                new_key_allowed: false,
            },
            &journal,
        )
        .unwrap();
    assert!(issued.newly_issued);
    let cert = Certificate::from_der(&issued.certificate_der).unwrap();
    let tbs = &cert.tbs_certificate;
    let inter = Certificate::from_der(&h.intermediate_der).unwrap();

    // Serial: 16 random bytes, positive, lowercase hex without colons.
    let serial = tbs.serial_number.as_bytes();
    assert!(serial.len() == 16 || (serial.len() == 17 && serial[0] == 0 && serial[1] & 0x80 != 0));
    assert_eq!(
        issued.serial_number,
        hex::encode(&serial[serial.len() - 16..]).trim_start_matches("00")
    );
    assert_eq!(tbs.issuer, inter.tbs_certificate.subject);
    assert_eq!(
        tbs.subject.to_string(),
        format!("CN={CPU},SERIALNUMBER={CPU}")
    );
    assert_eq!(
        tbs.validity.not_before.to_unix_duration().as_secs() as i64,
        (NOW - ca::BACKDATE).unix_timestamp()
    );
    assert_eq!(
        tbs.validity.not_after.to_unix_duration().as_secs() as i64,
        (NOW + time::Duration::days(7300))
            .min(NOW + time::Duration::days(1825))
            .unix_timestamp(),
        "capped at the issuer's notAfter"
    );
    assert_eq!(issued.not_after, "2031-11-24T12:00:00Z");

    // Extensions: exactly these, with these criticalities.
    let exts: Vec<(String, bool)> = tbs
        .extensions
        .iter()
        .flatten()
        .map(|e| (e.extn_id.to_string(), e.critical))
        .collect();
    let mut names: Vec<_> = exts.clone();
    names.sort();
    assert_eq!(
        names,
        [
            ("1.3.6.1.5.5.7.1.1", false), // AIA (OCSP)
            ("2.5.29.14", false),         // SKI
            ("2.5.29.15", true),          // KU
            ("2.5.29.17", false),         // SAN
            ("2.5.29.19", true),          // BC
            ("2.5.29.31", false),         // CRL DP
            ("2.5.29.35", false),         // AKI
            ("2.5.29.37", false),         // EKU
        ]
        .map(|(o, c)| (o.to_owned(), c))
    );
    let ext = |oid: &str| {
        tbs.extensions
            .iter()
            .flatten()
            .find(|e| e.extn_id.to_string() == oid)
            .unwrap()
            .extn_value
            .as_bytes()
            .to_vec()
    };
    let san = x509_cert::ext::pkix::SubjectAltName::from_der(&ext("2.5.29.17")).unwrap();
    assert_eq!(san.0.len(), 2);
    assert!(
        matches!(&san.0[0], x509_cert::ext::pkix::name::GeneralName::UniformResourceIdentifier(u) if u.as_str() == format!("urn:uuid:{id}"))
    );
    let x509_cert::ext::pkix::name::GeneralName::OtherName(hw) = &san.0[1] else {
        panic!("no hardwareModuleName")
    };
    let hw: ca::HardwareModuleName = hw.value.decode_as().unwrap();
    assert_eq!(hw.hw_serial_num.as_bytes(), CPU.as_bytes());
    assert_eq!(hw.hw_type.to_string(), ca::DEFAULT_HW_TYPE);
    let ku = x509_cert::ext::pkix::KeyUsage::from_der(&ext("2.5.29.15")).unwrap();
    assert_eq!(ku.0.bits(), 1, "digitalSignature only");
    let eku = x509_cert::ext::pkix::ExtendedKeyUsage::from_der(&ext("2.5.29.37")).unwrap();
    assert_eq!(
        eku.0.iter().map(|o| o.to_string()).collect::<Vec<_>>(),
        ["1.3.6.1.5.5.7.3.2"]
    );
    let bc = x509_cert::ext::pkix::BasicConstraints::from_der(&ext("2.5.29.19")).unwrap();
    assert!(!bc.ca);

    // The signature verifies with p256 and the intermediate's key.
    use p256::ecdsa::signature::Verifier;
    let vk =
        p256::ecdsa::VerifyingKey::from_sec1_bytes(h.intermediate_key.public_key_raw()).unwrap();
    vk.verify(
        &tbs.to_der().unwrap(),
        &p256::ecdsa::Signature::from_der(cert.signature.raw_bytes()).unwrap(),
    )
    .unwrap();

    // Stored: certificate, device, UUID and key indexes; nothing else.
    for tree in Tree::ALL {
        let want = usize::from(!matches!(
            tree,
            Tree::Clients
                | Tree::Records
                | Tree::Revocations
                | Tree::Counters
                | Tree::Firmware
                | Tree::Approvals
                | Tree::Escrow
        ));
        assert_eq!(store.len(tree).unwrap(), want, "{tree:?}");
    }
    let rec = ca.certificate(&issued.serial_number).unwrap().unwrap();
    assert_eq!(rec.module_serial, CPU);
    assert_eq!(
        ca.device(CPU).unwrap().unwrap().certificates,
        vec![issued.serial_number.clone()]
    );
}

#[test]
fn same_request_returns_the_same_certificate_and_a_new_key_needs_an_officer() {
    let h = hierarchy();
    let store = Arc::new(MemoryStore::new());
    let ca = new_ca(&h, store.clone(), ca::DEFAULT_PROFILES);
    let journal = ca::testing::MemoryJournal::default();
    let (k1, k2, k3) = (
        SoftP256::generate(),
        SoftP256::generate(),
        SoftP256::generate(),
    );
    let id = uuid();
    let req = |c: &[u8]| {
        ca.issue(
            &IssueRequest {
                module_serial: CPU,
                hw_uuid: &id,
                csr: c,
                validity_days: None,
                requested_by: "local:test",
                new_key_allowed: false,
            },
            &journal,
        )
    };
    let first = req(&csr(&k1, CPU, &id)).unwrap();
    // The same key in a fresh CSR: the stored certificate, nothing new.
    let before = store.snapshot().unwrap();
    let again = req(&csr(&k1, CPU, &id)).unwrap();
    assert!(!again.newly_issued);
    assert_eq!(again.certificate_der, first.certificate_der);
    assert_eq!(store.snapshot().unwrap(), before);

    let err = req(&csr(&k2, CPU, &id)).unwrap_err();
    assert_eq!(err.code(), "device_already_certified");
    assert!(err
        .to_string()
        .contains("kmsctl device allow-reissue VBUS-CPU-2412-003847"));
    assert_eq!(store.snapshot().unwrap(), before);

    ca.allow_reissue(CPU).unwrap();
    let second = req(&csr(&k2, CPU, &id)).unwrap();
    assert!(second.newly_issued);
    assert_ne!(second.serial_number, first.serial_number);
    let device = ca.device(CPU).unwrap().unwrap();
    assert_eq!(
        device.certificates,
        vec![first.serial_number, second.serial_number.clone()]
    );
    assert!(!device.reissue_allowed, "one re-issue per permission");
    assert_eq!(
        req(&csr(&k3, CPU, &id)).unwrap_err().code(),
        "device_already_certified"
    );
    assert_eq!(
        ca.allow_reissue("VBUS-CPU-2412-999999").unwrap_err().code(),
        "device_not_found"
    );
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn der_of(pem: &[u8]) -> Vec<u8> {
    der::pem::decode_vec(pem).unwrap().1
}

#[test]
fn refused_requests_each_have_their_code_and_change_nothing() {
    let h = hierarchy();
    let store = Arc::new(MemoryStore::new());
    // PWR is left out of this CA's profiles on purpose.
    let profiles = ca::DEFAULT_PROFILES
        .replace("[PWR]", "[PWR_UNUSED]")
        .replace("[PWR_UNUSED]", "#");
    let profiles: String = profiles
        .split("\n\n")
        .filter(|block| !block.trim_start().starts_with('#') || block.contains("[CPU]"))
        .collect::<Vec<_>>()
        .join("\n\n");
    let ca = new_ca(&h, store.clone(), &profiles);
    let journal = ca::testing::MemoryJournal::default();
    assert_eq!(
        ca.issue(
            &IssueRequest {
                module_serial: "VBUS-PWR-2412-000001",
                hw_uuid: &uuid(),
                csr: b"",
                validity_days: None,
                requested_by: "local:test",
                new_key_allowed: false,
            },
            &journal
        )
        .unwrap_err()
        .code(),
        "profile_not_found"
    );

    // An existing device, to collide with.
    let taken_key = SoftP256::generate();
    let taken_uuid = uuid();
    ca.issue(
        &IssueRequest {
            module_serial: "VBUS-CPU-2412-000100",
            hw_uuid: &taken_uuid,
            csr: &csr(&taken_key, "VBUS-CPU-2412-000100", &taken_uuid),
            validity_days: None,
            requested_by: "local:test",
            new_key_allowed: false,
        },
        &journal,
    )
    .unwrap();
    let before = store.snapshot().unwrap();

    let key = SoftP256::generate();
    let id = uuid();
    let good = csr(&key, CPU, &id);
    let good_der = der_of(&good);
    let comm = "VBUS-COMM-2411-000001";
    let with = |edit: &dyn Fn(&mut rcgen::CertificateParams)| csr_with(&key, CPU, &id, |p| edit(p));
    let custom = |oid: &[u64], critical: bool, content: Vec<u8>| {
        let mut e = rcgen::CustomExtension::from_oid_content(oid, content);
        e.set_criticality(critical);
        e
    };

    let mut flipped_sig = good_der.clone();
    *flipped_sig.last_mut().unwrap() ^= 1;
    let mut off_curve = good_der.clone();
    let point = key.public_key_raw();
    let at = off_curve
        .windows(point.len())
        .position(|w| w == point)
        .unwrap();
    off_curve[at + 64] ^= 1;
    let mut long_form = vec![0x30, 0x82, 0x00, good_der[1]];
    long_form.extend_from_slice(&good_der[2..]);
    let mut junk_after_end = good.clone();
    junk_after_end.extend_from_slice(b"\nsomething else\n");
    let mut wrong_label = String::from_utf8(good.clone()).unwrap();
    wrong_label = wrong_label.replace("CERTIFICATE REQUEST", "CERTIFICATE");
    let mut trailing = good_der.clone();
    trailing.push(0);
    let other_key_sig = {
        // Info of one key, signature of another: no proof of possession.
        let other = csr(&SoftP256::generate(), CPU, &id);
        let a = x509_cert::request::CertReq::from_der(&good_der).unwrap();
        let mut b = x509_cert::request::CertReq::from_der(&der_of(&other)).unwrap();
        b.info = a.info;
        b.to_der().unwrap()
    };
    let huge_cn = csr_with(&key, CPU, &id, |p| {
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "x".repeat(1 << 20));
    });
    let ed = SoftEd25519::generate();
    let reused = csr(&taken_key, CPU, &id);

    type Row<'a> = (&'a str, &'a str, String, Vec<u8>, &'a str);
    let rows: Vec<Row> = vec![
        (
            "garbage",
            CPU,
            id.clone(),
            b"\x01\x02garbage".to_vec(),
            "csr_malformed",
        ),
        ("empty", CPU, id.clone(), Vec::new(), "csr_malformed"),
        (
            "truncated DER",
            CPU,
            id.clone(),
            good_der[..good_der.len() / 2].to_vec(),
            "csr_malformed",
        ),
        (
            "trailing byte after DER",
            CPU,
            id.clone(),
            trailing,
            "csr_malformed",
        ),
        (
            "BER long-form length",
            CPU,
            id.clone(),
            long_form,
            "csr_malformed",
        ),
        (
            "PEM with junk after END",
            CPU,
            id.clone(),
            junk_after_end,
            "csr_malformed",
        ),
        (
            "PEM of a certificate label",
            CPU,
            id.clone(),
            wrong_label.into_bytes(),
            "csr_malformed",
        ),
        ("1 MB subject", CPU, id.clone(), huge_cn, "csr_too_large"),
        (
            "signature bit flipped",
            CPU,
            id.clone(),
            flipped_sig,
            "csr_signature_invalid",
        ),
        (
            "signed by another key",
            CPU,
            id.clone(),
            other_key_sig,
            "csr_signature_invalid",
        ),
        (
            "point not on the curve",
            CPU,
            id.clone(),
            off_curve,
            "key_invalid",
        ),
        (
            "P-192 key",
            comm,
            id.clone(),
            fixture("p192.csr"),
            "key_type_not_allowed",
        ),
        (
            "P-384 key",
            comm,
            id.clone(),
            fixture("p384.csr"),
            "key_type_not_allowed",
        ),
        (
            "DSA key",
            comm,
            id.clone(),
            fixture("dsa.csr"),
            "key_type_not_allowed",
        ),
        (
            "RSA 1024",
            comm,
            id.clone(),
            fixture("rsa1024.csr"),
            "key_too_weak",
        ),
        (
            "RSA 4096",
            comm,
            id.clone(),
            fixture("rsa4096.csr"),
            "key_type_not_allowed",
        ),
        (
            "RSA 2048 on the CPU profile",
            "VBUS-CPU-2411-000001",
            id.clone(),
            fixture("rsa2048.csr"),
            "key_type_not_allowed",
        ),
        (
            "Ed25519 on the CPU profile",
            CPU,
            id.clone(),
            csr(&ed, CPU, &id),
            "key_type_not_allowed",
        ),
        (
            "MD5 signature",
            comm,
            id.clone(),
            fixture("rsa2048-md5.csr"),
            "csr_signature_algorithm_weak",
        ),
        (
            "SHA-1 signature",
            comm,
            id.clone(),
            fixture("p256-sha1.csr"),
            "csr_signature_algorithm_weak",
        ),
        (
            "SHA-384 with P-256",
            comm,
            id.clone(),
            fixture("p256-sha384.csr"),
            "csr_signature_algorithm_unsupported",
        ),
        (
            "asks for CA:true",
            CPU,
            id.clone(),
            with(&|p| p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained)),
            "csr_requests_ca",
        ),
        (
            "asks for keyCertSign",
            CPU,
            id.clone(),
            with(&|p| {
                p.key_usages = vec![
                    rcgen::KeyUsagePurpose::DigitalSignature,
                    rcgen::KeyUsagePurpose::KeyCertSign,
                ]
            }),
            "csr_key_usage_not_allowed",
        ),
        (
            "asks for serverAuth",
            CPU,
            id.clone(),
            with(&|p| p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth]),
            "csr_eku_not_allowed",
        ),
        (
            "asks for name constraints",
            CPU,
            id.clone(),
            with(&|p| p.custom_extensions = vec![custom(&[2, 5, 29, 30], true, vec![0x30, 0x00])]),
            "csr_name_constraints",
        ),
        (
            "asks for an extra DNS SAN",
            CPU,
            id.clone(),
            with(&|p| {
                p.subject_alt_names
                    .push(rcgen::SanType::DnsName("evil.example".try_into().unwrap()))
            }),
            "csr_extra_san",
        ),
        (
            "asks for another device's UUID",
            CPU,
            id.clone(),
            csr(&key, CPU, &uuid()),
            "csr_extra_san",
        ),
        (
            "unknown critical extension",
            CPU,
            id.clone(),
            with(&|p| {
                p.custom_extensions = vec![custom(
                    &[1, 3, 6, 1, 4, 1, 99999, 1],
                    true,
                    vec![0x05, 0x00],
                )]
            }),
            "csr_unknown_critical_extension",
        ),
        (
            "duplicate extension",
            CPU,
            id.clone(),
            with(&|p| {
                p.custom_extensions = vec![
                    custom(&[1, 3, 6, 1, 4, 1, 99999, 2], false, vec![0x05, 0x00]),
                    custom(&[1, 3, 6, 1, 4, 1, 99999, 2], false, vec![0x05, 0x00]),
                ]
            }),
            "csr_duplicate_extension",
        ),
        (
            "CN of another device",
            "VBUS-CPU-2412-003848",
            id.clone(),
            good.clone(),
            "csr_subject_mismatch",
        ),
        (
            "malformed module serial",
            "VBUS-CPU-2413-003847",
            id.clone(),
            good.clone(),
            "invalid_module_serial",
        ),
        (
            "module serial from the future",
            "VBUS-CPU-2701-003847",
            id.clone(),
            good.clone(),
            "module_serial_in_future",
        ),
        (
            "malformed hardware UUID",
            CPU,
            "6f9619ff-8b86-0011-b42d-00c04fc964ff".into(),
            good.clone(),
            "invalid_hw_uuid",
        ),
        (
            "hardware UUID of another device",
            CPU,
            taken_uuid.clone(),
            csr(&key, CPU, &taken_uuid),
            "hw_uuid_in_use",
        ),
        (
            "public key of another device",
            CPU,
            id.clone(),
            reused,
            "public_key_in_use",
        ),
        (
            "another UUID for a certified device",
            "VBUS-CPU-2412-000100",
            id.clone(),
            csr(&key, "VBUS-CPU-2412-000100", &id),
            "hw_uuid_mismatch",
        ),
        (
            "another key for a certified device",
            "VBUS-CPU-2412-000100",
            taken_uuid.clone(),
            csr(&key, "VBUS-CPU-2412-000100", &taken_uuid),
            "device_already_certified",
        ),
    ];
    assert!(rows.len() >= 25);
    let mut codes = std::collections::BTreeSet::new();
    for (case, serial, hw, csr, code) in &rows {
        let err = ca
            .issue(
                &IssueRequest {
                    module_serial: serial,
                    hw_uuid: hw,
                    csr,
                    validity_days: None,
                    requested_by: "local:test",
                    new_key_allowed: false,
                },
                &journal,
            )
            .unwrap_err();
        assert_eq!(err.code(), *code, "{case}: {err}");
        assert_eq!(
            store.snapshot().unwrap(),
            before,
            "{case} changed the store"
        );
        codes.insert(*code);
    }
    assert!(codes.len() >= 20, "distinct codes: {codes:?}");

    // The accepted key types do go through on the profile that allows them.
    let comm_uuid = uuid();
    for (name, key_type) in [
        ("rsa2048.csr", "rsa-2048"),
        ("rsa3072.csr", "rsa-3072"),
        ("ed25519.csr", "ed25519"),
    ] {
        let issued = ca
            .issue(
                &IssueRequest {
                    module_serial: comm,
                    hw_uuid: &comm_uuid,
                    csr: &fixture(name),
                    validity_days: None,
                    requested_by: "local:test",
                    new_key_allowed: false,
                },
                &journal,
            )
            .map(|i| i.serial_number);
        // One device, several keys: only the first is accepted without an officer.
        match issued {
            Ok(_) => ca.allow_reissue(comm).unwrap(),
            Err(e) => panic!("{key_type}: {e}"),
        }
    }
}

#[test]
fn policy_validity_shortens_but_never_lengthens_the_profile() {
    let h = hierarchy();
    // (policy days, expected days): the profile allows 3650 for COMM here,
    // the intermediate runs 1825 days.
    let profiles = ca::DEFAULT_PROFILES.replace("validity_days = 3650", "validity_days = 400");
    let rows: [(Option<u32>, i64); 4] = [
        (None, 400),
        (Some(30), 30),
        (Some(400), 400),
        (Some(9000), 400),
    ];
    for (i, (policy_days, days)) in rows.into_iter().enumerate() {
        let ca = new_ca(&h, Arc::new(MemoryStore::new()), &profiles);
        let serial = format!("VBUS-COMM-2412-00000{i}");
        let id = uuid();
        let issued = ca
            .issue(
                &IssueRequest {
                    module_serial: &serial,
                    hw_uuid: &id,
                    csr: &csr(&SoftP256::generate(), &serial, &id),
                    validity_days: policy_days,
                    requested_by: "local:test",
                    new_key_allowed: false,
                },
                &ca::testing::MemoryJournal::default(),
            )
            .unwrap();
        let cert = Certificate::from_der(&issued.certificate_der).unwrap();
        assert_eq!(
            cert.tbs_certificate
                .validity
                .not_after
                .to_unix_duration()
                .as_secs() as i64,
            (NOW + time::Duration::days(days)).unix_timestamp(),
            "policy {policy_days:?}"
        );
    }
}

#[test]
fn a_journaled_certificate_that_lost_to_another_is_not_restored() {
    // Two overlapping requests for the same device and key both journaled;
    // the store kept the first. Replaying the second must change nothing.
    let h = hierarchy();
    let store = Arc::new(MemoryStore::new());
    let ca = new_ca(&h, store.clone(), ca::DEFAULT_PROFILES);
    let journal = ca::testing::MemoryJournal::default();
    let id = uuid();
    let req_csr = csr(&SoftP256::generate(), CPU, &id);
    ca.issue(
        &IssueRequest {
            module_serial: CPU,
            hw_uuid: &id,
            csr: &req_csr,
            validity_days: None,
            requested_by: "station-01",
            new_key_allowed: false,
        },
        &journal,
    )
    .unwrap();
    let winner = journal.0.lock().unwrap()[0].clone();
    let before = store.snapshot().unwrap();
    let loser = ca::CertificateRecord {
        serial_number: "7f".repeat(16),
        ..winner.clone()
    };
    assert!(!ca.restore(&loser).unwrap());
    // Another device's record claiming the same key or UUID: not restored either.
    let thief = ca::CertificateRecord {
        serial_number: "6e".repeat(16),
        module_serial: "VBUS-CPU-2412-000999".into(),
        ..winner.clone()
    };
    assert!(!ca.restore(&thief).unwrap());
    assert_eq!(store.snapshot().unwrap(), before);
    // The winner itself is already there.
    assert!(!ca.restore(&winner).unwrap());
}
