//! `kmsd.toml`: the appliance configuration.
//!
//! Relative paths are resolved against the directory of the config file, so a
//! quickstart directory can be moved as a whole. The user PIN is never in this
//! file: `token.pin_file` or `token.pin_env` says where to read it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The PKCS#11 token.
    pub token: TokenConfig,
    /// Listening addresses.
    #[serde(default)]
    pub server: ServerConfig,
    /// The certificate authorities.
    #[serde(default)]
    pub ca: CaConfig,
    /// The state database.
    #[serde(default)]
    pub storage: StorageConfig,
    /// The audit log.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Who may do what.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// CRLs and OCSP.
    #[serde(default)]
    pub revocation: RevocationConfig,
    /// M-of-N approval requests.
    #[serde(default)]
    pub approvals: ApprovalsConfig,
}

/// `[approvals]`: how long an M-of-N request waits for its approvals.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// Seconds from the request until it expires unapproved (1 to 604800,
    /// a week).
    #[serde(default = "defaults::approval_ttl_seconds")]
    pub ttl_seconds: u64,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            ttl_seconds: defaults::approval_ttl_seconds(),
        }
    }
}

/// `[revocation]`: how often CRLs are made and how long answers are valid.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationConfig {
    /// CRL nextUpdate minus thisUpdate, hours. A CRL is re-signed when half
    /// of it has passed, and sooner after revocations.
    #[serde(default = "defaults::crl_validity_hours")]
    pub crl_validity_hours: u64,
    /// After a revocation, how long to wait for more before re-signing the
    /// CRL (one signature for a burst), ms.
    #[serde(default = "defaults::crl_coalesce_ms")]
    pub crl_coalesce_ms: u64,
    /// OCSP nextUpdate minus thisUpdate, minutes. A cached response is
    /// re-signed when half of it has passed.
    #[serde(default = "defaults::ocsp_validity_minutes")]
    pub ocsp_validity_minutes: u64,
    /// Most pre-signed OCSP responses kept in memory.
    #[serde(default = "defaults::ocsp_cache_entries")]
    pub ocsp_cache_entries: usize,
}

impl Default for RevocationConfig {
    fn default() -> Self {
        Self {
            crl_validity_hours: defaults::crl_validity_hours(),
            crl_coalesce_ms: defaults::crl_coalesce_ms(),
            ocsp_validity_minutes: defaults::ocsp_validity_minutes(),
            ocsp_cache_entries: defaults::ocsp_cache_entries(),
        }
    }
}

/// `[policy]`: the policy file (see README, "Policy").
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The policy file. Unset: the empty policy, under which no station or
    /// officer certificate may do anything (deny by default).
    pub file: Option<PathBuf>,
}

/// `[audit]`: where the log lives and how it is checkpointed.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Directory of the segment and checkpoint files.
    #[serde(default = "defaults::audit_dir")]
    pub dir: PathBuf,
    /// Token label of the Ed25519 checkpoint key.
    #[serde(default = "defaults::audit_key")]
    pub key: String,
    /// Checkpoint origin and key name.
    #[serde(default = "defaults::audit_origin")]
    pub origin: String,
    /// Sign a checkpoint every this many records.
    #[serde(default = "defaults::checkpoint_every")]
    pub checkpoint_every: u64,
    /// And every this many seconds while `kmsd` runs (if records were added).
    #[serde(default = "defaults::checkpoint_seconds")]
    pub checkpoint_seconds: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            dir: defaults::audit_dir(),
            key: defaults::audit_key(),
            origin: defaults::audit_origin(),
            checkpoint_every: defaults::checkpoint_every(),
            checkpoint_seconds: defaults::checkpoint_seconds(),
        }
    }
}

/// `[ca]`: where the CA certificates live, the token key labels, and what
/// goes into device certificates besides the profile.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// Directory of `root.pem`, `intermediate.pem`, `internal.pem`, `chain.pem`.
    #[serde(default = "defaults::ca_dir")]
    pub dir: PathBuf,
    /// Organization (O) of the CA certificates and credentials.
    #[serde(default = "defaults::organization")]
    pub organization: String,
    /// Token label of the root CA key.
    #[serde(default = "defaults::root_key")]
    pub root_key: String,
    /// Token label of the manufacturing intermediate CA key.
    #[serde(default = "defaults::intermediate_key")]
    pub intermediate_key: String,
    /// Token label of the internal (mTLS) CA key.
    #[serde(default = "defaults::internal_key")]
    pub internal_key: String,
    /// Base URL of the publication port as devices and relying parties reach
    /// it; CRL and OCSP URLs in certificates are built from it. Default:
    /// `http://` + `server.publication_listen`.
    pub publication_url: Option<String>,
    /// Device profile file; the shipped `deploy/profiles.toml` when unset.
    pub profiles: Option<PathBuf>,
    /// `hwType` OID of the hardwareModuleName SAN.
    #[serde(default = "defaults::hw_type_oid")]
    pub hw_type_oid: String,
}

impl Default for CaConfig {
    fn default() -> Self {
        Self {
            dir: defaults::ca_dir(),
            organization: defaults::organization(),
            root_key: defaults::root_key(),
            intermediate_key: defaults::intermediate_key(),
            internal_key: defaults::internal_key(),
            publication_url: None,
            profiles: None,
            hw_type_oid: defaults::hw_type_oid(),
        }
    }
}

/// `[storage]`: the state database.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// sled database directory.
    #[serde(default = "defaults::storage_path")]
    pub path: PathBuf,
    /// How long an issuance's store commit may wait to be written out
    /// (milliseconds). Issuances are durable in the audit log before they
    /// are acknowledged; the store catches up within this interval or with
    /// the next flushed commit, and start-up reconciliation re-applies
    /// whatever a crash took.
    #[serde(default = "defaults::flush_every_ms")]
    pub flush_every_ms: u64,
    /// Free space (MiB) kept on the file systems of the store and the audit
    /// log: below it every request is refused with `storage_unavailable`
    /// (nothing recorded, nothing changed) until space is freed, so neither
    /// meets a full disk. 0 turns the check off.
    #[serde(default = "defaults::reserve_mb")]
    pub reserve_mb: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            path: defaults::storage_path(),
            flush_every_ms: defaults::flush_every_ms(),
            reserve_mb: defaults::reserve_mb(),
        }
    }
}

/// `[token]`: which PKCS#11 module and token, and how the session pool behaves.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Path of the PKCS#11 module (shared library).
    pub module: PathBuf,
    /// Label of the token to use.
    pub label: String,
    /// File holding the user PIN (mode 0600 or stricter, owned by the service user).
    pub pin_file: Option<PathBuf>,
    /// Name of an environment variable holding the user PIN (instead of `pin_file`).
    pub pin_env: Option<String>,
    /// Number of sessions kept open and shared by all requests.
    #[serde(default = "defaults::pool_size")]
    pub pool_size: usize,
    /// How many times an operation is retried after a lost session or token.
    #[serde(default = "defaults::retries")]
    pub retries: u32,
    /// Pause before retrying after the token itself went away (grows linearly per attempt).
    #[serde(default = "defaults::retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// Longest wait for a free session before `token_unavailable`.
    #[serde(default = "defaults::acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
    /// Environment variables the module reads at load (e.g. `SOFTHSM2_CONF`),
    /// set by the binaries before any thread starts.
    #[serde(default)]
    pub module_env: BTreeMap<String, String>,
}

/// `[server]`: listening addresses.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The mTLS API (stations, officers).
    #[serde(default = "defaults::api_listen")]
    pub api_listen: SocketAddr,
    /// The plain-HTTP, read-only publication port (CRLs, OCSP, chain, health).
    #[serde(default = "defaults::publication_listen")]
    pub publication_listen: SocketAddr,
    /// Local admin socket (Unix domain, mode 0600): how `kmsctl` on the
    /// appliance reaches a running `kmsd`.
    #[serde(default = "defaults::admin_socket")]
    pub admin_socket: PathBuf,
    /// DNS names of the API in the server certificate (loopback and the
    /// `api_listen` address are added as IP names).
    #[serde(default = "defaults::server_names")]
    pub names: Vec<String>,
    /// Token label of the TLS server key (made at first start).
    #[serde(default = "defaults::tls_key")]
    pub tls_key: String,
    /// Most connections served at once on the API port; more wait in the
    /// kernel's backlog.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Largest request body, bytes.
    #[serde(default = "defaults::body_limit")]
    pub body_limit: usize,
    /// Longest TLS handshake, ms.
    #[serde(default = "defaults::handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Longest wait for a request's headers (and between keep-alive
    /// requests), ms.
    #[serde(default = "defaults::header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Longest a request may take, body and answer included, ms.
    #[serde(default = "defaults::request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// At shutdown, how long in-flight requests may finish, ms.
    #[serde(default = "defaults::shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            api_listen: defaults::api_listen(),
            publication_listen: defaults::publication_listen(),
            admin_socket: defaults::admin_socket(),
            names: defaults::server_names(),
            tls_key: defaults::tls_key(),
            max_connections: defaults::max_connections(),
            body_limit: defaults::body_limit(),
            handshake_timeout_ms: defaults::handshake_timeout_ms(),
            header_timeout_ms: defaults::header_timeout_ms(),
            request_timeout_ms: defaults::request_timeout_ms(),
            shutdown_grace_ms: defaults::shutdown_grace_ms(),
        }
    }
}

mod defaults {
    use std::net::SocketAddr;
    use std::path::PathBuf;

    pub fn ca_dir() -> PathBuf {
        "ca".into()
    }
    pub fn organization() -> String {
        "vBus".into()
    }
    pub fn root_key() -> String {
        "root-ca".into()
    }
    pub fn intermediate_key() -> String {
        "mfg-intermediate".into()
    }
    pub fn internal_key() -> String {
        "internal-ca".into()
    }
    pub fn hw_type_oid() -> String {
        ca::DEFAULT_HW_TYPE.into()
    }
    pub fn flush_every_ms() -> u64 {
        crate::storage::FLUSH_EVERY_MS
    }

    pub fn reserve_mb() -> u64 {
        64
    }

    pub fn storage_path() -> PathBuf {
        "data".into()
    }
    pub fn audit_dir() -> PathBuf {
        "audit".into()
    }
    pub fn audit_key() -> String {
        "audit-key".into()
    }
    pub fn audit_origin() -> String {
        "vbus-kms/audit".into()
    }
    pub fn checkpoint_every() -> u64 {
        1000
    }
    pub fn checkpoint_seconds() -> u64 {
        60
    }

    pub fn pool_size() -> usize {
        4
    }
    pub fn retries() -> u32 {
        3
    }
    pub fn retry_backoff_ms() -> u64 {
        100
    }
    pub fn acquire_timeout_ms() -> u64 {
        5_000
    }
    pub fn api_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8443))
    }
    pub fn publication_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8080))
    }
    pub fn admin_socket() -> PathBuf {
        "admin.sock".into()
    }
    pub fn server_names() -> Vec<String> {
        vec!["localhost".into()]
    }
    pub fn tls_key() -> String {
        "tls-server".into()
    }
    pub fn max_connections() -> usize {
        1024
    }
    pub fn body_limit() -> usize {
        64 * 1024
    }
    pub fn handshake_timeout_ms() -> u64 {
        10_000
    }
    pub fn header_timeout_ms() -> u64 {
        10_000
    }
    pub fn request_timeout_ms() -> u64 {
        30_000
    }
    pub fn shutdown_grace_ms() -> u64 {
        10_000
    }
    pub fn crl_validity_hours() -> u64 {
        24
    }
    pub fn crl_coalesce_ms() -> u64 {
        1_000
    }
    pub fn ocsp_validity_minutes() -> u64 {
        60
    }
    pub fn ocsp_cache_entries() -> usize {
        100_000
    }
    pub fn approval_ttl_seconds() -> u64 {
        24 * 3600
    }
}

/// Largest pool we accept; more sessions than this buys nothing on a 2-core
/// appliance and may exhaust an HSM's session table.
pub const MAX_POOL_SIZE: usize = 256;

impl Config {
    /// Read, parse and validate `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.to_owned(),
            reason: format!("cannot read: {e}"),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(|reason| Error::Config {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parse `text`, resolving relative paths against `base`.
    pub fn parse(text: &str, base: &Path) -> std::result::Result<Self, String> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.token.validate()?;
        cfg.token.module = resolve(base, &cfg.token.module);
        if let Some(p) = &cfg.token.pin_file {
            cfg.token.pin_file = Some(resolve(base, p));
        }
        cfg.ca.dir = resolve(base, &cfg.ca.dir);
        cfg.ca.profiles = cfg.ca.profiles.as_deref().map(|p| resolve(base, p));
        cfg.storage.path = resolve(base, &cfg.storage.path);
        cfg.audit.dir = resolve(base, &cfg.audit.dir);
        cfg.policy.file = cfg.policy.file.as_deref().map(|p| resolve(base, p));
        cfg.server.admin_socket = resolve(base, &cfg.server.admin_socket);
        if cfg.audit.origin.is_empty() || cfg.audit.origin.contains(['+', ' ', '\n']) {
            return Err(
                "audit.origin must be non-empty without spaces or '+' (a C2SP key name)".into(),
            );
        }
        let r = &cfg.revocation;
        if !(1..=24 * 31).contains(&r.crl_validity_hours)
            || r.crl_coalesce_ms > 60_000
            || !(2..=7 * 24 * 60).contains(&r.ocsp_validity_minutes)
        {
            return Err(
                "revocation: crl_validity_hours must be 1 to 744, crl_coalesce_ms at most \
                 60000, ocsp_validity_minutes 2 to 10080"
                    .into(),
            );
        }
        if !(1..=7 * 24 * 3600).contains(&cfg.approvals.ttl_seconds) {
            return Err("approvals.ttl_seconds must be 1 to 604800 (a week)".into());
        }
        if cfg
            .ca
            .hw_type_oid
            .parse::<der::asn1::ObjectIdentifier>()
            .is_err()
        {
            return Err(format!(
                "ca.hw_type_oid {:?} is not an OID",
                cfg.ca.hw_type_oid
            ));
        }
        Ok(cfg)
    }
}

impl TokenConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        if self.label.is_empty() || self.label.len() > 32 {
            return Err("token.label must be 1 to 32 bytes (the PKCS#11 label field)".into());
        }
        match (&self.pin_file, &self.pin_env) {
            (Some(_), Some(_)) => {
                return Err("set only one of token.pin_file and token.pin_env".into());
            }
            (None, None) => {
                return Err(
                    "set token.pin_file or token.pin_env (the PIN itself never goes in this file)"
                        .into(),
                );
            }
            _ => {}
        }
        if self.pool_size == 0 || self.pool_size > MAX_POOL_SIZE {
            return Err(format!("token.pool_size must be 1 to {MAX_POOL_SIZE}"));
        }
        if self.retries > 10 {
            return Err("token.retries must be at most 10".into());
        }
        Ok(())
    }

    /// Set `module_env` in this process's environment.
    ///
    /// Call from `main` before any thread is spawned: the module reads these
    /// variables at `C_Initialize`, and changing the environment while other
    /// threads run is not safe.
    pub fn apply_module_env(&self) {
        for (k, v) in &self.module_env {
            std::env::set_var(k, v);
        }
    }
}

impl Config {
    /// Base URL of the publication port.
    pub fn publication_url(&self) -> String {
        self.ca
            .publication_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.server.publication_listen))
            .trim_end_matches('/')
            .to_owned()
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[token]
module = "/usr/lib/softhsm/libsofthsm2.so"
label = "vbus-kms"
pin_file = "pin"
"#;

    #[test]
    fn defaults_and_relative_paths() {
        let cfg = Config::parse(GOOD, Path::new("/etc/vbus")).unwrap();
        assert_eq!(
            cfg.token.pin_file.as_deref(),
            Some(Path::new("/etc/vbus/pin"))
        );
        assert_eq!(cfg.token.pool_size, 4);
        assert_eq!(cfg.server.publication_listen.port(), 8080);
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let cases: &[(&str, &str)] = &[
            ("pin_file = \"pin\"", "token.pin_file or token.pin_env"),
            ("pin_env = \"X\"", "only one of"),
            ("pool_size = 0", "pool_size must be 1 to 256"),
            ("pool_size = 1000", "pool_size must be 1 to 256"),
            ("pin = \"1234\"", "unknown field `pin`"),
            ("retries = 99", "retries must be at most 10"),
        ];
        for (edit, want) in cases {
            // Each row edits the good file in one place.
            let text = if edit.starts_with("pin_file") {
                GOOD.replace("pin_file = \"pin\"\n", "")
            } else {
                format!("{GOOD}{edit}\n")
            };
            let err = Config::parse(&text, Path::new("/")).unwrap_err();
            assert!(err.contains(want), "{edit}: got {err}");
        }
    }

    /// The shipped example, `deploy/kmsd.example.toml`.
    fn example_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kmsd.example.toml")
    }

    /// The keys the config structs accept in `section` ("" for the top
    /// level), as serde lists them when it refuses an unknown one: every
    /// struct here has `deny_unknown_fields`, so this follows the structs
    /// themselves and needs no list kept by hand.
    fn known_keys(section: &str) -> Vec<String> {
        const PROBE: &str = "zz_probe";
        let token = "[token]\nmodule = \"m\"\nlabel = \"l\"\npin_file = \"p\"\n";
        let text = match section {
            "" => format!("{token}[{PROBE}]\n"),
            "token" => format!("{token}{PROBE} = 1\n"),
            s => format!("{token}[{s}]\n{PROBE} = 1\n"),
        };
        let err = match toml::from_str::<Config>(&text) {
            Ok(_) => panic!("[{section}] accepted an unknown key: not a struct?"),
            Err(e) => e.to_string(),
        };
        let marker = format!("unknown field `{PROBE}`, expected ");
        let at = err
            .find(&marker)
            .unwrap_or_else(|| panic!("[{section}]: unexpected error {err}"));
        let keys: Vec<String> = err[at + marker.len()..]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        assert!(!keys.is_empty(), "[{section}]: no keys in {err}");
        keys
    }

    /// A commented-out key line (`# key = value`): its key and the line
    /// without the `#`.
    fn commented_key(line: &str) -> Option<(String, String)> {
        let rest = line.strip_prefix('#')?.trim_start();
        let (key, _) = rest.split_once('=')?;
        let key = key.trim();
        let is_key = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        // Prose with an '=' in it is not a key: the line must be valid TOML.
        (is_key && rest.parse::<toml::Table>().is_ok()).then(|| (key.to_owned(), rest.to_owned()))
    }

    /// The documented default in a key's comment block: the TOML value after
    /// "Default:" (up to a parenthesis or the end of the sentence), or None
    /// when the default is described in words ("unset", "empty", ...).
    fn documented_default(doc: &str) -> Option<String> {
        let (_, after) = doc.split_once("Default:")?;
        let value = after
            .split(" (")
            .next()?
            .split(". ")
            .next()?
            .trim()
            .trim_end_matches('.');
        format!("v = {value}")
            .parse::<toml::Table>()
            .is_ok()
            .then(|| value.to_owned())
    }

    /// Every key the config structs know is in the example, active or as a
    /// `# key = value` line, each under a comment that gives its default;
    /// every default written as a value is the real one; the example loads
    /// with the real loader, and so does it with every commented key
    /// switched on (so those are real keys with values of the right type).
    #[test]
    fn example_config_lists_every_key_with_its_default() {
        let path = example_path();
        let text = std::fs::read_to_string(&path).unwrap();
        Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));

        // Walk the file: (section, key) -> its comment block.
        let mut documented: BTreeMap<(String, String), String> = BTreeMap::new();
        let mut uncommented = String::new();
        let mut section = String::new();
        let mut doc = String::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let mut found = None;
            if let Some(header) = line.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                // A nested table (`[token.module_env]`) is a key of its parent.
                if let Some((parent, key)) = header.rsplit_once('.') {
                    found = Some((parent.to_owned(), key.to_owned()));
                }
                section = header.to_owned();
                uncommented.push_str(line);
            } else if let Some((key, active)) = commented_key(line) {
                found = Some((section.clone(), key));
                uncommented.push_str(&active);
            } else if let Some(prose) = line.strip_prefix('#') {
                doc.push(' ');
                doc.push_str(prose.trim());
                uncommented.push_str(line);
                uncommented.push('\n');
                continue;
            } else if let Some((key, _)) = line.split_once('=') {
                found = Some((section.clone(), key.trim().to_owned()));
                uncommented.push_str(line);
            } else {
                uncommented.push_str(line);
            }
            uncommented.push('\n');
            if let Some(k) = found {
                let block = std::mem::take(&mut doc);
                // Keys inside a free-form map (module_env's variables) are
                // not config keys: their table's header carries the doc.
                if section == "token.module_env" && k.0 == section {
                    continue;
                }
                assert!(
                    block.contains("Default:") || block.to_lowercase().contains("required"),
                    "line {}: `{}` has no comment giving its default",
                    n + 1,
                    k.1
                );
                assert!(
                    documented.insert(k.clone(), block).is_none(),
                    "line {}: [{}] {} listed twice",
                    n + 1,
                    k.0,
                    k.1
                );
            } else {
                doc.clear();
            }
        }

        // Both ways: every known key documented, every documented key known.
        let mut known = Vec::new();
        for section in known_keys("") {
            for key in known_keys(&section) {
                known.push((section.clone(), key));
            }
        }
        for k in &known {
            assert!(
                documented.contains_key(k),
                "{} lacks [{}] {}",
                path.display(),
                k.0,
                k.1
            );
        }
        for k in documented.keys() {
            assert!(known.contains(k), "[{}] {} is not a config key", k.0, k.1);
        }
        let all_on: Config = toml::from_str(&uncommented)
            .unwrap_or_else(|e| panic!("the example with every key switched on: {e}"));
        assert!(all_on.token.pin_env.is_some() && all_on.ca.profiles.is_some());

        // The defaults written as values are the real defaults: setting a key
        // to its documented default changes nothing.
        let token = "[token]\nmodule = \"m\"\nlabel = \"l\"\npin_file = \"p\"\n";
        let base = format!("{:?}", Config::parse(token, Path::new("/b")).unwrap());
        let mut in_words = Vec::new();
        for ((section, key), block) in &documented {
            let Some(value) = documented_default(block) else {
                in_words.push(format!("{section}.{key}"));
                continue;
            };
            let text = if section == "token" {
                format!("{token}{key} = {value}\n")
            } else {
                format!("{token}[{section}]\n{key} = {value}\n")
            };
            let with = Config::parse(&text, Path::new("/b"))
                .unwrap_or_else(|e| panic!("[{section}] {key} = {value}: {e}"));
            assert!(
                format!("{with:?}") == base,
                "[{section}] {key}: the documented default {value} is not the default"
            );
        }
        // Only these have a default that is not a plain value.
        assert_eq!(
            in_words,
            [
                "ca.profiles",
                "ca.publication_url",
                "policy.file",
                "token.label",
                "token.module",
                "token.module_env",
                "token.pin_env",
                "token.pin_file",
            ],
        );
    }
}
