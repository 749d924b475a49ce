//! The segment file, group commit, checkpoints file, open-time checks and
//! repair.
//!
//! `audit.seg` starts with the 8 bytes `VBUSAUD1`, then one frame per record:
//! `body length (u32, little-endian) || body (JSON) || hash_n (32 bytes)`.
//! `checkpoints.seg` holds frames `note length (u32 LE) || note`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::note::{Checkpoint, Verifier};
use crate::record::{chain, Entry, RecordTail, GENESIS};
use crate::{CheckpointAnchor, CheckpointSigner};

/// The record segment's file name.
pub const SEGMENT_FILE: &str = "audit.seg";
/// The checkpoint file's name.
pub const CHECKPOINT_FILE: &str = "checkpoints.seg";
pub(crate) const MAGIC: &[u8; 8] = b"VBUSAUD1";
/// The lock file that keeps a second writer out.
const LOCK_FILE: &str = "lock";
/// Largest record body accepted (a record carrying a certificate is ~2 KiB).
pub(crate) const MAX_BODY: u32 = 1 << 20;

/// How the log behaves.
#[derive(Clone, Debug)]
pub struct Options {
    /// The log's name: checkpoint origin and key name.
    pub origin: String,
    /// Sign a checkpoint every this many records (0: only on request).
    pub checkpoint_every: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            origin: "vbus-kms/audit".into(),
            checkpoint_every: 1000,
        }
    }
}

/// A durable append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Its sequence number.
    pub seq: u64,
    /// `hash_seq`.
    pub hash: [u8; 32],
}

struct State {
    next_seq: u64,
    last_hash: [u8; 32],
    pending: Vec<u8>,
    pending_head: (u64, [u8; 32]),
    durable: (u64, [u8; 32]),
    /// Length of the segment file up to the durable head.
    durable_len: u64,
    writing: bool,
    failed: Option<String>,
    /// Batches refused for lack of space so far; an appender whose epoch
    /// is older than this one lost its record if it came after
    /// `cut_at[its epoch]`.
    epoch: usize,
    /// The durable head at the end of each epoch.
    cut_at: Vec<u64>,
    last_checkpoint: u64,
    appends: u64,
    syncs: u64,
}

/// The open audit log.
pub struct Log {
    dir: PathBuf,
    opts: Options,
    signer: Option<Arc<dyn CheckpointSigner>>,
    state: Mutex<State>,
    written: Condvar,
    segment: Mutex<File>,
    checkpoints: Mutex<File>,
    /// Held (flock) for the life of the log.
    _lock: File,
    anchor: Option<Arc<dyn CheckpointAnchor>>,
    /// Told how long each batch write + fdatasync took (metrics).
    sync_observer: std::sync::OnceLock<SyncObserver>,
    /// Free space kept on the log's file system and the others named.
    reserve: std::sync::OnceLock<Reserve>,
}

/// See [`Log::keep_free`].
struct Reserve {
    bytes: u64,
    dirs: Vec<PathBuf>,
}

/// Receives the duration of each batch write and fdatasync.
pub type SyncObserver = Box<dyn Fn(std::time::Duration) + Send + Sync>;

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a scan of the segment found.
pub(crate) struct Scan {
    pub records: u64,
    pub head: [u8; 32],
    /// Bytes of complete records, including the header.
    pub valid_len: u64,
    /// An incomplete last record: (offset, bytes).
    pub torn: Option<(u64, u64)>,
}

impl Scan {
    /// A torn tail as an error: every reader but `repair` refuses it.
    pub(crate) fn refuse_torn(&self) -> Result<()> {
        match self.torn {
            Some((offset, bytes)) => Err(Error::TornTail {
                last_complete: self.records,
                offset,
                bytes,
            }),
            None => Ok(()),
        }
    }
}

/// Read every record, checking the chain; `visit(seq, body, hash)` sees each.
pub(crate) fn scan(
    path: &Path,
    visit: impl FnMut(u64, &[u8], &[u8; 32]) -> Result<()>,
) -> Result<Scan> {
    scan_upto(path, u64::MAX, visit)
}

/// [`scan`] stopping after record `limit`: whatever follows it (records a
/// writer is appending meanwhile, or a torn tail) is not read.
pub(crate) fn scan_upto(
    path: &Path,
    limit: u64,
    mut visit: impl FnMut(u64, &[u8], &[u8; 32]) -> Result<()>,
) -> Result<Scan> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Scan {
                records: 0,
                head: GENESIS,
                valid_len: 0,
                torn: None,
            })
        }
        Err(e) => return Err(io(path)(e)),
    };
    let total = file.metadata().map_err(io(path))?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    if total < 8 {
        return Ok(Scan {
            records: 0,
            head: GENESIS,
            valid_len: 0,
            torn: (total > 0).then_some((0, total)),
        });
    }
    r.read_exact(&mut magic).map_err(io(path))?;
    if &magic != MAGIC {
        return Err(Error::Tampered {
            seq: 1,
            reason: format!("{} is not a vBus audit segment", path.display()),
        });
    }
    let (mut offset, mut seq, mut head) = (8u64, 0u64, GENESIS);
    let mut body = Vec::new();
    loop {
        let rest = total - offset;
        if rest == 0 || seq >= limit {
            break;
        }
        let torn = Scan {
            records: seq,
            head,
            valid_len: offset,
            torn: Some((offset, rest)),
        };
        if rest < 4 {
            return Ok(torn);
        }
        let mut len = [0u8; 4];
        r.read_exact(&mut len).map_err(io(path))?;
        let len = u32::from_le_bytes(len);
        if len > MAX_BODY {
            return Err(Error::Tampered {
                seq: seq + 1,
                reason: format!("record length {len} is implausible"),
            });
        }
        if rest < 4 + u64::from(len) + 32 {
            return Ok(torn);
        }
        body.resize(len as usize, 0);
        r.read_exact(&mut body).map_err(io(path))?;
        let mut stored = [0u8; 32];
        r.read_exact(&mut stored).map_err(io(path))?;
        seq += 1;
        head = chain(&head, &body);
        if head != stored {
            return Err(Error::Tampered {
                seq,
                reason: "hash does not match the body and the previous hash".into(),
            });
        }
        visit(seq, &body, &head)?;
        offset += 4 + u64::from(len) + 32;
    }
    Ok(Scan {
        records: seq,
        head,
        valid_len: offset,
        torn: None,
    })
}

/// Every checkpoint note stored beside the log, oldest first.
pub(crate) fn read_checkpoints(dir: &Path) -> Result<Vec<String>> {
    let path = dir.join(CHECKPOINT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&path)(e)),
    };
    let mut out = Vec::new();
    let mut rest = bytes.as_slice();
    while rest.len() >= 4 {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest.len() < 4 + len {
            break; // a torn checkpoint write: the previous ones stand
        }
        let note = std::str::from_utf8(&rest[4..4 + len])
            .map_err(|_| Error::Checkpoint("checkpoint is not UTF-8".into()))?;
        out.push(note.to_owned());
        rest = &rest[4 + len..];
    }
    Ok(out)
}

/// The stored checkpoint notes grouped by the size each covers (a note
/// whose size line does not parse is grouped under 0, where verification
/// rejects it).
pub(crate) fn checkpoints_by_size(dir: &Path) -> Result<BTreeMap<u64, Vec<String>>> {
    let mut by_size: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for note in read_checkpoints(dir)? {
        let size = note
            .lines()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        by_size.entry(size).or_default().push(note);
    }
    Ok(by_size)
}

impl Log {
    /// Open (or create) the log in `dir`, checking the whole chain, refusing
    /// a torn tail, and refusing a log behind its newest checkpoint. With a
    /// `signer`, checkpoints are signed and the stored ones are verified
    /// with its key.
    pub fn open(
        dir: &Path,
        opts: Options,
        signer: Option<Arc<dyn CheckpointSigner>>,
    ) -> Result<Self> {
        Self::open_anchored(dir, opts, signer, None)
    }

    /// [`Log::open`], also checking against (and, at each checkpoint,
    /// updating) the checkpoint kept by `anchor`.
    pub fn open_anchored(
        dir: &Path,
        opts: Options,
        signer: Option<Arc<dyn CheckpointSigner>>,
        anchor: Option<Arc<dyn CheckpointAnchor>>,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        // One writer per log: a second process appending would fork the chain.
        let lock = lock_writer(dir)?;
        let seg_path = dir.join(SEGMENT_FILE);
        let mut candidates = read_checkpoints(dir)?.pop().into_iter().collect::<Vec<_>>();
        if let Some(a) = &anchor {
            candidates.extend(a.load().map_err(Error::Signer)?);
        }
        // The newest of what the directory and the anchor say.
        let mut newest: Option<Checkpoint> = None;
        if let Some(s) = &signer {
            let verifier = Verifier::from_key(&opts.origin, &s.public_key())?;
            for note in &candidates {
                let cp = verifier.open(note)?;
                if newest.as_ref().is_none_or(|n| cp.size > n.size) {
                    newest = Some(cp);
                }
            }
        }
        let mut head_at_checkpoint = None;
        let scan = scan(&seg_path, |seq, _, hash| {
            if newest.as_ref().is_some_and(|c| c.size == seq) {
                head_at_checkpoint = Some(*hash);
            }
            Ok(())
        })?;
        scan.refuse_torn()?;
        if let Some(c) = &newest {
            if c.size > scan.records {
                return Err(Error::RolledBack {
                    checkpoint: c.size,
                    log: scan.records,
                });
            }
            if c.size > 0 && head_at_checkpoint != Some(c.head) {
                return Err(Error::Tampered {
                    seq: c.size,
                    reason: "head hash differs from the signed checkpoint".into(),
                });
            }
        }
        let mut segment = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&seg_path)
            .map_err(io(&seg_path))?;
        if scan.valid_len == 0 {
            segment
                .write_all(MAGIC)
                .and_then(|_| segment.sync_all())
                .map_err(io(&seg_path))?;
            sync_dir(dir)?;
        }
        let cp_path = dir.join(CHECKPOINT_FILE);
        let checkpoints = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&cp_path)
            .map_err(io(&cp_path))?;
        Ok(Self {
            dir: dir.to_owned(),
            signer,
            state: Mutex::new(State {
                next_seq: scan.records + 1,
                last_hash: scan.head,
                pending: Vec::new(),
                pending_head: (scan.records, scan.head),
                durable: (scan.records, scan.head),
                durable_len: if scan.valid_len == 0 {
                    MAGIC.len() as u64
                } else {
                    scan.valid_len
                },
                writing: false,
                failed: None,
                epoch: 0,
                cut_at: Vec::new(),
                last_checkpoint: newest.map_or(0, |c| c.size),
                appends: 0,
                syncs: 0,
            }),
            written: Condvar::new(),
            segment: Mutex::new(segment),
            checkpoints: Mutex::new(checkpoints),
            _lock: lock,
            anchor,
            sync_observer: std::sync::OnceLock::new(),
            reserve: std::sync::OnceLock::new(),
            opts,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append `entry`; returns once it is on disk (fsync), batched with
    /// whatever other threads append at the same time.
    pub fn append(&self, entry: Entry) -> Result<Appended> {
        self.check_reserve()?;
        // Everything but the sequence number is encoded before the lock:
        // under it, only the splice, the hash and the copy.
        let tail = RecordTail {
            time_ms: now_ms(),
            actor: &entry.actor,
            op: &entry.op,
            subject: &entry.subject,
            result: &entry.result,
            details: &entry.details,
        }
        .encode()
        .map_err(|e| Error::Encoding(e.to_string()))?;
        let mut st = self.lock();
        if let Some(why) = &st.failed {
            return Err(Error::Unavailable(why.clone()));
        }
        let seq = st.next_seq;
        let body = RecordTail::body(seq, &tail);
        let len = u32::try_from(body.len())
            .ok()
            .filter(|l| *l <= MAX_BODY)
            .ok_or_else(|| Error::Encoding("record too large".into()))?;
        let hash = chain(&st.last_hash, &body);
        st.next_seq += 1;
        st.last_hash = hash;
        st.pending.extend_from_slice(&len.to_le_bytes());
        st.pending.extend_from_slice(&body);
        st.pending.extend_from_slice(&hash);
        st.pending_head = (seq, hash);
        st.appends += 1;
        let epoch = st.epoch;
        loop {
            if st.epoch != epoch {
                // A batch was refused for lack of space since this record
                // was queued: it was durable before, or it is gone.
                if seq <= st.cut_at[epoch] {
                    break;
                }
                return Err(Error::Unavailable(NO_SPACE.into()));
            }
            if st.durable.0 >= seq {
                break;
            }
            if let Some(why) = &st.failed {
                return Err(Error::Unavailable(why.clone()));
            }
            if !st.writing && !st.pending.is_empty() {
                // Lead this batch: everything pending goes in one write +
                // fsync. Alone in it (the log was idle), yield once so
                // appenders just woken by the previous batch can join;
                // with records already waiting, write at once and let the
                // woken ones gather for the next batch meanwhile.
                st.writing = true;
                if st.durable.0 + 1 == seq && st.pending_head.0 == seq {
                    drop(st);
                    std::thread::yield_now();
                    st = self.lock();
                }
                let batch = std::mem::take(&mut st.pending);
                let head = st.pending_head;
                let base = st.durable_len;
                drop(st);
                let started = std::time::Instant::now();
                let result = {
                    let mut f = self.segment.lock().unwrap_or_else(|p| p.into_inner());
                    match f.write_all(&batch) {
                        // The file system is full: the kernel took none or
                        // part of the batch and no fsync happened, so cutting
                        // the file back to the durable head is safe, and the
                        // log takes records again once space returns.
                        Err(e) if is_no_space(&e) => match f.set_len(base) {
                            Ok(()) => Err(Failure::NoSpace),
                            Err(t) => Err(Failure::Fatal(format!(
                                "the audit segment is full ({e}) and cutting back its \
                                 partial batch failed: {t}"
                            ))),
                        },
                        Err(e) => Err(Failure::Fatal(format!(
                            "write of the audit segment failed: {e}"
                        ))),
                        Ok(()) => f.sync_data().map_err(|e| {
                            Failure::Fatal(format!("fsync of the audit segment failed: {e}"))
                        }),
                    }
                };
                if let Some(observe) = self.sync_observer.get() {
                    observe(started.elapsed());
                }
                st = self.lock();
                st.writing = false;
                st.syncs += 1;
                match result {
                    Ok(()) => {
                        st.durable = head;
                        st.durable_len = base + batch.len() as u64;
                    }
                    // This batch and every record queued behind it (they
                    // chain on it) are dropped; the chain goes on from the
                    // durable head.
                    Err(Failure::NoSpace) => {
                        let durable = st.durable;
                        st.cut_at.push(durable.0);
                        st.epoch += 1;
                        st.pending.clear();
                        st.pending_head = durable;
                        st.next_seq = durable.0 + 1;
                        st.last_hash = durable.1;
                    }
                    // Never retry: after a failed fsync the kernel may have
                    // dropped the pages, and a later fsync would lie.
                    Err(Failure::Fatal(why)) => st.failed = Some(why),
                }
                self.written.notify_all();
                continue;
            }
            st = self.written.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        let due = self.opts.checkpoint_every > 0 && seq.is_multiple_of(self.opts.checkpoint_every);
        drop(st);
        if due {
            // The record is durable whatever happens here; a failed
            // checkpoint is retried at the next one.
            let _ = self.checkpoint();
        }
        Ok(Appended { seq, hash })
    }

    /// Refuse every append, from now on, while the log's file system or
    /// one of `dirs`' (the state the records describe) has less than
    /// `bytes` free: a record is never written that its effect could not
    /// follow, and the files never meet a full disk in normal operation
    /// (a write that does is undone, see [`Log::append`]). Once per log.
    pub fn keep_free(&self, bytes: u64, dirs: Vec<PathBuf>) {
        // Each file system once: in the usual layout the store shares the
        // log's, and every append would otherwise ask twice. A directory not
        // made yet is kept (its file system is not known until it exists).
        let device = |d: &Path| rustix::fs::stat(d).ok().map(|st| st.st_dev);
        let mut seen: Vec<u64> = device(&self.dir).into_iter().collect();
        let dirs = dirs
            .into_iter()
            .filter(|d| match device(d) {
                Some(dev) if seen.contains(&dev) => false,
                Some(dev) => {
                    seen.push(dev);
                    true
                }
                None => true,
            })
            .collect();
        let _ = self.reserve.set(Reserve { bytes, dirs });
    }

    fn check_reserve(&self) -> Result<()> {
        let Some(r) = self.reserve.get().filter(|r| r.bytes > 0) else {
            return Ok(());
        };
        for dir in std::iter::once(&self.dir).chain(&r.dirs) {
            // A directory not made yet lives on its nearest existing parent's.
            let mut at = dir.as_path();
            let fs = loop {
                match rustix::fs::statvfs(at) {
                    Err(rustix::io::Errno::NOENT) if at.parent().is_some() => {
                        at = at.parent().unwrap_or(at);
                    }
                    other => {
                        break other.map_err(|e| Error::Io {
                            path: dir.clone(),
                            source: e.into(),
                        })?
                    }
                }
            };
            let free = fs.f_bavail.saturating_mul(fs.f_frsize);
            if free < r.bytes {
                return Err(Error::LowSpace {
                    path: dir.clone(),
                    free,
                    reserve: r.bytes,
                });
            }
        }
        Ok(())
    }

    /// Appends and write+fsync batches since open: group commit at work
    /// when the second is smaller.
    pub fn stats(&self) -> (u64, u64) {
        let st = self.lock();
        (st.appends, st.syncs)
    }

    /// Call `observer` with the duration of every batch write and fdatasync
    /// from now on (once per log; later calls are ignored).
    pub fn observe_syncs(&self, observer: SyncObserver) {
        let _ = self.sync_observer.set(observer);
    }

    /// The durable head: (records, hash).
    pub fn head(&self) -> (u64, [u8; 32]) {
        self.lock().durable
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sign and store a checkpoint of the durable head now (if it moved).
    pub fn checkpoint(&self) -> Result<Option<String>> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let mut cp_file = self.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
        let (size, head) = self.head();
        if size == 0 || size <= self.lock().last_checkpoint {
            return Ok(None);
        }
        let cp = Checkpoint {
            origin: self.opts.origin.clone(),
            size,
            head,
            time_ms: now_ms(),
        };
        let note = cp.sign(signer.as_ref())?;
        let mut frame = (note.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(note.as_bytes());
        let path = self.dir.join(CHECKPOINT_FILE);
        cp_file
            .write_all(&frame)
            .and_then(|_| cp_file.sync_data())
            .map_err(io(&path))?;
        if let Some(a) = &self.anchor {
            a.store(&note).map_err(Error::Signer)?;
        }
        self.lock().last_checkpoint = size;
        Ok(Some(note))
    }

    /// The newest stored checkpoint note.
    pub fn latest_checkpoint(&self) -> Result<Option<String>> {
        Ok(read_checkpoints(&self.dir)?.pop())
    }

    /// Write the JSON-lines export of records `from..` with the checkpoint
    /// lines after the record each covers. Returns the number of records.
    pub fn export(dir: &Path, from: u64, out: &mut dyn Write) -> Result<u64> {
        let notes = checkpoints_by_size(dir)?;
        let path = dir.join(SEGMENT_FILE);
        let mut n = 0;
        let w = |e: std::io::Error| Error::Io {
            path: PathBuf::from("export"),
            source: e,
        };
        let scan = scan(&path, |seq, body, hash| {
            if seq >= from {
                if std::str::from_utf8(body).is_err() {
                    return Err(Error::Tampered {
                        seq,
                        reason: "body is not UTF-8".into(),
                    });
                }
                write_export_record(out, seq, body, hash).map_err(w)?;
                n += 1;
            }
            for note in notes.get(&seq).into_iter().flatten() {
                write_export_checkpoint(out, note).map_err(w)?;
            }
            Ok(())
        })?;
        scan.refuse_torn()?;
        Ok(n)
    }
}

/// Why a batch did not become durable.
enum Failure {
    /// The file system is full; the segment is back at the durable head.
    NoSpace,
    /// Anything else: the log takes no more records until reopened.
    Fatal(String),
}

/// Message of a record refused because the audit file system is full.
const NO_SPACE: &str = "no space left for the audit log; the record was not written \
                        (free space on its file system; the log takes records again at once)";

/// ENOSPC or EDQUOT: the write can be undone and tried again later.
fn is_no_space(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// One record line of the export: `{"seq":n,"body":"<JSON text>","hash":"<hex>"}`.
pub(crate) fn write_export_record(
    out: &mut dyn Write,
    seq: u64,
    body: &[u8],
    hash: &[u8; 32],
) -> std::io::Result<()> {
    let text = std::str::from_utf8(body).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("audit record {seq}: body is not UTF-8"),
        )
    })?;
    // Keys in the order DESIGN.md shows them (serde_json's map would sort
    // them).
    let body = serde_json::to_string(text).map_err(std::io::Error::other)?;
    writeln!(
        out,
        "{{\"seq\":{seq},\"body\":{body},\"hash\":\"{}\"}}",
        hex::encode(hash)
    )
}

/// One checkpoint line of the export: `{"checkpoint":"<note>"}`.
pub(crate) fn write_export_checkpoint(out: &mut dyn Write, note: &str) -> std::io::Result<()> {
    writeln!(out, "{}", serde_json::json!({ "checkpoint": note }))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// What `repair` found (and, unless a dry run, dropped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairReport {
    /// Complete records kept.
    pub records: u64,
    /// Offset of the incomplete tail, if any.
    pub offset: u64,
    /// Its bytes (empty when the log was complete).
    pub dropped: Vec<u8>,
}

/// Take the log's writer lock (flock on `lock`): one writer per log, or
/// `Unavailable` naming the likely holder.
fn lock_writer(dir: &Path) -> Result<File> {
    let lock_path = dir.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    lock.try_lock().map_err(|e| match e {
        std::fs::TryLockError::WouldBlock => Error::Unavailable(format!(
            "{} is in use by another process (is kmsd running?)",
            dir.display()
        )),
        std::fs::TryLockError::Error(e) => io(&lock_path)(e),
    })?;
    Ok(lock)
}

/// Find an incomplete tail and, unless `dry_run`, truncate exactly it.
/// A log whose complete records do not chain is never "repaired". The
/// truncation takes the writer lock: a record a running writer is still
/// writing is not a torn tail.
pub fn repair(dir: &Path, dry_run: bool) -> Result<RepairReport> {
    let _lock = if dry_run {
        None
    } else {
        Some(lock_writer(dir)?)
    };
    let path = dir.join(SEGMENT_FILE);
    let scan = scan(&path, |_, _, _| Ok(()))?;
    let Some((offset, _)) = scan.torn else {
        return Ok(RepairReport {
            records: scan.records,
            offset: scan.valid_len,
            dropped: Vec::new(),
        });
    };
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    let mut dropped = Vec::new();
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.read_to_end(&mut dropped))
        .map_err(io(&path))?;
    if !dry_run {
        f.set_len(offset)
            .and_then(|_| f.sync_all())
            .map_err(io(&path))?;
    }
    Ok(RepairReport {
        records: scan.records,
        offset,
        dropped,
    })
}

/// Call `visit` with every record of the log in `dir`, in order, after its
/// chain link is checked. A torn tail is reported as an error.
pub fn for_each_record(dir: &Path, mut visit: impl FnMut(u64, &[u8]) -> Result<()>) -> Result<u64> {
    let scan = scan(&dir.join(SEGMENT_FILE), |seq, body, _| visit(seq, body))?;
    scan.refuse_torn()?;
    Ok(scan.records)
}
