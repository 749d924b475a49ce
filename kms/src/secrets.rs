//! Device secrets and their escrow: PSKs and AES-256 keys from the token
//! RNG, key pairs for modules without a secure element, all kept only
//! wrapped under the escrow KEK (an AES-256 key in the token, AES-GCM with
//! the device serial and purpose as associated data); M-of-N recovery
//! sealed to an officer's P-256 key; KEK rotation.
//!
//! A secret goes to its station once. The second request for the same
//! device and purpose is refused (`psk_already_issued`,
//! `secret_already_issued`) until an officer allows one rotation. The
//! record (`Tree::Escrow`, `<serial>/<purpose>`) holds the wrapped blob,
//! the KEK version and a fingerprint; the audit record holds the
//! fingerprint only. Plaintext lives in `Zeroizing` buffers and, for the
//! HTTP answer, in a body that zeroizes itself once written.
//!
//! KEK versions: `escrow-kek-<n>` on the token; `Tree::Counters` keeps the
//! current version and, during a rotation, the next one. New secrets are
//! sealed under the next version as soon as a rotation starts, so the
//! rotation's scan misses nothing; the old KEK is destroyed only after every
//! blob opens under the new one.

use escrow::{EscrowRecord, KeyWrapper, SecretKind};
use serde_json::{json, Value};
use store::{Store, Tree, Write};
use zeroize::Zeroizing;

use crate::appliance::Appliance;
use crate::approvals::ApprovalRequest;
use crate::auditing;
use crate::error::{Error, Result};
use crate::policy::{now, Caller};
use crate::token::{AesUsage, Extractable, KeyClass, Token, TokenKeyWrapper};

/// Operation name of a secret handed to a station.
pub const ISSUE_OP: &str = "secret.issue";
/// Operation name of an officer's permission to rotate a secret.
pub const ALLOW_ROTATION_OP: &str = "secret.allow_rotation";
/// Operation name of a recovery request.
pub const RECOVERY_OP: &str = "escrow.recovery.request";
/// Operation name of a recovered secret sealed to its recipient.
pub const RECOVERED_OP: &str = "escrow.recover";
/// Operation name of a KEK rotation step.
pub const ROTATE_OP: &str = "escrow.kek.rotate";

const CURRENT: &[u8] = b"escrow_kek/current";
const NEXT: &[u8] = b"escrow_kek/next";

/// Token label of KEK version `v`.
pub fn kek_label(v: u32) -> String {
    format!("escrow-kek-{v}")
}

fn record_key(serial: &str, purpose: &str) -> Vec<u8> {
    format!("{serial}/{purpose}").into_bytes()
}

fn read_u32(store: &dyn Store, key: &[u8]) -> Result<(Option<Vec<u8>>, u32)> {
    let old = store.get(Tree::Counters, key)?;
    let n = match old.as_deref().map(std::str::from_utf8) {
        None => 0,
        Some(Ok(t)) => t
            .parse()
            .map_err(|_| Error::Store(store::Error::Corrupt(format!("KEK version {t:?}"))))?,
        Some(Err(_)) => {
            return Err(Error::Store(store::Error::Corrupt(
                "KEK version is not UTF-8".into(),
            )))
        }
    };
    Ok((old, n))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|_| Error::Unreachable("escrow record to JSON"))
}

/// The KEK versions: (current, next during a rotation).
pub fn kek_versions(store: &dyn Store) -> Result<(u32, Option<u32>)> {
    let (_, current) = read_u32(store, CURRENT)?;
    let (_, next) = read_u32(store, NEXT)?;
    Ok((current, (next > current).then_some(next)))
}

/// Make KEK version 1 when there is none yet (the first start after the
/// ceremony, or an appliance from before escrow). Idempotent.
pub fn ensure_kek(token: &Token, store: &dyn Store, log: &audit::Log, actor: &str) -> Result<u32> {
    let (old, current) = read_u32(store, CURRENT)?;
    if current > 0 {
        return Ok(current);
    }
    match token.generate_aes_key(AesUsage::Encrypt, Extractable::Never, &kek_label(1)) {
        Ok(_) | Err(Error::KeyExists { .. }) => {}
        Err(e) => return Err(e),
    }
    auditing::record(
        log,
        actor,
        "escrow.kek.create",
        &kek_label(1),
        "ok",
        json!({ "version": 1 }),
    )?;
    let write = Write::Replace {
        tree: Tree::Counters,
        key: CURRENT.to_vec(),
        expected: old,
        value: b"1".to_vec(),
    };
    let _ = store.commit(&[write])?;
    Ok(1)
}

impl Appliance {
    fn wrapper(&self, version: u32) -> TokenKeyWrapper {
        TokenKeyWrapper::new(self.token.clone(), &kek_label(version), version)
    }

    /// The KEK new secrets are sealed under (the next one during a rotation).
    fn sealing_wrapper(&self) -> Result<TokenKeyWrapper> {
        let (current, next) = kek_versions(self.store.as_ref())?;
        Ok(self.wrapper(next.unwrap_or(current)))
    }

    fn escrow_record(
        &self,
        serial: &str,
        purpose: &str,
    ) -> Result<Option<(EscrowRecord, Vec<u8>)>> {
        self.store
            .get(Tree::Escrow, &record_key(serial, purpose))?
            .map(|v| {
                let r = serde_json::from_slice(&v).map_err(|e| {
                    Error::Store(store::Error::Corrupt(format!("escrow record: {e}")))
                })?;
                Ok((r, v))
            })
            .transpose()
    }

    /// Check a station may have `purpose` for `serial` now: its rules for
    /// the device, the device its own, the purpose its profile's, not
    /// issued before unless an officer allowed a rotation.
    fn admit_secret(
        &self,
        caller: &Caller,
        serial: &str,
        purpose: &str,
    ) -> Result<Option<Vec<u8>>> {
        self.policy.check(
            caller,
            &policies::Action::DeviceSecret {
                module_serial: serial,
            },
        )?;
        escrow::check_purpose(purpose)?;
        let device = self.owned_device(caller, serial)?;
        if !matches!(purpose, "psk" | "keypair") {
            let profile = self.ca.profile(device.module_type)?;
            if !profile.aes_keys.iter().any(|k| k == purpose) {
                return Err(Error::SecretPurposeUnknown {
                    module_type: device.module_type.as_str().into(),
                    purpose: purpose.into(),
                });
            }
        }
        match self.escrow_record(serial, purpose)? {
            Some((r, _)) if !r.rotation_allowed => Err(Error::SecretAlreadyIssued {
                serial: serial.into(),
                purpose: purpose.into(),
            }),
            Some((_, stored)) => Ok(Some(stored)),
            None => Ok(None),
        }
    }

    /// Seal `secret`, record it (fingerprint only), store it.
    fn escrow_secret(
        &self,
        caller: &Caller,
        (serial, purpose): (&str, &str),
        kind: SecretKind,
        secret: &[u8],
        previous: Option<Vec<u8>>,
        extra: Value,
    ) -> Result<EscrowRecord> {
        // Every failure leaves a record: before the "ok" record a refusal,
        // after it one saying the issuance did not take effect.
        let sealed = self.sealing_wrapper().and_then(|w| {
            Ok(EscrowRecord::seal(
                &w,
                serial,
                purpose,
                kind,
                secret,
                caller.name(),
                now(),
            )?)
        });
        let record = match sealed {
            Ok(r) => r,
            Err(e) => return self.refuse(caller, ISSUE_OP, serial, e),
        };
        let mut details = json!({
            "purpose": purpose, "fingerprint": record.fingerprint,
            "kek_version": record.blob.kek_version, "rotation": previous.is_some(),
        });
        if let (Some(d), Value::Object(e)) = (details.as_object_mut(), extra) {
            d.extend(e);
        }
        auditing::record(&self.audit, caller.name(), ISSUE_OP, serial, "ok", details)?;
        let write = Write::Replace {
            tree: Tree::Escrow,
            key: record_key(serial, purpose),
            expected: previous,
            value: to_json(&record)?,
        };
        let committed = match self.store.commit(&[write]) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_conflict)) => Err(Error::SecretAlreadyIssued {
                serial: serial.into(),
                purpose: purpose.into(),
            }),
            Err(e) => Err(e.into()),
        };
        match committed {
            Ok(()) => Ok(record),
            Err(e) => self.refuse(caller, ISSUE_OP, serial, e),
        }
    }

    /// A PSK (`purpose` `psk`) or a profile's AES-256 key for a device the
    /// station provisioned: 32 bytes from the token RNG, escrowed, returned
    /// once.
    pub fn issue_secret(
        &self,
        caller: &Caller,
        serial: &str,
        purpose: &str,
    ) -> Result<(Zeroizing<Vec<u8>>, EscrowRecord)> {
        let subject: String = serial.chars().take(64).collect();
        let _one_at_a_time = self.secret_stripes.lock(&record_key(serial, purpose));
        let previous = match self.admit_secret(caller, serial, purpose) {
            Ok(p) => p,
            Err(e) => return self.refuse(caller, ISSUE_OP, &subject, e),
        };
        let secret = match self.token.random(32) {
            Ok(s) => Zeroizing::new(s),
            Err(e) => return self.refuse(caller, ISSUE_OP, &subject, e),
        };
        let kind = if purpose == "psk" {
            SecretKind::Psk
        } else {
            SecretKind::AesKey
        };
        let record = self.escrow_secret(
            caller,
            (serial, purpose),
            kind,
            &secret,
            previous,
            json!({}),
        )?;
        Ok((secret, record))
    }

    /// One of the AES-256 keys the device's profile names (not `psk` or
    /// `keypair`, which have their own endpoints).
    pub fn issue_aes_key(
        &self,
        caller: &Caller,
        serial: &str,
        name: &str,
    ) -> Result<(Zeroizing<Vec<u8>>, EscrowRecord)> {
        if matches!(name, "psk" | "keypair") {
            let e = Error::SecretPurposeUnknown {
                module_type: "any".into(),
                purpose: name.into(),
            };
            return self.refuse(caller, ISSUE_OP, serial, e);
        }
        self.issue_secret(caller, serial, name)
    }

    /// A key pair for a module without a secure element: generated by the
    /// token, certified through the same path as a station's CSR (policy,
    /// quota, audit, CA), the private key escrowed and returned once as
    /// PKCS#8 PEM.
    pub fn issue_keypair(
        &self,
        caller: &Caller,
        serial: &str,
        hw_uuid: &str,
    ) -> Result<(Zeroizing<String>, crate::appliance::IssuedView)> {
        let subject: String = serial.chars().take(64).collect();
        let _one_at_a_time = self.secret_stripes.lock(&record_key(serial, "keypair"));
        let previous = match self
            .admit_secret(caller, serial, "keypair")
            .or_else(|e| match e {
                // A device not certified yet is the normal case here.
                Error::Ca(ca::Error::DeviceNotFound(_)) => self
                    .policy
                    .check(
                        caller,
                        &policies::Action::DeviceSecret {
                            module_serial: serial,
                        },
                    )
                    .map(|()| None),
                e => Err(e),
            }) {
            Ok(p) => p,
            Err(e) => return self.refuse(caller, ISSUE_OP, &subject, e),
        };
        let (scalar, _public) = match self.token.generate_device_p256() {
            Ok(k) => k,
            Err(e) => return self.refuse(caller, ISSUE_OP, &subject, e),
        };
        let key = p256::SecretKey::from_slice(&scalar).map_err(|_| {
            Error::TokenProtocol("the token's P-256 private value is invalid".into())
        })?;
        let pkcs8 = p256::pkcs8::EncodePrivateKey::to_pkcs8_der(&key)
            .map_err(|_| Error::Unreachable("PKCS#8 encoding"))?;
        let csr = device_csr(&key, serial)?;
        let issued = self.issue(caller, serial, hw_uuid, csr.as_bytes(), false)?;
        let pem = Zeroizing::new(
            pkcs8
                .to_pem("PRIVATE KEY", der::pem::LineEnding::LF)
                .map_err(|_| Error::Unreachable("PEM encoding"))?
                .to_string(),
        );
        self.escrow_secret(
            caller,
            (serial, "keypair"),
            SecretKind::PrivateKey,
            pkcs8.as_bytes(),
            previous,
            json!({ "certificate": issued.serial_number }),
        )?;
        Ok((pem, issued))
    }

    /// An officer lets a device get its `purpose` once more (a rotation).
    pub fn allow_rotation(&self, caller: &Caller, serial: &str, purpose: &str) -> Result<()> {
        let outcome = self
            .policy
            .check(caller, &policies::Action::Admin)
            .and_then(|()| {
                let (mut r, stored) =
                    self.escrow_record(serial, purpose)?
                        .ok_or_else(|| Error::EscrowNotFound {
                            serial: serial.into(),
                            purpose: purpose.into(),
                        })?;
                r.rotation_allowed = true;
                auditing::record(
                    &self.audit,
                    caller.name(),
                    ALLOW_ROTATION_OP,
                    serial,
                    "ok",
                    json!({ "purpose": purpose }),
                )?;
                let write = Write::Replace {
                    tree: Tree::Escrow,
                    key: record_key(serial, purpose),
                    expected: Some(stored),
                    value: to_json(&r)?,
                };
                self.store.commit(&[write])?.map_err(|_| {
                    Error::Store(store::Error::Corrupt("escrow record changed".into()))
                })
            });
        match outcome {
            Ok(()) => Ok(()),
            Err(e @ Error::Audit(_)) => Err(e),
            Err(e) => self.refuse(caller, ALLOW_ROTATION_OP, serial, e),
        }
    }

    /// Open a recovery request (officers): the secret will be sealed to
    /// `recipient_pem` (P-256 public key) once the policy's quorum of other
    /// officers approves.
    pub fn request_recovery(
        &self,
        caller: &Caller,
        serial: &str,
        purpose: &str,
        reason: &str,
        recipient_pem: &str,
    ) -> Result<ApprovalRequest> {
        let checked = self
            .policy
            .check(caller, &policies::Action::EscrowRequest)
            .and_then(|()| crate::approvals::named_requester(caller))
            .and_then(|()| {
                if reason.trim().is_empty()
                    || reason.len() > 512
                    || reason.contains(char::is_control)
                {
                    return Err(Error::MalformedRequest(
                        "reason: 1 to 512 characters, no control characters".into(),
                    ));
                }
                let (record, _) =
                    self.escrow_record(serial, purpose)?
                        .ok_or_else(|| Error::EscrowNotFound {
                            serial: serial.into(),
                            purpose: purpose.into(),
                        })?;
                let recipient = escrow::recipient_fingerprint(recipient_pem.as_bytes())?;
                Ok(json!({
                    "module_serial": serial, "purpose": purpose, "reason": reason,
                    "secret_fingerprint": record.fingerprint,
                    "recipient_public_key": recipient_pem, "recipient_fingerprint": recipient,
                }))
            });
        let payload = match checked {
            Ok(p) => p,
            Err(e) => return self.refuse(caller, RECOVERY_OP, serial, e),
        };
        let opened = self.open_request(
            caller,
            policies::ApprovalKind::EscrowRecovery,
            payload.clone(),
            (
                RECOVERY_OP,
                serial,
                json!({ "purpose": purpose, "reason": reason,
                        "recipient_fingerprint": payload["recipient_fingerprint"] }),
            ),
        )?;
        Ok(opened)
    }

    /// Carry out an approved recovery: open the blob in the token, seal it
    /// to the recipient, forget the plaintext.
    pub(crate) fn recover_approved(
        &self,
        approved: &ApprovalRequest,
    ) -> Result<(Value, Vec<Write>)> {
        let p = &approved.payload;
        let (serial, purpose, recipient) = (
            p["module_serial"].as_str().unwrap_or_default(),
            p["purpose"].as_str().unwrap_or_default(),
            p["recipient_public_key"].as_str().unwrap_or_default(),
        );
        let (record, _) =
            self.escrow_record(serial, purpose)?
                .ok_or_else(|| Error::EscrowNotFound {
                    serial: serial.into(),
                    purpose: purpose.into(),
                })?;
        let secret = record.open(&self.wrapper(record.blob.kek_version))?;
        let context = recovery_context(&approved.id, serial, purpose);
        let sealed = escrow::seal_to_recipient(recipient.as_bytes(), context.as_bytes(), &secret)?;
        drop(secret);
        use base64::Engine as _;
        let result = json!({
            "module_serial": serial, "purpose": purpose, "kind": record.kind,
            "secret_fingerprint": record.fingerprint,
            "recipient_fingerprint": p["recipient_fingerprint"],
            "context": context,
            "sealed": base64::engine::general_purpose::STANDARD.encode(&sealed),
        });
        auditing::record(
            &self.audit,
            "kmsd",
            RECOVERED_OP,
            serial,
            "ok",
            json!({ "request": approved.id, "purpose": purpose, "secret_fingerprint": record.fingerprint,
                    "recipient_fingerprint": p["recipient_fingerprint"],
                    "approved_by": approved.approvals.iter().map(|a| &a.by).collect::<Vec<_>>() }),
        )?;
        Ok((result, Vec::new()))
    }

    /// One step of a KEK rotation (officers): start it when none runs (a new
    /// KEK in the token; new secrets sealed under it from now on), re-wrap
    /// up to `limit` blobs still under an older KEK, and when none is left,
    /// make the new KEK current and destroy the old one. Resumable: a step
    /// after a crash carries on with the same new KEK.
    pub fn rotate_kek_step(
        &self,
        caller: &Caller,
        limit: usize,
        from: Option<&str>,
    ) -> Result<Value> {
        if let Err(e) = self.policy.check(caller, &policies::Action::Admin) {
            return self.refuse(caller, ROTATE_OP, "-", e);
        }
        let _one = self.approving.lock().unwrap_or_else(|p| p.into_inner());
        let store = self.store.as_ref();
        let (current, next) = kek_versions(store)?;
        let next = match next {
            Some(n) => n,
            None => {
                let n = current + 1;
                match self.token.generate_aes_key(
                    AesUsage::Encrypt,
                    Extractable::Never,
                    &kek_label(n),
                ) {
                    Ok(_) | Err(Error::KeyExists { .. }) => {}
                    Err(e) => return Err(e),
                }
                auditing::record(
                    &self.audit,
                    caller.name(),
                    ROTATE_OP,
                    &kek_label(n),
                    "ok",
                    json!({ "step": "start", "from": current, "to": n }),
                )?;
                let (old, _) = read_u32(store, NEXT)?;
                let _ = store.commit(&[Write::Replace {
                    tree: Tree::Counters,
                    key: NEXT.to_vec(),
                    expected: old,
                    value: n.to_string().into_bytes(),
                }])?;
                n
            }
        };
        let to = self.wrapper(next);
        let total = store.len(Tree::Escrow)?;
        // One pass over the tree, `limit` blobs a step, from the cursor the
        // previous step returned; blobs sealed meanwhile are under `next`
        // already, so the pass misses none.
        let mut cursor: Vec<u8> = from.map(|c| c.as_bytes().to_vec()).unwrap_or_default();
        let mut batch = Vec::new();
        let mut reached_end = false;
        const PAGE: usize = 1000;
        'pass: loop {
            let page = store.scan(Tree::Escrow, &cursor, PAGE)?;
            for (k, v) in &page {
                cursor = k.clone();
                cursor.push(0);
                let r: EscrowRecord = serde_json::from_slice(v).map_err(|e| {
                    Error::Store(store::Error::Corrupt(format!("escrow record: {e}")))
                })?;
                if r.blob.kek_version == next {
                    continue;
                }
                let from = self.wrapper(r.blob.kek_version);
                let new = r.rewrap(&from as &dyn KeyWrapper, &to as &dyn KeyWrapper)?;
                batch.push(Write::Replace {
                    tree: Tree::Escrow,
                    key: k.clone(),
                    expected: Some(v.clone()),
                    value: to_json(&new)?,
                });
                if batch.len() >= limit.max(1) {
                    break 'pass;
                }
            }
            if page.len() < PAGE {
                reached_end = true;
                break;
            }
        }
        let rewrapped = batch.len();
        // One commit (one flush) for the step; a record changed meanwhile
        // (its secret rotated) fails the batch, so then each on its own.
        if store.commit(&batch)?.is_err() {
            for w in batch {
                let _ = store.commit(&[w])?;
            }
        }
        // At the end of the pass, every blob must be under `next`; one that
        // is not (changed while it was re-wrapped) starts another pass.
        let remaining = if reached_end {
            let mut old = 0usize;
            for (_, v) in store.scan(Tree::Escrow, &[], usize::MAX)? {
                let r: EscrowRecord = serde_json::from_slice(&v).map_err(|e| {
                    Error::Store(store::Error::Corrupt(format!("escrow record: {e}")))
                })?;
                old += usize::from(r.blob.kek_version != next);
            }
            old
        } else {
            usize::MAX
        };
        let next_cursor = match (reached_end, remaining) {
            (false, _) => Some(String::from_utf8_lossy(&cursor).into_owned()),
            _ => None,
        };
        let done = remaining == 0;
        if done {
            auditing::record(
                &self.audit,
                caller.name(),
                ROTATE_OP,
                &kek_label(next),
                "ok",
                json!({ "step": "finish", "from": current, "to": next, "blobs": total }),
            )?;
            let (old_cur, _) = read_u32(store, CURRENT)?;
            let (old_next, _) = read_u32(store, NEXT)?;
            store
                .commit(&[
                    Write::Replace {
                        tree: Tree::Counters,
                        key: CURRENT.to_vec(),
                        expected: old_cur,
                        value: next.to_string().into_bytes(),
                    },
                    Write::Replace {
                        tree: Tree::Counters,
                        key: NEXT.to_vec(),
                        expected: old_next,
                        value: b"0".to_vec(),
                    },
                ])?
                .map_err(|_| Error::Store(store::Error::Corrupt("KEK versions changed".into())))?;
            for old in 1..next {
                match self.token.destroy_key(&kek_label(old), KeyClass::Secret) {
                    Ok(()) | Err(Error::KeyNotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(
            json!({ "from": current, "to": next, "rewrapped": rewrapped, "blobs": total,
                   "cursor": next_cursor, "done": done }),
        )
    }
}

/// The context a recovered secret is sealed with (the recipient needs it).
pub fn recovery_context(id: &str, serial: &str, purpose: &str) -> String {
    format!("vbus-kms recovery {id} {serial} {purpose}")
}

/// A device key the appliance holds in memory for the moment of its CSR.
struct MemoryP256 {
    key: p256::ecdsa::SigningKey,
    public: Vec<u8>,
}

impl ca::Signer for MemoryP256 {
    fn algorithm(&self) -> ca::SignatureAlgorithm {
        ca::SignatureAlgorithm::EcdsaP256Sha256
    }
    fn public_key_raw(&self) -> &[u8] {
        &self.public
    }
    fn sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, ca::SignerError> {
        use p256::ecdsa::signature::Signer as _;
        let sig: p256::ecdsa::Signature = self.key.sign(message);
        Ok(sig.to_der().as_bytes().to_vec())
    }
}

/// A CSR (PEM) for a device key the appliance made: subject CN the module
/// serial, signed with the key (proof of possession, as a station's).
fn device_csr(key: &p256::SecretKey, serial: &str) -> Result<String> {
    let key = p256::ecdsa::SigningKey::from(key);
    let public = key
        .verifying_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec();
    let signer = MemoryP256 { key, public };
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, serial);
    let rcgen_signer = ca::RcgenSigner::new(&signer);
    p.serialize_request(&rcgen_signer)
        .and_then(|c| c.pem())
        .map_err(|e| Error::Ca(ca::Error::Encoding(e.to_string())))
}
