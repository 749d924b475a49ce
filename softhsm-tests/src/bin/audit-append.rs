//! Crash-test helper: append to the audit log in DIR from 8 threads until
//! killed, printing each acknowledged (durable) sequence number on its own
//! line. The checkpoint key is a software Ed25519 key from SEED (hex), so
//! the test can verify what survives.

use std::io::Write;
use std::sync::Arc;

struct Key(ed25519_dalek::SigningKey);

impl audit::CheckpointSigner for Key {
    fn public_key(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }
    fn sign(&self, m: &[u8]) -> Result<[u8; 64], audit::SignerError> {
        use ed25519_dalek::Signer;
        Ok(self.0.sign(m).to_bytes())
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(seed)) = (args.next(), args.next()) else {
        eprintln!("usage: audit-append DIR SEED_HEX");
        std::process::exit(2);
    };
    let seed: [u8; 32] = match hex::decode(seed).ok().and_then(|s| s.try_into().ok()) {
        Some(s) => s,
        None => {
            eprintln!("SEED must be 64 hex digits");
            std::process::exit(2);
        }
    };
    let key = Arc::new(Key(ed25519_dalek::SigningKey::from_bytes(&seed)));
    let opts = audit::Options {
        origin: "vbus-kms/audit".into(),
        checkpoint_every: 100,
    };
    let log = match audit::Log::open(std::path::Path::new(&dir), opts, Some(key)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("open: {e}");
            std::process::exit(1);
        }
    };
    let out = std::sync::Mutex::new(std::io::stdout());
    std::thread::scope(|s| {
        for t in 0..8 {
            let (log, out) = (&log, &out);
            s.spawn(move || {
                for i in 0u64.. {
                    let e = audit::Entry::new(
                        &format!("thread-{t}"),
                        "test.append",
                        &i.to_string(),
                        "ok",
                    );
                    match log.append(e) {
                        Ok(a) => {
                            let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                            let _ = writeln!(o, "{}", a.seq);
                            let _ = o.flush();
                        }
                        Err(e) => {
                            eprintln!("append: {e}");
                            std::process::exit(1);
                        }
                    }
                }
            });
        }
    });
}
