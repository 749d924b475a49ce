//! The wire format of the serial device protocol: packets, their TLV
//! fields, the CRC-32 and the COBS framing (see the [module
//! documentation](super) for the specification).
//!
//! Everything here is pure and allocation-bounded: nothing read from the
//! line can make the decoder hold more than [`MAX_ENCODED`] bytes, and no
//! input makes it panic.

use std::fmt;

use zeroize::Zeroizing;

/// Protocol version carried in every packet.
pub const VERSION: u8 = 1;
/// Frame delimiter on the wire (COBS guarantees it appears nowhere else).
pub const DELIMITER: u8 = 0x00;
/// Largest decoded packet (header, fields and CRC) either side accepts.
pub const MAX_PACKET: usize = 8192;
/// Largest COBS-encoded frame, delimiters excluded.
pub const MAX_ENCODED: usize = MAX_PACKET + MAX_PACKET / 254 + 1;
/// Header: version (1), kind (1), request id (4).
const HEADER_LEN: usize = 6;
/// Trailer: CRC-32 (4).
const CRC_LEN: usize = 4;
/// Shortest well-formed packet: a header and a CRC, no field.
pub const MIN_PACKET: usize = HEADER_LEN + CRC_LEN;

/// Packet kind of a successful reply.
pub const KIND_OK: u8 = 0x80;
/// Packet kind of an error reply.
pub const KIND_ERROR: u8 = 0x81;

/// Request commands (the packet kind of a request).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Command {
    /// Read the MCU unique ID.
    GetUid = 0x01,
    /// Read what the device holds.
    Status = 0x02,
    /// Generate the device's P-256 key pair.
    GenKey = 0x03,
    /// Read the public key.
    GetPubkey = 0x04,
    /// Sign a message with the device key.
    Sign = 0x05,
    /// Write the certificate and its chain.
    PutCert = 0x06,
    /// Write a named secret.
    PutSecret = 0x07,
    /// Lock the device down.
    Lock = 0x08,
}

impl Command {
    /// Every command, in code order.
    pub const ALL: [Command; 8] = [
        Command::GetUid,
        Command::Status,
        Command::GenKey,
        Command::GetPubkey,
        Command::Sign,
        Command::PutCert,
        Command::PutSecret,
        Command::Lock,
    ];

    /// The command with this code, if any.
    pub fn from_code(code: u8) -> Option<Command> {
        Command::ALL.into_iter().find(|c| *c as u8 == code)
    }

    /// The name used in the specification and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Command::GetUid => "GET_UID",
            Command::Status => "STATUS",
            Command::GenKey => "GEN_KEY",
            Command::GetPubkey => "GET_PUBKEY",
            Command::Sign => "SIGN",
            Command::PutCert => "PUT_CERT",
            Command::PutSecret => "PUT_SECRET",
            Command::Lock => "LOCK",
        }
    }
}

/// Field tags.
pub mod tag {
    /// MCU unique ID (GET_UID reply).
    pub const UID: u8 = 0x01;
    /// SubjectPublicKeyInfo, DER (GEN_KEY, GET_PUBKEY, STATUS replies).
    pub const PUBKEY: u8 = 0x02;
    /// Message to sign (SIGN request).
    pub const MESSAGE: u8 = 0x03;
    /// ECDSA signature, DER (SIGN reply).
    pub const SIGNATURE: u8 = 0x04;
    /// Certificate, DER; repeated: the device certificate first, then the
    /// chain, issuer first (PUT_CERT request); STATUS carries only the first.
    pub const CERT: u8 = 0x05;
    /// Secret name, UTF-8 (PUT_SECRET request; repeated in STATUS reply).
    pub const NAME: u8 = 0x06;
    /// Secret value (PUT_SECRET request only; never in a reply).
    pub const SECRET: u8 = 0x07;
    /// Lock state, one byte 0 or 1 (STATUS reply).
    pub const LOCKED: u8 = 0x08;
    /// Error code, u16 big-endian (ERROR reply).
    pub const ERROR_CODE: u8 = 0x09;
    /// Error message, UTF-8, at most 200 bytes (ERROR reply).
    pub const ERROR_MESSAGE: u8 = 0x0A;
}

/// Error codes of an ERROR reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame is not valid COBS, is shorter than a header and CRC, or
    /// its fields do not parse.
    BadFrame = 1,
    /// The CRC does not match: the frame was corrupted on the line.
    BadCrc = 2,
    /// The packet kind is not a known command.
    UnknownCommand = 3,
    /// A required field is missing, repeated or malformed.
    BadRequest = 4,
    /// GEN_KEY: the device already has a key.
    KeyExists = 5,
    /// The operation needs a key and there is none.
    NoKey = 6,
    /// The device is locked: writes are refused.
    Locked = 7,
    /// The frame or a field exceeds a limit.
    TooLarge = 8,
    /// PUT_CERT: the certificate's public key is not the device key.
    CertMismatch = 9,
    /// The protocol version is not supported.
    UnsupportedVersion = 10,
    /// No room left for another secret or certificate.
    StorageFull = 11,
    /// The device failed internally (e.g. could not persist).
    Internal = 12,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::BadFrame,
        ErrorCode::BadCrc,
        ErrorCode::UnknownCommand,
        ErrorCode::BadRequest,
        ErrorCode::KeyExists,
        ErrorCode::NoKey,
        ErrorCode::Locked,
        ErrorCode::TooLarge,
        ErrorCode::CertMismatch,
        ErrorCode::UnsupportedVersion,
        ErrorCode::StorageFull,
        ErrorCode::Internal,
    ];

    /// The code with this number, if any.
    pub fn from_u16(code: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| *c as u16 == code)
    }

    /// The name used in the specification and in messages.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "BAD_FRAME",
            ErrorCode::BadCrc => "BAD_CRC",
            ErrorCode::UnknownCommand => "UNKNOWN_COMMAND",
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::KeyExists => "KEY_EXISTS",
            ErrorCode::NoKey => "NO_KEY",
            ErrorCode::Locked => "LOCKED",
            ErrorCode::TooLarge => "TOO_LARGE",
            ErrorCode::CertMismatch => "CERT_MISMATCH",
            ErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
            ErrorCode::StorageFull => "STORAGE_FULL",
            ErrorCode::Internal => "INTERNAL",
        }
    }
}

/// Why a frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not valid COBS, too short, or fields that do not parse.
    #[error("malformed frame")]
    BadFrame,
    /// CRC mismatch.
    #[error("CRC mismatch")]
    BadCrc,
    /// Longer than [`MAX_ENCODED`] / [`MAX_PACKET`].
    #[error("frame too large")]
    TooLarge,
    /// A version other than [`VERSION`].
    #[error("unsupported protocol version")]
    UnsupportedVersion,
}

impl FrameError {
    /// The error code a device answers a dropped request with.
    pub fn code(self) -> ErrorCode {
        match self {
            FrameError::BadFrame => ErrorCode::BadFrame,
            FrameError::BadCrc => ErrorCode::BadCrc,
            FrameError::TooLarge => ErrorCode::TooLarge,
            FrameError::UnsupportedVersion => ErrorCode::UnsupportedVersion,
        }
    }
}

/// CRC-32 (IEEE 802.3: reflected polynomial 0xEDB88320, initial value and
/// final XOR 0xFFFFFFFF; the check value of `"123456789"` is 0xCBF43926).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// COBS-encodes `data` (no delimiter added).
pub fn cobs_encode(data: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(data.len() + data.len() / 254 + 2));
    let mut code_at = out.len();
    out.push(0);
    let mut code: u8 = 1;
    for &byte in data {
        if byte == 0 {
            out[code_at] = code;
            code_at = out.len();
            out.push(0);
            code = 1;
        } else {
            out.push(byte);
            code += 1;
            if code == 0xFF {
                out[code_at] = code;
                code_at = out.len();
                out.push(0);
                code = 1;
            }
        }
    }
    out[code_at] = code;
    out
}

/// Decodes one COBS block sequence (without its delimiter).
pub fn cobs_decode(data: &[u8]) -> Result<Zeroizing<Vec<u8>>, FrameError> {
    let mut out = Zeroizing::new(Vec::with_capacity(data.len()));
    let mut i = 0;
    while i < data.len() {
        let code = usize::from(data[i]);
        if code == 0 {
            return Err(FrameError::BadFrame);
        }
        let end = i + code;
        let block = data.get(i + 1..end).ok_or(FrameError::BadFrame)?;
        if block.contains(&0) {
            return Err(FrameError::BadFrame);
        }
        out.extend_from_slice(block);
        i = end;
        if code < 0xFF && i < data.len() {
            out.push(0);
        }
    }
    Ok(out)
}

/// One TLV field. The value is wiped when dropped; `Debug` shows only its
/// length.
#[derive(Clone, PartialEq, Eq)]
pub struct Field {
    /// The tag (see [`tag`]).
    pub tag: u8,
    /// The value.
    pub value: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Field({:#04x}, {} bytes)", self.tag, self.value.len())
    }
}

/// A decoded packet: kind, request id and fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// A [`Command`] code for a request, [`KIND_OK`] or [`KIND_ERROR`] for a
    /// reply.
    pub kind: u8,
    /// The request id; a reply carries its request's, or 0 when the request
    /// could not be read.
    pub id: u32,
    /// The fields, in order.
    pub fields: Vec<Field>,
}

impl Packet {
    /// A packet without fields.
    pub fn new(kind: u8, id: u32) -> Packet {
        Packet {
            kind,
            id,
            fields: Vec::new(),
        }
    }

    /// A request.
    pub fn request(command: Command, id: u32) -> Packet {
        Packet::new(command as u8, id)
    }

    /// An OK reply.
    pub fn ok(id: u32) -> Packet {
        Packet::new(KIND_OK, id)
    }

    /// An ERROR reply; the message is cut to 200 bytes.
    pub fn error(id: u32, code: ErrorCode, message: &str) -> Packet {
        let mut end = message.len().min(200);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        Packet::new(KIND_ERROR, id)
            .with(tag::ERROR_CODE, &(code as u16).to_be_bytes())
            .with(tag::ERROR_MESSAGE, &message.as_bytes()[..end])
    }

    /// Appends a field.
    pub fn with(mut self, tag: u8, value: &[u8]) -> Packet {
        self.push(tag, value);
        self
    }

    /// Appends a field.
    pub fn push(&mut self, tag: u8, value: &[u8]) {
        self.fields.push(Field {
            tag,
            value: Zeroizing::new(value.to_vec()),
        });
    }

    /// The first field with this tag.
    pub fn get(&self, tag: u8) -> Option<&[u8]> {
        self.all(tag).next()
    }

    /// Every field with this tag, in order.
    pub fn all(&self, tag: u8) -> impl Iterator<Item = &[u8]> + '_ {
        self.fields
            .iter()
            .filter(move |f| f.tag == tag)
            .map(|f| f.value.as_slice())
    }

    /// The only field with this tag: `None` when absent or repeated.
    pub fn single(&self, tag: u8) -> Option<&[u8]> {
        let mut it = self.all(tag);
        let first = it.next()?;
        it.next().is_none().then_some(first)
    }

    /// The command of a request, if its kind is one.
    pub fn command(&self) -> Option<Command> {
        Command::from_code(self.kind)
    }

    /// For an ERROR reply: its numeric code (0 when absent or malformed)
    /// and message (lossy UTF-8).
    pub fn error_parts(&self) -> (u16, String) {
        let code = self
            .single(tag::ERROR_CODE)
            .and_then(|v| <[u8; 2]>::try_from(v).ok())
            .map(u16::from_be_bytes)
            .unwrap_or(0);
        let message = self
            .get(tag::ERROR_MESSAGE)
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .unwrap_or_default();
        (code, message)
    }

    /// The packet bytes (header, fields, CRC), before framing.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, FrameError> {
        let mut out = Zeroizing::new(Vec::with_capacity(
            MIN_PACKET + self.fields.iter().map(|f| 3 + f.value.len()).sum::<usize>(),
        ));
        out.push(VERSION);
        out.push(self.kind);
        out.extend_from_slice(&self.id.to_be_bytes());
        for field in &self.fields {
            let len = u16::try_from(field.value.len()).map_err(|_| FrameError::TooLarge)?;
            out.push(field.tag);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&field.value);
        }
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        if out.len() > MAX_PACKET {
            return Err(FrameError::TooLarge);
        }
        Ok(out)
    }

    /// The complete wire frame: a leading delimiter (which makes the
    /// receiver drop any partial garbage before it), the COBS-encoded
    /// packet, and the terminating delimiter.
    pub fn encode(&self) -> Result<Zeroizing<Vec<u8>>, FrameError> {
        let bytes = self.to_bytes()?;
        let body = cobs_encode(&bytes);
        let mut frame = Zeroizing::new(Vec::with_capacity(body.len() + 2));
        frame.push(DELIMITER);
        frame.extend_from_slice(&body);
        frame.push(DELIMITER);
        Ok(frame)
    }

    /// Parses packet bytes (after COBS decoding): length, CRC, version,
    /// then the fields, which must exactly fill the space before the CRC.
    pub fn from_bytes(bytes: &[u8]) -> Result<Packet, FrameError> {
        if bytes.len() > MAX_PACKET {
            return Err(FrameError::TooLarge);
        }
        if bytes.len() < MIN_PACKET {
            return Err(FrameError::BadFrame);
        }
        let (body, crc) = bytes.split_at(bytes.len() - CRC_LEN);
        let crc = <[u8; 4]>::try_from(crc).map_err(|_| FrameError::BadFrame)?;
        if crc32(body) != u32::from_be_bytes(crc) {
            return Err(FrameError::BadCrc);
        }
        let (header, mut rest) = body.split_at(HEADER_LEN);
        if header[0] != VERSION {
            return Err(FrameError::UnsupportedVersion);
        }
        let id = <[u8; 4]>::try_from(&header[2..6]).map_err(|_| FrameError::BadFrame)?;
        let mut packet = Packet::new(header[1], u32::from_be_bytes(id));
        while !rest.is_empty() {
            let Some((&[tag, hi, lo], tail)) = rest.split_first_chunk::<3>() else {
                return Err(FrameError::BadFrame);
            };
            let len = usize::from(u16::from_be_bytes([hi, lo]));
            let value = tail.get(..len).ok_or(FrameError::BadFrame)?;
            packet.push(tag, value);
            rest = &tail[len..];
        }
        Ok(packet)
    }
}

/// Splits a byte stream into frames and decodes them. Bytes before the
/// first delimiter and between frames are resynchronised on: whatever
/// precedes a delimiter is one frame candidate, and a bad candidate costs
/// only itself. Empty candidates (back-to-back delimiters) are skipped.
pub struct FrameDecoder {
    buf: Zeroizing<Vec<u8>>,
    overflow: bool,
}

impl fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FrameDecoder({} bytes pending)", self.buf.len())
    }
}

impl Default for FrameDecoder {
    /// Its buffer is allocated once at its largest, so a frame carrying a
    /// secret is never left behind in a freed, outgrown copy; the buffer
    /// itself is wiped when dropped.
    fn default() -> Self {
        FrameDecoder {
            buf: Zeroizing::new(Vec::with_capacity(MAX_ENCODED + 1)),
            overflow: false,
        }
    }
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    /// Drops any partial frame.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.overflow = false;
    }

    /// Feeds received bytes; returns every frame they complete, decoded, or
    /// why it was dropped. A candidate longer than [`MAX_ENCODED`] is
    /// discarded as it arrives (memory stays bounded) and reported as
    /// [`FrameError::TooLarge`] at its delimiter.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Result<Packet, FrameError>> {
        let mut out = Vec::new();
        for &byte in bytes {
            if byte == DELIMITER {
                if self.overflow {
                    out.push(Err(FrameError::TooLarge));
                } else if !self.buf.is_empty() {
                    out.push(cobs_decode(&self.buf).and_then(|p| Packet::from_bytes(&p)));
                }
                self.reset();
            } else if self.overflow {
                // discard until the next delimiter
            } else if self.buf.len() >= MAX_ENCODED {
                self.buf.clear();
                self.overflow = true;
            } else {
                self.buf.push(byte);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Packet {
        Packet::request(Command::PutCert, 0x0102_0304)
            .with(tag::CERT, &[0u8; 300])
            .with(tag::CERT, b"chain\x00with\x00zeros")
            .with(tag::NAME, b"")
    }

    fn decode_all(bytes: &[u8]) -> Vec<Result<Packet, FrameError>> {
        FrameDecoder::new().feed(bytes)
    }

    #[test]
    fn crc_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn cobs_round_trips_edge_cases() {
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            vec![1],
            (1..=254u8).collect(),
            (1..=255u8).collect(),
            (0..=255u8).cycle().take(1000).collect(),
            vec![0xFF; 600],
            vec![0; 600],
        ];
        for data in cases {
            let enc = cobs_encode(&data);
            assert!(!enc.contains(&0), "encoded form has no zero");
            assert_eq!(
                cobs_decode(&enc).ok().as_deref().map(|v| v.as_slice()),
                Some(data.as_slice())
            );
        }
    }

    #[test]
    fn cobs_rejects_malformed() {
        assert_eq!(cobs_decode(&[5, 1, 2]), Err(FrameError::BadFrame));
        assert_eq!(cobs_decode(&[2, 0]), Err(FrameError::BadFrame));
        assert_eq!(cobs_decode(&[0]), Err(FrameError::BadFrame));
    }

    #[test]
    fn packet_round_trips() {
        for packet in [
            sample(),
            Packet::ok(7),
            Packet::ok(u32::MAX).with(tag::PUBKEY, &[0xAB; 91]),
            Packet::error(0, ErrorCode::BadCrc, "CRC mismatch"),
            Packet::new(0x7F, 1),
        ] {
            let frame = packet.encode().ok();
            let frame = frame.as_deref().map(|v| v.as_slice()).unwrap_or_default();
            let got = decode_all(frame);
            assert_eq!(got, vec![Ok(packet)]);
        }
    }

    #[test]
    fn several_frames_in_one_read_and_split_reads() {
        let a = sample();
        let b = Packet::error(9, ErrorCode::Locked, "locked");
        let mut stream = Vec::new();
        stream.extend_from_slice(&a.encode().unwrap_or_default());
        stream.extend_from_slice(&b.encode().unwrap_or_default());
        assert_eq!(decode_all(&stream), vec![Ok(a.clone()), Ok(b.clone())]);
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for byte in &stream {
            got.extend(dec.feed(std::slice::from_ref(byte)));
        }
        assert_eq!(got, vec![Ok(a), Ok(b)]);
    }

    #[test]
    fn every_single_byte_corruption_is_detected() {
        let packets = [
            sample(),
            Packet::ok(0x00FF_0000).with(tag::SIGNATURE, &[0x30, 0x45, 0, 1, 2]),
            Packet::request(Command::GetUid, 1),
        ];
        for packet in packets {
            let frame = packet.encode().unwrap_or_default();
            assert!(frame.len() > 2);
            for pos in 0..frame.len() {
                for flip in 1..=255u8 {
                    let mut bad = frame.to_vec();
                    bad[pos] ^= flip;
                    // a trailing delimiter ends whatever the corruption
                    // left open
                    bad.push(DELIMITER);
                    for result in decode_all(&bad) {
                        assert!(
                            result.is_err(),
                            "corruption {flip:#04x} at {pos} of {} went undetected",
                            frame.len()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn truncated_frames_are_rejected() {
        let frame = sample().encode().unwrap_or_default();
        // cut the frame short anywhere, then a delimiter arrives
        for cut in 2..frame.len() - 1 {
            let mut bad = frame[..cut].to_vec();
            bad.push(DELIMITER);
            let got = decode_all(&bad);
            assert_eq!(got.len(), 1, "cut at {cut}");
            assert!(got[0].is_err(), "cut at {cut}");
        }
        // a frame without its delimiter yields nothing yet
        assert!(decode_all(&frame[..frame.len() - 1]).is_empty());
        // packets shorter than a header and CRC
        for len in 0..MIN_PACKET {
            assert_eq!(Packet::from_bytes(&vec![1; len]), Err(FrameError::BadFrame));
        }
    }

    #[test]
    fn fields_must_fill_the_packet_exactly() {
        let good = Packet::ok(3)
            .with(tag::UID, b"abc")
            .to_bytes()
            .unwrap_or_default();
        // drop the last byte of the value, fix the CRC: the field overruns
        let mut body = good[..good.len() - 5].to_vec();
        let crc = crc32(&body);
        body.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(Packet::from_bytes(&body), Err(FrameError::BadFrame));
        // a dangling partial field header
        let mut body = good[..good.len() - 4].to_vec();
        body.push(tag::NAME);
        let crc = crc32(&body);
        body.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(Packet::from_bytes(&body), Err(FrameError::BadFrame));
    }

    #[test]
    fn wrong_version_is_reported() {
        let mut bytes = Packet::ok(1).to_bytes().unwrap_or_default().to_vec();
        bytes[0] = 2;
        bytes.truncate(bytes.len() - 4);
        let crc = crc32(&bytes);
        bytes.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(
            Packet::from_bytes(&bytes),
            Err(FrameError::UnsupportedVersion)
        );
    }

    #[test]
    fn oversize_frames_are_refused_both_ways() {
        // encoding refuses
        let big = Packet::request(Command::Sign, 1).with(tag::MESSAGE, &vec![1u8; MAX_PACKET]);
        assert_eq!(big.encode().err(), Some(FrameError::TooLarge));
        let big = Packet::request(Command::Sign, 1).with(tag::MESSAGE, &vec![1u8; 70_000]);
        assert_eq!(big.encode().err(), Some(FrameError::TooLarge));
        // the largest packet that fits goes through
        let fits = Packet::request(Command::Sign, 1)
            .with(tag::MESSAGE, &vec![0u8; MAX_PACKET - MIN_PACKET - 3]);
        let frame = fits.encode().unwrap_or_default();
        assert!(frame.len() - 2 <= MAX_ENCODED);
        assert_eq!(decode_all(&frame), vec![Ok(fits)]);
        // decoding discards an endless candidate with bounded memory, then
        // resynchronises on the next delimiter
        let mut dec = FrameDecoder::new();
        for _ in 0..10 {
            assert!(dec.feed(&[0x42; 4096]).is_empty());
            assert!(dec.buf.len() <= MAX_ENCODED);
        }
        let good = Packet::ok(5);
        let mut tail = vec![DELIMITER];
        tail.extend_from_slice(&good.encode().unwrap_or_default());
        assert_eq!(dec.feed(&tail), vec![Err(FrameError::TooLarge), Ok(good)]);
        // an oversize packet that is valid COBS is refused too
        let body = cobs_encode(&vec![1u8; MAX_PACKET + 1]);
        let mut frame = body.to_vec();
        frame.push(DELIMITER);
        assert_eq!(decode_all(&frame), vec![Err(FrameError::TooLarge)]);
    }

    #[test]
    fn garbage_between_frames_resynchronises() {
        let a = Packet::request(Command::Status, 10);
        let b = Packet::request(Command::Lock, 11);
        let mut stream = b"line noise \xff\xfe before".to_vec();
        stream.extend_from_slice(&a.encode().unwrap_or_default());
        stream.extend_from_slice(b"\x13\x37 more noise");
        stream.extend_from_slice(&b.encode().unwrap_or_default());
        stream.extend_from_slice(b"trailing partial");
        let got = decode_all(&stream);
        let good: Vec<_> = got
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .cloned()
            .collect();
        assert_eq!(good, vec![a, b]);
        // the garbage before each leading delimiter is reported, not fatal
        assert_eq!(got.iter().filter(|r| r.is_err()).count(), 2);
    }

    #[test]
    fn debug_never_shows_values() {
        let p = Packet::request(Command::PutSecret, 1)
            .with(tag::NAME, b"psk")
            .with(tag::SECRET, b"TOPSECRETVALUE");
        let shown = format!("{p:?}");
        assert!(!shown.contains("TOPSECRET"), "{shown}");
        assert!(!shown.contains("84, 79, 80"), "{shown}");
    }

    #[test]
    fn codes_round_trip() {
        for c in Command::ALL {
            assert_eq!(Command::from_code(c as u8), Some(c));
        }
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u16(c as u16), Some(c));
        }
        assert_eq!(Command::from_code(0), None);
        assert_eq!(ErrorCode::from_u16(0), None);
    }
}
