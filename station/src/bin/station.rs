//! `station`: the vBus KMS provisioning-station CLI.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use station::batch::{self, BatchOptions, Summary};
use station::{
    Client, Credential, KeypairFiles, ProvisioningRecord, ReservedFile, Timeouts, SECRET_MODE,
};
use zeroize::Zeroizing;

const EXIT_CODES: &str = "\
Exit status:
  0  success (batch: every row done or skipped; verify-firmware: image accepted)
  1  error: usage, credential, connection, or the appliance refused;
     verify-firmware: the manifest, key or image was refused
  2  batch: some rows were refused or failed (see the summary)

Errors are printed as `error[<code>]: <message>` on standard error; the
code is the appliance's for a refusal (e.g. device_already_certified,
quota_exceeded) and a local one otherwise (transport_error, io_error,
key_permissions_too_open, usage_error, ...).";

const FIRMWARE_EXIT_CODES: &str = "\
Exit status:
  0  the image may be flashed: `OK <product> <version> security version <n> signed <time> by key <id>`
  1  refused, or a file could not be read

Error codes: manifest_malformed, unsupported_algorithm, invalid_product,
invalid_version, digest_length_invalid, public_key_invalid, key_id_mismatch,
algorithm_mismatch, manifest_signature_invalid, image_digest_mismatch,
security_version_too_low, io_error, usage_error.";

const SECRET_HELP: &str = "\
The appliance hands each secret out once, to the station that enrolled the
device: asking again is refused (psk_already_issued, secret_already_issued)
until an officer allows a rotation with
`kmsctl escrow allow-rotation SERIAL --purpose PURPOSE`. The output file is
created (mode 0600, never overwriting: file_exists) before the appliance is
asked, so a file problem never costs the secret. The secret is never logged
nor shown in a message.

Exit status: 0 written; 1 error, printed as `error[<code>]: <message>`
(device_not_found, psk_already_issued, secret_already_issued,
secret_purpose_unknown, file_exists, transport_error, ...).";

const PROVISION_HELP: &str = "\
The hardware UUID is derived from the device's unique ID (UUIDv8,
SHA-256 of a fixed namespace and the UID; see the README). Each step reads
the device back first: a re-run after any failure finishes the job.

Exit status: 0 provisioned (or already provisioned: nothing changed);
1 error, printed as `error[<code>]: <message>` (device_unreachable,
device_refused, device_already_holds, provision_stopped, the appliance's
code for a refusal such as module_type_not_allowed, transport_error, ...).";

const PROVISION_BATCH_HELP: &str = "\
Output: with a terminal, a progress line per device; otherwise (or piped)
one line per step as it ends (`SERIAL STEP OUTCOME DETAIL`). Then a table:
each device provisioned, already provisioned (nothing changed), or failed
with the step (open, uid, key, certificate, write, psk, lock) and
`error[<code>]: <message>`. --json prints only the final result.

Exit status: 0 every device provisioned or already provisioned; 1 some
device failed, or the list or the credential could not be used.";

/// The serial line's timeouts (`--device serial:…`).
#[derive(clap::Args, Clone, Copy)]
struct SerialArgs {
    /// Serial devices: milliseconds to wait for a reply.
    #[arg(long, value_name = "MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    serial_timeout: u64,
    /// Serial devices: milliseconds to wait for GEN_KEY and SIGN.
    #[arg(long, value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    serial_slow_timeout: u64,
}

impl SerialArgs {
    fn options(self) -> station::serial::SerialOptions {
        station::serial::SerialOptions {
            timeout: Duration::from_millis(self.serial_timeout),
            slow_timeout: Duration::from_millis(self.serial_slow_timeout),
            ..station::serial::SerialOptions::default()
        }
    }
}

/// Images at least this large get a progress bar while they are hashed.
const PROGRESS_FROM: u64 = 16 * 1024 * 1024;

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
    /// Fetch the device's pre-shared key (32 bytes) and write it as 64 hex
    /// digits and a newline.
    #[command(after_help = SECRET_HELP)]
    Psk {
        /// Module serial; the device must have been enrolled by this station.
        #[arg(long)]
        serial: String,
        /// File for the PSK, created with mode 0600 (never overwritten).
        /// Without it the PSK goes to standard output, only for piping into
        /// the injection tool (refused when standard output is a terminal;
        /// --json does not change it).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Fetch one of the device's AES-256 keys (a purpose of its module
    /// type's profile, e.g. `data`) and write it as 64 hex digits and a
    /// newline.
    #[command(after_help = SECRET_HELP)]
    Key {
        /// Module serial; the device must have been enrolled by this station.
        #[arg(long)]
        serial: String,
        /// The key's purpose: an `aes_keys` name of the device's profile.
        #[arg(long)]
        purpose: String,
        /// File for the key, created with mode 0600 (never overwritten).
        /// Without it the key goes to standard output, only for piping into
        /// the injection tool (refused when standard output is a terminal;
        /// --json does not change it).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// For a module without a secure element: have the appliance generate
    /// a P-256 key pair and certify it, and write DIR/key.pem (PKCS#8,
    /// 0600), DIR/cert.pem and DIR/chain.pem.
    #[command(after_help = SECRET_HELP)]
    Keypair {
        /// Module serial, VBUS-{CPU|PWR|PERIPH|COMM}-YYMM-NNNNNN.
        #[arg(long)]
        serial: String,
        /// Hardware UUID of the module.
        #[arg(long)]
        uuid: String,
        /// Directory for key.pem, cert.pem and chain.pem (created if
        /// missing, mode 0700); none of them may exist yet.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
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
    /// Provision one device end to end: its unique ID, a key generated on
    /// the device, a CSR the device signs, enrolment, the certificate and
    /// chain written back, the PSK (--psk), lock-down and the provisioning
    /// record (--record). Every step is skipped when the device already
    /// holds its result, so running it again resumes (never a second
    /// certificate or PSK).
    #[command(after_help = PROVISION_HELP)]
    Provision {
        /// Module serial, VBUS-{CPU|PWR|PERIPH|COMM}-YYMM-NNNNNN.
        #[arg(long)]
        serial: String,
        /// The device: an RFC 7512 URI `pkcs11:token=LABEL?module-path=…&pin-source=FILE`
        /// (or pin-value=…), or a serial line: `serial:/dev/ttyUSB0` or a
        /// `/dev/…` tty path (e.g. the pty printed by `vbus-devsim`).
        #[arg(long, value_name = "URI")]
        device: String,
        /// Inject the device's PSK (fetched once from the appliance).
        #[arg(long)]
        psk: bool,
        /// Provisioning record to attach (JSON, as for `station record`).
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
        #[command(flatten)]
        line: SerialArgs,
    },
    /// Provision several devices at once: the flow of `provision` for each
    /// device of a list, each in a thread of its own, with a progress line
    /// per device and a summary (provisioned, already provisioned, failed
    /// with the step and the error). Running it again resumes every device.
    #[command(after_help = PROVISION_BATCH_HELP)]
    ProvisionBatch {
        /// The devices: one `SERIAL DEVICE` a line (DEVICE as for
        /// `provision --device`); blank lines and `#` comments are ignored.
        #[arg(long, value_name = "FILE")]
        devices: PathBuf,
        /// Devices provisioned at once (1-256).
        #[arg(long, value_name = "N", default_value_t = station::provision_batch::DEFAULT_JOBS,
              value_parser = clap::value_parser!(u16).range(1..=256))]
        jobs: u16,
        /// Inject each device's PSK (fetched once from the appliance).
        #[arg(long)]
        psk: bool,
        #[command(flatten)]
        line: SerialArgs,
    },
    /// Check a firmware image against its signed manifest before flashing,
    /// as the bootloader will: the manufacturer's signature over the whole
    /// manifest, the image digest, and the anti-rollback minimum. Offline:
    /// the appliance is not contacted.
    #[command(after_help = FIRMWARE_EXIT_CODES)]
    VerifyFirmware {
        /// The signed manifest: the binary form (VBFW…) or its JSON form
        /// (recognised by a leading `{`).
        #[arg(long, value_name = "FILE")]
        manifest: PathBuf,
        /// The firmware image; hashed with the manifest's digest algorithm.
        #[arg(long, value_name = "FILE")]
        image: PathBuf,
        /// The manufacturer's public key: a `PUBLIC KEY` PEM (or DER SPKI),
        /// Ed25519 or P-256.
        #[arg(long, value_name = "FILE")]
        pubkey: PathBuf,
        /// Refuse a manifest whose security version is below N (the
        /// device's stored minimum).
        #[arg(long, value_name = "N", default_value_t = 0)]
        min_security_version: u32,
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
        if let Some(fe) = cause.downcast_ref::<firmware::Error>() {
            return fe.code().to_owned();
        }
        if let Some(c) = cause.downcast_ref::<Coded>() {
            return c.code.to_owned();
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
        Command::Psk { serial, out } => {
            secret(cli, serial, "psk", out.as_deref(), |c| c.psk(serial))
        }
        Command::Key {
            serial,
            purpose,
            out,
        } => secret(cli, serial, purpose, out.as_deref(), |c| {
            c.device_key(serial, purpose)
        }),
        Command::Keypair { serial, uuid, out } => keypair(cli, serial, uuid, out),
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
        Command::Provision {
            serial,
            device,
            psk,
            record,
            line,
        } => provision(cli, serial, device, *psk, record.as_deref(), *line),
        Command::ProvisionBatch {
            devices,
            jobs,
            psk,
            line,
        } => provision_batch(cli, devices, usize::from(*jobs), *psk, *line),
        Command::VerifyFirmware {
            manifest,
            image,
            pubkey,
            min_security_version,
        } => verify_firmware(cli, manifest, image, pubkey, *min_security_version),
    }
}

/// What to tell the operator when a secret arrived but could not be
/// written: it is gone, and only an officer can let the device have
/// another.
fn lost(serial: &str, purpose: &str) -> String {
    format!(
        "the appliance issued the {purpose} of {serial} but it could not be written; it is \
         lost: an officer must allow a rotation \
         (kmsctl escrow allow-rotation {serial} --purpose {purpose}) before asking again"
    )
}

/// `station psk` and `station key`: the output reserved first, then the
/// request, then the hex line written.
fn secret(
    cli: &Cli,
    serial: &str,
    purpose: &str,
    out: Option<&Path>,
    fetch: impl FnOnce(&Client) -> station::Result<Zeroizing<Vec<u8>>>,
) -> anyhow::Result<ExitCode> {
    let client = client(cli)?;
    let what = if purpose == "psk" {
        "PSK".to_owned()
    } else {
        format!("{purpose} key")
    };
    let reserved = match out {
        Some(path) => Some(ReservedFile::create(path, SECRET_MODE)?),
        None if std::io::stdout().is_terminal() => bail!(
            "refusing to print the {what} on a terminal: give --out FILE, or pipe standard \
             output into the injection tool"
        ),
        None => None,
    };
    let line = station::secret_hex_line(&fetch(&client)?);
    let Some(file) = reserved else {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(line.as_bytes())
            .and_then(|()| stdout.flush())
            .with_context(|| lost(serial, purpose))?;
        return Ok(ExitCode::SUCCESS);
    };
    let path = file.path().to_owned();
    file.fill(line.as_bytes())
        .with_context(|| lost(serial, purpose))?;
    if cli.json {
        print_json(&json!({
            "serial": serial,
            "purpose": purpose,
            "file": path,
            "mode": format!("{SECRET_MODE:04o}"),
        }))?;
    } else {
        println!(
            "{what} for {serial} written to {} (mode {SECRET_MODE:04o})",
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `station keypair`: the three files reserved first, then the request.
fn keypair(cli: &Cli, serial: &str, uuid: &str, out: &Path) -> anyhow::Result<ExitCode> {
    let client = client(cli)?;
    let files = KeypairFiles::create(out)?;
    let (key_file, cert_file, chain_file) = (
        files.key.path().to_owned(),
        files.cert.path().to_owned(),
        files.chain.path().to_owned(),
    );
    let kp = client.keypair(serial, uuid)?;
    files.fill(&kp).with_context(|| lost(serial, "keypair"))?;
    if cli.json {
        print_json(&json!({
            "serial": serial,
            "serial_number": kp.serial_number,
            "not_after": kp.not_after,
            "certificate": kp.certificate_pem,
            "chain": kp.chain_pem,
            "key_file": key_file,
            "cert_file": cert_file,
            "chain_file": chain_file,
        }))?;
    } else {
        println!(
            "keypair for {serial}: certificate {}, valid until {}",
            kp.serial_number, kp.not_after
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `station provision`.
fn provision(
    cli: &Cli,
    serial: &str,
    device_uri: &str,
    psk: bool,
    record: Option<&Path>,
    line: SerialArgs,
) -> anyhow::Result<ExitCode> {
    let record = match record {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            Some(
                ProvisioningRecord::from_json(&text)
                    .with_context(|| format!("checking {}", file.display()))?,
            )
        }
        None => None,
    };
    let client = client(cli)?;
    let Some(address) = station::device::DeviceAddress::parse(device_uri) else {
        return Err(Coded {
            code: "usage_error",
            message: "--device: a pkcs11: URI, serial:TTY or a /dev/... tty path".into(),
        }
        .into());
    };
    let mut device = address.open(&line.options())?;
    let opts = station::provision::ProvisionOptions {
        serial: serial.to_owned(),
        psk,
        record,
    };
    let json = cli.json;
    let report = station::provision::provision(device.as_mut(), &client, &opts, &mut |s| {
        if !json {
            println!("  {:<12} {:<8} {}", s.step, s.outcome, s.detail);
        }
    })?;
    if json {
        print_json(&report)?;
    } else {
        println!("{serial}: hardware UUID {}", report.hw_uuid);
        println!("  certificate  {}", report.certificate_serial);
        println!("  key sha256   {}", report.public_key_sha256);
        if report.unchanged {
            println!("{serial}: already provisioned; nothing changed");
        } else {
            println!("{serial}: provisioned");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `station provision-batch`.
fn provision_batch(
    cli: &Cli,
    devices_file: &Path,
    jobs: usize,
    psk: bool,
    line: SerialArgs,
) -> anyhow::Result<ExitCode> {
    use station::provision_batch::{self as pb, Event, Outcome};
    let devices = pb::read_devices(devices_file)?;
    let client = client(cli)?;
    let opts = pb::BatchProvisionOptions {
        jobs,
        psk,
        serial: line.options(),
    };
    let width = devices.iter().map(|d| d.serial.len()).max().unwrap_or(0);
    let live = !cli.json && std::io::stdout().is_terminal();
    let multi = indicatif::MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
    let bars: Vec<ProgressBar> = devices
        .iter()
        .map(|d| {
            let bar = if live {
                multi.add(ProgressBar::new_spinner())
            } else {
                ProgressBar::hidden()
            };
            if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix} {wide_msg}") {
                bar.set_style(style);
            }
            bar.set_prefix(format!("{:<width$}", d.serial));
            bar.set_message("waiting");
            bar
        })
        .collect();
    let json = cli.json;
    let events = |event: Event<'_>| match event {
        Event::Started { index, device } => {
            if let Some(bar) = bars.get(index).filter(|_| live) {
                bar.enable_steady_tick(Duration::from_millis(120));
                bar.set_message("starting");
            } else if !json {
                println!("{:<width$}  start        {}", device.serial, device.shown);
            }
        }
        Event::Step {
            index,
            device,
            step,
        } => {
            if let Some(bar) = bars.get(index).filter(|_| live) {
                bar.set_message(format!("{} {}: {}", step.step, step.outcome, step.detail));
            } else if !json {
                println!(
                    "{:<width$}  {:<12} {:<8} {}",
                    device.serial, step.step, step.outcome, step.detail
                );
            }
        }
        Event::Finished { index, result } => {
            let what = match (&result.code, &result.message) {
                (Some(code), Some(message)) => format!(
                    "failed at {}: error[{code}]: {message}",
                    result.step.unwrap_or("?")
                ),
                _ => result.outcome.as_str().to_owned(),
            };
            if let Some(bar) = bars.get(index).filter(|_| live) {
                bar.finish_with_message(what);
            } else if !json {
                println!("{:<width$}  {what}", result.serial);
            }
        }
    };
    let results = pb::provision_batch(&client, &devices, &opts, &events);
    let count = |o: Outcome| results.iter().filter(|r| r.outcome == o).count();
    let (done, already, failed) = (
        count(Outcome::Provisioned),
        count(Outcome::AlreadyProvisioned),
        count(Outcome::Failed),
    );
    if json {
        print_json(&json!({
            "devices": results,
            "provisioned": done,
            "already_provisioned": already,
            "failed": failed,
        }))?;
    } else {
        println!();
        println!(
            "{:<width$}  {:<20} {:<12} error",
            "serial", "result", "step"
        );
        for r in &results {
            let error = match (&r.code, &r.message) {
                (Some(code), Some(message)) => format!("error[{code}]: {message}"),
                _ => String::new(),
            };
            println!(
                "{:<width$}  {:<20} {:<12} {error}",
                r.serial,
                r.outcome.as_str(),
                r.step.unwrap_or("")
            );
        }
        println!();
        println!(
            "{} devices: {done} provisioned, {already} already provisioned, {failed} failed",
            results.len()
        );
    }
    Ok(if failed == 0 && results.len() == devices.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A local refusal with its stable code, for failures that are neither a
/// `station::Error` nor a `firmware::Error`.
#[derive(Debug)]
struct Coded {
    code: &'static str,
    message: String,
}

impl std::fmt::Display for Coded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Coded {}

/// `station verify-firmware`: what the bootloader checks, before flashing.
fn verify_firmware(
    cli: &Cli,
    manifest_path: &Path,
    image_path: &Path,
    pubkey_path: &Path,
    min_security_version: u32,
) -> anyhow::Result<ExitCode> {
    let raw = std::fs::read(manifest_path)
        .with_context(|| format!("reading the manifest {}", manifest_path.display()))?;
    let bytes =
        manifest_bytes(&raw).with_context(|| format!("manifest {}", manifest_path.display()))?;
    let key = read_public_key(pubkey_path)?;
    // The signature first: the digest algorithm used to hash the image is
    // then the signer's, and a forged manifest costs no image read.
    let signed = firmware::verify(&bytes, &key)
        .with_context(|| format!("manifest {}", manifest_path.display()))?;
    let digest = hash_image(image_path, signed.manifest.digest_algorithm)?;
    let signed = firmware::verify_image(&bytes, &digest, &key, min_security_version)
        .with_context(|| format!("image {}", image_path.display()))?;

    let m = &signed.manifest;
    let key_id = hex::encode(m.key_id);
    let signed_at = rfc3339(m.signing_time);
    if cli.json {
        print_json(&json!({
            "status": "ok",
            "product": m.product,
            "version": m.version,
            "security_version": m.security_version,
            "min_security_version": min_security_version,
            "signing_time": m.signing_time,
            "signed_at": signed_at,
            "key_id": key_id,
            "signature_algorithm": m.signature_algorithm.as_str(),
            "digest_algorithm": m.digest_algorithm.as_str(),
            "digest": hex::encode(&m.digest),
            "image": image_path,
            "manifest": manifest_path,
        }))?;
    } else {
        println!(
            "OK {} {} security version {} signed {} by key {}",
            m.product,
            m.version,
            m.security_version,
            signed_at.unwrap_or_else(|| m.signing_time.to_string()),
            key_id.get(..16).unwrap_or(&key_id),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The binary manifest: the file itself, or the encoding of its JSON form
/// (a first non-blank byte `{`; a binary manifest starts with `VBFW`).
fn manifest_bytes(raw: &[u8]) -> anyhow::Result<Vec<u8>> {
    if raw.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Ok(raw.to_vec());
    }
    let json: firmware::ManifestJson = serde_json::from_slice(raw).map_err(|e| Coded {
        code: "manifest_malformed",
        message: format!("not a firmware manifest in the JSON form: {e}"),
    })?;
    Ok(firmware::SignedManifest::try_from(&json)?.encode()?)
}

/// A `PUBLIC KEY` PEM, or a DER SubjectPublicKeyInfo.
fn read_public_key(path: &Path) -> anyhow::Result<firmware::PublicKey> {
    let raw = std::fs::read(path)
        .with_context(|| format!("reading the public key {}", path.display()))?;
    let key = if raw.trim_ascii_start().starts_with(b"-----BEGIN") {
        std::str::from_utf8(&raw)
            .map_err(|_| firmware::Error::KeyInvalid)
            .and_then(firmware::PublicKey::from_pem)
    } else {
        firmware::PublicKey::from_spki_der(&raw)
    };
    key.with_context(|| format!("public key {}", path.display()))
}

/// The image's digest, streamed, with a progress bar for a large image.
fn hash_image(path: &Path, alg: firmware::DigestAlgorithm) -> anyhow::Result<Vec<u8>> {
    let reading = || format!("reading the image {}", path.display());
    let file = std::fs::File::open(path).with_context(reading)?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = if len >= PROGRESS_FROM {
        ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template(
        "hashing {elapsed_precise} [{bar:40}] {bytes}/{total_bytes} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    let digest =
        firmware::digest_reader(alg, file, |n| bar.set_position(n)).with_context(reading)?;
    bar.finish_and_clear();
    Ok(digest)
}

/// RFC 3339 (UTC) of a unix time, if it is one `time` can represent.
fn rfc3339(unix: u64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(unix).ok()?).ok()?;
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
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
