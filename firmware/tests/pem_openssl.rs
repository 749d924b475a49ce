//! Public keys made by OpenSSL parse; our PEM round-trips; and OpenSSL, a
//! tool nobody here wrote, verifies our manifests' signatures (and we
//! verify OpenSSL's).

#![cfg(feature = "std")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::Signer;
use firmware::{verify, DigestAlgorithm, Error, PublicKey, SignatureAlgorithm};

fn openssl_output(dir: &Path, args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs")
}

/// Runs openssl in `dir`, panicking with its stderr on failure.
fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = openssl_output(dir, args);
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An OpenSSL key pair in `dir`: key.pem (private), pub.pem (SPKI).
fn openssl_key(dir: &Path, alg: SignatureAlgorithm) {
    match alg {
        SignatureAlgorithm::Ed25519 => {
            openssl(
                dir,
                &["genpkey", "-algorithm", "ED25519", "-out", "key.pem"],
            );
        }
        SignatureAlgorithm::EcdsaP256Sha256 => {
            openssl(
                dir,
                &[
                    "ecparam",
                    "-name",
                    "prime256v1",
                    "-genkey",
                    "-noout",
                    "-out",
                    "key.pem",
                ],
            );
        }
    }
    openssl(
        dir,
        &["pkey", "-in", "key.pem", "-pubout", "-out", "pub.pem"],
    );
}

#[test]
fn openssl_public_keys_parse_and_round_trip() {
    for alg in [
        SignatureAlgorithm::Ed25519,
        SignatureAlgorithm::EcdsaP256Sha256,
    ] {
        let tmp = tempfile::tempdir().unwrap();
        openssl_key(tmp.path(), alg);
        let pem = std::fs::read_to_string(tmp.path().join("pub.pem")).unwrap();
        let key = PublicKey::from_pem(&pem).unwrap();
        assert_eq!(key.algorithm(), alg);
        assert_eq!(
            key.to_pem().unwrap(),
            pem,
            "{alg:?}: to_pem is what openssl wrote"
        );
        assert_eq!(PublicKey::from_pem(&key.to_pem().unwrap()).unwrap(), key);
        // DER too.
        openssl(
            tmp.path(),
            &[
                "pkey", "-pubin", "-in", "pub.pem", "-outform", "DER", "-out", "pub.der",
            ],
        );
        let der = std::fs::read(tmp.path().join("pub.der")).unwrap();
        assert_eq!(PublicKey::from_spki_der(&der).unwrap(), key);
        assert_eq!(key.to_spki_der().unwrap(), der);
    }
}

#[test]
fn pem_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:1024",
            "-out",
            "rsa.pem",
        ],
    );
    openssl(
        dir,
        &["pkey", "-in", "rsa.pem", "-pubout", "-out", "rsa.pub"],
    );
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "secp384r1",
            "-genkey",
            "-noout",
            "-out",
            "p384.pem",
        ],
    );
    openssl(
        dir,
        &["pkey", "-in", "p384.pem", "-pubout", "-out", "p384.pub"],
    );
    openssl(
        dir,
        &["genpkey", "-algorithm", "ED448", "-out", "ed448.pem"],
    );
    openssl(
        dir,
        &["pkey", "-in", "ed448.pem", "-pubout", "-out", "ed448.pub"],
    );
    openssl_key(dir, SignatureAlgorithm::EcdsaP256Sha256);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let rows = [
        ("RSA", read("rsa.pub")),
        ("P-384", read("p384.pub")),
        ("Ed448", read("ed448.pub")),
        ("a private key", read("key.pem")),
        ("not PEM", "hello".to_owned()),
        ("empty", String::new()),
        ("truncated", read("pub.pem")[..60].to_owned()),
    ];
    for (name, text) in rows {
        assert_eq!(PublicKey::from_pem(&text), Err(Error::KeyInvalid), "{name}");
    }
}

#[test]
fn compressed_p256_spki_is_stored_uncompressed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    openssl_key(dir, SignatureAlgorithm::EcdsaP256Sha256);
    openssl(
        dir,
        &[
            "ec",
            "-pubin",
            "-in",
            "pub.pem",
            "-conv_form",
            "compressed",
            "-out",
            "c.pem",
        ],
    );
    let c = PublicKey::from_pem(&std::fs::read_to_string(dir.join("c.pem")).unwrap()).unwrap();
    let u = PublicKey::from_pem(&std::fs::read_to_string(dir.join("pub.pem")).unwrap()).unwrap();
    assert_eq!(c, u);
    assert_eq!(c.raw().len(), 65);
}

/// OUTSIDE WITNESS: OpenSSL verifies our signatures over the signed bytes,
/// and refuses them over altered bytes.
#[test]
fn openssl_verifies_our_manifests() {
    for signer in Signer::both() {
        for alg in [DigestAlgorithm::Sha256, DigestAlgorithm::Sha512] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path();
            let m = signer.manifest(alg);
            let bytes = signer.signed(&m);
            let (tbs, sig) = bytes.split_at(bytes.len() - 64);
            assert_eq!(tbs, m.to_be_signed().unwrap());
            std::fs::write(dir.join("pub.pem"), signer.public().to_pem().unwrap()).unwrap();
            std::fs::write(dir.join("tbs.bin"), tbs).unwrap();
            let mut altered = tbs.to_vec();
            altered[10] ^= 1; // the security version
            std::fs::write(dir.join("altered.bin"), &altered).unwrap();
            let check = |file: &str| match signer.algorithm() {
                SignatureAlgorithm::Ed25519 => {
                    std::fs::write(dir.join("sig.bin"), sig).unwrap();
                    openssl_output(
                        dir,
                        &[
                            "pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin", "-in",
                            file, "-sigfile", "sig.bin",
                        ],
                    )
                }
                SignatureAlgorithm::EcdsaP256Sha256 => {
                    let der = p256::ecdsa::Signature::from_slice(sig).unwrap().to_der();
                    std::fs::write(dir.join("sig.der"), der.as_bytes()).unwrap();
                    openssl_output(
                        dir,
                        &[
                            "dgst",
                            "-sha256",
                            "-verify",
                            "pub.pem",
                            "-signature",
                            "sig.der",
                            file,
                        ],
                    )
                }
            };
            let ok = check("tbs.bin");
            assert!(
                ok.status.success(),
                "{:?} {alg:?}: openssl refused: {}{}",
                signer.algorithm(),
                String::from_utf8_lossy(&ok.stdout),
                String::from_utf8_lossy(&ok.stderr)
            );
            let out = String::from_utf8_lossy(&ok.stdout);
            assert!(out.contains("Verified"), "{out}");
            let bad = check("altered.bin");
            assert!(
                !bad.status.success(),
                "{:?}: openssl accepted altered bytes",
                signer.algorithm()
            );
        }
    }
}

/// And the other way: OpenSSL signs the signed bytes with its own key; we
/// verify the manifest with the key parsed from OpenSSL's PEM.
#[test]
fn we_verify_openssl_signatures() {
    for alg in [
        SignatureAlgorithm::Ed25519,
        SignatureAlgorithm::EcdsaP256Sha256,
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        openssl_key(dir, alg);
        let key =
            PublicKey::from_pem(&std::fs::read_to_string(dir.join("pub.pem")).unwrap()).unwrap();
        let m = firmware::Manifest {
            product: "vbus-comm".into(),
            version: "2.0.0-rc.1".into(),
            security_version: 3,
            digest_algorithm: DigestAlgorithm::Sha512,
            digest: DigestAlgorithm::Sha512.digest(b"image"),
            key_id: key.key_id(),
            signature_algorithm: alg,
            signing_time: 1_700_000_000,
        };
        let tbs = m.to_be_signed().unwrap();
        std::fs::write(dir.join("tbs.bin"), &tbs).unwrap();
        let sig: Vec<u8> = match alg {
            SignatureAlgorithm::Ed25519 => {
                openssl(
                    dir,
                    &[
                        "pkeyutl", "-sign", "-inkey", "key.pem", "-rawin", "-in", "tbs.bin",
                        "-out", "sig.bin",
                    ],
                );
                std::fs::read(dir.join("sig.bin")).unwrap()
            }
            SignatureAlgorithm::EcdsaP256Sha256 => {
                openssl(
                    dir,
                    &[
                        "dgst", "-sha256", "-sign", "key.pem", "-out", "sig.der", "tbs.bin",
                    ],
                );
                let der = std::fs::read(dir.join("sig.der")).unwrap();
                p256::ecdsa::Signature::from_der(&der)
                    .unwrap()
                    .to_bytes()
                    .to_vec()
            }
        };
        let bytes = m.encode(&sig).unwrap();
        let got = firmware::verify_image(&bytes, &m.digest, &key, 3).unwrap();
        assert_eq!(got.manifest, m, "{alg:?}");
        let other = Signer::both()
            .into_iter()
            .find(|s| s.algorithm() == alg)
            .unwrap();
        assert_eq!(verify(&bytes, &other.public()), Err(Error::KeyIdMismatch));
    }
}
