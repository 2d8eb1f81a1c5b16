//! The query service's integration tests: one binary (links once), each test
//! against a real nats-server started on free loopback ports.
//!
//! - `tables`: after a live `backbeat-processor run` over every golden
//!   scenario and conformance log, `bar_reports` equals the published
//!   BarReports field by field (read back from the Parquet archive: the
//!   server seals every report before the comparison), and `claims`, `beats` and `rejects` hold
//!   every valid message of their streams. Needs the `backbeat-processor`
//!   binary in the same target directory (`cargo test --workspace` builds
//!   it; with `-p backbeat-query`, `cargo build -p backbeat-processor` first).
//! - `archive`: archive + tail equal the streams across seals, a kill -9 of
//!   `serve` and restarts (also with the positions lost); pruning in
//!   `EXPLAIN ANALYZE`; `sql --archive` offline; the S3 path against
//!   `moto_server` (`deploy/install-moto.sh`).
//! - `nodes` (a fault test of issue 22, recorded for `deploy/faults.sh`): two
//!   `serve` nodes on one archive on moto's S3, one writer at a time, the
//!   same rows from both; kill -9 of the writer under load, the other takes
//!   over within the lease TTL, no row archived twice or missing.
//!   `BACKBEAT_FAULTS_LONG=1` kills it more often.
//! - `limits`: every forbidden statement kind and every limit gives its 4xx
//!   naming the rule or the limit, and the server goes on answering; the token.
//! - `foreign`: garbage and forged messages on bar and beat subjects are left
//!   out (counted); a later report of a window replaces the earlier one; the
//!   windows API, CSV, Arrow and the `sql` CLI.
//! - `console`: the built-in console's files and `/api/v1/clusters`, and the
//!   page in headless Chromium (needs `bash deploy/install-chromium.sh`).
//! - `pg`: the PostgreSQL wire protocol with tokio-postgres (prepared
//!   statements, typed parameters, native types in binary and text, portals),
//!   every refusal and limit with its SQLSTATE, cancel, the connection cap,
//!   users and the password, Grafana's macro expansions and catalog queries.
//! - `pg_clients`: psql (`\dt`, `\d bar_reports`, `\l`) and psycopg.

mod archive;
mod archive_log;
mod console;
mod foreign;
mod limits;
mod nodes;
mod pg;
mod pg_clients;
mod support;
mod tables;
