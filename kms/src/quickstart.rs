//! `kmsctl quickstart DIR`: a self-contained development appliance.
//!
//! Creates in DIR a SoftHSM2 configuration and token directory, initialises a
//! token through PKCS#11 (`C_InitToken`, `C_InitPIN`) with random SO and user
//! PINs kept in 0600 files, writes `DIR/kmsd.toml`, `DIR/profiles.toml` and
//! `DIR/policy.toml`, runs the key ceremony (CA hierarchy in `DIR/ca/`,
//! officer credential in `DIR/officer/`) and makes the station credential
//! `DIR/stations/station-01/`.
//! Each step is skipped when its result exists, so running it again on a
//! complete DIR changes nothing and an interrupted run can be finished.

use std::fs;
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use cryptoki::context::Pkcs11;
use cryptoki::session::UserType;
use cryptoki::slot::{Slot, TokenInfo};
use secrecy::SecretString;
use zeroize::Zeroizing;

use std::sync::Arc;

use crate::ceremony::{self, write_new, CaFiles};
use crate::config::Config;
use crate::error::{io, Error, Result};
use crate::pin::load_pin;
use crate::token::{ck, initialize, Token};

/// Where Debian puts SoftHSM2.
pub const SOFTHSM2_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// Label of the quickstart token.
pub const TOKEN_LABEL: &str = "vbus-kms";

/// Choices for `kmsctl quickstart`.
#[derive(Clone, Debug)]
pub struct Options {
    /// mTLS API address written to the config.
    pub api: SocketAddr,
    /// Publication address written to the config.
    pub publication: SocketAddr,
    /// PKCS#11 module (SoftHSM2).
    pub module: PathBuf,
}

/// What quickstart did.
#[derive(Debug)]
pub struct Outcome {
    /// The config file to give `kmsd --config`.
    pub config: PathBuf,
    /// False when DIR was already complete and nothing was changed.
    pub created: bool,
}

/// Set up DIR, or confirm it is already set up. The caller must have put
/// `SOFTHSM2_CONF` for DIR in the environment first: see [`softhsm_conf_path`].
pub fn run(dir: &Path, opts: &Options) -> Result<Outcome> {
    let config = dir.join("kmsd.toml");
    let mut created = false;
    if !config.exists() {
        create_token_and_config(dir, &config, opts)?;
        created = true;
    }
    // Open what exists rather than trust it, then finish what is missing.
    let cfg = Config::load(&config)?;
    let pin = load_pin(&cfg.token)?;
    let token = Arc::new(Token::open(&cfg.token, pin)?);
    let actor = crate::auditing::local_actor();
    if !CaFiles::of(&cfg).root.exists() {
        ceremony::init(&cfg, &token, &actor, OFFICER_ID, &dir.join("officer"))?;
        created = true;
    }
    let station = dir.join("stations").join(STATION_ID);
    if !station.exists() {
        let log = crate::auditing::open(&cfg, &token)?;
        let store = crate::storage::SledStore::open(&cfg.storage.path)?;
        let cred = crate::credentials::issue_client(
            &cfg,
            &token,
            &log,
            &store,
            &actor,
            &crate::credentials::NewClient {
                id: STATION_ID,
                role: crate::credentials::ClientRole::Station,
                csr: None,
            },
        )?;
        crate::credentials::write_dir(&cred, &station)?;
        log.checkpoint()?;
        created = true;
    }
    Ok(Outcome { config, created })
}

/// The development policy quickstart writes (`deploy/policy.toml`): the
/// quickstart station may provision every module type.
pub const DEV_POLICY: &str = include_str!("../../deploy/policy.toml");

/// The first officer's identity.
pub const OFFICER_ID: &str = "officer-01";
/// The quickstart station's identity.
pub const STATION_ID: &str = "station-01";

fn create_token_and_config(dir: &Path, config: &Path, opts: &Options) -> Result<()> {
    let tokens = dir.join("tokens");
    if tokens.exists() && fs::read_dir(&tokens).map_err(io(&tokens))?.next().is_some() {
        return Err(Error::Config {
            path: config.to_owned(),
            reason: format!(
                "{} holds a token but no kmsd.toml: a quickstart was interrupted; remove {} and run it again",
                tokens.display(),
                dir.display()
            ),
        });
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&tokens)
        .map_err(io(&tokens))?;
    let conf = softhsm_conf_path(dir);
    write_new(
        &conf,
        format!(
            "# SoftHSM2 token store of this quickstart appliance\n\
             directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        )
        .as_bytes(),
        0o600,
    )?;

    let so_pin = random_pin()?;
    let user_pin = random_pin()?;
    init_token(&opts.module, &so_pin, &user_pin)?;
    write_new(&dir.join("so-pin"), so_pin.as_bytes(), 0o600)?;
    write_new(&dir.join("pin"), user_pin.as_bytes(), 0o600)?;

    let toml = format!(
        "# Written by `kmsctl quickstart`: a self-contained development appliance.\n\
         [token]\nmodule = {module:?}\nlabel = {TOKEN_LABEL:?}\npin_file = \"pin\"\npool_size = 4\n\n\
         [token.module_env]\nSOFTHSM2_CONF = {conf:?}\n\n\
         [server]\napi_listen = \"{api}\"\npublication_listen = \"{publication}\"\n\n\
         [ca]\nprofiles = \"profiles.toml\"\n\n\
         [storage]\npath = \"data\"\n\n\
         [audit]\ndir = \"audit\"\n\n\
         [policy]\nfile = \"policy.toml\"\n\n\
         [revocation]\ncrl_validity_hours = 24\ncrl_coalesce_ms = 1000\nocsp_validity_minutes = 60\n\n\
         [approvals]\nttl_seconds = 86400\n",
        module = opts.module.display().to_string(),
        conf = conf.display().to_string(),
        api = opts.api,
        publication = opts.publication,
    );
    write_new(
        &dir.join("profiles.toml"),
        ca::DEFAULT_PROFILES.as_bytes(),
        0o644,
    )?;
    write_new(&dir.join("policy.toml"), DEV_POLICY.as_bytes(), 0o644)?;
    // The config is written last: its presence means "token and config done".
    write_new(config, toml.as_bytes(), 0o644)
}

/// The SoftHSM2 config file of a quickstart DIR (absolute when DIR is).
pub fn softhsm_conf_path(dir: &Path) -> PathBuf {
    dir.join("softhsm2.conf")
}

fn init_token(module: &Path, so_pin: &str, user_pin: &str) -> Result<()> {
    let pkcs11 = Pkcs11::new(module).map_err(|e| Error::ModuleLoad {
        path: module.to_owned(),
        reason: e.to_string(),
    })?;
    initialize(&pkcs11)?;
    let free =
        slot_where(&pkcs11, |t| !t.token_initialized())?.ok_or_else(|| Error::TokenNotFound {
            label: "(an uninitialised slot)".into(),
            module: module.to_owned(),
            present: "no free slot".into(),
        })?;
    let so = SecretString::from(so_pin.to_owned());
    let user = SecretString::from(user_pin.to_owned());
    pkcs11.init_token(free, &so, TOKEN_LABEL).map_err(ck)?;
    // SoftHSM2 renumbers a slot once its token is initialised: look again.
    let slot = slot_where(&pkcs11, |t| {
        t.token_initialized() && t.label().trim_end() == TOKEN_LABEL
    })?
    .ok_or(Error::Unreachable("token vanished right after C_InitToken"))?;
    let session = pkcs11.open_rw_session(slot).map_err(ck)?;
    session.login(UserType::So, Some(&so)).map_err(ck)?;
    session.init_pin(&user).map_err(ck)?;
    session.logout().map_err(ck)?;
    Ok(())
}

/// The first slot whose token satisfies `pred`.
fn slot_where(pkcs11: &Pkcs11, pred: impl Fn(&TokenInfo) -> bool) -> Result<Option<Slot>> {
    Ok(pkcs11
        .get_slots_with_token()
        .map_err(ck)?
        .into_iter()
        .find(|s| pkcs11.get_token_info(*s).is_ok_and(|t| pred(&t))))
}

/// 128 random bits from the kernel, as 32 hex digits.
fn random_pin() -> Result<Zeroizing<String>> {
    let path = Path::new("/dev/urandom");
    let mut bytes = Zeroizing::new([0u8; 16]);
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(bytes.as_mut()))
        .map_err(io(path))?;
    Ok(Zeroizing::new(hex::encode(bytes.as_ref())))
}
