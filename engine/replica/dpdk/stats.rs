//! The transport's counters (process-wide, all reactors).

use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($name:ident: $help:literal,)*) => {
        /// Counters of the DPDK transport.
        #[derive(Default)]
        pub struct Stats {
            $(#[doc = $help] pub $name: AtomicU64,)*
        }

        impl Stats {
            pub fn json(&self) -> Value {
                let mut m = serde_json::Map::new();
                $(m.insert(stringify!($name).into(), json!(self.$name.load(Relaxed)));)*
                Value::Object(m)
            }

            /// `(name, help, value)` of every counter (for metrics).
            pub fn all(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($name), $help, self.$name.load(Relaxed)),)*]
            }
        }
    };
}

counters! {
    tx_packets: "Packets handed to the driver",
    tx_bytes: "Bytes handed to the driver",
    rx_packets: "Packets received from the driver",
    rx_bytes: "Bytes received from the driver",
    rx_chained: "Packets received as chained (multi-segment) mbufs",
    frames_sent: "Replica frames sent (requests and answers)",
    frames_received: "Replica frames received complete and intact",
    requests_served: "Requests handed to the replica service",
    data_packets: "DATA packets sent (first transmissions)",
    acks_sent: "ACK packets sent",
    retransmits: "Packets retransmitted on timeout",
    fast_retransmits: "Packets retransmitted after later ones were acknowledged",
    probes: "Probes sent to silent peers",
    duplicates: "Duplicate packets suppressed",
    stale: "Packets of a previous session epoch ignored",
    malformed: "Malformed packets dropped",
    bad_frames: "Reassembled frames that failed their checks",
    ignored: "Frames not for us (other protocols, addresses, ports)",
    steered: "Packets handed to the reactor owning their port",
    resets_sent: "RESET packets sent",
    session_resets: "Sessions reset (peer restarted, dead, timed out)",
    peers_dead: "Peers declared dead",
    credit_waits: "Times a sender waited for window or credit",
    tx_ring_full: "Times the driver's transmit ring was full",
    no_mbufs: "Times the mbuf pool was empty",
    arp_requests: "ARP requests sent",
    arp_replies: "ARP replies sent",
    link_downs: "Link-down events seen",
    loss_dropped: "Packets dropped by loss injection",
    loss_duplicated: "Packets duplicated by loss injection",
    loss_reordered: "Packets reordered by loss injection",
}

impl Stats {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }
}
