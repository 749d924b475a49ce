//! Requirement (vBus KMS policy file, `[stations."<id>"]`): *"modules =
//! ["CPU", "PWR"] # required, non-empty, from CPU PWR PERIPH COMM"* — a
//! station handles only the module types its rule lists; any other module
//! type is refused (`module_not_allowed`).

use std::fmt;

use crate::decision::{Code, Denial};
use crate::policy::Station;
use crate::serial::Serial;

/// Why the module rule passed.
pub(crate) struct Allowed<'a> {
    id: &'a str,
    serial: Serial,
    station: &'a Station,
}

impl fmt::Display for Allowed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} modules are among {}'s modules ({})",
            self.serial.module,
            self.id,
            crate::names::join(&self.station.modules)
        )
    }
}

/// The module rule.
pub(crate) fn check<'a>(
    id: &'a str,
    station: &'a Station,
    serial: &Serial,
) -> Result<Allowed<'a>, Denial> {
    if station.modules.contains(&serial.module) {
        return Ok(Allowed {
            id,
            serial: *serial,
            station,
        });
    }
    Err(Denial::new(
        Code::ModuleNotAllowed,
        format!(
            "station {id} may not handle {} modules ({serial}); its modules are {}",
            serial.module,
            crate::names::join(&station.modules)
        ),
    ))
}
