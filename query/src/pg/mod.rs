//! The PostgreSQL wire protocol front end (`serve --pg-listen`), so psql,
//! psycopg, tokio-postgres and Grafana's PostgreSQL data source query the
//! tables unchanged. Built on `pgwire` (the protocol: startup, SCRAM, TLS,
//! simple and extended queries, portals and row limits, cancel requests),
//! `arrow-pg` (Arrow values as PostgreSQL types, parameters as values) and
//! `datafusion-pg-catalog` (`pg_catalog`, the catalog functions, the parser
//! that rewrites clients' catalog queries). `datafusion-postgres`, which joins
//! them, runs statements on a shared session of its own; here every statement
//! goes through [`QueryEngine`] as HTTP's do (read-only rules, limits,
//! metrics, error classes), so the two protocols cannot disagree.
//!
//! What it must never do: run a statement outside the engine (session
//! statements — BEGIN, SET of a client setting, SHOW of one — touch no data
//! and are answered in `session`), or accept a connection past
//! `--pg-max-connections`.

pub mod catalog;
pub mod config;
mod errors;
mod handler;
mod metrics;
mod results;
mod session;
mod startup;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::{auth::StartupHandler, PgWireServerHandlers};
use pgwire::tokio::tokio_rustls::rustls;
use pgwire::tokio::TlsAcceptor;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use config::{PgArgs, PgConfig};
use handler::PgQueries;
use metrics::PgMetrics;
use startup::{Startup, StartupShared};

use crate::engine::{QueryEngine, Running};

/// Binds `config.listen` and serves pg-wire connections on a task of their
/// own (for the life of the process). Logs `pg-wire listening addr=…`.
pub async fn spawn(config: &PgConfig, engine: QueryEngine, registry: &Registry) -> anyhow::Result<SocketAddr> {
    let metrics = PgMetrics::register(registry).context("registering the pg-wire metrics")?;
    let tls = match &config.tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None => None,
    };
    let startup = StartupShared::new(config.password.as_deref()).context("salting the pg-wire password")?;
    let shared = Arc::new(Shared {
        queries: Arc::new(PgQueries::new(engine, metrics.clone())),
        cancel: Arc::new(DefaultCancelHandler::new(startup.cancels.clone())),
        startup: Arc::new(startup),
    });
    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("binding --pg-listen {}", config.listen))?;
    let addr = listener.local_addr().context("the pg-wire address")?;
    tracing::info!(%addr, tls = tls.is_some(), password = config.password.is_some(), "pg-wire listening");
    let connections = Arc::new(Semaphore::new(config.connections_max));
    tokio::spawn(async move {
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: the next accept may work.
                    tracing::warn!(error = %e, "pg-wire accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            let permit = connections.clone().try_acquire_owned().ok();
            let admitted = permit.is_some();
            let outcome = if admitted { "admitted" } else { "refused" };
            metrics.connections_total.with_label_values(&[outcome]).inc();
            let handlers = ConnectionHandlers {
                shared: shared.clone(),
                admitted,
            };
            let (tls, metrics) = (tls.clone(), metrics.clone());
            tokio::spawn(async move {
                // A refused connection still gets a FATAL answer to its
                // startup (and its cancel request, if that is what it is, is served).
                let open = admitted.then(|| Running::start(&metrics.connections));
                if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                    tracing::debug!(%peer, error = %e, "pg-wire connection ended with an error");
                }
                drop((open, permit));
            });
        }
    });
    Ok(addr)
}

/// What every connection shares.
struct Shared {
    queries: Arc<PgQueries>,
    cancel: Arc<DefaultCancelHandler>,
    startup: Arc<StartupShared>,
}

/// One connection's handlers: the shared query handlers, a start of its own.
struct ConnectionHandlers {
    shared: Arc<Shared>,
    admitted: bool,
}

impl PgWireServerHandlers for ConnectionHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.shared.queries.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.shared.queries.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(Startup::new(self.shared.startup.clone(), self.admitted))
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.shared.cancel.clone()
    }
}

/// TLS from PEM files (rustls with ring), offering ALPN `postgresql` for
/// PostgreSQL 17's direct TLS.
fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading --pg-tls-cert {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading --pg-tls-key {}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("--pg-tls-cert and --pg-tls-key")?;
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
