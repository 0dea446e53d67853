//! The entry point of the `dpdk_packet` fuzz target (and of the malformed
//! corpus test): one received Ethernet frame through every parser the
//! receive path runs — Ethernet/IPv4/UDP, ARP, the reliable-delivery
//! header, the session (sequence numbers, acks, selective acks, epochs),
//! reassembly and the frame checks — on a session that has seen a little
//! traffic. It must return, never panic.

use super::arp;
use super::frag;
use super::session::{Session, SessionConfig};
use super::udp::{self, L2};
use super::wire::{WireHeader, HDR_LEN};
use std::time::{Duration, Instant};

/// Feeds `data` (one frame, or several separated by the first byte's
/// count) to a fresh session.
pub fn packet(data: &[u8]) {
    let now = Instant::now();
    let cfg = SessionConfig {
        reassembly_limit: 1 << 20,
        ..Default::default()
    };
    let mut s: Session<Vec<u8>> = Session::new(cfg, now);
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n % 8) as usize + 1;
    let chunk = rest.len() / n + 1;
    for (i, frame) in rest.chunks(chunk).enumerate() {
        one(&mut s, frame, now + Duration::from_millis(i as u64 * 30));
    }
    let _ = s.on_tick(now + Duration::from_secs(10));
}

fn one(s: &mut Session<Vec<u8>>, frame: &[u8], now: Instant) {
    // As a chained mbuf is read: the headers from the first bytes with the
    // whole length; it must agree with the parse of the whole frame.
    let head = &frame[..frame.len().min(udp::L2_L4 + HDR_LEN)];
    assert_eq!(udp::parse_head(head, frame.len()), udp::parse(frame));
    let payload = match udp::parse(frame) {
        Ok(L2::Udp(m)) => &frame[m.payload_off..m.payload_off + m.payload_len],
        Ok(L2::Arp { off, .. }) => {
            let _ = arp::parse(&frame[off..]);
            return;
        }
        // Raw wire headers too, so the fuzzer reaches the session quickly.
        Err(_) => frame,
    };
    let Ok(h) = WireHeader::decode(payload, payload.len().saturating_sub(HDR_LEN)) else {
        return;
    };
    let body = &payload[HDR_LEN..HDR_LEN + h.len as usize];
    // Odd-length frames go in as parts (the segments of a chained mbuf).
    let rx = if frame.len() % 2 == 1 && !body.is_empty() {
        let a = frame[0] as usize % body.len();
        s.on_packet_parts(&h, &[&body[..a], &body[a..]], now)
    } else {
        s.on_packet(&h, body, now)
    };
    if let Some(m) = rx.delivered {
        let _ = frag::frame(m);
    }
    if s.ack_due {
        let _ = s.ack(false);
    }
}
