//! kill -9 `kmsd` at random points while 8 clients issue certificates,
//! revoke them and mint PSKs, `KMS_CRASH_ROUNDS` times (20 unless set).
//! After every restart each operation acknowledged in that round is there;
//! at the end, with `kmsd` stopped, the store and the audit log agree:
//! every certificate in the store has its issuance record and every
//! issuance record its certificate (start-up reconciliation re-applies the
//! ones a kill took from the store), no certificate serial was issued twice,
//! the revocations match, every escrowed PSK has its record, a PSK record
//! without an escrow entry is one whose answer never reached its client,
//! and `kmsctl audit verify` passes.
//!
//! The seed of the random kill points is printed; `KMS_CRASH_SEED` replays
//! a run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

#[path = "../benches/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use softhsm_tests::{edit_file, ok, Running};

const CLIENTS: usize = 8;
const STATION: &str = "stations/station-01";

/// A small xorshift generator: the kill points must be reproducible from
/// a printed seed, and this crate has no `rand`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What one request did, as its client saw it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    /// Device serial → certificate serial (201).
    Issued(String, String),
    /// Certificate serial revoked (200, not revoked before).
    Revoked(String),
    /// PSK minted for the device (201); its SHA-256, hex.
    Psk(String, String),
}

/// What the clients saw in one round: acknowledged operations, and the
/// requests cut off by the kill (no answer), which may or may not have
/// taken effect.
#[derive(Default)]
struct Round {
    acked: Vec<Op>,
    cut: Vec<Op>,
    /// Answers that are neither success nor a cut connection: a failure.
    unexpected: Vec<String>,
}

/// POST `body` to `path`: Ok((status, JSON)) for any HTTP answer, Err for
/// a connection that broke (the kill).
fn post(
    agent: &ureq::Agent,
    base: &str,
    path: &str,
    body: &str,
) -> Result<(u16, serde_json::Value), String> {
    let answer = agent
        .post(&format!("{base}{path}"))
        .set("Content-Type", "application/json")
        .send_string(body);
    let response = match answer {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(ureq::Error::Transport(t)) => return Err(t.to_string()),
    };
    let status = response.status();
    match response.into_string() {
        Ok(text) => Ok((
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )),
        // The connection broke while the answer was read.
        Err(e) => Err(e.to_string()),
    }
}

fn get(agent: &ureq::Agent, base: &str, path: &str) -> (u16, serde_json::Value) {
    let response = match agent.get(&format!("{base}{path}")).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {path}: {e}"),
    };
    let status = response.status();
    (
        status,
        response.into_json().unwrap_or(serde_json::Value::Null),
    )
}

/// One client's loop until `stop`: issue new devices, and now and then
/// revoke one of its certificates or mint a PSK for one of its devices
/// (each device and certificate belongs to one client, so clients never
/// race each other on the same object).
fn client(
    station: ureq::Agent,
    officer: ureq::Agent,
    base: String,
    next_device: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    mut rng: Rng,
    mine: &mut Vec<(String, String, bool, bool)>,
) -> Round {
    let mut round = Round::default();
    while !stop.load(Ordering::SeqCst) {
        let roll = rng.below(100);
        let psk_candidate = mine.iter().position(|(_, _, psk, _)| !psk);
        let revoke_candidate = mine.iter().position(|(_, _, _, revoked)| !revoked);
        let (op, outcome) = match (roll, psk_candidate, revoke_candidate) {
            (0..=19, Some(i), _) => {
                let device = mine[i].0.clone();
                mine[i].2 = true;
                let outcome = post(&station, &base, &format!("/v1/devices/{device}/psk"), "");
                let op = |psk: &str| Op::Psk(device.clone(), hex::encode(sha2_256(psk.as_bytes())));
                match outcome {
                    Ok((201, v)) => (Some(op(v["psk"].as_str().unwrap())), Ok(())),
                    Ok((s, v)) => (None, Err(format!("psk {device}: {s} {v}"))),
                    Err(_) => {
                        round.cut.push(Op::Psk(device.clone(), String::new()));
                        continue;
                    }
                }
            }
            (20..=34, _, Some(i)) => {
                let cert = mine[i].1.clone();
                mine[i].3 = true;
                let outcome = post(
                    &officer,
                    &base,
                    &format!("/v1/certificates/{cert}/revoke"),
                    r#"{"reason":"keyCompromise"}"#,
                );
                match outcome {
                    Ok((200, v)) if v["already_revoked"] == false => {
                        (Some(Op::Revoked(cert)), Ok(()))
                    }
                    Ok((s, v)) => (None, Err(format!("revoke {cert}: {s} {v}"))),
                    Err(_) => {
                        round.cut.push(Op::Revoked(cert));
                        continue;
                    }
                }
            }
            _ => {
                let index = next_device.fetch_add(1, Ordering::SeqCst);
                let device = common::device(index);
                let body = format!(
                    "{{\"csr\":{},\"hw_uuid\":\"{}\"}}",
                    softhsm_tests::json_string(&device.csr_pem),
                    device.uuid
                );
                let outcome = post(
                    &station,
                    &base,
                    &format!("/v1/devices/{}/certificate", device.serial),
                    &body,
                );
                match outcome {
                    Ok((201, v)) => {
                        let cert = v["serial_number"].as_str().unwrap().to_owned();
                        mine.push((device.serial.clone(), cert.clone(), false, false));
                        (Some(Op::Issued(device.serial, cert)), Ok(()))
                    }
                    Ok((s, v)) => (None, Err(format!("issue {}: {s} {v}", device.serial))),
                    Err(_) => {
                        round.cut.push(Op::Issued(device.serial, String::new()));
                        continue;
                    }
                }
            }
        };
        match outcome {
            Ok(()) => round.acked.extend(op),
            // An answer that came back but is not a success: unless the
            // kill is already under way (a half-stopped service may still
            // answer), that is a failure.
            Err(e) if !stop.load(Ordering::SeqCst) => round.unexpected.push(e),
            Err(_) => {}
        }
    }
    round
}

fn sha2_256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// After a restart: every operation acknowledged in the round is there.
fn check_acknowledged(a: &Running, acked: &[Op]) {
    let base = a.url("");
    let station = common::mtls_agent(a, STATION);
    let officer = common::mtls_agent(a, "officer");
    for op in acked {
        match op {
            Op::Issued(device, cert) => {
                let (status, v) = get(&station, &base, &format!("/v1/devices/{device}"));
                assert_eq!(status, 200, "{device}: {v}");
                // A later certificate would be a second issuance: the
                // device keeps the acknowledged one.
                assert_eq!(
                    v["certificate"].as_str(),
                    Some(cert.as_str()),
                    "{device}: {v}"
                );
            }
            Op::Psk(device, _) => {
                let (status, v) =
                    post(&station, &base, &format!("/v1/devices/{device}/psk"), "").unwrap();
                assert_eq!(status, 409, "{device}: {v}");
                assert_eq!(v["error"]["code"], "psk_already_issued", "{device}: {v}");
            }
            Op::Revoked(cert) => {
                let (status, v) = post(
                    &officer,
                    &base,
                    &format!("/v1/certificates/{cert}/revoke"),
                    r#"{"reason":"keyCompromise"}"#,
                )
                .unwrap();
                assert_eq!(status, 200, "{cert}: {v}");
                assert_eq!(v["already_revoked"], true, "{cert}: {v}");
            }
        }
    }
}

#[test]
fn acknowledged_operations_survive_kill_9_under_load() {
    let rounds: u64 = std::env::var("KMS_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("KMS_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("KMS_CRASH_SEED={seed} KMS_CRASH_ROUNDS={rounds}");
    let mut rng = Rng(seed);
    let mut a = Running::start();
    let config = a.dir.join("kmsd.toml");
    let next_device = Arc::new(AtomicUsize::new(0));
    let mut mine: Vec<Vec<(String, String, bool, bool)>> = vec![Vec::new(); CLIENTS];
    let mut acked_total: BTreeSet<Op> = BTreeSet::new();
    let mut cut_total: Vec<Op> = Vec::new();
    for round in 0..rounds {
        // Odd rounds run with the store's timed flush far away, so the
        // kill lands before issuances reach sled's files and start-up
        // reconciliation has to bring them back from the audit log; even
        // rounds run with the shipped default.
        if round > 0 {
            let (from, to) = if round % 2 == 1 {
                ("[storage]\n", "[storage]\nflush_every_ms = 60000\n")
            } else {
                ("[storage]\nflush_every_ms = 60000\n", "[storage]\n")
            };
            edit_file(&config, from, to);
            a.restart();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let base = a.url("");
        let round_result: Vec<Round> = std::thread::scope(|s| {
            let handles: Vec<_> = mine
                .iter_mut()
                .map(|m| {
                    let (station, officer) = (
                        common::mtls_agent(&a, STATION),
                        common::mtls_agent(&a, "officer"),
                    );
                    let (base, next, stop) = (base.clone(), next_device.clone(), stop.clone());
                    let client_rng = Rng(rng.next() | 1);
                    s.spawn(move || client(station, officer, base, next, stop, client_rng, m))
                })
                .collect();
            // The kill point: somewhere in the first two seconds of load.
            std::thread::sleep(Duration::from_millis(200 + rng.below(1800)));
            let mut service = a.service.take().unwrap();
            service.0.kill().unwrap(); // SIGKILL
            service.0.wait().unwrap();
            drop(service);
            stop.store(true, Ordering::SeqCst);
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut acked = Vec::new();
        for r in round_result {
            assert!(r.unexpected.is_empty(), "round {round}: {:?}", r.unexpected);
            acked.extend(r.acked);
            cut_total.extend(r.cut);
        }
        a.restart();
        check_acknowledged(&a, &acked);
        eprintln!(
            "round {round}: {} acknowledged, all present after the restart",
            acked.len()
        );
        acked_total.extend(acked);
        a.stop();
    }
    let issued = acked_total
        .iter()
        .filter(|o| matches!(o, Op::Issued(..)))
        .count();
    let revoked = acked_total
        .iter()
        .filter(|o| matches!(o, Op::Revoked(..)))
        .count();
    let psks = acked_total
        .iter()
        .filter(|o| matches!(o, Op::Psk(..)))
        .count();
    eprintln!(
        "{rounds} kills: {issued} issuances, {revoked} revocations, {psks} PSKs acknowledged; {} requests cut off",
        cut_total.len()
    );
    assert!(
        issued > 0 && revoked > 0 && psks > 0,
        "the load did too little to judge"
    );

    // With kmsd stopped: the store against the audit log.
    let cfg = kms::config::Config::load(&config).unwrap();
    let export = ok(a.kmsctl(&["audit", "export"]));
    let mut log_issued: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut log_revoked: BTreeSet<String> = BTreeSet::new();
    let mut log_psk: HashMap<String, u64> = HashMap::new();
    for line in export.lines() {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap();
        let Some(body) = entry["body"].as_str() else {
            continue; // a checkpoint line
        };
        let r: serde_json::Value = serde_json::from_str(body).unwrap();
        if r["result"] != "ok" {
            continue;
        }
        let seq = r["seq"].as_u64().unwrap();
        match r["op"].as_str().unwrap() {
            "certificate.issue" if r["details"]["new"] == true => {
                let cert = r["details"]["certificate"]["serial_number"]
                    .as_str()
                    .unwrap();
                let device = r["subject"].as_str().unwrap().to_owned();
                let earlier = log_issued.insert(cert.to_owned(), (device, seq));
                assert!(
                    earlier.is_none(),
                    "serial {cert} issued twice: {earlier:?} and record {seq}"
                );
            }
            "certificate.revoke" => {
                log_revoked.insert(r["subject"].as_str().unwrap().to_owned());
            }
            "secret.issue" if r["details"]["purpose"] == "psk" => {
                *log_psk
                    .entry(r["subject"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
            _ => {}
        }
    }
    let store = kms::storage::SledStore::open(&cfg.storage.path).unwrap();
    let all = |tree| -> Vec<(Vec<u8>, Vec<u8>)> {
        use store::Store as _;
        store.scan(tree, &[], usize::MAX).unwrap()
    };
    let stored_certs: BTreeMap<String, ca::CertificateRecord> = all(store::Tree::Certificates)
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8(k).unwrap(),
                serde_json::from_slice(&v).unwrap(),
            )
        })
        .collect();
    // The quickstart's own certificates (TLS server, officer, station)
    // come from the internal CA, not from device issuance.
    let device_certs: BTreeMap<&String, &ca::CertificateRecord> = stored_certs
        .iter()
        .filter(|(_, c)| c.module_serial.starts_with("VBUS-"))
        .collect();
    let store_serials: BTreeSet<&String> = device_certs.keys().copied().collect();
    let log_serials: BTreeSet<&String> = log_issued.keys().collect();
    assert_eq!(
        store_serials, log_serials,
        "store and audit log disagree on the certificates"
    );
    for (serial, record) in &device_certs {
        assert_eq!(&log_issued[*serial].0, &record.module_serial, "{serial}");
    }
    for op in &acked_total {
        match op {
            Op::Issued(device, cert) => {
                assert_eq!(log_issued.get(cert).map(|(d, _)| d), Some(device), "{cert}")
            }
            Op::Revoked(cert) => assert!(log_revoked.contains(cert), "{cert}"),
            Op::Psk(..) => {}
        }
    }
    let stored_revoked: BTreeSet<String> = all(store::Tree::Revocations)
        .into_iter()
        .map(|(k, _)| String::from_utf8(k).unwrap())
        .collect();
    assert_eq!(
        stored_revoked, log_revoked,
        "store and audit log disagree on the revocations"
    );
    let escrowed: BTreeSet<String> = all(store::Tree::Escrow)
        .into_iter()
        .filter_map(|(k, _)| {
            String::from_utf8(k)
                .unwrap()
                .strip_suffix("/psk")
                .map(str::to_owned)
        })
        .collect();
    let acked_psk: BTreeSet<&String> = acked_total
        .iter()
        .filter_map(|o| match o {
            Op::Psk(d, _) => Some(d),
            _ => None,
        })
        .collect();
    let cut_psk: BTreeSet<&String> = cut_total
        .iter()
        .filter_map(|o| match o {
            Op::Psk(d, _) => Some(d),
            _ => None,
        })
        .collect();
    for device in &escrowed {
        assert!(
            log_psk.contains_key(device),
            "PSK of {device} escrowed without its record"
        );
    }
    for (device, n) in &log_psk {
        // One record per device, except the check after a restart asks
        // once more and is refused (not an "ok" record).
        assert_eq!(*n, 1, "{device}: {n} PSK records");
        if !escrowed.contains(device) {
            // The record was durable, the escrow commit was not: the kill
            // came between them, before the answer left.
            assert!(
                cut_psk.contains(device),
                "PSK record of {device} without escrow entry"
            );
            assert!(
                !acked_psk.contains(device),
                "acknowledged PSK of {device} lost"
            );
        }
    }
    for device in &acked_psk {
        assert!(
            escrowed.contains(*device),
            "acknowledged PSK of {device} lost"
        );
    }
    drop(store);
    ok(a.kmsctl(&["audit", "verify"]));
}

/// A tmpfs mounted for one test, unmounted (lazily, so a process still
/// holding files there cannot block it) when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let out = softhsm_tests::run(
            std::process::Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0700"),
                    "tmpfs",
                ])
                .arg(at),
        );
        assert!(
            out.status.success(),
            "this test needs to mount a tmpfs (run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_owned())
    }

    /// Fill it: one file grown until the file system refuses; its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write as _;
        let path = self.0.join("ballast");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        loop {
            if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_all()) {
                assert_eq!(e.raw_os_error(), Some(28), "{e}"); // ENOSPC
                break;
            }
        }
        // And the last few bytes a smaller write still finds.
        while f.write_all(&chunk[..512]).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// One device through `POST /v1/devices/{serial}/certificate`: (status,
/// answer).
fn issue_device(
    station: &ureq::Agent,
    base: &str,
    index: usize,
) -> (String, u16, serde_json::Value) {
    let device = common::device(index);
    let body = format!(
        "{{\"csr\":{},\"hw_uuid\":\"{}\"}}",
        softhsm_tests::json_string(&device.csr_pem),
        device.uuid
    );
    let (status, v) = post(
        station,
        base,
        &format!("/v1/devices/{}/certificate", device.serial),
        &body,
    )
    .unwrap();
    (device.serial, status, v)
}

/// Which of the appliance's directories sit on the small file system
/// that fills up, the free-space reserve (`storage.reserve_mb`), and the
/// code every refusal carries then.
const FULL_DISK_CASES: &[(&[&str], u64, &str)] = &[
    // The usual layout, one state directory: the reserve refuses first.
    (&["data", "audit"], 4, "storage_unavailable"),
    // The store alone on it.
    (&["data"], 4, "storage_unavailable"),
    // The audit log alone, no reserve: its write meets the full disk, the
    // batch is cut off again and the log goes on once space returns.
    (&["audit"], 0, "audit_unavailable"),
];

#[test]
fn a_full_disk_refuses_requests_and_they_succeed_again_once_space_returns() {
    for (on_volume, reserve_mb, code) in FULL_DISK_CASES {
        full_disk_case(on_volume, *reserve_mb, code);
    }
}

fn full_disk_case(on_volume: &[&str], reserve_mb: u64, expected: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let volume = tmp.path().join("volume");
    let mut fs_guard = None;
    let mut a = Running::start_with(|dir| {
        let fs = Tmpfs::mount(&volume, "24m");
        let config = dir.join("kmsd.toml");
        let vol = volume.to_str().unwrap();
        for d in on_volume {
            let out = softhsm_tests::run(
                std::process::Command::new("cp")
                    .arg("-a")
                    .arg(dir.join(d))
                    .arg(&volume),
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let key = if *d == "data" { "path" } else { "dir" };
            edit_file(
                &config,
                &format!("{key} = \"{d}\""),
                &format!("{key} = \"{vol}/{d}\""),
            );
        }
        edit_file(
            &config,
            "[storage]\n",
            &format!("[storage]\nreserve_mb = {reserve_mb}\n"),
        );
        fs_guard = Some(fs);
    });
    let fs = fs_guard.take().unwrap();
    let base = a.url("");
    let station = common::mtls_agent(&a, STATION);
    let mut acked = Vec::new();
    for i in 0..5 {
        let (device, status, v) = issue_device(&station, &base, 900_000 + i);
        assert_eq!(status, 201, "{v}");
        acked.push(Op::Issued(
            device,
            v["serial_number"].as_str().unwrap().to_owned(),
        ));
    }
    let ballast = fs.fill();
    // Full: requests are refused with a code that says why, and a refused
    // one leaves no certificate behind. (The last page of a file may still
    // take a record or two: those are acknowledged and must last.)
    let mut refused = Vec::new();
    for i in 0..10 {
        let (device, status, v) = issue_device(&station, &base, 900_100 + i);
        if status == 201 {
            acked.push(Op::Issued(
                device,
                v["serial_number"].as_str().unwrap().to_owned(),
            ));
            continue;
        }
        let code = v["error"]["code"].as_str().unwrap_or_default().to_owned();
        assert_eq!(status, 503, "{device}: {v}");
        assert_eq!(code, expected, "{on_volume:?} {device}: {v}");
        refused.push((device, code));
    }
    assert!(refused.len() >= 8, "{refused:?}");
    eprintln!("{on_volume:?} full: refused {refused:?}");
    std::fs::remove_file(&ballast).unwrap();
    // Space is back: the same kmsd serves again, without a restart.
    for i in 0..5 {
        let (device, status, v) = issue_device(&station, &base, 900_500 + i);
        assert_eq!(status, 201, "{device}: {v}");
        acked.push(Op::Issued(
            device,
            v["serial_number"].as_str().unwrap().to_owned(),
        ));
    }
    for (device, _) in &refused {
        let (status, v) = get(&station, &base, &format!("/v1/devices/{device}"));
        assert_eq!(status, 404, "{device}: {v}");
    }
    check_acknowledged(&a, &acked);
    // And after a clean restart.
    a.stop();
    a.restart();
    check_acknowledged(&a, &acked);
    for (device, _) in &refused {
        let (status, v) = get(&station, &base, &format!("/v1/devices/{device}"));
        assert_eq!(status, 404, "{device}: {v}");
    }
    a.stop();
    ok(a.kmsctl(&["audit", "verify"]));
    drop(fs);
}
