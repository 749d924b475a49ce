//! OCSP (RFC 6960): requests made by OpenSSL are parsed and the responses
//! are checked by OpenSSL (`openssl ocsp`, the outside witness); responses
//! round-trip through x509-ocsp with verifying signatures for P-256 and
//! Ed25519 issuers; a table of malformed requests; `issues`; the constant
//! error responses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use ca::{
    ocsp_error_response, parse_ocsp_request, CaRole, Error, IssueRequest, OcspErrorStatus,
    OcspHash, OcspResponder, OcspStatus, RcgenSigner, RevocationReason, SignatureAlgorithm, Signer,
    SignerError, MAX_OCSP_REQUEST_ENTRIES,
};
use common::*;
use der::asn1::{Any, BitString, Null, ObjectIdentifier as Oid, OctetString};
use der::{Decode, Encode, EncodePem, Reader, SliceReader};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use spki::AlgorithmIdentifierOwned;
use store::MemoryStore;
use time::macros::datetime;
use time::OffsetDateTime;
use x509_cert::ext::pkix::CrlReason;
use x509_cert::ext::Extension;
use x509_cert::serial_number::SerialNumber;
use x509_cert::Certificate;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspRequest, OcspResponse, OcspResponseStatus, Request,
    ResponderId, TbsRequest,
};

const CPU: &str = "VBUS-CPU-2412-003847";
const PWR: &str = "VBUS-PWR-2412-000112";
const SHA1_OID: Oid = Oid::new_unwrap("1.3.14.3.2.26");
const SHA256_OID: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.1");
const SHA384_OID: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.2");
const NONCE_OID: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.48.1.2");
const BASIC_OID: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.48.1.1");
const ACCEPTABLE_RESPONSES_OID: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.48.1.4");
const PRIVATE_OID: Oid = Oid::new_unwrap("1.3.6.1.4.1.61422.99.1");
const REVOKED_AT: OffsetDateTime = datetime!(2026-11-20 08:30:15 UTC);

/// A fresh directory of its own for each test, under Cargo's target tmpdir.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("ocsp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, file: &str, bytes: &[u8]) {
        std::fs::write(self.0.join(file), bytes).unwrap();
    }

    fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.0.join(file)).unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `openssl ocsp ARGS` (split on spaces) run in `dir`, so files are named
/// as written: (success, stdout, stderr).
fn ocsp(dir: &TempDir, args: &str) -> (bool, String, String) {
    let out = Command::new("openssl")
        .arg("ocsp")
        .args(args.split(' '))
        .current_dir(&dir.0)
        .output()
        .expect("openssl is installed");
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn pem(der: &[u8]) -> String {
    Certificate::from_der(der)
        .unwrap()
        .to_pem(der::pem::LineEnding::LF)
        .unwrap()
}

/// Issue a device certificate for `module` with the test CA; its DER and
/// serial.
fn issue(ca: &ca::Ca, module: &str) -> (Vec<u8>, String) {
    let key = SoftP256::generate();
    let id = uuid();
    let issued = ca
        .issue(
            &IssueRequest {
                module_serial: module,
                hw_uuid: &id,
                csr: &csr(&key, module, &id),
                validity_days: None,
                requested_by: "local:test",
                new_key_allowed: false,
            },
            &ca::testing::MemoryJournal::default(),
        )
        .unwrap();
    (issued.certificate_der, issued.serial_number)
}

fn responder(h: &Hierarchy) -> OcspResponder {
    OcspResponder::new(
        &h.intermediate_der,
        Box::new(SoftP256::from_key(h.intermediate_key.key().clone())),
    )
    .unwrap()
}

/// An intermediate with an Ed25519 key under a P-256 root: (DER, key).
fn ed25519_issuer() -> (Vec<u8>, SoftEd25519) {
    let root_key = SoftP256::generate();
    let basics = |key: &dyn Signer| ca::Basics {
        serial: random_serial().to_vec(),
        not_before: NOW - time::Duration::days(1),
        not_after: NOW + time::Duration::days(1825),
        subject_key_id: ca::key_identifier(key.public_key_raw()),
    };
    let root_params = ca::ca_params(CaRole::Root, "Ed Root", "vBus", &basics(&root_key), None);
    let root_signer = RcgenSigner::new(&root_key);
    let inter_key = SoftEd25519::generate();
    let inter_params = ca::ca_params(
        CaRole::Intermediate,
        "Ed Intermediate",
        "vBus",
        &basics(&inter_key),
        None,
    );
    let issuer = rcgen::Issuer::from_params(&root_params, &root_signer);
    let subject =
        ca::SubjectKey::for_signer(inter_key.algorithm(), inter_key.public_key_raw().to_vec());
    let inter = inter_params.signed_by(&subject, &issuer).unwrap();
    (inter.der().to_vec(), inter_key)
}

fn alg(oid: Oid, null: bool) -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid,
        parameters: null.then(|| Any::from(Null)),
    }
}

/// The CertID of `serial` (INTEGER content) under `issuer_der`, hashed
/// with `hash`, parameters NULL (as OpenSSL writes them).
fn cert_id(issuer_der: &[u8], serial: &[u8], hash: OcspHash) -> CertId {
    let issuer = Certificate::from_der(issuer_der).unwrap();
    let name = issuer.tbs_certificate.subject.to_der().unwrap();
    let key = issuer
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    let (oid, name_hash, key_hash) = match hash {
        OcspHash::Sha1 => (
            SHA1_OID,
            Sha1::digest(&name).to_vec(),
            Sha1::digest(key).to_vec(),
        ),
        OcspHash::Sha256 => (
            SHA256_OID,
            Sha256::digest(&name).to_vec(),
            Sha256::digest(key).to_vec(),
        ),
    };
    CertId {
        hash_algorithm: alg(oid, true),
        issuer_name_hash: OctetString::new(name_hash).unwrap(),
        issuer_key_hash: OctetString::new(key_hash).unwrap(),
        serial_number: SerialNumber::new(serial).unwrap(),
    }
}

fn ext(oid: Oid, critical: bool, value: &[u8]) -> Extension {
    Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(value).unwrap(),
    }
}

/// A nonce extension whose value is the DER `Nonce` OCTET STRING.
fn nonce_ext(nonce: &[u8]) -> Extension {
    ext(
        NONCE_OID,
        false,
        &OctetString::new(nonce).unwrap().to_der().unwrap(),
    )
}

fn request_with(ids: Vec<CertId>, exts: Option<Vec<Extension>>) -> OcspRequest {
    OcspRequest {
        tbs_request: TbsRequest {
            version: Default::default(),
            requestor_name: None,
            request_list: ids
                .into_iter()
                .map(|req_cert| Request {
                    req_cert,
                    single_request_extensions: None,
                })
                .collect(),
            request_extensions: exts,
        },
        optional_signature: None,
    }
}

fn request(ids: Vec<CertId>, exts: Option<Vec<Extension>>) -> Vec<u8> {
    request_with(ids, exts).to_der().unwrap()
}

/// The raw DER of the first element of the SEQUENCE `der` (the signed
/// ResponseData of a BasicOCSPResponse), as it was encoded.
fn first_element(der: &[u8]) -> Vec<u8> {
    let mut outer = SliceReader::new(der).unwrap();
    let header = der::Header::decode(&mut outer).unwrap();
    assert_eq!(header.tag, der::Tag::Sequence);
    outer.tlv_bytes().unwrap().to_vec()
}

/// The BasicOCSPResponse inside a successful OCSPResponse, and its raw bytes.
fn basic(resp: &[u8]) -> (BasicOcspResponse, Vec<u8>) {
    let r = OcspResponse::from_der(resp).unwrap();
    assert_eq!(r.response_status, OcspResponseStatus::Successful);
    let bytes = r.response_bytes.unwrap();
    assert_eq!(bytes.response_type, BASIC_OID);
    let raw = bytes.response.as_bytes().to_vec();
    (BasicOcspResponse::from_der(&raw).unwrap(), raw)
}

fn now_s() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp()).unwrap()
}

#[test]
fn openssl_requests_parse_and_openssl_verifies_the_responses() {
    let dir = TempDir::new("witness");
    let h = hierarchy();
    let ca = new_ca(&h, Arc::new(MemoryStore::new()), ca::DEFAULT_PROFILES);
    let (leaf, serial) = issue(&ca, CPU);
    let (leaf2, serial2) = issue(&ca, PWR);
    for (file, der) in [
        ("intermediate.pem", &h.intermediate_der),
        ("root.pem", &h.root_der),
        ("leaf.pem", &leaf),
        ("leaf2.pem", &leaf2),
    ] {
        dir.write(file, pem(der).as_bytes());
    }

    // Requests made by OpenSSL: nonce (the default), -no_nonce, two
    // certificates, SHA-256 CertIDs.
    let make = |file: &str, args: &str| {
        let (ok, _, err) = ocsp(
            &dir,
            &format!("-issuer intermediate.pem {args} -reqout {file}"),
        );
        assert!(ok, "{file}: {err}");
        parse_ocsp_request(&dir.read(file)).unwrap()
    };
    let info = make("req.der", "-cert leaf.pem");
    let no_nonce = make("no-nonce.der", "-no_nonce -cert leaf.pem");
    let two = make("two.der", "-cert leaf.pem -cert leaf2.pem");
    let sha256 = make("sha256.der", "-sha256 -cert leaf.pem");

    let serials = |i: &ca::OcspRequestInfo| -> Vec<String> {
        i.ids.iter().map(|id| id.serial_number.clone()).collect()
    };
    let hashes = |i: &ca::OcspRequestInfo| -> Vec<Option<OcspHash>> {
        i.ids.iter().map(|id| id.hash).collect()
    };
    assert_eq!(serials(&info), [serial.as_str()]);
    assert_eq!(hashes(&info), [Some(OcspHash::Sha1)]);
    // OpenSSL's nonce: a DER OCTET STRING of 16 random octets.
    let nonce = info
        .nonce
        .clone()
        .expect("OpenSSL sends a nonce by default");
    assert_eq!(OctetString::from_der(&nonce).unwrap().as_bytes().len(), 16);
    assert_eq!(serials(&no_nonce), [serial.as_str()]);
    assert_eq!(no_nonce.nonce, None);
    assert_eq!(serials(&two), [serial.as_str(), serial2.as_str()]);
    assert_eq!(hashes(&two), [Some(OcspHash::Sha1); 2]);
    assert!(two.nonce.is_some());
    assert_eq!(serials(&sha256), [serial.as_str()]);
    assert_eq!(hashes(&sha256), [Some(OcspHash::Sha256)]);
    assert!(sha256.nonce.is_some());
    let r = responder(&h);
    for i in [&info, &no_nonce, &two, &sha256] {
        assert!(i.ids.iter().all(|id| r.issues(id)));
    }

    // Each response is checked by two runs of `openssl ocsp`:
    // 1. `-reqin req.der -respin resp.der -CAfile root.pem`: the signature
    //    (the signer found in `certs`, chained to the root) and the nonce
    //    against the request answered. (Given `-cert`, OpenSSL builds a new
    //    request with a new nonce and ignores `-reqin`, hence two runs.)
    // 2. `-issuer intermediate.pem -cert leaf.pem -no_nonce -respin resp.der
    //    -CAfile root.pem`: the signature again and the status.
    // thisUpdate is the real now: OpenSSL checks it against its clock.
    let now = now_s();
    let next = now + time::Duration::hours(1);
    let fmt = |t: OffsetDateTime| {
        t.format(time::macros::format_description!(
            "[month repr:short] [day padding:space] [hour]:[minute]:[second] [year] GMT"
        ))
        .unwrap()
    };
    let times = format!(
        "\tThis Update: {}\n\tNext Update: {}\n",
        fmt(now),
        fmt(next)
    );
    let key_compromise = OcspStatus::Revoked {
        at: REVOKED_AT,
        reason: RevocationReason::KeyCompromise,
    };
    let cases = [
        (OcspStatus::Good, format!("leaf.pem: good\n{times}")),
        (
            key_compromise,
            format!(
                "leaf.pem: revoked\n{times}\tReason: keyCompromise\n\
                 \tRevocation Time: Nov 20 08:30:15 2026 GMT\n"
            ),
        ),
        (OcspStatus::Unknown, format!("leaf.pem: unknown\n{times}")),
    ];
    let respond = |info: &ca::OcspRequestInfo, statuses: &[OcspStatus], nonce: Option<&[u8]>| {
        let answers: Vec<_> = info.ids.iter().zip(statuses.iter().copied()).collect();
        r.respond(&answers, now, now, next, nonce).unwrap()
    };
    for (status, expected) in cases {
        dir.write(
            "resp.der",
            &respond(&info, &[status], info.nonce.as_deref()),
        );
        let run1 = ocsp(&dir, "-reqin req.der -respin resp.der -CAfile root.pem");
        assert_eq!(run1, (true, String::new(), "Response verify OK\n".into()));
        let run2 = ocsp(
            &dir,
            "-issuer intermediate.pem -cert leaf.pem -no_nonce -respin resp.der -CAfile root.pem",
        );
        assert_eq!(run2, (true, expected, "Response verify OK\n".into()));
    }

    // Two certificates, answered in request order; SHA-256 CertIDs.
    let superseded = OcspStatus::Revoked {
        at: REVOKED_AT,
        reason: RevocationReason::Superseded,
    };
    dir.write(
        "resp.der",
        &respond(&two, &[OcspStatus::Good, superseded], two.nonce.as_deref()),
    );
    let (ok, out, err) = ocsp(&dir, "-reqin two.der -respin resp.der -CAfile root.pem");
    assert_eq!(
        (ok, out.as_str(), err.as_str()),
        (true, "", "Response verify OK\n")
    );
    let (ok, out, err) = ocsp(
        &dir,
        "-issuer intermediate.pem -cert leaf.pem -cert leaf2.pem -no_nonce -respin resp.der \
         -CAfile root.pem",
    );
    assert_eq!(
        (ok, out, err.as_str()),
        (
            true,
            format!(
                "leaf.pem: good\n{times}leaf2.pem: revoked\n{times}\tReason: superseded\n\
                 \tRevocation Time: Nov 20 08:30:15 2026 GMT\n"
            ),
            "Response verify OK\n"
        )
    );
    dir.write(
        "resp.der",
        &respond(&sha256, &[OcspStatus::Good], sha256.nonce.as_deref()),
    );
    let run1 = ocsp(&dir, "-reqin sha256.der -respin resp.der -CAfile root.pem");
    assert_eq!(run1, (true, String::new(), "Response verify OK\n".into()));
    let run2 = ocsp(
        &dir,
        "-issuer intermediate.pem -sha256 -cert leaf.pem -no_nonce -respin resp.der \
         -CAfile root.pem",
    );
    assert_eq!(
        run2,
        (
            true,
            format!("leaf.pem: good\n{times}"),
            "Response verify OK\n".into()
        )
    );

    // Negative controls. OpenSSL does check the nonce: another one fails,
    // none at all is a warning.
    let other = OctetString::new([7u8; 16]).unwrap().to_der().unwrap();
    dir.write(
        "resp.der",
        &respond(&info, &[OcspStatus::Good], Some(&other)),
    );
    let (ok, _, err) = ocsp(&dir, "-reqin req.der -respin resp.der -CAfile root.pem");
    assert!(!ok && err.contains("Nonce Verify error"), "{err}");
    dir.write("resp.der", &respond(&info, &[OcspStatus::Good], None));
    let (ok, _, err) = ocsp(&dir, "-reqin req.der -respin resp.der -CAfile root.pem");
    assert!(ok, "{err}");
    assert_eq!(err, "WARNING: no nonce in response\nResponse verify OK\n");

    // OpenSSL finds the signer through `certs`: the same signed data
    // without it verifies only given `-verify_other intermediate.pem`.
    let (mut b, _) = basic(&respond(&info, &[OcspStatus::Good], info.nonce.as_deref()));
    b.certs = None;
    dir.write(
        "resp.der",
        &OcspResponse::successful(b).unwrap().to_der().unwrap(),
    );
    let (ok, _, err) = ocsp(&dir, "-reqin req.der -respin resp.der -CAfile root.pem");
    assert!(!ok && err.contains("signer certificate not found"), "{err}");
    let run = ocsp(
        &dir,
        "-reqin req.der -respin resp.der -CAfile root.pem -verify_other intermediate.pem",
    );
    assert_eq!(run, (true, String::new(), "Response verify OK\n".into()));
}

#[test]
fn responses_round_trip_and_verify_for_p256_and_ed25519_issuers() {
    let h = hierarchy();
    let (ed_der, ed_key) = ed25519_issuer();
    let issuers: [(&str, Vec<u8>, Box<dyn Signer>); 2] = [
        (
            "p256",
            h.intermediate_der.clone(),
            Box::new(SoftP256::from_key(h.intermediate_key.key().clone())),
        ),
        ("ed25519", ed_der, Box::new(ed_key)),
    ];
    for (name, issuer_der, signer) in issuers {
        let alg = signer.algorithm();
        let public = signer.public_key_raw().to_vec();
        let r = OcspResponder::new(&issuer_der, signer).unwrap();
        let ids = vec![
            cert_id(&issuer_der, &[0x00, 0x9f, 1, 2, 3], OcspHash::Sha1),
            cert_id(&issuer_der, &[0x42; 16], OcspHash::Sha256),
            // hashAlgorithm parameters absent rather than NULL: echoed as asked.
            CertId {
                hash_algorithm: self::alg(SHA1_OID, false),
                ..cert_id(&issuer_der, &[0x01, 0x00], OcspHash::Sha1)
            },
            cert_id(&issuer_der, &[0x05], OcspHash::Sha1),
        ];
        let nonce = OctetString::new([0xa5u8; 32]).unwrap().to_der().unwrap();
        let req = request(ids.clone(), Some(vec![nonce_ext(&[0xa5; 32])]));
        let info = parse_ocsp_request(&req).unwrap();
        assert_eq!(info.nonce.as_deref(), Some(nonce.as_slice()), "{name}");
        let serials: Vec<_> = info.ids.iter().map(|i| i.serial_number.as_str()).collect();
        assert_eq!(
            serials,
            ["9f010203", &"42".repeat(16), "0100", "05"],
            "{name}"
        );
        let statuses = [
            OcspStatus::Good,
            OcspStatus::Revoked {
                at: REVOKED_AT,
                reason: RevocationReason::KeyCompromise,
            },
            OcspStatus::Revoked {
                at: REVOKED_AT,
                reason: RevocationReason::Unspecified,
            },
            OcspStatus::Unknown,
        ];
        let answers: Vec<_> = info.ids.iter().zip(statuses).collect();
        let produced = datetime!(2026-11-25 12:00:00.987 UTC);
        let resp = r
            .respond(
                &answers,
                produced,
                NOW,
                NOW + time::Duration::days(1),
                info.nonce.as_deref(),
            )
            .unwrap();

        let (b, raw) = basic(&resp);
        // The signature verifies over the ResponseData bytes as sent.
        let tbs = first_element(&raw);
        assert_eq!(tbs, b.tbs_response_data.to_der().unwrap(), "{name}");
        assert!(
            ca::verify_signature(alg, &public, &tbs, b.signature.raw_bytes()),
            "{name}"
        );
        let expected_oid = match alg {
            SignatureAlgorithm::EcdsaP256Sha256 => Oid::new_unwrap("1.2.840.10045.4.3.2"),
            _ => Oid::new_unwrap("1.3.101.112"),
        };
        assert_eq!(b.signature_algorithm.oid, expected_oid, "{name}");
        assert_eq!(b.signature_algorithm.parameters, None, "{name}");
        assert_eq!(
            b.certs.as_deref(),
            Some(&[Certificate::from_der(&issuer_der).unwrap()][..]),
            "{name}"
        );

        let d = &b.tbs_response_data;
        assert_eq!(
            d.responder_id,
            ResponderId::ByKey(OctetString::new(Sha1::digest(&public).to_vec()).unwrap()),
            "{name}"
        );
        assert_eq!(
            d.produced_at.0.to_unix_duration().as_secs() as i64,
            NOW.unix_timestamp(),
            "{name}: whole seconds"
        );
        // Nonce echoed byte-for-byte, not critical.
        let exts = d.response_extensions.as_deref().unwrap();
        assert_eq!(exts, [ext(NONCE_OID, false, &nonce)], "{name}");

        assert_eq!(d.responses.len(), 4, "{name}");
        for (i, (s, id)) in d.responses.iter().zip(&ids).enumerate() {
            let asked = id.to_der().unwrap();
            assert_eq!(s.cert_id.to_der().unwrap(), asked, "{name} #{i}");
            assert!(req.windows(asked.len()).any(|w| w == asked), "{name} #{i}");
            assert!(raw.windows(asked.len()).any(|w| w == asked), "{name} #{i}");
            assert_eq!(
                s.this_update.0.to_unix_duration().as_secs() as i64,
                NOW.unix_timestamp()
            );
            assert_eq!(
                s.next_update.unwrap().0.to_unix_duration().as_secs() as i64,
                (NOW + time::Duration::days(1)).unix_timestamp()
            );
            assert_eq!(s.single_extensions, None);
        }
        assert_eq!(d.responses[0].cert_status, CertStatus::good(), "{name}");
        let CertStatus::Revoked(rev) = d.responses[1].cert_status else {
            panic!("{name}: not revoked")
        };
        assert_eq!(
            rev.revocation_time.0.to_unix_duration().as_secs() as i64,
            REVOKED_AT.unix_timestamp()
        );
        assert_eq!(rev.revocation_reason, Some(CrlReason::KeyCompromise));
        let CertStatus::Revoked(rev) = d.responses[2].cert_status else {
            panic!("{name}: not revoked")
        };
        assert_eq!(
            rev.revocation_reason, None,
            "{name}: unspecified is left out"
        );
        assert_eq!(d.responses[3].cert_status, CertStatus::unknown(), "{name}");

        // No nonce asked, none sent.
        let resp = r.respond(&answers[..1], NOW, NOW, NOW, None).unwrap();
        assert_eq!(basic(&resp).0.tbs_response_data.response_extensions, None);
    }
}

#[test]
fn respond_refuses_what_would_be_a_false_statement_or_a_bad_signature() {
    let h = hierarchy();
    let other = hierarchy();
    let r = responder(&h);
    let own = parse_ocsp_request(&request(
        vec![cert_id(&h.intermediate_der, &[1], OcspHash::Sha1)],
        None,
    ))
    .unwrap();
    let foreign = parse_ocsp_request(&request(
        vec![cert_id(&other.intermediate_der, &[1], OcspHash::Sha1)],
        None,
    ))
    .unwrap();
    let later = NOW + time::Duration::hours(1);
    let code = |res: ca::Result<Vec<u8>>| res.map(|_| ()).map_err(|e| e.code());

    // Good or revoked for another CA's certificate: refused; unknown: fine.
    for status in [
        OcspStatus::Good,
        OcspStatus::Revoked {
            at: NOW,
            reason: RevocationReason::Superseded,
        },
    ] {
        assert_eq!(
            code(r.respond(&[(&foreign.ids[0], status)], NOW, NOW, later, None)),
            Err("internal_error")
        );
    }
    assert_eq!(
        code(r.respond(
            &[(&foreign.ids[0], OcspStatus::Unknown)],
            NOW,
            NOW,
            later,
            None
        )),
        Ok(())
    );
    // No answers; nextUpdate before thisUpdate; a time before 1970.
    assert_eq!(
        code(r.respond(&[], NOW, NOW, later, None)),
        Err("internal_error")
    );
    assert_eq!(
        code(r.respond(&[(&own.ids[0], OcspStatus::Good)], NOW, later, NOW, None)),
        Err("internal_error")
    );
    let old = datetime!(1969-12-31 23:59:59 UTC);
    assert_eq!(
        code(r.respond(&[(&own.ids[0], OcspStatus::Good)], old, NOW, later, None)),
        Err("internal_error")
    );

    // A signer whose signature does not verify: nothing is returned.
    struct Broken(SoftP256);
    impl Signer for Broken {
        fn algorithm(&self) -> SignatureAlgorithm {
            self.0.algorithm()
        }
        fn public_key_raw(&self) -> &[u8] {
            self.0.public_key_raw()
        }
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignerError> {
            self.0.sign(&[message, b"!"].concat())
        }
    }
    let broken = OcspResponder::new(
        &h.intermediate_der,
        Box::new(Broken(SoftP256::from_key(h.intermediate_key.key().clone()))),
    )
    .unwrap();
    assert!(matches!(
        broken.respond(&[(&own.ids[0], OcspStatus::Good)], NOW, NOW, later, None),
        Err(Error::IssuedSignatureInvalid)
    ));

    // A failing signer.
    struct Failing(SoftP256);
    impl Signer for Failing {
        fn algorithm(&self) -> SignatureAlgorithm {
            self.0.algorithm()
        }
        fn public_key_raw(&self) -> &[u8] {
            self.0.public_key_raw()
        }
        fn sign(&self, _: &[u8]) -> Result<Vec<u8>, SignerError> {
            Err("token unavailable".into())
        }
    }
    let failing = OcspResponder::new(
        &h.intermediate_der,
        Box::new(Failing(SoftP256::from_key(
            h.intermediate_key.key().clone(),
        ))),
    )
    .unwrap();
    assert!(matches!(
        failing.respond(&[(&own.ids[0], OcspStatus::Good)], NOW, NOW, later, None),
        Err(Error::Signer(_))
    ));

    // The issuer certificate must parse and hold the signer's key.
    for (case, der) in [
        ("garbage", b"not a certificate".to_vec()),
        ("another CA's certificate", other.intermediate_der.clone()),
    ] {
        let res = OcspResponder::new(
            &der,
            Box::new(SoftP256::from_key(h.intermediate_key.key().clone())),
        );
        assert!(matches!(res, Err(Error::Issuer(_))), "{case}");
    }
}

#[test]
fn malformed_requests_are_refused() {
    let h = hierarchy();
    let id = |n: u8| cert_id(&h.intermediate_der, &[0x10, n], OcspHash::Sha1);
    let valid = request(vec![id(1)], Some(vec![nonce_ext(&[9; 16])]));
    assert!(parse_ocsp_request(&valid).is_ok());
    let with_trailing = [valid.as_slice(), &[0]].concat();
    // BER indefinite length for the outer SEQUENCE (the valid request's
    // length is in one octet here).
    assert!(valid[1] < 0x80);
    let indefinite = [&[0x30, 0x80][..], &valid[2..], &[0, 0]].concat();
    let many = |n: usize| request((0..n).map(|i| id(i as u8)).collect(), None);
    let mut negative = id(1);
    negative.serial_number = SerialNumber::from_der(&[0x02, 0x02, 0xff, 0x01]).unwrap();
    let single_ext = |critical: bool| {
        let mut r = request_with(vec![id(1)], None);
        r.tbs_request.request_list[0].single_request_extensions =
            Some(vec![ext(PRIVATE_OID, critical, &[0x05, 0x00])]);
        r.to_der().unwrap()
    };
    let acceptable = |oids: &[Oid]| {
        ext(
            ACCEPTABLE_RESPONSES_OID,
            true,
            &oids.to_vec().to_der().unwrap(),
        )
    };

    let rows: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"GET /ocsp HTTP/1.1\r\n".to_vec()),
        ("empty", vec![]),
        ("truncated", valid[..valid.len() - 1].to_vec()),
        ("header only", valid[..2].to_vec()),
        ("trailing byte", with_trailing),
        ("BER indefinite length", indefinite),
        ("a certificate", h.intermediate_der.clone()),
        ("zero entries", many(0)),
        ("17 entries", many(MAX_OCSP_REQUEST_ENTRIES + 1)),
        ("10,000 entries", {
            let one = request(vec![id(1)], None);
            // Build the list by hand: 10,000 copies of the one Request.
            let r = first_element(&first_element(&one));
            let req_tlv = {
                let mut rd = SliceReader::new(&r).unwrap();
                der::Header::decode(&mut rd).unwrap();
                rd.tlv_bytes().unwrap().to_vec()
            };
            let list = der_seq(&req_tlv.repeat(10_000));
            der_seq(&der_seq(&list))
        }),
        (
            "empty nonce (empty OCTET STRING)",
            request(vec![id(1)], Some(vec![nonce_ext(&[])])),
        ),
        (
            "empty nonce (empty extnValue)",
            request(vec![id(1)], Some(vec![ext(NONCE_OID, false, &[])])),
        ),
        (
            "200-octet nonce",
            request(vec![id(1)], Some(vec![nonce_ext(&[1; 200])])),
        ),
        (
            "129-octet nonce",
            request(vec![id(1)], Some(vec![nonce_ext(&[1; 129])])),
        ),
        (
            "nonce twice",
            request(
                vec![id(1)],
                Some(vec![nonce_ext(&[1; 16]), nonce_ext(&[2; 16])]),
            ),
        ),
        (
            "unknown critical request extension",
            request(
                vec![id(1)],
                Some(vec![ext(PRIVATE_OID, true, &[0x05, 0x00])]),
            ),
        ),
        (
            "unknown critical single request extension",
            single_ext(true),
        ),
        (
            "AcceptableResponses without id-pkix-ocsp-basic",
            request(vec![id(1)], Some(vec![acceptable(&[PRIVATE_OID])])),
        ),
        ("negative serial", request(vec![negative], None)),
    ];
    for (case, der) in rows {
        match parse_ocsp_request(&der) {
            Err(e @ Error::OcspMalformed(_)) => assert_eq!(e.code(), "ocsp_malformed_request"),
            other => panic!("{case}: {other:?}"),
        }
    }

    // Accepted: the limits themselves, what is unknown but not critical, a
    // raw (pre-RFC 8954) nonce, a signed request.
    let raw_nonce = b"0123456789abcdef";
    let mut signed = request_with(vec![id(1)], None);
    signed.optional_signature = Some(x509_ocsp::Signature {
        signature_algorithm: alg(Oid::new_unwrap("1.2.840.10045.4.3.2"), false),
        signature: BitString::from_bytes(&[0x30, 0x00]).unwrap(),
        certs: Some(vec![Certificate::from_der(&h.root_der).unwrap()]),
    });
    let ok_rows: Vec<OkRow> = vec![
        ("16 entries", many(MAX_OCSP_REQUEST_ENTRIES), 16, None),
        (
            "128-octet nonce",
            request(vec![id(1)], Some(vec![nonce_ext(&[1; 128])])),
            1,
            Some(OctetString::new([1; 128]).unwrap().to_der().unwrap()),
        ),
        (
            "1-octet nonce",
            request(vec![id(1)], Some(vec![nonce_ext(&[1])])),
            1,
            Some(vec![0x04, 0x01, 0x01]),
        ),
        (
            "raw nonce",
            request(vec![id(1)], Some(vec![ext(NONCE_OID, false, raw_nonce)])),
            1,
            Some(raw_nonce.to_vec()),
        ),
        (
            "unknown non-critical extensions",
            request(
                vec![id(1)],
                Some(vec![ext(PRIVATE_OID, false, &[0x05, 0x00])]),
            ),
            1,
            None,
        ),
        (
            "unknown non-critical single extension",
            single_ext(false),
            1,
            None,
        ),
        (
            "AcceptableResponses with id-pkix-ocsp-basic",
            request(vec![id(1)], Some(vec![acceptable(&[BASIC_OID])])),
            1,
            None,
        ),
        ("signed request", signed.to_der().unwrap(), 1, None),
    ];
    for (case, der, n, nonce) in ok_rows {
        let info = parse_ocsp_request(&der).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(info.ids.len(), n, "{case}");
        assert_eq!(info.nonce, nonce, "{case}");
    }
}

/// A request that parses: (case, request, entries, nonce).
type OkRow = (&'static str, Vec<u8>, usize, Option<Vec<u8>>);

/// SEQUENCE { content }, DER.
fn der_seq(content: &[u8]) -> Vec<u8> {
    let len = der::Length::try_from(content.len()).unwrap();
    let mut out = der::Header::new(der::Tag::Sequence, len)
        .unwrap()
        .to_der()
        .unwrap();
    out.extend_from_slice(content);
    out
}

/// Guards against panics on hostile input: every prefix and every one-byte
/// change of a valid request either parses or is refused as malformed.
#[test]
fn no_request_byte_panics_the_parser() {
    let h = hierarchy();
    let mut r = request_with(
        vec![
            cert_id(&h.intermediate_der, &[0x10, 1], OcspHash::Sha1),
            cert_id(&h.intermediate_der, &[0x10, 2], OcspHash::Sha256),
        ],
        Some(vec![nonce_ext(&[9; 16])]),
    );
    r.tbs_request.request_list[0].single_request_extensions =
        Some(vec![ext(PRIVATE_OID, false, &[0x05, 0x00])]);
    let valid = r.to_der().unwrap();
    let check = |der: &[u8]| match parse_ocsp_request(der) {
        Ok(_) | Err(Error::OcspMalformed(_)) => {}
        Err(e) => panic!("{e}"),
    };
    for n in 0..valid.len() {
        check(&valid[..n]);
    }
    for i in 0..valid.len() {
        for b in [0x00, 0x01, 0x7f, 0x80, 0x81, 0x84, 0xff, valid[i] ^ 0x20] {
            let mut v = valid.clone();
            v[i] = b;
            check(&v);
        }
    }
}

#[test]
fn issues_names_own_certificates_only() {
    let h = hierarchy();
    let other = hierarchy();
    let r = responder(&h);
    let parse = |id: CertId| {
        parse_ocsp_request(&request(vec![id], None))
            .unwrap()
            .ids
            .remove(0)
    };
    let own = |hash| cert_id(&h.intermediate_der, &[7], hash);
    let foreign = |hash| cert_id(&other.intermediate_der, &[7], hash);
    let (renamed_der, _) = ed25519_issuer();
    let renamed = |hash| cert_id(&renamed_der, &[7], hash);
    let rows: Vec<(&str, CertId, Option<OcspHash>, bool)> = vec![
        (
            "own, SHA-1",
            own(OcspHash::Sha1),
            Some(OcspHash::Sha1),
            true,
        ),
        (
            "own, SHA-256",
            own(OcspHash::Sha256),
            Some(OcspHash::Sha256),
            true,
        ),
        (
            "own, SHA-1 without NULL parameters",
            CertId {
                hash_algorithm: alg(SHA1_OID, false),
                ..own(OcspHash::Sha1)
            },
            Some(OcspHash::Sha1),
            true,
        ),
        (
            "another CA, SHA-1",
            foreign(OcspHash::Sha1),
            Some(OcspHash::Sha1),
            false,
        ),
        (
            "another CA, SHA-256",
            foreign(OcspHash::Sha256),
            Some(OcspHash::Sha256),
            false,
        ),
        (
            "own name, another CA's key",
            CertId {
                issuer_key_hash: foreign(OcspHash::Sha1).issuer_key_hash,
                ..own(OcspHash::Sha1)
            },
            Some(OcspHash::Sha1),
            false,
        ),
        (
            "another CA's name, own key",
            CertId {
                issuer_name_hash: renamed(OcspHash::Sha1).issuer_name_hash,
                ..own(OcspHash::Sha1)
            },
            Some(OcspHash::Sha1),
            false,
        ),
        (
            "SHA-256 hashes labelled SHA-1",
            CertId {
                hash_algorithm: alg(SHA1_OID, true),
                ..own(OcspHash::Sha256)
            },
            Some(OcspHash::Sha1),
            false,
        ),
        (
            "SHA-384 (unsupported)",
            CertId {
                hash_algorithm: alg(SHA384_OID, true),
                ..own(OcspHash::Sha256)
            },
            None,
            false,
        ),
        (
            "SHA-1 with odd parameters (unsupported)",
            CertId {
                hash_algorithm: AlgorithmIdentifierOwned {
                    oid: SHA1_OID,
                    parameters: Some(Any::from_der(&[0x04, 0x00]).unwrap()),
                },
                ..own(OcspHash::Sha1)
            },
            None,
            false,
        ),
    ];
    for (case, id, hash, issued) in rows {
        let id = parse(id);
        assert_eq!(id.hash, hash, "{case}");
        assert_eq!(r.issues(&id), issued, "{case}");
    }
}

#[test]
fn error_responses_are_the_constant_der_openssl_reads() {
    let dir = TempDir::new("errors");
    let rows = [
        (
            OcspErrorStatus::MalformedRequest,
            1u8,
            OcspResponse::malformed_request(),
            "malformedrequest",
        ),
        (
            OcspErrorStatus::InternalError,
            2,
            OcspResponse::internal_error(),
            "internalerror",
        ),
        (
            OcspErrorStatus::TryLater,
            3,
            OcspResponse::try_later(),
            "trylater",
        ),
        (
            OcspErrorStatus::Unauthorized,
            6,
            OcspResponse::unauthorized(),
            "unauthorized",
        ),
    ];
    for (status, code, typed, name) in rows {
        let der = ocsp_error_response(status);
        assert_eq!(der, [0x30, 0x03, 0x0a, 0x01, code], "{status:?}");
        assert_eq!(der, typed.to_der().unwrap(), "{status:?}");
        dir.write("e.der", &der);
        let (_, out, err) = ocsp(&dir, "-respin e.der -resp_text");
        assert_eq!(
            out,
            format!("Responder Error: {name} ({code})\n"),
            "{status:?}: {err}"
        );
    }
}
