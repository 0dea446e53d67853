//! The DPDK transport's configuration, from `ferrited`'s flags, and the
//! replica address scheme.
//!
//! A node on DPDK registers `dpdk://IP:PORT` as its replica address: IP is
//! its `--dpdk-ip`, PORT the port of `--replica`. Reactor `r` of a node
//! sends from UDP port `PORT + r` to the peer's `PORT + r` and receives on
//! its own `PORT + r`; a packet that arrives on another reactor's queue is
//! handed to the owner (software steering).

use super::loss::LossSpec;
use super::session::SessionConfig;
use super::udp::{parse_mac, Endpoint, Mac};
use std::net::Ipv4Addr;
use std::time::Duration;

pub const SCHEME: &str = "dpdk://";
/// UDP ports above the base a node answers on (reactors beyond fold over).
pub const PORT_SPAN: u16 = 64;

/// A statically known peer: `[NAME=]IP[@MAC][%PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub ip: Ipv4Addr,
    pub mac: Option<Mac>,
    /// Index of our DPDK port that reaches it.
    pub port: u16,
}

impl PeerSpec {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("--dpdk-peer '{s}' is not [NAME=]IP[@MAC][%PORT]");
        // A leading NAME= is documentation only (meta maps names to IPs).
        let rest = match s.split_once('=') {
            Some((_, r)) => r,
            None => s,
        };
        let (rest, port) = match rest.split_once('%') {
            Some((r, p)) => (r, p.parse::<u16>().map_err(|_| bad())?),
            None => (rest, 0),
        };
        let (ip, mac) = match rest.split_once('@') {
            Some((ip, mac)) => (ip, Some(parse_mac(mac).ok_or_else(bad)?)),
            None => (rest, None),
        };
        Ok(Self {
            ip: ip.parse().map_err(|_| bad())?,
            mac,
            port,
        })
    }
}

/// `IP/PREFIX` (or a bare IP: /24).
pub fn parse_ip(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, prefix) = s.split_once('/').unwrap_or((s, "24"));
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("--dpdk-ip '{s}' is not IPv4[/PREFIX]"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| format!("--dpdk-ip '{s}': bad prefix"))?;
    Ok((ip, prefix))
}

/// The endpoint a `dpdk://IP:PORT` (or plain `IP:PORT`) address names.
pub fn parse_peer_addr(s: &str) -> Option<Endpoint> {
    let s = s.strip_prefix(SCHEME).unwrap_or(s);
    let (ip, port) = s.rsplit_once(':')?;
    Some(Endpoint {
        ip: ip.parse().ok()?,
        port: port.parse().ok()?,
    })
}

pub fn is_dpdk_addr(s: &str) -> bool {
    s.starts_with(SCHEME)
}

/// The value of `key` in the `--vdev` arguments of device `name` (the
/// part of a `--vdev` before its first comma), from the EAL arguments as
/// given: `--vdev=NAME,k=v,...` or `--vdev NAME,k=v,...`.
pub fn vdev_arg(eal_args: &[String], name: &str, key: &str) -> Option<String> {
    let mut it = eal_args.iter();
    while let Some(a) = it.next() {
        let spec = match a.strip_prefix("--vdev") {
            Some(r) if r.starts_with('=') => &r[1..],
            Some("") => match it.next() {
                Some(n) => n.as_str(),
                None => break,
            },
            _ => continue,
        };
        let mut parts = spec.split(',');
        if parts.next() != Some(name) {
            continue;
        }
        for kv in parts {
            if let Some((k, v)) = kv.split_once('=') {
                if k == key {
                    return Some(v.to_string());
                }
            }
        }
    }
    None
}

/// Bytes of one memif buffer for device `name`: its `bsize=`, or memif's
/// default of 2048.
pub fn memif_buffer_size(eal_args: &[String], name: &str) -> u32 {
    vdev_arg(eal_args, name, "bsize")
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048)
}

#[derive(Debug, Clone)]
pub struct DpdkConfig {
    /// EAL arguments as given (`--dpdk-eal`); a unique `--file-prefix`,
    /// `--lcores` and `--no-telemetry` are added unless present.
    pub eal_args: Vec<String>,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    /// UDP base port (the `--replica` port).
    pub base_port: u16,
    pub peers: Vec<PeerSpec>,
    /// IP MTU of the links (1500; jumbo where the link carries it).
    pub mtu: u16,
    /// Network namespace whose interfaces the ports use (af_packet).
    pub netns: Option<String>,
    pub loss: LossSpec,
    pub session: SessionConfig,
    /// Poll interval of a reactor's queues while traffic flows, and when
    /// idle (longer: an idle reactor sleeps instead of spinning).
    pub poll_active: Duration,
    pub poll_idle: Duration,
    /// Quiet time after which a reactor's polling goes idle.
    pub idle_after: Duration,
    /// Mbufs per reactor pool; descriptors per queue.
    pub pool_mbufs: u32,
    /// Bytes of the receive mbufs (headroom included) when they should be
    /// smaller than a frame (tests of the chained receive path); `None`:
    /// received frames fit one mbuf.
    pub rx_mbuf_room: Option<u16>,
    pub rx_descs: u16,
    pub tx_descs: u16,
    /// Longest wait for one answer (as TCP's).
    pub request_timeout: Duration,
    /// How long a port may take to start (a memif client whose server is
    /// not up yet).
    pub start_timeout: Duration,
}

impl DpdkConfig {
    pub fn new(eal_args: Vec<String>, ip: Ipv4Addr, prefix: u8, base_port: u16) -> Self {
        Self {
            eal_args,
            ip,
            prefix,
            base_port,
            peers: Vec::new(),
            mtu: 1500,
            netns: None,
            loss: LossSpec::default(),
            session: SessionConfig::default(),
            poll_active: Duration::from_micros(50),
            poll_idle: Duration::from_millis(5),
            idle_after: Duration::from_millis(50),
            pool_mbufs: 8191,
            rx_mbuf_room: None,
            rx_descs: 1024,
            tx_descs: 1024,
            request_timeout: Duration::from_secs(10),
            start_timeout: Duration::from_secs(20),
        }
    }

    /// This node's replica address.
    pub fn replica_address(&self) -> String {
        format!("{SCHEME}{}:{}", self.ip, self.base_port)
    }

    /// The local endpoint of reactor `r`.
    pub fn local(&self, r: usize) -> Endpoint {
        Endpoint {
            ip: self.ip,
            port: self.base_port.wrapping_add(r as u16 % PORT_SPAN),
        }
    }

    /// The reactor owning local UDP port `port`, if it is ours.
    pub fn owner(&self, port: u16, reactors: usize) -> Option<usize> {
        let d = port.wrapping_sub(self.base_port);
        (d < PORT_SPAN).then(|| d as usize % reactors.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_addresses_owners() {
        let p = PeerSpec::parse("node2=10.0.0.2@02:00:00:00:00:02").unwrap();
        assert_eq!(p.ip, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(p.mac, Some([2, 0, 0, 0, 0, 2]));
        assert_eq!(PeerSpec::parse("10.0.0.3%1").unwrap().port, 1);
        assert!(PeerSpec::parse("node2=10.0.0.300").is_err());
        assert!(PeerSpec::parse("10.0.0.2@zz").is_err());
        assert_eq!(parse_ip("10.0.0.1/16").unwrap().1, 16);
        assert!(parse_ip("10.0.0.1/40").is_err());
        let e = parse_peer_addr("dpdk://10.0.0.2:7100").unwrap();
        assert_eq!((e.ip, e.port), (Ipv4Addr::new(10, 0, 0, 2), 7100));
        assert!(parse_peer_addr("dpdk://host:7100").is_none());
        let c = DpdkConfig::new(vec![], Ipv4Addr::new(10, 0, 0, 1), 24, 7100);
        assert_eq!(c.replica_address(), "dpdk://10.0.0.1:7100");
        assert_eq!(c.owner(7101, 2), Some(1));
        assert_eq!(c.owner(7102, 2), Some(0));
        assert_eq!(c.owner(7099, 2), None);
    }

    #[test]
    fn vdev_arguments() {
        let a: Vec<String> = [
            "--no-pci",
            "--vdev=net_memif0,role=server,bsize=16384,socket=/x",
            "--vdev",
            "net_memif1,role=client",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            vdev_arg(&a, "net_memif0", "role").as_deref(),
            Some("server")
        );
        assert_eq!(memif_buffer_size(&a, "net_memif0"), 16384);
        assert_eq!(memif_buffer_size(&a, "net_memif1"), 2048);
        assert_eq!(vdev_arg(&a, "net_memif1", "bsize"), None);
        assert_eq!(vdev_arg(&a, "net_memif", "role"), None);
    }
}
