//! `GET /metrics` on the publication port, Prometheus text format 0.0.4:
//! requests by endpoint and result, issuance latency, token operation
//! latency and errors, pool sessions in use, audit fsync latency, refused
//! TLS handshakes and open connections. Lock-free counters on the hot path
//! (one mutex for the labelled request counter).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Bucket upper bounds, seconds: 100 µs to 10 s.
const BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Count one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Everything `/metrics` reports that the service counts itself.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String), u64>>,
    /// Device certificate issuance, policy to answer.
    pub issuance: Histogram,
    /// One audit batch write + fdatasync.
    pub audit_fsync: Histogram,
    /// One CRL: build, token signature, record, counter commit.
    pub crl_build: Histogram,
    handshakes_refused: Mutex<BTreeMap<&'static str, u64>>,
    /// API connections open now.
    pub connections: AtomicI64,
}

impl Metrics {
    /// Count a request to `endpoint` (the route template) ending in
    /// `result` (`ok` or the error code).
    pub fn request(&self, endpoint: &str, result: &str) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((endpoint.to_owned(), result.to_owned()))
                .or_default() += 1;
        }
    }

    /// Count a refused TLS handshake.
    pub fn handshake_refused(&self, reason: &'static str) {
        if let Ok(mut m) = self.handshakes_refused.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    /// The whole exposition, with the token's own figures.
    pub fn render(&self, token: &crate::token::Token) -> String {
        let (sessions_in_use, sessions_open) = token.sessions();
        let mut out = String::new();
        out.push_str("# HELP kms_requests_total API requests by endpoint and result (ok or error code)\n# TYPE kms_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((endpoint, result), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "kms_requests_total{{endpoint=\"{}\",result=\"{}\"}} {n}",
                    escape(endpoint),
                    escape(result)
                );
            }
        }
        self.issuance.render(
            &mut out,
            "kms_issuance_seconds",
            "device certificate issuance latency, policy to answer",
        );
        self.crl_build.render(
            &mut out,
            "kms_crl_build_seconds",
            "CRL publication: build, token signature, audit record, counter commit",
        );
        token.op_latency().render(
            &mut out,
            "kms_token_operation_seconds",
            "PKCS#11 operation latency through the session pool",
        );
        let _ = writeln!(
            out,
            "# HELP kms_token_errors_total token operations that failed after retries\n# TYPE kms_token_errors_total counter\nkms_token_errors_total {}",
            token.op_errors()
        );
        let _ = writeln!(
            out,
            "# HELP kms_token_sessions_in_use pool sessions leased now\n# TYPE kms_token_sessions_in_use gauge\nkms_token_sessions_in_use {sessions_in_use}\n# HELP kms_token_sessions_open pool sessions open\n# TYPE kms_token_sessions_open gauge\nkms_token_sessions_open {sessions_open}"
        );
        self.audit_fsync.render(
            &mut out,
            "kms_audit_fsync_seconds",
            "audit log batch write and fdatasync latency",
        );
        out.push_str("# HELP kms_tls_handshakes_refused_total refused TLS handshakes on the API port\n# TYPE kms_tls_handshakes_refused_total counter\n");
        if let Ok(m) = self.handshakes_refused.lock() {
            for (reason, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "kms_tls_handshakes_refused_total{{reason=\"{reason}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP kms_connections_open API connections open\n# TYPE kms_connections_open gauge\nkms_connections_open {}",
            self.connections.load(Ordering::Relaxed)
        );
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
