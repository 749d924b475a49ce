//! The one error type of the `kms` library.
//!
//! Every variant names what went wrong and, where the operator can act, what
//! to do. No variant ever carries a PIN or key material. [`Error::code`] gives
//! the stable snake_case code that the API and the audit log use; the mapping
//! to HTTP status lives in one place, [`Error::http_status`].

use std::path::PathBuf;

use cryptoki::context::Function;
use cryptoki::error::RvError;

/// Result alias for the `kms` crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the appliance library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration file could not be read or is invalid.
    #[error("configuration {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, in words an operator can act on.
        reason: String,
    },

    /// The PIN source is missing, unreadable or unsafe.
    #[error("user PIN: {reason}")]
    PinSource {
        /// What is wrong and what to do; never the PIN itself.
        reason: String,
    },

    /// The PKCS#11 module could not be loaded.
    #[error(
        "cannot load PKCS#11 module {path}: {reason} (check token.module: it must be a \
         PKCS#11 library such as /usr/lib/softhsm/libsofthsm2.so)"
    )]
    ModuleLoad {
        /// The configured module path.
        path: PathBuf,
        /// The loader's complaint.
        reason: String,
    },

    /// No slot holds an initialised token with the configured label.
    #[error(
        "no token labelled {label:?} in module {module} (tokens present: {present}); \
         check token.label, or create the token (kmsctl quickstart does it for SoftHSM2)"
    )]
    TokenNotFound {
        /// The configured label.
        label: String,
        /// The module searched.
        module: PathBuf,
        /// Labels of the tokens that were found, comma-separated, or "none".
        present: String,
    },

    /// The token refused the user PIN. Never retried: tokens lock the PIN
    /// after a few failures.
    #[error(
        "token {label:?} refused the user PIN ({rv}); check the PIN file or variable. \
         The appliance will not try again until restarted, so the PIN does not lock",
        rv = rv_name(rv)
    )]
    PinRejected {
        /// Token label.
        label: String,
        /// The token's answer (CKR_PIN_INCORRECT, CKR_PIN_LOCKED, …).
        rv: RvError,
    },

    /// The token is unreachable or keeps losing sessions, after bounded
    /// retries. The service keeps running and tries again on the next call.
    #[error(
        "token {label:?} unavailable: {function} failed with {rv} after {attempts} attempt(s)",
        function = fn_name(function),
        rv = rv_name(rv)
    )]
    TokenUnavailable {
        /// Token label.
        label: String,
        /// The PKCS#11 function that failed last.
        function: Function,
        /// Its return value.
        rv: RvError,
        /// How many times the operation was tried.
        attempts: u32,
    },

    /// No session came free within the pool's wait limit.
    #[error(
        "all {size} token sessions busy for {waited_ms} ms; raise token.pool_size or lower load"
    )]
    PoolExhausted {
        /// Pool size.
        size: usize,
        /// How long the caller waited.
        waited_ms: u64,
    },

    /// The token did not answer within the caller's time limit.
    #[error("token {label:?} did not answer within {waited_ms} ms")]
    TokenTimeout {
        /// Token label.
        label: String,
        /// How long the caller waited.
        waited_ms: u64,
    },

    /// No key with that label and class is on the token.
    #[error("no {class} key labelled {label:?} on the token; list keys with `kmsctl status`")]
    KeyNotFound {
        /// The label looked for.
        label: String,
        /// "private", "public" or "secret".
        class: &'static str,
    },

    /// The key exists but cannot do what was asked (wrong type or usage).
    #[error("key {label:?} cannot be used here: {reason}")]
    WrongKeyType {
        /// The key's label.
        label: String,
        /// What was expected and what was found.
        reason: String,
    },

    /// A key with this label already exists; labels are unique on our token.
    #[error("a key labelled {label:?} already exists on the token; pick another label")]
    KeyExists {
        /// The label.
        label: String,
    },

    /// Decryption or unwrapping failed its integrity check: the ciphertext
    /// was altered, or the associated data or key is not the one used to seal it.
    #[error(
        "integrity check failed in {function}: ciphertext altered, or wrong key or associated data",
        function = fn_name(function)
    )]
    IntegrityCheckFailed {
        /// C_Decrypt or C_UnwrapKey.
        function: Function,
    },

    /// A caller-supplied argument is invalid (not from the token).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// The token answered in a way PKCS#11 does not allow (a malformed
    /// signature, a missing attribute).
    #[error("token returned something unexpected: {0}")]
    TokenProtocol(String),

    /// Any other PKCS#11 failure.
    #[error("{function} failed: {rv}", function = fn_name(function), rv = rv_name(rv))]
    Pkcs11 {
        /// The function.
        function: Function,
        /// Its return value.
        rv: RvError,
    },

    /// A file the appliance manages could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The CA refused or failed (its own code says which).
    #[error(transparent)]
    Ca(#[from] ca::Error),

    /// The audit log refused or failed.
    #[error(transparent)]
    Audit(#[from] audit::Error),

    /// The state store failed.
    #[error(transparent)]
    Store(#[from] store::Error),

    /// The appliance is already initialised; the ceremony runs once.
    #[error("already initialised: {0}")]
    AlreadyInitialized(String),

    /// The appliance is not initialised yet.
    #[error("not initialised: {0}; run `kmsctl init` (or `kmsctl quickstart`)")]
    NotInitialized(String),

    /// The policy file is invalid; whatever policy was running stays.
    #[error("policy {path}: line {line}, column {column}: {reason}")]
    Policy {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending item.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        reason: String,
    },

    /// The policy denies the request (its code says which rule).
    #[error("{0}")]
    Denied(policies::Denial),

    /// The request is not what the endpoint takes (JSON, fields, sizes).
    #[error("malformed request: {0}")]
    MalformedRequest(String),

    /// The request body is over the limit.
    #[error("request body over {limit} bytes")]
    BodyTooLarge {
        /// The limit, bytes.
        limit: usize,
    },

    /// The request took longer than allowed (a slow client).
    #[error("request not complete within {waited_ms} ms")]
    RequestTimeout {
        /// The limit.
        waited_ms: u64,
    },

    /// No such endpoint.
    #[error("no endpoint {0}")]
    NotFound(String),

    /// The endpoint exists but not with this method.
    #[error("method {0} not allowed here")]
    MethodNotAllowed(String),

    /// The body's content type is not one the endpoint takes.
    #[error("content type {0:?} not supported here")]
    UnsupportedMediaType(String),

    /// The client certificate was revoked while its connection was open.
    #[error("client certificate {serial_number} is revoked")]
    ClientRevoked {
        /// Its serial.
        serial_number: String,
    },

    /// A device already holds as many provisioning records as allowed.
    #[error("device {serial} already has {limit} provisioning records")]
    TooManyRecords {
        /// Module serial.
        serial: String,
        /// The limit.
        limit: usize,
    },

    /// No certificate of ours has this serial.
    #[error("no certificate with serial {0} was issued by this appliance")]
    CertificateNotFound(String),

    /// The certificate exists, but another of our CAs issued it than the
    /// request names.
    #[error("certificate {serial_number} was issued by the {issuer} CA, not the {asked} CA")]
    IssuerMismatch {
        /// The serial.
        serial_number: String,
        /// Its issuer.
        issuer: &'static str,
        /// What the request named.
        asked: String,
    },

    /// The CA's CRL cannot be made here (its key is not on this token).
    #[error("no CRL for the {0} CA on this appliance (its key is not on the token)")]
    CrlUnavailable(String),

    /// A firmware manifest field is invalid (product, version, digest).
    #[error("{0}")]
    Firmware(#[from] firmware::Error),

    /// No firmware signing key for this product.
    #[error(
        "no firmware signing key for product {0:?}: create one with kmsctl firmware key create"
    )]
    FirmwareProductUnknown(String),

    /// A security version lower than one already signed for the product.
    #[error(
        "security version {asked} of {product} is below {highest}, already signed (anti-rollback)"
    )]
    SecurityVersionRollback {
        /// Product.
        product: String,
        /// What was asked.
        asked: u32,
        /// The highest signed so far.
        highest: u32,
    },

    /// The version was signed before with another digest or security version.
    #[error("{product} {version} was already signed for another image or security version; a version is signed for one image only")]
    FirmwareVersionConflict {
        /// Product.
        product: String,
        /// Version.
        version: String,
    },

    /// No approval request with this id.
    #[error("no approval request {0}")]
    ApprovalNotFound(String),

    /// The approval request is past its time limit.
    #[error("approval request {id} expired at {at}")]
    ApprovalExpired {
        /// Its id.
        id: String,
        /// When it expired, RFC 3339.
        at: String,
    },

    /// The approval names another request content than the one stored.
    #[error("the hash given does not match approval request {0}: review the request again")]
    ApprovalHashMismatch(String),

    /// The approval request is already done or failed.
    #[error("approval request {id} is {state}, not pending")]
    ApprovalClosed {
        /// Its id.
        id: String,
        /// Its state.
        state: &'static str,
    },

    /// The device already has this secret; an officer must allow a rotation.
    #[error("{serial} already has its {purpose}; an officer must allow a rotation (kmsctl escrow allow-rotation)")]
    SecretAlreadyIssued {
        /// Module serial.
        serial: String,
        /// Purpose.
        purpose: String,
    },

    /// The device's profile names no such AES key.
    #[error("the {module_type} profile has no AES key {purpose:?} (aes_keys in the profile file)")]
    SecretPurposeUnknown {
        /// Module type.
        module_type: String,
        /// What was asked.
        purpose: String,
    },

    /// No escrowed secret for this device and purpose.
    #[error("nothing escrowed for {serial} {purpose}")]
    EscrowNotFound {
        /// Module serial.
        serial: String,
        /// Purpose.
        purpose: String,
    },

    /// Escrow refused or failed (purpose, wrapping, recipient key).
    #[error(transparent)]
    Escrow(#[from] escrow::Error),

    /// An M-of-N request opened by the local operator.
    #[error("a request that needs approvals must come from a named officer: use kmsctl --url with your officer credential")]
    NamedRequesterRequired,

    /// A backup archive is damaged: its SHA-256 does not match, it is
    /// truncated, or a line is not what the format says.
    #[error("backup archive damaged: {0}")]
    BackupCorrupt(String),

    /// A backup archive of a format version this `kmsctl` does not read.
    #[error(
        "backup archive format version {found} is not supported (this kmsctl reads version \
         {supported}); restore it with the kmsctl that made it or a newer one"
    )]
    BackupVersionUnsupported {
        /// The archive's version.
        found: u64,
        /// The version this build writes and reads.
        supported: u64,
    },

    /// A restore would write over an appliance's state.
    #[error(
        "{path} is not empty: restore writes only onto a fresh appliance (move it away, or \
         pass --replace-existing to have it renamed aside)"
    )]
    RestoreTargetNotEmpty {
        /// The store, audit or CA path that holds something.
        path: PathBuf,
    },

    /// The token does not hold the keys the backup was made with.
    #[error(
        "token {token:?} does not hold the keys of the backup: {problems}; bring the token \
         over with the HSM's own backup or cloning (for SoftHSM2, copy its token directory)"
    )]
    TokenManifestMismatch {
        /// Token label.
        token: String,
        /// What is missing or different, key by key.
        problems: String,
    },

    /// The backup's log ends before a checkpoint someone kept: restoring it
    /// would lose records.
    #[error(
        "backup is older than {witness}: it holds {backup} audit records, the checkpoint \
         covers {checkpoint}, so records {first_lost}..{checkpoint} would be lost; restore a \
         newer backup, or pass --accept-rollback to accept the loss (it is recorded)",
        first_lost = backup + 1
    )]
    BackupRolledBack {
        /// Whose checkpoint: the officers' file or the token's own.
        witness: String,
        /// Records in the backup.
        backup: u64,
        /// Records the checkpoint covers.
        checkpoint: u64,
    },

    /// The backup's log differs from a checkpoint someone kept: another
    /// history (a fork).
    #[error(
        "backup's audit log differs from {witness} at record {at}: another history (a fork); \
         pass --accept-rollback only if this backup is the history to keep (it is recorded)"
    )]
    BackupForked {
        /// Whose checkpoint.
        witness: String,
        /// The record where the histories differ (the checkpoint's size).
        at: u64,
    },

    /// A broken internal invariant; a bug, reported instead of panicking.
    #[error("internal error: {0}")]
    Unreachable(&'static str),
}

/// `map_err` helper: an I/O error on `path`.
pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

impl Error {
    /// The stable snake_case code used in API errors and audit records.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Config { .. } => "config_invalid",
            Error::PinSource { .. } => "pin_unavailable",
            Error::ModuleLoad { .. } | Error::TokenNotFound { .. } => "token_unavailable",
            Error::PinRejected { .. } => "token_pin_rejected",
            Error::TokenUnavailable { .. }
            | Error::PoolExhausted { .. }
            | Error::TokenTimeout { .. } => "token_unavailable",
            Error::KeyNotFound { .. } => "key_not_found",
            Error::WrongKeyType { .. } => "key_wrong_type",
            Error::KeyExists { .. } => "key_exists",
            Error::IntegrityCheckFailed { .. } => "integrity_check_failed",
            Error::InvalidInput(_) => "invalid_input",
            Error::TokenProtocol(_) | Error::Pkcs11 { .. } => "token_error",
            Error::Io { .. } => "storage_unavailable",
            Error::Ca(ca::Error::Signer(inner)) | Error::Ca(ca::Error::Random(inner)) => inner
                .downcast_ref::<Error>()
                .map_or("token_error", Error::code),
            // The journal is the audit log: a full disk says so.
            Error::Ca(ca::Error::Journal(inner)) => inner
                .downcast_ref::<audit::Error>()
                .map_or("audit_unavailable", audit::Error::code),
            Error::Ca(e) => e.code(),
            Error::Store(_) => "storage_unavailable",
            Error::Audit(e) => e.code(),
            Error::AlreadyInitialized(_) => "already_initialized",
            Error::NotInitialized(_) => "not_initialized",
            Error::Policy { .. } => "policy_invalid",
            Error::MalformedRequest(_) => "malformed_request",
            Error::BodyTooLarge { .. } => "body_too_large",
            Error::RequestTimeout { .. } => "request_timeout",
            Error::NotFound(_) => "not_found",
            Error::MethodNotAllowed(_) => "method_not_allowed",
            Error::UnsupportedMediaType(_) => "unsupported_media_type",
            Error::ClientRevoked { .. } => "client_revoked",
            Error::TooManyRecords { .. } => "too_many_records",
            Error::Denied(d) => d.code.as_str(),
            Error::CertificateNotFound(_) => "certificate_not_found",
            Error::IssuerMismatch { .. } => "issuer_mismatch",
            Error::CrlUnavailable(_) => "crl_unavailable",
            Error::Firmware(e) => e.code(),
            Error::FirmwareProductUnknown(_) => "firmware_product_unknown",
            Error::SecurityVersionRollback { .. } => "security_version_rollback",
            Error::FirmwareVersionConflict { .. } => "firmware_version_conflict",
            Error::ApprovalNotFound(_) => "approval_not_found",
            Error::ApprovalExpired { .. } => "approval_expired",
            Error::ApprovalHashMismatch(_) => "approval_hash_mismatch",
            Error::ApprovalClosed { .. } => "approval_closed",
            Error::SecretAlreadyIssued { purpose, .. } if purpose == "psk" => "psk_already_issued",
            Error::SecretAlreadyIssued { .. } => "secret_already_issued",
            Error::SecretPurposeUnknown { .. } => "secret_purpose_unknown",
            Error::NamedRequesterRequired => "named_requester_required",
            Error::EscrowNotFound { .. } => "escrow_not_found",
            Error::Escrow(e) => token_outage(e).map_or_else(|| e.code(), Error::code),
            Error::BackupCorrupt(_) => "backup_corrupt",
            Error::BackupVersionUnsupported { .. } => "backup_version_unsupported",
            Error::RestoreTargetNotEmpty { .. } => "restore_target_not_empty",
            Error::TokenManifestMismatch { .. } => "token_manifest_mismatch",
            Error::BackupRolledBack { .. } => "backup_rolled_back",
            Error::BackupForked { .. } => "backup_forked",
            Error::Unreachable(_) => "internal_error",
        }
    }

    /// The HTTP status for this error: the one place that decides it.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::InvalidInput(_) | Error::IntegrityCheckFailed { .. } => 400,
            Error::KeyNotFound { .. } => 404,
            Error::KeyExists { .. } | Error::WrongKeyType { .. } => 409,
            Error::ModuleLoad { .. }
            | Error::TokenNotFound { .. }
            | Error::PinRejected { .. }
            | Error::TokenUnavailable { .. }
            | Error::PoolExhausted { .. }
            | Error::TokenTimeout { .. }
            | Error::Io { .. } => 503,
            Error::Ca(ca::Error::Signer(inner)) | Error::Ca(ca::Error::Random(inner)) => inner
                .downcast_ref::<Error>()
                .map_or(500, Error::http_status),
            Error::Ca(e) => ca_status(e),
            Error::Store(_) => 503,
            Error::Audit(audit::Error::Encoding(_)) => 500,
            Error::Audit(_) => 503,
            Error::AlreadyInitialized(_) => 409,
            Error::NotInitialized(_) => 503,
            Error::Policy { .. } | Error::MalformedRequest(_) => 400,
            Error::BodyTooLarge { .. } => 413,
            Error::RequestTimeout { .. } => 408,
            Error::NotFound(_) => 404,
            Error::MethodNotAllowed(_) => 405,
            Error::UnsupportedMediaType(_) => 415,
            Error::ClientRevoked { .. } => 403,
            Error::TooManyRecords { .. } => 409,
            Error::CertificateNotFound(_) | Error::CrlUnavailable(_) => 404,
            Error::IssuerMismatch { .. } => 409,
            Error::Firmware(_) => 400,
            Error::FirmwareProductUnknown(_) | Error::ApprovalNotFound(_) => 404,
            Error::SecurityVersionRollback { .. }
            | Error::FirmwareVersionConflict { .. }
            | Error::ApprovalExpired { .. }
            | Error::ApprovalHashMismatch(_)
            | Error::ApprovalClosed { .. }
            | Error::SecretAlreadyIssued { .. } => 409,
            Error::SecretPurposeUnknown { .. } | Error::EscrowNotFound { .. } => 404,
            Error::NamedRequesterRequired => 403,
            Error::Escrow(e) if token_outage(e).is_some() => {
                token_outage(e).map_or(503, Error::http_status)
            }
            Error::Escrow(escrow::Error::Purpose(_) | escrow::Error::RecipientKey(_)) => 400,
            Error::Escrow(_) => 500,
            Error::BackupCorrupt(_) | Error::BackupVersionUnsupported { .. } => 400,
            Error::RestoreTargetNotEmpty { .. }
            | Error::TokenManifestMismatch { .. }
            | Error::BackupRolledBack { .. }
            | Error::BackupForked { .. } => 409,
            Error::Denied(d) => match d.code {
                policies::Code::QuotaExceeded => 429,
                policies::Code::MalformedSerial => 400,
                _ => 403,
            },
            Error::Config { .. }
            | Error::PinSource { .. }
            | Error::TokenProtocol(_)
            | Error::Pkcs11 { .. }
            | Error::Unreachable(_) => 500,
        }
    }
}

impl Error {
    /// When a refused request may be tried again (unix seconds), for the
    /// `Retry-After` header: set for `quota_exceeded`.
    pub fn retry_after(&self) -> Option<i64> {
        match self {
            Error::Denied(d) => d.retry_after,
            _ => None,
        }
    }
}

/// The token's own error behind an escrow key-wrapper failure when the
/// token was out of reach (unavailable after the retries, no free session,
/// too slow, PIN refused): the caller hears that, a 503 worth retrying, and
/// not `escrow_wrapper_failed`, which says the sealing itself went wrong.
fn token_outage(e: &escrow::Error) -> Option<&Error> {
    match e {
        escrow::Error::Wrapper(inner) => inner.downcast_ref::<Error>().filter(|t| {
            matches!(
                t,
                Error::TokenUnavailable { .. }
                    | Error::PoolExhausted { .. }
                    | Error::TokenTimeout { .. }
                    | Error::PinRejected { .. }
            )
        }),
        _ => None,
    }
}

/// HTTP status of a CA refusal: bad input 400, conflicts with stored state
/// 409, unknown device 404, our own faults 5xx.
fn ca_status(e: &ca::Error) -> u16 {
    use ca::Error as C;
    match e {
        C::DeviceAlreadyCertified { .. }
        | C::HwUuidInUse { .. }
        | C::HwUuidMismatch { .. }
        | C::PublicKeyInUse { .. } => 409,
        C::DeviceNotFound(_) => 404,
        C::CsrTooLarge { .. } => 413,
        C::Store(_) | C::IssuerExpired(_) | C::Signer(_) | C::Random(_) | C::Journal(_) => 503,
        C::ProfileViolation(_)
        | C::IssuedSignatureInvalid
        | C::ProfileConfig(_)
        | C::Issuer(_)
        | C::Encoding(_) => 500,
        _ => 400,
    }
}

/// `CKR_PIN_INCORRECT` rather than cryptoki's prose: the name an operator
/// can look up in the PKCS#11 specification or the HSM's manual.
pub fn rv_name(rv: &RvError) -> String {
    let mut out = String::from("CKR");
    for c in format!("{rv:?}").chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// `C_UnwrapKey` rather than `Function::UnwrapKey`.
pub fn fn_name(function: &Function) -> String {
    let debug = format!("{function:?}");
    format!("C_{}", debug.rsplit("::").next().unwrap_or(&debug))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkcs11_names_are_the_specification_names() {
        assert_eq!(rv_name(&RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(
            rv_name(&RvError::SessionHandleInvalid),
            "CKR_SESSION_HANDLE_INVALID"
        );
        assert_eq!(fn_name(&Function::UnwrapKey), "C_UnwrapKey");
    }

    /// Regression (softhsm-tests/tests/token_faults.rs): a PSK whose sealing
    /// met a token outage was answered 500 `escrow_wrapper_failed`.
    #[test]
    fn a_token_outage_while_sealing_is_token_unavailable_not_a_broken_seal() {
        let outage = Error::Escrow(escrow::Error::Wrapper(Box::new(Error::PoolExhausted {
            size: 1,
            waited_ms: 300,
        })));
        assert_eq!(
            (outage.code(), outage.http_status()),
            ("token_unavailable", 503)
        );
        let broken = Error::Escrow(escrow::Error::Wrapper(Box::new(
            Error::IntegrityCheckFailed {
                function: Function::Decrypt,
            },
        )));
        assert_eq!(
            (broken.code(), broken.http_status()),
            ("escrow_wrapper_failed", 500)
        );
        let mismatch = Error::Escrow(escrow::Error::SealVerify);
        assert_eq!(mismatch.code(), "escrow_wrapper_failed");
    }
}
