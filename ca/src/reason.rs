//! RFC 5280 revocation reason codes (§5.3.1), shared by CRLs and OCSP.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// Why a certificate was revoked. `certificateHold` and `removeFromCRL` are
/// not offered: a revocation here is final (see the README).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RevocationReason {
    /// 0. Written to CRLs without a reasonCode extension, as RFC 5280 asks.
    Unspecified,
    /// 1.
    KeyCompromise,
    /// 2.
    #[serde(rename = "cACompromise")]
    CaCompromise,
    /// 3.
    AffiliationChanged,
    /// 4. Also what a re-enrolment revokes the old certificate with.
    Superseded,
    /// 5.
    CessationOfOperation,
    /// 9.
    PrivilegeWithdrawn,
    /// 10.
    #[serde(rename = "aACompromise")]
    AaCompromise,
}

impl RevocationReason {
    /// Every reason, in code order.
    pub const ALL: [RevocationReason; 8] = [
        Self::Unspecified,
        Self::KeyCompromise,
        Self::CaCompromise,
        Self::AffiliationChanged,
        Self::Superseded,
        Self::CessationOfOperation,
        Self::PrivilegeWithdrawn,
        Self::AaCompromise,
    ];

    /// The CRLReason ENUMERATED value.
    pub fn code(self) -> u8 {
        match self {
            Self::Unspecified => 0,
            Self::KeyCompromise => 1,
            Self::CaCompromise => 2,
            Self::AffiliationChanged => 3,
            Self::Superseded => 4,
            Self::CessationOfOperation => 5,
            Self::PrivilegeWithdrawn => 9,
            Self::AaCompromise => 10,
        }
    }

    /// The RFC 5280 name (`keyCompromise`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::KeyCompromise => "keyCompromise",
            Self::CaCompromise => "cACompromise",
            Self::AffiliationChanged => "affiliationChanged",
            Self::Superseded => "superseded",
            Self::CessationOfOperation => "cessationOfOperation",
            Self::PrivilegeWithdrawn => "privilegeWithdrawn",
            Self::AaCompromise => "aACompromise",
        }
    }

    /// The reason of a CRLReason value, if we offer it.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RevocationReason {
    type Err = Error;

    /// The RFC 5280 name, case-insensitive (`keyCompromise`, `keycompromise`).
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                Error::RevocationReasonInvalid(format!(
                    "{:?} is not an RFC 5280 reason offered here (one of: {})",
                    s.chars().take(40).collect::<String>(),
                    Self::ALL.map(|r| r.as_str()).join(", ")
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_codes_and_serde_agree() {
        for r in RevocationReason::ALL {
            assert_eq!(r.as_str().parse::<RevocationReason>().ok(), Some(r));
            assert_eq!(RevocationReason::from_code(r.code()), Some(r));
            assert_eq!(
                serde_json::to_string(&r).ok(),
                Some(format!("\"{}\"", r.as_str()))
            );
        }
        for bad in [
            "certificateHold",
            "removeFromCRL",
            "",
            "key compromise",
            "6",
        ] {
            assert!(bad.parse::<RevocationReason>().is_err(), "{bad}");
        }
        assert_eq!(RevocationReason::from_code(6), None);
        assert_eq!(RevocationReason::from_code(8), None);
    }
}
