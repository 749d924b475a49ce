//! Issuance: validate → build the TBSCertificate → check it against the
//! profile → sign through the [`Signer`] → verify the signature with the
//! issuer's public key → store. (The audit record joins with the audit issue.)

use std::sync::Arc;

use base64::Engine as _;
use der::asn1::ObjectIdentifier as Oid;
use der::{Decode, Encode};
use sha2::{Digest, Sha256};
use store::{Store, Tree, Write};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use crate::build::{self, DeviceCert, SubjectKey, Urls};
use crate::check::{self, Expected};
use crate::csr;
use crate::error::{Error, Result};
use crate::ident::{HwUuid, ModuleSerial};
use crate::profile::Profiles;
use crate::records::{CertificateRecord, DeviceRecord};
use crate::signer::{verify_signature, RcgenSigner, SignatureAlgorithm, Signer, SignerError};

/// A source of random bytes (the token RNG in the appliance).
pub trait Random: Send + Sync {
    /// Fill `buf`.
    fn fill(&self, buf: &mut [u8]) -> Result<(), SignerError>;
}

/// Where an issuance is recorded before it takes effect (the audit log in
/// the appliance). Called after the certificate is signed and verified and
/// before the store commit: if it fails, nothing is stored and the caller
/// gets [`Error::Journal`].
pub trait Journal: Send + Sync {
    /// Record that `record` is about to be stored.
    fn issued(&self, record: &CertificateRecord) -> Result<(), SignerError>;
}

/// The current time (injected so tests can fix it).
pub trait Clock: Send + Sync {
    /// Now, UTC.
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// Certificate serial length: 16 random bytes (RFC 5280 allows up to 20
/// octets; with a possible leading zero for the sign, 17 at most).
pub const SERIAL_BYTES: usize = 16;

/// How far notBefore is set back to tolerate device clocks running behind.
pub const BACKDATE: Duration = Duration::minutes(5);

/// The vBus `hwType` OID used in hardwareModuleName unless configured.
pub const DEFAULT_HW_TYPE: &str = "1.3.6.1.4.1.61422.1.1";

/// A device certificate request.
#[derive(Clone, Copy, Debug)]
pub struct IssueRequest<'a> {
    /// Module serial, `VBUS-…`.
    pub module_serial: &'a str,
    /// Hardware UUID.
    pub hw_uuid: &'a str,
    /// The CSR, PEM or DER.
    pub csr: &'a [u8],
    /// Validity the policy sets for this request, in days; the profile's
    /// when `None`. Never longer than the profile's.
    pub validity_days: Option<u32>,
    /// Who asks (recorded with the certificate and the device).
    pub requested_by: &'a str,
    /// The policy lets this request certify a new key for an already
    /// certified device without an officer's permission (EST re-enrolment).
    pub new_key_allowed: bool,
}

/// An issued (or, for a repeated request, the stored) certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// Lowercase hex.
    pub serial_number: String,
    /// DER.
    pub certificate_der: Vec<u8>,
    /// RFC 3339 UTC.
    pub not_after: String,
    /// False when the same device and key were already certified and the
    /// stored certificate is returned.
    pub newly_issued: bool,
    /// The device's previous certificate, when this new one replaces it
    /// (a re-issue for a new key).
    pub superseded: Option<String>,
}

/// Settings of the issuing CA.
pub struct CaSettings {
    /// The intermediate's certificate (DER).
    pub issuer_der: Vec<u8>,
    /// CRL and OCSP URLs written into device certificates.
    pub urls: Urls,
    /// `hwType` OID of hardwareModuleName.
    pub hw_type: Oid,
    /// The device profiles.
    pub profiles: Profiles,
}

/// The device-issuing CA.
pub struct Ca {
    signer: Box<dyn Signer>,
    random: Box<dyn Random>,
    clock: Box<dyn Clock>,
    store: Arc<dyn Store>,
    settings: CaSettings,
    issuer_params: rcgen::CertificateParams,
    issuer_subject_der: Vec<u8>,
    issuer_key_id: Vec<u8>,
    issuer_not_after: OffsetDateTime,
    /// Requests for the same module serial run one at a time (striped by a
    /// hash of the serial), so a retried request that overlaps the first
    /// sees its certificate instead of signing and journaling a second.
    stripes: Vec<std::sync::Mutex<()>>,
}

impl DeviceRecord {
    /// Whether `req` repeats the request this device was certified for:
    /// the very key in the CSR and the same hardware UUID (issuing would
    /// return the stored certificate). A CSR that cannot be read is not a
    /// repeat.
    pub fn answers(&self, req: &IssueRequest<'_>) -> bool {
        csr::spki_sha256(req.csr).is_ok_and(|key_hash| {
            self.public_key_sha256 == key_hash && self.hw_uuid.eq_ignore_ascii_case(req.hw_uuid)
        })
    }
}

/// Lock stripes for concurrent requests.
const STRIPES: usize = 256;

fn lowercase_hex_serial(der_integer_content: &[u8]) -> String {
    let m = check::magnitude(der_integer_content);
    if m.is_empty() {
        "00".into()
    } else {
        hex::encode(m)
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

fn sig_oid(alg: SignatureAlgorithm) -> Oid {
    match alg {
        SignatureAlgorithm::EcdsaP256Sha256 => crate::oids::ECDSA_SHA256,
        SignatureAlgorithm::Ed25519 => crate::oids::ED25519,
    }
}

impl Ca {
    /// A CA issuing under `settings.issuer_der` with `signer`, which must
    /// hold that certificate's key.
    pub fn new(
        signer: Box<dyn Signer>,
        random: Box<dyn Random>,
        clock: Box<dyn Clock>,
        store: Arc<dyn Store>,
        settings: CaSettings,
    ) -> Result<Self> {
        let cert = x509_cert::Certificate::from_der(&settings.issuer_der)
            .map_err(|e| Error::Issuer(e.to_string()))?;
        let tbs = &cert.tbs_certificate;
        if tbs.subject_public_key_info.subject_public_key.raw_bytes() != signer.public_key_raw() {
            return Err(Error::Issuer(
                "the signer's key is not the issuer certificate's key".into(),
            ));
        }
        let issuer_params = build::issuer_params(&settings.issuer_der)?;
        let issuer_key_id = match &issuer_params.key_identifier_method {
            rcgen::KeyIdMethod::PreSpecified(k) => k.clone(),
            _ => return Err(Error::Issuer("no subject key identifier".into())),
        };
        let na = tbs.validity.not_after.to_unix_duration().as_secs();
        let issuer_not_after = OffsetDateTime::from_unix_timestamp(na as i64)
            .map_err(|e| Error::Issuer(e.to_string()))?;
        Ok(Self {
            issuer_subject_der: tbs
                .subject
                .to_der()
                .map_err(|e| Error::Issuer(e.to_string()))?,
            signer,
            random,
            clock,
            store,
            settings,
            issuer_params,
            issuer_key_id,
            issuer_not_after,
            stripes: (0..STRIPES).map(|_| std::sync::Mutex::new(())).collect(),
        })
    }

    /// Check a request and issue, or return the stored certificate when the
    /// same device asks again with the same key. A refusal changes nothing.
    pub fn issue(&self, req: &IssueRequest<'_>, journal: &dyn Journal) -> Result<Issued> {
        let stripe = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            req.module_serial.hash(&mut h);
            (h.finish() as usize) % STRIPES
        };
        let _one_at_a_time = self.stripes[stripe]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = self.clock.now();
        let module = ModuleSerial::parse(req.module_serial, now)?;
        let profile = self.settings.profiles.get(module.module_type())?;
        let uuid = HwUuid::parse(req.hw_uuid)?;
        let checked = csr::check(req.csr, profile, &module, &uuid)?;
        let key_hash = hex::encode(Sha256::digest(&checked.spki_der));

        // Against what is stored: repeat, re-issue, or conflicts.
        let device = self.device(module.as_str())?;
        if let Some(d) = &device {
            if d.hw_uuid != uuid.as_str() {
                return Err(Error::HwUuidMismatch {
                    serial: d.module_serial.clone(),
                    recorded: d.hw_uuid.clone(),
                    given: uuid.as_str().into(),
                });
            }
            if d.public_key_sha256 == key_hash {
                return self.stored(&d.certificate);
            }
            if !d.reissue_allowed && !req.new_key_allowed {
                return Err(Error::DeviceAlreadyCertified {
                    serial: d.module_serial.clone(),
                    certificate: d.certificate.clone(),
                });
            }
        }
        if let Some(owner) = self.owner(Tree::HardwareIds, uuid.as_str().as_bytes())? {
            if owner != module.as_str() {
                return Err(Error::HwUuidInUse {
                    uuid: uuid.as_str().into(),
                    owner,
                });
            }
        }
        if let Some(owner) = self.owner(Tree::PublicKeys, key_hash.as_bytes())? {
            if owner != module.as_str() {
                return Err(Error::PublicKeyInUse { owner });
            }
        }

        if now >= self.issuer_not_after {
            return Err(Error::IssuerExpired(rfc3339(self.issuer_not_after)));
        }
        let not_before = now - BACKDATE;
        let days = req
            .validity_days
            .map_or(profile.validity_days, |d| d.min(profile.validity_days));
        let not_after = (now + Duration::days(i64::from(days))).min(self.issuer_not_after);
        // Whole seconds: what the certificate can express.
        let not_before = not_before
            .replace_nanosecond(0)
            .map_err(|e| Error::Encoding(e.to_string()))?;
        let not_after = not_after
            .replace_nanosecond(0)
            .map_err(|e| Error::Encoding(e.to_string()))?;

        for _ in 0..3 {
            let mut serial = [0u8; SERIAL_BYTES];
            self.random.fill(&mut serial).map_err(Error::Random)?;
            let der = self.build_and_sign(
                &serial, &module, &uuid, profile, &checked, not_before, not_after,
            )?;
            let serial_number = lowercase_hex_serial(&serial);
            let record = CertificateRecord {
                serial_number: serial_number.clone(),
                module_serial: module.as_str().into(),
                module_type: module.module_type(),
                hw_uuid: uuid.as_str().into(),
                public_key_sha256: key_hash.clone(),
                not_before: rfc3339(not_before),
                not_after: rfc3339(not_after),
                der: base64::engine::general_purpose::STANDARD.encode(&der),
                requested_by: req.requested_by.into(),
            };
            if self
                .store
                .get(Tree::Certificates, serial_number.as_bytes())?
                .is_some()
            {
                continue; // a 2^-128 serial collision: draw again before journaling
            }
            journal.issued(&record).map_err(Error::Journal)?;
            match self.commit(&record, device.as_ref())? {
                Ok(()) => {
                    return Ok(Issued {
                        serial_number,
                        certificate_der: der,
                        not_after: record.not_after,
                        newly_issued: true,
                        superseded: device.as_ref().map(|d| d.certificate.clone()),
                    })
                }
                Err(conflict) if conflict.tree == Tree::Certificates => continue, // a 2^-128 serial collision: draw again
                Err(conflict) => return self.lost_race(&module, &uuid, &key_hash, conflict),
            }
        }
        Err(Error::Encoding(
            "three certificate serial collisions in a row: the random source is broken".into(),
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn build_and_sign(
        &self,
        serial: &[u8],
        module: &ModuleSerial,
        uuid: &HwUuid,
        profile: &crate::profile::Profile,
        checked: &csr::CheckedCsr,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Vec<u8>> {
        let subject_key_id = build::key_identifier(&checked.public_key_raw);
        let params = build::device_params(&DeviceCert {
            serial,
            module,
            uuid,
            profile,
            not_before,
            not_after,
            urls: &self.settings.urls,
            hw_type: self.settings.hw_type,
            subject_key_id: subject_key_id.clone(),
        })?;
        let san_der = build::device_san(
            module,
            uuid,
            self.settings.hw_type,
            profile.hardware_module_name,
        )?;
        let aia_der = build::ocsp_aia(&self.settings.urls.ocsp)?;
        let expected = Expected {
            serial,
            signature_algorithm: sig_oid(self.signer.algorithm()),
            issuer_subject_der: &self.issuer_subject_der,
            issuer_key_id: &self.issuer_key_id,
            not_before,
            not_after,
            module_serial: module.as_str(),
            spki_der: &checked.spki_der,
            subject_key_id: &subject_key_id,
            profile,
            san_der: &san_der,
            aia_der: &aia_der,
            crl_url: &self.settings.urls.crl,
        };
        let key = RcgenSigner::checked(
            self.signer.as_ref(),
            Box::new(|tbs: &[u8]| check::check_tbs(tbs, &expected)),
        );
        let issuer = rcgen::Issuer::from_params(&self.issuer_params, &key);
        let subject = SubjectKey::new(checked.key_type, checked.public_key_raw.clone());
        let cert = params.signed_by(&subject, &issuer).map_err(|e| {
            key.take_error()
                .unwrap_or_else(|| Error::Encoding(e.to_string()))
        })?;
        let der = cert.der().to_vec();
        // Trust nothing the token returned until it verifies.
        let (tbs, sig) = key.take_signed().ok_or(Error::IssuedSignatureInvalid)?;
        let parsed =
            x509_cert::Certificate::from_der(&der).map_err(|e| Error::Encoding(e.to_string()))?;
        let same_tbs = parsed.tbs_certificate.to_der().is_ok_and(|t| t == tbs);
        if !same_tbs
            || parsed.signature.raw_bytes() != sig
            || !verify_signature(
                self.signer.algorithm(),
                self.signer.public_key_raw(),
                &tbs,
                &sig,
            )
        {
            return Err(Error::IssuedSignatureInvalid);
        }
        Ok(der)
    }

    fn commit(
        &self,
        record: &CertificateRecord,
        old: Option<&DeviceRecord>,
    ) -> Result<Result<(), store::Conflict>> {
        let mut device = old.cloned().unwrap_or_else(|| DeviceRecord {
            module_serial: record.module_serial.clone(),
            module_type: record.module_type,
            hw_uuid: record.hw_uuid.clone(),
            public_key_sha256: record.public_key_sha256.clone(),
            certificate: record.serial_number.clone(),
            certificates: Vec::new(),
            reissue_allowed: false,
            station: record.requested_by.clone(),
        });
        device.public_key_sha256 = record.public_key_sha256.clone();
        device.certificate = record.serial_number.clone();
        device.certificates.push(record.serial_number.clone());
        device.reissue_allowed = false;
        device.station = record.requested_by.clone();

        let mut writes = vec![
            Write::Insert {
                tree: Tree::Certificates,
                key: record.serial_number.as_bytes().to_vec(),
                value: to_json(record)?,
            },
            Write::Replace {
                tree: Tree::Devices,
                key: record.module_serial.as_bytes().to_vec(),
                expected: old.map(to_json).transpose()?,
                value: to_json(&device)?,
            },
            Write::Insert {
                tree: Tree::PublicKeys,
                key: record.public_key_sha256.as_bytes().to_vec(),
                value: record.module_serial.as_bytes().to_vec(),
            },
        ];
        if old.is_none() {
            writes.push(Write::Insert {
                tree: Tree::HardwareIds,
                key: record.hw_uuid.as_bytes().to_vec(),
                value: record.module_serial.as_bytes().to_vec(),
            });
        }
        // Journaled before this (or replayed from the journal by `restore`):
        // the store may flush it later, start-up reconciliation re-applies
        // whatever a crash took from it.
        Ok(self.store.commit_journaled(&writes)?)
    }

    /// Another request changed the device between our read and our commit.
    fn lost_race(
        &self,
        module: &ModuleSerial,
        uuid: &HwUuid,
        key_hash: &str,
        c: store::Conflict,
    ) -> Result<Issued> {
        let owner = c
            .current
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default();
        match c.tree {
            Tree::HardwareIds => Err(Error::HwUuidInUse {
                uuid: uuid.as_str().into(),
                owner,
            }),
            Tree::PublicKeys => Err(Error::PublicKeyInUse { owner }),
            _ => match self.device(module.as_str())? {
                Some(d) if d.public_key_sha256 == key_hash => self.stored(&d.certificate),
                Some(d) => Err(Error::DeviceAlreadyCertified {
                    serial: d.module_serial,
                    certificate: d.certificate,
                }),
                None => Err(Error::Store(store::Error::Corrupt(
                    "device vanished during issuance".into(),
                ))),
            },
        }
    }

    fn owner(&self, tree: Tree, key: &[u8]) -> Result<Option<String>> {
        Ok(self
            .store
            .get(tree, key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn stored(&self, serial_number: &str) -> Result<Issued> {
        let rec = self.certificate(serial_number)?.ok_or_else(|| {
            store::Error::Corrupt(format!(
                "device points at missing certificate {serial_number}"
            ))
        })?;
        let der = base64::engine::general_purpose::STANDARD
            .decode(&rec.der)
            .map_err(|e| store::Error::Corrupt(e.to_string()))?;
        Ok(Issued {
            serial_number: rec.serial_number,
            certificate_der: der,
            not_after: rec.not_after,
            newly_issued: false,
            superseded: None,
        })
    }

    /// The device record of `module_serial`.
    pub fn device(&self, module_serial: &str) -> Result<Option<DeviceRecord>> {
        self.store
            .get(Tree::Devices, module_serial.as_bytes())?
            .map(|v| {
                serde_json::from_slice(&v).map_err(|e| store::Error::Corrupt(e.to_string()).into())
            })
            .transpose()
    }

    /// The certificate record of `serial_number` (lowercase hex).
    pub fn certificate(&self, serial_number: &str) -> Result<Option<CertificateRecord>> {
        self.store
            .get(Tree::Certificates, serial_number.as_bytes())?
            .map(|v| {
                serde_json::from_slice(&v).map_err(|e| store::Error::Corrupt(e.to_string()).into())
            })
            .transpose()
    }

    /// Let the device get one certificate for a new key (officer decision).
    pub fn allow_reissue(&self, module_serial: &str) -> Result<()> {
        for _ in 0..16 {
            let old = self
                .device(module_serial)?
                .ok_or_else(|| Error::DeviceNotFound(module_serial.into()))?;
            let mut new = old.clone();
            new.reissue_allowed = true;
            let write = Write::Replace {
                tree: Tree::Devices,
                key: module_serial.as_bytes().to_vec(),
                expected: Some(to_json(&old)?),
                value: to_json(&new)?,
            };
            if self.store.commit(&[write])?.is_ok() {
                return Ok(());
            }
        }
        Err(Error::Store(store::Error::Corrupt(format!(
            "device {module_serial} keeps changing under us"
        ))))
    }

    /// Store a certificate the journal holds but the store lacks (after a
    /// crash between the two). Returns false when it is already stored, or
    /// when it lost to another certificate for the same device, key or
    /// UUID (two overlapping requests both journaled; the store kept the
    /// first and answered both with it): such a certificate was never given
    /// to anyone and stays only in the log.
    pub fn restore(&self, record: &CertificateRecord) -> Result<bool> {
        if self.certificate(&record.serial_number)?.is_some() {
            return Ok(false);
        }
        let old = self.device(&record.module_serial)?;
        let owned_by_other = |tree: Tree, key: &str| -> Result<bool> {
            Ok(self
                .owner(tree, key.as_bytes())?
                .is_some_and(|owner| owner != record.module_serial))
        };
        // The device moved on to this very key already, or the key or UUID
        // belongs to another device: the store's answer stands.
        let superseded = old
            .as_ref()
            .is_some_and(|d| d.public_key_sha256 == record.public_key_sha256)
            || owned_by_other(Tree::PublicKeys, &record.public_key_sha256)?
            || owned_by_other(Tree::HardwareIds, &record.hw_uuid)?;
        if superseded {
            return Ok(false);
        }
        Ok(self.commit(record, old.as_ref())?.is_ok())
    }

    /// The certificate profile of a module type.
    pub fn profile(&self, t: crate::ident::ModuleType) -> Result<&crate::profile::Profile> {
        self.settings.profiles.get(t)
    }

    /// The issuing certificate (DER).
    pub fn issuer_der(&self) -> &[u8] {
        &self.settings.issuer_der
    }
}

/// A record as the JSON bytes the store keeps.
fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Encoding(e.to_string()))
}
