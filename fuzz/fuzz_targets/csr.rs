//! The device CSR check (`ca::check_csr`), as the appliance runs it on
//! `POST /v1/devices/{serial}/certificate`: the key type read first (for the
//! policy), then the full strict check (PEM or DER, strict DER, key,
//! signature algorithm, proof of possession, subject, requested
//! extensions) for a device of each module type; and the credential CSR
//! check (`ca::check_client_csr`) of `kmsctl station add`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let fx = vbus_fuzz::ca_fixture();
    let key_type = ca::csr_key_type(data);
    for (serial, uuid) in &fx.devices {
        let Ok(profile) = fx.profiles.get(serial.module_type()) else {
            continue;
        };
        if let Ok(checked) = ca::check_csr(data, profile, serial, uuid) {
            // What passed the full check has the key type read first.
            assert_eq!(key_type.as_ref().ok(), Some(&checked.key_type));
            assert!(profile.key_types.contains(&checked.key_type));
        }
    }
    if let Ok(checked) = ca::check_client_csr(data) {
        assert_eq!(checked.key_type, ca::KeyType::EcdsaP256);
    }
});
