//! The fault plan: its text format (see the crate documentation), and the
//! decision for one call. Pure: no PKCS#11, no files.

use std::time::Duration;

use cryptoki_sys::*;

/// What to do to one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Wait this long first.
    pub delay: Duration,
    /// Then return this instead of calling the real module; `None`: call it.
    pub rv: Option<CK_RV>,
    /// The rule's effect as written, for the fault log.
    pub what: String,
}

/// One line of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    /// `None` for `*`.
    function: Option<String>,
    rv: Option<(CK_RV, String)>,
    delay: Duration,
    /// Matching calls still let through before the rule applies.
    after: u64,
    /// Calls it still applies to; `None`: every call.
    count: Option<u64>,
}

/// A parsed plan and its per-rule counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    rules: Vec<Rule>,
}

impl Plan {
    /// Parse a plan; lines that do not parse are returned as errors (line
    /// number and reason) and left out.
    pub fn parse(text: &str) -> (Plan, Vec<String>) {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            match parse_rule(line) {
                Ok(r) => rules.push(r),
                Err(e) => errors.push(format!("line {}: {e}: {line:?}", n + 1)),
            }
        }
        (Plan { rules }, errors)
    }

    /// The fault for a call to `function`, if a rule applies; counts the
    /// call against the first live rule that names it (or `*`).
    pub fn decide(&mut self, function: &str) -> Option<Fault> {
        let rule = self
            .rules
            .iter_mut()
            .find(|r| r.count != Some(0) && r.function.as_deref().is_none_or(|f| f == function))?;
        if rule.after > 0 {
            rule.after -= 1;
            return None;
        }
        if let Some(c) = rule.count.as_mut() {
            *c -= 1;
        }
        let mut what = Vec::new();
        if !rule.delay.is_zero() {
            what.push(format!("delay_ms={}", rule.delay.as_millis()));
        }
        if let Some((_, name)) = &rule.rv {
            what.push(name.clone());
        }
        Some(Fault {
            delay: rule.delay,
            rv: rule.rv.as_ref().map(|(rv, _)| *rv),
            what: what.join(" "),
        })
    }
}

fn parse_rule(line: &str) -> Result<Rule, String> {
    let mut words = line.split_whitespace();
    let function = match words.next() {
        Some("*") => None,
        Some(f) if f.starts_with("C_") && f.len() > 2 => Some(f.to_owned()),
        _ => return Err("a rule starts with a function name (C_Sign) or *".into()),
    };
    let mut rule = Rule {
        function,
        rv: None,
        delay: Duration::ZERO,
        after: 0,
        count: None,
    };
    for word in words {
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{word}: not a whole number"))
        };
        if let Some(v) = word.strip_prefix("delay_ms=") {
            rule.delay = Duration::from_millis(number(v)?);
        } else if let Some(v) = word.strip_prefix("count=") {
            rule.count = Some(number(v)?);
        } else if let Some(v) = word.strip_prefix("after=") {
            rule.after = number(v)?;
        } else if let Some(rv) = return_value(word) {
            if rule.rv.is_some() {
                return Err("more than one return value".into());
            }
            rule.rv = Some((rv, word.to_owned()));
        } else {
            return Err(format!(
                "{word}: not CKR_…, 0x…, delay_ms=, count= or after="
            ));
        }
    }
    if rule.rv.is_none() && rule.delay.is_zero() {
        return Err("no effect: give a CKR_ code, delay_ms=, or both".into());
    }
    Ok(rule)
}

/// A `CKR_…` name from [`CODES`] or a hexadecimal `0x…` value.
fn return_value(word: &str) -> Option<CK_RV> {
    if let Some(hex) = word.strip_prefix("0x") {
        return CK_RV::from_str_radix(hex, 16).ok();
    }
    CODES.iter().find(|(n, _)| *n == word).map(|(_, rv)| *rv)
}

/// The return values a plan may name: every code of PKCS#11 2.40 that a
/// token or its driver can produce in the middle of a call.
const CODES: &[(&str, CK_RV)] = &[
    ("CKR_HOST_MEMORY", CKR_HOST_MEMORY),
    ("CKR_SLOT_ID_INVALID", CKR_SLOT_ID_INVALID),
    ("CKR_GENERAL_ERROR", CKR_GENERAL_ERROR),
    ("CKR_FUNCTION_FAILED", CKR_FUNCTION_FAILED),
    ("CKR_ARGUMENTS_BAD", CKR_ARGUMENTS_BAD),
    ("CKR_CANT_LOCK", CKR_CANT_LOCK),
    ("CKR_DATA_INVALID", CKR_DATA_INVALID),
    ("CKR_DEVICE_ERROR", CKR_DEVICE_ERROR),
    ("CKR_DEVICE_MEMORY", CKR_DEVICE_MEMORY),
    ("CKR_DEVICE_REMOVED", CKR_DEVICE_REMOVED),
    ("CKR_ENCRYPTED_DATA_INVALID", CKR_ENCRYPTED_DATA_INVALID),
    ("CKR_FUNCTION_CANCELED", CKR_FUNCTION_CANCELED),
    ("CKR_FUNCTION_NOT_SUPPORTED", CKR_FUNCTION_NOT_SUPPORTED),
    ("CKR_KEY_HANDLE_INVALID", CKR_KEY_HANDLE_INVALID),
    (
        "CKR_KEY_FUNCTION_NOT_PERMITTED",
        CKR_KEY_FUNCTION_NOT_PERMITTED,
    ),
    ("CKR_MECHANISM_INVALID", CKR_MECHANISM_INVALID),
    ("CKR_OBJECT_HANDLE_INVALID", CKR_OBJECT_HANDLE_INVALID),
    ("CKR_OPERATION_ACTIVE", CKR_OPERATION_ACTIVE),
    (
        "CKR_OPERATION_NOT_INITIALIZED",
        CKR_OPERATION_NOT_INITIALIZED,
    ),
    ("CKR_PIN_INCORRECT", CKR_PIN_INCORRECT),
    ("CKR_PIN_LOCKED", CKR_PIN_LOCKED),
    ("CKR_SESSION_CLOSED", CKR_SESSION_CLOSED),
    ("CKR_SESSION_COUNT", CKR_SESSION_COUNT),
    ("CKR_SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID),
    ("CKR_TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT),
    ("CKR_TOKEN_NOT_RECOGNIZED", CKR_TOKEN_NOT_RECOGNIZED),
    ("CKR_USER_NOT_LOGGED_IN", CKR_USER_NOT_LOGGED_IN),
    ("CKR_WRAPPED_KEY_INVALID", CKR_WRAPPED_KEY_INVALID),
    ("CKR_RANDOM_NO_RNG", CKR_RANDOM_NO_RNG),
    ("CKR_BUFFER_TOO_SMALL", CKR_BUFFER_TOO_SMALL),
    ("CKR_CRYPTOKI_NOT_INITIALIZED", CKR_CRYPTOKI_NOT_INITIALIZED),
    ("CKR_FUNCTION_REJECTED", CKR_FUNCTION_REJECTED),
    ("CKR_TOKEN_RESOURCE_EXCEEDED", CKR_TOKEN_RESOURCE_EXCEEDED),
];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn plan(text: &str) -> Plan {
        let (p, errors) = Plan::parse(text);
        assert!(errors.is_empty(), "{errors:?}");
        p
    }

    #[test]
    fn every_call_count_after_and_star() {
        let mut p = plan(
            "# comment\n\nC_Sign CKR_SESSION_HANDLE_INVALID count=1\nC_Sign delay_ms=5 after=1 count=1\n* CKR_DEVICE_REMOVED  # the rest\n",
        );
        let first = p.decide("C_Sign").unwrap();
        assert_eq!(first.rv, Some(CKR_SESSION_HANDLE_INVALID));
        assert_eq!(first.what, "CKR_SESSION_HANDLE_INVALID");
        // The count=1 rule is spent; the delay rule lets one call through.
        assert_eq!(p.decide("C_Sign"), None);
        let delayed = p.decide("C_Sign").unwrap();
        assert_eq!(
            (delayed.rv, delayed.delay),
            (None, Duration::from_millis(5))
        );
        assert_eq!(delayed.what, "delay_ms=5");
        for _ in 0..3 {
            assert_eq!(p.decide("C_Sign").unwrap().rv, Some(CKR_DEVICE_REMOVED));
        }
        assert_eq!(p.decide("C_Login").unwrap().rv, Some(CKR_DEVICE_REMOVED));
    }

    #[test]
    fn empty_plan_passes_everything_and_bad_lines_are_reported() {
        assert_eq!(plan("").decide("C_Sign"), None);
        let (mut p, errors) = Plan::parse(
            "Sign CKR_DEVICE_ERROR\nC_Sign CKR_NO_SUCH\nC_Sign count=x CKR_DEVICE_ERROR\nC_Sign\nC_Sign 0x30 CKR_DEVICE_ERROR\nC_Login 0x30\n",
        );
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(errors[1].starts_with("line 2: CKR_NO_SUCH"), "{errors:?}");
        assert_eq!(p.decide("C_Sign"), None);
        assert_eq!(p.decide("C_Login").unwrap().rv, Some(CKR_DEVICE_ERROR));
    }
}
