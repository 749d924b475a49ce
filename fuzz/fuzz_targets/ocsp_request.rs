//! OCSP requests (`ca::parse_ocsp_request`), as the publication port's
//! `POST /ocsp` hands them over before routing them to a responder.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = ca::parse_ocsp_request(data) {
        assert!((1..=ca::MAX_OCSP_REQUEST_ENTRIES).contains(&req.ids.len()));
        if let Some(nonce) = &req.nonce {
            assert!(!nonce.is_empty());
        }
        for id in &req.ids {
            // Lowercase hex without leading zero bytes, as serials are stored.
            assert!(id
                .serial_number
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        }
    }
});
