//! Memory shared with a device (queue rings, PRP/SGL lists, bounce
//! buffers): a [`DmaRegion`] with bounds-checked volatile accessors, so that
//! a driver can fill and read it without `unsafe` of its own.
//!
//! The device may write the memory at any time, so every access is a
//! volatile access of plain integers or bytes: no reference into the region
//! is ever handed out. An access outside the region is refused (reads give
//! zero, writes are dropped, both report `false`/`None` where they can).

use crate::dma::DmaRegion;
use std::io;

/// A DMA region accessed with volatile loads and stores.
#[derive(Debug)]
pub struct DevMem {
    region: DmaRegion,
}

impl DevMem {
    /// Maps `len` bytes (see [`DmaRegion::new`]) and zeroes them, which also
    /// faults every page in (pagemap translation needs present pages).
    pub fn new(len: usize, try_hugetlb: bool) -> io::Result<DevMem> {
        let region = DmaRegion::new(len, try_hugetlb)?;
        let m = DevMem { region };
        m.zero(0, m.len());
        Ok(m)
    }

    /// The first byte's virtual address.
    pub fn addr(&self) -> usize {
        self.region.as_ptr() as usize
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.region.len()
    }

    /// Always false: a region has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether the memory is on explicit hugepages (physically contiguous
    /// per 2 MiB page, never migrated).
    pub fn is_hugetlb(&self) -> bool {
        self.region.is_hugetlb()
    }

    fn ok(&self, off: usize, size: usize, align: usize) -> bool {
        off % align == 0 && off.checked_add(size).is_some_and(|e| e <= self.len())
    }

    /// A volatile 32-bit load (`None` out of range).
    #[inline]
    pub fn read32(&self, off: usize) -> Option<u32> {
        if !self.ok(off, 4, 4) {
            return None;
        }
        // SAFETY: in range and aligned inside the live mapping.
        Some(unsafe { std::ptr::read_volatile(self.region.as_ptr().add(off) as *const u32) })
    }

    /// A volatile 16-bit load (`None` out of range).
    #[inline]
    pub fn read16(&self, off: usize) -> Option<u16> {
        if !self.ok(off, 2, 2) {
            return None;
        }
        // SAFETY: in range and aligned inside the live mapping.
        Some(unsafe { std::ptr::read_volatile(self.region.as_ptr().add(off) as *const u16) })
    }

    /// A volatile 32-bit store; false when out of range.
    #[inline]
    pub fn write32(&self, off: usize, v: u32) -> bool {
        if !self.ok(off, 4, 4) {
            return false;
        }
        // SAFETY: in range and aligned inside the live mapping.
        unsafe { std::ptr::write_volatile(self.region.as_ptr().add(off) as *mut u32, v) };
        true
    }

    /// A volatile 64-bit store; false when out of range.
    #[inline]
    pub fn write64(&self, off: usize, v: u64) -> bool {
        if !self.ok(off, 8, 8) {
            return false;
        }
        // SAFETY: in range and aligned inside the live mapping.
        unsafe { std::ptr::write_volatile(self.region.as_ptr().add(off) as *mut u64, v) };
        true
    }

    /// Stores 32-bit words (a queue entry) starting at `off`.
    pub fn write_words(&self, off: usize, words: &[u32]) -> bool {
        if !self.ok(off, words.len() * 4, 4) {
            return false;
        }
        for (i, w) in words.iter().enumerate() {
            self.write32(off + i * 4, *w);
        }
        true
    }

    /// Copies `data` in at `off`.
    pub fn write_bytes(&self, off: usize, data: &[u8]) -> bool {
        if !self.ok(off, data.len(), 1) {
            return false;
        }
        // SAFETY: the destination range is inside the mapping (checked) and
        // cannot overlap `data`, which Rust owns elsewhere; a plain copy is
        // fine because the device does not touch a buffer it was not given.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.region.as_ptr().add(off), data.len())
        };
        true
    }

    /// Copies `out.len()` bytes out from `off`.
    pub fn read_bytes(&self, off: usize, out: &mut [u8]) -> bool {
        if !self.ok(off, out.len(), 1) {
            return false;
        }
        // SAFETY: as in `write_bytes`, in the other direction.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.region.as_ptr().add(off),
                out.as_mut_ptr(),
                out.len(),
            )
        };
        true
    }

    /// Zeroes `len` bytes at `off`.
    pub fn zero(&self, off: usize, len: usize) -> bool {
        if !self.ok(off, len, 1) {
            return false;
        }
        // SAFETY: in range inside the live mapping.
        unsafe { std::ptr::write_bytes(self.region.as_ptr().add(off), 0, len) };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_volatile_access() {
        let m = DevMem::new(8192, false).unwrap();
        assert!(m.write32(4, 0xdead_beef));
        assert_eq!(m.read32(4), Some(0xdead_beef));
        assert_eq!(m.read16(4), Some(0xbeef));
        assert!(m.write64(8, u64::MAX));
        assert!(m.write_words(64, &[1, 2, 3]));
        let mut b = [0u8; 4];
        assert!(m.read_bytes(68, &mut b));
        assert_eq!(u32::from_le_bytes(b), 2);
        assert!(!m.write32(8192, 1));
        assert!(!m.write64(4, 1));
        assert_eq!(m.read32(8190), None);
        assert!(m.zero(0, 8192));
        assert_eq!(m.read32(4), Some(0));
    }
}
