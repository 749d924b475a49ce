//! Thin station-side client for vBus KMS.
//!
//! A provisioning station talks to the appliance over mutual TLS with its
//! station [`Credential`]: it relays device CSRs ([`Client::enroll`]),
//! reads device records ([`Client::device`]) and attaches provisioning
//! records ([`Client::record`]). [`init_station`] makes the station's own
//! key and CSR; [`batch`] enrols a CSV of devices concurrently and
//! resumably.
//!
//! It depends on none of the server crates: the wire shapes it needs are
//! declared here.

#![forbid(unsafe_code)]

pub mod batch;
mod client;
mod credential;
mod error;
mod fsutil;
mod init;
mod record;

pub use batch::write_certificate;
pub use client::{
    parse_error, Client, Enrolled, Timeouts, DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT,
};
pub use credential::Credential;
pub use error::{Error, Result};
pub use init::{init_station, CSR_FILE, KEY_FILE};
pub use record::{ComponentLot, ProvisioningRecord, Step};
