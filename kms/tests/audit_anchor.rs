//! The newest audit checkpoint is also kept in the token: rolling back the
//! whole log directory (segment and checkpoint file together) is caught.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use std::path::Path;

use softhsm_tests::SoftHsm;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn a_log_directory_rolled_back_as_a_whole_is_refused() {
    let hsm = SoftHsm::new("t-anchor");
    let (cfg, token) = common::appliance(&hsm);

    // An outside tool sees the anchored checkpoint as a private data object.
    let listing = hsm.pkcs11_tool(&["--list-objects", "--type", "data"]);
    assert!(
        listing.contains("audit-key-checkpoint") && listing.contains("vbus-kms"),
        "{listing}"
    );

    let saved = hsm.dir().join("saved-audit");
    copy_dir(&cfg.audit.dir, &saved);
    {
        let log = kms::auditing::open(&cfg, &token).unwrap();
        for i in 0..3 {
            kms::auditing::record(
                &log,
                "local:test",
                "test.op",
                &i.to_string(),
                "ok",
                serde_json::json!({}),
            )
            .unwrap();
        }
        log.checkpoint().unwrap().unwrap();
    }
    // Put the old segment and the old checkpoint file back, consistently.
    std::fs::remove_dir_all(&cfg.audit.dir).unwrap();
    copy_dir(&saved, &cfg.audit.dir);
    match kms::auditing::open(&cfg, &token) {
        Err(kms::Error::Audit(e @ audit::Error::RolledBack { .. })) => {
            assert_eq!(e.code(), "audit_rolled_back")
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a rolled-back log was accepted"),
    }
}
