//! Cluster-wide JSON-RPC methods: pools, volumes and nodes. Any node
//! serves them by forwarding to the meta leader; the answer (or error) is
//! the leader's. Failures use SPDK's convention of negative errno values.

use super::MetaLink;
use crate::rpc::{parse_params, Registry, RpcError};
use ferrite_meta::client::{Code, Status};
use ferrite_meta::proto;
use serde_json::{json, Value};
use std::sync::Arc;

/// Things a node does after a cluster change it forwarded.
pub trait ClusterEvents: Send + Sync {
    /// A volume was deleted: drop caches, exports and local extents.
    fn volume_deleted(&self, name: &str, extents: &[proto::Extent]);
    /// A volume was resized: refresh caches so front ends see the new size.
    fn volume_resized(&self, name: &str);
}

/// A meta status as a JSON-RPC error, SPDK style.
pub fn rpc_error(s: &Status) -> RpcError {
    let errno = match s.code() {
        Code::AlreadyExists => 17,                        // EEXIST
        Code::NotFound => 2,                              // ENOENT
        Code::InvalidArgument | Code::OutOfRange => 22,   // EINVAL
        Code::ResourceExhausted => 28,                    // ENOSPC
        Code::FailedPrecondition | Code::Aborted => 16,   // EBUSY
        Code::Unavailable | Code::DeadlineExceeded => 11, // EAGAIN
        _ => 5,                                           // EIO
    };
    RpcError::errno(errno, s.message().to_string())
}

fn pool_json(p: &proto::Pool) -> Value {
    json!({
        "name": p.name,
        "replica_count": p.replica_count,
        "thin": p.provisioning != proto::Provisioning::Thick as i32,
        "extent_size": p.extent_size,
        "failure_domain": if p.failure_domain == proto::FailureDomain::Zone as i32 { "zone" } else { "node" },
        "created_unix_ms": p.created_unix_ms,
        "min_replicas": p.min_replicas,
    })
}

fn volume_json(v: &proto::Volume) -> Value {
    json!({
        "name": v.name,
        "uuid": v.uuid,
        "pool": v.pool,
        "size": v.size,
        "block_size": v.block_size,
        "num_blocks": if v.block_size > 0 { v.size / v.block_size as u64 } else { 0 },
        "generation": v.generation,
        "extent_size": v.extent_size,
        "replica_count": v.replica_count,
        "thin": v.provisioning != proto::Provisioning::Thick as i32,
        "state": if v.state == proto::VolumeState::Creating as i32 { "creating" } else { "ready" },
        "created_unix_ms": v.created_unix_ms,
        "min_replicas": v.min_replicas,
        "health": v.health.as_ref().map(|h| json!({
            "state": health_name(h.state),
            "extents": h.extents, "healthy": h.healthy, "resyncing": h.resyncing,
            "degraded": h.degraded, "unavailable": h.unavailable,
            "resync_bytes_done": h.resync_bytes_done, "resync_bytes_total": h.resync_bytes_total,
        })),
    })
}

fn health_name(state: i32) -> &'static str {
    match proto::ExtentHealth::try_from(state).unwrap_or(proto::ExtentHealth::Unspecified) {
        proto::ExtentHealth::Healthy => "healthy",
        proto::ExtentHealth::Resyncing => "resyncing",
        proto::ExtentHealth::Degraded => "degraded",
        proto::ExtentHealth::Unavailable => "unavailable",
        proto::ExtentHealth::Unspecified => "unknown",
    }
}

fn extent_json(e: &proto::Extent, st: Option<&proto::ExtentStatus>) -> Value {
    let mut v = json!({"id": e.id, "index": e.index, "replicas": e.replicas, "learners": e.learners,
                       "primary": e.replicas.first(), "generation": e.generation});
    if let Some(st) = st {
        v["health"] = json!(health_name(st.state));
        v["live_replicas"] = json!(st.live_replicas);
        v["resync"] = Value::Array(st.resync.iter().map(|r| json!({"node": r.node, "bytes_done": r.bytes_done, "bytes_total": r.bytes_total})).collect());
    }
    v
}

fn node_json(n: &proto::Node) -> Value {
    let state = match proto::NodeState::try_from(n.state).unwrap_or(proto::NodeState::Unspecified) {
        proto::NodeState::Up => "up",
        proto::NodeState::Down => "down",
        proto::NodeState::Draining => "draining",
        proto::NodeState::Unspecified => "unknown",
    };
    let addr = n.addresses.clone().unwrap_or_default();
    json!({
        "id": n.id, "gateway": addr.gateway, "replica": addr.replica, "zone": n.zone,
        "capacity_total": n.capacity_total, "capacity_free": n.capacity_free, "allocated": n.allocated,
        "state": state, "alive": n.alive, "registered_unix_ms": n.registered_unix_ms,
        "replicas": n.replicas, "learners": n.learners,
        "resync_bytes_done": n.resync_bytes_done, "resync_bytes_total": n.resync_bytes_total,
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolCreate {
    name: String,
    #[serde(default)]
    replica_count: Option<u32>,
    #[serde(default)]
    thin: Option<bool>,
    #[serde(default)]
    extent_size: Option<u64>,
    #[serde(default)]
    failure_domain: Option<String>,
    #[serde(default)]
    min_replicas: Option<u32>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ByName {
    name: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ById {
    id: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeCreate {
    name: String,
    pool: String,
    size: u64,
    #[serde(default)]
    block_size: Option<u32>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeResize {
    name: String,
    size: u64,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeList {
    #[serde(default)]
    pool: Option<String>,
}

/// Registers the pool, volume and node methods.
pub fn register(registry: &Registry, link: Arc<MetaLink>, events: Arc<dyn ClusterEvents>) {
    let l = link.clone();
    registry.register("pool_create", move |p| {
        let p: PoolCreate = parse_params(p)?;
        let fd = match p.failure_domain.as_deref() {
            None | Some("node") => proto::FailureDomain::Node,
            Some("zone") => proto::FailureDomain::Zone,
            Some(o) => {
                return Err(RpcError::invalid_params(format!(
                    "failure_domain '{o}' is neither 'node' nor 'zone'"
                )))
            }
        };
        let req = proto::CreatePoolRequest {
            name: p.name,
            replica_count: p.replica_count.unwrap_or(1),
            provisioning: if p.thin.unwrap_or(true) {
                proto::Provisioning::Thin
            } else {
                proto::Provisioning::Thick
            } as i32,
            extent_size: p.extent_size.unwrap_or(0),
            failure_domain: fd as i32,
            min_replicas: p.min_replicas.unwrap_or(0),
        };
        let pool = l
            .call(move |c| async move { c.create_pool(req).await })
            .map_err(|s| rpc_error(&s))?;
        Ok(pool_json(&pool))
    });
    let l = link.clone();
    registry.register("pool_list", move |_| {
        let pools = l
            .call(|c| async move { c.list_pools().await })
            .map_err(|s| rpc_error(&s))?;
        Ok(Value::Array(pools.iter().map(pool_json).collect()))
    });
    let l = link.clone();
    registry.register("pool_delete", move |p| {
        let p: ByName = parse_params(p)?;
        l.call(move |c| async move { c.delete_pool(&p.name).await })
            .map_err(|s| rpc_error(&s))?;
        Ok(Value::Bool(true))
    });
    let l = link.clone();
    registry.register("volume_create", move |p| {
        let p: VolumeCreate = parse_params(p)?;
        let req = proto::CreateVolumeRequest {
            name: p.name,
            pool: p.pool,
            size: p.size,
            block_size: p.block_size.unwrap_or(0),
        };
        let v = l
            .call(move |c| async move { c.create_volume(req).await })
            .map_err(|s| rpc_error(&s))?;
        Ok(volume_json(&v))
    });
    let (l, ev) = (link.clone(), events.clone());
    registry.register("volume_delete", move |p| {
        let p: ByName = parse_params(p)?;
        let n = p.name.clone();
        let before = l
            .call(move |c| async move { c.get_volume(&n).await })
            .map_err(|s| rpc_error(&s))?;
        let n = p.name.clone();
        l.call(move |c| async move { c.delete_volume(&n).await })
            .map_err(|s| rpc_error(&s))?;
        ev.volume_deleted(&p.name, &before.extents);
        Ok(Value::Bool(true))
    });
    let (l, ev) = (link.clone(), events);
    registry.register("volume_resize", move |p| {
        let p: VolumeResize = parse_params(p)?;
        let n = p.name.clone();
        let v = l
            .call(move |c| async move { c.resize_volume(&n, p.size).await })
            .map_err(|s| rpc_error(&s))?;
        ev.volume_resized(&p.name);
        Ok(volume_json(&v))
    });
    let l = link.clone();
    registry.register("volume_list", move |p| {
        let p: VolumeList = parse_params(p)?;
        let vols = l
            .call(move |c| async move { c.list_volumes(p.pool.as_deref()).await })
            .map_err(|s| rpc_error(&s))?;
        Ok(Value::Array(vols.iter().map(volume_json).collect()))
    });
    let l = link.clone();
    registry.register("volume_get", move |p| {
        let p: ByName = parse_params(p)?;
        let r = l
            .call(move |c| async move { c.get_volume(&p.name).await })
            .map_err(|s| rpc_error(&s))?;
        let mut v = r.volume.as_ref().map(volume_json).unwrap_or(Value::Null);
        v["extents"] = Value::Array(
            r.extents
                .iter()
                .enumerate()
                .map(|(i, e)| extent_json(e, r.extent_status.get(i)))
                .collect(),
        );
        Ok(v)
    });
    let l = link.clone();
    registry.register("node_drain", move |p| {
        let p: ById = parse_params(p)?;
        let n = l
            .call(move |c| async move { c.drain_node(&p.id).await })
            .map_err(|s| rpc_error(&s))?;
        Ok(node_json(&n))
    });
    let l = link.clone();
    registry.register("node_remove", move |p| {
        let p: ById = parse_params(p)?;
        l.call(move |c| async move { c.remove_node(&p.id).await })
            .map_err(|s| rpc_error(&s))?;
        Ok(Value::Bool(true))
    });
    let l = link;
    registry.register("node_list", move |_| {
        let nodes = l
            .call(|c| async move { c.list_nodes().await })
            .map_err(|s| rpc_error(&s))?;
        Ok(Value::Array(nodes.iter().map(node_json).collect()))
    });
}
