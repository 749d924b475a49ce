//! The client against a real TLS server that requires a client certificate:
//! proves the station presents its certificate, trusts only `ca.pem`, and
//! maps answers and refusals as documented.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use std::time::Duration;

use common::{device_csr, make_pki, start_appliance};
use station::{Client, Credential, Error, ProvisioningRecord, Timeouts};

fn client_for(pki: &common::Pki, url: &str) -> Client {
    let cred = Credential::from_dir(&pki.station_dir()).unwrap();
    Client::new(url, &cred).unwrap()
}

#[test]
fn mtls_enroll_issues_once_and_repeats_the_stored_certificate() {
    let pki = make_pki("vBus internal CA (test)");
    let app = start_appliance(&pki);
    let client = client_for(&pki, &app.url());

    let csr = device_csr("VBUS-CPU-2412-000001");
    let first = client
        .enroll(
            "VBUS-CPU-2412-000001",
            "4f1c2b3a-1d2e-4f60-8a7b-9c0d1e2f3a4b",
            &csr,
        )
        .unwrap();
    assert!(first.newly_issued);
    assert_eq!(first.serial_number.len(), 32);
    assert!(first.certificate.starts_with("-----BEGIN CERTIFICATE-----"));

    // The same request again (a retry): the stored certificate, not a new one.
    let again = client
        .enroll(
            "VBUS-CPU-2412-000001",
            "4f1c2b3a-1d2e-4f60-8a7b-9c0d1e2f3a4b",
            &csr,
        )
        .unwrap();
    assert!(!again.newly_issued);
    assert_eq!(again.certificate, first.certificate);
    assert_eq!(app.issued.load(std::sync::atomic::Ordering::SeqCst), 1);

    // The station presented its own certificate on the connection.
    let station_der =
        rustls_pki_types::CertificateDer::from_pem_file(pki.station_dir().join("cert.pem"))
            .unwrap();
    let peers = app.peers.lock().unwrap();
    assert!(!peers.is_empty());
    assert!(peers.iter().all(|p| p.as_slice() == station_der.as_ref()));
    // Clones share one keep-alive pool: two requests, one connection.
    assert_eq!(peers.len(), 1, "keep-alive connection reused");
}

use rustls_pki_types::pem::PemObject as _;

#[test]
fn refusals_keep_the_appliance_code() {
    let pki = make_pki("vBus internal CA (test)");
    let app = start_appliance(&pki);
    let client = client_for(&pki, &app.url());

    let csr = device_csr("VBUS-CPU-2412-000002");
    client.enroll("VBUS-CPU-2412-000002", "u", &csr).unwrap();
    // Another key for a certified device.
    let other = device_csr("VBUS-CPU-2412-000002");
    let e = client
        .enroll("VBUS-CPU-2412-000002", "u", &other)
        .unwrap_err();
    assert_eq!(e.code(), "device_already_certified");
    assert!(matches!(e, Error::Refused { status: 409, .. }), "{e:?}");

    let e = client
        .enroll(
            "VBUS-CPU-2412-000429",
            "u",
            &device_csr("VBUS-CPU-2412-000429"),
        )
        .unwrap_err();
    match e {
        Error::Refused {
            status,
            code,
            retry_after,
            ..
        } => {
            assert_eq!((status, code.as_str()), (429, "quota_exceeded"));
            assert_eq!(retry_after.as_deref(), Some("2030-01-01T00:00:00Z"));
        }
        other => panic!("{other:?}"),
    }

    let e = client
        .enroll(
            "VBUS-CPU-2412-000502",
            "u",
            &device_csr("VBUS-CPU-2412-000502"),
        )
        .unwrap_err();
    assert_eq!(e.code(), "http_502");

    let e = client.device("VBUS-CPU-2412-999999").unwrap_err();
    assert_eq!(e.code(), "device_not_found");

    // A serial that would change the URL path never leaves the station.
    let before = app.requests.lock().unwrap().len();
    let e = client.device("../healthz").unwrap_err();
    assert_eq!(e.code(), "invalid_module_serial");
    assert_eq!(app.requests.lock().unwrap().len(), before);
}

#[test]
fn a_certificate_for_another_key_is_refused_by_the_client() {
    let pki = make_pki("vBus internal CA (test)");
    let app = start_appliance(&pki);
    let client = client_for(&pki, &app.url());
    let e = client
        .enroll(
            "VBUS-CPU-2412-000666",
            "u",
            &device_csr("VBUS-CPU-2412-000666"),
        )
        .unwrap_err();
    assert_eq!(e.code(), "invalid_response");
    assert!(e.to_string().contains("public key"), "{e}");
}

#[test]
fn device_record_and_health() {
    let pki = make_pki("vBus internal CA (test)");
    let app = start_appliance(&pki);
    let client = client_for(&pki, &app.url());
    assert_eq!(client.health().unwrap()["status"], "ok");
    client
        .enroll(
            "VBUS-PWR-2412-000003",
            "u",
            &device_csr("VBUS-PWR-2412-000003"),
        )
        .unwrap();
    let dev = client.device("VBUS-PWR-2412-000003").unwrap();
    assert_eq!(dev["serial"], "VBUS-PWR-2412-000003");
    let record = ProvisioningRecord::from_json(
        r#"{"firmware_version":"1.0.0","operator":"op","steps":[{"name":"flash","passed":true}],
            "component_lots":[]}"#,
    )
    .unwrap();
    let answer = client.record("VBUS-PWR-2412-000003", &record).unwrap();
    assert_eq!(answer["recorded"], true);
    let paths = app.requests.lock().unwrap().clone();
    assert!(paths.contains(&"POST /v1/devices/VBUS-PWR-2412-000003/record".to_owned()));
}

#[test]
fn a_server_outside_ca_pem_is_not_trusted() {
    // The station trusts only its own ca.pem; this server is certified by
    // another CA.
    let ours = make_pki("vBus internal CA (test)");
    let theirs = make_pki("some other CA");
    let app = start_appliance(&theirs);
    let client = client_for(&ours, &app.url());
    let e = client.health().unwrap_err();
    assert_eq!(e.code(), "transport_error", "{e}");
    assert!(
        e.to_string()
            .contains("does not chain to the credential's ca.pem"),
        "{e}"
    );
    assert!(app.requests.lock().unwrap().is_empty());
}

#[test]
fn a_station_certificate_from_another_ca_is_rejected_by_the_server() {
    let appliance = make_pki("vBus internal CA (test)");
    let app = start_appliance(&appliance);
    // Trusts the right server CA, but presents a certificate the server's
    // CA did not issue.
    let stranger = make_pki("stranger CA");
    let dir = tempfile::tempdir().unwrap();
    for f in ["cert.pem", "key.pem"] {
        std::fs::copy(stranger.station_dir().join(f), dir.path().join(f)).unwrap();
    }
    std::fs::copy(appliance.path("ca.pem"), dir.path().join("ca.pem")).unwrap();
    common::set_mode(&dir.path().join("key.pem"), 0o600);
    let cred = Credential::from_dir(dir.path()).unwrap();
    let client = Client::new(&app.url(), &cred).unwrap();
    let e = client.health().unwrap_err();
    assert_eq!(e.code(), "transport_error", "{e}");
    assert!(
        e.to_string()
            .contains("did not accept the station certificate"),
        "{e}"
    );
    assert!(app.requests.lock().unwrap().is_empty());
}

#[test]
fn nothing_listening_is_a_transport_error() {
    let pki = make_pki("vBus internal CA (test)");
    // Bind and drop to get a port that is very likely closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cred = Credential::from_dir(&pki.station_dir()).unwrap();
    let timeouts = Timeouts {
        connect: Duration::from_secs(2),
        read: Duration::from_secs(2),
    };
    let client =
        Client::with_timeouts(&format!("https://127.0.0.1:{port}"), &cred, timeouts).unwrap();
    let e = client.health().unwrap_err();
    assert_eq!(e.code(), "transport_error");
}

#[test]
fn plain_http_urls_are_refused() {
    let pki = make_pki("vBus internal CA (test)");
    let cred = Credential::from_dir(&pki.station_dir()).unwrap();
    for url in ["http://127.0.0.1:8443", "127.0.0.1:8443", "https://", ""] {
        let e = Client::new(url, &cred).unwrap_err();
        assert_eq!(e.code(), "invalid_url", "{url}");
    }
    let c = Client::new("https://127.0.0.1:8443/", &cred).unwrap();
    assert_eq!(c.base_url(), "https://127.0.0.1:8443");
}

#[test]
fn client_is_clone_send_sync() {
    fn check<T: Clone + Send + Sync>() {}
    check::<Client>();
}
