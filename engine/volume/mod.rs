//! The volume layer: what front ends (NBD, iSCSI, NVMe/TCP) call.
//!
//! A [`BlockVolume`] is a byte-addressed block device with a logical block
//! size. Its methods are coroutine-blocking: called from a coroutine they
//! park it until the I/O is durable (writes) or the data is in the buffer
//! (reads); the implementation routes the I/O to the reactor and node that
//! own the target extent. Front ends hold an `Arc<dyn BlockVolume>` and may
//! call it from any reactor.
//!
//! Errors carry context (which volume, which extent, which offset) and map
//! to protocol status codes in each front end.

pub mod client;
pub mod local;
pub mod mem;

use crate::bdev::DmaBuf;
use std::fmt;
use std::sync::Arc;

/// Why a volume I/O failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IoError {
    /// The range is not inside the volume.
    #[error("volume {volume}: range {offset}+{len} is beyond its end ({size} bytes)")]
    OutOfRange {
        volume: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    /// Offset or length is not a multiple of the logical block size.
    #[error(
        "volume {volume}: range {offset}+{len} is not aligned to its {block_size}-byte blocks"
    )]
    Misaligned {
        volume: String,
        offset: u64,
        len: u64,
        block_size: u32,
    },
    /// Stored data failed its checksum and no good copy could be read.
    #[error("volume {volume}: checksum mismatch in extent {extent} at offset {offset}")]
    Checksum {
        volume: String,
        extent: u64,
        offset: u64,
    },
    /// No space left to allocate the blocks of this write.
    #[error("volume {volume}: no space left ({detail})")]
    NoSpace { volume: String, detail: String },
    /// Not enough replicas (or the meta service) can be reached to do this
    /// I/O safely; retrying later may succeed.
    #[error("volume {volume}: unavailable: {detail}")]
    Unavailable { volume: String, detail: String },
    /// The device under a replica failed the I/O.
    #[error("volume {volume}: device error: {detail}")]
    Device { volume: String, detail: String },
    /// The volume was deleted or is being deleted.
    #[error("volume {volume} no longer exists")]
    Gone { volume: String },
    /// A compare-and-write found different data (SCSI COMPARE AND WRITE,
    /// NVMe Compare): `offset` is the first byte that differs.
    #[error("volume {volume}: compare failed at offset {offset}")]
    CompareMismatch { volume: String, offset: u64 },
}

/// How well this node can serve a volume, for ALUA (iSCSI) and ANA (NVMe-oF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessState {
    /// A replica is local: the preferred path.
    Optimized,
    /// Served, but through another node.
    NonOptimized,
    /// This node cannot serve it now (e.g. cut off from the cluster).
    Inaccessible,
}

/// What a front end needs to describe a volume to initiators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    /// Stable for the volume's life: NVMe NGUID/UUID, SCSI NAA/EUI ids.
    pub uuid: [u8; 16],
    /// Logical block size: 512 or 4096.
    pub block_size: u32,
    /// Current size in bytes (a multiple of `block_size`).
    pub size: u64,
    /// Whether UNMAP/TRIM/deallocate free space (thin provisioning).
    pub thin: bool,
}

/// A block volume as front ends see it. Every method may park the calling
/// coroutine; none may be called on a reactor's scheduler context.
pub trait BlockVolume: Send + Sync {
    /// Name, uuid, block size, current size.
    fn info(&self) -> VolumeInfo;

    /// Reads `buf.len()` bytes at `offset`. Unwritten space reads as zeroes.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError>;

    /// Writes `data` at `offset`; returns when it is durable on every live
    /// replica (so FUA needs nothing more).
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), IoError>;

    /// [`Self::write`] from a DMA buffer the front end received the payload
    /// into: a volume that can, hands its blocks to the store without a
    /// copy. By default, a plain write of its bytes.
    fn write_shared(&self, offset: u64, data: Arc<DmaBuf>) -> Result<(), IoError> {
        self.write(offset, data.as_slice())
    }

    /// Makes every acknowledged write durable. Writes already are when they
    /// return, so this is cheap; it exists for front ends' FLUSH commands.
    fn flush(&self) -> Result<(), IoError>;

    /// Zeroes `len` bytes at `offset`; with `deallocate` the space may be
    /// freed (thin volumes), and reads return zeroes either way.
    fn write_zeroes(&self, offset: u64, len: u64, deallocate: bool) -> Result<(), IoError>;

    /// Frees `len` bytes at `offset` (TRIM, UNMAP, deallocate); they read as
    /// zeroes afterwards.
    fn unmap(&self, offset: u64, len: u64) -> Result<(), IoError>;

    /// Atomically: if the data at `offset` equals `compare`, writes `write`
    /// (same length) there; otherwise fails with `CompareMismatch` and
    /// writes nothing. Used by SCSI COMPARE AND WRITE (VMware ATS) and NVMe
    /// Compare+Write fused commands.
    fn compare_and_write(&self, offset: u64, compare: &[u8], write: &[u8]) -> Result<(), IoError>;

    /// Whether this node is a good path to the volume right now.
    fn access_state(&self) -> AccessState {
        AccessState::Optimized
    }
}

/// Checks that `offset..offset+len` lies in a volume of `info`, aligned to
/// its blocks. Every implementation calls this first.
pub fn check_range(info: &VolumeInfo, offset: u64, len: u64) -> Result<(), IoError> {
    let bs = info.block_size as u64;
    if offset % bs != 0 || len % bs != 0 {
        return Err(IoError::Misaligned {
            volume: info.name.clone(),
            offset,
            len,
            block_size: info.block_size,
        });
    }
    match offset.checked_add(len) {
        Some(end) if end <= info.size => Ok(()),
        _ => Err(IoError::OutOfRange {
            volume: info.name.clone(),
            offset,
            len,
            size: info.size,
        }),
    }
}

/// Finds volumes by name for front ends (the node's volume client in
/// `ferrited`, a fixed set of [`mem::MemVolume`]s in tests).
pub trait VolumeProvider: Send + Sync {
    /// Opens a volume for I/O, or says why not.
    fn open(&self, name: &str) -> Result<Arc<dyn BlockVolume>, IoError>;
    /// The names of the volumes this provider can open.
    fn list(&self) -> Vec<String>;
}

impl fmt::Display for AccessState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AccessState::Optimized => "optimized",
            AccessState::NonOptimized => "non-optimized",
            AccessState::Inaccessible => "inaccessible",
        })
    }
}
