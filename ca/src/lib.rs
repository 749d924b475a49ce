//! X.509 for vBus KMS: CSR checks, certificate profiles, issuance, serials,
//! the CA hierarchy.
//!
//! This crate is pure: it knows nothing of PKCS#11 or HTTP. What it needs
//! from the outside it takes as parameters: the [`Signer`] (a key that never
//! leaves the token, in the appliance), the [`Random`] source (the token
//! RNG), the [`Clock`] and the [`store::Store`]. Unit tests give it software
//! implementations.

#![forbid(unsafe_code)]

mod build;
mod check;
mod crl;
mod csr;
mod error;
pub mod est;
mod ident;
mod issue;
mod ocsp;
mod oids;
mod profile;
mod reason;
mod records;
mod signer;
#[cfg(feature = "testing")]
pub mod testing;

pub use build::{
    ca_params, client_params, issuer_params, key_identifier, server_params, Basics, CaRole,
    HardwareModuleName, SubjectKey, Urls,
};
pub use crl::{crl_entry, CrlEntries, CrlIssuer};
pub use csr::{
    check as check_csr, check_client as check_client_csr, directory_string,
    key_type as csr_key_type, CheckedCsr, MAX_CSR_BYTES,
};
pub use error::{Error, Result};
pub use ident::{HwUuid, ModuleSerial, ModuleType};
pub use issue::{
    Ca, CaSettings, Clock, IssueRequest, Issued, Journal, Random, SystemClock, BACKDATE,
    DEFAULT_HW_TYPE, SERIAL_BYTES,
};
pub use ocsp::{
    ocsp_error_response, parse_ocsp_request, OcspCertId, OcspErrorStatus, OcspHash,
    OcspRequestInfo, OcspResponder, OcspStatus, MAX_OCSP_REQUEST_ENTRIES,
};
pub use profile::{EkuName, KeyType, KeyUsageName, Profile, Profiles, DEFAULT_PROFILES};
pub use reason::RevocationReason;
pub use records::{CertificateRecord, DeviceRecord};
pub use signer::{
    verify_signature, PreSignCheck, RcgenSigner, SignatureAlgorithm, Signer, SignerError,
};
