//! Backup and restore of the appliance (`kmsctl backup`, `kmsctl restore`).
//!
//! A backup is one self-describing archive of JSON lines:
//!
//! 1. a header: `{"format":"vbus-kms-backup","version":1,…,"audit_vkey":…}`;
//! 2. the token manifest, one `{"t":"token_key",…}` line per private or
//!    secret key on the token: label, class, algorithm, `CKA_ID`, the public
//!    key of a key pair, and for an AES-GCM key a check value (a random
//!    value sealed under it, with that value's SHA-256). The keys themselves
//!    are never in it: they are generated sensitive and not extractable, so
//!    the token will not wrap them, and they move with the HSM's own backup
//!    or cloning;
//! 3. the public files the appliance keeps beside its state, one
//!    `{"t":"file",…}` line each: the CA certificates of `ca.dir` and the
//!    policy file (which `kmsctl station add` edits);
//! 4. the store, one `{"t":"store","tree":…,"key":…,"value":…}` line per
//!    entry, read as of one moment ([`store::Store::snapshot_each`]);
//!    escrowed secrets are in it only wrapped under the token's KEK;
//! 5. the audit log up to its newest checkpoint, in exactly the lines of
//!    `kmsctl audit export` (`{"seq":…,"body":…,"hash":…}` and
//!    `{"checkpoint":…}`), so an auditor can verify that part alone;
//! 6. an end line `{"t":"end",…,"sha256":…}` with the counts and the SHA-256
//!    of every byte before it.
//!
//! The store is read first and the log after it: every operation journals
//! its record before its store commit, so the log copy covers whatever the
//! store snapshot shows, and start-up reconciliation re-applies records the
//! snapshot lacks, as after a crash.
//!
//! A restore reads the archive twice: first to verify everything (hash,
//! order, chain, checkpoint signatures) without writing a byte, then to
//! write the store and the log into staging directories that are renamed
//! into place once the log there verifies.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use store::{Store, Tree, Write as StoreWrite};

use crate::appliance::Appliance;
use crate::auditing;
use crate::ceremony;
use crate::config::Config;
use crate::error::{io, Error, Result};
use crate::policy::Caller;
use crate::storage::SledStore;
use crate::token::{KeyClass, Sealed, Token, TokenCheckpointSigner, GCM_IV_LEN};

/// `format` of the header line.
pub const FORMAT: &str = "vbus-kms-backup";
/// The archive format version this build writes and reads.
pub const VERSION: u64 = 1;
/// Operation name of a backup in the audit log.
pub const BACKUP_OP: &str = "backup.create";
/// Operation name of a restore in the audit log.
pub const RESTORE_OP: &str = "backup.restore";
/// Associated data of the check values sealed under AES-GCM keys.
const CHECK_AAD: &[u8] = b"vbus-kms/backup key check v1";
/// Longest line a reader accepts (an audit body is at most 1 MiB; a store
/// value, base64, a few MiB): a bound on memory, not a format rule.
const MAX_LINE: u64 = 64 << 20;
/// Most token keys a manifest may list (a bound on memory).
const MAX_TOKEN_KEYS: usize = 10_000;
/// Most bytes the files of an archive may hold together (a bound on
/// memory: they are kept until the restore writes them).
const MAX_FILE_BYTES: usize = 16 << 20;
/// Store entries committed together by a restore.
const RESTORE_BATCH: usize = 1000;

/// The first line of an archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u64,
    /// When the backup was taken, ms since the epoch.
    pub created_ms: u64,
    /// Who asked for it (the audit actor).
    pub created_by: String,
    /// Version of the `kms` crate that wrote it.
    pub kms_version: String,
    /// Taken from a running `kmsd` (true) or a stopped appliance.
    pub online: bool,
    /// The token's label.
    pub token: String,
    /// The audit checkpoint key as a C2SP verifier key: the archive's log
    /// is verified with it, and the target token's audit key must be it.
    pub audit_vkey: String,
}

/// One key of the token manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenKeyEntry {
    /// `CKA_LABEL`.
    pub label: String,
    /// `private` or `secret-key`.
    pub class: String,
    /// `EcP256`, `Ed25519`, `Aes` or `Other`.
    pub algorithm: String,
    /// `CKA_ID`, hex.
    pub id: String,
    /// A key pair's raw public key, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// SHA-256 of the raw public key, hex (what messages show).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_sha256: Option<String>,
    /// For an AES-GCM key: proof that a token holds this very key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<KeyCheck>,
}

/// A random value sealed under a secret key (AES-256-GCM, associated data
/// `vbus-kms/backup key check v1`) and the SHA-256 of that value: a token
/// that opens it to the same hash holds the same key. The value is thrown
/// away; it protects nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyCheck {
    /// GCM nonce, hex.
    pub iv: String,
    /// Ciphertext and tag, base64.
    pub ciphertext: String,
    /// SHA-256 of the sealed value, hex.
    pub sha256: String,
}

/// A file kept beside the state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// `ca` (a file of `ca.dir`) or `policy` (`policy.file`).
    pub kind: String,
    /// Its file name.
    pub name: String,
    /// Permission bits.
    pub mode: u32,
    /// Content, base64.
    pub data: String,
}

/// One store entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreEntry {
    /// Tree name ([`Tree::name`]).
    pub tree: String,
    /// Key, base64.
    pub key: String,
    /// Value, base64.
    pub value: String,
}

/// The last line: counts and the SHA-256 of everything before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct End {
    /// `token_key` lines.
    pub token_keys: u64,
    /// `file` lines.
    pub files: u64,
    /// `store` lines.
    pub store_entries: u64,
    /// Audit records (`seq` lines).
    pub records: u64,
    /// Size of the newest checkpoint (equal to `records`).
    pub checkpoint_size: u64,
    /// SHA-256 of every byte before this line, hex.
    pub sha256: String,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Item {
    TokenKey(TokenKeyEntry),
    File(FileEntry),
    Store(StoreEntry),
    End(End),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordLine {
    seq: u64,
    body: String,
    hash: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointLine {
    checkpoint: String,
}

fn corrupt(why: impl Into<String>) -> Error {
    Error::BackupCorrupt(why.into())
}

/// `[A-Za-z0-9._-]{1,128}`, not starting with a dot: no path tricks.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// ---------------------------------------------------------------------------
// Writing

/// Passes bytes on and hashes them.
pub struct ArchiveWriter<'a> {
    out: &'a mut dyn Write,
    sha: Sha256,
    bytes: u64,
}

impl Write for ArchiveWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.sha.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

fn write_err(e: std::io::Error) -> Error {
    Error::Io {
        path: PathBuf::from("backup archive"),
        source: e,
    }
}

impl<'a> ArchiveWriter<'a> {
    /// Start an archive on `out` with its header.
    pub fn new(out: &'a mut dyn Write, header: &Header) -> Result<Self> {
        let mut w = Self {
            out,
            sha: Sha256::new(),
            bytes: 0,
        };
        w.line(header)?;
        Ok(w)
    }

    fn line<T: Serialize>(&mut self, v: &T) -> Result<()> {
        serde_json::to_writer(&mut *self, v).map_err(|e| write_err(e.into()))?;
        self.write_all(b"\n").map_err(write_err)
    }

    /// Go on with an archive whose first lines were written elsewhere
    /// (hashed from here on).
    fn raw(out: &'a mut dyn Write) -> Self {
        Self {
            out,
            sha: Sha256::new(),
            bytes: 0,
        }
    }

    /// SHA-256 (hex) of what was written so far.
    pub fn digest(&self) -> String {
        hex::encode(self.sha.clone().finalize())
    }

    /// A token manifest line.
    pub fn token_key(&mut self, k: &TokenKeyEntry) -> Result<()> {
        self.line(&Item::TokenKey(k.clone()))
    }

    /// A file line.
    pub fn file(&mut self, f: &FileEntry) -> Result<()> {
        self.line(&Item::File(f.clone()))
    }

    /// A store line.
    pub fn store(&mut self, tree: Tree, key: &[u8], value: &[u8]) -> Result<()> {
        self.line(&store_item(tree, key, value))
    }

    /// The end line (not hashed); flushes. Returns (SHA-256 hex, bytes).
    pub fn finish(self, mut end: End) -> Result<(String, u64)> {
        let Self {
            out,
            sha,
            mut bytes,
        } = self;
        end.sha256 = hex::encode(sha.finalize());
        let mut line = serde_json::to_vec(&Item::End(end.clone()))
            .map_err(|_| Error::Unreachable("end line to JSON"))?;
        line.push(b'\n');
        out.write_all(&line)
            .and_then(|_| out.flush())
            .map_err(write_err)?;
        bytes += line.len() as u64;
        Ok((end.sha256, bytes))
    }
}

fn store_item(tree: Tree, key: &[u8], value: &[u8]) -> Item {
    Item::Store(StoreEntry {
        tree: tree.name().to_owned(),
        key: B64.encode(key),
        value: B64.encode(value),
    })
}

/// What a backup wrote.
#[derive(Clone, Debug, Serialize)]
pub struct BackupSummary {
    /// SHA-256 of the archive's content (as in its end line).
    pub sha256: String,
    /// Archive size.
    pub bytes: u64,
    /// Store entries.
    pub store_entries: u64,
    /// Audit records (1..=records).
    pub records: u64,
    /// The newest checkpoint, covering every record in the archive.
    pub checkpoint: String,
    /// Keys in the token manifest.
    pub token_keys: u64,
    /// Files.
    pub files: u64,
    /// Taken from a running `kmsd`.
    pub online: bool,
    /// SHA-256 of the header, manifest, file and store lines, as the
    /// `backup.create` record holds it.
    pub state_sha256: String,
    /// Sequence number of the `backup.create` record.
    pub record: u64,
}

/// Operation name of a backup that failed after its `backup.create`
/// record (the archive it describes was not delivered).
pub const BACKUP_FAILED_OP: &str = "backup.failed";

/// Write a backup of `app` to `out` for `caller`. `name` is the archive's
/// file name, for the record.
///
/// Under the operations gate, held alone (no request is between its audit
/// record and its store commit meanwhile): the token manifest, the files
/// and the store are written to a spool, `backup.create` is appended with
/// the SHA-256 of those sections (header, manifest, files, store) and their
/// counts, and a checkpoint of the log's head is signed. Then, with the
/// gate released, the archive is the spool followed by the log up to that
/// checkpoint: its log ends with its own `backup.create` record, signed by
/// the token, and its store holds exactly the effects of the records
/// before it. A failure before the record is recorded as `backup.create`
/// with its code; one after it as `backup.failed`.
pub fn create(
    app: &Appliance,
    caller: &Caller,
    online: bool,
    name: &str,
    out: &mut dyn Write,
) -> Result<BackupSummary> {
    let subject: String = name.chars().take(64).collect();
    let failed = |op: &str, e: &Error, details: serde_json::Value| {
        if let Err(not_recorded) =
            auditing::record(&app.audit, caller.name(), op, &subject, e.code(), details)
        {
            tracing::error!(error = %not_recorded, "failed backup not recorded");
        }
    };
    let cut = match cut(app, caller, online, &subject) {
        Ok(c) => c,
        Err(Cutting::BeforeRecord(e)) => {
            failed(BACKUP_OP, &e, json!({ "online": online }));
            return Err(e);
        }
        Err(Cutting::AfterRecord(e, seq, sha)) => {
            failed(
                BACKUP_FAILED_OP,
                &e,
                json!({ "record": seq, "state_sha256": sha, "online": online }),
            );
            return Err(e);
        }
    };
    let (record, state_sha256) = (cut.record, cut.state_sha256.clone());
    write_archive(&app.cfg, cut, out).inspect_err(|e| {
        failed(
            BACKUP_FAILED_OP,
            e,
            json!({ "record": record, "state_sha256": state_sha256, "online": online }),
        )
    })
}

/// What the gated part of a backup produced.
struct Cut {
    /// Header, manifest, files and store lines, rewound.
    spool: File,
    state_sha256: String,
    token_keys: u64,
    files: u64,
    store_entries: u64,
    /// Sequence number of the `backup.create` record.
    record: u64,
    /// The checkpoint the archive's log ends at, and its size.
    note: String,
    size: u64,
    online: bool,
}

enum Cutting {
    BeforeRecord(Error),
    AfterRecord(Error, u64, String),
}

fn cut(
    app: &Appliance,
    caller: &Caller,
    online: bool,
    subject: &str,
) -> std::result::Result<Cut, Cutting> {
    let cfg = &app.cfg;
    let before = Cutting::BeforeRecord;
    let audit_vkey = ceremony::audit_verifier_key(cfg, &app.token).map_err(before)?;
    let verifier = audit::note::Verifier::parse(&audit_vkey).map_err(|e| before(e.into()))?;
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
        created_ms: now_ms(),
        created_by: caller.name().to_owned(),
        kms_version: env!("CARGO_PKG_VERSION").into(),
        online,
        token: app.token.label().to_owned(),
        audit_vkey,
    };
    // Alone from here to the checkpoint: every request holds the gate from
    // before its record until after its commit, so the store read here
    // holds the effect of every record before `backup.create`, and of none
    // after it. The manifest is taken inside too, so every KEK version the
    // store's escrow entries name is in it.
    let _alone = app.quiesce();
    let keys = manifest(&app.token).map_err(before)?;
    let files = collect_files(cfg).map_err(before)?;
    let (spool, state_sha256, store_entries) =
        spool_state(app.store.as_ref(), &header, &keys, &files).map_err(before)?;
    let appended = app
        .audit
        .append(
            audit::Entry::new(caller.name(), BACKUP_OP, subject, "ok").details(json!({
                "state_sha256": state_sha256, "token_keys": keys.len(), "files": files.len(),
                "store_entries": store_entries, "online": online,
                "created_ms": header.created_ms,
            })),
        )
        .map_err(|e| before(e.into()))?;
    let after = |e: Error| Cutting::AfterRecord(e, appended.seq, state_sha256.clone());
    let signed = (|| -> Result<(String, u64)> {
        let note = match app.audit.checkpoint()? {
            Some(n) => n,
            None => app.audit.latest_checkpoint()?.ok_or_else(|| {
                Error::NotInitialized(
                    "the audit log holds no checkpoint to end a backup with".into(),
                )
            })?,
        };
        let cp = verifier.open(&note)?;
        if cp.size < appended.seq {
            return Err(Error::Audit(audit::Error::Checkpoint(format!(
                "the newest checkpoint covers {} records, not the backup's record {}",
                cp.size, appended.seq
            ))));
        }
        Ok((note, cp.size))
    })();
    let (note, size) = signed.map_err(after)?;
    Ok(Cut {
        spool,
        state_sha256: state_sha256.clone(),
        token_keys: keys.len() as u64,
        files: files.len() as u64,
        store_entries,
        record: appended.seq,
        note,
        size,
        online,
    })
}

/// The archive: the spool, then the log up to the cut's checkpoint, then
/// the end line.
fn write_archive(cfg: &Config, cut: Cut, out: &mut dyn Write) -> Result<BackupSummary> {
    let mut w = ArchiveWriter::raw(out);
    std::io::copy(&mut BufReader::new(cut.spool), &mut w).map_err(write_err)?;
    audit::export_upto(&cfg.audit.dir, cut.size, &mut w)?;
    let (sha256, bytes) = w.finish(End {
        token_keys: cut.token_keys,
        files: cut.files,
        store_entries: cut.store_entries,
        records: cut.size,
        checkpoint_size: cut.size,
        sha256: String::new(),
    })?;
    Ok(BackupSummary {
        sha256,
        bytes,
        store_entries: cut.store_entries,
        records: cut.size,
        checkpoint: cut.note,
        token_keys: cut.token_keys,
        files: cut.files,
        online: cut.online,
        state_sha256: cut.state_sha256,
        record: cut.record,
    })
}

/// The header, manifest, file and store lines, written to an unlinked
/// temporary file (the store as of one moment, [`Store::snapshot_each`]),
/// so the gate is held for a local write, not for the archive's journey
/// to its reader. Returns the file (rewound), the SHA-256 of its content
/// and the number of store entries.
fn spool_state(
    store: &dyn Store,
    header: &Header,
    keys: &[TokenKeyEntry],
    files: &[FileEntry],
) -> Result<(File, String, u64)> {
    let path = std::env::temp_dir().join(format!(
        "vbus-kms-backup-{}-{}.spool",
        std::process::id(),
        now_ms()
    ));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io(&path))?;
    // Unlinked at once: gone when closed, whatever happens.
    fs::remove_file(&path).map_err(io(&path))?;
    let mut buf = BufWriter::with_capacity(1 << 20, file);
    let (sha, n) = {
        let mut w = ArchiveWriter::new(&mut buf, header)?;
        for k in keys {
            w.token_key(k)?;
        }
        for f in files {
            w.file(f)?;
        }
        let n = store.snapshot_each(&mut |tree, k, v| {
            w.store(tree, k, v)
                .map_err(|e| store::Error::Unavailable(format!("backup spool: {e}")))
        })?;
        (w.digest(), n)
    };
    let mut file = buf.into_inner().map_err(|e| io(&path)(e.into_error()))?;
    file.seek(SeekFrom::Start(0)).map_err(io(&path))?;
    Ok((file, sha, n))
}

fn token_down(e: &Error) -> bool {
    matches!(
        e,
        Error::TokenUnavailable { .. }
            | Error::PoolExhausted { .. }
            | Error::TokenTimeout { .. }
            | Error::PinRejected { .. }
            | Error::ModuleLoad { .. }
            | Error::TokenNotFound { .. }
    )
}

/// The token manifest: every private and secret key, with what identifies
/// it (never its value).
pub fn manifest(token: &Token) -> Result<Vec<TokenKeyEntry>> {
    let mut keys = token.list_keys()?;
    keys.sort_by(|a, b| (a.class.name(), &a.label).cmp(&(b.class.name(), &b.label)));
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        let mut entry = TokenKeyEntry {
            label: k.label.clone(),
            class: k.class.name().to_owned(),
            algorithm: format!("{:?}", k.algorithm),
            id: hex::encode(&k.id),
            public_key: None,
            public_key_sha256: None,
            check: None,
        };
        match k.class {
            KeyClass::Private => match token.public_key(&k.label) {
                Ok(p) => {
                    entry.public_key_sha256 = Some(hex::encode(Sha256::digest(&p.raw)));
                    entry.public_key = Some(hex::encode(&p.raw));
                }
                Err(e) if token_down(&e) => return Err(e),
                // No public object beside it: identified by label and id.
                Err(_) => {}
            },
            KeyClass::Secret => {
                let value = zeroize::Zeroizing::new(token.random(32)?);
                match token.gcm_encrypt(&k.label, CHECK_AAD, &value) {
                    Ok(sealed) => {
                        entry.check = Some(KeyCheck {
                            iv: hex::encode(sealed.iv),
                            ciphertext: B64.encode(&sealed.ciphertext),
                            sha256: hex::encode(Sha256::digest(value.as_slice())),
                        })
                    }
                    Err(e) if token_down(&e) => return Err(e),
                    // A wrapping-only key cannot seal: label and id only.
                    Err(_) => {}
                }
            }
            KeyClass::Public => {}
        }
        out.push(entry);
    }
    Ok(out)
}

/// The CA certificates of `ca.dir` and the policy file.
fn collect_files(cfg: &Config) -> Result<Vec<FileEntry>> {
    let mut out = Vec::new();
    let dir = &cfg.ca.dir;
    let mut names = Vec::new();
    match fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries {
                let e = e.map_err(io(dir))?;
                let is_file = e.file_type().map_err(io(dir))?.is_file();
                if let (true, Ok(name)) = (is_file, e.file_name().into_string()) {
                    if safe_name(&name) && name.ends_with(".pem") {
                        names.push(name);
                    }
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(dir)(e)),
    }
    names.sort();
    for name in names {
        out.push(read_entry("ca", &dir.join(&name), &name)?);
    }
    if let Some(path) = &cfg.policy.file {
        if path.exists() {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .filter(|n| safe_name(n))
                .unwrap_or("policy.toml")
                .to_owned();
            out.push(read_entry("policy", path, &name)?);
        }
    }
    Ok(out)
}

fn read_entry(kind: &str, path: &Path, name: &str) -> Result<FileEntry> {
    let data = fs::read(path).map_err(io(path))?;
    if data.windows(11).any(|w| w == b"PRIVATE KEY") {
        return Err(Error::InvalidInput(format!(
            "{} holds a private key: a backup never carries key material; move it out of {}",
            path.display(),
            path.parent().unwrap_or(Path::new(".")).display()
        )));
    }
    let mode = fs::metadata(path).map_err(io(path))?.permissions().mode() & 0o777;
    Ok(FileEntry {
        kind: kind.to_owned(),
        name: name.to_owned(),
        mode,
        data: B64.encode(&data),
    })
}

// ---------------------------------------------------------------------------
// Reading

/// One decoded line.
enum Event<'a> {
    Header(&'a Header),
    TokenKey(TokenKeyEntry),
    File(FileEntry, Vec<u8>),
    Store(Tree, Vec<u8>, Vec<u8>),
    Record(u64, &'a [u8], [u8; 32]),
    Checkpoint(String),
}

/// What a walk over a whole, hash-checked archive saw.
struct Walked {
    header: Header,
    end: End,
    sha256: String,
    /// SHA-256 of the lines before the first audit line (header, manifest,
    /// files, store): what `backup.create` records.
    state_sha256: String,
    bytes: u64,
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn decode_hash(hex_text: &str) -> Option<[u8; 32]> {
    hex::decode(hex_text).ok()?.try_into().ok()
}

/// Read an archive line by line, hashing everything before the end line,
/// decoding each line and handing it to `visit`. The first problem in a
/// line is kept while the hash is still computed to the end: a damaged
/// archive is reported as damaged (`backup_corrupt`), and only an intact
/// one as what its content says (`audit_tampered`, …). The header is judged
/// at once: an archive of another format or version is not read further.
fn walk(
    reader: &mut dyn BufRead,
    visit: &mut dyn FnMut(Event<'_>) -> Result<()>,
) -> Result<Walked> {
    let mut sha = Sha256::new();
    let mut line = Vec::new();
    let mut n = 0u64;
    let mut bytes = 0u64;
    let mut header: Option<Header> = None;
    let mut end: Option<End> = None;
    let mut section = 0u8;
    let mut counts = [0u64; 4]; // token keys, files, store entries, records
    let mut first_problem: Option<Error> = None;
    let mut state_sha256: Option<String> = None;
    loop {
        line.clear();
        let read = (&mut *reader)
            .take(MAX_LINE + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| corrupt(format!("reading line {}: {e}", n + 1)))?;
        if read == 0 {
            break;
        }
        n += 1;
        bytes += read as u64;
        if line.last() != Some(&b'\n') {
            return Err(if line.len() as u64 > MAX_LINE {
                corrupt(format!("line {n} is longer than {MAX_LINE} bytes"))
            } else {
                corrupt(format!(
                    "the archive ends in the middle of line {n}: it is truncated"
                ))
            });
        }
        if end.is_some() {
            return Err(corrupt(format!("line {n} follows the end line")));
        }
        let text = &line[..line.len() - 1];
        if n == 1 {
            sha.update(&line);
            let h = read_header(text)?;
            header = Some(h.clone());
            if let Err(e) = visit(Event::Header(&h)) {
                first_problem.get_or_insert(e);
            }
            continue;
        }
        if text.starts_with(b"{\"t\":\"end\"") {
            match serde_json::from_slice::<Item>(text) {
                Ok(Item::End(e)) => end = Some(e),
                _ => return Err(corrupt(format!("line {n}: a malformed end line"))),
            }
            continue;
        }
        if state_sha256.is_none()
            && (text.starts_with(b"{\"seq\":") || text.starts_with(b"{\"checkpoint\":"))
        {
            state_sha256 = Some(hex::encode(sha.clone().finalize()));
        }
        sha.update(&line);
        if first_problem.is_some() {
            continue;
        }
        let outcome = decode_line(n, text, &mut section, &mut counts, visit);
        if let Err(e) = outcome {
            first_problem = Some(e);
        }
    }
    let Some(end) = end else {
        return Err(corrupt(
            "the archive has no end line: it is truncated".to_owned()
                + &first_problem.map_or(String::new(), |e| format!(" ({e})")),
        ));
    };
    let state_sha256 = state_sha256.unwrap_or_else(|| hex::encode(sha.clone().finalize()));
    let digest = hex::encode(sha.finalize());
    if digest != end.sha256 {
        return Err(corrupt(format!(
            "its content's SHA-256 is {digest} but the archive records {}: it was altered or \
             damaged{}",
            end.sha256,
            first_problem.map_or(String::new(), |e| format!(" (first bad line: {e})"))
        )));
    }
    if let Some(e) = first_problem {
        return Err(e);
    }
    let header = header.ok_or_else(|| corrupt("the archive is empty"))?;
    let seen = [end.token_keys, end.files, end.store_entries, end.records];
    if seen != counts {
        return Err(corrupt(format!(
            "the end line counts {seen:?} (token keys, files, store entries, records) but the \
             archive holds {counts:?}"
        )));
    }
    Ok(Walked {
        header,
        end,
        sha256: digest,
        state_sha256,
        bytes,
    })
}

/// The header line: the format and version first (another version is not
/// read further), then the fields of this version.
fn read_header(text: &[u8]) -> Result<Header> {
    let not_ours = || corrupt("not a vBus KMS backup archive (no header line)");
    let v: serde_json::Value = serde_json::from_slice(text).map_err(|_| not_ours())?;
    if v.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(not_ours());
    }
    match v.get("version").and_then(|f| f.as_u64()) {
        Some(VERSION) => {}
        Some(found) => {
            return Err(Error::BackupVersionUnsupported {
                found,
                supported: VERSION,
            })
        }
        None => return Err(corrupt("the header has no version number")),
    }
    serde_json::from_value(v).map_err(|e| corrupt(format!("line 1: header: {e}")))
}

fn decode_line(
    n: u64,
    text: &[u8],
    section: &mut u8,
    counts: &mut [u64; 4],
    visit: &mut dyn FnMut(Event<'_>) -> Result<()>,
) -> Result<()> {
    let bad = |why: String| corrupt(format!("line {n}: {why}"));
    let b64 = |what: &str, s: &str| {
        B64.decode(s)
            .map_err(|_| corrupt(format!("line {n}: {what} is not base64")))
    };
    let mut enter = |s: u8, what: &str| {
        if s < *section {
            return Err(corrupt(format!("line {n}: a {what} line out of order")));
        }
        *section = s;
        Ok(())
    };
    if text.starts_with(b"{\"seq\":") {
        enter(4, "audit record")?;
        let r: RecordLine = serde_json::from_slice(text).map_err(|e| bad(e.to_string()))?;
        let hash = decode_hash(&r.hash).ok_or_else(|| bad("hash is not 64 hex digits".into()))?;
        counts[3] += 1;
        return visit(Event::Record(r.seq, r.body.as_bytes(), hash));
    }
    if text.starts_with(b"{\"checkpoint\":") {
        enter(4, "checkpoint")?;
        let c: CheckpointLine = serde_json::from_slice(text).map_err(|e| bad(e.to_string()))?;
        return visit(Event::Checkpoint(c.checkpoint));
    }
    if !text.starts_with(b"{\"t\":") {
        return Err(bad("neither a header, an item nor an audit line".into()));
    }
    match serde_json::from_slice::<Item>(text).map_err(|e| bad(e.to_string()))? {
        Item::TokenKey(k) => {
            enter(1, "token key")?;
            counts[0] += 1;
            visit(Event::TokenKey(k))
        }
        Item::File(f) => {
            enter(2, "file")?;
            let known = match f.kind.as_str() {
                "ca" => f.name.ends_with(".pem"),
                "policy" => true,
                _ => false,
            };
            if !safe_name(&f.name) || !known {
                return Err(bad(format!("file {:?} of kind {:?}", f.name, f.kind)));
            }
            let data = b64("file data", &f.data)?;
            counts[1] += 1;
            visit(Event::File(f, data))
        }
        Item::Store(s) => {
            enter(3, "store")?;
            let tree = Tree::from_name(&s.tree).ok_or_else(|| {
                bad(format!(
                    "store tree {:?} is unknown to this kmsctl: restore with the kmsctl that \
                     made the backup or a newer one",
                    s.tree
                ))
            })?;
            let (k, v) = (b64("store key", &s.key)?, b64("store value", &s.value)?);
            counts[2] += 1;
            visit(Event::Store(tree, k, v))
        }
        Item::End(_) => Err(bad("an end line that is not the last".into())),
    }
}

/// What a verified archive holds. Nothing is written finding it out.
#[derive(Clone, Debug)]
pub struct Inspection {
    /// The header.
    pub header: Header,
    /// The token manifest.
    pub token_keys: Vec<TokenKeyEntry>,
    /// The files, with their contents.
    pub files: Vec<(FileEntry, Vec<u8>)>,
    /// Store entries.
    pub store_entries: u64,
    /// Audit records: 1..=records.
    pub records: u64,
    /// `hash_records`.
    pub head: [u8; 32],
    /// Checkpoints in the archive.
    pub checkpoints: u64,
    /// The newest, covering every record.
    pub newest_checkpoint: String,
    /// `hash_n` for each asked-for `n` the archive holds.
    pub heads_at: BTreeMap<u64, [u8; 32]>,
    /// SHA-256 of the content.
    pub sha256: String,
    /// Archive size.
    pub bytes: u64,
}

/// Verify an archive completely — its SHA-256, its structure, the audit
/// chain and every checkpoint's signature (by the header's audit key) —
/// and say what it holds; also keep `hash_n` for each `n` in `wanted`.
pub fn inspect(reader: &mut dyn BufRead, wanted: &BTreeSet<u64>) -> Result<Inspection> {
    let mut verifier: Option<audit::note::Verifier> = None;
    let mut keys = Vec::new();
    let mut files = Vec::new();
    let (mut records, mut head, mut store_entries) = (0u64, audit::GENESIS, 0u64);
    let (mut checkpoints, mut newest, mut newest_size) = (0u64, None::<String>, 0u64);
    let mut heads_at = BTreeMap::new();
    let mut prefix = String::new();
    let mut file_bytes = 0usize;
    let mut backup_record: Option<(u64, serde_json::Value)> = None;
    let walked = walk(reader, &mut |event| {
        match event {
            Event::Header(h) => {
                verifier = Some(
                    audit::note::Verifier::parse(&h.audit_vkey)
                        .map_err(|e| corrupt(format!("the header's audit_vkey: {e}")))?,
                );
            }
            Event::TokenKey(k) => {
                if keys.len() >= MAX_TOKEN_KEYS {
                    return Err(corrupt(format!(
                        "more than {MAX_TOKEN_KEYS} token keys in the manifest"
                    )));
                }
                keys.push(k)
            }
            Event::File(f, data) => {
                file_bytes = file_bytes.saturating_add(data.len());
                if file_bytes > MAX_FILE_BYTES {
                    return Err(corrupt(format!(
                        "the files in the archive hold more than {MAX_FILE_BYTES} bytes"
                    )));
                }
                let twice = files.iter().any(|(g, _): &(FileEntry, Vec<u8>)| {
                    g.kind == f.kind && (g.name == f.name || f.kind == "policy")
                });
                if twice {
                    return Err(corrupt(format!(
                        "the {} file {:?} appears twice",
                        f.kind, f.name
                    )));
                }
                files.push((f, data))
            }
            Event::Store(..) => store_entries += 1,
            Event::Record(seq, body, hash) => {
                let tampered =
                    |seq: u64, reason: String| Error::Audit(audit::Error::Tampered { seq, reason });
                if seq != records + 1 {
                    return Err(tampered(
                        records + 1,
                        format!(
                            "record {seq} follows record {records}: records missing or reordered"
                        ),
                    ));
                }
                if audit::chain(&head, body) != hash {
                    return Err(tampered(
                        seq,
                        "hash does not match the body and the previous hash".into(),
                    ));
                }
                prefix.clear();
                prefix.push_str(&format!("{{\"seq\":{seq},"));
                if !body.starts_with(prefix.as_bytes()) {
                    return Err(tampered(seq, format!("the body is not record {seq}")));
                }
                if contains(body, BACKUP_OP.as_bytes()) {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
                        if v["op"] == BACKUP_OP && v["result"] == "ok" {
                            backup_record = Some((seq, v["details"].clone()));
                        }
                    }
                }
                records = seq;
                head = hash;
                if wanted.contains(&seq) {
                    heads_at.insert(seq, hash);
                }
            }
            Event::Checkpoint(note) => {
                let v = verifier
                    .as_ref()
                    .ok_or(Error::Unreachable("checkpoint before the header"))?;
                let cp = v.open(&note)?;
                if cp.size != records || cp.size < newest_size {
                    return Err(Error::Audit(audit::Error::Tampered {
                        seq: cp.size,
                        reason: format!(
                            "a checkpoint of size {} stands after record {records}",
                            cp.size
                        ),
                    }));
                }
                if cp.head != head {
                    return Err(Error::Audit(audit::Error::Tampered {
                        seq: cp.size,
                        reason: "head hash differs from the signed checkpoint".into(),
                    }));
                }
                checkpoints += 1;
                newest_size = cp.size;
                newest = Some(note);
            }
        }
        Ok(())
    })?;
    let newest = newest.ok_or_else(|| corrupt("the archive's audit log has no checkpoint"))?;
    if records == 0 || newest_size != records || walked.end.checkpoint_size != records {
        return Err(corrupt(format!(
            "the archive's audit log holds {records} records but its newest checkpoint covers \
             {newest_size} (the end line says {})",
            walked.end.checkpoint_size
        )));
    }
    // The sections before the log are the ones the appliance described in
    // its own signed `backup.create` record: an archive whose policy, store
    // or manifest was edited (and its end hash recomputed) is refused.
    let Some((seq, details)) = backup_record else {
        return Err(corrupt(
            "the archive's log holds no backup.create record: it was not written by kmsctl \
             backup (or its log was cut)",
        ));
    };
    let recorded = (
        details["state_sha256"].as_str().unwrap_or(""),
        details["token_keys"].as_u64(),
        details["files"].as_u64(),
        details["store_entries"].as_u64(),
    );
    let held = (
        walked.state_sha256.as_str(),
        Some(keys.len() as u64),
        Some(files.len() as u64),
        Some(store_entries),
    );
    if recorded != held {
        return Err(corrupt(format!(
            "the archive's header, token manifest, files and store have SHA-256 {} ({} token \
             keys, {} files, {} store entries) but its signed backup.create record {seq} says \
             {:?} ({:?}, {:?}, {:?}): they were altered after the backup",
            held.0,
            keys.len(),
            files.len(),
            store_entries,
            recorded.0,
            recorded.1,
            recorded.2,
            recorded.3
        )));
    }
    Ok(Inspection {
        header: walked.header,
        token_keys: keys,
        files,
        store_entries,
        records,
        head,
        checkpoints,
        newest_checkpoint: newest,
        heads_at,
        sha256: walked.sha256,
        bytes: walked.bytes,
    })
}

/// [`inspect`] the archive at `path`.
pub fn inspect_file(path: &Path, wanted: &BTreeSet<u64>) -> Result<Inspection> {
    let file = File::open(path).map_err(io(path))?;
    inspect(&mut BufReader::with_capacity(1 << 20, file), wanted)
}

/// Write the archive's store and log into `store_dir` and `audit_dir`
/// (both new): the second pass of a restore. Returns the content's SHA-256
/// and the log's head.
fn write_state(
    reader: &mut dyn BufRead,
    store_dir: &Path,
    audit_dir: &Path,
) -> Result<(String, (u64, [u8; 32]))> {
    let store = SledStore::open(store_dir)?;
    let mut log = audit::LogWriter::create(audit_dir)?;
    let mut batch: Vec<StoreWrite> = Vec::with_capacity(RESTORE_BATCH);
    let flush = |batch: &mut Vec<StoreWrite>| -> Result<()> {
        if let Err(c) = store.commit(batch)? {
            return Err(corrupt(format!(
                "store entry {}/{} appears twice",
                c.tree.name(),
                String::from_utf8_lossy(&c.key)
            )));
        }
        batch.clear();
        Ok(())
    };
    let walked = walk(reader, &mut |event| {
        match event {
            Event::Store(tree, key, value) => {
                batch.push(StoreWrite::Insert { tree, key, value });
                if batch.len() >= RESTORE_BATCH {
                    flush(&mut batch)?;
                }
            }
            Event::Record(seq, body, hash) => log.record(seq, body, &hash)?,
            Event::Checkpoint(note) => log.checkpoint(&note)?,
            _ => {}
        }
        Ok(())
    })?;
    flush(&mut batch)?;
    let head = log.finish()?;
    drop(store); // flushed on drop
    Ok((walked.sha256, head))
}

// ---------------------------------------------------------------------------
// Restore

/// What `kmsctl restore` was asked.
#[derive(Clone, Debug)]
pub struct RestoreOptions<'a> {
    /// The archive.
    pub archive: &'a Path,
    /// A checkpoint note officers kept (`kmsctl audit checkpoint`): the
    /// backup must not be older than it, nor another history.
    pub checkpoint: Option<&'a Path>,
    /// Restore even so, losing the records after the backup (recorded).
    pub accept_rollback: bool,
    /// Rename an existing store, log, CA directory or policy file aside
    /// instead of refusing.
    pub replace_existing: bool,
}

/// A checkpoint the backup was judged against.
#[derive(Clone, Debug, Serialize)]
pub struct Witness {
    /// `the checkpoint officers hold (FILE)` or `the token's own checkpoint`.
    pub witness: String,
    /// Records it covers.
    pub size: u64,
    /// `holds`, `behind` (the backup lacks records) or `forked`.
    pub verdict: &'static str,
}

/// What a restore did.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreReport {
    /// SHA-256 of the archive's content.
    pub archive_sha256: String,
    /// When the backup was taken, RFC 3339.
    pub created: String,
    /// Who took it.
    pub created_by: String,
    /// Audit records restored (1..=records).
    pub records: u64,
    /// Store entries restored.
    pub store_entries: u64,
    /// Files restored (or found identical).
    pub files: Vec<PathBuf>,
    /// Token keys checked against the manifest.
    pub token_keys: usize,
    /// The backup's newest checkpoint.
    pub checkpoint: String,
    /// Sequence number of the `backup.restore` record.
    pub restore_record: u64,
    /// The checkpoints the backup was judged against.
    pub witnesses: Vec<Witness>,
    /// Whether a rollback or fork was accepted (`--accept-rollback`).
    pub accepted_rollback: bool,
    /// Paths renamed aside (`--replace-existing`).
    pub moved_aside: Vec<PathBuf>,
    /// Things the operator should know.
    pub warnings: Vec<String>,
}

/// Whether `path` holds anything (a file, or a directory with entries;
/// `ignore` names entries that do not count).
fn holds_something(path: &Path, ignore: &[&str]) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(path)(e)),
        Ok(m) if !m.is_dir() => Ok(true),
        Ok(_) => {
            for e in fs::read_dir(path).map_err(io(path))? {
                let e = e.map_err(io(path))?;
                let name = e.file_name();
                let counts = match name.to_str() {
                    Some(n) if ignore.contains(&n) => {
                        e.metadata().map_err(io(path))?.len() > 0 || !e.path().is_file()
                    }
                    _ => true,
                };
                if counts {
                    return Ok(true);
                }
            }
            Ok(false)
        }
    }
}

/// The size line of a checkpoint note, unverified (to know which heads to
/// keep while reading; the note is verified before it is believed).
fn note_size(note: &str) -> Option<u64> {
    note.lines().nth(1)?.parse().ok()
}

/// How a checkpoint someone kept judges the backup's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The backup holds every record the checkpoint covers, the same ones.
    Holds,
    /// The backup lacks records the checkpoint covers.
    Behind,
    /// The backup's record at the checkpoint's size is another one.
    Forked,
}

/// Judge `cp` against a log of `records` records whose heads at the sizes
/// asked for are `heads_at`.
pub fn judge(
    cp: &audit::note::Checkpoint,
    records: u64,
    heads_at: &BTreeMap<u64, [u8; 32]>,
) -> Verdict {
    if cp.size > records {
        Verdict::Behind
    } else if cp.size == 0 || heads_at.get(&cp.size) == Some(&cp.head) {
        Verdict::Holds
    } else {
        Verdict::Forked
    }
}

/// The token anchor that a restore writes through without reading: the
/// restore judged the old anchor itself, and its first checkpoint replaces
/// it.
struct ReplaceAnchor {
    token: Arc<Token>,
    label: String,
}

impl audit::CheckpointAnchor for ReplaceAnchor {
    fn load(&self) -> std::result::Result<Vec<String>, audit::SignerError> {
        Ok(Vec::new())
    }

    fn store(&self, note: &str) -> std::result::Result<(), audit::SignerError> {
        Ok(self.token.replace_data(&self.label, note.as_bytes())?)
    }
}

/// Check the token against the backup's manifest and audit key.
fn check_manifest(cfg: &Config, token: &Arc<Token>, insp: &Inspection) -> Result<()> {
    let on_token = token.list_keys()?;
    let mut problems = Vec::new();
    for k in &insp.token_keys {
        let Some(found) = on_token
            .iter()
            .find(|t| t.label == k.label && t.class.name() == k.class)
        else {
            problems.push(format!(
                "{:?} ({:?} {:?} key, id {:?}) is missing",
                k.label, k.class, k.algorithm, k.id
            ));
            continue;
        };
        let algorithm = format!("{:?}", found.algorithm);
        if algorithm != k.algorithm {
            problems.push(format!(
                "{:?} is an {algorithm} key on the token, an {:?} key in the backup",
                k.label, k.algorithm
            ));
            continue;
        }
        if let Some(expected) = &k.public_key {
            match token.public_key(&k.label) {
                Ok(p) if hex::encode(&p.raw) == *expected => {}
                Ok(p) => problems.push(format!(
                    "{:?} has another public key (SHA-256 {} on the token, {:?} in the backup)",
                    k.label,
                    hex::encode(Sha256::digest(&p.raw)),
                    k.public_key_sha256.as_deref().unwrap_or("?")
                )),
                Err(e) if token_down(&e) => return Err(e),
                Err(e) => problems.push(format!("{:?}: {e}", k.label)),
            }
        }
        if let Some(check) = &k.check {
            let sealed = decode_hash_iv(&check.iv)
                .zip(B64.decode(&check.ciphertext).ok())
                .map(|(iv, ciphertext)| Sealed { iv, ciphertext });
            let Some(sealed) = sealed else {
                problems.push(format!(
                    "{:?}: the backup's check value is malformed",
                    k.label
                ));
                continue;
            };
            match token.gcm_decrypt(&k.label, &sealed, CHECK_AAD) {
                Ok(v) if hex::encode(Sha256::digest(v.as_slice())) == check.sha256 => {}
                Err(e) if token_down(&e) => return Err(e),
                _ => problems.push(format!(
                    "{:?} is another key (the backup's check value does not open under it)",
                    k.label
                )),
            }
        }
    }
    match ceremony::audit_verifier_key(cfg, token) {
        Ok(vkey) if vkey == insp.header.audit_vkey => {}
        Ok(vkey) => problems.push(format!(
            "the audit key {:?} is {vkey}, the backup's log is signed by {:?}",
            cfg.audit.key, insp.header.audit_vkey
        )),
        Err(e) if token_down(&e) => return Err(e),
        // A missing audit key is already a missing manifest key.
        Err(_) if !problems.is_empty() => {}
        Err(e) => problems.push(format!("the audit key: {e}")),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::TokenManifestMismatch {
            token: token.label().to_owned(),
            problems: problems.join("; "),
        })
    }
}

fn decode_hash_iv(hex_text: &str) -> Option<[u8; GCM_IV_LEN]> {
    hex::decode(hex_text).ok()?.try_into().ok()
}

/// Where each archived file goes on this appliance.
fn file_target(cfg: &Config, f: &FileEntry) -> Option<PathBuf> {
    match f.kind.as_str() {
        "ca" => Some(cfg.ca.dir.join(&f.name)),
        "policy" => cfg.policy.file.clone(),
        _ => None,
    }
}

/// `PATH.<tag>-<unix seconds>` beside `path`.
fn beside(path: &Path, tag: &str) -> PathBuf {
    let stamp = crate::policy::now();
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{tag}-{stamp}"));
    path.with_file_name(name)
}

/// The second pass of a restore: the archive's store and log written into
/// the staging directories (removed first if a crashed restore left them),
/// then the log there judged by the audit crate's own verifier.
fn stage(
    reader: &mut dyn BufRead,
    insp: &Inspection,
    verifier: &audit::note::Verifier,
    store_dir: &Path,
    audit_dir: &Path,
) -> Result<()> {
    for p in [store_dir, audit_dir] {
        if p.exists() {
            fs::remove_dir_all(p).map_err(io(p))?;
        }
    }
    let (sha, head) = write_state(reader, store_dir, audit_dir)?;
    if sha != insp.sha256 || head != (insp.records, insp.head) {
        return Err(corrupt("the archive changed while it was being restored"));
    }
    let report = audit::verify::verify_log(audit_dir, verifier, None, |_| {})?;
    if report.records != insp.records || report.checkpointed != insp.records {
        return Err(corrupt(format!(
            "the restored log verifies to {} records and a checkpoint of {}, not {}",
            report.records, report.checkpointed, insp.records
        )));
    }
    Ok(())
}

/// sled's lock on the database at `path` (the `flock` sled takes on its
/// `db` file), if there is one: held, no kmsd and no other restore opens
/// that store.
fn lock_store(path: &Path) -> Result<Option<File>> {
    let db = path.join("db");
    let file = match OpenOptions::new().read(true).open(&db) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&db)(e)),
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(Error::Audit(audit::Error::Unavailable(format!(
                "{} is in use by another process (kmsd, or another restore)",
                path.display()
            ))))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io(&db)(e)),
    }
}

/// Move every entry of `from` but `keep` into `to` (created), and sync both.
fn move_entries(from: &Path, to: &Path, keep: &[&str]) -> Result<()> {
    fs::create_dir_all(to).map_err(io(to))?;
    for e in fs::read_dir(from).map_err(io(from))? {
        let e = e.map_err(io(from))?;
        let name = e.file_name();
        if name.to_str().is_some_and(|n| keep.contains(&n)) {
            continue;
        }
        let dest = to.join(&name);
        if fs::symlink_metadata(&dest).is_ok() {
            return Err(Error::RestoreTargetNotEmpty { path: dest });
        }
        fs::rename(e.path(), &dest).map_err(io(&dest))?;
    }
    sync_dir(from)?;
    sync_dir(to)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Rename the staging directory `staged` to `target`, which is absent or
/// empty but for the `ignore` files (checked before, or moved aside), and
/// sync the parent directory.
fn place(staged: &Path, target: &Path, ignore: &[&str]) -> Result<()> {
    if target.exists() {
        for name in ignore {
            let p = target.join(name);
            if p.is_file() {
                fs::remove_file(&p).map_err(io(&p))?;
            }
        }
        fs::remove_dir(target).map_err(io(target))?;
    }
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(io(parent))?;
    }
    fs::rename(staged, target).map_err(io(target))?;
    if let Some(parent) = target.parent() {
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io(parent))?;
    }
    Ok(())
}

/// Restore the archive of `opts` onto the appliance of `cfg`, whose token
/// must hold the backup's keys; `actor` is recorded. Refuses, changing
/// nothing, when `kmsd` runs, when the target holds state, when the archive
/// does not verify, when the token lacks a key, and when the backup is
/// older than (or forks from) the checkpoint officers kept or the token's
/// own, unless `accept_rollback`.
pub fn restore(
    cfg: &Config,
    token: &Arc<Token>,
    actor: &str,
    opts: &RestoreOptions<'_>,
) -> Result<RestoreReport> {
    if crate::admin::Client::new(&cfg.server.admin_socket).running() {
        return Err(Error::Audit(audit::Error::Unavailable(format!(
            "kmsd answers on {}: stop it before restoring",
            cfg.server.admin_socket.display()
        ))));
    }
    // Held for the whole restore: the audit directory's writer lock (a
    // kmsd starting now fails to open its log; so does a second restore),
    // and sled's lock on the target store if there is one.
    let audit_lock = audit::LogWriter::lock_dir(&cfg.audit.dir)?;
    let mut store_locks: Vec<File> = lock_store(&cfg.storage.path)?.into_iter().collect();
    let mut occupied = Vec::new();
    if holds_something(&cfg.storage.path, &[])? {
        occupied.push(cfg.storage.path.clone());
    }
    if holds_something(&cfg.audit.dir, &["lock"])? {
        occupied.push(cfg.audit.dir.clone());
    }
    if let (Some(path), false) = (occupied.first(), opts.replace_existing) {
        return Err(Error::RestoreTargetNotEmpty { path: path.clone() });
    }

    // The checkpoints to judge the backup by: the officers' and the token's.
    let officer_note = opts
        .checkpoint
        .map(|p| fs::read_to_string(p).map_err(io(p)))
        .transpose()?;
    let anchor_label = format!("{}-checkpoint", cfg.audit.key);
    let mut anchor_notes = Vec::new();
    for bytes in token.read_data(&anchor_label)? {
        anchor_notes.push(
            String::from_utf8(bytes)
                .map_err(|_| Error::TokenProtocol("checkpoint object is not UTF-8".into()))?,
        );
    }
    let wanted: BTreeSet<u64> = officer_note
        .iter()
        .chain(&anchor_notes)
        .filter_map(|n| note_size(n))
        .collect();

    // First pass: verify everything, write nothing.
    let mut file = File::open(opts.archive).map_err(io(opts.archive))?;
    let insp = inspect(&mut BufReader::with_capacity(1 << 20, &mut file), &wanted)?;
    let mut warnings = Vec::new();
    if insp.header.token != token.label() {
        warnings.push(format!(
            "the backup was taken on token {:?}; this one is {:?}",
            insp.header.token,
            token.label()
        ));
    }
    let mut files = Vec::new();
    for (f, data) in &insp.files {
        let Some(target) = file_target(cfg, f) else {
            warnings.push(format!(
                "the backup holds the policy file {} but policy.file is not configured here: \
                 not restored",
                f.name
            ));
            continue;
        };
        match fs::read(&target) {
            Ok(existing) if existing == *data => {}
            Ok(_) => {
                let path = if f.kind == "ca" {
                    cfg.ca.dir.clone()
                } else {
                    target.clone()
                };
                if !occupied.contains(&path) {
                    occupied.push(path);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&target)(e)),
        }
        files.push((target, f, data));
    }
    if let (Some(path), false) = (occupied.first(), opts.replace_existing) {
        return Err(Error::RestoreTargetNotEmpty { path: path.clone() });
    }
    check_manifest(cfg, token, &insp)?;

    let verifier = audit::note::Verifier::parse(&insp.header.audit_vkey)?;
    let mut witnesses = Vec::new();
    let mut refusals = Vec::new();
    let mut judged = |who: String, note: &str| -> Result<()> {
        let cp = verifier.open(note)?;
        let verdict = judge(&cp, insp.records, &insp.heads_at);
        witnesses.push(Witness {
            witness: who.clone(),
            size: cp.size,
            verdict: match verdict {
                Verdict::Holds => "holds",
                Verdict::Behind => "behind",
                Verdict::Forked => "forked",
            },
        });
        match verdict {
            Verdict::Holds => {}
            Verdict::Behind => refusals.push((
                Error::BackupRolledBack {
                    witness: who,
                    backup: insp.records,
                    checkpoint: cp.size,
                },
                cp,
            )),
            Verdict::Forked => refusals.push((
                Error::BackupForked {
                    witness: who,
                    at: cp.size,
                },
                cp,
            )),
        }
        Ok(())
    };
    if let (Some(note), Some(path)) = (&officer_note, opts.checkpoint) {
        judged(
            format!("the checkpoint officers hold ({})", path.display()),
            note,
        )?;
    }
    // The token keeps the newest checkpoint it signed (normally one note).
    let newest_anchor = anchor_notes
        .iter()
        .filter_map(|n| verifier.open(n).ok().map(|cp| (cp.size, n)))
        .max_by_key(|(size, _)| *size);
    match newest_anchor {
        Some((_, note)) => judged("the token's own checkpoint".into(), note)?,
        None if anchor_notes.is_empty() => warnings.push(
            "the token keeps no audit checkpoint: the backup was not checked against it".into(),
        ),
        None => {
            return Err(Error::Audit(audit::Error::Checkpoint(
                "the token's checkpoint object is not signed by the backup's audit key".into(),
            )))
        }
    }
    if officer_note.is_none() {
        warnings.push(
            "no --checkpoint given: this backup was not checked against the latest checkpoint \
             officers hold, so a rollback to it could not be detected from outside the \
             appliance"
                .into(),
        );
    }
    if !opts.accept_rollback {
        if let Some((e, _)) = refusals.into_iter().next() {
            return Err(e);
        }
        refusals = Vec::new();
    }

    // Second pass: the store and the log, staged beside their places.
    let pid = std::process::id();
    let staged_store = beside(&cfg.storage.path, &format!("restoring-{pid}"));
    let staged_audit = beside(&cfg.audit.dir, &format!("restoring-{pid}"));
    let cleanup = || {
        let _ = fs::remove_dir_all(&staged_store);
        let _ = fs::remove_dir_all(&staged_audit);
    };
    file.seek(SeekFrom::Start(0)).map_err(io(opts.archive))?;
    let staged = stage(
        &mut BufReader::with_capacity(1 << 20, &mut file),
        &insp,
        &verifier,
        &staged_store,
        &staged_audit,
    );
    if let Err(e) = staged {
        cleanup();
        return Err(e);
    }
    // sled's lock on the staged store, which becomes the target's.
    match lock_store(&staged_store) {
        Ok(l) => store_locks.extend(l),
        Err(e) => {
            cleanup();
            return Err(e);
        }
    }

    // Into place. The audit directory stays (its lock file is held): what
    // it held is moved aside entry by entry, and the staged log moved in.
    let mut moved_aside = Vec::new();
    for path in &occupied {
        let aside = beside(path, "before-restore");
        if *path == cfg.audit.dir {
            move_entries(path, &aside, &["lock"])?;
        } else {
            fs::rename(path, &aside).map_err(io(path))?;
        }
        moved_aside.push(aside);
    }
    let placed = place(&staged_store, &cfg.storage.path, &[])
        .and_then(|()| move_entries(&staged_audit, &cfg.audit.dir, &[]))
        .and_then(|()| fs::remove_dir(&staged_audit).map_err(io(&staged_audit)));
    if let Err(e) = placed {
        cleanup();
        return Err(e);
    }
    let mut restored_files = Vec::new();
    let mut dirs_written = BTreeSet::new();
    for (target, f, data) in files {
        if fs::read(&target).is_ok_and(|existing| existing == *data) {
            restored_files.push(target);
            continue;
        }
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let tmp = beside(&target, &format!("restoring-{pid}"));
        let _ = fs::remove_file(&tmp);
        ceremony::write_new(&tmp, data, f.mode & 0o644)?;
        fs::rename(&tmp, &target).map_err(io(&target))?;
        if let Some(parent) = target.parent() {
            dirs_written.insert(parent.to_owned());
        }
        restored_files.push(target);
    }
    // The CA directory (and the policy file's) synced: the renames are
    // durable before the restore is recorded.
    for dir in &dirs_written {
        sync_dir(dir)?;
    }

    // The restore is the first record after the backup's log; its
    // checkpoint replaces the token's.
    let signer: Arc<dyn audit::CheckpointSigner> =
        Arc::new(TokenCheckpointSigner::new(token.clone(), &cfg.audit.key)?);
    // The log takes the writer lock itself from here on (released just
    // before; a kmsd starting in between finds the restored log complete
    // but for this record, and this restore then fails to open it).
    drop(audit_lock);
    let anchor: Arc<dyn audit::CheckpointAnchor> = Arc::new(ReplaceAnchor {
        token: token.clone(),
        label: anchor_label,
    });
    let log = audit::Log::open_anchored(
        &cfg.audit.dir,
        audit::Options {
            origin: cfg.audit.origin.clone(),
            checkpoint_every: cfg.audit.checkpoint_every,
        },
        Some(signer),
        Some(anchor),
    )?;
    let accepted: Vec<_> = refusals
        .iter()
        .map(|(e, cp)| {
            json!({
                "code": e.code(), "reason": e.to_string(), "checkpoint_size": cp.size,
                "checkpoint_head": B64.encode(cp.head),
            })
        })
        .collect();
    let archive_name: String = opts
        .archive
        .file_name()
        .map(|n| n.to_string_lossy().chars().take(64).collect())
        .unwrap_or_else(|| "-".into());
    let appended = log.append(
        audit::Entry::new(actor, RESTORE_OP, &archive_name, "ok").details(json!({
            "archive_sha256": insp.sha256,
            "created_ms": insp.header.created_ms,
            "created_by": insp.header.created_by,
            "records": insp.records,
            "store_entries": insp.store_entries,
            "witnesses": witnesses,
            "accepted_rollback": accepted,
            "moved_aside": moved_aside,
        })),
    )?;
    log.checkpoint()?;
    drop(log);

    // Start-up reconciliation, as kmsd will run it: the store against the log.
    drop(store_locks);
    drop(Appliance::open(cfg.clone(), token.clone())?);

    Ok(RestoreReport {
        archive_sha256: insp.sha256,
        created: crate::policy::rfc3339(i64::try_from(insp.header.created_ms / 1000).unwrap_or(0)),
        created_by: insp.header.created_by,
        records: insp.records,
        store_entries: insp.store_entries,
        files: restored_files,
        token_keys: insp.token_keys.len(),
        checkpoint: insp.newest_checkpoint,
        restore_record: appended.seq,
        witnesses,
        accepted_rollback: !accepted.is_empty(),
        moved_aside,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    struct Key(ed25519_dalek::SigningKey);

    impl audit::CheckpointSigner for Key {
        fn public_key(&self) -> [u8; 32] {
            self.0.verifying_key().to_bytes()
        }
        fn sign(&self, m: &[u8]) -> std::result::Result<[u8; 64], audit::SignerError> {
            use ed25519_dalek::Signer;
            Ok(self.0.sign(m).to_bytes())
        }
    }

    const ORIGIN: &str = "vbus-kms/audit";

    /// A log of `records` records with a checkpoint at the end, and its key;
    /// the last record is `backup.create` with `details` when given.
    fn log(dir: &Path, records: u64, last: Option<serde_json::Value>) -> (Arc<Key>, String) {
        let key = Arc::new(Key(ed25519_dalek::SigningKey::from_bytes(&[9; 32])));
        let log = audit::Log::open(
            dir,
            audit::Options {
                origin: ORIGIN.into(),
                checkpoint_every: 3,
            },
            Some(key.clone()),
        )
        .unwrap();
        for i in 0..records {
            let entry = match (&last, i + 1 == records) {
                (Some(details), true) => {
                    audit::Entry::new("t", BACKUP_OP, "b", "ok").details(details.clone())
                }
                _ => audit::Entry::new("t", "op", &format!("s{i}"), "ok"),
            };
            log.append(entry).unwrap();
        }
        let note = match log.checkpoint().unwrap() {
            Some(n) => n,
            None => log.latest_checkpoint().unwrap().unwrap(),
        };
        (key, note)
    }

    /// An archive over that log with two keys, a file and three entries.
    fn archive(dir: &Path, records: u64) -> (Vec<u8>, String) {
        use audit::CheckpointSigner as _;
        let key = Key(ed25519_dalek::SigningKey::from_bytes(&[9; 32]));
        let header = Header {
            format: FORMAT.into(),
            version: VERSION,
            created_ms: 1,
            created_by: "local:test".into(),
            kms_version: "0".into(),
            online: false,
            token: "vbus-kms".into(),
            audit_vkey: audit::note::verifier_key(ORIGIN, &key.public_key()),
        };
        let mut out = Vec::new();
        let mut w = ArchiveWriter::new(&mut out, &header).unwrap();
        w.token_key(&TokenKeyEntry {
            label: "root-ca".into(),
            class: "private".into(),
            algorithm: "EcP256".into(),
            id: "0102".into(),
            public_key: Some("04ab".into()),
            public_key_sha256: Some("ff".into()),
            check: None,
        })
        .unwrap();
        w.token_key(&TokenKeyEntry {
            label: "escrow-kek-1".into(),
            class: "secret-key".into(),
            algorithm: "Aes".into(),
            id: "03".into(),
            public_key: None,
            public_key_sha256: None,
            check: Some(KeyCheck {
                iv: "00".repeat(12),
                ciphertext: B64.encode([1u8; 48]),
                sha256: "00".repeat(32),
            }),
        })
        .unwrap();
        w.file(&FileEntry {
            kind: "ca".into(),
            name: "root.pem".into(),
            mode: 0o644,
            data: B64.encode(b"-----BEGIN CERTIFICATE-----\n"),
        })
        .unwrap();
        w.store(Tree::Certificates, b"0a1b", b"{\"cert\":1}")
            .unwrap();
        w.store(Tree::Devices, b"VBUS-CPU-2412-000001", b"{}")
            .unwrap();
        w.store(Tree::Escrow, b"VBUS-CPU-2412-000001/psk", &[0, 1, 2, 255])
            .unwrap();
        let state = json!({
            "state_sha256": w.digest(), "token_keys": 2, "files": 1, "store_entries": 3,
        });
        let (_, note) = log(dir, records, Some(state));
        audit::export_upto(dir, records, &mut w).unwrap();
        w.finish(End {
            token_keys: 2,
            files: 1,
            store_entries: 3,
            records,
            checkpoint_size: records,
            sha256: String::new(),
        })
        .unwrap();
        (out, note)
    }

    fn inspect_bytes(bytes: &[u8]) -> Result<Inspection> {
        inspect(&mut &bytes[..], &BTreeSet::from([2, 4]))
    }

    /// `lines` (without an end line) with a correct end line for them.
    fn rehash(lines: &[String], end: &End) -> Vec<u8> {
        let mut body = String::new();
        for l in lines {
            body.push_str(l);
            body.push('\n');
        }
        let mut end = end.clone();
        end.sha256 = hex::encode(Sha256::digest(body.as_bytes()));
        body.push_str(&serde_json::to_string(&Item::End(end)).unwrap());
        body.push('\n');
        body.into_bytes()
    }

    fn split(bytes: &[u8]) -> (Vec<String>, End) {
        let text = std::str::from_utf8(bytes).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let end = match serde_json::from_str::<Item>(&lines.pop().unwrap()).unwrap() {
            Item::End(e) => e,
            _ => panic!("no end line"),
        };
        (lines, end)
    }

    #[test]
    fn an_archive_reads_back_as_written_and_restores_a_log_that_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, note) = archive(dir.path(), 5);
        let insp = inspect_bytes(&bytes).unwrap();
        assert_eq!(insp.header.format, FORMAT);
        assert_eq!(insp.token_keys.len(), 2);
        assert_eq!(
            insp.token_keys[1].check.as_ref().unwrap().iv,
            "00".repeat(12)
        );
        assert_eq!(insp.files.len(), 1);
        assert_eq!(insp.files[0].1, b"-----BEGIN CERTIFICATE-----\n");
        assert_eq!((insp.store_entries, insp.records), (3, 5));
        assert_eq!(insp.newest_checkpoint, note);
        assert_eq!(
            insp.heads_at.keys().copied().collect::<Vec<_>>(),
            vec![2, 4]
        );
        assert_eq!(insp.bytes, bytes.len() as u64);
        // Every line is JSON, and the audit lines are a verifiable export.
        let audit_lines: String = std::str::from_utf8(&bytes)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("{\"seq\"") || l.starts_with("{\"checkpoint\""))
            .map(|l| format!("{l}\n"))
            .collect();
        let v = audit::note::Verifier::parse(&insp.header.audit_vkey).unwrap();
        let r =
            audit::verify::verify_export(audit_lines.as_bytes(), &v, Some(&note), |_| {}).unwrap();
        assert_eq!(r.records, 5);

        let target = tempfile::tempdir().unwrap();
        let (sha, head) = write_state(
            &mut &bytes[..],
            &target.path().join("db"),
            &target.path().join("audit"),
        )
        .unwrap();
        assert_eq!((sha, head), (insp.sha256.clone(), (5, insp.head)));
        let report =
            audit::verify::verify_log(&target.path().join("audit"), &v, Some(&note), |_| {})
                .unwrap();
        assert_eq!(report.records, 5);
        let store = SledStore::open(&target.path().join("db")).unwrap();
        assert_eq!(
            store
                .get(Tree::Escrow, b"VBUS-CPU-2412-000001/psk")
                .unwrap(),
            Some(vec![0, 1, 2, 255])
        );
        assert_eq!(store.len(Tree::Certificates).unwrap(), 1);
    }

    #[test]
    fn every_changed_byte_and_every_cut_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, _) = archive(dir.path(), 4);
        for i in (0..bytes.len()).step_by(7) {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            let err = inspect_bytes(&b).expect_err(&format!("byte {i} changed, accepted"));
            assert!(
                ["backup_corrupt", "backup_version_unsupported"].contains(&err.code()),
                "byte {i}: {err}"
            );
        }
        for cut in (1..bytes.len()).step_by(11).chain([bytes.len() - 1]) {
            let err = inspect_bytes(&bytes[..cut]).expect_err("truncated, accepted");
            assert_eq!(err.code(), "backup_corrupt", "cut at {cut}: {err}");
        }
        let err = inspect_bytes(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let mut flipped = bytes.clone();
        let mid = bytes.len() / 2;
        flipped[mid] ^= 0x01;
        let err = inspect_bytes(&flipped).unwrap_err();
        assert!(err.to_string().contains("SHA-256"), "{err}");
        // Anything after the end line.
        let mut more = bytes.clone();
        more.extend_from_slice(b"{}\n");
        assert_eq!(inspect_bytes(&more).unwrap_err().code(), "backup_corrupt");
        assert_eq!(inspect_bytes(b"").unwrap_err().code(), "backup_corrupt");
        assert_eq!(
            inspect_bytes(b"hello\n").unwrap_err().code(),
            "backup_corrupt"
        );
    }

    #[test]
    fn another_version_or_format_is_refused_by_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, _) = archive(dir.path(), 3);
        let (mut lines, end) = split(&bytes);
        lines[0] = lines[0].replace("\"version\":1", "\"version\":2");
        let err = inspect_bytes(&rehash(&lines, &end)).unwrap_err();
        assert_eq!(err.code(), "backup_version_unsupported", "{err}");
        assert!(err.to_string().contains("version 2"), "{err}");
        lines[0] = lines[0].replace(FORMAT, "tarball");
        let err = inspect_bytes(&rehash(&lines, &end)).unwrap_err();
        assert_eq!(err.code(), "backup_corrupt");
        // An unknown header field in version 1.
        let (mut lines, end) = split(&bytes);
        lines[0] = lines[0].replacen('{', "{\"extra\":1,", 1);
        assert_eq!(
            inspect_bytes(&rehash(&lines, &end)).unwrap_err().code(),
            "backup_corrupt"
        );
    }

    #[test]
    fn an_intact_archive_with_a_forged_log_or_a_wrong_order_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, _) = archive(dir.path(), 4);
        let (lines, end) = split(&bytes);
        // A record body changed and the archive hash recomputed: the chain
        // catches it.
        let at = lines
            .iter()
            .position(|l| l.starts_with("{\"seq\":2,"))
            .unwrap();
        let mut forged = lines.clone();
        forged[at] = forged[at].replace("\\\"s1\\\"", "\\\"s7\\\"");
        assert_ne!(forged, lines);
        let err = inspect_bytes(&rehash(&forged, &end)).unwrap_err();
        assert_eq!(err.code(), "audit_tampered", "{err}");
        // A record dropped.
        let mut gap = lines.clone();
        gap.remove(at);
        let mut gap_end = end.clone();
        gap_end.records -= 1;
        assert_eq!(
            inspect_bytes(&rehash(&gap, &gap_end)).unwrap_err().code(),
            "audit_tampered"
        );
        // A store line before the token keys.
        let mut reordered = lines.clone();
        let store_at = reordered
            .iter()
            .position(|l| l.starts_with("{\"t\":\"store\""))
            .unwrap();
        let line = reordered.remove(store_at);
        reordered.insert(1, line);
        let err = inspect_bytes(&rehash(&reordered, &end)).unwrap_err();
        assert_eq!(err.code(), "backup_corrupt");
        assert!(err.to_string().contains("out of order"), "{err}");
        // Counts that do not match.
        let mut wrong = end.clone();
        wrong.store_entries = 9;
        assert_eq!(
            inspect_bytes(&rehash(&lines, &wrong)).unwrap_err().code(),
            "backup_corrupt"
        );
        // A file name that climbs out of its directory.
        let mut climbing = lines.clone();
        let file_at = climbing
            .iter()
            .position(|l| l.starts_with("{\"t\":\"file\""))
            .unwrap();
        climbing[file_at] = climbing[file_at].replace("root.pem", "../root.pem");
        let err = inspect_bytes(&rehash(&climbing, &end)).unwrap_err();
        assert_eq!(err.code(), "backup_corrupt");
        // An unknown tree.
        let mut tree = lines.clone();
        tree[store_at] = tree[store_at].replace("\"certificates\"", "\"widgets\"");
        let err = inspect_bytes(&rehash(&tree, &end)).unwrap_err();
        assert!(err.to_string().contains("widgets"), "{err}");
    }

    #[test]
    fn checkpoints_judge_a_backup() {
        let heads = BTreeMap::from([(4, [4u8; 32])]);
        let cp = |size, head| audit::note::Checkpoint {
            origin: ORIGIN.into(),
            size,
            head,
            time_ms: 0,
        };
        assert_eq!(judge(&cp(4, [4; 32]), 6, &heads), Verdict::Holds);
        assert_eq!(judge(&cp(4, [5; 32]), 6, &heads), Verdict::Forked);
        assert_eq!(judge(&cp(9, [4; 32]), 6, &heads), Verdict::Behind);
        assert_eq!(judge(&cp(0, [0; 32]), 6, &heads), Verdict::Holds);
        let e = Error::BackupRolledBack {
            witness: "the checkpoint officers hold (latest.note)".into(),
            backup: 6,
            checkpoint: 9,
        };
        assert_eq!(e.code(), "backup_rolled_back");
        assert!(e.to_string().contains("records 7..9 would be lost"), "{e}");
    }

    #[test]
    fn sections_edited_under_a_recomputed_hash_are_refused_by_the_signed_record() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, _) = archive(dir.path(), 4);
        inspect_bytes(&bytes).unwrap();
        let (lines, end) = split(&bytes);
        let at = |lines: &[String], prefix: &str| {
            lines.iter().position(|l| l.starts_with(prefix)).unwrap()
        };
        // A file's content changed, the end hash made to match.
        let mut edited = lines.clone();
        let f = at(&edited, "{\"t\":\"file\"");
        let data = B64.encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n");
        edited[f] = serde_json::to_string(&Item::File(FileEntry {
            kind: "ca".into(),
            name: "root.pem".into(),
            mode: 0o644,
            data,
        }))
        .unwrap();
        let err = inspect_bytes(&rehash(&edited, &end)).unwrap_err();
        assert_eq!(err.code(), "backup_corrupt", "{err}");
        assert!(
            err.to_string().contains("signed backup.create record 4"),
            "{err}"
        );
        // A store entry inserted (counts adjusted too).
        let mut inserted = lines.clone();
        let st = at(&inserted, "{\"t\":\"store\"");
        inserted.insert(
            st,
            serde_json::to_string(&store_item(Tree::Approvals, b"x", b"{}")).unwrap(),
        );
        let mut more = end.clone();
        more.store_entries += 1;
        let err = inspect_bytes(&rehash(&inserted, &more)).unwrap_err();
        assert_eq!(err.code(), "backup_corrupt", "{err}");
        // A log without any backup.create record.
        let plain = tempfile::tempdir().unwrap();
        log(plain.path(), 3, None);
        let mut out = Vec::new();
        let header = split(&bytes).0[0].clone();
        let header: Header = serde_json::from_str(&header).unwrap();
        let mut w = ArchiveWriter::new(&mut out, &header).unwrap();
        audit::export_upto(plain.path(), 3, &mut w).unwrap();
        w.finish(End {
            token_keys: 0,
            files: 0,
            store_entries: 0,
            records: 3,
            checkpoint_size: 3,
            sha256: String::new(),
        })
        .unwrap();
        let err = inspect_bytes(&out).unwrap_err();
        assert!(err.to_string().contains("no backup.create record"), "{err}");
        // Two files of the same name, or a CA file that is not .pem.
        let mut twice = lines.clone();
        let f = at(&twice, "{\"t\":\"file\"");
        let copy = twice[f].clone();
        twice.insert(f, copy);
        let mut two = end.clone();
        two.files += 1;
        let err = inspect_bytes(&rehash(&twice, &two)).unwrap_err();
        assert!(err.to_string().contains("appears twice"), "{err}");
        let mut not_pem = lines.clone();
        not_pem[f] = not_pem[f].replace("root.pem", "root.key");
        let err = inspect_bytes(&rehash(&not_pem, &end)).unwrap_err();
        assert_eq!(err.code(), "backup_corrupt", "{err}");
    }

    #[test]
    fn names_are_plain_file_names() {
        for ok in ["root.pem", "policy.toml", "a-b_c.1"] {
            assert!(safe_name(ok), "{ok}");
        }
        for bad in ["", ".hidden", "../x", "a/b", "a b", "x\n"] {
            assert!(!safe_name(bad), "{bad:?}");
        }
        assert_eq!(note_size("o\n12\nhead\n"), Some(12));
        assert_eq!(note_size("garbage"), None);
    }
}
