//! `kmsd`: the vBus KMS appliance service.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use kms::config::Config;
use kms::http::{publication_router, AppState};
use kms::pin::load_pin;
use kms::token::Token;

/// vBus KMS appliance service.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (see README, "Configuration").
    #[arg(long)]
    config: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KMS_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = Config::load(&args.config)?;
    // Before any thread exists: the module reads these at C_Initialize.
    cfg.token.apply_module_env();
    let pin = load_pin(&cfg.token)?;
    let token = Arc::new(Token::open(&cfg.token, pin)?);
    tracing::info!(
        token = token.label(),
        pool = cfg.token.pool_size,
        "token open"
    );
    // Refuses to start on a torn, altered or rolled-back log.
    let audit = Arc::new(kms::auditing::open(&cfg, &token)?);
    kms::auditing::record(
        &audit,
        "kmsd",
        "service.start",
        token.label(),
        "ok",
        serde_json::json!({ "version": env!("CARGO_PKG_VERSION") }),
    )?;
    tracing::info!(records = audit.head().0, "audit log open");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let outcome = runtime.block_on(serve(cfg, token, audit.clone()));
    // Whatever ended the service, say so in the log and seal it.
    let result = if outcome.is_ok() { "ok" } else { "error" };
    kms::auditing::record(
        &audit,
        "kmsd",
        "service.stop",
        "kmsd",
        result,
        serde_json::json!({}),
    )?;
    audit.checkpoint()?;
    outcome
}

async fn serve(cfg: Config, token: Arc<Token>, audit: Arc<audit::Log>) -> anyhow::Result<()> {
    let every = std::time::Duration::from_secs(cfg.audit.checkpoint_seconds.max(1));
    let periodic = audit.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let log = periodic.clone();
            match tokio::task::spawn_blocking(move || log.checkpoint()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "periodic checkpoint failed"),
                Err(e) => tracing::warn!(error = %e, "periodic checkpoint task failed"),
            }
        }
    });
    let state = AppState { token, audit };
    let publication = tokio::net::TcpListener::bind(cfg.server.publication_listen)
        .await
        .with_context(|| {
            format!(
                "binding the publication port {}",
                cfg.server.publication_listen
            )
        })?;
    tracing::info!(addr = %cfg.server.publication_listen, "publication port listening");
    axum::serve(publication, publication_router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving the publication port")?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}
