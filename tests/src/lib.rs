//! Test support for every BACKBEAT crate: real `nats-server` processes (one
//! node or a 3-node JetStream cluster) on free loopback ports with temporary
//! stores, child processes of the project's own binaries that are killed on
//! drop, network namespaces whose links a partition test can cut, waiting on
//! conditions instead of sleeping, and the seeded random generator of the
//! randomized tests.
//!
//! What this crate must never do: mock JetStream, skip a test silently when
//! `nats-server` is missing (it fails, saying how to install it), or leave a
//! process running after the value that owns it is dropped.

pub mod bench;
mod faults;
mod http;
mod nats;
mod netns;
mod process;
mod rng;
mod wait;

pub use faults::{FaultRecord, FAULT_REPORT_ENV};
pub use http::{http_get, http_get_at, http_post};
pub use nats::{nats_server_binary, NatsCluster, NatsServer, NatsServerOptions};
pub use netns::PeerNetwork;
pub use process::{bin_path, free_port, ChildGuard, Signal};
pub use rng::{seed_from_env, TestRng};
pub use wait::{wait_until, wait_until_async};

/// The workspace root (the directory holding `Cargo.toml` of the workspace).
///
/// Read at run time from `CARGO_MANIFEST_DIR`, which `cargo test` sets to the
/// directory of the crate under test (every crate sits one level below the
/// root). The value compiled in is only the fallback: checkouts that share a
/// target directory can reuse each other's test binaries, and a reused binary
/// must read this checkout's files, not those of the one it was built in.
pub fn workspace_root() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .parent()
        .expect("a crate directory has a parent")
        .to_path_buf()
}
