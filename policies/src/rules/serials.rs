//! Requirement (vBus KMS policy file): *"Module serial format:
//! `VBUS-{CPU|PWR|PERIPH|COMM}-YYMM-NNNNNN`"* (else `malformed_serial`), and
//! *"serials = [...] # optional inclusive ranges"*, *"work_orders = [...]"*
//! — *"serial in the station's ranges/work orders when it has any
//! (serial_not_allowed; no ranges and no work orders = any serial of its
//! modules)"*.

use std::fmt;

use crate::decision::{Code, Denial};
use crate::policy::{Source, Station};
use crate::serial::{Serial, SerialRange};

/// A serial that passed the format check.
pub(crate) struct WellFormed {
    /// The parsed serial.
    pub(crate) serial: Serial,
}

impl fmt::Display for WellFormed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is a well-formed {} module serial",
            self.serial, self.serial.module
        )
    }
}

/// The format rule.
pub(crate) fn well_formed(module_serial: &str) -> Result<WellFormed, Denial> {
    match Serial::parse(module_serial) {
        Some(serial) => Ok(WellFormed { serial }),
        None => Err(Denial::new(
            Code::MalformedSerial,
            format!(
                "module serial {} is not VBUS-{{CPU|PWR|PERIPH|COMM}}-YYMM-NNNNNN",
                crate::names::shown(module_serial)
            ),
        )),
    }
}

/// Why the range rule passed.
pub(crate) enum InRange<'a> {
    /// The station has no ranges: any serial of its modules.
    Unrestricted { id: &'a str, serial: Serial },
    /// Within this range.
    Within {
        serial: Serial,
        range: &'a SerialRange,
        source: &'a Source,
    },
}

impl fmt::Display for InRange<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InRange::Unrestricted { id, serial } => write!(
                f,
                "{serial}: {id} has no serial ranges or work orders, so any serial of its modules"
            ),
            InRange::Within {
                serial,
                range,
                source: Source::Direct,
            } => write!(f, "{serial} is within the station's range {range}"),
            InRange::Within {
                serial,
                range,
                source: Source::WorkOrder(wo),
            } => write!(f, "{serial} is within {range} of work order {wo}"),
        }
    }
}

/// The range rule.
pub(crate) fn check<'a>(
    id: &'a str,
    station: &'a Station,
    serial: &Serial,
) -> Result<InRange<'a>, Denial> {
    if station.ranges.is_empty() {
        return Ok(InRange::Unrestricted {
            id,
            serial: *serial,
        });
    }
    if let Some((range, source)) = station.ranges.iter().find(|(r, _)| r.contains(serial)) {
        return Ok(InRange::Within {
            serial: *serial,
            range,
            source,
        });
    }
    const LISTED: usize = 4;
    let mut listed = station
        .ranges
        .iter()
        .take(LISTED)
        .map(|(r, _)| r.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if station.ranges.len() > LISTED {
        listed.push_str(&format!(" and {} more", station.ranges.len() - LISTED));
    }
    Err(Denial::new(
        Code::SerialNotAllowed,
        format!("{serial} is outside station {id}'s serial ranges and work orders ({listed})"),
    ))
}
