//! vBus firmware manifests: the signed binary layout, its decoding, and the
//! check a bootloader or a station makes before it runs or flashes an image.
//!
//! The appliance signs a [`Manifest`] with a manufacturer key that never
//! leaves the token. The signature covers the whole manifest (product,
//! version, security version, digest, key id, signing time), not only the
//! image digest. A device accepts an image when [`verify_image`] succeeds:
//! the manifest decodes strictly, names the key it is given, carries a valid
//! signature by it, names the image's digest, and has a security version at
//! least the device's stored minimum (anti-rollback).
//!
//! # Binary layout, version 1
//!
//! Integers are big-endian. A signed manifest is the signed bytes
//! ([`Manifest::to_be_signed`]) followed by the 64-byte signature, and
//! nothing after it.
//!
//! | offset | size | field                                                          |
//! |--------|------|----------------------------------------------------------------|
//! | 0      | 4    | magic `"VBFW"`                                                 |
//! | 4      | 1    | layout version = 1                                             |
//! | 5      | 1    | signature algorithm (1 Ed25519, 2 ECDSA P-256 SHA-256)         |
//! | 6      | 1    | digest algorithm (1 SHA-256, 2 SHA-512)                        |
//! | 7      | 1    | reserved = 0                                                   |
//! | 8      | 4    | security version (u32 BE)                                      |
//! | 12     | 8    | signing time (u64 BE, unix seconds UTC)                        |
//! | 20     | 32   | key id (SHA-256 of the raw public key)                         |
//! | 52     | 1    | digest length (32 or 64, must match the algorithm)             |
//! | 53     | n    | digest                                                         |
//! | ..     | 1    | product length (1..=64), then product bytes                    |
//! | ..     | 1    | version length (1..=64), then version bytes                    |
//! |        |      | *end of the signed bytes ([`Manifest::to_be_signed`])*         |
//! | ..     | 64   | signature (Ed25519: R‖S; P-256: r‖s, 32 bytes each, big-endian) |
//!
//! * The signature is over the signed bytes themselves: Ed25519 is pure
//!   Ed25519 (RFC 8032) of those bytes; ECDSA P-256 signs SHA-256 of those
//!   bytes (what PKCS#11 `CKM_ECDSA_SHA256` does, or `CKM_ECDSA` over the
//!   SHA-256 digest), and the signature is the raw `r‖s`, not DER.
//! * The key id is SHA-256 of the raw public key: the 32-byte Ed25519 key,
//!   or the 65-byte uncompressed SEC1 point (`04‖X‖Y`) of a P-256 key
//!   ([`key_id`]).
//! * The product is 1–64 bytes of `[A-Za-z0-9._-]`; the version is 1–64
//!   bytes of printable ASCII without space (0x21–0x7e).
//! * Decoding is strict ([`decode`]): wrong magic, layout version or
//!   reserved byte, an unknown algorithm number, a digest length that does
//!   not match the algorithm, invalid names, a short signature and any
//!   trailing byte are all refused. Every accepted byte string is therefore
//!   the one encoding of its manifest: `decode(b)?.encode()? == b`.
//!
//! # A bootloader's check
//!
//! ```
//! use firmware::{decode, verify_image, Error, PublicKey, SignatureAlgorithm};
//!
//! /// Checks `image` against `manifest`; on success the caller runs the
//! /// image and stores the returned security version as the new minimum.
//! fn accept(manifest: &[u8], image: &[u8], key: &[u8], stored_min: u32) -> Result<u32, Error> {
//!     let key = PublicKey::from_raw(SignatureAlgorithm::Ed25519, key)?;
//!     // The digest algorithm is read before the signature is checked;
//!     // verify_image then checks everything, that algorithm included.
//!     let digest = decode(manifest)?.manifest.digest_algorithm.digest(image);
//!     Ok(verify_image(manifest, &digest, &key, stored_min)?.manifest.security_version)
//! }
//! # let _ = accept;
//! ```
//!
//! # `no_std`
//!
//! The layout, [`decode`], [`PublicKey::from_raw`], [`verify`] and
//! [`verify_image`] use only `core` and `alloc` (plus `ed25519-dalek`,
//! `p256` and `sha2` without their default features): a bootloader builds
//! this crate with `default-features = false`. The `std` feature (on by
//! default) adds the JSON form (`ManifestJson`), PEM/SPKI public keys
//! (`PublicKey::from_pem`, `from_spki_der`, `to_pem`), streaming image
//! digests (`digest_reader`) and `std::error::Error` for [`Error`].
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod error;
mod key;
mod manifest;
mod verify;

#[cfg(feature = "std")]
mod hosted;

pub use error::Error;
pub use key::{key_id, PublicKey};
pub use manifest::{
    decode, DigestAlgorithm, Manifest, SignatureAlgorithm, SignedManifest, KEY_ID_LEN,
    LAYOUT_VERSION, MAGIC, MAX_NAME, SIGNATURE_LEN,
};
pub use verify::{verify, verify_image, verify_message};

#[cfg(feature = "std")]
pub use hosted::{digest_reader, ManifestJson};
