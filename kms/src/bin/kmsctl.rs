//! `kmsctl`: the vBus KMS officer CLI.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use kms::config::Config;
use kms::pin::load_pin;
use kms::quickstart;
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
    }
}

fn require_config(config: &Option<PathBuf>) -> anyhow::Result<&Path> {
    config
        .as_deref()
        .context("this verb needs --config FILE (the appliance's kmsd.toml)")
}

fn open_token(path: &Path) -> anyhow::Result<Token> {
    let cfg = Config::load(path)?;
    cfg.token.apply_module_env();
    let pin = load_pin(&cfg.token)?;
    Ok(Token::open(&cfg.token, pin)?)
}

fn status(config: &Path, as_json: bool) -> anyhow::Result<()> {
    let token = open_token(config)?;
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
