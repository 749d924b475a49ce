//! Shared by the benchmarks: the baseline every pooled figure is read against.

use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use kms::token::Token;

/// A session of our own beside the pool, and the handle of the private key
/// labelled `label` in it: for bare `C_Sign` loops.
pub fn bare_session(token: &Token, label: &str) -> (Session, ObjectHandle) {
    let session = token
        .pkcs11()
        .open_ro_session(token.slot().expect("slot"))
        .expect("session");
    let key = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .expect("find")[0];
    (session, key)
}
