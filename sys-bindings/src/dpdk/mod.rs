//! DPDK (feature `dpdk`): the EAL, mbuf pools, ethdev ports and their
//! queues, and mbufs, behind safe wrappers. The fast path (rx/tx bursts,
//! mbuf alloc/free/data) goes through a small C shim because DPDK writes it
//! as static inline functions and macros.
//!
//! Lifetimes: DPDK frees everything at `rte_eal_cleanup`, after which any
//! mbuf, pool or queue is dangling. So [`Eal::cleanup`] refuses while a
//! [`Mempool`] or [`QueuePair`] handle or an [`Mbuf`] is alive (they are
//! counted), and pools are never freed one by one (the EAL frees them).
//! After cleanup no EAL can start again in this process (DPDK's rule).

mod ffi;
mod mbuf;
pub mod port;

pub use mbuf::{Mbuf, Mempool, Segments};
pub use port::{LinkStatus, PortConfig, PortInfo, PortStats, QueuePair};

use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int};
use std::sync::atomic::{AtomicIsize, AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;

/// The bytes DPDK keeps in front of each mbuf's data.
pub const PKTMBUF_HEADROOM: u32 = ffi::RTE_PKTMBUF_HEADROOM;

/// A failed DPDK call: what was attempted, and DPDK's errno and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpdkError {
    pub what: String,
    pub errno: i32,
    pub text: String,
}

impl std::fmt::Display for DpdkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.errno == 0 {
            write!(f, "{}: {}", self.what, self.text)
        } else {
            write!(f, "{}: {} (errno {})", self.what, self.text, self.errno)
        }
    }
}

impl std::error::Error for DpdkError {}

impl DpdkError {
    /// An error whose cause is `errno` (positive) as DPDK describes it.
    pub(crate) fn from_errno(what: impl Into<String>, errno: i32) -> Self {
        let errno = errno.abs();
        Self {
            what: what.into(),
            errno,
            text: strerror(errno),
        }
    }

    /// An error from the current `rte_errno`.
    pub(crate) fn last(what: impl Into<String>) -> Self {
        Self::from_errno(what, rte_errno())
    }

    pub(crate) fn msg(what: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            errno: 0,
            text: text.into(),
        }
    }
}

/// DPDK's text for an errno value (its own codes included).
pub fn strerror(errno: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local
    // NUL-terminated string for any value.
    let p = unsafe { ffi::rte_strerror(errno as c_int) };
    if p.is_null() {
        return format!("error {errno}");
    }
    // SAFETY: non-null and NUL-terminated (above); copied at once.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The calling thread's `rte_errno`.
pub fn rte_errno() -> i32 {
    // SAFETY: reads a thread-local integer.
    unsafe { ffi::ferrite_dpdk_errno() }
}

const EAL_NEVER: u8 = 0;
const EAL_UP: u8 = 1;
const EAL_GONE: u8 = 2;

/// Whether the EAL runs in this process: never started, up, cleaned up.
static EAL_STATE: AtomicU8 = AtomicU8::new(EAL_NEVER);
/// Live [`Mempool`] and [`QueuePair`] handles.
pub(crate) static LIVE_HANDLES: AtomicUsize = AtomicUsize::new(0);
/// Live [`Mbuf`] handles (a chain counts once).
pub(crate) static LIVE_MBUFS: AtomicIsize = AtomicIsize::new(0);
/// Ports started through [`port::start`], stopped and closed at cleanup.
pub(crate) static STARTED_PORTS: Mutex<Vec<u16>> = Mutex::new(Vec::new());

pub(crate) fn eal_up() -> Result<(), DpdkError> {
    match EAL_STATE.load(Ordering::Acquire) {
        EAL_UP => Ok(()),
        EAL_GONE => Err(DpdkError::msg("DPDK", "the EAL was cleaned up")),
        _ => Err(DpdkError::msg("DPDK", "the EAL is not initialised")),
    }
}

/// The process's EAL. One per process, ever: DPDK cannot start twice.
#[derive(Debug)]
pub struct Eal {
    cleaned: bool,
}

impl Eal {
    /// `rte_eal_init` with `args` (without the program name). The calling
    /// thread becomes the EAL's main lcore (and is pinned as `--lcores`
    /// says); the EAL's own threads start from it.
    pub fn init(args: &[String]) -> Result<Eal, DpdkError> {
        if EAL_STATE
            .compare_exchange(EAL_NEVER, EAL_UP, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(DpdkError::msg(
                "rte_eal_init",
                "the EAL was already initialised in this process (DPDK allows one)",
            ));
        }
        let mut owned: Vec<CString> = Vec::with_capacity(args.len() + 1);
        owned.push(CString::new("ferrite").expect("no NUL"));
        for a in args {
            match CString::new(a.as_str()) {
                Ok(c) => owned.push(c),
                Err(_) => {
                    EAL_STATE.store(EAL_GONE, Ordering::Release);
                    return Err(DpdkError::msg(
                        "rte_eal_init",
                        format!("argument {a:?} contains a NUL byte"),
                    ));
                }
            }
        }
        // rte_eal_init may permute argv; it keeps pointers into the strings
        // (e.g. for --file-prefix), so they are leaked for the process.
        let owned: &'static [CString] = Vec::leak(owned);
        let mut argv: Vec<*mut c_char> = owned.iter().map(|c| c.as_ptr() as *mut c_char).collect();
        let argv: &'static mut [*mut c_char] = Vec::leak(std::mem::take(&mut argv));
        // SAFETY: argv holds argc valid NUL-terminated strings that live
        // for the rest of the process; the state flag makes this the only
        // call in the process.
        let r = unsafe { ffi::rte_eal_init(argv.len() as c_int, argv.as_mut_ptr()) };
        if r < 0 {
            let e = DpdkError::last(format!("rte_eal_init {args:?}"));
            // DPDK forbids a second init even after a failed one.
            EAL_STATE.store(EAL_GONE, Ordering::Release);
            return Err(e);
        }
        Ok(Eal { cleaned: false })
    }

    /// Stops and closes the started ports and releases everything the EAL
    /// holds (hugepage memory, runtime files it tracks). Refuses while DPDK
    /// objects are still in use: they would dangle.
    pub fn cleanup(mut self) -> Result<(), DpdkError> {
        self.cleanup_inner()
    }

    fn cleanup_inner(&mut self) -> Result<(), DpdkError> {
        if self.cleaned {
            return Ok(());
        }
        let handles = LIVE_HANDLES.load(Ordering::Acquire);
        let mbufs = LIVE_MBUFS.load(Ordering::Acquire);
        if handles != 0 || mbufs != 0 {
            return Err(DpdkError::msg(
                "rte_eal_cleanup",
                format!("{handles} pool/queue handle(s) and {mbufs} mbuf(s) are still in use"),
            ));
        }
        self.cleaned = true;
        let ports = std::mem::take(&mut *STARTED_PORTS.lock().unwrap_or_else(|e| e.into_inner()));
        for p in ports {
            port::stop_and_close(p);
        }
        EAL_STATE.store(EAL_GONE, Ordering::Release);
        // SAFETY: no handle into DPDK memory is alive (checked above) and
        // the state flag stops new ones from being made.
        let r = unsafe { ffi::rte_eal_cleanup() };
        if r < 0 {
            return Err(DpdkError::from_errno("rte_eal_cleanup", r));
        }
        Ok(())
    }
}

impl Drop for Eal {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup_inner() {
            eprintln!("ferrite-sys: DPDK left as it is at exit: {e}");
        }
    }
}

/// Registers the calling (non-EAL) thread with the EAL so it gets an lcore
/// id (per-lcore mempool caches). Optional; returns the error DPDK gives.
pub fn register_thread() -> Result<(), DpdkError> {
    eal_up()?;
    // SAFETY: no preconditions beyond an initialised EAL (checked).
    let r = unsafe { ffi::rte_thread_register() };
    if r < 0 {
        return Err(DpdkError::last("rte_thread_register"));
    }
    Ok(())
}

/// Counts of live DPDK handles (for tests and exit diagnostics).
pub fn live_objects() -> (usize, isize) {
    (
        LIVE_HANDLES.load(Ordering::Relaxed),
        LIVE_MBUFS.load(Ordering::Relaxed),
    )
}
