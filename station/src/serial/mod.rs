//! Devices on a serial line: the vBus device protocol and
//! [`SerialDevice`], a [`DeviceLink`](crate::device::DeviceLink) over a tty
//! (a module's debug UART, or the pseudo-terminal of `vbus-devsim`).
//!
//! # The vBus serial device protocol, version 1
//!
//! The station is the only initiator: it sends one request and waits for its
//! reply before sending the next. The device never speaks unasked.
//!
//! ## Line
//!
//! 8 data bits, no parity, 1 stop bit, no flow control, raw mode;
//! 115200 baud unless configured otherwise (a pseudo-terminal ignores the
//! speed). The station opens the tty with `O_NOCTTY`, takes an advisory
//! exclusive `flock` on it (a second station on the same device is refused)
//! and discards whatever was waiting in the input queue.
//!
//! ## Frames
//!
//! Every packet travels COBS-encoded (Consistent Overhead Byte Stuffing)
//! between two `0x00` delimiters: `00 <COBS(packet)> 00`. COBS removes every
//! zero byte from the packet, so `0x00` only ever marks frame boundaries. A
//! receiver treats whatever precedes a delimiter as one frame candidate;
//! back-to-back delimiters (an empty candidate) are ignored. The leading
//! delimiter makes the receiver drop any partial garbage left on the line,
//! so a receiver resynchronises at the next frame whatever happened before.
//!
//! A decoded packet is at most [`MAX_PACKET`](codec::MAX_PACKET) = 8192
//! bytes (so an encoded frame is at most 8225 bytes between its
//! delimiters); a receiver discards a longer candidate as it arrives, without
//! buffering it, and reports it as `TOO_LARGE`.
//!
//! ## Packets
//!
//! ```text
//! offset  size  field
//! 0       1     version = 0x01
//! 1       1     kind: a command code (request), 0x80 OK, 0x81 ERROR (reply)
//! 2       4     request id, big-endian
//! 6       n     fields: tag (1) | length (2, big-endian) | value (length)
//! 6+n     4     CRC-32 (IEEE: reflected 0xEDB88320, init and xorout
//!               0xFFFFFFFF) of bytes 0..6+n, big-endian
//! ```
//!
//! The fields must fill the space before the CRC exactly. A receiver checks,
//! in order: length ≥ 10 (else `BAD_FRAME`), the CRC (`BAD_CRC`), the
//! version (`UNSUPPORTED_VERSION`), the fields (`BAD_FRAME`). Unknown field
//! tags are ignored; a field a request needs that is missing or repeated is
//! `BAD_REQUEST`.
//!
//! Field tags: `0x01` UID, `0x02` PUBKEY (SubjectPublicKeyInfo DER),
//! `0x03` MESSAGE, `0x04` SIGNATURE (ECDSA, DER), `0x05` CERT (DER,
//! repeatable), `0x06` NAME (UTF-8), `0x07` SECRET, `0x08` LOCKED (one byte,
//! 0 or 1), `0x09` ERROR_CODE (u16 big-endian), `0x0A` ERROR_MESSAGE (UTF-8,
//! ≤ 200 bytes, never containing a secret).
//!
//! ## Requests and replies
//!
//! | code | request | request fields | OK reply fields | error codes |
//! | --- | --- | --- | --- | --- |
//! | `0x01` | GET_UID | – | UID (8–32 bytes) | – |
//! | `0x02` | STATUS | – | PUBKEY?, CERT? (the device certificate only), NAME* (one per stored secret), LOCKED | – |
//! | `0x03` | GEN_KEY | – | PUBKEY | KEY_EXISTS, LOCKED |
//! | `0x04` | GET_PUBKEY | – | PUBKEY | NO_KEY |
//! | `0x05` | SIGN | MESSAGE | SIGNATURE: ECDSA P-256 with SHA-256 over MESSAGE | NO_KEY |
//! | `0x06` | PUT_CERT | CERT+ (the device certificate, then the chain, issuer first) | – | NO_KEY, CERT_MISMATCH, LOCKED, STORAGE_FULL |
//! | `0x07` | PUT_SECRET | NAME (1–64 of `[A-Za-z0-9._-]`), SECRET (1–1024 bytes) | – | LOCKED, STORAGE_FULL, TOO_LARGE |
//! | `0x08` | LOCK | – | – | – |
//!
//! Writes (GEN_KEY, PUT_CERT, PUT_SECRET) are refused with `LOCKED` once the
//! device is locked; reading and SIGN still work, and LOCK again is OK.
//! PUT_CERT and PUT_SECRET replace what they wrote before (until LOCK), so a
//! station that lost a reply may repeat them. A secret is never readable
//! back: STATUS lists secret names only. The private key never leaves the
//! device.
//!
//! A reply carries the id of its request. An ERROR reply has ERROR_CODE and
//! ERROR_MESSAGE:
//!
//! | code | name | meaning |
//! | --- | --- | --- |
//! | 1 | BAD_FRAME | not valid COBS, shorter than 10 bytes, or fields that do not parse |
//! | 2 | BAD_CRC | CRC mismatch: corrupted on the line |
//! | 3 | UNKNOWN_COMMAND | the kind is not a command |
//! | 4 | BAD_REQUEST | a field missing, repeated or malformed |
//! | 5 | KEY_EXISTS | GEN_KEY on a device that has a key |
//! | 6 | NO_KEY | the operation needs the key, and there is none |
//! | 7 | LOCKED | a write after LOCK |
//! | 8 | TOO_LARGE | a frame or a field over its limit |
//! | 9 | CERT_MISMATCH | the certificate's public key is not the device key |
//! | 10 | UNSUPPORTED_VERSION | a version byte other than 1 |
//! | 11 | STORAGE_FULL | no room for another secret or a longer chain |
//! | 12 | INTERNAL | the device failed (e.g. could not persist) |
//!
//! A request the device could not read (BAD_FRAME, BAD_CRC, TOO_LARGE,
//! UNSUPPORTED_VERSION) is answered with request id 0, since its id cannot
//! be trusted.
//!
//! ## Retries, timeouts and repeated requests
//!
//! The station waits for each reply for a timeout (default 2 s; 10 s for
//! GEN_KEY and SIGN, which are slow on a small MCU). It sends the *same
//! frame with the same request id* again, at most `retries` times (default
//! 3), when: the reply does not come in time; a frame arrives that fails its
//! checks (a corrupted reply); or the device answers BAD_CRC / BAD_FRAME
//! with id 0 (our request was corrupted). Replies with another id are stale
//! and ignored. When the attempts are spent the request fails with a
//! timeout or link error: the total wait is bounded by
//! `timeout × (retries + 1)`.
//!
//! A device remembers the last request it carried out (a digest of the whole
//! packet, so a different request reusing an id is not confused with it)
//! and its reply: the same request again is answered with the remembered
//! reply *without doing it again*. So a retransmitted GEN_KEY whose reply was
//! lost returns the key it generated instead of KEY_EXISTS, and nothing is
//! done twice. Request ids are chosen at random per session and increment
//! (skipping 0), so two sessions do not collide.
//!
//! A device commits a write (key, certificate, secret, lock) to its storage
//! before it answers; after a power cut the station re-reads STATUS and
//! resumes.

pub mod codec;
mod link;

pub use link::{SerialDevice, SerialOptions};
