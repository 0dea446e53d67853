//! Test fixtures for the NVMe/TCP target, used by the test daemon
//! (`ferrite-nvmf-testd`) and the tests until `ferrited` hosts the target.
//!
//! [`FileVolume`] stands in for a replicated volume in the multipath test:
//! two target processes open the same file, so both serve the same data
//! (the page cache keeps them coherent), as two gateways serve one
//! replicated volume. It is not a storage backend: no checksums, no
//! durability beyond the page cache, and its compare-and-write is atomic
//! only within one process.

use ferrite_engine::rt::migrate;
use ferrite_engine::volume::mem::MemVolume;
use ferrite_engine::volume::{
    check_range, AccessState, BlockVolume, IoError, VolumeInfo, VolumeProvider,
};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// A volume whose size and path state tests can change.
pub trait Adjustable: Send + Sync {
    fn resize(&self, size: u64);
    fn set_access_state(&self, s: AccessState);
}

impl Adjustable for MemVolume {
    fn resize(&self, size: u64) {
        MemVolume::resize(self, size)
    }
    fn set_access_state(&self, s: AccessState) {
        MemVolume::set_access_state(self, s)
    }
}

/// A volume in a file, read and written with pread/pwrite on the worker
/// pool (so that a slow disk never stalls a reactor).
pub struct FileVolume {
    name: String,
    uuid: [u8; 16],
    block_size: u32,
    size: AtomicU64,
    file: Arc<File>,
    access: AtomicU8,
    caw: Mutex<()>,
}

/// A uuid derived from a name, the same in every process (as a real
/// volume's uuid is the same on every gateway).
pub fn uuid_from_name(name: &str) -> [u8; 16] {
    let mut u = [0u8; 16];
    let mut c = crc32c::crc32c(b"ferrite-test-volume");
    for i in 0..4 {
        c = crc32c::crc32c_append(c, name.as_bytes());
        c = crc32c::crc32c_append(c, &[i as u8]);
        u[i * 4..i * 4 + 4].copy_from_slice(&c.to_be_bytes());
    }
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

impl FileVolume {
    /// Opens (creating if needed) `path` and makes it at least `size` bytes.
    pub fn open(name: &str, path: &Path, size: u64, block_size: u32) -> std::io::Result<Arc<Self>> {
        if !(block_size == 512 || block_size == 4096) || !size.is_multiple_of(block_size as u64) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "block size must be 512 or 4096 and divide the size",
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if file.metadata()?.len() < size {
            file.set_len(size)?;
        }
        Ok(Arc::new(Self {
            name: name.to_string(),
            uuid: uuid_from_name(name),
            block_size,
            size: AtomicU64::new(size),
            file: Arc::new(file),
            access: AtomicU8::new(0),
            caw: Mutex::new(()),
        }))
    }

    fn dev_err(&self, e: std::io::Error) -> IoError {
        IoError::Device {
            volume: self.name.clone(),
            detail: e.to_string(),
        }
    }

    fn on_workers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
        migrate::run_on(migrate::Target::Workers, f)
    }
}

impl Adjustable for FileVolume {
    fn resize(&self, size: u64) {
        if let Err(e) = self
            .file
            .set_len(size.max(self.file.metadata().map(|m| m.len()).unwrap_or(0)))
        {
            log::warn!("file volume {}: resize: {e}", self.name);
        }
        self.size.store(size, Ordering::Release);
    }
    fn set_access_state(&self, s: AccessState) {
        self.access.store(s as u8, Ordering::Release);
    }
}

impl BlockVolume for FileVolume {
    fn info(&self) -> VolumeInfo {
        VolumeInfo {
            name: self.name.clone(),
            uuid: self.uuid,
            block_size: self.block_size,
            size: self.size.load(Ordering::Acquire),
            thin: false,
        }
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        check_range(&self.info(), offset, buf.len() as u64)?;
        let f = self.file.clone();
        Self::on_workers(move || f.read_exact_at(buf, offset)).map_err(|e| self.dev_err(e))
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        check_range(&self.info(), offset, data.len() as u64)?;
        let f = self.file.clone();
        Self::on_workers(move || f.write_all_at(data, offset)).map_err(|e| self.dev_err(e))
    }

    fn flush(&self) -> Result<(), IoError> {
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, _deallocate: bool) -> Result<(), IoError> {
        check_range(&self.info(), offset, len)?;
        let f = self.file.clone();
        Self::on_workers(move || {
            let zero = vec![0u8; 1 << 20];
            let mut done = 0;
            while done < len {
                let n = (len - done).min(zero.len() as u64);
                f.write_all_at(&zero[..n as usize], offset + done)?;
                done += n;
            }
            Ok(())
        })
        .map_err(|e| self.dev_err(e))
    }

    fn unmap(&self, offset: u64, len: u64) -> Result<(), IoError> {
        self.write_zeroes(offset, len, true)
    }

    fn compare_and_write(&self, offset: u64, compare: &[u8], write: &[u8]) -> Result<(), IoError> {
        check_range(&self.info(), offset, write.len() as u64)?;
        let _g = self.caw.lock().unwrap_or_else(|e| e.into_inner());
        let mut cur = vec![0u8; compare.len()];
        self.read(offset, &mut cur)?;
        if let Some(i) = cur.iter().zip(compare).position(|(a, b)| a != b) {
            return Err(IoError::CompareMismatch {
                volume: self.name.clone(),
                offset: offset + i as u64,
            });
        }
        self.write(offset, write)
    }

    fn access_state(&self) -> AccessState {
        match self.access.load(Ordering::Acquire) {
            0 => AccessState::Optimized,
            1 => AccessState::NonOptimized,
            _ => AccessState::Inaccessible,
        }
    }
}

/// Named test volumes of any kind, adjustable by name.
/// A volume both as the target sees it and as tests adjust it.
type Entry = (Arc<dyn BlockVolume>, Arc<dyn Adjustable>);

#[derive(Default)]
pub struct TestProvider {
    vols: RwLock<BTreeMap<String, Entry>>,
}

impl TestProvider {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn add<V: BlockVolume + Adjustable + 'static>(&self, v: Arc<V>) {
        let name = v.info().name;
        self.vols
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, (v.clone(), v));
    }

    pub fn adjustable(&self, name: &str) -> Option<Arc<dyn Adjustable>> {
        self.vols
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|v| v.1.clone())
    }
}

impl VolumeProvider for TestProvider {
    fn open(&self, name: &str) -> Result<Arc<dyn BlockVolume>, IoError> {
        self.vols
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|v| v.0.clone())
            .ok_or_else(|| IoError::Gone {
                volume: name.to_string(),
            })
    }
    fn list(&self) -> Vec<String> {
        self.vols
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

/// Parses an access state as the test RPC and CLI spell it.
pub fn parse_access_state(s: &str) -> Option<AccessState> {
    match s {
        "optimized" => Some(AccessState::Optimized),
        "non-optimized" | "non_optimized" => Some(AccessState::NonOptimized),
        "inaccessible" => Some(AccessState::Inaccessible),
        _ => None,
    }
}
