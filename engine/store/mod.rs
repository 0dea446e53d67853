//! The chunk store: extents on raw devices, with a crc32c per 4 KiB block,
//! per-worker journals with group commit, checkpoints and crash recovery.
//!
//! # Shape
//! Extents are hashed to *workers*; worker `w` has journal `w` and runs on
//! reactor `w % reactors`. Every call hops to the extent's worker (the
//! calling coroutine migrates there and back), so callers may be on any
//! reactor; called from a plain thread, the call runs in a coroutine on
//! that reactor and the thread blocks.
//!
//! - Small or random writes: data and mapping go into the worker's journal,
//!   one device flush per batch of concurrent writes; the committed blocks
//!   stay in memory and are written home later in sorted rounds, and the
//!   journal is trimmed by checkpoints.
//! - Large writes (≥ [`StoreOptions::direct_write_min`]) and sequential
//!   streams: data straight to newly allocated blocks, only the mapping
//!   journaled. A recognised stream's small writes are held while others
//!   are in flight, merged, written in 1 MiB pieces as the stream fills,
//!   and mapped with one record (see [`pattern`]).
//! - A write returns once it is durable; reads check every block's crc32c
//!   and never return data that fails it ([`StoreError::Checksum`]).
//!
//! Offsets and lengths are multiples of 4 KiB: a volume with 512-byte
//! blocks does read-modify-write above this layer.
//!
//! The on-disk layout is in [`superblock`], the journal in [`journal`],
//! checkpoints in [`checkpoint`], what open does after a crash in
//! [`recovery`].

pub mod allocator;
pub mod checkpoint;
mod codec;
mod error;
pub mod extent;
pub mod fuzzing;
pub mod journal;
pub mod pattern;
pub mod recovery;
pub mod superblock;
mod worker;

pub use error::StoreError;

use crate::bdev::{self, Backend, BlockDevice, DeviceStatsSnapshot, DmaBuf, IoOp, BLOCK_SIZE};
use crate::rt;
use allocator::Allocator;
use extent::Extent;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use superblock::{SbError, Superblock, FORMAT_VERSION};
use worker::{Shared, Worker, WorkerInit};

const BS: u64 = BLOCK_SIZE;

/// How a store is formatted and run.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Largest extent (default 256 MiB).
    pub extent_size_max: u64,
    /// Workers, one journal each (fixed at format; open uses the format's).
    pub workers: usize,
    /// Bytes of each worker's journal (default 64 MiB).
    pub journal_size: u64,
    /// Bytes of each checkpoint slot; 0 sizes it for the worst case of a
    /// full store mapped by one worker.
    pub checkpoint_size: u64,
    /// Device backend.
    pub backend: Backend,
    /// Format over a device that holds something (another store, another
    /// format, data). Off, format refuses.
    pub wipe: bool,
    /// Writes at least this large go straight to new blocks (default 64 KiB).
    pub direct_write_min: u64,
    /// A held stream is written once it reaches this size (default 4 MiB:
    /// 32 writes of 128 KiB become one device write and one mapping batch).
    pub merge_max: u64,
    /// How long a stream's writes may be held (default 200 µs).
    pub hold_timeout: Duration,
    /// While a held stream fills, each piece of this size goes to newly
    /// allocated blocks at once, so that the device writes the first
    /// writes' data while the later writers are still copying theirs in;
    /// the stream is still committed with one mapping when it is written
    /// (default 1 MiB; 0 writes the stream only when it is complete).
    pub stream_piece: u64,
    /// Largest journal batch (default 4 MiB).
    pub max_batch_bytes: u64,
    /// Quarantined (freed, not yet reusable) bytes per worker that trigger
    /// a checkpoint (default 1 GiB), or a quarter of the free space shared
    /// among the workers if that is less.
    pub quarantine_max: u64,
    /// Write journaled blocks home to newly allocated, contiguous blocks
    /// (their mapping journaled) instead of in place, while at least an
    /// eighth of the store is free. Default true: relocation raises
    /// random-write IOPS and scatters the data and the free space, which
    /// the cleaner puts back in order while the worker is idle (see the
    /// store README, *Write home* and *Cleaner*). False: in place.
    pub relocate_home: bool,
    /// Small writes (journal mode) go to newly allocated blocks, written
    /// with the batch that maps them, instead of into the journal and home
    /// later: written once (see the store README, *Small writes: logged*).
    /// The cleaner puts the scattered layout back in order while idle.
    /// Only with `relocate_home` (the cleaner moves blocks by relocation).
    /// Default true; false journals them (then in place or relocated, as
    /// `relocate_home` says).
    pub log_small_writes: bool,
    /// With `relocate_home`: how long a worker must have served no reads
    /// or writes before its cleaner moves blocks (see the store README,
    /// *Cleaner*). `None`: no cleaner. `Some(ZERO)`: it cleans while the
    /// worker is busy too (the tests use this to race it with writes).
    /// Default 200 ms.
    pub clean_idle: Option<Duration>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            extent_size_max: 256 << 20,
            workers: 1,
            journal_size: 64 << 20,
            checkpoint_size: 0,
            backend: Backend::Uring,
            wipe: false,
            direct_write_min: 64 << 10,
            merge_max: 4 << 20,
            hold_timeout: Duration::from_micros(200),
            stream_piece: 1 << 20,
            max_batch_bytes: 4 << 20,
            quarantine_max: 1 << 30,
            relocate_home: true,
            log_small_writes: true,
            clean_idle: Some(Duration::from_millis(200)),
        }
    }
}

/// One extent, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentInfo {
    pub id: u64,
    pub size: u64,
    /// Bytes with a physical block (written and not unmapped).
    pub allocated: u64,
    pub generation: u64,
}

/// One device's counters.
#[derive(Clone, Debug)]
pub struct DeviceUsage {
    pub name: String,
    pub stats: DeviceStatsSnapshot,
}

/// The store's counters.
#[derive(Clone, Debug, Default)]
pub struct StoreStats {
    pub user_bytes_written: u64,
    pub user_bytes_read: u64,
    pub devices: Vec<DeviceUsage>,
    /// Sums over the devices.
    pub device_bytes_written: u64,
    pub device_bytes_read: u64,
    pub flushes: u64,
    /// Device bytes by purpose.
    pub journal_bytes: u64,
    pub home_bytes: u64,
    pub direct_bytes: u64,
    pub checkpoint_bytes: u64,
    pub checksum_errors: u64,
    pub batches: u64,
    pub checkpoints: u64,
    /// Sequential-stream writes that were held and merged, and the streams
    /// they were merged into (each mapped with one record).
    pub held_writes: u64,
    pub merged_writes: u64,
    /// Pieces of held streams written while the streams still filled
    /// (`stream_piece`).
    pub stream_pieces: u64,
    /// Journaled blocks written home to new blocks instead of in place.
    pub relocated_blocks: u64,
    /// Blocks of small writes written once to new blocks with their batch
    /// (`log_small_writes`; their bytes count in `direct_bytes`).
    pub logged_blocks: u64,
    /// Blocks the cleaner moved (to empty segments or to put an extent's
    /// blocks in logical order), and segments (4 MiB of data area) with no
    /// block in use.
    pub cleaned_blocks: u64,
    pub free_segments: u64,
    /// Journaled blocks not yet home, quarantined blocks, journal blocks in use.
    pub dirty_blocks: u64,
    pub quarantined_blocks: u64,
    pub journal_used_blocks: u64,
    /// Device bytes written / user bytes written (0 before any write).
    pub write_amplification: f64,
}

struct Inner {
    sh: Arc<Shared>,
    workers: Vec<Arc<Worker>>,
}

/// A chunk store on one or more devices.
pub struct ChunkStore {
    inner: Arc<Inner>,
}

fn open_devices(
    devices: &[PathBuf],
    backend: Backend,
) -> Result<Vec<Arc<dyn BlockDevice>>, StoreError> {
    if devices.is_empty() || devices.len() > 64 {
        return Err(StoreError::Invalid(format!(
            "a store needs 1 to 64 devices, not {}",
            devices.len()
        )));
    }
    devices
        .iter()
        .map(|p| {
            bdev::open(p, backend).map_err(|e| StoreError::Io {
                device: p.display().to_string(),
                offset: 0,
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Writes zeros over `len` bytes at `offset` (both multiples of 4 KiB),
/// 1 MiB per request, 32 requests per submission; no flush (the format's
/// metadata flush follows).
fn zero_fill(dev: &Arc<dyn BlockDevice>, offset: u64, len: u64) -> Result<(), StoreError> {
    const CHUNK: u64 = 1 << 20;
    let full = Arc::new(DmaBuf::zeroed(CHUNK as usize));
    let mut ops = Vec::new();
    let mut off = offset;
    let end = offset + len;
    while off < end {
        let n = CHUNK.min(end - off);
        let buf = if n == CHUNK {
            full.clone()
        } else {
            Arc::new(DmaBuf::zeroed(n as usize))
        };
        ops.push(IoOp::Write {
            fua: false,
            offset: off,
            buf,
        });
        off += n;
        if ops.len() == 32 || off >= end {
            dev_io(dev, std::mem::take(&mut ops))?;
        }
    }
    Ok(())
}

fn dev_io(dev: &Arc<dyn BlockDevice>, ops: Vec<IoOp>) -> Result<Vec<IoOp>, StoreError> {
    let mut out = Vec::new();
    for d in dev.submit(ops) {
        if let Err(e) = &d.result {
            return Err(StoreError::io(
                &dev.info().name,
                d.op.range().map_or(0, |r| r.0),
                e,
            ));
        }
        out.push(d.op);
    }
    Ok(out)
}

fn dev_read(dev: &Arc<dyn BlockDevice>, block: u64, n: u64) -> Result<DmaBuf, StoreError> {
    let ops = dev_io(
        dev,
        vec![IoOp::Read {
            offset: block * BS,
            buf: DmaBuf::new((n * BS) as usize),
        }],
    )?;
    match ops.into_iter().next() {
        Some(IoOp::Read { buf, .. }) => Ok(buf),
        _ => unreachable!("a read comes back as a read"),
    }
}

fn new_uuid() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut v = 0u128;
    for i in 0..2u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        v = (v << 64) | h.finish() as u128;
    }
    v | 1
}

/// Why a device's first blocks make `format` stop (None: free to format).
fn occupied(dev: &Arc<dyn BlockDevice>) -> Result<Option<String>, StoreError> {
    let n = (dev.info().size / BS).min(16);
    let b = dev_read(dev, 0, n)?;
    for copy in 0..2usize.min(n as usize) {
        let blk = &b.as_slice()[copy * BS as usize..(copy + 1) * BS as usize];
        match Superblock::decode(blk) {
            Ok(_) => {
                return Ok(Some(format!(
                    "already holds a Ferrite store (format version {FORMAT_VERSION})"
                )))
            }
            Err(SbError::Version(v)) => {
                return Ok(Some(format!("holds a Ferrite store of format version {v}")))
            }
            Err(SbError::Damaged) => return Ok(Some("holds a damaged Ferrite superblock".into())),
            Err(_) => {}
        }
    }
    if b.as_slice().iter().any(|&x| x != 0) {
        return Ok(Some("holds other data (not a Ferrite store)".into()));
    }
    Ok(None)
}

fn read_superblock(dev: &Arc<dyn BlockDevice>) -> Result<Superblock, StoreError> {
    let name = dev.info().name.clone();
    let b = dev_read(dev, 0, 2)?;
    let a = Superblock::decode(&b.as_slice()[..BS as usize]);
    let c = Superblock::decode(&b.as_slice()[BS as usize..]);
    let err = |reason: String| StoreError::Format {
        device: name.clone(),
        reason,
    };
    match (a, c) {
        (Ok(sb), _) | (_, Ok(sb)) => Ok(sb),
        (Err(SbError::Version(v)), _) | (_, Err(SbError::Version(v))) => Err(err(format!(
            "Ferrite store of format version {v}; this build reads version {FORMAT_VERSION}"
        ))),
        (Err(SbError::Damaged), Err(SbError::Damaged)) => {
            Err(err("both superblock copies are damaged".into()))
        }
        (Err(SbError::Blank), Err(SbError::Blank)) => {
            Err(err("not formatted (blank superblocks)".into()))
        }
        _ => Err(err("not a Ferrite store".into())),
    }
}

fn worker_of(id: u64, workers: usize) -> usize {
    ((id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % workers as u64) as usize
}

/// Takes a checkpoint on every worker: releases quarantined blocks (used
/// when an allocation finds too little space).
pub(crate) fn reclaim(sh: &Shared) {
    let Some(ws) = sh.workers.get() else { return };
    for w in ws.iter().filter_map(Weak::upgrade) {
        if let Err(e) = w.checkpoint() {
            log::warn!("reclaim: checkpoint of worker {} failed: {e}", w.id);
        }
    }
}

impl ChunkStore {
    /// Formats `devices` as one store. Refuses a device that holds anything
    /// (a Ferrite store of any version, another format, data in its first
    /// 64 KiB) unless `opts.wipe`.
    pub fn format(devices: &[PathBuf], opts: &StoreOptions) -> Result<(), StoreError> {
        if opts.workers == 0 || opts.workers > 256 {
            return Err(StoreError::Invalid(format!(
                "workers must be 1..=256, not {}",
                opts.workers
            )));
        }
        if opts.extent_size_max == 0
            || opts.extent_size_max % BS != 0
            || opts.extent_size_max > superblock::EXTENT_SIZE_LIMIT
        {
            return Err(StoreError::Invalid(format!(
                "extent_size_max must be a non-zero multiple of 4 KiB, at most {} GiB",
                superblock::EXTENT_SIZE_LIMIT >> 30
            )));
        }
        let jb = opts.journal_size / BS;
        if jb < 256 {
            return Err(StoreError::Invalid(
                "journal_size must be at least 1 MiB".into(),
            ));
        }
        let devs = open_devices(devices, opts.backend)?;
        if !opts.wipe {
            for d in &devs {
                if let Some(why) = occupied(d)? {
                    return Err(StoreError::Format {
                        device: d.info().name.clone(),
                        reason: format!("{why}; refusing to format it without wipe"),
                    });
                }
            }
        }
        let w = opts.workers as u64;
        let total: u64 = devs.iter().map(|d| d.info().size / BS).sum();
        let cb = if opts.checkpoint_size > 0 {
            opts.checkpoint_size.div_ceil(BS) + 1
        } else {
            // 24 bytes per mapped block (worst case: isolated blocks, each its
            // own run), plus room
            // for extent headers.
            (24 * total + (1 << 20)).div_ceil(BS) + 1
        };
        let align = 256; // data areas start on a 1 MiB boundary
        let journal_start = 2;
        let ckpt_start = journal_start + w * jb;
        let data0 = (ckpt_start + 2 * w * cb).div_ceil(align) * align;
        let uuid = new_uuid();
        for (i, d) in devs.iter().enumerate() {
            let blocks = d.info().size / BS;
            let start = if i == 0 { data0 } else { align };
            if blocks < start + align {
                return Err(StoreError::Format {
                    device: d.info().name.clone(),
                    reason: format!(
                        "too small: {} bytes, the layout needs more than {} (journals {} MiB, checkpoints {} MiB)",
                        blocks * BS,
                        (start + align) * BS,
                        (w * jb * BS) >> 20,
                        (2 * w * cb * BS) >> 20
                    ),
                });
            }
        }
        let sb_of = |i: usize, d: &Arc<dyn BlockDevice>| Superblock {
            version: FORMAT_VERSION,
            uuid,
            device_index: i as u32,
            device_count: devs.len() as u32,
            device_blocks: d.info().size / BS,
            workers: w as u32,
            journal_blocks: jb,
            ckpt_blocks: cb,
            extent_size_max: opts.extent_size_max,
            journal_start,
            ckpt_start,
            data_start: if i == 0 { data0 } else { align },
        };
        // On a regular file the journal regions are holes until first
        // written, and every group commit into a hole makes the file system
        // allocate blocks and commit its own journal at the batch's flush:
        // 4 KiB QD1 writes took about twice as long (~290 us against ~155
        // us at p50 on ext4) until each journal had wrapped once. Writing
        // the regions once here makes journal writes plain overwrites from
        // the start. (Zeros are no valid journal header.)
        if std::fs::metadata(&devices[0]).is_ok_and(|m| m.file_type().is_file()) {
            zero_fill(&devs[0], journal_start * BS, w * jb * BS)?;
        }
        // Metadata first, superblocks last: a format cut short leaves no
        // valid superblock behind.
        let sb0 = sb_of(0, &devs[0]);
        let mut ops = Vec::new();
        let zero = Arc::new(DmaBuf::zeroed(BS as usize));
        for wk in 0..opts.workers {
            ops.push(IoOp::Write {
                fua: false,
                offset: sb0.journal_of(wk) * BS,
                buf: zero.clone(),
            });
            let jid = journal::JournalId {
                uuid,
                worker: wk as u32,
            };
            let img = checkpoint::encode(jid, 0, 0, &HashMap::new());
            ops.push(IoOp::Write {
                fua: false,
                offset: sb0.ckpt_slot(wk, 0) * BS,
                buf: Arc::new(DmaBuf::copy_from(&img)),
            });
            ops.push(IoOp::Write {
                fua: false,
                offset: sb0.ckpt_slot(wk, 1) * BS,
                buf: zero.clone(),
            });
        }
        ops.push(IoOp::Flush);
        dev_io(&devs[0], ops)?;
        for (i, d) in devs.iter().enumerate() {
            let img = Arc::new(DmaBuf::copy_from(&sb_of(i, d).encode()));
            dev_io(
                d,
                vec![
                    IoOp::Write {
                        fua: false,
                        offset: 0,
                        buf: img.clone(),
                    },
                    IoOp::Write {
                        fua: false,
                        offset: BS,
                        buf: img,
                    },
                    IoOp::Flush,
                ],
            )?;
        }
        log::info!(
            "formatted a store on {} device(s): {} workers, journals of {} MiB, checkpoint slots of {} MiB",
            devs.len(),
            w,
            (jb * BS) >> 20,
            (cb * BS) >> 20
        );
        Ok(())
    }

    /// Opens a formatted store: validates the superblocks, recovers every
    /// worker (checkpoint + journal replay, see [`recovery`]) and starts the
    /// workers on `rt`'s reactors.
    pub fn open(
        devices: &[PathBuf],
        opts: &StoreOptions,
        rt: &rt::Handle,
    ) -> Result<Arc<ChunkStore>, StoreError> {
        let devs = open_devices(devices, opts.backend)?;
        let mut found: Vec<(Superblock, Arc<dyn BlockDevice>)> = Vec::new();
        for d in &devs {
            found.push((read_superblock(d)?, d.clone()));
        }
        found.sort_by_key(|(sb, _)| sb.device_index);
        let sb0 = found[0].0.clone();
        for (i, (sb, d)) in found.iter().enumerate() {
            let name = d.info().name.clone();
            let bad = |reason: String| {
                Err(StoreError::Format {
                    device: name.clone(),
                    reason,
                })
            };
            if sb.uuid != sb0.uuid {
                return bad("belongs to another store (uuid differs)".into());
            }
            if sb.device_index as usize != i || sb.device_count as usize != devs.len() {
                return bad(format!(
                    "is device {} of {}, but {} device(s) were given",
                    sb.device_index,
                    sb.device_count,
                    devs.len()
                ));
            }
            if sb.device_blocks * BS > d.info().size {
                return bad(format!(
                    "shrank: formatted with {} bytes, now {}",
                    sb.device_blocks * BS,
                    d.info().size
                ));
            }
        }
        if opts.workers != sb0.workers as usize {
            log::info!(
                "store formatted with {} workers; using that (options asked for {})",
                sb0.workers,
                opts.workers
            );
        }
        let areas: Vec<(u64, u64)> = found
            .iter()
            .map(|(sb, _)| (sb.data_start, sb.device_blocks - sb.data_start))
            .collect();
        let mut opts = opts.clone();
        opts.workers = sb0.workers as usize;
        opts.extent_size_max = sb0.extent_size_max;
        let sh = Arc::new(Shared {
            devices: found.into_iter().map(|(_, d)| d).collect(),
            sb: sb0,
            opts,
            alloc: Mutex::new(Allocator::new(&areas)),
            rt: rt.clone(),
            closed: AtomicBool::new(false),
            user_written: AtomicU64::new(0),
            user_read: AtomicU64::new(0),
            journal_bytes: AtomicU64::new(0),
            home_bytes: AtomicU64::new(0),
            direct_bytes: AtomicU64::new(0),
            logged_blocks: AtomicU64::new(0),
            checkpoint_bytes: AtomicU64::new(0),
            checksum_errors: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            held_writes: AtomicU64::new(0),
            merged_writes: AtomicU64::new(0),
            stream_pieces: AtomicU64::new(0),
            relocated_blocks: AtomicU64::new(0),
            cleaned_blocks: AtomicU64::new(0),
            workers: OnceLock::new(),
            flush_gates: (0..devs.len()).map(|_| Default::default()).collect(),
            journal_writes: std::sync::atomic::AtomicUsize::new(0),
        });
        let nw = sh.opts.workers;
        let mut inits: Vec<WorkerInit> = Vec::with_capacity(nw);
        for w in 0..nw {
            inits.push(recovery::recover_worker(&sh, w)?);
        }
        {
            let mut a = sh.alloc();
            let mut conflicts = 0u64;
            for init in &inits {
                for x in init.extents.values() {
                    for (_, e) in x.iter_mapped() {
                        if !a.mark_used(e.pba) {
                            conflicts += 1;
                        }
                    }
                }
            }
            if conflicts > 0 {
                log::error!(
                    "open: {conflicts} mapped blocks are outside the data area or mapped twice"
                );
            }
        }
        let reactors = rt.reactor_count().max(1);
        let workers: Vec<Arc<Worker>> = inits
            .into_iter()
            .enumerate()
            .map(|(w, init)| Worker::new(w, w % reactors, sh.clone(), init))
            .collect();
        let _ = sh.workers.set(workers.iter().map(Arc::downgrade).collect());
        for w in &workers {
            w.start();
        }
        Ok(Arc::new(ChunkStore {
            inner: Arc::new(Inner { sh, workers }),
        }))
    }

    /// The reactor that serves extent `id`: callers that can choose where to
    /// run (a gateway connection, a replication stream) save a hop by
    /// calling from there.
    pub fn reactor_of(&self, id: u64) -> usize {
        self.worker(id).reactor
    }

    fn worker(&self, id: u64) -> &Arc<Worker> {
        &self.inner.workers[worker_of(id, self.inner.workers.len())]
    }

    /// Runs `f` on `w`'s reactor. From a coroutine it migrates there and
    /// back; from a plain thread it spawns a coroutine there and blocks.
    fn on<R: Send + 'static>(
        &self,
        w: &Arc<Worker>,
        f: impl FnOnce(&Arc<Worker>) -> R + Send + 'static,
    ) -> Result<R, StoreError> {
        let w = w.clone();
        self.inner
            .sh
            .rt
            .spawn_on(w.reactor, move || f(&w))
            .join()
            .map_err(|e| StoreError::Invalid(format!("store call panicked: {}", e.message())))
    }

    /// Creates an empty, thin extent of `size` bytes (a multiple of 4 KiB,
    /// at most the extent size of the format).
    pub fn create_extent(&self, id: u64, size: u64) -> Result<(), StoreError> {
        let max = self.inner.sh.opts.extent_size_max;
        if size == 0 || !Extent::size_fits(size, max) {
            return Err(StoreError::BadSize {
                extent: id,
                size,
                max,
            });
        }
        let w = self.worker(id);
        if rt::in_coroutine() {
            rt::migrate::run_on(rt::migrate::Target::Reactor(w.reactor), || {
                w.create(id, size)
            })
        } else {
            self.on(w, move |w| w.create(id, size))?
        }
    }

    /// Writes `data` at `offset` (both multiples of 4 KiB); durable when it
    /// returns Ok.
    pub fn write(&self, id: u64, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let w = self.worker(id);
        // The copy into DMA buffers and the checksums are done here, on the
        // caller's reactor: the worker's reactor is where all writes of its
        // extents meet, and they should not queue behind this CPU work.
        let (bufs, crcs) = worker::copy_blocks(data);
        self.write_blocks(w, id, offset, bufs, crcs)
    }

    /// Hands a write's blocks to their worker, on its reactor.
    fn write_blocks(
        &self,
        w: &Arc<Worker>,
        id: u64,
        offset: u64,
        bufs: Vec<Arc<DmaBuf>>,
        crcs: Vec<u32>,
    ) -> Result<(), StoreError> {
        if rt::in_coroutine() {
            rt::migrate::run_on(rt::migrate::Target::Reactor(w.reactor), || {
                w.write(id, offset, bufs, crcs)
            })
        } else {
            self.on(w, move |w| w.write(id, offset, bufs, crcs))?
        }
    }

    /// [`Self::write`] from a DMA buffer the caller keeps sharing (a
    /// gateway's received payload): its blocks are written and cached as
    /// read-only parts of `data`, without a copy, when `data` is a whole
    /// number of blocks of a DMA size class (a power of two up to 4 MiB).
    /// Other lengths are copied, as `write` does.
    pub fn write_shared(&self, id: u64, offset: u64, data: &Arc<DmaBuf>) -> Result<(), StoreError> {
        let w = self.worker(id);
        let Some((bufs, crcs)) = worker::share_blocks(data) else {
            return self.write(id, offset, data.as_slice());
        };
        self.write_blocks(w, id, offset, bufs, crcs)
    }

    /// Reads into `buf` from `offset` (multiples of 4 KiB). Unwritten blocks
    /// read as zeroes; a block failing its crc32c fails the read.
    pub fn read(&self, id: u64, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        let w = self.worker(id);
        if rt::in_coroutine() {
            rt::migrate::run_on(rt::migrate::Target::Reactor(w.reactor), || {
                w.read(id, offset, buf)
            })
        } else {
            let len = buf.len();
            let data = self.on(w, move |w| {
                let mut v = vec![0u8; len];
                w.read(id, offset, &mut v).map(|_| v)
            })??;
            buf.copy_from_slice(&data);
            Ok(())
        }
    }

    /// Unmaps a range: it reads as zeroes and its blocks are freed.
    pub fn unmap(&self, id: u64, offset: u64, len: u64) -> Result<(), StoreError> {
        let w = self.worker(id);
        if rt::in_coroutine() {
            rt::migrate::run_on(rt::migrate::Target::Reactor(w.reactor), || {
                w.unmap(id, offset, len)
            })
        } else {
            self.on(w, move |w| w.unmap(id, offset, len))?
        }
    }

    /// Deletes an extent and frees its blocks.
    pub fn delete_extent(&self, id: u64) -> Result<(), StoreError> {
        let w = self.worker(id);
        if rt::in_coroutine() {
            rt::migrate::run_on(rt::migrate::Target::Reactor(w.reactor), || w.delete(id))
        } else {
            self.on(w, move |w| w.delete(id))?
        }
    }

    /// Stores the replication generation of an extent durably.
    pub fn set_extent_generation(&self, id: u64, gen: u64) -> Result<(), StoreError> {
        let w = self.worker(id);
        if rt::in_coroutine() {
            rt::migrate::run_on(rt::migrate::Target::Reactor(w.reactor), || {
                w.set_generation(id, gen)
            })
        } else {
            self.on(w, move |w| w.set_generation(id, gen))?
        }
    }

    /// Every extent, sorted by id.
    pub fn list_extents(&self) -> Vec<ExtentInfo> {
        let mut v: Vec<ExtentInfo> = self
            .inner
            .workers
            .iter()
            .flat_map(|w| w.list())
            .map(|(id, size, allocated, generation)| ExtentInfo {
                id,
                size,
                allocated,
                generation,
            })
            .collect();
        v.sort_by_key(|x| x.id);
        v
    }

    /// How many runs of consecutive device blocks the extent's mapped
    /// blocks form, in logical order (1 when it is laid out in one piece,
    /// 0 when nothing is mapped): what a sequential read of it costs in
    /// device requests, at least.
    pub fn fragments(&self, id: u64) -> Result<u64, StoreError> {
        self.worker(id).fragments(id)
    }

    /// Writes every journaled block home and takes a checkpoint on every
    /// worker (the journals are then empty).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        for w in &self.inner.workers {
            if rt::in_coroutine() {
                w.checkpoint()?;
            } else {
                self.on(w, |w| w.checkpoint())??;
            }
        }
        Ok(())
    }

    /// The counters (see [`StoreStats`]).
    pub fn stats(&self) -> StoreStats {
        let sh = &self.inner.sh;
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let devices: Vec<DeviceUsage> = sh
            .devices
            .iter()
            .map(|d| DeviceUsage {
                name: d.info().name.clone(),
                stats: d.stats().snapshot(),
            })
            .collect();
        let mut s = StoreStats {
            user_bytes_written: l(&sh.user_written),
            user_bytes_read: l(&sh.user_read),
            device_bytes_written: devices.iter().map(|d| d.stats.bytes_written).sum(),
            device_bytes_read: devices.iter().map(|d| d.stats.bytes_read).sum(),
            flushes: devices.iter().map(|d| d.stats.flushes).sum(),
            devices,
            journal_bytes: l(&sh.journal_bytes),
            home_bytes: l(&sh.home_bytes),
            direct_bytes: l(&sh.direct_bytes),
            checkpoint_bytes: l(&sh.checkpoint_bytes),
            checksum_errors: l(&sh.checksum_errors),
            batches: l(&sh.batches),
            checkpoints: l(&sh.checkpoints),
            held_writes: l(&sh.held_writes),
            merged_writes: l(&sh.merged_writes),
            stream_pieces: l(&sh.stream_pieces),
            relocated_blocks: l(&sh.relocated_blocks),
            logged_blocks: l(&sh.logged_blocks),
            cleaned_blocks: l(&sh.cleaned_blocks),
            free_segments: sh.alloc().empty_segments(),
            ..Default::default()
        };
        for w in &self.inner.workers {
            let (d, q, j) = w.figures();
            s.dirty_blocks += d;
            s.quarantined_blocks += q;
            s.journal_used_blocks += j;
        }
        if s.user_bytes_written > 0 {
            s.write_amplification = s.device_bytes_written as f64 / s.user_bytes_written as f64;
        }
        s
    }

    /// `(total, free)` bytes of the data areas. Blocks freed since the last
    /// checkpoint are not free yet.
    pub fn capacity(&self) -> (u64, u64) {
        let a = self.inner.sh.alloc();
        (a.total_blocks() * BS, a.free_blocks() * BS)
    }

    /// The extent size limit of this store.
    pub fn extent_size_max(&self) -> u64 {
        self.inner.sh.opts.extent_size_max
    }

    /// Clean shutdown: held writes written, everything home, a checkpoint
    /// on every worker, background coroutines stopped. Later calls on any
    /// handle fail with [`StoreError::Closed`].
    pub fn close(self: Arc<Self>) -> Result<(), StoreError> {
        let sh = &self.inner.sh;
        if sh.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut result = Ok(());
        for w in &self.inner.workers {
            let r = if rt::in_coroutine() {
                rt::migrate::run_on(rt::migrate::Target::Reactor(w.reactor), || {
                    w.flush_streams();
                    w.checkpoint()
                })
            } else {
                self.on(w, |w| {
                    w.flush_streams();
                    w.checkpoint()
                })
                .and_then(|r| r)
            };
            if result.is_ok() {
                result = r;
            }
        }
        sh.closed.store(true, Ordering::Release);
        for w in &self.inner.workers {
            w.stop();
        }
        result
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Without close: like a crash, recovery replays the journals. The
        // background coroutines hold the workers; ask them to stop.
        if !self.sh.closed.swap(true, Ordering::AcqRel) {
            for w in &self.workers {
                w.request_stop();
            }
        }
    }
}
