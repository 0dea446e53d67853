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
    /// Where the next `alloc_run` continues (block index), if anywhere.
    head: Option<u64>,
    /// Blocks in use per segment of `SEGMENT_BLOCKS` (the last may be
    /// short), kept with the bitmap so that finding an empty segment or
    /// skipping a full one costs one look, not a bitmap scan.
    seg_used: Vec<u32>,
    /// Whole segments with no block in use.
    empty_segs: u64,
    /// Segments `alloc_log` fills next once none is empty, most free first:
    /// picked by one scan of the counts, `LOG_CANDIDATES` at a time, so that
    /// a large device is not scanned every time a segment is used up. A hint
    /// only: each is checked for free blocks when its turn comes.
    log_candidates: Vec<u64>,
}

/// Segments `alloc_log` picks per scan of the segment counts.
const LOG_CANDIDATES: usize = 32;

impl DeviceSpace {
    fn is_used(&self, i: u64) -> bool {
        self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    /// Sets block `i` used or free, keeping the segment counts.
    fn set(&mut self, i: u64, used: bool) {
        let w = &mut self.bits[(i / 64) as usize];
        let bit = 1u64 << (i % 64);
        if (*w & bit != 0) == used {
            return;
        }
        *w ^= bit;
        let g = (i / SEGMENT_BLOCKS) as usize;
        let whole = (g as u64 + 1) * SEGMENT_BLOCKS <= self.blocks;
        if used {
            if self.seg_used[g] == 0 && whole {
                self.empty_segs -= 1;
            }
            self.seg_used[g] += 1;
        } else {
            self.seg_used[g] -= 1;
            if self.seg_used[g] == 0 && whole {
                self.empty_segs += 1;
            }
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
                    head: None,
                    // At least one entry, as the bitmap has at least one word.
                    seg_used: vec![0; blocks.div_ceil(SEGMENT_BLOCKS).max(1) as usize],
                    empty_segs: blocks / SEGMENT_BLOCKS,
                    log_candidates: Vec::new(),
                })
                .collect(),
        }
    }

    /// Free blocks in all devices.
    pub fn free_blocks(&self) -> u64 {
        self.devs.iter().map(|d| d.free).sum()
    }

    /// Whole segments (`SEGMENT_BLOCKS`) with no block in use, in all
    /// devices.
    pub fn empty_segments(&self) -> u64 {
        self.devs.iter().map(|d| d.empty_segs).sum()
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

/// Blocks per segment (4 MiB): the unit of free space that `alloc_run`
/// fills and the store's cleaner empties.
pub const SEGMENT_BLOCKS: u64 = 1024;

/// Words of bitmap `alloc_run` examines per device before it gives up (a
/// bound on the search in a store whose free space is scattered): 2^16
/// words are 2^22 blocks, 16 GiB of data area.
const RUN_SEARCH_WORDS: u64 = 1 << 16;

/// One segment of a device's data area, as the cleaner sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Its first block.
    pub first: Pba,
    /// Blocks in it (the last segment of a device may be short).
    pub blocks: u64,
    /// Blocks in use (mapped, reserved or quarantined).
    pub used: u64,
    /// `alloc_run` is filling it (it is not worth emptying).
    pub filling: bool,
}

impl Allocator {
    /// Allocates `n` contiguous blocks, or nothing if no free run that long
    /// is found; on the device with the most free blocks first. Unlike
    /// `alloc`, it never splits: the home writer and the store's cleaner use
    /// it so that what they move lands in one sequential write, and they
    /// write in place or wait when it fails. It writes like a log: it goes
    /// on where the last run ended, then starts an empty segment, and only
    /// then fills a hole. Filling holes in segments that the cleaner is
    /// emptying would undo its work.
    pub fn alloc_run(&mut self, n: u64) -> Option<Pba> {
        if n == 0 || n > 64 * (RUN_SEARCH_WORDS - 1) {
            return None;
        }
        let mut order: Vec<usize> = (0..self.devs.len()).collect();
        order.sort_by_key(|&d| std::cmp::Reverse(self.devs[d].free));
        for d in order {
            let dev = &mut self.devs[d];
            if dev.free < n {
                continue;
            }
            let at_head = dev
                .head
                .filter(|&h| h + n <= dev.blocks && dev.count_used(h, n) == 0);
            let Some(i) = at_head
                .or_else(|| {
                    (n <= SEGMENT_BLOCKS)
                        .then(|| dev.find_empty_segment())
                        .flatten()
                })
                .or_else(|| dev.find_run(n))
            else {
                continue;
            };
            for k in i..i + n {
                dev.set(k, true);
            }
            dev.free -= n;
            dev.head = Some(i + n);
            return Some(Pba::new(d, dev.start + i));
        }
        None
    }

    /// Allocates `n` blocks for logged small writes, as runs `(first,
    /// count)`, or nothing if fewer than `n` are free. Like `alloc_run` it
    /// goes on from the log head, then starts an empty segment. Once no
    /// segment is empty, it fills the holes of the *emptiest* segment in
    /// address order rather than the first hole anywhere: that is where the
    /// holes are longest, so the blocks of one batch lie in few runs, and
    /// the batch takes few device requests. The blocks come from the device
    /// with the most free blocks (any devices, as `alloc` does, if it has
    /// fewer than `n`).
    pub fn alloc_log(&mut self, n: u64) -> Option<Vec<(Pba, u64)>> {
        if n == 0 {
            return Some(Vec::new());
        }
        let d = (0..self.devs.len()).max_by_key(|&d| self.devs[d].free)?;
        if self.devs[d].free < n {
            return self.alloc(n);
        }
        let dev = &mut self.devs[d];
        let mut runs: Vec<(Pba, u64)> = Vec::new();
        let mut left = n;
        while left > 0 {
            let h = match dev.head {
                Some(h) if h < dev.blocks && h % SEGMENT_BLOCKS != 0 && dev.seg_free(h) > 0 => h,
                _ => dev.log_segment()?,
            };
            let seg_end = ((h / SEGMENT_BLOCKS + 1) * SEGMENT_BLOCKS).min(dev.blocks);
            let mut i = h;
            while i < seg_end && left > 0 {
                if !dev.is_used(i) {
                    dev.take(d, i, &mut runs);
                    left -= 1;
                }
                i += 1;
            }
            dev.head = Some(i);
        }
        Some(runs)
    }

    /// Allocates `n` blocks from the holes of the fullest segments that
    /// have any, as runs `(first, count)`; nothing if fewer than `n` are
    /// free. The cleaner's way out when free space is all holes and
    /// `alloc_run` finds no run: moving blocks from the emptiest segments
    /// into the fullest ones empties the former without scattering the
    /// free space further.
    pub fn alloc_holes(&mut self, n: u64) -> Option<Vec<(Pba, u64)>> {
        if n == 0 || self.free_blocks() < n {
            return None;
        }
        let mut segs = self.segments(SEGMENT_BLOCKS);
        segs.retain(|g| g.used < g.blocks);
        // Fullest first; empty segments last.
        segs.sort_by_key(|g| (g.used == 0, std::cmp::Reverse(g.used)));
        let mut runs: Vec<(Pba, u64)> = Vec::new();
        let mut left = n;
        for g in segs {
            let d = g.first.device();
            let dev = &mut self.devs[d];
            let first = g.first.block() - dev.start;
            for i in first..first + g.blocks {
                if left == 0 {
                    return Some(runs);
                }
                if dev.is_used(i) {
                    continue;
                }
                dev.take(d, i, &mut runs);
                left -= 1;
            }
        }
        (left == 0).then_some(runs)
    }

    /// Every segment of `seg` blocks of every device, with its use.
    pub fn segments(&self, seg: u64) -> Vec<Segment> {
        let mut out = Vec::new();
        for (d, dev) in self.devs.iter().enumerate() {
            let mut first = 0;
            while first < dev.blocks {
                let blocks = seg.min(dev.blocks - first);
                out.push(Segment {
                    first: Pba::new(d, dev.start + first),
                    blocks,
                    used: if seg == SEGMENT_BLOCKS {
                        dev.seg_used[(first / seg) as usize] as u64
                    } else {
                        dev.count_used(first, blocks)
                    },
                    filling: dev.head.is_some_and(|h| first < h && h <= first + blocks),
                });
                first += blocks;
            }
        }
        out
    }
}

impl DeviceSpace {
    /// Blocks in use among `n` blocks from `from`.
    fn count_used(&self, from: u64, n: u64) -> u64 {
        let mut used = 0;
        let mut i = from;
        let end = from + n;
        while i < end {
            if i % 64 == 0 && end - i >= 64 {
                used += self.bits[(i / 64) as usize].count_ones() as u64;
                i += 64;
            } else {
                used += self.is_used(i) as u64;
                i += 1;
            }
        }
        used
    }

    /// Where logged writes go on once the log head's segment is used up:
    /// an empty segment, or else the start of a segment (the short last
    /// one included) with the most free blocks, taken from the candidates
    /// of the last scan while they last. `None` if no block is free.
    fn log_segment(&mut self) -> Option<u64> {
        if let Some(i) = self.find_empty_segment() {
            return Some(i);
        }
        if let Some(i) = self.next_log_candidate() {
            return Some(i);
        }
        self.scan_log_candidates();
        self.next_log_candidate()
    }

    /// The first block of the next candidate that still has a free block.
    fn next_log_candidate(&mut self) -> Option<u64> {
        while let Some(g) = self.log_candidates.pop() {
            if self.seg_free(g * SEGMENT_BLOCKS) > 0 {
                return Some(g * SEGMENT_BLOCKS);
            }
        }
        None
    }

    /// Picks the `LOG_CANDIDATES` segments with the most free blocks (the
    /// lower address first among equals), to be popped in that order.
    fn scan_log_candidates(&mut self) {
        let mut all: Vec<(u64, u64)> = (0..self.seg_used.len() as u64)
            .map(|g| (self.seg_free(g * SEGMENT_BLOCKS), g))
            .filter(|&(free, _)| free > 0)
            .collect();
        let order = |a: &(u64, u64), b: &(u64, u64)| b.0.cmp(&a.0).then(a.1.cmp(&b.1));
        if all.len() > LOG_CANDIDATES {
            all.select_nth_unstable_by(LOG_CANDIDATES, order);
            all.truncate(LOG_CANDIDATES);
        }
        all.sort_unstable_by(order);
        self.log_candidates = all.into_iter().rev().map(|(_, g)| g).collect();
    }

    /// Marks free block `i` (of device `d`) used and appends it to `runs`,
    /// extending the last run if it is that run's next block.
    fn take(&mut self, d: usize, i: u64, runs: &mut Vec<(Pba, u64)>) {
        self.set(i, true);
        self.free -= 1;
        let p = Pba::new(d, self.start + i);
        match runs.last_mut() {
            Some((q, k)) if q.plus(*k) == p => *k += 1,
            _ => runs.push((p, 1)),
        }
    }

    /// Free blocks in the segment holding block `i`.
    fn seg_free(&self, i: u64) -> u64 {
        let g = i / SEGMENT_BLOCKS;
        let size = SEGMENT_BLOCKS.min(self.blocks - g * SEGMENT_BLOCKS);
        size - self.seg_used[g as usize] as u64
    }

    /// The first whole segment with no block in use, from the log head's
    /// segment on (wrapping once): one look at a count per segment, and
    /// none at all when no segment is empty.
    fn find_empty_segment(&self) -> Option<u64> {
        if self.empty_segs == 0 {
            return None;
        }
        let count = self.blocks / SEGMENT_BLOCKS; // whole segments only
        let from = self.head.unwrap_or(0) / SEGMENT_BLOCKS;
        (0..count)
            .map(|k| (from + k) % count)
            .find(|&g| self.seg_used[g as usize] == 0)
            .map(|g| g * SEGMENT_BLOCKS)
    }

    /// The first run of `n` free blocks at or after the cursor (wrapping
    /// once), looking at no more than `RUN_SEARCH_WORDS` words. Works a
    /// word at a time: full segments are skipped by their count, and within
    /// a word the free runs are found with bit counts, not bit by bit.
    fn find_run(&self, n: u64) -> Option<u64> {
        const SEG_WORDS: u64 = SEGMENT_BLOCKS / 64;
        let words = self.bits.len() as u64;
        let mut w = self.cursor / 64;
        let mut run_start = 0u64;
        let mut run_len = 0u64;
        let mut seen = 0u64;
        while seen <= words.min(RUN_SEARCH_WORDS) {
            if w >= words {
                w = 0;
            }
            // A run does not wrap around the end of the device.
            if w == 0 {
                run_len = 0;
            }
            let g = (w / SEG_WORDS) as usize;
            if w % SEG_WORDS == 0 && self.seg_used[g] as u64 == SEGMENT_BLOCKS {
                run_len = 0;
                w += SEG_WORDS;
                seen += SEG_WORDS;
                continue;
            }
            seen += 1;
            let base = w * 64;
            // Bit b set: block base + b free (blocks past the end are used).
            let mut free = !self.bits[w as usize];
            if base + 64 > self.blocks {
                free &= (1u64 << (self.blocks - base)) - 1;
            }
            w += 1;
            if free == !0 {
                if run_len == 0 {
                    run_start = base;
                }
                run_len += 64;
                if run_len >= n {
                    return Some(run_start);
                }
                continue;
            }
            // The run going on from the previous word ends in this one
            // (free != !0, so fewer than 64 low bits are free).
            let low = free.trailing_ones();
            let mut rest = free;
            if run_len > 0 {
                if run_len + low as u64 >= n {
                    return Some(run_start);
                }
                rest &= !0u64 << low;
            }
            run_len = 0;
            if n > 64 {
                // Only a run reaching the word's end can be long enough.
                let high = free.leading_ones() as u64;
                if high > 0 {
                    run_start = base + 64 - high;
                    run_len = high;
                }
                continue;
            }
            // Free runs that start inside this word.
            while rest != 0 {
                let at = rest.trailing_zeros() as u64;
                let len = (rest >> at).trailing_ones() as u64;
                if len >= n {
                    return Some(base + at);
                }
                if at + len == 64 {
                    // Reaches the word's end: it may go on in the next one.
                    run_start = base + at;
                    run_len = len;
                    break;
                }
                rest &= !(((1u64 << len) - 1) << at);
            }
        }
        None
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

    #[test]
    fn alloc_log_continues_at_the_head_then_fills_the_emptiest_segment() {
        let seg = SEGMENT_BLOCKS;
        let mut a = Allocator::new(&[(0, 3 * seg + 100)]);
        // An empty store: one run from the start, going on at the head.
        assert_eq!(a.alloc_log(10), Some(vec![(Pba::new(0, 0), 10)]));
        assert_eq!(a.alloc_log(5), Some(vec![(Pba::new(0, 10), 5)]));
        // Fill everything, then free every other block of segment 1 from
        // 100 on (462 free) and every fourth of segment 2 (256 free).
        let rest = a.free_blocks();
        assert_eq!(a.alloc(rest).map(|r| r.len()), Some(1));
        (seg + 100..2 * seg)
            .step_by(2)
            .for_each(|b| a.free(Pba::new(0, b)));
        (2 * seg..3 * seg)
            .step_by(4)
            .for_each(|b| a.free(Pba::new(0, b)));
        // And one block of the short last segment.
        a.free(Pba::new(0, 3 * seg + 7));
        // The head is at the end: the emptiest segment (1) is filled in
        // address order, hole after hole.
        let got = a.alloc_log(3).unwrap();
        assert_eq!(
            got,
            vec![
                (Pba::new(0, seg + 100), 1),
                (Pba::new(0, seg + 102), 1),
                (Pba::new(0, seg + 104), 1)
            ]
        );
        assert_eq!(a.alloc_log(1), Some(vec![(Pba::new(0, seg + 106), 1)]));
        // The rest of segment 1, then segment 2 (the emptiest left).
        let got = a.alloc_log(462 - 4 + 2).unwrap();
        assert_eq!(got.last(), Some(&(Pba::new(0, 2 * seg + 4), 1)));
        assert_eq!(got.iter().map(|r| r.1).sum::<u64>(), 460);
        // All that is left: segment 2's holes, then the short segment's one.
        assert_eq!(a.alloc_log(255).map(|r| r.len()), Some(254 + 1));
        assert_eq!(a.free_blocks(), 0);
        assert_eq!(a.alloc_log(1), None);
    }

    #[test]
    fn alloc_log_takes_segments_most_free_first_across_candidate_scans() {
        // More segments than one scan picks: segment g has g + 1 free blocks
        // (its first ones), in a shuffled order of g.
        let seg = SEGMENT_BLOCKS;
        let n = LOG_CANDIDATES as u64 + 8;
        let mut a = Allocator::new(&[(0, n * seg)]);
        assert!(a.alloc(n * seg).is_some());
        for g in (0..n).map(|k| (k * 7) % n) {
            (0..=g).for_each(|b| a.free(Pba::new(0, g * seg + b)));
        }
        // Whole segments at a time: the log moves to the next segment only
        // when the current one is full.
        let mut order = Vec::new();
        for g in (0..n).rev() {
            let runs = a.alloc_log(g + 1).unwrap();
            assert_eq!(runs.len(), 1, "segment {g}'s free blocks are one run");
            order.push(runs[0].0.block() / seg);
        }
        assert_eq!(order, (0..n).rev().collect::<Vec<_>>());
        assert_eq!(a.free_blocks(), 0);
    }

    #[test]
    fn alloc_run_finds_only_contiguous_space_and_segments_count_use() {
        // One device of 300 blocks at block 8: fill it, then free a scatter
        // of single blocks and one run of 70.
        let mut a = Allocator::new(&[(8, 300)]);
        assert_eq!(a.alloc_run(300), Some(Pba::new(0, 8)));
        assert_eq!(a.alloc_run(1), None);
        for b in (8..108).step_by(2) {
            a.free(Pba::new(0, b));
        }
        for b in 200..270 {
            a.free(Pba::new(0, b));
        }
        assert_eq!(a.alloc_run(71), None, "the holes are single blocks");
        assert_eq!(a.alloc_run(70), Some(Pba::new(0, 200)));
        assert_eq!(a.alloc_run(2), None);
        assert_eq!(a.alloc_run(1), Some(Pba::new(0, 8)));
        let segs = a.segments(128);
        assert_eq!(segs.len(), 3);
        assert_eq!(
            segs.iter()
                .map(|s| (s.first.block(), s.blocks))
                .collect::<Vec<_>>(),
            vec![(8, 128), (136, 128), (264, 44)]
        );
        // 49 of the 50 holes in blocks 8..108 are still free.
        assert_eq!(segs[0].used, 128 - 49);
        assert_eq!(segs[1].used, 128);
        assert_eq!(
            segs.iter().map(|s| s.blocks - s.used).sum::<u64>(),
            a.free_blocks()
        );
        // A long run across whole words, then the search wraps to the start.
        let mut b = Allocator::new(&[(0, 1000)]);
        assert_eq!(b.alloc_run(900), Some(Pba::new(0, 0)));
        b.free(Pba::new(0, 0));
        b.free(Pba::new(0, 1));
        assert_eq!(b.alloc_run(100), Some(Pba::new(0, 900)));
        assert_eq!(b.alloc_run(2), Some(Pba::new(0, 0)));
        assert_eq!(b.free_blocks(), 0);
    }

    #[test]
    fn alloc_run_continues_its_log_then_takes_an_empty_segment_before_a_hole() {
        let seg = SEGMENT_BLOCKS;
        let mut a = Allocator::new(&[(0, 4 * seg)]);
        assert_eq!(a.alloc_run(seg), Some(Pba::new(0, 0)));
        for b in 100..400 {
            a.free(Pba::new(0, b)); // a 300-block hole in segment 0
        }
        assert_eq!(a.alloc_run(256), Some(Pba::new(0, seg)), "the log goes on");
        assert!(a.mark_used(Pba::new(0, seg + 256))); // the log's next block is taken
        assert_eq!(
            a.alloc_run(256),
            Some(Pba::new(0, 2 * seg)),
            "an empty segment"
        );
        let segs = a.segments(seg);
        assert_eq!(
            segs.iter().map(|g| (g.used, g.filling)).collect::<Vec<_>>(),
            vec![(seg - 300, false), (257, false), (256, true), (0, false)]
        );
        assert_eq!(
            a.alloc_run(seg),
            Some(Pba::new(0, 2 * seg + 256)),
            "across segments"
        );
        assert_eq!(a.alloc_run(768), Some(Pba::new(0, 3 * seg + 256)));
        // The log reached the end and no segment is empty: the hole.
        assert_eq!(a.alloc_run(300), Some(Pba::new(0, 100)));
        assert_eq!(a.free_blocks(), 767);
        assert_eq!(a.alloc_run(768), None);
        assert_eq!(a.alloc_run(767), Some(Pba::new(0, SEGMENT_BLOCKS + 257)));
    }

    #[test]
    fn alloc_holes_fills_the_fullest_segments_first() {
        let seg = SEGMENT_BLOCKS;
        let mut a = Allocator::new(&[(0, 3 * seg)]);
        assert!(a.alloc_run(3 * seg).is_some());
        let free =
            |a: &mut Allocator, r: std::ops::Range<u64>| r.for_each(|b| a.free(Pba::new(0, b)));
        free(&mut a, 0..600); // segment 0: 424 used
        free(&mut a, seg + 76..seg + 86); // segment 1: 1014 used
        free(&mut a, 2 * seg + 52..2 * seg + 552); // segment 2: 524 used
        assert_eq!(a.alloc_holes(2000), None);
        assert_eq!(
            a.alloc_holes(15),
            Some(vec![
                (Pba::new(0, seg + 76), 10),
                (Pba::new(0, 2 * seg + 52), 5)
            ])
        );
        assert_eq!(a.free_blocks(), 600 + 495);
    }

    /// `find_run` and the segment counts against a block-by-block reading
    /// of the same bitmap, over random layouts (runs of used and free
    /// blocks of every length, partial last words and segments, cursors
    /// anywhere).
    #[test]
    fn find_run_matches_a_block_by_block_search() {
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move |m: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % m
        };
        for _ in 0..300 {
            let blocks = 1 + next(5 * SEGMENT_BLOCKS);
            let mut a = Allocator::new(&[(0, blocks)]);
            // Random runs of used and free blocks.
            let mut i = 0;
            while i < blocks {
                let long = next(4) == 0;
                let len = 1 + next(if long { 1500 } else { 90 });
                let used = next(3) != 0;
                for b in i..(i + len).min(blocks) {
                    if used {
                        a.mark_used(Pba::new(0, b));
                    }
                }
                i += len;
            }
            if next(5) == 0 {
                // Some whole segments completely used.
                for b in 0..blocks.min(2 * SEGMENT_BLOCKS) {
                    a.mark_used(Pba::new(0, b));
                }
            }
            let dev = &mut a.devs[0];
            dev.cursor = next(blocks);
            for g in 0..dev.seg_used.len() as u64 {
                let first = g * SEGMENT_BLOCKS;
                let n = SEGMENT_BLOCKS.min(blocks - first);
                assert_eq!(dev.seg_used[g as usize] as u64, dev.count_used(first, n));
            }
            let whole_empty = (0..blocks / SEGMENT_BLOCKS)
                .filter(|g| dev.seg_used[*g as usize] == 0)
                .count() as u64;
            assert_eq!(dev.empty_segs, whole_empty);
            let free_at = |p: u64, n: u64| p + n <= blocks && (p..p + n).all(|b| !dev.is_used(b));
            let start = dev.cursor / 64 * 64;
            for n in [1, 2, 7, 63, 64, 65, 200, 1024, 1500] {
                let naive = (start..blocks)
                    .chain(0..start)
                    .find(|&p| free_at(p, n) && (p >= start || p + n <= start + 64));
                assert_eq!(
                    dev.find_run(n),
                    naive,
                    "blocks {blocks} cursor {} n {n}",
                    dev.cursor
                );
            }
        }
    }
}
