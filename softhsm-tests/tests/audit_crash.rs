//! kill -9 a process appending to the audit log from 8 threads, 10 times:
//! every acknowledged append survives and the chain verifies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use softhsm_tests::bin;

const SEED: &str = "0101010101010101010101010101010101010101010101010101010101010101";

#[test]
fn acknowledged_appends_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let key =
        ed25519_dalek::SigningKey::from_bytes(&hex::decode(SEED).unwrap().try_into().unwrap());
    let verifier = audit::note::Verifier::parse(&audit::note::verifier_key(
        "vbus-kms/audit",
        &key.verifying_key().to_bytes(),
    ))
    .unwrap();
    let mut acknowledged_total = 0u64;
    for round in 0..10 {
        let mut child = Command::new(bin("audit-append"))
            .arg(&dir)
            .arg(SEED)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Kill it at a different point each round.
        let target = 50 + round * 37;
        let mut max_acked = 0u64;
        let mut seen = 0;
        for line in lines.by_ref() {
            let seq: u64 = line.unwrap().trim().parse().unwrap();
            max_acked = max_acked.max(seq);
            seen += 1;
            if seen >= target {
                break;
            }
        }
        assert!(seen >= target, "round {round}: the appender stopped early");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Acknowledgements printed after our last read are lost to us, not to the log.
        acknowledged_total += seen as u64;

        // A torn tail may remain (an unacknowledged batch cut mid-write);
        // repair drops only it, then everything acknowledged must be there.
        let report = audit::repair(&dir, false).unwrap();
        assert!(
            report.records >= max_acked,
            "round {round}: acked {max_acked}, log has {}",
            report.records
        );
        let mut export = Vec::new();
        audit::Log::export(&dir, 1, &mut export).unwrap();
        let v = audit::verify::verify_export(export.as_slice(), &verifier, None, |_| {}).unwrap();
        assert_eq!(v.records, report.records);
    }
    assert!(acknowledged_total >= 10 * 50);
}
