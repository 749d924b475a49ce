//! Who may do what in vBus KMS: roles, module profiles, serial-number rules,
//! quotas and M-of-N thresholds, as data, deny by default.
//!
//! Pure crate. The policy file, its rules and the decision type arrive with
//! the policies issue; nothing here decides anything yet.

#![forbid(unsafe_code)]
