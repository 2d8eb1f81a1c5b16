//! The NATS connection flags every service takes, and connecting with them.

use std::path::PathBuf;
use std::time::Duration;

use crate::ServiceError;

/// An nkey seed is 58 characters; a file much larger is not one.
const NKEY_SEED_FILE_BYTES_MAX: u64 = 4096;

/// NATS flags, flattened into each binary's `Config` (`#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long = "nats", env = "BACKBEAT_NATS", default_value = "nats://127.0.0.1:4222")]
    pub url: String,
    /// NATS credentials file (JWT + nkey seed).
    #[arg(long = "nats-creds", env = "BACKBEAT_NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// NATS user name (with --nats-password).
    #[arg(long = "nats-user", env = "BACKBEAT_NATS_USER", requires = "password")]
    pub user: Option<String>,
    /// NATS password (with --nats-user).
    #[arg(
        long = "nats-password",
        env = "BACKBEAT_NATS_PASSWORD",
        hide_env_values = true,
        requires = "user"
    )]
    pub password: Option<String>,
    /// File holding the NATS user's nkey seed (SU…); the server knows the user by
    /// its public key (nkey: U… in its authorization, see deploy/nats/permissions.conf).
    #[arg(long = "nats-nkey-seed-file", env = "BACKBEAT_NATS_NKEY_SEED_FILE")]
    pub nkey_seed_file: Option<PathBuf>,
    /// NATS token.
    #[arg(long = "nats-token", env = "BACKBEAT_NATS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA that signs the NATS server's certificate (enables TLS).
    #[arg(long = "nats-tls-ca", env = "BACKBEAT_NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with --nats-tls-key.
    #[arg(long = "nats-tls-cert", env = "BACKBEAT_NATS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(long = "nats-tls-key", env = "BACKBEAT_NATS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require TLS even without a CA file (the system roots are used).
    #[arg(long = "nats-tls", env = "BACKBEAT_NATS_TLS")]
    pub tls_required: bool,
}

impl NatsArgs {
    /// Plain options for a URL, for tests and tools.
    pub fn for_url(url: impl Into<String>) -> Self {
        NatsArgs {
            url: url.into(),
            creds: None,
            nkey_seed_file: None,
            user: None,
            password: None,
            token: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_required: false,
        }
    }

    /// Connects, naming the connection `name` (visible in the server's monitoring).
    /// The client reconnects by itself forever; a first connection that fails is an error.
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client, ServiceError> {
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(10)))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("nats connected"),
                    async_nats::Event::Disconnected => tracing::warn!("nats disconnected"),
                    other => tracing::debug!(event = %other, "nats event"),
                }
            });
        if let Some(path) = &self.creds {
            options = options
                .credentials_file(path)
                .await
                .map_err(|source| ServiceError::Credentials {
                    path: path.clone(),
                    source,
                })?;
        }
        if let Some(path) = &self.nkey_seed_file {
            let seed = crate::secret::read_file(path, NKEY_SEED_FILE_BYTES_MAX)
                .map_err(|source| ServiceError::NkeySeed { source })?;
            options = options.nkey(seed);
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        if self.tls_required {
            options = options.require_tls(true);
        }
        let urls: Vec<&str> = self.url.split(',').map(str::trim).collect();
        // retry_on_initial_connect makes connect return at once; wait for the
        // first connection so a wrong URL is reported instead of hanging later.
        let client = options
            .connect(urls.as_slice())
            .await
            .map_err(|source| ServiceError::Connect {
                url: self.url.clone(),
                source,
            })?;
        let timeout = Duration::from_secs(30);
        let deadline = tokio::time::Instant::now() + timeout;
        while client.connection_state() != async_nats::connection::State::Connected {
            if tokio::time::Instant::now() > deadline {
                return Err(ServiceError::ConnectTimeout {
                    url: self.url.clone(),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(client)
    }
}
