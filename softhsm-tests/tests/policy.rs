//! The policy on the real binaries: `kmsctl policy check/show/reload`, the
//! running `kmsd` keeping its policy when a reload is refused, every load
//! audited with the file's hash, and issuance decided by the policy before
//! the token signs (checked with `openssl x509`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::path::Path;
use std::process::{Command, Output};

use sha2::{Digest, Sha256};
use softhsm_tests::{
    bin, free_port, kmsctl, kmsctl_issue, ok, openssl_csr, quickstart, run, Service,
};

const POLICY: &str = r#"version = 1

[identities]
"officer-01" = ["officer", "firmware-signer", "auditor"]
"station-01" = ["station"]
"station-02" = ["station"]
"auditor-01" = ["auditor"]

[stations."station-01"]
modules = ["CPU"]
serials = ["VBUS-CPU-2412-003000..003999"]
per_hour = 2

[stations."station-02"]
modules = ["PWR", "PERIPH"]

[profiles.PERIPH]
key_types = ["ecdsa-p256"]
validity_days = 30
"#;

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn json(out: Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).unwrap()
}

/// (exit code, stderr) of a command that must fail.
fn refused(out: Output) -> (Option<i32>, String) {
    (out.status.code(), String::from_utf8(out.stderr).unwrap())
}

fn check(dir: &Path, station: &str, serial: &str, key_type: &str) -> serde_json::Value {
    json(kmsctl(
        dir,
        &[
            "--json",
            "policy",
            "check",
            "--station",
            station,
            "--serial",
            serial,
            "--key-type",
            key_type,
        ],
    ))
}

/// The `policy.load` records: (actor, result, sha256).
fn loads(dir: &Path) -> Vec<(String, String, String)> {
    ok(kmsctl(dir, &["audit", "show", "--op", "policy.load"]))
        .lines()
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            (
                text(&r["actor"]),
                text(&r["result"]),
                text(&r["details"]["sha256"]),
            )
        })
        .collect()
}

#[test]
fn policy_check_explains_each_rule_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("appliance");
    assert!(quickstart(&dir, free_port()).status.success());
    std::fs::write(dir.join("policy.toml"), POLICY).unwrap();

    // (station, serial, key type, expected code or None for allow)
    let rows: [(&str, &str, &str, Option<&str>); 11] = [
        ("station-01", "VBUS-CPU-2412-003000", "ecdsa-p256", None),
        ("station-01", "VBUS-CPU-2412-003999", "ecdsa-p256", None),
        (
            "station-01",
            "VBUS-CPU-2412-002999",
            "ecdsa-p256",
            Some("serial_not_allowed"),
        ),
        (
            "station-01",
            "VBUS-CPU-2412-004000",
            "ecdsa-p256",
            Some("serial_not_allowed"),
        ),
        (
            "station-01",
            "VBUS-PWR-2412-000001",
            "ecdsa-p256",
            Some("module_not_allowed"),
        ),
        (
            "station-01",
            "VBUS-CPU-2412-0030",
            "ecdsa-p256",
            Some("malformed_serial"),
        ),
        ("station-02", "VBUS-PWR-2412-000001", "ecdsa-p256", None),
        (
            "station-02",
            "VBUS-PERIPH-2412-000001",
            "ed25519",
            Some("key_type_not_allowed"),
        ),
        (
            "station-09",
            "VBUS-PWR-2412-000001",
            "ecdsa-p256",
            Some("unknown_identity"),
        ),
        (
            "auditor-01",
            "VBUS-PWR-2412-000001",
            "ecdsa-p256",
            Some("role_not_permitted"),
        ),
        (
            "officer-01",
            "VBUS-CPU-2412-003000",
            "ecdsa-p256",
            Some("role_not_permitted"),
        ),
    ];
    for (station, serial, key_type, want) in rows {
        let out = check(&dir, station, serial, key_type);
        assert_eq!(out["allowed"], want.is_none(), "{station} {serial}: {out}");
        assert_eq!(out["code"].as_str(), want, "{station} {serial}: {out}");
        assert_eq!(out["quotas_live"], false);
        assert_eq!(out["policy_sha256"], sha256_hex(POLICY));
    }

    // A denial still explains every rule, so the operator sees all at once.
    let out = check(&dir, "station-01", "VBUS-CPU-2412-004000", "ed25519");
    let verdicts: Vec<(String, bool)> = out["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["rule"].as_str().unwrap().to_owned(), s["ok"] == true))
        .collect();
    assert!(verdicts.contains(&("module".into(), true)), "{out}");
    assert!(verdicts.contains(&("serial".into(), false)), "{out}");
    let human = ok(kmsctl(
        &dir,
        &[
            "policy",
            "check",
            "--station",
            "station-01",
            "--serial",
            "VBUS-CPU-2412-004000",
        ],
    ));
    assert!(
        human.contains("decision: deny (serial_not_allowed)"),
        "{human}"
    );
    // Checking performs nothing: no audit record of it.
    assert!(!ok(kmsctl(&dir, &["audit", "show"])).contains("policy"));
}

#[test]
fn issuance_is_decided_by_the_policy_before_the_token_signs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("appliance");
    assert!(quickstart(&dir, free_port()).status.success());
    std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
    let serial = "VBUS-PERIPH-2412-000001";
    let uuid = "6f9619ff-8b86-4011-b42d-00c04fc96401";
    let out_pem = dir.join("device.pem");
    let issue = |csr: &Path| {
        kmsctl_issue(
            &dir,
            csr,
            serial,
            uuid,
            &["--out", out_pem.to_str().unwrap()],
        )
    };
    // The certificate profile accepts Ed25519 for PERIPH; the policy does not.
    let ed = openssl_csr(tmp.path(), "ed", "ed25519", serial);
    let (code, stderr) = refused(issue(&ed));
    assert_eq!(code, Some(1));
    assert!(
        stderr.starts_with("error[key_type_not_allowed]: "),
        "{stderr}"
    );
    assert!(!dir.join("device.pem").exists());
    let records = ok(kmsctl(
        &dir,
        &["audit", "show", "--op", "certificate.issue"],
    ));
    assert_eq!(records.lines().count(), 1, "{records}");
    assert!(
        records.contains(r#""result":"key_type_not_allowed""#),
        "{records}"
    );

    // Nothing was stored: the same device with another key is a first issuance,
    // valid for the policy's 30 days rather than the profile's 7300.
    let p256 = openssl_csr(tmp.path(), "p256", "prime256v1", serial);
    let out = issue(&p256);
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("issued certificate "),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = dir.join("device.pem");
    let checkend = |secs: u64| {
        run(Command::new("openssl")
            .args(["x509", "-noout", "-in"])
            .arg(&pem)
            .args(["-checkend", &secs.to_string()]))
        .status
        .success()
    };
    assert!(checkend(30 * 86_400 - 600), "expires before 30 days");
    assert!(!checkend(30 * 86_400 + 600), "valid past 30 days");
}

#[test]
fn reload_puts_a_valid_policy_in_force_and_refuses_a_bad_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("appliance");
    let port = free_port();
    assert!(quickstart(&dir, port).status.success());
    let dev_policy = std::fs::read_to_string(dir.join("policy.toml")).unwrap();
    let service = Service::start(&dir, port);
    let running_sha = |dir: &Path| {
        json(kmsctl(dir, &["--json", "policy", "show"]))["sha256"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(running_sha(&dir), sha256_hex(&dev_policy));
    assert_eq!(
        loads(&dir),
        [("kmsd".into(), "ok".into(), sha256_hex(&dev_policy))]
    );

    // A bad file: refused with its line, the running policy stays, the
    // attempt is audited.
    let bad = POLICY.replace("003000..003999", "003999..003000");
    std::fs::write(dir.join("policy.toml"), &bad).unwrap();
    let (code, stderr) = refused(kmsctl(&dir, &["policy", "reload"]));
    assert_eq!(code, Some(1));
    assert!(stderr.starts_with("error[policy_invalid]: "), "{stderr}");
    assert!(stderr.contains("line 11"), "{stderr}");
    assert_eq!(running_sha(&dir), sha256_hex(&dev_policy));
    // Through the admin socket: the name kmsctl gives, and the kernel's uid.
    let uid = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let actor = format!(
        "local:{}/uid={uid}",
        std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into())
    );
    assert_eq!(loads(&dir).last().unwrap().1, "policy_invalid");
    assert_eq!(loads(&dir).last().unwrap().0, actor);

    // A good one: in force, audited with its hash; the live check sees it.
    std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
    let out = ok(kmsctl(&dir, &["policy", "reload"]));
    assert!(out.contains(&sha256_hex(POLICY)), "{out}");
    assert_eq!(running_sha(&dir), sha256_hex(POLICY));
    assert_eq!(
        loads(&dir).last().unwrap(),
        &(actor, "ok".into(), sha256_hex(POLICY))
    );
    let live = check(&dir, "station-02", "VBUS-PWR-2412-000001", "ecdsa-p256");
    assert_eq!(
        (live["allowed"].clone(), live["quotas_live"].clone()),
        (true.into(), true.into())
    );
    let shown = ok(kmsctl(&dir, &["policy", "show"]));
    assert!(
        shown.contains("station-01") && shown.contains(&sha256_hex(POLICY)),
        "{shown}"
    );

    // SIGHUP reloads too.
    let third = POLICY.replace("per_hour = 2", "per_hour = 3");
    std::fs::write(dir.join("policy.toml"), &third).unwrap();
    assert!(
        run(Command::new("kill").args(["-HUP", &service.0.id().to_string()]))
            .status
            .success()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while running_sha(&dir) != sha256_hex(&third) {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        loads(&dir).last().unwrap(),
        &("signal:SIGHUP".into(), "ok".into(), sha256_hex(&third))
    );
    assert_eq!(service.stop().code(), Some(0));

    // kmsd does not start under a bad policy, and says where it is wrong.
    std::fs::write(dir.join("policy.toml"), &bad).unwrap();
    let out = run(Command::new(bin("kmsd"))
        .arg("--config")
        .arg(dir.join("kmsd.toml")));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 11"), "{stderr}");
    assert_eq!(loads(&dir).last().unwrap().1, "policy_invalid");
    // Offline, `reload` validates the same way.
    let (code, stderr) = refused(kmsctl(&dir, &["policy", "reload"]));
    assert_eq!(code, Some(1));
    assert!(
        stderr.starts_with("error[policy_invalid]: ") && stderr.contains("line 11"),
        "{stderr}"
    );
}
