//! Free-space management: one bitmap per device over its data area.
//!
//! Nothing here is persisted: after a crash the bitmaps are rebuilt from
//! the extent maps (a block is in use exactly when a mapping points to it),
//! so the allocator can never disagree with the metadata on disk. Blocks a
//! mapping stops pointing to are not freed here at once: the worker keeps
//! them in quarantine until a checkpoint no longer needs them (see
//! `worker.rs`), which is what makes reusing them crash-safe.
//!
//! Allocation is next-fit per device, preferring the device with the most
//! free blocks, and hands out runs of contiguous blocks so that a large
//! write is one device request.

use super::extent::Pba;

struct DeviceSpace {
    start: u64,
    /// Bit i set: block start+i in use.
    bits: Vec<u64>,
    blocks: u64,
    free: u64,
    cursor: u64,
}

impl DeviceSpace {
    fn is_used(&self, i: u64) -> bool {
        self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    fn set(&mut self, i: u64, used: bool) {
        let w = &mut self.bits[(i / 64) as usize];
        if used {
            *w |= 1 << (i % 64);
        } else {
            *w &= !(1 << (i % 64));
        }
    }
    /// First free block at or after `from`, wrapping once.
    fn find_free(&self, from: u64) -> Option<u64> {
        if self.free == 0 {
            return None;
        }
        let words = self.bits.len() as u64;
        let mut w = from / 64;
        let first = w;
        let mut mask = !0u64 << (from % 64);
        loop {
            let avail = !self.bits[w as usize] & mask;
            if avail != 0 {
                let i = w * 64 + avail.trailing_zeros() as u64;
                if i < self.blocks {
                    return Some(i);
                }
            }
            mask = !0;
            w = (w + 1) % words;
            if w == first {
                // One full lap: the part of the first word below `from`.
                let avail = !self.bits[w as usize] & !(!0u64 << (from % 64));
                return (avail != 0)
                    .then(|| w * 64 + avail.trailing_zeros() as u64)
                    .filter(|&i| i < self.blocks);
            }
        }
    }
}

/// The free space of every device of a store.
pub struct Allocator {
    devs: Vec<DeviceSpace>,
}

impl Allocator {
    /// All data blocks free; `areas[d] = (first data block, data blocks)`.
    pub fn new(areas: &[(u64, u64)]) -> Self {
        Self {
            devs: areas
                .iter()
                .map(|&(start, blocks)| DeviceSpace {
                    start,
                    bits: vec![0; blocks.div_ceil(64).max(1) as usize],
                    blocks,
                    free: blocks,
                    cursor: 0,
                })
                .collect(),
        }
    }

    /// Free blocks in all devices.
    pub fn free_blocks(&self) -> u64 {
        self.devs.iter().map(|d| d.free).sum()
    }

    /// Data blocks in all devices.
    pub fn total_blocks(&self) -> u64 {
        self.devs.iter().map(|d| d.blocks).sum()
    }

    fn index(&self, pba: Pba) -> Option<(usize, u64)> {
        let d = self.devs.get(pba.device())?;
        let b = pba.block();
        (b >= d.start && b < d.start + d.blocks).then(|| (pba.device(), b - d.start))
    }

    /// Whether `pba` is a block of some device's data area.
    pub fn is_data_block(&self, pba: Pba) -> bool {
        self.index(pba).is_some()
    }

    /// Marks a block used (recovery); false if it was already used or is
    /// not a data block.
    pub fn mark_used(&mut self, pba: Pba) -> bool {
        let Some((d, i)) = self.index(pba) else {
            return false;
        };
        let dev = &mut self.devs[d];
        if dev.is_used(i) {
            return false;
        }
        dev.set(i, true);
        dev.free -= 1;
        true
    }

    /// Returns a block to the free space (ignores blocks already free).
    pub fn free(&mut self, pba: Pba) {
        if let Some((d, i)) = self.index(pba) {
            let dev = &mut self.devs[d];
            if dev.is_used(i) {
                dev.set(i, false);
                dev.free += 1;
            }
        }
    }

    /// Allocates `n` blocks as few contiguous runs `(first, count)` as the
    /// free space allows, or nothing if fewer than `n` are free.
    pub fn alloc(&mut self, n: u64) -> Option<Vec<(Pba, u64)>> {
        if n == 0 {
            return Some(Vec::new());
        }
        if self.free_blocks() < n {
            return None;
        }
        let mut runs = Vec::new();
        let mut left = n;
        while left > 0 {
            let d = (0..self.devs.len()).max_by_key(|&d| self.devs[d].free)?;
            let dev = &mut self.devs[d];
            let i = dev.find_free(dev.cursor)?;
            let mut len = 0;
            while len < left && i + len < dev.blocks && !dev.is_used(i + len) {
                dev.set(i + len, true);
                len += 1;
            }
            dev.free -= len;
            dev.cursor = (i + len) % dev.blocks;
            runs.push((Pba::new(d, dev.start + i), len));
            left -= len;
        }
        Some(runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_runs_frees_and_refuses_when_full() {
        let mut a = Allocator::new(&[(10, 100), (2, 50)]);
        assert_eq!(a.free_blocks(), 150);
        let r = a.alloc(60).unwrap();
        assert_eq!(r, vec![(Pba::new(0, 10), 60)]);
        let r2 = a.alloc(30).unwrap();
        assert_eq!(r2, vec![(Pba::new(1, 2), 30)]);
        assert!(a.alloc(61).is_none());
        let rest = a.alloc(60).unwrap();
        assert_eq!(rest.iter().map(|r| r.1).sum::<u64>(), 60);
        assert_eq!(a.free_blocks(), 0);
        assert!(a.alloc(1).is_none());
        a.free(Pba::new(0, 15));
        assert_eq!(a.alloc(1).unwrap(), vec![(Pba::new(0, 15), 1)]);
        assert!(!a.mark_used(Pba::new(0, 15)));
        assert!(!a.is_data_block(Pba::new(0, 5)));
        a.free(Pba::new(0, 5)); // not a data block: ignored
        assert_eq!(a.free_blocks(), 0);
    }
}
