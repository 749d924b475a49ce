//! The token layer against a real SoftHSM2 token, one private token per test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::path::Path;
use std::sync::Arc;

use ecdsa::signature::Verifier as _;
use kms::config::Config;
use kms::pin::load_pin;
use kms::token::{AesUsage, Extractable, KeyAlgorithm, KeyClass, KeyPairKind, Token};
use kms::Error;
use softhsm_tests::{SoftHsm, USER_PIN};

fn config(hsm: &SoftHsm, extra: &str) -> Config {
    let toml = hsm
        .token_toml()
        .replacen("[token]\n", &format!("[token]\n{extra}"), 1);
    Config::parse(&toml, Path::new("/")).unwrap()
}

fn open(hsm: &SoftHsm, extra: &str) -> Token {
    hsm.export_env();
    let cfg = config(hsm, extra);
    Token::open(&cfg.token, load_pin(&cfg.token).unwrap()).unwrap()
}

/// The `pkcs11-tool --list-objects` block of the object of `kind` labelled `label`.
fn listed(listing: &str, kind: &str, label: &str) -> String {
    let mut blocks: Vec<String> = Vec::new();
    for l in listing.lines() {
        match blocks.last_mut() {
            Some(b) if l.starts_with(' ') => {
                b.push('\n');
                b.push_str(l);
            }
            _ => blocks.push(l.to_owned()),
        }
    }
    blocks
        .into_iter()
        .find(|b| {
            b.lines()
                .next()
                .map(str::trim)
                .is_some_and(|h| h.starts_with(kind))
                && line(b, "label:") == label
        })
        .unwrap_or_else(|| panic!("no {kind} labelled {label} in:\n{listing}"))
}

fn line<'a>(block: &'a str, field: &str) -> &'a str {
    block
        .lines()
        .find_map(|l| l.trim().strip_prefix(field).map(str::trim))
        .unwrap_or_else(|| panic!("no {field} in {block}"))
}

#[test]
fn generated_keys_are_sensitive_and_never_extractable_as_the_token_and_pkcs11_tool_say() {
    let hsm = SoftHsm::new("t-attrs");
    let token = open(&hsm, "");
    let ec = token
        .generate_key_pair(KeyPairKind::EcP256, "ec-1")
        .unwrap();
    let ed = token
        .generate_key_pair(KeyPairKind::Ed25519, "ed-1")
        .unwrap();
    let wrap = token
        .generate_aes_key(AesUsage::Wrap, Extractable::Never, "kek-1")
        .unwrap();
    let data = token
        .generate_aes_key(AesUsage::Encrypt, Extractable::Never, "dek-1")
        .unwrap();

    // What the token reports through our own reader.
    for (info, class, algorithm) in [
        (&ec, KeyClass::Private, KeyAlgorithm::EcP256),
        (&ed, KeyClass::Private, KeyAlgorithm::Ed25519),
        (&wrap, KeyClass::Secret, KeyAlgorithm::Aes),
        (&data, KeyClass::Secret, KeyAlgorithm::Aes),
    ] {
        assert_eq!(info.class, class, "{}", info.label);
        assert_eq!(info.algorithm, algorithm, "{}", info.label);
        assert!(info.sensitive, "{} sensitive", info.label);
        assert!(!info.extractable, "{} extractable", info.label);
        assert_eq!(info.id.len(), 16, "{} id", info.label);
        let id_hex: String = info.id.iter().map(|b| format!("%{b:02x}")).collect();
        assert_eq!(
            info.uri,
            format!(
                "pkcs11:token=t-attrs;object={};id={id_hex};type={}",
                info.label,
                class.name()
            )
        );
    }
    assert_ne!(ec.id, ed.id);
    assert_eq!(token.key_count().unwrap(), 4);
    assert_eq!(token.list_keys().unwrap().len(), 4);

    // What an outside tool reads from the token files.
    let listing = hsm.pkcs11_tool(&["--list-objects"]);
    for (kind, label, usage) in [
        ("Private Key Object; EC", "ec-1", "sign"),
        ("Private Key Object; EC_EDWARDS", "ed-1", "sign"),
        ("Secret Key Object; AES", "kek-1", "wrap, unwrap"),
        ("Secret Key Object; AES", "dek-1", "encrypt, decrypt"),
    ] {
        let block = &listed(&listing, kind, label);
        assert_eq!(
            line(block, "Access:"),
            "sensitive, always sensitive, never extractable, local",
            "{label}"
        );
        assert_eq!(line(block, "Usage:"), usage, "{label}");
    }
}

#[test]
fn ecdsa_p256_signature_verifies_with_p256_and_binds_the_message() {
    let hsm = SoftHsm::new("t-ecdsa");
    let token = open(&hsm, "");
    token
        .generate_key_pair(KeyPairKind::EcP256, "ca-key")
        .unwrap();
    let public = token.public_key("ca-key").unwrap();
    assert_eq!(public.algorithm, KeyAlgorithm::EcP256);
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&public.raw).unwrap();
    // The SPKI we build is the one p256 would build.
    use p256::pkcs8::EncodePublicKey;
    assert_eq!(
        public.spki_der().unwrap(),
        vk.to_public_key_der().unwrap().as_bytes()
    );

    let msg = b"TBSCertificate bytes";
    let der = token.sign("ca-key", msg).unwrap();
    let sig = p256::ecdsa::Signature::from_der(&der).unwrap();
    vk.verify(msg, &sig).unwrap();
    assert!(vk.verify(b"another message", &sig).is_err());
}

#[test]
fn ed25519_signature_verifies_with_ed25519_dalek() {
    let hsm = SoftHsm::new("t-ed25519");
    let token = open(&hsm, "");
    token
        .generate_key_pair(KeyPairKind::Ed25519, "audit-key")
        .unwrap();
    let public = token.public_key("audit-key").unwrap();
    assert_eq!(public.algorithm, KeyAlgorithm::Ed25519);
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&public.raw.as_slice().try_into().unwrap())
        .unwrap();
    let msg = b"checkpoint note";
    let sig = token.sign("audit-key", msg).unwrap();
    let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
    vk.verify_strict(msg, &sig).unwrap();
    assert!(vk.verify_strict(b"other", &sig).is_err());
}

#[test]
fn aes_key_wrap_round_trip_and_tampered_blob_is_refused() {
    let hsm = SoftHsm::new("t-wrap");
    let token = open(&hsm, "");
    token
        .generate_aes_key(AesUsage::Wrap, Extractable::Never, "kek")
        .unwrap();
    token
        .generate_aes_key(AesUsage::Encrypt, Extractable::WrappedOnly, "device-key")
        .unwrap();
    let blob = token.wrap_key("kek", "device-key").unwrap();
    assert_eq!(blob.len(), 40, "RFC 5649 wrap of a 32-byte key");

    let restored = token
        .unwrap_aes_key("kek", &blob, AesUsage::Encrypt, "device-key-restored")
        .unwrap();
    assert!(restored.sensitive && !restored.extractable);
    // Same key material: what one seals the other opens.
    let sealed = token.gcm_encrypt("device-key", b"aad", b"secret").unwrap();
    assert_eq!(
        &*token
            .gcm_decrypt("device-key-restored", &sealed, b"aad")
            .unwrap(),
        b"secret"
    );

    let before = token.list_keys().unwrap();
    for i in [0, 8, blob.len() - 1] {
        let mut bad = blob.clone();
        bad[i] ^= 1;
        let err = token
            .unwrap_aes_key("kek", &bad, AesUsage::Encrypt, "tampered")
            .unwrap_err();
        assert_eq!(err.code(), "integrity_check_failed", "byte {i}: {err}");
    }
    assert_eq!(
        token.list_keys().unwrap(),
        before,
        "a refused unwrap creates nothing"
    );
}

#[test]
fn aes_gcm_round_trip_and_any_change_is_refused() {
    let hsm = SoftHsm::new("t-gcm");
    let token = open(&hsm, "");
    token
        .generate_aes_key(AesUsage::Encrypt, Extractable::Never, "kek")
        .unwrap();
    let aad = b"VBUS-CPU-2412-003847/psk";
    let sealed = token.gcm_encrypt("kek", aad, &[7u8; 32]).unwrap();
    assert_eq!(sealed.ciphertext.len(), 32 + 16);
    assert_eq!(
        &*token.gcm_decrypt("kek", &sealed, aad).unwrap(),
        &[7u8; 32]
    );
    // Fresh nonce each time.
    assert_ne!(
        token.gcm_encrypt("kek", aad, &[7u8; 32]).unwrap().iv,
        sealed.iv
    );

    let mut flipped_ct = sealed.clone();
    flipped_ct.ciphertext[0] ^= 1;
    let mut flipped_tag = sealed.clone();
    *flipped_tag.ciphertext.last_mut().unwrap() ^= 1;
    let mut flipped_iv = sealed.clone();
    flipped_iv.iv[0] ^= 1;
    let mut truncated = sealed.clone();
    truncated.ciphertext.truncate(10);
    let cases = [
        ("ciphertext bit", &flipped_ct, &aad[..]),
        ("tag bit", &flipped_tag, &aad[..]),
        ("nonce bit", &flipped_iv, &aad[..]),
        ("shorter than a tag", &truncated, &aad[..]),
        (
            "other associated data",
            &sealed,
            &b"VBUS-CPU-2412-003848/psk"[..],
        ),
    ];
    for (case, s, a) in cases {
        let err = token.gcm_decrypt("kek", s, a).unwrap_err();
        assert_eq!(err.code(), "integrity_check_failed", "{case}: {err}");
    }
}

#[test]
fn sixteen_threads_sign_at_once_through_a_pool_of_four() {
    let hsm = SoftHsm::new("t-threads");
    let token = Arc::new(open(&hsm, "pool_size = 4\n"));
    token.generate_key_pair(KeyPairKind::EcP256, "k").unwrap();
    let vk =
        p256::ecdsa::VerifyingKey::from_sec1_bytes(&token.public_key("k").unwrap().raw).unwrap();
    let handles: Vec<_> = (0..16)
        .map(|t| {
            let token = token.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| {
                        let msg = format!("thread {t} message {i}");
                        (msg.clone(), token.sign("k", msg.as_bytes()).unwrap())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut n = 0;
    for h in handles {
        for (msg, der) in h.join().unwrap() {
            vk.verify(
                msg.as_bytes(),
                &p256::ecdsa::Signature::from_der(&der).unwrap(),
            )
            .unwrap();
            n += 1;
        }
    }
    assert_eq!(n, 800);
}

#[test]
fn pool_recovers_when_the_library_is_finalised_underneath() {
    // C_Finalize from another handle closes every session and the login: what
    // a network HSM client does when its connection resets.
    let hsm = SoftHsm::new("t-finalize");
    let token = open(&hsm, "");
    token.generate_key_pair(KeyPairKind::EcP256, "k").unwrap();
    token.sign("k", b"before").unwrap();
    token.pkcs11().clone().finalize().unwrap();
    let sig = token.sign("k", b"after").unwrap();
    assert!(p256::ecdsa::Signature::from_der(&sig).is_ok());
    assert_eq!(token.key_count().unwrap(), 1);
}

#[test]
fn pool_recovers_when_the_login_is_dropped_underneath() {
    let hsm = SoftHsm::new("t-logout");
    let token = open(&hsm, "");
    token.generate_key_pair(KeyPairKind::Ed25519, "k").unwrap();
    token.sign("k", b"before").unwrap();
    // Logging out any session logs out the whole application.
    let other = token
        .pkcs11()
        .open_ro_session(token.slot().unwrap())
        .unwrap();
    other.logout().unwrap();
    assert_eq!(token.sign("k", b"after").unwrap().len(), 64);
}

#[test]
fn wrong_pin_is_refused_once_and_named_without_the_pin() {
    // Its own process and token: a process already logged in would not be
    // asked for the PIN at all (PKCS#11 login is per application).
    let hsm = SoftHsm::new("t-pin");
    hsm.export_env();
    let mut cfg = config(&hsm, "").token;
    let wrong = hsm.dir().join("wrong-pin");
    std::fs::write(&wrong, "not-the-pin").unwrap();
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    cfg.pin_file = Some(wrong);
    let err = Token::open(&cfg, load_pin(&cfg).unwrap()).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.code(), "token_pin_rejected", "{msg}");
    assert!(
        matches!(err, Error::PinRejected { .. }),
        "not retried into token_unavailable: {err:?}"
    );
    assert!(
        msg.contains("CKR_PIN_INCORRECT") && msg.contains("will not try again"),
        "{msg}"
    );
    assert!(
        !msg.contains("not-the-pin") && !msg.contains(USER_PIN),
        "{msg}"
    );
    // The right PIN still works: the wrong one was not retried into a lock-out.
    let good = config(&hsm, "").token;
    Token::open(&good, load_pin(&good).unwrap()).unwrap();
}

#[test]
fn bad_setup_is_a_typed_error_that_names_the_problem_and_never_the_pin() {
    let hsm = SoftHsm::new("t-bad");
    hsm.export_env();
    let good = config(&hsm, "");
    // Put a key on the token so "nothing changed" can be checked.
    let token = Token::open(&good.token, load_pin(&good.token).unwrap()).unwrap();
    token.generate_key_pair(KeyPairKind::EcP256, "ec").unwrap();
    token
        .generate_aes_key(AesUsage::Wrap, Extractable::Never, "kek")
        .unwrap();
    token
        .generate_aes_key(AesUsage::Encrypt, Extractable::Never, "dek")
        .unwrap();
    let keys_before = token.list_keys().unwrap();

    let open_pin_file = hsm.dir().join("open-pin");
    std::fs::write(&open_pin_file, USER_PIN).unwrap();
    std::fs::set_permissions(
        &open_pin_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let not_a_module = hsm.conf();

    let with = |f: &dyn Fn(&mut kms::config::TokenConfig)| {
        let mut c = good.token.clone();
        f(&mut c);
        load_pin(&c).and_then(|pin| Token::open(&c, pin).map(|_| ()))
    };
    // (case, outcome, expected code, words the message must contain)
    let rows: Vec<(&str, Result<(), Error>, &str, &str)> = vec![
        (
            "token label that does not exist",
            with(&|c| c.label = "no-such-token".into()),
            "token_unavailable",
            "no token labelled \"no-such-token\"",
        ),
        (
            "module that is not a PKCS#11 library",
            with(&|c| c.module = not_a_module.clone()),
            "token_unavailable",
            "cannot load PKCS#11 module",
        ),
        (
            "PIN file readable by others",
            with(&|c| c.pin_file = Some(open_pin_file.clone())),
            "pin_unavailable",
            "chmod 600",
        ),
        (
            "PIN variable not set",
            with(&|c| {
                c.pin_file = None;
                c.pin_env = Some("VBUS_TEST_NO_SUCH_VAR".into());
            }),
            "pin_unavailable",
            "VBUS_TEST_NO_SUCH_VAR",
        ),
        (
            "key label that does not exist",
            token.sign("nope", b"m").map(|_| ()),
            "key_not_found",
            "\"nope\"",
        ),
        (
            "data key used for wrapping",
            token.wrap_key("dek", "kek").map(|_| ()),
            "key_wrong_type",
            "\"dek\"",
        ),
        (
            "wrapping key used for AES-GCM",
            token.gcm_encrypt("kek", b"", b"x").map(|_| ()),
            "key_wrong_type",
            "\"kek\"",
        ),
        (
            "label that cannot be a URI segment",
            token
                .generate_key_pair(KeyPairKind::EcP256, "bad label;x")
                .map(|_| ()),
            "invalid_input",
            "must be 1 to 64 characters",
        ),
        (
            "label already used",
            token
                .generate_key_pair(KeyPairKind::EcP256, "ec")
                .map(|_| ()),
            "key_exists",
            "\"ec\"",
        ),
    ];
    for (case, outcome, code, words) in rows {
        let err = outcome.expect_err(case);
        let msg = err.to_string();
        assert_eq!(err.code(), code, "{case}: {msg}");
        assert!(msg.contains(words), "{case}: {msg:?} lacks {words:?}");
        assert!(!msg.contains(USER_PIN), "{case}: PIN in {msg:?}");
    }
    assert_eq!(
        token.list_keys().unwrap(),
        keys_before,
        "refusals changed the token"
    );
}

#[test]
fn token_signer_plugs_into_rcgen_and_openssl_accepts_the_certificate() {
    let hsm = SoftHsm::new("t-rcgen");
    let token = Arc::new(open(&hsm, ""));
    token
        .generate_key_pair(KeyPairKind::EcP256, "root")
        .unwrap();
    let signer = kms::token::TokenSigner::new(token.clone(), "root").unwrap();
    let key = ca::RcgenSigner::new(&signer);
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.serial_number = Some(token.random(16).unwrap().into());
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "token-signed root");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    let path = hsm.dir().join("root.pem");
    std::fs::write(&path, cert.pem()).unwrap();
    let out = softhsm_tests::run(
        std::process::Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&path)
            .arg(&path),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{}: OK", path.display()),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pool_follows_a_token_re_initialised_by_another_process() {
    let hsm = SoftHsm::new("t-reinit");
    let token = open(&hsm, "");
    token.generate_key_pair(KeyPairKind::EcP256, "old").unwrap();
    token.sign("old", b"before").unwrap();
    // Another process wipes and re-initialises the token under us.
    let out = softhsm_tests::run(hsm.command("softhsm2-util").args([
        "--init-token",
        "--token",
        "t-reinit",
        "--label",
        "t-reinit",
        "--so-pin",
        softhsm_tests::SO_PIN,
        "--pin",
        USER_PIN,
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The old key is gone with the old token: a clear error, not a stale
    // handle signing or a hang; the pool keeps working on the new token.
    assert_eq!(
        token.sign("old", b"after").unwrap_err().code(),
        "key_not_found"
    );
    assert_eq!(token.key_count().unwrap(), 0);
    token.generate_key_pair(KeyPairKind::EcP256, "new").unwrap();
    let vk =
        p256::ecdsa::VerifyingKey::from_sec1_bytes(&token.public_key("new").unwrap().raw).unwrap();
    let sig = token.sign("new", b"x").unwrap();
    vk.verify(b"x", &p256::ecdsa::Signature::from_der(&sig).unwrap())
        .unwrap();
}

#[test]
fn checkpoint_signer_and_key_wrapper_work_through_the_traits_the_pure_crates_see() {
    use audit::CheckpointSigner as _;
    use escrow::KeyWrapper as _;
    let hsm = SoftHsm::new("t-traits");
    let token = Arc::new(open(&hsm, ""));
    token
        .generate_key_pair(KeyPairKind::Ed25519, "audit")
        .unwrap();
    token
        .generate_key_pair(KeyPairKind::EcP256, "not-ed25519")
        .unwrap();
    token
        .generate_aes_key(AesUsage::Encrypt, Extractable::Never, "kek-v1")
        .unwrap();

    let signer = kms::token::TokenCheckpointSigner::new(token.clone(), "audit").unwrap();
    let note = b"vbus-kms/audit\n42\nAAAA\n";
    let sig = signer.sign(note).unwrap();
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&signer.public_key()).unwrap();
    vk.verify_strict(note, &ed25519_dalek::Signature::from_bytes(&sig))
        .unwrap();
    let err = kms::token::TokenCheckpointSigner::new(token.clone(), "not-ed25519").unwrap_err();
    assert_eq!(err.code(), "key_wrong_type");

    let wrapper = kms::token::TokenKeyWrapper::new(token.clone(), "kek-v1", 1);
    let blob = wrapper
        .wrap(b"VBUS-CPU-2412-003847|psk", &[9u8; 32])
        .unwrap();
    assert_eq!(
        (blob.kek_version, blob.nonce.len(), blob.ciphertext.len()),
        (1, 12, 48)
    );
    assert_eq!(
        &*wrapper.unwrap(b"VBUS-CPU-2412-003847|psk", &blob).unwrap(),
        &[9u8; 32]
    );
    let code = |e: escrow::WrapperError| e.downcast::<Error>().unwrap().code();
    assert_eq!(
        code(
            wrapper
                .unwrap(b"VBUS-CPU-2412-003848|psk", &blob)
                .unwrap_err()
        ),
        "integrity_check_failed"
    );
    let mut other_version = blob.clone();
    other_version.kek_version = 2;
    assert_eq!(
        code(
            wrapper
                .unwrap(b"VBUS-CPU-2412-003847|psk", &other_version)
                .unwrap_err()
        ),
        "invalid_input"
    );
}
