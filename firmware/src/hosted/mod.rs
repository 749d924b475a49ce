//! The `std` part: the JSON form, PEM/SPKI public keys, streaming image
//! digests, and `std::error::Error`. A bootloader build leaves it out.

mod digest;
mod json;
mod pem;

pub use digest::digest_reader;
pub use json::ManifestJson;

impl std::error::Error for crate::Error {}
