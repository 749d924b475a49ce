//! `station provision`: one device's whole conversation, over any
//! [`DeviceLink`], with the appliance over the station's [`Client`].
//!
//! Every step reads the device back first and does only what is missing,
//! so running it again after a failure at any step finishes the job
//! without a second certificate (the appliance returns the certificate it
//! issued for the same key) or a second PSK (never asked for when the
//! device holds one), or stops with what an officer must decide.
//!
//! A certificate is checked the same way whether it comes from the
//! appliance (first run) or is found on the device (re-run): it certifies
//! the device's key, its subject's serialNumber and CN are the module
//! serial, and its subjectAltName carries `URI:urn:uuid:<hardware UUID>`.
//! The first run refuses (`invalid_response`) and writes nothing to the
//! device when the appliance's certificate fails a check; a re-run refuses
//! (`device_already_holds`) a certificate on the device that fails one. So
//! a run never writes what a later run would refuse.
//!
//! Hardware UUID (UUIDv8, name-based with SHA-256, RFC 9562 §B.2):
//! `h = SHA-256(NAMESPACE_BYTES ‖ UID)` with [`HW_UUID_NAMESPACE`] as 16
//! raw bytes and UID the MCU unique ID as read from the device; the UUID is
//! `h[0..16]` with the version nibble (`h[6] >> 4`) set to 8 and the
//! variant bits (`h[8] >> 6`) set to `0b10`.

use std::str::FromStr as _;

use der::asn1::Ia5String;
use der::{Decode as _, DecodePem as _, Encode as _};
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{DerSignature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use x509_cert::builder::RequestBuilder;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::name::Name;
use x509_cert::Certificate;

use crate::client::Client;
use crate::csr::{signed_request, RemoteP256};
use crate::device::{DeviceLink, DeviceStatus};
use crate::error::{Error, Result};
use crate::fsutil::check_serial;
use crate::record::ProvisioningRecord;

/// The namespace of hardware UUIDs derived from MCU unique IDs.
pub const HW_UUID_NAMESPACE: &str = "a7df5e21-b08c-4800-babf-125ed3212269";

/// The secret name of the PSK on the device.
pub const PSK_NAME: &str = "psk";

/// The hardware UUID of the MCU unique ID `uid` (lowercase, hyphenated).
pub fn hw_uuid(uid: &[u8]) -> String {
    let ns: Vec<u8> = HW_UUID_NAMESPACE
        .bytes()
        .filter(|b| *b != b'-')
        .collect::<Vec<u8>>()
        .chunks(2)
        .filter_map(|p| {
            std::str::from_utf8(p)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    let mut h = Sha256::new();
    h.update(&ns);
    h.update(uid);
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// What to do.
#[derive(Debug, Clone, Default)]
pub struct ProvisionOptions {
    /// The module serial.
    pub serial: String,
    /// Inject the device's PSK.
    pub psk: bool,
    /// The provisioning record to attach (none: no record is posted).
    pub record: Option<ProvisioningRecord>,
}

/// One step and what it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepOutcome {
    /// `uid`, `key`, `certificate`, `write`, `psk`, `lock`, `record`.
    pub step: &'static str,
    /// `done` (changed something now), `already` (found done), `skipped`.
    pub outcome: &'static str,
    /// Details for the operator.
    pub detail: String,
}

/// The summary of one provisioning.
#[derive(Debug, Clone, Serialize)]
pub struct ProvisionReport {
    /// Module serial.
    pub serial: String,
    /// MCU unique ID, hex.
    pub uid: String,
    /// The derived hardware UUID.
    pub hw_uuid: String,
    /// The certificate's serial number (hex).
    pub certificate_serial: String,
    /// SHA-256 of the device public key (SPKI DER), hex.
    pub public_key_sha256: String,
    /// Each step.
    pub steps: Vec<StepOutcome>,
    /// `true` when no step changed anything.
    pub unchanged: bool,
}

fn step(step: &'static str, outcome: &'static str, detail: impl Into<String>) -> StepOutcome {
    StepOutcome {
        step,
        outcome,
        detail: detail.into(),
    }
}

/// The steps, in the order they run.
pub const STEPS: [&str; 7] = [
    "uid",
    "key",
    "certificate",
    "write",
    "psk",
    "lock",
    "record",
];

/// Runs the whole flow (see the module documentation); `progress` hears
/// each step as it ends.
pub fn provision(
    device: &mut dyn DeviceLink,
    client: &Client,
    opts: &ProvisionOptions,
    progress: &mut dyn FnMut(&StepOutcome),
) -> Result<ProvisionReport> {
    let mut at = STEPS[0];
    provision_tracked(device, client, opts, progress, &mut at)
}

/// [`provision`], with `at` set to each step of [`STEPS`] as it starts:
/// after an error, the step that failed.
pub fn provision_tracked(
    device: &mut dyn DeviceLink,
    client: &Client,
    opts: &ProvisionOptions,
    progress: &mut dyn FnMut(&StepOutcome),
    at: &mut &'static str,
) -> Result<ProvisionReport> {
    *at = "uid";
    let serial = opts.serial.as_str();
    check_serial(serial)?;
    if let Some(r) = &opts.record {
        r.validate()?;
    }
    let mut steps = Vec::new();
    let mut note = |s: StepOutcome, steps: &mut Vec<StepOutcome>| {
        progress(&s);
        steps.push(s);
    };

    // 1. Identity.
    let uid = device.uid()?;
    if !(8..=32).contains(&uid.len()) {
        return Err(Error::DeviceRefused(format!(
            "the device's unique ID is {} bytes; expected 8-32",
            uid.len()
        )));
    }
    let uuid = hw_uuid(&uid);
    note(
        step("uid", "already", format!("{} → {uuid}", hex::encode(&uid))),
        &mut steps,
    );

    *at = "key";
    // 2. Key: generated on the device unless it has one.
    let status = device.status()?;
    let spki = match &status.public_key {
        Some(k) => {
            note(
                step("key", "already", "the device holds its key"),
                &mut steps,
            );
            k.clone()
        }
        None => {
            if status.locked {
                return Err(Error::ProvisionStopped(
                    "the device is locked and has no key; it cannot be provisioned".into(),
                ));
            }
            let k = device.generate_key()?;
            note(
                step("key", "done", "P-256 key generated on the device"),
                &mut steps,
            );
            k
        }
    };
    let public = VerifyingKey::from_public_key_der(&spki)
        .map_err(|e| Error::DeviceRefused(format!("the device's public key is not P-256: {e}")))?;
    let key_hash = hex::encode(Sha256::digest(&spki));

    *at = "certificate";
    // 3. Certificate: from the device if it holds one for this key and
    // module, else enrolled at the appliance and written.
    let status = device.status()?;
    let certificate_serial = match held_certificate(&status, &spki, serial, &uuid)? {
        Some(sn) => {
            note(
                step("certificate", "already", format!("on the device: {sn}")),
                &mut steps,
            );
            note(
                step("write", "already", "certificate and chain on the device"),
                &mut steps,
            );
            sn
        }
        None => {
            if status.locked {
                // It could never take the certificate: do not have one issued.
                return Err(Error::ProvisionStopped(format!(
                    "the device is locked with a key but no certificate; {serial} cannot be \
                     certified on it (nothing was asked of the appliance)"
                )));
            }
            let csr = device_csr(device, &public, serial, &uuid)?;
            let enrolled = client.enroll(serial, &uuid, &csr)?;
            let leaf = Certificate::from_pem(enrolled.certificate.trim().as_bytes())
                .map_err(|e| Error::InvalidResponse(format!("certificate: {e}")))?;
            let chain = parse_chain(&enrolled.chain)?;
            verify_chain(&leaf, &chain)?;
            let leaf_spki = leaf
                .tbs_certificate
                .subject_public_key_info
                .to_der()
                .map_err(|_| Error::Unreachable("re-encoding a decoded key"))?;
            if leaf_spki != spki {
                return Err(Error::InvalidResponse(
                    "the certificate does not certify the device's public key; nothing was \
                     written to the device"
                        .into(),
                ));
            }
            // What a re-run would refuse to find on the device is never
            // written to it.
            match names_module(&leaf, serial, &uuid) {
                Ok(()) => {}
                Err(Naming::Module(subject)) => {
                    return Err(Error::InvalidResponse(format!(
                        "the certificate names another module ({subject}), not {serial}; \
                         nothing was written to the device"
                    )))
                }
                Err(Naming::Uuid) => {
                    return Err(Error::InvalidResponse(format!(
                        "the certificate does not name hardware UUID {uuid} \
                         (subjectAltName URI:urn:uuid:{uuid}); nothing was written to the device"
                    )))
                }
            }
            let how = if enrolled.newly_issued {
                ("done", "issued")
            } else {
                ("already", "issued before, returned again")
            };
            note(
                step(
                    "certificate",
                    how.0,
                    format!("{} ({}), chain verified", enrolled.serial_number, how.1),
                ),
                &mut steps,
            );
            let leaf_der = leaf
                .to_der()
                .map_err(|_| Error::Unreachable("re-encoding a decoded certificate"))?;
            let chain_der = chain
                .iter()
                .map(|c| c.to_der())
                .collect::<der::Result<Vec<_>>>()
                .map_err(|_| Error::Unreachable("re-encoding a decoded certificate"))?;
            *at = "write";
            device.put_certificates(&leaf_der, &chain_der)?;
            if device.status()?.certificate.as_deref() != Some(&leaf_der[..]) {
                return Err(Error::DeviceRefused(
                    "the certificate read back from the device is not the one written".into(),
                ));
            }
            note(
                step(
                    "write",
                    "done",
                    format!(
                        "certificate and {} CA certificates written",
                        chain_der.len()
                    ),
                ),
                &mut steps,
            );
            enrolled.serial_number
        }
    };

    *at = "psk";
    // 4. PSK, unless the device holds one. On a fixture the line can
    // outlive the board: the device must still be the one certified above.
    let status = same_device(device, &uid, &spki)?;
    if !opts.psk {
        note(step("psk", "skipped", "not asked for (--psk)"), &mut steps);
    } else if status.secrets.iter().any(|s| s == PSK_NAME) {
        note(
            step("psk", "already", "the device holds its PSK"),
            &mut steps,
        );
    } else if status.locked {
        return Err(Error::ProvisionStopped(format!(
            "the device is locked without a PSK; {serial} cannot get one injected"
        )));
    } else {
        let psk = match client.psk(serial) {
            Ok(p) => p,
            Err(Error::Refused { code, .. }) if code == "psk_already_issued" => {
                return Err(Error::ProvisionStopped(format!(
                    "the appliance already issued the PSK of {serial} but the device does not \
                     hold it (lost in an earlier run); no secret was invented. An officer must \
                     allow a rotation (kmsctl escrow allow-rotation {serial} --purpose psk), \
                     then run provisioning again"
                )))
            }
            Err(e) => return Err(e),
        };
        if let Err(e) = device.put_secret(PSK_NAME, &psk) {
            // The write may have landed with only its answer lost: only a
            // fresh status that lacks the PSK makes it lost.
            return Err(match device.status() {
                Ok(s) if s.secrets.iter().any(|n| n == PSK_NAME) => {
                    Error::ProvisionStopped(format!(
                        "the device stored the PSK of {serial} but its answer was lost ({e}); run \
                     provisioning again (it will go on from the lock); do not ask for a rotation"
                    ))
                }
                Ok(_) => Error::ProvisionStopped(format!(
                    "the appliance issued the PSK of {serial} but the device did not store it \
                     ({e}); it is lost: an officer must allow a rotation (kmsctl escrow \
                     allow-rotation {serial} --purpose psk) before provisioning again"
                )),
                Err(_) => Error::ProvisionStopped(format!(
                    "the PSK of {serial} may or may not have been stored ({e}) and the device \
                     does not answer; run provisioning again before anyone allows a rotation"
                )),
            });
        }
        drop(psk);
        if !device.status()?.secrets.iter().any(|s| s == PSK_NAME) {
            return Err(Error::DeviceRefused(
                "the PSK is not listed on the device after being written".into(),
            ));
        }
        note(step("psk", "done", "PSK injected"), &mut steps);
    }

    *at = "lock";
    // 5. Lock.
    if same_device(device, &uid, &spki)?.locked {
        note(step("lock", "already", "the device is locked"), &mut steps);
    } else {
        device.lock()?;
        if !device.status()?.locked {
            return Err(Error::DeviceRefused(
                "the device does not read back as locked".into(),
            ));
        }
        note(step("lock", "done", "locked down"), &mut steps);
    }

    *at = "record";
    // 6. Provisioning record, unless an equal one is attached.
    match &opts.record {
        None => note(step("record", "skipped", "no --record given"), &mut steps),
        Some(record) => {
            let device_json = client.device(serial)?;
            let ours =
                serde_json::to_value(record).map_err(|e| Error::InvalidRecord(e.to_string()))?;
            let attached = device_json
                .get("records")
                .and_then(|r| r.as_array())
                .is_some_and(|rs| rs.iter().any(|r| same_record(r, &ours)));
            if attached {
                note(
                    step("record", "already", "an equal record is attached"),
                    &mut steps,
                );
            } else {
                client.record(serial, record)?;
                note(step("record", "done", "record attached"), &mut steps);
            }
        }
    }

    let unchanged = steps.iter().all(|s| s.outcome != "done");
    Ok(ProvisionReport {
        serial: serial.to_owned(),
        uid: hex::encode(&uid),
        hw_uuid: uuid,
        certificate_serial,
        public_key_sha256: key_hash,
        steps,
        unchanged,
    })
}

/// A stored record (which may carry more, e.g. a time) holds every field
/// of ours with the same value.
fn same_record(stored: &serde_json::Value, ours: &serde_json::Value) -> bool {
    let stored = stored.get("record").unwrap_or(stored);
    let Some(ours) = ours.as_object() else {
        return false;
    };
    ours.iter().all(|(k, v)| {
        let theirs = stored.get(k);
        match v {
            serde_json::Value::Array(a) if a.is_empty() => {
                theirs.is_none_or(|t| t.as_array().is_some_and(|x| x.is_empty()))
            }
            _ => theirs == Some(v),
        }
    })
}

/// The certificate serial of the certificate the device holds, if it
/// certifies the device's key for this module; an error if it certifies
/// something else.
fn held_certificate(
    status: &DeviceStatus,
    spki: &[u8],
    serial: &str,
    uuid: &str,
) -> Result<Option<String>> {
    let Some(der_bytes) = &status.certificate else {
        return Ok(None);
    };
    let cert = Certificate::from_der(der_bytes)
        .map_err(|e| Error::DeviceRefused(format!("the device's certificate: {e}")))?;
    let key = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|_| Error::Unreachable("re-encoding a decoded key"))?;
    if key != spki {
        return Err(Error::DeviceHolds(
            "a certificate for another key; an engineer must inspect the device".into(),
        ));
    }
    match names_module(&cert, serial, uuid) {
        Ok(()) => {}
        Err(Naming::Module(subject)) => {
            return Err(Error::DeviceHolds(format!(
                "a certificate for another module ({subject}); check --serial"
            )))
        }
        Err(Naming::Uuid) => {
            return Err(Error::DeviceHolds(format!(
                "a certificate that does not name hardware UUID {uuid}"
            )))
        }
    }
    Ok(Some(hex::encode(
        cert.tbs_certificate.serial_number.as_bytes(),
    )))
}

/// How a certificate fails to name the module.
enum Naming {
    /// Its subject's serialNumber/CN is not the module serial (the subject).
    Module(String),
    /// Its subjectAltName lacks `URI:urn:uuid:<uuid>`.
    Uuid,
}

/// The checks a certificate must pass to be on the device, whether it was
/// found there (a re-run) or just enrolled (the first run): the subject's
/// serialNumber and CN (each one present, at least one) are the module
/// serial, and the subjectAltName names the hardware UUID. The key is
/// checked by the callers.
fn names_module(cert: &Certificate, serial: &str, uuid: &str) -> std::result::Result<(), Naming> {
    const SERIAL_NUMBER: der::oid::ObjectIdentifier =
        der::oid::ObjectIdentifier::new_unwrap("2.5.4.5");
    const CN: der::oid::ObjectIdentifier = der::oid::ObjectIdentifier::new_unwrap("2.5.4.3");
    let subject = &cert.tbs_certificate.subject;
    let mut named = false;
    for atv in subject.0.iter().flat_map(|rdn| rdn.0.iter()) {
        if atv.oid != SERIAL_NUMBER && atv.oid != CN {
            continue;
        }
        if directory_string(&atv.value).as_deref() != Some(serial) {
            return Err(Naming::Module(subject.to_string()));
        }
        named = true;
    }
    if !named {
        return Err(Naming::Module(subject.to_string()));
    }
    let urn = format!("urn:uuid:{uuid}");
    let names_uuid = cert
        .tbs_certificate
        .get::<SubjectAltName>()
        .ok()
        .flatten()
        .is_some_and(|(_, san)| {
            san.0.iter().any(|n| {
                matches!(n, GeneralName::UniformResourceIdentifier(u)
                    if u.as_str().eq_ignore_ascii_case(&urn))
            })
        });
    if names_uuid {
        Ok(())
    } else {
        Err(Naming::Uuid)
    }
}

/// A UTF8String, PrintableString or IA5String attribute value.
fn directory_string(value: &der::Any) -> Option<String> {
    use der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
    value
        .decode_as::<Utf8StringRef<'_>>()
        .map(|s| s.as_str().to_owned())
        .or_else(|_| {
            value
                .decode_as::<PrintableStringRef<'_>>()
                .map(|s| s.as_str().to_owned())
        })
        .or_else(|_| {
            value
                .decode_as::<Ia5StringRef<'_>>()
                .map(|s| s.as_str().to_owned())
        })
        .ok()
}

/// The CSR: subject serialNumber and CN = module serial, SAN
/// `URI:urn:uuid:<uuid>`, the device's key, signed by the device.
fn device_csr(
    device: &mut dyn DeviceLink,
    public: &VerifyingKey,
    serial: &str,
    uuid: &str,
) -> Result<String> {
    // RFC 4514 lists the last RDN first: this encodes serialNumber, then CN.
    let subject = Name::from_str(&format!("CN={serial},serialNumber={serial}"))
        .map_err(|e| Error::KeyGeneration(format!("subject: {e}")))?;
    let signer = RemoteP256(*public);
    let mut builder = RequestBuilder::new(subject, &signer)
        .map_err(|e| Error::KeyGeneration(format!("CSR: {e}")))?;
    let uri = Ia5String::new(&format!("urn:uuid:{uuid}"))
        .map_err(|e| Error::KeyGeneration(format!("SAN: {e}")))?;
    builder
        .add_extension(&SubjectAltName(vec![
            GeneralName::UniformResourceIdentifier(uri),
        ]))
        .map_err(|e| Error::KeyGeneration(format!("SAN: {e}")))?;
    signed_request(builder, public, |info| device.sign(info))
}

fn parse_chain(pem: &str) -> Result<Vec<Certificate>> {
    let chain = Certificate::load_pem_chain(pem.as_bytes())
        .map_err(|e| Error::InvalidResponse(format!("chain is not PEM X.509: {e}")))?;
    if chain.is_empty() {
        return Err(Error::InvalidResponse(
            "the chain holds no certificate".into(),
        ));
    }
    Ok(chain)
}

/// Each certificate signed by the next (ECDSA P-256 with SHA-256), names
/// chained, the last self-signed.
fn verify_chain(leaf: &Certificate, chain: &[Certificate]) -> Result<()> {
    let mut child = leaf;
    for (i, issuer) in chain.iter().enumerate() {
        verify_signed_by(child, issuer, i)?;
        child = issuer;
    }
    verify_signed_by(child, child, chain.len())
}

fn verify_signed_by(child: &Certificate, issuer: &Certificate, i: usize) -> Result<()> {
    let bad = |m: String| Error::InvalidResponse(format!("chain certificate {i}: {m}"));
    if child.tbs_certificate.issuer != issuer.tbs_certificate.subject {
        return Err(bad(
            "its issuer is not the next certificate's subject".into()
        ));
    }
    if child.signature_algorithm.oid != const_oid_ecdsa_sha256() {
        return Err(bad("not signed with ecdsa-with-SHA256".into()));
    }
    let spki = issuer
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|_| Error::Unreachable("re-encoding a decoded key"))?;
    let key = VerifyingKey::from_public_key_der(&spki)
        .map_err(|e| bad(format!("issuer key is not P-256: {e}")))?;
    let tbs = child
        .tbs_certificate
        .to_der()
        .map_err(|_| Error::Unreachable("re-encoding a decoded certificate"))?;
    let sig = DerSignature::try_from(child.signature.raw_bytes())
        .map_err(|e| bad(format!("signature: {e}")))?;
    key.verify(&tbs, &sig)
        .map_err(|_| bad("the signature does not verify".into()))
}

fn const_oid_ecdsa_sha256() -> der::oid::ObjectIdentifier {
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2")
}

/// The device's status, once it is checked to still be the device this run
/// started with (same UID, same identity key).
fn same_device(device: &mut dyn DeviceLink, uid: &[u8], spki: &[u8]) -> Result<DeviceStatus> {
    if device.uid()? != uid {
        return Err(Error::DeviceRefused(
            "another device is on the line now (its UID changed); nothing more was written".into(),
        ));
    }
    let status = device.status()?;
    if status.public_key.as_deref() != Some(spki) {
        return Err(Error::DeviceRefused(
            "the device's identity key changed during provisioning; nothing more was written"
                .into(),
        ));
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_formula() {
        let u = hw_uuid(b"\x01\x02\x03\x04\x05\x06\x07\x08");
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "8");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        assert_eq!(u, hw_uuid(b"\x01\x02\x03\x04\x05\x06\x07\x08"));
        assert_ne!(u, hw_uuid(b"\x01\x02\x03\x04\x05\x06\x07\x09"));
        // Independent computation of the formula.
        let mut h = Sha256::new();
        h.update(hex::decode(HW_UUID_NAMESPACE.replace('-', "")).unwrap());
        h.update(b"\x01\x02\x03\x04\x05\x06\x07\x08");
        let d = h.finalize();
        assert_eq!(&u[..8], &hex::encode(&d[..4]));
    }
}
