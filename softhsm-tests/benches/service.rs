//! Issuance load on the running appliance beside its references, every
//! figure measured in one run on one machine:
//!
//! ```text
//! cargo build --release --bins
//! cargo bench -p softhsm-tests --bench service
//! KMS_BENCH_SECONDS=3 KMS_BENCH_BATCH=10000 cargo bench -p softhsm-tests --bench service   # short
//! ```
//!
//! - `KMS_BENCH_SECONDS`: length of each load phase (default 10).
//! - `KMS_BENCH_TOKEN_SECONDS`: length of each raw token phase (default 3).
//! - `KMS_BENCH_BATCH`: devices for the `station batch` row (default 100,000).
//! - `KMS_BENCH_ROWS`: a file the summary rows are appended to (`bench/run`).
//!
//! Against one `kmsctl quickstart` appliance with `token.pool_size = 8`:
//! 1. the raw token rate: `C_Sign` (`CKM_ECDSA`) with the intermediate CA
//!    key on 1 session, then on 2 sessions in 2 threads; then the same with
//!    a session copy of the key in each session, as kmsd's pool signs;
//! 2. `cfssl serve` (Debian's golang-cfssl: a P-256 CA key in a file, no
//!    storage, no audit) behind mutual TLS that trusts the same station
//!    certificate, driven by the same load generator at concurrency 8;
//! 3. `POST /v1/devices/{serial}/certificate` at concurrency 1, 8 and 32
//!    over keep-alive connections, and at 8 with a new TCP connection and
//!    full TLS handshake per request;
//! 4. the raw handshake rate of `openssl s_server` / `s_time -new` with a
//!    P-256 server certificate and the same station client certificate;
//! 5. EST `simpleenroll` at concurrency 8, keep-alive;
//! 6. `KMS_BENCH_BATCH` devices through the `station batch` binary (CSV of
//!    CSR files, 8 concurrent requests, certificates and journal written
//!    to disk), and `kmsd`'s memory afterwards.
//!
//! The load generator (`common/load.rs`) sends pre-built requests and
//! keeps the answers as bytes; after each phase, off the clock, every
//! answer is judged: a new certificate, a serial number not seen before,
//! the CSR's public key, and a signature that verifies under the issuing
//! CA's key (ring). Failures make the bench exit non-zero, as does `kmsd`
//! not stopping cleanly. Nothing about time is asserted: the figures are
//! printed as measured.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashSet;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use der::{Decode as _, Encode as _};
use softhsm_tests::Running;

mod common;
use common::load::{self, Connections, Outcome, Target};
use common::{
    emit_table, env_secs, make_device_range, memory, mib, require_release_bins, thousands, Device,
};

const STATION: &str = "stations/station-01";
/// The token label and intermediate key label `kmsctl quickstart` uses.
const TOKEN_LABEL: &str = "vbus-kms";
const INTERMEDIATE_KEY: &str = "mfg-intermediate";
/// `token.pool_size` for this run (quickstart writes 4).
const POOL_SIZE: usize = 8;
/// Issuances before the measured phases; their rate sizes the CSR pools.
const WARMUP: usize = 300;
/// CSRs made per phase: this many times the best rate seen so far times
/// the phase length.
const POOL_MARGIN: f64 = 1.5;
/// Concurrent `openssl s_time` clients for the raw handshake rate.
const S_TIME_CLIENTS: usize = 2;
/// Module serials have six digits.
const MAX_DEVICES: usize = 999_999;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    common::bench_main("service", &args, bench);
}

/// One load phase, judged.
struct Phase {
    name: String,
    out: Outcome,
    /// Answers that were not what they should be (judged after the phase).
    bad: usize,
    /// kmsd VmRSS / VmHWM (kB) right after the phase; none for cfssl.
    memory: Option<(u64, u64)>,
}

impl Phase {
    fn print(&self) {
        println!(
            "{}: {} ok, {} failed, {} bad answers in {:.1} s = {}/s; p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms{}{}",
            self.name,
            self.out.ok,
            self.out.failed,
            self.bad,
            self.out.elapsed.as_secs_f64(),
            thousands(self.out.rate()),
            self.out.percentile(50.0),
            self.out.percentile(99.0),
            self.out.percentile(99.9),
            self.memory.map_or_else(String::new, |(rss, hwm)| format!(
                "; kmsd VmRSS {:.0} MiB, VmHWM {:.0} MiB",
                mib(rss as f64),
                mib(hwm as f64)
            )),
            if self.out.ran_out { " (requests ran out)" } else { "" }
        );
        for f in &self.out.failures {
            eprintln!("  {}: FAILED {f}", self.name);
        }
    }

    fn errors(&self) -> usize {
        self.out.failed + self.bad
    }

    fn detail(&self) -> String {
        format!(
            "{} in {:.1} s, {} failed; p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms{}",
            thousands(self.out.ok as f64),
            self.out.elapsed.as_secs_f64(),
            self.errors(),
            self.out.percentile(50.0),
            self.out.percentile(99.0),
            self.out.percentile(99.9),
            self.memory.map_or_else(String::new, |(rss, _)| format!(
                "; kmsd VmRSS {:.0} MiB",
                mib(rss as f64)
            ))
        )
    }
}

/// Hands out device numbers, never twice.
struct Devices {
    next: usize,
}

impl Devices {
    fn take(&mut self, n: usize) -> Vec<Device> {
        let first = self.next;
        self.next += n;
        assert!(
            self.next <= MAX_DEVICES,
            "out of six-digit module serials: lower KMS_BENCH_SECONDS or KMS_BENCH_BATCH"
        );
        make_device_range(first, n)
    }
}

/// The whole run; `true` when nothing failed.
fn bench() -> bool {
    require_release_bins();
    let load_secs = env_secs("KMS_BENCH_SECONDS", 10.0);
    let token_secs = env_secs("KMS_BENCH_TOKEN_SECONDS", 3.0);
    let batch_size = std::env::var("KMS_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(100_000);
    let length = Duration::from_secs_f64(load_secs);

    // The appliance: quickstart, a bigger session pool, kmsd started.
    // Child processes only: this process has no other thread yet.
    let mut running = Running::start_with(|dir| {
        let path = dir.join("kmsd.toml");
        let toml = std::fs::read_to_string(&path).unwrap();
        assert!(
            toml.contains("pool_size = 4\n"),
            "quickstart kmsd.toml changed: {toml}"
        );
        let toml = toml.replacen("pool_size = 4\n", &format!("pool_size = {POOL_SIZE}\n"), 1);
        std::fs::write(&path, toml).unwrap();
    });
    let dir = running.dir.clone();
    let pid = running.service.as_ref().expect("kmsd running").0.id();
    let (module, module_env) = token_section(&dir);
    // Before the module is loaded and before any thread exists.
    for (k, v) in &module_env {
        std::env::set_var(k, v);
    }
    common::print_header(
        "issuance",
        "kmsd",
        &format!(", pid {pid}, token.pool_size = {POOL_SIZE}"),
    );
    println!("phases: load {load_secs} s each, raw token {token_secs} s each");
    let idle = memory(pid);
    println!("kmsd idle: VmRSS {:.1} MiB", mib(idle.0 as f64));

    // 1. Raw token rate, same token, kmsd running (idle).
    let raw = raw_token_rate(&module, &dir, token_secs);
    println!(
        "raw token C_Sign: 1 session {}/s, 2 sessions {}/s; with session copies of the key {}/s, {}/s",
        thousands(raw.one.rate()),
        thousands(raw.two.rate()),
        thousands(raw.copy_one.rate()),
        thousands(raw.copy_two.rate())
    );

    let station_dir = dir.join(STATION);
    let read = |name: &str| std::fs::read_to_string(station_dir.join(name)).unwrap();
    let (ca_pem, cert_pem, key_pem) = (read("ca.pem"), read("cert.pem"), read("key.pem"));
    let api: SocketAddr = format!("127.0.0.1:{}", running.api).parse().unwrap();
    let ours = Target::new(api, &ca_pem, &cert_pem, &key_pem);
    let mut devices = Devices { next: 0 };
    let mut seen = HashSet::new();

    // Warm-up, which also sizes the CSR pools.
    let warm = issue_phase(
        "warm-up",
        &ours,
        &devices.take(WARMUP),
        8,
        length,
        Connections::KeepAlive,
        &mut seen,
        pid,
    );
    warm.print();
    let mut best = warm.out.rate().max(100.0);
    let size = |best: f64| ((best * load_secs * POOL_MARGIN).ceil() as usize).max(WARMUP);

    // 2. cfssl serve, same load generator, same client certificate.
    let tmp = tempfile::tempdir().unwrap();
    let refs = References::make(tmp.path(), &station_dir.join("ca.pem"));
    let cfssl = refs.cfssl(&cert_pem, &key_pem);
    let cf = {
        let devs = devices.take(size(best * 8.0));
        let requests: Vec<Vec<u8>> = devs
            .iter()
            .map(|d| {
                let body = serde_json::json!({ "certificate_request": d.csr_pem });
                load::post(
                    cfssl.addr,
                    "/api/v1/cfssl/sign",
                    "application/json",
                    body.to_string().as_bytes(),
                )
            })
            .collect();
        println!(
            "cfssl serve c=8: {} CSRs, running for {load_secs} s…",
            requests.len()
        );
        let out = load::run(
            &cfssl.target,
            &requests,
            8,
            length,
            Connections::KeepAlive,
            200,
        );
        let bad = judge(
            &out,
            &devs,
            &mut seen,
            |body| {
                let v: serde_json::Value =
                    serde_json::from_slice(body).map_err(|e| e.to_string())?;
                if v["success"] != true {
                    return Err(format!("not a success: {v}"));
                }
                Ok((
                    None,
                    v["result"]["certificate"].as_str().unwrap_or("").to_owned(),
                    None,
                ))
            },
            Some(&refs.cfssl_ca_spki),
        );
        Phase {
            name: "cfssl serve, c=8, keep-alive".into(),
            out,
            bad,
            memory: None,
        }
    };
    cf.print();
    drop(cfssl);

    // 3. Ours.
    let mut phases = Vec::new();
    for (name, threads, conns) in [
        ("issuance, c=1, keep-alive", 1, Connections::KeepAlive),
        ("issuance, c=8, keep-alive", 8, Connections::KeepAlive),
        ("issuance, c=32, keep-alive", 32, Connections::KeepAlive),
        (
            "issuance, c=8, new TLS connection per request",
            8,
            Connections::PerRequest,
        ),
    ] {
        let n = size(best);
        let t = Instant::now();
        let devs = devices.take(n);
        println!(
            "{name}: {n} CSRs made in {:.1} s, running for {load_secs} s…",
            t.elapsed().as_secs_f64()
        );
        let phase = issue_phase(name, &ours, &devs, threads, length, conns, &mut seen, pid);
        phase.print();
        best = best.max(phase.out.rate());
        phases.push(phase);
    }

    // 4. The raw handshake rate.
    let handshakes = refs.s_time(&station_dir, length);
    println!(
        "openssl s_server / s_time -new: {} handshakes in {:.1} s = {}/s",
        handshakes.0,
        handshakes.1.as_secs_f64(),
        thousands(handshakes.0 as f64 / handshakes.1.as_secs_f64())
    );

    // 5. EST simpleenroll.
    let est = {
        let devs = devices.take(size(best));
        let requests: Vec<Vec<u8>> = devs
            .iter()
            .map(|d| {
                let der = load::pem_blocks(&d.csr_pem, "CERTIFICATE REQUEST").remove(0);
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD.encode(der);
                load::post(
                    api,
                    "/.well-known/est/simpleenroll",
                    "application/pkcs10",
                    b64.as_bytes(),
                )
            })
            .collect();
        println!(
            "EST simpleenroll c=8: {} CSRs, running for {load_secs} s…",
            requests.len()
        );
        let out = load::run(&ours, &requests, 8, length, Connections::KeepAlive, 200);
        let bad = out
            .bodies
            .iter()
            .filter(|(_, b)| {
                let text: String = String::from_utf8_lossy(b).split_whitespace().collect();
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .ok()
                    .and_then(|der| cms::content_info::ContentInfo::from_der(&der).ok())
                    .is_none()
            })
            .count();
        Phase {
            name: "EST simpleenroll, c=8, keep-alive".into(),
            out,
            bad,
            memory: Some(memory(pid)),
        }
    };
    est.print();

    // 6. station batch.
    let batch = station_batch(&mut devices, batch_size, &running, tmp.path());
    let after = memory(pid);
    let issued_total = warm.out.ok
        + phases.iter().map(|p| p.out.ok).sum::<usize>()
        + est.out.ok
        + if batch.2 { batch_size } else { 0 };
    println!(
        "station batch: {} devices in {:.1} s ({}), kmsd VmRSS {:.0} MiB after {} issuances",
        thousands(batch_size as f64),
        batch.0.as_secs_f64(),
        batch.1,
        mib(after.0 as f64),
        thousands(issued_total as f64)
    );

    // The summary.
    let one = raw.one.rate();
    let cf_rate = cf.out.rate();
    let cf_p99 = cf.out.percentile(99.0);
    let hs_rate = handshakes.0 as f64 / handshakes.1.as_secs_f64();
    let mut rows = vec![
        format!("| raw token ECDSA P-256 C_Sign, 1 session | {}/s | {} in {:.1} s | – | – |", thousands(one), raw.one.count, raw.one.elapsed.as_secs_f64()),
        format!("| raw token ECDSA P-256 C_Sign, 2 sessions, 2 threads | {}/s | {} in {:.1} s | 1 session {}/s | {:.2} |", thousands(raw.two.rate()), raw.two.count, raw.two.elapsed.as_secs_f64(), thousands(one), raw.two.rate() / one),
        format!("| raw token C_Sign with a session copy of the key, 1 session (as kmsd signs) | {}/s | {} in {:.1} s | token key, 1 session {}/s | {:.2} |", thousands(raw.copy_one.rate()), raw.copy_one.count, raw.copy_one.elapsed.as_secs_f64(), thousands(one), raw.copy_one.rate() / one),
        format!("| raw token C_Sign with session copies, 2 sessions, 2 threads | {}/s | {} in {:.1} s | token key, 2 sessions {}/s | {:.2} |", thousands(raw.copy_two.rate()), raw.copy_two.count, raw.copy_two.elapsed.as_secs_f64(), thousands(raw.two.rate()), raw.copy_two.rate() / raw.two.rate()),
        format!("| cfssl serve 1.2.0, c=8, keep-alive mTLS (key in a file, no storage, no audit) | {}/s | {} | raw token 1 session {}/s | {:.2} |", thousands(cf_rate), cf.detail(), thousands(one), cf_rate / one),
    ];
    for p in &phases {
        rows.push(format!(
            "| {} | {}/s | {} | cfssl c=8 {}/s | {:.2} |",
            p.name,
            thousands(p.out.rate()),
            p.detail(),
            thousands(cf_rate),
            p.out.rate() / cf_rate
        ));
    }
    let c8 = &phases[1];
    rows.push(format!(
        "| target: issuance c=8 keep-alive ≥ 2× cfssl serve | {} | ours {}/s, cfssl {}/s | 2.00 | {:.2} |",
        met(c8.out.rate() >= 2.0 * cf_rate), thousands(c8.out.rate()), thousands(cf_rate), c8.out.rate() / cf_rate
    ));
    rows.push(format!(
        "| target: issuance c=8 p99 ≤ ½ cfssl's p99 | {} | ours {:.2} ms, cfssl {:.2} ms | 0.50 | {:.2} |",
        met(c8.out.percentile(99.0) <= 0.5 * cf_p99), c8.out.percentile(99.0), cf_p99, c8.out.percentile(99.0) / cf_p99
    ));
    rows.push(format!(
        "| openssl s_server / s_time -new: full TLS 1.3 handshakes, P-256, client certificate | {}/s | {} in {:.1} s, {S_TIME_CLIENTS} clients, one server process | – | – |",
        thousands(hs_rate), handshakes.0, handshakes.1.as_secs_f64()
    ));
    let fresh = &phases[3];
    rows.push(format!(
        "| target: issuance with a new connection each ≥ 80% of the raw handshake rate | {} | ours {}/s, s_time {}/s | 0.80 | {:.2} |",
        met(fresh.out.rate() >= 0.8 * hs_rate), thousands(fresh.out.rate()), thousands(hs_rate), fresh.out.rate() / hs_rate
    ));
    rows.push(format!(
        "| {} | {}/s | {} | issuance c=8 {}/s | {:.2} |",
        est.name,
        thousands(est.out.rate()),
        est.detail(),
        thousands(c8.out.rate()),
        est.out.rate() / c8.out.rate()
    ));
    rows.push(format!(
        "| station batch: {} devices, 8 concurrent, files and journal written | {:.1} s | {}/s; {} | 15 s | {:.2} |",
        thousands(batch_size as f64), batch.0.as_secs_f64(), thousands(batch_size as f64 / batch.0.as_secs_f64()), batch.1, batch.0.as_secs_f64() / 15.0
    ));
    rows.push(format!(
        "| kmsd VmRSS after {} issuances | {:.0} MiB | VmHWM {:.0} MiB; idle at start {:.0} MiB | 64 MiB | {:.2} |",
        thousands(issued_total as f64), mib(after.0 as f64), mib(after.1 as f64), mib(idle.0 as f64), mib(after.0 as f64) / 64.0
    ));
    emit_table(&rows);

    let status = running.stop();
    println!("kmsd stopped on SIGTERM: {status}");
    let errors = warm.errors()
        + cf.errors()
        + est.errors()
        + phases.iter().map(Phase::errors).sum::<usize>();
    if errors > 0 {
        eprintln!("{errors} request(s) failed or were answered wrongly");
    }
    errors == 0 && status.success() && batch.2
}

fn met(yes: bool) -> &'static str {
    if yes {
        "met"
    } else {
        "not met"
    }
}

/// One issuance phase against kmsd's device API, judged.
#[allow(clippy::too_many_arguments)]
fn issue_phase(
    name: &str,
    target: &Target,
    devs: &[Device],
    threads: usize,
    length: Duration,
    conns: Connections,
    seen: &mut HashSet<Vec<u8>>,
    pid: u32,
) -> Phase {
    let requests: Vec<Vec<u8>> = devs
        .iter()
        .map(|d| {
            let body = serde_json::json!({ "csr": d.csr_pem, "hw_uuid": d.uuid });
            load::post(
                target.addr,
                &format!("/v1/devices/{}/certificate", d.serial),
                "application/json",
                body.to_string().as_bytes(),
            )
        })
        .collect();
    let out = load::run(target, &requests, threads, length, conns, 201);
    let bad = judge(
        &out,
        devs,
        seen,
        |body| {
            let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            if v["newly_issued"] != true {
                return Err(format!("not newly issued: {v}"));
            }
            Ok((
                v["serial_number"].as_str().map(str::to_owned),
                v["certificate"].as_str().unwrap_or("").to_owned(),
                v["chain"].as_str().map(str::to_owned),
            ))
        },
        None,
    );
    Phase {
        name: name.into(),
        out,
        bad,
        memory: Some(memory(pid)),
    }
}

/// Judge every answer of `out` off the clock: `read` gives (announced
/// serial, certificate PEM, chain PEM); the certificate must certify the
/// device's CSR key, carry a serial never seen, and verify under the
/// first chain certificate's key (or `issuer_spki`). The number of bad ones.
fn judge(
    out: &Outcome,
    devs: &[Device],
    seen: &mut HashSet<Vec<u8>>,
    read: impl Fn(&[u8]) -> Result<(Option<String>, String, Option<String>), String>,
    issuer_spki: Option<&[u8]>,
) -> usize {
    let mut bad = 0;
    let mut shown = 0;
    for (i, body) in &out.bodies {
        let verdict = (|| -> Result<(), String> {
            let (announced, cert_pem, chain) = read(body)?;
            let cert_der = load::pem_blocks(&cert_pem, "CERTIFICATE")
                .into_iter()
                .next()
                .ok_or("no certificate")?;
            let cert = x509_cert::Certificate::from_der(&cert_der).map_err(|e| e.to_string())?;
            let serial = cert.tbs_certificate.serial_number.as_bytes().to_vec();
            if let Some(a) = announced {
                if a.trim_start_matches('0') != hex::encode(&serial).trim_start_matches('0') {
                    return Err(format!("announced serial {a} is not the certificate's"));
                }
            }
            if !seen.insert(serial) {
                return Err("serial number seen before".into());
            }
            let csr_der = load::pem_blocks(&devs[*i].csr_pem, "CERTIFICATE REQUEST").remove(0);
            let csr = x509_cert::request::CertReq::from_der(&csr_der).map_err(|e| e.to_string())?;
            if csr.info.public_key != cert.tbs_certificate.subject_public_key_info {
                return Err("does not certify the CSR's key".into());
            }
            let issuer = match issuer_spki {
                Some(spki) => spki.to_vec(),
                None => {
                    let chain = chain.ok_or("no chain")?;
                    let first = load::pem_blocks(&chain, "CERTIFICATE")
                        .into_iter()
                        .next()
                        .ok_or("empty chain")?;
                    x509_cert::Certificate::from_der(&first)
                        .map_err(|e| e.to_string())?
                        .tbs_certificate
                        .subject_public_key_info
                        .to_der()
                        .map_err(|e| e.to_string())?
                }
            };
            let spki =
                spki::SubjectPublicKeyInfoRef::from_der(&issuer).map_err(|e| e.to_string())?;
            let tbs = cert.tbs_certificate.to_der().map_err(|e| e.to_string())?;
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_ASN1,
                spki.subject_public_key.raw_bytes(),
            )
            .verify(&tbs, cert.signature.raw_bytes())
            .map_err(|_| "signature does not verify under the issuer's key".to_owned())
        })();
        if let Err(e) = verdict {
            bad += 1;
            if shown < 10 {
                shown += 1;
                eprintln!("  bad answer to request {i} ({}): {e}", devs[*i].serial);
            }
        }
    }
    bad
}

/// `[token] module` and `[token.module_env]` of DIR/kmsd.toml.
fn token_section(dir: &Path) -> (PathBuf, Vec<(String, String)>) {
    let text = std::fs::read_to_string(dir.join("kmsd.toml")).unwrap();
    let toml: toml::Table = text.parse().unwrap();
    let token = toml["token"].as_table().expect("[token]");
    let module = PathBuf::from(token["module"].as_str().expect("token.module"));
    let env = token
        .get("module_env")
        .and_then(|e| e.as_table())
        .map(|t| {
            t.iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("string").to_owned()))
                .collect()
        })
        .unwrap_or_default();
    (module, env)
}

// ---------------------------------------------------------------- token

struct Count {
    count: u64,
    elapsed: Duration,
}

impl Count {
    fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }
}

struct Raw {
    one: Count,
    two: Count,
    copy_one: Count,
    copy_two: Count,
}

/// C_Sign loops on the token kmsd is using: one session, then two sessions
/// in two threads. The module is finalised before returning.
fn raw_token_rate(module: &Path, dir: &Path, secs: f64) -> Raw {
    let pkcs11 = Pkcs11::new(module).expect("load the PKCS#11 module");
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = pkcs11
        .get_slots_with_token()
        .expect("C_GetSlotList")
        .into_iter()
        .find(|s| {
            pkcs11
                .get_token_info(*s)
                .is_ok_and(|i| i.label() == TOKEN_LABEL)
        })
        .unwrap_or_else(|| panic!("no token labelled {TOKEN_LABEL}"));
    let pin = std::fs::read_to_string(dir.join("pin")).expect("DIR/pin");
    let pin = AuthPin::from(pin.trim_end_matches(['\n', '\r']).to_owned());

    // Login is per application: the other sessions share it while this
    // one stays open.
    let holder = pkcs11.open_ro_session(slot).expect("C_OpenSession");
    match holder.login(UserType::User, Some(&pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("C_Login: {e}"),
    }
    let deadline = Duration::from_secs_f64(secs);
    let (one, two) = sign_rates(&pkcs11, slot, false, deadline);
    let (copy_one, copy_two) = sign_rates(&pkcs11, slot, true, deadline);
    drop(holder);
    pkcs11.finalize().expect("C_Finalize");
    Raw {
        one,
        two,
        copy_one,
        copy_two,
    }
}

/// `C_Sign` on one session, then on two sessions in two threads, with the
/// intermediate key itself or (`copy`) with a session copy of it in each
/// session, as kmsd's pool signs.
fn sign_rates(
    pkcs11: &Pkcs11,
    slot: cryptoki::slot::Slot,
    copy: bool,
    deadline: Duration,
) -> (Count, Count) {
    let open = || {
        let session = pkcs11.open_ro_session(slot).expect("C_OpenSession");
        let mut key = intermediate_key(&session);
        if copy {
            key = session
                .copy_object(
                    key,
                    &[Attribute::Token(false), Attribute::Label(Vec::new())],
                )
                .expect("C_CopyObject");
        }
        (session, key)
    };
    let digest = [0x5au8; 32];
    let (first, key) = open();
    let sig = first.sign(&Mechanism::Ecdsa, key, &digest).expect("C_Sign");
    assert_eq!(sig.len(), 64, "a P-256 r||s signature");
    let one = sign_loop(&first, key, &digest, deadline, None);
    let (second, second_key) = open();
    let barrier = Barrier::new(2);
    let (a, b) = std::thread::scope(|s| {
        let (barrier, digest) = (&barrier, &digest);
        let a = s.spawn(move || sign_loop(&first, key, digest, deadline, Some(barrier)));
        let b = s.spawn(move || sign_loop(&second, second_key, digest, deadline, Some(barrier)));
        (a.join().unwrap(), b.join().unwrap())
    });
    let two = Count {
        count: a.count + b.count,
        elapsed: a.elapsed.max(b.elapsed),
    };
    (one, two)
}

fn intermediate_key(session: &Session) -> ObjectHandle {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(INTERMEDIATE_KEY.as_bytes().to_vec()),
        ])
        .expect("C_FindObjects");
    assert_eq!(found.len(), 1, "private keys labelled {INTERMEDIATE_KEY}");
    found[0]
}

/// Sign in a loop for `length`, after `start` (if any) lets everyone go.
fn sign_loop(
    session: &Session,
    key: ObjectHandle,
    digest: &[u8],
    length: Duration,
    start: Option<&Barrier>,
) -> Count {
    if let Some(b) = start {
        b.wait();
    }
    let t = Instant::now();
    let mut count = 0u64;
    while t.elapsed() < length {
        session
            .sign(&Mechanism::Ecdsa, key, digest)
            .expect("C_Sign");
        count += 1;
    }
    Count {
        count,
        elapsed: t.elapsed(),
    }
}

// ------------------------------------------------------------ references

/// Key material for the reference servers, made with the openssl CLI: a
/// P-256 CA for `cfssl serve` to sign with (key in a file, as cfssl keeps
/// it), and a P-256 TLS server certificate for 127.0.0.1 under a CA of its
/// own; both servers require a client certificate from the appliance's
/// internal CA, so the station's credential serves every target.
struct References {
    dir: PathBuf,
    station_ca: PathBuf,
    cfssl_ca_spki: Vec<u8>,
}

/// A running `cfssl serve`; stopped when dropped.
struct Cfssl {
    child: Child,
    addr: SocketAddr,
    target: Target,
}

impl Drop for Cfssl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl References {
    fn make(tmp: &Path, station_ca: &Path) -> Self {
        let dir = tmp.join("references");
        std::fs::create_dir_all(&dir).unwrap();
        let p256 = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let ca_ext = [
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ];
        for (name, cn) in [("cfssl-ca", "bench cfssl CA"), ("tls-ca", "bench TLS CA")] {
            let (key, cert, subj) = (
                format!("{name}-key.pem"),
                format!("{name}.pem"),
                format!("/CN={cn}"),
            );
            let mut args = vec!["req", "-x509"];
            args.extend(p256);
            args.extend([
                "-keyout", &key, "-out", &cert, "-subj", &subj, "-days", "30",
            ]);
            args.extend(ca_ext);
            openssl(&dir, &args);
        }
        let mut args = vec!["req"];
        args.extend(p256);
        args.extend([
            "-keyout",
            "tls-key.pem",
            "-out",
            "tls.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        openssl(&dir, &args);
        std::fs::write(
            dir.join("tls.ext"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n",
        )
        .unwrap();
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "tls.csr",
                "-CA",
                "tls-ca.pem",
                "-CAkey",
                "tls-ca-key.pem",
                "-CAcreateserial",
                "-out",
                "tls.pem",
                "-days",
                "30",
                "-extfile",
                "tls.ext",
            ],
        );
        let ca_der = load::pem_blocks(
            &std::fs::read_to_string(dir.join("cfssl-ca.pem")).unwrap(),
            "CERTIFICATE",
        )
        .remove(0);
        let cfssl_ca_spki = x509_cert::Certificate::from_der(&ca_der)
            .unwrap()
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .unwrap();
        Self {
            dir,
            station_ca: station_ca.to_owned(),
            cfssl_ca_spki,
        }
    }

    /// `cfssl serve` with mutual TLS on a free port, answering.
    fn cfssl(&self, cert_pem: &str, key_pem: &str) -> Cfssl {
        let port = softhsm_tests::free_port();
        let child = Command::new("cfssl")
            .current_dir(&self.dir)
            .args(["serve", "-address", "127.0.0.1", "-port", &port.to_string()])
            .args(["-ca", "cfssl-ca.pem", "-ca-key", "cfssl-ca-key.pem"])
            .args(["-tls-cert", "tls.pem", "-tls-key", "tls-key.pem"])
            .arg("-mutual-tls-ca")
            .arg(&self.station_ca)
            .args(["-loglevel", "5"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cfssl serve (apt-get install golang-cfssl)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let tls_ca = std::fs::read_to_string(self.dir.join("tls-ca.pem")).unwrap();
        let cfssl = Cfssl {
            child,
            addr,
            target: Target::new(addr, &tls_ca, cert_pem, key_pem),
        };
        wait_for_port(addr);
        cfssl
    }

    /// `openssl s_server` with the TLS certificate, client certificates
    /// required, and `s_time -new` with the station's credential against it
    /// for `length`: (handshakes, wall time).
    fn s_time(&self, station_dir: &Path, length: Duration) -> (u64, Duration) {
        let port = softhsm_tests::free_port();
        let mut server = Command::new("openssl")
            .current_dir(&self.dir)
            .args([
                "s_server",
                "-accept",
                &port.to_string(),
                "-cert",
                "tls.pem",
                "-key",
                "tls-key.pem",
            ])
            .arg("-CAfile")
            .arg(&self.station_ca)
            .args(["-Verify", "2", "-quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start openssl s_server");
        wait_for_port(format!("127.0.0.1:{port}").parse().unwrap());
        // Two clients, so that the server is never idle waiting for one.
        let t = Instant::now();
        let clients: Vec<Child> = (0..S_TIME_CLIENTS)
            .map(|_| {
                Command::new("openssl")
                    .current_dir(&self.dir)
                    .args(["s_time", "-connect", &format!("127.0.0.1:{port}"), "-new"])
                    .args(["-time", &format!("{}", length.as_secs().max(1))])
                    .arg("-cert")
                    .arg(station_dir.join("cert.pem"))
                    .arg("-key")
                    .arg(station_dir.join("key.pem"))
                    .args(["-CAfile", "tls-ca.pem", "-verify", "2"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("run openssl s_time")
            })
            .collect();
        let outs: Vec<_> = clients
            .into_iter()
            .map(|c| c.wait_with_output().expect("openssl s_time"))
            .collect();
        let wall = t.elapsed();
        let _ = server.kill();
        let _ = server.wait();
        let mut n = 0;
        for out in outs {
            let text = String::from_utf8_lossy(&out.stdout);
            // "N connections in X.XXs; …" (X is the client's user time).
            n += text
                .lines()
                .find_map(|l| {
                    l.split_once(" connections in ")
                        .map(|(n, _)| n.trim().to_owned())
                })
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| {
                    panic!(
                        "s_time printed no count:\n{text}\n{}",
                        String::from_utf8_lossy(&out.stderr)
                    )
                });
        }
        (n, wall)
    }
}

fn wait_for_port(addr: SocketAddr) {
    for _ in 0..200 {
        if TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {addr} after 10 s");
}

/// `n` devices through `station batch` (8 concurrent requests): the wall
/// time, its summary line, and whether every device was certified.
fn station_batch(
    devices: &mut Devices,
    n: usize,
    running: &Running,
    tmp: &Path,
) -> (Duration, String, bool) {
    let dir = tmp.join("batch");
    let csrs = dir.join("csr");
    std::fs::create_dir_all(&csrs).unwrap();
    let t = Instant::now();
    let devs = devices.take(n);
    let mut csv = String::from("serial,hw_uuid,csr\n");
    for d in &devs {
        let file = format!("csr/{}.pem", d.serial);
        std::fs::write(dir.join(&file), &d.csr_pem).unwrap();
        csv.push_str(&format!("{},{},{file}\n", d.serial, d.uuid));
    }
    std::fs::write(dir.join("devices.csv"), csv).unwrap();
    println!(
        "station batch: {} CSRs made and written in {:.1} s, running…",
        thousands(n as f64),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let out = Command::new(softhsm_tests::bin("station"))
        .args(["--url", &format!("https://127.0.0.1:{}", running.api)])
        .arg("--credential")
        .arg(running.dir.join(STATION))
        .arg("batch")
        .arg(dir.join("devices.csv"))
        .arg("--out")
        .arg(dir.join("out"))
        .args(["--concurrency", "8", "--no-progress"])
        .output()
        .expect("run station batch");
    let took = t.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = text
        .lines()
        .filter(|l| {
            ["done ", "failed ", "refused "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ");
    let journal = std::fs::read_to_string(dir.join("out/batch-journal.jsonl")).unwrap_or_default();
    let certified = journal
        .lines()
        .filter(|l| l.contains("\"newly_issued\":true"))
        .count();
    if !out.status.success() || certified != n {
        eprintln!(
            "station batch: {} ({certified} of {n} newly certified):\n{text}",
            out.status
        );
    }
    (took, summary, out.status.success() && certified == n)
}
