//! The DPDK ports `ferrited` uses for replica traffic: every port the EAL
//! probed (its `--vdev`s or PCI devices), configured with one RX/TX queue
//! pair per reactor and one mbuf pool per reactor, started, and watched
//! for link changes by a small thread of its own (link queries may sleep
//! or make system calls: not on a reactor).

use super::config::DpdkConfig;
use super::udp::{mac_to_string, Mac, L2_L4};
use super::wire::HDR_LEN;
use ferrite_sys::dpdk::{port, Mempool, PortConfig, QueuePair, PKTMBUF_HEADROOM};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A configured port.
#[derive(Debug, Clone)]
pub struct PortSetup {
    /// Our index (what `--dpdk-peer ...%PORT` names).
    pub idx: usize,
    /// DPDK's port id.
    pub id: u16,
    pub name: String,
    pub driver: String,
    pub mac: Mac,
    /// IP MTU used on it.
    pub mtu: u16,
    /// Message bytes one DATA packet carries.
    pub data_cap: usize,
}

impl PortSetup {
    pub fn describe(&self) -> String {
        format!(
            "port {} ({}, {})",
            self.idx,
            self.name,
            mac_to_string(&self.mac)
        )
    }
}

pub struct Ports {
    pub ports: Vec<PortSetup>,
    pub pools: Vec<Mempool>,
    /// `queues[reactor][port]`.
    pub queues: Vec<Vec<QueuePair>>,
}

/// Bytes of mbuf buffer for frames of `mtu`: whole frames fit one segment
/// (and af_packet requires its frame size to fit), in steps of 1 KiB.
pub fn data_room(mtu: u16) -> u16 {
    let frame = mtu as u32 + 14;
    let room = frame.div_ceil(1024).max(2) * 1024;
    (room + PKTMBUF_HEADROOM).min(u16::MAX as u32) as u16
}

pub fn setup(cfg: &DpdkConfig, reactors: usize) -> Result<Ports, String> {
    let ids = port::port_ids();
    if ids.is_empty() {
        return Err(
            "DPDK found no port: give one with --dpdk-eal \"--vdev=...\" (or a PCI device)".into(),
        );
    }
    if (cfg.mtu as usize) < L2_L4 - 14 + HDR_LEN + 64 {
        return Err(format!("--dpdk-mtu {} is too small", cfg.mtu));
    }
    let room = data_room(cfg.mtu);
    // Jumbo buffers are big: fewer of them.
    let n = if room > 4096 {
        cfg.pool_mbufs.min(2047)
    } else {
        cfg.pool_mbufs
    };
    let mut pools = Vec::with_capacity(reactors);
    for r in 0..reactors {
        pools.push(
            Mempool::create(&format!("ferrite-r{r}"), n, 0, room, -1)
                .map_err(|e| format!("reactor {r}: {e}"))?,
        );
    }
    // Tests only (--dpdk-rx-mbuf-room): receive into smaller mbufs, from
    // pools of their own, so that a driver chains frames larger than one
    // of them. pools[r] stays reactor r's transmit pool; these come after.
    let rx_room = cfg
        .rx_mbuf_room
        .filter(|&v| v as u32 >= PKTMBUF_HEADROOM + 256);
    if let Some(rx_room) = rx_room {
        log::warn!("dpdk: receiving into {rx_room}-byte mbufs (--dpdk-rx-mbuf-room)");
        for r in 0..reactors {
            pools.push(
                Mempool::create(&format!("ferrite-rx{r}"), cfg.pool_mbufs, 0, rx_room, -1)
                    .map_err(|e| format!("reactor {r}: {e}"))?,
            );
        }
    }
    let mut ports = Vec::new();
    for (idx, &id) in ids.iter().enumerate() {
        let info = port::info(id).map_err(|e| e.to_string())?;
        let what = format!("port {idx} ({}, driver {})", info.name, info.driver);
        if (info.max_rx_queues as usize) < reactors || (info.max_tx_queues as usize) < reactors {
            return Err(format!(
                "{what} has {} rx / {} tx queues; ferrited runs {reactors} reactors and needs one pair each (af_packet: qpairs={reactors})",
                info.max_rx_queues, info.max_tx_queues
            ));
        }
        let q = reactors as u16;
        port::configure(
            id,
            &PortConfig {
                rx_queues: q,
                tx_queues: q,
                mtu: 0,
                tx_multi_seg: false,
            },
        )
        .map_err(|e| e.to_string())?;
        for r in 0..reactors {
            let pool = pools.get(reactors + r).unwrap_or(&pools[r]);
            port::rx_queue_setup(id, r as u16, cfg.rx_descs, pool).map_err(|e| {
                format!(
                    "{what}: {e} (is --dpdk-mtu {} right for the device's frame size?)",
                    cfg.mtu
                )
            })?;
            port::tx_queue_setup(id, r as u16, cfg.tx_descs).map_err(|e| e.to_string())?;
        }
        let mut mtu = cfg.mtu;
        if info.driver == "net_memif" {
            // memif (DPDK 22.11, copy mode) carries a frame larger than one
            // of its buffers as a chain of descriptors, and its transmit
            // never clears the "chained" flag of a packet's first
            // descriptor. A descriptor that once held the start of a chain
            // keeps the flag when it is later reused for a one-descriptor
            // packet: the receiver then joins that packet to the next one,
            // or reads past the ring's tail and replays stale descriptors
            // (millions of duplicate packets). So on memif a frame must
            // fit one buffer: packets are capped at bsize.
            let bsize = super::config::memif_buffer_size(&cfg.eal_args, &info.name);
            let fits = bsize.saturating_sub(14).min(u16::MAX as u32) as u16;
            if (mtu as u32) + 14 > bsize {
                log::warn!(
                    "dpdk: {what}: --dpdk-mtu {} does not fit one memif buffer (bsize={bsize}); \
                     sending packets of at most {fits} bytes of IP (add bsize={} on both sides for {})",
                    cfg.mtu,
                    (cfg.mtu as u32 + 14).next_power_of_two(),
                    cfg.mtu
                );
                mtu = fits;
            }
        }
        if (mtu as usize) < L2_L4 - 14 + HDR_LEN + 64 {
            return Err(format!("{what}: an MTU of {mtu} is too small"));
        }
        if mtu > 1500 {
            // Drivers such as memif and af_packet report a 1518-byte frame
            // limit but carry what their link carries (af_packet: the
            // interface's MTU, set with `ip link`). We size packets by
            // --dpdk-mtu; a driver that refuses is only logged.
            if let Err(e) = port::set_mtu(id, mtu) {
                log::info!(
                    "dpdk: {what}: {e}; sending {}-byte packets as --dpdk-mtu says",
                    mtu
                );
            }
        }
        let deadline = Instant::now() + cfg.start_timeout;
        loop {
            match port::start(id) {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline => {
                    log::info!("dpdk: {what}: {e}; retrying (a memif client waits for its server)");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(format!("{what}: {e}")),
            }
        }
        if let Err(e) = port::promiscuous_enable(id) {
            log::debug!("dpdk: {what}: {e}");
        }
        let mac = port::mac_addr(id).map_err(|e| e.to_string())?;
        let setup = PortSetup {
            idx,
            id,
            name: info.name.clone(),
            driver: info.driver.clone(),
            mac,
            mtu,
            data_cap: mtu as usize - (L2_L4 - 14) - HDR_LEN,
        };
        log::info!(
            "dpdk: {} up: driver {}, {} queue pairs, mtu {}, {} B per packet, {} mbufs of {} B per reactor",
            setup.describe(),
            info.driver,
            reactors,
            mtu,
            setup.data_cap,
            n,
            room
        );
        ports.push(setup);
    }
    let mut queues = Vec::with_capacity(reactors);
    for r in 0..reactors {
        let mut per = Vec::with_capacity(ports.len());
        for p in &ports {
            per.push(QueuePair::claim(p.id, r as u16).map_err(|e| e.to_string())?);
        }
        queues.push(per);
    }
    Ok(Ports {
        ports,
        pools,
        queues,
    })
}

/// Link state per port, kept by the monitor thread.
pub struct Links {
    pub up: Vec<AtomicBool>,
    /// Bumped on every change, so reactors notice cheaply.
    pub changes: std::sync::atomic::AtomicU64,
}

/// Watches the ports' links every 100 ms until `stop`; runs in the ports'
/// network namespace when there is one (af_packet queries the interface).
pub fn spawn_link_monitor(
    ports: Vec<PortSetup>,
    links: Arc<Links>,
    netns: Option<String>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("dpdk-link".into())
        .spawn(move || {
            let _ns = match netns.as_deref().map(ferrite_sys::netns::enter) {
                Some(Ok(g)) => Some(g),
                Some(Err(e)) => {
                    log::error!("dpdk: link monitor: {e}");
                    None
                }
                None => None,
            };
            while !stop.load(Ordering::Acquire) {
                for p in &ports {
                    let up = match port::link(p.id) {
                        Ok(l) => l.up,
                        Err(_) => continue,
                    };
                    let was = links.up[p.idx].swap(up, Ordering::AcqRel);
                    if was != up {
                        links.changes.fetch_add(1, Ordering::AcqRel);
                        log::info!(
                            "dpdk: {} link {}",
                            p.describe(),
                            if up { "up" } else { "down" }
                        );
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
}

/// The driver's counters of every port, as JSON.
pub fn stats_json(ports: &[PortSetup]) -> serde_json::Value {
    serde_json::Value::Array(
        ports
            .iter()
            .map(|p| {
                let s = port::stats(p.id).unwrap_or_default();
                serde_json::json!({
                    "port": p.idx, "name": p.name, "driver": p.driver,
                    "mac": mac_to_string(&p.mac), "mtu": p.mtu,
                    "ipackets": s.ipackets, "opackets": s.opackets,
                    "ibytes": s.ibytes, "obytes": s.obytes,
                    "imissed": s.imissed, "ierrors": s.ierrors, "oerrors": s.oerrors,
                    "rx_nombuf": s.rx_nombuf,
                })
            })
            .collect(),
    )
}
