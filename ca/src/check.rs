//! The profile lint: the to-be-signed certificate, exactly as it will be
//! signed, checked field by field against what the profile and the request
//! decided. Runs inside the signing callback, so a violation stops issuance
//! before the token signs anything (Boulder's "lint before sign").

use der::asn1::{ObjectIdentifier as Oid, OctetString};
use der::{Decode, Encode, Tagged};
use time::OffsetDateTime;
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage};
use x509_cert::TbsCertificate;

use crate::error::{Error, Result};
use crate::oids;
use crate::profile::Profile;

/// What the certificate must say.
pub(crate) struct Expected<'a> {
    pub serial: &'a [u8],
    pub signature_algorithm: Oid,
    pub issuer_subject_der: &'a [u8],
    pub issuer_key_id: &'a [u8],
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub module_serial: &'a str,
    pub spki_der: &'a [u8],
    pub subject_key_id: &'a [u8],
    pub profile: &'a Profile,
    pub san_der: &'a [u8],
    pub aia_der: &'a [u8],
    pub crl_url: &'a str,
}

fn violation(what: impl Into<String>) -> Error {
    Error::ProfileViolation(what.into())
}

/// Strip the sign byte of a DER INTEGER's content.
pub(crate) fn magnitude(bytes: &[u8]) -> &[u8] {
    let first_nonzero = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[first_nonzero..]
}

pub(crate) fn check_tbs(tbs_der: &[u8], e: &Expected<'_>) -> Result<()> {
    let tbs = TbsCertificate::from_der(tbs_der)
        .map_err(|err| violation(format!("TBS does not parse: {err}")))?;
    if tbs.version != x509_cert::Version::V3 {
        return Err(violation("version is not v3"));
    }
    let serial = tbs.serial_number.as_bytes();
    if serial.len() > 20 || serial.first().is_some_and(|b| b & 0x80 != 0) {
        return Err(violation("serial is negative or longer than 20 octets"));
    }
    if magnitude(serial) != magnitude(e.serial) {
        return Err(violation("serial differs from the one drawn"));
    }
    if tbs.signature.oid != e.signature_algorithm {
        return Err(violation(
            "signature algorithm differs from the issuer key's",
        ));
    }
    if tbs
        .issuer
        .to_der()
        .map_err(|err| violation(err.to_string()))?
        != e.issuer_subject_der
    {
        return Err(violation(
            "issuer name differs from the issuing CA's subject",
        ));
    }
    let nb = tbs.validity.not_before.to_unix_duration().as_secs();
    let na = tbs.validity.not_after.to_unix_duration().as_secs();
    if nb as i64 != e.not_before.unix_timestamp() || na as i64 != e.not_after.unix_timestamp() {
        return Err(violation("validity differs from the profile's"));
    }
    check_subject(&tbs, e.module_serial)?;
    if tbs
        .subject_public_key_info
        .to_der()
        .map_err(|err| violation(err.to_string()))?
        != e.spki_der
    {
        return Err(violation("public key differs from the CSR's"));
    }
    if tbs.issuer_unique_id.is_some() || tbs.subject_unique_id.is_some() {
        return Err(violation("unique identifiers present"));
    }
    check_extensions(&tbs, e)
}

fn check_subject(tbs: &TbsCertificate, module_serial: &str) -> Result<()> {
    let rdns: Vec<_> = tbs.subject.0.iter().collect();
    let want = [
        (oids::SERIAL_NUMBER, der::Tag::PrintableString),
        (oids::CN, der::Tag::Utf8String),
    ];
    if rdns.len() != want.len() {
        return Err(violation("subject is not exactly serialNumber, CN"));
    }
    for (rdn, (oid, tag)) in rdns.iter().zip(want) {
        let [atv] = rdn.0.as_slice() else {
            return Err(violation("multi-valued RDN in subject"));
        };
        if atv.oid != oid || atv.value.tag() != tag || atv.value.value() != module_serial.as_bytes()
        {
            return Err(violation(format!("subject {oid} is not the module serial")));
        }
    }
    Ok(())
}

fn check_extensions(tbs: &TbsCertificate, e: &Expected<'_>) -> Result<()> {
    let exts = tbs.extensions.as_deref().unwrap_or_default();
    let expected_ids = [
        oids::AUTHORITY_KEY_ID,
        oids::KEY_USAGE,
        oids::EXT_KEY_USAGE,
        oids::CRL_DISTRIBUTION_POINTS,
        oids::SUBJECT_KEY_ID,
        oids::BASIC_CONSTRAINTS,
        oids::SUBJECT_ALT_NAME,
        oids::AUTHORITY_INFO_ACCESS,
    ];
    let mut ids: Vec<Oid> = exts.iter().map(|x| x.extn_id).collect();
    ids.sort();
    let mut want = expected_ids.to_vec();
    want.sort();
    if ids != want {
        return Err(violation(format!(
            "extensions are {ids:?}, the profile gives {want:?}"
        )));
    }
    for x in exts {
        let v = x.extn_value.as_bytes();
        let bad = |what: &str| violation(format!("{what} is not as the profile says"));
        let ok = match x.extn_id {
            oids::BASIC_CONSTRAINTS => {
                x.critical
                    && BasicConstraints::from_der(v)
                        .is_ok_and(|b| !b.ca && b.path_len_constraint.is_none())
            }
            oids::KEY_USAGE => {
                x.critical
                    && KeyUsage::from_der(v).is_ok_and(|k| k.0 == e.profile.key_usage_flags())
            }
            oids::EXT_KEY_USAGE => {
                !x.critical
                    && ExtendedKeyUsage::from_der(v).is_ok_and(|k| k.0 == e.profile.eku_oids())
            }
            oids::SUBJECT_KEY_ID => {
                !x.critical
                    && OctetString::from_der(v).is_ok_and(|k| k.as_bytes() == e.subject_key_id)
            }
            oids::AUTHORITY_KEY_ID => {
                !x.critical
                    && AuthorityKeyIdentifier::from_der(v).is_ok_and(|a| {
                        a.key_identifier
                            .as_ref()
                            .is_some_and(|k| k.as_bytes() == e.issuer_key_id)
                            && a.authority_cert_issuer.is_none()
                            && a.authority_cert_serial_number.is_none()
                    })
            }
            oids::SUBJECT_ALT_NAME => !x.critical && v == e.san_der,
            oids::AUTHORITY_INFO_ACCESS => !x.critical && v == e.aia_der,
            oids::CRL_DISTRIBUTION_POINTS => !x.critical && is_single_crl_url(v, e.crl_url),
            _ => false,
        };
        if !ok {
            return Err(bad(&x.extn_id.to_string()));
        }
    }
    Ok(())
}

/// Exactly one distribution point holding exactly the issuer's CRL URL.
fn is_single_crl_url(der: &[u8], url: &str) -> bool {
    use x509_cert::ext::pkix::crl::dp::DistributionPoint;
    use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
    let Ok(points) = x509_cert::ext::pkix::CrlDistributionPoints::from_der(der) else {
        return false;
    };
    match points.0.as_slice() {
        [DistributionPoint {
            distribution_point: Some(DistributionPointName::FullName(names)),
            reasons: None,
            crl_issuer: None,
        }] => {
            matches!(names.as_slice(), [GeneralName::UniformResourceIdentifier(u)] if u.as_str() == url)
        }
        _ => false,
    }
}
