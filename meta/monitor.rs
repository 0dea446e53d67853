//! The leader's background duties.
//!
//! The failure detector (every tick: half the grace period, between
//! 100 ms and 1 s): on taking over, roll back thick creates an earlier
//! leader left half-done and build the extent indexes if etcd lacks them;
//! then mark down nodes whose lease has been gone for the grace period,
//! remove every down node from the extents it is on (except where it
//! holds the last replica), and drop the id keys of deleted volumes.
//! Eviction runs every tick for every down node, not only when one is
//! marked, so a new leader finishes what a dead one started.
//!
//! The re-replication scheduler ([`run_repair`], every
//! [`RepairConfig::interval`]): see [`MetaService::repair_round`].

use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::replication::{RepairConfig, RoundReport};
use crate::service::{MetaService, MissingSince};

/// Runs the failure detector until `shutdown` turns true.
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
                    let swept = service.sweep_unfinished_creates(&store).await;
                    let indexed = match swept {
                        Ok(()) => service.ensure_indexes(&store).await,
                        Err(e) => Err(e),
                    };
                    match indexed {
                        Ok(()) => swept_term = term,
                        Err(e) => log::warn!(
                            "monitor: taking over (unfinished creates, indexes): {}",
                            e.message()
                        ),
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
                if swept_term == term {
                    if let Err(e) = service.evict_down_nodes(&store).await {
                        log::warn!("monitor: removing down nodes from extents: {}", e.message());
                    }
                    if let Err(e) = service.sweep_deleted_volumes(&store).await {
                        log::warn!("monitor: dropping ids of deleted volumes: {}", e.message());
                    }
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

/// A node was just marked down; the same tick removes it from its
/// extents ([`MetaService::evict_down_nodes`]) and the scheduler then
/// adds learners elsewhere.
fn on_node_down(id: &str) {
    log::warn!("monitor: node '{id}' is down; removing it from its extents (I/O goes on degraded)");
}

/// Runs the re-replication scheduler until `shutdown` turns true: one
/// round every `cfg.interval` while this process leads.
pub async fn run_repair(
    service: MetaService,
    cfg: RepairConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last = RoundReport::default();
    let mut leading = false;
    let mut last_log = Instant::now();
    while !*shutdown.borrow() {
        match service.leader_store() {
            Some(store) => {
                leading = true;
                match service.repair_round(&store, &cfg).await {
                    Ok(r) => {
                        let stuck = (r.unplaceable, r.waiting);
                        // Report the under-replicated extents that cannot be
                        // helped when that changes, and every minute.
                        if stuck != (last.unplaceable, last.waiting)
                            || (stuck != (0, 0) && last_log.elapsed() > Duration::from_secs(60))
                        {
                            if stuck != (0, 0) {
                                log::warn!(
                                    "re-replication: {} extent(s) lack a copy and no node qualifies for it; {} more wait for their primary to come back",
                                    r.unplaceable,
                                    r.waiting
                                );
                            } else {
                                log::info!("re-replication: every under-replicated extent has a node again");
                            }
                            last_log = Instant::now();
                        }
                        if r.learners_added > 0 || r.drained > 0 {
                            log::info!(
                                "re-replication round: {} learner(s) added, {} copy(ies) on draining nodes removed, {} extent(s) deferred",
                                r.learners_added,
                                r.drained,
                                r.deferred
                            );
                        }
                        last = r;
                    }
                    Err(e) => log::debug!("re-replication round: {}", e.message()),
                }
            }
            None => {
                if leading {
                    service.clear_progress();
                    leading = false;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.interval) => {}
            _ = shutdown.changed() => {}
        }
    }
}
