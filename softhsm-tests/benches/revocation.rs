//! Revocation at scale: CRLs of up to a million entries, revocations per
//! second with their fsyncs, and OCSP answers per second over HTTP, each
//! beside the reference that bounds it (one token signature, one fsync), in
//! one run on SoftHSM2.
//!
//! ```text
//! cargo build --release --bins
//! cargo bench -p softhsm-tests --bench revocation
//! KMS_BENCH_CRL_SIZES=10000,100000 KMS_BENCH_OCSP_SECONDS=2 cargo bench -p softhsm-tests --bench revocation   # short
//! ```
//!
//! - `KMS_BENCH_CRL_SIZES`: CRL sizes, ascending (default 10000,100000,1000000).
//! - `KMS_BENCH_OCSP_SECONDS`: length of each OCSP phase (default 5).
//!
//! What runs, in order:
//! 1. CRLs, in a child process of this binary (the PKCS#11 module reads its
//!    environment once per process) on a `kmsctl quickstart` appliance with
//!    `kmsd` stopped: synthetic intermediate-CA revocations are committed
//!    straight into the store, 10,000 per commit; at each size the
//!    start-up load ([`kms::revocation::Revocations::open`]: scan, decode,
//!    DER-encode every entry) is timed, then `publish` (build, token
//!    signature, audit record, counter commit) three times. The reference is
//!    one token signature with the same key through the same path
//!    (`TokenSigner`, median of 100). The smallest CRL is checked by
//!    `openssl crl -CAfile chain.pem`.
//! 2. Revocations, in a second child on a fresh quickstart appliance: 2,001
//!    device certificates issued in-process (CSRs with subject serialNumber
//!    and CN the module serial, SAN `urn:uuid:`), then 200 revoked one at a
//!    time with `Appliance::revoke` and 1,800 with `Appliance::revoke_many`
//!    (1,000 per call); the last certificate stays good. Every revocation
//!    is durable (audit fsync, sled flush) before it returns. The reference
//!    is the fsync rate of this file system (64-byte append + fdatasync).
//! 3. OCSP, in this process: `kmsd` on the second appliance, 8 threads each
//!    with a keep-alive `ureq` agent POSTing `/ocsp` in turn for the
//!    revoked and the good certificate, first without a nonce (answered
//!    from the cache), then with one (signed for each request). `/metrics`
//!    says how each was answered; `openssl ocsp -respin` checks a cached
//!    answer for each certificate. The reference is the raw token signature
//!    rate of step 1.
//!
//! Failures are printed and make the bench exit non-zero. Nothing about
//! time is asserted: the figures are printed as measured.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use kms::appliance::Appliance;
use kms::policy::Caller;
use kms::revocation::{CaName, RevocationRecord, Revocations, RevokeRequest};
use kms::token::TokenSigner;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use store::{Store, Tree, Write};

mod common;
use common::{
    disk_usage, emit_table, env_secs, fsync_rate, make_devices, median, memory, memory_self, mib,
    open_appliance, quickstart, require_release_bins, run_child, thousands, OrDie,
};

/// Synthetic revocations per store commit.
const FILL_BATCH: usize = 10_000;
/// Device certificates revoked one at a time, then in batches.
const SEQUENTIAL: usize = 200;
const BATCHED: usize = 1_800;
/// Serials per `revoke_many` call.
const BATCH: usize = 1_000;
/// Threads issuing the device certificates (setup, not measured).
const ISSUERS: usize = 4;
/// OCSP client threads.
const OCSP_THREADS: usize = 8;
/// The issue's target for a CRL of a million entries.
const TARGET_SECS: f64 = 3.0;
/// Failures printed per phase (all are counted).
const SHOW_FAILURES: usize = 5;

fn main() {
    common::phases_main("revocation", child, bench);
}

// ------------------------------------------------------------ parent

/// The whole run; `true` when nothing failed.
fn bench() -> bool {
    require_release_bins();
    let sizes = crl_sizes();
    let ocsp_secs = env_secs("KMS_BENCH_OCSP_SECONDS", 5.0);
    let started = Instant::now();
    print_header(&sizes, ocsp_secs);
    let mut failed = Vec::<String>::new();

    // 1. CRLs.
    let crl = {
        let tmp = tempfile::tempdir().or_die("temp dir");
        let dir = quickstart(tmp.path(), softhsm_tests::free_port());
        run_child("crl", &dir)
    };
    if crl["openssl_crl"]["ok"] != json!(true) {
        failed.push("openssl crl did not verify the CRL".into());
    }

    // 2. Revocations.
    let tmp = tempfile::tempdir().or_die("temp dir");
    let port = softhsm_tests::free_port();
    let dir = quickstart(tmp.path(), port);
    let rev = run_child("revoke", &dir);
    let fails = rev["failures"].as_u64().unwrap_or(u64::MAX);
    if fails != 0 {
        failed.push(format!("{fails} issuance(s) or revocation(s) failed"));
    }

    // 3. OCSP.
    let raw_rate = 1.0 / crl["raw_sign_s"].as_f64().expect("raw_sign_s");
    let ocsp = ocsp_phase(
        &dir,
        port,
        rev["revoked_serial"].as_str().expect("revoked_serial"),
        rev["good_serial"].as_str().expect("good_serial"),
        ocsp_secs,
    );
    failed.extend(ocsp.problems.iter().cloned());

    print_table(&crl, &rev, &ocsp, raw_rate);
    println!();
    println!(
        "total run time {:.0} s (release builds not included)",
        started.elapsed().as_secs_f64()
    );
    for f in &failed {
        eprintln!("FAILED: {f}");
    }
    failed.is_empty()
}

/// `KMS_BENCH_CRL_SIZES`, ascending.
fn crl_sizes() -> Vec<usize> {
    let Ok(v) = std::env::var("KMS_BENCH_CRL_SIZES") else {
        return vec![10_000, 100_000, 1_000_000];
    };
    let sizes: Option<Vec<usize>> = v
        .split(',')
        .map(|s| s.trim().replace('_', "").parse().ok().filter(|n| *n > 0))
        .collect();
    match sizes {
        Some(s) if !s.is_empty() && s.windows(2).all(|w| w[0] < w[1]) => s,
        _ => {
            eprintln!("KMS_BENCH_CRL_SIZES={v:?}: want ascending positive counts, comma-separated");
            std::process::exit(2);
        }
    }
}

fn print_header(sizes: &[usize], ocsp_secs: f64) {
    common::print_header("revocation", "kmsd", "");
    println!(
        "CRL sizes: {}; OCSP phases {ocsp_secs} s each, {OCSP_THREADS} threads",
        sizes
            .iter()
            .map(|n| thousands(*n as f64))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

// ------------------------------------------------------------- child

fn child(phase: &str, dir: &Path) -> Value {
    // Before the module is loaded and before any thread exists.
    let (app, _) = open_appliance(dir);
    match phase {
        "crl" => crl_phase(&app, dir),
        "revoke" => revoke_phase(&app, dir),
        other => panic!("unknown phase {other:?}"),
    }
}

/// Step 1: CRLs of every size, and the raw token signature.
fn crl_phase(app: &Appliance, dir: &Path) -> Value {
    let sizes = crl_sizes();
    let signer =
        TokenSigner::new(app.token.clone(), &app.cfg.ca.intermediate_key).or_die("TokenSigner");
    ca::Signer::sign(&signer, b"x").or_die("token signature");
    let times: Vec<Duration> = (0..100)
        .map(|_| {
            let t = Instant::now();
            ca::Signer::sign(&signer, b"x").or_die("token signature");
            t.elapsed()
        })
        .collect();
    let raw_sign = median(times);
    eprintln!(
        "raw token signature (TokenSigner, intermediate key): median {:.3} ms",
        ms(raw_sign)
    );

    let store: Arc<dyn Store> = app.store.clone();
    let mut filled = 0;
    let mut rows = Vec::new();
    let mut openssl_crl = json!(null);
    for &size in &sizes {
        let t = Instant::now();
        fill(store.as_ref(), filled, size);
        let fill_time = t.elapsed();
        eprintln!(
            "stored {} synthetic revocations in {:.1} s ({}/s)",
            thousands((size - filled) as f64),
            fill_time.as_secs_f64(),
            thousands((size - filled) as f64 / fill_time.as_secs_f64())
        );
        filled = size;
        let disk = disk_usage(&app.cfg.storage.path);

        let before = memory_self();
        let t = Instant::now();
        let revs = Revocations::open(
            &app.cfg,
            &app.token,
            store.clone(),
            app.audit.clone(),
            app.metrics.clone(),
        )
        .or_die("Revocations::open");
        let load = t.elapsed();
        let after_load = memory_self();
        eprintln!(
            "{} entries: start-up load {:.0} ms",
            thousands(size as f64),
            ms(load)
        );
        let mut runs = Vec::new();
        let mut last = None;
        for _ in 0..3 {
            let t = Instant::now();
            let crl = revs
                .publish(CaName::Intermediate, "bench")
                .or_die("publish the intermediate CRL");
            runs.push(t.elapsed());
            last = Some(crl);
        }
        let crl = last.expect("three publications");
        assert_eq!(crl.entries, size, "entries in the CRL");
        let after_publish = memory_self();
        eprintln!(
            "{} entries: publish {} ms, {} bytes",
            thousands(size as f64),
            runs.iter()
                .map(|d| format!("{:.0}", ms(*d)))
                .collect::<Vec<_>>()
                .join(" / "),
            thousands(crl.der.len() as f64)
        );
        if size == sizes[0] {
            openssl_crl = openssl_crl_check(dir, &crl.der);
            eprintln!("openssl crl: {}", openssl_crl["said"]);
        }
        let der_bytes = crl.der.len();
        drop(crl);
        drop(revs);
        rows.push(json!({
            "size": size,
            "fill_s": fill_time.as_secs_f64(),
            "disk_kb": disk,
            "load_s": load.as_secs_f64(),
            "publish_runs_s": runs.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
            "publish_s": median(runs).as_secs_f64(),
            "der_bytes": der_bytes,
            "rss_before_kb": before.0,
            "rss_after_load_kb": after_load.0,
            "rss_after_publish_kb": after_publish.0,
            "hwm_kb": after_publish.1,
        }));
    }
    json!({
        "raw_sign_s": raw_sign.as_secs_f64(),
        "sizes": rows,
        "openssl_crl": openssl_crl,
    })
}

/// Store synthetic revocations number `from..to` (intermediate CA).
fn fill(store: &dyn Store, from: usize, to: usize) {
    for start in (from..to).step_by(FILL_BATCH) {
        let writes: Vec<Write> = (start..(start + FILL_BATCH).min(to))
            .map(|i| {
                let serial_number = synthetic_serial(i);
                let record = RevocationRecord {
                    serial_number: serial_number.clone(),
                    ca: CaName::Intermediate,
                    subject: "VBUS-CPU-2412-000001".into(),
                    reason: ca::RevocationReason::KeyCompromise,
                    revoked_at: "2026-11-25T00:00:00Z".into(),
                    invalidity_date: None,
                    revoked_by: "bench".into(),
                };
                Write::Insert {
                    tree: Tree::Revocations,
                    key: serial_number.into_bytes(),
                    value: serde_json::to_vec(&record).or_die("record to JSON"),
                }
            })
            .collect();
        store
            .commit(&writes)
            .or_die("commit synthetic revocations")
            .unwrap_or_else(|c| panic!("synthetic serial collision in {}", c.tree.name()));
    }
}

/// 16 random-looking bytes, the first in 0x40..=0x7f (positive, no
/// leading zero byte), lowercase hex.
fn synthetic_serial(i: usize) -> String {
    let digest = Sha256::digest((i as u64).to_be_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[0] = 0x40 | (b[0] & 0x3f);
    hex::encode(b)
}

/// `openssl crl -inform DER -noout -CAfile DIR/ca/chain.pem` on `der`.
fn openssl_crl_check(dir: &Path, der: &[u8]) -> Value {
    let path = dir.join("bench.crl");
    std::fs::write(&path, der).or_die("write the CRL");
    let out = softhsm_tests::run(
        Command::new("openssl")
            .args(["crl", "-inform", "DER", "-noout", "-in"])
            .arg(&path)
            .arg("-CAfile")
            .arg(dir.join("ca/chain.pem")),
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim()
    .to_owned();
    json!({
        "ok": out.status.success() && said.contains("verify OK"),
        "said": said,
    })
}

/// Step 2: issue, then revoke one at a time and in batches.
fn revoke_phase(app: &Appliance, dir: &Path) -> Value {
    let n = SEQUENTIAL + BATCHED + 1;
    let t = Instant::now();
    let devices = make_devices(n);
    eprintln!("{n} device CSRs made in {:.1} s", t.elapsed().as_secs_f64());
    let caller = Caller::local();
    let mut failures = 0u64;
    let t = Instant::now();
    let next = AtomicUsize::new(0);
    let issued: Vec<(usize, Result<String, String>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..ISSUERS)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    while let Some(d) = devices.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let got = app
                            .issue(&caller, &d.serial, &d.uuid, d.csr_pem.as_bytes(), false)
                            .map_err(|e| format!("{}: [{}] {e}", d.serial, e.code()))
                            .and_then(|v| {
                                if v.newly_issued {
                                    Ok(v.serial_number)
                                } else {
                                    Err(format!("{}: not newly issued", d.serial))
                                }
                            });
                        out.push((d.index, got));
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("issuing thread"))
            .collect()
    });
    let issue_time = t.elapsed();
    let mut serials = vec![String::new(); n];
    for (i, got) in issued {
        match got {
            Ok(s) => serials[i] = s,
            Err(e) => {
                failures += 1;
                if failures <= SHOW_FAILURES as u64 {
                    eprintln!("  issue FAILED {e}");
                }
            }
        }
    }
    assert!(
        failures == 0,
        "{failures} issuance(s) failed: nothing to revoke"
    );
    eprintln!(
        "{n} device certificates issued in {:.1} s ({}/s, {ISSUERS} threads)",
        issue_time.as_secs_f64(),
        thousands(n as f64 / issue_time.as_secs_f64())
    );

    let (fsyncs, fsync_time) = fsync_rate(dir, Duration::from_secs(1));
    eprintln!(
        "raw fsync: {}/s",
        thousands(fsyncs as f64 / fsync_time.as_secs_f64())
    );

    let req = RevokeRequest {
        reason: "keyCompromise".into(),
        invalidity_date: None,
        ca: None,
    };
    let audit_fsyncs = || app.metrics.audit_fsync.count();
    let f0 = audit_fsyncs();
    let t = Instant::now();
    for serial in &serials[..SEQUENTIAL] {
        match app.revoke(&caller, serial, &req) {
            Ok(r) if !r.already_revoked => {}
            Ok(_) => {
                failures += 1;
                eprintln!("  revoke {serial}: already revoked");
            }
            Err(e) => {
                failures += 1;
                eprintln!("  revoke {serial} FAILED: [{}] {e}", e.code());
            }
        }
    }
    let sequential = t.elapsed();
    let f1 = audit_fsyncs();
    eprintln!(
        "{SEQUENTIAL} revocations one at a time: {:.2} s ({}/s)",
        sequential.as_secs_f64(),
        thousands(SEQUENTIAL as f64 / sequential.as_secs_f64())
    );
    let t = Instant::now();
    for chunk in serials[SEQUENTIAL..SEQUENTIAL + BATCHED].chunks(BATCH) {
        let rows = app.revoke_many(&caller, chunk, &req).or_die("revoke_many");
        for row in &rows {
            if row.get("error").is_some() || row["already_revoked"] != json!(false) {
                failures += 1;
                if failures <= SHOW_FAILURES as u64 {
                    eprintln!("  revoke_many row FAILED: {row}");
                }
            }
        }
        assert_eq!(rows.len(), chunk.len(), "one row per serial");
    }
    let batched = t.elapsed();
    let f2 = audit_fsyncs();
    eprintln!(
        "{BATCHED} revocations in batches of {BATCH}: {:.2} s ({}/s)",
        batched.as_secs_f64(),
        thousands(BATCHED as f64 / batched.as_secs_f64())
    );
    json!({
        "devices": n,
        "issue_s": issue_time.as_secs_f64(),
        "fsyncs": fsyncs,
        "fsync_s": fsync_time.as_secs_f64(),
        "sequential": SEQUENTIAL,
        "sequential_s": sequential.as_secs_f64(),
        "sequential_audit_fsyncs": f1 - f0,
        "batched": BATCHED,
        "batched_s": batched.as_secs_f64(),
        "batched_audit_fsyncs": f2 - f1,
        "failures": failures,
        "revoked_serial": serials[0],
        "good_serial": serials[n - 1],
    })
}

// -------------------------------------------------------------- OCSP

/// One OCSP load phase's figures.
struct Load {
    ok: usize,
    failed: usize,
    elapsed: Duration,
    /// Sorted.
    latencies: Vec<Duration>,
    /// `POST /ocsp` answers by result during the phase, from `/metrics`.
    results: BTreeMap<String, u64>,
}

impl Load {
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
        Some(ms(self.latencies[rank.min(n) - 1]))
    }

    fn result(&self, name: &str) -> u64 {
        self.results.get(name).copied().unwrap_or(0)
    }
}

struct Ocsp {
    cached: Load,
    signed: Load,
    /// (certificate, what `openssl ocsp -respin` said, as expected).
    verified: Vec<(&'static str, String, bool)>,
    /// kmsd VmRSS and VmHWM (kB) after the phases.
    memory: (u64, u64),
    problems: Vec<String>,
}

/// Step 3: kmsd on `dir`, OCSP over HTTP.
fn ocsp_phase(dir: &Path, port: u16, revoked: &str, good: &str, secs: f64) -> Ocsp {
    eprintln!("starting kmsd …");
    let service = softhsm_tests::Service::start(dir, port);
    let pid = service.0.id();
    let issuer = dir.join("ca/intermediate.pem");
    let request = |serial: &str, nonce: bool| {
        let path = dir.join(format!(
            "{serial}-{}.req",
            if nonce { "nonce" } else { "plain" }
        ));
        let mut cmd = Command::new("openssl");
        cmd.args(["ocsp", "-issuer"])
            .arg(&issuer)
            .args(["-serial", &format!("0x{serial}")]);
        if !nonce {
            cmd.arg("-no_nonce");
        }
        let out = softhsm_tests::run(cmd.arg("-reqout").arg(&path));
        assert!(
            out.status.success(),
            "openssl ocsp -reqout: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(&path).or_die("read the OCSP request")
    };
    let plain = [request(revoked, false), request(good, false)];
    let nonced = [request(revoked, true), request(good, true)];
    let url = format!("http://127.0.0.1:{port}/ocsp");
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let length = Duration::from_secs_f64(secs);

    let m0 = ocsp_results(&metrics_url);
    eprintln!("OCSP without nonce, {OCSP_THREADS} threads, {secs} s …");
    let mut cached = hammer(&url, &plain, length);
    let m1 = ocsp_results(&metrics_url);
    eprintln!("OCSP with nonce, {OCSP_THREADS} threads, {secs} s …");
    let mut signed = hammer(&url, &nonced, length);
    let m2 = ocsp_results(&metrics_url);
    cached.results = delta(&m1, &m0);
    signed.results = delta(&m2, &m1);

    // One cached answer for each certificate, checked by openssl.
    let mut verified = Vec::new();
    let mut problems = Vec::new();
    for (what, serial, req, want) in [
        ("revoked", revoked, &plain[0], "revoked"),
        ("good", good, &plain[1], "good"),
    ] {
        let before = ocsp_results(&metrics_url);
        let der = post(&ureq::agent(), &url, req).unwrap_or_else(|e| panic!("POST /ocsp: {e}"));
        let after = delta(&ocsp_results(&metrics_url), &before);
        let path = dir.join(format!("{what}.resp"));
        std::fs::write(&path, &der).or_die("write the OCSP response");
        let out = softhsm_tests::run(
            Command::new("openssl")
                .args(["ocsp", "-respin"])
                .arg(&path)
                .arg("-issuer")
                .arg(&issuer)
                .args(["-serial", &format!("0x{serial}")])
                .arg("-CAfile")
                .arg(dir.join("ca/chain.pem")),
        );
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        let status_line = said
            .lines()
            .find(|l| l.trim_start().starts_with("0x"))
            .unwrap_or("")
            .trim()
            .to_owned();
        let was_cached = after.get("cached").copied() == Some(1);
        let ok = out.status.success()
            && said.contains("Response verify OK")
            && status_line.ends_with(&format!(": {want}"))
            && was_cached;
        if !ok {
            problems.push(format!(
                "cached OCSP answer for the {what} certificate (cached: {was_cached}): {}",
                said.trim()
            ));
        }
        let verdict = if said.contains("Response verify OK") {
            "Response verify OK"
        } else {
            "verify FAILED"
        };
        verified.push((
            what,
            format!(
                "{verdict}, {}{}",
                status_line.rsplit(": ").next().unwrap_or("?"),
                if was_cached {
                    " (cached)"
                } else {
                    " (not cached)"
                }
            ),
            ok,
        ));
    }
    for (name, l) in [("no nonce", &cached), ("nonce", &signed)] {
        if l.failed > 0 {
            problems.push(format!("OCSP {name}: {} request(s) failed", l.failed));
        }
    }
    let memory = memory(pid);
    let status = service.stop();
    if !status.success() {
        problems.push(format!("kmsd did not stop cleanly on SIGTERM: {status}"));
    }
    Ocsp {
        cached,
        signed,
        verified,
        memory,
        problems,
    }
}

/// `OCSP_THREADS` threads, each with its own keep-alive agent, POST the
/// requests in turn for `length`.
fn hammer(url: &str, requests: &[Vec<u8>], length: Duration) -> Load {
    let barrier = Barrier::new(OCSP_THREADS);
    let (mut latencies, fails): (Vec<Duration>, Vec<String>) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..OCSP_THREADS)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    let agent = ureq::AgentBuilder::new()
                        .timeout(Duration::from_secs(10))
                        .build();
                    let mut lat = Vec::new();
                    let mut fails = Vec::new();
                    barrier.wait();
                    let start = Instant::now();
                    let mut i = t;
                    while start.elapsed() < length {
                        let t = Instant::now();
                        match post(&agent, url, &requests[i % requests.len()]) {
                            Ok(der) if ocsp_successful(&der) => lat.push(t.elapsed()),
                            Ok(der) => fails.push(format!(
                                "not a successful OCSPResponse: {}",
                                hex::encode(&der[..der.len().min(16)])
                            )),
                            Err(e) => fails.push(e),
                        }
                        i += 1;
                    }
                    (lat, fails)
                })
            })
            .collect();
        let mut lat = Vec::new();
        let mut fails = Vec::new();
        for w in workers {
            let (l, f) = w.join().expect("OCSP thread");
            lat.extend(l);
            fails.extend(f);
        }
        (lat, fails)
    });
    latencies.sort_unstable();
    for f in fails.iter().take(SHOW_FAILURES) {
        eprintln!("  OCSP FAILED: {f}");
    }
    Load {
        ok: latencies.len(),
        failed: fails.len(),
        elapsed: length,
        latencies,
        results: BTreeMap::new(),
    }
}

/// POST a DER OCSP request; the response body.
fn post(agent: &ureq::Agent, url: &str, der: &[u8]) -> Result<Vec<u8>, String> {
    let resp = agent
        .post(url)
        .set("Content-Type", "application/ocsp-request")
        .send_bytes(der)
        .map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    resp.into_reader()
        .take(1 << 20)
        .read_to_end(&mut body)
        .map_err(|e| e.to_string())?;
    Ok(body)
}

/// `OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED successful(0), … }`.
fn ocsp_successful(der: &[u8]) -> bool {
    let header = match der.get(1) {
        Some(n) if *n < 0x80 => 2,
        Some(n) => 2 + usize::from(*n & 0x7f),
        None => return false,
    };
    der.first() == Some(&0x30) && der.get(header..header + 3) == Some(&[0x0a, 0x01, 0x00][..])
}

/// `kms_requests_total{endpoint="POST /ocsp",result=…}` from `/metrics`.
fn ocsp_results(url: &str) -> BTreeMap<String, u64> {
    let text = ureq::get(url)
        .call()
        .or_die("GET /metrics")
        .into_string()
        .or_die("read /metrics");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("kms_requests_total{endpoint=\"POST /ocsp\",result=\"")?;
            let (result, n) = rest.split_once("\"} ")?;
            Some((result.to_owned(), n.trim().parse().ok()?))
        })
        .collect()
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

// ------------------------------------------------------------ report

fn print_table(crl: &Value, rev: &Value, ocsp: &Ocsp, raw_rate: f64) {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let raw_sign = f(crl, "raw_sign_s");
    let mut rows: Vec<String> = Vec::new();
    rows.push(format!(
        "| raw token signature, intermediate key (TokenSigner, median of 100) | {:.3} ms | {}/s on 1 thread | – | – |",
        raw_sign * 1e3,
        thousands(raw_rate)
    ));
    let sizes = crl["sizes"].as_array().cloned().unwrap_or_default();
    let mut biggest = None;
    for s in &sizes {
        let n = f(s, "size");
        let load = f(s, "load_s");
        let publish = f(s, "publish_s");
        rows.push(format!(
            "| CRL {} entries: start-up load (Revocations::open) | {:.0} ms | {:.2} µs/entry; VmRSS +{:.0} MiB | – | – |",
            thousands(n),
            load * 1e3,
            load * 1e6 / n,
            mib(f(s, "rss_after_load_kb") - f(s, "rss_before_kb"))
        ));
        let runs: Vec<String> = s["publish_runs_s"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|v| format!("{:.0}", v.as_f64().unwrap_or(f64::NAN) * 1e3))
                    .collect()
            })
            .unwrap_or_default();
        rows.push(format!(
            "| CRL {} entries: publish (build, sign, audit, commit; median of 3) | {:.0} ms | {} bytes; runs {} ms; VmHWM {:.0} MiB; store {:.0} MiB on disk | 1 token signature {:.3} ms | ×{} |",
            thousands(n),
            publish * 1e3,
            thousands(f(s, "der_bytes")),
            runs.join(" / "),
            mib(f(s, "hwm_kb")),
            mib(f(s, "disk_kb")),
            raw_sign * 1e3,
            thousands(publish / raw_sign)
        ));
        biggest = Some((n, publish));
    }
    if let Some((n, publish)) = biggest.filter(|(n, _)| *n >= 1e6) {
        rows.push(format!(
            "| target: {} entries built and signed in under {TARGET_SECS} s | {} ({:.2} s) | publish, median of 3 | {TARGET_SECS} s | {:.2} |",
            thousands(n),
            if publish < TARGET_SECS { "met" } else { "MISSED" },
            publish,
            publish / TARGET_SECS
        ));
    }
    let v = &crl["openssl_crl"];
    rows.push(format!(
        "| CRL {} entries: openssl crl -CAfile chain.pem | {} | {} | – | – |",
        sizes
            .first()
            .map_or_else(|| "?".into(), |s| thousands(f(s, "size"))),
        if v["ok"] == json!(true) {
            "verified"
        } else {
            "NOT VERIFIED"
        },
        v["said"].as_str().unwrap_or("?").replace('\n', "; ")
    ));

    let fsync = f(rev, "fsyncs") / f(rev, "fsync_s");
    let devices = f(rev, "devices");
    rows.push(format!(
        "| setup: {} device certificates issued in-process ({ISSUERS} threads) | {}/s | {:.1} s | – | – |",
        thousands(devices),
        thousands(devices / f(rev, "issue_s")),
        f(rev, "issue_s")
    ));
    rows.push(format!(
        "| raw fsync, same file system (64 B append + fdatasync, 1 s) | {}/s | {:.2} ms each | – | – |",
        thousands(fsync),
        1e3 / fsync
    ));
    for (name, n, secs, fsyncs) in [
        (
            "revocation, one at a time (Appliance::revoke)",
            f(rev, "sequential"),
            f(rev, "sequential_s"),
            f(rev, "sequential_audit_fsyncs"),
        ),
        (
            "revocation, batched (Appliance::revoke_many, 1,000 per call)",
            f(rev, "batched"),
            f(rev, "batched_s"),
            f(rev, "batched_audit_fsyncs"),
        ),
    ] {
        let rate = n / secs;
        rows.push(format!(
            "| {name} | {}/s | {} in {:.2} s; {} audit fsyncs ({:.2} per revocation) + sled flushes | raw fsync {}/s | {:.2} |",
            thousands(rate),
            thousands(n),
            secs,
            thousands(fsyncs),
            fsyncs / n,
            thousands(fsync),
            rate / fsync
        ));
    }

    let pct = |l: &Load, p: f64| {
        l.percentile(p)
            .map_or_else(|| "–".into(), |v| format!("{v:.2}"))
    };
    for (name, l) in [
        (
            "OCSP POST /ocsp, no nonce (cache), 8 threads keep-alive",
            &ocsp.cached,
        ),
        (
            "OCSP POST /ocsp, nonce (signed each), 8 threads keep-alive",
            &ocsp.signed,
        ),
    ] {
        rows.push(format!(
            "| {name} | {}/s | {} in {:.1} s, {} failed; p50 {} ms, p99 {} ms; /metrics: cached {}, signed {} | raw token {}/s (1 thread) | {:.2} |",
            thousands(l.rate()),
            thousands(l.ok as f64),
            l.elapsed.as_secs_f64(),
            l.failed,
            pct(l, 50.0),
            pct(l, 99.0),
            thousands(l.result("cached") as f64),
            thousands(l.result("signed") as f64),
            thousands(raw_rate),
            l.rate() / raw_rate
        ));
    }
    for (what, said, ok) in &ocsp.verified {
        rows.push(format!(
            "| OCSP cached answer, {what} certificate: openssl ocsp -respin -CAfile chain.pem | {} | {said} | – | – |",
            if *ok { "ok" } else { "FAILED" }
        ));
    }
    rows.push(format!(
        "| kmsd memory after the OCSP phases | VmRSS {:.0} MiB | VmHWM {:.0} MiB | – | – |",
        mib(ocsp.memory.0 as f64),
        mib(ocsp.memory.1 as f64)
    ));
    emit_table(&rows);
    println!("CRL rows: one process with kmsd stopped, synthetic intermediate-CA revocations in the sled store; start-up load is Revocations::open (scan, decode, DER-encode each entry); ratio = publish / one token signature. Revocation rows: durable before returning (audit fdatasync + sled flush); ratio = revocations per raw fsync. OCSP rows: client-side latency; ratio = answers per raw token signature on 1 thread.");
    println!("Single run on a possibly shared machine: the figures are noisy.");
}

// ------------------------------------------------------------- small

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
