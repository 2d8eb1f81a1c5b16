//! The start of a connection: the connection cap, user and database
//! `backbeat` (any other is refused, `28000` / `3D000`, as PostgreSQL does),
//! SCRAM-SHA-256 when a password is configured (pgwire's), none otherwise;
//! then the server's parameters, and the connection's cancel key registered
//! for cancel requests (which this module's registry answers, not pgwire's
//! own per-query one, so that a cancelled query reaches the engine as a
//! cancel and is counted as one).

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramAuth, SCRAM_ITERATIONS};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata, AuthSource,
    DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::{
    ClientInfo, ConnectionGuard, ConnectionHandle, ConnectionManager, PgWireConnectionState, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator,
};
use pgwire::error::PgWireResult;
use pgwire::messages::startup::Startup as StartupMessage;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use super::catalog::{DATABASE, SERVER_VERSION, USER};
use super::errors::fatal;

/// A connection's cancel key in the registry, for as long as the connection lives.
pub struct Cancellation {
    pub handle: Arc<ConnectionHandle>,
    _registered: ConnectionGuard,
}

/// What every connection's start shares.
pub struct StartupShared {
    pub parameters: Arc<DefaultServerParameterProvider>,
    pub keys: Arc<RandomPidSecretKeyGenerator>,
    pub cancels: Arc<ConnectionManager>,
    /// The password's SCRAM verifier, when a password is configured.
    pub password: Option<Arc<ScramPassword>>,
}

impl StartupShared {
    pub fn new(password: Option<&str>) -> Result<Self, getrandom::Error> {
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = SERVER_VERSION.to_string();
        parameters.is_superuser = false;
        parameters.default_transaction_read_only = true;
        parameters.time_zone = "UTC".to_string();
        Ok(StartupShared {
            parameters: Arc::new(parameters),
            keys: Arc::new(RandomPidSecretKeyGenerator::default()),
            cancels: Arc::new(ConnectionManager::new()),
            password: password.map(ScramPassword::new).transpose()?.map(Arc::new),
        })
    }
}

/// One connection's start (a SASL exchange has state: one per connection).
pub struct Startup {
    shared: Arc<StartupShared>,
    /// False past `--pg-max-connections`: the start is refused (53300).
    admitted: bool,
    scram: Option<SASLAuthStartupHandler<DefaultServerParameterProvider>>,
}

impl Startup {
    pub fn new(shared: Arc<StartupShared>, admitted: bool) -> Self {
        let scram = shared.password.clone().map(|password| {
            SASLAuthStartupHandler::new(shared.parameters.clone())
                .with_scram(ScramAuth::new(password))
                .with_pid_secret_key_generator(shared.keys.clone())
        });
        Startup {
            shared,
            admitted,
            scram,
        }
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        pgwire::error::PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let PgWireFrontendMessage::Startup(startup) = &message {
            if !self.admitted {
                return Err(fatal("53300", "sorry, too many clients already (--pg-max-connections)"));
            }
            check_login(startup)?;
        }
        match &self.scram {
            Some(scram) => scram.on_startup(client, message).await?,
            None => {
                if let PgWireFrontendMessage::Startup(startup) = &message {
                    protocol_negotiation(client, startup).await?;
                    save_startup_parameters_to_metadata(client, startup);
                    let (pid, secret_key) = self.shared.keys.generate(client);
                    client.set_pid_and_secret_key(pid, secret_key);
                    finish_authentication(client, self.shared.parameters.as_ref()).await?;
                }
            }
        }
        let started = matches!(client.state(), PgWireConnectionState::ReadyForQuery);
        if started && client.session_extensions().get::<Cancellation>().is_none() {
            let (pid, secret_key) = client.pid_and_secret_key();
            let (handle, registered) = self.shared.cancels.register(pid, secret_key);
            client.session_extensions().insert(Cancellation {
                handle,
                _registered: registered,
            });
        }
        Ok(())
    }
}

/// User `backbeat`, database `backbeat` (the user's name when not given, as libpq does).
fn check_login(startup: &StartupMessage) -> PgWireResult<()> {
    let user = startup.parameters.get("user").map(String::as_str).unwrap_or("");
    if user != USER {
        return Err(fatal(
            "28000",
            format!("role \"{user}\" does not exist; the one user is \"{USER}\""),
        ));
    }
    let database = startup.parameters.get("database").map(String::as_str).unwrap_or(user);
    if database != DATABASE {
        return Err(fatal(
            "3D000",
            format!("database \"{database}\" does not exist; the one database is \"{DATABASE}\""),
        ));
    }
    Ok(())
}

/// The configured password as SCRAM-SHA-256 stores it: salted and hashed once.
#[derive(Debug)]
pub struct ScramPassword {
    salt: Vec<u8>,
    salted: Vec<u8>,
}

impl ScramPassword {
    /// Salts `password` with 16 bytes from the OS.
    pub fn new(password: &str) -> Result<Self, getrandom::Error> {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt)?;
        Ok(ScramPassword {
            salted: gen_salted_password(password, &salt, SCRAM_ITERATIONS),
            salt: salt.to_vec(),
        })
    }
}

#[async_trait]
impl AuthSource for ScramPassword {
    async fn get_password(&self, _login: &LoginInfo) -> PgWireResult<Password> {
        // The user was checked at the startup message.
        Ok(Password::new(Some(self.salt.clone()), self.salted.clone()))
    }
}
