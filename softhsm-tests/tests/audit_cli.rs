//! `kmsctl audit …` on a real appliance: every operation recorded, the
//! export verifies offline, tampering and torn tails are caught by the CLI.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use softhsm_tests::{bin, kmsctl, ok, run};

/// `kmsctl cert issue` of `csr` for `serial` / `uuid` on the appliance in `dir`.
fn issue(dir: &Path, csr: &Path, serial: &str, uuid: &str) -> Output {
    softhsm_tests::kmsctl_issue(dir, csr, serial, uuid, &[])
}

fn csr(dir: &Path, cn: &str) -> PathBuf {
    softhsm_tests::openssl_csr(dir, cn, "prime256v1", cn)
}

#[test]
fn operations_are_recorded_and_the_export_verifies_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("appliance");
    assert!(run(Command::new(bin("kmsctl")).arg("quickstart").arg(&dir))
        .status
        .success());
    let c = csr(tmp.path(), "VBUS-CPU-2412-000001");
    let issue = |serial: &str, uuid: &str| issue(&dir, &c, serial, uuid);
    ok(issue(
        "VBUS-CPU-2412-000001",
        "6f9619ff-8b86-4011-b42d-00c04fc96401",
    ));
    ok(issue(
        "VBUS-CPU-2412-000001",
        "6f9619ff-8b86-4011-b42d-00c04fc96401",
    )); // a repeat
    assert_eq!(
        issue(
            "VBUS-CPU-2499-000001",
            "6f9619ff-8b86-4011-b42d-00c04fc96401"
        )
        .status
        .code(),
        Some(1)
    ); // refused

    // What happened, in order: ceremony, two credentials, issue, repeat, refusal.
    let shown = ok(kmsctl(&dir, &["audit", "show"]));
    let records: Vec<serde_json::Value> = shown
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ops: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            (
                r["op"].as_str().unwrap().to_owned(),
                r["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want = [
        ("appliance.init", "ok"),
        ("credential.issue", "ok"), // officer
        ("credential.issue", "ok"), // TLS server
        ("escrow.kek.create", "ok"),
        ("credential.issue", "ok"), // station
        ("certificate.issue", "ok"),
        ("certificate.issue", "ok"),
        ("certificate.issue", "invalid_module_serial"),
    ];
    assert_eq!(ops, want.map(|(a, b)| (a.to_owned(), b.to_owned())));
    assert!(records
        .iter()
        .all(|r| r["actor"].as_str().unwrap().starts_with("local:")));
    let pin = std::fs::read_to_string(dir.join("pin")).unwrap();
    assert!(!shown.contains(&pin), "the PIN reached the audit log");
    assert_eq!(
        ok(kmsctl(&dir, &["audit", "show", "--op", "credential.issue"]))
            .lines()
            .count(),
        3
    );

    // The whole log verifies, then its export verifies offline with only the key.
    assert!(ok(kmsctl(&dir, &["audit", "verify"])).starts_with("audit log OK: records 1..8"));
    let vkey = ok(kmsctl(&dir, &["audit", "pubkey"])).trim().to_owned();
    assert!(vkey.starts_with("vbus-kms/audit+"), "{vkey}");
    ok(kmsctl(&dir, &["audit", "checkpoint"]));
    let export = tmp.path().join("export.jsonl");
    ok(kmsctl(
        &dir,
        &["audit", "export", "--out", export.to_str().unwrap()],
    ));
    let offline = |file: &Path| {
        run(Command::new(bin("kmsctl"))
            .arg("--config")
            .arg(dir.join("kmsd.toml"))
            .args(["--json", "audit", "verify", "--vkey", &vkey, "--export"])
            .arg(file))
    };
    let v: serde_json::Value = serde_json::from_str(&ok(offline(&export))).unwrap();
    assert_eq!(
        (v["records"].as_u64(), v["checkpointed"].as_u64()),
        (Some(8), Some(8))
    );

    // A verifier written from the README alone, in another language, agrees.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/verify-audit-export.py");
    let python = |file: &Path| {
        run(Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(file)
            .arg(&vkey))
    };
    assert_eq!(ok(python(&export)).trim(), "OK 8 8");

    // One byte changed in record 6's body (the first issuance): caught, named.
    let text = std::fs::read_to_string(&export).unwrap();
    let tampered = tmp.path().join("tampered.jsonl");
    std::fs::write(
        &tampered,
        text.replacen("VBUS-CPU-2412-000001", "VBUS-CPU-2412-000002", 1),
    )
    .unwrap();
    let out = offline(&tampered);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error[audit_tampered]: audit record 6 does not verify"),
        "{err}"
    );
    let py = python(&tampered);
    assert_eq!(
        (
            py.status.code(),
            String::from_utf8_lossy(&py.stdout).trim().to_owned()
        ),
        (Some(1), "BAD 6 chain".to_owned())
    );
}

#[test]
fn a_torn_tail_stops_operations_until_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("appliance");
    assert!(run(Command::new(bin("kmsctl")).arg("quickstart").arg(&dir))
        .status
        .success());
    let seg = dir.join("audit").join(audit::SEGMENT_FILE);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend_from_slice(&[42, 0, 0, 0, b'{']);
    std::fs::write(&seg, &bytes).unwrap();

    let c = csr(tmp.path(), "VBUS-CPU-2412-000009");
    let issue = || {
        issue(
            &dir,
            &c,
            "VBUS-CPU-2412-000009",
            "6f9619ff-8b86-4011-b42d-00c04fc96409",
        )
    };
    let out = issue();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("error[audit_torn_tail]: "),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dry = ok(kmsctl(&dir, &["audit", "repair"]));
    assert!(
        dry.contains("incomplete tail of 5 bytes") && dry.contains("--yes"),
        "{dry}"
    );
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        bytes,
        "a dry run changes nothing"
    );
    ok(kmsctl(&dir, &["audit", "repair", "--yes"]));
    assert_eq!(std::fs::read(&seg).unwrap(), bytes[..bytes.len() - 5]);
    ok(issue());
    assert!(ok(kmsctl(&dir, &["audit", "verify"])).starts_with("audit log OK"));
}
