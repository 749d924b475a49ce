//! The appliance service on the real binaries and a real token: the mTLS
//! JSON API judged by curl, EST judged by curl and `openssl pkcs7`, TLS
//! refusals judged by `openssl s_client`, station enrolment and revocation
//! through `kmsctl` while `kmsd` runs, and a table of bad requests that each
//! get their status and code and change nothing but the audit log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use softhsm_tests::{device_csr, issue_body, ok, run, Running};

const STATION: &str = "stations/station-01";

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// `openssl verify` of a PEM certificate against the quickstart root, with
/// the chain the API returned as untrusted intermediates.
fn openssl_verify(dir: &Path, cert_pem: &str, chain_pem: &str) -> String {
    let cert = dir.join("verify-cert.pem");
    let chain = dir.join("verify-chain.pem");
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&chain, chain_pem).unwrap();
    let out = run(Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(dir.join("ca/root.pem"))
        .arg("-untrusted")
        .arg(&chain)
        .arg(&cert));
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Decode a base64 PKCS#7 certs-only body with openssl; the subjects.
fn pkcs7_subjects(dir: &Path, b64: &Path) -> Vec<String> {
    let der = dir.join("p7.der");
    assert!(run(Command::new("openssl")
        .args(["base64", "-d", "-in"])
        .arg(b64)
        .arg("-out")
        .arg(&der))
    .status
    .success());
    let out = run(Command::new("openssl")
        .args(["pkcs7", "-inform", "DER", "-print_certs", "-noout", "-in"])
        .arg(&der));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("subject=").map(str::to_owned))
        .collect()
}

/// The handshake as `openssl s_client` sees it, sending one request: its
/// output (errors included).
fn s_client(a: &Running, cert_key: Option<(&Path, &Path)>) -> String {
    let mut cmd = Command::new("sh");
    let creds = cert_key.map_or(String::new(), |(c, k)| {
        format!("-cert {} -key {}", c.display(), k.display())
    });
    cmd.arg("-c").arg(format!(
        "(printf 'GET /healthz HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n'; sleep 1) | \
         openssl s_client -connect 127.0.0.1:{} -CAfile {} {creds} -quiet 2>&1",
        a.api,
        a.dir.join(STATION).join("ca.pem").display()
    ));
    String::from_utf8_lossy(&run(&mut cmd).stdout).into_owned()
}

fn metric(a: &Running, line_prefix: &str) -> u64 {
    let (_, text) = a.publication("/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[test]
fn stations_get_certificates_over_mtls_and_est_and_record_what_they_did() {
    let mut a = Running::start();
    let tmp = a.tmp.path().to_owned();
    let serial = "VBUS-CPU-2412-000001";
    let uuid = "6f9619ff-8b86-4011-b42d-00c04fc96401";
    let (pem, _) = device_csr(&tmp, serial, uuid);
    let body = issue_body(&pem, uuid);
    let path = format!("/v1/devices/{serial}/certificate");
    let post = |body: &str| {
        a.curl(
            Some(STATION),
            &path,
            &[
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
            ],
        )
    };

    let (status, first) = post(&body);
    assert_eq!(status, 201, "{first}");
    let first = json(&first);
    assert_eq!(first["newly_issued"], true);
    let verified = openssl_verify(
        &a.dir,
        first["certificate"].as_str().unwrap(),
        first["chain"].as_str().unwrap(),
    );
    assert!(verified.contains(": OK"), "{verified}");
    assert_eq!(
        first["chain"].as_str().unwrap(),
        std::fs::read_to_string(a.dir.join("ca/chain.pem")).unwrap()
    );
    // The same request again: the same certificate, 200.
    let (status, again) = post(&body);
    assert_eq!(status, 200, "{again}");
    let again = json(&again);
    assert_eq!(again["serial_number"], first["serial_number"]);
    assert_eq!(again["certificate"], first["certificate"]);
    assert_eq!(again["newly_issued"], false);

    // The provisioning record, and the device lookup that returns it.
    let record = r#"{"firmware_version":"1.4.2","operator":"op-17","steps":[{"name":"boot","passed":true},{"name":"vbat","passed":true,"value":3.31,"unit":"V"}],"component_lots":[{"component":"U1","lot":"L2411-07"}]}"#;
    let (status, receipt) = a.curl(
        Some(STATION),
        &format!("/v1/devices/{serial}/record"),
        &[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            record,
        ],
    );
    assert_eq!(status, 201, "{receipt}");
    assert_eq!(json(&receipt)["sha256"].as_str().unwrap().len(), 64);
    let (status, device) = a.curl(Some(STATION), &format!("/v1/devices/{serial}"), &[]);
    assert_eq!(status, 200, "{device}");
    let device = json(&device);
    assert_eq!(device["station"], "station-01");
    assert_eq!(device["certificate"], first["serial_number"]);
    assert_eq!(device["hw_uuid"], uuid);
    assert_eq!(device["records"][0]["record"]["firmware_version"], "1.4.2");
    assert_eq!(device["records"][0]["record"]["steps"][1]["value"], 3.31);
    assert_eq!(device["records"][0]["station"], "station-01");

    // EST with curl and openssl only.
    let est_serial = "VBUS-PWR-2412-000002";
    let (_, der) = device_csr(&tmp, est_serial, "6f9619ff-8b86-4011-b42d-00c04fc96402");
    let (status, subjects, body) = est_enroll(&a, "simpleenroll", &der);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        subjects,
        [format!("serialNumber = {est_serial}, CN = {est_serial}")]
    );
    let cacerts = tmp.join("cacerts.b64");
    let (status, _) = a.curl(
        Some(STATION),
        "/.well-known/est/cacerts",
        &["-o", cacerts.to_str().unwrap()],
    );
    assert_eq!(status, 200);
    let mut subjects = pkcs7_subjects(&tmp, &cacerts);
    subjects.sort();
    assert_eq!(
        subjects,
        [
            "O = vBus, CN = vBus Manufacturing Intermediate CA",
            "O = vBus, CN = vBus Root CA"
        ]
    );
    // Re-enrolment with a new key: the development policy does not let
    // stations do it without an officer.
    // Same module serial and UUID, a new key.
    let rekey_dir = tmp.join("rekey");
    std::fs::create_dir(&rekey_dir).unwrap();
    let (_, rekey) = device_csr(
        &rekey_dir,
        est_serial,
        "6f9619ff-8b86-4011-b42d-00c04fc96402",
    );
    let (status, _, refused) = est_enroll(&a, "simplereenroll", &rekey);
    assert_eq!(status, 403, "{refused}");
    assert_eq!(json(&refused)["error"]["code"], "reenroll_not_permitted");

    // Publication port: the chain and the counters.
    assert_eq!(
        a.publication("/ca/chain.pem").1,
        std::fs::read_to_string(a.dir.join("ca/chain.pem")).unwrap()
    );
    assert_eq!(
        metric(
            &a,
            "kms_requests_total{endpoint=\"/v1/devices/{serial}/certificate\",result=\"ok\"} "
        ),
        2
    );
    assert_eq!(
        metric(
            &a,
            "kms_requests_total{endpoint=\"/.well-known/est/simplereenroll\",result=\"reenroll_not_permitted\"} "
        ),
        1
    );
    assert!(metric(&a, "kms_issuance_seconds_count ") >= 3);
    assert!(metric(&a, "kms_audit_fsync_seconds_count ") >= 1);

    // A clean stop seals the log: the newest checkpoint covers every record.
    assert_eq!(a.stop().code(), Some(0));
    let v = json(&ok(a.kmsctl(&["--json", "audit", "verify"])));
    assert_eq!(v["records"], v["checkpointed"]);
    let issued = ok(a.kmsctl(&[
        "audit",
        "show",
        "--op",
        "certificate.issue",
        "--actor",
        "station-01",
    ]));
    assert_eq!(issued.lines().count(), 4, "{issued}"); // new, repeat, EST new, refused re-enrolment
}

#[test]
fn handshakes_without_a_valid_client_certificate_are_refused_and_revocation_is_immediate() {
    let mut a = Running::start();
    let tmp = a.tmp.path().to_owned();
    let station = a.dir.join(STATION);
    let good = s_client(
        &a,
        Some((&station.join("cert.pem"), &station.join("key.pem"))),
    );
    assert!(good.contains("HTTP/1.1 200 OK"), "{good}");

    // No certificate.
    let none = s_client(&a, None);
    assert!(none.contains("alert certificate required"), "{none}");
    // A certificate from another CA, with a station's name.
    let (other_key, other) =
        softhsm_tests::openssl_self_signed(&tmp, "other", "/CN=station-01/OU=station");
    let foreign = s_client(&a, Some((&other, &other_key)));
    assert!(foreign.contains("alert certificate unknown"), "{foreign}");

    // Enrol a station while kmsd runs, use it, revoke it: refused from the
    // next handshake, and still after a restart.
    let out = ok(a.kmsctl(&["station", "add", "station-02", "--modules", "PWR"]));
    assert!(out.contains("station station-02: certificate"), "{out}");
    let policy = std::fs::read_to_string(a.dir.join("policy.toml")).unwrap();
    assert!(
        policy.contains("\"station-02\" = [\"station\"]")
            || policy.contains("station-02 = [\"station\"]"),
        "{policy}"
    );
    let s2 = a.dir.join("stations/station-02");
    assert_eq!(
        std::fs::metadata(s2.join("key.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let s2_pair = (s2.join("cert.pem"), s2.join("key.pem"));
    assert!(s_client(&a, Some((&s2_pair.0, &s2_pair.1))).contains("HTTP/1.1 200 OK"));
    let listed = ok(a.kmsctl(&["--json", "station", "list"]));
    let listed = json(&listed);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");

    // A keep-alive connection opened before the revocation: its next
    // request is refused too.
    let mut open = Command::new("sh");
    open.arg("-c").arg(format!(
        "(printf 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n'; sleep 3; \
          printf 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n'; sleep 1) | \
         openssl s_client -connect 127.0.0.1:{} -CAfile {ca} -cert {} -key {} -quiet 2>&1",
        a.api,
        s2_pair.0.display(),
        s2_pair.1.display(),
        ca = station.join("ca.pem").display()
    ));
    let open = open.stdout(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = ok(a.kmsctl(&["station", "revoke", "station-02"]));
    assert!(out.contains("1 certificate(s) revoked"), "{out}");
    let open = String::from_utf8_lossy(&open.wait_with_output().unwrap().stdout).into_owned();
    assert!(open.contains("HTTP/1.1 200 OK"), "{open}");
    assert!(
        open.contains("HTTP/1.1 403 Forbidden") && open.contains("client_revoked"),
        "{open}"
    );
    let revoked = s_client(&a, Some((&s2_pair.0, &s2_pair.1)));
    assert!(revoked.contains("alert certificate revoked"), "{revoked}");
    // Revoking again is reported, not an error.
    assert!(ok(a.kmsctl(&["station", "revoke", "station-02"])).contains("0 certificate(s) revoked"));

    assert_eq!(
        metric(
            &a,
            "kms_tls_handshakes_refused_total{reason=\"no_certificate\"} "
        ),
        1
    );
    assert_eq!(
        metric(
            &a,
            "kms_tls_handshakes_refused_total{reason=\"untrusted\"} "
        ),
        1
    );
    assert_eq!(
        metric(&a, "kms_tls_handshakes_refused_total{reason=\"revoked\"} "),
        1
    );

    assert_eq!(a.stop().code(), Some(0));
    a.restart();
    let after = s_client(&a, Some((&s2_pair.0, &s2_pair.1)));
    assert!(after.contains("alert certificate revoked"), "{after}");
    assert!(s_client(
        &a,
        Some((&station.join("cert.pem"), &station.join("key.pem")))
    )
    .contains("HTTP/1.1 200 OK"));
}

use std::os::unix::fs::PermissionsExt as _;

/// Audit records so far.
fn records(a: &Running) -> usize {
    ok(a.kmsctl(&["audit", "show"])).lines().count()
}

#[test]
fn bad_requests_get_their_status_and_code_and_change_nothing_but_the_audit_log() {
    let a = Running::start();
    let tmp = a.tmp.path().to_owned();
    // station-02 may provision PWR modules of one serial range only.
    ok(a.kmsctl(&["station", "add", "station-02", "--modules", "PWR"]));
    softhsm_tests::edit_file(
        &a.dir.join("policy.toml"),
        "modules = [\"PWR\"]",
        "modules = [\"PWR\"]\nserials = [\"VBUS-PWR-2412-000100..000199\"]",
    );
    ok(a.kmsctl(&["policy", "reload"]));
    // One device certified by station-01, for the lookup by another station.
    let owned = "VBUS-CPU-2412-000500";
    let (pem, _) = device_csr(&tmp, owned, "6f9619ff-8b86-4011-b42d-00c04fc96500");
    let (status, _) = a.curl(
        Some(STATION),
        &format!("/v1/devices/{owned}/certificate"),
        &[
            "--data-binary",
            &issue_body(&pem, "6f9619ff-8b86-4011-b42d-00c04fc96500"),
        ],
    );
    assert_eq!(status, 201);

    // A PWR device inside station-02's range, provisioned by station-01.
    let theirs = "VBUS-PWR-2412-000150";
    let (theirs_pem, _) = device_csr(&tmp, theirs, "6f9619ff-8b86-4011-b42d-00c04fc96150");
    let theirs_body = issue_body(&theirs_pem, "6f9619ff-8b86-4011-b42d-00c04fc96150");
    let (status, _) = a.curl(
        Some(STATION),
        &format!("/v1/devices/{theirs}/certificate"),
        &["--data-binary", &theirs_body],
    );
    assert_eq!(status, 201);

    let csr_for = |serial: &str, n: u32| {
        let uuid = format!("6f9619ff-8b86-4011-b42d-00c04fc9{n:04}");
        let (pem, _) = device_csr(&tmp, serial, &uuid);
        issue_body(&pem, &uuid)
    };
    let big = "x".repeat(70 * 1024);
    let other_serial_csr = {
        let (pem, _) = device_csr(
            &tmp,
            "VBUS-CPU-2412-000099",
            "6f9619ff-8b86-4011-b42d-00c04fc90099",
        );
        issue_body(&pem, "6f9619ff-8b86-4011-b42d-00c04fc90013")
    };
    let garbage = tmp.join("garbage.b64");
    std::fs::write(&garbage, "%%% not base64 %%%").unwrap();
    let post = |body: String| vec!["--data-binary".to_owned(), body];
    // (who, method, path, curl args, status, code, audit records written)
    type Row = (
        &'static str,
        &'static str,
        String,
        Vec<String>,
        u16,
        &'static str,
        usize,
    );
    let rows: Vec<Row> = vec![
        // The very request station-01 made, replayed by station-02: the
        // device is not station-02's to repeat or re-key.
        (
            "stations/station-02",
            "POST",
            format!("/v1/devices/{theirs}/certificate"),
            post(theirs_body.clone()),
            404,
            "device_not_found",
            1,
        ),
        (
            "stations/station-02",
            "GET",
            format!("/v1/devices/{theirs}"),
            vec![],
            404,
            "device_not_found",
            1,
        ),
        (
            "stations/station-02",
            "POST",
            "/v1/devices/VBUS-CPU-2412-000010/certificate".into(),
            post(csr_for("VBUS-CPU-2412-000010", 10)),
            403,
            "module_not_allowed",
            1,
        ),
        (
            "stations/station-02",
            "POST",
            "/v1/devices/VBUS-PWR-2412-000300/certificate".into(),
            post(csr_for("VBUS-PWR-2412-000300", 11)),
            403,
            "serial_not_allowed",
            1,
        ),
        (
            STATION,
            "POST",
            "/v1/devices/VBUS-CPU-2412-000011/certificate".into(),
            post("{not json".into()),
            400,
            "malformed_request",
            1,
        ),
        (
            STATION,
            "POST",
            "/v1/devices/VBUS-CPU-2412-000011/certificate".into(),
            post(big.clone()),
            413,
            "body_too_large",
            1,
        ),
        (
            STATION,
            "POST",
            "/v1/devices/VBUS-CPU-2412-000012/certificate".into(),
            post(other_serial_csr),
            400,
            "csr_subject_mismatch",
            1,
        ),
        (
            STATION,
            "GET",
            "/v1/nowhere".into(),
            vec![],
            404,
            "not_found",
            0,
        ),
        (
            STATION,
            "GET",
            "/v1/devices/%FF%FE".into(),
            vec![],
            400,
            "malformed_request",
            0,
        ),
        (
            STATION,
            "DELETE",
            "/v1/devices/VBUS-CPU-2412-000011".into(),
            vec![],
            405,
            "method_not_allowed",
            0,
        ),
        (
            STATION,
            "POST",
            "/.well-known/est/simpleenroll".into(),
            vec![
                "-H".into(),
                "Content-Type: text/plain".into(),
                "--data-binary".into(),
                "abc".into(),
            ],
            415,
            "unsupported_media_type",
            1,
        ),
        (
            STATION,
            "POST",
            "/.well-known/est/simpleenroll".into(),
            vec![
                "-H".into(),
                "Content-Type: application/pkcs10".into(),
                "--data-binary".into(),
                format!("@{}", garbage.display()),
            ],
            400,
            "csr_malformed",
            1,
        ),
        (
            "stations/station-02",
            "GET",
            format!("/v1/devices/{owned}"),
            vec![],
            403,
            "module_not_allowed",
            1,
        ),
        (
            STATION,
            "POST",
            "/v1/devices/VBUS-CPU-2412-000013/record".into(),
            post(r#"{"firmware_version":"1","operator":"o","steps":[]}"#.into()),
            404,
            "device_not_found",
            1,
        ),
        (
            STATION,
            "POST",
            format!("/v1/devices/{owned}/record"),
            post(r#"{"firmware_version":"1","operator":"o","steps":[],"extra":1}"#.into()),
            400,
            "malformed_request",
            1,
        ),
        (
            "officer",
            "POST",
            "/v1/devices/VBUS-CPU-2412-000014/certificate".into(),
            post(csr_for("VBUS-CPU-2412-000014", 14)),
            403,
            "role_not_permitted",
            1,
        ),
    ];
    let issued_before = ok(a.kmsctl(&["audit", "show", "--op", "certificate.issue"]))
        .lines()
        .filter(|l| l.contains(r#""result":"ok""#))
        .count();
    for (who, method, path, args, status, code, written) in rows {
        let before = records(&a);
        let mut curl_args: Vec<&str> = vec!["-X", method];
        curl_args.extend(args.iter().map(String::as_str));
        let (got, body) = a.curl(Some(who), &path, &curl_args);
        assert_eq!(got, status, "{method} {path}: {body}");
        assert_eq!(
            json(&body)["error"]["code"],
            code,
            "{method} {path}: {body}"
        );
        assert_eq!(
            records(&a) - before,
            written,
            "{method} {path}: audit records"
        );
        if written == 1 {
            let last = ok(a.kmsctl(&["audit", "show"]))
                .lines()
                .last()
                .unwrap()
                .to_owned();
            assert!(last.contains(&format!(r#""result":"{code}""#)), "{last}");
        }
    }
    // Nothing was issued or stored by any of them.
    let issued_after = ok(a.kmsctl(&["audit", "show", "--op", "certificate.issue"]))
        .lines()
        .filter(|l| l.contains(r#""result":"ok""#))
        .count();
    assert_eq!(issued_after, issued_before);
    for serial in [
        "VBUS-CPU-2412-000010",
        "VBUS-PWR-2412-000300",
        "VBUS-CPU-2412-000011",
        "VBUS-CPU-2412-000012",
        "VBUS-CPU-2412-000014",
    ] {
        let out = a.kmsctl(&["device", "show", serial]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("error[device_not_found]"),
            "{serial}"
        );
    }
    let device = json(&ok(a.kmsctl(&["device", "show", owned])));
    assert_eq!(device["records"].as_array().unwrap().len(), 0);
    // And the service is still up.
    assert_eq!(a.curl(Some(STATION), "/healthz", &[]).0, 200);
}

#[test]
fn slow_and_idle_clients_are_cut_off_and_the_service_stays_up() {
    let mut a = Running::start_with(|dir| {
        softhsm_tests::edit_file(
            &dir.join("kmsd.toml"),
            "[server]\n",
            "[server]\nrequest_timeout_ms = 2000\nhandshake_timeout_ms = 2000\nheader_timeout_ms = 2000\n",
        );
    });
    let station = a.dir.join(STATION);
    // A client sending its body one byte per second: 408 request_timeout.
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "(printf 'POST /v1/devices/VBUS-CPU-2412-000001/record HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 100\\r\\n\\r\\n'; \
          for i in 1 2 3 4 5 6; do printf x; sleep 1; done) | \
         openssl s_client -connect 127.0.0.1:{} -CAfile {c}/ca.pem -cert {c}/cert.pem -key {c}/key.pem -quiet 2>&1",
        a.api,
        c = station.display()
    ));
    let slow = String::from_utf8_lossy(&run(&mut cmd).stdout).into_owned();
    assert!(slow.contains("HTTP/1.1 408"), "{slow}");
    assert!(slow.contains("request_timeout"), "{slow}");

    // 1,000 idle connections that never start TLS.
    let pid = a.service.as_ref().unwrap().0.id();
    let rss = || -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap())
            .unwrap()
    };
    let before = rss();
    let idle: Vec<_> = (0..1000)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", a.api)).unwrap())
        .collect();
    // A real station still gets through while they sit there.
    let (status, body) = a.curl(Some(STATION), "/healthz", &[]);
    assert_eq!(status, 200, "{body}");
    let during = rss();
    assert!(
        during < before + 64 * 1024,
        "RSS grew from {before} kB to {during} kB"
    );
    // The handshake timeout closes them: each reads EOF.
    for mut s in idle.into_iter().take(10) {
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let mut buf = [0u8; 16];
        let n = std::io::Read::read(&mut s, &mut buf).unwrap_or(0);
        assert_eq!(n, 0);
    }
    let timeouts = metric(&a, "kms_tls_handshakes_refused_total{reason=\"timeout\"} ");
    assert!(timeouts >= 10, "{}", a.publication("/metrics").1);
    assert_eq!(a.curl(Some(STATION), "/healthz", &[]).0, 200);
    assert_eq!(a.stop().code(), Some(0));
}

/// POST a DER CSR, base64, to an EST enrolment endpoint; (status, the
/// subjects of the PKCS#7 answer, or the error body).
fn est_enroll(a: &Running, endpoint: &str, der: &Path) -> (u16, Vec<String>, String) {
    let tmp = a.tmp.path();
    let b64 = der.with_extension("b64");
    assert!(run(Command::new("openssl")
        .args(["base64", "-in"])
        .arg(der)
        .arg("-out")
        .arg(&b64))
    .status
    .success());
    let answer = der.with_extension("p7.b64");
    let (status, body) = a.curl(
        Some(STATION),
        &format!("/.well-known/est/{endpoint}"),
        &[
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            &format!("@{}", b64.display()),
            "-o",
            answer.to_str().unwrap(),
        ],
    );
    if status == 200 {
        (status, pkcs7_subjects(tmp, &answer), body)
    } else {
        (
            status,
            vec![],
            std::fs::read_to_string(&answer).unwrap_or(body),
        )
    }
}

#[test]
fn est_reenrolment_certifies_a_new_key_when_the_policy_allows_it() {
    let a = Running::start_with(|dir| {
        softhsm_tests::edit_file(
            &dir.join("policy.toml"),
            "stations_may_reenroll = false",
            "stations_may_reenroll = true",
        );
    });
    let tmp = a.tmp.path().to_owned();
    let serial = "VBUS-PERIPH-2412-000042";
    let uuid = "6f9619ff-8b86-4011-b42d-00c04fc96442";
    let (_, first) = device_csr(&tmp, serial, uuid);
    let (status, subjects, body) = est_enroll(&a, "simpleenroll", &first);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        subjects,
        [format!("serialNumber = {serial}, CN = {serial}")]
    );
    let before = json(&ok(a.kmsctl(&["device", "show", serial])));

    let rekey_dir = tmp.join("rekey");
    std::fs::create_dir(&rekey_dir).unwrap();
    let (_, second) = device_csr(&rekey_dir, serial, uuid);
    let (status, _, body) = est_enroll(&a, "simplereenroll", &second);
    assert_eq!(status, 200, "{body}");
    let after = json(&ok(a.kmsctl(&["device", "show", serial])));
    assert_eq!(
        after["certificates"].as_array().unwrap().len(),
        2,
        "{after}"
    );
    assert_ne!(after["certificate"], before["certificate"]);

    // Re-enrolling a device that was never certified is not an enrolment.
    let (_, stranger) = device_csr(
        &tmp,
        "VBUS-PERIPH-2412-000043",
        "6f9619ff-8b86-4011-b42d-00c04fc96443",
    );
    let (status, _, body) = est_enroll(&a, "simplereenroll", &stranger);
    assert_eq!(status, 404, "{body}");
    assert_eq!(json(&body)["error"]["code"], "device_not_found");
}

#[test]
fn sigterm_lets_an_in_flight_request_finish_then_seals_the_log() {
    let mut a = Running::start();
    let station = a.dir.join(STATION);
    // A request whose body takes two seconds to arrive.
    let body = r#"{"firmware_version":"1","operator":"o","steps":[]}"#;
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "(printf 'POST /v1/devices/VBUS-CPU-2412-000077/record HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\nContent-Length: {len}\\r\\n\\r\\n'; \
          sleep 2; printf '%s' '{body}'; sleep 2) | \
         openssl s_client -connect 127.0.0.1:{port} -CAfile {c}/ca.pem -cert {c}/cert.pem -key {c}/key.pem -quiet 2>&1",
        len = body.len(),
        port = a.api,
        c = station.display()
    ));
    let client = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1000));
    // SIGTERM while the body is still on its way.
    let status = a.stop();
    let out = client.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("HTTP/1.1 404"), "{out}");
    assert!(out.contains("device_not_found"), "{out}");
    assert_eq!(status.code(), Some(0));
    // The refusal is in the log, before the stop, and the last checkpoint
    // covers everything.
    let ops: Vec<String> = ok(a.kmsctl(&["audit", "show"]))
        .lines()
        .map(|l| json(l)["op"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(&ops[ops.len() - 2..], ["device.record", "service.stop"]);
    let v = json(&ok(a.kmsctl(&["--json", "audit", "verify"])));
    assert_eq!(v["records"], v["checkpointed"]);
}

#[test]
fn officers_work_remotely_with_kmsctl_url_and_stations_cannot() {
    let a = Running::start();
    let remote = |cred: &str, args: &[&str]| a.kmsctl_as(cred, args);
    let out_dir = a.tmp.path().join("station-05");
    let added = ok(remote(
        "officer",
        &[
            "--json",
            "station",
            "add",
            "station-05",
            "--modules",
            "CPU",
            "--out",
            out_dir.to_str().unwrap(),
        ],
    ));
    assert_eq!(json(&added)["client"]["id"], "station-05");
    assert!(out_dir.join("key.pem").exists());
    let check = json(&ok(remote(
        "officer",
        &[
            "--json",
            "policy",
            "check",
            "--station",
            "station-05",
            "--serial",
            "VBUS-CPU-2412-000001",
        ],
    )));
    assert_eq!(check["allowed"], true, "{check}");
    let listed = json(&ok(remote("officer", &["--json", "station", "list"])));
    assert_eq!(listed.as_array().unwrap().len(), 2);
    // The officer's actions are recorded under its certificate's identity.
    let by_officer = ok(a.kmsctl(&["audit", "show", "--actor", "officer-01"]));
    let ops: Vec<String> = by_officer
        .lines()
        .map(|l| json(l)["op"].as_str().unwrap().to_owned())
        .collect();
    assert!(ops.starts_with(&["credential.issue".to_owned()]), "{ops:?}");
    assert!(ops.contains(&"policy.load".to_owned()), "{ops:?}");

    // A station's credential is not an officer's: refused and recorded.
    let refused = remote(STATION, &["station", "list"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).starts_with("error[role_not_permitted]"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let last = ok(a.kmsctl(&["audit", "show", "--actor", "station-01"]));
    assert!(
        last.lines()
            .last()
            .unwrap()
            .contains(r#""result":"role_not_permitted""#),
        "{last}"
    );
}

/// Issuance commits reach the store without a flush of their own (the
/// audit record is the durable copy): certificates acknowledged just before
/// a kill -9 are all there after the restart (start-up reconciliation
/// re-applies what the store lost), and a repeat gets the same
/// certificate, not a second one.
#[test]
fn certificates_acknowledged_before_a_kill_9_are_all_there_after_the_restart() {
    // The store writes issuances out only once a minute: the kill comes
    // before any timed flush.
    let mut a = Running::start_with(|dir| {
        let path = dir.join("kmsd.toml");
        let toml = std::fs::read_to_string(&path).unwrap();
        assert!(toml.contains("[storage]\n"), "{toml}");
        let toml = toml.replacen("[storage]\n", "[storage]\nflush_every_ms = 60000\n", 1);
        std::fs::write(&path, toml).unwrap();
    });
    let tmp = a.tmp.path().to_owned();
    let mut issued = Vec::new();
    for i in 0..12u32 {
        let serial = format!("VBUS-CPU-2412-0008{i:02}");
        let uuid = format!("6f9619ff-8b86-4011-b42d-00c04fc98{i:03}");
        let (pem, _) = device_csr(&tmp, &serial, &uuid);
        let body = issue_body(&pem, &uuid);
        let (status, answer) = a.curl(
            Some(STATION),
            &format!("/v1/devices/{serial}/certificate"),
            &["--data-binary", &body],
        );
        assert_eq!(status, 201, "{answer}");
        let cert = json(&answer)["serial_number"].as_str().unwrap().to_owned();
        issued.push((serial, body, cert));
    }
    // At once: well inside the store's flush interval.
    let mut service = a.service.take().unwrap();
    service.0.kill().unwrap();
    service.0.wait().unwrap();
    drop(service);
    a.restart();
    for (serial, body, cert) in &issued {
        let (status, device) = a.curl(Some(STATION), &format!("/v1/devices/{serial}"), &[]);
        assert_eq!(status, 200, "{device}");
        assert_eq!(json(&device)["certificate"].as_str(), Some(cert.as_str()));
        let (status, again) = a.curl(
            Some(STATION),
            &format!("/v1/devices/{serial}/certificate"),
            &["--data-binary", body],
        );
        assert_eq!(status, 200, "{again}");
        assert_eq!(json(&again)["serial_number"].as_str(), Some(cert.as_str()));
        assert_eq!(json(&again)["newly_issued"], false);
    }
    let log = std::fs::read_to_string(a.dir.join("kmsd.log")).unwrap_or_default();
    let restored: u64 = log
        .lines()
        .filter(|l| l.contains("restored"))
        .filter_map(|l| {
            let at = l.find("restored=")? + "restored=".len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    // kill -9 keeps what sled already handed to the kernel; what it still
    // held in its own buffers (here, typically the last issuance) is what
    // reconciliation brought back. A power cut would leave more to it.
    assert!(restored <= issued.len() as u64, "{log}");
    eprintln!("re-applied from the audit log after the kill: {restored}");
    a.stop();
    ok(a.kmsctl(&["audit", "verify"]));
}
