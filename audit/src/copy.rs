//! Copying a log out as it stands (a backup) and writing one back from such
//! a copy (a restore).
//!
//! The copy is the JSON-lines export (records and the checkpoint lines after
//! the record each covers), bounded at a record a caller names: a writer may
//! go on appending meanwhile, and nothing past that record is read. The
//! writer rebuilds `audit.seg` and `checkpoints.seg` from such lines,
//! checking the chain as it goes; the checkpoints it stores are judged
//! afterwards by [`crate::verify::verify_log`], as any log's are.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::log::{
    checkpoints_by_size, io, scan_upto, sync_dir, write_export_checkpoint, write_export_record,
    MAGIC, MAX_BODY,
};
use crate::record::{chain, GENESIS};
use crate::{CHECKPOINT_FILE, SEGMENT_FILE};

/// Write records `1..=upto` of the log in `dir` to `out` as export lines,
/// each stored checkpoint of a size up to `upto` right after the record it
/// covers, and return `hash_upto`. The chain is checked on the way; a log
/// holding fewer than `upto` records is refused as rolled back. Records
/// appended after `upto` meanwhile are not read, so the log may stay open
/// for writing.
pub fn export_upto(dir: &Path, upto: u64, out: &mut dyn Write) -> Result<[u8; 32]> {
    let notes = checkpoints_by_size(dir)?;
    let w = |e: std::io::Error| Error::Io {
        path: PathBuf::from("backup"),
        source: e,
    };
    let mut head = GENESIS;
    let scan = scan_upto(&dir.join(SEGMENT_FILE), upto, |seq, body, hash| {
        if std::str::from_utf8(body).is_err() {
            return Err(Error::Tampered {
                seq,
                reason: "body is not UTF-8".into(),
            });
        }
        write_export_record(out, seq, body, hash).map_err(w)?;
        for note in notes.get(&seq).into_iter().flatten() {
            write_export_checkpoint(out, note).map_err(w)?;
        }
        head = *hash;
        Ok(())
    })?;
    if scan.records < upto {
        scan.refuse_torn()?;
        return Err(Error::RolledBack {
            checkpoint: upto,
            log: scan.records,
        });
    }
    Ok(head)
}

/// Writes a new log directory from copied records and checkpoints (a
/// restore). Nothing is read back: run [`crate::verify::verify_log`] on the
/// directory afterwards to judge its checkpoints.
pub struct LogWriter {
    dir: PathBuf,
    segment: BufWriter<File>,
    checkpoints: BufWriter<File>,
    seq: u64,
    head: [u8; 32],
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter")
            .field("dir", &self.dir)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl LogWriter {
    /// Start a log in `dir` (created if missing). Refuses a directory that
    /// already holds a segment or a checkpoint file: a restore never writes
    /// over a log.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let open = |name: &str| -> Result<File> {
            let path = dir.join(name);
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        Error::Unavailable(format!(
                            "{} exists: a log is never written over",
                            path.display()
                        ))
                    } else {
                        io(&path)(e)
                    }
                })
        };
        let segment = open(SEGMENT_FILE)?;
        let checkpoints = open(CHECKPOINT_FILE)?;
        let mut segment = BufWriter::with_capacity(1 << 20, segment);
        segment
            .write_all(MAGIC)
            .map_err(io(&dir.join(SEGMENT_FILE)))?;
        Ok(Self {
            dir: dir.to_owned(),
            segment,
            checkpoints: BufWriter::new(checkpoints),
            seq: 0,
            head: GENESIS,
        })
    }

    /// Take the writer lock of the log directory `dir` (created if
    /// missing), the same `flock` on its `lock` file that [`crate::Log`]
    /// holds while open: while the returned file is open, no log opens
    /// there (a `kmsd` starting, another restore). `Unavailable` when
    /// another process holds it.
    pub fn lock_dir(dir: &Path) -> Result<File> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        lock.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => Error::Unavailable(format!(
                "{} is in use by another process (kmsd, or another restore)",
                dir.display()
            )),
            std::fs::TryLockError::Error(e) => io(&path)(e),
        })?;
        Ok(lock)
    }

    /// Append record `seq` (the next one) with its body and `hash_seq`,
    /// which must chain from the previous record.
    pub fn record(&mut self, seq: u64, body: &[u8], hash: &[u8; 32]) -> Result<()> {
        if seq != self.seq + 1 {
            return Err(Error::Tampered {
                seq: self.seq + 1,
                reason: format!("record {seq} follows record {}", self.seq),
            });
        }
        let len = u32::try_from(body.len())
            .ok()
            .filter(|l| *l <= MAX_BODY)
            .ok_or_else(|| Error::Tampered {
                seq,
                reason: format!("record length {} is implausible", body.len()),
            })?;
        let head = chain(&self.head, body);
        if &head != hash {
            return Err(Error::Tampered {
                seq,
                reason: "hash does not match the body and the previous hash".into(),
            });
        }
        let path = self.dir.join(SEGMENT_FILE);
        self.segment
            .write_all(&len.to_le_bytes())
            .and_then(|_| self.segment.write_all(body))
            .and_then(|_| self.segment.write_all(hash))
            .map_err(io(&path))?;
        self.seq = seq;
        self.head = head;
        Ok(())
    }

    /// Store a checkpoint note verbatim, after the ones stored before it.
    pub fn checkpoint(&mut self, note: &str) -> Result<()> {
        let len = u32::try_from(note.len())
            .map_err(|_| Error::Checkpoint("checkpoint note too large".into()))?;
        let path = self.dir.join(CHECKPOINT_FILE);
        self.checkpoints
            .write_all(&len.to_le_bytes())
            .and_then(|_| self.checkpoints.write_all(note.as_bytes()))
            .map_err(io(&path))
    }

    /// Write everything out (fsync of both files and the directory) and
    /// return the head: (records, `hash_records`).
    pub fn finish(self) -> Result<(u64, [u8; 32])> {
        for (writer, name) in [
            (self.segment, SEGMENT_FILE),
            (self.checkpoints, CHECKPOINT_FILE),
        ] {
            let path = self.dir.join(name);
            let file = writer.into_inner().map_err(|e| io(&path)(e.into_error()))?;
            file.sync_all().map_err(io(&path))?;
        }
        sync_dir(&self.dir)?;
        Ok((self.seq, self.head))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;

    use super::*;
    use crate::note::Verifier;
    use crate::{CheckpointSigner, Entry, Log, Options, SignerError};

    struct Key(ed25519_dalek::SigningKey);

    impl CheckpointSigner for Key {
        fn public_key(&self) -> [u8; 32] {
            self.0.verifying_key().to_bytes()
        }
        fn sign(&self, m: &[u8]) -> std::result::Result<[u8; 64], SignerError> {
            use ed25519_dalek::Signer;
            Ok(self.0.sign(m).to_bytes())
        }
    }

    const ORIGIN: &str = "vbus-kms/audit";

    fn key(seed: u8) -> Arc<Key> {
        Arc::new(Key(ed25519_dalek::SigningKey::from_bytes(&[seed; 32])))
    }

    fn log_with(dir: &Path, signer: &Arc<Key>, records: u64, checkpoint_every: u64) -> Log {
        let log = Log::open(
            dir,
            Options {
                origin: ORIGIN.into(),
                checkpoint_every,
            },
            Some(signer.clone()),
        )
        .unwrap();
        for i in 0..records {
            log.append(Entry::new("t", "op", &format!("s{i}"), "ok"))
                .unwrap();
        }
        log
    }

    /// Replay export lines into a writer, as a restore does.
    fn rebuild(lines: &str, dir: &Path) -> Result<(u64, [u8; 32])> {
        let mut w = LogWriter::create(dir)?;
        for line in lines.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(note) = v["checkpoint"].as_str() {
                w.checkpoint(note)?;
            } else {
                let hash: [u8; 32] = hex::decode(v["hash"].as_str().unwrap())
                    .unwrap()
                    .try_into()
                    .unwrap();
                w.record(
                    v["seq"].as_u64().unwrap(),
                    v["body"].as_str().unwrap().as_bytes(),
                    &hash,
                )?;
            }
        }
        w.finish()
    }

    #[test]
    fn a_bounded_copy_rebuilds_a_log_that_verifies_and_opens() {
        let src = tempfile::tempdir().unwrap();
        let signer = key(1);
        let log = log_with(src.path(), &signer, 10, 4);
        let cp = log.checkpoint().unwrap().expect("a new checkpoint");
        // Records appended after the bound are not copied.
        log.append(Entry::new("t", "op", "later", "ok")).unwrap();
        let mut out = Vec::new();
        let head = export_upto(src.path(), 10, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text.lines().filter(|l| l.starts_with("{\"seq\"")).count(),
            10
        );
        // Checkpoints at 4, 8 and 10, each after its record.
        let cps: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("{\"checkpoint\""))
            .collect();
        assert_eq!(cps.len(), 3);
        assert!(text
            .trim_end()
            .ends_with(&serde_json::json!({ "checkpoint": cp }).to_string()));
        // The same bytes as the full export's first lines.
        let mut full = Vec::new();
        Log::export(src.path(), 1, &mut full).unwrap();
        assert!(String::from_utf8(full).unwrap().starts_with(&text));

        let dst = tempfile::tempdir().unwrap();
        let target = dst.path().join("audit");
        assert_eq!(rebuild(&text, &target).unwrap(), (10, head));
        let verifier = Verifier::from_key(ORIGIN, &signer.public_key()).unwrap();
        let report = crate::verify::verify_log(&target, &verifier, Some(&cp), |_| {}).unwrap();
        assert_eq!((report.records, report.checkpointed), (10, 10));
        // And it opens as a log and takes new records after the copy.
        let reopened = Log::open(
            &target,
            Options {
                origin: ORIGIN.into(),
                checkpoint_every: 0,
            },
            Some(signer.clone()),
        )
        .unwrap();
        assert_eq!(reopened.head(), (10, head));
        assert_eq!(
            reopened
                .append(Entry::new("t", "restore", "-", "ok"))
                .unwrap()
                .seq,
            11
        );
    }

    #[test]
    fn a_copy_of_more_records_than_the_log_holds_is_refused() {
        let src = tempfile::tempdir().unwrap();
        let _log = log_with(src.path(), &key(2), 3, 0);
        let err = export_upto(src.path(), 5, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::RolledBack {
                    checkpoint: 5,
                    log: 3
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn the_writer_refuses_a_broken_chain_and_an_existing_log() {
        let src = tempfile::tempdir().unwrap();
        let _log = log_with(src.path(), &key(3), 4, 0);
        let mut out = Vec::new();
        export_upto(src.path(), 4, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // A record left out, and a body changed.
        let gap = [lines[0], lines[2], lines[3]].join("\n");
        let d = tempfile::tempdir().unwrap();
        let err = rebuild(&gap, &d.path().join("a")).unwrap_err();
        assert!(matches!(err, Error::Tampered { seq: 2, .. }), "{err}");
        let changed = text.replacen("\\\"s1\\\"", "\\\"s9\\\"", 1);
        assert_ne!(changed, text);
        let err = rebuild(&changed, &d.path().join("b")).unwrap_err();
        assert!(matches!(err, Error::Tampered { seq: 2, .. }), "{err}");
        // Never over an existing log.
        let err = LogWriter::create(src.path()).unwrap_err();
        assert_eq!(err.code(), "audit_unavailable");
    }

    #[test]
    fn a_checkpoint_by_another_key_is_stored_but_does_not_verify() {
        let src = tempfile::tempdir().unwrap();
        let log = log_with(src.path(), &key(4), 2, 0);
        log.checkpoint().unwrap();
        let mut out = Vec::new();
        export_upto(src.path(), 2, &mut out).unwrap();
        let d = tempfile::tempdir().unwrap();
        rebuild(std::str::from_utf8(&out).unwrap(), d.path()).unwrap();
        let other = Verifier::from_key(ORIGIN, &key(5).public_key()).unwrap();
        let err = crate::verify::verify_log(d.path(), &other, None, |_| {}).unwrap_err();
        assert_eq!(err.code(), "audit_tampered");
    }
}
