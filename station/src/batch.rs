//! Batch enrolment: a CSV of devices, enrolled concurrently, resumable.
//!
//! The input is CSV with the header `serial,hw_uuid,csr`, one device a
//! line; `csr` is the path of the device's PEM CSR (relative paths are
//! resolved against the CSV's directory). Blank lines and lines starting
//! with `#` are skipped. Fields may be double-quoted (`""` inside quotes is
//! a quote); a field cannot span lines. A malformed row is reported as
//! failed with its reason and does not stop the batch.
//!
//! For each device the certificate and chain are written to
//! `OUT/<serial>/cert.pem` and `OUT/<serial>/chain.pem` (each through a
//! temporary file and a rename), then one JSON line
//! `{"serial", "serial_number", "newly_issued"}` is appended, fsync'd, to
//! the journal (`OUT/batch-journal.jsonl` by default). A run skips the
//! devices already in the journal, so an interrupted batch is resumed by
//! running it again.
//!
//! Retrying is safe: a device that was certified but not journalled (a
//! crash between issuance and the journal line, a lost answer) is simply
//! asked again, and the appliance answers a repeated request for the same
//! device and key with the certificate it already issued
//! (`newly_issued: false`), never a second one. A different key for an
//! already certified device is refused (`device_already_certified`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::client::{Client, Enrolled};
use crate::error::{Error, Result};
use crate::fsutil::{check_serial, parent_of, sync_dir, write_atomic};

/// Default number of concurrent requests.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// File name of the journal inside the output directory, by default.
pub const JOURNAL_FILE: &str = "batch-journal.jsonl";
/// At most this many failures are listed in a [`Summary`].
pub const MAX_FAILURES_LISTED: usize = 1000;
/// A device CSR file larger than this is refused unread.
pub const MAX_CSR_BYTES: u64 = 64 * 1024;
/// The code of a malformed CSV row.
pub const ROW_MALFORMED: &str = "row_malformed";
/// The code of a CSR file that cannot be read.
pub const CSR_UNREADABLE: &str = "csr_unreadable";

/// One well-formed device row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// 1-based line number in the CSV.
    pub line: usize,
    /// Module serial.
    pub serial: String,
    /// Hardware UUID.
    pub hw_uuid: String,
    /// The device's CSR file, resolved against the CSV's directory.
    pub csr: PathBuf,
}

/// A row that cannot be enrolled as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// 1-based line number in the CSV.
    pub line: usize,
    /// The serial field as written (may be empty).
    pub serial: String,
    /// Why the row is refused.
    pub reason: String,
}

/// A parsed CSV line: a row to enrol, or why not.
pub type ParsedRow = std::result::Result<Row, RowError>;

/// Reads and parses a batch CSV file; see [`parse_csv`].
pub fn read_csv(path: &Path) -> Result<Vec<ParsedRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    parse_csv(&text, parent_of(path)).map_err(|e| match e {
        Error::BatchFile { reason, .. } => Error::BatchFile {
            path: path.to_owned(),
            reason,
        },
        other => other,
    })
}

/// Parses batch CSV text; relative CSR paths are resolved against
/// `base_dir`. Only a missing or wrong header fails the whole file; every
/// other problem is one [`RowError`].
pub fn parse_csv(text: &str, base_dir: &Path) -> Result<Vec<ParsedRow>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rows = Vec::new();
    let mut header_seen = false;
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = i + 1;
        let content = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = content.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if !header_seen {
            let fields = split_fields(content).unwrap_or_default();
            let names: Vec<String> = fields.iter().map(|f| f.to_ascii_lowercase()).collect();
            if names != ["serial", "hw_uuid", "csr"] {
                return Err(Error::BatchFile {
                    path: PathBuf::new(),
                    reason: format!(
                        "line {line}: the first line must be the header serial,hw_uuid,csr, \
                         found {trimmed:?}"
                    ),
                });
            }
            header_seen = true;
            continue;
        }
        let row =
            parse_row(line, content, base_dir).and_then(|row| match first_line.get(&row.serial) {
                Some(&first) => Err(RowError {
                    line,
                    serial: row.serial.clone(),
                    reason: format!("serial {} repeats line {first}", row.serial),
                }),
                None => {
                    first_line.insert(row.serial.clone(), line);
                    Ok(row)
                }
            });
        rows.push(row);
    }
    if !header_seen {
        return Err(Error::BatchFile {
            path: PathBuf::new(),
            reason: "empty: no header serial,hw_uuid,csr".into(),
        });
    }
    Ok(rows)
}

fn parse_row(line: usize, content: &str, base_dir: &Path) -> ParsedRow {
    let bad = |serial: &str, reason: String| RowError {
        line,
        serial: serial.to_owned(),
        reason,
    };
    let fields = split_fields(content).map_err(|reason| bad("", reason))?;
    let serial = fields.first().map(String::as_str).unwrap_or("");
    if fields.len() != 3 {
        return Err(bad(
            serial,
            format!(
                "expected 3 fields (serial,hw_uuid,csr), found {}",
                fields.len()
            ),
        ));
    }
    let (hw_uuid, csr) = (&fields[1], &fields[2]);
    if serial.is_empty() {
        return Err(bad(serial, "empty serial".into()));
    }
    if let Err(e) = check_serial(serial) {
        return Err(bad(serial, e.to_string()));
    }
    if hw_uuid.is_empty() {
        return Err(bad(serial, "empty hw_uuid".into()));
    }
    if csr.is_empty() {
        return Err(bad(serial, "empty csr path".into()));
    }
    let csr = Path::new(csr);
    let csr = if csr.is_absolute() {
        csr.to_owned()
    } else {
        base_dir.join(csr)
    };
    Ok(Row {
        line,
        serial: serial.to_owned(),
        hw_uuid: hw_uuid.clone(),
        csr,
    })
}

/// Splits one CSV line into trimmed fields; `"…"` quotes a field, `""` is a
/// quote inside one.
fn split_fields(line: &str) -> std::result::Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("unterminated quoted field".into()),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
                chars.next();
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(c) => return Err(format!("unexpected {c:?} after a quoted field")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field.trim().to_owned());
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err("quote inside an unquoted field".into()),
                    Some(c) => field.push(c),
                }
            }
            fields.push(field.trim().to_owned());
        }
    }
}

/// What a batch needs of the appliance: enrolment. [`Client`] is the real
/// one; tests use a fake.
pub trait Enroll: Sync {
    /// Enrols one device; see [`Client::enroll`].
    fn enroll(&self, module_serial: &str, hw_uuid: &str, csr_pem: &str) -> Result<Enrolled>;
}

impl Enroll for Client {
    fn enroll(&self, module_serial: &str, hw_uuid: &str, csr_pem: &str) -> Result<Enrolled> {
        Client::enroll(self, module_serial, hw_uuid, csr_pem)
    }
}

/// How to run a batch.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Concurrent requests (at least 1).
    pub concurrency: usize,
    /// Where certificates (and, by default, the journal) go.
    pub out_dir: PathBuf,
    /// The resume journal; `out_dir/batch-journal.jsonl` when `None`.
    pub journal: Option<PathBuf>,
    /// Draw a progress bar on standard error (only when it is a terminal).
    pub progress: bool,
}

impl BatchOptions {
    /// Defaults: [`DEFAULT_CONCURRENCY`], the default journal, no progress bar.
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        BatchOptions {
            concurrency: DEFAULT_CONCURRENCY,
            out_dir: out_dir.into(),
            journal: None,
            progress: false,
        }
    }

    /// The journal path in effect.
    pub fn journal_path(&self) -> PathBuf {
        self.journal
            .clone()
            .unwrap_or_else(|| self.out_dir.join(JOURNAL_FILE))
    }
}

/// One row that did not end done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Module serial (as written in the CSV for a malformed row).
    pub serial: String,
    /// CSV line.
    pub line: usize,
    /// Stable code: the appliance's for a refusal, a local one otherwise.
    pub code: String,
    /// What happened.
    pub message: String,
}

/// The outcome of a batch. `total = done + skipped + Σ refused + failed`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Rows in the input (malformed ones included).
    pub total: usize,
    /// Rows enrolled by this run (certificate written and journalled).
    pub done: usize,
    /// Of `done`, how many certificates the appliance issued now (the rest
    /// it had issued before and returned again).
    pub newly_issued: usize,
    /// Rows already in the journal, not sent again.
    pub skipped: usize,
    /// Rows the appliance refused, by error code.
    pub refused: BTreeMap<String, usize>,
    /// Rows that failed otherwise: malformed, unreadable CSR, transport,
    /// local write errors.
    pub failed: usize,
    /// Refused and failed rows, by line, at most [`MAX_FAILURES_LISTED`].
    pub failures: Vec<Failure>,
    /// Refused and failed rows left out of `failures`.
    pub failures_omitted: usize,
}

impl Summary {
    /// Every row done or skipped.
    pub fn all_ok(&self) -> bool {
        self.done + self.skipped == self.total
    }

    /// Rows refused, all codes together.
    pub fn refused_total(&self) -> usize {
        self.refused.values().sum()
    }
}

/// One journal line.
#[derive(Debug, Serialize, Deserialize)]
struct JournalEntry {
    serial: String,
    serial_number: String,
    newly_issued: bool,
}

/// The append-only resume journal; one writer at a time.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: Mutex<File>,
}

impl Journal {
    /// Opens (creating) and locks the journal and returns it with the
    /// serials it records. The lock (released when the journal is dropped)
    /// keeps a second batch off the same journal. A torn last line (no newline: a crash mid-append) is
    /// ignored and cut off so the next line starts clean; a damaged line
    /// before it is an error.
    pub fn open(path: &Path) -> Result<(Journal, HashSet<String>)> {
        let dir = parent_of(path);
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| Error::io("opening", path, e))?;
        // One batch per journal at a time; a second one would repeat work.
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::JournalInUse(path.to_owned()))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io("locking", path, e)),
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| Error::io("reading", path, e))?;
        let complete = match bytes.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None => 0,
        };
        if complete < bytes.len() {
            file.set_len(complete as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| Error::io("cutting the torn last line of", path, e))?;
        }
        let mut done = HashSet::new();
        for (i, line) in bytes[..complete].split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let entry: JournalEntry =
                serde_json::from_slice(line).map_err(|e| Error::JournalCorrupt {
                    path: path.to_owned(),
                    line: i + 1,
                    reason: e.to_string(),
                })?;
            done.insert(entry.serial);
        }
        if !existed {
            sync_dir(dir)?;
        }
        Ok((
            Journal {
                path: path.to_owned(),
                file: Mutex::new(file),
            },
            done,
        ))
    }

    /// Appends one line and fsyncs it.
    fn append(&self, entry: &JournalEntry) -> Result<()> {
        let mut line = serde_json::to_vec(entry)
            .map_err(|_| Error::Unreachable("a journal entry always serialises"))?;
        line.push(b'\n');
        let file = self
            .file
            .lock()
            .map_err(|_| Error::Unreachable("journal lock poisoned"))?;
        let mut f: &File = &file;
        f.write_all(&line)
            .and_then(|()| f.sync_data())
            .map_err(|e| Error::io("appending to", &self.path, e))
    }
}

/// Enrols every row, `opts.concurrency` at a time, and sums up. Rows in the
/// journal are skipped; malformed rows are counted as failed. Errors only
/// when the batch cannot start (output directory, journal).
pub fn run_batch<E: Enroll + ?Sized>(
    client: &E,
    rows: Vec<ParsedRow>,
    opts: &BatchOptions,
) -> Result<Summary> {
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| Error::io("creating", &opts.out_dir, e))?;
    let (journal, in_journal) = Journal::open(&opts.journal_path())?;

    let total = rows.len();
    let bar = if opts.progress {
        ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} eta {eta} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }

    let tally = Mutex::new(Tally::default());
    let mut jobs = Vec::new();
    {
        let mut t = lock(&tally)?;
        for row in rows {
            match row {
                Err(bad) => {
                    t.failed(bad.line, &bad.serial, ROW_MALFORMED, &bad.reason);
                    bar.inc(1);
                }
                Ok(row) if in_journal.contains(&row.serial) => {
                    t.summary.skipped += 1;
                    bar.inc(1);
                }
                Ok(row) => jobs.push(row),
            }
        }
        bar.set_message(t.message());
    }

    let workers = opts.concurrency.max(1).min(jobs.len());
    let queue = Mutex::new(jobs.into_iter());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let next = match queue.lock() {
                    Ok(mut q) => q.next(),
                    Err(_) => None,
                };
                let Some(row) = next else { break };
                let outcome = enrol_row(client, &row, &opts.out_dir, &journal);
                if let Ok(mut t) = tally.lock() {
                    t.record(&row, outcome);
                    bar.inc(1);
                    bar.set_message(t.message());
                }
            });
        }
    });
    bar.finish();

    let mut t = tally
        .into_inner()
        .map_err(|_| Error::Unreachable("batch tally lock poisoned"))?;
    t.summary.total = total;
    t.failures.sort_by_key(|f| f.line);
    let listed = t.failures.len().min(MAX_FAILURES_LISTED);
    t.summary.failures_omitted = t.failures.len() - listed;
    t.failures.truncate(listed);
    t.summary.failures = t.failures;
    if t.summary.done + t.summary.skipped + t.summary.refused_total() + t.summary.failed != total {
        return Err(Error::Unreachable("batch rows lost in the count"));
    }
    Ok(t.summary)
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| Error::Unreachable("batch lock poisoned"))
}

/// How one row ended.
enum Outcome {
    /// Enrolled; `true` when newly issued.
    Done(bool),
    /// The appliance said no.
    Refused { code: String, message: String },
    /// Anything else went wrong.
    Failed { code: String, message: String },
}

impl From<Error> for Outcome {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::Refused { code, .. } => Outcome::Refused { code, message },
            other => Outcome::Failed {
                code: other.code().to_owned(),
                message,
            },
        }
    }
}

/// Reads the CSR, enrols, writes the files, journals.
fn enrol_row<E: Enroll + ?Sized>(
    client: &E,
    row: &Row,
    out_dir: &Path,
    journal: &Journal,
) -> Outcome {
    let csr = match read_csr(&row.csr) {
        Ok(csr) => csr,
        Err(message) => {
            return Outcome::Failed {
                code: CSR_UNREADABLE.to_owned(),
                message,
            }
        }
    };
    let enrolled = match client.enroll(&row.serial, &row.hw_uuid, &csr) {
        Ok(e) => e,
        Err(e) => return e.into(),
    };
    let journalled = write_certificate(&out_dir.join(&row.serial), &enrolled).and_then(|()| {
        journal.append(&JournalEntry {
            serial: row.serial.clone(),
            serial_number: enrolled.serial_number.clone(),
            newly_issued: enrolled.newly_issued,
        })
    });
    match journalled {
        Ok(()) => Outcome::Done(enrolled.newly_issued),
        Err(e) => e.into(),
    }
}

fn read_csr(path: &Path) -> std::result::Result<String, String> {
    let shown = path.display();
    let mut f = File::open(path).map_err(|e| format!("reading {shown}: {e}"))?;
    let len = f
        .metadata()
        .map_err(|e| format!("reading {shown}: {e}"))?
        .len();
    if len > MAX_CSR_BYTES {
        return Err(format!(
            "{shown} is {len} bytes, more than a CSR ({MAX_CSR_BYTES} at most)"
        ));
    }
    let mut text = String::new();
    f.read_to_string(&mut text)
        .map_err(|e| format!("reading {shown}: {e}"))?;
    Ok(text)
}

/// Writes `dir/cert.pem` and `dir/chain.pem`, each atomically.
pub fn write_certificate(dir: &Path, enrolled: &Enrolled) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
    write_atomic(
        &dir.join("cert.pem"),
        enrolled.certificate.as_bytes(),
        0o644,
    )?;
    write_atomic(&dir.join("chain.pem"), enrolled.chain.as_bytes(), 0o644)
}

#[derive(Default)]
struct Tally {
    summary: Summary,
    failures: Vec<Failure>,
}

impl Tally {
    fn failed(&mut self, line: usize, serial: &str, code: &str, message: &str) {
        self.summary.failed += 1;
        self.push(line, serial, code, message);
    }

    fn push(&mut self, line: usize, serial: &str, code: &str, message: &str) {
        self.failures.push(Failure {
            serial: serial.to_owned(),
            line,
            code: code.to_owned(),
            message: message.to_owned(),
        });
    }

    fn record(&mut self, row: &Row, outcome: Outcome) {
        match outcome {
            Outcome::Done(newly) => {
                self.summary.done += 1;
                self.summary.newly_issued += usize::from(newly);
            }
            Outcome::Refused { code, message } => {
                *self.summary.refused.entry(code.clone()).or_default() += 1;
                self.push(row.line, &row.serial, &code, &message);
            }
            Outcome::Failed { code, message } => {
                self.failed(row.line, &row.serial, &code, &message)
            }
        }
    }

    fn message(&self) -> String {
        format!(
            "done {} skipped {} refused {} failed {}",
            self.summary.done,
            self.summary.skipped,
            self.summary.refused_total(),
            self.summary.failed
        )
    }
}
