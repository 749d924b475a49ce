//! Device secrets and their escrow: PSKs issued per second (durable), and
//! how fast a KEK rotation re-wraps 100,000 escrowed blobs, each beside the
//! reference that bounds it (one fsync, one token AES-GCM operation), in one
//! run on SoftHSM2.
//!
//! ```text
//! cargo build --release --bins
//! cargo bench -p softhsm-tests --bench escrow
//! KMS_BENCH_ESCROW_BLOBS=10000 cargo bench -p softhsm-tests --bench escrow   # short
//! ```
//!
//! - `KMS_BENCH_ESCROW_BLOBS`: escrow records the KEK rotation re-wraps
//!   (default 100000).
//!
//! What runs, in order, each phase in a child process of this binary (the
//! PKCS#11 module reads its environment once per process) on its own
//! `kmsctl quickstart` appliance, with `kmsd` stopped, the appliance opened
//! in-process and escrow KEK version 1 made (`ensure_kek`):
//! 1. PSKs: the raw token rates (one AES-GCM encryption of 32 bytes under
//!    the KEK, one decryption, one `random(32)`, medians of 200); 2,500
//!    device certificates issued in-process for `station-01` (the CSRs of
//!    `common::device`); the fsync rate of this file system (64-byte append
//!    and fdatasync, after a warm-up that writes back what issuing left
//!    dirty); then `Appliance::issue_secret(station-01, serial,
//!    "psk")` for 500 devices from one thread, and for 2,000 more from 8
//!    threads (250 devices each). Every PSK is durable before it returns
//!    (audit fsync, sled flush). The reference is the fsync-bound ceiling:
//!    raw fsyncs per second / 2 (one audit fdatasync and one sled flush per
//!    PSK).
//! 2. KEK rotation: `KMS_BENCH_ESCROW_BLOBS` escrow records sealed under KEK
//!    version 1 (`EscrowRecord::seal`: a token encryption and a verifying
//!    decryption each) and committed straight into the store, 1,000 per
//!    commit (setup, timed apart); then `Appliance::rotate_kek_step(local,
//!    1000)` until it answers `"done": true`. Each blob is a token
//!    decryption under the old KEK, an encryption under the new one, a
//!    verifying decryption, and one compare-and-swap commit (flushed). The
//!    reference is the raw token AES-GCM rate of step 1 / 3.
//! 3. Check: 100 records spread over the store open with KEK version 2,
//!    to the secrets sealed in step 2; the KEK versions are (2, none) and
//!    `escrow-kek-1` is gone from the token.
//!
//! Failures are printed and make the bench exit non-zero. Nothing about
//! time is asserted: the figures are printed as measured.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use escrow::{EscrowRecord, SecretKind};
use kms::appliance::Appliance;
use kms::policy::Caller;
use kms::secrets::kek_label;
use kms::token::TokenKeyWrapper;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use store::{Store, Tree, Write};

mod common;
use common::{
    disk_usage, emit_table, fsync_rate, make_devices, median, memory_self, mib, open_appliance,
    quickstart, require_release_bins, run_child, thousands, OrDie,
};

/// The quickstart station, owner of the devices.
const STATION: &str = "station-01";
/// Devices whose PSKs one thread issues.
const SINGLE: usize = 500;
/// Threads issuing PSKs at once, and devices per thread.
const THREADS: usize = 8;
const PER_THREAD: usize = 250;
/// Threads issuing the device certificates (setup, not measured).
const ISSUERS: usize = 4;
/// Default number of escrow records the rotation re-wraps.
const DEFAULT_BLOBS: usize = 100_000;
/// Escrow records per store commit when filling.
const FILL_BATCH: usize = 1_000;
/// Blobs per `rotate_kek_step`.
const STEP: usize = 1_000;
/// Rotated records opened with the new KEK afterwards.
const SAMPLE: usize = 100;
/// Medians of the raw token operations are over this many.
const RAW_RUNS: usize = 200;
/// Token operations per re-wrapped blob: decrypt, encrypt, verifying decrypt.
const OPS_PER_BLOB: f64 = 3.0;
/// Durable writes per PSK: the audit fdatasync and the sled flush.
const FSYNCS_PER_PSK: f64 = 2.0;
/// Failures printed per phase (all are counted).
const SHOW_FAILURES: usize = 5;

fn main() {
    common::phases_main("escrow", child, bench);
}

// ------------------------------------------------------------ parent

/// The whole run; `true` when nothing failed.
fn bench() -> bool {
    require_release_bins();
    let blobs = blob_count();
    let started = Instant::now();
    print_header(blobs);
    let mut failed = Vec::<String>::new();

    // 1. PSKs.
    let psk = {
        let tmp = tempfile::tempdir().or_die("temp dir");
        let dir = quickstart(tmp.path(), softhsm_tests::free_port());
        run_child("psk", &dir)
    };
    let fails = psk["failures"].as_u64().unwrap_or(u64::MAX);
    if fails != 0 {
        failed.push(format!("{fails} PSK issuance(s) failed or were wrong"));
    }

    // 2 and 3. KEK rotation, then the check.
    let rot = {
        let tmp = tempfile::tempdir().or_die("temp dir");
        let dir = quickstart(tmp.path(), softhsm_tests::free_port());
        run_child("rotate", &dir)
    };
    for p in rot["problems"].as_array().into_iter().flatten() {
        failed.push(p.as_str().unwrap_or("?").to_owned());
    }

    print_table(&psk, &rot, blobs);
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

/// `KMS_BENCH_ESCROW_BLOBS`, or [`DEFAULT_BLOBS`].
fn blob_count() -> usize {
    let Ok(v) = std::env::var("KMS_BENCH_ESCROW_BLOBS") else {
        return DEFAULT_BLOBS;
    };
    match v.trim().replace('_', "").parse::<usize>() {
        Ok(n) if n >= SAMPLE => n,
        _ => {
            eprintln!("KMS_BENCH_ESCROW_BLOBS={v:?}: want a count of at least {SAMPLE}");
            std::process::exit(2);
        }
    }
}

fn print_header(blobs: usize) {
    common::print_header("escrow", "kmsctl", " (quickstart)");
    println!(
        "PSKs: {SINGLE} from 1 thread, {} from {THREADS} threads; KEK rotation: {} blobs{}, {STEP} per step",
        thousands((THREADS * PER_THREAD) as f64),
        thousands(blobs as f64),
        if blobs == DEFAULT_BLOBS {
            String::new()
        } else {
            format!(
                " (KMS_BENCH_ESCROW_BLOBS; default {})",
                thousands(DEFAULT_BLOBS as f64)
            )
        }
    );
}

// ------------------------------------------------------------- child

fn child(phase: &str, dir: &Path) -> Value {
    // Before the module is loaded and before any thread exists.
    let (app, token) = open_appliance(dir);
    let kek = kms::secrets::ensure_kek(&token, app.store.as_ref(), &app.audit, "bench")
        .or_die("ensure_kek");
    assert_eq!(kek, 1, "a fresh quickstart starts at KEK version 1");
    match phase {
        "psk" => psk_phase(&app, dir),
        "rotate" => rotate_phase(&app),
        other => panic!("unknown phase {other:?}"),
    }
}

/// Median of [`RAW_RUNS`] timed calls of `f`, after one untimed.
fn median_of(mut f: impl FnMut()) -> Duration {
    f();
    median(
        (0..RAW_RUNS)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

/// Step 1: raw token rates, device certificates, fsync rate, then PSKs
/// from one thread and from [`THREADS`].
fn psk_phase(app: &Appliance, dir: &Path) -> Value {
    let token = &app.token;
    let kek = kek_label(1);
    let plaintext = [0u8; 32];
    let gcm_encrypt = median_of(|| {
        token
            .gcm_encrypt(&kek, b"aad", &plaintext)
            .or_die("token AES-GCM encryption");
    });
    let sealed = token
        .gcm_encrypt(&kek, b"aad", &plaintext)
        .or_die("token AES-GCM encryption");
    let gcm_decrypt = median_of(|| {
        let back = token
            .gcm_decrypt(&kek, &sealed, b"aad")
            .or_die("token AES-GCM decryption");
        assert_eq!(back.as_slice(), plaintext, "AES-GCM round trip");
    });
    let random = median_of(|| {
        token.random(32).or_die("token random");
    });
    eprintln!(
        "raw token: AES-GCM encrypt {:.1} µs, decrypt {:.1} µs, random(32) {:.1} µs (medians of {RAW_RUNS})",
        us(gcm_encrypt),
        us(gcm_decrypt),
        us(random)
    );

    // Devices station-01 owns: one set for the single thread, one per thread.
    let n = SINGLE + THREADS * PER_THREAD;
    let t = Instant::now();
    let devices = make_devices(n);
    eprintln!("{n} device CSRs made in {:.1} s", t.elapsed().as_secs_f64());
    let station = Caller::Client(STATION.into());
    let t = Instant::now();
    let next = AtomicUsize::new(0);
    let issued: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..ISSUERS)
            .map(|_| {
                s.spawn(|| {
                    let mut fails = Vec::new();
                    while let Some(d) = devices.get(next.fetch_add(1, Ordering::Relaxed)) {
                        match app.issue(&station, &d.serial, &d.uuid, d.csr_pem.as_bytes(), false) {
                            Ok(v) if v.newly_issued => {}
                            Ok(_) => fails.push(format!("{}: not newly issued", d.serial)),
                            Err(e) => fails.push(format!("{}: [{}] {e}", d.serial, e.code())),
                        }
                    }
                    fails
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("issuing thread"))
            .collect()
    });
    let issue_time = t.elapsed();
    for e in issued.iter().take(SHOW_FAILURES) {
        eprintln!("  issue FAILED {e}");
    }
    assert!(
        issued.is_empty(),
        "{} issuance(s) failed: no devices for the PSKs",
        issued.len()
    );
    eprintln!(
        "{n} device certificates issued for {STATION} in {:.1} s ({}/s, {ISSUERS} threads)",
        issue_time.as_secs_f64(),
        thousands(n as f64 / issue_time.as_secs_f64())
    );

    // The first fdatasync also writes back what issuing left dirty.
    let _ = fsync_rate(dir, Duration::from_millis(500));
    let (fsyncs, fsync_time) = fsync_rate(dir, Duration::from_secs(1));
    eprintln!(
        "raw fsync: {}/s",
        thousands(fsyncs as f64 / fsync_time.as_secs_f64())
    );

    let serials: Vec<&str> = devices.iter().map(|d| d.serial.as_str()).collect();
    let single = psk_run(app, &station, &[&serials[..SINGLE]]);
    eprintln!(
        "{SINGLE} PSKs, 1 thread: {:.2} s ({}/s)",
        single.elapsed.as_secs_f64(),
        thousands(single.rate())
    );
    let chunks: Vec<&[&str]> = serials[SINGLE..].chunks(PER_THREAD).collect();
    let multi = psk_run(app, &station, &chunks);
    eprintln!(
        "{} PSKs, {THREADS} threads: {:.2} s ({}/s)",
        THREADS * PER_THREAD,
        multi.elapsed.as_secs_f64(),
        thousands(multi.rate())
    );
    json!({
        "gcm_encrypt_s": gcm_encrypt.as_secs_f64(),
        "gcm_decrypt_s": gcm_decrypt.as_secs_f64(),
        "random_s": random.as_secs_f64(),
        "devices": n,
        "issue_s": issue_time.as_secs_f64(),
        "fsyncs": fsyncs,
        "fsync_s": fsync_time.as_secs_f64(),
        "single": single.to_json(),
        "multi": multi.to_json(),
        "failures": single.failures + multi.failures,
    })
}

/// One PSK run's figures.
struct PskRun {
    threads: usize,
    ok: usize,
    failures: u64,
    elapsed: Duration,
    /// Sorted.
    latencies: Vec<Duration>,
    audit_fsyncs: u64,
    store_commits: u64,
    store_flushes: u64,
}

impl PskRun {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// Nearest-rank percentile, in ms.
    fn percentile(&self, p: f64) -> f64 {
        let n = self.latencies.len();
        if n == 0 {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * n as f64).ceil().max(1.0) as usize;
        ms(self.latencies[rank.min(n) - 1])
    }

    fn to_json(&self) -> Value {
        json!({
            "threads": self.threads,
            "ok": self.ok,
            "failures": self.failures,
            "s": self.elapsed.as_secs_f64(),
            "p50_ms": self.percentile(50.0),
            "p99_ms": self.percentile(99.0),
            "audit_fsyncs": self.audit_fsyncs,
            "store_commits": self.store_commits,
            "store_flushes": self.store_flushes,
        })
    }
}

/// `issue_secret(station, serial, "psk")` for every serial, one thread per
/// slice, all starting together. Each PSK must open from its record under
/// KEK version 1 to the bytes returned.
fn psk_run(app: &Appliance, station: &Caller, slices: &[&[&str]]) -> PskRun {
    let wrapper = TokenKeyWrapper::new(app.token.clone(), &kek_label(1), 1);
    let barrier = Barrier::new(slices.len() + 1);
    let audit0 = app.metrics.audit_fsync.count();
    let store0 = app.store.stats();
    let (elapsed, results) = std::thread::scope(|s| {
        let workers: Vec<_> = slices
            .iter()
            .map(|serials| {
                let (barrier, wrapper) = (&barrier, &wrapper);
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(serials.len());
                    let mut fails = Vec::new();
                    barrier.wait();
                    for (i, serial) in serials.iter().enumerate() {
                        let t = Instant::now();
                        match app.issue_secret(station, serial, "psk") {
                            Ok((secret, record)) => {
                                lat.push(t.elapsed());
                                // Check a few outside the timing.
                                if i % 50 == 0 {
                                    let ok = secret.len() == 32
                                        && record.kind == SecretKind::Psk
                                        && record.blob.kek_version == 1
                                        && record
                                            .open(wrapper)
                                            .is_ok_and(|back| back.as_slice() == secret.as_slice());
                                    if !ok {
                                        fails.push(format!(
                                            "{serial}: the record does not open to the PSK"
                                        ));
                                    }
                                }
                            }
                            Err(e) => fails.push(format!("{serial}: [{}] {e}", e.code())),
                        }
                    }
                    (lat, fails)
                })
            })
            .collect();
        barrier.wait();
        let t = Instant::now();
        let results: Vec<_> = workers
            .into_iter()
            .map(|w| w.join().expect("PSK thread"))
            .collect();
        (t.elapsed(), results)
    });
    let audit1 = app.metrics.audit_fsync.count();
    let store1 = app.store.stats();
    let mut latencies = Vec::new();
    let mut failures = 0u64;
    for (lat, fails) in results {
        latencies.extend(lat);
        for f in &fails {
            failures += 1;
            if failures <= SHOW_FAILURES as u64 {
                eprintln!("  PSK FAILED {f}");
            }
        }
    }
    latencies.sort_unstable();
    PskRun {
        threads: slices.len(),
        ok: latencies.len(),
        failures,
        elapsed,
        latencies,
        audit_fsyncs: audit1 - audit0,
        store_commits: store1.0 - store0.0,
        store_flushes: store1.1 - store0.1,
    }
}

/// Module serial of synthetic escrow record `i`.
fn blob_serial(i: usize) -> String {
    format!("VBUS-CPU-2412-{:06}", i + 1)
}

/// The secret sealed in synthetic escrow record `i` (32 bytes, distinct).
fn blob_secret(i: usize) -> [u8; 32] {
    Sha256::digest((i as u64).to_be_bytes()).into()
}

/// Steps 2 and 3: fill, rotate, check.
fn rotate_phase(app: &Appliance) -> Value {
    let blobs = blob_count();
    let store = app.store.as_ref();
    let v1 = TokenKeyWrapper::new(app.token.clone(), &kek_label(1), 1);
    let now = kms::policy::now();
    let t = Instant::now();
    for start in (0..blobs).step_by(FILL_BATCH) {
        let writes: Vec<Write> = (start..(start + FILL_BATCH).min(blobs))
            .map(|i| {
                let serial = blob_serial(i);
                let record = EscrowRecord::seal(
                    &v1,
                    &serial,
                    "psk",
                    SecretKind::Psk,
                    &blob_secret(i),
                    "bench",
                    now,
                )
                .or_die("EscrowRecord::seal");
                Write::Insert {
                    tree: Tree::Escrow,
                    key: format!("{serial}/psk").into_bytes(),
                    value: serde_json::to_vec(&record).or_die("record to JSON"),
                }
            })
            .collect();
        store
            .commit(&writes)
            .or_die("commit escrow records")
            .unwrap_or_else(|c| panic!("escrow record collision in {}", c.tree.name()));
    }
    let fill = t.elapsed();
    let disk_filled = disk_usage(&app.cfg.storage.path);
    eprintln!(
        "{} escrow records sealed and stored in {:.1} s ({}/s); store {:.0} MiB on disk",
        thousands(blobs as f64),
        fill.as_secs_f64(),
        thousands(blobs as f64 / fill.as_secs_f64()),
        mib(disk_filled as f64)
    );

    // What every rotation step reads before it re-wraps anything.
    let t = Instant::now();
    let scanned = store
        .scan(Tree::Escrow, &[], usize::MAX)
        .or_die("scan the escrow tree");
    let decoded = scanned
        .iter()
        .filter(|(_, v)| {
            serde_json::from_slice::<EscrowRecord>(v)
                .or_die("escrow record")
                .blob
                .kek_version
                == 1
        })
        .count();
    let scan = t.elapsed();
    assert_eq!(decoded, blobs, "records under KEK version 1");
    drop(scanned);
    eprintln!(
        "scan + decode of {} records: {:.0} ms",
        thousands(blobs as f64),
        ms(scan)
    );

    let caller = Caller::local();
    let audit0 = app.metrics.audit_fsync.count();
    let store0 = app.store.stats();
    let mut steps = Vec::new();
    let mut rewrapped = 0u64;
    let mut last = json!(null);
    let t = Instant::now();
    while last["done"] != json!(true) {
        let s = Instant::now();
        let cursor = last["cursor"].as_str().map(str::to_owned);
        last = app
            .rotate_kek_step(&caller, STEP, cursor.as_deref())
            .or_die("rotate_kek_step");
        steps.push(s.elapsed());
        rewrapped += last["rewrapped"].as_u64().unwrap_or(0);
        if steps.len() % 10 == 0 {
            eprintln!(
                "  rotation: {} steps, {} re-wrapped, {:.1} s",
                steps.len(),
                thousands(rewrapped as f64),
                t.elapsed().as_secs_f64()
            );
        }
        assert!(
            steps.len() <= blobs / STEP + 2,
            "rotation not done after {} steps: {last}",
            steps.len()
        );
    }
    let rotation = t.elapsed();
    let audit1 = app.metrics.audit_fsync.count();
    let store1 = app.store.stats();
    let disk_rotated = disk_usage(&app.cfg.storage.path);
    let hwm = memory_self().1;
    eprintln!(
        "KEK rotation: {} blobs in {:.1} s ({}/s), {} steps; last step {last}",
        thousands(rewrapped as f64),
        rotation.as_secs_f64(),
        thousands(rewrapped as f64 / rotation.as_secs_f64()),
        steps.len()
    );
    let first_step = steps.first().copied().unwrap_or_default();
    let last_step = steps.last().copied().unwrap_or_default();
    let median_step = median(steps.clone());

    // Step 3: a sample opens with KEK version 2 to the secrets sealed.
    let mut problems = Vec::new();
    if rewrapped != blobs as u64 {
        problems.push(format!("{rewrapped} blobs re-wrapped, {blobs} stored"));
    }
    let v2 = TokenKeyWrapper::new(app.token.clone(), &kek_label(2), 2);
    let mut opened = 0usize;
    for k in 0..SAMPLE {
        let i = k * blobs / SAMPLE + (k * 7919) % (blobs / SAMPLE).max(1);
        let serial = blob_serial(i);
        let outcome = store
            .get(Tree::Escrow, format!("{serial}/psk").as_bytes())
            .map_err(|e| e.to_string())
            .and_then(|v| v.ok_or_else(|| "record missing".to_owned()))
            .and_then(|v| serde_json::from_slice::<EscrowRecord>(&v).map_err(|e| e.to_string()))
            .and_then(|r| {
                if r.blob.kek_version != 2 {
                    return Err(format!("KEK version {}", r.blob.kek_version));
                }
                r.open(&v2).map_err(|e| e.to_string())
            })
            .and_then(|secret| {
                if secret.as_slice() == blob_secret(i) {
                    Ok(())
                } else {
                    Err("opened to other bytes".into())
                }
            });
        match outcome {
            Ok(()) => opened += 1,
            Err(e) => problems.push(format!("{serial}/psk under KEK version 2: {e}")),
        }
    }
    let versions = kms::secrets::kek_versions(store).or_die("KEK versions");
    if versions != (2, None) {
        problems.push(format!("KEK versions after the rotation: {versions:?}"));
    }
    let old_kek_gone = app
        .token
        .gcm_encrypt(&kek_label(1), b"aad", &[0u8; 32])
        .is_err();
    if !old_kek_gone {
        problems.push("escrow-kek-1 still usable after the rotation".into());
    }
    eprintln!(
        "check: {opened}/{SAMPLE} sampled records open with KEK version 2; versions {versions:?}; escrow-kek-1 gone: {old_kek_gone}"
    );
    for p in problems.iter().take(SHOW_FAILURES) {
        eprintln!("  FAILED {p}");
    }
    json!({
        "blobs": blobs,
        "fill_s": fill.as_secs_f64(),
        "disk_filled_kb": disk_filled,
        "scan_s": scan.as_secs_f64(),
        "rotation_s": rotation.as_secs_f64(),
        "rewrapped": rewrapped,
        "steps": steps.len(),
        "first_step_s": first_step.as_secs_f64(),
        "median_step_s": median_step.as_secs_f64(),
        "last_step_s": last_step.as_secs_f64(),
        "audit_fsyncs": audit1 - audit0,
        "store_commits": store1.0 - store0.0,
        "store_flushes": store1.1 - store0.1,
        "disk_rotated_kb": disk_rotated,
        "hwm_kb": hwm,
        "sample": SAMPLE,
        "opened": opened,
        "versions": format!("{versions:?}"),
        "old_kek_gone": old_kek_gone,
        "problems": problems,
    })
}

// ------------------------------------------------------------ report

fn print_table(psk: &Value, rot: &Value, blobs: usize) {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let gcm = f(psk, "gcm_encrypt_s");
    let gcm_rate = 1.0 / gcm;
    let fsync = f(psk, "fsyncs") / f(psk, "fsync_s");
    let ceiling = fsync / FSYNCS_PER_PSK;
    let mut rows: Vec<String> = Vec::new();
    rows.push(format!(
        "| raw token AES-GCM encryption, 32 B under escrow-kek-1 (median of {RAW_RUNS}) | {:.1} µs | {}/s on 1 thread; decryption {:.1} µs | – | – |",
        gcm * 1e6,
        thousands(gcm_rate),
        f(psk, "gcm_decrypt_s") * 1e6
    ));
    rows.push(format!(
        "| raw token random(32) (median of {RAW_RUNS}) | {:.1} µs | {}/s on 1 thread | – | – |",
        f(psk, "random_s") * 1e6,
        thousands(1.0 / f(psk, "random_s"))
    ));
    rows.push(format!(
        "| raw fsync, same file system (64 B append + fdatasync, 1 s after 0.5 s warm-up) | {}/s | {:.2} ms each | – | – |",
        thousands(fsync),
        1e3 / fsync
    ));
    let devices = f(psk, "devices");
    rows.push(format!(
        "| setup: {} device certificates issued in-process for {STATION} ({ISSUERS} threads) | {}/s | {:.1} s | – | – |",
        thousands(devices),
        thousands(devices / f(psk, "issue_s")),
        f(psk, "issue_s")
    ));
    for run in [&psk["single"], &psk["multi"]] {
        let n = f(run, "ok");
        let rate = n / f(run, "s");
        let threads = f(run, "threads");
        rows.push(format!(
            "| PSK issuance, {} thread{} (issue_secret, durable) | {}/s | {} in {:.2} s, {} failed; p50 {:.2} ms, p99 {:.2} ms; {:.2} audit fsyncs and {:.2} sled flushes per PSK | fsync ceiling {}/s (raw fsync / {FSYNCS_PER_PSK}) | {:.2} |",
            threads,
            if threads == 1.0 { "" } else { "s" },
            thousands(rate),
            thousands(n),
            f(run, "s"),
            f(run, "failures"),
            f(run, "p50_ms"),
            f(run, "p99_ms"),
            f(run, "audit_fsyncs") / n,
            f(run, "store_flushes") / n,
            thousands(ceiling),
            rate / ceiling
        ));
    }

    let n = f(rot, "blobs");
    rows.push(format!(
        "| setup: {} escrow records sealed under KEK 1 and stored ({} per commit) | {}/s | {:.1} s (2 token ops each); store {:.0} MiB on disk | – | – |",
        thousands(n),
        thousands(FILL_BATCH as f64),
        thousands(n / f(rot, "fill_s")),
        f(rot, "fill_s"),
        mib(f(rot, "disk_filled_kb"))
    ));
    rows.push(format!(
        "| scan + decode of all {} escrow records (the rotation reads them once in its pass, and again to verify at the end) | {:.0} ms | {:.2} µs/record | – | – |",
        thousands(n),
        f(rot, "scan_s") * 1e3,
        f(rot, "scan_s") * 1e6 / n
    ));
    let rewrapped = f(rot, "rewrapped");
    let rotation = f(rot, "rotation_s");
    let rate = rewrapped / rotation;
    let token_ceiling = gcm_rate / OPS_PER_BLOB;
    rows.push(format!(
        "| KEK rotation 1 → 2, {} blobs (rotate_kek_step, {} per step) | {}/s | {} in {:.1} s, {} steps (first {:.0} ms, median {:.0} ms, last {:.0} ms); {OPS_PER_BLOB} token ops per blob = {}/s; {:.3} sled flushes per blob (one per step); store {:.0} MiB on disk after; VmHWM {:.0} MiB | raw AES-GCM {}/s / {OPS_PER_BLOB} = {}/s | {:.2} |",
        thousands(n),
        thousands(STEP as f64),
        thousands(rate),
        thousands(rewrapped),
        rotation,
        f(rot, "steps"),
        f(rot, "first_step_s") * 1e3,
        f(rot, "median_step_s") * 1e3,
        f(rot, "last_step_s") * 1e3,
        thousands(rate * OPS_PER_BLOB),
        f(rot, "store_flushes") / rewrapped,
        mib(f(rot, "disk_rotated_kb")),
        mib(f(rot, "hwm_kb")),
        thousands(gcm_rate),
        thousands(token_ceiling),
        rate / token_ceiling
    ));
    let sample = f(rot, "sample");
    let opened = f(rot, "opened");
    rows.push(format!(
        "| check: {} rotated records open with KEK version 2 | {} | {} of {} opened to the sealed secrets; KEK versions {}; escrow-kek-1 destroyed: {} | – | – |",
        thousands(sample),
        if opened == sample && rot["problems"].as_array().is_some_and(Vec::is_empty) {
            "verified"
        } else {
            "NOT VERIFIED"
        },
        thousands(opened),
        thousands(sample),
        rot["versions"].as_str().unwrap_or("?"),
        if rot["old_kek_gone"] == json!(true) { "yes" } else { "NO" }
    ));
    emit_table(&rows);
    println!("PSK rows: in-process Appliance::issue_secret as {STATION} for devices it owns, kmsd stopped; each PSK is 32 bytes from the token RNG sealed under the KEK (encryption + verifying decryption), an audit record (fdatasync) and a store commit (sled flush) before it returns; ratio = PSKs/s over the fsync-bound ceiling (raw fsync/s / {FSYNCS_PER_PSK}); group commit can take it above 1 with threads. Rotation row: each blob is decrypted under the old KEK, encrypted under the new one, decrypted again to verify, and each step's blobs are written in one compare-and-swap commit (one flush per step); ratio = blobs/s over the token-bound ceiling (raw AES-GCM/s / {OPS_PER_BLOB}).");
    if blobs != DEFAULT_BLOBS {
        println!(
            "KMS_BENCH_ESCROW_BLOBS={blobs}: the rotation ran on {} blobs, not the default {}.",
            thousands(blobs as f64),
            thousands(DEFAULT_BLOBS as f64)
        );
    }
    println!("Single run on a possibly shared machine: the figures are noisy.");
}

// ------------------------------------------------------------- small

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
