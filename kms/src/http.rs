//! HTTP surface of `kmsd`. Today the publication port serves `/healthz`; the
//! mTLS API, CRLs, OCSP and the chain arrive with later issues.
//!
//! [`error_response`] is the one place an [`Error`] becomes an HTTP answer.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::error::Error;
use crate::token::Token;

/// Longest `/healthz` waits for the token before answering 503.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The token.
    pub token: Arc<Token>,
    /// The audit log.
    pub audit: Arc<audit::Log>,
}

/// The plain-HTTP publication router.
pub fn publication_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .with_state(state)
}

/// The JSON error body of the outside contract, with the status from
/// [`Error::http_status`].
pub fn error_response(e: &Error) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut error = json!({ "code": e.code(), "message": e.to_string() });
    let Some(at) = e.retry_after() else {
        return (status, Json(json!({ "error": error }))).into_response();
    };
    // quota_exceeded: when to come back, in the body and as Retry-After.
    error["retry_after"] = json!(crate::policy::rfc3339(at));
    let wait = at.saturating_sub(crate::policy::now()).max(1);
    (
        status,
        [(axum::http::header::RETRY_AFTER, wait.to_string())],
        Json(json!({ "error": error })),
    )
        .into_response()
}

/// 200 with the token label and key count when the token answers, 503
/// `token_unavailable` when it does not.
async fn healthz(State(st): State<AppState>) -> Response {
    let token = st.token.clone();
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
