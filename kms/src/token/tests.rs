//! Session copies of signing keys, against a real SoftHSM2 token (one
//! private token per test; `cargo nextest` runs each test in its own
//! process, as the module is initialised once per process).

use std::path::Path;
use std::sync::Arc;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use ecdsa::signature::Verifier as _;
use softhsm_tests::SoftHsm;

use super::*;

fn open(hsm: &SoftHsm, extra: &str) -> Token {
    hsm.export_env();
    let toml = hsm
        .token_toml()
        .replacen("[token]\n", &format!("[token]\n{extra}"), 1);
    let cfg = crate::config::Config::parse(&toml, Path::new("/")).unwrap();
    Token::open(&cfg.token, crate::pin::load_pin(&cfg.token).unwrap()).unwrap()
}

/// A session of the test's own beside the pool (logged in: login is per
/// application).
fn bare(token: &Token) -> Session {
    token
        .pkcs11()
        .open_ro_session(token.slot().unwrap())
        .unwrap()
}

/// Session-object private keys with `CKA_ID` `id`: the copies, seen from
/// another session (SoftHSM2 shows an application's session objects to all
/// its sessions).
fn copies_of(token: &Token, id: &[u8]) -> Vec<ObjectHandle> {
    bare(token)
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Token(false),
            Attribute::Id(id.to_vec()),
        ])
        .unwrap()
}

/// Every object on the token itself (`CKA_TOKEN=true`).
fn token_objects(token: &Token) -> usize {
    bare(token)
        .find_objects(&[Attribute::Token(true)])
        .unwrap()
        .len()
}

fn p256_verifier(token: &Token, label: &str) -> p256::ecdsa::VerifyingKey {
    p256::ecdsa::VerifyingKey::from_sec1_bytes(&token.public_key(label).unwrap().raw).unwrap()
}

fn verifies(vk: &p256::ecdsa::VerifyingKey, msg: &[u8], der: &[u8]) -> bool {
    vk.verify(msg, &p256::ecdsa::Signature::from_der(der).unwrap())
        .is_ok()
}

/// The copy the session leased next holds for `label`, if any.
fn leased_copy(token: &Token, label: &str) -> Option<SessionCopy> {
    token.run(|s| Ok(s.copies().get(label).copied())).unwrap()
}

/// Whether the cache entry of private key `label` allows copies.
fn copies_allowed(token: &Token, label: &str) -> bool {
    token.keys.read().unwrap()[KeyClass::Private as usize]
        .get(label)
        .map(|c| !c.no_copies.load(Ordering::Relaxed))
        .unwrap()
}

#[test]
fn the_session_copy_is_a_protected_session_object_whose_signatures_verify_under_the_ca_key() {
    let hsm = SoftHsm::new("t-copy");
    let token = open(&hsm, "");
    let ec = token
        .generate_key_pair(KeyPairKind::EcP256, "ca-key")
        .unwrap();
    let ed = token
        .generate_key_pair(KeyPairKind::Ed25519, "audit-key")
        .unwrap();
    let objects = token_objects(&token);
    let vk = p256_verifier(&token, "ca-key");
    let ed_raw: [u8; 32] = token
        .public_key("audit-key")
        .unwrap()
        .raw
        .try_into()
        .unwrap();
    let ed_vk = ed25519_dalek::VerifyingKey::from_bytes(&ed_raw).unwrap();

    for i in 0..20 {
        let msg = format!("TBSCertificate {i}");
        assert!(verifies(
            &vk,
            msg.as_bytes(),
            &token.sign("ca-key", msg.as_bytes()).unwrap()
        ));
        let sig = token.sign("audit-key", msg.as_bytes()).unwrap();
        ed_vk
            .verify_strict(
                msg.as_bytes(),
                &ed25519_dalek::Signature::from_slice(&sig).unwrap(),
            )
            .unwrap();
    }

    // One thread: one session, one copy of each key in it.
    for (info, label) in [(&ec, "ca-key"), (&ed, "audit-key")] {
        let seen = copies_of(&token, &info.id);
        assert_eq!(seen.len(), 1, "{label}: {seen:?}");
        let copy = leased_copy(&token, label).expect("a copy in the session");
        assert_eq!(copy.handle, seen[0], "{label}");
        let token_key = token
            .run(|s| token.find(s, label, KeyClass::Private))
            .unwrap();
        assert_ne!(copy.handle, token_key.handle, "{label}");
        let attrs = bare(&token)
            .get_attributes(
                copy.handle,
                &[
                    AttributeType::Token,
                    AttributeType::Private,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::AlwaysSensitive,
                    AttributeType::NeverExtractable,
                    AttributeType::Label,
                ],
            )
            .unwrap();
        for want in [
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::AlwaysSensitive(true),
            Attribute::NeverExtractable(true),
            Attribute::Label(Vec::new()),
        ] {
            assert!(attrs.contains(&want), "{label}: {want:?} not in {attrs:?}");
        }
        // Its value cannot be read.
        assert!(bare(&token)
            .get_attributes(copy.handle, &[AttributeType::Value])
            .unwrap()
            .is_empty());
    }

    // Signatures made with the copy itself verify under the token's public
    // key (not only whatever `sign` picked).
    let msg = b"signed with the copy";
    let der = token
        .run(|s| {
            let copy = s.copies()["ca-key"];
            ops::sign(s, copy.handle, KeyAlgorithm::EcP256, "ca-key", msg)
        })
        .unwrap();
    assert!(verifies(&vk, msg, &der));
    assert!(!verifies(&vk, b"another message", &der));

    // Copies are not keys: not listed, not counted, not on the token.
    assert_eq!(token.key_count().unwrap(), 2);
    assert_eq!(token.list_keys().unwrap().len(), 2);
    assert_eq!(token_objects(&token), objects);
    assert_eq!(token.key_info("ca-key", KeyClass::Private).unwrap(), ec);
}

#[test]
fn many_threads_make_at_most_one_copy_per_session_and_nothing_on_the_token() {
    let hsm = SoftHsm::new("t-copies");
    let token = Arc::new(open(&hsm, "pool_size = 4\n"));
    let info = token.generate_key_pair(KeyPairKind::EcP256, "k").unwrap();
    let vk = p256_verifier(&token, "k");
    let objects = token_objects(&token);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let token = token.clone();
            std::thread::spawn(move || {
                (0..200)
                    .map(|i| {
                        let msg = format!("thread {t} message {i}");
                        let sig = token.sign("k", msg.as_bytes()).unwrap();
                        (msg, sig)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut n = 0;
    for t in threads {
        for (msg, der) in t.join().unwrap() {
            assert!(verifies(&vk, msg.as_bytes(), &der), "{msg}");
            n += 1;
        }
    }
    assert_eq!(n, 1600);
    let copies = copies_of(&token, &info.id).len();
    let (_, open) = token.sessions();
    assert!(
        (1..=open).contains(&copies),
        "{copies} copies, {open} sessions"
    );
    assert!(open <= 4);
    assert_eq!(token_objects(&token), objects);
}

#[test]
fn signing_goes_on_with_new_copies_after_the_pool_reopens_its_sessions() {
    let hsm = SoftHsm::new("t-reopen");
    let token = open(&hsm, "");
    let info = token.generate_key_pair(KeyPairKind::EcP256, "k").unwrap();
    let vk = p256_verifier(&token, "k");
    let objects = token_objects(&token);
    assert!(verifies(
        &vk,
        b"before",
        &token.sign("k", b"before").unwrap()
    ));
    let first = leased_copy(&token, "k").unwrap();

    // C_Finalize from another handle: every session, the login and the
    // session objects are gone; the pool initialises the library again and
    // opens new sessions.
    token.pkcs11().clone().finalize().unwrap();
    assert!(verifies(&vk, b"after", &token.sign("k", b"after").unwrap()));
    let second = leased_copy(&token, "k").unwrap();
    assert_ne!(second.lookup, first.lookup, "copy made from a new lookup");
    assert_eq!(copies_of(&token, &info.id), vec![second.handle]);

    // A logout anywhere destroys the application's private session objects
    // (PKCS#11, C_Logout): the pool logs in again and copies again.
    bare(&token).logout().unwrap();
    assert!(verifies(
        &vk,
        b"logout",
        &token.sign("k", b"logout").unwrap()
    ));
    let third = leased_copy(&token, "k").unwrap();
    assert_ne!(third.lookup, second.lookup);
    assert_eq!(copies_of(&token, &info.id), vec![third.handle]);

    for i in 0..50 {
        let msg = format!("m{i}");
        assert!(verifies(
            &vk,
            msg.as_bytes(),
            &token.sign("k", msg.as_bytes()).unwrap()
        ));
    }
    assert_eq!(copies_of(&token, &info.id).len(), 1);
    assert_eq!(token_objects(&token), objects);
}

#[test]
fn a_destroyed_key_stops_signing_at_once_in_every_session_and_a_new_key_under_its_label_is_used() {
    let hsm = SoftHsm::new("t-destroy");
    let token = open(&hsm, "pool_size = 2\n");
    let old = token.generate_key_pair(KeyPairKind::EcP256, "k").unwrap();
    let old_vk = p256_verifier(&token, "k");
    // Copies in both sessions of the pool, held at once.
    let mut a = token.pool.acquire().unwrap();
    let mut b = token.pool.acquire().unwrap();
    for lease in [&mut a, &mut b] {
        let s = lease.session().unwrap();
        let k = token.signing_key(s, "k").unwrap();
        assert_eq!(s.copies()["k"].handle, k.handle);
    }
    assert_eq!(copies_of(&token, &old.id).len(), 2);
    drop((a, b));
    assert!(verifies(&old_vk, b"m", &token.sign("k", b"m").unwrap()));

    token.destroy_key("k", KeyClass::Private).unwrap();
    token.destroy_key("k", KeyClass::Public).unwrap();
    // No copy signs, in either session, and none is left in the token.
    assert!(copies_of(&token, &old.id).is_empty());
    let mut a = token.pool.acquire().unwrap();
    let mut b = token.pool.acquire().unwrap();
    for lease in [&mut a, &mut b] {
        let s = lease.session().unwrap();
        let err = token.signing_key(s, "k").unwrap_err();
        assert_eq!(err.code(), "key_not_found", "{err}");
    }
    drop((a, b));
    assert_eq!(token.sign("k", b"m").unwrap_err().code(), "key_not_found");

    // Rotation under the same label: the new key signs, never an old copy.
    let new = token.generate_key_pair(KeyPairKind::EcP256, "k").unwrap();
    assert_ne!(new.id, old.id);
    let new_vk = p256_verifier(&token, "k");
    let mut a = token.pool.acquire().unwrap();
    let mut b = token.pool.acquire().unwrap();
    for lease in [&mut a, &mut b] {
        let s = lease.session().unwrap();
        let k = token.signing_key(s, "k").unwrap();
        let der = ops::sign(s, k.handle, k.algorithm, "k", b"rotated").unwrap();
        assert!(verifies(&new_vk, b"rotated", &der));
        assert!(!verifies(&old_vk, b"rotated", &der));
        assert_eq!(s.copies().len(), 1, "the stale entry is gone");
    }
    drop((a, b));
    assert_eq!(copies_of(&token, &new.id).len(), 2);
    assert_eq!(token.key_count().unwrap(), 1);
}

#[test]
fn a_key_deleted_by_another_process_stops_signing_within_the_copy_trust_period() {
    let hsm = SoftHsm::new("t-external");
    let token = open(&hsm, "");
    token.generate_key_pair(KeyPairKind::EcP256, "k").unwrap();
    token.sign("k", b"before").unwrap();
    assert!(leased_copy(&token, "k").is_some());
    hsm.pkcs11_tool(&["--delete-object", "--type", "privkey", "--label", "k"]);
    std::thread::sleep(COPY_TRUST * 3);
    let err = token.sign("k", b"after").unwrap_err();
    assert_eq!(err.code(), "key_not_found", "{err}");
}

#[test]
fn keys_the_token_will_not_copy_or_should_not_be_copied_sign_from_the_token() {
    let hsm = SoftHsm::new("t-nocopy");
    let token = open(&hsm, "");
    // Generated beside our generator: a key SoftHSM2 refuses to copy
    // (CKA_MODIFIABLE=false: CKR_ATTRIBUTE_READ_ONLY), one that forbids
    // copies (CKA_COPYABLE=false), one that is extractable.
    let cases: [(&str, Attribute); 3] = [
        ("read-only", Attribute::Modifiable(false)),
        ("not-copyable", Attribute::Copyable(false)),
        ("extractable", Attribute::Extractable(true)),
    ];
    for (i, (label, special)) in cases.iter().enumerate() {
        token
            .run(|s| {
                let public = [
                    Attribute::Token(true),
                    Attribute::Label(label.as_bytes().to_vec()),
                    Attribute::Id(vec![i as u8 + 1]),
                    Attribute::EcParams(keys::P256_PARAMS.to_vec()),
                    Attribute::Verify(true),
                ];
                let mut private = vec![
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Label(label.as_bytes().to_vec()),
                    Attribute::Id(vec![i as u8 + 1]),
                    Attribute::Sign(true),
                    special.clone(),
                ];
                if !matches!(special, Attribute::Extractable(_)) {
                    private.push(Attribute::Extractable(false));
                }
                s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
                    .map_err(ck)
            })
            .unwrap();
    }
    let objects = token_objects(&token);
    for (i, (label, _)) in cases.iter().enumerate() {
        let vk = p256_verifier(&token, label);
        for j in 0..5 {
            let msg = format!("{label} {j}");
            let der = token.sign(label, msg.as_bytes()).unwrap();
            assert!(verifies(&vk, msg.as_bytes(), &der), "{label}");
        }
        assert!(copies_of(&token, &[i as u8 + 1]).is_empty(), "{label}");
        assert_eq!(
            leased_copy(&token, label).map(|c| c.handle),
            None,
            "{label}"
        );
        // Tried once at most: later signatures go straight to the token object.
        assert!(!copies_allowed(&token, label), "{label}");
    }
    assert_eq!(token_objects(&token), objects);
}
