//! The processor's single-writer lease: one `run` per `--name`, taken with
//! [`backbeat_service::lease`] in bucket `BACKBEAT_LEASES` before the
//! consumer or the checkpoint is touched. The lease publishes where it stands
//! on a `watch` channel; [`follow`] copies that into `/api/v1/status` (and so
//! `/ready`) and the metrics.

use backbeat_service::lease::LeaseState;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::status::SharedStatus;

/// The lease bucket's description, when `run` creates it.
pub const LEASE_BUCKET_DESCRIPTION: &str = "BACKBEAT processor leases: one running writer per processor name";

/// Copies each state the lease publishes into the status and the metrics
/// (`backbeat_processor_lease_held`, `backbeat_processor_lease_lost_total`),
/// until the lease is gone (its last state copied too).
pub fn follow(mut states: watch::Receiver<LeaseState>, status: SharedStatus, metrics: Metrics) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut was_lost = false;
        loop {
            let state = states.borrow_and_update().clone();
            let lost = matches!(state, LeaseState::Lost { .. });
            metrics
                .lease_held
                .set(i64::from(matches!(state, LeaseState::Held { .. })));
            if lost && !was_lost {
                metrics.lease_lost.inc();
            }
            was_lost = lost;
            status.update(|s| s.lease.copy(&state));
            if states.changed().await.is_err() {
                return;
            }
        }
    })
}
