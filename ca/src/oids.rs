//! Object identifiers used across the crate.

use der::asn1::ObjectIdentifier as Oid;

/// id-ecPublicKey.
pub const EC_PUBLIC_KEY: Oid = Oid::new_unwrap("1.2.840.10045.2.1");
/// prime256v1 / secp256r1.
pub const P256: Oid = Oid::new_unwrap("1.2.840.10045.3.1.7");
/// id-Ed25519.
pub const ED25519: Oid = Oid::new_unwrap("1.3.101.112");
/// rsaEncryption.
pub const RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.1");
/// id-dsa.
pub const DSA: Oid = Oid::new_unwrap("1.2.840.10040.4.1");

/// ecdsa-with-SHA256.
pub const ECDSA_SHA256: Oid = Oid::new_unwrap("1.2.840.10045.4.3.2");
/// ecdsa-with-SHA1.
pub const ECDSA_SHA1: Oid = Oid::new_unwrap("1.2.840.10045.4.1");
/// sha256WithRSAEncryption.
pub const RSA_SHA256: Oid = Oid::new_unwrap("1.2.840.113549.1.1.11");
/// sha1WithRSAEncryption.
pub const RSA_SHA1: Oid = Oid::new_unwrap("1.2.840.113549.1.1.5");
/// md5WithRSAEncryption.
pub const RSA_MD5: Oid = Oid::new_unwrap("1.2.840.113549.1.1.4");
/// md2WithRSAEncryption.
pub const RSA_MD2: Oid = Oid::new_unwrap("1.2.840.113549.1.1.2");
/// dsa-with-sha1.
pub const DSA_SHA1: Oid = Oid::new_unwrap("1.2.840.10040.4.3");

/// id-ce-basicConstraints.
pub const BASIC_CONSTRAINTS: Oid = Oid::new_unwrap("2.5.29.19");
/// id-ce-keyUsage.
pub const KEY_USAGE: Oid = Oid::new_unwrap("2.5.29.15");
/// id-ce-extKeyUsage.
pub const EXT_KEY_USAGE: Oid = Oid::new_unwrap("2.5.29.37");
/// id-ce-subjectAltName.
pub const SUBJECT_ALT_NAME: Oid = Oid::new_unwrap("2.5.29.17");
/// id-ce-nameConstraints.
pub const NAME_CONSTRAINTS: Oid = Oid::new_unwrap("2.5.29.30");
/// id-ce-subjectKeyIdentifier.
pub const SUBJECT_KEY_ID: Oid = Oid::new_unwrap("2.5.29.14");
/// id-ce-authorityKeyIdentifier.
pub const AUTHORITY_KEY_ID: Oid = Oid::new_unwrap("2.5.29.35");
/// id-ce-cRLDistributionPoints.
pub const CRL_DISTRIBUTION_POINTS: Oid = Oid::new_unwrap("2.5.29.31");
/// id-pe-authorityInfoAccess.
pub const AUTHORITY_INFO_ACCESS: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.1.1");
/// id-ad-ocsp.
pub const AD_OCSP: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.48.1");
/// id-pkcs9-extensionRequest.
pub const EXTENSION_REQUEST: Oid = Oid::new_unwrap("1.2.840.113549.1.9.14");

/// id-kp-clientAuth.
pub const KP_CLIENT_AUTH: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.3.2");
/// id-kp-serverAuth.
pub const KP_SERVER_AUTH: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.3.1");

/// id-on-hardwareModuleName (RFC 4108).
pub const HARDWARE_MODULE_NAME: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.8.4");

/// id-at-commonName.
pub const CN: Oid = Oid::new_unwrap("2.5.4.3");
/// id-at-serialNumber.
pub const SERIAL_NUMBER: Oid = Oid::new_unwrap("2.5.4.5");
/// id-at-organizationName.
pub const O: Oid = Oid::new_unwrap("2.5.4.10");
/// id-at-organizationalUnitName.
pub const OU: Oid = Oid::new_unwrap("2.5.4.11");
