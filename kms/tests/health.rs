//! `/healthz` of the publication port, served for real and asked with curl.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use kms::config::Config;
use kms::http::health_router;
use kms::pin::load_pin;
use kms::token::{KeyPairKind, Token};
use softhsm_tests::SoftHsm;

/// GET `url` with curl; returns (status, body).
fn curl(url: &str) -> (u16, String) {
    let out = softhsm_tests::run(std::process::Command::new("curl").args([
        "-s",
        "-w",
        "\n%{http_code}",
        "--max-time",
        "20",
        url,
    ]));
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_owned())
}

#[test]
fn healthz_is_200_with_label_and_key_count_503_while_the_token_is_gone_and_200_again() {
    let hsm = SoftHsm::new("t-health");
    hsm.export_env();
    let toml = hsm.token_toml().replacen(
        "[token]\n",
        "[token]\nretries = 2\nretry_backoff_ms = 10\n",
        1,
    );
    let cfg = Config::parse(&toml, Path::new("/")).unwrap();
    let token = Arc::new(Token::open(&cfg.token, load_pin(&cfg.token).unwrap()).unwrap());
    token.generate_key_pair(KeyPairKind::EcP256, "k1").unwrap();
    token.generate_key_pair(KeyPairKind::Ed25519, "k2").unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(SocketAddr::from((
            [127, 0, 0, 1],
            0,
        ))))
        .unwrap();
    let url = format!("http://{}/healthz", listener.local_addr().unwrap());
    let router = health_router(token.clone());
    rt.spawn(async move { axum::serve(listener, router).await });

    assert_eq!(
        curl(&url),
        (
            200,
            r#"{"status":"ok","token":{"keys":2,"label":"t-health"}}"#.to_owned()
        )
    );

    // The token goes away: the library is reset under the pool and the token
    // files are gone when it looks again.
    let tokens = hsm.dir().join("tokens");
    let away = hsm.dir().join("tokens-away");
    std::fs::rename(&tokens, &away).unwrap();
    std::fs::create_dir(&tokens).unwrap();
    token.pkcs11().clone().finalize().unwrap();
    let (status, body) = curl(&url);
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "token_unavailable", "{body}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("t-health"),
        "{body}"
    );

    // It comes back: the service, still running, finds it again.
    std::fs::remove_dir(&tokens).unwrap();
    std::fs::rename(&away, &tokens).unwrap();
    token.pkcs11().clone().finalize().unwrap();
    assert_eq!(
        curl(&url),
        (
            200,
            r#"{"status":"ok","token":{"keys":2,"label":"t-health"}}"#.to_owned()
        )
    );
}
