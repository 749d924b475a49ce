//! Module serials (`VBUS-{CPU|PWR|PERIPH|COMM}-YYMM-NNNNNN`) and inclusive
//! serial ranges (`VBUS-CPU-2412-003000..003999`).

use std::fmt;

use crate::names::ModuleType;

/// A well-formed module serial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Serial {
    /// The module type it names.
    pub(crate) module: ModuleType,
    /// The manufacturing year and month, `YYMM`.
    pub(crate) yymm: u16,
    /// The running number, `NNNNNN`.
    pub(crate) number: u32,
}

/// Parses `n` ASCII digits exactly (no sign, no spaces).
fn digits(s: &str, n: usize) -> Option<u32> {
    if s.len() != n || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.bytes().try_fold(0u32, |acc, b| {
        acc.checked_mul(10)?.checked_add(u32::from(b - b'0'))
    })
}

impl Serial {
    /// Parses a module serial; `None` unless it is exactly
    /// `VBUS-{TYPE}-YYMM-NNNNNN`.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split('-');
        let (vbus, module, yymm, number) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if vbus != "VBUS" || parts.next().is_some() {
            return None;
        }
        Some(Serial {
            module: ModuleType::from_name(module)?,
            yymm: u16::try_from(digits(yymm, 4)?).ok()?,
            number: digits(number, 6)?,
        })
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VBUS-{}-{:04}-{:06}",
            self.module, self.yymm, self.number
        )
    }
}

/// An inclusive range of module serials sharing type and month.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SerialRange {
    /// The module type of every serial in the range.
    pub(crate) module: ModuleType,
    /// The month of every serial in the range.
    pub(crate) yymm: u16,
    /// The first running number.
    pub(crate) lo: u32,
    /// The last running number.
    pub(crate) hi: u32,
}

impl SerialRange {
    /// Parses `<serial>..<6 digits>`; the reason on failure.
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let form = "a serial range is VBUS-{CPU|PWR|PERIPH|COMM}-YYMM-NNNNNN..NNNNNN";
        let Some((first, last)) = s.split_once("..") else {
            return Err(format!("{}: {form}", crate::names::shown(s)));
        };
        let (Some(lo), Some(hi)) = (Serial::parse(first), digits(last, 6)) else {
            return Err(format!("{}: {form}", crate::names::shown(s)));
        };
        if lo.number > hi {
            return Err(format!(
                "{}: the low end {:06} is above the high end {hi:06}",
                crate::names::shown(s),
                lo.number
            ));
        }
        Ok(SerialRange {
            module: lo.module,
            yymm: lo.yymm,
            lo: lo.number,
            hi,
        })
    }

    /// Whether `serial` lies in the range.
    pub(crate) fn contains(&self, serial: &Serial) -> bool {
        serial.module == self.module
            && serial.yymm == self.yymm
            && (self.lo..=self.hi).contains(&serial.number)
    }
}

impl fmt::Display for SerialRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VBUS-{}-{:04}-{:06}..{:06}",
            self.module, self.yymm, self.lo, self.hi
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_parse_only_in_the_exact_form() {
        let rows = [
            ("VBUS-CPU-2412-003000", true),
            ("VBUS-PWR-0001-000000", true),
            ("VBUS-PERIPH-9912-999999", true),
            ("VBUS-COMM-2412-000001", true),
            ("VBUS-GPU-2412-003000", false),
            ("vbus-CPU-2412-003000", false),
            ("VBUS-CPU-241-003000", false),
            ("VBUS-CPU-2412-03000", false),
            ("VBUS-CPU-2412-0030000", false),
            ("VBUS-CPU-2412-+03000", false),
            ("VBUS-CPU-2412-003000-", false),
            ("VBUS-CPU-2412", false),
            ("VBUS-CPU-2412-00300٣", false),
            ("", false),
        ];
        for (s, ok) in rows {
            assert_eq!(Serial::parse(s).is_some(), ok, "{s}");
            if ok {
                assert_eq!(Serial::parse(s).unwrap().to_string(), s);
            }
        }
    }

    #[test]
    fn ranges_parse_and_contain_their_ends() {
        let r = SerialRange::parse("VBUS-CPU-2412-003000..003999").unwrap();
        assert_eq!(r.to_string(), "VBUS-CPU-2412-003000..003999");
        let at = |s: &str| r.contains(&Serial::parse(s).unwrap());
        assert!(at("VBUS-CPU-2412-003000"));
        assert!(at("VBUS-CPU-2412-003999"));
        assert!(!at("VBUS-CPU-2412-002999"));
        assert!(!at("VBUS-CPU-2412-004000"));
        assert!(!at("VBUS-CPU-2411-003500"));
        assert!(!at("VBUS-PWR-2412-003500"));
        let rows = [
            ("VBUS-CPU-2412-003000", "serial range is"),
            ("VBUS-CPU-2412-003000..3999", "serial range is"),
            (
                "VBUS-CPU-2412-003000..VBUS-CPU-2412-003999",
                "serial range is",
            ),
            ("VBUS-CPU-2412-004000..003999", "above the high end"),
            ("VBUS-XXX-2412-003000..003999", "serial range is"),
        ];
        for (s, want) in rows {
            let err = SerialRange::parse(s).unwrap_err();
            assert!(err.contains(want), "{s}: {err}");
        }
        assert!(SerialRange::parse("VBUS-CPU-2412-003000..003000").is_ok());
    }
}
