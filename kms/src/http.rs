//! The plain-HTTP publication port of `kmsd`: `/healthz`, `/ca/chain.pem`,
//! `/metrics` (CRLs and OCSP arrive with the revocation issue). The mTLS API
//! is in [`crate::api`].
//!
//! [`error_response`] is the one place an [`Error`] becomes an HTTP answer.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
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

/// The publication router: health, the CA chain, metrics.
pub fn publication_router(app: Arc<Appliance>) -> Router {
    Router::new()
        .route("/ca/chain.pem", get(chain))
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
