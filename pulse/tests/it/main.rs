//! Integration tests of `backbeat-pulse`: real nats-server, real pulse processes.

mod failover;
mod fence;
mod harness;
mod nats_outage;
mod security;
mod single;
mod tempo;
mod watchdog;
