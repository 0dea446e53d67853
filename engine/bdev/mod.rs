//! Block devices under the chunk store: the [`BlockDevice`] interface and
//! its backends.
//!
//! - [`uring`]: io_uring with O_DIRECT on a file or a block device. One ring
//!   per reactor thread, shared by every uring device used there; requests
//!   are queued by the coroutines and submitted in one `io_uring_enter` per
//!   reactor loop by the ring's poller, which also reaps completions and
//!   wakes the waiting coroutines. An eventfd registered with the ring wakes
//!   a sleeping adaptive reactor. Buffers from the [`dma`] arena go out as
//!   fixed (registered) buffers.
//! - [`malloc`]: RAM, for tests; named devices in a process-wide registry so
//!   that a store can be formatted, closed and opened again.
//! - `nvme` (the user-space driver over VFIO, one queue pair per reactor)
//!   and `spdk` (feature `spdk`) sit behind the same trait: everything a
//!   backend must do is [`BlockDevice::submit`], a batch of [`IoOp`]s that
//!   completes as a whole.
//!
//! Every call parks the calling coroutine, never the thread. Called from a
//! plain thread (format tools, tests) a backend may fall back to blocking
//! system calls.
//!
//! Offsets and lengths are multiples of the device's block size (4 KiB
//! here) and buffers come from [`dma::DmaBuf`], which O_DIRECT and DMA need.

pub mod dma;
pub mod malloc;
pub mod nvme;
#[cfg(feature = "spdk")]
pub mod spdk;
pub mod uring;

pub use dma::DmaBuf;

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The block size every backend supports; the store works in these units.
pub const BLOCK_SIZE: u64 = 4096;

/// Which backend a device path is opened with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backend {
    /// io_uring with O_DIRECT on a file or block device.
    #[default]
    Uring,
    /// A RAM device from the [`malloc`] registry (path = its name).
    Malloc,
    /// The user-space NVMe driver over VFIO: path = `nvme://PCI-ADDRESS/NSID`
    /// (see [`nvme`]).
    Nvme,
    /// An SPDK bdev by name (feature `spdk`; see `spdk`).
    Spdk,
}

/// One request of a batch. Buffers travel with the request and come back
/// with its completion: a device owns them while the I/O is in flight, so
/// they outlive it whatever happens to the caller.
#[derive(Debug)]
pub enum IoOp {
    /// Read `buf.len()` bytes at `offset` into `buf`.
    Read { offset: u64, buf: DmaBuf },
    /// Write `buf` at `offset`. Shared buffers let a caller keep reading
    /// the data (a cache) while the device writes it. With `fua` the write
    /// is stable when it completes (FUA / `RWF_DSYNC`): no flush needed.
    Write {
        offset: u64,
        buf: Arc<DmaBuf>,
        fua: bool,
    },
    /// Read into consecutive buffers starting at `offset`.
    Readv { offset: u64, bufs: Vec<DmaBuf> },
    /// Write consecutive buffers starting at `offset` (one device request);
    /// `fua` as for `Write`.
    Writev {
        offset: u64,
        bufs: Vec<Arc<DmaBuf>>,
        fua: bool,
    },
    /// Make every completed write stable (device cache flush / fdatasync).
    Flush,
    /// Make `len` bytes at `offset` read back as zeroes.
    WriteZeroes { offset: u64, len: u64 },
    /// Tell the device `len` bytes at `offset` are unused (discard/trim);
    /// their contents become unspecified.
    Unmap { offset: u64, len: u64 },
}

impl IoOp {
    /// Bytes the request transfers (0 for flush, zeroes and unmap).
    pub fn transfer_len(&self) -> u64 {
        match self {
            IoOp::Read { buf, .. } => buf.len() as u64,
            IoOp::Write { buf, .. } => buf.len() as u64,
            IoOp::Readv { bufs, .. } => bufs.iter().map(|b| b.len() as u64).sum(),
            IoOp::Writev { bufs, .. } => bufs.iter().map(|b| b.len() as u64).sum(),
            _ => 0,
        }
    }

    /// The data buffers of the request as `(address, length)`, in order:
    /// what a device that does its own DMA (NVMe, SPDK) hands the hardware.
    pub fn buffers(&self) -> Vec<(usize, usize)> {
        match self {
            IoOp::Read { buf, .. } => vec![(buf.as_ptr() as usize, buf.len())],
            IoOp::Write { buf, .. } => vec![(buf.as_ptr() as usize, buf.len())],
            IoOp::Readv { bufs, .. } => bufs
                .iter()
                .map(|b| (b.as_ptr() as usize, b.len()))
                .collect(),
            IoOp::Writev { bufs, .. } => bufs
                .iter()
                .map(|b| (b.as_ptr() as usize, b.len()))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The byte range the request touches, if any.
    pub fn range(&self) -> Option<(u64, u64)> {
        match self {
            IoOp::Read { offset, .. }
            | IoOp::Write { offset, .. }
            | IoOp::Readv { offset, .. }
            | IoOp::Writev { offset, .. } => Some((*offset, self.transfer_len())),
            IoOp::WriteZeroes { offset, len } | IoOp::Unmap { offset, len } => {
                Some((*offset, *len))
            }
            IoOp::Flush => None,
        }
    }
}

/// A finished request: the request (with its buffers) and its outcome.
#[derive(Debug)]
pub struct IoDone {
    pub op: IoOp,
    pub result: io::Result<()>,
}

/// What a device is.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// Path or name, as given when opened.
    pub name: String,
    /// Usable bytes.
    pub size: u64,
    /// Smallest I/O unit and alignment.
    pub block_size: u64,
    /// Backend name (`uring`, `malloc`, …).
    pub backend: &'static str,
}

/// Byte and request counters of one device (the basis of the store's
/// write-amplification figure).
#[derive(Default, Debug)]
pub struct DeviceStats {
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub flushes: AtomicU64,
    pub errors: AtomicU64,
}

/// A copy of [`DeviceStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStatsSnapshot {
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub errors: u64,
}

impl DeviceStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> DeviceStatsSnapshot {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DeviceStatsSnapshot {
            bytes_read: l(&self.bytes_read),
            bytes_written: l(&self.bytes_written),
            reads: l(&self.reads),
            writes: l(&self.writes),
            flushes: l(&self.flushes),
            errors: l(&self.errors),
        }
    }

    /// Counts a finished request.
    pub(crate) fn account(&self, op: &IoOp, ok: bool) {
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let n = op.transfer_len();
        match op {
            IoOp::Read { .. } | IoOp::Readv { .. } => {
                self.reads.fetch_add(1, Ordering::Relaxed);
                self.bytes_read.fetch_add(n, Ordering::Relaxed);
            }
            IoOp::Write { .. } | IoOp::Writev { .. } => {
                self.writes.fetch_add(1, Ordering::Relaxed);
                self.bytes_written.fetch_add(n, Ordering::Relaxed);
            }
            IoOp::Flush => {
                self.flushes.fetch_add(1, Ordering::Relaxed);
            }
            IoOp::WriteZeroes { .. } | IoOp::Unmap { .. } => {}
        }
    }
}

/// A block device on the reactors.
///
/// Implementations are `Send + Sync`: one device is used from every
/// reactor. Completion order within a batch is unspecified; a write is
/// stable only after a later `Flush` completed.
pub trait BlockDevice: Send + Sync {
    /// Name, size, block size, backend.
    fn info(&self) -> &DeviceInfo;

    /// The device's counters.
    fn stats(&self) -> &DeviceStats;

    /// Runs a batch of requests concurrently and returns when all of them
    /// finished, in the order given. Parks the calling coroutine.
    fn submit(&self, ops: Vec<IoOp>) -> Vec<IoDone>;

    /// Reads `buf.len()` bytes at `offset`; gives the buffer back.
    fn read(&self, offset: u64, buf: DmaBuf) -> (DmaBuf, io::Result<()>) {
        let d = one(self.submit(vec![IoOp::Read { offset, buf }]));
        match d.op {
            IoOp::Read { buf, .. } => (buf, d.result),
            _ => unreachable!("a read completes as a read"),
        }
    }

    /// Writes `buf` at `offset`.
    fn write(&self, offset: u64, buf: Arc<DmaBuf>) -> io::Result<()> {
        one(self.submit(vec![IoOp::Write {
            offset,
            buf,
            fua: false,
        }]))
        .result
    }

    /// Reads consecutive buffers starting at `offset` in one request.
    fn readv(&self, offset: u64, bufs: Vec<DmaBuf>) -> (Vec<DmaBuf>, io::Result<()>) {
        let d = one(self.submit(vec![IoOp::Readv { offset, bufs }]));
        match d.op {
            IoOp::Readv { bufs, .. } => (bufs, d.result),
            _ => unreachable!("a readv completes as a readv"),
        }
    }

    /// Writes consecutive buffers starting at `offset` in one request.
    fn writev(&self, offset: u64, bufs: Vec<Arc<DmaBuf>>) -> io::Result<()> {
        one(self.submit(vec![IoOp::Writev {
            offset,
            bufs,
            fua: false,
        }]))
        .result
    }

    /// Makes every completed write stable.
    fn flush(&self) -> io::Result<()> {
        one(self.submit(vec![IoOp::Flush])).result
    }

    /// Zeroes a range.
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        one(self.submit(vec![IoOp::WriteZeroes { offset, len }])).result
    }

    /// Discards a range.
    fn unmap(&self, offset: u64, len: u64) -> io::Result<()> {
        one(self.submit(vec![IoOp::Unmap { offset, len }])).result
    }
}

fn one(mut v: Vec<IoDone>) -> IoDone {
    v.pop().expect("a batch of one completes with one result")
}

/// Checks a request against the device's size and block alignment.
pub(crate) fn check_op(info: &DeviceInfo, op: &IoOp) -> io::Result<()> {
    let bad = |why: String| Err(io::Error::new(io::ErrorKind::InvalidInput, why));
    if let IoOp::Readv { bufs, .. } = op {
        if bufs.len() > 1024 {
            return bad(format!(
                "{}: more than 1024 buffers in one request",
                info.name
            ));
        }
    }
    if let IoOp::Writev { bufs, .. } = op {
        if bufs.len() > 1024 {
            return bad(format!(
                "{}: more than 1024 buffers in one request",
                info.name
            ));
        }
    }
    let Some((off, len)) = op.range() else {
        return Ok(());
    };
    let bs = info.block_size;
    if off % bs != 0 || len % bs != 0 {
        return bad(format!(
            "{}: request at {off} of {len} bytes is not aligned to {bs} bytes",
            info.name
        ));
    }
    if off.checked_add(len).is_none_or(|end| end > info.size) {
        return bad(format!(
            "{}: request at {off} of {len} bytes runs past the end ({} bytes)",
            info.name, info.size
        ));
    }
    Ok(())
}

/// Opens a device with the given backend: a path for `uring`, a registry
/// name for `malloc`.
pub fn open(path: &Path, backend: Backend) -> io::Result<Arc<dyn BlockDevice>> {
    // An `nvme://` name is never a file: whatever backend was asked for.
    let nvme_name = path.to_str().filter(|p| p.starts_with("nvme://"));
    if let Some(name) = nvme_name {
        return Ok(nvme::open(name)?);
    }
    match backend {
        Backend::Nvme => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: an NVMe device is named nvme://PCI-ADDRESS/NAMESPACE",
                path.display()
            ),
        )),
        #[cfg(feature = "spdk")]
        Backend::Spdk => Ok(spdk::open(&path.to_string_lossy())?),
        #[cfg(not(feature = "spdk"))]
        Backend::Spdk => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "{}: this build has no SPDK backend (build with --features spdk and SPDK_PATH)",
                path.display()
            ),
        )),
        Backend::Uring => Ok(Arc::new(uring::UringDevice::open(path)?)),
        Backend::Malloc => {
            let name = path.to_string_lossy();
            malloc::get(&name)
                .map(|d| d as Arc<dyn BlockDevice>)
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("no malloc device named '{name}'"),
                    )
                })
        }
    }
}
