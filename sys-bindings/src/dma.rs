//! Memory for device DMA: large, page-aligned mappings that
//! the block-device layer carves into I/O buffers.
//!
//! A mapping is tried on explicit hugepages first (`MAP_HUGETLB`, 2 MiB
//! pages: fewer TLB misses and, for the user-space NVMe driver of issue 9,
//! physically contiguous 2 MiB chunks); where the machine has none reserved
//! it falls back to ordinary anonymous memory with transparent hugepages
//! requested (`madvise(MADV_HUGEPAGE)`, a hint the kernel may ignore).

use std::io;

/// The hugepage size this module asks for with `MAP_HUGETLB`.
pub const HUGEPAGE_SIZE: usize = 2 << 20;

/// A private anonymous mapping used as DMA memory; unmapped on drop.
#[derive(Debug)]
pub struct DmaRegion {
    base: *mut u8,
    len: usize,
    hugetlb: bool,
}

// SAFETY: the mapping is plain memory owned by this value; no thread
// affinity is attached to it.
unsafe impl Send for DmaRegion {}
// SAFETY: the region hands out only its address; whoever carves it up is
// responsible for the disjointness of what it writes through that address.
unsafe impl Sync for DmaRegion {}

impl DmaRegion {
    /// Maps `len` bytes (rounded up to whole hugepages when they are used,
    /// to pages otherwise). `try_hugetlb` asks for explicit hugepages first.
    pub fn new(len: usize, try_hugetlb: bool) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a DMA region of 0 bytes",
            ));
        }
        if try_hugetlb {
            let hlen = len.div_ceil(HUGEPAGE_SIZE) * HUGEPAGE_SIZE;
            // No MAP_NORESERVE here: hugepages are reserved at mmap time, so
            // a machine without enough of them fails now rather than with a
            // SIGBUS at first touch.
            if let Ok(base) = map(hlen, libc::MAP_HUGETLB) {
                return Ok(Self {
                    base,
                    len: hlen,
                    hugetlb: true,
                });
            }
        }
        let page = crate::page_size();
        let plen = len.div_ceil(page) * page;
        let base = map(plen, 0)?;
        // SAFETY: [base, base+plen) is the mapping just created; MADV_HUGEPAGE
        // is advice only and cannot invalidate the memory.
        unsafe { libc::madvise(base as *mut libc::c_void, plen, libc::MADV_HUGEPAGE) };
        Ok(Self {
            base,
            len: plen,
            hugetlb: false,
        })
    }

    /// The first byte of the region (page aligned, at least 4 KiB).
    pub fn as_ptr(&self) -> *mut u8 {
        self.base
    }

    /// The mapped length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a region has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether the region lives on explicit hugepages.
    pub fn is_hugetlb(&self) -> bool {
        self.hugetlb
    }
}

fn map(len: usize, extra: libc::c_int) -> io::Result<*mut u8> {
    // SAFETY: an anonymous private mapping with a null hint aliases nothing.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(base as *mut u8)
}

impl Drop for DmaRegion {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` describe a mapping this value owns exclusively.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_aligned_memory_with_or_without_hugepages() {
        let r = DmaRegion::new(3 << 20, true).unwrap();
        assert_eq!(r.as_ptr() as usize % 4096, 0);
        assert!(r.len() >= 3 << 20);
        let r = DmaRegion::new(5000, false).unwrap();
        assert_eq!(r.len(), 8192);
        assert!(!r.is_hugetlb());
    }
}
