//! The local admin socket: how `kmsctl` on the appliance reaches a running
//! `kmsd` (the store and the audit log are locked by the process that owns
//! them, so the CLI asks the service instead of opening them itself).
//!
//! A Unix domain socket, mode 0600 in a directory only the service user can
//! write: whoever can connect is the appliance's operator. The caller names
//! itself (`x-kms-actor`, `local:<user>`); the service adds the peer's uid
//! from the kernel to the audit record. HTTP/1.1 and JSON, like the API, so
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
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::UnixListener;

use crate::error::{io, Error, Result};
use crate::http::error_response;
use crate::policy::{Caller, PolicyState};

/// Header carrying the caller's name (`local:<user>`).
pub const ACTOR_HEADER: &str = "x-kms-actor";

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// The policy in force.
    pub policy: Arc<PolicyState>,
    /// The audit log.
    pub audit: Arc<audit::Log>,
}

/// The peer's uid, from `SO_PEERCRED`.
#[derive(Clone, Copy, Debug)]
pub struct PeerUid(pub Option<u32>);

impl Connected<IncomingStream<'_, UnixListener>> for PeerUid {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        PeerUid(stream.io().peer_cred().ok().map(|c| c.uid()))
    }
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/v1/admin/policy", get(policy_show))
        .route("/v1/admin/policy/reload", post(policy_reload))
        .route("/v1/admin/policy/check", post(policy_check))
        .with_state(state)
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

fn caller(headers: &HeaderMap, peer: PeerUid) -> (Caller, Value) {
    let claimed = headers
        .get(ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.starts_with("local:") && v.len() <= 64 && !v.contains(char::is_control))
        .unwrap_or("local:unknown");
    (Caller::Local(claimed.to_owned()), json!({ "uid": peer.0 }))
}

/// The effective policy as JSON: hash, human text, machine view.
pub fn policy_view(policy: &policies::Policy) -> Value {
    json!({
        "sha256": policy.sha256(),
        "text": policy.to_string(),
        "effective": policy.effective(),
    })
}

async fn policy_show(State(st): State<AdminState>) -> Response {
    Json(policy_view(&st.policy.current())).into_response()
}

async fn policy_reload(
    State(st): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<PeerUid>,
    headers: HeaderMap,
) -> Response {
    let (who, _) = caller(&headers, peer);
    tracing::info!(actor = who.name(), uid = ?peer.0, "policy reload requested");
    let outcome = tokio::task::spawn_blocking(move || {
        st.policy
            .reload(&st.audit, &who)
            .map(|p| p.sha256().to_owned())
    })
    .await;
    match outcome {
        Ok(Ok(sha256)) => Json(json!({ "sha256": sha256 })).into_response(),
        Ok(Err(e)) => error_response(&e),
        Err(_) => error_response(&Error::Unreachable("policy reload task panicked")),
    }
}

/// Body of `POST /v1/admin/policy/check`.
#[derive(Debug, Deserialize, Serialize)]
pub struct CheckRequest {
    /// Station identity.
    pub station: String,
    /// Module serial.
    pub serial: String,
    /// Key type of the CSR the station would send.
    pub key_type: String,
}

async fn policy_check(State(st): State<AdminState>, Json(req): Json<CheckRequest>) -> Response {
    Json(crate::policy::explain(
        &st.policy.current(),
        st.policy.quotas(),
        &req,
        true,
    ))
    .into_response()
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

    /// One request, `Connection: close`.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Reply> {
        let sock = self.path;
        let mut stream = UnixStream::connect(sock).map_err(io(sock))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(io(sock))?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let actor = crate::auditing::local_actor();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: kmsd\r\nConnection: close\r\n{ACTOR_HEADER}: {actor}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).map_err(io(sock))?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).map_err(io(sock))?;
        parse_reply(&raw)
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
