//! DMA-able I/O buffers: 4 KiB-aligned, from one process-wide arena.
//!
//! The arena is a single [`DmaRegion`] (hugepages where the machine has
//! them reserved, transparent hugepages requested otherwise). It is carved
//! into power-of-two size classes from 4 KiB to 4 MiB, each with a free list;
//! a freed buffer goes back to its class and is never coalesced, which keeps
//! allocation O(1) and is enough for the store's steady mix of block-sized
//! and batch-sized buffers. When the arena is exhausted, or a buffer is
//! larger than the largest class, the buffer comes from the heap (aligned,
//! zeroed), still usable for O_DIRECT but not registered with io_uring.
//!
//! The arena's address range is what the uring backend registers as a fixed
//! buffer, so I/O on arena buffers skips the kernel's per-I/O page pinning.
//!
//! Contents of a fresh buffer are unspecified (zero the first time, whatever
//! was last written after reuse), but always initialised memory.

use ferrite_sys::dma::DmaRegion;
use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Alignment and granule of every DMA buffer.
pub const DMA_ALIGN: usize = 4096;

const MIN_CLASS_SHIFT: u32 = 12; // 4 KiB
const MAX_CLASS_SHIFT: u32 = 22; // 4 MiB
const CLASSES: usize = (MAX_CLASS_SHIFT - MIN_CLASS_SHIFT + 1) as usize;

/// Default arena size when [`configure`] was not called.
pub const DEFAULT_ARENA: usize = 64 << 20;

static ARENA_SIZE: AtomicUsize = AtomicUsize::new(DEFAULT_ARENA);
static POOL: OnceLock<Pool> = OnceLock::new();

/// Sets the arena size; effective only before the first buffer is taken.
/// Returns whether it took effect.
pub fn configure(arena_bytes: usize) -> bool {
    if POOL.get().is_some() {
        return false;
    }
    ARENA_SIZE.store(arena_bytes, Ordering::Relaxed);
    true
}

struct Pool {
    region: Option<DmaRegion>,
    bump: Mutex<usize>,
    free: [Mutex<Vec<usize>>; CLASSES],
    heap_fallbacks: AtomicU64,
}

fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        let size = ARENA_SIZE.load(Ordering::Relaxed);
        let region = if size == 0 {
            None
        } else {
            match DmaRegion::new(size, true) {
                Ok(r) => {
                    log::info!(
                        "dma: arena of {} MiB on {}",
                        r.len() >> 20,
                        if r.is_hugetlb() {
                            "2 MiB hugepages"
                        } else {
                            "normal pages (no hugepages reserved)"
                        }
                    );
                    Some(r)
                }
                Err(e) => {
                    log::warn!("dma: no arena ({e}); I/O buffers come from the heap");
                    None
                }
            }
        };
        Pool {
            region,
            bump: Mutex::new(0),
            free: std::array::from_fn(|_| Mutex::new(Vec::new())),
            heap_fallbacks: AtomicU64::new(0),
        }
    })
}

/// The arena's address range `(base, len)`, for registration with a ring.
pub fn arena_range() -> Option<(usize, usize)> {
    pool()
        .region
        .as_ref()
        .map(|r| (r.as_ptr() as usize, r.len()))
}

/// Facts about the pool, for logs and tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolStats {
    /// Arena bytes (0 without an arena).
    pub arena_bytes: usize,
    /// Whether the arena is on explicit hugepages.
    pub hugepages: bool,
    /// Arena bytes carved into buffers so far.
    pub carved_bytes: usize,
    /// Buffers that had to come from the heap.
    pub heap_fallbacks: u64,
}

/// The pool's current figures.
pub fn pool_stats() -> PoolStats {
    let p = pool();
    PoolStats {
        arena_bytes: p.region.as_ref().map_or(0, |r| r.len()),
        hugepages: p.region.as_ref().is_some_and(|r| r.is_hugetlb()),
        carved_bytes: *p.bump.lock().unwrap_or_else(|e| e.into_inner()),
        heap_fallbacks: p.heap_fallbacks.load(Ordering::Relaxed),
    }
}

fn class_of(len: usize) -> Option<usize> {
    let size = len.max(DMA_ALIGN).next_power_of_two();
    let shift = size.trailing_zeros();
    (shift <= MAX_CLASS_SHIFT).then(|| (shift - MIN_CLASS_SHIFT) as usize)
}

#[derive(Debug)]
enum Origin {
    /// Arena offset and size class.
    Arena(usize, usize),
    /// Heap allocation of this many bytes.
    Heap(usize),
    /// A part of a buffer cut by [`DmaBuf::split`] or
    /// [`DmaBuf::shared_parts`]: the whole stays allocated until its last
    /// part (and, when shared, its last other holder) is dropped.
    Part {
        whole: std::sync::Arc<DmaBuf>,
        /// Other holders may read the whole: the part is read-only.
        shared: bool,
    },
}

/// An aligned buffer for device I/O. `len` is the I/O size (a multiple of
/// 4 KiB for the uring backend), the capacity is its size class.
pub struct DmaBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
    origin: Origin,
}

// SAFETY: a DmaBuf exclusively owns its bytes (arena slices are handed out
// once until returned; the parts of a split buffer cover disjoint ranges and
// the whole they keep alive is never accessed), like a Box<[u8]>, except
// shared parts, which only ever read bytes that their holders only read.
unsafe impl Send for DmaBuf {}
// SAFETY: shared access only reads through `&self`.
unsafe impl Sync for DmaBuf {}

impl DmaBuf {
    /// A buffer of `len` bytes (capacity rounded up to 4 KiB or its class).
    pub fn new(len: usize) -> DmaBuf {
        let p = pool();
        if let (Some(class), Some(region)) = (class_of(len), p.region.as_ref()) {
            let size = DMA_ALIGN << class;
            let off = p.free[class]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()
                .or_else(|| {
                    let mut bump = p.bump.lock().unwrap_or_else(|e| e.into_inner());
                    (*bump + size <= region.len()).then(|| {
                        let o = *bump;
                        *bump += size;
                        o
                    })
                });
            if let Some(off) = off {
                let ptr = NonNull::new(region.as_ptr().wrapping_add(off))
                    .expect("arena addresses are non-null");
                return DmaBuf {
                    ptr,
                    len,
                    cap: size,
                    origin: Origin::Arena(off, class),
                };
            }
        }
        p.heap_fallbacks.fetch_add(1, Ordering::Relaxed);
        let cap = len.max(1).div_ceil(DMA_ALIGN) * DMA_ALIGN;
        let layout = Layout::from_size_align(cap, DMA_ALIGN).expect("valid DMA layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        DmaBuf {
            ptr,
            len,
            cap,
            origin: Origin::Heap(cap),
        }
    }

    /// A buffer of `len` zero bytes.
    pub fn zeroed(len: usize) -> DmaBuf {
        let mut b = Self::new(len);
        b.as_mut_slice().fill(0);
        b
    }

    /// Cuts the buffer into consecutive parts of `part` bytes (the last
    /// one shorter if `len` is not a multiple), each a buffer of its own
    /// over the same memory. Blocks that were written as one piece stay
    /// one piece of memory that way: a device request over several of
    /// them in order is one physically contiguous segment where the
    /// arena is on huge pages, instead of one segment per block.
    ///
    /// # Panics
    /// If `part` is 0.
    pub fn split(self, part: usize) -> Vec<DmaBuf> {
        Self::parts(&std::sync::Arc::new(self), part, false)
    }

    /// Read-only parts of `part` bytes over a buffer that others keep
    /// reading (a payload the store keeps while the replication code sends
    /// it): each part is a buffer of its own for device writes, and the
    /// memory is freed when the last part and the last `Arc` are dropped.
    ///
    /// # Panics
    /// If `part` is 0.
    pub fn shared_parts(whole: &std::sync::Arc<DmaBuf>, part: usize) -> Vec<DmaBuf> {
        Self::parts(whole, part, true)
    }

    fn parts(whole: &std::sync::Arc<DmaBuf>, part: usize, shared: bool) -> Vec<DmaBuf> {
        assert!(part > 0, "DmaBuf: parts of 0 bytes");
        let (base, len) = (whole.ptr, whole.len);
        (0..len)
            .step_by(part)
            .map(|at| {
                let n = part.min(len - at);
                DmaBuf {
                    // at < len <= cap: inside the whole's allocation.
                    ptr: NonNull::new(base.as_ptr().wrapping_add(at))
                        .expect("an address inside a buffer is non-null"),
                    len: n,
                    cap: n,
                    origin: Origin::Part {
                        whole: whole.clone(),
                        shared,
                    },
                }
            })
            .collect()
    }

    /// A buffer holding a copy of `data`.
    pub fn copy_from(data: &[u8]) -> DmaBuf {
        let mut b = Self::new(data.len());
        b.as_mut_slice().copy_from_slice(data);
        b
    }

    /// The I/O length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the I/O length is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The usable capacity.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Changes the I/O length within the capacity.
    ///
    /// # Panics
    /// If `len` exceeds the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap, "DmaBuf::set_len beyond capacity");
        self.len = len;
    }

    /// The bytes of the buffer.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr..ptr+cap is owned by this buffer and initialised
        // (zero-filled at first use, written by I/O or copies afterwards),
        // and len <= cap.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes of the buffer, mutably.
    ///
    /// # Panics
    /// On a part from [`DmaBuf::shared_parts`], whose bytes others may be
    /// reading.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.assert_writable();
        // SAFETY: as in `as_slice`, and `&mut self` makes the access
        // exclusive: no other buffer covers these bytes (split parts are
        // disjoint), and shared parts were refused above.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    fn assert_writable(&self) {
        assert!(
            !matches!(self.origin, Origin::Part { shared: true, .. }),
            "DmaBuf: a shared part is read-only"
        );
    }

    /// The start address, for submission to a device.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The start address, for a device to write into.
    ///
    /// # Panics
    /// On a part from [`DmaBuf::shared_parts`].
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.assert_writable();
        self.ptr.as_ptr()
    }

    /// Whether the buffer lies in the (registrable) arena.
    pub fn in_arena(&self) -> bool {
        match &self.origin {
            Origin::Arena(..) => true,
            Origin::Heap(_) => false,
            Origin::Part { whole, .. } => whole.in_arena(),
        }
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        match self.origin {
            Origin::Arena(off, class) => pool().free[class]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(off),
            Origin::Heap(cap) => {
                let layout = Layout::from_size_align(cap, DMA_ALIGN).expect("valid DMA layout");
                // SAFETY: allocated in `new` with exactly this layout, and
                // freed once (Drop).
                unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
            }
            // The whole goes when its last part does (the Arc).
            Origin::Part { .. } => {}
        }
    }
}

impl std::fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBuf")
            .field("len", &self.len)
            .field("cap", &self.cap)
            .field("arena", &self.in_arena())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_recycled() {
        let mut a = DmaBuf::new(4096);
        assert_eq!(a.as_ptr() as usize % DMA_ALIGN, 0);
        a.as_mut_slice().fill(7);
        let big = DmaBuf::new(3 << 20);
        assert_eq!(big.capacity(), 4 << 20);
        assert_eq!(big.as_ptr() as usize % DMA_ALIGN, 0);
        let huge = DmaBuf::zeroed(9 << 20); // beyond the largest class: heap
        assert!(!huge.in_arena());
        assert!(huge.as_slice().iter().all(|&b| b == 0));
        let c = DmaBuf::copy_from(&[1u8; 8192]);
        assert_eq!(c.as_slice(), &[1u8; 8192][..]);
        drop(a);
        let _d = DmaBuf::new(100);
    }

    #[test]
    fn split_parts_are_consecutive_and_free_the_whole_with_the_last() {
        let data: Vec<u8> = (0..16384u32).map(|i| (i / 7) as u8).collect();
        let whole = DmaBuf::copy_from(&data);
        let (base, arena) = (whole.as_ptr() as usize, whole.in_arena());
        let mut parts = whole.split(4096);
        assert_eq!(parts.len(), 4);
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(p.as_ptr() as usize, base + i * 4096);
            assert_eq!(p.as_slice(), &data[i * 4096..(i + 1) * 4096]);
            assert_eq!(p.in_arena(), arena);
        }
        // Each part is written on its own without touching its neighbours.
        parts[1].as_mut_slice().fill(0xee);
        assert_eq!(parts[0].as_slice(), &data[..4096]);
        assert_eq!(parts[2].as_slice(), &data[8192..12288]);
        // A short tail, and nothing for an empty buffer.
        let tail = DmaBuf::copy_from(&[3u8; 6144]).split(4096);
        assert_eq!((tail[0].len(), tail[1].len()), (4096, 2048));
        assert!(DmaBuf::new(0).split(4096).is_empty());
        // The arena slice goes back to its free list only with the last
        // part: until then no new buffer of its class may get it.
        if arena {
            let last = parts.pop().expect("four parts");
            drop(parts);
            let other = DmaBuf::new(16384);
            assert_ne!(other.as_ptr() as usize, base, "reused while a part lived");
            drop(other);
            drop(last);
        }
    }

    #[test]
    fn shared_parts_read_the_whole_and_refuse_writes() {
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        let whole = std::sync::Arc::new(DmaBuf::copy_from(&data));
        let mut parts = DmaBuf::shared_parts(&whole, 4096);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].as_slice(), &data[4096..]);
        assert_eq!(parts[0].as_ptr(), whole.as_ptr());
        // The holder still reads the whole; nobody can get it mutably.
        assert_eq!(whole.as_slice(), &data[..]);
        let mut w = whole.clone();
        assert!(std::sync::Arc::get_mut(&mut w).is_none());
        drop(w);
        let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            parts[0].as_mut_slice()[0] = 1;
        }));
        assert!(refused.is_err(), "a shared part was written");
        // The parts outlive the holder's Arc.
        drop(whole);
        assert_eq!(parts[0].as_slice(), &data[..4096]);
    }
}
