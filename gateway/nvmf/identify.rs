//! Identify data structures (4096 bytes each): controller, namespace,
//! active namespace list, namespace identification descriptors.

use super::ana;
use super::controller::{Controller, AERL, KAS, OAES};
use super::spec::NVME_VERSION;
use super::subsystem::Namespace;

fn put_ascii(b: &mut [u8], s: &str) {
    // Identify strings are space padded, not NUL terminated.
    b.fill(b' ');
    let n = s.len().min(b.len());
    b[..n].copy_from_slice(&s.as_bytes()[..n]);
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Identify Controller (CNS 01h).
pub fn controller(c: &Controller) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    let s = &c.subsys;
    let disc = s.is_discovery();
    let serial = if s.serial_number.is_empty() {
        format!("ferrite{:04x}", c.id)
    } else {
        s.serial_number.clone()
    };
    put_ascii(&mut b[4..24], &serial);
    put_ascii(&mut b[24..64], &s.model_number);
    put_ascii(&mut b[64..72], env!("CARGO_PKG_VERSION"));
    b[72] = 6; // RAB
               // CMIC: several ports and controllers may reach the subsystem; ANA.
    b[76] = if disc {
        0
    } else {
        0x01 | 0x02 | if s.ana_reporting { 0x08 } else { 0 }
    };
    b[77] = c.opts.mdts();
    put16(&mut b, 78, c.id);
    put32(&mut b, 80, NVME_VERSION);
    put32(&mut b, 92, if disc { 0 } else { OAES });
    b[111] = if disc { 2 } else { 1 }; // CNTRLTYPE
                                       // OACS 0: no optional admin commands.
    b[258] = 3; // ACL
    b[259] = AERL;
    b[260] = 0x03; // FRMW: slot 1 read-only, one slot
                   // LPA: extended data for Get Log Page (offsets) and, with ANA, nothing
                   // else; Linux reads the discovery log with offsets.
    b[261] = 0x04;
    b[262] = 0; // ELPE: one error log entry
    put16(&mut b, 266, 0x0157); // WCTEMP 343 K
    put16(&mut b, 268, 0x0175); // CCTEMP 373 K
    put16(&mut b, 320, KAS);
    if !disc && s.ana_reporting {
        b[342] = ana::ANATT;
        b[343] = ana::ANACAP;
        put32(&mut b, 344, s.max_namespaces); // ANAGRPMAX
        put32(&mut b, 348, s.max_namespaces); // NANAGRPID
    }
    b[512] = 0x66; // SQES
    b[513] = 0x44; // CQES
    put16(&mut b, 514, c.opts.max_queue_depth); // MAXCMD
    if !disc {
        put32(&mut b, 516, s.max_namespaces); // NN
                                              // ONCS: Compare, Dataset Management, Write Zeroes.
        put16(&mut b, 520, 0x01 | 0x04 | 0x08);
        put16(&mut b, 522, 0x01); // FUSES: Compare and Write
        b[525] = 0; // VWC: none; every write is durable when it completes
        put16(&mut b, 532, 0); // ACWU
        put32(&mut b, 540, s.max_namespaces); // MNAN
    }
    // SGLS: SGLs supported, offsets in in-capsule data descriptors.
    put32(&mut b, 536, 0x0000_0001 | (1 << 20));
    let n = s.nqn.len().min(256);
    b[768..1024].fill(0);
    b[768..768 + n].copy_from_slice(&s.nqn.as_bytes()[..n]);
    // NVMe-oF attributes: IOCCSZ (in 16-byte units, with the 64-byte SQE),
    // IORCSZ, ICDOFF 0, dynamic controller model, one SGL descriptor.
    put32(&mut b, 1792, (64 + c.opts.in_capsule_data_size) / 16);
    put32(&mut b, 1796, 1);
    b[1802] = 0;
    b[1803] = 1;
    // Power state 0: max power 0 (unreported).
    b
}

/// Identify Namespace (CNS 00h) for an active namespace.
pub fn namespace(ns: &Namespace, ana_reporting: bool) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    let info = ns.volume.info();
    let blocks = info.size / info.block_size as u64;
    put64(&mut b, 0, blocks); // NSZE
    put64(&mut b, 8, blocks); // NCAP
    put64(&mut b, 16, blocks); // NUSE
    b[24] = if info.thin { 0x01 } else { 0 }; // NSFEAT: thin provisioning
    b[25] = 0; // NLBAF: one format
    b[26] = 0; // FLBAS: format 0
    b[30] = 0x01; // NMIC: shared by several controllers (multipath)
                  // DLFEAT: deallocated blocks read as zeroes; Write Zeroes may deallocate.
    b[33] = 0x01 | 0x08;
    b[48..64].copy_from_slice(&(info.size as u128).to_le_bytes()); // NVMCAP
    if ana_reporting {
        put32(&mut b, 92, ns.anagrpid);
    }
    b[104..120].copy_from_slice(&ns.nguid);
    if let Some(e) = ns.eui64 {
        b[120..128].copy_from_slice(&e);
    }
    // LBA format 0: no metadata, 2^LBADS-byte blocks.
    b[128 + 2] = info.block_size.trailing_zeros() as u8;
    b
}

/// Active Namespace ID list (CNS 02h): ids above `after`, ascending.
pub fn active_ns_list(nsids: impl Iterator<Item = u32>, after: u32) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    for (i, id) in nsids.filter(|&id| id > after).take(1024).enumerate() {
        put32(&mut b, i * 4, id);
    }
    b
}

/// Namespace Identification Descriptor list (CNS 03h): EUI-64 when set,
/// NGUID, UUID and the command set (NVM).
pub fn ns_descriptors(ns: &Namespace) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    let mut at = 0;
    let mut add = |nidt: u8, id: &[u8]| {
        b[at] = nidt;
        b[at + 1] = id.len() as u8;
        b[at + 4..at + 4 + id.len()].copy_from_slice(id);
        at += 4 + id.len();
    };
    if let Some(e) = ns.eui64 {
        add(1, &e);
    }
    add(2, &ns.nguid);
    add(3, &ns.uuid);
    add(4, &[0]);
    b
}
