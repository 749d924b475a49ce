//! The audit segment reader: the fuzz input is a segment file and a
//! checkpoint file (split by `vbus_fuzz::split2`), written to a scratch
//! directory and read by what reads them in the appliance: the record
//! scan (`audit::for_each_record`, used by `kmsctl store rebuild`), the
//! verifier of a log directory (`audit::verify::verify_log`, `kmsctl audit
//! verify`), the torn-tail finder (`audit::repair`, dry run) and the
//! start-up check (`audit::Log::open` with the checkpoint key).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// A scratch directory per process, on tmpfs when there is one.
fn dir() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("vbus-fuzz-audit-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let (segment, checkpoints) = vbus_fuzz::split2(data);
    let dir = dir();
    let seg = dir.join(audit::SEGMENT_FILE);
    let cps = dir.join(audit::CHECKPOINT_FILE);
    std::fs::write(&seg, segment).expect("write segment");
    if checkpoints.is_empty() {
        let _ = std::fs::remove_file(&cps);
    } else {
        std::fs::write(&cps, checkpoints).expect("write checkpoints");
    }

    let mut seen = 0u64;
    let scanned = audit::for_each_record(dir, |seq, _body| {
        seen += 1;
        assert_eq!(seq, seen);
        Ok(())
    });
    let repair = audit::repair(dir, true);
    if let Ok(n) = &scanned {
        // No torn tail, so nothing for repair to cut.
        let r = repair.as_ref().expect("repair of a log that scans");
        assert_eq!(r.records, *n);
        assert!(r.dropped.is_empty());
    }
    let verified = audit::verify::verify_log(dir, vbus_fuzz::audit_verifier(), None, |_| {});
    if let Ok(report) = &verified {
        assert_eq!(Some(report.records), scanned.as_ref().ok().copied());
    }
    let opened = audit::Log::open(
        dir,
        audit::Options::default(),
        Some(vbus_fuzz::audit_signer()),
    );
    if let Ok(log) = &opened {
        // What opens has a chain that scans.
        assert_eq!(Some(log.head().0), scanned.as_ref().ok().copied());
    }
});
