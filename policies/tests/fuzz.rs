//! Property test without extra crates: a deterministic xorshift PRNG
//! mutates the sample policy 20,000 times (byte flips, deletions, duplicated
//! lines, truncation, TOML fragments inserted) and feeds random token soup;
//! every input either loads or is refused with a line ≥ 1, a column ≥ 1
//! and a reason — never a panic. What loads is then asked a few questions,
//! which must not panic either.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use policies::{Action, Actor, ApprovalKind, Policy, Quotas};

const SAMPLE: &str = include_str!("data/policy.toml");

/// TOML fragments, valid and not, to splice in.
const FRAGMENTS: &[&str] = &[
    "[",
    "]",
    "[[",
    "]]",
    "\"",
    "'",
    "=",
    ",",
    ".",
    "\n",
    " ",
    "#",
    "{",
    "}",
    "..",
    "-",
    "version = 1\n",
    "version = 2\n",
    "[identities]\n",
    "\"x\" = [\"station\"]\n",
    "\"station-01\" = []\n",
    "[stations.\"station-01\"]\n",
    "[stations.x]\n",
    "modules = []\n",
    "modules = [\"CPU\"]\n",
    "modules = [\"GPU\"]\n",
    "serials = [\"VBUS-CPU-2412-000000..000009\"]\n",
    "serials = [\"VBUS-CPU-2412-9..1\"]\n",
    "work_orders = [\"WO-2412-017\"]\n",
    "work_orders = [\"nope\"]\n",
    "[work_orders.\"WO-9\"]\n",
    "per_hour = 0\n",
    "per_day = 1\n",
    "per_hour = -1\n",
    "per_hour = 99999999999999999999\n",
    "[profiles.CPU]\n",
    "[profiles.GPU]\n",
    "key_types = [\"rsa-2048\"]\n",
    "validity_days = 0\n",
    "validity_days = 36500\n",
    "[reissue]\n",
    "stations_may_reenroll = true\n",
    "[approvals.escrow_recovery]\n",
    "required = 0\n",
    "required = 99\n",
    "\"officer\"",
    "\"station\"",
    "\"firmware-signer\"",
    "1979-05-27T07:32:00Z",
    "inf",
    "nan",
    "true",
    "0x1F",
    "1e400",
    "\"\\u0000\"",
    "é",
    "🦀",
    "\u{feff}",
    "\r\n",
    "\t",
    "'''",
    "\"\"\"",
];

/// xorshift64*: small, deterministic, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(rng: &mut Rng, text: &[u8]) -> Vec<u8> {
    let mut out = text.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 => {
                if at < out.len() {
                    out[at] ^= 1 << rng.below(8);
                }
            }
            1 => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                if at < end {
                    out.drain(at..end);
                }
            }
            2 => {
                let text = String::from_utf8_lossy(&out).into_owned();
                let lines: Vec<&str> = text.split_inclusive('\n').collect();
                if !lines.is_empty() {
                    let line = lines[rng.below(lines.len())].to_owned();
                    let to = rng.below(out.len() + 1);
                    out.splice(to..to, line.into_bytes());
                }
            }
            3 => out.truncate(at),
            _ => {
                let frag = FRAGMENTS[rng.below(FRAGMENTS.len())];
                out.splice(at..at, frag.bytes());
            }
        }
    }
    out
}

fn soup(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.below(40) {
        out.extend_from_slice(FRAGMENTS[rng.below(FRAGMENTS.len())].as_bytes());
    }
    out
}

fn exercise(policy: &Policy, rng: &mut Rng) {
    let quotas = Quotas::new();
    let ids = ["station-01", "station-02", "officer-01", "x", ""];
    let serials = ["VBUS-CPU-2412-003000", "VBUS-PWR-2412-000100", "bad"];
    let id = ids[rng.below(ids.len())];
    let serial = serials[rng.below(serials.len())];
    let now = rng.next() as i64;
    for actor in [Actor::Client(id), Actor::Local] {
        for action in [
            Action::IssueDevice {
                module_serial: serial,
                key_type: "ecdsa-p256",
            },
            Action::Reenroll {
                module_serial: serial,
                key_type: "ed25519",
            },
            Action::DeviceRead {
                module_serial: serial,
            },
            Action::Admin,
        ] {
            let _ = policy.decide(&actor, &action, &quotas, now);
            let _ = policy.explain(&actor, &action, &quotas, now);
            if let Ok(a) = policy.admit(&actor, &action, &quotas, now) {
                a.keep();
            }
        }
        let _ = policy.approve(ApprovalKind::EscrowRecovery, "officer-02", &[], &actor);
    }
    let _ = policy.to_string();
    let _ = policy.effective();
}

fn check(input: &[u8], rng: &mut Rng, loaded: &mut usize) {
    let text = String::from_utf8_lossy(input);
    match Policy::parse(&text) {
        Ok(policy) => {
            *loaded += 1;
            exercise(&policy, rng);
        }
        Err(e) => {
            let lines = text.split('\n').count();
            assert!(e.line >= 1 && e.line <= lines, "{e} in {text:?}");
            assert!(e.column >= 1, "{e} in {text:?}");
            assert!(!e.reason.trim().is_empty(), "{e} in {text:?}");
        }
    }
}

#[test]
fn mutated_policies_load_or_are_refused_with_a_position() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut loaded = 0;
    for _ in 0..20_000 {
        let input = mutate(&mut rng, SAMPLE.as_bytes());
        check(&input, &mut rng, &mut loaded);
    }
    // Some mutations (in comments, duplicated harmless lines) still load.
    eprintln!("{loaded} of 20000 mutated policies loaded");
    assert!(loaded > 0);
}

#[test]
fn token_soup_is_refused_with_a_position() {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let mut loaded = 0;
    for _ in 0..5_000 {
        let input = soup(&mut rng);
        check(&input, &mut rng, &mut loaded);
    }
}
