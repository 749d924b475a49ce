//! Batch CSV parsing, the resume journal and the run itself, with a fake
//! appliance behind the `Enroll` trait (no server needed).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use station::batch::{
    parse_csv, read_csv, run_batch, BatchOptions, Enroll, Journal, ParsedRow, Row, RowError,
};
use station::{Enrolled, Error};

fn row(line: usize, serial: &str, uuid: &str, csr: &str) -> ParsedRow {
    Ok(Row {
        line,
        serial: serial.into(),
        hw_uuid: uuid.into(),
        csr: PathBuf::from(csr),
    })
}

fn bad(line: usize, serial: &str, reason: &str) -> ParsedRow {
    Err(RowError {
        line,
        serial: serial.into(),
        reason: reason.into(),
    })
}

#[test]
fn csv_rows_parse_one_by_one() {
    let base = Path::new("/data/batch");
    let long = "S".repeat(65);
    // (name, line text, expected)
    let cases: Vec<(&str, String, ParsedRow)> = vec![
        (
            "plain row, relative csr",
            "VBUS-CPU-2412-000001,uuid-1,csr/1.pem".into(),
            row(2, "VBUS-CPU-2412-000001", "uuid-1", "/data/batch/csr/1.pem"),
        ),
        (
            "absolute csr path kept",
            "VBUS-CPU-2412-000001,uuid-1,/abs/1.pem".into(),
            row(2, "VBUS-CPU-2412-000001", "uuid-1", "/abs/1.pem"),
        ),
        (
            "spaces around fields and CRLF",
            "  VBUS-CPU-2412-000001 , uuid-1 ,  1.pem  \r".into(),
            row(2, "VBUS-CPU-2412-000001", "uuid-1", "/data/batch/1.pem"),
        ),
        (
            "quoted path with a comma and a quote",
            r#"VBUS-CPU-2412-000001,uuid-1,"a,b ""c"".pem""#.into(),
            row(2, "VBUS-CPU-2412-000001", "uuid-1", r#"/data/batch/a,b "c".pem"#),
        ),
        (
            "too few fields",
            "VBUS-CPU-2412-000001,uuid-1".into(),
            bad(
                2,
                "VBUS-CPU-2412-000001",
                "expected 3 fields (serial,hw_uuid,csr), found 2",
            ),
        ),
        (
            "too many fields",
            "VBUS-CPU-2412-000001,uuid-1,1.pem,extra".into(),
            bad(
                2,
                "VBUS-CPU-2412-000001",
                "expected 3 fields (serial,hw_uuid,csr), found 4",
            ),
        ),
        (
            "empty serial",
            ",uuid-1,1.pem".into(),
            bad(2, "", "empty serial"),
        ),
        (
            "empty hw_uuid",
            "VBUS-CPU-2412-000001,,1.pem".into(),
            bad(2, "VBUS-CPU-2412-000001", "empty hw_uuid"),
        ),
        (
            "empty csr",
            "VBUS-CPU-2412-000001,uuid-1,".into(),
            bad(2, "VBUS-CPU-2412-000001", "empty csr path"),
        ),
        (
            "serial that would escape the output directory",
            "../etc,uuid-1,1.pem".into(),
            bad(
                2,
                "../etc",
                "module serial \"../etc\" is not 1-64 characters of [A-Za-z0-9._-] (not starting with '.')",
            ),
        ),
        (
            "serial too long",
            format!("{long},uuid-1,1.pem"),
            bad(
                2,
                &long,
                &format!(
                    "module serial \"{long}\" is not 1-64 characters of [A-Za-z0-9._-] (not starting with '.')"
                ),
            ),
        ),
        (
            "unterminated quote",
            r#"VBUS-CPU-2412-000001,"uuid-1,1.pem"#.into(),
            bad(2, "", "unterminated quoted field"),
        ),
        (
            "text after a closing quote",
            r#"VBUS-CPU-2412-000001,"uuid"x,1.pem"#.into(),
            bad(2, "", "unexpected 'x' after a quoted field"),
        ),
        (
            "stray quote",
            r#"VBUS-CPU-2412-000001,uu"id,1.pem"#.into(),
            bad(2, "", "quote inside an unquoted field"),
        ),
    ];
    for (name, line, want) in cases {
        let text = format!("serial,hw_uuid,csr\n{line}\n");
        let got = parse_csv(&text, base).unwrap();
        assert_eq!(got, vec![want], "{name}");
    }
}

#[test]
fn csv_skips_comments_and_blank_lines_and_flags_duplicates() {
    let text = "\u{feff}# devices for lot 7\n\
                \n\
                serial,hw_uuid,csr\n\
                # first\n\
                VBUS-CPU-2412-000001,u1,1.pem\n\
                \n   \n\
                  # indented comment\n\
                VBUS-CPU-2412-000002,u2,2.pem\n\
                VBUS-CPU-2412-000001,u9,9.pem\n";
    let got = parse_csv(text, Path::new("d")).unwrap();
    assert_eq!(
        got,
        vec![
            row(5, "VBUS-CPU-2412-000001", "u1", "d/1.pem"),
            row(9, "VBUS-CPU-2412-000002", "u2", "d/2.pem"),
            bad(
                10,
                "VBUS-CPU-2412-000001",
                "serial VBUS-CPU-2412-000001 repeats line 5"
            ),
        ]
    );
}

#[test]
fn csv_without_the_header_is_refused_whole() {
    for (text, want) in [
        ("", "empty"),
        ("# only a comment\n\n", "empty"),
        (
            "VBUS-CPU-2412-000001,u1,1.pem\n",
            "first line must be the header",
        ),
        ("serial,uuid,csr\n", "first line must be the header"),
    ] {
        let e = parse_csv(text, Path::new(".")).unwrap_err();
        assert_eq!(e.code(), "batch_file_invalid", "{text:?}");
        assert!(e.to_string().contains(want), "{text:?}: {e}");
    }
    // Header names are case-insensitive and may be quoted.
    assert!(parse_csv("Serial,\"HW_UUID\",csr\n", Path::new("."))
        .unwrap()
        .is_empty());
}

#[test]
fn read_csv_resolves_against_the_files_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let sub = tmp.path().join("lot7");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(
        sub.join("devices.csv"),
        "serial,hw_uuid,csr\nVBUS-CPU-2412-000001,u1,csr/1.pem\n",
    )
    .unwrap();
    let rows = read_csv(&sub.join("devices.csv")).unwrap();
    assert_eq!(rows[0].as_ref().unwrap().csr, sub.join("csr/1.pem"));

    std::fs::write(sub.join("bad.csv"), "nope\n").unwrap();
    let e = read_csv(&sub.join("bad.csv")).unwrap_err();
    assert!(e.to_string().contains("bad.csv"), "{e}");
}

/// A fake appliance: issues once per serial, remembers calls.
#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<String>>,
    refuse: HashMap<String, (u16, String)>,
    transport: Vec<String>,
}

impl Enroll for Fake {
    fn enroll(&self, serial: &str, hw_uuid: &str, csr_pem: &str) -> station::Result<Enrolled> {
        let mut calls = self.calls.lock().unwrap();
        let newly = !calls.iter().any(|c| c == serial);
        calls.push(serial.to_owned());
        drop(calls);
        if let Some((status, code)) = self.refuse.get(serial) {
            return Err(Error::Refused {
                status: *status,
                code: code.clone(),
                message: format!("no for {serial}"),
                retry_after: None,
            });
        }
        if self.transport.iter().any(|s| s == serial) {
            return Err(Error::Transport("connection reset".into()));
        }
        Ok(Enrolled {
            serial_number: format!("{:032x}", serial.len()),
            certificate: format!("CERT {serial} {hw_uuid} {}", csr_pem.trim()),
            chain: "CHAIN".into(),
            not_after: "2030-01-01T00:00:00Z".into(),
            newly_issued: newly,
        })
    }
}

struct Setup {
    tmp: tempfile::TempDir,
    rows: Vec<ParsedRow>,
}

/// `n` rows VBUS-CPU-2412-00000{i}, each with an existing CSR file.
fn setup(n: usize) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let mut csv = String::from("serial,hw_uuid,csr\n");
    for i in 1..=n {
        let serial = format!("VBUS-CPU-2412-{i:06}");
        std::fs::write(tmp.path().join(format!("{i}.csr")), format!("CSR{i}\n")).unwrap();
        csv.push_str(&format!("{serial},uuid-{i},{i}.csr\n"));
    }
    std::fs::write(tmp.path().join("devices.csv"), csv).unwrap();
    let rows = read_csv(&tmp.path().join("devices.csv")).unwrap();
    Setup { tmp, rows }
}

fn opts(out: &Path) -> BatchOptions {
    BatchOptions::new(out)
}

fn journal_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn batch_writes_certificates_and_journals_each_device() {
    let s = setup(20);
    let out = s.tmp.path().join("out");
    let fake = Fake::default();
    let summary = run_batch(&fake, s.rows, &opts(&out)).unwrap();
    assert_eq!((summary.total, summary.done, summary.skipped), (20, 20, 0));
    assert_eq!(summary.newly_issued, 20);
    assert!(summary.all_ok());
    assert_eq!(fake.calls.lock().unwrap().len(), 20);

    let cert = std::fs::read_to_string(out.join("VBUS-CPU-2412-000007/cert.pem")).unwrap();
    assert_eq!(cert, "CERT VBUS-CPU-2412-000007 uuid-7 CSR7");
    let chain = std::fs::read_to_string(out.join("VBUS-CPU-2412-000007/chain.pem")).unwrap();
    assert_eq!(chain, "CHAIN");
    // No temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(out.join("VBUS-CPU-2412-000007"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    let lines = journal_lines(&out.join("batch-journal.jsonl"));
    assert_eq!(lines.len(), 20);
    let mut serials: Vec<_> = lines
        .iter()
        .map(|l| l["serial"].as_str().unwrap().to_owned())
        .collect();
    serials.sort();
    serials.dedup();
    assert_eq!(serials.len(), 20);
    assert_eq!(lines[0]["newly_issued"], true);
    assert_eq!(lines[0]["serial_number"].as_str().unwrap().len(), 32);
}

#[test]
fn a_second_run_skips_everything_in_the_journal() {
    let s = setup(5);
    let out = s.tmp.path().join("out");
    let fake = Fake::default();
    run_batch(&fake, s.rows.clone(), &opts(&out)).unwrap();
    let again = run_batch(&fake, s.rows, &opts(&out)).unwrap();
    assert_eq!((again.total, again.done, again.skipped), (5, 0, 5));
    assert!(again.all_ok());
    assert_eq!(fake.calls.lock().unwrap().len(), 5, "nothing sent again");
}

#[test]
fn resume_skips_journalled_rows_and_ignores_a_torn_last_line() {
    let s = setup(4);
    let out = s.tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let journal = out.join("batch-journal.jsonl");
    // Device 1 done in an earlier run; the run crashed while appending
    // device 2's line (no newline).
    std::fs::write(
        &journal,
        "{\"serial\":\"VBUS-CPU-2412-000001\",\"serial_number\":\"0a\",\"newly_issued\":true}\n\
         {\"serial\":\"VBUS-CPU-2412-000002\",\"serial_num",
    )
    .unwrap();
    let fake = Fake::default();
    let summary = run_batch(&fake, s.rows, &opts(&out)).unwrap();
    assert_eq!((summary.done, summary.skipped), (3, 1));
    let mut calls = fake.calls.lock().unwrap().clone();
    calls.sort();
    assert_eq!(
        calls,
        [
            "VBUS-CPU-2412-000002",
            "VBUS-CPU-2412-000003",
            "VBUS-CPU-2412-000004"
        ]
    );
    // The torn line is gone and every line parses.
    let lines = journal_lines(&journal);
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["serial"], "VBUS-CPU-2412-000001");
}

#[test]
fn a_damaged_line_inside_the_journal_stops_the_batch_before_it_starts() {
    let s = setup(2);
    let out = s.tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let journal = out.join("custom.jsonl");
    std::fs::write(
        &journal,
        "garbage\n{\"serial\":\"VBUS-CPU-2412-000001\",\"serial_number\":\"0a\",\"newly_issued\":true}\n",
    )
    .unwrap();
    let fake = Fake::default();
    let mut o = opts(&out);
    o.journal = Some(journal.clone());
    let e = run_batch(&fake, s.rows, &o).unwrap_err();
    assert_eq!(e.code(), "journal_corrupt");
    assert!(e.to_string().contains("line 1"), "{e}");
    assert!(fake.calls.lock().unwrap().is_empty());
}

#[test]
fn journal_open_reports_what_is_done() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("j/journal.jsonl");
    let (_, done) = Journal::open(&path).unwrap();
    assert!(done.is_empty());
    assert!(path.exists());
    std::fs::write(
        &path,
        "{\"serial\":\"A\",\"serial_number\":\"01\",\"newly_issued\":false}\n\n{\"serial\":\"B\"",
    )
    .unwrap();
    let (_, done) = Journal::open(&path).unwrap();
    assert_eq!(done.len(), 1);
    assert!(done.contains("A"));
}

#[test]
fn a_journal_is_held_by_one_batch_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("journal.jsonl");
    let (held, _) = Journal::open(&path).unwrap();
    let e = Journal::open(&path).unwrap_err();
    assert_eq!(e.code(), "journal_in_use");
    drop(held);
    Journal::open(&path).unwrap();
}

#[test]
fn refusals_and_failures_are_counted_apart_and_do_not_stop_the_batch() {
    let s = setup(8);
    let mut rows = s.rows;
    rows.push(bad(
        99,
        "VBUS-X",
        "expected 3 fields (serial,hw_uuid,csr), found 2",
    ));
    // Row 6's CSR file is missing.
    std::fs::remove_file(s.tmp.path().join("6.csr")).unwrap();
    let mut fake = Fake::default();
    fake.refuse.insert(
        "VBUS-CPU-2412-000002".into(),
        (409, "device_already_certified".into()),
    );
    fake.refuse.insert(
        "VBUS-CPU-2412-000003".into(),
        (429, "quota_exceeded".into()),
    );
    fake.refuse.insert(
        "VBUS-CPU-2412-000004".into(),
        (429, "quota_exceeded".into()),
    );
    fake.transport.push("VBUS-CPU-2412-000005".into());
    let out = s.tmp.path().join("out");
    let summary = run_batch(&fake, rows, &opts(&out)).unwrap();

    assert_eq!(summary.total, 9);
    assert_eq!(summary.done, 3); // 1, 7, 8
    assert_eq!(summary.refused.get("quota_exceeded"), Some(&2));
    assert_eq!(summary.refused.get("device_already_certified"), Some(&1));
    assert_eq!(summary.failed, 3); // transport, missing CSR, malformed row
    assert!(!summary.all_ok());
    let codes: Vec<(usize, &str)> = summary
        .failures
        .iter()
        .map(|f| (f.line, f.code.as_str()))
        .collect();
    assert_eq!(
        codes,
        [
            (3, "device_already_certified"),
            (4, "quota_exceeded"),
            (5, "quota_exceeded"),
            (6, "transport_error"),
            (7, "csr_unreadable"),
            (99, "row_malformed"),
        ]
    );
    assert!(summary.failures[4].message.contains("6.csr"));
    // Only the done rows are journalled: a rerun retries the others.
    assert_eq!(journal_lines(&out.join("batch-journal.jsonl")).len(), 3);
    assert!(!out.join("VBUS-CPU-2412-000002").exists());

    // The summary is plain serde.
    let json = serde_json::to_value(&summary).unwrap();
    assert_eq!(json["refused"]["quota_exceeded"], 2);
    assert_eq!(json["failures"][0]["serial"], "VBUS-CPU-2412-000002");
}

#[test]
fn failures_listed_are_capped() {
    let rows: Vec<ParsedRow> = (1..=1005).map(|i| bad(i, "", "empty serial")).collect();
    let tmp = tempfile::tempdir().unwrap();
    let summary = run_batch(&Fake::default(), rows, &opts(tmp.path())).unwrap();
    assert_eq!(summary.failed, 1005);
    assert_eq!(summary.failures.len(), 1000);
    assert_eq!(summary.failures_omitted, 5);
    assert_eq!(summary.failures[999].line, 1000);
}

#[test]
fn many_workers_enrol_each_row_exactly_once() {
    let s = setup(200);
    let out = s.tmp.path().join("out");
    let fake = Fake::default();
    let mut o = opts(&out);
    o.concurrency = 16;
    let summary = run_batch(&fake, s.rows, &o).unwrap();
    assert_eq!(summary.done, 200);
    let mut calls = fake.calls.lock().unwrap().clone();
    calls.sort();
    calls.dedup();
    assert_eq!(calls.len(), 200);
    assert_eq!(fake.calls.lock().unwrap().len(), 200);
    assert_eq!(journal_lines(&out.join("batch-journal.jsonl")).len(), 200);
}

#[test]
fn an_empty_batch_is_fine() {
    let tmp = tempfile::tempdir().unwrap();
    let summary = run_batch(&Fake::default(), Vec::new(), &opts(tmp.path())).unwrap();
    assert_eq!(summary.total, 0);
    assert!(summary.all_ok());
}
