//! The offline verifier of the JSON-lines export (DESIGN.md, "Audit log"):
//! record lines `{"seq":n,"body":"<JSON text>","hash":"<hex>"}` and
//! checkpoint lines `{"checkpoint":"<signed note>"}`.

use std::io::BufRead;

use crate::error::{Error, Result};
use crate::note::Verifier;
use crate::record::{chain, Record, GENESIS};

/// What a successful verification covered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// First sequence number in the export.
    pub first: u64,
    /// Records checked.
    pub records: u64,
    /// Checkpoints checked (in the export, plus an outside one).
    pub checkpoints: u64,
    /// Size of the newest checkpoint.
    pub checkpointed: u64,
}

fn bad(seq: u64, reason: impl Into<String>) -> Error {
    Error::Tampered {
        seq,
        reason: reason.into(),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    seq: Option<u64>,
    #[serde(borrow)]
    body: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    hash: Option<&'a str>,
    checkpoint: Option<String>,
}

/// Verify an export: the chain link by link, each record's own `seq`, and
/// every checkpoint's signature and head; `outside` is a checkpoint kept
/// apart from the log (it catches a truncated tail). `progress` is called
/// with the number of records checked so far.
pub fn verify_export(
    input: impl BufRead,
    verifier: &Verifier,
    outside: Option<&str>,
    mut progress: impl FnMut(u64),
) -> Result<Report> {
    let mut heads: Vec<[u8; 32]> = Vec::new(); // heads[i] = hash of record first + i
    let (mut first, mut prev, mut last) = (0u64, GENESIS, 0u64);
    let mut report = Report {
        first: 0,
        records: 0,
        checkpoints: 0,
        checkpointed: 0,
    };
    let check_cp = |note: &str,
                    last: u64,
                    first: u64,
                    heads: &[[u8; 32]],
                    report: &mut Report|
     -> Result<()> {
        let cp = verifier
            .open(note)
            .map_err(|e| bad(last.max(1), format!("checkpoint: {e}")))?;
        if cp.size < report.checkpointed {
            return Err(bad(
                cp.size,
                format!(
                    "checkpoint size {} is smaller than an earlier checkpoint's {}",
                    cp.size, report.checkpointed
                ),
            ));
        }
        if cp.size > last {
            return Err(bad(
                last + 1,
                format!(
                    "checkpoint covers {} records; the log ends at {last}: records removed",
                    cp.size
                ),
            ));
        }
        if cp.size >= first && first > 0 {
            let head = heads[(cp.size - first) as usize];
            if head != cp.head {
                return Err(bad(cp.size, "head hash differs from the signed checkpoint"));
            }
        }
        report.checkpoints += 1;
        report.checkpointed = cp.size;
        Ok(())
    };
    let mut input = input;
    let mut line = String::new();
    let mut prefix = String::new();
    for n in 0.. {
        line.clear();
        let read = input
            .read_line(&mut line)
            .map_err(|e| bad(last + 1, format!("reading line {}: {e}", n + 1)))?;
        if read == 0 {
            break;
        }
        let line = line.trim_end_matches('\n');
        if line.is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(line)
            .map_err(|e| bad(last + 1, format!("line {}: {e}", n + 1)))?;
        match l {
            Line {
                seq: Some(seq),
                body: Some(body),
                hash: Some(hash),
                checkpoint: None,
            } => {
                if first == 0 {
                    first = seq;
                } else if seq != last + 1 {
                    return Err(bad(
                        last + 1,
                        format!(
                            "record {} follows record {last}: records missing or reordered",
                            seq
                        ),
                    ));
                }
                let given: [u8; 32] = hex::decode(hash)
                    .ok()
                    .and_then(|h| h.try_into().ok())
                    .ok_or_else(|| bad(seq, "hash is not 64 hex digits"))?;
                // An export from record 1 is checked from the genesis; a
                // partial one is anchored at its first record.
                let h = if seq == 1 || heads.len() as u64 > 0 {
                    chain(&prev, body.as_bytes())
                } else {
                    given
                };
                if h != given {
                    return Err(bad(
                        seq,
                        "hash does not match the body and the previous hash",
                    ));
                }
                // The body must be a record of this very seq. Bodies are
                // written by one serialiser with `seq` first, so the prefix
                // says it; the full parse runs only when it does not.
                prefix.clear();
                prefix.push_str("{\"seq\":");
                prefix.push_str(&seq.to_string());
                prefix.push(',');
                if !body.starts_with(prefix.as_str()) {
                    let record: Record = serde_json::from_str(&body)
                        .map_err(|e| bad(seq, format!("body is not a record: {e}")))?;
                    if record.seq != seq {
                        return Err(bad(seq, format!("body says seq {}", record.seq)));
                    }
                }
                prev = h;
                heads.push(h);
                last = seq;
                report.records += 1;
                if report.records.is_multiple_of(65_536) {
                    progress(report.records);
                }
            }
            Line {
                checkpoint: Some(note),
                seq: None,
                body: None,
                hash: None,
            } => check_cp(&note, last, first, &heads, &mut report)?,
            _ => {
                return Err(bad(
                    last + 1,
                    format!("line {} is neither a record nor a checkpoint", n + 1),
                ))
            }
        }
    }
    if let Some(note) = outside {
        check_cp(note, last, first, &heads, &mut report)?;
    }
    progress(report.records);
    report.first = first;
    Ok(report)
}
