//! `kmsctl backup` and `kmsctl restore` on the real binaries and real
//! SoftHSM2 tokens: an online backup restored on a fresh machine, an older
//! backup caught by the checkpoint officers kept (and by the token's own),
//! and a table of bad archives and targets that change nothing.
//!
//! A "fresh machine" is a new directory with its own `kmsd.toml`, SoftHSM2
//! configuration and PIN file, and a copy of the token directory: the
//! appliance's keys cannot leave the token, so SoftHSM2's own files are how
//! they move (an HSM's backup or cloning in production).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use serde_json::Value;
use sha2::Digest as _;
use softhsm_tests::{
    device_csr, free_port, issue_body, kmsctl, ok, quickstart, run, Running, SoftHsm,
};

const STATION: &str = "stations/station-01";

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `cp -a FROM TO`.
fn copy(from: &Path, to: &Path) {
    let out = run(Command::new("cp").arg("-a").arg(from).arg(to));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh machine for the appliance in `src`: its own `kmsd.toml` (new
/// ports), SoftHSM2 configuration, PIN file and device profiles, the
/// client-side credential folders (for calling its API), and `tokens`
/// copied in as its token directory. No store, audit log, CA files or
/// policy: those come from the backup.
fn fresh_machine(src: &Path, tokens: &Path) -> Running {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("appliance");
    fs::create_dir(&dir).unwrap();
    let (api, publication) = (free_port(), free_port());
    let (s, d) = (src.display().to_string(), dir.display().to_string());
    let toml: String = fs::read_to_string(src.join("kmsd.toml"))
        .unwrap()
        .replace(&s, &d)
        .lines()
        .map(|l| {
            if l.starts_with("api_listen") {
                format!("api_listen = \"127.0.0.1:{api}\"\n")
            } else if l.starts_with("publication_listen") {
                format!("publication_listen = \"127.0.0.1:{publication}\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(dir.join("kmsd.toml"), toml).unwrap();
    let conf = fs::read_to_string(src.join("softhsm2.conf")).unwrap();
    fs::write(dir.join("softhsm2.conf"), conf.replace(&s, &d)).unwrap();
    for f in ["pin", "profiles.toml", "stations", "officer"] {
        copy(&src.join(f), &dir.join(f));
    }
    copy(tokens, &dir.join("tokens"));
    Running {
        tmp,
        dir,
        api,
        publication,
        service: None,
    }
}

/// Every path under `dir` with the SHA-256 of its content (directories:
/// empty): to show a refused restore changed nothing. The token directory
/// is left out: SoftHSM2 rewrites its `token.object` at every login. So is
/// an audit directory holding nothing but an empty `lock`: a restore takes
/// the log's writer lock first (kmsd creates the same at its start).
fn listing(dir: &Path) -> BTreeMap<PathBuf, String> {
    let lock = dir.join("audit/lock");
    let only_lock = fs::read_dir(dir.join("audit")).is_ok_and(|d| d.count() == 1)
        && fs::metadata(&lock).is_ok_and(|m| m.len() == 0);
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p == dir.join("tokens") || (only_lock && (p == lock || p == dir.join("audit"))) {
                continue;
            }
            if p.is_dir() {
                todo.push(p.clone());
                out.insert(p, String::new());
            } else {
                out.insert(
                    p.clone(),
                    hex::encode(sha2::Sha256::digest(fs::read(&p).unwrap())),
                );
            }
        }
    }
    out
}

/// `dir` holds what `before` lists, byte for byte; the paths that differ
/// otherwise.
fn unchanged(dir: &Path, before: &BTreeMap<PathBuf, String>) {
    let after = listing(dir);
    let changed: Vec<_> = before
        .keys()
        .chain(after.keys())
        .filter(|p| before.get(*p) != after.get(*p))
        .collect();
    assert!(changed.is_empty(), "a refused restore changed {changed:?}");
}

/// A device CSR for `serial` in `dir`: (PEM path, hardware UUID).
fn csr(dir: &Path, serial: &str, n: u32) -> (PathBuf, String) {
    let uuid = format!("6f9619ff-8b86-4011-b42d-00c04fc9{n:04}");
    (device_csr(dir, serial, &uuid).0, uuid)
}

/// `kmsctl cert issue … --json` on `app`: the issued view.
fn issue(app: &Running, pem: &Path, serial: &str, uuid: &str) -> Value {
    json(&ok(app.kmsctl(&[
        "cert",
        "issue",
        "--csr",
        pem.to_str().unwrap(),
        "--serial",
        serial,
        "--uuid",
        uuid,
        "--json",
    ])))
}

/// Exit status 1 and `error[code]` first on stderr; the stderr.
fn refused(out: Output, code: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with(&format!("error[{code}]")), "{err}");
    err
}

/// Records of `op` in the appliance's audit log.
fn records(app: &Running, op: &str) -> Vec<Value> {
    ok(app.kmsctl(&["audit", "show", "--op", op]))
        .lines()
        .map(json)
        .collect()
}

#[test]
fn an_online_backup_restores_on_a_fresh_machine_and_issuance_goes_on() {
    let mut a = Running::start();
    let tmp = a.tmp.path().to_owned();

    // Three devices through kmsctl, one revoked; one through the station
    // with a PSK (escrowed, wrapped under the token's KEK).
    let devices: Vec<(String, PathBuf, String)> = (1..=3)
        .map(|n| {
            let serial = format!("VBUS-CPU-2412-00010{n}");
            let (pem, uuid) = csr(&tmp, &serial, n);
            (serial, pem, uuid)
        })
        .collect();
    let mut serials: Vec<String> = devices
        .iter()
        .map(|(s, pem, uuid)| {
            issue(&a, pem, s, uuid)["serial_number"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let revoked = serials[1].clone();
    ok(a.kmsctl(&["cert", "revoke", &revoked, "--reason", "keyCompromise"]));
    let psk_device = "VBUS-CPU-2412-000200";
    let (pem, uuid) = csr(&tmp, psk_device, 200);
    let (status, body) = a.curl(
        Some(STATION),
        &format!("/v1/devices/{psk_device}/certificate"),
        &["--data-binary", &issue_body(&pem, &uuid)],
    );
    assert_eq!(status, 201, "{body}");
    serials.push(json(&body)["serial_number"].as_str().unwrap().to_owned());
    let (status, body) = a.curl(
        Some(STATION),
        &format!("/v1/devices/{psk_device}/psk"),
        &["-X", "POST"],
    );
    assert_eq!(status, 201, "{body}");
    let psk = json(&body)["psk"].as_str().unwrap().to_owned();

    // The backup, while kmsd runs.
    let archive = tmp.join("kms.backup");
    let summary = json(&ok(a.kmsctl(&[
        "backup",
        "--out",
        archive.to_str().unwrap(),
        "--json",
    ])));
    assert_eq!(summary["online"], true, "{summary}");
    let backed_up = summary["records"].as_u64().unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        fs::metadata(&archive).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Never the PSK: not in the file, not in any decoded store value.
    let text = fs::read_to_string(&archive).unwrap();
    let raw_psk = hex::decode(&psk).unwrap();
    assert!(!text.contains(&psk) && !text.contains(&psk.to_uppercase()));
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut escrowed = 0;
    for line in text.lines().filter(|l| l.starts_with("{\"t\":\"store\"")) {
        let v = json(line);
        let value = b64.decode(v["value"].as_str().unwrap()).unwrap();
        assert!(!value.windows(32).any(|w| w == raw_psk.as_slice()));
        assert!(!String::from_utf8_lossy(&value).contains(&psk));
        escrowed += usize::from(v["tree"] == "escrow");
    }
    assert_eq!(escrowed, 1, "the wrapped PSK is in the backup");
    // The HSM's own backup of the token, taken with it.
    let hsm = tmp.join("hsm-backup");
    fs::create_dir(&hsm).unwrap();
    copy(&a.dir.join("tokens"), &hsm.join("tokens"));

    // Work after the backup, then the machine is lost.
    let (pem4, uuid4) = csr(&tmp, "VBUS-CPU-2412-000104", 4);
    let lost = issue(&a, &pem4, "VBUS-CPU-2412-000104", &uuid4)["serial_number"]
        .as_str()
        .unwrap()
        .to_owned();
    serials.push(lost.clone());
    assert!(a.stop().success());
    // The archive's log ends with its own backup.create record.
    let created = records(&a, "backup.create");
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["seq"], backed_up);
    assert_eq!(created[0]["details"]["online"], true);
    assert_eq!(
        created[0]["details"]["state_sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );

    // The fresh machine: restore, start, verify.
    let mut f = fresh_machine(&a.dir, &hsm.join("tokens"));
    let out = f.kmsctl(&["restore", "--in", archive.to_str().unwrap()]);
    let said = ok(out.clone());
    assert!(
        said.contains(&format!("the restore is record {}", backed_up + 1)),
        "{said}"
    );
    assert!(said.contains("the backup holds them all"), "{said}");
    let warned = String::from_utf8_lossy(&out.stderr);
    assert!(warned.contains("no --checkpoint given"), "{warned}");
    // The log verifies as restored, and kmsd starts on it.
    let verified = ok(f.kmsctl(&["audit", "verify"]));
    assert!(verified.starts_with("audit log OK"), "{verified}");
    f.restart();
    refused(
        f.kmsctl(&["restore", "--in", archive.to_str().unwrap()]),
        "audit_unavailable",
    );
    let restored = records(&f, "backup.restore");
    assert_eq!(restored.len(), 1);
    assert_eq!(restored[0]["seq"], backed_up + 1);
    assert_eq!(restored[0]["details"]["archive_sha256"], summary["sha256"]);

    // What was backed up is there: a repeat gets the same certificate.
    let (s1, pem1, uuid1) = &devices[0];
    let again = issue(&f, pem1, s1, uuid1);
    assert_eq!(again["serial_number"].as_str().unwrap(), serials[0]);
    assert_eq!(again["newly_issued"], false);
    // The escrowed PSK too: the device cannot get a second one.
    let (status, body) = f.curl(
        Some(STATION),
        &format!("/v1/devices/{psk_device}/psk"),
        &["-X", "POST"],
    );
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("psk_already_issued"), "{body}");
    // The revoked certificate is still revoked, with its first revocation.
    let status = json(&ok(f.kmsctl(&[
        "cert",
        "revoke",
        &revoked,
        "--reason",
        "superseded",
        "--json",
    ])));
    assert_eq!(status["already_revoked"], true, "{status}");
    assert_eq!(status["reason"], "keyCompromise", "{status}");

    // Issuance goes on with serials unique across both machines: a new
    // device, and the device whose certificate the restore lost.
    let (pem5, uuid5) = csr(&tmp, "VBUS-CPU-2412-000105", 5);
    for (pem, serial, uuid) in [
        (&pem5, "VBUS-CPU-2412-000105", &uuid5),
        (&pem4, "VBUS-CPU-2412-000104", &uuid4),
    ] {
        let v = issue(&f, pem, serial, uuid);
        assert_eq!(v["newly_issued"], true, "{v}");
        let s = v["serial_number"].as_str().unwrap().to_owned();
        assert!(!serials.contains(&s), "serial {s} issued twice");
        serials.push(s);
    }
    assert!(f.stop().success());
    let verified = ok(f.kmsctl(&["audit", "verify"]));
    assert!(verified.starts_with("audit log OK"), "{verified}");
}

#[test]
fn an_older_backup_is_refused_against_the_checkpoint_officers_hold_unless_accepted() {
    let mut a = Running::start();
    let tmp = a.tmp.path().to_owned();
    let (pem, uuid) = csr(&tmp, "VBUS-PWR-2412-000001", 1);
    issue(&a, &pem, "VBUS-PWR-2412-000001", &uuid);
    let backup_a = tmp.join("a.backup");
    let summary = json(&ok(a.kmsctl(&[
        "backup",
        "--out",
        backup_a.to_str().unwrap(),
        "--json",
    ])));
    let n = summary["records"].as_u64().unwrap();
    let hsm = tmp.join("hsm-a");
    fs::create_dir(&hsm).unwrap();
    copy(&a.dir.join("tokens"), &hsm.join("tokens"));
    // More work, and the officers keep the latest checkpoint.
    let (pem, uuid) = csr(&tmp, "VBUS-PWR-2412-000002", 2);
    issue(&a, &pem, "VBUS-PWR-2412-000002", &uuid);
    let note = ok(a.kmsctl(&["audit", "checkpoint"]));
    let m: u64 = note.lines().nth(1).unwrap().parse().unwrap();
    assert!(m > n, "checkpoint {m}, backup {n}");
    let latest = tmp.join("latest.note");
    fs::write(&latest, &note).unwrap();
    assert!(a.stop().success());

    // Restoring A, with the token as it was at A's time: only the officers'
    // checkpoint knows better.
    let mut f = fresh_machine(&a.dir, &hsm.join("tokens"));
    let before = listing(&f.dir);
    let args = [
        "restore",
        "--in",
        backup_a.to_str().unwrap(),
        "--checkpoint",
        latest.to_str().unwrap(),
    ];
    let err = refused(f.kmsctl(&args), "backup_rolled_back");
    assert!(
        err.contains(&format!("records {}..{m} would be lost", n + 1)),
        "{err}"
    );
    assert!(err.contains("latest.note"), "{err}");
    unchanged(&f.dir, &before);

    // Accepted: restored, and the acceptance is the first record after it.
    let mut accepting = args.to_vec();
    accepting.push("--accept-rollback");
    let said = ok(f.kmsctl(&accepting));
    assert!(said.contains("rollback accepted"), "{said}");
    let restored = records(&f, "backup.restore");
    assert_eq!(restored.len(), 1);
    assert_eq!(restored[0]["seq"], n + 1);
    let accepted = &restored[0]["details"]["accepted_rollback"][0];
    assert_eq!(accepted["code"], "backup_rolled_back", "{accepted}");
    assert_eq!(accepted["checkpoint_size"], m);
    // The restored appliance starts (its token's checkpoint now follows the
    // restored log) and its log verifies; against the officers' checkpoint
    // it shows the records it gave up.
    f.restart();
    assert!(f.stop().success());
    let verified = ok(f.kmsctl(&["audit", "verify"]));
    assert!(verified.starts_with("audit log OK"), "{verified}");
    refused(
        f.kmsctl(&["audit", "verify", "--checkpoint", latest.to_str().unwrap()]),
        "audit_tampered",
    );

    // The same backup onto a machine with the token as it is now: the
    // token's own checkpoint catches it, without any note.
    let g = fresh_machine(&a.dir, &a.dir.join("tokens"));
    let before = listing(&g.dir);
    let err = refused(
        g.kmsctl(&["restore", "--in", backup_a.to_str().unwrap()]),
        "backup_rolled_back",
    );
    assert!(err.contains("the token's own checkpoint"), "{err}");
    unchanged(&g.dir, &before);
}

#[test]
fn bad_archives_and_targets_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("appliance");
    let out = quickstart(&src, free_port());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Offline: kmsd is not running.
    let good = tmp.path().join("good.backup");
    let summary = json(&ok(kmsctl(
        &src,
        &["backup", "--out", good.to_str().unwrap(), "--json"],
    )));
    assert_eq!(summary["online"], false);
    refused(
        kmsctl(&src, &["backup", "--out", good.to_str().unwrap()]),
        "invalid_input",
    );

    let bytes = fs::read(&good).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x01;
    // A version-2 archive with a correct hash (what a newer kmsctl writes).
    let mut lines: Vec<&str> = text.lines().collect();
    let end = lines.pop().unwrap();
    let header = lines[0].replace("\"version\":1", "\"version\":2");
    lines[0] = &header;
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let old_sha = json(end)["sha256"].as_str().unwrap().to_owned();
    let new_sha = hex::encode(sha2::Sha256::digest(body.as_bytes()));
    let version2 = format!("{body}{}\n", end.replace(&old_sha, &new_sha));
    let write = |name: &str, content: &[u8]| {
        let p = tmp.path().join(name);
        fs::write(&p, content).unwrap();
        p
    };
    let cases = [
        (
            write("flipped.backup", &flipped),
            "backup_corrupt",
            "SHA-256",
        ),
        (
            write("truncated.backup", &bytes[..bytes.len() / 2]),
            "backup_corrupt",
            "truncated",
        ),
        (
            write("v2.backup", version2.as_bytes()),
            "backup_version_unsupported",
            "version 2",
        ),
        (
            write("garbage.backup", b"PK\x03\x04 not ours\n"),
            "backup_corrupt",
            "not a vBus KMS backup",
        ),
    ];
    let f = fresh_machine(&src, &src.join("tokens"));
    let before = listing(&f.dir);
    for (archive, code, words) in &cases {
        let err = refused(
            f.kmsctl(&["restore", "--in", archive.to_str().unwrap()]),
            code,
        );
        assert!(err.contains(words), "{}: {err}", archive.display());
        unchanged(&f.dir, &before);
    }

    // A target that already holds a store.
    fs::create_dir(f.dir.join("data")).unwrap();
    fs::write(f.dir.join("data/conf"), "someone's store").unwrap();
    let before = listing(&f.dir);
    let err = refused(
        f.kmsctl(&["restore", "--in", good.to_str().unwrap()]),
        "restore_target_not_empty",
    );
    assert!(err.contains("data"), "{err}");
    unchanged(&f.dir, &before);

    // A token without the appliance's keys (same label and a PIN that works).
    let empty = SoftHsm::new("vbus-kms");
    let g = fresh_machine(&src, &empty.dir().join("tokens"));
    fs::write(g.dir.join("pin"), softhsm_tests::USER_PIN).unwrap();
    let before = listing(&g.dir);
    let err = refused(
        g.kmsctl(&["restore", "--in", good.to_str().unwrap()]),
        "token_manifest_mismatch",
    );
    assert!(err.contains("root-ca") && err.contains("missing"), "{err}");
    unchanged(&g.dir, &before);

    // The same machine takes the good archive when told to put its store
    // aside: renamed, never deleted.
    let said = ok(f.kmsctl(&[
        "restore",
        "--in",
        good.to_str().unwrap(),
        "--replace-existing",
    ]));
    assert!(said.contains("restored a backup"), "{said}");
    let aside: Vec<PathBuf> = fs::read_dir(&f.dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("data.before-restore-"))
        .collect();
    assert_eq!(aside.len(), 1, "{said}");
    assert_eq!(
        fs::read_to_string(aside[0].join("conf")).unwrap(),
        "someone's store"
    );
    let verified = ok(f.kmsctl(&["audit", "verify"]));
    assert!(verified.starts_with("audit log OK"), "{verified}");
}

/// The archive's audit records (parsed bodies) and store entries
/// (tree, key as text).
fn archive_content(path: &Path) -> (Vec<Value>, Vec<(String, String)>) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let text = fs::read_to_string(path).unwrap();
    let mut records = Vec::new();
    let mut entries = Vec::new();
    for line in text.lines() {
        if line.starts_with("{\"seq\"") {
            records.push(json(json(line)["body"].as_str().unwrap()));
        } else if line.starts_with("{\"t\":\"store\"") {
            let v = json(line);
            let key = b64.decode(v["key"].as_str().unwrap()).unwrap();
            entries.push((
                v["tree"].as_str().unwrap().to_owned(),
                String::from_utf8_lossy(&key).into_owned(),
            ));
        }
    }
    (records, entries)
}

#[path = "../benches/common/mod.rs"]
mod common;

/// POST `body`: (status, JSON).
fn post(agent: &ureq::Agent, base: &str, path: &str, body: &str) -> (u16, Value) {
    let r = match agent
        .post(&format!("{base}{path}"))
        .set("Content-Type", "application/json")
        .send_string(body)
    {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("POST {path}: {e}"),
    };
    let status = r.status();
    (status, r.into_json().unwrap_or(Value::Null))
}

#[test]
fn online_backups_under_load_hold_every_recorded_effect_and_no_other() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let mut a = Running::start();
    let tmp = a.tmp.path().to_owned();
    let base = a.url("");
    let devices = Arc::new(common::make_devices(400));
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Four stations' worth of load: issue a device, mint its PSK.
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (agent, base) = (common::mtls_agent(&a, STATION), base.clone());
            let (devices, next, stop) = (devices.clone(), next.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Some(d) = devices.get(next.fetch_add(1, Ordering::SeqCst)) else {
                        break;
                    };
                    let body = format!(
                        "{{\"csr\":{},\"hw_uuid\":\"{}\"}}",
                        softhsm_tests::json_string(&d.csr_pem),
                        d.uuid
                    );
                    let path = format!("/v1/devices/{}/certificate", d.serial);
                    let (status, v) = post(&agent, &base, &path, &body);
                    assert_eq!(status, 201, "{v}");
                    let path = format!("/v1/devices/{}/psk", d.serial);
                    let (status, v) = post(&agent, &base, &path, "");
                    assert_eq!(status, 201, "{v}");
                }
            })
        })
        .collect();
    let mut archives = Vec::new();
    for i in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(700));
        let archive = tmp.join(format!("load-{i}.backup"));
        ok(a.kmsctl(&["backup", "--out", archive.to_str().unwrap()]));
        archives.push(archive);
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    assert!(a.stop().success());
    let tokens = a.dir.join("tokens");

    for archive in &archives {
        // In the archive itself: every recorded effect is in the store, and
        // every escrow entry and certificate has its record.
        let (records, entries) = archive_content(archive);
        let last = records.last().unwrap();
        assert_eq!(last["op"], "backup.create", "{last}");
        let has = |tree: &str, key: &str| entries.iter().any(|(t, k)| t == tree && k == key);
        let mut psks = Vec::new();
        let mut certs = Vec::new();
        for r in &records {
            match (r["op"].as_str().unwrap(), r["result"].as_str().unwrap()) {
                ("secret.issue", "ok") => {
                    let serial = r["subject"].as_str().unwrap().to_owned();
                    let key = format!("{serial}/psk");
                    assert!(has("escrow", &key), "{key}: recorded, not in the store");
                    psks.push(serial);
                }
                ("certificate.issue", "ok") if r["details"]["new"] == true => {
                    let serial = r["details"]["certificate"]["serial_number"]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    assert!(
                        has("certificates", &serial) || has("certificates", &serial.to_uppercase()),
                        "certificate {serial}: recorded, not in the store"
                    );
                    certs.push((r["subject"].as_str().unwrap().to_owned(), serial));
                }
                _ => {}
            }
        }
        let escrowed = entries.iter().filter(|(t, _)| t == "escrow").count();
        assert_eq!(escrowed, psks.len(), "escrow entries without their record");
        let stored = entries.iter().filter(|(t, _)| t == "certificates").count();
        assert!(stored >= certs.len());
        assert!(!psks.is_empty(), "no PSK in {}", archive.display());

        // Restored on a fresh machine (the token as it is now: the backup
        // is older than its checkpoint, so accepted as a rollback).
        let mut f = fresh_machine(&a.dir, &tokens);
        ok(f.kmsctl(&[
            "restore",
            "--in",
            archive.to_str().unwrap(),
            "--accept-rollback",
        ]));
        f.restart();
        let (station, base) = (common::mtls_agent(&f, STATION), f.url(""));
        for serial in &psks {
            let (status, v) = post(&station, &base, &format!("/v1/devices/{serial}/psk"), "");
            assert_eq!(status, 409, "{serial}: {v}");
            assert_eq!(v["error"]["code"], "psk_already_issued", "{serial}: {v}");
        }
        for (device, cert) in &certs {
            let (status, v) = f.curl(Some(STATION), &format!("/v1/devices/{device}"), &[]);
            assert_eq!(status, 200, "{device}: {v}");
            assert!(v.contains(cert.as_str()), "{device}: {v}");
        }
        assert!(f.stop().success());
    }
}

#[test]
fn the_newest_backup_restores_against_the_token_and_note_taken_right_after_and_is_sealed() {
    let mut a = Running::start();
    let tmp = a.tmp.path().to_owned();
    let (pem, uuid) = csr(&tmp, "VBUS-PWR-2412-000009", 9);
    issue(&a, &pem, "VBUS-PWR-2412-000009", &uuid);
    let archive = tmp.join("newest.backup");
    let summary = json(&ok(a.kmsctl(&[
        "backup",
        "--out",
        archive.to_str().unwrap(),
        "--json",
    ])));
    let n = summary["records"].as_u64().unwrap();
    // The officers' checkpoint, right after: it covers the backup's own
    // record, and nothing more.
    let note = ok(a.kmsctl(&["audit", "checkpoint"]));
    assert_eq!(note.lines().nth(1).unwrap(), n.to_string(), "{note}");
    let latest = tmp.join("latest.note");
    fs::write(&latest, &note).unwrap();
    // The token as it is right then (kmsd's own stop is recorded later).
    let hsm = tmp.join("hsm-now");
    fs::create_dir(&hsm).unwrap();
    copy(&a.dir.join("tokens"), &hsm.join("tokens"));
    assert!(a.stop().success());

    // An archive whose policy file was edited, its end hash recomputed.
    let text = fs::read_to_string(&archive).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let end = lines.pop().unwrap();
    let at = lines
        .iter()
        .position(|l| l.starts_with("{\"t\":\"file\"") && l.contains("\"kind\":\"policy\""))
        .expect("the policy file is in the archive");
    let data = json(&lines[at])["data"].as_str().unwrap().to_owned();
    let policy = b64.decode(&data).unwrap();
    let mut policy = String::from_utf8(policy).unwrap();
    policy.push_str("\n# an extra line nobody signed\n");
    lines[at] = lines[at].replace(&data, &b64.encode(policy));
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let old = json(&end)["sha256"].as_str().unwrap().to_owned();
    let new = hex::encode(sha2::Sha256::digest(body.as_bytes()));
    let edited = tmp.join("edited.backup");
    fs::write(&edited, format!("{body}{}\n", end.replace(&old, &new))).unwrap();

    let f = fresh_machine(&a.dir, &hsm.join("tokens"));
    let before = listing(&f.dir);
    let err = refused(
        f.kmsctl(&["restore", "--in", edited.to_str().unwrap()]),
        "backup_corrupt",
    );
    assert!(err.contains("signed backup.create record"), "{err}");
    unchanged(&f.dir, &before);

    // The genuine one, onto the token as it is now and against the note:
    // both hold, no --accept-rollback needed.
    let said = ok(f.kmsctl(&[
        "restore",
        "--in",
        archive.to_str().unwrap(),
        "--checkpoint",
        latest.to_str().unwrap(),
    ]));
    assert_eq!(
        said.matches("the backup holds them all").count(),
        2,
        "{said}"
    );
    assert!(
        said.contains(&format!("the restore is record {}", n + 1)),
        "{said}"
    );
}

#[test]
fn two_restores_at_once_onto_one_target_one_wins_and_the_target_is_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("appliance");
    let out = quickstart(&src, free_port());
    assert!(out.status.success());
    let archive = tmp.path().join("one.backup");
    ok(kmsctl(
        &src,
        &["backup", "--out", archive.to_str().unwrap()],
    ));
    for _ in 0..3 {
        let mut f = fresh_machine(&src, &src.join("tokens"));
        let outs: Vec<Output> = std::thread::scope(|s| {
            let runs: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| f.kmsctl(&["restore", "--in", archive.to_str().unwrap(), "--json"]))
                })
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let won = outs.iter().filter(|o| o.status.success()).count();
        assert_eq!(won, 1, "{outs:?}");
        let lost = outs.iter().find(|o| !o.status.success()).unwrap();
        let err = String::from_utf8_lossy(&lost.stderr);
        assert!(
            err.starts_with("error[audit_unavailable]")
                || err.starts_with("error[restore_target_not_empty]"),
            "{err}"
        );
        // The target is the winner's, whole: its log verifies, kmsd starts.
        let verified = ok(f.kmsctl(&["audit", "verify"]));
        assert!(verified.starts_with("audit log OK"), "{verified}");
        assert_eq!(records(&f, "backup.restore").len(), 1);
        f.restart();
        assert!(f.stop().success());
    }
}
