//! Methods SPDK also has, with SPDK's names, parameters and result shapes,
//! so SPDK's own client and the tools built on it work against Ferrite.

use super::{parse_params, Registry, RpcError};
use crate::rt::Handle;
use crate::volume::VolumeProvider;
use serde_json::{json, Value};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// `spdk_get_version`: Ferrite's version in SPDK's shape.
pub fn version() -> Value {
    let v = env!("CARGO_PKG_VERSION");
    let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor, patch) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    json!({"version": format!("Ferrite v{v}"), "fields": {"major": major, "minor": minor, "patch": patch, "suffix": ""}})
}

/// `framework_get_reactors`: busy/idle time per reactor, in ticks of
/// `tick_rate` (Ferrite's ticks are nanoseconds).
pub fn reactors(handle: &Handle) -> Value {
    let mode = match handle.config().poll_mode {
        crate::rt::PollMode::Busy => "busy",
        crate::rt::PollMode::Adaptive => "adaptive",
    };
    let reactors: Vec<Value> = handle
        .reactors()
        .iter()
        .map(|r| {
            let st = r.stats();
            json!({
                "lcore": r.core().unwrap_or(r.id()),
                "tid": r.tid(),
                "busy": st.busy_ns.load(Relaxed),
                "idle": st.idle_ns.load(Relaxed),
                "in_interrupt": false,
                "irq_count": 0,
                "sys_count": st.sleeps.load(Relaxed),
                "poll_mode": mode,
                "lw_threads": [{"name": format!("reactor_{}", r.id()), "id": r.id(), "cpumask": format!("{:x}", 1u128 << r.core().unwrap_or(r.id()).min(127)), "elapsed": st.busy_ns.load(Relaxed) + st.idle_ns.load(Relaxed)}],
            })
        })
        .collect();
    json!({"tick_rate": 1_000_000_000u64, "pid": std::process::id(), "reactors": reactors})
}

#[derive(serde::Deserialize)]
struct GetBdevs {
    #[serde(default)]
    name: Option<String>,
    /// SPDK waits this long for a bdev to appear; volumes do not appear by
    /// themselves here, so it is accepted and not needed.
    #[serde(default)]
    #[allow(dead_code)]
    timeout: Option<u64>,
}

fn uuid_string(u: &[u8; 16]) -> String {
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

/// One volume as an SPDK bdev.
pub fn bdev_json(provider: &dyn VolumeProvider, name: &str) -> Result<Value, RpcError> {
    let v = provider
        .open(name)
        .map_err(|e| RpcError::errno(19, format!("No such device: {e}")))?;
    let info = v.info();
    Ok(json!({
        "name": info.name,
        "aliases": [],
        "product_name": "Ferrite volume",
        "block_size": info.block_size,
        "num_blocks": info.size / info.block_size as u64,
        "uuid": uuid_string(&info.uuid),
        "assigned_rate_limits": {"rw_ios_per_sec": 0, "rw_mbytes_per_sec": 0, "r_mbytes_per_sec": 0, "w_mbytes_per_sec": 0},
        "claimed": false,
        "zoned": false,
        "supported_io_types": {
            "read": true, "write": true, "unmap": info.thin, "flush": true, "reset": false,
            "nvme_admin": false, "nvme_io": false, "write_zeroes": true, "compare": false,
            "compare_and_write": true, "abort": false, "seek_hole": false, "seek_data": false
        },
        "driver_specific": {"ferrite": {"thin": info.thin, "access_state": v.access_state().to_string()}}
    }))
}

/// Registers `spdk_get_version`, `framework_get_reactors` and `bdev_get_bdevs`.
pub fn register(registry: &Registry, handle: Handle, provider: Arc<dyn VolumeProvider>) {
    registry.register("spdk_get_version", |_| Ok(version()));
    registry.register("framework_get_reactors", move |_| Ok(reactors(&handle)));
    registry.register("bdev_get_bdevs", move |p| {
        let p: GetBdevs = parse_params(p)?;
        match p.name {
            Some(n) => Ok(json!([bdev_json(&*provider, &n)?])),
            None => {
                let mut out = Vec::new();
                for n in provider.list() {
                    if let Ok(b) = bdev_json(&*provider, &n) {
                        out.push(b);
                    }
                }
                Ok(Value::Array(out))
            }
        }
    });
}
