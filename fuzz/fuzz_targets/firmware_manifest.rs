//! Firmware manifests, as `station verify-firmware` and the appliance's
//! `firmware sign` check read them: the binary layout (`firmware::decode`),
//! or its JSON form (`firmware::ManifestJson`, converted back to the
//! binary form), then `firmware::verify` and `firmware::verify_image` with
//! the Ed25519 and the P-256 manufacturer keys of the seeds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // As station's manifest_bytes: JSON when the first non-blank byte is '{'.
    let bytes = if data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        let Ok(json) = serde_json::from_slice::<firmware::ManifestJson>(data) else {
            return;
        };
        let Ok(signed) = firmware::SignedManifest::try_from(&json) else {
            return;
        };
        // The JSON form is strict: back to JSON gives the same fields.
        assert_eq!(firmware::ManifestJson::from(&signed), json);
        signed.encode().expect("a manifest that converted encodes")
    } else {
        data.to_vec()
    };
    if let Ok(signed) = firmware::decode(&bytes) {
        // One encoding per manifest: decode(b)?.encode()? == b.
        assert_eq!(signed.encode().expect("decoded manifest encodes"), bytes);
    }
    for key in vbus_fuzz::firmware_keys() {
        if let Ok(signed) = firmware::verify(&bytes, key) {
            let digest = signed.manifest.digest.clone();
            let ok = firmware::verify_image(&bytes, &digest, key, signed.manifest.security_version);
            assert!(ok.is_ok(), "{ok:?}");
        }
    }
});
