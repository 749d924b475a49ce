//! Helpers shared by the benchmark programs (`service`, `revocation`):
//! finding the release binaries, reading knobs from the environment,
//! process memory, and number formatting for the printed tables.
#![allow(dead_code)] // each bench uses its own subset

use std::path::Path;
use std::process::Command;

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
