//! The open appliance and the operations on it. `kmsd` holds one and its
//! API and admin handlers call these methods; `kmsctl` opens one itself
//! when `kmsd` is not running, so both paths run the same code.
//!
//! Every operation, allowed or refused, leaves one audit record (a refusal
//! is recorded with its error code; nothing else changes).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use store::{Store, Tree, Write};

use crate::auditing;
use crate::ceremony;
use crate::config::Config;
use crate::credentials::{self, ClientCredential, ClientRecord, ClientRole, Revoked};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::policy::{Caller, PolicyState};
use crate::revocation::{self, CaName, Revocations};
use crate::storage::SledStore;
use crate::token::Token;
use ca::RevocationReason;

/// Operation name of a device lookup.
pub const DEVICE_READ_OP: &str = "device.read";
/// Operation name of a provisioning record.
pub const RECORD_OP: &str = "device.record";

/// Longest text field of a provisioning record.
const MAX_FIELD: usize = 256;
/// Most steps or lots in one provisioning record.
const MAX_ITEMS: usize = 512;
/// Most provisioning records one device keeps (a rework loop, not a log).
pub const MAX_RECORDS: usize = 64;

/// Everything the operations need.
pub struct Appliance {
    /// The configuration.
    pub cfg: Config,
    /// The token.
    pub token: Arc<Token>,
    /// The audit log (the system of record).
    pub audit: Arc<audit::Log>,
    /// The state store.
    pub store: Arc<SledStore>,
    /// The device CA.
    pub ca: ca::Ca,
    /// The policy in force and the quota counters.
    pub policy: Arc<PolicyState>,
    /// Revoked client certificates, shared with the TLS verifier.
    pub revoked: Arc<Revoked>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Revoked certificates of every CA, CRLs and OCSP.
    pub revocations: Arc<Revocations>,
    /// Approvals are decided one at a time (the quorum is counted once).
    pub(crate) approving: std::sync::Mutex<()>,
    /// Secret requests for the same device and purpose run one at a time,
    /// so the loser of a race hears `*_already_issued` before anything is
    /// recorded as issued.
    pub(crate) secret_stripes: Stripes,
    /// The operations gate: every request (API, EST, admin socket) holds it
    /// shared from before its audit record until after its store commit; a
    /// backup holds it alone while it reads the store and signs the
    /// checkpoint its log ends at, so the archive's log and store match
    /// record for effect ([`Appliance::operation`], [`Appliance::quiesce`]).
    ops: std::sync::RwLock<()>,
    chain_pem: String,
}

/// A device certificate as the API returns it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IssuedView {
    /// Lowercase hex.
    pub serial_number: String,
    /// PEM.
    pub certificate: String,
    /// Intermediate then root, PEM.
    pub chain: String,
    /// RFC 3339.
    pub not_after: String,
    /// False when the same device and key were already certified.
    pub newly_issued: bool,
    /// DER of the certificate (for EST), not serialised.
    #[serde(skip)]
    pub der: Vec<u8>,
}

/// One step of a provisioning test.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestStep {
    /// Step name.
    pub name: String,
    /// Passed or failed.
    pub passed: bool,
    /// Measured value, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Its unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// A component and its lot code.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentLot {
    /// Component (part number or reference designator).
    pub component: String,
    /// Lot code.
    pub lot: String,
}

/// What a station records about a device it provisioned.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningRecord {
    /// Firmware version flashed.
    pub firmware_version: String,
    /// The operator at the station.
    pub operator: String,
    /// Test results, step by step.
    pub steps: Vec<TestStep>,
    /// Component lot codes.
    #[serde(default)]
    pub component_lots: Vec<ComponentLot>,
}

impl ProvisioningRecord {
    fn validate(&self) -> Result<()> {
        let field = |name: &str, v: &str, required: bool| {
            if (required && v.trim().is_empty())
                || v.len() > MAX_FIELD
                || v.contains(char::is_control)
            {
                Err(Error::MalformedRequest(format!(
                    "{name} must be {}at most {MAX_FIELD} bytes without control characters",
                    if required { "non-empty, " } else { "" }
                )))
            } else {
                Ok(())
            }
        };
        field("firmware_version", &self.firmware_version, true)?;
        field("operator", &self.operator, true)?;
        if self.steps.len() > MAX_ITEMS || self.component_lots.len() > MAX_ITEMS {
            return Err(Error::MalformedRequest(format!(
                "at most {MAX_ITEMS} steps and {MAX_ITEMS} component lots"
            )));
        }
        for s in &self.steps {
            field("steps[].name", &s.name, true)?;
            field("steps[].unit", s.unit.as_deref().unwrap_or(""), false)?;
            if s.value.is_some_and(|v| !v.is_finite()) {
                return Err(Error::MalformedRequest(
                    "steps[].value must be finite".into(),
                ));
            }
        }
        for l in &self.component_lots {
            field("component_lots[].component", &l.component, true)?;
            field("component_lots[].lot", &l.lot, true)?;
        }
        Ok(())
    }
}

impl Appliance {
    /// Hold the operations gate shared for one request: from before its
    /// audit record until after its store commit. Never taken twice by one
    /// thread (a backup waiting in between would deadlock it).
    pub fn operation(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.ops.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Hold the operations gate alone: no request is between its record and
    /// its commit while the guard lives (a backup's store snapshot and
    /// checkpoint).
    pub fn quiesce(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.ops.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Open everything for local use (`kmsctl` while `kmsd` is stopped).
    pub fn open(cfg: Config, token: Arc<Token>) -> Result<Self> {
        let audit = Arc::new(auditing::open(&cfg, &token)?);
        let policy = Arc::new(PolicyState::load(&cfg)?);
        Self::assemble(cfg, token, audit, policy)
    }

    /// Put the parts together: open the store and the CA, re-apply issuance
    /// records the store lacks, count today's issuances into the station
    /// quotas, load the revoked client certificates.
    pub fn assemble(
        cfg: Config,
        token: Arc<Token>,
        audit: Arc<audit::Log>,
        policy: Arc<PolicyState>,
    ) -> Result<Self> {
        let store = Arc::new(SledStore::open_with(
            &cfg.storage.path,
            cfg.storage.flush_every_ms,
        )?);
        let ca = ceremony::load_ca(&cfg, &token, store.clone())?;
        let since = crate::policy::now() - crate::policy::now().rem_euclid(86_400);
        let replay = auditing::reconcile(&cfg, &ca, store.as_ref(), since)?;
        if replay.restored > 0 {
            tracing::warn!(
                restored = replay.restored,
                "re-applied issuance records the store lacked"
            );
        }
        if replay.revocations > 0 {
            tracing::warn!(
                restored = replay.revocations,
                "re-applied revocation records the store lacked"
            );
        }
        for (station, at) in &replay.issued_since {
            policy.quotas().record(station, *at);
        }
        let revoked = Revoked::load(store.as_ref())?;
        let metrics = Arc::new(Metrics::default());
        revocation::adopt_client_revocations(store.as_ref())?;
        let revocations = Arc::new(Revocations::open(
            &cfg,
            &token,
            store.clone(),
            audit.clone(),
            metrics.clone(),
        )?);
        revocations.raise_numbers(&replay.crl_numbers)?;
        let chain_pem = ceremony::chain_pem(&cfg)?;
        let observed = metrics.clone();
        audit.observe_syncs(Box::new(move |d| observed.audit_fsync.observe(d)));
        Ok(Self {
            cfg,
            token,
            audit,
            store,
            ca,
            policy,
            revoked,
            metrics,
            revocations,
            approving: std::sync::Mutex::new(()),
            secret_stripes: Stripes::new(),
            ops: std::sync::RwLock::new(()),
            chain_pem,
        })
    }

    /// The CA chain PEM (intermediate then root).
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// Record a refusal of `op` on `subject` with its code, and return it.
    pub fn refuse<T>(&self, caller: &Caller, op: &str, subject: &str, e: Error) -> Result<T> {
        let subject: String = subject.chars().take(64).collect();
        auditing::record(
            &self.audit,
            caller.name(),
            op,
            &subject,
            e.code(),
            json!({}),
        )?;
        Err(e)
    }

    /// Certify a device key (the station API, EST and `kmsctl cert issue`).
    pub fn issue(
        &self,
        caller: &Caller,
        module_serial: &str,
        hw_uuid: &str,
        csr: &[u8],
        reenroll: bool,
    ) -> Result<IssuedView> {
        let started = std::time::Instant::now();
        let issued = auditing::issue(
            &self.ca,
            &self.audit,
            &self.policy,
            caller,
            &ca::IssueRequest {
                module_serial,
                hw_uuid,
                csr,
                validity_days: None,
                requested_by: caller.name(),
                new_key_allowed: false,
            },
            reenroll,
        )?;
        self.metrics.issuance.observe(started.elapsed());
        if let Some(old) = &issued.superseded {
            // The new certificate is issued and durable whatever happens
            // here; a failed revocation is logged for an officer to redo.
            if self.policy.current().reissue().revoke_superseded {
                if let Err(e) = self.revoke_checked(
                    caller.name(),
                    old,
                    RevocationReason::Superseded,
                    None,
                    Some(CaName::Intermediate),
                    json!({ "superseded_by": issued.serial_number }),
                ) {
                    tracing::error!(
                        serial_number = %old, error = %e,
                        "superseded certificate not revoked: revoke it with kmsctl cert revoke"
                    );
                }
            }
        }
        Ok(IssuedView {
            serial_number: issued.serial_number,
            certificate: ceremony::pem(&issued.certificate_der)?,
            chain: self.chain_pem.clone(),
            not_after: issued.not_after,
            newly_issued: issued.newly_issued,
            der: issued.certificate_der,
        })
    }

    /// The device record, its certificates and provisioning records. A
    /// station sees only devices it provisioned (others are "not found").
    pub fn device(&self, caller: &Caller, module_serial: &str) -> Result<Value> {
        let outcome = (|| {
            self.policy
                .check(caller, &policies::Action::DeviceRead { module_serial })?;
            let device = self.owned_device(caller, module_serial)?;
            let certificates = device
                .certificates
                .iter()
                .map(|s| {
                    Ok(self.ca.certificate(s)?.map(|c| {
                        json!({ "serial_number": c.serial_number, "not_before": c.not_before, "not_after": c.not_after })
                    }))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(json!({
                "module_serial": device.module_serial,
                "module_type": device.module_type,
                "hw_uuid": device.hw_uuid,
                "station": device.station,
                "certificate": device.certificate,
                "certificates": certificates,
                "reissue_allowed": device.reissue_allowed,
                "records": self.records(module_serial)?,
            }))
        })();
        match outcome {
            Ok(v) => {
                auditing::record(
                    &self.audit,
                    caller.name(),
                    DEVICE_READ_OP,
                    module_serial,
                    "ok",
                    json!({}),
                )?;
                Ok(v)
            }
            Err(e) => self.refuse(caller, DEVICE_READ_OP, module_serial, e),
        }
    }

    /// The device, if `caller` may see it: officers and the local operator
    /// any, a station the ones it provisioned.
    pub(crate) fn owned_device(
        &self,
        caller: &Caller,
        module_serial: &str,
    ) -> Result<ca::DeviceRecord> {
        let not_found = || {
            Error::Ca(ca::Error::DeviceNotFound(
                module_serial.chars().take(64).collect(),
            ))
        };
        let device = self.ca.device(module_serial)?.ok_or_else(not_found)?;
        if self.policy.may_see(caller, &device) {
            Ok(device)
        } else {
            Err(not_found())
        }
    }

    fn records(&self, module_serial: &str) -> Result<Vec<Value>> {
        decode_records(
            self.store
                .get(Tree::Records, module_serial.as_bytes())?
                .as_deref(),
        )
    }

    /// Attach a provisioning record (JSON body) to a device the caller
    /// provisioned. The record is in the audit log before the store.
    pub fn record(&self, caller: &Caller, module_serial: &str, body: &[u8]) -> Result<Value> {
        let parsed = (|| {
            self.policy
                .check(caller, &policies::Action::DeviceRecord { module_serial })?;
            let record: ProvisioningRecord = serde_json::from_slice(body)
                .map_err(|e| Error::MalformedRequest(format!("provisioning record: {e}")))?;
            record.validate()?;
            self.owned_device(caller, module_serial)?;
            if self.records(module_serial)?.len() >= MAX_RECORDS {
                return Err(Error::TooManyRecords {
                    serial: module_serial.chars().take(64).collect(),
                    limit: MAX_RECORDS,
                });
            }
            Ok(record)
        })();
        let record = match parsed {
            Ok(r) => r,
            Err(e) => return self.refuse(caller, RECORD_OP, module_serial, e),
        };
        let at = crate::policy::rfc3339(crate::policy::now());
        let entry = json!({ "recorded_at": at, "station": caller.name(), "record": record });
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(entry.to_string()));
        auditing::record(
            &self.audit,
            caller.name(),
            RECORD_OP,
            module_serial,
            "ok",
            json!({ "sha256": sha256, "entry": entry }),
        )?;
        append_record(self.store.as_ref(), module_serial, entry)?;
        Ok(json!({ "module_serial": module_serial, "recorded_at": at, "sha256": sha256 }))
    }

    /// An officer lets a certified device get one certificate for a new key.
    pub fn allow_reissue(&self, caller: &Caller, module_serial: &str) -> Result<()> {
        // The record first, like every other operation: no effect exists
        // without its record (a failed commit after it is recorded too).
        let allowed = self
            .policy
            .check(caller, &policies::Action::AllowReissue { module_serial })
            .and_then(|()| match self.ca.device(module_serial)? {
                Some(_) => Ok(()),
                None => Err(Error::from(ca::Error::DeviceNotFound(module_serial.into()))),
            });
        if let Err(e) = allowed {
            return self.refuse(caller, auditing::ALLOW_REISSUE_OP, module_serial, e);
        }
        auditing::record(
            &self.audit,
            caller.name(),
            auditing::ALLOW_REISSUE_OP,
            module_serial,
            "ok",
            json!({}),
        )?;
        match self.ca.allow_reissue(module_serial) {
            Ok(()) => Ok(()),
            Err(e) => self.refuse(caller, auditing::ALLOW_REISSUE_OP, module_serial, e.into()),
        }
    }

    /// Enrol a station or officer: a client certificate from the internal
    /// CA (for the key in `csr`, or a key made here), and, for a station
    /// with `modules`, or an officer with `roles`, the policy updated and
    /// reloaded.
    pub fn add_client(
        &self,
        caller: &Caller,
        id: &str,
        role: ClientRole,
        csr: Option<&[u8]>,
        modules: &[String],
        roles: &[String],
    ) -> Result<ClientCredential> {
        // One policy edit at a time: read, edit, issue, write, reload.
        let _editing = self.policy.edit();
        let prepared = (|| {
            self.policy.check(caller, &policies::Action::Admin)?;
            credentials::check_id(id)?;
            self.policy.with_client(id, role, modules, roles)
        })();
        let new_policy = match prepared {
            Ok(p) => p,
            Err(e) => return self.refuse(caller, credentials::ISSUE_OP, id, e),
        };
        let cred = match credentials::issue_client(
            &self.cfg,
            &self.token,
            &self.audit,
            self.store.as_ref(),
            caller.name(),
            &credentials::NewClient { id, role, csr },
        ) {
            Ok(c) => c,
            Err(e @ Error::Audit(_)) => return Err(e),
            Err(e) => return self.refuse(caller, credentials::ISSUE_OP, id, e),
        };
        if let Some(text) = new_policy {
            self.policy.replace(&text, &self.audit, caller)?;
        }
        Ok(cred)
    }

    /// Revoke every certificate of station or officer `id` (refused at its
    /// next handshake, listed in the internal CA's CRL); the serials newly
    /// revoked (empty when all already were).
    pub fn revoke_client(
        &self,
        caller: &Caller,
        id: &str,
        reason: RevocationReason,
    ) -> Result<Vec<String>> {
        let mine = self
            .policy
            .check(caller, &policies::Action::Revoke)
            .and_then(|()| {
                let mine: Vec<_> = credentials::list(self.store.as_ref())?
                    .into_iter()
                    .filter(|r| r.id == id)
                    .collect();
                if mine.is_empty() {
                    return Err(Error::InvalidInput(format!("no credential for {id:?}")));
                }
                Ok(mine)
            });
        let mine = match mine {
            Ok(m) => m,
            Err(e) => return self.refuse(caller, revocation::REVOKE_OP, id, e),
        };
        let mut newly = Vec::new();
        for r in mine.iter().filter(|r| r.revoked_at.is_none()) {
            let done = self.revoke_checked(
                caller.name(),
                &r.serial_number,
                reason,
                None,
                Some(CaName::Internal),
                json!({ "client_id": id }),
            )?;
            if !done.already_revoked {
                newly.push(r.serial_number.clone());
            }
        }
        Ok(newly)
    }

    /// Every client certificate.
    pub fn clients(&self) -> Result<Vec<ClientRecord>> {
        credentials::list(self.store.as_ref())
    }
}

/// A device's stored provisioning records (none when nothing is stored).
fn decode_records(stored: Option<&[u8]>) -> Result<Vec<Value>> {
    stored.map_or(Ok(Vec::new()), |v| {
        serde_json::from_slice(v)
            .map_err(|e| Error::Store(store::Error::Corrupt(format!("records: {e}"))))
    })
}

/// Append `entry` to the device's records (compare-and-swap, retried).
pub(crate) fn append_record(store: &dyn Store, module_serial: &str, entry: Value) -> Result<()> {
    for _ in 0..16 {
        let old = store.get(Tree::Records, module_serial.as_bytes())?;
        let mut list = decode_records(old.as_deref())?;
        list.push(entry.clone());
        let value = serde_json::to_vec(&list).map_err(|_| Error::Unreachable("records to JSON"))?;
        let write = match old {
            None => Write::Insert {
                tree: Tree::Records,
                key: module_serial.as_bytes().to_vec(),
                value,
            },
            Some(expected) => Write::Replace {
                tree: Tree::Records,
                key: module_serial.as_bytes().to_vec(),
                expected: Some(expected),
                value,
            },
        };
        if store.commit(&[write])?.is_ok() {
            return Ok(());
        }
    }
    Err(Error::Store(store::Error::Corrupt(format!(
        "records of {module_serial} keep changing under us"
    ))))
}

/// Lock stripes keyed by a string: requests with the same key run one at
/// a time, others almost never wait on each other.
pub(crate) struct Stripes(Vec<std::sync::Mutex<()>>);

impl Stripes {
    const COUNT: usize = 64;

    fn new() -> Self {
        Self(
            (0..Self::COUNT)
                .map(|_| std::sync::Mutex::new(()))
                .collect(),
        )
    }

    /// Hold the stripe of `key`.
    pub(crate) fn lock(&self, key: &[u8]) -> std::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let stripe = &self.0[(h.finish() as usize) % Self::COUNT];
        stripe.lock().unwrap_or_else(|p| p.into_inner())
    }
}
