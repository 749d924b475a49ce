//! Who may do what in vBus KMS, as data, deny by default.
//!
//! A TOML policy file ([`Policy::parse`], validated at load: every refusal
//! is a [`LoadError`] naming the line and column) says which identities
//! hold which [`Role`]s, what each production station may enrol (module
//! types, serial ranges, work orders, hourly and daily quotas), which key
//! types and lifetimes each module type's certificates get, whether
//! stations may re-enroll, and how many approvals escrow recovery and
//! firmware signing need.
//!
//! A decision is a value: [`Decision::Allow`] with the [`Terms`] the policy
//! sets, or [`Decision::Deny`] with a stable [`Code`] and a reason.
//! [`Policy::admit`] also reserves a station's quota slot, given back
//! unless the [`Admission`] is kept; [`Policy::explain`] lists every rule's
//! verdict. The rules live one per file under `rules/`, each quoting the
//! requirement it enforces.
//!
//! The crate knows nothing of HTTP, tokens or storage: identities arrive as
//! strings (the CN of the client certificate), times as unix seconds from
//! the caller, quota counts in a [`Quotas`] the caller keeps (and seeds from
//! the audit log at start).
//!
//! ```
//! use policies::{Action, Actor, Code, Decision, Policy, Quotas};
//!
//! let policy = Policy::parse(
//!     r#"
//! version = 1
//! [identities]
//! "station-01" = ["station"]
//! [stations."station-01"]
//! modules = ["CPU"]
//! serials = ["VBUS-CPU-2412-003000..003999"]
//! per_hour = 500
//! "#,
//! )?;
//! let quotas = Quotas::new();
//! let now = 1_733_054_400; // 2024-12-01T12:00:00Z
//! let station = Actor::Client("station-01");
//! let issue = |serial| Action::IssueDevice { module_serial: serial, key_type: "ecdsa-p256" };
//!
//! let admission = policy.admit(&station, &issue("VBUS-CPU-2412-003000"), &quotas, now)?;
//! admission.keep(); // issued: the slot stays used
//! assert_eq!(quotas.usage("station-01", now).hour, 1);
//!
//! let refused = policy.decide(&station, &issue("VBUS-CPU-2412-004000"), &quotas, now);
//! assert_eq!(refused.code(), Some(Code::SerialNotAllowed));
//! assert!(matches!(
//!     Policy::empty().decide(&station, &issue("VBUS-CPU-2412-003000"), &quotas, now),
//!     Decision::Deny(_)
//! ));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

mod decision;
mod file;
mod names;
mod policy;
mod quota_state;
mod rules;
mod serial;

pub use decision::{Code, Decision, Denial, Step, Terms};
pub use file::{LoadError, ProfileCap, ProfileCaps};
pub use names::{Role, KEY_TYPES, MODULE_TYPES};
pub use policy::{
    Action, Actor, ApprovalKind, Effective, EffectiveApproval, EffectiveApprovals,
    EffectiveProfile, EffectiveStation, EffectiveWorkOrder, Policy, Quorum, ReissueRule,
};
pub use quota_state::{Admission, Quotas, Usage};
