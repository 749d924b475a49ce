//! The rules, one per file, and the one evaluation order that
//! [`Policy::decide`](crate::Policy::decide),
//! [`Policy::admit`](crate::Policy::admit) and
//! [`Policy::explain`](crate::Policy::explain) share.
//!
//! Order for a device request by a client: `role` → `station` → `serial`
//! well-formed → `module` → `serial` in the station's ranges → `key_type` →
//! `validity` → `reenroll` → `quota`. The local operator skips the station
//! rules (`station`, `module`, serial ranges, `quota`), not the others.
//!
//! Each rule is a function returning `Ok(note)` (why it passes, rendered
//! only when explaining) or `Err(Denial)`. A [`Trace`] receives the verdicts
//! and says whether to go on: `decide` and `admit` stop at the first
//! refusal, `explain` never stops.

pub(crate) mod approvals;
pub(crate) mod key_types;
pub(crate) mod modules;
pub(crate) mod quota;
pub(crate) mod reenroll;
pub(crate) mod roles;
pub(crate) mod serials;
pub(crate) mod stations;
pub(crate) mod validity;

use std::fmt::Display;
use std::ops::ControlFlow;

use crate::decision::{Denial, Step, Terms};
use crate::names::Role;
use crate::policy::{Action, Actor, Policy, Station};
use crate::quota_state::{Quotas, Reservation, Usage};

/// How an evaluation ended.
pub(crate) enum Outcome {
    /// Every rule passed; the reservation is `admit`'s quota slot, if any.
    Allowed(Terms, Option<Reservation>),
    /// The first refusal.
    Denied(Denial),
}

/// Receives each rule's verdict in order.
trait Trace {
    /// Records a verdict; `Break` stops the evaluation.
    fn step(
        &mut self,
        rule: &'static str,
        verdict: Result<&dyn Display, Denial>,
    ) -> ControlFlow<()>;
}

/// Keeps the first refusal and stops there (`decide`, `admit`).
#[derive(Default)]
struct FirstDenial(Option<Denial>);

impl Trace for FirstDenial {
    fn step(&mut self, _: &'static str, verdict: Result<&dyn Display, Denial>) -> ControlFlow<()> {
        match verdict {
            Ok(_) => ControlFlow::Continue(()),
            Err(denial) => {
                self.0 = Some(denial);
                ControlFlow::Break(())
            }
        }
    }
}

/// Keeps every verdict, rendered, and never stops (`explain`).
#[derive(Default)]
struct Explain(Vec<Step>);

impl Trace for Explain {
    fn step(
        &mut self,
        rule: &'static str,
        verdict: Result<&dyn Display, Denial>,
    ) -> ControlFlow<()> {
        self.0.push(Step {
            rule,
            verdict: verdict.map(ToString::to_string),
        });
        ControlFlow::Continue(())
    }
}

/// What the `quota` rule does with the counts.
pub(crate) enum QuotaMode {
    /// Read them (`decide`, `explain`).
    Read,
    /// Check and count one issuance under one lock (`admit`); the slot.
    Reserve(Option<Reservation>),
}

/// One request being evaluated.
struct Eval<'a, 'r> {
    policy: &'a Policy,
    actor: &'a Actor<'r>,
    quotas: &'a Quotas,
    now: i64,
    trace: &'a mut dyn Trace,
    quota: QuotaMode,
}

/// What a device request needs beyond the station rules.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Device<'r> {
    /// Issue (or re-enroll, when `reenroll`) a certificate for a key of
    /// `key_type`.
    Issue { key_type: &'r str, reenroll: bool },
    /// Create, update or read secrets of a device record: station rules only.
    Record,
    /// Read a device record: the station may handle the module type.
    Read,
}

impl Eval<'_, '_> {
    /// Hands a rule's verdict to the trace; the note back when it passed.
    fn note<N: Display>(
        &mut self,
        rule: &'static str,
        verdict: Result<N, Denial>,
    ) -> ControlFlow<(), Option<N>> {
        match verdict {
            Ok(note) => {
                self.trace.step(rule, Ok(&note))?;
                ControlFlow::Continue(Some(note))
            }
            Err(denial) => {
                self.trace.step(rule, Err(denial))?;
                ControlFlow::Continue(None)
            }
        }
    }

    /// Runs every rule that applies to `action`, in order.
    fn run(&mut self, action: &Action<'_>) -> ControlFlow<(), Terms> {
        let grant = self.note("role", roles::check(self.policy, self.actor, action))?;
        match *action {
            Action::IssueDevice {
                module_serial,
                key_type,
            } => self.device(
                module_serial,
                Device::Issue {
                    key_type,
                    reenroll: false,
                },
            ),
            Action::Reenroll {
                module_serial,
                key_type,
            } => self.device(
                module_serial,
                Device::Issue {
                    key_type,
                    reenroll: true,
                },
            ),
            Action::DeviceRecord { module_serial } | Action::DeviceSecret { module_serial } => {
                self.device(module_serial, Device::Record)
            }
            Action::DeviceRead { module_serial } => match grant {
                // Officers and auditors read any record; stations only
                // records of their module types.
                Some(g) if g.via != Some(Role::Station) => ControlFlow::Continue(Terms::default()),
                _ => self.device(module_serial, Device::Read),
            },
            Action::AllowReissue { .. }
            | Action::Revoke
            | Action::FirmwareSign
            | Action::EscrowRequest
            | Action::AuditRead
            | Action::Admin => ControlFlow::Continue(Terms::default()),
        }
    }

    /// The station, serial and profile rules of a device request.
    fn device(&mut self, module_serial: &str, what: Device<'_>) -> ControlFlow<(), Terms> {
        let policy = self.policy;
        let (id, station): (Option<&str>, Option<&Station>) = match *self.actor {
            Actor::Local => (None, None),
            Actor::Client(id) => {
                let found = self.note("station", stations::check(policy, id))?;
                (Some(id), found.map(|n| n.station))
            }
        };

        // Well-formed serial: its own step unless the range rule below
        // reports on the serial anyway.
        let ranged = station.is_some() && what != Device::Read;
        let serial = match serials::well_formed(module_serial) {
            Ok(ok) => {
                if !ranged {
                    self.trace.step("serial", Ok(&ok))?;
                }
                Some(ok.serial)
            }
            Err(denial) => {
                self.trace.step("serial", Err(denial))?;
                None
            }
        };

        if let (Some(id), Some(st), Some(serial)) = (id, station, serial) {
            self.note("module", modules::check(id, st, &serial))?;
            if what != Device::Read {
                self.note("serial", serials::check(id, st, &serial))?;
            }
        }

        let Device::Issue { key_type, reenroll } = what else {
            return ControlFlow::Continue(Terms::default());
        };
        let mut terms = Terms::default();
        if let Some(serial) = serial {
            self.note(
                "key_type",
                key_types::check(policy, serial.module, key_type),
            )?;
            if let Some(v) = self.note("validity", validity::check(policy, serial.module))? {
                terms = v.terms();
            }
        }
        if reenroll {
            self.note("reenroll", reenroll::check(policy, self.actor))?;
        }
        if let (Some(id), Some(st)) = (id, station) {
            let verdict = self.quota(id, st);
            self.note("quota", verdict)?;
        }
        ControlFlow::Continue(terms)
    }

    /// The quota rule, reading the counts or reserving a slot.
    fn quota<'i>(&mut self, id: &'i str, station: &Station) -> Result<quota::Note<'i>, Denial> {
        let now = self.now;
        if !station.has_quota() {
            return quota::check(id, station, Usage::default(), now);
        }
        match &mut self.quota {
            QuotaMode::Read => quota::check(id, station, self.quotas.usage(id, now), now),
            QuotaMode::Reserve(slot) => {
                let (note, reservation) = self
                    .quotas
                    .reserve(id, now, |usage| quota::check(id, station, usage, now))?;
                *slot = Some(reservation);
                Ok(note)
            }
        }
    }
}

/// Evaluates with `trace` and `quota`; the terms (when run to the end) and
/// the quota mode back.
fn evaluate(
    policy: &Policy,
    actor: &Actor<'_>,
    action: &Action<'_>,
    quotas: &Quotas,
    now: i64,
    trace: &mut dyn Trace,
    quota: QuotaMode,
) -> (Terms, QuotaMode) {
    let mut eval = Eval {
        policy,
        actor,
        quotas,
        now,
        trace,
        quota,
    };
    let terms = match eval.run(action) {
        ControlFlow::Continue(terms) => terms,
        ControlFlow::Break(()) => Terms::default(),
    };
    (terms, eval.quota)
}

/// `decide` (`QuotaMode::Read`) and `admit` (`QuotaMode::Reserve`): stop at
/// the first refusal; when admitting, the quota slot comes back with the terms.
pub(crate) fn first_denial(
    policy: &Policy,
    actor: &Actor<'_>,
    action: &Action<'_>,
    quotas: &Quotas,
    now: i64,
    mode: QuotaMode,
) -> Outcome {
    let mut trace = FirstDenial::default();
    let (terms, mode) = evaluate(policy, actor, action, quotas, now, &mut trace, mode);
    match (trace.0, mode) {
        (Some(denial), _) => Outcome::Denied(denial),
        (None, QuotaMode::Reserve(slot)) => Outcome::Allowed(terms, slot),
        (None, QuotaMode::Read) => Outcome::Allowed(terms, None),
    }
}

/// `explain`: every rule that applies, never stopping, never reserving.
pub(crate) fn explain(
    policy: &Policy,
    actor: &Actor<'_>,
    action: &Action<'_>,
    quotas: &Quotas,
    now: i64,
) -> Vec<Step> {
    let mut trace = Explain::default();
    evaluate(
        policy,
        actor,
        action,
        quotas,
        now,
        &mut trace,
        QuotaMode::Read,
    );
    trace.0
}
