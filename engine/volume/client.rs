//! The volume client: turns a volume's byte ranges into extent I/O.
//!
//! It keeps a cached copy of each open volume's metadata (size, extent
//! size, the extent map), splits every I/O at extent boundaries, reads
//! unallocated space as zeroes, allocates an extent on its first write
//! (thin provisioning) and sends each piece to [`ExtentIo`], which is the
//! local chunk store on a single node and the replica layer in a cluster.
//!
//! The cache is refreshed when the catalog says the volume's generation
//! moved (a resize, a replica-set change), when extent I/O reports a stale
//! generation, and at most every [`REFRESH_EVERY`] otherwise, so a resize
//! done through another node shows up here without a restart.

use super::{check_range, AccessState, BlockVolume, IoError, VolumeInfo, VolumeProvider};
use crate::bdev::DmaBuf;
use crate::metrics::volume::{MeteredVolume, VolumeStats};
use crate::rt::sync::Mutex as CoMutex;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How stale a cached volume may get before the client asks the catalog.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// One extent as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentMeta {
    /// Cluster-wide id; the chunk stores key their extents by it.
    pub id: u64,
    /// Position in the volume (`offset / extent_size`).
    pub index: u64,
    /// Node ids holding a replica; the first is the primary.
    pub replicas: Vec<String>,
    /// Bumped by meta on every replica-set change; stale I/O is refused.
    pub generation: u64,
}

/// A volume as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMeta {
    pub name: String,
    pub uuid: [u8; 16],
    pub pool: String,
    pub size: u64,
    pub block_size: u32,
    pub extent_size: u64,
    pub replica_count: u32,
    /// Replicas that must have a write before it is acknowledged (0: the
    /// default for the replica count).
    pub min_replicas: u32,
    pub thin: bool,
    /// Bumped by meta on every change of the volume or its extent map.
    pub generation: u64,
    /// Allocated extents by index.
    pub extents: HashMap<u64, ExtentMeta>,
}

/// Where volume metadata comes from: the meta service in `ferrited`.
/// Calls may park the coroutine (they are remote calls).
pub trait VolumeCatalog: Send + Sync {
    fn get_volume(&self, name: &str) -> Result<VolumeMeta, IoError>;
    /// Allocates (or returns, if it exists) the extent at `index`.
    fn allocate_extent(&self, volume: &str, index: u64) -> Result<ExtentMeta, IoError>;
    fn list_volumes(&self) -> Result<Vec<String>, IoError>;
}

/// Where extent I/O goes. Offsets are relative to the extent; offsets and
/// lengths are multiples of 512. Errors name the extent.
pub trait ExtentIo: Send + Sync {
    fn read(
        &self,
        vol: &VolumeMeta,
        ext: &ExtentMeta,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), IoError>;
    fn write(
        &self,
        vol: &VolumeMeta,
        ext: &ExtentMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), IoError>;
    /// [`Self::write`] from a DMA buffer that the store may keep without a
    /// copy; by default, a plain write of its bytes.
    fn write_shared(
        &self,
        vol: &VolumeMeta,
        ext: &ExtentMeta,
        offset: u64,
        data: &Arc<DmaBuf>,
    ) -> Result<(), IoError> {
        self.write(vol, ext, offset, data.as_slice())
    }
    fn write_zeroes(
        &self,
        vol: &VolumeMeta,
        ext: &ExtentMeta,
        offset: u64,
        len: u64,
        deallocate: bool,
    ) -> Result<(), IoError>;
    fn compare_and_write(
        &self,
        vol: &VolumeMeta,
        ext: &ExtentMeta,
        offset: u64,
        compare: &[u8],
        write: &[u8],
    ) -> Result<(), IoError>;
    fn flush(&self) -> Result<(), IoError>;
    /// How well this node serves the extent (local replica or not).
    fn access_state(&self, _ext: &ExtentMeta) -> AccessState {
        AccessState::Optimized
    }
}

/// The node's volume client: a [`VolumeProvider`] for the front ends.
pub struct VolumeClient {
    catalog: Arc<dyn VolumeCatalog>,
    io: Arc<dyn ExtentIo>,
    open: RwLock<HashMap<String, Arc<Volume>>>,
    stats: Mutex<HashMap<String, Arc<VolumeStats>>>,
}

impl VolumeClient {
    pub fn new(catalog: Arc<dyn VolumeCatalog>, io: Arc<dyn ExtentIo>) -> Arc<Self> {
        Arc::new(Self {
            catalog,
            io,
            open: RwLock::new(HashMap::new()),
            stats: Mutex::new(HashMap::new()),
        })
    }

    /// The I/O counters of every volume opened on this node.
    pub fn stats(&self) -> Vec<(String, Arc<VolumeStats>)> {
        let mut v: Vec<_> = self
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Drops the cached copy of a volume (after it was deleted or resized
    /// through this node), so the next access asks the catalog.
    pub fn invalidate(&self, name: &str) {
        if let Some(v) = self
            .open
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            v.force_refresh();
        }
    }

    fn open_volume(&self, name: &str) -> Result<Arc<Volume>, IoError> {
        if let Some(v) = self
            .open
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(v.clone());
        }
        let meta = self.catalog.get_volume(name)?;
        let v = Arc::new(Volume {
            name: name.to_string(),
            catalog: self.catalog.clone(),
            io: self.io.clone(),
            state: RwLock::new(Cached {
                meta,
                fetched: Instant::now(),
            }),
            alloc_lock: CoMutex::new(()),
        });
        let mut open = self.open.write().unwrap_or_else(|e| e.into_inner());
        Ok(open.entry(name.to_string()).or_insert(v).clone())
    }
}

impl VolumeProvider for VolumeClient {
    fn open(&self, name: &str) -> Result<Arc<dyn BlockVolume>, IoError> {
        let v = self.open_volume(name)?;
        let stats = self
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone();
        Ok(MeteredVolume::new(v, stats))
    }

    fn list(&self) -> Vec<String> {
        self.catalog.list_volumes().unwrap_or_default()
    }
}

struct Cached {
    meta: VolumeMeta,
    fetched: Instant,
}

/// One open volume.
pub struct Volume {
    name: String,
    catalog: Arc<dyn VolumeCatalog>,
    io: Arc<dyn ExtentIo>,
    state: RwLock<Cached>,
    /// Serialises extent allocation so concurrent first writes to one
    /// extent make one catalog call.
    alloc_lock: CoMutex<()>,
}

/// A piece of an I/O that falls inside one extent.
struct Piece {
    index: u64,
    ext_offset: u64,
    buf_offset: usize,
    len: usize,
}

impl Volume {
    fn meta(&self) -> VolumeMeta {
        let stale = self
            .state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .fetched
            .elapsed()
            > REFRESH_EVERY;
        if stale {
            let _ = self.refresh();
        }
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .meta
            .clone()
    }

    fn refresh(&self) -> Result<(), IoError> {
        let m = self.catalog.get_volume(&self.name)?;
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        st.meta = m;
        st.fetched = Instant::now();
        Ok(())
    }

    fn force_refresh(&self) {
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        st.fetched = Instant::now() - REFRESH_EVERY * 2;
    }

    fn pieces(meta: &VolumeMeta, offset: u64, len: u64) -> Vec<Piece> {
        let mut v = Vec::new();
        let mut done = 0u64;
        while done < len {
            let pos = offset + done;
            let index = pos / meta.extent_size;
            let ext_offset = pos % meta.extent_size;
            let n = (meta.extent_size - ext_offset).min(len - done);
            v.push(Piece {
                index,
                ext_offset,
                buf_offset: done as usize,
                len: n as usize,
            });
            done += n;
        }
        v
    }

    /// The extent at `index`, allocating it (thin volumes) when asked to.
    fn extent(
        &self,
        meta: &mut VolumeMeta,
        index: u64,
        allocate: bool,
    ) -> Result<Option<ExtentMeta>, IoError> {
        if let Some(e) = meta.extents.get(&index) {
            return Ok(Some(e.clone()));
        }
        if !allocate {
            return Ok(None);
        }
        let _g = self.alloc_lock.lock();
        // Another coroutine may have allocated it while we waited.
        if let Some(e) = self
            .state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .meta
            .extents
            .get(&index)
        {
            meta.extents.insert(index, e.clone());
            return Ok(Some(e.clone()));
        }
        let e = self.catalog.allocate_extent(&self.name, index)?;
        self.state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .meta
            .extents
            .insert(index, e.clone());
        meta.extents.insert(index, e.clone());
        Ok(Some(e))
    }

    /// Runs `op` for each piece; on a stale-generation or unknown-volume
    /// answer, refreshes the map once and retries that piece.
    fn for_pieces(
        &self,
        offset: u64,
        len: u64,
        allocate: bool,
        mut op: impl FnMut(&VolumeMeta, Option<&ExtentMeta>, &Piece) -> Result<(), IoError>,
    ) -> Result<(), IoError> {
        let mut meta = self.meta();
        check_range(&info_of(&meta), offset, len)?;
        for p in Self::pieces(&meta, offset, len) {
            let ext = self.extent(&mut meta, p.index, allocate)?;
            match op(&meta, ext.as_ref(), &p) {
                Err(IoError::Unavailable { .. }) if ext.is_some() => {
                    // The replica set may have changed: look again, retry once.
                    self.refresh()?;
                    meta = self
                        .state
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .meta
                        .clone();
                    let ext = self.extent(&mut meta, p.index, allocate)?;
                    op(&meta, ext.as_ref(), &p)?;
                }
                r => r?,
            }
        }
        Ok(())
    }
}

fn info_of(m: &VolumeMeta) -> VolumeInfo {
    VolumeInfo {
        name: m.name.clone(),
        uuid: m.uuid,
        block_size: m.block_size,
        size: m.size,
        thin: m.thin,
    }
}

impl BlockVolume for Volume {
    fn info(&self) -> VolumeInfo {
        info_of(&self.meta())
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let io = self.io.clone();
        let len = buf.len() as u64;
        self.for_pieces(offset, len, false, |meta, ext, p| {
            let dst = &mut buf[p.buf_offset..p.buf_offset + p.len];
            match ext {
                Some(e) => io.read(meta, e, p.ext_offset, dst),
                None => {
                    dst.fill(0);
                    Ok(())
                }
            }
        })
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        let io = self.io.clone();
        self.for_pieces(offset, data.len() as u64, true, |meta, ext, p| {
            let e = ext.expect("allocated for writes");
            io.write(
                meta,
                e,
                p.ext_offset,
                &data[p.buf_offset..p.buf_offset + p.len],
            )
        })
    }

    fn write_shared(&self, offset: u64, data: Arc<DmaBuf>) -> Result<(), IoError> {
        let io = self.io.clone();
        let len = data.len();
        self.for_pieces(offset, len as u64, true, |meta, ext, p| {
            let e = ext.expect("allocated for writes");
            if p.buf_offset == 0 && p.len == len {
                // Within one extent: the buffer goes on whole.
                io.write_shared(meta, e, p.ext_offset, &data)
            } else {
                let piece = &data.as_slice()[p.buf_offset..p.buf_offset + p.len];
                io.write(meta, e, p.ext_offset, piece)
            }
        })
    }

    fn flush(&self) -> Result<(), IoError> {
        self.io.flush()
    }

    fn write_zeroes(&self, offset: u64, len: u64, deallocate: bool) -> Result<(), IoError> {
        let io = self.io.clone();
        // Unallocated space already reads as zeroes; only a request to keep
        // the zeroes allocated (thick) must allocate.
        self.for_pieces(offset, len, !deallocate, |meta, ext, p| match ext {
            Some(e) => io.write_zeroes(meta, e, p.ext_offset, p.len as u64, deallocate),
            None => Ok(()),
        })
    }

    fn unmap(&self, offset: u64, len: u64) -> Result<(), IoError> {
        self.write_zeroes(offset, len, true)
    }

    fn compare_and_write(&self, offset: u64, compare: &[u8], write: &[u8]) -> Result<(), IoError> {
        let meta = self.meta();
        if compare.len() != write.len() {
            return Err(IoError::Misaligned {
                volume: self.name.clone(),
                offset,
                len: write.len() as u64,
                block_size: meta.block_size,
            });
        }
        let pieces = Self::pieces(&meta, offset, write.len() as u64);
        if pieces.len() != 1 {
            // Atomicity is kept by the extent's owner; a range across two
            // extents has two owners. Initiators send one or a few blocks.
            return Err(IoError::Misaligned {
                volume: self.name.clone(),
                offset,
                len: write.len() as u64,
                block_size: meta.block_size,
            });
        }
        let io = self.io.clone();
        self.for_pieces(offset, write.len() as u64, true, |meta, ext, p| {
            io.compare_and_write(meta, ext.expect("allocated"), p.ext_offset, compare, write)
        })
    }

    fn access_state(&self) -> AccessState {
        let meta = self
            .state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .meta
            .clone();
        // Optimized when this node serves every allocated extent locally.
        let mut state = AccessState::Optimized;
        for e in meta.extents.values() {
            match self.io.access_state(e) {
                AccessState::Inaccessible => return AccessState::Inaccessible,
                AccessState::NonOptimized => state = AccessState::NonOptimized,
                AccessState::Optimized => {}
            }
        }
        state
    }
}

#[cfg(test)]
mod tests {
    //! The splitting, thin allocation and refresh logic, with an in-memory
    //! catalog and extent store standing in for meta and the chunk store
    //! (the real ones are exercised end to end in engine/ferrited/tests).
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Catalog {
        meta: Mutex<VolumeMeta>,
        next: AtomicU64,
        allocations: AtomicU64,
    }

    impl VolumeCatalog for Catalog {
        fn get_volume(&self, name: &str) -> Result<VolumeMeta, IoError> {
            let m = self.meta.lock().unwrap().clone();
            if m.name == name {
                Ok(m)
            } else {
                Err(IoError::Gone {
                    volume: name.into(),
                })
            }
        }
        fn allocate_extent(&self, _volume: &str, index: u64) -> Result<ExtentMeta, IoError> {
            let mut m = self.meta.lock().unwrap();
            self.allocations.fetch_add(1, Ordering::Relaxed);
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            let e = m
                .extents
                .entry(index)
                .or_insert(ExtentMeta {
                    id,
                    index,
                    replicas: vec!["n1".into()],
                    generation: 1,
                })
                .clone();
            m.generation += 1;
            Ok(e)
        }
        fn list_volumes(&self) -> Result<Vec<String>, IoError> {
            Ok(vec![self.meta.lock().unwrap().name.clone()])
        }
    }

    #[derive(Default)]
    struct Extents(Mutex<HashMap<u64, Vec<u8>>>);

    impl ExtentIo for Extents {
        fn read(
            &self,
            vol: &VolumeMeta,
            ext: &ExtentMeta,
            offset: u64,
            buf: &mut [u8],
        ) -> Result<(), IoError> {
            let m = self.0.lock().unwrap();
            match m.get(&ext.id) {
                Some(d) => buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]),
                None => buf.fill(0),
            }
            let _ = vol;
            Ok(())
        }
        fn write(
            &self,
            vol: &VolumeMeta,
            ext: &ExtentMeta,
            offset: u64,
            data: &[u8],
        ) -> Result<(), IoError> {
            let mut m = self.0.lock().unwrap();
            let d = m
                .entry(ext.id)
                .or_insert_with(|| vec![0; vol.extent_size as usize]);
            d[offset as usize..offset as usize + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn write_zeroes(
            &self,
            vol: &VolumeMeta,
            ext: &ExtentMeta,
            offset: u64,
            len: u64,
            _d: bool,
        ) -> Result<(), IoError> {
            self.write(vol, ext, offset, &vec![0; len as usize])
        }
        fn compare_and_write(
            &self,
            vol: &VolumeMeta,
            ext: &ExtentMeta,
            offset: u64,
            c: &[u8],
            w: &[u8],
        ) -> Result<(), IoError> {
            let mut cur = vec![0; c.len()];
            self.read(vol, ext, offset, &mut cur)?;
            if cur != c {
                return Err(IoError::CompareMismatch {
                    volume: vol.name.clone(),
                    offset,
                });
            }
            self.write(vol, ext, offset, w)
        }
        fn flush(&self) -> Result<(), IoError> {
            Ok(())
        }
    }

    fn setup() -> (Arc<Catalog>, Arc<VolumeClient>) {
        let cat = Arc::new(Catalog {
            meta: Mutex::new(VolumeMeta {
                name: "v".into(),
                uuid: [1; 16],
                pool: "p".into(),
                size: 4 << 20,
                block_size: 512,
                extent_size: 1 << 20,
                replica_count: 1,
                min_replicas: 0,
                thin: true,
                generation: 1,
                extents: HashMap::new(),
            }),
            next: AtomicU64::new(100),
            allocations: AtomicU64::new(0),
        });
        let client = VolumeClient::new(cat.clone(), Arc::new(Extents::default()));
        (cat, client)
    }

    #[test]
    fn splits_across_extents_and_allocates_on_first_write() {
        let (cat, client) = setup();
        let v = client.open("v").unwrap();
        let mut z = vec![1u8; 4096];
        v.read(0, &mut z).unwrap();
        assert!(
            z.iter().all(|&b| b == 0),
            "unallocated space reads as zeroes"
        );
        assert_eq!(
            cat.allocations.load(Ordering::Relaxed),
            0,
            "reads allocate nothing"
        );
        let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
        let off = (1 << 20) - 512;
        v.write(off, &data).unwrap();
        assert_eq!(
            cat.meta.lock().unwrap().extents.len(),
            4,
            "the write touched extents 0..=3"
        );
        let mut back = vec![0u8; data.len()];
        v.read(off, &mut back).unwrap();
        assert_eq!(back, data);
        v.unmap(0, 4 << 20).unwrap();
        v.read(off, &mut back[..4096]).unwrap();
        assert!(back[..4096].iter().all(|&b| b == 0));
        assert!(matches!(
            v.write(4 << 20, &[0; 512]),
            Err(IoError::OutOfRange { .. })
        ));
        assert!(client.open("nope").is_err());
    }

    #[test]
    fn a_resize_elsewhere_is_seen_after_a_refresh() {
        let (cat, client) = setup();
        let v = client.open("v").unwrap();
        assert_eq!(v.info().size, 4 << 20);
        cat.meta.lock().unwrap().size = 8 << 20;
        client.invalidate("v");
        assert_eq!(v.info().size, 8 << 20);
        v.write(7 << 20, &[5u8; 512]).unwrap();
    }
}
