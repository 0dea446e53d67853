//! The per-worker journal: a circular region of device 0 written as a
//! sequence of *batches*, one per group commit.
//!
//! ```text
//! batch = [header block(s): fixed fields, records, crc32c][data blocks]
//! ```
//! Positions are logical block numbers that only grow (`lpos`); the block
//! on disk is `start + lpos % len`. Every header carries its own `lpos`, the
//! store's uuid and the worker, so a header left over from an earlier lap,
//! an earlier format or another worker never passes for the next batch. A
//! batch never straddles the end of the region: a one-block *skip* header
//! sends the reader to the start of the next lap.
//!
//! Replay reads batches from a checkpoint's position until a header does
//! not validate. Only one batch is ever in flight (written, then flushed,
//! before the next is written), so only the last batch can be torn; its
//! data is verified against the crcs in its records, and a batch that does
//! not verify was never acknowledged and is dropped whole.

use super::codec::{Dec, Enc};
use super::extent::{Entry, Extent, Pba};
use crate::bdev::BLOCK_SIZE;
use std::collections::HashMap;

/// First bytes of every batch header.
pub const JMAGIC: u64 = u64::from_le_bytes(*b"FERJRNL1");
const FLAG_SKIP: u32 = 1;
/// Bytes of the fixed header fields before the records.
pub const FIXED: usize = 8 + 4 + 4 + 16 + 8 + 4 + 4 + 4 + 4 + 4;

/// One metadata change. Records are applied in journal order, the same way
/// at run time and at replay ([`Record::apply`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Create {
        id: u64,
        size: u64,
        generation: u64,
    },
    Delete {
        id: u64,
    },
    SetGen {
        id: u64,
        generation: u64,
    },
    /// Blocks `lblock..` whose data follows in this batch's data area (in
    /// record order), each going home to its entry's pba.
    JWrite {
        id: u64,
        lblock: u64,
        entries: Vec<Entry>,
    },
    /// Blocks `lblock..` written directly to `pba..` (data not journaled).
    Map {
        id: u64,
        lblock: u64,
        pba: Pba,
        crcs: Vec<u32>,
    },
    Unmap {
        id: u64,
        lblock: u64,
        count: u64,
    },
}

impl Record {
    /// Journal data blocks this record carries.
    pub fn data_blocks(&self) -> usize {
        match self {
            Record::JWrite { entries, .. } => entries.len(),
            _ => 0,
        }
    }

    fn encode(&self, e: &mut Enc) {
        match self {
            Record::Create {
                id,
                size,
                generation,
            } => {
                e.u8(1);
                e.u64(*id);
                e.u64(*size);
                e.u64(*generation);
            }
            Record::Delete { id } => {
                e.u8(2);
                e.u64(*id);
            }
            Record::SetGen { id, generation } => {
                e.u8(3);
                e.u64(*id);
                e.u64(*generation);
            }
            Record::JWrite {
                id,
                lblock,
                entries,
            } => {
                e.u8(4);
                e.u64(*id);
                e.u64(*lblock);
                e.u32(entries.len() as u32);
                for x in entries {
                    e.u64(x.pba.0);
                    e.u32(x.crc);
                }
            }
            Record::Map {
                id,
                lblock,
                pba,
                crcs,
            } => {
                e.u8(5);
                e.u64(*id);
                e.u64(*lblock);
                e.u64(pba.0);
                e.u32(crcs.len() as u32);
                for c in crcs {
                    e.u32(*c);
                }
            }
            Record::Unmap { id, lblock, count } => {
                e.u8(6);
                e.u64(*id);
                e.u64(*lblock);
                e.u64(*count);
            }
        }
    }

    /// `max_extent`: the store's largest extent size. A `Create` of a bigger
    /// (or unaligned) extent, or blocks beyond it, are not records this
    /// store wrote.
    fn decode(d: &mut Dec, max_extent: u64) -> Option<Record> {
        let max_blocks = max_extent / BLOCK_SIZE;
        let fits = |start: u64, n: u64| start.checked_add(n).is_some_and(|end| end <= max_blocks);
        Some(match d.u8()? {
            1 => {
                let (id, size, generation) = (d.u64()?, d.u64()?, d.u64()?);
                if !Extent::size_fits(size, max_extent) {
                    return None;
                }
                Record::Create {
                    id,
                    size,
                    generation,
                }
            }
            2 => Record::Delete { id: d.u64()? },
            3 => Record::SetGen {
                id: d.u64()?,
                generation: d.u64()?,
            },
            4 => {
                let (id, lblock, n) = (d.u64()?, d.u64()?, d.u32()?);
                if !fits(lblock, n as u64) {
                    return None;
                }
                let mut entries = Vec::with_capacity(n.min(4096) as usize);
                for _ in 0..n {
                    entries.push(Entry {
                        pba: Pba(d.u64()?),
                        crc: d.u32()?,
                    });
                }
                Record::JWrite {
                    id,
                    lblock,
                    entries,
                }
            }
            5 => {
                let (id, lblock, pba, n) = (d.u64()?, d.u64()?, Pba(d.u64()?), d.u32()?);
                if !fits(lblock, n as u64) || pba.0.checked_add(n as u64).is_none() {
                    return None;
                }
                let mut crcs = Vec::with_capacity(n.min(65536) as usize);
                for _ in 0..n {
                    crcs.push(d.u32()?);
                }
                Record::Map {
                    id,
                    lblock,
                    pba,
                    crcs,
                }
            }
            6 => {
                let (id, lblock, count) = (d.u64()?, d.u64()?, d.u64()?);
                if !fits(lblock, count) {
                    return None;
                }
                Record::Unmap { id, lblock, count }
            }
            _ => return None,
        })
    }

    /// Applies the record to a worker's extents; `freed` gets every
    /// physical block a mapping stopped pointing to.
    pub fn apply(&self, extents: &mut HashMap<u64, Extent>, freed: &mut impl FnMut(Pba)) {
        let remap = |x: &mut Extent, l: u64, e: Entry, freed: &mut dyn FnMut(Pba)| {
            let old = x.set(l, e);
            if !old.pba.is_none() && old.pba != e.pba {
                freed(old.pba);
            }
        };
        match self {
            Record::Create {
                id,
                size,
                generation,
            } => {
                if let Some(old) = extents.insert(*id, Extent::new(*size, *generation)) {
                    old.iter_mapped().for_each(|(_, e)| freed(e.pba));
                }
            }
            Record::Delete { id } => {
                if let Some(old) = extents.remove(id) {
                    old.iter_mapped().for_each(|(_, e)| freed(e.pba));
                }
            }
            Record::SetGen { id, generation } => {
                if let Some(x) = extents.get_mut(id) {
                    x.generation = *generation;
                }
            }
            Record::JWrite {
                id,
                lblock,
                entries,
            } => {
                if let Some(x) = extents.get_mut(id) {
                    for (i, e) in entries.iter().enumerate() {
                        remap(x, lblock + i as u64, *e, freed);
                    }
                }
            }
            Record::Map {
                id,
                lblock,
                pba,
                crcs,
            } => {
                if let Some(x) = extents.get_mut(id) {
                    for (i, c) in crcs.iter().enumerate() {
                        let e = Entry {
                            pba: pba.plus(i as u64),
                            crc: *c,
                        };
                        remap(x, lblock + i as u64, e, freed);
                    }
                }
            }
            Record::Unmap { id, lblock, count } => {
                if let Some(x) = extents.get_mut(id) {
                    for l in *lblock..(*lblock + *count).min(x.blocks()) {
                        remap(x, l, Entry::default(), freed);
                    }
                }
            }
        }
    }
}

/// Who a journal belongs to: headers must match it exactly.
#[derive(Clone, Copy, Debug)]
pub struct JournalId {
    pub uuid: u128,
    pub worker: u32,
}

/// A decoded batch header.
#[derive(Debug)]
pub struct BatchHeader {
    pub lpos: u64,
    pub skip: bool,
    pub header_blocks: u32,
    pub data_blocks: u32,
    pub records: Vec<Record>,
}

impl BatchHeader {
    /// Blocks the batch occupies (a skip header: just itself).
    pub fn total_blocks(&self) -> u64 {
        self.header_blocks as u64 + self.data_blocks as u64
    }
}

/// Encodes a batch header for `records` at `lpos`: whole blocks.
pub fn encode_header(id: JournalId, lpos: u64, records: &[Record], skip: bool) -> Vec<u8> {
    let mut body = Enc::default();
    for r in records {
        r.encode(&mut body);
    }
    let data_blocks: usize = records.iter().map(|r| r.data_blocks()).sum();
    let header_blocks = (FIXED + body.len() + 4).div_ceil(BLOCK_SIZE as usize);
    let mut e = Enc::with_capacity(header_blocks * BLOCK_SIZE as usize);
    e.u64(JMAGIC);
    e.u32(super::superblock::FORMAT_VERSION);
    e.u32(id.worker);
    e.u128(id.uuid);
    e.u64(lpos);
    e.u32(if skip { FLAG_SKIP } else { 0 });
    e.u32(header_blocks as u32);
    e.u32(data_blocks as u32);
    e.u32(records.len() as u32);
    e.u32(body.len() as u32);
    e.buf.extend_from_slice(&body.buf);
    let crc = crc32c::crc32c(&e.buf);
    e.u32(crc);
    e.buf.resize(header_blocks * BLOCK_SIZE as usize, 0);
    e.buf
}

/// Header blocks `records` will need (to plan space before encoding).
pub fn header_blocks_for(records: &[Record]) -> u64 {
    let mut body = Enc::default();
    for r in records {
        r.encode(&mut body);
    }
    (FIXED + body.len() + 4).div_ceil(BLOCK_SIZE as usize) as u64
}

/// From a batch's first block: how many header blocks it has, if the block
/// is a plausible header for `lpos` of journal `id`.
pub fn peek_header_blocks(id: JournalId, lpos: u64, first: &[u8]) -> Option<u32> {
    let mut d = Dec::new(first);
    if d.u64()? != JMAGIC || d.u32()? != super::superblock::FORMAT_VERSION {
        return None;
    }
    if d.u32()? != id.worker || d.u128()? != id.uuid || d.u64()? != lpos {
        return None;
    }
    let _flags = d.u32()?;
    let hb = d.u32()?;
    (hb >= 1).then_some(hb)
}

/// Decodes a complete header (all its blocks); `None` if anything is off.
/// `max_extent` is the store's largest extent size.
pub fn decode_header(
    id: JournalId,
    lpos: u64,
    bytes: &[u8],
    max_extent: u64,
) -> Option<BatchHeader> {
    let mut d = Dec::new(bytes);
    if d.u64()? != JMAGIC || d.u32()? != super::superblock::FORMAT_VERSION {
        return None;
    }
    if d.u32()? != id.worker || d.u128()? != id.uuid || d.u64()? != lpos {
        return None;
    }
    let flags = d.u32()?;
    let header_blocks = d.u32()?;
    let data_blocks = d.u32()?;
    let nrec = d.u32()?;
    let body_len = d.u32()? as usize;
    let end = FIXED.checked_add(body_len)?;
    if end + 4 > bytes.len() {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[end..end + 4].try_into().ok()?);
    if crc32c::crc32c(&bytes[..end]) != crc {
        return None;
    }
    let mut rd = Dec::new(&bytes[FIXED..end]);
    let mut records = Vec::with_capacity(nrec.min(65536) as usize);
    for _ in 0..nrec {
        records.push(Record::decode(&mut rd, max_extent)?);
    }
    let carried: usize = records.iter().map(|r| r.data_blocks()).sum();
    if carried != data_blocks as usize {
        return None;
    }
    Some(BatchHeader {
        lpos,
        skip: flags & FLAG_SKIP != 0,
        header_blocks,
        data_blocks,
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_rejections() {
        let id = JournalId {
            uuid: 77,
            worker: 1,
        };
        let recs = vec![
            Record::Create {
                id: 5,
                size: 1 << 20,
                generation: 0,
            },
            Record::JWrite {
                id: 5,
                lblock: 3,
                entries: vec![
                    Entry {
                        pba: Pba::new(0, 99),
                        crc: 1
                    };
                    2
                ],
            },
            Record::Map {
                id: 5,
                lblock: 10,
                pba: Pba::new(1, 5),
                crcs: vec![4; 300],
            },
            Record::Unmap {
                id: 5,
                lblock: 0,
                count: 2,
            },
            Record::SetGen {
                id: 5,
                generation: 9,
            },
            Record::Delete { id: 6 },
        ];
        let h = encode_header(id, 42, &recs, false);
        assert_eq!(h.len() as u64 % BLOCK_SIZE, 0);
        assert_eq!(header_blocks_for(&recs), h.len() as u64 / BLOCK_SIZE);
        assert_eq!(peek_header_blocks(id, 42, &h[..4096]), Some(1));
        let b = decode_header(id, 42, &h, 1 << 30).unwrap();
        assert_eq!(b.records, recs);
        assert_eq!(b.data_blocks, 2);
        assert!(decode_header(id, 43, &h, 1 << 30).is_none());
        assert!(decode_header(
            JournalId {
                uuid: 78,
                worker: 1
            },
            42,
            &h,
            1 << 30
        )
        .is_none());
        let mut bad = h.clone();
        bad[100] ^= 1;
        assert!(decode_header(id, 42, &bad, 1 << 30).is_none());
    }

    #[test]
    fn apply_remaps_and_reports_freed_blocks() {
        let mut x = HashMap::new();
        let mut freed = Vec::new();
        let mut f = |p| freed.push(p);
        Record::Create {
            id: 1,
            size: 1 << 20,
            generation: 0,
        }
        .apply(&mut x, &mut f);
        Record::Map {
            id: 1,
            lblock: 0,
            pba: Pba::new(0, 100),
            crcs: vec![1, 2],
        }
        .apply(&mut x, &mut f);
        Record::JWrite {
            id: 1,
            lblock: 1,
            entries: vec![Entry {
                pba: Pba::new(0, 101),
                crc: 3,
            }],
        }
        .apply(&mut x, &mut f);
        Record::Map {
            id: 1,
            lblock: 0,
            pba: Pba::new(0, 200),
            crcs: vec![5],
        }
        .apply(&mut x, &mut f);
        Record::Unmap {
            id: 1,
            lblock: 1,
            count: 5,
        }
        .apply(&mut x, &mut f);
        Record::Delete { id: 1 }.apply(&mut x, &mut f);
        assert_eq!(
            freed,
            vec![Pba::new(0, 100), Pba::new(0, 101), Pba::new(0, 200)]
        );
        assert!(x.is_empty());
    }
}
