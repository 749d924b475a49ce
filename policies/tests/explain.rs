//! `explain`: every rule that applies, in order, each with its verdict,
//! going on after a refusal; never counting anything.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use policies::{Action, Actor, Code, Policy, Quotas, Usage};

const POLICY: &str = include_str!("data/policy.toml");
/// 2024-12-01T12:00:00Z.
const NOON: i64 = 1_733_054_400;

/// A step as (rule, None = ok | Some(code)).
type Want = &'static [(&'static str, Option<Code>)];

fn steps(
    policy: &Policy,
    actor: Actor<'_>,
    action: Action<'_>,
    quotas: &Quotas,
) -> Vec<(&'static str, Option<Code>)> {
    let steps = policy.explain(&actor, &action, quotas, NOON);
    for s in &steps {
        match &s.verdict {
            Ok(text) => assert!(!text.is_empty(), "{s}"),
            Err(d) => assert!(!d.reason.is_empty(), "{s}"),
        }
    }
    steps
        .iter()
        .map(|s| (s.rule, s.verdict.as_ref().err().map(|d| d.code)))
        .collect()
}

fn issue<'a>(module_serial: &'a str, key_type: &'a str) -> Action<'a> {
    Action::IssueDevice {
        module_serial,
        key_type,
    }
}

#[test]
fn every_applicable_rule_is_explained() {
    let policy = Policy::parse(POLICY).unwrap();
    let quotas = Quotas::new();
    let s1 = Actor::Client("station-01");
    #[rustfmt::skip]
    let rows: &[(&str, Actor<'_>, Action<'_>, Want)] = &[
        ("module ok, serial denied, quota ok", s1, issue("VBUS-CPU-2412-004000", "ecdsa-p256"), &[
            ("role", None), ("station", None), ("module", None), ("serial", Some(Code::SerialNotAllowed)),
            ("key_type", None), ("validity", None), ("quota", None)]),
        ("serial and key type denied", s1, issue("VBUS-CPU-2412-004000", "rsa-2048"), &[
            ("role", None), ("station", None), ("module", None), ("serial", Some(Code::SerialNotAllowed)),
            ("key_type", Some(Code::KeyTypeNotAllowed)), ("validity", None), ("quota", None)]),
        ("module denied", s1, issue("VBUS-COMM-2412-000001", "ecdsa-p256"), &[
            ("role", None), ("station", None), ("module", Some(Code::ModuleNotAllowed)), ("serial", Some(Code::SerialNotAllowed)),
            ("key_type", None), ("validity", None), ("quota", None)]),
        ("all pass, re-enroll allowed by this policy", s1, Action::Reenroll { module_serial: "VBUS-PWR-2412-000150", key_type: "ed25519" }, &[
            ("role", None), ("station", None), ("module", None), ("serial", None),
            ("key_type", None), ("validity", None), ("reenroll", None), ("quota", None)]),
        ("malformed serial: the rules needing the module type are skipped", s1, issue("VBUS-CPU-24-1", "rsa-2048"), &[
            ("role", None), ("station", None), ("serial", Some(Code::MalformedSerial)), ("quota", None)]),
        ("unknown identity", Actor::Client("station-99"), issue("VBUS-CPU-2412-003000", "ecdsa-p256"), &[
            ("role", Some(Code::UnknownIdentity)), ("station", Some(Code::NoStationRule)), ("serial", None),
            ("key_type", None), ("validity", None)]),
        ("station without rule", Actor::Client("station-04"), issue("VBUS-CPU-2412-003000", "rsa-2048"), &[
            ("role", None), ("station", Some(Code::NoStationRule)), ("serial", None),
            ("key_type", Some(Code::KeyTypeNotAllowed)), ("validity", None)]),
        ("local: station rules skipped, key type not", Actor::Local, issue("VBUS-CPU-2412-009999", "rsa-2048"), &[
            ("role", None), ("serial", None), ("key_type", Some(Code::KeyTypeNotAllowed)), ("validity", None)]),
        ("device record: no key type, validity or quota", s1, Action::DeviceRecord { module_serial: "VBUS-CPU-2412-004000" }, &[
            ("role", None), ("station", None), ("module", None), ("serial", Some(Code::SerialNotAllowed))]),
        ("device read by a station: module only", s1, Action::DeviceRead { module_serial: "VBUS-COMM-2412-000001" }, &[
            ("role", None), ("station", None), ("serial", None), ("module", Some(Code::ModuleNotAllowed))]),
        ("device read by an auditor: role only", Actor::Client("auditor-01"), Action::DeviceRead { module_serial: "VBUS-COMM-2412-000001" }, &[
            ("role", None)]),
        ("revoke by a station: role only", s1, Action::Revoke, &[("role", Some(Code::RoleNotPermitted))]),
    ];
    for (name, actor, action, want) in rows {
        assert_eq!(steps(&policy, *actor, *action, &quotas), *want, "{name}");
    }
}

#[test]
fn a_full_quota_is_explained_without_changing_it() {
    let policy = Policy::parse(POLICY).unwrap();
    let quotas = Quotas::new();
    for _ in 0..20 {
        quotas.record("station-03", NOON);
    }
    let got = steps(
        &policy,
        Actor::Client("station-03"),
        issue("VBUS-COMM-2412-000001", "dsa"),
        &quotas,
    );
    assert_eq!(
        got,
        [
            ("role", None),
            ("station", None),
            ("module", None),
            ("serial", None),
            ("key_type", Some(Code::KeyTypeNotAllowed)),
            ("validity", None),
            ("quota", Some(Code::QuotaExceeded)),
        ]
    );
    let explained = policy.explain(
        &Actor::Client("station-03"),
        &issue("VBUS-COMM-2412-000001", "ed25519"),
        &quotas,
        NOON,
    );
    let quota = explained.last().unwrap().verdict.as_ref().unwrap_err();
    assert_eq!(quota.retry_after, Some(1_733_097_600));
    assert!(
        quota.reason.contains("2024-12-02T00:00:00Z"),
        "{}",
        quota.reason
    );
    assert_eq!(
        quotas.usage("station-03", NOON),
        Usage { hour: 20, day: 20 }
    );
}

#[test]
fn explain_texts_name_what_they_checked() {
    let policy = Policy::parse(POLICY).unwrap();
    let quotas = Quotas::new();
    quotas.record("station-01", NOON);
    let texts: Vec<String> = policy
        .explain(
            &Actor::Client("station-01"),
            &issue("VBUS-PWR-2412-000150", "ed25519"),
            &quotas,
            NOON,
        )
        .into_iter()
        .map(|s| s.verdict.unwrap())
        .collect();
    let want = [
        "station-01 holds the station role",
        "station-01 has a station rule",
        "PWR modules are among station-01's modules",
        "within VBUS-PWR-2412-000100..000199 of work order WO-2412-017",
        "ed25519 is allowed by the PWR profile",
        "the CA profile decides",
        "1 of 500 this UTC hour, 1 of 6000 this UTC day",
    ];
    assert_eq!(texts.len(), want.len(), "{texts:#?}");
    for (text, want) in texts.iter().zip(want) {
        assert!(text.contains(want), "{text:?} lacks {want:?}");
    }
}
