//! EST `/simpleenroll` and `/simplereenroll` request bodies, as
//! `kms::api::est_enroll` reads them: the base64 transfer encoding
//! (`ca::est::decode_base64_body`), the identity the CSR claims
//! (`ca::est::csr_identity`), then what `ca::Ca::issue` does with it
//! (module serial and hardware UUID parsed, the profile of the module type
//! picked, the key type read and the CSR checked in full).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(der) = ca::est::decode_base64_body(data) else {
        return;
    };
    // Only standard, canonically padded base64 is taken: re-encoding what
    // was decoded gives the body back, whitespace aside.
    let compact = |b: &[u8]| -> Vec<u8> {
        b.iter()
            .copied()
            .filter(|c| !matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
            .collect()
    };
    assert_eq!(
        compact(ca::est::base64_body(&der).as_bytes()),
        compact(data)
    );
    assert!(der.len() <= ca::MAX_CSR_BYTES);
    let Ok(id) = ca::est::csr_identity(&der) else {
        return;
    };
    let (Some(serial), Some(uuid)) = (id.serial_number, id.hw_uuid) else {
        return;
    };
    let fx = vbus_fuzz::ca_fixture();
    let Ok(serial) = ca::ModuleSerial::parse(&serial, vbus_fuzz::now()) else {
        return;
    };
    let Ok(uuid) = ca::HwUuid::parse(&uuid) else {
        return;
    };
    let _ = ca::csr_key_type(&der);
    let Ok(profile) = fx.profiles.get(serial.module_type()) else {
        return;
    };
    let _ = ca::check_csr(&der, profile, &serial, &uuid);
});
