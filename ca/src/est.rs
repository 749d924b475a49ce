//! EST (RFC 7030) encodings: the certs-only CMS message of `/cacerts` and
//! `/simpleenroll`, the base64 transfer encoding of EST bodies, the device
//! identity an EST CSR carries, and the `/csrattrs` answer.
//!
//! Pure encodings: no HTTP, no policy. The HTTP layer base64-encodes what
//! [`certs_only`] and [`csr_attrs`] return ([`base64_body`]) and decodes the
//! CSR of an enrolment request with [`decode_base64_body`]; the CSR is then
//! checked in full by [`crate::check_csr`].

use base64::Engine as _;
use cms::cert::CertificateChoices;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{CertificateSet, EncapsulatedContentInfo, SignedData, SignerInfos};
use der::asn1::{ObjectIdentifier as Oid, SetOfVec};
use der::{Any, Decode, Encode};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::Extension;
use x509_cert::request::CertReq;
use x509_cert::Certificate;

use crate::csr::{directory_string, MAX_CSR_BYTES};
use crate::error::{Error, Result};
use crate::oids;

/// id-data (RFC 5652 §4).
const ID_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.1");
/// id-signedData (RFC 5652 §5.1).
const ID_SIGNED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.2");

/// Length of a line of [`base64_body`] output.
const BASE64_LINE: usize = 64;

/// The `urn:uuid:` prefix of the hardware-UUID URI (RFC 9562 §4).
const URN_UUID: &str = "urn:uuid:";

/// A degenerate CMS SignedData "certs-only" message holding `certs_der`,
/// as EST returns certificates (RFC 7030 §4.1.3 and §4.2.3; RFC 5652 §5):
///
/// ```text
/// ContentInfo { id-signedData, SignedData {
///     version 1, digestAlgorithms {}, encapContentInfo { id-data },
///     certificates <certs_der>, signerInfos {} } }
/// ```
///
/// DER. `certificates` is a `SET OF`, so DER puts the certificates in the
/// canonical order of their encodings, not in the order given: a client
/// must not rely on their order (for `/simpleenroll` pass the issued
/// certificate alone, as RFC 7030 §4.2.3 says). With no certificates the
/// optional `certificates` field is left out.
///
/// The certificates are ours (from the store), so one that does not parse,
/// or the same one given twice, is [`Error::Encoding`].
pub fn certs_only(certs_der: &[&[u8]]) -> Result<Vec<u8>> {
    let mut choices = Vec::with_capacity(certs_der.len());
    for (i, der) in certs_der.iter().enumerate() {
        let cert = Certificate::from_der(der)
            .map_err(|e| Error::Encoding(format!("certs-only: certificate {i}: {e}")))?;
        choices.push(CertificateChoices::Certificate(cert));
    }
    let certificates = if choices.is_empty() {
        None
    } else {
        Some(CertificateSet(SetOfVec::try_from(choices).map_err(
            |e| Error::Encoding(format!("certs-only: certificate set: {e}")),
        )?))
    };
    let signed_data = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::new(),
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: ID_DATA,
            econtent: None,
        },
        certificates,
        crls: None,
        signer_infos: SignerInfos(SetOfVec::new()),
    };
    let encoding = |e: der::Error| Error::Encoding(format!("certs-only: {e}"));
    let content = Any::encode_from(&signed_data).map_err(encoding)?;
    ContentInfo {
        content_type: ID_SIGNED_DATA,
        content,
    }
    .to_der()
    .map_err(encoding)
}

/// `der` in standard base64 (RFC 4648 §4, padded), in lines of 64
/// characters each ending in `\n`: the body of an EST response sent with
/// `Content-Transfer-Encoding: base64` (RFC 7030 §4). Empty input gives the
/// empty string.
pub fn base64_body(der: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / BASE64_LINE + 1);
    let mut rest = encoded.as_str();
    while !rest.is_empty() {
        // Base64 is ASCII, so any byte index is a char boundary.
        let (line, tail) = rest.split_at(rest.len().min(BASE64_LINE));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out
}

/// The bytes of an EST request body sent with
/// `Content-Transfer-Encoding: base64`: for `/simpleenroll` and
/// `/simplereenroll`, the DER of a PKCS#10 CSR (RFC 7030 §4.2.1).
///
/// Spaces, tabs, CR and LF anywhere are ignored; anything else must be
/// standard, canonically padded base64. A body that is empty or not base64
/// is [`Error::CsrMalformed`]; one that decodes to more than
/// [`MAX_CSR_BYTES`] is [`Error::CsrTooLarge`] (checked before decoding, so
/// a huge body is refused without being copied).
pub fn decode_base64_body(body: &[u8]) -> Result<Vec<u8>> {
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    // The most base64 characters a body within the limit can have.
    let max_chars = MAX_CSR_BYTES.div_ceil(3).saturating_mul(4);
    let chars = body.iter().filter(|b| !is_space(b)).count();
    if chars > max_chars {
        return Err(Error::CsrTooLarge {
            size: chars / 4 * 3,
            limit: MAX_CSR_BYTES,
        });
    }
    if chars == 0 {
        return Err(Error::CsrMalformed("EST body is empty".into()));
    }
    let compact: Vec<u8> = body.iter().filter(|b| !is_space(b)).copied().collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .map_err(|e| Error::CsrMalformed(format!("EST body is not base64: {e}")))?;
    if der.len() > MAX_CSR_BYTES {
        return Err(Error::CsrTooLarge {
            size: der.len(),
            limit: MAX_CSR_BYTES,
        });
    }
    Ok(der)
}

/// Who an EST CSR says it is, read by [`csr_identity`] before any check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CsrIdentity {
    /// The subject's `serialNumber` (2.5.4.5): the module serial.
    pub serial_number: Option<String>,
    /// The subject's `commonName` (2.5.4.3).
    pub common_name: Option<String>,
    /// The UUID of the subjectAltName URI `urn:uuid:<uuid>` in the
    /// extensionRequest attribute, as written (not yet parsed).
    pub hw_uuid: Option<String>,
}

/// The identity an EST CSR claims: over EST the module serial is the
/// subject's `serialNumber` and the hardware UUID the `urn:uuid:` URI of
/// the requested subjectAltName (PKCS#9 extensionRequest,
/// 1.2.840.113549.1.9.14).
///
/// Reads, does not verify: neither the signature nor the key nor the other
/// requested extensions are looked at ([`crate::check_csr`] does that, with
/// the identity found here). What is read must be unambiguous, though: a
/// subject with two `serialNumber`s or two `CN`s, or a subjectAltName with
/// two `urn:uuid:` URIs, is [`Error::CsrMalformed`]; two extensionRequest
/// attributes or two subjectAltName extensions are
/// [`Error::CsrDuplicateExtension`], as in [`crate::check_csr`].
pub fn csr_identity(csr_der: &[u8]) -> Result<CsrIdentity> {
    if csr_der.len() > MAX_CSR_BYTES {
        return Err(Error::CsrTooLarge {
            size: csr_der.len(),
            limit: MAX_CSR_BYTES,
        });
    }
    let csr = CertReq::from_der(csr_der).map_err(|e| Error::CsrMalformed(e.to_string()))?;
    let mut id = CsrIdentity::default();
    for rdn in csr.info.subject.0.iter() {
        for atv in rdn.0.iter() {
            let (slot, field) = match atv.oid {
                oids::SERIAL_NUMBER => (&mut id.serial_number, "serialNumber"),
                oids::CN => (&mut id.common_name, "CN"),
                _ => continue,
            };
            let value = directory_string(&atv.value).ok_or_else(|| {
                Error::CsrMalformed(format!("subject {field} is not a directory string"))
            })?;
            if slot.replace(value).is_some() {
                return Err(Error::CsrMalformed(format!(
                    "subject carries {field} more than once"
                )));
            }
        }
    }
    id.hw_uuid = hw_uuid(&csr)?;
    Ok(id)
}

/// The UUID of the one `urn:uuid:` URI in the requested subjectAltName.
fn hw_uuid(csr: &CertReq) -> Result<Option<String>> {
    let mut requests = csr
        .info
        .attributes
        .iter()
        .filter(|attr| attr.oid == oids::EXTENSION_REQUEST);
    let Some(request) = requests.next() else {
        return Ok(None);
    };
    if requests.next().is_some() || request.values.len() != 1 {
        return Err(Error::CsrDuplicateExtension(
            "extensionRequest attribute".into(),
        ));
    }
    let mut san = None;
    for value in request.values.iter() {
        let extensions: Vec<Extension> = value
            .decode_as()
            .map_err(|e| Error::CsrMalformed(format!("extensionRequest: {e}")))?;
        for ext in extensions {
            if ext.extn_id != oids::SUBJECT_ALT_NAME {
                continue;
            }
            if san.is_some() {
                return Err(Error::CsrDuplicateExtension(ext.extn_id.to_string()));
            }
            san = Some(
                SubjectAltName::from_der(ext.extn_value.as_bytes())
                    .map_err(|e| Error::CsrMalformed(format!("subjectAltName extension: {e}")))?,
            );
        }
    }
    let mut uuid = None;
    for name in san.iter().flat_map(|san| san.0.iter()) {
        let GeneralName::UniformResourceIdentifier(uri) = name else {
            continue;
        };
        let uri = uri.as_str();
        let Some(rest) = uri
            .get(..URN_UUID.len())
            .filter(|prefix| prefix.eq_ignore_ascii_case(URN_UUID))
            .and_then(|_| uri.get(URN_UUID.len()..))
        else {
            continue;
        };
        if uuid.replace(rest.to_owned()).is_some() {
            return Err(Error::CsrMalformed(
                "subjectAltName carries more than one urn:uuid URI".into(),
            ));
        }
    }
    Ok(uuid)
}

/// The `/csrattrs` answer (RFC 7030 §4.5.2), DER:
///
/// ```text
/// CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID
/// AttrOrOID ::= CHOICE { oid OBJECT IDENTIFIER, attribute Attribute }
/// ```
///
/// Three plain OIDs: put the module serial in the subject `serialNumber`
/// (2.5.4.5), sign with ecdsa-with-SHA256 (1.2.840.10045.4.3.2), and send
/// an extensionRequest (1.2.840.113549.1.9.14) for the subjectAltName with
/// the hardware UUID.
pub fn csr_attrs() -> Result<Vec<u8>> {
    let attrs: Vec<Oid> = vec![
        oids::SERIAL_NUMBER,
        oids::ECDSA_SHA256,
        oids::EXTENSION_REQUEST,
    ];
    attrs
        .to_der()
        .map_err(|e| Error::Encoding(format!("csrattrs: {e}")))
}
