//! EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.18): the
//! copy manager that lets an initiator (VMware's XCOPY clone offload, for
//! one) have the target copy blocks between its LUNs without the data
//! crossing the network.
//!
//! Supported: identification CSCD descriptors (0xE4) naming a LUN by its
//! NAA designator, block-to-block segment descriptors (0x02), list ids held
//! for COPY STATUS. Copies run synchronously inside the command.

use super::sense::{Asc, Sense};
use ferrite_engine::volume::BlockVolume;
use std::collections::HashMap;
use std::sync::Arc;

/// Resolves a CSCD designator (code set, type, and designator bytes) to a
/// volume and its block size, for LUNs other than the one the command came to.
pub type CopyResolver = Arc<dyn Fn(&[u8]) -> Option<Arc<dyn BlockVolume>> + Send + Sync>;

pub const MAX_CSCD_DESCRIPTORS: u16 = 8;
pub const MAX_SEGMENT_DESCRIPTORS: u16 = 16;
pub const MAX_DESCRIPTOR_LIST_LENGTH: u32 = 1024;
/// Largest segment, in bytes (65535 blocks of 4 KiB fit).
pub const MAX_SEGMENT_BYTES: u32 = 256 << 20;
/// Copies are done in pieces of this size.
const PIECE: usize = 1 << 20;
/// Held COPY STATUS results per I_T nexus.
const MAX_HELD: usize = 64;

const CSCD_IDENT: u8 = 0xE4;
const SEG_BLOCK_TO_BLOCK: u8 = 0x02;

pub const ASC_TOO_MANY_CSCD: Asc = Asc(0x26, 0x06);
pub const ASC_UNSUPPORTED_CSCD_TYPE: Asc = Asc(0x26, 0x07);
pub const ASC_TOO_MANY_SEGMENTS: Asc = Asc(0x26, 0x08);
pub const ASC_UNSUPPORTED_SEGMENT_TYPE: Asc = Asc(0x26, 0x09);
pub const ASC_COPY_TARGET_NOT_REACHABLE: Asc = Asc(0x0D, 0x02);
pub const COPY_ABORTED: u8 = 0x0A;

/// The outcome of a copy, kept for RECEIVE COPY RESULTS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyStatus {
    pub ok: bool,
    pub segments: u16,
    pub bytes: u64,
}

/// Held results, per I_T nexus and list identifier.
#[derive(Default, Debug)]
pub struct Held {
    map: HashMap<String, Vec<(u8, CopyStatus)>>,
}

impl Held {
    pub fn put(&mut self, nexus: &str, list_id: u8, st: CopyStatus) {
        let v = self.map.entry(nexus.to_string()).or_default();
        v.retain(|(id, _)| *id != list_id);
        if v.len() >= MAX_HELD {
            v.remove(0);
        }
        v.push((list_id, st));
    }

    pub fn get(&self, nexus: &str, list_id: u8) -> Option<CopyStatus> {
        self.map
            .get(nexus)?
            .iter()
            .find(|(id, _)| *id == list_id)
            .map(|(_, s)| *s)
    }

    pub fn forget(&mut self, nexus: &str) {
        self.map.remove(nexus);
    }
}

/// One parsed CSCD descriptor.
struct Cscd {
    designator: Vec<u8>,
    null: bool,
    block_size: u32,
}

struct Segment {
    src: u16,
    dst: u16,
    blocks: u16,
    src_lba: u64,
    dst_lba: u64,
}

fn param_err() -> Sense {
    Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR)
}

fn aborted(asc: Asc) -> Sense {
    Sense::new(COPY_ABORTED, asc)
}

/// What an EXTENDED COPY needs from the logical unit it was sent to.
pub struct Me<'a> {
    pub volume: &'a Arc<dyn BlockVolume>,
    pub naa: &'a [u8; 16],
    pub resolver: Option<CopyResolver>,
}

impl Me<'_> {
    fn resolve(&self, c: &Cscd) -> Option<Arc<dyn BlockVolume>> {
        // Code set binary, association LU, type NAA, 16 bytes: is it us?
        if c.designator.len() >= 4
            && c.designator[1] & 0x0F == 0x03
            && c.designator[4..] == self.naa[..]
        {
            return Some(self.volume.clone());
        }
        self.resolver.as_ref().and_then(|r| r(&c.designator))
    }
}

/// EXTENDED COPY(LID1). Also returns the result to hold for RECEIVE COPY
/// RESULTS under its list identifier, when the initiator asked for that.
pub fn extended_copy(
    me: &Me<'_>,
    cdb: &[u8],
    data: &[u8],
) -> (Result<(), Sense>, Option<(u8, CopyStatus)>) {
    match parse(cdb, data) {
        Ok(None) => (Ok(()), None),
        Ok(Some(job)) => {
            let mut status = CopyStatus {
                ok: false,
                segments: 0,
                bytes: 0,
            };
            let r = run_segments(me, &job.targets, &job.segments, &mut status);
            status.ok = r.is_ok();
            (r, job.hold.then_some((job.list_id, status)))
        }
        Err(e) => (Err(e), None),
    }
}

/// A parsed parameter list.
struct Job {
    list_id: u8,
    hold: bool,
    targets: Vec<Cscd>,
    segments: Vec<Segment>,
}

/// Validates the parameter list (limits first, then descriptor types and
/// fields); `None` for an empty list, which copies nothing.
fn parse(cdb: &[u8], data: &[u8]) -> Result<Option<Job>, Sense> {
    let plen = u32::from_be_bytes([cdb[10], cdb[11], cdb[12], cdb[13]]) as usize;
    if plen == 0 {
        return Ok(None);
    }
    if plen < 16 || data.len() < plen {
        return Err(param_err());
    }
    let d = &data[..plen];
    let list_id = d[0];
    let usage = (d[1] >> 3) & 0x03;
    let cscd_len = u16::from_be_bytes([d[2], d[3]]) as usize;
    let seg_len = u32::from_be_bytes([d[8], d[9], d[10], d[11]]) as usize;
    let inline_len = u32::from_be_bytes([d[12], d[13], d[14], d[15]]) as usize;
    if 16usize
        .saturating_add(cscd_len)
        .saturating_add(seg_len)
        .saturating_add(inline_len)
        > plen
    {
        return Err(param_err());
    }
    if cscd_len + seg_len > MAX_DESCRIPTOR_LIST_LENGTH as usize {
        return Err(param_err());
    }
    if inline_len != 0 {
        // No inline data is offered (MAXIMUM INLINE DATA LENGTH is 0).
        return Err(Sense::invalid_param_field(12, None));
    }
    if usage == 0x01 || (usage == 0x03 && list_id != 0) {
        return Err(Sense::invalid_param_field(1, Some(4)));
    }
    // Walk the descriptors twice: count them first (the limits are
    // checked before anything else), then parse.
    let cscd_area = &d[16..16 + cscd_len];
    let seg_area = &d[16 + cscd_len..16 + cscd_len + seg_len];
    let mut cscds = Vec::new();
    let mut at = 0;
    while at < cscd_area.len() {
        let ty = cscd_area[at];
        let len = match ty {
            0xE0..=0xE9 => 32,
            0xEA | 0xEB => 64,
            _ => return Err(Sense::illegal(ASC_UNSUPPORTED_CSCD_TYPE).at_param(16 + at)),
        };
        if at + len > cscd_area.len() {
            return Err(param_err());
        }
        cscds.push(at);
        at += len;
    }
    if cscds.len() > MAX_CSCD_DESCRIPTORS as usize {
        return Err(Sense::illegal(ASC_TOO_MANY_CSCD));
    }
    let mut segs = Vec::new();
    let mut at = 0;
    while at < seg_area.len() {
        if at + 4 > seg_area.len() {
            return Err(param_err());
        }
        let len = u16::from_be_bytes([seg_area[at + 2], seg_area[at + 3]]) as usize + 4;
        if at + len > seg_area.len() {
            return Err(param_err());
        }
        segs.push(at);
        at += len;
    }
    if segs.len() > MAX_SEGMENT_DESCRIPTORS as usize {
        return Err(Sense::illegal(ASC_TOO_MANY_SEGMENTS));
    }
    let mut targets = Vec::with_capacity(cscds.len());
    for &off in &cscds {
        let c = &cscd_area[off..off + 32];
        if c[0] != CSCD_IDENT {
            return Err(Sense::illegal(ASC_UNSUPPORTED_CSCD_TYPE).at_param(16 + off));
        }
        // LU ID TYPE is ignored (SPC-4: the designator names the unit); the
        // obsolete NUL bit is still honoured, as an unreachable device.
        let dlen = (c[7] as usize).min(20);
        let designator = [&c[4..8], &c[8..8 + dlen]].concat();
        let block_size = u32::from_be_bytes([0, c[29], c[30], c[31]]);
        targets.push(Cscd {
            designator,
            null: c[1] & 0x20 != 0,
            block_size,
        });
    }
    let mut segments = Vec::with_capacity(segs.len());
    for &off in &segs {
        let s = &seg_area[off..];
        if s[0] != SEG_BLOCK_TO_BLOCK {
            return Err(Sense::illegal(ASC_UNSUPPORTED_SEGMENT_TYPE).at_param(16 + cscd_len + off));
        }
        if u16::from_be_bytes([s[2], s[3]]) != 0x18 {
            return Err(Sense::invalid_param_field(
                (16 + cscd_len + off + 2) as u16,
                None,
            ));
        }
        segments.push(Segment {
            src: u16::from_be_bytes([s[4], s[5]]),
            dst: u16::from_be_bytes([s[6], s[7]]),
            blocks: u16::from_be_bytes([s[10], s[11]]),
            src_lba: u64::from_be_bytes(s[12..20].try_into().expect("8 bytes")),
            dst_lba: u64::from_be_bytes(s[20..28].try_into().expect("8 bytes")),
        });
    }
    Ok(Some(Job {
        list_id,
        hold: usage == 0x00,
        targets,
        segments,
    }))
}

fn run_segments(
    me: &Me<'_>,
    targets: &[Cscd],
    segments: &[Segment],
    status: &mut CopyStatus,
) -> Result<(), Sense> {
    for seg in segments {
        let lookup = |i: u16| -> Result<(Arc<dyn BlockVolume>, u32), Sense> {
            let c = targets
                .get(i as usize)
                .ok_or_else(|| aborted(ASC_COPY_TARGET_NOT_REACHABLE))?;
            if c.null {
                return Err(aborted(ASC_COPY_TARGET_NOT_REACHABLE));
            }
            let v = me
                .resolve(c)
                .ok_or_else(|| aborted(ASC_COPY_TARGET_NOT_REACHABLE))?;
            let bs = v.info().block_size;
            if c.block_size != 0 && c.block_size != bs {
                return Err(aborted(ASC_COPY_TARGET_NOT_REACHABLE));
            }
            Ok((v, bs))
        };
        let (src, sbs) = lookup(seg.src)?;
        let (dst, dbs) = lookup(seg.dst)?;
        if sbs != dbs {
            // Block-to-block between different block sizes is not offered.
            return Err(aborted(Asc::NO_ADDITIONAL));
        }
        let bs = sbs as u64;
        let len = seg.blocks as u64 * bs;
        if len > MAX_SEGMENT_BYTES as u64 {
            return Err(aborted(Asc::NO_ADDITIONAL));
        }
        let in_range = |v: &Arc<dyn BlockVolume>, lba: u64| {
            lba.checked_mul(bs)
                .and_then(|o| o.checked_add(len))
                .is_some_and(|e| e <= v.info().size)
        };
        if !in_range(&src, seg.src_lba) || !in_range(&dst, seg.dst_lba) {
            return Err(aborted(Asc::NO_ADDITIONAL));
        }
        let mut buf = vec![0u8; PIECE.min(len as usize)];
        let mut done = 0u64;
        while done < len {
            let n = (buf.len() as u64).min(len - done) as usize;
            src.read(seg.src_lba * bs + done, &mut buf[..n])
                .map_err(|e| {
                    log::warn!("xcopy: reading the source failed: {e}");
                    aborted(Asc::UNRECOVERED_READ_ERROR)
                })?;
            dst.write(seg.dst_lba * bs + done, &buf[..n]).map_err(|e| {
                log::warn!("xcopy: writing the destination failed: {e}");
                aborted(Asc::WRITE_ERROR)
            })?;
            done += n as u64;
            status.bytes += n as u64;
        }
        status.segments += 1;
    }
    Ok(())
}

/// RECEIVE COPY RESULTS (LID1): COPY STATUS and OPERATING PARAMETERS.
pub fn receive_copy_results(cdb: &[u8], held: Option<CopyStatus>) -> Result<Vec<u8>, Sense> {
    let alloc = u32::from_be_bytes([cdb[10], cdb[11], cdb[12], cdb[13]]) as usize;
    let mut out = match cdb[1] & 0x1F {
        0x00 => {
            let st = held.ok_or_else(|| Sense::invalid_cdb_field(2, None))?;
            let mut b = vec![0u8; 12];
            b[0..4].copy_from_slice(&8u32.to_be_bytes());
            // HDD 0; copy manager status 01h (ok) or 02h (with errors).
            b[4] = if st.ok { 0x01 } else { 0x02 };
            b[5..7].copy_from_slice(&st.segments.to_be_bytes());
            b[7] = 0x00; // transfer count in bytes
            b[8..12].copy_from_slice(&(st.bytes.min(u32::MAX as u64) as u32).to_be_bytes());
            b
        }
        0x03 => {
            let mut b = vec![0u8; 44];
            b[4] = 0x01; // SNLID: list identifiers not required
            b[8..10].copy_from_slice(&MAX_CSCD_DESCRIPTORS.to_be_bytes());
            b[10..12].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
            b[12..16].copy_from_slice(&MAX_DESCRIPTOR_LIST_LENGTH.to_be_bytes());
            b[16..20].copy_from_slice(&MAX_SEGMENT_BYTES.to_be_bytes());
            // Inline data 0, held data limit, stream transfer 0.
            b[24..28].copy_from_slice(&((MAX_HELD * 12) as u32).to_be_bytes());
            b[34..36].copy_from_slice(&1u16.to_be_bytes()); // total concurrent copies
            b[36] = 1; // maximum concurrent copies
            b[37] = 9; // data segment granularity 2^9
            b.extend_from_slice(&[SEG_BLOCK_TO_BLOCK, CSCD_IDENT]);
            b[43] = 2;
            let n = (b.len() - 4) as u32;
            b[0..4].copy_from_slice(&n.to_be_bytes());
            b
        }
        _ => return Err(Sense::invalid_cdb_field(1, Some(4))),
    };
    out.truncate(alloc);
    Ok(out)
}

/// The body of the Third-party Copy VPD page (0x8F): supported commands,
/// parameter data and supported descriptors.
pub fn vpd_body() -> Vec<u8> {
    let mut b = Vec::new();
    let mut desc = |ty: u16, body: Vec<u8>| {
        // Each descriptor (4-byte header + body) is a multiple of 4 bytes.
        let mut body = body;
        body.resize(body.len().div_ceil(4) * 4, 0);
        b.extend_from_slice(&ty.to_be_bytes());
        b.extend_from_slice(&(body.len() as u16).to_be_bytes());
        b.extend_from_slice(&body);
    };
    // Supported Commands: EXTENDED COPY (LID1), RECEIVE COPY RESULTS.
    let cmds = [0x83u8, 1, 0x00, 0x84, 2, 0x00, 0x03];
    let mut s = vec![cmds.len() as u8];
    s.extend_from_slice(&cmds);
    desc(0x0001, s);
    // Parameter Data.
    let mut p = vec![0u8; 28];
    p[2..4].copy_from_slice(&MAX_CSCD_DESCRIPTORS.to_be_bytes());
    p[4..6].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
    p[6..10].copy_from_slice(&MAX_DESCRIPTOR_LIST_LENGTH.to_be_bytes());
    desc(0x0004, p);
    // Supported Descriptors.
    desc(0x0008, vec![2, SEG_BLOCK_TO_BLOCK, CSCD_IDENT]);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_engine::volume::mem::MemVolume;

    fn ident(naa: &[u8; 16]) -> [u8; 32] {
        let mut d = [0u8; 32];
        d[0] = CSCD_IDENT;
        d[4] = 0x01; // binary
        d[5] = 0x03; // NAA, associated with the LU
        d[7] = 16;
        d[8..24].copy_from_slice(naa);
        d[29..32].copy_from_slice(&[0, 2, 0]); // 512-byte blocks
        d
    }

    fn b2b(src: u16, dst: u16, blocks: u16, src_lba: u64, dst_lba: u64) -> [u8; 28] {
        let mut s = [0u8; 28];
        s[0] = SEG_BLOCK_TO_BLOCK;
        s[3] = 0x18;
        s[4..6].copy_from_slice(&src.to_be_bytes());
        s[6..8].copy_from_slice(&dst.to_be_bytes());
        s[10..12].copy_from_slice(&blocks.to_be_bytes());
        s[12..20].copy_from_slice(&src_lba.to_be_bytes());
        s[20..28].copy_from_slice(&dst_lba.to_be_bytes());
        s
    }

    fn list(list_id: u8, cscds: &[[u8; 32]], segs: &[[u8; 28]]) -> (Vec<u8>, [u8; 16]) {
        let mut d = vec![0u8; 16];
        d[0] = list_id;
        d[2..4].copy_from_slice(&((cscds.len() * 32) as u16).to_be_bytes());
        d[8..12].copy_from_slice(&((segs.len() * 28) as u32).to_be_bytes());
        for c in cscds {
            d.extend_from_slice(c);
        }
        for s in segs {
            d.extend_from_slice(s);
        }
        let mut cdb = [0u8; 16];
        cdb[0] = 0x83;
        cdb[10..14].copy_from_slice(&(d.len() as u32).to_be_bytes());
        (d, cdb)
    }

    #[test]
    fn copies_within_a_lun_and_between_luns() {
        let a: Arc<dyn BlockVolume> = MemVolume::new("a", 1 << 20, 512);
        let b: Arc<dyn BlockVolume> = MemVolume::new("b", 1 << 20, 512);
        a.write(0, &[7u8; 4096]).unwrap();
        let (naa_a, naa_b) = ([0x60; 16], [0x61; 16]);
        let bb = b.clone();
        let me = Me {
            volume: &a,
            naa: &naa_a,
            resolver: Some(Arc::new(move |d: &[u8]| {
                (d[4..] == [0x61; 16]).then(|| bb.clone())
            })),
        };
        let (d, cdb) = list(1, &[ident(&naa_a)], &[b2b(0, 0, 8, 0, 100)]);
        let (r, hold) = extended_copy(&me, &cdb, &d);
        r.unwrap();
        assert_eq!(
            hold,
            Some((
                1,
                CopyStatus {
                    ok: true,
                    segments: 1,
                    bytes: 4096
                }
            ))
        );
        let mut back = [0u8; 4096];
        a.read(100 * 512, &mut back).unwrap();
        assert_eq!(back, [7u8; 4096]);
        let (d, cdb) = list(2, &[ident(&naa_a), ident(&naa_b)], &[b2b(0, 1, 8, 0, 0)]);
        extended_copy(&me, &cdb, &d).0.unwrap();
        b.read(0, &mut back).unwrap();
        assert_eq!(back, [7u8; 4096]);
    }

    #[test]
    fn refuses_what_it_cannot_do_with_the_right_sense() {
        let a: Arc<dyn BlockVolume> = MemVolume::new("a", 1 << 20, 512);
        let naa = [0x60; 16];
        let me = Me {
            volume: &a,
            naa: &naa,
            resolver: None,
        };
        let asc = |cscds: &[[u8; 32]], segs: &[[u8; 28]]| {
            let (d, cdb) = list(1, cscds, segs);
            let e = extended_copy(&me, &cdb, &d).0.unwrap_err();
            (e.key, e.asc)
        };
        let id = ident(&naa);
        assert_eq!(
            asc(&[id; 9], &[b2b(0, 0, 1, 0, 1)]),
            (super::super::sense::key::ILLEGAL_REQUEST, ASC_TOO_MANY_CSCD)
        );
        let mut fc = id;
        fc[0] = 0xE0;
        assert_eq!(
            asc(&[fc], &[b2b(0, 0, 1, 0, 1)]).1,
            ASC_UNSUPPORTED_CSCD_TYPE
        );
        assert_eq!(
            asc(&[id], &[b2b(0, 1, 1, 0, 1)]),
            (COPY_ABORTED, ASC_COPY_TARGET_NOT_REACHABLE)
        );
        assert_eq!(asc(&[id], &[b2b(0, 0, 8, 0, 2047)]).0, COPY_ABORTED);
        let (d, cdb) = list(1, &[id], &[b2b(0, 0, 1, 0, 1)]);
        assert_eq!(
            extended_copy(&me, &cdb, &d[..40]).0.unwrap_err().asc,
            Asc::PARAMETER_LIST_LENGTH_ERROR
        );
        let rcr = |sa: u8, held| {
            receive_copy_results(&[0x84, sa, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0], held)
        };
        assert!(rcr(0, None).is_err());
        assert_eq!(
            rcr(
                0,
                Some(CopyStatus {
                    ok: true,
                    segments: 1,
                    bytes: 512
                })
            )
            .unwrap()[4],
            1
        );
        assert_eq!(rcr(3, None).unwrap()[43], 2);
    }
}
