//! The NVMe-oF target of a node: its TCP transport settings, subsystems,
//! listening ports and the discovery service. This is the API `ferrited`
//! (and the test daemon) call; `rpc.rs` maps SPDK's JSON-RPC methods onto it.

use super::queue;
use super::spec;
use super::subsystem::{
    serial_from_uuid, volume_nqn, ListenAddress, Namespace, Subsystem, SubsystemOpts,
};
use super::NvmfError;
use crate::server::{ConnHandler, TcpServer};
use ferrite_engine::rt::{self, migrate, Handle};
use ferrite_engine::volume::VolumeProvider;
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// TCP transport options, with SPDK's names and defaults (see
/// `nvmf_create_transport`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportOpts {
    /// Entries of an I/O queue (MQES + 1, MAXCMD).
    pub max_queue_depth: u16,
    pub max_io_qpairs_per_ctrlr: u16,
    /// Data a command capsule may carry (IOCCSZ); 4 KiB writes go in-capsule.
    pub in_capsule_data_size: u32,
    /// Largest transfer of one command (MDTS), and MAXH2CDATA.
    pub max_io_size: u32,
    pub io_unit_size: u32,
    pub max_aq_depth: u16,
    /// Allow C2HData's SUCCESS flag (when the host disabled SQ flow control).
    pub c2h_success: bool,
}

impl Default for TransportOpts {
    fn default() -> Self {
        Self {
            max_queue_depth: 128,
            max_io_qpairs_per_ctrlr: 127,
            in_capsule_data_size: 4096,
            max_io_size: 131072,
            io_unit_size: 131072,
            max_aq_depth: 128,
            c2h_success: true,
        }
    }
}

impl TransportOpts {
    pub fn validate(&self) -> Result<(), NvmfError> {
        let bad = |m: String| Err(NvmfError::Invalid(m));
        if !(2..=1024).contains(&self.max_queue_depth) {
            return bad(format!(
                "max_queue_depth {} is not within 2..=1024",
                self.max_queue_depth
            ));
        }
        if !(2..=4096).contains(&self.max_aq_depth) {
            return bad(format!(
                "max_aq_depth {} is not within 2..=4096",
                self.max_aq_depth
            ));
        }
        if self.max_io_qpairs_per_ctrlr == 0 {
            return bad("max_io_qpairs_per_ctrlr must be at least 1".into());
        }
        if !self.in_capsule_data_size.is_multiple_of(16) || self.in_capsule_data_size > 65536 {
            return bad(format!(
                "in_capsule_data_size {} is not a multiple of 16 up to 65536",
                self.in_capsule_data_size
            ));
        }
        if !self.max_io_size.is_power_of_two() || !(4096..=1 << 20).contains(&self.max_io_size) {
            return bad(format!(
                "max_io_size {} is not a power of two from 4096 to 1 MiB",
                self.max_io_size
            ));
        }
        Ok(())
    }

    /// MDTS: the largest transfer as a power of two of 4 KiB pages.
    pub fn mdts(&self) -> u8 {
        (self.max_io_size / 4096).trailing_zeros() as u8
    }
}

/// Node-level settings of the target.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// How often each controller checks its keep-alive deadline and looks
    /// at its namespaces' size and ANA state.
    pub poll_interval: Duration,
    /// How long a new connection may take to send ICReq and Connect.
    pub connect_timeout: Duration,
    /// The address discovery log entries carry instead of a listener's own
    /// (e.g. `10.0.2.100` for a VM reaching the host through forwards).
    pub advertise_traddr: Option<String>,
}

impl Default for TargetConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(10),
            advertise_traddr: None,
        }
    }
}

/// A listening port of the target.
pub(crate) struct Listener {
    pub(crate) addr: ListenAddress,
    /// What discovery log entries say for it.
    pub(crate) advertise: ListenAddress,
    pub(crate) portid: u16,
    server: Option<TcpServer>,
}

/// Ferrite's NVMe-oF target.
pub struct NvmfTarget {
    pub(crate) handle: Handle,
    provider: Arc<dyn VolumeProvider>,
    pub(crate) config: TargetConfig,
    transport: RwLock<Option<TransportOpts>>,
    subsystems: RwLock<BTreeMap<String, Arc<Subsystem>>>,
    pub(crate) discovery: Arc<Subsystem>,
    listeners: Mutex<BTreeMap<ListenAddress, Listener>>,
    next_portid: AtomicU64,
    /// Discovery log generation counter: bumped on every change.
    genctr: AtomicU64,
}

/// Options of [`NvmfTarget::export_volume`].
#[derive(Debug, Clone)]
pub struct ExportOpts {
    /// Host NQNs allowed to connect; empty with `allow_any_host` false
    /// means nobody.
    pub hosts: Vec<String>,
    pub allow_any_host: bool,
    /// Listeners (bound if not yet) the subsystem is reachable through.
    pub listeners: Vec<ListenAddress>,
    /// This gateway's controller id range (see [`SubsystemOpts::min_cntlid`]).
    pub cntlid_range: (u16, u16),
}

impl Default for ExportOpts {
    fn default() -> Self {
        Self {
            hosts: Vec::new(),
            allow_any_host: true,
            listeners: Vec::new(),
            cntlid_range: (1, 0xffef),
        }
    }
}

/// What `nvmf_subsystem_add_ns` takes.
#[derive(Debug, Clone, Default)]
pub struct NamespaceOpts {
    pub bdev_name: String,
    /// 0: the lowest free id.
    pub nsid: u32,
    pub nguid: Option<[u8; 16]>,
    pub uuid: Option<[u8; 16]>,
    pub eui64: Option<[u8; 8]>,
    /// 0: the namespace's own group (its nsid).
    pub anagrpid: u32,
}

impl NvmfTarget {
    /// A target with no transport, subsystems or listeners yet.
    pub fn new(handle: Handle, provider: Arc<dyn VolumeProvider>) -> Arc<Self> {
        Self::with_config(handle, provider, TargetConfig::default())
    }

    pub fn with_config(
        handle: Handle,
        provider: Arc<dyn VolumeProvider>,
        config: TargetConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            handle,
            provider,
            config,
            transport: RwLock::new(None),
            subsystems: RwLock::new(BTreeMap::new()),
            discovery: Arc::new(Subsystem::discovery()),
            listeners: Mutex::new(BTreeMap::new()),
            next_portid: AtomicU64::new(1),
            genctr: AtomicU64::new(1),
        })
    }

    fn changed(&self) {
        self.genctr.fetch_add(1, Ordering::AcqRel);
    }

    pub fn genctr(&self) -> u64 {
        self.genctr.load(Ordering::Acquire)
    }

    /// Creates the TCP transport (once, as SPDK).
    pub fn create_transport(&self, opts: TransportOpts) -> Result<(), NvmfError> {
        opts.validate()?;
        let mut t = self.transport.write().unwrap_or_else(|e| e.into_inner());
        if t.is_some() {
            return Err(NvmfError::Exists("the TCP transport already exists".into()));
        }
        log::info!("nvmf: TCP transport created: {opts:?}");
        *t = Some(opts);
        Ok(())
    }

    pub fn transport(&self) -> Option<TransportOpts> {
        self.transport
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn create_subsystem(&self, opts: SubsystemOpts) -> Result<Arc<Subsystem>, NvmfError> {
        if opts.nqn == spec::DISCOVERY_NQN {
            return Err(NvmfError::Exists(
                "the discovery subsystem always exists".into(),
            ));
        }
        let s = Arc::new(Subsystem::new(opts)?);
        let mut map = self.subsystems.write().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(&s.nqn) {
            return Err(NvmfError::Exists(format!(
                "subsystem {} already exists",
                s.nqn
            )));
        }
        map.insert(s.nqn.clone(), s.clone());
        drop(map);
        self.changed();
        log::info!("nvmf: subsystem {} created", s.nqn);
        Ok(s)
    }

    /// Deletes a subsystem and ends its controllers.
    pub fn delete_subsystem(&self, nqn: &str) -> Result<(), NvmfError> {
        let s = self
            .subsystems
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(nqn);
        let s = s.ok_or_else(|| NvmfError::NotFound(format!("no subsystem {nqn}")))?;
        for c in s.controllers() {
            c.teardown("its subsystem was deleted");
        }
        for l in s.listeners() {
            self.release_listener(&l);
        }
        self.changed();
        log::info!("nvmf: subsystem {nqn} deleted");
        Ok(())
    }

    pub fn subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        if nqn == spec::DISCOVERY_NQN {
            return Some(self.discovery.clone());
        }
        self.subsystems
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(nqn)
            .cloned()
    }

    /// Every NVM subsystem (not the discovery one).
    pub fn subsystems(&self) -> Vec<Arc<Subsystem>> {
        self.subsystems
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn nvm_subsystem(&self, nqn: &str) -> Result<Arc<Subsystem>, NvmfError> {
        self.subsystems
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(nqn)
            .cloned()
            .ok_or_else(|| NvmfError::NotFound(format!("no subsystem {nqn}")))
    }

    /// Adds volume `bdev_name` as a namespace; returns its nsid.
    pub fn add_namespace(&self, nqn: &str, o: NamespaceOpts) -> Result<u32, NvmfError> {
        let s = self.nvm_subsystem(nqn)?;
        let volume = self
            .provider
            .open(&o.bdev_name)
            .map_err(|e| NvmfError::NotFound(format!("volume {}: {e}", o.bdev_name)))?;
        let info = volume.info();
        let ns = Namespace {
            nsid: o.nsid,
            bdev_name: o.bdev_name.clone(),
            nguid: o.nguid.unwrap_or(info.uuid),
            uuid: o.uuid.unwrap_or(info.uuid),
            eui64: o.eui64,
            anagrpid: o.anagrpid,
            volume,
        };
        let nsid = s.add_namespace(ns)?;
        self.changed();
        log::info!(
            "nvmf: {nqn}: namespace {nsid} is volume '{}' ({} bytes, {}-byte blocks)",
            o.bdev_name,
            info.size,
            info.block_size
        );
        Ok(nsid)
    }

    pub fn remove_namespace(&self, nqn: &str, nsid: u32) -> Result<(), NvmfError> {
        let s = self.nvm_subsystem(nqn)?;
        s.remove_namespace(nsid)?;
        self.changed();
        log::info!("nvmf: {nqn}: namespace {nsid} removed");
        Ok(())
    }

    pub fn add_host(&self, nqn: &str, host: &str) -> Result<(), NvmfError> {
        self.nvm_subsystem(nqn)?.add_host(host)?;
        self.changed();
        Ok(())
    }

    pub fn remove_host(&self, nqn: &str, host: &str) -> Result<(), NvmfError> {
        self.nvm_subsystem(nqn)?.remove_host(host)?;
        self.changed();
        Ok(())
    }

    pub fn allow_any_host(&self, nqn: &str, on: bool) -> Result<(), NvmfError> {
        self.nvm_subsystem(nqn)?.set_allow_any_host(on);
        self.changed();
        Ok(())
    }

    /// Makes subsystem `nqn` (or the discovery subsystem) reachable through
    /// `addr`, binding the port if no subsystem listens there yet. Port 0
    /// binds an ephemeral port; the returned address is the one bound (and
    /// the one to name the listener by afterwards). `advertise` overrides
    /// what discovery log entries say for this listener.
    pub fn add_listener(
        self: &Arc<Self>,
        nqn: &str,
        addr: &ListenAddress,
        advertise: Option<ListenAddress>,
    ) -> Result<ListenAddress, NvmfError> {
        if self.transport().is_none() {
            return Err(NvmfError::Invalid(
                "create the TCP transport first (nvmf_create_transport)".into(),
            ));
        }
        if !addr.trtype.eq_ignore_ascii_case("tcp") {
            return Err(NvmfError::Invalid(format!(
                "transport type '{}' is not supported (only TCP)",
                addr.trtype
            )));
        }
        let subsys = self
            .subsystem(nqn)
            .ok_or_else(|| NvmfError::NotFound(format!("no subsystem {nqn}")))?;
        let bound = self.bind(addr, advertise)?;
        if !subsys.is_discovery() && !subsys.add_listener(bound.clone()) {
            return Err(NvmfError::Exists(format!(
                "{nqn} already listens on {bound}"
            )));
        }
        self.changed();
        Ok(bound)
    }

    pub fn remove_listener(&self, nqn: &str, addr: &ListenAddress) -> Result<(), NvmfError> {
        let subsys = self
            .subsystem(nqn)
            .ok_or_else(|| NvmfError::NotFound(format!("no subsystem {nqn}")))?;
        if !subsys.is_discovery() && !subsys.remove_listener(addr) {
            return Err(NvmfError::NotFound(format!(
                "{nqn} does not listen on {addr}"
            )));
        }
        self.release_listener(addr);
        self.changed();
        Ok(())
    }

    /// Stops serving a port no subsystem uses any more (the discovery
    /// service keeps ports it was added to).
    fn release_listener(&self, addr: &ListenAddress) {
        if self
            .subsystems()
            .iter()
            .any(|s| s.listeners().contains(addr))
        {
            return;
        }
        let mut ls = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = ls.get(addr) {
            if l.portid & DISCOVERY_PORT_FLAG != 0 {
                return;
            }
        }
        let gone = ls.remove(addr);
        drop(ls);
        // Dropping the server waits for its acceptor: outside the lock.
        if let Some(l) = gone {
            log::info!("nvmf: stopped listening on {}", l.addr);
        }
    }

    fn bind(
        self: &Arc<Self>,
        addr: &ListenAddress,
        advertise: Option<ListenAddress>,
    ) -> Result<ListenAddress, NvmfError> {
        if let Some(l) = self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(addr)
        {
            if let Some(a) = advertise {
                l.advertise = a;
            }
            return Ok(l.addr.clone());
        }
        let sa = resolve(addr)?;
        let weak = Arc::downgrade(self);
        // The connection handler learns its listener's name once bound.
        let key = Arc::new(Mutex::new(addr.clone()));
        let key2 = key.clone();
        let on_conn: ConnHandler = Arc::new(move |sock, peer| {
            let Some(t) = weak.upgrade() else { return };
            let listener = key2.lock().unwrap_or_else(|e| e.into_inner()).clone();
            queue::serve(t, sock, peer, listener);
        });
        let handle = self.handle.clone();
        // TcpServer::start waits for its acceptor on reactor 0: from a
        // coroutine (an RPC), wait on the worker pool so that this reactor,
        // which may be reactor 0, stays free to run it.
        let start = move || TcpServer::start(&handle, "nvmf-tcp", sa, on_conn);
        let server = if rt::in_coroutine() {
            migrate::run_on(migrate::Target::Workers, start)
        } else {
            start()
        };
        let server = server.map_err(|e| NvmfError::Io(format!("listening on {addr}: {e}")))?;
        let bound = ListenAddress {
            trsvcid: server.local_addr().port().to_string(),
            ..addr.clone()
        };
        *key.lock().unwrap_or_else(|e| e.into_inner()) = bound.clone();
        let mut adv = advertise.unwrap_or_else(|| bound.clone());
        if let Some(a) = &self.config.advertise_traddr {
            if adv.traddr == bound.traddr {
                adv.traddr = a.clone();
            }
        }
        let portid = self.next_portid.fetch_add(1, Ordering::Relaxed) as u16 & !DISCOVERY_PORT_FLAG;
        let mut ls = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = ls.get(&bound) {
            // Another caller bound the same address meanwhile (a fixed port
            // cannot be bound twice, so this is port 0 racing): keep theirs.
            return Ok(l.addr.clone());
        }
        log::info!(
            "nvmf: listening on {bound} (advertised as {}:{})",
            adv.traddr,
            adv.trsvcid
        );
        ls.insert(
            bound.clone(),
            Listener {
                addr: bound.clone(),
                advertise: adv,
                portid,
                server: Some(server),
            },
        );
        Ok(bound)
    }

    /// Marks a listener as one the discovery service keeps open.
    pub fn add_discovery_listener(
        self: &Arc<Self>,
        addr: &ListenAddress,
        advertise: Option<ListenAddress>,
    ) -> Result<ListenAddress, NvmfError> {
        let bound = self.add_listener(spec::DISCOVERY_NQN, addr, advertise)?;
        if let Some(l) = self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&bound)
        {
            l.portid |= DISCOVERY_PORT_FLAG;
        }
        Ok(bound)
    }

    /// The listeners, with what discovery advertises for each.
    pub fn listeners(&self) -> Vec<(ListenAddress, ListenAddress, u16)> {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|l| {
                (
                    l.addr.clone(),
                    l.advertise.clone(),
                    l.portid & !DISCOVERY_PORT_FLAG,
                )
            })
            .collect()
    }

    /// Exports a volume the Ferrite way: subsystem
    /// `nqn.2026-11.io.ferrite:<volume>` (serial from the volume's uuid, so
    /// every gateway reports the same), the volume as namespace 1, the
    /// given hosts and listeners. Returns the subsystem NQN.
    pub fn export_volume(
        self: &Arc<Self>,
        volume: &str,
        o: &ExportOpts,
    ) -> Result<String, NvmfError> {
        let nqn = volume_nqn(volume);
        let info = self
            .provider
            .open(volume)
            .map_err(|e| NvmfError::NotFound(format!("volume {volume}: {e}")))?
            .info();
        let mut so = SubsystemOpts::new(&nqn);
        so.serial_number = serial_from_uuid(&info.uuid);
        so.allow_any_host = o.allow_any_host;
        so.min_cntlid = o.cntlid_range.0;
        so.max_cntlid = o.cntlid_range.1;
        self.create_subsystem(so)?;
        let r = (|| {
            self.add_namespace(
                &nqn,
                NamespaceOpts {
                    bdev_name: volume.to_string(),
                    nsid: 1,
                    ..Default::default()
                },
            )?;
            for h in &o.hosts {
                self.add_host(&nqn, h)?;
            }
            for l in &o.listeners {
                self.add_listener(&nqn, l, None)?;
            }
            Ok(())
        })();
        if let Err(e) = r {
            let _ = self.delete_subsystem(&nqn);
            return Err(e);
        }
        Ok(nqn)
    }

    /// Stops every listener and ends every controller.
    pub fn shutdown(&self) {
        let servers: Vec<Listener> =
            std::mem::take(&mut *self.listeners.lock().unwrap_or_else(|e| e.into_inner()))
                .into_values()
                .collect();
        for mut l in servers {
            if let Some(s) = l.server.take() {
                s.stop();
            }
        }
        for s in self
            .subsystems()
            .into_iter()
            .chain([self.discovery.clone()])
        {
            for c in s.controllers() {
                c.teardown("the target shuts down");
            }
        }
    }
}

/// Marks listeners added for the discovery service in `Listener::portid`.
const DISCOVERY_PORT_FLAG: u16 = 0x8000;

fn resolve(addr: &ListenAddress) -> Result<SocketAddr, NvmfError> {
    let port: u16 = addr.trsvcid.parse().map_err(|_| {
        NvmfError::Invalid(format!("trsvcid '{}' is not a port number", addr.trsvcid))
    })?;
    let host = addr.traddr.trim_start_matches('[').trim_end_matches(']');
    (host, port)
        .to_socket_addrs()
        .map_err(|e| NvmfError::Invalid(format!("traddr '{}': {e}", addr.traddr)))?
        .next()
        .ok_or_else(|| NvmfError::Invalid(format!("traddr '{}' resolves to nothing", addr.traddr)))
}
