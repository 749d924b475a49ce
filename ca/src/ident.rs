//! Device identifiers: module serials and hardware UUIDs.

use std::fmt;

use time::OffsetDateTime;

use crate::error::{Error, Result};

/// The module types, each with its own certificate profile.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum ModuleType {
    /// CPU module.
    #[serde(rename = "CPU")]
    Cpu,
    /// Power module.
    #[serde(rename = "PWR")]
    Pwr,
    /// Peripheral module.
    #[serde(rename = "PERIPH")]
    Periph,
    /// Communication module.
    #[serde(rename = "COMM")]
    Comm,
}

impl ModuleType {
    /// Every module type.
    pub const ALL: [ModuleType; 4] = [
        ModuleType::Cpu,
        ModuleType::Pwr,
        ModuleType::Periph,
        ModuleType::Comm,
    ];

    /// The name used in serials and profiles.
    pub fn as_str(self) -> &'static str {
        match self {
            ModuleType::Cpu => "CPU",
            ModuleType::Pwr => "PWR",
            ModuleType::Periph => "PERIPH",
            ModuleType::Comm => "COMM",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for ModuleType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A checked module serial, `VBUS-{CPU|PWR|PERIPH|COMM}-YYMM-NNNNNN`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModuleSerial {
    text: String,
    module_type: ModuleType,
}

impl ModuleSerial {
    /// Check `s`: the shape, a month 01–12, and a manufacturing month not
    /// after `now`'s (years 20YY).
    pub fn parse(s: &str, now: OffsetDateTime) -> Result<Self> {
        let bad = || Error::InvalidModuleSerial(s.chars().take(64).collect());
        let parts: Vec<&str> = s.split('-').collect();
        let [vbus, kind, yymm, number] = parts.as_slice() else {
            return Err(bad());
        };
        let module_type = ModuleType::parse(kind).ok_or_else(bad)?;
        let digits = |t: &str, n: usize| t.len() == n && t.bytes().all(|b| b.is_ascii_digit());
        if *vbus != "VBUS" || !digits(yymm, 4) || !digits(number, 6) {
            return Err(bad());
        }
        let year =
            2000 + i32::from(yymm.as_bytes()[0] - b'0') * 10 + i32::from(yymm.as_bytes()[1] - b'0');
        let month = (yymm.as_bytes()[2] - b'0') * 10 + (yymm.as_bytes()[3] - b'0');
        if !(1..=12).contains(&month) {
            return Err(bad());
        }
        if (year, month) > (now.year(), u8::from(now.month())) {
            return Err(Error::ModuleSerialInFuture(s.to_owned()));
        }
        Ok(Self {
            text: s.to_owned(),
            module_type,
        })
    }

    /// The module type, which picks the profile.
    pub fn module_type(&self) -> ModuleType {
        self.module_type
    }

    /// The serial as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for ModuleSerial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A hardware UUID (RFC 9562), kept in lowercase canonical form.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HwUuid(String);

impl HwUuid {
    /// Check `s`: 8-4-4-4-12 hex digits, version 1–8, variant `10xx`.
    /// Upper-case hex is accepted and stored lowercase.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::InvalidHwUuid(s.chars().take(64).collect());
        let lower = s.to_ascii_lowercase();
        let groups: Vec<&str> = lower.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if groups.len() != 5
            || groups
                .iter()
                .zip(lens)
                .any(|(g, n)| g.len() != n || !g.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(bad());
        }
        let version = groups[2].as_bytes()[0];
        let variant = groups[3].as_bytes()[0];
        if !(b'1'..=b'8').contains(&version) || !matches!(variant, b'8' | b'9' | b'a' | b'b') {
            return Err(bad());
        }
        Ok(Self(lower))
    }

    /// The canonical lowercase text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SAN URI, `urn:uuid:…`.
    pub fn urn(&self) -> String {
        format!("urn:uuid:{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-25 12:00 UTC);

    #[test]
    fn module_serials() {
        let ok = ModuleSerial::parse("VBUS-CPU-2412-003847", NOW).unwrap();
        assert_eq!(ok.module_type(), ModuleType::Cpu);
        assert_eq!(
            ModuleSerial::parse("VBUS-PERIPH-2611-000001", NOW)
                .unwrap()
                .module_type(),
            ModuleType::Periph
        );
        for (bad, code) in [
            ("VBUS-CPU-2413-003847", "invalid_module_serial"),
            ("VBUS-CPU-2400-003847", "invalid_module_serial"),
            ("VBUS-GPU-2412-003847", "invalid_module_serial"),
            ("VBUS-CPU-2412-03847", "invalid_module_serial"),
            ("vbus-CPU-2412-003847", "invalid_module_serial"),
            ("VBUS-CPU-2412-003847-1", "invalid_module_serial"),
            ("VBUS-CPU-24a2-003847", "invalid_module_serial"),
            ("VBUS-CPU-2612-003847", "module_serial_in_future"),
            ("VBUS-CPU-2701-003847", "module_serial_in_future"),
        ] {
            assert_eq!(
                ModuleSerial::parse(bad, NOW).unwrap_err().code(),
                code,
                "{bad}"
            );
        }
    }

    #[test]
    fn hardware_uuids() {
        let u = HwUuid::parse("6F9619FF-8B86-4011-B42D-00C04FC964FF").unwrap();
        assert_eq!(u.urn(), "urn:uuid:6f9619ff-8b86-4011-b42d-00c04fc964ff");
        for bad in [
            "6f9619ff-8b86-0011-b42d-00c04fc964ff", // version 0
            "6f9619ff-8b86-9011-b42d-00c04fc964ff", // version 9
            "6f9619ff-8b86-4011-c42d-00c04fc964ff", // variant 110
            "6f9619ff8b864011b42d00c04fc964ff",     // no hyphens
            "6f9619ff-8b86-4011-b42d-00c04fc964f",  // short
            "6f9619ff-8b86-4011-b42d-00c04fc964fg", // not hex
            "",
        ] {
            assert_eq!(
                HwUuid::parse(bad).unwrap_err().code(),
                "invalid_hw_uuid",
                "{bad}"
            );
        }
    }
}
