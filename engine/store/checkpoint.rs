//! Metadata checkpoints: a worker's whole extent map, written to one of its
//! two slots on device 0, alternating, so the previous one stays intact
//! while the next is written.
//!
//! ```text
//! slot = [header block: seq, journal position, payload length, payload crc32c, header crc32c][payload ...]
//! payload = extent count, then per extent: id, size, generation, runs of
//!           consecutive mapped blocks: (first block, count, count × (pba, crc))
//! ```
//! Recovery takes the valid slot with the highest sequence number; a slot
//! torn by a crash fails its checksums and the other one is used, whose
//! journal range is still intact (the journal is trimmed only after a new
//! checkpoint is durable).

use super::codec::{Dec, Enc};
use super::extent::{Entry, Extent, Pba};
use super::journal::JournalId;
use crate::bdev::BLOCK_SIZE;
use std::collections::HashMap;

/// First bytes of every checkpoint slot header.
pub const CMAGIC: u64 = u64::from_le_bytes(*b"FERCKPT1");

/// A checkpoint's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CkptHeader {
    /// Increases by one per checkpoint of this worker.
    pub seq: u64,
    /// The journal position replay starts from.
    pub journal_lpos: u64,
    pub payload_len: u64,
    pub payload_crc: u32,
}

/// Upper bound of the encoded size of `extents` (to refuse new extents
/// before the checkpoint area overflows).
pub fn size_bound(extents: &HashMap<u64, Extent>) -> u64 {
    BLOCK_SIZE
        + 8
        + extents
            .values()
            .map(|x| 32 + 24 * x.mapped_blocks())
            .sum::<u64>()
}

/// The slot image (whole blocks): header block + payload.
///
/// One pass over the maps, straight into the image: the committer encodes
/// while it holds its worker's state, so this is on the write path.
pub fn encode(
    id: JournalId,
    seq: u64,
    journal_lpos: u64,
    extents: &HashMap<u64, Extent>,
) -> Vec<u8> {
    let bs = BLOCK_SIZE as usize;
    let mut p = Enc::with_capacity(bs + size_bound(extents) as usize);
    p.buf.resize(bs, 0);
    p.u64(extents.len() as u64);
    let mut ids: Vec<&u64> = extents.keys().collect();
    ids.sort();
    for id in ids {
        let x = &extents[id];
        p.u64(*id);
        p.u64(x.size);
        p.u64(x.generation);
        let runs_at = p.len();
        p.u32(0);
        let mut runs = 0u32;
        // The open run: where its count goes, its next block, its length.
        let mut run: Option<(usize, u64, u32)> = None;
        for (l, e) in x.iter_mapped() {
            match &mut run {
                Some((_, next, n)) if *next == l => {
                    *next += 1;
                    *n += 1;
                }
                _ => {
                    if let Some((at, _, n)) = run {
                        p.patch_u32(at, n);
                    }
                    p.u64(l);
                    run = Some((p.len(), l + 1, 1));
                    p.u32(0);
                    runs += 1;
                }
            }
            p.u64(e.pba.0);
            p.u32(e.crc);
        }
        if let Some((at, _, n)) = run {
            p.patch_u32(at, n);
        }
        p.patch_u32(runs_at, runs);
    }
    let payload_len = p.len() - bs;
    let payload_crc = crc32c::crc32c(&p.buf[bs..]);
    let mut h = Enc::with_capacity(64);
    h.u64(CMAGIC);
    h.u32(super::superblock::FORMAT_VERSION);
    h.u32(id.worker);
    h.u128(id.uuid);
    h.u64(seq);
    h.u64(journal_lpos);
    h.u64(payload_len as u64);
    h.u32(payload_crc);
    let crc = crc32c::crc32c(&h.buf);
    h.u32(crc);
    let mut img = p.buf;
    img[..h.len()].copy_from_slice(&h.buf);
    let total = img.len().div_ceil(bs) * bs;
    img.resize(total, 0);
    img
}

/// Parses a slot's header block.
pub fn decode_header(id: JournalId, b: &[u8]) -> Option<CkptHeader> {
    let mut d = Dec::new(b);
    if d.u64()? != CMAGIC || d.u32()? != super::superblock::FORMAT_VERSION {
        return None;
    }
    if d.u32()? != id.worker || d.u128()? != id.uuid {
        return None;
    }
    let h = CkptHeader {
        seq: d.u64()?,
        journal_lpos: d.u64()?,
        payload_len: d.u64()?,
        payload_crc: d.u32()?,
    };
    let end = d.pos();
    let crc = d.u32()?;
    (crc32c::crc32c(&b[..end]) == crc).then_some(h)
}

/// Parses and verifies a payload against its header. `max_extent` is the
/// store's largest extent size: a bigger (or unaligned) extent is not one
/// this store wrote.
pub fn decode_payload(
    h: &CkptHeader,
    payload: &[u8],
    max_extent: u64,
) -> Option<HashMap<u64, Extent>> {
    let payload = payload.get(..h.payload_len as usize)?;
    if crc32c::crc32c(payload) != h.payload_crc {
        return None;
    }
    let mut d = Dec::new(payload);
    let n = d.u64()?;
    let mut out = HashMap::new();
    for _ in 0..n {
        let (id, size, generation) = (d.u64()?, d.u64()?, d.u64()?);
        if !Extent::size_fits(size, max_extent) {
            return None;
        }
        let mut x = Extent::new(size, generation);
        for _ in 0..d.u32()? {
            let (start, count) = (d.u64()?, d.u32()?);
            if start.checked_add(count as u64)? > x.blocks() {
                return None;
            }
            for i in 0..count as u64 {
                let e = Entry {
                    pba: Pba(d.u64()?),
                    crc: d.u32()?,
                };
                x.set(start + i, e);
            }
        }
        out.insert(id, x);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_torn_payload() {
        let id = JournalId { uuid: 5, worker: 0 };
        let mut m = HashMap::new();
        let mut x = Extent::new(4 << 20, 3);
        for l in [0u64, 1, 2, 7, 900] {
            x.set(
                l,
                Entry {
                    pba: Pba::new(0, 100 + l),
                    crc: l as u32,
                },
            );
        }
        m.insert(9, x);
        m.insert(10, Extent::new(1 << 20, 0));
        let img = encode(id, 4, 77, &m);
        assert!(size_bound(&m) >= img.len() as u64 - BLOCK_SIZE);
        let h = decode_header(id, &img[..4096]).unwrap();
        assert_eq!((h.seq, h.journal_lpos), (4, 77));
        let back = decode_payload(&h, &img[4096..], 1 << 30).unwrap();
        assert_eq!(back.len(), 2);
        let b9 = &back[&9];
        assert_eq!(b9.generation, 3);
        assert_eq!(
            b9.iter_mapped().collect::<Vec<_>>(),
            m[&9].iter_mapped().collect::<Vec<_>>()
        );
        let mut torn = img.clone();
        torn[4096 + 20] ^= 0xff;
        assert!(decode_payload(&h, &torn[4096..], 1 << 30).is_none());
        assert!(decode_header(JournalId { uuid: 5, worker: 1 }, &img[..4096]).is_none());
    }
}
