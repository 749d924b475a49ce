//! The one error type of the `station` crate. Each failure has a stable
//! snake_case code ([`Error::code`]); a refusal by the appliance carries the
//! appliance's own code through unchanged.

use std::path::PathBuf;

/// Result alias for the `station` crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the station client can refuse or fail on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The appliance answered with an HTTP error status.
    #[error(
        "refused by the appliance (HTTP {status}): {message}{}",
        retry_after.as_ref().map(|t| format!(" (retry after {t})")).unwrap_or_default()
    )]
    Refused {
        /// HTTP status.
        status: u16,
        /// The appliance's stable error code, or `http_<status>` when the
        /// body was not the documented error shape.
        code: String,
        /// The appliance's message (or the start of the body).
        message: String,
        /// When to come back (RFC 3339), for `quota_exceeded`.
        retry_after: Option<String>,
    },
    /// The request did not get an HTTP answer: DNS, TCP, TLS (including a
    /// server certificate that does not chain to `ca.pem`), or a timeout.
    #[error("transport: {0}")]
    Transport(String),
    /// The appliance answered 2xx with a body that is not what the contract
    /// says, or with a certificate that does not match the request.
    #[error("unexpected answer from the appliance: {0}")]
    InvalidResponse(String),
    /// The base URL is not an `https://` URL.
    #[error("appliance URL {0:?} is not an https:// URL")]
    InvalidUrl(String),
    /// The credential (cert.pem, key.pem, ca.pem) is unusable.
    #[error("credential {path}: {reason}")]
    Credential {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The private key file can be read by group or others.
    #[error(
        "private key {path} has mode {mode:04o}: it must not be readable by group or others \
         (chmod 600 {path})",
        path = path.display()
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The TLS client configuration could not be built from the credential.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// A station id that is not 1–64 characters of `[A-Za-z0-9._-]`.
    #[error("station id {0:?} is not 1-64 characters of [A-Za-z0-9._-]")]
    InvalidStationId(String),
    /// A module serial that cannot be used in a URL path and a directory name.
    #[error(
        "module serial {0:?} is not 1-64 characters of [A-Za-z0-9._-] (not starting with '.')"
    )]
    InvalidSerial(String),
    /// A device key purpose that is not 1–32 characters of `[a-z0-9_-]`, or
    /// is `psk` or `keypair` (which have their own requests).
    #[error(
        "key purpose {0:?} is not 1-32 characters of [a-z0-9_-] \
         (psk and keypair have their own verbs)"
    )]
    InvalidPurpose(String),
    /// A file that must not be overwritten already exists.
    #[error("{} already exists; refusing to overwrite it", .0.display())]
    AlreadyExists(PathBuf),
    /// Generating the key or building the CSR failed.
    #[error("key or CSR generation failed: {0}")]
    KeyGeneration(String),
    /// A provisioning record that does not have the documented shape.
    #[error("provisioning record: {0}")]
    InvalidRecord(String),
    /// The batch CSV cannot be used at all (as opposed to one bad row).
    #[error("batch file {path}: {reason}", path = path.display())]
    BatchFile {
        /// The CSV file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The batch journal has a damaged line before its last one.
    #[error("batch journal {path} line {line}: {reason}", path = path.display())]
    JournalCorrupt {
        /// The journal file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Another batch holds the journal.
    #[error("batch journal {} is in use by another batch", .0.display())]
    JournalInUse(PathBuf),
    /// A local file operation failed.
    // The OS error is in the message rather than `source()`, so that
    // `{:#}` chains do not print it twice and batch messages keep it.
    #[error("{op} {path}: {error}", path = path.display())]
    Io {
        /// What we were doing (`reading`, `writing`, …).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The device cannot be reached or opened (transport, token absent,
    /// wrong PIN, bad device URI).
    #[error("device unreachable: {0}")]
    DeviceUnreachable(String),
    /// The device refused or failed an operation.
    #[error("device refused: {0}")]
    DeviceRefused(String),
    /// The device already holds what we asked it to create (a key, a
    /// certificate, a secret), or is locked.
    #[error("device already holds {0}")]
    DeviceHolds(String),
    /// Provisioning cannot go on without an operator decision (e.g. the
    /// appliance already issued a PSK the device does not hold).
    #[error("provisioning stopped: {0}")]
    ProvisionStopped(String),
    /// A broken internal invariant (a bug), reported instead of panicking.
    #[error("internal error: {0}")]
    Unreachable(&'static str),
}

impl Error {
    /// The stable snake_case code: the appliance's own code for
    /// [`Error::Refused`], a local one otherwise.
    pub fn code(&self) -> &str {
        match self {
            Error::Refused { code, .. } => code,
            Error::Transport(_) => "transport_error",
            Error::InvalidResponse(_) => "invalid_response",
            Error::InvalidUrl(_) => "invalid_url",
            Error::Credential { .. } => "credential_invalid",
            Error::KeyPermissions { .. } => "key_permissions_too_open",
            Error::Tls(_) => "tls_config_invalid",
            Error::InvalidStationId(_) => "invalid_station_id",
            Error::InvalidSerial(_) => "invalid_module_serial",
            Error::InvalidPurpose(_) => "purpose_invalid",
            Error::AlreadyExists(_) => "file_exists",
            Error::KeyGeneration(_) => "key_generation_failed",
            Error::InvalidRecord(_) => "record_invalid",
            Error::BatchFile { .. } => "batch_file_invalid",
            Error::JournalCorrupt { .. } => "journal_corrupt",
            Error::JournalInUse(_) => "journal_in_use",
            Error::Io { .. } => "io_error",
            Error::DeviceUnreachable(_) => "device_unreachable",
            Error::DeviceRefused(_) => "device_refused",
            Error::DeviceHolds(_) => "device_already_holds",
            Error::ProvisionStopped(_) => "provision_stopped",
            Error::Unreachable(_) => "internal_error",
        }
    }

    /// An [`Error::Io`] for `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            error,
        }
    }
}
