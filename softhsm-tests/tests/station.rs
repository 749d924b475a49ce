//! The `station` CLI against the real `kmsd`: a station that made its own
//! key (`station init`) enrolled by an officer (`kmsctl station add --csr`),
//! enrolment, records, lookups, a batch that resumes without issuing twice,
//! and station quotas that hold across a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use softhsm_tests::{bin, device_csr, issue_body, ok, run, Running};

fn station(a: &Running, credential: &Path, args: &[&str]) -> Output {
    run(Command::new(bin("station"))
        .arg("--url")
        .arg(a.url(""))
        .arg("--credential")
        .arg(credential)
        .args(args))
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn a_station_with_its_own_key_enrols_records_and_runs_a_resumable_batch() {
    let a = Running::start();
    let tmp = a.tmp.path().to_owned();

    // The station makes its key; the officer certifies its CSR.
    let cred = tmp.join("station-07");
    let out = ok(run(Command::new(bin("station"))
        .args(["init", "--id", "station-07", "--dir"])
        .arg(&cred)));
    assert!(out.contains("station.csr"), "{out}");
    let key_before = std::fs::read(cred.join("key.pem")).unwrap();
    let added = ok(a.kmsctl(&[
        "--json",
        "station",
        "add",
        "station-07",
        "--modules",
        "PERIPH,COMM",
        "--csr",
        cred.join("station.csr").to_str().unwrap(),
        "--out",
        cred.to_str().unwrap(),
    ]));
    assert_eq!(json(&added)["client"]["role"], "station");
    // The station's own key was used: kmsctl wrote no key.
    assert_eq!(std::fs::read(cred.join("key.pem")).unwrap(), key_before);

    // Enrol one device, verify the chain with openssl, record, look up.
    let serial = "VBUS-COMM-2412-000001";
    let uuid = "6f9619ff-8b86-4011-b42d-00c04fc96401";
    let (csr, _) = device_csr(&tmp, serial, uuid);
    let dev_out = tmp.join("dev1");
    let enrolled = ok(station(
        &a,
        &cred,
        &[
            "--json",
            "enroll",
            "--serial",
            serial,
            "--uuid",
            uuid,
            "--csr",
            csr.to_str().unwrap(),
            "--out",
            dev_out.to_str().unwrap(),
        ],
    ));
    assert_eq!(json(&enrolled)["newly_issued"], true, "{enrolled}");
    let verify = run(Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(a.dir.join("ca/root.pem"))
        .arg("-untrusted")
        .arg(dev_out.join("chain.pem"))
        .arg(dev_out.join("cert.pem")));
    assert!(String::from_utf8_lossy(&verify.stdout).contains(": OK"));
    let record = tmp.join("record.json");
    std::fs::write(
        &record,
        r#"{"firmware_version":"2.0.1","operator":"op-3","steps":[{"name":"rf","passed":false,"value":-71.5,"unit":"dBm"}]}"#,
    )
    .unwrap();
    ok(station(
        &a,
        &cred,
        &[
            "record",
            "--serial",
            serial,
            "--file",
            record.to_str().unwrap(),
        ],
    ));
    let device = json(&ok(station(&a, &cred, &["device", "--serial", serial])));
    assert_eq!(device["station"], "station-07");
    assert_eq!(device["records"][0]["record"]["steps"][0]["passed"], false);
    // Another station does not see it.
    let other = station(
        &a,
        &a.dir.join("stations/station-01"),
        &["device", "--serial", serial],
    );
    assert_eq!(other.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&other.stderr).starts_with("error[device_not_found]"));

    // A batch of 12, interrupted after 5 (the journal says so), resumed.
    let csv = tmp.join("batch.csv");
    let mut text = String::from("serial,hw_uuid,csr\n");
    for i in 0..12u32 {
        let s = format!("VBUS-PERIPH-2412-{:06}", 100 + i);
        let u = format!("6f9619ff-8b86-4011-b42d-{:012x}", 0x100 + i);
        let (c, _) = device_csr(&tmp, &s, &u);
        text.push_str(&format!(
            "{s},{u},{}\n",
            c.file_name().unwrap().to_str().unwrap()
        ));
    }
    std::fs::write(&csv, &text).unwrap();
    let out_dir = tmp.join("batch-out");
    let batch = |csv: &Path, extra: &[&str]| {
        let mut args = vec![
            "--json",
            "batch",
            csv.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
            "--no-progress",
        ];
        args.extend_from_slice(extra);
        json(&ok(station(&a, &cred, &args)))
    };
    // The first 5 alone, as if the run had been cut there.
    let first5 = tmp.join("first5.csv");
    std::fs::write(
        &first5,
        text.lines().take(6).collect::<Vec<_>>().join("\n") + "\n",
    )
    .unwrap();
    let s1 = batch(&first5, &[]);
    assert_eq!(
        (s1["done"].clone(), s1["failed"].clone()),
        (5.into(), 0.into()),
        "{s1}"
    );
    let s2 = batch(&csv, &["--concurrency", "4"]);
    assert_eq!(
        (s2["done"].clone(), s2["skipped"].clone()),
        (7.into(), 5.into()),
        "{s2}"
    );
    // The journal lost: every device asked again, nothing issued twice.
    std::fs::remove_file(out_dir.join("batch-journal.jsonl")).unwrap();
    let s3 = batch(&csv, &[]);
    assert_eq!(s3["done"], 12, "{s3}");
    assert_eq!(s3["newly_issued"], 0, "{s3}");
    let issued = ok(a.kmsctl(&[
        "audit",
        "show",
        "--op",
        "certificate.issue",
        "--actor",
        "station-07",
    ]));
    let new = issued
        .lines()
        .filter(|l| l.contains(r#""new":true"#))
        .count();
    assert_eq!(
        new, 13,
        "one enrolment and twelve batch devices, each issued once"
    );

    // A module type outside its rule: the appliance's code on stderr.
    let (pwr, _) = device_csr(&tmp, "VBUS-PWR-2412-000001", uuid);
    let refused = station(
        &a,
        &cred,
        &[
            "enroll",
            "--serial",
            "VBUS-PWR-2412-000001",
            "--uuid",
            "6f9619ff-8b86-4011-b42d-00c04fc96499",
            "--csr",
            pwr.to_str().unwrap(),
            "--out",
            tmp.join("pwr").to_str().unwrap(),
        ],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).starts_with("error[module_not_allowed]"));
    assert_eq!(std::fs::read(cred.join("key.pem")).unwrap(), key_before);
}

#[test]
fn station_quotas_stop_the_next_device_with_a_retry_time_and_hold_across_a_restart() {
    // The hourly window must not roll over mid-test: start well inside one.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if secs % 3600 > 3540 {
        std::thread::sleep(std::time::Duration::from_secs(3600 - secs % 3600 + 1));
    }
    let mut a = Running::start_with(|dir| {
        softhsm_tests::edit_file(
            &dir.join("policy.toml"),
            "modules = [\"CPU\", \"PWR\", \"PERIPH\", \"COMM\"]",
            "modules = [\"CPU\", \"PWR\", \"PERIPH\", \"COMM\"]\nper_hour = 3",
        );
    });
    let tmp = a.tmp.path().to_owned();
    let enrol = |a: &Running, i: u32| {
        let serial = format!("VBUS-CPU-2412-{i:06}");
        let uuid = format!("6f9619ff-8b86-4011-b42d-{i:012x}");
        let (csr, _) = device_csr(&tmp, &serial, &uuid);
        let body = issue_body(&csr, &uuid);
        a.curl(
            Some("stations/station-01"),
            &format!("/v1/devices/{serial}/certificate"),
            &["-D", "-", "--data-binary", &body],
        )
    };
    for i in 1..=3 {
        assert_eq!(enrol(&a, i).0, 201);
    }
    // A repeat of an issued device does not count and is still answered.
    let serial = "VBUS-CPU-2412-000001";
    let again = {
        let csr = tmp.join(format!("{serial}.csr"));
        a.curl(
            Some("stations/station-01"),
            &format!("/v1/devices/{serial}/certificate"),
            &[
                "--data-binary",
                &issue_body(&csr, "6f9619ff-8b86-4011-b42d-000000000001"),
            ],
        )
    };
    assert_eq!(again.0, 200, "{}", again.1);
    let check_quota = |a: &Running, i: u32| {
        let (status, text) = enrol(a, i);
        assert_eq!(status, 429, "{text}");
        let retry_after: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("retry-after: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!((1..=3600).contains(&retry_after), "{retry_after}");
        let body = json(text.lines().last().unwrap());
        assert_eq!(body["error"]["code"], "quota_exceeded");
        let at = body["error"]["retry_after"].as_str().unwrap();
        assert!(
            at.ends_with(":00:00Z"),
            "the start of the next UTC hour: {at}"
        );
    };
    check_quota(&a, 4);
    // The count comes back from the audit log at start.
    assert_eq!(a.stop().code(), Some(0));
    a.restart();
    check_quota(&a, 5);
}
