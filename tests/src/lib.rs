//! Test support for every BACKBEAT crate: real `nats-server` processes (one
//! node or a 3-node JetStream cluster) on free loopback ports with temporary
//! stores, child processes of the project's own binaries that are killed on
//! drop, and waiting on conditions instead of sleeping.
//!
//! What this crate must never do: mock JetStream, skip a test silently when
//! `nats-server` is missing (it fails, saying how to install it), or leave a
//! process running after the value that owns it is dropped.

mod http;
mod nats;
mod process;
mod wait;

pub use http::http_get;
pub use nats::{nats_server_binary, NatsCluster, NatsServer, NatsServerOptions};
pub use process::{bin_path, free_port, ChildGuard, Signal};
pub use wait::{wait_until, wait_until_async};

/// The workspace root (the directory holding `Cargo.toml` of the workspace).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}
