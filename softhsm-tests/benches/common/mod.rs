//! Helpers shared by the benchmark programs (`service`, `revocation`,
//! `escrow`): finding the release binaries, reading knobs from the
//! environment, device CSRs made in-process, the raw fsync rate, process
//! memory, and number formatting for the printed tables.
#![allow(dead_code)] // each bench uses its own subset

pub mod load;

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The rest of a bench program's `main`: `cargo test --all-targets` and
/// nextest also run bench binaries, so list nothing and run nothing unless
/// `cargo bench` asked (it passes `--bench`); exit 1 when `bench` reports a
/// failure.
pub fn bench_main(name: &str, args: &[String], bench: impl FnOnce() -> bool) {
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "{name} benchmark: skipped (run it with `cargo bench -p softhsm-tests --bench {name}`)"
        );
        return;
    }
    if !bench() {
        eprintln!("{name} bench: FAILED (see above)");
        std::process::exit(1);
    }
}

/// `cargo bench` runs a bench from target/release/deps; kmsd and kmsctl
/// must be beside it in target/release. Exits 2 with the command to run
/// when they are not.
pub fn require_release_bins() {
    let exe = std::env::current_exe().expect("current exe");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("bench binary lives in target/<profile>/deps");
    for name in ["kmsd", "kmsctl"] {
        let path = profile.join(name);
        if !path.exists() {
            eprintln!(
                "{} not built: run `cargo build --release --bins` first",
                path.display()
            );
            std::process::exit(2);
        }
    }
}

/// A positive number of seconds from the environment variable `name`, or
/// `default`; exits 2 on anything else.
pub fn env_secs(name: &str, default: f64) -> f64 {
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

/// The trimmed stdout of a command, `?` when it fails.
pub fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".into())
}

/// The first lines of a bench's output: its title, the date, the machine,
/// and `binary` (a release binary beside the bench) with its build time
/// and `about` it.
pub fn print_header(title: &str, binary: &str, about: &str) {
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
    let path = softhsm_tests::bin(binary);
    let built = command_line(
        "date",
        &[
            "-u",
            "-r",
            &path.display().to_string(),
            "+%Y-%m-%dT%H:%M:%SZ",
        ],
    );
    println!("# vBus KMS {title} benchmark");
    println!(
        "date: {}",
        command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])
    );
    println!(
        "machine: nproc {cpus} ({model}), kernel {}",
        command_line("uname", &["-r"])
    );
    println!("{binary}: {} (built {built}){about}", path.display());
}

/// VmRSS and VmHWM of `pid`, kB.
pub fn memory(pid: u32) -> (u64, u64) {
    memory_of(&format!("/proc/{pid}/status"))
}

/// VmRSS and VmHWM of this process, kB.
pub fn memory_self() -> (u64, u64) {
    memory_of("/proc/self/status")
}

fn memory_of(path: &str) -> (u64, u64) {
    let status = std::fs::read_to_string(path).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// kB → MiB.
pub fn mib(kb: f64) -> f64 {
    kb / 1024.0
}

/// `1234.5` → `"1,235"`.
pub fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "?".into();
    }
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The median of `v` (zero when empty).
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Print a benchmark's summary table (columns `| measurement | result |
/// detail | reference | ratio |`) and, when `KMS_BENCH_ROWS` names a file,
/// append its rows there too: `bench/run` gathers every bench's rows into
/// one table.
pub fn emit_table(rows: &[String]) {
    println!();
    println!("| measurement | result | detail | reference | ratio |");
    println!("|---|--:|---|--:|--:|");
    for r in rows {
        println!("{r}");
    }
    if let Ok(path) = std::env::var("KMS_BENCH_ROWS") {
        let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .unwrap_or_else(|e| panic!("append to KMS_BENCH_ROWS={path}: {e}"));
    }
}

/// Disk blocks under `path`, kB.
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let own = meta.blocks() / 2;
    if !meta.is_dir() {
        return own;
    }
    own + std::fs::read_dir(path)
        .map(|rd| rd.flatten().map(|e| disk_usage(&e.path())).sum::<u64>())
        .unwrap_or(0)
}

/// 64-byte appends, each followed by fdatasync, for `length`, in `dir`:
/// how many, and how long they took.
pub fn fsync_rate(dir: &Path, length: Duration) -> (u64, Duration) {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open the fsync probe: {e}"));
    let block = [0x5au8; 64];
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < length {
        f.write_all(&block)
            .unwrap_or_else(|e| panic!("write the fsync probe: {e}"));
        f.sync_data().unwrap_or_else(|e| panic!("fdatasync: {e}"));
        n += 1;
    }
    let elapsed = t.elapsed();
    drop(f);
    let _ = std::fs::remove_file(&path);
    (n, elapsed)
}

/// One device: its index, module serial, hardware UUID and CSR (fresh key).
pub struct Device {
    pub index: usize,
    pub serial: String,
    pub uuid: String,
    pub csr_pem: String,
}

/// Devices `0..n` (see [`device`]), made on every CPU.
pub fn make_devices(n: usize) -> Vec<Device> {
    make_device_range(0, n)
}

/// Devices `first..first + n` (see [`device`]), made on every CPU.
pub fn make_device_range(first: usize, n: usize) -> Vec<Device> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = n.div_ceil(workers).max(1);
    let end = first + n;
    std::thread::scope(|s| {
        let handles: Vec<_> = (first..end)
            .step_by(chunk)
            .map(|start| {
                s.spawn(move || {
                    (start..(start + chunk).min(end))
                        .map(device)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("CSR thread"))
            .collect()
    })
}

/// Device `index` with a CSR as EST clients make it: module serial
/// `VBUS-CPU-2412-<index + 1>` as subject serialNumber and CN, SAN
/// `URI:urn:uuid:<uuid>`, a fresh P-256 key.
pub fn device(index: usize) -> Device {
    let serial = format!("VBUS-CPU-2412-{:06}", index + 1);
    let uuid = format!("6f9619ff-8b86-4011-b42d-{:012x}", index + 1);
    let key = ca::testing::SoftP256::generate();
    let mut params = rcgen::CertificateParams::default();
    let mut name = rcgen::DistinguishedName::new();
    name.push(
        rcgen::DnType::CustomDnType(vec![2, 5, 4, 5]),
        rcgen::DnValue::PrintableString(
            rcgen::string::PrintableString::try_from(serial.as_str())
                .unwrap_or_else(|e| panic!("module serial as PrintableString: {e}")),
        ),
    );
    name.push(rcgen::DnType::CommonName, serial.as_str());
    params.distinguished_name = name;
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(format!("urn:uuid:{uuid}"))
            .unwrap_or_else(|e| panic!("urn:uuid: {e}")),
    )];
    let csr_pem = params
        .serialize_request(&ca::RcgenSigner::new(&key))
        .and_then(|c| c.pem())
        .unwrap_or_else(|e| panic!("device CSR: {e}"));
    Device {
        index,
        serial,
        uuid,
        csr_pem,
    }
}

// ------------------------------------------------------------ phases

/// Argument that makes a bench binary run one phase as a child process
/// (SoftHSM2 reads its configuration once per process, so each quickstart
/// appliance gets a process of its own).
pub const PHASE_ARG: &str = "--bench-phase";
/// Prefix of a child's one line of results on stdout.
pub const RESULT: &str = "RESULT ";

/// `Result` with a message naming what failed.
pub trait OrDie<T> {
    /// The value, or a panic naming `what`.
    fn or_die(self, what: &str) -> T;
}

impl<T, E: std::fmt::Display> OrDie<T> for Result<T, E> {
    fn or_die(self, what: &str) -> T {
        self.unwrap_or_else(|e| panic!("{what}: {e}"))
    }
}

/// A bench's `main`: a child phase when asked for one, else the bench.
pub fn phases_main(
    name: &str,
    child: impl FnOnce(&str, &Path) -> serde_json::Value,
    bench: impl FnOnce() -> bool,
) {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == PHASE_ARG) {
        let (Some(phase), Some(dir)) = (args.get(i + 1), args.get(i + 2)) else {
            panic!("{PHASE_ARG} PHASE DIR");
        };
        let result = child(phase, Path::new(dir));
        println!("{RESULT}{result}");
        return;
    }
    bench_main(name, &args, bench);
}

/// `kmsctl quickstart` into `tmp/appliance` with its publication port.
pub fn quickstart(tmp: &Path, port: u16) -> std::path::PathBuf {
    let dir = tmp.join("appliance");
    eprintln!("quickstart {} …", dir.display());
    let out = softhsm_tests::quickstart(&dir, port);
    assert!(
        out.status.success(),
        "kmsctl quickstart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// Run `phase` on `dir` in a child process of this binary; its results.
pub fn run_child(phase: &str, dir: &Path) -> serde_json::Value {
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new(exe)
        .args([PHASE_ARG, phase])
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .or_die("start the child phase");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        eprintln!(
            "phase {phase} failed ({}); its stdout:\n{stdout}",
            out.status
        );
        std::process::exit(1);
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(RESULT))
        .unwrap_or_else(|| panic!("phase {phase} printed no result:\n{stdout}"));
    serde_json::from_str(line).or_die("the child's result")
}

/// The appliance in `dir` opened in this (child) process: the module's
/// environment set before anything else touches it.
pub fn open_appliance(
    dir: &Path,
) -> (kms::appliance::Appliance, std::sync::Arc<kms::token::Token>) {
    let cfg = kms::config::Config::load(&dir.join("kmsd.toml")).or_die("load kmsd.toml");
    cfg.token.apply_module_env();
    let pin = kms::pin::load_pin(&cfg.token).or_die("load the PIN");
    let token =
        std::sync::Arc::new(kms::token::Token::open(&cfg.token, pin).or_die("open the token"));
    let app = kms::appliance::Appliance::open(cfg, token.clone()).or_die("open the appliance");
    (app, token)
}

/// A ureq client speaking mTLS (rustls) to the API of the quickstart
/// appliance `a`, with the credential in `a.credential(cred)` (`ca.pem`,
/// `cert.pem`, `key.pem`): for tests that send many requests from threads.
pub fn mtls_agent(a: &softhsm_tests::Running, cred: &str) -> ureq::Agent {
    let d = a.credential(cred);
    let read = |f: &str| std::fs::read_to_string(d.join(f)).or_die(f);
    let target = load::Target::new(
        format!("127.0.0.1:{}", a.api).parse().or_die("API address"),
        &read("ca.pem"),
        &read("cert.pem"),
        &read("key.pem"),
    );
    ureq::AgentBuilder::new()
        .tls_config(target.tls)
        .timeout(Duration::from_secs(60))
        .build()
}
