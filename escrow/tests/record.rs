//! Escrow records: purpose, AAD and fingerprint rules; seal, open and rewrap
//! against a software KEK.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{LyingWrapper, SoftWrapper};
use escrow::{aad, check_purpose, fingerprint, Error, EscrowRecord, SecretKind, WrappedBlob};

const SERIAL: &str = "VB-2024-000123";
const SECRET: &[u8] = b"correct horse battery staple";

fn seal(w: &SoftWrapper, kind: SecretKind, secret: &[u8]) -> EscrowRecord {
    EscrowRecord::seal(w, SERIAL, "psk", kind, secret, "station-7", 1_700_000_000).unwrap()
}

#[test]
fn purpose_table() {
    let long = "a".repeat(32);
    let too_long = "a".repeat(33);
    let rows: &[(&str, bool)] = &[
        ("psk", true),
        ("keypair", true),
        ("aes_mac-key2", true),
        ("0", true),
        (&long, true),
        ("", false),
        (&too_long, false),
        ("PSK", false),
        ("psk key", false),
        ("psk/../x", false),
        ("psk\0", false),
        ("psk.key", false),
        ("clé", false),
    ];
    for (purpose, ok) in rows {
        match check_purpose(purpose) {
            Ok(()) => assert!(ok, "{purpose:?} accepted"),
            Err(e) => {
                assert!(!ok, "{purpose:?} refused: {e}");
                assert_eq!(e.code(), "purpose_invalid", "{purpose:?}");
            }
        }
    }
}

#[test]
fn aad_exact_bytes() {
    assert_eq!(
        aad("VB-1", "psk"),
        b"vbus-kms/escrow/v1\0VB-1\0psk".to_vec()
    );
}

/// Pinned with `printf 'vbus-kms/escrow/fingerprint/v1\0correct horse battery
/// staple' | sha256sum`.
#[test]
fn fingerprint_pinned() {
    assert_eq!(fingerprint(SECRET), "sha256:ec82ec22d74ea6e6");
    assert_eq!(fingerprint(b""), "sha256:2598fee77573c4ba");
}

#[test]
fn seal_open_round_trip_each_kind() {
    let w = SoftWrapper::new(1);
    for kind in [SecretKind::Psk, SecretKind::AesKey, SecretKind::PrivateKey] {
        let r = seal(&w, kind, SECRET);
        assert_eq!(r.kind, kind);
        assert_eq!(r.blob.kek_version, 1);
        assert_eq!(r.fingerprint, fingerprint(SECRET));
        assert!(!r.blob.ciphertext.windows(SECRET.len()).any(|w| w == SECRET));
        assert_eq!(r.open(&w).unwrap().as_slice(), SECRET);
    }
}

#[test]
fn seal_refuses_bad_purpose() {
    let w = SoftWrapper::new(1);
    let e = EscrowRecord::seal(&w, SERIAL, "PSK", SecretKind::Psk, SECRET, "x", 0).unwrap_err();
    assert!(matches!(e, Error::Purpose(_)), "{e:?}");
}

#[test]
fn seal_verifies_the_wrapper() {
    let w = LyingWrapper(SoftWrapper::new(1));
    let e = EscrowRecord::seal(&w, SERIAL, "psk", SecretKind::Psk, SECRET, "x", 0).unwrap_err();
    assert!(matches!(e, Error::SealVerify), "{e:?}");
    assert_eq!(e.code(), "escrow_wrapper_failed");
}

#[test]
fn open_refuses_another_serial_or_purpose() {
    let w = SoftWrapper::new(1);
    let r = seal(&w, SecretKind::Psk, SECRET);
    let moved = EscrowRecord {
        module_serial: "VB-2024-000124".into(),
        ..r.clone()
    };
    let e = moved.open(&w).unwrap_err();
    assert!(matches!(e, Error::Wrapper(_)), "{e:?}");
    assert_eq!(e.code(), "escrow_wrapper_failed");
    let repurposed = EscrowRecord {
        purpose: "keypair".into(),
        ..r
    };
    assert!(matches!(repurposed.open(&w), Err(Error::Wrapper(_))));
}

#[test]
fn open_refuses_flipped_ciphertext_and_nonce() {
    let w = SoftWrapper::new(1);
    let r = seal(&w, SecretKind::Psk, SECRET);
    for i in 0..r.blob.ciphertext.len() {
        let mut t = r.clone();
        t.blob.ciphertext[i] ^= 0x80;
        assert!(matches!(t.open(&w), Err(Error::Wrapper(_))), "byte {i}");
    }
    let mut t = r.clone();
    t.blob.nonce[0] ^= 1;
    assert!(matches!(t.open(&w), Err(Error::Wrapper(_))));
}

#[test]
fn open_checks_the_fingerprint() {
    let w = SoftWrapper::new(1);
    let mut r = seal(&w, SecretKind::Psk, SECRET);
    r.fingerprint = fingerprint(b"another secret");
    let e = r.open(&w).unwrap_err();
    assert!(matches!(e, Error::FingerprintMismatch), "{e:?}");
    assert_eq!(e.code(), "escrow_fingerprint_mismatch");
}

#[test]
fn open_refuses_another_kek_version() {
    let r = seal(&SoftWrapper::new(1), SecretKind::Psk, SECRET);
    assert!(matches!(
        r.open(&SoftWrapper::new(2)),
        Err(Error::Wrapper(_))
    ));
    // Same version number, different key: GCM refuses it.
    assert!(matches!(
        r.open(&SoftWrapper::new(1)),
        Err(Error::Wrapper(_))
    ));
}

#[test]
fn rewrap_moves_to_the_new_kek() {
    let (v1, v2) = (SoftWrapper::new(1), SoftWrapper::new(2));
    let mut r = seal(&v1, SecretKind::AesKey, SECRET);
    r.rotation_allowed = true;
    let n = r.rewrap(&v1, &v2).unwrap();
    assert_eq!(n.blob.kek_version, 2);
    assert_ne!(n.blob, r.blob);
    assert_eq!(
        EscrowRecord {
            blob: r.blob.clone(),
            ..n.clone()
        },
        r
    );
    assert_eq!(n.open(&v2).unwrap().as_slice(), SECRET);
    assert!(matches!(n.open(&v1), Err(Error::Wrapper(_))));
}

#[test]
fn rewrap_verify_failure_returns_no_record() {
    let v1 = SoftWrapper::new(1);
    let r = seal(&v1, SecretKind::Psk, SECRET);
    let e = r
        .rewrap(&v1, &LyingWrapper(SoftWrapper::new(2)))
        .unwrap_err();
    assert!(matches!(e, Error::RewrapVerify), "{e:?}");
    assert_eq!(e.code(), "escrow_rewrap_failed");
    // The old record still opens.
    assert_eq!(r.open(&v1).unwrap().as_slice(), SECRET);
}

#[test]
fn rewrap_with_the_wrong_from_fails_before_sealing() {
    let r = seal(&SoftWrapper::new(1), SecretKind::Psk, SECRET);
    let e = r
        .rewrap(&SoftWrapper::new(1), &SoftWrapper::new(2))
        .unwrap_err();
    assert!(matches!(e, Error::Wrapper(_)), "{e:?}");
}

#[test]
fn json_shape_and_no_secret_in_debug() {
    let blob = WrappedBlob {
        kek_version: 3,
        nonce: vec![0xab; 12],
        ciphertext: vec![0x01, 0xff],
    };
    let r = EscrowRecord {
        module_serial: "VB-1".into(),
        purpose: "aes_mac".into(),
        kind: SecretKind::AesKey,
        blob,
        fingerprint: "sha256:0011223344556677".into(),
        issued_to: "station-7".into(),
        issued_at: 1_700_000_000,
        rotation_allowed: true,
    };
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "module_serial": "VB-1",
            "purpose": "aes_mac",
            "kind": "aes_key",
            "blob": {"kek_version": 3, "nonce": "abababababababababababab", "ciphertext": "01ff"},
            "fingerprint": "sha256:0011223344556677",
            "issued_to": "station-7",
            "issued_at": 1_700_000_000,
            "rotation_allowed": true
        })
    );
    assert_eq!(serde_json::from_value::<EscrowRecord>(json).unwrap(), r);
    assert_eq!(
        format!("{:?}", r.blob),
        "WrappedBlob { kek_version: 3, nonce: \"abababababababababababab\", ciphertext_len: 2 }"
    );
    assert!(serde_json::from_str::<WrappedBlob>(
        r#"{"kek_version":1,"nonce":"zz","ciphertext":""}"#
    )
    .is_err());

    let w = SoftWrapper::new(1);
    let sealed = seal(&w, SecretKind::Psk, SECRET);
    let shown = format!(
        "{sealed:?} {} {}",
        serde_json::to_string(&sealed).unwrap(),
        sealed.open(&SoftWrapper::new(2)).unwrap_err()
    );
    for needle in [
        String::from_utf8_lossy(SECRET).into_owned(),
        hex::encode(SECRET),
    ] {
        assert!(!shown.contains(&needle), "secret shown in {shown}");
    }
}
