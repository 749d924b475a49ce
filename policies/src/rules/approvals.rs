//! Requirement (vBus KMS policy file, `[approvals.<kind>]`): M-of-N
//! approvals for escrow recovery (approvers: holders of `officer`) and
//! firmware signing (holders of `firmware-signer`): *"approver must be a
//! Client holding the eligible role ... else approver_not_eligible (Local
//! counts as not eligible: quorum needs named officers); approver ==
//! requester → self_approval; approver already in prior →
//! duplicate_approval; otherwise Quorum { have: prior.len()+1, need:
//! required }"*.

use crate::decision::{Code, Denial};
use crate::policy::{Actor, ApprovalKind, Policy, Quorum};

/// The approval rule.
pub(crate) fn approve(
    policy: &Policy,
    kind: ApprovalKind,
    requester: &str,
    prior: &[String],
    approver: &Actor<'_>,
) -> Result<Quorum, Denial> {
    let role = kind.approver_role();
    let id = match *approver {
        Actor::Local => {
            return Err(Denial::new(
                Code::ApproverNotEligible,
                format!(
                    "the local operator cannot approve {}: a quorum needs named {role} holders",
                    kind.as_str()
                ),
            ))
        }
        Actor::Client(id) => id,
    };
    if !policy.roles(id).contains(&role) {
        return Err(Denial::new(
            Code::ApproverNotEligible,
            format!(
                "{} does not hold the {role} role that approving {} needs",
                crate::names::shown(id),
                kind.as_str()
            ),
        ));
    }
    if id == requester {
        return Err(Denial::new(
            Code::SelfApproval,
            format!(
                "{id} requested this {} and may not approve it",
                kind.as_str()
            ),
        ));
    }
    if prior.iter().any(|p| p == id) {
        return Err(Denial::new(
            Code::DuplicateApproval,
            format!("{id} has already approved this {}", kind.as_str()),
        ));
    }
    Ok(Quorum {
        have: u32::try_from(prior.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1),
        need: policy.required(kind),
    })
}
