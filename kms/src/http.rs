//! The plain-HTTP publication port of `kmsd`: `/healthz`, `/ca/chain.pem`,
//! `/crl/{ca}.crl`, OCSP (`POST /ocsp`, `GET /ocsp/{base64}`), `/metrics`.
//! The mTLS API is in [`crate::api`].
//!
//! [`error_response`] is the one place an [`Error`] becomes an HTTP answer.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::appliance::Appliance;
use crate::error::Error;
use crate::token::Token;

/// Longest `/healthz` waits for the token before answering 503.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// `/healthz` alone, for a token without an appliance around it.
pub fn health_router(token: Arc<Token>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .with_state(token)
}

/// Largest OCSP request body read (a request for 16 certificates is well
/// under 2 KiB); more is answered `malformedRequest`.
const MAX_OCSP_BODY: usize = 16 * 1024;

/// How long an OCSP request body may take to arrive.
const OCSP_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The publication router: health, the CA chain, CRLs, OCSP, metrics.
pub fn publication_router(app: Arc<Appliance>) -> Router {
    Router::new()
        .route("/ca/chain.pem", get(chain))
        .route("/crl/{file}", get(crl))
        .route("/ocsp", post(ocsp_post))
        .route("/ocsp/{*request}", get(ocsp_get))
        .route("/metrics", get(metrics))
        .with_state(app.clone())
        .merge(health_router(app.token.clone()))
}

async fn chain(State(app): State<Arc<Appliance>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/pem-certificate-chain")],
        app.chain_pem().to_owned(),
    )
        .into_response()
}

/// HTTP date (RFC 9110 IMF-fixdate) of a time.
fn http_date(t: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.format(&f).unwrap_or_default()
}

/// `GET /crl/{ca}.crl`: the CA's current CRL (DER), with an ETag (its
/// SHA-256) and Last-Modified (its thisUpdate); 304 for a matching
/// `If-None-Match`.
async fn crl(
    State(app): State<Arc<Appliance>>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(name) = file.strip_suffix(".crl") else {
        return error_response(&Error::NotFound(format!(
            "/crl/{}",
            file.chars().take(64).collect::<String>()
        )));
    };
    let ca = match crate::revocation::CaName::parse(name) {
        Ok(ca) => ca,
        Err(_) => {
            return error_response(&Error::NotFound(format!(
                "/crl/{}",
                file.chars().take(64).collect::<String>()
            )))
        }
    };
    let Some(crl) = app.revocations.crl(ca) else {
        return error_response(&Error::CrlUnavailable(ca.as_str().into()));
    };
    let etag = format!("\"{}\"", crl.sha256);
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let max_age = (crl.next_update - time::OffsetDateTime::now_utc())
        .whole_seconds()
        .clamp(0, 3600);
    let common = [
        (header::ETAG, etag.clone()),
        (header::LAST_MODIFIED, http_date(crl.this_update)),
        (header::EXPIRES, http_date(crl.next_update)),
        (header::CACHE_CONTROL, format!("public, max-age={max_age}")),
    ];
    if matches {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        [(header::CONTENT_TYPE, "application/pkix-crl".to_owned())],
        common,
        crl.der.clone(),
    )
        .into_response()
}

/// An OCSP answer (always 200 with an OCSPResponse, RFC 6960 Appendix A),
/// counted by outcome.
async fn ocsp_answer(app: Arc<Appliance>, request: Vec<u8>, get: bool) -> Response {
    // Cached answers and refusals need no token: answered here, the rest
    // on a blocking thread.
    let (der, outcome) = match app.revocations.ocsp_quick(&request) {
        Some(answer) => answer,
        None => {
            let app2 = app.clone();
            tokio::task::spawn_blocking(move || app2.revocations.ocsp(&request))
                .await
                .unwrap_or_else(|_| {
                    (
                        ca::ocsp_error_response(ca::OcspErrorStatus::InternalError),
                        "internal_error",
                    )
                })
        }
    };
    app.metrics
        .request(if get { "GET /ocsp" } else { "POST /ocsp" }, outcome);
    let mut r = ([(header::CONTENT_TYPE, "application/ocsp-response")], der).into_response();
    if get && matches!(outcome, "cached" | "signed") {
        // RFC 5019 §6: GET answers may be cached by HTTP caches.
        let max_age = app.cfg.revocation.ocsp_validity_minutes * 30;
        if let Ok(v) = header::HeaderValue::from_str(&format!("public, max-age={max_age}")) {
            r.headers_mut().insert(header::CACHE_CONTROL, v);
        }
    }
    r
}

/// `POST /ocsp` with a DER OCSPRequest.
async fn ocsp_post(State(app): State<Arc<Appliance>>, body: Body) -> Response {
    let read =
        tokio::time::timeout(OCSP_BODY_TIMEOUT, axum::body::to_bytes(body, MAX_OCSP_BODY)).await;
    match read {
        Ok(Ok(bytes)) => ocsp_answer(app, bytes.to_vec(), false).await,
        // Too big, too slow, or broken: not a request we can read.
        _ => {
            app.metrics.request("POST /ocsp", "malformed_request");
            (
                [(header::CONTENT_TYPE, "application/ocsp-response")],
                ca::ocsp_error_response(ca::OcspErrorStatus::MalformedRequest),
            )
                .into_response()
        }
    }
}

/// `GET /ocsp/{base64}`: the DER request, base64 (standard or URL-safe
/// alphabet), URL-encoded.
async fn ocsp_get(State(app): State<Arc<Appliance>>, Path(encoded): Path<String>) -> Response {
    use base64::Engine as _;
    let text = encoded.trim_start_matches('/');
    let der = base64::engine::general_purpose::STANDARD
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
        .unwrap_or_default();
    ocsp_answer(app, der, true).await
}

async fn metrics(State(app): State<Arc<Appliance>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(&app.token),
    )
        .into_response()
}

/// The stable error code of a response, for the request counter.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

/// The JSON error body of the outside contract, with the status from
/// [`Error::http_status`].
pub fn error_response(e: &Error) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut error = json!({ "code": e.code(), "message": e.to_string() });
    let code = ErrorCode(e.code());
    let Some(at) = e.retry_after() else {
        let mut r = (status, Json(json!({ "error": error }))).into_response();
        r.extensions_mut().insert(code);
        return r;
    };
    // quota_exceeded: when to come back, in the body and as Retry-After.
    error["retry_after"] = json!(crate::policy::rfc3339(at));
    let wait = at.saturating_sub(crate::policy::now()).max(1);
    let mut r = (
        status,
        [(header::RETRY_AFTER, wait.to_string())],
        Json(json!({ "error": error })),
    )
        .into_response();
    r.extensions_mut().insert(code);
    r
}

/// 200 with the token label and key count when the token answers, 503
/// `token_unavailable` when it does not.
pub async fn healthz(State(token): State<Arc<Token>>) -> Response {
    let label = token.label().to_owned();
    let count = tokio::time::timeout(
        HEALTH_TIMEOUT,
        tokio::task::spawn_blocking(move || token.key_count()),
    )
    .await;
    match count {
        Ok(Ok(Ok(keys))) => {
            Json(json!({ "status": "ok", "token": { "label": label, "keys": keys } }))
                .into_response()
        }
        Ok(Ok(Err(e))) => {
            tracing::warn!(error = %e, "health check: token not usable");
            error_response(&e)
        }
        Ok(Err(_)) => error_response(&Error::Unreachable("health check task panicked")),
        Err(_) => error_response(&Error::TokenTimeout {
            label,
            waited_ms: HEALTH_TIMEOUT.as_millis() as u64,
        }),
    }
}
