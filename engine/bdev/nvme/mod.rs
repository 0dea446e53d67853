//! The user-space NVMe driver (issue 9): a controller bound to vfio-pci,
//! driven from the reactors without the kernel.
//!
//! A device is named `nvme://PCI-ADDRESS/NSID`, e.g. `nvme://0000:00:04.0/1`,
//! optionally with settings after `?`:
//! `nvme://0000:00:04.0/1?io_timeout_ms=1000&depth=64&queues=8&interrupts=0`
//! (the first open of a controller fixes them for every namespace of it).
//!
//! | module | job |
//! |---|---|
//! | [`regs`] | controller registers, CAP/CC/CSTS |
//! | [`cmd`] | command and completion formats, status names |
//! | [`mem`] | DMA memory and IOVA translation (IOMMU or physical) |
//! | [`prp`] | PRP lists and SGLs |
//! | [`queue`] | one queue pair: rings, command ids, doorbells |
//! | [`controller`] | bring-up, admin queue, reset, shutdown |
//! | [`namespace`] | Identify Namespace, size and format checks |
//! | [`bdev`] | the [`crate::bdev::BlockDevice`]: queue pair per reactor, timeouts |
//!
//! Controllers are shared by the namespaces opened on them (one VFIO group
//! can only be opened once per process) and shut down (CC.SHN) when the
//! last user is gone, by [`shutdown_all`], and at process exit.

pub mod bdev;
pub mod cmd;
pub mod controller;
pub mod mem;
pub mod namespace;
pub mod prp;
pub mod queue;
pub mod regs;

pub use bdev::NvmeDevice;
pub use controller::{Controller, State};

use ferrite_sys::pci::PciAddress;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::Duration;

/// Driver settings, per controller.
#[derive(Clone, Debug)]
pub struct Options {
    /// A request not complete after this long is aborted, then the
    /// controller reset.
    pub io_timeout: Duration,
    /// Limit for one admin command.
    pub admin_timeout: Duration,
    /// Commands in flight per I/O queue pair.
    pub queue_depth: u16,
    /// I/O queues asked for (one per reactor, one shared).
    pub max_io_queues: u16,
    /// MSI-X interrupts to wake sleeping reactors: `None` uses them with
    /// adaptive polling and not with busy polling.
    pub interrupts: Option<bool>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            io_timeout: Duration::from_secs(30),
            admin_timeout: Duration::from_secs(10),
            queue_depth: 255,
            max_io_queues: 64,
            interrupts: None,
        }
    }
}

/// A parsed device name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub addr: PciAddress,
    pub nsid: u32,
    /// `key=value` settings after `?`.
    pub settings: Vec<(String, String)>,
}

impl Spec {
    /// Parses `nvme://0000:00:04.0/1[?k=v&...]`.
    pub fn parse(s: &str) -> Result<Spec, String> {
        let rest = s.strip_prefix("nvme://").ok_or_else(|| {
            format!("'{s}': an NVMe device is named nvme://PCI-ADDRESS/NAMESPACE")
        })?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bdf, ns) = path
            .split_once('/')
            .ok_or_else(|| format!("'{s}': no namespace (nvme://{path}/1 for namespace 1)"))?;
        let addr = PciAddress::parse(bdf).map_err(|e| format!("'{s}': {e}"))?;
        let nsid: u32 = ns
            .parse()
            .map_err(|_| format!("'{s}': namespace '{ns}' is not a number"))?;
        let mut settings = Vec::new();
        for kv in query.split('&').filter(|x| !x.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("'{s}': setting '{kv}' is not key=value"))?;
            settings.push((k.to_string(), v.to_string()));
        }
        Ok(Spec {
            addr,
            nsid,
            settings,
        })
    }

    /// The driver settings: defaults overridden by the spec's.
    pub fn options(&self) -> Result<Options, String> {
        let mut o = Options::default();
        for (k, v) in &self.settings {
            let num = |v: &str| -> Result<u64, String> {
                v.parse::<u64>()
                    .map_err(|_| format!("setting {k}='{v}' is not a number"))
            };
            match k.as_str() {
                "io_timeout_ms" => o.io_timeout = Duration::from_millis(num(v)?.max(1)),
                "admin_timeout_ms" => o.admin_timeout = Duration::from_millis(num(v)?.max(1)),
                "depth" => o.queue_depth = num(v)?.clamp(1, 4095) as u16,
                "queues" => o.max_io_queues = num(v)?.clamp(1, 1024) as u16,
                "interrupts" => o.interrupts = Some(num(v)? != 0),
                _ => return Err(format!("unknown setting '{k}' (io_timeout_ms, admin_timeout_ms, depth, queues, interrupts)")),
            }
        }
        Ok(o)
    }
}

static CONTROLLERS: Mutex<Option<HashMap<PciAddress, Weak<Controller>>>> = Mutex::new(None);
static AT_EXIT: Once = Once::new();

extern "C" fn shutdown_at_exit() {
    shutdown_all();
}

/// The controller at `addr`, attached on first use.
pub fn controller(addr: PciAddress, opts: Options) -> io::Result<Arc<Controller>> {
    let mut reg = CONTROLLERS.lock().unwrap_or_else(|e| e.into_inner());
    let map = reg.get_or_insert_with(HashMap::new);
    if let Some(c) = map.get(&addr).and_then(|w| w.upgrade()) {
        if c.unusable().is_none() {
            return Ok(c);
        }
        return Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            format!(
                "{}: {} and still in use; close its devices and stop its reactors to attach it again",
                c.name,
                c.unusable().map(|e| e.to_string()).unwrap_or_default()
            ),
        ));
    }
    let c = Controller::attach(addr, opts)?;
    map.insert(addr, Arc::downgrade(&c));
    AT_EXIT.call_once(|| {
        if let Err(e) = ferrite_sys::exit::at_exit(shutdown_at_exit) {
            log::warn!("nvme: no shutdown at exit: {e}");
        }
    });
    Ok(c)
}

/// Opens `nvme://PCI-ADDRESS/NSID[?settings]`.
pub fn open(spec: &str) -> io::Result<Arc<NvmeDevice>> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    let s = Spec::parse(spec).map_err(bad)?;
    let opts = s.options().map_err(|e| bad(format!("'{spec}': {e}")))?;
    let ctrl = controller(s.addr, opts)?;
    let ns = namespace::Namespace::identify(&ctrl, s.nsid)?;
    log::info!(
        "{}: namespace {} of {} blocks of {} bytes ({} MiB) opened as {spec}",
        ctrl.name,
        ns.nsid,
        ns.blocks,
        ns.lba_size,
        ns.bytes() >> 20
    );
    Ok(Arc::new(NvmeDevice::new(ctrl, ns, spec.to_string())))
}

/// Shuts every attached controller down (normal shutdown notification);
/// their devices fail every request afterwards. For process exit and
/// signal handling; also registered with `atexit`.
pub fn shutdown_all() {
    let live: Vec<Arc<Controller>> = match CONTROLLERS.try_lock() {
        Ok(reg) => reg
            .as_ref()
            .map(|m| m.values().filter_map(|w| w.upgrade()).collect())
            .unwrap_or_default(),
        Err(_) => return,
    };
    for c in live {
        c.shutdown();
    }
}
