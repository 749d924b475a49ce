//! `kmsd`: the vBus KMS appliance service.

use std::future::IntoFuture;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use kms::admin::{self, AdminState};
use kms::appliance::Appliance;
use kms::config::Config;
use kms::http::publication_router;
use kms::pin::load_pin;
use kms::policy::{record_load, Caller, PolicyState};
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
    // An invalid policy file stops the start: serving under a policy nobody
    // wrote is worse than not serving.
    let policy = match PolicyState::load(&cfg) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            record_load(&audit, "kmsd", cfg.policy.file.as_deref(), Err(&e))?;
            return Err(e.into());
        }
    };
    record_load(&audit, "kmsd", policy.file(), Ok(&policy.current()))?;
    if policy.file().is_none() {
        tracing::warn!("no policy.file configured: the empty policy denies every client");
    }
    tracing::info!(sha256 = policy.current().sha256(), "policy loaded");
    let app = Arc::new(Appliance::assemble(
        cfg.clone(),
        token.clone(),
        audit.clone(),
        policy,
    )?);
    // The escrow KEK (version 1 on an appliance that has none yet).
    kms::secrets::ensure_kek(&token, app.store.as_ref(), &audit, "kmsd")?;
    // The server certificate, made or renewed (its key stays in the token).
    let server_der = kms::credentials::ensure_server(&cfg, &token, &audit, "kmsd")?;
    let internal_der = kms::ceremony::read_cert(&kms::ceremony::CaFiles::of(&cfg).internal)?;
    let tls = kms::server::tls_config(
        &token,
        &cfg.server.tls_key,
        server_der,
        internal_der,
        app.revoked.clone(),
    )?;

    // Fresh CRLs before the first request; then the publisher keeps them
    // fresh (after revocations, and at half their validity).
    app.revocations
        .publish_all()
        .context("signing the CRLs at start")?;
    let publisher = app
        .revocations
        .spawn()
        .context("starting the CRL publisher")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let outcome = runtime.block_on(serve(app.clone(), tls));
    // A token call that never returns must not keep kmsd from stopping:
    // requests still inside one after the grace period are abandoned
    // (their answer could not be sent anyway).
    runtime.shutdown_timeout(std::time::Duration::from_millis(
        app.cfg.server.shutdown_grace_ms,
    ));
    app.revocations.stop();
    let _ = publisher.join();
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

async fn serve(app: Arc<Appliance>, tls: Arc<rustls::ServerConfig>) -> anyhow::Result<()> {
    let cfg = app.cfg.clone();
    let every = std::time::Duration::from_secs(cfg.audit.checkpoint_seconds.max(1));
    let periodic = app.audit.clone();
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
    tokio::spawn(reload_on_sighup(app.clone()));

    let publication = tokio::net::TcpListener::bind(cfg.server.publication_listen)
        .await
        .with_context(|| {
            format!(
                "binding the publication port {}",
                cfg.server.publication_listen
            )
        })?;
    let api = tokio::net::TcpListener::bind(cfg.server.api_listen)
        .await
        .with_context(|| format!("binding the API port {}", cfg.server.api_listen))?;
    let admin = admin::bind(&cfg.server.admin_socket)?;
    tracing::info!(
        api = %cfg.server.api_listen,
        publication = %cfg.server.publication_listen,
        admin = %cfg.server.admin_socket.display(),
        "listening"
    );

    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    let stopped = |stop: &tokio::sync::broadcast::Sender<()>| {
        let mut rx = stop.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };
    let admin_task = tokio::spawn(
        axum::serve(
            admin,
            admin::router(AdminState { app: app.clone() })
                .into_make_service_with_connect_info::<admin::PeerUid>(),
        )
        .with_graceful_shutdown(stopped(&stop))
        .into_future(),
    );
    let publication_task = tokio::spawn(
        axum::serve(publication, publication_router(app.clone()))
            .with_graceful_shutdown(stopped(&stop))
            .into_future(),
    );
    let api_task = {
        let (router, metrics, limits) = (
            kms::api::router(app.clone()),
            app.metrics.clone(),
            cfg.server.clone(),
        );
        let stop_api = stopped(&stop);
        tokio::spawn(async move {
            kms::server::serve_api(api, tls, router, &limits, metrics, stop_api).await;
        })
    };
    shutdown_signal().await;
    let _ = stop.send(());
    // In-flight requests finish; then the final checkpoint (in main).
    api_task.await.context("API task")?;
    publication_task
        .await
        .context("publication task")?
        .context("serving the publication port")?;
    admin_task
        .await
        .context("admin task")?
        .context("serving the admin socket")?;
    let _ = std::fs::remove_file(&cfg.server.admin_socket);
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP: read the policy file again (as `kmsctl policy reload` does).
async fn reload_on_sighup(app: Arc<Appliance>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload the policy with kmsctl policy reload");
        return;
    };
    while hup.recv().await.is_some() {
        let app = app.clone();
        let caller = Caller::Local("signal:SIGHUP".into());
        match tokio::task::spawn_blocking(move || app.policy.reload(&app.audit, &caller)).await {
            Ok(Ok(p)) => tracing::info!(sha256 = p.sha256(), "SIGHUP: policy reloaded"),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "SIGHUP: policy refused; the running one stays")
            }
            Err(e) => tracing::error!(error = %e, "SIGHUP: reload task failed"),
        }
    }
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
