//! The iSCSI target of a node: portal groups (listening sockets),
//! initiator groups (ACLs), CHAP auth groups, target nodes with their LUNs,
//! and the live sessions. Configured through the Rust API below or the
//! SPDK-named JSON-RPC methods in `rpc`.

use super::chap::Secret;
use super::connection;
use super::params::Limits;
use super::session::Session;
use crate::scsi::Lun;
use crate::server::TcpServer;
use ferrite_engine::rt::{self, migrate, Handle};
use ferrite_engine::volume::{BlockVolume, VolumeProvider};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

/// Target names are `<NODE_BASE>:<volume>` unless given in full.
pub const NODE_BASE: &str = "iqn.2026-11.io.ferrite";
/// The well-known iSCSI port.
pub const DEFAULT_PORT: u16 = 3260;

/// Errors of configuration calls; they map to SPDK-style negative errno.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("invalid parameter: {0}")]
    Invalid(String),
    #[error("{0} is in use")]
    Busy(String),
    #[error("cannot listen on {addr}: {err}")]
    Listen { addr: String, err: String },
    #[error("cannot open volume {volume}: {err}")]
    Volume { volume: String, err: String },
}

impl TargetError {
    /// The errno SPDK would answer with.
    pub fn errno(&self) -> i32 {
        match self {
            TargetError::Exists(_) => 17,     // EEXIST
            TargetError::NotFound(_) => 2,    // ENOENT
            TargetError::Invalid(_) => 22,    // EINVAL
            TargetError::Busy(_) => 16,       // EBUSY
            TargetError::Listen { .. } => 98, // EADDRINUSE
            TargetError::Volume { .. } => 19, // ENODEV
        }
    }
}

/// One listening address of a portal group (SPDK keeps both as strings).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Portal {
    pub host: String,
    pub port: String,
}

/// CHAP policy of a target node, an initiator group or discovery sessions
/// (SPDK's disable_chap / require_chap / mutual_chap / chap_group).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChapPolicy {
    pub disable: bool,
    pub require: bool,
    pub mutual: bool,
    /// Auth group tag; 0 means "any auth group".
    pub group: u32,
}

impl ChapPolicy {
    pub fn validate(&self) -> Result<(), TargetError> {
        if self.disable && self.require {
            return Err(TargetError::Invalid(
                "disable_chap and require_chap are mutually exclusive".into(),
            ));
        }
        if self.mutual && !self.require {
            return Err(TargetError::Invalid(
                "mutual_chap needs require_chap".into(),
            ));
        }
        Ok(())
    }

    /// Whether it says anything (an initiator group without CHAP settings
    /// leaves the decision to the target node).
    pub fn is_set(&self) -> bool {
        self.disable || self.require || self.group != 0
    }
}

#[derive(Clone, Debug)]
pub struct PortalGroup {
    pub tag: u16,
    pub portals: Vec<Portal>,
    /// Not listed by SendTargets (SPDK's "private").
    pub private: bool,
    /// The addresses actually bound (port 0 resolved).
    pub bound: Vec<SocketAddr>,
}

#[derive(Clone, Debug)]
pub struct InitiatorGroup {
    pub tag: u16,
    /// Initiator names, "ANY", or "!name" to deny one.
    pub initiators: Vec<String>,
    /// "ANY" or CIDR networks the initiator's address must be in.
    pub netmasks: Vec<String>,
    /// Ferrite extension: CHAP for initiators coming through this group,
    /// overriding the target node's setting when set.
    pub chap: ChapPolicy,
}

#[derive(Clone, Debug)]
pub struct AuthGroup {
    pub tag: u32,
    pub secrets: Vec<Secret>,
}

/// One LUN of a target node.
pub struct NodeLun {
    pub id: u64,
    pub volume: String,
    pub lun: Arc<Lun>,
}

/// A target node (an IQN) and what it exports.
pub struct TargetNode {
    pub name: String,
    pub alias: String,
    pub pg_ig_maps: Vec<(u16, u16)>,
    luns: Vec<NodeLun>,
    pub queue_depth: u32,
    pub chap: ChapPolicy,
    pub header_digest: bool,
    pub data_digest: bool,
}

impl TargetNode {
    pub fn luns(&self) -> &[NodeLun] {
        &self.luns
    }

    pub fn lun(&self, id: u64) -> Option<&Arc<Lun>> {
        self.luns.iter().find(|l| l.id == id).map(|l| &l.lun)
    }

    pub fn lun_ids(&self) -> Vec<u64> {
        self.luns.iter().map(|l| l.id).collect()
    }

    /// Whether initiators can reach it through portal group `pg`.
    pub fn on_portal_group(&self, pg: u16) -> bool {
        self.pg_ig_maps.iter().any(|(p, _)| *p == pg)
    }
}

/// What `create_target_node` needs (SPDK's iscsi_create_target_node).
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Full IQN, or a short name that gets `NODE_BASE:` in front.
    pub name: String,
    pub alias: String,
    pub pg_ig_maps: Vec<(u16, u16)>,
    /// (LUN id, volume name).
    pub luns: Vec<(u64, String)>,
    pub queue_depth: u32,
    pub chap: ChapPolicy,
    pub header_digest: bool,
    pub data_digest: bool,
}

/// Target-wide knobs.
#[derive(Clone, Debug)]
pub struct TargetOptions {
    pub node_base: String,
    /// Our side of the login negotiation.
    pub limits: Limits,
    /// Idle time before the target pings the initiator with NOP-In.
    pub nop_in_interval: Duration,
    /// How long a ping may stay unanswered before the connection is
    /// considered dead (a vanished initiator).
    pub nop_timeout: Duration,
    /// How long a login may take.
    pub login_timeout: Duration,
    /// Command data (data-out buffers and read results) one connection may
    /// hold at once; beyond it commands get TASK SET FULL and initiators
    /// retry, so a client cannot make the target allocate without bound.
    pub max_buffered_per_connection: usize,
    /// The same over all connections of the target.
    pub max_buffered_total: usize,
}

impl Default for TargetOptions {
    fn default() -> Self {
        Self {
            node_base: NODE_BASE.to_string(),
            limits: Limits::default(),
            nop_in_interval: Duration::from_secs(30),
            nop_timeout: Duration::from_secs(60),
            login_timeout: Duration::from_secs(30),
            max_buffered_per_connection: 256 << 20,
            max_buffered_total: 2 << 30,
        }
    }
}

/// A live connection, as `iscsi_get_connections` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub id: u64,
    pub cid: u16,
    pub tsih: u16,
    pub lcore_id: usize,
    pub initiator_addr: String,
    pub target_addr: String,
    pub target_node_name: String,
    pub initiator_name: String,
}

#[derive(Default)]
struct Config {
    portal_groups: BTreeMap<u16, PortalGroup>,
    initiator_groups: BTreeMap<u16, InitiatorGroup>,
    auth_groups: BTreeMap<u32, AuthGroup>,
    nodes: BTreeMap<String, Arc<TargetNode>>,
    discovery_chap: ChapPolicy,
}

/// The iSCSI target of a node.
pub struct IscsiTarget {
    handle: Handle,
    provider: Arc<dyn VolumeProvider>,
    options: TargetOptions,
    config: RwLock<Config>,
    servers: Mutex<BTreeMap<u16, Vec<TcpServer>>>,
    sessions: Mutex<HashMap<u16, Arc<Session>>>,
    conns: Mutex<BTreeMap<u64, ConnectionInfo>>,
    /// One `Lun` per volume, shared by every node exporting it, so
    /// reservations and unit attentions are per volume, not per node.
    luns: Arc<Mutex<HashMap<String, Weak<Lun>>>>,
    next_tsih: AtomicU16,
    next_conn: AtomicU64,
    /// Bytes of command data held by all connections (see
    /// `TargetOptions::max_buffered_total`).
    buffered: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl IscsiTarget {
    pub fn new(
        handle: Handle,
        provider: Arc<dyn VolumeProvider>,
        options: TargetOptions,
    ) -> Arc<Self> {
        Arc::new(Self {
            handle,
            provider,
            options,
            config: RwLock::new(Config::default()),
            servers: Mutex::new(BTreeMap::new()),
            sessions: Mutex::new(HashMap::new()),
            conns: Mutex::new(BTreeMap::new()),
            luns: Arc::new(Mutex::new(HashMap::new())),
            next_tsih: AtomicU16::new(1),
            next_conn: AtomicU64::new(1),
            buffered: AtomicUsize::new(0),
        })
    }

    pub fn options(&self) -> &TargetOptions {
        &self.options
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    fn cfg(&self) -> std::sync::RwLockReadGuard<'_, Config> {
        self.config.read().unwrap_or_else(|e| e.into_inner())
    }

    fn cfg_mut(&self) -> std::sync::RwLockWriteGuard<'_, Config> {
        self.config.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The full IQN for a name given to RPC (SPDK prefixes its node base).
    pub fn full_name(&self, name: &str) -> String {
        if name.starts_with("iqn.") || name.starts_with("eui.") || name.starts_with("naa.") {
            name.to_string()
        } else {
            format!("{}:{}", self.options.node_base, name)
        }
    }

    /// Creates a portal group and starts listening on its portals. Returns
    /// the bound addresses (a port of "0" picks a free one). Callable from
    /// a coroutine (the RPC server's) or a plain thread.
    pub fn create_portal_group(
        self: &Arc<Self>,
        tag: u16,
        portals: Vec<Portal>,
        private: bool,
    ) -> Result<Vec<SocketAddr>, TargetError> {
        if tag == 0 {
            return Err(TargetError::Invalid("portal group tag must be > 0".into()));
        }
        if portals.is_empty() {
            return Err(TargetError::Invalid(
                "a portal group needs at least one portal".into(),
            ));
        }
        if self.cfg().portal_groups.contains_key(&tag) {
            return Err(TargetError::Exists(format!("portal group {tag}")));
        }
        let mut addrs = Vec::new();
        for p in &portals {
            let port: u16 = p
                .port
                .parse()
                .map_err(|_| TargetError::Invalid(format!("port {:?} is not a number", p.port)))?;
            let host = p.host.trim_start_matches('[').trim_end_matches(']');
            let a = (host, port)
                .to_socket_addrs()
                .map_err(|e| TargetError::Invalid(format!("portal {}:{}: {e}", p.host, p.port)))?
                .next()
                .ok_or_else(|| {
                    TargetError::Invalid(format!("portal {} resolves to nothing", p.host))
                })?;
            addrs.push(a);
        }
        let mut servers = Vec::new();
        let mut bound = Vec::new();
        for a in addrs {
            let me = Arc::downgrade(self);
            let handler: crate::server::ConnHandler = Arc::new(move |sock, peer| {
                if let Some(t) = me.upgrade() {
                    connection::serve(t, tag, sock, peer);
                }
            });
            let h = self.handle.clone();
            // TcpServer::start waits for its acceptor on reactor 0: from a
            // coroutine, wait on the worker pool instead of a reactor.
            let s = if rt::in_coroutine() {
                migrate::run_on(migrate::Target::Workers, move || {
                    TcpServer::start(&h, "iscsi", a, handler)
                })
            } else {
                TcpServer::start(&h, "iscsi", a, handler)
            };
            let s = s.map_err(|e| TargetError::Listen {
                addr: a.to_string(),
                err: e.to_string(),
            })?;
            bound.push(s.local_addr());
            servers.push(s);
        }
        let mut cfg = self.cfg_mut();
        if cfg.portal_groups.contains_key(&tag) {
            return Err(TargetError::Exists(format!("portal group {tag}")));
        }
        cfg.portal_groups.insert(
            tag,
            PortalGroup {
                tag,
                portals,
                private,
                bound: bound.clone(),
            },
        );
        lock(&self.servers).insert(tag, servers);
        log::info!("iscsi: portal group {tag} listening on {bound:?}");
        Ok(bound)
    }

    /// Stops a portal group's listeners. Refused while a node maps it.
    pub fn delete_portal_group(&self, tag: u16) -> Result<(), TargetError> {
        let mut cfg = self.cfg_mut();
        if !cfg.portal_groups.contains_key(&tag) {
            return Err(TargetError::NotFound(format!("portal group {tag}")));
        }
        if let Some(n) = cfg.nodes.values().find(|n| n.on_portal_group(tag)) {
            return Err(TargetError::Busy(format!(
                "portal group {tag} (mapped by {})",
                n.name
            )));
        }
        cfg.portal_groups.remove(&tag);
        drop(cfg);
        let servers = lock(&self.servers).remove(&tag).unwrap_or_default();
        drop(servers);
        Ok(())
    }

    pub fn create_initiator_group(
        &self,
        tag: u16,
        initiators: Vec<String>,
        netmasks: Vec<String>,
        chap: ChapPolicy,
    ) -> Result<(), TargetError> {
        if tag == 0 {
            return Err(TargetError::Invalid(
                "initiator group tag must be > 0".into(),
            ));
        }
        if initiators.is_empty() || netmasks.is_empty() {
            return Err(TargetError::Invalid(
                "initiators and netmasks must not be empty".into(),
            ));
        }
        for m in &netmasks {
            if m != "ANY" && parse_cidr(m).is_none() {
                return Err(TargetError::Invalid(format!(
                    "netmask {m:?} is neither ANY nor an address/prefix"
                )));
            }
        }
        chap.validate()?;
        let mut cfg = self.cfg_mut();
        if cfg.initiator_groups.contains_key(&tag) {
            return Err(TargetError::Exists(format!("initiator group {tag}")));
        }
        cfg.initiator_groups.insert(
            tag,
            InitiatorGroup {
                tag,
                initiators,
                netmasks,
                chap,
            },
        );
        Ok(())
    }

    pub fn delete_initiator_group(&self, tag: u16) -> Result<(), TargetError> {
        let mut cfg = self.cfg_mut();
        if let Some(n) = cfg
            .nodes
            .values()
            .find(|n| n.pg_ig_maps.iter().any(|(_, i)| *i == tag))
        {
            return Err(TargetError::Busy(format!(
                "initiator group {tag} (mapped by {})",
                n.name
            )));
        }
        cfg.initiator_groups
            .remove(&tag)
            .map(|_| ())
            .ok_or_else(|| TargetError::NotFound(format!("initiator group {tag}")))
    }

    pub fn create_auth_group(&self, tag: u32, secrets: Vec<Secret>) -> Result<(), TargetError> {
        if tag == 0 {
            return Err(TargetError::Invalid("auth group tag must be > 0".into()));
        }
        for s in &secrets {
            if s.user.is_empty() || s.secret.is_empty() {
                return Err(TargetError::Invalid(
                    "CHAP user and secret must not be empty".into(),
                ));
            }
            if s.muser.is_some() != s.msecret.is_some() {
                return Err(TargetError::Invalid(format!(
                    "user {}: muser and msecret go together",
                    s.user
                )));
            }
        }
        let mut cfg = self.cfg_mut();
        if cfg.auth_groups.contains_key(&tag) {
            return Err(TargetError::Exists(format!("auth group {tag}")));
        }
        cfg.auth_groups.insert(tag, AuthGroup { tag, secrets });
        Ok(())
    }

    pub fn delete_auth_group(&self, tag: u32) -> Result<(), TargetError> {
        self.cfg_mut()
            .auth_groups
            .remove(&tag)
            .map(|_| ())
            .ok_or_else(|| TargetError::NotFound(format!("auth group {tag}")))
    }

    pub fn set_discovery_auth(&self, chap: ChapPolicy) -> Result<(), TargetError> {
        chap.validate()?;
        let mut cfg = self.cfg_mut();
        if chap.group != 0 && !cfg.auth_groups.contains_key(&chap.group) {
            return Err(TargetError::NotFound(format!("auth group {}", chap.group)));
        }
        cfg.discovery_chap = chap;
        Ok(())
    }

    fn lun_for(&self, volume: &str) -> Result<Arc<Lun>, TargetError> {
        let mut luns = lock(&self.luns);
        if let Some(l) = luns.get(volume).and_then(Weak::upgrade) {
            return Ok(l);
        }
        let v: Arc<dyn BlockVolume> =
            self.provider
                .open(volume)
                .map_err(|e| TargetError::Volume {
                    volume: volume.to_string(),
                    err: e.to_string(),
                })?;
        let l = Arc::new(Lun::new(v));
        // EXTENDED COPY between the target's LUNs: find one by its NAA
        // designator (code set, association/type, length, then the id).
        let all = Arc::downgrade(&self.luns);
        l.set_copy_resolver(Arc::new(move |desig: &[u8]| {
            let all = all.upgrade()?;
            let luns = lock(&all);
            luns.values()
                .filter_map(Weak::upgrade)
                .find(|l| desig.len() == 20 && desig[4..] == l.naa()[..])
                .map(|l| l.volume().clone())
        }));
        luns.retain(|_, w| w.strong_count() > 0);
        luns.insert(volume.to_string(), Arc::downgrade(&l));
        Ok(l)
    }

    /// Creates a target node exporting volumes as LUNs. Returns its IQN.
    pub fn create_target_node(&self, spec: NodeSpec) -> Result<String, TargetError> {
        let name = self.full_name(&spec.name);
        if name.len() > 223 || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TargetError::Invalid(format!(
                "target name {name:?} is not a valid iSCSI name"
            )));
        }
        if spec.luns.is_empty() {
            return Err(TargetError::Invalid(
                "a target node needs at least one LUN".into(),
            ));
        }
        if spec.pg_ig_maps.is_empty() {
            return Err(TargetError::Invalid("pg_ig_maps must not be empty".into()));
        }
        if spec.queue_depth == 0 || spec.queue_depth > 4096 {
            return Err(TargetError::Invalid(format!(
                "queue_depth {} is not in 1..=4096",
                spec.queue_depth
            )));
        }
        spec.chap.validate()?;
        let mut ids: Vec<u64> = spec.luns.iter().map(|l| l.0).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != spec.luns.len() || ids.iter().any(|&i| i > 16383) {
            return Err(TargetError::Invalid(
                "LUN ids must be unique and at most 16383".into(),
            ));
        }
        {
            let cfg = self.cfg();
            if cfg.nodes.contains_key(&name) {
                return Err(TargetError::Exists(format!("target node {name}")));
            }
            for (pg, ig) in &spec.pg_ig_maps {
                if !cfg.portal_groups.contains_key(pg) {
                    return Err(TargetError::NotFound(format!("portal group {pg}")));
                }
                if !cfg.initiator_groups.contains_key(ig) {
                    return Err(TargetError::NotFound(format!("initiator group {ig}")));
                }
            }
            if spec.chap.group != 0 && !cfg.auth_groups.contains_key(&spec.chap.group) {
                return Err(TargetError::NotFound(format!(
                    "auth group {}",
                    spec.chap.group
                )));
            }
        }
        let mut luns = Vec::new();
        for (id, vol) in &spec.luns {
            let lun = self.lun_for(vol)?;
            for (pg, _) in &spec.pg_ig_maps {
                lun.add_port(*pg, *pg);
            }
            luns.push(NodeLun {
                id: *id,
                volume: vol.clone(),
                lun,
            });
        }
        let node = Arc::new(TargetNode {
            name: name.clone(),
            alias: spec.alias,
            pg_ig_maps: spec.pg_ig_maps,
            luns,
            queue_depth: spec.queue_depth,
            chap: spec.chap,
            header_digest: spec.header_digest,
            data_digest: spec.data_digest,
        });
        let mut cfg = self.cfg_mut();
        if cfg.nodes.contains_key(&name) {
            return Err(TargetError::Exists(format!("target node {name}")));
        }
        cfg.nodes.insert(name.clone(), node);
        log::info!("iscsi: target node {name} created");
        Ok(name)
    }

    /// Deletes a target node and closes its sessions.
    pub fn delete_target_node(&self, name: &str) -> Result<(), TargetError> {
        let full = self.full_name(name);
        let node = self
            .cfg_mut()
            .nodes
            .remove(&full)
            .ok_or_else(|| TargetError::NotFound(format!("target node {full}")))?;
        for s in self.sessions_of(&node) {
            s.kill();
        }
        log::info!("iscsi: target node {full} deleted");
        Ok(())
    }

    /// Convenience for the daemon: exports `volume` as LUN 0 of
    /// `NODE_BASE:<volume>` through portal group `pg` to initiator group
    /// `ig` (both must exist).
    pub fn export_volume(
        &self,
        volume: &str,
        pg: u16,
        ig: u16,
        queue_depth: u32,
    ) -> Result<String, TargetError> {
        self.create_target_node(NodeSpec {
            name: volume.to_string(),
            alias: volume.to_string(),
            pg_ig_maps: vec![(pg, ig)],
            luns: vec![(0, volume.to_string())],
            queue_depth,
            chap: ChapPolicy::default(),
            header_digest: false,
            data_digest: false,
        })
    }

    pub fn target_nodes(&self) -> Vec<Arc<TargetNode>> {
        self.cfg().nodes.values().cloned().collect()
    }

    pub fn target_node(&self, name: &str) -> Option<Arc<TargetNode>> {
        self.cfg().nodes.get(name).cloned()
    }

    pub fn portal_groups(&self) -> Vec<PortalGroup> {
        self.cfg().portal_groups.values().cloned().collect()
    }

    pub fn portal_group(&self, tag: u16) -> Option<PortalGroup> {
        self.cfg().portal_groups.get(&tag).cloned()
    }

    pub fn initiator_groups(&self) -> Vec<InitiatorGroup> {
        self.cfg().initiator_groups.values().cloned().collect()
    }

    pub fn auth_groups(&self) -> Vec<AuthGroup> {
        self.cfg().auth_groups.values().cloned().collect()
    }

    pub fn discovery_chap(&self) -> ChapPolicy {
        self.cfg().discovery_chap
    }

    pub fn connections(&self) -> Vec<ConnectionInfo> {
        lock(&self.conns).values().cloned().collect()
    }

    /// Whether `initiator` at `addr` may use `node` through portal group
    /// `pg`; returns the initiator group that lets it in.
    pub fn authorize(
        &self,
        node: &TargetNode,
        pg: u16,
        initiator: &str,
        addr: IpAddr,
    ) -> Option<InitiatorGroup> {
        let cfg = self.cfg();
        for (p, ig) in &node.pg_ig_maps {
            if *p != pg {
                continue;
            }
            let Some(g) = cfg.initiator_groups.get(ig) else {
                continue;
            };
            if ig_allows(g, initiator, addr) {
                return Some(g.clone());
            }
        }
        None
    }

    /// Looks up a CHAP secret by user in `group` (0: every group).
    pub fn chap_secret(&self, group: u32, user: &str) -> Option<Secret> {
        let cfg = self.cfg();
        cfg.auth_groups
            .values()
            .filter(|g| group == 0 || g.tag == group)
            .flat_map(|g| g.secrets.iter())
            .find(|s| s.user == user)
            .cloned()
    }

    /// SendTargets: the nodes `initiator` may see, with their addresses.
    /// `local` replaces wildcard portal hosts.
    pub fn send_targets(
        &self,
        initiator: &str,
        addr: IpAddr,
        local: SocketAddr,
        only: Option<&str>,
    ) -> Vec<(String, String)> {
        let cfg = self.cfg();
        let mut out = Vec::new();
        for node in cfg.nodes.values() {
            if only.is_some_and(|o| o != node.name) {
                continue;
            }
            let mut addrs = Vec::new();
            for (pg, ig) in &node.pg_ig_maps {
                let (Some(p), Some(g)) = (cfg.portal_groups.get(pg), cfg.initiator_groups.get(ig))
                else {
                    continue;
                };
                if p.private || !ig_allows(g, initiator, addr) {
                    continue;
                }
                for b in &p.bound {
                    let ip = if b.ip().is_unspecified() {
                        local.ip()
                    } else {
                        b.ip()
                    };
                    let a = match ip {
                        IpAddr::V4(v) => format!("{v}:{},{pg}", b.port()),
                        IpAddr::V6(v) => format!("[{v}]:{},{pg}", b.port()),
                    };
                    if !addrs.contains(&a) {
                        addrs.push(a);
                    }
                }
            }
            if !addrs.is_empty() {
                out.push(("TargetName".to_string(), node.name.clone()));
                for a in addrs {
                    out.push(("TargetAddress".to_string(), a));
                }
            }
        }
        out
    }

    // --- sessions, used by the login and the connections ---

    pub(crate) fn alloc_tsih(&self) -> u16 {
        let sessions = lock(&self.sessions);
        loop {
            let t = self.next_tsih.fetch_add(1, Ordering::Relaxed);
            if t != 0 && !sessions.contains_key(&t) {
                return t;
            }
        }
    }

    pub(crate) fn add_session(&self, s: Arc<Session>) {
        lock(&self.sessions).insert(s.tsih, s);
    }

    pub(crate) fn remove_session(&self, tsih: u16) {
        lock(&self.sessions).remove(&tsih);
    }

    /// Removes `s` if it is still the session registered under its TSIH.
    pub(crate) fn remove_session_if(&self, s: &Arc<Session>) {
        let mut sessions = lock(&self.sessions);
        if sessions.get(&s.tsih).is_some_and(|x| Arc::ptr_eq(x, s)) {
            sessions.remove(&s.tsih);
        }
    }

    pub(crate) fn session(&self, tsih: u16) -> Option<Arc<Session>> {
        lock(&self.sessions).get(&tsih).cloned()
    }

    /// The session a new login would reinstate: same initiator, ISID,
    /// target and portal group (RFC 7143 6.3.5).
    pub(crate) fn find_session(
        &self,
        initiator: &str,
        isid: [u8; 6],
        target: Option<&str>,
        tpgt: u16,
    ) -> Option<Arc<Session>> {
        lock(&self.sessions)
            .values()
            .find(|s| {
                s.isid == isid
                    && s.tpgt == tpgt
                    && s.initiator_name.eq_ignore_ascii_case(initiator)
                    && s.node().map(|n| n.name.as_str()) == target
            })
            .cloned()
    }

    pub(crate) fn sessions_of(&self, node: &Arc<TargetNode>) -> Vec<Arc<Session>> {
        lock(&self.sessions)
            .values()
            .filter(|s| {
                s.node()
                    .is_some_and(|n| Arc::ptr_eq(n, node) || n.name == node.name)
            })
            .cloned()
            .collect()
    }

    /// Takes `bytes` from the target-wide buffer budget; `false` if full.
    pub(crate) fn reserve_buffer(&self, bytes: usize) -> bool {
        let limit = self.options.max_buffered_total;
        self.buffered
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b + bytes <= limit).then_some(b + bytes)
            })
            .is_ok()
    }

    pub(crate) fn release_buffer(&self, bytes: usize) {
        self.buffered.fetch_sub(bytes, Ordering::AcqRel);
    }

    pub(crate) fn conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn register_conn(&self, info: ConnectionInfo) {
        lock(&self.conns).insert(info.id, info);
    }

    pub(crate) fn unregister_conn(&self, id: u64) {
        lock(&self.conns).remove(&id);
    }

    /// Closes every session and stops listening (daemon shutdown).
    pub fn shutdown(&self) {
        let servers = std::mem::take(&mut *lock(&self.servers));
        drop(servers);
        let sessions: Vec<Arc<Session>> = lock(&self.sessions).values().cloned().collect();
        for s in sessions {
            s.kill();
        }
    }

    /// Live sessions (for tests and metrics).
    pub fn session_count(&self) -> usize {
        lock(&self.sessions).len()
    }
}

/// Whether an initiator group admits `initiator` from `addr`: a "!name"
/// entry denies, "ANY" or the name (case-insensitive, RFC 3722) allows;
/// the address must be in one of the netmasks.
fn ig_allows(g: &InitiatorGroup, initiator: &str, addr: IpAddr) -> bool {
    if g.initiators.iter().any(|i| {
        i.strip_prefix('!')
            .is_some_and(|d| d.eq_ignore_ascii_case(initiator) || d == "ANY")
    }) {
        return false;
    }
    let name_ok = g
        .initiators
        .iter()
        .any(|i| i == "ANY" || i.eq_ignore_ascii_case(initiator));
    let addr_ok = g
        .netmasks
        .iter()
        .any(|m| m == "ANY" || parse_cidr(m).is_some_and(|(net, bits)| in_net(addr, net, bits)));
    name_ok && addr_ok
}

fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let s = s.trim_start_matches('[');
    let (a, bits) = match s.split_once('/') {
        Some((a, b)) => (a.trim_end_matches(']'), b.parse::<u8>().ok()?),
        None => {
            let a: IpAddr = s.trim_end_matches(']').parse().ok()?;
            return Some((a, if a.is_ipv4() { 32 } else { 128 }));
        }
    };
    let ip: IpAddr = a.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((ip, bits))
}

fn in_net(addr: IpAddr, net: IpAddr, bits: u8) -> bool {
    let to128 = |a: IpAddr| -> (u128, u8) {
        match a {
            IpAddr::V4(v) => (u32::from(v) as u128, 32),
            IpAddr::V6(v) => match v.to_ipv4_mapped() {
                Some(v4) => (u32::from(v4) as u128, 32),
                None => (u128::from(v), 128),
            },
        }
    };
    let (a, wa) = to128(addr);
    let (n, wn) = to128(net);
    // A v4-mapped IPv6 network counts its prefix over 128 bits.
    let bits = match net {
        IpAddr::V6(v) if v.to_ipv4_mapped().is_some() => bits.saturating_sub(96),
        _ => bits,
    };
    if wa != wn || bits as u32 > wa as u32 {
        return false;
    }
    if bits == 0 {
        return true;
    }
    let shift = wa as u32 - bits as u32;
    (a >> shift) == (n >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ig(inits: &[&str], masks: &[&str]) -> InitiatorGroup {
        InitiatorGroup {
            tag: 1,
            initiators: inits.iter().map(|s| s.to_string()).collect(),
            netmasks: masks.iter().map(|s| s.to_string()).collect(),
            chap: ChapPolicy::default(),
        }
    }

    #[test]
    fn acl_by_name_and_network() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(ig_allows(&ig(&["ANY"], &["ANY"]), "iqn.x", lo));
        assert!(ig_allows(&ig(&["IQN.X"], &["127.0.0.0/8"]), "iqn.x", lo));
        assert!(!ig_allows(&ig(&["iqn.y"], &["ANY"]), "iqn.x", lo));
        assert!(!ig_allows(&ig(&["ANY"], &["10.0.0.0/8"]), "iqn.x", lo));
        assert!(!ig_allows(&ig(&["ANY", "!iqn.x"], &["ANY"]), "iqn.x", lo));
        assert!(ig_allows(
            &ig(&["ANY"], &["::ffff:127.0.0.1/128"]),
            "iqn.x",
            lo
        ));
        assert!(parse_cidr("300.1.1.1/8").is_none());
        assert!(parse_cidr("10.0.0.0/33").is_none());
    }

    #[test]
    fn chap_policy_rules() {
        assert!(ChapPolicy {
            disable: true,
            require: true,
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(ChapPolicy {
            mutual: true,
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(ChapPolicy {
            require: true,
            mutual: true,
            ..Default::default()
        }
        .validate()
        .is_ok());
    }
}
