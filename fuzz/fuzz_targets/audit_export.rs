//! The offline verifier of an audit export (`audit::verify::verify_export`,
//! what `kmsctl audit verify --export FILE` runs): JSON lines of records
//! and signed checkpoint notes, checked with the seeds' checkpoint key.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let verifier = vbus_fuzz::audit_verifier();
    if let Ok(report) = audit::verify::verify_export(data, verifier, None, |_| {}) {
        assert!(report.checkpointed <= report.first.saturating_add(report.records));
    }
});
