//! The JSON form: round trip to the same binary bytes, strict conversion,
//! and a changed field that fails to convert or to verify.

#![cfg(feature = "std")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests

mod common;

use common::Signer;
use firmware::{
    decode, verify, verify_image, DigestAlgorithm, Error, ManifestJson, SignedManifest,
};

fn json_of(bytes: &[u8]) -> ManifestJson {
    ManifestJson::from(&decode(bytes).unwrap())
}

fn back(j: &ManifestJson) -> Result<Vec<u8>, Error> {
    SignedManifest::try_from(j)?.encode()
}

#[test]
fn round_trip_json_to_the_same_bytes() {
    for signer in Signer::both() {
        for alg in [DigestAlgorithm::Sha256, DigestAlgorithm::Sha512] {
            let m = signer.manifest(alg);
            let bytes = signer.signed(&m);
            let j = json_of(&bytes);
            let text = serde_json::to_string_pretty(&j).unwrap();
            let parsed: ManifestJson = serde_json::from_str(&text).unwrap();
            assert_eq!(parsed, j);
            let again = back(&parsed).unwrap();
            assert_eq!(again, bytes);
            assert_eq!(
                ManifestJson::from(&SignedManifest::try_from(&parsed).unwrap()),
                j
            );
            assert!(verify_image(&again, &m.digest, &signer.public(), 7).is_ok());
        }
    }
}

#[test]
fn json_field_names_and_values() {
    let signer = Signer::ed25519(common::ED25519_SEED);
    let bytes = signer.signed(&signer.manifest(DigestAlgorithm::Sha256));
    let v = serde_json::to_value(json_of(&bytes)).unwrap();
    assert_eq!(v["product"], "vbus-cpu");
    assert_eq!(v["version"], "1.4.2");
    assert_eq!(v["security_version"], 7);
    assert_eq!(v["digest_algorithm"], "sha256");
    assert_eq!(
        v["digest"],
        "9530996c6a46295eb181804cffe9a0da0f4c38ae32f511a5130fa1e435bdd7d4"
    );
    assert_eq!(
        v["key_id"],
        "56475aa75463474c0285df5dbf2bcab73da651358839e9b77481b2eab107708c"
    );
    assert_eq!(v["signature_algorithm"], "ed25519");
    assert_eq!(v["signing_time"], 1_795_716_321u64);
    assert_eq!(v["signature"].as_str().unwrap().len(), 128);
    assert_eq!(v.as_object().unwrap().len(), 9);
}

/// One row per changed field: it either fails to convert (with this error)
/// or converts and then fails to verify (with this error).
#[test]
fn changed_field_fails_to_convert_or_to_verify() {
    let signer = Signer::p256(common::P256_SCALAR);
    let m = signer.manifest(DigestAlgorithm::Sha256);
    let bytes = signer.signed(&m);
    let good = json_of(&bytes);
    type Edit = fn(&mut ManifestJson);
    #[rustfmt::skip]
    let rows: Vec<(&str, Edit, Error)> = vec![
        ("product", |j| j.product = "vbus-pwr".into(), Error::SignatureInvalid),
        ("version", |j| j.version = "1.4.3".into(), Error::SignatureInvalid),
        ("security version", |j| j.security_version = 8, Error::SignatureInvalid),
        ("signing time", |j| j.signing_time += 1, Error::SignatureInvalid),
        ("digest", |j| j.digest.replace_range(0..2, "00"), Error::SignatureInvalid),
        ("signature", |j| j.signature.replace_range(10..12, "00"), Error::SignatureInvalid),
        ("key id", |j| j.key_id.replace_range(0..2, "00"), Error::KeyIdMismatch),
        ("signature algorithm", |j| j.signature_algorithm = "ed25519".into(), Error::AlgorithmMismatch),
        ("digest algorithm", |j| j.digest_algorithm = "sha512".into(), Error::DigestLength { expected: 64, got: 32 }),
        ("unknown signature algorithm", |j| j.signature_algorithm = "rsa".into(), Error::Malformed("signature_algorithm is not \"ed25519\" or \"ecdsa-p256-sha256\"")),
        ("unknown digest algorithm", |j| j.digest_algorithm = "SHA256".into(), Error::Malformed("digest_algorithm is not \"sha256\" or \"sha512\"")),
        ("uppercase digest", |j| j.digest = j.digest.to_uppercase(), Error::Malformed("digest is not lowercase hex")),
        ("odd digest hex", |j| j.digest.push('0'), Error::Malformed("digest is not lowercase hex")),
        ("short digest", |j| j.digest.truncate(62), Error::DigestLength { expected: 32, got: 31 }),
        ("key id of 31", |j| j.key_id.truncate(62), Error::Malformed("key_id is not 32 bytes")),
        ("signature of 63", |j| j.signature.truncate(126), Error::Malformed("signature is not 64 bytes")),
        ("signature not hex", |j| j.signature.replace_range(0..1, "g"), Error::Malformed("signature is not lowercase hex")),
        ("product with a space", |j| j.product = "vbus cpu".into(), Error::InvalidProduct),
        ("version with a newline", |j| j.version = "1.4.2\n".into(), Error::InvalidVersion),
    ];
    for (name, edit, want) in rows {
        let mut j = good.clone();
        edit(&mut j);
        let got = back(&j).and_then(|b| verify_image(&b, &m.digest, &signer.public(), 0));
        assert_eq!(got, Err(want), "row {name:?}");
    }
}

#[test]
fn unknown_or_missing_json_fields_do_not_parse() {
    let signer = Signer::ed25519(common::ED25519_SEED);
    let bytes = signer.signed(&signer.manifest(DigestAlgorithm::Sha256));
    let mut v = serde_json::to_value(json_of(&bytes)).unwrap();
    v["extra"] = serde_json::json!(1);
    assert!(serde_json::from_value::<ManifestJson>(v.clone()).is_err());
    v.as_object_mut().unwrap().remove("extra");
    v.as_object_mut().unwrap().remove("signature");
    assert!(serde_json::from_value::<ManifestJson>(v).is_err());
    assert!(verify(&bytes, &signer.public()).is_ok());
}
