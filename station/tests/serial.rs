//! The serial device link against the built `vbus-devsim` on a
//! pseudo-terminal: every command, corrupted replies, a device that stops
//! answering, and a restart that continues from the saved state.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::str::FromStr as _;
use std::time::{Duration, Instant};

use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{DerSignature, Signature, SigningKey, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use station::device::DeviceLink as _;
use station::serial::codec::{tag, Command as Cmd, Packet};
use station::serial::{SerialDevice, SerialOptions};
use x509_cert::builder::{Builder as _, CertificateBuilder, Profile};

/// A running simulator, killed when dropped.
struct Devsim {
    child: Child,
    tty: String,
    uid: String,
}

impl Drop for Devsim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn devsim(args: &[&str]) -> Devsim {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vbus-devsim"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // VBUS_DEVSIM_LOG=1 shows the simulator's log of each request
        .stderr(if std::env::var_os("VBUS_DEVSIM_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("vbus-devsim starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut tty = None;
    let mut uid = None;
    while tty.is_none() || uid.is_none() {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("vbus-devsim {args:?} exited before printing its tty"))
            .unwrap();
        if let Some(v) = line.strip_prefix("VBUS_DEVSIM_TTY=") {
            tty = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("VBUS_DEVSIM_UID=") {
            uid = Some(v.to_owned());
        }
    }
    Devsim {
        child,
        tty: tty.unwrap(),
        uid: uid.unwrap(),
    }
}

fn fast() -> SerialOptions {
    SerialOptions {
        timeout: Duration::from_millis(400),
        slow_timeout: Duration::from_millis(1500),
        retries: 3,
        ..SerialOptions::default()
    }
}

/// A certificate for `spki` (DER), issued by a throwaway CA key; DER.
fn certificate_for(spki: &[u8], cn: &str) -> Vec<u8> {
    use der::{Decode as _, Encode as _};
    let ca = SigningKey::random(&mut rand_core::OsRng);
    let spki = x509_cert::spki::SubjectPublicKeyInfoOwned::from_der(spki).unwrap();
    CertificateBuilder::new(
        Profile::Root,
        x509_cert::serial_number::SerialNumber::new(&[0x42]).unwrap(),
        x509_cert::time::Validity::from_now(Duration::from_secs(3600)).unwrap(),
        x509_cert::name::Name::from_str(&format!("CN={cn}")).unwrap(),
        spki,
        &ca,
    )
    .unwrap()
    .build::<DerSignature>()
    .unwrap()
    .to_der()
    .unwrap()
}

fn verify(spki: &[u8], message: &[u8], signature: &[u8]) {
    let key = VerifyingKey::from_public_key_der(spki).expect("GEN_KEY returns a P-256 SPKI");
    let signature = Signature::from_der(signature).expect("SIGN returns a DER signature");
    key.verify(message, &signature)
        .expect("the signature verifies");
}

fn code(e: &station::Error) -> String {
    format!("{} {e}", e.code())
}

#[test]
fn every_command_over_the_pty() {
    let sim = devsim(&["--uid", "00112233445566778899aabb"]);
    assert_eq!(sim.uid, "00112233445566778899aabb");
    let mut dev = SerialDevice::open_with(&sim.tty, fast()).unwrap();

    assert_eq!(hex::encode(dev.uid().unwrap()), sim.uid);
    let status = dev.status().unwrap();
    assert_eq!(status.public_key, None);
    assert_eq!(status.certificate, None);
    assert!(status.secrets.is_empty());
    assert!(!status.locked);
    assert_eq!(dev.public_key().unwrap(), None);

    // signing without a key
    let e = dev.sign(b"x").unwrap_err();
    assert!(code(&e).contains("NO_KEY"), "{}", code(&e));

    // key generation, once
    let spki = dev.generate_key().unwrap();
    let e = dev.generate_key().unwrap_err();
    assert_eq!(e.code(), "device_already_holds", "{e}");
    assert!(e.to_string().contains("KEY_EXISTS"), "{e}");
    assert_eq!(dev.public_key().unwrap().as_deref(), Some(spki.as_slice()));

    // signatures verify against the returned SPKI
    for message in [&b"CertificationRequestInfo"[..], &[0u8; 4000][..], b""] {
        let signature = dev.sign(message).unwrap();
        verify(&spki, message, &signature);
    }

    // a certificate for another key is refused, ours is accepted
    let other = SigningKey::random(&mut rand_core::OsRng);
    let other_spki = p256::pkcs8::EncodePublicKey::to_public_key_der(other.verifying_key())
        .unwrap()
        .into_vec();
    let e = dev
        .put_certificates(&certificate_for(&other_spki, "other"), &[])
        .unwrap_err();
    assert!(code(&e).contains("CERT_MISMATCH"), "{}", code(&e));
    let cert = certificate_for(&spki, "VBUS-CPU-2412-000001");
    let chain = vec![vec![0x30, 0x03, 0x02, 0x01, 0x01], vec![0x30, 0x00]];
    dev.put_certificates(&cert, &chain).unwrap();
    // repeating it (a lost reply) is fine before the lock
    dev.put_certificates(&cert, &chain).unwrap();

    // secrets: names listed, values never
    let secret = [0x5Au8; 32];
    dev.put_secret("psk", &secret).unwrap();
    dev.put_secret("aes-key.0", b"another secret value")
        .unwrap();
    let e = dev.put_secret("bad name", b"x").unwrap_err();
    assert!(code(&e).contains("BAD_REQUEST"), "{}", code(&e));
    let status = dev.status().unwrap();
    assert_eq!(status.public_key.as_deref(), Some(spki.as_slice()));
    assert_eq!(status.certificate.as_deref(), Some(cert.as_slice()));
    assert_eq!(
        status.secrets,
        vec!["aes-key.0".to_owned(), "psk".to_owned()]
    );
    assert!(!status.locked);
    assert!(!format!("{status:?}").contains("ZZZZ"));

    // lock: writes refused, reads and signing still work, lock is idempotent
    dev.lock().unwrap();
    dev.lock().unwrap();
    assert!(dev.status().unwrap().locked);
    for e in [
        dev.generate_key().unwrap_err(),
        dev.put_certificates(&cert, &[]).unwrap_err(),
        dev.put_secret("psk", &secret).unwrap_err(),
        dev.put_secret("new", &secret).unwrap_err(),
    ] {
        assert!(e.to_string().contains("LOCKED"), "{e}");
        assert_eq!(e.code(), "device_already_holds");
    }
    let signature = dev.sign(b"after lock").unwrap();
    verify(&spki, b"after lock", &signature);
    assert_eq!(hex::encode(dev.uid().unwrap()), sim.uid);

    // a second station on the same line is refused while this one holds it
    let e = SerialDevice::open_with(&sim.tty, fast()).unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
    drop(dev);
    // and can open it once this one let go
    let mut again = SerialDevice::open_with(&sim.tty, fast()).unwrap();
    assert!(again.status().unwrap().locked);
}

#[test]
fn oversize_requests_are_refused_locally() {
    let sim = devsim(&[]);
    assert_eq!(sim.uid.len(), 24, "a random 12-byte UID is printed");
    let mut dev = SerialDevice::open_with(&sim.tty, fast()).unwrap();
    dev.generate_key().unwrap();
    let e = dev.sign(&vec![1u8; 9000]).unwrap_err();
    assert!(e.to_string().contains("larger than a frame"), "{e}");
    // the line is still in step afterwards
    assert_eq!(hex::encode(dev.uid().unwrap()), sim.uid);
}

#[test]
fn corrupted_replies_are_retried() {
    // every second reply is damaged on the line
    let sim = devsim(&["--corrupt-every", "2"]);
    let mut dev = SerialDevice::open_with(&sim.tty, fast()).unwrap();
    for _ in 0..4 {
        assert_eq!(hex::encode(dev.uid().unwrap()), sim.uid);
    }
    // GEN_KEY's reply lost to corruption is answered again from the
    // device's memory, not refused with KEY_EXISTS
    let spki = dev.generate_key().unwrap();
    for i in 0..4u8 {
        let message = [i; 100];
        let signature = dev.sign(&message).unwrap();
        verify(&spki, &message, &signature);
    }
    dev.put_secret("psk", &[7u8; 32]).unwrap();
    let status = dev.status().unwrap();
    assert_eq!(status.public_key.as_deref(), Some(spki.as_slice()));
    assert_eq!(status.secrets, vec!["psk".to_owned()]);
}

#[test]
fn corrupted_requests_are_resent() {
    // every third request arrives damaged: the device answers BAD_CRC with
    // id 0 and the station sends it again
    let sim = devsim(&["--corrupt-request-every", "3"]);
    let mut dev = SerialDevice::open_with(&sim.tty, fast()).unwrap();
    let spki = dev.generate_key().unwrap();
    for i in 0..6u8 {
        assert_eq!(hex::encode(dev.uid().unwrap()), sim.uid);
        let signature = dev.sign(&[i]).unwrap();
        verify(&spki, &[i], &signature);
    }
    assert_eq!(
        dev.status().unwrap().public_key.as_deref(),
        Some(spki.as_slice())
    );
}

#[test]
fn a_line_that_corrupts_everything_fails_bounded() {
    let sim = devsim(&["--corrupt-every", "1"]);
    let mut dev = SerialDevice::open_with(&sim.tty, fast()).unwrap();
    let started = Instant::now();
    let e = dev.uid().unwrap_err();
    assert_eq!(e.code(), "device_unreachable", "{e}");
    assert!(e.to_string().contains("corrupt"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn damaged_and_unknown_requests_get_error_replies() {
    // talk to the simulator by hand: a damaged request is answered BAD_CRC
    // with id 0
    let sim = devsim(&[]);
    let fd = rustix::fs::open(
        Path::new(&sim.tty),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let mut t = rustix::termios::tcgetattr(&fd).unwrap();
    t.make_raw();
    rustix::termios::tcsetattr(&fd, rustix::termios::OptionalActions::Now, &t).unwrap();
    let mut frame = Packet::request(Cmd::GetUid, 77).encode().unwrap().to_vec();
    let mid = frame.len() / 2;
    frame[mid] = if frame[mid] == 0x01 {
        0x03
    } else {
        frame[mid] ^ 0x01
    };
    rustix::io::write(&fd, &frame).unwrap();
    let mut decoder = station::serial::codec::FrameDecoder::new();
    let mut buf = [0u8; 256];
    let reply = loop {
        let n = rustix::io::read(&fd, &mut buf).unwrap();
        if let Some(r) = decoder.feed(&buf[..n]).into_iter().next() {
            break r.unwrap();
        }
    };
    assert_eq!(reply.id, 0);
    // BAD_CRC, or BAD_FRAME when the flip hit a COBS code byte
    assert!([1, 2].contains(&reply.error_parts().0), "{reply:?}");
    // an unknown command keeps its id
    rustix::io::write(&fd, &Packet::new(0x55, 78).encode().unwrap()).unwrap();
    let reply = loop {
        let n = rustix::io::read(&fd, &mut buf).unwrap();
        if let Some(r) = decoder.feed(&buf[..n]).into_iter().next() {
            break r.unwrap();
        }
    };
    assert_eq!(
        (reply.id, reply.error_parts().0),
        (78, 3),
        "UNKNOWN_COMMAND"
    );
    // a well-formed request after the damage is served
    rustix::io::write(&fd, &Packet::request(Cmd::GetUid, 79).encode().unwrap()).unwrap();
    let reply = loop {
        let n = rustix::io::read(&fd, &mut buf).unwrap();
        if let Some(r) = decoder.feed(&buf[..n]).into_iter().next() {
            break r.unwrap();
        }
    };
    assert_eq!(reply.id, 79);
    assert_eq!(hex::encode(reply.get(tag::UID).unwrap()), sim.uid);
}

#[test]
fn power_cut_times_out_and_a_restart_continues() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("dev");
    let dir_s = dir.to_str().unwrap();
    let uid = "a1a2a3a4a5a6a7a8";
    // answers 3 requests: UID, GEN_KEY, SIGN; then the power goes
    let sim = devsim(&["--uid", uid, "--state", dir_s, "--fail-after", "3"]);
    let mut dev = SerialDevice::open_with(&sim.tty, fast()).unwrap();
    assert_eq!(hex::encode(dev.uid().unwrap()), uid);
    let spki = dev.generate_key().unwrap();
    let signature = dev.sign(b"before").unwrap();
    verify(&spki, b"before", &signature);
    let started = Instant::now();
    let e = dev.put_secret("psk", &[1u8; 32]).unwrap_err();
    let waited = started.elapsed();
    assert_eq!(e.code(), "device_unreachable", "{e}");
    assert!(e.to_string().contains("timeout"), "{e}");
    // 4 attempts of 400 ms each: bounded, not a hang
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
    assert!(waited < Duration::from_secs(4), "{waited:?}");
    drop(dev);
    drop(sim);

    // the state file is private and holds no more than expected
    let file = dir.join("devsim-state.json");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);

    // a different --uid for the same state is refused
    let out = Command::new(env!("CARGO_BIN_EXE_vbus-devsim"))
        .args(["--uid", "0000000000000000", "--state", dir_s])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("differs"));

    // power back: same key, the secret never arrived; finish the job
    let sim = devsim(&["--state", dir_s]);
    assert_eq!(sim.uid, uid);
    let mut dev = SerialDevice::open_with(&sim.tty, fast()).unwrap();
    let status = dev.status().unwrap();
    assert_eq!(status.public_key.as_deref(), Some(spki.as_slice()));
    assert!(status.secrets.is_empty());
    assert!(dev
        .generate_key()
        .unwrap_err()
        .to_string()
        .contains("KEY_EXISTS"));
    dev.put_secret("psk", &[1u8; 32]).unwrap();
    dev.lock().unwrap();
    drop(dev);
    drop(sim);

    // and again: locked, with the secret, after a restart
    let sim = devsim(&["--state", dir_s]);
    let mut dev = SerialDevice::open_with(&sim.tty, fast()).unwrap();
    let status = dev.status().unwrap();
    assert!(status.locked);
    assert_eq!(status.secrets, vec!["psk".to_owned()]);
    let signature = dev.sign(b"after").unwrap();
    verify(&spki, b"after", &signature);
}

#[test]
fn slow_devices_within_the_timeout_are_fine_and_beyond_it_time_out() {
    let sim = devsim(&["--delay-ms", "150"]);
    let mut dev = SerialDevice::open_with(&sim.tty, fast()).unwrap();
    assert_eq!(hex::encode(dev.uid().unwrap()), sim.uid);
    drop(dev);
    let tight = SerialOptions {
        timeout: Duration::from_millis(50),
        retries: 1,
        ..fast()
    };
    let mut dev = SerialDevice::open_with(&sim.tty, tight).unwrap();
    let e = dev.uid().unwrap_err();
    assert!(e.to_string().contains("timeout"), "{e}");
    assert!(e.to_string().contains("2 attempts"), "{e}");
}

#[test]
fn not_a_tty_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    std::fs::write(&file, b"").unwrap();
    let e = SerialDevice::open(&file).unwrap_err();
    assert_eq!(e.code(), "device_unreachable");
    assert!(e.to_string().contains("not a terminal"), "{e}");
    let e = SerialDevice::open(dir.path().join("missing")).unwrap_err();
    assert_eq!(e.code(), "device_unreachable");
}

#[test]
fn station_provision_over_the_serial_line() {
    let pki = common::make_pki("vBus internal CA (test)");
    let app = common::start_appliance(&pki);
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("dev");
    let state_dir = state_dir.to_str().unwrap();
    let url = app.url();
    let provision = |tty: &str| {
        Command::new(env!("CARGO_BIN_EXE_station"))
            .args(["--url", &url, "--credential", "station", "provision"])
            .args(["--serial", "VBUS-CPU-2412-000123", "--device"])
            .arg(format!("serial:{tty}"))
            .current_dir(pki.dir.path())
            .output()
            .unwrap()
    };
    let sim = devsim(&["--uid", "0102030405060708", "--state", state_dir]);
    let o = provision(&sim.tty);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{out}\n{err}");
    // the device holds the certificate for its key and is locked
    let mut dev = SerialDevice::open_with(&sim.tty, fast()).unwrap();
    let status = dev.status().unwrap();
    assert!(status.locked, "{out}");
    assert!(status.certificate.is_some());
    assert!(status.public_key.is_some());
    assert_eq!(app.issued.load(std::sync::atomic::Ordering::SeqCst), 1);
    drop(dev);

    // a re-run finds everything on the device and changes nothing
    let o = provision(&sim.tty);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        out.contains("already provisioned; nothing changed"),
        "{out}"
    );
    assert!(!out.contains(" done "), "{out}");
    assert_eq!(app.issued.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn a_certificate_without_the_uuid_is_never_written() {
    // the fake appliance leaves the hardware-UUID SAN out for …-000777:
    // the first run refuses it as a re-run would, and writes nothing
    let pki = common::make_pki("vBus internal CA (test)");
    let app = common::start_appliance(&pki);
    let sim = devsim(&["--uid", "0807060504030201"]);
    let o = Command::new(env!("CARGO_BIN_EXE_station"))
        .args(["--url", &app.url(), "--credential", "station", "provision"])
        .args(["--serial", "VBUS-CPU-2412-000777", "--device"])
        .arg(format!("serial:{}", sim.tty))
        .current_dir(pki.dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.starts_with("error[invalid_response]: "), "{err}");
    assert!(err.contains("does not name hardware UUID"), "{err}");
    assert!(err.contains("nothing was written"), "{err}");
    let mut dev = SerialDevice::open_with(&sim.tty, fast()).unwrap();
    let status = dev.status().unwrap();
    assert!(status.public_key.is_some());
    assert_eq!(status.certificate, None);
    assert!(!status.locked);
}
