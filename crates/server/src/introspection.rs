//! The server's answers to `grpc.health.v1.Health`: SERVING while it
//! knows a leader (it can commit writes and serve reads), NOT_SERVING
//! otherwise, for the whole process (`""`) and for each of its services.

use skiff_proto::introspection::{set_status, ServingStatus};
use skiff_proto::pb;
use skiff_store::Store;
use tonic_health::server::HealthReporter;

/// Every service a server's ports serve.
pub const SERVICES: &[&str] = &[
    pb::cluster_server::SERVICE_NAME,
    pb::node_api_server::SERVICE_NAME,
    pb::access_server::SERVICE_NAME,
    pb::peer_server::SERVICE_NAME,
    pb::peer_snapshot_server::SERVICE_NAME,
];

/// What a server with this Raft status answers.
pub fn status_of(leader_id: u64, fatal: bool) -> ServingStatus {
    if leader_id != 0 && !fatal {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// Keeps the health service's answers in step with the Raft status.
pub async fn follow_leader(reporter: HealthReporter, store: Store) {
    let mut status = store.watch_status();
    let mut last = None;
    loop {
        let now = {
            let s = status.borrow_and_update();
            status_of(s.leader_id, s.fatal.is_some())
        };
        if last != Some(now) {
            set_status(&reporter, SERVICES, now).await;
            tracing::info!(status = ?now, "health");
            last = Some(now);
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_serves_while_it_knows_a_leader() {
        assert_eq!(status_of(2, false), ServingStatus::Serving);
        assert_eq!(status_of(0, false), ServingStatus::NotServing);
        assert_eq!(status_of(2, true), ServingStatus::NotServing);
    }
}
