//! Subsystems: an NQN, its namespaces (volumes), the hosts allowed to
//! connect, the listeners it is reachable through, and its live
//! controllers. Ferrite names the subsystem of volume `v`
//! `nqn.2026-11.io.ferrite:v`; every gateway exporting `v` serves the same
//! subsystem (same NQN, serial and namespace ids), so a host sees each
//! gateway as one more path to it.

use super::controller::Controller;
use super::spec;
use super::NvmfError;
use ferrite_engine::volume::BlockVolume;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock, Weak};

/// A transport address as SPDK's RPCs spell it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenAddress {
    /// Always "TCP" here.
    pub trtype: String,
    /// "IPv4" or "IPv6".
    pub adrfam: String,
    pub traddr: String,
    pub trsvcid: String,
}

impl ListenAddress {
    pub fn tcp(traddr: impl Into<String>, trsvcid: impl fmt::Display) -> Self {
        let traddr = traddr.into();
        let adrfam = if traddr.contains(':') { "IPv6" } else { "IPv4" }.to_string();
        Self {
            trtype: "TCP".into(),
            adrfam,
            traddr,
            trsvcid: trsvcid.to_string(),
        }
    }

    pub fn from_socket_addr(a: std::net::SocketAddr) -> Self {
        Self::tcp(a.ip().to_string(), a.port())
    }
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}:{}", self.trtype, self.traddr, self.trsvcid)
    }
}

/// A volume exported as a namespace.
pub struct Namespace {
    pub nsid: u32,
    /// The volume's name (SPDK's `bdev_name`).
    pub bdev_name: String,
    pub volume: Arc<dyn BlockVolume>,
    /// Stable identifiers: the same on every gateway, so that Linux
    /// multipath joins the paths (it compares them).
    pub nguid: [u8; 16],
    pub uuid: [u8; 16],
    pub eui64: Option<[u8; 8]>,
    pub anagrpid: u32,
}

/// What a subsystem is created with (SPDK's `nvmf_create_subsystem`).
#[derive(Debug, Clone)]
pub struct SubsystemOpts {
    pub nqn: String,
    pub serial_number: String,
    pub model_number: String,
    pub allow_any_host: bool,
    /// 0: the default (32).
    pub max_namespaces: u32,
    /// Ferrite reports ANA by default: every gateway is a path.
    pub ana_reporting: bool,
    /// Controller ids are allocated from this range. Gateways that export
    /// the same subsystem must use disjoint ranges: Linux refuses a second
    /// controller with an id it already has in that subsystem.
    pub min_cntlid: u16,
    pub max_cntlid: u16,
}

impl SubsystemOpts {
    pub fn new(nqn: impl Into<String>) -> Self {
        Self {
            nqn: nqn.into(),
            serial_number: String::new(),
            model_number: "Ferrite volume".into(),
            allow_any_host: false,
            max_namespaces: 0,
            ana_reporting: true,
            min_cntlid: 1,
            max_cntlid: 0xffef,
        }
    }
}

pub const DEFAULT_MAX_NAMESPACES: u32 = 32;

struct Access {
    allow_any_host: bool,
    hosts: BTreeSet<String>,
    listeners: BTreeSet<ListenAddress>,
}

/// One NVM (or the discovery) subsystem.
pub struct Subsystem {
    pub nqn: String,
    pub serial_number: String,
    pub model_number: String,
    pub max_namespaces: u32,
    pub ana_reporting: bool,
    pub min_cntlid: u16,
    pub max_cntlid: u16,
    discovery: bool,
    access: RwLock<Access>,
    namespaces: RwLock<BTreeMap<u32, Arc<Namespace>>>,
    controllers: Mutex<Controllers>,
}

struct Controllers {
    live: BTreeMap<u16, Slot>,
    next: u16,
}

/// A controller id is reserved while its Connect completes, then live.
enum Slot {
    Reserved,
    Live(Weak<Controller>),
}

impl Slot {
    fn get(&self) -> Option<Arc<Controller>> {
        match self {
            Slot::Reserved => None,
            Slot::Live(w) => w.upgrade(),
        }
    }
}

impl Subsystem {
    pub(crate) fn new(o: SubsystemOpts) -> Result<Self, NvmfError> {
        validate_nqn(&o.nqn)?;
        if o.serial_number.len() > 20 || !o.serial_number.is_ascii() {
            return Err(NvmfError::Invalid(format!(
                "serial number '{}' is not at most 20 ASCII characters",
                o.serial_number
            )));
        }
        if o.model_number.len() > 40 || !o.model_number.is_ascii() {
            return Err(NvmfError::Invalid(format!(
                "model number '{}' is not at most 40 ASCII characters",
                o.model_number
            )));
        }
        if o.min_cntlid == 0 || o.min_cntlid > o.max_cntlid || o.max_cntlid > 0xffef {
            return Err(NvmfError::Invalid(format!(
                "controller id range {}..={} is not within 1..=65519",
                o.min_cntlid, o.max_cntlid
            )));
        }
        let max_namespaces = if o.max_namespaces == 0 {
            DEFAULT_MAX_NAMESPACES
        } else {
            o.max_namespaces
        };
        if max_namespaces > 1024 {
            return Err(NvmfError::Invalid(format!(
                "max_namespaces {max_namespaces} is above 1024"
            )));
        }
        Ok(Self {
            discovery: o.nqn == spec::DISCOVERY_NQN,
            serial_number: o.serial_number,
            model_number: o.model_number,
            max_namespaces,
            ana_reporting: o.ana_reporting,
            min_cntlid: o.min_cntlid,
            max_cntlid: o.max_cntlid,
            access: RwLock::new(Access {
                allow_any_host: o.allow_any_host,
                hosts: BTreeSet::new(),
                listeners: BTreeSet::new(),
            }),
            namespaces: RwLock::new(BTreeMap::new()),
            controllers: Mutex::new(Controllers {
                live: BTreeMap::new(),
                next: o.min_cntlid,
            }),
            nqn: o.nqn,
        })
    }

    /// The discovery subsystem: any host, no namespaces.
    pub(crate) fn discovery() -> Self {
        let mut o = SubsystemOpts::new(spec::DISCOVERY_NQN);
        o.allow_any_host = true;
        o.ana_reporting = false;
        o.model_number = "Ferrite discovery".into();
        Self::new(o).expect("the discovery NQN is valid")
    }

    pub fn is_discovery(&self) -> bool {
        self.discovery
    }

    pub fn allow_any_host(&self) -> bool {
        self.access
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .allow_any_host
    }

    pub fn set_allow_any_host(&self, on: bool) {
        self.access
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .allow_any_host = on;
    }

    pub fn hosts(&self) -> Vec<String> {
        self.access
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .hosts
            .iter()
            .cloned()
            .collect()
    }

    pub fn add_host(&self, host: &str) -> Result<(), NvmfError> {
        validate_nqn(host)?;
        if !self
            .access
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .hosts
            .insert(host.to_string())
        {
            return Err(NvmfError::Exists(format!(
                "host {host} is already allowed on {}",
                self.nqn
            )));
        }
        Ok(())
    }

    pub fn remove_host(&self, host: &str) -> Result<(), NvmfError> {
        if !self
            .access
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .hosts
            .remove(host)
        {
            return Err(NvmfError::NotFound(format!(
                "host {host} is not on the list of {}",
                self.nqn
            )));
        }
        Ok(())
    }

    /// Whether `hostnqn` may connect.
    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        let a = self.access.read().unwrap_or_else(|e| e.into_inner());
        a.allow_any_host || a.hosts.contains(hostnqn)
    }

    pub fn listeners(&self) -> Vec<ListenAddress> {
        self.access
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .listeners
            .iter()
            .cloned()
            .collect()
    }

    pub(crate) fn add_listener(&self, a: ListenAddress) -> bool {
        self.access
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .listeners
            .insert(a)
    }

    pub(crate) fn remove_listener(&self, a: &ListenAddress) -> bool {
        self.access
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .listeners
            .remove(a)
    }

    /// Whether connections arriving on listener `a` may reach this subsystem.
    pub fn reachable_through(&self, a: &ListenAddress) -> bool {
        self.discovery
            || self
                .access
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .listeners
                .contains(a)
    }

    pub fn namespace(&self, nsid: u32) -> Option<Arc<Namespace>> {
        self.namespaces
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&nsid)
            .cloned()
    }

    pub fn namespaces(&self) -> Vec<Arc<Namespace>> {
        self.namespaces
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Adds a namespace; `nsid` 0 takes the lowest free id.
    pub(crate) fn add_namespace(&self, mut ns: Namespace) -> Result<u32, NvmfError> {
        if self.discovery {
            return Err(NvmfError::Invalid(
                "the discovery subsystem has no namespaces".into(),
            ));
        }
        let mut map = self.namespaces.write().unwrap_or_else(|e| e.into_inner());
        if ns.nsid == 0 {
            ns.nsid = (1..=self.max_namespaces)
                .find(|n| !map.contains_key(n))
                .ok_or_else(|| {
                    NvmfError::Invalid(format!(
                        "{} already has its maximum of {} namespaces",
                        self.nqn, self.max_namespaces
                    ))
                })?;
        }
        if ns.nsid > self.max_namespaces {
            return Err(NvmfError::Invalid(format!(
                "nsid {} is above max_namespaces {} of {}",
                ns.nsid, self.max_namespaces, self.nqn
            )));
        }
        if map.contains_key(&ns.nsid) {
            return Err(NvmfError::Exists(format!(
                "nsid {} already exists in {}",
                ns.nsid, self.nqn
            )));
        }
        if ns.anagrpid == 0 {
            ns.anagrpid = ns.nsid;
        }
        if ns.anagrpid > self.max_namespaces {
            return Err(NvmfError::Invalid(format!(
                "ANA group {} is above max_namespaces {}",
                ns.anagrpid, self.max_namespaces
            )));
        }
        let nsid = ns.nsid;
        map.insert(nsid, Arc::new(ns));
        Ok(nsid)
    }

    pub(crate) fn remove_namespace(&self, nsid: u32) -> Result<Arc<Namespace>, NvmfError> {
        self.namespaces
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&nsid)
            .ok_or_else(|| NvmfError::NotFound(format!("no namespace {nsid} in {}", self.nqn)))
    }

    /// Allocates a controller id in the subsystem's range (dynamic model).
    pub(crate) fn allocate_cntlid(&self) -> Option<u16> {
        let mut c = self.controllers.lock().unwrap_or_else(|e| e.into_inner());
        c.live
            .retain(|_, s| matches!(s, Slot::Reserved) || s.get().is_some());
        let span = (self.max_cntlid - self.min_cntlid) as u32 + 1;
        for _ in 0..span {
            let id = c.next;
            c.next = if c.next >= self.max_cntlid {
                self.min_cntlid
            } else {
                c.next + 1
            };
            if let std::collections::btree_map::Entry::Vacant(e) = c.live.entry(id) {
                e.insert(Slot::Reserved);
                return Some(id);
            }
        }
        None
    }

    pub(crate) fn register_controller(&self, ctrl: &Arc<Controller>) {
        self.controllers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .live
            .insert(ctrl.id, Slot::Live(Arc::downgrade(ctrl)));
    }

    pub(crate) fn unregister_controller(&self, id: u16) {
        self.controllers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .live
            .remove(&id);
    }

    pub fn controller(&self, id: u16) -> Option<Arc<Controller>> {
        self.controllers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .live
            .get(&id)
            .and_then(Slot::get)
    }

    pub fn controllers(&self) -> Vec<Arc<Controller>> {
        self.controllers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .live
            .values()
            .filter_map(Slot::get)
            .collect()
    }
}

/// Checks an NQN's form: `nqn.yyyy-mm.reverse.domain:...` or the UUID
/// form, at most 223 bytes (NVMe base spec 4.5).
pub fn validate_nqn(nqn: &str) -> Result<(), NvmfError> {
    if nqn.is_empty() || nqn.len() > spec::NQN_MAX_LEN {
        return Err(NvmfError::Invalid(format!(
            "NQN '{nqn}' is empty or longer than 223 bytes"
        )));
    }
    let b = nqn.as_bytes();
    let dated = b.len() > 12
        && nqn.starts_with("nqn.")
        && b[4..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'-'
        && b[9..11].iter().all(u8::is_ascii_digit)
        && b[11] == b'.';
    if !dated {
        return Err(NvmfError::Invalid(format!(
            "NQN '{nqn}' does not start with nqn.yyyy-mm."
        )));
    }
    if nqn.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(NvmfError::Invalid(format!(
            "NQN '{nqn}' contains spaces or control characters"
        )));
    }
    Ok(())
}

/// The subsystem NQN Ferrite gives a volume.
pub fn volume_nqn(volume: &str) -> String {
    format!("{}{volume}", spec::FERRITE_NQN_PREFIX)
}

/// A serial number derived from a volume's uuid: the same on every gateway.
pub fn serial_from_uuid(uuid: &[u8; 16]) -> String {
    uuid[..10].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nqn_forms() {
        assert!(validate_nqn("nqn.2026-11.io.ferrite:vol0").is_ok());
        assert!(validate_nqn(spec::DISCOVERY_NQN).is_ok());
        assert!(validate_nqn(
            "nqn.2014-08.org.nvmexpress:uuid:6b1b2fd1-7c86-4e4b-9a33-6f2f5b9c0a11"
        )
        .is_ok());
        assert!(validate_nqn("iqn.2026-11.io.ferrite:x").is_err());
        assert!(validate_nqn("nqn.2026-11.io.ferrite:a b").is_err());
        assert!(validate_nqn(&format!("nqn.2026-11.{}", "x".repeat(220))).is_err());
    }

    #[test]
    fn cntlid_allocation_wraps_and_skips_live_ids() {
        let mut o = SubsystemOpts::new("nqn.2026-11.io.ferrite:t");
        o.min_cntlid = 10;
        o.max_cntlid = 11;
        let s = Subsystem::new(o).unwrap();
        assert_eq!(s.allocate_cntlid(), Some(10));
        assert_eq!(s.allocate_cntlid(), Some(11));
        assert_eq!(s.allocate_cntlid(), None, "both reserved");
        s.unregister_controller(10);
        assert_eq!(s.allocate_cntlid(), Some(10));
    }
}
