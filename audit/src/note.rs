//! Checkpoints as C2SP signed notes (<https://c2sp.org/signed-note>), with a
//! body in the shape of <https://c2sp.org/tlog-checkpoint>:
//!
//! ```text
//! <origin>
//! <size: number of records, decimal>
//! <head: hash_size, standard base64>
//! time <milliseconds since the epoch>
//!
//! — <key name> <base64(key hash (4 bytes) || Ed25519 signature (64 bytes))>
//! ```
//!
//! The signature covers the body: every line above the blank line, each
//! ending in `\n`. The key hash is the first 4 bytes of
//! `SHA-256(key name || "\n" || 0x01 || public key)`; the verifier key is
//! written `<name>+<hex key hash>+<base64(0x01 || public key)>`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::CheckpointSigner;

/// Signature type byte of Ed25519 in signed notes.
const ED25519: u8 = 0x01;

/// A checkpoint: the log's size and head hash at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's name (also the key name).
    pub origin: String,
    /// Number of records covered.
    pub size: u64,
    /// `hash_size`.
    pub head: [u8; 32],
    /// When it was made, ms since the epoch.
    pub time_ms: u64,
}

impl Checkpoint {
    /// The signed part of the note.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\ntime {}\n",
            self.origin,
            self.size,
            B64.encode(self.head),
            self.time_ms
        )
    }

    /// The whole signed note, signed by `signer` under key name `origin`.
    pub fn sign(&self, signer: &dyn CheckpointSigner) -> Result<String> {
        let body = self.body();
        let sig = signer.sign(body.as_bytes()).map_err(Error::Signer)?;
        let mut blob = key_hash(&self.origin, &signer.public_key()).to_vec();
        blob.extend_from_slice(&sig);
        Ok(format!(
            "{body}\n\u{2014} {} {}\n",
            self.origin,
            B64.encode(blob)
        ))
    }

    fn parse_body(body: &str) -> Result<Self> {
        let bad = |why: &str| Error::Checkpoint(format!("malformed checkpoint body: {why}"));
        let lines: Vec<&str> = body
            .strip_suffix('\n')
            .ok_or_else(|| bad("no final newline"))?
            .split('\n')
            .collect();
        let [origin, size, head, time] = lines.as_slice() else {
            return Err(bad("expected origin, size, head and time lines"));
        };
        let size: u64 = size
            .parse()
            .map_err(|_| bad("size is not a decimal number"))?;
        let head: [u8; 32] = B64
            .decode(head)
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| bad("head is not 32 bytes of base64"))?;
        let time_ms = time
            .strip_prefix("time ")
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| bad("no time line"))?;
        Ok(Self {
            origin: (*origin).to_owned(),
            size,
            head,
            time_ms,
        })
    }
}

/// The note key hash of an Ed25519 key named `name`.
pub fn key_hash(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ED25519]);
    h.update(public_key);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// The C2SP verifier key line for an Ed25519 key named `name`.
pub fn verifier_key(name: &str, public_key: &[u8; 32]) -> String {
    let mut k = vec![ED25519];
    k.extend_from_slice(public_key);
    format!(
        "{name}+{}+{}",
        hex::encode(key_hash(name, public_key)),
        B64.encode(k)
    )
}

/// A parsed verifier key.
#[derive(Clone, Debug)]
pub struct Verifier {
    name: String,
    hash: [u8; 4],
    key: ed25519_dalek::VerifyingKey,
}

impl Verifier {
    /// Parse `<name>+<hex key hash>+<base64(0x01 || key)>`.
    pub fn parse(vkey: &str) -> Result<Self> {
        let bad = |why: &str| Error::Checkpoint(format!("verifier key: {why}"));
        // Key names never contain '+'; base64 may.
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(name), Some(hash), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected name+hash+key"));
        };
        let key = B64.decode(key).map_err(|_| bad("key is not base64"))?;
        let [ED25519, raw @ ..] = key.as_slice() else {
            return Err(bad("not an Ed25519 key"));
        };
        let raw: [u8; 32] = raw
            .try_into()
            .map_err(|_| bad("Ed25519 key is not 32 bytes"))?;
        let hash: [u8; 4] = hex::decode(hash)
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| bad("key hash is not 8 hex digits"))?;
        if key_hash(name, &raw) != hash {
            return Err(bad("key hash does not match name and key"));
        }
        Ok(Self {
            name: name.to_owned(),
            hash,
            key: ed25519_dalek::VerifyingKey::from_bytes(&raw)
                .map_err(|_| bad("not a valid Ed25519 point"))?,
        })
    }

    /// For a key we hold.
    pub fn from_key(name: &str, public_key: &[u8; 32]) -> Result<Self> {
        Self::parse(&verifier_key(name, public_key))
    }

    /// Check the note's signature by this key and return its checkpoint.
    pub fn open(&self, note: &str) -> Result<Checkpoint> {
        let (body, sigs) = note
            .split_once("\n\n")
            .map(|(b, s)| (format!("{b}\n"), s))
            .ok_or_else(|| Error::Checkpoint("note has no signature block".into()))?;
        let mut signed = false;
        for line in sigs.lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                return Err(Error::Checkpoint(
                    "signature line does not start with an em dash".into(),
                ));
            };
            let Some((name, blob)) = rest.rsplit_once(' ') else {
                return Err(Error::Checkpoint("malformed signature line".into()));
            };
            let Ok(blob) = B64.decode(blob) else {
                return Err(Error::Checkpoint("signature is not base64".into()));
            };
            if name != self.name || blob.len() != 68 || blob[..4] != self.hash {
                continue; // another key's signature: not ours to judge
            }
            let sig = ed25519_dalek::Signature::from_slice(&blob[4..])
                .map_err(|_| Error::Checkpoint("bad signature encoding".into()))?;
            if self.key.verify_strict(body.as_bytes(), &sig).is_err() {
                return Err(Error::Checkpoint("signature does not verify".into()));
            }
            signed = true;
        }
        if !signed {
            return Err(Error::Checkpoint(format!(
                "not signed by key {}",
                self.name
            )));
        }
        let cp = Checkpoint::parse_body(&body)?;
        if cp.origin != self.name {
            return Err(Error::Checkpoint(format!(
                "origin {:?} is not {:?}",
                cp.origin, self.name
            )));
        }
        Ok(cp)
    }
}
