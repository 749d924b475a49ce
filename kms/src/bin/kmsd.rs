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

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(cfg, token))
}

async fn serve(cfg: Config, token: Arc<Token>) -> anyhow::Result<()> {
    let state = AppState { token };
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
