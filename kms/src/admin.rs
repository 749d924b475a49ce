//! The local admin socket: how `kmsctl` on the appliance reaches a running
//! `kmsd` (the store and the audit log are locked by the process that owns
//! them, so the CLI asks the service instead of opening them itself).
//!
//! A Unix domain socket, mode 0600 in a directory only the service user can
//! write: whoever can connect is the appliance's operator. The caller names
//! itself (`x-kms-actor`, `local:<user>`); the service adds the peer's uid
//! from the kernel (`local:<user>/uid=<uid>` in the audit record) and serves
//! only its own uid and root. HTTP/1.1 and JSON, like the API, so
//! the error body and codes are the ones of [`crate::http::error_response`].

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::IncomingStream;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::UnixListener;

use crate::appliance::Appliance;
use crate::credentials::ClientRole;
use crate::error::{io, Error, Result};
use crate::http::error_response;
use crate::policy::Caller;
use crate::revocation::{CaName, RevokeRequest};

/// Header carrying the caller's name (`local:<user>`).
pub const ACTOR_HEADER: &str = "x-kms-actor";

/// What the admin handler shares: the running appliance.
#[derive(Clone)]
pub struct AdminState {
    /// The appliance `kmsd` serves.
    pub app: Arc<Appliance>,
}

/// The peer's uid, from `SO_PEERCRED`.
#[derive(Clone, Copy, Debug)]
pub struct PeerUid(pub Option<u32>);

impl Connected<IncomingStream<'_, UnixListener>> for PeerUid {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        PeerUid(stream.io().peer_cred().ok().map(|c| c.uid()))
    }
}

/// One officer request, the same whether `kmsctl` sends it to a running
/// `kmsd` or, with `kmsd` stopped, runs it on the appliance it opened.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The effective policy.
    PolicyShow,
    /// Read the policy file again.
    PolicyReload,
    /// Explain a station's issuance decision.
    PolicyCheck(CheckRequest),
    /// Issue a device certificate (`kmsctl cert issue`).
    Issue {
        /// Module serial.
        serial: String,
        /// Hardware UUID.
        hw_uuid: String,
        /// CSR, PEM (or base64 DER).
        csr: String,
    },
    /// A device record.
    Device {
        /// Module serial.
        serial: String,
    },
    /// Allow one re-issue for a new key.
    AllowReissue {
        /// Module serial.
        serial: String,
    },
    /// Enrol a station or officer.
    AddClient {
        /// Identity (CN).
        id: String,
        /// Station or officer.
        role: ClientRole,
        /// The client's CSR (PEM); without it the appliance makes the key.
        csr: Option<String>,
        /// Module types a station may provision (updates the policy).
        #[serde(default)]
        modules: Vec<String>,
        /// Policy roles of an officer (default `officer`).
        #[serde(default)]
        roles: Vec<String>,
    },
    /// Every client certificate.
    Clients,
    /// Revoke every certificate of a client.
    RevokeClient {
        /// Identity.
        id: String,
        /// RFC 5280 reason (default `cessationOfOperation`).
        #[serde(default)]
        reason: Option<String>,
    },
    /// Revoke one certificate of any of our CAs.
    Revoke {
        /// Certificate serial, hex.
        serial_number: String,
        /// Reason, invalidity date, CA.
        request: RevokeRequest,
    },
    /// Revoke every certificate of a device.
    RevokeDevice {
        /// Module serial.
        serial: String,
        /// Reason and invalidity date.
        request: RevokeRequest,
    },
    /// Revoke up to 1000 certificates (`kmsctl batch revoke` sends chunks).
    RevokeMany {
        /// Certificate serials, hex.
        serials: Vec<String>,
        /// Reason, invalidity date, CA for all of them.
        request: RevokeRequest,
    },
    /// Make a firmware signing key for a product line.
    FirmwareKeyCreate {
        /// Product line.
        product: String,
        /// `ed25519` (default) or `p256`.
        #[serde(default)]
        algorithm: Option<String>,
    },
    /// Firmware signing keys (of one product, or all).
    FirmwareKeys {
        /// Product line.
        #[serde(default)]
        product: Option<String>,
    },
    /// Ask for a firmware signature (an approval request).
    FirmwareSign(crate::firmware::SignRequest),
    /// Approve an M-of-N request, naming the hash reviewed.
    Approve {
        /// Request id.
        id: String,
        /// Its hash, as shown by `approvals` / `approval`.
        hash: String,
    },
    /// One approval request.
    Approval {
        /// Request id.
        id: String,
    },
    /// Pending approval requests.
    Approvals,
    /// Ask for an escrowed secret to be recovered, sealed to a P-256 key.
    EscrowRequest {
        /// Module serial.
        serial: String,
        /// `psk`, `keypair` or an AES key name.
        purpose: String,
        /// Why (recorded and shown to approvers).
        reason: String,
        /// The recipient's P-256 public key, PEM.
        recipient_public_key: String,
    },
    /// Let a device get a secret once more.
    AllowRotation {
        /// Module serial.
        serial: String,
        /// Purpose.
        purpose: String,
    },
    /// One step of a KEK rotation.
    RotateKek {
        /// Blobs to re-wrap in this step.
        limit: usize,
        /// Where the previous step stopped (its `cursor`).
        #[serde(default)]
        cursor: Option<String>,
    },
    /// Sign and publish a CRL now.
    CrlPublish {
        /// `root`, `intermediate` or `internal`.
        ca: String,
    },
    /// Sign an audit checkpoint now.
    Checkpoint,
}

/// Run `req` for `caller` on `app`: the one implementation of every admin
/// verb.
pub fn dispatch(app: &Appliance, caller: &Caller, req: &Request) -> Result<Value> {
    // Requests whose operation does not ask the policy itself: officers
    // (remote, by certificate) need the role; the local operator has them all.
    let gate = match req {
        Request::PolicyShow | Request::PolicyCheck(_) | Request::Checkpoint => {
            Some(("admin.read", policies::Action::AuditRead))
        }
        Request::PolicyReload => Some((crate::policy::LOAD_OP, policies::Action::Admin)),
        Request::Clients => Some(("admin.read", policies::Action::Admin)),
        Request::FirmwareKeys { .. } => Some(("admin.read", policies::Action::FirmwareSign)),
        _ => None,
    };
    if let Some((op, action)) = gate {
        if let Err(e) = app.policy.check(caller, &action) {
            return app.refuse(caller, op, "-", e);
        }
    }
    Ok(match req {
        Request::PolicyShow => policy_view(&app.policy.current()),
        Request::PolicyReload => {
            let p = app.policy.reload(&app.audit, caller)?;
            json!({ "sha256": p.sha256() })
        }
        Request::PolicyCheck(c) => {
            crate::policy::explain(&app.policy.current(), app.policy.quotas(), c, true)
        }
        Request::Issue {
            serial,
            hw_uuid,
            csr,
        } => {
            let issued = app.issue(caller, serial, hw_uuid, csr.as_bytes(), false)?;
            to_json(&issued)?
        }
        Request::Device { serial } => app.device(caller, serial)?,
        Request::AllowReissue { serial } => {
            app.allow_reissue(caller, serial)?;
            json!({ "module_serial": serial, "reissue_allowed": true })
        }
        Request::AddClient {
            id,
            role,
            csr,
            modules,
            roles,
        } => {
            let cred = app.add_client(
                caller,
                id,
                *role,
                csr.as_deref().map(str::as_bytes),
                modules,
                roles,
            )?;
            json!({
                "client": cred.record,
                "cert_pem": cred.cert_pem,
                "key_pem": cred.key_pem.as_deref().map(|k| k.as_str()),
                "ca_pem": cred.ca_pem,
                "policy_sha256": app.policy.current().sha256(),
            })
        }
        Request::Clients => to_json(&app.clients()?)?,
        Request::RevokeClient { id, reason } => {
            let reason = match reason.as_deref().unwrap_or("cessationOfOperation").parse() {
                Ok(r) => r,
                Err(e) => {
                    return app.refuse(caller, crate::revocation::REVOKE_OP, id, Error::Ca(e))
                }
            };
            let serials = app.revoke_client(caller, id, reason)?;
            json!({ "id": id, "revoked": serials })
        }
        Request::Revoke {
            serial_number,
            request,
        } => to_json(&app.revoke(caller, serial_number, request)?)?,
        Request::RevokeDevice { serial, request } => {
            to_json(&app.revoke_device(caller, serial, request)?)?
        }
        Request::RevokeMany { serials, request } => {
            json!({ "results": app.revoke_many(caller, serials, request)? })
        }
        Request::FirmwareKeyCreate { product, algorithm } => to_json(&app.firmware_key_create(
            caller,
            product,
            algorithm.as_deref().unwrap_or("ed25519"),
        )?)?,
        Request::FirmwareKeys { product } => to_json(&app.firmware_keys(product.as_deref())?)?,
        Request::FirmwareSign(req) => app.firmware_sign(caller, req)?.view(),
        Request::Approve { id, hash } => app.approve(caller, id, hash)?.view(),
        Request::Approval { id } => app.approval(caller, id)?.view(),
        Request::Approvals => Value::Array(
            app.pending_approvals(caller)?
                .iter()
                .map(crate::approvals::ApprovalRequest::view)
                .collect(),
        ),
        Request::EscrowRequest {
            serial,
            purpose,
            reason,
            recipient_public_key,
        } => app
            .request_recovery(caller, serial, purpose, reason, recipient_public_key)?
            .view(),
        Request::AllowRotation { serial, purpose } => {
            app.allow_rotation(caller, serial, purpose)?;
            json!({ "module_serial": serial, "purpose": purpose, "rotation_allowed": true })
        }
        Request::RotateKek { limit, cursor } => {
            app.rotate_kek_step(caller, *limit, cursor.as_deref())?
        }
        Request::CrlPublish { ca } => {
            let name = match CaName::parse(ca) {
                Ok(n) => n,
                Err(e) => return app.refuse(caller, crate::revocation::CRL_OP, ca, e),
            };
            let crl = app.publish_crl(caller, name)?;
            json!({
                "ca": name, "number": crl.number, "entries": crl.entries, "sha256": crl.sha256,
                "this_update": crate::policy::rfc3339(crl.this_update.unix_timestamp()),
                "next_update": crate::policy::rfc3339(crl.next_update.unix_timestamp()),
            })
        }
        Request::Checkpoint => {
            let note = match app.audit.checkpoint()? {
                Some(n) => n,
                None => app.audit.latest_checkpoint()?.unwrap_or_default(),
            };
            json!({ "checkpoint": note })
        }
    })
}

/// Anything serialisable, as a JSON answer.
fn to_json<T: Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|_| Error::Unreachable("answer to JSON"))
}

/// The admin router: one endpoint taking a [`Request`], and the backup
/// stream (only here: the API's `/v1/admin` has no backup).
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/v1/admin", post(handle))
        .route(BACKUP_PATH, post(backup))
        .with_state(state)
}

/// Where `kmsctl backup` asks a running `kmsd` for the archive.
pub const BACKUP_PATH: &str = "/v1/admin/backup";

/// Body of a backup request.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    /// The archive's file name on the caller's side, for the audit record.
    #[serde(default)]
    pub out: Option<String>,
}

/// The refusal for a peer that is neither root nor the service's own user
/// (the socket is 0600 already; this holds if its mode is ever loosened).
fn refuse_foreign_peer(peer: &PeerUid) -> Option<Response> {
    if matches!(peer.0, Some(uid) if uid == 0 || Some(uid) == own_uid()) {
        return None;
    }
    tracing::warn!(uid = ?peer.0, "admin socket: peer refused");
    Some(error_response(&Error::InvalidInput(
        "the admin socket serves the service's own user and root only".into(),
    )))
}

/// Bytes per chunk of the backup stream.
const BACKUP_CHUNK: usize = 256 * 1024;

/// The archive of [`crate::backup::create`], streamed as it is written:
/// `kmsctl` writes it to its file. An error before the first byte is an
/// ordinary error answer; one after it cuts the stream (the client sees an
/// unfinished chunked body, and the archive has no end line).
async fn backup(
    State(st): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<PeerUid>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(refused) = refuse_foreign_peer(&peer) {
        return refused;
    }
    let who = caller(&headers, peer);
    let req: BackupRequest = if body.is_empty() {
        BackupRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return error_response(&Error::MalformedRequest(format!("backup request: {e}")))
            }
        }
    };
    tracing::info!(actor = who.name(), uid = ?peer.0, "admin request: backup");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes>>(8);
    let app = st.app.clone();
    let name = req.out.unwrap_or_else(|| "-".into());
    tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(BACKUP_CHUNK),
        };
        if let Err(e) = crate::backup::create(&app, &who, true, &name, &mut out) {
            tracing::error!(error = %e, "backup failed");
            let _ = tx.blocking_send(Err(e));
        }
    });
    match rx.recv().await {
        Some(Ok(first)) => (
            [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
            axum::body::Body::new(ChannelBody {
                first: Some(first),
                rx,
            }),
        )
            .into_response(),
        Some(Err(e)) => error_response(&e),
        None => error_response(&Error::Unreachable("the backup ended without a word")),
    }
}

/// Hands what the backup writes to the response, chunk by chunk.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<axum::body::Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        let chunk = axum::body::Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(BACKUP_CHUNK),
        ));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the client stopped reading the backup",
            )
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= BACKUP_CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            self.send()
        }
    }
}

/// A response body fed by [`ChannelWriter`].
struct ChannelBody {
    first: Option<axum::body::Bytes>,
    rx: tokio::sync::mpsc::Receiver<Result<axum::body::Bytes>>,
}

impl hyper::body::Body for ChannelBody {
    type Data = axum::body::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<hyper::body::Frame<Self::Data>, Self::Error>>>
    {
        use std::task::Poll;
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(hyper::body::Frame::data(first))));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(chunk))) => Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk)))),
            // Cut the stream: the client must not take it for a whole archive.
            Poll::Ready(Some(Err(e))) => {
                Poll::Ready(Some(Err(std::io::Error::other(e.to_string()))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Bind the socket at `path`: a stale socket file from a killed process is
/// replaced, a live one (another `kmsd`) is refused; mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(Error::InvalidInput(format!(
                "{} answers: another kmsd is running on this appliance",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(io(path))?;
    }
    let listener = UnixListener::bind(path).map_err(io(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;
    Ok(listener)
}

/// The caller: the name it gives (`local:<user>`) with the uid the kernel
/// gives, as the audit actor `local:<user>/uid=<uid>`.
fn caller(headers: &HeaderMap, peer: PeerUid) -> Caller {
    let claimed = headers
        .get(ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.starts_with("local:") && v.len() <= 64 && !v.contains(char::is_control))
        .unwrap_or("local:unknown");
    match peer.0 {
        Some(uid) => Caller::Local(format!("{claimed}/uid={uid}")),
        None => Caller::Local(format!("{claimed}/uid=unknown")),
    }
}

/// Our own uid (from /proc/self/status: no libc needed).
fn own_uid() -> Option<u32> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The effective policy as JSON: hash, human text, machine view.
pub fn policy_view(policy: &policies::Policy) -> Value {
    json!({
        "sha256": policy.sha256(),
        "text": policy.to_string(),
        "effective": policy.effective(),
    })
}

async fn handle(
    State(st): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<PeerUid>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(refused) = refuse_foreign_peer(&peer) {
        return refused;
    }
    let who = caller(&headers, peer);
    let req: Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error_response(&Error::MalformedRequest(format!("admin request: {e}"))),
    };
    tracing::info!(actor = who.name(), uid = ?peer.0, request = ?std::mem::discriminant(&req), "admin request");
    // Under the operations gate, shared: a backup never falls between an
    // admin operation's record and its commit. (The backup route does not
    // take it shared: it takes it alone.)
    let gated = move || {
        let _operation = st.app.operation();
        dispatch(&st.app, &who, &req)
    };
    match tokio::task::spawn_blocking(gated).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => error_response(&e),
        Err(_) => error_response(&Error::Unreachable("admin task panicked")),
    }
}

/// Body of a policy check.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct CheckRequest {
    /// Station identity.
    pub station: String,
    /// Module serial.
    pub serial: String,
    /// Key type of the CSR the station would send.
    pub key_type: String,
}

/// A client of the admin socket (used by `kmsctl`).
pub struct Client<'a> {
    path: &'a Path,
}

/// What an admin call answered.
#[derive(Debug)]
pub enum Reply {
    /// 2xx with its JSON body.
    Ok(Value),
    /// An error body of the outside contract: status, code, message.
    Refused {
        /// HTTP status.
        status: u16,
        /// Stable code.
        code: String,
        /// Message.
        message: String,
    },
}

impl<'a> Client<'a> {
    /// A client of the socket at `path`.
    pub fn new(path: &'a Path) -> Self {
        Self { path }
    }

    /// Whether a `kmsd` answers on the socket.
    pub fn running(&self) -> bool {
        UnixStream::connect(self.path).is_ok()
    }

    /// Send one admin request.
    pub fn send(&self, req: &Request) -> Result<Reply> {
        let body =
            serde_json::to_value(req).map_err(|_| Error::Unreachable("admin request to JSON"))?;
        self.call("POST", "/v1/admin", Some(&body))
    }

    /// One HTTP request, `Connection: close`.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Reply> {
        let sock = self.path;
        let mut stream = self.open(method, path, body, Duration::from_secs(60))?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).map_err(io(sock))?;
        parse_reply(&raw)
    }

    /// Connect and send one request; the stream to read the answer from.
    fn open(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<UnixStream> {
        let sock = self.path;
        let mut stream = UnixStream::connect(sock).map_err(io(sock))?;
        stream.set_read_timeout(Some(timeout)).map_err(io(sock))?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let actor = crate::auditing::local_actor();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: kmsd\r\nConnection: close\r\n{ACTOR_HEADER}: {actor}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).map_err(io(sock))?;
        Ok(stream)
    }

    /// Ask the running `kmsd` for a backup and copy the archive it streams
    /// into `out`: `Reply::Ok({"bytes": n})`, or its refusal. A stream that
    /// stops early is an error (and the archive would lack its end line).
    pub fn backup(&self, req: &BackupRequest, out: &mut dyn Write) -> Result<Reply> {
        let sock = self.path;
        let body =
            serde_json::to_value(req).map_err(|_| Error::Unreachable("backup request to JSON"))?;
        // The store snapshot and the checkpoint come before the first byte.
        let stream = self.open("POST", BACKUP_PATH, Some(&body), Duration::from_secs(600))?;
        let mut r = std::io::BufReader::new(stream);
        let head = read_head(&mut r).map_err(io(sock))?;
        if !(200..300).contains(&head.status) {
            let mut raw = Vec::new();
            copy_body(&mut r, &head, &mut raw, 1 << 20).map_err(io(sock))?;
            let reply = format!("HTTP/1.1 {} -\r\n\r\n", head.status).into_bytes();
            return parse_reply(&[reply, raw].concat());
        }
        let n = copy_body(&mut r, &head, out, u64::MAX).map_err(io(sock))?;
        Ok(Reply::Ok(json!({ "bytes": n })))
    }
}

/// Status and framing of an HTTP/1.1 answer.
struct Head {
    status: u16,
    chunked: bool,
    length: Option<u64>,
}

fn read_head(r: &mut impl std::io::BufRead) -> std::io::Result<Head> {
    use std::io::BufRead as _;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut line = String::new();
    let mut head = Head {
        status: 0,
        chunked: false,
        length: None,
    };
    for n in 0..100 {
        line.clear();
        if r.by_ref().take(8192).read_line(&mut line)? == 0 {
            return Err(bad("the answer ends inside its header"));
        }
        let l = line.trim_end();
        if n == 0 {
            head.status = l
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("no HTTP status"))?;
            continue;
        }
        if l.is_empty() {
            return Ok(head);
        }
        if let Some((name, value)) = l.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                head.chunked = true;
            } else if name == "content-length" {
                head.length = value.parse().ok();
            }
        }
    }
    Err(bad("an HTTP header of more than 100 lines"))
}

/// Copy the body after `head` into `out` (at most `limit` bytes); its size.
fn copy_body(
    r: &mut impl std::io::BufRead,
    head: &Head,
    out: &mut dyn Write,
    limit: u64,
) -> std::io::Result<u64> {
    use std::io::BufRead as _;
    let early = || {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "kmsd ended the answer early (see its log)",
        )
    };
    let too_big = || std::io::Error::new(std::io::ErrorKind::InvalidData, "answer too large");
    if !head.chunked {
        let want = head.length.unwrap_or(u64::MAX).min(limit);
        let n = std::io::copy(&mut r.by_ref().take(want), out)?;
        if head.length.is_some_and(|l| n < l) {
            return Err(early());
        }
        return Ok(n);
    }
    let mut total = 0u64;
    let mut line = String::new();
    loop {
        line.clear();
        if r.by_ref().take(1024).read_line(&mut line)? == 0 {
            return Err(early());
        }
        let size = line.trim_end().split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size, 16)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // Trailer lines, then the blank line.
            loop {
                line.clear();
                if r.by_ref().take(8192).read_line(&mut line)? == 0 {
                    return Err(early());
                }
                if line.trim_end().is_empty() {
                    return Ok(total);
                }
            }
        }
        if total.saturating_add(size) > limit {
            return Err(too_big());
        }
        if std::io::copy(&mut r.by_ref().take(size), out)? < size {
            return Err(early());
        }
        total += size;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf).map_err(|_| early())?;
        if &crlf != b"\r\n" {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "chunk not followed by CRLF",
            ));
        }
    }
}

fn parse_reply(raw: &[u8]) -> Result<Reply> {
    let bad = |what: &str| Error::InvalidInput(format!("admin socket answered {what}"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no HTTP header"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("a non-UTF-8 header"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let body: Value =
        serde_json::from_slice(&raw[split + 4..]).map_err(|_| bad("a body that is not JSON"))?;
    if (200..300).contains(&status) {
        return Ok(Reply::Ok(body));
    }
    let text = |k: &str| body["error"][k].as_str().unwrap_or_default().to_owned();
    Ok(Reply::Refused {
        status,
        code: text("code"),
        message: text("message"),
    })
}
