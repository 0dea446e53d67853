//! A worker: the extents hashed to one journal, served on one reactor.
//!
//! Everything here runs in coroutines on the worker's reactor; the state
//! sits behind a `std::sync::Mutex` that is uncontended in practice (the
//! reactor is the only user, other threads only read statistics) and is
//! never held across a park.
//!
//! # Four background coroutines
//! - The *committer* takes queued operations in order, resolves them
//!   against the current map (home blocks for journaled writes, validity),
//!   applies them to the in-memory map, writes them as one journal batch and
//!   flushes: one device flush per batch of concurrent operations (group
//!   commit). Only one batch is in flight, which is what lets replay trust
//!   every batch but the last. Between batches, when the journal is half
//!   full or someone asked, it snapshots the map for a checkpoint: at that
//!   moment every applied operation is durable, so the snapshot is exactly
//!   the state at its journal position.
//! - The *home writer* copies journaled blocks, once durable, from memory
//!   to their home: by default to new contiguous blocks, with their new
//!   mapping journaled (relocation), or in place, where the journal copy
//!   covers a torn home write. Write-back is deferred until a
//!   quarter of the journal is dirty or a checkpoint needs it, then done in
//!   sorted rounds of up to 256 blocks, merging neighbours: rewrites of a
//!   hot block cost one home write, and group commits do not queue behind
//!   small random writes (this took 4 KiB random writes from ~8k to ~45k
//!   IOPS on the development VM, whose device flushes wait for them).
//! - Device flushes are shared between workers (`Shared::flush_one`): a
//!   flush serves everyone who asked before it started.
//! - The *checkpointer* waits until every block journaled before the
//!   snapshot's position is home, flushes, writes the snapshot to the older
//!   slot, flushes, and only then trims the journal and releases the blocks
//!   that mappings stopped pointing to before that position (quarantine:
//!   reusing them earlier could overwrite data that a crash would bring
//!   back).
//! - The *cleaner* (`cleaner.rs`, relocation only) moves blocks while the
//!   worker is idle, so that free space stays in whole segments and extents
//!   in logical order; it hands them to the home writer as moved versions.

use super::allocator::{Allocator, SEGMENT_BLOCKS};
use super::checkpoint;
use super::error::StoreError;
use super::extent::{Entry, Extent, Pba};
use super::journal::{self, JournalId, Record};
use super::pattern::{Pattern, Stream, WriteMode};
use super::superblock::Superblock;
use super::StoreOptions;
use crate::bdev::{BlockDevice, DmaBuf, IoOp, BLOCK_SIZE};
use crate::rt;
use crate::rt::sync::Event;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

mod cleaner;

const BS: u64 = BLOCK_SIZE;

/// Most blocks in one device request (1 MiB): longer runs are split.
const REQUEST_BLOCKS: usize = 256;

/// What all workers of a store share.
pub(crate) struct Shared {
    pub devices: Vec<Arc<dyn BlockDevice>>,
    pub sb: Superblock,
    pub opts: StoreOptions,
    pub alloc: Mutex<Allocator>,
    pub rt: rt::Handle,
    pub closed: AtomicBool,
    pub user_written: AtomicU64,
    pub user_read: AtomicU64,
    pub journal_bytes: AtomicU64,
    pub home_bytes: AtomicU64,
    pub direct_bytes: AtomicU64,
    pub logged_blocks: AtomicU64,
    pub checkpoint_bytes: AtomicU64,
    pub checksum_errors: AtomicU64,
    pub batches: AtomicU64,
    pub checkpoints: AtomicU64,
    /// Writes held in a stream buffer, and the streams they became.
    pub held_writes: AtomicU64,
    pub merged_writes: AtomicU64,
    /// Pieces of held streams sent to the device while their stream filled.
    pub stream_pieces: AtomicU64,
    /// Journaled blocks whose home write went to new, contiguous blocks.
    pub relocated_blocks: AtomicU64,
    /// Blocks the cleaner moved.
    pub cleaned_blocks: AtomicU64,
    /// The workers, for reclaiming space across them.
    pub workers: std::sync::OnceLock<Vec<std::sync::Weak<Worker>>>,
    /// One per device: shares flushes between concurrent callers.
    pub flush_gates: Vec<FlushGate>,
    /// Journal batch writes issued and not yet followed by their flush: a
    /// flush about to start waits briefly for them, so that the workers'
    /// group commits share one device flush.
    pub journal_writes: std::sync::atomic::AtomicUsize,
}

/// The longest a flush waits for a concurrent journal write to join it.
const GATHER_MAX: std::time::Duration = std::time::Duration::from_micros(300);

/// Flush sharing state of one device (see `Shared::flush_one`).
#[derive(Default)]
pub(crate) struct FlushGate {
    st: Mutex<FlushState>,
    waiters: crate::rt::sync::WaitQueue,
}

#[derive(Default)]
struct FlushState {
    /// Tickets handed out (one per flush request).
    requested: u64,
    /// Every ticket up to this one is covered by a completed flush.
    done: u64,
    running: bool,
    /// A flush failed: the device is unusable for durability.
    failed: Option<StoreError>,
}

impl FlushGate {
    fn lock(&self) -> MutexGuard<'_, FlushState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Shared {
    pub(crate) fn alloc(&self) -> MutexGuard<'_, Allocator> {
        self.alloc.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn dev_name(&self, d: usize) -> String {
        self.devices
            .get(d)
            .map_or_else(|| format!("#{d}"), |x| x.info().name.clone())
    }

    /// Runs `ops` on device `d`; the first failure becomes a store error.
    pub(crate) fn run_ops(&self, d: usize, ops: Vec<IoOp>) -> Result<Vec<IoOp>, StoreError> {
        let done = self.devices[d].submit(ops);
        let mut out = Vec::with_capacity(done.len());
        let mut err = None;
        for x in done {
            if let Err(e) = &x.result {
                if err.is_none() {
                    let off = x.op.range().map_or(0, |r| r.0);
                    err = Some(StoreError::io(&self.dev_name(d), off, e));
                }
            }
            out.push(x.op);
        }
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Flushes the devices in `mask` (bit d = device d).
    pub(crate) fn flush(&self, mask: u64) -> Result<(), StoreError> {
        for d in 0..self.devices.len() {
            if mask & (1 << d) != 0 {
                self.flush_one(d)?;
            }
        }
        Ok(())
    }

    /// Flushes device `d`, sharing device flushes between concurrent callers
    /// (the workers' group commits, home writes, checkpoints): a caller is
    /// covered by any flush that *starts* after it asked, so while one flush
    /// runs, everyone who arrives meanwhile waits for the next one, and that
    /// single flush serves them all.
    fn flush_one(&self, d: usize) -> Result<(), StoreError> {
        let gate = &self.flush_gates[d];
        if !rt::in_coroutine() {
            return self.run_ops(d, vec![IoOp::Flush]).map(|_| ());
        }
        let my = {
            let mut g = gate.lock();
            g.requested += 1;
            g.requested
        };
        let waker = rt::current_waker();
        let mut ticket = None;
        loop {
            {
                let mut g = gate.lock();
                if let Some(e) = &g.failed {
                    let e = e.clone();
                    drop(g);
                    gate.waiters.remove(&mut ticket);
                    return Err(e);
                }
                if g.done >= my {
                    drop(g);
                    gate.waiters.remove(&mut ticket);
                    return Ok(());
                }
                if !g.running {
                    g.running = true;
                    drop(g);
                    gate.waiters.remove(&mut ticket);
                    // Gathering window: another worker's batch is being
                    // written right now; its flush request follows within
                    // one write latency, and this flush can serve it too.
                    let until = std::time::Instant::now() + GATHER_MAX;
                    while d == 0
                        && self.journal_writes.load(Ordering::Acquire) > 0
                        && std::time::Instant::now() < until
                    {
                        rt::sleep(std::time::Duration::from_micros(20));
                    }
                    let target = gate.lock().requested;
                    let r = self.run_ops(d, vec![IoOp::Flush]).map(|_| ());
                    let mut g = gate.lock();
                    g.running = false;
                    match &r {
                        Ok(()) => g.done = target,
                        Err(e) => g.failed = Some(e.clone()),
                    }
                    drop(g);
                    gate.waiters.wake_all();
                    return r;
                }
                gate.waiters.register(&mut ticket, &waker);
            }
            rt::park();
        }
    }

    pub(crate) fn all_devices(&self) -> u64 {
        (1u64 << self.devices.len()) - 1
    }

    /// Writes `bufs`, in order, into the blocks of `runs` (one request per
    /// run of neighbouring blocks, split at `REQUEST_BLOCKS`); frees the
    /// runs if a write fails.
    fn write_runs(&self, runs: &[(Pba, u64)], bufs: &[Arc<DmaBuf>]) -> Result<(), StoreError> {
        let blocks = runs
            .iter()
            .flat_map(|&(p, n)| (0..n).map(move |k| p.plus(k)))
            .zip(bufs);
        for (d, ops) in self.block_writes(blocks).into_iter().enumerate() {
            if ops.is_empty() {
                continue;
            }
            if let Err(e) = self.run_ops(d, ops) {
                self.free_runs(runs);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Device requests that write `blocks` (in the order given), grouped by
    /// device: one request per run of blocks that are neighbours on the
    /// device, at most `REQUEST_BLOCKS` long.
    fn block_writes<'a>(
        &self,
        blocks: impl IntoIterator<Item = (Pba, &'a Arc<DmaBuf>)>,
    ) -> Vec<Vec<IoOp>> {
        let mut per_dev: Vec<Vec<IoOp>> = (0..self.devices.len()).map(|_| Vec::new()).collect();
        let mut push = |start: Pba, bufs: Vec<Arc<DmaBuf>>| {
            per_dev[start.device()].push(IoOp::Writev {
                fua: false,
                offset: start.block() * BS,
                bufs,
            })
        };
        let mut run: Option<(Pba, Vec<Arc<DmaBuf>>)> = None;
        for (p, buf) in blocks {
            match &mut run {
                Some((start, bufs))
                    if start.plus(bufs.len() as u64) == p && bufs.len() < REQUEST_BLOCKS =>
                {
                    bufs.push(buf.clone())
                }
                _ => {
                    if let Some((start, bufs)) = run.replace((p, vec![buf.clone()])) {
                        push(start, bufs);
                    }
                }
            }
        }
        if let Some((start, bufs)) = run {
            push(start, bufs);
        }
        per_dev
    }

    /// Frees never-referenced blocks (a failed or abandoned allocation).
    fn free_runs(&self, runs: &[(Pba, u64)]) {
        let mut a = self.alloc();
        for &(p, n) in runs {
            for i in 0..n {
                a.free(p.plus(i));
            }
        }
    }
}

/// A leading piece of a held stream, written to newly allocated blocks
/// while the stream still fills: the runs `(first block, count)` it went
/// to, in data order, once written.
pub(crate) type Piece = Outcome<Vec<(Pba, u64)>>;

/// Runs in order, neighbours on the device joined.
fn merge_runs(runs: Vec<(Pba, u64)>) -> Vec<(Pba, u64)> {
    let mut out: Vec<(Pba, u64)> = Vec::with_capacity(runs.len());
    for (p, n) in runs {
        match out.last_mut() {
            Some((q, m)) if q.plus(*m) == p => *m += n,
            _ => out.push((p, n)),
        }
    }
    out
}

/// The outcome of an operation, for whoever waits on it.
pub(crate) type Completion = Outcome<()>;

/// A result that one side sets and others wait for.
pub(crate) struct Outcome<T> {
    ev: Event,
    res: Mutex<Option<Result<T, StoreError>>>,
}

impl<T: Clone> Outcome<T> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            ev: Event::new(),
            res: Mutex::new(None),
        })
    }
    pub(crate) fn complete(&self, r: Result<T, StoreError>) {
        *self.res.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        self.ev.set();
    }
    pub(crate) fn wait(&self) -> Result<T, StoreError> {
        self.ev.wait();
        self.res
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or(Err(StoreError::Closed))
    }
}

/// A queued metadata change (what the committer turns into records).
pub(crate) enum OpKind {
    Create {
        size: u64,
        generation: u64,
    },
    Delete,
    SetGen(u64),
    /// Journaled write; `reserved` are blocks allocated for the blocks that
    /// were unmapped when the write was queued.
    JWrite {
        lblock: u64,
        bufs: Vec<Arc<DmaBuf>>,
        crcs: Vec<u32>,
        reserved: Vec<Pba>,
    },
    /// A small write whose data the committer writes to `runs` (newly
    /// allocated blocks) alongside the batch that maps it: see
    /// `log_write`.
    LWrite {
        lblock: u64,
        bufs: Vec<Arc<DmaBuf>>,
        crcs: Vec<u32>,
        runs: Vec<(Pba, u64)>,
    },
    /// Data already written to `runs`.
    Map {
        lblock: u64,
        runs: Vec<(Pba, u64)>,
        crcs: Vec<u32>,
    },
    Unmap {
        lblock: u64,
        count: u64,
    },
    /// The home writer copied durable journaled blocks to new blocks: map
    /// each one there if it is still the current version (see
    /// `home_writer`). Spans extents, so the op's `id` is unused. `taken`
    /// is set when the committer takes the op; it declines it when the
    /// journal has no room (a checkpoint may be waiting for these very
    /// blocks), and the home writer then writes them in place.
    Relocate {
        items: Vec<Relocation>,
        taken: Arc<AtomicBool>,
    },
}

/// One block moved by the home writer: (block key, version, new home).
type Relocation = ((u64, u64), u64, Pba);

pub(crate) struct PendingOp {
    pub id: u64,
    pub kind: OpKind,
    pub done: Vec<Arc<Completion>>,
}

/// A block journaled but not yet home.
struct Dirty {
    buf: Arc<DmaBuf>,
    pba: Pba,
    /// Journal position of the batch holding this version.
    lpos: u64,
    version: u64,
    durable: bool,
    inflight: bool,
    /// Put here by the cleaner, not journaled: its data is already at
    /// `pba`, so it is relocated or not written at all.
    moved: bool,
}

/// A snapshot waiting to be written.
struct CkptJob {
    journal_lpos: u64,
    image: Vec<u8>,
    waiters: Vec<Arc<Completion>>,
}

/// How a worker starts (from format or recovery).
pub(crate) struct WorkerInit {
    pub extents: HashMap<u64, Extent>,
    pub head: u64,
    pub tail: u64,
    pub ckpt_seq: u64,
}

struct WState {
    extents: HashMap<u64, Extent>,
    patterns: HashMap<u64, Pattern>,
    cache: HashMap<(u64, u64), Dirty>,
    next_version: u64,
    pending: VecDeque<PendingOp>,
    home_queue: VecDeque<((u64, u64), u64)>,
    home_inflight: usize,
    /// The home writer is draining the queue (see `home_writer`).
    home_draining: bool,
    /// Blocks no mapping points to any more, with the journal position
    /// after which they may be reused.
    quarantine: Vec<(u64, Pba)>,
    head: u64,
    tail: u64,
    ckpt_seq: u64,
    ckpt_waiters: Vec<Arc<Completion>>,
    ckpt_job: Option<CkptJob>,
    /// The committer has returned: no checkpoint job can appear any more,
    /// so the checkpointer may return too.
    committer_done: bool,
    failed: Option<String>,
    stop: bool,
    stopped: usize,
    /// Blocks the cleaner is reading: any record that touches one removes
    /// it, and the cleaner then leaves that block where it is.
    clean_watch: HashSet<(u64, u64)>,
}

/// One worker of a store.
pub(crate) struct Worker {
    pub id: usize,
    pub reactor: usize,
    pub sh: Arc<Shared>,
    jid: JournalId,
    st: Mutex<WState>,
    commit_ev: Event,
    home_ev: Event,
    home_done_ev: Event,
    ckpt_ev: Event,
    clean_ev: Event,
    stopped_ev: Event,
    /// User operations started (the cleaner's idle clock).
    activity: AtomicU64,
    /// Blocks this worker's cleaner moved (the store's total is in
    /// `Shared::cleaned_blocks`).
    cleaned: AtomicU64,
}

/// Background coroutines per worker.
const BACKGROUND: usize = 4;

impl Worker {
    pub(crate) fn new(id: usize, reactor: usize, sh: Arc<Shared>, init: WorkerInit) -> Arc<Worker> {
        let jid = JournalId {
            uuid: sh.sb.uuid,
            worker: id as u32,
        };
        Arc::new(Worker {
            id,
            reactor,
            jid,
            sh,
            st: Mutex::new(WState {
                extents: init.extents,
                patterns: HashMap::new(),
                cache: HashMap::new(),
                next_version: 1,
                pending: VecDeque::new(),
                home_queue: VecDeque::new(),
                home_inflight: 0,
                home_draining: false,
                quarantine: Vec::new(),
                head: init.head,
                tail: init.tail,
                ckpt_seq: init.ckpt_seq,
                ckpt_waiters: Vec::new(),
                ckpt_job: None,
                committer_done: false,
                failed: None,
                stop: false,
                stopped: 0,
                clean_watch: HashSet::new(),
            }),
            commit_ev: Event::new(),
            home_ev: Event::new(),
            home_done_ev: Event::new(),
            ckpt_ev: Event::new(),
            clean_ev: Event::new(),
            stopped_ev: Event::new(),
            activity: AtomicU64::new(0),
            cleaned: AtomicU64::new(0),
        })
    }

    fn st(&self) -> MutexGuard<'_, WState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn jblocks(&self) -> u64 {
        self.sh.sb.journal_blocks
    }

    /// The most journal blocks one batch may take.
    fn max_batch_blocks(&self) -> u64 {
        (self.sh.opts.max_batch_bytes / BS).clamp(16, self.jblocks() / 2)
    }

    /// Quarantined blocks that make the committer take a checkpoint (which
    /// releases them): `quarantine_max`, or a quarter of the free blocks
    /// shared among the workers if that is less, so that space freed by
    /// copy-on-write writes comes back before free space runs short. Each
    /// checkpoint writes the worker's whole map, so a large store checkpoints
    /// no more often than it needs to.
    fn quarantine_limit(&self) -> u64 {
        let free = self.sh.alloc().free_blocks();
        let share = free / (4 * self.sh.opts.workers.max(1) as u64);
        (self.sh.opts.quarantine_max / BS).min(share.max(SEGMENT_BLOCKS))
    }

    /// Device-0 byte offset of journal position `lpos`.
    fn jphys(&self, lpos: u64) -> u64 {
        (self.sh.sb.journal_of(self.id) + lpos % self.jblocks()) * BS
    }

    /// Starts the background coroutines on the worker's reactor.
    pub(crate) fn start(self: &Arc<Self>) {
        let h = self.sh.rt.clone();
        for role in 0..BACKGROUND {
            let w = self.clone();
            drop(h.spawn_on(self.reactor, move || {
                match role {
                    0 => w.committer(),
                    1 => w.home_writer(),
                    2 => w.checkpointer(),
                    _ => w.cleaner(),
                }
                let mut st = w.st();
                st.stopped += 1;
                if st.stopped == BACKGROUND {
                    w.stopped_ev.set();
                }
            }));
        }
    }

    /// Every user operation starts here, so it also runs the cleaner's
    /// idle clock.
    fn check_usable(&self) -> Result<(), StoreError> {
        self.activity.fetch_add(1, Ordering::Relaxed);
        if self.sh.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        if let Some(r) = &self.st().failed {
            return Err(StoreError::Failed {
                worker: self.id,
                reason: r.clone(),
            });
        }
        Ok(())
    }

    fn fail(&self, why: &StoreError) {
        log::error!(
            "store worker {}: {why}; failing further operations",
            self.id
        );
        let mut st = self.st();
        if st.failed.is_none() {
            st.failed = Some(why.to_string());
        }
        drop(st);
        self.commit_ev.set();
        self.home_ev.set();
        self.home_done_ev.set();
        self.ckpt_ev.set();
        self.clean_ev.set();
    }

    /// Queues an operation and waits until it is durable (or failed).
    fn commit(&self, op: PendingOp) -> Result<(), StoreError> {
        let c = Completion::new();
        let mut op = op;
        op.done.push(c.clone());
        self.enqueue(op);
        c.wait()
    }

    fn enqueue(&self, op: PendingOp) {
        self.st().pending.push_back(op);
        self.commit_ev.set();
    }

    // ----- extent operations -------------------------------------------------

    pub(crate) fn create(&self, id: u64, size: u64) -> Result<(), StoreError> {
        self.check_usable()?;
        {
            let st = self.st();
            if st.extents.contains_key(&id) {
                return Err(StoreError::ExtentExists { extent: id });
            }
            let cap = (self.sh.sb.ckpt_blocks - 1) * BS;
            let need = checkpoint::size_bound(&st.extents) + 32 + 24 * (size / BS);
            if need > cap {
                return Err(StoreError::NoMetadataSpace {
                    extent: id,
                    capacity: cap,
                });
            }
        }
        self.commit(PendingOp {
            id,
            kind: OpKind::Create {
                size,
                generation: 0,
            },
            done: Vec::new(),
        })
    }

    pub(crate) fn delete(&self, id: u64) -> Result<(), StoreError> {
        self.check_usable()?;
        self.extent_size(id)?;
        self.commit(PendingOp {
            id,
            kind: OpKind::Delete,
            done: Vec::new(),
        })
    }

    pub(crate) fn set_generation(&self, id: u64, gen: u64) -> Result<(), StoreError> {
        self.check_usable()?;
        self.extent_size(id)?;
        self.commit(PendingOp {
            id,
            kind: OpKind::SetGen(gen),
            done: Vec::new(),
        })
    }

    pub(crate) fn unmap(&self, id: u64, offset: u64, len: u64) -> Result<(), StoreError> {
        self.check_usable()?;
        self.check_range(id, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.commit(PendingOp {
            id,
            kind: OpKind::Unmap {
                lblock: offset / BS,
                count: len / BS,
            },
            done: Vec::new(),
        })
    }

    fn extent_size(&self, id: u64) -> Result<u64, StoreError> {
        self.st()
            .extents
            .get(&id)
            .map(|x| x.size)
            .ok_or(StoreError::NoSuchExtent { extent: id })
    }

    fn check_range(&self, id: u64, offset: u64, len: u64) -> Result<(), StoreError> {
        if offset % BS != 0 || len % BS != 0 {
            return Err(StoreError::Misaligned {
                extent: id,
                offset,
                len,
                align: BS,
            });
        }
        let size = self.extent_size(id)?;
        if offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(StoreError::OutOfRange {
                extent: id,
                offset,
                len,
                size,
            });
        }
        Ok(())
    }

    /// `(id, size, allocated bytes, generation)` of every extent.
    pub(crate) fn list(&self) -> Vec<(u64, u64, u64, u64)> {
        self.st()
            .extents
            .iter()
            .map(|(id, x)| (*id, x.size, x.mapped_blocks() * BS, x.generation))
            .collect()
    }

    // ----- write path --------------------------------------------------------

    /// Writes `bufs` (whole blocks, from [`copy_blocks`]) at `offset`.
    pub(crate) fn write(
        self: &Arc<Self>,
        id: u64,
        offset: u64,
        bufs: Vec<Arc<DmaBuf>>,
        crcs: Vec<u32>,
    ) -> Result<(), StoreError> {
        self.check_usable()?;
        let len: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        self.check_range(id, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let opts = &self.sh.opts;
        let mode = {
            let mut st = self.st();
            let p = st.patterns.entry(id).or_default();
            let m = p.classify(offset, len, opts.direct_write_min, opts.merge_max);
            p.inflight += 1;
            m
        };
        let lblock = offset / BS;
        let r = match mode {
            WriteMode::Journal if opts.log_small_writes && opts.relocate_home => {
                self.log_write(id, lblock, bufs, crcs)
            }
            WriteMode::Journal => self.journal_write(id, lblock, bufs, crcs, Vec::new()),
            WriteMode::Direct => self.direct_write(id, lblock, bufs, crcs, Vec::new()),
            WriteMode::Hold => self.hold_write(id, lblock, bufs, crcs),
        };
        if let Some(p) = self.st().patterns.get_mut(&id) {
            p.inflight = p.inflight.saturating_sub(1);
        }
        if r.is_ok() {
            self.sh.user_written.fetch_add(len, Ordering::Relaxed);
        }
        r
    }

    /// Allocates `n` blocks, reclaiming quarantined space (a checkpoint of
    /// every worker) once if the first try finds too little.
    fn allocate(&self, id: u64, n: u64) -> Result<Vec<(Pba, u64)>, StoreError> {
        if let Some(r) = self.sh.alloc().alloc(n) {
            return Ok(r);
        }
        log::debug!(
            "worker {}: {n} blocks wanted, reclaiming quarantined space",
            self.id
        );
        super::reclaim(&self.sh);
        let got = self.sh.alloc().alloc(n);
        got.ok_or_else(|| StoreError::NoSpace {
            extent: id,
            needed: n * BS,
            free: self.sh.alloc().free_blocks() * BS,
        })
    }

    /// Journals a write; completes `extra` waiters (held writes) with the
    /// same outcome once it is committed.
    fn journal_write(
        &self,
        id: u64,
        lblock: u64,
        bufs: Vec<Arc<DmaBuf>>,
        crcs: Vec<u32>,
        extra: Vec<Arc<Completion>>,
    ) -> Result<(), StoreError> {
        let unmapped = {
            let st = self.st();
            let x = st
                .extents
                .get(&id)
                .ok_or(StoreError::NoSuchExtent { extent: id })?;
            (0..bufs.len() as u64)
                .filter(|i| x.get(lblock + i).pba.is_none())
                .count() as u64
        };
        let reserved: Vec<Pba> = self
            .allocate(id, unmapped)?
            .into_iter()
            .flat_map(|(p, n)| (0..n).map(move |i| p.plus(i)))
            .collect();
        self.commit(PendingOp {
            id,
            kind: OpKind::JWrite {
                lblock,
                bufs,
                crcs,
                reserved,
            },
            done: extra,
        })
    }

    /// Writes a small write to newly allocated blocks as part of the next
    /// batch: the committer writes the data there and the `Map` records to
    /// the journal together, and one flush covers both. The data is written
    /// once, and a batch of concurrent small writes lands in few runs of
    /// neighbouring blocks (`Allocator::alloc_log`). Recovery checks the last batch's mapped blocks
    /// against their crcs, so a batch whose data did not reach the device
    /// is dropped whole. Journaled instead (in place) when less than an
    /// eighth of the store is free: copy-on-write frees the old blocks only
    /// at the next checkpoint.
    fn log_write(
        &self,
        id: u64,
        lblock: u64,
        bufs: Vec<Arc<DmaBuf>>,
        crcs: Vec<u32>,
    ) -> Result<(), StoreError> {
        let n = bufs.len() as u64;
        let runs = {
            let mut a = self.sh.alloc();
            if a.free_blocks() < n + a.total_blocks() / 8 {
                None
            } else {
                a.alloc_log(n)
            }
        };
        let Some(runs) = runs else {
            return self.journal_write(id, lblock, bufs, crcs, Vec::new());
        };
        self.commit(PendingOp {
            id,
            kind: OpKind::LWrite {
                lblock,
                bufs,
                crcs,
                runs,
            },
            done: Vec::new(),
        })
    }

    /// Writes blocks to newly allocated space, then commits their mapping;
    /// completes `extra` waiters (held writes) with the same outcome.
    fn direct_write(
        &self,
        id: u64,
        lblock: u64,
        bufs: Vec<Arc<DmaBuf>>,
        crcs: Vec<u32>,
        extra: Vec<Arc<Completion>>,
    ) -> Result<(), StoreError> {
        let r = self.direct_write_inner(id, lblock, bufs, crcs, extra.clone());
        if let Err(e) = &r {
            // On success the committer completed them.
            extra.iter().for_each(|c| c.complete(Err(e.clone())));
        }
        r
    }

    fn direct_write_inner(
        &self,
        id: u64,
        lblock: u64,
        bufs: Vec<Arc<DmaBuf>>,
        crcs: Vec<u32>,
        extra: Vec<Arc<Completion>>,
    ) -> Result<(), StoreError> {
        let n = bufs.len() as u64;
        let runs = match self.allocate(id, n) {
            Ok(runs) => runs,
            // A full store still takes overwrites: through the journal only
            // the blocks not mapped yet need space, and the write stays
            // atomic as long as it fits in one batch.
            Err(StoreError::NoSpace { .. })
                if op_blocks_total(n, jwrite_record_bytes(n)) <= self.max_batch_blocks() =>
            {
                return self.journal_write(id, lblock, bufs, crcs, extra);
            }
            Err(e) => return Err(e),
        };
        self.sh.write_runs(&runs, &bufs)?;
        self.map_written(id, lblock, runs, crcs, extra)
    }

    /// Commits the mapping of blocks written to the new blocks `runs`: one
    /// `Map` record in the next batch. The committer completes `extra`
    /// (held writes) with the same outcome.
    fn map_written(
        &self,
        id: u64,
        lblock: u64,
        runs: Vec<(Pba, u64)>,
        crcs: Vec<u32>,
        extra: Vec<Arc<Completion>>,
    ) -> Result<(), StoreError> {
        self.sh
            .direct_bytes
            .fetch_add(crcs.len() as u64 * BS, Ordering::Relaxed);
        let c = Completion::new();
        let mut done = extra;
        done.push(c.clone());
        self.enqueue(PendingOp {
            id,
            kind: OpKind::Map { lblock, runs, crcs },
            done,
        });
        c.wait()
    }

    fn hold_write(
        self: &Arc<Self>,
        id: u64,
        lblock: u64,
        bufs: Vec<Arc<DmaBuf>>,
        crcs: Vec<u32>,
    ) -> Result<(), StoreError> {
        let c = Completion::new();
        let merge_blocks = (self.sh.opts.merge_max / BS).max(1);
        let piece_blocks = (self.sh.opts.stream_piece / BS) as usize;
        let (flush_old, flush_full, arm, piece) = {
            let mut st = self.st();
            let p = st.patterns.entry(id).or_default();
            let mut old = None;
            let mut arm = None;
            let append = p.stream.as_ref().is_some_and(|s| s.end() == lblock);
            if !append {
                old = p.stream.take();
                p.next_gen += 1;
                p.stream = Some(Stream {
                    gen: p.next_gen,
                    lblock,
                    bufs: Vec::new(),
                    crcs: Vec::new(),
                    waiters: Vec::new(),
                    pieces: Vec::new(),
                    sent: 0,
                });
                arm = Some(p.next_gen);
            }
            let s = p.stream.as_mut().expect("stream just ensured");
            s.bufs.extend(bufs);
            s.crcs.extend(crcs);
            s.waiters.push(c.clone());
            let mut piece = None;
            let full = if s.bufs.len() as u64 >= merge_blocks {
                p.stream.take()
            } else {
                // A full piece goes to the device now, while the writers
                // behind this one are still copying their data in.
                if piece_blocks > 0 && s.bufs.len() - s.sent >= piece_blocks {
                    let pc = Piece::new();
                    let end = s.sent + piece_blocks;
                    piece = Some((pc.clone(), s.bufs[s.sent..end].to_vec()));
                    s.pieces.push(pc);
                    s.sent = end;
                }
                None
            };
            (old, full, arm, piece)
        };
        if let Some(old) = flush_old {
            let w = self.clone();
            drop(rt::spawn(move || w.flush_stream(id, old)));
        }
        if let Some(gen) = arm {
            let w = self.clone();
            let hold = self.sh.opts.hold_timeout;
            drop(rt::spawn(move || {
                rt::sleep(hold);
                let s = {
                    let mut st = w.st();
                    match st.patterns.get_mut(&id) {
                        Some(p) if p.stream.as_ref().is_some_and(|s| s.gen == gen) => {
                            p.stream.take()
                        }
                        _ => None,
                    }
                };
                if let Some(s) = s {
                    w.flush_stream(id, s);
                }
            }));
        }
        if let Some((pc, bufs)) = piece {
            self.sh.stream_pieces.fetch_add(1, Ordering::Relaxed);
            self.write_piece(id, &pc, &bufs);
        }
        if let Some(full) = flush_full {
            self.flush_stream(id, full);
        }
        c.wait()
    }

    /// Writes a stream's held blocks (those not sent as pieces yet) and
    /// commits them all with one mapping; every held write completes with
    /// the outcome.
    fn flush_stream(&self, id: u64, mut s: Stream) {
        self.sh.merged_writes.fetch_add(1, Ordering::Relaxed);
        self.sh
            .held_writes
            .fetch_add(s.waiters.len() as u64, Ordering::Relaxed);
        if s.pieces.is_empty() {
            let _ = self.direct_write(id, s.lblock, s.bufs, s.crcs, s.waiters);
            return;
        }
        if s.sent < s.bufs.len() {
            let pc = Piece::new();
            self.write_piece(id, &pc, &s.bufs[s.sent..]);
            s.pieces.push(pc);
        }
        let (mut runs, mut err): (Vec<(Pba, u64)>, Option<StoreError>) = (Vec::new(), None);
        for pc in &s.pieces {
            match pc.wait() {
                Ok(r) => runs.extend(r),
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        }
        match err {
            None => {
                let _ = self.map_written(id, s.lblock, merge_runs(runs), s.crcs, s.waiters);
            }
            Some(e) => {
                // The pieces that were written are referenced by nothing.
                self.sh.free_runs(&runs);
                if matches!(e, StoreError::NoSpace { .. }) {
                    // Whole, a full store may still take it (journaled).
                    let _ = self.direct_write(id, s.lblock, s.bufs, s.crcs, s.waiters);
                } else {
                    s.waiters.iter().for_each(|c| c.complete(Err(e.clone())));
                }
            }
        }
    }

    /// Writes `bufs` (a piece of a held stream) to newly allocated blocks;
    /// `pc` gets the blocks, or the error.
    fn write_piece(&self, id: u64, pc: &Piece, bufs: &[Arc<DmaBuf>]) {
        let r = self
            .allocate(id, bufs.len() as u64)
            .and_then(|runs| self.sh.write_runs(&runs, bufs).map(|()| runs));
        pc.complete(r);
    }

    /// Flushes every held stream (close).
    pub(crate) fn flush_streams(self: &Arc<Self>) {
        let streams: Vec<(u64, Stream)> = {
            let mut st = self.st();
            st.patterns
                .iter_mut()
                .filter_map(|(id, p)| p.stream.take().map(|s| (*id, s)))
                .collect()
        };
        for (id, s) in streams {
            self.flush_stream(id, s);
        }
    }

    // ----- read path ---------------------------------------------------------

    pub(crate) fn read(&self, id: u64, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        self.check_usable()?;
        let len = buf.len() as u64;
        self.check_range(id, offset, len)?;
        let lblock = offset / BS;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.read_once(id, lblock, buf, attempt >= 4)? {
                true => break,
                false => continue, // the map changed under the read: again
            }
        }
        self.sh.user_read.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// One attempt; `Ok(false)` when a mismatch coincided with a change of
    /// the map (a concurrent write), so the read must be redone.
    fn read_once(
        &self,
        id: u64,
        lblock: u64,
        buf: &mut [u8],
        last: bool,
    ) -> Result<bool, StoreError> {
        // (index in extent, entry) of blocks to fetch from devices.
        let mut plan: Vec<(u64, Entry)> = Vec::new();
        {
            let st = self.st();
            let x = st
                .extents
                .get(&id)
                .ok_or(StoreError::NoSuchExtent { extent: id })?;
            for (i, out) in buf.chunks_mut(BS as usize).enumerate() {
                let l = lblock + i as u64;
                if let Some(d) = st.cache.get(&(id, l)) {
                    out.copy_from_slice(d.buf.as_slice());
                    continue;
                }
                let e = x.get(l);
                if e.pba.is_none() {
                    out.fill(0);
                } else {
                    plan.push((l, e));
                }
            }
        }
        if plan.is_empty() {
            return Ok(true);
        }
        // Runs of blocks consecutive both in the extent and on a device.
        let mut runs: Vec<(u64, Pba, usize)> = Vec::new(); // (first l, first pba, count)
        for &(l, e) in &plan {
            match runs.last_mut() {
                Some((l0, p0, n))
                    if *l0 + *n as u64 == l
                        && p0.plus(*n as u64) == e.pba
                        && *n < REQUEST_BLOCKS =>
                {
                    *n += 1
                }
                _ => runs.push((l, e.pba, 1)),
            }
        }
        let mut per_dev: Vec<Vec<(usize, IoOp)>> =
            (0..self.sh.devices.len()).map(|_| Vec::new()).collect();
        for (ri, &(_, p, n)) in runs.iter().enumerate() {
            per_dev[p.device()].push((
                ri,
                IoOp::Read {
                    offset: p.block() * BS,
                    buf: DmaBuf::new(n * BS as usize),
                },
            ));
        }
        let mut got: Vec<Option<DmaBuf>> = (0..runs.len()).map(|_| None).collect();
        for (d, ops) in per_dev.into_iter().enumerate() {
            if ops.is_empty() {
                continue;
            }
            let (idx, ops): (Vec<usize>, Vec<IoOp>) = ops.into_iter().unzip();
            let done = self.sh.run_ops(d, ops)?;
            for (i, op) in idx.into_iter().zip(done) {
                if let IoOp::Read { buf, .. } = op {
                    got[i] = Some(buf);
                }
            }
        }
        let mut pi = 0;
        for (ri, &(l0, p0, n)) in runs.iter().enumerate() {
            let data = got[ri].take().expect("every run was read");
            for k in 0..n {
                let l = l0 + k as u64;
                let blk = &data.as_slice()[k * BS as usize..(k + 1) * BS as usize];
                let want = plan[pi].1.crc;
                pi += 1;
                if crc32c::crc32c(blk) != want {
                    let changed = {
                        let st = self.st();
                        st.cache.contains_key(&(id, l))
                            || st.extents.get(&id).map(|x| x.get(l)) != Some(plan[pi - 1].1)
                    };
                    if changed && !last {
                        return Ok(false);
                    }
                    if !changed {
                        self.sh.checksum_errors.fetch_add(1, Ordering::Relaxed);
                        let pba = p0.plus(k as u64);
                        log::error!(
                            "checksum mismatch: extent {id} offset {} (device {} block {})",
                            l * BS,
                            self.sh.dev_name(pba.device()),
                            pba.block()
                        );
                        return Err(StoreError::Checksum {
                            extent: id,
                            offset: l * BS,
                            device: self.sh.dev_name(pba.device()),
                            device_offset: pba.block() * BS,
                        });
                    }
                    return Ok(false);
                }
                let o = ((l - lblock) * BS) as usize;
                buf[o..o + BS as usize].copy_from_slice(blk);
            }
        }
        Ok(true)
    }

    // ----- checkpoints -------------------------------------------------------

    /// Takes a checkpoint covering every operation completed before the
    /// call, and waits for it (journal trimmed, quarantine released).
    pub(crate) fn checkpoint(&self) -> Result<(), StoreError> {
        let c = Completion::new();
        {
            let mut st = self.st();
            if let Some(r) = &st.failed {
                return Err(StoreError::Failed {
                    worker: self.id,
                    reason: r.clone(),
                });
            }
            if st.stop {
                // The committer may be gone: nobody would answer.
                return Err(StoreError::Closed);
            }
            st.ckpt_waiters.push(c.clone());
        }
        self.commit_ev.set();
        c.wait()
    }

    /// Stops the background coroutines and waits for them.
    pub(crate) fn stop(&self) {
        self.request_stop();
        self.stopped_ev.wait();
    }

    /// Asks the background coroutines to stop once idle; does not wait.
    pub(crate) fn request_stop(&self) {
        self.st().stop = true;
        self.commit_ev.set();
        self.home_ev.set();
        self.home_done_ev.set();
        self.ckpt_ev.set();
        self.clean_ev.set();
    }

    /// Figures for stats: (dirty blocks, quarantined blocks, journal used).
    pub(crate) fn figures(&self) -> (u64, u64, u64) {
        let st = self.st();
        (
            st.cache.len() as u64,
            st.quarantine.len() as u64,
            st.tail - st.head,
        )
    }

    // ----- the committer -----------------------------------------------------

    /// The committer coroutine; the checkpointer outlives it, because the
    /// committer may cut a checkpoint job until the moment it returns (a
    /// stopping worker's last batches can still fill the quarantine or the
    /// journal).
    fn committer(self: &Arc<Self>) {
        self.commit_loop();
        self.st().committer_done = true;
        self.ckpt_ev.set();
        self.home_ev.set();
    }

    fn commit_loop(self: &Arc<Self>) {
        let max_batch = self.max_batch_blocks();
        loop {
            self.commit_ev.reset();
            let mut st = self.st();
            if let Some(r) = st.failed.clone() {
                let err = StoreError::Failed {
                    worker: self.id,
                    reason: r,
                };
                let ops: Vec<PendingOp> = st.pending.drain(..).collect();
                let waiters: Vec<_> = st.ckpt_waiters.drain(..).collect();
                let stop = st.stop;
                drop(st);
                ops.iter()
                    .flat_map(|o| &o.done)
                    .for_each(|c| c.complete(Err(err.clone())));
                waiters.iter().for_each(|c| c.complete(Err(err.clone())));
                if stop {
                    return;
                }
                self.commit_ev.wait();
                continue;
            }
            // A snapshot for a checkpoint, taken between batches: every
            // applied operation is durable now.
            let used = st.tail - st.head;
            let want_ckpt = !st.ckpt_waiters.is_empty()
                || used > self.jblocks() / 2
                || st.quarantine.len() as u64 > self.quarantine_limit();
            if want_ckpt && st.ckpt_job.is_none() && (used > 0 || !st.ckpt_waiters.is_empty()) {
                let image = checkpoint::encode(self.jid, st.ckpt_seq + 1, st.tail, &st.extents);
                let waiters = std::mem::take(&mut st.ckpt_waiters);
                st.ckpt_job = Some(CkptJob {
                    journal_lpos: st.tail,
                    image,
                    waiters,
                });
                self.ckpt_ev.set();
            }
            if st.pending.is_empty() {
                if st.stop && st.ckpt_job.is_none() {
                    return;
                }
                drop(st);
                self.commit_ev.wait();
                continue;
            }
            // The most journal blocks a batch may take now: either the
            // contiguous room up to the end of the region, or what is left
            // after skipping to the next lap.
            let room = self.jblocks() - used;
            let to_end = self.jblocks() - st.tail % self.jblocks();
            let limit = (to_end.min(room))
                .max(room.saturating_sub(to_end))
                .min(max_batch);
            let fits = st
                .pending
                .front()
                .is_some_and(|op| op_blocks(op, 0) <= limit);
            if !fits
                && matches!(
                    st.pending.front().map(|op| &op.kind),
                    Some(OpKind::Relocate { .. })
                )
            {
                let op = st.pending.pop_front().expect("front exists");
                drop(st);
                self.decline_relocation(op);
                continue;
            }
            if !fits {
                if used == 0 {
                    // Cannot happen with sane options: one operation larger
                    // than half the journal.
                    let op = st.pending.pop_front().expect("front exists");
                    drop(st);
                    let e = StoreError::Invalid(format!(
                        "worker {}: an operation needs more than the whole journal",
                        self.id
                    ));
                    op.done.iter().for_each(|c| c.complete(Err(e.clone())));
                    continue;
                }
                if st.ckpt_job.is_none() {
                    let image = checkpoint::encode(self.jid, st.ckpt_seq + 1, st.tail, &st.extents);
                    st.ckpt_job = Some(CkptJob {
                        journal_lpos: st.tail,
                        image,
                        waiters: Vec::new(),
                    });
                    self.ckpt_ev.set();
                }
                drop(st);
                self.commit_ev.wait();
                continue;
            }
            let batch = self.take_batch(&mut st, limit);
            drop(st);
            for (c, e) in batch.rejected {
                c.complete(Err(e));
            }
            if batch.records.is_empty() {
                batch.done.iter().for_each(|c| c.complete(Ok(())));
                continue;
            }
            let log_bytes = batch.log.len() as u64 * BS;
            match self.write_batch(
                &batch.records,
                batch.data,
                batch.log,
                batch.lpos,
                batch.skip_at,
            ) {
                Ok(()) => {
                    let end = batch.lpos + batch.blocks;
                    let mut st = self.st();
                    st.tail = end;
                    for (key, version) in batch.dirty {
                        if let Some(d) = st.cache.get_mut(&key) {
                            if d.version == version {
                                d.durable = true;
                                st.home_queue.push_back((key, version));
                            }
                        }
                    }
                    for (key, version) in batch.logged {
                        if st.cache.get(&key).is_some_and(|d| d.version == version) {
                            st.cache.remove(&key);
                        }
                    }
                    for p in batch.freed {
                        st.quarantine.push((end, p));
                    }
                    drop(st);
                    self.sh.batches.fetch_add(1, Ordering::Relaxed);
                    self.sh.direct_bytes.fetch_add(log_bytes, Ordering::Relaxed);
                    self.sh
                        .logged_blocks
                        .fetch_add(log_bytes / BS, Ordering::Relaxed);
                    self.home_ev.set();
                    batch.done.iter().for_each(|c| c.complete(Ok(())));
                    // Let the writers just acknowledged run and queue their
                    // next writes before the next batch is cut: otherwise
                    // batches alternate between the few that arrived during
                    // the flush and the many that were just woken.
                    rt::yield_now();
                }
                Err(e) => {
                    self.fail(&e);
                    batch.done.iter().for_each(|c| c.complete(Err(e.clone())));
                }
            }
        }
    }

    /// Takes queued operations (whole ones, up to `max_blocks` of journal),
    /// resolves and applies them, and returns the batch to write.
    fn take_batch(&self, st: &mut WState, max_blocks: u64) -> Batch {
        let mut b = Batch::default();
        let mut data_blocks = 0u64;
        let mut record_bytes = 0u64;
        while let Some(op) = st.pending.front() {
            let (d, r) = op_cost(op);
            if !b.records.is_empty()
                && op_blocks_total(data_blocks + d, record_bytes + r) > max_blocks
            {
                break;
            }
            data_blocks += d;
            record_bytes += r;
            let op = st.pending.pop_front().expect("front exists");
            if matches!(op.kind, OpKind::Relocate { .. }) {
                self.take_relocation(st, op, &mut b);
                continue;
            }
            if matches!(op.kind, OpKind::LWrite { .. }) {
                self.take_log_write(st, op, &mut b);
                continue;
            }
            match self.resolve(st, op) {
                Ok((recs, bufs, done)) => {
                    let mut at = 0;
                    for r in &recs {
                        let n = r.data_blocks();
                        self.apply_live(st, r, &bufs[at..at + n], &mut b);
                        at += n;
                    }
                    b.data.extend(bufs);
                    b.records.extend(recs);
                    b.done.extend(done);
                }
                Err((done, e)) => b.rejected.extend(done.into_iter().map(|c| (c, e.clone()))),
            }
        }
        // Placement: a batch never straddles the end of the region.
        let hb = journal::header_blocks_for(&b.records);
        b.blocks = hb + b.data.len() as u64;
        let to_end = self.jblocks() - st.tail % self.jblocks();
        if b.blocks > to_end {
            b.skip_at = Some(st.tail);
            b.lpos = st.tail + to_end;
        } else {
            b.lpos = st.tail;
        }
        // Give the dirty blocks their real journal position.
        for (key, version) in &b.dirty {
            if let Some(d) = st.cache.get_mut(key) {
                if d.version == *version {
                    d.lpos = b.lpos;
                }
            }
        }
        b
    }

    /// Checks an operation against the current state and turns it into
    /// records (with their journal data and the devices to flush).
    #[allow(clippy::type_complexity)]
    fn resolve(
        &self,
        st: &mut WState,
        op: PendingOp,
    ) -> Result<
        (Vec<Record>, Vec<Arc<DmaBuf>>, Vec<Arc<Completion>>),
        (Vec<Arc<Completion>>, StoreError),
    > {
        let id = op.id;
        let missing = |st: &WState| !st.extents.contains_key(&id);
        match op.kind {
            OpKind::Create { size, generation } => {
                if !missing(st) {
                    return Err((op.done, StoreError::ExtentExists { extent: id }));
                }
                Ok((
                    vec![Record::Create {
                        id,
                        size,
                        generation,
                    }],
                    vec![],
                    op.done,
                ))
            }
            OpKind::Delete => {
                if missing(st) {
                    return Err((op.done, StoreError::NoSuchExtent { extent: id }));
                }
                Ok((vec![Record::Delete { id }], vec![], op.done))
            }
            OpKind::SetGen(generation) => {
                if missing(st) {
                    return Err((op.done, StoreError::NoSuchExtent { extent: id }));
                }
                Ok((vec![Record::SetGen { id, generation }], vec![], op.done))
            }
            OpKind::Unmap { lblock, count } => {
                if missing(st) {
                    return Err((op.done, StoreError::NoSuchExtent { extent: id }));
                }
                Ok((vec![Record::Unmap { id, lblock, count }], vec![], op.done))
            }
            OpKind::Relocate { .. } | OpKind::LWrite { .. } => {
                unreachable!("take_batch handles relocations and logged writes")
            }
            OpKind::Map { lblock, runs, crcs } => {
                if missing(st) {
                    self.sh.free_runs(&runs);
                    return Err((op.done, StoreError::NoSuchExtent { extent: id }));
                }
                let mut recs = Vec::new();
                let mut i = 0usize;
                for (p, n) in runs {
                    recs.push(Record::Map {
                        id,
                        lblock: lblock + i as u64,
                        pba: p,
                        crcs: crcs[i..i + n as usize].to_vec(),
                    });
                    i += n as usize;
                }
                Ok((recs, vec![], op.done))
            }
            OpKind::JWrite {
                lblock,
                bufs,
                crcs,
                reserved,
            } => {
                let Some(x) = st.extents.get(&id) else {
                    let mut a = self.sh.alloc();
                    reserved.iter().for_each(|p| a.free(*p));
                    return Err((op.done, StoreError::NoSuchExtent { extent: id }));
                };
                let mut spare = reserved.into_iter();
                let mut entries = Vec::with_capacity(bufs.len());
                let mut extra: Vec<Pba> = Vec::new();
                for (i, crc) in crcs.iter().enumerate() {
                    let cur = x.get(lblock + i as u64);
                    let pba = if !cur.pba.is_none() {
                        cur.pba // overwrite in place: the journal covers a torn home write
                    } else if let Some(p) = spare.next() {
                        p
                    } else {
                        // Unmapped since the write was queued: allocate now.
                        let got = self.sh.alloc().alloc(1);
                        match got {
                            Some(r) => {
                                extra.push(r[0].0);
                                r[0].0
                            }
                            None => {
                                let mut a = self.sh.alloc();
                                spare.for_each(|p| a.free(p));
                                extra.iter().for_each(|p| a.free(*p));
                                drop(a);
                                return Err((
                                    op.done,
                                    StoreError::NoSpace {
                                        extent: id,
                                        needed: BS,
                                        free: 0,
                                    },
                                ));
                            }
                        }
                    };
                    entries.push(Entry { pba, crc: *crc });
                }
                let mut a = self.sh.alloc();
                spare.for_each(|p| a.free(p));
                drop(a);
                Ok((
                    vec![Record::JWrite {
                        id,
                        lblock,
                        entries,
                    }],
                    bufs,
                    op.done,
                ))
            }
        }
    }

    /// Applies a record to the live state: the map, the dirty cache, and
    /// the blocks it frees (quarantined once the batch is durable).
    fn apply_live(&self, st: &mut WState, r: &Record, data: &[Arc<DmaBuf>], b: &mut Batch) {
        unwatch(&mut st.clean_watch, r);
        let WState {
            extents,
            cache,
            next_version,
            patterns,
            ..
        } = st;
        r.apply(extents, &mut |p| b.freed.push(p));
        match r {
            Record::JWrite {
                id,
                lblock,
                entries,
            } => {
                for (i, e) in entries.iter().enumerate() {
                    let key = (*id, lblock + i as u64);
                    let version = *next_version;
                    *next_version += 1;
                    // A home write of an older version may still be running:
                    // the new version waits for it (one write per block at a time).
                    let inflight = cache.get(&key).is_some_and(|d| d.inflight);
                    b.dirty.push((key, version));
                    cache.insert(
                        key,
                        Dirty {
                            buf: data[i].clone(),
                            pba: e.pba,
                            lpos: u64::MAX, // set once the batch is placed
                            version,
                            durable: false,
                            inflight,
                            moved: false,
                        },
                    );
                }
            }
            Record::Map {
                id, lblock, crcs, ..
            } => {
                for i in 0..crcs.len() as u64 {
                    cache.remove(&(*id, lblock + i));
                }
            }
            Record::Unmap { id, lblock, count } => {
                for l in *lblock..lblock + count {
                    cache.remove(&(*id, l));
                }
            }
            Record::Delete { id } | Record::Create { id, .. } => {
                cache.retain(|k, _| k.0 != *id);
                if patterns
                    .get(id)
                    .is_some_and(|p| p.stream.is_none() && p.inflight == 0)
                {
                    patterns.remove(id);
                }
            }
            Record::SetGen { .. } => {}
        }
    }

    /// Adds a logged write to the batch: `Map` records for its new blocks,
    /// its data to be written there with the batch, and dirty-cache entries
    /// that serve reads until the batch is durable (the map points to the
    /// new blocks from now on, and their data is not there yet).
    fn take_log_write(&self, st: &mut WState, op: PendingOp, b: &mut Batch) {
        let OpKind::LWrite {
            lblock,
            bufs,
            crcs,
            runs,
        } = op.kind
        else {
            unreachable!("only logged writes come here");
        };
        let id = op.id;
        if !st.extents.contains_key(&id) {
            self.sh.free_runs(&runs);
            let e = StoreError::NoSuchExtent { extent: id };
            b.rejected
                .extend(op.done.into_iter().map(|c| (c, e.clone())));
            return;
        }
        let mut bufs = bufs.into_iter();
        let mut i = 0usize;
        for (p, n) in runs {
            let r = Record::Map {
                id,
                lblock: lblock + i as u64,
                pba: p,
                crcs: crcs[i..i + n as usize].to_vec(),
            };
            unwatch(&mut st.clean_watch, &r);
            r.apply(&mut st.extents, &mut |old| b.freed.push(old));
            b.records.push(r);
            for k in 0..n {
                let key = (id, lblock + i as u64 + k);
                let version = st.next_version;
                st.next_version += 1;
                let buf = bufs.next().expect("one buffer per block of the runs");
                let inflight = st.cache.get(&key).is_some_and(|d| d.inflight);
                st.cache.insert(
                    key,
                    Dirty {
                        buf: buf.clone(),
                        pba: p.plus(k),
                        lpos: u64::MAX, // never home-written: no checkpoint waits for it
                        version,
                        durable: false,
                        inflight,
                        moved: false,
                    },
                );
                b.logged.push((key, version));
                b.log.push((p.plus(k), buf));
            }
            i += n as usize;
        }
        b.done.extend(op.done);
    }

    /// Adds a relocation to the batch: every block still at the version the
    /// home writer copied is mapped to its new home (one `Map` record per run
    /// of neighbours) and its old home is freed once the batch is durable.
    /// The dirty-cache entries stay until the home writer sees the batch
    /// durable: a checkpoint must not count these blocks as home before
    /// their mapping is. A block written, unmapped or deleted since it was
    /// copied keeps its newer state, and its copy is freed at once (no
    /// record points to it).
    fn take_relocation(&self, st: &mut WState, op: PendingOp, b: &mut Batch) {
        let OpKind::Relocate { items, taken } = op.kind else {
            unreachable!("only relocations come here");
        };
        taken.store(true, Ordering::Release);
        let mut recs: Vec<Record> = Vec::new();
        let mut stale = Vec::new();
        for (key, version, new) in items {
            let current = st
                .cache
                .get(&key)
                .is_some_and(|d| d.version == version && d.durable);
            let Some(x) = st.extents.get(&key.0).filter(|_| current) else {
                stale.push(new);
                continue;
            };
            let crc = x.get(key.1).crc;
            if let Some(d) = st.cache.get_mut(&key) {
                d.pba = new;
                if d.moved {
                    self.sh.cleaned_blocks.fetch_add(1, Ordering::Relaxed);
                    self.cleaned.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Some(Record::Map {
                id,
                lblock,
                pba,
                crcs,
            }) = recs.last_mut()
            {
                let n = crcs.len() as u64;
                if *id == key.0 && *lblock + n == key.1 && pba.plus(n) == new {
                    crcs.push(crc);
                    continue;
                }
            }
            recs.push(Record::Map {
                id: key.0,
                lblock: key.1,
                pba: new,
                crcs: vec![crc],
            });
        }
        if !stale.is_empty() {
            let mut a = self.sh.alloc();
            stale.into_iter().for_each(|p| a.free(p));
        }
        for r in &recs {
            unwatch(&mut st.clean_watch, r);
            r.apply(&mut st.extents, &mut |p| b.freed.push(p));
        }
        b.records.extend(recs);
        b.done.extend(op.done);
    }

    /// Gives a relocation back untaken (no journal room for its records):
    /// its new blocks are freed and the home writer writes in place.
    fn decline_relocation(&self, op: PendingOp) {
        if let OpKind::Relocate { items, .. } = &op.kind {
            let mut a = self.sh.alloc();
            items.iter().for_each(|&(_, _, p)| a.free(p));
        }
        op.done.iter().for_each(|c| c.complete(Ok(())));
    }

    /// Writes a batch (and a skip header before it if needed) and the data
    /// of its logged writes, then flushes.
    fn write_batch(
        &self,
        records: &[Record],
        data: Vec<Arc<DmaBuf>>,
        log: Vec<(Pba, Arc<DmaBuf>)>,
        lpos: u64,
        skip_at: Option<u64>,
    ) -> Result<(), StoreError> {
        // Logged data: device 0's go out with the journal write; other
        // devices' first.
        let mut per_dev = self.sh.block_writes(log.iter().map(|(p, b)| (*p, b)));
        let mut ops = std::mem::take(&mut per_dev[0]);
        for (d, dops) in per_dev.into_iter().enumerate().skip(1) {
            if !dops.is_empty() {
                self.sh.run_ops(d, dops)?;
            }
        }
        if let Some(at) = skip_at {
            let skip = journal::encode_header(self.jid, at, &[], true);
            ops.push(IoOp::Write {
                fua: false,
                offset: self.jphys(at),
                buf: Arc::new(DmaBuf::copy_from(&skip)),
            });
        }
        let header = journal::encode_header(self.jid, lpos, records, false);
        let mut bufs: Vec<Arc<DmaBuf>> = vec![Arc::new(DmaBuf::copy_from(&header))];
        bufs.extend(data);
        let bytes: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        // Split only to respect the per-request buffer limit.
        let mut off = self.jphys(lpos);
        for part in bufs.chunks(1024) {
            let n: u64 = part.iter().map(|b| b.len() as u64).sum();
            ops.push(IoOp::Writev {
                fua: false,
                offset: off,
                bufs: part.to_vec(),
            });
            off += n;
        }
        self.sh.journal_writes.fetch_add(1, Ordering::AcqRel);
        let r = self.sh.run_ops(0, ops);
        self.sh.journal_writes.fetch_sub(1, Ordering::AcqRel);
        r?;
        self.sh.journal_bytes.fetch_add(
            bytes + if skip_at.is_some() { BS } else { 0 },
            Ordering::Relaxed,
        );
        // One flush makes the batch and the direct data its mappings point to
        // stable. (A FUA/RWF_DSYNC journal write would save a round trip on
        // devices with native FUA; on a file in ext4 it costs a journal
        // commit per write and measured 3-5x slower than write + fdatasync.)
        self.sh.flush(1 | devices_of(records))
    }

    // ----- the home writer ---------------------------------------------------

    fn home_writer(self: &Arc<Self>) {
        let mut deferred: Vec<((u64, u64), u64)> = Vec::new();
        loop {
            self.home_ev.reset();
            let mut picked: Vec<HomeWrite> = Vec::new();
            {
                let mut st = self.st();
                // It outlives the committer, whose last batches may still
                // queue blocks to write home.
                if st.failed.is_some()
                    || (st.stop
                        && st.committer_done
                        && st.home_queue.is_empty()
                        && st.home_inflight == 0)
                {
                    return;
                }
                // Write-back is deferred: journaled blocks stay in memory
                // until a quarter of the journal holds them, or a checkpoint
                // needs them home, and then go out in large sorted rounds.
                // Until then a block overwritten again costs one home write,
                // and the foreground's group commits do not queue behind a
                // stream of small random writes.
                if !st.home_draining
                    && (st.stop
                        || st.ckpt_job.is_some()
                        || st.cache.len() as u64 >= self.jblocks() / 4)
                {
                    st.home_draining = true;
                }
                if !st.home_draining {
                    drop(st);
                    self.home_done_ev.set();
                    self.home_ev.wait();
                    continue;
                }
                while picked.len() < 256 {
                    let Some((key, version)) = st.home_queue.pop_front() else {
                        break;
                    };
                    let Some(d) = st.cache.get_mut(&key) else {
                        continue;
                    };
                    if d.version != version || !d.durable {
                        continue; // superseded: its newer version is queued itself
                    }
                    if d.inflight {
                        deferred.push((key, version));
                        continue;
                    }
                    d.inflight = true;
                    picked.push(HomeWrite {
                        key,
                        version,
                        home: d.pba,
                        buf: d.buf.clone(),
                        moved: d.moved,
                    });
                }
                st.home_inflight += picked.len();
            }
            if picked.is_empty() {
                let mut st = self.st();
                if st.home_queue.is_empty() && deferred.is_empty() {
                    st.home_draining = false;
                }
                if st.stop && st.committer_done {
                    continue; // stale entries were all that was left: re-check the exit
                }
                drop(st);
                self.home_done_ev.set();
                self.home_ev.wait();
                continue;
            }
            let (result, written) = match self.relocate(&mut picked) {
                Some(r) => (r, picked.len()),
                None => (
                    self.write_in_place(&mut picked),
                    picked.iter().filter(|h| !h.moved).count(),
                ),
            };
            self.sh
                .home_bytes
                .fetch_add(written as u64 * BS, Ordering::Relaxed);
            {
                let mut st = self.st();
                st.home_inflight -= picked.len();
                for h in &picked {
                    if let Some(d) = st.cache.get_mut(&h.key) {
                        if d.version == h.version {
                            if result.is_ok() {
                                st.cache.remove(&h.key);
                            }
                        } else {
                            d.inflight = false;
                        }
                    }
                }
                st.home_queue.extend(deferred.drain(..));
            }
            if let Err(e) = result {
                self.fail(&e);
                return;
            }
            self.home_done_ev.set();
        }
    }

    /// Writes a round of home writes to newly allocated, contiguous blocks
    /// in logical order (one large sequential write instead of many small
    /// random ones, which on a shared device is what slows group commits),
    /// then commits their new mapping ahead of other queued operations and
    /// waits until it is durable. Returns `None` when the round should be
    /// written in place instead: relocation is off, free space is short
    /// (relocation frees the old blocks only at the next checkpoint), the
    /// store is stopping, or the committer declined it for lack of journal
    /// room.
    fn relocate(&self, picked: &mut [HomeWrite]) -> Option<Result<(), StoreError>> {
        if !self.sh.opts.relocate_home {
            return None;
        }
        let n = picked.len() as u64;
        let runs = {
            let mut a = self.sh.alloc();
            if a.free_blocks() < n + a.total_blocks() / 8 {
                return None;
            }
            // Only into one free run: a round split over scattered holes is
            // random writes again, and scatters the data further. Except
            // the cleaner's own rounds: when free space is all holes, moving
            // blocks into the fullest segments' holes is how it empties
            // segments at all.
            match a.alloc_run(n) {
                Some(p) => vec![(p, n)],
                None if picked.iter().all(|h| h.moved) => a.alloc_holes(n)?,
                None => return None,
            }
        };
        picked.sort_by_key(|h| h.key);
        let bufs: Vec<Arc<DmaBuf>> = picked.iter().map(|h| h.buf.clone()).collect();
        if let Err(e) = self.sh.write_runs(&runs, &bufs) {
            return Some(Err(e));
        }
        let homes = runs
            .iter()
            .flat_map(|&(p, cnt)| (0..cnt).map(move |j| p.plus(j)));
        let items: Vec<Relocation> = picked
            .iter()
            .zip(homes)
            .map(|(h, p)| (h.key, h.version, p))
            .collect();
        let taken = Arc::new(AtomicBool::new(false));
        let c = Completion::new();
        {
            let mut st = self.st();
            if st.stop {
                // The committer may already be gone.
                drop(st);
                self.sh.free_runs(&runs);
                return None;
            }
            st.pending.push_front(PendingOp {
                id: 0,
                kind: OpKind::Relocate {
                    items,
                    taken: taken.clone(),
                },
                done: vec![c.clone()],
            });
        }
        self.commit_ev.set();
        if let Err(e) = c.wait() {
            return Some(Err(e));
        }
        if !taken.load(Ordering::Acquire) {
            return None;
        }
        let moved = picked.iter().filter(|h| h.moved).count() as u64;
        self.sh
            .relocated_blocks
            .fetch_add(n - moved, Ordering::Relaxed);
        Some(Ok(()))
    }

    /// Writes a round of home writes in place, sorted, merging blocks that
    /// are consecutive on the device.
    fn write_in_place(&self, picked: &mut [HomeWrite]) -> Result<(), StoreError> {
        picked.sort_by_key(|h| h.home);
        // Moved blocks (the cleaner's) are home already.
        let per_dev = self
            .sh
            .block_writes(picked.iter().filter(|h| !h.moved).map(|h| (h.home, &h.buf)));
        let mut result = Ok(());
        for (d, ops) in per_dev.into_iter().enumerate() {
            if !ops.is_empty() {
                if let Err(e) = self.sh.run_ops(d, ops) {
                    result = Err(e);
                }
            }
        }
        result
    }

    // ----- the checkpointer --------------------------------------------------

    fn checkpointer(self: &Arc<Self>) {
        loop {
            self.ckpt_ev.reset();
            let job = {
                let mut st = self.st();
                if st.failed.is_some() {
                    let waiters: Vec<_> = st.ckpt_job.take().map(|j| j.waiters).unwrap_or_default();
                    let r = st.failed.clone().unwrap_or_default();
                    let stop = st.stop;
                    drop(st);
                    let e = StoreError::Failed {
                        worker: self.id,
                        reason: r,
                    };
                    waiters.iter().for_each(|c| c.complete(Err(e.clone())));
                    if stop {
                        return;
                    }
                    self.ckpt_ev.wait();
                    continue;
                }
                match &st.ckpt_job {
                    Some(j) => (j.journal_lpos, j.image.clone()),
                    None => {
                        if st.stop && st.committer_done {
                            return;
                        }
                        drop(st);
                        self.ckpt_ev.wait();
                        continue;
                    }
                }
            };
            let r = self.write_checkpoint(job.0, job.1);
            let waiters = {
                let mut st = self.st();
                let j = st.ckpt_job.take();
                if let Ok(seq) = r {
                    st.ckpt_seq = seq;
                    st.head = job.0;
                    let (release, keep): (Vec<_>, Vec<_>) = st
                        .quarantine
                        .drain(..)
                        .partition(|(after, _)| *after <= job.0);
                    st.quarantine = keep;
                    let mut a = self.sh.alloc();
                    release.into_iter().for_each(|(_, p)| a.free(p));
                }
                j.map(|j| j.waiters).unwrap_or_default()
            };
            match r {
                Ok(_) => {
                    self.sh.checkpoints.fetch_add(1, Ordering::Relaxed);
                    waiters.iter().for_each(|c| c.complete(Ok(())));
                }
                Err(e) => {
                    self.fail(&e);
                    waiters.iter().for_each(|c| c.complete(Err(e.clone())));
                }
            }
            // Journal space was freed: the committer may be waiting for it.
            self.commit_ev.set();
        }
    }

    /// Waits until everything journaled before `jpos` is home, then writes
    /// the snapshot to the older slot; returns its sequence number.
    fn write_checkpoint(&self, jpos: u64, image: Vec<u8>) -> Result<u64, StoreError> {
        loop {
            self.home_done_ev.reset();
            let (pending, failed) = {
                let st = self.st();
                let p = st.home_inflight > 0 || st.cache.values().any(|d| d.lpos < jpos);
                (p, st.failed.clone())
            };
            if let Some(r) = failed {
                return Err(StoreError::Failed {
                    worker: self.id,
                    reason: r,
                });
            }
            if !pending {
                break;
            }
            self.home_ev.set();
            self.home_done_ev.wait();
        }
        // Home blocks must be stable before the journal copies are dropped.
        self.sh.flush(self.sh.all_devices())?;
        let seq = self.st().ckpt_seq + 1;
        let cap = self.sh.sb.ckpt_blocks * BS;
        if image.len() as u64 > cap {
            return Err(StoreError::NoMetadataSpace {
                extent: 0,
                capacity: cap,
            });
        }
        let base = self.sh.sb.ckpt_slot(self.id, (seq % 2) as usize) * BS;
        let mut ops = Vec::new();
        for (i, part) in image.chunks(1 << 20).enumerate() {
            ops.push(IoOp::Write {
                fua: false,
                offset: base + (i as u64) * (1 << 20),
                buf: Arc::new(DmaBuf::copy_from(part)),
            });
        }
        self.sh.run_ops(0, ops)?;
        self.sh.flush(1)?;
        self.sh
            .checkpoint_bytes
            .fetch_add(image.len() as u64, Ordering::Relaxed);
        Ok(seq)
    }
}

/// Stops watching the blocks a record touches (see `WState::clean_watch`).
/// The watch holds at most one cleaner step, so this walks the watch, not
/// the record's range (an unmap may cover a whole extent).
fn unwatch(watch: &mut HashSet<(u64, u64)>, r: &Record) {
    if watch.is_empty() {
        return;
    }
    let (id, blocks) = match r {
        Record::JWrite {
            id,
            lblock,
            entries,
        } => (*id, *lblock..lblock + entries.len() as u64),
        Record::Map {
            id, lblock, crcs, ..
        } => (*id, *lblock..lblock + crcs.len() as u64),
        Record::Unmap { id, lblock, count } => (*id, *lblock..lblock + count),
        Record::Delete { id } | Record::Create { id, .. } => (*id, 0..u64::MAX),
        Record::SetGen { .. } => return,
    };
    watch.retain(|k| k.0 != id || !blocks.contains(&k.1));
}

/// The devices holding direct data that `records` map (bit d = device d).
fn devices_of(records: &[Record]) -> u64 {
    records
        .iter()
        .map(|r| match r {
            Record::Map { pba, .. } => 1u64 << pba.device(),
            _ => 0,
        })
        .fold(0, |a, b| a | b)
}

/// Journal data blocks and record bytes an operation will need (an upper
/// bound of the encoded size).
fn op_cost(op: &PendingOp) -> (u64, u64) {
    match &op.kind {
        OpKind::JWrite { bufs, .. } => (bufs.len() as u64, jwrite_record_bytes(bufs.len() as u64)),
        // Counted as if journaled: the batch's data stays within
        // `max_batch_bytes` either way.
        OpKind::LWrite { bufs, runs, .. } => (
            bufs.len() as u64,
            40 * runs.len() as u64 + 4 * bufs.len() as u64,
        ),
        OpKind::Map { runs, crcs, .. } => (0, 40 * runs.len() as u64 + 4 * crcs.len() as u64),
        // At most one Map record per block (neighbours share one).
        OpKind::Relocate { items, .. } => (0, 40 * items.len() as u64),
        _ => (0, 40),
    }
}

/// Record bytes of a journaled write of `n` blocks (an upper bound).
fn jwrite_record_bytes(n: u64) -> u64 {
    32 + 12 * n
}

/// Journal blocks of a batch with this much data and records.
fn op_blocks_total(data: u64, record_bytes: u64) -> u64 {
    data + (record_bytes + 128).div_ceil(BS)
}

/// Journal blocks a batch of `op` alone (plus `extra` data blocks) takes.
fn op_blocks(op: &PendingOp, extra: u64) -> u64 {
    let (d, r) = op_cost(op);
    op_blocks_total(d + extra, r)
}

/// A home write being issued.
struct HomeWrite {
    /// (extent, block).
    key: (u64, u64),
    /// The dirty-cache version copied.
    version: u64,
    /// Where the block lives now (written here when in place).
    home: Pba,
    buf: Arc<DmaBuf>,
    /// Put in the cache by the cleaner (`Dirty::moved`).
    moved: bool,
}

/// A batch being assembled by the committer.
#[derive(Default)]
struct Batch {
    records: Vec<Record>,
    data: Vec<Arc<DmaBuf>>,
    done: Vec<Arc<Completion>>,
    rejected: Vec<(Arc<Completion>, StoreError)>,
    dirty: Vec<((u64, u64), u64)>,
    /// Logged writes' cache entries, dropped once the batch is durable.
    logged: Vec<((u64, u64), u64)>,
    /// Logged writes' blocks: where each goes, and its data.
    log: Vec<(Pba, Arc<DmaBuf>)>,
    freed: Vec<Pba>,
    lpos: u64,
    blocks: u64,
    skip_at: Option<u64>,
}

/// `data` as one DMA buffer per 4 KiB block, with each block's crc32c. A
/// short last chunk stays short: the write's range check rejects it.
///
/// A write that fills one of the DMA pool's size classes exactly (a power
/// of two from 8 KiB to 4 MiB) is copied into one buffer cut into blocks,
/// so that device requests over its blocks are one contiguous piece of
/// memory rather than one scatter-gather segment per block (on a
/// virtio-blk disk without indirect descriptors, 32 segments per 128 KiB
/// write let only 7 requests into its queue at once). Other lengths get a
/// buffer per block: one buffer would be rounded up to the next size class.
/// A block of a one-piece write that stays in the write-back cache keeps
/// the whole buffer (the write's own size, no more) until the last of its
/// blocks leaves the cache.
pub(crate) fn copy_blocks(data: &[u8]) -> (Vec<Arc<DmaBuf>>, Vec<u32>) {
    let bs = BS as usize;
    let crcs: Vec<u32> = data.chunks(bs).map(crc32c::crc32c).collect();
    let bufs = if data.len() > bs && is_one_piece(data.len()) {
        DmaBuf::copy_from(data)
            .split(bs)
            .into_iter()
            .map(Arc::new)
            .collect()
    } else {
        data.chunks(bs)
            .map(|c| Arc::new(DmaBuf::copy_from(c)))
            .collect()
    };
    (bufs, crcs)
}

/// Whether a write of `len` bytes fills one DMA size class exactly (a
/// power of two from 4 KiB to 4 MiB, the pool's largest class): its blocks
/// may then share one buffer with nothing wasted.
fn is_one_piece(len: usize) -> bool {
    len >= BS as usize && len.is_power_of_two() && len <= 4 << 20
}

/// `data`'s blocks as read-only parts of it, with their crc32c, when it
/// is the shape [`copy_blocks`] would copy into one piece (or one block);
/// `None` otherwise.
pub(crate) fn share_blocks(data: &Arc<DmaBuf>) -> Option<(Vec<Arc<DmaBuf>>, Vec<u32>)> {
    let bs = BS as usize;
    if !is_one_piece(data.len()) {
        return None;
    }
    let crcs = data.as_slice().chunks(bs).map(crc32c::crc32c).collect();
    let bufs = DmaBuf::shared_parts(data, bs)
        .into_iter()
        .map(Arc::new)
        .collect();
    Some((bufs, crcs))
}
