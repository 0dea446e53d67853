//! Assembling a node: store, meta link, volume client, front ends, control
//! socket, metrics; and taking them down again in the right order.

use ferrite_engine::cluster::replica_meta::MetaReplicaOps;
use ferrite_engine::cluster::rpc::ClusterEvents;
use ferrite_engine::cluster::{MetaCatalog, MetaLink};
use ferrite_engine::metrics::http::MetricsServer;
use ferrite_engine::metrics::{self, Metrics, Sample};
use ferrite_engine::replica::router::ReplicaRouter;
use ferrite_engine::replica::service::{ReplicaService, ServiceConfig};
use ferrite_engine::replica::transport::{TcpConfig, TcpTransport, Transport};
use ferrite_engine::rpc::server::RpcServer;
use ferrite_engine::rpc::Registry;
use ferrite_engine::rt::server::TcpServer;
use ferrite_engine::rt::{self, Handle};
use ferrite_engine::store::{ChunkStore, StoreError, StoreOptions};
use ferrite_engine::volume::client::{VolumeCatalog, VolumeClient};
use ferrite_engine::volume::{IoError, VolumeProvider};
use ferrite_gateway::iscsi::{IscsiTarget, Portal, TargetOptions as IscsiOptions};
use ferrite_gateway::nbd::NbdServer;
use ferrite_gateway::nvmf::{ExportOpts, ListenAddress, NvmfTarget, TargetConfig, TransportOpts};
use ferrite_meta::client::NodeKeeper;
use ferrite_meta::proto;

use crate::exports::{Fronts, SavedExports};
use serde_json::{json, Value};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Everything a node is configured with (from the command line).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: String,
    pub zone: String,
    pub devices: Vec<PathBuf>,
    /// Size of a device file created because it did not exist.
    pub device_size: u64,
    pub meta: Vec<String>,
    pub rpc_socket: PathBuf,
    pub nbd: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub iscsi: Option<SocketAddr>,
    pub nvmf: Option<SocketAddr>,
    pub nvmf_discovery: Option<SocketAddr>,
    pub replica: SocketAddr,
    pub io_timeout: Duration,
    /// The address other nodes and initiators reach this node's front ends at.
    pub advertise_host: String,
    /// What NVMe/TCP discovery entries say instead of a listener's bound
    /// address (`--nvmf-advertise`).
    pub nvmf_advertise: Option<String>,
    /// `--data-dir`: where node state lives when the device is a block
    /// device (the saved exports).
    pub data_dir: PathBuf,
    /// The store writes journaled blocks home to new contiguous blocks
    /// (false with `--home-in-place`: in place).
    pub relocate_home: bool,
    /// The store writes small writes once to new blocks (false with
    /// `--journal-small-writes`: journaled, then written home).
    pub log_small_writes: bool,
}

/// A running node.
pub struct Node {
    handle: Handle,
    store: Arc<ChunkStore>,
    keeper: Option<NodeKeeper>,
    rpc: Option<RpcServer>,
    nbd: Arc<NbdServer>,
    metrics_http: Option<MetricsServer>,
    replica: Option<TcpServer>,
    iscsi: Arc<IscsiTarget>,
    nvmf: Arc<NvmfTarget>,
    svc: Arc<ReplicaService>,
    /// The DPDK replica server, when on (dropped with the TCP one).
    dpdk_server: Option<Box<dyn std::any::Any>>,
    stop_background: Arc<AtomicBool>,
    _link: Arc<MetaLink>,
}

impl Node {
    pub fn start(cfg: &NodeConfig, handle: Handle, net: crate::dpdk::Net) -> Result<Self, String> {
        let store = open_store(cfg, &handle)?;
        let saved = Arc::new(SavedExports::load(SavedExports::path_for(
            &cfg.devices[0],
            &cfg.data_dir,
            &cfg.node_id,
        )));
        let (total, free) = store.capacity();
        log::info!(
            "store open on {:?}: {} MiB total, {} MiB free",
            cfg.devices,
            total >> 20,
            free >> 20
        );

        // Replica traffic: kernel TCP, or DPDK (then meta gets the node's
        // `dpdk://IP:PORT` address, and the transport still reaches nodes
        // that registered a TCP address over TCP).
        let tcp: Arc<dyn Transport> = TcpTransport::new(TcpConfig::default());
        let (transport, replica_addr) = (
            tcp,
            format!("{}:{}", cfg.advertise_host, cfg.replica.port()),
        );
        #[cfg(feature = "dpdk")]
        let (transport, replica_addr) = match &net {
            Some(stack) => (
                ferrite_engine::replica::dpdk::transport::DpdkTransport::new(stack.clone())
                    as Arc<dyn Transport>,
                stack.replica_address(),
            ),
            None => (transport, replica_addr),
        };

        let link = MetaLink::new(&cfg.meta)?;
        let gateway_addr = cfg
            .nbd
            .map(|a| format!("{}:{}", cfg.advertise_host, a.port()))
            .unwrap_or_default();
        let reg = proto::RegisterNodeRequest {
            id: cfg.node_id.clone(),
            addresses: Some(proto::NodeAddresses {
                gateway: gateway_addr,
                replica: replica_addr.clone(),
            }),
            zone: cfg.zone.clone(),
            capacity_total: total,
            capacity_free: free,
        };
        let keeper = link.register_node(reg, Duration::from_secs(30))?;
        log::info!(
            "node '{}' registered with meta {:?}; replica address {replica_addr}",
            cfg.node_id,
            cfg.meta
        );

        // Replication: this node's replica service and port, and the router
        // through which the volume client reaches primaries (this node's
        // own extents by function call).
        let svc = ReplicaService::new(
            ServiceConfig::new(&cfg.node_id),
            store.clone(),
            MetaReplicaOps::new(link.clone()),
            transport,
        );
        let replica_server =
            ferrite_engine::replica::server::start(&handle, cfg.replica, svc.clone())
                .map_err(|e| format!("replica port {}: {e}", cfg.replica))?;
        #[cfg(feature = "dpdk")]
        let dpdk_server: Option<Box<dyn std::any::Any>> = net.as_ref().map(|stack| {
            Box::new(ferrite_engine::replica::dpdk::server::start(
                stack,
                svc.clone(),
            )) as Box<dyn std::any::Any>
        });
        #[cfg(not(feature = "dpdk"))]
        let dpdk_server: Option<Box<dyn std::any::Any>> = net.map(|()| Box::new(()) as _);
        svc.start_background(&handle);
        let volumes = VolumeClient::new(
            MetaCatalog::new(link.clone()),
            ReplicaRouter::new(svc.clone(), cfg.io_timeout),
        );
        let nbd = NbdServer::new(handle.clone(), volumes.clone());

        let registry = Registry::new();
        let provider: Arc<dyn VolumeProvider> = volumes.clone();
        ferrite_engine::rpc::spdk::register(&registry, handle.clone(), provider);
        let events = Arc::new(NodeEvents {
            node_id: cfg.node_id.clone(),
            volumes: volumes.clone(),
            nbd: nbd.clone(),
            store: store.clone(),
            exports: std::sync::OnceLock::new(),
            saved: saved.clone(),
            stale_luns: Default::default(),
        });
        ferrite_engine::cluster::rpc::register(&registry, link.clone(), events.clone());
        ferrite_gateway::nbd::register_rpc(&registry, nbd.clone());

        // iSCSI: portal group 1 on --iscsi and initiator group 1 (any
        // initiator), so `iscsi_create_target_node` with pg 1 / ig 1 exports
        // a volume; SPDK's methods configure everything else.
        let iscsi = IscsiTarget::new(handle.clone(), volumes.clone(), IscsiOptions::default());
        ferrite_gateway::iscsi::register_rpc(&registry, iscsi.clone());
        if let Some(a) = cfg.iscsi {
            let portal = Portal {
                host: a.ip().to_string(),
                port: a.port().to_string(),
            };
            iscsi
                .create_portal_group(1, vec![portal], false)
                .map_err(|e| format!("iSCSI portal {a}: {e}"))?;
            iscsi
                .create_initiator_group(
                    1,
                    vec!["ANY".into()],
                    vec!["ANY".into()],
                    Default::default(),
                )
                .map_err(|e| format!("iSCSI initiator group: {e}"))?;
            log::info!("iSCSI portal group 1 on {a}");
        }
        // NVMe/TCP: the TCP transport and the discovery controller.
        let nvmf = NvmfTarget::with_config(
            handle.clone(),
            volumes.clone(),
            TargetConfig {
                advertise_traddr: cfg.nvmf_advertise.clone(),
                ..TargetConfig::default()
            },
        );
        ferrite_gateway::nvmf::register_rpc(&registry, nvmf.clone());
        let _ = events.exports.set((iscsi.clone(), nvmf.clone()));
        nvmf.create_transport(TransportOpts::default())
            .map_err(|e| format!("NVMe/TCP transport: {e}"))?;
        if let Some(a) = cfg.nvmf_discovery {
            nvmf.add_discovery_listener(&ListenAddress::tcp(a.ip().to_string(), a.port()), None)
                .map_err(|e| format!("NVMe/TCP discovery on {a}: {e}"))?;
            log::info!("NVMe/TCP discovery on {a}");
        }

        let gateway_index = keeper.lease().map_or(0, |l| l.gateway_index);
        register_volume_export(
            &registry,
            cfg,
            gateway_index,
            saved.clone(),
            nbd.clone(),
            iscsi.clone(),
            nvmf.clone(),
        );

        let metrics = Metrics::new();
        metrics::register_reactor_metrics(&metrics, handle.clone());
        register_store_metrics(&metrics, store.clone());
        register_volume_metrics(&metrics, volumes.clone());
        let m = metrics.clone();
        registry.register("metrics_get", move |_| Ok(m.render_json()));
        let st = store.clone();
        registry.register("store_get_stats", move |_| Ok(store_stats_json(&st)));
        let sv = svc.clone();
        registry.register("replica_get_stats", move |_| Ok(replica_stats_json(&sv)));
        register_replica_metrics(&metrics, svc.clone());
        register_dpdk(&registry, &metrics, &net);
        register_replica_bench(&registry, handle.clone(), svc.clone());

        if let Some(addr) = cfg.nbd {
            let bound = nbd
                .listen(addr)
                .map_err(|e| format!("NBD on {addr}: {e}"))?;
            log::info!("NBD listening on {bound}");
        }
        let metrics_http = match cfg.metrics {
            Some(a) => Some(
                MetricsServer::start(&handle, a, metrics.clone())
                    .map_err(|e| format!("metrics endpoint on {a}: {e}"))?,
            ),
            None => None,
        };
        restore_exports(&handle, &registry, &saved);
        let rpc = RpcServer::start(&handle, 0, &cfg.rpc_socket, registry.clone())
            .map_err(|e| format!("RPC socket {}: {e}", cfg.rpc_socket.display()))?;

        // Capacity reports keep placement honest as the store fills; the
        // same tick drops exports of volumes deleted through other nodes.
        let stop_background = Arc::new(AtomicBool::new(false));
        let (stop, st, l, id) = (
            stop_background.clone(),
            store.clone(),
            link.clone(),
            cfg.node_id.clone(),
        );
        let catalog = MetaCatalog::new(link.clone());
        handle.spawn_on(0, move || {
            while !stop.load(Ordering::Acquire) {
                for _ in 0..100 {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    rt::sleep(Duration::from_millis(100));
                }
                let (t, f) = st.capacity();
                l.report_capacity(&id, t, f);
                events.remove_exports_of_deleted_volumes(&catalog);
            }
        });

        Ok(Self {
            handle,
            store,
            keeper: Some(keeper),
            rpc: Some(rpc),
            nbd,
            metrics_http,
            replica: Some(replica_server),
            iscsi,
            nvmf,
            svc,
            dpdk_server,
            stop_background,
            _link: link,
        })
    }

    /// Stops the front ends and the control socket, then closes the store
    /// (a final checkpoint), then lets the lease go.
    pub fn stop(mut self) {
        self.stop_background.store(true, Ordering::Release);
        if let Some(r) = self.rpc.take() {
            r.stop();
        }
        for e in self.nbd.export_list() {
            let _ = self.nbd.export_stop(&e.name);
        }
        self.nvmf.shutdown();
        for n in self.iscsi.target_nodes() {
            let _ = self.iscsi.delete_target_node(&n.name);
        }
        for pg in self.iscsi.portal_groups() {
            let _ = self.iscsi.delete_portal_group(pg.tag);
        }
        self.metrics_http.take();
        self.svc.stop();
        self.replica.take();
        self.dpdk_server.take();
        let store = self.store.clone();
        let r = self.handle.spawn_on(0, move || store.close()).join();
        match r {
            Ok(Ok(())) => log::info!("store closed cleanly"),
            Ok(Err(e)) => log::error!("closing the store: {e}"),
            Err(e) => log::error!("closing the store: {e}"),
        }
        self.keeper.take();
    }
}

/// Opens the store; formats devices only when they are blank (a new file or
/// a zeroed device), never over anything else.
fn open_store(cfg: &NodeConfig, handle: &Handle) -> Result<Arc<ChunkStore>, String> {
    for d in &cfg.devices {
        if !d.exists() {
            if let Some(parent) = d.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("creating {}: {e}", parent.display()))?;
            }
            let f = std::fs::File::create(d)
                .map_err(|e| format!("creating device file {}: {e}", d.display()))?;
            f.set_len(cfg.device_size)
                .map_err(|e| format!("sizing device file {}: {e}", d.display()))?;
            log::info!(
                "created device file {} ({} MiB, sparse)",
                d.display(),
                cfg.device_size >> 20
            );
        }
    }
    let opts = StoreOptions {
        workers: handle.reactor_count(),
        relocate_home: cfg.relocate_home,
        log_small_writes: cfg.log_small_writes,
        ..StoreOptions::default()
    };
    let devices = cfg.devices.clone();
    let h = handle.clone();
    let o = opts.clone();
    let opened = handle
        .spawn_on(0, move || ChunkStore::open(&devices, &o, &h))
        .join()
        .map_err(|e| e.to_string())?;
    match opened {
        Ok(s) => Ok(s),
        Err(StoreError::Format { device, reason }) => {
            let blank: Vec<&PathBuf> = cfg.devices.iter().filter(|d| is_blank(d)).collect();
            if blank.len() != cfg.devices.len() {
                return Err(format!("device {device} is not a Ferrite store ({reason}); refusing to format a device that holds data"));
            }
            log::info!("formatting blank device(s) {:?}", cfg.devices);
            let devices = cfg.devices.clone();
            let h = handle.clone();
            handle
                .spawn_on(0, move || {
                    ChunkStore::format(&devices, &opts)?;
                    ChunkStore::open(&devices, &opts, &h)
                })
                .join()
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("formatting {:?}: {e}", cfg.devices))
        }
        Err(e) => Err(format!("opening the store on {:?}: {e}", cfg.devices)),
    }
}

/// Whether a device's first MiB is all zeroes (nothing was ever written).
fn is_blank(path: &Path) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0;
    while read < buf.len() {
        match f.read(&mut buf[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(_) => return false,
        }
    }
    buf[..read].iter().all(|&b| b == 0)
}

struct NodeEvents {
    node_id: String,
    volumes: Arc<VolumeClient>,
    nbd: Arc<NbdServer>,
    store: Arc<ChunkStore>,
    /// The iSCSI and NVMe/TCP targets, set once they exist: a deleted
    /// volume's `volume_export` target and subsystem go with it.
    exports: std::sync::OnceLock<(Arc<IscsiTarget>, Arc<NvmfTarget>)>,
    saved: Arc<SavedExports>,
    /// (target node, volume): LUNs of deleted volumes that a target node
    /// exporting other volumes too keeps. Warned about once, and left out
    /// of the periodic check.
    stale_luns: std::sync::Mutex<std::collections::BTreeSet<(String, String)>>,
}

impl NodeEvents {
    /// Removes this node's exports of volume `name`: its NBD exports, the
    /// iSCSI target and NVMe/TCP subsystem `volume_export` made for it, its
    /// namespaces in other subsystems, and iSCSI targets that export only
    /// it.
    fn remove_exports(&self, name: &str) {
        for e in self.nbd.export_list() {
            if e.volume == name {
                let _ = self.nbd.export_stop(&e.name);
            }
        }
        if let Some((iscsi, nvmf)) = self.exports.get() {
            let nqn = ferrite_gateway::nvmf::volume_nqn(name);
            if nvmf.subsystem(&nqn).is_some() {
                if let Err(e) = nvmf.delete_subsystem(&nqn) {
                    log::warn!("volume {name} deleted: removing NVMe/TCP subsystem {nqn}: {e}");
                }
            }
            // Exports made with SPDK's methods name the volume as a bdev under
            // any NQN or IQN: its namespaces go, and so do target nodes that
            // export nothing else (`volume_export`'s among them).
            for sub in nvmf.subsystems() {
                for ns in sub.namespaces().iter().filter(|ns| ns.bdev_name == name) {
                    match nvmf.remove_namespace(&sub.nqn, ns.nsid) {
                        Ok(()) => log::info!(
                            "volume {name} deleted: removed namespace {} of NVMe/TCP subsystem {}",
                            ns.nsid,
                            sub.nqn
                        ),
                        Err(e) => log::warn!(
                            "volume {name} deleted: removing namespace {} of {}: {e}",
                            ns.nsid,
                            sub.nqn
                        ),
                    }
                }
            }
            for node in iscsi.target_nodes() {
                let luns = node.luns();
                if !luns.iter().any(|l| l.volume == name) {
                    continue;
                }
                if luns.iter().all(|l| l.volume == name) {
                    match iscsi.delete_target_node(&node.name) {
                        Ok(()) => {
                            log::info!("volume {name} deleted: removed iSCSI target {}", node.name)
                        }
                        Err(e) => log::warn!(
                            "volume {name} deleted: removing iSCSI target {}: {e}",
                            node.name
                        ),
                    }
                } else if self
                    .stale_luns
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((node.name.clone(), name.to_string()))
                {
                    log::warn!(
                        "volume {name} deleted: iSCSI target {} keeps its LUNs of it (it exports other volumes too); their I/O fails",
                        node.name
                    );
                }
            }
        }
        self.saved.remove(name);
        self.volumes.invalidate(name);
    }

    /// Removes the exports of volumes that meta no longer has: deleted
    /// through another node, whose `volume_deleted` ran there. A volume
    /// meta cannot be asked about now keeps its exports.
    fn remove_exports_of_deleted_volumes(&self, catalog: &MetaCatalog) {
        let mut names: std::collections::BTreeSet<String> = self
            .nbd
            .export_list()
            .into_iter()
            .map(|e| e.volume)
            .collect();
        names.extend(self.saved.list().into_iter().map(|(name, _)| name));
        if let Some((iscsi, nvmf)) = self.exports.get() {
            for sub in nvmf.subsystems() {
                names.extend(sub.namespaces().iter().map(|ns| ns.bdev_name.clone()));
            }
            let stale = self.stale_luns.lock().unwrap_or_else(|p| p.into_inner());
            for node in iscsi.target_nodes() {
                names.extend(
                    node.luns()
                        .iter()
                        .filter(|l| !stale.contains(&(node.name.clone(), l.volume.clone())))
                        .map(|l| l.volume.clone()),
                );
            }
        }
        if names.is_empty() {
            return;
        }
        // One listing for all of them. Those missing from it are asked about
        // one by one: a volume created and exported after the listing is
        // missing from it too.
        let listed: std::collections::BTreeSet<String> = match catalog.list_volumes() {
            Ok(v) => v.into_iter().collect(),
            Err(e) => {
                log::debug!("listing volumes for the export check: {e}");
                return;
            }
        };
        for name in names.into_iter().filter(|n| !listed.contains(n)) {
            if let Err(IoError::Gone { .. }) = catalog.get_volume(&name) {
                log::info!("volume {name} is gone from meta: removing this node's exports of it");
                self.remove_exports(&name);
            }
        }
    }
}

impl ClusterEvents for NodeEvents {
    fn volume_deleted(&self, name: &str, extents: &[proto::Extent]) {
        self.remove_exports(name);
        for e in extents
            .iter()
            .filter(|e| e.replicas.contains(&self.node_id))
        {
            if let Err(err) = self.store.delete_extent(e.id) {
                log::debug!("deleting extent {} of volume {name}: {err}", e.id);
            }
        }
    }

    fn volume_resized(&self, name: &str) {
        self.volumes.invalidate(name);
    }
}

/// The DMA arena a node takes by default: room for what every worker's
/// store cache may hold (a quarter of its journal) plus 64 MiB for I/O in
/// flight.
pub fn default_dma_arena(reactors: usize) -> u64 {
    (64 << 20) + reactors as u64 * StoreOptions::default().journal_size / 4
}

fn store_stats_json(store: &ChunkStore) -> Value {
    let s = store.stats();
    let pool = ferrite_engine::bdev::dma::pool_stats();
    let (total, free) = store.capacity();
    json!({
        "capacity_total": total, "capacity_free": free,
        "user_bytes_written": s.user_bytes_written, "user_bytes_read": s.user_bytes_read,
        "device_bytes_written": s.device_bytes_written, "device_bytes_read": s.device_bytes_read,
        "flushes": s.flushes, "journal_bytes": s.journal_bytes, "home_bytes": s.home_bytes,
        "direct_bytes": s.direct_bytes, "checkpoint_bytes": s.checkpoint_bytes,
        "relocated_bytes": s.relocated_blocks * ferrite_engine::bdev::BLOCK_SIZE,
        "cleaned_bytes": s.cleaned_blocks * ferrite_engine::bdev::BLOCK_SIZE,
        "logged_bytes": s.logged_blocks * ferrite_engine::bdev::BLOCK_SIZE,
        "free_segments": s.free_segments,
        "checksum_errors": s.checksum_errors, "write_amplification": s.write_amplification,
        "devices": s.devices.iter().map(|d| json!({"name": d.name, "bytes_written": d.stats.bytes_written, "bytes_read": d.stats.bytes_read, "flushes": d.stats.flushes})).collect::<Vec<_>>(),
        "dma": {
            "arena_bytes": pool.arena_bytes, "hugepages": pool.hugepages,
            "carved_bytes": pool.carved_bytes, "heap_buffers": pool.heap_fallbacks,
        },
    })
}

/// `volume_export {name, nbd?, iscsi?, nvmf?}`: exports a volume on every
/// front end this node runs (each may be turned off with `false`): NBD
/// export `<name>`, iSCSI target `iqn.2026-11.io.ferrite:<name>` LUN 0
/// (portal group 1, any initiator), NVMe/TCP subsystem
/// `nqn.2026-11.io.ferrite:<name>` on the node's `--nvmf` listener (any
/// host). Each node uses its own NVMe controller-id range, so several
/// gateways can export one volume as paths of one subsystem.
fn register_volume_export(
    registry: &Registry,
    cfg: &NodeConfig,
    gateway_index: u32,
    saved: Arc<SavedExports>,
    nbd: Arc<NbdServer>,
    iscsi: Arc<IscsiTarget>,
    nvmf: Arc<NvmfTarget>,
) {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        name: String,
        #[serde(default)]
        nbd: Option<bool>,
        #[serde(default)]
        iscsi: Option<bool>,
        #[serde(default)]
        nvmf: Option<bool>,
    }
    let (nbd_on, iscsi_on, nvmf_addr) = (cfg.nbd.is_some(), cfg.iscsi.is_some(), cfg.nvmf);
    let advertise = cfg
        .nvmf_advertise
        .clone()
        .unwrap_or_else(|| cfg.advertise_host.clone());
    let cntlid = cntlid_range(gateway_index, &cfg.node_id);
    registry.register("volume_export", move |p| {
        let p: P = ferrite_engine::rpc::parse_params(p)?;
        let mut out = serde_json::Map::new();
        let fail = |what: &str, e: String| {
            ferrite_engine::rpc::RpcError::errno(
                5,
                format!("exporting {} over {what}: {e}", p.name),
            )
        };
        if nbd_on && p.nbd.unwrap_or(true) {
            match nbd.export_start(&p.name, None) {
                Ok(_) => {}
                Err(e) if e.code == -17 => {} // already exported
                Err(e) => return Err(e),
            }
            out.insert(
                "nbd".into(),
                json!(format!(
                    "nbd://{}/{}",
                    nbd.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                    p.name
                )),
            );
        }
        if iscsi_on && p.iscsi.unwrap_or(true) {
            let iqn = iscsi.full_name(&p.name);
            if iscsi.target_node(&iqn).is_none() {
                iscsi
                    .export_volume(&p.name, 1, 1, 128)
                    .map_err(|e| fail("iSCSI", e.to_string()))?;
            }
            out.insert("iscsi".into(), json!(iqn));
        }
        if let (Some(a), true) = (nvmf_addr, p.nvmf.unwrap_or(true)) {
            let opts = ExportOpts {
                allow_any_host: true,
                listeners: vec![ListenAddress::tcp(a.ip().to_string(), a.port())],
                cntlid_range: cntlid,
                ..ExportOpts::default()
            };
            let nqn = ferrite_gateway::nvmf::volume_nqn(&p.name);
            if !nvmf.subsystems().iter().any(|s| s.nqn == nqn) {
                nvmf.export_volume(&p.name, &opts)
                    .map_err(|e| fail("NVMe/TCP", e.to_string()))?;
            }
            out.insert(
                "nvmf".into(),
                json!({"nqn": nqn, "traddr": advertise, "trsvcid": a.port()}),
            );
        }
        saved.add(
            &p.name,
            Fronts {
                nbd: p.nbd,
                iscsi: p.iscsi,
                nvmf: p.nvmf,
            },
        );
        Ok(Value::Object(out))
    });
}

/// Exports again, from a coroutine on reactor 0, the volumes this node
/// exported before it stopped. A volume deleted meanwhile is forgotten;
/// any other failure is logged and the entry kept for the next start.
fn restore_exports(handle: &Handle, registry: &Arc<Registry>, saved: &Arc<SavedExports>) {
    let list = saved.list();
    if list.is_empty() {
        return;
    }
    let (registry, saved) = (registry.clone(), saved.clone());
    handle.spawn_on(0, move || {
        for (name, f) in list {
            let params = json!({"name": name, "nbd": f.nbd, "iscsi": f.iscsi, "nvmf": f.nvmf});
            match registry.call("volume_export", Some(params)) {
                Ok(_) => log::info!("exported volume {name} again (saved export)"),
                Err(e) if e.code == -2 => {
                    log::info!("saved export of volume {name}: the volume is gone; forgetting it");
                    saved.remove(&name);
                }
                Err(e) => log::warn!("saved export of volume {name}: {}", e.message),
            }
        }
    });
}

/// This node's NVMe controller ids: 255 disjoint ranges of 256 ids (1..=256,
/// 257..=512, ... up to 0xFF00, under the 0xFFEF the spec allows), picked by
/// the gateway index meta gave the node, which no other registered node
/// holds, so up to 255 gateways export a subsystem without a clash. An older
/// meta gives no index (0): the node id's hash picks the range then, and
/// two nodes may clash.
fn cntlid_range(gateway_index: u32, node_id: &str) -> (u16, u16) {
    let slot = if gateway_index > 0 {
        (gateway_index - 1) % 255
    } else {
        log::warn!(
            "node '{node_id}': meta gave no gateway index; NVMe controller ids by hash may clash with another node's"
        );
        fnv1a(node_id.as_bytes()) % 255
    } as u16;
    (1 + slot * 0x100, slot * 0x100 + 0x100)
}

/// FNV-1a: spreads node ids over the controller-id ranges.
fn fnv1a(b: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &x in b {
        h = (h ^ x as u32).wrapping_mul(0x0100_0193);
    }
    h
}

fn replica_stats_json(svc: &ReplicaService) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let s = &svc.stats;
    json!({
        "node": svc.node_id(),
        "forwarded": s.forwarded.load(Relaxed), "forward_failures": s.forward_failures.load(Relaxed),
        "failures_reported": s.failures_reported.load(Relaxed), "stale_refused": s.stale_refused.load(Relaxed),
        "checksum_errors": s.checksum_errors.load(Relaxed), "repairs": s.repairs.load(Relaxed),
        "resync_bytes": s.resync_bytes.load(Relaxed), "resyncs_completed": s.resyncs_completed.load(Relaxed),
        "extents_collected": s.extents_collected.load(Relaxed),
        "tcp_connections": ferrite_engine::replica::server::TCP_CONNECTIONS.load(Relaxed),
        "tcp_requests_served": ferrite_engine::replica::server::TCP_REQUESTS_SERVED.load(Relaxed),
        "resyncs_in_progress": svc.resyncs_in_progress().into_iter().map(|(e, n)| json!({"extent": e, "learner": n})).collect::<Vec<_>>(),
    })
}

fn register_replica_metrics(m: &Metrics, svc: Arc<ReplicaService>) {
    m.register(move |out| {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &svc.stats;
        let c = |name: &'static str, help: &'static str, v: u64| {
            Sample::counter(name, help, vec![], v as f64)
        };
        out.push(c(
            "ferrite_replica_forwarded_total",
            "Writes the primary forwarded to other replicas and learners",
            s.forwarded.load(Relaxed),
        ));
        out.push(c(
            "ferrite_replica_forward_failures_total",
            "Forwards that failed",
            s.forward_failures.load(Relaxed),
        ));
        out.push(c(
            "ferrite_replica_checksum_errors_total",
            "Local reads that failed their checksum",
            s.checksum_errors.load(Relaxed),
        ));
        out.push(c(
            "ferrite_replica_repairs_total",
            "Bad copies rewritten from a good replica",
            s.repairs.load(Relaxed),
        ));
        out.push(c(
            "ferrite_replica_resync_bytes_total",
            "Bytes received as a learner",
            s.resync_bytes.load(Relaxed),
        ));
    });
}

fn register_store_metrics(m: &Metrics, store: Arc<ChunkStore>) {
    m.register(move |out| {
        let s = store.stats();
        for d in &s.devices {
            let l = || vec![("device", d.name.clone())];
            out.push(Sample::counter(
                "ferrite_device_written_bytes_total",
                "Bytes written to the device",
                l(),
                d.stats.bytes_written as f64,
            ));
            out.push(Sample::counter(
                "ferrite_device_read_bytes_total",
                "Bytes read from the device",
                l(),
                d.stats.bytes_read as f64,
            ));
            out.push(Sample::counter(
                "ferrite_device_flushes_total",
                "Flushes sent to the device",
                l(),
                d.stats.flushes as f64,
            ));
        }
        out.push(Sample::counter(
            "ferrite_store_user_written_bytes_total",
            "Bytes written by users of the store",
            vec![],
            s.user_bytes_written as f64,
        ));
        out.push(Sample::gauge(
            "ferrite_store_write_amplification",
            "Device bytes written over user bytes written",
            vec![],
            s.write_amplification,
        ));
        out.push(Sample::counter(
            "ferrite_store_checksum_errors_total",
            "Blocks whose crc32c did not match on read",
            vec![],
            s.checksum_errors as f64,
        ));
        out.push(Sample::counter(
            "ferrite_store_cleaned_bytes_total",
            "Bytes the store's cleaner moved",
            vec![],
            (s.cleaned_blocks * ferrite_engine::bdev::BLOCK_SIZE) as f64,
        ));
        out.push(Sample::counter(
            "ferrite_store_logged_bytes_total",
            "Bytes of small writes written once to new blocks with their journal batch",
            vec![],
            (s.logged_blocks * ferrite_engine::bdev::BLOCK_SIZE) as f64,
        ));
        out.push(Sample::gauge(
            "ferrite_store_free_segments",
            "4 MiB segments of the data area with no block in use",
            vec![],
            s.free_segments as f64,
        ));
        let pool = ferrite_engine::bdev::dma::pool_stats();
        out.push(Sample::gauge(
            "ferrite_dma_arena_bytes",
            "Size of the DMA buffer arena",
            vec![],
            pool.arena_bytes as f64,
        ));
        out.push(Sample::counter(
            "ferrite_dma_heap_buffers_total",
            "I/O buffers taken from the heap because the DMA arena was full",
            vec![],
            pool.heap_fallbacks as f64,
        ));
        let (t, f) = store.capacity();
        out.push(Sample::gauge(
            "ferrite_store_capacity_bytes",
            "Store capacity",
            vec![],
            t as f64,
        ));
        out.push(Sample::gauge(
            "ferrite_store_free_bytes",
            "Free space in the store",
            vec![],
            f as f64,
        ));
    });
}

fn register_volume_metrics(m: &Metrics, volumes: Arc<VolumeClient>) {
    m.register(move |out| {
        for (name, st) in volumes.stats() {
            st.samples(&name, out);
        }
    });
}

/// `replica_dpdk_get_stats`: the DPDK transport's counters, its ports'
/// driver counters, its address and ARP table (an error when DPDK is off);
/// and the counters as `ferrite_dpdk_transport_total{counter=...}`.
#[cfg(feature = "dpdk")]
fn register_dpdk(registry: &Registry, metrics: &Metrics, net: &crate::dpdk::Net) {
    let Some(stack) = net.clone() else {
        registry.register("replica_dpdk_get_stats", |_| {
            Err(ferrite_engine::rpc::RpcError::errno(
                95,
                "this node's replica transport is kernel TCP (no --dpdk-eal)",
            ))
        });
        return;
    };
    let s = stack.clone();
    registry.register("replica_dpdk_get_stats", move |_| Ok(s.stats_json()));
    metrics.register(move |out| {
        for (name, _help, v) in stack.stats().all() {
            out.push(Sample::counter(
                "ferrite_dpdk_transport_total",
                "DPDK replica transport counters (see replica_dpdk_get_stats)",
                vec![("counter", name.to_string())],
                v as f64,
            ));
        }
    });
}

#[cfg(not(feature = "dpdk"))]
fn register_dpdk(registry: &Registry, _: &Metrics, _: &crate::dpdk::Net) {
    registry.register("replica_dpdk_get_stats", |_| {
        Err(ferrite_engine::rpc::RpcError::errno(
            95,
            "this ferrited was built without DPDK",
        ))
    });
}

/// `replica_bench {address, size, count, depth?, reactor?}`: `count` replica
/// round trips (PING frames carrying `size` payload bytes, answered by the
/// peer's replica service without touching its store) from reactor
/// `reactor` to the replica address `address`, `depth` at a time, over
/// whichever transport this node uses for that address (DPDK for
/// `dpdk://`, kernel TCP otherwise). Returns latency percentiles and
/// throughput. Bounded: 1M calls, 4 MiB payloads, depth 256, 60 s.
fn register_replica_bench(registry: &Registry, handle: Handle, svc: Arc<ReplicaService>) {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        address: String,
        size: usize,
        count: usize,
        #[serde(default)]
        depth: Option<usize>,
        #[serde(default)]
        reactor: Option<usize>,
    }
    registry.register("replica_bench", move |p| {
        let p: P = ferrite_engine::rpc::parse_params(p)?;
        let bad = |m: &str| ferrite_engine::rpc::RpcError::invalid_params(m.to_string());
        let depth = p.depth.unwrap_or(1);
        let reactor = p.reactor.unwrap_or(0);
        if p.count == 0 || p.count > 1_000_000 {
            return Err(bad("count must be 1..=1000000"));
        }
        if p.size > 4 << 20 {
            return Err(bad("size must be at most 4 MiB"));
        }
        if depth == 0 || depth > 256 {
            return Err(bad("depth must be 1..=256"));
        }
        if reactor >= handle.reactor_count() {
            return Err(bad("no such reactor"));
        }
        let svc = svc.clone();
        let r = handle
            .spawn_on(reactor, move || {
                replica_bench(svc, p.address, p.size, p.count, depth)
            })
            .join()
            .map_err(|e| ferrite_engine::rpc::RpcError::errno(5, e.to_string()))?;
        r.map_err(|e| ferrite_engine::rpc::RpcError::errno(5, e))
    });
}

fn replica_bench(
    svc: Arc<ReplicaService>,
    address: String,
    size: usize,
    count: usize,
    depth: usize,
) -> Result<Value, String> {
    use ferrite_engine::replica::proto::{Header, Op};
    use ferrite_engine::replica::transport::Request;
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Instant;
    let payload: Rc<Vec<u8>> = Rc::new((0..size).map(|i| (i * 7) as u8).collect());
    let one = {
        let (svc, address, payload) = (svc.clone(), address.clone(), payload.clone());
        move || -> Result<Duration, String> {
            let t = Instant::now();
            svc.transport()
                .call(
                    &address,
                    Request {
                        header: Header {
                            op: Op::Ping as u8,
                            ..Default::default()
                        },
                        body: Vec::new(),
                        payload: &payload,
                    },
                )
                .map_err(|e| e.to_string())?;
            Ok(t.elapsed())
        }
    };
    // Warm up: sessions, ARP, connections, caches.
    for _ in 0..count.clamp(1, 100) {
        one()?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let lat: Rc<RefCell<Vec<u64>>> = Rc::new(RefCell::new(Vec::with_capacity(count)));
    let errors: Rc<RefCell<Vec<String>>> = Rc::new(RefCell::new(Vec::new()));
    let left = Rc::new(std::cell::Cell::new(count));
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..depth {
        let (one, lat, errors, left) = (one.clone(), lat.clone(), errors.clone(), left.clone());
        let w = rt::Builder::new()
            .static_name("replica-bench")
            .spawn(move || {
                while left.get() > 0 && Instant::now() < deadline && errors.borrow().is_empty() {
                    left.set(left.get() - 1);
                    match one() {
                        Ok(d) => lat.borrow_mut().push(d.as_nanos() as u64),
                        Err(e) => errors.borrow_mut().push(e),
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        workers.push(w);
    }
    for w in workers {
        w.join().map_err(|e| e.to_string())?;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    if let Some(e) = errors.borrow().first() {
        return Err(format!("a round trip failed: {e}"));
    }
    let mut l = lat.borrow().clone();
    l.sort_unstable();
    let n = l.len().max(1);
    let pct = |q: f64| {
        l.get(((n as f64 * q) as usize).min(n - 1))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let mean = l.iter().sum::<u64>() as f64 / n as f64 / 1000.0;
    Ok(json!({
        "address": address, "size": size, "depth": depth, "count": l.len(),
        "p50_us": pct(0.50), "p99_us": pct(0.99), "mean_us": mean,
        "min_us": pct(0.0), "max_us": l.last().copied().unwrap_or(0) as f64 / 1000.0,
        "ops_per_s": l.len() as f64 / elapsed,
        "mbps": (l.len() * size) as f64 / elapsed / 1e6,
        "elapsed_s": elapsed,
    }))
}
