//! Small data objects (CKO_DATA) the appliance keeps in the token: state that
//! must survive a rollback of the disk, such as the newest audit checkpoint.
//! They are token objects, private (readable only after login);
//! `CKA_APPLICATION` is `vbus-kms`. Tokens may keep `CKA_VALUE` read-only
//! (SoftHSM2 does), so a value is replaced by creating the new object first
//! and then destroying the old ones: a crash in between leaves both, and
//! readers get every value under the label.

use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::pool::ck;
use crate::error::Result;

const APPLICATION: &[u8] = b"vbus-kms";

fn find(session: &Session, label: &str) -> Result<Vec<ObjectHandle>> {
    session
        .find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(APPLICATION.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(ck)
}

/// Every value stored under `label` (normally one).
pub(crate) fn read(session: &Session, label: &str) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for h in find(session, label)? {
        let attrs = session
            .get_attributes(h, &[AttributeType::Value])
            .map_err(ck)?;
        out.extend(attrs.into_iter().find_map(|a| match a {
            Attribute::Value(v) => Some(v),
            _ => None,
        }));
    }
    Ok(out)
}

/// Store `value` under `label`, replacing what was there.
pub(crate) fn replace(session: &Session, label: &str, value: &[u8]) -> Result<()> {
    let old = find(session, label)?;
    session
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Application(APPLICATION.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Value(value.to_vec()),
        ])
        .map_err(ck)?;
    for h in old {
        session.destroy_object(h).map_err(ck)?;
    }
    Ok(())
}
