//! JSON-RPC methods with SPDK's names and parameters, so that SPDK's
//! client (`spdk_rpc`) drives Ferrite's target for this subset (checked
//! with spdk-rpc from PyPI). A namespace's `bdev_name` is a volume name.
//! Ferrite extensions: a listener's `listen_address` may carry
//! `advertise_traddr` and `advertise_trsvcid` (what discovery reports), and
//! a subsystem reports ANA when `ana_reporting` is absent (SPDK's client
//! sends `false` unless given `-r`, and that is honoured).

use super::subsystem::{ListenAddress, SubsystemOpts};
use super::target::{NamespaceOpts, NvmfTarget, TransportOpts};
use super::{spec, NvmfError};
use ferrite_engine::rpc::{parse_params, Registry, RpcError};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

fn err(e: NvmfError) -> RpcError {
    RpcError::errno(e.errno(), e.to_string())
}

#[derive(Deserialize)]
struct CreateTransport {
    trtype: String,
    max_queue_depth: Option<u16>,
    max_io_qpairs_per_ctrlr: Option<u16>,
    /// Older SPDK name, counting the admin queue.
    max_qpairs_per_ctrlr: Option<u16>,
    in_capsule_data_size: Option<u32>,
    max_io_size: Option<u32>,
    io_unit_size: Option<u32>,
    max_aq_depth: Option<u16>,
    c2h_success: Option<bool>,
    // Accepted for compatibility; they shape SPDK's buffer pools and
    // sockets, which Ferrite does not have.
    #[serde(default)]
    #[allow(dead_code)]
    num_shared_buffers: Option<u32>,
    #[serde(default)]
    #[allow(dead_code)]
    buf_cache_size: Option<u32>,
    #[serde(default)]
    #[allow(dead_code)]
    tgt_name: Option<String>,
}

#[derive(Deserialize)]
struct GetTransports {
    trtype: Option<String>,
}

#[derive(Deserialize)]
struct CreateSubsystem {
    nqn: String,
    serial_number: Option<String>,
    model_number: Option<String>,
    #[serde(default)]
    allow_any_host: bool,
    max_namespaces: Option<u32>,
    ana_reporting: Option<bool>,
    min_cntlid: Option<u16>,
    max_cntlid: Option<u16>,
}

#[derive(Deserialize)]
struct Nqn {
    nqn: String,
}

#[derive(Deserialize)]
struct NsParams {
    bdev_name: String,
    nsid: Option<u32>,
    nguid: Option<String>,
    eui64: Option<String>,
    uuid: Option<String>,
    anagrpid: Option<u32>,
}

#[derive(Deserialize)]
struct AddNs {
    nqn: String,
    namespace: NsParams,
}

#[derive(Deserialize)]
struct RemoveNs {
    nqn: String,
    nsid: u32,
}

#[derive(Deserialize)]
struct Address {
    trtype: String,
    adrfam: Option<String>,
    traddr: String,
    trsvcid: Option<String>,
    advertise_traddr: Option<String>,
    advertise_trsvcid: Option<String>,
}

#[derive(Deserialize)]
struct Listener {
    nqn: String,
    listen_address: Address,
}

#[derive(Deserialize)]
struct Host {
    nqn: String,
    host: String,
}

#[derive(Deserialize)]
struct AllowAny {
    nqn: String,
    allow_any_host: bool,
}

#[derive(Deserialize)]
struct GetSubsystems {
    nqn: Option<String>,
}

fn hex_bytes<const N: usize>(what: &str, s: &str) -> Result<[u8; N], RpcError> {
    let h: String = s.chars().filter(|c| *c != '-').collect();
    if h.len() != 2 * N || !h.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(RpcError::invalid_params(format!(
            "{what} '{s}' is not {N} bytes of hex"
        )));
    }
    let mut b = [0u8; N];
    for (i, x) in b.iter_mut().enumerate() {
        *x = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).expect("hex checked");
    }
    Ok(b)
}

/// A uuid as text: 8-4-4-4-12 hex digits.
pub fn uuid_string(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn address(a: &Address) -> Result<(ListenAddress, Option<ListenAddress>), RpcError> {
    let trsvcid = a
        .trsvcid
        .clone()
        .unwrap_or_else(|| super::DEFAULT_PORT.to_string());
    let mut l = ListenAddress::tcp(a.traddr.clone(), &trsvcid);
    l.trtype = a.trtype.to_ascii_uppercase();
    if let Some(f) = &a.adrfam {
        l.adrfam = if f.eq_ignore_ascii_case("ipv6") {
            "IPv6"
        } else {
            "IPv4"
        }
        .into();
    }
    let adv = (a.advertise_traddr.is_some() || a.advertise_trsvcid.is_some()).then(|| {
        ListenAddress::tcp(
            a.advertise_traddr
                .clone()
                .unwrap_or_else(|| l.traddr.clone()),
            a.advertise_trsvcid
                .clone()
                .unwrap_or_else(|| trsvcid.clone()),
        )
    });
    Ok((l, adv))
}

fn transport_json(t: &TransportOpts) -> Value {
    json!({
        "trtype": "TCP",
        "max_queue_depth": t.max_queue_depth,
        "max_io_qpairs_per_ctrlr": t.max_io_qpairs_per_ctrlr,
        "in_capsule_data_size": t.in_capsule_data_size,
        "max_io_size": t.max_io_size,
        "io_unit_size": t.io_unit_size,
        "max_aq_depth": t.max_aq_depth,
        "c2h_success": t.c2h_success,
    })
}

fn address_json(a: &ListenAddress) -> Value {
    json!({"trtype": a.trtype, "adrfam": a.adrfam, "traddr": a.traddr, "trsvcid": a.trsvcid})
}

/// `nvmf_get_subsystems`' view of the target.
pub fn subsystems_json(t: &NvmfTarget, only: Option<&str>) -> Value {
    let mut out = Vec::new();
    if only.is_none() || only == Some(spec::DISCOVERY_NQN) {
        let ls: Vec<Value> = t
            .listeners()
            .iter()
            .map(|(a, _, _)| address_json(a))
            .collect();
        out.push(json!({"nqn": spec::DISCOVERY_NQN, "subtype": "Discovery", "listen_addresses": ls, "hosts": [], "allow_any_host": true}));
    }
    for s in t.subsystems() {
        if only.is_some_and(|n| n != s.nqn) {
            continue;
        }
        let nss: Vec<Value> = s
            .namespaces()
            .iter()
            .map(|ns| {
                json!({"nsid": ns.nsid, "bdev_name": ns.bdev_name, "name": ns.bdev_name, "uuid": uuid_string(&ns.uuid),
                       "nguid": ns.nguid.iter().map(|b| format!("{b:02X}")).collect::<String>(), "anagrpid": ns.anagrpid,
                       "ana_state": ns.volume.access_state().to_string(), "size": ns.volume.info().size})
            })
            .collect();
        out.push(json!({
            "nqn": s.nqn,
            "subtype": "NVMe",
            "listen_addresses": s.listeners().iter().map(address_json).collect::<Vec<_>>(),
            "allow_any_host": s.allow_any_host(),
            "hosts": s.hosts().iter().map(|h| json!({"nqn": h})).collect::<Vec<_>>(),
            "serial_number": s.serial_number,
            "model_number": s.model_number,
            "max_namespaces": s.max_namespaces,
            "min_cntlid": s.min_cntlid,
            "max_cntlid": s.max_cntlid,
            "ana_reporting": s.ana_reporting,
            "namespaces": nss,
            "controllers": s.controllers().iter().map(|c| json!({"cntlid": c.id, "hostnqn": c.hostnqn})).collect::<Vec<_>>(),
        }));
    }
    Value::Array(out)
}

/// Registers the `nvmf_*` methods.
pub fn register_rpc(registry: &Registry, target: Arc<NvmfTarget>) {
    let t = target.clone();
    registry.register("nvmf_create_transport", move |p| {
        let p: CreateTransport = parse_params(p)?;
        if !p.trtype.eq_ignore_ascii_case("tcp") {
            return Err(RpcError::invalid_params(format!(
                "transport type '{}' is not supported (only TCP)",
                p.trtype
            )));
        }
        let d = TransportOpts::default();
        let o = TransportOpts {
            max_queue_depth: p.max_queue_depth.unwrap_or(d.max_queue_depth),
            max_io_qpairs_per_ctrlr: p
                .max_io_qpairs_per_ctrlr
                .or(p.max_qpairs_per_ctrlr.map(|n| n.saturating_sub(1)))
                .unwrap_or(d.max_io_qpairs_per_ctrlr),
            in_capsule_data_size: p.in_capsule_data_size.unwrap_or(d.in_capsule_data_size),
            max_io_size: p.max_io_size.unwrap_or(d.max_io_size),
            io_unit_size: p.io_unit_size.unwrap_or(d.io_unit_size),
            max_aq_depth: p.max_aq_depth.unwrap_or(d.max_aq_depth),
            c2h_success: p.c2h_success.unwrap_or(d.c2h_success),
        };
        t.create_transport(o).map_err(err)?;
        Ok(Value::Bool(true))
    });
    let t = target.clone();
    registry.register("nvmf_get_transports", move |p| {
        let p: GetTransports = parse_params(p)?;
        if let Some(tt) = &p.trtype {
            if !tt.eq_ignore_ascii_case("tcp") {
                return Err(RpcError::errno(
                    19,
                    format!("transport type '{tt}' does not exist"),
                ));
            }
        }
        Ok(Value::Array(
            t.transport().iter().map(transport_json).collect(),
        ))
    });
    let t = target.clone();
    registry.register("nvmf_create_subsystem", move |p| {
        let p: CreateSubsystem = parse_params(p)?;
        let mut o = SubsystemOpts::new(&p.nqn);
        o.serial_number = p
            .serial_number
            .unwrap_or_else(|| "00000000000000000000".into());
        if let Some(m) = p.model_number {
            o.model_number = m;
        }
        o.allow_any_host = p.allow_any_host;
        o.max_namespaces = p.max_namespaces.unwrap_or(0);
        o.ana_reporting = p.ana_reporting.unwrap_or(true);
        o.min_cntlid = p.min_cntlid.unwrap_or(1);
        o.max_cntlid = p.max_cntlid.unwrap_or(0xffef);
        t.create_subsystem(o).map_err(err)?;
        Ok(Value::Bool(true))
    });
    let t = target.clone();
    registry.register("nvmf_delete_subsystem", move |p| {
        let p: Nqn = parse_params(p)?;
        t.delete_subsystem(&p.nqn).map_err(err)?;
        Ok(Value::Bool(true))
    });
    let t = target.clone();
    registry.register("nvmf_subsystem_add_ns", move |p| {
        let p: AddNs = parse_params(p)?;
        let n = p.namespace;
        let o = NamespaceOpts {
            bdev_name: n.bdev_name,
            nsid: n.nsid.unwrap_or(0),
            nguid: n
                .nguid
                .as_deref()
                .map(|s| hex_bytes::<16>("nguid", s))
                .transpose()?,
            uuid: n
                .uuid
                .as_deref()
                .map(|s| hex_bytes::<16>("uuid", s))
                .transpose()?,
            eui64: n
                .eui64
                .as_deref()
                .map(|s| hex_bytes::<8>("eui64", s))
                .transpose()?,
            anagrpid: n.anagrpid.unwrap_or(0),
        };
        let nsid = t.add_namespace(&p.nqn, o).map_err(err)?;
        Ok(json!(nsid))
    });
    let t = target.clone();
    registry.register("nvmf_subsystem_remove_ns", move |p| {
        let p: RemoveNs = parse_params(p)?;
        t.remove_namespace(&p.nqn, p.nsid).map_err(err)?;
        Ok(Value::Bool(true))
    });
    let t = target.clone();
    registry.register("nvmf_subsystem_add_listener", move |p| {
        let p: Listener = parse_params(p)?;
        let (addr, adv) = address(&p.listen_address)?;
        let nqn = if p.nqn == "discovery" {
            spec::DISCOVERY_NQN.to_string()
        } else {
            p.nqn
        };
        if nqn == spec::DISCOVERY_NQN {
            t.add_discovery_listener(&addr, adv).map_err(err)?;
        } else {
            t.add_listener(&nqn, &addr, adv).map_err(err)?;
        }
        Ok(Value::Bool(true))
    });
    let t = target.clone();
    registry.register("nvmf_subsystem_remove_listener", move |p| {
        let p: Listener = parse_params(p)?;
        let (addr, _) = address(&p.listen_address)?;
        t.remove_listener(&p.nqn, &addr).map_err(err)?;
        Ok(Value::Bool(true))
    });
    let t = target.clone();
    registry.register("nvmf_subsystem_add_host", move |p| {
        let p: Host = parse_params(p)?;
        t.add_host(&p.nqn, &p.host).map_err(err)?;
        Ok(Value::Bool(true))
    });
    let t = target.clone();
    registry.register("nvmf_subsystem_remove_host", move |p| {
        let p: Host = parse_params(p)?;
        t.remove_host(&p.nqn, &p.host).map_err(err)?;
        Ok(Value::Bool(true))
    });
    let t = target.clone();
    registry.register("nvmf_subsystem_allow_any_host", move |p| {
        let p: AllowAny = parse_params(p)?;
        t.allow_any_host(&p.nqn, p.allow_any_host).map_err(err)?;
        Ok(Value::Bool(true))
    });
    let t = target.clone();
    registry.register("nvmf_get_subsystems", move |p| {
        let p: GetSubsystems = parse_params(p)?;
        if let Some(n) = &p.nqn {
            if t.subsystem(n).is_none() {
                return Err(RpcError::errno(2, format!("no subsystem {n}")));
            }
        }
        Ok(subsystems_json(&t, p.nqn.as_deref()))
    });
    let t = target;
    registry.register("nvmf_subsystem_get_controllers", move |p| {
        let p: Nqn = parse_params(p)?;
        let s = t.subsystem(&p.nqn).ok_or_else(|| RpcError::errno(2, format!("no subsystem {}", p.nqn)))?;
        Ok(Value::Array(
            s.controllers()
                .iter()
                .map(|c| json!({"cntlid": c.id, "hostnqn": c.hostnqn, "hostid": uuid_string(&c.hostid), "kato_ms": c.kato_ms()}))
                .collect(),
        ))
    });
}
