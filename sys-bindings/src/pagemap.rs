//! Virtual-to-physical translation through `/proc/self/pagemap`, for DMA in
//! VFIO's no-IOMMU mode (the device sees physical addresses).
//!
//! Only pages that cannot move are worth translating: hugetlb pages (the
//! kernel neither swaps nor migrates them while mapped) or locked memory.
//! Reading PFNs needs CAP_SYS_ADMIN; without it the kernel reports PFN 0,
//! which is an error here.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const PRESENT: u64 = 1 << 63;
const PFN_MASK: u64 = (1 << 55) - 1;

/// An open `/proc/self/pagemap`.
#[derive(Debug)]
pub struct Pagemap {
    file: File,
    page: usize,
}

impl Pagemap {
    pub fn open() -> io::Result<Pagemap> {
        let file = File::open("/proc/self/pagemap")
            .map_err(|e| io::Error::new(e.kind(), format!("/proc/self/pagemap: {e}")))?;
        Ok(Pagemap {
            file,
            page: crate::page_size(),
        })
    }

    /// The physical address of the byte at `va`. The page must be present
    /// (touch it first).
    pub fn phys(&self, va: usize) -> io::Result<u64> {
        let mut e = [0u8; 8];
        let index = (va / self.page) as u64;
        self.file
            .read_exact_at(&mut e, index * 8)
            .map_err(|e| io::Error::new(e.kind(), format!("/proc/self/pagemap at {va:#x}: {e}")))?;
        let entry = u64::from_ne_bytes(e);
        if entry & PRESENT == 0 {
            return Err(io::Error::other(format!(
                "page at {va:#x} is not present (not touched, or swapped out)"
            )));
        }
        let pfn = entry & PFN_MASK;
        if pfn == 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "/proc/self/pagemap hides physical frame numbers: no-IOMMU DMA needs CAP_SYS_ADMIN (run as root)",
            ));
        }
        Ok(pfn * self.page as u64 + (va % self.page) as u64)
    }
}

/// Locks `[addr, addr+len)` into memory (no swapping).
pub fn mlock(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: mlock only changes the residency of existing mappings; a bad
    // range is reported as an error.
    crate::cvt(unsafe { libc::mlock(addr as *const libc::c_void, len) }).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_or_explains() {
        let v = vec![1u8; 4096];
        let pm = Pagemap::open().unwrap();
        match pm.phys(v.as_ptr() as usize) {
            Ok(pa) => assert_eq!(pa % 4096, v.as_ptr() as u64 % 4096),
            Err(e) => assert!(e.to_string().contains("CAP_SYS_ADMIN"), "{e}"),
        }
    }
}
