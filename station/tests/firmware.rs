//! `station verify-firmware`, the built binary run as an operator would,
//! over a table of good and tampered inputs: each row's exact exit status
//! and the error code on standard error.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::openssl;
use firmware::{DigestAlgorithm, Manifest, ManifestJson, PublicKey, SignatureAlgorithm};
use p256::ecdsa::signature::Signer as _;

const SIGNING_TIME: u64 = 1_795_716_321;
const SIGNED_AT: &str = "2026-11-26T18:05:21Z";

/// What a row of the table expects.
enum Want<'a> {
    /// Exit 0, and exactly this on standard output.
    Accepted(&'a str),
    /// Exit 1, and one line `error[<this code>]: …` on standard error.
    Refused(&'a str),
    /// Exit 1 from clap (a usage error).
    Usage,
}
use Want::{Accepted, Refused, Usage};

fn station(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_station"))
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn p256_key(scalar: u8) -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_bytes(&[scalar; 32].into()).unwrap()
}

fn p256_public(k: &p256::ecdsa::SigningKey) -> PublicKey {
    PublicKey::from_raw(
        SignatureAlgorithm::EcdsaP256Sha256,
        k.verifying_key().to_encoded_point(false).as_bytes(),
    )
    .unwrap()
}

fn manifest(key: &PublicKey, alg: DigestAlgorithm, image: &[u8]) -> Manifest {
    Manifest {
        product: "vbus-cpu".into(),
        version: "1.4.2".into(),
        security_version: 7,
        digest_algorithm: alg,
        digest: alg.digest(image),
        key_id: key.key_id(),
        signature_algorithm: key.algorithm(),
        signing_time: SIGNING_TIME,
    }
}

/// Every file of the table in `dir`.
fn fixtures(dir: &Path) -> String {
    let write = |name: &str, data: &[u8]| std::fs::write(dir.join(name), data).unwrap();
    // More than one 64 KiB read.
    let image: Vec<u8> = (0..150_000u32).map(|i| (i % 253) as u8).collect();
    write("image.bin", &image);
    let mut tampered = image.clone();
    tampered[100_000] ^= 1;
    write("tampered.bin", &tampered);

    // P-256 (the appliance's token does the same: ECDSA over SHA-256, r‖s).
    let sk = p256_key(0x11);
    let key = p256_public(&sk);
    write("pub.pem", key.to_pem().unwrap().as_bytes());
    write("pub.der", &key.to_spki_der().unwrap());
    write(
        "other.pem",
        p256_public(&p256_key(0x22)).to_pem().unwrap().as_bytes(),
    );
    write(
        "garbage.pem",
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    );
    let m = manifest(&key, DigestAlgorithm::Sha512, &image);
    let sig: p256::ecdsa::Signature = sk.sign(&m.to_be_signed().unwrap());
    let bytes = m.encode(&sig.to_bytes()).unwrap();
    write("m.bin", &bytes);
    let decoded = firmware::decode(&bytes).unwrap();
    let json = ManifestJson::from(&decoded);
    write(
        "m.json",
        serde_json::to_string_pretty(&json).unwrap().as_bytes(),
    );
    let mut changed = json.clone();
    changed.version = "1.4.3".into();
    write(
        "changed.json",
        serde_json::to_string_pretty(&changed).unwrap().as_bytes(),
    );
    write("notjson.json", b"{\"product\": ");
    let mut tampered = bytes.clone();
    tampered[11] ^= 1; // security version 7 -> 6
    write("tampered-manifest.bin", &tampered);
    write("truncated.bin", &bytes[..bytes.len() - 1]);

    // Ed25519, key and signature made by OpenSSL.
    openssl(dir, &["genpkey", "-algorithm", "ED25519", "-out", "ed.key"]);
    openssl(dir, &["pkey", "-in", "ed.key", "-pubout", "-out", "ed.pem"]);
    let ed = PublicKey::from_pem(&std::fs::read_to_string(dir.join("ed.pem")).unwrap()).unwrap();
    let m = manifest(&ed, DigestAlgorithm::Sha256, &image);
    write("ed.tbs", &m.to_be_signed().unwrap());
    openssl(
        dir,
        &[
            "pkeyutl", "-sign", "-inkey", "ed.key", "-rawin", "-in", "ed.tbs", "-out", "ed.sig",
        ],
    );
    let sig = std::fs::read(dir.join("ed.sig")).unwrap();
    write("ed.bin", &m.encode(&sig).unwrap());

    hex::encode(key.key_id())[..16].to_owned()
}

#[test]
fn verify_firmware_table() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let key_prefix = fixtures(dir);
    let ok_line =
        format!("OK vbus-cpu 1.4.2 security version 7 signed {SIGNED_AT} by key {key_prefix}\n");
    let ed_prefix = {
        let ed =
            PublicKey::from_pem(&std::fs::read_to_string(dir.join("ed.pem")).unwrap()).unwrap();
        hex::encode(ed.key_id())[..16].to_owned()
    };
    let ed_ok_line =
        format!("OK vbus-cpu 1.4.2 security version 7 signed {SIGNED_AT} by key {ed_prefix}\n");

    #[rustfmt::skip]
    let rows: Vec<(&str, &str, Want<'_>)> = vec![
        ("good", "m.bin image.bin pub.pem", Accepted(&ok_line)),
        ("good, DER key", "m.bin image.bin pub.der", Accepted(&ok_line)),
        ("good, JSON form", "m.json image.bin pub.pem", Accepted(&ok_line)),
        ("good, Ed25519 by openssl", "ed.bin image.bin ed.pem", Accepted(&ed_ok_line)),
        ("min == sv", "m.bin image.bin pub.pem --min-security-version 7", Accepted(&ok_line)),
        ("min == sv + 1", "m.bin image.bin pub.pem --min-security-version 8", Refused("security_version_too_low")),
        ("tampered image", "m.bin tampered.bin pub.pem", Refused("image_digest_mismatch")),
        ("other image", "m.bin ed.tbs pub.pem", Refused("image_digest_mismatch")),
        ("tampered manifest byte", "tampered-manifest.bin image.bin pub.pem", Refused("manifest_signature_invalid")),
        ("truncated manifest", "truncated.bin image.bin pub.pem", Refused("manifest_malformed")),
        ("changed JSON field", "changed.json image.bin pub.pem", Refused("manifest_signature_invalid")),
        ("broken JSON", "notjson.json image.bin pub.pem", Refused("manifest_malformed")),
        ("wrong pubkey", "m.bin image.bin other.pem", Refused("key_id_mismatch")),
        ("pubkey of the other algorithm", "m.bin image.bin ed.pem", Refused("algorithm_mismatch")),
        ("garbage pubkey", "m.bin image.bin garbage.pem", Refused("public_key_invalid")),
        ("not a key at all", "m.bin image.bin image.bin", Refused("public_key_invalid")),
        ("missing image", "m.bin nope.bin pub.pem", Refused("io_error")),
        ("missing manifest", "nope.bin image.bin pub.pem", Refused("io_error")),
        ("missing pubkey", "m.bin image.bin nope.pem", Refused("io_error")),
        ("negative minimum", "m.bin image.bin pub.pem --min-security-version -1", Usage),
    ];
    for (name, files, want) in rows {
        let words: Vec<&str> = files.split_whitespace().collect();
        let mut args = vec![
            "verify-firmware",
            "--manifest",
            words[0],
            "--image",
            words[1],
            "--pubkey",
            words[2],
        ];
        args.extend_from_slice(&words[3..]);
        let o = station(dir, &args);
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        match want {
            Accepted(line) => {
                assert_eq!(o.status.code(), Some(0), "row {name:?}: {err}");
                assert_eq!(out, line, "row {name:?}");
                assert_eq!(err, "", "row {name:?}");
            }
            Refused(code) => {
                assert_eq!(o.status.code(), Some(1), "row {name:?}: {out}{err}");
                assert_eq!(out, "", "row {name:?}");
                let prefix = format!("error[{code}]: ");
                assert!(err.starts_with(&prefix), "row {name:?}: {err}");
                assert_eq!(err.lines().count(), 1, "row {name:?}: {err}");
            }
            Usage => {
                assert_eq!(o.status.code(), Some(1), "row {name:?}: {out}{err}");
                assert!(err.starts_with("error: "), "row {name:?}: {err}");
            }
        }
    }
}

#[test]
fn verify_firmware_json_output_and_help() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let key_prefix = fixtures(dir);
    let o = station(
        dir,
        &[
            "--json",
            "verify-firmware",
            "--manifest",
            "m.json",
            "--image",
            "image.bin",
            "--pubkey",
            "pub.pem",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["product"], "vbus-cpu");
    assert_eq!(v["version"], "1.4.2");
    assert_eq!(v["security_version"], 7);
    assert_eq!(v["min_security_version"], 0);
    assert_eq!(v["signing_time"], SIGNING_TIME);
    assert_eq!(v["signed_at"], SIGNED_AT);
    assert!(v["key_id"].as_str().unwrap().starts_with(&key_prefix));
    assert_eq!(v["signature_algorithm"], "ecdsa-p256-sha256");
    assert_eq!(v["digest_algorithm"], "sha512");

    // The messages say what was refused and where.
    let o = station(
        dir,
        &[
            "verify-firmware",
            "--manifest",
            "m.bin",
            "--image",
            "tampered.bin",
            "--pubkey",
            "pub.pem",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "error[image_digest_mismatch]: image tampered.bin: image digest does not match the \
         manifest (image altered or wrong image)\n"
    );

    let o = station(dir, &["verify-firmware", "--help"]);
    assert_eq!(o.status.code(), Some(0));
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("Usage: station verify-firmware"), "{help}");
    assert!(help.contains("security_version_too_low"), "{help}");
}
