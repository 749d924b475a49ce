//! M-of-N approvals: self approval, duplicates, eligibility (role held,
//! named clients only) and quorum counting.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use policies::{Actor, ApprovalKind, Code, Policy, Quorum};

const POLICY: &str = r#"
version = 1

[identities]
"officer-01" = ["officer", "firmware-signer"]
"officer-02" = ["officer"]
"officer-03" = ["officer", "firmware-signer"]
"auditor-01" = ["auditor"]
"station-01" = ["station"]

[stations."station-01"]
modules = ["CPU"]

[approvals.escrow_recovery]
required = 2

[approvals.firmware_signing]
required = 1
"#;

use ApprovalKind::{EscrowRecovery as Escrow, FirmwareSigning as Firmware};

/// (case, kind, requester, prior approvers, approver, Ok((have, need)) or the code).
type Row = (
    &'static str,
    ApprovalKind,
    &'static str,
    &'static [&'static str],
    Actor<'static>,
    Result<(u32, u32), Code>,
);

#[test]
fn approvals() {
    let policy = Policy::parse(POLICY).unwrap();
    assert_eq!(policy.required(Escrow), 2);
    assert_eq!(policy.required(Firmware), 1);
    #[rustfmt::skip]
    let rows: &[Row] = &[
        ("self approval", Escrow, "officer-01", &[], Actor::Client("officer-01"), Err(Code::SelfApproval)),
        ("self approval after others", Escrow, "officer-01", &["officer-02"], Actor::Client("officer-01"), Err(Code::SelfApproval)),
        ("duplicate", Escrow, "officer-01", &["officer-02"], Actor::Client("officer-02"), Err(Code::DuplicateApproval)),
        ("auditor is not eligible", Escrow, "officer-01", &[], Actor::Client("auditor-01"), Err(Code::ApproverNotEligible)),
        ("station is not eligible", Escrow, "officer-01", &[], Actor::Client("station-01"), Err(Code::ApproverNotEligible)),
        ("unknown identity is not eligible", Escrow, "officer-01", &[], Actor::Client("officer-99"), Err(Code::ApproverNotEligible)),
        ("the local operator is not eligible", Escrow, "officer-01", &[], Actor::Local, Err(Code::ApproverNotEligible)),
        ("an officer without the signer role", Firmware, "officer-01", &[], Actor::Client("officer-02"), Err(Code::ApproverNotEligible)),
        ("eligibility is checked before self approval", Firmware, "officer-02", &[], Actor::Client("officer-02"), Err(Code::ApproverNotEligible)),
        ("1 of 2", Escrow, "officer-01", &[], Actor::Client("officer-02"), Ok((1, 2))),
        ("2 of 2", Escrow, "officer-01", &["officer-02"], Actor::Client("officer-03"), Ok((2, 2))),
        ("1 of 1 firmware signer", Firmware, "officer-01", &[], Actor::Client("officer-03"), Ok((1, 1))),
    ];
    for (name, kind, requester, prior, approver, want) in rows {
        let prior: Vec<String> = prior.iter().map(|p| (*p).to_owned()).collect();
        let got = policy.approve(*kind, requester, &prior, approver);
        match (&got, want) {
            (Ok(q), Ok((have, need))) => {
                assert_eq!(
                    *q,
                    Quorum {
                        have: *have,
                        need: *need
                    },
                    "{name}"
                );
                assert_eq!(q.complete(), have >= need, "{name}");
            }
            (Err(d), Err(code)) => {
                assert_eq!(d.code, *code, "{name}: {d}");
                assert!(!d.reason.is_empty());
                assert_eq!(d.retry_after, None);
            }
            _ => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn quorum_completes_at_the_required_count() {
    let policy = Policy::parse(POLICY).unwrap();
    let mut prior: Vec<String> = Vec::new();
    let mut states = Vec::new();
    for approver in ["officer-02", "officer-03"] {
        let q = policy
            .approve(Escrow, "officer-01", &prior, &Actor::Client(approver))
            .unwrap();
        states.push((q.have, q.need, q.complete()));
        prior.push(approver.to_owned());
    }
    assert_eq!(states, [(1, 2, false), (2, 2, true)]);
}

#[test]
fn default_quorums_are_two_and_not_checked_against_identities() {
    let policy = Policy::parse(
        "version = 1\n[identities]\n\"station-01\" = [\"station\"]\n\
         [stations.\"station-01\"]\nmodules = [\"CPU\"]\n",
    )
    .unwrap();
    assert_eq!(policy.required(Escrow), 2);
    assert_eq!(policy.required(Firmware), 2);
    assert_eq!(Policy::empty().required(Escrow), 2);
    let d = policy
        .approve(Escrow, "officer-01", &[], &Actor::Client("station-01"))
        .unwrap_err();
    assert_eq!(d.code, Code::ApproverNotEligible);
}
