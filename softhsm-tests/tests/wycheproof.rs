//! Wycheproof vectors through the token layer on a real SoftHSM2 token:
//! AES-GCM (`CKM_AES_GCM`) through `Token::gcm_decrypt`, which opens every
//! escrowed device secret (`TokenKeyWrapper::unwrap`), and AES key wrap
//! with padding (RFC 5649, `CKM_AES_KEY_WRAP_PAD`) through
//! `Token::unwrap_aes_key` and `Token::wrap_key`, which wrap escrowed
//! device keys under a KEK.
//!
//! Each vector's key is imported into the test's token with `C_CreateObject`
//! (a token object with a label of its own: our functions look keys up by
//! label among token objects, as the appliance does), then our function
//! runs on it. The vector sets are filtered to what our code can be given:
//!
//! * AES-GCM: a 96-bit nonce (`Sealed::iv` is 12 bytes) and a 128-bit tag
//!   (`GCM_TAG_BITS`); vectors with other nonce or tag sizes cannot be
//!   expressed through `Token::gcm_decrypt` and are not run. All three key
//!   sizes run (the function takes any AES key; the appliance's are
//!   AES-256). Valid → the exact plaintext; invalid → `integrity_check_failed`.
//! * AES-KWP, unwrapping: `Token::unwrap_aes_key` unwraps AES keys only,
//!   so valid vectors run when their key data is 16, 24 or 32 bytes (the
//!   unwrapped key is non-extractable: it is shown to be the vector's by
//!   sealing with it through `Token::gcm_encrypt` and opening the result in
//!   software with the vector's key); every invalid vector runs and must be
//!   refused. All three KEK sizes run (the appliance's KEKs are AES-256).
//! * AES-KWP, wrapping: each valid vector's key data is imported as an
//!   extractable secret key (AES for 16, 24 or 32 bytes, generic secret
//!   otherwise) and `Token::wrap_key` must give exactly the vector's
//!   ciphertext (RFC 5649 is deterministic). Only key data whose length is
//!   a multiple of 8 runs: SoftHSM2 zero-pads the data of any key it wraps
//!   to a multiple of 8 bytes before it applies RFC 5649 (its `WrapKeySym`),
//!   so a 1-byte key is wrapped as that byte and seven zeros, with a length
//!   indicator of 8, and the result is not the vector's (44 vectors of the
//!   current set; each output was checked once, outside this test, to be
//!   exactly RFC 5649 of the zero-padded data). The appliance wraps only
//!   AES-256 keys (32 bytes), which this does not touch.
//!
//! AES key wrap without padding (RFC 3394, `aes_wrap`) is not run: our code
//! only uses `CKM_AES_KEY_WRAP_PAD`, whose output differs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use cryptoki::object::{Attribute, KeyType, ObjectClass};
use cryptoki::session::Session;
use kms::config::Config;
use kms::pin::load_pin;
use kms::token::{AesUsage, Sealed, Token, GCM_IV_LEN};
use softhsm_tests::SoftHsm;
use wycheproof::TestResult;

fn open(hsm: &SoftHsm) -> Token {
    hsm.export_env();
    let cfg = Config::parse(&hsm.token_toml(), Path::new("/")).unwrap();
    Token::open(&cfg.token, load_pin(&cfg.token).unwrap()).unwrap()
}

/// A session beside the token's pool, for importing the vectors' keys (the
/// login is the application's, so it is logged in already).
fn import_session(token: &Token) -> Session {
    token
        .pkcs11()
        .open_rw_session(token.slot().unwrap())
        .unwrap()
}

/// What an imported key may do.
#[derive(Clone, Copy)]
enum Role {
    /// AES-GCM (encrypt, decrypt), as `AesUsage::Encrypt` keys.
    Gcm,
    /// A KEK (wrap, unwrap), as `AesUsage::Wrap` keys.
    Kek,
    /// A key to be wrapped: extractable, used for nothing else.
    Wrapped,
}

/// Import `value` as a token secret key labelled `label`.
fn import(session: &Session, label: &str, value: &[u8], role: Role) {
    let aes = matches!(value.len(), 16 | 24 | 32);
    let key_type = match role {
        Role::Wrapped if !aes => KeyType::GENERIC_SECRET,
        _ => KeyType::AES,
    };
    let (gcm, kek) = (matches!(role, Role::Gcm), matches!(role, Role::Kek));
    session
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(key_type),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(matches!(role, Role::Wrapped)),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Value(value.to_vec()),
            Attribute::Encrypt(gcm),
            Attribute::Decrypt(gcm),
            Attribute::Wrap(kek),
            Attribute::Unwrap(kek),
        ])
        .unwrap_or_else(|e| panic!("importing {label} ({} bytes): {e}", value.len()));
}

/// Counts per outcome, and the vectors whose outcome differs.
#[derive(Default, Debug)]
struct Tally {
    run: usize,
    accepted_valid: usize,
    rejected_invalid: usize,
    /// Error codes of the rejections, with their counts.
    codes: BTreeMap<&'static str, usize>,
    /// Vectors run, per key size in bits.
    by_key_bits: BTreeMap<usize, usize>,
    not_run: usize,
    wrong: Vec<String>,
}

impl Tally {
    fn assert_all(&self, what: &str, not_run_because: &str) {
        println!(
            "{what}: {} vectors run ({:?} by key bits), {} valid accepted with the exact result, \
             {} invalid rejected (codes {:?}); {} not run ({not_run_because})",
            self.run,
            self.by_key_bits,
            self.accepted_valid,
            self.rejected_invalid,
            self.codes,
            self.not_run
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

/// A label per distinct key, importing the key the first time it is seen.
struct Keys<'a> {
    session: &'a Session,
    prefix: &'static str,
    role: Role,
    labels: HashMap<Vec<u8>, String>,
}

impl Keys<'_> {
    fn label(&mut self, key: &[u8]) -> String {
        let n = self.labels.len();
        self.labels
            .entry(key.to_vec())
            .or_insert_with(|| {
                let label = format!("{}-{n}", self.prefix);
                import(self.session, &label, key, self.role);
                label
            })
            .clone()
    }
}

#[test]
fn aes_gcm_vectors_through_token_gcm_decrypt() {
    use wycheproof::aead::{TestName, TestSet};
    let hsm = SoftHsm::new("t-wp-gcm");
    let token = open(&hsm);
    let session = import_session(&token);
    let mut keys = Keys {
        session: &session,
        prefix: "wp-gcm",
        role: Role::Gcm,
        labels: HashMap::new(),
    };
    let set = TestSet::load(TestName::AesGcm).unwrap();
    let mut tally = Tally::default();
    for group in &set.test_groups {
        if group.nonce_size != 8 * GCM_IV_LEN || group.tag_size != 128 {
            tally.not_run += group.tests.len();
            continue;
        }
        for t in &group.tests {
            let id = format!("tcId {} ({})", t.tc_id, t.comment);
            assert_ne!(
                t.result,
                TestResult::Acceptable,
                "{id}: no acceptable AES-GCM vectors expected"
            );
            tally.run += 1;
            *tally.by_key_bits.entry(8 * t.key.len()).or_default() += 1;
            let label = keys.label(&t.key);
            let sealed = Sealed {
                iv: t.nonce[..].try_into().unwrap(),
                ciphertext: [&t.ct[..], &t.tag[..]].concat(),
            };
            match (t.result, token.gcm_decrypt(&label, &sealed, &t.aad)) {
                (TestResult::Valid, Ok(pt)) if pt[..] == t.pt[..] => tally.accepted_valid += 1,
                (TestResult::Invalid, Err(e)) if e.code() == "integrity_check_failed" => {
                    tally.rejected_invalid += 1;
                    *tally.codes.entry(e.code()).or_default() += 1;
                }
                (expected, got) => tally.wrong.push(format!(
                    "{id}: expected {expected:?}, got {:?}",
                    got.map(|p| hex::encode(&p[..]))
                )),
            }
        }
    }
    tally.assert_all(
        "AES-GCM through Token::gcm_decrypt",
        "nonce or tag sizes Sealed cannot carry",
    );
}

/// Is the AES key labelled `label` on the token the key `expected`? Seal
/// with it on the token, open in software with `expected`.
fn same_aes_key(token: &Token, label: &str, expected: &[u8]) -> bool {
    use aes_gcm::aead::consts::U12;
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    use aes_gcm::{aes, AesGcm};
    let aad = b"vbus wycheproof";
    let plaintext = b"which key is this?";
    let sealed = token.gcm_encrypt(label, aad, plaintext).unwrap();
    let payload = Payload {
        msg: &sealed.ciphertext[..],
        aad,
    };
    let nonce = &aes_gcm::Nonce::<U12>::from(sealed.iv);
    let opened = match expected.len() {
        16 => AesGcm::<aes::Aes128, U12>::new_from_slice(expected)
            .unwrap()
            .decrypt(nonce, payload),
        24 => AesGcm::<aes::Aes192, U12>::new_from_slice(expected)
            .unwrap()
            .decrypt(nonce, payload),
        32 => AesGcm::<aes::Aes256, U12>::new_from_slice(expected)
            .unwrap()
            .decrypt(nonce, payload),
        n => panic!("no AES key of {n} bytes"),
    };
    opened.is_ok_and(|p| p == plaintext)
}

#[test]
fn aes_kwp_vectors_through_token_unwrap_aes_key_and_wrap_key() {
    use wycheproof::keywrap::{TestName, TestSet};
    let hsm = SoftHsm::new("t-wp-kwp");
    let token = open(&hsm);
    let session = import_session(&token);
    let mut keks = Keys {
        session: &session,
        prefix: "wp-kek",
        role: Role::Kek,
        labels: HashMap::new(),
    };
    let set = TestSet::load(TestName::AesKeyWrapWithPadding).unwrap();
    let (mut unwrap, mut wrap) = (Tally::default(), Tally::default());
    for group in &set.test_groups {
        for t in &group.tests {
            let id = format!("tcId {} ({})", t.tc_id, t.comment);
            assert_ne!(
                t.result,
                TestResult::Acceptable,
                "{id}: no acceptable KWP vectors expected"
            );
            let kek = keks.label(&t.key);
            let valid = t.result == TestResult::Valid;

            // Wrapping: valid vectors whose key data SoftHSM2 does not pad.
            if valid && t.pt.len() % 8 == 0 {
                wrap.run += 1;
                *wrap.by_key_bits.entry(group.key_size).or_default() += 1;
                let wrapped = format!("wp-wrapped-{}", t.tc_id);
                import(&session, &wrapped, &t.pt, Role::Wrapped);
                match token.wrap_key(&kek, &wrapped) {
                    Ok(ct) if ct[..] == t.ct[..] => wrap.accepted_valid += 1,
                    got => wrap.wrong.push(format!(
                        "{id}: wrapping {} bytes gave {:?}",
                        t.pt.len(),
                        got.map(hex::encode)
                    )),
                }
            } else {
                wrap.not_run += 1;
            }

            // Unwrapping into an AES key: valid vectors of AES key data,
            // every invalid vector.
            if valid && !matches!(t.pt.len(), 16 | 24 | 32) {
                unwrap.not_run += 1;
                continue;
            }
            unwrap.run += 1;
            *unwrap.by_key_bits.entry(group.key_size).or_default() += 1;
            let label = format!("wp-unwrapped-{}", t.tc_id);
            match (
                valid,
                token.unwrap_aes_key(&kek, &t.ct, AesUsage::Encrypt, &label),
            ) {
                (true, Ok(_)) if same_aes_key(&token, &label, &t.pt) => unwrap.accepted_valid += 1,
                (false, Err(e)) => {
                    unwrap.rejected_invalid += 1;
                    *unwrap.codes.entry(e.code()).or_default() += 1;
                }
                (_, got) => unwrap.wrong.push(format!(
                    "{id}: expected {:?}, got {:?}",
                    t.result,
                    got.map(|info| info.label)
                )),
            }
        }
    }
    unwrap.assert_all(
        "AES-KWP through Token::unwrap_aes_key",
        "valid, key data not of an AES key length",
    );
    wrap.assert_all(
        "AES-KWP through Token::wrap_key",
        "invalid, or key data SoftHSM2 zero-pads",
    );
}
