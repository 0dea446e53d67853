//! Protocol-level tests of the NVMe/TCP target with a small NVMe/TCP host
//! written here (independently of the target's encoders): the transport
//! (ICReq, digests, in-capsule data, R2T/H2CData, C2HData), fabrics and
//! admin commands, NVM commands and their status codes, malformed PDUs,
//! access control, keep-alive, asynchronous events and ANA, discovery, and
//! the JSON-RPC methods. Everything on 127.0.0.1 with 2 reactors.

use ferrite_engine::rpc::Registry;
use ferrite_engine::rt::{Config, Runtime};
use ferrite_engine::volume::mem::{MemProvider, MemVolume};
use ferrite_engine::volume::{AccessState, BlockVolume};
use ferrite_gateway::nvmf::{
    self, ExportOpts, ListenAddress, NvmfTarget, TargetConfig, TransportOpts,
};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000001";
const VOL_SIZE: u64 = 64 << 20;

// ---------------------------------------------------------------- the host

fn crc(b: &[u8]) -> [u8; 4] {
    crc32c::crc32c(b).to_le_bytes()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cqe {
    dw0: u32,
    dw1: u32,
    sqhd: u16,
    cid: u16,
    status: u16,
}

#[derive(Debug)]
enum Pdu {
    Resp(Cqe),
    Data {
        cid: u16,
        datao: u32,
        data: Vec<u8>,
        flags: u8,
        digest_ok: bool,
    },
    R2t {
        cid: u16,
        ttag: u16,
        off: u32,
        len: u32,
    },
    Term {
        fes: u16,
        fei: u32,
    },
}

/// A submission queue entry under construction.
#[derive(Clone, Copy)]
struct Cmd([u8; 64]);

impl Cmd {
    fn new(opc: u8, nsid: u32) -> Self {
        let mut b = [0u8; 64];
        b[0] = opc;
        b[1] = 0x40; // SGL
        b[4..8].copy_from_slice(&nsid.to_le_bytes());
        Self(b)
    }
    fn fabrics(fctype: u8) -> Self {
        let mut c = Self::new(0x7f, 0);
        c.0[4] = fctype;
        c
    }
    fn cdw(mut self, n: usize, v: u32) -> Self {
        let at = 40 + (n - 10) * 4;
        self.0[at..at + 4].copy_from_slice(&v.to_le_bytes());
        self
    }
    fn lba(self, slba: u64, nlb: u32) -> Self {
        self.cdw(10, slba as u32)
            .cdw(11, (slba >> 32) as u32)
            .cdw(12, nlb - 1)
    }
    fn fuse(mut self, f: u8) -> Self {
        self.0[1] = 0x40 | f;
        self
    }
    fn sgl(mut self, id: u8, len: u32) -> Self {
        self.0[24..32].fill(0);
        self.0[32..36].copy_from_slice(&len.to_le_bytes());
        self.0[39] = id;
        self
    }
}

struct Host {
    s: TcpStream,
    hdgst: bool,
    ddgst: bool,
    maxh2cdata: u32,
    next_cid: u16,
    /// In-capsule data limit (from Identify's IOCCSZ on I/O queues).
    icd: u32,
}

impl Host {
    fn open(addr: SocketAddr, hdgst: bool, ddgst: bool) -> Self {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        let mut h = Self {
            s,
            hdgst,
            ddgst,
            maxh2cdata: 0,
            next_cid: 1,
            icd: 8192,
        };
        let mut ic = [0u8; 128];
        ic[0] = 0x00;
        ic[2] = 128;
        ic[4..8].copy_from_slice(&128u32.to_le_bytes());
        ic[11] = hdgst as u8 | (ddgst as u8) << 1;
        h.s.write_all(&ic).unwrap();
        let mut r = [0u8; 128];
        h.s.read_exact(&mut r).unwrap();
        assert_eq!(r[0], 0x01, "ICResp");
        assert_eq!(u32::from_le_bytes(r[4..8].try_into().unwrap()), 128);
        assert_eq!(r[10], 0, "CPDA");
        assert_eq!(r[11], ic[11], "digests granted as asked");
        h.maxh2cdata = u32::from_le_bytes(r[12..16].try_into().unwrap());
        assert!(h.maxh2cdata >= 4096 && h.maxh2cdata.is_multiple_of(4));
        h
    }

    fn cid(&mut self) -> u16 {
        self.next_cid = self.next_cid.wrapping_add(1).max(1);
        self.next_cid
    }

    fn hd(&self) -> usize {
        if self.hdgst {
            4
        } else {
            0
        }
    }

    /// A command capsule, with `icd` as in-capsule data.
    fn send_capsule(&mut self, cmd: &Cmd, icd: &[u8]) {
        let hd = self.hd();
        let dd = if self.ddgst && !icd.is_empty() { 4 } else { 0 };
        let pdo = if icd.is_empty() { 0 } else { 72 + hd };
        let plen = 72 + hd + icd.len() + dd;
        let mut b = Vec::with_capacity(plen);
        b.extend_from_slice(&[
            0x04,
            self.hdgst as u8 | ((dd > 0) as u8) << 1,
            72,
            pdo as u8,
        ]);
        b.extend_from_slice(&(plen as u32).to_le_bytes());
        b.extend_from_slice(&cmd.0);
        if self.hdgst {
            let c = crc(&b[..72]);
            b.extend_from_slice(&c);
        }
        b.extend_from_slice(icd);
        if dd > 0 {
            b.extend_from_slice(&crc(icd));
        }
        self.s.write_all(&b).unwrap();
    }

    fn send_h2c(&mut self, cid: u16, ttag: u16, off: u32, data: &[u8], last: bool) {
        let hd = self.hd();
        let dd = if self.ddgst { 4 } else { 0 };
        let plen = 24 + hd + data.len() + dd;
        let flags = self.hdgst as u8 | (self.ddgst as u8) << 1 | (last as u8) << 2;
        let mut b = vec![0x06, flags, 24, (24 + hd) as u8];
        b.extend_from_slice(&(plen as u32).to_le_bytes());
        b.extend_from_slice(&cid.to_le_bytes());
        b.extend_from_slice(&ttag.to_le_bytes());
        b.extend_from_slice(&off.to_le_bytes());
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        if self.hdgst {
            let c = crc(&b[..24]);
            b.extend_from_slice(&c);
        }
        b.extend_from_slice(data);
        if dd > 0 {
            b.extend_from_slice(&crc(data));
        }
        self.s.write_all(&b).unwrap();
    }

    /// The next PDU from the controller; `None` at EOF.
    fn recv(&mut self) -> Option<Pdu> {
        let mut ch = [0u8; 8];
        match self.s.read_exact(&mut ch) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                return None
            }
            Err(e) => panic!("reading a PDU: {e}"),
        }
        let plen = u32::from_le_bytes(ch[4..8].try_into().unwrap()) as usize;
        assert!((8..(1 << 21)).contains(&plen), "sane PLEN {plen}");
        let mut p = ch.to_vec();
        p.resize(plen, 0);
        self.s.read_exact(&mut p[8..]).unwrap();
        let (t, flags, hlen, pdo) = (p[0], p[1], p[2] as usize, p[3] as usize);
        if t == 0x03 {
            assert_eq!(hlen, 24);
            return Some(Pdu::Term {
                fes: u16::from_le_bytes([p[8], p[9]]),
                fei: u32::from_le_bytes(p[10..14].try_into().unwrap()),
            });
        }
        assert_eq!(hlen, 24, "every C2H PDU a host parses has HLEN 24");
        assert_eq!(flags & 1 != 0, self.hdgst, "HDGSTF as negotiated");
        if self.hdgst {
            assert_eq!(crc(&p[..24]), p[24..28], "header digest of PDU type {t:#x}");
        }
        let u16a = |i: usize| u16::from_le_bytes([p[i], p[i + 1]]);
        let u32a = |i: usize| u32::from_le_bytes(p[i..i + 4].try_into().unwrap());
        Some(match t {
            0x05 => {
                assert_eq!(plen, 24 + self.hd());
                Pdu::Resp(Cqe {
                    dw0: u32a(8),
                    dw1: u32a(12),
                    sqhd: u16a(16),
                    cid: u16a(20),
                    status: u16a(22) >> 1,
                })
            }
            0x07 => {
                let datal = u32a(16) as usize;
                assert_eq!(pdo, 24 + self.hd(), "no padding asked (HPDA 0)");
                let data = p[pdo..pdo + datal].to_vec();
                let digest_ok = if flags & 2 != 0 {
                    crc(&data) == p[pdo + datal..pdo + datal + 4]
                } else {
                    true
                };
                assert_eq!(flags & 2 != 0, self.ddgst);
                Pdu::Data {
                    cid: u16a(8),
                    datao: u32a(12),
                    data,
                    flags,
                    digest_ok,
                }
            }
            0x09 => Pdu::R2t {
                cid: u16a(8),
                ttag: u16a(10),
                off: u32a(12),
                len: u32a(16),
            },
            t => panic!("unexpected PDU type {t:#x}"),
        })
    }

    /// Runs one command to completion: sends its data in the capsule (up to
    /// the in-capsule limit) or on R2T, gathers its data.
    fn exec(&mut self, mut cmd: Cmd, out: &[u8], in_len: u32) -> (Cqe, Vec<u8>) {
        let cid = self.cid();
        cmd.0[2..4].copy_from_slice(&cid.to_le_bytes());
        let inline = !out.is_empty() && out.len() as u32 <= self.icd;
        if inline {
            cmd = cmd.sgl(0x01, out.len() as u32);
        } else if !out.is_empty() {
            cmd = cmd.sgl(0x5a, out.len() as u32);
        } else {
            cmd = cmd.sgl(0x5a, in_len);
        }
        self.send_capsule(&cmd, if inline { out } else { &[] });
        let mut got = Vec::new();
        loop {
            match self.recv().expect("connection closed during a command") {
                Pdu::Resp(c) => {
                    assert_eq!(c.cid, cid);
                    return (c, got);
                }
                Pdu::Data {
                    cid: c,
                    datao,
                    data,
                    flags,
                    digest_ok,
                } => {
                    assert_eq!(c, cid);
                    assert!(digest_ok, "C2HData digest");
                    assert_eq!(datao as usize, got.len());
                    got.extend_from_slice(&data);
                    if flags & 0x08 != 0 {
                        return (
                            Cqe {
                                dw0: 0,
                                dw1: 0,
                                sqhd: 0,
                                cid,
                                status: 0,
                            },
                            got,
                        );
                    }
                }
                Pdu::R2t {
                    cid: c,
                    ttag,
                    off,
                    len,
                } => {
                    assert_eq!(c, cid);
                    assert!(len <= self.maxh2cdata);
                    let mut at = off;
                    let end = off + len;
                    while at < end {
                        let n = (end - at).min(self.maxh2cdata);
                        self.send_h2c(
                            cid,
                            ttag,
                            at,
                            &out[at as usize..(at + n) as usize],
                            at + n == end,
                        );
                        at += n;
                    }
                }
                Pdu::Term { fes, fei } => panic!("terminated: FES {fes} FEI {fei}"),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn connect(
        &mut self,
        qid: u16,
        sqsize: u16,
        subnqn: &str,
        hostnqn: &str,
        cntlid: u16,
        kato: u32,
        cattr: u8,
    ) -> Cqe {
        let mut d = vec![0u8; 1024];
        d[0..16].copy_from_slice(&[7u8; 16]);
        d[16..18].copy_from_slice(&cntlid.to_le_bytes());
        d[256..256 + subnqn.len()].copy_from_slice(subnqn.as_bytes());
        d[512..512 + hostnqn.len()].copy_from_slice(hostnqn.as_bytes());
        let mut c = Cmd::fabrics(0x01)
            .cdw(10, (qid as u32) << 16)
            .cdw(11, sqsize as u32)
            .cdw(12, kato);
        c.0[46] = cattr;
        self.exec(c, &d, 0).0
    }

    fn prop_get(&mut self, off: u32, eight: bool) -> u64 {
        let (c, _) = self.exec(
            Cmd::fabrics(0x04).cdw(10, eight as u32).cdw(11, off),
            &[],
            0,
        );
        assert_eq!(c.status, 0);
        c.dw0 as u64 | (c.dw1 as u64) << 32
    }

    fn prop_set(&mut self, off: u32, v: u32) {
        let (c, _) = self.exec(Cmd::fabrics(0x00).cdw(11, off).cdw(12, v), &[], 0);
        assert_eq!(c.status, 0);
    }

    /// Admin queue: Connect, enable, as Linux does. Returns the cntlid.
    fn admin_setup(&mut self, subnqn: &str, hostnqn: &str, kato: u32) -> u16 {
        let c = self.connect(0, 31, subnqn, hostnqn, 0xffff, kato, 0);
        assert_eq!(c.status, 0, "admin Connect");
        let cntlid = c.dw0 as u16;
        let cap = self.prop_get(0x00, true);
        assert_eq!(cap & 0xffff, 127, "MQES");
        assert!(cap & (1 << 37) != 0, "NVM command set");
        assert_eq!(self.prop_get(0x08, false), 0x10300);
        self.prop_set(0x14, 1 | 6 << 16 | 4 << 20);
        assert_eq!(self.prop_get(0x1c, false) & 1, 1, "CSTS.RDY");
        cntlid
    }

    fn identify(&mut self, cns: u8, nsid: u32) -> (Cqe, Vec<u8>) {
        self.exec(Cmd::new(0x06, nsid).cdw(10, cns as u32), &[], 4096)
    }

    fn get_log(&mut self, lid: u32, len: u32, offset: u64, nsid: u32) -> (Cqe, Vec<u8>) {
        let numd = len / 4 - 1;
        let c = Cmd::new(0x02, nsid)
            .cdw(10, lid | (numd & 0xffff) << 16)
            .cdw(11, numd >> 16)
            .cdw(12, offset as u32)
            .cdw(13, (offset >> 32) as u32);
        self.exec(c, &[], len)
    }

    fn read(&mut self, slba: u64, nlb: u32, bs: u32) -> (Cqe, Vec<u8>) {
        self.exec(Cmd::new(0x02, 1).lba(slba, nlb), &[], nlb * bs)
    }

    fn write(&mut self, slba: u64, data: &[u8], bs: u32) -> Cqe {
        self.exec(Cmd::new(0x01, 1).lba(slba, data.len() as u32 / bs), data, 0)
            .0
    }

    /// Expects the controller to end the connection with a C2HTermReq.
    fn expect_term(&mut self) -> (u16, u32) {
        loop {
            match self.recv() {
                Some(Pdu::Term { fes, fei }) => {
                    assert!(self.recv().is_none(), "the queue closes after a C2HTermReq");
                    return (fes, fei);
                }
                Some(Pdu::Resp(_)) | Some(Pdu::Data { .. }) | Some(Pdu::R2t { .. }) => continue,
                None => panic!("closed without a C2HTermReq"),
            }
        }
    }
}

// ------------------------------------------------------------- the target

struct Fixture {
    rt: Option<Runtime>,
    target: Arc<NvmfTarget>,
    vol: Arc<MemVolume>,
    addr: SocketAddr,
    nqn: String,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.target.shutdown();
        if let Some(rt) = self.rt.take() {
            rt.shutdown();
        }
    }
}

fn fixture_with(bs: u32, hosts: Vec<String>, cfg: TargetConfig, topts: TransportOpts) -> Fixture {
    let _ = env_logger::builder().is_test(true).try_init();
    let rt = Runtime::new(Config::for_tests(2)).unwrap();
    let provider = MemProvider::new();
    let vol = MemVolume::new("vol0", VOL_SIZE, bs);
    provider.add(vol.clone());
    let target = NvmfTarget::with_config(rt.handle(), provider, cfg);
    target.create_transport(topts).unwrap();
    let o = ExportOpts {
        allow_any_host: hosts.is_empty(),
        hosts,
        listeners: vec![ListenAddress::tcp("127.0.0.1", 0)],
        cntlid_range: (1, 0xffef),
    };
    let nqn = target.export_volume("vol0", &o).unwrap();
    let l = target.subsystem(&nqn).unwrap().listeners()[0].clone();
    let addr: SocketAddr = format!("127.0.0.1:{}", l.trsvcid).parse().unwrap();
    Fixture {
        rt: Some(rt),
        target,
        vol,
        addr,
        nqn,
    }
}

fn fixture() -> Fixture {
    let cfg = TargetConfig {
        poll_interval: Duration::from_millis(20),
        ..TargetConfig::default()
    };
    fixture_with(512, Vec::new(), cfg, TransportOpts::default())
}

/// Admin queue + one I/O queue.
fn connected(f: &Fixture, hdgst: bool, ddgst: bool) -> (Host, Host, u16) {
    let mut a = Host::open(f.addr, hdgst, ddgst);
    let cntlid = a.admin_setup(&f.nqn, HOSTNQN, 0);
    let (c, _) = a.exec(Cmd::new(0x09, 0).cdw(10, 0x07).cdw(11, 0), &[], 0);
    assert_eq!((c.status, c.dw0), (0, 0), "one I/O queue granted");
    let mut io = Host::open(f.addr, hdgst, ddgst);
    io.icd = 4096;
    let c = io.connect(1, 127, &f.nqn, HOSTNQN, cntlid, 0, 0);
    assert_eq!(c.status, 0, "I/O Connect");
    (a, io, cntlid)
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

/// Waits (boundedly) for `cond`.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what}: not reached");
}

// ------------------------------------------------------------------ tests

#[test]
fn identify_and_io_round_trip() {
    let f = fixture();
    let (mut a, mut io, cntlid) = connected(&f, false, false);

    let (c, id) = a.identify(0x01, 0);
    assert_eq!(c.status, 0);
    assert_eq!(u16::from_le_bytes([id[78], id[79]]), cntlid);
    assert_eq!(
        id[76] & 0x0b,
        0x0b,
        "CMIC: multi-port, multi-controller, ANA"
    );
    assert_eq!(id[111], 1, "I/O controller");
    assert_eq!(id[77], 5, "MDTS 128 KiB");
    assert!(u16::from_le_bytes([id[320], id[321]]) > 0, "KAS");
    assert_eq!(&id[768..768 + f.nqn.len()], f.nqn.as_bytes());
    assert_eq!(
        u32::from_le_bytes(id[1792..1796].try_into().unwrap()),
        (64 + 4096) / 16,
        "IOCCSZ"
    );
    assert_eq!(
        u32::from_le_bytes(id[540..544].try_into().unwrap()),
        u32::from_le_bytes(id[516..520].try_into().unwrap()),
        "MNAN = NN"
    );

    let (c, ns) = a.identify(0x00, 1);
    assert_eq!(c.status, 0);
    assert_eq!(
        u64::from_le_bytes(ns[0..8].try_into().unwrap()),
        VOL_SIZE / 512
    );
    assert_eq!(ns[128 + 2], 9, "512-byte blocks");
    assert_eq!(ns[30], 1, "shared namespace");
    assert_eq!(
        u32::from_le_bytes(ns[92..96].try_into().unwrap()),
        1,
        "ANA group"
    );
    assert_eq!(
        &ns[104..120],
        &f.vol.info().uuid,
        "NGUID is the volume's uuid"
    );
    let (_, list) = a.identify(0x02, 0);
    assert_eq!(&list[0..8], &[1, 0, 0, 0, 0, 0, 0, 0]);
    let (_, desc) = a.identify(0x03, 1);
    assert_eq!((desc[0], desc[1]), (2, 16));
    assert_eq!(&desc[4..20], &f.vol.info().uuid);
    assert_eq!((desc[20], desc[21]), (3, 16));
    assert_eq!(a.identify(0x03, 9).0.status, 0x400b, "inactive namespace");
    let (_, zero) = a.identify(0x00, 5);
    assert!(
        zero.iter().all(|&b| b == 0),
        "an inactive id reads as zeroes"
    );
    assert_eq!(a.identify(0x00, 0xffff).0.status, 0x400b);

    // Writes in the capsule (4 KiB) and on R2T (64 KiB, 128 KiB), reads back.
    let small = pattern(4096, 1);
    assert_eq!(io.write(8, &small, 512).status, 0);
    let big = pattern(128 * 1024, 2);
    assert_eq!(io.write(1000, &big[..65536], 512).status, 0);
    assert_eq!(io.write(5000, &big, 512).status, 0);
    assert_eq!(io.read(8, 8, 512).1, small);
    assert_eq!(io.read(1000, 128, 512).1, &big[..65536]);
    assert_eq!(io.read(5000, 256, 512).1, big);
    let mut direct = vec![0u8; 4096];
    f.vol.read(8 * 512, &mut direct).unwrap();
    assert_eq!(direct, small, "the data is in the volume");

    // Status codes.
    let blocks = VOL_SIZE / 512;
    assert_eq!(
        io.read(blocks - 1, 2, 512).0.status,
        0x4080,
        "LBA out of range, DNR"
    );
    assert_eq!(io.write(blocks, &small, 512).status, 0x4080);
    let (c, _) = io.exec(Cmd::new(0x7e, 1), &[], 0);
    assert_eq!(c.status, 0x4001, "invalid opcode");
    assert_eq!(
        io.read(8, 8, 512).1,
        small,
        "the queue goes on after an invalid opcode"
    );
    let (c, _) = io.exec(Cmd::new(0x02, 7).lba(0, 1), &[], 512);
    assert_eq!(c.status, 0x400b, "invalid namespace");
    let (c, _) = io.exec(Cmd::new(0x02, 1).lba(0, 8), &[], 512);
    assert_eq!(c.status, 0x400f, "SGL length shorter than the transfer");
    let (c, _) = io.exec(Cmd::new(0x02, 1).lba(0, 512), &[], 512 * 512);
    assert_ne!(c.status, 0, "above MDTS");

    // Write Zeroes, Deallocate, Flush, Compare, fused Compare+Write.
    assert_eq!(io.exec(Cmd::new(0x08, 1).lba(8, 4), &[], 0).0.status, 0);
    let back = io.read(8, 8, 512).1;
    assert!(back[..2048].iter().all(|&b| b == 0) && back[2048..] == small[2048..]);
    let mut range = vec![0u8; 16];
    range[4..8].copy_from_slice(&128u32.to_le_bytes());
    range[8..16].copy_from_slice(&1000u64.to_le_bytes());
    assert_eq!(
        io.exec(Cmd::new(0x09, 1).cdw(10, 0).cdw(11, 1 << 2), &range, 0)
            .0
            .status,
        0
    );
    assert!(
        io.read(1000, 128, 512).1.iter().all(|&b| b == 0),
        "deallocated reads as zeroes"
    );
    assert_eq!(io.exec(Cmd::new(0x00, 1), &[], 0).0.status, 0);
    let cur = io.read(5000, 8, 512).1;
    assert_eq!(
        io.exec(Cmd::new(0x05, 1).lba(5000, 8), &cur, 0).0.status,
        0,
        "compare equal"
    );
    assert_eq!(
        io.exec(Cmd::new(0x05, 1).lba(5000, 8), &small, 0).0.status,
        0x4285,
        "compare failure"
    );

    // Fused: pipelined back to back, as the spec wants.
    let new = pattern(4096, 9);
    for (cmp, expect_ok) in [(cur.clone(), true), (cur.clone(), false)] {
        let c1 = io.cid();
        let c2 = io.cid();
        let mut first = Cmd::new(0x05, 1).lba(5000, 8).fuse(1).sgl(0x01, 4096);
        first.0[2..4].copy_from_slice(&c1.to_le_bytes());
        let mut second = Cmd::new(0x01, 1).lba(5000, 8).fuse(2).sgl(0x01, 4096);
        second.0[2..4].copy_from_slice(&c2.to_le_bytes());
        io.send_capsule(&first, &cmp);
        io.send_capsule(&second, &new);
        let mut st = std::collections::HashMap::new();
        while st.len() < 2 {
            match io.recv().unwrap() {
                Pdu::Resp(c) => {
                    st.insert(c.cid, c.status);
                }
                p => panic!("{p:?}"),
            }
        }
        if expect_ok {
            assert_eq!((st[&c1], st[&c2]), (0, 0));
            assert_eq!(io.read(5000, 8, 512).1, new);
        } else {
            assert_eq!(
                (st[&c1], st[&c2]),
                (0x4285, 0x0009),
                "compare failed, write aborted"
            );
            assert_eq!(io.read(5000, 8, 512).1, new, "nothing written");
        }
    }
    // A lone fused second is refused.
    assert_eq!(
        io.exec(Cmd::new(0x01, 1).lba(0, 8).fuse(2), &small, 0)
            .0
            .status,
        0x000a
    );

    // Logs, features, keep alive, abort.
    let (c, smart) = a.get_log(0x02, 512, 0, 0xffff_ffff);
    assert_eq!((c.status, smart.len()), (0, 512));
    assert_eq!(a.get_log(0x01, 64, 0, 0).0.status, 0);
    assert_eq!(a.get_log(0x03, 512, 0, 0).0.status, 0);
    assert_eq!(a.get_log(0x04, 4096, 0, 0).0.status, 0);
    assert_eq!(
        a.get_log(0x33, 512, 0, 0).0.status,
        0x4109,
        "invalid log page"
    );
    assert_eq!(
        a.get_log(0x02, 512, 4096, 0).0.status,
        0x4002,
        "offset beyond the page"
    );
    assert_eq!(a.exec(Cmd::new(0x18, 0), &[], 0).0.status, 0);
    assert_eq!(a.exec(Cmd::new(0x08, 0), &[], 0).0.dw0 & 1, 1);
    let (c, _) = a.exec(Cmd::new(0x0a, 0).cdw(10, 0x07), &[], 0);
    assert_eq!(c.dw0, 0, "one I/O queue granted");
    assert_eq!(
        a.exec(Cmd::new(0x09, 0).cdw(10, 0x06), &[], 0).0.status,
        0x4002,
        "no volatile write cache"
    );
    assert_eq!(
        a.exec(Cmd::new(0x09, 0).cdw(10, 0x0b | 1 << 31), &[], 0)
            .0
            .status,
        0x410d,
        "not saveable"
    );
    assert_eq!(
        a.exec(Cmd::new(0x01, 0), &[], 0).0.status,
        0x4001,
        "Create SQ is not a fabrics command"
    );

    // A second I/O queue beyond the one granted is refused; qid 1 twice too.
    let mut io2 = Host::open(f.addr, false, false);
    let c = io2.connect(2, 127, &f.nqn, HOSTNQN, cntlid, 0, 0);
    assert_eq!((c.status, c.dw0), (0x4182, 42), "IPO: QID in the SQE");
    let mut io3 = Host::open(f.addr, false, false);
    assert_eq!(
        io3.connect(1, 127, &f.nqn, HOSTNQN, cntlid, 0, 0).status,
        0x4182
    );
}

#[test]
fn digests_and_4k_blocks() {
    let cfg = TargetConfig {
        poll_interval: Duration::from_millis(20),
        ..TargetConfig::default()
    };
    let f = fixture_with(4096, Vec::new(), cfg, TransportOpts::default());
    for (h, d) in [(true, false), (false, true), (true, true)] {
        let (mut a, mut io, _) = connected(&f, h, d);
        assert_eq!(a.identify(0x00, 1).1[130], 12, "4096-byte blocks");
        let data = pattern(128 * 1024, h as u8 + 2 * d as u8);
        assert_eq!(io.write(10, &data[..4096], 4096).status, 0);
        assert_eq!(io.write(100, &data, 4096).status, 0);
        assert_eq!(io.read(100, 32, 4096).1, data);
        assert_eq!(io.read(10, 1, 4096).1, &data[..4096]);
    }

    // A bad data digest fails that command (transient transport error)
    // and the queue goes on.
    let (_a, mut io, _) = connected(&f, true, true);
    let mut cmd = Cmd::new(0x01, 1).lba(0, 1).sgl(0x01, 4096);
    cmd.0[2..4].copy_from_slice(&77u16.to_le_bytes());
    let data = pattern(4096, 5);
    let mut b = vec![0x04, 0x03, 72, 76];
    b.extend_from_slice(&(72u32 + 4 + 4096 + 4).to_le_bytes());
    b.extend_from_slice(&cmd.0);
    let h = crc(&b);
    b.extend_from_slice(&h);
    b.extend_from_slice(&data);
    b.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    io.s.write_all(&b).unwrap();
    match io.recv().unwrap() {
        Pdu::Resp(c) => assert_eq!((c.cid, c.status), (77, 0x0022)),
        p => panic!("{p:?}"),
    }
    assert_eq!(io.read(100, 1, 4096).0.status, 0);

    // A bad header digest ends that queue with a C2HTermReq; the admin
    // queue of the same controller still answers.
    let (mut a, mut io, _) = connected(&f, true, false);
    let mut b = vec![0x04, 0x01, 72, 0];
    b.extend_from_slice(&(76u32).to_le_bytes());
    b.extend_from_slice(&Cmd::new(0x02, 1).lba(0, 1).sgl(0x5a, 4096).0);
    b.extend_from_slice(&[1, 2, 3, 4]);
    io.s.write_all(&b).unwrap();
    assert_eq!(io.expect_term(), (0x03, 0));
    assert_eq!(a.exec(Cmd::new(0x18, 0), &[], 0).0.status, 0);
}

/// Malformed PDUs end the queue they arrive on with the right FES, and
/// nothing else: a queue of another connection keeps working.
#[test]
fn malformed_pdus_close_only_their_queue() {
    let f = fixture();
    let (_a, mut io, cntlid) = connected(&f, false, false);
    let data = pattern(4096, 3);
    assert_eq!(io.write(0, &data, 512).status, 0);

    let raw = |bytes: &[u8]| -> (u16, u32) {
        let mut h = Host::open(f.addr, false, false);
        h.s.write_all(bytes).unwrap();
        h.expect_term()
    };
    // Unknown PDU type.
    assert_eq!(raw(&[0x0b, 0, 24, 0, 24, 0, 0, 0]), (0x01, 0));
    // A controller-to-host type from the host.
    assert_eq!(raw(&[0x05, 0, 24, 0, 24, 0, 0, 0]), (0x01, 0));
    // Wrong HLEN for a command capsule.
    assert_eq!(raw(&[0x04, 0, 70, 0, 70, 0, 0, 0]), (0x01, 2));
    // PLEN shorter than the header.
    let mut b = vec![0x04, 0, 72, 0];
    b.extend_from_slice(&60u32.to_le_bytes());
    b.extend_from_slice(&[0u8; 64]);
    assert_eq!(raw(&b), (0x01, 4));
    // In-capsule data beyond every limit (1 GiB announced).
    let mut b = vec![0x04, 0, 72, 72];
    b.extend_from_slice(&(1u32 << 30).to_le_bytes());
    b.extend_from_slice(&[0u8; 64]);
    assert_eq!(raw(&b), (0x05, 4));
    // PDO inside the header.
    let mut b = vec![0x04, 0, 72, 40];
    b.extend_from_slice(&200u32.to_le_bytes());
    b.extend_from_slice(&[0u8; 64]);
    assert_eq!(raw(&b), (0x01, 3));
    // H2CData for a transfer that does not exist.
    let mut b = vec![0x06, 0x04, 24, 24];
    b.extend_from_slice(&(24u32 + 512).to_le_bytes());
    b.extend_from_slice(&[1, 0, 9, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0]);
    b.extend_from_slice(&[0u8; 512]);
    assert_eq!(raw(&b), (0x01, 10));
    // A second ICReq.
    let mut ic = [0u8; 128];
    ic[2] = 128;
    ic[4] = 128;
    assert_eq!(raw(&ic), (0x02, 0));
    // A first PDU that is not an ICReq.
    let mut s = TcpStream::connect(f.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&[0x04, 0, 72, 0, 72, 0, 0, 0]).unwrap();
    let mut t = [0u8; 24];
    s.read_exact(&mut t).unwrap();
    assert_eq!((t[0], u16::from_le_bytes([t[8], t[9]])), (0x03, 0x02));
    // An ICReq with an unsupported version.
    let mut s = TcpStream::connect(f.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut ic = [0u8; 128];
    ic[2] = 128;
    ic[4] = 128;
    ic[8] = 1;
    s.write_all(&ic).unwrap();
    let mut t = [0u8; 24];
    s.read_exact(&mut t).unwrap();
    assert_eq!((t[0], u16::from_le_bytes([t[8], t[9]])), (0x03, 0x06));

    // H2CData out of order, on a live transfer of a connected queue.
    let mut io2 = Host::open(f.addr, false, false);
    assert_eq!(io2.connect(0, 31, &f.nqn, HOSTNQN, 0xffff, 0, 0).status, 0);
    let mut cmd = Cmd::new(0x09, 0).cdw(10, 0x07).sgl(0x5a, 8192);
    cmd.0[2..4].copy_from_slice(&5u16.to_le_bytes());
    io2.send_capsule(&cmd, &[]);
    match io2.recv().unwrap() {
        Pdu::R2t {
            cid: 5,
            ttag,
            off: 0,
            len: 8192,
        } => io2.send_h2c(5, ttag, 4096, &[0u8; 512], false),
        p => panic!("{p:?}"),
    }
    assert_eq!(io2.expect_term(), (0x04, 12));

    // Commands before Connect: command sequence error, queue goes on.
    let mut h = Host::open(f.addr, false, false);
    let (c, _) = h.exec(Cmd::new(0x06, 0).cdw(10, 1), &[], 4096);
    assert_eq!(c.status, 0x400c);

    // Through all that, the first controller's queues kept working.
    assert_eq!(io.read(0, 8, 512).1, data);
    assert!(f
        .target
        .subsystem(&f.nqn)
        .unwrap()
        .controller(cntlid)
        .is_some());
}

#[test]
fn host_access_control() {
    let cfg = TargetConfig {
        poll_interval: Duration::from_millis(20),
        ..TargetConfig::default()
    };
    let allowed = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000aa";
    let f = fixture_with(
        512,
        vec![allowed.to_string()],
        cfg,
        TransportOpts::default(),
    );
    let mut h = Host::open(f.addr, false, false);
    let c = h.connect(0, 31, &f.nqn, HOSTNQN, 0xffff, 0, 0);
    assert_eq!(c.status, 0x4184, "Connect Invalid Host");
    let c = h.connect(0, 31, "nqn.2026-11.io.ferrite:nope", allowed, 0xffff, 0, 0);
    assert_eq!(
        (c.status, c.dw0),
        (0x4182, 1 << 16 | 256),
        "Connect Invalid Parameters: SUBNQN in the data"
    );
    let c = h.connect(0, 0, &f.nqn, allowed, 0xffff, 0, 0);
    assert_eq!((c.status, c.dw0), (0x4182, 44), "SQSIZE 0");
    let c = h.connect(0, 31, &f.nqn, allowed, 0xffff, 0, 0);
    assert_eq!(c.status, 0);
    let cntlid = c.dw0 as u16;
    // An I/O queue must name a controller of the same host, once enabled.
    let mut io = Host::open(f.addr, false, false);
    assert_eq!(
        io.connect(1, 31, &f.nqn, allowed, cntlid, 0, 0).status,
        0x400c,
        "controller not enabled yet"
    );
    h.prop_set(0x14, 1 | 6 << 16 | 4 << 20);
    let c = io.connect(1, 31, &f.nqn, allowed, cntlid + 1, 0, 0);
    assert_eq!(
        (c.status, c.dw0),
        (0x4182, 1 << 16 | 16),
        "IPO: CNTLID in the data"
    );
    // Allowing the host later over RPC lets it in.
    f.target.add_host(&f.nqn, HOSTNQN).unwrap();
    let mut h2 = Host::open(f.addr, false, false);
    assert_eq!(h2.connect(0, 31, &f.nqn, HOSTNQN, 0xffff, 0, 0).status, 0);
}

#[test]
fn keep_alive_timeout_ends_the_controller() {
    let f = fixture();
    let mut a = Host::open(f.addr, false, false);
    let cntlid = a.admin_setup(&f.nqn, HOSTNQN, 2000);
    assert_eq!(a.exec(Cmd::new(0x09, 0).cdw(10, 0x07), &[], 0).0.status, 0);
    let mut io = Host::open(f.addr, false, false);
    assert_eq!(io.connect(1, 31, &f.nqn, HOSTNQN, cntlid, 0, 0).status, 0);
    // Keep alives keep it (well within KATO, so a loaded machine does not
    // make this flaky).
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(a.exec(Cmd::new(0x18, 0), &[], 0).0.status, 0);
    }
    // Silence ends it: both connections close, the id is freed.
    assert!(a.recv().is_none(), "admin queue closed");
    assert!(io.recv().is_none(), "I/O queue closed");
    eventually("controller gone", || {
        f.target.subsystem(&f.nqn).unwrap().controllers().is_empty()
    });
}

#[test]
fn host_disappearing_frees_the_controller() {
    let f = fixture();
    let (a, mut io, cntlid) = connected(&f, false, false);
    // Leave a command's data half sent: the transfer must not pin anything.
    let mut cmd = Cmd::new(0x01, 1).lba(0, 64).sgl(0x5a, 32768);
    cmd.0[2..4].copy_from_slice(&9u16.to_le_bytes());
    io.send_capsule(&cmd, &[]);
    assert!(matches!(io.recv().unwrap(), Pdu::R2t { .. }));
    drop(a);
    assert!(
        io.recv().is_none(),
        "the I/O queue goes with its admin queue"
    );
    eventually("controller gone", || {
        f.target
            .subsystem(&f.nqn)
            .unwrap()
            .controller(cntlid)
            .is_none()
    });
    // And the target serves the next host.
    let (_a, mut io, _) = connected(&f, false, false);
    assert_eq!(io.read(0, 1, 512).0.status, 0);
}

#[test]
fn async_events_on_resize_and_ana_change() {
    let f = fixture();
    let (mut a, mut io, _) = connected(&f, false, false);
    let (c, _) = a.exec(
        Cmd::new(0x09, 0).cdw(10, 0x0b).cdw(11, 1 << 8 | 1 << 11),
        &[],
        0,
    );
    assert_eq!(c.status, 0);
    // Outstanding AERs: up to AERL+1 = 4.
    let aer = |a: &mut Host| {
        let cid = a.cid();
        let mut c = Cmd::new(0x0c, 0).sgl(0x5a, 0);
        c.0[2..4].copy_from_slice(&cid.to_le_bytes());
        a.send_capsule(&c, &[]);
        cid
    };
    let first = aer(&mut a);

    f.vol.resize(VOL_SIZE * 2);
    match a.recv().unwrap() {
        Pdu::Resp(c) => assert_eq!(
            (c.cid, c.dw0),
            (first, 0x0004_0002),
            "namespace attribute changed"
        ),
        p => panic!("{p:?}"),
    }
    let (_, log) = a.get_log(0x04, 4096, 0, 0xffff_ffff);
    assert_eq!(&log[0..8], &[1, 0, 0, 0, 0, 0, 0, 0], "namespace 1 changed");
    let (_, ns) = a.identify(0x00, 1);
    assert_eq!(
        u64::from_le_bytes(ns[0..8].try_into().unwrap()),
        2 * VOL_SIZE / 512
    );
    assert_eq!(
        io.read(2 * VOL_SIZE / 512 - 1, 1, 512).0.status,
        0,
        "the new end is readable"
    );

    let second = aer(&mut a);
    f.vol.set_access_state(AccessState::Inaccessible);
    match a.recv().unwrap() {
        Pdu::Resp(c) => assert_eq!((c.cid, c.dw0), (second, 0x000c_0302), "ANA change"),
        p => panic!("{p:?}"),
    }
    let (c, ana) = a.get_log(0x0c, 4096, 0, 0xffff_ffff);
    assert_eq!(c.status, 0);
    assert_eq!(u16::from_le_bytes([ana[8], ana[9]]), 1, "one group");
    assert_eq!(
        u32::from_le_bytes(ana[16..20].try_into().unwrap()),
        1,
        "group 1"
    );
    assert_eq!(
        u32::from_le_bytes(ana[20..24].try_into().unwrap()),
        1,
        "one namespace"
    );
    assert_eq!(ana[32], 0x03, "inaccessible");
    assert_eq!(u32::from_le_bytes(ana[48..52].try_into().unwrap()), 1);
    assert_eq!(
        io.read(0, 1, 512).0.status,
        0x0302,
        "ANA inaccessible, retryable on another path"
    );
    let (_, rgo) = a.get_log(0x0c | 1 << 8, 64, 0, 0xffff_ffff);
    assert_eq!(&rgo[20..24], &[0, 0, 0, 0], "groups only");

    let third = aer(&mut a);
    f.vol.set_access_state(AccessState::NonOptimized);
    match a.recv().unwrap() {
        Pdu::Resp(c) => assert_eq!((c.cid, c.dw0), (third, 0x000c_0302)),
        p => panic!("{p:?}"),
    }
    assert_eq!(a.get_log(0x0c, 4096, 0, 0).1[32], 0x02, "non-optimized");
    assert_eq!(io.read(0, 1, 512).0.status, 0, "non-optimized paths serve");
    // AER limit: four may be outstanding, the fifth is refused.
    for _ in 0..5 {
        aer(&mut a);
    }
    match a.recv().unwrap() {
        Pdu::Resp(c) => assert_eq!(c.status, 0x4105, "AER limit exceeded"),
        p => panic!("{p:?}"),
    }
}

#[test]
fn discovery_lists_allowed_subsystems() {
    let f = fixture();
    let disc = f
        .target
        .add_discovery_listener(&ListenAddress::tcp("127.0.0.1", 0), None)
        .unwrap();
    // A second subsystem only another host may see.
    let provider_vol = "vol0";
    let mut so = nvmf::SubsystemOpts::new("nqn.2026-11.io.ferrite:private");
    so.serial_number = "private".into();
    f.target.create_subsystem(so).unwrap();
    f.target
        .add_namespace(
            "nqn.2026-11.io.ferrite:private",
            nvmf::NamespaceOpts {
                bdev_name: provider_vol.into(),
                ..Default::default()
            },
        )
        .unwrap();
    f.target
        .add_host(
            "nqn.2026-11.io.ferrite:private",
            "nqn.2014-08.org.nvmexpress:uuid:someone-else",
        )
        .unwrap();
    f.target
        .add_listener(
            "nqn.2026-11.io.ferrite:private",
            &ListenAddress::tcp("127.0.0.1", f.addr.port()),
            None,
        )
        .unwrap();

    let daddr: SocketAddr = format!("127.0.0.1:{}", disc.trsvcid).parse().unwrap();
    let mut d = Host::open(daddr, false, false);
    d.admin_setup("nqn.2014-08.org.nvmexpress.discovery", HOSTNQN, 0);
    let (_, id) = d.identify(0x01, 0);
    assert_eq!(id[111], 2, "discovery controller");
    assert_eq!(&id[768..768 + 36], b"nqn.2014-08.org.nvmexpress.discovery");
    let (c, hdr) = d.get_log(0x70, 1024, 0, 0);
    assert_eq!(c.status, 0);
    let numrec = u64::from_le_bytes(hdr[8..16].try_into().unwrap());
    assert_eq!(numrec, 1, "only the subsystem this host may use");
    let (_, full) = d.get_log(0x70, 1024 * (1 + numrec as u32), 0, 0);
    let e = &full[1024..2048];
    assert_eq!((e[0], e[1], e[2]), (3, 1, 2), "TCP, IPv4, NVM subsystem");
    assert_eq!(&e[256..256 + f.nqn.len()], f.nqn.as_bytes());
    assert_eq!(
        std::str::from_utf8(&e[32..64]).unwrap().trim(),
        f.addr.port().to_string()
    );
    assert_eq!(
        std::str::from_utf8(&e[512..768]).unwrap().trim(),
        "127.0.0.1"
    );
    // Entries by offset, as nvme-cli reads them.
    let (_, tail) = d.get_log(0x70, 1024, 1024, 0);
    assert_eq!(tail, e);
    // Discovery controllers have no namespaces or I/O queues.
    assert_eq!(d.identify(0x00, 1).0.status, 0x4002);
    assert_eq!(d.exec(Cmd::new(0x01, 0), &[], 0).0.status, 0x4001);
    // The discovery NQN answers on a subsystem port too.
    let mut d2 = Host::open(f.addr, false, false);
    assert_eq!(
        d2.connect(
            0,
            31,
            "nqn.2014-08.org.nvmexpress.discovery",
            HOSTNQN,
            0xffff,
            0,
            0
        )
        .status,
        0
    );
}

#[test]
fn many_commands_in_flight_and_c2h_success() {
    let f = fixture();
    let (_a, mut io, cntlid) = connected(&f, false, false);
    // 64 writes (half in-capsule, half on R2T) back to back, then reads.
    let n = 64u16;
    let mut pending = std::collections::HashMap::new();
    for i in 0..n {
        let len = if i % 2 == 0 { 4096 } else { 16384 };
        let data = pattern(len, i as u8);
        let cid = 1000 + i;
        let id = if len <= 4096 { 0x01 } else { 0x5a };
        let mut c = Cmd::new(0x01, 1)
            .lba(i as u64 * 64, len as u32 / 512)
            .sgl(id, len as u32);
        c.0[2..4].copy_from_slice(&cid.to_le_bytes());
        io.send_capsule(&c, if id == 0x01 { &data } else { &[] });
        pending.insert(cid, data);
    }
    let mut done = 0;
    while done < n {
        match io.recv().unwrap() {
            Pdu::R2t {
                cid,
                ttag,
                off,
                len,
            } => {
                let d = pending[&cid].clone();
                io.send_h2c(cid, ttag, off, &d[off as usize..(off + len) as usize], true);
            }
            Pdu::Resp(c) => {
                assert_eq!(c.status, 0);
                done += 1;
            }
            p => panic!("{p:?}"),
        }
    }
    for i in 0..n {
        let len = pending[&(1000 + i)].len() as u32;
        let mut c = Cmd::new(0x02, 1)
            .lba(i as u64 * 64, len / 512)
            .sgl(0x5a, len);
        c.0[2..4].copy_from_slice(&(2000 + i).to_le_bytes());
        io.send_capsule(&c, &[]);
    }
    let mut got: std::collections::HashMap<u16, Vec<u8>> = Default::default();
    let mut resps = 0;
    while resps < n {
        match io.recv().unwrap() {
            Pdu::Data {
                cid, data, flags, ..
            } => {
                assert_eq!(
                    flags & 0x08,
                    0,
                    "no SUCCESS flag while SQ flow control is on"
                );
                got.insert(cid, data);
            }
            Pdu::Resp(c) => {
                assert_eq!(c.status, 0);
                resps += 1;
            }
            p => panic!("{p:?}"),
        }
    }
    for i in 0..n {
        assert_eq!(got[&(2000 + i)], pending[&(1000 + i)], "command {i}");
    }

    // With SQ flow control disabled, a read ends with SUCCESS and no capsule.
    let mut q = Host::open(f.addr, false, false);
    q.icd = 4096;
    let _ = cntlid;
    drop(io);
    eventually("qid 1 free again", || {
        let mut probe = Host::open(f.addr, false, false);
        probe
            .connect(1, 31, &f.nqn, HOSTNQN, cntlid, 0, 0x04)
            .status
            == 0
            && {
                q = probe;
                true
            }
    });
    let (c, data) = q.read(0, 8, 512);
    assert_eq!((c.status, data), (0, pending[&1000].clone()));
    let mut c = Cmd::new(0x02, 1).lba(0, 8).sgl(0x5a, 4096);
    c.0[2..4].copy_from_slice(&3u16.to_le_bytes());
    q.send_capsule(&c, &[]);
    match q.recv().unwrap() {
        Pdu::Data { flags, .. } => assert_eq!(flags & 0x0c, 0x0c, "LAST and SUCCESS"),
        p => panic!("{p:?}"),
    }
    // The next PDU is the next command's, not a capsule for the read.
    assert_eq!(q.write(0, &pending[&1000], 512).status, 0);
}

#[test]
fn json_rpc_methods() {
    let _ = env_logger::builder().is_test(true).try_init();
    let rt = Runtime::new(Config::for_tests(2)).unwrap();
    let provider = MemProvider::new();
    provider.add(MemVolume::new("vol1", 8 << 20, 4096));
    let target = NvmfTarget::new(rt.handle(), provider);
    let reg = Registry::new();
    nvmf::register_rpc(&reg, target.clone());
    let call = |m: &str, p: serde_json::Value| reg.call(m, Some(p));
    let nqn = "nqn.2026-11.io.ferrite:vol1";

    assert_eq!(call("nvmf_get_transports", json!({})).unwrap(), json!([]));
    let e = call("nvmf_subsystem_add_listener", json!({"nqn": "discovery", "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": "0"}})).unwrap_err();
    assert!(e.message.contains("transport"), "{e}");
    call(
        "nvmf_create_transport",
        json!({"trtype": "TCP", "in_capsule_data_size": 8192, "max_io_size": 262144}),
    )
    .unwrap();
    assert_eq!(
        call("nvmf_create_transport", json!({"trtype": "TCP"}))
            .unwrap_err()
            .code,
        -17
    );
    assert_eq!(
        call("nvmf_create_transport", json!({"trtype": "RDMA"}))
            .unwrap_err()
            .code,
        -32602
    );
    let t = call("nvmf_get_transports", json!({})).unwrap();
    assert_eq!(
        (
            t[0]["trtype"].as_str(),
            t[0]["in_capsule_data_size"].as_u64(),
            t[0]["max_io_size"].as_u64()
        ),
        (Some("TCP"), Some(8192), Some(262144))
    );

    call("nvmf_create_subsystem", json!({"nqn": nqn, "serial_number": "SPDK0001", "model_number": "Ferrite", "allow_any_host": false, "max_namespaces": 8, "min_cntlid": 100, "max_cntlid": 199})).unwrap();
    assert_eq!(
        call("nvmf_create_subsystem", json!({"nqn": nqn}))
            .unwrap_err()
            .code,
        -17
    );
    assert_eq!(
        call("nvmf_create_subsystem", json!({"nqn": "bogus"}))
            .unwrap_err()
            .code,
        -22
    );
    assert_eq!(
        call("nvmf_create_subsystem", json!({})).unwrap_err().code,
        -32602,
        "nqn is required"
    );
    let nsid = call(
        "nvmf_subsystem_add_ns",
        json!({"nqn": nqn, "namespace": {"bdev_name": "vol1"}}),
    )
    .unwrap();
    assert_eq!(nsid, json!(1));
    assert_eq!(
        call(
            "nvmf_subsystem_add_ns",
            json!({"nqn": nqn, "namespace": {"bdev_name": "nope"}})
        )
        .unwrap_err()
        .code,
        -2
    );
    let ns2 = call("nvmf_subsystem_add_ns", json!({"nqn": nqn, "namespace": {"bdev_name": "vol1", "nsid": 5, "uuid": "12345678-1234-4234-8234-123456789abc"}})).unwrap();
    assert_eq!(ns2, json!(5));
    call(
        "nvmf_subsystem_add_host",
        json!({"nqn": nqn, "host": HOSTNQN}),
    )
    .unwrap();
    assert_eq!(
        call(
            "nvmf_subsystem_add_host",
            json!({"nqn": nqn, "host": HOSTNQN})
        )
        .unwrap_err()
        .code,
        -17
    );
    call("nvmf_subsystem_add_listener", json!({"nqn": nqn, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "0", "advertise_traddr": "10.0.2.100", "advertise_trsvcid": "4420"}})).unwrap();

    let subs = call("nvmf_get_subsystems", json!({})).unwrap();
    assert_eq!(subs[0]["nqn"], "nqn.2014-08.org.nvmexpress.discovery");
    let s = &subs[1];
    assert_eq!(
        (
            s["nqn"].as_str(),
            s["subtype"].as_str(),
            s["allow_any_host"].as_bool()
        ),
        (Some(nqn), Some("NVMe"), Some(false))
    );
    assert_eq!(s["hosts"][0]["nqn"], HOSTNQN);
    assert_eq!(s["serial_number"], "SPDK0001");
    assert_eq!(s["namespaces"][0]["bdev_name"], "vol1");
    assert_eq!(
        s["namespaces"][1]["uuid"],
        "12345678-1234-4234-8234-123456789abc"
    );
    assert_eq!(s["listen_addresses"][0]["traddr"], "127.0.0.1");
    let port: u16 = s["listen_addresses"][0]["trsvcid"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(port, 0);

    // The controller id comes from the subsystem's range; the advertised
    // address is what discovery reports.
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut h = Host::open(addr, false, false);
    let cntlid = h.admin_setup(nqn, HOSTNQN, 0);
    assert!((100..=199).contains(&cntlid));
    let mut d = Host::open(addr, false, false);
    d.admin_setup("nqn.2014-08.org.nvmexpress.discovery", HOSTNQN, 0);
    let (_, log) = d.get_log(0x70, 2048, 0, 0);
    assert_eq!(
        std::str::from_utf8(&log[1024 + 512..1024 + 768])
            .unwrap()
            .trim(),
        "10.0.2.100"
    );
    assert_eq!(
        std::str::from_utf8(&log[1024 + 32..1024 + 64])
            .unwrap()
            .trim(),
        "4420"
    );
    let ctrls = call("nvmf_subsystem_get_controllers", json!({"nqn": nqn})).unwrap();
    assert!(ctrls
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["cntlid"] == json!(cntlid)));

    call("nvmf_subsystem_remove_ns", json!({"nqn": nqn, "nsid": 5})).unwrap();
    assert_eq!(
        call("nvmf_subsystem_remove_ns", json!({"nqn": nqn, "nsid": 5}))
            .unwrap_err()
            .code,
        -2
    );
    call("nvmf_delete_subsystem", json!({"nqn": nqn})).unwrap();
    assert!(
        h.recv().is_none(),
        "deleting the subsystem ends its controllers"
    );
    assert_eq!(
        call("nvmf_delete_subsystem", json!({"nqn": nqn}))
            .unwrap_err()
            .code,
        -2
    );
    assert_eq!(
        call("nvmf_get_subsystems", json!({}))
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(
        reg.names()
            .iter()
            .filter(|n| n.starts_with("nvmf_"))
            .count()
            >= 9
    );
    target.shutdown();
    rt.shutdown();
}
