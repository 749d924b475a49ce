//! M-of-N approval requests: an operation that needs a quorum (firmware
//! signing today, escrow recovery next) is stored as a request, approved by
//! other holders of the role the policy names, and carried out when the
//! last approval arrives.
//!
//! Every request has a hash: SHA-256 of the canonical JSON of its id, kind,
//! requester, times and payload. An approver sends the hash of what they
//! reviewed, so an approval counts only for that exact content, and only
//! until the request expires (`approvals.ttl_seconds`). The policy decides
//! who may approve (`policies::Policy::approve`: the role, no self-approval,
//! no officer twice). Every step is audited; a refused approval changes
//! nothing but its record.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use store::{Store, Tree, Write};

use crate::appliance::Appliance;
use crate::auditing;
use crate::error::{Error, Result};
use crate::policy::{now, rfc3339, Caller};
use policies::ApprovalKind;

/// Operation name of an approval.
pub const APPROVE_OP: &str = "approval.approve";

/// Where a request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting for approvals.
    Pending,
    /// Approved and carried out; `result` holds the outcome.
    Done,
    /// Approved, but carrying it out was refused (`result` holds the
    /// error); it cannot be approved again.
    Failed,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Done => "done",
            State::Failed => "failed",
        }
    }
}

/// One approval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The approver's identity.
    pub by: String,
    /// Unix seconds.
    pub at: i64,
}

/// A request waiting for (or past) its quorum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// 32 lowercase hex digits from the token RNG.
    pub id: String,
    /// `firmware_signing` or `escrow_recovery`.
    pub kind: String,
    /// Who asked.
    pub requested_by: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; approvals after this are refused.
    pub expires_at: i64,
    /// What is to be done (the kind's request, as JSON).
    pub payload: Value,
    /// SHA-256 (hex) of the canonical JSON of the fields above.
    pub hash: String,
    /// Approvals the policy required when the request was opened.
    pub need: u32,
    /// Approvals so far.
    pub approvals: Vec<Approval>,
    /// Where it stands.
    pub state: State,
    /// The outcome once done or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

impl ApprovalRequest {
    fn compute_hash(&self) -> String {
        // serde_json's maps are sorted by key (no preserve_order feature),
        // so this text is the same for the same content everywhere.
        let canonical = json!({
            "id": self.id,
            "kind": self.kind,
            "requested_by": self.requested_by,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "payload": self.payload,
        });
        hex::encode(Sha256::digest(canonical.to_string()))
    }

    /// The request as `kmsctl` and the API show it (times in RFC 3339).
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "kind": self.kind,
            "requested_by": self.requested_by,
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.expires_at),
            "payload": self.payload,
            "hash": self.hash,
            "approvals": { "have": self.approvals.len(), "need": self.need,
                "by": self.approvals.iter().map(|a| &a.by).collect::<Vec<_>>() },
            "state": self.state,
            "result": self.result,
        })
    }
}

fn kind_of(name: &str) -> Option<ApprovalKind> {
    [ApprovalKind::FirmwareSigning, ApprovalKind::EscrowRecovery]
        .into_iter()
        .find(|k| k.as_str() == name)
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|_| Error::Unreachable("approval request to JSON"))
}

/// A quorum needs its requester named by a certificate: the local operator
/// (`local:<user>`) could otherwise approve as themselves over mTLS.
pub(crate) fn named_requester(caller: &Caller) -> Result<()> {
    match caller {
        Caller::Client(_) => Ok(()),
        Caller::Local(_) => Err(Error::NamedRequesterRequired),
    }
}

impl Appliance {
    /// Store a new request of `kind` for `payload` on behalf of `caller`
    /// (the caller's own right to ask is checked by the kind's operation),
    /// recorded first as `op` on `subject` with `extra` details.
    pub(crate) fn open_request(
        &self,
        caller: &Caller,
        kind: ApprovalKind,
        payload: Value,
        (op, subject, extra): (&str, &str, Value),
    ) -> Result<ApprovalRequest> {
        let created_at = now();
        let ttl = i64::try_from(self.cfg.approvals.ttl_seconds).unwrap_or(86_400);
        let mut req = ApprovalRequest {
            id: hex::encode(self.token.random(16)?),
            kind: kind.as_str().into(),
            requested_by: caller.name().into(),
            created_at,
            expires_at: created_at + ttl,
            payload,
            hash: String::new(),
            need: self.policy.current().required(kind),
            approvals: Vec::new(),
            state: State::Pending,
            result: None,
        };
        req.hash = req.compute_hash();
        let mut details = json!({ "id": req.id, "hash": req.hash, "need": req.need });
        if let (Some(d), Value::Object(e)) = (details.as_object_mut(), extra) {
            d.extend(e);
        }
        auditing::record(&self.audit, caller.name(), op, subject, "ok", details)?;
        let write = Write::Insert {
            tree: Tree::Approvals,
            key: req.id.as_bytes().to_vec(),
            value: to_json(&req)?,
        };
        self.store.commit(&[write])?.map_err(|_| {
            Error::Store(store::Error::Corrupt(format!(
                "approval request id {} drawn twice",
                req.id
            )))
        })?;
        Ok(req)
    }

    fn load_request(&self, id: &str) -> Result<(ApprovalRequest, Vec<u8>)> {
        let stored = self
            .store
            .get(Tree::Approvals, id.as_bytes())?
            .ok_or_else(|| Error::ApprovalNotFound(id.chars().take(64).collect()))?;
        let req: ApprovalRequest = serde_json::from_slice(&stored).map_err(|e| {
            Error::Store(store::Error::Corrupt(format!("approval request {id}: {e}")))
        })?;
        if req.compute_hash() != req.hash {
            return Err(Error::Store(store::Error::Corrupt(format!(
                "approval request {id} does not match its hash"
            ))));
        }
        Ok((req, stored))
    }

    /// A request, for anyone who may ask for or approve its kind.
    pub fn approval(&self, caller: &Caller, id: &str) -> Result<ApprovalRequest> {
        let outcome = self.load_request(id).and_then(|(req, _)| {
            let action = match kind_of(&req.kind) {
                Some(ApprovalKind::FirmwareSigning) => policies::Action::FirmwareSign,
                _ => policies::Action::EscrowRequest,
            };
            self.policy.check(caller, &action)?;
            Ok(req)
        });
        match outcome {
            Ok(r) => Ok(r),
            Err(e) => self.refuse(caller, "approval.read", id, e),
        }
    }

    /// A request addressed as an escrow recovery of `serial`
    /// (`/v1/escrow/{serial}/recoveries/{id}`): any other request under that
    /// path is "not found", so a URL never reaches another kind or device.
    fn in_recoveries_of(&self, serial: &str, id: &str) -> Result<()> {
        let (req, _) = self.load_request(id)?;
        if req.kind != ApprovalKind::EscrowRecovery.as_str()
            || req.payload["module_serial"].as_str() != Some(serial)
        {
            return Err(Error::ApprovalNotFound(id.chars().take(64).collect()));
        }
        Ok(())
    }

    /// [`Appliance::approval`] through the recoveries of `serial`.
    pub fn recovery(&self, caller: &Caller, serial: &str, id: &str) -> Result<ApprovalRequest> {
        match self.in_recoveries_of(serial, id) {
            Ok(()) => self.approval(caller, id),
            Err(e) => self.refuse(caller, "approval.read", id, e),
        }
    }

    /// [`Appliance::approve`] through the recoveries of `serial`.
    pub fn approve_recovery(
        &self,
        caller: &Caller,
        serial: &str,
        id: &str,
        hash: &str,
    ) -> Result<ApprovalRequest> {
        match self.in_recoveries_of(serial, id) {
            Ok(()) => self.approve(caller, id, hash),
            Err(e) => self.refuse(caller, APPROVE_OP, id, e),
        }
    }

    /// Pending requests of the kinds `caller` may ask for or approve
    /// (firmware signing: firmware signers; escrow recovery: officers).
    pub fn pending_approvals(&self, caller: &Caller) -> Result<Vec<ApprovalRequest>> {
        let may = |kind: &str| {
            let action = match kind_of(kind) {
                Some(ApprovalKind::FirmwareSigning) => policies::Action::FirmwareSign,
                _ => policies::Action::EscrowRequest,
            };
            self.policy.check(caller, &action).is_ok()
        };
        if !may("firmware_signing") && !may("escrow_recovery") {
            let denied = self.policy.check(caller, &policies::Action::EscrowRequest);
            return self.refuse(
                caller,
                "approval.read",
                "-",
                denied.err().unwrap_or(Error::Unreachable("a denial")),
            );
        }
        let mut out = Vec::new();
        for (_, v) in crate::storage::scan_prefix(self.store.as_ref(), Tree::Approvals, b"")? {
            let r: ApprovalRequest = serde_json::from_slice(&v)
                .map_err(|e| Error::Store(store::Error::Corrupt(format!("approval: {e}"))))?;
            if r.state == State::Pending && r.expires_at > now() && may(&r.kind) {
                out.push(r);
            }
        }
        out.sort_by_key(|r| r.created_at);
        Ok(out)
    }

    /// Approve request `id`, whose content the approver reviewed as `hash`.
    /// When this approval completes the quorum, the operation is carried
    /// out and the request returned with its result.
    pub fn approve(&self, caller: &Caller, id: &str, hash: &str) -> Result<ApprovalRequest> {
        let _one_at_a_time = self.approving.lock().unwrap_or_else(|p| p.into_inner());
        let checked = (|| {
            let (req, stored) = self.load_request(id)?;
            if req.state != State::Pending {
                return Err(Error::ApprovalClosed {
                    id: req.id,
                    state: req.state.as_str(),
                });
            }
            if now() >= req.expires_at {
                return Err(Error::ApprovalExpired {
                    id: req.id,
                    at: rfc3339(req.expires_at),
                });
            }
            if !hash.eq_ignore_ascii_case(&req.hash) {
                return Err(Error::ApprovalHashMismatch(req.id));
            }
            let kind = kind_of(&req.kind)
                .ok_or(Error::Unreachable("approval request of an unknown kind"))?;
            let prior: Vec<String> = req.approvals.iter().map(|a| a.by.clone()).collect();
            let policy = self.policy.current();
            let mut quorum = policy
                .approve(kind, &req.requested_by, &prior, &caller.actor())
                .map_err(Error::Denied)?;
            // Earlier approvals count only while their approvers still hold
            // the role (a policy reloaded meanwhile may have taken it away).
            let lapsed = prior
                .iter()
                .filter(|p| !policy.roles(p).contains(&kind.approver_role()))
                .count();
            quorum.have = quorum
                .have
                .saturating_sub(u32::try_from(lapsed).unwrap_or(u32::MAX));
            Ok((req, stored, kind, quorum))
        })();
        let (mut req, stored, kind, quorum) = match checked {
            Ok(v) => v,
            Err(e) => return self.refuse(caller, APPROVE_OP, id, e),
        };
        req.approvals.push(Approval {
            by: caller.name().into(),
            at: now(),
        });
        auditing::record(
            &self.audit,
            caller.name(),
            APPROVE_OP,
            &req.id,
            "ok",
            json!({ "kind": req.kind, "hash": req.hash, "have": quorum.have,
                    "need": req.need.max(quorum.need) }),
        )?;
        // The quorum is the larger of what the request was opened with and
        // what the policy asks now: a policy tightened meanwhile counts.
        let complete = quorum.have >= req.need.max(quorum.need);
        let mut writes = Vec::new();
        if complete {
            match self.carry_out(kind, &req) {
                Ok((result, extra)) => {
                    req.state = State::Done;
                    req.result = Some(result);
                    writes.extend(extra);
                }
                // Our own faults leave the request pending (the approval is
                // not stored): approving again retries.
                Err(e) if e.http_status() >= 500 => return Err(e),
                Err(e) => {
                    auditing::record(
                        &self.audit,
                        "kmsd",
                        "approval.carry_out",
                        &req.id,
                        e.code(),
                        json!({ "kind": req.kind }),
                    )?;
                    req.state = State::Failed;
                    req.result =
                        Some(json!({ "error": { "code": e.code(), "message": e.to_string() } }));
                }
            }
        }
        writes.push(Write::Replace {
            tree: Tree::Approvals,
            key: req.id.as_bytes().to_vec(),
            expected: Some(stored),
            value: to_json(&req)?,
        });
        self.store.commit(&writes)?.map_err(|c| {
            Error::Store(store::Error::Corrupt(format!(
                "{} changed while approving {}",
                c.tree.name(),
                req.id
            )))
        })?;
        Ok(req)
    }

    /// Do what an approved request asked; the result and the store writes
    /// that go with it (committed with the request's new state).
    fn carry_out(&self, kind: ApprovalKind, req: &ApprovalRequest) -> Result<(Value, Vec<Write>)> {
        match kind {
            ApprovalKind::FirmwareSigning => self.sign_approved(req),
            ApprovalKind::EscrowRecovery => self.recover_approved(req),
        }
    }
}
