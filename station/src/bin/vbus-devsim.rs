//! `vbus-devsim`: a simulated vBus module on a pseudo-terminal, speaking the
//! serial device protocol of `station::serial`, for stations and tests
//! without hardware.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use der::{Decode as _, Encode as _};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::EncodePublicKey as _;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::{open, Mode, OFlags};
use rustix::io::Errno;
use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
use rustix::termios::{tcgetattr, tcsetattr, OptionalActions};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use station::serial::codec::{tag, Command, ErrorCode, FrameDecoder, FrameError, Packet};
use zeroize::Zeroizing;

const ABOUT: &str = "\
A simulated vBus module on a pseudo-terminal, for stations and tests without
hardware. It prints `VBUS_DEVSIM_TTY=<path of the pty>` and
`VBUS_DEVSIM_UID=<hex>` on standard output, then serves the vBus serial
device protocol (see the station crate's `serial` module) until killed.";

const AFTER_HELP: &str = "\
State: without --state the key, certificates, secrets and lock live in
memory and die with the process. With --state DIR they are kept in
DIR/devsim-state.json (DIR mode 0700, the file 0600), rewritten atomically
before each write request is answered, so a killed simulator restarted with
the same --state continues where it stopped. That file holds the private key
and the injected secrets in the clear: a simulator keeps its secrets in a
0600 file, unlike a real device, whose secure element never lets them out.
Never use a simulator's state for a real product.

Fault switches (for tests):
  --fail-after N     answer the first N requests, then read and ignore
                     everything (a power cut as seen from the station: it
                     times out); with --state, a restart continues
  --corrupt-every N  flip one bit in every Nth reply frame sent
  --corrupt-request-every N
                     treat every Nth request received as damaged on the
                     line: answer BAD_CRC with id 0 and do not carry it out
  --delay-ms N       wait N ms before each reply";

#[derive(Parser)]
#[command(version, about = ABOUT, after_help = AFTER_HELP)]
struct Args {
    /// The MCU unique ID, 8-32 bytes in hex [default: the one in --state, or random].
    #[arg(long, value_name = "HEX")]
    uid: Option<String>,
    /// Keep the device state in this directory (created 0700).
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Answer only the first N requests, then stay silent.
    #[arg(long, value_name = "N")]
    fail_after: Option<u64>,
    /// Flip a bit in every Nth reply (N >= 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    corrupt_every: Option<u64>,
    /// Treat every Nth request as damaged on the line (N >= 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    corrupt_request_every: Option<u64>,
    /// Wait this many milliseconds before each reply.
    #[arg(long, value_name = "N", default_value_t = 0)]
    delay_ms: u64,
}

/// Most secrets a simulated device holds.
const MAX_SECRETS: usize = 16;
/// Largest secret value.
const MAX_SECRET_LEN: usize = 1024;
/// Most certificates (device certificate and chain) it holds.
const MAX_CERTS: usize = 8;
const STATE_FILE: &str = "devsim-state.json";
const STATE_FORMAT: &str = "vbus-devsim-state/1";

/// The persisted form. Hex everywhere; the key is the P-256 scalar.
#[derive(Serialize, Deserialize)]
struct StateFile {
    format: String,
    uid: String,
    key: Option<String>,
    certificate: Option<String>,
    chain: Vec<String>,
    secrets: BTreeMap<String, String>,
    locked: bool,
}

struct Device {
    uid: Vec<u8>,
    key: Option<SigningKey>,
    certificate: Option<Vec<u8>>,
    chain: Vec<Vec<u8>>,
    secrets: BTreeMap<String, Zeroizing<Vec<u8>>>,
    locked: bool,
    state: Option<PathBuf>,
}

fn unhex(what: &str, s: &str) -> anyhow::Result<Vec<u8>> {
    hex::decode(s).with_context(|| format!("{what} is not hex"))
}

impl Device {
    fn load(state_dir: Option<&Path>, uid: Option<Vec<u8>>) -> anyhow::Result<Device> {
        let Some(dir) = state_dir else {
            return Ok(Device::fresh(uid, None));
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(STATE_FILE);
        let text = match fs::read(&path) {
            Ok(text) => Zeroizing::new(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let device = Device::fresh(uid, Some(path));
                device.save()?;
                return Ok(device);
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mode = fs::metadata(&path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "{} has mode {mode:04o}; it holds a key and must be 0600",
                path.display()
            );
        }
        let file: StateFile = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a devsim state file", path.display()))?;
        if file.format != STATE_FORMAT {
            bail!("{}: unknown format {:?}", path.display(), file.format);
        }
        let stored_uid = unhex("uid", &file.uid)?;
        if let Some(uid) = uid {
            if uid != stored_uid {
                bail!(
                    "--uid {} differs from the UID {} in {}",
                    hex::encode(uid),
                    file.uid,
                    path.display()
                );
            }
        }
        let key = match &file.key {
            Some(k) => {
                let bytes = Zeroizing::new(unhex("key", k)?);
                Some(
                    SigningKey::from_slice(&bytes)
                        .context("the stored key is not a P-256 scalar")?,
                )
            }
            None => None,
        };
        let mut secrets = BTreeMap::new();
        for (name, value) in &file.secrets {
            let value = Zeroizing::new(unhex("a secret", value)?);
            secrets.insert(name.clone(), value);
        }
        let device = Device {
            uid: stored_uid,
            key,
            certificate: file
                .certificate
                .as_deref()
                .map(|c| unhex("certificate", c))
                .transpose()?,
            chain: file
                .chain
                .iter()
                .map(|c| unhex("chain", c))
                .collect::<Result<_, _>>()?,
            secrets,
            locked: file.locked,
            state: Some(path),
        };
        // the parsed file held secrets in the clear
        let mut file = file;
        zeroize::Zeroize::zeroize(&mut file.key);
        for value in file.secrets.values_mut() {
            zeroize::Zeroize::zeroize(value);
        }
        Ok(device)
    }

    fn fresh(uid: Option<Vec<u8>>, state: Option<PathBuf>) -> Device {
        let uid = uid.unwrap_or_else(|| {
            let mut uid = vec![0u8; 12];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut uid);
            uid
        });
        Device {
            uid,
            key: None,
            certificate: None,
            chain: Vec::new(),
            secrets: BTreeMap::new(),
            locked: false,
            state,
        }
    }

    /// Writes the state file atomically (temp file 0600, fsync, rename).
    fn save(&self) -> anyhow::Result<()> {
        let Some(path) = &self.state else {
            return Ok(());
        };
        let mut file = StateFile {
            format: STATE_FORMAT.into(),
            uid: hex::encode(&self.uid),
            key: self.key.as_ref().map(|k| hex::encode(k.to_bytes())),
            certificate: self.certificate.as_ref().map(hex::encode),
            chain: self.chain.iter().map(hex::encode).collect(),
            secrets: self
                .secrets
                .iter()
                .map(|(n, v)| (n.clone(), hex::encode(v.as_slice())))
                .collect(),
            locked: self.locked,
        };
        let text = serde_json::to_vec_pretty(&file).map(Zeroizing::new);
        zeroize::Zeroize::zeroize(&mut file.key);
        for value in file.secrets.values_mut() {
            zeroize::Zeroize::zeroize(value);
        }
        let text = text.context("serialising the state")?;
        let tmp = path.with_extension("json.tmp");
        let _ = fs::remove_file(&tmp);
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        out.write_all(&text)?;
        out.sync_all()?;
        fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
        if let Some(dir) = path.parent() {
            fs::File::open(dir).and_then(|d| d.sync_all())?;
        }
        Ok(())
    }

    fn spki(key: &SigningKey) -> Option<Vec<u8>> {
        key.verifying_key()
            .to_public_key_der()
            .ok()
            .map(|d| d.as_bytes().to_vec())
    }

    /// Carries out one request; the reply.
    fn handle(&mut self, request: &Packet) -> Packet {
        let id = request.id;
        let Some(command) = request.command() else {
            return Packet::error(
                id,
                ErrorCode::UnknownCommand,
                &format!("unknown command {:#04x}", request.kind),
            );
        };
        match self.execute(command, request) {
            Ok(reply) => reply,
            Err((code, message)) => Packet::error(id, code, &message),
        }
    }

    fn execute(
        &mut self,
        command: Command,
        request: &Packet,
    ) -> Result<Packet, (ErrorCode, String)> {
        let reply = Packet::ok(request.id);
        let refuse_locked = |locked: bool| {
            if locked {
                Err((ErrorCode::Locked, "the device is locked".to_owned()))
            } else {
                Ok(())
            }
        };
        let no_key = || (ErrorCode::NoKey, "the device has no key".to_owned());
        let internal = |e: anyhow::Error| (ErrorCode::Internal, format!("{e:#}"));
        match command {
            Command::GetUid => Ok(reply.with(tag::UID, &self.uid)),
            Command::Status => {
                let mut reply = reply;
                if let Some(spki) = self.key.as_ref().and_then(Device::spki) {
                    reply.push(tag::PUBKEY, &spki);
                }
                if let Some(cert) = &self.certificate {
                    reply.push(tag::CERT, cert);
                }
                for name in self.secrets.keys() {
                    reply.push(tag::NAME, name.as_bytes());
                }
                reply.push(tag::LOCKED, &[u8::from(self.locked)]);
                Ok(reply)
            }
            Command::GenKey => {
                refuse_locked(self.locked)?;
                if self.key.is_some() {
                    return Err((ErrorCode::KeyExists, "the device already has a key".into()));
                }
                let key = SigningKey::random(&mut rand_core::OsRng);
                let spki = Device::spki(&key)
                    .ok_or_else(|| (ErrorCode::Internal, "encoding the public key".to_owned()))?;
                self.key = Some(key);
                if let Err(e) = self.save() {
                    self.key = None;
                    return Err(internal(e));
                }
                Ok(reply.with(tag::PUBKEY, &spki))
            }
            Command::GetPubkey => {
                let spki = self
                    .key
                    .as_ref()
                    .and_then(Device::spki)
                    .ok_or_else(no_key)?;
                Ok(reply.with(tag::PUBKEY, &spki))
            }
            Command::Sign => {
                let message = request
                    .single(tag::MESSAGE)
                    .ok_or_else(|| (ErrorCode::BadRequest, "SIGN needs one MESSAGE".to_owned()))?;
                let key = self.key.as_ref().ok_or_else(no_key)?;
                let signature: Signature = key.sign(message);
                Ok(reply.with(tag::SIGNATURE, signature.to_der().as_bytes()))
            }
            Command::PutCert => {
                refuse_locked(self.locked)?;
                let certs: Vec<Vec<u8>> = request.all(tag::CERT).map(<[u8]>::to_vec).collect();
                let Some((leaf, chain)) = certs.split_first() else {
                    return Err((ErrorCode::BadRequest, "PUT_CERT needs a CERT".into()));
                };
                if certs.len() > MAX_CERTS {
                    return Err((
                        ErrorCode::StorageFull,
                        format!("at most {MAX_CERTS} certificates"),
                    ));
                }
                let spki = self
                    .key
                    .as_ref()
                    .and_then(Device::spki)
                    .ok_or_else(no_key)?;
                let parsed = x509_cert::Certificate::from_der(leaf)
                    .map_err(|e| (ErrorCode::BadRequest, format!("not a DER certificate: {e}")))?;
                let cert_spki = parsed
                    .tbs_certificate
                    .subject_public_key_info
                    .to_der()
                    .map_err(|e| (ErrorCode::BadRequest, format!("certificate key: {e}")))?;
                if cert_spki != spki {
                    return Err((
                        ErrorCode::CertMismatch,
                        "the certificate is not for the device key".into(),
                    ));
                }
                let before = (self.certificate.take(), std::mem::take(&mut self.chain));
                self.certificate = Some(leaf.clone());
                self.chain = chain.to_vec();
                if let Err(e) = self.save() {
                    (self.certificate, self.chain) = before;
                    return Err(internal(e));
                }
                Ok(reply)
            }
            Command::PutSecret => {
                refuse_locked(self.locked)?;
                let name = request
                    .single(tag::NAME)
                    .and_then(|n| std::str::from_utf8(n).ok())
                    .filter(|n| {
                        (1..=64).contains(&n.len())
                            && n.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                    })
                    .ok_or_else(|| {
                        (
                            ErrorCode::BadRequest,
                            "PUT_SECRET needs one NAME of 1-64 [A-Za-z0-9._-]".to_owned(),
                        )
                    })?
                    .to_owned();
                let secret = request.single(tag::SECRET).ok_or_else(|| {
                    (
                        ErrorCode::BadRequest,
                        "PUT_SECRET needs one SECRET".to_owned(),
                    )
                })?;
                if secret.is_empty() || secret.len() > MAX_SECRET_LEN {
                    return Err((
                        ErrorCode::TooLarge,
                        format!("a secret is 1-{MAX_SECRET_LEN} bytes"),
                    ));
                }
                if !self.secrets.contains_key(&name) && self.secrets.len() >= MAX_SECRETS {
                    return Err((
                        ErrorCode::StorageFull,
                        format!("at most {MAX_SECRETS} secrets"),
                    ));
                }
                let previous = self
                    .secrets
                    .insert(name.clone(), Zeroizing::new(secret.to_vec()));
                if let Err(e) = self.save() {
                    match previous {
                        Some(p) => self.secrets.insert(name, p),
                        None => self.secrets.remove(&name),
                    };
                    return Err(internal(e));
                }
                Ok(reply)
            }
            Command::Lock => {
                if !self.locked {
                    self.locked = true;
                    if let Err(e) = self.save() {
                        self.locked = false;
                        return Err(internal(e));
                    }
                }
                Ok(reply)
            }
        }
    }
}

/// The pseudo-terminal: our master side, and the slave kept open so that
/// the master never sees a hang-up between two station sessions.
struct Pty {
    master: OwnedFd,
    _slave: OwnedFd,
    path: PathBuf,
}

fn open_pty() -> anyhow::Result<Pty> {
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).context("openpt")?;
    grantpt(&master).context("grantpt")?;
    unlockpt(&master).context("unlockpt")?;
    let name = ptsname(&master, Vec::new()).context("ptsname")?;
    let path = PathBuf::from(
        name.into_string()
            .map_err(|_| anyhow::anyhow!("pty name is not UTF-8"))?,
    );
    let slave = open(
        &path,
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening {}", path.display()))?;
    // raw from the start, so nothing is echoed or translated before a
    // station opens the line
    let mut termios = tcgetattr(&slave).context("tcgetattr")?;
    termios.make_raw();
    tcsetattr(&slave, OptionalActions::Now, &termios).context("tcsetattr")?;
    set_nonblocking(&master)?;
    Ok(Pty {
        master,
        _slave: slave,
        path,
    })
}

fn set_nonblocking(fd: &OwnedFd) -> anyhow::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd).context("fcntl")?;
    rustix::fs::fcntl_setfl(fd, flags | OFlags::NONBLOCK).context("fcntl")?;
    Ok(())
}

fn wait(fd: &OwnedFd, flags: PollFlags, timeout: Option<Duration>) -> anyhow::Result<bool> {
    let mut fds = [PollFd::new(fd, flags)];
    let timeout = timeout.map(|t| Timespec {
        tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(t.subsec_nanos()),
    });
    match poll(&mut fds, timeout.as_ref()) {
        Ok(n) => Ok(n > 0),
        Err(Errno::INTR) => Ok(false),
        Err(e) => Err(e).context("poll"),
    }
}

/// Sends a frame; drops it (with a note) if the line stays blocked for a
/// second, e.g. when nobody reads the pty.
fn send(master: &OwnedFd, mut frame: &[u8]) -> anyhow::Result<()> {
    while !frame.is_empty() {
        if !wait(master, PollFlags::OUT, Some(Duration::from_secs(1)))? {
            eprintln!("vbus-devsim: the line is blocked; reply dropped");
            return Ok(());
        }
        match rustix::io::write(master, frame) {
            Ok(n) => frame = &frame[n..],
            Err(Errno::AGAIN | Errno::INTR) => {}
            Err(e) => return Err(e).context("writing the pty"),
        }
    }
    Ok(())
}

struct Faults {
    fail_after: Option<u64>,
    corrupt_every: Option<u64>,
    corrupt_request_every: Option<u64>,
    delay: Duration,
    requests: u64,
    replies: u64,
}

/// Turns received frames into reply frames: the fault switches, the memory
/// of the last request, and the device itself.
struct Server {
    device: Device,
    faults: Faults,
    /// The last request carried out (SHA-256 of its packet bytes) and its
    /// reply frame, to answer a retransmission without doing it twice.
    last: Option<([u8; 32], Zeroizing<Vec<u8>>)>,
}

fn encode(packet: &Packet) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    packet
        .encode()
        .map_err(|e| anyhow::anyhow!("encoding a reply: {e}"))
}

impl Server {
    fn silent(&self) -> bool {
        self.faults
            .fail_after
            .is_some_and(|limit| self.faults.requests >= limit)
    }

    /// The reply frame to one received frame; `None` to stay silent.
    fn reply_to(
        &mut self,
        frame: Result<Packet, FrameError>,
    ) -> anyhow::Result<Option<Zeroizing<Vec<u8>>>> {
        if self.silent() {
            if self.faults.fail_after == Some(self.faults.requests) {
                eprintln!("vbus-devsim: --fail-after reached; silent from now on");
                // log once
                self.faults.requests += 1;
            }
            return Ok(None);
        }
        let request = match frame {
            Ok(request) => request,
            Err(e) => {
                eprintln!("vbus-devsim: dropped a frame: {e}");
                return encode(&Packet::error(0, e.code(), &e.to_string())).map(Some);
            }
        };
        self.faults.requests += 1;
        if self
            .faults
            .corrupt_request_every
            .is_some_and(|n| self.faults.requests.is_multiple_of(n))
        {
            eprintln!(
                "vbus-devsim: request {} damaged on the line",
                self.faults.requests
            );
            let e = FrameError::BadCrc;
            return encode(&Packet::error(0, e.code(), &e.to_string())).map(Some);
        }
        let bytes = request
            .to_bytes()
            .map_err(|e| anyhow::anyhow!("re-encoding a request: {e}"))?;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let name = request.command().map_or("unknown", Command::name);
        if let Some((d, reply)) = &self.last {
            if *d == digest {
                eprintln!("vbus-devsim: {name} #{} repeated: same reply", request.id);
                return Ok(Some(reply.clone()));
            }
        }
        let reply = self.device.handle(&request);
        let (code, _) = reply.error_parts();
        eprintln!(
            "vbus-devsim: {name} #{} -> {}",
            request.id,
            ErrorCode::from_u16(code).map_or("OK", ErrorCode::name)
        );
        let frame = match reply.encode() {
            Ok(frame) => frame,
            Err(e) => encode(&Packet::error(
                request.id,
                ErrorCode::TooLarge,
                &e.to_string(),
            ))?,
        };
        self.last = Some((digest, frame.clone()));
        Ok(Some(frame))
    }

    fn serve(&mut self, pty: &Pty) -> anyhow::Result<()> {
        let mut decoder = FrameDecoder::new();
        let mut buf = Zeroizing::new([0u8; 4096]);
        loop {
            wait(&pty.master, PollFlags::IN, None)?;
            let n = match rustix::io::read(&pty.master, &mut buf[..]) {
                Ok(n) => n,
                Err(Errno::AGAIN | Errno::INTR) => continue,
                // no slave open (cannot happen while we hold one): back off
                Err(Errno::IO) => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                Err(e) => return Err(e).context("reading the pty"),
            };
            for frame in decoder.feed(&buf[..n]) {
                let Some(mut reply) = self.reply_to(frame)? else {
                    continue;
                };
                if !self.faults.delay.is_zero() {
                    std::thread::sleep(self.faults.delay);
                }
                self.faults.replies += 1;
                if self
                    .faults
                    .corrupt_every
                    .is_some_and(|n| self.faults.replies.is_multiple_of(n))
                {
                    // flip one bit in the middle of the frame
                    let at = reply.len() / 2;
                    if let Some(byte) = reply.get_mut(at) {
                        *byte ^= 0x10;
                    }
                    eprintln!("vbus-devsim: corrupted reply {}", self.faults.replies);
                }
                send(&pty.master, &reply)?;
            }
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let uid = match &args.uid {
        Some(h) => {
            let uid = hex::decode(h).context("--uid is not hex")?;
            if !(8..=32).contains(&uid.len()) {
                bail!("--uid must be 8-32 bytes, not {}", uid.len());
            }
            Some(uid)
        }
        None => None,
    };
    let device = Device::load(args.state.as_deref(), uid)?;
    let pty = open_pty()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "VBUS_DEVSIM_TTY={}", pty.path.display())?;
    writeln!(out, "VBUS_DEVSIM_UID={}", hex::encode(&device.uid))?;
    out.flush()?;
    drop(out);
    eprintln!(
        "vbus-devsim: serving on {} ({}key, {} secret(s), {})",
        pty.path.display(),
        if device.key.is_some() { "" } else { "no " },
        device.secrets.len(),
        if device.locked { "locked" } else { "unlocked" }
    );
    let mut server = Server {
        device,
        faults: Faults {
            fail_after: args.fail_after,
            corrupt_every: args.corrupt_every,
            corrupt_request_every: args.corrupt_request_every,
            delay: Duration::from_millis(args.delay_ms),
            requests: 0,
            replies: 0,
        },
        last: None,
    };
    server.serve(&pty)
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vbus-devsim: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
