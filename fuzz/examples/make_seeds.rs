//! Writes the seeds that need our own code to make, signed with the fixed
//! keys of `vbus_fuzz`: an audit log (segment + checkpoint file, and its
//! JSON-lines export) and firmware manifests (binary and JSON). The other
//! seeds come from OpenSSL and the repository (see `make_seeds.sh`).
//!
//! `cargo +nightly run --example make_seeds -- CORPUS_DIR`

use std::path::Path;

use firmware::{DigestAlgorithm, Manifest, SignatureAlgorithm};

fn main() {
    let out = std::env::args()
        .nth(1)
        .expect("usage: make_seeds CORPUS_DIR");
    let out = Path::new(&out);
    audit_seeds(out);
    firmware_seeds(out);
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("seed");
}

fn audit_seeds(out: &Path) {
    let scratch = std::env::temp_dir().join(format!("vbus-seeds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let opts = audit::Options {
        origin: vbus_fuzz::AUDIT_ORIGIN.into(),
        checkpoint_every: 3,
    };
    {
        let log = audit::Log::open(&scratch, opts, Some(vbus_fuzz::audit_signer()))
            .expect("open scratch log");
        let entries = [
            audit::Entry::new("station-01", "device.issue", "VBUS-CPU-2412-000001", "ok").details(
                serde_json::json!({"hw_uuid": vbus_fuzz::HW_UUID, "serial_number": "5f0e"}),
            ),
            audit::Entry::new("station-01", "device.psk", "VBUS-CPU-2412-000001", "ok"),
            audit::Entry::new("officer-1", "cert.revoke", "5f0e", "ok")
                .details(serde_json::json!({"reason": "key_compromise"})),
            audit::Entry::new(
                "station-02",
                "device.issue",
                "VBUS-PWR-2412-000009",
                "policy_denied",
            )
            .details(serde_json::json!({"message": "quote \" backslash \\ and é"})),
            audit::Entry::new("officer-1", "policy.load", "-", "ok"),
        ];
        for e in entries {
            log.append(e).expect("append");
        }
        log.checkpoint().expect("checkpoint");
    }
    let segment = std::fs::read(scratch.join(audit::SEGMENT_FILE)).expect("segment");
    let checkpoints = std::fs::read(scratch.join(audit::CHECKPOINT_FILE)).expect("checkpoints");
    let dir = out.join("audit_segment");
    write(
        &dir,
        "log-5-records",
        &vbus_fuzz::join2(&segment, &checkpoints),
    );
    write(&dir, "log-no-checkpoints", &vbus_fuzz::join2(&segment, &[]));
    write(
        &dir,
        "log-torn-tail",
        &vbus_fuzz::join2(&segment[..segment.len() - 7], &checkpoints),
    );
    write(
        &dir,
        "log-header-only",
        &vbus_fuzz::join2(&segment[..8], &[]),
    );

    let mut export = Vec::new();
    audit::Log::export(&scratch, 1, &mut export).expect("export");
    let dir = out.join("audit_export");
    write(&dir, "export-full", &export);
    let mut partial = Vec::new();
    audit::Log::export(&scratch, 3, &mut partial).expect("export");
    write(&dir, "export-from-3", &partial);
    let _ = std::fs::remove_dir_all(&scratch);
}

fn firmware_seeds(out: &Path) {
    let dir = out.join("firmware_manifest");
    let keys = vbus_fuzz::firmware_keys();
    let image = b"vbus firmware";
    for key in keys {
        for (digest, product, version) in [
            (DigestAlgorithm::Sha256, "vbus-cpu", "1.4.2"),
            (
                DigestAlgorithm::Sha512,
                "vbus.comm_gw",
                "2026.06-rc1+build.7",
            ),
        ] {
            let m = Manifest {
                product: product.into(),
                version: version.into(),
                security_version: 7,
                digest_algorithm: digest,
                digest: digest.digest(image),
                key_id: key.key_id(),
                signature_algorithm: key.algorithm(),
                signing_time: 1_795_716_321,
            };
            let tbs = m.to_be_signed().expect("tbs");
            let sig = vbus_fuzz::firmware_sign(key.algorithm(), &tbs);
            let bin = m.encode(&sig).expect("encode");
            let name = match key.algorithm() {
                SignatureAlgorithm::Ed25519 => "ed25519",
                SignatureAlgorithm::EcdsaP256Sha256 => "p256",
            };
            write(&dir, &format!("{name}-{}.bin", digest.as_str()), &bin);
            let signed = firmware::decode(&bin).expect("decode");
            let json =
                serde_json::to_vec_pretty(&firmware::ManifestJson::from(&signed)).expect("json");
            write(&dir, &format!("{name}-{}.json", digest.as_str()), &json);
        }
    }
}
