//! Certificate parameters: device certificates from a profile, the CA
//! hierarchy, and officer/station client certificates. Everything is built
//! with `rcgen` and signed through a [`crate::Signer`]; nothing here holds a
//! private key.

use der::asn1::{Ia5String, ObjectIdentifier as Oid, OctetString};
use der::{Any, Decode, Encode, Sequence, Tagged};
use rcgen::{
    BasicConstraints, CertificateParams, CrlDistributionPoint, CustomExtension, DistinguishedName,
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyUsagePurpose, SerialNumber,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_cert::ext::pkix::name::{GeneralName, OtherName};
use x509_cert::ext::pkix::{AccessDescription, AuthorityInfoAccessSyntax, SubjectAltName};

use crate::error::{Error, Result};
use crate::ident::{HwUuid, ModuleSerial};
use crate::oids;
use crate::profile::{EkuName, KeyType, KeyUsageName, Profile};
use crate::signer::SignatureAlgorithm;

/// RFC 4108 `HardwareModuleName ::= SEQUENCE { hwType OBJECT IDENTIFIER, hwSerialNum OCTET STRING }`.
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
pub struct HardwareModuleName {
    /// The hardware type OID (the vBus arc).
    pub hw_type: Oid,
    /// The module serial.
    pub hw_serial_num: OctetString,
}

/// A subject public key handed to rcgen: the raw key bits and their algorithm.
pub struct SubjectKey {
    algorithm: &'static rcgen::SignatureAlgorithm,
    raw: Vec<u8>,
}

impl SubjectKey {
    /// The device key of a checked CSR.
    pub fn new(key_type: KeyType, raw: Vec<u8>) -> Self {
        let algorithm = match key_type {
            KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::Ed25519 => &rcgen::PKCS_ED25519,
            KeyType::Rsa2048 | KeyType::Rsa3072 => &rcgen::PKCS_RSA_SHA256,
        };
        Self { algorithm, raw }
    }

    /// A CA or client key known by its signature algorithm.
    pub fn for_signer(alg: SignatureAlgorithm, raw: Vec<u8>) -> Self {
        Self::new(
            match alg {
                SignatureAlgorithm::EcdsaP256Sha256 => KeyType::EcdsaP256,
                SignatureAlgorithm::Ed25519 => KeyType::Ed25519,
            },
            raw,
        )
    }
}

impl rcgen::PublicKeyData for SubjectKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.algorithm
    }
}

/// RFC 7093 method 1: the leftmost 160 bits of SHA-256 of the subjectPublicKey bits.
pub fn key_identifier(public_key_raw: &[u8]) -> Vec<u8> {
    Sha256::digest(public_key_raw)[..20].to_vec()
}

/// Where relying parties find revocation information for certificates of one issuer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Urls {
    /// CRL distribution point URL of the issuer.
    pub crl: String,
    /// OCSP responder URL.
    pub ocsp: String,
}

fn enc(e: impl std::fmt::Display) -> Error {
    Error::Encoding(e.to_string())
}

fn printable(s: &str) -> Result<DnValue> {
    Ok(DnValue::PrintableString(
        rcgen::string::PrintableString::try_from(s).map_err(enc)?,
    ))
}

/// The SAN of a device: `URI:urn:uuid:…`, then the hardwareModuleName if the profile wants it.
pub(crate) fn device_san(
    serial: &ModuleSerial,
    uuid: &HwUuid,
    hw_type: Oid,
    with_hw_name: bool,
) -> Result<Vec<u8>> {
    let mut names = vec![GeneralName::UniformResourceIdentifier(
        Ia5String::new(&uuid.urn()).map_err(enc)?,
    )];
    if with_hw_name {
        let hw = HardwareModuleName {
            hw_type,
            hw_serial_num: OctetString::new(serial.as_str().as_bytes()).map_err(enc)?,
        };
        names.push(GeneralName::OtherName(OtherName {
            type_id: oids::HARDWARE_MODULE_NAME,
            value: Any::from_der(&hw.to_der().map_err(enc)?).map_err(enc)?,
        }));
    }
    SubjectAltName(names).to_der().map_err(enc)
}

pub(crate) fn ocsp_aia(url: &str) -> Result<Vec<u8>> {
    AuthorityInfoAccessSyntax(vec![AccessDescription {
        access_method: oids::AD_OCSP,
        access_location: GeneralName::UniformResourceIdentifier(Ia5String::new(url).map_err(enc)?),
    }])
    .to_der()
    .map_err(enc)
}

fn arcs(oid: Oid) -> Vec<u64> {
    oid.arcs().map(u64::from).collect()
}

/// What a device certificate is made of, all decided before building.
pub(crate) struct DeviceCert<'a> {
    pub serial: &'a [u8],
    pub module: &'a ModuleSerial,
    pub uuid: &'a HwUuid,
    pub profile: &'a Profile,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub urls: &'a Urls,
    pub hw_type: Oid,
    pub subject_key_id: Vec<u8>,
}

pub(crate) fn device_params(d: &DeviceCert<'_>) -> Result<CertificateParams> {
    let mut p = CertificateParams::default();
    p.serial_number = Some(SerialNumber::from_slice(d.serial));
    p.not_before = d.not_before;
    p.not_after = d.not_after;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CustomDnType(arcs(oids::SERIAL_NUMBER)),
        printable(d.module.as_str())?,
    );
    dn.push(
        DnType::CommonName,
        DnValue::Utf8String(d.module.as_str().to_owned()),
    );
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = d
        .profile
        .key_usage
        .iter()
        .map(|k| match k {
            KeyUsageName::DigitalSignature => KeyUsagePurpose::DigitalSignature,
            KeyUsageName::NonRepudiation => KeyUsagePurpose::ContentCommitment,
            KeyUsageName::KeyEncipherment => KeyUsagePurpose::KeyEncipherment,
            KeyUsageName::KeyAgreement => KeyUsagePurpose::KeyAgreement,
        })
        .collect();
    p.extended_key_usages = d
        .profile
        .extended_key_usage
        .iter()
        .map(|e| match e {
            EkuName::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
            EkuName::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
        })
        .collect();
    p.crl_distribution_points = vec![CrlDistributionPoint {
        uris: vec![d.urls.crl.clone()],
    }];
    p.custom_extensions = vec![
        CustomExtension::from_oid_content(
            &arcs(oids::SUBJECT_ALT_NAME),
            device_san(d.module, d.uuid, d.hw_type, d.profile.hardware_module_name)?,
        ),
        CustomExtension::from_oid_content(
            &arcs(oids::AUTHORITY_INFO_ACCESS),
            ocsp_aia(&d.urls.ocsp)?,
        ),
    ];
    p.use_authority_key_identifier_extension = true;
    p.key_identifier_method = KeyIdMethod::PreSpecified(d.subject_key_id.clone());
    Ok(p)
}

/// Roles of CA certificates in the hierarchy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaRole {
    /// Self-signed root of the device PKI.
    Root,
    /// Manufacturing intermediate (pathLen 0), signs device certificates.
    Intermediate,
    /// Self-signed CA for station and officer mTLS certificates (pathLen 0).
    Internal,
}

/// What every certificate of the hierarchy needs besides its names.
#[derive(Clone, Debug)]
pub struct Basics {
    /// 16 random bytes.
    pub serial: Vec<u8>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The subject's key identifier ([`key_identifier`]).
    pub subject_key_id: Vec<u8>,
}

impl Basics {
    fn params(&self) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.serial_number = Some(SerialNumber::from_slice(&self.serial));
        p.not_before = self.not_before;
        p.not_after = self.not_after;
        p.key_identifier_method = KeyIdMethod::PreSpecified(self.subject_key_id.clone());
        p
    }
}

/// Parameters of a CA certificate. `issuer_crl` is the issuer's CRL URL
/// (for the intermediate: the root's CRL), `None` for self-signed ones.
pub fn ca_params(
    role: CaRole,
    common_name: &str,
    organization: &str,
    basics: &Basics,
    issuer_crl: Option<&str>,
) -> CertificateParams {
    let mut p = basics.params();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, organization);
    p.distinguished_name.push(DnType::CommonName, common_name);
    p.is_ca = IsCa::Ca(match role {
        CaRole::Root => BasicConstraints::Unconstrained,
        CaRole::Intermediate | CaRole::Internal => BasicConstraints::Constrained(0),
    });
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.use_authority_key_identifier_extension = role == CaRole::Intermediate;
    if let Some(url) = issuer_crl {
        p.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec![url.to_owned()],
        }];
    }
    p
}

/// Parameters of an officer or station client certificate: CN = id, OU = role.
pub fn client_params(
    id: &str,
    role: &str,
    organization: &str,
    basics: &Basics,
) -> CertificateParams {
    let mut p = basics.params();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, organization);
    p.distinguished_name
        .push(DnType::OrganizationalUnitName, role);
    p.distinguished_name.push(DnType::CommonName, id);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    p
}

/// Parameters of the appliance's own TLS server certificate (issued by the
/// internal CA): CN = `name`, SAN = `dns` names and `ips`, KU
/// digitalSignature, EKU serverAuth.
pub fn server_params(
    name: &str,
    dns: &[String],
    ips: &[std::net::IpAddr],
    organization: &str,
    basics: &Basics,
) -> Result<CertificateParams> {
    let mut p = basics.params();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, organization);
    p.distinguished_name
        .push(DnType::OrganizationalUnitName, "server");
    p.distinguished_name.push(DnType::CommonName, name);
    for d in dns {
        let ia5 = rcgen::string::Ia5String::try_from(d.as_str())
            .map_err(|_| Error::Encoding(format!("DNS name {d:?} is not IA5")))?;
        p.subject_alt_names.push(rcgen::SanType::DnsName(ia5));
    }
    p.subject_alt_names
        .extend(ips.iter().map(|ip| rcgen::SanType::IpAddress(*ip)));
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// What rcgen needs of an existing CA certificate to issue under it: its
/// subject as a `DistinguishedName` and its subject key identifier.
pub fn issuer_params(ca_der: &[u8]) -> Result<CertificateParams> {
    let cert =
        x509_cert::Certificate::from_der(ca_der).map_err(|e| Error::Issuer(e.to_string()))?;
    let tbs = &cert.tbs_certificate;
    let mut dn = DistinguishedName::new();
    for rdn in tbs.subject.0.iter() {
        for atv in rdn.0.iter() {
            let ty = match atv.oid {
                oids::CN => DnType::CommonName,
                oids::O => DnType::OrganizationName,
                oids::OU => DnType::OrganizationalUnitName,
                other => DnType::CustomDnType(arcs(other)),
            };
            let text = crate::csr::directory_string(&atv.value).ok_or_else(|| {
                Error::Issuer(format!("subject attribute {} is not a string", atv.oid))
            })?;
            let value = match atv.value.tag() {
                der::Tag::PrintableString => printable(&text)?,
                der::Tag::Utf8String => DnValue::Utf8String(text),
                t => return Err(Error::Issuer(format!("subject attribute encoded as {t}"))),
            };
            dn.push(ty, value);
        }
    }
    let ski = tbs
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == oids::SUBJECT_KEY_ID)
        .and_then(|e| OctetString::from_der(e.extn_value.as_bytes()).ok())
        .ok_or_else(|| Error::Issuer("no subject key identifier".into()))?;
    let mut p = CertificateParams::default();
    p.distinguished_name = dn;
    p.key_identifier_method = KeyIdMethod::PreSpecified(ski.as_bytes().to_vec());
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(p)
}
