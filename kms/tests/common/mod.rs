//! An initialised appliance on a private SoftHSM2 token, for the kms tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use kms::config::Config;
use kms::pin::load_pin;
use kms::token::Token;
use softhsm_tests::SoftHsm;

/// The config and open token of an appliance whose ceremony has run, under
/// the development policy (`station-01` may provision every module type).
pub fn appliance(hsm: &SoftHsm) -> (Config, Arc<Token>) {
    hsm.export_env();
    let mut cfg = Config::parse(&hsm.appliance_toml(""), Path::new("/")).unwrap();
    let policy = hsm.dir().join("policy.toml");
    std::fs::write(&policy, kms::quickstart::DEV_POLICY).unwrap();
    cfg.policy.file = Some(policy);
    let token = Arc::new(Token::open(&cfg.token, load_pin(&cfg.token).unwrap()).unwrap());
    kms::ceremony::init(
        &cfg,
        &token,
        "local:test",
        "officer-01",
        &hsm.dir().join("officer"),
    )
    .unwrap();
    (cfg, token)
}
