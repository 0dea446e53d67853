//! Leader election through etcd's election API (v3election, served by
//! etcd 3.4 on its client port). Each `ferrite-meta` campaigns with its own
//! lease; the winner publishes a [`Fence`] that fences every transaction
//! it writes. When its lease cannot be renewed it steps down at once, and
//! when it dies the lease expires (after its TTL) and the next candidate's
//! campaign returns: that is the failover time.

use std::time::{Duration, Instant};

use etcd_client::{Client, LeaderKey, LeaseKeepAliveStream, LeaseKeeper, ResignOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use crate::keys;
use crate::store::{Fence, StoreError};

/// Who leads, as published in the election key's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    /// The leader's `--name`.
    pub name: String,
    /// The leader's gRPC address (host:port) as clients should dial it.
    pub address: String,
}

/// One process's participation in the election.
pub struct Election {
    client: Client,
    me: LeaderInfo,
    ttl_secs: i64,
    state: watch::Sender<Option<Fence>>,
}

/// Longest wait for the clean-up calls (resign, revoke) at step-down.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait between campaign attempts after an etcd error.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl Election {
    /// A participant that campaigns as `me` with a lease of `ttl_secs`.
    /// `client` must have no request timeout: a campaign waits as long as
    /// another process leads. The receiver tells the current fence (Some
    /// while this process leads).
    pub fn new(
        client: Client,
        me: LeaderInfo,
        ttl_secs: i64,
    ) -> (Self, watch::Receiver<Option<Fence>>) {
        let (state, rx) = watch::channel(None);
        (
            Election {
                client,
                me,
                ttl_secs: ttl_secs.max(1),
                state,
            },
            rx,
        )
    }

    /// Campaigns, leads, steps down and campaigns again until `shutdown`
    /// turns true; then resigns so that another process takes over at
    /// once instead of after the lease TTL.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let value = serde_json::to_vec(&self.me).unwrap_or_default();
        let mut backoff = Duration::from_millis(100);
        while !*shutdown.borrow() {
            let lease = match self.client.lease_client().grant(self.ttl_secs, None).await {
                Ok(r) => r.id(),
                Err(e) => {
                    log::warn!(
                        "election: granting a lease of {}s failed: {e}",
                        self.ttl_secs
                    );
                    sleep_or_shutdown(backoff, &mut shutdown).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let (lost_tx, mut lost_rx) = oneshot::channel();
            let keeper = tokio::spawn(keep_lease(
                self.client.clone(),
                lease,
                self.ttl_secs,
                lost_tx,
            ));
            let mut election = self.client.election_client();
            let won = tokio::select! {
                r = election.campaign(keys::LEADER_ELECTION, value.clone(), lease) => r,
                _ = &mut lost_rx => {
                    log::warn!("election: lease {lease:x} lost while campaigning; starting over");
                    keeper.abort();
                    continue;
                }
                _ = shutdown.changed() => {
                    keeper.abort();
                    self.revoke(lease).await;
                    break;
                }
            };
            let leader = match won.map(|mut r| r.take_leader()) {
                Ok(Some(l)) => l,
                Ok(None) => {
                    log::warn!("election: campaign returned no leader key");
                    keeper.abort();
                    self.revoke(lease).await;
                    continue;
                }
                Err(e) => {
                    log::warn!("election: campaign failed: {e}");
                    keeper.abort();
                    self.revoke(lease).await;
                    sleep_or_shutdown(backoff, &mut shutdown).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            let fence = Fence {
                key: leader.key().to_vec(),
                rev: leader.rev(),
            };
            log::info!(
                "election: '{}' at {} is the leader (term {})",
                self.me.name,
                self.me.address,
                fence.rev
            );
            self.state.send_replace(Some(fence));
            let shutting_down = tokio::select! {
                _ = &mut lost_rx => {
                    log::warn!("election: lease {lease:x} could not be renewed; stepping down");
                    false
                }
                _ = shutdown.changed() => true,
            };
            self.state.send_replace(None);
            keeper.abort();
            if shutting_down {
                self.resign(leader).await;
                self.revoke(lease).await;
                break;
            }
            self.revoke(lease).await;
        }
        self.state.send_replace(None);
        log::info!("election: '{}' left the election", self.me.name);
    }

    async fn resign(&self, leader: LeaderKey) {
        let mut election = self.client.election_client();
        let opts = ResignOptions::new().with_leader(leader);
        match tokio::time::timeout(CLEANUP_TIMEOUT, election.resign(Some(opts))).await {
            Ok(Ok(_)) => log::info!("election: resigned"),
            Ok(Err(e)) => log::warn!("election: resign failed: {e}"),
            Err(_) => log::warn!("election: resign timed out"),
        }
    }

    async fn revoke(&self, lease: i64) {
        let mut leases = self.client.lease_client();
        if let Ok(Err(e)) = tokio::time::timeout(CLEANUP_TIMEOUT, leases.revoke(lease)).await {
            log::debug!("election: revoking lease {lease:x}: {e}");
        }
    }
}

/// The current leader, if one is elected.
pub async fn current_leader(client: &Client) -> Result<Option<LeaderInfo>, StoreError> {
    let mut election = client.election_client();
    match election.leader(keys::LEADER_ELECTION).await {
        Ok(resp) => Ok(resp
            .kv()
            .and_then(|kv| serde_json::from_slice::<LeaderInfo>(kv.value()).ok())),
        // etcd answers "election: no leader" as an error status.
        Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("no leader") => Ok(None),
        Err(source) => Err(StoreError::Etcd {
            op: "election leader".into(),
            source,
        }),
    }
}

async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.changed() => {}
    }
}

/// Renews `lease` every ttl/3 and reports on `lost` when it has expired
/// or could not be renewed for 2/3 of its TTL: by then another process
/// may be about to take over, so this one must stop serving first.
async fn keep_lease(client: Client, lease: i64, ttl_secs: i64, lost: oneshot::Sender<()>) {
    let ttl = Duration::from_secs(ttl_secs as u64);
    let period = ttl / 3;
    let give_up = ttl * 2 / 3;
    let mut last_ok = Instant::now();
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    loop {
        match renew(&client, lease, &mut stream, period).await {
            Ok(remaining) if remaining > 0 => last_ok = Instant::now(),
            Ok(_) => {
                log::warn!("election: lease {lease:x} has expired");
                let _ = lost.send(());
                return;
            }
            Err(e) => {
                stream = None;
                log::warn!("election: renewing lease {lease:x}: {e}");
            }
        }
        if last_ok.elapsed() >= give_up {
            let _ = lost.send(());
            return;
        }
        tokio::time::sleep(period.min(give_up.saturating_sub(last_ok.elapsed()))).await;
    }
}

/// One keep-alive round trip; the remaining TTL (0 when expired).
async fn renew(
    client: &Client,
    lease: i64,
    stream: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    timeout: Duration,
) -> Result<i64, String> {
    let round = async {
        if stream.is_none() {
            // Opening the stream renews the lease once already.
            return match client.lease_client().keep_alive(lease).await {
                Ok(s) => {
                    *stream = Some(s);
                    Ok(1)
                }
                Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("not found") => Ok(0),
                Err(e) => Err(e.to_string()),
            };
        }
        let Some((keeper, responses)) = stream.as_mut() else {
            return Err("no keep-alive stream".to_string());
        };
        keeper.keep_alive().await.map_err(|e| e.to_string())?;
        match responses.message().await.map_err(|e| e.to_string())? {
            Some(r) => Ok(r.ttl()),
            None => Err("keep-alive stream closed".to_string()),
        }
    };
    tokio::time::timeout(timeout, round)
        .await
        .map_err(|_| "keep-alive timed out".to_string())?
}
