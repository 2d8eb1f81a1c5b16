//! `serve`'s pg-wire flags, each also read from its `BACKBEAT_PG_…` variable.

use std::path::PathBuf;

use anyhow::bail;

use crate::config::token_from;

/// The pg-wire flags of `backbeat-query serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct PgArgs {
    /// PostgreSQL wire protocol address (psql, psycopg, Grafana, …), user and
    /// database `backbeat`; off when unset.
    #[arg(long, env = "BACKBEAT_PG_LISTEN")]
    pub pg_listen: Option<String>,
    /// Password (SCRAM-SHA-256) pg-wire clients must give; none asked when unset.
    /// Prefer --pg-password-file or the environment: a command line is visible to every user.
    #[arg(long, env = "BACKBEAT_PG_PASSWORD", hide_env_values = true)]
    pub pg_password: Option<String>,
    /// File holding the pg-wire password (surrounding whitespace ignored); instead of --pg-password.
    #[arg(long, env = "BACKBEAT_PG_PASSWORD_FILE", conflicts_with = "pg_password")]
    pub pg_password_file: Option<PathBuf>,
    /// PEM certificate (chain) for pg-wire TLS; with --pg-tls-key. Without
    /// them a client's SSL request is answered N (no TLS).
    #[arg(long, env = "BACKBEAT_PG_TLS_CERT", requires = "pg_tls_key")]
    pub pg_tls_cert: Option<PathBuf>,
    /// PEM private key of --pg-tls-cert.
    #[arg(long, env = "BACKBEAT_PG_TLS_KEY", requires = "pg_tls_cert")]
    pub pg_tls_key: Option<PathBuf>,
    /// pg-wire connections open at once; one more is refused (53300).
    #[arg(long, env = "BACKBEAT_PG_MAX_CONNECTIONS", default_value_t = 64)]
    pub pg_max_connections: usize,
}

/// The pg-wire front end's configuration, validated.
#[derive(Debug, Clone)]
pub struct PgConfig {
    pub listen: String,
    pub password: Option<String>,
    /// (certificate, key) PEM files.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub connections_max: usize,
}

impl PgArgs {
    /// `None` when --pg-listen is unset.
    pub fn validate(self) -> anyhow::Result<Option<PgConfig>> {
        let Some(listen) = self.pg_listen else {
            return Ok(None);
        };
        if self.pg_max_connections == 0 {
            bail!("--pg-max-connections must be at least 1");
        }
        let password = token_from(self.pg_password, self.pg_password_file.as_deref(), "--pg-password")?;
        Ok(Some(PgConfig {
            listen,
            password,
            tls: self.pg_tls_cert.zip(self.pg_tls_key),
            connections_max: self.pg_max_connections,
        }))
    }
}
