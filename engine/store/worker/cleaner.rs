//! The cleaner: with relocated home writes (`relocate_home`), keeps free
//! space in whole segments and extents in logical order.
//!
//! Relocation writes each home-writer round to one fresh run of blocks and
//! frees the blocks it replaced one by one. Left alone, free space turns
//! into single-block holes: `alloc_run` then finds no run, and rounds go in
//! place again. An extent written at random also ends up laid out at
//! random, so a sequential read of it costs a device request per block.
//!
//! Once its worker has served no user operation for `clean_idle`, the
//! cleaner does one step at a time, at most `STEP_BLOCKS` blocks:
//! - **evacuate** while fewer than a quarter of the segments are empty:
//!   this worker's live blocks in the least-used segments (at most three
//!   quarters used) move out;
//! - otherwise **defragment**: the next window of `WINDOW` blocks of an
//!   extent whose blocks form more than `FRAGMENTS_OK` device runs moves,
//!   in logical order, to one run.
//!
//! Moving reuses the home writer's relocation, so there is one path that
//! remaps blocks. The cleaner reads the blocks and checks their crcs. It
//! then puts each one in the dirty cache as a durable version that is not
//! in the journal (`Dirty::moved`). The home writer writes them to a new
//! run, and the committer maps each block there only if it is still that
//! version (`take_relocation`). A write, unmap or delete since then wins,
//! and the copy is dropped. A block touched by any record while the
//! cleaner reads it is left where it is (`WState::clean_watch`). If the
//! round cannot be relocated, moved blocks are not written at all: their
//! data is already at their home.
//!
//! The blocks moved out of a segment are quarantined like any freed block.
//! The segment is only empty after the next checkpoint, and the cleaner
//! takes one when it has nothing else to do.
//!
//! Limits: each step scans this worker's extent maps (evacuation: all of
//! them; defragmentation: up to `SCAN_BLOCKS` entries) and the allocator's
//! per-segment counts, which costs time in proportion to the store's size.
//! Segments hold blocks of every worker, and each worker moves only its own.

use super::*;
use crate::store::allocator::{Segment, SEGMENT_BLOCKS};
use std::time::{Duration, Instant};

/// Blocks of an extent examined, and moved, together when defragmenting.
const WINDOW: u64 = 256;
/// A window whose mapped blocks form at most this many device runs is
/// left as it is.
const FRAGMENTS_OK: u64 = 4;
/// Most blocks one step moves.
const STEP_BLOCKS: u64 = 1024;
/// Most map entries one defragmentation step examines.
const SCAN_BLOCKS: u64 = 1 << 16;
/// How often an idle cleaner looks for work, at most and at least.
const TICK_MIN: Duration = Duration::from_millis(1);
const TICK_MAX: Duration = Duration::from_millis(100);
/// How often a quiet cleaner (a full pass found nothing to do) looks
/// whether the store has changed since.
const TICK_QUIET: Duration = Duration::from_secs(1);

/// What one step did.
#[derive(Debug)]
enum Step {
    /// Moved this many blocks (0: it looked at part of the work).
    Moved(u64),
    /// Evacuated segments wait for a checkpoint to be empty.
    Checkpoint,
    /// Nothing to do until the store changes.
    Nothing,
}

/// The cleaner's own state between steps.
#[derive(Default)]
struct Cleaner {
    /// First blocks of the segments evacuated since the last checkpoint.
    evacuated: HashSet<Pba>,
    /// Where defragmentation goes on: (extent id, block).
    cursor: (u64, u64),
    /// Blocks of extent examined since a fragmented window was last found
    /// (a full pass is done once this reaches the size of all extents).
    scanned: u64,
    /// A full pass found nothing to do.
    quiet: bool,
    /// The last step moved blocks: go on without a nap while idle.
    working: bool,
}

/// A block to move: (block key, its map entry when picked).
type Pick = ((u64, u64), Entry);

/// Watches the picked blocks from the moment they are picked (under the
/// same lock), so that any record touching one from then on is seen.
fn watch(st: &mut WState, picked: &[Pick]) {
    st.clean_watch.extend(picked.iter().map(|p| p.0));
}

impl Worker {
    /// The cleaner coroutine (returns at once unless `relocate_home` is on
    /// and `clean_idle` is set).
    pub(super) fn cleaner(self: &Arc<Self>) {
        let opts = &self.sh.opts;
        let Some(idle) = opts.clean_idle.filter(|_| opts.relocate_home) else {
            return;
        };
        let tick = idle.clamp(TICK_MIN, TICK_MAX);
        let mut c = Cleaner::default();
        let mut seen = self.activity.load(Ordering::Relaxed);
        let mut quiet_since = Instant::now();
        loop {
            self.clean_ev.reset();
            if self.cleaner_done() {
                return;
            }
            let nap = match (c.quiet, c.working) {
                (true, _) => TICK_QUIET,
                (false, true) => Duration::ZERO,
                (false, false) => tick,
            };
            if nap.is_zero() {
                rt::yield_now();
            } else {
                self.clean_ev.wait_until(Instant::now() + nap);
            }
            if self.cleaner_done() {
                return;
            }
            let now = self.activity.load(Ordering::Relaxed);
            if now != seen {
                seen = now;
                quiet_since = Instant::now();
                c.quiet = false;
                if !idle.is_zero() {
                    continue;
                }
            }
            c.working = false;
            // Quiet: nothing to do until a user operation changes the store.
            if c.quiet || quiet_since.elapsed() < idle {
                continue;
            }
            let step = self.clean_step(&mut c);
            log::debug!("store worker {}: cleaner step: {step:?}", self.id);
            match step {
                Step::Moved(0) => c.working = true,
                Step::Moved(_) => {
                    c.working = true;
                    c.quiet = false;
                    let before = self.cleaned.load(Ordering::Relaxed);
                    self.wait_home_written();
                    if self.cleaned.load(Ordering::Relaxed) == before {
                        // Nothing could be relocated (no free run, too little
                        // free space, or the journal was full). Blocks freed
                        // since the last checkpoint may be what is missing;
                        // if there are none, stop until the store changes.
                        if self.st().quarantine.is_empty() {
                            c.quiet = true;
                        } else if self.checkpoint().is_err() {
                            return;
                        }
                    }
                }
                Step::Checkpoint => {
                    let free = self.sh.alloc().free_blocks();
                    if self.checkpoint().is_err() {
                        return;
                    }
                    if self.sh.alloc().free_blocks() <= free {
                        // It released nothing: do not checkpoint again and
                        // again.
                        c.quiet = true;
                    }
                    c.evacuated.clear();
                }
                Step::Nothing => c.quiet = true,
            }
        }
    }

    fn cleaner_done(&self) -> bool {
        let st = self.st();
        st.stop || st.failed.is_some()
    }

    /// Waits until the home writer has written everything queued (polling:
    /// the home writer's events belong to the checkpointer).
    fn wait_home_written(&self) {
        loop {
            {
                let st = self.st();
                if st.stop
                    || st.failed.is_some()
                    || (st.home_queue.is_empty() && st.home_inflight == 0)
                {
                    return;
                }
            }
            self.clean_ev.reset();
            self.clean_ev.wait_until(Instant::now() + TICK_MIN);
        }
    }

    fn clean_step(&self, c: &mut Cleaner) -> Step {
        let (segments, free, total) = {
            let a = self.sh.alloc();
            (
                a.segments(SEGMENT_BLOCKS),
                a.free_blocks(),
                a.total_blocks(),
            )
        };
        // Relocation itself stops below an eighth free: no room to move
        // into, unless a checkpoint releases what was freed.
        let released = !c.evacuated.is_empty() || !self.st().quarantine.is_empty();
        // Nothing to move now: a checkpoint may still free space.
        let stuck = || {
            if released {
                Step::Checkpoint
            } else {
                Step::Nothing
            }
        };
        if free < total / 8 + 2 * SEGMENT_BLOCKS {
            return stuck();
        }
        let empty_now = segments.iter().filter(|g| g.used == 0).count();
        // Evacuated segments are empty once the next checkpoint releases
        // their blocks: count them so as not to evacuate more than needed.
        if (empty_now + c.evacuated.len()) * 4 < segments.len() {
            let mut victims: Vec<Segment> = segments
                .iter()
                .filter(|g| g.used > 0 && g.used * 4 <= g.blocks * 3 && !g.filling)
                .filter(|g| !c.evacuated.contains(&g.first))
                .copied()
                .collect();
            victims.sort_by_key(|g| g.used);
            let mut chosen = Vec::new();
            let mut sum = 0;
            for g in victims {
                if !chosen.is_empty() && sum + g.used > STEP_BLOCKS {
                    break;
                }
                sum += g.used;
                chosen.push(g);
            }
            if !chosen.is_empty() {
                c.evacuated.extend(chosen.iter().map(|g| g.first));
                let picked = self.pick_in_segments(&chosen);
                return Step::Moved(self.move_blocks(picked));
            }
            if !c.evacuated.is_empty() {
                return Step::Checkpoint;
            }
        }
        // Defragmenting needs whole free runs; the rounds of an evacuation
        // may have to go into holes, a defragmentation's must not.
        if empty_now < 2 {
            return stuck();
        }
        match self.pick_fragmented(c) {
            Some(picked) => Step::Moved(self.move_blocks(picked)),
            None if !c.evacuated.is_empty() => Step::Checkpoint,
            None => Step::Nothing,
        }
    }

    /// This worker's live blocks in `segments` that are not in the dirty
    /// cache (those go home by themselves), at most `STEP_BLOCKS`.
    fn pick_in_segments(&self, segments: &[Segment]) -> Vec<Pick> {
        let mut ranges: Vec<(Pba, Pba)> = segments
            .iter()
            .map(|g| (g.first, g.first.plus(g.blocks)))
            .collect();
        ranges.sort();
        let inside = |p: Pba| {
            let i = ranges.partition_point(|r| r.0 <= p);
            i > 0 && p < ranges[i - 1].1
        };
        let mut st = self.st();
        let mut picked = Vec::new();
        'scan: for (&id, x) in &st.extents {
            for (l, e) in x.iter_mapped() {
                if inside(e.pba) && !st.cache.contains_key(&(id, l)) {
                    picked.push(((id, l), e));
                    if picked.len() as u64 >= STEP_BLOCKS {
                        break 'scan;
                    }
                }
            }
        }
        watch(&mut st, &picked);
        picked
    }

    /// The next window of an extent whose blocks form more than
    /// `FRAGMENTS_OK` runs, from the cursor on; `Some(empty)` when the scan
    /// budget ran out first, `None` after a full pass found nothing.
    fn pick_fragmented(&self, c: &mut Cleaner) -> Option<Vec<Pick>> {
        let mut st = self.st();
        let mut ids: Vec<u64> = st.extents.keys().copied().collect();
        if ids.is_empty() {
            return None;
        }
        ids.sort_unstable();
        let all: u64 = st.extents.values().map(|x| x.blocks()).sum();
        let first = ids.partition_point(|&i| i < c.cursor.0);
        let mut budget = SCAN_BLOCKS;
        for k in 0..ids.len() {
            let id = ids[(first + k) % ids.len()];
            let x = &st.extents[&id];
            let mut w = if k == 0 && id == c.cursor.0 {
                c.cursor.1
            } else {
                0
            };
            while w < x.blocks() {
                if c.scanned >= all {
                    // A full pass found nothing.
                    c.scanned = 0;
                    c.cursor = (id, w);
                    return None;
                }
                if budget == 0 {
                    c.cursor = (id, w);
                    return Some(Vec::new());
                }
                let end = (w + WINDOW).min(x.blocks());
                budget = budget.saturating_sub(end - w);
                c.scanned += end - w;
                let mapped = || {
                    (w..end)
                        .map(|l| (l, x.get(l)))
                        .filter(|(_, e)| !e.pba.is_none())
                };
                let runs = device_runs(mapped().map(|(_, e)| e.pba));
                let picked: Vec<Pick> = mapped()
                    .filter(|(l, _)| !st.cache.contains_key(&(id, *l)))
                    .map(|(l, e)| ((id, l), e))
                    .collect();
                w = end;
                if runs > FRAGMENTS_OK && !picked.is_empty() {
                    c.cursor = (id, w);
                    c.scanned = 0;
                    watch(&mut st, &picked);
                    return Some(picked);
                }
            }
        }
        c.cursor = (0, 0);
        c.scanned = 0;
        None
    }

    /// Reads `picked`, checks each block's crc, and hands the blocks that
    /// nothing touched meanwhile to the home writer as moved versions.
    /// Returns how many it handed over.
    fn move_blocks(&self, mut picked: Vec<Pick>) -> u64 {
        if picked.is_empty() {
            return 0;
        }
        picked.sort_by_key(|p| p.1.pba);
        let blocks = self.read_picked(&picked);
        let mut st = self.st();
        let mut handed = 0;
        // Stopping: the home writer may be gone.
        let blocks = blocks.filter(|_| !st.stop);
        if let Some(blocks) = blocks {
            for ((key, e), data) in picked.iter().zip(blocks) {
                let untouched = st.clean_watch.contains(key);
                if crc32c::crc32c(data.as_slice()) != e.crc {
                    if untouched {
                        self.sh.checksum_errors.fetch_add(1, Ordering::Relaxed);
                        log::error!(
                            "checksum mismatch: extent {} offset {} (device {} block {}), \
                             found by the cleaner; the block stays where it is",
                            key.0,
                            key.1 * BS,
                            self.sh.dev_name(e.pba.device()),
                            e.pba.block()
                        );
                    }
                    continue;
                }
                let current = st.extents.get(&key.0).map(|x| x.get(key.1)) == Some(*e);
                if !untouched || !current || st.cache.contains_key(key) {
                    continue;
                }
                let version = st.next_version;
                st.next_version += 1;
                st.cache.insert(
                    *key,
                    Dirty {
                        buf: Arc::new(data),
                        pba: e.pba,
                        lpos: u64::MAX, // not in the journal: no checkpoint waits for it
                        version,
                        durable: true,
                        inflight: false,
                        moved: true,
                    },
                );
                st.home_queue.push_back((*key, version));
                handed += 1;
            }
        }
        st.clean_watch.clear();
        if handed > 0 {
            st.home_draining = true;
        }
        drop(st);
        self.home_ev.set();
        handed
    }

    /// Reads the blocks of `picked` (sorted by device address), one request
    /// per run of neighbours; `None` if a read failed (logged; the blocks
    /// stay where they are).
    fn read_picked(&self, picked: &[Pick]) -> Option<Vec<DmaBuf>> {
        let mut runs: Vec<(Pba, u64)> = Vec::new();
        for (_, e) in picked {
            match runs.last_mut() {
                Some((p, n)) if p.plus(*n) == e.pba && *n < REQUEST_BLOCKS as u64 => *n += 1,
                _ => runs.push((e.pba, 1)),
            }
        }
        let mut out = Vec::with_capacity(picked.len());
        let mut at = 0;
        while at < runs.len() {
            let d = runs[at].0.device();
            let mut end = at;
            while end < runs.len() && runs[end].0.device() == d {
                end += 1;
            }
            // Straight into one buffer per block: the dirty cache holds
            // blocks, so nothing is copied after the read.
            let ops: Vec<IoOp> = runs[at..end]
                .iter()
                .map(|&(p, n)| IoOp::Readv {
                    offset: p.block() * BS,
                    bufs: (0..n).map(|_| DmaBuf::new(BS as usize)).collect(),
                })
                .collect();
            match self.sh.run_ops(d, ops) {
                Ok(done) => {
                    for op in done {
                        if let IoOp::Readv { bufs, .. } = op {
                            out.extend(bufs);
                        }
                    }
                }
                Err(e) => {
                    log::warn!("store worker {}: cleaner read failed: {e}", self.id);
                    return None;
                }
            }
            at = end;
        }
        Some(out)
    }

    /// How many runs of consecutive device blocks the mapped blocks of
    /// extent `id` form, in logical order.
    pub(crate) fn fragments(&self, id: u64) -> Result<u64, StoreError> {
        let st = self.st();
        let x = st
            .extents
            .get(&id)
            .ok_or(StoreError::NoSuchExtent { extent: id })?;
        Ok(device_runs(x.iter_mapped().map(|(_, e)| e.pba)))
    }
}

/// How many runs of consecutive device blocks `pbas` form, in order.
fn device_runs(pbas: impl Iterator<Item = Pba>) -> u64 {
    let mut runs = 0;
    let mut prev: Option<Pba> = None;
    for p in pbas {
        if prev.is_none_or(|q| q.plus(1) != p) {
            runs += 1;
        }
        prev = Some(p);
    }
    runs
}
