//! Certificate revocation lists (RFC 5280 §5), built without rcgen so that a
//! CRL of a million entries is one copy of pre-encoded entries and one
//! signature.
//!
//! Each revocation is encoded once, when it happens ([`crl_entry`]), and kept
//! as DER. A CRL is then the fixed head (version, algorithm, issuer, times),
//! a `revokedCertificates` header framing the concatenated entries
//! ([`CrlEntries`]), and the CRL extensions, signed through the [`Signer`]
//! and verified with the issuer's public key before it is returned
//! ([`CrlIssuer::sign`]).

use std::time::Duration;

use der::asn1::{
    AnyRef, BitStringRef, ContextSpecific, GeneralizedTime, ObjectIdentifier as Oid, OctetString,
    UtcTime,
};
use der::{Decode, Encode, Header, Reader, SliceReader, Tag, TagMode, TagNumber, Tagged};
use spki::AlgorithmIdentifierOwned;
use time::OffsetDateTime;
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, CrlNumber, CrlReason, KeyUsage};
use x509_cert::ext::Extension;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Time;

use crate::error::{Error, Result};
use crate::oids;
use crate::reason::RevocationReason;
use crate::signer::{verify_signature, SignatureAlgorithm, Signer};

/// id-ce-cRLNumber.
const CRL_NUMBER: Oid = Oid::new_unwrap("2.5.29.20");
/// id-ce-cRLReasons.
const CRL_REASON: Oid = Oid::new_unwrap("2.5.29.21");
/// id-ce-invalidityDate.
const INVALIDITY_DATE: Oid = Oid::new_unwrap("2.5.29.24");

/// RFC 5280 §4.1.2.2: serial numbers are at most 20 octets.
const MAX_SERIAL_OCTETS: usize = 20;

fn enc(e: impl std::fmt::Display) -> Error {
    Error::Encoding(e.to_string())
}

/// Whole seconds since the epoch; times before 1970 cannot be written.
fn unix_duration(t: OffsetDateTime) -> Result<Duration> {
    u64::try_from(t.unix_timestamp())
        .map(Duration::from_secs)
        .map_err(|_| Error::Encoding(format!("time {t} is before 1970")))
}

/// RFC 5280 §5.1.2.4: UTCTime through 2049, GeneralizedTime from 2050, in
/// whole seconds (any fraction is dropped).
fn crl_time(t: OffsetDateTime) -> Result<Time> {
    let d = unix_duration(t)?;
    if t.to_offset(time::UtcOffset::UTC).year() <= i32::from(UtcTime::MAX_YEAR) {
        Ok(Time::UtcTime(UtcTime::from_unix_duration(d).map_err(enc)?))
    } else {
        Ok(Time::GeneralTime(
            GeneralizedTime::from_unix_duration(d).map_err(enc)?,
        ))
    }
}

fn extension(extn_id: Oid, value_der: Vec<u8>) -> Result<Extension> {
    Ok(Extension {
        extn_id,
        critical: false,
        extn_value: OctetString::new(value_der).map_err(enc)?,
    })
}

fn crl_reason(r: RevocationReason) -> CrlReason {
    match r {
        RevocationReason::Unspecified => CrlReason::Unspecified,
        RevocationReason::KeyCompromise => CrlReason::KeyCompromise,
        RevocationReason::CaCompromise => CrlReason::CaCompromise,
        RevocationReason::AffiliationChanged => CrlReason::AffiliationChanged,
        RevocationReason::Superseded => CrlReason::Superseded,
        RevocationReason::CessationOfOperation => CrlReason::CessationOfOperation,
        RevocationReason::PrivilegeWithdrawn => CrlReason::PrivilegeWithdrawn,
        RevocationReason::AaCompromise => CrlReason::AaCompromise,
    }
}

/// The serial as a positive DER INTEGER of at most 20 content octets.
fn serial_number(serial_number_hex: &str) -> Result<SerialNumber> {
    if serial_number_hex.is_empty() {
        return Err(Error::Encoding("empty certificate serial".into()));
    }
    let bytes = hex::decode(serial_number_hex).map_err(|e| {
        Error::Encoding(format!(
            "certificate serial {:?} is not hex: {e}",
            serial_number_hex.chars().take(48).collect::<String>()
        ))
    })?;
    // Leading zero octets carry no value; the encoding is minimal either way.
    let magnitude = crate::check::magnitude(&bytes);
    let content = magnitude.len() + usize::from(magnitude.first().is_some_and(|b| b & 0x80 != 0));
    if content > MAX_SERIAL_OCTETS {
        return Err(Error::Encoding(format!(
            "certificate serial of {content} octets; RFC 5280 allows 20"
        )));
    }
    SerialNumber::new(&bytes).map_err(enc)
}

/// DER of one `revokedCertificates` entry: userCertificate INTEGER (from the
/// lowercase-hex serial, positive, leading 0x00 when the high bit is set;
/// refuse empty/non-hex/over 20 octets with [`Error::Encoding`]),
/// revocationDate, and crlEntryExtensions only when needed: reasonCode
/// (2.5.29.21, ENUMERATED, non-critical) absent for Unspecified as RFC 5280
/// §5.3.1 asks; invalidityDate (2.5.29.24, GeneralizedTime, non-critical)
/// when given.
///
/// Hex of either case is accepted; leading zero octets are dropped. Times
/// are written in whole seconds (UTCTime through 2049, GeneralizedTime
/// from 2050; invalidityDate is always GeneralizedTime, RFC 5280 §5.3.2).
pub fn crl_entry(
    serial_number_hex: &str,
    revoked_at: OffsetDateTime,
    reason: RevocationReason,
    invalidity_date: Option<OffsetDateTime>,
) -> Result<Vec<u8>> {
    let mut extensions = Vec::new();
    if reason != RevocationReason::Unspecified {
        extensions.push(extension(
            CRL_REASON,
            crl_reason(reason).to_der().map_err(enc)?,
        )?);
    }
    if let Some(t) = invalidity_date {
        let g = GeneralizedTime::from_unix_duration(unix_duration(t)?).map_err(enc)?;
        extensions.push(extension(INVALIDITY_DATE, g.to_der().map_err(enc)?)?);
    }
    x509_cert::crl::RevokedCert {
        serial_number: serial_number(serial_number_hex)?,
        revocation_date: crl_time(revoked_at)?,
        crl_entry_extensions: (!extensions.is_empty()).then_some(extensions),
    }
    .to_der()
    .map_err(enc)
}

/// The entries of one CRL, kept pre-encoded and concatenated, so adding a
/// revocation is an append and building a CRL of 1,000,000 entries is one
/// copy, not a re-encoding.
///
/// Entries are expected to come from [`crl_entry`] and are not decoded
/// again. Each is checked on [`push`](Self::push) to be one whole DER
/// SEQUENCE (a cheap header check); if one is not, [`CrlIssuer::sign`]
/// refuses the whole list rather than sign a malformed CRL.
#[derive(Clone, Debug, Default)]
pub struct CrlEntries {
    der: Vec<u8>,
    count: usize,
    /// Index of the first pushed entry that was not one DER SEQUENCE.
    malformed: Option<usize>,
}

/// Is `der` exactly one DER SEQUENCE TLV (header-wise)?
fn is_one_sequence(der: &[u8]) -> bool {
    let Ok(mut r) = SliceReader::new(der) else {
        return false;
    };
    Header::decode(&mut r).is_ok_and(|h| {
        h.tag == Tag::Sequence && r.remaining_len() == h.length && r.read_slice(h.length).is_ok()
    })
}

impl CrlEntries {
    /// No entries.
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for `entries` entries of about `entry_len` bytes each.
    pub fn with_capacity(entries: usize, entry_len: usize) -> Self {
        Self {
            der: Vec::with_capacity(entries.saturating_mul(entry_len)),
            ..Self::default()
        }
    }

    /// Append one entry, the DER [`crl_entry`] returned.
    pub fn push(&mut self, entry_der: &[u8]) {
        if self.malformed.is_none() && !is_one_sequence(entry_der) {
            self.malformed = Some(self.count);
        }
        self.der.extend_from_slice(entry_der);
        self.count += 1;
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.count
    }

    /// No entries?
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of all entries together (the content of `revokedCertificates`).
    pub fn der_len(&self) -> usize {
        self.der.len()
    }
}

/// An issuing CA's CRL signer: the issuer certificate's subject (exact DER
/// bytes) and SKI, and the key (through [`Signer`]) that must match the
/// certificate's public key.
pub struct CrlIssuer {
    signer: Box<dyn Signer>,
    /// version, signature AlgorithmIdentifier and issuer Name: the start of
    /// every TBSCertList this issuer signs.
    head: Vec<u8>,
    /// The outer signatureAlgorithm (same AlgorithmIdentifier).
    algorithm_der: Vec<u8>,
    /// The issuer's subject key identifier.
    key_id: Vec<u8>,
}

impl std::fmt::Debug for CrlIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrlIssuer")
            .field("algorithm", &self.signer.algorithm())
            .field("key_id", &hex::encode(&self.key_id))
            .finish_non_exhaustive()
    }
}

/// The subject Name of a certificate, exactly as its DER holds it.
fn subject_der(cert_der: &[u8]) -> der::Result<Vec<u8>> {
    let cert = AnyRef::from_der(cert_der)?;
    let mut outer = SliceReader::new(cert.value())?;
    let tbs = AnyRef::decode(&mut outer)?;
    let mut r = SliceReader::new(tbs.value())?;
    if AnyRef::decode(&mut r)?.tag().is_context_specific() {
        AnyRef::decode(&mut r)?; // that was [0] version; this is serialNumber
    }
    for _signature_issuer_validity in 0..3 {
        AnyRef::decode(&mut r)?;
    }
    AnyRef::decode(&mut r)?.to_der()
}

fn issuer_err(s: impl Into<String>) -> Error {
    Error::Issuer(s.into())
}

impl CrlIssuer {
    /// Refuse ([`Error::Issuer`]) when the cert does not parse, has no SKI,
    /// its key differs from the signer's, or its keyUsage lacks cRLSign
    /// (or is absent: RFC 5280 §4.2.1.3 requires it of a CRL signer).
    pub fn new(issuer_cert_der: &[u8], signer: Box<dyn Signer>) -> Result<Self> {
        let cert = x509_cert::Certificate::from_der(issuer_cert_der)
            .map_err(|e| issuer_err(e.to_string()))?;
        let tbs = &cert.tbs_certificate;
        let spki = &tbs.subject_public_key_info;
        let algorithm = signer.algorithm();
        let key_type_matches = match algorithm {
            SignatureAlgorithm::EcdsaP256Sha256 => {
                spki.algorithm.oid == oids::EC_PUBLIC_KEY
                    && spki
                        .algorithm
                        .parameters
                        .as_ref()
                        .and_then(|p| p.decode_as::<Oid>().ok())
                        == Some(oids::P256)
            }
            SignatureAlgorithm::Ed25519 => spki.algorithm.oid == oids::ED25519,
        };
        if !key_type_matches || spki.subject_public_key.raw_bytes() != signer.public_key_raw() {
            return Err(issuer_err(
                "the signer's key is not the issuer certificate's key",
            ));
        }
        let extension = |oid: Oid| {
            tbs.extensions
                .iter()
                .flatten()
                .find(|e| e.extn_id == oid)
                .map(|e| e.extn_value.as_bytes())
        };
        let key_id = extension(oids::SUBJECT_KEY_ID)
            .and_then(|v| OctetString::from_der(v).ok())
            .ok_or_else(|| issuer_err("no subject key identifier"))?
            .into_bytes();
        let crl_sign = extension(oids::KEY_USAGE)
            .and_then(|v| KeyUsage::from_der(v).ok())
            .is_some_and(|ku| ku.crl_sign());
        if !crl_sign {
            return Err(issuer_err("keyUsage does not include cRLSign"));
        }

        let algorithm_der = AlgorithmIdentifierOwned {
            oid: match algorithm {
                SignatureAlgorithm::EcdsaP256Sha256 => oids::ECDSA_SHA256,
                SignatureAlgorithm::Ed25519 => oids::ED25519,
            },
            parameters: None,
        }
        .to_der()
        .map_err(enc)?;
        let mut head = x509_cert::Version::V2.to_der().map_err(enc)?;
        head.extend_from_slice(&algorithm_der);
        head.extend_from_slice(
            &subject_der(issuer_cert_der).map_err(|e| issuer_err(e.to_string()))?,
        );
        Ok(Self {
            signer,
            head,
            algorithm_der,
            key_id,
        })
    }

    /// `[0] EXPLICIT Extensions`: authorityKeyIdentifier and cRLNumber.
    fn crl_extensions(&self, number: u64) -> Result<Vec<u8>> {
        let aki = AuthorityKeyIdentifier {
            key_identifier: Some(OctetString::new(self.key_id.clone()).map_err(enc)?),
            authority_cert_issuer: None,
            authority_cert_serial_number: None,
        };
        let crl_number =
            CrlNumber(der::asn1::Uint::new(&number.to_be_bytes()).map_err(enc)?).to_der();
        let extensions = vec![
            extension(oids::AUTHORITY_KEY_ID, aki.to_der().map_err(enc)?)?,
            extension(CRL_NUMBER, crl_number.map_err(enc)?)?,
        ];
        ContextSpecific {
            tag_number: TagNumber::N0,
            tag_mode: TagMode::Explicit,
            value: extensions,
        }
        .to_der()
        .map_err(enc)
    }

    /// A signed RFC 5280 v2 CRL (CertificateList DER): version v2, signature
    /// algorithm of the signer (ecdsa-with-SHA256 without parameters, or
    /// Ed25519), issuer = the cert's subject, thisUpdate, nextUpdate,
    /// revokedCertificates (ABSENT when there are no entries, RFC 5280
    /// §5.1.2.6), crlExtensions: authorityKeyIdentifier (keyIdentifier =
    /// issuer SKI, non-critical) and cRLNumber (INTEGER, non-critical). The
    /// signature is verified with the issuer's public key before the CRL is
    /// returned (never trust what the token returned). Times: UTCTime
    /// through 2049, GeneralizedTime from 2050, whole seconds (RFC 5280
    /// §5.1.2.4).
    ///
    /// Refuses with [`Error::Encoding`] a `next_update` before `this_update`,
    /// times before 1970, entries that were not whole DER SEQUENCEs, and a
    /// CRL over DER's 256 MiB length limit; [`Error::Signer`] when the signer
    /// fails; [`Error::IssuedSignatureInvalid`] when its signature does not
    /// verify.
    pub fn sign(
        &self,
        number: u64,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
        entries: &CrlEntries,
    ) -> Result<Vec<u8>> {
        if next_update < this_update {
            return Err(Error::Encoding(format!(
                "nextUpdate {next_update} is before thisUpdate {this_update}"
            )));
        }
        if let Some(i) = entries.malformed {
            return Err(Error::Encoding(format!(
                "CRL entry {i} is not one DER SEQUENCE"
            )));
        }
        let mut head = self.head.clone();
        crl_time(this_update)?
            .encode_to_vec(&mut head)
            .map_err(enc)?;
        crl_time(next_update)?
            .encode_to_vec(&mut head)
            .map_err(enc)?;
        let revoked_header = if entries.is_empty() {
            Vec::new()
        } else {
            Header::new(Tag::Sequence, entries.der_len())
                .and_then(|h| h.to_der())
                .map_err(enc)?
        };
        let extensions = self.crl_extensions(number)?;
        let tbs_content_len =
            head.len() + revoked_header.len() + entries.der_len() + extensions.len();
        let tbs_header = Header::new(Tag::Sequence, tbs_content_len)
            .and_then(|h| h.to_der())
            .map_err(enc)?;
        let tbs_len = tbs_header.len() + tbs_content_len;

        // One buffer for the whole CertificateList. Its outer header is known
        // only once the signature's length is, so room is left for it at the
        // front, sized for the longest signature this key type gives.
        let max_signature = match self.signer.algorithm() {
            SignatureAlgorithm::EcdsaP256Sha256 => 72,
            SignatureAlgorithm::Ed25519 => 64,
        };
        let tail_max = self.algorithm_der.len() + 3 + max_signature;
        let room = Header::new(Tag::Sequence, tbs_len + tail_max)
            .and_then(|h| h.encoded_len())
            .map_err(enc)?;
        let room = usize::try_from(room).map_err(enc)?;
        let mut buf = Vec::with_capacity(room + tbs_len + tail_max);
        buf.resize(room, 0);
        buf.extend_from_slice(&tbs_header);
        buf.extend_from_slice(&head);
        buf.extend_from_slice(&revoked_header);
        buf.extend_from_slice(&entries.der);
        buf.extend_from_slice(&extensions);

        let tbs = &buf[room..];
        let signature = self.signer.sign(tbs).map_err(Error::Signer)?;
        if !verify_signature(
            self.signer.algorithm(),
            self.signer.public_key_raw(),
            tbs,
            &signature,
        ) {
            return Err(Error::IssuedSignatureInvalid);
        }
        buf.extend_from_slice(&self.algorithm_der);
        BitStringRef::from_bytes(&signature)
            .and_then(|b| b.encode_to_vec(&mut buf))
            .map_err(enc)?;

        let body_len = buf.len() - room;
        let outer = Header::new(Tag::Sequence, body_len)
            .and_then(|h| h.to_der())
            .map_err(enc)?;
        let start = outer.len();
        match start.cmp(&room) {
            std::cmp::Ordering::Equal => {}
            std::cmp::Ordering::Less => {
                buf.copy_within(room.., start);
                buf.truncate(start + body_len);
            }
            std::cmp::Ordering::Greater => {
                buf.resize(start + body_len, 0);
                buf.copy_within(room..room + body_len, start);
            }
        }
        buf[..start].copy_from_slice(&outer);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn entry_header_check() {
        assert!(is_one_sequence(&[0x30, 0x00]));
        assert!(is_one_sequence(&[0x30, 0x01, 0x05]));
        assert!(!is_one_sequence(&[]));
        assert!(!is_one_sequence(&[0x31, 0x00]));
        assert!(!is_one_sequence(&[0x30, 0x02, 0x05]));
        assert!(!is_one_sequence(&[0x30, 0x00, 0x30, 0x00]));
    }

    #[test]
    fn malformed_entry_is_remembered() {
        let mut e = CrlEntries::new();
        e.push(&[0x30, 0x00]);
        e.push(&[0x02, 0x01, 0x01]);
        e.push(&[0x30, 0x00]);
        assert_eq!((e.len(), e.der_len(), e.malformed), (3, 7, Some(1)));
    }
}
