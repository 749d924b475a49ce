//! `kmsctl`: the vBus KMS officer CLI.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kms::admin::{self, Reply, Request};
use kms::appliance::Appliance;
use kms::auditing;
use kms::ceremony;
use kms::config::Config;
use kms::credentials::ClientRole;
use kms::pin::load_pin;
use kms::policy::Caller;
use kms::quickstart;
use kms::revocation::RevokeRequest;
use kms::storage::SledStore;
use kms::token::Token;
use serde_json::json;

/// vBus KMS officer CLI.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Appliance configuration (for verbs that use the token locally).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    /// A remote appliance's mTLS API (e.g. https://kms.factory:8443): officer
    /// verbs go there with the officer credential of --cert/--key/--ca
    /// instead of using --config on the appliance itself.
    #[arg(long, global = true)]
    url: Option<String>,
    /// Officer certificate (with --url).
    #[arg(long, global = true, requires = "url")]
    cert: Option<PathBuf>,
    /// Officer private key, mode 0600 (with --url).
    #[arg(long, global = true, requires = "url")]
    key: Option<PathBuf>,
    /// The appliance's internal CA (with --url).
    #[arg(long, global = true, requires = "url")]
    ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a self-contained development appliance in DIR (SoftHSM2 token,
    /// PIN file, kmsd.toml). Safe to run again: a complete DIR is left as is.
    Quickstart {
        /// Directory to create or reuse.
        dir: PathBuf,
        /// mTLS API address.
        #[arg(long, default_value = "127.0.0.1:8443")]
        api: SocketAddr,
        /// Publication (plain HTTP) address.
        #[arg(long = "pub", default_value = "127.0.0.1:8080")]
        publication: SocketAddr,
        /// PKCS#11 module of SoftHSM2.
        #[arg(long, default_value = quickstart::SOFTHSM2_MODULE)]
        module: PathBuf,
    },
    /// Show the token and the keys on it.
    Status,
    /// The key ceremony: CA keys in the token, root, intermediate and
    /// internal CA certificates, the chain, and the first officer credential.
    /// Refuses to run over an initialised appliance.
    Init {
        /// Identity (CN) of the first officer.
        #[arg(long, default_value = kms::quickstart::OFFICER_ID)]
        officer: String,
        /// Where to write the officer credential (default: `officer/` beside the config).
        #[arg(long)]
        officer_dir: Option<PathBuf>,
    },
    /// The CA hierarchy.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Certificates.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Devices.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The state store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Who may do what (the policy file).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Provisioning station credentials.
    Station {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Officer credentials.
    Officer {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Many at once.
    Batch {
        #[command(subcommand)]
        command: BatchCommand,
    },
    /// Certificate revocation lists.
    Crl {
        #[command(subcommand)]
        command: CrlCommand,
    },
    /// Firmware signing keys, signing requests and their approvals.
    Firmware {
        #[command(subcommand)]
        command: FirmwareCommand,
    },
    /// Escrowed device secrets: M-of-N recovery, rotation, KEK rotation.
    Escrow {
        #[command(subcommand)]
        command: EscrowCommand,
    },
    /// Write one archive of the appliance: the store as of one moment, the
    /// audit log up to a checkpoint signed after it, the CA certificates,
    /// the policy file and a manifest of the token's keys (never the keys:
    /// they stay in the token). Through the running kmsd when it answers,
    /// else on the stopped appliance. The archive is verified before it
    /// takes its name.
    Backup {
        /// The archive to write (mode 0600; an existing file is never
        /// overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a backup onto a fresh appliance: this --config, whose token
    /// must hold the backup's keys (the HSM's own backup or cloning brings
    /// them). Verifies the whole archive before writing anything; refuses a
    /// backup older than the checkpoint officers hold or the token's own.
    Restore {
        /// The archive `kmsctl backup` wrote.
        #[arg(long = "in")]
        input: PathBuf,
        /// The latest checkpoint note officers kept (`kmsctl audit
        /// checkpoint > latest.note`): the backup must hold every record it
        /// covers.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Restore a backup older than (or forking from) a checkpoint
        /// anyway, losing the records after it; recorded in the audit log.
        #[arg(long)]
        accept_rollback: bool,
        /// Rename an existing store, audit directory, CA directory or policy
        /// file aside (`.before-restore-<time>`) instead of refusing.
        #[arg(long)]
        replace_existing: bool,
    },
}

#[derive(Subcommand)]
enum EscrowCommand {
    /// Ask for a device secret to be recovered (officers, with their own
    /// credential: --url --cert --key --ca). Other officers approve it;
    /// the secret is then sealed to RECIPIENT (a P-256 public key PEM).
    Request {
        /// Module serial.
        serial: String,
        /// psk, keypair, or an AES key name of the profile.
        #[arg(long)]
        purpose: String,
        /// Why; recorded and shown to the approvers.
        #[arg(long)]
        reason: String,
        /// The P-256 public key (PEM) the secret is sealed to.
        #[arg(long)]
        recipient: PathBuf,
    },
    /// Approve a recovery request whose content you reviewed (`list`
    /// shows it and its hash). With --out, the approval that completes the
    /// quorum writes the sealed secret there.
    Approve {
        /// Request id.
        id: String,
        /// The request's hash.
        #[arg(long)]
        hash: String,
        /// Where to write the sealed secret.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Pending recovery requests.
    List,
    /// A request's state; with --out the sealed secret once approved.
    Fetch {
        /// Request id.
        id: String,
        /// Where to write the sealed secret.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Open a sealed secret with the recipient's private key (PEM), here,
    /// without the appliance; writes it (hex for 32-byte secrets, else as
    /// is) to --out, mode 0600.
    Decrypt {
        /// The sealed secret `fetch --out` wrote.
        #[arg(long = "in")]
        input: PathBuf,
        /// The recipient's private key (PEM).
        #[arg(long)]
        key: PathBuf,
        /// Where to write the secret (created, mode 0600).
        #[arg(long)]
        out: PathBuf,
    },
    /// Let a device get its secret once more (a rotation).
    AllowRotation {
        /// Module serial.
        serial: String,
        /// psk, keypair or an AES key name.
        #[arg(long)]
        purpose: String,
    },
    /// Make a new escrow KEK in the token and re-wrap every blob under it
    /// (progress bar); the old KEK is destroyed once all open under the new
    /// one. Resumable: run it again after an interruption.
    RotateKek {
        /// Blobs re-wrapped per request.
        #[arg(long, default_value_t = 500)]
        batch: usize,
    },
}

#[derive(Subcommand)]
enum FirmwareCommand {
    /// Signing keys of product lines.
    Key {
        #[command(subcommand)]
        command: FirmwareKeyCommand,
    },
    /// Hash IMAGE here (streaming, with a progress bar) and ask for its
    /// signature: an approval request that other firmware signers approve
    /// with `kmsctl firmware approve`. The service sees only the digest.
    Sign {
        /// Product line.
        #[arg(long)]
        product: String,
        /// Version text.
        #[arg(long)]
        version: String,
        /// Anti-rollback counter: never below one already signed.
        #[arg(long)]
        security_version: u32,
        /// Sign the SHA-512 of the image (default SHA-256).
        #[arg(long)]
        sha512: bool,
        /// IMAGE is the 32-byte digest MCUboot's imgtool wrote with
        /// `--vector-to-sign digest`: the result also holds the signature
        /// imgtool takes with `--fix-sig` (Ed25519 product keys).
        #[arg(long, conflicts_with = "sha512")]
        mcuboot: bool,
        /// The firmware image (or, with --mcuboot, imgtool's digest file).
        image: PathBuf,
    },
    /// Approve a signing request whose content you reviewed (`requests`
    /// shows it and its hash). The last approval signs: with --out the
    /// manifest is written to OUT (binary) and OUT.json.
    Approve {
        /// Request id.
        id: String,
        /// The request's hash.
        #[arg(long)]
        hash: String,
        /// Where to write the manifest if this approval completes it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Pending approval requests.
    Requests,
    /// A request's state; with --out its manifest (binary) and OUT.json.
    Fetch {
        /// Request id.
        id: String,
        /// Where to write the manifest.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum FirmwareKeyCommand {
    /// Make a signing key for a product line in the token.
    Create {
        /// Product line ([A-Za-z0-9._-], 1–64).
        #[arg(long)]
        product: String,
        /// ed25519 or p256.
        #[arg(long, default_value = "ed25519")]
        algorithm: String,
    },
    /// The keys, with their public keys (PEM).
    List {
        /// Only this product line.
        #[arg(long)]
        product: Option<String>,
    },
}

#[derive(clap::Args)]
struct RevokeArgs {
    /// RFC 5280 reason: unspecified, keyCompromise, cACompromise,
    /// affiliationChanged, superseded, cessationOfOperation,
    /// privilegeWithdrawn, aACompromise.
    #[arg(long)]
    reason: String,
    /// When the key was (or may have been) compromised, RFC 3339.
    #[arg(long)]
    invalidity_date: Option<String>,
}

impl RevokeArgs {
    fn request(&self, ca: Option<&str>) -> RevokeRequest {
        RevokeRequest {
            reason: self.reason.clone(),
            invalidity_date: self.invalidity_date.clone(),
            ca: ca.map(str::to_owned),
        }
    }
}

#[derive(Subcommand)]
enum BatchCommand {
    /// Revoke every certificate serial listed in a file (one hex serial per
    /// line; blank lines and lines starting with # are skipped), in
    /// requests of 1000, with a progress bar. Exits non-zero if any failed.
    Revoke {
        /// The file.
        #[arg(long)]
        from_file: PathBuf,
        #[command(flatten)]
        how: RevokeArgs,
        /// Refuse serials not issued by this CA (root, intermediate, internal).
        #[arg(long)]
        issuer: Option<String>,
    },
}

#[derive(Subcommand)]
enum CrlCommand {
    /// Sign a new CRL now (kmsd also does it after revocations and on
    /// schedule) and print its number and size.
    Publish {
        /// root, intermediate or internal (default: every CA whose key is here).
        #[arg(long)]
        issuer: Option<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Print the effective policy: the running one when kmsd runs, else the
    /// configured file (or --file).
    Show {
        /// A policy file to show instead (validated as a reload would).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Explain, rule by rule, what the policy decides for a station asking
    /// for a device certificate now. Performs nothing.
    Check {
        /// Station identity (the CN of its certificate).
        #[arg(long)]
        station: String,
        /// Module serial.
        #[arg(long)]
        serial: String,
        /// Key type of the device CSR.
        #[arg(long, default_value = "ecdsa-p256")]
        key_type: String,
        /// A candidate policy file to check against instead of the running one.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Validate the configured policy file and put it in force in the
    /// running kmsd (audited); a bad file is refused and the running policy stays.
    Reload,
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Rebuild certificates and devices from the audit log into a fresh
    /// store; the old database directory is kept beside it, renamed.
    Rebuild,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Replay the chain and check every checkpoint signature; report the
    /// first bad sequence number. Offline with --export (and --vkey).
    Verify {
        /// A JSON-lines export to verify instead of the local log.
        #[arg(long)]
        export: Option<PathBuf>,
        /// A checkpoint note kept outside the log (catches a cut tail).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// The C2SP verifier key (default: the token's audit key). (`--key`
        /// is the officer key of `--url`.)
        #[arg(long)]
        vkey: Option<String>,
    },
    /// Write the JSON-lines export (records and checkpoints).
    Export {
        /// First sequence number.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the checkpoint key as a C2SP verifier key.
    Pubkey,
    /// Sign a checkpoint of the current head now and print it.
    Checkpoint,
    /// Show records, filtered.
    Show {
        /// Only records at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only this operation.
        #[arg(long)]
        op: Option<String>,
        /// Only this actor.
        #[arg(long)]
        actor: Option<String>,
    },
    /// Show an incomplete record at the end of the log (a crash mid-write)
    /// and, with --yes, drop exactly it.
    Repair {
        /// Really truncate.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Print the hierarchy: subjects, serials, expiry, fingerprints, key URIs.
    Show,
}

#[derive(Subcommand)]
enum CertCommand {
    /// Issue a device certificate locally (officer path for tests and
    /// emergencies; stations use the API).
    Issue {
        /// The device CSR, PEM or DER.
        #[arg(long)]
        csr: PathBuf,
        /// Module serial, VBUS-{CPU|PWR|PERIPH|COMM}-YYMM-NNNNNN.
        #[arg(long)]
        serial: String,
        /// Hardware UUID (RFC 9562).
        #[arg(long)]
        uuid: String,
        /// Write the certificate PEM here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke a certificate of any of our CAs by its serial (hex). Revoking
    /// again reports the first revocation and changes nothing.
    Revoke {
        /// Certificate serial, hex (colons allowed).
        serial: String,
        #[command(flatten)]
        how: RevokeArgs,
        /// Refuse unless this CA issued it (root, intermediate, internal).
        #[arg(long)]
        issuer: Option<String>,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Allow one re-issue for a new key to an already certified device.
    AllowReissue {
        /// Module serial.
        serial: String,
    },
    /// Show a device: its certificates and provisioning records.
    Show {
        /// Module serial.
        serial: String,
    },
    /// Revoke every certificate of a device.
    Revoke {
        /// Module serial.
        serial: String,
        #[command(flatten)]
        how: RevokeArgs,
    },
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Issue an mTLS credential from the internal CA. With --csr (made by
    /// `station init`) only the certificate is written; without it the
    /// appliance makes the key and writes it once, 0600.
    Add {
        /// Identity: the certificate's CN (1-64 of A-Z a-z 0-9 - . _).
        id: String,
        /// Stations: module types it may provision, comma-separated
        /// (CPU,PWR,PERIPH,COMM); written into the policy and reloaded.
        #[arg(long)]
        modules: Option<String>,
        /// Officers: policy roles, comma-separated (officer,firmware-signer,auditor).
        #[arg(long)]
        roles: Option<String>,
        /// The client's CSR (PEM, P-256).
        #[arg(long)]
        csr: Option<PathBuf>,
        /// Where to write cert.pem, ca.pem (and key.pem): default
        /// `stations/ID` or `officers/ID` beside the config.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List credentials: serial, expiry, revocation.
    List,
    /// Revoke every certificate of ID; its next TLS handshake is refused
    /// and the internal CA's CRL lists it.
    Revoke {
        /// Identity.
        id: String,
        /// RFC 5280 reason.
        #[arg(long, default_value = "cessationOfOperation")]
        reason: String,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The stable code first, for scripts; then the whole story.
            let code = e.chain().find_map(|c| {
                c.downcast_ref::<kms::Error>()
                    .map(|k| k.code().to_owned())
                    .or_else(|| c.downcast_ref::<RemoteError>().map(|r| r.code.clone()))
            });
            match code {
                Some(code) => eprintln!("error[{code}]: {e:#}"),
                None => eprintln!("error: {e:#}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Quickstart {
            dir,
            api,
            publication,
            module,
        } => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let dir = dir
                .canonicalize()
                .with_context(|| format!("resolving {}", dir.display()))?;
            // Before any thread exists: SoftHSM2 reads it at C_Initialize.
            std::env::set_var("SOFTHSM2_CONF", quickstart::softhsm_conf_path(&dir));
            let opts = quickstart::Options {
                api: *api,
                publication: *publication,
                module: module.clone(),
            };
            let out = quickstart::run(&dir, &opts)?;
            if cli.json {
                println!(
                    "{}",
                    json!({ "config": out.config, "created": out.created })
                );
            } else {
                if out.created {
                    println!("Created a development appliance in {}.", dir.display());
                } else {
                    println!("{} is already set up; nothing changed.", dir.display());
                }
                println!("Start it with:\n  kmsd --config {}", out.config.display());
            }
            Ok(())
        }
        Command::Status => status(require_config(&cli.config)?, cli.json),
        Command::Init {
            officer,
            officer_dir,
        } => {
            let path = require_config(&cli.config)?;
            let (cfg, token) = open_token(path)?;
            let dir = officer_dir
                .clone()
                .unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).join("officer"));
            let report = ceremony::init(&cfg, &token, &auditing::local_actor(), officer, &dir)?;
            if cli.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print_cas(&report.cas);
                println!("officer credential: {}", report.officer_dir.display());
                println!("chain: {}", ceremony::CaFiles::of(&cfg).chain.display());
            }
            Ok(())
        }
        Command::Ca {
            command: CaCommand::Show,
        } => {
            let (cfg, token) = open_token(require_config(&cli.config)?)?;
            let cas = ceremony::show(&cfg, &token)?;
            if cli.json {
                println!("{}", serde_json::to_string(&cas)?);
            } else {
                print_cas(&cas);
            }
            Ok(())
        }
        Command::Cert {
            command:
                CertCommand::Revoke {
                    serial,
                    how,
                    issuer,
                },
        } => {
            let v = request(
                &cli,
                &Request::Revoke {
                    serial_number: serial.clone(),
                    request: how.request(issuer.as_deref()),
                },
            )?;
            if cli.json {
                println!("{v}");
            } else {
                print_revoked(&v);
            }
            Ok(())
        }
        Command::Cert {
            command:
                CertCommand::Issue {
                    csr,
                    serial,
                    uuid,
                    out,
                },
        } => {
            let bytes = std::fs::read(csr).with_context(|| format!("reading {}", csr.display()))?;
            // PEM as is; DER wrapped in PEM for the JSON request.
            let csr = match String::from_utf8(bytes) {
                Ok(text) => text,
                Err(e) => der::pem::encode_string(
                    "CERTIFICATE REQUEST",
                    der::pem::LineEnding::LF,
                    e.as_bytes(),
                )
                .map_err(|_| anyhow::anyhow!("{} is neither PEM nor DER", csr.display()))?,
            };
            let v = request(
                &cli,
                &Request::Issue {
                    serial: serial.clone(),
                    hw_uuid: uuid.clone(),
                    csr,
                },
            )?;
            let issued: kms::appliance::IssuedView = serde_json::from_value(v.clone())?;
            if cli.json {
                println!("{v}");
            } else {
                match out {
                    Some(path) => std::fs::write(path, &issued.certificate)
                        .with_context(|| format!("writing {}", path.display()))?,
                    None => print!("{}", issued.certificate),
                }
                eprintln!(
                    "{} certificate {} for {serial}, valid until {}",
                    if issued.newly_issued {
                        "issued"
                    } else {
                        "already issued:"
                    },
                    issued.serial_number,
                    issued.not_after
                );
            }
            Ok(())
        }
        Command::Store {
            command: StoreCommand::Rebuild,
        } => {
            let (cfg, token) = open_token(require_config(&cli.config)?)?;
            let log = auditing::open(&cfg, &token)?;
            if cfg.storage.path.exists() {
                let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
                let aside = cfg.storage.path.with_extension(format!("replaced-{stamp}"));
                std::fs::rename(&cfg.storage.path, &aside)
                    .with_context(|| format!("moving {} aside", cfg.storage.path.display()))?;
                eprintln!("old store kept as {}", aside.display());
            }
            let store = Arc::new(SledStore::open(&cfg.storage.path)?);
            let ca = ceremony::load_ca(&cfg, &token, store.clone())?;
            let r = auditing::rebuild(&cfg, &ca, store.as_ref())?;
            auditing::record(
                &log,
                &auditing::local_actor(),
                "store.rebuild",
                &cfg.storage.path.display().to_string(),
                "ok",
                json!({
                    "certificates": r.restored, "reissue_permissions": r.granted,
                    "client_records": r.clients, "provisioning_records": r.records,
                }),
            )?;
            println!(
                "store rebuilt from the audit log: {} certificate(s), {} re-issue permission(s), \
                 {} client credential record(s), {} provisioning record(s)",
                r.restored, r.granted, r.clients, r.records
            );
            Ok(())
        }
        Command::Policy { command } if cli.url.is_some() => {
            // A remote appliance: its running policy.
            let req = match command {
                PolicyCommand::Show { file: None } => Request::PolicyShow,
                PolicyCommand::Check {
                    station,
                    serial,
                    key_type,
                    file: None,
                } => Request::PolicyCheck(admin::CheckRequest {
                    station: station.clone(),
                    serial: serial.clone(),
                    key_type: key_type.clone(),
                }),
                PolicyCommand::Reload => Request::PolicyReload,
                _ => anyhow::bail!("--file reads a local file: use it without --url"),
            };
            let v = request(&cli, &req)?;
            match (command, cli.json) {
                (PolicyCommand::Check { .. }, false) => print_explanation(&v),
                (PolicyCommand::Show { .. }, false) => {
                    print!("{}", v["text"].as_str().unwrap_or_default())
                }
                _ => println!("{v}"),
            }
            Ok(())
        }
        Command::Policy { command } => {
            policy_command(require_config(&cli.config)?, command, cli.json)
        }
        Command::Audit { command } => {
            audit_command(require_config(&cli.config)?, command, cli.json)
        }
        Command::Device { command } => {
            match command {
                DeviceCommand::AllowReissue { serial } => {
                    let v = request(
                        &cli,
                        &Request::AllowReissue {
                            serial: serial.clone(),
                        },
                    )?;
                    if cli.json {
                        println!("{v}");
                    } else {
                        println!("{serial}: one re-issue for a new key allowed");
                    }
                }
                DeviceCommand::Show { serial } => {
                    let v = request(
                        &cli,
                        &Request::Device {
                            serial: serial.clone(),
                        },
                    )?;
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                DeviceCommand::Revoke { serial, how } => {
                    let v = request(
                        &cli,
                        &Request::RevokeDevice {
                            serial: serial.clone(),
                            request: how.request(None),
                        },
                    )?;
                    if cli.json {
                        println!("{v}");
                    } else {
                        for r in v.as_array().into_iter().flatten() {
                            print_revoked(r);
                        }
                    }
                }
            }
            Ok(())
        }
        Command::Firmware { command } => firmware_command(&cli, command),
        Command::Escrow { command } => escrow_command(&cli, command),
        Command::Batch {
            command:
                BatchCommand::Revoke {
                    from_file,
                    how,
                    issuer,
                },
        } => batch_revoke(&cli, from_file, &how.request(issuer.as_deref())),
        Command::Crl {
            command: CrlCommand::Publish { issuer },
        } => {
            let all = ["root", "intermediate", "internal"];
            let names: Vec<&str> = issuer.as_deref().map_or(all.to_vec(), |c| vec![c]);
            for name in names {
                match request(&cli, &Request::CrlPublish { ca: name.into() }) {
                    Ok(v) if cli.json => println!("{v}"),
                    Ok(v) => println!(
                        "{name}: CRL number {} with {} entries, next update {}, sha256 {}",
                        v["number"],
                        v["entries"],
                        v["next_update"].as_str().unwrap_or("?"),
                        v["sha256"].as_str().unwrap_or("?")
                    ),
                    // Without --ca, a CA whose key is elsewhere is skipped.
                    Err(e) if issuer.is_none() && format!("{e}").contains("not on the token") => {
                        eprintln!("{name}: skipped ({e})");
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
        Command::Station { command } => {
            client_command(&cli, ClientRole::Station, command, cli.json)
        }
        Command::Officer { command } => {
            client_command(&cli, ClientRole::Officer, command, cli.json)
        }
        Command::Backup { out } => backup_command(&cli, out),
        Command::Restore {
            input,
            checkpoint,
            accept_rollback,
            replace_existing,
        } => {
            if cli.url.is_some() {
                anyhow::bail!("restore runs on the appliance itself (--config), not over --url");
            }
            let path = require_config(&cli.config)?;
            let (cfg, token) = open_token(path)?;
            let report = kms::backup::restore(
                &cfg,
                &token,
                &auditing::local_actor(),
                &kms::backup::RestoreOptions {
                    archive: input,
                    checkpoint: checkpoint.as_deref(),
                    accept_rollback: *accept_rollback,
                    replace_existing: *replace_existing,
                },
            )?;
            print_restore(&report, path, cli.json)
        }
    }
}

/// `kmsctl backup --out FILE`: the archive from the running kmsd (admin
/// socket) or from the appliance opened here, written to a temporary file
/// beside FILE, synced, verified, then renamed.
fn backup_command(cli: &Cli, out: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if cli.url.is_some() {
        anyhow::bail!("backup runs on the appliance itself (--config), not over --url");
    }
    let cfg_path = require_config(&cli.config)?;
    let cfg = Config::load(cfg_path)?;
    if out.exists() {
        return Err(kms::Error::InvalidInput(format!(
            "{} exists: a backup never overwrites a file; choose another --out",
            out.display()
        ))
        .into());
    }
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".into());
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let written = (|| -> anyhow::Result<kms::backup::Inspection> {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, &file);
        let client = admin::Client::new(&cfg.server.admin_socket);
        if client.running() {
            let req = admin::BackupRequest {
                out: Some(name.clone()),
            };
            admin_ok(client.backup(&req, &mut w)?)?;
        } else {
            let (cfg, token) = open_token(cfg_path)?;
            let app = Appliance::open(cfg, token)?;
            kms::backup::create(&app, &Caller::local(), false, &name, &mut w)?;
        }
        w.flush()
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        // What is on disk, verified as a restore will read it.
        Ok(kms::backup::inspect_file(&tmp, &Default::default())?)
    })();
    let insp = match written {
        Ok(i) => i,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    // A hard link, not a rename: it fails if FILE appeared since the check
    // above, rather than replacing it.
    let linked = std::fs::hard_link(&tmp, out);
    let _ = std::fs::remove_file(&tmp);
    if let Err(e) = linked {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            return Err(kms::Error::InvalidInput(format!(
                "{} exists: a backup never overwrites a file; choose another --out",
                out.display()
            ))
            .into());
        }
        return Err(anyhow::Error::new(e).context(format!("linking {}", out.display())));
    }
    std::fs::File::open(&parent)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", parent.display()))?;
    if cli.json {
        println!(
            "{}",
            json!({
                "out": out, "bytes": insp.bytes, "sha256": insp.sha256,
                "online": insp.header.online, "store_entries": insp.store_entries,
                "records": insp.records, "token_keys": insp.token_keys.len(),
                "files": insp.files.len(), "checkpoint": insp.newest_checkpoint,
            })
        );
    } else {
        println!(
            "backup written to {} ({} bytes, sha256 {}, {}): {} store entries, {} audit records, \
             {} file(s), a manifest of {} token key(s) (the keys stay in the token)",
            out.display(),
            insp.bytes,
            insp.sha256,
            if insp.header.online {
                "from the running kmsd"
            } else {
                "kmsd stopped"
            },
            insp.store_entries,
            insp.records,
            insp.files.len(),
            insp.token_keys.len()
        );
        print!(
            "its audit log ends at this checkpoint:\n{}",
            insp.newest_checkpoint
        );
    }
    Ok(())
}

fn print_restore(
    report: &kms::backup::RestoreReport,
    config: &Path,
    as_json: bool,
) -> anyhow::Result<()> {
    if as_json {
        println!("{}", serde_json::to_string(report)?);
        return Ok(());
    }
    println!(
        "restored a backup taken {} by {:?} (sha256 {}): {} store entries, {} audit records, \
         {} file(s); the token holds all {} key(s) of its manifest",
        report.created,
        report.created_by,
        report.archive_sha256,
        report.store_entries,
        report.records,
        report.files.len(),
        report.token_keys
    );
    for w in &report.witnesses {
        println!(
            "checked against {} (covers {} records): {}",
            w.witness,
            w.size,
            match w.verdict {
                "holds" => "the backup holds them all",
                "behind" => "the backup is OLDER: rollback accepted",
                _ => "the backup is ANOTHER HISTORY: fork accepted",
            }
        );
    }
    for p in &report.moved_aside {
        println!("moved aside: {}", p.display());
    }
    println!(
        "audit log verified; the restore is record {}{}",
        report.restore_record,
        if report.accepted_rollback {
            " (it names the records given up)"
        } else {
            ""
        }
    );
    print!("the backup's newest checkpoint:\n{}", report.checkpoint);
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    println!("start it with:\n  kmsd --config {}", config.display());
    Ok(())
}

/// Run an admin request: through the running `kmsd` when it answers on the
/// admin socket (it holds the store and the log), else on the appliance
/// opened here. The same code runs either way ([`admin::dispatch`]).
fn request(cli: &Cli, req: &Request) -> anyhow::Result<serde_json::Value> {
    if let Some(url) = &cli.url {
        return remote(cli, url, req);
    }
    let cfg_path = require_config(&cli.config)?;
    let cfg = Config::load(cfg_path)?;
    let client = admin::Client::new(&cfg.server.admin_socket);
    if client.running() {
        return admin_ok(client.send(req)?);
    }
    let (cfg, token) = open_token(cfg_path)?;
    let app = Appliance::open(cfg, token)?;
    Ok(admin::dispatch(&app, &Caller::local(), req)?)
}

/// An officer verb sent to a remote appliance over mTLS.
fn remote(cli: &Cli, url: &str, req: &Request) -> anyhow::Result<serde_json::Value> {
    let (Some(cert), Some(key), Some(ca)) = (&cli.cert, &cli.key, &cli.ca) else {
        anyhow::bail!("--url needs --cert, --key and --ca (an officer credential)");
    };
    let as_remote = |e: station::Error| match e {
        station::Error::Refused {
            status,
            code,
            message,
            ..
        } => anyhow::anyhow!(RemoteError {
            status,
            code,
            message
        }),
        other => anyhow::anyhow!(RemoteError {
            status: 0,
            code: other.code().to_owned(),
            message: other.to_string(),
        }),
    };
    let cred = station::Credential::from_files(cert, key, ca).map_err(as_remote)?;
    let client = station::Client::new(url, &cred).map_err(as_remote)?;
    client.admin(&serde_json::to_value(req)?).map_err(as_remote)
}

fn client_command(
    cli: &Cli,
    role: ClientRole,
    command: &ClientCommand,
    as_json: bool,
) -> anyhow::Result<()> {
    match command {
        ClientCommand::Add {
            id,
            modules,
            roles,
            csr,
            out,
        } => {
            let csr = csr
                .as_ref()
                .map(|p| {
                    std::fs::read_to_string(p)
                        .with_context(|| format!("reading {} (a PEM CSR)", p.display()))
                })
                .transpose()?;
            // Beside the config on the appliance; in the current directory remotely.
            let out = out.clone().unwrap_or_else(|| {
                cli.config
                    .as_deref()
                    .filter(|_| cli.url.is_none())
                    .and_then(Path::parent)
                    .unwrap_or(Path::new("."))
                    .join(format!("{}s", role.as_str()))
                    .join(id)
            });
            // Refuse before anything is issued what write_dir would refuse.
            for f in ["cert.pem", "ca.pem"] {
                if out.join(f).exists() {
                    anyhow::bail!("{} exists; choose another --out", out.join(f).display());
                }
            }
            let v = request(
                cli,
                &Request::AddClient {
                    id: id.clone(),
                    role,
                    csr,
                    modules: split_list(modules),
                    roles: split_list(roles),
                },
            )?;
            let cred = kms::credentials::ClientCredential {
                record: serde_json::from_value(v["client"].clone())?,
                cert_pem: v["cert_pem"].as_str().unwrap_or_default().to_owned(),
                key_pem: v["key_pem"]
                    .as_str()
                    .map(|k| zeroize::Zeroizing::new(k.to_owned())),
                ca_pem: v["ca_pem"].as_str().unwrap_or_default().to_owned(),
            };
            kms::credentials::write_dir(&cred, &out)?;
            if as_json {
                println!(
                    "{}",
                    json!({ "client": cred.record, "dir": out, "policy_sha256": v["policy_sha256"] })
                );
            } else {
                println!(
                    "{} {id}: certificate {} until {}, written to {}",
                    role.as_str(),
                    cred.record.serial_number,
                    cred.record.not_after,
                    out.display()
                );
                if role == ClientRole::Station && modules.is_none() {
                    println!("no --modules: the policy gives {id} no rule yet, so it may do nothing until one is added");
                }
            }
        }
        ClientCommand::List => {
            let v = request(cli, &Request::Clients)?;
            let all: Vec<kms::credentials::ClientRecord> = serde_json::from_value(v)?;
            let mine: Vec<_> = all.into_iter().filter(|r| r.role == role).collect();
            if as_json {
                println!("{}", serde_json::to_string(&mine)?);
            } else {
                for r in mine {
                    println!(
                        "{:<24} {:<34} until {}  {}",
                        r.id,
                        r.serial_number,
                        r.not_after,
                        r.revoked_at
                            .map_or_else(|| "active".to_owned(), |t| format!("revoked {t}"))
                    );
                }
            }
        }
        ClientCommand::Revoke { id, reason } => {
            let v = request(
                cli,
                &Request::RevokeClient {
                    id: id.clone(),
                    reason: Some(reason.clone()),
                },
            )?;
            if as_json {
                println!("{v}");
            } else {
                let n = v["revoked"].as_array().map_or(0, Vec::len);
                println!("{id}: {n} certificate(s) revoked; refused from the next connection");
            }
        }
    }
    Ok(())
}

fn firmware_command(cli: &Cli, command: &FirmwareCommand) -> anyhow::Result<()> {
    let write_manifest = |v: &serde_json::Value, out: &Path| -> anyhow::Result<()> {
        use base64::Engine as _;
        let Some(b64) = v["result"]["manifest"].as_str() else {
            anyhow::bail!(
                "request {} has no manifest ({})",
                v["id"].as_str().unwrap_or("?"),
                v["result"]["error"]["code"]
                    .as_str()
                    .unwrap_or("not signed yet")
            );
        };
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64)?;
        std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
        let json_path = PathBuf::from(format!("{}.json", out.display()));
        std::fs::write(
            &json_path,
            serde_json::to_string_pretty(&v["result"]["manifest_json"])?,
        )
        .with_context(|| format!("writing {}", json_path.display()))?;
        eprintln!(
            "manifest written to {} and {}",
            out.display(),
            json_path.display()
        );
        if let Some(sig) = v["result"]["mcuboot_signature"].as_str() {
            let sig_path = PathBuf::from(format!("{}.mcuboot.sig", out.display()));
            std::fs::write(&sig_path, sig)
                .with_context(|| format!("writing {}", sig_path.display()))?;
            eprintln!(
                "MCUboot signature (base64, for imgtool --fix-sig) written to {}",
                sig_path.display()
            );
        }
        Ok(())
    };
    let v = match command {
        FirmwareCommand::Key {
            command: FirmwareKeyCommand::Create { product, algorithm },
        } => {
            let v = request(
                cli,
                &Request::FirmwareKeyCreate {
                    product: product.clone(),
                    algorithm: Some(algorithm.clone()),
                },
            )?;
            if !cli.json {
                println!(
                    "{product}: {} key {} (token label {})\n{}",
                    v["algorithm"].as_str().unwrap_or("?"),
                    v["key_id"].as_str().unwrap_or("?"),
                    v["label"].as_str().unwrap_or("?"),
                    v["public_key_pem"].as_str().unwrap_or("")
                );
                return Ok(());
            }
            v
        }
        FirmwareCommand::Key {
            command: FirmwareKeyCommand::List { product },
        } => {
            let v = request(
                cli,
                &Request::FirmwareKeys {
                    product: product.clone(),
                },
            )?;
            if !cli.json {
                for k in v.as_array().into_iter().flatten() {
                    println!(
                        "{} {} {} created {}\n{}",
                        k["product"].as_str().unwrap_or("?"),
                        k["algorithm"].as_str().unwrap_or("?"),
                        k["key_id"].as_str().unwrap_or("?"),
                        k["created_at"],
                        k["public_key_pem"].as_str().unwrap_or("")
                    );
                }
                return Ok(());
            }
            v
        }
        FirmwareCommand::Sign {
            product,
            version,
            security_version,
            sha512,
            mcuboot,
            image,
        } => {
            let alg = if *sha512 {
                firmware::DigestAlgorithm::Sha512
            } else {
                firmware::DigestAlgorithm::Sha256
            };
            let file = std::fs::File::open(image)
                .with_context(|| format!("reading {}", image.display()))?;
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            let bar = progress_bar(
                size,
                cli.json,
                "hashing {bar:40} {bytes}/{total_bytes} ({bytes_per_sec})",
            );
            let digest = if *mcuboot {
                let d =
                    std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
                if d.len() != 32 {
                    anyhow::bail!(
                        "{} holds {} bytes, not the 32-byte digest of `imgtool sign --vector-to-sign digest`",
                        image.display(),
                        d.len()
                    );
                }
                d
            } else {
                firmware::digest_reader(alg, file, |n| bar.set_position(n))
                    .with_context(|| format!("reading {}", image.display()))?
            };
            bar.finish_and_clear();
            let hex_digest = hex::encode(digest);
            let req = kms::firmware::SignRequest {
                product: product.clone(),
                version: version.clone(),
                security_version: *security_version,
                sha256: (!sha512).then(|| hex_digest.clone()),
                sha512: sha512.then(|| hex_digest.clone()),
                mcuboot: *mcuboot,
            };
            let v = request(cli, &Request::FirmwareSign(req))?;
            if !cli.json {
                print_request(&v);
                println!(
                    "approve with: kmsctl firmware approve {} --hash {}",
                    v["id"].as_str().unwrap_or("?"),
                    v["hash"].as_str().unwrap_or("?")
                );
                return Ok(());
            }
            v
        }
        FirmwareCommand::Approve { id, hash, out } => {
            let v = request(
                cli,
                &Request::Approve {
                    id: id.clone(),
                    hash: hash.clone(),
                },
            )?;
            if let (Some(out), Some("done")) = (out, v["state"].as_str()) {
                write_manifest(&v, out)?;
            }
            if !cli.json {
                print_request(&v);
                return Ok(());
            }
            v
        }
        FirmwareCommand::Requests => {
            let v = request(cli, &Request::Approvals)?;
            if !cli.json {
                for r in v.as_array().into_iter().flatten() {
                    print_request(r);
                }
                return Ok(());
            }
            v
        }
        FirmwareCommand::Fetch { id, out } => {
            let v = request(cli, &Request::Approval { id: id.clone() })?;
            if let Some(out) = out {
                write_manifest(&v, out)?;
            }
            if !cli.json {
                print_request(&v);
                return Ok(());
            }
            v
        }
    };
    println!("{v}");
    Ok(())
}

/// An M-of-N approval request (firmware signing, escrow recovery), as text.
fn print_request(v: &serde_json::Value) {
    println!(
        "request {} ({}) by {}: {} of {} approvals, {}, expires {}\n  hash {}\n  {}",
        v["id"].as_str().unwrap_or("?"),
        v["kind"].as_str().unwrap_or("?"),
        v["requested_by"].as_str().unwrap_or("?"),
        v["approvals"]["have"],
        v["approvals"]["need"],
        v["state"].as_str().unwrap_or("?"),
        v["expires_at"].as_str().unwrap_or("?"),
        v["hash"].as_str().unwrap_or("?"),
        v["payload"]
    );
}

/// The sealed secret of a done recovery request: the file holds one JSON
/// object (`context`, `sealed` base64, fingerprints), which `decrypt` reads.
fn write_sealed(v: &serde_json::Value, out: &Path) -> anyhow::Result<()> {
    if v["state"] != "done" {
        anyhow::bail!(
            "request {} is {} ({})",
            v["id"].as_str().unwrap_or("?"),
            v["state"].as_str().unwrap_or("?"),
            v["result"]["error"]["code"]
                .as_str()
                .unwrap_or("not approved yet")
        );
    }
    std::fs::write(out, serde_json::to_string_pretty(&v["result"])?)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("sealed secret written to {}", out.display());
    Ok(())
}

fn escrow_command(cli: &Cli, command: &EscrowCommand) -> anyhow::Result<()> {
    let show = |v: &serde_json::Value| {
        if cli.json {
            println!("{v}");
        } else {
            print_request(v);
        }
    };
    match command {
        EscrowCommand::Request {
            serial,
            purpose,
            reason,
            recipient,
        } => {
            let pem = std::fs::read_to_string(recipient)
                .with_context(|| format!("reading {}", recipient.display()))?;
            show(&request(
                cli,
                &Request::EscrowRequest {
                    serial: serial.clone(),
                    purpose: purpose.clone(),
                    reason: reason.clone(),
                    recipient_public_key: pem,
                },
            )?);
        }
        EscrowCommand::Approve { id, hash, out } => {
            let v = request(
                cli,
                &Request::Approve {
                    id: id.clone(),
                    hash: hash.clone(),
                },
            )?;
            if let (Some(out), Some("done")) = (out, v["state"].as_str()) {
                write_sealed(&v, out)?;
            }
            show(&v);
        }
        EscrowCommand::List => {
            let v = request(cli, &Request::Approvals)?;
            for r in v.as_array().into_iter().flatten() {
                if r["kind"] == "escrow_recovery" {
                    show(r);
                }
            }
        }
        EscrowCommand::Fetch { id, out } => {
            let v = request(cli, &Request::Approval { id: id.clone() })?;
            if let Some(out) = out {
                write_sealed(&v, out)?;
            }
            show(&v);
        }
        EscrowCommand::Decrypt { input, key, out } => {
            use base64::Engine as _;
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let sealed: serde_json::Value = serde_json::from_slice(
                &std::fs::read(input).with_context(|| format!("reading {}", input.display()))?,
            )?;
            let blob = base64::engine::general_purpose::STANDARD
                .decode(sealed["sealed"].as_str().unwrap_or_default())?;
            let context = sealed["context"].as_str().unwrap_or_default();
            let key = zeroize::Zeroizing::new(
                std::fs::read(key).with_context(|| format!("reading {}", key.display()))?,
            );
            let secret = escrow::open_as_recipient(&key, context.as_bytes(), &blob)
                .map_err(kms::Error::from)?;
            if escrow::fingerprint(&secret)
                != sealed["secret_fingerprint"].as_str().unwrap_or_default()
            {
                anyhow::bail!(
                    "the opened secret does not match the fingerprint the appliance recorded"
                );
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(out)
                .with_context(|| format!("creating {}", out.display()))?;
            if secret.len() == 32 {
                let mut text = zeroize::Zeroizing::new(hex::encode(&*secret));
                text.push('\n');
                f.write_all(text.as_bytes())?;
            } else {
                f.write_all(&secret)?;
            }
            f.sync_all()?;
            eprintln!(
                "secret {} of {} {} written to {}",
                sealed["secret_fingerprint"].as_str().unwrap_or("?"),
                sealed["module_serial"].as_str().unwrap_or("?"),
                sealed["purpose"].as_str().unwrap_or("?"),
                out.display()
            );
        }
        EscrowCommand::AllowRotation { serial, purpose } => {
            let v = request(
                cli,
                &Request::AllowRotation {
                    serial: serial.clone(),
                    purpose: purpose.clone(),
                },
            )?;
            if cli.json {
                println!("{v}");
            } else {
                println!("{serial}: one new {purpose} allowed");
            }
        }
        EscrowCommand::RotateKek { batch } => {
            let mut bar: Option<indicatif::ProgressBar> = None;
            let (mut cursor, mut done_so_far) = (None::<String>, 0u64);
            loop {
                let v = request(
                    cli,
                    &Request::RotateKek {
                        limit: (*batch).max(1),
                        cursor: cursor.clone(),
                    },
                )?;
                let total = v["blobs"].as_u64().unwrap_or(0);
                done_so_far += v["rewrapped"].as_u64().unwrap_or(0);
                let b = bar.get_or_insert_with(|| {
                    progress_bar(
                        total,
                        cli.json,
                        "re-wrapping {bar:40} {pos}/{len} ({per_sec})",
                    )
                });
                b.set_position(done_so_far.min(total));
                if cli.json {
                    println!("{v}");
                }
                if v["done"] == true {
                    b.finish_and_clear();
                    if !cli.json {
                        println!(
                            "escrow KEK rotated from version {} to {}: {} blobs under the new KEK, the old one destroyed",
                            v["from"], v["to"], total
                        );
                    }
                    break;
                }
                cursor = v["cursor"].as_str().map(str::to_owned);
            }
        }
    }
    Ok(())
}

/// One revocation, as a line.
fn print_revoked(v: &serde_json::Value) {
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_owned();
    if let Some(e) = v.get("error") {
        eprintln!(
            "{}: error[{}]: {}",
            s("serial_number"),
            e["code"].as_str().unwrap_or("?"),
            e["message"].as_str().unwrap_or("?")
        );
        return;
    }
    let state = if v["already_revoked"] == true {
        "already revoked"
    } else {
        "revoked"
    };
    println!(
        "{} ({} CA, {}): {state} at {}, reason {}",
        s("serial_number"),
        s("ca"),
        s("subject"),
        s("revoked_at"),
        s("reason")
    );
}

/// `kmsctl batch revoke`: the file's serials in requests of 1000.
fn batch_revoke(cli: &Cli, file: &Path, how: &RevokeRequest) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let serials: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if serials.is_empty() {
        anyhow::bail!("{}: no serials", file.display());
    }
    how.parse()?; // a bad reason stops before the first request
    let bar = progress_bar(
        serials.len() as u64,
        cli.json,
        "{bar:40} {pos}/{len} revoked ({per_sec}, {eta} left)",
    );
    let (mut revoked, mut already, mut failed) = (0u64, 0u64, 0u64);
    let mut rows = Vec::new();
    for chunk in serials.chunks(kms::revocation::MAX_BATCH) {
        let v = request(
            cli,
            &Request::RevokeMany {
                serials: chunk.to_vec(),
                request: how.clone(),
            },
        )?;
        for r in v["results"].as_array().into_iter().flatten() {
            if r.get("error").is_some() {
                failed += 1;
                bar.suspend(|| print_revoked(r));
            } else if r["already_revoked"] == true {
                already += 1;
            } else {
                revoked += 1;
            }
            if cli.json {
                rows.push(r.clone());
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if cli.json {
        println!(
            "{}",
            serde_json::json!({ "revoked": revoked, "already_revoked": already, "failed": failed, "results": rows })
        );
    } else {
        println!("{revoked} revoked, {already} already revoked, {failed} failed");
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} serials were not revoked", serials.len());
    }
    Ok(())
}

fn split_list(v: &Option<String>) -> Vec<String> {
    v.as_deref()
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn policy_command(cfg_path: &Path, command: &PolicyCommand, as_json: bool) -> anyhow::Result<()> {
    let cfg = Config::load(cfg_path)?;
    let client = admin::Client::new(&cfg.server.admin_socket);
    let running = client.running();
    // A named or configured file, read and checked the way kmsd reads it.
    let from_file = |file: Option<&PathBuf>| -> anyhow::Result<policies::Policy> {
        let profiles = ceremony::profiles(&cfg)?;
        match file.or(cfg.policy.file.as_ref()) {
            Some(path) => Ok(kms::policy::read(path, &profiles)?),
            None => Ok(policies::Policy::empty()),
        }
    };
    match command {
        PolicyCommand::Show { file } => {
            let view = match (file, running) {
                (None, true) => admin_ok(client.send(&Request::PolicyShow)?)?,
                _ => admin::policy_view(&from_file(file.as_ref())?),
            };
            if as_json {
                println!(
                    "{}",
                    json!({ "sha256": view["sha256"], "effective": view["effective"] })
                );
            } else {
                print!("{}", view["text"].as_str().unwrap_or_default());
            }
        }
        PolicyCommand::Check {
            station,
            serial,
            key_type,
            file,
        } => {
            let req = admin::CheckRequest {
                station: station.clone(),
                serial: serial.clone(),
                key_type: key_type.clone(),
            };
            let out = match (file, running) {
                (None, true) => admin_ok(client.send(&Request::PolicyCheck(req.clone()))?)?,
                _ => kms::policy::explain(
                    &from_file(file.as_ref())?,
                    &policies::Quotas::new(),
                    &req,
                    false,
                ),
            };
            if as_json {
                println!("{out}");
            } else {
                print_explanation(&out);
            }
        }
        PolicyCommand::Reload => {
            if !running {
                // Nothing to put in force: validate, so the next start does not fail.
                let policy = from_file(None)?;
                println!(
                    "policy {} is valid; kmsd is not running and loads it at start",
                    policy.sha256()
                );
                return Ok(());
            }
            // kmsd validates and records the attempt, refused or not.
            let reply = admin_ok(client.send(&Request::PolicyReload)?)?;
            if as_json {
                println!("{reply}");
            } else {
                println!(
                    "policy {} in force",
                    reply["sha256"].as_str().unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

/// The body of a 2xx admin reply, or its error as a [`kms::Error`]-coded failure.
fn admin_ok(reply: Reply) -> anyhow::Result<serde_json::Value> {
    match reply {
        Reply::Ok(v) => Ok(v),
        Reply::Refused {
            status,
            code,
            message,
        } => Err(anyhow::anyhow!(RemoteError {
            status,
            code,
            message
        })),
    }
}

/// An error kmsd answered, printed with its code like a local one.
#[derive(Debug, thiserror::Error)]
#[error("kmsd refused ({status}): {message}")]
struct RemoteError {
    status: u16,
    code: String,
    message: String,
}

fn print_explanation(out: &serde_json::Value) {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    println!(
        "policy {} ({})",
        text(&out["policy_sha256"]),
        if out["quotas_live"] == true {
            "quota usage live from kmsd"
        } else {
            "quota usage not counted: kmsd is not running"
        }
    );
    for step in out["steps"].as_array().into_iter().flatten() {
        let verdict = if step["ok"] == true {
            "ok".to_owned()
        } else {
            format!("DENY {}", text(&step["code"]))
        };
        println!(
            "  {:<10} {:<28} {}",
            text(&step["rule"]),
            verdict,
            text(&step["text"])
        );
    }
    if out["allowed"] == true {
        println!("decision: allow");
    } else {
        println!(
            "decision: deny ({}): {}",
            text(&out["code"]),
            text(&out["reason"])
        );
    }
}

fn audit_command(cfg_path: &Path, command: &AuditCommand, as_json: bool) -> anyhow::Result<()> {
    let cfg = Config::load(cfg_path)?;
    match command {
        AuditCommand::Repair { yes } => {
            let report = audit::repair(&cfg.audit.dir, !yes)?;
            if report.dropped.is_empty() {
                println!(
                    "audit log complete: {} records, nothing to repair",
                    report.records
                );
            } else {
                println!(
                    "{} complete records; incomplete tail of {} bytes at offset {}:\n  {}",
                    report.records,
                    report.dropped.len(),
                    report.offset,
                    String::from_utf8_lossy(&report.dropped[..report.dropped.len().min(512)])
                        .escape_debug()
                );
                println!(
                    "{}",
                    if *yes {
                        "dropped."
                    } else {
                        "run again with --yes to drop it"
                    }
                );
            }
            return Ok(());
        }
        AuditCommand::Verify {
            export: Some(file),
            checkpoint,
            vkey: Some(key),
        } => {
            let verifier = audit::note::Verifier::parse(key)?;
            return verify_file(file, checkpoint.as_deref(), &verifier, as_json);
        }
        _ => {}
    }
    cfg.token.apply_module_env();
    let pin = load_pin(&cfg.token)?;
    let token = Arc::new(Token::open(&cfg.token, pin)?);
    let vkey = ceremony::audit_verifier_key(&cfg, &token)?;
    match command {
        AuditCommand::Pubkey => println!("{vkey}"),
        AuditCommand::Checkpoint if admin::Client::new(&cfg.server.admin_socket).running() => {
            let v =
                admin_ok(admin::Client::new(&cfg.server.admin_socket).send(&Request::Checkpoint)?)?;
            print!("{}", v["checkpoint"].as_str().unwrap_or_default());
        }
        AuditCommand::Checkpoint => {
            let log = auditing::open(&cfg, &token)?;
            match log.checkpoint()? {
                Some(note) => print!("{note}"),
                None => print!("{}", log.latest_checkpoint()?.unwrap_or_default()),
            }
        }
        AuditCommand::Export { from, out } => {
            let mut w: Box<dyn std::io::Write> = match out {
                Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p)?)),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let n = audit::Log::export(&cfg.audit.dir, *from, &mut w)?;
            w.flush()?;
            eprintln!("exported {n} records");
        }
        AuditCommand::Verify {
            export,
            checkpoint,
            vkey: key,
        } => {
            let verifier = audit::note::Verifier::parse(key.as_deref().unwrap_or(&vkey))?;
            match export {
                Some(file) => verify_file(file, checkpoint.as_deref(), &verifier, as_json)?,
                None => {
                    // The local log, straight from its segment: the chain,
                    // every stored checkpoint, the token's anchored one (by
                    // opening it) and an outside one if given.
                    let _log = auditing::open(&cfg, &token)?;
                    let outside = checkpoint
                        .as_deref()
                        .map(|p| {
                            std::fs::read_to_string(p)
                                .with_context(|| format!("reading {}", p.display()))
                        })
                        .transpose()?;
                    let bar = progress(as_json);
                    let report = audit::verify::verify_log(
                        &cfg.audit.dir,
                        &verifier,
                        outside.as_deref(),
                        |n| {
                            bar.set_message(format!("{n} records verified"));
                            bar.tick();
                        },
                    );
                    bar.finish_and_clear();
                    print_report(&report.map_err(kms::Error::from)?, as_json);
                }
            }
        }
        AuditCommand::Show { since, op, actor } => {
            let since_ms = since
                .as_deref()
                .map(|s| {
                    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as u64)
                        .with_context(|| format!("--since {s:?} is not RFC 3339"))
                })
                .transpose()?;
            audit::for_each_record(&cfg.audit.dir, |_, body| {
                let Ok(r) = serde_json::from_slice::<audit::Record>(body) else {
                    return Ok(());
                };
                let keep = since_ms.is_none_or(|t| r.time_ms >= t)
                    && op.as_deref().is_none_or(|o| r.op == o)
                    && actor.as_deref().is_none_or(|a| r.actor == a);
                if keep {
                    println!("{}", String::from_utf8_lossy(body));
                }
                Ok(())
            })?;
        }
        AuditCommand::Repair { .. } => {}
    }
    Ok(())
}

fn verify_file(
    file: &Path,
    checkpoint: Option<&Path>,
    verifier: &audit::note::Verifier,
    as_json: bool,
) -> anyhow::Result<()> {
    let outside = checkpoint
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    let input = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| format!("reading {}", file.display()))?,
    );
    let bar = progress(as_json);
    let report = audit::verify::verify_export(input, verifier, outside.as_deref(), |n| {
        bar.set_message(format!("{n} records verified"));
        bar.tick();
    });
    bar.finish_and_clear();
    print_report(&report.map_err(kms::Error::from)?, as_json);
    Ok(())
}

/// A progress bar of `len` steps on stderr (hidden for `--json`).
fn progress_bar(len: u64, hidden: bool, template: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if hidden {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

fn progress(hidden: bool) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_draw_target(if hidden {
        indicatif::ProgressDrawTarget::hidden()
    } else {
        indicatif::ProgressDrawTarget::stderr()
    });
    bar
}

fn print_report(report: &audit::verify::Report, as_json: bool) {
    if as_json {
        println!(
            "{}",
            json!({ "ok": true, "first": report.first, "records": report.records, "checkpoints": report.checkpoints, "checkpointed": report.checkpointed })
        );
    } else {
        println!(
            "audit log OK: records {}..{} chain verified, {} checkpoint(s), newest covers {}",
            report.first,
            report.first + report.records.saturating_sub(1),
            report.checkpoints,
            report.checkpointed
        );
    }
}

fn print_cas(cas: &[ceremony::CaSummary]) {
    for c in cas {
        println!("{}:", c.name);
        println!("  subject     {}", c.subject);
        println!("  issuer      {}", c.issuer);
        println!("  serial      {}", c.serial_number);
        println!("  not after   {}", c.not_after);
        println!("  sha256      {}", c.sha256_fingerprint);
        println!("  key         {}", c.key_uri);
        println!("  file        {}", c.file.display());
    }
}

fn require_config(config: &Option<PathBuf>) -> anyhow::Result<&Path> {
    config
        .as_deref()
        .context("this verb needs --config FILE (the appliance's kmsd.toml)")
}

fn open_token(path: &Path) -> anyhow::Result<(Config, Arc<Token>)> {
    let cfg = Config::load(path)?;
    cfg.token.apply_module_env();
    let pin = load_pin(&cfg.token)?;
    let token = Arc::new(Token::open(&cfg.token, pin)?);
    Ok((cfg, token))
}

fn status(config: &Path, as_json: bool) -> anyhow::Result<()> {
    let (_, token) = open_token(config)?;
    let keys = token.list_keys()?;
    if as_json {
        let keys: Vec<_> = keys
            .iter()
            .map(|k| {
                json!({
                    "label": k.label, "class": k.class.name(), "algorithm": format!("{:?}", k.algorithm),
                    "id": hex::encode(&k.id), "sensitive": k.sensitive, "extractable": k.extractable, "uri": k.uri,
                })
            })
            .collect();
        println!("{}", json!({ "token": token.label(), "keys": keys }));
    } else {
        println!("token {}: {} key(s)", token.label(), keys.len());
        for k in keys {
            println!("  {:<8} {:<8?} {}", k.class.name(), k.algorithm, k.uri);
        }
    }
    Ok(())
}
