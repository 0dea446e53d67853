//! The gRPC service: request checks, placement and the etcd transactions
//! behind each call. Only the leader serves (except `GetLeader`); the
//! others answer UNAVAILABLE with the leader's address.
//!
//! Writes are serialized by one in-process lock, so that the leader's own
//! requests never conflict with each other; the revision compares in every
//! transaction are what make them correct against anything else (a
//! deposed leader, a person with etcdctl), and a conflict re-reads and
//! tries again a bounded number of times.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use etcd_client::Client;
use tokio::sync::{watch, Mutex};
use tonic::{Request, Response, Status};

use crate::election::{self, LeaderInfo};
use crate::keys;
use crate::placement::{Candidate, PlacementError, Placer};
use crate::proto::{self, meta_server::Meta};
use crate::records::{
    default_min_replicas, now_unix_ms, DeletedVolume, ExtentRecord, ExtentRef, NodeRecord,
    NodeState, PoolRecord, Provisioning, VolumeRecord, VolumeState,
};
use crate::store::{Commit, Fence, Store, StoreError, Txn, Versioned};
use crate::validate;
use crate::LEADER_METADATA_KEY;

/// How often a write re-reads and retries after a revision conflict.
pub(crate) const MAX_TXN_RETRIES: usize = 16;
/// Smallest `max_txn_ops` accepted: room for a volume, the counter, a
/// pool key and one extent on three nodes with its index keys, or one
/// replica-set change of an extent with three replicas and two learners.
pub const MIN_TXN_OPS: usize = 16;

/// Settings of the service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// This process's name (`--name`).
    pub name: String,
    /// The address clients reach this process at.
    pub address: String,
    /// TTL of the leases granted to nodes.
    pub node_ttl_secs: i64,
    /// Most operations (and compares) per etcd transaction: etcd's
    /// `--max-txn-ops` (128 by default). Larger thick allocations are
    /// split into several transactions.
    pub max_txn_ops: usize,
}

/// The meta service. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct MetaService {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) config: ServiceConfig,
    pub(crate) leadership: watch::Receiver<Option<Fence>>,
    pub(crate) write_lock: Mutex<()>,
    /// Resync progress reports by (extent id, learner): soft state of the
    /// leader, lost on failover (see `replication`).
    pub(crate) progress: std::sync::Mutex<HashMap<(u64, String), proto::ResyncProgress>>,
    /// Nodes recently reported failed, by when (soft state of the leader).
    pub(crate) suspects: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    /// Set once the extent indexes are known to be complete in etcd
    /// (`keys::SCHEMA`); never unset (the marker stays).
    pub(crate) indexes_ready: AtomicBool,
}

pub(crate) fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::LostLeadership => {
            Status::unavailable("this ferrite-meta lost its leadership during the request; retry")
        }
        StoreError::Etcd { .. } => Status::unavailable(e.to_string()),
        StoreError::Corrupt { .. } => Status::internal(e.to_string()),
    }
}

fn placement_status(what: &str, e: PlacementError) -> Status {
    match e {
        PlacementError::NotEnoughNodes { .. } => {
            Status::failed_precondition(format!("{what}: {e}"))
        }
        PlacementError::NoSpace { .. } => Status::resource_exhausted(format!("{what}: {e}")),
    }
}

pub(crate) fn conflict_status(what: &str) -> Status {
    Status::aborted(format!(
        "{what}: gave up after {MAX_TXN_RETRIES} conflicting concurrent changes; retry"
    ))
}

/// One extent to write: its index and nodes.
struct Planned {
    index: u64,
    replicas: Vec<String>,
}

/// What the first transaction of a new volume also carries.
struct NewVolume<'a> {
    pool: &'a Versioned<PoolRecord>,
}

enum BatchError {
    /// A compare failed after `applied` extents were written.
    Conflict {
        applied: usize,
    },
    Store(StoreError),
}

impl MetaService {
    /// A service over `client` (which should have a request timeout),
    /// leading while `leadership` holds a fence.
    pub fn new(
        client: Client,
        config: ServiceConfig,
        leadership: watch::Receiver<Option<Fence>>,
    ) -> Self {
        let mut config = config;
        config.max_txn_ops = config.max_txn_ops.max(MIN_TXN_OPS);
        MetaService {
            inner: Arc::new(Inner {
                client,
                config,
                leadership,
                write_lock: Mutex::new(()),
                progress: std::sync::Mutex::new(HashMap::new()),
                suspects: std::sync::Mutex::new(HashMap::new()),
                indexes_ready: AtomicBool::new(false),
            }),
        }
    }

    /// The store fenced by the current leadership, or None when this
    /// process does not lead.
    pub fn leader_store(&self) -> Option<Store> {
        let fence = self.inner.leadership.borrow().clone()?;
        Some(Store::new(self.inner.client.clone(), Some(fence)))
    }

    pub(crate) async fn leader(&self) -> Result<Store, Status> {
        if let Some(store) = self.leader_store() {
            return Ok(store);
        }
        Err(self.not_leader().await)
    }

    async fn not_leader(&self) -> Status {
        let me = &self.inner.config.name;
        match election::current_leader(&self.inner.client).await {
            Ok(Some(LeaderInfo { name, address }))
                if name != *me || address != self.inner.config.address =>
            {
                let mut st = Status::unavailable(format!(
                    "ferrite-meta '{me}' is not the leader; the leader is '{name}' at {address}"
                ));
                if let Ok(v) = address.parse() {
                    st.metadata_mut().insert(LEADER_METADATA_KEY, v);
                }
                st
            }
            Ok(_) => Status::unavailable(format!(
                "ferrite-meta '{me}' is not the leader and no leader is elected yet; retry shortly"
            )),
            Err(e) => Status::unavailable(format!(
                "ferrite-meta '{me}' is not the leader and cannot ask etcd who is: {e}"
            )),
        }
    }

    async fn get_pool_record(
        &self,
        store: &Store,
        name: &str,
    ) -> Result<Versioned<PoolRecord>, Status> {
        store
            .get::<PoolRecord>(&keys::pool(name))
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("pool '{name}' not found")))
    }

    async fn get_volume_record(
        &self,
        store: &Store,
        name: &str,
    ) -> Result<Versioned<VolumeRecord>, Status> {
        store
            .get::<VolumeRecord>(&keys::volume(name))
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("volume '{name}' not found")))
    }

    /// Nodes by id, and the ids whose liveness key exists.
    pub(crate) async fn nodes(
        &self,
        store: &Store,
    ) -> Result<(BTreeMap<String, Versioned<NodeRecord>>, HashSet<String>), Status> {
        let nodes = store
            .list::<NodeRecord>(keys::NODES)
            .await
            .map_err(store_status)?
            .into_iter()
            .map(|n| (n.value.id.clone(), n))
            .collect();
        let alive = store
            .list_names(keys::NODE_ALIVE)
            .await
            .map_err(store_status)?
            .into_iter()
            .collect();
        Ok((nodes, alive))
    }

    /// A placer over the nodes that are up with a live lease.
    pub(crate) fn placer(
        nodes: &BTreeMap<String, Versioned<NodeRecord>>,
        alive: &HashSet<String>,
    ) -> Placer {
        Placer::new(
            nodes
                .values()
                .filter(|n| n.value.state == NodeState::Up && alive.contains(&n.value.id))
                .map(|n| Candidate {
                    id: n.value.id.clone(),
                    zone: n.value.zone.clone(),
                    available: n.value.available(),
                })
                .collect(),
        )
    }

    async fn read_counter(store: &Store) -> Result<(u64, Option<i64>), StoreError> {
        match store.get_raw(keys::EXTENT_ID_COUNTER).await? {
            None => Ok((1, None)),
            Some((bytes, rev)) => {
                let next = std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or_else(|| StoreError::Corrupt {
                        key: keys::EXTENT_ID_COUNTER.into(),
                        reason: "not a decimal number".into(),
                    })?;
                Ok((next, Some(rev)))
            }
        }
    }

    /// Writes `planned` extents of `volume` in as few transactions as the
    /// etcd limit allows, bumping the volume's generation in each. With
    /// `new`, the first transaction also creates the volume (compared
    /// absent) and its pool membership key. `finish` is applied to the
    /// volume record in the last transaction. On success `volume` and
    /// `nodes` hold what is now in etcd.
    async fn write_extents(
        &self,
        store: &Store,
        volume: &mut Versioned<VolumeRecord>,
        new: Option<NewVolume<'_>>,
        planned: &[Planned],
        nodes: &mut BTreeMap<String, Versioned<NodeRecord>>,
        finish: impl Fn(&mut VolumeRecord),
    ) -> Result<Vec<ExtentRecord>, BatchError> {
        let max_ops = self.inner.config.max_txn_ops;
        let vkey = keys::volume(&volume.value.name);
        let mut written = Vec::with_capacity(planned.len());
        let mut pos = 0;
        let mut first = true;
        loop {
            let (mut next_id, counter_rev) =
                Self::read_counter(store).await.map_err(BatchError::Store)?;
            let mut txn = Txn::new(format!("write extents of volume '{}'", volume.value.name));
            let is_new = first && new.is_some();
            if is_new {
                txn.expect_absent(&vkey);
            } else {
                txn.expect_rev(&vkey, volume.mod_rev);
            }
            txn.expect(keys::EXTENT_ID_COUNTER, counter_rev);
            // Fixed cost: volume + counter (+ pool compare and membership
            // key for a new volume) + the fence compare.
            let fixed = if is_new { 3 } else { 2 };
            let mut touched: BTreeMap<String, NodeRecord> = BTreeMap::new();
            let mut batch = Vec::new();
            // Per extent: its record, its id key and one index key per
            // replica.
            let mut extent_ops = 0;
            while pos < planned.len() {
                let p = &planned[pos];
                let new_nodes = p
                    .replicas
                    .iter()
                    .filter(|r| !touched.contains_key(*r))
                    .count();
                let this_ops = 2 + p.replicas.len();
                let ops = fixed + extent_ops + this_ops + touched.len() + new_nodes;
                let compares = fixed + 1 + touched.len() + new_nodes;
                if !batch.is_empty() && (ops > max_ops || compares > max_ops) {
                    break;
                }
                extent_ops += this_ops;
                for r in &p.replicas {
                    let n = touched.entry(r.clone()).or_insert_with(|| {
                        nodes.get(r).map(|n| n.value.clone()).unwrap_or_else(|| {
                            // Placement only names listed nodes.
                            unreachable_node(r)
                        })
                    });
                    n.allocated = n.allocated.saturating_add(volume.value.extent_size);
                }
                batch.push(ExtentRecord {
                    id: next_id,
                    volume_uuid: volume.value.uuid.clone(),
                    index: p.index,
                    replicas: p.replicas.clone(),
                    generation: 1,
                    learners: Vec::new(),
                });
                next_id += 1;
                pos += 1;
            }
            let last = pos == planned.len();
            let mut vrec = volume.value.clone();
            if !is_new {
                vrec.generation += 1;
            }
            if last {
                finish(&mut vrec);
            }
            if let Some(nv) = new.as_ref().filter(|_| is_new) {
                txn.expect_rev(&keys::pool(&nv.pool.value.name), nv.pool.mod_rev);
                txn.put_raw(
                    &keys::pool_volume(&nv.pool.value.name, &vrec.name),
                    vrec.uuid.clone().into_bytes(),
                    None,
                );
            }
            txn.put_json(&vkey, &vrec);
            txn.put_raw(
                keys::EXTENT_ID_COUNTER,
                next_id.to_string().into_bytes(),
                None,
            );
            for e in &batch {
                txn.put_json(&keys::extent(&e.volume_uuid, e.index), e);
                txn.put_json(
                    &keys::extent_id(e.id),
                    &ExtentRef {
                        volume: vrec.name.clone(),
                        volume_uuid: e.volume_uuid.clone(),
                        index: e.index,
                    },
                );
                crate::replication::index_ops(&mut txn, &vrec, None, e);
            }
            for (id, n) in &touched {
                if let Some(cur) = nodes.get(id) {
                    txn.expect_rev(&keys::node(id), cur.mod_rev);
                }
                txn.put_json(&keys::node(id), n);
            }
            match store.commit(txn).await.map_err(BatchError::Store)? {
                Commit::Applied(rev) => {
                    volume.value = vrec;
                    volume.mod_rev = rev;
                    for (id, n) in touched {
                        nodes.insert(
                            id,
                            Versioned {
                                value: n,
                                mod_rev: rev,
                            },
                        );
                    }
                    written.extend(batch);
                }
                Commit::Conflict => {
                    return Err(BatchError::Conflict {
                        applied: written.len(),
                    })
                }
            }
            first = false;
            if last {
                return Ok(written);
            }
        }
    }

    /// Deletes a volume, its membership key and all its extents, and gives
    /// the extents' space back to their nodes: one transaction.
    async fn delete_volume_inner(&self, store: &Store, name: &str) -> Result<(), Status> {
        for _ in 0..MAX_TXN_RETRIES {
            let vol = self.get_volume_record(store, name).await?;
            let extents = store
                .list::<ExtentRecord>(&keys::extents(&vol.value.uuid))
                .await
                .map_err(store_status)?;
            let mut freed: BTreeMap<String, u64> = BTreeMap::new();
            for e in &extents {
                let members: BTreeSet<&String> = e.value.members().collect();
                for r in members {
                    *freed.entry(r.clone()).or_default() += vol.value.extent_size;
                }
            }
            let uuid = &vol.value.uuid;
            let mut txn = Txn::new(format!("delete volume '{name}'"));
            txn.expect_rev(&keys::volume(name), vol.mod_rev);
            txn.delete(&keys::volume(name));
            txn.delete(&keys::pool_volume(&vol.value.pool, name));
            txn.delete_prefix(&keys::extents(uuid));
            // Index keys: one prefix per node and the repair prefix; the
            // id keys (one per extent, maybe too many for one
            // transaction) are left to the sweeper, which the tombstone
            // tells where to look.
            txn.delete_prefix(&keys::repairs(uuid));
            for id in freed.keys() {
                txn.delete_prefix(&keys::node_volume_extents(id, uuid));
            }
            let ids = extents.iter().map(|e| e.value.id);
            if let (Some(first_id), Some(last_id)) = (ids.clone().min(), ids.max()) {
                txn.put_json(
                    &keys::deleted_volume(uuid),
                    &DeletedVolume {
                        volume: name.to_string(),
                        volume_uuid: uuid.clone(),
                        first_id,
                        last_id,
                    },
                );
            }
            for (id, bytes) in &freed {
                // A node record that is gone has nothing to give back to.
                if let Some(mut n) = store
                    .get::<NodeRecord>(&keys::node(id))
                    .await
                    .map_err(store_status)?
                {
                    n.value.allocated = n.value.allocated.saturating_sub(*bytes);
                    txn.expect_rev(&keys::node(id), n.mod_rev);
                    txn.put_json(&keys::node(id), &n.value);
                }
            }
            match store.commit(txn).await.map_err(store_status)? {
                Commit::Applied(_) => {
                    log::info!("deleted volume '{name}' ({} extents freed)", extents.len());
                    return Ok(());
                }
                Commit::Conflict => continue,
            }
        }
        Err(conflict_status(&format!("delete volume '{name}'")))
    }

    /// Rolls back thick creates that an earlier leadership term left
    /// unfinished (the client was told it failed, or never heard back).
    pub async fn sweep_unfinished_creates(&self, store: &Store) -> Result<(), Status> {
        let term = store.fence().map(|f| f.rev);
        let _w = self.inner.write_lock.lock().await;
        let volumes = store
            .list::<VolumeRecord>(keys::VOLUMES)
            .await
            .map_err(store_status)?;
        for v in volumes {
            if v.value.state == VolumeState::Creating && v.value.creating_term != term {
                log::warn!(
                    "volume '{}' was left half-created by an earlier leader; deleting it",
                    v.value.name
                );
                self.delete_volume_inner(store, &v.value.name).await?;
            }
        }
        Ok(())
    }

    /// Places and writes the extents `indices` of a thick volume.
    async fn allocate_thick(
        &self,
        store: &Store,
        volume: &mut Versioned<VolumeRecord>,
        new: Option<NewVolume<'_>>,
        indices: Vec<u64>,
        finish: impl Fn(&mut VolumeRecord),
    ) -> Result<Vec<ExtentRecord>, BatchStatus> {
        let (mut nodes, alive) = self.nodes(store).await.map_err(BatchStatus::Status)?;
        let mut placer = Self::placer(&nodes, &alive);
        let v = &volume.value;
        let mut planned = Vec::with_capacity(indices.len());
        for (done, &index) in indices.iter().enumerate() {
            let replicas = placer
                .place(v.replica_count as usize, v.failure_domain, v.extent_size)
                .map_err(|e| {
                    let what = format!(
                        "thick volume '{}' of {} bytes does not fit pool '{}' ({} of {} extents of {} bytes × {} replicas placed)",
                        v.name,
                        v.size,
                        v.pool,
                        done,
                        indices.len(),
                        v.extent_size,
                        v.replica_count
                    );
                    BatchStatus::Status(match e {
                        // Not enough nodes at all is the same for the first
                        // extent as for a later one.
                        PlacementError::NotEnoughNodes { .. } => placement_status(
                            &format!("thick volume '{}' in pool '{}'", v.name, v.pool),
                            e,
                        ),
                        PlacementError::NoSpace { .. } => {
                            Status::resource_exhausted(format!("{what}: {e}"))
                        }
                    })
                })?;
            planned.push(Planned { index, replicas });
        }
        self.write_extents(store, volume, new, &planned, &mut nodes, finish)
            .await
            .map_err(|e| match e {
                BatchError::Conflict { applied } => BatchStatus::Conflict { applied },
                BatchError::Store(e) => BatchStatus::Status(store_status(e)),
            })
    }
}

enum BatchStatus {
    Conflict { applied: usize },
    Status(Status),
}

#[cold]
fn unreachable_node(id: &str) -> NodeRecord {
    log::error!("placement chose node '{id}' that is not listed");
    NodeRecord {
        id: id.to_string(),
        gateway_address: String::new(),
        replica_address: String::new(),
        zone: String::new(),
        capacity_total: 0,
        capacity_free: 0,
        allocated: 0,
        state: NodeState::Down,
        lease_id: 0,
        registered_unix_ms: 0,
        drain: false,
        gateway_index: 0,
    }
}

pub(crate) fn invalid(msg: String) -> Status {
    Status::invalid_argument(msg)
}

#[tonic::async_trait]
impl Meta for MetaService {
    async fn create_pool(
        &self,
        request: Request<proto::CreatePoolRequest>,
    ) -> Result<Response<proto::Pool>, Status> {
        let req = request.into_inner();
        validate::name("pool name", &req.name).map_err(invalid)?;
        validate::replica_count(&req.name, req.replica_count).map_err(invalid)?;
        let extent_size = validate::extent_size(&req.name, req.extent_size).map_err(invalid)?;
        let provisioning = validate::provisioning(&req.name, req.provisioning).map_err(invalid)?;
        let domain = validate::failure_domain(&req.name, req.failure_domain).map_err(invalid)?;
        if req.min_replicas > req.replica_count {
            return Err(invalid(format!(
                "pool '{}': min_replicas {} is more than its {} replicas",
                req.name, req.min_replicas, req.replica_count
            )));
        }
        let store = self.leader().await?;
        let _w = self.inner.write_lock.lock().await;
        let rec = PoolRecord {
            name: req.name.clone(),
            replica_count: req.replica_count,
            provisioning: provisioning.into(),
            extent_size,
            failure_domain: domain.into(),
            created_unix_ms: now_unix_ms(),
            min_replicas: if req.min_replicas == 0 {
                default_min_replicas(req.replica_count)
            } else {
                req.min_replicas
            },
        };
        let key = keys::pool(&req.name);
        let mut txn = Txn::new(format!("create pool '{}'", req.name));
        txn.expect_absent(&key).put_json(&key, &rec);
        match store.commit(txn).await.map_err(store_status)? {
            Commit::Applied(_) => {
                log::info!(
                    "created pool '{}' (replicas {}, {:?}, extent size {}, failure domain {:?})",
                    rec.name,
                    rec.replica_count,
                    rec.provisioning,
                    rec.extent_size,
                    rec.failure_domain
                );
                Ok(Response::new((&rec).into()))
            }
            Commit::Conflict => Err(Status::already_exists(format!(
                "pool '{}' already exists",
                req.name
            ))),
        }
    }

    async fn list_pools(
        &self,
        _request: Request<proto::ListPoolsRequest>,
    ) -> Result<Response<proto::ListPoolsResponse>, Status> {
        let store = self.leader().await?;
        let pools = store
            .list::<PoolRecord>(keys::POOLS)
            .await
            .map_err(store_status)?;
        Ok(Response::new(proto::ListPoolsResponse {
            pools: pools.iter().map(|p| (&p.value).into()).collect(),
        }))
    }

    async fn get_pool(
        &self,
        request: Request<proto::GetPoolRequest>,
    ) -> Result<Response<proto::Pool>, Status> {
        let req = request.into_inner();
        let store = self.leader().await?;
        let pool = self.get_pool_record(&store, &req.name).await?;
        Ok(Response::new((&pool.value).into()))
    }

    async fn delete_pool(
        &self,
        request: Request<proto::DeletePoolRequest>,
    ) -> Result<Response<proto::DeletePoolResponse>, Status> {
        let req = request.into_inner();
        let store = self.leader().await?;
        let _w = self.inner.write_lock.lock().await;
        for _ in 0..MAX_TXN_RETRIES {
            let pool = self.get_pool_record(&store, &req.name).await?;
            let members = store
                .list_names(&keys::pool_volumes(&req.name))
                .await
                .map_err(store_status)?;
            if !members.is_empty() {
                let shown: Vec<_> = members.iter().take(5).map(|m| format!("'{m}'")).collect();
                return Err(Status::failed_precondition(format!(
                    "pool '{}' still holds {} volume(s) ({}{}); delete them first",
                    req.name,
                    members.len(),
                    shown.join(", "),
                    if members.len() > 5 { ", …" } else { "" }
                )));
            }
            let key = keys::pool(&req.name);
            let mut txn = Txn::new(format!("delete pool '{}'", req.name));
            txn.expect_rev(&key, pool.mod_rev)
                .expect_empty_prefix(&keys::pool_volumes(&req.name))
                .delete(&key);
            if let Commit::Applied(_) = store.commit(txn).await.map_err(store_status)? {
                log::info!("deleted pool '{}'", req.name);
                return Ok(Response::new(proto::DeletePoolResponse {}));
            }
        }
        Err(conflict_status(&format!("delete pool '{}'", req.name)))
    }

    async fn create_volume(
        &self,
        request: Request<proto::CreateVolumeRequest>,
    ) -> Result<Response<proto::Volume>, Status> {
        let req = request.into_inner();
        validate::name("volume name", &req.name).map_err(invalid)?;
        validate::name("pool name", &req.pool).map_err(invalid)?;
        let block_size = validate::block_size(&req.name, req.block_size).map_err(invalid)?;
        validate::volume_size(&req.name, req.size, block_size).map_err(invalid)?;
        let store = self.leader().await?;
        let _w = self.inner.write_lock.lock().await;
        let term = store.fence().map(|f| f.rev);
        for _ in 0..MAX_TXN_RETRIES {
            let pool = self.get_pool_record(&store, &req.pool).await?;
            let vkey = keys::volume(&req.name);
            if store.get_raw(&vkey).await.map_err(store_status)?.is_some() {
                return Err(Status::already_exists(format!(
                    "volume '{}' already exists",
                    req.name
                )));
            }
            let p = &pool.value;
            let mut rec = VolumeRecord {
                name: req.name.clone(),
                uuid: uuid::Uuid::new_v4().to_string(),
                pool: p.name.clone(),
                size: req.size,
                block_size,
                generation: 1,
                created_unix_ms: now_unix_ms(),
                extent_size: p.extent_size,
                replica_count: p.replica_count,
                provisioning: p.provisioning,
                failure_domain: p.failure_domain,
                state: VolumeState::Ready,
                creating_term: None,
                min_replicas: p.resolved_min_replicas(),
            };
            if p.provisioning == Provisioning::Thin {
                let mut txn = Txn::new(format!("create volume '{}'", req.name));
                txn.expect_absent(&vkey)
                    .expect_rev(&keys::pool(&p.name), pool.mod_rev)
                    .put_json(&vkey, &rec)
                    .put_raw(
                        &keys::pool_volume(&p.name, &rec.name),
                        rec.uuid.clone().into_bytes(),
                        None,
                    );
                match store.commit(txn).await.map_err(store_status)? {
                    Commit::Applied(_) => {
                        log::info!(
                            "created thin volume '{}' ({} bytes) in pool '{}'",
                            rec.name,
                            rec.size,
                            rec.pool
                        );
                        return Ok(Response::new((&rec).into()));
                    }
                    Commit::Conflict => continue,
                }
            }
            // Thick: until every extent is written the volume says
            // "creating" (only visible when that takes several
            // transactions).
            rec.state = VolumeState::Creating;
            rec.creating_term = term;
            let count = validate::extent_count(rec.size, rec.extent_size);
            let mut vol = Versioned {
                value: rec,
                mod_rev: 0,
            };
            let result = self
                .allocate_thick(
                    &store,
                    &mut vol,
                    Some(NewVolume { pool: &pool }),
                    (0..count).collect(),
                    |v| {
                        v.state = VolumeState::Ready;
                        v.creating_term = None;
                    },
                )
                .await;
            match result {
                Ok(extents) => {
                    log::info!(
                        "created thick volume '{}' ({} bytes, {} extents) in pool '{}'",
                        vol.value.name,
                        vol.value.size,
                        extents.len(),
                        vol.value.pool
                    );
                    return Ok(Response::new((&vol.value).into()));
                }
                Err(BatchStatus::Status(s)) => return Err(s),
                Err(BatchStatus::Conflict { applied: 0 }) => continue,
                Err(BatchStatus::Conflict { applied }) => {
                    log::warn!(
                        "create volume '{}': conflict after {applied} extents; rolling back",
                        req.name
                    );
                    self.delete_volume_inner(&store, &req.name).await?;
                }
            }
        }
        Err(conflict_status(&format!("create volume '{}'", req.name)))
    }

    async fn delete_volume(
        &self,
        request: Request<proto::DeleteVolumeRequest>,
    ) -> Result<Response<proto::DeleteVolumeResponse>, Status> {
        let req = request.into_inner();
        let store = self.leader().await?;
        let _w = self.inner.write_lock.lock().await;
        self.delete_volume_inner(&store, &req.name).await?;
        Ok(Response::new(proto::DeleteVolumeResponse {}))
    }

    async fn resize_volume(
        &self,
        request: Request<proto::ResizeVolumeRequest>,
    ) -> Result<Response<proto::Volume>, Status> {
        let req = request.into_inner();
        let store = self.leader().await?;
        let _w = self.inner.write_lock.lock().await;
        for _ in 0..MAX_TXN_RETRIES {
            let mut vol = self.get_volume_record(&store, &req.name).await?;
            let v = &vol.value;
            validate::volume_size(&v.name, req.new_size, v.block_size).map_err(invalid)?;
            if req.new_size < v.size {
                return Err(invalid(format!(
                    "volume '{}': cannot shrink from {} to {} bytes (volumes only grow)",
                    v.name, v.size, req.new_size
                )));
            }
            if v.state != VolumeState::Ready {
                return Err(Status::failed_precondition(format!(
                    "volume '{}' is still being created",
                    v.name
                )));
            }
            if req.new_size == v.size {
                return Ok(Response::new((&vol.value).into()));
            }
            let new_size = req.new_size;
            let (old, new) = (v.size, new_size);
            if v.provisioning == Provisioning::Thin {
                let mut rec = v.clone();
                rec.size = new_size;
                rec.generation += 1;
                let vkey = keys::volume(&rec.name);
                let mut txn = Txn::new(format!("resize volume '{}'", rec.name));
                txn.expect_rev(&vkey, vol.mod_rev).put_json(&vkey, &rec);
                match store.commit(txn).await.map_err(store_status)? {
                    Commit::Applied(_) => {
                        log::info!("resized volume '{}' from {old} to {new} bytes", rec.name);
                        return Ok(Response::new((&rec).into()));
                    }
                    Commit::Conflict => continue,
                }
            }
            // Thick: place the new extents, then grow the size in the last
            // transaction. Extents past the size that an interrupted
            // resize left behind are reused, not placed again.
            let existing: HashSet<u64> = store
                .list::<ExtentRecord>(&keys::extents(&v.uuid))
                .await
                .map_err(store_status)?
                .into_iter()
                .map(|e| e.value.index)
                .collect();
            let from = validate::extent_count(v.size, v.extent_size);
            let to = validate::extent_count(new_size, v.extent_size);
            let missing: Vec<u64> = (from..to).filter(|i| !existing.contains(i)).collect();
            let result = if missing.is_empty() {
                // Still one transaction: only the size changes.
                let mut rec = v.clone();
                rec.size = new_size;
                rec.generation += 1;
                let vkey = keys::volume(&rec.name);
                let mut txn = Txn::new(format!("resize volume '{}'", rec.name));
                txn.expect_rev(&vkey, vol.mod_rev).put_json(&vkey, &rec);
                match store.commit(txn).await.map_err(store_status)? {
                    Commit::Applied(rev) => {
                        vol = Versioned {
                            value: rec,
                            mod_rev: rev,
                        };
                        Ok(Vec::new())
                    }
                    Commit::Conflict => Err(BatchStatus::Conflict { applied: 0 }),
                }
            } else {
                self.allocate_thick(&store, &mut vol, None, missing, move |r| r.size = new_size)
                    .await
            };
            match result {
                Ok(extents) => {
                    log::info!(
                        "resized thick volume '{}' from {old} to {new} bytes ({} new extents)",
                        vol.value.name,
                        extents.len()
                    );
                    return Ok(Response::new((&vol.value).into()));
                }
                Err(BatchStatus::Status(s)) => return Err(s),
                Err(BatchStatus::Conflict { .. }) => continue,
            }
        }
        Err(conflict_status(&format!("resize volume '{}'", req.name)))
    }

    async fn list_volumes(
        &self,
        request: Request<proto::ListVolumesRequest>,
    ) -> Result<Response<proto::ListVolumesResponse>, Status> {
        let req = request.into_inner();
        let store = self.leader().await?;
        if !req.pool.is_empty() {
            self.get_pool_record(&store, &req.pool).await?;
        }
        let volumes: Vec<VolumeRecord> = store
            .list::<VolumeRecord>(keys::VOLUMES)
            .await
            .map_err(store_status)?
            .into_iter()
            .map(|v| v.value)
            .filter(|v| req.pool.is_empty() || v.pool == req.pool)
            .collect();
        let volumes = self.volumes_with_health(&store, volumes).await?;
        Ok(Response::new(proto::ListVolumesResponse { volumes }))
    }

    async fn get_volume(
        &self,
        request: Request<proto::GetVolumeRequest>,
    ) -> Result<Response<proto::GetVolumeResponse>, Status> {
        let req = request.into_inner();
        let store = self.leader().await?;
        // Read the volume and its extents until both come from the same
        // generation (an allocation in between bumps it).
        for _ in 0..MAX_TXN_RETRIES {
            let vol = self.get_volume_record(&store, &req.name).await?;
            let extents = store
                .list::<ExtentRecord>(&keys::extents(&vol.value.uuid))
                .await
                .map_err(store_status)?;
            let again = self.get_volume_record(&store, &req.name).await?;
            if again.mod_rev != vol.mod_rev {
                continue;
            }
            let (nodes, alive) = self.nodes(&store).await?;
            let records: Vec<ExtentRecord> = extents.into_iter().map(|e| e.value).collect();
            let (health, extent_status) = self.volume_health(&vol.value, &records, &nodes, &alive);
            let mut volume: proto::Volume = (&vol.value).into();
            volume.health = Some(health);
            return Ok(Response::new(proto::GetVolumeResponse {
                volume: Some(volume),
                extents: records.iter().map(|e| e.into()).collect(),
                extent_status,
            }));
        }
        Err(conflict_status(&format!("get volume '{}'", req.name)))
    }

    async fn allocate_extent(
        &self,
        request: Request<proto::AllocateExtentRequest>,
    ) -> Result<Response<proto::AllocateExtentResponse>, Status> {
        let req = request.into_inner();
        let store = self.leader().await?;
        let ekey_of = |uuid: &str| keys::extent(uuid, req.index);
        let check = |vol: &Versioned<VolumeRecord>| -> Result<(), Status> {
            let v = &vol.value;
            let count = validate::extent_count(v.size, v.extent_size);
            if req.index >= count {
                return Err(Status::out_of_range(format!(
                    "volume '{}': extent index {} is past its end ({} extents of {} bytes)",
                    v.name, req.index, count, v.extent_size
                )));
            }
            if v.state != VolumeState::Ready {
                return Err(Status::failed_precondition(format!(
                    "volume '{}' is still being created",
                    v.name
                )));
            }
            Ok(())
        };
        // The common case, an extent that exists, needs no lock.
        let vol = self.get_volume_record(&store, &req.volume).await?;
        check(&vol)?;
        if let Some(e) = store
            .get::<ExtentRecord>(&ekey_of(&vol.value.uuid))
            .await
            .map_err(store_status)?
        {
            return Ok(Response::new(proto::AllocateExtentResponse {
                extent: Some((&e.value).into()),
                volume_generation: vol.value.generation,
                created: false,
            }));
        }
        let _w = self.inner.write_lock.lock().await;
        for _ in 0..MAX_TXN_RETRIES {
            let mut vol = self.get_volume_record(&store, &req.volume).await?;
            check(&vol)?;
            if let Some(e) = store
                .get::<ExtentRecord>(&ekey_of(&vol.value.uuid))
                .await
                .map_err(store_status)?
            {
                return Ok(Response::new(proto::AllocateExtentResponse {
                    extent: Some((&e.value).into()),
                    volume_generation: vol.value.generation,
                    created: false,
                }));
            }
            let (mut nodes, alive) = self.nodes(&store).await?;
            let v = &vol.value;
            let replicas = Self::placer(&nodes, &alive)
                .place(v.replica_count as usize, v.failure_domain, v.extent_size)
                .map_err(|e| {
                    placement_status(
                        &format!(
                            "extent {} of volume '{}' (pool '{}')",
                            req.index, v.name, v.pool
                        ),
                        e,
                    )
                })?;
            let planned = [Planned {
                index: req.index,
                replicas,
            }];
            match self
                .write_extents(&store, &mut vol, None, &planned, &mut nodes, |_| {})
                .await
            {
                Ok(mut written) => {
                    let e = written.pop().ok_or_else(|| {
                        Status::internal(format!(
                            "extent {} of volume '{}' was not written",
                            req.index, vol.value.name
                        ))
                    })?;
                    log::debug!(
                        "allocated extent {} (id {}) of volume '{}' on {:?}",
                        e.index,
                        e.id,
                        vol.value.name,
                        e.replicas
                    );
                    return Ok(Response::new(proto::AllocateExtentResponse {
                        extent: Some((&e).into()),
                        volume_generation: vol.value.generation,
                        created: true,
                    }));
                }
                Err(BatchError::Conflict { .. }) => continue,
                Err(BatchError::Store(e)) => return Err(store_status(e)),
            }
        }
        Err(conflict_status(&format!(
            "allocate extent {} of volume '{}'",
            req.index, req.volume
        )))
    }

    async fn register_node(
        &self,
        request: Request<proto::RegisterNodeRequest>,
    ) -> Result<Response<proto::RegisterNodeResponse>, Status> {
        let req = request.into_inner();
        validate::name("node id", &req.id).map_err(invalid)?;
        self.clear_suspect(&req.id);
        validate::zone(&req.zone).map_err(|e| invalid(format!("node '{}': {e}", req.id)))?;
        let addrs = req.addresses.clone().unwrap_or_default();
        validate::address("gateway address", &addrs.gateway)
            .and_then(|_| validate::address("replica address", &addrs.replica))
            .map_err(|e| invalid(format!("node '{}': {e}", req.id)))?;
        if req.capacity_free > req.capacity_total {
            return Err(invalid(format!(
                "node '{}': free capacity {} exceeds total capacity {}",
                req.id, req.capacity_free, req.capacity_total
            )));
        }
        let store = self.leader().await?;
        let ttl = self.inner.config.node_ttl_secs;
        let lease = self
            .inner
            .client
            .lease_client()
            .grant(ttl, None)
            .await
            .map_err(|e| {
                Status::unavailable(format!("node '{}': granting a lease failed: {e}", req.id))
            })?;
        let lease_id = lease.id();
        let _w = self.inner.write_lock.lock().await;
        for _ in 0..MAX_TXN_RETRIES {
            let key = keys::node(&req.id);
            let old = store.get::<NodeRecord>(&key).await.map_err(store_status)?;
            let gateway_index = match old.as_ref().map(|o| o.value.gateway_index) {
                Some(i) if i > 0 => i,
                // The smallest index no other node holds. Registrations
                // are serialised by the write lock, and a node's record
                // is only removed by `RemoveNode`.
                _ => {
                    let taken: HashSet<u32> = store
                        .list::<NodeRecord>(keys::NODES)
                        .await
                        .map_err(store_status)?
                        .into_iter()
                        .filter(|n| n.value.id != req.id)
                        .map(|n| n.value.gateway_index)
                        .collect();
                    (1..).find(|i| !taken.contains(i)).unwrap_or(1)
                }
            };
            let rec = NodeRecord {
                id: req.id.clone(),
                gateway_address: addrs.gateway.clone(),
                replica_address: addrs.replica.clone(),
                zone: req.zone.clone(),
                capacity_total: req.capacity_total,
                capacity_free: req.capacity_free,
                allocated: old.as_ref().map_or(0, |o| o.value.allocated),
                // A draining node stays draining across restarts (and
                // across being marked down in between).
                state: match old.as_ref() {
                    Some(o) if o.value.drain || o.value.state == NodeState::Draining => {
                        NodeState::Draining
                    }
                    _ => NodeState::Up,
                },
                lease_id,
                registered_unix_ms: now_unix_ms(),
                drain: old
                    .as_ref()
                    .is_some_and(|o| o.value.drain || o.value.state == NodeState::Draining),
                gateway_index,
            };
            let mut txn = Txn::new(format!("register node '{}'", req.id));
            txn.expect(&key, old.as_ref().map(|o| o.mod_rev))
                .put_json(&key, &rec)
                .put_raw(&keys::node_alive(&req.id), Vec::new(), Some(lease_id));
            if let Commit::Applied(_) = store.commit(txn).await.map_err(store_status)? {
                log::info!(
                    "registered node '{}' (zone '{}', {} of {} bytes free, lease {lease_id:x}, was {})",
                    rec.id,
                    rec.zone,
                    rec.capacity_free,
                    rec.capacity_total,
                    old.as_ref()
                        .map_or("new".to_string(), |o| format!("{:?}", o.value.state).to_lowercase())
                );
                if let Some(o) =
                    old.filter(|o| o.value.lease_id != lease_id && o.value.lease_id != 0)
                {
                    // Its liveness key now hangs on the new lease, so the
                    // old one holds nothing: revoking it only tidies etcd.
                    let _ = self
                        .inner
                        .client
                        .lease_client()
                        .revoke(o.value.lease_id)
                        .await;
                }
                return Ok(Response::new(proto::RegisterNodeResponse {
                    lease_id,
                    ttl_secs: lease.ttl(),
                    gateway_index,
                }));
            }
        }
        let _ = self.inner.client.lease_client().revoke(lease_id).await;
        Err(conflict_status(&format!("register node '{}'", req.id)))
    }

    async fn keep_alive(
        &self,
        request: Request<proto::KeepAliveRequest>,
    ) -> Result<Response<proto::KeepAliveResponse>, Status> {
        let req = request.into_inner();
        let store = self.leader().await?;
        let node = store
            .get::<NodeRecord>(&keys::node(&req.node_id))
            .await
            .map_err(store_status)?
            .ok_or_else(|| {
                Status::not_found(format!("node '{}' is not registered", req.node_id))
            })?;
        if node.value.lease_id != req.lease_id {
            return Err(Status::failed_precondition(format!(
                "node '{}': lease {:x} is not its current lease ({:x}); register again",
                req.node_id, req.lease_id, node.value.lease_id
            )));
        }
        match self
            .inner
            .client
            .lease_client()
            .keep_alive(req.lease_id)
            .await
        {
            Ok((_, _)) => Ok(Response::new(proto::KeepAliveResponse {
                ttl_secs: self.inner.config.node_ttl_secs,
            })),
            Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("not found") => {
                Err(Status::not_found(format!(
                    "node '{}': lease {:x} has expired; register again",
                    req.node_id, req.lease_id
                )))
            }
            Err(e) => Err(Status::unavailable(format!(
                "node '{}': renewing lease {:x} failed: {e}",
                req.node_id, req.lease_id
            ))),
        }
    }

    async fn report_capacity(
        &self,
        request: Request<proto::ReportCapacityRequest>,
    ) -> Result<Response<proto::ReportCapacityResponse>, Status> {
        let req = request.into_inner();
        if req.capacity_free > req.capacity_total {
            return Err(invalid(format!(
                "node '{}': free capacity {} exceeds total capacity {}",
                req.node_id, req.capacity_free, req.capacity_total
            )));
        }
        let store = self.leader().await?;
        let _w = self.inner.write_lock.lock().await;
        for _ in 0..MAX_TXN_RETRIES {
            let key = keys::node(&req.node_id);
            let mut node = store
                .get::<NodeRecord>(&key)
                .await
                .map_err(store_status)?
                .ok_or_else(|| {
                    Status::not_found(format!("node '{}' is not registered", req.node_id))
                })?;
            node.value.capacity_total = req.capacity_total;
            node.value.capacity_free = req.capacity_free;
            let mut txn = Txn::new(format!("capacity of node '{}'", req.node_id));
            txn.expect_rev(&key, node.mod_rev)
                .put_json(&key, &node.value);
            if let Commit::Applied(_) = store.commit(txn).await.map_err(store_status)? {
                return Ok(Response::new(proto::ReportCapacityResponse {}));
            }
        }
        Err(conflict_status(&format!(
            "capacity of node '{}'",
            req.node_id
        )))
    }

    async fn list_nodes(
        &self,
        _request: Request<proto::ListNodesRequest>,
    ) -> Result<Response<proto::ListNodesResponse>, Status> {
        let store = self.leader().await?;
        let (nodes, alive) = self.nodes(&store).await?;
        let nodes = self.nodes_with_counts(&store, &nodes, &alive).await?;
        Ok(Response::new(proto::ListNodesResponse { nodes }))
    }

    async fn get_leader(
        &self,
        _request: Request<proto::GetLeaderRequest>,
    ) -> Result<Response<proto::GetLeaderResponse>, Status> {
        let is_leader = self.inner.leadership.borrow().is_some();
        let (leader_name, leader_address) = if is_leader {
            (
                self.inner.config.name.clone(),
                self.inner.config.address.clone(),
            )
        } else {
            match election::current_leader(&self.inner.client).await {
                Ok(Some(l)) => (l.name, l.address),
                Ok(None) => (String::new(), String::new()),
                Err(e) => return Err(store_status(e)),
            }
        };
        Ok(Response::new(proto::GetLeaderResponse {
            leader_name,
            leader_address,
            is_leader,
            self_name: self.inner.config.name.clone(),
        }))
    }

    async fn report_replica_failure(
        &self,
        request: Request<proto::ReportReplicaFailureRequest>,
    ) -> Result<Response<proto::Extent>, Status> {
        self.report_replica_failure_impl(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn complete_resync(
        &self,
        request: Request<proto::CompleteResyncRequest>,
    ) -> Result<Response<proto::Extent>, Status> {
        self.complete_resync_impl(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn report_resync_progress(
        &self,
        request: Request<proto::ReportResyncProgressRequest>,
    ) -> Result<Response<proto::ReportResyncProgressResponse>, Status> {
        self.report_resync_progress_impl(request.into_inner())
            .await
            .map(|()| Response::new(proto::ReportResyncProgressResponse {}))
    }

    async fn list_node_extents(
        &self,
        request: Request<proto::ListNodeExtentsRequest>,
    ) -> Result<Response<proto::ListNodeExtentsResponse>, Status> {
        self.list_node_extents_impl(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_extent(
        &self,
        request: Request<proto::GetExtentRequest>,
    ) -> Result<Response<proto::Extent>, Status> {
        self.get_extent_impl(request.into_inner().extent_id)
            .await
            .map(Response::new)
    }

    async fn drain_node(
        &self,
        request: Request<proto::DrainNodeRequest>,
    ) -> Result<Response<proto::Node>, Status> {
        self.drain_node_impl(&request.into_inner().node)
            .await
            .map(Response::new)
    }

    async fn remove_node(
        &self,
        request: Request<proto::RemoveNodeRequest>,
    ) -> Result<Response<proto::RemoveNodeResponse>, Status> {
        self.remove_node_impl(&request.into_inner().node)
            .await
            .map(|()| Response::new(proto::RemoveNodeResponse {}))
    }
}

/// Node ids whose liveness key has been missing, and since when (kept in
/// memory only: a new leader starts the grace period afresh, which only
/// delays marking a node down).
pub type MissingSince = HashMap<String, std::time::Instant>;

impl MetaService {
    /// One pass of the failure detector: a node that is not down and whose
    /// lease key has been gone for `grace` is marked down. Returns the
    /// ids marked down in this pass.
    pub async fn mark_expired_nodes(
        &self,
        store: &Store,
        missing: &mut MissingSince,
        grace: std::time::Duration,
    ) -> Result<Vec<String>, Status> {
        let (nodes, alive) = self.nodes(store).await?;
        let now = std::time::Instant::now();
        missing.retain(|id, _| nodes.contains_key(id) && !alive.contains(id));
        let mut marked = Vec::new();
        for n in nodes.values() {
            if n.value.state == NodeState::Down || alive.contains(&n.value.id) {
                continue;
            }
            let since = *missing.entry(n.value.id.clone()).or_insert(now);
            if now.duration_since(since) < grace {
                continue;
            }
            let _w = self.inner.write_lock.lock().await;
            let key = keys::node(&n.value.id);
            let mut rec = n.value.clone();
            rec.state = NodeState::Down;
            let mut txn = Txn::new(format!("mark node '{}' down", rec.id));
            // The liveness key must still be gone: a node that registered
            // again in between stays up.
            txn.expect_rev(&key, n.mod_rev)
                .expect_absent(&keys::node_alive(&rec.id))
                .put_json(&key, &rec);
            match store.commit(txn).await.map_err(store_status)? {
                Commit::Applied(_) => {
                    log::warn!(
                        "node '{}' lost its lease {:x} {:.1}s ago; marked down",
                        rec.id,
                        rec.lease_id,
                        now.duration_since(since).as_secs_f64()
                    );
                    missing.remove(&rec.id);
                    marked.push(rec.id);
                }
                // Re-examined on the next pass.
                Commit::Conflict => {}
            }
        }
        Ok(marked)
    }
}
