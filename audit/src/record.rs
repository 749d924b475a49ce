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

/// A record's body without its sequence number: everything but `seq`,
/// serialised before the log's lock is taken. [`RecordTail::body`] splices
/// the number in and gives exactly the bytes `serde_json::to_vec(&Record)`
/// gives (a unit test holds it to that).
#[derive(Serialize)]
pub(crate) struct RecordTail<'a> {
    pub time_ms: u64,
    pub actor: &'a str,
    pub op: &'a str,
    pub subject: &'a str,
    pub result: &'a str,
    pub details: &'a serde_json::Value,
}

impl RecordTail<'_> {
    /// The JSON of this tail: `{"time_ms":…}`.
    pub(crate) fn encode(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(self)
    }

    /// The record body for `seq` from an encoded tail.
    pub(crate) fn body(seq: u64, tail: &[u8]) -> Vec<u8> {
        let seq = seq.to_string();
        let mut body = Vec::with_capacity(tail.len() + seq.len() + 8);
        body.extend_from_slice(b"{\"seq\":");
        body.extend_from_slice(seq.as_bytes());
        body.push(b',');
        body.extend_from_slice(tail.get(1..).unwrap_or_default());
        body
    }
}

#[cfg(test)]
mod tail_tests {
    use super::*;

    #[test]
    fn a_spliced_body_is_the_records_json() {
        for (seq, details) in [
            (1, serde_json::json!({})),
            (
                42,
                serde_json::json!({"serial_number": "00ff", "n": [1, 2]}),
            ),
            (u64::MAX, serde_json::json!(null)),
        ] {
            let record = Record {
                seq,
                time_ms: 1_764_093_600_123,
                actor: "station-01".into(),
                op: "certificate.issue".into(),
                subject: "VBUS-CPU-2412-000001 \"quoted\" é".into(),
                result: "ok".into(),
                details: details.clone(),
            };
            let tail = RecordTail {
                time_ms: record.time_ms,
                actor: &record.actor,
                op: &record.op,
                subject: &record.subject,
                result: &record.result,
                details: &details,
            }
            .encode()
            .expect("tail");
            assert_eq!(
                RecordTail::body(seq, &tail),
                serde_json::to_vec(&record).expect("record")
            );
        }
    }
}
