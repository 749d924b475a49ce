//! Device secrets and escrow on the real binaries and a real token: PSKs and
//! AES keys handed out once, never stored or logged in the clear, recovered
//! only through an M-of-N quorum and sealed to an officer's key, and a KEK
//! rotation that survives a kill -9.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use softhsm_tests::{bin, device_csr, issue_body, ok, run, Running};

const STATION: &str = "stations/station-01";

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn records(a: &Running) -> usize {
    ok(a.kmsctl(&["audit", "show"])).lines().count()
}

fn last_record(a: &Running) -> String {
    ok(a.kmsctl(&["audit", "show"]))
        .lines()
        .last()
        .unwrap()
        .to_owned()
}

/// Certify a device through station-01.
fn provision(a: &Running, serial: &str, n: u32) {
    let uuid = format!("6f9619ff-8b86-4011-b42d-00c04fc9{n:04}");
    let (pem, _) = device_csr(a.tmp.path(), serial, &uuid);
    let (status, body) = a.curl(
        Some(STATION),
        &format!("/v1/devices/{serial}/certificate"),
        &["--data-binary", &issue_body(&pem, &uuid)],
    );
    assert_eq!(status, 201, "{body}");
}

/// Every byte of every file under `dir`.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(all_bytes(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.extend(b);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A recovery key pair made by OpenSSL: (private PEM, public PEM).
fn recovery_key(dir: &Path) -> (PathBuf, PathBuf) {
    let key = dir.join("recovery.key");
    let public = dir.join("recovery.pub");
    let o = run(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-out",
        ])
        .arg(&key));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&public));
    assert!(o.status.success(), "{}", stderr(&o));
    (key, public)
}

fn officers() -> Running {
    let a = Running::start();
    for id in ["officer-02", "officer-03", "officer-04"] {
        ok(a.kmsctl(&["officer", "add", id]));
    }
    a
}

#[test]
fn a_psk_goes_out_once_stays_wrapped_and_comes_back_only_through_the_quorum() {
    let mut a = officers();
    let tmp = a.tmp.path().to_owned();
    let serial = "VBUS-CPU-2412-000950";
    provision(&a, serial, 950);

    // The PSK: 32 bytes as 64 hex digits, not cacheable, once.
    let o = run(Command::new("curl")
        .args(["-s", "-D", "-", "-X", "POST", "--cacert"])
        .arg(a.dir.join(STATION).join("ca.pem"))
        .arg("--cert")
        .arg(a.dir.join(STATION).join("cert.pem"))
        .arg("--key")
        .arg(a.dir.join(STATION).join("key.pem"))
        .arg(a.url(&format!("/v1/devices/{serial}/psk"))));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
    assert!(
        text.to_lowercase().contains("cache-control: no-store"),
        "{text}"
    );
    let psk = json(text.rsplit("\r\n\r\n").next().unwrap())["psk"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(psk.len(), 64);
    assert!(psk
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    let (status, key_body) = a.curl(
        Some(STATION),
        &format!("/v1/devices/{serial}/keys/data"),
        &["-X", "POST"],
    );
    assert_eq!(status, 201, "{key_body}");
    let data_key = json(&key_body)["key"].as_str().unwrap().to_owned();
    assert_ne!(data_key, psk);

    // Refusals: each its status and code, one audit record, nothing issued.
    let rows: Vec<(&str, String, u16, &str)> = vec![
        (
            STATION,
            format!("/v1/devices/{serial}/psk"),
            409,
            "psk_already_issued",
        ),
        (
            STATION,
            format!("/v1/devices/{serial}/keys/data"),
            409,
            "secret_already_issued",
        ),
        (
            STATION,
            format!("/v1/devices/{serial}/keys/nope"),
            404,
            "secret_purpose_unknown",
        ),
        (
            STATION,
            format!("/v1/devices/{serial}/keys/Bad%20Name"),
            400,
            "purpose_invalid",
        ),
        (
            STATION,
            format!("/v1/devices/{serial}/keys/psk"),
            404,
            "secret_purpose_unknown",
        ),
        (
            STATION,
            "/v1/devices/VBUS-CPU-2412-000951/psk".into(),
            404,
            "device_not_found",
        ),
        (
            "officer",
            format!("/v1/devices/{serial}/psk"),
            403,
            "role_not_permitted",
        ),
    ];
    for (who, path, status, code) in rows {
        let before = records(&a);
        let (got, body) = a.curl(Some(who), &path, &["-X", "POST"]);
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(json(&body)["error"]["code"], code, "{path}: {body}");
        assert_eq!(records(&a) - before, 1, "{path}");
        assert!(
            last_record(&a).contains(&format!(r#""result":"{code}""#)),
            "{path}"
        );
    }

    // Neither the store nor the audit log holds the secrets, only fingerprints.
    a.stop();
    let stored = [
        all_bytes(&a.dir.join("data")),
        all_bytes(&a.dir.join("audit")),
    ]
    .concat();
    for secret in [&psk, &data_key] {
        assert!(!contains(&stored, secret.as_bytes()), "hex in the files");
        assert!(
            !contains(&stored, &hex::decode(secret).unwrap()),
            "bytes in the files"
        );
    }
    a.restart();

    // Recovery: officer-01 asks, sealed to its recovery key.
    let (rec_key, rec_pub) = recovery_key(&tmp);
    let req = json(&ok(a.kmsctl_as(
        "officer",
        &[
            "--json",
            "escrow",
            "request",
            serial,
            "--purpose",
            "psk",
            "--reason",
            "backend lost its copy",
            "--recipient",
            rec_pub.to_str().unwrap(),
        ],
    )));
    let (id, hash) = (
        req["id"].as_str().unwrap().to_owned(),
        req["hash"].as_str().unwrap().to_owned(),
    );
    assert_eq!(req["approvals"]["need"], 2);
    let approve = |who: &str, hash: &str, out: Option<&Path>| {
        let mut args = vec!["--json", "escrow", "approve", id.as_str(), "--hash", hash];
        if let Some(o) = out {
            args.extend(["--out", o.to_str().unwrap()]);
        }
        a.kmsctl_as(who, &args)
    };
    let wrong = "f".repeat(64);
    for (who, hash, code) in [
        ("officer", hash.as_str(), "self_approval"),
        (
            "officers/officer-02",
            wrong.as_str(),
            "approval_hash_mismatch",
        ),
        (STATION, hash.as_str(), "approver_not_eligible"),
    ] {
        let before = records(&a);
        let out = approve(who, hash, None);
        assert!(
            stderr(&out).starts_with(&format!("error[{code}]")),
            "{who}: {}",
            stderr(&out)
        );
        assert_eq!(records(&a) - before, 1, "{who}");
    }
    let local = a.kmsctl(&["escrow", "approve", &id, "--hash", &hash]);
    assert!(
        stderr(&local).starts_with("error[approver_not_eligible]"),
        "{}",
        stderr(&local)
    );
    // One of two: nothing recovered yet.
    let one = json(&ok(approve("officers/officer-02", &hash, None)));
    assert_eq!(one["state"], "pending");
    assert!(one["result"].is_null());
    let dup = approve("officers/officer-02", &hash, None);
    assert!(
        stderr(&dup).starts_with("error[duplicate_approval]"),
        "{}",
        stderr(&dup)
    );
    // A revoked officer cannot even connect.
    ok(a.kmsctl(&["officer", "revoke", "officer-03"]));
    let revoked = approve("officers/officer-03", &hash, None);
    assert!(
        stderr(&revoked).starts_with("error[transport_error]"),
        "{}",
        stderr(&revoked)
    );
    let still = json(&ok(a.kmsctl(&["--json", "escrow", "fetch", &id])));
    assert_eq!(still["approvals"]["have"], 1);
    // The second approval recovers: sealed to the recipient, opened here.
    let sealed = tmp.join("sealed.json");
    let done = json(&ok(approve("officers/officer-04", &hash, Some(&sealed))));
    assert_eq!(done["state"], "done");
    let opened = tmp.join("psk.txt");
    ok(run(Command::new(bin("kmsctl"))
        .args(["escrow", "decrypt", "--in"])
        .arg(&sealed)
        .arg("--key")
        .arg(&rec_key)
        .arg("--out")
        .arg(&opened)));
    assert_eq!(
        std::fs::read_to_string(&opened).unwrap(),
        format!("{psk}\n")
    );
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&opened).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Another key cannot open it.
    let other_dir = tmp.join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let (other_key, _) = recovery_key(&other_dir);
    let o = run(Command::new(bin("kmsctl"))
        .args(["escrow", "decrypt", "--in"])
        .arg(&sealed)
        .arg("--key")
        .arg(&other_key)
        .arg("--out")
        .arg(tmp.join("nope.txt")));
    assert!(
        stderr(&o).starts_with("error[recovery_decrypt_failed]"),
        "{}",
        stderr(&o)
    );

    // A rotation allowed by an officer: one new PSK, different.
    ok(a.kmsctl(&["escrow", "allow-rotation", serial, "--purpose", "psk"]));
    let (status, body) = a.curl(
        Some(STATION),
        &format!("/v1/devices/{serial}/psk"),
        &["-X", "POST"],
    );
    assert_eq!(status, 201, "{body}");
    assert_ne!(json(&body)["psk"].as_str().unwrap(), psk);
    let (status, _) = a.curl(
        Some(STATION),
        &format!("/v1/devices/{serial}/psk"),
        &["-X", "POST"],
    );
    assert_eq!(status, 409);
    a.stop();
    ok(a.kmsctl(&["audit", "verify"]));
}

#[test]
fn a_keypair_for_a_module_without_a_secure_element_is_certified_and_escrowed() {
    let a = Running::start();
    let tmp = a.tmp.path();
    let serial = "VBUS-PWR-2412-000960";
    let uuid = "6f9619ff-8b86-4011-b42d-00c04fc90960";
    // kmsd's own key count: it sees the session objects its sessions make.
    let keys_before = a.publication("/healthz");
    let (status, body) = a.curl(
        Some(STATION),
        &format!("/v1/devices/{serial}/keypair"),
        &["--data-binary", &format!(r#"{{"hw_uuid":"{uuid}"}}"#)],
    );
    assert_eq!(status, 201, "{body}");
    let v = json(&body);
    let key = tmp.join("device.key");
    let cert = tmp.join("device.pem");
    std::fs::write(&key, v["private_key"].as_str().unwrap()).unwrap();
    std::fs::write(&cert, v["certificate"].as_str().unwrap()).unwrap();
    let pub_of = |args: &[&str]| {
        String::from_utf8_lossy(&run(Command::new("openssl").args(args)).stdout).into_owned()
    };
    let from_key = pub_of(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
    let from_cert = pub_of(&["x509", "-in", cert.to_str().unwrap(), "-pubkey", "-noout"]);
    assert!(from_key.contains("BEGIN PUBLIC KEY"), "{from_key}");
    assert_eq!(
        from_key, from_cert,
        "the certificate is for the key handed out"
    );
    // A second key pair for the same device is refused.
    let (status, body) = a.curl(
        Some(STATION),
        &format!("/v1/devices/{serial}/keypair"),
        &["--data-binary", &format!(r#"{{"hw_uuid":"{uuid}"}}"#)],
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(json(&body)["error"]["code"], "secret_already_issued");
    // The device key left no key object behind, not even a session object.
    assert_eq!(a.publication("/healthz"), keys_before);
}

#[test]
fn a_kek_rotation_killed_midway_resumes_and_every_secret_still_opens() {
    let mut a = Running::start();
    let serials: Vec<String> = (0..30)
        .map(|i| format!("VBUS-COMM-2412-0009{i:02}"))
        .collect();
    let mut secrets = Vec::new();
    for (i, s) in serials.iter().enumerate() {
        provision(&a, s, 3000 + i as u32);
        for path in ["psk", "keys/data", "keys/kek"] {
            let (status, body) = a.curl(
                Some(STATION),
                &format!("/v1/devices/{s}/{path}"),
                &["-X", "POST"],
            );
            assert_eq!(status, 201, "{body}");
            let v = json(&body);
            secrets.push(v["psk"].as_str().or(v["key"].as_str()).unwrap().to_owned());
        }
    }
    a.stop();
    // kmsctl on the stopped appliance, 5 blobs per step, killed after two steps.
    let mut child = Command::new(bin("kmsctl"))
        .arg("--config")
        .arg(a.dir.join("kmsd.toml"))
        .args(["--json", "escrow", "rotate-kek", "--batch", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let first = json(&lines.next().unwrap().unwrap());
    assert_eq!(
        (first["from"].as_u64(), first["to"].as_u64()),
        (Some(1), Some(2))
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // The interrupted rotation left both KEKs; the next run finishes it.
    let out = ok(a.kmsctl(&["--json", "escrow", "rotate-kek", "--batch", "5"]));
    // It carried on with the same new KEK where the killed run stopped.
    let resumed = json(out.lines().next().unwrap());
    assert_eq!(
        (resumed["from"].as_u64(), resumed["to"].as_u64()),
        (Some(1), Some(2)),
        "{out}"
    );
    let again: u64 = out
        .lines()
        .map(|l| json(l)["rewrapped"].as_u64().unwrap())
        .sum();
    assert!(again <= 85, "the killed run's work was kept: {out}");
    let last = json(out.lines().last().unwrap());
    assert_eq!(last["done"], true, "{out}");
    assert_eq!(last["to"], 2);
    assert_eq!(last["blobs"], 90);
    let status = ok(a.kmsctl(&["status"]));
    assert!(
        status.contains("escrow-kek-2") && !status.contains("escrow-kek-1"),
        "{status}"
    );
    // Every secret still comes back, through a quorum, after the rotation.
    a.restart();
    for id in ["officer-02", "officer-03"] {
        ok(a.kmsctl(&["officer", "add", id]));
    }
    let tmp = a.tmp.path().to_owned();
    let (rec_key, rec_pub) = recovery_key(&tmp);
    for (s, purpose, secret) in [
        (&serials[0], "psk", &secrets[0]),
        (&serials[29], "kek", &secrets[89]),
    ] {
        let req = json(&ok(a.kmsctl_as(
            "officer",
            &[
                "--json",
                "escrow",
                "request",
                s,
                "--purpose",
                purpose,
                "--reason",
                "rotation check",
                "--recipient",
                rec_pub.to_str().unwrap(),
            ],
        )));
        let (id, hash) = (req["id"].as_str().unwrap(), req["hash"].as_str().unwrap());
        ok(a.kmsctl_as(
            "officers/officer-02",
            &["escrow", "approve", id, "--hash", hash],
        ));
        let sealed = tmp.join(format!("{id}.json"));
        ok(a.kmsctl_as(
            "officers/officer-03",
            &[
                "escrow",
                "approve",
                id,
                "--hash",
                hash,
                "--out",
                sealed.to_str().unwrap(),
            ],
        ));
        let opened = tmp.join(format!("{id}.txt"));
        ok(run(Command::new(bin("kmsctl"))
            .args(["escrow", "decrypt", "--in"])
            .arg(&sealed)
            .arg("--key")
            .arg(&rec_key)
            .arg("--out")
            .arg(&opened)));
        assert_eq!(
            std::fs::read_to_string(&opened).unwrap(),
            format!("{secret}\n")
        );
    }
}

#[test]
fn an_expired_recovery_request_takes_no_approval_and_recovers_nothing() {
    let a = Running::start_with(|dir| {
        softhsm_tests::edit_file(
            &dir.join("kmsd.toml"),
            "ttl_seconds = 86400",
            "ttl_seconds = 1",
        );
    });
    ok(a.kmsctl(&["officer", "add", "officer-02"]));
    let serial = "VBUS-CPU-2412-000970";
    provision(&a, serial, 970);
    let (status, _) = a.curl(
        Some(STATION),
        &format!("/v1/devices/{serial}/psk"),
        &["-X", "POST"],
    );
    assert_eq!(status, 201);
    let (_, rec_pub) = recovery_key(a.tmp.path());
    // The local operator cannot open a quorum request either.
    let args = [
        "escrow",
        "request",
        serial,
        "--purpose",
        "psk",
        "--reason",
        "r",
        "--recipient",
        rec_pub.to_str().unwrap(),
    ];
    let local = a.kmsctl(&args);
    assert!(
        stderr(&local).starts_with("error[named_requester_required]"),
        "{}",
        stderr(&local)
    );
    let req = json(&ok(
        a.kmsctl_as("officer", &[&["--json"][..], &args[..]].concat())
    ));
    // The same request through the REST paths of DESIGN.md: found under its
    // device, "not found" under another one.
    let id = req["id"].as_str().unwrap();
    let (status, body) = a.curl(
        Some("officer"),
        &format!("/v1/escrow/{serial}/recoveries/{id}"),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["hash"], req["hash"]);
    let other = "VBUS-CPU-2412-000971";
    let (status, body) = a.curl(
        Some("officer"),
        &format!("/v1/escrow/{other}/recoveries/{id}"),
        &[],
    );
    assert_eq!(
        (status, json(&body)["error"]["code"].clone()),
        (404, "approval_not_found".into())
    );
    let approval = format!(r#"{{"hash":{}}}"#, req["hash"]);
    let (status, body) = a.curl(
        Some("officers/officer-02"),
        &format!("/v1/escrow/{other}/recoveries/{id}/approvals"),
        &["--data-binary", &approval],
    );
    assert_eq!(
        (status, json(&body)["error"]["code"].clone()),
        (404, "approval_not_found".into())
    );
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let before = records(&a);
    let out = a.kmsctl_as(
        "officers/officer-02",
        &[
            "escrow",
            "approve",
            req["id"].as_str().unwrap(),
            "--hash",
            req["hash"].as_str().unwrap(),
        ],
    );
    assert!(
        stderr(&out).starts_with("error[approval_expired]"),
        "{}",
        stderr(&out)
    );
    assert_eq!(records(&a) - before, 1);
    let state = json(&ok(a.kmsctl(&[
        "--json",
        "escrow",
        "fetch",
        req["id"].as_str().unwrap(),
    ])));
    assert_eq!(state["state"], "pending");
    assert!(state["result"].is_null());
}

#[test]
fn concurrent_requests_for_one_psk_give_one_secret_and_one_record() {
    let mut a = Running::start();
    let serial = "VBUS-CPU-2412-000077";
    provision(&a, serial, 77);
    let path = format!("/v1/devices/{serial}/psk");
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| a.curl(Some(STATION), &path, &["-X", "POST"])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let given: Vec<_> = answers.iter().filter(|(s, _)| *s == 201).collect();
    assert_eq!(given.len(), 1, "{answers:?}");
    for (status, body) in answers.iter().filter(|(s, _)| *s != 201) {
        assert_eq!(*status, 409, "{body}");
        assert_eq!(json(body)["error"]["code"], "psk_already_issued", "{body}");
    }
    a.stop();
    // The log tells the same story: one secret issued, seven refusals.
    let log = ok(a.kmsctl(&["audit", "show"]));
    let results: Vec<String> = log
        .lines()
        .map(json)
        .filter(|r| r["op"] == "secret.issue" && r["subject"] == serial)
        .map(|r| r["result"].as_str().unwrap().to_owned())
        .collect();
    let issued = results.iter().filter(|r| *r == "ok").count();
    let refused = results
        .iter()
        .filter(|r| *r == "psk_already_issued")
        .count();
    assert_eq!((issued, refused), (1, 7), "{results:?}");
}
