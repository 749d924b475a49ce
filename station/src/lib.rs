//! Thin station-side client for vBus KMS.
//!
//! It depends on none of the server crates. The mTLS client, the `station`
//! CLI and device injection arrive with the service and station issues.

#![forbid(unsafe_code)]
