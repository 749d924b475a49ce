//! vBus KMS appliance library: PKCS#11 token access, configuration and the
//! HTTP service. The binaries `kmsd` and `kmsctl` are thin layers over it.
//!
//! This is the only crate that links `cryptoki` and `axum`; the pure crates
//! (`ca`, `audit`, `escrow`, `policies`) reach the token through the traits
//! implemented in [`token`].

#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod appliance;
pub mod approvals;
pub mod auditing;
pub mod backup;
pub mod ceremony;
pub mod config;
pub mod credentials;
pub mod error;
pub mod firmware;
pub mod http;
pub mod metrics;
pub mod pin;
pub mod policy;
pub mod quickstart;
pub mod revocation;
pub mod secrets;
pub mod server;
pub mod storage;
pub mod token;

pub use error::{Error, Result};
