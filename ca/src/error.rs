//! The one error type of the `ca` crate. Each refusal has its own stable
//! code ([`Error::code`]); the appliance maps codes to HTTP status.

use crate::signer::SignerError;

/// Result alias for the `ca` crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything issuance can refuse or fail on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The CSR is larger than the limit.
    #[error("CSR of {size} bytes exceeds the {limit}-byte limit")]
    CsrTooLarge {
        /// Bytes received.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The CSR is not a strict-DER PKCS#10 request (or PEM of one).
    #[error("CSR is not a valid PKCS#10 request: {0}")]
    CsrMalformed(String),
    /// The CSR is signed with MD5 or SHA-1.
    #[error("CSR signature algorithm {0} is too weak (MD5 and SHA-1 are refused)")]
    CsrSignatureAlgorithmWeak(String),
    /// The CSR is signed with an algorithm we do not accept.
    #[error("CSR signature algorithm {0} is not supported")]
    CsrSignatureAlgorithmUnsupported(String),
    /// The CSR's self-signature does not verify: no proof of possession.
    #[error("CSR signature does not verify with its own public key (no proof of possession)")]
    CsrSignatureInvalid,
    /// The key type is not one the profile allows (or not one we know).
    #[error(
        "public key type {found} is not allowed by the {profile} profile (allowed: {allowed})"
    )]
    KeyTypeNotAllowed {
        /// What the CSR holds.
        found: String,
        /// Profile name.
        profile: String,
        /// What the profile allows.
        allowed: String,
    },
    /// An RSA key shorter than 2048 bits.
    #[error("RSA key of {bits} bits is too weak (2048 or 3072 required)")]
    KeyTooWeak {
        /// Modulus length.
        bits: usize,
    },
    /// The key does not decode or its point is not on the curve.
    #[error("public key is invalid: {0}")]
    KeyInvalid(String),
    /// The CSR asks for a CA certificate.
    #[error("CSR asks for basicConstraints CA:true; device certificates are never CAs")]
    CsrRequestsCa,
    /// The CSR asks for key usages the profile does not give.
    #[error("CSR asks for key usage {0}; the profile decides key usage")]
    CsrKeyUsageNotAllowed(String),
    /// The CSR asks for extended key usages the profile does not give.
    #[error("CSR asks for extended key usage {0}; the profile decides extended key usage")]
    CsrEkuNotAllowed(String),
    /// The CSR asks for name constraints.
    #[error("CSR asks for name constraints; device certificates carry none")]
    CsrNameConstraints,
    /// The CSR asks for subject alternative names other than the device's own.
    #[error(
        "CSR asks for subject alternative name {0}; only the device's own identity is certified"
    )]
    CsrExtraSan(String),
    /// The CSR carries a critical extension we do not know.
    #[error("CSR carries unknown critical extension {0}")]
    CsrUnknownCriticalExtension(String),
    /// The CSR carries the same extension twice.
    #[error("CSR carries extension {0} more than once")]
    CsrDuplicateExtension(String),
    /// The CSR subject names another device.
    #[error("CSR subject {field} is {found:?}, but the request is for {expected:?}")]
    CsrSubjectMismatch {
        /// `CN` or `serialNumber`.
        field: &'static str,
        /// In the CSR.
        found: String,
        /// The module serial of the request.
        expected: String,
    },
    /// The module serial does not have the `VBUS-{TYPE}-YYMM-NNNNNN` form.
    #[error(
        "module serial {0:?} is not VBUS-{{CPU|PWR|PERIPH|COMM}}-YYMM-NNNNNN with month 01-12"
    )]
    InvalidModuleSerial(String),
    /// The module serial's manufacturing month is in the future.
    #[error("module serial {0:?} names a manufacturing month in the future")]
    ModuleSerialInFuture(String),
    /// No profile for the module type.
    #[error("no certificate profile for module type {0}")]
    ProfileNotFound(String),
    /// The hardware UUID is not an RFC 9562 UUID.
    #[error(
        "hardware UUID {0:?} is not an RFC 9562 UUID (8-4-4-4-12 hex, version 1-8, variant 10)"
    )]
    InvalidHwUuid(String),
    /// The hardware UUID belongs to another module.
    #[error("hardware UUID {uuid} already belongs to module {owner}")]
    HwUuidInUse {
        /// The UUID.
        uuid: String,
        /// The module it belongs to.
        owner: String,
    },
    /// The module is recorded with another hardware UUID.
    #[error("module {serial} is recorded with hardware UUID {recorded}, not {given}")]
    HwUuidMismatch {
        /// Module serial.
        serial: String,
        /// The UUID on record.
        recorded: String,
        /// The UUID in the request.
        given: String,
    },
    /// The public key is already certified for another module.
    #[error("this public key is already certified for module {owner}")]
    PublicKeyInUse {
        /// The module it belongs to.
        owner: String,
    },
    /// The device has a certificate for another key and no re-issue was allowed.
    #[error(
        "module {serial} already has certificate {certificate} for another key; an officer must allow a \
         re-issue (kmsctl device allow-reissue {serial})"
    )]
    DeviceAlreadyCertified {
        /// Module serial.
        serial: String,
        /// Its current certificate serial.
        certificate: String,
    },
    /// The module is not known.
    #[error("no device {0} in the store")]
    DeviceNotFound(String),
    /// The to-be-signed certificate differs from the profile: a bug, caught
    /// before anything was signed.
    #[error("to-be-signed certificate violates the profile: {0}")]
    ProfileViolation(String),
    /// The signature the token returned does not verify with the issuer key.
    #[error("the issuing key returned a signature that does not verify; nothing was stored")]
    IssuedSignatureInvalid,
    /// The issuing CA certificate has expired.
    #[error("issuing CA certificate expired at {0}")]
    IssuerExpired(String),
    /// The profile file is invalid.
    #[error("certificate profiles: {0}")]
    ProfileConfig(String),
    /// The CA certificate handed to us cannot serve as issuer.
    #[error("issuer certificate: {0}")]
    Issuer(String),
    /// The signer (the token) failed.
    #[error("signing failed: {0}")]
    Signer(#[source] SignerError),
    /// The random source failed.
    #[error("random source failed: {0}")]
    Random(#[source] SignerError),
    /// The journal (audit log) could not record the issuance; nothing was stored.
    #[error("could not record the issuance: {0}")]
    Journal(#[source] SignerError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Certificate encoding failed (a bug).
    #[error("certificate encoding failed: {0}")]
    Encoding(String),
    /// Not an RFC 5280 revocation reason we offer.
    #[error("{0}")]
    RevocationReasonInvalid(String),
    /// An OCSP request that does not parse or asks too much (answered with
    /// the OCSP `malformedRequest` status, not JSON).
    #[error("OCSP request: {0}")]
    OcspMalformed(String),
}

impl Error {
    /// The stable snake_case code for API errors and audit records.
    pub fn code(&self) -> &'static str {
        match self {
            Error::CsrTooLarge { .. } => "csr_too_large",
            Error::CsrMalformed(_) => "csr_malformed",
            Error::CsrSignatureAlgorithmWeak(_) => "csr_signature_algorithm_weak",
            Error::CsrSignatureAlgorithmUnsupported(_) => "csr_signature_algorithm_unsupported",
            Error::CsrSignatureInvalid => "csr_signature_invalid",
            Error::KeyTypeNotAllowed { .. } => "key_type_not_allowed",
            Error::KeyTooWeak { .. } => "key_too_weak",
            Error::KeyInvalid(_) => "key_invalid",
            Error::CsrRequestsCa => "csr_requests_ca",
            Error::CsrKeyUsageNotAllowed(_) => "csr_key_usage_not_allowed",
            Error::CsrEkuNotAllowed(_) => "csr_eku_not_allowed",
            Error::CsrNameConstraints => "csr_name_constraints",
            Error::CsrExtraSan(_) => "csr_extra_san",
            Error::CsrUnknownCriticalExtension(_) => "csr_unknown_critical_extension",
            Error::CsrDuplicateExtension(_) => "csr_duplicate_extension",
            Error::CsrSubjectMismatch { .. } => "csr_subject_mismatch",
            Error::InvalidModuleSerial(_) => "invalid_module_serial",
            Error::ModuleSerialInFuture(_) => "module_serial_in_future",
            Error::ProfileNotFound(_) => "profile_not_found",
            Error::InvalidHwUuid(_) => "invalid_hw_uuid",
            Error::HwUuidInUse { .. } => "hw_uuid_in_use",
            Error::HwUuidMismatch { .. } => "hw_uuid_mismatch",
            Error::PublicKeyInUse { .. } => "public_key_in_use",
            Error::DeviceAlreadyCertified { .. } => "device_already_certified",
            Error::DeviceNotFound(_) => "device_not_found",
            Error::ProfileViolation(_) => "profile_violation",
            Error::IssuedSignatureInvalid => "issued_signature_invalid",
            Error::IssuerExpired(_) => "issuer_expired",
            Error::ProfileConfig(_) => "config_invalid",
            Error::Issuer(_) => "issuer_invalid",
            Error::Signer(_) => "signer_failed",
            Error::Random(_) => "random_failed",
            Error::Journal(_) => "audit_unavailable",
            Error::Store(_) => "storage_unavailable",
            Error::Encoding(_) => "internal_error",
            Error::RevocationReasonInvalid(_) => "revocation_reason_invalid",
            Error::OcspMalformed(_) => "ocsp_malformed_request",
        }
    }
}
