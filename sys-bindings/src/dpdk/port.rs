//! Ethdev ports: information, configuration, queues, start, link, stats;
//! and the per-thread queue pair handle that the fast path uses.

use super::mbuf::{Mbuf, Mempool};
use super::{eal_up, ffi, DpdkError, LIVE_HANDLES, LIVE_MBUFS, STARTED_PORTS};
use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::CStr;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

/// What a port is and can do.
#[derive(Debug, Clone)]
pub struct PortInfo {
    pub port: u16,
    /// The device name (e.g. `net_memif0`).
    pub name: String,
    pub driver: String,
    pub max_rx_queues: u16,
    pub max_tx_queues: u16,
    /// The largest frame the driver says it receives.
    pub max_rx_pktlen: u32,
    pub max_mtu: u16,
    /// Whether it transmits chained (multi-segment) mbufs.
    pub tx_multi_seg: bool,
    pub socket: i32,
}

/// Link state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkStatus {
    pub up: bool,
    pub speed_mbps: u32,
}

/// The driver's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    pub ipackets: u64,
    pub opackets: u64,
    pub ibytes: u64,
    pub obytes: u64,
    pub imissed: u64,
    pub ierrors: u64,
    pub oerrors: u64,
    pub rx_nombuf: u64,
}

/// How to configure a port.
#[derive(Debug, Clone)]
pub struct PortConfig {
    pub rx_queues: u16,
    pub tx_queues: u16,
    /// `rxmode.mtu` (0: the driver's default).
    pub mtu: u32,
    /// Ask for multi-segment transmit (only if the port has it).
    pub tx_multi_seg: bool,
}

fn multi_segs() -> u64 {
    // SAFETY: returns a constant.
    unsafe { ffi::ferrite_dpdk_tx_offload_multi_segs() }
}

fn check_port(port: u16) -> Result<(), DpdkError> {
    eal_up()?;
    // SAFETY: a plain query on an initialised EAL.
    if unsafe { ffi::rte_eth_dev_is_valid_port(port) } == 0 {
        return Err(DpdkError::msg(format!("port {port}"), "no such port"));
    }
    Ok(())
}

/// The ports the EAL probed (vdevs and PCI devices).
pub fn port_ids() -> Vec<u16> {
    if eal_up().is_err() {
        return Vec::new();
    }
    (0..ffi::RTE_MAX_ETHPORTS as u16)
        // SAFETY: a plain query on an initialised EAL.
        .filter(|&p| unsafe { ffi::rte_eth_dev_is_valid_port(p) } != 0)
        .collect()
}

fn c_str(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: DPDK hands out NUL-terminated strings that live as long as the
    // device; copied at once.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

pub fn info(port: u16) -> Result<PortInfo, DpdkError> {
    check_port(port)?;
    let mut di = ffi::rte_eth_dev_info::default();
    // SAFETY: `di` is a writable rte_eth_dev_info for the call.
    let r = unsafe { ffi::rte_eth_dev_info_get(port, &mut di) };
    if r != 0 {
        return Err(DpdkError::from_errno(
            format!("port {port}: device info"),
            r,
        ));
    }
    let mut name = [0 as std::os::raw::c_char; ffi::RTE_ETH_NAME_MAX_LEN as usize];
    // SAFETY: `name` has RTE_ETH_NAME_MAX_LEN bytes, as the call requires.
    let r = unsafe { ffi::rte_eth_dev_get_name_by_port(port, name.as_mut_ptr()) };
    let name = if r == 0 {
        c_str(name.as_ptr())
    } else {
        format!("port{port}")
    };
    // SAFETY: a plain query.
    let socket = unsafe { ffi::rte_eth_dev_socket_id(port) };
    Ok(PortInfo {
        port,
        name,
        driver: c_str(di.driver_name),
        max_rx_queues: di.max_rx_queues,
        max_tx_queues: di.max_tx_queues,
        max_rx_pktlen: di.max_rx_pktlen,
        max_mtu: di.max_mtu,
        tx_multi_seg: di.tx_offload_capa & multi_segs() != 0,
        socket,
    })
}

pub fn configure(port: u16, cfg: &PortConfig) -> Result<(), DpdkError> {
    let inf = info(port)?;
    let mut conf = ffi::rte_eth_conf::default();
    conf.rxmode.mtu = cfg.mtu;
    if cfg.tx_multi_seg && inf.tx_multi_seg {
        conf.txmode.offloads |= multi_segs();
    }
    // SAFETY: `conf` is a valid, zero-based configuration for the call.
    let r = unsafe { ffi::rte_eth_dev_configure(port, cfg.rx_queues, cfg.tx_queues, &conf) };
    if r != 0 {
        return Err(DpdkError::from_errno(
            format!(
                "port {port} ({}): configuring {} rx / {} tx queues, mtu {}",
                inf.name, cfg.rx_queues, cfg.tx_queues, cfg.mtu
            ),
            r,
        ));
    }
    Ok(())
}

pub fn rx_queue_setup(port: u16, queue: u16, descs: u16, pool: &Mempool) -> Result<(), DpdkError> {
    check_port(port)?;
    // SAFETY: a live pool (the handle); NULL asks for the default rxconf.
    let r = unsafe {
        ffi::rte_eth_rx_queue_setup(
            port,
            queue,
            descs,
            ffi::rte_eth_dev_socket_id(port) as u32,
            std::ptr::null(),
            pool.as_ptr(),
        )
    };
    if r != 0 {
        return Err(DpdkError::from_errno(
            format!(
                "port {port}: rx queue {queue} ({descs} descriptors, pool {} of {} B mbufs)",
                pool.name(),
                pool.data_room()
            ),
            r,
        ));
    }
    Ok(())
}

pub fn tx_queue_setup(port: u16, queue: u16, descs: u16) -> Result<(), DpdkError> {
    check_port(port)?;
    // SAFETY: NULL asks for the default txconf.
    let r = unsafe {
        ffi::rte_eth_tx_queue_setup(
            port,
            queue,
            descs,
            ffi::rte_eth_dev_socket_id(port) as u32,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(DpdkError::from_errno(
            format!("port {port}: tx queue {queue} ({descs} descriptors)"),
            r,
        ));
    }
    Ok(())
}

/// Starts the port; it is stopped and closed at [`super::Eal::cleanup`].
pub fn start(port: u16) -> Result<(), DpdkError> {
    check_port(port)?;
    // SAFETY: a configured port (DPDK checks and reports otherwise).
    let r = unsafe { ffi::rte_eth_dev_start(port) };
    if r != 0 {
        return Err(DpdkError::from_errno(format!("port {port}: start"), r));
    }
    let mut s = STARTED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    if !s.contains(&port) {
        s.push(port);
    }
    Ok(())
}

pub(crate) fn stop_and_close(port: u16) {
    // SAFETY: called at cleanup, when no queue pair handle is alive.
    unsafe {
        ffi::rte_eth_dev_stop(port);
        ffi::rte_eth_dev_close(port);
    }
}

pub fn set_mtu(port: u16, mtu: u16) -> Result<(), DpdkError> {
    check_port(port)?;
    // SAFETY: a plain request.
    let r = unsafe { ffi::rte_eth_dev_set_mtu(port, mtu) };
    if r != 0 {
        return Err(DpdkError::from_errno(format!("port {port}: mtu {mtu}"), r));
    }
    Ok(())
}

pub fn mtu(port: u16) -> Result<u16, DpdkError> {
    check_port(port)?;
    let mut m = 0u16;
    // SAFETY: `m` is writable.
    let r = unsafe { ffi::rte_eth_dev_get_mtu(port, &mut m) };
    if r != 0 {
        return Err(DpdkError::from_errno(format!("port {port}: get mtu"), r));
    }
    Ok(m)
}

pub fn mac_addr(port: u16) -> Result<[u8; 6], DpdkError> {
    check_port(port)?;
    let mut a = ffi::rte_ether_addr::default();
    // SAFETY: `a` is writable.
    let r = unsafe { ffi::rte_eth_macaddr_get(port, &mut a) };
    if r != 0 {
        return Err(DpdkError::from_errno(
            format!("port {port}: mac address"),
            r,
        ));
    }
    Ok(a.addr_bytes)
}

pub fn promiscuous_enable(port: u16) -> Result<(), DpdkError> {
    check_port(port)?;
    // SAFETY: a plain request.
    let r = unsafe { ffi::rte_eth_promiscuous_enable(port) };
    if r != 0 {
        return Err(DpdkError::from_errno(
            format!("port {port}: promiscuous mode"),
            r,
        ));
    }
    Ok(())
}

/// The link's state now (does not wait).
pub fn link(port: u16) -> Result<LinkStatus, DpdkError> {
    check_port(port)?;
    let mut l = ffi::rte_eth_link::default();
    // SAFETY: `l` is writable.
    let r = unsafe { ffi::rte_eth_link_get_nowait(port, &mut l) };
    if r != 0 {
        return Err(DpdkError::from_errno(format!("port {port}: link"), r));
    }
    Ok(LinkStatus {
        up: l.link_status() != 0,
        speed_mbps: l.link_speed,
    })
}

pub fn stats(port: u16) -> Result<PortStats, DpdkError> {
    check_port(port)?;
    let mut s = ffi::rte_eth_stats::default();
    // SAFETY: `s` is writable.
    let r = unsafe { ffi::rte_eth_stats_get(port, &mut s) };
    if r != 0 {
        return Err(DpdkError::from_errno(format!("port {port}: stats"), r));
    }
    Ok(PortStats {
        ipackets: s.ipackets,
        opackets: s.opackets,
        ibytes: s.ibytes,
        obytes: s.obytes,
        imissed: s.imissed,
        ierrors: s.ierrors,
        oerrors: s.oerrors,
        rx_nombuf: s.rx_nombuf,
    })
}

/// Queue pairs handed out, so that each has one owner.
static CLAIMED: Mutex<Option<HashSet<(u16, u16)>>> = Mutex::new(None);

/// RX and TX queue `queue` of a started port, for one thread: DPDK's
/// queues are not thread-safe, so the handle is `Send` but not `Sync`, and
/// there is one per (port, queue).
pub struct QueuePair {
    port: u16,
    queue: u16,
    _not_sync: PhantomData<Cell<()>>,
}

impl QueuePair {
    pub fn claim(port: u16, queue: u16) -> Result<QueuePair, DpdkError> {
        check_port(port)?;
        let mut c = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
        if !c.get_or_insert_with(HashSet::new).insert((port, queue)) {
            return Err(DpdkError::msg(
                format!("port {port} queue {queue}"),
                "already claimed by another handle",
            ));
        }
        LIVE_HANDLES.fetch_add(1, Ordering::AcqRel);
        Ok(QueuePair {
            port,
            queue,
            _not_sync: PhantomData,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Receives up to `max` packets (at most 64) into `out`; returns how many.
    pub fn rx_burst(&mut self, out: &mut Vec<Mbuf>, max: usize) -> usize {
        let mut raw = [std::ptr::null_mut::<ffi::rte_mbuf>(); 64];
        let max = max.min(raw.len());
        // SAFETY: this handle is the queue's only user (claimed, !Sync);
        // `raw` has room for `max` pointers.
        let n = unsafe {
            ffi::ferrite_dpdk_rx_burst(self.port, self.queue, raw.as_mut_ptr(), max as u16)
        } as usize;
        if n > 0 {
            LIVE_MBUFS.fetch_add(n as isize, Ordering::Relaxed);
        }
        for &p in &raw[..n] {
            // SAFETY: the driver handed these mbufs over to us.
            if let Some(m) = unsafe { Mbuf::from_raw(p) } {
                out.push(m);
            }
        }
        n
    }

    /// Transmits packets from the front of `pkts` (at most 64 per call);
    /// those sent are removed (the driver frees them), the rest stay.
    pub fn tx_burst(&mut self, pkts: &mut Vec<Mbuf>) -> usize {
        if pkts.is_empty() {
            return 0;
        }
        let n = pkts.len().min(64);
        let mut raw = [std::ptr::null_mut::<ffi::rte_mbuf>(); 64];
        for (i, m) in pkts.iter().take(n).enumerate() {
            raw[i] = m.ptr_for_tx();
        }
        // SAFETY: the handle is the queue's only user; `raw` holds `n` valid
        // mbufs whose ownership passes to the driver for those it accepts.
        let sent = unsafe {
            ffi::ferrite_dpdk_tx_burst(self.port, self.queue, raw.as_mut_ptr(), n as u16)
        } as usize;
        for m in pkts.drain(..sent) {
            // Ownership went to the driver with the burst.
            let _ = m.into_raw();
        }
        if sent > 0 {
            LIVE_MBUFS.fetch_sub(sent as isize, Ordering::Relaxed);
        }
        sent
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        let mut c = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = c.as_mut() {
            s.remove(&(self.port, self.queue));
        }
        LIVE_HANDLES.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Mbuf {
    fn ptr_for_tx(&self) -> *mut ffi::rte_mbuf {
        self.ptr_raw()
    }
}
