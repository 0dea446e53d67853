//! `MetaClient`: the thin async client that nodes and gateways use to talk
//! to the meta service. Plain tokio/tonic: run it on a tokio runtime (the
//! engine keeps one on a control thread and bridges results into its
//! coroutines).
//!
//! It holds a list of `ferrite-meta` endpoints and sends each call to the
//! one it believes leads. A follower answers UNAVAILABLE with the leader's
//! address in the `x-ferrite-leader` metadata: the client goes there at
//! once. An endpoint that cannot be reached (or that has no leader to name
//! yet, as during a failover) makes the client try the next one after a
//! backoff that doubles up to a bound. Retries stop after
//! [`ClientConfig::retry_for`] or [`ClientConfig::max_attempts`],
//! whichever comes first, with the last error.
//!
//! Every other status (NOT_FOUND, ALREADY_EXISTS, INVALID_ARGUMENT, …) is
//! returned as is: its message names the pool, volume or node concerned.
//!
//! A write whose connection breaks after the leader applied it but before
//! the answer arrived is sent again; it then fails the way a repeat does
//! (e.g. ALREADY_EXISTS for `create_volume`). Callers that retry creates
//! themselves should treat that as "probably done" and check with a get.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

pub use tonic::{Code, Status};

use crate::proto;
use crate::proto::meta_client::MetaClient as RawClient;
use crate::LEADER_METADATA_KEY;

/// Settings of a [`MetaClient`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Longest wait for a TCP connection to one endpoint.
    pub connect_timeout: Duration,
    /// Longest wait for one call's answer from one endpoint.
    pub request_timeout: Duration,
    /// Longest time one call keeps retrying (connection failures, no
    /// leader yet); covers a leader failover with room to spare.
    pub retry_for: Duration,
    /// Most attempts of one call, redirects included.
    pub max_attempts: u32,
    /// First pause between retries.
    pub backoff_initial: Duration,
    /// Longest pause between retries.
    pub backoff_max: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            retry_for: Duration::from_secs(20),
            max_attempts: 64,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
        }
    }
}

/// A client of the meta service. Clones share endpoints, connections and
/// the knowledge of who leads.
#[derive(Clone)]
pub struct MetaClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MetaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("MetaClient")
            .field("endpoints", &st.endpoints)
            .field("current", &st.current)
            .finish()
    }
}

struct Inner {
    config: ClientConfig,
    state: Mutex<State>,
}

struct State {
    /// host:port of every known ferrite-meta (leaders named by redirects
    /// are added).
    endpoints: Vec<String>,
    /// Index of the endpoint calls go to first.
    current: usize,
    channels: HashMap<String, Channel>,
}

/// What a failed attempt means for the next one.
enum Next {
    /// Go to this leader now.
    Redirect(String),
    /// Try the next endpoint after a pause.
    Rotate,
    /// Give the error to the caller.
    Fail,
}

fn classify(status: &Status) -> Next {
    if let Some(leader) = status
        .metadata()
        .get(LEADER_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
    {
        return Next::Redirect(leader.to_string());
    }
    match status.code() {
        // No connection, no leader yet, or etcd unreachable from that meta.
        Code::Unavailable => Next::Rotate,
        // A connection that broke mid-call (the process died) surfaces as
        // UNKNOWN or CANCELLED from the transport, not from the service.
        Code::Unknown | Code::Cancelled if broken_connection(status) => Next::Rotate,
        _ => Next::Fail,
    }
}

/// Whether `status` came from the transport rather than the service. The
/// message alone is not enough: a connection closed by a killed meta reads
/// "operation was canceled", and only its source (hyper's "connection
/// closed") says why.
fn broken_connection(status: &Status) -> bool {
    let mut text = status.message().to_ascii_lowercase();
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        text.push('\n');
        text.push_str(&e.to_string().to_ascii_lowercase());
        source = e.source();
    }
    [
        "transport",
        "connection",
        "broken pipe",
        "h2 protocol",
        "stream",
    ]
    .iter()
    .any(|m| text.contains(m))
}

/// An error for a bad endpoint list.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No endpoint was given.
    #[error("no ferrite-meta endpoint given")]
    NoEndpoints,
    /// An endpoint is not a usable host:port.
    #[error("ferrite-meta endpoint '{endpoint}' is invalid: {reason}")]
    BadEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why.
        reason: String,
    },
}

/// Strips an optional `http://` and a trailing `/`: endpoints are kept as
/// host:port, as the leader publishes its address.
fn normalize(endpoint: &str) -> String {
    endpoint
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

impl MetaClient {
    /// A client over `endpoints` (host:port, optionally `http://host:port`)
    /// with default settings. Connects lazily: this never blocks.
    pub fn new<I, S>(endpoints: I) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::with_config(endpoints, ClientConfig::default())
    }

    /// A client over `endpoints` with `config`.
    pub fn with_config<I, S>(endpoints: I, config: ClientConfig) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list = Vec::new();
        for e in endpoints {
            let e = normalize(e.as_ref());
            if e.is_empty() {
                continue;
            }
            Endpoint::from_shared(format!("http://{e}")).map_err(|err| {
                ClientError::BadEndpoint {
                    endpoint: e.clone(),
                    reason: err.to_string(),
                }
            })?;
            if !list.contains(&e) {
                list.push(e);
            }
        }
        if list.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        Ok(MetaClient {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State {
                    endpoints: list,
                    current: 0,
                    channels: HashMap::new(),
                }),
            }),
        })
    }

    /// The endpoints known now (the given ones plus leaders learnt from
    /// redirects).
    pub fn endpoints(&self) -> Vec<String> {
        self.lock().endpoints.clone()
    }

    /// The endpoint calls go to first (the leader, once one answered).
    pub fn current_endpoint(&self) -> String {
        let st = self.lock();
        st.endpoints[st.current].clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State inconsistent
        // (every update is a single assignment), so poisoning is ignored.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn channel(&self) -> Result<(String, Channel), Status> {
        let mut st = self.lock();
        let addr = st.endpoints[st.current].clone();
        if let Some(ch) = st.channels.get(&addr) {
            return Ok((addr, ch.clone()));
        }
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::invalid_argument(format!("endpoint '{addr}': {e}")))?
            .connect_timeout(self.inner.config.connect_timeout)
            .timeout(self.inner.config.request_timeout)
            .tcp_nodelay(true);
        let ch = ep.connect_lazy();
        st.channels.insert(addr.clone(), ch.clone());
        Ok((addr, ch))
    }

    fn redirect(&self, leader: &str) {
        let leader = normalize(leader);
        let mut st = self.lock();
        let idx = match st.endpoints.iter().position(|e| *e == leader) {
            Some(i) => i,
            None => {
                st.endpoints.push(leader);
                st.endpoints.len() - 1
            }
        };
        st.current = idx;
    }

    fn rotate(&self, failed: &str) {
        let mut st = self.lock();
        // A broken connection is rebuilt on the next use.
        st.channels.remove(failed);
        if st.endpoints[st.current] == failed {
            st.current = (st.current + 1) % st.endpoints.len();
        }
    }

    /// Runs one call with redirects and retries. `f` makes the call on a
    /// raw client (the request is rebuilt for each attempt).
    async fn call<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, Status>
    where
        F: FnMut(RawClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let cfg = &self.inner.config;
        let deadline = Instant::now() + cfg.retry_for;
        let mut backoff = cfg.backoff_initial;
        let mut redirects_in_row = 0u32;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (addr, channel) = self.channel()?;
            let err = match f(RawClient::new(channel)).await {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(e) => e,
            };
            let next = classify(&err);
            let out_of_budget = attempt >= cfg.max_attempts || Instant::now() >= deadline;
            match next {
                Next::Fail => return Err(err),
                _ if out_of_budget => {
                    log::warn!(
                        "meta {what}: giving up after {attempt} attempts: {}",
                        err.message()
                    );
                    return Err(err);
                }
                Next::Redirect(leader) if normalize(&leader) != addr => {
                    log::debug!("meta {what}: {addr} redirects to leader {leader}");
                    self.redirect(&leader);
                    redirects_in_row += 1;
                    // Two followers naming a dead leader would bounce the
                    // call between them: pause after the first hop.
                    if redirects_in_row > 1 {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(cfg.backoff_max);
                    }
                }
                _ => {
                    log::debug!(
                        "meta {what}: {addr} failed ({}); trying another",
                        err.message()
                    );
                    redirects_in_row = 0;
                    self.rotate(&addr);
                    let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
                    tokio::time::sleep(pause).await;
                    backoff = (backoff * 2).min(cfg.backoff_max);
                }
            }
        }
    }

    /// Creates a pool.
    pub async fn create_pool(&self, req: proto::CreatePoolRequest) -> Result<proto::Pool, Status> {
        self.call("create_pool", |mut c| {
            let r = req.clone();
            async move { c.create_pool(r).await }
        })
        .await
    }

    /// All pools, by name.
    pub async fn list_pools(&self) -> Result<Vec<proto::Pool>, Status> {
        self.call("list_pools", |mut c| async move {
            c.list_pools(proto::ListPoolsRequest {}).await
        })
        .await
        .map(|r| r.pools)
    }

    /// One pool.
    pub async fn get_pool(&self, name: &str) -> Result<proto::Pool, Status> {
        let name = name.to_string();
        self.call("get_pool", |mut c| {
            let r = proto::GetPoolRequest { name: name.clone() };
            async move { c.get_pool(r).await }
        })
        .await
    }

    /// Deletes an empty pool.
    pub async fn delete_pool(&self, name: &str) -> Result<(), Status> {
        let name = name.to_string();
        self.call("delete_pool", |mut c| {
            let r = proto::DeletePoolRequest { name: name.clone() };
            async move { c.delete_pool(r).await }
        })
        .await
        .map(|_| ())
    }

    /// Creates a volume (a thick one with all its extents placed).
    pub async fn create_volume(
        &self,
        req: proto::CreateVolumeRequest,
    ) -> Result<proto::Volume, Status> {
        self.call("create_volume", |mut c| {
            let r = req.clone();
            async move { c.create_volume(r).await }
        })
        .await
    }

    /// Deletes a volume and its extents.
    pub async fn delete_volume(&self, name: &str) -> Result<(), Status> {
        let name = name.to_string();
        self.call("delete_volume", |mut c| {
            let r = proto::DeleteVolumeRequest { name: name.clone() };
            async move { c.delete_volume(r).await }
        })
        .await
        .map(|_| ())
    }

    /// Grows a volume to `new_size` bytes.
    pub async fn resize_volume(&self, name: &str, new_size: u64) -> Result<proto::Volume, Status> {
        let name = name.to_string();
        self.call("resize_volume", |mut c| {
            let r = proto::ResizeVolumeRequest {
                name: name.clone(),
                new_size,
            };
            async move { c.resize_volume(r).await }
        })
        .await
    }

    /// Volumes, of one pool or (None) all.
    pub async fn list_volumes(&self, pool: Option<&str>) -> Result<Vec<proto::Volume>, Status> {
        let pool = pool.unwrap_or_default().to_string();
        self.call("list_volumes", |mut c| {
            let r = proto::ListVolumesRequest { pool: pool.clone() };
            async move { c.list_volumes(r).await }
        })
        .await
        .map(|r| r.volumes)
    }

    /// A volume and its allocated extents (index order), read at one
    /// generation.
    pub async fn get_volume(&self, name: &str) -> Result<proto::GetVolumeResponse, Status> {
        let name = name.to_string();
        self.call("get_volume", |mut c| {
            let r = proto::GetVolumeRequest { name: name.clone() };
            async move { c.get_volume(r).await }
        })
        .await
    }

    /// The extent at `index` of `volume`, placed now if it has none yet
    /// (idempotent; the engine calls it on a thin volume's first write).
    pub async fn allocate_extent(
        &self,
        volume: &str,
        index: u64,
    ) -> Result<proto::AllocateExtentResponse, Status> {
        let volume = volume.to_string();
        self.call("allocate_extent", |mut c| {
            let r = proto::AllocateExtentRequest {
                volume: volume.clone(),
                index,
            };
            async move { c.allocate_extent(r).await }
        })
        .await
    }

    /// Registers (or re-registers) a node; returns its new lease.
    pub async fn register_node(
        &self,
        req: proto::RegisterNodeRequest,
    ) -> Result<proto::RegisterNodeResponse, Status> {
        self.call("register_node", |mut c| {
            let r = req.clone();
            async move { c.register_node(r).await }
        })
        .await
    }

    /// Renews a node's lease; NOT_FOUND when it has expired (register
    /// again). Returns the TTL in seconds.
    pub async fn keep_alive(&self, node_id: &str, lease_id: i64) -> Result<i64, Status> {
        let node_id = node_id.to_string();
        self.call("keep_alive", |mut c| {
            let r = proto::KeepAliveRequest {
                node_id: node_id.clone(),
                lease_id,
            };
            async move { c.keep_alive(r).await }
        })
        .await
        .map(|r| r.ttl_secs)
    }

    /// Reports a node's capacity.
    pub async fn report_capacity(
        &self,
        node_id: &str,
        capacity_total: u64,
        capacity_free: u64,
    ) -> Result<(), Status> {
        let node_id = node_id.to_string();
        self.call("report_capacity", |mut c| {
            let r = proto::ReportCapacityRequest {
                node_id: node_id.clone(),
                capacity_total,
                capacity_free,
            };
            async move { c.report_capacity(r).await }
        })
        .await
        .map(|_| ())
    }

    /// All registered nodes, by id.
    pub async fn list_nodes(&self) -> Result<Vec<proto::Node>, Status> {
        self.call("list_nodes", |mut c| async move {
            c.list_nodes(proto::ListNodesRequest {}).await
        })
        .await
        .map(|r| r.nodes)
    }

    /// Who leads, as seen by the endpoint that answers (any of them
    /// answers; this call is not redirected).
    pub async fn get_leader(&self) -> Result<proto::GetLeaderResponse, Status> {
        self.call("get_leader", |mut c| async move {
            c.get_leader(proto::GetLeaderRequest {}).await
        })
        .await
    }

    /// Reports that `failed_node` missed a write of extent `extent_id` (at
    /// `generation`) or cannot be reached; `reporter` is the calling node
    /// (it needs a live lease). Returns the extent as it is now: without
    /// the node when the generation was current (generation bumped), or
    /// unchanged when it was stale (retry with the returned one).
    /// FAILED_PRECONDITION when the node holds the last replica.
    pub async fn report_replica_failure(
        &self,
        extent_id: u64,
        generation: u64,
        failed_node: &str,
        reporter: &str,
    ) -> Result<proto::Extent, Status> {
        let (failed_node, reporter) = (failed_node.to_string(), reporter.to_string());
        self.call("report_replica_failure", |mut c| {
            let r = proto::ReportReplicaFailureRequest {
                extent_id,
                generation,
                failed_node: failed_node.clone(),
                reporter: reporter.clone(),
            };
            async move { c.report_replica_failure(r).await }
        })
        .await
    }

    /// The primary says learner `node` of extent `extent_id` is caught up
    /// (at `generation`). Returns the extent as it is now: with `node`
    /// among the replicas when the generation was current, unchanged when
    /// it was stale.
    pub async fn complete_resync(
        &self,
        extent_id: u64,
        generation: u64,
        node: &str,
    ) -> Result<proto::Extent, Status> {
        let node = node.to_string();
        self.call("complete_resync", |mut c| {
            let r = proto::CompleteResyncRequest {
                extent_id,
                generation,
                node: node.clone(),
            };
            async move { c.complete_resync(r).await }
        })
        .await
    }

    /// Reports how far the copy to learner `node` of extent `extent_id`
    /// has got (kept in the leader's memory, shown in volume and node
    /// listings).
    pub async fn report_resync_progress(
        &self,
        extent_id: u64,
        node: &str,
        bytes_done: u64,
        bytes_total: u64,
    ) -> Result<(), Status> {
        let node = node.to_string();
        self.call("report_resync_progress", |mut c| {
            let r = proto::ReportResyncProgressRequest {
                extent_id,
                node: node.clone(),
                bytes_done,
                bytes_total,
            };
            async move { c.report_resync_progress(r).await }
        })
        .await
        .map(|_| ())
    }

    /// Every extent `node` is a replica or a learner of, with its volume's
    /// name and extent size (parallel arrays). NOT_FOUND when the node is
    /// not registered: that is no reason to delete anything.
    pub async fn list_node_extents(
        &self,
        node: &str,
    ) -> Result<proto::ListNodeExtentsResponse, Status> {
        let node = node.to_string();
        self.call("list_node_extents", |mut c| {
            let r = proto::ListNodeExtentsRequest { node: node.clone() };
            async move { c.list_node_extents(r).await }
        })
        .await
    }

    /// One extent by id.
    pub async fn get_extent(&self, extent_id: u64) -> Result<proto::Extent, Status> {
        self.call("get_extent", |mut c| async move {
            c.get_extent(proto::GetExtentRequest { extent_id }).await
        })
        .await
    }

    /// Marks a node draining: its replicas move to other nodes.
    pub async fn drain_node(&self, node: &str) -> Result<proto::Node, Status> {
        let node = node.to_string();
        self.call("drain_node", |mut c| {
            let r = proto::DrainNodeRequest { node: node.clone() };
            async move { c.drain_node(r).await }
        })
        .await
    }

    /// Deletes an empty node's record (FAILED_PRECONDITION while it holds
    /// a replica or a learner).
    pub async fn remove_node(&self, node: &str) -> Result<(), Status> {
        let node = node.to_string();
        self.call("remove_node", |mut c| {
            let r = proto::RemoveNodeRequest { node: node.clone() };
            async move { c.remove_node(r).await }
        })
        .await
        .map(|_| ())
    }

    /// Registers `registration` and keeps the node's lease alive from a
    /// task on the current tokio runtime: a keep-alive every TTL/3, and a
    /// new registration when the lease was lost (expired while meta or the
    /// network was away). Must be called from within a tokio runtime.
    pub fn spawn_node_keeper(&self, registration: proto::RegisterNodeRequest) -> NodeKeeper {
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(keep_node(self.clone(), registration, tx));
        NodeKeeper { task, lease: rx }
    }
}

/// A node's current lease, as kept by [`NodeKeeper`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLease {
    /// etcd lease id.
    pub lease_id: i64,
    /// Its TTL in seconds.
    pub ttl_secs: i64,
    /// The node's gateway index (unique among nodes, stable; 0 from an
    /// older meta).
    pub gateway_index: u32,
}

/// The task that keeps a node registered; stops when dropped.
#[derive(Debug)]
pub struct NodeKeeper {
    task: JoinHandle<()>,
    lease: watch::Receiver<Option<NodeLease>>,
}

impl NodeKeeper {
    /// The lease now held (None until the first registration succeeds, and
    /// while registering again).
    pub fn lease(&self) -> Option<NodeLease> {
        *self.lease.borrow()
    }

    /// Waits until a lease is held or `timeout` passes.
    pub async fn wait_registered(&mut self, timeout: Duration) -> Option<NodeLease> {
        let _ = tokio::time::timeout(timeout, self.lease.wait_for(|l| l.is_some())).await;
        self.lease()
    }

    /// Stops keeping the lease (it then expires after its TTL).
    pub fn stop(self) {}
}

impl Drop for NodeKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep_node(
    client: MetaClient,
    reg: proto::RegisterNodeRequest,
    lease_tx: watch::Sender<Option<NodeLease>>,
) {
    let cfg = client.inner.config.clone();
    let mut backoff = cfg.backoff_initial;
    loop {
        let lease = match client.register_node(reg.clone()).await {
            Ok(r) => NodeLease {
                lease_id: r.lease_id,
                ttl_secs: r.ttl_secs.max(1),
                gateway_index: r.gateway_index,
            },
            Err(e) => {
                log::warn!(
                    "node '{}': registering with meta failed: {}",
                    reg.id,
                    e.message()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(cfg.backoff_max);
                continue;
            }
        };
        backoff = cfg.backoff_initial;
        lease_tx.send_replace(Some(lease));
        log::info!(
            "node '{}': registered, lease {:x}, ttl {}s",
            reg.id,
            lease.lease_id,
            lease.ttl_secs
        );
        let period = Duration::from_millis(lease.ttl_secs as u64 * 1000 / 3);
        loop {
            tokio::time::sleep(period).await;
            match client.keep_alive(&reg.id, lease.lease_id).await {
                Ok(_) => {}
                Err(e) if matches!(e.code(), Code::NotFound | Code::FailedPrecondition) => {
                    log::warn!("node '{}': {}; registering again", reg.id, e.message());
                    lease_tx.send_replace(None);
                    break;
                }
                // Meta unreachable for a while: keep trying; if the lease
                // expires meanwhile, the next answer says so.
                Err(e) => log::warn!("node '{}': keep-alive failed: {}", reg.id, e.message()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalized_and_deduplicated() {
        let c = MetaClient::new(["http://127.0.0.1:7000/", "127.0.0.1:7000", "127.0.0.1:7001"])
            .unwrap();
        assert_eq!(c.endpoints(), vec!["127.0.0.1:7000", "127.0.0.1:7001"]);
        assert!(matches!(
            MetaClient::new(Vec::<String>::new()),
            Err(ClientError::NoEndpoints)
        ));
    }

    #[test]
    fn redirects_add_unknown_leaders() {
        let c = MetaClient::new(["127.0.0.1:7000"]).unwrap();
        c.redirect("127.0.0.1:7005");
        assert_eq!(c.current_endpoint(), "127.0.0.1:7005");
        c.rotate("127.0.0.1:7005");
        assert_eq!(c.current_endpoint(), "127.0.0.1:7000");
    }

    #[test]
    fn classification() {
        let mut st = Status::unavailable("not the leader");
        st.metadata_mut()
            .insert(LEADER_METADATA_KEY, "127.0.0.1:7001".parse().unwrap());
        assert!(matches!(classify(&st), Next::Redirect(a) if a == "127.0.0.1:7001"));
        assert!(matches!(classify(&Status::unavailable("x")), Next::Rotate));
        assert!(matches!(
            classify(&Status::not_found("volume 'v' not found")),
            Next::Fail
        ));
        assert!(matches!(
            classify(&Status::unknown("transport error")),
            Next::Rotate
        ));
        assert!(matches!(classify(&Status::unknown("boom")), Next::Fail));
        // What tonic gave when the meta serving the call was SIGKILLed: the
        // reason is only in the source.
        let mut killed = Status::cancelled("operation was canceled");
        killed.set_source(Arc::new(std::io::Error::other("connection closed")));
        assert!(matches!(classify(&killed), Next::Rotate));
        assert!(matches!(
            classify(&Status::cancelled("operation was canceled")),
            Next::Fail
        ));
    }
}
