//! Audit log performance, measured in one run and printed as table rows:
//!
//! 1. reference A: one 200-byte record written and `fdatasync`ed at a time;
//! 2. reference B: 64 records of 200 bytes in one write and one `fdatasync`
//!    (the "64-records-per-fsync rate");
//! 3. durable `Log::append`s with 1, 8 and 64 concurrent appenders (group
//!    commit): appends/s, p50/p99 latency of the call, records per fsync
//!    (from `Log::stats`) and how busy the batch write + fsync kept the disk;
//! 4. verification of a 1,000,000-record log: the segment chain
//!    (`for_each_record`), `verify::verify_log` and `verify::verify_export`
//!    of the JSON export, median of 3 runs each.
//!
//! The raw and append rows also say how many CPUs this process and all
//! other processes kept busy (Linux /proc): on a shared VM fsync latency
//! moves with the other load (here: stalls of about 4 ms, one 250 Hz tick).
//!
//! Everything happens in a temporary directory created in the current
//! directory (`cargo bench` runs this from `audit/`: the disk the appliance
//! would use). The append rows' ratio is appends/s ÷ reference B; the
//! verification rows' ratio is records/s ÷ the 1,000,000 records/s target.
//! Two target rows: durable appends (64 appenders) at least 50% of
//! reference B, and verification (`verify_log`) at least 1,000,000 records/s.
//!
//! `cargo bench -p audit --bench log` (about 20 s plus the build).
//!
//! - `KMS_BENCH_AUDIT_SECONDS`: length of each raw and append phase
//!   (default 3).
//! - `KMS_BENCH_ROWS`: a file the table rows (no header) are appended to.
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it does nothing.

#![allow(clippy::expect_used, missing_docs)]

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use audit::{Entry, Log, Options};

/// Bytes per record in the raw references (an audit frame is about that).
const RECORD: usize = 200;
/// Records per fsync in reference B.
const BATCH: usize = 64;
/// Concurrent appenders per append phase.
const APPENDERS: [u64; 3] = [1, 8, 64];
/// Records in the verification log.
const VERIFY_N: u64 = 1_000_000;
/// The verification target, records/s.
const VERIFY_TARGET: f64 = 1_000_000.0;
/// The append target: this share of reference B with 64 appenders.
const APPEND_TARGET: f64 = 0.5;

fn entry(i: u64) -> Entry {
    Entry::new(
        "station-01",
        "certificate.issue",
        &format!("VBUS-CPU-2412-{:06}", i % 1_000_000),
        "ok",
    )
    .details(serde_json::json!({ "serial_number": format!("{i:032x}") }))
}

fn opts() -> Options {
    Options {
        origin: "vbus-kms/audit".into(),
        checkpoint_every: 0,
    }
}

/// One row of the table.
struct Row {
    measurement: String,
    result: String,
    reference: String,
    ratio: String,
    detail: String,
}

impl Row {
    fn line(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} |\n",
            self.measurement, self.result, self.detail, self.reference, self.ratio
        )
    }
}

/// `1234.5` → `"1,235"`.
fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "?".into();
    }
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn per_sec(v: f64) -> String {
    format!("{}/s", thousands(v))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// The `q` quantile (0..=1) of sorted nanoseconds.
fn quantile(sorted: &[u64], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    Duration::from_nanos(sorted[i])
}

/// A positive number of seconds from `name`, or `default`; exits 2 on
/// anything else.
fn env_secs(name: &str, default: f64) -> f64 {
    match std::env::var(name) {
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(s) if s > 0.0 && s.is_finite() => s,
            _ => {
                eprintln!("{name}={v:?}: want a positive number of seconds");
                std::process::exit(2);
            }
        },
        Err(_) => default,
    }
}

/// What a raw reference measured.
struct Raw {
    /// Records made durable per second.
    rate: f64,
    records: u64,
    fsyncs: u64,
    elapsed: Duration,
    /// Write + fdatasync, sorted nanoseconds.
    lat: Vec<u64>,
}

/// `per_fsync` records of `RECORD` bytes in one `write_all`, then one
/// `sync_data`, in a loop for `length`.
fn raw(path: &Path, per_fsync: usize, length: Duration) -> Raw {
    let mut f = File::create(path).expect("create the raw reference file");
    let block = vec![b'x'; RECORD * per_fsync];
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < length {
        let t = Instant::now();
        f.write_all(&block).expect("raw write");
        f.sync_data().expect("raw fdatasync");
        lat.push(t.elapsed().as_nanos() as u64);
    }
    let elapsed = start.elapsed();
    lat.sort_unstable();
    let fsyncs = lat.len() as u64;
    let records = fsyncs * per_fsync as u64;
    Raw {
        rate: records as f64 / elapsed.as_secs_f64(),
        records,
        fsyncs,
        elapsed,
        lat,
    }
}

/// CPU time so far, in seconds: this process, and the whole machine's busy
/// time (not idle, not iowait). From Linux's /proc; `None` elsewhere.
#[derive(Clone, Copy)]
struct Cpu {
    own: f64,
    machine: f64,
}

impl Cpu {
    fn now() -> Option<Self> {
        const TICK: f64 = 0.01; // USER_HZ
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name: state is field 3, utime 14, stime 15.
        let own: Vec<u64> = own
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|v| v.parse().ok())
            .collect::<Option<_>>()?;
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let all: Vec<u64> = stat
            .lines()
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .map(|v| v.parse().ok())
            .collect::<Option<_>>()?;
        // user nice system idle iowait irq softirq steal
        let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| all.get(i)).sum();
        Some(Self {
            own: own.iter().sum::<u64>() as f64 * TICK,
            machine: busy as f64 * TICK,
        })
    }
}

/// How many CPUs this process and all others kept busy since `before`.
fn cpu_use(before: Option<Cpu>, elapsed: Duration, cpus: usize) -> String {
    let (Some(b), Some(a)) = (before, Cpu::now()) else {
        return String::new();
    };
    let wall = elapsed.as_secs_f64();
    let own = (a.own - b.own) / wall;
    let others = ((a.machine - b.machine) - (a.own - b.own)).max(0.0) / wall;
    format!("; CPUs busy: bench {own:.2}, other processes {others:.2} (of {cpus})")
}

/// Batch write + fdatasync durations reported by `Log::observe_syncs`.
#[derive(Default)]
struct SyncTotals {
    count: AtomicU64,
    nanos: AtomicU64,
}

impl SyncTotals {
    fn get(&self) -> (u64, u64) {
        (
            self.count.load(Ordering::Relaxed),
            self.nanos.load(Ordering::Relaxed),
        )
    }
}

/// What an append phase measured.
struct Appends {
    threads: u64,
    rate: f64,
    appends: u64,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    /// Appends and batches from `Log::stats` deltas.
    stat_appends: u64,
    batches: u64,
    /// Time spent in batch write + fdatasync (observer), total.
    sync_time: Duration,
}

/// `threads` appenders calling `Log::append` for `length`.
fn append_phase(log: &Log, syncs: &SyncTotals, threads: u64, length: Duration) -> Appends {
    let (a0, b0) = log.stats();
    let (_, n0) = syncs.get();
    let start = Instant::now();
    let mut lat: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut lat = Vec::new();
                    let mut k = 0u64;
                    while start.elapsed() < length {
                        k += 1;
                        let e = entry(threads * 10_000_000_000 + t * 1_000_000_000 + k);
                        let t0 = Instant::now();
                        log.append(e).expect("durable append");
                        lat.push(t0.elapsed().as_nanos() as u64);
                    }
                    lat
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("appender thread"))
            .collect()
    });
    let elapsed = start.elapsed();
    let (a1, b1) = log.stats();
    let (_, n1) = syncs.get();
    lat.sort_unstable();
    let appends = lat.len() as u64;
    Appends {
        threads,
        rate: appends as f64 / elapsed.as_secs_f64(),
        appends,
        elapsed,
        p50: quantile(&lat, 0.50),
        p99: quantile(&lat, 0.99),
        stat_appends: a1 - a0,
        batches: b1 - b0,
        sync_time: Duration::from_nanos(n1 - n0),
    }
}

/// Write a log of `n` records directly in the documented segment format
/// (the append path is fsync-bound; this is about reading).
fn build_log(dir: &Path, n: u64) {
    std::fs::create_dir_all(dir).expect("dir");
    let mut w =
        std::io::BufWriter::new(std::fs::File::create(dir.join(audit::SEGMENT_FILE)).expect("seg"));
    w.write_all(b"VBUSAUD1").expect("magic");
    let mut head = audit::GENESIS;
    for seq in 1..=n {
        let e = entry(seq);
        let r = audit::Record {
            seq,
            time_ms: 1_764_093_600_000 + seq,
            actor: e.actor,
            op: e.op,
            subject: e.subject,
            result: e.result,
            details: e.details,
        };
        let body = serde_json::to_vec(&r).expect("json");
        head = audit::chain(&head, &body);
        w.write_all(&(body.len() as u32).to_le_bytes())
            .expect("len");
        w.write_all(&body).expect("body");
        w.write_all(&head).expect("hash");
    }
    w.flush().expect("flush");
}

/// What a verification measured: the median of 3 runs.
struct Verified {
    rate: f64,
    runs: Vec<Duration>,
}

fn verify_runs(mut run: impl FnMut() -> u64) -> Verified {
    let runs: Vec<Duration> = (0..3)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(run(), VERIFY_N, "records verified");
            t.elapsed()
        })
        .collect();
    let mut sorted = runs.clone();
    sorted.sort_unstable();
    Verified {
        rate: VERIFY_N as f64 / sorted[1].as_secs_f64(),
        runs,
    }
}

fn runs_ms(runs: &[Duration]) -> String {
    runs.iter()
        .map(|d| format!("{:.0}", d.as_secs_f64() * 1e3))
        .collect::<Vec<_>>()
        .join(" / ")
        + " ms"
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("audit log benchmark: skipped (run it with `cargo bench -p audit --bench log`)");
        return;
    }
    let secs = env_secs("KMS_BENCH_AUDIT_SECONDS", 3.0);
    let length = Duration::from_secs_f64(secs);
    let rows_file = std::env::var_os("KMS_BENCH_ROWS").filter(|v| !v.is_empty());
    let tmp = tempfile::tempdir_in(".").expect("temporary directory in the current directory");
    let here = std::fs::canonicalize(tmp.path()).unwrap_or_else(|_| tmp.path().to_owned());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "audit log benchmark: {secs} s per raw/append phase, in {} ({cpus} CPUs)",
        here.display()
    );
    let mut rows = Vec::new();

    // 1. Reference A: one record per fsync.
    let c0 = Cpu::now();
    let a = raw(&tmp.path().join("raw-a"), 1, length);
    let cpu_a = cpu_use(c0, a.elapsed, cpus);
    println!(
        "\n[raw A] {RECORD} B write + fdatasync, 1 record per fsync: {} records in {:.2} s = {}; \
         p50 {}, p99 {} per fsync{cpu_a}",
        thousands(a.records as f64),
        a.elapsed.as_secs_f64(),
        per_sec(a.rate),
        ms(quantile(&a.lat, 0.5)),
        ms(quantile(&a.lat, 0.99)),
    );
    rows.push(Row {
        measurement: format!("raw {RECORD} B write + fdatasync, 1 record per fsync (reference A)"),
        result: per_sec(a.rate),
        reference: "–".into(),
        ratio: "–".into(),
        detail: format!(
            "{} in {:.2} s; p50 {}, p99 {} per fsync{cpu_a}",
            thousands(a.records as f64),
            a.elapsed.as_secs_f64(),
            ms(quantile(&a.lat, 0.5)),
            ms(quantile(&a.lat, 0.99)),
        ),
    });

    // 2. Reference B: 64 records per fsync.
    let c0 = Cpu::now();
    let b = raw(&tmp.path().join("raw-b"), BATCH, length);
    let cpu_b = cpu_use(c0, b.elapsed, cpus);
    println!(
        "[raw B] {BATCH} × {RECORD} B in one write + fdatasync: {} batches in {:.2} s = {} \
         batches/s = {} records; p50 {}, p99 {} per batch; {:.2} × reference A{cpu_b}",
        thousands(b.fsyncs as f64),
        b.elapsed.as_secs_f64(),
        thousands(b.fsyncs as f64 / b.elapsed.as_secs_f64()),
        per_sec(b.rate),
        ms(quantile(&b.lat, 0.5)),
        ms(quantile(&b.lat, 0.99)),
        b.rate / a.rate,
    );
    rows.push(Row {
        measurement: format!(
            "raw {BATCH} × {RECORD} B in one write + fdatasync, {BATCH} records per fsync (reference B)"
        ),
        result: per_sec(b.rate),
        reference: "–".into(),
        ratio: "–".into(),
        detail: format!(
            "{} batches in {:.2} s ({} batches/s); p50 {}, p99 {} per batch; {:.2} × reference \
             A{cpu_b}",
            thousands(b.fsyncs as f64),
            b.elapsed.as_secs_f64(),
            thousands(b.fsyncs as f64 / b.elapsed.as_secs_f64()),
            ms(quantile(&b.lat, 0.5)),
            ms(quantile(&b.lat, 0.99)),
            b.rate / a.rate,
        ),
    });

    // 3. Durable appends through the log's group commit.
    let log_dir = tmp.path().join("log");
    let log = Log::open(&log_dir, opts(), None).expect("open the log");
    let syncs = Arc::new(SyncTotals::default());
    {
        let syncs = Arc::clone(&syncs);
        log.observe_syncs(Box::new(move |d| {
            syncs.count.fetch_add(1, Ordering::Relaxed);
            syncs
                .nanos
                .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        }));
    }
    let mut phases = Vec::new();
    for threads in APPENDERS {
        let c0 = Cpu::now();
        let p = append_phase(&log, &syncs, threads, length);
        let cpu_p = cpu_use(c0, p.elapsed, cpus);
        let per_batch = p.stat_appends as f64 / p.batches.max(1) as f64;
        let busy = p.sync_time.as_secs_f64() / p.elapsed.as_secs_f64();
        let mean_sync = p.sync_time / u32::try_from(p.batches.max(1)).unwrap_or(u32::MAX);
        println!(
            "[append ×{threads}] {} durable appends in {:.2} s = {}; p50 {}, p99 {} per call; \
             {} appends in {} batches = {per_batch:.2} records per fsync; batch write + \
             fdatasync {} mean, busy {:.0}% of the phase; {:.2} × reference B, {:.2} × reference A{cpu_p}",
            thousands(p.appends as f64),
            p.elapsed.as_secs_f64(),
            per_sec(p.rate),
            ms(p.p50),
            ms(p.p99),
            thousands(p.stat_appends as f64),
            thousands(p.batches as f64),
            ms(mean_sync),
            busy * 100.0,
            p.rate / b.rate,
            p.rate / a.rate,
        );
        rows.push(Row {
            measurement: format!(
                "durable appends, {threads} appender{} (Log::append, group commit)",
                if threads == 1 { "" } else { "s" }
            ),
            result: per_sec(p.rate),
            reference: format!("ref B {}", per_sec(b.rate)),
            ratio: format!("{:.2}", p.rate / b.rate),
            detail: format!(
                "{} in {:.2} s; p50 {}, p99 {} per append; {per_batch:.2} records per fsync \
                 ({} appends / {} batches); write + fdatasync {} mean, disk busy {:.0}%; \
                 {:.2} × ref A {}{cpu_p}",
                thousands(p.appends as f64),
                p.elapsed.as_secs_f64(),
                ms(p.p50),
                ms(p.p99),
                thousands(p.stat_appends as f64),
                thousands(p.batches as f64),
                ms(mean_sync),
                busy * 100.0,
                p.rate / a.rate,
                per_sec(a.rate),
            ),
        });
        phases.push(p);
    }
    let seg_bytes = std::fs::metadata(log_dir.join(audit::SEGMENT_FILE)).map_or(0, |m| m.len());
    let total_appends = phases.iter().map(|p| p.stat_appends).sum::<u64>();
    println!(
        "[append] segment {} bytes for {} records: {:.0} bytes per frame (raw references: {RECORD})",
        thousands(seg_bytes as f64),
        thousands(total_appends as f64),
        seg_bytes.saturating_sub(8) as f64 / total_appends.max(1) as f64,
    );
    drop(log);

    // 4. Verification of 1,000,000 records.
    let big = tmp.path().join("big");
    let t = Instant::now();
    build_log(&big, VERIFY_N);
    let built = t.elapsed();
    let seg_size = std::fs::metadata(big.join(audit::SEGMENT_FILE)).map_or(0, |m| m.len());
    let t = Instant::now();
    let mut export = Vec::new();
    assert_eq!(
        Log::export(&big, 1, &mut export).expect("export"),
        VERIFY_N,
        "records exported"
    );
    let exported = t.elapsed();
    println!(
        "\n[verify] log of {} records built in {:.2} s (segment {:.0} MB); JSON export {:.0} MB \
         in {:.2} s",
        thousands(VERIFY_N as f64),
        built.as_secs_f64(),
        seg_size as f64 / 1e6,
        export.len() as f64 / 1e6,
        exported.as_secs_f64(),
    );
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let v = audit::note::Verifier::parse(&audit::note::verifier_key(
        "vbus-kms/audit",
        &key.verifying_key().to_bytes(),
    ))
    .expect("verifier key");
    let chain = verify_runs(|| audit::for_each_record(&big, |_, _| Ok(())).expect("scan"));
    let mut checkpoints = 0;
    let log_v = verify_runs(|| {
        let r = audit::verify::verify_log(&big, &v, None, |_| {}).expect("verify_log");
        checkpoints = r.checkpoints;
        r.records
    });
    let export_v = verify_runs(|| {
        audit::verify::verify_export(export.as_slice(), &v, None, |_| {})
            .expect("verify_export")
            .records
    });
    let verifications = [
        (
            "verify 1,000,000 records from the segment, chain only (for_each_record)",
            &chain,
            format!("segment {:.0} MB", seg_size as f64 / 1e6),
        ),
        (
            "verify 1,000,000 records from the segment (verify_log: chain + checkpoints)",
            &log_v,
            format!("{checkpoints} checkpoints in the log (build_log writes none)"),
        ),
        (
            "verify 1,000,000 records from the JSON export (verify_export)",
            &export_v,
            format!(
                "export {:.0} MB, made in {:.2} s (not timed)",
                export.len() as f64 / 1e6,
                exported.as_secs_f64()
            ),
        ),
    ];
    for (what, r, note) in &verifications {
        println!(
            "[verify] {what}: {}, median of 3 (runs {}); {note}",
            per_sec(r.rate),
            runs_ms(&r.runs)
        );
        rows.push(Row {
            measurement: format!("{what}, median of 3"),
            result: per_sec(r.rate),
            reference: format!("target {}", per_sec(VERIFY_TARGET)),
            ratio: format!("{:.2}", r.rate / VERIFY_TARGET),
            detail: format!("runs {}; {note}", runs_ms(&r.runs)),
        });
    }

    // Targets.
    let met = |ok: bool| if ok { "met" } else { "not met" };
    let top = phases.last().expect("the 64-appender phase");
    let need = APPEND_TARGET * b.rate;
    rows.push(Row {
        measurement: format!(
            "target: durable appends ({} appenders) at least 50% of the {BATCH}-records-per-fsync rate",
            top.threads
        ),
        result: format!("{} ({})", met(top.rate >= need), per_sec(top.rate)),
        reference: format!("50% of ref B = {}", per_sec(need)),
        ratio: format!("{:.2}", top.rate / need),
        detail: format!(
            "{:.2} × ref B {} (needs ≥ 0.50); {:.2} records per fsync vs {BATCH}",
            top.rate / b.rate,
            per_sec(b.rate),
            top.stat_appends as f64 / top.batches.max(1) as f64,
        ),
    });
    rows.push(Row {
        measurement: "target: verification at least 1,000,000 records/s (verify_log, as `kmsctl audit verify`)"
            .into(),
        result: format!(
            "{} ({})",
            met(log_v.rate >= VERIFY_TARGET),
            per_sec(log_v.rate)
        ),
        reference: format!("target {}", per_sec(VERIFY_TARGET)),
        ratio: format!("{:.2}", log_v.rate / VERIFY_TARGET),
        detail: format!(
            "chain only {} ({}); JSON export {} ({})",
            per_sec(chain.rate),
            met(chain.rate >= VERIFY_TARGET),
            per_sec(export_v.rate),
            met(export_v.rate >= VERIFY_TARGET),
        ),
    });

    let table: String = rows.iter().map(Row::line).collect();
    println!("\n| measurement | result | detail | reference | ratio |");
    println!("|---|--:|---|--:|--:|");
    print!("{table}");
    if let Some(path) = rows_file {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(table.as_bytes()))
            .expect("append the rows to KMS_BENCH_ROWS");
        println!("rows appended to {}", Path::new(&path).display());
    }
}
