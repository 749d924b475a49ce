//! Token faults at the PKCS#11 boundary, on the real `kmsd` and a real
//! SoftHSM2 token: `kmsd` loads the fault shim (`softhsm-tests/fault-shim`)
//! as its module, which forwards to SoftHSM2 and injects what each test's
//! plan says (`CKR_DEVICE_ERROR`, `CKR_SESSION_HANDLE_INVALID`,
//! `CKR_DEVICE_REMOVED`, delays). The shim logs every fault it injects, so
//! each test also proves its faults happened.
//!
//! What must hold (README, "The token layer" and "Errors"): a fault the pool
//! cannot recover from within `token.retries` is a 503 `token_unavailable`
//! that leaves no half-done state and only its audit record; the pool
//! recovers by itself once the token does; no request waits past
//! `token.acquire_timeout_ms` for a session a slow token holds; and every
//! certificate is signed by the token's CA key, never by anything else.
//!
//! The API's TLS server key lives in the token too, so every new TLS
//! handshake is itself a token signature: while the token fails, new API
//! connections are refused at the handshake. The API requests below
//! therefore go over keep-alive connections opened before the faults (the
//! station client's pool), as a station's would be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use softhsm_tests::{device_csr, edit_file, ok, run, Running, MODULE};

const STATION: &str = "stations/station-01";

/// The records a PSK request refused by the token leaves: its refusal,
/// with `code` (every operation, allowed or refused, appends one record).
fn psk_refusal_records(code: &str) -> Vec<String> {
    vec![code.to_owned()]
}

/// A quickstart appliance whose `kmsd` reaches its token through the shim.
struct Faulty {
    a: Running,
    plan: PathBuf,
    log: PathBuf,
}

/// The shim, built beside the test binary (`target/<profile>/`, or
/// `deps/` when only built as a dependency); the newer if both.
fn shim() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let candidates = [
        deps.parent().unwrap().join("libfault_shim.so"),
        deps.join("libfault_shim.so"),
    ];
    candidates
        .into_iter()
        .filter_map(|p| {
            let modified = std::fs::metadata(&p).ok()?.modified().ok()?;
            Some((modified, p))
        })
        .max()
        .map(|(_, p)| p)
        .expect("libfault_shim.so not built: cargo build -p fault-shim")
}

/// The token settings a test chooses; all retry 3 times, after 50, 100 and
/// 150 ms.
struct Settings {
    pool_size: usize,
    acquire_timeout_ms: u64,
}

impl Faulty {
    fn start(s: Settings) -> Self {
        let mut files = (PathBuf::new(), PathBuf::new());
        let a = Running::start_with(|dir| {
            let (plan, log) = (dir.join("fault-plan"), dir.join("faults.log"));
            let cfg = dir.join("kmsd.toml");
            edit_file(
                &cfg,
                &format!("module = {MODULE:?}"),
                &format!("module = {:?}", shim().display().to_string()),
            );
            edit_file(
                &cfg,
                "pool_size = 4\n",
                &format!(
                    "pool_size = {}\nretries = 3\nretry_backoff_ms = 50\nacquire_timeout_ms = {}\n",
                    s.pool_size, s.acquire_timeout_ms
                ),
            );
            edit_file(
                &cfg,
                "[token.module_env]\n",
                &format!(
                    "[token.module_env]\nKMS_FAULT_REAL_MODULE = {MODULE:?}\nKMS_FAULT_PLAN = {:?}\nKMS_FAULT_LOG = {:?}\n",
                    plan.display().to_string(),
                    log.display().to_string()
                ),
            );
            // A request body must arrive within 1 s; the token may take longer.
            edit_file(&cfg, "[server]\n", "[server]\nrequest_timeout_ms = 1000\n");
            // No periodic checkpoint signature in the middle of a plan.
            edit_file(&cfg, "[audit]\n", "[audit]\ncheckpoint_seconds = 3600\n");
            files = (plan, log);
        });
        let f = Faulty {
            a,
            plan: files.0,
            log: files.1,
        };
        assert!(f.injected().is_empty(), "faults before any plan");
        f
    }

    /// Put a new plan in force (a finished file renamed over the old one).
    fn plan(&self, text: &str) {
        let tmp = self.plan.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.plan).unwrap();
    }

    /// Back to pass-through.
    fn clear(&self) {
        self.plan("");
    }

    /// The faults the shim injected into `kmsd` so far, `<function>
    /// <effect>` (`kmsctl` loads the shim too, with its own process id).
    fn injected(&self) -> Vec<String> {
        let pid = self
            .a
            .service
            .as_ref()
            .expect("kmsd runs")
            .0
            .id()
            .to_string();
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(!text.contains(" plan-error "), "{text}");
        text.lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(p, _)| *p == pid)
            .map(|(_, fault)| fault.to_owned())
            .collect()
    }

    /// A station client with its keep-alive connection already open (the
    /// handshake done while the token is healthy).
    fn station(&self) -> station::Client {
        let cred = station::Credential::from_dir(&self.a.credential(STATION)).unwrap();
        let c = station::Client::new(&self.a.url(""), &cred).unwrap();
        assert_eq!(c.health().unwrap()["status"], "ok");
        c
    }

    /// Every audit record so far. `kmsctl audit show` opens the token (for
    /// the checkpoint key) through the shim, so only without a plan.
    fn audit(&self) -> Vec<Value> {
        assert_eq!(std::fs::read_to_string(&self.plan).unwrap_or_default(), "");
        ok(self.a.kmsctl(&["audit", "show"]))
            .lines()
            .map(json)
            .collect()
    }

    /// `/healthz` on the publication port: (status, body).
    fn healthz(&self) -> (u16, Value) {
        let (status, body) = self.a.publication("/healthz");
        (status, json(&body))
    }

    /// SIGTERM (plan cleared: the final checkpoint is a token signature),
    /// then `kmsctl audit verify` on the whole log.
    fn stop_and_verify_audit(mut self) {
        self.clear();
        assert_eq!(self.a.stop().code(), Some(0));
        let v = json(&ok(self.a.kmsctl(&["--json", "audit", "verify"])));
        assert_eq!(v["records"], v["checkpointed"], "{v}");
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A device: module serial, hardware UUID, CSR (PEM text).
struct Device {
    serial: String,
    uuid: String,
    csr: String,
}

fn device(dir: &Path, module_type: &str, n: u32) -> Device {
    let serial = format!("VBUS-{module_type}-2412-{n:06}");
    let uuid = format!("6f9619ff-8b86-4011-b42d-00c04fc9{n:04}");
    let (pem, _) = device_csr(dir, &serial, &uuid);
    Device {
        csr: std::fs::read_to_string(pem).unwrap(),
        serial,
        uuid,
    }
}

impl Device {
    fn enroll(&self, c: &station::Client) -> Result<station::Enrolled, station::Error> {
        c.enroll(&self.serial, &self.uuid, &self.csr)
    }
}

/// (status, code) of a refusal; panics on anything else.
fn refusal<T: std::fmt::Debug>(r: Result<T, station::Error>) -> (u16, String) {
    match r {
        Err(station::Error::Refused { status, code, .. }) => (status, code),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The audit records about `subject` of `op`, by result.
fn results(records: &[Value], op: &str, subject: &str) -> Vec<String> {
    records
        .iter()
        .filter(|r| r["op"] == op && r["subject"] == subject)
        .map(|r| r["result"].as_str().unwrap().to_owned())
        .collect()
}

/// DER SubjectPublicKeyInfo of the public key labelled `label` on the
/// appliance's token, as `pkcs11-tool` (OpenSC) reads it from SoftHSM2
/// directly, not through the shim or our code.
fn token_public_key(a: &Running, label: &str) -> Vec<u8> {
    let out = a.tmp.path().join(format!("{label}.spki.der"));
    let pin = std::fs::read_to_string(a.dir.join("pin")).unwrap();
    let res = run(Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", a.dir.join("softhsm2.conf"))
        .args(["--module", MODULE, "--token-label", "vbus-kms", "--login"])
        .args(["--pin", pin.trim_end()])
        .args(["--read-object", "--type", "pubkey", "--label", label, "-o"])
        .arg(&out));
    assert!(
        res.status.success(),
        "pkcs11-tool: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    std::fs::read(out).unwrap()
}

/// DER SubjectPublicKeyInfo of a PEM certificate file, as OpenSSL reads it.
fn certificate_public_key(a: &Running, cert: &Path) -> Vec<u8> {
    let pem = run(Command::new("openssl")
        .args(["x509", "-noout", "-pubkey", "-in"])
        .arg(cert));
    assert!(pem.status.success());
    let key = a.tmp.path().join("cert-key.pem");
    std::fs::write(&key, &pem.stdout).unwrap();
    let der = run(Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "DER", "-in"])
        .arg(&key));
    assert!(der.status.success());
    der.stdout
}

/// No software fallback key: the CA certificates carry the public keys of
/// the token's CA keys (read by `pkcs11-tool`), and every certificate in
/// `issued` verifies with `openssl verify` under the root, with the chain
/// the API returned, which is the appliance's chain file.
fn assert_signed_by_token(a: &Running, issued: &[station::Enrolled]) {
    for (label, file) in [
        ("mfg-intermediate", "ca/intermediate.pem"),
        ("root-ca", "ca/root.pem"),
    ] {
        assert_eq!(
            token_public_key(a, label),
            certificate_public_key(a, &a.dir.join(file)),
            "{file} does not carry the token key {label}"
        );
    }
    let chain_file = std::fs::read_to_string(a.dir.join("ca/chain.pem")).unwrap();
    for (i, e) in issued.iter().enumerate() {
        assert_eq!(e.chain, chain_file);
        let (cert, chain) = (
            a.tmp.path().join(format!("issued-{i}.pem")),
            a.tmp.path().join(format!("chain-{i}.pem")),
        );
        std::fs::write(&cert, &e.certificate).unwrap();
        std::fs::write(&chain, &e.chain).unwrap();
        let out = run(Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(a.dir.join("ca/root.pem"))
            .arg("-untrusted")
            .arg(&chain)
            .arg(&cert));
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.contains(": OK"),
            "certificate {} does not verify: {said}",
            e.serial_number
        );
    }
}

#[test]
fn a_persistent_device_error_on_c_sign_is_503_leaves_nothing_half_done_and_the_pool_recovers() {
    let f = Faulty::start(Settings {
        pool_size: 4,
        acquire_timeout_ms: 2000,
    });
    let tmp = f.a.tmp.path().to_owned();
    let st = f.station();
    let d = device(&tmp, "CPU", 1);
    let before = f.audit().len();

    f.plan("C_Sign CKR_DEVICE_ERROR\n");
    assert_eq!(refusal(d.enroll(&st)), (503, "token_unavailable".into()));
    // Tried 1 + token.retries times, the pool rebuilt in between.
    assert_eq!(f.injected(), vec!["C_Sign CKR_DEVICE_ERROR"; 4]);
    // Nothing was stored.
    assert_eq!(
        refusal(st.device(&d.serial)),
        (404, "device_not_found".into())
    );
    // While the token cannot sign, no new API connection gets through its
    // handshake (the TLS key is in the token): refused, not hung.
    let cred = station::Credential::from_dir(&f.a.credential(STATION)).unwrap();
    let fresh = station::Client::new(&f.a.url(""), &cred).unwrap();
    assert!(
        matches!(fresh.health(), Err(station::Error::Transport(_))),
        "a handshake needs a token signature"
    );
    // The publication port does not sign: its health check still finds
    // the token (only C_Sign fails).
    assert_eq!(f.healthz().0, 200);

    // The refusal and the lookup are the only new audit records.
    f.clear();
    let records = f.audit();
    let new: Vec<&str> = records[before..]
        .iter()
        .map(|r| r["result"].as_str().unwrap())
        .collect();
    assert_eq!(new, ["token_unavailable", "device_not_found"]);
    assert_eq!(
        results(&records, "certificate.issue", &d.serial),
        ["token_unavailable"]
    );

    // The token is back: the same request is issued, as new, on the same
    // connection and on a new one.
    let issued = d.enroll(&st).unwrap();
    assert!(issued.newly_issued);
    assert_eq!(fresh.health().unwrap()["status"], "ok");
    assert!(!d.enroll(&fresh).unwrap().newly_issued);
    assert_eq!(
        results(&f.audit(), "certificate.issue", &d.serial),
        ["token_unavailable", "ok", "ok"]
    );
    // The refused handshake's signature was tried 1 + token.retries times too.
    assert_eq!(f.injected(), vec!["C_Sign CKR_DEVICE_ERROR"; 8]);
    assert_signed_by_token(&f.a, &[issued]);
    f.stop_and_verify_audit();
}

#[test]
fn one_lost_session_is_retried_on_a_new_session_and_nobody_notices() {
    let f = Faulty::start(Settings {
        pool_size: 4,
        acquire_timeout_ms: 2000,
    });
    let tmp = f.a.tmp.path().to_owned();
    let st = f.station();
    let d = device(&tmp, "CPU", 2);

    // README: CKR_SESSION_HANDLE_INVALID drops the idle sessions and
    // retries on a new one, so the caller sees success.
    f.plan("C_Sign CKR_SESSION_HANDLE_INVALID count=1\n");
    let issued = d.enroll(&st).unwrap();
    assert!(issued.newly_issued);
    // The PSK's random bytes and its sealing, each losing its session once.
    f.plan("C_GenerateRandom CKR_SESSION_HANDLE_INVALID count=1\nC_Encrypt CKR_SESSION_HANDLE_INVALID count=1\n");
    let psk = st.psk(&d.serial).unwrap();
    assert_eq!(psk.len(), 32);
    assert_eq!(
        f.injected(),
        [
            "C_Sign CKR_SESSION_HANDLE_INVALID",
            "C_GenerateRandom CKR_SESSION_HANDLE_INVALID",
            "C_Encrypt CKR_SESSION_HANDLE_INVALID",
        ]
    );
    f.clear();
    let records = f.audit();
    assert_eq!(results(&records, "certificate.issue", &d.serial), ["ok"]);
    assert_eq!(results(&records, "secret.issue", &d.serial), ["ok"]);
    let log = std::fs::read_to_string(f.a.dir.join("kmsd.log")).unwrap();
    assert!(
        log.contains("token operation failed; recovering")
            && log.contains("CKR_SESSION_HANDLE_INVALID"),
        "{log}"
    );
    assert_signed_by_token(&f.a, &[issued]);
    f.stop_and_verify_audit();
}

#[test]
fn a_removed_device_fails_issuance_psk_and_health_with_503_and_all_recover_when_it_returns() {
    let f = Faulty::start(Settings {
        pool_size: 4,
        acquire_timeout_ms: 2000,
    });
    let tmp = f.a.tmp.path().to_owned();
    let st = f.station();
    // Certified before the fault, for its PSK; and one new device.
    let known = device(&tmp, "PWR", 3);
    let known_cert = known.enroll(&st).unwrap();
    let new = device(&tmp, "CPU", 4);
    let before = f.audit();

    f.plan("* CKR_DEVICE_REMOVED\n");
    assert_eq!(refusal(new.enroll(&st)), (503, "token_unavailable".into()));
    assert_eq!(
        refusal(st.psk(&known.serial)),
        (503, "token_unavailable".into())
    );
    let (status, health) = f.healthz();
    assert_eq!(
        (status, health["error"]["code"].as_str()),
        (503, Some("token_unavailable")),
        "{health}"
    );
    assert_eq!(refusal(st.health()), (503, "token_unavailable".into()));
    let faults = f.injected();
    assert!(
        faults.len() >= 4 * 4 && faults.iter().all(|l| l.ends_with(" CKR_DEVICE_REMOVED")),
        "{faults:?}"
    );
    // Each refused operation left its own record and nothing else.
    f.clear();
    let records = f.audit();
    let new_records: Vec<(String, String, String)> = records[before.len()..]
        .iter()
        .map(|r| {
            (
                r["op"].as_str().unwrap().to_owned(),
                r["subject"].as_str().unwrap().to_owned(),
                r["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut expected = vec![(
        "certificate.issue".to_owned(),
        new.serial.clone(),
        "token_unavailable".to_owned(),
    )];
    for code in psk_refusal_records("token_unavailable") {
        expected.push(("secret.issue".into(), known.serial.clone(), code));
    }
    assert_eq!(new_records, expected);

    // The device is back: health, then the PSK and the certificate, both
    // as first issued.
    assert_eq!(f.healthz().0, 200);
    assert_eq!(st.psk(&known.serial).unwrap().len(), 32);
    let new_cert = new.enroll(&st).unwrap();
    assert!(new_cert.newly_issued);
    assert_signed_by_token(&f.a, &[known_cert, new_cert]);
    f.stop_and_verify_audit();
}

/// (status, code, message) of a refusal; panics on anything else.
fn refused<T: std::fmt::Debug>(r: Result<T, station::Error>) -> (u16, String, String) {
    match r {
        Err(station::Error::Refused {
            status,
            code,
            message,
            ..
        }) => (status, code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_slow_token_holds_no_other_request_past_the_acquire_timeout_and_kmsd_keeps_serving() {
    // The token takes DELAY for one signature while it holds the pool's only
    // session; everyone else must be answered well within DELAY / 2.
    const DELAY_MS: u64 = 5000;
    let bound = Duration::from_millis(DELAY_MS / 2);
    let f = Faulty::start(Settings {
        pool_size: 1,
        acquire_timeout_ms: 300,
    });
    let tmp = f.a.tmp.path().to_owned();
    let (slow_client, other_client, psk_client) = (f.station(), f.station(), f.station());
    let owned = device(&tmp, "CPU", 10);
    let owned_cert = owned.enroll(&psk_client).unwrap();
    let (slow, other) = (device(&tmp, "CPU", 11), device(&tmp, "CPU", 12));

    f.plan(&format!("C_Sign delay_ms={DELAY_MS} count=1\n"));
    let slow = std::thread::spawn(move || {
        let t = Instant::now();
        let r = slow.enroll(&slow_client);
        (r, t.elapsed(), slow)
    });
    // Until the slow signature is under way.
    let deadline = Instant::now() + Duration::from_secs(20);
    while f.injected().is_empty() {
        assert!(Instant::now() < deadline, "the slow C_Sign never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(f.injected(), [format!("C_Sign delay_ms={DELAY_MS}")]);

    let mut took = Vec::new();
    let t = Instant::now();
    let (status, code, message) = refused(other.enroll(&other_client));
    took.push(("issuance", t.elapsed()));
    assert_eq!((status, code.as_str()), (503, "token_unavailable"));
    assert!(message.contains("sessions busy"), "{message}");
    let t = Instant::now();
    let (status, code, message) = refused(psk_client.psk(&owned.serial));
    took.push(("psk", t.elapsed()));
    assert_eq!((status, code.as_str()), (503, "token_unavailable"));
    assert!(message.contains("sessions busy"), "{message}");
    let t = Instant::now();
    let (status, health) = f.healthz();
    took.push(("healthz", t.elapsed()));
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["error"]["code"], "token_unavailable");
    // A new connection's handshake needs a token signature too: refused
    // at the handshake, as quickly.
    let cred = station::Credential::from_dir(&f.a.credential(STATION)).unwrap();
    let fresh = station::Client::new(&f.a.url(""), &cred).unwrap();
    let t = Instant::now();
    assert!(matches!(fresh.health(), Err(station::Error::Transport(_))));
    took.push(("handshake", t.elapsed()));
    for (what, took) in &took {
        assert!(
            *took < bound,
            "{what} waited {took:?} behind a {DELAY_MS} ms token call"
        );
    }

    // The slow request itself runs to its end (README: once the body is
    // in, the operation is finished, so an answer never hides work done),
    // past server.request_timeout_ms, with its certificate.
    let (r, slow_took, slow) = slow.join().unwrap();
    let slow_cert = r.unwrap();
    assert!(slow_cert.newly_issued);
    assert!(
        slow_took >= Duration::from_millis(DELAY_MS),
        "{slow_took:?}"
    );

    // kmsd serves on: health, the refused requests as first issued, a new
    // connection.
    f.clear();
    assert_eq!(f.healthz().0, 200);
    let other_cert = other.enroll(&other_client).unwrap();
    assert!(other_cert.newly_issued);
    assert_eq!(psk_client.psk(&owned.serial).unwrap().len(), 32);
    assert_eq!(fresh.health().unwrap()["status"], "ok");
    let records = f.audit();
    assert_eq!(
        results(&records, "certificate.issue", &other.serial),
        ["token_unavailable", "ok"]
    );
    let mut psk_results = psk_refusal_records("token_unavailable");
    psk_results.push("ok".into());
    assert_eq!(
        results(&records, "secret.issue", &owned.serial),
        psk_results
    );
    assert_eq!(results(&records, "certificate.issue", &slow.serial), ["ok"]);
    assert_eq!(f.injected().len(), 1, "one delay, no other fault");
    assert_signed_by_token(&f.a, &[owned_cert, slow_cert, other_cert]);
    f.stop_and_verify_audit();
}

/// What a table row asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ask {
    /// A new device certificate (its own new device).
    Issue,
    /// The PSK of a device certified before the faults (its own device).
    Psk,
    /// `/healthz` on the publication port.
    Health,
}

#[test]
fn table_of_token_faults_each_refused_with_its_code_and_nothing_but_its_audit_record() {
    let f = Faulty::start(Settings {
        pool_size: 4,
        acquire_timeout_ms: 2000,
    });
    let tmp = f.a.tmp.path().to_owned();
    let st = f.station();
    // (plan, what is asked, status, code)
    let rows: &[(&str, Ask, u16, &str)] = &[
        (
            "C_Sign CKR_DEVICE_ERROR",
            Ask::Issue,
            503,
            "token_unavailable",
        ),
        (
            "C_Sign CKR_DEVICE_REMOVED",
            Ask::Issue,
            503,
            "token_unavailable",
        ),
        (
            "C_SignInit CKR_TOKEN_NOT_PRESENT",
            Ask::Issue,
            503,
            "token_unavailable",
        ),
        // Every session lost, past the retries.
        (
            "C_Sign CKR_SESSION_HANDLE_INVALID",
            Ask::Issue,
            503,
            "token_unavailable",
        ),
        // Slow, then failing.
        (
            "C_Sign delay_ms=100 CKR_DEVICE_ERROR",
            Ask::Issue,
            503,
            "token_unavailable",
        ),
        // The certificate serial number from the token RNG.
        (
            "C_GenerateRandom CKR_DEVICE_ERROR",
            Ask::Issue,
            503,
            "token_unavailable",
        ),
        // The sessions die and no new one opens.
        (
            "C_GenerateRandom CKR_SESSION_HANDLE_INVALID count=1\nC_OpenSession CKR_DEVICE_ERROR",
            Ask::Issue,
            503,
            "token_unavailable",
        ),
        // The sessions die, and with the last one the login; logging in fails.
        (
            "C_GenerateRandom CKR_SESSION_HANDLE_INVALID count=1\nC_Login CKR_DEVICE_REMOVED",
            Ask::Issue,
            503,
            "token_unavailable",
        ),
        // README: any other PKCS#11 failure is final, not retried.
        ("C_Sign CKR_GENERAL_ERROR", Ask::Issue, 500, "token_error"),
        (
            "C_GenerateRandom CKR_DEVICE_ERROR",
            Ask::Psk,
            503,
            "token_unavailable",
        ),
        // The PSK sealed under the escrow KEK, and the seal opened to check it.
        (
            "C_Encrypt CKR_DEVICE_ERROR",
            Ask::Psk,
            503,
            "token_unavailable",
        ),
        (
            "C_Decrypt CKR_DEVICE_REMOVED",
            Ask::Psk,
            503,
            "token_unavailable",
        ),
        (
            "C_FindObjectsInit CKR_DEVICE_ERROR",
            Ask::Health,
            503,
            "token_unavailable",
        ),
    ];
    let devices: Vec<Device> = (0..rows.len())
        .map(|i| device(&tmp, "COMM", 100 + i as u32))
        .collect();
    let mut issued = Vec::new();
    for ((_, ask, ..), d) in rows.iter().zip(&devices) {
        if *ask == Ask::Psk {
            issued.push(d.enroll(&st).unwrap());
        }
    }

    for (i, ((plan, ask, status, code), d)) in rows.iter().zip(&devices).enumerate() {
        let row = format!("row {i} ({plan:?}, {ask:?})");
        let (records, faults) = (f.audit().len(), f.injected().len());
        f.plan(&format!("{plan}\n"));
        let got = match ask {
            Ask::Issue => refusal(d.enroll(&st)),
            Ask::Psk => refusal(st.psk(&d.serial)),
            Ask::Health => {
                let (s, body) = f.healthz();
                (s, body["error"]["code"].as_str().unwrap_or("").to_owned())
            }
        };
        f.clear();
        assert_eq!(got, (*status, (*code).to_owned()), "{row}");
        assert!(f.injected().len() > faults, "{row}: nothing injected");
        // One audit record, the refusal's; none for the health check.
        let new: Vec<(String, String, String)> = f.audit()[records..]
            .iter()
            .map(|r| {
                (
                    r["op"].as_str().unwrap().to_owned(),
                    r["subject"].as_str().unwrap().to_owned(),
                    r["result"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let expected = match ask {
            Ask::Issue => vec![("certificate.issue".into(), d.serial.clone(), (*code).into())],
            Ask::Psk => psk_refusal_records(code)
                .into_iter()
                .map(|c| ("secret.issue".into(), d.serial.clone(), c))
                .collect(),
            Ask::Health => vec![],
        };
        assert_eq!(new, expected, "{row}");
    }

    // Nothing was stored by any refusal: each device gets its certificate
    // or its PSK now, as the first.
    for ((_, ask, ..), d) in rows.iter().zip(&devices) {
        match ask {
            Ask::Issue => {
                let e = d.enroll(&st).unwrap();
                assert!(e.newly_issued, "{}", d.serial);
                issued.push(e);
            }
            Ask::Psk => assert_eq!(st.psk(&d.serial).unwrap().len(), 32),
            Ask::Health => assert_eq!(f.healthz().0, 200),
        }
    }
    assert_signed_by_token(&f.a, &issued);
    f.stop_and_verify_audit();
}

#[test]
fn a_token_that_does_not_answer_the_health_check_in_5_s_is_503_not_a_hang() {
    // README: /healthz answers 503 token_unavailable when the token does not
    // answer within the health check's 5 s. The token here takes 9 s once.
    const DELAY_MS: u64 = 9000;
    let f = Faulty::start(Settings {
        pool_size: 4,
        acquire_timeout_ms: 2000,
    });
    f.plan(&format!("C_FindObjectsInit delay_ms={DELAY_MS} count=1\n"));
    let t = Instant::now();
    let (status, health) = f.healthz();
    let took = t.elapsed();
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["error"]["code"], "token_unavailable");
    assert!(
        health["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not answer within 5000 ms"),
        "{health}"
    );
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_millis(DELAY_MS),
        "{took:?}"
    );
    assert_eq!(
        f.injected(),
        [format!("C_FindObjectsInit delay_ms={DELAY_MS}")]
    );
    // The other sessions serve meanwhile, and the slow one comes back.
    let st = f.station();
    let d = device(f.a.tmp.path(), "CPU", 20);
    let issued = d.enroll(&st).unwrap();
    assert!(issued.newly_issued);
    f.clear();
    assert_eq!(f.healthz().0, 200);
    assert_signed_by_token(&f.a, &[issued]);
    f.stop_and_verify_audit();
}

#[test]
fn a_refused_pin_is_never_presented_again_until_restart() {
    let mut f = Faulty::start(Settings {
        pool_size: 4,
        acquire_timeout_ms: 2000,
    });
    let tmp = f.a.tmp.path().to_owned();
    let st = f.station();
    let (d1, d2) = (device(&tmp, "CPU", 30), device(&tmp, "CPU", 31));
    // The sessions die, and with the last one the login; the token then
    // refuses the PIN.
    f.plan("C_GenerateRandom CKR_SESSION_HANDLE_INVALID count=1\nC_Login CKR_PIN_INCORRECT\n");
    assert_eq!(refusal(d1.enroll(&st)), (503, "token_pin_rejected".into()));
    assert_eq!(
        f.injected(),
        [
            "C_GenerateRandom CKR_SESSION_HANDLE_INVALID",
            "C_Login CKR_PIN_INCORRECT"
        ]
    );
    // From now on every call fails fast without presenting the PIN again
    // (the plan now only logs each C_Login that reaches the token), so the
    // appliance cannot lock it: not when the token is fine again either.
    f.plan("C_Login delay_ms=1\n");
    assert_eq!(refusal(d2.enroll(&st)), (503, "token_pin_rejected".into()));
    let (status, health) = f.healthz();
    assert_eq!(
        (status, health["error"]["code"].as_str()),
        (503, Some("token_pin_rejected"))
    );
    assert_eq!(f.injected().len(), 2, "the PIN was presented again");
    f.clear();
    assert_eq!(
        results(&f.audit(), "certificate.issue", &d1.serial),
        ["token_pin_rejected"]
    );
    // A restart logs in afresh and serves. (The stop itself cannot sign its
    // final checkpoint, the PIN being refused: the restart's does.)
    let _ = f.a.stop();
    f.a.restart();
    let st = f.station();
    let (e1, e2) = (d1.enroll(&st).unwrap(), d2.enroll(&st).unwrap());
    assert!(e1.newly_issued && e2.newly_issued);
    assert_signed_by_token(&f.a, &[e1, e2]);
    f.stop_and_verify_audit();
}

#[test]
fn sigterm_does_not_wait_for_a_token_call_that_does_not_return() {
    const DELAY_MS: u64 = 30_000;
    let mut f = Faulty::start(Settings {
        pool_size: 4,
        acquire_timeout_ms: 2000,
    });
    f.a.stop();
    edit_file(
        &f.a.dir.join("kmsd.toml"),
        "[server]\n",
        "[server]\nshutdown_grace_ms = 500\n",
    );
    f.a.restart();
    let st = f.station();
    let d = device(f.a.tmp.path(), "CPU", 40);
    f.plan(&format!("C_Sign delay_ms={DELAY_MS} count=1\n"));
    std::thread::scope(|s| {
        let stuck = s.spawn(|| d.enroll(&st));
        // Wait until the request is inside the slow C_Sign.
        let deadline = Instant::now() + Duration::from_secs(10);
        while f.injected().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the request never reached C_Sign"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let t = Instant::now();
        let status = f.a.stop();
        let took = t.elapsed();
        // The grace period, the final checkpoint and the exit: far less
        // than the token call still under way.
        assert!(took < Duration::from_millis(DELAY_MS / 3), "{took:?}");
        assert!(status.success(), "{status:?}");
        assert!(
            stuck.join().unwrap().is_err(),
            "the stuck request was answered"
        );
    });
    // Nothing was issued, and the log is whole.
    f.clear();
    let v = json(&ok(f.a.kmsctl(&["--json", "audit", "verify"])));
    assert_eq!(v["records"], v["checkpointed"], "{v}");
    assert!(results(&f.audit(), "certificate.issue", &d.serial).is_empty());
}
