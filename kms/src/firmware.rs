//! Firmware signing: keys per product line in the token, signing requests
//! approved M-of-N by firmware signers, anti-rollback, and the signed
//! manifest (`firmware` crate layout).
//!
//! A request names the product, the version, the security version and the
//! image's SHA-256 or SHA-512 (the service never sees the image). It is
//! checked when it is made and again when its last approval arrives:
//! a security version below the highest already signed for the product is
//! refused (`security_version_rollback`), and a version already signed is
//! signed again only for the same digest and security version
//! (`firmware_version_conflict`). The manifest is signed by the product's
//! newest key in the token, verified with its public key, recorded in the
//! audit log (with the manifest itself: not a secret) and committed with
//! the product's release state in one transaction.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use store::{Store, Tree, Write};

use crate::appliance::Appliance;
use crate::approvals::ApprovalRequest;
use crate::auditing;
use crate::error::{Error, Result};
use crate::policy::{now, rfc3339, Caller};
use crate::token::{KeyPairKind, TokenSigner};

/// Operation name of a firmware key's creation.
pub const KEY_OP: &str = "firmware.key.create";
/// Operation name of a signing request.
pub const REQUEST_OP: &str = "firmware.sign.request";
/// Operation name of a signature made (after the quorum).
pub const SIGN_OP: &str = "firmware.sign";

/// A firmware signing key of a product line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareKey {
    /// Product line.
    pub product: String,
    /// SHA-256 of the raw public key, hex (the manifest's key id).
    pub key_id: String,
    /// `ed25519` or `ecdsa-p256-sha256`.
    pub algorithm: String,
    /// Token label of the key pair.
    pub label: String,
    /// SubjectPublicKeyInfo PEM.
    pub public_key_pem: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Who made it.
    pub created_by: String,
}

/// `POST /v1/firmware/sign` and `kmsctl firmware sign`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    /// Product line.
    pub product: String,
    /// Version text (1–64 printable ASCII).
    pub version: String,
    /// Anti-rollback counter.
    pub security_version: u32,
    /// SHA-256 of the image, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// SHA-512 of the image, hex (instead of `sha256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha512: Option<String>,
    /// `sha256` is the digest MCUboot's imgtool asks to have signed
    /// (`--vector-to-sign digest`): also sign it as MCUboot checks it (pure
    /// Ed25519 over the 32 bytes). Ed25519 product keys only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mcuboot: bool,
}

/// One signed release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Anti-rollback counter.
    pub security_version: u32,
    /// `sha256` or `sha512`.
    pub digest_algorithm: String,
    /// Image digest, hex.
    pub digest: String,
    /// SHA-256 of the signed manifest, hex.
    pub manifest_sha256: String,
    /// Unix seconds.
    pub signed_at: i64,
}

/// A product's releases: the anti-rollback state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Releases {
    /// The highest security version signed.
    pub highest: u32,
    /// By version.
    pub versions: BTreeMap<String, Release>,
}

impl Releases {
    /// Refuse a rollback or a version signed before for something else.
    fn admit(
        &self,
        product: &str,
        version: &str,
        sv: u32,
        algorithm: &str,
        digest: &str,
    ) -> Result<()> {
        if let Some(r) = self.versions.get(version) {
            if r.security_version != sv || r.digest_algorithm != algorithm || r.digest != digest {
                return Err(Error::FirmwareVersionConflict {
                    product: product.into(),
                    version: version.into(),
                });
            }
            return Ok(()); // the same release, signed again
        }
        if sv < self.highest {
            return Err(Error::SecurityVersionRollback {
                product: product.into(),
                asked: sv,
                highest: self.highest,
            });
        }
        Ok(())
    }

    fn with(&self, version: &str, release: Release) -> Self {
        let mut next = self.clone();
        next.highest = next.highest.max(release.security_version);
        next.versions.insert(version.into(), release);
        next
    }
}

fn release_key(product: &str) -> Vec<u8> {
    format!("release/{product}").into_bytes()
}

fn key_prefix(product: &str) -> Vec<u8> {
    format!("key/{product}/").into_bytes()
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|_| Error::Unreachable("firmware record to JSON"))
}

impl SignRequest {
    /// The request checked: product and version as the manifest takes
    /// them, exactly one digest of the right length.
    fn digest(&self) -> Result<(firmware::DigestAlgorithm, Vec<u8>)> {
        let (alg, text) = match (&self.sha256, &self.sha512) {
            (Some(d), None) => (firmware::DigestAlgorithm::Sha256, d),
            (None, Some(d)) => (firmware::DigestAlgorithm::Sha512, d),
            _ => {
                return Err(Error::MalformedRequest(
                    "give exactly one of sha256 and sha512 (the image digest, hex)".into(),
                ))
            }
        };
        let digest = hex::decode(text)
            .map_err(|_| Error::MalformedRequest(format!("{} is not hex", alg.as_str())))?;
        // The manifest's own checks (product, version, digest length).
        firmware::Manifest {
            product: self.product.clone(),
            version: self.version.clone(),
            security_version: self.security_version,
            digest_algorithm: alg,
            digest: digest.clone(),
            key_id: [0; 32],
            signature_algorithm: firmware::SignatureAlgorithm::Ed25519,
            signing_time: 0,
        }
        .validate()?;
        Ok((alg, digest))
    }
}

/// A signing request that passed the checks, with what signing it needs.
struct Admitted {
    key: FirmwareKey,
    digest_algorithm: firmware::DigestAlgorithm,
    digest: Vec<u8>,
    releases: Releases,
    /// The stored release state, for the compare-and-swap.
    stored: Option<Vec<u8>>,
}

impl Appliance {
    /// Make a firmware signing key for `product` in the token (officers).
    pub fn firmware_key_create(
        &self,
        caller: &Caller,
        product: &str,
        algorithm: &str,
    ) -> Result<FirmwareKey> {
        let checked = self
            .policy
            .check(caller, &policies::Action::Admin)
            .and_then(|()| {
                SignRequest {
                    product: product.into(),
                    version: "0".into(),
                    security_version: 0,
                    sha256: Some("00".repeat(32)),
                    sha512: None,
                    mcuboot: false,
                }
                .digest()?;
                match algorithm {
                    "ed25519" => Ok((KeyPairKind::Ed25519, firmware::SignatureAlgorithm::Ed25519)),
                    "p256" | "ecdsa-p256" | "ecdsa-p256-sha256" => Ok((
                        KeyPairKind::EcP256,
                        firmware::SignatureAlgorithm::EcdsaP256Sha256,
                    )),
                    other => Err(Error::MalformedRequest(format!(
                        "algorithm {:?} is not ed25519 or p256",
                        other.chars().take(32).collect::<String>()
                    ))),
                }
            });
        let (kind, alg) = match checked {
            Ok(v) => v,
            Err(e) => return self.refuse(caller, KEY_OP, product, e),
        };
        let created_at = now();
        let label = format!(
            "fw-{product}-{created_at}-{}",
            hex::encode(self.token.random(2)?)
        );
        self.token.generate_key_pair(kind, &label)?;
        let public = self.token.public_key(&label)?;
        let key = firmware::PublicKey::from_raw(alg, &public.raw)?;
        let record = FirmwareKey {
            product: product.into(),
            key_id: hex::encode(key.key_id()),
            algorithm: alg.as_str().into(),
            label,
            public_key_pem: key.to_pem()?,
            created_at,
            created_by: caller.name().into(),
        };
        auditing::record(
            &self.audit,
            caller.name(),
            KEY_OP,
            product,
            "ok",
            json!({ "key": record }),
        )?;
        store_key(self.store.as_ref(), &record)?;
        Ok(record)
    }

    /// The firmware keys of `product` (every product when `None`), oldest first.
    pub fn firmware_keys(&self, product: Option<&str>) -> Result<Vec<FirmwareKey>> {
        let prefix = product.map_or_else(|| b"key/".to_vec(), key_prefix);
        let mut keys = Vec::new();
        for (_, v) in crate::storage::scan_prefix(self.store.as_ref(), Tree::Firmware, &prefix)? {
            keys.push(
                serde_json::from_slice::<FirmwareKey>(&v).map_err(|e| {
                    Error::Store(store::Error::Corrupt(format!("firmware key: {e}")))
                })?,
            );
        }
        keys.sort_by_key(|k| k.created_at);
        Ok(keys)
    }

    fn releases(&self, product: &str) -> Result<(Releases, Option<Vec<u8>>)> {
        let stored = self.store.get(Tree::Firmware, &release_key(product))?;
        let releases = match &stored {
            Some(v) => serde_json::from_slice(v).map_err(|e| {
                Error::Store(store::Error::Corrupt(format!("releases of {product}: {e}")))
            })?,
            None => Releases::default(),
        };
        Ok((releases, stored))
    }

    /// Ask for a firmware signature (firmware signers): checked now, then
    /// an approval request the policy's quorum of other firmware signers
    /// must approve (`kmsctl firmware approve`).
    pub fn firmware_sign(&self, caller: &Caller, req: &SignRequest) -> Result<ApprovalRequest> {
        let checked = self
            .policy
            .check(caller, &policies::Action::FirmwareSign)
            .and_then(|()| crate::approvals::named_requester(caller))
            .and_then(|()| self.check_sign(req).map(|_| ()));
        if let Err(e) = checked {
            return self.refuse(caller, REQUEST_OP, &req.product, e);
        }
        let payload =
            serde_json::to_value(req).map_err(|_| Error::Unreachable("request to JSON"))?;
        let opened = self.open_request(
            caller,
            policies::ApprovalKind::FirmwareSigning,
            payload,
            (REQUEST_OP, &req.product, json!({ "request": req })),
        )?;
        Ok(opened)
    }

    /// The product's key, the digest and the release state, or the refusal.
    fn check_sign(&self, req: &SignRequest) -> Result<Admitted> {
        let (digest_algorithm, digest) = req.digest()?;
        let key = self
            .firmware_keys(Some(&req.product))?
            .pop()
            .ok_or_else(|| Error::FirmwareProductUnknown(req.product.clone()))?;
        if req.mcuboot
            && (digest_algorithm != firmware::DigestAlgorithm::Sha256
                || key.algorithm != firmware::SignatureAlgorithm::Ed25519.as_str())
        {
            return Err(Error::MalformedRequest(format!(
                "an MCUboot signature needs the image's sha256 and an Ed25519 product key ({} has {})",
                req.product, key.algorithm
            )));
        }
        let (releases, stored) = self.releases(&req.product)?;
        releases.admit(
            &req.product,
            &req.version,
            req.security_version,
            digest_algorithm.as_str(),
            &hex::encode(&digest),
        )?;
        Ok(Admitted {
            key,
            digest_algorithm,
            digest,
            releases,
            stored,
        })
    }

    /// Sign an approved request: checked again (another release may have
    /// been signed meanwhile), signed in the token, verified, journaled.
    /// The result and the release-state write.
    pub(crate) fn sign_approved(&self, approved: &ApprovalRequest) -> Result<(Value, Vec<Write>)> {
        let req: SignRequest = serde_json::from_value(approved.payload.clone())
            .map_err(|e| Error::Store(store::Error::Corrupt(format!("signing request: {e}"))))?;
        let Admitted {
            key,
            digest_algorithm,
            digest,
            releases,
            stored,
        } = self.check_sign(&req)?;
        let signer = TokenSigner::new(self.token.clone(), &key.label)?;
        let public = ca::Signer::public_key_raw(&signer).to_vec();
        let alg = match ca::Signer::algorithm(&signer) {
            ca::SignatureAlgorithm::Ed25519 => firmware::SignatureAlgorithm::Ed25519,
            _ => firmware::SignatureAlgorithm::EcdsaP256Sha256,
        };
        let public_key = firmware::PublicKey::from_raw(alg, &public)?;
        let manifest = firmware::Manifest {
            product: req.product.clone(),
            version: req.version.clone(),
            security_version: req.security_version,
            digest_algorithm,
            digest: digest.clone(),
            key_id: public_key.key_id(),
            signature_algorithm: alg,
            signing_time: u64::try_from(now()).unwrap_or(0),
        };
        let tbs = manifest.to_be_signed()?;
        let raw = token_sign(&signer, &tbs)?;
        let signature = match alg {
            firmware::SignatureAlgorithm::Ed25519 => raw,
            _ => p256::ecdsa::Signature::from_der(&raw)
                .map_err(|_| Error::TokenProtocol("ECDSA signature is not DER".into()))?
                .to_bytes()
                .to_vec(),
        };
        let bytes = manifest.encode(&signature)?;
        // Trust nothing the token returned until it verifies.
        let signed = firmware::verify_image(&bytes, &digest, &public_key, req.security_version)?;
        let manifest_sha256 = hex::encode(Sha256::digest(&bytes));
        // imgtool's digest, signed as MCUboot verifies it. A 32-byte message
        // can never be a manifest (those start with the magic and are longer),
        // so the one key serves both without one standing for the other.
        let mcuboot_signature = if req.mcuboot {
            let raw = token_sign(&signer, &digest)?;
            let sig: [u8; 64] = raw
                .as_slice()
                .try_into()
                .map_err(|_| Error::TokenProtocol("Ed25519 signature is not 64 bytes".into()))?;
            firmware::verify_message(&public_key, &digest, &sig)?;
            Some(base64::engine::general_purpose::STANDARD.encode(sig))
        } else {
            None
        };
        let release = Release {
            security_version: req.security_version,
            digest_algorithm: digest_algorithm.as_str().into(),
            digest: hex::encode(&digest),
            manifest_sha256: manifest_sha256.clone(),
            signed_at: now(),
        };
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        auditing::record(
            &self.audit,
            "kmsd",
            SIGN_OP,
            &req.product,
            "ok",
            json!({
                "request": approved.id, "version": req.version, "release": release,
                "key_id": key.key_id, "manifest": b64, "mcuboot_signature": mcuboot_signature,
                "approved_by": approved.approvals.iter().map(|a| &a.by).collect::<Vec<_>>(),
            }),
        )?;
        let write = Write::Replace {
            tree: Tree::Firmware,
            key: release_key(&req.product),
            expected: stored,
            value: to_json(&releases.with(&req.version, release))?,
        };
        let result = json!({
            "manifest": b64,
            "manifest_sha256": manifest_sha256,
            "manifest_json": firmware::ManifestJson::from(&signed),
            "key_id": key.key_id,
            "signed_at": rfc3339(now()),
            "mcuboot_signature": mcuboot_signature,
        });
        Ok((result, vec![write]))
    }
}

/// A signature by the token key, its error as the token's own.
fn token_sign(signer: &TokenSigner, message: &[u8]) -> Result<Vec<u8>> {
    ca::Signer::sign(signer, message).map_err(|e| {
        e.downcast::<Error>()
            .map(|b| *b)
            .unwrap_or_else(|e| Error::TokenProtocol(e.to_string()))
    })
}

fn store_key(store: &dyn store::Store, key: &FirmwareKey) -> Result<()> {
    let write = Write::Insert {
        tree: Tree::Firmware,
        key: [key_prefix(&key.product), key.key_id.as_bytes().to_vec()].concat(),
        value: to_json(key)?,
    };
    store.commit(&[write])?.map_err(|_| {
        Error::Store(store::Error::Corrupt(format!(
            "firmware key {} stored twice",
            key.key_id
        )))
    })
}

/// Re-apply a `firmware.key.create` or `firmware.sign` record from the log
/// whose effect the store lacks (start-up reconciliation and rebuild): the
/// anti-rollback state must survive a crash between record and commit.
pub fn restore(store: &dyn store::Store, op: &str, product: &str, details: &Value) -> Result<bool> {
    match op {
        KEY_OP => {
            let Ok(key) = serde_json::from_value::<FirmwareKey>(details["key"].clone()) else {
                return Ok(false);
            };
            let k = [key_prefix(&key.product), key.key_id.as_bytes().to_vec()].concat();
            if store.get(Tree::Firmware, &k)?.is_some() {
                return Ok(false);
            }
            store_key(store, &key).map(|()| true)
        }
        SIGN_OP => {
            let (Some(version), Ok(release)) = (
                details["version"].as_str(),
                serde_json::from_value::<Release>(details["release"].clone()),
            ) else {
                return Ok(false);
            };
            for _ in 0..16 {
                let old = store.get(Tree::Firmware, &release_key(product))?;
                let releases: Releases = match &old {
                    Some(v) => serde_json::from_slice(v).map_err(|e| {
                        Error::Store(store::Error::Corrupt(format!("releases: {e}")))
                    })?,
                    None => Releases::default(),
                };
                if releases.versions.get(version) == Some(&release) {
                    return Ok(false);
                }
                let next = releases.with(version, release.clone());
                let write = Write::Replace {
                    tree: Tree::Firmware,
                    key: release_key(product),
                    expected: old,
                    value: to_json(&next)?,
                };
                if store.commit(&[write])?.is_ok() {
                    return Ok(true);
                }
            }
            Err(Error::Store(store::Error::Corrupt(format!(
                "releases of {product} keep changing under us"
            ))))
        }
        _ => Ok(false),
    }
}
