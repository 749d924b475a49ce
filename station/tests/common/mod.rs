//! Test fixtures: a throwaway PKI made with `openssl`, device CSRs, and a
//! tiny HTTPS server (rustls, client certificate required) that plays the
//! appliance's station API, issuing real certificates with `openssl x509`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufReader, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use der::{Decode as _, DecodePem as _, Encode as _, EncodePem as _};
use p256::ecdsa::{DerSignature, SigningKey};
use p256::pkcs8::LineEnding;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use x509_cert::builder::{Builder as _, RequestBuilder};
use x509_cert::name::Name;

/// Runs openssl in `dir`, panicking with its stderr on failure.
pub fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CA plus a server and a station credential, in a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The station credential directory (cert.pem, key.pem 0600, ca.pem).
    pub fn station_dir(&self) -> PathBuf {
        self.path("station")
    }
}

const EXT: &str = "\
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
[device]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
";

/// A CA named `cn` with a server certificate for 127.0.0.1 and a station
/// credential `station-01`.
pub fn make_pki(cn: &str) -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("ext.cnf"), EXT).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj"]);
    let subj = format!("/CN={cn}");
    args.push(&subj);
    args.extend([
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(d, &args);
    for (name, cn, ext) in [
        ("server", "localhost", "server"),
        ("station", "station-01", "client"),
    ] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        let subj = format!("/CN={cn}/OU=station");
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(d, &args);
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                "7",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
                "-extensions",
                ext,
                "-out",
                &pem,
            ],
        );
    }
    let st = d.join("station");
    std::fs::create_dir(&st).unwrap();
    std::fs::copy(d.join("station.pem"), st.join("cert.pem")).unwrap();
    std::fs::copy(d.join("ca.pem"), st.join("ca.pem")).unwrap();
    std::fs::copy(d.join("station.key"), st.join("key.pem")).unwrap();
    set_mode(&st.join("key.pem"), 0o600);
    Pki { dir }
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A device CSR (PEM) with CN and serialNumber = `serial`.
pub fn device_csr(serial: &str) -> String {
    let key = SigningKey::random(&mut rand_core::OsRng);
    let subject = Name::from_str(&format!("serialNumber={serial},CN={serial}")).unwrap();
    let csr = RequestBuilder::new(subject, &key)
        .unwrap()
        .build::<DerSignature>()
        .unwrap();
    csr.to_pem(LineEnding::LF).unwrap()
}

/// What the fake appliance has issued, per module serial.
struct Issued {
    spki: Vec<u8>,
    answer: Value,
}

/// A fake appliance on 127.0.0.1 (random port): HTTPS, client
/// certificate required and checked against `ca.pem`.
pub struct FakeAppliance {
    pub addr: SocketAddr,
    /// DER of every client certificate presented, one per connection.
    pub peers: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Requests served, by path.
    pub requests: Arc<Mutex<Vec<String>>>,
    /// Certificates issued (openssl runs).
    pub issued: Arc<AtomicU64>,
}

impl FakeAppliance {
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }
}

/// Starts the fake appliance with the PKI's server certificate. It
/// answers:
/// - `POST /v1/devices/{serial}/certificate`: issues with openssl (201),
///   the stored certificate again for the same key (200), 409
///   `device_already_certified` for another key. Serial `…-000429` gets
///   429 `quota_exceeded`; `…-000502` an HTML 502; `…-000666` a
///   certificate for some other key; `…-000777` one without the CSR's
///   subjectAltName (the others carry it, copied from the CSR).
/// - `GET /v1/devices/{serial}`, `POST …/record`, `GET /healthz`.
pub fn start_appliance(pki: &Pki) -> FakeAppliance {
    let d = pki.dir.path();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(d.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let certs: Vec<_> = CertificateDer::pem_file_iter(d.join("server.pem"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(d.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    let config = Arc::new(config);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let issued = Arc::new(AtomicU64::new(0));
    let state = Arc::new(Mutex::new(HashMap::<String, Issued>::new()));
    let pki_dir = d.to_owned();
    let (p, r, n) = (peers.clone(), requests.clone(), issued.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (config, p, r, n, state, pki_dir) = (
                config.clone(),
                p.clone(),
                r.clone(),
                n.clone(),
                state.clone(),
                pki_dir.clone(),
            );
            std::thread::spawn(move || {
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(conn, stream);
                // Finish the handshake before looking at the peer.
                while tls.conn.is_handshaking() {
                    if tls.conn.complete_io(&mut tls.sock).is_err() {
                        return;
                    }
                }
                if let Some(c) = tls.conn.peer_certificates().and_then(|c| c.first()) {
                    p.lock().unwrap().push(c.as_ref().to_vec());
                }
                let mut reader = BufReader::new(tls);
                // Keep-alive: serve requests until the client closes.
                while let Some((method, path, body)) = read_request(&mut reader) {
                    r.lock().unwrap().push(format!("{method} {path}"));
                    let (status, answer) = handle(&method, &path, &body, &state, &pki_dir, &n);
                    let reason = match status {
                        200 => "OK",
                        201 => "Created",
                        _ => "Error",
                    };
                    let head = format!(
                        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\n\r\n",
                        answer.len()
                    );
                    let tls = reader.get_mut();
                    if tls.write_all(head.as_bytes()).is_err()
                        || tls.write_all(answer.as_bytes()).is_err()
                        || tls.flush().is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    FakeAppliance {
        addr,
        peers,
        requests,
        issued,
    }
}

fn read_request<R: std::io::BufRead>(r: &mut R) -> Option<(String, String, String)> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((method, path, String::from_utf8(body).ok()?))
}

fn err(status: u16, code: &str, message: &str) -> (u16, String) {
    (
        status,
        json!({"error": {"code": code, "message": message}}).to_string(),
    )
}

fn handle(
    method: &str,
    path: &str,
    body: &str,
    state: &Mutex<HashMap<String, Issued>>,
    pki: &Path,
    issued: &AtomicU64,
) -> (u16, String) {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segs.as_slice()) {
        ("GET", ["healthz"]) => (200, json!({"status": "ok"}).to_string()),
        ("GET", ["v1", "devices", serial]) => match state.lock().unwrap().get(*serial) {
            Some(i) => (
                200,
                json!({"serial": serial, "certificate": i.answer["serial_number"]}).to_string(),
            ),
            None => err(404, "device_not_found", &format!("no device {serial}")),
        },
        ("POST", ["v1", "devices", serial, "record"]) => {
            let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            if v.get("firmware_version").is_none() {
                return err(400, "record_invalid", "no firmware_version");
            }
            (200, json!({"serial": serial, "recorded": true}).to_string())
        }
        ("POST", ["v1", "devices", serial, "certificate"]) => {
            enroll(serial, body, state, pki, issued)
        }
        _ => err(404, "not_found", "no such endpoint"),
    }
}

fn enroll(
    serial: &str,
    body: &str,
    state: &Mutex<HashMap<String, Issued>>,
    pki: &Path,
    issued: &AtomicU64,
) -> (u16, String) {
    if serial.ends_with("-000429") {
        return (
            429,
            json!({"error": {"code": "quota_exceeded", "message": "station quota used up",
                "retry_after": "2030-01-01T00:00:00Z"}})
            .to_string(),
        );
    }
    if serial.ends_with("-000502") {
        return (502, "<html>Bad Gateway</html>".into());
    }
    let v: Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(e) => return err(400, "bad_request", &e.to_string()),
    };
    let (Some(csr_pem), Some(_uuid)) = (v["csr"].as_str(), v["hw_uuid"].as_str()) else {
        return err(400, "bad_request", "csr and hw_uuid required");
    };
    let Ok(csr) = x509_cert::request::CertReq::from_pem(csr_pem.trim().as_bytes()) else {
        return err(400, "csr_malformed", "not a PKCS#10 request");
    };
    let spki = csr.info.public_key.to_der().unwrap();
    let mut st = state.lock().unwrap();
    if let Some(i) = st.get(serial) {
        if i.spki == spki {
            let mut a = i.answer.clone();
            a["newly_issued"] = json!(false);
            return (200, a.to_string());
        }
        return err(
            409,
            "device_already_certified",
            &format!("{serial} already has a certificate for another key"),
        );
    }
    // Issue with openssl, the outside witness.
    let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
    let tmp = tempfile::tempdir().unwrap();
    let to_sign = if serial.ends_with("-000666") {
        device_csr(serial)
    } else {
        csr_pem.to_owned()
    };
    std::fs::write(tmp.path().join("d.csr"), to_sign).unwrap();
    let serial_hex = format!(
        "{:032x}",
        0x7f00_0000_0000_0000_0000_0000_0000_0000u128 + n as u128
    );
    let out = tmp.path().join("d.pem");
    openssl(
        pki,
        &[
            "x509",
            "-req",
            "-in",
            tmp.path().join("d.csr").to_str().unwrap(),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &format!("0x{serial_hex}"),
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
            "-extensions",
            "device",
            // the CSR's subjectAltName (the hardware-UUID URI), as the
            // appliance puts it in; `…-000777` gets a certificate without it
            "-copy_extensions",
            if serial.ends_with("-000777") {
                "none"
            } else {
                "copy"
            },
            "-out",
            out.to_str().unwrap(),
        ],
    );
    let cert = std::fs::read_to_string(&out).unwrap();
    let chain = std::fs::read_to_string(pki.join("ca.pem")).unwrap();
    // Sanity: what we hand out is the DER openssl made.
    let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    let parsed = x509_cert::Certificate::from_der(der.as_ref()).unwrap();
    assert_eq!(
        hex::encode(parsed.tbs_certificate.serial_number.as_bytes()),
        serial_hex
    );
    let answer = json!({
        "serial_number": serial_hex,
        "certificate": cert,
        "chain": chain,
        "not_after": "2030-01-01T00:00:00Z",
        "newly_issued": true,
    });
    st.insert(
        serial.to_owned(),
        Issued {
            spki,
            answer: answer.clone(),
        },
    );
    (201, answer.to_string())
}
