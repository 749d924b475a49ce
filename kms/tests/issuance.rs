//! The device CA on the real token and the sled store: 10,000 issuances.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use kms::policy::{Caller, PolicyState};
use kms::storage::SledStore;
use softhsm_tests::SoftHsm;
use store::{Store, Tree};

fn uuid(i: u32) -> String {
    format!("6f9619ff-8b86-4011-b42d-{i:012x}")
}

#[test]
fn ten_thousand_issuances_have_distinct_positive_sixteen_byte_serials() {
    let hsm = SoftHsm::new("t-issue");
    let (cfg, token) = common::appliance(&hsm);
    let store = Arc::new(SledStore::open(&cfg.storage.path).unwrap());
    let ca = Arc::new(kms::ceremony::load_ca(&cfg, &token, store.clone()).unwrap());
    let log = kms::auditing::open(&cfg, &token).unwrap();
    let policy = PolicyState::load(&cfg).unwrap();
    let station = Caller::Client("station-01".into());

    const N: u32 = 10_000;
    const THREADS: u32 = 4;
    let serials: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let ca = ca.clone();
                let (log, policy, station) = (&log, &policy, &station);
                s.spawn(move || {
                    (t..N)
                        .step_by(THREADS as usize)
                        .map(|i| {
                            let serial = format!("VBUS-CPU-2412-{i:06}");
                            let issued = kms::auditing::issue(
                                &ca,
                                log,
                                policy,
                                station,
                                &ca::IssueRequest {
                                    module_serial: &serial,
                                    hw_uuid: &uuid(i),
                                    csr: &ca::testing::device_csr(&serial),
                                    validity_days: None,
                                    requested_by: "local:test",
                                    new_key_allowed: false,
                                },
                                false,
                            )
                            .unwrap();
                            assert!(issued.newly_issued);
                            let cert = <x509_cert::Certificate as der::Decode>::from_der(
                                &issued.certificate_der,
                            )
                            .unwrap();
                            cert.tbs_certificate.serial_number.as_bytes().to_vec()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(serials.len(), N as usize);
    let distinct: HashSet<_> = serials.iter().collect();
    assert_eq!(distinct.len(), N as usize, "a serial was used twice");
    let mut high_bit = 0;
    for s in &serials {
        // DER INTEGER content: 16 random bytes, with a leading 0x00 exactly
        // when the first random byte has its high bit set (never negative).
        match s.len() {
            17 => {
                assert_eq!(s[0], 0, "{s:02x?}");
                assert!(s[1] & 0x80 != 0, "needless leading zero: {s:02x?}");
                high_bit += 1;
            }
            16 => assert!(
                (s[0] != 0 && s[0] & 0x80 == 0) || (s[0] == 0 && s[1] & 0x80 != 0),
                "{s:02x?}"
            ),
            // A random value starting with 0x00 followed by a byte < 0x80
            // encodes shorter; rare (1 in 512) and still 16 random bytes.
            n => assert!((14..16).contains(&n), "{s:02x?}"),
        }
    }
    // About half the serials have the high bit set: the bytes are random,
    // not masked to look positive.
    assert!(
        (4_000..6_000).contains(&high_bit),
        "{high_bit} of {N} with the high bit"
    );
    for tree in [
        Tree::Certificates,
        Tree::Devices,
        Tree::HardwareIds,
        Tree::PublicKeys,
    ] {
        assert_eq!(store.len(tree).unwrap(), N as usize, "{tree:?}");
    }
}
