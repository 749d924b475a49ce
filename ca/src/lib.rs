//! X.509 for vBus KMS: CSR checks, certificate profiles, issuance, serials,
//! CRL and OCSP.
//!
//! This crate is pure: it knows nothing of PKCS#11 or HTTP. What it needs
//! from the outside it takes through small traits. Today that is the
//! [`Signer`], the key that signs a to-be-signed certificate or CRL. The
//! appliance (`kms`) implements it on a key that never leaves the token; unit
//! tests implement it in software.
//!
//! Issuance, profiles and the certificate store arrive with the CA issue.

#![forbid(unsafe_code)]

mod signer;

pub use signer::{RcgenSigner, SignatureAlgorithm, Signer, SignerError};
