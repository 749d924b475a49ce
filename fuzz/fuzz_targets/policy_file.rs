//! The policy file loader (`policies::Policy::parse_within`, with the
//! limits of the appliance's certificate profiles, as `kms::policy::read`
//! calls it; and `Policy::parse`), then what the service asks a loaded
//! policy: the effective view (`kmsctl policy show`), decisions and
//! explanations for a station and an officer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policies::{Action, Actor, ApprovalKind, Policy, Quotas};

fuzz_target!(|data: &[u8]| {
    // kms reads the file with read_to_string: UTF-8 or nothing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let fx = vbus_fuzz::ca_fixture();
    let plain = Policy::parse(text);
    let within = Policy::parse_within(text, &fx.caps);
    for e in [plain.as_ref().err(), within.as_ref().err()]
        .into_iter()
        .flatten()
    {
        // Every refusal names a line, a column and a reason.
        assert!(e.line >= 1 && e.column >= 1, "{e:?}");
        assert!(!e.reason.trim().is_empty(), "{e:?}");
    }
    // parse_within refuses more than parse, never less.
    if within.is_ok() {
        assert!(plain.is_ok(), "{plain:?}");
    }
    let Ok(policy) = within else {
        return;
    };
    let effective = policy.effective();
    let quotas = Quotas::new();
    let now = vbus_fuzz::NOW_UNIX;
    let ids: Vec<String> = effective.identities.keys().take(4).cloned().collect();
    for id in &ids {
        let actor = Actor::Client(id);
        for serial in vbus_fuzz::SERIALS {
            for action in [
                Action::IssueDevice {
                    module_serial: serial,
                    key_type: "ecdsa-p256",
                },
                Action::Reenroll {
                    module_serial: serial,
                    key_type: "ed25519",
                },
                Action::DeviceSecret {
                    module_serial: serial,
                },
            ] {
                let decision = policy.decide(&actor, &action, &quotas, now);
                let steps = policy.explain(&actor, &action, &quotas, now);
                // A refusal is explained by at least one rule.
                if !decision.is_allowed() {
                    assert!(!steps.is_empty());
                }
                if let Ok(admission) = policy.admit(&actor, &action, &quotas, now) {
                    admission.keep();
                }
            }
        }
        for kind in [ApprovalKind::EscrowRecovery, ApprovalKind::FirmwareSigning] {
            let _ = policy.required(kind);
            let _ = policy.approve(kind, "someone-else", &[], &actor);
        }
    }
});
