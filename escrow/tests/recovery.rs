//! Recovery sealing (ECIES to an officer's P-256 key): round trips, layout,
//! tampering, foreign keys, and OpenSSL as an outside witness of the
//! construction.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use common::{openssl, TempDir};
use escrow::recovery::{CIPHERTEXT_OFFSET, INFO_PREFIX, NONCE_OFFSET, POINT_OFFSET, TAG_LEN};
use escrow::{open_as_recipient, recipient_fingerprint, seal_to_recipient, Error};
use p256::pkcs8::{DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use p256::{PublicKey, SecretKey};
use rand_core::OsRng;
use sha2::{Digest, Sha256};

const CONTEXT: &[u8] = b"recovery/VB-2024-000123/psk/req-42";
const PLAINTEXT: &[u8] = b"the device PSK, 32 bytes long!!!";

struct Officer {
    public_pem: String,
    public_der: Vec<u8>,
    pkcs8_pem: String,
    sec1_pem: String,
    pkcs8_der: Vec<u8>,
}

fn officer() -> Officer {
    let secret = SecretKey::random(&mut OsRng);
    Officer {
        public_pem: secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
        public_der: secret.public_key().to_public_key_der().unwrap().into_vec(),
        pkcs8_pem: secret.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
        sec1_pem: secret.to_sec1_pem(LineEnding::LF).unwrap().to_string(),
        pkcs8_der: secret.to_pkcs8_der().unwrap().as_bytes().to_vec(),
    }
}

fn is_rejected(r: Result<zeroize::Zeroizing<Vec<u8>>, Error>) -> bool {
    matches!(r, Err(Error::SealedMalformed(_) | Error::Decrypt))
}

#[test]
fn round_trip_with_each_private_key_form() {
    let o = officer();
    for len in [0, 1, 32, 1000] {
        let plaintext: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let sealed = seal_to_recipient(o.public_pem.as_bytes(), CONTEXT, &plaintext).unwrap();
        assert_eq!(sealed.len(), CIPHERTEXT_OFFSET + len + TAG_LEN);
        for key in [o.pkcs8_pem.as_bytes(), o.sec1_pem.as_bytes(), &o.pkcs8_der] {
            assert_eq!(
                open_as_recipient(key, CONTEXT, &sealed).unwrap().as_slice(),
                plaintext
            );
        }
        // The public key as DER seals too.
        let sealed = seal_to_recipient(&o.public_der, CONTEXT, &plaintext).unwrap();
        assert_eq!(
            open_as_recipient(o.pkcs8_pem.as_bytes(), CONTEXT, &sealed)
                .unwrap()
                .as_slice(),
            plaintext
        );
    }
}

#[test]
fn layout_is_as_documented() {
    assert_eq!((POINT_OFFSET, NONCE_OFFSET, CIPHERTEXT_OFFSET), (5, 70, 82));
    let o = officer();
    let a = seal_to_recipient(o.public_pem.as_bytes(), CONTEXT, PLAINTEXT).unwrap();
    let b = seal_to_recipient(o.public_pem.as_bytes(), CONTEXT, PLAINTEXT).unwrap();
    assert_eq!(&a[..4], b"VBER");
    assert_eq!(a[4], 1);
    assert_eq!(a[5], 0x04, "uncompressed ephemeral point");
    let ephemeral = PublicKey::from_sec1_bytes(&a[5..70]).unwrap();
    let recipient = PublicKey::from_public_key_pem(&o.public_pem).unwrap();
    assert_ne!(ephemeral, recipient);
    assert_eq!(a.len(), 4 + 1 + 65 + 12 + PLAINTEXT.len() + 16);
    assert!(!a.windows(PLAINTEXT.len()).any(|w| w == PLAINTEXT));
    // Fresh ephemeral key and nonce every time.
    assert_ne!(a[5..70], b[5..70]);
    assert_ne!(a[70..82], b[70..82]);
}

#[test]
fn wrong_context_or_key_fails() {
    let (o, other) = (officer(), officer());
    let sealed = seal_to_recipient(o.public_pem.as_bytes(), CONTEXT, PLAINTEXT).unwrap();
    let e = open_as_recipient(o.pkcs8_pem.as_bytes(), b"recovery/other", &sealed).unwrap_err();
    assert!(matches!(e, Error::Decrypt), "{e:?}");
    assert_eq!(e.code(), "recovery_decrypt_failed");
    let e = open_as_recipient(other.pkcs8_pem.as_bytes(), CONTEXT, &sealed).unwrap_err();
    assert!(matches!(e, Error::Decrypt), "{e:?}");
}

#[test]
fn every_byte_flip_fails() {
    let o = officer();
    let sealed = seal_to_recipient(o.public_pem.as_bytes(), CONTEXT, PLAINTEXT).unwrap();
    for i in 0..sealed.len() {
        for mask in [0x01, 0x80, 0xff] {
            let mut t = sealed.clone();
            t[i] ^= mask;
            let r = open_as_recipient(o.pkcs8_pem.as_bytes(), CONTEXT, &t);
            if i < POINT_OFFSET + 1 {
                assert!(
                    matches!(r, Err(Error::SealedMalformed(_))),
                    "byte {i} ^ {mask:#x}"
                );
            } else if i >= NONCE_OFFSET {
                assert!(matches!(r, Err(Error::Decrypt)), "byte {i} ^ {mask:#x}");
            } else {
                assert!(is_rejected(r), "byte {i} ^ {mask:#x}");
            }
        }
    }
}

#[test]
fn every_truncation_and_an_extension_fail() {
    let o = officer();
    let sealed = seal_to_recipient(o.public_pem.as_bytes(), CONTEXT, PLAINTEXT).unwrap();
    for len in 0..sealed.len() {
        let r = open_as_recipient(o.pkcs8_pem.as_bytes(), CONTEXT, &sealed[..len]);
        if len < CIPHERTEXT_OFFSET + TAG_LEN {
            let e = r.unwrap_err();
            assert!(
                matches!(e, Error::SealedMalformed(_)),
                "length {len}: {e:?}"
            );
            assert_eq!(e.code(), "recovery_blob_malformed");
        } else {
            assert!(matches!(r, Err(Error::Decrypt)), "length {len}");
        }
    }
    let mut longer = sealed.clone();
    longer.push(0);
    assert!(matches!(
        open_as_recipient(o.pkcs8_pem.as_bytes(), CONTEXT, &longer),
        Err(Error::Decrypt)
    ));
}

/// Keys openssl makes that are not P-256, and junk, are refused as keys.
#[test]
fn foreign_keys_are_refused() {
    let dir = TempDir::new();
    let mut publics: Vec<(String, Vec<u8>)> = Vec::new();
    let mut privates: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, args) in [
        ("ed25519", &["-algorithm", "ed25519"][..]),
        (
            "rsa",
            &["-algorithm", "rsa", "-pkeyopt", "rsa_keygen_bits:2048"][..],
        ),
        (
            "p384",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"][..],
        ),
    ] {
        let path = dir.path().join(format!("{name}.pem"));
        let path = path.to_str().unwrap();
        let mut a = vec!["genpkey"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-out", path]);
        openssl(&a);
        privates.push((name.into(), std::fs::read(path).unwrap()));
        publics.push((name.into(), openssl(&["pkey", "-in", path, "-pubout"])));
    }
    let o = officer();
    publics.push(("junk".into(), b"not a key".to_vec()));
    publics.push(("empty".into(), Vec::new()));
    publics.push(("private PEM".into(), o.pkcs8_pem.clone().into_bytes()));
    privates.push(("junk".into(), b"\x30\x03\x02\x01\x00".to_vec()));
    privates.push(("public PEM".into(), o.public_pem.clone().into_bytes()));

    for (name, key) in &publics {
        let e = seal_to_recipient(key, CONTEXT, PLAINTEXT).unwrap_err();
        assert!(matches!(e, Error::RecipientKey(_)), "{name}: {e:?}");
        assert_eq!(e.code(), "recipient_key_invalid");
        assert!(
            matches!(recipient_fingerprint(key), Err(Error::RecipientKey(_))),
            "{name}"
        );
    }
    let sealed = seal_to_recipient(o.public_pem.as_bytes(), CONTEXT, PLAINTEXT).unwrap();
    for (name, key) in &privates {
        let e = open_as_recipient(key, CONTEXT, &sealed).unwrap_err();
        assert!(matches!(e, Error::RecipientKey(_)), "{name}: {e:?}");
    }
}

/// Parse `openssl kdf` output ("AB:CD:…") into bytes.
fn colon_hex(out: &[u8]) -> Vec<u8> {
    let s: String = String::from_utf8(out.to_vec())
        .unwrap()
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect();
    hex::decode(s).unwrap()
}

/// Outside witness: OpenSSL derives the ECDH secret and runs HKDF on the
/// documented salt and info; that key opens the blob with plain AES-256-GCM.
/// The recipient key is made by OpenSSL too, and the recipient fingerprint
/// is SHA-256 of OpenSSL's SPKI DER, whatever the point encoding.
#[test]
fn openssl_reproduces_the_construction() {
    let dir = TempDir::new();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    let (key, public, ephemeral) = (path("r.pem"), path("r.pub.pem"), path("e.pub.pem"));
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &key,
    ]);
    openssl(&["pkey", "-in", &key, "-pubout", "-out", &public]);
    let public_pem = std::fs::read(&public).unwrap();
    let spki_der = openssl(&["pkey", "-pubin", "-in", &public, "-outform", "DER"]);
    let recipient_point = &spki_der[spki_der.len() - 65..];
    assert_eq!(recipient_point[0], 0x04);

    let sealed = seal_to_recipient(&public_pem, CONTEXT, PLAINTEXT).unwrap();
    let e = &sealed[POINT_OFFSET..NONCE_OFFSET];
    let e_pem = PublicKey::from_sec1_bytes(e)
        .unwrap()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    std::fs::write(&ephemeral, e_pem).unwrap();

    let shared = openssl(&["pkeyutl", "-derive", "-inkey", &key, "-peerkey", &ephemeral]);
    assert_eq!(shared.len(), 32);
    let salt = [e, recipient_point].concat();
    let info = [INFO_PREFIX, CONTEXT].concat();
    let okm = openssl(&[
        "kdf",
        "-keylen",
        "32",
        "-kdfopt",
        "digest:SHA256",
        "-kdfopt",
        &format!("hexkey:{}", hex::encode(&shared)),
        "-kdfopt",
        &format!("hexsalt:{}", hex::encode(&salt)),
        "-kdfopt",
        &format!("hexinfo:{}", hex::encode(&info)),
        "HKDF",
    ]);
    let aes_key = colon_hex(&okm);
    assert_eq!(aes_key.len(), 32);

    let nonce: [u8; 12] = sealed[NONCE_OFFSET..CIPHERTEXT_OFFSET].try_into().unwrap();
    let opened = Aes256Gcm::new_from_slice(&aes_key)
        .unwrap()
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: &sealed[CIPHERTEXT_OFFSET..],
                aad: CONTEXT,
            },
        )
        .expect("the OpenSSL-derived key opens the blob");
    assert_eq!(opened, PLAINTEXT);

    // Our own opener accepts OpenSSL's key files: PKCS#8 and SEC 1, PEM and
    // DER (`openssl pkey -outform DER` writes SEC 1 for EC keys).
    let pkcs8_pem = std::fs::read(&key).unwrap();
    let sec1_pem = openssl(&["pkey", "-in", &key, "-traditional"]);
    assert!(String::from_utf8_lossy(&sec1_pem).contains("BEGIN EC PRIVATE KEY"));
    let pkcs8_der = openssl(&[
        "pkcs8", "-topk8", "-nocrypt", "-in", &key, "-outform", "DER",
    ]);
    let sec1_der = openssl(&["pkey", "-in", &key, "-outform", "DER"]);
    assert_ne!(pkcs8_der, sec1_der);
    for k in [&pkcs8_pem, &sec1_pem, &pkcs8_der, &sec1_der] {
        assert_eq!(
            open_as_recipient(k, CONTEXT, &sealed).unwrap().as_slice(),
            PLAINTEXT
        );
    }

    let expected = hex::encode(Sha256::digest(&spki_der));
    assert_eq!(recipient_fingerprint(&public_pem).unwrap(), expected);
    assert_eq!(recipient_fingerprint(&spki_der).unwrap(), expected);
    let compressed = openssl(&[
        "pkey",
        "-pubin",
        "-in",
        &public,
        "-outform",
        "DER",
        "-ec_conv_form",
        "compressed",
    ]);
    assert_ne!(compressed, spki_der);
    assert_eq!(recipient_fingerprint(&compressed).unwrap(), expected);
}
