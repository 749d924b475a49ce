//! The built `kmsctl` and `kmsd` binaries on a real SoftHSM2 token.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use softhsm_tests::{bin, curl, free_port, quickstart, run, wait_for, Service, MODULE};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn quickstart_creates_a_working_appliance_and_a_second_run_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("appliance");
    let port = free_port();
    let first = quickstart(&dir, port);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stdout = String::from_utf8(first.stdout).unwrap();
    assert!(
        stdout.contains(&format!("kmsd --config {}/kmsd.toml", dir.display())),
        "{stdout}"
    );
    for (file, want) in [
        ("pin", 0o600),
        ("so-pin", 0o600),
        ("softhsm2.conf", 0o600),
        ("tokens", 0o700),
    ] {
        assert_eq!(mode(&dir.join(file)), want, "{file}");
    }
    let pin = std::fs::read_to_string(dir.join("pin")).unwrap();
    assert_eq!(pin.len(), 32, "128-bit random PIN in hex");
    let config = std::fs::read_to_string(dir.join("kmsd.toml")).unwrap();
    assert!(!config.contains(&pin), "the PIN is never in the config");
    assert!(!stdout.contains(&pin), "the PIN is never printed");

    // An outside tool sees the token quickstart made, logged in with its PIN.
    let listing = run(Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"))
        .args([
            "--module",
            MODULE,
            "--token-label",
            "vbus-kms",
            "--login",
            "--pin",
            &pin,
            "--list-objects",
        ]));
    assert!(
        listing.status.success(),
        "{}",
        String::from_utf8_lossy(&listing.stderr)
    );

    // Run again: same files, same token, nothing new.
    let second = quickstart(&dir, port);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(String::from_utf8_lossy(&second.stdout).contains("already set up; nothing changed"));
    assert_eq!(std::fs::read_to_string(dir.join("pin")).unwrap(), pin);
    assert_eq!(
        std::fs::read_to_string(dir.join("kmsd.toml")).unwrap(),
        config
    );

    let status = run(Command::new(bin("kmsctl"))
        .arg("--config")
        .arg(dir.join("kmsd.toml"))
        .args(["status", "--json"]));
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let mut keys: Vec<String> = status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            // Every key sensitive and never extractable; the escrow KEK is
            // the one secret key among the private ones.
            let class = if k["label"] == "escrow-kek-1" {
                "secret-key"
            } else {
                "private"
            };
            assert_eq!(
                (
                    k["class"].as_str(),
                    k["sensitive"].as_bool(),
                    k["extractable"].as_bool()
                ),
                (Some(class), Some(true), Some(false))
            );
            k["label"].as_str().unwrap().to_owned()
        })
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "audit-key",
            "escrow-kek-1",
            "internal-ca",
            "mfg-intermediate",
            "root-ca",
            "tls-server"
        ]
    );

    // The hierarchy and the two credentials, judged by openssl.
    for (file, want) in [
        ("officer/key.pem", 0o600),
        ("stations/station-01/key.pem", 0o600),
        ("officer", 0o700),
        ("ca/root.pem", 0o644),
    ] {
        assert_eq!(mode(&dir.join(file)), want, "{file}");
    }
    for args in [
        &["-CAfile", "ca/root.pem", "ca/root.pem"][..],
        &["-CAfile", "ca/root.pem", "ca/intermediate.pem"],
        &[
            "-CAfile",
            "officer/ca.pem",
            "-purpose",
            "sslclient",
            "officer/cert.pem",
        ],
        &[
            "-CAfile",
            "stations/station-01/ca.pem",
            "-purpose",
            "sslclient",
            "stations/station-01/cert.pem",
        ],
    ] {
        let out = run(Command::new("openssl")
            .arg("verify")
            .args(args)
            .current_dir(&dir));
        assert!(
            out.status.success(),
            "openssl verify {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let inter = run(Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(dir.join("ca/intermediate.pem")));
    let inter = String::from_utf8_lossy(&inter.stdout);
    assert!(
        inter.contains("CA:TRUE, pathlen:0") && inter.contains("Certificate Sign, CRL Sign"),
        "{inter}"
    );
}

#[test]
fn kmsd_reports_health_and_stops_cleanly_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("appliance");
    let port = free_port();
    assert!(quickstart(&dir, port).status.success());
    let mut service = Service(
        Command::new(bin("kmsd"))
            .arg("--config")
            .arg(dir.join("kmsd.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}/healthz");
    assert_eq!(
        wait_for(&url),
        (
            200,
            r#"{"status":"ok","token":{"keys":6,"label":"vbus-kms"}}"#.to_owned()
        )
    );
    assert_eq!(
        curl(&format!("http://127.0.0.1:{port}/no-such-path")).0,
        404
    );

    // kmsd holds the audit log: officer verbs go through it (admin socket),
    // and a verb that needs the files to itself is refused, not interleaved.
    let out = run(Command::new(bin("kmsctl"))
        .arg("--config")
        .arg(dir.join("kmsd.toml"))
        .args(["audit", "checkpoint"]));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("vbus-kms/audit\n"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(Command::new(bin("kmsctl"))
        .arg("--config")
        .arg(dir.join("kmsd.toml"))
        .args(["store", "rebuild"]));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error[audit_unavailable]: ") && err.contains("in use by another process"),
        "{err}"
    );

    let pid = service.0.id().to_string();
    assert!(run(Command::new("kill").args(["-TERM", &pid]))
        .status
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = service.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "kmsd did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    let mut stderr = String::new();
    std::io::Read::read_to_string(service.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("SIGTERM: shutting down") && stderr.contains("stopped"),
        "{stderr}"
    );
    let pin = std::fs::read_to_string(dir.join("pin")).unwrap();
    assert!(!stderr.contains(&pin), "the PIN reached the log");

    // Start and stop are on record, and the stop sealed the log with a checkpoint.
    let kmsctl = |args: &[&str]| {
        let out = run(Command::new(bin("kmsctl"))
            .arg("--config")
            .arg(dir.join("kmsd.toml"))
            .args(args));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let service: Vec<String> = kmsctl(&["audit", "show", "--actor", "kmsd"])
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["op"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    // The TLS server credential was made at init; the start reuses it and
    // signs a fresh CRL for each of the three CAs before serving.
    assert_eq!(
        service,
        [
            "service.start",
            "policy.load",
            "crl.publish",
            "crl.publish",
            "crl.publish",
            "service.stop"
        ]
    );
    let verified = kmsctl(&["--json", "audit", "verify"]);
    let v: serde_json::Value = serde_json::from_str(&verified).unwrap();
    assert_eq!(v["records"], v["checkpointed"], "{verified}");
}

#[test]
fn kmsd_refuses_a_bad_setup_with_a_message_that_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("appliance");
    let port = free_port();
    assert!(quickstart(&dir, port).status.success());
    let good = std::fs::read_to_string(dir.join("kmsd.toml")).unwrap();
    let pin = std::fs::read_to_string(dir.join("pin")).unwrap();
    let tokens_before = std::fs::read_dir(dir.join("tokens")).unwrap().count();

    // (case, how the config is changed, what is done to the directory, words in stderr)
    type Prepare = fn(&Path);
    let rows: &[(&str, &str, &str, Prepare, &str)] = &[
        (
            "unknown config key",
            "pool_size = 4",
            "pool_size = 4\npin = \"x\"",
            |_| {},
            "unknown field `pin`",
        ),
        (
            "token label not present",
            "label = \"vbus-kms\"",
            "label = \"other\"",
            |_| {},
            "no token labelled \"other\"",
        ),
        (
            "module that is not PKCS#11",
            MODULE,
            "/etc/hostname",
            |_| {},
            "cannot load PKCS#11 module /etc/hostname",
        ),
        (
            "PIN file readable by others",
            "",
            "",
            |d| {
                std::fs::set_permissions(d.join("pin"), std::fs::Permissions::from_mode(0o644))
                    .unwrap()
            },
            "chmod 600",
        ),
        (
            "wrong PIN",
            "",
            "",
            |d| std::fs::write(d.join("pin"), "0000").unwrap(),
            "refused the user PIN (CKR_PIN_INCORRECT)",
        ),
    ];
    for (case, from, to, prepare, words) in rows {
        let config = dir.join("case.toml");
        std::fs::write(&config, good.replacen(from, to, 1)).unwrap();
        prepare(&dir);
        let out = run(Command::new(bin("kmsd")).arg("--config").arg(&config));
        // Put the PIN file back for the next row.
        std::fs::write(dir.join("pin"), &pin).unwrap();
        std::fs::set_permissions(dir.join("pin"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{case}: {stderr}");
        assert!(stderr.contains(words), "{case}: {stderr}");
        assert!(!stderr.contains(&pin), "{case}: PIN in {stderr}");
        assert!(!stderr.contains("panicked"), "{case}: {stderr}");
    }
    assert_eq!(
        std::fs::read_dir(dir.join("tokens")).unwrap().count(),
        tokens_before
    );
    // And the good config still starts a healthy service.
    let _service = Service(
        Command::new(bin("kmsd"))
            .arg("--config")
            .arg(dir.join("kmsd.toml"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert_eq!(wait_for(&format!("http://127.0.0.1:{port}/healthz")).0, 200);
}
