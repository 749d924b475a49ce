//! Load on the running appliance: device certificates per second through
//! the built `kmsd` binary and its mTLS API, at several concurrencies, read
//! against the raw ECDSA rate of the same SoftHSM2 token in the same run.
//!
//! ```text
//! cargo build --release --bins
//! cargo bench -p softhsm-tests --bench service
//! KMS_BENCH_SECONDS=3 cargo bench -p softhsm-tests --bench service   # short
//! ```
//!
//! - `KMS_BENCH_SECONDS`: length of each issuance phase (default 10).
//! - `KMS_BENCH_TOKEN_SECONDS`: length of each raw token phase (default 3).
//!
//! What runs, in order, against one `kmsctl quickstart` appliance with
//! `token.pool_size = 8`:
//! 1. the raw token rate: this process opens the token `kmsd` is using and
//!    loops `C_Sign` (`CKM_ECDSA`, 32-byte digest) with the intermediate CA
//!    key, on 1 session, then on 2 sessions in 2 threads;
//! 2. a warm-up of 200 issuances (not reported);
//! 3. issuance at C = 1, 8, 32 threads sharing one keep-alive
//!    [`station::Client`] (one pool of connections, one per busy thread),
//!    a new client per phase so that no idle connection of an earlier
//!    phase stays open (each thread's first request makes its connection);
//! 4. issuance at C = 8 with a new `Client`, so a new TCP connection and TLS
//!    handshake, per request (the client's construction is inside the
//!    latency).
//!
//! Every request is a distinct device (serial, UUID, key), its CSR made
//! before the clock starts. A phase stops at its deadline, or earlier if its
//! pre-made CSRs run out (said in the output). Every answer must be a new
//! certificate with a serial number not seen before; the client library also
//! checks that it certifies the CSR's key. Failures are printed and make the
//! bench exit non-zero, as does `kmsd` not stopping cleanly on SIGTERM.
//! Nothing about time is asserted: the figures are printed as measured.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashSet;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use softhsm_tests::Running;

mod common;
use common::{command_line, env_secs, memory, mib, require_release_bins, thousands};

const STATION: &str = "stations/station-01";
/// The token label and intermediate key label `kmsctl quickstart` uses.
const TOKEN_LABEL: &str = "vbus-kms";
const INTERMEDIATE_KEY: &str = "mfg-intermediate";
/// `token.pool_size` for this run (quickstart writes 4).
const POOL_SIZE: usize = 8;
/// Issuances before the measured phases; their rate sizes the CSR pools.
const WARMUP: usize = 200;
/// CSRs made per phase: this many times the best rate seen so far times
/// the phase length.
const POOL_MARGIN: f64 = 2.0;
/// Failures printed per phase (all are counted).
const SHOW_FAILURES: usize = 10;
/// Module serials have six digits.
const MAX_DEVICES: usize = 999_999;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    common::bench_main("service", &args, bench);
}

/// The whole run; `true` when nothing failed.
fn bench() -> bool {
    require_release_bins();
    let load_secs = env_secs("KMS_BENCH_SECONDS", 10.0);
    let token_secs = env_secs("KMS_BENCH_TOKEN_SECONDS", 3.0);

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

    print_header(load_secs, token_secs, pid);
    let idle = memory(pid);
    println!(
        "kmsd idle: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        mib(idle.0 as f64),
        mib(idle.1 as f64)
    );

    // 1. Raw token rate, same token, kmsd running (idle).
    let raw = raw_token_rate(&module, &dir, token_secs);
    println!(
        "raw token C_Sign: 1 session {}/s ({} in {:.2} s), 2 sessions {}/s ({} in {:.2} s)",
        thousands(raw.one.rate()),
        raw.one.count,
        raw.one.elapsed.as_secs_f64(),
        thousands(raw.two.rate()),
        raw.two.count,
        raw.two.elapsed.as_secs_f64()
    );

    let cred = station::Credential::from_dir(&dir.join(STATION)).expect("station credential");
    let base = format!("https://127.0.0.1:{}", running.api);
    let check = Check::default();
    let mut next_device = 1usize;
    let mut take = |n: usize| {
        let first = next_device;
        next_device += n;
        assert!(
            next_device <= MAX_DEVICES + 1,
            "out of six-digit module serials: lower KMS_BENCH_SECONDS"
        );
        make_devices(first, n)
    };

    // 2. Warm-up.
    let warm = take(WARMUP);
    let warm = run_phase(
        "warm-up",
        8,
        &warm,
        None,
        &Conn::Shared(&station::Client::new(&base, &cred).expect("client")),
        &check,
        running.publication,
        pid,
    );
    println!(
        "warm-up: {} ok, {} failed, {}/s at c=8 (not reported below)",
        warm.ok,
        warm.failed,
        thousands(warm.rate())
    );
    let mut best_rate = warm.rate().max(1.0);

    // 3. and 4. The measured phases.
    let phases: [(&str, usize, bool); 4] = [
        ("issuance c=1, keep-alive", 1, false),
        ("issuance c=8, keep-alive", 8, false),
        ("issuance c=32, keep-alive", 32, false),
        ("issuance c=8, new TLS connection per request", 8, true),
    ];
    let mut rows = Vec::new();
    for (name, threads, fresh) in phases {
        let n = ((best_rate * load_secs * POOL_MARGIN).ceil() as usize).max(WARMUP);
        let t = Instant::now();
        let devices = take(n);
        println!(
            "{name}: {n} CSRs made in {:.1} s, running for {load_secs} s…",
            t.elapsed().as_secs_f64()
        );
        // A client of its own per phase: dropped with its idle connections.
        let shared = station::Client::new(&base, &cred).expect("client");
        let conn = if fresh {
            Conn::PerRequest {
                base: &base,
                cred: &cred,
            }
        } else {
            Conn::Shared(&shared)
        };
        let row = run_phase(
            name,
            threads,
            &devices,
            Some(Duration::from_secs_f64(load_secs)),
            &conn,
            &check,
            running.publication,
            pid,
        );
        best_rate = best_rate.max(row.rate());
        rows.push(row);
    }

    print_table(&raw, &rows);

    // Stop kmsd cleanly.
    let status = running.stop();
    let stopped = status.success();
    println!("kmsd stopped on SIGTERM: {status}");
    if !stopped {
        let log = std::fs::read_to_string(dir.join("kmsd.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        eprintln!("kmsd.log (last lines, newest first):\n{}", tail.join("\n"));
    }
    let failed = warm.failed + rows.iter().map(|r| r.failed).sum::<usize>();
    if failed > 0 {
        eprintln!("{failed} request(s) failed or did not return a new certificate");
    }
    failed == 0 && stopped
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

fn print_header(load_secs: f64, token_secs: f64, pid: u32) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let kmsd = softhsm_tests::bin("kmsd");
    let built = command_line(
        "date",
        &[
            "-u",
            "-r",
            &kmsd.display().to_string(),
            "+%Y-%m-%dT%H:%M:%SZ",
        ],
    );
    println!("# vBus KMS service load benchmark");
    println!(
        "date: {}",
        command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])
    );
    println!(
        "machine: nproc {cpus} ({model}), kernel {}",
        command_line("uname", &["-r"])
    );
    println!(
        "kmsd: {} (built {built}), pid {pid}, token.pool_size = {POOL_SIZE}",
        kmsd.display()
    );
    println!("phases: issuance {load_secs} s each, raw token {token_secs} s each");
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

    let first = pkcs11.open_ro_session(slot).expect("C_OpenSession");
    // Login is per application: the other sessions share it.
    match first.login(UserType::User, Some(&pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("C_Login: {e}"),
    }
    let digest = [0x5au8; 32];
    let key = intermediate_key(&first);
    let sig = first.sign(&Mechanism::Ecdsa, key, &digest).expect("C_Sign");
    assert_eq!(sig.len(), 64, "a P-256 r||s signature");

    let deadline = Duration::from_secs_f64(secs);
    let one = sign_loop(&first, key, &digest, deadline, None);
    let second = pkcs11.open_ro_session(slot).expect("C_OpenSession");
    let second_key = intermediate_key(&second);
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
    // Both sessions are closed (and the login with them).
    pkcs11.finalize().expect("C_Finalize");
    Raw { one, two }
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

// ------------------------------------------------------------- issuance

/// One device: its module serial, hardware UUID and CSR (fresh key).
struct Device {
    serial: String,
    uuid: String,
    csr_pem: String,
}

/// Devices `first..first + n`, made on every CPU.
fn make_devices(first: usize, n: usize) -> Vec<Device> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = n.div_ceil(workers).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (first..first + n)
            .step_by(chunk)
            .map(|start| {
                let end = (start + chunk).min(first + n);
                s.spawn(move || (start..end).map(device).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

fn device(i: usize) -> Device {
    let serial = format!("VBUS-CPU-2412-{i:06}");
    let der = ca::testing::device_csr(&serial);
    assert!(!der.is_empty(), "device_csr({serial}) failed");
    let csr_pem = der::pem::encode_string("CERTIFICATE REQUEST", der::pem::LineEnding::LF, &der)
        .expect("PEM");
    Device {
        serial,
        uuid: format!("6f9619ff-8b86-4011-b42d-{i:012x}"),
        csr_pem,
    }
}

/// How requests reach the appliance.
enum Conn<'a> {
    /// One keep-alive client shared by every thread.
    Shared(&'a station::Client),
    /// A new client, so a new connection, per request.
    PerRequest {
        base: &'a str,
        cred: &'a station::Credential,
    },
}

/// Certificate serial numbers seen so far, across phases.
#[derive(Default)]
struct Check {
    serials: Mutex<HashSet<String>>,
}

impl Check {
    /// `Err` unless `got` is a new certificate with a new serial number.
    fn judge(&self, got: station::Result<station::Enrolled>) -> Result<(), String> {
        let got = got.map_err(|e| format!("[{}] {e}", e.code()))?;
        if !got.newly_issued {
            return Err(format!("not newly issued (serial {})", got.serial_number));
        }
        if !self
            .serials
            .lock()
            .unwrap()
            .insert(got.serial_number.clone())
        {
            return Err(format!("serial {} issued twice", got.serial_number));
        }
        Ok(())
    }
}

/// One phase's figures.
struct Row {
    name: String,
    ok: usize,
    failed: usize,
    elapsed: Duration,
    /// Latencies of the successful requests, sorted.
    latencies: Vec<Duration>,
    /// kmsd VmRSS and VmHWM (kB) right after the phase.
    memory: (u64, u64),
    /// Most API connections kmsd reported open during the phase.
    max_open: Option<i64>,
    /// The pre-made CSRs ran out before the deadline.
    ran_out: bool,
}

impl Row {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// Nearest-rank percentile, in ms.
    fn percentile(&self, p: f64) -> Option<f64> {
        let n = self.latencies.len();
        if n == 0 {
            return None;
        }
        let rank = ((p / 100.0) * n as f64).ceil().max(1.0) as usize;
        Some(self.latencies[rank.min(n) - 1].as_secs_f64() * 1e3)
    }
}

/// `threads` threads issue `devices` until `length` is up (or, without one,
/// all of them). kmsd's open connections are sampled meanwhile.
#[allow(clippy::too_many_arguments)]
fn run_phase(
    name: &str,
    threads: usize,
    devices: &[Device],
    length: Option<Duration>,
    conn: &Conn<'_>,
    check: &Check,
    publication: u16,
    pid: u32,
) -> Row {
    let next = AtomicUsize::new(0);
    let ran_out = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let max_open = AtomicI64::new(i64::MIN);
    let failures = Mutex::new(Vec::<String>::new());
    let start = Instant::now();
    let deadline = length.map(|l| start + l);
    let latencies = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if let Some(n) = open_connections(publication) {
                    max_open.fetch_max(n, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut lat = Vec::new();
                    loop {
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            break;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(d) = devices.get(i) else {
                            if deadline.is_some() {
                                ran_out.store(true, Ordering::Relaxed);
                            }
                            break;
                        };
                        let t = Instant::now();
                        let got = match conn {
                            Conn::Shared(c) => c.enroll(&d.serial, &d.uuid, &d.csr_pem),
                            Conn::PerRequest { base, cred } => station::Client::new(base, cred)
                                .and_then(|c| c.enroll(&d.serial, &d.uuid, &d.csr_pem)),
                        };
                        let took = t.elapsed();
                        match check.judge(got) {
                            Ok(()) => lat.push(took),
                            Err(e) => failures.lock().unwrap().push(format!("{}: {e}", d.serial)),
                        }
                    }
                    lat
                })
            })
            .collect();
        let mut all: Vec<Duration> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        done.store(true, Ordering::Relaxed);
        all.sort_unstable();
        all
    });
    let elapsed = start.elapsed();
    let failures = failures.into_inner().unwrap();
    for f in failures.iter().take(SHOW_FAILURES) {
        eprintln!("  {name}: FAILED {f}");
    }
    if failures.len() > SHOW_FAILURES {
        eprintln!(
            "  {name}: … {} more failures",
            failures.len() - SHOW_FAILURES
        );
    }
    let max_open = max_open.into_inner();
    Row {
        name: name.to_owned(),
        ok: latencies.len(),
        failed: failures.len(),
        elapsed,
        latencies,
        memory: memory(pid),
        max_open: (max_open != i64::MIN).then_some(max_open),
        ran_out: ran_out.into_inner(),
    }
}

/// `kms_connections_open` from `/metrics` on the publication port.
fn open_connections(port: u16) -> Option<i64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("kms_connections_open "))
        .and_then(|n| n.trim().parse().ok())
}

// ---------------------------------------------------------------- report

fn print_table(raw: &Raw, rows: &[Row]) {
    let (one, two) = (raw.one.rate(), raw.two.rate());
    let ms = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), |v| format!("{v:.1}"));
    println!();
    println!("| phase | ok | failed | s | per second | p50 ms | p99 ms | p99.9 ms | kmsd VmRSS / VmHWM MiB | max open conns | × raw 1-session | × raw 2-session |");
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for (name, c) in [
        ("raw token C_Sign, 1 session", &raw.one),
        ("raw token C_Sign, 2 sessions / 2 threads", &raw.two),
    ] {
        println!(
            "| {name} | {} | 0 | {:.1} | {} | – | – | – | – | – | {:.2} | {:.2} |",
            thousands(c.count as f64),
            c.elapsed.as_secs_f64(),
            thousands(c.rate()),
            c.rate() / one,
            c.rate() / two
        );
    }
    for r in rows {
        println!(
            "| {}{} | {} | {} | {:.1} | {} | {} | {} | {} | {:.0} / {:.0} | {} | {:.3} | {:.3} |",
            r.name,
            if r.ran_out { " (CSRs ran out)" } else { "" },
            thousands(r.ok as f64),
            r.failed,
            r.elapsed.as_secs_f64(),
            thousands(r.rate()),
            ms(r.percentile(50.0)),
            ms(r.percentile(99.0)),
            ms(r.percentile(99.9)),
            mib(r.memory.0 as f64),
            mib(r.memory.1 as f64),
            r.max_open.map_or_else(|| "?".to_owned(), |n| n.to_string()),
            r.rate() / one,
            r.rate() / two
        );
    }
    println!();
    for r in rows {
        println!(
            "{}: {}/s = {:.3} × raw 1-session ({}/s), {:.3} × raw 2-session ({}/s)",
            r.name,
            thousands(r.rate()),
            r.rate() / one,
            thousands(one),
            r.rate() / two,
            thousands(two)
        );
    }
    println!();
    println!("Latency: client-side, per successful request (for the new-connection row it includes building the client, TCP connect and the TLS handshake); nearest-rank percentiles, so p99.9 of fewer than 1,000 requests is the slowest one.");
    println!("Memory: kmsd's /proc/<pid>/status right after each phase; VmHWM is the peak since kmsd started. Max open conns: kms_connections_open sampled every 200 ms.");
    println!("Single run on a possibly shared machine: the figures are noisy.");
}
