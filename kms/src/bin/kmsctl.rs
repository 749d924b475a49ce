//! `kmsctl`: the vBus KMS officer CLI.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kms::ceremony;
use kms::config::Config;
use kms::pin::load_pin;
use kms::quickstart;
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
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Allow one re-issue for a new key to an already certified device.
    AllowReissue {
        /// Module serial.
        serial: String,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The stable code first, for scripts; then the whole story.
            match e.chain().find_map(|c| c.downcast_ref::<kms::Error>()) {
                Some(k) => eprintln!("error[{}]: {e:#}", k.code()),
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
            let report = ceremony::init(&cfg, &token, officer, &dir)?;
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
                CertCommand::Issue {
                    csr,
                    serial,
                    uuid,
                    out,
                },
        } => {
            let (cfg, token) = open_token(require_config(&cli.config)?)?;
            let csr = std::fs::read(csr).with_context(|| format!("reading {}", csr.display()))?;
            let store = Arc::new(SledStore::open(&cfg.storage.path)?);
            let ca = ceremony::load_ca(&cfg, &token, store)?;
            let issued = ca
                .issue(&ca::IssueRequest {
                    module_serial: serial,
                    hw_uuid: uuid,
                    csr: &csr,
                })
                .map_err(kms::Error::from)?;
            let pem = ceremony::pem(&issued.certificate_der)?;
            if cli.json {
                println!(
                    "{}",
                    json!({
                        "serial_number": issued.serial_number, "certificate": pem,
                        "chain": ceremony::chain_pem(&cfg)?, "not_after": issued.not_after,
                        "newly_issued": issued.newly_issued,
                    })
                );
            } else {
                match out {
                    Some(path) => std::fs::write(path, &pem)
                        .with_context(|| format!("writing {}", path.display()))?,
                    None => print!("{pem}"),
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
        Command::Device {
            command: DeviceCommand::AllowReissue { serial },
        } => {
            let (cfg, token) = open_token(require_config(&cli.config)?)?;
            let store = Arc::new(SledStore::open(&cfg.storage.path)?);
            ceremony::load_ca(&cfg, &token, store)?
                .allow_reissue(serial)
                .map_err(kms::Error::from)?;
            println!("{serial}: one re-issue for a new key allowed");
            Ok(())
        }
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
