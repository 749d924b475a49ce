//! Every rule, allow and deny, at its boundaries: one row per case, each
//! asserting the exact code (or the allow and its terms). Every row also
//! checks that `explain` agrees with `decide`: its first refusal is the
//! decision's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use policies::{Action, Actor, Code, Decision, Policy, Quotas, Role, Terms};

const POLICY: &str = r#"
version = 1

[identities]
"officer-01" = ["officer", "firmware-signer", "auditor"]
"officer-02" = ["officer"]
"auditor-01" = ["auditor"]
"signer-01" = ["firmware-signer"]
"station-01" = ["station"]
"station-02" = ["station"]
"station-03" = ["station"]
"station-04" = ["station"]
"nobody-01" = []

[stations."station-01"]
modules = ["CPU", "PWR"]
serials = ["VBUS-CPU-2412-003000..003999"]
work_orders = ["WO-2412-017"]
per_hour = 3
per_day = 5

[stations."station-02"]
modules = ["COMM", "CPU"]
serials = ["VBUS-CPU-2412-005000..005999"]

# station-03 holds the station role but has no rule.

[stations."station-04"]
modules = ["PERIPH"]

[work_orders."WO-2412-017"]
serials = ["VBUS-PWR-2412-000100..000199"]

[profiles.CPU]
key_types = ["ecdsa-p256"]
validity_days = 3650

[profiles.COMM]
validity_days = 1825
"#;

/// 2024-12-01T12:00:00Z.
const NOON: i64 = 1_733_054_400;

fn issue<'a>(module_serial: &'a str, key_type: &'a str) -> Action<'a> {
    Action::IssueDevice {
        module_serial,
        key_type,
    }
}

fn reenroll<'a>(module_serial: &'a str, key_type: &'a str) -> Action<'a> {
    Action::Reenroll {
        module_serial,
        key_type,
    }
}

const S1: Actor<'static> = Actor::Client("station-01");
const S2: Actor<'static> = Actor::Client("station-02");
const S3: Actor<'static> = Actor::Client("station-03");
const S4: Actor<'static> = Actor::Client("station-04");
const OFFICER: Actor<'static> = Actor::Client("officer-02");
const AUDITOR: Actor<'static> = Actor::Client("auditor-01");
const SIGNER: Actor<'static> = Actor::Client("signer-01");
const NOBODY: Actor<'static> = Actor::Client("nobody-01");
const UNKNOWN: Actor<'static> = Actor::Client("station-99");
const LOCAL: Actor<'static> = Actor::Local;

/// An allow with no validity set.
const ALLOW: Result<Option<u32>, Code> = Ok(None);
/// An allow with the CPU profile's validity.
const CPU: Result<Option<u32>, Code> = Ok(Some(3650));

type Row = (
    &'static str,
    Actor<'static>,
    Action<'static>,
    Result<Option<u32>, Code>,
);

fn check(policy: &Policy, rows: &[Row]) {
    let quotas = Quotas::new();
    for (name, actor, action, want) in rows {
        let decision = policy.decide(actor, action, &quotas, NOON);
        let got = match &decision {
            Decision::Allow(terms) => Ok(terms.validity_days),
            Decision::Deny(d) => Err(d.code),
        };
        assert_eq!(&got, want, "{name}: {decision:?}");
        if let Decision::Deny(d) = &decision {
            assert!(!d.reason.is_empty(), "{name}");
            assert_eq!(d.retry_after, None, "{name}");
        }
        let steps = policy.explain(actor, action, &quotas, NOON);
        let first = steps.iter().find_map(|s| s.verdict.as_ref().err());
        assert_eq!(
            first.map(|d| d.code),
            want.err(),
            "{name}: explain {steps:#?}"
        );
        assert_eq!(steps[0].rule, "role", "{name}");
    }
    // decide and explain never count anything
    for id in ["station-01", "station-02", "station-04"] {
        assert_eq!(quotas.usage(id, NOON), Default::default());
    }
}

fn policy() -> Policy {
    Policy::parse(POLICY).unwrap()
}

#[test]
fn role_rule() {
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("unknown identity issues", UNKNOWN, issue("VBUS-CPU-2412-003000", "ecdsa-p256"), Err(Code::UnknownIdentity)),
        ("unknown identity reads the audit log", UNKNOWN, Action::AuditRead, Err(Code::UnknownIdentity)),
        ("officer issues", OFFICER, issue("VBUS-CPU-2412-003000", "ecdsa-p256"), Err(Code::RoleNotPermitted)),
        ("identity without roles issues", NOBODY, issue("VBUS-CPU-2412-003000", "ecdsa-p256"), Err(Code::RoleNotPermitted)),
        ("auditor records a device", AUDITOR, Action::DeviceRecord { module_serial: "VBUS-CPU-2412-003000" }, Err(Code::RoleNotPermitted)),
        ("officer fetches a device secret", OFFICER, Action::DeviceSecret { module_serial: "VBUS-CPU-2412-003000" }, Err(Code::RoleNotPermitted)),
        ("officer revokes", OFFICER, Action::Revoke, ALLOW),
        ("station revokes", S1, Action::Revoke, Err(Code::RoleNotPermitted)),
        ("auditor revokes", AUDITOR, Action::Revoke, Err(Code::RoleNotPermitted)),
        ("officer allows a re-issue", OFFICER, Action::AllowReissue { module_serial: "VBUS-CPU-2412-003000" }, ALLOW),
        ("station allows a re-issue", S1, Action::AllowReissue { module_serial: "VBUS-CPU-2412-003000" }, Err(Code::RoleNotPermitted)),
        ("signer signs firmware", SIGNER, Action::FirmwareSign, ALLOW),
        ("officer without signer role signs firmware", OFFICER, Action::FirmwareSign, Err(Code::RoleNotPermitted)),
        ("officer requests escrow recovery", OFFICER, Action::EscrowRequest, ALLOW),
        ("signer requests escrow recovery", SIGNER, Action::EscrowRequest, Err(Code::RoleNotPermitted)),
        ("auditor reads the audit log", AUDITOR, Action::AuditRead, ALLOW),
        ("officer reads the audit log", OFFICER, Action::AuditRead, ALLOW),
        ("station reads the audit log", S1, Action::AuditRead, Err(Code::RoleNotPermitted)),
        ("officer administers", OFFICER, Action::Admin, ALLOW),
        ("auditor administers", AUDITOR, Action::Admin, Err(Code::RoleNotPermitted)),
        ("station administers", S1, Action::Admin, Err(Code::RoleNotPermitted)),
        ("local administers", LOCAL, Action::Admin, ALLOW),
        ("local signs firmware", LOCAL, Action::FirmwareSign, ALLOW),
        ("local reads the audit log", LOCAL, Action::AuditRead, ALLOW),
        ("local revokes", LOCAL, Action::Revoke, ALLOW),
        ("local requests escrow recovery", LOCAL, Action::EscrowRequest, ALLOW),
    ];
    check(&policy(), rows);
}

#[test]
fn device_read_rule() {
    let read = |module_serial| Action::DeviceRead { module_serial };
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("officer reads any module", OFFICER, read("VBUS-COMM-2412-000001"), ALLOW),
        ("auditor reads any module", AUDITOR, read("VBUS-PERIPH-2412-000001"), ALLOW),
        ("station reads its module type", S1, read("VBUS-CPU-2412-003000"), ALLOW),
        ("station reads its module type outside its ranges", S1, read("VBUS-CPU-2412-009999"), ALLOW),
        ("station reads another module type", S1, read("VBUS-COMM-2412-000001"), Err(Code::ModuleNotAllowed)),
        ("station reads a malformed serial", S1, read("VBUS-CPU-2412-3000"), Err(Code::MalformedSerial)),
        ("station without rule reads", S3, read("VBUS-CPU-2412-003000"), Err(Code::NoStationRule)),
        ("signer reads", SIGNER, read("VBUS-CPU-2412-003000"), Err(Code::RoleNotPermitted)),
        ("unknown identity reads", UNKNOWN, read("VBUS-CPU-2412-003000"), Err(Code::UnknownIdentity)),
        ("local reads", LOCAL, read("VBUS-COMM-2412-000001"), ALLOW),
    ];
    check(&policy(), rows);
}

#[test]
fn station_rule() {
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("station with a rule", S1, issue("VBUS-CPU-2412-003000", "ecdsa-p256"), CPU),
        ("station with no rule issues", S3, issue("VBUS-CPU-2412-003000", "ecdsa-p256"), Err(Code::NoStationRule)),
        ("station with no rule records", S3, Action::DeviceRecord { module_serial: "VBUS-CPU-2412-003000" }, Err(Code::NoStationRule)),
        ("station with no rule re-enrolls", S3, reenroll("VBUS-CPU-2412-003000", "ecdsa-p256"), Err(Code::NoStationRule)),
        ("local has no station rule and needs none", LOCAL, issue("VBUS-CPU-2412-003000", "ecdsa-p256"), CPU),
    ];
    check(&policy(), rows);
}

#[test]
fn serial_format_rule() {
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("five digits", S1, issue("VBUS-CPU-2412-03000", "ecdsa-p256"), Err(Code::MalformedSerial)),
        ("seven digits", S1, issue("VBUS-CPU-2412-0030000", "ecdsa-p256"), Err(Code::MalformedSerial)),
        ("unknown module type", S1, issue("VBUS-GPU-2412-003000", "ecdsa-p256"), Err(Code::MalformedSerial)),
        ("lowercase prefix", S1, issue("vbus-CPU-2412-003000", "ecdsa-p256"), Err(Code::MalformedSerial)),
        ("three-digit month", S1, issue("VBUS-CPU-241-003000", "ecdsa-p256"), Err(Code::MalformedSerial)),
        ("trailing text", S1, issue("VBUS-CPU-2412-003000 ", "ecdsa-p256"), Err(Code::MalformedSerial)),
        ("empty", S1, issue("", "ecdsa-p256"), Err(Code::MalformedSerial)),
        ("malformed before module", S2, issue("VBUS-PWR-2412-0001", "ecdsa-p256"), Err(Code::MalformedSerial)),
        ("local, malformed", LOCAL, issue("VBUS-CPU-2412-3000", "ecdsa-p256"), Err(Code::MalformedSerial)),
        ("local record, malformed", LOCAL, Action::DeviceRecord { module_serial: "CPU-3000" }, Err(Code::MalformedSerial)),
    ];
    check(&policy(), rows);
}

#[test]
fn module_rule() {
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("CPU for a CPU station", S1, issue("VBUS-CPU-2412-003500", "ecdsa-p256"), CPU),
        ("PWR for a PWR station", S1, issue("VBUS-PWR-2412-000150", "ed25519"), ALLOW),
        ("COMM for a CPU/PWR station", S1, issue("VBUS-COMM-2412-003500", "ecdsa-p256"), Err(Code::ModuleNotAllowed)),
        ("PERIPH for a CPU/PWR station", S1, issue("VBUS-PERIPH-2412-000150", "ecdsa-p256"), Err(Code::ModuleNotAllowed)),
        ("PWR for a COMM/CPU station", S2, issue("VBUS-PWR-2412-000150", "ecdsa-p256"), Err(Code::ModuleNotAllowed)),
        ("record of another module type", S1, Action::DeviceRecord { module_serial: "VBUS-COMM-2412-000001" }, Err(Code::ModuleNotAllowed)),
        ("secret of another module type", S1, Action::DeviceSecret { module_serial: "VBUS-COMM-2412-000001" }, Err(Code::ModuleNotAllowed)),
        ("local, any module type", LOCAL, issue("VBUS-COMM-2412-000001", "rsa-3072"), Ok(Some(1825))),
    ];
    check(&policy(), rows);
}

#[test]
fn serial_range_rule() {
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("low end", S1, issue("VBUS-CPU-2412-003000", "ecdsa-p256"), CPU),
        ("high end", S1, issue("VBUS-CPU-2412-003999", "ecdsa-p256"), CPU),
        ("below the low end", S1, issue("VBUS-CPU-2412-002999", "ecdsa-p256"), Err(Code::SerialNotAllowed)),
        ("above the high end", S1, issue("VBUS-CPU-2412-004000", "ecdsa-p256"), Err(Code::SerialNotAllowed)),
        ("another month", S1, issue("VBUS-CPU-2411-003500", "ecdsa-p256"), Err(Code::SerialNotAllowed)),
        ("another station's range", S1, issue("VBUS-CPU-2412-005000", "ecdsa-p256"), Err(Code::SerialNotAllowed)),
        ("the other station in its own range", S2, issue("VBUS-CPU-2412-005000", "ecdsa-p256"), CPU),
        ("the other station in the first's range", S2, issue("VBUS-CPU-2412-003000", "ecdsa-p256"), Err(Code::SerialNotAllowed)),
        ("work order low end", S1, issue("VBUS-PWR-2412-000100", "ecdsa-p256"), ALLOW),
        ("work order high end", S1, issue("VBUS-PWR-2412-000199", "ecdsa-p256"), ALLOW),
        ("below the work order", S1, issue("VBUS-PWR-2412-000099", "ecdsa-p256"), Err(Code::SerialNotAllowed)),
        ("above the work order", S1, issue("VBUS-PWR-2412-000200", "ecdsa-p256"), Err(Code::SerialNotAllowed)),
        ("ranges bind every module type of the station", S2, issue("VBUS-COMM-2412-000001", "ed25519"), Err(Code::SerialNotAllowed)),
        ("no ranges: any serial of its modules", S4, issue("VBUS-PERIPH-9912-999999", "rsa-2048"), ALLOW),
        ("no ranges: still only its modules", S4, issue("VBUS-CPU-2412-003000", "ecdsa-p256"), Err(Code::ModuleNotAllowed)),
        ("record in range", S1, Action::DeviceRecord { module_serial: "VBUS-CPU-2412-003000" }, ALLOW),
        ("record out of range", S1, Action::DeviceRecord { module_serial: "VBUS-CPU-2412-004000" }, Err(Code::SerialNotAllowed)),
        ("secret in a work order", S1, Action::DeviceSecret { module_serial: "VBUS-PWR-2412-000199" }, ALLOW),
        ("secret out of range", S1, Action::DeviceSecret { module_serial: "VBUS-PWR-2412-000200" }, Err(Code::SerialNotAllowed)),
        ("local, out of every range", LOCAL, issue("VBUS-CPU-2412-009999", "ecdsa-p256"), CPU),
        ("local record, out of every range", LOCAL, Action::DeviceRecord { module_serial: "VBUS-CPU-2412-009999" }, ALLOW),
    ];
    check(&policy(), rows);
}

#[test]
fn key_type_and_validity_rules() {
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("allowed by the CPU profile", S1, issue("VBUS-CPU-2412-003000", "ecdsa-p256"), CPU),
        ("refused by the CPU profile", S1, issue("VBUS-CPU-2412-003000", "rsa-2048"), Err(Code::KeyTypeNotAllowed)),
        ("ed25519 refused by the CPU profile", S1, issue("VBUS-CPU-2412-003000", "ed25519"), Err(Code::KeyTypeNotAllowed)),
        ("PWR has no key type restriction", S1, issue("VBUS-PWR-2412-000100", "rsa-3072"), ALLOW),
        ("unknown key type, unrestricted profile", S1, issue("VBUS-PWR-2412-000100", "p-192"), Err(Code::KeyTypeNotAllowed)),
        ("empty key type", S1, issue("VBUS-PWR-2412-000100", ""), Err(Code::KeyTypeNotAllowed)),
        ("key type names are exact", S1, issue("VBUS-PWR-2412-000100", "ECDSA-P256"), Err(Code::KeyTypeNotAllowed)),
        ("COMM validity", LOCAL, issue("VBUS-COMM-2412-000001", "ed25519"), Ok(Some(1825))),
        ("local is held to the profile key types", LOCAL, issue("VBUS-CPU-2412-003000", "rsa-2048"), Err(Code::KeyTypeNotAllowed)),
        ("local, unknown key type", LOCAL, issue("VBUS-PERIPH-2412-000001", "dsa-1024"), Err(Code::KeyTypeNotAllowed)),
        ("local gets the profile validity", LOCAL, issue("VBUS-CPU-2412-003000", "ecdsa-p256"), CPU),
        ("records ignore key types", S1, Action::DeviceRecord { module_serial: "VBUS-CPU-2412-003000" }, ALLOW),
    ];
    check(&policy(), rows);
}

#[test]
fn reenroll_rule() {
    let refused = policy();
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("station re-enrolls without permission", S1, reenroll("VBUS-CPU-2412-003000", "ecdsa-p256"), Err(Code::ReenrollNotPermitted)),
        ("station issues (not re-enrolling)", S1, issue("VBUS-CPU-2412-003000", "ecdsa-p256"), CPU),
        ("station rules come first", S1, reenroll("VBUS-CPU-2412-004000", "ecdsa-p256"), Err(Code::SerialNotAllowed)),
        ("key type comes first", S1, reenroll("VBUS-CPU-2412-003000", "rsa-2048"), Err(Code::KeyTypeNotAllowed)),
        ("local re-enrolls", LOCAL, reenroll("VBUS-CPU-2412-003000", "ecdsa-p256"), CPU),
        ("officer re-enrolls", OFFICER, reenroll("VBUS-CPU-2412-003000", "ecdsa-p256"), Err(Code::RoleNotPermitted)),
    ];
    check(&refused, rows);
    assert!(!refused.reissue().stations_may_reenroll);
    assert!(refused.reissue().revoke_superseded);

    let permitted = Policy::parse(&format!(
        "{POLICY}\n[reissue]\nstations_may_reenroll = true\n"
    ))
    .unwrap();
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("station re-enrolls with permission", S1, reenroll("VBUS-CPU-2412-003000", "ecdsa-p256"), CPU),
        ("station re-enrolls out of range", S1, reenroll("VBUS-CPU-2412-004000", "ecdsa-p256"), Err(Code::SerialNotAllowed)),
        ("station re-enrolls another module type", S1, reenroll("VBUS-COMM-2412-000001", "ecdsa-p256"), Err(Code::ModuleNotAllowed)),
    ];
    check(&permitted, rows);
    assert!(permitted.reissue().stations_may_reenroll);
}

#[test]
fn the_first_refusal_in_rule_order_wins() {
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("unknown identity, malformed serial", UNKNOWN, issue("bad", "p-192"), Err(Code::UnknownIdentity)),
        ("no station rule, malformed serial", S3, issue("bad", "p-192"), Err(Code::NoStationRule)),
        ("malformed serial, bad key type", S1, issue("VBUS-CPU-24-1", "p-192"), Err(Code::MalformedSerial)),
        ("module, serial and key type", S1, issue("VBUS-COMM-2412-000001", "p-192"), Err(Code::ModuleNotAllowed)),
        ("serial and key type", S1, issue("VBUS-CPU-2412-004000", "rsa-2048"), Err(Code::SerialNotAllowed)),
        ("key type and re-enrolment", S1, reenroll("VBUS-CPU-2412-003000", "rsa-2048"), Err(Code::KeyTypeNotAllowed)),
    ];
    check(&policy(), rows);
}

#[test]
fn the_empty_policy_denies_every_client() {
    let empty = Policy::empty();
    assert_eq!(
        empty.sha256(),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert!(empty.roles("officer-01").is_empty());
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("station issues", S1, issue("VBUS-CPU-2412-003000", "ecdsa-p256"), Err(Code::UnknownIdentity)),
        ("officer administers", OFFICER, Action::Admin, Err(Code::UnknownIdentity)),
        ("auditor reads", AUDITOR, Action::AuditRead, Err(Code::UnknownIdentity)),
        ("local issues", LOCAL, issue("VBUS-CPU-2412-003000", "rsa-2048"), ALLOW),
    ];
    check(&empty, rows);
}

#[test]
fn roles_lists_what_an_identity_holds() {
    let p = policy();
    assert_eq!(
        p.roles("officer-01"),
        &[Role::Officer, Role::FirmwareSigner, Role::Auditor]
    );
    assert_eq!(p.roles("station-01"), &[Role::Station]);
    assert!(p.roles("nobody-01").is_empty());
    assert!(p.roles("station-99").is_empty());
    assert_eq!(Role::FirmwareSigner.as_str(), "firmware-signer");
}

#[test]
fn codes_have_stable_names() {
    let rows = [
        (Code::UnknownIdentity, "unknown_identity"),
        (Code::RoleNotPermitted, "role_not_permitted"),
        (Code::NoStationRule, "no_station_rule"),
        (Code::ModuleNotAllowed, "module_not_allowed"),
        (Code::SerialNotAllowed, "serial_not_allowed"),
        (Code::MalformedSerial, "malformed_serial"),
        (Code::QuotaExceeded, "quota_exceeded"),
        (Code::KeyTypeNotAllowed, "key_type_not_allowed"),
        (Code::ReenrollNotPermitted, "reenroll_not_permitted"),
        (Code::SelfApproval, "self_approval"),
        (Code::DuplicateApproval, "duplicate_approval"),
        (Code::ApproverNotEligible, "approver_not_eligible"),
    ];
    for (code, name) in rows {
        assert_eq!(code.as_str(), name);
        assert_eq!(code.to_string(), name);
        assert_eq!(serde_json::to_value(code).unwrap(), name);
    }
}

#[test]
fn a_hostile_identity_or_serial_is_not_echoed_at_length() {
    let p = policy();
    let long = "x".repeat(10_000);
    let quotas = Quotas::new();
    for (actor, action) in [
        (Actor::Client(&long), Action::Admin),
        (S1, issue(&long, "ecdsa-p256")),
        (S4, issue("VBUS-PERIPH-2412-000001", &long)),
    ] {
        let Decision::Deny(d) = p.decide(&actor, &action, &quotas, NOON) else {
            panic!("allowed");
        };
        assert!(d.reason.len() < 300, "{}", d.reason);
    }
    assert_eq!(
        p.decide(
            &S1,
            &issue("VBUS-CPU-2412-003000", "ecdsa-p256"),
            &quotas,
            NOON
        ),
        Decision::Allow(Terms {
            validity_days: Some(3650)
        })
    );
}
