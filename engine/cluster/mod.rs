//! The node's link to the meta service.
//!
//! The meta client is async Rust on tokio; the data path is coroutines on
//! reactors. [`MetaLink`] runs a small tokio runtime on a control thread and
//! hands each call to it; the calling coroutine parks on the task's handle
//! (through `rt::block_on`), so no reactor thread ever blocks on meta.
//!
//! On top of it: [`MetaCatalog`], the volume client's view of volumes and
//! extents; node registration with its lease kept alive; and the
//! cluster-wide JSON-RPC methods (pools, volumes, nodes), which any node
//! forwards to the meta leader.

pub mod replica_meta;
pub mod rpc;

use crate::rt;
use crate::volume::client::{ExtentMeta, VolumeCatalog, VolumeMeta};
use crate::volume::IoError;
use ferrite_meta::client::{Code, MetaClient, NodeKeeper, Status};
use ferrite_meta::proto;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The tokio control thread and the meta client.
pub struct MetaLink {
    runtime: tokio::runtime::Runtime,
    client: MetaClient,
}

impl MetaLink {
    /// Starts the control thread; `endpoints` are ferrite-meta host:ports.
    pub fn new(endpoints: &[String]) -> Result<Arc<Self>, String> {
        let client = MetaClient::new(endpoints).map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ferrite-ctl")
            .enable_all()
            .build()
            .map_err(|e| format!("starting the control thread: {e}"))?;
        Ok(Arc::new(Self { runtime, client }))
    }

    pub fn client(&self) -> &MetaClient {
        &self.client
    }

    /// Runs one meta call on the control thread and waits for it: a
    /// coroutine parks, a plain thread blocks.
    pub fn call<F, Fut, T>(&self, f: F) -> Result<T, Status>
    where
        F: FnOnce(MetaClient) -> Fut,
        Fut: Future<Output = Result<T, Status>> + Send + 'static,
        T: Send + 'static,
    {
        let task = self.runtime.spawn(f(self.client.clone()));
        match rt::block_on(task) {
            Ok(r) => r,
            Err(e) => Err(Status::internal(format!("meta call task failed: {e}"))),
        }
    }

    /// Registers this node and keeps its lease alive from the control
    /// thread; waits up to `wait` for the first registration.
    pub fn register_node(
        &self,
        reg: proto::RegisterNodeRequest,
        wait: Duration,
    ) -> Result<NodeKeeper, String> {
        let client = self.client.clone();
        let id = reg.id.clone();
        let mut keeper = self.runtime.block_on(async move {
            let mut k = client.spawn_node_keeper(reg);
            k.wait_registered(wait).await;
            k
        });
        if keeper.lease().is_none() {
            return Err(format!("node '{id}' could not register with meta within {wait:?} (is ferrite-meta running?)"));
        }
        // `keeper` is moved out; its task keeps running on the control thread.
        let _ = &mut keeper;
        Ok(keeper)
    }

    /// Reports this node's capacity (called periodically).
    pub fn report_capacity(&self, node: &str, total: u64, free: u64) {
        let node = node.to_string();
        let c = self.client.clone();
        self.runtime.spawn(async move {
            if let Err(e) = c.report_capacity(&node, total, free).await {
                log::debug!("reporting capacity to meta: {}", e.message());
            }
        });
    }
}

/// A meta status as a volume I/O error.
pub fn io_error(volume: &str, s: &Status) -> IoError {
    match s.code() {
        Code::NotFound => IoError::Gone {
            volume: volume.to_string(),
        },
        Code::ResourceExhausted => IoError::NoSpace {
            volume: volume.to_string(),
            detail: s.message().to_string(),
        },
        _ => IoError::Unavailable {
            volume: volume.to_string(),
            detail: format!("meta service: {}", s.message()),
        },
    }
}

/// Parses a canonical uuid string.
pub fn parse_uuid(s: &str) -> [u8; 16] {
    let hex: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        if let Some(h) = hex.get(i * 2..i * 2 + 2) {
            *b = u8::from_str_radix(h, 16).unwrap_or(0);
        }
    }
    out
}

fn extent_meta(e: &proto::Extent) -> ExtentMeta {
    ExtentMeta {
        id: e.id,
        index: e.index,
        replicas: e.replicas.clone(),
        generation: e.generation,
    }
}

/// The volume client's catalog, served by the meta service.
pub struct MetaCatalog {
    link: Arc<MetaLink>,
}

impl MetaCatalog {
    pub fn new(link: Arc<MetaLink>) -> Arc<Self> {
        Arc::new(Self { link })
    }
}

impl VolumeCatalog for MetaCatalog {
    fn get_volume(&self, name: &str) -> Result<VolumeMeta, IoError> {
        let n = name.to_string();
        let r = self
            .link
            .call(move |c| async move { c.get_volume(&n).await })
            .map_err(|s| io_error(name, &s))?;
        let v = r.volume.ok_or_else(|| IoError::Unavailable {
            volume: name.to_string(),
            detail: "meta answered without a volume".into(),
        })?;
        if v.state == proto::VolumeState::Creating as i32 {
            return Err(IoError::Unavailable {
                volume: name.to_string(),
                detail: "the volume is still being created".into(),
            });
        }
        Ok(VolumeMeta {
            name: v.name.clone(),
            uuid: parse_uuid(&v.uuid),
            pool: v.pool.clone(),
            size: v.size,
            block_size: v.block_size,
            extent_size: v.extent_size,
            replica_count: v.replica_count,
            min_replicas: v.min_replicas,
            thin: v.provisioning != proto::Provisioning::Thick as i32,
            generation: v.generation,
            extents: r
                .extents
                .iter()
                .map(|e| (e.index, extent_meta(e)))
                .collect(),
        })
    }

    fn allocate_extent(&self, volume: &str, index: u64) -> Result<ExtentMeta, IoError> {
        let n = volume.to_string();
        let r = self
            .link
            .call(move |c| async move { c.allocate_extent(&n, index).await })
            .map_err(|s| io_error(volume, &s))?;
        let e = r.extent.ok_or_else(|| IoError::Unavailable {
            volume: volume.to_string(),
            detail: "meta answered without an extent".into(),
        })?;
        Ok(extent_meta(&e))
    }

    fn list_volumes(&self) -> Result<Vec<String>, IoError> {
        let r = self
            .link
            .call(|c| async move { c.list_volumes(None).await })
            .map_err(|s| io_error("*", &s))?;
        Ok(r.into_iter().map(|v| v.name).collect())
    }
}
