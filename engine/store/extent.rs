//! Extents in memory: size, generation, and the map from each 4 KiB block
//! of the extent to its physical block and crc32c.
//!
//! The map is thin and chunked: a chunk of 512 entries (2 MiB of extent)
//! exists only once a block in it was written, so an empty 256 MiB extent
//! costs a few hundred bytes and a full one about 1 MiB (16 bytes per block).

use std::fmt;

/// A physical block address: device index in the top 16 bits, block
/// number on that device below. Zero is "unmapped": block 0 of every
/// device is a superblock, never data.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Pba(pub u64);

impl Pba {
    pub const NONE: Pba = Pba(0);
    pub fn new(device: usize, block: u64) -> Pba {
        Pba(((device as u64) << 48) | block)
    }
    pub fn device(self) -> usize {
        (self.0 >> 48) as usize
    }
    pub fn block(self) -> u64 {
        self.0 & ((1 << 48) - 1)
    }
    pub fn is_none(self) -> bool {
        self.0 == 0
    }
    /// The block `n` after this one on the same device.
    pub fn plus(self, n: u64) -> Pba {
        Pba(self.0 + n)
    }
}

impl fmt::Debug for Pba {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.device(), self.block())
    }
}

/// Where one block of an extent lives and what it must checksum to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub pba: Pba,
    pub crc: u32,
}

const CHUNK_SHIFT: u32 = 9;
/// Entries per chunk of the map.
pub const CHUNK: usize = 1 << CHUNK_SHIFT;

/// One extent's metadata.
#[derive(Clone, Debug)]
pub struct Extent {
    pub size: u64,
    pub generation: u64,
    chunks: Vec<Option<Box<[Entry; CHUNK]>>>,
    mapped: u64,
}

impl Extent {
    /// Whether `size` is one a store with extents of at most `max` bytes
    /// can hold: whole 4 KiB blocks, not above `max`. (Creating one also
    /// needs it non-zero.)
    pub fn size_fits(size: u64, max: u64) -> bool {
        size <= max && size % crate::bdev::BLOCK_SIZE == 0
    }

    /// An empty extent of `size` bytes (a multiple of 4 KiB).
    pub fn new(size: u64, generation: u64) -> Self {
        let blocks = size / crate::bdev::BLOCK_SIZE;
        Self {
            size,
            generation,
            chunks: (0..blocks.div_ceil(CHUNK as u64)).map(|_| None).collect(),
            mapped: 0,
        }
    }

    /// Blocks in the extent.
    pub fn blocks(&self) -> u64 {
        self.size / crate::bdev::BLOCK_SIZE
    }

    /// Blocks that have a physical block.
    pub fn mapped_blocks(&self) -> u64 {
        self.mapped
    }

    /// The entry of block `l` (unmapped: `Pba::NONE`).
    pub fn get(&self, l: u64) -> Entry {
        let c = (l >> CHUNK_SHIFT) as usize;
        match self.chunks.get(c) {
            Some(Some(ch)) => ch[(l as usize) & (CHUNK - 1)],
            _ => Entry::default(),
        }
    }

    /// Sets block `l`'s entry; returns the previous one. Out-of-range
    /// blocks are ignored (callers validate ranges first).
    pub fn set(&mut self, l: u64, e: Entry) -> Entry {
        let c = (l >> CHUNK_SHIFT) as usize;
        let Some(slot) = self.chunks.get_mut(c) else {
            return Entry::default();
        };
        if slot.is_none() {
            if e.pba.is_none() {
                return Entry::default();
            }
            *slot = Some(Box::new([Entry::default(); CHUNK]));
        }
        let ch = slot.as_mut().expect("chunk just ensured");
        let old = std::mem::replace(&mut ch[(l as usize) & (CHUNK - 1)], e);
        match (old.pba.is_none(), e.pba.is_none()) {
            (true, false) => self.mapped += 1,
            (false, true) => self.mapped -= 1,
            _ => {}
        }
        if self.mapped == 0 || (e.pba.is_none() && ch.iter().all(|x| x.pba.is_none())) {
            *slot = None;
        }
        old
    }

    /// Every mapped block `(l, entry)` in order.
    pub fn iter_mapped(&self) -> impl Iterator<Item = (u64, Entry)> + '_ {
        self.chunks.iter().enumerate().flat_map(|(c, ch)| {
            ch.iter().flat_map(move |ch| {
                ch.iter()
                    .enumerate()
                    .filter(|(_, e)| !e.pba.is_none())
                    .map(move |(i, e)| (((c << CHUNK_SHIFT) + i) as u64, *e))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thin_map_counts_and_frees_chunks() {
        let mut x = Extent::new(8 << 20, 1);
        assert_eq!(x.blocks(), 2048);
        assert_eq!(x.get(5).pba, Pba::NONE);
        x.set(
            5,
            Entry {
                pba: Pba::new(1, 100),
                crc: 7,
            },
        );
        x.set(
            1500,
            Entry {
                pba: Pba::new(0, 200),
                crc: 8,
            },
        );
        assert_eq!(x.mapped_blocks(), 2);
        assert_eq!(x.get(5).crc, 7);
        let all: Vec<_> = x.iter_mapped().map(|(l, _)| l).collect();
        assert_eq!(all, vec![5, 1500]);
        let old = x.set(5, Entry::default());
        assert_eq!(old.pba, Pba::new(1, 100));
        assert_eq!(x.mapped_blocks(), 1);
        assert!(x.chunks[0].is_none());
        x.set(
            99_999,
            Entry {
                pba: Pba::new(0, 1),
                crc: 0,
            },
        ); // out of range: ignored
        assert_eq!(x.mapped_blocks(), 1);
    }
}
