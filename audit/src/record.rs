//! Audit records and the hash chain.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `hash_0`: 32 zero bytes.
pub const GENESIS: [u8; 32] = [0; 32];

/// `hash_n = SHA-256(hash_{n-1} || body_n)`.
pub fn chain(previous: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(previous);
    h.update(body);
    h.finalize().into()
}

/// One audit record. Its JSON encoding, in this field order, is the body
/// that is hashed; never a secret in any field (fingerprints at most).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Sequence number, from 1, without gaps.
    pub seq: u64,
    /// Milliseconds since the Unix epoch, UTC.
    pub time_ms: u64,
    /// Station id, officer id, or `local:<user>` for CLI use on the appliance.
    pub actor: String,
    /// Operation, e.g. `certificate.issue`.
    pub op: String,
    /// What it was about: module serial, certificate serial, key id.
    pub subject: String,
    /// `ok` or the error code.
    pub result: String,
    /// Operation details, never secret.
    pub details: serde_json::Value,
}

/// What a caller appends; the log assigns `seq` and `time_ms`.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// See [`Record::actor`].
    pub actor: String,
    /// See [`Record::op`].
    pub op: String,
    /// See [`Record::subject`].
    pub subject: String,
    /// See [`Record::result`].
    pub result: String,
    /// See [`Record::details`].
    pub details: serde_json::Value,
}

impl Entry {
    /// An entry with empty details.
    pub fn new(actor: &str, op: &str, subject: &str, result: &str) -> Self {
        Self {
            actor: actor.into(),
            op: op.into(),
            subject: subject.into(),
            result: result.into(),
            details: serde_json::Value::Object(Default::default()),
        }
    }

    /// Add details.
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}
