//! `station provision` over PKCS#11 and over a serial line against the real
//! `kmsd`: SoftHSM2 tokens stand in for the devices' secure elements and
//! `vbus-devsim` on a pty for modules on a UART; `pkcs11-tool`, `openssl`
//! and the simulator's state file are the outside witnesses, and faults
//! (the device vanishing at each step, the appliance refusing, a key
//! already there, a second run, a corrupting line) each end in a clear
//! state that a re-run completes. `station provision-batch` drives several
//! simulators at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use softhsm_tests::{bin, ok, run, Running, SoftHsm, MODULE, USER_PIN};
use station::device::pkcs11::Pkcs11Device;
use station::device::{DeviceLink, DeviceStatus};
use station::provision::{provision, ProvisionOptions};
use station::serial::{SerialDevice, SerialOptions};

/// Device tokens, all in one SoftHSM2 config (this process reads its
/// config once, for the in-process fault cases).
struct Devices {
    hsm: SoftHsm,
}

impl Devices {
    fn new() -> Self {
        Devices {
            hsm: SoftHsm::new("dev-0000"),
        }
    }

    /// A fresh token labelled `label`; its directory.
    fn add(&self, label: &str) -> PathBuf {
        self.hsm.init_token(label)
    }

    fn uri(&self, label: &str) -> String {
        format!(
            "pkcs11:token={label}?module-path={MODULE}&pin-source={}",
            self.hsm.pin_file().display()
        )
    }

    /// `pkcs11-tool` on token `label`, logged in; (success, stdout+stderr).
    fn tool(&self, label: &str, args: &[&str]) -> (bool, String) {
        let out = run(self
            .hsm
            .command("pkcs11-tool")
            .args([
                "--module",
                MODULE,
                "--token-label",
                label,
                "--login",
                "--pin",
                USER_PIN,
            ])
            .args(args));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn objects(&self, label: &str) -> String {
        let (ok, text) = self.tool(label, &["--list-objects"]);
        assert!(ok, "{text}");
        text
    }
}

fn station(a: &Running, devs: &Devices, cred: &str, args: &[&str]) -> Output {
    run(Command::new(bin("station"))
        .env("SOFTHSM2_CONF", devs.hsm.conf())
        .arg("--url")
        .arg(a.url(""))
        .arg("--credential")
        .arg(a.credential(cred))
        .args(args))
}

fn provision_cli(
    a: &Running,
    devs: &Devices,
    cred: &str,
    serial: &str,
    label: &str,
    extra: &[&str],
) -> Output {
    let uri = devs.uri(label);
    let mut args = vec!["provision", "--serial", serial, "--device", &uri];
    args.extend_from_slice(extra);
    station(a, devs, cred, &args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// How many certificates the appliance issued for `serial`.
fn certificates(a: &Running, serial: &str) -> usize {
    let (status, body) = a.curl(
        Some("stations/station-01"),
        &format!("/v1/devices/{serial}"),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["certificates"].as_array().unwrap().len()
}

/// Count of `pkcs11-tool --list-objects` entries of one kind.
fn count(listing: &str, kind: &str) -> usize {
    listing.lines().filter(|l| l.starts_with(kind)).count()
}

const RECORD: &str = r#"{"firmware_version":"1.4.2","operator":"op-7","steps":[{"name":"flash","passed":true}],"component_lots":[{"component":"mcu","lot":"L1"}]}"#;

#[test]
fn provisions_a_pkcs11_device_and_a_second_run_changes_nothing() {
    let a = Running::start();
    let devs = Devices::new();
    devs.add("dev-0001");
    let serial = "VBUS-CPU-2412-000101";
    let record = a.tmp.path().join("record.json");
    std::fs::write(&record, RECORD).unwrap();
    let rec = record.to_str().unwrap();

    let out = provision_cli(
        &a,
        &devs,
        "stations/station-01",
        serial,
        "dev-0001",
        &["--psk", "--record", rec],
    );
    let text = ok(out);
    assert!(text.contains(&format!("{serial}: provisioned")), "{text}");
    for step in [
        "key          done",
        "certificate  done",
        "write        done",
        "psk          done",
        "lock         done",
        "record       done",
    ] {
        assert!(text.contains(step), "{step}: {text}");
    }
    // The UUID is the documented formula of the token serial (the UID).
    let objects = devs.objects("dev-0001");

    // Witness: the private key is sensitive and never extractable.
    let private = objects.split("Private Key Object").nth(1).unwrap();
    let private = private.split("Object;").next().unwrap();
    assert!(private.contains("label:      vbus-identity"), "{objects}");
    assert!(private.contains("sensitive"), "{objects}");
    assert!(private.contains("never extractable"), "{objects}");
    let key_id = private
        .lines()
        .find(|l| l.trim_start().starts_with("ID:"))
        .unwrap()
        .trim()
        .to_owned();
    let cert_part = objects
        .split("Certificate Object")
        .find(|p| p.contains("label:      vbus-identity"))
        .unwrap();
    assert!(
        cert_part.contains(&key_id),
        "certificate ID != key ID ({key_id}): {objects}"
    );
    assert_eq!(count(&objects, "Private Key Object"), 1, "{objects}");
    assert_eq!(count(&objects, "Certificate Object"), 3, "{objects}");

    // Witness: the certificate read back verifies with the chain read back.
    let dir = a.tmp.path();
    for (label, file) in [
        ("vbus-identity", "leaf.der"),
        ("vbus-ca-1", "ca1.der"),
        ("vbus-ca-2", "ca2.der"),
    ] {
        let path = dir.join(file);
        let (ok_, t) = devs.tool(
            "dev-0001",
            &[
                "--read-object",
                "--type",
                "cert",
                "--label",
                label,
                "--output-file",
                path.to_str().unwrap(),
            ],
        );
        assert!(ok_, "{t}");
        let pem = run(Command::new("openssl")
            .args(["x509", "-inform", "DER", "-in"])
            .arg(&path)
            .arg("-out")
            .arg(path.with_extension("pem")));
        assert!(pem.status.success(), "{}", stderr(&pem));
    }
    let verify = run(Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(dir.join("ca2.pem"))
        .arg("-untrusted")
        .arg(dir.join("ca1.pem"))
        .arg(dir.join("leaf.pem")));
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        stderr(&verify)
    );
    // The device root is the appliance's root.
    let root = std::fs::read_to_string(a.dir.join("ca/root.pem")).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("ca2.pem")).unwrap().trim(),
        root.trim()
    );

    // Witness: the PSK is there and cannot be read.
    assert!(objects.contains("Secret Key Object"), "{objects}");
    assert!(objects.contains("label:      psk"), "{objects}");
    let (read, t) = devs.tool(
        "dev-0001",
        &[
            "--read-object",
            "--type",
            "secrkey",
            "--label",
            "psk",
            "--output-file",
            dir.join("psk.bin").to_str().unwrap(),
        ],
    );
    assert!(!read, "the PSK could be read: {t}");
    assert!(std::fs::read(dir.join("psk.bin"))
        .map(|b| b.is_empty())
        .unwrap_or(true));

    // Second run: nothing changes, and it says so.
    let again = ok(provision_cli(
        &a,
        &devs,
        "stations/station-01",
        serial,
        "dev-0001",
        &["--psk", "--record", rec],
    ));
    assert!(
        again.contains("already provisioned; nothing changed"),
        "{again}"
    );
    assert!(!again.contains(" done "), "{again}");
    assert_eq!(devs.objects("dev-0001"), objects);
    assert_eq!(certificates(&a, serial), 1);
    let (_, body) = a.curl(
        Some("stations/station-01"),
        &format!("/v1/devices/{serial}"),
        &[],
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["records"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(v["hw_uuid"].as_str().unwrap().len(), 36);
}

/// A device link that vanishes (its token directory moved away) right
/// after one operation succeeds.
struct Vanishing {
    inner: Pkcs11Device,
    after: &'static str,
    token_dir: PathBuf,
    moved: PathBuf,
}

impl Vanishing {
    fn done(&mut self, op: &str) {
        if op == self.after && self.token_dir.exists() {
            std::fs::rename(&self.token_dir, &self.moved).unwrap();
        }
    }
}

impl DeviceLink for Vanishing {
    fn uid(&mut self) -> Result<Vec<u8>, station::Error> {
        self.inner.uid()
    }
    fn status(&mut self) -> Result<DeviceStatus, station::Error> {
        self.inner.status()
    }
    fn generate_key(&mut self) -> Result<Vec<u8>, station::Error> {
        let r = self.inner.generate_key();
        self.done("generate_key");
        r
    }
    fn sign(&mut self, m: &[u8]) -> Result<Vec<u8>, station::Error> {
        let r = self.inner.sign(m);
        self.done("sign");
        r
    }
    fn put_certificates(&mut self, c: &[u8], chain: &[Vec<u8>]) -> Result<(), station::Error> {
        let r = self.inner.put_certificates(c, chain);
        self.done("put_certificates");
        r
    }
    fn put_secret(&mut self, name: &str, s: &[u8]) -> Result<(), station::Error> {
        // Vanishes before the write: the PSK was fetched and is lost.
        self.done("before_put_secret");
        self.inner.put_secret(name, s)
    }
    fn lock(&mut self) -> Result<(), station::Error> {
        self.inner.lock()
    }
}

#[test]
fn faults_end_in_a_clear_state_and_a_rerun_completes() {
    let a = Running::start();
    let devs = Devices::new();
    devs.hsm.export_env();
    let cred = station::Credential::from_dir(&a.credential("stations/station-01")).unwrap();
    let client = station::Client::new(&a.url(""), &cred).unwrap();

    // (vanish after, serial, token, what the re-run needs first)
    let cases = [
        ("generate_key", "VBUS-CPU-2412-000201", "dev-0201"),
        ("sign", "VBUS-CPU-2412-000202", "dev-0202"),
        ("put_certificates", "VBUS-CPU-2412-000203", "dev-0203"),
        ("before_put_secret", "VBUS-CPU-2412-000204", "dev-0204"),
    ];
    let mut dirs = Vec::new();
    for (_, _, label) in &cases {
        dirs.push(devs.add(label));
    }
    for ((after, serial, label), token_dir) in cases.iter().zip(dirs) {
        let moved = token_dir.with_extension("gone");
        let mut dev = Vanishing {
            inner: Pkcs11Device::open(&devs.uri(label)).unwrap(),
            after,
            token_dir: token_dir.clone(),
            moved: moved.clone(),
        };
        let opts = ProvisionOptions {
            serial: serial.to_string(),
            psk: true,
            record: None,
        };
        let err = provision(&mut dev, &client, &opts, &mut |_| {}).unwrap_err();
        let msg = err.to_string();
        drop(dev);
        std::fs::rename(&moved, &token_dir).unwrap();
        if *after == "before_put_secret" {
            // The device went away with the write: nobody can tell whether
            // the PSK landed, so no rotation is suggested yet.
            assert_eq!(err.code(), "provision_stopped", "{after}: {msg}");
            assert!(
                msg.contains("run provisioning again before anyone allows a rotation"),
                "{msg}"
            );
            // The re-run sees it did not land, and stops: never a second PSK
            // without an officer.
            let o = provision_cli(&a, &devs, "stations/station-01", serial, label, &["--psk"]);
            assert!(!o.status.success());
            assert!(
                stderr(&o).starts_with("error[provision_stopped]"),
                "{}",
                stderr(&o)
            );
            assert!(
                stderr(&o).contains("officer must allow a rotation"),
                "{}",
                stderr(&o)
            );
            ok(a.kmsctl(&["escrow", "allow-rotation", serial, "--purpose", "psk"]));
        } else {
            assert_eq!(err.code(), "device_unreachable", "{after}: {msg}");
            assert!(msg.contains("device"), "{msg}");
        }
        let out = provision_cli(&a, &devs, "stations/station-01", serial, label, &["--psk"]);
        let text = ok(out);
        assert!(
            text.contains(&format!("{serial}: provisioned")),
            "{after}: {text}"
        );
        assert_eq!(certificates(&a, serial), 1, "{after}");
        let objects = devs.objects(label);
        assert_eq!(
            count(&objects, "Private Key Object"),
            1,
            "{after}: {objects}"
        );
        assert_eq!(
            count(&objects, "Secret Key Object"),
            1,
            "{after}: {objects}"
        );
        assert_eq!(
            count(&objects, "Certificate Object"),
            3,
            "{after}: {objects}"
        );
    }
}

#[test]
fn the_appliance_refusing_leaves_only_the_key_which_a_rerun_reuses() {
    let a = Running::start();
    let devs = Devices::new();
    devs.add("dev-0301");
    let serial = "VBUS-CPU-2412-000301";
    // A station allowed PERIPH only asks for a CPU module.
    let dir = a.tmp.path().join("station-peri");
    ok(a.kmsctl(&[
        "station",
        "add",
        "station-peri",
        "--modules",
        "PERIPH",
        "--out",
        dir.to_str().unwrap(),
    ]));
    let o = run(Command::new(bin("station"))
        .env("SOFTHSM2_CONF", devs.hsm.conf())
        .args(["--url", &a.url(""), "--credential"])
        .arg(&dir)
        .args([
            "provision",
            "--serial",
            serial,
            "--device",
            &devs.uri("dev-0301"),
            "--psk",
        ]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).starts_with("error[module_not_allowed]"),
        "{}",
        stderr(&o)
    );
    let objects = devs.objects("dev-0301");
    assert_eq!(count(&objects, "Private Key Object"), 1, "{objects}");
    assert_eq!(count(&objects, "Certificate Object"), 0, "{objects}");
    assert_eq!(count(&objects, "Secret Key Object"), 0, "{objects}");
    assert_eq!(count(&objects, "Data object"), 0, "{objects}");

    // The re-run with a station allowed the type reuses the key.
    let text = ok(provision_cli(
        &a,
        &devs,
        "stations/station-01",
        serial,
        "dev-0301",
        &["--psk"],
    ));
    assert!(text.contains("key          already"), "{text}");
    let after = devs.objects("dev-0301");
    assert_eq!(count(&after, "Private Key Object"), 1, "{after}");
    assert_eq!(certificates(&a, serial), 1);

    // A device that is neither a pkcs11: URI nor a tty is refused, and a
    // tty that is not there is unreachable, both clearly.
    let o = provision_cli(&a, &devs, "stations/station-01", serial, "x", &[]);
    assert!(!o.status.success());
    let o = station(
        &a,
        &devs,
        "stations/station-01",
        &["provision", "--serial", serial, "--device", "/dev/ttyUSB0"],
    );
    assert!(
        stderr(&o).starts_with("error[device_unreachable]: ")
            && stderr(&o).contains("/dev/ttyUSB0: open: No such file"),
        "{}",
        stderr(&o)
    );
}

/// A running `vbus-devsim`, killed when dropped.
struct Devsim {
    child: Child,
    tty: String,
}

impl Drop for Devsim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `vbus-devsim --state STATE --uid UID EXTRA…`, once it printed its tty.
fn devsim(state: &Path, uid: &str, extra: &[&str]) -> Devsim {
    let mut child = Command::new(bin("vbus-devsim"))
        .arg("--state")
        .arg(state)
        .args(["--uid", uid])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // The guard first: a simulator that fails to start is still killed.
    let mut sim = Devsim {
        child,
        tty: String::new(),
    };
    // Both lines read before the pipe closes: the simulator stops on a
    // write to a closed standard output.
    let mut uid_seen = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(tty) = line.strip_prefix("VBUS_DEVSIM_TTY=") {
            sim.tty = tty.to_owned();
        }
        uid_seen |= line.starts_with("VBUS_DEVSIM_UID=");
        if uid_seen && !sim.tty.is_empty() {
            break;
        }
    }
    assert!(!sim.tty.is_empty(), "vbus-devsim {extra:?} printed no tty");
    sim
}

/// Serial timeouts short enough for a silent device to fail quickly.
const FAST: [&str; 4] = ["--serial-timeout", "400", "--serial-slow-timeout", "4000"];

fn station_cli(a: &Running, args: &[&str]) -> Output {
    run(Command::new(bin("station"))
        .arg("--url")
        .arg(a.url(""))
        .arg("--credential")
        .arg(a.credential("stations/station-01"))
        .args(args))
}

fn provision_serial(a: &Running, serial: &str, tty: &str) -> Output {
    let device = format!("serial:{tty}");
    let mut args = vec![
        "provision",
        "--serial",
        serial,
        "--device",
        &device,
        "--psk",
    ];
    args.extend(FAST);
    station_cli(a, &args)
}

/// The simulator's state file (its device's storage, read from outside).
fn devsim_state(state: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(state.join("devsim-state.json")).unwrap())
        .unwrap()
}

/// What the device holds, read over the line (GET_PUBKEY and STATUS).
fn device_status(tty: &str) -> (Vec<u8>, DeviceStatus) {
    let mut dev = SerialDevice::open_with(
        tty,
        SerialOptions {
            timeout: Duration::from_millis(1000),
            ..SerialOptions::default()
        },
    )
    .unwrap();
    let key = dev.public_key().unwrap().unwrap();
    (key, dev.status().unwrap())
}

/// The appliance issued one certificate for `serial` (its serial number,
/// lowercase hex), and the device on `tty` (state in `state`) holds it:
/// the certificate in the state file is the one of that serial number,
/// certifies the key the device reports, and verifies with `openssl
/// verify` against the appliance's CA files; the device holds the PSK and
/// is locked; the appliance refuses a second PSK.
fn assert_serial_device_provisioned(a: &Running, serial: &str, tty: &str, state: &Path) {
    use der::{Decode as _, Encode as _};
    assert_eq!(certificates(a, serial), 1, "{serial}");
    let (_, body) = a.curl(
        Some("stations/station-01"),
        &format!("/v1/devices/{serial}"),
        &[],
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    let issued = v["certificates"][0]["serial_number"]
        .as_str()
        .unwrap()
        .to_lowercase()
        .replace(':', "");
    let st = devsim_state(state);
    let leaf_der = hex::decode(st["certificate"].as_str().unwrap()).unwrap();
    let leaf = x509_cert::Certificate::from_der(&leaf_der).unwrap();
    assert_eq!(
        hex::encode(leaf.tbs_certificate.serial_number.as_bytes()).trim_start_matches('0'),
        issued.trim_start_matches('0'),
        "{serial}: the device's certificate is not the one the appliance issued"
    );
    let (key, status) = device_status(tty);
    assert_eq!(
        leaf.tbs_certificate
            .subject_public_key_info
            .to_der()
            .unwrap(),
        key,
        "{serial}: the certificate does not certify the device's key"
    );
    assert_eq!(status.certificate.as_deref(), Some(&leaf_der[..]));
    assert_eq!(status.secrets, vec!["psk".to_owned()], "{serial}");
    assert!(status.locked, "{serial}");
    // openssl, the outside witness: the certificate read from the device
    // verifies against the appliance's root and intermediate
    let dir = state.with_extension("witness");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("leaf.der"), &leaf_der).unwrap();
    let pem = run(Command::new("openssl")
        .args(["x509", "-inform", "DER", "-in"])
        .arg(dir.join("leaf.der"))
        .arg("-out")
        .arg(dir.join("leaf.pem")));
    assert!(pem.status.success(), "{}", stderr(&pem));
    let verify = run(Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(a.dir.join("ca/root.pem"))
        .arg("-untrusted")
        .arg(a.dir.join("ca/intermediate.pem"))
        .arg(dir.join("leaf.pem")));
    assert!(
        verify.status.success(),
        "{serial}: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        stderr(&verify)
    );
    // the chain stored with it is the appliance's
    let chain = st["chain"].as_array().unwrap();
    assert_eq!(chain.len(), 2, "{serial}");
    // the PSK was issued once: a second request is refused
    let o = station_cli(
        a,
        &[
            "psk",
            "--serial",
            serial,
            "--out",
            dir.join("psk-again").to_str().unwrap(),
        ],
    );
    assert!(
        stderr(&o).starts_with("error[psk_already_issued]"),
        "{serial}: {}",
        stderr(&o)
    );
}

/// `secret.issue` `ok` records per subject, from `kmsctl audit show` (kmsd
/// stopped).
fn psk_issuances(a: &Running, serial: &str) -> usize {
    ok(a.kmsctl(&["audit", "show"]))
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| {
            r["op"] == "secret.issue"
                && r["subject"] == serial
                && r["result"] == "ok"
                && r["details"]["purpose"] == "psk"
        })
        .count()
}

#[test]
fn provisions_a_serial_device_and_a_second_run_changes_nothing() {
    let mut a = Running::start();
    let serial = "VBUS-CPU-2412-000501";
    let state = a.tmp.path().join("devsim-501");
    let sim = devsim(&state, "0011223344556677", &[]);

    let text = ok(provision_serial(&a, serial, &sim.tty));
    assert!(text.contains(&format!("{serial}: provisioned")), "{text}");
    for step in [
        "key          done",
        "certificate  done",
        "write        done",
        "psk          done",
        "lock         done",
    ] {
        assert!(text.contains(step), "{step}: {text}");
    }
    assert_serial_device_provisioned(&a, serial, &sim.tty, &state);

    let before = std::fs::read(state.join("devsim-state.json")).unwrap();
    let again = ok(provision_serial(&a, serial, &sim.tty));
    assert!(
        again.contains("already provisioned; nothing changed"),
        "{again}"
    );
    assert!(!again.contains(" done "), "{again}");
    assert_eq!(
        std::fs::read(state.join("devsim-state.json")).unwrap(),
        before
    );
    assert_eq!(certificates(&a, serial), 1);
    drop(sim);
    a.stop();
    assert_eq!(psk_issuances(&a, serial), 1);
}

#[test]
fn a_serial_device_that_loses_power_at_any_step_is_finished_by_a_rerun() {
    let mut a = Running::start();
    // Requests of a whole run: 1 GET_UID, 2 STATUS, 3 GEN_KEY, 4 STATUS,
    // 5 SIGN, 6 PUT_CERT, 7 STATUS, 8 GET_UID, 9 STATUS, 10 PUT_SECRET,
    // 11 STATUS, 12 GET_UID, 13 STATUS, 14 LOCK, 15 STATUS (the GET_UID +
    // STATUS pairs check the same device is still on the line).
    // --fail-after N answers N of them.
    // (N, what the device holds when it goes silent)
    // (N, when it goes silent, what its storage holds then: key,
    // certificate, PSK)
    let rows: [(u64, &str, [bool; 3]); 4] = [
        (
            3,
            "after key generation, before enrolment",
            [true, false, false],
        ),
        (
            6,
            "after the certificate write, before its read-back",
            [true, true, false],
        ),
        (7, "before the PSK is asked for", [true, true, false]),
        (
            10,
            "after the PSK is written, before its read-back",
            [true, true, true],
        ),
    ];
    let mut serials = Vec::new();
    for (i, (n, what, held)) in rows.iter().enumerate() {
        let serial = format!("VBUS-CPU-2412-00061{i}");
        let uid = format!("a1a2a3a4a5a6a7{i:02}");
        let state = a.tmp.path().join(format!("devsim-61{i}"));
        let n_s = n.to_string();
        let sim = devsim(&state, &uid, &["--fail-after", &n_s]);
        let started = Instant::now();
        let o = provision_serial(&a, &serial, &sim.tty);
        let took = started.elapsed();
        assert!(!o.status.success(), "{what}: {}", stderr(&o));
        assert!(
            stderr(&o).starts_with("error[device_unreachable]: "),
            "{what}: {}",
            stderr(&o)
        );
        // 4 attempts of 400 ms at the silent request, plus the rest
        assert!(took < Duration::from_secs(15), "{what}: {took:?}");
        drop(sim);
        let st = devsim_state(&state);
        let now = [
            !st["key"].is_null(),
            !st["certificate"].is_null(),
            st["secrets"].get("psk").is_some(),
        ];
        assert_eq!(now, *held, "{what}");
        assert_eq!(st["locked"], false, "{what}");

        // power back, same storage: the re-run finishes the job
        let sim = devsim(&state, &uid, &[]);
        let text = ok(provision_serial(&a, &serial, &sim.tty));
        assert!(
            text.contains(&format!("{serial}: provisioned")),
            "{what}: {text}"
        );
        assert_serial_device_provisioned(&a, &serial, &sim.tty, &state);
        serials.push(serial);
    }

    // a line that damages every third reply: retried, and it completes
    let serial = "VBUS-CPU-2412-000620";
    let state = a.tmp.path().join("devsim-620");
    let sim = devsim(&state, "b1b2b3b4b5b6b7b8", &["--corrupt-every", "3"]);
    let text = ok(provision_serial(&a, serial, &sim.tty));
    assert!(text.contains(&format!("{serial}: provisioned")), "{text}");
    assert_serial_device_provisioned(&a, serial, &sim.tty, &state);
    serials.push(serial.to_owned());
    drop(sim);

    // the audit log: one PSK issued per device, never a second
    a.stop();
    for serial in &serials {
        assert_eq!(psk_issuances(&a, serial), 1, "{serial}");
    }
}

/// The summary table's row of `serial`.
fn summary_row<'t>(text: &'t str, serial: &str) -> &'t str {
    let table = text.rsplit_once("\nserial ").unwrap().1;
    table
        .lines()
        .find(|l| l.starts_with(serial))
        .unwrap_or_else(|| panic!("no row for {serial}: {text}"))
}

#[test]
fn provision_batch_drives_several_serial_devices_and_resumes_the_failed_one() {
    let a = Running::start();
    let mut sims = Vec::new();
    let mut list = String::from("# four simulators\n\n");
    let serials: Vec<String> = (0..4).map(|i| format!("VBUS-CPU-2412-00070{i}")).collect();
    let states: Vec<PathBuf> = (0..4)
        .map(|i| a.tmp.path().join(format!("devsim-70{i}")))
        .collect();
    for i in 0..4 {
        let uid = format!("c1c2c3c4c5c6c7{i:02}");
        // the third loses power after writing its certificate
        let extra: &[&str] = if i == 2 { &["--fail-after", "6"] } else { &[] };
        let sim = devsim(&states[i], &uid, extra);
        list.push_str(&format!("{} serial:{}\n", serials[i], sim.tty));
        sims.push(sim);
    }
    let file = a.tmp.path().join("devices.txt");
    std::fs::write(&file, &list).unwrap();
    let mut args = vec![
        "provision-batch",
        "--devices",
        file.to_str().unwrap(),
        "--psk",
    ];
    args.extend(FAST);

    let o = station_cli(&a, &args);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(1), "{text}{}", stderr(&o));
    // plain progress (stdout is not a terminal): one line per step
    assert!(
        text.contains(&format!("{}  write        done", serials[0])),
        "{text}"
    );
    for i in [0, 1, 3] {
        let row = summary_row(&text, &serials[i]);
        assert!(row.contains(" provisioned "), "{row}");
        assert!(!row.contains("already"), "{row}");
    }
    let row = summary_row(&text, &serials[2]);
    assert!(row.contains(" failed "), "{row}");
    assert!(row.contains(" write "), "{row}");
    assert!(row.contains("error[device_unreachable]: "), "{row}");
    assert!(
        text.contains("4 devices: 3 provisioned, 0 already provisioned, 1 failed"),
        "{text}"
    );

    // the failed one's power back, same storage; the batch again
    let uid = "c1c2c3c4c5c6c702";
    sims[2] = devsim(&states[2], uid, &[]);
    let list: String = serials
        .iter()
        .zip(&sims)
        .map(|(s, sim)| format!("{s} /dev/{}\n", sim.tty.trim_start_matches("/dev/")))
        .collect();
    std::fs::write(&file, list).unwrap();
    args.push("--json");
    let o = station_cli(&a, &args);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{out}{}", stderr(&o));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["provisioned"], 1, "{out}");
    assert_eq!(v["already_provisioned"], 3, "{out}");
    assert_eq!(v["failed"], 0, "{out}");
    for (i, d) in v["devices"].as_array().unwrap().iter().enumerate() {
        assert_eq!(d["serial"], serials[i].as_str(), "{out}");
        let want = if i == 2 {
            "provisioned"
        } else {
            "already_provisioned"
        };
        assert_eq!(d["outcome"], want, "{out}");
    }
    for i in 0..4 {
        assert_serial_device_provisioned(&a, &serials[i], &sims[i].tty, &states[i]);
    }
}

#[test]
fn an_appliance_that_is_down_mid_way_leaves_a_state_a_rerun_finishes() {
    let mut a = Running::start();
    let serial = "VBUS-CPU-2412-000601";
    let state = a.tmp.path().join("devsim-601");
    let sim = devsim(&state, "8899aabbccddeeff", &[]);
    // The appliance goes away (stopped, as in a restart or a network
    // outage): the device gets its key, the enrolment cannot happen.
    a.stop();
    let o = provision_serial(&a, serial, &sim.tty);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.starts_with("error[transport_error]: "), "{err}");
    let (_, status) = device_status(&sim.tty);
    assert!(status.public_key.is_some());
    assert_eq!(status.certificate, None);
    assert!(status.secrets.is_empty() && !status.locked, "{status:?}");
    // Back: the re-run keeps the key and finishes, one certificate, one PSK.
    a.restart();
    let text = ok(provision_serial(&a, serial, &sim.tty));
    assert!(text.contains(&format!("{serial}: provisioned")), "{text}");
    assert!(text.contains("key          already"), "{text}");
    assert_serial_device_provisioned(&a, serial, &sim.tty, &state);
    assert_eq!(certificates(&a, serial), 1);
    drop(sim);
    a.stop();
    assert_eq!(psk_issuances(&a, serial), 1);
}

#[test]
fn a_station_over_its_quota_stops_with_the_appliance_code_and_only_the_key_on_the_device() {
    // The hourly window must not roll over mid-test: start well inside one.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if secs % 3600 > 3540 {
        std::thread::sleep(Duration::from_secs(3600 - secs % 3600 + 1));
    }
    let a = Running::start_with(|dir| {
        softhsm_tests::edit_file(
            &dir.join("policy.toml"),
            "modules = [\"CPU\", \"PWR\", \"PERIPH\", \"COMM\"]",
            "modules = [\"CPU\", \"PWR\", \"PERIPH\", \"COMM\"]\nper_hour = 1",
        );
    });
    let first = devsim(&a.tmp.path().join("devsim-701"), "0101010101010101", &[]);
    ok(provision_serial(&a, "VBUS-CPU-2412-000701", &first.tty));
    let second = devsim(&a.tmp.path().join("devsim-702"), "0202020202020202", &[]);
    let serial = "VBUS-CPU-2412-000702";
    let o = provision_serial(&a, serial, &second.tty);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.starts_with("error[quota_exceeded]: "), "{err}");
    let (_, status) = device_status(&second.tty);
    assert!(status.public_key.is_some());
    assert_eq!(status.certificate, None);
    assert!(status.secrets.is_empty() && !status.locked, "{status:?}");
    // Nothing at the appliance either.
    let (code, body) = a.curl(
        Some("stations/station-01"),
        &format!("/v1/devices/{serial}"),
        &[],
    );
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("device_not_found"), "{body}");
}

/// A fixture whose line reaches another board once `swap` is set: every
/// call from then on goes to `second`.
struct Swapped {
    first: Pkcs11Device,
    second: Pkcs11Device,
    swap: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Swapped {
    fn now(&mut self) -> &mut Pkcs11Device {
        if self.swap.load(std::sync::atomic::Ordering::SeqCst) {
            &mut self.second
        } else {
            &mut self.first
        }
    }
}

impl DeviceLink for Swapped {
    fn uid(&mut self) -> Result<Vec<u8>, station::Error> {
        self.now().uid()
    }
    fn status(&mut self) -> Result<DeviceStatus, station::Error> {
        self.now().status()
    }
    fn generate_key(&mut self) -> Result<Vec<u8>, station::Error> {
        self.now().generate_key()
    }
    fn sign(&mut self, m: &[u8]) -> Result<Vec<u8>, station::Error> {
        self.now().sign(m)
    }
    fn put_certificates(&mut self, c: &[u8], chain: &[Vec<u8>]) -> Result<(), station::Error> {
        self.now().put_certificates(c, chain)
    }
    fn put_secret(&mut self, name: &str, s: &[u8]) -> Result<(), station::Error> {
        self.now().put_secret(name, s)
    }
    fn lock(&mut self) -> Result<(), station::Error> {
        self.now().lock()
    }
}

#[test]
fn a_board_swapped_on_the_fixture_mid_way_gets_no_psk_and_no_lock() {
    let a = Running::start();
    let devs = Devices::new();
    devs.hsm.export_env();
    devs.add("dev-0301");
    devs.add("dev-0302");
    let cred = station::Credential::from_dir(&a.credential("stations/station-01")).unwrap();
    let client = station::Client::new(&a.url(""), &cred).unwrap();
    let swap = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut link = Swapped {
        first: Pkcs11Device::open(&devs.uri("dev-0301")).unwrap(),
        second: Pkcs11Device::open(&devs.uri("dev-0302")).unwrap(),
        swap: swap.clone(),
    };
    let serial = "VBUS-CPU-2412-000301";
    let opts = ProvisionOptions {
        serial: serial.into(),
        psk: true,
        record: None,
    };
    let err = provision(&mut link, &client, &opts, &mut |s| {
        // The certificate is on the first board: the next one is put on
        // the fixture.
        if s.step == "write" {
            swap.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    })
    .unwrap_err();
    drop(link);
    assert_eq!(err.code(), "device_refused", "{err}");
    assert!(
        err.to_string().contains("another device is on the line"),
        "{err}"
    );
    // The second board got nothing, and the appliance issued no PSK.
    let second = devs.objects("dev-0302");
    assert_eq!(count(&second, "Secret Key Object"), 0, "{second}");
    assert_eq!(count(&second, "Private Key Object"), 0, "{second}");
    let (status, body) = a.curl(
        Some("stations/station-01"),
        &format!("/v1/devices/{serial}/psk"),
        &["-X", "POST"],
    );
    assert_eq!(status, 201, "a PSK was issued before: {body}");
}
