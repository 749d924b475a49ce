//! Revocation on the real binaries and a real token, judged by openssl:
//! `openssl crl` verifies the CRLs, `openssl verify -crl_check` and
//! `openssl ocsp` report revoked / good / unknown, and a revoked station is
//! refused at its next handshake, before and after a kill -9.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use softhsm_tests::{device_csr, issue_body, ok, run, Running};

const STATION: &str = "stations/station-01";
const OFFICER: &str = "officer";

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Issue a device certificate through the station API; (serial, PEM path).
fn issue(a: &Running, serial: &str, n: u32) -> (String, PathBuf) {
    let tmp = a.tmp.path();
    let uuid = format!("6f9619ff-8b86-4011-b42d-00c04fc9{n:04}");
    let (pem, _) = device_csr(tmp, serial, &uuid);
    let (status, body) = a.curl(
        Some(STATION),
        &format!("/v1/devices/{serial}/certificate"),
        &["--data-binary", &issue_body(&pem, &uuid)],
    );
    assert_eq!(status, 201, "{body}");
    let v = json(&body);
    let path = tmp.join(format!("{serial}.pem"));
    std::fs::write(&path, v["certificate"].as_str().unwrap()).unwrap();
    (v["serial_number"].as_str().unwrap().to_owned(), path)
}

/// Download a publication URL to a file; the HTTP status.
fn download(a: &Running, path: &str, out: &Path, extra: &[&str]) -> u16 {
    let o = run(Command::new("curl")
        .args(["-s", "-o"])
        .arg(out)
        .args(["-w", "%{http_code}"])
        .args(extra)
        .arg(format!("http://127.0.0.1:{}{path}", a.publication)));
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Write the chain, the intermediate and the root as PEM files.
fn chain_files(a: &Running) -> (PathBuf, PathBuf, PathBuf) {
    let tmp = a.tmp.path();
    let chain = tmp.join("chain.pem");
    assert_eq!(download(a, "/ca/chain.pem", &chain, &[]), 200);
    let text = std::fs::read_to_string(&chain).unwrap();
    let end = "-----END CERTIFICATE-----\n";
    let cut = text.find(end).unwrap() + end.len();
    let (inter, root) = (tmp.join("intermediate.pem"), tmp.join("root.pem"));
    std::fs::write(&inter, &text[..cut]).unwrap();
    std::fs::write(&root, &text[cut..]).unwrap();
    (chain, inter, root)
}

/// `openssl` with arguments; (success, stdout + stderr).
fn openssl(args: &[&str]) -> (bool, String) {
    let o = run(Command::new("openssl").args(args));
    let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.success(), text)
}

/// Fetch `/crl/{ca}.crl`, check `openssl crl` verifies it against `ca_file`,
/// and return (DER path, `openssl crl -text`).
fn fetch_crl(a: &Running, ca: &str, ca_file: &Path) -> (PathBuf, String) {
    let der = a.tmp.path().join(format!("{ca}.crl"));
    assert_eq!(download(a, &format!("/crl/{ca}.crl"), &der, &[]), 200);
    let d = der.to_str().unwrap();
    let (good, out) = openssl(&[
        "crl",
        "-in",
        d,
        "-inform",
        "DER",
        "-CAfile",
        ca_file.to_str().unwrap(),
        "-noout",
    ]);
    assert!(good && out.contains("verify OK"), "{ca}: {out}");
    let (good, text) = openssl(&["crl", "-in", d, "-inform", "DER", "-text", "-noout"]);
    assert!(good, "{text}");
    (der, text)
}

/// The CRL number `openssl crl -text` shows.
fn crl_number(text: &str) -> u64 {
    let line = text
        .lines()
        .skip_while(|l| !l.contains("X509v3 CRL Number"))
        .nth(1)
        .unwrap_or_else(|| panic!("no CRL number in {text}"));
    line.trim().parse().unwrap()
}

/// `openssl ocsp` against the responder; its output.
fn ocsp(a: &Running, issuer: &Path, chain: &Path, target: &[&str]) -> String {
    let url = format!("http://127.0.0.1:{}/ocsp", a.publication);
    let mut args = vec![
        "ocsp",
        "-issuer",
        issuer.to_str().unwrap(),
        "-url",
        &url,
        "-CAfile",
        chain.to_str().unwrap(),
    ];
    args.extend_from_slice(target);
    let (good, out) = openssl(&args);
    assert!(good, "{out}");
    out
}

fn crl_publish(a: &Running, ca: &str) -> Value {
    json(&ok(a.kmsctl(&["--json", "crl", "publish", "--issuer", ca])))
}

#[test]
fn revoked_certificates_reach_the_crl_and_ocsp_as_openssl_sees_them() {
    let mut a = Running::start();
    let tmp = a.tmp.path().to_owned();
    let (chain, inter, root) = chain_files(&a);
    let (bad, bad_pem) = issue(&a, "VBUS-CPU-2412-000701", 701);
    let (good, good_pem) = issue(&a, "VBUS-CPU-2412-000702", 702);

    // The certificates point at the URLs we serve.
    let (done, ext) = openssl(&[
        "x509",
        "-in",
        bad_pem.to_str().unwrap(),
        "-noout",
        "-ext",
        "crlDistributionPoints,authorityInfoAccess",
    ]);
    assert!(done, "{ext}");
    let base = format!("http://127.0.0.1:{}", a.publication);
    assert!(
        ext.contains(&format!("URI:{base}/crl/intermediate.crl")),
        "{ext}"
    );
    assert!(ext.contains(&format!("OCSP - URI:{base}/ocsp")), "{ext}");

    // Before: both good, the CRL empty.
    let (_, text) = fetch_crl(&a, "intermediate", &chain);
    assert!(text.contains("No Revoked Certificates."), "{text}");
    let first_number = crl_number(&text);
    let out = ocsp(&a, &inter, &chain, &["-cert", bad_pem.to_str().unwrap()]);
    assert!(out.contains("Response verify OK"), "{out}");
    assert!(
        out.contains(&format!("{}: good", bad_pem.display())),
        "{out}"
    );

    // An officer revokes over the API; a second request reports the first.
    let (status, body) = a.curl(
        Some(OFFICER),
        &format!("/v1/certificates/{bad}/revoke"),
        &[
            "--data-binary",
            r#"{"reason":"keyCompromise","invalidity_date":"2026-01-02T03:04:05Z"}"#,
        ],
    );
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["serial_number"], bad.as_str());
    assert_eq!(v["ca"], "intermediate");
    assert_eq!(v["subject"], "VBUS-CPU-2412-000701");
    assert_eq!(v["reason"], "keyCompromise");
    assert_eq!(v["invalidity_date"], "2026-01-02T03:04:05Z");
    assert_eq!(v["already_revoked"], false);
    let (status, body) = a.curl(
        Some(OFFICER),
        &format!("/v1/certificates/{}/revoke", bad.to_uppercase()),
        &["--data-binary", r#"{"reason":"superseded"}"#],
    );
    assert_eq!(status, 200, "{body}");
    let again = json(&body);
    assert_eq!(again["already_revoked"], true);
    assert_eq!(again["reason"], "keyCompromise", "the first reason stays");
    assert_eq!(again["revoked_at"], v["revoked_at"]);

    // OCSP knows at once (no CRL needed).
    let out = ocsp(&a, &inter, &chain, &["-cert", bad_pem.to_str().unwrap()]);
    assert!(out.contains("Response verify OK"), "{out}");
    assert!(
        out.contains(&format!("{}: revoked", bad_pem.display())),
        "{out}"
    );
    assert!(out.contains("Reason: keyCompromise"), "{out}");
    let out = ocsp(&a, &inter, &chain, &["-cert", good_pem.to_str().unwrap()]);
    assert!(
        out.contains(&format!("{}: good", good_pem.display())),
        "{out}"
    );
    let out = ocsp(&a, &inter, &chain, &["-serial", "0x1234567890abcdef"]);
    assert!(out.contains("Response verify OK"), "{out}");
    assert!(out.contains("0x1234567890abcdef: unknown"), "{out}");

    // The CRL: signed now on request (kmsd would within crl_coalesce_ms).
    let published = crl_publish(&a, "intermediate");
    assert_eq!(published["entries"], 1);
    let (der, text) = fetch_crl(&a, "intermediate", &chain);
    assert!(crl_number(&text) > first_number, "{text}");
    assert_eq!(crl_number(&text), published["number"].as_u64().unwrap());
    assert!(
        text.contains(&format!("Serial Number: {}", bad.to_uppercase())),
        "{text}"
    );
    assert!(
        !text.contains(&format!("Serial Number: {}", good.to_uppercase())),
        "{text}"
    );
    assert!(text.contains("Key Compromise"), "{text}");
    assert!(text.contains("Invalidity Date"), "{text}");
    assert!(text.contains("Jan  2 03:04:05 2026 GMT"), "{text}");
    let crl_pem = tmp.join("intermediate.crl.pem");
    let (done, out) = openssl(&[
        "crl",
        "-in",
        der.to_str().unwrap(),
        "-inform",
        "DER",
        "-out",
        crl_pem.to_str().unwrap(),
    ]);
    assert!(done, "{out}");
    let verify = |cert: &Path| {
        openssl(&[
            "verify",
            "-crl_check",
            "-CAfile",
            chain.to_str().unwrap(),
            "-CRLfile",
            crl_pem.to_str().unwrap(),
            cert.to_str().unwrap(),
        ])
    };
    let (passed, out) = verify(&bad_pem);
    assert!(!passed && out.contains("certificate revoked"), "{out}");
    let (passed, out) = verify(&good_pem);
    assert!(passed && out.contains(": OK"), "{out}");

    // ETag and Last-Modified; a matching If-None-Match is 304.
    let head = run(Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null"])
        .arg(format!(
            "http://127.0.0.1:{}/crl/intermediate.crl",
            a.publication
        )));
    let head = String::from_utf8_lossy(&head.stdout).to_lowercase();
    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .unwrap()
        .trim()
        .to_owned();
    assert!(head.contains("last-modified: "), "{head}");
    assert!(
        head.contains("content-type: application/pkix-crl"),
        "{head}"
    );
    let inm = format!("If-None-Match: {etag}");
    assert_eq!(
        download(&a, "/crl/intermediate.crl", &tmp.join("x"), &["-H", &inm]),
        304
    );

    // The root's and the internal CA's CRLs verify too.
    fetch_crl(&a, "root", &root);
    fetch_crl(&a, "internal", &a.dir.join(STATION).join("ca.pem"));
    // And OCSP by GET (RFC 6960 A.1): a request made by openssl, base64.
    let req = tmp.join("req.der");
    let (done, out) = openssl(&[
        "ocsp",
        "-issuer",
        inter.to_str().unwrap(),
        "-cert",
        bad_pem.to_str().unwrap(),
        "-no_nonce",
        "-reqout",
        req.to_str().unwrap(),
    ]);
    assert!(done, "{out}");
    let b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&req).unwrap())
    };
    let escaped = b64
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let resp = tmp.join("resp.der");
    assert_eq!(download(&a, &format!("/ocsp/{escaped}"), &resp, &[]), 200);
    let (done, out) = openssl(&[
        "ocsp",
        "-respin",
        resp.to_str().unwrap(),
        "-reqin",
        req.to_str().unwrap(),
        "-issuer",
        inter.to_str().unwrap(),
        "-cert",
        bad_pem.to_str().unwrap(),
        "-CAfile",
        chain.to_str().unwrap(),
    ]);
    assert!(done, "{out}");
    assert!(
        out.contains("Response verify OK") && out.contains(": revoked"),
        "{out}"
    );

    // Revoking the station: refused at once, listed by the internal CA.
    let station_cert = a.dir.join(STATION).join("cert.pem");
    let (status, _) = a.curl(Some(STATION), "/v1/devices/VBUS-CPU-2412-000702", &[]);
    assert_eq!(status, 200);
    let v = json(&ok(a.kmsctl(&[
        "--json",
        "station",
        "revoke",
        "station-01",
        "--reason",
        "keyCompromise",
    ])));
    let station_serial = v["revoked"][0].as_str().unwrap().to_owned();
    let (status, _) = a.curl(Some(STATION), "/v1/devices/VBUS-CPU-2412-000702", &[]);
    assert_eq!(status, 0, "the handshake is refused");
    let internal_ca = a.dir.join(STATION).join("ca.pem");
    let out = ocsp(
        &a,
        &internal_ca,
        &internal_ca,
        &["-cert", station_cert.to_str().unwrap()],
    );
    assert!(out.contains("Response verify OK"), "{out}");
    assert!(out.contains(": revoked"), "{out}");

    // kill -9, restart: still refused, still revoked, numbers still rising.
    let before = crl_publish(&a, "internal")["number"].as_u64().unwrap();
    let mut service = a.service.take().unwrap();
    service.0.kill().unwrap();
    service.0.wait().unwrap();
    drop(service);
    a.restart();
    let (status, _) = a.curl(Some(STATION), "/v1/devices/VBUS-CPU-2412-000702", &[]);
    assert_eq!(status, 0, "still refused after a restart");
    let (_, text) = fetch_crl(&a, "internal", &internal_ca);
    assert!(crl_number(&text) > before, "{text}");
    assert!(
        text.contains(&format!("Serial Number: {}", station_serial.to_uppercase())),
        "{text}"
    );
    let (_, text) = fetch_crl(&a, "intermediate", &chain);
    assert!(
        text.contains(&format!("Serial Number: {}", bad.to_uppercase())),
        "{text}"
    );
    let out = ocsp(&a, &inter, &chain, &["-cert", bad_pem.to_str().unwrap()]);
    assert!(out.contains(": revoked"), "{out}");
    a.stop();
    ok(a.kmsctl(&["audit", "verify"]));
}

fn records(a: &Running) -> usize {
    ok(a.kmsctl(&["audit", "show"])).lines().count()
}

/// POST a file's bytes to `/ocsp`; the response bytes.
fn ocsp_post(a: &Running, body: &Path) -> Vec<u8> {
    let o = run(Command::new("curl")
        .args([
            "-s",
            "-H",
            "Content-Type: application/ocsp-request",
            "--data-binary",
        ])
        .arg(format!("@{}", body.display()))
        .arg(format!("http://127.0.0.1:{}/ocsp", a.publication)));
    o.stdout
}

#[test]
fn bad_revocations_and_ocsp_requests_get_clear_errors_and_change_nothing() {
    let a = Running::start();
    let tmp = a.tmp.path().to_owned();
    let (chain, inter, _) = chain_files(&a);
    let (device, device_pem) = issue(&a, "VBUS-CPU-2412-000801", 801);
    let station_serial = json(&ok(a.kmsctl(&["--json", "station", "list"])))[0]["serial_number"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoke = |serial: &str| format!("/v1/certificates/{serial}/revoke");
    // (who, path, body, status, code)
    let rows: Vec<(&str, String, &str, u16, &str)> = vec![
        (
            OFFICER,
            revoke("00112233445566778899aabbccddeeff"),
            r#"{"reason":"keyCompromise"}"#,
            404,
            "certificate_not_found",
        ),
        (
            OFFICER,
            revoke("not-hex"),
            r#"{"reason":"keyCompromise"}"#,
            400,
            "malformed_request",
        ),
        (
            OFFICER,
            revoke(&"a".repeat(41)),
            r#"{"reason":"keyCompromise"}"#,
            400,
            "malformed_request",
        ),
        (
            OFFICER,
            revoke(&device),
            r#"{"reason":"keyCompromise","ca":"internal"}"#,
            409,
            "issuer_mismatch",
        ),
        (
            OFFICER,
            revoke(&station_serial),
            r#"{"reason":"keyCompromise","ca":"intermediate"}"#,
            409,
            "issuer_mismatch",
        ),
        (
            OFFICER,
            revoke(&device),
            r#"{"reason":"keyCompromise","ca":"nowhere"}"#,
            400,
            "malformed_request",
        ),
        (
            OFFICER,
            revoke(&device),
            r#"{"reason":"certificateHold"}"#,
            400,
            "revocation_reason_invalid",
        ),
        (
            OFFICER,
            revoke(&device),
            r#"{"reason":"removeFromCRL"}"#,
            400,
            "revocation_reason_invalid",
        ),
        (
            OFFICER,
            revoke(&device),
            r#"{"reason":"keyCompromise","invalidity_date":"2999-01-01T00:00:00Z"}"#,
            400,
            "malformed_request",
        ),
        (
            OFFICER,
            revoke(&device),
            r#"{"reason":"keyCompromise","invalidity_date":"yesterday"}"#,
            400,
            "malformed_request",
        ),
        (
            OFFICER,
            revoke(&device),
            r#"{"reason":"keyCompromise","why":1}"#,
            400,
            "malformed_request",
        ),
        (
            OFFICER,
            revoke(&device),
            r#"{"why":1}"#,
            400,
            "malformed_request",
        ),
        (
            OFFICER,
            revoke(&device),
            "{not json",
            400,
            "malformed_request",
        ),
        (
            STATION,
            revoke(&device),
            r#"{"reason":"keyCompromise"}"#,
            403,
            "role_not_permitted",
        ),
    ];
    for (who, path, body, status, code) in rows {
        let before = records(&a);
        let (got, answer) = a.curl(Some(who), &path, &["--data-binary", body]);
        assert_eq!(got, status, "{path} {body}: {answer}");
        assert_eq!(
            json(&answer)["error"]["code"],
            code,
            "{path} {body}: {answer}"
        );
        assert_eq!(records(&a) - before, 1, "{path} {body}: one audit record");
        let last = ok(a.kmsctl(&["audit", "show"]))
            .lines()
            .last()
            .unwrap()
            .to_owned();
        assert!(last.contains(r#""op":"certificate.revoke""#), "{last}");
        assert!(last.contains(&format!(r#""result":"{code}""#)), "{last}");
    }
    // Nothing was revoked: OCSP says good, the CRLs list nothing.
    let out = ocsp(&a, &inter, &chain, &["-cert", device_pem.to_str().unwrap()]);
    assert!(out.contains(": good"), "{out}");
    assert_eq!(
        a.curl(Some(STATION), "/healthz", &[]).0,
        200,
        "station not revoked"
    );
    for ca in ["intermediate", "internal"] {
        assert_eq!(crl_publish(&a, ca)["entries"], 0, "{ca}");
    }

    // OCSP requests that cannot be answered: the RFC 6960 error statuses,
    // exact bytes, and no audit record (the port is public and read-only).
    let malformed = vec![0x30, 0x03, 0x0a, 0x01, 0x01];
    let unauthorized = vec![0x30, 0x03, 0x0a, 0x01, 0x06];
    let reqout = |name: &str, issuer: &Path, serials: usize| {
        let out = tmp.join(name);
        let mut args = vec![
            "ocsp".to_owned(),
            "-no_nonce".into(),
            "-issuer".into(),
            issuer.display().to_string(),
            "-reqout".into(),
            out.display().to_string(),
        ];
        for i in 0..serials {
            args.push("-serial".into());
            args.push(format!("0x{:x}", i + 1));
        }
        let o = run(Command::new("openssl").args(&args));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        out
    };
    let garbage = tmp.join("garbage.der");
    std::fs::write(&garbage, b"hello").unwrap();
    let empty = tmp.join("empty.der");
    std::fs::write(&empty, b"").unwrap();
    let one = reqout("one.der", &inter, 1);
    let truncated = tmp.join("truncated.der");
    let bytes = std::fs::read(&one).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 3]).unwrap();
    let trailing = tmp.join("trailing.der");
    std::fs::write(&trailing, [bytes.as_slice(), &[0]].concat()).unwrap();
    // A CA that is not ours.
    let (_, foreign) = softhsm_tests::openssl_self_signed(&tmp, "foreign", "/CN=Foreign CA");
    let ocsp_rows: Vec<(&str, PathBuf, &Vec<u8>)> = vec![
        ("garbage", garbage, &malformed),
        ("empty", empty, &malformed),
        ("truncated", truncated, &malformed),
        ("trailing byte", trailing, &malformed),
        ("17 entries", reqout("17.der", &inter, 17), &malformed),
        (
            "10,000 entries",
            reqout("10000.der", &inter, 10_000),
            &malformed,
        ),
        (
            "another CA's certificate",
            reqout("foreign.der", &foreign, 1),
            &unauthorized,
        ),
    ];
    let before = records(&a);
    for (what, body, want) in ocsp_rows {
        assert_eq!(&ocsp_post(&a, &body), want, "{what}");
    }
    let get_garbage = tmp.join("get.der");
    assert_eq!(download(&a, "/ocsp/%%%not-base64", &get_garbage, &[]), 200);
    assert_eq!(std::fs::read(&get_garbage).unwrap(), malformed);
    assert_eq!(records(&a), before, "OCSP queries are not audited");
    // openssl reads the status as the RFC names it.
    let (_, text) = openssl(&[
        "ocsp",
        "-respin",
        get_garbage.to_str().unwrap(),
        "-resp_text",
        "-noverify",
    ]);
    assert!(text.to_lowercase().contains("malformedrequest"), "{text}");
    // And a well-formed request still gets a signed answer.
    let resp = tmp.join("one.resp");
    std::fs::write(&resp, ocsp_post(&a, &one)).unwrap();
    let (done, out) = openssl(&[
        "ocsp",
        "-respin",
        resp.to_str().unwrap(),
        "-reqin",
        one.to_str().unwrap(),
        "-issuer",
        inter.to_str().unwrap(),
        "-serial",
        "0x1",
        "-CAfile",
        chain.to_str().unwrap(),
    ]);
    assert!(
        done && out.contains("Response verify OK") && out.contains("0x1: unknown"),
        "{out}"
    );
}

/// Serials listed by `openssl crl -text`.
fn listed(text: &str) -> usize {
    text.matches("Serial Number:").count()
}

#[test]
fn batch_device_and_superseded_revocations_reach_a_coalesced_crl() {
    let mut a = Running::start_with(|dir| {
        softhsm_tests::edit_file(
            &dir.join("kmsd.toml"),
            "crl_coalesce_ms = 1000",
            "crl_coalesce_ms = 300",
        );
    });
    let tmp = a.tmp.path().to_owned();
    let (chain, inter, _) = chain_files(&a);
    let (_, text) = fetch_crl(&a, "intermediate", &chain);
    let first = crl_number(&text);
    let certs: Vec<(String, PathBuf)> = (0..6)
        .map(|i| issue(&a, &format!("VBUS-CPU-2412-00090{i}"), 900 + i))
        .collect();

    // A batch: four to revoke, one twice, one unknown, a comment, a blank.
    let list = tmp.join("revoke.txt");
    let mut text = String::from("# bad component lot 4711\n\n");
    for (s, _) in &certs[..4] {
        text.push_str(&format!("{s}\n"));
    }
    text.push_str(&format!(
        "{}\nffffffffffffffffffffffffffffffff\n",
        certs[0].0
    ));
    std::fs::write(&list, text).unwrap();
    let out = a.kmsctl(&[
        "batch",
        "revoke",
        "--from-file",
        list.to_str().unwrap(),
        "--reason",
        "cessationOfOperation",
    ]);
    assert_eq!(out.status.code(), Some(1), "one serial failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("4 revoked, 1 already revoked, 1 failed"),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ffffffffffffffffffffffffffffffff: error[certificate_not_found]"),
        "{stderr}"
    );

    // Every certificate of a device.
    let v = json(&ok(a.kmsctl(&[
        "--json",
        "device",
        "revoke",
        "VBUS-CPU-2412-000904",
        "--reason",
        "affiliationChanged",
    ])));
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["serial_number"], certs[4].0.as_str());
    assert_eq!(v[0]["reason"], "affiliationChanged");

    // A re-issue for a new key revokes the old certificate as superseded
    // (the quickstart policy's revoke_superseded = true).
    ok(a.kmsctl(&["device", "allow-reissue", "VBUS-CPU-2412-000905"]));
    let old_pem = certs[5].1.clone();
    std::fs::rename(&old_pem, tmp.join("old-905.pem")).unwrap();
    let old_pem = tmp.join("old-905.pem");
    let (new_serial, _) = issue(&a, "VBUS-CPU-2412-000905", 905);
    assert_ne!(new_serial, certs[5].0);
    let out = ocsp(&a, &inter, &chain, &["-cert", old_pem.to_str().unwrap()]);
    assert!(
        out.contains(": revoked") && out.contains("Reason: superseded"),
        "{out}"
    );

    // kmsd signs the CRL by itself, once per burst rather than once per
    // revocation: 6 revocations, far fewer new CRL numbers.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let (_, text) = fetch_crl(&a, "intermediate", &chain);
        if listed(&text) == 6 {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "CRL never listed all 6: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let signed = crl_number(&text) - first;
    assert!((1..=4).contains(&signed), "{signed} CRLs for 6 revocations");
    assert!(text.contains("Cessation Of Operation"), "{text}");
    assert!(text.contains("Affiliation Changed"), "{text}");
    assert!(text.contains("Superseded"), "{text}");

    // With kmsd stopped, kmsctl revokes on the appliance itself; the next
    // start signs a CRL listing it.
    a.stop();
    let extra = certs[4].0.clone();
    let v = json(&ok(a.kmsctl(&[
        "--json",
        "cert",
        "revoke",
        &new_serial,
        "--reason",
        "keyCompromise",
    ])));
    assert_eq!(v["already_revoked"], false);
    let v = json(&ok(a.kmsctl(&[
        "--json",
        "cert",
        "revoke",
        &extra,
        "--reason",
        "keyCompromise",
    ])));
    assert_eq!(v["already_revoked"], true);
    assert_eq!(v["reason"], "affiliationChanged");
    a.restart();
    let (_, text) = fetch_crl(&a, "intermediate", &chain);
    assert_eq!(listed(&text), 7, "{text}");
    assert!(
        text.contains(&format!("Serial Number: {}", new_serial.to_uppercase())),
        "{text}"
    );
    a.stop();
    ok(a.kmsctl(&["audit", "verify"]));
}
