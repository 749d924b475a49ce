//! A device whose secure storage is a PKCS#11 token (a secure element or a
//! TPM behind a PKCS#11 module; SoftHSM2 in tests), addressed by an RFC 7512
//! URI:
//!
//! ```text
//! pkcs11:token=dev-0001?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/run/dev-pin
//! pkcs11:serial=1a2b3c4d5e6f7a8b;token=dev-0001?module-path=…&pin-value=1234
//! ```
//!
//! Path attributes: `token` (label), `serial` (token serial number),
//! `manufacturer`, `model`, `slot-id`; at least one must select the token.
//! Query attributes: `module-path` (required), and `pin-value` or
//! `pin-source` (a file whose first line is the PIN; `file:` prefix
//! accepted). The PIN is held in zeroizing memory and never logged; no
//! message quotes the query part of the URI.
//!
//! What the device holds, by object label:
//!
//! | object | class | label | CKA_ID |
//! | --- | --- | --- | --- |
//! | identity key pair | CKO_PRIVATE_KEY / CKO_PUBLIC_KEY, CKK_EC P-256 | `vbus-identity` | SHA-1 of the EC point (65 bytes) |
//! | device certificate | CKO_CERTIFICATE, CKC_X_509 | `vbus-identity` | the key's |
//! | chain (issuer first) | CKO_CERTIFICATE, CKC_X_509 | `vbus-ca-1`, `vbus-ca-2`, … | SHA-1 of the CA's public key bits |
//! | secrets | CKO_SECRET_KEY, CKK_GENERIC_SECRET | the name (`psk`) | the name |
//! | unique ID (optional, made at manufacture) | CKO_DATA | `vbus-uid` | — |
//! | lock marker | CKO_DATA, CKA_APPLICATION `vbus` | `vbus-locked` | — |
//!
//! The UID is the value of the `vbus-uid` data object when there is one,
//! else the bytes of the token's serial number (`CK_TOKEN_INFO.serialNumber`,
//! trailing blanks removed).

use std::fmt;
use std::path::{Path, PathBuf};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{
    Attribute, AttributeType, CertificateType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use der::{Decode as _, Encode as _};
use p256::pkcs8::EncodePublicKey as _;
use sha2::Digest as _;
use zeroize::{Zeroize as _, Zeroizing};

use super::{DeviceLink, DeviceStatus};
use crate::error::{Error, Result};

/// Label of the identity key pair and of the device certificate.
pub const IDENTITY_LABEL: &str = "vbus-identity";
/// Label prefix of the chain certificates (`vbus-ca-1` is the issuer).
pub const CA_LABEL_PREFIX: &str = "vbus-ca-";
/// Label of the optional data object holding the MCU unique ID.
pub const UID_LABEL: &str = "vbus-uid";
/// Label of the data object marking the device as locked.
pub const LOCK_LABEL: &str = "vbus-locked";
/// DER OID prime256v1, the `CKA_EC_PARAMS` of a P-256 key.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// CKA_ID given at generation, replaced by the SHA-1 of the point.
const PENDING_ID: &[u8] = b"vbus-identity";

/// Which token the URI selects, and how to reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Selector {
    token: Option<String>,
    serial: Option<String>,
    manufacturer: Option<String>,
    model: Option<String>,
    slot_id: Option<u64>,
}

/// A parsed device URI; the PIN stays out of `Debug`.
struct DeviceUri {
    selector: Selector,
    module: PathBuf,
    pin: Zeroizing<String>,
}

/// A device's secure storage on a PKCS#11 token.
pub struct Pkcs11Device {
    ctx: Pkcs11,
    selector: Selector,
    module: PathBuf,
    pin: AuthPin,
    session: Option<Session>,
    /// The identity key was seen on the device by this link: its
    /// disappearance means the device was disconnected or reset (some
    /// tokens report that as "no objects", not as an error).
    seen_key: bool,
    /// What the last [`DeviceLink::lock`] could set, for the operator.
    lock_notes: Vec<String>,
}

impl fmt::Debug for Pkcs11Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Device")
            .field("token", &self.describe())
            .field("module", &self.module)
            .field("pin", &"<redacted>")
            .finish()
    }
}

/// Percent-decodes an RFC 3986 component.
fn percent_decode(s: &str) -> Result<Zeroizing<Vec<u8>>> {
    let bytes = s.as_bytes();
    let mut out = Zeroizing::new(Vec::with_capacity(bytes.len()));
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        Error::DeviceUnreachable("device URI: bad percent-encoding".into())
                    })?;
                out.push(hex);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

fn decode_text(s: &str, what: &str) -> Result<String> {
    let raw = percent_decode(s)?;
    std::str::from_utf8(&raw)
        .map(str::to_owned)
        .map_err(|_| Error::DeviceUnreachable(format!("device URI: {what} is not UTF-8")))
}

impl DeviceUri {
    /// Parses `pkcs11:PATH?QUERY`. Messages never quote the query.
    fn parse(uri: &str) -> Result<DeviceUri> {
        let bad = |m: String| Error::DeviceUnreachable(format!("device URI: {m}"));
        let rest = uri
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("pkcs11:"))
            .and_then(|_| uri.get(7..))
            .ok_or_else(|| bad("does not start with pkcs11:".into()))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut selector = Selector::default();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (k, v) = attr
                .split_once('=')
                .ok_or_else(|| bad(format!("path attribute {attr:?} has no '='")))?;
            let v = decode_text(v, k)?;
            let slot = match k {
                "token" => &mut selector.token,
                "serial" => &mut selector.serial,
                "manufacturer" => &mut selector.manufacturer,
                "model" => &mut selector.model,
                "slot-id" => {
                    selector.slot_id = Some(
                        v.parse()
                            .map_err(|_| bad("slot-id is not a number".to_owned()))?,
                    );
                    continue;
                }
                // Object attributes do not select a device.
                "object"
                | "id"
                | "type"
                | "library-description"
                | "library-manufacturer"
                | "library-version"
                | "slot-description"
                | "slot-manufacturer" => continue,
                other => return Err(bad(format!("unknown path attribute {other:?}"))),
            };
            if slot.replace(v).is_some() {
                return Err(bad(format!("path attribute {k:?} given twice")));
            }
        }
        if selector == Selector::default() {
            return Err(bad(
                "no token selected: give token=LABEL (or serial=, slot-id=)".into(),
            ));
        }
        let mut module = None;
        let mut pin: Option<Zeroizing<String>> = None;
        for attr in query.split('&').filter(|a| !a.is_empty()) {
            let Some((k, v)) = attr.split_once('=') else {
                // Could be a mistyped PIN: never echoed.
                return Err(bad("a query attribute has no '='".into()));
            };
            match k {
                "module-path" => module = Some(PathBuf::from(decode_text(v, k)?)),
                "pin-value" => {
                    let raw = percent_decode(v)?;
                    let text = std::str::from_utf8(&raw)
                        .map_err(|_| bad("pin-value is not UTF-8".into()))?;
                    pin = Some(Zeroizing::new(text.to_owned()));
                }
                "pin-source" => {
                    let p = decode_text(v, k)?;
                    let p = p.strip_prefix("file:").unwrap_or(&p);
                    pin = Some(read_pin_file(Path::new(p))?);
                }
                "module-name" => {
                    return Err(bad("module-name is not supported: give module-path".into()))
                }
                other => {
                    return Err(bad(format!(
                        "unknown query attribute {:?}",
                        other.chars().take(32).collect::<String>()
                    )))
                }
            }
        }
        let module = module.ok_or_else(|| bad("module-path=… is required".into()))?;
        let pin = pin.ok_or_else(|| bad("pin-value=… or pin-source=FILE is required".into()))?;
        Ok(DeviceUri {
            selector,
            module,
            pin,
        })
    }
}

/// The first line of a PIN file.
fn read_pin_file(path: &Path) -> Result<Zeroizing<String>> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| Error::io("reading the PIN file", path, e))?,
    );
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        return Err(Error::DeviceUnreachable(format!(
            "PIN file {} is empty",
            path.display()
        )));
    }
    Ok(Zeroizing::new(line.to_owned()))
}

/// Is this return value "the device went away / is not there"?
fn is_gone(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::TokenNotPresent
            | RvError::TokenNotRecognized
            | RvError::DeviceRemoved
            | RvError::DeviceError
            | RvError::DeviceMemory
            | RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::SlotIdInvalid
            | RvError::CryptokiNotInitialized
            | RvError::UserNotLoggedIn
            | RvError::GeneralError
    )
}

impl Pkcs11Device {
    /// Opens the device the URI names: loads the module, finds the token,
    /// opens a read-write session and logs in.
    pub fn open(uri: &str) -> Result<Pkcs11Device> {
        let parsed = DeviceUri::parse(uri)?;
        let ctx = Pkcs11::new(&parsed.module).map_err(|e| {
            Error::DeviceUnreachable(format!(
                "cannot load the PKCS#11 module {}: {e}",
                parsed.module.display()
            ))
        })?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => {
                return Err(Error::DeviceUnreachable(format!(
                    "initialising {}: {e}",
                    parsed.module.display()
                )))
            }
        }
        let mut dev = Pkcs11Device {
            ctx,
            selector: parsed.selector,
            module: parsed.module,
            pin: AuthPin::from(parsed.pin.as_str().to_owned()),
            session: None,
            seen_key: false,
            lock_notes: Vec::new(),
        };
        dev.session()?;
        Ok(dev)
    }

    /// What the last lock could and could not set.
    pub fn lock_notes(&self) -> &[String] {
        &self.lock_notes
    }

    fn describe(&self) -> String {
        let s = &self.selector;
        let mut parts = Vec::new();
        if let Some(t) = &s.token {
            parts.push(format!("token {t:?}"));
        }
        if let Some(t) = &s.serial {
            parts.push(format!("serial {t:?}"));
        }
        if let Some(t) = &s.manufacturer {
            parts.push(format!("manufacturer {t:?}"));
        }
        if let Some(t) = &s.model {
            parts.push(format!("model {t:?}"));
        }
        if let Some(t) = s.slot_id {
            parts.push(format!("slot {t}"));
        }
        parts.join(", ")
    }

    /// Maps a PKCS#11 failure of `op`; a lost device also drops the session
    /// so that the next call looks for the token again.
    fn fail(&mut self, op: &str, e: CkError) -> Error {
        match e {
            CkError::Pkcs11(rv, _) if is_gone(rv) => {
                self.session = None;
                Error::DeviceUnreachable(format!(
                    "the device ({}) stopped answering during {op}: {rv}; check that it is \
                     connected and run provisioning again",
                    self.describe()
                ))
            }
            e => Error::DeviceRefused(format!("{op}: {e}")),
        }
    }

    fn find_slot(&self) -> Result<Slot> {
        let slots = self.ctx.get_slots_with_token().map_err(|e| {
            Error::DeviceUnreachable(format!(
                "listing the slots of {}: {e}",
                self.module.display()
            ))
        })?;
        let mut present = Vec::new();
        let s = &self.selector;
        for slot in slots {
            let Ok(info) = self.ctx.get_token_info(slot) else {
                continue;
            };
            let label = info.label().trim_end().to_owned();
            let ok = s.token.as_deref().is_none_or(|t| t == label)
                && s.serial
                    .as_deref()
                    .is_none_or(|t| t == info.serial_number().trim_end())
                && s.manufacturer
                    .as_deref()
                    .is_none_or(|t| t == info.manufacturer_id().trim_end())
                && s.model
                    .as_deref()
                    .is_none_or(|t| t == info.model().trim_end())
                && s.slot_id.is_none_or(|id| id == slot.id());
            if ok && info.token_initialized() {
                return Ok(slot);
            }
            present.push(label);
        }
        Err(Error::DeviceUnreachable(format!(
            "no device token with {} (tokens present: {}); is the device connected?",
            self.describe(),
            if present.is_empty() {
                "none".into()
            } else {
                present.join(", ")
            }
        )))
    }

    /// The logged-in read-write session, opened if needed.
    fn session(&mut self) -> Result<&Session> {
        if self.session.is_none() {
            let slot = self.find_slot()?;
            let session = self.ctx.open_rw_session(slot).map_err(|e| {
                Error::DeviceUnreachable(format!("opening a session on {}: {e}", self.describe()))
            })?;
            match session.login(UserType::User, Some(&self.pin)) {
                Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
                Err(CkError::Pkcs11(rv, _))
                    if matches!(
                        rv,
                        RvError::PinIncorrect
                            | RvError::PinInvalid
                            | RvError::PinLenRange
                            | RvError::PinLocked
                            | RvError::PinExpired
                    ) =>
                {
                    return Err(Error::DeviceUnreachable(format!(
                        "the device ({}) refused the PIN: {rv}",
                        self.describe()
                    )))
                }
                Err(e) => {
                    return Err(Error::DeviceUnreachable(format!(
                        "logging in to {}: {e}",
                        self.describe()
                    )))
                }
            }
            self.session = Some(session);
        }
        self.session
            .as_ref()
            .ok_or(Error::Unreachable("session just opened"))
    }

    /// Runs `f` on the session, mapping its PKCS#11 error.
    fn with<T>(
        &mut self,
        op: &str,
        f: impl FnOnce(&Session) -> cryptoki::error::Result<T>,
    ) -> Result<T> {
        let r = f(self.session()?);
        r.map_err(|e| self.fail(op, e))
    }

    fn find(&mut self, class: ObjectClass, label: &str) -> Result<Vec<ObjectHandle>> {
        let template = [
            Attribute::Class(class),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        self.with("looking for objects", |s| s.find_objects(&template))
    }

    fn find_one(&mut self, class: ObjectClass, label: &str) -> Result<Option<ObjectHandle>> {
        let found = self.find(class, label)?;
        if found.len() > 1 {
            return Err(Error::DeviceRefused(format!(
                "the device holds {} {class} objects labelled {label:?}; expected at most one",
                found.len()
            )));
        }
        Ok(found.first().copied())
    }

    fn bytes_attr(&mut self, obj: ObjectHandle, ty: AttributeType) -> Result<Option<Vec<u8>>> {
        let attrs = self.with("reading an attribute", |s| s.get_attributes(obj, &[ty]))?;
        Ok(attrs.into_iter().find_map(|a| match a {
            Attribute::Value(v)
            | Attribute::Id(v)
            | Attribute::Label(v)
            | Attribute::EcPoint(v)
            | Attribute::EcParams(v) => Some(v),
            _ => None,
        }))
    }

    fn is_locked(&mut self) -> Result<bool> {
        Ok(self.find_one(ObjectClass::DATA, LOCK_LABEL)?.is_some())
    }

    fn refuse_if_locked(&mut self, what: &str) -> Result<()> {
        if self.is_locked()? {
            return Err(Error::DeviceHolds(format!(
                "a lock: the device is locked down and accepts no {what}"
            )));
        }
        Ok(())
    }

    /// The identity key pair's handles (private, public), if there is one.
    fn identity(&mut self) -> Result<Option<(ObjectHandle, ObjectHandle)>> {
        let private = self.find_one(ObjectClass::PRIVATE_KEY, IDENTITY_LABEL)?;
        let public = self.find_one(ObjectClass::PUBLIC_KEY, IDENTITY_LABEL)?;
        match (private, public) {
            (None, None) if self.seen_key => {
                self.session = None;
                Err(Error::DeviceUnreachable(format!(
                    "the device ({}) no longer shows its identity key, present a moment ago: \
                     it was disconnected or reset; reconnect it and run provisioning again",
                    self.describe()
                )))
            }
            (None, None) => Ok(None),
            (Some(k), Some(p)) => {
                self.seen_key = true;
                Ok(Some((k, p)))
            }
            (Some(_), None) => Err(Error::DeviceRefused(format!(
                "the device holds the private key {IDENTITY_LABEL:?} without its public key; \
                 an engineer must inspect it"
            ))),
            (None, Some(_)) => Err(Error::DeviceRefused(format!(
                "the device holds the public key {IDENTITY_LABEL:?} without its private key; \
                 an engineer must inspect it"
            ))),
        }
    }

    /// The uncompressed P-256 point of the identity public key.
    fn point(&mut self, public: ObjectHandle) -> Result<Vec<u8>> {
        let params = self.bytes_attr(public, AttributeType::EcParams)?;
        if params.as_deref() != Some(P256_PARAMS) {
            return Err(Error::DeviceRefused(
                "the device's identity key is not a P-256 key".into(),
            ));
        }
        let point = self
            .bytes_attr(public, AttributeType::EcPoint)?
            .ok_or_else(|| Error::DeviceRefused("the identity key has no CKA_EC_POINT".into()))?;
        // CKA_EC_POINT is a DER OCTET STRING; some tokens give the bare point.
        let raw = if point.len() == 65 {
            point
        } else {
            der::asn1::OctetString::from_der(&point)
                .map_err(|e| Error::DeviceRefused(format!("CKA_EC_POINT: {e}")))?
                .into_bytes()
        };
        if raw.len() != 65 || raw.first() != Some(&4) {
            return Err(Error::DeviceRefused(
                "CKA_EC_POINT is not an uncompressed P-256 point".into(),
            ));
        }
        Ok(raw)
    }

    fn spki(point: &[u8]) -> Result<Vec<u8>> {
        let key = p256::PublicKey::from_sec1_bytes(point)
            .map_err(|e| Error::DeviceRefused(format!("the device's public key: {e}")))?;
        Ok(key
            .to_public_key_der()
            .map_err(|e| Error::DeviceRefused(format!("encoding the public key: {e}")))?
            .into_vec())
    }

    /// Writes one certificate object unless an equal one is there.
    fn put_certificate(&mut self, label: &str, id: &[u8], der_bytes: &[u8]) -> Result<()> {
        let cert = x509_cert::Certificate::from_der(der_bytes).map_err(|e| {
            Error::DeviceRefused(format!("certificate {label:?} is not DER X.509: {e}"))
        })?;
        if let Some(existing) = self.find_one(ObjectClass::CERTIFICATE, label)? {
            let value = self.bytes_attr(existing, AttributeType::Value)?;
            if value.as_deref() == Some(der_bytes) {
                return Ok(());
            }
            return Err(Error::DeviceHolds(format!(
                "a different certificate labelled {label:?}; an engineer must remove it first"
            )));
        }
        let enc = |r: der::Result<Vec<u8>>| {
            r.map_err(|e| Error::DeviceRefused(format!("encoding certificate fields: {e}")))
        };
        let tbs = &cert.tbs_certificate;
        let template = [
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::CertificateType(CertificateType::X_509),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
            Attribute::Subject(enc(tbs.subject.to_der())?),
            Attribute::Issuer(enc(tbs.issuer.to_der())?),
            Attribute::SerialNumber(enc(tbs.serial_number.to_der())?),
            Attribute::Value(der_bytes.to_vec()),
            // Write-once: SoftHSM2 (and most tokens) refuse to change these
            // two after creation, so they are set now, not at lock-down.
            Attribute::Modifiable(false),
            Attribute::Destroyable(false),
        ];
        self.with("writing a certificate", |s| s.create_object(&template))?;
        Ok(())
    }

    /// Every object this provisioning put on the device.
    fn our_objects(&mut self) -> Result<Vec<(String, ObjectHandle)>> {
        let mut out = Vec::new();
        if let Some((k, p)) = self.identity()? {
            out.push(("private key".to_owned(), k));
            out.push(("public key".to_owned(), p));
        }
        let certs = self.with("listing certificates", |s| {
            s.find_objects(&[Attribute::Class(ObjectClass::CERTIFICATE)])
        })?;
        for c in certs {
            let label = self.label_of(c)?;
            if label == IDENTITY_LABEL || label.starts_with(CA_LABEL_PREFIX) {
                out.push((format!("certificate {label}"), c));
            }
        }
        let secrets = self.with("listing secrets", |s| {
            s.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
        })?;
        for k in secrets {
            let label = self.label_of(k)?;
            out.push((format!("secret {label}"), k));
        }
        if let Some(u) = self.find_one(ObjectClass::DATA, UID_LABEL)? {
            out.push(("uid".to_owned(), u));
        }
        Ok(out)
    }

    fn label_of(&mut self, obj: ObjectHandle) -> Result<String> {
        let raw = self
            .bytes_attr(obj, AttributeType::Label)?
            .unwrap_or_default();
        Ok(String::from_utf8_lossy(&raw).into_owned())
    }
}

/// 1–32 characters of `[a-z0-9_-]`.
fn check_secret_name(name: &str) -> Result<()> {
    let ok = (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::DeviceRefused(format!(
            "secret name {:?} is not 1-32 characters of [a-z0-9_-]",
            name.chars().take(40).collect::<String>()
        )))
    }
}

impl DeviceLink for Pkcs11Device {
    fn uid(&mut self) -> Result<Vec<u8>> {
        if let Some(obj) = self.find_one(ObjectClass::DATA, UID_LABEL)? {
            return self.bytes_attr(obj, AttributeType::Value)?.ok_or_else(|| {
                Error::DeviceRefused(format!("the {UID_LABEL:?} object has no value"))
            });
        }
        let slot = self.find_slot()?;
        let info = self
            .ctx
            .get_token_info(slot)
            .map_err(|e| self.fail("reading the token information", e))?;
        Ok(info.serial_number().trim_end().as_bytes().to_vec())
    }

    fn status(&mut self) -> Result<DeviceStatus> {
        let public_key = match self.identity()? {
            Some((_, public)) => {
                let point = self.point(public)?;
                Some(Self::spki(&point)?)
            }
            None => None,
        };
        let certificate = match self.find_one(ObjectClass::CERTIFICATE, IDENTITY_LABEL)? {
            Some(c) => self.bytes_attr(c, AttributeType::Value)?,
            None => None,
        };
        let keys = self.with("listing secrets", |s| {
            s.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
        })?;
        let mut secrets = Vec::new();
        for k in keys {
            secrets.push(self.label_of(k)?);
        }
        secrets.sort();
        let locked = self.is_locked()?;
        Ok(DeviceStatus {
            public_key,
            certificate,
            secrets,
            locked,
        })
    }

    fn generate_key(&mut self) -> Result<Vec<u8>> {
        self.refuse_if_locked("new key")?;
        if self.identity()?.is_some() {
            return Err(Error::DeviceHolds(format!(
                "an identity key (label {IDENTITY_LABEL:?}); it is reused, never replaced"
            )));
        }
        let public = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Label(IDENTITY_LABEL.as_bytes().to_vec()),
            Attribute::Id(PENDING_ID.to_vec()),
            Attribute::EcParams(P256_PARAMS.to_vec()),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
            Attribute::Derive(false),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Label(IDENTITY_LABEL.as_bytes().to_vec()),
            Attribute::Id(PENDING_ID.to_vec()),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
        ];
        let (pub_h, priv_h) = self.with("generating the key pair", |s| {
            s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
        })?;
        self.seen_key = true;
        let point = self.point(pub_h)?;
        // CKA_ID = SHA-1 of the point, as p11-kit and OpenSC name keys;
        // if the token refuses the change, the placeholder id stays (the
        // certificate takes whatever id the key has).
        let id = sha1::Sha1::digest(&point).to_vec();
        for h in [priv_h, pub_h] {
            let _ = self.with("setting the key id", |s| {
                s.update_attributes(h, &[Attribute::Id(id.clone())])
            });
        }
        Self::spki(&point)
    }

    fn sign(&mut self, message: &[u8]) -> Result<Vec<u8>> {
        let (key, _) = self.identity()?.ok_or_else(|| {
            Error::DeviceRefused("the device has no identity key to sign with".into())
        })?;
        let digest = sha2::Sha256::digest(message);
        let raw = self.with("signing", |s| s.sign(&Mechanism::Ecdsa, key, &digest))?;
        let sig = p256::ecdsa::Signature::from_slice(&raw).map_err(|e| {
            Error::DeviceRefused(format!("the device's signature is not P-256 r||s: {e}"))
        })?;
        Ok(sig.to_der().as_bytes().to_vec())
    }

    fn put_certificates(&mut self, certificate: &[u8], chain: &[Vec<u8>]) -> Result<()> {
        // Written already and equal: nothing to do, even when locked.
        if let Some(c) = self.find_one(ObjectClass::CERTIFICATE, IDENTITY_LABEL)? {
            if self.bytes_attr(c, AttributeType::Value)?.as_deref() == Some(certificate) {
                return Ok(());
            }
        }
        self.refuse_if_locked("certificate")?;
        let (key, _) = self.identity()?.ok_or_else(|| {
            Error::DeviceRefused("the device has no identity key for this certificate".into())
        })?;
        let key_id = self.bytes_attr(key, AttributeType::Id)?.unwrap_or_default();
        // The chain first, the leaf last: the leaf's presence means the
        // whole set is on the device.
        for (i, ca) in chain.iter().enumerate() {
            let cert = x509_cert::Certificate::from_der(ca).map_err(|e| {
                Error::DeviceRefused(format!("chain certificate {} is not DER X.509: {e}", i + 1))
            })?;
            let bits = cert
                .tbs_certificate
                .subject_public_key_info
                .subject_public_key
                .raw_bytes();
            let id = sha1::Sha1::digest(bits).to_vec();
            self.put_certificate(&format!("{CA_LABEL_PREFIX}{}", i + 1), &id, ca)?;
        }
        self.put_certificate(IDENTITY_LABEL, &key_id, certificate)
    }

    fn put_secret(&mut self, name: &str, secret: &[u8]) -> Result<()> {
        check_secret_name(name)?;
        // Also proves the device is still the one we provisioned.
        if self.identity()?.is_none() {
            return Err(Error::DeviceRefused(
                "the device has no identity key; secrets go in after the key".into(),
            ));
        }
        self.refuse_if_locked("secret")?;
        if self.find_one(ObjectClass::SECRET_KEY, name)?.is_some() {
            return Err(Error::DeviceHolds(format!(
                "a secret named {name:?}; it is never overwritten"
            )));
        }
        let mut template = vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Label(name.as_bytes().to_vec()),
            Attribute::Id(name.as_bytes().to_vec()),
            Attribute::Sign(true),
            Attribute::Verify(true),
            Attribute::Derive(true),
            Attribute::Encrypt(false),
            Attribute::Decrypt(false),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Modifiable(false),
            Attribute::Destroyable(false),
            Attribute::Value(secret.to_vec()),
        ];
        let r = self.with("storing the secret", |s| s.create_object(&template));
        for a in &mut template {
            if let Attribute::Value(v) = a {
                v.zeroize();
            }
        }
        r.map(|_| ())
    }

    fn lock(&mut self) -> Result<()> {
        let mut notes = Vec::new();
        let objects = self.our_objects()?;
        for (what, h) in objects {
            for (name, attr) in [
                ("CKA_MODIFIABLE", Attribute::Modifiable(false)),
                ("CKA_DESTROYABLE", Attribute::Destroyable(false)),
            ] {
                let set = self.with("locking", |s| s.update_attributes(h, &[attr]));
                match set {
                    Ok(()) => notes.push(format!("{what}: {name}=false")),
                    // A lost device is an error; a refused attribute a note.
                    Err(e @ Error::DeviceUnreachable(_)) => return Err(e),
                    Err(e) => notes.push(format!("{what}: {name} not settable ({e})")),
                }
            }
        }
        if !self.is_locked()? {
            let marker = |destroyable: bool| {
                let mut t = vec![
                    Attribute::Class(ObjectClass::DATA),
                    Attribute::Token(true),
                    Attribute::Private(false),
                    Attribute::Label(LOCK_LABEL.as_bytes().to_vec()),
                    Attribute::Application(b"vbus".to_vec()),
                    Attribute::Value(b"locked".to_vec()),
                    Attribute::Modifiable(false),
                ];
                if !destroyable {
                    t.push(Attribute::Destroyable(false));
                }
                t
            };
            let made = self.with("writing the lock marker", |s| {
                s.create_object(&marker(false))
            });
            match made {
                Ok(_) => {}
                Err(e @ Error::DeviceUnreachable(_)) => return Err(e),
                Err(_) => {
                    notes.push("lock marker: CKA_DESTROYABLE=false refused at creation".into());
                    self.with("writing the lock marker", |s| {
                        s.create_object(&marker(true))
                    })?;
                }
            }
        }
        self.lock_notes = notes;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let u = DeviceUri::parse(
            "pkcs11:token=dev%2d0001;object=x?module-path=/usr/lib/x.so&pin-value=12%2534",
        )
        .unwrap();
        assert_eq!(u.selector.token.as_deref(), Some("dev-0001"));
        assert_eq!(u.module, PathBuf::from("/usr/lib/x.so"));
        assert_eq!(u.pin.as_str(), "12%34");
        for (bad, want) in [
            ("pkcs12:token=a?module-path=/x&pin-value=1", "pkcs11:"),
            ("pkcs11:token=a?pin-value=1", "module-path"),
            ("pkcs11:token=a?module-path=/x", "pin-value"),
            ("pkcs11:?module-path=/x&pin-value=1", "no token selected"),
            ("pkcs11:token=a;bogus=1?module-path=/x&pin-value=1", "bogus"),
            (
                "pkcs11:token=a?module-path=/x&pin-value=secret%zz",
                "percent",
            ),
        ] {
            let e = DeviceUri::parse(bad).err().unwrap().to_string();
            assert!(e.contains(want), "{bad}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn pin_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "4321\n").unwrap();
        let u = DeviceUri::parse(&format!(
            "pkcs11:token=a?module-path=/x&pin-source=file:{}",
            p.display()
        ))
        .unwrap();
        assert_eq!(u.pin.as_str(), "4321");
    }
}
