//! Ethernet, IPv4 and UDP headers: written in front of every packet we send
//! and checked on every packet we receive. Pure bytes in, values out (it is
//! fuzzed). We never send IP fragments (Ferrite fragments its frames
//! itself), so fragmented IP packets are dropped, as are IP options.

use std::net::Ipv4Addr;

pub const ETH_HDR: usize = 14;
pub const IPV4_HDR: usize = 20;
pub const UDP_HDR: usize = 8;
/// Bytes in front of a UDP payload.
pub const L2_L4: usize = ETH_HDR + IPV4_HDR + UDP_HDR;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const BROADCAST: [u8; 6] = [0xff; 6];
const PROTO_UDP: u8 = 17;

pub type Mac = [u8; 6];

pub fn mac_to_string(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(out)
}

/// An IPv4 address and UDP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.ip, self.port)
    }
}

/// The addressing of a received UDP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpMeta {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub src: Endpoint,
    pub dst: Endpoint,
    /// Where the UDP payload starts in the packet, and its length.
    pub payload_off: usize,
    pub payload_len: usize,
}

/// What a received frame is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L2 {
    Udp(UdpMeta),
    /// An ARP packet (its bytes start after the Ethernet header).
    Arp {
        src_mac: Mac,
        off: usize,
    },
}

/// Why a frame was dropped (counted by reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    Short,
    /// Neither IPv4 nor ARP (IPv6 neighbour discovery, LLDP, ...).
    OtherEthertype,
    BadIpHeader,
    IpChecksum,
    IpFragment,
    NotUdp,
    BadUdpLength,
}

/// The IPv4 header checksum of `h` (with its checksum field zero).
pub fn ip_checksum(h: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in h.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Writes Ethernet + IPv4 + UDP headers for a payload of `payload_len`
/// bytes into `out[..L2_L4]`. The UDP checksum is left zero (allowed over
/// IPv4): Ferrite's own headers and frames carry crc32c.
pub fn write_udp_headers(
    out: &mut [u8],
    src_mac: &Mac,
    dst_mac: &Mac,
    src: Endpoint,
    dst: Endpoint,
    payload_len: usize,
    ip_id: u16,
) {
    let out = &mut out[..L2_L4];
    out[0..6].copy_from_slice(dst_mac);
    out[6..12].copy_from_slice(src_mac);
    out[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip = &mut out[ETH_HDR..ETH_HDR + IPV4_HDR];
    let total = (IPV4_HDR + UDP_HDR + payload_len) as u16;
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&ip_id.to_be_bytes());
    // Don't fragment: we size packets to the MTU ourselves.
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = PROTO_UDP;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&src.ip.octets());
    ip[16..20].copy_from_slice(&dst.ip.octets());
    let c = ip_checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut out[ETH_HDR + IPV4_HDR..];
    udp[0..2].copy_from_slice(&src.port.to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port.to_be_bytes());
    udp[4..6].copy_from_slice(&((UDP_HDR + payload_len) as u16).to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
}

/// Classifies and checks a received Ethernet frame.
pub fn parse(pkt: &[u8]) -> Result<L2, Drop> {
    parse_head(pkt, pkt.len())
}

/// [`parse`] from the frame's first bytes `head` (at least [`L2_L4`] of
/// them, or the whole frame when shorter) and its whole length `pkt_len`:
/// for a frame whose bytes lie in several buffers.
pub fn parse_head(head: &[u8], pkt_len: usize) -> Result<L2, Drop> {
    let pkt_len = pkt_len.max(head.len());
    if pkt_len < ETH_HDR || head.len() < ETH_HDR {
        return Err(Drop::Short);
    }
    let pkt = head;
    let mut dst_mac = [0u8; 6];
    let mut src_mac = [0u8; 6];
    dst_mac.copy_from_slice(&pkt[0..6]);
    src_mac.copy_from_slice(&pkt[6..12]);
    match u16::from_be_bytes([pkt[12], pkt[13]]) {
        ETHERTYPE_ARP => {
            return Ok(L2::Arp {
                src_mac,
                off: ETH_HDR,
            })
        }
        ETHERTYPE_IPV4 => {}
        _ => return Err(Drop::OtherEthertype),
    }
    let ip_len = pkt_len - ETH_HDR;
    if ip_len < IPV4_HDR || head.len() < ETH_HDR + IPV4_HDR {
        return Err(Drop::Short);
    }
    let ip = &pkt[ETH_HDR..];
    if ip[0] != 0x45 {
        // Not version 4, or options we do not send.
        return Err(Drop::BadIpHeader);
    }
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    // Shorter frames than the IP length are truncated; longer ones are padded
    // (Ethernet's 60-byte minimum).
    if total < IPV4_HDR + UDP_HDR || total > ip_len || head.len() < L2_L4 {
        return Err(Drop::BadIpHeader);
    }
    if ip_checksum(&ip[..IPV4_HDR]) != 0 {
        return Err(Drop::IpChecksum);
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if frag & 0x3fff != 0 {
        return Err(Drop::IpFragment);
    }
    if ip[9] != PROTO_UDP {
        return Err(Drop::NotUdp);
    }
    let src_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst_ip = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let udp = &ip[IPV4_HDR..IPV4_HDR + UDP_HDR];
    let ulen = u16::from_be_bytes([udp[4], udp[5]]) as usize;
    if ulen < UDP_HDR || ulen > total - IPV4_HDR {
        return Err(Drop::BadUdpLength);
    }
    Ok(L2::Udp(UdpMeta {
        src_mac,
        dst_mac,
        src: Endpoint {
            ip: src_ip,
            port: u16::from_be_bytes([udp[0], udp[1]]),
        },
        dst: Endpoint {
            ip: dst_ip,
            port: u16::from_be_bytes([udp[2], udp[3]]),
        },
        payload_off: L2_L4,
        payload_len: ulen - UDP_HDR,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let a = Endpoint {
            ip: Ipv4Addr::new(10, 0, 0, 1),
            port: 7100,
        };
        let b = Endpoint {
            ip: Ipv4Addr::new(10, 0, 0, 2),
            port: 7101,
        };
        let mut p = vec![0u8; L2_L4 + 5];
        write_udp_headers(&mut p, &[1; 6], &[2; 6], a, b, 5, 9);
        p[L2_L4..].copy_from_slice(b"hello");
        p.resize(80, 0); // Ethernet padding is ignored
        let L2::Udp(m) = parse(&p).unwrap() else {
            panic!()
        };
        assert_eq!((m.src, m.dst, m.payload_len), (a, b, 5));
        assert_eq!(&p[m.payload_off..m.payload_off + 5], b"hello");
        let mut bad = p.clone();
        bad[ETH_HDR + 15] ^= 1;
        assert_eq!(parse(&bad), Err(Drop::IpChecksum));
        assert_eq!(parse(&p[..30]), Err(Drop::Short));
        assert_eq!(parse(&p[..40]), Err(Drop::BadIpHeader));
        // From the first bytes and the length, as for a chained mbuf.
        assert_eq!(parse_head(&p[..L2_L4], p.len()), parse(&p));
        assert_eq!(parse_head(&p[..L2_L4], L2_L4 + 4), Err(Drop::BadIpHeader));
        assert_eq!(parse_head(&p[..30], p.len()), Err(Drop::Short));
        assert_eq!(parse_mac("02:00:00:00:00:0a"), Some([2, 0, 0, 0, 0, 10]));
        assert_eq!(parse_mac("02:00:00"), None);
        assert_eq!(mac_to_string(&[2, 0, 0, 0, 0, 10]), "02:00:00:00:00:0a");
    }
}
