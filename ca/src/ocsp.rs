//! OCSP (RFC 6960): a strict parser for requests and a signer for
//! CA-signed responses (§4.2.2.2, case 1: the issuing CA answers for its own
//! certificates with its own key).
//!
//! Pure like the rest of the crate: the caller looks the statuses up and
//! hands them over; this module only parses, encodes, signs through the
//! [`Signer`] and verifies what the signer returned before anything leaves.

use std::fmt;
use std::time::Duration;

use der::asn1::{AnyRef, BitString, GeneralizedTime, Null, ObjectIdentifier as Oid, OctetString};
use der::oid::AssociatedOid;
use der::{Decode, Encode, Reader, SliceReader, Tag, Tagged};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use spki::AlgorithmIdentifierOwned;
use time::OffsetDateTime;
use x509_cert::ext::pkix::CrlReason;
use x509_cert::ext::Extension;
use x509_cert::Certificate;
use x509_ocsp::ext::Nonce;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspGeneralizedTime, OcspRequest, OcspResponse,
    ResponderId, ResponseData, RevokedInfo, SingleResponse, Version,
};

use crate::check::magnitude;
use crate::error::{Error, Result};
use crate::reason::RevocationReason;
use crate::signer::{verify_signature, SignatureAlgorithm, Signer};

/// Most CertIDs one request may ask about (a 10,000-entry request is refused
/// as malformed, and counted without decoding its entries).
pub const MAX_OCSP_REQUEST_ENTRIES: usize = 16;

/// Longest nonce accepted, in octets. RFC 8954 says 1..=32; older clients
/// send more, so up to 128 is taken.
const MAX_NONCE_BYTES: usize = 128;

/// id-sha1.
const SHA1: Oid = Oid::new_unwrap("1.3.14.3.2.26");
/// id-sha256.
const SHA256: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.1");
/// id-pkix-ocsp-response (AcceptableResponses, RFC 6960 §4.4.3).
const OCSP_ACCEPTABLE_RESPONSES: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.48.1.4");
/// id-pkix-ocsp-pref-sig-algs (RFC 6960 §4.4.7).
const OCSP_PREFERRED_SIGNATURE_ALGORITHMS: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.48.1.8");
/// id-pkix-ocsp-service-locator (RFC 6960 §4.4.6).
const OCSP_SERVICE_LOCATOR: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.48.1.7");

/// Hash algorithm of a CertID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OcspHash {
    /// SHA-1 (what most clients, OpenSSL's default included, send).
    Sha1,
    /// SHA-256.
    Sha256,
}

/// One CertID as asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OcspCertId {
    /// The hash algorithm; `None` for one we do not support (the answer for
    /// such an id can only be `unknown`).
    pub hash: Option<OcspHash>,
    /// Hash of the issuer's subject DER.
    pub issuer_name_hash: Vec<u8>,
    /// Hash of the issuer's public key (the BIT STRING content).
    pub issuer_key_hash: Vec<u8>,
    /// The certificate serial: lowercase hex of the INTEGER magnitude
    /// without leading zero bytes (as certificates are stored).
    pub serial_number: String,
    /// The CertID as decoded, echoed in the response.
    raw: CertId,
}

/// What a request asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OcspRequestInfo {
    /// The CertIDs, in request order (1 to [`MAX_OCSP_REQUEST_ENTRIES`]).
    pub ids: Vec<OcspCertId>,
    /// The nonce extension's extnValue content, to be echoed verbatim (for
    /// a conforming client, the DER of `Nonce ::= OCTET STRING`).
    pub nonce: Option<Vec<u8>>,
}

fn malformed(msg: impl Into<String>) -> Error {
    Error::OcspMalformed(msg.into())
}

fn encoding(what: &str, e: impl fmt::Display) -> Error {
    Error::Encoding(format!("OCSP {what}: {e}"))
}

/// Strict DER parse of an `OCSPRequest`.
///
/// Refused with [`Error::OcspMalformed`]: trailing bytes, anything that is
/// not a DER OCSPRequest, zero entries, more than
/// [`MAX_OCSP_REQUEST_ENTRIES`], a negative serial, an extension twice in
/// one list, unknown critical request or single-request extensions, an
/// AcceptableResponses that leaves out id-pkix-ocsp-basic, and a nonce that
/// is empty or longer than 128 octets (RFC 8954 says 1..=32; up to 128 is
/// taken for old clients). A signature on the request is accepted and
/// ignored, as is the requestorName.
pub fn parse_ocsp_request(der: &[u8]) -> Result<OcspRequestInfo> {
    // Count first, without decoding the entries, so a huge list costs
    // nothing but the scan of 17 headers.
    let entries =
        count_entries(der).map_err(|e| malformed(format!("not a DER OCSPRequest: {e}")))?;
    check_entry_count(entries)?;
    let req =
        OcspRequest::from_der(der).map_err(|e| malformed(format!("not a DER OCSPRequest: {e}")))?;
    let tbs = &req.tbs_request;
    check_entry_count(tbs.request_list.len())?;
    let mut nonce = None;
    check_extensions(
        "request",
        tbs.request_extensions.as_deref(),
        &[
            Nonce::OID,
            OCSP_ACCEPTABLE_RESPONSES,
            OCSP_PREFERRED_SIGNATURE_ALGORITHMS,
        ],
    )?;
    for ext in tbs.request_extensions.iter().flatten() {
        if ext.extn_id == Nonce::OID {
            nonce = Some(checked_nonce(ext.extn_value.as_bytes())?);
        } else if ext.extn_id == OCSP_ACCEPTABLE_RESPONSES {
            let accepted = Vec::<Oid>::from_der(ext.extn_value.as_bytes())
                .map_err(|e| malformed(format!("AcceptableResponses does not parse: {e}")))?;
            if !accepted.contains(&BasicOcspResponse::OID) {
                return Err(malformed(
                    "AcceptableResponses leaves out id-pkix-ocsp-basic, the only type answered",
                ));
            }
        }
    }
    let ids = tbs
        .request_list
        .iter()
        .map(|r| {
            check_extensions(
                "single request",
                r.single_request_extensions.as_deref(),
                &[OCSP_SERVICE_LOCATOR],
            )?;
            cert_id(&r.req_cert)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(OcspRequestInfo { ids, nonce })
}

fn check_entry_count(n: usize) -> Result<()> {
    if n == 0 {
        return Err(malformed("the request asks about no certificate"));
    }
    if n > MAX_OCSP_REQUEST_ENTRIES {
        return Err(malformed(format!(
            "the request asks about more than {MAX_OCSP_REQUEST_ENTRIES} certificates"
        )));
    }
    Ok(())
}

/// The number of entries in requestList, counted up to one past the limit,
/// from the TLV headers alone.
fn count_entries(der: &[u8]) -> der::Result<usize> {
    let outer = AnyRef::from_der(der)?; // refuses trailing bytes
    outer.tag().assert_eq(Tag::Sequence)?;
    let mut fields = SliceReader::new(outer.value())?;
    let tbs = AnyRef::decode(&mut fields)?;
    tbs.tag().assert_eq(Tag::Sequence)?;
    let mut tbs_fields = SliceReader::new(tbs.value())?;
    loop {
        // [0] version and [1] requestorName come first; the first SEQUENCE
        // is requestList. Each decode consumes at least a header or fails.
        let field = AnyRef::decode(&mut tbs_fields)?;
        if field.tag() == Tag::Sequence {
            let mut list = SliceReader::new(field.value())?;
            let mut n = 0;
            while !list.is_finished() && n <= MAX_OCSP_REQUEST_ENTRIES {
                AnyRef::decode(&mut list)?;
                n += 1;
            }
            return Ok(n);
        }
    }
}

/// No extension twice, no unknown critical one.
fn check_extensions(list: &str, exts: Option<&[Extension]>, known: &[Oid]) -> Result<()> {
    let exts = exts.unwrap_or_default();
    for (i, ext) in exts.iter().enumerate() {
        if exts[..i].iter().any(|e| e.extn_id == ext.extn_id) {
            return Err(malformed(format!(
                "{list} extension {} appears twice",
                ext.extn_id
            )));
        }
        if ext.critical && !known.contains(&ext.extn_id) {
            return Err(malformed(format!(
                "unknown critical {list} extension {}",
                ext.extn_id
            )));
        }
    }
    Ok(())
}

/// The nonce extnValue, checked for length: the `Nonce` OCTET STRING's
/// content when the value is one, the raw value otherwise (old clients).
fn checked_nonce(value: &[u8]) -> Result<Vec<u8>> {
    let len = OctetString::from_der(value).map_or(value.len(), |n| n.as_bytes().len());
    if len == 0 {
        return Err(malformed("the nonce is empty"));
    }
    if len > MAX_NONCE_BYTES {
        return Err(malformed(format!(
            "the nonce is {len} octets, more than {MAX_NONCE_BYTES}"
        )));
    }
    Ok(value.to_vec())
}

fn cert_id(id: &CertId) -> Result<OcspCertId> {
    let serial = id.serial_number.as_bytes();
    if serial.first().is_some_and(|b| b & 0x80 != 0) {
        return Err(malformed("a CertID serial number is negative"));
    }
    let m = magnitude(serial);
    Ok(OcspCertId {
        hash: hash_of(&id.hash_algorithm),
        issuer_name_hash: id.issuer_name_hash.as_bytes().to_vec(),
        issuer_key_hash: id.issuer_key_hash.as_bytes().to_vec(),
        serial_number: if m.is_empty() {
            "00".into()
        } else {
            hex::encode(m)
        },
        raw: id.clone(),
    })
}

/// SHA-1 or SHA-256 with absent or NULL parameters; anything else is not
/// supported.
fn hash_of(alg: &AlgorithmIdentifierOwned) -> Option<OcspHash> {
    if !alg.parameters.as_ref().is_none_or(|p| p.is_null()) {
        return None;
    }
    if alg.oid == SHA1 {
        Some(OcspHash::Sha1)
    } else if alg.oid == SHA256 {
        Some(OcspHash::Sha256)
    } else {
        None
    }
}

/// The status of one certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OcspStatus {
    /// Issued here and not revoked.
    Good,
    /// Revoked.
    Revoked {
        /// When (written in whole seconds).
        at: OffsetDateTime,
        /// Why; `Unspecified` is written without a revocationReason.
        reason: RevocationReason,
    },
    /// Not known to this responder.
    Unknown,
}

/// A CA answering OCSP for the certificates it issued, signing with its own
/// key (CA-signed responses, RFC 6960 §4.2.2.2 case 1).
pub struct OcspResponder {
    signer: Box<dyn Signer>,
    issuer: Certificate,
    name_sha1: [u8; 20],
    key_sha1: [u8; 20],
    name_sha256: [u8; 32],
    key_sha256: [u8; 32],
    signature_algorithm: AlgorithmIdentifierOwned,
}

impl fmt::Debug for OcspResponder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OcspResponder")
            .field("issuer", &self.issuer.tbs_certificate.subject.to_string())
            .field("key_sha1", &hex::encode(self.key_sha1))
            .field("algorithm", &self.signer.algorithm())
            .finish_non_exhaustive()
    }
}

impl OcspResponder {
    /// Precompute SHA-1 and SHA-256 of the issuer's subject DER and of its
    /// public key BIT STRING content; [`Error::Issuer`] if the certificate
    /// does not parse or its key is not the signer's.
    pub fn new(issuer_cert_der: &[u8], signer: Box<dyn Signer>) -> Result<Self> {
        let issuer =
            Certificate::from_der(issuer_cert_der).map_err(|e| Error::Issuer(e.to_string()))?;
        let tbs = &issuer.tbs_certificate;
        let key = tbs.subject_public_key_info.subject_public_key.raw_bytes();
        if key != signer.public_key_raw() {
            return Err(Error::Issuer(
                "the signer's key is not the issuer certificate's key".into(),
            ));
        }
        let name = tbs
            .subject
            .to_der()
            .map_err(|e| Error::Issuer(e.to_string()))?;
        let oid = match signer.algorithm() {
            SignatureAlgorithm::EcdsaP256Sha256 => crate::oids::ECDSA_SHA256,
            SignatureAlgorithm::Ed25519 => crate::oids::ED25519,
        };
        Ok(Self {
            name_sha1: Sha1::digest(&name).into(),
            key_sha1: Sha1::digest(key).into(),
            name_sha256: Sha256::digest(&name).into(),
            key_sha256: Sha256::digest(key).into(),
            signature_algorithm: AlgorithmIdentifierOwned {
                oid,
                parameters: None,
            },
            signer,
            issuer,
        })
    }

    /// Whether `id` names a certificate of this issuer (hash algorithm
    /// supported, name and key hashes equal).
    pub fn issues(&self, id: &OcspCertId) -> bool {
        match id.hash {
            Some(OcspHash::Sha1) => {
                id.issuer_name_hash == self.name_sha1 && id.issuer_key_hash == self.key_sha1
            }
            Some(OcspHash::Sha256) => {
                id.issuer_name_hash == self.name_sha256 && id.issuer_key_hash == self.key_sha256
            }
            None => false,
        }
    }

    /// A complete DER OCSPResponse (responseStatus successful, responseBytes
    /// id-pkix-ocsp-basic) with one SingleResponse per (id, status) in
    /// order: certID echoed exactly as asked, certStatus, thisUpdate,
    /// nextUpdate, revocationReason inside RevokedInfo unless Unspecified;
    /// responderID byKey (SHA-1 of the issuer's public key BIT STRING
    /// content); producedAt; the nonce extension echoed when given (the
    /// extnValue content, as [`OcspRequestInfo::nonce`] holds it);
    /// signatureAlgorithm of the signer; `certs` holding the issuer
    /// certificate so clients find the signer. The signature is verified
    /// with the issuer key before returning. Times in GeneralizedTime,
    /// whole seconds.
    ///
    /// Refused with [`Error::Encoding`] (caller bugs, nothing is signed): no
    /// answers, `next_update` before `this_update`, a time before 1970 or
    /// after 9999, and a `Good` or `Revoked` answer for an id this issuer
    /// does not issue ([`Self::issues`]); only `Unknown` may be said of
    /// those.
    pub fn respond(
        &self,
        answers: &[(&OcspCertId, OcspStatus)],
        produced_at: OffsetDateTime,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
        nonce: Option<&[u8]>,
    ) -> Result<Vec<u8>> {
        if answers.is_empty() {
            return Err(Error::Encoding("an OCSP response needs an answer".into()));
        }
        if next_update < this_update {
            return Err(Error::Encoding(
                "OCSP nextUpdate is before thisUpdate".into(),
            ));
        }
        let this_update = generalized_time("thisUpdate", this_update)?;
        let next_update = generalized_time("nextUpdate", next_update)?;
        let responses = answers
            .iter()
            .map(|(id, status)| {
                if *status != OcspStatus::Unknown && !self.issues(id) {
                    return Err(Error::Encoding(format!(
                        "OCSP answer other than unknown for serial {}, not issued by this CA",
                        id.serial_number
                    )));
                }
                Ok(SingleResponse {
                    cert_id: id.raw.clone(),
                    cert_status: cert_status(status)?,
                    this_update,
                    next_update: Some(next_update),
                    single_extensions: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let response_extensions = match nonce {
            Some(n) => Some(vec![Extension {
                extn_id: Nonce::OID,
                critical: false,
                extn_value: OctetString::new(n).map_err(|e| encoding("nonce", e))?,
            }]),
            None => None,
        };
        let data = ResponseData {
            version: Version::V1,
            responder_id: ResponderId::ByKey(
                OctetString::new(self.key_sha1.as_slice())
                    .map_err(|e| encoding("responderID", e))?,
            ),
            produced_at: generalized_time("producedAt", produced_at)?,
            responses,
            response_extensions,
        };
        let tbs = data.to_der().map_err(|e| encoding("ResponseData", e))?;
        let signature = self.signer.sign(&tbs).map_err(Error::Signer)?;
        if !verify_signature(
            self.signer.algorithm(),
            self.signer.public_key_raw(),
            &tbs,
            &signature,
        ) {
            return Err(Error::IssuedSignatureInvalid);
        }
        let basic = BasicOcspResponse {
            tbs_response_data: data,
            signature_algorithm: self.signature_algorithm.clone(),
            signature: BitString::from_bytes(&signature).map_err(|e| encoding("signature", e))?,
            certs: Some(vec![self.issuer.clone()]),
        };
        OcspResponse::successful(basic)
            .and_then(|r| r.to_der())
            .map_err(|e| encoding("OCSPResponse", e))
    }
}

fn generalized_time(what: &str, t: OffsetDateTime) -> Result<OcspGeneralizedTime> {
    let secs = u64::try_from(t.unix_timestamp()).map_err(|e| encoding(what, e))?;
    GeneralizedTime::from_unix_duration(Duration::from_secs(secs))
        .map(OcspGeneralizedTime)
        .map_err(|e| encoding(what, e))
}

fn cert_status(status: &OcspStatus) -> Result<CertStatus> {
    Ok(match *status {
        OcspStatus::Good => CertStatus::Good(Null),
        OcspStatus::Unknown => CertStatus::Unknown(Null),
        OcspStatus::Revoked { at, reason } => CertStatus::Revoked(RevokedInfo {
            revocation_time: generalized_time("revocationTime", at)?,
            revocation_reason: crl_reason(reason),
        }),
    })
}

/// The revocationReason to write: none for `Unspecified`.
fn crl_reason(reason: RevocationReason) -> Option<CrlReason> {
    match reason {
        RevocationReason::Unspecified => None,
        RevocationReason::KeyCompromise => Some(CrlReason::KeyCompromise),
        RevocationReason::CaCompromise => Some(CrlReason::CaCompromise),
        RevocationReason::AffiliationChanged => Some(CrlReason::AffiliationChanged),
        RevocationReason::Superseded => Some(CrlReason::Superseded),
        RevocationReason::CessationOfOperation => Some(CrlReason::CessationOfOperation),
        RevocationReason::PrivilegeWithdrawn => Some(CrlReason::PrivilegeWithdrawn),
        RevocationReason::AaCompromise => Some(CrlReason::AaCompromise),
    }
}

/// Unsuccessful response statuses (RFC 6960 §4.2.1), answered without
/// responseBytes and unsigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OcspErrorStatus {
    /// 1: the request does not parse or asks too much.
    MalformedRequest,
    /// 2: the responder failed (the token, the store).
    InternalError,
    /// 3: the responder is busy; try again.
    TryLater,
    /// 6: the responder does not answer for this CA.
    Unauthorized,
}

impl OcspErrorStatus {
    /// The OCSPResponseStatus ENUMERATED value.
    pub fn code(self) -> u8 {
        match self {
            Self::MalformedRequest => 1,
            Self::InternalError => 2,
            Self::TryLater => 3,
            Self::Unauthorized => 6,
        }
    }
}

/// The DER OCSPResponse for an unsuccessful status: `SEQUENCE {
/// ENUMERATED status }`, five constant bytes (`30 03 0a 01 01` for
/// malformedRequest).
pub fn ocsp_error_response(status: OcspErrorStatus) -> Vec<u8> {
    vec![0x30, 0x03, 0x0a, 0x01, status.code()]
}
