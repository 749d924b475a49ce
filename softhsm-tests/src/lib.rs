//! Test support: a private SoftHSM2 token per test, and the built binaries.
//!
//! Every test gets its own temporary token directory and `softhsm2.conf`, so
//! tests never share token state; the token is initialised with
//! `softhsm2-util --init-token --free`, a tool we did not write. `cargo
//! nextest` runs each test in its own process, which suits a PKCS#11 library
//! that is initialised once per process.

#![forbid(unsafe_code)]
// Test support: failing loudly on a broken fixture is the point.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Debian's SoftHSM2 module.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The user PIN of every test token (tests only).
pub const USER_PIN: &str = "test-user-pin-1234";
/// The SO PIN of every test token (tests only).
pub const SO_PIN: &str = "test-so-pin-5678";

/// A fresh SoftHSM2 token in a temporary directory, removed on drop.
pub struct SoftHsm {
    dir: tempfile::TempDir,
    /// Token label.
    pub label: String,
}

impl SoftHsm {
    /// Create a token labelled `label` in a new directory.
    pub fn new(label: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("vbus-softhsm-")
            .tempdir()
            .expect("temp dir");
        let tokens = dir.path().join("tokens");
        fs::create_dir(&tokens).expect("token dir");
        fs::write(
            dir.path().join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .expect("softhsm2.conf");
        let pin = dir.path().join("pin");
        fs::write(&pin, USER_PIN).expect("pin file");
        fs::set_permissions(&pin, fs::Permissions::from_mode(0o600)).expect("chmod pin");
        let hsm = SoftHsm {
            dir,
            label: label.to_owned(),
        };
        hsm.init_token(label);
        hsm
    }

    /// Initialise one more token labelled `label` (same SO and user PIN)
    /// in this installation; its directory under `tokens/`.
    pub fn init_token(&self, label: &str) -> PathBuf {
        let tokens = self.dir().join("tokens");
        let listing = || -> Vec<PathBuf> {
            fs::read_dir(&tokens)
                .expect("token dir")
                .flatten()
                .map(|e| e.path())
                .collect()
        };
        let before = listing();
        let mut init = self.command("softhsm2-util");
        init.args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            SO_PIN,
            "--pin",
            USER_PIN,
        ]);
        let out = run(&mut init);
        assert!(
            out.status.success(),
            "softhsm2-util --init-token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        listing()
            .into_iter()
            .find(|p| !before.contains(p))
            .expect("the new token's directory")
    }

    /// The directory holding the config, the tokens and the PIN file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of this token's `softhsm2.conf`.
    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    /// Path of the 0600 file holding [`USER_PIN`].
    pub fn pin_file(&self) -> PathBuf {
        self.dir.path().join("pin")
    }

    /// Point this process's SoftHSM2 at this token. Call before the module
    /// is first initialised in the process (tests run one per process).
    pub fn export_env(&self) {
        std::env::set_var("SOFTHSM2_CONF", self.conf());
    }

    /// A `[token]` section for a `kmsd.toml` using this token.
    pub fn token_toml(&self) -> String {
        format!(
            "[token]\nmodule = {MODULE:?}\nlabel = {:?}\npin_file = {:?}\n\n[token.module_env]\nSOFTHSM2_CONF = {:?}\n",
            self.label,
            self.pin_file().display().to_string(),
            self.conf().display().to_string()
        )
    }

    /// A whole `kmsd.toml` for an appliance living in this token's
    /// directory (`ca/`, `db/`, `audit/` under `appliance/`), with `extra`
    /// lines added to `[token]`.
    pub fn appliance_toml(&self, extra: &str) -> String {
        let data = self.dir().join("appliance");
        let path = |p: &str| data.join(p).display().to_string();
        format!(
            "{}\n[ca]\ndir = {:?}\n\n[storage]\npath = {:?}\n\n[audit]\ndir = {:?}\n",
            self.token_toml()
                .replacen("[token]\n", &format!("[token]\n{extra}"), 1),
            path("ca"),
            path("db"),
            path("audit")
        )
    }

    /// A command with `SOFTHSM2_CONF` set for this token.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("SOFTHSM2_CONF", self.conf());
        c
    }

    /// Run `pkcs11-tool` (OpenSC) on this token, logged in, and return stdout.
    pub fn pkcs11_tool(&self, args: &[&str]) -> String {
        let mut c = self.command("pkcs11-tool");
        c.args([
            "--module",
            MODULE,
            "--token-label",
            &self.label,
            "--login",
            "--pin",
            USER_PIN,
        ]);
        c.args(args);
        let out = run(&mut c);
        assert!(
            out.status.success(),
            "pkcs11-tool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A fresh OpenSSL key and CSR with subject `/CN=<cn>` in `dir`: `curve`
/// is an OpenSSL curve name (`prime256v1`, `prime192v1`) or `ed25519`.
/// Returns the CSR's path.
pub fn openssl_csr(dir: &Path, name: &str, curve: &str, cn: &str) -> PathBuf {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let mut gen = Command::new("openssl");
    match curve {
        "ed25519" => gen.args(["genpkey", "-algorithm", "ED25519", "-out"]),
        c => gen.args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            &format!("ec_paramgen_curve:{c}"),
            "-out",
        ]),
    };
    let out = run(gen.arg(&key));
    assert!(
        out.status.success(),
        "openssl genpkey: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(Command::new("openssl")
        .args(["req", "-new", "-key"])
        .arg(&key)
        .args(["-subj", &format!("/CN={cn}"), "-out"])
        .arg(&csr));
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    csr
}

/// A self-signed P-256 certificate made by OpenSSL with `subject` (e.g.
/// `/CN=Foreign CA`), valid one day: a CA or client that is not ours.
/// Returns (key path, certificate path).
pub fn openssl_self_signed(dir: &Path, name: &str, subject: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.pem"));
    let out = run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", subject, "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    assert!(
        out.status.success(),
        "openssl req -x509: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (key, cert)
}

/// Run a command, panicking with its name if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()))
}

/// Path of a binary of this workspace in the same target directory as the
/// running test (`cargo nextest run --workspace` builds them all).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `kmsctl quickstart DIR` with the publication port on `port` and the API
/// on a free port.
pub fn quickstart(dir: &Path, port: u16) -> Output {
    run(Command::new(bin("kmsctl"))
        .arg("quickstart")
        .arg(dir)
        .args(["--pub", &format!("127.0.0.1:{port}")])
        .args(["--api", &format!("127.0.0.1:{}", free_port())]))
}

/// `kmsctl --config DIR/kmsd.toml ARGS…`.
pub fn kmsctl(dir: &Path, args: &[&str]) -> Output {
    run(Command::new(bin("kmsctl"))
        .arg("--config")
        .arg(dir.join("kmsd.toml"))
        .args(args))
}

/// GET with curl; (status, body). Status 0 when nothing answered.
pub fn curl(url: &str) -> (u16, String) {
    let out =
        run(Command::new("curl").args(["-s", "-w", "\n%{http_code}", "--max-time", "10", url]));
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap_or(0), body.to_owned())
}

/// Poll `url` until something answers (30 s at most); the last answer.
pub fn wait_for(url: &str) -> (u16, String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let answer = curl(url);
        if answer.0 != 0 || std::time::Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A running `kmsd`, killed if a test fails before stopping it.
pub struct Service(pub std::process::Child);

impl Service {
    /// Start `kmsd --config DIR/kmsd.toml` and wait until `/healthz` on
    /// `port` answers 200.
    pub fn start(dir: &Path, port: u16) -> Self {
        // Its log goes to DIR/kmsd.log: a pipe nobody reads would fill up
        // and stop the service.
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("kmsd.log"))
            .unwrap();
        let child = Command::new(bin("kmsd"))
            .arg("--config")
            .arg(dir.join("kmsd.toml"))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut service = Service(child);
        let url = format!("http://127.0.0.1:{port}/healthz");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let (status, body) = curl(&url);
            if status == 200 {
                return service;
            }
            // A kmsd that exited will never answer: say why at once.
            if let Ok(Some(exit)) = service.0.try_wait() {
                let log = fs::read_to_string(dir.join("kmsd.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                panic!(
                    "kmsd exited ({exit}) before answering on {url}; its log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "kmsd did not answer 200 on {url} within 60 s: {status} {body}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait; the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.0.id().to_string();
        assert!(run(Command::new("kill").args(["-TERM", &pid]))
            .status
            .success());
        self.0.wait().unwrap()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Standard output of a command that must succeed (its stderr otherwise).
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `kmsctl cert issue --csr CSR --serial SERIAL --uuid UUID EXTRA…` on the
/// appliance in `dir`.
pub fn kmsctl_issue(dir: &Path, csr: &Path, serial: &str, uuid: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "cert",
        "issue",
        "--csr",
        csr.to_str().unwrap(),
        "--serial",
        serial,
        "--uuid",
        uuid,
    ];
    args.extend_from_slice(extra);
    kmsctl(dir, &args)
}

/// A quickstart appliance in a temporary directory with `kmsd` running on
/// free ports, and curl/openssl helpers for its API.
pub struct Running {
    /// Keeps the directory alive.
    pub tmp: tempfile::TempDir,
    /// The quickstart directory.
    pub dir: PathBuf,
    /// API port (mTLS).
    pub api: u16,
    /// Publication port.
    pub publication: u16,
    /// The service.
    pub service: Option<Service>,
}

impl Running {
    /// Quickstart, then `edit` the files (config, policy) before `kmsd`
    /// starts.
    pub fn start_with(edit: impl FnOnce(&Path)) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("appliance");
        let (api, publication) = (free_port(), free_port());
        let out = run(Command::new(bin("kmsctl"))
            .arg("quickstart")
            .arg(&dir)
            .args(["--api", &format!("127.0.0.1:{api}")])
            .args(["--pub", &format!("127.0.0.1:{publication}")]));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        edit(&dir);
        let service = Service::start(&dir, publication);
        Running {
            tmp,
            dir,
            api,
            publication,
            service: Some(service),
        }
    }

    /// Quickstart and start.
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// Stop `kmsd` (SIGTERM); its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.service.take().expect("running").stop()
    }

    /// Start `kmsd` again.
    pub fn restart(&mut self) {
        assert!(self.service.is_none(), "stop it first");
        self.service = Some(Service::start(&self.dir, self.publication));
    }

    /// The credential directory of station or officer `who`
    /// (`stations/station-01`, `officer`).
    pub fn credential(&self, who: &str) -> PathBuf {
        self.dir.join(who)
    }

    /// `https://127.0.0.1:<api><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.api)
    }

    /// curl against the API with the credential in `cred` (None: no client
    /// certificate); `args` are extra curl arguments. (status, body); status
    /// 0 when the TLS handshake or connection failed.
    pub fn curl(&self, cred: Option<&str>, path: &str, args: &[&str]) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-w", "\n%{http_code}", "--max-time", "30"]);
        let ca = self.dir.join("stations/station-01/ca.pem");
        cmd.arg("--cacert").arg(&ca);
        if let Some(c) = cred {
            let d = self.credential(c);
            cmd.arg("--cert").arg(d.join("cert.pem"));
            cmd.arg("--key").arg(d.join("key.pem"));
        }
        cmd.args(args).arg(self.url(path));
        let out = run(&mut cmd);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (status.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// `kmsctl --config DIR/kmsd.toml ARGS…`.
    pub fn kmsctl(&self, args: &[&str]) -> Output {
        kmsctl(&self.dir, args)
    }

    /// `kmsctl --url https://… --cert/--key/--ca DIR/<cred>/… ARGS`: the
    /// verbs of an officer (or a station) over mTLS.
    pub fn kmsctl_as(&self, cred: &str, args: &[&str]) -> Output {
        let d = self.credential(cred);
        run(Command::new(bin("kmsctl"))
            .args(["--url", &self.url("")])
            .arg("--cert")
            .arg(d.join("cert.pem"))
            .arg("--key")
            .arg(d.join("key.pem"))
            .arg("--ca")
            .arg(d.join("ca.pem"))
            .args(args))
    }

    /// Plain GET on the publication port; (status, body).
    pub fn publication(&self, path: &str) -> (u16, String) {
        curl(&format!("http://127.0.0.1:{}{path}", self.publication))
    }
}

/// A device CSR as EST clients make it: subject serialNumber and CN the
/// module serial, SAN `URI:urn:uuid:<uuid>`; P-256 key made by openssl.
/// Returns (PEM path, DER path).
pub fn device_csr(dir: &Path, serial: &str, uuid: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{serial}.key"));
    let pem = dir.join(format!("{serial}.csr"));
    let der = dir.join(format!("{serial}.der"));
    let out = run(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
        ])
        .arg(&key)
        .args(["-subj", &format!("/serialNumber={serial}/CN={serial}")])
        .args(["-addext", &format!("subjectAltName=URI:urn:uuid:{uuid}")])
        .arg("-out")
        .arg(&pem));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(Command::new("openssl")
        .args(["req", "-in"])
        .arg(&pem)
        .args(["-outform", "DER", "-out"])
        .arg(&der));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (pem, der)
}

/// The JSON body of `POST /v1/devices/{serial}/certificate`.
pub fn issue_body(csr_pem: &Path, uuid: &str) -> String {
    format!(
        "{{\"csr\":{},\"hw_uuid\":\"{uuid}\"}}",
        json_string(&fs::read_to_string(csr_pem).unwrap())
    )
}

/// `s` as a JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Replace the first `from` in the file at `path` by `to`; `from` must be
/// there, so an edit that no longer applies fails the test instead of
/// silently testing the unedited file.
pub fn edit_file(path: &Path, from: &str, to: &str) {
    let text = fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    fs::write(path, text.replacen(from, to, 1)).unwrap();
}
