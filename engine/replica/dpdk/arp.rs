//! Address resolution: a table of peer MACs, filled from static
//! configuration (`--dpdk-peer IP=MAC`) and from ARP; ARP packets built and
//! parsed. Static entries are never overwritten by ARP.

use super::udp::{Mac, BROADCAST, ETHERTYPE_ARP, ETH_HDR};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::RwLock;
use std::time::{Duration, Instant};

pub const ARP_LEN: usize = 28;
pub const OP_REQUEST: u16 = 1;
pub const OP_REPLY: u16 = 2;

/// A parsed ARP packet (Ethernet / IPv4 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    pub op: u16,
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_mac: Mac,
    pub target_ip: Ipv4Addr,
}

pub fn parse(b: &[u8]) -> Option<Arp> {
    if b.len() < ARP_LEN {
        return None;
    }
    if b[0..2] != [0, 1] || b[2..4] != [8, 0] || b[4] != 6 || b[5] != 4 {
        return None;
    }
    let mac = |i: usize| -> Mac { b[i..i + 6].try_into().unwrap_or([0; 6]) };
    let ip = |i: usize| Ipv4Addr::new(b[i], b[i + 1], b[i + 2], b[i + 3]);
    Some(Arp {
        op: u16::from_be_bytes([b[6], b[7]]),
        sender_mac: mac(8),
        sender_ip: ip(14),
        target_mac: mac(18),
        target_ip: ip(24),
    })
}

/// A whole Ethernet frame carrying `a` (padded to the 60-byte minimum).
pub fn frame(src_mac: &Mac, dst_mac: &Mac, a: &Arp) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(dst_mac);
    f.extend_from_slice(src_mac);
    f.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
    f.extend_from_slice(&a.op.to_be_bytes());
    f.extend_from_slice(&a.sender_mac);
    f.extend_from_slice(&a.sender_ip.octets());
    f.extend_from_slice(&a.target_mac);
    f.extend_from_slice(&a.target_ip.octets());
    debug_assert_eq!(f.len(), ETH_HDR + ARP_LEN);
    f.resize(60, 0);
    f
}

/// A request for `target` from `(mac, ip)`.
pub fn request(mac: &Mac, ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    frame(
        mac,
        &BROADCAST,
        &Arp {
            op: OP_REQUEST,
            sender_mac: *mac,
            sender_ip: ip,
            target_mac: [0; 6],
            target_ip: target,
        },
    )
}

/// The reply to `req` when it asks for our `(mac, ip)`.
pub fn reply(mac: &Mac, ip: Ipv4Addr, req: &Arp) -> Option<Vec<u8>> {
    if req.op != OP_REQUEST || req.target_ip != ip {
        return None;
    }
    Some(frame(
        mac,
        &req.sender_mac,
        &Arp {
            op: OP_REPLY,
            sender_mac: *mac,
            sender_ip: ip,
            target_mac: req.sender_mac,
            target_ip: req.sender_ip,
        },
    ))
}

#[derive(Clone, Copy)]
struct Entry {
    mac: Mac,
    port: u16,
    fixed: bool,
    learned: Instant,
}

/// IPv4 address to (MAC, port). Shared by every reactor.
pub struct ArpTable {
    entries: RwLock<HashMap<Ipv4Addr, Entry>>,
    /// Learned entries older than this are asked for again.
    pub max_age: Duration,
}

impl ArpTable {
    pub fn new() -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
            max_age: Duration::from_secs(300),
        }
    }

    pub fn add_static(&self, ip: Ipv4Addr, mac: Mac, port: u16) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                ip,
                Entry {
                    mac,
                    port,
                    fixed: true,
                    learned: Instant::now(),
                },
            );
    }

    /// Records what an ARP packet taught us (never over a static entry).
    pub fn learn(&self, ip: Ipv4Addr, mac: Mac, port: u16) {
        if ip.is_unspecified() || mac == BROADCAST || mac == [0; 6] {
            return;
        }
        let mut t = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if matches!(t.get(&ip), Some(e) if e.fixed) {
            return;
        }
        t.insert(
            ip,
            Entry {
                mac,
                port,
                fixed: false,
                learned: Instant::now(),
            },
        );
    }

    /// The MAC and port of `ip`, if known and fresh.
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<(Mac, u16)> {
        let t = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let e = t.get(&ip)?;
        if !e.fixed && e.learned.elapsed() > self.max_age {
            return None;
        }
        Some((e.mac, e.port))
    }

    /// The port a static entry names for `ip` (where to ask by ARP).
    pub fn port_hint(&self, ip: Ipv4Addr) -> Option<u16> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ip)
            .map(|e| e.port)
    }

    pub fn entries(&self) -> Vec<(Ipv4Addr, Mac, u16, bool)> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(ip, e)| (*ip, e.mac, e.port, e.fixed))
            .collect()
    }
}

impl Default for ArpTable {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_reply_learn() {
        let (ma, mb) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let (ia, ib) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let req = request(&ma, ia, ib);
        assert_eq!(req.len(), 60);
        let r = parse(&req[ETH_HDR..]).unwrap();
        assert_eq!((r.op, r.sender_ip, r.target_ip), (OP_REQUEST, ia, ib));
        assert!(reply(&mb, Ipv4Addr::new(10, 0, 0, 3), &r).is_none());
        let rep = reply(&mb, ib, &r).unwrap();
        let a = parse(&rep[ETH_HDR..]).unwrap();
        assert_eq!((a.op, a.sender_mac, a.target_ip), (OP_REPLY, mb, ia));
        let t = ArpTable::new();
        t.learn(a.sender_ip, a.sender_mac, 0);
        assert_eq!(t.lookup(ib), Some((mb, 0)));
        t.add_static(ia, ma, 1);
        t.learn(ia, mb, 0);
        assert_eq!(t.lookup(ia), Some((ma, 1)), "static entries win");
        assert!(parse(&rep[ETH_HDR..ETH_HDR + 10]).is_none());
    }
}
