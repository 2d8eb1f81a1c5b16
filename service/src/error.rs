//! The errors of what every service shares, as variants a caller can act on:
//! NATS unreachable or refusing (an unavailable dependency: retry, or fix the
//! flags), a credentials file that cannot be read (bad input), a stream that
//! cannot be read or created, an HTTP address that cannot be bound. Each names what failed; its cause is its
//! `source`, printed by `{:#}` as `anyhow`'s `.context` would.

use std::path::PathBuf;

use async_nats::jetstream::context::{CreateStreamError, GetStreamError};

/// An error of the shared service code (NATS connection, streams, HTTP listeners).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("reading NATS credentials {}", path.display())]
    Credentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the NATS nkey seed")]
    NkeySeed {
        #[source]
        source: crate::secret::SecretError,
    },
    #[error("connecting to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("could not connect to NATS at {url} within {} s", timeout.as_secs())]
    ConnectTimeout { url: String, timeout: std::time::Duration },
    #[error("looking up stream {name}")]
    GetStream {
        name: String,
        #[source]
        source: GetStreamError,
    },
    #[error("reading stream {name}")]
    StreamInfo {
        name: String,
        #[source]
        source: async_nats::jetstream::stream::InfoError,
    },
    #[error("creating stream {name}")]
    CreateStream {
        name: String,
        #[source]
        source: CreateStreamError,
    },
    #[error("binding HTTP listener {listen}")]
    Bind {
        listen: String,
        #[source]
        source: std::io::Error,
    },
}
