//! Device certificates issued by the built `kmsctl` on a real SoftHSM2
//! token, judged by openssl.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use softhsm_tests::{bin, run};

struct Appliance {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    port: u16,
}

fn appliance() -> Appliance {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("appliance");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = run(Command::new(bin("kmsctl"))
        .arg("quickstart")
        .arg(&dir)
        .args(["--pub", &format!("127.0.0.1:{port}")]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Appliance {
        _tmp: tmp,
        dir,
        port,
    }
}

impl Appliance {
    fn kmsctl(&self, args: &[&str]) -> Output {
        softhsm_tests::kmsctl(&self.dir, args)
    }

    fn issue(&self, csr: &Path, serial: &str, uuid: &str) -> Output {
        softhsm_tests::kmsctl_issue(&self.dir, csr, serial, uuid, &["--json"])
    }
}

/// A key and CSR made by openssl; `key_alg` is `ec` (P-256) or `ed25519`.
fn openssl_csr(dir: &Path, name: &str, key_alg: &str, cn: &str) -> PathBuf {
    softhsm_tests::openssl_csr(
        dir,
        name,
        if key_alg == "ec" {
            "prime256v1"
        } else {
            "ed25519"
        },
        cn,
    )
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn every_profile_issues_what_openssl_verifies_and_shows_as_the_profile() {
    let a = appliance();
    let work = a.dir.join("work");
    std::fs::create_dir(&work).unwrap();
    let cases = [
        (
            "VBUS-CPU-2412-003847",
            "6f9619ff-8b86-4011-b42d-00c04fc964ff",
            "ec",
            "id-ecPublicKey",
        ),
        (
            "VBUS-PWR-2501-000001",
            "0192f3a4-5b6c-7d8e-9f01-23456789abcd",
            "ec",
            "id-ecPublicKey",
        ),
        (
            "VBUS-PERIPH-2602-000042",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "ed25519",
            "ED25519",
        ),
        (
            "VBUS-COMM-2611-999999",
            "c232ab00-9414-11ec-b3c8-9f6bdeced846",
            "ec",
            "id-ecPublicKey",
        ),
    ];
    for (serial, uuid, key_alg, key_text) in cases {
        let csr = openssl_csr(&work, serial, key_alg, serial);
        let issued = json(&a.issue(&csr, serial, uuid));
        assert_eq!(issued["newly_issued"], true);
        let pem = work.join(format!("{serial}.pem"));
        std::fs::write(&pem, issued["certificate"].as_str().unwrap()).unwrap();
        assert_eq!(
            issued["chain"].as_str().unwrap(),
            std::fs::read_to_string(a.dir.join("ca/chain.pem")).unwrap()
        );

        let verify = run(Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(a.dir.join("ca/root.pem"))
            .arg("-untrusted")
            .arg(a.dir.join("ca/intermediate.pem"))
            .args(["-purpose", "sslclient"])
            .arg(&pem));
        assert_eq!(
            String::from_utf8_lossy(&verify.stdout).trim(),
            format!("{}: OK", pem.display()),
            "{serial}: {}",
            String::from_utf8_lossy(&verify.stderr)
        );

        let text = run(Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&pem));
        let text = String::from_utf8_lossy(&text.stdout).into_owned();
        let serial_hex = issued["serial_number"].as_str().unwrap();
        // 16 random bytes as lowercase hex (shorter only if they began with zero bytes).
        assert!(
            serial_hex.len().is_multiple_of(2)
                && serial_hex.len() <= 32
                && serial_hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{serial_hex}"
        );
        for want in [
            format!("Subject: serialNumber = {serial}, CN = {serial}"),
            "Issuer: O = vBus, CN = vBus Manufacturing Intermediate CA".to_owned(),
            format!("Public Key Algorithm: {key_text}"),
            "Signature Algorithm: ecdsa-with-SHA256".to_owned(),
            "X509v3 Basic Constraints: critical\n                CA:FALSE".to_owned(),
            "X509v3 Key Usage: critical\n                Digital Signature\n".to_owned(),
            "X509v3 Extended Key Usage: \n                TLS Web Client Authentication\n"
                .to_owned(),
            format!("URI:urn:uuid:{uuid}, othername: 1.3.6.1.5.5.7.8.4::"),
            format!(
                "Full Name:\n                  URI:http://127.0.0.1:{}/crl/intermediate.crl",
                a.port
            ),
            format!("OCSP - URI:http://127.0.0.1:{}/ocsp", a.port),
            "X509v3 Subject Key Identifier:".to_owned(),
            "X509v3 Authority Key Identifier:".to_owned(),
        ] {
            assert!(text.contains(&want), "{serial}: no {want:?} in\n{text}");
        }
        // The "X509v3 extensions:" header and seven X509v3 extensions (+ AIA).
        assert_eq!(
            text.matches("X509v3 ").count(),
            8,
            "{serial}: extension count\n{text}"
        );
        assert_eq!(text.matches("Authority Information Access").count(), 1);
    }
}

#[test]
fn repeats_refusals_and_reissue_through_the_cli() {
    let a = appliance();
    let work = a.dir.join("work");
    std::fs::create_dir(&work).unwrap();
    let serial = "VBUS-CPU-2412-000777";
    let uuid = "6f9619ff-8b86-4011-b42d-00c04fc96400";
    let first_csr = openssl_csr(&work, "first", "ec", serial);
    let first = json(&a.issue(&first_csr, serial, uuid));

    // The same request again: the same certificate.
    let again = json(&a.issue(&first_csr, serial, uuid));
    assert_eq!(again["newly_issued"], false);
    assert_eq!(again["certificate"], first["certificate"]);

    // Refusals: exit 1, the stable code first on stderr.
    let second_csr = openssl_csr(&work, "second", "ec", serial);
    let other_cn = openssl_csr(&work, "other", "ec", "VBUS-CPU-2412-000778");
    let p192 = softhsm_tests::openssl_csr(&work, "p192", "prime192v1", serial);
    let rows = [
        (
            "another key",
            &second_csr,
            serial,
            uuid,
            "device_already_certified",
        ),
        (
            "CSR for another device",
            &other_cn,
            "VBUS-CPU-2412-000779",
            "6f9619ff-8b86-4011-b42d-00c04fc96401",
            "csr_subject_mismatch",
        ),
        (
            "P-192 key",
            &p192,
            "VBUS-CPU-2412-000780",
            "6f9619ff-8b86-4011-b42d-00c04fc96402",
            "key_type_not_allowed",
        ),
        (
            "bad serial",
            &second_csr,
            "VBUS-CPU-2413-000777",
            uuid,
            "invalid_module_serial",
        ),
        (
            "bad uuid",
            &second_csr,
            serial,
            "not-a-uuid",
            "invalid_hw_uuid",
        ),
        (
            "uuid of another device",
            &second_csr,
            "VBUS-CPU-2412-000781",
            uuid,
            "csr_subject_mismatch",
        ),
    ];
    for (case, csr, s, u, code) in rows {
        let out = a.issue(csr, s, u);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{case}: {stderr}");
        assert!(
            stderr.starts_with(&format!("error[{code}]: ")),
            "{case}: {stderr}"
        );
    }
    // Nothing the refusals did changed the device: the first certificate stands.
    assert_eq!(
        json(&a.issue(&first_csr, serial, uuid))["serial_number"],
        first["serial_number"]
    );

    // An officer allows one re-issue; the new key is certified once.
    let allow = a.kmsctl(&["device", "allow-reissue", serial]);
    assert!(
        allow.status.success(),
        "{}",
        String::from_utf8_lossy(&allow.stderr)
    );
    let second = json(&a.issue(&second_csr, serial, uuid));
    assert_eq!(second["newly_issued"], true);
    assert_ne!(second["serial_number"], first["serial_number"]);
    let third_csr = openssl_csr(&work, "third", "ec", serial);
    assert!(
        String::from_utf8_lossy(&a.issue(&third_csr, serial, uuid).stderr)
            .starts_with("error[device_already_certified]")
    );

    // The store is lost: rebuilt from the audit log, the same answers come back.
    let rebuilt = a.kmsctl(&["store", "rebuild"]);
    assert!(
        rebuilt.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&rebuilt.stdout).trim(),
        "store rebuilt from the audit log: 2 certificate(s), 1 re-issue permission(s), \
         2 client credential record(s), 0 provisioning record(s)"
    );
    let again = json(&a.issue(&second_csr, serial, uuid));
    assert_eq!(
        (
            again["newly_issued"].clone(),
            again["serial_number"].clone()
        ),
        (false.into(), second["serial_number"].clone())
    );
    assert!(
        String::from_utf8_lossy(&a.issue(&first_csr, serial, uuid).stderr)
            .starts_with("error[device_already_certified]")
    );
    assert!(
        String::from_utf8_lossy(&a.issue(&third_csr, serial, uuid).stderr)
            .starts_with("error[device_already_certified]")
    );

    // The ceremony does not run twice.
    let init = a.kmsctl(&["init"]);
    assert_eq!(init.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&init.stderr).starts_with("error[already_initialized]: "),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
}
