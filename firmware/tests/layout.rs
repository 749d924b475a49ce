//! The binary layout: known answers pinned as hex, field offsets against the
//! documented table, and the strict decoder's refusals (one row per case,
//! each with its exact error).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests

mod common;

use common::{sha256, Raw, Signer, ED25519_SEED, IMAGE, P256_SCALAR, SIGNING_TIME};
use firmware::{decode, DigestAlgorithm, Error, Manifest, SignatureAlgorithm, MAX_NAME};

/// to_be_signed() of the fixed manifest, Ed25519 key from seed 00..1f.
const KAT_TBS_ED25519: &str = "\
56424657 01 01 01 00 00000007 000000006b0874e1 \
56475aa75463474c0285df5dbf2bcab73da651358839e9b77481b2eab107708c \
20 9530996c6a46295eb181804cffe9a0da0f4c38ae32f511a5130fa1e435bdd7d4 \
08 766275732d637075 05 312e342e32";

/// The Ed25519 signature (deterministic, RFC 8032) over KAT_TBS_ED25519.
const KAT_SIG_ED25519: &str = "\
4d94a046e4e577d9ed1be6afcee81ccc7e0129306258a3ee11e0595911c958df\
0f9cc3ce9b25e09a7096846e36d6ba9579c8e05d8833f4e1d89d9f5422036401";

/// to_be_signed() of the fixed manifest, P-256 key with scalar 0x11…11.
const KAT_TBS_P256: &str = "\
56424657 01 02 01 00 00000007 000000006b0874e1 \
2bad0fd610d99eae443e932a26142bca1e5fa995b4518452827e78ef1f317ff0 \
20 9530996c6a46295eb181804cffe9a0da0f4c38ae32f511a5130fa1e435bdd7d4 \
08 766275732d637075 05 312e342e32";

/// The P-256 signature (RFC 6979, deterministic) over KAT_TBS_P256, r‖s.
const KAT_SIG_P256: &str = "\
76729ca806bc431bb229842284e48b2930486a88981d1b4679aa0cce3c69dcd1\
3da573d7adf6653257b4221e1ab79fc14017ce3f7454bc33959a8e88c5f1d071";

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).unwrap()
}

fn kat_manifest(signer: &Signer) -> Manifest {
    signer.manifest(DigestAlgorithm::Sha256)
}

#[test]
fn known_answer_ed25519_signed_bytes_and_signature() {
    let signer = Signer::ed25519(ED25519_SEED);
    // The key itself is RFC-independent arithmetic, but pin it too: a
    // different public key would change every byte below.
    assert_eq!(
        hex::encode(signer.public().raw()),
        "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
    );
    let m = kat_manifest(&signer);
    assert_eq!(m.digest, sha256(b"vbus firmware"));
    let tbs = m.to_be_signed().unwrap();
    assert_eq!(hex::encode(&tbs), hex::encode(unhex(KAT_TBS_ED25519)));
    let signed = signer.signed(&m);
    let mut expected = unhex(KAT_TBS_ED25519);
    expected.extend(unhex(KAT_SIG_ED25519));
    assert_eq!(hex::encode(&signed), hex::encode(&expected));
    assert_eq!(signed.len(), 164);
    // And what the pinned bytes decode to.
    let d = decode(&expected).unwrap();
    assert_eq!(d.manifest, m);
    assert_eq!(hex::encode(d.signature), KAT_SIG_ED25519);
}

#[test]
fn known_answer_p256_signed_bytes_and_signature() {
    let signer = Signer::p256(P256_SCALAR);
    let m = kat_manifest(&signer);
    assert_eq!(
        hex::encode(m.to_be_signed().unwrap()),
        hex::encode(unhex(KAT_TBS_P256))
    );
    let mut expected = unhex(KAT_TBS_P256);
    expected.extend(unhex(KAT_SIG_P256));
    assert_eq!(hex::encode(signer.signed(&m)), hex::encode(&expected));
}

#[test]
fn field_offsets_match_the_documented_table() {
    let signer = Signer::ed25519(ED25519_SEED);
    let m = kat_manifest(&signer);
    let b = signer.signed(&m);
    assert_eq!(&b[0..4], b"VBFW", "0: magic");
    assert_eq!(b[4], 1, "4: layout version");
    assert_eq!(b[5], 1, "5: signature algorithm Ed25519");
    assert_eq!(b[6], 1, "6: digest algorithm SHA-256");
    assert_eq!(b[7], 0, "7: reserved");
    assert_eq!(&b[8..12], &7u32.to_be_bytes(), "8: security version");
    assert_eq!(&b[12..20], &SIGNING_TIME.to_be_bytes(), "12: signing time");
    assert_eq!(&b[20..52], &signer.public().key_id(), "20: key id");
    assert_eq!(
        &b[20..52],
        &sha256(signer.public().raw())[..],
        "key id = SHA-256(raw key)"
    );
    assert_eq!(b[52], 32, "52: digest length");
    assert_eq!(&b[53..85], &sha256(IMAGE)[..], "53: digest");
    assert_eq!(b[85], 8, "product length");
    assert_eq!(&b[86..94], b"vbus-cpu", "product");
    assert_eq!(b[94], 5, "version length");
    assert_eq!(&b[95..100], b"1.4.2", "version");
    assert_eq!(
        m.to_be_signed().unwrap(),
        &b[..100],
        "end of the signed bytes"
    );
    assert_eq!(b.len(), 100 + 64, "signature, nothing after");

    // The P-256 and SHA-512 variants differ only where the table says.
    let p = Signer::p256(P256_SCALAR);
    let m512 = p.manifest(DigestAlgorithm::Sha512);
    let b = p.signed(&m512);
    assert_eq!((b[5], b[6], b[52]), (2, 2, 64));
    assert_eq!(&b[53..117], &DigestAlgorithm::Sha512.digest(IMAGE)[..]);
    assert_eq!(b.len(), 53 + 64 + 1 + 8 + 1 + 5 + 64);
}

#[test]
fn the_encoder_agrees_with_an_independent_one() {
    for signer in Signer::both() {
        for alg in [DigestAlgorithm::Sha256, DigestAlgorithm::Sha512] {
            let m = signer.manifest(alg);
            assert_eq!(m.to_be_signed().unwrap(), Raw::of(&m).tbs());
        }
    }
}

#[test]
fn algorithm_numbers_and_names() {
    assert_eq!(SignatureAlgorithm::Ed25519.wire(), 1);
    assert_eq!(SignatureAlgorithm::EcdsaP256Sha256.wire(), 2);
    assert_eq!(SignatureAlgorithm::Ed25519.as_str(), "ed25519");
    assert_eq!(
        SignatureAlgorithm::EcdsaP256Sha256.as_str(),
        "ecdsa-p256-sha256"
    );
    assert_eq!(DigestAlgorithm::Sha256.wire(), 1);
    assert_eq!(DigestAlgorithm::Sha512.wire(), 2);
    assert_eq!(DigestAlgorithm::Sha256.output_len(), 32);
    assert_eq!(DigestAlgorithm::Sha512.output_len(), 64);
    assert_eq!(DigestAlgorithm::Sha256.as_str(), "sha256");
    assert_eq!(DigestAlgorithm::Sha512.as_str(), "sha512");
    for n in [0u8, 3, 255] {
        assert_eq!(SignatureAlgorithm::from_wire(n), None);
        assert_eq!(DigestAlgorithm::from_wire(n), None);
    }
    assert_eq!(SignatureAlgorithm::from_name("Ed25519"), None);
}

#[test]
fn truncated_at_every_length_is_malformed() {
    for signer in Signer::both() {
        for alg in [DigestAlgorithm::Sha256, DigestAlgorithm::Sha512] {
            let b = signer.signed(&signer.manifest(alg));
            for len in 0..b.len() {
                match decode(&b[..len]) {
                    Err(Error::Malformed(_)) => {}
                    other => panic!("{alg:?}, truncated to {len}: {other:?}"),
                }
            }
            assert!(decode(&b).is_ok());
        }
    }
}

#[test]
fn one_trailing_byte_is_malformed() {
    let signer = Signer::ed25519(ED25519_SEED);
    let mut b = signer.signed(&kat_manifest(&signer));
    for extra in [0u8, 0xff] {
        b.push(extra);
        assert_eq!(
            decode(&b),
            Err(Error::Malformed("trailing bytes after the signature"))
        );
        b.pop();
    }
}

/// One row per bad input the decoder must refuse, built with the unchecked
/// encoder and signed (so only the decoder's checks can refuse it).
#[test]
fn decoder_refusals_table() {
    let signer = Signer::ed25519(ED25519_SEED);
    let m = kat_manifest(&signer);
    type Edit = fn(&mut Raw);
    #[rustfmt::skip]
    let rows: Vec<(&str, Edit, Error)> = vec![
        ("magic", |r| r.magic = b"VBFX".to_vec(), Error::Malformed("magic is not \"VBFW\"")),
        ("layout version 0", |r| r.layout = 0, Error::Malformed("layout version is not 1")),
        ("layout version 2", |r| r.layout = 2, Error::Malformed("layout version is not 1")),
        ("signature algorithm 0", |r| r.sig_alg = 0, Error::UnsupportedAlgorithm(0)),
        ("signature algorithm 3", |r| r.sig_alg = 3, Error::UnsupportedAlgorithm(3)),
        ("digest algorithm 0", |r| r.digest_alg = 0, Error::UnsupportedAlgorithm(0)),
        ("digest algorithm 3", |r| r.digest_alg = 3, Error::UnsupportedAlgorithm(3)),
        ("reserved 1", |r| r.reserved = 1, Error::Malformed("reserved byte is not 0")),
        ("sha256 digest of 31", |r| { r.digest_len = 31; r.digest = vec![7; 31] }, Error::DigestLength { expected: 32, got: 31 }),
        ("sha256 digest of 33", |r| { r.digest_len = 33; r.digest = vec![7; 33] }, Error::DigestLength { expected: 32, got: 33 }),
        ("sha256 digest of 64", |r| { r.digest_len = 64; r.digest = vec![7; 64] }, Error::DigestLength { expected: 32, got: 64 }),
        ("sha512 digest of 63", |r| { r.digest_alg = 2; r.digest_len = 63; r.digest = vec![7; 63] }, Error::DigestLength { expected: 64, got: 63 }),
        ("sha512 digest of 32", |r| r.digest_alg = 2, Error::DigestLength { expected: 64, got: 32 }),
        ("product with a space", |r| r.product = b"vbus cpu".to_vec(), Error::InvalidProduct),
        ("product with a slash", |r| r.product = b"vbus/cpu".to_vec(), Error::InvalidProduct),
        ("product non-ASCII", |r| { r.product_len = 9; r.product = "vbus-cpé".as_bytes().to_vec() }, Error::InvalidProduct),
        ("empty product", |r| { r.product_len = 0; r.product = b"".to_vec() }, Error::InvalidProduct),
        ("product of 65", |r| { r.product_len = 65; r.product = vec![b'a'; 65] }, Error::InvalidProduct),
        ("version with a space", |r| r.version = b"1.4 2".to_vec(), Error::InvalidVersion),
        ("version with BEL", |r| r.version = b"1.4\x072".to_vec(), Error::InvalidVersion),
        ("version with DEL", |r| r.version = b"1.4.\x7f".to_vec(), Error::InvalidVersion),
        ("version with NUL", |r| r.version = b"1.4.\0".to_vec(), Error::InvalidVersion),
        ("version non-ASCII", |r| r.version = b"1.4.\xe9".to_vec(), Error::InvalidVersion),
        ("empty version", |r| { r.version_len = 0; r.version = b"".to_vec() }, Error::InvalidVersion),
        ("version of 65", |r| { r.version_len = 65; r.version = vec![b'1'; 65] }, Error::InvalidVersion),
    ];
    for (name, edit, want) in rows {
        let mut raw = Raw::of(&m);
        edit(&mut raw);
        let bytes = raw.signed_by(&signer);
        assert_eq!(decode(&bytes), Err(want.clone()), "row {name:?}");
        assert_eq!(
            firmware::verify(&bytes, &signer.public()),
            Err(want),
            "row {name:?} (verify)"
        );
    }
}

#[test]
fn names_at_the_limits_are_accepted() {
    let signer = Signer::ed25519(ED25519_SEED);
    let mut m = kat_manifest(&signer);
    m.product = "A".repeat(MAX_NAME);
    m.version = "~".repeat(MAX_NAME);
    let b = signer.signed(&m);
    assert_eq!(decode(&b).unwrap().manifest, m);
    m.product = "a.Z_0-9".into();
    m.version = "!1.0+build/\"x\"".into();
    assert_eq!(decode(&signer.signed(&m)).unwrap().manifest, m);
}

/// The encoder refuses what the decoder would refuse.
#[test]
fn validate_and_encode_refusals_table() {
    let signer = Signer::ed25519(ED25519_SEED);
    let good = kat_manifest(&signer);
    #[rustfmt::skip]
    let rows: Vec<(&str, Manifest, Error)> = vec![
        ("digest 31", Manifest { digest: vec![0; 31], ..good.clone() }, Error::DigestLength { expected: 32, got: 31 }),
        ("digest 33", Manifest { digest: vec![0; 33], ..good.clone() }, Error::DigestLength { expected: 32, got: 33 }),
        ("sha512 digest 63", Manifest { digest_algorithm: DigestAlgorithm::Sha512, digest: vec![0; 63], ..good.clone() }, Error::DigestLength { expected: 64, got: 63 }),
        ("empty digest", Manifest { digest: vec![], ..good.clone() }, Error::DigestLength { expected: 32, got: 0 }),
        ("product with a space", Manifest { product: "vbus cpu".into(), ..good.clone() }, Error::InvalidProduct),
        ("empty product", Manifest { product: String::new(), ..good.clone() }, Error::InvalidProduct),
        ("product of 65", Manifest { product: "a".repeat(65), ..good.clone() }, Error::InvalidProduct),
        ("product of 300", Manifest { product: "a".repeat(300), ..good.clone() }, Error::InvalidProduct),
        ("version with a tab", Manifest { version: "1.4\t2".into(), ..good.clone() }, Error::InvalidVersion),
        ("version with a newline", Manifest { version: "1.4.2\n".into(), ..good.clone() }, Error::InvalidVersion),
        ("version non-ASCII", Manifest { version: "1.4.2é".into(), ..good.clone() }, Error::InvalidVersion),
        ("empty version", Manifest { version: String::new(), ..good.clone() }, Error::InvalidVersion),
        ("version of 65", Manifest { version: "1".repeat(65), ..good.clone() }, Error::InvalidVersion),
    ];
    for (name, m, want) in rows {
        assert_eq!(m.validate(), Err(want.clone()), "row {name:?}");
        assert_eq!(m.to_be_signed(), Err(want.clone()), "row {name:?}");
        assert_eq!(m.encode(&[0; 64]), Err(want), "row {name:?}");
    }
    for len in [0, 63, 65, 72] {
        assert_eq!(
            good.encode(&vec![0; len]),
            Err(Error::Malformed("signature must be 64 bytes")),
            "signature of {len}"
        );
    }
}

#[test]
fn error_codes_are_stable() {
    let rows = [
        (Error::Malformed("x"), "manifest_malformed"),
        (Error::UnsupportedAlgorithm(9), "unsupported_algorithm"),
        (Error::InvalidProduct, "invalid_product"),
        (Error::InvalidVersion, "invalid_version"),
        (
            Error::DigestLength {
                expected: 32,
                got: 31,
            },
            "digest_length_invalid",
        ),
        (Error::KeyInvalid, "public_key_invalid"),
        (Error::KeyIdMismatch, "key_id_mismatch"),
        (Error::AlgorithmMismatch, "algorithm_mismatch"),
        (Error::SignatureInvalid, "manifest_signature_invalid"),
        (Error::DigestMismatch, "image_digest_mismatch"),
        (
            Error::SecurityVersionTooLow {
                manifest: 1,
                minimum: 2,
            },
            "security_version_too_low",
        ),
    ];
    for (e, code) in rows {
        assert_eq!(e.code(), code);
        assert!(!e.to_string().is_empty());
    }
    assert_eq!(
        Error::DigestLength {
            expected: 32,
            got: 31
        }
        .to_string(),
        "image digest is 31 bytes; the digest algorithm gives 32"
    );
    assert_eq!(
        Error::SecurityVersionTooLow {
            manifest: 6,
            minimum: 7
        }
        .to_string(),
        "security version 6 is below the minimum 7 (rollback refused)"
    );
}
