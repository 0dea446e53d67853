//! The `dpdk_packet` fuzz target's entry point
//! (fuzz/fuzz_targets/dpdk_packet.rs) over a corpus of valid and malformed
//! frames, so `make test` exercises it without a nightly toolchain: every
//! input must return without panicking. Needs only feature `dpdk-wire`
//! (the packet code, no DPDK).
#![cfg(feature = "dpdk-wire")]

use ferrite_engine::replica::dpdk::arp;
use ferrite_engine::replica::dpdk::fuzzing::packet;
use ferrite_engine::replica::dpdk::udp::{write_udp_headers, Endpoint, L2_L4};
use ferrite_engine::replica::dpdk::wire::{Kind, WireHeader, HDR_LEN};
use ferrite_engine::replica::proto::{encode_head, Header};
use std::net::Ipv4Addr;

const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const B: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn ep(last: u8, port: u16) -> Endpoint {
    Endpoint {
        ip: Ipv4Addr::new(10, 0, 0, last),
        port,
    }
}

/// A UDP frame carrying wire header `h` and `data`.
fn udp(h: &WireHeader, data: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; L2_L4 + HDR_LEN + data.len()];
    write_udp_headers(
        &mut b,
        &A,
        &B,
        ep(1, 7100),
        ep(2, 7100),
        HDR_LEN + data.len(),
        7,
    );
    h.encode(&mut b[L2_L4..]);
    b[L2_L4 + HDR_LEN..].copy_from_slice(data);
    b
}

fn data(seq: u32, msg_id: u64, msg: &[u8], off: usize, len: usize) -> Vec<u8> {
    let mut h = WireHeader::new(Kind::Data);
    h.src_epoch = 0x1234;
    h.seq = seq;
    h.ack = 1;
    h.window = 64;
    h.msg_id = msg_id;
    h.msg_len = msg.len() as u32;
    h.split = 64.min(msg.len() as u32);
    h.frag_off = off as u32;
    h.len = len as u16;
    udp(&h, &msg[off..off + len])
}

/// Several frames in one input, as `packet` splits them: the first byte
/// says how many, each takes an equal share of the rest.
fn several(frames: &[Vec<u8>]) -> Vec<u8> {
    let n = frames.len().clamp(1, 8);
    let share = frames.iter().map(|f| f.len()).max().unwrap_or(0);
    let mut out = vec![(n - 1) as u8];
    for f in frames.iter().take(8) {
        let mut f = f.clone();
        f.resize(share, 0);
        out.extend(f);
    }
    // `packet` cuts rest.len() / n + 1 bytes per frame.
    out.truncate(1 + share * n);
    out
}

fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn malformed_and_valid_packets_do_not_panic() {
    let head = encode_head(
        Header {
            op: 1,
            request_id: 9,
            extent: 3,
            offset: 4096,
            ..Default::default()
        },
        b"body",
        &[0xab; 3000],
    );
    let mut msg = head[4..].to_vec();
    msg.extend_from_slice(&[0xab; 3000]);
    let mut corpus: Vec<Vec<u8>> = vec![vec![], vec![0], vec![7; 3]];
    // A whole message in three pieces, in order and reversed.
    let pieces = [
        data(1, 1, &msg, 0, 1400),
        data(2, 1, &msg, 1400, 1400),
        data(3, 1, &msg, 2800, msg.len() - 2800),
    ];
    corpus.push(several(&pieces));
    corpus.push(several(&[
        pieces[2].clone(),
        pieces[0].clone(),
        pieces[1].clone(),
    ]));
    corpus.push(several(&[pieces[0].clone(), pieces[0].clone()]));
    // Pieces that contradict their message, overlap, or overrun it.
    corpus.push(several(&[
        data(1, 1, &msg, 0, 1400),
        data(2, 1, &msg[..2000], 1000, 1000),
    ]));
    let mut bad = data(1, 1, &msg, 0, 100);
    bad[L2_L4 + 36..L2_L4 + 40].copy_from_slice(&u32::MAX.to_le_bytes());
    corpus.push(bad);
    // Sequence numbers far outside the window, epochs, RESETs, ACKs with
    // selective bitmaps.
    corpus.push(data(0x7fff_ffff, 2, &msg, 0, 64));
    let mut reset = WireHeader::new(Kind::Reset);
    reset.src_epoch = 5;
    reset.dst_epoch = 6;
    corpus.push(several(&[pieces[0].clone(), udp(&reset, &[])]));
    let mut ack = WireHeader::new(Kind::Ack);
    ack.src_epoch = 0x1234;
    ack.ack = 1000;
    ack.window = u32::MAX;
    ack.len = 64;
    corpus.push(udp(&ack, &[0xff; 64]));
    // ARP, valid and cut short.
    let req = arp::request(&A, Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
    corpus.push(req.clone());
    corpus.push(req[..20].to_vec());
    // IPv4 with options, fragments, bad checksums; truncated everywhere.
    let base = pieces[0].clone();
    for cut in [1, 13, 14, 20, 33, 34, 41, 42, 50, 105, 106] {
        corpus.push(base[..cut.min(base.len())].to_vec());
    }
    for (i, v) in [(14, 0x46u8), (20, 0x20), (24, 0xff), (23, 6)] {
        let mut p = base.clone();
        p[i] = v;
        corpus.push(p);
    }
    // Raw wire headers (no Ethernet), as the target also accepts.
    corpus.push(base[L2_L4..].to_vec());
    for seed in 0..128 {
        let mut p = base.clone();
        let n = p.len();
        for (k, x) in noise(seed, 8).into_iter().enumerate() {
            p[(seed as usize * 131 + k * 977) % n] ^= x;
        }
        corpus.push(p);
        corpus.push(noise(seed, 16 + (seed as usize * 53) % 1600));
    }
    // FERRITE_FUZZ_SEEDS=DIR also writes the corpus there, as seeds for
    // `cargo fuzz run dpdk_packet DIR` (the wire header's crc32c keeps
    // random inputs from reaching the session otherwise).
    if let Some(dir) = std::env::var_os("FERRITE_FUZZ_SEEDS") {
        std::fs::create_dir_all(&dir).unwrap();
        for (i, input) in corpus.iter().enumerate() {
            std::fs::write(
                std::path::Path::new(&dir).join(format!("seed-{i:03}")),
                input,
            )
            .unwrap();
        }
    }
    for input in &corpus {
        packet(input);
    }
}
