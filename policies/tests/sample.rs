//! The sample policy (`tests/data/policy.toml`) uses every feature of the
//! format: it loads, its hash is that of its bytes, and both renderings
//! (Display for humans, `effective` for `--json`) show all of it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use policies::{Action, Actor, ApprovalKind, Decision, Policy, Quotas, Terms};
use sha2::{Digest, Sha256};

const SAMPLE: &str = include_str!("data/policy.toml");

#[test]
fn the_sample_loads_and_hashes_its_exact_text() {
    let policy = Policy::parse(SAMPLE).unwrap();
    assert_eq!(
        policy.sha256(),
        hex::encode(Sha256::digest(SAMPLE.as_bytes()))
    );
    let edited = Policy::parse(&format!("{SAMPLE}\n# a comment\n")).unwrap();
    assert_ne!(edited.sha256(), policy.sha256());
    assert_eq!(policy.required(ApprovalKind::EscrowRecovery), 3);
    assert_eq!(policy.required(ApprovalKind::FirmwareSigning), 2);
    assert!(policy.reissue().stations_may_reenroll);
    assert!(!policy.reissue().revoke_superseded);
    let quotas = Quotas::new();
    assert_eq!(
        policy.decide(
            &Actor::Client("station-03"),
            &Action::IssueDevice {
                module_serial: "VBUS-COMM-2412-123456",
                key_type: "rsa-3072"
            },
            &quotas,
            0,
        ),
        Decision::Allow(Terms {
            validity_days: Some(1825)
        })
    );
}

#[test]
fn display_shows_every_station_and_section() {
    let policy = Policy::parse(SAMPLE).unwrap();
    let shown = policy.to_string();
    for want in [
        "station-01:",
        "station-02:",
        "station-03:",
        "modules: CPU, PWR",
        "VBUS-CPU-2412-003000..003999",
        "work order WO-2412-018: VBUS-PERIPH-2412-000000..000049, VBUS-PWR-2412-000500..000599",
        "500 per UTC hour, 6000 per UTC day",
        "serials: any serial of its modules",
        "CPU: key types ecdsa-p256; validity 3650 days",
        "PERIPH: key types any",
        "stations may re-enroll: yes; revoke superseded: no",
        "escrow_recovery: 3 of 3",
        "firmware_signing: 2 of 2",
        "officer-01: officer, firmware-signer, auditor",
        policy.sha256(),
    ] {
        assert!(shown.contains(want), "{want:?} missing from\n{shown}");
    }
}

#[test]
fn effective_fills_in_the_defaults() {
    let policy = Policy::parse(SAMPLE).unwrap();
    let json = serde_json::to_value(policy.effective()).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["sha256"], policy.sha256());
    assert_eq!(json["stations"]["station-01"]["per_hour"], 500);
    assert_eq!(
        json["stations"]["station-02"]["per_day"],
        serde_json::Value::Null
    );
    assert_eq!(
        json["stations"]["station-02"]["work_orders"][1],
        "WO-2412-018"
    );
    assert_eq!(json["identities"]["officer-02"][1], "firmware-signer");
    assert_eq!(
        json["profiles"]["PERIPH"]["key_types"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(json["profiles"]["COMM"]["validity_days"], 1825);
    assert_eq!(json["reissue"]["revoke_superseded"], false);
    assert_eq!(json["approvals"]["escrow_recovery"]["required"], 3);

    let minimal = Policy::parse(
        "version = 1\n[identities]\n\"station-01\" = [\"station\"]\n[stations.\"station-01\"]\nmodules = [\"CPU\"]\n",
    )
    .unwrap();
    let json = serde_json::to_value(minimal.effective()).unwrap();
    assert_eq!(json["reissue"]["stations_may_reenroll"], false);
    assert_eq!(json["reissue"]["revoke_superseded"], true);
    assert_eq!(json["approvals"]["escrow_recovery"]["required"], 2);
    assert_eq!(json["approvals"]["firmware_signing"]["required"], 2);
    assert_eq!(
        json["stations"]["station-01"]["serials"],
        serde_json::json!([])
    );
    let empty = serde_json::to_value(Policy::empty().effective()).unwrap();
    assert_eq!(empty["identities"], serde_json::json!({}));
}
