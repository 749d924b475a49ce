//! Wycheproof vectors through the CA's own signature check,
//! `ca::verify_signature`: the function (and, for ECDSA, the very
//! `ecdsa_p256_sha256_verify` inside it) that checks a CSR's proof of
//! possession and every certificate, CRL and OCSP response the CA signs
//! before it leaves.
//!
//! * ECDSA P-256 with SHA-256, DER signatures (`ecdsa_secp256r1_sha256`):
//!   every vector twice, with the key uncompressed (ring's verifier, what
//!   a CSR's key normally takes) and compressed (the pure-Rust `p256`
//!   verifier, what a CSR with a compressed point takes).
//! * Ed25519 (`ed25519`): `verify_strict`, as for Ed25519 CSRs and
//!   Ed25519 issuers.
//!
//! Each vector's expected result is asserted: valid → accepted, invalid →
//! rejected. Neither set has "acceptable" vectors today; if a later
//! version adds some, either answer is taken and both key encodings must
//! agree.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ca::SignatureAlgorithm;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use wycheproof::TestResult;

/// How many vectors ran and how they came out.
#[derive(Default, Debug)]
struct Tally {
    run: usize,
    accepted_valid: usize,
    rejected_invalid: usize,
    acceptable: usize,
    wrong: Vec<String>,
}

impl Tally {
    fn check(&mut self, id: String, expected: TestResult, accepted: bool) {
        self.run += 1;
        match (expected, accepted) {
            (TestResult::Valid, true) => self.accepted_valid += 1,
            (TestResult::Invalid, false) => self.rejected_invalid += 1,
            (TestResult::Acceptable, _) => self.acceptable += 1,
            (e, a) => self
                .wrong
                .push(format!("{id}: expected {e:?}, accepted = {a}")),
        }
    }

    fn assert_all(&self, what: &str) {
        println!(
            "{what}: {} vectors, {} valid accepted, {} invalid rejected, {} acceptable",
            self.run, self.accepted_valid, self.rejected_invalid, self.acceptable
        );
        assert!(self.run > 0, "{what}: no vector ran");
        assert!(
            self.wrong.is_empty(),
            "{what}: {} vectors differ:\n{}",
            self.wrong.len(),
            self.wrong.join("\n")
        );
    }
}

#[test]
fn ecdsa_p256_sha256_der_vectors_through_verify_signature() {
    use wycheproof::ecdsa::{TestName, TestSet};
    let set = TestSet::load(TestName::EcdsaSecp256r1Sha256).unwrap();
    let (mut uncompressed, mut compressed) = (Tally::default(), Tally::default());
    for group in &set.test_groups {
        assert_eq!(group.hash, wycheproof::HashFunction::Sha2_256);
        let key: &[u8] = &group.key.key;
        assert_eq!(key.first(), Some(&0x04), "uncompressed SEC1 point");
        let short = p256::PublicKey::from_sec1_bytes(key)
            .unwrap()
            .to_encoded_point(true);
        for t in &group.tests {
            let a = ca::verify_signature(SignatureAlgorithm::EcdsaP256Sha256, key, &t.msg, &t.sig);
            let b = ca::verify_signature(
                SignatureAlgorithm::EcdsaP256Sha256,
                short.as_bytes(),
                &t.msg,
                &t.sig,
            );
            let id = format!("tcId {} ({})", t.tc_id, t.comment);
            assert_eq!(a, b, "{id}: the two verifiers disagree");
            uncompressed.check(id.clone(), t.result, a);
            compressed.check(id, t.result, b);
        }
    }
    uncompressed.assert_all("ECDSA P-256 SHA-256 DER, uncompressed key (ring)");
    compressed.assert_all("ECDSA P-256 SHA-256 DER, compressed key (p256)");
    assert_eq!(uncompressed.run, set.number_of_tests);
}

#[test]
fn ed25519_vectors_through_verify_signature() {
    use wycheproof::eddsa::{TestName, TestSet};
    let set = TestSet::load(TestName::Ed25519).unwrap();
    let mut tally = Tally::default();
    for group in &set.test_groups {
        let key: &[u8] = &group.key.pk;
        for t in &group.tests {
            let ok = ca::verify_signature(SignatureAlgorithm::Ed25519, key, &t.msg, &t.sig);
            tally.check(format!("tcId {} ({})", t.tc_id, t.comment), t.result, ok);
        }
    }
    tally.assert_all("Ed25519");
    assert_eq!(tally.run, set.number_of_tests);
}
