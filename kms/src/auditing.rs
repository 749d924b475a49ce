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
    Ok(Log::open_anchored(
        &cfg.audit.dir,
        Options {
            origin: cfg.audit.origin.clone(),
            checkpoint_every: cfg.audit.checkpoint_every,
        },
        Some(signer),
        Some(anchor),
    )?)
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
pub fn issue(
    ca: &ca::Ca,
    log: &Log,
    policy: &PolicyState,
    caller: &Caller,
    req: &ca::IssueRequest<'_>,
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
    let admitted = match ca::csr_key_type(req.csr) {
        Ok(key_type) => policy.admit(
            caller,
            &Action::IssueDevice {
                module_serial: req.module_serial,
                key_type: key_type.as_str(),
            },
        ),
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
    let req = ca::IssueRequest {
        validity_days: admission.terms.validity_days,
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

/// Re-apply issuance records whose certificate is missing from the store
/// (a crash after the record was durable and before the store commit).
/// Returns how many were restored.
pub fn reconcile(cfg: &Config, ca: &ca::Ca) -> Result<u64> {
    Ok(replay(cfg, ca, false)?.0)
}

/// Rebuild an empty store from the log (`kmsctl store rebuild`): every
/// certificate and device, and re-issue permissions granted after a
/// device's last certificate. Returns (certificates, permissions).
pub fn rebuild(cfg: &Config, ca: &ca::Ca) -> Result<(u64, u64)> {
    replay(cfg, ca, true)
}

/// Operation name of an officer's re-issue permission.
pub const ALLOW_REISSUE_OP: &str = "device.allow_reissue";

fn replay(cfg: &Config, ca: &ca::Ca, permissions: bool) -> Result<(u64, u64)> {
    let (mut restored, mut granted) = (0, 0);
    audit::for_each_record(&cfg.audit.dir, |_, body| {
        // Cheap filter before parsing: most records are neither.
        let mentions = |op: &str| body.windows(op.len()).any(|w| w == op.as_bytes());
        let wanted = mentions(ISSUE_OP) || (permissions && mentions(ALLOW_REISSUE_OP));
        if !wanted {
            return Ok(());
        }
        let Ok(r) = serde_json::from_slice::<audit::Record>(body) else {
            return Ok(());
        };
        let failed =
            |e: ca::Error| audit::Error::Encoding(format!("replaying record {}: {e}", r.seq));
        if r.result != "ok" {
            return Ok(());
        }
        if permissions && r.op == ALLOW_REISSUE_OP {
            ca.allow_reissue(&r.subject).map_err(failed)?;
            granted += 1;
            return Ok(());
        }
        if r.op != ISSUE_OP || r.details["new"] != true {
            return Ok(());
        }
        let Ok(cert) =
            serde_json::from_value::<ca::CertificateRecord>(r.details["certificate"].clone())
        else {
            return Ok(());
        };
        if ca.restore(&cert).map_err(failed)? {
            restored += 1;
        }
        Ok(())
    })?;
    Ok((restored, granted))
}
