//! Malformed input for the NVMe/TCP PDU parser without a fuzzing toolchain:
//! valid PDUs as seeds, deterministic mutations of them (flipped bytes,
//! extreme length fields, truncation, concatenation), fed to the parser and
//! to a live target. Nothing may panic; the target ends a bad queue and
//! keeps serving others. `fuzz/fuzz_targets/nvmf_pdu.rs` runs the same
//! parser under libFuzzer.

use ferrite_engine::rt::{Config, Runtime};
use ferrite_engine::volume::mem::{MemProvider, MemVolume};
use ferrite_gateway::nvmf::pdu::{decode_stream, Negotiated};
use ferrite_gateway::nvmf::{ExportOpts, ListenAddress, NvmfTarget, TransportOpts};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn crc(b: &[u8]) -> [u8; 4] {
    crc32c::crc32c(b).to_le_bytes()
}

fn neg(hdgst: bool, ddgst: bool) -> Negotiated {
    Negotiated {
        hdgst,
        ddgst,
        hpda: 0,
        maxh2cdata: 131072,
        max_icd: 8192,
    }
}

fn icreq(dgst: u8) -> Vec<u8> {
    let mut b = vec![0u8; 128];
    b[2] = 128;
    b[4] = 128;
    b[11] = dgst;
    b
}

fn capsule(hdgst: bool, ddgst: bool, opc: u8, sgl_id: u8, data: &[u8]) -> Vec<u8> {
    let hd = if hdgst { 4 } else { 0 };
    let dd = if ddgst && !data.is_empty() { 4 } else { 0 };
    let pdo = if data.is_empty() { 0 } else { 72 + hd };
    let plen = 72 + hd + data.len() + dd;
    let mut b = vec![0x04, hdgst as u8 | ((dd > 0) as u8) << 1, 72, pdo as u8];
    b.extend_from_slice(&(plen as u32).to_le_bytes());
    let mut sqe = [0u8; 64];
    sqe[0] = opc;
    sqe[1] = 0x40;
    sqe[4] = 1;
    sqe[32..36].copy_from_slice(&(data.len().max(512) as u32).to_le_bytes());
    sqe[39] = sgl_id;
    if opc == 0x7f {
        sqe[44] = 31; // Connect: SQSIZE
    }
    b.extend_from_slice(&sqe);
    if hdgst {
        let c = crc(&b);
        b.extend_from_slice(&c);
    }
    b.extend_from_slice(data);
    if dd > 0 {
        b.extend_from_slice(&crc(data));
    }
    b
}

fn h2c(hdgst: bool, ddgst: bool, data: &[u8]) -> Vec<u8> {
    let hd = if hdgst { 4 } else { 0 };
    let dd = if ddgst { 4 } else { 0 };
    let mut b = vec![
        0x06,
        hdgst as u8 | (ddgst as u8) << 1 | 4,
        24,
        24 + hd as u8,
    ];
    b.extend_from_slice(&((24 + hd + data.len() + dd) as u32).to_le_bytes());
    b.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    if hdgst {
        let c = crc(&b);
        b.extend_from_slice(&c);
    }
    b.extend_from_slice(data);
    if ddgst {
        b.extend_from_slice(&crc(data));
    }
    b
}

fn seeds() -> Vec<(Vec<u8>, Negotiated)> {
    let mut connect = vec![0u8; 1024];
    connect[16] = 0xff;
    connect[17] = 0xff;
    connect[256..256 + 27].copy_from_slice(b"nqn.2026-11.io.ferrite:vol0");
    connect[512..512 + 14].copy_from_slice(b"nqn.2014-08.x:");
    let mut out = Vec::new();
    for (h, d) in [(false, false), (true, false), (false, true), (true, true)] {
        let mut s = icreq(h as u8 | (d as u8) << 1);
        s.extend(capsule(h, d, 0x7f, 0x01, &connect));
        s.extend(capsule(h, d, 0x02, 0x5a, &[]));
        s.extend(capsule(h, d, 0x01, 0x01, &[0xab; 4096]));
        s.extend(capsule(h, d, 0x01, 0x5a, &[]));
        s.extend(h2c(h, d, &[0xcd; 4096]));
        out.push((s, neg(h, d)));
    }
    let mut term = vec![0x02, 0, 24, 0, 24, 0, 0, 0];
    term.resize(24, 0);
    out.push((term, neg(false, false)));
    out
}

/// xorshift: deterministic, so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(r: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + r.below(4) {
        match r.below(7) {
            0 => {
                let i = r.below(b.len());
                b[i] ^= 1 << r.below(8);
            }
            1 => {
                let i = r.below(b.len());
                b[i] = r.next() as u8;
            }
            2 if b.len() >= 4 => {
                // A length field (PLEN of some PDU-looking spot) to an extreme.
                let i = r.below(b.len().saturating_sub(4));
                let v = [0u32, 1, 7, 8, 23, 24, 72, 128, 0x7fff_ffff, u32::MAX][r.below(10)];
                b[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            3 => b.truncate(r.below(b.len())),
            4 => {
                let extra: Vec<u8> = (0..r.below(300)).map(|_| r.next() as u8).collect();
                b.extend(extra);
            }
            5 => {
                // HLEN / PDO / flags bytes.
                let i = r.below(b.len());
                b[i] = [0u8, 3, 4, 8, 24, 28, 72, 76, 0xff][r.below(9)];
            }
            _ => {
                let i = r.below(b.len());
                let j = r.below(b.len());
                b.swap(i, j);
            }
        }
        if b.is_empty() {
            break;
        }
    }
    b
}

#[test]
fn parser_survives_mutated_streams() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let seeds = seeds();
    // The seeds parse completely.
    for (s, n) in &seeds {
        let (count, err) = decode_stream(s, n);
        assert!(err.is_none() && count >= 1, "seed: {err:?}");
    }
    let mut fatal = 0;
    for i in 0..40_000 {
        let (s, n) = &seeds[i % seeds.len()];
        let m = mutate(&mut r, s);
        let (_, err) = decode_stream(&m, n);
        fatal += err.is_some() as usize;
    }
    assert!(fatal > 10_000, "most mutations are caught ({fatal})");
    // Random bytes, too.
    for _ in 0..5_000 {
        let len = r.below(600);
        let b: Vec<u8> = (0..len).map(|_| r.next() as u8).collect();
        let _ = decode_stream(&b, &neg(r.below(2) == 1, r.below(2) == 1));
    }
}

/// Mutated streams against a live target: each ends its own connection at
/// worst; afterwards the target still serves a well-behaved host.
#[test]
fn live_target_survives_mutated_streams() {
    let rt = Runtime::new(Config::for_tests(2)).unwrap();
    let provider = MemProvider::new();
    provider.add(MemVolume::new("vol0", 8 << 20, 512));
    let target = NvmfTarget::new(rt.handle(), provider);
    target.create_transport(TransportOpts::default()).unwrap();
    let nqn = target
        .export_volume(
            "vol0",
            &ExportOpts {
                listeners: vec![ListenAddress::tcp("127.0.0.1", 0)],
                ..Default::default()
            },
        )
        .unwrap();
    let port = target.subsystem(&nqn).unwrap().listeners()[0]
        .trsvcid
        .clone();
    let addr = format!("127.0.0.1:{port}");
    let mut r = Rng(0x1234_5678_9abc_def1);
    let seeds = seeds();
    for i in 0..300 {
        let (s, _) = &seeds[i % 4];
        let m = mutate(&mut r, s);
        let mut c = TcpStream::connect(&addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = c.write_all(&m);
        let _ = c.shutdown(std::net::Shutdown::Write);
        // The target answers what it can and closes when the bytes end.
        let mut sink = Vec::new();
        let _ = c.read_to_end(&mut sink);
    }
    // A good host still gets through: ICReq, Connect.
    let mut c = TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (s, _) = &seeds[0];
    let good = &s[..128 + 72 + 1024];
    c.write_all(good).unwrap();
    let mut resp = [0u8; 128 + 24];
    c.read_exact(&mut resp).unwrap();
    assert_eq!(
        (resp[0], resp[128]),
        (0x01, 0x05),
        "ICResp, then Connect's response"
    );
    let status = u16::from_le_bytes([resp[128 + 22], resp[128 + 23]]) >> 1;
    assert_eq!(status, 0, "connected");
    target.shutdown();
    rt.shutdown();
}
