//! JSON-RPC methods with SPDK's names and parameters (SPDK doc/jsonrpc.md,
//! "iSCSI Target"), so `spdk_rpc` and scripts written for SPDK drive
//! Ferrite's target. `bdev_name` in `luns` names a Ferrite volume.

use super::chap::Secret;
use super::target::{ChapPolicy, IscsiTarget, NodeSpec, Portal, TargetError};
use ferrite_engine::rpc::{parse_params, Registry, RpcError};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use std::sync::Arc;

fn err(e: TargetError) -> RpcError {
    RpcError::errno(e.errno(), e.to_string())
}

/// SPDK sends ports as strings; accept numbers too.
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum S {
        S(String),
        N(u64),
    }
    Ok(match S::deserialize(d)? {
        S::S(s) => s,
        S::N(n) => n.to_string(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortalParam {
    host: String,
    #[serde(deserialize_with = "string_or_number")]
    port: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreatePortalGroup {
    tag: u16,
    portals: Vec<PortalParam>,
    #[serde(default)]
    private: bool,
    /// SPDK: do not listen until iscsi_start_portal_group. Ferrite always
    /// listens at once; `wait: true` is refused rather than ignored.
    #[serde(default)]
    wait: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Tag16 {
    tag: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Tag32 {
    tag: u32,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ChapParams {
    #[serde(default)]
    disable_chap: bool,
    #[serde(default)]
    require_chap: bool,
    #[serde(default)]
    mutual_chap: bool,
    #[serde(default)]
    chap_group: u32,
}

impl ChapParams {
    fn policy(&self) -> ChapPolicy {
        ChapPolicy {
            disable: self.disable_chap,
            require: self.require_chap,
            mutual: self.mutual_chap,
            group: self.chap_group,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateInitiatorGroup {
    tag: u16,
    initiators: Vec<String>,
    netmasks: Vec<String>,
    // Ferrite extension: CHAP per initiator group.
    #[serde(default)]
    disable_chap: bool,
    #[serde(default)]
    require_chap: bool,
    #[serde(default)]
    mutual_chap: bool,
    #[serde(default)]
    chap_group: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateAuthGroup {
    tag: u32,
    #[serde(default)]
    secrets: Vec<Secret>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PgIgMap {
    pg_tag: u16,
    ig_tag: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LunParam {
    bdev_name: String,
    lun_id: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTargetNode {
    name: String,
    alias_name: String,
    pg_ig_maps: Vec<PgIgMap>,
    luns: Vec<LunParam>,
    queue_depth: u32,
    #[serde(default)]
    disable_chap: bool,
    #[serde(default)]
    require_chap: bool,
    #[serde(default)]
    mutual_chap: bool,
    #[serde(default)]
    chap_group: u32,
    #[serde(default)]
    header_digest: bool,
    #[serde(default)]
    data_digest: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Name {
    name: String,
}

/// Strips the node base, as SPDK shows target node names in connections.
fn short_name(t: &IscsiTarget, name: &str) -> String {
    let base = format!("{}:", t.options().node_base);
    name.strip_prefix(&base).unwrap_or(name).to_string()
}

/// Registers the iSCSI methods on `registry`.
pub fn register_rpc(registry: &Registry, target: Arc<IscsiTarget>) {
    let t = target.clone();
    registry.register("iscsi_create_portal_group", move |p| {
        let p: CreatePortalGroup = parse_params(p)?;
        if p.wait {
            return Err(RpcError::invalid_params(
                "wait=true is not supported: portal groups listen when created",
            ));
        }
        let portals = p
            .portals
            .into_iter()
            .map(|x| Portal {
                host: x.host,
                port: x.port,
            })
            .collect();
        t.create_portal_group(p.tag, portals, p.private)
            .map_err(err)?;
        Ok(Value::Bool(true))
    });
    let t = target.clone();
    registry.register("iscsi_delete_portal_group", move |p| {
        let p: Tag16 = parse_params(p)?;
        t.delete_portal_group(p.tag).map_err(err)?;
        Ok(Value::Bool(true))
    });
    let t = target.clone();
    registry.register("iscsi_get_portal_groups", move |_| {
        Ok(Value::Array(
            t.portal_groups()
                .into_iter()
                .map(|g| {
                    // Report the bound port (a requested "0" is resolved).
                    let portals: Vec<Value> = g
                        .portals
                        .iter()
                        .zip(g.bound.iter())
                        .map(|(p, b)| json!({"host": p.host, "port": b.port().to_string()}))
                        .collect();
                    json!({"tag": g.tag, "portals": portals, "private": g.private})
                })
                .collect(),
        ))
    });
    let t = target.clone();
    registry.register("iscsi_create_initiator_group", move |p| {
        let p: CreateInitiatorGroup = parse_params(p)?;
        let chap = ChapPolicy {
            disable: p.disable_chap,
            require: p.require_chap,
            mutual: p.mutual_chap,
            group: p.chap_group,
        };
        t.create_initiator_group(p.tag, p.initiators, p.netmasks, chap)
            .map_err(err)?;
        Ok(Value::Bool(true))
    });
    let t = target.clone();
    registry.register("iscsi_delete_initiator_group", move |p| {
        let p: Tag16 = parse_params(p)?;
        t.delete_initiator_group(p.tag).map_err(err)?;
        Ok(Value::Bool(true))
    });
    let t = target.clone();
    registry.register("iscsi_get_initiator_groups", move |_| {
        Ok(Value::Array(
            t.initiator_groups()
                .into_iter()
                .map(|g| json!({"tag": g.tag, "initiators": g.initiators, "netmasks": g.netmasks}))
                .collect(),
        ))
    });
    let t = target.clone();
    registry.register("iscsi_create_auth_group", move |p| {
        let p: CreateAuthGroup = parse_params(p)?;
        t.create_auth_group(p.tag, p.secrets).map_err(err)?;
        Ok(Value::Bool(true))
    });
    let t = target.clone();
    registry.register("iscsi_delete_auth_group", move |p| {
        let p: Tag32 = parse_params(p)?;
        t.delete_auth_group(p.tag).map_err(err)?;
        Ok(Value::Bool(true))
    });
    let t = target.clone();
    registry.register("iscsi_get_auth_groups", move |_| {
        Ok(Value::Array(
            t.auth_groups()
                .into_iter()
                .map(|g| json!({"tag": g.tag, "secrets": g.secrets}))
                .collect(),
        ))
    });
    let t = target.clone();
    registry.register("iscsi_set_discovery_auth", move |p| {
        let p: ChapParams = parse_params(p)?;
        t.set_discovery_auth(p.policy()).map_err(err)?;
        Ok(Value::Bool(true))
    });
    let t = target.clone();
    registry.register("iscsi_get_discovery_auth", move |_| {
        let c = t.discovery_chap();
        Ok(json!({"disable_chap": c.disable, "require_chap": c.require, "mutual_chap": c.mutual, "chap_group": c.group}))
    });
    let t = target.clone();
    registry.register("iscsi_create_target_node", move |p| {
        let p: CreateTargetNode = parse_params(p)?;
        let spec = NodeSpec {
            name: p.name,
            alias: p.alias_name,
            pg_ig_maps: p
                .pg_ig_maps
                .into_iter()
                .map(|m| (m.pg_tag, m.ig_tag))
                .collect(),
            luns: p
                .luns
                .into_iter()
                .map(|l| (l.lun_id, l.bdev_name))
                .collect(),
            queue_depth: p.queue_depth,
            chap: ChapPolicy {
                disable: p.disable_chap,
                require: p.require_chap,
                mutual: p.mutual_chap,
                group: p.chap_group,
            },
            header_digest: p.header_digest,
            data_digest: p.data_digest,
        };
        t.create_target_node(spec).map_err(err)?;
        Ok(Value::Bool(true))
    });
    let t = target.clone();
    registry.register("iscsi_delete_target_node", move |p| {
        let p: Name = parse_params(p)?;
        t.delete_target_node(&p.name).map_err(err)?;
        Ok(Value::Bool(true))
    });
    let t = target.clone();
    registry.register("iscsi_get_target_nodes", move |_| {
        Ok(Value::Array(
            t.target_nodes()
                .into_iter()
                .map(|n| {
                    json!({
                        "name": n.name,
                        "alias_name": n.alias,
                        "pg_ig_maps": n.pg_ig_maps.iter().map(|(p, i)| json!({"pg_tag": p, "ig_tag": i})).collect::<Vec<_>>(),
                        "luns": n.luns().iter().map(|l| json!({"lun_id": l.id, "bdev_name": l.volume})).collect::<Vec<_>>(),
                        "queue_depth": n.queue_depth,
                        "disable_chap": n.chap.disable,
                        "require_chap": n.chap.require,
                        "mutual_chap": n.chap.mutual,
                        "chap_group": n.chap.group,
                        "header_digest": n.header_digest,
                        "data_digest": n.data_digest,
                    })
                })
                .collect(),
        ))
    });
    let t = target;
    registry.register("iscsi_get_connections", move |_| {
        Ok(Value::Array(
            t.connections()
                .into_iter()
                .map(|c| {
                    json!({
                        "id": c.id,
                        "cid": c.cid,
                        "tsih": c.tsih,
                        "lcore_id": c.lcore_id,
                        "initiator_addr": c.initiator_addr,
                        "target_addr": c.target_addr,
                        "target_node_name": short_name(&t, &c.target_node_name),
                        "initiator_name": c.initiator_name,
                    })
                })
                .collect(),
        ))
    });
}
