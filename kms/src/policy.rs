//! The running policy of the appliance: loaded from `policy.file` at start,
//! replaced on `kmsctl policy reload` (or SIGHUP) only when the new file
//! validates, every load recorded in the audit log with the file's SHA-256.
//!
//! The rules themselves live in the pure `policies` crate; this module reads
//! the file, checks it against the certificate profiles, keeps the station
//! quotas, and turns a denial into [`Error::Denied`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use policies::{Policy, Quotas};
use serde_json::json;

use crate::config::Config;
use crate::error::{io, Error, Result};

/// Operation name of a policy load (at start and on reload), allowed or refused.
pub const LOAD_OP: &str = "policy.load";

/// Who is asking: the appliance's PIN holder on the appliance itself, or a
/// client identified by its certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// `local:<user>`, the officer at the appliance (holds every role).
    Local(String),
    /// The CN of a client certificate the internal CA issued.
    Client(String),
}

impl Caller {
    /// The CLI user on this machine.
    pub fn local() -> Self {
        Caller::Local(crate::auditing::local_actor())
    }

    /// The actor written into audit records.
    pub fn name(&self) -> &str {
        match self {
            Caller::Local(n) | Caller::Client(n) => n,
        }
    }

    /// The policy's view of the caller.
    pub fn actor(&self) -> policies::Actor<'_> {
        match self {
            Caller::Local(_) => policies::Actor::Local,
            Caller::Client(id) => policies::Actor::Client(id),
        }
    }
}

/// The policy in force and the station quota counters.
pub struct PolicyState {
    file: Option<PathBuf>,
    profiles: ca::Profiles,
    current: RwLock<Arc<Policy>>,
    quotas: Quotas,
    /// Held across a reload (audit record and swap) and across an edit of
    /// the file (read, edit, write, reload).
    editing: std::sync::Mutex<()>,
}

impl PolicyState {
    /// Read and validate the configured policy. No file configured means the
    /// empty policy: no client may do anything.
    pub fn load(cfg: &Config) -> Result<Self> {
        let profiles = crate::ceremony::profiles(cfg)?;
        let policy = match &cfg.policy.file {
            Some(path) => read(path, &profiles)?,
            None => Policy::empty(),
        };
        Ok(Self {
            file: cfg.policy.file.clone(),
            profiles,
            current: RwLock::new(Arc::new(policy)),
            quotas: Quotas::new(),
            editing: std::sync::Mutex::new(()),
        })
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<Policy> {
        match self.current.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The station quota counters.
    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// The configured policy file, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Read the file again and put it in force if it validates; otherwise
    /// keep the running policy. Either way the attempt is audited.
    pub fn reload(&self, log: &audit::Log, caller: &Caller) -> Result<Arc<Policy>> {
        let _one = self.edit();
        self.reload_locked(log, caller)
    }

    /// Hold off reloads and other edits while the file is being edited.
    pub fn edit(&self) -> std::sync::MutexGuard<'_, ()> {
        self.editing.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reload_locked(&self, log: &audit::Log, caller: &Caller) -> Result<Arc<Policy>> {
        let outcome = match &self.file {
            Some(path) => read(path, &self.profiles),
            None => Err(Error::InvalidInput(
                "no policy.file is configured; set it in kmsd.toml and restart".into(),
            )),
        };
        match outcome {
            Ok(policy) => {
                let policy = Arc::new(policy);
                record_load(log, caller.name(), self.file.as_deref(), Ok(&policy))?;
                match self.current.write() {
                    Ok(mut p) => *p = policy.clone(),
                    Err(poisoned) => *poisoned.into_inner() = policy.clone(),
                }
                Ok(policy)
            }
            Err(e) => {
                record_load(log, caller.name(), self.file.as_deref(), Err(&e))?;
                Err(e)
            }
        }
    }

    /// The policy text after enrolling `id`: its roles in `[identities]`
    /// (`station`, or the officer's `roles`, `officer` by default) and, for
    /// a station, `modules` in its `[stations]` rule (other keys of an
    /// existing rule kept). Validated like a reload; `None` when nothing
    /// changes (a station without modules: denied until an officer writes
    /// its rule).
    pub fn with_client(
        &self,
        id: &str,
        role: crate::credentials::ClientRole,
        modules: &[String],
        roles: &[String],
    ) -> Result<Option<String>> {
        use crate::credentials::ClientRole;
        use toml_edit::{value, Array, DocumentMut, Item, Table};
        if role == ClientRole::Station && modules.is_empty() {
            return Ok(None);
        }
        let Some(path) = &self.file else {
            return Err(Error::InvalidInput(
                "no policy.file is configured: set it in kmsd.toml to enrol clients with rights"
                    .into(),
            ));
        };
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let mut doc: DocumentMut =
            text.parse()
                .map_err(|e: toml_edit::TomlError| Error::Policy {
                    path: path.clone(),
                    line: 1,
                    column: 1,
                    reason: e.to_string(),
                })?;
        let names: Vec<String> = match role {
            ClientRole::Station => vec!["station".into()],
            ClientRole::Officer if roles.is_empty() => vec!["officer".into()],
            ClientRole::Officer => roles.to_vec(),
        };
        let table = |doc: &mut DocumentMut, key: &str| -> Result<()> {
            let item = doc.entry(key).or_insert(Item::Table(Table::new()));
            if item.is_table() {
                Ok(())
            } else {
                Err(Error::InvalidInput(format!(
                    "{}: `{key}` is not a table; edit the policy by hand",
                    path.display()
                )))
            }
        };
        table(&mut doc, "identities")?;
        doc["identities"][id] = value(Array::from_iter(names));
        if role == ClientRole::Station {
            table(&mut doc, "stations")?;
            if let Some(stations) = doc["stations"].as_table_mut() {
                stations.set_implicit(true);
                let rule = stations.entry(id).or_insert_with(|| {
                    // A new rule goes at the end of the file, after any
                    // comments that belong to the rule before it.
                    let mut t = Table::new();
                    t.set_position(usize::MAX / 2);
                    Item::Table(t)
                });
                rule["modules"] = value(Array::from_iter(modules.iter().map(String::as_str)));
            }
        }
        let new = doc.to_string();
        // Refuse here, before anything is issued, what a reload would refuse.
        check_text(path, &new, &self.profiles)?;
        Ok(Some(new))
    }

    /// Write `text` as the policy file (atomically) and put it in force.
    /// The caller holds [`PolicyState::edit`].
    pub fn replace(&self, text: &str, log: &audit::Log, caller: &Caller) -> Result<Arc<Policy>> {
        let Some(path) = &self.file else {
            return Err(Error::InvalidInput("no policy.file is configured".into()));
        };
        crate::credentials::replace_file(path, text.as_bytes())?;
        self.reload_locked(log, caller)
    }

    /// Whether `caller` may see and act on `device`: a station only on the
    /// devices it provisioned (others are "not found" to it), officers,
    /// auditors and the local operator on any.
    pub fn may_see(&self, caller: &Caller, device: &ca::DeviceRecord) -> bool {
        let Caller::Client(id) = caller else {
            return true;
        };
        let station_only = self
            .current()
            .roles(id)
            .iter()
            .all(|r| *r == policies::Role::Station);
        !station_only || device.station.is_empty() || device.station == *id
    }

    /// Decide an action that counts against no quota (reads, records,
    /// officer actions); the denial is an [`Error::Denied`].
    pub fn check(&self, caller: &Caller, action: &policies::Action<'_>) -> Result<()> {
        match self
            .current()
            .decide(&caller.actor(), action, &self.quotas, now())
        {
            policies::Decision::Allow(_) => Ok(()),
            policies::Decision::Deny(d) => Err(Error::Denied(d)),
        }
    }

    /// Decide `action` for `caller` now, reserving a quota slot when the
    /// action counts against one. The denial is an [`Error::Denied`].
    pub fn admit(
        &self,
        caller: &Caller,
        action: &policies::Action<'_>,
    ) -> Result<policies::Admission> {
        self.current()
            .admit(&caller.actor(), action, &self.quotas, now())
            .map_err(Error::Denied)
    }
}

/// Now, unix seconds (the policy's clock).
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Read and validate a policy file, including that it asks nothing of the
/// certificate profiles they cannot give (a key type a profile does not
/// accept, a validity longer than the profile's).
pub fn read(path: &Path, profiles: &ca::Profiles) -> Result<Policy> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    check_text(path, &text, profiles)
}

/// Validate `text` as the policy file `path` would be.
fn check_text(path: &Path, text: &str, profiles: &ca::Profiles) -> Result<Policy> {
    let caps = policies::ProfileCaps(
        ca::ModuleType::ALL
            .into_iter()
            .filter_map(|t| {
                let p = profiles.get(t).ok()?;
                let cap = policies::ProfileCap {
                    key_types: p.key_types.iter().map(|k| k.as_str().to_owned()).collect(),
                    validity_days: p.validity_days,
                };
                Some((t.as_str().to_owned(), cap))
            })
            .collect(),
    );
    Policy::parse_within(text, &caps).map_err(|e| Error::Policy {
        path: path.to_owned(),
        line: e.line,
        column: e.column,
        reason: e.reason,
    })
}

/// Audit a load: the file's SHA-256 when it was put in force, the error
/// code and reason when it was refused.
pub fn record_load(
    log: &audit::Log,
    actor: &str,
    file: Option<&Path>,
    outcome: std::result::Result<&Policy, &Error>,
) -> Result<()> {
    let source = file.map_or_else(
        || "(none: empty policy)".into(),
        |p| p.display().to_string(),
    );
    let subject: String = source.chars().take(256).collect();
    match outcome {
        Ok(p) => crate::auditing::record(
            log,
            actor,
            LOAD_OP,
            &subject,
            "ok",
            json!({ "sha256": p.sha256() }),
        ),
        Err(e) => crate::auditing::record(
            log,
            actor,
            LOAD_OP,
            &subject,
            e.code(),
            json!({ "reason": e.to_string() }),
        ),
    }
}

/// `kmsctl policy check`: every rule's verdict for a station asking for a
/// device certificate now, and the decision, as JSON. `live` says whether
/// `quotas` are the running service's counters (or empty, offline).
pub fn explain(
    policy: &Policy,
    quotas: &Quotas,
    req: &crate::admin::CheckRequest,
    live: bool,
) -> serde_json::Value {
    let actor = policies::Actor::Client(&req.station);
    let action = policies::Action::IssueDevice {
        module_serial: &req.serial,
        key_type: &req.key_type,
    };
    let now = now();
    let steps: Vec<_> = policy
        .explain(&actor, &action, quotas, now)
        .into_iter()
        .map(|s| match s.verdict {
            Ok(text) => json!({ "rule": s.rule, "ok": true, "text": text }),
            Err(d) => {
                json!({ "rule": s.rule, "ok": false, "code": d.code.as_str(), "text": d.reason })
            }
        })
        .collect();
    let (allowed, code, reason, retry_after) = match policy.decide(&actor, &action, quotas, now) {
        policies::Decision::Allow(_) => (true, None, None, None),
        policies::Decision::Deny(d) => (
            false,
            Some(d.code.as_str()),
            Some(d.reason),
            d.retry_after.map(rfc3339),
        ),
    };
    json!({
        "station": req.station, "serial": req.serial, "key_type": req.key_type,
        "policy_sha256": policy.sha256(), "quotas_live": live,
        "allowed": allowed, "code": code, "reason": reason, "retry_after": retry_after,
        "steps": steps,
    })
}

/// Unix seconds as RFC 3339 UTC.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}
