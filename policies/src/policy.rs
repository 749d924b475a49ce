//! The validated, immutable policy: its public face (thin calls into the
//! rules), its human rendering and its effective view.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::decision::{Decision, Denial, Step, Terms};
use crate::file::LoadError;
use crate::names::{join, KeyType, ModuleType, Role, KEY_TYPES};
use crate::quota_state::{Admission, Quotas};
use crate::rules::{self, Outcome, QuotaMode};
use crate::serial::SerialRange;

/// Who acts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Actor<'a> {
    /// The appliance's PIN holder on the appliance itself: holds every role
    /// and has no station rules (station rules are skipped for it; profile
    /// rules still apply).
    Local,
    /// A client, by the CN of the client certificate the internal CA issued.
    Client(&'a str),
}

impl fmt::Display for Actor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Local => f.write_str("the local operator"),
            Actor::Client(id) => f.write_str(&crate::names::shown(id)),
        }
    }
}

/// What the actor asks to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action<'a> {
    /// Certify a device (station; within its station rules, profiles and
    /// quota).
    IssueDevice {
        /// The module serial.
        module_serial: &'a str,
        /// The CSR's key type (`ecdsa-p256`, …).
        key_type: &'a str,
    },
    /// Renew a certified device with a new key (EST simplereenroll): as
    /// [`Action::IssueDevice`], and `reissue.stations_may_reenroll` must be
    /// true for a client.
    Reenroll {
        /// The module serial.
        module_serial: &'a str,
        /// The new key's type.
        key_type: &'a str,
    },
    /// Grant one re-issue of a device (officer).
    AllowReissue {
        /// The module serial.
        module_serial: &'a str,
    },
    /// Read a device record (a station for its module types, an officer or
    /// an auditor).
    DeviceRead {
        /// The module serial.
        module_serial: &'a str,
    },
    /// Create or update a device record (station, within its station rules).
    DeviceRecord {
        /// The module serial.
        module_serial: &'a str,
    },
    /// Fetch or set a device's PSK or key pair (station, within its station
    /// rules).
    DeviceSecret {
        /// The module serial.
        module_serial: &'a str,
    },
    /// Revoke a certificate (officer).
    Revoke,
    /// Sign firmware (firmware-signer).
    FirmwareSign,
    /// Ask for an escrow recovery (officer).
    EscrowRequest,
    /// Read the audit log (officer or auditor).
    AuditRead,
    /// Administer: reload the policy, add or revoke stations (officer).
    Admin,
}

impl Action<'_> {
    /// The action's `snake_case` name, for messages and audit records.
    pub fn name(&self) -> &'static str {
        match self {
            Action::IssueDevice { .. } => "issue_device",
            Action::Reenroll { .. } => "reenroll",
            Action::AllowReissue { .. } => "allow_reissue",
            Action::DeviceRead { .. } => "device_read",
            Action::DeviceRecord { .. } => "device_record",
            Action::DeviceSecret { .. } => "device_secret",
            Action::Revoke => "revoke",
            Action::FirmwareSign => "firmware_sign",
            Action::EscrowRequest => "escrow_request",
            Action::AuditRead => "audit_read",
            Action::Admin => "admin",
        }
    }
}

/// What needs an M-of-N approval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApprovalKind {
    /// Recovering an escrowed key (approvers: officers).
    EscrowRecovery,
    /// Signing firmware (approvers: firmware signers).
    FirmwareSigning,
}

impl ApprovalKind {
    /// The role an approver must hold.
    pub fn approver_role(self) -> Role {
        match self {
            ApprovalKind::EscrowRecovery => Role::Officer,
            ApprovalKind::FirmwareSigning => Role::FirmwareSigner,
        }
    }

    /// The name used in the policy file (`[approvals.<name>]`).
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalKind::EscrowRecovery => "escrow_recovery",
            ApprovalKind::FirmwareSigning => "firmware_signing",
        }
    }
}

/// How far an approval has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Quorum {
    /// Approvals so far, this one included.
    pub have: u32,
    /// Approvals the policy requires.
    pub need: u32,
}

impl Quorum {
    /// Whether enough approvals are in.
    pub fn complete(&self) -> bool {
        self.have >= self.need
    }
}

/// The `[reissue]` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ReissueRule {
    /// May a station renew a certified device with a new key (EST
    /// simplereenroll) without an officer's permission. Default false.
    pub stations_may_reenroll: bool,
    /// Revoke the superseded certificate when a device is re-issued.
    /// Default true.
    pub revoke_superseded: bool,
}

impl Default for ReissueRule {
    fn default() -> Self {
        ReissueRule {
            stations_may_reenroll: false,
            revoke_superseded: true,
        }
    }
}

/// Where a station's serial range comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The station's own `serials`.
    Direct,
    /// A work order the station references.
    WorkOrder(String),
}

/// One `[stations."<id>"]` rule, with its work orders resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Station {
    /// Module types it may handle.
    pub(crate) modules: Vec<ModuleType>,
    /// Its own ranges.
    pub(crate) serials: Vec<SerialRange>,
    /// The work orders it references.
    pub(crate) work_orders: Vec<String>,
    /// Every range it may handle (own and from work orders), with provenance.
    pub(crate) ranges: Vec<(SerialRange, Source)>,
    /// Issuances per UTC hour.
    pub(crate) per_hour: Option<u32>,
    /// Issuances per UTC day.
    pub(crate) per_day: Option<u32>,
}

impl Station {
    /// Whether the station has a quota.
    pub(crate) fn has_quota(&self) -> bool {
        self.per_hour.is_some() || self.per_day.is_some()
    }
}

/// One `[profiles.<TYPE>]` restriction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProfileRule {
    /// Allowed key types; `None` = any known key type.
    pub(crate) key_types: Option<Vec<KeyType>>,
    /// Certificate lifetime; `None` = the CA profile decides.
    pub(crate) validity_days: Option<u32>,
}

/// A validated, immutable policy. Build it with [`Policy::parse`] (or
/// [`Policy::empty`], under which nobody may do anything).
#[derive(Clone, Debug)]
pub struct Policy {
    pub(crate) sha256: String,
    pub(crate) identities: BTreeMap<String, Vec<Role>>,
    pub(crate) stations: BTreeMap<String, Station>,
    pub(crate) work_orders: BTreeMap<String, Vec<SerialRange>>,
    pub(crate) profiles: BTreeMap<ModuleType, ProfileRule>,
    pub(crate) reissue: ReissueRule,
    pub(crate) escrow_recovery: u32,
    pub(crate) firmware_signing: u32,
}

/// The quorum size when the policy has no `[approvals.<kind>]` table.
pub(crate) const DEFAULT_REQUIRED: u32 = 2;

impl Policy {
    /// Parses and validates a policy file; refusals name the line, the
    /// column and the reason.
    pub fn parse(text: &str) -> Result<Policy, LoadError> {
        crate::file::load(text, None)
    }

    /// As [`Policy::parse`], and also refuses `[profiles.<TYPE>]` entries
    /// that ask more than the certificate profiles in `caps` give (a key type
    /// a profile does not accept, a longer validity, a profile that does not
    /// exist), at the line of the offending value.
    pub fn parse_within(text: &str, caps: &crate::file::ProfileCaps) -> Result<Policy, LoadError> {
        crate::file::load(text, Some(caps))
    }

    /// The policy with no identities, under which no client may do anything
    /// (deny by default); the local operator keeps its rights (station rules
    /// skipped, no profile restrictions). Its hash is that of the empty file.
    pub fn empty() -> Policy {
        Policy {
            sha256: crate::file::sha256_hex(""),
            identities: BTreeMap::new(),
            stations: BTreeMap::new(),
            work_orders: BTreeMap::new(),
            profiles: BTreeMap::new(),
            reissue: ReissueRule::default(),
            escrow_recovery: DEFAULT_REQUIRED,
            firmware_signing: DEFAULT_REQUIRED,
        }
    }

    /// The lowercase hex SHA-256 of the exact file text.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The roles `id` holds (empty when unknown).
    pub fn roles(&self, id: &str) -> &[Role] {
        self.identities.get(id).map_or(&[], Vec::as_slice)
    }

    /// Decides whether `actor` may do `action` at unix time `now`, reading
    /// (never changing) the quota counts.
    pub fn decide(
        &self,
        actor: &Actor<'_>,
        action: &Action<'_>,
        quotas: &Quotas,
        now: i64,
    ) -> Decision {
        match rules::first_denial(self, actor, action, quotas, now, QuotaMode::Read) {
            Outcome::Allowed(terms, _) => Decision::Allow(terms),
            Outcome::Denied(denial) => Decision::Deny(denial),
        }
    }

    /// As [`Policy::decide`], and for a station with a quota asking to issue
    /// or re-enroll, atomically re-checks the quota and reserves one slot,
    /// held by the [`Admission`] until [`Admission::keep`].
    pub fn admit(
        &self,
        actor: &Actor<'_>,
        action: &Action<'_>,
        quotas: &Quotas,
        now: i64,
    ) -> Result<Admission, Denial> {
        match rules::first_denial(self, actor, action, quotas, now, QuotaMode::Reserve(None)) {
            Outcome::Allowed(terms, reservation) => Ok(Admission::new(terms, reservation)),
            Outcome::Denied(denial) => Err(denial),
        }
    }

    /// Every rule that applies to the request, in order, with its verdict;
    /// evaluation goes on after a refusal so the operator sees them all.
    /// Never changes the quota counts.
    pub fn explain(
        &self,
        actor: &Actor<'_>,
        action: &Action<'_>,
        quotas: &Quotas,
        now: i64,
    ) -> Vec<Step> {
        rules::explain(self, actor, action, quotas, now)
    }

    /// Checks one approval of a `kind` request by `requester`, given the
    /// approvers so far (`prior`), and counts it.
    pub fn approve(
        &self,
        kind: ApprovalKind,
        requester: &str,
        prior: &[String],
        approver: &Actor<'_>,
    ) -> Result<Quorum, Denial> {
        rules::approvals::approve(self, kind, requester, prior, approver)
    }

    /// The approvals a `kind` request needs.
    pub fn required(&self, kind: ApprovalKind) -> u32 {
        match kind {
            ApprovalKind::EscrowRecovery => self.escrow_recovery,
            ApprovalKind::FirmwareSigning => self.firmware_signing,
        }
    }

    /// The `[reissue]` rule.
    pub fn reissue(&self) -> &ReissueRule {
        &self.reissue
    }

    /// The whole effective policy, defaults filled in, for
    /// `kmsctl policy show --json`.
    pub fn effective(&self) -> Effective {
        Effective {
            version: 1,
            sha256: self.sha256.clone(),
            identities: self
                .identities
                .iter()
                .map(|(id, roles)| (id.clone(), roles.clone()))
                .collect(),
            stations: self
                .stations
                .iter()
                .map(|(id, s)| {
                    let view = EffectiveStation {
                        modules: s.modules.iter().map(|m| m.as_str().to_owned()).collect(),
                        serials: s.serials.iter().map(ToString::to_string).collect(),
                        work_orders: s.work_orders.clone(),
                        per_hour: s.per_hour,
                        per_day: s.per_day,
                    };
                    (id.clone(), view)
                })
                .collect(),
            work_orders: self
                .work_orders
                .iter()
                .map(|(name, ranges)| {
                    let view = EffectiveWorkOrder {
                        serials: ranges.iter().map(ToString::to_string).collect(),
                    };
                    (name.clone(), view)
                })
                .collect(),
            profiles: ModuleType::ALL
                .into_iter()
                .map(|t| {
                    let p = self.profiles.get(&t).cloned().unwrap_or_default();
                    let view = EffectiveProfile {
                        key_types: match &p.key_types {
                            Some(k) => k.iter().map(|k| k.as_str().to_owned()).collect(),
                            None => KEY_TYPES.iter().map(|k| (*k).to_owned()).collect(),
                        },
                        validity_days: p.validity_days,
                    };
                    (t.as_str().to_owned(), view)
                })
                .collect(),
            reissue: self.reissue,
            approvals: EffectiveApprovals {
                escrow_recovery: EffectiveApproval {
                    required: self.escrow_recovery,
                    eligible: self.eligible(ApprovalKind::EscrowRecovery),
                },
                firmware_signing: EffectiveApproval {
                    required: self.firmware_signing,
                    eligible: self.eligible(ApprovalKind::FirmwareSigning),
                },
            },
        }
    }

    /// The identities that may approve a `kind` request.
    pub(crate) fn eligible(&self, kind: ApprovalKind) -> Vec<String> {
        let role = kind.approver_role();
        self.identities
            .iter()
            .filter(|(_, roles)| roles.contains(&role))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The profile rule for `t`, if the policy has one.
    pub(crate) fn profile(&self, t: ModuleType) -> Option<&ProfileRule> {
        self.profiles.get(&t)
    }

    /// The terms of an allowed request about a `t` module.
    pub(crate) fn terms_for(&self, t: ModuleType) -> Terms {
        Terms {
            validity_days: self.profile(t).and_then(|p| p.validity_days),
        }
    }
}

/// The effective policy, defaults filled in ([`Policy::effective`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Effective {
    /// The file format version (1).
    pub version: u32,
    /// The lowercase hex SHA-256 of the policy file.
    pub sha256: String,
    /// Identity id → roles.
    pub identities: BTreeMap<String, Vec<Role>>,
    /// Station id → its rule.
    pub stations: BTreeMap<String, EffectiveStation>,
    /// Work order name → its ranges.
    pub work_orders: BTreeMap<String, EffectiveWorkOrder>,
    /// Every module type → its restrictions (key types filled in with every
    /// known type when the policy does not restrict them).
    pub profiles: BTreeMap<String, EffectiveProfile>,
    /// The re-issue rule.
    pub reissue: ReissueRule,
    /// The approval quorums.
    pub approvals: EffectiveApprovals,
}

/// One station's rule in the [`Effective`] view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EffectiveStation {
    /// Module types it may handle.
    pub modules: Vec<String>,
    /// Its own serial ranges.
    pub serials: Vec<String>,
    /// The work orders it may serve.
    pub work_orders: Vec<String>,
    /// Issuances per UTC hour (`None`: no limit).
    pub per_hour: Option<u32>,
    /// Issuances per UTC day (`None`: no limit).
    pub per_day: Option<u32>,
}

/// One work order in the [`Effective`] view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EffectiveWorkOrder {
    /// Its serial ranges.
    pub serials: Vec<String>,
}

/// One module type's restrictions in the [`Effective`] view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EffectiveProfile {
    /// Key types allowed.
    pub key_types: Vec<String>,
    /// Certificate lifetime (`None`: the CA profile decides).
    pub validity_days: Option<u32>,
}

/// The quorums in the [`Effective`] view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EffectiveApprovals {
    /// Escrow recovery.
    pub escrow_recovery: EffectiveApproval,
    /// Firmware signing.
    pub firmware_signing: EffectiveApproval,
}

/// One quorum in the [`Effective`] view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EffectiveApproval {
    /// Approvals needed.
    pub required: u32,
    /// The identities that may approve.
    pub eligible: Vec<String>,
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "policy sha256 {}", self.sha256)?;
        writeln!(f, "identities:")?;
        if self.identities.is_empty() {
            writeln!(f, "  (none: nobody may do anything)")?;
        }
        for (id, roles) in &self.identities {
            let roles = if roles.is_empty() {
                "(no roles)".to_owned()
            } else {
                join(roles)
            };
            writeln!(f, "  {id}: {roles}")?;
        }
        writeln!(f, "stations:")?;
        if self.stations.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for (id, s) in &self.stations {
            writeln!(f, "  {id}:")?;
            writeln!(f, "    modules: {}", join(&s.modules))?;
            if s.ranges.is_empty() {
                writeln!(f, "    serials: any serial of its modules")?;
            } else {
                if !s.serials.is_empty() {
                    writeln!(f, "    serials: {}", join(&s.serials))?;
                }
                for wo in &s.work_orders {
                    let ranges = self
                        .work_orders
                        .get(wo)
                        .map(|r| join(r))
                        .unwrap_or_default();
                    writeln!(f, "    work order {wo}: {ranges}")?;
                }
            }
            let limit = |n: Option<u32>| n.map_or("no limit".to_owned(), |n| n.to_string());
            writeln!(
                f,
                "    quota: {} per UTC hour, {} per UTC day",
                limit(s.per_hour),
                limit(s.per_day)
            )?;
        }
        writeln!(f, "work orders:")?;
        if self.work_orders.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for (name, ranges) in &self.work_orders {
            writeln!(f, "  {name}: {}", join(ranges))?;
        }
        writeln!(f, "profiles:")?;
        for t in ModuleType::ALL {
            let p = self.profiles.get(&t).cloned().unwrap_or_default();
            let keys = p.key_types.as_deref().map_or("any".to_owned(), join);
            let validity = p
                .validity_days
                .map_or("set by the CA profile".to_owned(), |d| format!("{d} days"));
            writeln!(f, "  {t}: key types {keys}; validity {validity}")?;
        }
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        writeln!(
            f,
            "reissue: stations may re-enroll: {}; revoke superseded: {}",
            yes_no(self.reissue.stations_may_reenroll),
            yes_no(self.reissue.revoke_superseded)
        )?;
        writeln!(f, "approvals:")?;
        for kind in [ApprovalKind::EscrowRecovery, ApprovalKind::FirmwareSigning] {
            let eligible = self.eligible(kind);
            writeln!(
                f,
                "  {}: {} of {} ({} holders: {})",
                kind.as_str(),
                self.required(kind),
                eligible.len(),
                kind.approver_role(),
                if eligible.is_empty() {
                    "none".to_owned()
                } else {
                    join(&eligible)
                }
            )?;
        }
        Ok(())
    }
}
