//! The mTLS API for stations and officers, and EST (RFC 7030).
//!
//! Every handler takes the caller from the [`Identity`] the TLS layer put
//! on the request, reads its body under the size limit, and runs the
//! [`Appliance`] operation on a blocking thread (token and fsync work).
//! Errors are the JSON bodies of [`error_response`]; requests that reach a
//! handler and are refused are audited by the operation itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};

use crate::appliance::Appliance;
use crate::error::{Error, Result};
use crate::http::{error_response, ErrorCode};
use crate::policy::Caller;
use crate::server::Identity;

/// Operation names of EST refusals that happen before issuance (a wrong
/// content type, a body that is not base64).
const EST_ENROLL_OP: &str = "est.simpleenroll";
const EST_REENROLL_OP: &str = "est.simplereenroll";

#[derive(Clone)]
struct Api {
    app: Arc<Appliance>,
    body_limit: usize,
    body_timeout: Duration,
    /// `/cacerts`, built once.
    cacerts: Arc<Result<Vec<u8>>>,
}

/// The API router (served by [`crate::server::serve_api`]).
pub fn router(app: Arc<Appliance>) -> Router {
    let limits = app.cfg.server.clone();
    let cacerts = (|| {
        let files = crate::ceremony::CaFiles::of(&app.cfg);
        let inter = crate::ceremony::read_cert(&files.intermediate)?;
        let root = crate::ceremony::read_cert(&files.root)?;
        Ok(ca::est::certs_only(&[&inter, &root])?)
    })();
    let api = Api {
        app: app.clone(),
        body_limit: limits.body_limit,
        body_timeout: Duration::from_millis(limits.request_timeout_ms),
        cacerts: Arc::new(cacerts),
    };
    Router::new()
        .route("/v1/devices/{serial}/certificate", post(issue))
        .route("/v1/devices/{serial}/record", post(record))
        .route("/v1/devices/{serial}", get(device))
        .route("/v1/certificates/{serial}/revoke", post(revoke))
        .route("/v1/firmware/sign", post(firmware_sign))
        .route("/v1/devices/{serial}/psk", post(psk))
        .route("/v1/devices/{serial}/keys/{purpose}", post(aes_key))
        .route("/v1/devices/{serial}/keypair", post(keypair))
        .route("/v1/escrow/{serial}/recoveries", post(recovery_request))
        .route("/v1/escrow/{serial}/recoveries/{id}", get(recovery))
        .route(
            "/v1/escrow/{serial}/recoveries/{id}/approvals",
            post(recovery_approve),
        )
        .route("/v1/approvals/{serial}", get(approval).post(approve))
        .route("/.well-known/est/cacerts", get(est_cacerts))
        .route("/.well-known/est/simpleenroll", post(est_enroll))
        .route("/.well-known/est/simplereenroll", post(est_reenroll))
        .route("/.well-known/est/csrattrs", get(est_csrattrs))
        .route("/v1/admin", post(admin))
        .with_state(api)
        .merge(crate::http::health_router(app.token.clone()))
        .fallback(|req: Request| async move {
            error_response(&Error::NotFound(
                req.uri().path().chars().take(128).collect(),
            ))
        })
        .method_not_allowed_fallback(|req: Request| async move {
            error_response(&Error::MethodNotAllowed(req.method().to_string()))
        })
        .layer(middleware::from_fn_with_state(app.clone(), revocation))
        .layer(middleware::from_fn_with_state(app, count))
}

/// A client certificate revoked while its connection stays open: refused
/// from its next request on (new connections are refused at the handshake).
async fn revocation(State(app): State<Arc<Appliance>>, req: Request, next: Next) -> Response {
    let revoked = req
        .extensions()
        .get::<Identity>()
        .filter(|i| app.revoked.contains(&i.serial_number))
        .cloned();
    let Some(identity) = revoked else {
        return next.run(req).await;
    };
    let path: String = req.uri().path().chars().take(64).collect();
    let app2 = app.clone();
    let outcome = blocking(&app, move || {
        app2.refuse::<()>(
            &caller(&identity),
            "request",
            &path,
            Error::ClientRevoked {
                serial_number: identity.serial_number.clone(),
            },
        )
    })
    .await;
    let mut response = match outcome {
        Err(r) => r,
        Ok(()) => error_response(&Error::Unreachable("a refusal that was not refused")),
    };
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// Count every answer by endpoint (route template) and result.
async fn count(State(app): State<Arc<Appliance>>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let response = next.run(req).await;
    let result = response
        .extensions()
        .get::<ErrorCode>()
        .map_or("ok", |c| c.0);
    app.metrics.request(&endpoint, result);
    response
}

fn caller(identity: &Identity) -> Caller {
    Caller::Client(identity.id.clone())
}

/// The body, at most `api.body_limit` bytes, within `api.body_timeout` (a
/// client sending it one byte a second gets 408 `request_timeout`).
async fn read_body(api: &Api, body: Body) -> Result<Bytes> {
    let limit = api.body_limit;
    let read = tokio::time::timeout(api.body_timeout, axum::body::to_bytes(body, limit)).await;
    let Ok(read) = read else {
        return Err(Error::RequestTimeout {
            waited_ms: api.body_timeout.as_millis() as u64,
        });
    };
    read.map_err(|e| {
        let inner = e.into_inner();
        if inner.is::<http_body_util::LengthLimitError>() {
            Error::BodyTooLarge { limit }
        } else {
            Error::MalformedRequest(format!("reading the body: {inner}"))
        }
    })
}

/// A JSON POST: read the body, and on a blocking thread parse it as `B`
/// and run `f` with the caller; a body that does not parse is refused and
/// audited as `op` on `subject`.
async fn json_post<B, T>(
    api: &Api,
    identity: &Identity,
    body: Body,
    (what, op, subject): (&'static str, &'static str, String),
    f: impl FnOnce(&Appliance, &Caller, B) -> Result<T> + Send + 'static,
) -> std::result::Result<T, Response>
where
    B: serde::de::DeserializeOwned,
    T: Send + 'static,
{
    let body = read_body(api, body).await;
    let who = caller(identity);
    let app = api.app.clone();
    blocking(&api.app, move || match json_body::<B>(body, what) {
        Ok(b) => f(&app, &who, b),
        Err(e) => app.refuse(&who, op, &subject, e),
    })
    .await
}

/// A JSON request body (`what` names it in the error).
fn json_body<T: serde::de::DeserializeOwned>(body: Result<Bytes>, what: &str) -> Result<T> {
    body.and_then(|b| {
        serde_json::from_slice(&b).map_err(|e| Error::MalformedRequest(format!("{what}: {e}")))
    })
}

/// Run `f` on a blocking thread, holding the appliance's operations gate
/// shared throughout (from before its audit record until after its store
/// commit: a backup never falls between the two); its error as the JSON
/// answer.
async fn blocking<T: Send + 'static>(
    app: &Arc<Appliance>,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> std::result::Result<T, Response> {
    let app = app.clone();
    let gated = move || {
        let _operation = app.operation();
        f()
    };
    match tokio::task::spawn_blocking(gated).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error_response(&e)),
        Err(_) => Err(error_response(&Error::Unreachable("handler task panicked"))),
    }
}

/// The `{serial}` path segment. One that does not decode (bad
/// percent-encoding, not UTF-8) gets the JSON 400 of the contract rather
/// than axum's plain text.
struct Serial(String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Serial {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> std::result::Result<Self, Response> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(s)| Serial(s))
            .map_err(|e| error_response(&Error::MalformedRequest(format!("path: {e}"))))
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    csr: String,
    hw_uuid: String,
}

/// `POST /v1/devices/{serial}/certificate` `{csr, hw_uuid}`: 201 with the
/// certificate and chain, 200 when the same request was already answered.
async fn issue(
    State(api): State<Api>,
    Extension(identity): Extension<Identity>,
    Serial(serial): Serial,
    body: Body,
) -> Response {
    let what = (
        "certificate request",
        crate::auditing::ISSUE_OP,
        serial.clone(),
    );
    let outcome = json_post(
        &api,
        &identity,
        body,
        what,
        move |app, who, req: IssueBody| {
            app.issue(who, &serial, &req.hw_uuid, req.csr.as_bytes(), false)
        },
    )
    .await;
    match outcome {
        Ok(issued) => {
            let status = if issued.newly_issued {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(issued)).into_response()
        }
        Err(r) => r,
    }
}

/// `POST /v1/certificates/{serial_number}/revoke` `{reason,
/// invalidity_date?, ca?}` (officers): 200 with the revocation in force,
/// `already_revoked` telling whether it was this request's.
async fn revoke(
    State(api): State<Api>,
    Extension(identity): Extension<Identity>,
    Serial(serial): Serial,
    body: Body,
) -> Response {
    let what = (
        "revocation request",
        crate::revocation::REVOKE_OP,
        serial.clone(),
    );
    let outcome = json_post(&api, &identity, body, what, move |app, who, req| {
        app.revoke(who, &serial, &req)
    })
    .await;
    match outcome {
        Ok(r) => Json(r).into_response(),
        Err(r) => r,
    }
}

/// `POST /v1/firmware/sign` `{product, version, security_version, sha256 |
/// sha512}` (firmware signers): 202 with the approval request the policy's
/// quorum must approve (`POST /v1/approvals/{id}`).
async fn firmware_sign(
    State(api): State<Api>,
    Extension(identity): Extension<Identity>,
    body: Body,
) -> Response {
    let what = (
        "firmware signing request",
        crate::firmware::REQUEST_OP,
        "-".into(),
    );
    let outcome = json_post(&api, &identity, body, what, |app, who, req| {
        app.firmware_sign(who, &req)
    })
    .await;
    match outcome {
        Ok(r) => (StatusCode::ACCEPTED, Json(r.view())).into_response(),
        Err(r) => r,
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    hash: String,
}

/// `POST /v1/approvals/{id}` `{hash}`: approve the request whose content
/// hashes to `hash`; 200 with the request (and its result once done).
async fn approve(
    State(api): State<Api>,
    Extension(identity): Extension<Identity>,
    Serial(id): Serial,
    body: Body,
) -> Response {
    let what = ("approval", crate::approvals::APPROVE_OP, id.clone());
    let outcome = json_post(
        &api,
        &identity,
        body,
        what,
        move |app, who, b: ApproveBody| app.approve(who, &id, &b.hash),
    )
    .await;
    match outcome {
        Ok(r) => Json(r.view()).into_response(),
        Err(r) => r,
    }
}

/// `GET /v1/approvals/{id}`.
async fn approval(
    State(api): State<Api>,
    Extension(identity): Extension<Identity>,
    Serial(id): Serial,
) -> Response {
    let who = caller(&identity);
    let app = api.app.clone();
    match blocking(&api.app, move || app.approval(&who, &id)).await {
        Ok(r) => Json(r.view()).into_response(),
        Err(r) => r,
    }
}

/// A JSON answer holding a secret: serialized straight into a zeroizing
/// buffer (allocated once, so no copy is left behind by a reallocation)
/// that the body owns and wipes when hyper drops it after writing.
fn secret_response<T: serde::Serialize>(status: StatusCode, answer: &T) -> Response {
    struct Wiped(zeroize::Zeroizing<Vec<u8>>);
    impl AsRef<[u8]> for Wiped {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(64 * 1024));
    if serde_json::to_writer(&mut *buf, answer).is_err() || buf.len() > 64 * 1024 {
        return error_response(&Error::Unreachable("secret answer encoding"));
    }
    let body = Body::from(Bytes::from_owner(Wiped(buf)));
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

/// Hex of a secret in a zeroizing string.
fn secret_hex(secret: &[u8]) -> zeroize::Zeroizing<String> {
    let mut out = zeroize::Zeroizing::new(String::with_capacity(secret.len() * 2));
    for b in secret {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

/// `POST /v1/devices/{serial}/psk`: 201 `{"psk": "<64 hex>"}`, once.
async fn psk(
    State(api): State<Api>,
    Extension(identity): Extension<Identity>,
    Serial(serial): Serial,
) -> Response {
    let who = caller(&identity);
    let app = api.app.clone();
    match blocking(&api.app, move || app.issue_secret(&who, &serial, "psk")).await {
        Ok((secret, _)) => {
            #[derive(serde::Serialize)]
            struct Answer<'a> {
                psk: &'a str,
            }
            let hex = secret_hex(&secret);
            secret_response(StatusCode::CREATED, &Answer { psk: &hex })
        }
        Err(r) => r,
    }
}

/// `POST /v1/devices/{serial}/keys/{purpose}`: 201 `{"purpose", "key"}`
/// (AES-256, hex), once; purposes from the device's profile.
async fn aes_key(
    State(api): State<Api>,
    Extension(identity): Extension<Identity>,
    Path((serial, purpose)): Path<(String, String)>,
) -> Response {
    let who = caller(&identity);
    let app = api.app.clone();
    let p = purpose.clone();
    match blocking(&api.app, move || app.issue_aes_key(&who, &serial, &p)).await {
        Ok((secret, _)) => {
            #[derive(serde::Serialize)]
            struct Answer<'a> {
                purpose: &'a str,
                key: &'a str,
            }
            let hex = secret_hex(&secret);
            secret_response(
                StatusCode::CREATED,
                &Answer {
                    purpose: &purpose,
                    key: &hex,
                },
            )
        }
        Err(r) => r,
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeypairBody {
    hw_uuid: String,
}

/// `POST /v1/devices/{serial}/keypair` `{hw_uuid}`: 201 with the private
/// key (PKCS#8 PEM), the certificate and the chain, once.
async fn keypair(
    State(api): State<Api>,
    Extension(identity): Extension<Identity>,
    Serial(serial): Serial,
    body: Body,
) -> Response {
    let what = ("key pair request", crate::secrets::ISSUE_OP, serial.clone());
    let outcome = json_post(
        &api,
        &identity,
        body,
        what,
        move |app, who, b: KeypairBody| app.issue_keypair(who, &serial, &b.hw_uuid),
    )
    .await;
    match outcome {
        Ok((key, issued)) => {
            #[derive(serde::Serialize)]
            struct Answer<'a> {
                private_key: &'a str,
                serial_number: &'a str,
                certificate: &'a str,
                chain: &'a str,
                not_after: &'a str,
            }
            secret_response(
                StatusCode::CREATED,
                &Answer {
                    private_key: &key,
                    serial_number: &issued.serial_number,
                    certificate: &issued.certificate,
                    chain: &issued.chain,
                    not_after: &issued.not_after,
                },
            )
        }
        Err(r) => r,
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoveryBody {
    purpose: String,
    reason: String,
    recipient_public_key: String,
}

/// `POST /v1/escrow/{serial}/recoveries` `{purpose, reason,
/// recipient_public_key}` (officers): 202 with the approval request.
async fn recovery_request(
    State(api): State<Api>,
    Extension(identity): Extension<Identity>,
    Serial(serial): Serial,
    body: Body,
) -> Response {
    let what = (
        "recovery request",
        crate::secrets::RECOVERY_OP,
        serial.clone(),
    );
    let outcome = json_post(
        &api,
        &identity,
        body,
        what,
        move |app, who, b: RecoveryBody| {
            app.request_recovery(who, &serial, &b.purpose, &b.reason, &b.recipient_public_key)
        },
    )
    .await;
    match outcome {
        Ok(r) => (StatusCode::ACCEPTED, Json(r.view())).into_response(),
        Err(r) => r,
    }
}

/// `GET /v1/escrow/{serial}/recoveries/{id}`.
async fn recovery(
    State(api): State<Api>,
    Extension(identity): Extension<Identity>,
    Path((serial, id)): Path<(String, String)>,
) -> Response {
    let who = caller(&identity);
    let app = api.app.clone();
    match blocking(&api.app, move || app.recovery(&who, &serial, &id)).await {
        Ok(r) => Json(r.view()).into_response(),
        Err(r) => r,
    }
}

/// `POST /v1/escrow/{serial}/recoveries/{id}/approvals` `{hash}`.
async fn recovery_approve(
    State(api): State<Api>,
    Extension(identity): Extension<Identity>,
    Path((serial, id)): Path<(String, String)>,
    body: Body,
) -> Response {
    let what = ("approval", crate::approvals::APPROVE_OP, id.clone());
    let outcome = json_post(
        &api,
        &identity,
        body,
        what,
        move |app, who, b: ApproveBody| app.approve_recovery(who, &serial, &id, &b.hash),
    )
    .await;
    match outcome {
        Ok(r) => Json(r.view()).into_response(),
        Err(r) => r,
    }
}

/// `GET /v1/devices/{serial}`.
async fn device(
    State(api): State<Api>,
    Extension(identity): Extension<Identity>,
    Serial(serial): Serial,
) -> Response {
    let who = caller(&identity);
    let app = api.app.clone();
    match blocking(&api.app, move || app.device(&who, &serial)).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

/// `POST /v1/devices/{serial}/record`: 201 with the record's hash.
async fn record(
    State(api): State<Api>,
    Extension(identity): Extension<Identity>,
    Serial(serial): Serial,
    body: Body,
) -> Response {
    let body = read_body(&api, body).await;
    let who = caller(&identity);
    let app = api.app.clone();
    let outcome = blocking(&api.app, move || match body {
        Ok(b) => app.record(&who, &serial, &b),
        Err(e) => app.refuse(&who, crate::appliance::RECORD_OP, &serial, e),
    })
    .await;
    match outcome {
        Ok(v) => (StatusCode::CREATED, Json(v)).into_response(),
        Err(r) => r,
    }
}

/// `POST /v1/admin`: an officer verb from `kmsctl --url`, the same
/// [`crate::admin::Request`] the local admin socket takes, decided by the
/// policy for the officer's identity.
async fn admin(
    State(api): State<Api>,
    Extension(identity): Extension<Identity>,
    body: Body,
) -> Response {
    let body = read_body(&api, body).await;
    let who = caller(&identity);
    let app = api.app.clone();
    let outcome = blocking(&api.app, move || {
        let req = body.and_then(|b| {
            serde_json::from_slice::<crate::admin::Request>(&b)
                .map_err(|e| Error::MalformedRequest(format!("officer request: {e}")))
        });
        match req {
            Ok(req) => crate::admin::dispatch(&app, &who, &req),
            Err(e) => app.refuse(&who, "admin.request", "-", e),
        }
    })
    .await;
    match outcome {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

/// An EST answer: base64 DER with its media type.
fn est_body(content_type: &'static str, der: &[u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::HeaderName::from_static("content-transfer-encoding"),
                "base64",
            ),
        ],
        ca::est::base64_body(der),
    )
        .into_response()
}

/// `GET /.well-known/est/cacerts`: the intermediate and the root.
async fn est_cacerts(State(api): State<Api>) -> Response {
    match api.cacerts.as_ref() {
        Ok(der) => est_body("application/pkcs7-mime", der),
        Err(e) => error_response(e),
    }
}

/// `GET /.well-known/est/csrattrs`.
async fn est_csrattrs() -> Response {
    match ca::est::csr_attrs() {
        Ok(der) => est_body("application/csrattrs", &der),
        Err(e) => error_response(&e.into()),
    }
}

async fn est_enroll(
    State(api): State<Api>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    est(api, identity, headers, body, false).await
}

async fn est_reenroll(
    State(api): State<Api>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    est(api, identity, headers, body, true).await
}

/// `simpleenroll` / `simplereenroll`: a base64 PKCS#10 whose subject
/// serialNumber is the module serial and whose SAN `urn:uuid` is the
/// hardware UUID; answered with a base64 certs-only PKCS#7.
async fn est(
    api: Api,
    identity: Identity,
    headers: HeaderMap,
    body: Body,
    reenroll: bool,
) -> Response {
    let op = if reenroll {
        EST_REENROLL_OP
    } else {
        EST_ENROLL_OP
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = read_body(&api, body).await;
    let who = caller(&identity);
    let app = api.app.clone();
    let started = Instant::now();
    let outcome = blocking(&api.app, move || {
        let request = (|| {
            let media = content_type.split(';').next().unwrap_or("").trim();
            if !media.eq_ignore_ascii_case("application/pkcs10") {
                return Err(Error::UnsupportedMediaType(
                    content_type.chars().take(64).collect(),
                ));
            }
            let der = ca::est::decode_base64_body(&body?)?;
            let id = ca::est::csr_identity(&der)?;
            let serial = id.serial_number.ok_or_else(|| {
                Error::MalformedRequest(
                    "the CSR subject has no serialNumber (the module serial)".into(),
                )
            })?;
            let uuid = id.hw_uuid.ok_or_else(|| {
                Error::MalformedRequest(
                    "the CSR has no SAN URI urn:uuid:… (the hardware UUID)".into(),
                )
            })?;
            Ok((serial, uuid, der))
        })();
        match request {
            Ok((serial, uuid, der)) => app.issue(&who, &serial, &uuid, &der, reenroll),
            Err(e) => app.refuse(&who, op, "-", e),
        }
    })
    .await;
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        reenroll,
        "EST enrolment"
    );
    match outcome {
        Ok(issued) => match ca::est::certs_only(&[&issued.der]) {
            Ok(der) => est_body("application/pkcs7-mime; smime-type=certs-only", &der),
            Err(e) => error_response(&e.into()),
        },
        Err(r) => r,
    }
}
