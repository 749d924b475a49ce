//! Key generation and lookup inside the token.
//!
//! Every key the appliance makes is generated in the token with
//! `CKA_TOKEN=true`, a label and a random 16-byte `CKA_ID`. Private and secret
//! keys are `CKA_PRIVATE`, `CKA_SENSITIVE` and, except for keys meant to leave
//! only wrapped, `CKA_EXTRACTABLE=false`. Each key gets only the usages its
//! role needs: signing keys sign, wrapping keys wrap and unwrap, data keys
//! encrypt and decrypt.
//!
//! Lookups see token objects only (`CKA_TOKEN=true`): the session-object
//! copies the pool signs with (see [`session_copy`]) never count as keys.

use cryptoki::context::Function;
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState};

use super::pool::ck;
use super::uri::object_uri;
use crate::error::{Error, Result};

/// DER of the P-256 (prime256v1) OID, the `CKA_EC_PARAMS` of our EC keys.
pub(crate) const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER PrintableString "edwards25519", the `CKA_EC_PARAMS` SoftHSM2 expects.
pub(crate) const ED25519_PARAMS: &[u8] = b"\x13\x0cedwards25519";

/// Length of the random `CKA_ID` given to new keys.
pub(crate) const ID_LEN: usize = 16;

/// Asymmetric key types the appliance generates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyPairKind {
    /// ECDSA on NIST P-256.
    EcP256,
    /// Ed25519.
    Ed25519,
}

/// What an AES-256 key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AesUsage {
    /// Wrap and unwrap other keys (AES key wrap with padding), nothing else.
    Wrap,
    /// Encrypt and decrypt data (AES-GCM), nothing else.
    Encrypt,
}

/// Whether a secret key may ever leave the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extractable {
    /// Never (`CKA_EXTRACTABLE=false`): the default for every appliance key.
    Never,
    /// Only wrapped under another key: `CKA_EXTRACTABLE=true` but still
    /// `CKA_SENSITIVE=true`, so its value is never readable in the clear. For
    /// escrowed device keys.
    WrappedOnly,
}

/// The class of a key object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyClass {
    /// A private key.
    Private,
    /// A public key.
    Public,
    /// A secret (symmetric) key.
    Secret,
}

impl KeyClass {
    pub(crate) fn object_class(self) -> ObjectClass {
        match self {
            KeyClass::Private => ObjectClass::PRIVATE_KEY,
            KeyClass::Public => ObjectClass::PUBLIC_KEY,
            KeyClass::Secret => ObjectClass::SECRET_KEY,
        }
    }

    /// The word used in messages and in the URI `type=` attribute.
    pub fn name(self) -> &'static str {
        match self {
            KeyClass::Private => "private",
            KeyClass::Public => "public",
            KeyClass::Secret => "secret-key",
        }
    }
}

/// The algorithm of a key found on the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// EC key on P-256.
    EcP256,
    /// Ed25519 key.
    Ed25519,
    /// AES key (any length).
    Aes,
    /// Something else (another curve, RSA, …): present, but not ours to use.
    Other,
}

/// What the token says about one key object, read back from its attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_ID`.
    pub id: Vec<u8>,
    /// Object class.
    pub class: KeyClass,
    /// Key algorithm.
    pub algorithm: KeyAlgorithm,
    /// `CKA_SENSITIVE` (private and secret keys).
    pub sensitive: bool,
    /// `CKA_EXTRACTABLE` (private and secret keys).
    pub extractable: bool,
    /// RFC 7512 URI of the object.
    pub uri: String,
}

/// A key handle with what the operations need to know about it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FoundKey {
    pub handle: ObjectHandle,
    pub algorithm: KeyAlgorithm,
    /// A private key that may be signed with through session copies: P-256
    /// or Ed25519, private, sensitive, never extractable and not
    /// `CKA_COPYABLE=false`.
    pub copyable: bool,
}

/// Find the single token key of `class` labelled `label`.
pub(crate) fn find(session: &Session, label: &str, class: KeyClass) -> Result<FoundKey> {
    let handles = session
        .find_objects(&[
            Attribute::Class(class.object_class()),
            Attribute::Token(true),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(ck)?;
    let handle = match handles.as_slice() {
        [] => {
            // Private objects are invisible without a login: a lost login
            // looks like a missing key. Say which it is, so the pool can log
            // in again and retry.
            let state = session.get_session_info().map_err(ck)?.session_state();
            if matches!(state, SessionState::RoPublic | SessionState::RwPublic)
                && class != KeyClass::Public
            {
                return Err(Error::Pkcs11 {
                    function: Function::FindObjects,
                    rv: RvError::UserNotLoggedIn,
                });
            }
            return Err(Error::KeyNotFound {
                label: label.to_owned(),
                class: class.name(),
            });
        }
        [h] => *h,
        _ => {
            return Err(Error::WrongKeyType {
                label: label.to_owned(),
                reason: format!(
                    "{} {} keys carry this label; labels must be unique",
                    handles.len(),
                    class.name()
                ),
            })
        }
    };
    let (algorithm, copyable) = describe(session, handle)?;
    Ok(FoundKey {
        handle,
        algorithm,
        copyable: class == KeyClass::Private
            && copyable
            && matches!(algorithm, KeyAlgorithm::EcP256 | KeyAlgorithm::Ed25519),
    })
}

fn algorithm_of(session: &Session, handle: ObjectHandle) -> Result<KeyAlgorithm> {
    Ok(describe(session, handle)?.0)
}

/// The key's algorithm, and whether a session copy of it would be as
/// protected as it is and allowed: `CKA_PRIVATE`, `CKA_SENSITIVE`, not
/// `CKA_EXTRACTABLE`, and `CKA_COPYABLE` not false (absent means true, as in
/// tokens older than PKCS#11 2.40).
fn describe(session: &Session, handle: ObjectHandle) -> Result<(KeyAlgorithm, bool)> {
    let attrs = session
        .get_attributes(
            handle,
            &[
                AttributeType::KeyType,
                AttributeType::EcParams,
                AttributeType::Private,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Copyable,
            ],
        )
        .map_err(ck)?;
    let mut key_type = None;
    let mut params = None;
    let (mut private, mut sensitive, mut extractable, mut copyable) = (false, false, true, true);
    for a in attrs {
        match a {
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::EcParams(p) => params = Some(p),
            Attribute::Private(b) => private = b,
            Attribute::Sensitive(b) => sensitive = b,
            Attribute::Extractable(b) => extractable = b,
            Attribute::Copyable(b) => copyable = b,
            _ => {}
        }
    }
    let algorithm = match key_type {
        Some(t) if t == KeyType::AES => KeyAlgorithm::Aes,
        Some(t) if t == KeyType::EC && params.as_deref() == Some(P256_PARAMS) => {
            KeyAlgorithm::EcP256
        }
        Some(t) if t == KeyType::EC_EDWARDS && params.as_deref() == Some(ED25519_PARAMS) => {
            KeyAlgorithm::Ed25519
        }
        // Private keys may not expose CKA_EC_PARAMS on every token; the
        // generator always sets it, so absence means not one of ours.
        _ => KeyAlgorithm::Other,
    };
    Ok((algorithm, private && sensitive && !extractable && copyable))
}

/// A session-object copy of the token private key `key`, for signing: the
/// copy skips the checks and reloads some tokens (SoftHSM2) make on every
/// use of a token object. Only `CKA_TOKEN=false` and an empty label are
/// asked for (no lookup by label finds it); the rest is copied, and PKCS#11
/// forbids weakening `CKA_SENSITIVE` or `CKA_EXTRACTABLE` in a copy. That is
/// checked all the same: a copy that is not private, sensitive and never
/// extractable is destroyed and refused.
pub(crate) fn session_copy(session: &Session, key: ObjectHandle) -> Result<ObjectHandle> {
    let copy = session
        .copy_object(
            key,
            &[Attribute::Token(false), Attribute::Label(Vec::new())],
        )
        .map_err(ck)?;
    let attrs = session.get_attributes(
        copy,
        &[
            AttributeType::Token,
            AttributeType::Private,
            AttributeType::Sensitive,
            AttributeType::Extractable,
        ],
    );
    let protected = attrs.as_ref().is_ok_and(|attrs| {
        let want = [
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
        ];
        want.iter().all(|w| attrs.contains(w))
    });
    if protected {
        return Ok(copy);
    }
    if let Err(e) = session.destroy_object(copy) {
        tracing::warn!(error = %e, "cannot destroy a refused session copy of a key");
    }
    Err(match attrs {
        Err(e) => ck(e),
        Ok(attrs) => Error::TokenProtocol(format!(
            "the session copy of a key is less protected than the key: {attrs:?}"
        )),
    })
}

/// Handles of the session copies of the token private key with `CKA_ID`
/// `id` that this session can see: every session's, on tokens that share
/// session objects between an application's sessions (SoftHSM2 does).
pub(crate) fn session_copies(session: &Session, id: &[u8]) -> Result<Vec<ObjectHandle>> {
    session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Token(false),
            Attribute::Id(id.to_vec()),
        ])
        .map_err(ck)
}

/// Generate a key pair; returns (public, private) handles.
pub(crate) fn generate_key_pair(
    session: &Session,
    kind: KeyPairKind,
    label: &str,
    id: &[u8],
) -> Result<(ObjectHandle, ObjectHandle)> {
    let (mechanism, params) = match kind {
        KeyPairKind::EcP256 => (Mechanism::EccKeyPairGen, P256_PARAMS),
        KeyPairKind::Ed25519 => (Mechanism::EccEdwardsKeyPairGen, ED25519_PARAMS),
    };
    let public = [
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
        Attribute::EcParams(params.to_vec()),
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
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
    ];
    session
        .generate_key_pair(&mechanism, &public, &private)
        .map_err(ck)
}

/// Generate a P-256 key pair for a device without a secure element: session
/// objects (gone with the session whatever happens), the private key
/// readable once (`CKA_SENSITIVE=false`, `CKA_EXTRACTABLE=true`) because it
/// is handed to the station and escrowed; the caller reads and destroys
/// both at once. Returns (public, private) handles.
pub(crate) fn generate_exportable_p256(session: &Session) -> Result<(ObjectHandle, ObjectHandle)> {
    let public = [
        Attribute::Token(false),
        Attribute::Private(false),
        Attribute::EcParams(P256_PARAMS.to_vec()),
        Attribute::Verify(true),
    ];
    let private = [
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
    ];
    session
        .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
        .map_err(ck)
}

/// Generate an AES-256 secret key for one usage.
pub(crate) fn generate_aes(
    session: &Session,
    usage: AesUsage,
    extractable: Extractable,
    label: &str,
    id: &[u8],
) -> Result<ObjectHandle> {
    let wrap = usage == AesUsage::Wrap;
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(extractable == Extractable::WrappedOnly),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
        Attribute::Wrap(wrap),
        Attribute::Unwrap(wrap),
        Attribute::Encrypt(!wrap),
        Attribute::Decrypt(!wrap),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
    ];
    session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .map_err(ck)
}

/// Read back the attributes of a key object.
pub(crate) fn info(session: &Session, token_label: &str, handle: ObjectHandle) -> Result<KeyInfo> {
    let attrs = session
        .get_attributes(
            handle,
            &[
                AttributeType::Class,
                AttributeType::Label,
                AttributeType::Id,
                AttributeType::Sensitive,
                AttributeType::Extractable,
            ],
        )
        .map_err(ck)?;
    let mut info = KeyInfo {
        label: String::new(),
        id: Vec::new(),
        class: KeyClass::Secret,
        algorithm: algorithm_of(session, handle)?,
        sensitive: false,
        extractable: false,
        uri: String::new(),
    };
    for a in attrs {
        match a {
            Attribute::Class(c) if c == ObjectClass::PRIVATE_KEY => info.class = KeyClass::Private,
            Attribute::Class(c) if c == ObjectClass::PUBLIC_KEY => info.class = KeyClass::Public,
            Attribute::Label(l) => info.label = String::from_utf8_lossy(&l).into_owned(),
            Attribute::Id(id) => info.id = id,
            Attribute::Sensitive(b) => info.sensitive = b,
            Attribute::Extractable(b) => info.extractable = b,
            _ => {}
        }
    }
    info.uri = object_uri(token_label, &info.label, &info.id, info.class.name());
    Ok(info)
}

/// Handles of every private and secret key on the token (public keys are
/// halves of the private ones and not counted; session objects are not on
/// the token).
pub(crate) fn all_keys(session: &Session) -> Result<Vec<ObjectHandle>> {
    let mut out = Vec::new();
    for class in [ObjectClass::PRIVATE_KEY, ObjectClass::SECRET_KEY] {
        out.extend(
            session
                .find_objects(&[Attribute::Class(class), Attribute::Token(true)])
                .map_err(ck)?,
        );
    }
    Ok(out)
}
