//! A lean HTTP/1.1-over-TLS load generator, the same for every server the
//! benchmarks compare (`kmsd`, `cfssl serve`): requests are whole byte
//! strings built before the clock starts; each worker thread owns one
//! rustls connection (kept alive, or a new one per request); answers are
//! kept as bytes and judged after the phase, off the clock, so the client
//! takes as little as possible of the cores it shares with the server.

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Where the load goes and how to speak TLS to it.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Arc<rustls::ClientConfig>,
}

impl Target {
    /// mTLS to `addr` (a 127.0.0.1 address), trusting `roots_pem` for the
    /// server and presenting `cert_pem` / `key_pem`.
    pub fn new(addr: SocketAddr, roots_pem: &str, cert_pem: &str, key_pem: &str) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for der in pem_blocks(roots_pem, "CERTIFICATE") {
            roots
                .add(CertificateDer::from(der))
                .unwrap_or_else(|e| panic!("trust anchor: {e}"));
        }
        let chain: Vec<CertificateDer<'static>> = pem_blocks(cert_pem, "CERTIFICATE")
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let key = PrivateKeyDer::try_from(
            pem_blocks(key_pem, "PRIVATE KEY")
                .into_iter()
                .chain(pem_blocks(key_pem, "EC PRIVATE KEY"))
                .next()
                .unwrap_or_else(|| panic!("no private key in the client key PEM")),
        )
        .unwrap_or_else(|e| panic!("client key: {e}"));
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| panic!("TLS versions: {e}"))
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap_or_else(|e| panic!("client certificate: {e}"));
        Self {
            addr,
            tls: Arc::new(tls),
        }
    }

    fn connect(&self) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
        let tcp = TcpStream::connect(self.addr)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        let name = ServerName::IpAddress(self.addr.ip().into());
        let conn = rustls::ClientConnection::new(self.tls.clone(), name)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        // Finish the handshake now: its cost belongs to this request.
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).map(|_| ())?;
        }
        Ok(stream)
    }
}

/// The DER bodies of the PEM blocks labelled `label` in `pem`.
pub fn pem_blocks(pem: &str, label: &str) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let (begin, end) = (
        format!("-----BEGIN {label}-----"),
        format!("-----END {label}-----"),
    );
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(&begin) {
        let after = &rest[start + begin.len()..];
        let Some(stop) = after.find(&end) else { break };
        let b64: String = after[..stop].split_whitespace().collect();
        out.push(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_else(|e| panic!("PEM {label}: {e}")),
        );
        rest = &after[stop + end.len()..];
    }
    out
}

/// `POST path` with `body`, as bytes.
pub fn post(host: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// One phase's outcome.
pub struct Outcome {
    pub ok: usize,
    pub failed: usize,
    pub elapsed: Duration,
    /// Latencies of the answers with an expected status, sorted.
    pub latencies: Vec<Duration>,
    /// (request index, body) of the answers with an expected status.
    pub bodies: Vec<(usize, Vec<u8>)>,
    /// The first few failures, described.
    pub failures: Vec<String>,
    /// The requests ran out before the deadline.
    pub ran_out: bool,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// Nearest-rank percentile in ms.
    pub fn percentile(&self, p: f64) -> f64 {
        let n = self.latencies.len();
        if n == 0 {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * n as f64).ceil().max(1.0) as usize;
        self.latencies[rank.min(n) - 1].as_secs_f64() * 1e3
    }
}

/// How connections are used.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Connections {
    /// One per thread, kept alive.
    KeepAlive,
    /// A new TCP connection and full TLS handshake per request.
    PerRequest,
}

/// `threads` workers send `requests` (each once, in order of taking) until
/// `length` is up or the requests run out; `expect` is the success status.
pub fn run(
    target: &Target,
    requests: &[Vec<u8>],
    threads: usize,
    length: Duration,
    connections: Connections,
    expect: u16,
) -> Outcome {
    const SHOW: usize = 10;
    let next = AtomicUsize::new(0);
    let ran_out = AtomicBool::new(false);
    let start = Barrier::new(threads + 1);
    let failures = Mutex::new((0usize, Vec::new()));
    let results: Mutex<Vec<(Duration, usize, Vec<u8>)>> = Mutex::new(Vec::new());
    let fail = |what: String| {
        let mut f = failures.lock().expect("failures");
        f.0 += 1;
        if f.1.len() < SHOW {
            f.1.push(what);
        }
    };
    let t0 = std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut mine = Vec::new();
                let mut conn = None;
                start.wait();
                let t = Instant::now();
                while t.elapsed() < length {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(req) = requests.get(i) else {
                        ran_out.store(true, Ordering::Relaxed);
                        break;
                    };
                    let sent = Instant::now();
                    let stream = match conn.take() {
                        Some(c) if connections == Connections::KeepAlive => Ok(c),
                        _ => target.connect(),
                    };
                    let answer = stream.and_then(|mut c| {
                        c.write_all(req)?;
                        c.flush()?;
                        let (status, body, keep) = read_response(&mut c)?;
                        if keep {
                            conn = Some(c);
                        }
                        Ok((status, body))
                    });
                    match answer {
                        Ok((status, body)) if status == expect => {
                            mine.push((sent.elapsed(), i, body));
                        }
                        Ok((status, body)) => fail(format!(
                            "request {i}: HTTP {status}: {}",
                            String::from_utf8_lossy(&body[..body.len().min(300)])
                        )),
                        Err(e) => fail(format!("request {i}: {e}")),
                    }
                }
                results.lock().expect("results").extend(mine);
            });
        }
        start.wait();
        Instant::now()
    });
    let elapsed = t0.elapsed();
    let (failed, failures) = failures.into_inner().expect("failures");
    let mut results = results.into_inner().expect("results");
    results.sort_unstable_by_key(|r| r.0);
    let latencies = results.iter().map(|r| r.0).collect();
    Outcome {
        ok: results.len(),
        failed,
        elapsed,
        latencies,
        bodies: results.into_iter().map(|(_, i, b)| (i, b)).collect(),
        failures,
        ran_out: ran_out.load(Ordering::Relaxed),
    }
}

/// Status, body and whether the connection stays open. Content-Length
/// bodies only (what both servers send to these requests).
fn read_response(c: &mut impl std::io::Read) -> std::io::Result<(u16, Vec<u8>, bool)> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = c.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before the answer",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let mut length = None;
    let mut keep = true;
    for line in head.lines().skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                length = v.parse::<usize>().ok();
            } else if k == "connection" && v.eq_ignore_ascii_case("close") {
                keep = false;
            } else if k == "transfer-encoding" {
                return Err(bad("chunked answers are not read here"));
            }
        }
    }
    let length = length.ok_or_else(|| bad("no Content-Length"))?;
    let mut body = buf.split_off(head_end);
    while body.len() < length {
        let n = c.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("connection closed inside the body"));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok((status, body, keep))
}
