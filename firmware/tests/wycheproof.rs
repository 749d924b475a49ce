//! Wycheproof vectors through the firmware crate's own signature check,
//! `firmware::verify_message`: the `check_signature` that `verify` and
//! `verify_image` run on a manifest's signed bytes (what a bootloader and
//! `station verify-firmware` rely on), with the key made the way they make
//! it (`PublicKey::from_raw`).
//!
//! * ECDSA P-256 over SHA-256 with the signature as raw r‖s
//!   (`ecdsa_secp256r1_sha256_p1363`): our layout's signature field is
//!   exactly 64 bytes, so a vector whose signature has another length
//!   cannot be put into a manifest at all; it is counted as rejected (by
//!   the layout) without a call. Both low-S and high-S signatures are
//!   valid here, as the crate documents.
//! * Ed25519 (`ed25519`): `verify_strict`, and `from_raw` refuses
//!   small-order keys; a vector whose key `from_raw` refuses counts as
//!   rejected.
//!
//! Each vector's expected result is asserted: valid → accepted, invalid →
//! rejected. Neither set has "acceptable" vectors today.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use firmware::{PublicKey, SignatureAlgorithm, SIGNATURE_LEN};
use wycheproof::TestResult;

#[derive(Default, Debug)]
struct Tally {
    run: usize,
    accepted_valid: usize,
    rejected_invalid: usize,
    rejected_by_length: usize,
    rejected_key: usize,
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
            "{what}: {} vectors, {} valid accepted, {} invalid rejected \
             (of which {} by the 64-byte signature field, {} by the key check), {} acceptable",
            self.run,
            self.accepted_valid,
            self.rejected_invalid,
            self.rejected_by_length,
            self.rejected_key,
            self.acceptable
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

/// One vector through `verify_message`: false when the key or the
/// signature's length cannot get that far.
fn verify(
    tally: &mut Tally,
    key: &Result<PublicKey, firmware::Error>,
    msg: &[u8],
    sig: &[u8],
) -> bool {
    let Ok(key) = key else {
        tally.rejected_key += 1;
        return false;
    };
    let Ok(sig) = <&[u8; SIGNATURE_LEN]>::try_from(sig) else {
        tally.rejected_by_length += 1;
        return false;
    };
    firmware::verify_message(key, msg, sig).is_ok()
}

#[test]
fn ecdsa_p256_sha256_p1363_vectors_through_verify_message() {
    use wycheproof::ecdsa::{TestName, TestSet};
    let set = TestSet::load(TestName::EcdsaSecp256r1Sha256P1363).unwrap();
    let mut tally = Tally::default();
    for group in &set.test_groups {
        assert_eq!(group.hash, wycheproof::HashFunction::Sha2_256);
        let key = PublicKey::from_raw(SignatureAlgorithm::EcdsaP256Sha256, &group.key.key);
        for t in &group.tests {
            let ok = verify(&mut tally, &key, &t.msg, &t.sig);
            tally.check(format!("tcId {} ({})", t.tc_id, t.comment), t.result, ok);
        }
    }
    tally.assert_all("ECDSA P-256 SHA-256 r||s (firmware)");
    assert_eq!(tally.run, set.number_of_tests);
}

#[test]
fn ed25519_vectors_through_verify_message() {
    use wycheproof::eddsa::{TestName, TestSet};
    let set = TestSet::load(TestName::Ed25519).unwrap();
    let mut tally = Tally::default();
    for group in &set.test_groups {
        let key = PublicKey::from_raw(SignatureAlgorithm::Ed25519, &group.key.pk);
        for t in &group.tests {
            let ok = verify(&mut tally, &key, &t.msg, &t.sig);
            tally.check(format!("tcId {} ({})", t.tc_id, t.comment), t.result, ok);
        }
    }
    tally.assert_all("Ed25519 (firmware)");
    assert_eq!(tally.run, set.number_of_tests);
}
