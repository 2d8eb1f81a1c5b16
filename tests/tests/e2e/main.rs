//! End-to-end tests against real nats-server processes. One binary (modules
//! below) so the workspace links its end-to-end tests once.

mod auth;
mod cli;
mod dashboards;
mod deploy_files;
mod faults;
mod hostile;
mod hostile_http;
mod permissions;
mod pipeline;
mod stack;
mod streams;
