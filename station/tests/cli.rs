//! The built `station` binary, run as an operator would, against the fake
//! appliance (HTTPS with a required client certificate).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{device_csr, make_pki, set_mode, start_appliance};

fn station(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_station"))
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn help_on_every_verb_and_usage_errors_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    for verb in [
        "init",
        "enroll",
        "device",
        "record",
        "health",
        "batch",
        "verify-firmware",
    ] {
        let o = station(tmp.path(), &[verb, "--help"]);
        assert_eq!(code(&o), 0, "{verb}: {}", stderr(&o));
        assert!(stdout(&o).contains("Usage: station"), "{verb}");
    }
    let o = station(tmp.path(), &["--help"]);
    assert!(stdout(&o).contains("Exit status"));
    let o = station(tmp.path(), &["enroll", "--serial", "X"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let o = station(tmp.path(), &["frobnicate"]);
    assert_eq!(code(&o), 1);
}

#[test]
fn init_then_init_again() {
    let tmp = tempfile::tempdir().unwrap();
    let o = station(tmp.path(), &["init", "--id", "station-07", "--dir", "st"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("st/station.csr"), "{out}");
    assert!(
        out.contains("kmsctl station add station-07 --csr st/station.csr"),
        "{out}"
    );

    let o = station(
        tmp.path(),
        &["--json", "init", "--id", "station-07", "--dir", "st"],
    );
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).starts_with("error[file_exists]: "),
        "{}",
        stderr(&o)
    );

    let o = station(
        tmp.path(),
        &["--json", "init", "--id", "station-08", "--dir", "st8"],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["csr"], "st8/station.csr");
}

#[test]
fn a_readable_key_is_refused_with_its_code() {
    let pki = make_pki("vBus internal CA (test)");
    set_mode(&pki.station_dir().join("key.pem"), 0o644);
    let o = station(
        pki.dir.path(),
        &[
            "--credential",
            "station",
            "device",
            "--serial",
            "VBUS-CPU-2412-000001",
        ],
    );
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(
        err.starts_with("error[key_permissions_too_open]: "),
        "{err}"
    );
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn the_default_credential_dir_is_dot_credential() {
    let pki = make_pki("vBus internal CA (test)");
    let app = start_appliance(&pki);
    std::fs::rename(pki.station_dir(), pki.path("credential")).unwrap();
    let o = station(pki.dir.path(), &["--url", &app.url(), "health"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains(": ok"));
}

#[test]
fn enroll_device_and_record() {
    let pki = make_pki("vBus internal CA (test)");
    let app = start_appliance(&pki);
    let d = pki.dir.path();
    std::fs::write(d.join("dev.csr"), device_csr("VBUS-COMM-2412-000010")).unwrap();
    let url = app.url();
    let base = ["--url", url.as_str(), "--credential", "station"];
    let run = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        station(d, &args)
    };

    let o = run(&[
        "enroll",
        "--serial",
        "VBUS-COMM-2412-000010",
        "--uuid",
        "4f1c2b3a-1d2e-4f60-8a7b-9c0d1e2f3a4b",
        "--csr",
        "dev.csr",
        "--out",
        "dev",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("certificate issued"), "{}", stdout(&o));
    assert!(stdout(&o).contains("2030-01-01T00:00:00Z"));
    // The outside witness: the written certificate chains to the CA.
    common::openssl(d, &["verify", "-CAfile", "dev/chain.pem", "dev/cert.pem"]);

    // Again, as JSON: the same certificate, not newly issued.
    let o = run(&[
        "--json",
        "enroll",
        "--serial",
        "VBUS-COMM-2412-000010",
        "--uuid",
        "4f1c2b3a-1d2e-4f60-8a7b-9c0d1e2f3a4b",
        "--csr",
        "dev.csr",
        "--out",
        "dev",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["newly_issued"], false);
    assert_eq!(
        v["certificate"].as_str().unwrap(),
        std::fs::read_to_string(d.join("dev/cert.pem")).unwrap()
    );

    let o = run(&["device", "--serial", "VBUS-COMM-2412-000010"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["serial"], "VBUS-COMM-2412-000010");

    // A record with an unknown field never reaches the appliance.
    std::fs::write(
        d.join("bad.json"),
        r#"{"firmware_version":"1","operator":"op","steps":[],"component_lots":[],"extra":1}"#,
    )
    .unwrap();
    let before = app.requests.lock().unwrap().len();
    let o = run(&[
        "record",
        "--serial",
        "VBUS-COMM-2412-000010",
        "--file",
        "bad.json",
    ]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).starts_with("error[record_invalid]: "),
        "{}",
        stderr(&o)
    );
    assert_eq!(app.requests.lock().unwrap().len(), before);

    std::fs::write(
        d.join("rec.json"),
        r#"{"firmware_version":"1.2.0","operator":"op","steps":[{"name":"vcc","passed":true,"value":3.3,"unit":"V"}],"component_lots":[{"component":"MCU","lot":"L1"}]}"#,
    )
    .unwrap();
    let o = run(&[
        "record",
        "--serial",
        "VBUS-COMM-2412-000010",
        "--file",
        "rec.json",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("1 steps"), "{}", stdout(&o));

    let o = run(&["device", "--serial", "VBUS-COMM-2412-000011"]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).starts_with("error[device_not_found]: "),
        "{}",
        stderr(&o)
    );
}

#[test]
fn batch_exit_codes_and_resume() {
    let pki = make_pki("vBus internal CA (test)");
    let app = start_appliance(&pki);
    let d = pki.dir.path();
    let csrs = d.join("csrs");
    std::fs::create_dir(&csrs).unwrap();
    let mut csv = String::from("# lot 7\nserial,hw_uuid,csr\n");
    for s in [
        "VBUS-CPU-2412-000101",
        "VBUS-CPU-2412-000102",
        "VBUS-PWR-2412-000103",
        "VBUS-CPU-2412-000429",
    ] {
        std::fs::write(csrs.join(format!("{s}.csr")), device_csr(s)).unwrap();
        csv.push_str(&format!("{s},uuid-{s},{s}.csr\n"));
    }
    csv.push_str("VBUS-CPU-2412-000104,only-two-fields\n");
    // The CSV sits beside the CSRs; the command runs elsewhere.
    std::fs::write(csrs.join("devices.csv"), &csv).unwrap();
    let url = app.url();
    let cred = d.join("station");
    let args = [
        "--url",
        url.as_str(),
        "--credential",
        cred.to_str().unwrap(),
        "--json",
        "batch",
        "csrs/devices.csv",
        "--out",
        "out",
        "--concurrency",
        "3",
    ];
    let o = station(d, &args);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["total"], 5);
    assert_eq!(v["done"], 3);
    assert_eq!(v["refused"]["quota_exceeded"], 1);
    assert_eq!(v["failed"], 1);
    for s in [
        "VBUS-CPU-2412-000101",
        "VBUS-CPU-2412-000102",
        "VBUS-PWR-2412-000103",
    ] {
        common::openssl(
            d,
            &[
                "verify",
                "-CAfile",
                &format!("out/{s}/chain.pem"),
                &format!("out/{s}/cert.pem"),
            ],
        );
    }
    let issued = app.issued.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(issued, 3);

    // Fix the CSV (drop the refused and malformed rows) and run again:
    // everything is in the journal, nothing is sent, exit 0.
    let fixed: String = csv
        .lines()
        .filter(|l| !l.contains("000429") && !l.contains("000104"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(csrs.join("devices.csv"), fixed).unwrap();
    let before = app.requests.lock().unwrap().len();
    let human: Vec<&str> = args.iter().copied().filter(|a| *a != "--json").collect();
    let o = station(d, &human);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("skipped   3"), "{out}");
    assert_eq!(app.requests.lock().unwrap().len(), before);

    // Lose the journal: the rerun asks again and gets the stored
    // certificates; nothing is issued twice.
    std::fs::remove_file(d.join("out/batch-journal.jsonl")).unwrap();
    let o = station(d, &human);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("done      3 (0 newly issued)"),
        "{}",
        stdout(&o)
    );
    assert_eq!(app.issued.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[test]
fn setup_errors_exit_1() {
    let pki = make_pki("vBus internal CA (test)");
    let d = pki.dir.path();
    std::fs::write(d.join("devices.csv"), "serial,hw_uuid,csr\n").unwrap();
    // Nothing listens there: a transport error for a single request ...
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("https://127.0.0.1:{port}");
    let o = station(d, &["--url", &url, "--credential", "station", "health"]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).starts_with("error[transport_error]: "),
        "{}",
        stderr(&o)
    );
    // ... and a CSV without a header is a usage error for the batch.
    std::fs::write(d.join("bad.csv"), "a,b,c\n").unwrap();
    let o = station(
        d,
        &[
            "--url",
            &url,
            "--credential",
            "station",
            "batch",
            "bad.csv",
            "--out",
            "o",
        ],
    );
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).starts_with("error[batch_file_invalid]: "),
        "{}",
        stderr(&o)
    );
    // --cert without --key/--ca.
    let o = station(d, &["--cert", "station/cert.pem", "health"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("go together"), "{}", stderr(&o));
    // A plain-HTTP URL.
    let o = station(
        d,
        &[
            "--url",
            "http://127.0.0.1:1",
            "--credential",
            "station",
            "health",
        ],
    );
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).starts_with("error[invalid_url]: "),
        "{}",
        stderr(&o)
    );
}

#[test]
fn cert_key_ca_files_work_instead_of_a_directory() {
    let pki = make_pki("vBus internal CA (test)");
    let app = start_appliance(&pki);
    let o = station(
        pki.dir.path(),
        &[
            "--url",
            &app.url(),
            "--cert",
            "station/cert.pem",
            "--key",
            "station/key.pem",
            "--ca",
            "ca.pem",
            "--json",
            "health",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], "ok");
}
