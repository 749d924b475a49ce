//! Requirement (vBus KMS policy, "Purpose" and "Roles"): *"Who may do what,
//! as data, deny by default."* — an action is allowed only to an identity of
//! the policy holding a role that permits it: *"station"* for device
//! issuance, re-enrolment, device records and secrets; *"officer"* to allow
//! a re-issue, revoke, request an escrow recovery and administer;
//! *"firmware-signer"* to sign firmware; *"officer or auditor"* to read the
//! audit log; *"station (module type allowed for it) or officer or auditor"*
//! to read a device record. *"Local = the appliance's PIN holder on the
//! appliance itself: holds every role."*

use std::fmt;

use crate::decision::{Code, Denial};
use crate::names::Role;
use crate::policy::{Action, Actor, Policy};

/// The roles that permit `action`, any one of them sufficing, the most
/// privileged reading first.
pub(crate) fn needed(action: &Action<'_>) -> &'static [Role] {
    match action {
        Action::IssueDevice { .. }
        | Action::Reenroll { .. }
        | Action::DeviceRecord { .. }
        | Action::DeviceSecret { .. } => &[Role::Station],
        Action::AllowReissue { .. } | Action::Revoke | Action::EscrowRequest | Action::Admin => {
            &[Role::Officer]
        }
        Action::FirmwareSign => &[Role::FirmwareSigner],
        Action::AuditRead => &[Role::Officer, Role::Auditor],
        Action::DeviceRead { .. } => &[Role::Officer, Role::Auditor, Role::Station],
    }
}

/// Why the role rule passed.
pub(crate) struct Grant<'a> {
    /// The client, or `None` for the local operator.
    pub(crate) id: Option<&'a str>,
    /// The role that permits the action (`None`: the local operator, who
    /// holds every role).
    pub(crate) via: Option<Role>,
    /// The action's name.
    action: &'static str,
}

impl fmt::Display for Grant<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.id, self.via) {
            (Some(id), Some(role)) => {
                write!(
                    f,
                    "{id} holds the {role} role, which permits {}",
                    self.action
                )
            }
            _ => write!(
                f,
                "the local operator holds every role, which permits {}",
                self.action
            ),
        }
    }
}

/// The role rule.
pub(crate) fn check<'a>(
    policy: &'a Policy,
    actor: &Actor<'a>,
    action: &Action<'_>,
) -> Result<Grant<'a>, Denial> {
    let needed = needed(action);
    let id = match *actor {
        Actor::Local => {
            return Ok(Grant {
                id: None,
                via: None,
                action: action.name(),
            })
        }
        Actor::Client(id) => id,
    };
    let Some(held) = policy.identities.get(id) else {
        return Err(Denial::new(
            Code::UnknownIdentity,
            format!(
                "{} is not an identity of the policy (policy {})",
                crate::names::shown(id),
                short(policy.sha256())
            ),
        ));
    };
    match needed.iter().find(|r| held.contains(r)) {
        Some(role) => Ok(Grant {
            id: Some(id),
            via: Some(*role),
            action: action.name(),
        }),
        None => Err(Denial::new(
            Code::RoleNotPermitted,
            format!(
                "{id} holds {}; {} needs the {} role",
                if held.is_empty() {
                    "no role".to_owned()
                } else {
                    format!("the roles {}", crate::names::join(held))
                },
                action.name(),
                needed
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        )),
    }
}

/// The first 12 hex digits of a policy hash, to name the policy in messages.
fn short(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}
