//! DMA memory of one controller and the translation of I/O buffers to the
//! addresses the controller uses (IOVAs with an IOMMU, physical addresses
//! in no-IOMMU mode).
//!
//! - Driver memory (queue rings, PRP/SGL list pages, bounce buffers) comes
//!   from 2 MiB chunks of [`DevMem`], carved into power-of-two classes.
//!   With type1 each chunk is mapped at the next free IOVA; in no-IOMMU mode
//!   a chunk must be one hugepage (physically contiguous, never migrated)
//!   and its address is read from pagemap.
//! - Data buffers come from the engine's DMA arena ([`crate::bdev::dma`]):
//!   it is mapped once (type1: at one IOVA range; no-IOMMU: one physical
//!   address per hugepage). A buffer outside the arena (a heap fallback)
//!   is bounced through driver memory.

use crate::bdev::dma;
use ferrite_sys::devmem::DevMem;
use ferrite_sys::pagemap::Pagemap;
use ferrite_sys::vfio::{Container, IommuMode};
use std::io;
use std::sync::{Arc, Mutex};

/// Size of a chunk of driver memory (one hugepage).
pub const CHUNK: usize = 2 << 20;
const PAGE: usize = 4096;
const CLASSES: usize = 10; // 4 KiB .. 2 MiB
/// IOVAs of driver memory start here (below 4 GiB: any IOMMU width fits).
const DRIVER_IOVA_BASE: u64 = 0x1000_0000;
/// IOVA of the engine's DMA arena (type1).
const ARENA_IOVA_BASE: u64 = 0x1_0000_0000;

/// A piece of driver memory.
#[derive(Clone, Debug)]
pub struct DmaSlice {
    pub mem: Arc<DevMem>,
    pub off: usize,
    pub len: usize,
    pub iova: u64,
    class: usize,
}

impl DmaSlice {
    /// IOVA of byte `at` of the slice.
    pub fn iova_at(&self, at: usize) -> u64 {
        self.iova + at as u64
    }
}

struct Inner {
    chunks: Vec<(Arc<DevMem>, u64)>,
    /// (chunk index, bytes used) of the chunk being carved.
    cur: Option<(usize, usize)>,
    free: [Vec<DmaSlice>; CLASSES],
    next_iova: u64,
}

/// Driver memory of one controller.
pub struct DmaAlloc {
    mode: IommuMode,
    container: Arc<Container>,
    pagemap: Option<Pagemap>,
    inner: Mutex<Inner>,
    name: String,
}

impl DmaAlloc {
    pub fn new(name: &str, container: Arc<Container>) -> io::Result<DmaAlloc> {
        let mode = container.mode();
        let pagemap = match mode {
            IommuMode::NoIommu => Some(Pagemap::open()?),
            IommuMode::Type1 => None,
        };
        Ok(DmaAlloc {
            mode,
            container,
            pagemap,
            inner: Mutex::new(Inner {
                chunks: Vec::new(),
                cur: None,
                free: std::array::from_fn(|_| Vec::new()),
                next_iova: DRIVER_IOVA_BASE,
            }),
            name: name.to_string(),
        })
    }

    fn new_chunk(&self, inner: &mut Inner) -> io::Result<usize> {
        let mem =
            Arc::new(DevMem::new(CHUNK, true).map_err(|e| {
                io::Error::new(e.kind(), format!("{}: DMA memory: {e}", self.name))
            })?);
        let iova = match self.mode {
            IommuMode::NoIommu => {
                if !mem.is_hugetlb() {
                    return Err(io::Error::new(
                        io::ErrorKind::OutOfMemory,
                        format!(
                            "{}: no-IOMMU DMA needs hugepages (physically contiguous, never moved) and none are free: reserve some with scripts/setup.sh or `echo 64 > /proc/sys/vm/nr_hugepages`",
                            self.name
                        ),
                    ));
                }
                let pm = self.pagemap.as_ref().expect("no-IOMMU mode has a pagemap");
                pm.phys(mem.addr())
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.name)))?
            }
            IommuMode::Type1 => {
                let iova = inner.next_iova;
                self.container
                    .map_devmem(mem.clone(), iova)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.name)))?;
                inner.next_iova += CHUNK as u64;
                iova
            }
        };
        inner.chunks.push((mem, iova));
        Ok(inner.chunks.len() - 1)
    }

    /// `len` bytes (at most [`CHUNK`]), 4 KiB aligned, zeroed.
    pub fn alloc(&self, len: usize) -> io::Result<DmaSlice> {
        let size = len.max(PAGE).next_power_of_two();
        if size > CHUNK {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: a DMA allocation of {len} bytes is over 2 MiB",
                    self.name
                ),
            ));
        }
        let class = (size.trailing_zeros() - PAGE.trailing_zeros()) as usize;
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut s) = inner.free[class].pop() {
            s.mem.zero(s.off, size);
            s.len = len;
            return Ok(s);
        }
        let (ci, used) = match inner.cur {
            Some((ci, used)) if used.next_multiple_of(size) + size <= CHUNK => {
                (ci, used.next_multiple_of(size))
            }
            _ => (self.new_chunk(&mut inner)?, 0),
        };
        inner.cur = Some((ci, used + size));
        let (mem, iova) = inner.chunks[ci].clone();
        Ok(DmaSlice {
            mem,
            off: used,
            len,
            iova: iova + used as u64,
            class,
        })
    }

    /// Gives memory back (the device must be done with it).
    pub fn free(&self, s: DmaSlice) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let class = s.class;
        inner.free[class].push(s);
    }

    /// How the engine's DMA arena is reached by the device, mapping it on
    /// first use. `None`: every data buffer is bounced.
    pub fn map_arena(&self) -> Option<ArenaMap> {
        let (base, len) = dma::arena_range()?;
        let hugepages = dma::pool_stats().hugepages;
        match self.mode {
            IommuMode::Type1 => {
                // SAFETY: the arena is the engine's process-lifetime DMA pool
                // (a static that is never dropped or unmapped), so the range
                // stays valid for as long as the mapping exists.
                match unsafe { self.container.map_dma(base, ARENA_IOVA_BASE, len) } {
                    Ok(()) => Some(ArenaMap {
                        base,
                        len,
                        xlate: Xlate::Offset(ARENA_IOVA_BASE),
                    }),
                    Err(e) => {
                        log::warn!(
                            "{}: DMA arena not mapped ({e}); buffers are bounced",
                            self.name
                        );
                        None
                    }
                }
            }
            IommuMode::NoIommu => {
                if !hugepages {
                    log::warn!(
                        "{}: the DMA arena is not on hugepages; in no-IOMMU mode its pages could move, so every buffer is bounced through driver memory (reserve hugepages before start: scripts/setup.sh)",
                        self.name
                    );
                    return None;
                }
                // Fault every hugepage in (mlock populates the range without
                // changing its contents) and read its physical address.
                if let Err(e) = ferrite_sys::pagemap::mlock(base, len) {
                    log::warn!(
                        "{}: mlock of the DMA arena: {e}; buffers are bounced",
                        self.name
                    );
                    return None;
                }
                let pm = self.pagemap.as_ref()?;
                let mut pa = Vec::with_capacity(len / CHUNK);
                for i in 0..len / CHUNK {
                    match pm.phys(base + i * CHUNK) {
                        Ok(p) => pa.push(p),
                        Err(e) => {
                            log::warn!(
                                "{}: DMA arena translation: {e}; buffers are bounced",
                                self.name
                            );
                            return None;
                        }
                    }
                }
                Some(ArenaMap {
                    base,
                    len,
                    xlate: Xlate::Pages(pa),
                })
            }
        }
    }

    /// The IOMMU model.
    pub fn mode(&self) -> IommuMode {
        self.mode
    }
}

enum Xlate {
    /// IOVA = base + offset in the arena.
    Offset(u64),
    /// Physical address of each 2 MiB hugepage.
    Pages(Vec<u64>),
}

/// The engine's DMA arena as the device sees it.
pub struct ArenaMap {
    base: usize,
    len: usize,
    xlate: Xlate,
}

impl ArenaMap {
    /// The device address of the byte at `va`, if it lies in the arena.
    pub fn iova(&self, va: usize) -> Option<u64> {
        if va < self.base || va >= self.base + self.len {
            return None;
        }
        let off = va - self.base;
        match &self.xlate {
            Xlate::Offset(b) => Some(b + off as u64),
            Xlate::Pages(pa) => pa.get(off / CHUNK).map(|p| p + (off % CHUNK) as u64),
        }
    }

    /// Whether `[va, va+len)` lies in the arena.
    pub fn contains(&self, va: usize, len: usize) -> bool {
        va >= self.base
            && va
                .checked_add(len)
                .is_some_and(|e| e <= self.base + self.len)
    }

    /// Splits `[va, va+len)` into device-contiguous pieces `(iova, len)`,
    /// appending to `out`; false when outside the arena.
    pub fn pieces(&self, va: usize, len: usize, out: &mut Vec<(u64, usize)>) -> bool {
        if !self.contains(va, len) {
            return false;
        }
        let step = match self.xlate {
            Xlate::Offset(_) => usize::MAX,
            Xlate::Pages(_) => CHUNK,
        };
        let mut at = va;
        let end = va + len;
        while at < end {
            let boundary = if step == usize::MAX {
                end
            } else {
                (at - self.base) / step * step + step + self.base
            };
            let n = boundary.min(end) - at;
            let Some(iova) = self.iova(at) else {
                return false;
            };
            match out.last_mut() {
                Some((i, l)) if *i + *l as u64 == iova => *l += n,
                _ => out.push((iova, n)),
            }
            at += n;
        }
        true
    }
}
