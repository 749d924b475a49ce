//! `init_station` checked by openssl, and `Credential` loading rules.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use common::{make_pki, openssl, set_mode};
use station::{init_station, Credential};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_writes_a_0600_key_and_a_csr_openssl_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("st");
    let csr = init_station("station-07", &dir).unwrap();
    assert_eq!(csr, dir.join("station.csr"));
    assert_eq!(mode(&dir.join("key.pem")), 0o600);

    let csr_s = csr.to_str().unwrap();
    // -verify prints its verdict on stderr; success is the exit status.
    openssl(tmp.path(), &["req", "-verify", "-in", csr_s, "-noout"]);
    let subject = openssl(tmp.path(), &["req", "-noout", "-subject", "-in", csr_s]);
    assert_eq!(subject.trim(), "subject=CN = station-07, OU = station");
    let text = openssl(tmp.path(), &["req", "-noout", "-text", "-in", csr_s]);
    assert!(text.contains("ecdsa-with-SHA256"), "{text}");
    assert!(
        text.contains("prime256v1") || text.contains("P-256"),
        "{text}"
    );

    // The key is PKCS#8 and is the CSR's key.
    let key = std::fs::read_to_string(dir.join("key.pem")).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
    let from_key = openssl(
        tmp.path(),
        &[
            "pkey",
            "-in",
            dir.join("key.pem").to_str().unwrap(),
            "-pubout",
        ],
    );
    let from_csr = openssl(tmp.path(), &["req", "-in", csr_s, "-noout", "-pubkey"]);
    assert_eq!(from_key, from_csr);
}

#[test]
fn a_second_init_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    init_station("station-07", tmp.path()).unwrap();
    let key = std::fs::read(tmp.path().join("key.pem")).unwrap();
    let csr = std::fs::read(tmp.path().join("station.csr")).unwrap();

    let e = init_station("station-08", tmp.path()).unwrap_err();
    assert_eq!(e.code(), "file_exists");
    assert_eq!(std::fs::read(tmp.path().join("key.pem")).unwrap(), key);
    assert_eq!(std::fs::read(tmp.path().join("station.csr")).unwrap(), csr);

    // A CSR alone (key moved away) also blocks: it would be overwritten.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("station.csr"), b"keep me").unwrap();
    let e = init_station("station-09", other.path()).unwrap_err();
    assert_eq!(e.code(), "file_exists");
    assert!(!other.path().join("key.pem").exists());
    assert_eq!(
        std::fs::read(other.path().join("station.csr")).unwrap(),
        b"keep me"
    );
}

#[test]
fn bad_station_ids_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let long = "a".repeat(65);
    for id in ["", "station 1", "st/1", "st,OU=x", "é", long.as_str()] {
        let e = init_station(id, tmp.path()).unwrap_err();
        assert_eq!(e.code(), "invalid_station_id", "{id:?}");
    }
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    let max = "a".repeat(64);
    init_station(&max, &tmp.path().join("max")).unwrap();
}

#[test]
fn credential_from_dir_loads_a_0600_key() {
    let pki = make_pki("vBus internal CA (test)");
    let cred = Credential::from_dir(&pki.station_dir()).unwrap();
    assert!(cred.cert_pem().contains("BEGIN CERTIFICATE"));
    assert!(cred.ca_pem().contains("BEGIN CERTIFICATE"));
    assert!(cred.key_pem().contains("PRIVATE KEY"));
    assert_eq!(cred.fingerprint().unwrap().len(), 64);
}

#[test]
fn credential_refuses_a_key_others_can_read() {
    let pki = make_pki("vBus internal CA (test)");
    let key = pki.station_dir().join("key.pem");
    for m in [0o644, 0o640, 0o604, 0o660] {
        set_mode(&key, m);
        let e = Credential::from_dir(&pki.station_dir()).unwrap_err();
        assert_eq!(e.code(), "key_permissions_too_open", "{m:o}");
        let msg = e.to_string();
        assert!(msg.contains(&format!("{m:04o}")), "{msg}");
        assert!(msg.contains("chmod 600"), "{msg}");
        assert!(msg.contains(key.to_str().unwrap()), "{msg}");
    }
    set_mode(&key, 0o400);
    Credential::from_dir(&pki.station_dir()).unwrap();
}

#[test]
fn credential_debug_never_shows_the_key() {
    let pki = make_pki("vBus internal CA (test)");
    let cred = Credential::from_dir(&pki.station_dir()).unwrap();
    let key = std::fs::read_to_string(pki.station_dir().join("key.pem")).unwrap();
    let debug = format!("{cred:?} {cred:#?}");
    assert!(debug.contains("[redacted]"), "{debug}");
    assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    // No line of the base64 body either.
    for line in key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!debug.contains(line), "{debug}");
    }
}

#[test]
fn credential_files_must_hold_what_they_claim() {
    let pki = make_pki("vBus internal CA (test)");
    let dir = pki.station_dir();
    // ca.pem without a certificate.
    std::fs::write(dir.join("ca.pem"), "not a certificate\n").unwrap();
    let e = Credential::from_dir(&dir).unwrap_err();
    assert_eq!(e.code(), "credential_invalid");
    assert!(e.to_string().contains("ca.pem"), "{e}");
    // Missing cert.pem.
    std::fs::remove_file(dir.join("cert.pem")).unwrap();
    let e = Credential::from_dir(&dir).unwrap_err();
    assert_eq!(e.code(), "io_error");
    assert!(e.to_string().contains("cert.pem"), "{e}");
}
