//! Packet buffer pools and mbufs.

use super::{eal_up, ffi, DpdkError, LIVE_HANDLES, LIVE_MBUFS};
use std::ffi::CString;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::Arc;

struct PoolInner {
    ptr: NonNull<ffi::rte_mempool>,
    name: String,
    data_room: u16,
}

// SAFETY: a pktmbuf pool with the default (multi-producer/consumer ring)
// ops may be used from any thread.
unsafe impl Send for PoolInner {}
// SAFETY: as above; the handle itself is immutable.
unsafe impl Sync for PoolInner {}

impl Drop for PoolInner {
    fn drop(&mut self) {
        // The pool itself stays until rte_eal_cleanup: mbufs of it may be in
        // driver rings or chains we no longer see.
        LIVE_HANDLES.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A pool of packet mbufs (`rte_pktmbuf_pool_create`).
#[derive(Clone)]
pub struct Mempool(Arc<PoolInner>);

impl Mempool {
    /// `n` mbufs with `data_room` bytes each (headroom included), a
    /// per-lcore cache of `cache` (0 for threads that are not EAL lcores),
    /// on NUMA socket `socket` (-1: any).
    pub fn create(
        name: &str,
        n: u32,
        cache: u32,
        data_room: u16,
        socket: i32,
    ) -> Result<Mempool, DpdkError> {
        eal_up()?;
        let what = format!("creating mbuf pool {name} ({n} x {data_room} B)");
        let cname = CString::new(name).map_err(|_| DpdkError::msg(&what, "NUL in the name"))?;
        // SAFETY: the name is a valid C string (DPDK copies it); the other
        // arguments are plain values.
        let p =
            unsafe { ffi::rte_pktmbuf_pool_create(cname.as_ptr(), n, cache, 0, data_room, socket) };
        let ptr = NonNull::new(p).ok_or_else(|| DpdkError::last(&what))?;
        LIVE_HANDLES.fetch_add(1, Ordering::AcqRel);
        Ok(Mempool(Arc::new(PoolInner {
            ptr,
            name: name.to_string(),
            data_room,
        })))
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Bytes of each mbuf's buffer, headroom included.
    pub fn data_room(&self) -> u16 {
        self.0.data_room
    }

    /// Free mbufs in the pool.
    pub fn available(&self) -> u32 {
        // SAFETY: the pool is alive (this handle) and the call only reads.
        unsafe { ffi::rte_mempool_avail_count(self.0.ptr.as_ptr()) }
    }

    pub(crate) fn as_ptr(&self) -> *mut ffi::rte_mempool {
        self.0.ptr.as_ptr()
    }
}

/// One packet: an mbuf, or a chain of them, owned by this handle. Freed on
/// drop. A handle made by [`Mbuf::share`] references the same buffers:
/// while shared, nobody may write them, so the writers check for that.
pub struct Mbuf {
    ptr: NonNull<ffi::rte_mbuf>,
}

// SAFETY: an mbuf belongs to whoever holds its handle; freeing it returns
// it to a thread-safe pool.
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// A fresh, empty mbuf from `pool`, or `None` when the pool is empty.
    pub fn alloc(pool: &Mempool) -> Option<Mbuf> {
        // SAFETY: the pool is alive (the handle holds it).
        let p = unsafe { ffi::ferrite_dpdk_pktmbuf_alloc(pool.as_ptr()) };
        let ptr = NonNull::new(p)?;
        LIVE_MBUFS.fetch_add(1, Ordering::Relaxed);
        Some(Mbuf { ptr })
    }

    /// Takes ownership of an mbuf a driver handed over (already counted by
    /// the caller).
    ///
    /// # Safety
    /// `p` must be a valid mbuf that nothing else owns.
    pub(crate) unsafe fn from_raw(p: *mut ffi::rte_mbuf) -> Option<Mbuf> {
        NonNull::new(p).map(|ptr| Mbuf { ptr })
    }

    /// Gives up ownership (the count is the caller's business).
    pub(crate) fn into_raw(self) -> *mut ffi::rte_mbuf {
        let p = self.ptr.as_ptr();
        std::mem::forget(self);
        p
    }

    /// Bytes of the whole packet (all segments).
    pub fn len(&self) -> usize {
        // SAFETY: a valid mbuf (owned handle).
        unsafe { ffi::ferrite_dpdk_pktmbuf_pkt_len(self.ptr.as_ptr()) as usize }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Segments in the chain.
    pub fn segment_count(&self) -> usize {
        // SAFETY: a valid mbuf.
        unsafe { ffi::ferrite_dpdk_pktmbuf_nb_segs(self.ptr.as_ptr()) as usize }
    }

    /// The first segment's data.
    pub fn data(&self) -> &[u8] {
        seg_data(self.ptr.as_ptr())
    }

    /// Every segment's data, in order.
    pub fn segments(&self) -> Segments<'_> {
        Segments {
            next: self.ptr.as_ptr(),
            _m: PhantomData,
        }
    }

    /// Copies the packet's bytes `[off, off + out.len())` into `out`;
    /// returns how many were copied (fewer at the end of the packet).
    pub fn read_at(&self, mut off: usize, out: &mut [u8]) -> usize {
        let mut done = 0;
        for s in self.segments() {
            if done == out.len() {
                break;
            }
            if off >= s.len() {
                off -= s.len();
                continue;
            }
            let n = (s.len() - off).min(out.len() - done);
            out[done..done + n].copy_from_slice(&s[off..off + n]);
            done += n;
            off = 0;
        }
        done
    }

    /// Whether another handle references these buffers.
    pub fn is_shared(&self) -> bool {
        // SAFETY: a valid mbuf.
        unsafe { ffi::ferrite_dpdk_mbuf_refcnt_read(self.ptr.as_ptr()) > 1 }
    }

    /// Free bytes after the last segment's data.
    pub fn tailroom(&self) -> usize {
        // SAFETY: a valid mbuf; the last segment is reached by the chain.
        unsafe { ffi::ferrite_dpdk_pktmbuf_tailroom(self.last()) as usize }
    }

    fn last(&self) -> *mut ffi::rte_mbuf {
        let mut m = self.ptr.as_ptr();
        loop {
            // SAFETY: `m` is a segment of a valid chain.
            let n = unsafe { ffi::ferrite_dpdk_pktmbuf_next(m) };
            if n.is_null() {
                return m;
            }
            m = n;
        }
    }

    /// Grows the packet by `len` bytes at its end and returns them to be
    /// filled; `None` without tailroom or while the buffers are shared.
    pub fn append(&mut self, len: usize) -> Option<&mut [u8]> {
        if self.is_shared() || len > self.tailroom() || len > u16::MAX as usize {
            return None;
        }
        // SAFETY: a valid, unshared mbuf with `len` bytes of tailroom; the
        // returned bytes lie inside its buffer and this &mut borrows it.
        unsafe {
            let p = ffi::ferrite_dpdk_pktmbuf_append(self.ptr.as_ptr(), len as u16);
            if p.is_null() {
                return None;
            }
            Some(std::slice::from_raw_parts_mut(p as *mut u8, len))
        }
    }

    /// Appends `tail`'s segments to this chain. Gives `tail` back when the
    /// chain would be too long or either is shared.
    pub fn chain(&mut self, tail: Mbuf) -> Result<(), Mbuf> {
        if self.is_shared() || tail.is_shared() {
            return Err(tail);
        }
        // SAFETY: both are valid, unshared mbufs; on success the head owns
        // the tail's segments, so the tail handle is given up.
        let r = unsafe { ffi::ferrite_dpdk_pktmbuf_chain(self.ptr.as_ptr(), tail.ptr.as_ptr()) };
        if r != 0 {
            return Err(tail);
        }
        std::mem::forget(tail);
        LIVE_MBUFS.fetch_sub(1, Ordering::Relaxed);
        Ok(())
    }

    /// Another handle to the same buffers (reference counts bumped): e.g.
    /// one for a driver to transmit and free, one kept to retransmit.
    pub fn share(&self) -> Mbuf {
        // SAFETY: a valid mbuf; every segment gains one reference, which
        // the new handle's drop gives back.
        unsafe { ffi::ferrite_dpdk_mbuf_refcnt_update_chain(self.ptr.as_ptr(), 1) };
        LIVE_MBUFS.fetch_add(1, Ordering::Relaxed);
        Mbuf { ptr: self.ptr }
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: this handle owns one reference to the chain.
        unsafe { ffi::ferrite_dpdk_pktmbuf_free(self.ptr.as_ptr()) };
        LIVE_MBUFS.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mbuf({} B, {} seg)", self.len(), self.segment_count())
    }
}

fn seg_data<'a>(m: *mut ffi::rte_mbuf) -> &'a [u8] {
    // SAFETY: `m` is a valid segment; mtod points at data_len readable
    // bytes inside its buffer, alive as long as the owning handle.
    unsafe {
        let p = ffi::ferrite_dpdk_pktmbuf_mtod(m) as *const u8;
        let n = ffi::ferrite_dpdk_pktmbuf_data_len(m) as usize;
        if p.is_null() || n == 0 {
            return &[];
        }
        std::slice::from_raw_parts(p, n)
    }
}

/// Iterator over a chain's segments.
pub struct Segments<'a> {
    next: *mut ffi::rte_mbuf,
    _m: PhantomData<&'a Mbuf>,
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.next.is_null() {
            return None;
        }
        let cur = self.next;
        // SAFETY: `cur` is a segment of the chain the borrow keeps alive.
        self.next = unsafe { ffi::ferrite_dpdk_pktmbuf_next(cur) };
        Some(seg_data(cur))
    }
}

impl Mbuf {
    pub(crate) fn ptr_raw(&self) -> *mut ffi::rte_mbuf {
        self.ptr.as_ptr()
    }
}
