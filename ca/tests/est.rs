//! EST encodings, checked by OpenSSL as the outside witness: certs-only
//! messages, base64 bodies, the identity of an EST CSR, `/csrattrs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ca::est::{base64_body, certs_only, csr_attrs, csr_identity, decode_base64_body, CsrIdentity};
use ca::MAX_CSR_BYTES;

/// One row of a table: case, input, the output or the expected error code.
type Row<T> = (&'static str, Vec<u8>, Result<T, &'static str>);

const CPU: &str = "VBUS-CPU-2412-003847";
const UUID: &str = "6f9619ff-8b86-4011-b42d-00c04fc96401";

/// A fresh directory of its own for each test, under Cargo's target tmpdir.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("est-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run `openssl args…` with `stdin`, returning stdout; panics with stderr on failure.
fn openssl(args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is installed");
    {
        use std::io::Write;
        let mut pipe = child.stdin.take().unwrap();
        if let Some(input) = stdin {
            pipe.write_all(input).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap()
}

/// A self-signed P-256 certificate for `subject`, DER, made by OpenSSL.
fn openssl_cert(dir: &TempDir, name: &str, subject: &str) -> Vec<u8> {
    let key = dir.path(&format!("{name}.key"));
    let cert = dir.path(&format!("{name}.der"));
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            key.to_str().unwrap(),
            "-subj",
            subject,
            "-days",
            "30",
            "-outform",
            "DER",
            "-out",
            cert.to_str().unwrap(),
        ],
        None,
    );
    std::fs::read(cert).unwrap()
}

/// A P-256 CSR made by OpenSSL with `subject` and `extra` arguments, DER.
fn openssl_csr(dir: &TempDir, name: &str, subject: &str, extra: &[&str]) -> Vec<u8> {
    let key = dir.path(&format!("{name}.key"));
    let csr = dir.path(&format!("{name}.csr"));
    let mut args = vec![
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-subj",
        subject,
        "-outform",
        "DER",
        "-out",
        csr.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    openssl(&args, None);
    std::fs::read(csr).unwrap()
}

/// The `subject=` lines `openssl pkcs7 -print_certs` prints for the base64
/// body in `file`, decoded by `openssl base64 -d`.
fn pkcs7_subjects(file: &Path) -> Vec<String> {
    let der = openssl(&["base64", "-d", "-in", file.to_str().unwrap()], None);
    let printed = text(openssl(
        &["pkcs7", "-inform", "DER", "-print_certs", "-noout"],
        Some(&der),
    ));
    printed
        .lines()
        .filter(|l| l.starts_with("subject="))
        .map(str::to_owned)
        .collect()
}

#[test]
fn certs_only_of_two_certificates_is_read_by_openssl() {
    let dir = TempDir::new("two");
    let a = openssl_cert(&dir, "a", "/O=vBus/CN=EST Test Root A");
    let b = openssl_cert(&dir, "b", "/O=vBus/CN=EST Test Intermediate B");

    let p7 = certs_only(&[&a, &b]).unwrap();
    // CertificateSet is a SET OF: DER orders it by encoding, whatever order
    // the caller gave.
    assert_eq!(p7, certs_only(&[&b, &a]).unwrap());

    let body = dir.path("p7.b64");
    std::fs::write(&body, base64_body(&p7)).unwrap();
    let mut expected = [
        (&a, "subject=O = vBus, CN = EST Test Root A"),
        (&b, "subject=O = vBus, CN = EST Test Intermediate B"),
    ];
    expected.sort_by(|x, y| x.0.cmp(y.0));
    let expected: Vec<String> = expected.iter().map(|(_, s)| s.to_string()).collect();
    assert_eq!(pkcs7_subjects(&body), expected);

    // The certificates come out byte for byte.
    let der = openssl(&["base64", "-d", "-in", body.to_str().unwrap()], None);
    assert_eq!(der, p7);
    let pem = text(openssl(
        &["pkcs7", "-inform", "DER", "-print_certs"],
        Some(&der),
    ));
    for cert in [&a, &b] {
        let own = text(openssl(
            &["x509", "-inform", "DER", "-outform", "PEM"],
            Some(cert),
        ));
        assert!(pem.contains(own.trim()), "certificate missing from {pem}");
    }
}

#[test]
fn certs_only_structure_is_degenerate_signed_data() {
    let dir = TempDir::new("asn1");
    let a = openssl_cert(&dir, "a", "/CN=EST Test Root A");
    let p7 = certs_only(&[&a]).unwrap();
    let parsed = text(openssl(&["asn1parse", "-inform", "DER"], Some(&p7)));
    let lines: Vec<&str> = parsed.lines().collect();
    // ContentInfo { id-signedData, [0] SignedData { 1, {}, { id-data }, [0] certs, {} } }
    assert!(lines[1].contains(":pkcs7-signedData"), "{parsed}");
    assert!(
        lines[3].contains("d=2") && lines[3].contains("cons: SEQUENCE"),
        "{parsed}"
    );
    assert!(
        lines[4].contains("d=3") && lines[4].contains(":01"),
        "{parsed}"
    ); // version 1
    assert!(
        lines[5].contains("d=3") && lines[5].contains("l=   0 cons: SET"),
        "{parsed}"
    );
    assert!(
        lines[6].contains("d=3") && lines[6].contains("cons: SEQUENCE"),
        "{parsed}"
    );
    assert!(
        lines[7].contains("d=4") && lines[7].contains(":pkcs7-data"),
        "{parsed}"
    );
    assert!(
        lines[8].contains("d=3") && lines[8].contains("cons: cont [ 0 ]"),
        "{parsed}"
    );
    // No eContent, no crls ([1]), and signerInfos is the last thing: an empty SET.
    let depth3: Vec<&&str> = lines.iter().filter(|l| l.contains("d=3")).collect();
    assert_eq!(depth3.len(), 5, "{parsed}");
    let last = lines.last().unwrap();
    assert!(
        last.contains("d=3") && last.contains("l=   0 cons: SET"),
        "signerInfos is not an empty SET: {parsed}"
    );
    assert!(!parsed.contains("cont [ 1 ]"), "{parsed}");
}

#[test]
fn certs_only_of_no_certificates_parses() {
    let dir = TempDir::new("zero");
    let p7 = certs_only(&[]).unwrap();
    let body = dir.path("p7.b64");
    std::fs::write(&body, base64_body(&p7)).unwrap();
    assert_eq!(pkcs7_subjects(&body), Vec::<String>::new());
    let parsed = text(openssl(&["asn1parse", "-inform", "DER"], Some(&p7)));
    assert!(parsed.contains(":pkcs7-signedData"), "{parsed}");
}

#[test]
fn certs_only_refuses_what_is_not_a_certificate() {
    let dir = TempDir::new("refuse");
    let a = openssl_cert(&dir, "a", "/CN=EST Test Root A");
    let rows: [(&str, Vec<&[u8]>); 3] = [
        ("garbage", vec![b"not a certificate"]),
        ("truncated", vec![&a[..a.len() - 1]]),
        ("the same certificate twice", vec![&a, &a]),
    ];
    for (case, certs) in rows {
        let err = certs_only(&certs).unwrap_err();
        assert_eq!(err.code(), "internal_error", "{case}: {err}");
    }
}

#[test]
fn base64_body_has_lines_of_64() {
    let der: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let body = base64_body(&der);
    assert!(body.ends_with('\n'));
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 1336_usize.div_ceil(64));
    assert!(lines[..lines.len() - 1].iter().all(|l| l.len() == 64));
    assert_eq!(lines.last().unwrap().len(), 1336 % 64);
    assert_eq!(decode_base64_body(body.as_bytes()).unwrap(), der);
    assert_eq!(base64_body(&[]), "");
    assert_eq!(base64_body(b"abc"), "YWJj\n");
}

#[test]
fn decode_base64_body_table() {
    let csr: Vec<u8> = (0..=255u8).cycle().take(700).collect();
    let lf = base64_body(&csr);
    let at_limit: Vec<u8> = vec![0x30; MAX_CSR_BYTES];
    let over_limit: Vec<u8> = vec![0x30; MAX_CSR_BYTES + 1];
    let spaced: String = lf
        .replace('\n', "")
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(" \t");
    let rows: Vec<Row<Vec<u8>>> = vec![
        ("LF line breaks", lf.clone().into_bytes(), Ok(csr.clone())),
        (
            "CRLF line breaks",
            lf.replace('\n', "\r\n").into_bytes(),
            Ok(csr.clone()),
        ),
        ("spaces and tabs", spaced.into_bytes(), Ok(csr.clone())),
        (
            "one line, no final newline",
            lf.replace('\n', "").into_bytes(),
            Ok(csr.clone()),
        ),
        (
            "exactly the limit",
            base64_body(&at_limit).into_bytes(),
            Ok(at_limit.clone()),
        ),
        ("empty", b"".to_vec(), Err("csr_malformed")),
        (
            "only whitespace",
            b" \r\n\t\r\n".to_vec(),
            Err("csr_malformed"),
        ),
        ("not base64", b"MIIB!@#$".to_vec(), Err("csr_malformed")),
        ("missing padding", b"YWJjZA".to_vec(), Err("csr_malformed")),
        ("URL-safe alphabet", b"__8-".to_vec(), Err("csr_malformed")),
        (
            "PEM armour",
            format!("-----BEGIN CERTIFICATE REQUEST-----\n{lf}-----END CERTIFICATE REQUEST-----\n")
                .into_bytes(),
            Err("csr_malformed"),
        ),
        (
            "one byte over the limit",
            base64_body(&over_limit).into_bytes(),
            Err("csr_too_large"),
        ),
        (
            "a megabyte",
            base64_body(&vec![0u8; 1 << 20]).into_bytes(),
            Err("csr_too_large"),
        ),
    ];
    for (case, body, expected) in rows {
        match (decode_base64_body(&body), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{case}"),
            (Err(err), Err(code)) => assert_eq!(err.code(), code, "{case}: {err}"),
            (got, want) => panic!("{case}: got {got:?}, expected {want:?}"),
        }
    }
    let err = decode_base64_body(b"MIIB!@#$").unwrap_err();
    assert!(err.to_string().contains("EST body is not base64"), "{err}");
}

#[test]
fn csr_identity_table() {
    let dir = TempDir::new("csr");
    let subject = format!("/serialNumber={CPU}/CN={CPU}");
    let san = format!("subjectAltName=URI:urn:uuid:{UUID}");
    let two_uuids = format!("subjectAltName=URI:urn:uuid:{UUID},URI:urn:uuid:{UUID}");
    let upper = format!(
        "subjectAltName=DNS:device.example,URI:URN:UUID:{}",
        UUID.to_uppercase()
    );
    let with_san = openssl_csr(&dir, "san", &subject, &["-addext", &san]);
    let rows: Vec<Row<CsrIdentity>> = vec![
        (
            "serialNumber, CN and urn:uuid SAN",
            with_san.clone(),
            Ok(CsrIdentity {
                serial_number: Some(CPU.into()),
                common_name: Some(CPU.into()),
                hw_uuid: Some(UUID.into()),
            }),
        ),
        (
            "no SAN",
            openssl_csr(&dir, "nosan", &subject, &[]),
            Ok(CsrIdentity {
                serial_number: Some(CPU.into()),
                common_name: Some(CPU.into()),
                hw_uuid: None,
            }),
        ),
        (
            "CN only, upper-case URN among other names",
            openssl_csr(&dir, "cn", &format!("/CN={CPU}"), &["-addext", &upper]),
            Ok(CsrIdentity {
                serial_number: None,
                common_name: Some(CPU.into()),
                hw_uuid: Some(UUID.to_uppercase()),
            }),
        ),
        (
            "two urn:uuid URIs",
            openssl_csr(&dir, "two", &subject, &["-addext", &two_uuids]),
            Err("csr_malformed"),
        ),
        (
            "two serialNumbers",
            openssl_csr(
                &dir,
                "twoserial",
                &format!("/serialNumber={CPU}/serialNumber=VBUS-CPU-2412-000001/CN={CPU}"),
                &[],
            ),
            Err("csr_malformed"),
        ),
        (
            "garbage",
            b"not a CSR at all".to_vec(),
            Err("csr_malformed"),
        ),
        (
            "truncated",
            with_san[..with_san.len() - 10].to_vec(),
            Err("csr_malformed"),
        ),
        ("empty", Vec::new(), Err("csr_malformed")),
        (
            "over the limit",
            vec![0x30; MAX_CSR_BYTES + 1],
            Err("csr_too_large"),
        ),
    ];
    for (case, csr, expected) in rows {
        match (csr_identity(&csr), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{case}"),
            (Err(err), Err(code)) => assert_eq!(err.code(), code, "{case}: {err}"),
            (got, want) => panic!("{case}: got {got:?}, expected {want:?}"),
        }
    }
}

#[test]
fn csr_identity_through_an_est_body() {
    // What an EST client sends: the DER CSR in base64 with CRLF line breaks.
    let dir = TempDir::new("body");
    let subject = format!("/serialNumber={CPU}/CN={CPU}");
    let san = format!("subjectAltName=URI:urn:uuid:{UUID}");
    let csr = openssl_csr(&dir, "csr", &subject, &["-addext", &san]);
    let body = text(openssl(&["base64", "-e"], Some(&csr))).replace('\n', "\r\n");
    let id = csr_identity(&decode_base64_body(body.as_bytes()).unwrap()).unwrap();
    assert_eq!(id.serial_number.as_deref(), Some(CPU));
    assert_eq!(id.hw_uuid.as_deref(), Some(UUID));
}

#[test]
fn csr_attrs_lists_the_three_oids() {
    let der = csr_attrs().unwrap();
    let parsed = text(openssl(&["asn1parse", "-inform", "DER"], Some(&der)));
    let lines: Vec<&str> = parsed.lines().collect();
    assert_eq!(lines.len(), 4, "{parsed}");
    assert!(
        lines[0].contains("d=0") && lines[0].contains("cons: SEQUENCE"),
        "{parsed}"
    );
    let objects: Vec<&str> = lines[1..]
        .iter()
        .map(|l| {
            assert!(l.contains("d=1") && l.contains("prim: OBJECT"), "{parsed}");
            l.rsplit(':').next().unwrap().trim()
        })
        .collect();
    assert_eq!(
        objects,
        ["serialNumber", "ecdsa-with-SHA256", "Extension Request"],
        "{parsed}"
    );
    // The same OIDs in numbers, from the DER itself.
    let oids: Vec<der::asn1::ObjectIdentifier> = der::Decode::from_der(&der).unwrap();
    let oids: Vec<String> = oids.iter().map(ToString::to_string).collect();
    assert_eq!(
        oids,
        ["2.5.4.5", "1.2.840.10045.4.3.2", "1.2.840.113549.1.9.14"]
    );
}
