//! A volume in RAM, for front-end tests and benchmarks of the protocol
//! layers alone. Thin: 64 KiB chunks are allocated on first write.

use super::{check_range, AccessState, BlockVolume, IoError, VolumeInfo, VolumeProvider};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};

const CHUNK: u64 = 64 * 1024;

/// A RAM-backed [`BlockVolume`].
pub struct MemVolume {
    name: String,
    uuid: [u8; 16],
    block_size: u32,
    size: AtomicU64,
    chunks: RwLock<HashMap<u64, Box<[u8]>>>,
    /// Serialises compare-and-write against other writes.
    caw: Mutex<()>,
    access: AtomicU8,
}

impl MemVolume {
    pub fn new(name: &str, size: u64, block_size: u32) -> Arc<Self> {
        assert!(
            block_size == 512 || block_size == 4096,
            "block size must be 512 or 4096"
        );
        assert!(
            size % block_size as u64 == 0,
            "size must be a multiple of the block size"
        );
        // A stable uuid derived from the name, so tests see the same ids.
        let h1 = crc32c::crc32c(name.as_bytes());
        let h2 = crc32c::crc32c_append(h1, b"ferrite-mem-volume");
        let h3 = crc32c::crc32c_append(h2, name.as_bytes());
        let h4 = crc32c::crc32c_append(h3, b"uuid");
        let mut uuid = [0u8; 16];
        for (i, h) in [h1, h2, h3, h4].iter().enumerate() {
            uuid[i * 4..i * 4 + 4].copy_from_slice(&h.to_be_bytes());
        }
        uuid[6] = (uuid[6] & 0x0f) | 0x40; // version 4 layout
        uuid[8] = (uuid[8] & 0x3f) | 0x80; // RFC 4122 variant
        Arc::new(Self {
            name: name.to_string(),
            uuid,
            block_size,
            size: AtomicU64::new(size),
            chunks: RwLock::new(HashMap::new()),
            caw: Mutex::new(()),
            access: AtomicU8::new(0),
        })
    }

    /// Grows (or shrinks) the volume, as a resize through the meta service would.
    pub fn resize(&self, size: u64) {
        assert!(size % self.block_size as u64 == 0);
        self.size.store(size, Ordering::Release);
    }

    /// Sets the path state reported to ALUA/ANA (tests of multipath).
    pub fn set_access_state(&self, s: AccessState) {
        self.access.store(
            match s {
                AccessState::Optimized => 0,
                AccessState::NonOptimized => 1,
                AccessState::Inaccessible => 2,
            },
            Ordering::Release,
        );
    }

    /// Bytes of RAM holding data (thin provisioning at work).
    pub fn allocated_bytes(&self) -> u64 {
        self.chunks.read().unwrap_or_else(|e| e.into_inner()).len() as u64 * CHUNK
    }

    fn for_each_piece(offset: u64, len: u64, mut f: impl FnMut(u64, usize, usize, usize)) {
        // (chunk index, offset in chunk, offset in caller's buffer, length)
        let mut done = 0u64;
        while done < len {
            let pos = offset + done;
            let idx = pos / CHUNK;
            let in_chunk = (pos % CHUNK) as usize;
            let n = ((CHUNK - pos % CHUNK).min(len - done)) as usize;
            f(idx, in_chunk, done as usize, n);
            done += n as u64;
        }
    }

    fn read_locked(&self, chunks: &HashMap<u64, Box<[u8]>>, offset: u64, buf: &mut [u8]) {
        Self::for_each_piece(offset, buf.len() as u64, |idx, at, bo, n| {
            match chunks.get(&idx) {
                Some(c) => buf[bo..bo + n].copy_from_slice(&c[at..at + n]),
                None => buf[bo..bo + n].fill(0),
            }
        });
    }

    fn write_locked(chunks: &mut HashMap<u64, Box<[u8]>>, offset: u64, data: &[u8]) {
        Self::for_each_piece(offset, data.len() as u64, |idx, at, bo, n| {
            let c = chunks
                .entry(idx)
                .or_insert_with(|| vec![0u8; CHUNK as usize].into_boxed_slice());
            c[at..at + n].copy_from_slice(&data[bo..bo + n]);
        });
    }
}

impl BlockVolume for MemVolume {
    fn info(&self) -> VolumeInfo {
        VolumeInfo {
            name: self.name.clone(),
            uuid: self.uuid,
            block_size: self.block_size,
            size: self.size.load(Ordering::Acquire),
            thin: true,
        }
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        check_range(&self.info(), offset, buf.len() as u64)?;
        let chunks = self.chunks.read().unwrap_or_else(|e| e.into_inner());
        self.read_locked(&chunks, offset, buf);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        check_range(&self.info(), offset, data.len() as u64)?;
        let _caw = self.caw.lock().unwrap_or_else(|e| e.into_inner());
        let mut chunks = self.chunks.write().unwrap_or_else(|e| e.into_inner());
        Self::write_locked(&mut chunks, offset, data);
        Ok(())
    }

    fn flush(&self) -> Result<(), IoError> {
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, _deallocate: bool) -> Result<(), IoError> {
        check_range(&self.info(), offset, len)?;
        let _caw = self.caw.lock().unwrap_or_else(|e| e.into_inner());
        let mut chunks = self.chunks.write().unwrap_or_else(|e| e.into_inner());
        Self::for_each_piece(offset, len, |idx, at, _, n| {
            if at == 0 && n as u64 == CHUNK {
                chunks.remove(&idx);
            } else if let Some(c) = chunks.get_mut(&idx) {
                c[at..at + n].fill(0);
            }
        });
        Ok(())
    }

    fn unmap(&self, offset: u64, len: u64) -> Result<(), IoError> {
        self.write_zeroes(offset, len, true)
    }

    fn compare_and_write(&self, offset: u64, compare: &[u8], write: &[u8]) -> Result<(), IoError> {
        if compare.len() != write.len() {
            return Err(IoError::Misaligned {
                volume: self.name.clone(),
                offset,
                len: write.len() as u64,
                block_size: self.block_size,
            });
        }
        check_range(&self.info(), offset, write.len() as u64)?;
        let _caw = self.caw.lock().unwrap_or_else(|e| e.into_inner());
        let mut chunks = self.chunks.write().unwrap_or_else(|e| e.into_inner());
        let mut cur = vec![0u8; compare.len()];
        self.read_locked(&chunks, offset, &mut cur);
        if let Some(i) = cur.iter().zip(compare).position(|(a, b)| a != b) {
            return Err(IoError::CompareMismatch {
                volume: self.name.clone(),
                offset: offset + i as u64,
            });
        }
        Self::write_locked(&mut chunks, offset, write);
        Ok(())
    }

    fn access_state(&self) -> AccessState {
        match self.access.load(Ordering::Acquire) {
            0 => AccessState::Optimized,
            1 => AccessState::NonOptimized,
            _ => AccessState::Inaccessible,
        }
    }
}

/// A fixed set of named volumes.
#[derive(Default)]
pub struct MemProvider {
    vols: RwLock<HashMap<String, Arc<MemVolume>>>,
}

impl MemProvider {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn add(&self, v: Arc<MemVolume>) {
        self.vols
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(v.name.clone(), v);
    }

    pub fn get(&self, name: &str) -> Option<Arc<MemVolume>> {
        self.vols
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }
}

impl VolumeProvider for MemProvider {
    fn open(&self, name: &str) -> Result<Arc<dyn BlockVolume>, IoError> {
        self.get(name)
            .map(|v| v as Arc<dyn BlockVolume>)
            .ok_or_else(|| IoError::Gone {
                volume: name.to_string(),
            })
    }

    fn list(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .vols
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_writes_and_zeroes() {
        let v = MemVolume::new("t", 1 << 20, 512);
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let data = &data[..(200_000 / 512) * 512];
        v.write(65536 - 512, data).unwrap();
        let mut back = vec![0u8; data.len()];
        v.read(65536 - 512, &mut back).unwrap();
        assert_eq!(back, data);
        v.write_zeroes(65536, 65536, true).unwrap();
        v.read(65536, &mut back[..512]).unwrap();
        assert!(back[..512].iter().all(|&b| b == 0));
        assert!(matches!(
            v.read(1 << 20, &mut back[..512]),
            Err(IoError::OutOfRange { .. })
        ));
        assert!(matches!(
            v.read(1, &mut back[..512]),
            Err(IoError::Misaligned { .. })
        ));
    }

    #[test]
    fn compare_and_write_is_all_or_nothing() {
        let v = MemVolume::new("caw", 1 << 20, 512);
        v.write(0, &[7u8; 512]).unwrap();
        assert!(matches!(
            v.compare_and_write(0, &[8u8; 512], &[9u8; 512]),
            Err(IoError::CompareMismatch { offset: 0, .. })
        ));
        v.compare_and_write(0, &[7u8; 512], &[9u8; 512]).unwrap();
        let mut b = [0u8; 512];
        v.read(0, &mut b).unwrap();
        assert_eq!(b, [9u8; 512]);
    }
}
