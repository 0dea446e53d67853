//! Memory-mapped device registers: volatile 32/64-bit accesses to a mapped
//! BAR, and the barriers that order them against DMA memory.
//!
//! Every access is bounds- and alignment-checked: a bad offset is logged by
//! the caller's error path, never undefined behaviour. A read outside the
//! mapping returns all ones, as a PCI read of a vanished device does.

/// A mapped register window (unmapped on drop).
#[derive(Debug)]
pub struct Mmio {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is device memory owned by this value; accesses are
// single volatile loads/stores, which any thread may issue (the device
// defines what concurrent register accesses mean, not Rust).
unsafe impl Send for Mmio {}
// SAFETY: as above; no access hands out references into the mapping.
unsafe impl Sync for Mmio {}

impl Mmio {
    /// Wraps an existing mapping.
    ///
    /// # Safety
    /// `[base, base+len)` must be a live mapping that nothing else unmaps;
    /// the returned value owns it (munmap on drop).
    pub unsafe fn from_raw(base: *mut u8, len: usize) -> Mmio {
        Mmio { base, len }
    }

    /// The window's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn ok(&self, off: usize, size: usize) -> bool {
        off % size == 0 && off.checked_add(size).is_some_and(|e| e <= self.len)
    }

    /// Reads the 32-bit register at `off` (all ones when out of range).
    #[inline]
    pub fn read32(&self, off: usize) -> u32 {
        if !self.ok(off, 4) {
            return u32::MAX;
        }
        // SAFETY: in range and aligned (checked above) in a live mapping.
        unsafe { std::ptr::read_volatile(self.base.add(off) as *const u32) }
    }

    /// Writes the 32-bit register at `off`; returns false (and writes
    /// nothing) when out of range.
    #[inline]
    pub fn write32(&self, off: usize, v: u32) -> bool {
        if !self.ok(off, 4) {
            return false;
        }
        // SAFETY: in range and aligned (checked above) in a live mapping.
        unsafe { std::ptr::write_volatile(self.base.add(off) as *mut u32, v) };
        true
    }

    /// Reads a 64-bit register as two 32-bit reads, low half first (NVMe
    /// allows either; some platforms cannot do 64-bit MMIO reads).
    pub fn read64(&self, off: usize) -> u64 {
        let lo = self.read32(off) as u64;
        let hi = self.read32(off + 4) as u64;
        lo | hi << 32
    }

    /// Writes a 64-bit register as two 32-bit writes, low half first.
    pub fn write64(&self, off: usize, v: u64) -> bool {
        self.write32(off, v as u32) && self.write32(off + 4, (v >> 32) as u32)
    }
}

impl Drop for Mmio {
    fn drop(&mut self) {
        // SAFETY: the mapping is owned by this value (see `from_raw`).
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

/// Orders earlier stores to DMA memory before a later store (a doorbell
/// write): the device must see a whole queue entry before it learns of it.
#[inline]
pub fn wmb() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: sfence has no operands and no memory-safety effect.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: a store barrier for the outer shareable domain (device + CPUs).
    unsafe {
        std::arch::asm!("dmb oshst", options(nostack, preserves_flags))
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// Orders an earlier load from DMA memory (a completion's phase bit) before
/// later loads (the rest of the completion).
#[inline]
pub fn rmb() {
    // x86 does not reorder loads with other loads: a compiler barrier is
    // enough there.
    #[cfg(target_arch = "aarch64")]
    // SAFETY: a load barrier for the outer shareable domain.
    unsafe {
        std::arch::asm!("dmb oshld", options(nostack, preserves_flags))
    };
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// Reads a `u32` the device may write at any time.
///
/// # Safety
/// `p` must be valid for reads and 4-byte aligned.
#[inline]
pub unsafe fn dma_read32(p: *const u32) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { std::ptr::read_volatile(p) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_accesses_are_refused() {
        let mut mem = vec![0u32; 4];
        // A fake window over heap memory, forgotten (not munmapped) below.
        // SAFETY: 16 valid bytes; the value is forgotten, never dropped.
        let m = unsafe { Mmio::from_raw(mem.as_mut_ptr() as *mut u8, 16) };
        assert!(m.write32(4, 7));
        assert_eq!(m.read32(4), 7);
        assert!(m.write64(8, 0x1_0000_0002));
        assert_eq!(m.read64(8), 0x1_0000_0002);
        assert!(!m.write32(16, 1));
        assert!(!m.write32(2, 1));
        assert_eq!(m.read32(14), u32::MAX);
        std::mem::forget(m);
        wmb();
        rmb();
    }
}
