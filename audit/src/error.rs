//! The one error type of the `audit` crate.

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong with the audit log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A write or fsync failed; the log is stopped and refuses every append
    /// until the process restarts and reopens it. Except a full file system:
    /// the refused batch is cut off the file and the log takes records again
    /// once space returns.
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
    /// The segment ends in an incomplete record (a crash mid-write).
    /// `kmsctl audit repair` drops exactly those bytes after showing them.
    #[error(
        "audit log ends in an incomplete record: {bytes} byte(s) after record {last_complete} \
         at offset {offset}; run `kmsctl audit repair` to drop them"
    )]
    TornTail {
        /// Sequence number of the last complete record.
        last_complete: u64,
        /// Where the incomplete record starts.
        offset: u64,
        /// How many bytes it has.
        bytes: u64,
    },
    /// A complete record does not chain: the log was altered.
    #[error("audit record {seq} does not verify: {reason}")]
    Tampered {
        /// The first bad sequence number.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// A checkpoint names more records than the log holds: the log was
    /// truncated or rolled back.
    #[error(
        "checkpoint covers {checkpoint} records but the log holds {log}: truncated or rolled back"
    )]
    RolledBack {
        /// Size in the newest checkpoint.
        checkpoint: u64,
        /// Records in the log.
        log: u64,
    },
    /// A checkpoint note is malformed or its signature does not verify.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The checkpoint signer failed.
    #[error("checkpoint signing failed: {0}")]
    Signer(#[source] crate::SignerError),
    /// Some I/O on the log directory failed (outside the append path).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file system the log or the state depends on has less free space
    /// than the configured reserve: nothing is recorded or done until
    /// space is freed (no restart needed).
    #[error(
        "{path}: {free} bytes free, below the reserve of {reserve}; nothing is recorded or \
         changed until space is freed"
    )]
    LowSpace {
        /// The directory whose file system is short.
        path: std::path::PathBuf,
        /// Bytes available to the service.
        free: u64,
        /// The configured reserve.
        reserve: u64,
    },
    /// A record could not be encoded (a bug).
    #[error("record encoding: {0}")]
    Encoding(String),
}

impl Error {
    /// The stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Unavailable(_) => "audit_unavailable",
            Error::TornTail { .. } => "audit_torn_tail",
            Error::Tampered { .. } => "audit_tampered",
            Error::RolledBack { .. } => "audit_rolled_back",
            Error::Checkpoint(_) => "audit_checkpoint_invalid",
            Error::Signer(_) => "audit_unavailable",
            Error::Io { .. } => "audit_unavailable",
            Error::LowSpace { .. } => "storage_unavailable",
            Error::Encoding(_) => "internal_error",
        }
    }
}
