//! `station psk`, `station key` and `station keypair` against the real
//! appliance: `kmsctl quickstart` (a SoftHSM2 token of its own) and `kmsd`,
//! both from the workspace's target directory (`cargo build --workspace
//! --bins`). Skipped, with a message, when they or SoftHSM2 are missing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::openssl;

const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A workspace binary next to this test's profile directory
/// (target/<profile>/deps/<test> → target/<profile>/<name>), if built.
fn workspace_bin(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join(name);
    path.exists().then_some(path)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A quickstart appliance with `kmsd` running, killed on drop.
struct Appliance {
    tmp: tempfile::TempDir,
    dir: PathBuf,
    api: u16,
    kmsd: Child,
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.kmsd.kill();
        let _ = self.kmsd.wait();
    }
}

impl Appliance {
    /// None (and why on stderr) when the binaries or SoftHSM2 are missing.
    fn start() -> Option<Appliance> {
        let (Some(kmsctl), Some(kmsd)) = (workspace_bin("kmsctl"), workspace_bin("kmsd")) else {
            eprintln!("SKIPPED: kmsctl/kmsd not built; run `cargo build --workspace --bins` first");
            return None;
        };
        if !Path::new(SOFTHSM_MODULE).exists() {
            eprintln!("SKIPPED: no SoftHSM2 module at {SOFTHSM_MODULE}");
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("appliance");
        let (api, publication) = (free_port(), free_port());
        let out = Command::new(kmsctl)
            .arg("quickstart")
            .arg(&dir)
            .args(["--api", &format!("127.0.0.1:{api}")])
            .args(["--pub", &format!("127.0.0.1:{publication}")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kmsctl quickstart: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Its log goes to a file: a pipe nobody reads would fill up.
        let log = std::fs::File::create(dir.join("kmsd.log")).unwrap();
        let kmsd = Command::new(kmsd)
            .arg("--config")
            .arg(dir.join("kmsd.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let a = Appliance {
            tmp,
            dir,
            api,
            kmsd,
        };
        a.wait_healthy();
        Some(a)
    }

    fn station_credential(&self) -> PathBuf {
        self.dir.join("stations/station-01")
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api)
    }

    fn wait_healthy(&self) {
        let cred = station::Credential::from_dir(&self.station_credential()).unwrap();
        let client = station::Client::new(&self.url(), &cred).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match client.health() {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => panic!(
                    "kmsd did not come up: {e}\n{}",
                    std::fs::read_to_string(self.dir.join("kmsd.log")).unwrap_or_default()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// `station --url … --credential stations/station-01 ARGS`, in the
    /// temporary directory.
    fn station(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_station"))
            .arg("--url")
            .arg(self.url())
            .arg("--credential")
            .arg(self.station_credential())
            .args(args)
            .current_dir(self.tmp.path())
            .output()
            .unwrap()
    }

    /// Enrols `serial` with a CSR made by openssl (its key stays here).
    fn enroll(&self, serial: &str, uuid: &str) {
        let d = self.tmp.path();
        let (key, csr) = (format!("{serial}.key"), format!("{serial}.csr"));
        openssl(
            d,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-subj",
                &format!("/serialNumber={serial}/CN={serial}"),
                "-addext",
                &format!("subjectAltName=URI:urn:uuid:{uuid}"),
                "-out",
                &csr,
            ],
        );
        let out = self.station(&[
            "enroll", "--serial", serial, "--uuid", uuid, "--csr", &csr, "--out", serial,
        ]);
        ok(&out);
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "{}", stderr(o));
    stdout(o)
}

/// Exit 1 with `error[code]: …` on stderr.
fn refused(o: &Output, code: &str) {
    assert_eq!(o.status.code(), Some(1), "{}", stdout(o));
    let err = stderr(o);
    assert!(err.starts_with(&format!("error[{code}]: ")), "{err}");
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// 64 lowercase hex digits and a newline.
fn assert_hex_line(text: &str) -> String {
    let hex = text.strip_suffix('\n').expect("ends with a newline");
    assert_eq!(hex.len(), 64, "{text:?}");
    assert!(
        hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "{text:?}"
    );
    hex.to_owned()
}

#[test]
fn psk_key_and_keypair_from_a_real_appliance() {
    let Some(a) = Appliance::start() else { return };
    let t = a.tmp.path();
    let cpu = "VBUS-CPU-2412-000900";
    a.enroll(cpu, "6f9619ff-8b86-4011-b42d-00c04fc96900");

    // The PSK, once, into a 0600 file.
    let out = a.station(&["psk", "--serial", cpu, "--out", "psk.hex"]);
    let said = ok(&out);
    let psk = assert_hex_line(&std::fs::read_to_string(t.join("psk.hex")).unwrap());
    assert_eq!(mode(&t.join("psk.hex")), 0o600);
    assert!(
        !said.contains(&psk) && !stderr(&out).contains(&psk),
        "{said}"
    );

    // Twice: refused, and the reserved file is not left behind.
    let out = a.station(&["psk", "--serial", cpu, "--out", "psk2.hex"]);
    refused(&out, "psk_already_issued");
    assert!(!t.join("psk2.hex").exists());

    // An existing --out is refused before anything is asked: the data key
    // is still there to fetch afterwards.
    let out = a.station(&[
        "key",
        "--serial",
        cpu,
        "--purpose",
        "data",
        "--out",
        "psk.hex",
    ]);
    refused(&out, "file_exists");
    assert_eq!(
        assert_hex_line(&std::fs::read_to_string(t.join("psk.hex")).unwrap()),
        psk
    );
    let out = a.station(&[
        "--json",
        "key",
        "--serial",
        cpu,
        "--purpose",
        "data",
        "--out",
        "data.hex",
    ]);
    let v: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(v["purpose"], "data");
    let data = assert_hex_line(&std::fs::read_to_string(t.join("data.hex")).unwrap());
    assert_eq!(mode(&t.join("data.hex")), 0o600);
    assert_ne!(data, psk);
    let out = a.station(&[
        "key",
        "--serial",
        cpu,
        "--purpose",
        "data",
        "--out",
        "d2.hex",
    ]);
    refused(&out, "secret_already_issued");

    // Purposes: unknown to the profile (the appliance), not a purpose at
    // all (locally).
    let out = a.station(&[
        "key",
        "--serial",
        cpu,
        "--purpose",
        "nope",
        "--out",
        "n.hex",
    ]);
    refused(&out, "secret_purpose_unknown");
    assert!(!t.join("n.hex").exists());
    let out = a.station(&["key", "--serial", cpu, "--purpose", "psk", "--out", "n.hex"]);
    refused(&out, "purpose_invalid");

    // A device this station never enrolled.
    let out = a.station(&["psk", "--serial", "VBUS-CPU-2412-000999", "--out", "x.hex"]);
    refused(&out, "device_not_found");

    // Without --out, into a pipe: the hex line on stdout and nothing else.
    let other = "VBUS-CPU-2412-000902";
    a.enroll(other, "6f9619ff-8b86-4011-b42d-00c04fc96902");
    let out = a.station(&["psk", "--serial", other]);
    let piped = assert_hex_line(&ok(&out));
    assert_ne!(piped, psk);
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));

    // A key pair for a module without a secure element.
    let module = "VBUS-CPU-2412-000901";
    let uuid = "6f9619ff-8b86-4011-b42d-00c04fc96901";
    let out = a.station(&["keypair", "--serial", module, "--uuid", uuid, "--out", "kp"]);
    let said = ok(&out);
    assert!(
        said.starts_with(&format!("keypair for {module}: certificate "))
            && said.contains(", valid until "),
        "{said}"
    );
    let kp = t.join("kp");
    assert_eq!(mode(&kp.join("key.pem")), 0o600);
    assert!(!said.contains("PRIVATE KEY"));
    openssl(&kp, &["pkey", "-in", "key.pem", "-noout"]);
    let from_key = openssl(&kp, &["pkey", "-in", "key.pem", "-pubout"]);
    let from_cert = openssl(&kp, &["x509", "-in", "cert.pem", "-pubkey", "-noout"]);
    assert_eq!(from_key, from_cert);
    let root = a.dir.join("ca/root.pem");
    let verified = openssl(
        &kp,
        &[
            "verify",
            "-CAfile",
            root.to_str().unwrap(),
            "-untrusted",
            "chain.pem",
            "cert.pem",
        ],
    );
    assert!(verified.contains("cert.pem: OK"), "{verified}");
    // The certificate names the module.
    let subject = openssl(&kp, &["x509", "-in", "cert.pem", "-noout", "-subject"]);
    assert!(subject.contains(module), "{subject}");

    // The same directory again: refused locally, the files untouched.
    let key_before = std::fs::read(kp.join("key.pem")).unwrap();
    let out = a.station(&["keypair", "--serial", module, "--uuid", uuid, "--out", "kp"]);
    refused(&out, "file_exists");
    assert_eq!(std::fs::read(kp.join("key.pem")).unwrap(), key_before);
    // Another directory: the appliance refuses a second key pair, and
    // nothing is left in the directory.
    let out = a.station(&[
        "keypair", "--serial", module, "--uuid", uuid, "--out", "kp2",
    ]);
    refused(&out, "secret_already_issued");
    assert_eq!(std::fs::read_dir(t.join("kp2")).unwrap().count(), 0);
}

#[test]
fn secret_verbs_have_help() {
    let tmp = tempfile::tempdir().unwrap();
    for verb in ["psk", "key", "keypair"] {
        let o = Command::new(env!("CARGO_BIN_EXE_station"))
            .args([verb, "--help"])
            .current_dir(tmp.path())
            .output()
            .unwrap();
        let text = ok(&o);
        assert!(text.contains("Usage: station"), "{verb}");
        assert!(text.contains("allow-rotation"), "{verb}: {text}");
    }
}
