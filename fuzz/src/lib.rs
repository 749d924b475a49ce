//! Fixed inputs shared by the fuzz targets and by the seed maker
//! (`examples/make_seeds.rs`): the keys the targets verify with, the CA
//! profiles and device identities, and how a target splits its input.
//!
//! The seeds are signed with these very keys, so the fuzzer starts from
//! inputs that get past the signature checks and reaches the code behind
//! them.

use std::sync::{Arc, OnceLock};

use ed25519_dalek::Signer as _;

/// The audit log's name (checkpoint origin and key name), as in
/// `audit::Options::default()`.
pub const AUDIT_ORIGIN: &str = "vbus-kms/audit";
/// Seed of the Ed25519 key that signs the audit checkpoints of the seeds.
pub const AUDIT_KEY_SEED: [u8; 32] = [0x5a; 32];

/// Seed of the Ed25519 firmware key (the firmware known-answer tests' key).
pub const FIRMWARE_ED25519_SEED: [u8; 32] = {
    let mut s = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        s[i] = i as u8;
        i += 1;
    }
    s
};
/// The P-256 firmware key's private scalar (the firmware tests' key).
pub const FIRMWARE_P256_SCALAR: [u8; 32] = [0x11; 32];

/// The hardware UUID the seed CSRs carry.
pub const HW_UUID: &str = "6f1c2a3e-9b4d-4c7a-8e2f-1a2b3c4d5e6f";
/// Module serials the seed CSRs carry, one per module type.
pub const SERIALS: [&str; 4] = [
    "VBUS-CPU-2412-000001",
    "VBUS-PWR-2412-000001",
    "VBUS-PERIPH-2412-000001",
    "VBUS-COMM-2412-000001",
];
/// "Now" for the targets (2026-06-01T00:00:00Z): module serials are checked
/// against it, so the targets do not depend on the day they run.
pub const NOW_UNIX: i64 = 1_780_272_000;

/// The audit checkpoint key as the log's signer.
pub struct AuditSigner(ed25519_dalek::SigningKey);

impl audit::CheckpointSigner for AuditSigner {
    fn public_key(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    fn sign(&self, message: &[u8]) -> Result<[u8; 64], audit::SignerError> {
        Ok(self.0.sign(message).to_bytes())
    }
}

/// The audit checkpoint signer of the seeds.
pub fn audit_signer() -> Arc<AuditSigner> {
    Arc::new(AuditSigner(ed25519_dalek::SigningKey::from_bytes(
        &AUDIT_KEY_SEED,
    )))
}

/// The verifier of the seeds' audit checkpoints.
pub fn audit_verifier() -> &'static audit::note::Verifier {
    static V: OnceLock<audit::note::Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let key = ed25519_dalek::SigningKey::from_bytes(&AUDIT_KEY_SEED)
            .verifying_key()
            .to_bytes();
        audit::note::Verifier::from_key(AUDIT_ORIGIN, &key).expect("fixed audit key")
    })
}

/// The two firmware keys: Ed25519 and P-256.
pub fn firmware_keys() -> &'static [firmware::PublicKey; 2] {
    static K: OnceLock<[firmware::PublicKey; 2]> = OnceLock::new();
    K.get_or_init(|| {
        let ed = ed25519_dalek::SigningKey::from_bytes(&FIRMWARE_ED25519_SEED);
        let p = p256::ecdsa::SigningKey::from_bytes(&FIRMWARE_P256_SCALAR.into())
            .expect("fixed P-256 scalar");
        [
            firmware::PublicKey::from_raw(
                firmware::SignatureAlgorithm::Ed25519,
                ed.verifying_key().as_bytes(),
            )
            .expect("fixed Ed25519 key"),
            firmware::PublicKey::from_raw(
                firmware::SignatureAlgorithm::EcdsaP256Sha256,
                p.verifying_key().to_encoded_point(false).as_bytes(),
            )
            .expect("fixed P-256 key"),
        ]
    })
}

/// Sign `message` with the firmware key of `alg` (Ed25519 R‖S, or P-256
/// r‖s over SHA-256), for the seed maker.
pub fn firmware_sign(alg: firmware::SignatureAlgorithm, message: &[u8]) -> [u8; 64] {
    match alg {
        firmware::SignatureAlgorithm::Ed25519 => {
            ed25519_dalek::SigningKey::from_bytes(&FIRMWARE_ED25519_SEED)
                .sign(message)
                .to_bytes()
        }
        firmware::SignatureAlgorithm::EcdsaP256Sha256 => {
            let k = p256::ecdsa::SigningKey::from_bytes(&FIRMWARE_P256_SCALAR.into())
                .expect("fixed P-256 scalar");
            let sig: p256::ecdsa::Signature = k.sign(message);
            sig.to_bytes().into()
        }
    }
}

/// The CA side of a device request: the certificate profiles of the
/// appliance (`deploy/profiles.toml`) and the device identities of the seeds.
pub struct CaFixture {
    /// The default profiles.
    pub profiles: ca::Profiles,
    /// One device per module type: serial, UUID.
    pub devices: Vec<(ca::ModuleSerial, ca::HwUuid)>,
    /// The policy loader's view of the profiles (as `kms::policy` builds it).
    pub caps: policies::ProfileCaps,
}

/// [`CaFixture`], built once per process.
pub fn ca_fixture() -> &'static CaFixture {
    static F: OnceLock<CaFixture> = OnceLock::new();
    F.get_or_init(|| {
        let profiles = ca::Profiles::parse(ca::DEFAULT_PROFILES).expect("default profiles");
        let devices = SERIALS
            .iter()
            .map(|s| {
                (
                    ca::ModuleSerial::parse(s, now()).expect("fixed serial"),
                    ca::HwUuid::parse(HW_UUID).expect("fixed UUID"),
                )
            })
            .collect();
        let caps = policies::ProfileCaps(
            ca::ModuleType::ALL
                .into_iter()
                .filter_map(|t| {
                    let p = profiles.get(t).ok()?;
                    Some((
                        t.as_str().to_owned(),
                        policies::ProfileCap {
                            key_types: p.key_types.iter().map(|k| k.as_str().to_owned()).collect(),
                            validity_days: p.validity_days,
                        },
                    ))
                })
                .collect(),
        );
        CaFixture {
            profiles,
            devices,
            caps,
        }
    })
}

/// [`NOW_UNIX`] as a time.
pub fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(NOW_UNIX).expect("fixed time")
}

/// Split a fuzz input in two: a little-endian u16 length, that many bytes
/// (fewer if the input is shorter), then the rest.
pub fn split2(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return (data, &[]);
    };
    let n = usize::from(u16::from_le_bytes(*len)).min(rest.len());
    rest.split_at(n)
}

/// Join two parts as [`split2`] splits them (for the seed maker).
pub fn join2(a: &[u8], b: &[u8]) -> Vec<u8> {
    let len = u16::try_from(a.len()).expect("first part under 64 KiB");
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    out
}
