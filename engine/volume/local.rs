//! Extent I/O on this node's chunk store: the whole data path of a
//! one-node Ferrite, and the local leg of a replicated write.
//!
//! The store works in 4 KiB blocks; volumes may have 512-byte blocks. A
//! piece that does not cover whole 4 KiB blocks is done as read, patch,
//! write of the blocks around it. Every write takes the range locks of the
//! 64 KiB regions it touches (striped over a fixed table), so two such
//! patches of one block cannot lose each other's bytes, and so compare-and-
//! write is atomic against every other write to its blocks.

use super::client::{ExtentIo, ExtentMeta, VolumeMeta};
use super::{AccessState, IoError};
use crate::bdev::DmaBuf;
use crate::rt::sync::{Mutex as CoMutex, MutexGuard};
use crate::store::{ChunkStore, StoreError};
use std::sync::Arc;

const BLOCK: u64 = 4096;
const REGION: u64 = 64 * 1024;
const STRIPES: usize = 1024;

/// [`ExtentIo`] on the local [`ChunkStore`].
pub struct LocalStoreIo {
    store: Arc<ChunkStore>,
    locks: Vec<CoMutex<()>>,
}

/// Which extent an operation is on, with what error messages need.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub volume: &'a str,
    pub extent: u64,
    /// The extent's position in its volume (for volume offsets in errors).
    pub index: u64,
    pub extent_size: u64,
}

impl<'a> Target<'a> {
    pub fn of(vol: &'a VolumeMeta, ext: &ExtentMeta) -> Self {
        Self {
            volume: &vol.name,
            extent: ext.id,
            index: ext.index,
            extent_size: vol.extent_size,
        }
    }
}

/// Held range locks (released on drop).
pub struct RangeGuard<'a> {
    _guards: Vec<MutexGuard<'a, ()>>,
}

impl LocalStoreIo {
    pub fn new(store: Arc<ChunkStore>) -> Arc<Self> {
        Arc::new(Self {
            store,
            locks: (0..STRIPES).map(|_| CoMutex::new(())).collect(),
        })
    }

    pub fn store(&self) -> &Arc<ChunkStore> {
        &self.store
    }

    /// Locks the 64 KiB regions of `[offset, offset+len)` of an extent, in
    /// ascending stripe order (a fixed order: no deadlock between writers).
    pub fn lock_range(&self, extent: u64, offset: u64, len: u64) -> RangeGuard<'_> {
        let first = offset / REGION;
        let last = (offset + len.max(1) - 1) / REGION;
        let mut stripes: Vec<usize> = (first..=last).map(|r| stripe(extent, r)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        RangeGuard {
            _guards: stripes.into_iter().map(|s| self.locks[s].lock()).collect(),
        }
    }

    /// Reads any 512-aligned range, through the blocks around it if needed.
    /// A never-written extent reads as zeroes.
    pub fn read_at(&self, t: Target<'_>, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let len = buf.len() as u64;
        if offset % BLOCK == 0 && len % BLOCK == 0 {
            return self.store_read(t, offset, buf);
        }
        let start = offset / BLOCK * BLOCK;
        let end = (offset + len).div_ceil(BLOCK) * BLOCK;
        let mut tmp = vec![0u8; (end - start) as usize];
        self.store_read(t, start, &mut tmp)?;
        let at = (offset - start) as usize;
        buf.copy_from_slice(&tmp[at..at + buf.len()]);
        Ok(())
    }

    fn store_read(&self, t: Target<'_>, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        match self.store.read(t.extent, offset, buf) {
            Ok(()) => Ok(()),
            // Allocated in the catalog but never written here: zeroes.
            Err(StoreError::NoSuchExtent { .. }) => {
                buf.fill(0);
                Ok(())
            }
            Err(e) => Err(map_err(t, offset, e)),
        }
    }

    /// Writes whole blocks, creating the extent on its first write.
    fn store_write(&self, t: Target<'_>, offset: u64, data: &[u8]) -> Result<(), IoError> {
        self.creating_extent(t, offset, || self.store.write(t.extent, offset, data))
    }

    /// Runs `write`; if the extent does not exist yet, creates it and runs
    /// `write` again.
    fn creating_extent(
        &self,
        t: Target<'_>,
        offset: u64,
        write: impl Fn() -> Result<(), StoreError>,
    ) -> Result<(), IoError> {
        match write() {
            Err(StoreError::NoSuchExtent { .. }) => {
                match self.store.create_extent(t.extent, t.extent_size) {
                    Ok(()) | Err(StoreError::ExtentExists { .. }) => {}
                    Err(e) => return Err(map_err(t, offset, e)),
                }
                write().map_err(|e| map_err(t, offset, e))
            }
            r => r.map_err(|e| map_err(t, offset, e)),
        }
    }

    /// [`Self::write_locked`] from a shared DMA buffer: a block-aligned
    /// range goes to the store without a copy where the store can take the
    /// buffer's blocks as they are (`ChunkStore::write_shared`).
    pub fn write_locked_shared(
        &self,
        t: Target<'_>,
        offset: u64,
        data: &Arc<DmaBuf>,
    ) -> Result<(), IoError> {
        if offset % BLOCK != 0 || data.len() as u64 % BLOCK != 0 {
            return self.write_locked(t, offset, data.as_slice());
        }
        self.creating_extent(t, offset, || {
            self.store.write_shared(t.extent, offset, data)
        })
    }

    /// Writes any 512-aligned range; the caller holds the range locks.
    pub fn write_locked(&self, t: Target<'_>, offset: u64, data: &[u8]) -> Result<(), IoError> {
        let len = data.len() as u64;
        if offset % BLOCK == 0 && len % BLOCK == 0 {
            return self.store_write(t, offset, data);
        }
        let start = offset / BLOCK * BLOCK;
        let end = (offset + len).div_ceil(BLOCK) * BLOCK;
        let mut tmp = vec![0u8; (end - start) as usize];
        // Only the first and last blocks hold bytes we do not overwrite.
        self.read_at(t, start, &mut tmp[..BLOCK as usize])?;
        if end - start > BLOCK {
            let last = (end - start - BLOCK) as usize;
            self.read_at(t, end - BLOCK, &mut tmp[last..])?;
        }
        let at = (offset - start) as usize;
        tmp[at..at + data.len()].copy_from_slice(data);
        self.store_write(t, start, &tmp)
    }

    /// Zeroes any 512-aligned range (freeing whole blocks with
    /// `deallocate`); the caller holds the range locks.
    pub fn zero_locked(
        &self,
        t: Target<'_>,
        offset: u64,
        len: u64,
        deallocate: bool,
    ) -> Result<(), IoError> {
        let end = offset + len;
        let (start_block, end_block) = (offset.div_ceil(BLOCK) * BLOCK, end / BLOCK * BLOCK);
        if start_block >= end_block {
            // No whole block inside: patch the range in place.
            return self.write_locked(t, offset, &vec![0u8; len as usize]);
        }
        if offset < start_block {
            self.write_locked(t, offset, &vec![0u8; (start_block - offset) as usize])?;
        }
        if end_block < end {
            self.write_locked(t, end_block, &vec![0u8; (end - end_block) as usize])?;
        }
        if deallocate {
            return match self
                .store
                .unmap(t.extent, start_block, end_block - start_block)
            {
                Ok(()) | Err(StoreError::NoSuchExtent { .. }) => Ok(()),
                Err(e) => Err(map_err(t, start_block, e)),
            };
        }
        // Zeroes that stay allocated: written in pieces of at most 1 MiB.
        let chunk = vec![0u8; (1 << 20).min(end_block - start_block) as usize];
        let mut pos = start_block;
        while pos < end_block {
            let n = (chunk.len() as u64).min(end_block - pos) as usize;
            self.store_write(t, pos, &chunk[..n])?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Compares and, if equal, writes; the caller holds the range locks.
    pub fn compare_and_write_locked(
        &self,
        t: Target<'_>,
        offset: u64,
        compare: &[u8],
        write: &[u8],
    ) -> Result<(), IoError> {
        let mut cur = vec![0u8; compare.len()];
        self.read_at(t, offset, &mut cur)?;
        if let Some(i) = cur.iter().zip(compare).position(|(a, b)| a != b) {
            return Err(IoError::CompareMismatch {
                volume: t.volume.to_string(),
                offset: t.index * t.extent_size + offset + i as u64,
            });
        }
        self.write_locked(t, offset, write)
    }
}

fn stripe(extent: u64, region: u64) -> usize {
    let h = extent.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ region.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    (h >> 32) as usize % STRIPES
}

/// A store error as a volume error, with the volume's byte offset.
pub fn map_err(t: Target<'_>, ext_offset: u64, e: StoreError) -> IoError {
    let volume = t.volume.to_string();
    let base = t.index * t.extent_size;
    match e {
        StoreError::NoSpace { .. } | StoreError::NoMetadataSpace { .. } => IoError::NoSpace {
            volume,
            detail: e.to_string(),
        },
        StoreError::Checksum { extent, offset, .. } => IoError::Checksum {
            volume,
            extent,
            offset: base + offset,
        },
        StoreError::OutOfRange {
            offset, len, size, ..
        } => IoError::OutOfRange {
            volume,
            offset: base + offset,
            len,
            size: base + size,
        },
        StoreError::Misaligned { offset, len, .. } => IoError::Misaligned {
            volume,
            offset: base + offset,
            len,
            block_size: 512,
        },
        other => IoError::Device {
            volume,
            detail: format!(
                "extent {} at volume offset {}: {other}",
                t.extent,
                base + ext_offset
            ),
        },
    }
}

impl ExtentIo for LocalStoreIo {
    fn read(
        &self,
        vol: &VolumeMeta,
        ext: &ExtentMeta,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), IoError> {
        self.read_at(Target::of(vol, ext), offset, buf)
    }

    fn write(
        &self,
        vol: &VolumeMeta,
        ext: &ExtentMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), IoError> {
        let _g = self.lock_range(ext.id, offset, data.len() as u64);
        self.write_locked(Target::of(vol, ext), offset, data)
    }

    fn write_shared(
        &self,
        vol: &VolumeMeta,
        ext: &ExtentMeta,
        offset: u64,
        data: &Arc<DmaBuf>,
    ) -> Result<(), IoError> {
        let _g = self.lock_range(ext.id, offset, data.len() as u64);
        self.write_locked_shared(Target::of(vol, ext), offset, data)
    }

    fn write_zeroes(
        &self,
        vol: &VolumeMeta,
        ext: &ExtentMeta,
        offset: u64,
        len: u64,
        deallocate: bool,
    ) -> Result<(), IoError> {
        let _g = self.lock_range(ext.id, offset, len);
        self.zero_locked(Target::of(vol, ext), offset, len, deallocate)
    }

    fn compare_and_write(
        &self,
        vol: &VolumeMeta,
        ext: &ExtentMeta,
        offset: u64,
        compare: &[u8],
        write: &[u8],
    ) -> Result<(), IoError> {
        let _g = self.lock_range(ext.id, offset, write.len() as u64);
        self.compare_and_write_locked(Target::of(vol, ext), offset, compare, write)
    }

    fn flush(&self) -> Result<(), IoError> {
        // Every write is durable when it returns.
        Ok(())
    }

    fn access_state(&self, _ext: &ExtentMeta) -> AccessState {
        AccessState::Optimized
    }
}
