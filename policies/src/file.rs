//! The policy file: its serde shape (`deny_unknown_fields` everywhere), its
//! validation, and the line and column of every refusal.
//!
//! TOML syntax and type errors come with toml's own span; the semantic checks
//! use the [`Spanned`] positions of the keys and values they concern. When a
//! file has several semantic problems the one nearest its start is
//! reported, so fixing a file top to bottom meets them in order.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::names::{join, valid_id, KeyType, ModuleType, Role};
use crate::policy::{Policy, ProfileRule, ReissueRule, Source, Station, DEFAULT_REQUIRED};
use crate::serial::SerialRange;

/// A policy file that does not load: where and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {reason}")]
pub struct LoadError {
    /// 1-based line of the offending key or value.
    pub line: usize,
    /// 1-based column (in characters) on that line.
    pub column: usize,
    /// What is wrong.
    pub reason: String,
}

impl LoadError {
    /// The error at byte `offset` of `text`.
    fn at(text: &str, offset: usize, reason: impl Into<String>) -> Self {
        let (line, column) = position(text, offset);
        let mut reason = reason.into();
        if reason.trim().is_empty() {
            reason = "invalid policy file".to_owned();
        }
        LoadError {
            line,
            column,
            reason,
        }
    }
}

/// The 1-based line and column (in characters) of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let bytes = text.as_bytes();
    let before = bytes.get(..offset.min(bytes.len())).unwrap_or(bytes);
    let line = 1 + before.iter().filter(|b| **b == b'\n').count();
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |p| p + 1);
    let column = 1 + before
        .get(line_start..)
        .unwrap_or_default()
        .iter()
        .filter(|b| (**b & 0xC0) != 0x80)
        .count();
    (line, column)
}

/// Lowercase hex SHA-256 of `text`.
pub(crate) fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: Spanned<i64>,
    #[serde(default)]
    identities: BTreeMap<Spanned<String>, Vec<Spanned<Role>>>,
    #[serde(default)]
    stations: BTreeMap<Spanned<String>, RawStation>,
    #[serde(default)]
    work_orders: BTreeMap<Spanned<String>, RawWorkOrder>,
    #[serde(default)]
    profiles: RawProfiles,
    #[serde(default)]
    reissue: RawReissue,
    #[serde(default)]
    approvals: RawApprovals,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStation {
    modules: Spanned<Vec<Spanned<ModuleType>>>,
    #[serde(default)]
    serials: Vec<Spanned<String>>,
    #[serde(default)]
    work_orders: Vec<Spanned<String>>,
    per_hour: Option<Spanned<i64>>,
    per_day: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkOrder {
    serials: Spanned<Vec<Spanned<String>>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfiles {
    #[serde(rename = "CPU")]
    cpu: Option<RawProfile>,
    #[serde(rename = "PWR")]
    pwr: Option<RawProfile>,
    #[serde(rename = "PERIPH")]
    periph: Option<RawProfile>,
    #[serde(rename = "COMM")]
    comm: Option<RawProfile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    key_types: Option<Spanned<Vec<Spanned<KeyType>>>>,
    validity_days: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReissue {
    #[serde(default)]
    stations_may_reenroll: bool,
    #[serde(default = "yes")]
    revoke_superseded: bool,
}

impl Default for RawReissue {
    fn default() -> Self {
        let d = ReissueRule::default();
        RawReissue {
            stations_may_reenroll: d.stations_may_reenroll,
            revoke_superseded: d.revoke_superseded,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprovals {
    escrow_recovery: Option<RawApproval>,
    firmware_signing: Option<RawApproval>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApproval {
    required: Spanned<i64>,
}

/// What the certificate profiles can give, by module type name (`CPU`, …):
/// a policy may narrow it, never widen it.
#[derive(Clone, Debug, Default)]
pub struct ProfileCaps(pub BTreeMap<String, ProfileCap>);

/// One certificate profile's limits.
#[derive(Clone, Debug)]
pub struct ProfileCap {
    /// Key type names it accepts (`ecdsa-p256`, …).
    pub key_types: Vec<String>,
    /// Its validity in days.
    pub validity_days: u32,
}

/// Semantic problems found so far, each at a byte offset.
#[derive(Default)]
struct Problems(Vec<(usize, String)>);

impl Problems {
    fn at<T>(&mut self, what: &Spanned<T>, reason: impl Into<String>) {
        self.0.push((what.span().start, reason.into()));
    }

    /// The problem nearest the start of the file.
    fn first(self, text: &str) -> Option<LoadError> {
        self.0
            .into_iter()
            .min_by_key(|(offset, _)| *offset)
            .map(|(offset, reason)| LoadError::at(text, offset, reason))
    }
}

/// Reports the second and later occurrences of a value in `items`.
fn duplicates<T: Ord + Copy + std::fmt::Display>(
    problems: &mut Problems,
    items: &[Spanned<T>],
    what: &str,
) {
    let mut seen = BTreeSet::new();
    for item in items {
        if !seen.insert(*item.get_ref()) {
            problems.at(item, format!("{what} {} is listed twice", item.get_ref()));
        }
    }
}

/// A count in `1..=u32::MAX`, or a problem.
fn count(problems: &mut Problems, value: &Spanned<i64>, what: &str) -> Option<u32> {
    let v = *value.get_ref();
    if v < 1 {
        problems.at(value, format!("{what} is {v}; it must be at least 1"));
        return None;
    }
    match u32::try_from(v) {
        Ok(n) => Some(n),
        Err(_) => {
            problems.at(
                value,
                format!("{what} is {v}; it must be at most {}", u32::MAX),
            );
            None
        }
    }
}

/// Parses and validates a policy file.
pub(crate) fn load(text: &str, caps: Option<&ProfileCaps>) -> Result<Policy, LoadError> {
    let raw: RawPolicy = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let message = e.message().trim().lines().collect::<Vec<_>>().join("; ");
        LoadError::at(text, offset, message)
    })?;
    let mut problems = Problems::default();

    if *raw.version.get_ref() != 1 {
        problems.at(
            &raw.version,
            format!(
                "version {} is not supported (this appliance reads version 1)",
                raw.version.get_ref()
            ),
        );
    }

    let mut identities = BTreeMap::new();
    for (id, roles) in &raw.identities {
        if !valid_id(id.get_ref()) {
            problems.at(
                id,
                format!(
                    "identity id {} must be 1 to 64 characters of A-Z a-z 0-9 . _ -",
                    crate::names::shown(id.get_ref())
                ),
            );
        }
        duplicates(&mut problems, roles, &format!("{}: role", id.get_ref()));
        let mut held: Vec<Role> = Vec::new();
        for r in roles {
            if !held.contains(r.get_ref()) {
                held.push(*r.get_ref());
            }
        }
        identities.insert(id.get_ref().clone(), held);
    }

    let mut work_orders = BTreeMap::new();
    for (name, wo) in &raw.work_orders {
        if !valid_id(name.get_ref()) {
            problems.at(
                name,
                format!(
                    "work order name {} must be 1 to 64 characters of A-Z a-z 0-9 . _ -",
                    crate::names::shown(name.get_ref())
                ),
            );
        }
        if wo.serials.get_ref().is_empty() {
            problems.at(
                &wo.serials,
                format!("work order {}: serials must not be empty", name.get_ref()),
            );
        }
        let mut ranges = Vec::new();
        for s in wo.serials.get_ref() {
            match SerialRange::parse(s.get_ref()) {
                Ok(r) => ranges.push(r),
                Err(why) => problems.at(s, format!("work order {}: {why}", name.get_ref())),
            }
        }
        work_orders.insert(name.get_ref().clone(), ranges);
    }

    let mut stations = BTreeMap::new();
    for (id, raw_station) in &raw.stations {
        let station = station(&mut problems, &identities, &work_orders, id, raw_station);
        stations.insert(id.get_ref().clone(), station);
    }

    let mut profiles = BTreeMap::new();
    let RawProfiles {
        cpu,
        pwr,
        periph,
        comm,
    } = &raw.profiles;
    for (module, p) in [
        (ModuleType::Cpu, cpu),
        (ModuleType::Pwr, pwr),
        (ModuleType::Periph, periph),
        (ModuleType::Comm, comm),
    ] {
        let Some(p) = p else { continue };
        let cap = caps.map(|c| c.0.get(module.as_str()));
        let mut rule = ProfileRule::default();
        if let Some(kt) = &p.key_types {
            if kt.get_ref().is_empty() {
                problems.at(kt, format!("profiles.{module}.key_types must not be empty"));
            }
            duplicates(
                &mut problems,
                kt.get_ref(),
                &format!("profiles.{module}: key type"),
            );
            let mut allowed: Vec<KeyType> = Vec::new();
            for k in kt.get_ref() {
                if !allowed.contains(k.get_ref()) {
                    allowed.push(*k.get_ref());
                }
            }
            rule.key_types = Some(allowed);
            // Narrow the certificate profile, never widen it.
            match cap {
                Some(None) => problems.at(
                    kt,
                    format!("profiles.{module}: no certificate profile for {module} exists"),
                ),
                Some(Some(c)) => {
                    for k in kt.get_ref() {
                        if !c.key_types.iter().any(|a| a == k.get_ref().as_str()) {
                            problems.at(
                                k,
                                format!(
                                    "profiles.{module}: the certificate profile does not accept key type {}",
                                    k.get_ref()
                                ),
                            );
                        }
                    }
                }
                None => {}
            }
        }
        if let Some(days) = &p.validity_days {
            match u32::try_from(*days.get_ref()) {
                Ok(d) if (1..=36_500).contains(&d) => {
                    rule.validity_days = Some(d);
                    match cap {
                        Some(None) => problems.at(
                            days,
                            format!("profiles.{module}: no certificate profile for {module} exists"),
                        ),
                        Some(Some(c)) if d > c.validity_days => problems.at(
                            days,
                            format!(
                                "profiles.{module}.validity_days {d} is longer than the certificate profile's {}",
                                c.validity_days
                            ),
                        ),
                        _ => {}
                    }
                }
                _ => problems.at(
                    days,
                    format!(
                        "profiles.{module}.validity_days is {}; it must be 1 to 36500",
                        days.get_ref()
                    ),
                ),
            }
        }
        profiles.insert(module, rule);
    }

    let mut required = |approval: &Option<RawApproval>, name: &str, role: Role| {
        let Some(a) = approval else {
            return DEFAULT_REQUIRED;
        };
        let Some(n) = count(
            &mut problems,
            &a.required,
            &format!("approvals.{name}.required"),
        ) else {
            return DEFAULT_REQUIRED;
        };
        let eligible = identities.values().filter(|r| r.contains(&role)).count();
        if usize::try_from(n).map_or(true, |n| n > eligible) {
            problems.at(
                &a.required,
                format!(
                    "approvals.{name}.required is {n} but only {eligible} identit{} hold{} the \
                     {role} role: the quorum could never be reached",
                    if eligible == 1 { "y" } else { "ies" },
                    if eligible == 1 { "s" } else { "" },
                ),
            );
        }
        n
    };
    let escrow_recovery = required(
        &raw.approvals.escrow_recovery,
        "escrow_recovery",
        Role::Officer,
    );
    let firmware_signing = required(
        &raw.approvals.firmware_signing,
        "firmware_signing",
        Role::FirmwareSigner,
    );

    if let Some(err) = problems.first(text) {
        return Err(err);
    }
    Ok(Policy {
        sha256: sha256_hex(text),
        identities,
        stations,
        work_orders,
        profiles,
        reissue: ReissueRule {
            stations_may_reenroll: raw.reissue.stations_may_reenroll,
            revoke_superseded: raw.reissue.revoke_superseded,
        },
        escrow_recovery,
        firmware_signing,
    })
}

/// Validates one `[stations."<id>"]` table and resolves its work orders.
fn station(
    problems: &mut Problems,
    identities: &BTreeMap<String, Vec<Role>>,
    work_orders: &BTreeMap<String, Vec<SerialRange>>,
    id: &Spanned<String>,
    raw: &RawStation,
) -> Station {
    let name = id.get_ref();
    match identities.get(name) {
        None => problems.at(
            id,
            format!(
                "stations.{}: no such identity in [identities]; a station rule needs an identity \
                 holding the station role",
                crate::names::shown(name)
            ),
        ),
        Some(roles) if !roles.contains(&Role::Station) => problems.at(
            id,
            format!(
                "stations.{}: {name} does not hold the station role",
                crate::names::shown(name)
            ),
        ),
        Some(_) => {}
    }

    let modules_listed = raw.modules.get_ref();
    if modules_listed.is_empty() {
        problems.at(
            &raw.modules,
            format!("stations.{name}.modules must not be empty"),
        );
    }
    duplicates(
        problems,
        modules_listed,
        &format!("stations.{name}: module"),
    );
    let mut modules: Vec<ModuleType> = Vec::new();
    for m in modules_listed {
        if !modules.contains(m.get_ref()) {
            modules.push(*m.get_ref());
        }
    }

    let mut serials = Vec::new();
    let mut ranges = Vec::new();
    for s in &raw.serials {
        match SerialRange::parse(s.get_ref()) {
            Ok(r) if !modules.contains(&r.module) => problems.at(
                s,
                format!(
                    "stations.{name}: serial range {r} is for {} modules, which are not among \
                     the station's modules ({})",
                    r.module,
                    join(&modules)
                ),
            ),
            Ok(r) => {
                serials.push(r);
                ranges.push((r, Source::Direct));
            }
            Err(why) => problems.at(s, format!("stations.{name}: {why}")),
        }
    }

    let mut referenced: Vec<String> = Vec::new();
    for wo in &raw.work_orders {
        let wo_name = wo.get_ref();
        if referenced.contains(wo_name) {
            problems.at(
                wo,
                format!("stations.{name}: work order {wo_name} is listed twice"),
            );
            continue;
        }
        referenced.push(wo_name.clone());
        let Some(wo_ranges) = work_orders.get(wo_name) else {
            problems.at(
                wo,
                format!(
                    "stations.{name}: work order {} is not defined in [work_orders]",
                    crate::names::shown(wo_name)
                ),
            );
            continue;
        };
        for r in wo_ranges {
            if modules.contains(&r.module) {
                ranges.push((*r, Source::WorkOrder(wo_name.clone())));
            } else {
                problems.at(
                    wo,
                    format!(
                        "stations.{name}: work order {wo_name} has serial range {r} for {} \
                         modules, which are not among the station's modules ({})",
                        r.module,
                        join(&modules)
                    ),
                );
            }
        }
    }

    let per_hour = raw
        .per_hour
        .as_ref()
        .and_then(|v| count(problems, v, &format!("stations.{name}.per_hour")));
    let per_day = raw
        .per_day
        .as_ref()
        .and_then(|v| count(problems, v, &format!("stations.{name}.per_day")));
    if let (Some(h), Some(d), Some(at)) = (per_hour, per_day, raw.per_day.as_ref()) {
        if d < h {
            problems.at(
                at,
                format!("stations.{name}.per_day ({d}) must be at least its per_hour ({h})"),
            );
        }
    }

    Station {
        modules,
        serials,
        work_orders: referenced,
        ranges,
        per_hour,
        per_day,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_lines_and_character_columns() {
        let text = "ab\ncdé\nfg";
        let rows = [
            (0, (1, 1)),
            (1, (1, 2)),
            (3, (2, 1)),
            (5, (2, 3)),
            (7, (2, 4)),
            (8, (3, 1)),
            (9, (3, 2)),
            (99, (3, 3)),
        ];
        for (offset, want) in rows {
            assert_eq!(position(text, offset), want, "offset {offset}");
        }
    }
}
