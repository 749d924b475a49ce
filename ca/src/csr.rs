//! PKCS#10 CSR checks: strict parsing, key and signature algorithm,
//! proof of possession, and what the CSR asks for.
//!
//! The CSR contributes exactly one thing to the certificate: its public key.
//! Everything it asks for beyond that is either what the profile would give
//! anyway (then harmless) or refused with its own error code.

use std::collections::HashSet;

use der::asn1::{Ia5StringRef, ObjectIdentifier as Oid, PrintableStringRef, Utf8StringRef};
use der::{Decode, Encode};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAltName};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::request::CertReq;

use crate::error::{Error, Result};
use crate::ident::{HwUuid, ModuleSerial};
use crate::oids;
use crate::profile::{KeyType, Profile};

/// Largest CSR accepted, PEM or DER. A device CSR is well under 1 KiB.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// A CSR that passed every check: what issuance needs from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedCsr {
    /// The key type.
    pub key_type: KeyType,
    /// DER SubjectPublicKeyInfo, exactly as in the CSR.
    pub spki_der: Vec<u8>,
    /// The subjectPublicKey bits (what rcgen calls the key's DER bytes).
    pub public_key_raw: Vec<u8>,
}

/// Decode PEM or DER input into the DER of one CSR.
fn decode(input: &[u8]) -> Result<Vec<u8>> {
    if input.len() > MAX_CSR_BYTES {
        return Err(Error::CsrTooLarge {
            size: input.len(),
            limit: MAX_CSR_BYTES,
        });
    }
    if !input.starts_with(b"-----BEGIN") {
        return Ok(input.to_vec());
    }
    let text =
        std::str::from_utf8(input).map_err(|_| Error::CsrMalformed("PEM is not ASCII".into()))?;
    // Exactly one PEM block and nothing but whitespace after it.
    let (label, der) = der::pem::decode_vec(text.trim_end().as_bytes())
        .map_err(|e| Error::CsrMalformed(format!("PEM: {e}")))?;
    if label != "CERTIFICATE REQUEST" && label != "NEW CERTIFICATE REQUEST" {
        return Err(Error::CsrMalformed(format!(
            "PEM label {label:?} is not CERTIFICATE REQUEST"
        )));
    }
    Ok(der)
}

/// The key type of the CSR in `input`, read without any other check (the
/// policy decides on it before the CSR's signature is verified). The errors
/// are the ones [`check`] would give for the same input.
pub fn key_type(input: &[u8]) -> Result<KeyType> {
    let der = decode(input)?;
    let csr = CertReq::from_der(&der).map_err(|e| Error::CsrMalformed(e.to_string()))?;
    classify_key(&csr)
}

/// SHA-256 (hex) of the CSR's SubjectPublicKeyInfo, read without any other
/// check: how a repeated request is recognised before the policy counts it.
pub fn spki_sha256(input: &[u8]) -> Result<String> {
    let der = decode(input)?;
    let csr = CertReq::from_der(&der).map_err(|e| Error::CsrMalformed(e.to_string()))?;
    let spki = csr
        .info
        .public_key
        .to_der()
        .map_err(|e| Error::CsrMalformed(e.to_string()))?;
    Ok(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&spki)))
}

/// Parse and check `input` for a device of `serial` / `uuid` under `profile`.
pub fn check(
    input: &[u8],
    profile: &Profile,
    serial: &ModuleSerial,
    uuid: &HwUuid,
) -> Result<CheckedCsr> {
    let csr = parse_strict(input)?;
    let key_type = classify_key(&csr)?;
    if !profile.key_types.contains(&key_type) {
        return Err(Error::KeyTypeNotAllowed {
            found: key_type.as_str().into(),
            profile: profile.name.clone(),
            allowed: profile
                .key_types
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    check_subject(&csr.info.subject, serial)?;
    check_extensions(&csr, profile, serial, uuid)?;
    possession(&csr, key_type)
}

/// A P-256 CSR whose signature proves possession of its key, nothing else
/// checked: how a station or officer asks the internal CA for its mTLS
/// credential (the subject comes from the officer, not from the CSR).
pub fn check_client(input: &[u8]) -> Result<CheckedCsr> {
    let csr = parse_strict(input)?;
    let key_type = classify_key(&csr)?;
    if key_type != KeyType::EcdsaP256 {
        return Err(Error::KeyTypeNotAllowed {
            found: key_type.as_str().into(),
            profile: "client credential".into(),
            allowed: KeyType::EcdsaP256.as_str().into(),
        });
    }
    possession(&csr, key_type)
}

/// One CSR in strict DER, version 1.
fn parse_strict(input: &[u8]) -> Result<CertReq> {
    let der = decode(input)?;
    let csr = CertReq::from_der(&der).map_err(|e| Error::CsrMalformed(e.to_string()))?;
    // Strict DER: what we parsed must re-encode to the very same bytes.
    if csr
        .to_der()
        .map_err(|e| Error::CsrMalformed(e.to_string()))?
        != der
    {
        return Err(Error::CsrMalformed(
            "not in DER (distinguished) encoding".into(),
        ));
    }
    if csr.info.version != x509_cert::request::Version::V1 {
        return Err(Error::CsrMalformed("version is not v1 (0)".into()));
    }
    Ok(csr)
}

/// The signature algorithm fits the key and the signature verifies.
fn possession(csr: &CertReq, key_type: KeyType) -> Result<CheckedCsr> {
    check_signature_algorithm(csr, key_type)?;
    let info_der = csr
        .info
        .to_der()
        .map_err(|e| Error::CsrMalformed(e.to_string()))?;
    let public_key_raw = csr.info.public_key.subject_public_key.raw_bytes().to_vec();
    let signature = csr
        .signature
        .as_bytes()
        .ok_or_else(|| Error::CsrMalformed("signature BIT STRING has unused bits".into()))?;
    verify(key_type, &public_key_raw, &info_der, signature)?;
    Ok(CheckedCsr {
        key_type,
        spki_der: csr
            .info
            .public_key
            .to_der()
            .map_err(|e| Error::CsrMalformed(e.to_string()))?,
        public_key_raw,
    })
}

fn classify_key(csr: &CertReq) -> Result<KeyType> {
    let spki = &csr.info.public_key;
    let alg = &spki.algorithm;
    let bits = spki.subject_public_key.raw_bytes();
    let other = |what: String| Error::KeyTypeNotAllowed {
        found: what,
        profile: String::new(),
        allowed: "ecdsa-p256, ed25519, rsa-2048, rsa-3072".into(),
    };
    match alg.oid {
        oids::EC_PUBLIC_KEY => {
            let curve = alg
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<Oid>().ok())
                .ok_or_else(|| other("EC key without a named curve".into()))?;
            if curve != oids::P256 {
                return Err(other(format!("EC key on curve {curve}")));
            }
            // On the curve? from_sec1_bytes checks the point equation.
            p256::PublicKey::from_sec1_bytes(bits).map_err(|_| {
                Error::KeyInvalid("P-256 point is not on the curve or malformed".into())
            })?;
            Ok(KeyType::EcdsaP256)
        }
        oids::ED25519 => {
            if alg.parameters.is_some() {
                return Err(Error::KeyInvalid(
                    "Ed25519 AlgorithmIdentifier must have no parameters".into(),
                ));
            }
            let raw: [u8; 32] = bits
                .try_into()
                .map_err(|_| Error::KeyInvalid(format!("Ed25519 key of {} bytes", bits.len())))?;
            ed25519_dalek::VerifyingKey::from_bytes(&raw)
                .map_err(|_| Error::KeyInvalid("Ed25519 point does not decode".into()))?;
            Ok(KeyType::Ed25519)
        }
        oids::RSA => {
            use rsa::pkcs1::DecodeRsaPublicKey;
            use rsa::traits::PublicKeyParts;
            let key = rsa::RsaPublicKey::from_pkcs1_der(bits)
                .map_err(|e| Error::KeyInvalid(format!("RSA key: {e}")))?;
            match key.n().bits() {
                b if b < 2048 => Err(Error::KeyTooWeak { bits: b }),
                2048 => Ok(KeyType::Rsa2048),
                3072 => Ok(KeyType::Rsa3072),
                b => Err(other(format!("rsa-{b}"))),
            }
        }
        oids::DSA => Err(other("dsa".into())),
        oid => Err(other(format!("unknown key algorithm {oid}"))),
    }
}

fn check_signature_algorithm(csr: &CertReq, key: KeyType) -> Result<()> {
    let oid = csr.algorithm.oid;
    let weak = [
        oids::ECDSA_SHA1,
        oids::RSA_SHA1,
        oids::RSA_MD5,
        oids::RSA_MD2,
        oids::DSA_SHA1,
    ];
    if weak.contains(&oid) {
        return Err(Error::CsrSignatureAlgorithmWeak(oid.to_string()));
    }
    let expected = match key {
        KeyType::EcdsaP256 => oids::ECDSA_SHA256,
        KeyType::Ed25519 => oids::ED25519,
        KeyType::Rsa2048 | KeyType::Rsa3072 => oids::RSA_SHA256,
    };
    if oid != expected {
        return Err(Error::CsrSignatureAlgorithmUnsupported(format!(
            "{oid} with a {} key",
            key.as_str()
        )));
    }
    // ECDSA and Ed25519 identifiers have absent parameters; RSA ones NULL.
    let params_ok = match (key, &csr.algorithm.parameters) {
        (KeyType::Rsa2048 | KeyType::Rsa3072, Some(p)) => p.is_null(),
        (KeyType::Rsa2048 | KeyType::Rsa3072, None) => true,
        (_, p) => p.is_none(),
    };
    if !params_ok {
        return Err(Error::CsrMalformed(
            "signature algorithm parameters not as RFC 5758/8410/4055 say".into(),
        ));
    }
    Ok(())
}

fn verify(key: KeyType, public_key: &[u8], message: &[u8], signature: &[u8]) -> Result<()> {
    let ok = match key {
        KeyType::EcdsaP256 => {
            p256::PublicKey::from_sec1_bytes(public_key)
                .map_err(|_| Error::KeyInvalid("P-256 point".into()))?;
            crate::signer::ecdsa_p256_sha256_verify(public_key, message, signature)
        }
        KeyType::Ed25519 => {
            let raw: [u8; 32] = public_key
                .try_into()
                .map_err(|_| Error::KeyInvalid("Ed25519 length".into()))?;
            let vk = ed25519_dalek::VerifyingKey::from_bytes(&raw)
                .map_err(|_| Error::KeyInvalid("Ed25519 point".into()))?;
            ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|sig| vk.verify_strict(message, &sig).is_ok())
        }
        KeyType::Rsa2048 | KeyType::Rsa3072 => {
            use rsa::pkcs1::DecodeRsaPublicKey;
            use rsa::signature::Verifier;
            let pk = rsa::RsaPublicKey::from_pkcs1_der(public_key)
                .map_err(|e| Error::KeyInvalid(e.to_string()))?;
            let vk = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(pk);
            rsa::pkcs1v15::Signature::try_from(signature)
                .is_ok_and(|sig| vk.verify(message, &sig).is_ok())
        }
    };
    if ok {
        Ok(())
    } else {
        Err(Error::CsrSignatureInvalid)
    }
}

/// The text of a directory string in any of the usual encodings.
pub fn directory_string(value: &der::Any) -> Option<String> {
    value
        .decode_as::<Utf8StringRef<'_>>()
        .map(|s| s.as_str().to_owned())
        .or_else(|_| {
            value
                .decode_as::<PrintableStringRef<'_>>()
                .map(|s| s.as_str().to_owned())
        })
        .or_else(|_| {
            value
                .decode_as::<Ia5StringRef<'_>>()
                .map(|s| s.as_str().to_owned())
        })
        .ok()
}

/// CN and serialNumber, if present, must name the device of the request.
fn check_subject(subject: &Name, serial: &ModuleSerial) -> Result<()> {
    for rdn in subject.0.iter() {
        for atv in rdn.0.iter() {
            let field = match atv.oid {
                oids::CN => "CN",
                oids::SERIAL_NUMBER => "serialNumber",
                _ => continue,
            };
            let found = directory_string(&atv.value).ok_or_else(|| {
                Error::CsrMalformed(format!("subject {field} is not a directory string"))
            })?;
            if found != serial.as_str() {
                return Err(Error::CsrSubjectMismatch {
                    field,
                    found: found.chars().take(64).collect(),
                    expected: serial.as_str().to_owned(),
                });
            }
        }
    }
    Ok(())
}

fn requested_extensions(csr: &CertReq) -> Result<Vec<Extension>> {
    let mut out = Vec::new();
    let mut seen_request = false;
    for attr in csr.info.attributes.iter() {
        if attr.oid != oids::EXTENSION_REQUEST {
            continue; // challengePassword and the like carry nothing we issue
        }
        if seen_request || attr.values.len() != 1 {
            return Err(Error::CsrDuplicateExtension(
                "extensionRequest attribute".into(),
            ));
        }
        seen_request = true;
        for value in attr.values.iter() {
            let req: Vec<Extension> = value
                .decode_as()
                .map_err(|e| Error::CsrMalformed(format!("extensionRequest: {e}")))?;
            out.extend(req);
        }
    }
    Ok(out)
}

fn check_extensions(
    csr: &CertReq,
    profile: &Profile,
    serial: &ModuleSerial,
    uuid: &HwUuid,
) -> Result<()> {
    let extensions = requested_extensions(csr)?;
    let mut seen = HashSet::new();
    for ext in &extensions {
        if !seen.insert(ext.extn_id) {
            return Err(Error::CsrDuplicateExtension(ext.extn_id.to_string()));
        }
    }
    let bad = |what: &str, e: der::Error| Error::CsrMalformed(format!("{what} extension: {e}"));
    for ext in &extensions {
        let value = ext.extn_value.as_bytes();
        match ext.extn_id {
            oids::BASIC_CONSTRAINTS => {
                let bc =
                    BasicConstraints::from_der(value).map_err(|e| bad("basicConstraints", e))?;
                if bc.ca {
                    return Err(Error::CsrRequestsCa);
                }
            }
            oids::KEY_USAGE => {
                let ku = KeyUsage::from_der(value).map_err(|e| bad("keyUsage", e))?;
                let allowed = profile.key_usage_flags();
                let extra = ku.0.bits() & !allowed.bits();
                if extra != 0 {
                    return Err(Error::CsrKeyUsageNotAllowed(format!("bits {extra:#06x}")));
                }
            }
            oids::EXT_KEY_USAGE => {
                let eku = ExtendedKeyUsage::from_der(value).map_err(|e| bad("extKeyUsage", e))?;
                let allowed = profile.eku_oids();
                if let Some(o) = eku.0.iter().find(|o| !allowed.contains(o)) {
                    return Err(Error::CsrEkuNotAllowed(o.to_string()));
                }
            }
            oids::NAME_CONSTRAINTS => return Err(Error::CsrNameConstraints),
            oids::SUBJECT_ALT_NAME => {
                let san = SubjectAltName::from_der(value).map_err(|e| bad("subjectAltName", e))?;
                for name in &san.0 {
                    if !is_own_name(name, serial, uuid) {
                        return Err(Error::CsrExtraSan(describe(name)));
                    }
                }
            }
            oids::SUBJECT_KEY_ID => {}
            oid if ext.critical => return Err(Error::CsrUnknownCriticalExtension(oid.to_string())),
            _ => {}
        }
    }
    Ok(())
}

/// The device's own names: its `urn:uuid:` URI, or its hardwareModuleName
/// carrying its serial.
fn is_own_name(name: &GeneralName, serial: &ModuleSerial, uuid: &HwUuid) -> bool {
    match name {
        GeneralName::UniformResourceIdentifier(uri) => {
            uri.as_str().eq_ignore_ascii_case(&uuid.urn())
        }
        GeneralName::OtherName(other) if other.type_id == oids::HARDWARE_MODULE_NAME => other
            .value
            .decode_as::<crate::build::HardwareModuleName>()
            .is_ok_and(|h| h.hw_serial_num.as_bytes() == serial.as_str().as_bytes()),
        _ => false,
    }
}

fn describe(name: &GeneralName) -> String {
    let s = match name {
        GeneralName::DnsName(d) => format!("DNS:{}", d.as_str()),
        GeneralName::Rfc822Name(m) => format!("email:{}", m.as_str()),
        GeneralName::UniformResourceIdentifier(u) => format!("URI:{}", u.as_str()),
        GeneralName::IpAddress(_) => "IP address".into(),
        GeneralName::OtherName(o) => format!("otherName {}", o.type_id),
        GeneralName::DirectoryName(_) => "directory name".into(),
        _ => "other name form".into(),
    };
    s.chars().take(128).collect()
}
