//! The audit log in the appliance: opening it with the token's checkpoint
//! key, the journal issuance writes to before it stores anything, the
//! records of refusals and other operations, and start-up reconciliation.
//!
//! Order for an issuance: sign → verify → append the record (carrying the
//! certificate, base64 DER) and wait for its fsync → commit the store. A
//! crash between the last two leaves a record whose certificate is missing
//! from the store; [`reconcile`] re-applies such records when the CA is
//! opened. A refused request appends one record with its error code.

use std::sync::Arc;

use audit::{Entry, Log, Options};
use serde_json::json;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::policy::{Caller, PolicyState};
use crate::token::{Token, TokenCheckpointSigner};
use policies::Action;

/// `local:<user>`: the actor of CLI use on the appliance itself.
pub fn local_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("local:{user}")
}

/// Open the log of `cfg`, checkpoints signed by the token's audit key and
/// the newest one also kept in the token (so a rollback of the log
/// directory as a whole is caught).
pub fn open(cfg: &Config, token: &Arc<Token>) -> Result<Log> {
    let signer = match TokenCheckpointSigner::new(token.clone(), &cfg.audit.key) {
        Ok(s) => Arc::new(s),
        Err(Error::KeyNotFound { .. }) => {
            return Err(Error::NotInitialized(format!(
                "the audit key {:?} is not on the token",
                cfg.audit.key
            )))
        }
        Err(e) => return Err(e),
    };
    let anchor = Arc::new(TokenAnchor {
        token: token.clone(),
        label: format!("{}-checkpoint", cfg.audit.key),
    });
    let log = Log::open_anchored(
        &cfg.audit.dir,
        Options {
            origin: cfg.audit.origin.clone(),
            checkpoint_every: cfg.audit.checkpoint_every,
        },
        Some(signer),
        Some(anchor),
    )?;
    log.keep_free(
        cfg.storage.reserve_mb.saturating_mul(1024 * 1024),
        vec![cfg.storage.path.clone()],
    );
    Ok(log)
}

/// The newest audit checkpoint, kept in a token data object.
struct TokenAnchor {
    token: Arc<Token>,
    label: String,
}

impl audit::CheckpointAnchor for TokenAnchor {
    fn load(&self) -> Result<Vec<String>, audit::SignerError> {
        let mut notes = Vec::new();
        for bytes in self.token.read_data(&self.label)? {
            notes.push(
                String::from_utf8(bytes)
                    .map_err(|_| Error::TokenProtocol("checkpoint object is not UTF-8".into()))?,
            );
        }
        Ok(notes)
    }

    fn store(&self, note: &str) -> Result<(), audit::SignerError> {
        Ok(self.token.replace_data(&self.label, note.as_bytes())?)
    }
}

/// The issuance journal: one durable record per new certificate, before the
/// store sees it.
pub struct AuditJournal<'a> {
    /// The log.
    pub log: &'a Log,
    /// Who asked.
    pub actor: &'a str,
}

impl ca::Journal for AuditJournal<'_> {
    fn issued(&self, r: &ca::CertificateRecord) -> Result<(), ca::SignerError> {
        let details = serde_json::to_value(r)
            .map_err(|_| Error::Unreachable("certificate record to JSON"))?;
        self.log.append(
            Entry::new(self.actor, ISSUE_OP, &r.module_serial, "ok")
                .details(json!({ "new": true, "certificate": details })),
        )?;
        Ok(())
    }
}

/// Operation name of device certificate issuance.
pub const ISSUE_OP: &str = "certificate.issue";

/// Record the outcome of an operation that has no record of its own yet
/// (a refusal, a repeat, an officer action).
pub fn record(
    log: &Log,
    actor: &str,
    op: &str,
    subject: &str,
    result: &str,
    details: serde_json::Value,
) -> Result<()> {
    log.append(Entry::new(actor, op, subject, result).details(details))?;
    Ok(())
}

/// An audited issuance: the policy decides first (before the CSR's
/// signature is checked and before any token operation); new certificates
/// are journaled before they are stored; repeats and refusals get a record
/// of their own. If the refusal cannot be recorded either, the caller hears
/// `audit_unavailable`.
///
/// `reenroll` is a station renewing an already certified device with a new
/// key (EST `simplereenroll`): the policy's `Reenroll` decision stands in for
/// an officer's re-issue permission, and the device must exist.
pub fn issue(
    ca: &ca::Ca,
    log: &Log,
    policy: &PolicyState,
    caller: &Caller,
    req: &ca::IssueRequest<'_>,
    reenroll: bool,
) -> Result<ca::Issued> {
    let actor = caller.name();
    let subject: String = req.module_serial.chars().take(64).collect();
    let refuse = |e: Error| -> Result<ca::Issued> {
        record(
            log,
            actor,
            ISSUE_OP,
            &subject,
            e.code(),
            json!({ "hw_uuid": req.hw_uuid.chars().take(64).collect::<String>() }),
        )?;
        Err(e)
    };
    let device = ca.device(req.module_serial)?;
    // A repeat of an answered request gets its certificate back under the
    // station rules alone: it issues nothing, so no quota or key-type rule.
    let repeat = !reenroll && device.as_ref().is_some_and(|d| d.answers(req));
    let admitted = match ca::csr_key_type(req.csr) {
        Ok(_) if repeat => policy
            .check(
                caller,
                &Action::DeviceRecord {
                    module_serial: req.module_serial,
                },
            )
            .map(|()| policies::Admission::default()),
        Ok(key_type) => {
            let (module_serial, key_type) = (req.module_serial, key_type.as_str());
            policy.admit(
                caller,
                &if reenroll {
                    Action::Reenroll {
                        module_serial,
                        key_type,
                    }
                } else {
                    Action::IssueDevice {
                        module_serial,
                        key_type,
                    }
                },
            )
        }
        // No key type to decide on: the station rules still speak first,
        // then the CSR's own error.
        Err(csr_error) => policy
            .admit(
                caller,
                &Action::DeviceRecord {
                    module_serial: req.module_serial,
                },
            )
            .and(Err(csr_error.into())),
    };
    let admission = match admitted {
        Ok(a) => a,
        Err(e) => return refuse(e),
    };
    // A device another station provisioned is not this station's to repeat
    // or re-key: as if it did not exist. Re-enrolment needs a device.
    let visible = device.as_ref().filter(|d| policy.may_see(caller, d));
    if device.is_some() != visible.is_some() || (reenroll && visible.is_none()) {
        return refuse(ca::Error::DeviceNotFound(subject.clone()).into());
    }
    let req = ca::IssueRequest {
        validity_days: admission.terms.validity_days,
        requested_by: actor,
        new_key_allowed: reenroll,
        ..*req
    };
    match ca.issue(&req, &AuditJournal { log, actor }) {
        Ok(issued) if issued.newly_issued => {
            admission.keep();
            Ok(issued)
        }
        Ok(issued) => {
            record(
                log,
                actor,
                ISSUE_OP,
                &subject,
                "ok",
                json!({ "new": false, "serial_number": issued.serial_number }),
            )?;
            Ok(issued)
        }
        // The journal itself failed: the log cannot take a refusal record either.
        Err(e @ ca::Error::Journal(_)) => Err(e.into()),
        Err(e) => refuse(e.into()),
    }
}

/// What a replay of the log did.
#[derive(Debug, Default)]
pub struct Replay {
    /// Certificates re-applied to the store.
    pub restored: u64,
    /// Re-issue permissions re-applied (rebuild only).
    pub granted: u64,
    /// Client credential records re-applied (rebuild only).
    pub clients: u64,
    /// Provisioning records re-applied (rebuild only).
    pub records: u64,
    /// Revocations re-applied.
    pub revocations: u64,
    /// Firmware keys and releases re-applied.
    pub firmware: u64,
    /// The highest CRL number the log shows per CA.
    pub crl_numbers: std::collections::HashMap<crate::revocation::CaName, u64>,
    /// New certificates issued at or after the `since` time: (actor, unix
    /// seconds), for the station quotas.
    pub issued_since: Vec<(String, i64)>,
}

/// Re-apply issuance records whose certificate is missing from the store
/// (a crash after the record was durable and before the store commit), and
/// list the issuances since `since` (unix seconds).
pub fn reconcile(
    cfg: &Config,
    ca: &ca::Ca,
    store: &dyn store::Store,
    since: i64,
) -> Result<Replay> {
    replay(cfg, ca, store, false, since)
}

/// Rebuild an empty store from the log (`kmsctl store rebuild`): every
/// certificate and device, re-issue permissions granted after a device's
/// last certificate, client credentials and their revocations, and
/// provisioning records.
pub fn rebuild(cfg: &Config, ca: &ca::Ca, store: &dyn store::Store) -> Result<Replay> {
    replay(cfg, ca, store, true, i64::MAX)
}

/// Operation name of an officer's re-issue permission.
pub const ALLOW_REISSUE_OP: &str = "device.allow_reissue";

fn replay(
    cfg: &Config,
    ca: &ca::Ca,
    store: &dyn store::Store,
    full: bool,
    since: i64,
) -> Result<Replay> {
    use crate::appliance::RECORD_OP;
    use crate::credentials::{ISSUE_OP as CRED_ISSUE, REVOKE_OP as CRED_REVOKE};
    use crate::revocation::{CaName, CRL_OP, REVOKE_OP};
    let mut out = Replay::default();
    let full_ops = [ALLOW_REISSUE_OP, CRED_ISSUE, CRED_REVOKE, RECORD_OP];
    audit::for_each_record(&cfg.audit.dir, |_, body| {
        // Cheap filter before parsing: most records are none of these.
        let mentions = |op: &str| body.windows(op.len()).any(|w| w == op.as_bytes());
        let wanted = mentions(ISSUE_OP)
            || mentions(REVOKE_OP)
            || mentions(CRL_OP)
            || mentions("firmware.")
            || (full && full_ops.iter().any(|op| mentions(op)));
        if !wanted {
            return Ok(());
        }
        let Ok(r) = serde_json::from_slice::<audit::Record>(body) else {
            return Ok(());
        };
        if r.result != "ok" {
            return Ok(());
        }
        let failed = |e: Error| audit::Error::Encoding(format!("replaying record {}: {e}", r.seq));
        match r.op.as_str() {
            ISSUE_OP if r.details["new"] == true => {
                let Ok(cert) = serde_json::from_value::<ca::CertificateRecord>(
                    r.details["certificate"].clone(),
                ) else {
                    return Ok(());
                };
                if ca.restore(&cert).map_err(|e| failed(e.into()))? {
                    out.restored += 1;
                }
                let at = i64::try_from(r.time_ms / 1000).unwrap_or(i64::MAX);
                if at >= since {
                    out.issued_since.push((r.actor.clone(), at));
                }
            }
            REVOKE_OP => {
                let restored = crate::revocation::restore(store, &r.details).map_err(failed)?;
                out.revocations += u64::from(restored);
            }
            CRL_OP => {
                if let (Ok(ca), Some(n)) = (CaName::parse(&r.subject), r.details["number"].as_u64())
                {
                    let seen = out.crl_numbers.entry(ca).or_default();
                    *seen = (*seen).max(n);
                }
            }
            crate::firmware::KEY_OP | crate::firmware::SIGN_OP => {
                let changed = crate::firmware::restore(store, &r.op, &r.subject, &r.details)
                    .map_err(failed)?;
                out.firmware += u64::from(changed);
            }
            ALLOW_REISSUE_OP if full => {
                ca.allow_reissue(&r.subject).map_err(|e| failed(e.into()))?;
                out.granted += 1;
            }
            CRED_ISSUE | CRED_REVOKE if full => {
                let changed =
                    crate::credentials::restore(store, &r.op, &r.details).map_err(failed)?;
                out.clients += u64::from(changed);
            }
            RECORD_OP if full => {
                crate::appliance::append_record(store, &r.subject, r.details["entry"].clone())
                    .map_err(failed)?;
                out.records += 1;
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(out)
}
