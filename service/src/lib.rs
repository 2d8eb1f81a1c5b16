//! What every BACKBEAT service binary shares, so each behaves the same to an operator:
//! NATS connection flags (credentials, TLS), JetStream stream set-up per SPEC §1,
//! the admin HTTP server (`/health`, `/ready`, `/metrics`, `/api/v1/status`),
//! structured logging, graceful shutdown on SIGTERM, key-value buckets created
//! when missing, the single-writer lease a service holds per name, and secrets
//! (tokens, keys) read from a flag or a file and compared in constant time.
//!
//! It holds no BACKBEAT logic: nothing here folds, validates or schedules.

pub mod admin;
mod error;
pub mod kv;
pub mod lease;
pub mod logging;
pub mod metrics;
pub mod nats;
pub mod nats_monitor;
pub mod secret;
pub mod streams;

pub use admin::{serve_admin, serve_http, AdminState, HttpArgs, HttpLimits};
pub use error::ServiceError;
pub use logging::{init_logging, LogFormat};
pub use nats::NatsArgs;

/// Resolves when the process is asked to stop (SIGTERM or Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested");
}
