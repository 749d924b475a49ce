//! `station provision` over PKCS#11 against the real `kmsd`: SoftHSM2
//! tokens stand in for the devices' secure elements, `pkcs11-tool` and
//! `openssl` are the outside witnesses, and faults (the device vanishing
//! at each step, the appliance refusing, a key already there, a second
//! run) each end in a clear state that a re-run completes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;
use softhsm_tests::{bin, ok, run, Running, SoftHsm, MODULE, SO_PIN, USER_PIN};
use station::device::pkcs11::Pkcs11Device;
use station::device::{DeviceLink, DeviceStatus};
use station::provision::{provision, ProvisionOptions};

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
        let tokens = self.hsm.dir().join("tokens");
        let before: Vec<_> = std::fs::read_dir(&tokens)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        let out = run(self.hsm.command("softhsm2-util").args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            SO_PIN,
            "--pin",
            USER_PIN,
        ]));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read_dir(&tokens)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| !before.contains(p))
            .unwrap()
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
            assert_eq!(err.code(), "provision_stopped", "{after}: {msg}");
            assert!(msg.contains("allow-rotation"), "{msg}");
            // The re-run stops too: never a second PSK without an officer.
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
