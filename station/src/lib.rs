//! Thin station-side client for vBus KMS.
//!
//! A provisioning station talks to the appliance over mutual TLS with its
//! station [`Credential`]: it relays device CSRs ([`Client::enroll`]),
//! reads device records ([`Client::device`]) and attaches provisioning
//! records ([`Client::record`]). For devices it provisioned it fetches the
//! one-time secrets the appliance mints and escrows: a PSK
//! ([`Client::psk`]), AES-256 device keys ([`Client::device_key`]) and, for
//! modules without a secure element, a key pair with its certificate
//! ([`Client::keypair`]); they are held in zeroizing buffers and written to
//! files reserved beforehand ([`ReservedFile`], [`KeypairFiles`]).
//! [`init_station`] makes the station's own key and CSR; [`batch`] enrols a
//! CSV of devices concurrently and resumably. [`provision`] runs one
//! device's whole provisioning over a [`device::DeviceLink`] (a PKCS#11
//! token or a [`serial`] line); [`provision_batch`] runs it on several
//! devices at once.
//!
//! It depends on none of the server crates: the wire shapes it needs are
//! declared here.

#![forbid(unsafe_code)]

pub mod batch;
mod client;
mod credential;
mod csr;
pub mod device;
mod error;
mod fsutil;
mod init;
mod output;
pub mod provision;
pub mod provision_batch;
mod record;
pub mod serial;

pub use batch::write_certificate;
pub use client::{
    parse_error, Client, Enrolled, Keypair, Timeouts, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_TIMEOUT, SECRET_LEN,
};
pub use credential::Credential;
pub use error::{Error, Result};
pub use init::{init_station, CSR_FILE, KEY_FILE};
pub use output::{
    secret_hex_line, KeypairFiles, ReservedFile, KEYPAIR_CERT_FILE, KEYPAIR_CHAIN_FILE,
    KEYPAIR_KEY_FILE, PUBLIC_MODE, SECRET_MODE,
};
pub use record::{ComponentLot, ProvisioningRecord, Step};
