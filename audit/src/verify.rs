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
    let mut input = input;
    let mut line = String::new();
    let mut prefix = String::new();
    let mut unescaped = String::new();
    for n in 0.. {
        line.clear();
        let read = input.read_line(&mut line).map_err(|e| {
            bad(
                last.saturating_add(1),
                format!("reading line {}: {e}", n + 1),
            )
        })?;
        if read == 0 {
            break;
        }
        let line = line.trim_end_matches('\n');
        if line.is_empty() {
            continue;
        }
        let l: Line = match fast_record_line(line, &mut unescaped) {
            Some((seq, body, hash)) => Line {
                seq: Some(seq),
                body: Some(std::borrow::Cow::Borrowed(body)),
                hash: Some(hash),
                checkpoint: None,
            },
            None => serde_json::from_str(line)
                .map_err(|e| bad(last.saturating_add(1), format!("line {}: {e}", n + 1)))?,
        };
        match l {
            Line {
                seq: Some(seq),
                body: Some(body),
                hash: Some(hash),
                checkpoint: None,
            } => {
                if seq == 0 {
                    // `first == 0` means "no record yet": a record 0 would
                    // let the next one restart the numbering and shift
                    // every checkpoint's head by one.
                    return Err(bad(1, "record seq 0: sequence numbers start at 1"));
                }
                if first == 0 {
                    first = seq;
                } else if last.checked_add(1) != Some(seq) {
                    return Err(bad(
                        last.saturating_add(1),
                        format!(
                            "record {} follows record {last}: records missing or reordered",
                            seq
                        ),
                    ));
                }
                let given =
                    decode_hash(hash).ok_or_else(|| bad(seq, "hash is not 64 hex digits"))?;
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
                std::fmt::Write::write_fmt(&mut prefix, format_args!("{seq}"))
                    .map_err(|_| bad(seq, "format"))?;
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
            } => check_checkpoint(verifier, &note, last, first, &heads, &mut report)?,
            _ => {
                return Err(bad(
                    last.saturating_add(1),
                    format!("line {} is neither a record nor a checkpoint", n + 1),
                ))
            }
        }
    }
    if let Some(note) = outside {
        check_checkpoint(verifier, note, last, first, &heads, &mut report)?;
    }
    progress(report.records);
    report.first = first;
    Ok(report)
}

/// Check one checkpoint note against the heads seen so far (`heads[i]` is
/// the hash of record `first + i`; `last` the newest record).
fn check_checkpoint(
    verifier: &Verifier,
    note: &str,
    last: u64,
    first: u64,
    heads: &[[u8; 32]],
    report: &mut Report,
) -> Result<()> {
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
}

/// Verify the log in `dir` directly from its segment (much faster than the
/// JSON export): the chain, every checkpoint stored beside it, and
/// `outside`. The same checks, and the same verdicts, as [`verify_export`].
pub fn verify_log(
    dir: &std::path::Path,
    verifier: &Verifier,
    outside: Option<&str>,
    mut progress: impl FnMut(u64),
) -> Result<Report> {
    let by_size = crate::log::checkpoints_by_size(dir)?;
    let mut heads = Vec::new();
    let mut report = Report {
        first: 1,
        records: 0,
        checkpoints: 0,
        checkpointed: 0,
    };
    let scan = crate::log::scan(&dir.join(crate::SEGMENT_FILE), |seq, _, hash| {
        heads.push(*hash);
        report.records = seq;
        if seq.is_multiple_of(65_536) {
            progress(seq);
        }
        for note in by_size.get(&seq).into_iter().flatten() {
            check_checkpoint(verifier, note, seq, 1, &heads, &mut report)?;
        }
        Ok(())
    })?;
    scan.refuse_torn()?;
    // Checkpoints beyond the last record (a cut tail) or of size 0.
    for note in by_size
        .range(..1)
        .chain(by_size.range(scan.records + 1..))
        .flat_map(|(_, n)| n)
    {
        check_checkpoint(verifier, note, scan.records, 1, &heads, &mut report)?;
    }
    if let Some(note) = outside {
        check_checkpoint(verifier, note, scan.records, 1, &heads, &mut report)?;
    }
    progress(report.records);
    Ok(report)
}

/// 64 hex digits (either case) into 32 bytes, without allocating.
fn decode_hash(hex: &str) -> Option<[u8; 32]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let b = hex.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(b[2 * i])? << 4 | digit(b[2 * i + 1])?;
    }
    Some(out)
}

/// The record lines our exporter writes, `{"seq":N,"body":"…","hash":"…"}`,
/// parsed without a general JSON parser: the body string's escapes are
/// undone into `buf`. Anything unexpected returns `None` and the line goes
/// through serde_json instead, so this only changes speed, never verdicts.
fn fast_record_line<'a>(line: &'a str, buf: &'a mut String) -> Option<(u64, &'a str, &'a str)> {
    let rest = line.strip_prefix("{\"seq\":")?;
    let digits = rest.find(',')?;
    let seq: u64 = rest[..digits].parse().ok()?;
    let rest = rest[digits..].strip_prefix(",\"body\":\"")?;
    buf.clear();
    let bytes = rest.as_bytes();
    let mut i = 0;
    let mut start = 0;
    loop {
        // Jump to the next quote or backslash (SIMD in memchr).
        i += memchr::memchr2(b'"', b'\\', &bytes[i..])?;
        if bytes[i] == b'"' {
            break;
        }
        buf.push_str(&rest[start..i]);
        let c = match *bytes.get(i + 1)? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'n' => '\n',
            b't' => '\t',
            b'r' => '\r',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            _ => return None, // \u escapes: leave them to serde_json
        };
        buf.push(c);
        i += 2;
        start = i;
    }
    // Raw control characters are not valid JSON: let serde_json refuse them.
    if bytes[..i].iter().any(|&b| b < 0x20) {
        return None;
    }
    buf.push_str(&rest[start..i]);
    let rest = rest[i..].strip_prefix("\",\"hash\":\"")?;
    let hash = rest.get(..64)?;
    (rest.get(64..)? == "\"}").then_some((seq, buf.as_str(), hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_path_reads_what_serde_json_reads_or_steps_aside() {
        let hash = "ab".repeat(32);
        for body in [
            r#"{"seq":1,"a":"plain"}"#,
            "{\"seq\":1,\"a\":\"quote \\\" backslash \\\\ slash / tab \t newline \n\"}",
            "{\"seq\":1,\"a\":\"unicode é ✓ and a control \u{1}\"}",
        ] {
            let line = format!(
                "{{\"seq\":7,\"body\":{},\"hash\":\"{hash}\"}}",
                serde_json::to_string(body).unwrap()
            );
            let mut buf = String::new();
            match fast_record_line(&line, &mut buf) {
                Some((seq, b, h)) => {
                    assert_eq!((seq, b, h), (7, body, hash.as_str()));
                }
                // \u escapes (the control character) go to serde_json.
                None => assert!(body.contains('\u{1}'), "{line}"),
            }
            let slow: Line<'_> = serde_json::from_str(&line).unwrap();
            assert_eq!(slow.body.as_deref(), Some(body));
        }
        let mut buf = String::new();
        for odd in [
            r#"{"body":"x","seq":1,"hash":"00"}"#,
            r#"{"seq":1,"body":"x","hash":"short"}"#,
            r#"{"seq":1,"body":"unterminated"#,
            r#"{"checkpoint":"note"}"#,
        ] {
            assert!(fast_record_line(odd, &mut buf).is_none(), "{odd}");
        }
    }
}
