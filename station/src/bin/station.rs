//! `station`: the vBus KMS provisioning-station CLI.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use serde_json::json;
use station::batch::{self, BatchOptions, Summary};
use station::{Client, Credential, ProvisioningRecord, Timeouts};

const EXIT_CODES: &str = "\
Exit status:
  0  success (batch: every row done or skipped)
  1  error: usage, credential, connection, or the appliance refused
  2  batch: some rows were refused or failed (see the summary)

Errors are printed as `error[<code>]: <message>` on standard error; the
code is the appliance's for a refusal (e.g. device_already_certified,
quota_exceeded) and a local one otherwise (transport_error, io_error,
key_permissions_too_open, usage_error, ...).";

/// vBus KMS provisioning-station client: enrol devices over mutual TLS.
#[derive(Parser)]
#[command(version, about, after_help = EXIT_CODES)]
struct Cli {
    /// Machine-readable JSON output on standard output.
    #[arg(long, global = true)]
    json: bool,
    /// The appliance's mTLS API.
    #[arg(long, global = true, default_value = "https://127.0.0.1:8443")]
    url: String,
    /// Credential directory holding cert.pem, key.pem (0600) and ca.pem
    /// [default: ./credential].
    #[arg(long, global = true, value_name = "DIR")]
    credential: Option<PathBuf>,
    /// Station certificate (instead of --credential; needs --key and --ca).
    #[arg(long, global = true, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// Station private key, mode 0600 (with --cert and --ca).
    #[arg(long, global = true, value_name = "FILE")]
    key: Option<PathBuf>,
    /// The appliance's internal CA, the only one trusted (with --cert and --key).
    #[arg(long, global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Seconds to wait for a connection.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 10)]
    connect_timeout: u64,
    /// Seconds to wait for an answer.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 60)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make this station's key (it never leaves the station) and a CSR for
    /// an officer to certify with `kmsctl station add`.
    Init {
        /// Station identity: 1-64 characters of [A-Za-z0-9._-].
        #[arg(long)]
        id: String,
        /// Directory for key.pem and station.csr (created if missing;
        /// existing files are never overwritten).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Relay one device CSR and write the certificate and chain. Repeating
    /// it for the same device and key returns the same certificate.
    Enroll {
        /// Module serial, VBUS-{CPU|PWR|PERIPH|COMM}-YYMM-NNNNNN.
        #[arg(long)]
        serial: String,
        /// Hardware UUID of the module.
        #[arg(long)]
        uuid: String,
        /// The device's CSR (PEM PKCS#10), made on the device.
        #[arg(long)]
        csr: PathBuf,
        /// Directory for cert.pem and chain.pem.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a device's record (JSON).
    Device {
        /// Module serial.
        #[arg(long)]
        serial: String,
    },
    /// Attach a provisioning record (firmware, test steps, component lots)
    /// to a device; the file is checked locally first.
    Record {
        /// Module serial.
        #[arg(long)]
        serial: String,
        /// The record, JSON: {"firmware_version", "operator", "steps": [{"name",
        /// "passed", "value"?, "unit"?}], "component_lots": [{"component", "lot"}]}.
        #[arg(long)]
        file: PathBuf,
    },
    /// Ask the appliance whether it is up (checks the credential and TLS too).
    Health,
    /// Enrol every device of a CSV (header serial,hw_uuid,csr; csr paths
    /// relative to the CSV). Resumable: devices already in the journal are
    /// skipped, and retrying a device never issues twice.
    #[command(after_help = EXIT_CODES)]
    Batch {
        /// The CSV file.
        file: PathBuf,
        /// Output directory: OUT/<serial>/cert.pem, OUT/<serial>/chain.pem.
        #[arg(long)]
        out: PathBuf,
        /// Concurrent requests.
        #[arg(long, default_value_t = batch::DEFAULT_CONCURRENCY)]
        concurrency: usize,
        /// Resume journal [default: OUT/batch-journal.jsonl].
        #[arg(long)]
        journal: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        no_progress: bool,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors; a usage error exits 1
            // (2 is the batch's "some rows did not succeed").
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            // The stable code first, for scripts; then the whole story.
            eprintln!("error[{}]: {e:#}", error_code(&e));
            ExitCode::FAILURE
        }
    }
}

/// The stable code of an error: the library's, `io_error` for a file the
/// CLI itself read, `usage_error` for a bad combination of options.
fn error_code(e: &anyhow::Error) -> String {
    for cause in e.chain() {
        if let Some(se) = cause.downcast_ref::<station::Error>() {
            return se.code().to_owned();
        }
        if cause.is::<std::io::Error>() {
            return "io_error".to_owned();
        }
    }
    "usage_error".to_owned()
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Init { id, dir } => init(cli, id, dir),
        Command::Enroll {
            serial,
            uuid,
            csr,
            out,
        } => {
            let csr_pem = std::fs::read_to_string(csr)
                .with_context(|| format!("reading the device CSR {}", csr.display()))?;
            let enrolled = client(cli)?.enroll(serial, uuid, &csr_pem)?;
            station::write_certificate(out, &enrolled)?;
            let (cert, chain) = (out.join("cert.pem"), out.join("chain.pem"));
            if cli.json {
                print_json(&json!({
                    "serial": serial,
                    "serial_number": enrolled.serial_number,
                    "not_after": enrolled.not_after,
                    "newly_issued": enrolled.newly_issued,
                    "certificate": enrolled.certificate,
                    "chain": enrolled.chain,
                    "cert_file": cert,
                    "chain_file": chain,
                }))?;
            } else {
                let how = if enrolled.newly_issued {
                    "issued"
                } else {
                    "already issued (returned again)"
                };
                println!("{serial}: certificate {how}");
                println!("  serial number  {}", enrolled.serial_number);
                println!("  not after      {}", enrolled.not_after);
                println!("  certificate    {}", cert.display());
                println!("  chain          {}", chain.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Device { serial } => {
            print_json(&client(cli)?.device(serial)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Record { serial, file } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let record = ProvisioningRecord::from_json(&text)
                .with_context(|| format!("checking {}", file.display()))?;
            let answer = client(cli)?.record(serial, &record)?;
            if cli.json {
                print_json(&answer)?;
            } else {
                println!(
                    "{serial}: provisioning record attached ({} steps, {} component lots)",
                    record.steps.len(),
                    record.component_lots.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Health => {
            let answer = client(cli)?.health()?;
            if cli.json {
                print_json(&answer)?;
            } else {
                let status = answer.get("status").and_then(|s| s.as_str()).unwrap_or("?");
                println!("{}: {status}", cli.url);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Batch {
            file,
            out,
            concurrency,
            journal,
            no_progress,
        } => {
            if *concurrency == 0 {
                bail!("--concurrency must be at least 1");
            }
            let rows = batch::read_csv(file)?;
            let client = client(cli)?;
            let opts = BatchOptions {
                concurrency: *concurrency,
                out_dir: out.clone(),
                journal: journal.clone(),
                progress: !no_progress,
            };
            let summary = batch::run_batch(&client, rows, &opts)?;
            if cli.json {
                print_json(&summary)?;
            } else {
                print_summary(&summary, &opts.journal_path());
            }
            Ok(if summary.all_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
    }
}

fn init(cli: &Cli, id: &str, dir: &Path) -> anyhow::Result<ExitCode> {
    let csr = station::init_station(id, dir)?;
    let key = dir.join(station::KEY_FILE);
    let next = format!("kmsctl station add {id} --csr {}", csr.display());
    if cli.json {
        print_json(&json!({ "id": id, "key": key, "csr": csr, "next": next }))?;
    } else {
        println!(
            "station key  {} (0600; it never leaves this station)",
            key.display()
        );
        println!("station CSR  {}", csr.display());
        println!();
        println!("Next: an officer certifies the station on the appliance:");
        println!("  {next} …");
        println!(
            "then put the station certificate in {} and the appliance's internal CA in {}",
            dir.join("cert.pem").display(),
            dir.join("ca.pem").display()
        );
        println!("and use `station --credential {} …`.", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The credential from --cert/--key/--ca or --credential DIR (default
/// ./credential), and a client of --url.
fn client(cli: &Cli) -> anyhow::Result<Client> {
    let cred = match (&cli.cert, &cli.key, &cli.ca) {
        (None, None, None) => {
            let dir = cli
                .credential
                .clone()
                .unwrap_or_else(|| PathBuf::from("credential"));
            Credential::from_dir(&dir)
                .with_context(|| format!("loading the station credential from {}", dir.display()))?
        }
        (Some(cert), Some(key), Some(ca)) => {
            if cli.credential.is_some() {
                bail!("give either --credential DIR or --cert/--key/--ca, not both");
            }
            Credential::from_files(cert, key, ca).context("loading the station credential")?
        }
        _ => bail!("--cert, --key and --ca go together: give all three (or --credential DIR)"),
    };
    let timeouts = Timeouts {
        connect: Duration::from_secs(cli.connect_timeout),
        read: Duration::from_secs(cli.timeout),
    };
    Ok(Client::with_timeouts(&cli.url, &cred, timeouts)?)
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn print_summary(s: &Summary, journal: &Path) {
    println!("rows      {}", s.total);
    println!("done      {} ({} newly issued)", s.done, s.newly_issued);
    println!("skipped   {} (already in the journal)", s.skipped);
    println!("refused   {}", s.refused_total());
    for (code, n) in &s.refused {
        println!("  {code:<32} {n}");
    }
    println!("failed    {}", s.failed);
    println!("journal   {}", journal.display());
    if !s.failures.is_empty() {
        println!();
        println!("line    serial                  code                             message");
        for f in &s.failures {
            println!(
                "{:<7} {:<23} {:<32} {}",
                f.line, f.serial, f.code, f.message
            );
        }
        if s.failures_omitted > 0 {
            println!("… and {} more not listed", s.failures_omitted);
        }
    }
}
