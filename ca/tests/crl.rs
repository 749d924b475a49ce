//! CRLs: every field of a decoded CRL is what was asked, the signature
//! verifies (P-256 and Ed25519), OpenSSL as the outside witness (signature,
//! text, and `verify -crl_check` on issued leaves), and tables of refusals.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use ca::{crl_entry, CrlEntries, CrlIssuer, Error, IssueRequest, RevocationReason, Signer};
use common::*;
use der::asn1::GeneralizedTime;
use der::{Decode, Encode};
use store::MemoryStore;
use time::macros::datetime;
use time::OffsetDateTime;
use x509_cert::crl::CertificateList;
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, CrlNumber, CrlReason};
use x509_cert::ext::Extension;
use x509_cert::time::Time;
use x509_cert::Certificate;

const ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const ED25519: &str = "1.3.101.112";
const THIS_UPDATE: OffsetDateTime = datetime!(2026-11-25 11:00 UTC);
const NEXT_UPDATE: OffsetDateTime = datetime!(2026-12-02 11:00 UTC);
/// A 16-octet serial whose high bit is set: written with a leading 0x00.
const HIGH_BIT_SERIAL: &str = "80a1b2c3d4e5f60718293a4b5c6d7e8f";

fn p256_issuer(h: &Hierarchy) -> CrlIssuer {
    let signer = SoftP256::from_key(h.intermediate_key.key().clone());
    CrlIssuer::new(&h.intermediate_der, Box::new(signer)).unwrap()
}

/// A self-signed Ed25519 CA certificate (keyCertSign, cRLSign) and its key.
fn ed25519_ca() -> (Vec<u8>, SoftEd25519) {
    let key = SoftEd25519::generate();
    let params = ca::ca_params(
        ca::CaRole::Root,
        "Test Ed25519 Root",
        "vBus",
        &ca::Basics {
            serial: random_serial().to_vec(),
            not_before: NOW - time::Duration::days(1),
            not_after: NOW + time::Duration::days(3650),
            subject_key_id: ca::key_identifier(key.public_key_raw()),
        },
        None,
    );
    let cert = params.self_signed(&ca::RcgenSigner::new(&key)).unwrap();
    (cert.der().to_vec(), key)
}

/// The subject key identifier of a certificate.
fn ski(cert_der: &[u8]) -> Vec<u8> {
    let cert = Certificate::from_der(cert_der).unwrap();
    let ext = find(cert.tbs_certificate.extensions.as_deref(), "2.5.29.14").unwrap();
    der::asn1::OctetString::from_der(ext.extn_value.as_bytes())
        .unwrap()
        .into_bytes()
}

fn find<'a>(exts: Option<&'a [Extension]>, oid: &str) -> Option<&'a Extension> {
    exts.into_iter()
        .flatten()
        .find(|e| e.extn_id.to_string() == oid)
}

fn unix(t: &Time) -> i64 {
    t.to_unix_duration().as_secs() as i64
}

fn entries(ders: &[Vec<u8>]) -> CrlEntries {
    let mut e = CrlEntries::new();
    for d in ders {
        e.push(d);
    }
    e
}

/// The CRL's signature verifies over its TBSCertList with `public_raw`.
fn signature_verifies(crl_der: &[u8], alg: ca::SignatureAlgorithm, public_raw: &[u8]) -> bool {
    let crl = CertificateList::from_der(crl_der).unwrap();
    ca::verify_signature(
        alg,
        public_raw,
        &crl.tbs_cert_list.to_der().unwrap(),
        crl.signature.raw_bytes(),
    )
}

#[test]
fn crl_fields_are_exactly_what_was_asked() {
    let h = hierarchy();
    let issuer = p256_issuer(&h);
    let revoked_at = datetime!(2026-11-20 08:30:15 UTC);
    let invalid_since = datetime!(2026-11-19 23:00:01 UTC);

    // One entry per reason (serials 01…08), one with an invalidity date, one
    // with the high bit set.
    let mut asked: Vec<(String, RevocationReason, Option<OffsetDateTime>)> = RevocationReason::ALL
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("{:02x}", i + 1), *r, None))
        .collect();
    asked.push((
        "0a0b".into(),
        RevocationReason::KeyCompromise,
        Some(invalid_since),
    ));
    asked.push((HIGH_BIT_SERIAL.into(), RevocationReason::Superseded, None));
    let ders: Vec<Vec<u8>> = asked
        .iter()
        .map(|(s, r, inv)| crl_entry(s, revoked_at, *r, *inv).unwrap())
        .collect();
    let number = 0x8000_0000_0000_0001u64;
    let der = issuer
        .sign(number, THIS_UPDATE, NEXT_UPDATE, &entries(&ders))
        .unwrap();

    let crl = CertificateList::from_der(&der).unwrap();
    assert_eq!(crl.to_der().unwrap(), der, "strict DER round trip");
    let tbs = &crl.tbs_cert_list;
    let inter = Certificate::from_der(&h.intermediate_der).unwrap();
    assert_eq!(tbs.version, x509_cert::Version::V2);
    for alg in [&tbs.signature, &crl.signature_algorithm] {
        assert_eq!(alg.oid.to_string(), ECDSA_SHA256);
        assert!(
            alg.parameters.is_none(),
            "ecdsa-with-SHA256 has no parameters"
        );
    }
    assert_eq!(
        tbs.issuer.to_der().unwrap(),
        inter.tbs_certificate.subject.to_der().unwrap()
    );
    assert!(matches!(tbs.this_update, Time::UtcTime(_)));
    assert_eq!(unix(&tbs.this_update), THIS_UPDATE.unix_timestamp());
    assert_eq!(
        tbs.next_update.as_ref().map(unix),
        Some(NEXT_UPDATE.unix_timestamp())
    );

    let revoked = tbs.revoked_certificates.as_ref().unwrap();
    assert_eq!(revoked.len(), asked.len());
    for (got, (serial, reason, inv)) in revoked.iter().zip(&asked) {
        // The INTEGER's content octets: the serial, 0x00 first if its high bit is set.
        let bytes = got.serial_number.as_bytes();
        let high_bit = u8::from_str_radix(&serial[..2], 16).unwrap() & 0x80 != 0;
        let want = if high_bit {
            format!("00{serial}")
        } else {
            serial.clone()
        };
        assert_eq!(hex::encode(bytes), want, "serial {serial}");
        assert_eq!(unix(&got.revocation_date), revoked_at.unix_timestamp());
        let exts = got.crl_entry_extensions.as_deref();
        if *reason == RevocationReason::Unspecified && inv.is_none() {
            assert!(exts.is_none(), "no crlEntryExtensions for unspecified");
        }
        for e in exts.into_iter().flatten() {
            assert!(!e.critical, "{} is non-critical", e.extn_id);
        }
        match find(exts, "2.5.29.21") {
            None => assert_eq!(*reason, RevocationReason::Unspecified, "serial {serial}"),
            Some(e) => {
                let code = CrlReason::from_der(e.extn_value.as_bytes()).unwrap() as u8;
                assert_eq!(code, reason.code(), "serial {serial}");
                assert_ne!(*reason, RevocationReason::Unspecified);
            }
        }
        let invalidity = find(exts, "2.5.29.24").map(|e| {
            GeneralizedTime::from_der(e.extn_value.as_bytes())
                .unwrap()
                .to_unix_duration()
                .as_secs() as i64
        });
        assert_eq!(
            invalidity,
            inv.map(|t| t.unix_timestamp()),
            "serial {serial}"
        );
        assert_eq!(
            exts.map_or(0, |e| e.len()),
            usize::from(*reason != RevocationReason::Unspecified) + usize::from(inv.is_some())
        );
    }
    // The high-bit serial, byte for byte: INTEGER of 17 octets, 00 first.
    let high = revoked.last().unwrap().serial_number.to_der().unwrap();
    assert_eq!(
        hex::encode(high),
        format!("021100{HIGH_BIT_SERIAL}"),
        "leading 0x00 keeps it positive"
    );

    // crlExtensions: exactly AKI (= the issuer's SKI) and cRLNumber, non-critical.
    let exts = tbs.crl_extensions.as_deref();
    let ids: Vec<(String, bool)> = exts
        .into_iter()
        .flatten()
        .map(|e| (e.extn_id.to_string(), e.critical))
        .collect();
    assert_eq!(
        ids,
        [
            ("2.5.29.35".to_owned(), false),
            ("2.5.29.20".to_owned(), false)
        ]
    );
    let aki =
        AuthorityKeyIdentifier::from_der(find(exts, "2.5.29.35").unwrap().extn_value.as_bytes())
            .unwrap();
    assert_eq!(
        aki.key_identifier.unwrap().as_bytes(),
        ski(&h.intermediate_der)
    );
    assert_eq!(
        ski(&h.intermediate_der),
        ca::key_identifier(h.intermediate_key.public_key_raw())
    );
    assert!(aki.authority_cert_issuer.is_none() && aki.authority_cert_serial_number.is_none());
    let number_ext = find(exts, "2.5.29.20").unwrap().extn_value.as_bytes();
    assert_eq!(hex::encode(number_ext), "0209008000000000000001");
    assert_eq!(
        CrlNumber::from_der(number_ext).unwrap().0.as_bytes(),
        number.to_be_bytes()
    );
}

#[test]
fn signature_verifies_with_the_issuer_key_p256_and_ed25519() {
    let entry = crl_entry("0123", THIS_UPDATE, RevocationReason::KeyCompromise, None).unwrap();
    let h = hierarchy();
    let (ed_cert, ed_key) = ed25519_ca();
    let ed_public = ed_key.public_key_raw().to_vec();
    let issuers = [
        (
            p256_issuer(&h),
            ca::SignatureAlgorithm::EcdsaP256Sha256,
            ECDSA_SHA256,
            h.intermediate_key.public_key_raw().to_vec(),
        ),
        (
            CrlIssuer::new(&ed_cert, Box::new(ed_key)).unwrap(),
            ca::SignatureAlgorithm::Ed25519,
            ED25519,
            ed_public,
        ),
    ];
    for (issuer, alg, oid, public) in issuers {
        for n in [0usize, 1, 300] {
            let der = issuer
                .sign(
                    7,
                    THIS_UPDATE,
                    NEXT_UPDATE,
                    &entries(&vec![entry.clone(); n]),
                )
                .unwrap();
            assert!(signature_verifies(&der, alg, &public), "{alg} {n}");
            let crl = CertificateList::from_der(&der).unwrap();
            assert_eq!(crl.signature_algorithm.oid.to_string(), oid);
            assert!(crl.signature_algorithm.parameters.is_none());
            assert_eq!(crl.tbs_cert_list.signature, crl.signature_algorithm);
            assert_eq!(
                crl.tbs_cert_list
                    .revoked_certificates
                    .as_ref()
                    .map_or(0, Vec::len),
                n
            );
            // One flipped bit in the TBSCertList and it no longer verifies.
            let mut tampered = der.clone();
            let i = tampered.len() / 2;
            tampered[i] ^= 0x01;
            let ok = CertificateList::from_der(&tampered)
                .is_ok_and(|_| signature_verifies(&tampered, alg, &public));
            assert!(!ok, "{alg} {n}: tampered CRL still verifies");
        }
    }
}

#[test]
fn empty_crl_has_no_revoked_certificates_field() {
    let h = hierarchy();
    let der = p256_issuer(&h)
        .sign(1, THIS_UPDATE, NEXT_UPDATE, &CrlEntries::new())
        .unwrap();
    let crl = CertificateList::from_der(&der).unwrap();
    assert!(crl.tbs_cert_list.revoked_certificates.is_none());
    // Byte level: nextUpdate (UTCTime, 13 chars) is followed directly by [0].
    let next = Time::UtcTime(
        der::asn1::UtcTime::from_unix_duration(std::time::Duration::from_secs(
            NEXT_UPDATE.unix_timestamp() as u64,
        ))
        .unwrap(),
    )
    .to_der()
    .unwrap();
    let at = der
        .windows(next.len())
        .position(|w| w == next.as_slice())
        .unwrap();
    assert_eq!(
        der[at + next.len()],
        0xa0,
        "crlExtensions follow nextUpdate"
    );
    assert!(crl.tbs_cert_list.crl_extensions.is_some());
}

#[test]
fn times_are_utctime_through_2049_and_generalizedtime_from_2050() {
    let h = hierarchy();
    let issuer = p256_issuer(&h);
    let last_utc = datetime!(2049-12-31 23:59:59 UTC);
    let first_gen = datetime!(2050-01-01 00:00:00 UTC);
    // Fractions of a second are dropped.
    let entry_utc = crl_entry(
        "01",
        last_utc + time::Duration::milliseconds(999),
        RevocationReason::Unspecified,
        None,
    )
    .unwrap();
    let entry_gen = crl_entry(
        "02",
        first_gen,
        RevocationReason::Unspecified,
        Some(last_utc),
    )
    .unwrap();
    // A time given in another offset is the same instant, written in UTC:
    // 2050 in Paris is still 2049 in UTC, so UTCTime.
    let entry_offset = crl_entry(
        "03",
        datetime!(2050-01-01 00:30:00 +01:00),
        RevocationReason::Unspecified,
        None,
    )
    .unwrap();
    assert_eq!(
        hex::encode(&entry_utc),
        format!("3012020101170d{}", hex::encode("491231235959Z"))
    );
    assert!(
        hex::encode(&entry_gen)[4..]
            .starts_with(&format!("020102180f{}", hex::encode("20500101000000Z"))),
        "2050: GeneralizedTime"
    );
    let decode = |der: &[u8]| x509_cert::crl::RevokedCert::from_der(der).unwrap();
    let e = decode(&entry_gen);
    assert!(matches!(e.revocation_date, Time::GeneralTime(_)));
    assert_eq!(unix(&e.revocation_date), first_gen.unix_timestamp());
    // invalidityDate is GeneralizedTime even before 2050 (RFC 5280 §5.3.2).
    let inv = find(e.crl_entry_extensions.as_deref(), "2.5.29.24").unwrap();
    assert_eq!(
        hex::encode(inv.extn_value.as_bytes()),
        format!("180f{}", hex::encode("20491231235959Z"))
    );
    let e = decode(&entry_offset);
    assert!(matches!(e.revocation_date, Time::UtcTime(_)));
    assert_eq!(
        hex::encode(&entry_offset[5..]),
        format!("170d{}", hex::encode("491231233000Z"))
    );

    let der = issuer
        .sign(2, last_utc, first_gen, &entries(&[entry_utc, entry_gen]))
        .unwrap();
    let crl = CertificateList::from_der(&der).unwrap();
    let tbs = &crl.tbs_cert_list;
    assert!(matches!(tbs.this_update, Time::UtcTime(_)));
    assert!(matches!(tbs.next_update, Some(Time::GeneralTime(_))));
    assert_eq!(unix(&tbs.this_update), last_utc.unix_timestamp());
    assert_eq!(
        tbs.next_update.as_ref().map(unix),
        Some(first_gen.unix_timestamp())
    );
    let der = hex::encode(&der);
    assert!(der.contains(&format!("170d{}", hex::encode("491231235959Z"))));
    assert!(der.contains(&format!("180f{}", hex::encode("20500101000000Z"))));
}

/// A signer holding the right public key that fails, or lies.
struct BadSigner {
    inner: SoftP256,
    lie: bool,
}

impl Signer for BadSigner {
    fn algorithm(&self) -> ca::SignatureAlgorithm {
        self.inner.algorithm()
    }
    fn public_key_raw(&self) -> &[u8] {
        self.inner.public_key_raw()
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, ca::SignerError> {
        if self.lie {
            // A valid signature, over other bytes.
            self.inner.sign(&message[1..])
        } else {
            Err("token removed".into())
        }
    }
}

#[test]
fn bad_inputs_are_refused_with_the_exact_error() {
    // crl_entry: the serial.
    let at = THIS_UPDATE;
    let unspecified = RevocationReason::Unspecified;
    let entry_rows: &[(&str, &str, &str)] = &[
        ("empty", "", "internal_error"),
        ("not hex", "zz", "internal_error"),
        ("odd length", "abc", "internal_error"),
        ("0x prefix", "0x01", "internal_error"),
        ("colons", "01:02", "internal_error"),
        ("21 octets", &"11".repeat(21), "internal_error"),
        (
            "20 octets, high bit: 21 with the 0x00",
            &format!("80{}", "00".repeat(19)),
            "internal_error",
        ),
    ];
    for (case, serial, code) in entry_rows {
        let err = crl_entry(serial, at, unspecified, None).unwrap_err();
        assert!(matches!(err, Error::Encoding(_)), "{case}: {err:?}");
        assert_eq!(err.code(), *code, "{case}");
    }
    // …and what is accepted at the edges.
    let ok_rows: &[(&str, &str, &str)] = &[
        (
            "20 octets, high bit clear",
            &format!("7f{}", "ff".repeat(19)),
            &format!("0214 7f{}", "ff".repeat(19)),
        ),
        ("leading zero octets dropped", "000001", "020101"),
        ("uppercase hex", "ABCD", "020300abcd"),
        ("zero", "00", "020100"),
    ];
    for (case, serial, integer) in ok_rows {
        let der = crl_entry(serial, at, unspecified, None).unwrap();
        let integer = integer.replace(' ', "");
        assert_eq!(&hex::encode(&der)[4..4 + integer.len()], integer, "{case}");
    }
    let err = crl_entry("01", datetime!(1969-12-31 23:59:59 UTC), unspecified, None).unwrap_err();
    assert!(matches!(err, Error::Encoding(_)), "before 1970: {err:?}");

    // CrlIssuer::new: the issuer certificate and its key.
    let h = hierarchy();
    let key = || Box::new(SoftP256::from_key(h.intermediate_key.key().clone()));
    let edit = |drop_oid: &str| {
        let mut c = Certificate::from_der(&h.intermediate_der).unwrap();
        if let Some(exts) = c.tbs_certificate.extensions.as_mut() {
            exts.retain(|e| e.extn_id.to_string() != drop_oid);
        }
        c.to_der().unwrap()
    };
    let no_crl_sign = {
        let k = SoftP256::generate();
        let mut p = ca::ca_params(
            ca::CaRole::Root,
            "No cRLSign",
            "vBus",
            &ca::Basics {
                serial: random_serial().to_vec(),
                not_before: NOW,
                not_after: NOW + time::Duration::days(1),
                subject_key_id: ca::key_identifier(k.public_key_raw()),
            },
            None,
        );
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let der = p
            .self_signed(&ca::RcgenSigner::new(&k))
            .unwrap()
            .der()
            .to_vec();
        (der, k)
    };
    let (ed_cert, _) = ed25519_ca();
    let issuer_rows: Vec<(&str, Vec<u8>, Box<dyn Signer>)> = vec![
        ("not DER", b"not a certificate".to_vec(), key()),
        ("truncated", h.intermediate_der[..100].to_vec(), key()),
        (
            "another P-256 key",
            h.intermediate_der.clone(),
            Box::new(SoftP256::generate()),
        ),
        (
            "an Ed25519 signer for a P-256 certificate",
            h.intermediate_der.clone(),
            Box::new(SoftEd25519::generate()),
        ),
        (
            "an Ed25519 signer for an Ed25519 cert of another key",
            ed_cert,
            Box::new(SoftEd25519::generate()),
        ),
        ("no subject key identifier", edit("2.5.29.14"), key()),
        ("no keyUsage", edit("2.5.29.15"), key()),
        (
            "keyUsage without cRLSign",
            no_crl_sign.0,
            Box::new(no_crl_sign.1),
        ),
    ];
    for (case, cert, signer) in issuer_rows {
        let err = CrlIssuer::new(&cert, signer).unwrap_err();
        assert!(matches!(err, Error::Issuer(_)), "{case}: {err:?}");
        assert_eq!(err.code(), "issuer_invalid", "{case}");
    }
    // Removing an unrelated extension leaves a usable issuer (the edit itself is sound).
    assert!(CrlIssuer::new(&edit("2.5.29.31"), key()).is_ok());

    // CrlIssuer::sign.
    let issuer = p256_issuer(&h);
    let one = entries(&[crl_entry("01", at, unspecified, None).unwrap()]);
    let mut malformed = one.clone();
    malformed.push(&[0x02, 0x01, 0x01]);
    let sign_rows: Vec<(&str, ca::Result<Vec<u8>>, &str)> = vec![
        (
            "nextUpdate before thisUpdate",
            issuer.sign(1, NEXT_UPDATE, THIS_UPDATE, &one),
            "internal_error",
        ),
        (
            "thisUpdate before 1970",
            issuer.sign(1, datetime!(1960-01-01 0:00 UTC), NEXT_UPDATE, &one),
            "internal_error",
        ),
        (
            "an entry that is not a SEQUENCE",
            issuer.sign(1, THIS_UPDATE, NEXT_UPDATE, &malformed),
            "internal_error",
        ),
        (
            "the signer fails",
            CrlIssuer::new(
                &h.intermediate_der,
                Box::new(BadSigner {
                    inner: SoftP256::from_key(h.intermediate_key.key().clone()),
                    lie: false,
                }),
            )
            .unwrap()
            .sign(1, THIS_UPDATE, NEXT_UPDATE, &one),
            "signer_failed",
        ),
        (
            "the signer signs other bytes",
            CrlIssuer::new(
                &h.intermediate_der,
                Box::new(BadSigner {
                    inner: SoftP256::from_key(h.intermediate_key.key().clone()),
                    lie: true,
                }),
            )
            .unwrap()
            .sign(1, THIS_UPDATE, NEXT_UPDATE, &one),
            "issued_signature_invalid",
        ),
    ];
    for (case, result, code) in sign_rows {
        let err = result.unwrap_err();
        assert_eq!(err.code(), code, "{case}: {err:?}");
    }
    // nextUpdate equal to thisUpdate is allowed.
    assert!(issuer.sign(1, THIS_UPDATE, THIS_UPDATE, &one).is_ok());
}

/// A fresh directory of its own for each test, under Cargo's target tmpdir.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("crl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, file: &str) -> String {
        self.0.join(file).to_str().unwrap().to_owned()
    }

    fn write(&self, file: &str, bytes: &[u8]) -> String {
        let p = self.path(file);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run `openssl args…`: (exit status success, stdout + stderr).
fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn pem(label: &str, der: &[u8]) -> String {
    der::pem::encode_string(label, der::pem::LineEnding::LF, der).unwrap()
}

#[test]
fn openssl_verifies_the_crl_and_revokes_exactly_the_listed_leaf() {
    let h = hierarchy();
    let dir = TempDir::new("openssl");
    let chain = dir.write(
        "chain.pem",
        format!(
            "{}{}",
            pem("CERTIFICATE", &h.intermediate_der),
            pem("CERTIFICATE", &h.root_der)
        )
        .as_bytes(),
    );

    // Two device certificates from the test CA; the first is revoked.
    let ca_ = new_ca(&h, Arc::new(MemoryStore::new()), ca::DEFAULT_PROFILES);
    let journal = ca::testing::MemoryJournal::default();
    let leaves: Vec<ca::Issued> = ["VBUS-CPU-2412-003847", "VBUS-CPU-2412-003848"]
        .iter()
        .map(|serial| {
            let id = uuid();
            ca_.issue(
                &IssueRequest {
                    module_serial: serial,
                    hw_uuid: &id,
                    csr: &csr(&SoftP256::generate(), serial, &id),
                    validity_days: None,
                    requested_by: "local:test",
                    new_key_allowed: false,
                },
                &journal,
            )
            .unwrap()
        })
        .collect();

    let mut list = CrlEntries::new();
    list.push(
        &crl_entry(
            &leaves[0].serial_number,
            THIS_UPDATE,
            RevocationReason::KeyCompromise,
            Some(THIS_UPDATE - time::Duration::days(1)),
        )
        .unwrap(),
    );
    for (i, r) in RevocationReason::ALL.iter().enumerate() {
        list.push(&crl_entry(&format!("{:04x}", 0x100 + i), THIS_UPDATE, *r, None).unwrap());
    }
    let crl = p256_issuer(&h)
        .sign(42, THIS_UPDATE, NEXT_UPDATE, &list)
        .unwrap();
    let crl_der = dir.write("x.crl", &crl);

    // The signature, by OpenSSL.
    let (ok, out) = openssl(&[
        "crl", "-in", &crl_der, "-inform", "DER", "-CAfile", &chain, "-noout",
    ]);
    assert!(ok && out.contains("verify OK"), "{out}");

    // The text: number, reasons, invalidity date, the leaf's serial.
    let (ok, text) = openssl(&["crl", "-in", &crl_der, "-inform", "DER", "-text", "-noout"]);
    assert!(ok, "{text}");
    let squeeze = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let text = squeeze(&text);
    for want in [
        "Version 2 (0x1)",
        "Signature Algorithm: ecdsa-with-SHA256",
        "Issuer: O = vBus, CN = Test Manufacturing Intermediate",
        "Last Update: Nov 25 11:00:00 2026 GMT",
        "Next Update: Dec 2 11:00:00 2026 GMT",
        "X509v3 CRL Number: 42",
        "X509v3 Authority Key Identifier:",
        "X509v3 CRL Reason Code: Key Compromise",
        "X509v3 CRL Reason Code: CA Compromise",
        "X509v3 CRL Reason Code: Affiliation Changed",
        "X509v3 CRL Reason Code: Superseded",
        "X509v3 CRL Reason Code: Cessation Of Operation",
        "X509v3 CRL Reason Code: Privilege Withdrawn",
        "X509v3 CRL Reason Code: AA Compromise",
        "Invalidity Date: Nov 24 11:00:00 2026 GMT",
        &format!("Serial Number: {}", leaves[0].serial_number.to_uppercase()),
    ] {
        assert!(text.contains(want), "{want:?} not in {text}");
    }
    assert!(
        !text.contains("Unspecified"),
        "no reasonCode for unspecified: {text}"
    );
    assert_eq!(
        text.matches("Serial Number:").count(),
        1 + RevocationReason::ALL.len()
    );
    let aki = hex::encode_upper(ski(&h.intermediate_der))
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    assert!(text.contains(&aki), "AKI {aki} not in {text}");

    // verify -crl_check: the listed leaf is revoked, the other is not.
    let (ok, _) = openssl(&[
        "crl",
        "-in",
        &crl_der,
        "-inform",
        "DER",
        "-outform",
        "PEM",
        "-out",
        &dir.path("crl.pem"),
    ]);
    assert!(ok);
    let attime = NOW.unix_timestamp().to_string();
    let verify = |leaf: &ca::Issued, name: &str| {
        let leaf = dir.write(name, pem("CERTIFICATE", &leaf.certificate_der).as_bytes());
        openssl(&[
            "verify",
            "-attime",
            &attime,
            "-crl_check",
            "-CAfile",
            &chain,
            "-CRLfile",
            &dir.path("crl.pem"),
            &leaf,
        ])
    };
    let (ok, out) = verify(&leaves[0], "revoked.pem");
    assert!(!ok, "{out}");
    assert!(
        out.contains("error 23") && out.contains("certificate revoked"),
        "{out}"
    );
    let (ok, out) = verify(&leaves[1], "good.pem");
    assert!(ok && out.contains("good.pem: OK"), "{out}");

    // An empty CRL of the same issuer: OpenSSL agrees there is nothing in it.
    let empty = p256_issuer(&h)
        .sign(43, THIS_UPDATE, NEXT_UPDATE, &CrlEntries::new())
        .unwrap();
    let empty = dir.write("empty.crl", &empty);
    let (ok, text) = openssl(&[
        "crl", "-in", &empty, "-inform", "DER", "-CAfile", &chain, "-text",
    ]);
    assert!(
        ok && text.contains("verify OK") && text.contains("No Revoked Certificates."),
        "{text}"
    );
}

#[test]
fn openssl_verifies_an_ed25519_crl() {
    let (cert, key) = ed25519_ca();
    let dir = TempDir::new("ed25519");
    let chain = dir.write("chain.pem", pem("CERTIFICATE", &cert).as_bytes());
    let issuer = CrlIssuer::new(&cert, Box::new(key)).unwrap();
    let entry = crl_entry(
        HIGH_BIT_SERIAL,
        THIS_UPDATE,
        RevocationReason::CessationOfOperation,
        None,
    )
    .unwrap();
    let crl = issuer
        .sign(5, THIS_UPDATE, NEXT_UPDATE, &entries(&[entry]))
        .unwrap();
    let crl = dir.write("x.crl", &crl);
    let (ok, out) = openssl(&[
        "crl", "-in", &crl, "-inform", "DER", "-CAfile", &chain, "-text",
    ]);
    assert!(ok && out.contains("verify OK"), "{out}");
    assert!(out.contains("Signature Algorithm: ED25519"), "{out}");
    assert!(out.contains(&HIGH_BIT_SERIAL.to_uppercase()), "{out}");
    assert!(out.contains("Cessation Of Operation"), "{out}");
}

#[test]
fn entries_count_and_length() {
    let a = crl_entry("01", THIS_UPDATE, RevocationReason::Unspecified, None).unwrap();
    let b = crl_entry("0203", THIS_UPDATE, RevocationReason::KeyCompromise, None).unwrap();
    let mut e = CrlEntries::new();
    assert!(e.is_empty());
    assert_eq!((e.len(), e.der_len()), (0, 0));
    e.push(&a);
    e.push(&b);
    assert!(!e.is_empty());
    assert_eq!((e.len(), e.der_len()), (2, a.len() + b.len()));
    // Unspecified: SEQUENCE of serial and date only (2 + 3 + 15 octets);
    // keyCompromise adds crlEntryExtensions holding one reasonCode.
    assert_eq!(hex::encode(&a[..5]), "3012020101");
    assert_eq!(a.len(), 20);
    assert_eq!(
        hex::encode(&b[2 + 4 + 15..]),
        "300c300a0603551d1504030a0101"
    );
}

/// Regression guard for the one-buffer assembly: the outer header is sized
/// for the longest signature before signing, and moved when the real one is
/// shorter and the length crosses an octet boundary (here 255/256).
#[test]
fn crls_of_every_size_around_a_length_boundary_are_well_formed() {
    let mut sizes = std::collections::BTreeSet::new();
    // An empty CRL of this issuer is 245 octets with a 31-character CN: CNs
    // of 40 to 52 characters put it on both sides of 3 + 256.
    for cn_len in 40..=52 {
        let key = SoftP256::generate();
        let public = key.public_key_raw().to_vec();
        let params = ca::ca_params(
            ca::CaRole::Root,
            &"C".repeat(cn_len),
            "vBus",
            &ca::Basics {
                serial: random_serial().to_vec(),
                not_before: NOW,
                not_after: NOW + time::Duration::days(1),
                subject_key_id: ca::key_identifier(&public),
            },
            None,
        );
        let cert = params.self_signed(&ca::RcgenSigner::new(&key)).unwrap();
        let issuer = CrlIssuer::new(cert.der(), Box::new(key)).unwrap();
        for _ in 0..8 {
            let der = issuer
                .sign(1, THIS_UPDATE, NEXT_UPDATE, &CrlEntries::new())
                .unwrap();
            let crl = CertificateList::from_der(&der).unwrap();
            assert_eq!(crl.to_der().unwrap(), der, "CN of {cn_len}");
            assert!(
                signature_verifies(&der, ca::SignatureAlgorithm::EcdsaP256Sha256, &public),
                "CN of {cn_len}"
            );
            sizes.insert(der.len());
        }
    }
    // Both sides of the boundary were produced: 30 81 xx and 30 82 01 xx.
    assert!(sizes.iter().any(|&n| n < 3 + 256), "{sizes:?}");
    assert!(sizes.iter().any(|&n| n >= 4 + 256), "{sizes:?}");
}

/// OpenSSL reads and verifies a CRL of 1,000,000 entries (about 51 MB).
/// Slow in debug builds: `cargo test -p ca --release --test crl -- --ignored`.
#[test]
#[ignore]
fn openssl_verifies_a_million_entry_crl() {
    let h = hierarchy();
    let dir = TempDir::new("million");
    let chain = dir.write(
        "chain.pem",
        format!(
            "{}{}",
            pem("CERTIFICATE", &h.intermediate_der),
            pem("CERTIFICATE", &h.root_der)
        )
        .as_bytes(),
    );
    let mut list = CrlEntries::with_capacity(1_000_000, 48);
    for i in 0..1_000_000u64 {
        let serial = format!(
            "{:032x}",
            u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
        );
        let reason = RevocationReason::ALL[(i % 8) as usize];
        list.push(&crl_entry(&serial, THIS_UPDATE, reason, None).unwrap());
    }
    let started = std::time::Instant::now();
    let crl = p256_issuer(&h)
        .sign(1_000_000, THIS_UPDATE, NEXT_UPDATE, &list)
        .unwrap();
    eprintln!("signed {} bytes in {:?}", crl.len(), started.elapsed());
    let crl = dir.write("x.crl", &crl);
    let started = std::time::Instant::now();
    let (ok, out) = openssl(&[
        "crl", "-in", &crl, "-inform", "DER", "-CAfile", &chain, "-noout",
    ]);
    eprintln!("openssl crl: {:?}", started.elapsed());
    assert!(ok && out.contains("verify OK"), "{out}");
}
