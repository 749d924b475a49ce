//! Hash-chained, append-only audit log for vBus KMS, with signed checkpoints
//! and an offline verifier.
//!
//! - [`Record`]: one operation, allowed or refused. Its body is its exact
//!   JSON bytes; `hash_n = SHA-256(hash_{n-1} || body_n)`, `hash_0` = 32 zero
//!   bytes (sequence numbers start at 1).
//! - [`Log`]: the segment file with group commit: concurrent appenders are
//!   batched into one write and one fsync, and each is told "durable" only
//!   after it. The first failed write or fsync stops the log for good.
//! - [`note`]: checkpoints as C2SP signed notes, signed through
//!   [`CheckpointSigner`] (an Ed25519 token key in the appliance).
//! - [`verify`]: the offline verifier of the JSON-lines export.
//! - [`export_upto`] and [`LogWriter`]: a bounded copy of the log as export
//!   lines while it stays open (a backup), and a log rebuilt from one (a restore).
//!
//! Pure crate: no PKCS#11, no HTTP.

#![forbid(unsafe_code)]

mod copy;
mod error;
mod log;
pub mod note;
mod record;
pub mod verify;

pub use copy::{export_upto, LogWriter};
pub use error::{Error, Result};
pub use log::{
    for_each_record, repair, Appended, Log, Options, RepairReport, CHECKPOINT_FILE, SEGMENT_FILE,
};
pub use record::{chain, Entry, Record, GENESIS};

/// Failure inside a [`CheckpointSigner`], passed through unchanged.
pub type SignerError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The key that signs checkpoints (C2SP signed notes, Ed25519).
pub trait CheckpointSigner: Send + Sync {
    /// The 32-byte Ed25519 public key, for the C2SP verifier key line.
    fn public_key(&self) -> [u8; 32];

    /// Sign `message` (the note text) and return the 64-byte signature.
    fn sign(&self, message: &[u8]) -> Result<[u8; 64], SignerError>;
}

/// A place outside the log directory that keeps the newest checkpoint (a
/// data object in the token, in the appliance). Someone who rolls back the
/// segment and its checkpoint file together is still caught at open.
pub trait CheckpointAnchor: Send + Sync {
    /// The anchored checkpoint notes (normally one; the newest counts).
    fn load(&self) -> Result<Vec<String>, SignerError>;

    /// Replace the anchored note with `note`.
    fn store(&self, note: &str) -> Result<(), SignerError>;
}
