//! Durable appends per second (1 and 8 appenders, group commit) beside the
//! raw write+fsync rate of the same disk, and verification speed over a
//! 1,000,000-record log. `cargo bench -p audit`.

#![allow(clippy::expect_used, missing_docs)]

use std::io::Write;
use std::time::{Duration, Instant};

use audit::{Entry, Log, Options};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

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

fn appends(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(".").expect("tmp");
    let mut g = c.benchmark_group("audit_append");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(5));

    let mut raw = std::fs::File::create(dir.path().join("raw")).expect("raw");
    let record = [b'x'; 200];
    g.bench_function("raw_write_fsync", |b| {
        b.iter(|| {
            raw.write_all(&record).expect("write");
            raw.sync_data().expect("fsync");
        })
    });

    let log = Log::open(&dir.path().join("log"), opts(), None).expect("log");
    let mut i = 0u64;
    g.bench_function("append_1_thread", |b| {
        b.iter(|| {
            i += 1;
            log.append(entry(i)).expect("append")
        })
    });
    g.bench_function("append_8_threads", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for t in 0..8u64 {
                    let log = &log;
                    s.spawn(move || {
                        for k in 0..iters.div_ceil(8) {
                            log.append(entry(t * 1_000_000_000 + k)).expect("append");
                        }
                    });
                }
            });
            // Elements per iteration are 1: report time per append.
            start
                .elapsed()
                .mul_f64(iters as f64 / (iters.div_ceil(8) * 8) as f64)
        })
    });
    let (appends, syncs) = log.stats();
    println!("group commit over the whole run: {appends} appends in {syncs} write+fsync batches");
    g.finish();
}

/// Write a log of `n` records directly in the documented segment format
/// (the append path is fsync-bound; this is about reading).
fn build_log(dir: &std::path::Path, n: u64) {
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

fn verification(c: &mut Criterion) {
    const N: u64 = 1_000_000;
    let dir = tempfile::tempdir_in(".").expect("tmp");
    let log_dir = dir.path().join("big");
    build_log(&log_dir, N);
    let mut g = c.benchmark_group("audit_verify_1m");
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(15));
    g.bench_function("segment_chain", |b| {
        b.iter(|| {
            assert_eq!(
                audit::for_each_record(&log_dir, |_, _| Ok(())).expect("scan"),
                N
            )
        })
    });
    let mut export = Vec::new();
    Log::export(&log_dir, 1, &mut export).expect("export");
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let v = audit::note::Verifier::parse(&audit::note::verifier_key(
        "vbus-kms/audit",
        &key.verifying_key().to_bytes(),
    ))
    .expect("vkey");
    g.bench_function("verify_log", |b| {
        b.iter(|| {
            assert_eq!(
                audit::verify::verify_log(&log_dir, &v, None, |_| {})
                    .expect("verify")
                    .records,
                N
            )
        })
    });
    g.bench_function("json_export", |b| {
        b.iter(|| {
            assert_eq!(
                audit::verify::verify_export(export.as_slice(), &v, None, |_| {})
                    .expect("verify")
                    .records,
                N
            )
        })
    });
    g.finish();
}

criterion_group!(benches, appends, verification);
criterion_main!(benches);
