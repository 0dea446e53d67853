//! Anonymous memory with an inaccessible guard region at its low end: the
//! backing of coroutine stacks (stacks grow down, so running off the end of
//! one faults on the guard instead of corrupting its neighbour).

use std::io;

/// A private anonymous mapping whose lowest `guard_len` bytes are `PROT_NONE`.
#[derive(Debug)]
pub struct GuardedMapping {
    base: *mut u8,
    total: usize,
    guard: usize,
}

// SAFETY: the mapping is plain memory owned by this value; moving the owner
// to another thread moves nothing the kernel ties to a thread.
unsafe impl Send for GuardedMapping {}

impl GuardedMapping {
    /// Maps `usable` bytes (rounded up to pages) above `guard_pages` pages of
    /// guard. Pages are committed lazily by the kernel.
    pub fn new(usable: usize, guard_pages: usize) -> io::Result<Self> {
        let page = crate::page_size();
        let usable = usable.div_ceil(page) * page;
        let guard = guard_pages * page;
        let total = usable + guard;
        // SAFETY: an anonymous private mapping with a null hint aliases nothing.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        if guard > 0 {
            // SAFETY: [base, base+guard) lies inside the mapping just created.
            if unsafe { libc::mprotect(base, guard, libc::PROT_NONE) } != 0 {
                let e = io::Error::last_os_error();
                // SAFETY: unmapping exactly what was mapped above.
                unsafe { libc::munmap(base, total) };
                return Err(e);
            }
        }
        Ok(Self {
            base: base as *mut u8,
            total,
            guard,
        })
    }

    /// Lowest usable address (just above the guard).
    pub fn usable_start(&self) -> *mut u8 {
        self.base.wrapping_add(self.guard)
    }

    /// One past the highest usable address: where a stack starts.
    pub fn top(&self) -> *mut u8 {
        self.base.wrapping_add(self.total)
    }

    pub fn usable_len(&self) -> usize {
        self.total - self.guard
    }

    /// The guard's address range `[start, end)`.
    pub fn guard_range(&self) -> (usize, usize) {
        (self.base as usize, self.base as usize + self.guard)
    }
}

impl Drop for GuardedMapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`total` describe a mapping this value owns exclusively.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.total) };
    }
}
