//! The leader's background duties: on taking over, roll back thick
//! creates an earlier leader left half-done; then, every tick, mark down
//! nodes whose lease has been gone for the grace period.
//!
//! Issue 5 hooks in where a node is marked down: bump the generation of
//! its extents, drop it from their replica sets and schedule
//! re-replication.

use std::time::Duration;

use tokio::sync::watch;

use crate::service::{MetaService, MissingSince};

/// Runs until `shutdown` turns true.
pub async fn run(service: MetaService, grace: Duration, mut shutdown: watch::Receiver<bool>) {
    // Detecting a node loss takes its lease TTL plus the grace period plus
    // at most one tick.
    let tick = (grace / 2).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut missing = MissingSince::new();
    let mut swept_term: Option<i64> = None;
    while !*shutdown.borrow() {
        match service.leader_store() {
            Some(store) => {
                let term = store.fence().map(|f| f.rev);
                if swept_term != term {
                    match service.sweep_unfinished_creates(&store).await {
                        Ok(()) => swept_term = term,
                        Err(e) => {
                            log::warn!("monitor: sweeping unfinished creates: {}", e.message())
                        }
                    }
                }
                match service
                    .mark_expired_nodes(&store, &mut missing, grace)
                    .await
                {
                    Ok(down) => {
                        for id in down {
                            on_node_down(&id);
                        }
                    }
                    Err(e) => log::warn!("monitor: checking node leases: {}", e.message()),
                }
            }
            None => {
                missing.clear();
                swept_term = None;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// What follows a node being marked down. For now only that fact is
/// recorded; re-replication is issue 5.
fn on_node_down(id: &str) {
    log::info!(
        "monitor: node '{id}' is down; its extents run degraded until re-replication (issue 5)"
    );
}
