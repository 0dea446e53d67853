//! The DPDK replica transport's receive path (feature `dpdk-wire`, no DPDK
//! needed): Ethernet/IPv4/UDP and ARP parsing, the reliable-delivery
//! header, a session fed one or several frames (sequence numbers, acks,
//! selective acks, epochs, RESETs), reassembly, and the frame checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferrite_engine::replica::dpdk::fuzzing::packet(data);
});
